"""Exact conversion between a currency's major unit (decimal text) and Stripe's integer minor units
(the digits of each currency: `metering.currency`)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

import polars as pl

from metering.currency import DIGITS as _DIGITS
from metering.currency import minor_digits

__all__ = ["format_minor", "minor_digits", "minor_to_text_expr", "parse_major"]


def parse_major(text: str, currency: str) -> int:
    """'12.34' usd -> 1234. Raises ValueError with a readable reason on anything inexact."""
    try:
        value = Decimal(text)
    except (InvalidOperation, TypeError):
        raise ValueError(f"{text!r} is not a decimal number") from None
    if not value.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    # beyond any amount (and 1e999999999 overflows the decimal context); a zero keeps its exponent
    # ('0e31' is adjusted 31) and is no amount too large
    if value and value.adjusted() > 30:
        raise ValueError(f"{text!r} is too large")
    digits = minor_digits(currency)
    scaled = value.scaleb(digits)
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{text!r} has more than {digits} decimal places for {currency}")
    return int(scaled)


def format_minor(amount_minor: int, currency: str) -> str:
    """1234 usd -> '12.34'; 1200 jpy -> '1200'. Exact (no float)."""
    digits = minor_digits(currency)
    return str(Decimal(int(amount_minor)).scaleb(-digits).quantize(Decimal(1).scaleb(-digits)))


def minor_to_text_expr(amount: str, currency: str) -> pl.Expr:
    """A Polars expression rendering integer minor units as exact decimal text in the major unit."""
    digits = (
        pl.col(currency)
        .str.to_lowercase()
        .replace_strict(_DIGITS, default=2, return_dtype=pl.Int64)
    )
    sign = pl.when(pl.col(amount) < 0).then(pl.lit("-")).otherwise(pl.lit(""))
    absolute = pl.col(amount).abs()
    scale = pl.lit(10, dtype=pl.Int64).pow(digits)
    whole = (absolute // scale).cast(pl.String)
    frac = (absolute % scale).cast(pl.String).str.zfill(digits)
    return pl.when(digits == 0).then(sign + whole).otherwise(sign + whole + pl.lit(".") + frac)
