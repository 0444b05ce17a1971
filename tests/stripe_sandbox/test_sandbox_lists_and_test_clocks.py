"""GET /v1/customers and GET /v1/subscriptions leave objects on test clocks out unless asked, as
shared/stripe-openapi/spec3-subset.json describes their `test_clock` parameter:

- customers: "Provides a list of customers that are associated with the specified test clock. The
  response will not include customers with test clocks if this parameter is not set."
- subscriptions: "Filter for subscriptions that are associated with the specified test clock. The
  response will not include subscriptions with test clocks if this and the customer parameter is
  not set."

The sandbox listed every object whatever the parameter (and ignored `test_clock` on subscriptions),
so a caller that forgot it (the catalog sync) worked here and not against Stripe."""

from __future__ import annotations

import json

from conftest import ts
from metering.stripe_sandbox import spec


def test_objects_on_test_clocks_are_listed_only_with_their_clock_or_customer(sb, client) -> None:
    described = {(path, p["name"]): p.get("description", "")
                 for path in ("/v1/customers", "/v1/subscriptions")
                 for p in json.loads(spec.spec_path().read_text())["paths"][path]["get"]["parameters"]}
    assert described[("/v1/customers", "test_clock")].endswith(
        "The response will not include customers with test clocks if this parameter is not set.")
    assert described[("/v1/subscriptions", "test_clock")].endswith(
        "The response will not include subscriptions with test clocks if this and the customer parameter is not set.")

    start = ts("2026-10-01T00:00:00")
    october = client.v1.test_helpers.test_clocks.create({"frozen_time": start, "name": "october"})
    november = client.v1.test_helpers.test_clocks.create({"frozen_time": start, "name": "november"})
    product = client.v1.products.create({"name": "fee"})
    fee = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 1900,
                                   "recurring": {"interval": "month"}})
    plain = client.v1.customers.create({"name": "no clock"})
    on_october = client.v1.customers.create({"name": "october", "test_clock": october.id})
    on_november = client.v1.customers.create({"name": "november", "test_clock": november.id})
    subs = {c.id: client.v1.subscriptions.create({"customer": c.id, "items": [{"price": fee.id}]}).id
            for c in (plain, on_october, on_november)}

    def customers(**params) -> list[str]:
        return [c.id for c in client.v1.customers.list({"limit": 100, **params}).auto_paging_iter()]

    def subscriptions(**params) -> list[str]:
        return [s.id for s in client.v1.subscriptions.list({"limit": 100, **params}).auto_paging_iter()]

    # without test_clock: the customers on no clock only (the sandbox listed all three)
    assert customers() == [plain.id]
    assert customers(test_clock=october.id) == [on_october.id]
    assert customers(test_clock=november.id) == [on_november.id]
    # subscriptions: without test_clock and customer, those on no clock only; status=all changes nothing
    assert subscriptions() == [subs[plain.id]]
    assert subscriptions(status="all") == [subs[plain.id]]
    assert subscriptions(test_clock=october.id, status="all") == [subs[on_october.id]]
    # with customer (and no test_clock), that customer's, on a clock or not
    assert subscriptions(customer=on_november.id) == [subs[on_november.id]]
    assert subscriptions(customer=plain.id) == [subs[plain.id]]
    # both: the customer's on that clock
    assert subscriptions(customer=on_november.id, test_clock=november.id) == [subs[on_november.id]]
    assert subscriptions(customer=on_november.id, test_clock=october.id) == []
    # an ended subscription on a clock is listed with status=all and its clock only
    client.v1.subscriptions.cancel(subs[on_october.id])
    assert subscriptions(test_clock=october.id) == []
    assert subscriptions(test_clock=october.id, status="all") == [subs[on_october.id]]
    assert subscriptions(status="all") == [subs[plain.id]]


def test_a_lookup_key_names_one_price_and_moves_only_when_transferred(sb, client) -> None:
    """Stripe keeps lookup keys unique ("A price (`price_…`) already uses that lookup key.") and moves one
    atomically with `transfer_lookup_key`. The sandbox accepted three prices under one key and ignored
    the flag (audit), so a catalog bug that created duplicates would have passed here."""
    import pytest
    import stripe

    product = client.v1.products.create({"name": "P"})
    base = {"currency": "usd", "product": product.id, "unit_amount": 100, "lookup_key": "lk1"}
    first = client.v1.prices.create(base)
    with pytest.raises(stripe.InvalidRequestError, match=f"A price \\(`{first.id}`\\) already uses that lookup key") as info:
        client.v1.prices.create(base)
    assert info.value.param == "lookup_key"
    other = client.v1.prices.create({**base, "lookup_key": "lk2"})
    with pytest.raises(stripe.InvalidRequestError, match="already uses that lookup key"):
        client.v1.prices.update(other.id, {"lookup_key": "lk1"})
    assert [p.id for p in client.v1.prices.list({"lookup_keys": ["lk1"]}).data] == [first.id]

    moved = client.v1.prices.create({**base, "transfer_lookup_key": True})
    assert [p.id for p in client.v1.prices.list({"lookup_keys": ["lk1"]}).data] == [moved.id]
    assert client.v1.prices.retrieve(first.id).lookup_key is None
    client.v1.prices.update(other.id, {"lookup_key": "lk1", "transfer_lookup_key": True})
    assert client.v1.prices.retrieve(moved.id).lookup_key is None
    assert client.v1.prices.update(other.id, {"lookup_key": "lk1"}).lookup_key == "lk1"   # its own key: no conflict
