"""A price's own arithmetic, written from Stripe's pricing documentation (not shared with the engine).

Rules (docs.stripe.com/products-prices/pricing-models, /billing/subscriptions/usage-based/pricing-models):

- ``per_unit``: quantity (after ``transform_quantity``: divide, then round ``up``/``down`` to a whole
  number) times ``unit_amount_decimal``.
- ``tiered`` + ``graduated``: each tier prices the units that fall inside it; a tier's
  ``flat_amount`` is charged once when the quantity reaches that tier.
- ``tiered`` + ``volume``: the single tier that contains the total quantity prices every unit, plus
  that tier's ``flat_amount``.
- ``up_to`` is inclusive; the last tier has ``up_to = null`` (``inf``). A quantity of 0 lies in the
  first tier (so a first-tier flat fee is still charged).
- Amounts are in minor units and the line total is rounded once, half-up, to a whole minor unit
  (Stripe documents rounding to the nearest unit but neither the tie rule nor per-tier rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any


@dataclass(frozen=True)
class Tier:
    up_to: Decimal | None
    unit: Decimal
    flat: Decimal


def _dec(value: Any) -> Decimal:
    return Decimal(str(value)) if value is not None else Decimal(0)


def price_tiers(price: dict[str, Any]) -> list[Tier]:
    """The tiers of a Stripe price object, amounts as exact Decimals."""
    tiers = []
    for tier in price.get("tiers") or []:
        unit = tier.get("unit_amount_decimal") or tier.get("unit_amount")
        flat = tier.get("flat_amount_decimal") or tier.get("flat_amount")
        up_to = tier.get("up_to")
        tiers.append(Tier(None if up_to is None else Decimal(up_to), _dec(unit), _dec(flat)))
    return tiers


def transformed_quantity(price: dict[str, Any], quantity: Decimal) -> Decimal:
    transform = price.get("transform_quantity")
    if not transform:
        return quantity
    quotient = quantity / Decimal(transform["divide_by"])
    rounding = ROUND_CEILING if transform.get("round") == "up" else ROUND_FLOOR
    return quotient.quantize(Decimal(1), rounding=rounding)


def tier_index(tiers: list[Tier], quantity: Decimal) -> int:
    """Index of the tier that contains ``quantity`` (0 lies in the first tier)."""
    for i, tier in enumerate(tiers):
        if tier.up_to is None or quantity <= tier.up_to:
            return i
    return len(tiers) - 1


def unrounded_amount(price: dict[str, Any], quantity: Decimal) -> Decimal:
    """The exact amount in minor units, before rounding."""
    if price.get("billing_scheme") != "tiered":
        unit = price.get("unit_amount_decimal") or price.get("unit_amount") or 0
        return transformed_quantity(price, quantity) * _dec(unit)
    tiers = price_tiers(price)
    reached = tier_index(tiers, quantity)
    if price.get("tiers_mode") == "volume":
        tier = tiers[reached]
        return quantity * tier.unit + tier.flat
    total = Decimal(0)
    lower = Decimal(0)
    for tier in tiers[: reached + 1]:
        upper = quantity if tier.up_to is None else min(quantity, tier.up_to)
        total += max(upper - lower, Decimal(0)) * tier.unit + tier.flat
        if tier.up_to is not None:
            lower = tier.up_to
    return total


def amount_minor(price: dict[str, Any], quantity: Decimal) -> int:
    """The line amount in whole minor units (half-up)."""
    return int(unrounded_amount(price, quantity).quantize(Decimal(1), rounding=ROUND_HALF_UP))
