"""`metering bench push`: one day for N customers x 5 meters pushed to a running sandbox.

Customers and their usage are synthetic and written straight into `customer_plans` and
`usage_aggregates` of a scratch warehouse; the catalog sync creates the Stripe customers (not timed);
the push is timed and its calls, retries and raw events per call are reported.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import polars as pl

from metering import warehouse
from metering.rules.model import Rules
from metering.stripe import catalog
from metering.stripe.client import StripeSettings, make_client
from metering.stripe.push import PushConfig, PushReport, Pusher


@dataclass
class PushBench:
    customers: int
    windows: int
    sync_seconds: float
    report: PushReport


def synthetic(rules: Rules, customers: int, day: dt.date) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A customer list (every plan in turn) and one day of hourly aggregates for every meter."""
    plans = sorted(p for p in rules.plans if rules.plans[p].currency == "usd")
    ids = [f"bench_{i:05d}" for i in range(customers)]
    cust = pl.DataFrame({
        "customer_id": ids, "name": ids, "email": [f"{i}@bench.invalid" for i in ids],
        "currency": ["usd"] * customers, "billing_anchor_day": [None] * customers,
        "plan": [plans[i % len(plans)] for i in range(customers)],
        "plan_effective_from": [dt.date(2026, 1, 1)] * customers, "plan_effective_to": [None] * customers,
        "payment_behavior": ["succeeds"] * customers, "source_line": list(range(2, customers + 2)),
    }, schema_overrides={"billing_anchor_day": pl.Int32, "plan_effective_to": pl.Date})
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
    rows = []
    for n, cid in enumerate(ids):
        for m, meter in enumerate(sorted(rules.meters)):
            for h in (1, 9, 17):
                rows.append({
                    "customer_id": cid, "meter": meter, "dimensions": "{}", "hour": start + dt.timedelta(hours=h),
                    "event_date": day, "quantity": Decimal(n % 97 + m + h), "event_count": 10 + h,
                    "last_event_time": start + dt.timedelta(hours=h, minutes=30), "last_event_id": f"e{n}-{m}-{h}",
                    "distinct_values": [f"u{n}-{h}"] if rules.meters[meter].aggregation == "unique_count" else None,
                })
    agg = pl.DataFrame(rows, schema_overrides={"quantity": pl.Decimal(38, 12),
                                               "distinct_values": pl.List(pl.String)})
    return cust, agg


def run(rules: Rules, base_url: str, api_key: str, scratch: Path, *, customers: int = 1000,
        day: dt.date = dt.date(2026, 11, 20), config: PushConfig | None = None,
        now: dt.datetime | None = None) -> PushBench:
    """Run the benchmark against the sandbox at `base_url` (its clock should be frozen near `day`)."""
    client = make_client(StripeSettings(api_key=api_key, api_base=base_url, meter_events_base=base_url))
    db = scratch / "bench_push.duckdb"
    warehouse.remove_database(db)
    cust, agg = synthetic(rules, customers, day)
    now = now or dt.datetime(day.year, day.month, day.day, 23, tzinfo=dt.timezone.utc)
    with warehouse.open_warehouse(db) as con:
        warehouse.insert_frame(con, "customer_plans", cust)
        warehouse.insert_frame(con, "usage_aggregates", agg)
        started = time.monotonic()
        catalog.sync_catalog(con, client, rules, cust, create_customers=True, subscriptions=False)
        sync_seconds = time.monotonic() - started
        report = Pusher(con, client, rules.meters, config or PushConfig(rate=0, concurrency=8),
                        now=lambda: now).push(day, day)
    return PushBench(customers, agg.select("customer_id", "meter").unique().height, sync_seconds, report)
