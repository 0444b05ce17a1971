"""Deterministic meter-event identifiers and Idempotency-Keys.

Both are derived only from (customer, meter, window kind, window start, revision): the same
revision always travels under the same identifier and key, across retries, crashes and re-runs
(stripe-python would otherwise add a random Idempotency-Key to every POST). A new total for a
window is a new revision, hence a new identifier and key.

Stripe's limits: `identifier` <= 100 characters, `Idempotency-Key` <= 255. When the readable form
would be longer (long customer ids), a SHA-256 of it is used instead, still deterministic.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

IDENTIFIER_MAX = 100
IDEMPOTENCY_KEY_MAX = 255
_KEY_PREFIX = "metering-push:"


def _canonical(customer_id: str, meter: str, window_kind: str, window_start: datetime, revision: int) -> str:
    if window_start.tzinfo is None:
        raise ValueError("window_start must be timezone-aware (UTC)")
    stamp = window_start.astimezone(timezone.utc).strftime("%Y%m%dT%H%MZ")
    return f"{customer_id}|{meter}|{window_kind}|{stamp}|r{revision}"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def meter_event_identifier(
    customer_id: str, meter: str, window_kind: str, window_start: datetime, revision: int
) -> str:
    """The meter event `identifier` (<= 100 chars): readable when it fits, else `h-<sha256>`."""
    text = _canonical(customer_id, meter, window_kind, window_start, revision)
    return text if len(text) <= IDENTIFIER_MAX else f"h-{_digest(text)}"


def idempotency_key(
    customer_id: str, meter: str, window_kind: str, window_start: datetime, revision: int
) -> str:
    """The request `Idempotency-Key` (<= 255 chars), a function of the same five values."""
    text = _KEY_PREFIX + _canonical(customer_id, meter, window_kind, window_start, revision)
    return text if len(text) <= IDEMPOTENCY_KEY_MAX else f"{_KEY_PREFIX}h-{_digest(text)}"


def event_name(meter: str) -> str:
    """The Stripe meter `event_name` for one of our meters (contract: `metering_<meter>`)."""
    name = f"metering_{meter}"
    if len(name) > IDENTIFIER_MAX:
        raise ValueError(f"meter name {meter!r} is too long for a Stripe event_name (100 chars)")
    return name
