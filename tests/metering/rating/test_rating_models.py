"""Every pricing model against Stripe's documented examples and hand-computed amounts."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from metering.errors import BadInputError

STRIPE_TIERS = """
- name: c
  meter: seats
  model: {model}
  tiers:
    - {{up_to: 5, unit_amount: "7.00"{f1}}}
    - {{up_to: 10, unit_amount: "6.50"{f2}}}
    - {{up_to: null, unit_amount: "6.00"}}
"""


def _amount(frame, charge_id=0) -> Decimal:
    return frame.filter(charge_id=charge_id)["amount"].item()


@pytest.mark.parametrize(("model", "quantity", "expected"), [
    # Stripe docs (tiered pricing): 1-5 @ $7.00, 6-10 @ $6.50, 11+ @ $6.00.
    ("volume", 6, "39.00"), ("volume", 20, "120.00"),
    ("graduated", 6, "41.50"), ("graduated", 20, "127.50"),
    # hand: volume 5 -> 5 x 7; 10 -> 10 x 6.50; 11 -> 11 x 6 (a volume total can drop at a boundary)
    ("volume", 5, "35.00"), ("volume", 10, "65.00"), ("volume", 11, "66.00"),
    ("graduated", 5, "35.00"), ("graduated", 10, "67.50"), ("graduated", 11, "73.50"),
    ("graduated", 0, "0.00"), ("volume", 0, "0.00"),
])
def test_stripe_tier_examples(make_rules, rate_q, model, quantity, expected):
    rules = make_rules(STRIPE_TIERS.format(model=model, f1="", f2=""))
    assert _amount(rate_q(rules, {0: quantity})) == Decimal(expected)


@pytest.mark.parametrize(("model", "quantity", "expected"), [
    # flat_amount $10 on tier 1 and $5 on tier 2.
    # graduated 6: 5 x 7 + 10 (tier 1 reached) + 1 x 6.50 + 5 (tier 2 reached) = 56.50
    ("graduated", 6, "56.50"),
    # graduated 20: 35 + 10 + 32.50 + 5 + 10 x 6 = 142.50
    ("graduated", 20, "142.50"),
    # volume 6: whole quantity in tier 2: 6 x 6.50 + 5 = 44.00
    ("volume", 6, "44.00"),
    # volume 3: 3 x 7 + 10 = 31.00 ; volume 20: 20 x 6 = 120.00 (tier 3 has no flat amount)
    ("volume", 3, "31.00"), ("volume", 20, "120.00"),
])
def test_tiers_with_flat_amounts(make_rules, rate_q, model, quantity, expected):
    rules = make_rules(STRIPE_TIERS.format(model=model, f1=', flat_amount: "10.00"', f2=', flat_amount: "5.00"'))
    assert _amount(rate_q(rules, {0: quantity})) == Decimal(expected)


def test_tier_breakdown_is_kept(make_rules, rate_q):
    rules = make_rules(STRIPE_TIERS.format(model="graduated", f1="", f2=""))
    line = rate_q(rules, {0: 6}).row(0, named=True)
    assert json.loads(line["tiers"]) == [
        {"tier": 1, "units": "5", "unit_amount": "7", "flat_amount": "0", "amount": "35"},
        {"tier": 2, "units": "1", "unit_amount": "6.5", "flat_amount": "0", "amount": "6.5"},
    ]
    assert line["amount_unrounded"] == Decimal("41.5")
    assert line["amount_minor"] == 4150


def test_per_unit_and_included(make_rules, rate_q):
    rules = make_rules("""
        - {meter: api_calls, model: per_unit, unit_amount: "0.0005", included: 10000}
    """)
    # 25,001 calls, 10,000 free: 15,001 x 0.0005 = 7.5005 -> 7.50 (half_up at the cent)
    line = rate_q(rules, {0: 25001}).row(0, named=True)
    assert line["billable_quantity"] == Decimal(15001)
    assert line["amount_unrounded"] == Decimal("7.5005")
    assert line["amount"] == Decimal("7.50")
    # below the allowance: nothing to pay
    assert rate_q(rules, {0: 9999})["amount_minor"].item() == 0


def test_included_comes_before_tiers(make_rules, rate_q):
    rules = make_rules("""
        - meter: seats
          model: graduated
          included: 3
          tiers:
            - {up_to: 5, unit_amount: "7.00"}
            - {up_to: null, unit_amount: "6.00"}
    """)
    # 9 seats, 3 free -> 6 billable: 5 x 7 + 1 x 6 = 41
    assert _amount(rate_q(rules, {0: 9})) == Decimal("41.00")


@pytest.mark.parametrize(("rounding", "quantity", "expected"), [
    ("up", 1, "0.01"), ("up", 1000, "0.01"), ("up", 1001, "0.02"), ("up", 0, "0.00"),
    ("down", 999, "0.00"), ("down", 1000, "0.01"), ("down", 2999, "0.02"),
])
def test_package(make_rules, rate_q, rounding, quantity, expected):
    rules = make_rules(f"""
        - {{meter: tokens, model: package, package_size: 1000, package_amount: "0.01", package_round: {rounding}}}
    """)
    assert _amount(rate_q(rules, {0: quantity})) == Decimal(expected)


def test_flat_fee_whole_and_prorated(make_rules, rate_q, segment):
    rules = make_rules("""
        - {name: fee, model: flat, amount: "49.00"}
    """)
    assert _amount(rate_q(rules, {})) == Decimal("49.00")
    # 17 of 31 days: 49 x 17 / 31 = 26.870967... -> 26.87
    part = rate_q(rules, {}, segment(start=dt.date(2026, 10, 15))).row(0, named=True)
    assert part["amount"] == Decimal("26.87")
    assert part["amount_unrounded"] == Decimal("26.870967741935483870967741")
    assert json.loads(part["tiers"]) == [{"amount": "49", "segment_days": 17, "cycle_days": 31}]


def test_minimum_is_a_true_up_of_usage_lines(make_rules, rate_q):
    rules = make_rules("""
        - {name: calls, meter: api_calls, model: per_unit, unit_amount: "0.01"}
        - {name: seats, meter: seats, model: per_unit, unit_amount: "10.00"}
        - {name: fee, model: flat, amount: "49.00"}
        - {name: min, model: minimum, amount: "100.00"}
    """)
    # usage 1234 x 0.01 = 12.34 and 3 x 10 = 30 -> 42.34; minimum tops up to 100: 57.66 (the flat fee is not usage)
    out = rate_q(rules, {0: 1234, 1: 3})
    assert _amount(out, 3) == Decimal("57.66")
    assert out["amount"].sum() == Decimal("149.00")
    # usage above the minimum: no true-up
    assert _amount(rate_q(rules, {0: 10000, 1: 1}), 3) == Decimal("0.00")


@pytest.mark.parametrize(("rounding", "quantity", "expected_minor"), [
    # 0.005 per unit: 1 -> 0.005 (tie), 3 -> 0.015 (tie), 5 -> 0.025 (tie), 7 -> 0.035 (tie)
    ("half_up", 1, 1), ("half_even", 1, 0),
    ("half_up", 3, 2), ("half_even", 3, 2),
    ("half_up", 5, 3), ("half_even", 5, 2),
    ("half_up", 7, 4), ("half_even", 7, 4),
    ("half_even", 9, 4),   # 0.045 -> 0.04
])
def test_rounding_ties(make_rules, rate_q, rounding, quantity, expected_minor):
    rules = make_rules("""
        - {meter: api_calls, model: per_unit, unit_amount: "0.005"}
    """, rounding=rounding)
    assert rate_q(rules, {0: quantity})["amount_minor"].item() == expected_minor


@pytest.mark.parametrize(("rounding", "quantity", "expected_yen"), [
    ("half_up", 3, 2), ("half_even", 3, 2),      # 1.5 yen
    ("half_up", 5, 3), ("half_even", 5, 2),      # 2.5 yen
    ("half_up", 1001, 501), ("half_even", 1001, 500),  # 500.5 yen
])
def test_zero_decimal_currency(make_rules, rate_q, rounding, quantity, expected_yen):
    rules = make_rules("""
        - {meter: api_calls, model: per_unit, unit_amount: "0.5"}
    """, currency="jpy", rounding=rounding)
    line = rate_q(rules, {0: quantity}).row(0, named=True)
    assert line["amount_minor"] == expected_yen          # minor unit of JPY = 1 yen
    assert line["amount"] == Decimal(expected_yen)
    assert line["currency"] == "jpy"


def test_jpy_flat_proration_rounds_to_whole_yen(make_rules, rate_q, segment):
    rules = make_rules("""
        - {model: flat, amount: "7500"}
    """, currency="jpy")
    # 7500 x 10 / 31 = 2419.35... -> 2419 yen
    assert rate_q(rules, {}, segment(start=dt.date(2026, 10, 22)))["amount_minor"].item() == 2419


def test_huge_quantities_and_tiny_prices_are_exact(make_rules, rate_q):
    rules = make_rules("""
        - {meter: tokens, model: per_unit, unit_amount: "0.000000000001"}
    """)
    line = rate_q(rules, {0: 10**15}).row(0, named=True)
    assert line["amount_unrounded"] == Decimal(1000)
    assert line["amount_minor"] == 100000
    odd = rate_q(rules, {0: "123456789012345.123456789012"}).row(0, named=True)
    assert odd["amount_unrounded"] == Decimal("123.456789012345123456789012")
    assert odd["amount"] == Decimal("123.46")


def test_minimum_with_usage_far_above_it_tops_up_nothing(make_rules, rate_q):
    """Usage of 6e12 dollars: the true-up once multiplied usage x 10^22 x 30 days past Int128, which
    wrapped negative and billed a 5,342,745,564,131.28 'minimum'. By hand: max(100 - 6e12, 0) = 0."""
    rules = make_rules("""
        - {name: seats, meter: seats, model: per_unit, unit_amount: "10.00"}
        - {name: min, model: minimum, amount: "100.00"}
    """)
    out = rate_q(rules, {0: 600_000_000_000})
    assert _amount(out, 0) == Decimal("6000000000000.00")
    assert _amount(out, 1) == Decimal("0.00")


def test_tiers_summing_past_the_exact_range_are_refused(make_rules, rate_q):
    """Each of four tiers is 9 x 1e13 = 9e13 dollars, within range; together 3.6e14 is beyond 10^14 and
    once wrapped around Int128 to 19,717,633,079,061.54 without a word."""
    rules = make_rules("""
        - meter: api_calls
          model: graduated
          tiers:
            - {up_to: "10000000000000", unit_amount: "9"}
            - {up_to: "20000000000000", unit_amount: "9"}
            - {up_to: "30000000000000", unit_amount: "9"}
            - {up_to: null, unit_amount: "9"}
    """)
    with pytest.raises(BadInputError, match="^tier amount \\(the tiers together\\): an amount exceeds 10\\^14 major "
                       "units in one line .*; customer c1, period 2026-10-01, charge 'api_calls', quantity 4"):
        rate_q(rules, {0: 40_000_000_000_000})
    assert _amount(rate_q(rules, {0: 11_000_000_000_000})) == Decimal("99000000000000.00")   # 9 x 1.1e13


def test_amount_beyond_exact_range_is_refused(make_rules, rate_q):
    rules = make_rules("""
        - {meter: tokens, model: per_unit, unit_amount: "1000000"}
    """)
    with pytest.raises(BadInputError, match="exceeds 10\\^14"):
        rate_q(rules, {0: 10**15})


def test_every_charge_gets_a_line_even_without_usage(make_rules, rate_q):
    rules = make_rules("""
        - {meter: api_calls, model: per_unit, unit_amount: "0.01"}
        - {meter: seats, model: per_unit, unit_amount: "10.00"}
    """)
    out = rate_q(rules, {})
    assert out["charge"].to_list() == ["api_calls", "seats"]
    assert out["amount_minor"].to_list() == [0, 0]


def test_negative_quantity_is_a_clear_error(make_rules, rate_q):
    rules = make_rules("""
        - {name: calls, meter: api_calls, model: per_unit, unit_amount: "0.01"}
    """)
    with pytest.raises(BadInputError, match="negative quantity -5.000000000000 for customer c1, charge 'calls'"):
        rate_q(rules, {0: -5})


def test_first_partial_period_is_prorated_over_its_cycle(make_rules, rate_q, segment):
    rules = make_rules("""
        - {name: fee, model: flat, amount: "31.00"}
        - {name: min, model: minimum, amount: "62.00"}
    """)
    # subscribed Oct 25 with anchor 20: period Oct 25 - Nov 20 (26 days) of the 31-day cycle Oct 20 - Nov 20
    seg = segment(start=dt.date(2026, 10, 25), end=dt.date(2026, 11, 20),
                  period=(dt.date(2026, 10, 25), dt.date(2026, 11, 20))) | {"cycle_days": 31}
    out = rate_q(rules, {}, seg)
    assert out["amount_minor"].to_list() == [2600, 5200]   # 31 x 26/31, 62 x 26/31
