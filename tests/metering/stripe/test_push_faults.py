"""Pushes under injected faults (429, 500, dropped connections, lost responses, stale keys): after
re-runs, Stripe's totals equal ours exactly, no event is executed twice, no key is random."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any
from decimal import Decimal

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from push_world import (FAST_RETRY, NOW, World, applied_per_key, customer_on_clock, day_start, expected_total,
                        make_world, random_usage)
from metering import warehouse
from metering.stripe.push import PushConfig, Pusher
from metering.stripe_sandbox.testing import running_sandbox

DAYS = [dt.date(2026, 11, 16), dt.date(2026, 11, 17), dt.date(2026, 11, 18)]
CUSTOMERS = [f"cust{i}" for i in range(6)]
CSV = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n" + "".join(
    f"{c},{c},{c}@x.test,usd,,starter,2026-01-01,succeeds\n" for c in CUSTOMERS)
METERS = ["api_calls", "tokens", "storage_gb", "seats", "active_users"]


@pytest.fixture
def big_world(tmp_path, rules_dir):
    with running_sandbox(now=int(NOW.timestamp()), seed=11) as sb, \
            warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        world = make_world(con, sb, rules_dir, tmp_path, CSV)
        random_usage(world, CUSTOMERS, DAYS, seed=3)
        yield world


def assert_stripe_equals_ours(world: World) -> None:
    start, end = day_start(DAYS[0]), day_start(DAYS[-1]) + dt.timedelta(days=1)
    for customer in CUSTOMERS:
        for meter in METERS:
            assert world.stripe_total(customer, meter, start, end) == expected_total(world.events, customer, meter), \
                (customer, meter)


def drain(world: World, runs: int = 10, **config) -> list:
    reports = []
    for _ in range(runs):
        reports.append(world.pusher(**config).push(DAYS[0], DAYS[-1]))
        open_rows = world.ledger().filter(pl.col("status").is_in(["pending", "sent", "unknown"]))
        if open_rows.is_empty():
            return reports
    raise AssertionError(f"still open after {runs} runs: {open_rows}")


def assert_keys_are_ours_and_executed_once(world: World) -> None:
    requests = world.meter_event_requests()
    ledger_keys = set(world.ledger()["idempotency_key"].to_list())
    assert {r["idempotency_key"] for r in requests} <= ledger_keys
    assert all(n == 1 for n in applied_per_key(requests).values())


@pytest.mark.parametrize("faults", [
    [{"kind": "rate_limit", "rate": 0.3}],
    [{"kind": "server_error", "rate": 0.3}],
    [{"kind": "drop", "rate": 0.25}],
    [{"kind": "lost_response", "rate": 0.25}],
    [{"kind": "rate_limit", "rate": 0.1}, {"kind": "server_error", "rate": 0.1},
     {"kind": "drop", "rate": 0.1}, {"kind": "lost_response", "rate": 0.1}],
], ids=["429", "500", "drop", "lost_response", "mixed"])
def test_faults_never_double_count_or_lose_usage(big_world: World, faults) -> None:
    for fault in faults:
        big_world.sandbox.inject_fault(path="/v1/billing/meter_events", method="POST", **fault)
    reports = drain(big_world, retry=_few_attempts())
    assert sum(r.retries for r in reports) > 0           # the faults did fire
    big_world.sandbox.clear_faults()
    assert_stripe_equals_ours(big_world)
    assert_keys_are_ours_and_executed_once(big_world)
    assert drain(big_world)[0].calls == 0                 # settled: nothing more to send


def _few_attempts():
    from push_world import FAST_RETRY
    from dataclasses import replace

    return replace(FAST_RETRY, max_attempts=3)


def test_stored_500_without_retry_leaves_unknown_then_the_next_run_settles(big_world: World) -> None:
    big_world.sandbox.inject_fault(path="/v1/billing/meter_events", method="POST", kind="server_error",
                                   count=5, should_retry=False)
    first = big_world.pusher().push(DAYS[0], DAYS[-1])
    assert first.unknown == 5 and first.needs_operator == 5
    second = big_world.pusher().push(DAYS[0], DAYS[-1])
    assert (second.calls, second.unknown, second.acknowledged) == (5, 0, 5)
    assert_stripe_equals_ours(big_world)
    assert_keys_are_ours_and_executed_once(big_world)


@pytest.mark.parametrize("kind, resent", [("lost_response", False), ("drop", True)])
def test_attempt_older_than_20h_is_checked_against_summaries_before_resending(
        big_world: World, kind: str, resent: bool) -> None:
    """An unknown outcome whose key is about to expire: read Stripe first; resend only if missing,
    and then as a new revision (a new key), never the old key."""
    big_world.sandbox.inject_fault(path="/v1/billing/meter_events", method="POST", kind=kind, count=1)
    from dataclasses import replace
    from push_world import FAST_RETRY

    first = big_world.pusher(retry=replace(FAST_RETRY, max_attempts=1)).push(DAYS[0], DAYS[-1])
    assert first.unknown == 1
    unknown = big_world.ledger().filter(pl.col("status") == "unknown").row(0, named=True)
    later = NOW + dt.timedelta(hours=21)
    big_world.sandbox.set_now(int(later.timestamp()))
    requests_before = len(big_world.meter_event_requests())
    second = big_world.pusher(now=later).push(DAYS[0], DAYS[-1])
    assert second.summary_checks == 1
    window = big_world.ledger().filter(
        (pl.col("customer_id") == unknown["customer_id"]) & (pl.col("meter") == unknown["meter"])
        & (pl.col("window_start") == unknown["window_start"])).sort("revision")
    new_requests = big_world.meter_event_requests()[requests_before:]
    if resent:
        assert window.select("revision", "status", "resolved_by").rows() == [
            (1, "superseded", "summary"), (2, "acknowledged", "response")]
        assert [r["idempotency_key"] for r in new_requests] == [window["idempotency_key"][1]]
    else:
        assert window.select("revision", "status", "resolved_by").rows() == [(1, "acknowledged", "summary")]
        assert new_requests == []
    assert_stripe_equals_ours(big_world)
    assert_keys_are_ours_and_executed_once(big_world)


def test_an_identifier_stripe_already_holds_is_settled_by_its_summary(big_world: World) -> None:
    """A push killed after Stripe applied a call but before its outcome was recorded leaves the row
    `sent`; if Stripe has dropped the idempotency key meanwhile (here: 25 h on Stripe's side, the row
    still young on ours), the resend is refused as a duplicate identifier. That once became `failed`,
    "nothing recorded", although Stripe holds the event; Stripe's summary now decides it."""
    first = big_world.pusher().push(DAYS[0], DAYS[-1])
    assert first.failed == 0 and first.unknown == 0
    row = big_world.ledger().filter(pl.col("status") == "acknowledged").row(0, named=True)
    big_world.con.execute("UPDATE stripe_push_ledger SET status = 'sent' WHERE identifier = ?", [row["identifier"]])
    big_world.sandbox.configure(identifier_ttl=72 * 3600)
    big_world.sandbox.set_now(int((NOW + dt.timedelta(hours=25)).timestamp()))
    second = big_world.pusher().push(DAYS[0], DAYS[-1])
    refused = [r for r in big_world.meter_event_requests() if r["idempotency_key"] == row["idempotency_key"]]
    assert [r["status"] for r in refused] == [200, 400]   # the key forgotten, the identifier known
    assert (second.failed, second.unknown, second.summary_checks) == (0, 0, 1)
    window = big_world.ledger().filter(pl.col("identifier") == row["identifier"]).row(0, named=True)
    assert (window["status"], window["resolved_by"]) == ("acknowledged", "summary")
    assert_stripe_equals_ours(big_world)


def test_never_two_calls_in_flight_for_one_customer_and_meter(big_world: World) -> None:
    """The sandbox answers 429 (resource-specific) to a second concurrent call for one customer x
    meter, as Stripe does: with 8 workers and 3 windows per pair, none may occur."""
    report = big_world.pusher(concurrency=8).push(DAYS[0], DAYS[-1])
    assert report.acknowledged == len(CUSTOMERS) * len(METERS) * len(DAYS) and report.rate_limited == 0
    assert [r for r in big_world.meter_event_requests() if r["status"] == 429] == []


NOV16, NOV17, NOV18 = dt.date(2026, 11, 16), dt.date(2026, 11, 17), dt.date(2026, 11, 18)


def _window_rows(world: World, customer: str, meter: str, day: dt.date) -> list[tuple]:
    return world.ledger().filter(
        (pl.col("customer_id") == customer) & (pl.col("meter") == meter) & (pl.col("event_date") == day)
    ).sort("revision").select("revision", "value", "status", "resolved_by").rows()


@pytest.mark.parametrize("meter, resent", [("seats", True), ("tokens", False)])
def test_a_stale_window_of_zero_with_no_event_at_stripe(world: World, meter: str, resent: bool) -> None:
    """7 on Nov 16, then an event of 0 on Nov 17 whose call never reached Stripe (unknown). 21 h later
    Stripe's summary for Nov 17 is empty. For a `sum` meter (tokens) no event sums to 0, as ours does:
    acknowledged, nothing resent. For a `last` meter (seats) no event is not an event of 0: Stripe bills
    the period's newest event, still Nov 16's 7, so the window is resent under revision 2 and Stripe's
    last becomes our 0."""
    props = {"model": "small"} if meter == "tokens" else {}
    world.add_events([("acme", meter, day_start(NOV16) + dt.timedelta(hours=9), "7", props)])
    world.pusher().push(NOV16, NOV16)
    world.add_events([("acme", meter, day_start(NOV17) + dt.timedelta(hours=9), "0", props)])
    world.sandbox.inject_fault("drop", path="/v1/billing/meter_events", method="POST", count=1)
    first = world.pusher(retry=replace(FAST_RETRY, max_attempts=1)).push(NOV16, NOV17)
    assert (first.unknown, first.acknowledged) == (1, 0)

    later = NOW + dt.timedelta(hours=21)
    world.sandbox.set_now(int(later.timestamp()))
    second = world.pusher(now=later).push(NOV16, NOV17)
    assert (second.summary_checks, second.unknown, second.needs_operator) == (1, 0, 0)
    nov17 = [r for r in world.meter_event_requests() if "|20261117T0000Z|" in r["idempotency_key"]]
    start, end = day_start(NOV16), day_start(NOV18)
    if resent:
        assert _window_rows(world, "acme", meter, NOV17) == [
            (1, Decimal(0), "superseded", "summary"), (2, Decimal(0), "acknowledged", "response")]
        assert [(r["idempotency_key"][-3:], r["status"]) for r in nov17] == [("|r1", "dropped"), ("|r2", 200)]
        ours = Decimal(0)                          # the period's last event is Nov 17's 0
    else:
        assert _window_rows(world, "acme", meter, NOV17) == [(1, Decimal(0), "acknowledged", "summary")]
        assert [r["status"] for r in nov17] == ["dropped"]
        ours = Decimal(7)                          # 7 + 0
    assert expected_total(world.events, "acme", meter) == ours
    assert world.stripe_total("acme", meter, start, end) == ours


def test_429s_after_a_lost_response_leave_the_window_unknown_and_its_summary_decides(world: World) -> None:
    """Attempt 1 is applied at Stripe but its response is lost; attempts 2 and 3 get 429. The outcome is
    not "nothing recorded" (pending): it is unknown, for the operator. 25 h later (Stripe's key and
    identifier forgotten) the window is settled by Stripe's summary, never resent under its old key:
    one event for the identifier, Stripe's total 5."""
    world.add_events([("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=3), "5", {"model": "small"})])
    world.sandbox.inject_fault("lost_response", path="/v1/billing/meter_events", method="POST", count=1)
    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=2)
    first = world.pusher(retry=replace(FAST_RETRY, max_attempts=3)).push(NOV18, NOV18)
    assert (first.unknown, first.pending, first.needs_operator, first.rate_limited) == (1, 0, 1, 2)
    row = world.ledger().row(0, named=True)
    assert (row["status"], row["attempts"], row["last_http_status"]) == ("unknown", 3, 429)

    world.sandbox.clear_faults()
    later = NOW + dt.timedelta(hours=25)
    world.sandbox.set_now(int(later.timestamp()))
    requests_before = len(world.meter_event_requests())
    second = world.pusher(now=later).push(NOV18, NOV18)
    assert (second.summary_checks, second.new_revisions, second.needs_operator) == (1, 0, 0)
    assert world.meter_event_requests()[requests_before:] == []
    assert _window_rows(world, "acme", "tokens", NOV18) == [(1, Decimal(5), "acknowledged", "summary")]
    assert applied_per_key(world.meter_event_requests()) == {row["idempotency_key"]: 1}
    assert world.stripe_total("acme", "tokens", day_start(NOV18), day_start(NOV18) + dt.timedelta(days=1)) == 5


OCT31 = dt.date(2026, 10, 31)
OCTOBER = (dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc))


@contextmanager
def _a_lost_response_on_oct31(tmp_path, rules_dir) -> Iterator[tuple[World, Callable[..., Any], str]]:
    """acme on a test clock at Oct 31 12:00: 10 tokens pushed and acknowledged, then 15 sent with its
    response lost (Stripe applied it; the ledger says unknown). Yields the world, `push(attempts)` of
    Oct 31 and the clock's id."""
    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        world = World(con, sb, client, rules, report)

        def push(attempts: int = 8):
            return Pusher(con, client, rules.meters, PushConfig(rate=0, retry=replace(FAST_RETRY, max_attempts=attempts)),
                          sleep=lambda s: None).push(OCT31, OCT31)

        sb.advance_clock(clock.id, int(dt.datetime(2026, 10, 31, 12, tzinfo=dt.timezone.utc).timestamp()))
        world.add_events([("acme", "tokens", day_start(OCT31) + dt.timedelta(hours=1), "10", {"model": "small"})])
        push()
        world.add_events([("acme", "tokens", day_start(OCT31) + dt.timedelta(hours=2), "5", {"model": "small"})])
        sb.inject_fault("lost_response", path="/v1/billing/meter_events", method="POST", count=1)
        assert push(attempts=1).unknown == 1
        yield world, push, clock.id


def _finalize_october(world: World, clock_id: str) -> None:
    """Nov 1 02:00 on acme's clock: October's invoice is finalized (and paid)."""
    world.sandbox.advance_clock(clock_id, int(dt.datetime(2026, 11, 1, 2, tzinfo=dt.timezone.utc).timestamp()))


def _october_tokens_pushed(world: World) -> tuple[Decimal, Decimal]:
    """(pushed_quantity, late_quantity) reconciliation reads from the ledger for acme's October tokens."""
    from metering.reconcile.inputs import load_pushed

    periods = pl.DataFrame({"customer_id": ["acme"], "period_start": [dt.date(2026, 10, 1)],
                            "period_end": [dt.date(2026, 11, 1)]})
    [pushed] = load_pushed(world.con, dt.date(2026, 10, 1), {"tokens": world.rules.meters["tokens"]}, periods).filter(
        pl.col("meter") == "tokens").to_dicts()
    return pushed["pushed_quantity"], pushed["late_quantity"]


@pytest.mark.parametrize("change, late_quantity", [("raise", 7), ("lower", -5)])
def test_a_lost_response_stripe_invoiced_stays_in_the_ledger_when_the_window_changes_after(
        tmp_path, rules_dir, change: str, late_quantity: int) -> None:
    """Oct 31: 10 tokens acknowledged, then 15 sent with its response lost (Stripe applied it: unknown).
    The October invoice is finalized with 15. Then the window changes again (7 more tokens, or the 5
    withdrawn). Revision 2 was superseded blind, so the ledger said Stripe held 10, and a correction
    back to 10 hid 5 tokens Stripe overbilled. Its summary is read first: acknowledged, as in a run
    without the fault, and the change is a late revision: pushed 15, late by +7 or -5."""
    from metering.rating.service import refresh_aggregates

    with _a_lost_response_on_oct31(tmp_path, rules_dir) as (world, push, clock_id):
        _finalize_october(world, clock_id)
        if change == "raise":
            world.add_events([("acme", "tokens", day_start(OCT31) + dt.timedelta(hours=3), "7", {"model": "small"})])
        else:
            withdrawn = world.con.execute("SELECT event_id FROM usage_events WHERE value = 5").fetchone()[0]
            world.con.execute("DELETE FROM usage_events WHERE event_id = ?", [withdrawn])
            refresh_aggregates(world.con, world.rules.meters, OCT31)
        third = push()
        assert (third.summary_checks, third.late, third.needs_operator) == (1, 1, 0)
        ours = {"raise": Decimal(22), "lower": Decimal(10)}[change]
        assert _window_rows(world, "acme", "tokens", OCT31) == [
            (1, Decimal(10), "acknowledged", "response"), (2, Decimal(15), "acknowledged", "summary"),
            (3, ours, "late", None)]
        assert world.stripe_total("acme", "tokens", *OCTOBER) == 15
        assert _october_tokens_pushed(world) == (15, late_quantity)


@pytest.mark.parametrize("throttled", [False, True])
def test_a_change_behind_a_lost_response_waits_for_stripes_answer(tmp_path, rules_dir, throttled: bool) -> None:
    """Oct 31: 10 tokens acknowledged; 15 sent and its response lost (Stripe applied it: unknown). The
    same day 7 more come, so ours is 22. Revision 2 was superseded unread; if revision 3 then never
    reached Stripe before the invoice was finalized, the ledger said 10 pushed while Stripe billed 15.
    Now revision 2 is sent again under its key first, and the change follows in the same run. When
    Stripe throttles that run (429 every time, which proves nothing about the lost attempt), revision 2
    stays unknown and the change waits; after the invoice is finalized, Stripe's summary settles it:
    15 pushed, 7 late, as Stripe billed."""
    with _a_lost_response_on_oct31(tmp_path, rules_dir) as (world, push, clock_id):
        world.add_events([("acme", "tokens", day_start(OCT31) + dt.timedelta(hours=3), "7", {"model": "small"})])
        if not throttled:
            third = push()
            assert (third.unknown, third.pending, third.new_revisions) == (0, 0, 1)
            assert _window_rows(world, "acme", "tokens", OCT31) == [
                (1, Decimal(10), "acknowledged", "response"), (2, Decimal(15), "acknowledged", "response"),
                (3, Decimal(22), "acknowledged", "response")]
            assert world.stripe_total("acme", "tokens", *OCTOBER) == 22
            return
        world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=2)
        third = push(attempts=2)
        assert (third.unknown, third.pending, third.new_revisions) == (1, 0, 0)
        world.sandbox.clear_faults()
        _finalize_october(world, clock_id)
        fourth = push()
        assert (fourth.summary_checks, fourth.late) == (1, 1)
        assert _window_rows(world, "acme", "tokens", OCT31) == [
            (1, Decimal(10), "acknowledged", "response"), (2, Decimal(15), "acknowledged", "summary"),
            (3, Decimal(22), "late", None)]
        assert world.stripe_total("acme", "tokens", *OCTOBER) == 15
        assert _october_tokens_pushed(world) == (15, 7)


def throttled_then_pushed_again(world: World, attempts: int, after: dt.timedelta) -> tuple[Any, str, Any]:
    """acme's tokens on Nov 18 (5), pushed at NOW with each of its `attempts` attempts answered 429 (the
    row stays `pending`, but attempted); then, the faults cleared, pushed again `after` later. Returns
    the first push's report, the row's Idempotency-Key, and the second push's report."""
    world.add_events([("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=3), "5", {"model": "small"})])
    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=attempts)
    first = world.pusher(retry=replace(FAST_RETRY, max_attempts=attempts)).push(NOV18, NOV18)
    key = world.ledger()["idempotency_key"][0]
    world.sandbox.clear_faults()
    later = NOW + after
    world.sandbox.set_now(int(later.timestamp()))
    return first, key, world.pusher(now=later).push(NOV18, NOV18)


def test_a_throttled_window_first_tried_over_20h_ago_is_checked_before_any_resend(world: World) -> None:
    """Every attempt got 429: the row is `pending` (nothing recorded) but was attempted. 25 h later it is
    not resent under its old key: the summary (empty) decides, and revision 2 carries the value."""
    first, old_key, second = throttled_then_pushed_again(world, 3, dt.timedelta(hours=25))
    assert (first.pending, first.unknown, first.needs_operator) == (1, 0, 0)
    assert (second.summary_checks, second.new_revisions, second.acknowledged) == (1, 1, 1)
    assert _window_rows(world, "acme", "tokens", NOV18) == [
        (1, Decimal(5), "superseded", "summary"), (2, Decimal(5), "acknowledged", "response")]
    assert [r["status"] for r in world.meter_event_requests() if r["idempotency_key"] == old_key] == [429] * 3
    assert world.stripe_total("acme", "tokens", day_start(NOV18), day_start(NOV18) + dt.timedelta(days=1)) == 5


FAULT = st.sampled_from(["lost_response", "drop", "rate_limit", "server_error"])
# (faults in order, hours since, whether 3 more units arrive for the window before the run)
RUN = st.tuples(st.lists(FAULT, max_size=3), st.sampled_from([0, 21, 25]), st.booleans())


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@example(meter="tokens", value="5", runs=[(["lost_response", "rate_limit", "rate_limit"], 0, False), ([], 25, False)])
@example(meter="seats", value="0", runs=[(["drop"], 0, False), ([], 21, False)])
# a change behind a lost response, throttled, then another change: never superseded unread
@example(meter="tokens", value="5", runs=[(["lost_response"], 0, False), (["rate_limit"] * 3, 0, True),
                                          (["lost_response"], 21, True)])
@given(meter=st.sampled_from(["tokens", "seats"]), value=st.sampled_from(["0", "5"]),
       runs=st.lists(RUN, min_size=1, max_size=3))
def test_any_fault_schedule_leaves_stripe_equal_to_ours_with_one_event_per_identifier(
        tmp_path, rules_dir, meter: str, value: str, runs: list) -> None:
    """One window (Nov 17, after a settled Nov 16 of 7) pushed through any sequence of runs, each with
    its own faults on successive attempts (3 attempts per run), hours of delay before it and maybe 3
    more units for the window (a change behind a revision whose fate is unknown), then a fault-free
    drain: Stripe's total equals ours, no identifier was executed twice (I8), and a `sum` total never
    exceeded ours on the way (I8: pending may only leave Stripe lower)."""
    folder = tmp_path / uuid.uuid4().hex
    folder.mkdir()
    props = {"model": "small"} if meter == "tokens" else {}
    start, end = day_start(NOV16), day_start(NOV18)
    with running_sandbox(now=int(NOW.timestamp()), seed=5) as sb, \
            warehouse.open_warehouse(folder / "wh.duckdb") as con:
        world = make_world(con, sb, rules_dir, folder)
        world.add_events([("acme", meter, day_start(NOV16) + dt.timedelta(hours=9), "7", props)])
        world.pusher().push(NOV16, NOV16)
        world.add_events([("acme", meter, day_start(NOV17) + dt.timedelta(hours=9), value, props)])
        ours = expected_total(world.events, "acme", meter)
        now = NOW
        for faults, hours, more in runs:
            now += dt.timedelta(hours=hours)
            sb.set_now(int(now.timestamp()))
            if more:
                world.add_events([("acme", meter, day_start(NOV17) + dt.timedelta(hours=10), "3", props)])
                ours = expected_total(world.events, "acme", meter)
            for kind in faults:
                sb.inject_fault(kind, path="/v1/billing/meter_events", method="POST", count=1)
            world.pusher(now=now, retry=replace(FAST_RETRY, max_attempts=3)).push(NOV16, NOV17)
            sb.clear_faults()
            if meter == "tokens":
                assert world.stripe_total("acme", meter, start, end) <= ours
        for _ in range(3):                              # the drain
            world.pusher(now=now).push(NOV16, NOV17)
            open_rows = world.ledger().filter(pl.col("status").is_in(["pending", "sent", "unknown"]))
            if open_rows.is_empty():
                break
        assert open_rows.is_empty(), open_rows
        assert world.stripe_total("acme", meter, start, end) == ours
        assert_keys_are_ours_and_executed_once(world)
