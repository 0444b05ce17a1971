"""Every endpoint, through the official SDK and over raw HTTP; each response (and error body) is
validated against shared/stripe-openapi/spec3-subset.json by the ``sb`` fixture (strict: no field
the spec does not list)."""

from __future__ import annotations

import json

import httpx
import pytest
import stripe

from conftest import ts, uncovered_routes
from metering.stripe_sandbox import spec


def _catalog(client, window=None, formula="sum"):
    meter_params = {
        "display_name": "API calls",
        "event_name": f"metering_api_calls_{window or 'raw'}_{formula}",
        "default_aggregation": {"formula": formula},
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"},
    }
    if window:
        meter_params["event_time_window"] = window
    meter = client.v1.billing.meters.create(meter_params)
    product = client.v1.products.create({"name": "API calls", "metadata": {"meter": "api_calls"}})
    price = client.v1.prices.create(
        {
            "currency": "usd",
            "product": product.id,
            "billing_scheme": "tiered",
            "tiers_mode": "graduated",
            "tiers": [
                {"up_to": 5, "unit_amount_decimal": "700"},
                {"up_to": 10, "unit_amount": 650, "flat_amount": 100},
                {"up_to": "inf", "unit_amount_decimal": "600.5", "flat_amount_decimal": "10.25"},
            ],
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
            "metadata": {"plan": "pro"},
        }
    )
    return meter, product, price


def test_every_endpoint_through_the_sdk(sb, client):
    start = ts("2026-10-01T00:00:00")
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": start, "name": "october"})
    assert client.v1.test_helpers.test_clocks.retrieve(clock.id).frozen_time == start
    assert [c.id for c in client.v1.test_helpers.test_clocks.list().data] == [clock.id]
    endpoint = client.v1.webhook_endpoints.create({"url": "http://127.0.0.1:9/hook", "enabled_events": ["invoice.paid"]})
    assert endpoint.secret.startswith("whsec_")
    assert "secret" not in client.v1.webhook_endpoints.retrieve(endpoint.id)
    client.v1.webhook_endpoints.update(endpoint.id, {"disabled": True})
    assert client.v1.webhook_endpoints.list().data[0].status == "disabled"

    customer = client.v1.customers.create(
        {"name": "Acme", "email": "a@example.com", "metadata": {"customer_id": "c-1"}, "test_clock": clock.id}
    )
    assert customer.id.startswith("cus_") and customer.test_clock == clock.id and customer.created == start
    client.v1.customers.update(customer.id, {"metadata": {"tier": "gold"}})
    assert client.v1.customers.retrieve(customer.id).metadata.to_dict() == {"customer_id": "c-1", "tier": "gold"}
    # a customer on a test clock is listed only with `test_clock` (test_sandbox_lists_and_test_clocks.py)
    assert client.v1.customers.list({"limit": 1, "test_clock": clock.id}).data[0].id == customer.id

    meter, product, price = _catalog(client)
    assert meter.id.startswith("mtr_") and price.id.startswith("price_") and product.id.startswith("prod_")
    client.v1.billing.meters.update(meter.id, {"display_name": "API calls (v2)"})
    assert client.v1.billing.meters.retrieve(meter.id).display_name == "API calls (v2)"
    assert client.v1.billing.meters.list({"status": "active"}).data[0].id == meter.id
    client.v1.products.update(product.id, {"description": "calls"})
    assert client.v1.products.retrieve(product.id).description == "calls"
    assert client.v1.products.list().data[0].id == product.id
    client.v1.prices.update(price.id, {"nickname": "api"})
    assert client.v1.prices.retrieve(price.id).nickname == "api"
    assert client.v1.prices.list({"product": product.id}).data[0].id == price.id
    per_unit = client.v1.prices.create(
        {
            "currency": "usd",
            "product": product.id,
            "unit_amount_decimal": "0.125",
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    assert per_unit.unit_amount is None and str(per_unit.unit_amount_decimal) == "0.125"

    sub = client.v1.subscriptions.create(
        {
            "customer": customer.id,
            "items": [{"price": price.id}],
            "billing_cycle_anchor": ts("2026-11-01T00:00:00"),
            "metadata": {"customer_id": "c-1"},
            "expand": ["latest_invoice"],
        }
    )
    assert sub.status == "active" and sub.latest_invoice.billing_reason == "subscription_create"
    item = sub["items"].data[0]
    assert (item.current_period_start, item.current_period_end) == (start, ts("2026-11-01T00:00:00"))
    assert client.v1.subscriptions.retrieve(sub.id).id == sub.id
    client.v1.subscriptions.update(sub.id, {"metadata": {"x": "1"}})
    assert client.v1.subscriptions.list({"customer": customer.id}).data[0].id == sub.id
    assert client.v1.subscription_items.list({"subscription": sub.id}).data[0].id == item.id
    assert client.v1.subscription_items.retrieve(item.id).price.id == price.id
    client.v1.subscription_items.update(item.id, {"metadata": {"k": "v"}})

    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": start + 3 * 86400})
    event = client.v1.billing.meter_events.create(
        {
            "event_name": meter.event_name,
            "payload": {"stripe_customer_id": customer.id, "value": "12"},
            "identifier": "evt-1",
            "timestamp": start + 3600,
        }
    )
    assert event.identifier == "evt-1"
    client.v1.billing.meter_events.create(
        {"event_name": meter.event_name, "payload": {"stripe_customer_id": customer.id, "value": "5"}, "identifier": "evt-2", "timestamp": start + 7200}
    )
    adjustment = client.v1.billing.meter_event_adjustments.create(
        {"event_name": meter.event_name, "type": "cancel", "cancel": {"identifier": "evt-2"}}
    )
    assert adjustment.status == "complete"
    summaries = client.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": customer.id, "start_time": start, "end_time": ts("2026-11-01T00:00:00")}
    )
    assert [s.aggregated_value for s in summaries.data] == [12]

    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": ts("2026-11-01T00:30:00")})
    invoices = client.v1.invoices.list({"customer": customer.id})
    cycle = invoices.data[0]
    # graduated: 5 x 7.00 + 5 x 6.50 + 1.00 + 2 x 6.005 + 0.1025 = 80.6125 -> 8061 cents
    assert (cycle.status, cycle.amount_due, cycle.billing_reason) == ("draft", 8061, "subscription_cycle")
    lines = client.v1.invoices.line_items.list(cycle.id)
    assert lines.data[0].pricing.price_details.price == price.id
    top_up = client.v1.invoice_items.create(
        {"customer": customer.id, "amount": 500, "invoice": cycle.id, "description": "Minimum top-up", "metadata": {"k": "v"}}
    )
    assert client.v1.invoices.retrieve(cycle.id).amount_due == 8061 + 500
    assert client.v1.invoice_items.retrieve(top_up.id, {"expand": ["invoice"]}).invoice.id == cycle.id
    assert client.v1.invoice_items.update(top_up.id, {"amount": 400}).amount == 400
    assert [i.id for i in client.v1.invoice_items.list({"invoice": cycle.id}).data] == [top_up.id]
    assert client.v1.invoice_items.delete(top_up.id).deleted
    credit = client.v1.invoice_items.create({"customer": customer.id, "amount": -100, "subscription": sub.id})
    assert [i.id for i in client.v1.invoice_items.list({"customer": customer.id, "pending": True}).data] == [credit.id]
    client.v1.invoices.update(cycle.id, {"metadata": {"customer_id": "c-1"}})
    finalized = client.v1.invoices.finalize_invoice(cycle.id, {"auto_advance": False})
    assert finalized.status == "open" and finalized.number
    paid = client.v1.invoices.pay(cycle.id)
    assert paid.status == "paid" and paid.amount_paid == 8061
    assert client.v1.invoices.retrieve(cycle.id, {"expand": ["customer"]}).customer.id == customer.id

    events = client.v1.events.list({"type": "invoice.*"})
    assert {e.type for e in events.data} >= {"invoice.created", "invoice.finalized", "invoice.paid"}
    assert client.v1.events.retrieve(events.data[0].id).id == events.data[0].id

    _void_and_uncollectible(sb, client)
    extra_item = client.v1.subscription_items.create({"subscription": sub.id, "price": per_unit.id})
    assert extra_item.subscription == sub.id
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": ts("2026-12-01T00:10:00")})
    one_off = client.v1.invoices.create({"customer": customer.id, "description": "One-off"})
    assert client.v1.invoices.delete(one_off.id).deleted
    client.v1.billing.meters.deactivate(meter.id)
    client.v1.billing.meters.reactivate(meter.id)
    client.v1.subscription_items.delete(item.id)
    client.v1.subscriptions.cancel(sub.id)
    client.v1.webhook_endpoints.delete(endpoint.id)
    client.v1.customers.delete(customer.id)
    assert client.v1.customers.retrieve(customer.id).deleted is True
    client.v1.test_helpers.test_clocks.delete(clock.id)
    assert uncovered_routes(sb.recorder.responses) == []


def _void_and_uncollectible(sb, client):
    start = ts("2026-10-01T00:00:00")
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": start})
    meter, _, price = _catalog(client, window="day")
    invoice_ids = []
    for name in ("a", "b"):
        customer = client.v1.customers.create({"name": name, "test_clock": clock.id})
        client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
        client.v1.billing.meter_events.create(
            {"event_name": meter.event_name, "payload": {"stripe_customer_id": customer.id, "value": "1"}, "timestamp": start}
        )
        sb.set_payment_behavior(customer.id, "fails")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": ts("2026-11-01T02:00:00")})
    for invoice in client.v1.invoices.list({"status": "open", "created": {"gte": ts("2026-11-01T00:00:00")}}).data:
        invoice_ids.append(invoice.id)
    assert len(invoice_ids) == 2
    assert client.v1.invoices.void_invoice(invoice_ids[0]).status == "void"
    assert client.v1.invoices.mark_uncollectible(invoice_ids[1]).status == "uncollectible"


def test_raw_http_responses_and_errors(sb):
    auth = {"Authorization": f"Bearer {sb.api_key}"}
    with httpx.Client(base_url=sb.base_url, headers=auth) as http:
        meter = http.post(
            "/v1/billing/meters",
            data={"display_name": "Tokens", "event_name": "metering_tokens", "default_aggregation[formula]": "sum"},
        ).json()
        product = http.post("/v1/products", data={"name": "Tokens"}).json()
        price = http.post(
            "/v1/prices",
            data={
                "currency": "usd",
                "product": product["id"],
                "billing_scheme": "tiered",
                "tiers_mode": "volume",
                "tiers[0][up_to]": "5",
                "tiers[0][unit_amount]": "700",
                "tiers[1][up_to]": "inf",
                "tiers[1][unit_amount]": "600",
                "recurring[interval]": "month",
                "recurring[usage_type]": "metered",
                "recurring[meter]": meter["id"],
                "expand[]": "tiers",
            },
        ).json()
        assert [t["up_to"] for t in price["tiers"]] == [5, None]
        assert "tiers" not in http.get(f"/v1/prices/{price['id']}").json()
        assert http.get(f"/v1/prices/{price['id']}", params={"expand[]": "tiers"}).json()["tiers"][1]["unit_amount"] == 600
        listed = http.get("/v1/prices", params={"expand[]": "data.tiers"}).json()["data"]
        assert [len(p["tiers"]) for p in listed] == [2]
        customer = http.post("/v1/customers", data={"metadata[customer_id]": "c-9"}).json()
        sub = http.post(
            "/v1/subscriptions",
            data={"customer": customer["id"], "items[0][price]": price["id"], "expand[]": "customer"},
        ).json()
        assert sub["customer"]["id"] == customer["id"]
        listed = http.get("/v1/subscriptions", params={"customer": customer["id"], "expand[]": "data.customer"}).json()
        assert listed["data"][0]["customer"]["id"] == customer["id"]
        for path in ("/v1/customers", "/v1/products", "/v1/prices", "/v1/billing/meters", "/v1/events", "/v1/invoices"):
            page = http.get(path, params={"limit": 1}).json()
            assert page["object"] == "list" and len(page["data"]) == 1
        errors = [
            http.get("/v1/customers/cus_missing"),
            http.post("/v1/customers", data={"metadata": "x", "a[": "1"}),
            http.post("/v1/prices", data={"currency": "usd"}),
            http.get("/v1/nowhere"),
            http.get("/v1/customers", params={"limit": "1000"}),
            http.post("/v1/billing/meter_events", data={"event_name": "metering_tokens"}),
            http.get("/v1/billing/meters/" + meter["id"] + "/event_summaries", params={"customer": customer["id"], "start_time": "61", "end_time": "120"}),
            http.get("/v1/customers", headers={"Authorization": "Bearer sk_live_nope"}),
            http.get("/v1/customers", headers={"Authorization": ""}),
            http.post("/v1/customers", data={"nmae": "typo"}),
        ]
    assert [r.status_code for r in errors] == [404, 400, 400, 404, 400, 400, 400, 401, 401, 400]
    assert errors[-1].json()["error"] | {"doc_url": None} == {
        "type": "invalid_request_error", "code": "parameter_unknown", "param": "nmae",
        "message": "Received unknown parameter: nmae", "doc_url": None,
        "request_log_url": errors[-1].json()["error"]["request_log_url"],
    }
    for response in errors:
        spec.validate_object("error", response.json())
        assert response.headers["Request-Id"].startswith("req_")


def test_pagination_follows_starting_after_and_ending_before(sb, client):
    ids = [client.v1.customers.create({"name": f"c{i}"}).id for i in range(5)]
    newest_first = list(reversed(ids))
    first = client.v1.customers.list({"limit": 2})
    assert [c.id for c in first.data] == newest_first[:2] and first.has_more
    second = client.v1.customers.list({"limit": 2, "starting_after": first.data[-1].id})
    assert [c.id for c in second.data] == newest_first[2:4] and second.has_more
    third = client.v1.customers.list({"limit": 2, "starting_after": second.data[-1].id})
    assert [c.id for c in third.data] == newest_first[4:] and not third.has_more
    back = client.v1.customers.list({"limit": 2, "ending_before": third.data[0].id})
    assert [c.id for c in back.data] == newest_first[2:4]
    assert [c.id for c in client.v1.customers.list({"limit": 2}).auto_paging_iter()] == newest_first


def test_global_sdk_style_works(sb):
    previous = (stripe.api_key, stripe.api_base, stripe.meter_events_api_base)
    stripe.api_key, stripe.api_base, stripe.meter_events_api_base = sb.api_key, sb.base_url, sb.base_url
    try:
        customer = stripe.Customer.create(name="global")
        assert stripe.Customer.retrieve(customer.id).name == "global"
    finally:
        stripe.api_key, stripe.api_base, stripe.meter_events_api_base = previous


def test_a_sandbox_started_with_a_key_accepts_only_that_key():
    from metering.stripe_sandbox.testing import running_sandbox

    with running_sandbox(api_key="sk_test_only_this_one") as handle:
        assert handle.client().v1.customers.list().data == []
        other = stripe.StripeClient("sk_test_another", base_addresses={"api": handle.base_url})
        with pytest.raises(stripe.AuthenticationError):
            other.v1.customers.list()


def test_spec_converter_handles_nullable_refs_and_strictness():
    converted = spec.convert({"anyOf": [{"$ref": "#/components/schemas/price"}], "nullable": True, "x-foo": 1}, True)
    assert converted == {"anyOf": [{"anyOf": [{"$ref": "#/definitions/price"}]}, {"type": "null"}]}
    strict = spec.convert({"type": "object", "properties": {"a": {"type": "string", "nullable": True}}}, True)
    assert strict["additionalProperties"] is False
    assert strict["properties"]["a"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    with pytest.raises(Exception):
        spec.validate_object("customer", {"id": "cus_1", "object": "customer", "created": 1, "livemode": False, "invented": 1})
    spec.validate_object("customer", {"id": "cus_1", "object": "customer", "created": 1, "livemode": False})
    json.dumps(spec.load(True)[1]["customer"])  # the cached definitions are plain JSON


def test_a_conversion_cached_by_another_converter_is_not_read(tmp_path, monkeypatch):
    """The disk cache was keyed by the spec alone: a change to the converter (a fix, or a mutation under
    test) was hidden by the definitions an older one had written. Here an "older converter" wrote a
    customer schema that takes anything, under the spec-only key."""
    import hashlib

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    stale = tmp_path / "stripe-sandbox-spec" / f"{hashlib.sha256(spec.spec_path().read_bytes()).hexdigest()[:16]}-strict.json"
    stale.parent.mkdir()
    stale.write_text(json.dumps({"customer": {}}))
    spec.load.cache_clear()
    try:
        assert spec.load(True)[1]["customer"] != {}
        assert len(list(stale.parent.glob("*-strict.json"))) == 2   # its own conversion, beside the stale one
    finally:
        spec.load.cache_clear()


def test_every_endpoint_over_raw_http(sb):
    """The same tour with hand-written form bodies and query strings (httpx), no SDK involved."""
    t0 = ts("2026-10-01T00:00:00")
    auth = {"Authorization": f"Bearer {sb.api_key}"}
    with httpx.Client(base_url=sb.base_url, headers=auth) as http:

        def ok(method: str, path: str, **kwargs) -> dict:
            response = http.request(method, path, **kwargs)
            assert response.status_code == 200, (method, path, response.text)
            return response.json()

        clock = ok("POST", "/v1/test_helpers/test_clocks", data={"frozen_time": t0, "name": "raw"})
        ok("GET", f"/v1/test_helpers/test_clocks/{clock['id']}")
        ok("GET", "/v1/test_helpers/test_clocks")
        hook = ok("POST", "/v1/webhook_endpoints", data={"url": "http://127.0.0.1:9/x", "enabled_events[]": "invoice.paid"})
        ok("GET", f"/v1/webhook_endpoints/{hook['id']}")
        ok("POST", f"/v1/webhook_endpoints/{hook['id']}", data={"description": "raw"})
        ok("GET", "/v1/webhook_endpoints")
        customer = ok("POST", "/v1/customers", data={"name": "Raw", "test_clock": clock["id"], "metadata[customer_id]": "raw"})
        ok("GET", f"/v1/customers/{customer['id']}", params={"expand[]": "test_clock"})
        ok("POST", f"/v1/customers/{customer['id']}", data={"email": "raw@example.com"})
        ok("GET", "/v1/customers", params={"email": "raw@example.com"})
        meter = ok("POST", "/v1/billing/meters", data={
            "display_name": "Storage", "event_name": "metering_storage_gb", "default_aggregation[formula]": "last",
            "customer_mapping[type]": "by_id", "customer_mapping[event_payload_key]": "stripe_customer_id",
            "value_settings[event_payload_key]": "value", "event_time_window": "day"})
        ok("GET", f"/v1/billing/meters/{meter['id']}")
        ok("POST", f"/v1/billing/meters/{meter['id']}", data={"display_name": "Storage GB"})
        ok("GET", "/v1/billing/meters")
        product = ok("POST", "/v1/products", data={"name": "Storage"})
        ok("GET", f"/v1/products/{product['id']}")
        ok("POST", f"/v1/products/{product['id']}", data={"metadata[k]": "v"})
        ok("GET", "/v1/products", params={"active": "true"})
        price = ok("POST", "/v1/prices", data={
            "currency": "usd", "product": product["id"], "unit_amount_decimal": "12.5", "lookup_key": "storage",
            "recurring[interval]": "month", "recurring[usage_type]": "metered", "recurring[meter]": meter["id"]})
        ok("GET", f"/v1/prices/{price['id']}", params={"expand[]": "product"})
        ok("POST", f"/v1/prices/{price['id']}", data={"metadata[k]": "v"})
        ok("GET", "/v1/prices", params={"lookup_keys[]": "storage"})
        fee = ok("POST", "/v1/prices", data={"currency": "usd", "product": product["id"], "unit_amount": "500", "recurring[interval]": "month"})
        sub = ok("POST", "/v1/subscriptions", data={
            "customer": customer["id"], "items[0][price]": price["id"], "billing_cycle_anchor": ts("2026-11-01T00:00:00")})
        ok("GET", f"/v1/subscriptions/{sub['id']}")
        ok("POST", f"/v1/subscriptions/{sub['id']}", data={"metadata[customer_id]": "raw"})
        ok("GET", "/v1/subscriptions", params={"status": "all"})
        # the sandbox prorates no change to licensed items: it asks for proration_behavior=none
        item = ok("POST", "/v1/subscription_items", data={
            "subscription": sub["id"], "price": fee["id"], "quantity": "2", "proration_behavior": "none"})
        ok("GET", f"/v1/subscription_items/{item['id']}")
        ok("POST", f"/v1/subscription_items/{item['id']}", data={"quantity": "3", "proration_behavior": "none"})
        ok("GET", "/v1/subscription_items", params={"subscription": sub["id"]})
        ok("POST", "/v1/billing/meter_events", data={
            "event_name": "metering_storage_gb", "payload[stripe_customer_id]": customer["id"], "payload[value]": "7.25", "identifier": "raw-1"})
        ok("POST", "/v1/billing/meter_events", data={
            "event_name": "metering_storage_gb", "payload[stripe_customer_id]": customer["id"], "payload[value]": "9", "identifier": "raw-2"})
        ok("POST", "/v1/billing/meter_event_adjustments", data={"event_name": "metering_storage_gb", "type": "cancel", "cancel[identifier]": "raw-2"})
        summaries = ok("GET", f"/v1/billing/meters/{meter['id']}/event_summaries", params={
            "customer": customer["id"], "start_time": t0, "end_time": t0 + 86400, "value_grouping_window": "day"})
        assert [s["aggregated_value"] for s in summaries["data"]] == [7.25]
        ok("POST", f"/v1/test_helpers/test_clocks/{clock['id']}/advance", data={"frozen_time": ts("2026-11-01T00:05:00")})
        invoices = ok("GET", "/v1/invoices", params={"customer": customer["id"], "status": "draft"})["data"]
        [draft] = invoices
        # 7.25 GB x 12.5 cents = 90.625 -> 91, plus 3 x 5.00 in advance for November
        assert draft["amount_due"] == 91 + 1500
        ok("GET", f"/v1/invoices/{draft['id']}", params={"expand[]": "customer"})
        credit = ok("POST", "/v1/invoiceitems", data={
            "customer": customer["id"], "amount": "-250", "currency": "usd", "invoice": draft["id"], "description": "credit",
            "period[start]": t0, "period[end]": ts("2026-11-01T00:00:00") - 1, "metadata[k]": "v"})
        assert ok("GET", f"/v1/invoices/{draft['id']}")["amount_due"] == 91 + 1500 - 250
        ok("GET", f"/v1/invoiceitems/{credit['id']}", params={"expand[]": "customer"})
        ok("POST", f"/v1/invoiceitems/{credit['id']}", data={"description": "goodwill", "metadata[k]": ""})
        ok("GET", "/v1/invoiceitems", params={"invoice": draft["id"], "limit": "1"})
        ok("DELETE", f"/v1/invoiceitems/{credit['id']}")
        pending = ok("POST", "/v1/invoiceitems", data={"customer": customer["id"], "amount": "300", "subscription": sub["id"]})
        assert ok("GET", "/v1/invoiceitems", params={"pending": "true"})["data"] == [pending]
        ok("POST", f"/v1/invoices/{draft['id']}", data={"metadata[customer_id]": "raw"})
        ok("GET", f"/v1/invoices/{draft['id']}/lines", params={"limit": "1"})
        ok("POST", f"/v1/invoices/{draft['id']}/finalize", data={"auto_advance": "false"})
        ok("POST", f"/v1/invoices/{draft['id']}/mark_uncollectible")
        ok("POST", f"/v1/invoices/{draft['id']}/void")
        ok("POST", f"/v1/test_helpers/test_clocks/{clock['id']}/advance", data={"frozen_time": ts("2026-12-01T00:05:00")})
        [december] = ok("GET", "/v1/invoices", params={"customer": customer["id"], "status": "draft"})["data"]
        ok("POST", f"/v1/invoices/{december['id']}/pay")
        ok("POST", f"/v1/test_helpers/test_clocks/{clock['id']}/advance", data={"frozen_time": ts("2027-01-01T00:05:00")})
        one_off = ok("POST", "/v1/invoices", data={
            "customer": customer["id"], "collection_method": "send_invoice", "days_until_due": "14",
            "pending_invoice_items_behavior": "include", "auto_advance": "false", "metadata[k]": "v"})
        ok("DELETE", f"/v1/invoices/{one_off['id']}")
        events = ok("GET", "/v1/events", params={"types[]": ["invoice.voided", "invoice.marked_uncollectible"]})["data"]
        assert [e["type"] for e in events] == ["invoice.voided", "invoice.marked_uncollectible"]
        ok("GET", f"/v1/events/{events[0]['id']}")
        ok("POST", f"/v1/billing/meters/{meter['id']}/deactivate")
        ok("POST", f"/v1/billing/meters/{meter['id']}/reactivate")
        ok("DELETE", f"/v1/subscription_items/{item['id']}", params={"proration_behavior": "none"})
        ok("DELETE", f"/v1/subscriptions/{sub['id']}")
        ok("DELETE", f"/v1/webhook_endpoints/{hook['id']}")
        ok("DELETE", f"/v1/customers/{customer['id']}")
        ok("DELETE", f"/v1/test_helpers/test_clocks/{clock['id']}")
    assert uncovered_routes(sb.recorder.responses) == []
