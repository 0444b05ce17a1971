"""Cases a hand mutation audit (m28e) of the sandbox's subscriptions, invoices and invoice items
endpoints (subscriptions_api, invoices_api, invoiceitems_api) found untested. Each test names the
Stripe behaviour it holds (the spec subset, docs/stripe-sandbox.md); expected values are worked out
by hand in the docstrings."""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from conftest import metered_price, ts

OCT = ts("2026-10-01T00:00:00")
FEE = 5000  # a monthly licensed fee of 50.00


def _customer(client, **params: Any):
    """A customer on a test clock frozen at OCT."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    return clock, client.v1.customers.create({"test_clock": clock.id, **params})


def _price(client, product=None, currency: str = "usd", amount: int = FEE, **recurring: Any):
    """A licensed price (monthly unless ``recurring`` says otherwise); one-time with recurring=None."""
    product = product or client.v1.products.create({"name": "Platform"}).id
    body: dict[str, Any] = {"product": product, "currency": currency, "unit_amount": amount}
    if recurring.get("one_time"):
        return client.v1.prices.create(body)
    body["recurring"] = {"interval": "month", **recurring}
    return client.v1.prices.create(body)


def _refused(call, *args, **kwargs) -> stripe.InvalidRequestError:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        call(*args, **kwargs)
    assert refused.value.http_status == 400
    return refused.value


def _nothing_for(client, customer) -> None:
    """A refused creation leaves the customer with no subscription and no invoice."""
    assert client.v1.subscriptions.list({"customer": customer.id, "status": "all"}).data == []
    assert client.v1.invoices.list({"customer": customer.id}).data == []


# -- POST /v1/subscriptions: the items' prices ---------------------------------------------------
def test_an_inactive_price_is_refused_on_the_item_that_names_it(sb, client):
    """Stripe: "The price specified is inactive. This field only accepts active prices." The second
    item's price is archived (active=false): 400 on items[1][price], nothing created."""
    _, customer = _customer(client)
    good = _price(client)
    archived = _price(client, product=good.product, amount=100)
    client.v1.prices.update(archived.id, {"active": False})
    error = _refused(client.v1.subscriptions.create,
                     {"customer": customer.id, "items": [{"price": good.id}, {"price": archived.id}]})
    assert error.param == "items[1][price]"
    assert "inactive" in str(error.user_message)
    _nothing_for(client, customer)


def test_a_one_time_price_cannot_be_subscribed_to(sb, client):
    """A subscription bills recurring prices only: a one-time price is a 400 on items[0][price]."""
    _, customer = _customer(client)
    once = _price(client, one_time=True)
    error = _refused(client.v1.subscriptions.create, {"customer": customer.id, "items": [{"price": once.id}]})
    assert error.param == "items[0][price]"
    assert "recurring" in str(error.user_message)
    _nothing_for(client, customer)


def test_items_in_two_currencies_are_refused_before_anything_is_created(sb, client):
    """The first item (usd) sets the subscription's currency; a eur second item is a 400 on
    items[1][price] and no subscription, invoice or customer currency is left behind."""
    _, customer = _customer(client)
    usd = _price(client)
    eur = _price(client, product=usd.product, currency="eur")
    error = _refused(client.v1.subscriptions.create,
                     {"customer": customer.id, "items": [{"price": usd.id}, {"price": eur.id}]})
    assert error.param == "items[1][price]"
    _nothing_for(client, customer)
    assert client.v1.customers.retrieve(customer.id).currency is None


def test_items_of_the_same_interval_but_another_interval_count_are_refused(sb, client):
    """Monthly and every-3-months prices do not share a recurring interval (interval AND
    interval_count): 400 on items[1][price]."""
    _, customer = _customer(client)
    monthly = _price(client)
    quarterly = _price(client, product=monthly.product, amount=300, interval_count=3)
    error = _refused(client.v1.subscriptions.create,
                     {"customer": customer.id, "items": [{"price": monthly.id}, {"price": quarterly.id}]})
    assert error.param == "items[1][price]"
    _nothing_for(client, customer)


def _licensed_sub(client, customer, **params: Any):
    """``customer`` subscribed at OCT to a new 50.00 monthly licensed price (anchored at OCT)."""
    price = _price(client)
    return client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}], **params})


def test_a_missing_price_is_named_by_the_index_of_the_item_that_lacks_it(sb, client):
    """The second item has no price: param items[1][price], and the message names that same field
    (the sandbox's message always said items[0][price]: defect m28e-D1, fixed in the twenty-eighth session)."""
    _, customer = _customer(client)
    price = _price(client)
    error = _refused(client.v1.subscriptions.create,
                     {"customer": customer.id, "items": [{"price": price.id}, {"quantity": 2}]})
    assert (error.param, error.code) == ("items[1][price]", "parameter_missing")
    assert str(error.user_message) == "Missing required param: items[1][price]."
    _nothing_for(client, customer)


def test_a_licensed_item_without_a_quantity_is_one_and_charged_once(sb, client):
    """Stripe (docs: subscriptions/quantities; the spec subset leaves items[quantity] undescribed): a
    licensed item created without a quantity has quantity 1, so the first invoice
    (anchored at the creation: a whole period) charges 1 x 50.00 = 5000."""
    _, customer = _customer(client)
    sub = _licensed_sub(client, customer)
    assert sub["items"].data[0].quantity == 1
    first = client.v1.invoices.retrieve(sub.latest_invoice)
    assert (first.total, [line.quantity for line in first.lines.data]) == (FEE, [1])


def test_an_anchor_config_month_is_refused_for_a_monthly_price(sb, client):
    """Spec: billing_cycle_anchor_config[month] is for yearly prices only: a 400 on that field."""
    _, customer = _customer(client)
    error = _refused(_licensed_sub, client, customer, billing_cycle_anchor_config={"day_of_month": 1, "month": 2})
    assert error.param == "billing_cycle_anchor_config[month]"
    _nothing_for(client, customer)


def test_an_anchor_config_is_refused_for_a_weekly_price(sb, client):
    """Spec: billing_cycle_anchor_config is "only valid with monthly and yearly price intervals": a
    weekly price with day_of_month 1 is a 400 on billing_cycle_anchor_config."""
    _, customer = _customer(client)
    weekly = _price(client, interval="week")
    error = _refused(client.v1.subscriptions.create, {"customer": customer.id, "items": [{"price": weekly.id}],
                                                      "billing_cycle_anchor_config": {"day_of_month": 1}})
    assert error.param == "billing_cycle_anchor_config"
    _nothing_for(client, customer)


def test_an_anchor_config_hour_of_24_is_refused(sb, client):
    """Spec: billing_cycle_anchor_config[hour] is 0-23: 24 is a 400 on that field."""
    _, customer = _customer(client)
    error = _refused(_licensed_sub, client, customer, billing_cycle_anchor_config={"day_of_month": 1, "hour": 24})
    assert error.param == "billing_cycle_anchor_config[hour]"
    _nothing_for(client, customer)


# -- POST /v1/subscriptions/{id} --------------------------------------------------------------------
def test_naming_an_items_own_price_again_keeps_the_item(sb, client):
    """items[0][price] equal to the item's price is no price change: the item keeps its id (no new
    item) and the metadata given with it is applied."""
    _, customer = _customer(client)
    sub = _licensed_sub(client, customer)
    item = sub["items"].data[0]
    updated = client.v1.subscriptions.update(
        sub.id, {"items": [{"id": item.id, "price": item.price.id, "metadata": {"seat": "a"}}]})
    assert [(i.id, i.price.id, i.metadata.to_dict()) for i in updated["items"].data] == [(item.id, item.price.id, {"seat": "a"})]


def test_an_update_that_changes_nothing_records_no_subscription_updated_event(sb, client):
    """Setting metadata to the value it has changes nothing: no customer.subscription.updated (a
    real change records one, with previous_attributes)."""
    _, customer = _customer(client)
    sub = _licensed_sub(client, customer, metadata={"plan": "pro"})

    def updates() -> list:
        return [e for e in client.v1.events.list({"type": "customer.subscription.updated", "limit": 100}).data
                if e.data.object.id == sub.id]

    client.v1.subscriptions.update(sub.id, {"metadata": {"plan": "pro"}})
    assert updates() == []
    client.v1.subscriptions.update(sub.id, {"metadata": {"plan": "max"}})
    [event] = updates()
    assert event.data.previous_attributes.to_dict() == {"metadata": {"plan": "pro"}}


def test_an_empty_description_clears_a_subscriptions_description_to_null(sb, client):
    """description= (empty) unsets it: null, not the empty string."""
    _, customer = _customer(client)
    sub = _licensed_sub(client, customer, description="Pro plan")
    assert client.v1.subscriptions.update(sub.id, {"description": ""}).description is None


def test_deleting_a_subscription_item_records_a_subscription_updated_event(sb, client):
    """DELETE /v1/subscription_items/{item} changes the subscription's items: one
    customer.subscription.updated for it (a metered item: no proration question)."""
    _, customer = _customer(client)
    _, metered = metered_price(client)
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": metered.id}]})
    client.v1.subscription_items.delete(sub["items"].data[0].id)
    events = [e for e in client.v1.events.list({"type": "customer.subscription.updated"}).data if e.data.object.id == sub.id]
    assert len(events) == 1


# -- GET /v1/subscriptions ----------------------------------------------------------------------
def test_listing_by_price_returns_the_subscriptions_with_an_item_on_it(sb, client):
    """Spec, `price`: "Filter for subscriptions that contain this recurring price ID": two
    subscriptions of one customer on two prices of the same currency; each price lists its own."""
    _, customer = _customer(client)
    one, two = _price(client), _price(client, amount=900)
    a = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": one.id}]})
    b = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": two.id}]})
    assert [s.id for s in client.v1.subscriptions.list({"customer": customer.id, "price": one.id}).data] == [a.id]
    assert [s.id for s in client.v1.subscriptions.list({"customer": customer.id, "price": two.id}).data] == [b.id]


def test_listing_by_automatic_tax_enabled_filters(sb, client):
    """Spec, `automatic_tax[enabled]`: the sandbox models no tax, so every subscription has it
    false: true lists none, false lists the customer's one subscription."""
    _, customer = _customer(client)
    sub = _licensed_sub(client, customer)
    listed = lambda enabled: [s.id for s in client.v1.subscriptions.list(
        {"customer": customer.id, "automatic_tax": {"enabled": enabled}}).data]
    assert (listed(True), listed(False)) == ([], [sub.id])


# -- invoice items ----------------------------------------------------------------------------------
def test_an_item_update_clears_the_description_and_sets_discountable(sb, client):
    """description= (empty) unsets it (null) and discountable=false is applied to a pending item."""
    _, customer = _customer(client)
    item = client.v1.invoice_items.create({"customer": customer.id, "amount": 300, "currency": "usd",
                                           "description": "Setup"})
    assert item.discountable is True
    updated = client.v1.invoice_items.update(item.id, {"description": "", "discountable": False})
    assert (updated.description, updated.discountable) == (None, False)


def test_an_item_for_a_customer_account_is_refused_not_ignored(sb, client):
    """docs/stripe-sandbox.md: invoice items' `customer_account` is not modelled and answered 400;
    no item is created."""
    _, customer = _customer(client)
    error = _refused(client.v1.invoice_items.create, {"customer": customer.id, "amount": 300, "currency": "usd",
                                                       "customer_account": "acct_123"})
    assert error.param == "customer_account"
    assert client.v1.invoice_items.list({"customer": customer.id}).data == []


# -- defects m28e-D2..D4, fixed in the twenty-eighth session (D1 is above) -------------------------------

def test_an_update_refused_for_a_foreign_item_leaves_the_subscriptions_fields_as_they_were(sb, client):
    """A refused request changes nothing (docs/stripe-sandbox.md; Stripe's API is atomic): metadata
    and cancel_at_period_end sent with an item of another subscription (400 on items[0][id]) are not
    applied: metadata stays {}, cancel_at_period_end false, canceled_at null."""
    _, customer = _customer(client)
    sub, other = _licensed_sub(client, customer), _licensed_sub(client, customer)
    error = _refused(client.v1.subscriptions.update, sub.id, {
        "metadata": {"tier": "gold"}, "cancel_at_period_end": True, "items": [{"id": other["items"].data[0].id}]})
    assert error.param == "items[0][id]"
    kept = client.v1.subscriptions.retrieve(sub.id)
    assert (kept.metadata.to_dict(), kept.cancel_at_period_end, kept.canceled_at) == ({}, False, None)


def test_a_price_change_refused_for_its_currency_keeps_the_old_item(sb, client):
    """Changing a usd item's price to a eur price is a 400 on items[0][price] ("All prices on a
    subscription must have the same currency"); the subscription keeps its usd item (the sandbox
    ended it first and was left with no item at all)."""
    _, customer = _customer(client)
    sub = _licensed_sub(client, customer)
    item = sub["items"].data[0]
    eur = _price(client, product=item.price.product, currency="eur")
    error = _refused(client.v1.subscriptions.update, sub.id,
                     {"items": [{"id": item.id, "price": eur.id}], "proration_behavior": "none"})
    assert error.param == "items[0][price]"
    assert [(i.id, i.price.id) for i in client.v1.subscription_items.list({"subscription": sub.id}).data] == [
        (item.id, item.price.id)]


def test_a_subscription_is_not_listed_under_a_price_it_was_moved_off(sb, client):
    """Spec, GET /v1/subscriptions `price`: "Filter for subscriptions that contain this recurring
    price ID". After its only item moves from price A to price B the subscription contains B alone
    (its items say so): listed under B, not under A."""
    _, customer = _customer(client)
    sub = _licensed_sub(client, customer)
    item = sub["items"].data[0]
    moved_to = _price(client, product=item.price.product, amount=7000)
    updated = client.v1.subscriptions.update(sub.id, {"items": [{"id": item.id, "price": moved_to.id}],
                                                      "proration_behavior": "none"})
    assert [i.price.id for i in updated["items"].data] == [moved_to.id]
    assert [s.id for s in client.v1.subscriptions.list({"customer": customer.id, "price": moved_to.id}).data] == [sub.id]
    assert client.v1.subscriptions.list({"customer": customer.id, "price": item.price.id}).data == []
