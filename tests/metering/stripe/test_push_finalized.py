"""Usage for a period whose invoice is already finalized is not pushed: it is marked late for
finance. Runs on a sandbox test clock (Stripe's "now" for the customer is the clock's time)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from push_world import CSV_ON_CLOCK as CSV, FAST_RETRY, World, customer_on_clock, day_start
from metering.customers import load_customers
from metering.stripe import catalog
from metering.stripe.push import PushConfig, Pusher, summary_holds
from metering.stripe.windows import stripe_value

OCT10 = dt.date(2026, 10, 10)


def test_usage_for_a_finalized_invoice_is_late_not_pushed(tmp_path: Path, rules_dir: Path) -> None:
    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
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


def test_another_products_invoice_does_not_make_our_usage_late(tmp_path: Path, rules_dir: Path) -> None:
    """acme's Stripe customer also holds a support subscription of another product, anchored on the
    15th: its invoice for Oct 1 - 15 is finalized on Oct 15. Our October invoice is weeks from it, yet
    the push took that invoice's period as ours and marked Oct 14's usage `late`: never sent, billed
    nowhere, and explained by reconciliation as late (audit: 11,000 cents under-billed). Only our
    subscriptions' invoices close our usage."""
    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        stripe_customer = report.customers[0]["stripe_customer_id"]
        product = client.v1.products.create({"name": "support"})
        price = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 5000,
                                         "recurring": {"interval": "month"}})
        support = client.v1.subscriptions.create({"customer": stripe_customer, "items": [{"price": price.id}],
                                                  "billing_cycle_anchor_config": {"day_of_month": 15}})
        world = World(con, sb, client, rules, report)
        oct14 = dt.date(2026, 10, 14)
        world.add_events([("acme", "api_calls", day_start(oct14) + dt.timedelta(hours=10), None, {"region": "us"})])
        sb.advance_clock(clock.id, int(dt.datetime(2026, 10, 15, 6, tzinfo=dt.timezone.utc).timestamp()))
        finalized = [i for i in client.v1.invoices.list({"customer": stripe_customer}).data
                     if i.parent.subscription_details.subscription == support.id and i.status != "draft" and i.period_end > i.period_start]
        assert finalized, "the support subscription's Oct 1 - 15 invoice is finalized"
        pushed = Pusher(con, client, rules.meters, PushConfig(rate=0, retry=FAST_RETRY),
                        sleep=lambda s: None).push(oct14, oct14)
        assert (pushed.acknowledged, pushed.late) == (1, 0)
        assert world.ledger().select("status").rows() == [("acknowledged",)]


def test_a_later_plan_version_is_reported_for_the_subscription(tmp_path: Path, rules_dir: Path) -> None:
    pro = CSV.replace("acme,Acme,billing@acme.test,usd,,starter", "acme,Acme,billing@acme.test,usd,,pro")
    with customer_on_clock(tmp_path, rules_dir, pro) as synced:
        report = synced.report
    assert report.customers[0]["plan_version"] == "2026-01"
    found = [(f.kind, f.our_key, f.ours, f.theirs) for f in report.findings if f.kind == "subscription"]
    assert found == [("subscription", "acme", "pro 2026-10 from 2026-10-15", "pro 2026-01")]


@pytest.mark.parametrize(("csv", "change"), [
    (CSV.replace("acme,Acme,billing@acme.test,usd,,starter", "acme,Acme,billing@acme.test,usd,,pro"),
     "pro 2026-10 from 2026-10-15"),
    (CSV + "acme,Acme,billing@acme.test,usd,,pro,2026-10-10,succeeds\n", "pro from 2026-10-10"),
])
def test_a_change_not_switched_is_still_reported_once_in_force(tmp_path: Path, rules_dir: Path, csv: str,
                                                                change: str) -> None:
    """A later plan version (or plan) is reported before it starts; once in force the subscription still
    carries the old prices, and the finding once vanished (the main job's re-run: 97 findings -> 18). It
    stays, with the same key, saying it is in force."""
    with customer_on_clock(tmp_path, rules_dir, csv) as (sb, con, client, clock, rules, report):
        carried = f"{report.customers[0]['plan']} {report.customers[0]['plan_version']}"
        before = [(f.our_key, f.ours, f.theirs) for f in report.findings if f.kind == "subscription"]
        assert before == [("acme", change, carried)]
        sb.advance_clock(clock.id, int(dt.datetime(2026, 10, 20, tzinfo=dt.timezone.utc).timestamp()))
        customers = load_customers(tmp_path / "c.csv", rules)
        again = catalog.sync_catalog(con, client, rules, customers, create_customers=True, test_clock=clock.id)
        after = [(f.our_key, f.ours, f.theirs, f.detail) for f in again.findings if f.kind == "subscription"]
        assert after == [("acme", change, carried, f"in force, {catalog._NOT_SWITCHED}")]
        assert again.customers[0]["plan_version"] == report.customers[0]["plan_version"]   # never switched


def test_the_in_force_finding_reads_the_carried_version_from_the_prices_without_metadata(
        tmp_path: Path, rules_dir: Path) -> None:
    """A subscription whose plan metadata was cleared (or made by hand with our prices): the version it
    carries is read from its prices' lookup keys, so the finding stays once the change is in force
    (it vanished, the review found, while the subscription still billed pro 2026-01's prices)."""
    csv = CSV.replace("acme,Acme,billing@acme.test,usd,,starter", "acme,Acme,billing@acme.test,usd,,pro")
    with customer_on_clock(tmp_path, rules_dir, csv) as (sb, con, client, clock, rules, report):
        sub = report.customers[0]["subscription_id"]
        client.v1.subscriptions.update(sub, {"metadata": {"plan": "", "plan_version": ""}})
        sb.advance_clock(clock.id, int(dt.datetime(2026, 10, 20, tzinfo=dt.timezone.utc).timestamp()))
        again = catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules),
                                     create_customers=True, test_clock=clock.id)
        found = [(f.our_key, f.ours, f.theirs) for f in again.findings if f.kind == "subscription"]
        assert found == [("acme", "pro 2026-10 from 2026-10-15", "pro 2026-01")]


def test_an_anchor_on_the_31st_synced_in_september_keeps_stripes_periods_on_ours(tmp_path: Path,
                                                                                   rules_dir: Path) -> None:
    """The sync once sent the first anchor instant (Sep 30) as billing_cycle_anchor, and Stripe then
    billed on the 30th every month (Sep 30 - Oct 30) while we rated Sep 30 - Oct 31; it now sends the
    day itself, so Stripe's periods are ours: customers.period_containing."""
    from metering.customers import period_containing
    from metering.stripe.clock import advance_clock

    csv = CSV.replace("usd,,starter,2026-01-01", "usd,31,starter,2026-01-01")
    sep5 = dt.datetime(2026, 9, 5, tzinfo=dt.timezone.utc)
    with customer_on_clock(tmp_path, rules_dir, csv, start=sep5) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        [sub] = client.v1.subscriptions.list({"customer": cus}).data
        assert sub.billing_cycle_anchor_config.day_of_month == 31
        # midnight UTC said outright: Stripe's default time of day is not documented
        config = sub.billing_cycle_anchor_config
        assert (config.hour, config.minute, config.second) == (0, 0, 0)
        advance_clock(client, clock.id, dt.datetime(2027, 1, 2, tzinfo=dt.timezone.utc))
        periods = sorted((dt.datetime.fromtimestamp(i.period_start, tz=dt.timezone.utc).date(),
                          dt.datetime.fromtimestamp(i.period_end, tz=dt.timezone.utc).date())
                         for i in client.v1.invoices.list({"customer": cus, "limit": 100}).data
                         if i.billing_reason == "subscription_cycle")
        # the first period is ours too: the subscription starts at our period's midnight (Aug 31, the
        # anchor in August), not at the sync (Sep 5, which left Aug 31 - Sep 5 to no Stripe period)
        assert periods == [period_containing(start, 31) for start, _ in periods] == [
            (dt.date(2026, 8, 31), dt.date(2026, 9, 30)),
            (dt.date(2026, 9, 30), dt.date(2026, 10, 31)), (dt.date(2026, 10, 31), dt.date(2026, 11, 30)),
            (dt.date(2026, 11, 30), dt.date(2026, 12, 31))]


def test_pushing_day_by_day_on_the_clock_lands_usage_on_each_period_invoice(tmp_path: Path, rules_dir: Path) -> None:
    """Anchor day 15, synced on Oct 1: the first period is ours, Sep 15 - Oct 15, and closes mid-range;
    usage of Oct 14 (pushed while that invoice is a draft in its grace period) and Oct 16 land on their
    own periods' invoices."""
    from metering.stripe.clock import advance_clock, push_days_on_clock

    with customer_on_clock(tmp_path, rules_dir, CSV.replace("usd,,starter", "usd,15,starter")) as (
            sb, con, client, clock, rules, report):
        world = World(con, sb, client, rules, report)
        oct14, oct16 = dt.date(2026, 10, 14), dt.date(2026, 10, 16)
        # 12,000 calls on Oct 14 (2,000 above starter's 10,000 included) and 3 on Oct 16
        world.add_events([("acme", "api_calls", day_start(oct14) + dt.timedelta(seconds=s), None, {"region": "us"})
                          for s in range(0, 12000 * 7, 7)])
        world.add_events([("acme", "api_calls", day_start(oct16) + dt.timedelta(hours=h), None, {"region": "us"})
                          for h in (1, 2, 3)])
        reports = push_days_on_clock(con, client, rules.meters, clock.id, dt.date(2026, 10, 13), oct16,
                                     PushConfig(rate=0, retry=FAST_RETRY), sleep=lambda s: None)
        assert [(r.acknowledged, r.late) for r in reports] == [(0, 0), (1, 0), (0, 0), (1, 0)]
        advance_clock(client, clock.id, dt.datetime(2026, 11, 16, 2, tzinfo=dt.timezone.utc))
        cus = report.customers[0]["stripe_customer_id"]
        lines = {}
        for invoice in client.v1.invoices.list({"customer": cus, "limit": 100}).data:
            if invoice.billing_reason != "subscription_cycle":
                continue
            for line in invoice.lines.data:
                if line.pricing.price_details.price == report.prices[("starter", "2026-01", "api calls")]:
                    lines[dt.datetime.fromtimestamp(line.period.start, tz=dt.timezone.utc).date()] = (
                        Decimal(str(line.quantity_decimal)), line.amount, invoice.status)
        # Sep 15 - Oct 15: 12,000 calls, 2,000 billable at 0.05 cents = 100 cents; Oct 15 - Nov 15: 3 calls, free
        assert lines[dt.date(2026, 9, 15)][:2] == (Decimal(12000), 100)
        assert lines[dt.date(2026, 10, 15)][:2] == (Decimal(3), 0)


def test_a_push_sends_only_windows_that_passed_its_guards(tmp_path: Path, rules_dir: Path) -> None:
    """A `last`-formula meter (seats) pushed on Oct 30 and 31 widens a push of Oct 30 alone to Oct 31
    (a later window of the same period is recomputed). Another meter's open row on Oct 31 (tokens,
    revision 2 = 15, its call dropped: unknown) is outside the push's range and never went through
    its guards; October's invoice is finalized by then, so it must not be sent by that push, and the
    push of Oct 31 marks it late, once Stripe's summary can show the attempt (summaries lag: a push
    right after it leaves it `unknown`). Stripe keeps October's tokens at 10 + 10 = 20, what it invoiced."""
    oct30, oct31 = dt.date(2026, 10, 30), dt.date(2026, 10, 31)
    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        world = World(con, sb, client, rules, report)

        def push(day_from: dt.date, day_to: dt.date, attempts: int = 8,
                 later: dt.timedelta = dt.timedelta(0)) -> Any:
            config = PushConfig(rate=0, retry=replace(FAST_RETRY, max_attempts=attempts))
            return Pusher(con, client, rules.meters, config, sleep=lambda s: None,
                          now=lambda: dt.datetime.now(dt.timezone.utc) + later).push(day_from, day_to)

        sb.advance_clock(clock.id, int(dt.datetime(2026, 10, 31, 12, tzinfo=dt.timezone.utc).timestamp()))
        world.add_events([("acme", "seats", day_start(d) + dt.timedelta(hours=1), "3", {}) for d in (oct30, oct31)]
                         + [("acme", "tokens", day_start(d) + dt.timedelta(hours=1), "10", {"model": "small"})
                            for d in (oct30, oct31)])
        assert push(oct30, oct31).acknowledged == 4
        world.add_events([("acme", "tokens", day_start(oct31) + dt.timedelta(hours=11), "5", {"model": "small"})])
        sb.inject_fault("drop", path="/v1/billing/meter_events", method="POST", count=1)
        assert push(oct31, oct31, attempts=1).unknown == 1

        sb.advance_clock(clock.id, int(dt.datetime(2026, 11, 1, 2, tzinfo=dt.timezone.utc).timestamp()))
        october = [i for i in client.v1.invoices.list({"customer": report.customers[0]["stripe_customer_id"]}).data
                   if i.period_end > i.period_start]
        assert october and october[0].status != "draft"

        def tokens_oct31() -> list[tuple]:
            return world.ledger().filter((pl.col("meter") == "tokens") & (pl.col("event_date") == oct31)).sort(
                "revision").select("revision", "value", "status").rows()

        requests_before = len(world.meter_event_requests())
        first = push(oct30, oct30)
        assert (first.calls, first.acknowledged) == (0, 0)
        assert len(world.meter_event_requests()) == requests_before
        assert tokens_oct31() == [(1, Decimal(10), "acknowledged"), (2, Decimal(15), "unknown")]

        # the control: its own push guards it. The row was attempted (its call may have reached Stripe),
        # so Stripe's summary is read first (one call, no meter event). Right after the attempt it may
        # lag (it holds 10, not 15): the row stays unknown
        second = push(oct31, oct31)
        assert (second.calls, second.summary_checks, second.late, second.unknown) == (1, 1, 0, 1)
        assert tokens_oct31() == [(1, Decimal(10), "acknowledged"), (2, Decimal(15), "unknown")]
        # past the summary's lag, it still holds 10: the attempt is superseded and the window's value is late
        third = push(oct31, oct31, later=PushConfig().summary_lag + dt.timedelta(minutes=1))
        assert (third.calls, third.summary_checks, third.late, third.unknown) == (1, 1, 1, 0)
        assert tokens_oct31() == [(1, Decimal(10), "acknowledged"), (2, Decimal(15), "superseded"),
                                  (3, Decimal(15), "late")]
        assert len(world.meter_event_requests()) == requests_before
        month = (dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc))
        assert world.stripe_total("acme", "tokens", *month) == Decimal(20)


def test_the_customer_map_keeps_the_plan_version_the_subscription_carries(tmp_path: Path, rules_dir: Path) -> None:
    """The map's plan version is the subscription's (its prices), not the one in force at a later sync:
    a re-sync after pro's 2026-10 version started recorded 2026-10 for a subscription on 2026-01 prices,
    and invoice items then took the 2026-01 usage charges for another version's and credited them."""
    pro = CSV.replace("acme,Acme,billing@acme.test,usd,,starter", "acme,Acme,billing@acme.test,usd,,pro")
    sep1 = dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc)
    with customer_on_clock(tmp_path, rules_dir, pro, start=sep1) as (sb, con, client, clock, rules, report):
        assert report.customers[0]["plan_version"] == "2026-01"
        sb.advance_clock(clock.id, int(dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc).timestamp()))
        customers = load_customers(tmp_path / "c.csv", rules)
        again = catalog.sync_catalog(con, client, rules, customers, create_customers=False, test_clock=clock.id)
        assert again.customers[0]["plan_version"] == "2026-01"
        assert con.execute("SELECT plan, plan_version FROM stripe_customer_map").fetchall() == [("pro", "2026-01")]


@pytest.mark.parametrize(("aggregated", "ours", "holds"), [
    ([123456.12345678901], "123456.123456789012", True),   # the JSON double of an 18-digit value
    ([10], "10.000000000000", True),
    ([0.1, 0.2], "0.3", True),                              # each summary rounded, not their sum
    ([], "0", True),
    ([5], "10", False),
    ([123456.12345678901], "123456.12345679", False),
])
def test_stripe_summaries_are_compared_at_a_doubles_precision(aggregated: list[float], ours: str, holds: bool) -> None:
    assert summary_holds(aggregated, Decimal(ours)) is holds


@pytest.mark.parametrize("value", ["10", "123456.123456789012"])
def test_an_attempt_whose_response_was_lost_is_settled_by_stripe_not_called_late(
    tmp_path: Path, rules_dir: Path, value: str
) -> None:
    """The response to the period's last push is lost (Stripe applied the event: `unknown`); the next
    push comes after the invoice was finalized. Stripe's summary holds the value, so the row is
    acknowledged. It was marked `late` ("never sent: report to finance") without asking Stripe.

    A usage of 123456.123456789012 (18 significant digits) is pushed as 123456.123456789 (Stripe takes
    15: `stripe_value`); the summary's `aggregated_value` is a JSON double, compared at a double's
    precision (`summary_holds`), and the finalized invoice bills the 15 digits the ledger holds."""
    oct31 = dt.date(2026, 10, 31)
    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        world = World(con, sb, client, rules, report)

        def push(attempts: int = 8) -> Any:
            config = PushConfig(rate=0, retry=replace(FAST_RETRY, max_attempts=attempts))
            return Pusher(con, client, rules.meters, config, sleep=lambda s: None).push(oct31, oct31)

        sb.advance_clock(clock.id, int(dt.datetime(2026, 10, 31, 12, tzinfo=dt.timezone.utc).timestamp()))
        world.add_events([("acme", "tokens", day_start(oct31) + dt.timedelta(hours=1), value, {"model": "small"})])
        sb.inject_fault("lost_response", path="/v1/billing/meter_events", method="POST", count=1)
        assert push(attempts=1).unknown == 1
        sb.control("DELETE", "faults")
        sb.advance_clock(clock.id, int(dt.datetime(2026, 11, 1, 2, tzinfo=dt.timezone.utc).timestamp()))
        requests_before = len(world.meter_event_requests())
        later = push()
        assert (later.summary_checks, later.late, later.unknown) == (1, 0, 0)
        pushed = stripe_value(Decimal(value))
        assert world.ledger().filter(pl.col("meter") == "tokens").select("revision", "value", "status").rows() == [
            (1, pushed, "acknowledged")]
        assert len(world.meter_event_requests()) == requests_before   # nothing sent again
        invoice = next(i for i in client.v1.invoices.list({"customer": report.customers[0]["stripe_customer_id"]}).data
                       if i.billing_reason == "subscription_cycle")
        tokens = [line.quantity_decimal for line in client.v1.invoices.line_items.list(invoice.id, {"limit": 100}).data
                  if client.v1.prices.retrieve(line.pricing.price_details.price).recurring.meter == report.meters["tokens"]]
        assert (invoice.status, tokens) == ("paid", [pushed])
