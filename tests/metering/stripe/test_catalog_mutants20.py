"""The Stripe catalog sync: cases a hand mutation audit (20g) found unchecked. Against the real
sandbox over loopback and a real DuckDB warehouse (fixtures of push_world.py and conftest.py).

- prices: a zero-decimal currency's tier amounts, a graduated charge with an included quantity (the
  free tier shifts every bound), a package rounding down (stripe-facts.md: `up_to` is inclusive,
  `*_decimal` amounts are in minor units, `transform_quantity {divide_by, round: up|down}`);
- drift: each compared field of a meter and a price that exists at Stripe but differs from our rules;
- subscriptions: `billing_cycle_anchor_config` says midnight UTC of the anchor day; the plan
  assignment starting on the sync's own day is the one in force; an anchor day 1 written out or left
  empty is the same anchor.
"""

from __future__ import annotations

import datetime as dt
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from metering import warehouse
from metering.customers import load_customers
from metering.stripe import catalog
from metering.stripe.keys import event_name
from metering.stripe_sandbox.testing import running_sandbox
from push_world import NOW, World, customer_on_clock, make_world

UTC = dt.timezone.utc
PROJECT_ROOT = Path(__file__).resolve().parents[3]
HEADER = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"

EXTRA_PLAN = """\
    plan: extra
    currency: usd
    versions:
      - version: "v1"
        effective_from: 2026-01-01
        rounding: half_up
        charges:
          - name: calls
            meter: api_calls
            model: graduated
            included: 100
            tiers:
              - {up_to: 1000, unit_amount: "0.002"}
              - {up_to: null, unit_amount: "0.001", flat_amount: "5.00"}
          - {name: tokens, meter: tokens, model: package, package_size: 500, package_amount: "0.03",
             package_round: down}
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    """The shipped rules plus plan `extra` (overrides conftest's: the `world` fixture syncs these)."""
    root = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rating_rules", root)
    (root / "plans" / "extra.yaml").write_text(textwrap.dedent(EXTRA_PLAN))
    return root


def _ts(*args: int) -> int:
    return int(dt.datetime(*args, tzinfo=UTC).timestamp())


def _params(rules, plan: str, version: str, charge: str) -> dict:
    v = rules.version(plan, version)
    return catalog.price_params(v, next(c for c in v.charges if c.name == charge), "mtr_x")


def _stripe_tiers(world: World, key: tuple[str, str, str]) -> list[tuple]:
    price = world.client.v1.prices.retrieve(world.report.prices[key], {"expand": ["tiers"]})
    return [(t.up_to, str(t.unit_amount_decimal), str(t.flat_amount_decimal) if t.flat_amount_decimal else None)
            for t in price.tiers]


# --- prices sent to Stripe ------------------------------------------------------------------------------

def test_a_yen_tier_amount_is_in_whole_yen(world: World) -> None:
    # pro_jpy api calls: first 1,000 free, then 0.3 JPY each; JPY has no minor unit, so 0.3 stays 0.3
    p = _params(world.rules, "pro_jpy", "2026-01", "api calls")
    assert (p["currency"], p["tiers"]) == ("jpy", [{"up_to": 1000, "unit_amount_decimal": "0"},
                                                   {"up_to": "inf", "unit_amount_decimal": "0.3"}])
    assert _stripe_tiers(world, ("pro_jpy", "2026-01", "api calls")) == [(1000, "0", None), (None, "0.3", None)]


def test_an_included_quantity_shifts_every_graduated_bound(world: World) -> None:
    """extra calls: 100 included, then 1,000 at 0.2 cents, then 0.1 cents with a 5.00 flat amount. Stripe's
    `up_to` counts from the first unit, so the tiers end at 100 (free), 100 + 1,000 = 1,100, and inf."""
    p = _params(world.rules, "extra", "v1", "calls")
    assert (p["billing_scheme"], p["tiers_mode"]) == ("tiered", "graduated")
    assert p["tiers"] == [{"up_to": 100, "unit_amount_decimal": "0"}, {"up_to": 1100, "unit_amount_decimal": "0.2"},
                          {"up_to": "inf", "unit_amount_decimal": "0.1", "flat_amount_decimal": "500"}]
    assert _stripe_tiers(world, ("extra", "v1", "calls")) == [(100, "0", None), (1100, "0.2", None),
                                                              (None, "0.1", "500")]


def test_a_package_that_rounds_down_says_so(world: World) -> None:
    # extra tokens: 3 cents per whole 500 tokens, a started package not billed
    p = _params(world.rules, "extra", "v1", "tokens")
    assert (p["unit_amount_decimal"], p["transform_quantity"]) == ("3", {"divide_by": 500, "round": "down"})
    price = world.client.v1.prices.retrieve(world.report.prices[("extra", "v1", "tokens")])
    assert (price.transform_quantity.divide_by, price.transform_quantity.round) == (500, "down")


# --- drift: prices and meters that exist at Stripe but differ --------------------------------------------

@pytest.fixture
def seeded(tmp_path: Path, rules_dir: Path) -> Iterator[tuple[World, dict[str, str]]]:
    """Stripe objects made before the first sync (by hand, or by an older release), then synced:
    - meter `metering_api_calls` summing with `last` (ours: sum);
    - starter storage priced on another meter (`legacy_storage`);
    - pro 2026-01 api calls with 0.3 cents in the 1,001-10,000 tier (ours: 0.2);
    - starter tokens per 500 tokens (ours: per 1,000), on a tokens meter made as the sync makes it."""
    with running_sandbox(now=int(NOW.timestamp()), seed=7) as sb, \
            warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        client = sb.client()
        mapping = {"type": "by_id", "event_payload_key": "stripe_customer_id"}
        calls = client.v1.billing.meters.create({
            "display_name": "calls", "event_name": event_name("api_calls"), "default_aggregation": {"formula": "last"},
            "customer_mapping": mapping, "value_settings": {"event_payload_key": "value"}, "event_time_window": "day"})
        legacy = client.v1.billing.meters.create({
            "display_name": "legacy", "event_name": "legacy_storage", "default_aggregation": {"formula": "last"},
            "customer_mapping": mapping, "event_time_window": "day"})
        product = client.v1.products.create({"name": "made by hand"})
        made = {"calls_meter": calls.id, "legacy_meter": legacy.id}
        made["storage"] = client.v1.prices.create({
            "currency": "usd", "product": product.id, "lookup_key": "metering:starter:2026-01:storage",
            "unit_amount_decimal": "25", "recurring": {"interval": "month", "usage_type": "metered", "meter": legacy.id},
        }).id
        made["api calls"] = client.v1.prices.create({
            "currency": "usd", "product": product.id, "lookup_key": "metering:pro:2026-01:api calls",
            "recurring": {"interval": "month", "usage_type": "metered", "meter": calls.id},
            "billing_scheme": "tiered", "tiers_mode": "graduated",
            "tiers": [{"up_to": 1000, "unit_amount_decimal": "0"}, {"up_to": 10000, "unit_amount_decimal": "0.3"},
                      {"up_to": "inf", "unit_amount_decimal": "0.1", "flat_amount_decimal": "500"}]}).id
        made["tokens"] = client.v1.prices.create({
            "currency": "usd", "product": product.id, "lookup_key": "metering:starter:2026-01:tokens",
            "unit_amount_decimal": "2", "transform_quantity": {"divide_by": 500, "round": "up"},
            "recurring": {"interval": "month", "usage_type": "metered", "meter": _tokens_meter(client, mapping)}}).id
        yield make_world(con, sb, rules_dir, tmp_path), made


def _tokens_meter(client, mapping) -> str:
    """Our tokens meter, made ahead of the sync as the sync would make it (sum, day windows)."""
    return client.v1.billing.meters.create({
        "display_name": "tokens", "event_name": event_name("tokens"), "default_aggregation": {"formula": "sum"},
        "customer_mapping": mapping, "value_settings": {"event_payload_key": "value"},
        "event_time_window": "day"}).id


def test_each_differing_field_is_drift_and_nothing_is_changed(seeded) -> None:
    world, made = seeded
    drift = sorted((f.kind, f.our_key, f.stripe_id, f.field, f.ours, f.theirs)
                   for f in world.report.findings if f.finding == "drift")
    assert drift == sorted([
        ("meter", "api_calls", made["calls_meter"], "default_aggregation.formula", "sum", "last"),
        ("price", "pro|2026-01|api calls", made["api calls"], "tiers",
         "[(1000, '0', '0'), (10000, '0.2', '0'), (None, '0.1', '500')]",
         "[(1000, '0', '0'), (10000, '0.3', '0'), (None, '0.1', '500')]"),
        ("price", "starter|2026-01|storage", made["storage"], "recurring.meter",
         world.report.meters["storage_gb"], made["legacy_meter"]),
        ("price", "starter|2026-01|tokens", made["tokens"], "transform_quantity", "(1000, 'up')", "(500, 'up')"),
    ])
    # found and mapped, never replaced: Stripe prices are immutable
    assert world.report.meters["api_calls"] == made["calls_meter"]
    assert [world.report.prices[k] for k in (("starter", "2026-01", "storage"), ("pro", "2026-01", "api calls"),
                                             ("starter", "2026-01", "tokens"))] == [
        made["storage"], made["api calls"], made["tokens"]]
    assert world.report.meters["storage_gb"] != made["legacy_meter"]


# --- subscriptions ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("anchor, clock, start, period_end", [
    # anchor 15, synced Oct 20 14:00: backdated to our period's start, Oct 15 00:00 (an anchor date, so the
    # anchor itself), first period Oct 15 - Nov 15 00:00
    (15, (2026, 10, 20, 14), (2026, 10, 15), (2026, 11, 15)),
    # anchor 31, synced Sep 5: our period Aug 31 - Sep 30 (no Sep 31); the day kept is 31, not 30
    (31, (2026, 9, 5), (2026, 8, 31), (2026, 9, 30)),
])
def test_the_anchor_is_midnight_utc_of_the_anchor_day(tmp_path: Path, rules_dir: Path, anchor, clock, start,
                                                     period_end) -> None:
    csv = HEADER + f"acme,Acme,billing@acme.test,usd,{anchor},starter,2026-01-01,succeeds\n"
    with customer_on_clock(tmp_path, rules_dir, csv, start=dt.datetime(*clock, tzinfo=UTC)) as (
            sb, con, client, clk, rules, report):
        sub = client.v1.subscriptions.retrieve(report.customers[0]["subscription_id"])
        assert (sub.start_date, sub.billing_cycle_anchor) == (_ts(*start), _ts(*start))
        # said in full: Stripe's docs give no default time of day, and any other would put every period off ours
        assert sub.billing_cycle_anchor_config.to_dict() == {"day_of_month": anchor, "hour": 0, "minute": 0,
                                                              "second": 0, "month": None}
        item = sub["items"].data[0]
        assert (item.current_period_start, item.current_period_end) == (_ts(*start), _ts(*period_end))


def test_the_assignment_starting_on_the_sync_day_is_in_force(tmp_path: Path, rules_dir: Path) -> None:
    """acme moves from starter to pro on Nov 10; first synced Nov 10 at 14:00: subscribed to pro (its
    version in force, 2026-10), backdated to Nov 10 00:00 (not over starter's days), anchored Dec 1."""
    csv = HEADER + ("acme,Acme,billing@acme.test,usd,,starter,2026-01-01,succeeds\n"
                    "acme,Acme,billing@acme.test,usd,,pro,2026-11-10,succeeds\n")
    with customer_on_clock(tmp_path, rules_dir, csv, start=dt.datetime(2026, 11, 10, 14, tzinfo=UTC)) as (
            sb, con, client, clk, rules, report):
        sub = client.v1.subscriptions.retrieve(report.customers[0]["subscription_id"])
        meta = sub.metadata.to_dict()
        assert (meta["plan"], meta["plan_version"]) == ("pro", "2026-10")
        assert (sub.start_date, sub.billing_cycle_anchor) == (_ts(2026, 11, 10), _ts(2026, 12, 1))
        assert [f for f in report.findings if f.our_key == "acme"] == []


def test_an_anchor_day_1_written_out_is_the_calendar_month(tmp_path: Path, rules_dir: Path) -> None:
    """Subscribed with anchor 1 (day_of_month 1), then the list leaves the anchor empty: the same
    periods (calendar months), so no drift."""
    csv = HEADER + "acme,Acme,billing@acme.test,usd,1,starter,2026-01-01,succeeds\n"
    with customer_on_clock(tmp_path, rules_dir, csv) as (sb, con, client, clk, rules, report):
        sub = client.v1.subscriptions.retrieve(report.customers[0]["subscription_id"])
        assert sub.billing_cycle_anchor_config.day_of_month == 1
        (tmp_path / "c.csv").write_text(csv.replace("usd,1,starter", "usd,,starter"))
        again = catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules),
                                     create_customers=True, test_clock=clk.id)
        assert [f for f in again.findings if f.our_key == "acme"] == [] and again.created == {}


# --- a meter deactivated in Stripe ------------------------------------------------------------------------

def test_a_deactivated_meter_is_drift_and_gets_no_second_meter_nor_new_price(world: World, rules_dir: Path) -> None:
    """api_calls' meter is deactivated in Stripe after the first sync. The next sync found no active meter
    for the event name and created one under the first sync's idempotency key: within 24 h Stripe answers
    with the same, now inactive, meter, which the sync mapped as if new (a helper's reading, shown on the
    sandbox). It is mapped as found, a `drift` on its status; no second meter is made; and a new version's
    price on it is not created ("You can't attach a deactivated meter to a price": the sync would fail)."""
    from metering.rules.plans import load_rules

    meter_id = world.report.meters["api_calls"]
    world.client.v1.billing.meters.deactivate(meter_id)
    with (rules_dir / "plans" / "extra.yaml").open("a") as f:
        f.write('  - version: "v2"\n    effective_from: 2027-01-01\n    rounding: half_up\n    charges:\n'
                '      - {name: calls, meter: api_calls, model: per_unit, unit_amount: "0.002"}\n')
    rules = load_rules(rules_dir)
    report = catalog.CatalogReport()
    catalog.sync_meters(world.client, rules.meters, "day", report)
    catalog.sync_prices(world.client, rules, report)
    assert report.meters["api_calls"] == meter_id and report.created.get("meter", 0) == 0
    named = [m for m in world.client.v1.billing.meters.list({"limit": 100}).auto_paging_iter()
             if m.event_name == event_name("api_calls")]
    assert [(m.id, m.status) for m in named] == [(meter_id, "inactive")]
    assert [(f.finding, f.kind, f.our_key, f.field, f.ours, f.theirs) for f in report.findings
            if f.field in ("status", "recurring.meter")] == [
        ("drift", "meter", "api_calls", "status", "active", "inactive"),
        ("drift", "price", "extra|v2|calls", "recurring.meter", meter_id, "inactive")]
    assert ("extra", "v2", "calls") not in report.prices and ("extra", "v1", "calls") in report.prices
