"""One-off invoices (``POST /v1/invoices``): drafts an operator creates for a customer, outside any
subscription. Only these can be deleted; a subscription's draft must be voided once finalized (spec,
DELETE /v1/invoices/{invoice}). Every response matches the spec (``sb``)."""

from __future__ import annotations

import pytest
import stripe

from conftest import metered_price, ts
from metering.stripe_sandbox.testing import running_sandbox

OCT = ts("2026-10-01T00:00:00")
NOV = ts("2026-11-01T00:00:00")


def _customer(client, clock=None, **fields):
    clock = clock or client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    return clock, client.v1.customers.create({"name": "Acme", "test_clock": clock.id, **fields})


def _invoice_item_lines(invoice):
    return [line.parent.invoice_item_details.invoice_item for line in invoice.lines.data]


def test_a_one_off_draft_has_stripes_defaults(sb, client):
    """Spec, POST /v1/invoices: auto_advance "Defaults to false", collection_method "Defaults to
    charge_automatically", currency "Defaults to that of customer"; billing_reason `manual` is
    "Unrelated to a subscription"."""
    clock, customer = _customer(client)
    client.v1.invoice_items.create({"customer": customer.id, "amount": 900, "currency": "eur"})   # sets the customer's currency
    invoice = client.v1.invoices.create({"customer": customer.id})
    assert (invoice.status, invoice.billing_reason, invoice.parent, invoice.auto_advance) == ("draft", "manual", None, False)
    assert (invoice.collection_method, invoice.currency, invoice.customer, invoice.test_clock) == (
        "charge_automatically", "eur", customer.id, clock.id)
    assert (invoice.created, invoice.period_start, invoice.period_end) == (OCT, OCT, OCT)
    assert (invoice.automatically_finalizes_at, invoice.due_date, invoice.number) == (None, None, None)
    assert (invoice.total, invoice.amount_due, invoice.lines.data) == (0, 0, [])
    [created] = client.v1.events.list({"type": "invoice.created"}).data
    assert created.data.object.id == invoice.id


def test_pending_items_are_left_out_unless_asked_for_and_a_subscriptions_items_always(sb, client):
    """Spec: pending_invoice_items_behavior "Defaults to `exclude`"; with `include` the invoice takes the
    customer's pending items, but not those that belong to a subscription (they wait for its invoice)."""
    clock, customer = _customer(client)
    _, price = metered_price(client)
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor": NOV})
    fee = client.v1.invoice_items.create({"customer": customer.id, "amount": 500, "currency": "usd", "description": "Setup"})
    credit = client.v1.invoice_items.create({"customer": customer.id, "amount": -120})
    for_sub = client.v1.invoice_items.create({"customer": customer.id, "amount": 7000, "subscription": sub.id})
    bare = client.v1.invoices.create({"customer": customer.id})
    assert bare.total == 0
    assert {i.id for i in client.v1.invoice_items.list({"pending": True}).data} == {fee.id, credit.id, for_sub.id}

    both = client.v1.invoices.create({"customer": customer.id, "pending_invoice_items_behavior": "include"})
    assert (both.total, both.amount_due) == (500 - 120, 380)
    assert _invoice_item_lines(both) == [fee.id, credit.id]
    assert [i.id for i in client.v1.invoice_items.list({"pending": True}).data] == [for_sub.id]
    assert client.v1.invoice_items.retrieve(fee.id).invoice == both.id


def test_an_item_added_to_a_one_off_draft_and_paying_it(sb, client):
    _, customer = _customer(client)
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd", "description": "Consulting",
                                         "metadata": {"ticket": "T-7"}})
    item = client.v1.invoice_items.create({"customer": customer.id, "amount": 12345, "invoice": invoice.id})
    draft = client.v1.invoices.retrieve(invoice.id)
    assert (draft.total, _invoice_item_lines(draft), draft.description, draft.metadata.to_dict()) == (
        12345, [item.id], "Consulting", {"ticket": "T-7"})
    paid = client.v1.invoices.pay(invoice.id)
    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", 12345, 0)
    assert paid.number and paid.status_transitions.finalized_at == OCT


def test_deleting_a_one_off_draft_frees_its_items_and_a_subscriptions_draft_cannot_be_deleted(sb, client):
    """Spec, DELETE /v1/invoices/{invoice}: "Permanently deletes a one-off invoice draft ... if an invoice
    is for a subscription, it must be voided"."""
    clock, customer = _customer(client)
    _, price = metered_price(client)
    client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor": NOV})
    item = client.v1.invoice_items.create({"customer": customer.id, "amount": 400})
    one_off = client.v1.invoices.create({"customer": customer.id, "pending_invoice_items_behavior": "include"})
    assert one_off.total == 400
    answer = client.v1.invoices.delete(one_off.id)
    assert (answer.id, answer.deleted) == (one_off.id, True)
    assert client.v1.invoice_items.retrieve(item.id).invoice is None
    with pytest.raises(stripe.InvalidRequestError) as gone:
        client.v1.invoices.retrieve(one_off.id)
    assert gone.value.http_status == 404
    [deleted] = client.v1.events.list({"type": "invoice.deleted"}).data
    assert deleted.data.object.id == one_off.id

    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    [cycle] = client.v1.invoices.list({"customer": customer.id, "status": "draft"}).data
    assert (cycle.billing_reason, cycle.total) == ("subscription_cycle", 400)   # the freed item joined it
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.delete(cycle.id)
    assert refused.value.http_status == 400
    assert "can't delete invoices created by subscriptions" in refused.value.user_message
    kept = client.v1.invoices.retrieve(cycle.id)
    assert (kept.status, kept.total) == ("draft", 400)
    assert client.v1.invoice_items.retrieve(item.id).invoice == cycle.id
    assert len(client.v1.events.list({"type": "invoice.deleted"}).data) == 1


def test_auto_advance_finalizes_the_draft_an_hour_after_creation_and_charges_it(sb, client):
    """Docs (automatic invoice advancement): with auto_advance, Stripe finalizes "draft invoices after
    one hour" and attempts payment; the sandbox's grace period is that hour (3600 s)."""
    clock, customer = _customer(client)
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd", "auto_advance": True})
    assert invoice.automatically_finalizes_at == OCT + 3600
    client.v1.invoice_items.create({"customer": customer.id, "amount": 2500, "invoice": invoice.id})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 3599})
    assert client.v1.invoices.retrieve(invoice.id).status == "draft"
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 3600})
    done = client.v1.invoices.retrieve(invoice.id)
    assert (done.status, done.amount_paid, done.status_transitions.finalized_at, done.automatically_finalizes_at) == (
        "paid", 2500, OCT + 3600, None)


def test_a_failed_charge_on_a_one_off_invoice_is_retried_and_touches_no_subscription(sb, client):
    clock, customer = _customer(client, metadata={"sandbox_payment_behavior": "fails_then_succeeds"})
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd", "auto_advance": True})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 700, "invoice": invoice.id})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 3600})
    failed = client.v1.invoices.retrieve(invoice.id)
    assert (failed.status, failed.attempt_count, failed.amount_remaining) == ("open", 1, 700)
    assert failed.next_payment_attempt is not None and failed.next_payment_attempt > OCT + 3600
    assert client.v1.customers.retrieve(customer.id).delinquent is True
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": failed.next_payment_attempt})
    paid = client.v1.invoices.retrieve(invoice.id)
    assert (paid.status, paid.attempt_count, paid.amount_paid) == ("paid", 2, 700)


def test_a_sent_one_off_invoice_is_due_days_after_its_creation_or_on_its_date(sb, client):
    """Spec: days_until_due is "The number of days from when the invoice is created until it is due"
    (Stripe's own example: created 1680641304, due 1681246104, 7 days); without either, 30 days after
    finalization, as for a subscription that sets none."""
    clock, customer = _customer(client)
    week = client.v1.invoices.create({"customer": customer.id, "currency": "usd", "collection_method": "send_invoice",
                                      "days_until_due": 7})
    assert week.due_date == OCT + 7 * 86400
    dated = client.v1.invoices.create({"customer": customer.id, "currency": "usd", "collection_method": "send_invoice",
                                       "due_date": NOV})
    plain = client.v1.invoices.create({"customer": customer.id, "currency": "usd", "collection_method": "send_invoice"})
    assert (dated.due_date, plain.due_date) == (NOV, None)
    for invoice in (week, dated, plain):   # something to pay: a $0 invoice is paid when finalized
        client.v1.invoice_items.create({"customer": customer.id, "amount": 1000, "invoice": invoice.id})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 600})
    finalized = [client.v1.invoices.finalize_invoice(i.id, {"auto_advance": False}) for i in (week, dated, plain)]
    assert [i.due_date for i in finalized] == [OCT + 7 * 86400, NOV, OCT + 600 + 30 * 86400]
    assert [i.status for i in finalized] == ["open"] * 3


@pytest.mark.parametrize(
    "params, param, words",
    [
        ({"days_until_due": 7}, "days_until_due", "only for invoices where collection_method=send_invoice"),
        ({"due_date": NOV}, "due_date", "only for invoices where collection_method=send_invoice"),
        ({"collection_method": "send_invoice", "days_until_due": 7, "due_date": NOV}, "due_date", "not both"),
        ({"collection_method": "send_invoice", "due_date": OCT}, "due_date", "in the future"),
        ({"collection_method": "send_invoice", "days_until_due": -1}, "days_until_due", "0 or more"),
        ({"pending_invoice_items_behavior": "all"}, "pending_invoice_items_behavior", "exclude or include"),
        ({"subscription": "sub_123"}, "subscription", "does not model"),
        ({"automatically_finalizes_at": NOV}, "automatically_finalizes_at", "does not model"),
    ],
)
def test_refused_creations_name_the_parameter_and_create_nothing(sb, client, params, param, words):
    _, customer = _customer(client)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.create({"customer": customer.id, "currency": "usd", **params})
    assert (refused.value.http_status, refused.value.param) == (400, param)
    assert words in refused.value.user_message
    assert client.v1.invoices.list({"customer": customer.id}).data == []


def test_a_customer_with_no_currency_needs_one_and_an_unknown_customer_is_a_404(sb, client):
    _, customer = _customer(client)
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.invoices.create({"customer": customer.id})
    assert (missing.value.http_status, missing.value.param) == (400, "currency")
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        client.v1.invoices.create({"customer": "cus_missing", "currency": "usd"})
    assert (unknown.value.http_status, unknown.value.param) == (404, "customer")
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "JPY"})
    assert (invoice.currency, client.v1.customers.retrieve(customer.id).currency) == ("jpy", "jpy")


def test_a_one_off_draft_survives_a_restart_and_can_then_be_deleted(tmp_path):
    state_file = tmp_path / "state.json"
    with running_sandbox(state_file=state_file, now=OCT) as first:
        client = first.client()
        customer = client.v1.customers.create({"name": "Acme"})
        item = client.v1.invoice_items.create({"customer": customer.id, "amount": 250, "currency": "usd"})
        invoice = client.v1.invoices.create({"customer": customer.id, "pending_invoice_items_behavior": "include"})
    with running_sandbox(state_file=state_file, now=OCT) as second:
        client = second.client()
        again = client.v1.invoices.retrieve(invoice.id)
        assert (again.parent, again.billing_reason, again.total) == (None, "manual", 250)
        assert client.v1.invoices.delete(invoice.id).deleted is True
        assert client.v1.invoice_items.retrieve(item.id).invoice is None


def test_turning_auto_advance_on_schedules_the_finalization_an_hour_later(sb, client):
    clock, customer = _customer(client)
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 300, "invoice": invoice.id})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 7200})
    assert client.v1.invoices.retrieve(invoice.id).status == "draft"   # auto_advance false: nothing happens
    updated = client.v1.invoices.update(invoice.id, {"auto_advance": True})
    assert (updated.auto_advance, updated.automatically_finalizes_at) == (True, OCT + 7200 + 3600)
    [change] = [e for e in client.v1.events.list({"type": "invoice.updated"}).data if e.data.object.id == invoice.id
                and "auto_advance" in e.data.previous_attributes]
    assert change.data.previous_attributes.to_dict() == {"auto_advance": False, "automatically_finalizes_at": None}
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 7200 + 3600})
    assert (client.v1.invoices.retrieve(invoice.id).status, client.v1.invoices.retrieve(invoice.id).amount_paid) == ("paid", 300)
