"""Cases a hand mutation audit (m28d) of the sandbox's customers, products, prices, events, test clocks
(core_api.py) and billing engine (billing.py) found untested. Each test names the Stripe rule it holds
(the OpenAPI spec, stripe-facts.md) and the mutant it kills; expected values are worked out by hand in
the docstrings. Every API call goes over loopback HTTP; the ``sb`` fixture holds each response to the
OpenAPI description."""

from __future__ import annotations

from conftest import ts

OCT = ts("2026-10-01T00:00:00")
NOV = ts("2026-11-01T00:00:00")


def _licensed_price(client, cents: int = 1000, **recurring):
    """A product and a monthly licensed price of `cents` on it."""
    product = client.v1.products.create({"name": "Seat"})
    return client.v1.prices.create(
        {"currency": "usd", "product": product.id, "unit_amount": cents, "recurring": {"interval": "month", **recurring}}
    )


def _clocked_customer(client, **params):
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    return clock, client.v1.customers.create({"name": "Acme", "test_clock": clock.id, **params})


# -- customers ------------------------------------------------------------------------------------
def test_a_balance_can_be_set_back_to_zero(sb, client):
    """Spec, POST /v1/customers/{customer} `balance`: an integer, the customer's current balance. A
    customer created with balance 500 and updated with balance=0 has balance 0 (not 500 kept).
    Kills C02 (a zero balance read as "not given")."""
    customer = client.v1.customers.create({"name": "A", "balance": 500})
    assert customer.balance == 500
    assert client.v1.customers.update(customer.id, {"balance": 0}).balance == 0
    assert client.v1.customers.retrieve(customer.id).balance == 0


def test_a_declining_default_payment_method_in_invoice_settings_fails_the_first_invoice(sb, client):
    """A customer whose invoice_settings[default_payment_method] is the declining test card
    pm_card_chargeDeclined: the first invoice of a subscription (one seat at $10.00, due at once) is
    declined, so the subscription is `incomplete` and the invoice `open` with 1000 remaining.
    Kills C04 (invoice_settings[default_payment_method] ignored: the card would succeed)."""
    _, customer = _clocked_customer(client, invoice_settings={"default_payment_method": "pm_card_chargeDeclined"})
    price = _licensed_price(client)
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    invoice = client.v1.invoices.retrieve(sub.latest_invoice)
    assert (sub.status, invoice.status, invoice.amount_remaining) == ("incomplete", "open", 1000)


# -- billing: licensed lines ----------------------------------------------------------------------
def test_a_licensed_item_of_quantity_zero_is_invoiced_at_zero(sb, client):
    """Spec, subscription_item.quantity: "The quantity of the plan to which the customer should be
    subscribed"; the sandbox accepts items[0][quantity]=0 and shows the item with quantity 0. Its first
    invoice must bill that quantity: 0 x $10.00 = 0, so the line is quantity 0, amount 0, and the invoice,
    with nothing due, is paid at finalization (amount_paid 0).
    The defect m28d-D1, fixed in the twenty-eighth session (billing.licensed_lines): `Decimal(item.get(
    "quantity") or 1)` turned 0 into 1, invoicing one seat ($10.00, charged) for an item that has none."""
    _, customer = _clocked_customer(client)
    price = _licensed_price(client)
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id, "quantity": 0}]})
    assert sub["items"].data[0].quantity == 0
    invoice = client.v1.invoices.retrieve(sub.latest_invoice)
    [line] = invoice.lines.data
    assert (line.quantity, line.amount) == (0, 0)
    assert (invoice.total, invoice.amount_due, invoice.amount_paid, invoice.status) == (0, 0, 0, "paid")


def test_deleting_a_customer_does_not_cancel_an_already_canceled_subscription_again(sb, client):
    """Stripe: deleting a customer "immediately cancels any active subscriptions on the customer". A
    subscription canceled before (DELETE /v1/subscriptions/{id}) is not active: deleting the customer
    afterwards records no second customer.subscription.deleted; one subscription, one such event.
    Kills C09 (the ended-status filter dropped: the canceled subscription canceled again)."""
    _, customer = _clocked_customer(client)
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": _licensed_price(client).id}]})
    client.v1.subscriptions.cancel(sub.id)
    client.v1.customers.delete(customer.id)
    deleted = client.v1.events.list({"type": "customer.subscription.deleted"}).data
    assert [e.data.object.id for e in deleted] == [sub.id]
    assert client.v1.events.list({"type": "customer.deleted"}).data[0].data.object.id == customer.id


# -- prices ---------------------------------------------------------------------------------------
def test_updating_an_inactive_price_without_active_keeps_it_inactive(sb, client):
    """Spec, POST /v1/prices/{price}: parameters left out are left unchanged. A price created with
    active=false and then given only a nickname stays inactive (active false, nickname set), and no
    price.updated names `active` among the previous attributes. Kills C36 (an update without
    `active` reactivated the price)."""
    product = client.v1.products.create({"name": "Seat"})
    price = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 100, "active": False})
    updated = client.v1.prices.update(price.id, {"nickname": "legacy"})
    assert (updated.active, updated.nickname) == (False, "legacy")
    assert client.v1.prices.retrieve(price.id).active is False
    [event] = client.v1.events.list({"type": "price.updated"}).data
    assert event.data.previous_attributes.to_dict() == {"nickname": None}


# -- billing: which items an invoice covers -------------------------------------------------------
def test_canceling_with_invoice_now_at_the_start_instant_still_bills_the_metered_item(sb, client):
    """billing._items_in: an item counts when it is active at some instant of [start, end); a window of
    no length (a subscription canceled with invoice_now=true at the instant it started, OCT) is its
    one instant `start`. The final invoice (subscription_cycle, period OCT..OCT) therefore carries the
    metered item's line: no usage, so quantity 0, amount 0, period start = end = OCT (the inclusive end
    max(start, end - 1) = OCT). Kills B03 (`_started < end`: the item started at OCT is not before
    OCT, so the invoice would have no line at all)."""
    from conftest import metered_price

    _, customer = _clocked_customer(client)
    _, price = metered_price(client)
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    item = sub["items"].data[0].id
    canceled = client.v1.subscriptions.cancel(sub.id, {"invoice_now": True})
    assert canceled.status == "canceled"
    final = client.v1.invoices.retrieve(canceled.latest_invoice)
    assert (final.billing_reason, final.period_start, final.period_end) == ("subscription_cycle", OCT, OCT)
    [line] = final.lines.data
    assert line.parent.subscription_item_details.subscription_item == item
    assert (line.quantity, line.amount, line.period.start, line.period.end) == (0, 0, OCT, OCT)


def test_a_period_end_invoice_with_nothing_due_is_paid_once_at_finalization(sb, client):
    """A metered subscription with no usage: its period-end invoice (OCT..NOV) totals 0, and is drafted at
    NOV and finalized after the 1 h grace period at NOV + 3600, where, with nothing due, it is paid at
    once with no payment attempt (attempt_count 0, paid_at NOV + 3600). Its events are invoice.created,
    .finalized, .paid and .payment_succeeded, once each. Kills B45 (the clock's finalization charging an
    invoice whose automatic collection finalization already ended: a second invoice.paid and
    invoice.payment_succeeded for the same invoice)."""
    from conftest import cycle_invoice, metered_price

    clock, customer = _clocked_customer(client)
    _, price = metered_price(client)
    client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    invoice = cycle_invoice(client, customer)
    assert (invoice.status, invoice.total, invoice.amount_paid, invoice.attempt_count) == ("paid", 0, 0, 0)
    assert invoice.status_transitions.paid_at == NOV + 3600
    types = [e.type for e in client.v1.events.list({"type": "invoice.*", "limit": 100}).data if e.data.object.id == invoice.id]
    assert sorted(types) == ["invoice.created", "invoice.finalized", "invoice.paid", "invoice.payment_succeeded"]


# -- products -------------------------------------------------------------------------------------
def test_a_products_updated_time_moves_only_when_the_product_changes(sb, client):
    """Spec, product.updated: "Time at which the object was last updated." Created at OCT (updated OCT),
    renamed at OCT + 60 (updated OCT + 60), then sent the same name again at OCT + 120: nothing changed,
    so updated stays OCT + 60 (and created stays OCT). Kills C16 (the test inverted: a real change kept
    the old time and a no-op update moved it)."""
    sb.set_now(OCT)
    product = client.v1.products.create({"name": "Seat"})
    assert (product.created, product.updated) == (OCT, OCT)
    sb.set_now(OCT + 60)
    assert client.v1.products.update(product.id, {"name": "Seat v2"}).updated == OCT + 60
    sb.set_now(OCT + 120)
    again = client.v1.products.update(product.id, {"name": "Seat v2"})
    assert (again.created, again.updated, again.name) == (OCT, OCT + 60, "Seat v2")
