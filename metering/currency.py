"""Stripe's currencies by the digits of their minor unit: the one list every module reads.

Stripe's zero-decimal and three-decimal currencies (docs: currencies#zero-decimal,
currencies#three-decimal); every other currency has two places. Rating supports fewer
(`metering.rules.model.CURRENCY_DIGITS`: no three-decimal ones), but Stripe's invoices and the
dunning and report figures taken from them may be in any.
"""

from __future__ import annotations

ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())
THREE_DECIMAL = frozenset("bhd jod kwd omr tnd".split())
DIGITS = {code: 0 for code in ZERO_DECIMAL} | {code: 3 for code in THREE_DECIMAL}
"""Currency (lower case) -> digits, for the currencies that do not have two."""


def minor_digits(currency: str | None) -> int:
    """Number of decimal places of the currency's minor unit (0, 2 or 3); 2 when unknown."""
    return DIGITS.get((currency or "").lower(), 2)
