"""Repair: fill gaps in the landed webhooks from Stripe's own event list, and re-fetch objects.

Stripe keeps events for 30 days and `GET /v1/events` lists them (newest first, paginated): every
event we never received becomes a receipt with source `repair` (receipt key `repair:<event id>`, so
re-running repair adds nothing twice), and `stripe_webhook_events` is refreshed for it. Events we
already have are left alone: repair is not a delivery.

Then, for every invoice and subscription a repaired event touched, the current object is re-fetched
(`GET /v1/invoices/{id}`, `GET /v1/subscriptions/{id}`) into `stripe_object_snapshots`, ordered
against events at the newest `created` known for that object (see `metering.webhooks.state`).
Prices on invoice lines whose meter is unknown are re-fetched too, so lines can name their meter.

All Stripe calls go through the `stripe.StripeClient` passed in (the official SDK).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import duckdb
import polars as pl
import stripe

from metering.warehouse import transaction
from metering.webhooks.events import insert_receipts
from metering.webhooks.inbox import epoch_sql
from metering.webhooks.state import INVOICE_STATUS_RANK, rank_case

log = logging.getLogger(__name__)

PAGE_SIZE = 100
SNAPSHOT_BATCH = 100
REFETCHABLE = ("invoice", "subscription")
EVENTS_REACH = timedelta(days=30)
"""How far back Stripe's `GET /v1/events` lists (stripe-facts: 30 days)."""
REACH_MARGIN = timedelta(hours=1)
"""Taken off the reach, for the clocks of Stripe and of this host, which differ."""
FINAL_INVOICE_STATUSES = ("paid", "void")
FINAL_SUBSCRIPTION_STATUSES = ("canceled", "incomplete_expired")


@dataclass(frozen=True)
class RepairStats:
    events_listed: int
    events_repaired: int
    objects_refetched: int
    prices_refetched: int
    gap_refetched: int = 0
    """Of `objects_refetched`, those re-read because events may have been lost beyond the list's reach."""

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def make_client(api_base: str | None = None) -> stripe.StripeClient:
    """A StripeClient from the environment (`STRIPE_API_KEY`, `STRIPE_API_BASE`, ...)."""
    from metering.stripe.client import make_client as _make, settings_from_env

    settings = settings_from_env(required=True)
    assert settings is not None
    if api_base:
        settings = settings.with_base(api_base)
    return _make(settings)


def _as_json(obj: Any) -> str:
    return json.dumps(obj.to_dict(for_json=True), separators=(",", ":"), sort_keys=True)


def list_events(client: stripe.StripeClient, *, created_gte: int | None = None) -> pl.DataFrame:
    """Every event Stripe still holds (30 days), or those created at/after `created_gte`."""
    params: dict[str, Any] = {"limit": PAGE_SIZE}
    if created_gte is not None:
        params["created"] = {"gte": created_gte}
    page = client.v1.events.list(params)
    rows = [{"event_id": e.id, "raw": _as_json(e)} for e in page.auto_paging_iter()]
    return pl.DataFrame(rows, schema={"event_id": pl.String, "raw": pl.String})


def _retrieve(client: stripe.StripeClient, object_type: str, object_id: str) -> Any:
    if object_type == "invoice":
        return client.v1.invoices.retrieve(object_id)
    if object_type == "subscription":
        return client.v1.subscriptions.retrieve(object_id)
    if object_type == "price":
        return client.v1.prices.retrieve(object_id)
    raise ValueError(object_type)


def _snapshot(
    con: duckdb.DuckDBPyConnection, client: stripe.StripeClient, targets: list[tuple[str, str]], now: datetime
) -> int:
    """Re-fetch (object_type, object_id) pairs into stripe_object_snapshots; returns how many.

    Stored every `SNAPSHOT_BATCH` objects and before an error leaves: a run stopped by Stripe (a
    rate limit its retries did not outlast) keeps what it read, and the next run asks for the rest.
    """
    stored, rows = 0, []
    try:
        for object_type, object_id in targets:
            try:
                obj = _retrieve(client, object_type, object_id)
            except stripe.InvalidRequestError as exc:  # deleted since (e.g. a deleted draft invoice)
                log.info("object no longer retrievable", extra={"object_id": object_id, "status": exc.http_status})
                continue
            rows.append({"object_id": object_id, "object_type": object_type, "raw": _as_json(obj)})
            if len(rows) == SNAPSHOT_BATCH:
                stored += _store_snapshots(con, rows, now)
                rows = []
    finally:
        stored += _store_snapshots(con, rows, now)
    return stored


def _store_snapshots(con: duckdb.DuckDBPyConnection, rows: list[dict[str, str]], now: datetime) -> int:
    if not rows:
        return 0
    frame = pl.DataFrame(rows, schema={"object_id": pl.String, "object_type": pl.String, "raw": pl.String})
    con.register("_wh_snap", frame.to_arrow())
    try:
        with transaction(con):
            con.execute(
                "DELETE FROM stripe_object_snapshots WHERE (object_type, object_id) IN"
                " (SELECT (object_type, object_id) FROM _wh_snap)"
            )
            created = epoch_sql("TRY_CAST(CAST(s.raw AS JSON) ->> '$.created' AS BIGINT)")
            con.execute(
                f"""
                INSERT INTO stripe_object_snapshots
                SELECT s.object_id, s.object_type,
                       coalesce(e.newest, {created}, ?),
                       ?, CAST(s.raw AS JSON)
                FROM _wh_snap s
                LEFT JOIN (SELECT object_id, max(created) AS newest FROM stripe_webhook_events GROUP BY object_id) e
                       USING (object_id)
                """,
                [now, now],
            )
    finally:
        con.unregister("_wh_snap")
    return len(rows)


def repair_events(
    con: duckdb.DuckDBPyConnection,
    client: stripe.StripeClient,
    *,
    created_gte: int | None = None,
    refetch: bool = True,
    now: datetime | None = None,
) -> RepairStats:
    """List Stripe's events, land the missing ones as `repair` receipts, re-fetch what they touched."""
    now = now or datetime.now(timezone.utc)
    listed = list_events(client, created_gte=created_gte)
    con.register("_wh_listed", listed.to_arrow())
    try:
        with transaction(con):
            con.execute(
                """
                CREATE OR REPLACE TEMP TABLE _wh_repair AS
                SELECT 'repair:' || event_id AS receipt_key, event_id, 'repair' AS source,
                       CAST(? AS TIMESTAMPTZ) AS received_at, CAST(NULL AS VARCHAR) AS landing_file,
                       CAST(NULL AS BIGINT) AS line_no, CAST(raw AS JSON) AS raw
                FROM (SELECT DISTINCT event_id, first(raw) AS raw FROM _wh_listed GROUP BY event_id)
                WHERE event_id NOT IN (SELECT event_id FROM stripe_webhook_events)
                  AND 'repair:' || event_id NOT IN (SELECT receipt_key FROM stripe_webhook_receipts)
                """,
                [now],
            )
            repaired, _ = insert_receipts(con, "_wh_repair", now)
            targets = con.execute(
                """
                SELECT DISTINCT raw ->> '$.data.object.object' AS object_type, raw ->> '$.data.object.id' AS object_id
                FROM _wh_repair
                WHERE list_contains(?, raw ->> '$.data.object.object') AND NOT ((raw ->> '$.type') LIKE '%.deleted')
                ORDER BY 1, 2
                """,
                [list(REFETCHABLE)],
            ).fetchall()
    finally:
        con.unregister("_wh_listed")
    listed_from = now - EVENTS_REACH + REACH_MARGIN
    if created_gte is not None:
        listed_from = max(listed_from, datetime.fromtimestamp(created_gte, timezone.utc))
    unreached = _unreached_objects(con, listed_from)
    objects = prices = 0
    if refetch:
        targets = sorted({*targets, *ambiguous_objects(con), *(unreached or [])})
        objects = _snapshot(con, client, [(t, i) for t, i in targets], now)
        prices = _snapshot(con, client, [("price", p) for p in _prices_without_meter(con)], now)
    stats = RepairStats(listed.height, repaired, objects, prices, len(unreached or []) if refetch else 0)
    if unreached is not None:
        log.warning(
            "events before %s are beyond the reach of Stripe's event list and were not all listed by an earlier "
            "repair: any missed there are lost to listing; %s the %d invoices and subscriptions not yet final",
            listed_from.isoformat(), "re-read" if refetch else "without --refetch, NOT re-read:", len(unreached))
    if refetch or unreached is None:  # a gap left unread stays one for the next run
        con.execute("INSERT INTO stripe_repair_runs VALUES (?, ?, ?, ?, ?, ?)",
                    [now, listed_from, stats.events_listed, stats.events_repaired, stats.objects_refetched,
                     stats.gap_refetched])
    log.info("repaired webhook events from Stripe", extra=stats.as_dict())
    return stats


def _unreached_objects(con: duckdb.DuckDBPyConnection, listed_from: datetime) -> list[tuple[str, str]] | None:
    """(object_type, object_id) of the invoices and subscriptions not yet final (in the state tables),
    when events may have been missed where this run's listing cannot reach: the previous repair listed
    before `listed_from` (or, with no repair yet, webhooks landed before it). None when there is no gap.

    Stripe lists 30 days of events: a repair that comes later than that after the previous one (an
    outage, a failed schedule) cannot list what was missed in between, and the objects those events
    changed (an invoice paid while the receiver was down) kept their old state for good, unreported.
    Re-reading every object that can still change is what Stripe advises when state matters."""
    previous = con.execute("SELECT max(repaired_at) FROM stripe_repair_runs").fetchone()[0]
    if previous is None:
        previous = con.execute("SELECT min(first_received_at) FROM stripe_webhook_events").fetchone()[0]
        if previous is None:
            return None  # nothing landed yet: the listing is all there is to know
    if previous >= listed_from:
        return None
    # an object read again since `listed_from` is Stripe's as of then, and what changed it later is within
    # the listing's reach: a gap re-read stopped part-way (a rate limit) goes on where it stopped
    return [tuple(r) for r in con.execute(
        f"""
        SELECT * FROM (
            SELECT 'invoice' AS object_type, invoice_id AS object_id FROM stripe_invoices
            WHERE NOT list_contains({list(FINAL_INVOICE_STATUSES)}, coalesce(status, ''))
            UNION
            SELECT 'subscription', subscription_id FROM stripe_subscriptions
            WHERE NOT list_contains({list(FINAL_SUBSCRIPTION_STATUSES)}, coalesce(status, ''))
        ) o
        WHERE NOT EXISTS (SELECT 1 FROM stripe_object_snapshots s WHERE s.object_type = o.object_type
                          AND s.object_id = o.object_id AND s.fetched_at >= ?)
        ORDER BY 1, 2
        """, [listed_from]).fetchall()]


def ambiguous_objects(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(object_type, object_id) of invoices and subscriptions whose newest second holds versions
    `state` cannot order, and no re-fetch at least that recent.

    Stripe's `created` counts whole seconds, so `state` orders the versions of one second by status
    precedence, then (invoices) attempt count, then event id. A subscription's status is no order: it
    goes past_due -> active when a failed payment is paid again, within one second, and its state
    stayed past_due; so two different versions of a subscription in its newest second are ambiguous.
    An invoice's status only moves forward: its versions are ambiguous only when two different ones
    share the highest status and attempt count (their order would be the event ids'). Only Stripe
    knows the last version; a snapshot read now, dated at the newest event, settles it, and later
    events still replace it. The first invoice's created/finalized/paid events, which share a second,
    are ordered by status and are not re-fetched.

    A snapshot settles its second only for the events known when it was read: an event of that second
    first received after the fetch (Stripe paid the invoice in the second the fetch read it open, or a
    webhook was merely late) makes the object ambiguous again, until a new snapshot is read.
    """
    return [tuple(r) for r in con.execute(
        f"""
        WITH versions AS (
            SELECT object_type, object_id, created, md5(CAST(raw -> '$.data.object' AS VARCHAR)) AS version,
                   CASE WHEN object_type = 'invoice'
                        THEN [{rank_case("raw ->> '$.data.object.status'", INVOICE_STATUS_RANK)},
                              coalesce(TRY_CAST(raw ->> '$.data.object.attempt_count' AS BIGINT), -1)]
                        ELSE [0, 0] END AS rank,
                   max(created) OVER (PARTITION BY object_type, object_id) AS newest
            FROM stripe_webhook_events
            WHERE list_contains(?, object_type) AND object_id IS NOT NULL AND NOT (type LIKE '%.deleted')
              AND type <> 'invoice.upcoming'   -- a preview: no invoice to fetch
        ), last_second AS (
            SELECT *, max(rank) OVER (PARTITION BY object_type, object_id) AS top FROM versions WHERE created = newest
        ), tied AS (
            SELECT object_type, object_id, newest FROM last_second WHERE rank = top
            GROUP BY ALL HAVING count(DISTINCT version) > 1
        ), unsettled AS (
            SELECT object_type, object_id FROM tied t
            WHERE NOT EXISTS (SELECT 1 FROM stripe_object_snapshots s
                              WHERE s.object_type = t.object_type AND s.object_id = t.object_id
                                AND s.version_created >= t.newest)
            UNION
            -- an event of the snapshot's own second that arrived after the fetch may be older or newer
            -- than what the fetch read (webhooks arrive seconds late): only a new read can tell
            SELECT s.object_type, s.object_id FROM stripe_object_snapshots s
            JOIN stripe_webhook_events e ON e.object_type = s.object_type AND e.object_id = s.object_id
                 AND e.created = s.version_created AND e.first_received_at > s.fetched_at
            WHERE list_contains(?, s.object_type)
        )
        SELECT object_type, object_id FROM unsettled
        WHERE object_id NOT IN (SELECT object_id FROM stripe_webhook_events
                                WHERE type LIKE '%.deleted' AND object_id IS NOT NULL)
        ORDER BY 1, 2
        """,
        [list(REFETCHABLE), list(REFETCHABLE)],
    ).fetchall()]


def _prices_without_meter(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Prices seen on invoice lines whose Stripe meter is not known yet."""
    rows = con.execute(
        """
        WITH lines AS (
            SELECT unnest(CAST(raw -> '$.data.object.lines.data' AS JSON[])) AS line
            FROM stripe_webhook_events WHERE object_type = 'invoice'
        )
        SELECT DISTINCT line ->> '$.pricing.price_details.price' AS price_id FROM lines
        WHERE json_type(line -> '$.pricing.price_details.price') = 'VARCHAR'
          AND (line ->> '$.pricing.price_details.price') NOT IN (
              SELECT object_id FROM stripe_object_snapshots WHERE object_type = 'price')
        ORDER BY 1
        """
    ).fetchall()
    return [r[0] for r in rows if r[0]]
