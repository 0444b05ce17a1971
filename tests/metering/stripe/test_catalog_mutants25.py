"""The Stripe catalog sync, second hand mutation audit (25e): what the first (20g) left unchecked.

- prices (`price_params`, pure): what Stripe cannot express and must be refused, not sent rounded
  (fractional tier bounds, included quantities and package sizes: Stripe's `up_to` and
  `transform_quantity.divide_by` are integers; an included quantity on a package or volume price);
  what it can (a free first tier ahead of a first tier with a flat amount); a metered charge whose
  meter has no Stripe meter; the 12-decimal limit of `*_decimal` amounts in minor units, met by a
  zero-decimal currency (stripe-facts.md: "minor units, <= 12 decimals");
- the first sync against the sandbox: one product per plan, made once; meters named with their
  unit; prices carrying their version's content hash; the meter windows stored for the push (the
  window Stripe's meter has, not the one asked for);
- drift: the compared fields of a meter and a price that 20g's tests did not reach (a meter's
  customer mapping and value keys; a price's currency, interval, usage type, billing scheme and tiers
  mode), and the summary line that counts them.

Real sandbox over loopback and real DuckDB (fixtures of conftest.py and push_world.py); every file in
`tmp_path`.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from metering import warehouse
from metering.rules.plans import load_rules
from metering.stripe import catalog
from metering.stripe.keys import event_name
from metering.stripe_sandbox.testing import running_sandbox
from push_world import NOW, World, make_world

PROJECT_ROOT = Path(__file__).resolve().parents[3]

PROBE_CHARGES = {
    "pkg included": """{meter: tokens, model: package, package_size: 1000, package_amount: "0.02", package_round: up,
                        included: 500}""",
    "vol included": """{meter: seats, model: volume, included: 5,
                        tiers: [{up_to: 50, unit_amount: "9.00"}, {up_to: null, unit_amount: "7.50"}]}""",
    "free then flat": """{meter: api_calls, model: graduated, included: 100,
                          tiers: [{up_to: 1000, unit_amount: "0.002", flat_amount: "1.00"},
                                  {up_to: null, unit_amount: "0.001"}]}""",
    "half bound": """{meter: storage_gb, model: graduated,
                      tiers: [{up_to: "100.5", unit_amount: "0.10"}, {up_to: null, unit_amount: "0.05"}]}""",
    "half included": """{meter: storage_gb, model: per_unit, unit_amount: "0.25", included: "0.5"}""",
    "graduated half included": """{meter: api_calls, model: graduated, included: "0.5",
                                   tiers: [{up_to: null, unit_amount: "0.001"}]}""",
    "half package": """{meter: tokens, model: package, package_size: "2.5", package_amount: "0.01", package_round: up}""",
    "seats": """{meter: seats, model: per_unit, unit_amount: "8.00"}""",
    "fee": """{model: flat, amount: "19.00"}""",
}
"""Plan `probe` (usd): one version per charge (two charges on one meter would overlap), version `c<i>`
from Jan <i+1> 2026, its one charge named as the key."""

PROBE_PLAN = "plan: probe\ncurrency: usd\nversions:\n" + "".join(
    f'  - version: "c{i}"\n    effective_from: 2026-01-{i + 1:02d}\n    rounding: half_up\n    charges:\n'
    f"      - {{name: {name}, {' '.join(spec.split())[1:]}\n"
    for i, (name, spec) in enumerate(PROBE_CHARGES.items()))

PROBE_JPY_PLAN = """\
    plan: probe_jpy
    currency: jpy
    versions:
      - version: "v1"
        effective_from: 2026-01-01
        rounding: half_up
        charges:
          - {name: tiny, meter: seats, model: per_unit, unit_amount: "0.000000000001"}
"""


@pytest.fixture(scope="module")
def probe_rules(tmp_path_factory: pytest.TempPathFactory):
    """The shipped rules plus plans `probe` (usd) and `probe_jpy` (jpy), loaded (not synced)."""
    root = tmp_path_factory.mktemp("probe") / "rules"
    shutil.copytree(PROJECT_ROOT / "rating_rules", root)
    (root / "plans" / "probe.yaml").write_text(PROBE_PLAN)
    (root / "plans" / "probe_jpy.yaml").write_text(textwrap.dedent(PROBE_JPY_PLAN))
    return load_rules(root)


def _probe(rules, charge: str, plan: str = "probe", meter_id: str | None = "mtr_x") -> dict:
    v = rules.version(plan, f"c{list(PROBE_CHARGES).index(charge)}" if plan == "probe" else "v1")
    return catalog.price_params(v, next(c for c in v.charges if c.name == charge), meter_id)


# --- price_params: refused, or expressed exactly --------------------------------------------------------

@pytest.mark.parametrize("charge, why", [
    # Stripe's transform_quantity cannot be combined with tiers, so no free tier fits a package price
    ("pkg included", "included quantity cannot be combined with a package"),
    # volume: the whole quantity is priced at the tier it reaches; a free first tier would change which
    ("vol included", "included quantity on a volume price"),
    # up_to is an integer at Stripe: 100.5 sent as 100 would price 100 < q <= 100.5 at the next tier
    ("half bound", "100.5 is not a whole number"),
    # the free first tier of a per-unit charge ends at the included 0.5: not an integer either
    ("half included", "0.5 is not a whole number"),
    # a graduated charge whose only tier is unbounded: the free tier's bound (0.5) is the only bound
    ("graduated half included", "0.5 is not a whole number"),
    # transform_quantity.divide_by is an integer: 2.5 sent as 2 bills 25% more packages
    ("half package", "2.5 is not a whole number"),
])
def test_what_stripe_cannot_express_is_refused(probe_rules, charge, why) -> None:
    with pytest.raises(catalog.NotExpressible, match=why):
        _probe(probe_rules, charge)


def test_a_first_tier_flat_amount_after_a_free_tier_is_expressible(probe_rules) -> None:
    """100 included, then up to 1,000 more at 0.2 cents with a 1.00 flat amount, then 0.1 cents. Zero
    usage sits in the free tier (no flat amount), so Stripe bills nothing for it, as we do: the
    first-tier flat refusal is for charges without an included quantity only. Bounds shifted by 100:
    100, 1,100, inf; amounts in cents: 0.2, flat 100, 0.1."""
    p = _probe(probe_rules, "free then flat")
    assert (p["billing_scheme"], p["tiers_mode"]) == ("tiered", "graduated")
    assert p["tiers"] == [{"up_to": 100, "unit_amount_decimal": "0"},
                          {"up_to": 1100, "unit_amount_decimal": "0.2", "flat_amount_decimal": "100"},
                          {"up_to": "inf", "unit_amount_decimal": "0.1"}]


def test_a_metered_charge_without_a_stripe_meter_is_not_expressible(probe_rules) -> None:
    # a price on no meter would be a metered price nothing reports to; a flat fee needs no meter
    with pytest.raises(catalog.NotExpressible, match="meter seats has no Stripe meter"):
        _probe(probe_rules, "seats", meter_id=None)
    fee = _probe(probe_rules, "fee", meter_id=None)
    assert (fee["unit_amount_decimal"], fee["recurring"]) == ("1900", {"interval": "month", "usage_type": "licensed"})


def test_twelve_decimals_in_minor_units_is_stripes_limit_not_beyond_it(probe_rules) -> None:
    """JPY has no minor unit, so 0.000000000001 JPY (12 decimals, the most the rules allow) is
    0.000000000001 in minor units: exactly Stripe's 12, expressible. USD's 12-decimal amounts have 10
    in cents, so the limit is met only by a zero-decimal currency."""
    p = _probe(probe_rules, "tiny", plan="probe_jpy")
    assert (p["currency"], p["unit_amount_decimal"]) == ("jpy", "0.000000000001")


# --- the first sync, against the sandbox ----------------------------------------------------------------

def test_one_product_per_plan_made_once(world: World) -> None:
    """The shipped rules: 5 meters (api_calls, tokens, storage_gb, seats, active_users) and 4 plans
    (starter, pro, pro_jpy, scale; pro has two versions, 2026-01 and 2026-10, which share its product)."""
    assert (world.report.created["meter"], world.report.created["product"]) == (5, 4)
    products = [p for p in world.client.v1.products.list({"limit": 100}).auto_paging_iter()]
    assert sorted(p.metadata.to_dict()["plan"] for p in products) == ["pro", "pro_jpy", "scale", "starter"]
    # both pro versions' prices sit on the one pro product
    pro = {world.client.v1.prices.retrieve(world.report.prices[k]).product
           for k in (("pro", "2026-01", "seats"), ("pro", "2026-10", "seats"))}
    assert pro == {next(p.id for p in products if p.metadata.to_dict()["plan"] == "pro")}


def test_meters_and_prices_are_named_and_carry_the_rules_hash(world: World) -> None:
    # meters.yaml: api_calls counts `call`s, storage_gb is in `GB`
    names = {m.event_name: m.display_name for m in world.client.v1.billing.meters.list({"limit": 100}).auto_paging_iter()}
    assert (names[event_name("api_calls")], names[event_name("storage_gb")]) == ("api_calls (call)", "storage_gb (GB)")
    price = world.client.v1.prices.retrieve(world.report.prices[("starter", "2026-01", "seats")])
    assert price.nickname == "starter 2026-01 seats"
    assert price.metadata.to_dict() == {"plan": "starter", "plan_version": "2026-01", "charge": "seats",
                                        "model": "per_unit",
                                        "rules_hash": world.rules.version("starter", "2026-01").content_hash}


def _stored_windows(world: World) -> dict[str, str]:
    rows = world.con.execute("SELECT our_key, details FROM stripe_objects WHERE kind = 'meter'").fetchall()
    return {k: json.loads(d)["event_time_window"] for k, d in rows}


def test_the_stored_meter_window_is_the_one_stripe_has(world: World) -> None:
    """The push reads each meter's window from stripe_objects (and refuses a mismatch). Created with day
    windows, every meter is stored `day`; synced again asking for hour windows, the meters found are
    still day-windowed at Stripe (meters cannot be changed: drift), so `day` stays stored."""
    every = {m: "day" for m in ("api_calls", "tokens", "storage_gb", "seats", "active_users")}
    assert _stored_windows(world) == every
    again = catalog.sync_catalog(world.con, world.client, world.rules, None, window_kind="hour")
    assert again.meter_windows == every and _stored_windows(world) == every


# --- drift in fields 20g's tests did not reach ----------------------------------------------------------

MAPPING = {"type": "by_id", "event_payload_key": "stripe_customer_id"}


def _meter(client, name: str, formula: str, **extra) -> str:
    """A meter made ahead of the sync, as the sync makes it unless `extra` says otherwise."""
    params = {"display_name": name, "event_name": event_name(name), "default_aggregation": {"formula": formula},
              "customer_mapping": MAPPING, "value_settings": {"event_payload_key": "value"},
              "event_time_window": "day", **extra}
    return client.v1.billing.meters.create(params).id


@pytest.fixture
def seeded(tmp_path: Path, rules_dir: Path) -> Iterator[tuple[World, dict[str, str]]]:
    """Stripe objects made before the first sync, then synced (the shipped rules):
    - meter tokens reading the customer from `customer` (ours: stripe_customer_id) and its value from
      `amount` (ours: value);
    - meters storage_gb, seats, active_users as the sync makes them (formula last, day windows);
    - starter storage (usd 25 cents per GB) priced in eur;
    - starter seats (800 cents a month) billed yearly;
    - starter platform fee (licensed, 1900) made metered (on the seats meter);
    - starter active users (graduated: 10 free, then 50 cents) made a plain per-unit price of 50;
    - scale seats (volume: 900 up to 50, then 750) made graduated with the same tiers."""
    with running_sandbox(now=int(NOW.timestamp()), seed=7) as sb, \
            warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        client = sb.client()
        made = {"tokens_meter": _meter(client, "tokens", "sum", customer_mapping={"type": "by_id",
                                                                                  "event_payload_key": "customer"},
                                       value_settings={"event_payload_key": "amount"})}
        storage, seats, users = (_meter(client, m, "last") for m in ("storage_gb", "seats", "active_users"))
        product = client.v1.products.create({"name": "made by hand"})

        def price(key: str, recurring: dict, **fields) -> str:
            return client.v1.prices.create({"currency": "usd", "product": product.id, "lookup_key": key,
                                            "recurring": {"interval": "month", **recurring}, **fields}).id

        metered = {"usage_type": "metered"}
        made["storage"] = price("metering:starter:2026-01:storage", {**metered, "meter": storage},
                                currency="eur", unit_amount_decimal="25")
        made["seats"] = price("metering:starter:2026-01:seats", {**metered, "meter": seats, "interval": "year"},
                              unit_amount_decimal="800")
        made["platform fee"] = price("metering:starter:2026-01:platform fee", {**metered, "meter": seats},
                                     unit_amount_decimal="1900")
        made["active users"] = price("metering:starter:2026-01:active users", {**metered, "meter": users},
                                     unit_amount_decimal="50")
        made["scale seats"] = price("metering:scale:2026-01:seats", {**metered, "meter": seats},
                                    billing_scheme="tiered", tiers_mode="graduated",
                                    tiers=[{"up_to": 50, "unit_amount_decimal": "900"},
                                           {"up_to": "inf", "unit_amount_decimal": "750"}])
        yield make_world(con, sb, rules_dir, tmp_path), made


def test_each_other_differing_field_is_drift(seeded) -> None:
    world, made = seeded
    drift = sorted((f.kind, f.our_key, f.stripe_id, f.field, f.ours, f.theirs)
                   for f in world.report.findings if f.finding == "drift")
    assert drift == sorted([
        ("meter", "tokens", made["tokens_meter"], "customer_mapping.event_payload_key", "stripe_customer_id",
         "customer"),
        ("meter", "tokens", made["tokens_meter"], "value_settings.event_payload_key", "value", "amount"),
        ("price", "starter|2026-01|storage", made["storage"], "currency", "usd", "eur"),
        ("price", "starter|2026-01|seats", made["seats"], "recurring.interval", "month", "year"),
        ("price", "starter|2026-01|platform fee", made["platform fee"], "recurring.usage_type", "licensed",
         "metered"),
        ("price", "starter|2026-01|active users", made["active users"], "billing_scheme", "tiered", "per_unit"),
        # compared as a tiered price: its mode, and its tiers (none at Stripe to compare: not listed)
        ("price", "starter|2026-01|active users", made["active users"], "tiers_mode", "graduated", "None"),
        ("price", "scale|2026-01|seats", made["scale seats"], "tiers_mode", "volume", "graduated"),
    ])
    # found, mapped and left alone
    assert [world.report.prices[k] for k in (("starter", "2026-01", "storage"), ("scale", "2026-01", "seats"))] == [
        made["storage"], made["scale seats"]]
    # 8 drift; 13 not expressible and 4 rounding, as test_catalog.py's count of the shipped rules
    assert ", 8 drift, 13 not expressible, 4 rounding, " in world.report.summary()


# --- what a sync without a customer list keeps, and a freed lookup key ------------------------------------

def test_a_catalog_only_sync_keeps_the_customer_map(world: World) -> None:
    """`world` synced acme and globex (no subscriptions). A later sync of the catalog only (no customer
    list) replaces meters, prices and findings, but keeps which Stripe customer each of ours is: the
    push finds its customers there."""
    before = catalog.customer_map(world.con).select("customer_id", "stripe_customer_id").sort("customer_id").rows()
    assert before == sorted(world.stripe_customer.items()) and len(before) == 2
    catalog.sync_catalog(world.con, world.client, world.rules, None)
    after = catalog.customer_map(world.con).select("customer_id", "stripe_customer_id").sort("customer_id").rows()
    assert after == before
    kept = world.con.execute("SELECT our_key, stripe_id FROM stripe_objects WHERE kind = 'customer' "
                             "ORDER BY our_key").fetchall()
    assert kept == before


def test_a_price_made_again_for_an_edited_version_is_a_new_request(world: World, tmp_path: Path) -> None:
    """starter 2026-01 seats (800) loses its lookup key at Stripe (moved to another name by hand), and the
    version is then edited in place (8.00 -> 8.50: a new content hash). The next sync finds no price for
    the key and creates one: at 850, a new request with its own idempotency key. Under the first
    price's key (within Stripe's 24 h) the request, with other parameters, would be refused."""
    key = ("starter", "2026-01", "seats")
    first = world.report.prices[key]
    world.client.v1.prices.update(first, {"lookup_key": "moved by hand"})
    edited = tmp_path / "edited"
    shutil.copytree(PROJECT_ROOT / "rating_rules", edited)
    plan = edited / "plans" / "starter.yaml"
    plan.write_text(plan.read_text().replace('unit_amount: "8.00"', 'unit_amount: "8.50"'))
    again = catalog.sync_catalog(world.con, world.client, load_rules(edited), None)
    made = world.client.v1.prices.retrieve(again.prices[key])
    assert made.id != first and (made.lookup_key, made.unit_amount_decimal) == ("metering:starter:2026-01:seats", 850)
    assert again.created == {"price": 1}


def test_prices_and_refused_charges_are_stored_as_the_invoice_items_read_them(world: World) -> None:
    """invoice_items finds a charge's Stripe price in stripe_objects by `plan|version|charge`, and bills
    as items the charges `NOT_EXPRESSIBLE_PRICE_SQL` picks from the findings: pro 2026-01's minimum
    spend (a minimum has no Stripe price), not starter 2026-01's seats (a per-unit price)."""
    seats = world.con.execute("SELECT stripe_id FROM stripe_objects WHERE kind = 'price' "
                              "AND our_key = 'starter|2026-01|seats'").fetchall()
    assert seats == [(world.report.prices[("starter", "2026-01", "seats")],)]
    picked = world.con.execute(
        f"SELECT charge, {catalog.NOT_EXPRESSIBLE_PRICE_SQL} FROM (VALUES ('pro', '2026-01', 'minimum spend'), "
        "('starter', '2026-01', 'seats')) AS rated_usage(plan, plan_version, charge) ORDER BY charge").fetchall()
    assert picked == [("minimum spend", True), ("seats", False)]
    # and the finding says why a minimum is refused (it has no meter, but that is not the reason)
    [minimum] = [f for f in world.report.findings if f.our_key == "pro|2026-01|minimum spend"]
    assert minimum.detail.startswith("a minimum spend has no Stripe price: the engine rates the true-up and bills "
                                     "it as an invoice item")
