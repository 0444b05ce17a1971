"""Cases a hand mutation audit (m25d) of the engine's Stripe client side found untested: the retry
decision table of `metering.stripe.retry` (403, a 409 key-in-use, Retry-After shorter than the backoff,
an IdempotencyError without a body), the token bucket's burst, and `metering.stripe.client`'s bounds,
defaults and secret masking. Each test names the mutant it kills; expected values are worked by hand.
Calls that need Stripe go to the local sandbox over loopback."""

from __future__ import annotations

import pytest
import stripe

from metering.errors import BadInputError
from metering.stripe.client import StripeSettings, checked_retries, checked_timeout, make_client, settings_from_env
from metering.stripe.retry import AuthError, RateLimiter, RetryPolicy, call_with_retries
from metering.stripe_sandbox.testing import running_sandbox
from test_keys_and_retry import Script

FAST = RetryPolicy(max_attempts=4, base_delay=0.0, max_delay=0.0)


def _run(script, policy=FAST, slept=None):
    return call_with_retries(script, limiter=RateLimiter(0), policy=policy,
                             sleep=(slept.append if slept is not None else lambda s: None))


# -- the retry decision table -----------------------------------------------------------------------
def test_a_403_aborts_the_push_like_a_401():
    """Decision table: "401 / 403 -> abort the whole push (AuthenticationError)": a 403 (a restricted
    key without the permission) raises AuthError after one attempt, it is not a `failed` call.
    Kills R3 (`(401, 403)` -> `(401,)`)."""
    script = Script(stripe.PermissionError("The provided key does not have the required permissions", http_status=403))
    with pytest.raises(AuthError):
        _run(script)
    assert script.calls == 1


def test_a_409_key_in_use_of_type_idempotency_error_is_retried():
    """Stripe answers a concurrent same-key request 409 with type idempotency_error (code
    idempotency_key_in_use). The table: "409 (key in use) ... retry" - only a 400 idempotency_error is
    the no-retry `unknown` row. So 409 then success: acknowledged after 2 attempts.
    Kills R4 (`status == 400 and` dropped: the 409 ended the call `unknown`)."""
    in_use = stripe.IdempotencyError("There is currently another in-progress request using this Idempotent Key",
                                     None, http_status=409, code="idempotency_key_in_use",
                                     json_body={"error": {"type": "idempotency_error", "code": "idempotency_key_in_use"}})
    script = Script(in_use, {"ok": 1})
    outcome = _run(script)
    assert (outcome.status, outcome.attempts, script.calls) == ("acknowledged", 2, 2)


def test_an_idempotency_error_without_a_body_is_still_an_idempotency_error():
    """`_error_type`: Stripe gives a key reused with other parameters no `code`, and an IdempotencyError
    whose body carries no `type` is still one: a 400 of it ends `unknown` (error_type idempotency_error)
    after one attempt, not `failed`. Kills R16 (the IdempotencyError fallback dropped: `failed`)."""
    outcome = _run(Script(stripe.IdempotencyError("Keys for idempotent requests can only be used with the same "
                                                  "parameters", None, http_status=400)))
    assert (outcome.status, outcome.attempts, outcome.error_type) == ("unknown", 1, "idempotency_error")


def test_a_retry_after_shorter_than_the_backoff_does_not_shorten_it():
    """`_retry_delay`: the server's Retry-After raises the backoff, never lowers it: base 1 s, first
    retry d = 1 x 2^0 = 1, jittered into [0.5, 1.0]; a Retry-After of 0.1 s leaves it there.
    Kills R13 (Retry-After replacing the backoff: 0.1 s)."""
    slept = []
    policy = RetryPolicy(max_attempts=2, base_delay=1.0, max_delay=8.0, max_retry_after=30.0)
    limited = stripe.RateLimitError("slow down", http_status=429, headers={"Retry-After": "0.1"})
    _run(Script(limited, {"ok": 1}), policy, slept)
    assert len(slept) == 1 and 0.5 <= slept[0] <= 1.0


def test_the_last_known_request_id_is_kept_when_a_later_error_has_none():
    """An error answered without a Request-Id (a proxy's 502) does not erase the one Stripe gave an
    earlier attempt: 500 req_first, then two 502s without an id, attempts (3) run out: `unknown`, request
    id req_first. Kills R11 (`exc.request_id or request_id` -> `exc.request_id`: None)."""
    first = stripe.APIError("An unknown error occurred", http_status=500, headers={"request-id": "req_first"})
    assert first.request_id == "req_first"
    bare = [stripe.APIError("Bad gateway", http_status=502) for _ in range(2)]
    outcome = _run(Script(first, *bare), RetryPolicy(max_attempts=3, base_delay=0.0, max_delay=0.0))
    assert (outcome.status, outcome.attempts, outcome.request_id) == ("unknown", 3, "req_first")


# -- the token bucket -------------------------------------------------------------------------------
class _FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps = 0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        if self.sleeps > 100:
            raise RuntimeError("the limiter never hands out a token")
        self.now += seconds


def test_a_rate_below_one_per_second_still_allows_one_call_at_once():
    """RateLimiter: bursts up to `burst`, default max(1, int(rate)): at 0.5 calls/s the bucket holds one
    token, so the first call goes at once (0 s waited) and the second waits 1 / 0.5 = 2 s.
    Kills R14 (`max(1, int(rate))` -> `int(rate)`: a bucket of 0 tokens never fills)."""
    fake = _FakeTime()
    limiter = RateLimiter(0.5, clock=fake.clock, sleep=fake.sleep)
    assert limiter.acquire() == 0.0
    assert limiter.acquire() == pytest.approx(2.0)


def test_an_idle_bucket_refills_only_up_to_its_burst():
    """A token bucket caps its tokens at `burst`: 10/s, burst 2, idle for 100 s, then 3 calls: two go at
    once, the third waits 1/10 s. Kills R15 (`min(self.burst, ...)` -> `max`: 1000 tokens saved up)."""
    fake = _FakeTime()
    limiter = RateLimiter(10, burst=2, clock=fake.clock, sleep=fake.sleep)
    fake.now = 100.0
    assert [limiter.acquire() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


# -- client settings --------------------------------------------------------------------------------
def test_timeout_bounds_are_above_zero_and_at_most_an_hour():
    """client.py: a timeout is "above 0 and at most 3600": 3600 is accepted, 0 refused, a tiny positive
    accepted. Kills C1 (`0 < value` -> `0 <= value`) and C2 (`<= 3600` -> `< 3600`)."""
    assert checked_timeout("t", 3600.0) == 3600.0
    assert checked_timeout("t", 0.001) == 0.001
    with pytest.raises(BadInputError, match="must be > 0 and at most 3600 seconds, got 0.0"):
        checked_timeout("t", 0.0)


def test_network_retries_bounds_are_zero_to_twenty_inclusive():
    """client.py: STRIPE_MAX_NETWORK_RETRIES is "0-20": both ends accepted, 21 and -1 refused.
    Kills C3 (`0 <= value` -> `0 < value`) and C4 (`<= 20` -> `< 20`)."""
    assert (checked_retries("r", 0), checked_retries("r", 20)) == (0, 20)
    for bad in (-1, 21):
        with pytest.raises(BadInputError, match="must be 0 to 20"):
            checked_retries("r", bad)


def test_the_meter_events_base_defaults_to_the_api_base(monkeypatch):
    """client.py: STRIPE_METER_EVENTS_BASE defaults to "STRIPE_API_BASE when set" (the sandbox serves
    both), so meter events do not go to Stripe's real host. Kills C5 (`or api_base` dropped: None)."""
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_abc")
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:12111")
    monkeypatch.delenv("STRIPE_METER_EVENTS_BASE", raising=False)
    settings = settings_from_env()
    assert (settings.api_base, settings.meter_events_base) == ("http://127.0.0.1:12111", "http://127.0.0.1:12111")


def test_a_restricted_live_key_counts_as_live():
    """Stripe's restricted keys are `rk_live_...` / `rk_test_...`: an rk_live_ key is live like sk_live_.
    Kills C7 (only `sk_live_` counted as live)."""
    assert StripeSettings(api_key="rk_live_abc").is_live
    assert StripeSettings(api_key="sk_live_abc").is_live
    assert not StripeSettings(api_key="rk_test_abc").is_live


def test_a_key_with_printable_non_ascii_characters_is_refused(monkeypatch):
    """client.py: a key with characters "other than printable ASCII" cannot go into an HTTP header:
    refused as bad input. "sk_test_é" is printable but not ASCII. Kills C8 (the `isascii()` check dropped)."""
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_\u00e9")
    with pytest.raises(BadInputError, match="printable ASCII"):
        settings_from_env()


def test_a_400_answer_is_masked_before_the_sdk_reads_it():
    """RedactingRequestsClient masks secrets in "every error response" (status >= 400): the sandbox's 400
    for an unknown parameter echoes its name, here shaped like a secret key; the SDK's exception carries
    [REDACTED], not the key. Kills C6 (`status >= 400` -> `> 400`: a 400 passed through unmasked)."""
    secret_shaped = "sk_test_" + "Z" * 24
    with running_sandbox() as sb:
        client = make_client(StripeSettings(api_key=sb.api_key, api_base=sb.base_url, max_network_retries=0))
        with pytest.raises(stripe.InvalidRequestError) as refused:
            client.v1.customers.create({"name": "A", secret_shaped: "x"})
    assert refused.value.http_status == 400
    assert secret_shaped not in str(refused.value) and "[REDACTED]" in str(refused.value)


def test_an_explicit_retry_count_overrides_the_settings():
    """make_client(settings, max_network_retries=0) sends once although the settings say 2 (pushes
    retry themselves): a single injected 500 reaches the caller as an APIError after one request.
    Kills C9 (`is None` -> `is not None`: the settings' 2 retries used, the call succeeded)."""
    with running_sandbox() as sb:
        client = make_client(StripeSettings(api_key=sb.api_key, api_base=sb.base_url, max_network_retries=2),
                             max_network_retries=0)
        sb.inject_fault("server_error", path="/v1/customers", method="POST", count=1)
        with pytest.raises(stripe.APIError) as failed:
            client.v1.customers.create({"name": "A"})
        assert failed.value.http_status == 500
        assert [e["fault"] for e in sb.requests_log(path="/v1/customers")] == ["server_error"]
