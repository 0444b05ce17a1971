"""The reconciled current state of Stripe objects, folded from events in any delivery order.

Every event carries a full copy of its object (`data.object`) as of the event's `created`. For each
object we keep the newest version under one total order, so the result depends only on the *set* of
events, never on delivery order or duplicates (invariant I12):

1. `created` (newer wins);
2. a repair re-fetch (`stripe_object_snapshots`) beats an event of the same second: it was read
   from Stripe after every event known for the object at the time;
3. the object's status precedence (a later lifecycle status wins a tie within one second, e.g.
   invoice `draft < open < uncollectible < void < paid`);
4. `attempt_count` (a later payment attempt wins);
5. the event id (an arbitrary but fixed tie-break).

All of it is whole-frame DuckDB SQL over `stripe_webhook_events`; each table is rebuilt in one
delete-then-insert transaction. Money stays in integer minor units exactly as Stripe sends it.
"""

from __future__ import annotations

import duckdb

from metering.warehouse import transaction

INVOICE_STATUS_RANK = {"draft": 0, "open": 1, "uncollectible": 2, "void": 3, "paid": 4}
SUBSCRIPTION_STATUS_RANK = {
    "incomplete": 0, "trialing": 1, "active": 2, "past_due": 3, "paused": 4, "unpaid": 5,
    "incomplete_expired": 6, "canceled": 7,
}
PAYMENT_OUTCOMES = {
    "invoice.payment_failed": ("failed", 0),
    "invoice.payment_action_required": ("action_required", 1),
    "invoice.payment_succeeded": ("succeeded", 2),
    "invoice.paid": ("succeeded", 2),
}


def _rank_case(column: str, ranks: dict[str, int]) -> str:
    whens = " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in ranks.items())
    return f"CASE {column} {whens} ELSE -1 END"


def _ts(expr: str) -> str:
    return f"to_timestamp(TRY_CAST({expr} AS BIGINT))"


def _versions_sql(object_type: str) -> str:
    """Every known version of objects of one type: events plus repair snapshots."""
    return f"""
        SELECT event_id AS version_id, created AS version_created, 0 AS is_snapshot,
               type AS event_type, raw -> '$.data.object' AS obj
        FROM stripe_webhook_events
        WHERE object_type = '{object_type}'
        UNION ALL
        SELECT 'snapshot:' || object_id, version_created, 1, 'snapshot', raw
        FROM stripe_object_snapshots
        WHERE object_type = '{object_type}'
    """


_INVOICE_SELECT = f"""
    WITH versions AS ({_versions_sql('invoice')}),
    typed AS (
        SELECT *, obj ->> '$.id' AS invoice_id, obj ->> '$.status' AS status,
               TRY_CAST(obj ->> '$.attempt_count' AS BIGINT) AS attempt_count
        FROM versions
    ),
    deleted AS (SELECT DISTINCT invoice_id FROM typed WHERE event_type = 'invoice.deleted'),
    ranked AS (
        SELECT *, count(*) OVER (PARTITION BY invoice_id) AS state_events
        FROM typed
        WHERE invoice_id IS NOT NULL AND invoice_id NOT IN (SELECT invoice_id FROM deleted)
        QUALIFY row_number() OVER (
            PARTITION BY invoice_id
            ORDER BY version_created DESC, is_snapshot DESC,
                     {_rank_case('status', INVOICE_STATUS_RANK)} DESC,
                     attempt_count DESC NULLS LAST, version_id DESC) = 1
    )
    SELECT
        invoice_id,
        obj ->> '$.customer' AS customer,
        coalesce(obj ->> '$.metadata.customer_id',
                 obj ->> '$.parent.subscription_details.metadata.customer_id') AS customer_id,
        coalesce(obj ->> '$.parent.subscription_details.subscription.id',
                 obj ->> '$.parent.subscription_details.subscription') AS subscription_id,
        status,
        obj ->> '$.currency' AS currency,
        TRY_CAST(obj ->> '$.amount_due' AS BIGINT) AS amount_due,
        TRY_CAST(obj ->> '$.amount_paid' AS BIGINT) AS amount_paid,
        TRY_CAST(obj ->> '$.amount_remaining' AS BIGINT) AS amount_remaining,
        TRY_CAST(obj ->> '$.total' AS BIGINT) AS total,
        TRY_CAST(obj ->> '$.subtotal' AS BIGINT) AS subtotal,
        attempt_count,
        {_ts("obj ->> '$.next_payment_attempt'")} AS next_payment_attempt,
        {_ts("obj ->> '$.period_start'")} AS period_start,
        {_ts("obj ->> '$.period_end'")} AS period_end,
        {_ts("obj ->> '$.created'")} AS created,
        {_ts("obj ->> '$.status_transitions.finalized_at'")} AS finalized_at,
        {_ts("obj ->> '$.status_transitions.paid_at'")} AS paid_at,
        {_ts("obj ->> '$.status_transitions.marked_uncollectible_at'")} AS marked_uncollectible_at,
        {_ts("obj ->> '$.status_transitions.voided_at'")} AS voided_at,
        obj ->> '$.billing_reason' AS billing_reason,
        obj ->> '$.collection_method' AS collection_method,
        TRY_CAST(obj ->> '$.livemode' AS BOOLEAN) AS livemode,
        NOT coalesce(TRY_CAST(obj ->> '$.lines.has_more' AS BOOLEAN), false) AS lines_complete,
        obj -> '$.metadata' AS metadata,
        version_created AS state_event_created,
        version_id AS state_event_id,
        state_events,
        obj
    FROM ranked
"""

_INVOICE_COLUMNS = """
    invoice_id, customer, customer_id, subscription_id, status, currency, amount_due, amount_paid,
    amount_remaining, total, subtotal, attempt_count, next_payment_attempt, period_start, period_end,
    created, finalized_at, paid_at, marked_uncollectible_at, voided_at, billing_reason,
    collection_method, livemode, lines_complete, metadata, state_event_created, state_event_id, state_events
"""

_LINES_SELECT = f"""
    WITH lines AS (
        SELECT invoice_id, obj ->> '$.currency' AS invoice_currency,
               unnest(CAST(obj -> '$.lines.data' AS JSON[])) AS line
        FROM _wh_invoices
    ), priced AS (
        SELECT *,
               coalesce(line ->> '$.pricing.price_details.price.id',
                        line ->> '$.pricing.price_details.price') AS price_id
        FROM lines
    ), metered AS (
        SELECT p.*,
               coalesce(line ->> '$.pricing.price_details.price.recurring.meter',
                        s.raw ->> '$.recurring.meter') AS stripe_meter_id
        FROM priced p
        LEFT JOIN (SELECT object_id, raw FROM stripe_object_snapshots WHERE object_type = 'price') s
               ON s.object_id = p.price_id
    )
    SELECT
        invoice_id,
        line ->> '$.id' AS line_id,
        price_id,
        m.our_key AS meter,
        'metering_' || m.our_key AS event_name,
        stripe_meter_id,
        line ->> '$.parent.subscription_item_details.subscription_item' AS subscription_item,
        CAST(coalesce(line ->> '$.quantity_decimal', line ->> '$.quantity') AS DECIMAL(38, 12)) AS quantity_decimal,
        TRY_CAST(line ->> '$.amount' AS BIGINT) AS amount,
        coalesce(line ->> '$.currency', invoice_currency) AS currency,
        {_ts("line ->> '$.period.start'")} AS period_start,
        {_ts("line ->> '$.period.end'")} AS period_end,
        line ->> '$.description' AS description,
        'webhook' AS source
    FROM metered
    LEFT JOIN (SELECT DISTINCT our_key, stripe_id FROM {{meter_table}} WHERE kind = 'meter') m
           ON m.stripe_id = metered.stripe_meter_id
"""

_SUBSCRIPTION_SELECT = f"""
    WITH versions AS ({_versions_sql('subscription')}),
    typed AS (SELECT *, obj ->> '$.id' AS subscription_id, obj ->> '$.status' AS status FROM versions),
    ranked AS (
        SELECT *, count(*) OVER (PARTITION BY subscription_id) AS state_events
        FROM typed
        WHERE subscription_id IS NOT NULL
        QUALIFY row_number() OVER (
            PARTITION BY subscription_id
            ORDER BY version_created DESC, is_snapshot DESC,
                     {_rank_case('status', SUBSCRIPTION_STATUS_RANK)} DESC, version_id DESC) = 1
    ),
    items AS (
        SELECT subscription_id,
               min(TRY_CAST(item ->> '$.current_period_start' AS BIGINT)) AS period_start,
               max(TRY_CAST(item ->> '$.current_period_end' AS BIGINT)) AS period_end,
               to_json(list({{'id': item ->> '$.id',
                              'price': coalesce(item ->> '$.price.id', item ->> '$.price')}}
                             ORDER BY item ->> '$.id')) AS items
        FROM (SELECT subscription_id, unnest(CAST(obj -> '$.items.data' AS JSON[])) AS item FROM ranked)
        GROUP BY subscription_id
    )
    SELECT
        r.subscription_id,
        obj ->> '$.customer' AS customer,
        obj ->> '$.metadata.customer_id' AS customer_id,
        status,
        obj ->> '$.currency' AS currency,
        obj ->> '$.collection_method' AS collection_method,
        TRY_CAST(obj ->> '$.cancel_at_period_end' AS BOOLEAN) AS cancel_at_period_end,
        {_ts("obj ->> '$.cancel_at'")} AS cancel_at,
        {_ts("obj ->> '$.canceled_at'")} AS canceled_at,
        {_ts("obj ->> '$.ended_at'")} AS ended_at,
        to_timestamp(coalesce(i.period_start, TRY_CAST(obj ->> '$.current_period_start' AS BIGINT))) AS current_period_start,
        to_timestamp(coalesce(i.period_end, TRY_CAST(obj ->> '$.current_period_end' AS BIGINT))) AS current_period_end,
        {_ts("obj ->> '$.billing_cycle_anchor'")} AS billing_cycle_anchor,
        coalesce(obj ->> '$.latest_invoice.id', obj ->> '$.latest_invoice') AS latest_invoice,
        coalesce(obj ->> '$.test_clock.id', obj ->> '$.test_clock') AS test_clock,
        {_ts("obj ->> '$.created'")} AS created,
        TRY_CAST(obj ->> '$.livemode' AS BOOLEAN) AS livemode,
        coalesce(i.items, '[]') AS items,
        obj -> '$.metadata' AS metadata,
        version_created AS state_event_created,
        version_id AS state_event_id,
        state_events
    FROM ranked r LEFT JOIN items i USING (subscription_id)
"""

_ATTEMPTS_SELECT = f"""
    WITH payment_events AS (
        SELECT event_id, type, created, raw -> '$.data.object' AS obj,
               {_rank_case('type', {k: v[1] for k, v in PAYMENT_OUTCOMES.items()})} AS outcome_rank
        FROM stripe_webhook_events
        WHERE object_type = 'invoice' AND list_contains(?, type)
    )
    SELECT
        obj ->> '$.id' AS invoice_id,
        coalesce(TRY_CAST(obj ->> '$.attempt_count' AS BIGINT), 0) AS attempt_count,
        CASE outcome_rank WHEN 0 THEN 'failed' WHEN 1 THEN 'action_required' ELSE 'succeeded' END AS outcome,
        event_id,
        type AS event_type,
        created AS attempted_at,
        obj ->> '$.customer' AS customer,
        coalesce(obj ->> '$.metadata.customer_id',
                 obj ->> '$.parent.subscription_details.metadata.customer_id') AS customer_id,
        coalesce(obj ->> '$.parent.subscription_details.subscription.id',
                 obj ->> '$.parent.subscription_details.subscription') AS subscription_id,
        obj ->> '$.currency' AS currency,
        TRY_CAST(obj ->> '$.amount_due' AS BIGINT) AS amount_due,
        TRY_CAST(obj ->> '$.amount_paid' AS BIGINT) AS amount_paid,
        TRY_CAST(obj ->> '$.amount_remaining' AS BIGINT) AS amount_remaining,
        {_ts("obj ->> '$.next_payment_attempt'")} AS next_payment_attempt
    FROM payment_events
    WHERE (obj ->> '$.id') IS NOT NULL
    QUALIFY row_number() OVER (
        PARTITION BY obj ->> '$.id', coalesce(TRY_CAST(obj ->> '$.attempt_count' AS BIGINT), 0)
        ORDER BY outcome_rank DESC, created DESC, event_id DESC) = 1
"""


def _meter_map_table(con: duckdb.DuckDBPyConnection) -> str:
    """The push helper's `stripe_objects` (our meter <-> Stripe meter id), or an empty stand-in."""
    found = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'stripe_objects'"
    ).fetchone()[0]
    if found:
        return "stripe_objects"
    return "(SELECT CAST(NULL AS VARCHAR) AS kind, CAST(NULL AS VARCHAR) AS our_key, CAST(NULL AS VARCHAR) AS stripe_id)"


def rebuild_invoices(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rebuild `stripe_invoices` and the webhook-sourced rows of `stripe_invoice_lines`."""
    with transaction(con):
        con.execute(f"CREATE OR REPLACE TEMP TABLE _wh_invoices AS {_INVOICE_SELECT}")
        con.execute("DELETE FROM stripe_invoices")
        invoices = con.execute(
            f"INSERT INTO stripe_invoices ({_INVOICE_COLUMNS}) SELECT {_INVOICE_COLUMNS} FROM _wh_invoices"
        ).fetchone()[0]
        con.execute("DELETE FROM stripe_invoice_lines WHERE source = 'webhook'")
        lines_sql = _LINES_SELECT.format(meter_table=_meter_map_table(con))
        lines = con.execute(f"INSERT INTO stripe_invoice_lines BY NAME {lines_sql}").fetchone()[0]
        con.execute("DROP TABLE _wh_invoices")
    return {"invoices": invoices, "invoice_lines": lines}


def rebuild_subscriptions(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rebuild `stripe_subscriptions`."""
    with transaction(con):
        con.execute("DELETE FROM stripe_subscriptions")
        rows = con.execute(f"INSERT INTO stripe_subscriptions BY NAME {_SUBSCRIPTION_SELECT}").fetchone()[0]
    return {"subscriptions": rows}


def rebuild_payment_attempts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rebuild `stripe_payment_attempts`."""
    with transaction(con):
        con.execute("DELETE FROM stripe_payment_attempts")
        rows = con.execute(
            f"INSERT INTO stripe_payment_attempts BY NAME {_ATTEMPTS_SELECT}", [list(PAYMENT_OUTCOMES)]
        ).fetchone()[0]
    return {"payment_attempts": rows}


def rebuild_state(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rebuild every state table; returns row counts."""
    return {**rebuild_invoices(con), **rebuild_subscriptions(con), **rebuild_payment_attempts(con)}
