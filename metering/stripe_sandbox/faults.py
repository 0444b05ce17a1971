"""Faults on demand, for reliability tests.

A rule: ``{"kind", "method", "path", "count", "rate", "delay", "reason", "should_retry"}``.

- ``kind``: ``rate_limit`` (429 + ``Stripe-Rate-Limited-Reason``), ``server_error`` (500, not
  applied), ``slow`` (wait ``delay`` seconds, or until :meth:`Faults.release`, then answer normally), ``drop`` (close the connection
  without applying or answering), ``lost_response`` (apply the request, store its idempotent result,
  then close the connection without answering).
- ``method`` (default any) and ``path`` (an ``fnmatch`` pattern, default ``*``) select requests.
- ``count``: fire for the next N matching requests, then retire; ``rate``: fire with this
  probability (seeded); neither: every matching request.
- ``should_retry``: when set, the error response carries ``Stripe-Should-Retry: true|false``.
"""

from __future__ import annotations

import fnmatch
import random
import threading
from dataclasses import asdict, dataclass
from typing import Any

KINDS = ("rate_limit", "server_error", "slow", "drop", "lost_response")


@dataclass
class FaultRule:
    kind: str
    method: str | None = None
    path: str = "*"
    count: int | None = None
    rate: float | None = None
    delay: float = 1.0
    reason: str = "global-rate"
    should_retry: bool | None = None
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        return (self.method is None or self.method.upper() == method) and fnmatch.fnmatchcase(path, self.path)


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "kind": (str,), "method": (str,), "path": (str,), "count": (int,), "rate": (int, float),
    "delay": (int, float), "reason": (str,), "should_retry": (bool,),
}


class Faults:
    def __init__(self, seed: int | None = None) -> None:
        self.lock = threading.Lock()
        self.rules: list[FaultRule] = []
        self.random = random.Random(seed)
        self.gate = threading.Event()

    def sleep(self, delay: float) -> None:
        """A slow fault's wait: ``delay`` seconds, cut short by :meth:`release` (for tests that
        need a request held in flight without depending on timing)."""
        with self.lock:
            gate = self.gate
        gate.wait(delay)

    def release(self) -> None:
        """Let every request currently held by a slow fault continue."""
        with self.lock:
            self.gate.set()
            self.gate = threading.Event()

    def add(self, spec: dict[str, Any]) -> FaultRule:
        if spec.get("kind") not in KINDS:
            raise ValueError(f"fault kind must be one of {', '.join(KINDS)}")
        allowed = set(FaultRule.__dataclass_fields__) - {"fired"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        for name, value in spec.items():   # a wrong type failed later, on every request
            kinds = _FIELD_TYPES[name]
            if value is not None and (not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds):
                raise ValueError(f"fault field {name}: {value!r} has the wrong type (expected "
                                 f"{' or '.join(k.__name__ for k in kinds)})")
        rule = FaultRule(**spec)
        if rule.rate is not None and not 0 <= rule.rate <= 1:
            raise ValueError("rate must be between 0 and 1")
        with self.lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self.lock:
            self.rules.clear()

    def pick(self, method: str, path: str) -> FaultRule | None:
        """The first rule that fires for this request (consuming one of its ``count``)."""
        with self.lock:
            for rule in self.rules:
                if not rule.matches(method, path):
                    continue
                if rule.count is not None and rule.fired >= rule.count:
                    continue
                if rule.rate is not None and self.random.random() >= rule.rate:
                    continue
                rule.fired += 1
                return rule
        return None

    def describe(self) -> list[dict[str, Any]]:
        with self.lock:
            return [asdict(r) for r in self.rules]
