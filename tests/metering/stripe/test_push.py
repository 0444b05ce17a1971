"""The usage push against the real local sandbox: exact totals, idempotent re-runs, revisions, guards."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import polars as pl
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metering import warehouse
from metering.rating.service import refresh_aggregates
from metering.stripe_sandbox.testing import running_sandbox
from push_world import CUSTOMERS_CSV, NOW, World, day_start, expected_total, make_world

D1, D2, D3 = dt.date(2026, 11, 17), dt.date(2026, 11, 18), dt.date(2026, 11, 19)


def t(day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
    return day_start(day) + dt.timedelta(hours=hour, minutes=minute)


def seed_usage(world: World) -> None:
    world.add_events([
        ("acme", "api_calls", t(D1, 1), None, {"region": "us"}),
        ("acme", "api_calls", t(D1, 2), None, {"region": "eu"}),
        ("acme", "api_calls", t(D1, 23, 59), None, {"region": "us"}),
        ("acme", "api_calls", t(D2, 0), None, {"region": "us"}),
        ("acme", "tokens", t(D1, 5), "1500.5", {"model": "small"}),
        ("acme", "tokens", t(D1, 6), "499.5", {"model": "large"}),
        ("acme", "storage_gb", t(D1, 3), "10", {}),
        ("acme", "storage_gb", t(D2, 3), "4", {}),
        ("acme", "seats", t(D1, 3), "5", {}),
        ("acme", "seats", t(D1, 9), "3", {}),
        ("acme", "active_users", t(D1, 3), None, {"user_id": "u1"}),
        ("acme", "active_users", t(D2, 3), None, {"user_id": "u1"}),
        ("acme", "active_users", t(D2, 4), None, {"user_id": "u2"}),
        ("globex", "api_calls", t(D2, 12), None, {"region": "eu"}),
    ])


def test_push_gives_stripe_our_exact_totals_and_a_second_push_changes_nothing(world: World) -> None:
    seed_usage(world)
    report = world.pusher().push(D1, D2)
    assert (report.acknowledged, report.calls, report.retries, report.failed, report.unknown) == (9, 9, 0, 0, 0)
    # 14 raw events behind 9 calls
    assert report.raw_events == 14 and report.raw_events_per_call == Decimal("1.56")
    start, end = day_start(D1), day_start(D3)
    # hand-computed: acme api_calls 3 + 1 events; tokens 1500.5 + 499.5; storage max 10 (period-to-date);
    # seats last 3 (09:00 on D1); active users u1, u2 -> 2; globex api_calls 1
    expected = {("acme", "api_calls"): Decimal(4), ("acme", "tokens"): Decimal(2000),
                ("acme", "storage_gb"): Decimal(10), ("acme", "seats"): Decimal(3),
                ("acme", "active_users"): Decimal(2), ("globex", "api_calls"): Decimal(1)}
    for (customer, meter), value in expected.items():
        assert world.stripe_total(customer, meter, start, end) == value, (customer, meter)

    before_ledger = world.ledger()
    before_requests = len(world.meter_event_requests())
    again = world.pusher().push(D1, D2)
    assert (again.calls, again.new_revisions) == (0, 0)
    assert len(world.meter_event_requests()) == before_requests
    assert world.ledger().drop("updated_at").equals(before_ledger.drop("updated_at"))
    for (customer, meter), value in expected.items():
        assert world.stripe_total(customer, meter, start, end) == value


def test_every_request_carries_a_ledger_key_and_identifier(world: World) -> None:
    seed_usage(world)
    world.pusher().push(D1, D2)
    ledger = world.ledger()
    requests = world.meter_event_requests()
    assert requests and {r["idempotency_key"] for r in requests} <= set(ledger["idempotency_key"].to_list())
    # every POST the engine made (catalog included) carried a deterministic key of ours
    posts = world.sandbox.requests_log(method="POST")
    assert posts and all(r["idempotency_key"] and r["idempotency_key"].startswith("metering-") for r in posts)


def test_late_event_makes_a_new_revision_with_the_corrected_total(world: World) -> None:
    seed_usage(world)
    world.pusher().push(D1, D2)
    # a late api call on D1 and a late, larger storage reading on D1 (changes D2's period-to-date max too)
    world.add_events([("acme", "api_calls", t(D1, 7), None, {"region": "eu"}),
                      ("acme", "storage_gb", t(D1, 8), "25", {})])
    report = world.pusher().push(D1, D1)
    assert report.new_revisions == 3 and report.acknowledged == 3
    led = world.ledger()
    api = led.filter((pl.col("customer_id") == "acme") & (pl.col("meter") == "api_calls")
                     & (pl.col("event_date") == D1)).sort("revision")
    assert api.select("revision", "value", "status").rows() == [
        (1, Decimal(3), "acknowledged"), (2, Decimal(4), "acknowledged")]
    storage = led.filter((pl.col("customer_id") == "acme") & (pl.col("meter") == "storage_gb")).sort(
        "event_date", "revision")
    assert storage.select("event_date", "revision", "value").rows() == [
        (D1, 1, Decimal(10)), (D1, 2, Decimal(25)), (D2, 1, Decimal(10)), (D2, 2, Decimal(25))]
    start, end = day_start(D1), day_start(D3)
    assert world.stripe_total("acme", "api_calls", start, end) == Decimal(5)
    assert world.stripe_total("acme", "storage_gb", start, end) == Decimal(25)


def test_window_older_than_35_days_is_reported_late_and_not_pushed(world: World) -> None:
    old = (NOW - dt.timedelta(days=40)).date()
    world.add_events([("acme", "api_calls", t(old, 5), None, {"region": "us"})])
    report = world.pusher().push(old, old)
    assert (report.late, report.calls) == (1, 0)
    assert world.meter_event_requests() == []
    row = world.ledger().row(0, named=True)
    assert row["status"] == "late" and row["value"] == Decimal(1) and "35 days" in row["last_error"]


def test_windows_in_the_future_wait(world: World) -> None:
    tomorrow = (NOW + dt.timedelta(days=1)).date()
    world.add_events([("acme", "api_calls", t(tomorrow, 5), None, {"region": "us"})])
    report = world.pusher().push(tomorrow, tomorrow)
    assert (report.not_yet_due, report.calls, world.ledger().height) == (1, 0, 0)


def test_unmapped_customers_are_reported_not_pushed(world: World) -> None:
    """globex is listed but not synced (unmapped: exit 5 from the CLI); stranger is not listed (unlisted:
    the rating's all_usage_priced names it). Neither is pushed."""
    world.con.execute("DELETE FROM stripe_customer_map WHERE customer_id = 'globex'")
    world.add_events([("stranger", "api_calls", t(D1, 5), None, {"region": "us"}),
                      ("globex", "api_calls", t(D1, 6), None, {"region": "us"})])
    report = world.pusher().push(D1, D1)
    assert (report.unmapped, report.unlisted, report.calls, world.ledger().height) == (1, 1, 0, 0)
    assert report.needs_operator == 1


def test_usage_held_by_a_previous_stripe_customer_is_not_pushed_to_the_new_one(world: World, tmp_path) -> None:
    """A later sync maps acme to another Stripe customer (a duplicate carrying metadata[customer_id]).
    The ledger planned revisions for the new customer while the old one kept its events: both billed
    acme's usage. The windows wait for an operator instead; zeroing one at the old customer releases it."""
    from metering.stripe.keys import event_name

    world.add_events([("acme", "tokens", t(D1, 2), "1500", {"model": "small"}),
                      ("acme", "api_calls", t(D1, 3), None, {"region": "us"})])
    world.pusher().push(D1, D1)
    old, new = world.remap_to_a_duplicate(tmp_path)

    def tokens_at(customer: str) -> list:
        return [s.aggregated_value for s in world.client.v1.billing.meters.event_summaries.list(
            world.report.meters["tokens"], {"customer": customer, "start_time": int(t(D1, 0).timestamp()),
                                            "end_time": int(t(D2, 0).timestamp()), "value_grouping_window": "day"}).data]

    world.sandbox.configure(summary_lag=3600)   # Stripe's summaries lag: the old customer's usage not shown yet
    lagging = world.pusher().push(D1, D1)
    world.sandbox.configure(summary_lag=0)
    assert (lagging.moved, lagging.new_revisions) == (2, 0)
    held = world.pusher().push(D1, D1)
    assert (tokens_at(old), tokens_at(new)) == ([1500], [])
    assert (held.moved, held.new_revisions, held.acknowledged, held.needs_operator) == (2, 0, 0, 2)
    assert any(old in e and new in e and "tokens" in e for e in held.errors)
    assert world.con.execute("SELECT list(moved ORDER BY started_at) FROM stripe_push_runs").fetchone()[0][-1] == 2
    assert world.ledger().select("meter", "revision", "stripe_customer_id").rows() == [
        ("api_calls", 1, old), ("tokens", 1, old)]

    # the operator zeroes acme's tokens at the old customer: that window moves, api_calls stays held
    world.client.v1.billing.meter_events.create({
        "event_name": event_name("tokens"), "payload": {"stripe_customer_id": old, "value": "0"},
        "identifier": "operator-zeroes-old-acme-tokens", "timestamp": int(t(D1, 12).timestamp())})
    moved = world.pusher().push(D1, D1)
    assert (moved.moved, moved.new_revisions, moved.acknowledged, moved.needs_operator) == (1, 1, 1, 1)
    assert (tokens_at(old), tokens_at(new)) == ([0], [1500])


def test_a_dropped_revision_at_a_previous_stripe_customer_is_not_sent_there_again(world: World, tmp_path) -> None:
    """acme's tokens (1500) are sent, the connection dropped (unknown), then acme is mapped to another
    Stripe customer. Held as moved; the operator sends the old customer a 0 for the window. The
    unknown revision, kept while Stripe's answer was unknown, was then sent again to the OLD customer
    under its key, and its change of destination to the new one as well: both billed 1500."""
    from dataclasses import replace

    from metering.customers import load_customers
    from metering.stripe import catalog
    from metering.stripe.keys import event_name
    from push_world import CUSTOMERS_CSV, FAST_RETRY

    world.add_events([("acme", "tokens", t(D1, 2), "1500", {"model": "small"})])
    world.sandbox.inject_fault("drop", path="/v1/billing/meter_events", method="POST", count=1)
    assert world.pusher(retry=replace(FAST_RETRY, max_attempts=1)).push(D1, D1).unknown == 1
    old = world.stripe_customer["acme"]
    new = world.client.v1.customers.create({"name": "Acme (dup)", "metadata": {"customer_id": "acme"}}).id
    (tmp_path / "again.csv").write_text(CUSTOMERS_CSV)
    catalog.sync_catalog(world.con, world.client, world.rules, load_customers(tmp_path / "again.csv", world.rules),
                         subscriptions=False)
    assert world.pusher().push(D1, D1).moved == 1
    world.client.v1.billing.meter_events.create({
        "event_name": event_name("tokens"), "payload": {"stripe_customer_id": old, "value": "0"},
        "identifier": "operator-zeroes-old-acme-tokens", "timestamp": int(t(D1, 12).timestamp())})
    released = world.pusher().push(D1, D1)
    assert (released.moved, released.acknowledged) == (0, 1)

    def tokens_at(customer: str) -> list:
        return [s.aggregated_value for s in world.client.v1.billing.meters.event_summaries.list(
            world.report.meters["tokens"], {"customer": customer, "start_time": int(t(D1, 0).timestamp()),
                                            "end_time": int(t(D2, 0).timestamp()), "value_grouping_window": "day"}).data]

    assert (tokens_at(old), tokens_at(new)) == ([0], [1500])
    assert world.ledger().select("revision", "status", "stripe_customer_id").rows() == [
        (1, "superseded", old), (2, "acknowledged", new)]


def test_pushing_hour_windows_to_day_meters_is_refused(world: World) -> None:
    import pytest

    from metering.errors import BadInputError

    seed_usage(world)
    with pytest.raises(BadInputError, match="aggregate otherwise"):
        world.pusher(window_kind="hour").push(D1, D1)
    assert world.meter_event_requests() == []


def test_hour_windows_on_hour_meters(tmp_path, rules_dir) -> None:
    from metering import warehouse
    from metering.stripe_sandbox.testing import running_sandbox
    from push_world import CUSTOMERS_CSV, make_world

    with running_sandbox(now=int(NOW.timestamp())) as sb, warehouse.open_warehouse(tmp_path / "h.duckdb") as con:
        world = make_world(con, sb, rules_dir, tmp_path, CUSTOMERS_CSV, window_kind="hour")
        seed_usage(world)
        report = world.pusher(window_kind="hour").push(D1, D2)
        # acme: api_calls hours D1 01, 02, 23 and D2 00 -> 4 windows; tokens 05, 06; storage D1 03, D2 03;
        # seats D1 03, 09; active users D1 03, D2 03, 04; globex api_calls D2 12 -> 14 windows
        assert (report.acknowledged, report.calls) == (14, 14)
        start, end = day_start(D1), day_start(D3)
        assert world.stripe_total("acme", "api_calls", start, end) == Decimal(4)
        assert world.stripe_total("acme", "tokens", start, end) == Decimal(2000)
        assert world.stripe_total("acme", "seats", start, end) == Decimal(3)
        assert world.stripe_total("acme", "active_users", start, end) == Decimal(2)
        assert world.stripe_total("acme", "storage_gb", start, end) == Decimal(10)


def withdraw_day(world: World, day: dt.date) -> None:
    """A correction: the day's usage is re-materialised without any of its events."""
    world.con.execute("DELETE FROM usage_events WHERE event_date = ?", [day])
    world.events = [e for e in world.events if e["event_date"] != day]
    refresh_aggregates(world.con, world.rules.meters, day)


def test_a_withdrawn_last_window_carries_the_period_to_date_last_value(world: World) -> None:
    """seats (our `last`, Stripe's `last`): 7 seats on Nov 17, 9 on Nov 18, pushed; Nov 18's event is
    then withdrawn. Rating bills the period's last event, 7 (Nov 17 09:00). Nov 18's window is still
    Stripe's newest event, so its new revision must carry 7 (the last value from the period start to
    the window's end), not the window's own value: there is none, and pushing 0 made Stripe bill 0."""
    world.add_events([("acme", "seats", t(D1, 9), "7", {}), ("acme", "seats", t(D2, 9), "9", {})])
    world.pusher().push(D1, D2)
    start, end = day_start(D1), day_start(D3)
    assert world.stripe_total("acme", "seats", start, end) == Decimal(9)

    withdraw_day(world, D2)
    report = world.pusher().push(D1, D2)
    assert (report.new_revisions, report.acknowledged, report.calls) == (1, 1, 1)
    seats = world.ledger().filter(pl.col("meter") == "seats")
    assert seats.select("event_date", "revision", "value", "status").rows() == [
        (D1, 1, Decimal(7), "acknowledged"), (D2, 1, Decimal(9), "acknowledged"),
        (D2, 2, Decimal(7), "acknowledged")]
    assert expected_total(world.events, "acme", "seats") == Decimal(7)      # ours, from the raw events
    assert world.stripe_total("acme", "seats", start, end) == Decimal(7)    # Stripe's last


def test_a_withdrawn_window_before_the_first_changed_one_is_recomputed(world: World) -> None:
    """globex is anchored on the 15th: Nov 14 closes the period Oct 15 - Nov 15, Nov 16 opens the next.
    5 seats on Nov 14 and 3 on Nov 16 are pushed; Nov 14's event is then withdrawn and Nov 14 - 16
    pushed again. Nov 14 is not the first window with usage in the range (Nov 16 is), but it is the
    newest event of its own period: it must be recomputed to 0 (no seats in that period), or Stripe
    keeps billing 5 for Oct 15 - Nov 15."""
    nov14, nov16 = dt.date(2026, 11, 14), dt.date(2026, 11, 16)
    world.add_events([("globex", "seats", t(nov14, 9), "5", {}), ("globex", "seats", t(nov16, 9), "3", {})])
    world.pusher().push(nov14, nov16)
    first_period = (day_start(dt.date(2026, 10, 15)), day_start(dt.date(2026, 11, 15)))
    assert world.stripe_total("globex", "seats", *first_period) == Decimal(5)

    withdraw_day(world, nov14)
    report = world.pusher().push(nov14, nov16)
    assert (report.new_revisions, report.acknowledged) == (1, 1)
    seats = world.ledger().filter(pl.col("meter") == "seats")
    assert seats.select("event_date", "revision", "value").rows() == [
        (nov14, 1, Decimal(5)), (nov14, 2, Decimal(0)), (nov16, 1, Decimal(3))]
    assert world.stripe_total("globex", "seats", *first_period) == Decimal(0)
    assert world.stripe_total("globex", "seats", day_start(dt.date(2026, 11, 15)), day_start(D3)) == Decimal(3)


LAST_FORMULA_METERS = ("seats", "storage_gb", "active_users")   # ours: last, max, unique_count
change = st.tuples(
    st.sampled_from([D1, D2, D3 - dt.timedelta(days=3)]),                 # Nov 17, 18, 16
    st.one_of(st.none(), st.tuples(st.integers(0, 23), st.integers(0, 9))),  # withdraw, or (hour, value)
)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(changes=[(D1, (9, 7)), (D2, (9, 9)), (D2, None)])   # the withdrawn last window
@example(changes=[(D2, (5, 0)), (D1, (23, 4)), (D1, None)])
@given(changes=st.lists(change, min_size=1, max_size=4))
def test_last_formula_meters_carry_what_rating_bills_after_any_changes(tmp_path, rules_dir, changes) -> None:
    """For our last / max / unique_count meters (Stripe's `last`): after any sequence of added events and
    withdrawn days, each pushed by itself, Stripe's value for the period equals ours from the raw events."""
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    with running_sandbox(now=int(NOW.timestamp())) as sb, warehouse.open_warehouse(folder / "wh.duckdb") as con:
        world = make_world(con, sb, rules_dir, folder)
        for day, what in changes:
            if what is None:
                withdraw_day(world, day)
            else:
                hour, value = what
                world.add_events([("acme", "seats", t(day, hour), str(value), {}),
                                  ("acme", "storage_gb", t(day, hour), str(value), {}),
                                  ("acme", "active_users", t(day, hour), None, {"user_id": f"u{value}"})])
            report = world.pusher().push(day, day)
            assert report.needs_operator == 0
            for meter in LAST_FORMULA_METERS:
                ours = expected_total(world.events, "acme", meter)
                assert world.stripe_total("acme", meter, day_start(dt.date(2026, 11, 1)), day_start(D3)) == ours, \
                    (meter, day, what)


def test_a_gauge_carries_nothing_from_before_the_subscription_started(tmp_path, rules_dir) -> None:
    """`late` subscribes on Nov 10 (calendar months), so its first period is Nov 10 - Dec 1, as rating
    bills it and as Stripe's subscription (started at its first plan) counts its `last` formula. 50 GB
    on Nov 5 (before it) and 5 GB on Nov 12: rating bills max 5, so Nov 12's window must carry 5. It
    carried 50, the maximum since Nov 1, the anchor's period start: Stripe would have billed 50."""
    csv = CUSTOMERS_CSV + "late,Late,ap@late.test,usd,,starter,2026-11-10,succeeds\n"
    nov5, nov12 = dt.date(2026, 11, 5), dt.date(2026, 11, 12)
    with running_sandbox(now=int(NOW.timestamp()), seed=7) as sb, \
            warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        world = make_world(con, sb, rules_dir, tmp_path, csv_text=csv)
        world.add_events([("late", "storage_gb", t(nov5, 9), "50", {}), ("late", "storage_gb", t(nov12, 9), "5", {}),
                          ("late", "seats", t(nov5, 9), "40", {}),
                          ("late", "active_users", t(nov5, 9), None, {"user_id": "u1"}),
                          ("late", "active_users", t(nov12, 9), None, {"user_id": "u2"})])
        world.pusher().push(nov5, nov12)
        values = {(m, d): v for m, d, v in world.ledger().filter(pl.col("customer_id") == "late")
                  .select("meter", "event_date", "value").rows()}
        assert values[("storage_gb", nov12)] == Decimal(5)
        assert values[("active_users", nov12)] == Decimal(1)      # u2 alone: u1 came before the subscription
        assert values[("storage_gb", nov5)] == values[("seats", nov5)] == Decimal(0)
        first_period = (day_start(dt.date(2026, 11, 10)), day_start(dt.date(2026, 12, 1)))
        assert world.stripe_total("late", "storage_gb", *first_period) == Decimal(5)
        assert world.stripe_total("late", "active_users", *first_period) == Decimal(1)
