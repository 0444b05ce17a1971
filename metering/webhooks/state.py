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

For invoices, 3 and 4 come before 2: an invoice's status and attempt count only move forward, so a
version further on is later whenever it was sent, and an event of the snapshot's second that arrives
after the fetch (Stripe paid the invoice in the second the fetch read it open) must win. A
subscription's status moves both ways, so there the snapshot wins and the next repair re-fetches the
object (`repair.ambiguous_objects`).

All of it is whole-frame DuckDB SQL over `stripe_webhook_events`; each table is rebuilt in one
delete-then-insert transaction. Each event's JSON is parsed once, into a typed struct
(`json_transform` with the shapes below): extracting field by field would re-parse the whole event
for every field. Money stays in integer minor units exactly as Stripe sends it.
"""

from __future__ import annotations

import json

import duckdb

from metering.warehouse import table_columns, transaction
from metering.webhooks.inbox import epoch_sql

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

# The parts of each Stripe object we read (post-basil shapes). "JSON" keeps a value that may be an
# id string or an expanded object; anything that does not fit its type becomes NULL.
INVOICE_SHAPE = {
    "id": "VARCHAR", "status": "VARCHAR", "customer": "JSON", "currency": "VARCHAR",
    "amount_due": "BIGINT", "amount_paid": "BIGINT", "amount_remaining": "BIGINT", "total": "BIGINT",
    "total_excluding_tax": "BIGINT", "subtotal": "BIGINT", "attempt_count": "BIGINT",
    "next_payment_attempt": "BIGINT",
    "period_start": "BIGINT", "period_end": "BIGINT", "created": "BIGINT",
    "status_transitions": {"finalized_at": "BIGINT", "paid_at": "BIGINT",
                           "marked_uncollectible_at": "BIGINT", "voided_at": "BIGINT"},
    "billing_reason": "VARCHAR", "collection_method": "VARCHAR", "livemode": "BOOLEAN", "auto_advance": "BOOLEAN",
    "metadata": "JSON",
    "parent": {"subscription_details": {"subscription": "JSON", "metadata": "JSON"}},
    "lines": {"has_more": "BOOLEAN", "data": ["JSON"]},
}
LINE_SHAPE = {
    "id": "VARCHAR", "amount": "BIGINT", "currency": "VARCHAR", "quantity_decimal": "VARCHAR",
    "quantity": "VARCHAR", "description": "VARCHAR", "period": {"start": "BIGINT", "end": "BIGINT"},
    "pricing": {"price_details": {"price": "JSON"}},
    "parent": {"subscription_item_details": {"subscription_item": "VARCHAR"},
               "invoice_item_details": {"invoice_item": "VARCHAR"}},
    "metadata": {"metering_item": "VARCHAR"},
}
SUBSCRIPTION_SHAPE = {
    "id": "VARCHAR", "status": "VARCHAR", "customer": "JSON", "currency": "VARCHAR",
    "collection_method": "VARCHAR", "cancel_at_period_end": "BOOLEAN", "cancel_at": "BIGINT",
    "canceled_at": "BIGINT", "ended_at": "BIGINT", "billing_cycle_anchor": "BIGINT",
    "current_period_start": "BIGINT", "current_period_end": "BIGINT",
    "latest_invoice": "JSON", "test_clock": "JSON", "created": "BIGINT", "livemode": "BOOLEAN",
    "metadata": "JSON", "items": {"data": ["JSON"]},
}
ITEM_SHAPE = {"id": "VARCHAR", "price": "JSON", "current_period_start": "BIGINT", "current_period_end": "BIGINT"}


def _shape(shape: dict) -> str:
    return "'" + json.dumps(shape, separators=(",", ":")) + "'"


def rank_case(column: str, ranks: dict[str, int]) -> str:
    whens = " ".join(f"WHEN '{status}' THEN {rank}" for status, rank in ranks.items())
    return f"CASE {column} {whens} ELSE -1 END"


def _ts(expr: str) -> str:
    return epoch_sql(expr)


def _id(expr: str) -> str:
    """The id of a value that is either an id string or an expanded object."""
    return f"(CASE WHEN json_type({expr}) = 'OBJECT' THEN {expr} ->> '$.id' ELSE {expr} ->> '$' END)"


def _versions_sql(object_type: str, shape: dict) -> str:
    """Every known version of objects of one type (events plus repair snapshots), parsed once into `o`."""
    wrapped = _shape({"data": {"object": shape}})
    return f"""
        SELECT event_id AS version_id, created AS version_created, 0 AS is_snapshot, type AS event_type,
               json_transform(raw, {wrapped}).data.object AS o
        FROM stripe_webhook_events
        WHERE object_type = '{object_type}'
        UNION ALL
        SELECT 'snapshot:' || object_id, version_created, 1, 'snapshot', json_transform(raw, {_shape(shape)})
        FROM stripe_object_snapshots
        WHERE object_type = '{object_type}'
    """


def _our_customer_id(o: str) -> str:
    """Our customer id of the invoice `o`: the customer the catalog sync mapped its Stripe customer to
    (the latest sync that did, as the pull reads the latest sync's map), else its subscription's
    `metadata[customer_id]` (the engine sets it), else its own (an invoice of a Stripe customer no sync
    mapped). Its own metadata never overrides the others: Stripe charges the Stripe customer whatever
    the invoice's metadata says, and the pull (`reconcile.pulls`) attributes an invoice the same way.
    `{customer_map}` is filled in by `_customer_map_table`."""
    mapped = (f"(SELECT arg_max(m.customer_id, m.synced_at) FROM {{customer_map}} m"
              f" WHERE m.stripe_customer_id = {_id(o + '.customer')})")
    return (f"coalesce({mapped}, {o}.parent.subscription_details.metadata ->> '$.customer_id',"
            f" {o}.metadata ->> '$.customer_id')")


_INVOICE_SELECT = f"""
    WITH versions AS ({_versions_sql('invoice', INVOICE_SHAPE)}),
    -- ids only: one NULL in a NOT IN list makes the test NULL for every row (an invoice.deleted event
    -- without an object id once emptied the table)
    deleted AS (SELECT DISTINCT o.id AS invoice_id FROM versions
                WHERE event_type = 'invoice.deleted' AND o.id IS NOT NULL),
    ranked AS (
        SELECT *, count(*) OVER (PARTITION BY o.id) AS state_events
        FROM versions
        -- invoice.upcoming previews an invoice Stripe has not created (the preview API gives it an id)
        WHERE o.id IS NOT NULL AND o.id NOT IN (SELECT invoice_id FROM deleted) AND event_type <> 'invoice.upcoming'
        QUALIFY row_number() OVER (
            PARTITION BY o.id
            -- an invoice's status and attempt count only move forward, so within one second a version
            -- further on is the later one, also against a snapshot: an invoice.paid of the snapshot's
            -- second, sent after the fetch that read the invoice open, used to lose to it for good
            ORDER BY version_created DESC,
                     {rank_case('o.status', INVOICE_STATUS_RANK)} DESC,
                     o.attempt_count DESC NULLS LAST, is_snapshot DESC, version_id DESC) = 1
    )
    SELECT
        o.id AS invoice_id,
        {_id('o.customer')} AS customer,
        {_our_customer_id('o')} AS customer_id,
        {_id('o.parent.subscription_details.subscription')} AS subscription_id,
        o.status AS status,
        o.currency AS currency,
        o.amount_due AS amount_due,
        o.amount_paid AS amount_paid,
        o.amount_remaining AS amount_remaining,
        o.total AS total,
        o.total_excluding_tax AS total_excluding_tax,
        o.subtotal AS subtotal,
        o.attempt_count AS attempt_count,
        {_ts('o.next_payment_attempt')} AS next_payment_attempt,
        {_ts('o.period_start')} AS period_start,
        {_ts('o.period_end')} AS period_end,
        {_ts('o.created')} AS created,
        {_ts('o.status_transitions.finalized_at')} AS finalized_at,
        {_ts('o.status_transitions.paid_at')} AS paid_at,
        {_ts('o.status_transitions.marked_uncollectible_at')} AS marked_uncollectible_at,
        {_ts('o.status_transitions.voided_at')} AS voided_at,
        o.billing_reason AS billing_reason,
        o.collection_method AS collection_method,
        o.livemode AS livemode,
        o.auto_advance AS auto_advance,
        NOT coalesce(o.lines.has_more, false) AS lines_complete,
        o.metadata AS metadata,
        version_created AS state_event_created,
        version_id AS state_event_id,
        state_events,
        o.lines.data AS line_list
    FROM ranked
"""

_INVOICE_COLUMNS = """
    invoice_id, customer, customer_id, subscription_id, status, currency, amount_due, amount_paid,
    amount_remaining, total, total_excluding_tax, subtotal, attempt_count, next_payment_attempt, period_start,
    period_end,
    created, finalized_at, paid_at, marked_uncollectible_at, voided_at, billing_reason,
    collection_method, livemode, auto_advance, lines_complete, metadata, state_event_created, state_event_id,
    state_events
"""

_LINES_SELECT = f"""
    WITH lines AS (
        SELECT invoice_id, currency AS invoice_currency,
               json_transform(unnest(line_list), {_shape(LINE_SHAPE)}) AS l
        FROM _wh_invoices
    ), priced AS (
        SELECT *, l.pricing.price_details.price AS price, {_id('l.pricing.price_details.price')} AS price_id
        FROM lines
    ), metered AS (
        SELECT p.*,
               coalesce(CASE WHEN json_type(price) = 'OBJECT' THEN price ->> '$.recurring.meter' END,
                        s.raw ->> '$.recurring.meter') AS stripe_meter_id
        FROM priced p
        LEFT JOIN (SELECT object_id, raw FROM stripe_object_snapshots WHERE object_type = 'price') s
               ON s.object_id = p.price_id
    )
    SELECT
        invoice_id,
        l.id AS line_id,
        price_id,
        m.our_key AS meter,
        'metering_' || m.our_key AS event_name,
        stripe_meter_id,
        l.parent.subscription_item_details.subscription_item AS subscription_item,
        l.parent.invoice_item_details.invoice_item AS invoice_item,
        l.metadata.metering_item AS metering_item,
        CAST(coalesce(l.quantity_decimal, l.quantity) AS DECIMAL(38, 12)) AS quantity_decimal,
        l.amount AS amount,
        coalesce(l.currency, invoice_currency) AS currency,
        {_ts('l.period.start')} AS period_start,
        {_ts('l.period."end"')} AS period_end,
        l.description AS description,
        'webhook' AS source
    FROM metered
    LEFT JOIN (SELECT DISTINCT our_key, stripe_id FROM {{meter_table}} WHERE kind = 'meter') m
           ON m.stripe_id = metered.stripe_meter_id
"""

_SUBSCRIPTION_SELECT = f"""
    WITH versions AS ({_versions_sql('subscription', SUBSCRIPTION_SHAPE)}),
    ranked AS (
        SELECT *, count(*) OVER (PARTITION BY o.id) AS state_events
        FROM versions
        WHERE o.id IS NOT NULL
        QUALIFY row_number() OVER (
            PARTITION BY o.id
            ORDER BY version_created DESC, is_snapshot DESC,
                     {rank_case('o.status', SUBSCRIPTION_STATUS_RANK)} DESC, version_id DESC) = 1
    ),
    items AS (
        SELECT subscription_id,
               min(i.current_period_start) AS period_start,
               max(i.current_period_end) AS period_end,
               to_json(list({{'id': i.id, 'price': {_id('i.price')}}} ORDER BY i.id)) AS items
        FROM (SELECT o.id AS subscription_id, json_transform(unnest(o.items.data), {_shape(ITEM_SHAPE)}) AS i
              FROM ranked)
        GROUP BY subscription_id
    )
    SELECT
        o.id AS subscription_id,
        {_id('o.customer')} AS customer,
        o.metadata ->> '$.customer_id' AS customer_id,
        o.status AS status,
        o.currency AS currency,
        o.collection_method AS collection_method,
        o.cancel_at_period_end AS cancel_at_period_end,
        {_ts('o.cancel_at')} AS cancel_at,
        {_ts('o.canceled_at')} AS canceled_at,
        {_ts('o.ended_at')} AS ended_at,
        {_ts('coalesce(items.period_start, o.current_period_start)')} AS current_period_start,
        {_ts('coalesce(items.period_end, o.current_period_end)')} AS current_period_end,
        {_ts('o.billing_cycle_anchor')} AS billing_cycle_anchor,
        {_id('o.latest_invoice')} AS latest_invoice,
        {_id('o.test_clock')} AS test_clock,
        {_ts('o.created')} AS created,
        o.livemode AS livemode,
        coalesce(items.items, '[]') AS items,
        o.metadata AS metadata,
        version_created AS state_event_created,
        version_id AS state_event_id,
        state_events
    FROM ranked LEFT JOIN items ON items.subscription_id = ranked.o.id
"""

_ATTEMPTS_SELECT = f"""
    WITH payment_events AS (
        SELECT event_id, type, created,
               json_transform(raw, {_shape({"data": {"object": INVOICE_SHAPE}})}).data.object AS o,
               {rank_case('type', {k: v[1] for k, v in PAYMENT_OUTCOMES.items()})} AS outcome_rank
        FROM stripe_webhook_events
        WHERE object_type = 'invoice' AND list_contains(?, type)
    )
    SELECT
        o.id AS invoice_id,
        coalesce(o.attempt_count, 0) AS attempt_count,
        CASE outcome_rank WHEN 0 THEN 'failed' WHEN 1 THEN 'action_required' ELSE 'succeeded' END AS outcome,
        event_id,
        type AS event_type,
        created AS attempted_at,
        {_id('o.customer')} AS customer,
        {_our_customer_id('o')} AS customer_id,
        {_id('o.parent.subscription_details.subscription')} AS subscription_id,
        o.currency AS currency,
        o.amount_due AS amount_due,
        o.amount_paid AS amount_paid,
        o.amount_remaining AS amount_remaining,
        {_ts('o.next_payment_attempt')} AS next_payment_attempt
    FROM payment_events
    WHERE o.id IS NOT NULL
    QUALIFY row_number() OVER (
        PARTITION BY o.id, coalesce(o.attempt_count, 0)
        ORDER BY outcome_rank DESC, created DESC, event_id DESC) = 1
"""


def _table_or_empty(con: duckdb.DuckDBPyConnection, table: str, columns: tuple[str, ...]) -> str:
    """`table`, or an empty stand-in with its VARCHAR `columns` where the warehouse has none."""
    if table_columns(con, table):
        return table
    return "(SELECT " + ", ".join(f"CAST(NULL AS VARCHAR) AS {c}" for c in columns) + " WHERE false)"


def _meter_map_table(con: duckdb.DuckDBPyConnection) -> str:
    """The push helper's `stripe_objects` (our meter <-> Stripe meter id), or an empty stand-in."""
    return _table_or_empty(con, "stripe_objects", ("kind", "our_key", "stripe_id"))


def _customer_map_table(con: duckdb.DuckDBPyConnection) -> str:
    """The catalog sync's `stripe_customer_map` (our customer <-> Stripe customer), or an empty stand-in."""
    return _table_or_empty(con, "stripe_customer_map", ("customer_id", "stripe_customer_id", "synced_at"))


def rebuild_invoices(con: duckdb.DuckDBPyConnection, in_transaction: bool = False) -> dict[str, int]:
    """Rebuild `stripe_invoices` and the webhook-sourced rows of `stripe_invoice_lines` (in the caller's
    transaction with `in_transaction`)."""
    with transaction(con, within=in_transaction):
        invoice_sql = _INVOICE_SELECT.replace("{customer_map}", _customer_map_table(con))
        con.execute(f"CREATE OR REPLACE TEMP TABLE _wh_invoices AS {invoice_sql}")
        con.execute("DELETE FROM stripe_invoices")
        invoices = con.execute(
            f"INSERT INTO stripe_invoices ({_INVOICE_COLUMNS}) SELECT {_INVOICE_COLUMNS} FROM _wh_invoices"
        ).fetchone()[0]
        con.execute("DELETE FROM stripe_invoice_lines WHERE source = 'webhook'")
        lines_sql = _LINES_SELECT.replace("{meter_table}", _meter_map_table(con))
        lines = con.execute(f"INSERT INTO stripe_invoice_lines BY NAME {lines_sql}").fetchone()[0]
        con.execute("DROP TABLE _wh_invoices")
    return {"invoices": invoices, "invoice_lines": lines}


def rebuild_subscriptions(con: duckdb.DuckDBPyConnection, in_transaction: bool = False) -> dict[str, int]:
    """Rebuild `stripe_subscriptions`."""
    with transaction(con, within=in_transaction):
        con.execute("DELETE FROM stripe_subscriptions")
        rows = con.execute(f"INSERT INTO stripe_subscriptions BY NAME {_SUBSCRIPTION_SELECT}").fetchone()[0]
    return {"subscriptions": rows}


def rebuild_payment_attempts(con: duckdb.DuckDBPyConnection, in_transaction: bool = False) -> dict[str, int]:
    """Rebuild `stripe_payment_attempts`."""
    with transaction(con, within=in_transaction):
        con.execute("DELETE FROM stripe_payment_attempts")
        rows = con.execute(
            "INSERT INTO stripe_payment_attempts BY NAME "
            + _ATTEMPTS_SELECT.replace("{customer_map}", _customer_map_table(con)), [list(PAYMENT_OUTCOMES)]
        ).fetchone()[0]
    return {"payment_attempts": rows}


def rebuild_state(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Rebuild every state table, in one transaction (a process killed between them left the tables
    built from different landings for whatever read them next); returns row counts."""
    with transaction(con):
        return {**rebuild_invoices(con, True), **rebuild_subscriptions(con, True),
                **rebuild_payment_attempts(con, True)}
