"""Events and webhook delivery: Stripe signatures (verified by the SDK), bounded retries, the
30-day events window."""

from __future__ import annotations

import json

import pytest
import stripe

from conftest import Receiver, metered_price, ts, wait_until
from metering.stripe_sandbox import spec

OCT = ts("2026-10-01T00:00:00")
NOV = ts("2026-11-01T00:00:00")


def test_deliveries_are_signed_like_stripe_and_verify_with_the_sdk(sb, client, receiver):
    endpoint = client.v1.webhook_endpoints.create({"url": receiver.url, "enabled_events": ["*"]})
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    meter, price = metered_price(client)
    customer = client.v1.customers.create({"test_clock": clock.id})
    client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor": NOV})
    client.v1.billing.meter_events.create({"event_name": meter.event_name, "payload": {"stripe_customer_id": customer.id, "value": "4"}})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    deliveries = sb.wait_for_webhooks()
    assert deliveries and all(d["delivered"] for d in deliveries)
    types = []
    for body, signature, _ in receiver.received:
        event = stripe.Webhook.construct_event(body, signature, endpoint.secret)
        payload = json.loads(body)
        spec.validate_object("event", payload)
        spec.validate_object(payload["data"]["object"]["object"], payload["data"]["object"])
        types.append(event.type)
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(body, signature, "whsec_wrong")
        with pytest.raises(stripe.SignatureVerificationError):
            stripe.Webhook.construct_event(body + b" ", signature, endpoint.secret)
    for expected in ("customer.created", "customer.subscription.created", "invoice.created", "invoice.finalized", "invoice.paid", "invoice.payment_succeeded", "customer.subscription.updated"):
        assert expected in types
    listed = {e.id for e in client.v1.events.list({"limit": 100}).auto_paging_iter()}
    assert {json.loads(b)["id"] for b, _, _ in receiver.received} <= listed
    assert all(e.pending_webhooks == 0 for e in client.v1.events.list({"limit": 100}).data)


def test_endpoints_receive_only_their_enabled_events(sb, client, receiver):
    client.v1.webhook_endpoints.create({"url": receiver.url, "enabled_events": ["product.created"]})
    client.v1.customers.create({"name": "ignored"})
    client.v1.products.create({"name": "wanted"})
    sb.wait_for_webhooks()
    assert [json.loads(b)["type"] for b, _, _ in receiver.received] == ["product.created"]


def test_a_failed_delivery_is_retried_until_it_succeeds(sb, client):
    receiver = Receiver(fail_first=2)
    try:
        client.v1.webhook_endpoints.create({"url": receiver.url, "enabled_events": ["customer.created"]})
        customer = client.v1.customers.create({"name": "A"})
        deliveries = sb.wait_for_webhooks()
        assert [(d["attempt"], d["status"], d["delivered"]) for d in deliveries] == [(1, 500, False), (2, 500, False), (3, 200, True)]
        bodies = {json.loads(b)["id"] for b, _, _ in receiver.received}
        assert len(bodies) == 1  # the same event, three times
        event = client.v1.events.list({"type": "customer.created"}).data[0]
        assert event.data.object.id == customer.id and event.pending_webhooks == 0
    finally:
        receiver.close()


def test_retries_are_bounded(sb, client):
    receiver = Receiver(always_fail=True)
    try:
        client.v1.webhook_endpoints.create({"url": receiver.url, "enabled_events": ["customer.created"]})
        client.v1.customers.create({"name": "A"})
        deliveries = sb.wait_for_webhooks()
        assert [d["attempt"] for d in deliveries] == [1, 2, 3, 4]  # first try + 3 retries (test delays)
        assert not any(d["delivered"] for d in deliveries)
    finally:
        receiver.close()
    # an unreachable endpoint is retried the same way
    client.v1.webhook_endpoints.create({"url": "http://127.0.0.1:9/nothing-listens", "enabled_events": ["product.created"]})
    client.v1.products.create({"name": "p"})
    deliveries = [d for d in sb.wait_for_webhooks() if d["type"] == "product.created"]
    assert [d["attempt"] for d in deliveries] == [1, 2, 3, 4] and all(d["error"] for d in deliveries)


def test_events_list_filters_and_reaches_back_30_days(sb, client):
    t0 = ts("2026-09-01T00:00:00")
    sb.set_now(t0)
    old = client.v1.customers.create({"name": "old"})
    sb.set_now(t0 + 10 * 86400)
    client.v1.products.create({"name": "p"})
    assert [e.type for e in client.v1.events.list({"types": ["customer.created", "product.created"]}).data] == ["product.created", "customer.created"]
    assert [e.type for e in client.v1.events.list({"created": {"gt": t0}}).data] == ["product.created"]
    assert [e.type for e in client.v1.events.list({"type": "customer.*"}).data] == ["customer.created"]
    event_id = client.v1.events.list({"type": "customer.created"}).data[0].id
    sb.set_now(t0 + 30 * 86400 + 1)
    assert [e.type for e in client.v1.events.list().data] == ["product.created"]
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.events.retrieve(event_id)
    assert info.value.http_status == 404
    assert client.v1.customers.retrieve(old.id).name == "old"  # the object itself stays


def test_events_carry_request_and_previous_attributes(sb, client):
    customer = client.v1.customers.create({"name": "A"}, {"idempotency_key": "create-a"})
    client.v1.customers.update(customer.id, {"name": "B"})
    updated, created = client.v1.events.list().data[:2]
    assert created.request.idempotency_key == "create-a" and created.request.id.startswith("req_")
    assert updated.type == "customer.updated" and updated.data.previous_attributes.name == "A"
    assert updated.data.object.name == "B"
    wait_until(lambda: True)
