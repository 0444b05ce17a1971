"""The customer's balance and Stripe's minimum charge, as the spec's invoice object describes them:
"Stripe applies any customer credit on the account before determining the amount due for the invoice
... If the amount due for the invoice is less than Stripe's minimum allowed charge per currency, the
invoice is automatically marked paid, and we add the amount due to the customer's credit balance which
is applied to the next invoice." Every amount below is worked by hand from a price of 25 cents a unit
(¥10 for the yen price) and Stripe's minimum charges (50 cents, ¥50). Every response matches the spec
(``sb``)."""

from __future__ import annotations

import pytest
import stripe

from conftest import cycle_invoice, metered_price, ts, usage
from metering.stripe_sandbox.testing import running_sandbox

OCT = ts("2026-10-01T00:00:00")
NOV = ts("2026-11-01T00:00:00")
DEC = ts("2026-12-01T00:00:00")


def _subscribed(client, clock, price, **customer):
    """A customer on `clock` with a monthly subscription to `price`, anchored on Nov 1."""
    c = client.v1.customers.create({"name": "Acme", "test_clock": clock.id, **customer})
    client.v1.subscriptions.create({"customer": c.id, "items": [{"price": price.id}], "billing_cycle_anchor": NOV})
    return c


def _cycles(client, customer):
    """The customer's period-end invoices, oldest first."""
    return sorted((i for i in client.v1.invoices.list({"customer": customer.id}).data
                   if i.billing_reason == "subscription_cycle"), key=lambda i: i.period_start)


def test_a_credit_balance_lowers_the_amount_due_and_a_larger_one_stays_on_the_balance(sb, client):
    """Both use 40 units in October: 40 x 25 = 1000. Acme has 500 of credit: 500 due, charged, balance 0.
    Globex has 1500 of credit: nothing due, paid with no charge attempted, 500 left on its balance."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    meter, price = metered_price(client)
    acme = _subscribed(client, clock, price, balance=-500)
    globex = _subscribed(client, clock, price, balance=-1500)
    for customer in (acme, globex):
        usage(client, meter, customer, 40, OCT + 60)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    draft = cycle_invoice(client, acme)
    # spec, starting_balance: "If the invoice has not been finalized yet, this will be the current customer balance"
    assert (draft.status, draft.total, draft.starting_balance, draft.amount_due, draft.ending_balance) == (
        "draft", 1000, -500, 500, None)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    a, g = cycle_invoice(client, acme), cycle_invoice(client, globex)
    assert (a.status, a.total, a.starting_balance, a.amount_due, a.amount_paid, a.ending_balance, a.attempt_count) == (
        "paid", 1000, -500, 500, 500, 0, 1)
    assert (g.status, g.total, g.starting_balance, g.amount_due, g.amount_paid, g.ending_balance, g.attempt_count) == (
        "paid", 1000, -1500, 0, 0, -500, 0)
    assert [client.v1.customers.retrieve(c.id).balance for c in (acme, globex)] == [0, -500]


def test_an_invoice_below_the_minimum_charge_is_paid_and_its_amount_is_added_to_the_next(sb, client):
    """One unit in October: 25 cents, under Stripe's 50-cent minimum. The invoice is paid with nothing due
    and nothing charged (not even to a card that would be declined: the customer does not become
    delinquent), and the 25 is owed on the balance. 40 units in November: December's invoice is 1000 + 25."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    meter, price = metered_price(client)
    declined = _subscribed(client, clock, price, metadata={"payment_behavior": "fails_then_succeeds"})
    usage(client, meter, declined, 1, OCT + 60)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    [nov] = _cycles(client, declined)
    assert (nov.status, nov.total, nov.amount_due, nov.amount_paid, nov.amount_remaining, nov.ending_balance) == (
        "paid", 25, 0, 0, 0, 25)
    assert (nov.attempt_count, nov.attempted) == (0, False)
    customer = client.v1.customers.retrieve(declined.id)
    assert (customer.balance, customer.delinquent) == (25, False)
    assert client.v1.events.list({"type": "invoice.payment_failed"}).data == []

    usage(client, meter, declined, 40, NOV + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": DEC + 3600})
    dec = _cycles(client, declined)[1]
    # the card declines the first attempt of 1025 (fails_then_succeeds): open, 1025 remaining
    assert (dec.status, dec.total, dec.starting_balance, dec.amount_due, dec.amount_remaining, dec.ending_balance) == (
        "open", 1000, 25, 1025, 1025, 0)
    assert client.v1.customers.retrieve(declined.id).balance == 0
    assert client.v1.invoices.pay(dec.id).amount_paid == 1025


def test_the_minimum_charge_is_the_currencys(sb, client):
    """¥10 a unit, Stripe's yen minimum ¥50: 4 units (¥40) are carried, 5 units (¥50) are charged."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    meter, price = metered_price(client, "metering_yen_calls", currency="jpy", unit_amount=10)
    small, enough = (_subscribed(client, clock, price) for _ in range(2))
    usage(client, meter, small, 4, OCT + 60)
    usage(client, meter, enough, 5, OCT + 60)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    [s], [e] = _cycles(client, small), _cycles(client, enough)
    assert (s.currency, s.total, s.amount_due, s.amount_paid, s.status, s.ending_balance) == ("jpy", 40, 0, 0, "paid", 40)
    assert (e.currency, e.total, e.amount_due, e.amount_paid, e.status, e.ending_balance) == ("jpy", 50, 50, 50, "paid", 0)


def test_a_negative_total_is_carried_as_credit_to_the_next_invoice(sb, client):
    """A credit item of -800 and no October usage: November's invoice totals -800, nothing is due, and the
    800 of credit pays most of December's 1000 (40 units in November): 200 due."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    meter, price = metered_price(client)
    customer = _subscribed(client, clock, price)
    client.v1.invoice_items.create({"customer": customer.id, "amount": -800, "description": "Goodwill credit"})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    usage(client, meter, customer, 40, NOV + 3600)
    [nov] = _cycles(client, customer)
    assert (nov.status, nov.total, nov.amount_due, nov.amount_paid, nov.ending_balance) == ("paid", -800, 0, 0, -800)
    assert client.v1.customers.retrieve(customer.id).balance == -800
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": DEC + 3600})
    dec = _cycles(client, customer)[1]
    assert (dec.status, dec.total, dec.starting_balance, dec.amount_due, dec.amount_paid, dec.ending_balance) == (
        "paid", 1000, -800, 200, 200, 0)


def test_voiding_an_invoice_gives_back_the_credit_it_used(sb, client):
    """500 of credit on a 1000 invoice finalized by hand: 500 due, balance 0. Voided: the credit is the
    customer's again (Stripe's `unapplied_from_invoice`), and a second void changes nothing."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    customer = client.v1.customers.create({"name": "Acme", "test_clock": clock.id, "balance": -500})
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 1000, "invoice": invoice.id})
    opened = client.v1.invoices.finalize_invoice(invoice.id, {"auto_advance": False})
    assert (opened.status, opened.amount_due, opened.starting_balance, opened.ending_balance) == ("open", 500, -500, 0)
    assert client.v1.customers.retrieve(customer.id).balance == 0
    voided = client.v1.invoices.void_invoice(invoice.id)
    assert (voided.status, client.v1.customers.retrieve(customer.id).balance) == ("void", -500)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.void_invoice(invoice.id)
    assert refused.value.http_status == 400
    assert client.v1.customers.retrieve(customer.id).balance == -500


def test_an_invoice_with_nothing_due_is_paid_when_finalized_whatever_its_collection_method(sb, client):
    """A $0 invoice sent for payment used to stay open for ever; Stripe marks it paid (no attempt). Paying a
    $0 draft finalizes it, which pays it: the answer is the paid invoice, not "already paid"."""
    customer = client.v1.customers.create({"name": "Acme"})
    sent = client.v1.invoices.create({"customer": customer.id, "currency": "usd", "collection_method": "send_invoice"})
    finalized = client.v1.invoices.finalize_invoice(sent.id)
    assert (finalized.status, finalized.amount_paid, finalized.attempted, finalized.auto_advance) == ("paid", 0, False, False)
    kinds = [e.type for e in client.v1.events.list({"type": "invoice.*"}).data if e.data.object.id == sent.id]
    assert kinds[:3] == ["invoice.payment_succeeded", "invoice.paid", "invoice.finalized"]   # newest first
    draft = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    assert client.v1.invoices.pay(draft.id).status == "paid"


def test_a_balance_set_on_the_customer_is_owed_on_the_next_invoice(sb, client):
    """Spec, customer.balance: "If positive, the customer has an amount owed that's added to their next
    invoice". 300 owed, set by an update (customer.updated names the old balance), then a 1000 invoice."""
    customer = client.v1.customers.create({"name": "Acme"})
    assert client.v1.customers.update(customer.id, {"balance": 300}).balance == 300
    [updated] = client.v1.events.list({"type": "customer.updated"}).data
    assert updated.data.previous_attributes.balance == 0
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 1000, "invoice": invoice.id})
    paid = client.v1.invoices.pay(invoice.id)
    assert (paid.total, paid.starting_balance, paid.amount_due, paid.amount_paid) == (1000, 300, 1300, 1300)
    assert client.v1.customers.retrieve(customer.id).balance == 0


def test_the_minimum_charge_can_be_configured_and_a_balance_survives_a_restart(tmp_path):
    """`minimum_charge={"usd": 0}`: a 25-cent invoice is charged like any other. Without it, the 25 is
    carried; the state file keeps the customer's balance."""
    state = tmp_path / "state.json"
    for minimums, expected in (({"usd": 0}, (25, 25, 0)), (None, (0, 0, 25))):
        with running_sandbox(minimum_charge=minimums, now=OCT, state_file=state) as sandbox:
            client = sandbox.client()
            customer = client.v1.customers.create({"name": "Acme"})
            invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
            client.v1.invoice_items.create({"customer": customer.id, "amount": 25, "invoice": invoice.id})
            paid = client.v1.invoices.pay(invoice.id)
            assert (paid.amount_due, paid.amount_paid, paid.ending_balance) == expected
        with running_sandbox(now=OCT, state_file=state) as again:
            assert again.client().v1.customers.retrieve(customer.id).balance == expected[2]
        state.unlink()
