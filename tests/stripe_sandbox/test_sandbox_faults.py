"""Each injectable fault, through the official SDK: 429 with Stripe-Rate-Limited-Reason, 500,
slow responses, dropped connections, applied-but-lost responses; counts, rates and patterns; the
request log."""

from __future__ import annotations

import pytest
import stripe

from conftest import ts
from metering.stripe_sandbox.testing import running_sandbox


def _customers(client) -> int:
    return len(client.v1.customers.list({"limit": 100}).data)


def test_rate_limit_fault_answers_429_with_the_reason_header_and_applies_nothing(sb, client):
    sb.inject_fault("rate_limit", path="/v1/customers", method="POST", count=1, reason="global-concurrency")
    with pytest.raises(stripe.RateLimitError) as info:
        client.v1.customers.create({"name": "A"})
    assert info.value.http_status == 429
    assert info.value.headers["Stripe-Rate-Limited-Reason"] == "global-concurrency"
    assert _customers(client) == 0
    client.v1.customers.create({"name": "A"})  # count exhausted
    assert _customers(client) == 1


def test_server_error_fault_is_not_applied_and_the_sdk_retries_it(sb):
    sb.inject_fault("server_error", path="/v1/products", count=1)
    with pytest.raises(stripe.APIError) as info:
        sb.client().v1.products.create({"name": "p"})
    assert info.value.http_status == 500
    sb.inject_fault("server_error", path="/v1/products", count=1)
    retrying = sb.client(max_network_retries=2)
    retrying.v1.products.create({"name": "p"})
    assert len(retrying.v1.products.list().data) == 1
    statuses = [e["status"] for e in sb.requests_log(path="/v1/products", method="POST")]
    assert statuses == [500, 500, 200]


def test_slow_fault_delays_then_answers(sb, client):
    sb.inject_fault("slow", path="/v1/customers", method="GET", count=1, delay=0.3)
    assert client.v1.customers.list().data == []
    [entry] = sb.requests_log(path="/v1/customers", method="GET")
    assert (entry["fault"], entry["status"]) == ("slow", 200)


def test_dropped_connection_applies_nothing(sb, client):
    sb.inject_fault("drop", path="/v1/customers", method="POST", count=1)
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.create({"name": "A"})
    assert _customers(client) == 0
    sb.inject_fault("drop", path="/v1/customers", method="POST", count=1)
    sb.client(max_network_retries=1).v1.customers.create({"name": "A"})
    assert _customers(client) == 1


def test_lost_response_is_applied_and_a_retry_with_the_same_key_replays_it(sb, client):
    sb.set_now(ts("2026-10-10T00:00:00"))
    meter = client.v1.billing.meters.create({"display_name": "m", "event_name": "metering_m", "default_aggregation": {"formula": "sum"}})
    customer = client.v1.customers.create({"name": "A"})
    sb.inject_fault("lost_response", path="/v1/billing/meter_events", count=1)
    params = {"event_name": "metering_m", "payload": {"stripe_customer_id": customer.id, "value": "5"}, "identifier": "w-1"}
    with pytest.raises(stripe.APIConnectionError):
        client.v1.billing.meter_events.create(params, {"idempotency_key": "push-w-1"})
    again = client.v1.billing.meter_events.create(params, {"idempotency_key": "push-w-1"})
    assert again.identifier == "w-1"
    log = sb.requests_log(path="/v1/billing/meter_events")
    assert [(e["status"], e["replayed"]) for e in log] == [("lost_response", False), (200, True)]
    now = ts("2026-10-10T00:00:00")
    summary = client.v1.billing.meters.event_summaries.list(meter.id, {"customer": customer.id, "start_time": now - 3600, "end_time": now + 60})
    assert summary.data[0].aggregated_value == 5  # applied exactly once
    # with a fresh key the identifier catches the duplicate
    sb.inject_fault("lost_response", path="/v1/billing/meter_events", count=1)
    params["identifier"] = "w-2"
    with pytest.raises(stripe.APIConnectionError):
        client.v1.billing.meter_events.create(params)
    with pytest.raises(stripe.InvalidRequestError, match="already exists"):
        client.v1.billing.meter_events.create(params)


def test_rates_are_seeded_and_patterns_select_requests():
    with running_sandbox(seed=7, faults=[{"kind": "rate_limit", "path": "/v1/products*", "rate": 0.5}]) as sb:
        client = sb.client()
        outcomes = []
        for i in range(40):
            try:
                client.v1.products.create({"name": f"p{i}"})
                outcomes.append(True)
            except stripe.RateLimitError:
                outcomes.append(False)
        client.v1.customers.create({"name": "never limited"})
        limited = outcomes.count(False)
        assert 10 <= limited <= 30  # seeded: the same run gives the same outcomes
    with running_sandbox(seed=7, faults=[{"kind": "rate_limit", "path": "/v1/products*", "rate": 0.5}]) as sb:
        client = sb.client()
        again = []
        for i in range(40):
            try:
                client.v1.products.create({"name": f"p{i}"})
                again.append(True)
            except stripe.RateLimitError:
                again.append(False)
    assert again == outcomes


def test_should_retry_header_makes_the_sdk_retry_a_429(sb):
    sb.inject_fault("rate_limit", path="/v1/customers", method="POST", count=2, should_retry=True)
    sb.client(max_network_retries=3).v1.customers.create({"name": "A"})
    assert [e["status"] for e in sb.requests_log(path="/v1/customers", method="POST")] == [429, 429, 200]


def test_faults_are_listed_cleared_and_rejected_when_malformed(sb, client):
    sb.inject_fault("server_error", path="/v1/customers")
    assert sb.control("GET", "faults")["faults"][0]["kind"] == "server_error"
    sb.clear_faults()
    client.v1.customers.create({"name": "A"})
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as info:
        sb.control("POST", "faults", {"kind": "explode"})
    assert info.value.code == 400


def test_request_log_counts_calls_with_their_idempotency_keys(sb, client):
    client.v1.customers.create({"name": "A"}, {"idempotency_key": "k1"})
    client.v1.customers.list()
    log = sb.requests_log()
    assert [(e["method"], e["path"], e["idempotency_key"], e["status"]) for e in log] == [
        ("POST", "/v1/customers", "k1", 200),
        ("GET", "/v1/customers", None, 200),
    ]
    sb.control("DELETE", "requests")
    assert sb.requests_log() == []


def test_reset_forgets_objects_faults_and_the_log(sb, client):
    client.v1.customers.create({"name": "A"})
    sb.inject_fault("server_error", path="/v1/products")
    sb.reset()
    assert sb.requests_log() == [] and sb.control("GET", "faults")["faults"] == []
    assert client.v1.customers.list().data == []
    client.v1.products.create({"name": "works again"})


def test_the_plugin_fixture_gives_a_ready_sandbox(stripe_sandbox):
    client = stripe_sandbox.client()
    assert stripe_sandbox.api_key.startswith("sk_test_") and stripe_sandbox.base_url.startswith("http://127.0.0.1:")
    assert client.v1.customers.create({"name": "via fixture"}).id.startswith("cus_")
    assert len(stripe_sandbox.requests_log(path="/v1/customers")) == 1
