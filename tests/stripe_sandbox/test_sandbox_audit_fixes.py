"""Conformance defects an audit of the sandbox found (D1-D6, D8, D9, D11), each held to the words of
Stripe's OpenAPI description (shared/stripe-openapi/spec3-subset.json). Where the sandbox does not
model something it answers 400 naming it, rather than accepting and ignoring it."""

from __future__ import annotations

import httpx
import pytest
import stripe

from conftest import metered_price, ts

START = ts("2026-10-01T00:00:00")
DAY = 86400


def _http(sb) -> httpx.Client:
    return httpx.Client(base_url=sb.base_url, headers={"Authorization": f"Bearer {sb.api_key}"})


def _licensed(client, currency: str = "usd"):
    product = client.v1.products.create({"name": "Seats"})
    return client.v1.prices.create(
        {"currency": currency, "product": product.id, "unit_amount": 3100, "recurring": {"interval": "month"}}
    )


def _on_clock(client, **customer):
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": START})
    return clock, client.v1.customers.create({"test_clock": clock.id, **customer})


def _refused(call, param: str, words: str = "does not model") -> stripe.InvalidRequestError:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        call()
    assert refused.value.http_status == 400
    assert refused.value.param == param
    assert words in refused.value.user_message
    return refused.value


# -- D3 -------------------------------------------------------------------------------------------
def test_documented_list_filters_filter_or_are_refused(sb, client):
    """Spec, GET /v1/prices: `type` "Only return prices of type recurring or one_time", `currency`
    "Only return prices for the given currency"; GET /v1/products `ids` "Only return products with the
    given IDs. Cannot be used with starting_after or ending_before"; GET /v1/invoices and
    /v1/subscriptions `collection_method` "The collection method of the invoice[s] to retrieve";
    GET /v1/events `types` "An array of up to 20 strings". Filters the sandbox does not model are
    refused: an unfiltered list would pass for a filtered one."""
    recurring = _licensed(client)
    one_time = client.v1.prices.create({"currency": "eur", "product": recurring.product, "unit_amount": 5})
    assert [p.id for p in client.v1.prices.list({"type": "one_time"}).data] == [one_time.id]
    assert [p.id for p in client.v1.prices.list({"type": "recurring"}).data] == [recurring.id]
    assert [p.id for p in client.v1.prices.list({"currency": "eur"}).data] == [one_time.id]

    other = client.v1.products.create({"name": "Other"})
    assert [p.id for p in client.v1.products.list({"ids": [other.id]}).data] == [other.id]
    _refused(lambda: client.v1.products.list({"ids": [other.id], "starting_after": other.id}), "ids", "ids")

    charged = client.v1.customers.create({})
    sent = client.v1.customers.create({})
    client.v1.subscriptions.create({"customer": charged.id, "items": [{"price": recurring.id}]})
    by_mail = client.v1.subscriptions.create(
        {"customer": sent.id, "items": [{"price": recurring.id}], "collection_method": "send_invoice"}
    )
    assert [s.id for s in client.v1.subscriptions.list({"collection_method": "send_invoice"}).data] == [by_mail.id]
    assert [i.id for i in client.v1.invoices.list({"collection_method": "send_invoice"}).data] == [by_mail.latest_invoice]
    assert {i.collection_method for i in client.v1.invoices.list({"collection_method": "charge_automatically"}).data} == {
        "charge_automatically"
    }

    _refused(lambda: client.v1.events.list({"types": [f"invoice.t{i}" for i in range(21)]}), "types", "at most 20")
    assert client.v1.events.list({"types": [f"invoice.t{i}" for i in range(20)]}).data == []

    _refused(lambda: client.v1.prices.list({"recurring": {"interval": "month"}}), "recurring")
    _refused(lambda: client.v1.invoices.list({"due_date": {"gte": START}}), "due_date")
    _refused(lambda: client.v1.subscriptions.list({"current_period_end": {"gte": START}}), "current_period_end")
    _refused(lambda: client.v1.subscriptions.list({"current_period_start": START}), "current_period_start")
    _refused(lambda: client.v1.events.list({"delivery_success": False}), "delivery_success")


# -- D2 -------------------------------------------------------------------------------------------
def test_status_ended_lists_canceled_and_expired_subscriptions(sb, client):
    """Spec, GET /v1/subscriptions `status`: "Pass `ended` to find subscriptions that are canceled and
    subscriptions that are expired due to incomplete payment"."""
    price = _licensed(client)
    clock, good = _on_clock(client)
    bad = client.v1.customers.create({"test_clock": clock.id, "metadata": {"sandbox_payment_behavior": "fails"}})
    live = client.v1.customers.create({"test_clock": clock.id})
    canceled = client.v1.subscriptions.create({"customer": good.id, "items": [{"price": price.id}]})
    client.v1.subscriptions.cancel(canceled.id)
    expired = client.v1.subscriptions.create({"customer": bad.id, "items": [{"price": price.id}]})
    client.v1.subscriptions.create({"customer": live.id, "items": [{"price": price.id}]})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": START + DAY})
    assert client.v1.subscriptions.retrieve(expired.id).status == "incomplete_expired"
    ended = client.v1.subscriptions.list({"status": "ended", "test_clock": clock.id}).data
    assert sorted((s.id, s.status) for s in ended) == sorted([(canceled.id, "canceled"), (expired.id, "incomplete_expired")])


# -- D8 -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, path, operation",
    [
        ("GET", "/v1/customers/search?query=email:'a@b.c'", "GET /v1/customers/search"),
        ("GET", "/v1/customers/search", "GET /v1/customers/search"),
        ("GET", "/v1/invoices/search?query=status:'open'", "GET /v1/invoices/search"),
        ("GET", "/v1/prices/search?query=active:'true'", "GET /v1/prices/search"),
        ("GET", "/v1/subscriptions/search?query=status:'active'", "GET /v1/subscriptions/search"),
        ("POST", "/v1/invoices/create_preview", "POST /v1/invoices/create_preview"),
        ("POST", "/v1/invoices/in_123/send", "POST /v1/invoices/{}/send"),
        ("POST", "/v1/invoices/in_123/lines/il_123", "POST /v1/invoices/{}/lines/{}"),
        ("POST", "/v1/subscriptions/sub_123/resume", "POST /v1/subscriptions/{}/resume"),
        ("DELETE", "/v1/products/prod_123", "DELETE /v1/products/{}"),
    ],
)
def test_operations_the_sandbox_does_not_model_are_named_not_routed_elsewhere(sb, method, path, operation):
    """The spec has `GET /v1/customers/search` ("Search for customers you've previously created") and
    `POST /v1/invoices/create_preview` beside `GET /v1/customers/{customer}` and `POST
    /v1/invoices/{invoice}`: a literal segment is its own operation, never an id. The sandbox models
    none of these operations and says so, rather than "No such customer: 'search'"."""
    with _http(sb) as http:
        answer = http.request(method, path)
    assert answer.status_code == 400
    assert f"does not model {operation}" in answer.json()["error"]["message"]


def test_create_preview_does_not_update_an_invoice_named_create_preview(sb):
    """Spec: POST /v1/invoices/create_preview is an operation of its own, not POST /v1/invoices/{invoice}."""
    with _http(sb) as http:
        # a parameter of the invoice update: routed there, this was a 404 "No such invoice: 'create_preview'"
        answer = http.post("/v1/invoices/create_preview", data={"description": "x"})
        assert answer.status_code == 400
        assert "does not model POST /v1/invoices/create_preview" in answer.json()["error"]["message"]


# -- D6 -------------------------------------------------------------------------------------------
def test_subscription_updates_refuse_parameters_they_do_not_apply(sb, client):
    """Spec, POST /v1/subscriptions/{id} takes `cancel_at` ("A timestamp at which the subscription
    should cancel"), `pause_collection`, `proration_behavior` ("Determines how to handle prorations
    when the billing cycle changes ... or if an item's quantity changes. The default value is
    create_prorations") and more. The sandbox applies metadata, description, cancel_at_period_end and
    items (without prorating): the rest is refused, and a refused update changes nothing."""
    price = _licensed(client)
    customer = client.v1.customers.create({})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id, "quantity": 2}]})
    item = sub["items"].data[0]
    _refused(lambda: client.v1.subscriptions.update(sub.id, {"cancel_at": START + DAY, "metadata": {"k": "v"}}), "cancel_at")
    _refused(lambda: client.v1.subscriptions.update(sub.id, {"pause_collection": {"behavior": "void"}}), "pause_collection")
    _refused(lambda: client.v1.subscriptions.update(sub.id, {"items": [{"id": item.id, "quantity": 3}]}),
             "proration_behavior", "proration_behavior")
    _refused(lambda: client.v1.subscriptions.update(
        sub.id, {"items": [{"id": item.id, "quantity": 3}], "proration_behavior": "create_prorations"}),
        "proration_behavior")
    _refused(lambda: client.v1.subscriptions.update(
        sub.id, {"items": [{"id": item.id, "quantity": 3, "tax_rates": ["txr_1"]}], "proration_behavior": "none"}),
        "items[0][tax_rates]")
    unchanged = client.v1.subscriptions.retrieve(sub.id)
    assert (unchanged.cancel_at, unchanged.pause_collection, unchanged.metadata.to_dict()) == (None, None, {})
    assert unchanged["items"].data[0].quantity == 2

    updated = client.v1.subscriptions.update(
        sub.id, {"items": [{"id": item.id, "quantity": 3}], "proration_behavior": "none", "metadata": {"k": "v"}})
    assert (updated["items"].data[0].quantity, updated.metadata.k) == (3, "v")

    _refused(lambda: client.v1.subscription_items.update(item.id, {"quantity": 4, "proration_behavior": "always_invoice"}),
             "proration_behavior")
    _refused(lambda: client.v1.subscription_items.update(item.id, {"price": price.id, "proration_behavior": "none"}),
             "price")
    assert client.v1.subscription_items.update(item.id, {"quantity": 4, "proration_behavior": "none"}).quantity == 4


# -- D4 -------------------------------------------------------------------------------------------
def test_a_price_cannot_use_a_deactivated_meter(sb, client):
    """A metered price bills its meter's usage ("A metered price needs recurring.meter"); Stripe refuses a
    deactivated meter: "You can't attach a deactivated meter to a price"."""
    meter, _ = metered_price(client)
    client.v1.billing.meters.deactivate(meter.id)
    product = client.v1.products.create({"name": "Calls"})
    refused = _refused(
        lambda: client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 5,
                                         "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}}),
        "recurring[meter]", "deactivated meter")
    assert refused.http_status == 400
    assert len(client.v1.prices.list({"product": product.id}).data) == 0


# -- D5 -------------------------------------------------------------------------------------------
def test_a_send_invoice_subscription_is_sent_its_first_invoice_not_charged(sb, client):
    """Spec, subscription `collection_method`: "When charging automatically, Stripe will attempt to pay
    this subscription at the end of the cycle using the default source attached to the customer. When
    sending an invoice, Stripe will email your customer an invoice with payment instructions";
    `days_until_due`: "Number of days a customer has to pay invoices generated by this subscription"."""
    price = _licensed(client)
    customer = client.v1.customers.create({})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}],
                                          "collection_method": "send_invoice", "days_until_due": 7})
    first = client.v1.invoices.retrieve(sub.latest_invoice)
    assert (first.status, first.attempted, first.attempt_count, first.amount_due) == ("open", False, 0, 3100)
    assert first.due_date == first.status_transitions.finalized_at + 7 * DAY
    assert sub.status == "active"


# -- D1 -------------------------------------------------------------------------------------------
def test_a_finalized_invoice_takes_non_monetary_updates_and_auto_advance_false_stops_collection(sb, client):
    """Spec, POST /v1/invoices/{invoice}: "Once an invoice is finalized, monetary values, as well as
    collection_method, become uneditable. If you would like to stop the Stripe Billing engine from
    automatically finalizing, reattempting payments on, ... invoices, pass auto_advance=false"."""
    price = _licensed(client)
    clock, customer = _on_clock(client)
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    sb.set_payment_behavior(customer.id, "fails")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": ts("2026-11-01T02:00:00")})
    invoice = client.v1.invoices.retrieve(client.v1.subscriptions.retrieve(sub.id).latest_invoice)
    assert (invoice.status, invoice.attempt_count) == ("open", 1)
    assert invoice.next_payment_attempt is not None

    refused = _refused(lambda: client.v1.invoices.update(invoice.id, {"collection_method": "send_invoice"}),
                       "collection_method", "uneditable")
    assert refused.code == "invoice_not_editable"
    _refused(lambda: client.v1.invoices.update(invoice.id, {"footer": "Thanks"}), "footer")

    updated = client.v1.invoices.update(invoice.id, {"auto_advance": False, "description": "On hold"})
    assert (updated.auto_advance, updated.next_payment_attempt, updated.description) == (False, None, "On hold")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": ts("2026-11-20T00:00:00")})
    assert client.v1.invoices.retrieve(invoice.id).attempt_count == 1  # no automatic retry


# -- D9 -------------------------------------------------------------------------------------------
def test_only_the_specs_expandable_fields_expand(sb, client):
    """Spec: a subscription_item's `x-expandableFields` are billing_thresholds, discounts, price and
    tax_rates: its `subscription` id is not expandable (the response schema says `subscription` is a
    string). Nested paths are checked at every step (subscription -> latest_invoice -> customer)."""
    price = _licensed(client)
    customer = client.v1.customers.create({})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    item = sub["items"].data[0]
    _refused(lambda: client.v1.subscription_items.retrieve(item.id, {"expand": ["subscription"]}), "expand",
             "cannot be expanded")
    _refused(lambda: client.v1.subscriptions.retrieve(sub.id, {"expand": ["latest_invoice.subscription"]}), "expand",
             "cannot be expanded")
    nested = client.v1.subscriptions.retrieve(sub.id, {"expand": ["latest_invoice.customer", "items.data.price.product"]})
    assert nested.latest_invoice.customer.id == customer.id
    assert nested["items"].data[0].price.product.id == price.product


# -- D11 ------------------------------------------------------------------------------------------
def test_a_cursor_that_has_left_the_filter_still_marks_the_page(sb, client):
    """Spec, `starting_after`: "A cursor for use in pagination. starting_after is an object ID that
    defines your place in the list." The place stays when the object no longer matches the filter (a
    price deactivated while listing active prices), rather than answering 400."""
    product = client.v1.products.create({"name": "Plans"})
    first, second, third = (client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": n})
                            for n in (1, 2, 3))
    page = client.v1.prices.list({"active": True, "limit": 1})
    assert [p.id for p in page.data] == [third.id]
    client.v1.prices.update(third.id, {"active": False})
    after = client.v1.prices.list({"active": True, "limit": 1, "starting_after": third.id})
    assert ([p.id for p in after.data], after.has_more) == ([second.id], True)
    client.v1.prices.update(first.id, {"active": False})
    before = client.v1.prices.list({"active": True, "ending_before": first.id})
    assert [p.id for p in before.data] == [second.id]
    _refused(lambda: client.v1.prices.list({"starting_after": "price_missing"}), "starting_after", "Invalid starting_after")
