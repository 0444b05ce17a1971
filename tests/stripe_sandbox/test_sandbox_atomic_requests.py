"""A refused subscription request changes nothing, whichever field is refused.

Stripe answers a request whole: a 400 has made no change. Until the twenty-ninth session the sandbox
checked the items' ownership, prices and currencies up front (m28e) but the other fields as it applied
them, so a bad quantity or metadata on a later item, or a `cancel_at_period_end` that is not a boolean,
was refused after the earlier parts had been applied (a quantity that is not an integer never got that far:
the request schema refuses it first): a creation left its first items in the store
under no subscription, an update left its metadata, an added item, or an earlier item's new quantity.
Each test below sends a request whose last part is refused and checks the state is as before.
"""

from __future__ import annotations

from typing import Any

import pytest
import stripe

from conftest import metered_price, ts

OCT = ts("2026-10-01T00:00:00")
LONG_KEY = "k" * 41   # Stripe's metadata keys are at most 40 characters


def _licensed(client, amount: int = 5000):
    product = client.v1.products.create({"name": "Seats"})
    return client.v1.prices.create({"product": product.id, "currency": "usd", "unit_amount": amount,
                                    "recurring": {"interval": "month"}})


def _subscription(client):
    """A customer on a clock at Oct 1 with two licensed items: 2 seats and 1 platform fee."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    customer = client.v1.customers.create({"test_clock": clock.id})
    seats, fee = _licensed(client, 1000), _licensed(client, 5000)
    sub = client.v1.subscriptions.create({
        "customer": customer.id, "metadata": {"customer_id": "cust_1"},
        "items": [{"price": seats.id, "quantity": 2}, {"price": fee.id}]})
    return customer, sub


def _refused(call, *args: Any) -> stripe.InvalidRequestError:
    with pytest.raises(stripe.InvalidRequestError) as refused:
        call(*args)
    assert refused.value.http_status == 400
    return refused.value


def _items(client, sub_id: str) -> list[tuple[str, int | None, dict[str, str]]]:
    listed = client.v1.subscription_items.list({"subscription": sub_id}).data
    return sorted((i.price.id, getattr(i, "quantity", None), i.metadata.to_dict()) for i in listed)


def _stored_items(sb) -> int:
    return len(sb.control("GET", "state")["objects"].get("subscription_item", {}))


def test_a_creation_refused_for_its_last_items_metadata_stores_no_item(sb, client):
    """Items 0 and 1 are valid; item 2's metadata has a 41-character key (Stripe: at most 40): the
    400 names it, and the store holds no item (it held two, of a subscription that was never made)."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    customer = client.v1.customers.create({"test_clock": clock.id})
    prices = [_licensed(client), _licensed(client, 700), _licensed(client, 900)]
    error = _refused(client.v1.subscriptions.create, {
        "customer": customer.id,
        "items": [{"price": prices[0].id}, {"price": prices[1].id, "quantity": 3},
                  {"price": prices[2].id, "metadata": {LONG_KEY: "x"}}]})
    assert error.param == f"metadata[{LONG_KEY}]" and "Metadata keys can be at most 40 characters" in str(error)
    assert _stored_items(sb) == 0
    assert client.v1.subscriptions.list({"customer": customer.id}).data == []


def test_an_update_refused_for_a_later_items_metadata_keeps_metadata_and_earlier_quantities(client):
    """The update sets the subscription's metadata, 5 seats, and platform-fee metadata with a
    41-character key: refused, with the subscription's metadata and the 2 seats as they were."""
    _, sub = _subscription(client)
    seats, fee = sorted(client.v1.subscription_items.list({"subscription": sub.id}).data,
                        key=lambda i: i.price.unit_amount)
    before = _items(client, sub.id)
    error = _refused(client.v1.subscriptions.update, sub.id, {
        "metadata": {"note": "changed"}, "proration_behavior": "none",
        "items": [{"id": seats.id, "quantity": 5}, {"id": fee.id, "metadata": {LONG_KEY: "x"}}]})
    assert "Metadata keys can be at most 40 characters" in str(error)
    after = client.v1.subscriptions.retrieve(sub.id)
    assert after.metadata.to_dict() == {"customer_id": "cust_1"}
    assert (seats.price.id, 2, {}) in before and _items(client, sub.id) == before


def test_an_update_refused_for_a_later_items_metadata_adds_no_item(sb, client):
    """Item 0 adds a new metered price; item 1 gives an existing item metadata that is not a hash:
    refused, with no third item on the subscription or in the store."""
    _, sub = _subscription(client)
    existing = client.v1.subscription_items.list({"subscription": sub.id}).data[0]
    _, calls = metered_price(client)
    error = _refused(client.v1.subscriptions.update, sub.id, {
        "proration_behavior": "none",
        "items": [{"price": calls.id}, {"id": existing.id, "metadata": "not-a-hash"}]})
    assert "Invalid metadata: must be a hash" in str(error)
    assert len(client.v1.subscription_items.list({"subscription": sub.id}).data) == 2
    assert _stored_items(sb) == 2


def test_an_update_refused_for_cancel_at_period_end_keeps_its_metadata(client):
    """`cancel_at_period_end=maybe` is no boolean: refused, and the metadata sent beside it is not kept."""
    _, sub = _subscription(client)
    error = _refused(client.v1.subscriptions.update, sub.id,
                     {"metadata": {"note": "changed"}, "cancel_at_period_end": "maybe"})
    assert "Invalid boolean: maybe" in str(error)
    after = client.v1.subscriptions.retrieve(sub.id)
    assert after.metadata.to_dict() == {"customer_id": "cust_1"} and after.cancel_at_period_end is False
