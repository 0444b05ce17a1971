"""Pull Stripe's side of a billing month through the official SDK: meter event summaries, invoices, lines.

- Meter event summaries (`GET /v1/billing/meters/{id}/event_summaries`) per customer x meter x
  billing period: `value_grouping_window=day` pages (kept for analysts, grain 'day') and one
  ungrouped summary over the whole period (grain 'period': Stripe's own aggregate with the meter's
  formula, what its invoice bills). Periods are whole UTC days, so the bounds are UTC midnights as
  Stripe requires for daily grouping.
- Settle guard: Stripe's summaries are eventually consistent, so a customer x meter whose last
  acknowledged push (stripe_push_ledger.last_attempt_at) is younger than `settle_seconds` is not
  pulled: it gets a `pending` row saying why, and reconciliation reports it as `pending`.
- Invoices (`GET /v1/invoices?customer=`) whose period touches the month, and all their lines
  (`GET /v1/invoices/{id}/lines`), paginated. A line's meter comes from its price's
  `recurring.meter` (one `GET /v1/prices/{id}` per distinct price) and that meter's `event_name`
  (`metering_<our meter>`).
- Our customer id is the Stripe customer's `metadata[customer_id]` (set by the push step).
- Numbers are read from the raw response body with `parse_float=Decimal`: `aggregated_value` is a
  JSON number, and going through float would not be exact.

All API reads happen first; the three tables are then replaced for the month in one transaction.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import duckdb
import polars as pl
import stripe

from metering.errors import ExternalServiceError
from metering.reconcile import inputs
from metering.reconcile.settings import ReconcileSettings
from metering.warehouse import query_frame, replace_rows, transaction

log = logging.getLogger(__name__)

EVENT_PREFIX = "metering_"
PAGE = 100

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
    "amount_paid": pl.Int64, "amount_remaining": pl.Int64, "total": pl.Int64, "subtotal": pl.Int64,
    "attempt_count": pl.Int64, "period_start": pl.Datetime("us", "UTC"), "period_end": pl.Datetime("us", "UTC"),
    "created": pl.Datetime("us", "UTC"), "finalized_at": pl.Datetime("us", "UTC"),
    "pulled_at": pl.Datetime("us", "UTC"),
}
LINE_SCHEMA = {
    "billing_month": pl.Date, "invoice_id": pl.String, "line_id": pl.String, "customer": pl.String,
    "customer_id": pl.String, "price_id": pl.String, "stripe_meter_id": pl.String, "event_name": pl.String,
    "meter": pl.String, "quantity_decimal": pl.Decimal(38, 12), "amount": pl.Int64, "currency": pl.String,
    "period_start": pl.Datetime("us", "UTC"), "period_end": pl.Datetime("us", "UTC"),
    "pulled_at": pl.Datetime("us", "UTC"),
}


@dataclass(frozen=True)
class PullResult:
    billing_month: dt.date
    summaries: pl.DataFrame
    invoices: pl.DataFrame
    lines: pl.DataFrame
    api_calls: int

    @property
    def pending(self) -> int:
        return self.summaries.filter(pl.col("status") == "pending").height


class _Reader:
    """Thin wrapper over a `stripe.StripeClient` that counts calls and parses bodies exactly."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self.client = client
        self.calls = 0

    def _body(self, obj: Any) -> dict[str, Any]:
        self.calls += 1
        response = getattr(obj, "last_response", None)
        if response is None or not getattr(response, "body", None):
            return json.loads(json.dumps(obj.to_dict_recursive()), parse_float=Decimal)
        return json.loads(response.body, parse_float=Decimal)

    def pages(self, fetch, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every object of a paginated list (starting_after cursor)."""
        params = {**params, "limit": PAGE}
        while True:
            try:
                body = self._body(fetch(params))
            except stripe.StripeError as exc:
                raise ExternalServiceError(f"Stripe list request failed: {type(exc).__name__}: {exc.user_message or exc}") from None
            data = body.get("data") or []
            yield from data
            if not body.get("has_more") or not data:
                return
            params = {**params, "starting_after": data[-1]["id"]}

    def retrieve(self, fetch, ident: str) -> dict[str, Any]:
        try:
            return self._body(fetch(ident))
        except stripe.StripeError as exc:
            raise ExternalServiceError(f"Stripe retrieve {ident} failed: {type(exc).__name__}") from None


def _ts(value: Any) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromtimestamp(int(value), dt.UTC)


def _unix(day: dt.date) -> int:
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())


def _ledger_last_ack(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], dt.datetime]:
    cols = inputs.table_columns(con, "stripe_push_ledger")
    if not {"customer_id", "meter", "status", "last_attempt_at"} <= cols:
        return {}
    rows = con.execute(
        "SELECT customer_id, meter, max(last_attempt_at) FROM stripe_push_ledger "
        "WHERE status = 'acknowledged' GROUP BY customer_id, meter"
    ).fetchall()
    return {(c, m): t for c, m, t in rows if t is not None}


def _targets(con: duckdb.DuckDBPyConnection, billing_month: dt.date, meters: list[str]) -> pl.DataFrame:
    """customer_id x meter x period to pull: every period starting in the month, for each of our meters."""
    periods = inputs.load_periods(con, billing_month).unique()
    return periods.join(pl.DataFrame({"meter": meters}, schema={"meter": pl.String}), how="cross")


def pull_stripe_state(
    con: duckdb.DuckDBPyConnection,
    client: stripe.StripeClient,
    billing_month: dt.date,
    *,
    meters: list[str],
    settings: ReconcileSettings | None = None,
    now: dt.datetime | None = None,
) -> PullResult:
    """Pull summaries, invoices and lines for the month and replace them in the warehouse."""
    settings = settings or ReconcileSettings.from_env()
    now = now or dt.datetime.now(dt.UTC)
    billing_month = billing_month.replace(day=1)
    month_start, month_end = inputs.month_bounds(billing_month)
    reader = _Reader(client)

    stripe_meters = {
        m["event_name"]: m
        for m in reader.pages(lambda p: client.v1.billing.meters.list(p), {})
    }
    customers = {
        c["id"]: (c.get("metadata") or {}).get("customer_id")
        for c in reader.pages(lambda p: client.v1.customers.list(p), {})
    }
    by_ours = {ours: cus for cus, ours in customers.items() if ours}
    last_ack = _ledger_last_ack(con)

    summaries: list[dict[str, Any]] = []
    for t in _targets(con, billing_month, meters).iter_rows(named=True):
        meter = stripe_meters.get(EVENT_PREFIX + t["meter"])
        cus = by_ours.get(t["customer_id"])
        base = {
            "billing_month": billing_month, "customer_id": t["customer_id"], "stripe_customer_id": cus,
            "meter": t["meter"], "stripe_meter_id": meter and meter["id"],
            "event_name": EVENT_PREFIX + t["meter"],
            "formula": meter and (meter.get("default_aggregation") or {}).get("formula"),
            "period_start": t["period_start"], "period_end": t["period_end"], "pulled_at": now,
        }
        if meter is None or cus is None:
            continue  # nothing on Stripe's side to read: reconciliation sees no Stripe quantity
        acked = last_ack.get((t["customer_id"], t["meter"]))
        if acked is not None and (now - acked).total_seconds() < settings.settle_seconds:
            age = int((now - acked).total_seconds())
            summaries.append({**base, "grain": "period", "status": "pending",
                              "status_reason": f"last acknowledged push {age} s ago < settle delay {settings.settle_seconds} s"})
            continue
        params = {"customer": cus, "start_time": _unix(t["period_start"]), "end_time": _unix(t["period_end"])}
        fetch = lambda p, mid=meter["id"]: client.v1.billing.meters.event_summaries.list(mid, p)  # noqa: E731
        for s in reader.pages(fetch, {**params, "value_grouping_window": "day"}):
            summaries.append({**base, **_summary(s), "grain": "day", "status": "settled"})
        whole = list(reader.pages(fetch, params))
        value = sum((Decimal(str(s["aggregated_value"])) for s in whole), Decimal(0))
        summaries.append({
            **base, "grain": "period", "status": "settled",
            "summary_id": whole[0]["id"] if len(whole) == 1 else None,
            "window_start": _ts(params["start_time"]), "window_end": _ts(params["end_time"]),
            "aggregated_value": value,
        })

    invoices: list[dict[str, Any]] = []
    lines: list[dict[str, Any]] = []
    price_meter: dict[str, str | None] = {}
    meter_event = {m["id"]: name for name, m in stripe_meters.items()}
    month_start_ts, next_start_ts = _unix(month_start), _unix(month_end)
    for cus, ours in sorted(customers.items()):
        for inv in reader.pages(lambda p: client.v1.invoices.list(p), {"customer": cus}):
            if int(inv.get("period_end") or 0) < month_start_ts or int(inv.get("period_start") or 0) >= next_start_ts:
                continue
            customer_id = (inv.get("metadata") or {}).get("customer_id") or ours
            invoices.append(_invoice(inv, billing_month, customer_id, now))
            fetch = lambda p, iid=inv["id"]: client.v1.invoices.line_items.list(iid, p)  # noqa: E731
            for line in reader.pages(fetch, {}):
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
                    "pulled_at": now,
                })

    result = PullResult(
        billing_month,
        pl.DataFrame(summaries, schema=SUMMARY_SCHEMA),
        pl.DataFrame(invoices, schema=INVOICE_SCHEMA),
        pl.DataFrame(lines, schema=LINE_SCHEMA),
        reader.calls,
    )
    with transaction(con):
        for table, frame in (("stripe_meter_summaries", result.summaries),
                             ("stripe_invoices_api", result.invoices),
                             ("stripe_invoice_lines_api", result.lines)):
            replace_rows(con, table, "billing_month = ?", [billing_month], frame, in_transaction=True)
    log.info("pulled Stripe state", extra={"billing_month": str(billing_month), "api_calls": reader.calls,
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


def _invoice(inv: dict[str, Any], billing_month: dt.date, customer_id: str | None, now: dt.datetime) -> dict[str, Any]:
    parent = (inv.get("parent") or {}).get("subscription_details") or {}
    transitions = inv.get("status_transitions") or {}
    return {
        "billing_month": billing_month, "invoice_id": inv["id"], "customer": inv.get("customer"),
        "customer_id": customer_id, "subscription_id": parent.get("subscription"),
        "status": inv.get("status"), "currency": inv.get("currency"),
        **{k: None if inv.get(k) is None else int(inv[k])
           for k in ("amount_due", "amount_paid", "amount_remaining", "total", "subtotal", "attempt_count")},
        "period_start": _ts(inv.get("period_start")), "period_end": _ts(inv.get("period_end")),
        "created": _ts(inv.get("created")), "finalized_at": _ts(transitions.get("finalized_at")),
        "pulled_at": now,
    }


def summaries_frame(con: duckdb.DuckDBPyConnection, billing_month: dt.date) -> pl.DataFrame:
    """The stored summaries of a month (for reports and tests)."""
    return query_frame(con, "SELECT * FROM stripe_meter_summaries WHERE billing_month = ? ORDER BY ALL",
                       [billing_month])
