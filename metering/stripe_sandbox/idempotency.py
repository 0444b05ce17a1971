"""Idempotency keys as Stripe keeps them.

- The first response of a request that started executing is stored (success or failure, incl. 500s
  raised while executing) and replayed for the same key with header ``Idempotent-Replayed: true``.
- Same key with other parameters (or another method/path): 400 ``idempotency_error``.
- Same key while the first request is still executing: 409 ``idempotency_key_in_use``.
- Keys expire 24 hours after first use, by the sandbox clock.
- Results of requests that failed parameter validation are not stored (``StripeAPIError.store``).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from .apierrors import StripeAPIError


@dataclass
class Stored:
    fingerprint: str
    created: int
    in_flight: bool = True
    status: int = 0
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def fingerprint(method: str, path: str, params: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps([method, path, params], sort_keys=True).encode()).hexdigest()


class IdempotencyStore:
    def __init__(self, ttl: int) -> None:
        self.ttl = ttl
        self.lock = threading.Lock()
        self.entries: dict[tuple[str, str], Stored] = {}

    def begin(self, account: str, key: str, fp: str, now: int) -> Stored | None:
        """Claim ``key``: returns a stored response to replay, None to execute, or raises."""
        if len(key) > 255:
            raise StripeAPIError(400, "Idempotency keys may be at most 255 characters long.", type="idempotency_error", store=False)
        with self.lock:
            entry = self.entries.get((account, key))
            if entry is not None and entry.created <= now - self.ttl and not entry.in_flight:
                entry = None
            if entry is None:
                self.entries[(account, key)] = Stored(fp, now)
                return None
            if entry.in_flight:
                raise StripeAPIError(
                    409,
                    "There is currently another in-progress request using this Idempotent Key (that probably means "
                    "you submitted twice, and the other request is still going through): "
                    f"{key}. Please try again later.",
                    type="idempotency_error",
                    code="idempotency_key_in_use",
                    store=False,
                )
            if entry.fingerprint != fp:
                raise StripeAPIError(
                    400,
                    "Keys for idempotent requests can only be used with the same parameters they were first used with. "
                    f"Try using a key other than '{key}' if you meant to execute a different request.",
                    type="idempotency_error",
                    store=False,
                )
            return entry

    def finish(self, account: str, key: str, status: int, body: bytes, headers: dict[str, str]) -> None:
        with self.lock:
            entry = self.entries.get((account, key))
            if entry is not None:
                entry.in_flight = False
                entry.status, entry.body, entry.headers = status, body, dict(headers)

    def abandon(self, account: str, key: str) -> None:
        """The request did not execute (validation error, injected fault): forget the claim."""
        with self.lock:
            self.entries.pop((account, key), None)

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()
