"""Rating against the warehouse: what the Dagster assets and `metering rerate` call.

- `guarded_rules(con, dir, at)`: the rules a run that writes may use (a rated version or meter
  unchanged), meters of lines rated before migration 012 recorded first.
- `refresh_aggregates(con, meters, day)`: rebuild usage_aggregates for one event date.
- `rate_month(con, rules, month)` / `rate_month_full`: rate every billing period that STARTS in
  `month` (the monthly_billing partition), reading the hourly aggregates of the periods' whole
  time range (which may run into the next month); `_full` also returns the unpriced usage.
- `write_rated` / `write_previews`: replace that month's rated_usage / invoice_previews rows in one
  transaction (recording the plan versions used in rules_versions); unchanged rows are not
  rewritten, so re-running with the same inputs leaves the tables byte-identical.
- `preview_mismatches`: the blocking check that previews equal the sum of their lines.
- `rerate_range`: `metering rerate`: aggregates for a date range, then every month it touches.

All writes are delete-then-insert of exactly the partition's rows, so re-running is safe.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import duckdb
import polars as pl

from metering import warehouse
from metering.customers import CUSTOMER_PLAN_SCHEMA, billing_segments, month_bounds
from metering.errors import BadInputError
from metering.ingest.checks import require_sound_events
from metering.rating.aggregate import AGGREGATE_SCHEMA, build_aggregates, charge_quantities, unpriced_usage
from metering.rating.pricing import LINE_KEY, PRORATED_GAUGE_MARK, RATED_COLUMNS, rate
from metering.rules.meters import Meter
from metering.rules.model import ZERO_DECIMAL, Rules
from metering.rules.plans import RATED_METER, load_rules

PREVIEW_COLUMNS = ["customer_id", "period_start", "period_end", "currency", "total_minor", "total", "lines"]


def refresh_aggregates(con: duckdb.DuckDBPyConnection, meters: dict[str, Meter], day: dt.date) -> pl.DataFrame:
    """Recompute usage_aggregates for events dated `day` and replace that day's rows atomically."""
    frame = build_aggregates(con, meters, day, day + dt.timedelta(days=1))
    warehouse.replace_rows(con, "usage_aggregates", "event_date = ?", [day], frame)
    return frame


def read_customer_plans(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The customer_plans table (CUSTOMER_PLAN_SCHEMA), ordered by customer and assignment start."""
    frame = warehouse.query_frame(con, "SELECT * FROM customer_plans ORDER BY customer_id, plan_effective_from")
    if frame.height == 0:
        return pl.DataFrame(schema=CUSTOMER_PLAN_SCHEMA)
    return frame.cast(CUSTOMER_PLAN_SCHEMA).select(list(CUSTOMER_PLAN_SCHEMA))  # type: ignore[arg-type]


def read_aggregates(con: duckdb.DuckDBPyConnection, start: dt.date, end: dt.date) -> pl.DataFrame:
    """usage_aggregates rows with start <= event_date < end."""
    frame = warehouse.query_frame(
        con,
        "SELECT * EXCLUDE (dimensions), CAST(dimensions AS VARCHAR) AS dimensions FROM usage_aggregates "
        "WHERE event_date >= ? AND event_date < ?",
        [start, end],
    )
    if frame.height == 0:
        return pl.DataFrame(schema=AGGREGATE_SCHEMA)
    return frame.cast(AGGREGATE_SCHEMA).select(list(AGGREGATE_SCHEMA))  # type: ignore[arg-type]


def invoice_previews(rated: pl.DataFrame) -> pl.DataFrame:
    """One row per customer x billing period: the sum of its rated lines (minor units and decimal)."""
    return (
        rated.group_by("customer_id", "period_start", "period_end", "currency")
        .agg(total_minor=pl.col("amount_minor").sum(), total=pl.col("amount").sum(), lines=pl.len().cast(pl.Int64))
        .with_columns(pl.col("total").cast(pl.Decimal(38, 2)))
        .sort("customer_id", "period_start")
        .select(PREVIEW_COLUMNS)
    )


class MonthRating(NamedTuple):
    """The rating of one monthly_billing partition."""

    rated: pl.DataFrame        # RATED_COLUMNS
    previews: pl.DataFrame     # PREVIEW_COLUMNS
    unpriced: pl.DataFrame     # usage no line covers, with a reason (see aggregate.unpriced_usage)


def rate_month(con: duckdb.DuckDBPyConnection, rules: Rules, month: dt.date,
               customers: pl.DataFrame | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rated lines, invoice previews) for the billing periods that start in `month`."""
    result = rate_month_full(con, rules, month, customers)
    return result.rated, result.previews


def rate_month_full(con: duckdb.DuckDBPyConnection, rules: Rules, month: dt.date,
                    customers: pl.DataFrame | None = None) -> MonthRating:
    """Rated lines, invoice previews and unpriced usage for the billing periods that start in `month`."""
    if customers is None:
        customers = read_customer_plans(con)
    m0, m1 = month_bounds(month)
    segments = billing_segments(customers, rules, month)
    # Periods start inside the month and may run into the next: read usage from m0 to the last end.
    end = max(m1, segments["period_end"].max()) if segments.height else m1
    usage = read_aggregates(con, m0, end)
    quantities = charge_quantities(usage, segments, rules)
    rated = rate(segments, quantities, rules)
    starts = customers.group_by("customer_id").agg(starts_on=pl.col("plan_effective_from").min())
    unpriced = unpriced_usage(usage, segments, rules, m0, m1, starts)
    return MonthRating(rated, invoice_previews(rated), unpriced)


def fingerprint(frame: pl.DataFrame) -> str:
    """A content hash of a frame (column names, types and values in order): equal frames, equal hash."""
    digest = hashlib.sha256()
    digest.update(json.dumps({k: str(v) for k, v in frame.schema.items()}).encode())
    flat = frame.with_columns(
        pl.col(c).list.join("\x1f") for c, t in frame.schema.items() if isinstance(t, pl.List)
    )
    digest.update(flat.write_csv().encode())
    return digest.hexdigest()


def rated_hashes(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], str]:
    """{(plan, version): content hash} of every plan version that has rated lines, and
    {(`RATED_METER`, meter): definition hash} of every meter that priced them."""
    # a warehouse opened read-only before migration 012 has no rated_meters: nothing recorded yet
    meters = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'main' "
                         "AND table_name = 'rated_meters'").fetchone()[0]
    rows = con.execute(
        "SELECT plan, plan_version, rules_hash FROM rules_versions "
        "UNION SELECT DISTINCT plan, plan_version, rules_hash FROM rated_usage"
        + (" UNION SELECT ?, meter, definition_hash FROM rated_meters" if meters else ""),
        [RATED_METER] if meters else [],
    ).fetchall()
    return {(p, v): h for p, v, h in rows}


def rated_until(con: duckdb.DuckDBPyConnection, today: dt.date) -> dict[tuple[str, str], dt.date]:
    """{(plan, version): the day after the last day before `today` its rated lines price}: the time a
    new version of the plan may no longer start in (`metering.rules.plans.check_rules`)."""
    rows = con.execute("SELECT plan, plan_version, least(max(segment_end), ?::DATE) FROM rated_usage "
                       "WHERE segment_start < ?::DATE GROUP BY ALL", [today, today]).fetchall()
    return {(p, v): until for p, v, until in rows}


def write_rated(con: duckdb.DuckDBPyConnection, month: dt.date, rated: pl.DataFrame, rules: Rules,
                rated_at: dt.datetime, adjust: Adjustment | None = None, in_transaction: bool = False) -> int:
    """Replace the rated_usage rows of periods starting in `month`; record the plan versions used.

    When the new lines equal the stored ones nothing is written, so re-rating unchanged inputs
    leaves the table byte-identical; a period whose lines do not change keeps its `rated_at`, which
    thus means "this period last changed", except at its closing rating below, which stamps it even
    when its lines are unchanged (a period rated before its end and never changed after would
    otherwise never count as billed, and its charges Stripe cannot price would never be invoiced).

    A period is **billed** once it was rated at or after its end (the closing rating; a period's
    first rating after it ended is that rating, not a change). A billed period keeps its stored lines
    unless its usage changed (late events), a customer list that would re-segment it is refused
    unless `adjust` says why (I19), and every change to it is recorded in `rating_adjustments`, per
    charge, with its reason and link. Previews are to be computed from the lines stored
    (`read_rated`), which may be kept ones. One transaction (the caller's, with `in_transaction`):
    the lines, their adjustments and the rules_versions and rated_meters entries that make their
    versions and meters immutable (missing meter entries are recorded even when nothing else is).
    """
    m0, m1 = month_bounds(month)
    used = rated.select("plan", "plan_version").unique().sort("plan", "plan_version")
    today = rated_at.astimezone(dt.timezone.utc).date()
    with warehouse.transaction(con, within=in_transaction):
        stored = read_rated(con, month)
        stamps = _period_stamps(con, month)
        billed = _billed(stored, stamps)
        rated = rated.select(RATED_COLUMNS)
        if billed.height:
            rated = _keep_billed_without_new_usage(stored, rated, billed, rules)
        closing = _closing(stored, stamps, rated_at)
        if fingerprint(stored) == fingerprint(rated) and closing.height == 0:
            record_meters(con, rules, rated_at)
            return 0   # unchanged: keep the rows (and their rated_at) byte for byte
        _refuse_repriced_past(stored, rated, today, billed, adjust)
        _record_adjustments(con, stored, rated, billed, stamps, rated_at, adjust)
        n = warehouse.replace_rows(con, "rated_usage", "period_start >= ? AND period_start < ?", [m0, m1],
                                   _stamped(stored, stamps, rated, rated_at, closing), in_transaction=True)
        if not in_transaction:   # a caller's transaction may write the months it overlaps next: it checks
            _refuse_overlapping_periods(con, m0, m1)
        known = {(p, v) for p, v in con.execute("SELECT plan, plan_version FROM rules_versions").fetchall()}
        for plan, version in used.iter_rows():   # a handful of plan versions, not rows
            if (plan, version) in known:
                continue
            pv = rules.version(plan, version)
            con.execute(
                "INSERT INTO rules_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [plan, version, pv.content_hash, pv.currency, pv.effective_from,
                 json.dumps(pv.canonical(), sort_keys=True, separators=(",", ":")), rated_at],
            )
        record_meters(con, rules, rated_at)
    return n


def record_meters(con: duckdb.DuckDBPyConnection, rules: Rules, at: dt.datetime) -> list[str]:
    """Record, once, the definition of every meter that rated lines name and `rated_meters` lacks;
    returns their names.

    Normally that is a meter pricing its first line. A warehouse rated before migration 012 has lines
    and no records, and a month whose lines never change again would never record them, leaving the
    meter guard blind: so every rating records them, even one that changes nothing, and so does
    `guarded_rules` before aggregating. The definitions in force then are the best record there is."""
    missing = con.execute("SELECT DISTINCT meter FROM rated_usage WHERE meter IS NOT NULL "
                          "AND meter NOT IN (SELECT meter FROM rated_meters) ORDER BY meter").fetchall()
    # a meter the rules lack cannot be recorded; the rated plan version naming it is refused anyway
    names = [name for (name,) in missing if name in rules.meters]
    for name in names:
        meter = rules.meters[name]
        con.execute("INSERT INTO rated_meters VALUES (?, ?, ?, ?)",
                    [name, meter.definition_hash(), json.dumps(meter.definition(), sort_keys=True), at])
    return names


def guarded_rules(con: duckdb.DuckDBPyConnection, rules_dir: str | Path, at: dt.datetime) -> Rules:
    """The rules in `rules_dir` for a run that writes the warehouse from them, refused (`BadInputError`
    naming the file and the field) when they change a plan version or a meter that priced rated lines.

    The one check of every such asset, aggregation included: a meter edited max -> sum once rebuilt a
    day's hourly rows as sums, which the rating, refused until the edit was reverted, then billed as
    late usage. Meters that priced lines before migration 012 are recorded first (`record_meters`)."""
    rules = load_rules(rules_dir, rated_hashes=rated_hashes(con))
    with warehouse.transaction(con):
        record_meters(con, rules, at)
    return rules


def _segment_days(lines: pl.DataFrame, columns: list[str], until: dt.date | None = None) -> pl.DataFrame:
    """`columns` and `day`, one row for each day the lines' segments cover (before `until`, if given)."""
    end = pl.col("segment_end") if until is None else pl.min_horizontal("segment_end", pl.lit(until))
    return (lines.select(*columns, "segment_start", "segment_end").unique()
            .with_columns(day=pl.date_ranges("segment_start", end, closed="left"))
            .explode("day").drop_nulls("day").drop("segment_start", "segment_end").unique())


def _versions_by_day(lines: pl.DataFrame, before: dt.date) -> pl.DataFrame:
    """(customer_id, plan, plan_version, day) for each day before `before` the lines' segments cover."""
    return _segment_days(lines, ["customer_id", "plan", "plan_version"], until=before)


def _refuse_repriced_past(stored: pl.DataFrame, rated: pl.DataFrame, today: dt.date,
                          billed: pl.DataFrame | None = None, adjust: Adjustment | None = None) -> None:
    """Refuse lines that price a day already past under another version of the same plan than the
    stored lines did: a version inserted before a rated one, one backdated into rated time, or a rated
    version deleted from its file. Published versions are immutable, their dates included (I6, I19).
    Refuse too a customer list that re-segments a `billed` period (rated at or after its end): another
    plan, or no lines at all (I19), unless `adjust` gives the reason (the change is then recorded as
    adjustments). New usage re-rated under the same versions, and a plan change in a period not yet
    billed, still go through."""
    if stored.height == 0:
        return
    # the rules first: a version backdated into rated time re-segments billed periods too, and was
    # blamed on the customer list, with advice (--adjust-closed) that could not help
    changed = _versions_by_day(stored, today).join(_versions_by_day(rated, today), on=["customer_id", "plan", "day"],
                                                    suffix="_new").filter(pl.col("plan_version") != pl.col("plan_version_new"))
    if changed.height:
        first = changed.sort("day", "customer_id").row(0, named=True)
        raise BadInputError(
            f"rules: plan {first['plan']} would re-price {first['day']} (already past and rated) under version "
            f"{first['plan_version_new']} instead of {first['plan_version']}, for {changed['customer_id'].n_unique()} "
            f"customer(s): published versions are immutable, their dates included; start new versions today or "
            f"later, keep rated versions in their files, and correct a past period with an adjustment")
    if adjust is None and billed is not None and billed.height:
        _refuse_resegmented_billed(stored, rated, billed)


PERIOD_KEY = ["customer_id", "period_start"]


def _period_stamps(con: duckdb.DuckDBPyConnection, month: dt.date) -> pl.DataFrame:
    """(customer_id, period_start, rated_at): when each stored period of the month last changed."""
    m0, m1 = month_bounds(month)
    return warehouse.query_frame(
        con, "SELECT customer_id, period_start, max(rated_at) AS rated_at FROM rated_usage "
        "WHERE period_start >= ? AND period_start < ? GROUP BY ALL", [m0, m1])


def _billed(stored: pl.DataFrame, stamps: pl.DataFrame) -> pl.DataFrame:
    """(customer_id, period_start) of the stored periods rated at or after their end: billed, closed."""
    if stored.height == 0:
        return pl.DataFrame(schema={"customer_id": pl.String, "period_start": pl.Date})
    ends = stored.select(*PERIOD_KEY, "period_end").unique()
    return (ends.join(stamps, on=PERIOD_KEY)
            .filter(pl.col("rated_at") >= pl.col("period_end").cast(pl.Datetime("us", "UTC")))
            .select(PERIOD_KEY))


def _closing(stored: pl.DataFrame, stamps: pl.DataFrame, rated_at: dt.datetime) -> pl.DataFrame:
    """(customer_id, period_start) of the stored periods this rating closes: last stamped before their
    end, which `rated_at` has reached."""
    if stored.height == 0:
        return pl.DataFrame(schema={"customer_id": pl.String, "period_start": pl.Date})
    end = pl.col("period_end").cast(pl.Datetime("us", "UTC"))
    return (stored.select(*PERIOD_KEY, "period_end").unique().join(stamps, on=PERIOD_KEY)
            .filter((pl.col("rated_at") < end) & (end <= _stamp(rated_at)))
            .select(PERIOD_KEY))


def _period_signatures(lines: pl.DataFrame) -> pl.DataFrame:
    """(customer_id, period_start, sig): the period's lines as a sorted list of row hashes."""
    return (lines.select(*PERIOD_KEY, h=pl.struct(RATED_COLUMNS).hash(seed=0))
            .group_by(PERIOD_KEY).agg(sig=pl.col("h").sort()))


def _stamped(stored: pl.DataFrame, stamps: pl.DataFrame, rated: pl.DataFrame, rated_at: dt.datetime,
             closing: pl.DataFrame) -> pl.DataFrame:
    """`rated` with rated_at: the stored one for a period whose lines did not change (unless this is
    its closing rating), else `rated_at`."""
    same = (_period_signatures(stored).join(_period_signatures(rated), on=PERIOD_KEY, suffix="_new")
            .filter(pl.col("sig") == pl.col("sig_new")).select(PERIOD_KEY).join(stamps, on=PERIOD_KEY)
            .join(closing, on=PERIOD_KEY, how="anti"))
    return (rated.join(same, on=PERIOD_KEY, how="left")
            .with_columns(rated_at=pl.coalesce(pl.col("rated_at"), _stamp(rated_at))))


def _plans_by_day(lines: pl.DataFrame, periods: pl.DataFrame) -> pl.DataFrame:
    """(customer, period, plan, version, day) for every day of `periods`: what each day was priced
    under, however the days were cut into segments."""
    return _segment_days(lines.join(periods, on=PERIOD_KEY, how="semi"),
                         ["customer_id", "period_start", "period_end", "plan", "plan_version"])


def _resegmented(stored: pl.DataFrame, rated: pl.DataFrame, billed: pl.DataFrame) -> pl.DataFrame:
    """The billed periods' day rows that differ between the stored and the new lines."""
    before, after = _plans_by_day(stored, billed), _plans_by_day(rated, billed)
    return pl.concat([before.join(after, on=before.columns, how="anti"),
                      after.join(before, on=before.columns, how="anti")])


def _refuse_resegmented_billed(stored: pl.DataFrame, rated: pl.DataFrame, billed: pl.DataFrame) -> None:
    changed = _resegmented(stored, rated, billed)
    if changed.height == 0:
        return
    first = changed.sort("period_start", "customer_id").row(0, named=True)

    def plans(lines: pl.DataFrame) -> str:
        days = _plans_by_day(lines, billed).filter((pl.col("customer_id") == first["customer_id"])
                                                   & (pl.col("period_start") == first["period_start"]))
        runs = days.group_by("plan", "plan_version").agg(pl.col("day").min()).sort("day")
        return ", ".join(f"{r['plan']} {r['plan_version']} from {r['day']}" for r in runs.iter_rows(named=True)) \
            or "no lines"

    raise BadInputError(
        f"customers: the customer list (customer_plans) would re-price customer {first['customer_id']}'s closed period "
        f"{first['period_start']}..{first['period_end']} (already ended and rated): {plans(stored)} -> "
        f"{plans(rated)}, for {changed['customer_id'].n_unique()} customer(s). A closed period changes only "
        f"through adjustments with a reason (I19): date plan changes in the open period or later, or re-rate "
        f"on purpose with `metering rerate --adjust-closed REASON`, which records each change in "
        f"rating_adjustments (and correct what Stripe billed with a credit note or an invoice item)")


def _refuse_overlapping_periods(con: duckdb.DuckDBPyConnection, first: dt.date, end: dt.date) -> None:
    """I7 across months: the periods starting in [first, end) may not overlap another stored period of
    the same customer, nor leave days between them and its stored periods before or after. A customer
    list that moves a period's start into an earlier month (its first plan dated back) rates the new
    period there while the later month keeps the old one until re-rated: both stood, billing the same
    days twice (a billed one neither refused nor adjusted). A list whose anchor day changed cut the
    next month's period from the new anchor: the days from the old period's end to it were in no
    period, billed by nobody and listed as unpriced by nothing."""
    _refuse_overlaps(con, first, end)
    _refuse_gaps(con, first, end)


def _rerate_advice(since: dt.date, through: dt.date) -> str:
    return (f"Rate every month the change touches together: `metering rerate --from {since} --to {through}` "
            f"with the same customer list")


def _refuse_overlaps(con: duckdb.DuckDBPyConnection, first: dt.date, end: dt.date) -> None:
    overlaps = con.execute("""
        WITH p AS (SELECT DISTINCT customer_id, period_start, period_end FROM rated_usage)
        SELECT a.customer_id, a.period_start, a.period_end, b.period_start, b.period_end
        FROM p a JOIN p b ON a.customer_id = b.customer_id
             AND a.period_start < b.period_end AND b.period_start < a.period_end
             AND NOT (a.period_start = b.period_start AND a.period_end = b.period_end)
        WHERE a.period_start >= ? AND a.period_start < ?
        ORDER BY a.customer_id, a.period_start, b.period_start""", [first, end]).fetchall()
    if not overlaps:
        return
    customer, start, stop, other_start, other_stop = overlaps[0]
    since = min(min(r[1], r[3]) for r in overlaps)
    through = max(max(r[2], r[4]) for r in overlaps) - dt.timedelta(days=1)
    raise BadInputError(
        f"customers: the customer list (customer_plans) gives customer {customer} the period {start}..{stop}, "
        f"which overlaps its period {other_start}..{other_stop} still stored from the previous list "
        f"({len({r[0] for r in overlaps})} customer(s)); nothing was written. " + _rerate_advice(since, through))


def _refuse_gaps(con: duckdb.DuckDBPyConnection, first: dt.date, end: dt.date) -> None:
    """A customer's plans never end (a customer leaves the list instead), so its stored periods, from
    its first on, follow each other without a day between."""
    gaps = con.execute("""
        WITH p AS (SELECT DISTINCT customer_id, period_start, period_end FROM rated_usage),
        s AS (SELECT customer_id, period_start, period_end,
                     lag(period_start) OVER w AS before_start, lag(period_end) OVER w AS before_end,
                     lead(period_start) OVER w AS after_start, lead(period_end) OVER w AS after_end
              FROM p WINDOW w AS (PARTITION BY customer_id ORDER BY period_start, period_end))
        SELECT customer_id, before_start, before_end, period_start, period_end FROM s
        WHERE period_start >= ? AND period_start < ? AND before_end < period_start
        UNION ALL
        SELECT customer_id, period_start, period_end, after_start, after_end FROM s
        WHERE period_start >= ? AND period_start < ? AND after_start > period_end
        ORDER BY 1, 2""", [first, end, first, end]).fetchall()
    if not gaps:
        return
    customer, start, stop, next_start, next_stop = gaps[0]
    raise BadInputError(
        f"customers: the customer list (customer_plans) leaves customer {customer}'s days "
        f"{stop}..{next_start - dt.timedelta(days=1)} in no billing period, between its periods {start}..{stop} "
        f"and {next_start}..{next_stop} ({len({r[0] for r in gaps})} customer(s)); nothing was written: their "
        f"usage would be billed by no period. A first plan dated later: "
        + _rerate_advice(min(r[1] for r in gaps), max(r[4] for r in gaps) - dt.timedelta(days=1))
        + ". A changed billing_anchor_day: keep the one the periods were rated with (Stripe's subscription "
        "keeps its anchor too; `metering stripe sync` reports the drift)")


def _gauge_scopes(rules: Rules) -> pl.DataFrame:
    """(plan, plan_version, charge_id, scope) of every usage charge of a gauge meter: its filters (JSON),
    what its usage is whichever plan or version prices it."""
    gauges = {name for name, meter in rules.meters.items() if meter.is_gauge()}
    rows = [(v.plan, v.version, i, json.dumps(c.filters)) for v in rules.all_versions
            for i, c in enumerate(v.charges) if c.is_usage and c.meter in gauges]
    return pl.DataFrame(rows, schema={"plan": pl.String, "plan_version": pl.String, "charge_id": pl.Int32,
                                      "scope": pl.String}, orient="row")


def _usage_by_charge(lines: pl.DataFrame, periods: pl.DataFrame, rules: Rules) -> pl.DataFrame:
    """(customer_id, period_start, usage): each usage charge's period quantity, however the period is
    cut into segments.

    A count or sum charge is one plan version's charge, its segments' quantities added. A gauge's is
    its meter and filters, across the period's plans and versions: each charge of a meter prices its
    own part of the usage (per region, say), so one compared per meter missed a late peak of any
    charge but the largest. Its segments hold the period's quantity when its lines were prorated (since
    the eleventh session; their `tiers` say so), else their own, combined by the meter's aggregation:
    max takes the largest, last the latest non-zero segment's, unique_count the one segment that has
    any; with distinct values in several segments the union is unknown, so the per-segment list stands
    and such a period billed before the proration is re-priced once (`recomputed`)."""
    aggregation = {name: m.aggregation for name, m in rules.meters.items()}
    usage = (lines.join(periods, on=PERIOD_KEY, how="semi").filter(pl.col("quantity").is_not_null())
             .join(_gauge_scopes(rules), on=["plan", "plan_version", "charge_id"], how="left")
             .with_columns(agg=pl.col("meter").replace_strict(aggregation, default="unique_count"),
                           whole=pl.col("tiers").str.contains(PRORATED_GAUGE_MARK, literal=True))
             .with_columns(pl.when(pl.col("scope").is_null()).then(pl.col(c)).alias(c)
                           for c in ("plan", "plan_version", "charge_id")))
    charge = ["meter", "scope", "plan", "plan_version", "charge_id"]
    in_order = pl.col("quantity").sort_by("segment_start")
    combined = usage.group_by(*PERIOD_KEY, *charge).agg(
        pl.when(pl.col("whole").any()).then(pl.col("quantity").max())   # every segment holds the same
        .when(pl.col("agg").first().is_in(["sum", "count"])).then(pl.col("quantity").sum())
        .when(pl.col("agg").first() == "max").then(pl.col("quantity").max())
        # a segment without events rates a `last` meter 0: the period's value is the latest segment's
        # that had one (a real 0 there reads as none: an older rating's split period may then be kept)
        .when(pl.col("agg").first() == "last").then(in_order.filter(in_order != 0).last()
                                                     .fill_null(pl.col("quantity").first()))
        # distinct values of one segment at most: the union is that segment's
        .when((pl.col("quantity") != 0).sum() <= 1).then(pl.col("quantity").sum())
        .alias("quantity"),
        in_order.alias("per_segment"))
    combined = combined.with_columns(
        per_segment=pl.when(pl.col("quantity").is_null()).then(pl.col("per_segment")))  # only for unique_count
    fields = [*charge, "quantity", "per_segment"]
    return combined.group_by(PERIOD_KEY).agg(pl.struct(fields).sort_by(charge).alias("usage"))


def _keep_billed_without_new_usage(stored: pl.DataFrame, rated: pl.DataFrame, billed: pl.DataFrame,
                                   rules: Rules) -> pl.DataFrame:
    """`rated`, with the stored lines kept for every billed period whose usage is what it was rated
    with (per charge, whatever the segments; none on both sides counts as the same): such a period is
    re-priced only by late usage (I19), never by a change of the pricing code under the same usage."""
    before, after = _usage_by_charge(stored, billed, rules), _usage_by_charge(rated, billed, rules)
    both = billed.join(before, on=PERIOD_KEY, how="left").join(after, on=PERIOD_KEY, how="left", suffix="_new")
    same = both.filter((pl.col("usage").is_null() & pl.col("usage_new").is_null())
                       | (pl.col("usage") == pl.col("usage_new"))).select(PERIOD_KEY)
    # a period whose days the new lines put under other plans or versions is not kept: that is a
    # customer list (or rules) change, which is refused or adjusted on purpose. Kept, a plan change
    # moved by a day inside a closed period was neither refused nor applied, even with --adjust-closed
    same = same.join(_resegmented(stored, rated, billed).select(PERIOD_KEY).unique(), on=PERIOD_KEY, how="anti")
    if same.height == 0:
        return rated
    kept = stored.join(same, on=PERIOD_KEY, how="semi")
    return pl.concat([rated.join(same, on=PERIOD_KEY, how="anti"), kept.select(rated.columns).cast(rated.schema)]) \
        .sort(LINE_KEY)


class Adjustment(NamedTuple):
    """Why a closed period is re-rated on purpose (`metering rerate --adjust-closed`), and the link to
    what changed (JSON): recorded with every adjustment that re-rating makes."""

    reason: str
    link: dict


def _charge_amounts(lines: pl.DataFrame, periods: pl.DataFrame) -> pl.DataFrame:
    """The amounts of `periods` per customer x period x currency x charge name."""
    key = ["customer_id", "period_start", "period_end", "currency", "charge"]
    return (lines.join(periods, on=PERIOD_KEY, how="semi").group_by(key)
            .agg(pl.col("amount_minor").sum().cast(pl.Int64)))


def _record_adjustments(con: duckdb.DuckDBPyConnection, stored: pl.DataFrame, rated: pl.DataFrame,
                        billed: pl.DataFrame, stamps: pl.DataFrame, rated_at: dt.datetime,
                        adjust: Adjustment | None) -> int:
    """Insert a `rating_adjustments` row for every charge whose amount in a billed period changes (I19).

    A period the operator re-segments on purpose (`adjust`, its plans by day changed) takes their
    reason and link. Any other change of a billed period comes with new usage (an unchanged one was
    kept): reason `late_usage`, linked to the files holding the customer's events of the period that
    were ingested after the period last changed; `recomputed` when no such file explains it (its
    usage was re-aggregated, say). Returns the rows inserted.
    """
    if billed.height == 0:
        return 0
    key = ["customer_id", "period_start", "period_end", "currency", "charge"]
    deltas = (_charge_amounts(stored, billed).join(_charge_amounts(rated, billed), on=key, how="full",
                                                    coalesce=True, suffix="_after")
              .select(*key, before_minor=pl.col("amount_minor").fill_null(0),
                      after_minor=pl.col("amount_minor_after").fill_null(0))
              .with_columns(delta_minor=pl.col("after_minor") - pl.col("before_minor"))
              .filter(pl.col("delta_minor") != 0))
    if deltas.height == 0:
        return 0
    periods = deltas.select(*PERIOD_KEY, "period_end").unique()
    late = _late_files(con, periods.join(stamps, on=PERIOD_KEY)).with_columns(reason=pl.lit("late_usage"))
    links = late
    if adjust is not None:
        chosen = _resegmented(stored, rated, billed).select(PERIOD_KEY).unique().with_columns(
            link=pl.lit(json.dumps(adjust.link, sort_keys=True)), reason=pl.lit(adjust.reason))
        links = pl.concat([chosen, late.join(chosen, on=PERIOD_KEY, how="anti")])
    frame = deltas.join(links, on=PERIOD_KEY, how="left").with_columns(
        reason=pl.col("reason").fill_null("recomputed"), link=pl.col("link").fill_null('{"files": []}'),
        adjusted_at=_stamp(rated_at))
    return warehouse.insert_frame(con, "rating_adjustments", frame)


def _late_files(con: duckdb.DuckDBPyConnection, periods: pl.DataFrame) -> pl.DataFrame:
    """(customer_id, period_start, link) for `periods` (customer_id, period_start, period_end, rated_at:
    when the period last changed): the files holding the customer's events of the period that were
    ingested after that (JSON `{"files": [{"file_id", "path", "sha256"}]}`)."""
    con.register("_adjusted_periods", periods.to_arrow())
    try:
        return warehouse.query_frame(con, """
            WITH late AS (
                SELECT DISTINCT p.customer_id, p.period_start, f.file_id, f.path, f.file_hash
                FROM _adjusted_periods p
                JOIN usage_events e ON e.customer_id = p.customer_id
                     AND e.event_date >= p.period_start AND e.event_date < p.period_end
                JOIN ingested_files f ON f.file_id = e.file_id AND f.ingested_at > p.rated_at
            )
            SELECT customer_id, period_start,
                   to_json({'files': list({'file_id': file_id, 'path': path, 'sha256': file_hash}
                                          ORDER BY file_id)})::VARCHAR AS link
            FROM late GROUP BY ALL""")
    finally:
        con.unregister("_adjusted_periods")


def _stamp(at: dt.datetime) -> pl.Expr:
    return pl.lit(at).cast(pl.Datetime("us", "UTC"))


def read_rated(con: duckdb.DuckDBPyConnection, month: dt.date) -> pl.DataFrame:
    """rated_usage rows of periods starting in `month`, in key order, without rated_at."""
    m0, m1 = month_bounds(month)
    frame = warehouse.query_frame(
        con,
        "SELECT * EXCLUDE (rated_at, tiers), CAST(tiers AS VARCHAR) AS tiers FROM rated_usage "
        "WHERE period_start >= ? AND period_start < ? "
        "ORDER BY customer_id, period_start, segment_start, plan, plan_version, charge_id",
        [m0, m1],
    )
    return frame.select(RATED_COLUMNS) if frame.height else frame


def write_previews(con: duckdb.DuckDBPyConnection, month: dt.date, previews: pl.DataFrame,
                   rated_at: dt.datetime, in_transaction: bool = False) -> int:
    """Replace the invoice_previews rows of periods starting in `month` (in the caller's transaction
    with `in_transaction`)."""
    m0, m1 = month_bounds(month)
    existing = warehouse.query_frame(
        con, f"SELECT {', '.join(PREVIEW_COLUMNS)} FROM invoice_previews WHERE period_start >= ? AND period_start < ? "
        "ORDER BY customer_id, period_start", [m0, m1])
    if existing.height and fingerprint(existing) == fingerprint(previews.select(PREVIEW_COLUMNS)):
        return 0   # unchanged: keep rated_at
    return warehouse.replace_rows(con, "invoice_previews", "period_start >= ? AND period_start < ?", [m0, m1],
                                  previews.with_columns(rated_at=_stamp(rated_at)), in_transaction=in_transaction)


def preview_mismatches(con: duckdb.DuckDBPyConnection, month: dt.date) -> pl.DataFrame:
    """Customers x periods whose preview total differs from the sum of their rated lines (should be none)."""
    m0, m1 = month_bounds(month)
    return warehouse.query_frame(
        con,
        """
        WITH lines AS (
            SELECT customer_id, period_start, currency, sum(amount_minor) AS lines_minor, count(*) AS n
            FROM rated_usage WHERE period_start >= ? AND period_start < ?
            GROUP BY ALL
        ), previews AS (
            SELECT customer_id, period_start, currency, total_minor, total, lines
            FROM invoice_previews WHERE period_start >= ? AND period_start < ?
        )
        SELECT coalesce(l.customer_id, p.customer_id) AS customer_id,
               coalesce(l.period_start, p.period_start) AS period_start,
               l.lines_minor, p.total_minor, p.total, l.n, p.lines
        FROM lines l FULL OUTER JOIN previews p USING (customer_id, period_start, currency)
        WHERE l.lines_minor IS DISTINCT FROM p.total_minor OR l.n IS DISTINCT FROM p.lines
           OR p.total * CASE WHEN list_contains(?, p.currency) THEN 1 ELSE 100 END IS DISTINCT FROM p.total_minor
        ORDER BY 1, 2
        """,
        [m0, m1, m0, m1, list(ZERO_DECIMAL)],
    )


def months_touching(first: dt.date, last: dt.date) -> list[dt.date]:
    """Monthly partitions whose periods can overlap [first, last]: a period starting in the month
    before `first` may still be running on `first`."""
    months = []
    y, m = (first.year, first.month - 1) if first.month > 1 else (first.year - 1, 12)
    while (y, m) <= (last.year, last.month):
        months.append(dt.date(y, m, 1))
        y, m = (y, m + 1) if m < 12 else (y + 1, 1)
    return months


def rerate_range(con: duckdb.DuckDBPyConnection, rules: Rules, first: dt.date, last: dt.date,
                 rated_at: dt.datetime, progress: Callable[[int, int], None] | None = None,
                 adjust: Adjustment | None = None, customers: pl.DataFrame | None = None) -> list[dict]:
    """Recompute aggregates for event dates first..last and re-rate every month touching them.

    `customers` (a loaded customer list) rates the months and replaces `customer_plans` in the same
    transaction as their lines: a refused or interrupted run leaves the stored list as it was.

    Refused (`checks.UnsoundEventsError`, exit 4) while usage_events break conservation or event_id
    uniqueness. Returns one summary per month: lines, totals per currency (minor units), whether the output changed,
    and the usage no line covers (`unpriced`: what the Dagster check all_usage_priced lists).
    `progress(done, total)` is told after each day and each month.
    """
    require_sound_events(con)   # as the usage_aggregates asset: unsound usage is never aggregated
    months = months_touching(first, last)
    total = (last - first).days + 1 + len(months)
    done = 0
    day = first
    while day <= last:
        refresh_aggregates(con, rules.meters, day)
        day += dt.timedelta(days=1)
        done += 1
        if progress:
            progress(done, total)
    ratings = []
    for month in months:
        ratings.append((month, fingerprint(read_rated(con, month)), rate_month_full(con, rules, month, customers)))
        done += 1
        if progress:
            progress(done, total)
    out = []
    # every month in one transaction: a month refused (a closed period re-priced) leaves none written
    with warehouse.transaction(con):
        if customers is not None:
            warehouse.replace_rows(con, "customer_plans", "TRUE", [], customers, in_transaction=True)
        for month, before, rating in ratings:
            write_rated(con, month, rating.rated, rules, rated_at, adjust, in_transaction=True)
            stored = read_rated(con, month)   # billed periods without new usage keep their lines
            previews = invoice_previews(stored)
            write_previews(con, month, previews, rated_at, in_transaction=True)
            totals = previews.group_by("currency").agg(pl.col("total_minor").sum()).sort("currency")
            out.append({"month": month, "lines": stored.height, "changed": before != fingerprint(stored),
                        "totals": {c: t for c, t in totals.iter_rows()}, "unpriced": rating.unpriced})
        _refuse_overlapping_periods(con, months[0], month_bounds(months[-1])[1])
    return out
