"""The sample-data generator's promises that a hand mutation audit (m28a) found untested: the meter mix
(50/30/10/5/5), the three timestamp shapes, each meter's properties, the customer list's documented shares
(~20 % billing anchors, ~5 % `fails`, ~3 % `fails_then_succeeds`, ~5 % plan changes of usd customers) and its
seed, retries and conflicting versions that stay inside the range, the original that stays the clean version,
the single-file name, the progress callback, the malformed variants, hostile ids with commas in CSV, and the
`metering generate` command passing every option through and reporting the injected counts exactly.

Shares are of N events drawn by hashing, so "about p" is checked as p +- a margin of at least 5 standard
deviations of a binomial(N, p) count (worked out in each docstring); exact counts come from `GenerateConfig`
and the rule "a share of N is round(N x share), at least one when the share > 0".
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from datetime import date, datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from metering import warehouse
from metering.cli import cli
from metering.ingest import ingest_files
from metering.ingest.generate import HOSTILE_IDS, GenerateConfig, generate
from tests.metering.ingest.conftest import NOW

ZERO = dict(duplicate_share=0.0, conflict_share=0.0, late_share=0.0, malformed_share=0.0, hostile_share=0.0)


def _rows(files: list[Path]) -> list[dict]:
    """Every JSON line of generated .jsonl files (file order = arrival day), with `_day` = the file's day and
    `_line` = the raw text; lines that are not JSON objects (malformed rows) are left out."""
    out = []
    for f in sorted(files):
        day = date.fromisoformat(f.name.removeprefix("usage-").removesuffix(".jsonl"))
        for raw in f.read_bytes().splitlines():
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(row, dict):
                out.append({**row, "_day": day, "_line": raw.decode("utf-8")})
    return out


def _instant(ts) -> datetime:
    if isinstance(ts, int):
        return datetime.fromtimestamp(ts / 1000, tz=timezone.utc)
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(timezone.utc)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> list[dict]:
    """100 000 clean events over 4 days, JSON lines only."""
    tmp = tmp_path_factory.mktemp("m28")
    cfg = GenerateConfig(seed=28, customers=20, events=100_000, end=date(2026, 10, 4), formats=("jsonl",), **ZERO)
    return _rows(generate(cfg, tmp / "raw").files)


# --------------------------------------------------------------------------- the bulk's shapes


def test_meters_follow_the_50_30_10_5_5_mix(sample):
    """Of 100 000 events: api_calls 50 000, tokens 30 000, active_users 10 000, storage_gb 5000, seats 5000,
    each within 5 standard deviations (sqrt(N p (1 - p)): 158, 145, 95, 69, 69) -> margins 800, 750, 500,
    400, 400. A mix one point off at a boundary (51/30/10/5/4) puts seats at 4000, outside 4600..5400."""
    counts = Counter(r["meter"] for r in sample)
    expected = {"api_calls": (50_000, 800), "tokens": (30_000, 750), "active_users": (10_000, 500),
                "storage_gb": (5000, 400), "seats": (5000, 400)}
    assert set(counts) == set(expected)
    for meter, (mean, margin) in expected.items():
        assert abs(counts[meter] - mean) <= margin, (meter, counts[meter])


def test_timestamps_take_three_shapes_80_10_10(sample):
    """80 % ISO 8601 in UTC with milliseconds and Z, 10 % with a +02:00 offset, 10 % epoch milliseconds (a
    JSON integer). Of 100 000: 80 000 +- 650 (5 x 126) and 10 000 +- 500 (5 x 95). An offset stamp is the
    same instant written two hours ahead: its wall time is 2 h after the UTC time, so its instant falls on the
    file's own UTC day."""
    z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    off = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+02:00$")
    shapes = Counter("int" if isinstance(r["timestamp"], int) else "z" if z.match(r["timestamp"])
                     else "offset" if off.match(r["timestamp"]) else "other" for r in sample)
    assert shapes["other"] == 0
    assert abs(shapes["z"] - 80_000) <= 650
    assert abs(shapes["offset"] - 10_000) <= 500 and abs(shapes["int"] - 10_000) <= 500
    offset_rows = [r for r in sample if isinstance(r["timestamp"], str) and r["timestamp"].endswith("+02:00")]
    assert all(_instant(r["timestamp"]).date() == r["_day"] for r in offset_rows)


def test_each_meter_carries_its_own_property(sample):
    """api_calls: region us or eu (each half: 25 000 +- 800 of ~50 000); tokens: model large (a third,
    10 000 +- 600 of ~30 000) or small; active_users: user_id u0..u49, all 50 used (~200 each);
    storage_gb and seats: no property."""
    props: dict[str, Counter] = {}
    for r in sample:
        props.setdefault(r["meter"], Counter())[json.dumps(r["properties"], sort_keys=True)] += 1
    regions = props["api_calls"]
    assert set(regions) == {'{"region": "us"}', '{"region": "eu"}'}
    assert abs(regions['{"region": "us"}'] - sum(regions.values()) / 2) <= 800
    models = props["tokens"]
    assert set(models) == {'{"model": "large"}', '{"model": "small"}'}
    assert abs(models['{"model": "large"}'] - sum(models.values()) / 3) <= 600
    assert set(props["active_users"]) == {json.dumps({"user_id": f"u{k}"}) for k in range(50)}
    assert set(props["storage_gb"]) == set(props["seats"]) == {"{}"}


def test_the_tail_of_a_long_customer_list_keeps_its_zipf_share(tmp_path):
    """Weights 1/rank^1.1 over 2000 customers sum to S = 5.908; ranks 1001..2000 hold 0.3355 of it, 5.68 %:
    of 20 000 events 1136, +- 170 (5 x sqrt(20000 x 0.0568 x 0.9432) = 5 x 32.7). Rounding each customer's
    share of a coarse lottery up to one ticket would give the tail ~9.6 % (1920)."""
    cfg = GenerateConfig(seed=19, customers=2000, events=20_000, end=date(2026, 10, 2), formats=("jsonl",), **ZERO)
    rows = _rows(generate(cfg, tmp_path / "raw").files)
    tail = sum(1 for r in rows if int(r["customer_id"].removeprefix("cust_")) > 1000)
    assert abs(tail - 1136) <= 170, tail


# --------------------------------------------------------------------------- the customer list


def _customer_rows(tmp_path: Path, seed: int, customers: int = 3000) -> list[dict]:
    cfg = GenerateConfig(seed=seed, customers=customers, events=20, end=date(2026, 10, 31), formats=("jsonl",),
                         **ZERO)
    path = generate(cfg, tmp_path / f"raw{seed}", tmp_path / f"customers{seed}.csv").customers_file
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_customer_list_shares_match_the_documented_ones(tmp_path):
    """docs/ingest.md: ~20 % billing anchors, ~5 % `fails`, ~3 % `fails_then_succeeds`, ~5 % mid-month plan
    changes (of the usd customers, ~90 % of them: 3000 x 0.9 x 0.05 = 135). Over 3000 customers, 5 standard
    deviations: anchors 600 +- 110, fails 150 +- 60, fails_then_succeeds 90 +- 47, changes 135 +- 57."""
    rows = _customer_rows(tmp_path, seed=31)
    first: dict[str, dict] = {}
    for r in rows:
        first.setdefault(r["customer_id"], r)
    assert len(first) == 3000
    people = list(first.values())
    anchors = sum(1 for r in people if r["billing_anchor_day"] != "")
    behaviour = Counter(r["payment_behavior"] for r in people)
    changes = len(rows) - len(first)
    assert abs(anchors - 600) <= 110
    assert abs(behaviour["fails"] - 150) <= 60
    assert abs(behaviour["fails_then_succeeds"] - 90) <= 47
    assert abs(changes - 135) <= 57


def test_the_customer_list_follows_the_seed(tmp_path):
    """The seed feeds the customer list too: seeds 31 and 32 give other plans / anchors / behaviours for the
    same 300 ids, seed 31 twice the same list."""
    a, b, c = (_customer_rows(tmp_path / n, seed=s, customers=300) for n, s in (("a", 31), ("b", 31), ("c", 32)))
    assert a == b
    assert a != c


def test_the_customer_list_may_go_into_a_folder_that_does_not_exist_yet(tmp_path):
    """`generate` creates the customer list's folder (two levels here) as it creates the raw folder."""
    cfg = GenerateConfig(seed=1, customers=3, events=10, end=date(2026, 10, 2), formats=("jsonl",), **ZERO)
    path = generate(cfg, tmp_path / "raw", tmp_path / "new" / "deeper" / "customers.csv").customers_file
    assert path == tmp_path / "new" / "deeper" / "customers.csv"
    assert path.read_text().count("\n") >= 4  # header + one row for each of the 3 customers


# --------------------------------------------------------------------------- copies inside the range


def test_retries_and_conflicts_never_arrive_after_the_range(tmp_path):
    """Two days, every event retried and given a conflicting version (shares 1.0): copies of the last day's
    events arrive that same last day (the +1 / +2 day lag is cut at the range's end), so the only files are
    those of 2026-10-01 and 2026-10-02, and no row sits in a file before its own UTC date."""
    cfg = GenerateConfig(seed=4, customers=5, events=400, end=date(2026, 10, 2), formats=("jsonl",),
                         **{**ZERO, "duplicate_share": 1.0, "conflict_share": 1.0})
    summary = generate(cfg, tmp_path / "raw")
    assert [f.name for f in summary.files] == ["usage-2026-10-01.jsonl", "usage-2026-10-02.jsonl"]
    assert all(_instant(r["timestamp"]).date() <= r["_day"] for r in _rows(summary.files))


def test_the_original_is_the_version_that_stays_clean(tmp_path):
    """Every event retried and given a conflicting version on the same or a later day: the original always
    comes first (in an earlier file, or earlier in the same file), so ingestion keeps each original: the
    clean values equal the generator's own sum of the originals, 400 accepted, 400 retries dropped, 400
    conflicts quarantined."""
    cfg = GenerateConfig(seed=4, customers=5, events=400, end=date(2026, 10, 3), formats=("jsonl",),
                         **{**ZERO, "duplicate_share": 1.0, "conflict_share": 1.0})
    summary = generate(cfg, tmp_path / "raw")
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        results = ingest_files(con, summary.files, now=NOW)
        stored = dict(con.execute("SELECT meter, sum(value) FROM usage_events WHERE value IS NOT NULL "
                                  "GROUP BY 1").fetchall())
    assert sum(r.rows_accepted for r in results) == 400
    assert sum(r.duplicates_dropped for r in results) == 400
    assert sum(r.conflicting_duplicates for r in results) == 400
    assert stored == summary.clean_values
    # tokens, storage_gb and seats carry values: all three are in the sum
    assert set(summary.clean_values) == {"tokens", "storage_gb", "seats"}


# --------------------------------------------------------------------------- layout and progress


def test_a_single_file_is_named_after_the_range_and_holds_every_row(tmp_path):
    """single_file: one file `usage-<start>_<end>.<format of day 0>` with all 300 events of the 3 days."""
    cfg = GenerateConfig(seed=2, customers=5, events=300, end=date(2026, 10, 3), formats=("csv", "jsonl"),
                         single_file=True, **ZERO)
    summary = generate(cfg, tmp_path / "raw")
    assert [f.name for f in summary.files] == ["usage-2026-10-01_2026-10-03.csv"]
    assert summary.files[0].read_text().count("\n") == 301  # header + 300 events


def test_progress_reports_each_file_with_its_rank_and_the_total(tmp_path):
    """3 days, 300 events (one file a day): progress is called after each file with (name, 1..3, 3)."""
    cfg = GenerateConfig(seed=2, customers=5, events=300, end=date(2026, 10, 3), formats=("jsonl",), **ZERO)
    calls = []
    generate(cfg, tmp_path / "raw", progress=lambda name, done, total: calls.append((name, done, total)))
    assert calls == [(f"usage-2026-10-0{d}.jsonl", d, 3) for d in (1, 2, 3)]


# --------------------------------------------------------------------------- malformed variants, hostile CSV


def test_malformed_rows_come_in_both_variants(tmp_path):
    """malformed share 0.024 of 1000 events = 24 bad rows over 1 file x 12 JSONL reasons -> 2 per reason (k = 0
    and 1): bad_type is once a list value and once a number where the model's text belongs. In CSV (12 reasons
    less bad_json plus bad_csv_row) the two bad_csv_row lines are one with too few fields and one with an
    unclosed quote."""
    cfg = GenerateConfig(seed=3, customers=5, events=1000, end=date(2026, 10, 1), formats=("jsonl",),
                         **{**ZERO, "malformed_share": 0.024})
    summary = generate(cfg, tmp_path / "j")
    assert summary.malformed["bad_type"] == 2
    bad_type = [r for r in _rows(summary.files) if r["event_id"].startswith("bad_3_bad_type_")]
    shapes = sorted(json.dumps([r.get("value"), r["properties"]]) for r in bad_type)
    assert shapes == sorted(json.dumps(x) for x in ([[1, 2], {"model": "small"}], [5, {"model": 3}]))
    cfg_csv = GenerateConfig(seed=3, customers=5, events=1000, end=date(2026, 10, 1), formats=("csv",),
                             **{**ZERO, "malformed_share": 0.024})
    text = generate(cfg_csv, tmp_path / "c").files[0].read_text(encoding="utf-8", errors="replace")
    assert "only,three,fields" in text.splitlines()
    assert '"unclosed quote,cust_00001,tokens' in text.splitlines()


def test_hostile_ids_with_commas_and_quotes_survive_csv(tmp_path):
    """CSV only, hostile share 0.02 of 3000 events = 60 renamed events using all six names (one has a comma,
    one double quotes): ingested, all 3000 events are accepted, none quarantined, and the 60 hostile ids are
    stored verbatim."""
    cfg = GenerateConfig(seed=7, customers=20, events=3000, end=date(2026, 10, 3), formats=("csv",),
                         **{**ZERO, "hostile_share": 0.02})
    summary = generate(cfg, tmp_path / "raw")
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        results = ingest_files(con, summary.files, now=NOW)
        ids = [i for (i,) in con.execute("SELECT event_id FROM usage_events WHERE event_id NOT LIKE 'evt_7_%'")
               .fetchall()]
    assert sum(r.rows_accepted for r in results) == 3000
    assert sum(r.rows_quarantined for r in results) == 0
    assert len(ids) == len(set(ids)) == summary.hostile_ids == 60
    assert {i.rsplit(" #", 1)[0] for i in ids} == set(HOSTILE_IDS)


# --------------------------------------------------------------------------- the command


def _cli(*args: str):
    return CliRunner().invoke(cli, ["--log-level", "ERROR", "generate", *args])


def test_generate_passes_every_share_through_and_reports_the_counts(tmp_path, isolated_env):
    """1000 events over 2 days, JSON lines: exact duplicates 0.01 x 1000 = 10, conflicts 0.02 x 1000 = 20,
    hostile ids 0.005 x 1000 = 5, malformed 0.012 x 1000 = 12 spread over 2 files x 12 reasons -> max(1, 12 //
    24) = 1 per reason per file = 24; rows 1000 + 10 + 20 + 24 = 1054. Late: 0.04 of the events dated
    2026-10-01 (the only ones with a later day), read back from the files: ids first seen in the 10-02 file
    but dated 10-01."""
    raw = tmp_path / "raw"
    result = _cli("--seed", "5", "--events", "1000", "--customers", "5", "--start", "2026-10-01",
                  "--end", "2026-10-02", "--formats", "jsonl", "--out", str(raw),
                  "--customers-file", str(tmp_path / "c.csv"), "--duplicate-share", "0.01",
                  "--conflict-share", "0.02", "--late-share", "0.04", "--malformed-share", "0.012",
                  "--hostile-share", "0.005")
    assert result.exit_code == 0, result.output
    first_day: dict[str, date] = {}
    dated: dict[str, date] = {}
    for r in _rows(sorted(raw.iterdir())):
        if r["event_id"].startswith("bad_"):
            continue
        first_day.setdefault(r["event_id"], r["_day"])
        dated.setdefault(r["event_id"], _instant(r["timestamp"]).date())
    assert len(first_day) == 1000
    eligible = sum(1 for d in dated.values() if d == date(2026, 10, 1))
    late = sum(1 for i, d in first_day.items() if d == date(2026, 10, 2) and dated[i] == date(2026, 10, 1))
    assert late == max(1, round(eligible * 0.04)) > 0
    assert (f"wrote 2 file(s) to {raw}: 1054 rows (1000 events, 10 exact duplicates, 20 conflicting duplicates, "
            f"{late} late, 24 malformed, 5 hostile ids)") in result.output
    assert f"wrote customer list {tmp_path / 'c.csv'}" in result.output


def test_generate_single_file_flag_writes_one_file(tmp_path, isolated_env):
    result = _cli("--events", "50", "--customers", "2", "--start", "2026-10-01", "--end", "2026-10-03",
                  "--formats", "jsonl", "--out", str(tmp_path / "raw"), "--customers-file", str(tmp_path / "c.csv"),
                  "--single-file")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["usage-2026-10-01_2026-10-03.jsonl"]


def test_generate_default_seed_is_42(tmp_path, isolated_env):
    """Leaving out --seed is --seed 42 (shown as the default): same bytes; seed 43 gives others."""
    def run(name: str, *seed: str) -> bytes:
        out = tmp_path / name
        result = _cli(*seed, "--events", "50", "--customers", "3", "--start", "2026-10-01", "--end", "2026-10-01",
                      "--formats", "jsonl", "--out", str(out), "--customers-file", str(tmp_path / f"{name}.csv"))
        assert result.exit_code == 0, result.output
        return (out / "usage-2026-10-01.jsonl").read_bytes()
    assert run("default") == run("s42", "--seed", "42")
    assert run("default") != run("s43", "--seed", "43")


def test_generate_formats_may_have_spaces_around_commas(tmp_path, isolated_env):
    """`--formats " jsonl , csv "` is jsonl and csv: day 0 is jsonl, day 1 csv."""
    result = _cli("--events", "50", "--customers", "2", "--start", "2026-10-01", "--end", "2026-10-02",
                  "--formats", " jsonl , csv ", "--out", str(tmp_path / "raw"),
                  "--customers-file", str(tmp_path / "c.csv"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["usage-2026-10-01.jsonl",
                                                                    "usage-2026-10-02.csv"]


def test_a_refused_customer_list_leaves_no_output_folder(tmp_path, isolated_env):
    """`generate --customers-file <the analyst snapshot>` is refused (exit 3, nothing generated), and writes
    nothing, as for an end before the start (exit 2) or an output name that is not UTF-8 (exit 3). The
    defect m28a found, fixed in the twenty-eighth session: `--out`'s folder was created before the refusal."""
    snapshot = isolated_env / "snapshot.duckdb"   # $METERING_SNAPSHOT, from the conftest fixture
    result = _cli("--events", "10", "--customers", "2", "--customers-file", str(snapshot),
                  "--out", str(tmp_path / "raw"))
    assert result.exit_code == 3, result.output
    assert f"--customers-file {snapshot}: is the analyst snapshot" in result.output
    assert not (tmp_path / "raw").exists()
    assert not snapshot.exists()
