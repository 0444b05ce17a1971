"""Reconciliation settings: tolerance per currency, Stripe settle delay, blocking-check threshold.

Everything is explicit and printed in the report. Defaults can be overridden by environment:

- `METERING_RECON_TOLERANCE`: per-currency tolerance in minor units *per invoice line*, e.g.
  `usd=1,jpy=1` (default: 1 minor unit per line for every currency).
- `METERING_STRIPE_SETTLE_SECONDS`: how long after the last acknowledged push of a window in a
  period Stripe's meter summary of that period is trusted (default 900 s; Stripe documents summaries
  as eventually consistent).
- `METERING_STRIPE_INVOICE_GRACE_SECONDS`: how long after a period's end Stripe may still create
  its invoice (default 3600 s, the 1 h grace before Stripe finalizes a period-end invoice). Until the
  period's end + this grace + the settle delay, a period without an invoice is `pending`; after it,
  `not_invoiced` (unexplained).
- `METERING_RECON_MAX_UNEXPLAINED_MINOR`: the blocking check fails when the unexplained
  differences of any one currency (usage rows, plus invoice rows net of their usage rows) exceed
  this many minor units (default 0: any unexplained money fails).
- `METERING_STRIPE_PULL_RATE`: at most this many API reads per second (default 20, under Stripe's
  25 operations/s in test mode; 0 = unlimited, e.g. for the local sandbox).
- `METERING_STRIPE_PULL_CONCURRENCY`: meter summary reads in flight at once (default 4).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from dataclasses import dataclass, field

from metering.errors import BadInputError

DEFAULT_TOLERANCE_MINOR = 1
MAX_SETTING = 10**12
"""The largest whole-number setting (about 31,700 years in seconds; 10^10 major units in cents)."""
DEFAULT_SETTLE_SECONDS = 900
DEFAULT_INVOICE_GRACE_SECONDS = 3600
DEFAULT_MAX_UNEXPLAINED_MINOR = 0
DEFAULT_PULL_RATE = 20
DEFAULT_PULL_CONCURRENCY = 4


def _parse_tolerances(text: str, source: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        cur, sep, value = part.partition("=")
        # ASCII digits, at most 15 (isdigit() takes '²', which int() refuses; a minor-unit count must
        # fit the frames' 64-bit integers)
        if not sep or not cur.strip() or not re.fullmatch(r"[0-9]{1,15}", value.strip()):
            raise BadInputError(f"{source}: {part!r} is not CURRENCY=MINOR_UNITS (e.g. usd=1; at most 15 digits)")
        out[cur.strip().lower()] = int(value.strip())
    return out


def _rate_env(name: str, default: float) -> float:
    """A rate in calls per second (0.5 is one call every two seconds); 0 means no limit."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return float(default)
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0 or value > MAX_SETTING:
        raise BadInputError(f"${name}: {raw!r} is not a rate in calls per second (a number >= 0; 0: no limit)")
    return value


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadInputError(f"${name}: {raw!r} is not a whole number") from None
    if value < 0:
        raise BadInputError(f"${name}: {raw!r} must not be negative")
    if value > MAX_SETTING:   # seconds or minor units beyond this overflow a timedelta or an Int64
        raise BadInputError(f"${name}: {raw!r} is too large (at most {MAX_SETTING})")
    return value


def settle_seconds_from_env() -> int:
    """`METERING_STRIPE_SETTLE_SECONDS`: how long Stripe's meter event summaries may lag behind a push
    (default 900). Read by the reconciliation's settle guard and by the push's late path."""
    return _int_env("METERING_STRIPE_SETTLE_SECONDS", DEFAULT_SETTLE_SECONDS)


@dataclass(frozen=True)
class ReconcileSettings:
    """The knobs of a reconciliation run (all money in integer minor units)."""

    tolerance_minor: dict[str, int] = field(default_factory=dict)  # currency -> minor units per line
    default_tolerance_minor: int = DEFAULT_TOLERANCE_MINOR
    settle_seconds: int = DEFAULT_SETTLE_SECONDS
    invoice_grace_seconds: int = DEFAULT_INVOICE_GRACE_SECONDS
    max_unexplained_minor: int = DEFAULT_MAX_UNEXPLAINED_MINOR
    pull_rate: float = DEFAULT_PULL_RATE            # API reads per second; 0 = unlimited
    pull_concurrency: int = DEFAULT_PULL_CONCURRENCY
    page_size: int = 100                            # Stripe list page size (1..100)

    def tolerance_for(self, currency: str | None) -> int:
        return self.tolerance_minor.get((currency or "").lower(), self.default_tolerance_minor)

    @property
    def invoice_wait(self) -> dt.timedelta:
        """How long after a period's end Stripe may still invoice it (grace + settle delay)."""
        return dt.timedelta(seconds=self.invoice_grace_seconds + self.settle_seconds)

    def describe_tolerance(self, currencies: list[str] | None = None) -> str:
        """e.g. 'usd: 1 minor unit per line; jpy: 1 minor unit per line'."""
        names = sorted({c.lower() for c in (currencies or []) if c} | set(self.tolerance_minor))
        if not names:
            return f"{self.default_tolerance_minor} minor unit(s) per line, every currency"
        return "; ".join(f"{c}: {self.tolerance_for(c)} minor unit(s) per line" for c in names)

    def to_record(self) -> dict[str, object]:
        """What judges a reconciliation's rows (`reconciliation_runs.settings`); the pull's knobs aside."""
        return {"tolerance_minor": dict(sorted(self.tolerance_minor.items())),
                "default_tolerance_minor": self.default_tolerance_minor, "settle_seconds": self.settle_seconds,
                "invoice_grace_seconds": self.invoice_grace_seconds,
                "max_unexplained_minor": self.max_unexplained_minor}

    @classmethod
    def from_record(cls, record: dict[str, object]) -> ReconcileSettings:
        """The settings `to_record` stored (the pull's knobs at their defaults)."""
        return cls(**{k: record[k] for k in ("tolerance_minor", "default_tolerance_minor", "settle_seconds",
                                             "invoice_grace_seconds", "max_unexplained_minor") if k in record})  # type: ignore[arg-type]

    @classmethod
    def from_env(cls) -> ReconcileSettings:
        raw = os.environ.get("METERING_RECON_TOLERANCE", "")
        return cls(
            tolerance_minor=_parse_tolerances(raw, "$METERING_RECON_TOLERANCE"),
            settle_seconds=settle_seconds_from_env(),
            invoice_grace_seconds=_int_env("METERING_STRIPE_INVOICE_GRACE_SECONDS", DEFAULT_INVOICE_GRACE_SECONDS),
            max_unexplained_minor=_int_env("METERING_RECON_MAX_UNEXPLAINED_MINOR", DEFAULT_MAX_UNEXPLAINED_MINOR),
            pull_rate=_rate_env("METERING_STRIPE_PULL_RATE", DEFAULT_PULL_RATE),
            pull_concurrency=max(1, _int_env("METERING_STRIPE_PULL_CONCURRENCY", DEFAULT_PULL_CONCURRENCY)),
        )
