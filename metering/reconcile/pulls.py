"""Pull Stripe's side of a billing month through the official SDK: meter event summaries, invoices, lines.

- Meter event summaries (`GET /v1/billing/meters/{id}/event_summaries`) per customer x meter x
  billing period, one request (plus pages) each. Sum-formula meters: `value_grouping_window=day`
  (rows of grain 'day', for analysts) summed into the grain 'period' row. Last-formula meters: one
  ungrouped summary, Stripe's own period value (grain 'period'). Periods are whole UTC days, so the
  bounds are UTC midnights as Stripe requires for daily grouping.
- Settle guard: Stripe's summaries are eventually consistent, so a customer x meter x period whose
  last acknowledged push of a window in that period (stripe_push_ledger.last_attempt_at) is younger
  than `settle_seconds` is not pulled: it gets a `pending` row saying why, and reconciliation reports
  it as `pending`. Pushes of other periods (the current month's, while a closed one is reconciled)
  say nothing about this period's summary.
- Invoices (`GET /v1/invoices`, paginated) of our customers whose period touches the month, and
  those carrying the engine's invoice items of the month's periods (a later invoice, when Stripe
  held the items pending: `pull_invoices`), and their lines: the invoice's embedded `lines` when
  complete, else `GET /v1/invoices/{id}/lines`. A line's meter comes from its price's
  `recurring.meter` (one `GET /v1/prices/{id}` per distinct price) and that meter's `event_name`
  (`metering_<our meter>`); an invoice item's line keeps its item id (`invoice_item`) and the
  engine's key (`metering_item`, the item's metadata copied onto its line), by which reconciliation
  tells the engine's own items (`stripe_invoice_items`) from Stripe's pricing. Each invoice keeps when
  its subscription ended (`GET /v1/subscriptions?status=all`, one paginated list): the final invoice
  of a subscription cancelled mid-period closes that period. Each invoice keeps its
  `pre_payment_credit_notes_amount` (credit notes before payment: they lower `amount_due`, not `total`).
- Our customer id -> Stripe customer: the push step's `stripe_customer_map`, else the Stripe
  customers' `metadata[customer_id]`. An invoice is the customer's whose Stripe customer it bills:
  Stripe charges that customer, whatever the invoice's own `metadata[customer_id]` says. An invoice
  whose metadata names another of ours is reported (`PullResult.misattributed`, a warning in the log),
  not moved to that customer.
- Numbers are read from the raw response body with `parse_float=Decimal`: `aggregated_value` is a
  JSON number, and going through float would not be exact.

Each pull reads everything from the API first, then replaces its tables for the month in one transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import duckdb
import polars as pl
import stripe

from metering.customers import midnight_unix
from metering.errors import ExternalServiceError
from metering.reconcile import inputs
from metering.reconcile.settings import ReconcileSettings
from metering.stripe.catalog import customer_map
from metering.stripe.retry import RateLimiter
from metering.warehouse import query_frame, replace_rows, table_columns, transaction

log = logging.getLogger(__name__)

EVENT_PREFIX = "metering_"

SUMMARY_SCHEMA = {
    "billing_month": pl.Date, "customer_id": pl.String, "stripe_customer_id": pl.String,
    "meter": pl.String, "stripe_meter_id": pl.String, "event_name": pl.String, "formula": pl.String,
    "period_start": pl.Date, "period_end": pl.Date, "grain": pl.String, "summary_id": pl.String,
    "window_start": pl.Datetime("us", "UTC"), "window_end": pl.Datetime("us", "UTC"),
    "aggregated_value": pl.Decimal(38, 12), "status": pl.String, "status_reason": pl.String,
    "pulled_at": pl.Datetime("us", "UTC"),
}
INVOICE_SCHEMA = {
    "billing_month": pl.Date, "invoice_id": pl.String, "customer": pl.String, "customer_id": pl.String,
    "subscription_id": pl.String, "status": pl.String, "currency": pl.String, "amount_due": pl.Int64,
    "amount_paid": pl.Int64, "amount_remaining": pl.Int64, "total": pl.Int64, "total_excluding_tax": pl.Int64,
    "subtotal": pl.Int64, "pre_payment_credit_notes_amount": pl.Int64,
    "attempt_count": pl.Int64, "period_start": pl.Datetime("us", "UTC"), "period_end": pl.Datetime("us", "UTC"),
    "created": pl.Datetime("us", "UTC"), "finalized_at": pl.Datetime("us", "UTC"),
    "subscription_ended_at": pl.Datetime("us", "UTC"), "auto_advance": pl.Boolean, "pulled_at": pl.Datetime("us", "UTC"),
}
LINE_SCHEMA = {
    "billing_month": pl.Date, "invoice_id": pl.String, "line_id": pl.String, "customer": pl.String,
    "customer_id": pl.String, "price_id": pl.String, "stripe_meter_id": pl.String, "event_name": pl.String,
    "meter": pl.String, "quantity_decimal": pl.Decimal(38, 12), "amount": pl.Int64, "currency": pl.String,
    "period_start": pl.Datetime("us", "UTC"), "period_end": pl.Datetime("us", "UTC"),
    "invoice_item": pl.String, "metering_item": pl.String, "pulled_at": pl.Datetime("us", "UTC"),
}


@dataclass(frozen=True)
class Misattributed:
    """A pulled invoice whose `metadata[customer_id]` names another customer than the one whose Stripe
    customer it bills (`customer_id`, which reconciliation counts it under)."""
    invoice_id: str
    customer_id: str
    metadata_customer_id: str


@dataclass(frozen=True)
class PullResult:
    billing_month: dt.date
    summaries: pl.DataFrame
    invoices: pl.DataFrame
    lines: pl.DataFrame
    api_calls: int
    misattributed: tuple[Misattributed, ...] = ()

    @property
    def pending(self) -> int:
        return self.summaries.filter(pl.col("status") == "pending").height


class _Reader:
    """Thin wrapper over a `stripe.StripeClient`: rate-limited, counts calls, parses bodies exactly.

    Thread-safe: the summaries are read concurrently (`ReconcileSettings.pull_concurrency`).
    """

    def __init__(self, client: stripe.StripeClient, rate: float, page_size: int) -> None:
        self.client = client
        self.page_size = page_size
        self.calls = 0
        self._lock = threading.Lock()
        self._limiter = RateLimiter(rate)

    def _fetch(self, fetch, arg: Any) -> Any:
        self._limiter.acquire()
        with self._lock:
            self.calls += 1
        return fetch(arg)

    def _body(self, obj: Any) -> dict[str, Any]:
        response = getattr(obj, "last_response", None)
        if response is None or not getattr(response, "body", None):
            return json.loads(json.dumps(obj.to_dict_recursive()), parse_float=Decimal)
        return json.loads(response.body, parse_float=Decimal)

    def pages(self, fetch, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every object of a paginated list (starting_after cursor)."""
        params = {**params, "limit": self.page_size}
        while True:
            try:
                body = self._body(self._fetch(fetch, params))
            except stripe.StripeError as exc:
                raise ExternalServiceError(f"Stripe list request failed: {type(exc).__name__}: {exc.user_message or exc}") from None
            data = body.get("data") or []
            yield from data
            if not body.get("has_more") or not data:
                return
            params = {**params, "starting_after": data[-1]["id"]}

    def retrieve(self, fetch, ident: str) -> dict[str, Any]:
        try:
            return self._body(self._fetch(fetch, ident))
        except stripe.StripeError as exc:
            raise ExternalServiceError(f"Stripe retrieve {ident} failed: {type(exc).__name__}") from None


def _ts(value: Any) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(int(value), dt.UTC)


def _ledger_last_ack(
    con: duckdb.DuckDBPyConnection, periods: pl.DataFrame
) -> dict[tuple[str, str, dt.date], dt.datetime]:
    """(customer_id, meter, period_start) -> the last acknowledged push of a window in that period.

    Per period: a push of the current month must not keep a closed month's summary from being read.
    """
    cols = table_columns(con, "stripe_push_ledger")
    if not {"customer_id", "meter", "status", "window_start", "last_attempt_at"} <= cols or periods.is_empty():
        return {}
    periods = periods.select("customer_id", "period_start", "period_end").unique()
    con.register("_recon_settle_periods", periods.to_arrow())
    try:
        rows = con.execute(
            """SELECT l.customer_id, l.meter, p.period_start, max(l.last_attempt_at)
               FROM stripe_push_ledger l JOIN _recon_settle_periods p
                 ON p.customer_id = l.customer_id
                AND l.window_start >= CAST(p.period_start AS TIMESTAMPTZ)
                AND l.window_start < CAST(p.period_end AS TIMESTAMPTZ)
               WHERE l.status = 'acknowledged'
               GROUP BY l.customer_id, l.meter, p.period_start"""
        ).fetchall()
    finally:
        con.unregister("_recon_settle_periods")
    return {(c, m, start): t for c, m, start, t in rows if t is not None}


def _targets(con: duckdb.DuckDBPyConnection, billing_month: dt.date, meters: list[str]) -> pl.DataFrame:
    """customer_id x meter x period to pull: every period starting in the month, for each of our meters."""
    periods = inputs.load_periods(con, billing_month).unique()
    return periods.join(pl.DataFrame({"meter": meters}, schema={"meter": pl.String}), how="cross")


def _customer_map(con: duckdb.DuckDBPyConnection, reader: _Reader) -> dict[str, str]:
    """our customer_id -> Stripe customer id: the push step's `stripe_customer_map`, else customer metadata."""
    if {"customer_id", "stripe_customer_id", "synced_at"} <= table_columns(con, "stripe_customer_map"):
        rows = customer_map(con).select("customer_id", "stripe_customer_id").rows()   # the latest sync's
        if rows:
            return dict(rows)
    found = {}
    for scope in [{}, *({"test_clock": clock} for clock in _test_clocks(reader))]:
        for c in reader.pages(lambda p: reader.client.v1.customers.list(p), scope):
            ours = (c.get("metadata") or {}).get("customer_id")
            if ours:
                found[ours] = c["id"]
    return found


def _test_clocks(reader: _Reader) -> list[str]:
    """The account's test clocks: Stripe leaves customers on a test clock out of GET /v1/customers
    unless `test_clock` names the clock ("The response will not include customers with test clocks if
    this parameter is not set"). None where Stripe refuses to list them (a 4xx: live mode has none);
    any other failure (a 5xx, throttling, no answer) fails the pull, which would otherwise leave every
    customer on a clock out of the reconciliation."""
    try:
        return [c["id"] for c in reader.pages(lambda p: reader.client.v1.test_helpers.test_clocks.list(p), {})]
    except ExternalServiceError as exc:
        if any(f": {kind}:" in str(exc) for kind in ("InvalidRequestError", "PermissionError", "AuthenticationError")):
            return []
        raise


def pull_meter_summaries(
    con: duckdb.DuckDBPyConnection,
    reader: _Reader,
    billing_month: dt.date,
    meters: list[str],
    by_ours: dict[str, str],
    settings: ReconcileSettings,
    now: dt.datetime,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Summary rows for every customer x meter x period starting in the month (see module docstring).

    Sum-formula meters: `value_grouping_window=day` pages, summed into the 'period' row (a sum is
    additive over days). Last-formula meters: one ungrouped summary, Stripe's own period value (the
    newest event of the period; daily values cannot be combined without knowing which day is newest).
    Returns the rows and the Stripe meters by event name.
    """
    client = reader.client
    stripe_meters = {m["event_name"]: m for m in reader.pages(lambda p: client.v1.billing.meters.list(p), {})}
    targets = _targets(con, billing_month, meters)
    last_ack = _ledger_last_ack(con, targets)

    def one(t: dict[str, Any]) -> list[dict[str, Any]]:
        meter = stripe_meters.get(EVENT_PREFIX + t["meter"])
        cus = by_ours.get(t["customer_id"])
        if meter is None or cus is None:
            return []  # nothing on Stripe's side to read: reconciliation sees no Stripe quantity
        formula = (meter.get("default_aggregation") or {}).get("formula")
        base = {
            "billing_month": billing_month, "customer_id": t["customer_id"], "stripe_customer_id": cus,
            "meter": t["meter"], "stripe_meter_id": meter["id"], "event_name": meter["event_name"],
            "formula": formula, "period_start": t["period_start"], "period_end": t["period_end"], "pulled_at": now,
        }
        acked = last_ack.get((t["customer_id"], t["meter"], t["period_start"]))
        if acked is not None and (now - acked).total_seconds() < settings.settle_seconds:
            age = int((now - acked).total_seconds())
            return [{**base, "grain": "period", "status": "pending",
                     "status_reason": f"last acknowledged push {age} s ago < settle delay {settings.settle_seconds} s"}]
        params = {"customer": cus, "start_time": midnight_unix(t["period_start"]),
                  "end_time": midnight_unix(t["period_end"])}
        fetch = lambda p, mid=meter["id"]: client.v1.billing.meters.event_summaries.list(mid, p)  # noqa: E731
        period = {**base, "grain": "period", "status": "settled", "window_start": _ts(params["start_time"]),
                  "window_end": _ts(params["end_time"])}
        out: list[dict[str, Any]] = []
        if formula in ("sum", "count"):
            total = Decimal(0)
            for s in reader.pages(fetch, {**params, "value_grouping_window": "day"}):
                day = {**base, **_summary(s), "grain": "day", "status": "settled"}
                total += day["aggregated_value"]
                out.append(day)
            out.append({**period, "aggregated_value": total})
        else:
            whole = list(reader.pages(fetch, params))
            out.append({**period, "summary_id": whole[0]["id"] if len(whole) == 1 else None,
                        "aggregated_value": sum((_summary(s)["aggregated_value"] for s in whole), Decimal(0))})
        return out

    with ThreadPoolExecutor(max_workers=max(1, settings.pull_concurrency)) as pool:
        # map keeps the targets' order
        rows = [row for chunk in pool.map(one, targets.iter_rows(named=True)) for row in chunk]
    return rows, stripe_meters


@dataclass(frozen=True)
class MonthItems:
    """The engine's invoice items of the periods starting in a month, as its ledger `stripe_invoice_items`
    knows them: the invoices Stripe put them on (`stripe_invoice_id`), their keys (`item_key`, the
    `metadata[metering_item]` Stripe copies onto their lines), and our customers with an item the ledger
    places on no invoice yet (Stripe holds it pending, or a lost response left it unsettled)."""

    invoice_ids: frozenset[str] = frozenset()
    item_keys: frozenset[str] = frozenset()
    unplaced_customers: frozenset[str] = frozenset()


def month_items(con: duckdb.DuckDBPyConnection, billing_month: dt.date) -> MonthItems:
    """`MonthItems` of the periods starting in `billing_month` (empty without the ledger)."""
    if not {"customer_id", "period_start", "item_key", "stripe_invoice_id", "status"} <= table_columns(
            con, "stripe_invoice_items"):
        return MonthItems()
    start, end = inputs.month_bounds(billing_month)
    rows = con.execute(
        """SELECT list(DISTINCT stripe_invoice_id) FILTER (WHERE stripe_invoice_id IS NOT NULL),
                  list(DISTINCT item_key) FILTER (WHERE item_key IS NOT NULL),
                  -- an item Stripe may hold on no invoice the ledger knows: not a row never sent
                  -- (pending) or refused (failed)
                  list(DISTINCT customer_id) FILTER (WHERE stripe_invoice_id IS NULL
                                                     AND status NOT IN ('pending', 'failed'))
           FROM stripe_invoice_items WHERE period_start >= ? AND period_start < ?""", [start, end]).fetchone()
    invoice_ids, item_keys, unplaced = (frozenset(v or ()) for v in rows)
    return MonthItems(invoice_ids=invoice_ids, item_keys=item_keys, unplaced_customers=unplaced)


def pull_invoices(
    reader: _Reader,
    billing_month: dt.date,
    by_ours: dict[str, str],
    stripe_meters: dict[str, dict[str, Any]],
    now: dt.datetime,
    items: MonthItems | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Misattributed]]:
    """Invoices of our customers whose period touches the month, every line of them, and those of them
    whose `metadata[customer_id]` names another customer than the one their Stripe customer maps to.

    Also the invoices that carry the engine's invoice items of the month's periods (`items`): Stripe
    puts an item it holds pending on the subscription's next invoice, whose own period is a later
    month's, and reconciliation counts the item's line with the period it bills. Such an invoice is
    the one the ledger records (`stripe_invoice_id`), or a later one with a line whose
    `metadata[metering_item]` is one of the month's item keys (its lines are read for that only when
    the invoice lists them all inline, or when the ledger places an item of that customer on no
    invoice yet). It is pulled whole; each month's pull stores its own copy, and reconciliation reads
    an invoice's latest pull only (`inputs.merged_lines_sql`), so each line counts once, in the
    period that contains it.

    Each invoice carries `subscription_ended_at`, when its subscription ended (NULL while it runs).
    """
    client = reader.client
    items = items or MonthItems()
    ours_by_stripe = {v: k for k, v in by_ours.items()}
    month_start, month_end = inputs.month_bounds(billing_month)
    lo, hi = midnight_unix(month_start), midnight_unix(month_end)
    meter_event = {m["id"]: name for name, m in stripe_meters.items()}
    price_meter: dict[str, str | None] = {}
    invoices: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    clocks: set[str] = set()   # the test clocks of the invoices pulled (their subscriptions are listed per clock)
    misattributed: list[Misattributed] = []

    def all_lines(inv: dict[str, Any]) -> list[dict[str, Any]]:
        inline = inv.get("lines") or {}
        if inline.get("data") is not None and not inline.get("has_more"):
            return inline["data"]
        return list(reader.pages(lambda p, iid=inv["id"]: client.v1.invoices.line_items.list(iid, p), {}))

    def carries_an_item(inv: dict[str, Any], customer_id: str) -> list[dict[str, Any]] | None:
        """The lines of a later invoice when one of them is an engine item of the month, else None."""
        inline = inv.get("lines") or {}
        complete = inline.get("data") is not None and not inline.get("has_more")
        if not items.item_keys or not (complete or customer_id in items.unplaced_customers):
            return None
        inv_lines = all_lines(inv)
        keys = {(line.get("metadata") or {}).get("metering_item") for line in inv_lines}
        return inv_lines if keys & items.item_keys else None

    for inv in reader.pages(lambda p: client.v1.invoices.list(p), {}):
        cus = inv.get("customer")
        if isinstance(cus, dict):
            cus = cus.get("id")
        if cus not in ours_by_stripe:
            continue
        customer_id = ours_by_stripe[cus]
        inv_lines: list[dict[str, Any]] | None = None
        if int(inv.get("period_end") or 0) < lo or int(inv.get("period_start") or 0) >= hi:
            # not the month's own invoice: pulled only when it carries the engine's items of the month,
            # which a later invoice alone can (they are billed once the period has ended)
            if inv["id"] not in items.invoice_ids:
                if int(inv.get("period_start") or 0) < hi:
                    continue
                inv_lines = carries_an_item(inv, customer_id)
                if inv_lines is None:
                    continue
        invoices.append(_invoice(inv, billing_month, customer_id, now))
        said = (inv.get("metadata") or {}).get("customer_id")
        if said and said != customer_id:
            misattributed.append(Misattributed(inv["id"], customer_id, str(said)))
            log.warning("a Stripe invoice's metadata names another customer than the one it bills: counted as "
                        "the billed customer's", extra={"invoice_id": inv["id"], "customer_id": customer_id,
                                                         "metadata_customer_id": str(said)})
        if inv.get("test_clock"):
            clocks.add(inv["test_clock"])
        for line in inv_lines if inv_lines is not None else all_lines(inv):
            price_id = _line_price(line)
            if price_id and price_id not in price_meter:
                price = reader.retrieve(client.v1.prices.retrieve, price_id)
                price_meter[price_id] = (price.get("recurring") or {}).get("meter")
            meter_id = price_meter.get(price_id) if price_id else None
            event_name = meter_event.get(meter_id) if meter_id else None
            period = line.get("period") or {}
            lines.append({
                "billing_month": billing_month, "invoice_id": inv["id"], "line_id": line["id"],
                "customer": cus, "customer_id": customer_id, "price_id": price_id,
                "stripe_meter_id": meter_id, "event_name": event_name,
                "meter": event_name[len(EVENT_PREFIX):] if event_name and event_name.startswith(EVENT_PREFIX) else None,
                "quantity_decimal": _decimal(line.get("quantity_decimal"), line.get("quantity")),
                "amount": int(line.get("amount") or 0), "currency": line.get("currency") or inv.get("currency"),
                "period_start": _ts(period.get("start")), "period_end": _ts(period.get("end")),
                "invoice_item": _line_invoice_item(line),
                "metering_item": (line.get("metadata") or {}).get("metering_item"), "pulled_at": now,
            })
    ended = _subscription_ends(reader, {i["subscription_id"] for i in invoices} - {None}, clocks)
    return [{**i, "subscription_ended_at": ended.get(i["subscription_id"])} for i in invoices], lines, misattributed


def _subscription_ends(reader: _Reader, wanted: set[str], clocks: set[str] = frozenset()) -> dict[str, dt.datetime | None]:
    """Subscription id -> when it ended (NULL while it runs), for the subscriptions in `wanted`.

    One paginated list with status=all (the default list leaves cancelled subscriptions out), as the
    invoices are one list: a call per subscription would be one per customer. Stripe's list leaves
    out subscriptions on a test clock unless asked for that clock ("The response will not include
    subscriptions with test clocks if this and the customer parameter is not set"): one more list per
    test clock in `clocks`.
    """
    if not wanted:
        return {}
    ended: dict[str, dt.datetime | None] = {}
    for scope in [{}, *({"test_clock": clock} for clock in sorted(clocks))]:
        found = reader.pages(lambda p: reader.client.v1.subscriptions.list(p), {"status": "all", **scope})
        ended.update({s["id"]: _ts(s.get("ended_at")) for s in found if s["id"] in wanted})
    return ended


def _replace(con: duckdb.DuckDBPyConnection, billing_month: dt.date, frames: dict[str, pl.DataFrame]) -> None:
    with transaction(con):
        for table, frame in frames.items():
            replace_rows(con, table, "billing_month = ?", [billing_month], frame, in_transaction=True)


def pull_summaries_into_warehouse(
    con: duckdb.DuckDBPyConnection,
    client: stripe.StripeClient,
    billing_month: dt.date,
    *,
    meters: list[str],
    settings: ReconcileSettings | None = None,
    now: dt.datetime | None = None,
) -> PullResult:
    """Pull the month's meter summaries and replace `stripe_meter_summaries` for it."""
    settings = settings or ReconcileSettings.from_env()
    now = now or dt.datetime.now(dt.UTC)
    billing_month = billing_month.replace(day=1)
    reader = _Reader(client, settings.pull_rate, settings.page_size)
    rows, _ = pull_meter_summaries(con, reader, billing_month, meters, _customer_map(con, reader), settings, now)
    # in time order, whatever order Stripe lists windows in (newest first)
    summaries = pl.DataFrame(rows, schema=SUMMARY_SCHEMA).sort(
        "customer_id", "meter", "period_start", "grain", "window_start", nulls_last=True)
    result = PullResult(billing_month, summaries,
                        pl.DataFrame(schema=INVOICE_SCHEMA), pl.DataFrame(schema=LINE_SCHEMA), reader.calls)
    _replace(con, billing_month, {"stripe_meter_summaries": result.summaries})
    return result


def pull_invoices_into_warehouse(
    con: duckdb.DuckDBPyConnection,
    client: stripe.StripeClient,
    billing_month: dt.date,
    *,
    settings: ReconcileSettings | None = None,
    now: dt.datetime | None = None,
) -> PullResult:
    """Pull the month's invoices and lines (with the later invoices carrying the engine's invoice items
    of the month's periods: `pull_invoices`) and replace `stripe_invoices_api` / `stripe_invoice_lines_api`."""
    now = now or dt.datetime.now(dt.UTC)
    settings = settings or ReconcileSettings.from_env()
    billing_month = billing_month.replace(day=1)
    reader = _Reader(client, settings.pull_rate, settings.page_size)
    by_ours = _customer_map(con, reader)
    stripe_meters = {m["event_name"]: m for m in reader.pages(lambda p: client.v1.billing.meters.list(p), {})}
    invoices, lines, misattributed = pull_invoices(reader, billing_month, by_ours, stripe_meters, now,
                                                   month_items(con, billing_month))
    result = PullResult(billing_month, pl.DataFrame(schema=SUMMARY_SCHEMA),
                        pl.DataFrame(invoices, schema=INVOICE_SCHEMA), pl.DataFrame(lines, schema=LINE_SCHEMA),
                        reader.calls, tuple(misattributed))
    _replace(con, billing_month, {"stripe_invoices_api": result.invoices, "stripe_invoice_lines_api": result.lines})
    return result


def pull_stripe_state(
    con: duckdb.DuckDBPyConnection,
    client: stripe.StripeClient,
    billing_month: dt.date,
    *,
    meters: list[str],
    settings: ReconcileSettings | None = None,
    now: dt.datetime | None = None,
) -> PullResult:
    """Both pulls for the month (summaries, then invoices and lines), each replaced in the warehouse."""
    now = now or dt.datetime.now(dt.UTC)
    summaries = pull_summaries_into_warehouse(con, client, billing_month, meters=meters, settings=settings, now=now)
    invoices = pull_invoices_into_warehouse(con, client, billing_month, settings=settings, now=now)
    result = PullResult(summaries.billing_month, summaries.summaries, invoices.invoices, invoices.lines,
                        summaries.api_calls + invoices.api_calls, invoices.misattributed)
    log.info("pulled Stripe state", extra={"billing_month": str(result.billing_month), "api_calls": result.api_calls,
                                            "summaries": result.summaries.height, "lines": result.lines.height})
    return result


def _decimal(value: Any, fallback: Any = None) -> Decimal | None:
    if value is None:
        value = fallback
    return None if value is None else Decimal(str(value))


def _summary(s: dict[str, Any]) -> dict[str, Any]:
    return {
        "summary_id": s.get("id"), "window_start": _ts(s.get("start_time")), "window_end": _ts(s.get("end_time")),
        "aggregated_value": Decimal(str(s.get("aggregated_value", 0))),
    }


def _line_price(line: dict[str, Any]) -> str | None:
    pricing = line.get("pricing") or {}
    price = (pricing.get("price_details") or {}).get("price")
    if isinstance(price, dict):
        price = price.get("id")
    if price is None and isinstance(line.get("price"), dict):  # pre-basil shape
        price = line["price"].get("id")
    return price


def _line_invoice_item(line: dict[str, Any]) -> str | None:
    """The invoice item a line bills (`parent.invoice_item_details.invoice_item`), if it is one."""
    item = ((line.get("parent") or {}).get("invoice_item_details") or {}).get("invoice_item")
    return item.get("id") if isinstance(item, dict) else item


def _invoice(inv: dict[str, Any], billing_month: dt.date, customer_id: str | None, now: dt.datetime) -> dict[str, Any]:
    parent = (inv.get("parent") or {}).get("subscription_details") or {}
    transitions = inv.get("status_transitions") or {}
    return {
        "billing_month": billing_month, "invoice_id": inv["id"], "customer": inv.get("customer"),
        "customer_id": customer_id, "subscription_id": parent.get("subscription"),
        "status": inv.get("status"), "currency": inv.get("currency"),
        **{k: None if inv.get(k) is None else int(inv[k])
           for k in ("amount_due", "amount_paid", "amount_remaining", "total", "total_excluding_tax", "subtotal",
                     "pre_payment_credit_notes_amount", "attempt_count")},
        "period_start": _ts(inv.get("period_start")), "period_end": _ts(inv.get("period_end")),
        "created": _ts(inv.get("created")), "finalized_at": _ts(transitions.get("finalized_at")),
        "auto_advance": inv.get("auto_advance"), "pulled_at": now,
    }


def summaries_frame(con: duckdb.DuckDBPyConnection, billing_month: dt.date) -> pl.DataFrame:
    """The stored summaries of a month (for reports and tests)."""
    return query_frame(con, "SELECT * FROM stripe_meter_summaries WHERE billing_month = ? ORDER BY ALL",
                       [billing_month])
