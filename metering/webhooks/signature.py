"""Verify Stripe's `Stripe-Signature` header over the exact raw request bytes.

Stripe signs `"{t}.{raw body}"` with HMAC-SHA256 keyed by the endpoint secret and sends
`t=<unix>,v1=<hex>[,v1=<hex>...][,v0=<hex>]`. We accept a request when any `v1` value matches the
HMAC under any configured secret (several secrets during rotation). `v0` (and any other scheme) is
ignored. The timestamp must lie within `tolerance` seconds of now in *both* directions: the stripe
SDK's `construct_event` only rejects old timestamps, so we do not use it.

Nothing here parses the body: verification happens before any decoding.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

_HEX64 = re.compile(r"[0-9a-f]{64}")
_TIMESTAMP = re.compile(r"0|[1-9][0-9]{0,11}")


# not frozen: raising sets `__traceback__` on the exception (contextlib's exit does), which a frozen
# dataclass refuses, turning a 400 into a FrozenInstanceError (a 500)
@dataclass(eq=False)
class Rejected(Exception):
    """A delivery we refuse. `reason` is a short machine-readable code; `status` the HTTP 4xx."""

    status: int
    reason: str

    def __str__(self) -> str:
        return f"{self.status} {self.reason}"


@dataclass(frozen=True)
class SignatureHeader:
    timestamp: int
    v1: tuple[str, ...]


def parse_header(header: str | None) -> SignatureHeader:
    """Parse `t=...,v1=...`; exactly one integer `t` and at least one well-formed `v1` are required."""
    if not header:
        raise Rejected(400, "missing_signature_header")
    timestamps: list[str] = []
    v1: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            timestamps.append(value.strip())
        elif key == "v1":
            value = value.strip()
            if _HEX64.fullmatch(value):
                v1.append(value)
    # a Unix time in canonical digits: 4,300 digits and more made int() raise (a 500), and leading
    # zeros let another header text verify against the same signed payload
    if len(timestamps) != 1 or not _TIMESTAMP.fullmatch(timestamps[0]):
        raise Rejected(400, "malformed_signature_header")
    if not v1:
        raise Rejected(400, "no_v1_signature")
    return SignatureHeader(int(timestamps[0]), tuple(v1))


def expected_signature(body: bytes, timestamp: int, secret: bytes) -> str:
    """The hex HMAC-SHA256 Stripe computes over `"{t}.{body}"`."""
    return hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify(
    body: bytes,
    header: str | None,
    secrets: Sequence[bytes],
    *,
    now: float,
    tolerance: float,
) -> SignatureHeader:
    """Return the parsed header when the signature is valid and fresh; raise `Rejected` otherwise."""
    if not secrets:
        raise ValueError("no webhook secret configured")
    parsed = parse_header(header)
    matched = False
    for secret in secrets:
        expected = expected_signature(body, parsed.timestamp, secret)
        # compare against every candidate without short-circuiting on the first mismatch
        for candidate in parsed.v1:
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise Rejected(400, "signature_mismatch")
    if now - parsed.timestamp > tolerance:
        raise Rejected(400, "timestamp_too_old")
    if parsed.timestamp - now > tolerance:
        raise Rejected(400, "timestamp_in_future")
    return parsed


def parse_secrets(value: str | None) -> tuple[bytes, ...]:
    """`STRIPE_WEBHOOK_SECRET` as a tuple of keys: comma-separated, blanks dropped, order kept."""
    return tuple(part.strip().encode("utf-8") for part in (value or "").split(",") if part.strip())
