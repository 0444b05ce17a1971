"""Usage for a period whose invoice is already finalized is not pushed: it is marked late for
finance. Runs on a sandbox test clock (Stripe's "now" for the customer is the clock's time)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import polars as pl

from push_world import FAST_RETRY, World, day_start
from metering import warehouse
from metering.customers import load_customers
from metering.rules.plans import load_rules
from metering.stripe import catalog
from metering.stripe.client import StripeSettings, make_client
from metering.stripe.push import PushConfig, Pusher
from metering.stripe_sandbox.testing import running_sandbox

CSV = """customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior
acme,Acme,billing@acme.test,usd,,starter,2026-01-01,succeeds
"""
OCT1 = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
OCT10 = dt.date(2026, 10, 10)


def test_usage_for_a_finalized_invoice_is_late_not_pushed(tmp_path: Path, rules_dir: Path) -> None:
    rules = load_rules(rules_dir)
    (tmp_path / "c.csv").write_text(CSV)
    customers = load_customers(tmp_path / "c.csv", rules)
    with running_sandbox() as sb, warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        client = make_client(StripeSettings(api_key=sb.api_key, api_base=sb.base_url, meter_events_base=sb.base_url))
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": int(OCT1.timestamp())})
        warehouse.replace_rows(con, "customer_plans", "TRUE", [], customers)
        report = catalog.sync_catalog(con, client, rules, customers, create_customers=True, test_clock=clock.id)
        assert report.customers[0]["subscription_id"] and report.customers[0]["test_clock_id"] == clock.id
        world = World(con, sb, client, rules, report)
        world.add_events([("acme", "api_calls", day_start(OCT10) + dt.timedelta(hours=h), None, {"region": "us"})
                          for h in (1, 2, 3)])

        def push() -> object:
            # wall-clock "now" is irrelevant here: the guards use the customer's test clock
            return Pusher(con, client, rules.meters, PushConfig(rate=0, retry=FAST_RETRY),
                          sleep=lambda s: None).push(OCT10, OCT10)

        assert push().not_yet_due == 1                       # the clock is still at Oct 1: in the future
        sb.advance_clock(clock.id, int(day_start(OCT10 + dt.timedelta(days=1)).timestamp()))
        first = push()
        assert (first.acknowledged, first.late) == (1, 0)

        # the period ends Nov 1; past the 1 h grace the October invoice is finalized
        sb.advance_clock(clock.id, int(dt.datetime(2026, 11, 1, 2, tzinfo=dt.timezone.utc).timestamp()))
        invoices = [i for i in client.v1.invoices.list({"customer": report.customers[0]["stripe_customer_id"]}).data
                    if i.period_end > i.period_start]
        assert invoices and invoices[0].status != "draft"

        world.add_events([("acme", "api_calls", day_start(OCT10) + dt.timedelta(hours=20), None, {"region": "eu"})])
        requests_before = len(world.meter_event_requests())
        late = push()
        assert (late.late, late.calls) == (1, 0)
        assert len(world.meter_event_requests()) == requests_before
        rows = world.ledger().sort("revision").select("revision", "value", "status").rows()
        assert rows == [(1, Decimal(3), "acknowledged"), (2, Decimal(4), "late")]
        assert "finalized" in world.ledger().filter(pl.col("revision") == 2)["last_error"][0]


def test_a_later_plan_version_is_reported_for_the_subscription(tmp_path: Path, rules_dir: Path) -> None:
    rules = load_rules(rules_dir)
    (tmp_path / "c.csv").write_text(CSV.replace("acme,Acme,billing@acme.test,usd,,starter", "acme,Acme,billing@acme.test,usd,,pro"))
    customers = load_customers(tmp_path / "c.csv", rules)
    with running_sandbox() as sb, warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        client = make_client(StripeSettings(api_key=sb.api_key, api_base=sb.base_url, meter_events_base=sb.base_url))
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": int(OCT1.timestamp())})
        report = catalog.sync_catalog(con, client, rules, customers, create_customers=True, test_clock=clock.id)
    assert report.customers[0]["plan_version"] == "2026-01"
    found = [(f.kind, f.our_key, f.ours, f.theirs) for f in report.findings if f.kind == "subscription"]
    assert found == [("subscription", "acme", "pro 2026-10 from 2026-10-15", "pro 2026-01")]
