"""Requests are held to the request schemas of Stripe's OpenAPI description, generically, for every
operation the sandbox serves: required parameters, ``maxLength``, ``enum``, and integers as Stripe
reads them off the wire (ASCII digits, optionally a leading minus). Each rule is shown on the
endpoint where an audit found it missing and on at least one other, over real loopback HTTP; the
``sb`` fixture checks every error body against the spec's ``error`` schema."""

from __future__ import annotations

import httpx
import pytest
import stripe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ts
from metering.stripe_sandbox import spec

NOW = ts("2026-11-15T12:00:00")


@pytest.fixture
def http(sb):
    with httpx.Client(base_url=sb.base_url, headers={"Authorization": f"Bearer {sb.api_key}"}, timeout=30) as client:
        yield client


@pytest.fixture
def metered(sb, client):
    """A sum meter on a frozen sandbox clock and a customer: (meter, customer id)."""
    sb.set_now(NOW)
    meter = client.v1.billing.meters.create(
        {"display_name": "API calls", "event_name": "api_calls", "default_aggregation": {"formula": "sum"}}
    )
    return meter, client.v1.customers.create({"name": "Acme"}).id


def _error(response: httpx.Response) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    return error


def _usage(client, meter, customer: str) -> list:
    page = client.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": customer, "start_time": NOW - 86400, "end_time": NOW + 3600}
    )
    return [s.aggregated_value for s in page.data]


# -- required ---------------------------------------------------------------------------------------
def test_a_meter_event_adjustment_needs_its_type_as_the_spec_requires(sb, client, metered, http):
    """``required: [event_name, type]``: the sandbox used to default ``type`` to cancel."""
    meter, customer = metered
    client.v1.billing.meter_events.create(
        {"event_name": "api_calls", "payload": {"stripe_customer_id": customer, "value": "3"}, "identifier": "ev-1"}
    )
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.billing.meter_event_adjustments.create({"event_name": "api_calls", "cancel": {"identifier": "ev-1"}})
    assert (raised.value.http_status, raised.value.code, raised.value.param) == (400, "parameter_missing", "type")
    assert raised.value.user_message == "Missing required param: type."
    assert _usage(client, meter, customer) == [3]  # nothing was cancelled
    # a parameter-validation failure is not stored under the key: the corrected request goes through
    data = {"event_name": "api_calls", "cancel[identifier]": "ev-1"}
    assert http.post("/v1/billing/meter_event_adjustments", data=data, headers={"Idempotency-Key": "adj-1"}).status_code == 400
    fixed = http.post("/v1/billing/meter_event_adjustments", data={**data, "type": "cancel"}, headers={"Idempotency-Key": "adj-1"})
    assert fixed.status_code == 200 and fixed.json()["type"] == "cancel"
    assert _usage(client, meter, customer) == [0]


def test_required_fields_inside_objects_are_named_with_brackets(sb, http):
    """Any operation, any depth: ``customer_mapping`` requires ``event_payload_key`` and ``type``."""
    error = _error(http.post("/v1/billing/meters", data={
        "display_name": "x", "event_name": "x", "default_aggregation[formula]": "sum",
        "customer_mapping[event_payload_key]": "stripe_customer_id"}))
    assert (error["code"], error["param"]) == ("parameter_missing", "customer_mapping[type]")
    assert error["message"] == "Missing required param: customer_mapping[type]."
    assert http.get("/v1/billing/meters").json()["data"] == []


# -- maxLength --------------------------------------------------------------------------------------
def test_a_meter_event_name_longer_than_100_characters_is_refused(sb, client, metered, http):
    _, customer = metered
    payload = {"payload[stripe_customer_id]": customer, "payload[value]": "1"}
    error = _error(http.post("/v1/billing/meter_events", data={"event_name": "e" * 150, **payload}))
    assert error["param"] == "event_name"
    assert error["message"] == "Invalid string: eeeeeeeeee...eeeeeeeeee; must be at most 100 characters"
    assert sb.sandbox.state.meter_errors == []  # refused outright, not accepted as an unknown meter
    assert http.post("/v1/billing/meter_events", data={"event_name": "e" * 100, **payload}).status_code == 200


def test_max_length_holds_for_other_fields_and_nested_ones(sb, client, metered, http):
    assert _error(http.post("/v1/customers", data={"name": "n" * 257}))["param"] == "name"  # maxLength 256
    assert http.post("/v1/customers", data={"name": "n" * 256}).status_code == 200
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": "api_calls", "type": "cancel", "cancel": {"identifier": "i" * 101}}
        )
    assert (raised.value.http_status, raised.value.param) == (400, "cancel[identifier]")


# -- enum -------------------------------------------------------------------------------------------
def test_listing_meters_by_an_unknown_status_is_refused(sb, client, metered, http):
    meter, _ = metered
    error = _error(http.get("/v1/billing/meters", params={"status": "bogus"}))
    assert error["param"] == "status" and error["message"] == "Invalid status: must be one of active or inactive"
    assert [m.id for m in client.v1.billing.meters.list({"status": "active"}).data] == [meter.id]
    assert client.v1.billing.meters.list({"status": "inactive"}).data == []


def test_enums_hold_for_other_operations_and_list_items(sb, client, http):
    error = _error(http.get("/v1/invoices", params={"status": "bogus"}))
    assert error["param"] == "status" and "draft, open, paid, uncollectible, or void" in error["message"]
    customer = client.v1.customers.create({"name": "Acme"}).id
    sub = {"customer": customer, "items[0][price_data][currency]": "usd", "items[0][price_data][product]": "prod_x",
           "items[0][price_data][recurring][interval]": "fortnight"}
    error = _error(http.post("/v1/subscriptions", data=sub))
    assert error["param"] == "items[0][price_data][recurring][interval]"
    assert error["message"].endswith("must be one of day, month, week, or year")
    # fields the spec marks x-stripeBypassValidation are not held to their list, as at Stripe:
    # webhook event types (new ones appear all the time) ...
    hook = {"url": "http://127.0.0.1:9/hook", "enabled_events[0]": "invoice.paid", "enabled_events[1]": "invoice.someday"}
    assert http.post("/v1/webhook_endpoints", data=hook).status_code == 200
    # ... and `default_aggregation[formula]`, where the handler's own check answers (there is no `max`)
    error = _error(http.post("/v1/billing/meters", data={"display_name": "x", "event_name": "x", "default_aggregation[formula]": "max"}))
    assert error["param"] == "default_aggregation[formula]"


# -- integers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("wire", ["1_795_000_000", " 1795000000", "1795000000 ", "+1795000000", "1795000000.0", "\uff11\uff17\uff19\uff15"])
def test_a_meter_event_timestamp_must_be_digits_on_the_wire(sb, client, metered, http, wire):
    meter, customer = metered
    data = {"event_name": "api_calls", "payload[stripe_customer_id]": customer, "payload[value]": "1", "identifier": "ev-t"}
    error = _error(http.post("/v1/billing/meter_events", data={**data, "timestamp": wire}))
    assert (error["code"], error["param"], error["message"]) == ("parameter_invalid_integer", "timestamp", f"Invalid integer: {wire}")
    assert _usage(client, meter, customer) == [0]
    assert http.post("/v1/billing/meter_events", data={**data, "timestamp": str(NOW - 60)}).status_code == 200
    assert _usage(client, meter, customer) == [1]


def test_integers_inside_objects_and_in_handler_coercion(sb, http):
    error = _error(http.get("/v1/customers", params={"created[gte]": "1_0"}))
    assert (error["code"], error["param"]) == ("parameter_invalid_integer", "created[gte]")
    assert _error(http.get("/v1/customers", params={"limit": " 5"}))["param"] == "limit"
    assert http.get("/v1/customers", params={"created[gte]": "-10", "limit": "05"}).status_code == 200


def _is_wire_integer(text: str) -> bool:
    digits = text[1:] if text.startswith("-") else text
    return digits != "" and all(c in "0123456789" for c in digits)


wire_values = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.text(alphabet="0123456789-+_ .e\t\n\u0663\uff10", min_size=1, max_size=12),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), min_size=1, max_size=12),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wire_values)
def test_an_integer_parameter_is_accepted_exactly_when_it_is_digits_with_an_optional_minus(sb, http, text):
    """Property, over HTTP: ``created`` (integer or range object) on ``GET /v1/customers``."""
    response = http.get("/v1/customers", params={"created": text})
    if _is_wire_integer(text):
        assert response.status_code == 200, response.text
    else:
        error = _error(response)
        assert (error["code"], error["param"]) == ("parameter_invalid_integer", "created")


# -- the generated rules --------------------------------------------------------------------------
def test_the_request_schemas_module_is_what_the_spec_says_and_covers_every_route():
    from metering.stripe_sandbox.api import ROUTES
    from metering.stripe_sandbox.request_schemas import SCHEMAS

    assert SCHEMAS == spec.request_schemas(spec.load(True)[0]), "regenerate: python -m metering.stripe_sandbox.spec"
    served = {spec.operation_key(method, template) for method, _, _, template in ROUTES}
    assert served - set(SCHEMAS) == set()
    assert SCHEMAS["POST /v1/billing/meter_event_adjustments"]["required"] == ["event_name", "type"]
