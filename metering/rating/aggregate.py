"""From events to charge quantities.

1. `hourly_aggregates_sql` / `build_aggregates`: usage_events -> usage_aggregates, one row per
   customer x meter x dimension values x hour, with enough detail to combine hours exactly over
   any period: the hour's quantity (count, sum, max), the last value with its event time and id
   (ties on time broken by the larger event_id), and the hour's distinct values for unique_count.
2. `charge_quantities`: usage_aggregates rows x customer segments -> the period quantity of each
   usage charge, selecting rows by the charge's `filters` and combining hours by the meter's
   aggregation: count/sum add, max takes the max, last takes the value of the latest event,
   unique_count counts the distinct values of the union.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping

import duckdb
import polars as pl

from metering.rating import money
from metering.rules.meters import GAUGE_AGGREGATIONS, Meter
from metering.rules.model import Rules
from metering.warehouse import query_frame, sql_string

AGGREGATE_SCHEMA = {
    "customer_id": pl.String, "meter": pl.String, "dimensions": pl.String,
    "hour": pl.Datetime("us", "UTC"), "event_date": pl.Date, "quantity": money.QUANTITY_DTYPE,
    "event_count": pl.Int64, "last_event_time": pl.Datetime("us", "UTC"), "last_event_id": pl.String,
    "distinct_values": pl.List(pl.String),
}


def _case(meters: Mapping[str, Meter], expr_for) -> str:
    whens = " ".join(f"WHEN {sql_string(name)} THEN {expr_for(m)}" for name, m in sorted(meters.items()))
    return f"CASE meter {whens} END"


def json_pointer(key: str) -> str:
    """The JSON Pointer (RFC 6901) of a top-level key: any property name, read literally. As a JSONPath
    (`$.` + name), `user[id]` failed the whole aggregation and `a.b` read a nested `a` object."""
    return "/" + key.replace("~", "~0").replace("/", "~1")


def hourly_aggregates_sql(meters: Mapping[str, Meter]) -> str:
    """SQL with two parameters (first event_date, end event_date exclusive) producing AGGREGATE_SCHEMA rows."""
    def dims(m: Meter) -> str:
        if not m.dimensions:
            return "'{}'"
        pairs = ", ".join(f"{sql_string(d)}, json_extract_string(properties, {sql_string(json_pointer(d))})"
                          for d in m.dimensions)
        return f"CAST(json_object({pairs}) AS VARCHAR)"

    def distinct_value(m: Meter) -> str:
        return (f"json_extract_string(properties, {sql_string(json_pointer(m.property or ''))})"
                if m.aggregation == "unique_count" else "NULL")

    quantity = {
        "count": "CAST(count(*) AS DECIMAL(38, 12))",
        "sum": "CAST(sum(value) AS DECIMAL(38, 12))",
        "max": "CAST(max(value) AS DECIMAL(38, 12))",
        "last": "CAST(arg_max(value, (event_time, event_id)) AS DECIMAL(38, 12))",
        "unique_count": "CAST(count(DISTINCT distinct_value) AS DECIMAL(38, 12))",
    }
    meter_list = ", ".join(sql_string(m) for m in sorted(meters))
    agg_case = " ".join(f"WHEN {sql_string(n)} THEN {quantity[m.aggregation]}" for n, m in sorted(meters.items()))
    return f"""
        WITH ev AS (
            SELECT customer_id, meter, event_time, event_id, event_date, value,
                   {_case(meters, dims)} AS dimensions,
                   {_case(meters, distinct_value)} AS distinct_value
            FROM usage_events
            WHERE event_date >= ? AND event_date < ? AND meter IN ({meter_list})
        )
        SELECT customer_id, meter, dimensions,
               date_trunc('hour', event_time) AS hour,
               min(event_date) AS event_date,
               CASE meter {agg_case} END AS quantity,
               count(*) AS event_count,
               max(event_time) AS last_event_time,
               arg_max(event_id, (event_time, event_id)) AS last_event_id,
               CASE WHEN count(distinct_value) > 0
                    THEN list(DISTINCT distinct_value ORDER BY distinct_value) FILTER (WHERE distinct_value IS NOT NULL)
               END AS distinct_values
        FROM ev
        GROUP BY customer_id, meter, dimensions, date_trunc('hour', event_time)
        ORDER BY customer_id, meter, dimensions, hour
    """


def build_aggregates(con: duckdb.DuckDBPyConnection, meters: Mapping[str, Meter],
                     start: dt.date, end: dt.date) -> pl.DataFrame:
    """usage_aggregates rows for events with start <= event_date < end, in a fixed order."""
    frame = query_frame(con, hourly_aggregates_sql(meters), [start, end])
    if frame.height == 0:
        return pl.DataFrame(schema=AGGREGATE_SCHEMA)
    return frame.cast(AGGREGATE_SCHEMA).select(list(AGGREGATE_SCHEMA))  # type: ignore[arg-type]


def _matches(filters: tuple, dims: dict) -> bool:
    return all(dims.get(d) in allowed for d, allowed in filters)


def charge_map(keys: pl.DataFrame, rules: Rules) -> pl.DataFrame:
    """For each distinct (plan, plan_version, meter, dimensions) the usage charge that prices it.

    Runs in Python over the distinct dimension combinations only (a handful), never per usage row.
    The validator guarantees at most one charge matches; a combination no charge matches is unpriced.
    """
    rows = []
    for plan, version, meter, dims_json in keys.unique().sort(pl.all()).iter_rows():
        if plan not in rules.plans:
            continue
        try:
            pv = rules.version(plan, version)
        except KeyError:
            continue
        dims = json.loads(dims_json) if dims_json else {}
        for i, charge in enumerate(pv.charges):
            if charge.is_usage and charge.meter == meter and _matches(charge.filters, dims):
                rows.append((plan, version, meter, dims_json, i))
                break
    return pl.DataFrame(rows, schema={"plan": pl.String, "plan_version": pl.String, "meter": pl.String,
                                      "dimensions": pl.String, "charge_id": pl.Int32}, orient="row")


def assign_segments(partials: pl.DataFrame, segments: pl.DataFrame, *, whole_period: bool = False) -> pl.DataFrame:
    """Attach each hourly row to the customer segment whose [segment_start, segment_end) holds its hour;
    with `whole_period`, to every segment of the period that holds it (a gauge's quantity is the
    period's: see `charge_quantities`).

    Rows outside every segment (no plan in force) are dropped here; `unassigned_usage` reports them.
    """
    utc = pl.Datetime("us", "UTC")
    start, end = ("period_start", "period_end") if whole_period else ("segment_start", "segment_end")
    seg = segments.select(
        "customer_id", "period_start", "segment_start", "segment_end", "plan", "plan_version",
        _from=pl.col(start).cast(utc), _to=pl.col(end).cast(utc),
    )
    return (
        partials.join(seg, on="customer_id", how="inner")
        .filter((pl.col("hour") >= pl.col("_from")) & (pl.col("hour") < pl.col("_to")))
        .drop("_from", "_to")
    )


# Per aggregation: the partial columns it needs and how hours combine over a segment.
_COMBINE: list[tuple[tuple[str, ...], tuple[str, ...], pl.Expr]] = [
    (("count", "sum"), ("quantity",), pl.col("quantity").sum()),
    (("max",), ("quantity",), pl.col("quantity").max()),
    (("last",), ("quantity", "last_event_time", "last_event_id"),
     pl.col("quantity").sort_by(["last_event_time", "last_event_id"]).last()),
    (("unique_count",), ("distinct_values",),
     pl.col("distinct_values").drop_nulls().n_unique().cast(money.QUANTITY_DTYPE).alias("quantity")),
]


def charge_quantities(partials: pl.DataFrame, segments: pl.DataFrame, rules: Rules) -> pl.DataFrame:
    """Period quantities per (customer, period, segment, plan version, usage charge) from hourly rows.

    A count or sum meter's segment gets the usage of the segment's own hours (the parts add up to
    the period). A gauge's (max, last, unique_count) gets the whole period's quantity, matched by
    the segment's own charge: the seats a customer had, the peak it stored, the users it had, are
    the period's, and pricing prorates each segment's amount by its days. Per segment, a period
    cut by a version change billed a steady 10 seats in full twice.

    Rows are split by the meter's aggregation first, so each branch carries only the columns it
    combines (the list of distinct values only travels with unique_count meters).
    """
    combos = partials.select("meter", "dimensions").unique().join(
        segments.select("plan", "plan_version").unique(), how="cross"
    )
    mapping = charge_map(combos.select("plan", "plan_version", "meter", "dimensions"), rules)
    key = ["customer_id", "period_start", "segment_start", "plan", "plan_version", "charge_id"]
    parts = []
    for aggregations, columns, combine in _COMBINE:
        meters = [name for name, m in rules.meters.items() if m.aggregation in aggregations]
        rows = partials.filter(pl.col("meter").is_in(meters)).select("customer_id", "meter", "dimensions", "hour",
                                                                     *columns)
        gauge = all(a in GAUGE_AGGREGATIONS for a in aggregations)
        located = assign_segments(rows, segments, whole_period=gauge).join(
            mapping, on=["plan", "plan_version", "meter", "dimensions"], how="inner"
        )
        if "distinct_values" in columns:
            located = located.explode("distinct_values")
        parts.append(located.group_by(key).agg(combine).cast({"quantity": money.QUANTITY_DTYPE}))
    return pl.concat(parts).sort(key)


UNPRICED_SCHEMA = {"customer_id": pl.String, "meter": pl.String, "dimensions": pl.String, "reason": pl.String,
                   "rows": pl.UInt32, "events": pl.Int64}


def unpriced_usage(partials: pl.DataFrame, segments: pl.DataFrame, rules: Rules,
                   month_start: dt.date, month_end: dt.date, starts: pl.DataFrame | None = None) -> pl.DataFrame:
    """Usage that no rated line covers, with a reason, so nothing disappears silently.

    - `unknown_customer`: events in the calendar month from a customer not in the customer list;
    - `no_plan_in_force`: events in the calendar month before the customer's first plan assignment
      (`starts`: customer_id, starts_on), where no billing period reaches; or inside a billing
      period but outside every plan version;
    - `no_matching_charge`: the plan version has no charge for the meter / dimension values.
    One row per customer x meter x dimensions x reason with hourly rows and events counted.
    """
    key = ["customer_id", "meter", "dimensions", "hour"]
    utc = pl.Datetime("us", "UTC")
    # listed customers: those with a period this month, and (`starts`) those whose subscription has not
    # begun yet, whose usage is `no_plan_in_force` below, not also `unknown_customer`
    listed = [segments.select("customer_id")] + ([starts.select("customer_id")] if starts is not None else [])
    known = pl.concat(listed).unique()
    m0, m1 = (pl.lit(d).cast(utc) for d in (month_start, month_end))
    unknown = partials.join(known, on="customer_id", how="anti").filter(
        (pl.col("hour") >= m0) & (pl.col("hour") < m1)
    ).with_columns(reason=pl.lit("unknown_customer"))
    periods = segments.select("customer_id", "period_start", "period_end").unique()
    in_period = partials.join(periods, on="customer_id").filter(
        (pl.col("hour") >= pl.col("period_start").cast(utc)) & (pl.col("hour") < pl.col("period_end").cast(utc))
    )
    located = assign_segments(partials, segments)
    no_plan = in_period.join(located.select(key), on=key, how="anti").with_columns(reason=pl.lit("no_plan_in_force"))
    if starts is not None:   # before the subscription began: once it vanished from every list
        early = partials.join(starts, on="customer_id").filter(
            (pl.col("hour") >= m0) & (pl.col("hour") < m1) & (pl.col("hour") < pl.col("starts_on").cast(utc)))
        no_plan = pl.concat([no_plan.select(*partials.columns, "reason"),
                             early.select(*partials.columns).with_columns(reason=pl.lit("no_plan_in_force"))])
    combos = located.select("plan", "plan_version", "meter", "dimensions").unique()
    mapping = charge_map(combos, rules)
    no_charge = located.join(mapping, on=["plan", "plan_version", "meter", "dimensions"], how="anti").with_columns(
        reason=pl.lit("no_matching_charge")
    )
    cols = ["customer_id", "meter", "dimensions", "reason", "event_count"]
    both = pl.concat([unknown.select(cols), no_plan.select(cols), no_charge.select(cols)])
    return (
        both.group_by("customer_id", "meter", "dimensions", "reason")
        .agg(rows=pl.len(), events=pl.col("event_count").sum())
        .sort("customer_id", "meter", "dimensions", "reason")
        .cast(UNPRICED_SCHEMA)  # type: ignore[arg-type]
    )
