"""Gaps a hand mutation audit (m29d) found in the push (push.py), the retry decisions (retry.py) and
the invoice items' recording of items the ledger lost (invoice_items.py).

- invoice items: an item found at Stripe under a key the ledger lost is recorded with its period's
  exclusive end (Stripe's `period.end` + 1 s), and only when it names one of our customers;
- the token bucket waits only for the missing part of a token and returns all it waited; the default
  retry policy (6 attempts, 0.25 s doubling, capped at 8 s, Retry-After capped at 30 s); a call out of
  attempts that were not all 429s is `unknown`; a Retry-After that is no number; the last error's type;
  `Stripe-Should-Retry` in any case; an error's description;
- the push: a late window's wait names its attempt and when a push decides; a `last` window with no
  event at Stripe says so; the push's token bucket, environment errors and None overrides; batches;
  summary reads take a token and count as calls; a throttled late window does not wait for the lag;
  one message per held period; a window held by two previous customers counts once; unmapped vs
  unlisted; the 35-day limit and a finalized period's bounds are inclusive at the start; a Pusher
  used again forgets its last push's refused identifiers.

Real sandbox over loopback, real DuckDB, the real SDK (the retry decisions: the scripted SDK errors of
test_keys_and_retry); helpers imported from the neighbouring tests. Each test names the mutant it kills
(ids of the m29d report); expected values are worked out by hand in the docstrings.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest
import stripe

from metering.errors import BadInputError
from metering.stripe import ledger as push_ledger
from metering.stripe.invoice_items import item_key
from metering.stripe.push import PushConfig, Pusher, push_config_from_env
from metering.stripe.retry import RateLimiter, RetryPolicy, call_with_retries
from push_world import (
    FAST_RETRY, NOW, OCT1, SEP1, SEPTEMBER, World, customer_on_clock, day_start, rate_by_hand as rate,
)
from test_invoice_items import CSV, biller, items_at_stripe, ledger
from test_keys_and_retry import Script, _error, run
from test_push_faults import NOV18
from test_ledger_items_mutants26 import _by_hand


# -- invoice_items.py: items found at Stripe under keys the ledger does not hold ------------------------

def test_an_item_the_ledger_lost_is_recorded_with_its_periods_exclusive_end(tmp_path: Path, rules_dir: Path) -> None:
    """I21: Stripe holds September's minimum as revision 1 (30.00) and revision 2 (10.00); the ledger lost
    both. An item's `period.end` is the period's last second (Oct 1 00:00 - 1 s = Sep 30 23:59:59 UTC,
    as the biller sends it), and the ledger's `period_end` is exclusive like rated_usage's: revision 2,
    recorded from Stripe's item, ends 2026-10-01 (Sep 30 23:59:59 + 1 s), as revision 1 planned from
    the rating does, not 2026-09-30."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))
        _by_hand(client, cus, 3000, SEPTEMBER, 1)
        _by_hand(client, cus, 1000, SEPTEMBER, 2)
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(hours=1))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.calls, run.needs_operator) == (0, 0)
        assert ledger(con).select("revision", "period_start", "period_end", "resolved_by").rows() == [
            (1, SEPTEMBER, OCT1.date(), "listing"), (2, SEPTEMBER, OCT1.date(), "listing")]


@pytest.mark.parametrize("customer_id", [None, ""])
def test_an_item_naming_no_customer_of_ours_is_not_recorded(tmp_path: Path, rules_dir: Path,
                                                            customer_id: str | None) -> None:
    """I19: an item at Stripe with our metadata scheme (charge, period start, revision 2, a key) but no
    `metering_customer_id` (absent, or empty) names no charge of ours: it is not recorded (no ledger
    row, for no customer or for customer ""), and September's 40.00 minimum is billed as revision 1,
    one call: Stripe then holds the stranger's 10.00 and our 40.00."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))
        start = int(SEP1.timestamp())
        metadata = {"metering_item": item_key("acme", SEPTEMBER, "pro", "2026-01", "minimum spend", 2),
                    "metering_period_start": SEPTEMBER.isoformat(), "metering_charge": "pro|2026-01|minimum spend",
                    "metering_revision": "2"}
        if customer_id is not None:
            metadata["metering_customer_id"] = customer_id
        client.v1.invoice_items.create({"customer": cus, "amount": 1000, "currency": "usd",
                                        "period": {"start": start, "end": int(OCT1.timestamp()) - 1},
                                        "metadata": metadata})
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(hours=1))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.calls, run.new_revisions) == (1, 1)
        assert ledger(con).select("customer_id", "revision", "amount_minor").rows() == [("acme", 1, 4000)]
        assert sorted(a for a, _, _ in items_at_stripe(client, cus)) == [1000, 4000]


# -- retry.py: the token bucket, the default policy, the outcome's details ------------------------------

class _Clock:
    """A fake monotonic clock: `sleep(s)` moves it on by s seconds; `during_first_sleep` runs once, in
    the first sleep (another caller of the limiter taking a token meanwhile)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.during_first_sleep = None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.during_first_sleep is not None:
            hook, self.during_first_sleep = self.during_first_sleep, None
            hook()


def test_a_partly_refilled_bucket_waits_only_for_the_missing_part_of_a_token() -> None:
    """R04: 10 calls/s, burst 1. The first call at t = 0 takes the token; at t = 0.05 s the bucket has
    refilled 0.05 x 10 = 0.5 token, so the next call waits (1 - 0.5) / 10 = 0.05 s, not a whole
    token's 0.1 s."""
    t = _Clock()
    limiter = RateLimiter(10, burst=1, clock=t.clock, sleep=t.sleep)
    assert limiter.acquire() == 0.0
    t.now = 0.05
    assert limiter.acquire() == pytest.approx(0.05)
    assert t.sleeps == [pytest.approx(0.05)]


def test_the_seconds_waited_add_up_when_another_caller_takes_the_token_first() -> None:
    """R07: 1 call/s, burst 1. A takes the token at t = 0; B finds none and sleeps 1 s, during which C
    (another thread) takes the refilled token; B finds none again, sleeps 1 s more and takes the next at
    t = 2: B waited 1 + 1 = 2 s (`acquire` returns the total, not the last sleep's 1 s); C waited 0."""
    t = _Clock()
    limiter = RateLimiter(1, burst=1, clock=t.clock, sleep=t.sleep)
    waited_by_c: list[float] = []
    assert limiter.acquire() == 0.0                                     # A
    t.during_first_sleep = lambda: waited_by_c.append(limiter.acquire())  # C, at t = 1
    assert limiter.acquire() == pytest.approx(2.0)                      # B
    assert waited_by_c == [0.0] and t.now == pytest.approx(2.0)


class _Highest:
    """An rng whose jitter is always the top of its range: `delay` then returns the full d."""

    @staticmethod
    def uniform(a: float, b: float) -> float:
        return b


def test_the_default_policy_makes_six_attempts_backing_off_from_a_quarter_second() -> None:
    """R08, R09: the default RetryPolicy (max_attempts 6, base 0.25 s, doubling): a call whose every
    attempt gets no response makes 6 attempts and sleeps before each of the 5 retries d = 0.25 x 2^(n-1)
    = 0.25, 0.5, 1, 2, 4 s (jitter at its top, so exactly d); then `unknown` (may have been applied)."""
    slept: list[float] = []
    script = Script(*[stripe.APIConnectionError("reset")] * 7)
    outcome = call_with_retries(script, limiter=RateLimiter(0), policy=RetryPolicy(), sleep=slept.append,
                                rng=_Highest())
    assert (outcome.status, outcome.attempts, script.calls) == ("unknown", 6, 6)
    assert slept == [0.25, 0.5, 1.0, 2.0, 4.0]


def test_the_default_policy_caps_backoff_at_8s_and_retry_after_at_30s() -> None:
    """R10, R11: the default max_delay is 8 s: retry 7's d = 0.25 x 2^6 = 16 s is capped to 8 s (retry
    6's is exactly 0.25 x 2^5 = 8 s). The default max_retry_after is 30 s: a 429 asking for 60 s waits
    30 s (more than the first retry's 0.25 s backoff)."""
    policy = RetryPolicy()
    assert policy.delay(6, _Highest()) == 8.0
    assert policy.delay(7, _Highest()) == 8.0
    slept: list[float] = []
    limited = _error(stripe.RateLimitError, 429, {"Retry-After": "60"})
    call_with_retries(Script(limited, {"ok": 1}), limiter=RateLimiter(0), policy=policy, sleep=slept.append,
                      rng=_Highest())
    assert slept == [30.0]


def test_a_call_out_of_attempts_that_were_not_all_429s_is_unknown() -> None:
    """R35: every attempt answered 400 with `Stripe-Should-Retry: true` (Stripe asks for a retry): the 4
    attempts run out. Only a call whose every attempt was a 429 ends `failed` ("nothing recorded");
    this one's last status is 400, not 429: `unknown`, for Stripe's state to settle."""
    script = Script(*[_error(stripe.InvalidRequestError, 400, {"Stripe-Should-Retry": "true"})] * 4)
    outcome = run(script)
    assert (outcome.status, outcome.attempts, outcome.http_status, script.calls) == ("unknown", 4, 400, 4)


def test_a_retry_after_that_is_not_a_number_leaves_the_backoff() -> None:
    """R39: a Retry-After that is not a number of seconds (an HTTP date) is ignored: the retry waits its
    backoff (base 1 s: d = 1, at the jitter's top 1.0 s) and the call goes on to its 200."""
    slept: list[float] = []
    limited = _error(stripe.RateLimitError, 429, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"})
    outcome = call_with_retries(Script(limited, {"ok": 1}), limiter=RateLimiter(0),
                                policy=RetryPolicy(max_attempts=2, base_delay=1.0), sleep=slept.append,
                                rng=_Highest())
    assert (outcome.status, outcome.attempts, slept) == ("acknowledged", 2, [1.0])


def test_a_call_out_of_attempts_keeps_the_last_errors_type() -> None:
    """R40: four 409s of type idempotency_error (another request under the key still running) use up
    the 4 attempts: `unknown` (409: may apply), and error_type is the last error's, idempotency_error."""
    in_use = [stripe.IdempotencyError("another in-progress request", None, http_status=409,
                                      code="idempotency_key_in_use",
                                      json_body={"error": {"type": "idempotency_error"}}) for _ in range(4)]
    outcome = run(Script(*in_use))
    assert (outcome.status, outcome.attempts, outcome.error_type) == ("unknown", 4, "idempotency_error")


def test_stripe_should_retry_is_read_whatever_its_case() -> None:
    """R42: `Stripe-Should-Retry: FALSE` on a 500 is a "false": no retry, `unknown` after 1 attempt
    (retried, it would take 4)."""
    script = Script(*[_error(stripe.APIError, 500, {"Stripe-Should-Retry": "FALSE"})] * 4)
    outcome = run(script)
    assert (outcome.status, outcome.attempts, script.calls) == ("unknown", 1, 1)


def test_an_error_is_described_by_its_class_status_code_and_message_cut_at_500() -> None:
    """R17, R19 (and R18): a refused call's error is "<class>: <status>: <code>: <message>", redacted and cut at
    500 characters: InvalidRequestError, 400, resource_missing and a 600-character message give the first
    500 characters of "InvalidRequestError: 400: resource_missing: xxx...x"."""
    refused = stripe.InvalidRequestError("x" * 600, None, http_status=400, code="resource_missing")
    outcome = run(Script(refused))
    expected = ("InvalidRequestError: 400: resource_missing: " + "x" * 600)[:500]
    assert (outcome.status, outcome.error, outcome.http_status) == ("failed", expected, 400)
    assert len(outcome.error) == 500


# -- push.py ------------------------------------------------------------------------------------------

def test_a_late_windows_wait_names_the_attempt_and_when_a_push_decides(world: World) -> None:
    """P43: acme's tokens on Oct 17 (4), its one attempt throttled at T0 (`pending`); a killed push
    committed it `sent` at T1 - 1 min = Nov 20 23:59:00. At T1 = Nov 21 00:00 the window is late (limit
    Nov 21 00:00 - 35 d + 1 h = Oct 17 01:00) and its attempt is 1 min old, under the 15 min summary
    lag: the row stays `unknown`, and says when a push decides: the attempt's time + the lag =
    Nov 20 23:59:00 + 15 min = Nov 21 00:14:00 (not now + the lag, Nov 21 00:15:00). Stripe's summary
    for the window is empty: it holds "0"."""
    oct17 = dt.date(2026, 10, 17)
    world.add_events([("acme", "tokens", day_start(oct17) + dt.timedelta(hours=3), "4", {"model": "small"})])
    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=1)
    assert world.pusher(retry=replace(FAST_RETRY, max_attempts=1)).push(oct17, oct17).pending == 1
    world.sandbox.clear_faults()
    t1 = dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc)
    push_ledger.mark_sent(world.con, [world.ledger()["identifier"][0]], t1 - dt.timedelta(minutes=1))
    world.sandbox.set_now(int(t1.timestamp()))
    assert world.pusher(now=t1).push(oct17, oct17).unknown == 1
    [row] = world.ledger().rows(named=True)
    assert row["status"] == "unknown"
    assert row["last_error"] == (
        f"Stripe's summary holds 0, ours {row['value']}, but it may not show the attempt of 2026-11-20 23:59:00 "
        f"UTC yet (summaries lag up to 0:15:00): a push after 2026-11-21 00:14:00 UTC decides")


def test_a_stale_last_window_with_no_event_at_stripe_says_so(world: World) -> None:
    """P70: acme's seats on Nov 18 (3), its call dropped at T0 (`unknown`). 21 h later the key is stale
    (first tried more than 20 h ago); Stripe's summary for the window is empty. On a `last` meter that
    is "no event" (not a 0 Stripe holds): revision 1 is superseded with that said, and the value resent
    as revision 2, acknowledged."""
    world.add_events([("acme", "seats", day_start(NOV18) + dt.timedelta(hours=3), "3", {})])
    world.sandbox.inject_fault("drop", path="/v1/billing/meter_events", method="POST", count=1)
    assert world.pusher(retry=replace(FAST_RETRY, max_attempts=1)).push(NOV18, NOV18).unknown == 1
    world.sandbox.clear_faults()
    later = NOW + dt.timedelta(hours=21)
    world.sandbox.set_now(int(later.timestamp()))
    report = world.pusher(now=later).push(NOV18, NOV18)
    assert (report.summary_checks, report.acknowledged, report.new_revisions) == (1, 1, 1)
    first, second = world.ledger().sort("revision").rows(named=True)
    assert (first["status"], second["status"]) == ("superseded", "acknowledged")
    assert first["last_error"] == (f"Stripe's summary holds no event, ours {first['value']}: "
                                   f"key older than 20:00:00: resent as a new revision")


def test_a_pushers_bucket_holds_a_seconds_worth_of_calls() -> None:
    """P14: at 20 calls/s the push's token bucket holds int(20) = 20 tokens: 20 calls go at once (0 s
    waited each), not one. Under 1 call/s it still holds 1 (max(1, int(0.5) or 1))."""
    assert Pusher(None, None, {}, PushConfig(rate=20)).limiter.burst == 20.0
    assert Pusher(None, None, {}, PushConfig(rate=0.5)).limiter.burst == 1.0
    limiter = Pusher(None, None, {}, PushConfig(rate=20)).limiter
    assert [limiter.acquire() for _ in range(20)] == [0.0] * 20


def test_a_push_setting_that_is_not_a_number_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """P56: STRIPE_PUSH_CONCURRENCY=eight is refused, naming the variable and the value."""
    monkeypatch.setenv("STRIPE_PUSH_CONCURRENCY", "eight")
    with pytest.raises(BadInputError) as refused:
        push_config_from_env()
    assert str(refused.value) == "environment variable STRIPE_PUSH_CONCURRENCY: 'eight' is not a number"


def test_an_override_of_none_leaves_the_environments_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """P55: an override given as None (a CLI option left out) does not replace the environment's value:
    STRIPE_PUSH_RATE=5 with rate=None gives 5.0; concurrency=3 given wins over the environment's 2."""
    monkeypatch.delenv("METERING_STRIPE_SETTLE_SECONDS", raising=False)
    monkeypatch.setenv("STRIPE_PUSH_RATE", "5")
    monkeypatch.setenv("STRIPE_PUSH_CONCURRENCY", "2")
    config = push_config_from_env(rate=None, concurrency=3, window_kind=None)
    assert (config.rate, config.concurrency, config.window_kind) == (5.0, 3, "day")


def _ticking(start: dt.datetime):
    """A "now" that moves on one second at each reading: rows marked `sent` together share a time."""
    ticks = iter(range(10_000))
    return lambda: start + dt.timedelta(seconds=next(ticks))


def test_a_batch_takes_pairs_until_the_next_would_pass_its_size(world: World) -> None:
    """P07: three customer x meter pairs of one window each (acme tokens, acme seats, globex tokens on
    Nov 18), batch size 2: the first batch takes two pairs (1 + 1 = 2 rows, not more than 2), the third
    pair (2 + 1 = 3 > 2) opens a second batch. Each batch is marked `sent` in one step, at one reading
    of "now": the rows' first attempts fall at 2 distinct times, 2 rows at one of them."""
    world.add_events([("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=1), "3", {"model": "small"}),
                      ("acme", "seats", day_start(NOV18) + dt.timedelta(hours=1), "2", {}),
                      ("globex", "tokens", day_start(NOV18) + dt.timedelta(hours=2), "6", {"model": "small"})])
    pusher = Pusher(world.con, world.client, world.rules.meters,
                    PushConfig(rate=0, retry=FAST_RETRY, batch_size=2, concurrency=1), now=_ticking(NOW),
                    sleep=lambda s: None)
    report = pusher.push(NOV18, NOV18)
    assert report.acknowledged == 3
    per_time = world.ledger().group_by("first_attempt_at").len()["len"].sort().to_list()
    assert per_time == [1, 2]


class _CountingLimiter(RateLimiter):
    """No limit (rate 0), but counts the tokens taken."""

    def __init__(self) -> None:
        super().__init__(0)
        self.taken = 0

    def acquire(self) -> float:
        self.taken += 1
        return super().acquire()


def test_a_summary_read_takes_a_token_of_the_push_rate(world: World) -> None:
    """P37, P62: Stripe's rate limit counts every request, summary reads too. acme's tokens on Nov 18 (5),
    the call dropped at T0 (`unknown`); 21 h later the key is stale: one summary read (empty), then
    revision 2 sent (acknowledged): 2 tokens taken from the push's limiter, not 1, and 2 calls in the
    report (the summary read is a call)."""
    world.add_events([("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=3), "5", {"model": "small"})])
    world.sandbox.inject_fault("drop", path="/v1/billing/meter_events", method="POST", count=1)
    assert world.pusher(retry=replace(FAST_RETRY, max_attempts=1)).push(NOV18, NOV18).unknown == 1
    world.sandbox.clear_faults()
    later = NOW + dt.timedelta(hours=21)
    world.sandbox.set_now(int(later.timestamp()))
    pusher = world.pusher(now=later)
    pusher.limiter = _CountingLimiter()
    report = pusher.push(NOV18, NOV18)
    assert (report.summary_checks, report.new_revisions, report.acknowledged, report.calls) == (1, 1, 1, 2)
    assert pusher.limiter.taken == 2


def test_a_late_window_only_ever_throttled_is_called_late_without_waiting_for_the_lag(world: World) -> None:
    """P41: acme's tokens on Oct 17 (4); at T0 = Nov 20 12:00 its one attempt gets a 429: `pending`
    (throttled: nothing recorded), last attempt T0. At T1 = Nov 21 00:00 the window is late (limit
    Oct 17 01:00) and, with a summary lag of 13 h, the summary may not show an attempt of T0 yet (12 h
    ago). Only an attempt that may have been applied (`sent`, `unknown`) waits for it: this one
    cannot have been, so revision 1 is superseded at once and the 4 gets a `late` revision 2;
    nothing is sent."""
    oct17 = dt.date(2026, 10, 17)
    world.add_events([("acme", "tokens", day_start(oct17) + dt.timedelta(hours=3), "4", {"model": "small"})])
    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=1)
    assert world.pusher(retry=replace(FAST_RETRY, max_attempts=1)).push(oct17, oct17).pending == 1
    world.sandbox.clear_faults()
    sent_before = len(world.meter_event_requests())
    t1 = dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc)
    world.sandbox.set_now(int(t1.timestamp()))
    report = world.pusher(now=t1, summary_lag=dt.timedelta(hours=13)).push(oct17, oct17)
    assert (report.summary_checks, report.late, report.unknown, report.new_revisions) == (1, 1, 0, 1)
    assert world.ledger().sort("revision").select("revision", "status").rows() == [(1, "superseded"), (2, "late")]
    assert len(world.meter_event_requests()) == sent_before


def test_a_held_period_is_named_once_however_many_of_its_windows_wait(world: World, tmp_path: Path) -> None:
    """P60: acme is pushed 7 seats (`last`) on Nov 17,
    then re-mapped to a duplicate Stripe customer; it has 7 seats on Nov 18 too. Pushing Nov 17..18,
    both November windows wait (the old customer bills the period's newest event, 7): moved 2, and one
    message for the period, not one per window, naming the old customer's value as "7" (the
    warehouse's 7.000000000000 normalized)."""
    nov17 = dt.date(2026, 11, 17)
    world.add_events([("acme", "seats", day_start(nov17) + dt.timedelta(hours=9), "7", {})])
    assert world.pusher().push(nov17, nov17).acknowledged == 1
    old, new = world.remap_to_a_duplicate(tmp_path)
    world.add_events([("acme", "seats", day_start(NOV18) + dt.timedelta(hours=9), "7", {})])
    report = world.pusher().push(nov17, NOV18)
    assert (report.moved, report.acknowledged, report.new_revisions) == (2, 0, 0)
    assert report.errors == [
        f"acme seats its billing period 2026-11-01..2026-12-01 (its newest window there: 2026-11-17 00:00): "
        f"Stripe customer {old} holds 7 for it, and acme is now mapped to Stripe customer {new}: not pushed "
        f"there, or both would bill it. Fix the map (metadata[customer_id] on the Stripe customers, then sync), "
        f"or send {old} a meter event of 0 for the newest window of the period (Stripe bills its newest event), "
        f"then push again"]


def test_a_window_held_by_two_previous_customers_counts_once_as_moved(world: World, tmp_path: Path) -> None:
    """P59: acme's tokens on Nov 17 (1500) are pushed to its Stripe customer A. A sync maps acme to a
    duplicate B; the operator zeroes the window at A, so the next push sends it to B (revision 2). By
    mistake the operator then sends A a 5 for the window, and a later sync maps acme to a third Stripe
    customer C. Both A (5) and B (1500) now hold the window: it is held (not sent to C) with two
    messages, one per previous customer, but it is one window: moved 1, not 2."""
    from metering.stripe.keys import event_name

    nov17 = dt.date(2026, 11, 17)
    world.add_events([("acme", "tokens", day_start(nov17) + dt.timedelta(hours=2), "1500", {"model": "small"})])
    assert world.pusher().push(nov17, nov17).acknowledged == 1
    a, b = world.remap_to_a_duplicate(tmp_path)

    def to_a(value: str, identifier: str, hour: int) -> None:
        world.client.v1.billing.meter_events.create({
            "event_name": event_name("tokens"), "payload": {"stripe_customer_id": a, "value": value},
            "identifier": identifier, "timestamp": int((day_start(nov17) + dt.timedelta(hours=hour)).timestamp())})

    to_a("0", "operator-zeroes-a", 12)
    assert world.pusher().push(nov17, nov17).acknowledged == 1          # revision 2, to B
    to_a("5", "operator-mistake-a", 13)
    _, c = world.remap_to_a_duplicate(tmp_path)
    assert len({a, b, c}) == 3
    report = world.pusher().push(nov17, nov17)
    assert (report.moved, report.acknowledged, report.new_revisions, report.needs_operator) == (1, 0, 0, 1)
    assert len(report.errors) == 2
    assert sorted(e.split(" holds ")[0] for e in report.errors) == sorted(
        f"acme tokens window 2026-11-17 00:00: Stripe customer {x}" for x in (a, b))


def test_unmapped_and_unlisted_windows_are_counted_apart(world: World) -> None:
    """P22: globex is listed but not synced (unmapped: a sync would map it), stranger is not listed
    (unlisted). globex has one window (api_calls, Nov 17), stranger two (api_calls, Nov 17 and Nov 18):
    unmapped 1, unlisted 2, and only the unmapped window needs an operator."""
    nov17 = dt.date(2026, 11, 17)
    world.con.execute("DELETE FROM stripe_customer_map WHERE customer_id = 'globex'")
    world.add_events([("stranger", "api_calls", day_start(nov17) + dt.timedelta(hours=5), None, {"region": "us"}),
                      ("stranger", "api_calls", day_start(NOV18) + dt.timedelta(hours=5), None, {"region": "us"}),
                      ("globex", "api_calls", day_start(nov17) + dt.timedelta(hours=6), None, {"region": "us"})])
    report = world.pusher().push(nov17, NOV18)
    assert (report.windows_considered, report.unmapped, report.unlisted, report.needs_operator) == (3, 1, 2, 1)


def test_a_window_starting_exactly_at_stripes_age_limit_is_pushed(world: World) -> None:
    """P26: at Nov 20 23:00 the oldest window Stripe takes (35 days, with the 1 h margin) starts at
    Nov 20 23:00 - 35 d + 1 h = Oct 17 00:00. acme's tokens window of Oct 17 starts exactly there: not
    older than the limit, so it is pushed (acknowledged), not late."""
    oct17 = dt.date(2026, 10, 17)
    now = dt.datetime(2026, 11, 20, 23, tzinfo=dt.timezone.utc)
    world.add_events([("acme", "tokens", day_start(oct17) + dt.timedelta(hours=3), "4", {"model": "small"})])
    world.sandbox.set_now(int(now.timestamp()))
    report = world.pusher(now=now).push(oct17, oct17)
    assert (report.acknowledged, report.late) == (1, 0)


def test_a_finalized_period_covers_its_first_window_and_not_the_next_periods_first(
        tmp_path: Path, rules_dir: Path) -> None:
    """P23, P24: acme (calendar months) on a test clock from Oct 1; one API call on Oct 1 at 01:00 and
    one on Nov 1 at 01:00. With the clock at Nov 1 02:00 October's invoice [Oct 1, Nov 1) is finalized
    (past the 1 h grace). Oct 1's window starts exactly at the period's start: covered, `late`. Nov 1's
    starts exactly at its end, which is not in the period: pushed (acknowledged; it is due: Nov 1 00:00
    <= Nov 1 02:00 + 5 min - 60 s)."""
    nov1 = dt.date(2026, 11, 1)
    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        world = World(con, sb, client, rules, report)
        world.add_events([("acme", "api_calls", day_start(OCT1.date()) + dt.timedelta(hours=1), None, {"region": "us"}),
                          ("acme", "api_calls", day_start(nov1) + dt.timedelta(hours=1), None, {"region": "us"})])
        sb.advance_clock(clock.id, int(dt.datetime(2026, 11, 1, 2, tzinfo=dt.timezone.utc).timestamp()))
        pushed = Pusher(con, client, rules.meters, PushConfig(rate=0, retry=FAST_RETRY),
                        sleep=lambda s: None).push(OCT1.date(), nov1)
        assert (pushed.late, pushed.acknowledged, pushed.not_yet_due) == (1, 1, 0)
        assert world.ledger().select("event_date", "status").rows() == [(OCT1.date(), "late"), (nov1, "acknowledged")]


def test_a_pusher_used_again_starts_with_no_refused_identifiers_of_its_last_push(world: World) -> None:
    """P58: the identifiers Stripe refused as duplicates are settled by its summary in the same push;
    a Pusher used for a second push does not carry them over. acme, 5 tokens on Nov 18: run 1's response
    is lost (`unknown`). 25 h later on Stripe's side (key forgotten, identifier kept), run 2 (pusher P)
    is refused "already exists with identifier" and the summary read to settle it answers 500: the run
    raises, the row stays `unknown`. Run 3 on the same P: its only attempt is throttled (429), which
    says nothing of the earlier ones, so the row stays `unknown` (last status 429) and no summary is read
    in this push (0 checks), as with a fresh Pusher: the identifier refused in run 2 is not this push's
    (carried over, it would be settled here: acknowledged from the summary's 5, 1 check)."""
    world.add_events([("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=3), "5", {"model": "small"})])
    world.sandbox.inject_fault("lost_response", path="/v1/billing/meter_events", method="POST", count=1)
    one_attempt = replace(FAST_RETRY, max_attempts=1)
    assert world.pusher(retry=one_attempt).push(NOV18, NOV18).unknown == 1
    world.sandbox.configure(identifier_ttl=72 * 3600)
    world.sandbox.set_now(int((NOW + dt.timedelta(hours=25)).timestamp()))
    world.sandbox.inject_fault("server_error", path="/v1/billing/meters/*/event_summaries", method="GET", count=1)
    pusher = world.pusher(retry=one_attempt)
    with pytest.raises(stripe.StripeError):
        pusher.push(NOV18, NOV18)
    assert world.ledger().select("status", "last_http_status").rows() == [("unknown", 400)]

    world.sandbox.clear_faults()
    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=1)
    third = pusher.push(NOV18, NOV18)
    assert (third.summary_checks, third.unknown, third.rate_limited) == (0, 1, 1)
    assert world.ledger().select("status", "last_http_status").rows() == [("unknown", 429)]
