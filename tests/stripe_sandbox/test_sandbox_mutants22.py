"""Cases a hand mutation audit (m22b) of the sandbox's customers, products, prices, invoice items,
request validation and events found untested. Each test names the Stripe behaviour it holds; every
call goes over loopback HTTP through the official SDK, and the ``sb`` fixture holds each response to
the OpenAPI description."""

from __future__ import annotations

import pytest
import stripe

from conftest import cycle_invoice, metered_price, ts
from metering.stripe_sandbox import spec
from test_sandbox_audit_fixes import _refused
from test_sandbox_invoice_items import NOV, OCT, _setup as _metered_customer


def _licensed_price(client, cents: int = 1900):
    product = client.v1.products.create({"name": "seat"})
    return client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": cents,
                                    "recurring": {"interval": "month"}})


# -- customers ------------------------------------------------------------------------------------
def test_an_empty_string_clears_a_customers_email_and_name_to_null(sb, client):
    """Stripe's "unset" value: ``email=`` on update leaves the field null, not an empty string."""
    customer = client.v1.customers.create({"name": "Acme", "email": "billing@acme.test"})
    cleared = client.v1.customers.update(customer.id, {"email": "", "name": ""})
    assert (cleared.email, cleared.name) == (None, None)
    assert client.v1.customers.retrieve(customer.id).email is None


def test_an_update_that_changes_nothing_sends_no_customer_updated_event(sb, client):
    """Stripe sends ``customer.updated`` only for a change, with the attributes it changed."""
    customer = client.v1.customers.create({"name": "Acme"})
    client.v1.customers.update(customer.id, {"name": "Acme"})
    assert client.v1.events.list({"type": "customer.updated"}).data == []
    client.v1.customers.update(customer.id, {"name": "Acme Corp"})
    [event] = client.v1.events.list({"type": "customer.updated"}).data
    assert (event.data.object.name, event.data.previous_attributes.to_dict()) == ("Acme Corp", {"name": "Acme"})


def test_deleting_a_customer_leaves_other_customers_subscriptions_active(sb, client):
    """DELETE /v1/customers/{id} cancels that customer's subscriptions only."""
    price = _licensed_price(client)
    leaving = client.v1.customers.create({"name": "leaving"})
    staying = client.v1.customers.create({"name": "staying"})
    gone = client.v1.subscriptions.create({"customer": leaving.id, "items": [{"price": price.id}]})
    kept = client.v1.subscriptions.create({"customer": staying.id, "items": [{"price": price.id}]})
    client.v1.customers.delete(leaving.id)
    assert client.v1.subscriptions.retrieve(gone.id).status == "canceled"
    assert client.v1.subscriptions.retrieve(kept.id).status == "active"
    assert [e.data.object.id for e in client.v1.events.list({"type": "customer.subscription.deleted"}).data] == [gone.id]


def test_listing_customers_by_email_returns_only_the_customers_with_that_email(sb, client):
    first = client.v1.customers.create({"email": "a@acme.test"})
    client.v1.customers.create({"email": "b@acme.test"})
    second = client.v1.customers.create({"email": "a@acme.test"})
    listed = client.v1.customers.list({"email": "a@acme.test"}).data
    assert [c.id for c in listed] == [second.id, first.id]  # newest first


# -- products -------------------------------------------------------------------------------------
def test_a_product_id_already_taken_is_refused_and_the_first_product_is_kept(sb, client):
    client.v1.products.create({"id": "prod_seats", "name": "Seats"})
    refused = _refused(lambda: client.v1.products.create({"id": "prod_seats", "name": "Other"}), "id", "already exists")
    assert refused.code == "resource_already_exists"
    assert client.v1.products.retrieve("prod_seats").name == "Seats"
    assert [p.id for p in client.v1.products.list().data] == ["prod_seats"]


def test_listing_products_by_active_returns_only_that_state(sb, client):
    live = client.v1.products.create({"name": "live"})
    retired = client.v1.products.create({"name": "retired", "active": False})
    assert [p.id for p in client.v1.products.list({"active": False}).data] == [retired.id]
    assert [p.id for p in client.v1.products.list({"active": True}).data] == [live.id]
    assert [p.id for p in client.v1.products.list().data] == [retired.id, live.id]


# -- prices ---------------------------------------------------------------------------------------
def test_a_price_with_both_unit_amount_and_unit_amount_decimal_is_refused(sb, client):
    product = client.v1.products.create({"name": "calls"})
    _refused(lambda: client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 25,
                                              "unit_amount_decimal": "25.5"}), "unit_amount", "only specify one of")
    assert client.v1.prices.list().data == []


def test_a_free_price_of_zero_is_accepted_and_a_negative_one_refused(sb, client):
    """spec, POST /v1/prices `unit_amount`: "A positive integer in cents ... (or 0 for a free price)"."""
    product = client.v1.products.create({"name": "trial"})
    free = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 0})
    assert (free.unit_amount, free.unit_amount_decimal) == (0, 0)  # the SDK reads the decimal string "0"
    _refused(lambda: client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": -1}), "unit_amount", "non-negative")


def test_unit_amount_decimal_takes_twelve_decimal_places_and_not_thirteen(sb, client):
    product = client.v1.products.create({"name": "tokens"})
    twelve = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount_decimal": "0.000000000001"})
    assert str(twelve.unit_amount_decimal) == "1E-12"
    _refused(lambda: client.v1.prices.create({"currency": "usd", "product": product.id,
                                              "unit_amount_decimal": "0.0000000000001"}), "unit_amount_decimal",
             "at most 12 decimal places")


def test_a_whole_unit_amount_decimal_is_also_given_as_unit_amount(sb, client):
    """spec, price `unit_amount`: "represented as a whole integer if possible": 25.000 -> 25; 25.5 has
    no whole form, so unit_amount is null and only unit_amount_decimal carries it."""
    product = client.v1.products.create({"name": "calls"})
    whole = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount_decimal": "25.000"})
    half = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount_decimal": "25.5"})
    assert (whole.unit_amount, str(whole.unit_amount_decimal)) == (25, "25")
    assert (half.unit_amount, str(half.unit_amount_decimal)) == (None, "25.5")


def test_a_last_tier_that_is_not_up_to_inf_is_refused(sb, client):
    product = client.v1.products.create({"name": "calls"})
    _refused(lambda: client.v1.prices.create({
        "currency": "usd", "product": product.id, "billing_scheme": "tiered", "tiers_mode": "graduated",
        "tiers": [{"up_to": 5, "unit_amount": 700}, {"up_to": 10, "unit_amount": 650}]}), "tiers[1][up_to]", "up_to=inf")
    assert client.v1.prices.list().data == []


@pytest.mark.parametrize("second_up_to", [5, 4])
def test_tiers_whose_up_to_does_not_increase_are_refused(sb, client, second_up_to):
    """Tiers 1-5, then up to 5 (an empty tier) or up to 4 (going back): refused at the second tier."""
    product = client.v1.products.create({"name": "calls"})
    _refused(lambda: client.v1.prices.create({
        "currency": "usd", "product": product.id, "billing_scheme": "tiered", "tiers_mode": "volume",
        "tiers": [{"up_to": 5, "unit_amount": 700}, {"up_to": second_up_to, "unit_amount": 650},
                  {"up_to": "inf", "unit_amount": 600}]}), "tiers[1][up_to]", "increasing order")


def test_a_metered_price_without_a_meter_is_refused(sb, client):
    """Since 2025-03-31.basil a metered price needs `recurring.meter` (stripe-facts.md)."""
    product = client.v1.products.create({"name": "calls"})
    refused = _refused(lambda: client.v1.prices.create({
        "currency": "usd", "product": product.id, "unit_amount": 25,
        "recurring": {"interval": "month", "usage_type": "metered"}}), "recurring[meter]", "backed by a meter")
    assert refused.code == "parameter_missing"


def test_transform_quantity_on_a_tiered_price_is_refused(sb, client):
    """spec, POST /v1/prices `transform_quantity`: "Cannot be combined with `tiers`"."""
    product = client.v1.products.create({"name": "calls"})
    _refused(lambda: client.v1.prices.create({
        "currency": "usd", "product": product.id, "billing_scheme": "tiered", "tiers_mode": "volume",
        "tiers": [{"up_to": 5, "unit_amount": 700}, {"up_to": "inf", "unit_amount": 600}],
        "transform_quantity": {"divide_by": 1000, "round": "up"}}), "transform_quantity",
             "cannot be combined with tiers")
    assert client.v1.prices.list().data == []


# -- events ---------------------------------------------------------------------------------------
def test_an_event_exactly_thirty_days_old_is_still_listed_and_retrieved(sb, client):
    """GET /v1/events reaches back 30 days: at created + 30 x 86400 s the event is still both listed
    and retrievable (one second later neither: test_events_list_filters_and_reaches_back_30_days)."""
    t0 = ts("2026-09-01T00:00:00")
    sb.set_now(t0)
    client.v1.customers.create({"name": "old"})
    [event] = client.v1.events.list({"type": "customer.created"}).data
    sb.set_now(t0 + 30 * 86400)
    assert [e.id for e in client.v1.events.list({"type": "customer.created"}).data] == [event.id]
    assert client.v1.events.retrieve(event.id).created == t0


# -- test clocks ----------------------------------------------------------------------------------
def test_a_test_clock_cannot_be_advanced_to_its_own_frozen_time(sb, client):
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    _refused(lambda: client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT}), "frozen_time",
             "later than its current frozen_time")
    assert client.v1.test_helpers.test_clocks.retrieve(clock.id).status == "ready"


def test_deleting_a_test_clock_deletes_its_customers(sb, client):
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    on_clock = client.v1.customers.create({"name": "on clock", "test_clock": clock.id})
    plain = client.v1.customers.create({"name": "plain"})
    client.v1.test_helpers.test_clocks.delete(clock.id)
    with pytest.raises(stripe.InvalidRequestError) as missing:
        client.v1.customers.retrieve(on_clock.id)
    assert (missing.value.http_status, missing.value.code) == (404, "resource_missing")
    assert client.v1.customers.retrieve(plain.id).name == "plain"


# -- invoice items --------------------------------------------------------------------------------
def test_an_item_period_may_start_and_end_at_the_same_second_but_not_end_before_it(sb, client):
    """spec, invoiceitem `period.end`: "must be greater than or equal to the start"."""
    customer = client.v1.customers.create({"name": "Acme"})
    item = client.v1.invoice_items.create({"customer": customer.id, "amount": 500, "currency": "usd",
                                           "period": {"start": OCT, "end": OCT}})
    assert (item.period.start, item.period.end) == (OCT, OCT)
    _refused(lambda: client.v1.invoice_items.create({"customer": customer.id, "amount": 500, "currency": "usd",
                                                     "period": {"start": OCT, "end": OCT - 1}}), "period[end]",
             "greater than or equal to its start")
    assert [i.id for i in client.v1.invoice_items.list().data] == [item.id]


def test_an_item_added_to_a_draft_takes_the_drafts_currency(sb, client):
    """A multi-currency customer (docs: invoicing/multi-currency-customers): its first item is in usd
    (the customer's currency from then on), its subscription in eur. An item put on the eur draft
    without a currency is in eur; one in usd is refused and nothing is created."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    customer = client.v1.customers.create({"name": "Acme", "test_clock": clock.id})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 100, "currency": "usd"})
    _, eur = metered_price(client, "eur_calls", currency="eur", unit_amount=25)
    client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": eur.id}], "billing_cycle_anchor": NOV})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    draft = cycle_invoice(client, customer)
    assert (draft.status, draft.currency) == ("draft", "eur")
    item = client.v1.invoice_items.create({"customer": customer.id, "amount": 2500, "invoice": draft.id})
    assert (item.currency, item.invoice) == ("eur", draft.id)
    _refused(lambda: client.v1.invoice_items.create({"customer": customer.id, "amount": 700, "currency": "usd",
                                                     "invoice": draft.id}), "currency", "Invalid currency")
    assert [i.id for i in client.v1.invoice_items.list({"invoice": draft.id}).data] == [item.id]


def test_an_item_naming_another_customers_subscription_is_refused(sb, client):
    clock, price, customer, _ = _metered_customer(client)
    _, _, other, other_sub = _metered_customer(client, "Other", clock, price)
    _refused(lambda: client.v1.invoice_items.create({"customer": customer.id, "amount": 500, "currency": "usd",
                                                     "subscription": other_sub.id}), "subscription",
             "does not belong to the customer")
    assert client.v1.invoice_items.list().data == []


def test_a_zero_amount_item_is_discountable_by_default_and_a_credit_is_not(sb, client):
    """spec, POST /v1/invoiceitems `discountable`: "Defaults to false for prorations or negative
    invoice items, and true for all other invoice items": 0 is not negative."""
    customer = client.v1.customers.create({"name": "Acme"})
    zero = client.v1.invoice_items.create({"customer": customer.id, "amount": 0, "currency": "usd"})
    credit = client.v1.invoice_items.create({"customer": customer.id, "amount": -1, "currency": "usd"})
    assert (zero.discountable, credit.discountable) == (True, False)


def test_updating_an_item_with_a_quantity_is_refused_rather_than_ignored(sb, client):
    """Items are priced by amount alone: `quantity` on update (a documented parameter) would be
    dropped silently, so it is refused, and the item keeps its amount."""
    customer = client.v1.customers.create({"name": "Acme"})
    item = client.v1.invoice_items.create({"customer": customer.id, "amount": 500, "currency": "usd"})
    _refused(lambda: client.v1.invoice_items.update(item.id, {"quantity": 3, "amount": 900}), "quantity")
    assert (client.v1.invoice_items.retrieve(item.id).amount, client.v1.invoice_items.retrieve(item.id).quantity) == (500, 1)


# -- the generated request_schemas module -----------------------------------------------------------
def test_the_generated_module_is_exactly_what_the_spec_renders_expandable_fields_included():
    """test_the_request_schemas_module_is_what_the_spec_says... compares SCHEMAS only; EXPANDABLE (what
    expand[] may name, and the component each field holds) must be regenerated from the spec too:
    a field holding one of several components (`customer`: customer or deleted_customer) has no ref."""
    raw = spec.load(True)[0]
    assert spec.REQUEST_SCHEMAS_MODULE.read_text() == spec.render_request_schemas(raw)
    assert "customer" not in spec.expandable_fields(raw)["invoice"]["refs"]


def test_events_cannot_be_filtered_by_type_and_types_at_once(sb, client):
    client.v1.customers.create({"name": "Acme"})
    _refused(lambda: client.v1.events.list({"type": "customer.created", "types": ["product.created"]}), "type",
             "only specify one of")


# -- webhook endpoints ----------------------------------------------------------------------------
def test_a_disabled_webhook_endpoint_is_enabled_again_with_disabled_false(sb, client):
    endpoint = client.v1.webhook_endpoints.create({"url": "http://127.0.0.1:9/hooks", "enabled_events": ["*"]})
    assert client.v1.webhook_endpoints.update(endpoint.id, {"disabled": True}).status == "disabled"
    assert client.v1.webhook_endpoints.update(endpoint.id, {"disabled": False}).status == "enabled"
    assert client.v1.webhook_endpoints.retrieve(endpoint.id).status == "enabled"
