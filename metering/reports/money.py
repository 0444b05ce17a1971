"""Integer minor units to display text, per currency (exact: Decimal, never float)."""

from __future__ import annotations

from decimal import Decimal

from metering.currency import minor_digits   # three-decimal ones too: the dunning figures' digits


def to_major(minor: int | None, currency: str | None) -> Decimal | None:
    """1234 usd -> Decimal('12.34'); 1234 jpy -> Decimal('1234')."""
    if minor is None:
        return None
    digits = minor_digits(currency)
    return Decimal(int(minor)).scaleb(-digits).quantize(Decimal(1).scaleb(-digits))


def fmt_money(minor: int | None, currency: str | None) -> str:
    """'12.34 USD', '-0.05 USD', '1,234 JPY'; '' for None."""
    value = to_major(minor, currency)
    if value is None:
        return ""
    digits = minor_digits(currency)
    return f"{value:,.{digits}f} {(currency or '').upper()}".strip()


def fmt_quantity(value: Decimal | None) -> str:
    """A DECIMAL(38,12) quantity without trailing zeros: Decimal('12.500000000000') -> '12.5'."""
    if value is None:
        return ""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"
