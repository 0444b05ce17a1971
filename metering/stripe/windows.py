"""The value each customer x meter x window should carry in Stripe, from `usage_aggregates`.

Stripe meters are pre-aggregated (`event_time_window` day or hour): within a window Stripe keeps
only the newest event, so we push the window's total and a corrected total replaces the old one.
How our aggregations map onto Stripe's formulas (one meter per our meter, dimensions summed):

| ours | Stripe formula | value pushed for a window |
| --- | --- | --- |
| sum | sum | the window's sum |
| count | sum | the window's event count |
| last | last | the last value from the start of the customer's billing period to the window's end |
| max | last | the maximum from the start of the customer's billing period to the window's end |
| unique_count | last | distinct values from the start of the billing period to the window's end |

For `last`-formula meters Stripe bills the newest event of the period, so every window carries
what rating would bill for the period as of the window's end (the period-to-date value), and the
newest window pushed holds the period's value. When a window changes (a late event, or its usage
withdrawn), every window of the same meter and customer already in the ledger from the push's
first day on is recomputed too. A window whose own usage was withdrawn keeps being pushed, with
the period-to-date value: for `last` that is the period's previous last value (an earlier
window's), never 0 unless the period has no usage left at all.

Billing periods follow the customer's `billing_anchor_day` (1..31, clamped to the month's last
day, as Stripe does; NULL = calendar month), read from `customer_plans` (the rating's copy of the
customer list); `period_start_sql` is checked against `metering.customers.period_containing`.
"""

from __future__ import annotations

from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal

import duckdb
import polars as pl

from metering import warehouse
from metering.rules.meters import Meter

STRIPE_FORMULA = {"sum": "sum", "count": "sum", "last": "last", "max": "last", "unique_count": "last"}
WINDOW_KINDS = ("day", "hour")
STRIPE_VALUE_DIGITS = 15
"""Stripe refuses a meter event value of more than 15 significant digits (400, API 2026-04-22.dahlia
on: "billing meter event values validation"); it aggregates in doubles, which hold no more."""


def stripe_value(value: Decimal) -> Decimal:
    """`value` rounded half-even to Stripe's 15 significant digits (unchanged when it has no more).

    A window's value has 12 decimals at most, so only values of 1000 or more can have more than 15
    digits; the rounding moves a value by less than 5 parts in 10^15 of itself, less than the
    double rounding the reconciliation already allows for a meter quantity."""
    if not value:
        return value
    quantum = value.adjusted() - STRIPE_VALUE_DIGITS + 1  # the exponent of the 15th significant digit
    if quantum <= value.as_tuple().exponent:
        return value
    return value.quantize(Decimal(1).scaleb(quantum), rounding=ROUND_HALF_EVEN)


def to_stripe_digits(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` with its `value` column rounded by `stripe_value`. Only the distinct values of 1000 or
    more go through Python (a value below has 15 significant digits at most)."""
    big = frame.filter(pl.col("value").abs() >= 1000)["value"].unique()
    if big.is_empty():
        return frame
    dtype = frame.schema["value"]
    rounded = pl.DataFrame({"value": big, "_stripe": pl.Series([stripe_value(v) for v in big], dtype=dtype)})
    return (frame.join(rounded, on="value", how="left", nulls_equal=False)
            .with_columns(value=pl.coalesce("_stripe", "value")).drop("_stripe"))


def stripe_formula(meter: Meter) -> str:
    return STRIPE_FORMULA[meter.aggregation]


def _window_start_sql(kind: str, hour_col: str = "hour") -> str:
    if kind == "day":
        return f"date_trunc('day', {hour_col})"
    if kind == "hour":
        return f"date_trunc('hour', {hour_col})"
    raise ValueError(f"window kind must be one of {WINDOW_KINDS}, got {kind!r}")


def period_start_sql(day_expr: str, anchor_expr: str) -> str:
    """SQL for the start (DATE) of the billing period containing DATE `day_expr`.

    The anchor day in a month is min(anchor, days in that month); if that is after the day, the
    period started in the previous month (again clamped).
    """
    a = f"coalesce({anchor_expr}, 1)"
    this_month = f"date_trunc('month', {day_expr})::DATE"
    prev_month = f"(date_trunc('month', {day_expr}) - INTERVAL 1 MONTH)::DATE"

    def anchored(month: str) -> str:
        return f"({month} + (least({a}, day(last_day({month}))) - 1) * INTERVAL 1 DAY)::DATE"

    return (
        f"CASE WHEN {anchored(this_month)} <= {day_expr} THEN {anchored(this_month)} "
        f"ELSE {anchored(prev_month)} END"
    )


def desired_values(
    con: duckdb.DuckDBPyConnection,
    meters: dict[str, Meter],
    date_from: date,
    date_to: date,
    window_kind: str = "day",
) -> pl.DataFrame:
    """One row per customer x meter x window whose value must be (re)checked for [date_from, date_to].

    Columns: customer_id, meter, window_kind, window_start, window_end, event_date, value
    (DECIMAL(38,12), as Stripe will hold it: `stripe_value`), raw_events. Includes windows the ledger
    already holds for which usage disappeared (for `sum`-formula meters value 0, for `last`-formula meters the period-to-date
    value), and for `last`-formula meters every window the ledger holds after date_to as well (the
    push widens its span to them and guards them like the others).
    """
    frames = []
    ws = _window_start_sql(window_kind)
    for meter in meters.values():
        formula = stripe_formula(meter)
        if formula == "sum":
            sql = f"""
            WITH agg AS (
                SELECT customer_id, {ws} AS window_start,
                       sum(quantity) AS value, sum(event_count) AS raw_events
                FROM usage_aggregates
                WHERE meter = ? AND event_date BETWEEN ? AND ?
                GROUP BY ALL
            ), known AS (
                SELECT DISTINCT customer_id, window_start FROM stripe_push_ledger
                WHERE meter = ? AND window_kind = ? AND event_date BETWEEN ? AND ?
            )
            SELECT customer_id, window_start,
                   coalesce(a.value, 0)::DECIMAL(38, 12) AS value,
                   coalesce(a.raw_events, 0)::BIGINT AS raw_events
            FROM agg a FULL OUTER JOIN known k USING (customer_id, window_start)
            """
            params = [meter.name, date_from, date_to, meter.name, window_kind, date_from, date_to]
        else:
            sql = _last_formula_sql(meter, ws)
            params = [meter.name, date_from, date_to,          # windows with usage in range
                      meter.name, window_kind, date_from,      # ledger windows from date_from on
                      meter.name]                               # aggregates for values
        frame = warehouse.query_frame(con, sql, params)
        if frame.is_empty():
            continue
        frames.append(frame.with_columns(meter=pl.lit(meter.name)))
    if not frames:
        return pl.DataFrame(schema={
            "customer_id": pl.String, "meter": pl.String, "window_kind": pl.String,
            "window_start": pl.Datetime("us", "UTC"), "window_end": pl.Datetime("us", "UTC"),
            "event_date": pl.Date, "value": pl.Decimal(38, 12), "raw_events": pl.Int64,
        })
    out = pl.concat([f.select("customer_id", "meter", "window_start", "value", "raw_events") for f in frames])
    out = out.with_columns(pl.col("window_start").cast(pl.Datetime("us", "UTC")))
    delta = pl.duration(days=1) if window_kind == "day" else pl.duration(hours=1)
    return to_stripe_digits(out).with_columns(
        window_kind=pl.lit(window_kind),
        window_end=pl.col("window_start") + delta,
        event_date=pl.col("window_start").dt.date(),
        value=pl.col("value").cast(pl.Decimal(38, 12)),
        raw_events=pl.col("raw_events").cast(pl.Int64),
    ).select("customer_id", "meter", "window_kind", "window_start", "window_end", "event_date",
             "value", "raw_events").sort("customer_id", "meter", "window_start")


def _last_formula_sql(meter: Meter, ws: str) -> str:
    """Windows to evaluate and their period-to-date value (last / max / unique_count): what rating
    (`metering.rating.aggregate`) bills for [period start, window end)."""
    anchor = "(SELECT max(c.billing_anchor_day) FROM customer_plans c WHERE c.customer_id = w.customer_id)"
    # the subscription starts at the customer's first plan (`metering.customers`): its first period runs
    # from there, and nothing before it is in that period, for rating nor for Stripe's `last` formula
    subscribed = "(SELECT min(c.plan_effective_from) FROM customer_plans c WHERE c.customer_id = w.customer_id)"
    anchored = period_start_sql("w.window_start::DATE", anchor)
    pstart = f"greatest({anchored}, coalesce({subscribed}, {anchored}))"
    if meter.aggregation == "last":
        # the latest event by (event time, event id), as rating orders them
        value_sql = f"""
            (SELECT arg_max(a.quantity, (a.last_event_time, a.last_event_id)) FROM usage_aggregates a
             WHERE a.meter = ? AND a.customer_id = w.customer_id
               AND a.hour >= ({pstart})::TIMESTAMPTZ AND a.hour < w.window_end)"""
        raw_sql = """(SELECT sum(a.event_count) FROM usage_aggregates a
             WHERE a.meter = w.meter AND a.customer_id = w.customer_id
               AND a.hour >= w.window_start AND a.hour < w.window_end)"""
    elif meter.aggregation == "max":
        value_sql = f"""
            (SELECT max(a.quantity) FROM usage_aggregates a
             WHERE a.meter = ? AND a.customer_id = w.customer_id
               AND a.hour >= ({pstart})::TIMESTAMPTZ AND a.hour < w.window_end)"""
        raw_sql = """(SELECT sum(a.event_count) FROM usage_aggregates a
             WHERE a.meter = w.meter AND a.customer_id = w.customer_id
               AND a.hour >= w.window_start AND a.hour < w.window_end)"""
    else:  # unique_count
        value_sql = f"""
            (SELECT count(DISTINCT v) FROM (
                SELECT unnest(a.distinct_values) AS v FROM usage_aggregates a
                WHERE a.meter = ? AND a.customer_id = w.customer_id
                  AND a.hour >= ({pstart})::TIMESTAMPTZ AND a.hour < w.window_end))"""
        raw_sql = """(SELECT sum(a.event_count) FROM usage_aggregates a
             WHERE a.meter = w.meter AND a.customer_id = w.customer_id
               AND a.hour >= w.window_start AND a.hour < w.window_end)"""
    step = "INTERVAL 1 DAY" if "day" in ws else "INTERVAL 1 HOUR"
    return f"""
    WITH used AS (
        SELECT DISTINCT customer_id, meter, {ws} AS window_start FROM usage_aggregates
        WHERE meter = ? AND event_date BETWEEN ? AND ?
    ), known AS (
        -- windows already pushed from date_from on: those in the range (their usage may have been
        -- withdrawn) and the later ones, whose period-to-date value an earlier change can move
        SELECT DISTINCT l.customer_id, l.meter, l.window_start FROM stripe_push_ledger l
        WHERE l.meter = ? AND l.window_kind = ? AND l.event_date >= ?
    ), w AS (
        SELECT customer_id, meter, window_start, window_start + {step} AS window_end
        FROM (SELECT * FROM used UNION SELECT * FROM known)
    )
    SELECT w.customer_id, w.window_start,
           coalesce({value_sql}, 0)::DECIMAL(38, 12) AS value,
           coalesce({raw_sql}, 0)::BIGINT AS raw_events
    FROM w
    """
