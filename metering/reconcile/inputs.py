"""Read the inputs of a reconciliation from the warehouse, rolled up to the grain `reconcile` compares.

A billing month (the `monthly_billing` partition, e.g. 2026-10-01) covers every customer billing
period that *starts* in that month (periods follow each customer's billing anchor).

- ours: `rated_usage` metered lines -> customer x meter x period. Charges of one meter in one
  segment share the meter's quantity (max over charges); segments after a plan change add up for
  additive meters (count, sum) and the last segment's quantity counts otherwise.
- pushed: `stripe_push_ledger`, per window the latest acknowledged revision's value (what Stripe's
  pre-aggregated meter holds for the window), summed for additive meters, last window otherwise.
- Stripe's meter: `stripe_meter_summaries` grain 'period' rows (Stripe's own aggregate), or pending.
- Stripe's lines: `stripe_invoice_lines_api`, plus webhook-derived `stripe_invoice_lines` for
  invoices the API pull did not see (the API read wins: it is the later, direct read).
"""

from __future__ import annotations

import datetime as dt

import duckdb
import polars as pl

from metering.reconcile import reconcile as rc
from metering.rules.meters import Meter
from metering.warehouse import query_frame

ADDITIVE = ("count", "sum")


def month_bounds(billing_month: dt.date) -> tuple[dt.date, dt.date]:
    start = billing_month.replace(day=1)
    end = (start.replace(year=start.year + 1, month=1) if start.month == 12
           else start.replace(month=start.month + 1))
    return start, end


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    """Columns of `table` in the main schema (empty set when the table does not exist)."""
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = 'main' AND table_name = ?",
        [table],
    ).fetchall()
    return {r[0] for r in rows}


def _additive(meters: dict[str, Meter]) -> list[str]:
    return [name for name, m in meters.items() if m.aggregation in ADDITIVE]


def load_ours(con: duckdb.DuckDBPyConnection, billing_month: dt.date, meters: dict[str, Meter]) -> pl.DataFrame:
    """Rated quantity and amount per customer x meter x billing period."""
    cols = table_columns(con, "rated_usage")
    if not cols:
        return rc.conform(None, rc.OURS_SCHEMA)
    start, end = month_bounds(billing_month)
    seg = "coalesce(CAST(segment_start AS TIMESTAMPTZ), CAST(period_start AS TIMESTAMPTZ))" \
        if "segment_start" in cols else "CAST(period_start AS TIMESTAMPTZ)"
    frame = query_frame(
        con,
        f"""
        WITH seg AS (
            SELECT customer_id, meter, period_start, period_end, currency, plan, plan_version,
                   {seg} AS seg, max(quantity) AS q, sum(amount_minor) AS amt
            FROM rated_usage
            WHERE meter IS NOT NULL AND period_start >= ? AND period_start < ?
            GROUP BY ALL
        )
        SELECT customer_id, meter, period_start, max(period_end) AS period_end,
               any_value(currency) AS currency, arg_max(plan, seg) AS plan,
               arg_max(plan_version, seg) AS plan_version,
               CAST(sum(q) AS DECIMAL(38, 12)) AS q_sum, CAST(arg_max(q, seg) AS DECIMAL(38, 12)) AS q_last,
               CAST(sum(amt) AS BIGINT) AS our_amount_minor
        FROM seg GROUP BY customer_id, meter, period_start
        """,
        [start, end],
    )
    frame = frame.with_columns(
        our_quantity=pl.when(pl.col("meter").is_in(_additive(meters))).then("q_sum").otherwise("q_last")
    )
    return rc.conform(frame, rc.OURS_SCHEMA)


def load_periods(con: duckdb.DuckDBPyConnection, billing_month: dt.date) -> pl.DataFrame:
    """customer_id, period_start, period_end of every billing period starting in the month (from rating)."""
    start, end = month_bounds(billing_month)
    sources = []
    for table in ("rated_usage", "invoice_previews"):
        if {"customer_id", "period_start", "period_end"} <= table_columns(con, table):
            sources.append(
                f"SELECT customer_id, period_start, period_end FROM {table} WHERE period_start >= ? AND period_start < ?"
            )
    schema = {"customer_id": pl.String, "period_start": pl.Date, "period_end": pl.Date}
    if not sources:
        return pl.DataFrame(schema=schema)
    params = [start, end] * len(sources)
    return rc.conform(query_frame(con, " UNION ".join(sources), params), schema)


def load_pushed(
    con: duckdb.DuckDBPyConnection, billing_month: dt.date, meters: dict[str, Meter], periods: pl.DataFrame
) -> pl.DataFrame:
    """Acknowledged pushed quantity, unacknowledged and late windows per customer x meter x period."""
    if not table_columns(con, "stripe_push_ledger") or periods.is_empty():
        return rc.conform(None, rc.PUSHED_SCHEMA)
    con.register("_recon_periods", periods.to_arrow())
    try:
        frame = query_frame(
            con,
            """
            WITH w AS (
                SELECT l.customer_id, l.meter, p.period_start, l.window_start,
                       arg_max(l.status, l.revision) AS last_status,
                       arg_max(l.value, l.revision) FILTER (WHERE l.status = 'acknowledged') AS acked_value
                FROM stripe_push_ledger l
                JOIN _recon_periods p
                  ON p.customer_id = l.customer_id
                 AND l.window_start >= CAST(p.period_start AS TIMESTAMPTZ)
                 AND l.window_start < CAST(p.period_end AS TIMESTAMPTZ)
                GROUP BY ALL
            )
            SELECT customer_id, meter, period_start,
                   CAST(coalesce(sum(acked_value), 0) AS DECIMAL(38, 12)) AS q_sum,
                   CAST(arg_max(acked_value, window_start) FILTER (WHERE acked_value IS NOT NULL)
                        AS DECIMAL(38, 12)) AS q_last,
                   count(*) FILTER (WHERE last_status NOT IN ('acknowledged', 'late')) AS unacked_windows,
                   count(*) FILTER (WHERE last_status = 'late') AS late_windows
            FROM w GROUP BY customer_id, meter, period_start
            """,
        )
    finally:
        con.unregister("_recon_periods")
    frame = frame.with_columns(
        pushed_quantity=pl.when(pl.col("meter").is_in(_additive(meters))).then("q_sum").otherwise("q_last")
    )
    return rc.conform(frame, rc.PUSHED_SCHEMA)


def load_stripe_meter(con: duckdb.DuckDBPyConnection, billing_month: dt.date) -> pl.DataFrame:
    """Stripe's period aggregate per customer x meter x period, or a pending marker."""
    if not table_columns(con, "stripe_meter_summaries"):
        return rc.conform(None, rc.STRIPE_METER_SCHEMA)
    frame = query_frame(
        con,
        """
        SELECT customer_id, meter, period_start, max(period_end) AS period_end,
               CAST(sum(aggregated_value) FILTER (WHERE status = 'settled') AS DECIMAL(38, 12)) AS stripe_quantity,
               CASE WHEN bool_or(status = 'pending') THEN 'pending' ELSE 'settled' END AS meter_status,
               string_agg(DISTINCT status_reason, '; ') AS pending_reason
        FROM stripe_meter_summaries
        WHERE billing_month = ? AND (grain = 'period' OR status = 'pending')
        GROUP BY customer_id, meter, period_start
        """,
        [billing_month],
    )
    return rc.conform(frame, rc.STRIPE_METER_SCHEMA)


def _webhook_lines_sql(con: duckdb.DuckDBPyConnection) -> str | None:
    """SELECT over the webhook-derived stripe_invoice_lines in the API table's shape, if that table exists."""
    cols = table_columns(con, "stripe_invoice_lines")
    if not {"invoice_id", "line_id", "amount"} <= cols:
        return None
    inv = table_columns(con, "stripe_invoices")

    def c(name: str, cast: str = "VARCHAR") -> str:
        return f"CAST(w.{name} AS {cast})" if name in cols else f"CAST(NULL AS {cast})"

    meter = c("meter")
    if "event_name" in cols:
        meter = f"coalesce({meter}, regexp_extract(w.event_name, '^metering_(.*)$', 1))"
    customer_id = c("customer_id")
    join = ""
    if "customer_id" in inv and "invoice_id" in inv:
        customer_id = f"coalesce({customer_id}, i.customer_id)"
        join = "LEFT JOIN stripe_invoices i ON i.invoice_id = w.invoice_id"
    return f"""
        SELECT w.invoice_id, w.line_id, {customer_id} AS customer_id, nullif({meter}, '') AS meter,
               {c('quantity_decimal', 'DECIMAL(38, 12)')} AS quantity_decimal,
               CAST(w.amount AS BIGINT) AS amount, {c('currency')} AS currency,
               {c('period_start', 'TIMESTAMPTZ')} AS period_start, {c('period_end', 'TIMESTAMPTZ')} AS period_end,
               'webhook' AS source
        FROM stripe_invoice_lines w {join}
        WHERE w.invoice_id NOT IN (SELECT invoice_id FROM stripe_invoice_lines_api)
    """


def merged_lines_sql(con: duckdb.DuckDBPyConnection) -> str:
    """All known Stripe invoice lines: API-pulled first, webhook-derived for invoices the API did not show."""
    api = """
        SELECT invoice_id, line_id, customer_id, meter, quantity_decimal, amount, currency,
               period_start, period_end, 'api' AS source
        FROM stripe_invoice_lines_api
    """
    webhook = _webhook_lines_sql(con)
    return api if webhook is None else f"{api} UNION ALL {webhook}"


def merged_invoices_sql(con: duckdb.DuckDBPyConnection) -> str:
    """All known Stripe invoice headers: API-pulled first, webhook state for the others."""
    api = """
        SELECT invoice_id, customer_id, status, currency, amount_due, amount_paid, amount_remaining,
               total, created, 'api' AS source
        FROM stripe_invoices_api
    """
    cols = table_columns(con, "stripe_invoices")
    need = {"invoice_id", "customer_id", "status", "currency", "amount_due", "amount_paid", "amount_remaining", "total"}
    if not need <= cols:
        return api
    created = "created" if "created" in cols else "CAST(NULL AS TIMESTAMPTZ)"
    return f"""{api} UNION ALL
        SELECT invoice_id, customer_id, status, currency, amount_due, amount_paid, amount_remaining,
               total, {created} AS created, 'webhook' AS source
        FROM stripe_invoices WHERE invoice_id NOT IN (SELECT invoice_id FROM stripe_invoices_api)
    """


def _bucketed_lines(con: duckdb.DuckDBPyConnection, billing_month: dt.date, periods: pl.DataFrame) -> pl.DataFrame:
    """Every Stripe line whose period starts in the month, tagged with the customer's billing period."""
    start, end = month_bounds(billing_month)
    con.register("_recon_periods", periods.to_arrow())
    try:
        return query_frame(
            con,
            f"""
            WITH lines AS ({merged_lines_sql(con)}),
                 invoices AS ({merged_invoices_sql(con)})
            SELECT l.customer_id, l.meter, l.invoice_id, l.quantity_decimal, l.amount,
                   coalesce(l.currency, i.currency) AS currency,
                   coalesce(p.period_start, CAST(l.period_start AS DATE)) AS period_start,
                   coalesce(p.period_end, CAST(l.period_end AS DATE)) AS period_end,
                   i.status AS invoice_status, i.created AS invoice_created,
                   i.amount_due, i.amount_paid, i.amount_remaining
            FROM lines l
            LEFT JOIN invoices i ON i.invoice_id = l.invoice_id
            LEFT JOIN _recon_periods p
              ON p.customer_id = l.customer_id
             AND CAST(l.period_start AS DATE) >= p.period_start AND CAST(l.period_start AS DATE) < p.period_end
            WHERE CAST(l.period_start AS DATE) >= ? AND CAST(l.period_start AS DATE) < ?
              AND coalesce(i.status, '') <> 'void'
            """,
            [start, end],
        )
    finally:
        con.unregister("_recon_periods")


def load_stripe_lines(con: duckdb.DuckDBPyConnection, billing_month: dt.date, periods: pl.DataFrame) -> pl.DataFrame:
    """Invoiced quantity and amount per customer x meter x period (metered lines only)."""
    lines = _bucketed_lines(con, billing_month, periods).filter(pl.col("meter").is_not_null())
    frame = lines.group_by(["customer_id", "meter", "period_start"]).agg(
        pl.col("period_end").max(),
        pl.col("currency").first(),
        pl.col("quantity_decimal").sum().cast(rc.QTY).alias("invoiced_quantity"),
        pl.col("amount").sum().alias("stripe_amount_minor"),
        pl.len().cast(pl.Int64).alias("line_count"),
        pl.col("invoice_id").unique().sort().str.join(",").alias("invoice_ids"),
        (pl.col("invoice_status").is_not_null() & (pl.col("invoice_status") != "draft")).all().alias("finalized"),
    )
    return rc.conform(frame, rc.STRIPE_LINES_SCHEMA)


def load_our_invoices(con: duckdb.DuckDBPyConnection, billing_month: dt.date) -> pl.DataFrame:
    """Our invoice preview total per customer x period."""
    cols = table_columns(con, "invoice_previews")
    if not cols:
        return rc.conform(None, rc.OUR_INVOICES_SCHEMA)
    start, end = month_bounds(billing_month)
    lines = "CAST(lines AS BIGINT)" if "lines" in cols else "CAST(NULL AS BIGINT)"
    frame = query_frame(
        con,
        f"""
        SELECT customer_id, period_start, max(period_end) AS period_end, any_value(currency) AS currency,
               CAST(sum(total_minor) AS BIGINT) AS our_total_minor, CAST(sum({lines}) AS BIGINT) AS our_lines
        FROM invoice_previews WHERE period_start >= ? AND period_start < ?
        GROUP BY customer_id, period_start
        """,
        [start, end],
    )
    return rc.conform(frame, rc.OUR_INVOICES_SCHEMA)


def load_stripe_invoices(con: duckdb.DuckDBPyConnection, billing_month: dt.date, periods: pl.DataFrame) -> pl.DataFrame:
    """Stripe's total per customer x period (all lines of the period) and the closing invoice's state."""
    lines = _bucketed_lines(con, billing_month, periods)
    if lines.is_empty():
        return rc.conform(None, rc.STRIPE_INVOICES_SCHEMA)
    closing = pl.col("invoice_created").fill_null(dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
    frame = lines.group_by(["customer_id", "period_start"]).agg(
        pl.col("period_end").max(),
        pl.col("currency").first(),
        pl.col("amount").sum().alias("stripe_total_minor"),
        pl.len().cast(pl.Int64).alias("line_count"),
        pl.col("invoice_id").unique().sort().str.join(",").alias("invoice_ids"),
        pl.col("invoice_status").sort_by(closing).last(),
        pl.col("amount_due").sort_by(closing).last(),
        pl.col("amount_paid").sort_by(closing).last(),
        pl.col("amount_remaining").sort_by(closing).last(),
    )
    return rc.conform(frame, rc.STRIPE_INVOICES_SCHEMA)
