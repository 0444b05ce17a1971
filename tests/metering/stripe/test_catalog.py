"""Prices that mirror the rules (amounts by hand from the plan files), what Stripe cannot express,
drift left unchanged and reported, a second sync finding everything; billing anchors; periods."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import duckdb

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering import warehouse
from metering.customers import period_containing
from metering.rules.plans import load_rules
from metering.stripe import catalog
from metering.stripe.windows import period_start_sql
from push_world import World


@pytest.fixture(scope="module")
def rules():
    return load_rules(Path(__file__).resolve().parents[3] / "rating_rules")


def params(rules, plan, version, charge):
    v = rules.version(plan, version)
    c = next(c for c in v.charges if c.name == charge)
    return catalog.price_params(v, c, "mtr_x")


def test_per_unit_with_included_is_a_free_first_tier(rules) -> None:
    # starter: api calls $0.0005 each after 10,000 included -> 0.05 cents
    p = params(rules, "starter", "2026-01", "api calls")
    assert (p["billing_scheme"], p["tiers_mode"]) == ("tiered", "graduated")
    assert p["tiers"] == [{"up_to": 10000, "unit_amount_decimal": "0"}, {"up_to": "inf", "unit_amount_decimal": "0.05"}]
    assert p["recurring"] == {"interval": "month", "usage_type": "metered", "meter": "mtr_x"}
    assert p["lookup_key"] == "metering:starter:2026-01:api calls"


def test_package_uses_transform_quantity(rules) -> None:
    # starter: tokens $0.02 per started 1,000 -> 2 cents, divide_by 1000, round up
    p = params(rules, "starter", "2026-01", "tokens")
    assert (p["unit_amount_decimal"], p["transform_quantity"]) == ("2", {"divide_by": 1000, "round": "up"})


def test_graduated_and_volume_tiers_with_flat_amounts(rules) -> None:
    p = params(rules, "pro", "2026-01", "api calls")
    assert (p["tiers_mode"], p["tiers"]) == ("graduated", [
        {"up_to": 1000, "unit_amount_decimal": "0"}, {"up_to": 10000, "unit_amount_decimal": "0.2"},
        {"up_to": "inf", "unit_amount_decimal": "0.1", "flat_amount_decimal": "500"}])
    s = params(rules, "scale", "2026-01", "seats")
    assert (s["tiers_mode"], s["tiers"]) == ("volume", [
        {"up_to": 50, "unit_amount_decimal": "900"}, {"up_to": "inf", "unit_amount_decimal": "750"}])


def test_flat_fee_is_licensed_and_yen_has_no_minor_unit(rules) -> None:
    p = params(rules, "starter", "2026-01", "platform fee")
    assert (p["unit_amount_decimal"], p["recurring"]) == ("1900", {"interval": "month", "usage_type": "licensed"})
    y = params(rules, "pro_jpy", "2026-01", "seats")
    assert (y["currency"], y["unit_amount_decimal"]) == ("jpy", "1500")


@pytest.mark.parametrize("plan, charge, why", [
    ("pro", "minimum spend", "minimum"),
    ("pro", "tokens large", "dimension"),
    # scale's storage: 20.00 flat for the first 500 GB. Stripe prices a quantity of 0 in the first tier
    # (the sandbox bills 20.00 for a month without storage); the engine rates a zero quantity at 0
    ("scale", "storage", "zero usage"),
])
def test_not_expressible_is_explained(rules, plan, charge, why) -> None:
    with pytest.raises(catalog.NotExpressible, match=why):
        params(rules, plan, "2026-01", charge)


def test_existing_price_that_differs_is_reported_not_changed(world: World, tmp_path: Path) -> None:
    # someone edits a published version in place: starter seats $8.00 -> $8.50
    edited = tmp_path / "rules"
    shutil.copytree(Path(__file__).resolve().parents[3] / "rating_rules", edited)
    plan = edited / "plans" / "starter.yaml"
    plan.write_text(plan.read_text().replace('unit_amount: "8.00"', 'unit_amount: "8.50"'))
    key = ("starter", "2026-01", "seats")
    before = world.report.prices[key]
    second = catalog.sync_catalog(world.con, world.client, load_rules(edited), None)
    drift = [(f.our_key, f.stripe_id, f.field, f.ours, f.theirs) for f in second.findings if f.finding == "drift"]
    assert drift == [("starter|2026-01|seats", before, "unit_amount_decimal", "850", "800")]
    assert second.created == {} and second.prices[key] == before
    assert world.client.v1.prices.retrieve(before).unit_amount_decimal == 800   # untouched
    stored = warehouse.query_frame(world.con, "SELECT finding, count(*) AS n FROM stripe_catalog_findings GROUP BY ALL ORDER BY 1")
    # 12 before, and scale's storage now (a first-tier flat amount, which Stripe would bill at zero usage)
    assert stored.rows() == [("drift", 1), ("not_expressible", 13), ("rounding", 4)]


def test_a_price_an_earlier_sync_created_for_a_charge_now_refused_is_kept(world: World) -> None:
    """Audit: scale's storage had a Stripe price until the sync refused first tiers with a flat amount.
    The subscriptions created before carry it and Stripe goes on billing storage: reported not
    expressible, the charge was also billed as invoice items (24 items, 456.01 USD, on a re-run of the
    main job). The existing price stays mapped, so nothing bills it twice, and the finding says why."""
    product = world.client.v1.products.create({"name": "scale (an earlier sync)"})
    meter = world.report.meters["storage_gb"]
    earlier = world.client.v1.prices.create({
        "currency": "usd", "product": product.id, "lookup_key": "metering:scale:2026-01:storage",
        "recurring": {"interval": "month", "usage_type": "metered", "meter": meter},
        "billing_scheme": "tiered", "tiers_mode": "graduated",
        "tiers": [{"up_to": 500, "unit_amount_decimal": "0", "flat_amount_decimal": "2000"},
                  {"up_to": "inf", "unit_amount_decimal": "4"}]})
    again = catalog.sync_catalog(world.con, world.client, world.rules, None)
    assert again.prices[("scale", "2026-01", "storage")] == earlier.id
    [kept] = [f for f in again.findings if f.our_key == "scale|2026-01|storage"]
    assert (kept.finding, kept.stripe_id, kept.field) == ("drift", earlier.id, "expressible")
    assert "zero usage" in kept.detail
    # and the invoice items do not take it: the catalog's not-expressible prices are read from here
    assert world.con.execute("SELECT count(*) FROM stripe_catalog_findings WHERE finding = 'not_expressible' "
                             "AND our_key = 'scale|2026-01|storage'").fetchone() == (0,)


def test_prices_of_a_version_that_rounds_half_even_are_reported(world: World) -> None:
    """pro 2026-10 rounds half_even; a Stripe price cannot say so (1000.1 GB x 0.05 = 50.005: we bill
    50.00, the sandbox 50.01). Its four Stripe-priced charges are reported; the half_up versions' are not."""
    rounding = sorted((f.our_key, f.ours) for f in world.report.findings if f.finding == "rounding")
    assert rounding == [("pro|2026-10|active users", "half_even"), ("pro|2026-10|platform fee", "half_even"),
                        ("pro|2026-10|seats", "half_even"), ("pro|2026-10|storage", "half_even")]
    assert ("pro", "2026-10", "storage") in world.report.prices   # still a Stripe price: reported, not withheld
    assert world.report.finding_counts()["rounding"] == 4 and "4 rounding" in world.report.summary()


def test_a_second_sync_finds_everything(world: World) -> None:
    second = catalog.sync_catalog(world.con, world.client, world.rules, None)
    assert second.created == {} and second.prices == world.report.prices and second.meters == world.report.meters
    assert [f for f in second.findings if f.finding == "drift"] == []


def test_meter_with_another_window_is_drift(world: World) -> None:
    second = catalog.sync_catalog(world.con, world.client, world.rules, None, window_kind="hour")
    drift = [(f.our_key, f.field, f.ours, f.theirs) for f in second.findings if f.finding == "drift"]
    assert sorted(drift) == sorted((m, "event_time_window", "hour", "day") for m in world.rules.meters)


@pytest.mark.parametrize("start, anchor, expected", [
    (dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc), None, None),                       # starts on its anchor
    (dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc), 15, dt.datetime(2026, 10, 15, tzinfo=dt.timezone.utc)),
    (dt.datetime(2026, 1, 31, 5, tzinfo=dt.timezone.utc), 31, dt.datetime(2026, 2, 28, tzinfo=dt.timezone.utc)),
    (dt.datetime(2026, 12, 20, tzinfo=dt.timezone.utc), 10, dt.datetime(2027, 1, 10, tzinfo=dt.timezone.utc)),
])
def test_billing_cycle_anchor(start, anchor, expected) -> None:
    got = catalog.billing_cycle_anchor(start, anchor)
    assert got == (int(expected.timestamp()) if expected else None)


@given(start=st.datetimes(dt.datetime(2025, 1, 1), dt.datetime(2028, 12, 31), timezones=st.just(dt.timezone.utc)),
       anchor=st.one_of(st.none(), st.integers(1, 31)))
def test_billing_cycle_anchor_is_the_first_anchor_midnight_after_the_start(start, anchor) -> None:
    """Walked day by day: a day is an anchor when it is its month's `anchor` (the month's last day
    when the month is shorter; the 1st for None); the start itself, at midnight, is no later anchor."""
    def is_anchor(day: dt.date) -> bool:
        last = ((day.replace(day=28) + dt.timedelta(days=4)).replace(day=1) - dt.timedelta(days=1)).day
        return day.day == min(anchor or 1, last)

    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    day = start.date() + dt.timedelta(days=1)
    while not is_anchor(day):
        day += dt.timedelta(days=1)
    expected = None if start == midnight and is_anchor(start.date()) else \
        int(dt.datetime.combine(day, dt.time(), dt.timezone.utc).timestamp())
    assert catalog.billing_cycle_anchor(start, anchor) == expected


@settings(deadline=None)  # a DuckDB query per example: over 200 ms now and then on a loaded 2-core machine
@given(day=st.dates(dt.date(2025, 1, 1), dt.date(2028, 12, 31)), anchor=st.one_of(st.none(), st.integers(1, 31)))
def test_period_start_sql_matches_the_customer_periods(day, anchor) -> None:
    got = _DUCK.execute(f"SELECT {period_start_sql('d', 'a')} FROM (SELECT ?::DATE AS d, ?::INTEGER AS a)",
                        [day, anchor]).fetchone()[0]
    assert got == period_containing(day, anchor)[0]


_DUCK = duckdb.connect()


UTC = dt.timezone.utc


@pytest.mark.parametrize("now, first_day, anchor, expected", [
    # mid-day: back to our period's first midnight (calendar month)
    (dt.datetime(2026, 10, 15, 14, tzinfo=UTC), dt.date(2026, 1, 1), None, dt.datetime(2026, 10, 1, tzinfo=UTC)),
    # a first plan day inside the period: that day's midnight, not the period's start
    (dt.datetime(2026, 10, 15, 14, tzinfo=UTC), dt.date(2026, 10, 15), None, dt.datetime(2026, 10, 15, tzinfo=UTC)),
    # anchor 20: the period holding Oct 15 started Sep 20
    (dt.datetime(2026, 10, 15, 14, tzinfo=UTC), dt.date(2026, 1, 1), 20, dt.datetime(2026, 9, 20, tzinfo=UTC)),
    # anchor 31 in February: the period started on the 28th
    (dt.datetime(2026, 3, 2, 9, tzinfo=UTC), dt.date(2026, 1, 1), 31, dt.datetime(2026, 2, 28, tzinfo=UTC)),
    # at a period's first instant: nothing to backdate
    (dt.datetime(2026, 11, 1, tzinfo=UTC), dt.date(2026, 1, 1), None, dt.datetime(2026, 11, 1, tzinfo=UTC)),
    # a first plan day still to come: now
    (dt.datetime(2026, 10, 15, 14, tzinfo=UTC), dt.date(2026, 10, 20), None, dt.datetime(2026, 10, 15, 14, tzinfo=UTC)),
])
def test_a_subscription_starts_at_the_midnight_our_period_starts(now, first_day, anchor, expected) -> None:
    assert catalog.subscription_start(now, first_day, anchor) == expected


def test_a_subscription_never_starts_before_the_previous_one_ended() -> None:
    now = dt.datetime(2026, 10, 20, 14, tzinfo=UTC)
    ended = dt.datetime(2026, 10, 10, 9, 30, tzinfo=UTC)
    assert catalog.subscription_start(now, dt.date(2026, 1, 1), None, ended) == ended
    # one that ended in an earlier period leaves our period's start
    assert catalog.subscription_start(now, dt.date(2026, 1, 1), None, dt.datetime(2026, 9, 3, tzinfo=UTC)) == (
        dt.datetime(2026, 10, 1, tzinfo=UTC))


def test_usage_of_the_day_a_subscription_is_created_is_invoiced(tmp_path: Path, rules_dir: Path) -> None:
    """acme (on starter since January) is synced at 14:00 on Oct 15 and makes 12,000 API calls that
    evening. The push dates the day's event at its first second; Stripe's period began at 14:00, so
    its invoice billed 0 calls while the push said acknowledged. Backdated to Oct 1 00:00 (our
    period), the invoice bills them: 2,000 over starter's 10,000 included at 0.05 cents = 100 cents."""
    from push_world import customer_on_clock, day_start, push_then_bill_october

    oct15 = dt.date(2026, 10, 15)
    with customer_on_clock(tmp_path, rules_dir, start=dt.datetime(2026, 10, 15, 14, tzinfo=UTC)) as (
            sb, con, client, clock, rules, report):
        world = World(con, sb, client, rules, report)
        sub = client.v1.subscriptions.retrieve(report.customers[0]["subscription_id"])
        assert sub["items"].data[0].current_period_start == int(dt.datetime(2026, 10, 1, tzinfo=UTC).timestamp())
        # October's fee, charged at once: the whole cycle from Oct 1 (with proration_behavior none, Stripe
        # would have charged nothing for the backdated time)
        [created] = client.v1.invoices.list({"customer": sub.customer}).data
        assert (created.billing_reason, created.total) == ("subscription_create", 1900)
        world.add_events([("acme", "api_calls", day_start(oct15) + dt.timedelta(hours=20, seconds=s), None,
                           {"region": "us"}) for s in range(12_000)])
        sb.advance_clock(clock.id, int(day_start(oct15 + dt.timedelta(days=1)).timestamp()))
        october = push_then_bill_october(con, client, rules, clock, oct15, sub.customer)
        assert (october.period_start, october.period_end) == (
            int(dt.datetime(2026, 10, 1, tzinfo=UTC).timestamp()), int(dt.datetime(2026, 11, 1, tzinfo=UTC).timestamp()))
        billed = [(str(line.quantity_decimal), line.amount) for line in october.lines.data if line.amount]
        assert sorted(billed) == [("1", 1900), ("12000", 100)]   # starter's 19.00 fee and the calls
        assert october.total == 2000


def test_a_new_subscription_after_a_cancellation_bills_only_the_time_after_it(tmp_path: Path, rules_dir: Path) -> None:
    """acme's subscription (from Oct 1) is cancelled on Oct 10; the sync on Oct 20 at 14:00 creates a
    new one. Backdated to Oct 1, it billed October's 19.00 fee a second time: it starts when the first
    ended, and is anchored on Nov 1 like ours. The first had billed all of October's fee in advance and
    a cancellation credits nothing, so the new one charges nothing up to its anchor (proration_behavior
    none); charged prorated, Oct 10 - Nov 1 was billed twice (1348 on top of the 1900), where we rate
    October's fee once."""
    from push_world import customer_on_clock

    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        first = report.customers[0]["subscription_id"]
        sb.advance_clock(clock.id, int(dt.datetime(2026, 10, 10, tzinfo=UTC).timestamp()))
        client.v1.subscriptions.cancel(first)
        sb.advance_clock(clock.id, int(dt.datetime(2026, 10, 20, 14, tzinfo=UTC).timestamp()))
        again = catalog.sync_catalog(con, client, rules, _customers(tmp_path, rules),
                                     create_customers=True, test_clock=clock.id)
        second = client.v1.subscriptions.retrieve(again.customers[0]["subscription_id"])
        assert second.id != first
        assert (second.start_date, second.billing_cycle_anchor) == (
            int(dt.datetime(2026, 10, 10, tzinfo=UTC).timestamp()), int(dt.datetime(2026, 11, 1, tzinfo=UTC).timestamp()))
        fees = sorted((i.billing_reason, line.amount) for i in client.v1.invoices.list({"customer": second.customer}).data
                      for line in i.lines.data if line.amount)
        # the first subscription's whole October fee (1900), and nothing more
        assert fees == [("subscription_create", 1900)]


def test_a_subscription_after_one_that_expired_unpaid_bills_the_period_from_its_start(
        tmp_path: Path, rules_dir: Path) -> None:
    """acme's card declines: its first subscription (Oct 1) stays incomplete and expires 23 h later,
    its first invoice voided, so it billed nothing. The sync on Oct 20, the card fixed, backdates the
    new one to Oct 1 (not to the expiry, Oct 1 23:00, which would leave that day's usage unbilled) and
    charges October's whole fee, 1900."""
    from push_world import customer_on_clock

    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        [failing] = client.v1.customers.list({"limit": 100, "test_clock": clock.id}).data
        sb.set_payment_behavior(failing.id, "fails")
        client.v1.subscriptions.cancel(report.customers[0]["subscription_id"])
        retry = catalog.sync_catalog(con, client, rules, _customers(tmp_path, rules), create_customers=True,
                                     test_clock=clock.id)
        first = client.v1.subscriptions.retrieve(retry.customers[0]["subscription_id"])
        assert first.status == "incomplete"
        sb.advance_clock(clock.id, int(dt.datetime(2026, 10, 20, 14, tzinfo=UTC).timestamp()))
        assert client.v1.subscriptions.retrieve(first.id).status == "incomplete_expired"
        sb.set_payment_behavior(failing.id, "succeeds")
        again = catalog.sync_catalog(con, client, rules, _customers(tmp_path, rules), create_customers=True,
                                     test_clock=clock.id)
        second = client.v1.subscriptions.retrieve(again.customers[0]["subscription_id"])
        assert second.id not in (first.id, report.customers[0]["subscription_id"])
        assert second.start_date == int(dt.datetime(2026, 10, 1, tzinfo=UTC).timestamp())
        created = client.v1.invoices.retrieve(second.latest_invoice)
        assert (created.status, created.total) == ("paid", 1900)


def _customers(tmp_path: Path, rules):
    from metering.customers import load_customers

    return load_customers(tmp_path / "c.csv", rules)
