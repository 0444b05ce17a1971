"""Stripe-shaped event payloads (post-basil) for tests, and signing with the stripe SDK's helper."""

from __future__ import annotations

import json
from typing import Any

import stripe

SECRET = "whsec_test_current_0123456789"
OLD_SECRET = "whsec_test_previous_9876543210"
API_VERSION = "2025-03-31.basil"


def invoice(
    invoice_id: str,
    *,
    status: str = "open",
    amount_due: int = 1000,
    amount_paid: int = 0,
    attempt_count: int = 0,
    currency: str = "usd",
    customer: str = "cus_A",
    customer_id: str | None = "acme",
    subscription: str | None = "sub_A",
    lines: list[dict[str, Any]] | None = None,
    next_payment_attempt: int | None = None,
    created: int = 1_790_000_000,
    auto_advance: bool = True,
) -> dict[str, Any]:
    parent = None
    if subscription:
        parent = {
            "type": "subscription_details",
            "quote_details": None,
            "subscription_details": {"subscription": subscription, "metadata": {"customer_id": customer_id}},
        }
    return {
        "id": invoice_id,
        "object": "invoice",
        "status": status,
        "customer": customer,
        "currency": currency,
        "amount_due": amount_due,
        "amount_paid": amount_paid,
        "amount_remaining": amount_due - amount_paid,
        "total": amount_due,
        "subtotal": amount_due,
        "attempt_count": attempt_count,
        "next_payment_attempt": next_payment_attempt,
        "auto_advance": auto_advance,
        "created": created,
        "period_start": 1_790_000_000,
        "period_end": 1_792_592_000,
        "billing_reason": "subscription_cycle",
        "collection_method": "charge_automatically",
        "livemode": False,
        "metadata": {"customer_id": customer_id} if customer_id else {},
        "parent": parent,
        "status_transitions": {"finalized_at": None, "paid_at": None, "marked_uncollectible_at": None, "voided_at": None},
        "lines": {"object": "list", "has_more": False, "data": lines or []},
    }


def line(line_id: str, *, price: str, quantity_decimal: str, amount: int, start: int, end: int) -> dict[str, Any]:
    return {
        "id": line_id,
        "object": "line_item",
        "amount": amount,
        "currency": "usd",
        "quantity": int(quantity_decimal.split(".")[0]),  # truncated, as Stripe does
        "quantity_decimal": quantity_decimal,
        "period": {"start": start, "end": end},
        "pricing": {"type": "price_details", "price_details": {"price": price, "product": "prod_X"}, "unit_amount_decimal": None},
        "parent": {"type": "subscription_item_details", "subscription_item_details": {"subscription_item": "si_" + price}},
    }


def subscription(sub_id: str, *, status: str = "active", customer: str = "cus_A", customer_id: str = "acme") -> dict[str, Any]:
    return {
        "id": sub_id,
        "object": "subscription",
        "status": status,
        "customer": customer,
        "currency": "usd",
        "collection_method": "charge_automatically",
        "cancel_at_period_end": False,
        "cancel_at": None,
        "canceled_at": None,
        "ended_at": None,
        "billing_cycle_anchor": 1_790_000_000,
        "created": 1_790_000_000,
        "latest_invoice": None,
        "test_clock": None,
        "livemode": False,
        "metadata": {"customer_id": customer_id},
        "items": {"object": "list", "data": [
            {"id": "si_1", "object": "subscription_item", "price": {"id": "price_api", "object": "price"},
             "current_period_start": 1_790_000_000, "current_period_end": 1_792_592_000},
        ]},
    }


def event(event_id: str, event_type: str, created: int, obj: dict[str, Any], *, pending_webhooks: int = 1) -> dict[str, Any]:
    return {
        "id": event_id,
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "livemode": False,
        "pending_webhooks": pending_webhooks,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": {"object": obj},
    }


def body_of(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def signature(body: str, secret: str = SECRET, timestamp: int | None = None) -> str:
    """The header Stripe would send, computed by the stripe SDK's own test helper."""
    return stripe.WebhookSignature.generate_signature_header(body, secret, timestamp=timestamp)


def dunning_lifecycle(invoice_id: str = "in_A", start: int = 1_790_000_000) -> list[dict[str, Any]]:
    """A failed-then-recovered invoice and its subscription, as Stripe would emit the events.

    Ties on `created` are deliberate (Stripe stamps several events in the same second).
    """
    ln = [line("il_1", price="price_api", quantity_decimal="1234.5", amount=1235, start=start, end=start + 2_592_000)]
    draft = invoice(invoice_id, status="draft", amount_due=1235, lines=ln)
    opened = {**invoice(invoice_id, status="open", amount_due=1235, lines=ln)}
    opened["status_transitions"] = {**opened["status_transitions"], "finalized_at": start + 3600}
    failed1 = {**opened, "attempt_count": 1, "next_payment_attempt": start + 3600 + 86_400}
    failed2 = {**opened, "attempt_count": 2, "next_payment_attempt": start + 3600 + 3 * 86_400}
    paid = {**opened, "status": "paid", "attempt_count": 3, "amount_paid": 1235, "amount_remaining": 0,
            "next_payment_attempt": None,
            "status_transitions": {**opened["status_transitions"], "paid_at": start + 3600 + 3 * 86_400}}
    sub = subscription("sub_A")
    return [
        event("evt_001", "customer.subscription.created", start - 100, sub),
        event("evt_002", "invoice.created", start, draft),
        event("evt_003", "invoice.finalized", start + 3600, opened),
        event("evt_004", "invoice.payment_failed", start + 3600, failed1),  # same second as finalized
        event("evt_005", "customer.subscription.updated", start + 3600, subscription("sub_A", status="past_due")),
        event("evt_006", "invoice.payment_failed", start + 3600 + 86_400, failed2),
        event("evt_007", "invoice.payment_succeeded", start + 3600 + 3 * 86_400, paid),
        event("evt_008", "invoice.paid", start + 3600 + 3 * 86_400, paid),  # same second
        event("evt_009", "customer.subscription.updated", start + 3600 + 3 * 86_400, subscription("sub_A", status="active")),
    ]
