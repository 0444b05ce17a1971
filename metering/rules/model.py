"""The pricing rules as typed values: plans, versions, charges, tiers (all amounts `Decimal`)."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from decimal import Decimal

from metering import currency
from metering.rules.meters import Meter

USAGE_MODELS = ("per_unit", "graduated", "volume", "package")
PERIOD_MODELS = ("flat", "minimum")
MODELS = USAGE_MODELS + PERIOD_MODELS
ROUNDING_MODES = ("half_up", "half_even")

# ISO 4217 codes Stripe charges in, by number of minor-unit digits. Three-decimal currencies
# (BHD, KWD, ...) are left out on purpose: `rated_usage.amount` is DECIMAL(38, 2).
ZERO_DECIMAL = tuple(sorted(currency.ZERO_DECIMAL))
TWO_DECIMAL = ("usd", "eur", "gbp", "chf", "cad", "aud", "nzd", "sek", "nok", "dkk", "pln", "czk", "huf",
               "ron", "bgn", "brl", "mxn", "inr", "sgd", "hkd", "cny", "zar", "ils", "try", "thb", "myr",
               "php", "idr", "twd", "aed", "sar")
CURRENCY_DIGITS: dict[str, int] = {**{c: 0 for c in ZERO_DECIMAL}, **{c: 2 for c in TWO_DECIMAL}}


def minor_digits(currency: str) -> int:
    """Digits of the currency's minor unit: usd 2, jpy 0."""
    return CURRENCY_DIGITS[currency.lower()]


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None          # inclusive upper bound; None = unbounded
    unit_amount: Decimal = Decimal(0)
    flat_amount: Decimal = Decimal(0)


@dataclass(frozen=True)
class Charge:
    name: str
    model: str
    meter: str | None = None
    unit_amount: Decimal | None = None
    tiers: tuple[Tier, ...] = ()
    package_size: Decimal | None = None
    package_amount: Decimal | None = None
    package_round: str = "up"
    amount: Decimal | None = None                       # flat and minimum
    included: Decimal = Decimal(0)
    filters: tuple[tuple[str, tuple[str, ...]], ...] = ()   # sorted (dimension, sorted values)

    @property
    def is_usage(self) -> bool:
        return self.model in USAGE_MODELS

    def canonical(self) -> dict:
        out: dict = {"name": self.name, "model": self.model}
        if self.meter is not None:
            out["meter"] = self.meter
        if self.unit_amount is not None:
            out["unit_amount"] = dec_str(self.unit_amount)
        if self.tiers:
            out["tiers"] = [
                {"up_to": None if t.up_to is None else dec_str(t.up_to),
                 "unit_amount": dec_str(t.unit_amount), "flat_amount": dec_str(t.flat_amount)}
                for t in self.tiers
            ]
        if self.model == "package":
            out["package_size"] = dec_str(self.package_size)
            out["package_amount"] = dec_str(self.package_amount)
            out["package_round"] = self.package_round
        if self.amount is not None:
            out["amount"] = dec_str(self.amount)
        if self.is_usage:
            out["included"] = dec_str(self.included)
            out["filters"] = {k: list(v) for k, v in self.filters}
        return out


@dataclass(frozen=True)
class PlanVersion:
    plan: str
    currency: str
    version: str
    effective_from: dt.date
    effective_to: dt.date | None          # exclusive: the next version's date, or an explicit end
    rounding: str
    charges: tuple[Charge, ...]
    content_hash: str = ""
    explicit_end: dt.date | None = None   # `effective_to` as written in the file, when it was

    def canonical(self) -> dict:
        """What the content hash covers: everything that can change an amount (not comments or layout).

        `effective_to` is left out when it is only implied by the next version, so adding a new
        version does not change the hash of the one before it.
        """
        out = {
            "plan": self.plan,
            "currency": self.currency,
            "version": self.version,
            "effective_from": self.effective_from.isoformat(),
            "rounding": self.rounding,
            "charges": [c.canonical() for c in self.charges],
        }
        if self.explicit_end is not None:
            out["effective_to"] = self.explicit_end.isoformat()
        return out


def content_hash(version: PlanVersion) -> str:
    """sha256 of the canonical JSON of a plan version (sorted keys, no whitespace, decimals normalised)."""
    text = json.dumps(version.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Plan:
    name: str
    currency: str
    versions: tuple[PlanVersion, ...]      # sorted by effective_from

    def version_at(self, day: dt.date) -> PlanVersion | None:
        """The version in force on `day` (UTC), or None before the first version / after an explicit end."""
        found = None
        for v in self.versions:
            if v.effective_from <= day and (v.effective_to is None or day < v.effective_to):
                found = v
        return found


@dataclass(frozen=True, eq=False)   # hashed by identity: frames built from it are cached per object
class Rules:
    """Everything in a rules folder that rating needs."""

    meters: dict[str, Meter]
    plans: dict[str, Plan] = field(default_factory=dict)

    def version(self, plan: str, version: str) -> PlanVersion:
        for v in self.plans[plan].versions:
            if v.version == version:
                return v
        raise KeyError((plan, version))

    @property
    def all_versions(self) -> list[PlanVersion]:
        return [v for name in sorted(self.plans) for v in self.plans[name].versions]

    @property
    def rules_hash(self) -> str:
        """One hash over every version's content hash and the meters: changes when any price changes."""
        parts = [f"{v.plan}/{v.version}={v.content_hash}" for v in self.all_versions]
        parts += [f"meter:{m.name}:{m.aggregation}:{m.value}:{m.property}:{','.join(m.dimensions)}"
                  for m in sorted(self.meters.values(), key=lambda m: m.name)]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def dec_str(value: Decimal | None) -> str:
    """A canonical decimal string: no exponent, no trailing zeros (`5.00` -> `5`, `0.0020` -> `0.002`)."""
    if value is None:
        return ""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text
