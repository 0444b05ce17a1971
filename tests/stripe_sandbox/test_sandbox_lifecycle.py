"""Subscription lifecycle as Stripe documents it, where payments stop: an incomplete subscription
(first payment failed) that is paid or expires after 23 h, a canceled subscription whose open
invoices are no longer collected, and an unpaid subscription whose new invoices are closed, not
attempted. Expected values come from the spec's descriptions (subscription.status, DELETE
/v1/subscriptions/{id}) and are worked out by hand below."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from conftest import ts

OCT = ts("2026-10-01T00:00:00")
NOV = ts("2026-11-01T00:00:00")
DEC = ts("2026-12-01T00:00:00")
HOUR = 3600
DAY = 86400
FEE = 5000  # the monthly licensed fee: the whole of each invoice below


def _subscribe(client, behavior: str) -> tuple[Any, Any, Any]:
    """(clock, customer, subscription): a customer on a test clock at OCT whose card `behavior`s,
    subscribed at OCT to a 50.00 monthly licensed price (anchored at OCT: the first invoice is the
    whole fee, charged at once)."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    product = client.v1.products.create({"name": "Platform"})
    price = client.v1.prices.create(
        {"product": product.id, "currency": "usd", "unit_amount": FEE, "recurring": {"interval": "month"}})
    customer = client.v1.customers.create({"test_clock": clock.id, "metadata": {"payment_behavior": behavior}})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id, "quantity": 1}]})
    return clock, customer, sub


def _subscribe_again(client, customer, sub, params: dict | None = None) -> Any:
    """Subscribe `customer` once more to the price of `sub`'s (first) item, with `params` besides."""
    return client.v1.subscriptions.create(
        {"customer": customer.id, "items": [{"price": sub["items"].data[0].price.id}], **(params or {})})


def _events(client, prefix: str, object_id: str) -> list[tuple[str, str | None, dict[str, Any] | None]]:
    """(type, object status, previous_attributes) of the events on one object, oldest first."""
    found = []
    for event in client.v1.events.list({"type": f"{prefix}.*", "limit": 100}).auto_paging_iter():
        if event.data.object.id == object_id:
            previous = getattr(event.data, "previous_attributes", None)
            found.append((event.type, event.data.object.status, previous.to_dict() if previous else None))
    return list(reversed(found))


def _invoices(client, customer) -> dict[tuple[str, int], Any]:
    """The customer's invoices by (billing_reason, period_end)."""
    invoices = client.v1.invoices.list({"customer": customer.id, "limit": 100}).data
    return {(i.billing_reason, i.period_end): i for i in invoices}


# -- incomplete -----------------------------------------------------------------------------------
def test_a_failed_first_payment_leaves_the_subscription_incomplete_without_retries(sb, client):
    """Stripe: "For collection_method=charge_automatically a subscription moves into incomplete if the initial
    payment attempt fails": the creation's own event says so, and no past_due comes between. The
    first invoice is not retried on a schedule: it is paid within 23 h, or the subscription expires."""
    _, _, sub = _subscribe(client, "fails")
    first = client.v1.invoices.retrieve(sub.latest_invoice)
    assert sub.status == "incomplete"
    assert (first.status, first.attempt_count, first.amount_remaining, first.next_payment_attempt) == (
        "open", 1, FEE, None)
    assert _events(client, "customer.subscription", sub.id) == [("customer.subscription.created", "incomplete", None)]


def test_paying_the_first_invoice_within_23_hours_makes_the_subscription_active(sb, client):
    """Stripe: "Once the first invoice is paid, the subscription moves into an active status", and then
    renews as usual: its period-end invoice on NOV is charged."""
    clock, customer, sub = _subscribe(client, "fails")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 22 * HOUR})
    sb.set_payment_behavior(customer.id, "succeeds")
    paid = client.v1.invoices.pay(sub.latest_invoice)
    assert (paid.status, paid.amount_paid) == ("paid", FEE)
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"
    assert _events(client, "customer.subscription", sub.id) == [
        ("customer.subscription.created", "incomplete", None),
        ("customer.subscription.updated", "active", {"status": "incomplete"}),
    ]
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 2 * HOUR})
    renewal = _invoices(client, customer)[("subscription_cycle", NOV)]
    assert (renewal.status, renewal.amount_paid) == ("paid", FEE)


def test_an_unpaid_first_invoice_expires_the_subscription_after_23_hours(sb, client):
    """Stripe: "If the first invoice is not paid within 23 hours, the subscription transitions to
    incomplete_expired. This is a terminal status, the open invoice will be voided and no further
    invoices will be generated." A minute before: still incomplete; at 23 h: expired and void; past
    the period end (NOV): still the one invoice, which can no longer be paid."""
    clock, customer, sub = _subscribe(client, "fails")
    expiry = OCT + 23 * HOUR
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": expiry - 60})
    assert client.v1.subscriptions.retrieve(sub.id).status == "incomplete"
    assert client.v1.invoices.retrieve(sub.latest_invoice).status == "open"

    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": expiry})
    expired = client.v1.subscriptions.retrieve(sub.id)
    assert (expired.status, expired.ended_at) == ("incomplete_expired", expiry)
    void = client.v1.invoices.retrieve(sub.latest_invoice)
    assert (void.status, void.status_transitions.voided_at, void.auto_advance, void.next_payment_attempt) == (
        "void", expiry, False, None)
    assert _events(client, "customer.subscription", sub.id)[1:] == [
        ("customer.subscription.updated", "incomplete_expired", {"status": "incomplete", "ended_at": None})]
    assert _events(client, "invoice", void.id) == [
        ("invoice.created", "draft", None), ("invoice.finalized", "open", None),
        ("invoice.payment_failed", "open", None), ("invoice.voided", "void", None)]

    sb.set_payment_behavior(customer.id, "succeeds")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 2 * HOUR})
    assert list(_invoices(client, customer)) == [("subscription_create", OCT)]
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoices.pay(void.id)
    assert client.v1.subscriptions.retrieve(sub.id).status == "incomplete_expired"


# -- canceled -------------------------------------------------------------------------------------
def test_canceling_stops_automatic_collection_of_the_customers_finalized_invoices(sb, client):
    """DELETE /v1/subscriptions/{id}: "By default, upon subscription cancellation, Stripe stops
    automatic collection of all finalized invoices for the customer." The NOV renewal was declined
    at NOV + 1 h (grace) with a retry due 3 days later; canceled on NOV + 2 h, it is never retried,
    although the card now works; the customer can still pay it."""
    clock, customer, sub = _subscribe(client, "succeeds")
    sb.set_payment_behavior(customer.id, "fails")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 2 * HOUR})
    renewal = _invoices(client, customer)[("subscription_cycle", NOV)]
    assert (renewal.status, renewal.attempt_count, renewal.next_payment_attempt) == ("open", 1, NOV + HOUR + 3 * DAY)

    client.v1.subscriptions.cancel(sub.id)
    stopped = client.v1.invoices.retrieve(renewal.id)
    assert (stopped.status, stopped.auto_advance, stopped.next_payment_attempt) == ("open", False, None)
    assert _events(client, "invoice", renewal.id)[-1] == (
        "invoice.updated", "open", {"auto_advance": True, "next_payment_attempt": NOV + HOUR + 3 * DAY})

    sb.set_payment_behavior(customer.id, "succeeds")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 20 * DAY})
    untouched = client.v1.invoices.retrieve(renewal.id)
    assert (untouched.status, untouched.attempt_count, untouched.amount_paid) == ("open", 1, 0)
    assert client.v1.invoices.pay(renewal.id).status == "paid"


# -- unpaid ---------------------------------------------------------------------------------------
def test_an_unpaid_subscriptions_new_invoices_stay_drafts_and_paying_the_latest_reactivates_it(sb, client):
    """Retries exhausted -> unpaid; then "no subsequent invoices will be attempted", and (Stripe's
    subscriptions overview) "the latest invoice remains open but payments aren't attempted. Invoices
    continue to be generated each billing cycle and remain in draft state"; to reactivate, finalize
    and pay the drafts, "make sure to pay the most recent invoice ... to update the subscription's
    status to active". The DEC invoice stays a draft (auto_advance false) although the card now works."""
    sb.configure(payment_retry_days=[], after_final_failure="unpaid")
    clock, customer, sub = _subscribe(client, "succeeds")
    sb.set_payment_behavior(customer.id, "fails")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 2 * HOUR})
    assert client.v1.subscriptions.retrieve(sub.id).status == "unpaid"

    sb.set_payment_behavior(customer.id, "succeeds")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": DEC + 2 * HOUR})
    invoices = _invoices(client, customer)
    draft = invoices[("subscription_cycle", DEC)]
    assert (draft.status, draft.status_transitions.finalized_at, draft.auto_advance, draft.attempted,
            draft.attempt_count, draft.next_payment_attempt, draft.amount_paid) == (
        "draft", None, False, False, 0, None, 0)
    assert _events(client, "invoice", draft.id) == [("invoice.created", "draft", None)]
    november = invoices[("subscription_cycle", NOV)]
    assert client.v1.invoices.retrieve(november.id).status == "open"   # the one that failed, not retried
    assert client.v1.invoices.pay(november.id).status == "paid"
    assert client.v1.subscriptions.retrieve(sub.id).status == "unpaid"   # not the most recent invoice

    client.v1.invoices.finalize_invoice(draft.id)
    assert client.v1.invoices.pay(draft.id).status == "paid"
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"
