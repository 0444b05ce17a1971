"""The Stripe catalog sync (metering/stripe/catalog.py), a fourth hand mutation audit (m31c), after
20g, 25e and m28b: what their tests left unchecked, and four defects found by reading the code.

- `our_subscriptions`: the set of Stripe subscriptions of ours holds no None for a customer mapped
  without a subscription (the invoice items biller compares an invoice's parent subscription, None
  for a one-off invoice, with it); `parent_subscription` of an expanded subscription object;
- customers: a created customer's name and email; a mapping made again is one row; an empty customer
  list is a catalog-only sync;
- `price_drift` of tiers stated in integer minor units only; `proration_behavior` after a
  cancellation; a subscription waits for its plan's first version, and one made by hand before it is
  an `orphan`; a version starting on the sync's day is reported once, as in force;
- defect m31c-D1: a plan version none of whose charges has a Stripe price (every one filtered by a
  dimension or a minimum: all billed as invoice items) made the sync ask Stripe for a subscription
  with no items; Stripe refused it ("Missing required param: items") and the whole sync failed with a
  traceback, storing nothing for any customer (nor the meters, prices and findings);
- defect m31c-D2: a Stripe customer that left our list (or a duplicate) holding only another
  product's subscription (support, say) was reported `orphan`, "which we do not rate", although the
  sync never takes such a subscription for ours (it bills none of our usage or fees).
- defect m31c-D3: a price kept for a charge now refused (an earlier sync made it) that Stripe holds
  archived went onto a new subscription, which Stripe refused: the whole sync failed;
- defect m31c-D4: a second live subscription of ours on a mapped Stripe customer (billing the fee and
  usage again, on invoices reconciliation never reads) was not reported.

The four defect tests fail on `a65de4b` and pass since the thirty-first session's fix.

Real sandbox over loopback and real DuckDB (fixtures of conftest.py and push_world.py); every file in
`tmp_path`; no monkeypatching.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from metering import warehouse
from metering.customers import load_customers
from metering.rules.plans import load_rules
from metering.stripe import catalog
from metering.stripe.client import StripeSettings, make_client
from metering.stripe_sandbox.testing import running_sandbox
from push_world import World

UTC = dt.timezone.utc
HEADER = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"


def _customers(tmp_path: Path, rules, csv: str, name: str = "c.csv") -> pl.DataFrame:
    (tmp_path / name).write_text(csv)
    return load_customers(tmp_path / name, rules)


def _rules_with(tmp_path: Path, rules_dir: Path, plan: str, text: str):
    """The shipped rules with one more plan, `plans/<plan>.yaml`."""
    rules_copy = tmp_path / "rules"
    shutil.copytree(rules_dir, rules_copy)
    (rules_copy / "plans" / f"{plan}.yaml").write_text(text)
    return load_rules(rules_copy)


@contextlib.contextmanager
def _on_clock(tmp_path: Path, at: dt.datetime) -> Iterator[tuple]:
    """A warehouse, and a client of a running sandbox with a test clock at `at`: (con, client, clock)."""
    with running_sandbox() as sb, warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        client = make_client(StripeSettings(api_key=sb.api_key, api_base=sb.base_url, meter_events_base=sb.base_url,
                                            max_network_retries=0))
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": int(at.timestamp())})
        yield con, client, clock


# --- our_subscriptions ---------------------------------------------------------------------------------

def test_a_customer_mapped_without_a_subscription_adds_no_subscription_of_ours(world: World) -> None:
    """The world's sync maps acme and globex with no subscription (`subscriptions=False`): the
    subscriptions of ours are none, not {None} (a one-off invoice's parent subscription is None, and
    would be taken for ours)."""
    assert world.con.execute("SELECT count(*) FROM stripe_customer_map").fetchone() == (2,)
    assert catalog.our_subscriptions(world.con) == set()


# --- defect m31c-D1: a plan version with no Stripe price ----------------------------------------------

MIN_ONLY = """plan: minonly
currency: usd
versions:
  - version: "2026-01"
    effective_from: 2026-01-01
    rounding: half_up
    charges:
      - {name: api calls us, meter: api_calls, model: per_unit, unit_amount: "0.001", filters: {region: us}}
      - {name: minimum spend, model: minimum, amount: "10.00"}
"""


def test_a_plan_version_with_no_stripe_price_does_not_fail_the_sync(tmp_path: Path, rules_dir: Path) -> None:
    """minonly 2026-01 has two charges, neither with a Stripe price: `api calls us` is filtered by a
    dimension, `minimum spend` is a minimum (both not_expressible, billed as invoice items). acme
    (starter) and newco (minonly) are synced on a test clock at Oct 1 with `create_customers`.
    acme is subscribed (starter's six prices); newco gets no subscription (one with no items is
    refused by Stripe), a `not_subscribed` finding naming minonly 2026-01, and a map row without a
    subscription; the catalog (meters, prices, the two not_expressible findings) is stored."""
    rules = _rules_with(tmp_path, rules_dir, "minonly", MIN_ONLY)
    customers = _customers(tmp_path, rules, HEADER + "acme,Acme,a@acme.test,usd,,starter,2026-01-01,succeeds\n"
                                               "newco,Newco,n@newco.test,usd,,minonly,2026-01-01,succeeds\n")
    with _on_clock(tmp_path, dt.datetime(2026, 10, 1, tzinfo=UTC)) as (con, client, clock):
        report = catalog.sync_catalog(con, client, rules, customers, create_customers=True, test_clock=clock.id)
        rows = {c["customer_id"]: c for c in report.customers}
        assert rows["acme"]["subscription_id"] is not None
        assert rows["newco"]["subscription_id"] is None
        assert (rows["newco"]["plan"], rows["newco"]["plan_version"]) == ("minonly", "2026-01")
        [newco] = [f for f in report.findings if f.our_key == "newco"]
        assert (newco.finding, newco.kind, newco.stripe_id) == ("not_subscribed", "subscription", None)
        assert "minonly 2026-01" in newco.ours
        assert len(client.v1.subscriptions.list({"test_clock": clock.id}).data) == 1
        stored = con.execute("SELECT our_key FROM stripe_catalog_findings WHERE finding = 'not_expressible' "
                             "AND kind = 'price' AND our_key LIKE 'minonly|%' ORDER BY our_key").fetchall()
        assert stored == [("minonly|2026-01|api calls us",), ("minonly|2026-01|minimum spend",)]
        assert con.execute("SELECT count(*) FROM stripe_customer_map").fetchone() == (2,)


# --- defect m31c-D2: another product's subscription is not an orphan of ours -------------------------

def test_another_products_subscription_of_a_customer_that_left_is_no_orphan(world: World, tmp_path: Path) -> None:
    """acme (mapped, never subscribed by us) holds a live subscription to another product (price
    lookup key `support:gold:2026:hours`, no metadata of ours). acme leaves the list (globex alone):
    that subscription bills none of our usage or fees, as the sync itself decides for a listed customer
    (it is never taken for ours), so it is no `orphan` of ours: the sync reports nothing for acme."""
    product = world.client.v1.products.create({"name": "Premium support"})
    support = world.client.v1.prices.create({"currency": "usd", "unit_amount": 5000, "product": product.id,
                                             "lookup_key": "support:gold:2026:hours",
                                             "recurring": {"interval": "month", "usage_type": "licensed"}})
    world.client.v1.subscriptions.create({"customer": world.stripe_customer["acme"],
                                          "items": [{"price": support.id, "quantity": 1}]})
    only_globex = _customers(tmp_path, world.rules, HEADER + "globex,Globex,ap@globex.test,usd,15,pro,2026-01-01,succeeds\n",
                             "globex.csv")
    report = catalog.sync_catalog(world.con, world.client, world.rules, only_globex, subscriptions=False)
    assert [f for f in report.findings if f.our_key == "acme"] == []
    assert report.finding_counts()["orphan"] == 0


def test_an_expanded_parent_subscription_is_read_as_its_id() -> None:
    """An invoice fetched with `expand=["parent.subscription_details.subscription"]` carries the
    subscription as an object: its id (sub_9) is the parent subscription, as for the plain id string;
    an invoice without a parent (one-off) has none."""
    import stripe

    expanded = stripe.StripeObject.construct_from(
        {"id": "in_1", "object": "invoice", "parent": {"type": "subscription_details", "subscription_details": {
            "subscription": {"id": "sub_9", "object": "subscription"}}}}, "sk_test_x")
    plain = stripe.StripeObject.construct_from(
        {"id": "in_2", "object": "invoice", "parent": {"type": "subscription_details", "subscription_details": {
            "subscription": "sub_9"}}}, "sk_test_x")
    one_off = stripe.StripeObject.construct_from({"id": "in_3", "object": "invoice", "parent": None}, "sk_test_x")
    assert [catalog.parent_subscription(i) for i in (expanded, plain, one_off)] == ["sub_9", "sub_9", None]


# --- customers created and mapped -----------------------------------------------------------------------

def test_a_created_customer_carries_the_lists_name_and_email(world: World) -> None:
    """CUSTOMERS_CSV: acme is `Acme, billing@acme.test`, globex `Globex, ap@globex.test`; the world's
    sync created both at Stripe with that name and email (invoices go to the email)."""
    got = {cid: (c.name, c.email) for cid, c in
           ((cid, world.client.v1.customers.retrieve(sid)) for cid, sid in world.stripe_customer.items())}
    assert got == {"acme": ("Acme", "billing@acme.test"), "globex": ("Globex", "ap@globex.test")}


def test_a_mapping_made_again_is_one_row(tmp_path: Path, rules_dir: Path) -> None:
    """acme is subscribed on a test clock at Oct 1; a second sync finds the same Stripe customer and
    subscription: `stripe_customer_map` keeps one row for that mapping (replaced, with the second
    sync's time), not one per sync, and `stripe_objects` one customer and one subscription row."""
    from push_world import customer_on_clock

    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        [first] = report.customers
        assert first["subscription_id"] is not None
        again = catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules),
                                     create_customers=True, test_clock=clock.id)
        assert again.created == {} and again.customers == report.customers
        rows = con.execute("SELECT customer_id, stripe_customer_id, subscription_id FROM stripe_customer_map").fetchall()
        assert rows == [("acme", first["stripe_customer_id"], first["subscription_id"])]
        kinds = con.execute("SELECT kind, count(*) FROM stripe_objects WHERE kind IN ('customer', 'subscription') "
                            "GROUP BY kind ORDER BY kind").fetchall()
        assert kinds == [("customer", 1), ("subscription", 1)]


def test_an_empty_customer_list_syncs_the_catalog_only(tmp_path: Path, rules_dir: Path) -> None:
    """acme is subscribed on a test clock at Oct 1. A sync given a customer list with a header and no
    row is a catalog-only sync, as with no list: acme's live subscription is not reported `orphan`
    (the list was not read as "everyone left"), and the map still names acme."""
    from push_world import customer_on_clock

    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        empty = _customers(tmp_path, rules, HEADER, "empty.csv")
        assert empty.is_empty()
        again = catalog.sync_catalog(con, client, rules, empty, create_customers=True, test_clock=clock.id)
        assert [f for f in again.findings if f.kind == "subscription"] == [] and again.customers == []
        assert catalog.customer_map(con)["customer_id"].to_list() == ["acme"]


# --- defect m31c-D3: a kept price (of a charge now refused) that Stripe holds archived -----------------

def test_a_kept_price_that_is_archived_subscribes_no_one_and_does_not_fail_the_sync(world: World,
                                                                                   tmp_path: Path) -> None:
    """scale's storage (a first tier with a flat amount: refused today) has a price an earlier sync
    made, `metering:scale:2026-01:storage`, which the sync keeps mapped (so the charge is not billed
    twice); someone archived it in Stripe. initech, on scale since January, is synced with
    `create_customers`: Stripe refuses an archived price on a new subscription, so, as for the prices
    the sync finds archived, the kept price is reported (`drift`, field `active`) and initech gets no
    subscription (`not_subscribed`, naming the archived price) instead of a request Stripe refuses,
    which failed the whole sync with a traceback."""
    product = world.client.v1.products.create({"name": "scale (an earlier sync)"})
    earlier = world.client.v1.prices.create({
        "currency": "usd", "product": product.id, "lookup_key": "metering:scale:2026-01:storage",
        "recurring": {"interval": "month", "usage_type": "metered", "meter": world.report.meters["storage_gb"]},
        "billing_scheme": "tiered", "tiers_mode": "graduated",
        "tiers": [{"up_to": 500, "unit_amount_decimal": "0", "flat_amount_decimal": "2000"},
                  {"up_to": "inf", "unit_amount_decimal": "4"}]})
    world.client.v1.prices.update(earlier.id, {"active": False})
    initech = _customers(tmp_path, world.rules, HEADER + "initech,Initech,ap@initech.test,usd,,scale,2026-01-01,succeeds\n",
                         "initech.csv")
    report = catalog.sync_catalog(world.con, world.client, world.rules, initech, create_customers=True)
    assert report.prices[("scale", "2026-01", "storage")] == earlier.id
    storage = sorted((f.finding, f.field) for f in report.findings if f.our_key == "scale|2026-01|storage")
    assert storage == [("drift", "active"), ("drift", "expressible")]
    [sub] = [f for f in report.findings if f.our_key == "initech"]
    assert (sub.finding, sub.ours) == ("not_subscribed", "scale 2026-01") and earlier.id in sub.detail
    [row] = report.customers
    assert row["subscription_id"] is None


# --- defect m31c-D4: a second live subscription of ours on a mapped customer -------------------------

def test_a_second_live_subscription_of_ours_on_a_mapped_customer_is_reported(tmp_path: Path, rules_dir: Path) -> None:
    """acme is subscribed on a test clock at Oct 1 (starter 2026-01). Someone makes a second
    subscription for acme's Stripe customer with the same six starter prices and our metadata: both
    bill the 19.00 fee and every usage line. The sync maps one of them (the newest Stripe lists) and
    said nothing of the other, whose invoices are then not ours (OUR_SUBSCRIPTIONS_SQL: reconciliation
    never sees the fee billed twice). The one the map does not name is reported `orphan`."""
    from push_world import customer_on_clock

    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        [row] = report.customers
        first = client.v1.subscriptions.retrieve(row["subscription_id"])
        second = client.v1.subscriptions.create({
            "customer": row["stripe_customer_id"],
            "items": [{"price": i.price.id, **({"quantity": 1} if i.price.recurring.usage_type == "licensed" else {})}
                      for i in first["items"].data],
            "metadata": {"customer_id": "acme", "plan": "starter", "plan_version": "2026-01"}})
        again = catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules),
                                     create_customers=True, test_clock=clock.id)
        assert again.created == {}
        [mapped] = [c["subscription_id"] for c in again.customers]
        [other] = {first.id, second.id} - {mapped}
        subs = [(f.finding, f.stripe_id) for f in again.findings if f.kind == "subscription"]
        assert subs == [("orphan", other)]


# --- price_drift --------------------------------------------------------------------------------------

def test_tiers_stated_in_whole_minor_units_only_are_no_drift() -> None:
    """A Stripe price (as a plain dict) whose tiers state only the integer `unit_amount` and
    `flat_amount` (their `*_decimal` null): 900 and 750 cents, a 1000-cent flat amount on the last
    tier. Our parameters say the same in decimal strings ("900", "750", flat "1000"): no drift. Read
    as missing, the amounts would be 0 and drift on `tiers`."""
    ours = {"currency": "usd", "billing_scheme": "tiered", "tiers_mode": "volume",
            "recurring": {"interval": "month", "usage_type": "metered", "meter": "mtr_1"},
            "tiers": [{"up_to": 50, "unit_amount_decimal": "900"},
                      {"up_to": "inf", "unit_amount_decimal": "750", "flat_amount_decimal": "1000"}]}
    theirs = {"currency": "usd", "billing_scheme": "tiered", "tiers_mode": "volume",
              "recurring": {"interval": "month", "usage_type": "metered", "meter": "mtr_1"},
              "tiers": [{"up_to": 50, "unit_amount": 900, "unit_amount_decimal": None, "flat_amount": None,
                         "flat_amount_decimal": None},
                        {"up_to": None, "unit_amount": 750, "unit_amount_decimal": None, "flat_amount": 1000,
                         "flat_amount_decimal": None}]}
    assert catalog.price_drift(ours, theirs) == []


# --- proration_behavior ---------------------------------------------------------------------------------

def test_only_time_right_after_a_cancellation_inside_the_period_is_paid_ahead() -> None:
    """Our period starts Oct 1. A subscription cancelled on Oct 5 had billed October's fee in advance:
    a new one starting where it ended (Oct 5) charges no backdated time (`none`). One starting later,
    on Oct 10 (a later plan assignment's first day), does not start at the cancellation, which is all
    the rule covers: `create_prorations`, as with no cancellation at all."""
    oct1, oct5, oct10 = (dt.datetime(2026, 10, d, tzinfo=UTC) for d in (1, 5, 10))
    assert catalog.proration_behavior(oct5, oct1, oct5) == "none"
    assert catalog.proration_behavior(oct10, oct1, oct5) == "create_prorations"
    assert catalog.proration_behavior(oct10, oct1, None) == "create_prorations"


# --- a plan whose first version starts after the customer's assignment -----------------------------------

LATE = """plan: late
currency: usd
versions:
  - version: "2026-10"
    effective_from: 2026-10-15
    rounding: half_up
    charges:
      - {name: platform fee, model: flat, amount: "31.00"}
"""


def test_a_subscription_waits_for_the_plans_first_version(tmp_path: Path, rules_dir: Path) -> None:
    """Plan `late` has one version, from Oct 15 (a 31.00 fee). newco is assigned to it from Jan 1 and
    first synced on Oct 20 at 14:00 (test clock): backdated to our period's start (Oct 1), the
    subscription would price Oct 1 - 14, which no version rates; it starts at Oct 15 00:00 UTC instead,
    with the 2026-10 fee."""
    rules = _rules_with(tmp_path, rules_dir, "late", LATE)
    customers = _customers(tmp_path, rules, HEADER + "newco,Newco,n@newco.test,usd,,late,2026-01-01,succeeds\n")
    with _on_clock(tmp_path, dt.datetime(2026, 10, 20, 14, tzinfo=UTC)) as (con, client, clock):
        report = catalog.sync_catalog(con, client, rules, customers, create_customers=True, test_clock=clock.id)
        [row] = report.customers
        sub = client.v1.subscriptions.retrieve(row["subscription_id"])
        assert sub.start_date == int(dt.datetime(2026, 10, 15, tzinfo=UTC).timestamp())
        assert sub.metadata.to_dict() == {"customer_id": "newco", "plan": "late", "plan_version": "2026-10"}


def test_a_live_subscription_before_the_plans_first_version_is_an_orphan(tmp_path: Path, rules_dir: Path) -> None:
    """newco is assigned to `late` from Jan 1, whose only version starts Oct 15. On Oct 10 (test clock)
    no version of late is in force: the sync creates no subscription, and one made by hand with late's
    fee (metadata late 2026-10) bills time we do not rate: `orphan`, ours "late: no version in force on
    2026-10-10", theirs "late 2026-10"."""
    rules = _rules_with(tmp_path, rules_dir, "late", LATE)
    customers = _customers(tmp_path, rules, HEADER + "newco,Newco,n@newco.test,usd,,late,2026-01-01,succeeds\n")
    with _on_clock(tmp_path, dt.datetime(2026, 10, 10, tzinfo=UTC)) as (con, client, clock):
        first = catalog.sync_catalog(con, client, rules, customers, create_customers=True, test_clock=clock.id)
        [row] = first.customers
        assert row["subscription_id"] is None and [f for f in first.findings if f.our_key == "newco"] == []
        made = client.v1.subscriptions.create({
            "customer": row["stripe_customer_id"],
            "items": [{"price": first.prices[("late", "2026-10", "platform fee")], "quantity": 1}],
            "metadata": {"customer_id": "newco", "plan": "late", "plan_version": "2026-10"}})
        again = catalog.sync_catalog(con, client, rules, customers, create_customers=True, test_clock=clock.id)
        # (made on Oct 10 without an anchor, it also bills from the 10th: an anchor drift, not looked at here)
        found = [(f.finding, f.stripe_id, f.field, f.ours, f.theirs) for f in again.findings
                 if f.our_key == "newco" and f.field == "plan"]
        assert found == [("orphan", made.id, "plan", "late: no version in force on 2026-10-10", "late 2026-10")]


def test_a_version_starting_on_the_sync_day_is_reported_once_as_in_force(tmp_path: Path, rules_dir: Path) -> None:
    """acme, on pro since January, is first synced on Oct 15 at 14:00 (test clock), the first day of
    pro 2026-10: backdated to Oct 1, the subscription carries 2026-01. 2026-10 is in force, not
    switched: one finding ("in force, not switched"), not a second one saying it is still to come."""
    from push_world import customer_on_clock

    csv = HEADER + "acme,Acme,billing@acme.test,usd,,pro,2026-01-01,succeeds\n"
    with customer_on_clock(tmp_path, rules_dir, csv, start=dt.datetime(2026, 10, 15, 14, tzinfo=UTC)) as (
            sb, con, client, clock, rules, report):
        found = [(f.finding, f.ours, f.theirs) for f in report.findings if f.our_key == "acme"]
        assert found == [("not_expressible", "pro 2026-10 from 2026-10-15", "pro 2026-01")]
        [in_force] = [f for f in report.findings if f.our_key == "acme"]
        assert in_force.detail.startswith("in force, not switched")
