"""Gaps a hand mutation audit of the push itself (push.py, audit 23d) found untested, against the real
local sandbox over loopback and real DuckDB: the stale-key limit is strict ("more than 20 h"); a stale
row is resent as a new revision even when its last attempt is too recent for Stripe's summary to show
it; an attempted late window is decided once exactly the summary lag has passed; a voided invoice's
period is closed; a previous Stripe customer's `last` period is read by its newest day; a window
throttled this run waits although a held change is sent after it; a refused API key stops the push
whichever pair of the batch saw it; retry_failed reaches the plan; the report's calls and windows; the
settings' limits and empty environment variables.

Every expected value is computed by hand in the test's docstring or comments."""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from decimal import Decimal

import polars as pl
import pytest

from metering.errors import BadInputError, ExternalServiceError
from metering.stripe import ledger
from metering.stripe.keys import event_name
from metering.stripe.push import PushConfig, Pusher, _outcome, push_config_from_env
from metering.stripe.retry import CallOutcome
from push_world import FAST_RETRY, NOW, World, applied_per_key, customer_on_clock, day_start
from test_push_faults import NOV18, throttled_then_pushed_again

OCT17 = dt.date(2026, 10, 17)
ONE_ATTEMPT = replace(FAST_RETRY, max_attempts=1)


def _rows(world: World) -> list[tuple]:
    return world.ledger().filter(pl.col("meter") == "tokens").sort("revision").select(
        "revision", "value", "status", "resolved_by").rows()


def test_a_row_first_tried_exactly_20h_ago_is_resent_under_its_key(world: World) -> None:
    """acme's tokens on Nov 18 (5). At T0 every attempt is throttled (429): `pending`, first attempt T0.
    At exactly T0 + 20 h the key is 20 h old, not MORE than `key_max_age` (20 h): not stale, so no
    summary is read and the row is sent under its T0 key (revision 1, acknowledged by the response)."""
    first, key, second = throttled_then_pushed_again(world, 1, dt.timedelta(hours=20))
    assert first.pending == 1
    assert (second.summary_checks, second.new_revisions, second.acknowledged) == (0, 0, 1)
    assert _rows(world) == [(1, Decimal(5), "acknowledged", "response")]
    assert applied_per_key(world.meter_event_requests()) == {key: 1}


def test_a_stale_row_last_tried_moments_ago_is_still_resent_as_a_new_revision(world: World) -> None:
    """acme's tokens on Nov 18 (5). T0: the call is dropped (no response): `unknown`, first attempt T0.
    T0 + 19 h 55 min: not stale (< 20 h), resent under the T0 key, dropped again: last attempt then.
    T0 + 20 h 5 min: first tried over 20 h ago, so stale; its last attempt is only 10 min old, under
    the 15 min summary lag, but the row is resent (a new revision replaces whatever the window holds),
    so the lag does not matter: the empty summary supersedes revision 1 and revision 2 (new key, 5) is
    acknowledged. Waiting for the lag instead would send revision 1 again under its 20 h old key."""
    world.add_events([("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=3), "5", {"model": "small"})])
    world.sandbox.inject_fault("drop", path="/v1/billing/meter_events", method="POST", count=1)
    assert world.pusher(retry=ONE_ATTEMPT).push(NOV18, NOV18).unknown == 1
    old_key = world.ledger()["idempotency_key"][0]

    t1 = NOW + dt.timedelta(hours=19, minutes=55)
    world.sandbox.set_now(int(t1.timestamp()))
    world.sandbox.inject_fault("drop", path="/v1/billing/meter_events", method="POST", count=1)
    assert world.pusher(retry=ONE_ATTEMPT, now=t1).push(NOV18, NOV18).unknown == 1

    world.sandbox.clear_faults()
    t2 = NOW + dt.timedelta(hours=20, minutes=5)
    world.sandbox.set_now(int(t2.timestamp()))
    third = world.pusher(now=t2).push(NOV18, NOV18)
    assert (third.summary_checks, third.new_revisions, third.acknowledged, third.unknown) == (1, 1, 1, 0)
    assert _rows(world) == [(1, Decimal(5), "superseded", "summary"), (2, Decimal(5), "acknowledged", "response")]
    new_key = world.ledger().sort("revision")["idempotency_key"][1]
    assert applied_per_key(world.meter_event_requests()) == {new_key: 1}
    assert old_key != new_key
    assert world.stripe_total("acme", "tokens", day_start(NOV18), day_start(NOV18) + dt.timedelta(days=1)) == 5


def test_an_attempted_late_window_is_decided_once_exactly_the_summary_lag_has_passed(world: World) -> None:
    """acme's tokens on Oct 17 (4). At T0 = Nov 20 12:00 the window is inside Stripe's 35 days (the
    limit with its 1 h margin is Nov 20 12:00 - 35 d + 1 h = Oct 16 13:00 <= Oct 17 00:00); its call is
    dropped: `unknown`, last attempt T0. At T1 = Nov 21 00:00 the limit is Oct 17 01:00 > Oct 17 00:00:
    the window is late. With a summary lag of 12 h = T1 - T0, the summary can show the attempt now
    (the lag has passed, not "less than" it): empty, so revision 1 is superseded and the value gets a
    `late` revision 2; nothing is sent."""
    world.add_events([("acme", "tokens", day_start(OCT17) + dt.timedelta(hours=3), "4", {"model": "small"})])
    world.sandbox.inject_fault("drop", path="/v1/billing/meter_events", method="POST", count=1)
    assert world.pusher(retry=ONE_ATTEMPT).push(OCT17, OCT17).unknown == 1
    world.sandbox.clear_faults()
    sent_before = len(world.meter_event_requests())

    t1 = dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc)
    world.sandbox.set_now(int(t1.timestamp()))
    second = world.pusher(now=t1, summary_lag=t1 - NOW).push(OCT17, OCT17)
    assert (second.summary_checks, second.late, second.unknown, second.new_revisions) == (1, 1, 0, 1)
    assert _rows(world) == [(1, Decimal(4), "superseded", "summary"), (2, Decimal(4), "late", None)]
    assert len(world.meter_event_requests()) == sent_before


@pytest.mark.parametrize("name", ["STRIPE_PUSH_RATE", "STRIPE_PUSH_CONCURRENCY"])
def test_an_empty_push_environment_variable_takes_the_default(monkeypatch, name) -> None:
    """An exported but empty variable (e.g. `STRIPE_PUSH_RATE=` in a .env file) means unset: rate 20
    calls/s, concurrency 8, not a refusal."""
    monkeypatch.delenv("METERING_STRIPE_SETTLE_SECONDS", raising=False)
    monkeypatch.setenv(name, "")
    config = push_config_from_env()
    assert (config.rate, config.concurrency) == (20.0, 8)


def test_usage_for_a_voided_invoice_is_late_not_pushed(tmp_path, rules_dir) -> None:
    """acme (calendar months, payment fails) on a test clock: 3 API calls on Oct 10 are pushed on Oct 11
    (acknowledged). At Nov 2 00:00 October's invoice, period [Oct 1, Nov 1), is finalized (1 h grace)
    and stays open (its payment failed); the operator voids it. A 4th call on Oct 10 then: a voided
    invoice also left `draft`, the usage can reach no invoice, so revision 2 (4) is `late` (the
    finalized reason) and not sent (35 days is not the reason: Nov 2 - 35 d + 1 h = Sep 28 01:00)."""
    oct10 = dt.date(2026, 10, 10)
    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        world = World(con, sb, client, rules, report)
        sb.set_payment_behavior(report.customers[0]["stripe_customer_id"], "fails")

        def push():
            return Pusher(con, client, rules.meters, PushConfig(rate=0, retry=FAST_RETRY),
                          sleep=lambda s: None).push(oct10, oct10)

        world.add_events([("acme", "api_calls", day_start(oct10) + dt.timedelta(hours=h), None, {"region": "us"})
                          for h in (1, 2, 3)])
        sb.advance_clock(clock.id, int(day_start(oct10 + dt.timedelta(days=1)).timestamp()))
        assert push().acknowledged == 1
        sb.advance_clock(clock.id, int(dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc).timestamp()))
        [october] = [i for i in client.v1.invoices.list({"customer": report.customers[0]["stripe_customer_id"]}).data
                     if i.period_end > i.period_start]
        assert october.status == "open"
        assert client.v1.invoices.void_invoice(october.id).status == "void"

        world.add_events([("acme", "api_calls", day_start(oct10) + dt.timedelta(hours=20), None, {"region": "eu"})])
        sent_before = len(world.meter_event_requests())
        late = push()
        assert (late.late, late.calls, late.acknowledged) == (1, 0, 0)
        assert world.ledger().sort("revision").select("revision", "value", "status").rows() == [
            (1, Decimal(3), "acknowledged"), (2, Decimal(4), "late")]
        assert world.ledger().sort("revision")["last_error"][1] == (
            "the invoice for this period is already finalized: report to finance")
        assert len(world.meter_event_requests()) == sent_before


@pytest.mark.parametrize(("setting", "refused"), [
    ({"concurrency": 0}, True), ({"concurrency": 1}, False),
    # Stripe may prune a key after 24 h: a key exactly 24 h old may be gone
    ({"key_max_age": dt.timedelta(hours=24)}, True), ({"key_max_age": dt.timedelta(hours=23, minutes=59)}, False),
])
def test_push_settings_at_their_limits(setting, refused) -> None:
    """No worker to send with (0) and a stale-key limit of a full 24 h are refused; 1 and 23:59 are not."""
    if refused:
        with pytest.raises(BadInputError):
            PushConfig(**setting)
    else:
        PushConfig(**setting)


def test_a_call_stripe_refused_is_failed_and_resolved_by_its_response(world: World) -> None:
    """A 400 that is neither a duplicate identifier nor an idempotency error: Stripe answered, nothing
    was recorded, so the row is `failed` and Stripe's response (not a summary) resolved it."""
    row = {"identifier": "id1"}
    out = world.pusher()._to_outcome(row, CallOutcome("failed", 1, "Invalid timestamp", "req_1", 400))
    assert (out["status"], out["resolved_by"], out["extra_attempts"], out["last_http_status"]) == (
        "failed", "response", 0, 400)


def test_a_window_throttled_this_run_is_not_resent_when_a_held_change_is_sent_after(world: World) -> None:
    """acme's tokens. Run 1: Nov 17's 5 is applied but its response lost (`unknown`). Then 3 tokens come
    for Nov 16 and 2 more for Nov 17 (ours 7, a change held behind the unknown revision). Run 2, one
    attempt per call, the first call throttled: the pair's windows go in order, so Nov 16 (revision 1,
    3) gets the 429 and stays `pending`; Nov 17's revision 1 is resent under its key (Stripe replays:
    acknowledged); then the held change is planned (revision 2, 7) and only it is sent. Nov 16 waits for
    the next run, as it would without the change: 2 acknowledged, 1 pending, 2 new revisions (Nov 16's
    and Nov 17's second), 3 calls; Stripe holds 7 for Nov 17 and nothing for Nov 16."""
    nov16, nov17 = dt.date(2026, 11, 16), dt.date(2026, 11, 17)
    world.add_events([("acme", "tokens", day_start(nov17) + dt.timedelta(hours=1), "5", {"model": "small"})])
    world.sandbox.inject_fault("lost_response", path="/v1/billing/meter_events", method="POST", count=1)
    assert world.pusher(retry=ONE_ATTEMPT).push(nov17, nov17).unknown == 1
    world.sandbox.clear_faults()
    world.add_events([("acme", "tokens", day_start(nov16) + dt.timedelta(hours=1), "3", {"model": "small"}),
                      ("acme", "tokens", day_start(nov17) + dt.timedelta(hours=2), "2", {"model": "small"})])

    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=1)
    second = world.pusher(retry=ONE_ATTEMPT).push(nov16, nov17)
    assert (second.acknowledged, second.pending, second.unknown, second.new_revisions, second.calls) == (2, 1, 0, 2, 3)
    rows = world.ledger().sort("event_date", "revision").select("event_date", "revision", "value", "status").rows()
    assert rows == [(nov16, 1, Decimal(3), "pending"), (nov17, 1, Decimal(5), "acknowledged"),
                    (nov17, 2, Decimal(7), "acknowledged")]
    assert world.stripe_total("acme", "tokens", day_start(nov17), day_start(NOV18)) == 7
    assert world.stripe_total("acme", "tokens", day_start(nov16), day_start(nov17)) == 0


def test_a_previous_customer_s_period_is_released_by_its_newest_day_not_its_first(world: World, tmp_path) -> None:
    """Seats (`last`: Stripe bills the period's newest event). acme is pushed 4 seats on Nov 16 and 7 on
    Nov 17, then re-mapped to a duplicate Stripe customer; the operator sends the old customer 0 in its
    newest November window (Nov 17). Its November by day is then Nov 16: 4, Nov 17: 0, so it bills the
    newest, 0, and Nov 18's 7 seats go to the duplicate (one summary read, nothing held). Read by its
    first day (4), the period would stay held."""
    nov16, nov17 = dt.date(2026, 11, 16), dt.date(2026, 11, 17)
    world.add_events([("acme", "seats", day_start(nov16) + dt.timedelta(hours=9), "4", {}),
                      ("acme", "seats", day_start(nov17) + dt.timedelta(hours=9), "7", {})])
    assert world.pusher().push(nov16, nov17).acknowledged == 2
    old, new = world.remap_to_a_duplicate(tmp_path)
    world.client.v1.billing.meter_events.create({
        "event_name": event_name("seats"), "payload": {"stripe_customer_id": old, "value": "0"},
        "identifier": "operator-zeroes-old-acme-seats", "timestamp": int((day_start(nov17) + dt.timedelta(hours=12)).timestamp())})
    world.add_events([("acme", "seats", day_start(NOV18) + dt.timedelta(hours=9), "7", {})])

    pushed = world.pusher().push(NOV18, NOV18)
    assert (pushed.moved, pushed.summary_checks, pushed.acknowledged, pushed.needs_operator) == (0, 1, 1, 0)
    assert world.ledger().filter(pl.col("event_date") == NOV18).select("value", "status", "stripe_customer_id").rows() == [
        (Decimal(7), "acknowledged", new)]
    november = (dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc))
    assert world.stripe_total("acme", "seats", *november) == 0      # world.report still names the old customer


def test_a_push_told_to_retry_failed_windows_sends_them_as_a_new_revision(world: World) -> None:
    """acme's tokens on Nov 18 (5): revision 1 is attempted and Stripe refuses it (recorded `failed`, a
    400 that says nothing was recorded). A plain push leaves it failed (Stripe would refuse it again);
    a push with retry_failed supersedes it and sends revision 2 (5): acknowledged, Stripe holds 5."""
    world.add_events([("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=3), "5", {"model": "small"})])
    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=1)
    world.pusher(retry=ONE_ATTEMPT).push(NOV18, NOV18)
    world.sandbox.clear_faults()
    ledger.record_outcomes(world.con, [_outcome(world.ledger()["identifier"][0], "failed", 0, "refused", "req_1",
                                                400, "response")], NOW)

    plain = world.pusher().push(NOV18, NOV18)
    assert (plain.failed, plain.new_revisions, plain.calls) == (1, 0, 0)
    retried = world.pusher(retry_failed=True).push(NOV18, NOV18)
    assert (retried.failed, retried.new_revisions, retried.acknowledged) == (0, 1, 1)
    assert _rows(world) == [(1, Decimal(5), "superseded", "response"), (2, Decimal(5), "acknowledged", "response")]
    assert world.stripe_total("acme", "tokens", day_start(NOV18), day_start(NOV18) + dt.timedelta(days=1)) == 5


def test_a_refused_api_key_stops_the_push_even_when_the_batch_s_last_pair_finished_first(world: World) -> None:
    """Tokens: acme 3 on Nov 17 and 4 on Nov 18, globex 6 on Nov 18; two calls at a time. The first two
    calls (acme Nov 17, globex Nov 18) are held in flight, authenticated, while the API key is rolled,
    then let through: both acknowledged. acme's Nov 18 then gets 401. The batch's pairs are acme, then
    globex (which ended with no refusal): the refusal of an earlier pair still stops the push with
    ExternalServiceError, and acme's Nov 18 is left `sent`."""
    nov17 = dt.date(2026, 11, 17)
    world.add_events([("acme", "tokens", day_start(nov17) + dt.timedelta(hours=1), "3", {"model": "small"}),
                      ("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=1), "4", {"model": "small"}),
                      ("globex", "tokens", day_start(NOV18) + dt.timedelta(hours=2), "6", {"model": "small"})])
    world.sandbox.inject_fault("slow", path="/v1/billing/meter_events", method="POST", count=2, delay=30.0)
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(world.pusher(concurrency=2).push, nov17, NOV18)
        deadline = time.monotonic() + 30
        while world.sandbox.sandbox.faults.describe()[0]["fired"] < 2:   # both first calls held, authenticated
            assert time.monotonic() < deadline and not running.done()
            time.sleep(0.01)
        world.sandbox.sandbox.config.api_key = "sk_test_rolled_1111111111111111"
        world.sandbox.release_slow()
        with pytest.raises(ExternalServiceError, match="refused the API key"):
            running.result(timeout=60)
    assert sorted(r["status"] for r in world.meter_event_requests()) == [200, 200, 401]
    assert world.ledger().sort("customer_id", "event_date").select("customer_id", "event_date", "status").rows() == [
        ("acme", nov17, "acknowledged"), ("acme", NOV18, "sent"), ("globex", NOV18, "acknowledged")]


def test_every_http_attempt_of_a_retried_call_is_counted_as_a_call(world: World) -> None:
    """acme's tokens on Nov 18 (5); the first two attempts get 429, the third 200: the report counts all
    3 HTTP requests as calls, 2 of them retries and 2 rate-limited."""
    world.add_events([("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=3), "5", {"model": "small"})])
    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=2)
    report = world.pusher().push(NOV18, NOV18)
    assert (report.calls, report.retries, report.rate_limited, report.acknowledged) == (3, 2, 2, 1)
    assert len(world.meter_event_requests()) == 3


def test_the_report_counts_every_window_it_considered(world: World) -> None:
    """acme: tokens on Nov 17 and Nov 18, one API call on Nov 18; globex: tokens on Nov 18. Four
    customer x meter x day windows with usage: 4 considered, 4 new revisions, 4 acknowledged."""
    nov17 = dt.date(2026, 11, 17)
    world.add_events([("acme", "tokens", day_start(nov17) + dt.timedelta(hours=1), "3", {"model": "small"}),
                      ("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=1), "4", {"model": "small"}),
                      ("acme", "api_calls", day_start(NOV18) + dt.timedelta(hours=2), None, {"region": "us"}),
                      ("globex", "tokens", day_start(NOV18) + dt.timedelta(hours=2), "6", {"model": "small"})])
    report = world.pusher().push(nov17, NOV18)
    assert (report.windows_considered, report.new_revisions, report.acknowledged) == (4, 4, 4)
    assert "4 windows, 4 new revisions" in report.summary()
