"""The demo's declined first invoices are settled on its test clock too.

Stripe lists a subscription on a test clock only when `test_clock` (or `customer`) is given
(shared/stripe-openapi/spec3-subset.json, GET /v1/subscriptions), and the sandbox now does the same:
listed without it, the demo's customers (all on its clock) had no incomplete subscription to settle,
and each declined first invoice would have expired the subscription, leaving nothing to dun."""

from __future__ import annotations

from metering.stripe_sandbox.testing import running_sandbox
from pipelines.demo_plants import settle_declined_first_invoices

OCT1 = 1790812800   # 2026-10-01T00:00:00Z


def test_incomplete_subscriptions_on_a_clock_and_off_are_settled() -> None:
    with running_sandbox() as sb:
        client = sb.client()
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT1, "name": "metering demo 2026-10"})
        product = client.v1.products.create({"name": "fee"})
        fee = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 1900,
                                       "recurring": {"interval": "month"}})
        subs = []
        for params in ({"test_clock": clock.id}, {}):
            customer = client.v1.customers.create({"metadata": {"payment_behavior": "fails"}, **params})
            subs.append(client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": fee.id}]}))
        assert [s.status for s in subs] == ["incomplete", "incomplete"]
        settled = settle_declined_first_invoices(client)
        assert sorted(settled) == sorted(s.latest_invoice for s in subs)
        assert [client.v1.invoices.retrieve(s.latest_invoice).status for s in subs] == ["paid", "paid"]
        assert settle_declined_first_invoices(client) == []   # nothing left incomplete
