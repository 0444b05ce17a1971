"""The pricing rules as Polars frames (one row per charge, one row per tier), for whole-frame rating."""

from __future__ import annotations

from functools import lru_cache

import polars as pl

from metering.rating.money import AMOUNT_SCALE, I128, PRICE_SCALE, QUANTITY_SCALE, scaled_int
from metering.rules.model import Rules, minor_digits

KEY = ["plan", "plan_version"]

CHARGE_SCHEMA = {
    "plan": pl.String, "plan_version": pl.String, "charge_id": pl.Int32, "charge": pl.String,
    "model": pl.String, "meter": pl.String, "currency": pl.String, "digits": pl.Int32,
    "rounding": pl.String, "rules_hash": pl.String, "included_q12": I128, "package_size_q12": I128,
    "package_round": pl.String, "package_p12": I128, "fixed_a24": I128,
}
TIER_SCHEMA = {
    "plan": pl.String, "plan_version": pl.String, "charge_id": pl.Int32, "tier": pl.Int32,
    "lower_q12": I128, "upper_q12": I128, "unit_p12": I128, "flat_a24": I128,
}
VERSION_SCHEMA = {
    "plan": pl.String, "plan_version": pl.String, "currency": pl.String, "version_from": pl.Date,
    "version_to": pl.Date, "rules_hash": pl.String,
}


@lru_cache(maxsize=16)
def charges_frame(rules: Rules) -> pl.DataFrame:
    """One row per (plan, version, charge), with amounts as scaled integers (see `money`)."""
    rows = []
    for v in rules.all_versions:
        for i, c in enumerate(v.charges):
            rows.append({
                "plan": v.plan, "plan_version": v.version, "charge_id": i, "charge": c.name,
                "model": c.model, "meter": c.meter, "currency": v.currency,
                "digits": minor_digits(v.currency), "rounding": v.rounding, "rules_hash": v.content_hash,
                "included_q12": scaled_int(c.included, QUANTITY_SCALE),
                "package_size_q12": scaled_int(c.package_size, QUANTITY_SCALE) if c.package_size else None,
                "package_round": c.package_round if c.model == "package" else None,
                "package_p12": scaled_int(c.package_amount, PRICE_SCALE) if c.package_amount is not None else None,
                "fixed_a24": scaled_int(c.amount, AMOUNT_SCALE) if c.amount is not None else None,
            })
    return pl.DataFrame(rows, schema=CHARGE_SCHEMA)


@lru_cache(maxsize=16)
def tiers_frame(rules: Rules) -> pl.DataFrame:
    """One row per tier of every per_unit (a single unbounded tier), graduated and volume charge."""
    rows = []
    for v in rules.all_versions:
        for i, c in enumerate(v.charges):
            if c.model == "per_unit":
                bounds = [(None, c.unit_amount, 0)]
            elif c.model in ("graduated", "volume"):
                bounds = [(t.up_to, t.unit_amount, t.flat_amount) for t in c.tiers]
            else:
                continue
            lower = 0
            for n, (up_to, unit, flat) in enumerate(bounds, start=1):
                upper = None if up_to is None else scaled_int(up_to, QUANTITY_SCALE)
                rows.append({
                    "plan": v.plan, "plan_version": v.version, "charge_id": i, "tier": n,
                    "lower_q12": lower, "upper_q12": upper,
                    "unit_p12": scaled_int(unit, PRICE_SCALE), "flat_a24": scaled_int(flat, AMOUNT_SCALE),
                })
                lower = upper if upper is not None else lower
    return pl.DataFrame(rows, schema=TIER_SCHEMA)


@lru_cache(maxsize=16)
def versions_frame(rules: Rules) -> pl.DataFrame:
    """One row per plan version with its validity [version_from, version_to) (null = open-ended)."""
    rows = [{"plan": v.plan, "plan_version": v.version, "currency": v.currency,
             "version_from": v.effective_from, "version_to": v.effective_to, "rules_hash": v.content_hash}
            for v in rules.all_versions]
    return pl.DataFrame(rows, schema=VERSION_SCHEMA)
