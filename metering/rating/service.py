"""Rating against the warehouse: what the Dagster assets and `metering rerate` call.

- `refresh_aggregates(con, meters, day)`: rebuild usage_aggregates for one event date.
- `rate_month(con, rules, month)`: rate every billing period that STARTS in `month` (the
  monthly_billing partition), reading the hourly aggregates of the periods' whole time range.
- `write_rating(con, month, rated, previews, rules)`: replace that month's rated_usage and
  invoice_previews rows in one transaction and record the plan versions used in rules_versions.

All writes are delete-then-insert of exactly the partition's rows, so re-running is safe.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json

import duckdb
import polars as pl

from metering import warehouse
from metering.customers import CUSTOMER_PLAN_SCHEMA, billing_segments, month_bounds
from metering.rating.aggregate import AGGREGATE_SCHEMA, build_aggregates, charge_quantities
from metering.rating.pricing import rate
from metering.rules.meters import Meter
from metering.rules.model import Rules

PREVIEW_COLUMNS = ["customer_id", "period_start", "period_end", "currency", "total_minor", "total", "lines"]


def refresh_aggregates(con: duckdb.DuckDBPyConnection, meters: dict[str, Meter], day: dt.date) -> pl.DataFrame:
    """Recompute usage_aggregates for events dated `day` and replace that day's rows atomically."""
    frame = build_aggregates(con, meters, day, day + dt.timedelta(days=1))
    warehouse.replace_rows(con, "usage_aggregates", "event_date = ?", [day], frame)
    return frame


def read_customer_plans(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
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


def rate_month(con: duckdb.DuckDBPyConnection, rules: Rules, month: dt.date,
               customers: pl.DataFrame | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Rated lines and invoice previews for the billing periods that start in `month`."""
    if customers is None:
        customers = read_customer_plans(con)
    segments = billing_segments(customers, rules, month)
    if segments.height == 0:
        rated = rate(segments, pl.DataFrame(), rules)
        return rated, invoice_previews(rated)
    start = segments["segment_start"].min()
    end = segments["segment_end"].max()
    usage = read_aggregates(con, start, end)
    quantities = charge_quantities(usage, segments, rules)
    rated = rate(segments, quantities, rules)
    return rated, invoice_previews(rated)


def fingerprint(frame: pl.DataFrame) -> str:
    """A content hash of a frame (column names, types and values in order): equal frames, equal hash."""
    digest = hashlib.sha256()
    digest.update(json.dumps({k: str(v) for k, v in frame.schema.items()}).encode())
    digest.update(frame.write_csv().encode())
    return digest.hexdigest()


def rated_hashes(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], str]:
    """{(plan, version): content hash} of every plan version that has rated lines."""
    rows = con.execute(
        "SELECT plan, plan_version, rules_hash FROM rules_versions "
        "UNION SELECT DISTINCT plan, plan_version, rules_hash FROM rated_usage"
    ).fetchall()
    return {(p, v): h for p, v, h in rows}


def write_rating(con: duckdb.DuckDBPyConnection, month: dt.date, rated: pl.DataFrame, previews: pl.DataFrame,
                 rules: Rules, rated_at: dt.datetime) -> None:
    """Replace the month's rated_usage and invoice_previews rows and record the versions used."""
    m0, m1 = month_bounds(month)
    stamp = pl.lit(rated_at).cast(pl.Datetime("us", "UTC"))
    used = rated.select("plan", "plan_version").unique()
    with warehouse.transaction(con):
        warehouse.replace_rows(con, "rated_usage", "period_start >= ? AND period_start < ?", [m0, m1],
                               rated.with_columns(rated_at=stamp), in_transaction=True)
        warehouse.replace_rows(con, "invoice_previews", "period_start >= ? AND period_start < ?", [m0, m1],
                               previews.with_columns(rated_at=stamp), in_transaction=True)
        known = {(p, v) for p, v in con.execute("SELECT plan, plan_version FROM rules_versions").fetchall()}
        for plan, version in used.sort("plan", "plan_version").iter_rows():
            if (plan, version) in known:
                continue
            pv = rules.version(plan, version)
            con.execute(
                "INSERT INTO rules_versions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [plan, version, pv.content_hash, pv.currency, pv.effective_from,
                 json.dumps(pv.canonical(), sort_keys=True, separators=(",", ":")), rated_at],
            )
