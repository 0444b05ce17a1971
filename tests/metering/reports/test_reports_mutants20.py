"""Gaps found by a hand mutation audit of metering/reports (mutants20): quantity text of a Decimal
without a fractional part, and the half-up rounding of the match rate."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from metering.reports.data import TOTAL_METRICS, CurrencyTotals
from metering.reports.money import fmt_quantity


@pytest.mark.parametrize(("value", "text"), [
    (D("1500"), "1500"),                    # an integer-scale Decimal keeps its zeros (no '.' to strip after)
    (D("1E+3"), "1000"),                    # exponent form: format 'f' gives '1000', zeros kept
    (D("10"), "10"),
    (D("0"), "0"),
    (D("1500.000000000000"), "1500"),       # DECIMAL(38,12): trailing fractional zeros and the '.' dropped
    (D("-0.500000000000"), "-0.5"),
])
def test_fmt_quantity_strips_only_fractional_zeros(value, text):
    assert fmt_quantity(value) == text


def _totals(rows: int, clean_rows: int) -> CurrencyTotals:
    fields = {m: 0 for m in TOTAL_METRICS}
    return CurrencyTotals(currency="usd", **{**fields, "rows": rows, "clean_rows": clean_rows})


@pytest.mark.parametrize(("rows", "clean", "rate"), [
    (3, 2, "66.7"),     # 100 * 2 / 3 = 66.666..., half-up to 0.1 -> 66.7 (truncating would say 66.6)
    (16, 1, "6.3"),     # 100 * 1 / 16 = 6.25 exactly: half-up -> 6.3 (half-even or down -> 6.2)
    (8, 1, "12.5"),     # 100 * 1 / 8 = 12.5 exactly: unchanged
    (6, 2, "33.3"),     # 100 * 2 / 6 = 33.333... -> 33.3
])
def test_match_rate_rounds_half_up_to_a_tenth(rows, clean, rate):
    t = _totals(rows, clean)
    assert t.match_rate == D(rate)
    assert t.match_rate_text("%") == rate + "%"


def test_no_usage_rows_has_no_match_rate():
    assert _totals(0, 0).match_rate is None
    assert _totals(0, 0).match_rate_text() == "n/a"
