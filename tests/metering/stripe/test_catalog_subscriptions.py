"""Which subscriptions the catalog sync creates, and what it reports about the live ones (audit 16):
the prices of the version in force at a backdated start, no subscription before a plan starts, live
subscriptions our rules no longer rate, and a second sync on a test clock finding its own objects.

Against the sandbox over loopback, on test clocks, with the shipped rules (pro: 2026-01, and 2026-10
from Oct 15; starter: 2026-01) unless a test edits a copy."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import polars as pl
import pytest

from metering.customers import load_customers
from metering.rules.plans import load_rules
from metering.stripe import catalog
from push_world import World, customer_on_clock, day_start, push_then_bill_october

UTC = dt.timezone.utc


def _ts(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=UTC).timestamp())


def _customers(tmp_path: Path, rules, csv: str | None = None) -> pl.DataFrame:
    if csv is not None:
        (tmp_path / "c.csv").write_text(csv)
    return load_customers(tmp_path / "c.csv", rules)


def _sync(con, client, rules, customers, clock) -> catalog.CatalogReport:
    return catalog.sync_catalog(con, client, rules, customers, create_customers=True, test_clock=clock.id)


def _lookup_keys(client, sub) -> list[str]:
    return sorted(client.v1.prices.retrieve(item.price.id).lookup_key for item in sub["items"].data)


def _findings(report: catalog.CatalogReport, customer: str) -> list[tuple]:
    return sorted((f.finding, f.kind, f.field, f.ours, f.theirs) for f in report.findings if f.our_key == customer)


PRO_SINCE_JANUARY = """customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior
acme,Acme,billing@acme.test,usd,,pro,2026-01-01,succeeds
"""


def test_a_backdated_subscription_carries_the_version_in_force_at_its_start(tmp_path: Path, rules_dir: Path) -> None:
    """acme, on pro since January, is first synced on Oct 20 at 14:00; its subscription is backdated to
    Oct 1, when pro 2026-01 was in force (2026-10 starts Oct 15). It carried 2026-10's prices: Stripe
    billed October's whole fee at 59.00 and 500 GB at 2026-10's 0.07, where we rate Oct 1 - 14 under
    2026-01, and nothing was reported. Now it carries 2026-01's prices, and 2026-10 is reported as in
    force and not switched, as for a subscription created before Oct 15."""
    with customer_on_clock(tmp_path, rules_dir, PRO_SINCE_JANUARY, start=dt.datetime(2026, 10, 20, 14, tzinfo=UTC)) as (
            sb, con, client, clock, rules, report):
        sub = client.v1.subscriptions.retrieve(report.customers[0]["subscription_id"])
        assert sub.start_date == _ts(2026, 10, 1)
        assert sub.metadata.to_dict() == {"customer_id": "acme", "plan": "pro", "plan_version": "2026-01"}
        # 2026-01's five Stripe prices (its tokens charges are filtered by model, its minimum is an item)
        assert _lookup_keys(client, sub) == [
            "metering:pro:2026-01:active users", "metering:pro:2026-01:api calls", "metering:pro:2026-01:platform fee",
            "metering:pro:2026-01:seats", "metering:pro:2026-01:storage"]
        assert (report.customers[0]["plan"], report.customers[0]["plan_version"]) == ("pro", "2026-01")
        # October's fee at 2026-01's 49.00, Oct 1 - Nov 1 (backdated, anchored Nov 1: the whole month)
        [created] = client.v1.invoices.list({"customer": sub.customer}).data
        assert (created.billing_reason, created.total) == ("subscription_create", 4900)
        assert _findings(report, "acme") == [
            ("not_expressible", "subscription", "plan", "pro 2026-10 from 2026-10-15", "pro 2026-01")]
        [in_force] = [f for f in report.findings if f.our_key == "acme"]
        assert in_force.detail.startswith("in force, not switched")

        # 500 GB on Oct 20: Stripe prices it with the carried 2026-01 volume tier (0.08/GB = 40.00),
        # not 2026-10's 0.07 (35.00); the 2026-10 days' difference is what the finding reports
        world = World(con, sb, client, rules, report)
        oct20 = dt.date(2026, 10, 20)
        world.add_events([("acme", "storage_gb", day_start(oct20) + dt.timedelta(hours=15), "500", {})])
        sb.advance_clock(clock.id, _ts(2026, 10, 21))
        october = push_then_bill_october(con, client, rules, clock, oct20, sub.customer)
        billed = sorted((str(line.quantity_decimal), line.amount) for line in october.lines.data if line.amount)
        # November's fee in advance (49.00) and October's storage
        assert billed == [("1", 4900), ("500", 4000)]


STARTER_FROM_NOVEMBER = """customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior
newco,NewCo,ap@newco.test,usd,,starter,2026-11-01,succeeds
"""


def test_no_subscription_before_the_first_plan_starts(tmp_path: Path, rules_dir: Path) -> None:
    """newco's first (only) plan, starter, starts Nov 1; the sync runs on Oct 20 at 14:00. It was
    subscribed at once and Stripe charged Oct 20 - 31 (700, 19.00 prorated), which we do not rate (days
    before a customer's first assignment are not billed), while the finding said the plan was not
    switched. Now the customer is created without a subscription and reported `not_subscribed`; the sync
    of Nov 3 subscribes it from Nov 1 00:00, and Stripe charges November's fee (1900) only."""
    with customer_on_clock(tmp_path, rules_dir, STARTER_FROM_NOVEMBER,
                           start=dt.datetime(2026, 10, 20, 14, tzinfo=UTC)) as (sb, con, client, clock, rules, report):
        assert (report.created.get("customer"), report.created.get("subscription")) == (1, None)
        [row] = report.customers
        assert (row["customer_id"], row["subscription_id"], row["plan"], row["plan_version"]) == (
            "newco", None, "starter", "2026-01")
        assert _findings(report, "newco") == [("not_subscribed", "subscription", "plan", "starter from 2026-11-01", None)]
        [pending] = [f for f in report.findings if f.our_key == "newco"]
        assert pending.detail.startswith("not yet subscribed: the plan starts 2026-11-01")
        assert report.finding_counts()["not_subscribed"] == 1 and "1 not yet subscribed" in report.summary()
        stripe_customer = row["stripe_customer_id"]
        assert client.v1.subscriptions.list({"customer": stripe_customer, "status": "all"}).data == []
        assert client.v1.invoices.list({"customer": stripe_customer}).data == []
        assert con.execute("SELECT customer_id, subscription_id FROM stripe_customer_map").fetchall() == [("newco", None)]

        # a sync after the plan started subscribes it, backdated to the plan's first day
        sb.advance_clock(clock.id, _ts(2026, 11, 3, 10))
        later = _sync(con, client, rules, _customers(tmp_path, rules), clock)
        assert (later.created, later.found.get("customer")) == ({"subscription": 1}, 1)
        assert _findings(later, "newco") == []
        sub = client.v1.subscriptions.retrieve(later.customers[0]["subscription_id"])
        assert (sub.customer, sub.start_date, sub.billing_cycle_anchor) == (
            stripe_customer, _ts(2026, 11, 1), _ts(2026, 12, 1))
        assert _lookup_keys(client, sub) == [f"metering:starter:2026-01:{c}" for c in (
            "active users", "api calls", "platform fee", "seats", "storage", "tokens")]
        fees = [(i.billing_reason, i.total) for i in client.v1.invoices.list({"customer": stripe_customer}).data]
        assert fees == [("subscription_create", 1900)]


STARTER_SINCE_JANUARY = """customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior
acme,Acme,billing@acme.test,usd,,starter,2026-01-01,succeeds
globex,Globex,ap@globex.test,usd,,starter,2026-01-01,succeeds
"""


def _cancellations(sb) -> list[dict]:
    return [r for r in sb.requests_log(method="DELETE") if r["path"].startswith("/v1/subscriptions/")]


def test_a_live_subscription_of_a_retired_plan_is_reported_before_and_after_the_end(
        tmp_path: Path, rules_dir: Path) -> None:
    """starter is retired on Nov 1 (its last version gets `effective_to: 2026-11-01`, as docs/rating.md
    allows). acme's subscription (Oct 1) goes on billing starter after it, where we rate nothing (no
    plan in force): Stripe invoiced 1900 for November and 1900 for December, and no sync said so. Now
    the Oct 1 sync reports the coming end, and the Nov 20 sync reports it in force, each as an `orphan`
    finding with the same `ours`; the subscription is left active (nothing is cancelled at Stripe)."""
    retired = tmp_path / "rules"
    shutil.copytree(rules_dir, retired)
    plan = retired / "plans" / "starter.yaml"
    text = plan.read_text()
    assert text.count("effective_from: 2026-01-01") == 1
    plan.write_text(text.replace("effective_from: 2026-01-01", "effective_from: 2026-01-01\n    effective_to: 2026-11-01"))
    with customer_on_clock(tmp_path, retired) as (sb, con, client, clock, rules, report):   # acme on starter, Oct 1
        assert rules.plans["starter"].version_at(dt.date(2026, 11, 20)) is None
        sub_id = report.customers[0]["subscription_id"]
        assert _findings(report, "acme") == [("orphan", "subscription", "plan", "starter ends 2026-11-01", "starter 2026-01")]
        [before] = [f for f in report.findings if f.our_key == "acme"]
        assert before.stripe_id == sub_id
        assert before.detail.startswith("the plan is retired from 2026-11-01 (its last version ends): Stripe keeps "
                                        "billing the subscription after it")
        assert report.finding_counts()["orphan"] == 1 and "1 orphan subscriptions" in report.summary()

        sb.advance_clock(clock.id, _ts(2026, 11, 20))
        after = _sync(con, client, rules, _customers(tmp_path, rules), clock)
        assert after.created == {}
        assert _findings(after, "acme") == [("orphan", "subscription", "plan", "starter ends 2026-11-01", "starter 2026-01")]
        [in_force] = [f for f in after.findings if f.our_key == "acme"]
        assert (in_force.stripe_id, in_force.detail.split(":")[0]) == (sub_id, "in force")
        assert "no version of starter is in force since 2026-11-01" in in_force.detail
        stored = con.execute("SELECT finding, our_key, stripe_id, ours FROM stripe_catalog_findings "
                             "WHERE kind = 'subscription'").fetchall()
        assert stored == [("orphan", "acme", sub_id, "starter ends 2026-11-01")]
        assert client.v1.subscriptions.retrieve(sub_id).status == "active" and _cancellations(sb) == []


def test_a_live_subscription_of_a_customer_removed_from_the_list_is_reported(tmp_path: Path, rules_dir: Path) -> None:
    """acme leaves the customer list; its Stripe subscription stays live and invoiced November's fee
    (1900), and the next sync said nothing (acme just vanished from stripe_customer_map). Now that sync
    reports it (`orphan`, naming the subscription); nothing is cancelled."""
    with customer_on_clock(tmp_path, rules_dir, STARTER_SINCE_JANUARY) as (sb, con, client, clock, rules, report):
        subs = {c["customer_id"]: c["subscription_id"] for c in report.customers}
        assert [f for f in report.findings if f.kind == "subscription"] == []
        only_globex = "\n".join(STARTER_SINCE_JANUARY.splitlines()[:1] + STARTER_SINCE_JANUARY.splitlines()[2:]) + "\n"
        again = _sync(con, client, rules, _customers(tmp_path, rules, only_globex), clock)
        assert again.created == {}
        assert _findings(again, "acme") == [
            ("orphan", "subscription", "customer_id", "not in the customer list", "starter 2026-01")]
        [gone] = [f for f in again.findings if f.our_key == "acme"]
        assert gone.stripe_id == subs["acme"] and "is not in our customer list" in gone.detail
        assert _findings(again, "globex") == []
        assert client.v1.subscriptions.retrieve(subs["acme"]).status == "active" and _cancellations(sb) == []


def test_a_live_subscription_of_a_duplicate_stripe_customer_is_reported(tmp_path: Path, rules_dir: Path) -> None:
    """A second Stripe customer carrying acme's metadata appears on the clock; the next sync maps acme
    to it and subscribes it, while the first customer's subscription goes on billing the fee. The
    sync said "0 orphan subscriptions"; it now reports the one the map no longer names."""
    with customer_on_clock(tmp_path, rules_dir, STARTER_SINCE_JANUARY) as (sb, con, client, clock, rules, report):
        first = {c["customer_id"]: (c["stripe_customer_id"], c["subscription_id"]) for c in report.customers}
        client.v1.customers.create({"name": "Acme (dup)", "metadata": {"customer_id": "acme"}, "test_clock": clock.id})
        again = _sync(con, client, rules, _customers(tmp_path, rules, STARTER_SINCE_JANUARY), clock)
        mapped = {c["customer_id"]: c["stripe_customer_id"] for c in again.customers}
        assert mapped["acme"] != first["acme"][0]
        assert _findings(again, "acme") == [
            ("orphan", "subscription", "customer_id", f"mapped to {mapped['acme']}", "starter 2026-01")]
        [dup] = [f for f in again.findings if f.our_key == "acme"]
        assert dup.stripe_id == first["acme"][1] and "a duplicate" in dup.detail
        assert _findings(again, "globex") == [] and "1 orphan subscriptions" in again.summary()


def test_a_subscription_made_before_the_first_plan_starts_is_reported(tmp_path: Path, rules_dir: Path) -> None:
    """newco's plan starts Nov 1, and someone subscribed it at Stripe on Oct 20 (starter's prices): Stripe
    bills Oct 20 - 31, which we do not rate. The finding said the plan change was 'not switched', though
    the subscription carries that plan; now it is an `orphan` finding saying why, and nothing else."""
    with customer_on_clock(tmp_path, rules_dir, STARTER_FROM_NOVEMBER,
                           start=dt.datetime(2026, 10, 20, 14, tzinfo=UTC)) as (sb, con, client, clock, rules, report):
        stripe_customer = report.customers[0]["stripe_customer_id"]
        by_hand = client.v1.subscriptions.create({
            "customer": stripe_customer,
            "items": [{"price": report.prices[("starter", "2026-01", "platform fee")], "quantity": 1},
                      {"price": report.prices[("starter", "2026-01", "api calls")]}]})
        again = _sync(con, client, rules, _customers(tmp_path, rules), clock)
        assert again.created == {}
        # its plan and version are read from its prices' lookup keys (it has none of our metadata)
        assert _findings(again, "newco") == [("orphan", "subscription", "plan", "starter from 2026-11-01", "starter 2026-01")]
        [early] = [f for f in again.findings if f.our_key == "newco"]
        assert early.stripe_id == by_hand.id
        assert "before the customer's first plan starts: Stripe bills the days before 2026-11-01" in early.detail
        assert again.customers[0]["subscription_id"] == by_hand.id
        assert _cancellations(sb) == []


def test_a_sync_on_a_test_clock_finds_its_own_customers_and_subscriptions_only(tmp_path: Path, rules_dir: Path) -> None:
    """Stripe lists customers and subscriptions on a test clock only when asked with `test_clock`
    (shared/stripe-openapi/spec3-subset.json, GET /v1/customers: "The response will not include
    customers with test clocks if this parameter is not set"). The sync listed without it: against
    Stripe, a second sync on the clock found none of its own objects (an IdempotencyError the same day,
    a second customer and subscription, the fee billed twice, after 24 h); against the sandbox, which
    listed everything, a sync on a second clock (a re-run of the demo for another month) adopted the
    first clock's customer. Each sync on a clock now sees that clock's objects, and only those."""
    import time

    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, first_clock, rules, first):
        [on_first] = first.customers
        assert on_first["test_clock_id"] == first_clock.id
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts(2026, 10, 1), "name": "again"})
        report = _sync(con, client, rules, _customers(tmp_path, rules), clock)
        assert (report.created, report.found.get("customer")) == ({"customer": 1, "subscription": 1}, None)
        [row] = report.customers
        assert row["test_clock_id"] == clock.id and row["stripe_customer_id"] != on_first["stripe_customer_id"]
        assert row["subscription_id"] != on_first["subscription_id"]

        # the clock moves on the same day (the idempotency keys still live), then a day later (expired)
        sb.advance_clock(clock.id, _ts(2026, 10, 20))
        for later in (None, int(time.time()) + 25 * 3600):
            if later:
                sb.set_now(later)
            again = _sync(con, client, rules, _customers(tmp_path, rules), clock)
            assert (again.created, again.found.get("customer"), again.found.get("subscription")) == ({}, 1, 1)
            assert again.customers == report.customers
            assert [f for f in again.findings if f.kind == "subscription"] == []
        mine = client.v1.customers.list({"test_clock": clock.id, "limit": 100}).data
        assert [c.id for c in mine] == [row["stripe_customer_id"]]
        live = client.v1.subscriptions.list({"test_clock": clock.id, "limit": 100}).data
        assert [s.id for s in live] == [row["subscription_id"]]
        # October's fee once on this clock's customer
        assert [(i.billing_reason, i.total) for i in client.v1.invoices.list({"customer": row["stripe_customer_id"]}).data] == [
            ("subscription_create", 1900)]


def test_a_subscription_to_another_product_is_not_taken_for_ours(tmp_path: Path, rules_dir: Path) -> None:
    """acme already has a live subscription at Stripe to another product (support, 50.00 a month: no
    metadata of ours, none of our prices). The sync took it for ours, created none and said nothing:
    Stripe billed none of acme's usage or fees. It now subscribes acme to its plan (test mode); and a
    sync that may not create (production) reports a customer left with no subscription of ours."""
    with customer_on_clock(tmp_path, rules_dir, STARTER_SINCE_JANUARY) as (sb, con, client, clock, rules, report):
        subs = {c["customer_id"]: c["subscription_id"] for c in report.customers}
        newco = client.v1.customers.create({"name": "Newco", "metadata": {"customer_id": "newco"},
                                            "test_clock": clock.id})
        support = client.v1.prices.create({"currency": "usd", "unit_amount": 5000,
                                           "product": client.v1.products.create({"name": "Premium support"}).id,
                                           "recurring": {"interval": "month", "usage_type": "licensed"}})
        foreign = client.v1.subscriptions.create({"customer": newco.id, "items": [{"price": support.id, "quantity": 1}]})
        with_newco = STARTER_SINCE_JANUARY + "newco,Newco,ap@newco.test,usd,,starter,2026-01-01,succeeds\n"
        production = catalog.sync_catalog(con, client, rules, _customers(tmp_path, rules, with_newco),
                                          create_customers=False, test_clock=clock.id)
        assert _findings(production, "newco") == [("not_subscribed", "subscription", "plan", "starter 2026-01", None)]
        [missing] = [f for f in production.findings if f.our_key == "newco"]
        assert foreign.id in missing.detail and "carry none of our prices" in missing.detail
        assert _findings(production, "acme") == [] and "1 not yet subscribed" in production.summary()

        created = _sync(con, client, rules, _customers(tmp_path, rules, with_newco), clock)
        ours = {c["customer_id"]: c["subscription_id"] for c in created.customers}
        assert ours["newco"] not in (None, foreign.id) and created.created == {"subscription": 1}
        assert _carried(client.v1.subscriptions.retrieve(ours["newco"])) == ("starter", "2026-01")
        assert (ours["acme"], ours["globex"]) == (subs["acme"], subs["globex"])
        assert _findings(created, "newco") == []


def _carried(sub) -> tuple:
    return sub.metadata.to_dict().get("plan"), sub.metadata.to_dict().get("plan_version")


def test_an_archived_price_is_reported_and_no_subscription_is_made_on_it(tmp_path: Path, rules_dir: Path) -> None:
    """Someone archives starter 2026-01's seats price in Stripe. The sync reused it without a word, and
    the new subscription it then asked for was refused ("The price specified is inactive"): the whole
    sync failed, for every customer after newco too. Now the price is reported (drift, `active`),
    newco is reported not subscribed, and the sync goes on; once the price is active again, a sync
    subscribes newco."""
    import stripe

    with customer_on_clock(tmp_path, rules_dir, STARTER_FROM_NOVEMBER,
                           start=dt.datetime(2026, 10, 20, 14, tzinfo=UTC)) as (sb, con, client, clock, rules, report):
        seats = report.prices[("starter", "2026-01", "seats")]
        client.v1.prices.update(seats, {"active": False})
        stripe_customer = report.customers[0]["stripe_customer_id"]
        # the sandbox refuses it as Stripe does, and makes nothing
        with pytest.raises(stripe.InvalidRequestError, match="The price specified is inactive") as refused:
            client.v1.subscriptions.create({"customer": stripe_customer, "items": [
                {"price": report.prices[("starter", "2026-01", "platform fee")], "quantity": 1}, {"price": seats}]})
        assert refused.value.param == "items[1][price]"
        assert client.v1.subscriptions.list({"customer": stripe_customer, "status": "all"}).data == []

        sb.advance_clock(clock.id, _ts(2026, 11, 3, 10))
        later = _sync(con, client, rules, _customers(tmp_path, rules), clock)
        [archived] = [f for f in later.findings if f.stripe_id == seats]
        assert (archived.finding, archived.our_key, archived.field, archived.ours, archived.theirs) == (
            "drift", "starter|2026-01|seats", "active", "true", "false")
        assert _findings(later, "newco") == [("not_subscribed", "subscription", "plan", "starter 2026-01", None)]
        [unsubscribed] = [f for f in later.findings if f.our_key == "newco"]
        assert f"Stripe refuses archived prices on a new subscription ({seats})" in unsubscribed.detail
        assert later.customers[0]["subscription_id"] is None and later.created == {}
        assert client.v1.subscriptions.list({"customer": stripe_customer, "status": "all"}).data == []
        assert con.execute("SELECT count(*) FROM stripe_catalog_findings WHERE field = 'active'").fetchone() == (1,)

        client.v1.prices.update(seats, {"active": True})
        again = _sync(con, client, rules, _customers(tmp_path, rules), clock)
        assert again.created == {"subscription": 1} and _findings(again, "newco") == []


def test_a_subscription_anchored_by_an_instant_bills_on_that_instants_day(tmp_path: Path, rules_dir: Path) -> None:
    """acme's list anchors it on the 31st; its live subscription (made by hand, or by an older sync) was
    anchored by the instant Sep 30 00:00, not by `billing_cycle_anchor_config`. Stripe keeps that
    instant's day, the 30th, for good: it bills Oct 30 - Nov 30 where we rate Oct 31 - Nov 30. The sync
    took Sep 30 for the 31st clamped to September and said nothing (audit). It is drift: 31 vs 30."""
    from metering import warehouse
    from metering.stripe_sandbox.testing import running_sandbox

    rules = load_rules(rules_dir)
    customers = _customers(tmp_path, rules, PRO_SINCE_JANUARY.replace(",,pro,", ",31,starter,"))
    with running_sandbox() as sb, warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        client = sb.client()
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts(2026, 9, 5)})
        first = catalog.sync_catalog(con, client, rules, customers, create_customers=True, test_clock=clock.id,
                                     subscriptions=False)
        items = [{"price": first.prices[("starter", "2026-01", c.name)], **({"quantity": 1} if c.model == "flat" else {})}
                 for c in rules.version("starter", "2026-01").charges if ("starter", "2026-01", c.name) in first.prices]
        sub = client.v1.subscriptions.create({
            "customer": first.customers[0]["stripe_customer_id"], "items": items, "billing_cycle_anchor": _ts(2026, 9, 30),
            "metadata": {"customer_id": "acme", "plan": "starter", "plan_version": "2026-01"}})
        again = _sync(con, client, rules, customers, clock)
        assert _findings(again, "acme") == [("drift", "subscription", "billing_anchor_day", "31", "30")]
        sb.advance_clock(clock.id, _ts(2026, 10, 31, 12))
        item = client.v1.subscriptions.retrieve(sub.id)["items"].data[0]
        assert (item.current_period_start, item.current_period_end) == (_ts(2026, 10, 30), _ts(2026, 11, 30))


def test_a_changed_anchor_is_drift_of_the_live_subscription(tmp_path: Path, rules_dir: Path) -> None:
    """acme's subscription bills calendar months; the list then anchors acme on the 15th. The sync said
    nothing (0 drift) and kept the subscription on the 1st, while rating moved to the 15th: Nov 1 - 14's
    usage was in no rated period, and Stripe's invoice in no period of ours (audit). It is a `drift`
    finding on the subscription, and the sync changes nothing at Stripe."""
    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        assert _findings(report, "acme") == []
        moved = (tmp_path / "c.csv").read_text().replace("usd,,starter", "usd,15,starter")
        again = _sync(con, client, rules, _customers(tmp_path, rules, moved), clock)
        assert _findings(again, "acme") == [("drift", "subscription", "billing_anchor_day", "15", "1")]
        [drift] = [f for f in again.findings if f.our_key == "acme"]
        assert drift.stripe_id == report.customers[0]["subscription_id"]
        assert "bills from day 1 of each month, where the customer list anchors its periods on day 15" in drift.detail
        assert again.created == {} and _cancellations(sb) == []


def test_an_anchor_on_the_31st_is_no_drift_in_a_short_month(tmp_path: Path, rules_dir: Path) -> None:
    """Stripe keeps `day_of_month` 31 in the subscription's anchor config, though its anchor instant falls
    on Sep 30: the same anchor as ours, reported as nothing."""
    csv = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n" \
          "acme,Acme,billing@acme.test,usd,31,starter,2026-01-01,succeeds\n"
    with customer_on_clock(tmp_path, rules_dir, csv, start=dt.datetime(2026, 9, 5, tzinfo=UTC)) as (
            sb, con, client, clock, rules, report):
        again = _sync(con, client, rules, _customers(tmp_path, rules), clock)
        assert _findings(again, "acme") == []
