"""Measure the sandbox under the demo's shape: ``python -m metering.stripe_sandbox.loadcheck``.

Creates CUSTOMERS customers on one test clock with 5 metered prices each, sends EVENTS_PER
customer×meter pre-aggregated daily meter events from 4 client threads (official SDK, loopback
HTTP, same process), then advances the clock past the period end + grace and reports timings.
"""

from __future__ import annotations

import argparse
import threading
import time

from .testing import running_sandbox

OCT = 1790812800  # 2026-10-01T00:00:00Z
NOV = OCT + 31 * 86400


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--events", type=int, default=4, help="events per customer and meter")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    with running_sandbox() as sb:
        client = sb.client()
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
        prices, names = [], []
        for m in range(5):
            meter = client.v1.billing.meters.create(
                {"display_name": f"m{m}", "event_name": f"metering_m{m}", "default_aggregation": {"formula": "sum"}, "event_time_window": "day"}
            )
            price = client.v1.prices.create(
                {
                    "currency": "usd",
                    "product_data": {"name": f"m{m}"},
                    "billing_scheme": "tiered",
                    "tiers_mode": "graduated",
                    "tiers": [{"up_to": 100, "unit_amount_decimal": "1.5"}, {"up_to": "inf", "unit_amount": 1, "flat_amount": 100}],
                    "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
                }
            )
            prices.append(price.id)
            names.append(meter.event_name)
        started = time.perf_counter()
        customers = []
        for i in range(args.customers):
            customer = client.v1.customers.create({"name": str(i), "test_clock": clock.id, "metadata": {"customer_id": f"c{i}"}})
            client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": p} for p in prices], "billing_cycle_anchor": NOV})
            customers.append(customer.id)
        setup = time.perf_counter() - started
        client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV - 3600})

        def push(chunk: list[str]) -> None:
            own = sb.client()
            for customer_id in chunk:
                for name in names:
                    for day in range(args.events):
                        own.v1.billing.meter_events.create(
                            {"event_name": name, "payload": {"stripe_customer_id": customer_id, "value": "7"}, "timestamp": NOV - 86400 * (day + 1)}
                        )

        started = time.perf_counter()
        threads = [threading.Thread(target=push, args=(customers[i :: args.threads],)) for i in range(args.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pushing = time.perf_counter() - started
        sent = args.customers * 5 * args.events
        started = time.perf_counter()
        client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 7200})
        advancing = time.perf_counter() - started
        paid = sum(1 for _ in client.v1.invoices.list({"status": "paid", "created": {"gte": NOV}, "limit": 100}).auto_paging_iter())
    print(f"setup: {args.customers} customers + subscriptions in {setup:.2f}s")
    print(f"meter events: {sent} in {pushing:.2f}s = {sent / pushing:.0f}/s ({args.threads} client threads, same process)")
    print(f"advance past period end + grace: {advancing:.2f}s, {paid} period invoices paid")


if __name__ == "__main__":
    main()
