"""Where the sandbox disagreed with Stripe (found by the m22b audit, fixed): a refused request changed
part of the state, parameters were accepted and dropped, bounds Stripe enforces were not, and the
`*.updated` events of prices and products had no `previous_attributes`. Every call goes over loopback
HTTP through the official SDK; the ``sb`` fixture holds each response to the OpenAPI description."""

from __future__ import annotations

import pytest

from test_sandbox_audit_fixes import _refused
from test_sandbox_mutants22 import _licensed_price

LONG_KEY = "k" * 41   # Stripe: "Metadata keys can be at most 40 characters"


def _product(client):
    return client.v1.products.create({"name": "P"})


# -- a refused request changes nothing ------------------------------------------------------------
def test_a_refused_price_update_moves_no_lookup_key_and_deactivates_nothing(sb, client):
    """The update is refused for its metadata key; the lookup key it asked to transfer stays where it was,
    and the price stays active (it was moved and deactivated before the refusal)."""
    product = _product(client)
    std = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 100, "lookup_key": "std"})
    new = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 200})
    _refused(lambda: client.v1.prices.update(new.id, {"lookup_key": "std", "transfer_lookup_key": True, "active": False,
                                                      "metadata": {LONG_KEY: "v"}}),
             f"metadata[{LONG_KEY}]", "at most 40 characters")
    assert client.v1.prices.retrieve(std.id).lookup_key == "std"
    assert (client.v1.prices.retrieve(new.id).active, client.v1.prices.retrieve(new.id).lookup_key) == (True, None)
    assert client.v1.events.list({"type": "price.updated"}).data == []


def test_a_refused_customer_or_product_update_changes_nothing(sb, client):
    customer = client.v1.customers.create({"name": "Old"})
    _refused(lambda: client.v1.customers.update(customer.id, {"name": "New", "metadata": {LONG_KEY: "v"}}),
             f"metadata[{LONG_KEY}]", "at most 40 characters")
    assert client.v1.customers.retrieve(customer.id).name == "Old"
    product = _product(client)
    _refused(lambda: client.v1.products.update(product.id, {"name": "New", "metadata": {LONG_KEY: "v"}}),
             f"metadata[{LONG_KEY}]", "at most 40 characters")
    assert client.v1.products.retrieve(product.id).name == "P"
    assert client.v1.events.list({"type": "customer.updated"}).data == []
    assert client.v1.events.list({"type": "product.updated"}).data == []


def test_a_refused_price_with_product_data_creates_no_product_however_often_it_is_retried(sb, client):
    """The price is refused (its lookup key is taken); its `product_data` product was created first, and
    each retry under the same key (a 400 is not stored) created another."""
    product = _product(client)
    client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 100, "lookup_key": "std"})
    for _ in range(2):
        _refused(lambda: client.v1.prices.create(
            {"currency": "usd", "product_data": {"name": "Orphan"}, "unit_amount": 100, "lookup_key": "std"},
            {"idempotency_key": "price-1"}), "lookup_key", "already uses that lookup key")
    assert [p.name for p in client.v1.products.list().data] == ["P"]
    assert len(client.v1.events.list({"type": "product.created"}).data) == 1
    made = client.v1.prices.create({"currency": "usd", "product_data": {"name": "Made"}, "unit_amount": 100})
    assert client.v1.products.retrieve(made.product).name == "Made"


# -- bounds Stripe enforces -------------------------------------------------------------------------
@pytest.mark.parametrize("interval, count, accepted", [
    ("month", 0, False), ("month", -1, False), ("month", 36, True), ("month", 37, False),
    ("week", 156, True), ("week", 157, False), ("year", 3, True), ("year", 4, False),
    ("day", 1095, True), ("day", 1096, False),
])
def test_a_recurring_interval_is_one_interval_to_three_years(sb, client, interval, count, accepted):
    """Stripe: "The maximum of three years interval allowed (3 years, 36 months, or 156 weeks)"; a count of
    0 once made the next subscription's period loop for ever, holding the sandbox."""
    product = _product(client)
    params = {"currency": "usd", "product": product.id, "unit_amount": 100,
              "recurring": {"interval": interval, "interval_count": count}}
    if accepted:
        assert client.v1.prices.create(params).recurring.interval_count == count
    else:
        _refused(lambda: client.v1.prices.create(params), "recurring[interval_count]", "at most three years")


def test_a_transform_quantity_dividing_by_zero_is_refused(sb, client):
    """Accepted, it made every subscription on the price fail with a 500 (a division by zero)."""
    product = _product(client)
    _refused(lambda: client.v1.prices.create({
        "currency": "usd", "product": product.id, "unit_amount": 100, "recurring": {"interval": "month"},
        "transform_quantity": {"divide_by": 0, "round": "up"}}), "transform_quantity[divide_by]", "at least 1")


@pytest.mark.parametrize("up_to", [0, -5])
def test_a_first_tier_must_end_above_zero(sb, client, up_to):
    product = _product(client)
    _refused(lambda: client.v1.prices.create({
        "currency": "usd", "product": product.id, "billing_scheme": "tiered", "tiers_mode": "graduated",
        "tiers": [{"up_to": up_to, "unit_amount": 0}, {"up_to": "inf", "unit_amount": 10}]}),
        "tiers[0][up_to]", "increasing order")


def test_an_amount_given_both_whole_and_decimal_is_refused_naming_the_parameter(sb, client):
    """The error named no parameter at the top level; in a tier, every amount error named `tiers[0][flat_amount`
    (cut short)."""
    product = _product(client)
    _refused(lambda: client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 100,
                                              "unit_amount_decimal": "100"}), "unit_amount", "only specify one")
    _refused(lambda: client.v1.prices.create({
        "currency": "usd", "product": product.id, "billing_scheme": "tiered", "tiers_mode": "graduated",
        "tiers": [{"up_to": 5, "flat_amount": 100, "flat_amount_decimal": "100"}, {"up_to": "inf", "unit_amount": 10}]}),
        "tiers[0][flat_amount]", "only specify one")
    _refused(lambda: client.v1.prices.create({
        "currency": "usd", "product": product.id, "billing_scheme": "tiered", "tiers_mode": "graduated",
        "tiers": [{"up_to": 5, "unit_amount_decimal": "0.1234567890123"}, {"up_to": "inf", "unit_amount": 10}]}),
        "tiers[0][unit_amount_decimal]", "at most 12 decimal places")


def test_a_second_active_subscription_in_another_currency_is_refused(sb, client):
    """Stripe: "You can't have two active subscriptions with different currencies". Once the first has
    ended, the customer may subscribe in the other currency."""
    customer = client.v1.customers.create({"name": "C"})
    usd = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": _licensed_price(client).id}]})
    product = _product(client)
    yen = client.v1.prices.create({"currency": "jpy", "product": product.id, "unit_amount": 2000,
                                   "recurring": {"interval": "month"}})
    _refused(lambda: client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": yen.id}]}),
             "currency", "cannot combine currencies")
    assert client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": _licensed_price(client).id}]}
                                          ).currency == "usd"   # the same currency: allowed
    for sub in client.v1.subscriptions.list({"customer": customer.id}).data:
        client.v1.subscriptions.cancel(sub.id)
    assert usd.id in [s.id for s in client.v1.subscriptions.list({"customer": customer.id, "status": "canceled"}).data]
    assert client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": yen.id}]}).currency == "jpy"


# -- parameters that were accepted and dropped ------------------------------------------------------
@pytest.mark.parametrize("param, value", [("tax_exempt", "exempt"), ("address", {"country": "US"})])
def test_a_customer_parameter_the_sandbox_does_not_model_is_refused_not_dropped(sb, client, param, value):
    """A tax exemption dropped would have the sandbox charge tax Stripe would not (`balance`, refused here
    until the twenty-fourth session, is modelled now: test_sandbox_customer_balance.py)."""
    _refused(lambda: client.v1.customers.create({"name": "C", param: value}), param)
    customer = client.v1.customers.create({"name": "C"})
    _refused(lambda: client.v1.customers.update(customer.id, {param: value}), param)
    assert client.v1.customers.retrieve(customer.id).balance == 0


def test_preferred_locales_are_kept_on_update_too(sb, client):
    customer = client.v1.customers.create({"name": "C", "preferred_locales": ["fr"]})
    assert client.v1.customers.update(customer.id, {"preferred_locales": ["de", "en"]}).preferred_locales == ["de", "en"]
    assert client.v1.customers.retrieve(customer.id).preferred_locales == ["de", "en"]


def test_price_and_product_update_parameters_the_sandbox_does_not_model_are_refused(sb, client):
    product = _product(client)
    price = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 100})
    _refused(lambda: client.v1.prices.update(price.id, {"tax_behavior": "exclusive"}), "tax_behavior")
    _refused(lambda: client.v1.products.update(product.id, {"default_price": price.id}), "default_price")
    assert client.v1.prices.retrieve(price.id).tax_behavior == "unspecified"
    assert client.v1.products.retrieve(product.id).default_price is None


@pytest.mark.parametrize("param, value, words", [
    ("currency_options", {"eur": {"unit_amount": 90}}, "does not model"),
    ("custom_unit_amount", {"enabled": True}, "does not model"),
    ("unit_amount", 700, "cannot be combined with tiers"),
])
def test_price_parameters_the_sandbox_would_drop_are_refused(sb, client, param, value, words):
    """A price in euros too, a pay-what-you-want price, or an amount beside tiers: each was created without
    it, a price other than the one asked for."""
    product = _product(client)
    tiered = {"billing_scheme": "tiered", "tiers_mode": "graduated",
              "tiers": [{"up_to": 5, "unit_amount": 0}, {"up_to": "inf", "unit_amount": 10}]}
    params = {"currency": "usd", "product": product.id, **(tiered if param == "unit_amount" else {"unit_amount": 100})}
    _refused(lambda: client.v1.prices.create({**params, param: value}), param, words)
    assert client.v1.prices.list().data == []


def test_tiers_without_billing_scheme_tiered_are_refused(sb, client):
    """Spec, tiers: "Requires billing_scheme to be set to tiered". They were dropped: a per-unit price at
    7.00 where tiers were asked for."""
    product = _product(client)
    _refused(lambda: client.v1.prices.create({
        "currency": "usd", "product": product.id, "unit_amount": 700, "tiers_mode": "volume",
        "tiers": [{"up_to": 5, "unit_amount": 700}, {"up_to": "inf", "unit_amount": 600}]}),
        "tiers", "requires billing_scheme=tiered")


# -- *.updated events -------------------------------------------------------------------------------
def test_price_and_product_updated_events_carry_previous_attributes_and_come_only_for_a_change(sb, client):
    """reference/stripe-facts.md: `*.updated` events carry `data.previous_attributes`, the values the
    update changed."""
    product = _product(client)
    price = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 100})
    client.v1.prices.update(price.id, {"nickname": "std"})
    client.v1.prices.update(price.id, {"nickname": "std"})   # no change: no event
    [event] = client.v1.events.list({"type": "price.updated"}).data
    assert event.data.previous_attributes.to_dict() == {"nickname": None}
    before = client.v1.products.retrieve(product.id)
    client.v1.products.update(product.id, {"name": "P"})     # no change: no event, `updated` unmoved
    assert client.v1.events.list({"type": "product.updated"}).data == []
    assert client.v1.products.retrieve(product.id).updated == before.updated
    client.v1.products.update(product.id, {"name": "Q", "active": False})
    [event] = client.v1.events.list({"type": "product.updated"}).data
    previous = event.data.previous_attributes.to_dict()
    assert {k: previous[k] for k in ("name", "active")} == {"name": "P", "active": True}
    assert set(previous) <= {"name", "active", "updated"}
