"""Client-side rate limiting, backoff with jitter, and one Stripe call turned into an outcome.

The push calls the SDK with `max_network_retries=0` and retries here instead, so that every retry
is counted, rate-limited and reported, and so that 429s (which the SDK does not retry) are retried
with backoff. The same Idempotency-Key goes with every retry of a call.

Decision table for one attempt:

| what happened | `Stripe-Should-Retry` | action |
| --- | --- | --- |
| 2xx | - | `acknowledged` |
| connection error / timeout (no response) | - | retry; when attempts run out: `unknown` |
| 409 (key in use), 429, >= 500 | absent or `true` | retry; when attempts run out: `unknown`, except `failed` when every attempt was a 429 |
| any status | `false` | no retry: 5xx -> `unknown` (Stripe stored it; outcome unclear); 409 -> `unknown` (another request under the key is still running, and may apply); 429 -> as when attempts run out; else `failed` |
| 401 / 403 | - | abort the whole push (`AuthenticationError`): a configuration problem |
| 400 of type `idempotency_error` | - | no retry: `unknown` (the key was first used with other parameters: Stripe holds that request) |
| other 4xx | - | `failed` (Stripe rejected it: nothing was recorded) |

The final status is decided by every attempt, not only the last: an attempt that ended with no
response, a 409 or a 5xx may have been applied at Stripe (e.g. a response lost after Stripe stored
the event), and a 429 afterwards says nothing about it (Stripe throttles before it looks at the
key). So such a call ends `unknown`, never `failed` ("nothing recorded"), which the push would
otherwise resend as if nothing had happened. A definite refusal (any other 4xx) after such an
attempt stays `failed`: had an earlier attempt been applied, Stripe would have replayed its stored
result under the same key instead.

A 400 of type `idempotency_error` is not such a refusal: the key was first used with other
parameters (another process, or a ledger restored from a snapshot re-planning a revision Stripe
already took with another value), and Stripe keeps that first request, which may have been applied,
under it. Nothing about this request was recorded, but something was under its key: `unknown`, for
the caller to settle from Stripe's state (`CallOutcome.error_type` says why). Retrying gets the
same answer, so it is not retried.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import stripe

from metering.logs import redact


class RateLimiter:
    """A thread-safe token bucket: at most `rate` calls per second, bursts up to `burst`.

    `rate <= 0` disables limiting (the local sandbox has no limit worth respecting).
    """

    def __init__(self, rate: float, burst: int | None = None, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(1, int(rate)))
        self._tokens = self.burst
        self._clock = clock
        self._sleep = sleep
        self._last = clock()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Take one token, sleeping until one is available. Returns the seconds waited."""
        if self.rate <= 0:
            return 0.0
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                self._last = now
                if self._tokens >= 1 - 1e-9:  # tolerate float rounding of the refill
                    self._tokens = max(0.0, self._tokens - 1)
                    return waited
                need = (1 - self._tokens) / self.rate
            self._sleep(need)
            waited += need


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6            # attempts per call within one run (first + retries)
    base_delay: float = 0.25         # seconds; doubles per retry
    max_delay: float = 8.0
    max_retry_after: float = 30.0    # cap on a server's Retry-After

    def delay(self, retry_number: int, rng: random.Random | None = None) -> float:
        """Exponential backoff with "equal jitter": uniform in [d/2, d], d = base * 2^(n-1), capped."""
        d = min(self.base_delay * (2 ** max(0, retry_number - 1)), self.max_delay)
        r = (rng or random).uniform(0.5, 1.0)
        return d * r


@dataclass
class CallOutcome:
    status: str                        # acknowledged | failed | unknown
    attempts: int                      # HTTP attempts made in this run (>= 1)
    error: str | None = None
    request_id: str | None = None
    http_status: int | None = None
    rate_limited: int = 0              # how many attempts got a 429
    error_type: str | None = None      # the last Stripe error's `type` (e.g. idempotency_error)


class AuthError(Exception):
    """Stripe refused the credentials: stop the push, nothing more will succeed."""


def _header(error: stripe.StripeError, name: str) -> str | None:
    headers = error.headers or {}
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None


def _error_type(error: stripe.StripeError) -> str | None:
    """The error's `type` (`invalid_request_error`, `idempotency_error`, ...): Stripe gives a key reused
    with other parameters no `code`."""
    if error.error is not None and getattr(error.error, "type", None):
        return error.error.type
    return "idempotency_error" if isinstance(error, stripe.IdempotencyError) else None


def _describe(error: BaseException) -> str:
    if isinstance(error, stripe.StripeError):
        parts = [type(error).__name__]
        if error.http_status:
            parts.append(str(error.http_status))
        if error.code:
            parts.append(error.code)
        message = getattr(error, "user_message", None) or error._message or ""
        if message:
            parts.append(message)
        return redact(": ".join(parts))[:500]
    return redact(f"{type(error).__name__}: {error}")[:500]


def call_with_retries(
    send: Callable[[], Any],
    *,
    limiter: RateLimiter,
    policy: RetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    rng: random.Random | None = None,
) -> CallOutcome:
    """Run `send()` (one SDK call carrying a fixed Idempotency-Key) until it has an outcome."""
    attempts = 0
    rate_limited = 0
    maybe_applied = False   # an attempt ended with no response, a 409 or a 5xx
    last_error: BaseException | None = None
    last_status: int | None = None
    request_id: str | None = None
    while attempts < policy.max_attempts:
        if attempts:
            sleep(_retry_delay(last_error, attempts, policy, rng))
        limiter.acquire()
        attempts += 1
        try:
            response = send()
        except stripe.APIConnectionError as exc:
            last_error, last_status = exc, None
            maybe_applied = True
            continue
        except stripe.StripeError as exc:
            last_error, last_status = exc, exc.http_status
            request_id = exc.request_id or request_id
            status = exc.http_status or 0
            should_retry = (_header(exc, "stripe-should-retry") or "").lower()
            if status in (401, 403):
                raise AuthError(_describe(exc)) from None
            error_type = _error_type(exc)
            if status == 400 and error_type == "idempotency_error":
                # Stripe holds this key's first request, made with other parameters: it may have been
                # applied, and asking again gets the same answer
                return CallOutcome("unknown", attempts, _describe(exc), request_id, status, rate_limited, error_type)
            if status == 429:
                rate_limited += 1
            if status == 409 or status >= 500:
                maybe_applied = True
            if should_retry == "false":
                final = "unknown" if status >= 500 or status == 409 or (status == 429 and maybe_applied) else "failed"
                return CallOutcome(final, attempts, _describe(exc), request_id, status, rate_limited, error_type)
            if should_retry == "true" or status in (409, 429) or status >= 500:
                continue
            return CallOutcome("failed", attempts, _describe(exc), request_id, status, rate_limited, error_type)
        last_response = getattr(response, "last_response", None)
        rid = getattr(last_response, "request_id", None) if last_response is not None else None
        return CallOutcome("acknowledged", attempts, None, rid, 200, rate_limited)
    assert last_error is not None
    # attempts ran out: `failed` (nothing recorded) only when no attempt may have been applied
    final = "unknown" if maybe_applied or last_status != 429 else "failed"
    last_type = _error_type(last_error) if isinstance(last_error, stripe.StripeError) else None
    return CallOutcome(final, attempts, _describe(last_error), request_id, last_status, rate_limited, last_type)


def _retry_delay(error: BaseException | None, attempts: int, policy: RetryPolicy,
                 rng: random.Random | None) -> float:
    delay = policy.delay(attempts, rng)
    if isinstance(error, stripe.StripeError):
        retry_after = _header(error, "retry-after")
        if retry_after:
            try:
                delay = max(delay, min(float(retry_after), policy.max_retry_after))
            except ValueError:
                pass
    return delay
