"""Conformance defects the twenty-first session's audit of the sandbox found, each held to the words of
Stripe's OpenAPI description (shared/stripe-openapi/spec3-subset.json)."""

from __future__ import annotations

import pytest
import stripe

from test_sandbox_lifecycle import DAY, HOUR, NOV, _invoices, _subscribe, _subscribe_again


def test_a_sent_invoice_is_never_retried_nor_charged_by_stripe(sb, client):
    """spec, invoice.next_payment_attempt: "null for invoices where collection_method=send_invoice". The
    sandbox scheduled Stripe's retries for it after a declined manual payment, charged it on the retry,
    and made its subscription past_due (charge_automatically's rule)."""
    clock, customer, sub = _subscribe(client, "succeeds")
    sent = _subscribe_again(client, customer, sub, {"collection_method": "send_invoice", "days_until_due": 30,
                                                    "billing_cycle_anchor": NOV, "proration_behavior": "none"})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 2 * HOUR})
    renewal = client.v1.invoices.retrieve(client.v1.subscriptions.retrieve(sent.id).latest_invoice)
    assert (renewal.collection_method, renewal.status, renewal.attempt_count) == ("send_invoice", "open", 0)
    sb.set_payment_behavior(customer.id, "fails")
    with pytest.raises(stripe.CardError):
        client.v1.invoices.pay(renewal.id)
    assert client.v1.invoices.retrieve(renewal.id).next_payment_attempt is None
    assert client.v1.subscriptions.retrieve(sent.id).status == "active"
    sb.set_payment_behavior(customer.id, "succeeds")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 10 * DAY})
    assert client.v1.invoices.retrieve(renewal.id).status == "open"     # nobody paid it: still owed


def test_days_until_due_is_refused_for_a_charged_subscription_and_nothing_is_created(sb, client):
    """spec, POST /v1/subscriptions days_until_due: "Valid only for subscriptions where collection_method
    is set to send_invoice". The sandbox took it and showed it on a charge_automatically subscription."""
    _, customer, sub = _subscribe(client, "succeeds")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        _subscribe_again(client, customer, sub, {"days_until_due": 7})
    assert refused.value.param == "days_until_due"
    assert [s.id for s in client.v1.subscriptions.list({"customer": customer.id}).data] == [sub.id]


def test_marking_an_invoice_uncollectible_through_the_api_clears_delinquent(sb, client):
    """spec, customer.delinquent: "Paying or marking uncollectible any customer invoice ... will always
    set this field to false"; the sandbox left it true after a write-off through the API."""
    clock, customer, _ = _subscribe(client, "succeeds")
    sb.set_payment_behavior(customer.id, "fails")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 2 * HOUR})
    assert client.v1.customers.retrieve(customer.id).delinquent is True
    client.v1.invoices.mark_uncollectible(_invoices(client, customer)[("subscription_cycle", NOV)].id)
    assert client.v1.customers.retrieve(customer.id).delinquent is False


def test_paying_one_of_two_failed_invoices_clears_delinquent(sb, client):
    """The same sentence: the sandbox kept it true while any other failed invoice stayed open."""
    clock, customer, sub = _subscribe(client, "succeeds")
    _subscribe_again(client, customer, sub)
    sb.set_payment_behavior(customer.id, "fails")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 2 * HOUR})
    failed = [i for i in client.v1.invoices.list({"customer": customer.id}).data
              if i.billing_reason == "subscription_cycle"]
    assert [i.attempt_count for i in failed] == [1, 1]
    sb.set_payment_behavior(customer.id, "succeeds")
    client.v1.invoices.pay(failed[0].id)
    assert client.v1.customers.retrieve(customer.id).delinquent is False


def test_an_incomplete_subscription_takes_metadata_and_nothing_else(sb, client):
    """spec, subscription.status: "A subscription in this status can only have metadata and
    default_source updated." The sandbox took any update."""
    _, _, sub = _subscribe(client, "fails")
    assert sub.status == "incomplete"
    with pytest.raises(stripe.InvalidRequestError, match="incomplete can only have metadata"):
        client.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True})
    updated = client.v1.subscriptions.update(sub.id, {"metadata": {"note": "card expired"}})
    assert (updated.metadata["note"], updated.cancel_at_period_end) == ("card expired", False)
