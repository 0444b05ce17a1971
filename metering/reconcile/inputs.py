"""Read the inputs of a reconciliation from the warehouse, rolled up to the grain `reconcile` compares.

A billing month (the `monthly_billing` partition, e.g. 2026-10-01) covers every customer billing
period that *starts* in that month (periods follow each customer's billing anchor).

- ours: the meter's quantity over the period from `usage_aggregates` (what one Stripe meter holds:
  all dimensions together), and the rated amount of its charges from `rated_usage`, with the part
  Stripe cannot price (catalog findings `not_expressible`: dimension filters, minimums) split out.
- pushed: `stripe_push_ledger`, per window the latest acknowledged revision's value (what Stripe's
  pre-aggregated meter holds for the window), summed for additive meters, last window otherwise;
  plus what the ledger proves came too late for the period's finalized invoice (see `load_pushed`).
- Stripe's meter: `stripe_meter_summaries` grain 'period' rows (Stripe's own aggregate), or pending.
- Stripe's lines: `stripe_invoice_lines_api`, plus webhook-derived `stripe_invoice_lines` for
  invoices the API pull did not see. An invoice's header (status, amounts) is the webhook state's when
  that state has moved further than the pull (voided or paid since: `further_in_state_sql`). Lines that
  are the engine's own invoice items (their item id is in `stripe_invoice_items`) bill the charges
  Stripe cannot price; the ledger also says which acknowledged items Stripe still holds pending.
  Each line's price id is joined to the catalog sync's `drift` findings on amount fields
  (`price_drift`): a difference on a line a drifted price priced is that price, never rounding.
"""

from __future__ import annotations

import datetime as dt

import duckdb
import polars as pl

from metering.reconcile import reconcile as rc
from metering.rules.meters import Meter
from metering.stripe.catalog import ENDED_SUBSCRIPTIONS, NOT_EXPRESSIBLE_PRICE_SQL, OUR_SUBSCRIPTIONS_SQL
from metering.warehouse import query_frame, sql_string, table_columns
from metering.webhooks.state import INVOICE_STATUS_RANK, rank_case

ADDITIVE = ("count", "sum")
_ENDED = "[" + ", ".join(sql_string(s) for s in ENDED_SUBSCRIPTIONS) + "]"   # SQL list of ENDED_SUBSCRIPTIONS
# Stripe invoice statuses whose lines are paid, and billed but not collected (void lines are ignored)
PAID_STATUSES = ("paid",)
REMAINING_STATUSES = ("open", "uncollectible")


def month_bounds(billing_month: dt.date) -> tuple[dt.date, dt.date]:
    start = billing_month.replace(day=1)
    end = (start.replace(year=start.year + 1, month=1) if start.month == 12
           else start.replace(month=start.month + 1))
    return start, end


def _additive(meters: dict[str, Meter]) -> list[str]:
    return [name for name, m in meters.items() if m.aggregation in ADDITIVE]


def _not_expressible_sql(con: duckdb.DuckDBPyConnection) -> str:
    """Boolean SQL over rated_usage: the charge is billed by the engine, not by Stripe's prices: it has
    no Stripe price (catalog finding 'not_expressible'), or the engine billed it as invoice items
    already (a later sync that finds a price for it does not move it back to Stripe: the engine keeps
    those items, metering.stripe.invoice_items)."""
    parts = []
    if {"finding", "kind", "our_key"} <= table_columns(con, "stripe_catalog_findings"):
        parts.append(NOT_EXPRESSIBLE_PRICE_SQL)
    if {"customer_id", "period_start", "plan", "plan_version", "charge"} <= table_columns(con, "stripe_invoice_items"):
        key = "customer_id || '|' || CAST(period_start AS VARCHAR) || '|' || plan || '|' || plan_version || '|' || charge"
        parts.append(f"({key}) IN (SELECT {key} FROM stripe_invoice_items)")
    return "(" + " OR ".join(parts) + ")" if parts else "false"


# The units a rated line priced, from its `tiers`: a tier's `units`, a package's `packages x
# package_size`. Included units are in no tier, so the late quantity's value divides by these.
_PRICED_UNITS = ("list_sum(list_transform(CAST(tiers AS JSON[]), t -> coalesce(TRY_CAST(t->>'units' AS DECIMAL(38, 12)), "
                 "TRY_CAST(t->>'packages' AS DECIMAL(38, 12)) * TRY_CAST(t->>'package_size' AS DECIMAL(38, 12)))))")


def load_ours(con: duckdb.DuckDBPyConnection, billing_month: dt.date, meters: dict[str, Meter]) -> pl.DataFrame:
    """Per customer x meter x billing period: the meter's quantity over the period and the rated amount.

    The quantity is the meter's own aggregate over the period from `usage_aggregates` (all dimensions,
    as one Stripe meter carries them): sum for count/sum, max for max, the latest value for last, the
    exact distinct count for unique_count. The amount is the sum of the rated charges on the meter,
    with the part on charges Stripe cannot price split out (`not_in_stripe_minor`); `priced_quantity`
    the units the others priced (the included ones left out).
    """
    if not table_columns(con, "rated_usage"):
        return rc.conform(None, rc.OURS_SCHEMA)
    start, end = month_bounds(billing_month)
    nx = _not_expressible_sql(con)
    amounts = query_frame(
        con,
        f"""
        SELECT customer_id, meter, period_start, max(period_end) AS period_end,
               any_value(currency) AS currency, arg_max(plan, segment_start) AS plan,
               arg_max(plan_version, segment_start) AS plan_version,
               CAST(sum(amount_minor) AS BIGINT) AS our_amount_minor,
               CAST(coalesce(sum(amount_minor) FILTER (WHERE {nx}), 0) AS BIGINT) AS not_in_stripe_minor,
               count(*) FILTER (WHERE NOT ({nx})) AS stripe_charges,
               count(*) FILTER (WHERE NOT ({nx}) AND amount_minor <> 0) AS our_rounded_lines,
               CAST(sum({_PRICED_UNITS}) FILTER (WHERE NOT ({nx})) AS DECIMAL(38, 12)) AS priced_quantity,
               string_agg(DISTINCT plan || ' ' || plan_version, ' + ' ORDER BY plan || ' ' || plan_version)
                   AS rule_versions,
               count(DISTINCT segment_start) AS segments
        FROM rated_usage
        WHERE meter IS NOT NULL AND period_start >= ? AND period_start < ?
        GROUP BY customer_id, meter, period_start
        """,
        [start, end],
    )
    quantities = load_meter_quantities(con, amounts.select("customer_id", "period_start", "period_end").unique(), meters)
    frame = amounts.join(quantities, on=["customer_id", "meter", "period_start"], how="left")
    return rc.conform(frame, rc.OURS_SCHEMA)


def load_meter_quantities(
    con: duckdb.DuckDBPyConnection, periods: pl.DataFrame, meters: dict[str, Meter]
) -> pl.DataFrame:
    """customer_id, meter, period_start, our_quantity: each meter's aggregate over each customer period."""
    schema = {"customer_id": pl.String, "meter": pl.String, "period_start": pl.Date, "our_quantity": rc.QTY}
    if periods.is_empty() or not table_columns(con, "usage_aggregates"):
        return pl.DataFrame(schema=schema)
    con.register("_recon_periods", periods.to_arrow())
    try:
        base = """
            SELECT u.*, p.period_start FROM usage_aggregates u JOIN _recon_periods p
              ON p.customer_id = u.customer_id
             AND u.hour >= CAST(p.period_start AS TIMESTAMPTZ) AND u.hour < CAST(p.period_end AS TIMESTAMPTZ)
        """
        scalar = query_frame(
            con,
            f"""
            SELECT customer_id, meter, period_start,
                   CAST(sum(quantity) AS DECIMAL(38, 12)) AS q_sum,
                   CAST(max(quantity) AS DECIMAL(38, 12)) AS q_max,
                   CAST(arg_max(quantity, (last_event_time, last_event_id)) AS DECIMAL(38, 12)) AS q_last
            FROM ({base}) GROUP BY customer_id, meter, period_start
            """,
        )
        unique = query_frame(
            con,
            f"""
            SELECT customer_id, meter, period_start, CAST(count(DISTINCT v) AS DECIMAL(38, 12)) AS q_unique
            FROM (SELECT customer_id, meter, period_start, unnest(distinct_values) AS v FROM ({base}))
            GROUP BY customer_id, meter, period_start
            """,
        )
    finally:
        con.unregister("_recon_periods")
    kinds = pl.DataFrame({"meter": list(meters), "aggregation": [m.aggregation for m in meters.values()]},
                         schema={"meter": pl.String, "aggregation": pl.String})
    frame = (
        scalar.join(unique, on=["customer_id", "meter", "period_start"], how="left")
        .join(kinds, on="meter", how="left")
        .with_columns(
            our_quantity=pl.when(pl.col("aggregation").is_in(list(ADDITIVE))).then("q_sum")
            .when(pl.col("aggregation") == "max").then("q_max")
            .when(pl.col("aggregation") == "last").then("q_last")
            .when(pl.col("aggregation") == "unique_count").then(pl.col("q_unique").fill_null(pl.lit(0)))
            .otherwise("q_sum")
        )
    )
    return rc.conform(frame, schema)


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
    con: duckdb.DuckDBPyConnection,
    billing_month: dt.date,
    meters: dict[str, Meter],
    periods: pl.DataFrame,
    finalized: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Acknowledged pushed quantity, unacknowledged and late windows per customer x meter x period.

    Also what the ledger proves came too late for the invoice (`reconcile` explains no more than this):

    - `late_windows` / `late_quantity`: windows whose latest revision the push marked `late` (never
      sent: older than Stripe accepts, or their invoice already finalized), and what they would add to
      the pushed quantity (their value in place of the acknowledged one, with the meter's aggregation).
    - `late_acked_windows` / `late_acked_quantity`: windows whose acknowledged value Stripe
      acknowledged after the period's invoice was finalized (a first value, or a new revision), and
      the pushed quantity minus what the ledger had acknowledged at that moment (with the meter's
      aggregation: what Stripe's meter held when it finalized the invoice). The acknowledgement time
      is the revision's `updated_at`: `ledger.record_outcomes` writes it when the acknowledgement
      comes back, and nothing updates an acknowledged revision afterwards. The invoice's moment is
      `finalized_at` from `finalized` (customer_id, meter, period_start, finalized, finalized_at: the
      `load_stripe_lines` frame); without it, or for a draft invoice, nothing is late this way.

    The ledger's times and the invoice's `finalized_at` must be on one clock: real time in
    production. A customer on a Stripe test clock has invoices in the clock's time, so a test that
    wants these figures meaningful pushes with `now=` reading the test clock.
    """
    if not table_columns(con, "stripe_push_ledger") or periods.is_empty():
        return rc.conform(None, rc.PUSHED_SCHEMA)
    fin_schema = {"customer_id": pl.String, "meter": pl.String, "period_start": pl.Date,
                  "finalized_at": pl.Datetime("us", "UTC")}
    fin = pl.DataFrame(schema=fin_schema)
    if finalized is not None and {"finalized", "finalized_at"} <= set(finalized.columns):
        fin = rc.conform(finalized.filter(pl.col("finalized").fill_null(False) & pl.col("finalized_at").is_not_null()),
                         fin_schema).unique(["customer_id", "meter", "period_start"])
    con.register("_recon_periods", periods.to_arrow())
    con.register("_recon_finalized", fin.to_arrow())
    try:
        frame = query_frame(
            con,
            """
            WITH w AS (
                SELECT l.customer_id, l.meter, p.period_start, l.window_start,
                       arg_max(l.status, l.revision) AS last_status,
                       arg_max(l.value, l.revision) AS last_value,
                       arg_max(l.value, l.revision) FILTER (WHERE l.status = 'acknowledged') AS acked_value,
                       -- what Stripe's window held when the invoice was finalized
                       arg_max(l.value, l.revision) FILTER (
                           WHERE l.status = 'acknowledged'
                             AND (f.finalized_at IS NULL OR l.updated_at <= f.finalized_at)) AS acked_then_value
                FROM stripe_push_ledger l
                JOIN _recon_periods p
                  ON p.customer_id = l.customer_id
                 AND l.window_start >= CAST(p.period_start AS TIMESTAMPTZ)
                 AND l.window_start < CAST(p.period_end AS TIMESTAMPTZ)
                LEFT JOIN _recon_finalized f
                  ON f.customer_id = l.customer_id AND f.meter = l.meter AND f.period_start = p.period_start
                GROUP BY ALL
            ),
            v AS (
                SELECT *, CASE WHEN last_status = 'late' THEN last_value ELSE acked_value END AS with_late_value
                FROM w
            )
            SELECT customer_id, meter, period_start,
                   CAST(coalesce(sum(acked_value), 0) AS DECIMAL(38, 12)) AS q_sum,
                   CAST(arg_max(acked_value, window_start) FILTER (WHERE acked_value IS NOT NULL)
                        AS DECIMAL(38, 12)) AS q_last,
                   CAST(coalesce(sum(acked_then_value), 0) AS DECIMAL(38, 12)) AS then_sum,
                   CAST(arg_max(acked_then_value, window_start) FILTER (WHERE acked_then_value IS NOT NULL)
                        AS DECIMAL(38, 12)) AS then_last,
                   CAST(coalesce(sum(with_late_value), 0) AS DECIMAL(38, 12)) AS with_late_sum,
                   CAST(arg_max(with_late_value, window_start) FILTER (WHERE with_late_value IS NOT NULL)
                        AS DECIMAL(38, 12)) AS with_late_last,
                   count(*) FILTER (WHERE last_status NOT IN ('acknowledged', 'late')) AS unacked_windows,
                   count(*) FILTER (WHERE last_status = 'late') AS late_windows,
                   -- windows whose acknowledged value changed after the invoice was finalized
                   count(*) FILTER (WHERE acked_value IS DISTINCT FROM acked_then_value) AS late_acked_windows
            FROM v GROUP BY customer_id, meter, period_start
            """,
        )
    finally:
        con.unregister("_recon_periods")
        con.unregister("_recon_finalized")
    additive = pl.col("meter").is_in(_additive(meters))
    zero = pl.lit(0).cast(rc.QTY)

    def agg(prefix: str) -> pl.Expr:
        return pl.when(additive).then(pl.col(f"{prefix}_sum")).otherwise(pl.col(f"{prefix}_last"))

    frame = frame.with_columns(
        pushed_quantity=agg("q"),
        late_quantity=(agg("with_late").fill_null(zero) - agg("q").fill_null(zero)).cast(rc.QTY),
        late_acked_quantity=(agg("q").fill_null(zero) - agg("then").fill_null(zero)).cast(rc.QTY),
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


def further_in_state_sql(con: duckdb.DuckDBPyConnection) -> str | None:
    """SELECT invoice_id of the pulled invoices whose webhook state has moved further than their latest
    pull (draft -> open -> uncollectible -> void / paid, as the state itself ranks them): Stripe voided
    or paid the invoice since, which re-reconciling with --no-pull (or the asset alone) took from the
    pull as it stood. A status only moves forward, so no clock is compared (a pull's time may be a test
    clock's). Not when the pull saw a draft: a draft's lines still change (late usage lands on it), and
    the lines are the pull's, so the invoice stays a draft (pending) until it is pulled again. None when
    the warehouse has no webhook state."""
    if not {"invoice_id", "status"} <= table_columns(con, "stripe_invoices"):
        return None
    return f"""
        SELECT w.invoice_id FROM stripe_invoices w
        JOIN (SELECT invoice_id, arg_max(status, pulled_at) AS status FROM stripe_invoices_api GROUP BY invoice_id) a
          ON a.invoice_id = w.invoice_id
        WHERE {rank_case("w.status", INVOICE_STATUS_RANK)} > {rank_case("a.status", INVOICE_STATUS_RANK)}
          AND a.status <> 'draft'
    """


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
    joins = []
    if "customer_id" in inv and "invoice_id" in inv:
        customer_id = f"coalesce({customer_id}, i.customer_id)"
        joins.append("LEFT JOIN stripe_invoices i ON i.invoice_id = w.invoice_id")
    return f"""
        SELECT w.invoice_id, w.line_id, {customer_id} AS customer_id, nullif({meter}, '') AS meter,
               {c('price_id')} AS price_id, {c('quantity_decimal', 'DECIMAL(38, 12)')} AS quantity_decimal,
               CAST(w.amount AS BIGINT) AS amount, {c('currency')} AS currency,
               {c('period_start', 'TIMESTAMPTZ')} AS period_start, {c('period_end', 'TIMESTAMPTZ')} AS period_end,
               {c('invoice_item')} AS invoice_item, {c('metering_item')} AS metering_item, 'webhook' AS source
        FROM stripe_invoice_lines w {' '.join(joins)}
        WHERE w.invoice_id NOT IN (SELECT invoice_id FROM stripe_invoice_lines_api)
    """


def merged_lines_sql(con: duckdb.DuckDBPyConnection) -> str:
    """All known Stripe invoice lines: API-pulled first, webhook-derived for invoices the API did not show.

    An invoice whose period touches two months is pulled with each: its lines are those of its latest pull.
    """
    api = """
        SELECT invoice_id, line_id, customer_id, meter, price_id, quantity_decimal, amount, currency,
               period_start, period_end, invoice_item, metering_item, 'api' AS source
        FROM stripe_invoice_lines_api
        QUALIFY dense_rank() OVER (PARTITION BY invoice_id ORDER BY pulled_at DESC, billing_month DESC) = 1
    """
    webhook = _webhook_lines_sql(con)
    return api if webhook is None else f"{api} UNION ALL {webhook}"


def _subscription_ends_sql(con: duckdb.DuckDBPyConnection) -> str:
    """subscription_id, ended_at of the subscriptions webhooks told us about (none without that table)."""
    if {"subscription_id", "ended_at"} <= table_columns(con, "stripe_subscriptions"):
        return "SELECT subscription_id, any_value(ended_at) AS ended_at FROM stripe_subscriptions GROUP BY ALL"
    return "SELECT NULL::VARCHAR AS subscription_id, NULL::TIMESTAMPTZ AS ended_at WHERE false"


def merged_invoices_sql(con: duckdb.DuckDBPyConnection) -> str:
    """All known Stripe invoice headers: API-pulled first, webhook state for the others.

    `subscription_ended_at`: when the invoice's subscription ended (the pull's read of it, else the
    webhook state), NULL while it runs. `lines_complete`: every line of the invoice is known.
    `pre_payment_credit_notes`: Stripe's `pre_payment_credit_notes_amount`, NULL when unknown (pulled
    before migration 055, or known from webhooks only: the webhook state does not keep it).
    `one_off`: an invoice of no subscription (Stripe's `billing_reason` `manual`: an operator's one-off
    invoice). The pull reads our API version, where an invoice names its subscription in `parent`
    only, so none there is one-off; the webhook state goes by `billing_reason`, which every API version
    sends. NULL when unknown.
    """
    ends = _subscription_ends_sql(con)
    # unknown (NULL) for invoices pulled before migration 055, until pulled again
    api_cols = table_columns(con, "stripe_invoices_api")
    api_credit = "a.pre_payment_credit_notes_amount" if "pre_payment_credit_notes_amount" in api_cols else "NULL::BIGINT"
    api_advance = "a.auto_advance" if "auto_advance" in api_cols else "NULL::BOOLEAN"
    latest_pull = f"""
        SELECT a.invoice_id, a.customer_id, a.status, a.currency, a.amount_due, a.amount_paid, a.amount_remaining,
               a.total, a.total_excluding_tax AS total_before_tax,
               CAST({api_credit} AS BIGINT) AS pre_payment_credit_notes, a.created, a.period_start,
               a.period_end, a.finalized_at,
               coalesce(a.subscription_ended_at, e.ended_at) AS subscription_ended_at, true AS lines_complete,
               CAST({api_advance} AS BOOLEAN) AS auto_advance, 'api' AS source, a.subscription_id,
               a.subscription_id IS NULL AS one_off
        FROM stripe_invoices_api a LEFT JOIN ({ends}) e ON e.subscription_id = a.subscription_id
        QUALIFY row_number() OVER (PARTITION BY a.invoice_id ORDER BY a.pulled_at DESC, a.billing_month DESC) = 1
    """
    cols = table_columns(con, "stripe_invoices")
    need = {"invoice_id", "customer_id", "status", "currency", "amount_due", "amount_paid", "amount_remaining", "total"}
    if not need <= cols:
        return latest_pull
    further = further_in_state_sql(con)
    api = f"SELECT * FROM ({latest_pull}) WHERE invoice_id NOT IN ({further})" if further else latest_pull

    def ts(name: str) -> str:
        return f"w.{name}" if name in cols else "CAST(NULL AS TIMESTAMPTZ)"

    subscription = "w.subscription_id" if "subscription_id" in cols else "NULL::VARCHAR"
    # unknown for rows kept before migration 032 until the state is rebuilt from the stored events
    before_tax = "w.total_excluding_tax" if "total_excluding_tax" in cols else "NULL::BIGINT"
    complete = "coalesce(w.lines_complete, true)" if "lines_complete" in cols else "true"
    # the webhook state keeps no credit notes (unknown, NULL) unless its table has the column
    credit = ("w.pre_payment_credit_notes_amount" if "pre_payment_credit_notes_amount" in cols
              else "NULL::BIGINT")
    advance = "w.auto_advance" if "auto_advance" in cols else "NULL::BOOLEAN"
    manual = "w.billing_reason = 'manual'" if "billing_reason" in cols else "NULL::BOOLEAN"
    # A state further than its pull gives the invoice's status and amounts; the rest stays the pull's:
    # its customer (mapped through the Stripe customer; the state's comes from metadata only), its
    # lines (`merged_lines_sql`: a finalized invoice's lines do not change, and the state's carry no
    # meter without a price snapshot), what the state does not keep (credit notes before payment).
    return f"""{api} UNION ALL
        SELECT w.invoice_id, coalesce(p.customer_id, w.customer_id) AS customer_id, w.status,
               coalesce(p.currency, w.currency) AS currency, w.amount_due, w.amount_paid, w.amount_remaining,
               w.total, coalesce({before_tax}, p.total_before_tax) AS total_before_tax,
               CAST(coalesce({credit}, p.pre_payment_credit_notes) AS BIGINT) AS pre_payment_credit_notes,
               coalesce(p.created, {ts('created')}) AS created,
               coalesce(p.period_start, {ts('period_start')}) AS period_start,
               coalesce(p.period_end, {ts('period_end')}) AS period_end,
               coalesce({ts('finalized_at')}, p.finalized_at) AS finalized_at,
               coalesce(p.subscription_ended_at, e.ended_at) AS subscription_ended_at,
               p.invoice_id IS NOT NULL OR {complete} AS lines_complete,
               CAST(coalesce({advance}, p.auto_advance) AS BOOLEAN) AS auto_advance, 'webhook' AS source,
               coalesce(p.subscription_id, {subscription}) AS subscription_id,
               coalesce(p.one_off, {manual}) AS one_off
        FROM stripe_invoices w LEFT JOIN ({ends}) e ON e.subscription_id = {subscription}
        LEFT JOIN ({latest_pull}) p ON p.invoice_id = w.invoice_id
        WHERE w.invoice_id NOT IN (SELECT invoice_id FROM stripe_invoices_api)
           {f"OR w.invoice_id IN ({further})" if further else ""}
    """


HELD_DRAFT = "(coalesce(i.status, '') = 'draft' AND NOT coalesce(i.auto_advance, true))"
"""SQL over the invoice alias `i`: a draft Stripe will not finalize on its own (auto_advance false: an unpaid
subscription's invoices, or automatic collection turned off by hand). Like a void invoice, it bills
nothing until a person finalizes it: it closes no period and its lines count nowhere."""
NOT_BILLING = f"(coalesce(i.status, '') = 'void' OR {HELD_DRAFT})"
"""SQL over `i`: an invoice that closes no period and whose lines are ignored (void, or a held draft)."""

_CLOSES = """i.customer_id = p.customer_id
    AND i.period_start < CAST(p.period_end AS TIMESTAMPTZ)
    AND (i.period_end >= CAST(p.period_end AS TIMESTAMPTZ)
         OR (i.subscription_ended_at > CAST(p.period_start AS TIMESTAMPTZ)
             AND i.subscription_ended_at < CAST(p.period_end AS TIMESTAMPTZ)
             AND i.period_end >= i.subscription_ended_at))"""


def _closes_sql(con: duckdb.DuckDBPyConnection, lines: str) -> str:
    """SQL: invoice `i` closes the customer period `p` (`load_open_periods` says when); another product's
    invoice (`_foreign_invoice_sql`, judged by `lines`: a CTE name or a subquery of `merged_lines_sql`)
    closes none."""
    return f"{_CLOSES} AND NOT {_foreign_invoice_sql(con, 'i', lines)}"


def _foreign_invoice_sql(con: duckdb.DuckDBPyConnection, invoice: str, lines: str) -> str:
    """Boolean SQL over the invoice alias `invoice` (of `merged_invoices_sql`): an invoice of another
    product's subscription on the customer's Stripe customer (a support contract, say), or an operator's
    one-off invoice (`one_off`: a workshop, say). Its subscription, if any, is none the catalog sync
    mapped the customer to (`stripe_customer_map` keeps every one, earlier ones too), the customer has
    one that is, and no line of it (among `lines`, a CTE name or a subquery of `merged_lines_sql`) is
    priced by a price of ours or is one of the engine's invoice items. It bills nothing we rate: its
    lines counted as the period's (a 5000 support fee, a 50000 workshop made the customer's invoice an
    amount_mismatch) and it could close our period. False where the map is unknown."""
    if not {"customer_id", "subscription_id"} <= table_columns(con, "stripe_customer_map"):
        return "false"
    ours = ("fl.price_id IN (SELECT stripe_id FROM stripe_objects WHERE kind = 'price')"
            if {"kind", "stripe_id"} <= table_columns(con, "stripe_objects") else "false")
    return f"""(({invoice}.subscription_id IS NOT NULL AND {invoice}.subscription_id NOT IN ({OUR_SUBSCRIPTIONS_SQL})
             OR coalesce({invoice}.one_off, false))
        AND {invoice}.customer_id IN (SELECT customer_id FROM stripe_customer_map WHERE subscription_id IS NOT NULL)
        AND {invoice}.invoice_id NOT IN (
            SELECT fl.invoice_id FROM {lines} fl
            WHERE fl.invoice_id IS NOT NULL AND ({ours} OR coalesce({_engine_item_sql(con, 'fl')}, false))))"""


def load_open_periods(con: duckdb.DuckDBPyConnection, periods: pl.DataFrame) -> pl.DataFrame:
    """Customer periods no known non-void Stripe invoice reaches the end of: Stripe has not billed them.

    An invoice closes a period when its own period starts before the period's end and reaches that
    end, or, for a period its subscription's end cut short, reaches the subscription's end: the final
    invoice of a subscription cancelled mid-period (`invoice_now`) ends there, and no invoice will
    ever reach the period's end.

    `voided_invoice_ids` names the void invoices that did reach it (Stripe billed the period, then
    voided that invoice: the money will not be collected), NULL when there are none; `held_invoice_ids`
    the drafts that did, which Stripe will not finalize (`HELD_DRAFT`): they bill nothing either.
    `on_test_clock`: the customer's Stripe time is a test clock's (test mode), which the wall clock
    says nothing about (the push step's customer map; false when there is none). `later_invoice_ids`:
    invoices of a later period (starting at or after this one's end): Stripe has moved past this
    period without closing it, whatever any clock says. Another product's invoice (a support contract
    started just after the period's end) is none of them: it says nothing about our subscription.
    `ended_subscription_ids`: the customer's subscriptions had all ended before the period's end
    (canceled, or `incomplete_expired`: a first invoice unpaid for 23 h) as the landed Stripe state says;
    Stripe will invoice it no more, whatever any clock says. NULL while one is live, or none is known.
    """
    if periods.is_empty():
        return rc.conform(None, rc.OPEN_PERIODS_SCHEMA)
    clocked = ("SELECT DISTINCT customer_id FROM stripe_customer_map WHERE test_clock_id IS NOT NULL"
               if {"customer_id", "test_clock_id"} <= table_columns(con, "stripe_customer_map")
               else "SELECT NULL::VARCHAR AS customer_id WHERE false")
    ended = (f"""(SELECT string_agg(DISTINCT s.subscription_id, ',' ORDER BY s.subscription_id)
                 FROM stripe_subscriptions s WHERE s.customer_id = p.customer_id
                 HAVING bool_and(list_contains({_ENDED}, s.status)
                                 AND s.ended_at <= CAST(p.period_end AS TIMESTAMPTZ)))"""
             if {"customer_id", "status", "ended_at", "subscription_id"} <= table_columns(con, "stripe_subscriptions")
             else "NULL::VARCHAR")
    con.register("_recon_periods", periods.to_arrow())
    try:
        frame = query_frame(
            con,
            f"""
            WITH invoices AS ({merged_invoices_sql(con)}),
            lines AS ({merged_lines_sql(con)}),
            closing AS (
                SELECT p.customer_id, p.period_start, i.invoice_id, coalesce(i.status, '') = 'void' AS void,
                       {HELD_DRAFT} AS held
                FROM _recon_periods p JOIN invoices i ON {_closes_sql(con, 'lines')}
            )
            SELECT p.customer_id, p.period_start,
                   (SELECT string_agg(DISTINCT c.invoice_id, ',' ORDER BY c.invoice_id) FROM closing c
                    WHERE c.customer_id = p.customer_id AND c.period_start = p.period_start AND c.void)
                     AS voided_invoice_ids,
                   (SELECT string_agg(DISTINCT c.invoice_id, ',' ORDER BY c.invoice_id) FROM closing c
                    WHERE c.customer_id = p.customer_id AND c.period_start = p.period_start AND c.held)
                     AS held_invoice_ids,
                   p.customer_id IN ({clocked}) AS on_test_clock,
                   (SELECT string_agg(DISTINCT i.invoice_id, ',' ORDER BY i.invoice_id) FROM invoices i
                    WHERE i.customer_id = p.customer_id
                      AND i.period_start >= CAST(p.period_end AS TIMESTAMPTZ)
                      AND NOT {_foreign_invoice_sql(con, 'i', 'lines')}) AS later_invoice_ids,
                   {ended} AS ended_subscription_ids
            FROM _recon_periods p
            WHERE NOT EXISTS (SELECT 1 FROM closing c WHERE c.customer_id = p.customer_id
                              AND c.period_start = p.period_start AND NOT c.void AND NOT c.held)
            """,
        )
    finally:
        con.unregister("_recon_periods")
    return rc.conform(frame, rc.OPEN_PERIODS_SCHEMA)


def _known_periods(con: duckdb.DuckDBPyConnection, lo: dt.date, hi: dt.date) -> pl.DataFrame:
    """Every customer billing period we rated that overlaps [lo, hi), whatever month it starts in."""
    schema = {"customer_id": pl.String, "period_start": pl.Date, "period_end": pl.Date}
    sources = [
        f"SELECT customer_id, period_start, period_end FROM {t} WHERE period_start < ? AND period_end > ?"
        for t in ("rated_usage", "invoice_previews")
        if {"customer_id", "period_start", "period_end"} <= table_columns(con, t)
    ]
    if not sources:
        return pl.DataFrame(schema=schema)
    return rc.conform(query_frame(con, " UNION ".join(sources), [hi, lo] * len(sources)), schema)


def _engine_item_sql(con: duckdb.DuckDBPyConnection, line: str) -> str:
    """Boolean SQL over the line alias `line`: an invoice item the engine created, by its id in
    `stripe_invoice_items` or, while its row is not yet acknowledged (a lost response), by its key."""
    if not {"stripe_invoice_item_id", "item_key"} <= table_columns(con, "stripe_invoice_items"):
        return "false"
    return (f"({line}.invoice_item IN (SELECT stripe_invoice_item_id FROM stripe_invoice_items "
            f"WHERE stripe_invoice_item_id IS NOT NULL) "
            f"OR {line}.metering_item IN (SELECT item_key FROM stripe_invoice_items))")


PRICE_AMOUNT_FIELDS = ("unit_amount_decimal", "transform_quantity", "billing_scheme", "tiers_mode", "tiers")
"""The fields of a catalog `drift` finding on a price (`metering.stripe.catalog.price_drift`) that change
what Stripe charges for a quantity: unit amount, package (transform_quantity), tiers (their unit and
flat amounts, bounds and mode) and the billing scheme. Not the currency (`currency_mismatch` says that),
the meter or the interval, nor a `rounding` finding: a half-even version's half-cent lines are rounding.
Nor `expressible` (a price kept for a first tier with a flat amount): its amounts are ours, and it
differs only at a quantity of 0 (the flat amount, far beyond any tolerance), so a cent on a line it
priced is rounding. A drift in a tier the line's quantity never reaches still marks the line: the
finding says what differs, not at which quantities, so the line is flagged for review rather than
explained away."""


def _price_drift_sql(con: duckdb.DuckDBPyConnection) -> str:
    """SELECT price_id, our_key, drift: per Stripe price the latest catalog sync found drifted from our
    rules in a field of PRICE_AMOUNT_FIELDS, what differs ('price_x (pro|2026-01|api calls)
    unit_amount_decimal: ours 0.15, Stripe 0.165'). No rows without the findings table."""
    if not {"finding", "kind", "our_key", "stripe_id", "field", "ours", "theirs"} <= table_columns(
            con, "stripe_catalog_findings"):
        return "SELECT NULL::VARCHAR AS price_id, NULL::VARCHAR AS our_key, NULL::VARCHAR AS drift WHERE false"
    fields = "[" + ", ".join(sql_string(f) for f in PRICE_AMOUNT_FIELDS) + "]"
    return f"""
        SELECT stripe_id AS price_id, our_key,
               string_agg(DISTINCT coalesce(stripe_id, 'no price') || ' (' || our_key || ') ' || field || ': ours '
                          || coalesce(ours, 'none') || ', Stripe ' || coalesce(theirs, 'none'), '; ') AS drift
        FROM stripe_catalog_findings
        WHERE finding = 'drift' AND kind = 'price' AND list_contains({fields}, field)
        GROUP BY ALL
    """


def _line_drift_sql(con: duckdb.DuckDBPyConnection) -> tuple[str, str]:
    """(JOIN clauses, SQL expression) over the line alias `l` and its period `p` in `_bucketed_lines`: the
    drift of the Stripe price that priced the line (`_price_drift_sql`), NULL when there is none.

    By the line's own price id, the most precise signal: the price Stripe actually billed with, whichever
    plan version we rated. Only a metered line without a price id (a webhook line whose price was not
    known) falls back to the drifted prices of the charges we rated on its meter in its period (plan x
    plan version x meter, from `rated_usage`)."""
    drifted = _price_drift_sql(con)   # one catalog lookup for both joins
    joins = f"LEFT JOIN ({drifted}) dp ON dp.price_id = l.price_id"
    rated = {"customer_id", "period_start", "meter", "plan", "plan_version", "charge"}
    if not rated <= table_columns(con, "rated_usage"):
        return joins, "dp.drift"
    joins += f"""
            LEFT JOIN (SELECT r.customer_id, r.period_start, r.meter, string_agg(DISTINCT d.drift, '; ') AS drift
                       FROM (SELECT DISTINCT customer_id, period_start, meter, plan, plan_version, charge
                             FROM rated_usage WHERE meter IS NOT NULL) r
                       JOIN ({drifted}) d
                         ON d.our_key = r.plan || '|' || r.plan_version || '|' || r.charge
                       GROUP BY ALL) dr
              ON l.price_id IS NULL AND dr.customer_id = l.customer_id AND dr.meter = l.meter
             AND dr.period_start = coalesce(p.period_start, CAST(l.period_start AS DATE))"""
    return joins, "coalesce(dp.drift, dr.drift)"


_ZERO_LENGTH_FREE = "(l.period_end <= l.period_start AND l.amount = 0)"
"""SQL over the line alias `l`: a subscription's first invoice's zero-length, zero-amount metered line."""


def _bucketed_lines(con: duckdb.DuckDBPyConnection, billing_month: dt.date, periods: pl.DataFrame) -> pl.DataFrame:
    """Every Stripe line that belongs to a billing period starting in the month.

    A line belongs to the customer's period that contains the line's start (a line can start
    mid-period, e.g. after a price change, even in the next month); a line no rated period contains
    belongs to the month its own period starts in. An invoice item's line has the item's period, so
    the engine's items (`engine_item`) belong to the period they bill, whichever invoice carries them.
    `price_drift`: how the Stripe price that priced the line differs from our rules in what it charges
    (`_line_drift_sql`), NULL when it does not (or the line has no price: the engine's items).
    """
    start, end = month_bounds(billing_month)
    drift_joins, drift = _line_drift_sql(con)
    engine_item = f"coalesce({_engine_item_sql(con, 'l')}, false)"   # the column and the drift's condition
    lo, hi = start - dt.timedelta(days=45), end + dt.timedelta(days=45)
    known = pl.concat([periods.select("customer_id", "period_start", "period_end"), _known_periods(con, lo, hi)]).unique()
    con.register("_recon_known_periods", known.to_arrow())
    try:
        return query_frame(
            con,
            f"""
            WITH lines AS ({merged_lines_sql(con)}),
                 invoices AS ({merged_invoices_sql(con)})
            SELECT l.customer_id, l.meter, l.invoice_id, l.line_id, l.price_id, l.quantity_decimal, l.amount,
                   {engine_item} AS engine_item,
                   CASE WHEN NOT {engine_item} THEN {drift} END AS price_drift,
                   coalesce(l.currency, i.currency) AS currency,
                   coalesce(p.period_start, CAST(l.period_start AS DATE)) AS period_start,
                   coalesce(p.period_end, CAST(l.period_end AS DATE)) AS period_end,
                   i.status AS invoice_status, i.created AS invoice_created, i.finalized_at AS invoice_finalized_at,
                   i.amount_due, i.amount_paid, i.amount_remaining
            FROM lines l
            LEFT JOIN invoices i ON i.invoice_id = l.invoice_id
            LEFT JOIN _recon_known_periods p
              ON p.customer_id = l.customer_id
             AND CAST(l.period_start AS DATE) >= p.period_start AND CAST(l.period_start AS DATE) < p.period_end
            {drift_joins}
            WHERE CAST(l.period_start AS DATE) >= ? AND CAST(l.period_start AS DATE) < ?
              AND coalesce(p.period_start, CAST(l.period_start AS DATE)) >= ?
              AND coalesce(p.period_start, CAST(l.period_start AS DATE)) < ?
              AND NOT {NOT_BILLING}
              -- a subscription's first invoice holds zero-length, zero-amount metered lines: not a period's usage
              AND NOT {_ZERO_LENGTH_FREE}
              AND NOT coalesce({_foreign_invoice_sql(con, 'i', 'lines')}, false)   -- the lines CTE above
            """,
            [lo, hi, start, end],
        )
    finally:
        con.unregister("_recon_known_periods")


def _currencies() -> pl.Expr:
    """Every currency of a group's lines, 'jpy,usd' when there are several: `reconcile` compares it with ours."""
    return pl.col("currency").drop_nulls().str.to_lowercase().unique().sort().str.join(",").replace("", None)


def _amounts_by_currency(lines: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    """`stripe_amounts` of each `key` group whose lines are in several currencies: every currency's sum,
    '22500 jpy + 100 usd' in `_currencies`' order. Minor units of two currencies are never added up, not
    even in a reason; a group in one currency has no row."""
    per = (lines.filter(pl.col("currency").is_not_null())
           .group_by([*key, pl.col("currency").str.to_lowercase()]).agg(pl.col("amount").sum())
           .sort([*key, "currency"]))
    return (per.group_by(key, maintain_order=True)
            .agg(pl.format("{} {}", "amount", "currency").str.join(" + ").alias("stripe_amounts"),
                 pl.len().alias("currencies"))
            .filter(pl.col("currencies") > 1).drop("currencies"))


def load_stripe_lines(con: duckdb.DuckDBPyConnection, billing_month: dt.date, periods: pl.DataFrame) -> pl.DataFrame:
    """Invoiced quantity and amount per customer x meter x period (metered lines only), and the drift of
    the Stripe prices that priced them (`price_drift`, from the catalog sync's findings)."""
    lines = _bucketed_lines(con, billing_month, periods).filter(pl.col("meter").is_not_null())
    key = ["customer_id", "meter", "period_start"]
    frame = lines.group_by(key).agg(
        pl.col("period_end").max(),
        _currencies(),
        pl.col("quantity_decimal").sum().cast(rc.QTY).alias("invoiced_quantity"),
        pl.col("amount").sum().alias("stripe_amount_minor"),
        pl.len().cast(pl.Int64).alias("line_count"),
        (pl.col("amount") != 0).sum().cast(pl.Int64).alias("rounded_lines"),
        pl.col("invoice_id").unique().sort().str.join(",").alias("invoice_ids"),
        (pl.col("invoice_status").is_not_null() & (pl.col("invoice_status") != "draft")).all().alias("finalized"),
        pl.col("invoice_finalized_at").max().alias("finalized_at"),
        _drifts(),
    ).join(_amounts_by_currency(lines, key), on=key, how="left")
    return rc.conform(frame, rc.STRIPE_LINES_SCHEMA)


def _drifts() -> pl.Expr:
    """`price_drift` of a group's lines: every drifted price that priced one of them, NULL when none."""
    return (pl.col("price_drift").drop_nulls().str.split("; ").list.explode(keep_nulls=False, empty_as_null=False)
            .unique().sort().str.join("; ")
            .replace("", None).alias("price_drift"))


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
    if table_columns(con, "rated_usage"):
        not_expressible = _not_expressible_sql(con)
        rounds = f"amount_minor <> 0 AND NOT ({not_expressible})"   # a line with an amount Stripe prices
        nx = query_frame(
            con,
            f"""
            SELECT customer_id, period_start,
                   CAST(coalesce(sum(amount_minor) FILTER (WHERE {not_expressible}), 0) AS BIGINT)
                       AS not_in_stripe_minor,
                   CAST(count(*) FILTER (WHERE {rounds}) AS BIGINT) AS priced_lines,
                   CAST(count(*) FILTER (WHERE {rounds} AND meter IS NULL) AS BIGINT) AS our_unmetered_lines
            FROM rated_usage WHERE period_start >= ? AND period_start < ?
            GROUP BY customer_id, period_start
            """,
            [start, end],
        )
        # the lines that round and are compared: every charge has a line, most of them 0, and each
        # widened the invoice's tolerance by a cent (8 where Stripe has 2 lines: a fee 8 cents over
        # passed); a charge Stripe cannot price is left out of the comparison
        frame = (frame.join(nx, on=["customer_id", "period_start"], how="left")
                 .with_columns(our_lines=pl.coalesce("priced_lines", "our_lines")).drop("priced_lines"))
    return rc.conform(frame, rc.OUR_INVOICES_SCHEMA)


def load_stripe_invoices(con: duckdb.DuckDBPyConnection, billing_month: dt.date, periods: pl.DataFrame) -> pl.DataFrame:
    """Stripe's total per customer x period (all lines of the period), what of it is paid, and the
    closing invoice's status.

    `engine_items_minor` is the part of the total on the engine's own invoice items. `amount_paid`,
    `amount_remaining` and `amount_due` are the period's own lines by their invoice's status
    (`_line_payments`), whichever invoice carries them, less `credit_notes_minor`: the credit notes
    Stripe issued before payment on the invoices counted in the period (`_period_adjustments`), off
    `amount_paid` for a paid invoice, off `amount_remaining` for an open or uncollectible one, and off
    `amount_due` either way. So `stripe_total_minor` = `amount_paid` + `amount_remaining` +
    `credit_notes_minor` + the lines on drafts. `price_drift`, `drifted_meters` and
    `drifted_unmetered` say which lines a Stripe price drifted from our rules priced (`_line_drift_sql`).
    The closing invoice is the latest non-void
    invoice of the customer that closes the period (`load_open_periods` says when: it reaches the
    period's end, or its subscription's end inside the period), whether or not it has a line in the
    period (a subscription with only licensed prices bills the next period's fee on it); its status is
    `invoice_status`, NULL when none closes the period. Its payment is not the period's: it carries the
    next period's fee, billed in advance, and the period's own fee was on an earlier invoice.
    """
    lines = _bucketed_lines(con, billing_month, periods)
    if lines.is_empty():
        return rc.conform(None, rc.STRIPE_INVOICES_SCHEMA)
    rounds = (pl.col("amount") != 0) & ~pl.col("engine_item")
    frame = lines.group_by(["customer_id", "period_start"]).agg(
        pl.col("period_end").max(),
        _currencies(),
        pl.col("amount").sum().alias("stripe_total_minor"),
        pl.col("amount").filter(pl.col("engine_item")).sum().alias("engine_items_minor"),
        pl.len().cast(pl.Int64).alias("line_count"),
        rounds.sum().cast(pl.Int64).alias("rounded_lines"),
        (rounds & pl.col("meter").is_null()).sum().cast(pl.Int64).alias("unmetered_lines"),
        pl.col("invoice_id").unique().sort().str.join(",").alias("invoice_ids"),
        *_line_payments(),
        _drifts(),
        # where a drifted price priced a line: its meters (their usage rows carry the money), and whether
        # a line on no meter (a fee: the residual carries it)
        pl.col("meter").filter(pl.col("price_drift").is_not_null()).drop_nulls()
        .unique().sort().str.join(",").replace("", None).alias("drifted_meters"),
        (pl.col("price_drift").is_not_null() & pl.col("meter").is_null()).any().alias("drifted_unmetered"),
    )
    frame = (frame.join(_closing_invoices(con, frame), on=["customer_id", "period_start"], how="left")
             .join(_amounts_by_currency(lines, ["customer_id", "period_start"]), on=["customer_id", "period_start"],
                   how="left")
             .join(_period_adjustments(con, lines), on=["customer_id", "period_start"], how="left"))
    # credit notes issued before payment: Stripe collects that much less than the lines on the invoice
    # say, off what is paid (a paid invoice) or remaining (an open or uncollectible one)
    credit_paid = pl.col("credit_notes_paid_minor").fill_null(0)
    credit_remaining = pl.col("credit_notes_remaining_minor").fill_null(0)
    frame = frame.with_columns(
        credit_notes_minor=pl.col("credit_notes_minor").fill_null(0),
        amount_due=pl.col("amount_due") - credit_paid - credit_remaining,
        amount_paid=pl.col("amount_paid") - credit_paid,
        amount_remaining=pl.col("amount_remaining") - credit_remaining,
    )
    return rc.conform(frame, rc.STRIPE_INVOICES_SCHEMA)


def _line_payments() -> list[pl.Expr]:
    """Aggregations over a period's lines (`_bucketed_lines`): `amount_paid`, the lines on paid
    invoices; `amount_remaining`, those on open or uncollectible ones (billed, not collected: written
    off included); `amount_due`, both. Line amounts: before the invoice's discounts and tax (the
    discounts are `stripe_adjustments_minor`) and before its pre-payment credit notes (which
    `load_stripe_invoices` then takes off). A draft's lines are in none yet: not due."""
    status = pl.col("invoice_status")
    paid, remaining = status.is_in(PAID_STATUSES), status.is_in(REMAINING_STATUSES)
    return [pl.col("amount").filter(paid | remaining).sum().alias("amount_due"),
            pl.col("amount").filter(paid).sum().alias("amount_paid"),
            pl.col("amount").filter(remaining).sum().alias("amount_remaining")]


def _closing_invoices(con: duckdb.DuckDBPyConnection, periods: pl.DataFrame) -> pl.DataFrame:
    """customer_id, period_start, closing_invoice_id and its invoice_status and creation time
    (closing_invoice_created): per customer period, the latest non-void invoice that closes it, if any.

    An invoice closes one row at most (the longest period it closes): a line no rated period holds
    makes a row of its own period, which may lie inside another (an item Stripe dates Oct 15 - Oct 15
    beside October), or have no length.
    """
    con.register("_recon_closing", periods.select("customer_id", "period_start", "period_end").to_arrow())
    try:
        return query_frame(
            con,
            f"""
            WITH invoices AS ({merged_invoices_sql(con)}),
            closing AS (
                SELECT p.customer_id, p.period_start, i.invoice_id, i.status, i.created
                FROM _recon_closing p JOIN invoices i ON {_closes_sql(con, f'({merged_lines_sql(con)})')}
                WHERE NOT {NOT_BILLING} AND p.period_end > p.period_start
                QUALIFY row_number() OVER (PARTITION BY i.invoice_id
                                           ORDER BY p.period_end DESC, p.period_start, p.customer_id) = 1
            )
            SELECT customer_id, period_start, invoice_id AS closing_invoice_id, status AS invoice_status,
                   created AS closing_invoice_created
            FROM closing
            QUALIFY row_number() OVER (PARTITION BY customer_id, period_start
                                       ORDER BY created DESC NULLS LAST, invoice_id DESC) = 1
            """,
        )
    finally:
        con.unregister("_recon_closing")


def _period_adjustments(con: duckdb.DuckDBPyConnection, lines: pl.DataFrame) -> pl.DataFrame:
    """customer_id, period_start, adjustments_minor, adjusted_invoice_ids, and the pre-payment credit
    notes (credit_notes_minor, credited_invoice_ids; of them credit_notes_paid_minor on paid invoices and
    credit_notes_remaining_minor on open or uncollectible ones) of the invoices with lines in each
    period.

    Adjustments: each invoice counted in ONE period, the one its earliest line belongs to
    (`_invoice_adjustments`' `counted_on`), whichever month is reconciled. Not only the closing
    invoice: a coupon on the invoice that bills the first period's fee in advance
    (`subscription_create`) was never seen. Not every invoice of the period either: the invoice that
    closes October also bills November's fee in advance, and counted in both periods its discount
    would count twice. Not by the invoice's own period either: an invoice closing a period in which it
    has no line (a subscription with only licensed prices bills November's fee on the invoice of
    October's period) would count in no period.

    Credit notes: each invoice's credit is spread over its lines (`_line_credits`), so each period is
    credited at most what the invoice bills in it: a credit larger than October's lines of the invoice
    that closes October covers its November fee too (put all in October, October's remaining went
    negative and November's showed the fee still owed).

    `adjustments_minor` is NULL when no invoice counted in the period has a known total before tax;
    a credit note unknown (NULL: `merged_invoices_sql`) counts as 0."""
    pairs = lines.select("customer_id", "period_start", "period_end", "invoice_id").drop_nulls("invoice_id").unique()
    invoice_ids = pairs["invoice_id"].unique().sort().to_list()
    adjustments = (
        pairs.join(_invoice_adjustments(con, invoice_ids), on="invoice_id")
        .filter(pl.col("counted_on").is_between(pl.col("period_start"), pl.col("period_end"), closed="left"))
        .group_by("customer_id", "period_start")
        .agg(pl.when(pl.col("adjustments_minor").is_not_null().any())
             .then(pl.col("adjustments_minor").sum()).alias("adjustments_minor"),
             pl.col("invoice_id").filter(pl.col("adjustments_minor").fill_null(0) != 0).sort().str.join(",")
             .alias("adjusted_invoice_ids"))
    )
    credit = pl.col("credit_minor")
    status = pl.col("invoice_status")
    credits = (
        lines.select("customer_id", "period_start", "invoice_id", "line_id", "invoice_status")
        .join(_line_credits(con, invoice_ids), on=["invoice_id", "line_id"])
        .group_by("customer_id", "period_start")
        .agg(credit.sum().alias("credit_notes_minor"),
             pl.col("invoice_id").filter(credit != 0).unique().sort().str.join(",").alias("credited_invoice_ids"),
             credit.filter(status.is_in(PAID_STATUSES)).sum().alias("credit_notes_paid_minor"),
             credit.filter(status.is_in(REMAINING_STATUSES)).sum().alias("credit_notes_remaining_minor"))
    )
    return adjustments.join(credits, on=["customer_id", "period_start"], how="full", coalesce=True)


def _line_credits(con: duckdb.DuckDBPyConnection, invoice_ids: list[str]) -> pl.DataFrame:
    """invoice_id, line_id, credit_minor: each credited invoice's `pre_payment_credit_notes_amount` spread
    over its lines in the order they bill (line period start, then line id), each line taking at most
    its own amount; a credit beyond the invoice's lines stays on its first billing line. Lines of all
    periods count, whichever month is reconciled, so every month spreads an invoice alike."""
    return query_frame(
        con,
        f"""
        WITH lines AS ({merged_lines_sql(con)}),
             invoices AS ({merged_invoices_sql(con)}),
             credited AS (
                SELECT l.invoice_id, l.line_id, greatest(l.amount, 0) AS owed,
                       CAST(i.pre_payment_credit_notes AS BIGINT) AS credit,
                       sum(greatest(l.amount, 0)) OVER (PARTITION BY l.invoice_id ORDER BY l.period_start, l.line_id
                                                        ROWS UNBOUNDED PRECEDING) - greatest(l.amount, 0) AS before,
                       sum(greatest(l.amount, 0)) OVER (PARTITION BY l.invoice_id) AS billed,
                       row_number() OVER (PARTITION BY l.invoice_id
                                          ORDER BY l.amount <= 0, l.period_start, l.line_id) AS rank
                FROM lines l JOIN invoices i ON i.invoice_id = l.invoice_id
                WHERE list_contains(?::VARCHAR[], l.invoice_id) AND coalesce(i.pre_payment_credit_notes, 0) <> 0
             )
        SELECT invoice_id, line_id,
               CAST(greatest(least(owed, credit - before), 0)
                    + CASE WHEN rank = 1 THEN greatest(credit - billed, 0) ELSE 0 END AS BIGINT) AS credit_minor
        FROM credited
        """,
        [invoice_ids],
    )


def _invoice_adjustments(con: duckdb.DuckDBPyConnection, invoice_ids: list[str]) -> pl.DataFrame:
    """invoice_id, counted_on, adjustments_minor, credit_notes_minor, invoice_status for the invoices
    `invoice_ids` (those of the periods reconciled, not every invoice the warehouse holds). `counted_on`:
    the UTC date its earliest line starts (the line that puts it in the earliest period; the engine's
    items, which carry the period they bill, and a first invoice's zero-length metered lines only when
    it has no other). The adjustments: each invoice's total before tax (`total_excluding_tax`: after
    discounts and pre-tax credits) less the sum of its lines (whose amounts are before them). Tax is
    Stripe's to compute: the engine rates none, and an invoice's tax is no difference to explain.
    NULL for invoices whose lines are not all known, or stored without `total_excluding_tax` (pulled
    before migration 054: `total` would count their tax), until pulled again. `credit_notes_minor`:
    the invoice's `pre_payment_credit_notes_amount` (which leaves its total as it was), 0 when unknown
    (pulled before migration 055, or known only from webhooks)."""
    zero = _ZERO_LENGTH_FREE
    engine = f"coalesce({_engine_item_sql(con, 'l')}, false)"
    return query_frame(
        con,
        f"""
        WITH lines AS ({merged_lines_sql(con)}),
             invoices AS ({merged_invoices_sql(con)})
        SELECT i.invoice_id,
               CAST(coalesce(min(l.period_start) FILTER (WHERE NOT {zero} AND NOT {engine}),
                             min(l.period_start) FILTER (WHERE NOT {zero}), min(l.period_start)) AS DATE) AS counted_on,
               CAST(CASE WHEN any_value(i.total_before_tax) IS NOT NULL AND bool_and(i.lines_complete)
                         THEN any_value(i.total_before_tax) - sum(l.amount) END AS BIGINT) AS adjustments_minor,
               CAST(coalesce(any_value(i.pre_payment_credit_notes), 0) AS BIGINT) AS credit_notes_minor,
               any_value(i.status) AS invoice_status
        FROM invoices i JOIN lines l ON l.invoice_id = i.invoice_id
        WHERE list_contains(?::VARCHAR[], i.invoice_id)
        GROUP BY i.invoice_id
        """,
        [invoice_ids],
    )


def load_engine_items_pending(con: duckdb.DuckDBPyConnection, billing_month: dt.date) -> pl.DataFrame:
    """Per customer x period starting in the month: the engine's invoice items Stripe holds pending.

    From the ledger `stripe_invoice_items`: acknowledged items Stripe put on no invoice
    (`stripe_invoice_id` NULL: the subscription's next invoice will carry them), less those already
    among the known invoice lines (Stripe has since invoiced them: they count with those lines).
    """
    need = {"customer_id", "period_start", "amount_minor", "status", "stripe_invoice_item_id", "stripe_invoice_id",
            "item_key"}
    if not need <= table_columns(con, "stripe_invoice_items"):
        return rc.conform(None, rc.PENDING_ITEMS_SCHEMA)
    start, end = month_bounds(billing_month)
    frame = query_frame(
        con,
        f"""
        WITH lines AS ({merged_lines_sql(con)})
        SELECT customer_id, period_start, CAST(sum(amount_minor) AS BIGINT) AS engine_items_pending_minor
        FROM stripe_invoice_items t
        WHERE period_start >= ? AND period_start < ? AND status = 'acknowledged' AND stripe_invoice_id IS NULL
          AND NOT EXISTS (SELECT 1 FROM lines l
                          WHERE l.invoice_item = t.stripe_invoice_item_id OR l.metering_item = t.item_key)
        GROUP BY customer_id, period_start
        """,
        [start, end],
    )
    return rc.conform(frame, rc.PENDING_ITEMS_SCHEMA)
