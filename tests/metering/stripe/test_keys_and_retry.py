"""Deterministic keys within Stripe's limits; the retry decision table; the rate limiter."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
import stripe
from hypothesis import given
from hypothesis import strategies as st

from metering.stripe.keys import IDEMPOTENCY_KEY_MAX, IDENTIFIER_MAX, event_name, idempotency_key, meter_event_identifier
from metering.stripe.retry import AuthError, RateLimiter, RetryPolicy, call_with_retries

T0 = datetime(2026, 10, 1, tzinfo=timezone.utc)


def test_keys_are_readable_when_short_and_stable() -> None:
    assert meter_event_identifier("cust_1", "api_calls", "day", T0, 1) == "cust_1|api_calls|day|20261001T0000Z|r1"
    assert idempotency_key("cust_1", "api_calls", "day", T0, 1) == "metering-push:cust_1|api_calls|day|20261001T0000Z|r1"
    assert event_name("api_calls") == "metering_api_calls"


@given(
    customer=st.text(min_size=1, max_size=300),
    meter=st.sampled_from(["api_calls", "tokens", "storage_gb", "seats", "active_users"]),
    kind=st.sampled_from(["day", "hour"]),
    hours=st.integers(min_value=0, max_value=24 * 400),
    revision=st.integers(min_value=1, max_value=10_000),
)
def test_keys_fit_stripe_limits_and_depend_only_on_inputs(customer, meter, kind, hours, revision) -> None:
    start = T0 + timedelta(hours=hours)
    ident = meter_event_identifier(customer, meter, kind, start, revision)
    key = idempotency_key(customer, meter, kind, start, revision)
    assert len(ident) <= IDENTIFIER_MAX and len(key) <= IDEMPOTENCY_KEY_MAX
    assert ident == meter_event_identifier(customer, meter, kind, start, revision)
    assert key == idempotency_key(customer, meter, kind, start, revision)
    assert ident != meter_event_identifier(customer, meter, kind, start, revision + 1)
    assert key != idempotency_key(customer, meter, kind, start, revision + 1)


def test_long_customer_ids_are_hashed() -> None:
    ident = meter_event_identifier("x" * 200, "tokens", "day", T0, 3)
    assert ident.startswith("h-") and len(ident) == 66


def _error(cls, status, headers=None, code=None):
    if cls is stripe.InvalidRequestError:
        return cls("boom", None, http_status=status, headers=headers or {}, code=code)
    return cls("boom", http_status=status, headers=headers or {}, code=code)


class Script:
    """A `send` callable that plays a fixed list of results (exceptions raised, values returned)."""

    def __init__(self, *results):
        self.results = list(results)
        self.calls = 0

    def __call__(self):
        self.calls += 1
        result = self.results.pop(0)
        if isinstance(result, BaseException):
            raise result
        return result


FAST = RetryPolicy(max_attempts=4, base_delay=0.0, max_delay=0.0)
NOLIMIT = RateLimiter(0)


def run(script, policy=FAST):
    return call_with_retries(script, limiter=NOLIMIT, policy=policy, sleep=lambda s: None)


@pytest.mark.parametrize(
    "results, status, attempts",
    [
        ([{"ok": 1}], "acknowledged", 1),
        ([stripe.APIConnectionError("reset"), {"ok": 1}], "acknowledged", 2),
        ([_error(stripe.RateLimitError, 429), _error(stripe.APIError, 500), {"ok": 1}], "acknowledged", 3),
        ([_error(stripe.APIError, 409, code="idempotency_key_in_use"), {"ok": 1}], "acknowledged", 2),
        ([stripe.APIConnectionError("reset")] * 4, "unknown", 4),
        ([_error(stripe.APIError, 500, {"Stripe-Should-Retry": "false"})], "unknown", 1),
        ([_error(stripe.InvalidRequestError, 400)], "failed", 1),
        ([_error(stripe.InvalidRequestError, 400, {"Stripe-Should-Retry": "true"}), {"ok": 1}], "acknowledged", 2),
        ([_error(stripe.RateLimitError, 429)] * 4, "failed", 4),
        # an earlier attempt may have been applied (no response, 409, 5xx): a 429 ending does not
        # mean "nothing recorded"
        ([stripe.APIConnectionError("reset")] + [_error(stripe.RateLimitError, 429)] * 3, "unknown", 4),
        ([_error(stripe.APIError, 500)] + [_error(stripe.RateLimitError, 429)] * 3, "unknown", 4),
        ([_error(stripe.APIError, 409, code="idempotency_key_in_use")] + [_error(stripe.RateLimitError, 429)] * 3,
         "unknown", 4),
        ([stripe.APIConnectionError("reset"), _error(stripe.RateLimitError, 429, {"Stripe-Should-Retry": "false"})],
         "unknown", 2),
        ([_error(stripe.RateLimitError, 429, {"Stripe-Should-Retry": "false"})], "failed", 1),
        # another request under the key is still running and may apply: not "nothing recorded" (audit:
        # `failed`, so --retry-failed sent a new revision beside it)
        ([_error(stripe.IdempotencyError, 409, {"Stripe-Should-Retry": "false"}, code="idempotency_key_in_use")],
         "unknown", 1),
        # a definite refusal (4xx other than 409 / 429) after a lost attempt: Stripe would have replayed
        # the stored result of an applied attempt under the same key, so nothing was recorded
        ([stripe.APIConnectionError("reset"), _error(stripe.InvalidRequestError, 400)], "failed", 2),
        # the key was first used with other parameters: Stripe holds that request, so something may
        # have been recorded under it (not "nothing recorded"), and asking again gets the same answer
        ([stripe.IdempotencyError("Keys for idempotent requests can only be used with the same parameters", None,
                                  http_status=400, json_body={"error": {"type": "idempotency_error"}})], "unknown", 1),
    ],
)
def test_retry_decision_table(results, status, attempts) -> None:
    script = Script(*results)
    outcome = run(script)
    assert (outcome.status, outcome.attempts, script.calls) == (status, attempts, attempts)


def test_authentication_error_aborts() -> None:
    with pytest.raises(AuthError):
        run(Script(_error(stripe.AuthenticationError, 401)))


def test_retry_after_is_honoured_and_capped() -> None:
    slept = []
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.01, max_retry_after=2.0)
    call_with_retries(Script(_error(stripe.RateLimitError, 429, {"Retry-After": "1"}),
                             _error(stripe.RateLimitError, 429, {"Retry-After": "60"}), {"ok": 1}),
                      limiter=NOLIMIT, policy=policy, sleep=slept.append)
    assert slept == [1.0, 2.0]


@given(n=st.integers(min_value=1, max_value=12), seed=st.integers(0, 2**32))
def test_backoff_is_exponential_with_bounded_jitter(n, seed) -> None:
    policy = RetryPolicy(base_delay=0.25, max_delay=8.0)
    d = policy.delay(n, random.Random(seed))
    full = min(0.25 * 2 ** (n - 1), 8.0)
    assert full / 2 <= d <= full


def test_rate_limiter_spaces_calls() -> None:
    now = [0.0]
    limiter = RateLimiter(10, burst=1, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    for _ in range(11):
        limiter.acquire()
    assert now[0] == pytest.approx(1.0)
