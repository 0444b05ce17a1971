"""The catalog sync and the invoice items biller: cases a third hand mutation audit (m28b) found
unchecked, after 20g, 22a, 25e and 26c.

Catalog (metering/stripe/catalog.py):
- the Idempotency-Keys the first sync creates meters (event name and window) and products (plan)
  under, read from the sandbox's request log;
- a sync that subscribes no one stores no subscription rows; a customer's metadata carries
  `payment_behavior` only when the sandbox flag asks;
- `price_drift` of a package price that rounds the other way (`transform_quantity.round`);
- a customer whose plans all start later waits for the first of them; a production sync reports no
  `not_subscribed` for a plan still to come; a new subscription starts where the latest of several
  cancelled ones ended, whatever order Stripe lists them in; the retirement day itself is reported
  as the end in force;
- which subscriptions are ours and what they carry: a price lookup key of another product's
  (`support:...`) makes none ours; metadata naming the plan but not the version leaves the version to
  the prices' lookup keys; a plan change in force is reported with the assignment that made it; an
  anchor on the 31st first met on Sep 30 is read from the anchor config (31), not the instant (30);
- defect m28b-D1 (fixed in the twenty-eighth session): `write_catalog` replaced `stripe_customer_map`,
  so `our_subscriptions` forgot an earlier sync's subscription and the biller no longer found its
  draft invoice.

Invoice items (metering/stripe/invoice_items.py): the run summary lists the billed currencies in order.

Real sandbox over loopback and real DuckDB (fixtures of conftest.py and push_world.py); every file in
`tmp_path`; no monkeypatching.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path


from metering.customers import load_customers
from metering.rules.plans import load_rules
from metering.stripe import catalog
from push_world import CUSTOMERS_CSV, World, customer_on_clock

UTC = dt.timezone.utc


def _customers(world: World, tmp_path: Path):
    """The world's customer list (push_world.make_world wrote it to `customers.csv`), loaded again."""
    return load_customers(tmp_path / "customers.csv", world.rules)


# --- catalog: what the first sync creates --------------------------------------------------------------

def test_the_first_syncs_meters_and_products_are_created_under_their_own_keys(world: World) -> None:
    """The shipped rules: 5 meters, synced with day windows, and 4 plans. A meter's key names its event
    name and the window (a meter asked for with another window is another request: within Stripe's
    24 h an hour-window sync must not be answered with the day-window meter); a product's names its
    plan (one product per plan, whatever the version)."""
    meters = world.sandbox.requests_log(path="/v1/billing/meters", method="POST")
    assert sorted(r["idempotency_key"] for r in meters) == [
        "metering-catalog:meter:metering_active_users:day", "metering-catalog:meter:metering_api_calls:day",
        "metering-catalog:meter:metering_seats:day", "metering-catalog:meter:metering_storage_gb:day",
        "metering-catalog:meter:metering_tokens:day"]
    products = world.sandbox.requests_log(path="/v1/products", method="POST")
    assert sorted(r["idempotency_key"] for r in products) == [
        "metering-catalog:product:pro", "metering-catalog:product:pro_jpy", "metering-catalog:product:scale",
        "metering-catalog:product:starter"]


def test_a_sync_that_subscribes_no_one_stores_customers_and_no_subscriptions(world: World) -> None:
    """The world's sync creates customers (acme, globex) but no subscriptions (`subscriptions=False`):
    `stripe_objects` holds two customer rows and no subscription row (a row with no Stripe id would
    name a subscription that does not exist), and the map has no subscription either."""
    kinds = dict(world.con.execute("SELECT kind, count(*) FROM stripe_objects WHERE kind IN ('customer', "
                                   "'subscription') GROUP BY kind").fetchall())
    assert kinds == {"customer": 2}
    assert world.con.execute("SELECT count(*) FROM stripe_customer_map WHERE subscription_id IS NOT NULL"
                             ).fetchone() == (0,)


def test_a_customer_carries_payment_behavior_only_when_the_sandbox_flag_asks(world: World, tmp_path: Path) -> None:
    """CUSTOMERS_CSV gives acme and globex `payment_behavior` succeeds; the world's sync leaves
    `sandbox_payment_behavior` off, so their Stripe metadata is `customer_id` alone (a live account
    has no use for a sandbox's payment hint). A customer created with the flag on (initech) carries it."""
    for cid, cus in world.stripe_customer.items():
        assert world.client.v1.customers.retrieve(cus).metadata.to_dict() == {"customer_id": cid}
    (tmp_path / "more.csv").write_text(CUSTOMERS_CSV + "initech,Initech,ap@initech.test,usd,,starter,2026-01-01,fails\n")
    report = catalog.sync_catalog(world.con, world.client, world.rules,
                                  load_customers(tmp_path / "more.csv", world.rules), create_customers=True,
                                  subscriptions=False, sandbox_payment_behavior=True)
    assert report.created == {"customer": 1}
    initech = next(c["stripe_customer_id"] for c in report.customers if c["customer_id"] == "initech")
    assert world.client.v1.customers.retrieve(initech).metadata.to_dict() == {"customer_id": "initech",
                                                                              "payment_behavior": "fails"}



def test_on_the_day_a_plan_retires_its_end_is_reported_in_force(tmp_path: Path, rules_dir: Path) -> None:
    """starter's last version ends on Nov 1 (`effective_to: 2026-11-01`, exclusive: no version of
    starter rates Nov 1). acme is subscribed on Oct 1; a sync at Nov 1 00:00 sits on the first day
    without a version, so the orphan finding says the end is in force ("no version of starter is in
    force since 2026-11-01"), not that it is still to come."""
    import shutil

    retired = tmp_path / "rules"
    shutil.copytree(rules_dir, retired)
    plan = retired / "plans" / "starter.yaml"
    plan.write_text(plan.read_text().replace("effective_from: 2026-01-01",
                                             "effective_from: 2026-01-01\n    effective_to: 2026-11-01"))
    with customer_on_clock(tmp_path, retired) as (sb, con, client, clock, rules, report):
        sb.advance_clock(clock.id, int(dt.datetime(2026, 11, 1, tzinfo=UTC).timestamp()))
        again = catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules),
                                     create_customers=True, test_clock=clock.id)
        [end] = [f for f in again.findings if f.our_key == "acme"]
        assert (end.finding, end.ours, end.theirs) == ("orphan", "starter ends 2026-11-01", "starter 2026-01")
        assert end.detail.startswith("in force: no version of starter is in force since 2026-11-01: Stripe keeps")



def test_a_package_price_that_rounds_the_other_way_is_drift(rules_dir: Path) -> None:
    """starter 2026-01 tokens: 0.02 per started 1,000 tokens (`package_round: up`). A Stripe price with
    the same divisor but `round: down` bills 1,500 tokens as one package where we bill two: drift on
    `transform_quantity`, (1000, up) against (1000, down), and nothing else."""
    version = load_rules(rules_dir).version("starter", "2026-01")
    ours = catalog.price_params(version, next(c for c in version.charges if c.name == "tokens"), "mtr_x")
    assert ours["transform_quantity"] == {"divide_by": 1000, "round": "up"}
    theirs = {"currency": "usd", "billing_scheme": "per_unit", "unit_amount_decimal": "2",
              "recurring": {"usage_type": "metered", "interval": "month", "meter": "mtr_x"},
              "transform_quantity": {"divide_by": 1000, "round": "down"}}
    assert catalog.price_drift(ours, theirs) == [("transform_quantity", "(1000, 'up')", "(1000, 'down')")]
    assert catalog.price_drift(ours, {**theirs, "transform_quantity": {"divide_by": 1000, "round": "up"}}) == []



def test_a_customer_whose_plans_all_start_later_waits_for_the_first_of_them(tmp_path: Path, rules_dir: Path) -> None:
    """newco's list: starter from Dec 1, then pro from 2027-01-01; the sync runs on Nov 20 (the clock).
    No assignment is in force, so the one that counts is the first to come, starter (Dec 1): newco is
    not subscribed yet and the finding names starter from 2026-12-01 (not the later pro); the map
    names starter at its version in force on Dec 1 (2026-01), with no subscription."""
    csv = ("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
           "newco,Newco,ap@newco.test,usd,,starter,2026-12-01,succeeds\n"
           "newco,Newco,ap@newco.test,usd,,pro,2027-01-01,succeeds\n")
    with customer_on_clock(tmp_path, rules_dir, csv, start=dt.datetime(2026, 11, 20, tzinfo=UTC)) as (
            sb, con, client, clock, rules, report):
        assert [(f.finding, f.kind, f.ours) for f in report.findings if f.our_key == "newco"] == [
            ("not_subscribed", "subscription", "starter from 2026-12-01")]
        [row] = report.customers
        assert (row["plan"], row["plan_version"], row["subscription_id"]) == ("starter", "2026-01", None)



def test_a_new_subscription_starts_where_the_latest_of_several_cancelled_ones_ended(
        tmp_path: Path, rules_dir: Path) -> None:
    """acme (starter) is subscribed on Oct 1; cancelled on Oct 5 00:00 and subscribed again by a sync then
    (from Oct 5); that one is cancelled on Oct 10 00:00. A sync on Oct 20 at 14:00 backdates the new
    subscription to our period's start (Oct 1) but never over time an earlier subscription billed: the
    latest end of the two is Oct 10, so it starts Oct 10 00:00 (from Oct 5 it would bill Oct 5 - 10
    twice), whatever order Stripe lists the cancelled ones in."""
    def at(*args: int) -> int:
        return int(dt.datetime(*args, tzinfo=UTC).timestamp())

    def sync():
        return catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules),
                                    create_customers=True, test_clock=clock.id)

    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        first = report.customers[0]["subscription_id"]
        sb.advance_clock(clock.id, at(2026, 10, 5))
        client.v1.subscriptions.cancel(first)
        second = sync().customers[0]["subscription_id"]
        assert second != first and client.v1.subscriptions.retrieve(second).start_date == at(2026, 10, 5)
        sb.advance_clock(clock.id, at(2026, 10, 10))
        client.v1.subscriptions.cancel(second)
        sb.advance_clock(clock.id, at(2026, 10, 20, 14))
        third = sync().customers[0]["subscription_id"]
        assert third not in (first, second)
        assert client.v1.subscriptions.retrieve(third).start_date == at(2026, 10, 10)



def test_a_sync_that_may_not_subscribe_reports_only_the_customers_whose_plan_has_started(
        world: World, tmp_path: Path) -> None:
    """acme and globex (plans since January) and newco (starter from Dec 1) exist at Stripe with no
    subscription; a production sync (may not create) on Nov 20 reports acme and globex as
    `not_subscribed` (Stripe bills none of their usage or fees), and nothing for newco: its plan has
    not started, so there is nothing yet that Stripe fails to bill."""
    (tmp_path / "more.csv").write_text(CUSTOMERS_CSV + "newco,Newco,ap@newco.test,usd,,starter,2026-12-01,succeeds\n")
    more = load_customers(tmp_path / "more.csv", world.rules)
    catalog.sync_catalog(world.con, world.client, world.rules, more, create_customers=True, subscriptions=False)
    production = catalog.sync_catalog(world.con, world.client, world.rules, more)
    assert sorted((f.our_key, f.finding, f.ours) for f in production.findings if f.kind == "subscription") == [
        ("acme", "not_subscribed", "starter 2026-01"), ("globex", "not_subscribed", "pro 2026-10")]
    assert production.created == {}



def test_a_price_lookup_key_of_another_product_does_not_make_a_subscription_ours(world: World, tmp_path: Path) -> None:
    """acme (no subscription yet) holds a live subscription to another product whose price has a
    four-part lookup key of its own, `support:gold:2026:hours` (not `metering:...`). It is not ours:
    a production sync reports acme `not_subscribed`, naming that subscription as one carrying none of
    our prices; taken for ours (plan gold, version 2026), acme would look subscribed."""
    product = world.client.v1.products.create({"name": "Premium support"})
    support = world.client.v1.prices.create({"currency": "usd", "unit_amount": 5000, "product": product.id,
                                             "lookup_key": "support:gold:2026:hours",
                                             "recurring": {"interval": "month", "usage_type": "licensed"}})
    foreign = world.client.v1.subscriptions.create({"customer": world.stripe_customer["acme"],
                                                    "items": [{"price": support.id, "quantity": 1}]})
    report = catalog.sync_catalog(world.con, world.client, world.rules,
                                  _customers(world, tmp_path))
    [acme] = [f for f in report.findings if f.our_key == "acme" and f.kind == "subscription"]
    assert (acme.finding, acme.stripe_id, acme.ours) == ("not_subscribed", foreign.id, "starter 2026-01")
    assert "carry none of our prices" in acme.detail


def test_a_subscription_naming_its_plan_but_not_its_version_is_read_from_its_prices(world: World,
                                                                                   tmp_path: Path) -> None:
    """globex's subscription was made by hand with our pro 2026-01 prices and metadata naming the plan
    (`pro`) but no version. Its version is then read from its prices' lookup keys, 2026-01; on Nov 20
    pro 2026-10 (from Oct 15) is in force, so the sync reports that change not switched on it:
    ours `pro 2026-10 from 2026-10-15`, theirs `pro 2026-01` (read as unknown, it went unsaid)."""
    keys = [k for k in world.report.prices if k[:2] == ("pro", "2026-01")]
    metered = [world.report.prices[k] for k in keys
               if world.client.v1.prices.retrieve(world.report.prices[k]).recurring.usage_type == "metered"]
    assert metered
    world.client.v1.subscriptions.create({"customer": world.stripe_customer["globex"],
                                          "items": [{"price": p} for p in metered],
                                          "metadata": {"customer_id": "globex", "plan": "pro"}})
    report = catalog.sync_catalog(world.con, world.client, world.rules, _customers(world, tmp_path))
    # (made on Nov 20 without an anchor, it also bills from the 20th: a drift on the anchor, not looked at here)
    assert [(f.finding, f.ours, f.theirs) for f in report.findings if f.our_key == "globex" and f.field == "plan"] == [
        ("not_expressible", "pro 2026-10 from 2026-10-15", "pro 2026-01")]



def test_a_plan_change_in_force_is_reported_with_the_assignment_that_made_it(tmp_path: Path, rules_dir: Path) -> None:
    """acme is subscribed to starter on Oct 1; the list then moves it to pro from Nov 10. A sync on
    Nov 20 (pro's version in force: 2026-10, from Oct 15) reports the change in force, not switched on
    the subscription: ours names the assignment, `pro from 2026-11-10` (not the version's own start,
    `pro 2026-10 from 2026-10-15`, which acme was never on), theirs `starter 2026-01`."""
    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        sb.advance_clock(clock.id, int(dt.datetime(2026, 11, 20, tzinfo=UTC).timestamp()))
        (tmp_path / "c.csv").write_text((tmp_path / "c.csv").read_text()
                                        + "acme,Acme,billing@acme.test,usd,,pro,2026-11-10,succeeds\n")
        again = catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules),
                                     create_customers=True, test_clock=clock.id)
        [change] = [f for f in again.findings if f.our_key == "acme"]
        assert (change.finding, change.field, change.ours, change.theirs) == (
            "not_expressible", "plan", "pro from 2026-11-10", "starter 2026-01")
        assert change.detail.startswith("in force, not switched on the Stripe subscription")



def test_an_anchor_on_the_31st_first_met_on_the_30th_is_no_drift(tmp_path: Path, rules_dir: Path) -> None:
    """acme is anchored on the 31st and first synced on Oct 5: our period runs Sep 30 - Oct 31 (no Sep
    31), so the subscription starts, and its anchor instant falls, on Sep 30, while its
    `billing_cycle_anchor_config.day_of_month` keeps 31. The day it bills from is the config's, 31:
    a second sync reports no anchor drift (read from the instant, 30, it would)."""
    csv = ("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
           "acme,Acme,billing@acme.test,usd,31,starter,2026-01-01,succeeds\n")
    with customer_on_clock(tmp_path, rules_dir, csv, start=dt.datetime(2026, 10, 5, tzinfo=UTC)) as (
            sb, con, client, clock, rules, report):
        sub = client.v1.subscriptions.retrieve(report.customers[0]["subscription_id"])
        sep30 = int(dt.datetime(2026, 9, 30, tzinfo=UTC).timestamp())
        assert (sub.billing_cycle_anchor, sub.billing_cycle_anchor_config.day_of_month) == (sep30, 31)
        again = catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules),
                                     create_customers=True, test_clock=clock.id)
        assert [f for f in again.findings if f.our_key == "acme"] == [] and again.created == {}


# --- defect: the map forgets the subscriptions of earlier syncs ----------------------------------------

def test_a_true_up_goes_onto_the_draft_of_our_earlier_subscription_after_a_sync_replaced_it(
        tmp_path: Path, rules_dir: Path) -> None:
    """acme (pro since January) cancels at September's end: at Oct 1 00:15 its subscription is
    `canceled` and September's cycle invoice (of that subscription) is still a draft. A sync then runs
    and subscribes acme anew (Oct 1 on). `OUR_SUBSCRIPTIONS_SQL` says the map keeps "the latest and
    earlier ones", but `write_catalog` replaces the whole map, so the first subscription is no longer
    "ours" and its draft was taken for another product's: the 51.00 true-up went pending onto the new
    subscription's October invoice instead of September's (and the push likewise stopped reading that
    subscription's finalized invoices as closing September). Now onto September's draft, as
    test_ledger_items_mutants26 shows without the second sync; the map the push and the biller read
    (`customer_map`) is the latest sync's alone: the new subscription."""
    from test_invoice_items import CSV, biller, cycle_invoice, items_at_stripe
    from push_world import OCT1, SEP1, SEPTEMBER, rate_by_hand as rate

    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus, first = report.customers[0]["stripe_customer_id"], report.customers[0]["subscription_id"]
        client.v1.subscriptions.update(first, {"cancel_at_period_end": True})
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        assert client.v1.subscriptions.retrieve(first).status == "canceled"
        september = cycle_invoice(client, cus, OCT1)
        assert september.status == "draft"
        again = catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules),
                                     create_customers=True, test_clock=clock.id)
        assert again.created == {"subscription": 1}
        assert first in catalog.our_subscriptions(con)   # failed before the fix: only the new one was left
        [now_mapped] = catalog.customer_map(con).select("customer_id", "subscription_id").rows()
        assert now_mapped[1] not in (None, first) and now_mapped[1] in catalog.our_subscriptions(con)
        # a sync that maps nothing new adds no row: one row per mapping ever made (the old one, the new one)
        catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules),
                             create_customers=True, test_clock=clock.id)
        assert con.execute("SELECT subscription_id FROM stripe_customer_map ORDER BY synced_at").fetchall() == [
            (first,), (now_mapped[1],)]
        rate(con, {"minimum spend": 5100}, rated_at=OCT1 + dt.timedelta(minutes=10))
        run = biller(con, client, now=OCT1 + dt.timedelta(minutes=20)).run(SEPTEMBER)
        assert (run.on_draft_invoice, run.pending_next, run.needs_operator) == (1, 0, 0)
        assert [(a, inv) for a, inv, _ in items_at_stripe(client, cus)] == [(5100, september.id)]


# --- invoice items ---------------------------------------------------------------------------------------

def test_the_summary_lists_the_billed_currencies_in_order() -> None:
    """Two currencies billed in one run, jpy added after usd: the summary names them alphabetically
    (one line per run that logs compare from run to run), 300 jpy before 5100 usd."""
    from metering.stripe.invoice_items import InvoiceItemsReport

    report = InvoiceItemsReport(dt.date(2026, 9, 1), billed_minor={"usd": 5100, "jpy": 300})
    assert "billed 300 jpy, 5100 usd (minor units)" in report.summary()
    assert report.summary().startswith("invoice items 2026-09: 0 closed charge(s) Stripe cannot price")
