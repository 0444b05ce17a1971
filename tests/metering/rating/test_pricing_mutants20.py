"""Rating behaviours that no other test pinned (found by a hand mutation audit of `metering/rating/`).

Each test names the mutant it kills.
"""

from __future__ import annotations

import datetime as dt
import shutil
from fractions import Fraction

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metering.rating import money
from metering.rating.aggregate import charge_map
from metering.rules.plans import load_rules
from tests.metering.rating.conftest import PROJECT_ROOT, plan_yaml

NOV = (dt.date(2026, 11, 1), dt.date(2026, 12, 1))   # a 30-day billing period (and cycle)


def _second_half_of_november(segment, days: int = 15) -> dict:
    return segment(start=NOV[1] - dt.timedelta(days=days), end=NOV[1], period=NOV)


@pytest.mark.parametrize(("currency", "amount", "rounding", "expected_minor"), [
    # 0.05 x 15/30 = 0.025 dollars = 2.5 cents: a tie. half_even -> 2 (2 is even), half_up -> 3
    ("usd", "0.05", "half_even", 2), ("usd", "0.05", "half_up", 3),
    # 0.03 x 15/30 = 1.5 cents: half_even -> 2 (1 is odd, so up), half_up -> 2
    ("usd", "0.03", "half_even", 2), ("usd", "0.03", "half_up", 2),
    # JPY has no minor unit: 5 x 15/30 = 2.5 yen -> half_even 2, half_up 3
    ("jpy", "5", "half_even", 2), ("jpy", "5", "half_up", 3),
])
def test_prorated_flat_and_minimum_round_ties_by_the_versions_rule(make_rules, rate_q, segment, currency, amount,
                                                                   rounding, expected_minor):
    """Kills `_prorated` rounding by a fixed half_up instead of the line's `rounding`: the flat fee and the
    minimum (no usage, so the whole prorated commitment is the true-up) are both prorated fractions."""
    rules = make_rules(f"""
        - {{name: fee, model: flat, amount: "{amount}"}}
        - {{name: min, model: minimum, amount: "{amount}"}}
    """, currency=currency, rounding=rounding)
    out = rate_q(rules, {}, _second_half_of_november(segment))
    assert out["charge"].to_list() == ["fee", "min"]
    assert out["amount_minor"].to_list() == [expected_minor, expected_minor]
    assert out["rounding"].to_list() == [rounding, rounding]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cents=st.integers(0, 10**9), days=st.integers(1, 30), rounding=st.sampled_from(["half_up", "half_even"]))
# ties (random draws rarely hit one): 5 x 15/30 = 2.5 -> 2; (no tie) 7 x 6/30 = 1.4 -> 1; 123457 x 15/30 = 61728.5 -> 61728;
# 3 x 25/30 = 2.5 -> 2 (half_even), 3 (half_up)
@example(cents=5, days=15, rounding="half_even")
@example(cents=7, days=6, rounding="half_even")
@example(cents=123457, days=15, rounding="half_even")
@example(cents=3, days=25, rounding="half_even")
@example(cents=3, days=25, rounding="half_up")
def test_a_prorated_flat_fee_is_its_exact_fraction_rounded_once(make_rules, rate_q, segment, cents, days, rounding):
    """amount x days / 30, exact, rounded once to the cent by the version's rule (Python's `round` of a
    Fraction is half-even; half-up is floor(x + 1/2))."""
    rules = make_rules('- {name: fee, model: flat, amount: "%s"}' % f"{cents // 100}.{cents % 100:02d}",
                       rounding=rounding)
    exact = Fraction(cents * days, 30)   # in cents
    expected = round(exact) if rounding == "half_even" else (2 * exact.numerator + exact.denominator) // (2 * exact.denominator)
    line = rate_q(rules, {}, _second_half_of_november(segment, days)).row(0, named=True)
    assert line["amount_minor"] == expected


def test_checked_mul_accepts_a_product_exactly_at_the_limit():
    """Kills `a > LIMIT // b` -> `>=` in `money.checked_mul`: LIMIT // 7 x 7 fits in DECIMAL(38) and must be
    multiplied; one more unit of `a` does not fit and is refused."""
    a = money.LIMIT // 7                   # 14285714285714285714285714285714285714
    assert a * 7 <= money.LIMIT < (a + 1) * 7
    frame = pl.DataFrame({"a": [a], "b": [7]}, schema={"a": money.I128, "b": money.I128})
    assert money.checked_mul(frame, "a", "b", "out", "test")["out"].to_list() == [a * 7]
    with pytest.raises(money.AmountTooLargeError, match="^test: an amount exceeds 10\\^14"):
        money.checked_mul(frame.with_columns(a=pl.col("a") + money.lit(1)), "a", "b", "out", "test")


def test_a_charge_with_two_filters_prices_only_units_matching_both(tmp_path):
    """Kills `_matches` testing only its first filter: with a meter over region and tier, the charge for
    region eu and tier gold must not take eu/silver units (they go to the eu/silver charge)."""
    root = tmp_path / "rules"
    (root / "plans").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "rating_rules" / "meters.yaml", root / "meters.yaml")
    with (root / "meters.yaml").open("a") as f:
        f.write("  calls2: {aggregation: count, dimensions: [region, tier]}\n")
    (root / "plans" / "t.yaml").write_text(plan_yaml("""
        - {name: gold, meter: calls2, model: per_unit, unit_amount: "1", filters: {region: eu, tier: gold}}
        - {name: silver, meter: calls2, model: per_unit, unit_amount: "2", filters: {region: eu, tier: silver}}
    """))
    rules = load_rules(root)
    keys = pl.DataFrame({"plan": ["t"] * 3, "plan_version": ["v1"] * 3, "meter": ["calls2"] * 3,
                         "dimensions": ['{"region":"eu","tier":"gold"}', '{"region":"eu","tier":"silver"}',
                                        '{"region":"us","tier":"gold"}']})
    mapping = charge_map(keys, rules).sort("dimensions")
    # eu/gold -> charge 0, eu/silver -> charge 1, us/gold -> no charge (unpriced)
    assert mapping.select("dimensions", "charge_id").rows() == [
        ('{"region":"eu","tier":"gold"}', 0), ('{"region":"eu","tier":"silver"}', 1)]
