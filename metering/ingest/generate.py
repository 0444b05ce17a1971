"""Sample data: a deterministic month of raw usage with every defect the validator knows.

Same seed and options, same bytes. The bulk is built with vectorised Polars expressions (random
numbers come from hashing the row number with the seed), so 10M+ events take seconds; the few
defective and hostile rows are written one by one.

Layout: one file per arrival day (`usage-YYYY-MM-DD.<format>`), formats taking turns day by day,
or one file (`single_file=True`, used by the benchmark). Defects injected, each a share of the
events: exact duplicates (a retry, same or next day), conflicting duplicates (same id, another
value, up to two days later), late events (arriving 1-4 days after their event date), malformed
rows of every quarantine reason the format can carry, and valid rows whose `event_id` is hostile
but legal text (quotes, SQL, non-ASCII), which must be stored verbatim.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import polars as pl

from metering.ingest.contract import REASONS

DEMO_START = date(2026, 10, 1)
DEMO_END = date(2026, 10, 31)
FORMAT_SUFFIX = {"jsonl": ".jsonl", "jsonl.gz": ".jsonl.gz", "csv": ".csv", "parquet": ".parquet"}
METER_MIX = (("api_calls", 50), ("tokens", 30), ("active_users", 10), ("storage_gb", 5), ("seats", 5))
CSV_COLUMNS = ("event_id", "customer_id", "meter", "timestamp", "value",
               "properties.region", "properties.model", "properties.user_id")
HOSTILE_IDS = (
    "evt_'; DROP TABLE usage_events; --",
    'evt_"quoted" and \'single\'',
    "evt_Grüße_日本語_😀",
    "evt_back\\slash, comma; semicolon",
    "evt_ OR 1=1 /* comment */",
    "evt_%s_%d_{0}_$1_?",
)
# Quarantine reasons a Parquet file cannot carry (its columns are typed text, not lines).
TEXT_ONLY_REASONS = ("invalid_utf8", "bad_json", "bad_csv_row")
GENERATED_REASONS = tuple(r for r in REASONS if r != "conflicting_duplicate")


@dataclass
class GenerateConfig:
    seed: int = 42
    customers: int = 200
    events: int = 100_000
    start: date = DEMO_START
    end: date = DEMO_END  # inclusive
    formats: tuple[str, ...] = ("jsonl", "jsonl.gz", "csv", "parquet")
    duplicate_share: float = 0.005
    conflict_share: float = 0.001
    late_share: float = 0.002
    malformed_share: float = 0.001
    hostile_share: float = 0.0005
    single_file: bool = False


@dataclass
class GenerateSummary:
    files: list[Path] = field(default_factory=list)
    customers_file: Path | None = None
    events: int = 0
    rows: int = 0
    exact_duplicates: int = 0
    conflicting_duplicates: int = 0
    late_events: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    hostile_ids: int = 0
    # meter -> the exact sum of the values of the events meant to be clean (one per event id), for
    # tests of value conservation (I1); meters whose events carry no value are absent
    clean_values: dict[str, Decimal] = field(default_factory=dict)


def _u(col: str, seed: int, salt: int) -> pl.Expr:
    """A deterministic pseudo-random UInt64 per row."""
    return pl.col(col).hash(seed=seed * 1_000_003 + salt)


# --------------------------------------------------------------------------- customers


def write_customers(path: Path, customers: int, seed: int, start: date, end: date) -> Path:
    """The customer list (one row per customer x plan assignment), as `contracts.md` fixes it."""
    rng = random.Random(seed)
    rows = []
    mid = start + (end - start) // 2
    for k in range(1, customers + 1):
        cid = f"cust_{k:05d}"
        roll = rng.random()
        plan = "starter" if roll < 0.40 else "pro" if roll < 0.75 else "scale" if roll < 0.90 else "pro_jpy"
        currency = "jpy" if plan == "pro_jpy" else "usd"
        anchor = str(rng.choice([1, 5, 15, 28, 31])) if rng.random() < 0.2 else ""
        pay = rng.random()
        behaviour = "fails" if pay < 0.05 else "fails_then_succeeds" if pay < 0.08 else "succeeds"
        base = [cid, f"Customer {k} Ltd", f"billing+{cid}@example.com", currency, anchor]
        rows.append([*base, plan, start.isoformat(), behaviour])
        # a mid-month plan change (same currency); the draw comes first, so a one-day range (no day after
        # the start to change on) leaves every other range's output as it was
        if currency == "usd" and rng.random() < 0.05 and end > start:
            new_plan = {"starter": "pro", "pro": "scale", "scale": "pro"}[plan]
            when = mid + timedelta(days=rng.randint(-5, 5))
            rows.append([*base, new_plan, min(max(when, start + timedelta(days=1)), end).isoformat(), behaviour])
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["customer_id", "name", "email", "currency", "billing_anchor_day", "plan",
                         "plan_effective_from", "payment_behavior"])
        writer.writerows(rows)
    return path


# --------------------------------------------------------------------------- clean bulk


def _customer_tickets(customers: int, total: int = 100_000) -> pl.Series:
    """Customer index per lottery ticket, Zipf-like (weight 1/rank^1.1): a few customers dominate."""
    weights = [1.0 / (k + 1) ** 1.1 for k in range(customers)]
    scale = total / sum(weights)
    tickets: list[int] = []
    for k, w in enumerate(weights):
        tickets.extend([k] * max(1, round(w * scale)))
    return pl.Series("customer_index", tickets, dtype=pl.Int64)


def _bulk(cfg: GenerateConfig) -> pl.DataFrame:
    """The clean events: one row each, with arrival day, as typed text fields."""
    n, s = cfg.events, cfg.seed
    days = (cfg.end - cfg.start).days + 1
    span_ms = days * 86_400_000
    tickets = _customer_tickets(cfg.customers)
    start_ms = int(datetime(cfg.start.year, cfg.start.month, cfg.start.day, tzinfo=timezone.utc).timestamp() * 1000)
    cum, meter_expr = 0, None
    for name, weight in METER_MIX:
        cum += weight
        meter_expr = (pl.when(pl.col("mroll") < cum).then(pl.lit(name)) if meter_expr is None
                      else meter_expr.when(pl.col("mroll") < cum).then(pl.lit(name)))
    frame = (
        pl.DataFrame({"i": pl.int_range(0, n, dtype=pl.Int64, eager=True)})
        .with_columns(
            (_u("i", s, 1) % len(tickets)).cast(pl.Int64).alias("ticket"),
            (_u("i", s, 2) % 100).cast(pl.Int64).alias("mroll"),
            (start_ms + (_u("i", s, 3) % span_ms).cast(pl.Int64)).alias("ms"),
            (_u("i", s, 4) % 100_000).cast(pl.Int64).alias("vroll"),
            (_u("i", s, 5) % 100).cast(pl.Int64).alias("troll"),
        )
        .with_columns(meter_expr.alias("meter"))
    )
    frame = frame.with_columns(customer_index=tickets.gather(frame["ticket"]))
    ts = pl.from_epoch(pl.col("ms"), time_unit="ms").dt.replace_time_zone("UTC")
    frame = frame.with_columns(
        pl.format("evt_{}_{}", pl.lit(s), pl.col("i").cast(pl.String).str.zfill(10)).alias("event_id"),
        pl.format("cust_{}", (pl.col("customer_index") + 1).cast(pl.String).str.zfill(5)).alias("customer_id"),
        pl.when(pl.col("troll") < 80).then(ts.dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
        .when(pl.col("troll") < 90).then((ts + pl.duration(hours=2)).dt.strftime("%Y-%m-%dT%H:%M:%S%.3f+02:00"))
        .otherwise(pl.col("ms").cast(pl.String)).alias("timestamp"),
        pl.col("troll").ge(90).alias("ts_is_int"),
        pl.when(pl.col("meter") == "tokens").then((pl.col("vroll") % 5000 + 1).cast(pl.String))
        .when(pl.col("meter") == "storage_gb").then(
            pl.format("{}.{}", (pl.col("vroll") % 500).cast(pl.String),
                      (pl.col("vroll") % 1000).cast(pl.String).str.zfill(3)))
        .when(pl.col("meter") == "seats").then((pl.col("vroll") % 50 + 1).cast(pl.String))
        .otherwise(None).alias("value"),
        pl.when(pl.col("meter") == "api_calls").then(pl.when(pl.col("vroll") % 2 == 0).then(pl.lit("us"))
                                                     .otherwise(pl.lit("eu"))).alias("region"),
        pl.when(pl.col("meter") == "tokens").then(pl.when(pl.col("vroll") % 3 == 0).then(pl.lit("large"))
                                                  .otherwise(pl.lit("small"))).alias("model"),
        pl.when(pl.col("meter") == "active_users").then(
            pl.format("u{}", (pl.col("vroll") % 50).cast(pl.String))).alias("user_id"),
        ((pl.col("ms") - start_ms) // 86_400_000).alias("day"),
    )
    return frame.select("i", "event_id", "customer_id", "meter", "timestamp", "ts_is_int", "value",
                        "region", "model", "user_id", "day", "ms").with_columns(arrival=pl.col("day"))


def _pick(frame: pl.DataFrame, share: float, seed: int, salt: int) -> pl.DataFrame:
    """About `share` of the rows (at least one when share > 0), chosen by hash: deterministic."""
    if share <= 0 or frame.height == 0:
        return frame.clear()
    k = max(1, int(round(frame.height * share)))
    wide = min(1.0, 3 * share + 50 / frame.height)
    h = _u("i", seed, salt)
    return (frame.filter((h % 1_000_000) < int(wide * 1_000_000)).with_columns(_h=h).sort("_h").head(k)
            .drop("_h"))


def _with_defects(cfg: GenerateConfig, bulk: pl.DataFrame, days: int, summary: GenerateSummary) -> pl.DataFrame:
    s = cfg.seed
    late = _pick(bulk.filter(pl.col("day") < days - 1), cfg.late_share, s, 11)  # a later day must exist
    if late.height:
        shift = (_u("i", s, 12) % 4 + 1).cast(pl.Int64)
        bulk = bulk.join(late.select("i", late_arrival=pl.min_horizontal(pl.col("day") + shift, days - 1)),
                         on="i", how="left").with_columns(
            arrival=pl.coalesce("late_arrival", "arrival")).drop("late_arrival")
        summary.late_events = int((bulk["arrival"] != bulk["day"]).sum())
    dups = _pick(bulk, cfg.duplicate_share, s, 21).with_columns(
        arrival=pl.min_horizontal(pl.col("arrival") + (_u("i", s, 22) % 2).cast(pl.Int64), days - 1))
    conflicts = _pick(bulk, cfg.conflict_share, s, 31).with_columns(
        arrival=pl.min_horizontal(pl.col("arrival") + (_u("i", s, 32) % 3).cast(pl.Int64), days - 1),
        # clean tokens values are 1..5000: a conflicting version's value above them always differs, so it is
        # never byte-identical to its original (which ingestion would drop as an exact duplicate)
        meter=pl.lit("tokens"), value=(pl.col("i") % 997 + 5001).cast(pl.String),
        region=pl.lit(None, pl.String), model=pl.lit("large"), user_id=pl.lit(None, pl.String))
    summary.exact_duplicates, summary.conflicting_duplicates = dups.height, conflicts.height
    hostile = _pick(bulk, cfg.hostile_share, s, 41)
    if hostile.height:
        names = pl.Series(HOSTILE_IDS)
        picked = names.gather(hostile["i"] % len(names))
        renamed = hostile.select("i").with_columns(
            hostile_id=pl.format("{} #{}", pl.lit(picked), pl.col("i").cast(pl.String)))
        bulk = bulk.join(renamed, on="i",
                         how="left").with_columns(event_id=pl.coalesce("hostile_id", "event_id")).drop("hostile_id")
        summary.hostile_ids = hostile.height
    # duplicates and conflicts copy ids after the hostile rename, so a hostile id can repeat too
    copies = bulk.join(dups.select("i", "arrival"), on="i").with_columns(pl.col("arrival_right").alias("arrival")) \
        .drop("arrival_right")
    conflict_rows = bulk.join(conflicts.select("i", "arrival", "meter", "value", "region", "model", "user_id"),
                              on="i", suffix="_c").with_columns(
        arrival=pl.col("arrival_c"), meter=pl.col("meter_c"), value=pl.col("value_c"), region=pl.col("region_c"),
        model=pl.col("model_c"), user_id=pl.col("user_id_c")).select(bulk.columns)
    # `copy` orders a retry or a conflicting version after its original when they land in the same file
    # with the same time: the original is the first version ingested, so the one that stays clean
    return pl.concat([bulk.with_columns(copy=pl.lit(0)), copies.select(bulk.columns).with_columns(copy=pl.lit(1)),
                      conflict_rows.with_columns(copy=pl.lit(2))], how="vertical")


# --------------------------------------------------------------------------- malformed rows


def _malformed_event(reason: str, k: int, cfg: GenerateConfig, day: date) -> dict:
    """A row that breaks exactly one rule (as a dict of field -> JSON value); `None` value = omit."""
    ts = f"{day.isoformat()}T{k % 24:02d}:{k % 60:02d}:00Z"
    base = {"event_id": f"bad_{cfg.seed}_{reason}_{k}", "customer_id": "cust_00001", "meter": "tokens",
            "timestamp": ts, "value": 5, "properties": {"model": "small"}}
    change = {
        "missing_field": {"customer_id": None},
        "bad_type": {"value": [1, 2]} if k % 2 else {"properties": {"model": 3}},
        "control_characters": {"customer_id": "cust_\u0007bell"},
        "unknown_meter": {"meter": "gpu_hours"},
        "bad_timestamp": {"timestamp": "yesterday at noon"} if k % 2 else {"timestamp": "2026-10-05T12:00:00"},
        "future_timestamp": {"timestamp": "2099-01-01T00:00:00Z"},
        "non_finite_value": {"value": "NaN"} if k % 2 else {"value": "Infinity"},
        "value_too_large": {"value": 1e300},
        "negative_value": {"value": -42},
        "value_too_precise": {"value": "0.1234567890123456"},
    }[reason]
    event = {**base, **change}
    return {key: v for key, v in event.items() if v is not None}


def _malformed_jsonl(reason: str, k: int, cfg: GenerateConfig, day: date) -> bytes:
    if reason == "bad_json":
        return b'{"event_id": "bad_json_' + str(k).encode() + b'", "meter": "tokens", ' if k % 2 else b"[1, 2, 3]"
    if reason == "invalid_utf8":
        return b'{"event_id": "bad_utf8_' + str(k).encode() + b'", "customer_id": "cust_\xff\xfe"}'
    return json.dumps(_malformed_event(reason, k, cfg, day), ensure_ascii=bool(k % 2)).encode()


def _csv_line(event: dict) -> str:
    props = event.get("properties") or {}
    row = [event.get("event_id", ""), event.get("customer_id", ""), event.get("meter", ""),
           event.get("timestamp", ""), "" if event.get("value") is None else
           (json.dumps(event["value"]) if not isinstance(event["value"], str) else event["value"]),
           props.get("region", ""), props.get("model", ""), props.get("user_id", "")]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow([str(x) for x in row])
    return buf.getvalue()


def _malformed_csv(reason: str, k: int, cfg: GenerateConfig, day: date) -> bytes:
    if reason == "bad_csv_row":
        return b"only,three,fields" if k % 2 else b'"unclosed quote,cust_00001,tokens'
    if reason == "invalid_utf8":
        return b"bad_utf8_" + str(k).encode() + b",cust_\xff,tokens,2026-10-05T00:00:00Z,1,,small,"
    if reason == "bad_type":  # CSV has only text: a value that is not a number
        return _csv_line({**_malformed_event("negative_value", k, cfg, day), "value": "twelve",
                          "event_id": f"bad_{cfg.seed}_bad_type_{k}"}).encode()
    return _csv_line(_malformed_event(reason, k, cfg, day)).encode()


def _malformed_parquet(reason: str, k: int, cfg: GenerateConfig, day: date) -> dict:
    event = _malformed_event(reason, k, cfg, day)
    if reason == "bad_type":
        event["value"] = "twelve"
    props = event.pop("properties", {})
    value = event.get("value")
    return {**{c: None for c in ("event_id", "customer_id", "meter", "timestamp", "value")}, **event,
            "value": None if value is None else (value if isinstance(value, str) else json.dumps(value)),
            "properties": {"region": props.get("region"), "model": props.get("model"), "user_id": props.get("user_id")}}


def reasons_for(fmt: str) -> tuple[str, ...]:
    """The quarantine reasons a file of this format can be generated with."""
    excluded = {"bad_csv_row"} if fmt != "csv" else {"bad_json"}
    if fmt == "parquet":
        excluded |= set(TEXT_ONLY_REASONS)
    return tuple(r for r in GENERATED_REASONS if r not in excluded)


# --------------------------------------------------------------------------- writers


def _cat(*parts: str | pl.Expr) -> pl.Expr:
    return pl.concat_str([pl.lit(p) if isinstance(p, str) else p for p in parts])


def _jsonl_lines(frame: pl.DataFrame) -> pl.Series:
    props = (pl.when(pl.col("region").is_not_null()).then(_cat('{"region":"', pl.col("region"), '"}'))
             .when(pl.col("model").is_not_null()).then(_cat('{"model":"', pl.col("model"), '"}'))
             .when(pl.col("user_id").is_not_null()).then(_cat('{"user_id":"', pl.col("user_id"), '"}'))
             .otherwise(pl.lit("{}")))
    ts = pl.when(pl.col("ts_is_int")).then(pl.col("timestamp")).otherwise(_cat('"', pl.col("timestamp"), '"'))
    value = pl.when(pl.col("value").is_null()).then(pl.lit("")).otherwise(_cat(',"value":', pl.col("value")))
    safe = pl.col("event_id").str.contains(r"^[A-Za-z0-9_]+$")
    event_id = pl.when(safe).then(_cat('"', pl.col("event_id"), '"')).otherwise(
        pl.col("event_id").map_elements(json.dumps, return_dtype=pl.String))
    return frame.select(_cat('{"event_id":', event_id, ',"customer_id":"', pl.col("customer_id"), '","meter":"',
                             pl.col("meter"), '","timestamp":', ts, value, ',"properties":', props, "}")).to_series()


def _csv_lines(frame: pl.DataFrame) -> pl.Series:
    safe = pl.col("event_id").str.contains(r'^[A-Za-z0-9_]+$')
    event_id = pl.when(safe).then(pl.col("event_id")).otherwise(
        pl.col("event_id").map_elements(lambda v: _csv_line({"event_id": v}).split(",")[0] if '"' not in v
                                        and "," not in v else '"' + v.replace('"', '""') + '"',
                                        return_dtype=pl.String))
    return frame.select(pl.concat_str([event_id, "customer_id", "meter", "timestamp",
                                       pl.col("value").fill_null(""), pl.col("region").fill_null(""),
                                       pl.col("model").fill_null(""), pl.col("user_id").fill_null("")],
                                      separator=",")).to_series()


def _write_text(path: Path, header: str | None, lines: pl.Series, extra: list[bytes], gz: bool) -> None:
    buf = path.with_name(path.name + ".part")
    # mtime=0: the gzip header would otherwise carry the write time, so the same seed would give a
    # file with a new content hash on every run (and re-ingesting it would not be a no-op).
    opener = (lambda p: gzip.GzipFile(p, "wb", compresslevel=3, mtime=0)) if gz else (lambda p: open(p, "wb"))
    with opener(buf) as fh:
        if header:
            fh.write(header.encode() + b"\n")
        pl.DataFrame({"line": lines}).write_csv(fh, include_header=False, quote_style="never")
        for line in extra:
            fh.write(line + b"\n")
    buf.replace(path)


def _write_file(path: Path, fmt: str, frame: pl.DataFrame, bad: list, cfg: GenerateConfig) -> None:
    if fmt in ("jsonl", "jsonl.gz"):
        _write_text(path, None, _jsonl_lines(frame), bad, gz=fmt == "jsonl.gz")
    elif fmt == "csv":
        _write_text(path, ",".join(CSV_COLUMNS), _csv_lines(frame), bad, gz=False)
    else:
        props = pl.struct(pl.col("region"), pl.col("model"), pl.col("user_id")).alias("properties")
        table = frame.select("event_id", "customer_id", "meter", "timestamp", "value", props)
        if bad:
            table = pl.concat([table, pl.DataFrame(bad, schema=table.schema)], how="vertical")
        tmp = path.with_name(path.name + ".part")
        table.write_parquet(tmp, compression="zstd", row_group_size=500_000)
        tmp.replace(path)


def generate(cfg: GenerateConfig, out: Path, customers_file: Path | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> GenerateSummary:
    """Write the raw files (and the customer list) for `cfg` into `out`. Returns what was injected."""
    summary = GenerateSummary()
    out.mkdir(parents=True, exist_ok=True)
    if customers_file is not None:
        summary.customers_file = write_customers(customers_file, cfg.customers, cfg.seed, cfg.start, cfg.end)
    days = (cfg.end - cfg.start).days + 1
    bulk = _bulk(cfg)
    summary.events = bulk.height
    summary.clean_values = dict(  # an exact decimal sum (text -> decimal, no float on the way)
        bulk.filter(pl.col("value").is_not_null()).group_by("meter")
        .agg(pl.col("value").cast(pl.Decimal(38, 12)).sum()).iter_rows())
    rows = _with_defects(cfg, bulk, days, summary).sort("arrival", "ms", "i", "copy").drop("copy")
    del bulk
    groups = [(None, rows)] if cfg.single_file else list(rows.partition_by("arrival", as_dict=True).items())
    n_bad = max(1, int(round(cfg.events * cfg.malformed_share))) if cfg.malformed_share > 0 else 0
    for g, (key, frame) in enumerate(sorted(groups, key=lambda kv: -1 if kv[0] is None else kv[0][0])):
        day_index = 0 if key is None else int(key[0])
        day = cfg.start + timedelta(days=day_index)
        fmt = cfg.formats[day_index % len(cfg.formats)]
        name = f"usage-{cfg.start.isoformat()}_{cfg.end.isoformat()}" if key is None else f"usage-{day.isoformat()}"
        path = out / f"{name}{FORMAT_SUFFIX[fmt]}"
        reasons = reasons_for(fmt)
        # spread the malformed rows over the files; every file gets each reason its format can carry
        per_file = max(1, n_bad // max(1, len(groups) * len(reasons))) if n_bad else 0
        bad = []
        for reason in reasons:
            for k in range(per_file):
                maker = {"csv": _malformed_csv, "parquet": _malformed_parquet}.get(fmt, _malformed_jsonl)
                bad.append(maker(reason, g * 1000 + k, cfg, day))
                summary.malformed[reason] = summary.malformed.get(reason, 0) + 1
        _write_file(path, fmt, frame, bad, cfg)
        summary.files.append(path)
        summary.rows += frame.height + len(bad)
        if progress:
            progress(path.name, g + 1, len(groups))
    return summary
