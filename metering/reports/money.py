"""Integer minor units to display text, per currency (exact: Decimal, never float)."""

from __future__ import annotations

from decimal import Decimal

# Stripe's zero-decimal currencies (docs: currencies#zero-decimal).
ZERO_DECIMAL = frozenset(
    "bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split()
)


def minor_digits(currency: str | None) -> int:
    return 0 if (currency or "").lower() in ZERO_DECIMAL else 2


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
