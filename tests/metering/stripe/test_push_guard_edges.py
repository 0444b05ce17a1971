"""The push's guards at their exact edges, against the real local sandbox: the 20 h stale-key limit
counted from the FIRST attempt, a finalized invoice's half-open period, Stripe's 35 days with the
1 h margin, the 5-minute future limit with its 60 s slack, and the 100-character identifier limit.

Every expected value below is computed by hand in the test's docstring or comments."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from metering import warehouse
from metering.stripe.keys import IDEMPOTENCY_KEY_MAX, IDENTIFIER_MAX, idempotency_key, meter_event_identifier
from metering.stripe.push import PushConfig, Pusher
from metering.stripe_sandbox.testing import running_sandbox
from push_world import (CUSTOMERS_CSV, FAST_RETRY, NOW, World, applied_per_key, customer_on_clock, day_start,
                        make_world)

UTC = dt.timezone.utc
NOV18 = dt.date(2026, 11, 18)


def _rows(world: World, meter: str = "tokens") -> list[tuple]:
    return world.ledger().filter(pl.col("meter") == meter).sort("event_date", "revision").select(
        "event_date", "revision", "value", "status").rows()


# -- S5 / LG1: stale is counted from the first attempt ---------------------------------------------

def test_a_row_first_tried_21h_ago_and_last_tried_1h_ago_is_stale(world: World) -> None:
    """acme's tokens on Nov 18 (5). Push at T0 (= NOW): every attempt 429 -> `pending`, first and last
    attempt T0. Push at T0 + 19 h: 19 h < 20 h, not stale, resent under the T0 key, 429 again -> still
    `pending`, first attempt T0, last attempt T0 + 19 h. Push at T0 + 21 h: the key was FIRST used
    21 h ago (> 20 h; Stripe forgets keys after 24 h), so invariant I10 forbids sending under it
    again: Stripe's summary is read (1 check; empty), revision 1 superseded, revision 2 (new key,
    value 5) sent and acknowledged.

    Wrong implementations: a stale test on `last_attempt_at` (2 h old at T0 + 21 h) resends under the
    T0 key with no summary read; `mark_sent` overwriting `first_attempt_at` on every attempt makes the
    row look first tried at T0 + 19 h, with the same result."""
    world.add_events([("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=3), "5", {"model": "small"})])
    one_attempt = replace(FAST_RETRY, max_attempts=1)
    t0, t19, t21 = NOW, NOW + dt.timedelta(hours=19), NOW + dt.timedelta(hours=21)

    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=1)
    first = world.pusher(retry=one_attempt, now=t0).push(NOV18, NOV18)
    assert (first.pending, first.unknown, first.acknowledged, first.summary_checks) == (1, 0, 0, 0)
    row = world.ledger().row(0, named=True)
    old_key = row["idempotency_key"]
    assert (row["status"], row["attempts"], row["first_attempt_at"], row["last_attempt_at"]) == (
        "pending", 1, t0, t0)

    world.sandbox.set_now(int(t19.timestamp()))
    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=1)
    before = len(world.meter_event_requests())
    second = world.pusher(retry=one_attempt, now=t19).push(NOV18, NOV18)
    assert (second.pending, second.summary_checks, second.new_revisions) == (1, 0, 0)
    assert [(r["idempotency_key"], r["status"]) for r in world.meter_event_requests()[before:]] == [(old_key, 429)]
    row = world.ledger().row(0, named=True)
    # the first attempt's time is kept; only the last one moves
    assert (row["status"], row["attempts"], row["first_attempt_at"], row["last_attempt_at"]) == (
        "pending", 2, t0, t19)

    world.sandbox.clear_faults()
    world.sandbox.set_now(int(t21.timestamp()))
    before = len(world.meter_event_requests())
    third = world.pusher(now=t21).push(NOV18, NOV18)
    assert (third.summary_checks, third.new_revisions, third.acknowledged, third.needs_operator) == (1, 1, 1, 0)
    new_keys = [r["idempotency_key"] for r in world.meter_event_requests()[before:]]
    assert old_key not in new_keys
    ledger = world.ledger().sort("revision")
    assert ledger.select("revision", "value", "status", "resolved_by").rows() == [
        (1, Decimal(5), "superseded", "summary"), (2, Decimal(5), "acknowledged", "response")]
    assert new_keys == [ledger["idempotency_key"][1]]
    assert applied_per_key(world.meter_event_requests()) == {ledger["idempotency_key"][1]: 1}
    assert world.stripe_total("acme", "tokens", day_start(NOV18), day_start(NOV18) + dt.timedelta(days=1)) == 5


# -- S13: a finalized invoice's period is half-open [start, end) ------------------------------------

@pytest.mark.parametrize("late_day", [dt.date(2026, 10, 1), dt.date(2026, 10, 31)])
def test_a_finalized_period_is_its_days_from_the_first_to_before_its_end(tmp_path: Path, rules_dir: Path,
                                                                         late_day: dt.date) -> None:
    """acme (calendar months) on a test clock advanced to Nov 2 00:00: the October invoice, period
    [Oct 1, Nov 1), is finalized (1 h grace after Nov 1). Tokens: 3 on `late_day`, 5 on Nov 1.
    Oct 1 (window start = the period's start) and Oct 31 (window start Oct 31 00:00 < Nov 1) lie inside
    the finalized period: late, not sent (35 days is not the reason: oldest = Nov 2 00:00 - 35 d + 1 h
    = Sep 28 01:00 < Oct 1). Nov 1 (window start = Nov 1 00:00 = the period's end) belongs to
    November's open period: pushed and acknowledged, Stripe's Nov 1 total 5, October's 0.

    Wrong implementations: the period taken as closed [Oct 1, Nov 1] (`window_start <= period_end`)
    makes Nov 1 late too: 2 late, 0 acknowledged, nothing sent, November under-billed by 5; taken as
    (Oct 1, Nov 1) (`window_start > period_start`, a mutation audit's survivor) pushes Oct 1's 3 into
    an invoice Stripe has finalized."""
    nov1 = dt.date(2026, 11, 1)
    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        world = World(con, sb, client, rules, report)
        world.add_events([("acme", "tokens", day_start(late_day) + dt.timedelta(hours=4), "3", {"model": "small"}),
                          ("acme", "tokens", day_start(nov1) + dt.timedelta(hours=4), "5", {"model": "small"})])
        sb.advance_clock(clock.id, int(dt.datetime(2026, 11, 2, tzinfo=UTC).timestamp()))
        october = [i for i in client.v1.invoices.list({"customer": report.customers[0]["stripe_customer_id"]}).data
                   if i.period_end > i.period_start and i.status != "draft"]
        assert [(i.period_start, i.period_end) for i in october] == [
            (int(dt.datetime(2026, 10, 1, tzinfo=UTC).timestamp()), int(dt.datetime(2026, 11, 1, tzinfo=UTC).timestamp()))]

        pushed = Pusher(con, client, rules.meters, PushConfig(rate=0, retry=FAST_RETRY),
                        sleep=lambda s: None).push(late_day, nov1)
        assert (pushed.acknowledged, pushed.late, pushed.calls, pushed.failed, pushed.unknown) == (1, 1, 1, 0, 0)
        assert _rows(world) == [(late_day, 1, Decimal(3), "late"), (nov1, 1, Decimal(5), "acknowledged")]
        assert world.ledger().filter(pl.col("event_date") == late_day)["last_error"][0] == (
            "the invoice for this period is already finalized: report to finance")
        assert len(world.meter_event_requests()) == 1
        assert world.stripe_total("acme", "tokens", day_start(nov1), day_start(dt.date(2026, 11, 2))) == 5
        assert world.stripe_total("acme", "tokens", day_start(late_day), day_start(nov1)) == 0


# -- S6 / S7: 35 days, with the 1 h margin, strict ---------------------------------------------------

OCT6, OCT7 = dt.date(2026, 10, 6), dt.date(2026, 10, 7)


@pytest.mark.parametrize(("stripe_now", "oct6_late"), [
    # oldest = Nov 9 23:30 - 35 d + 1 h = Oct 5 23:30 + 1 h = Oct 6 00:30 > Oct 6 00:00: late
    (dt.datetime(2026, 11, 9, 23, 30, tzinfo=UTC), True),
    # oldest = Nov 9 23:00 - 35 d + 1 h = Oct 6 00:00 = the window start, not before it: pushed
    (dt.datetime(2026, 11, 9, 23, 0, tzinfo=UTC), False),
])
def test_the_35_day_limit_keeps_a_one_hour_margin_and_is_strict(tmp_path: Path, rules_dir: Path,
                                                                 stripe_now: dt.datetime, oct6_late: bool) -> None:
    """Tokens 5 on Oct 6 and 7 on Oct 7, pushed with Stripe's now (no test clock: the pusher's `now`)
    at Nov 9 23:30 and at 23:00. PushConfig.late_margin = 1 h, STRIPE_MAX_AGE = 35 days; a window is
    late when window_start < now - 35 d + 1 h. Oct 7 is pushed in both cases.

    Wrong implementations: without the margin (oldest Oct 5 23:30 at 23:30) Oct 6 is pushed at
    23:30, 30 minutes from Stripe's own limit; with `<=` (late when window_start <= oldest) Oct 6 is
    called late at 23:00, where it is still inside the margin: usage never sent."""
    assert (PushConfig().late_margin, PushConfig().window_kind) == (dt.timedelta(hours=1), "day")
    with running_sandbox(now=int(stripe_now.timestamp()), seed=7) as sb, \
            warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        world = make_world(con, sb, rules_dir, tmp_path, now=stripe_now)
        world.add_events([("acme", "tokens", day_start(OCT6) + dt.timedelta(hours=2), "5", {"model": "small"}),
                          ("acme", "tokens", day_start(OCT7) + dt.timedelta(hours=2), "7", {"model": "small"})])
        report = world.pusher().push(OCT6, OCT7)
        sent = {r["idempotency_key"] for r in world.meter_event_requests()}
        keys = dict(world.ledger().select("event_date", "idempotency_key").rows())
        if oct6_late:
            assert (report.late, report.acknowledged, report.calls) == (1, 1, 1)
            assert _rows(world) == [(OCT6, 1, Decimal(5), "late"), (OCT7, 1, Decimal(7), "acknowledged")]
            assert "35 days" in world.ledger().filter(pl.col("event_date") == OCT6)["last_error"][0]
            assert sent == {keys[OCT7]}
        else:
            assert (report.late, report.acknowledged, report.calls) == (0, 2, 2)
            assert _rows(world) == [(OCT6, 1, Decimal(5), "acknowledged"), (OCT7, 1, Decimal(7), "acknowledged")]
            assert sent == {keys[OCT6], keys[OCT7]}
            assert world.stripe_total("acme", "tokens", day_start(OCT6), day_start(OCT7)) == 5


# -- S8: 5 minutes into the future, less 60 s -------------------------------------------------------

def test_an_hour_window_starting_5_minutes_ahead_is_not_yet_due(tmp_path: Path, rules_dir: Path) -> None:
    """Hour windows, Stripe's now Nov 19 10:55:00. A window is due when window_start <= now + 5 min -
    60 s = 10:59:00. Tokens 2 at 10:30 (window 10:00: due, acknowledged) and 3 at 11:10 (window 11:00,
    after 10:59: not yet due, no call, no ledger row).

    Wrong implementation: without the 60 s slack the limit is 11:00:00 and the 11:00 window is sent:
    its event, stamped 11:00:01, is over Stripe's 5 minutes and refused (400 timestamp_in_future),
    leaving a `failed` row where the window should simply have waited for a later push."""
    now = dt.datetime(2026, 11, 19, 10, 55, tzinfo=UTC)
    day = now.date()
    with running_sandbox(now=int(now.timestamp()), seed=7) as sb, \
            warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        world = make_world(con, sb, rules_dir, tmp_path, CUSTOMERS_CSV, now=now, window_kind="hour")
        world.add_events([("acme", "tokens", now.replace(minute=30), "2", {"model": "small"}),
                          ("acme", "tokens", now.replace(hour=11, minute=10), "3", {"model": "small"})])
        report = world.pusher(window_kind="hour").push(day, day)
        assert (report.not_yet_due, report.acknowledged, report.calls, report.late) == (1, 1, 1, 0)
        ledger = world.ledger()
        assert ledger.select("window_start", "value", "status").rows() == [
            (now.replace(minute=0), Decimal(2), "acknowledged")]
        assert [r["idempotency_key"] for r in world.meter_event_requests()] == ledger["idempotency_key"].to_list()


# -- S2: an identifier of exactly 100 characters is kept readable --------------------------------------

T_OCT1 = dt.datetime(2026, 10, 1, tzinfo=UTC)


def test_an_identifier_of_exactly_100_characters_stays_readable() -> None:
    """The readable identifier is `<customer>|api_calls|day|20261001T0000Z|r1`: 4 separators + 9 + 3
    + 14 + 2 = 32 characters besides the customer id, so a 68-character id makes exactly 100 (Stripe's
    limit, allowed) and 69 makes 101 (hashed: `h-` + 64 hex digits).

    Wrong implementation: `len < 100` hashes the 100-character identifier, which then no longer names
    the customer and window an operator looks for in Stripe."""
    at_limit = "c" * 68
    ident = meter_event_identifier(at_limit, "api_calls", "day", T_OCT1, 1)
    assert ident == at_limit + "|api_calls|day|20261001T0000Z|r1"
    assert len(ident) == IDENTIFIER_MAX == 100
    over = meter_event_identifier("c" * 69, "api_calls", "day", T_OCT1, 1)
    assert over.startswith("h-") and len(over) == 66


def test_an_idempotency_key_of_exactly_255_characters_stays_readable() -> None:
    """`metering-push:` (14) + customer + 32 = 255 for a 209-character id: readable at the limit; 210
    makes 256, hashed (`metering-push:h-` + 64 hex digits = 80)."""
    key = idempotency_key("k" * 209, "api_calls", "day", T_OCT1, 1)
    assert key == "metering-push:" + "k" * 209 + "|api_calls|day|20261001T0000Z|r1"
    assert len(key) == IDEMPOTENCY_KEY_MAX == 255
    over = idempotency_key("k" * 210, "api_calls", "day", T_OCT1, 1)
    assert over.startswith("metering-push:h-") and len(over) == 80


def test_a_customer_whose_identifier_is_exactly_100_characters_is_pushed_under_it(tmp_path: Path,
                                                                                 rules_dir: Path) -> None:
    """End to end: a customer id of 68 characters, 1 api call on Nov 18, pushed: the meter event
    carries the readable 100-character identifier (Stripe's limit, which the sandbox enforces), and
    Stripe counts 1. A `< 100` check would have sent `h-<sha256>` instead."""
    cid = "c" * 68
    csv = CUSTOMERS_CSV + f"{cid},Long,long@x.test,usd,,starter,2026-01-01,succeeds\n"
    with running_sandbox(now=int(NOW.timestamp()), seed=7) as sb, \
            warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        world = make_world(con, sb, rules_dir, tmp_path, csv)
        world.add_events([(cid, "api_calls", day_start(NOV18) + dt.timedelta(hours=1), None, {"region": "us"})])
        report = world.pusher().push(NOV18, NOV18)
        assert (report.acknowledged, report.calls) == (1, 1)
        expected = f"{cid}|api_calls|day|20261118T0000Z|r1"
        assert len(expected) == 100
        assert world.ledger()["identifier"].to_list() == [expected]
        assert [r["status"] for r in world.meter_event_requests()] == [200]   # the sandbox took the identifier
        assert world.stripe_total(cid, "api_calls", day_start(NOV18), day_start(NOV18) + dt.timedelta(days=1)) == 1
