"""Idempotency-Key: replay, 400 on other parameters, 409 while in flight, 24 h expiry."""

from __future__ import annotations

import threading

import pytest
import stripe

from conftest import in_flight, post_form as _post, ts, wait_until


def test_replay_returns_the_first_response_with_the_replayed_header(sb, client):
    first = _post(sb, "/v1/customers", {"name": "Acme"}, "k-1")
    again = _post(sb, "/v1/customers", {"name": "Acme"}, "k-1")
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert len(client.v1.customers.list().data) == 1
    # through the SDK as well: a deterministic key means one object
    a = client.v1.customers.create({"name": "B"}, {"idempotency_key": "k-2"})
    b = client.v1.customers.create({"name": "B"}, {"idempotency_key": "k-2"})
    assert a.id == b.id and len(client.v1.customers.list().data) == 2


def test_an_error_response_is_stored_and_replayed(sb):
    first = _post(sb, "/v1/customers/cus_missing", {"name": "x"}, "k-err")
    again = _post(sb, "/v1/customers/cus_missing", {"name": "x"}, "k-err")
    assert first.status_code == again.status_code == 404
    assert again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"


def test_parameter_validation_failures_are_not_stored(sb):
    assert _post(sb, "/v1/products", {}, "k-val").status_code == 400
    fixed = _post(sb, "/v1/products", {"name": "Now valid"}, "k-val")
    assert fixed.status_code == 200 and fixed.json()["name"] == "Now valid"


def test_same_key_with_other_parameters_is_an_idempotency_error(sb, client):
    client.v1.customers.create({"name": "A"}, {"idempotency_key": "k-3"})
    with pytest.raises(stripe.IdempotencyError) as info:
        client.v1.customers.create({"name": "Other"}, {"idempotency_key": "k-3"})
    assert info.value.http_status == 400
    assert info.value.error.type == "idempotency_error"
    other_path = _post(sb, "/v1/products", {"name": "A"}, "k-3")
    assert other_path.status_code == 400 and other_path.json()["error"]["type"] == "idempotency_error"


def test_a_concurrent_request_with_the_same_key_gets_409(sb, client):
    sb.inject_fault("slow", path="/v1/customers", method="POST", count=1, delay=60)
    results = {}
    worker = threading.Thread(target=lambda: results.setdefault("first", _post(sb, "/v1/customers", {"name": "A"}, "k-4")))
    worker.start()
    # logged before it claims its key: wait for the claim too, or the second request could claim it first
    wait_until(lambda: in_flight(sb, "/v1/customers") and sb.sandbox.idempotency.entries)
    second = _post(sb, "/v1/customers", {"name": "A"}, "k-4")
    sb.release_slow()
    worker.join()
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "idempotency_key_in_use"
    assert results["first"].status_code == 200
    # the 409 was not stored: a later retry replays the first request's result
    later = _post(sb, "/v1/customers", {"name": "A"}, "k-4")
    assert later.json()["id"] == results["first"].json()["id"]
    assert len(client.v1.customers.list().data) == 1


def test_keys_expire_after_24_hours_of_the_sandbox_clock(sb, client):
    t0 = ts("2026-10-01T00:00:00")
    sb.set_now(t0)
    first = client.v1.customers.create({"name": "A"}, {"idempotency_key": "k-5"})
    sb.set_now(t0 + 24 * 3600 - 1)
    assert client.v1.customers.create({"name": "A"}, {"idempotency_key": "k-5"}).id == first.id
    sb.set_now(t0 + 24 * 3600)
    fresh = client.v1.customers.create({"name": "Other"}, {"idempotency_key": "k-5"})
    assert fresh.id != first.id and fresh.name == "Other"
