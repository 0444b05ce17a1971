"""Mutation audit 26 (second pass over the money arithmetic of rating: `pricing.py`, `money.py`).

What no earlier test pinned down:

- usage models against an exact reference computed with `fractions.Fraction` (hypothesis, with the
  tier boundaries, the `included` edge and rounding ties as explicit examples): fractional tier
  bounds, prices with twelve decimals, graduated / volume / per_unit / package, half_up and
  half_even, usd (cents) and jpy (no minor unit);
- the largest amount a line holds (10^14 - 1 major units), alone and as the sum of tiers;
- quantity rows of one line adding up; the smallest negative quantity refused;
- a gauge in an unsplit (first, partial) period is not prorated;
- the minimum: only its own plan's usage counts after a plan change; a minimum with more decimals
  than the currency; a first, partial period with usage; versions with different minimums;
- flat and minimum lines have no quantity nor billable quantity.

Each test names the mutant(s) it kills (ids of the m26e report).
"""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from fractions import Fraction

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metering.errors import BadInputError
from metering.rating.pricing import rate
from metering.rules.plans import load_rules
from tests.metering.rating.conftest import one_segment, plan_yaml, write_rules

QSCHEMA = {"customer_id": pl.String, "period_start": pl.Date, "segment_start": pl.Date, "plan": pl.String,
           "plan_version": pl.String, "charge_id": pl.Int32, "quantity": pl.Decimal(38, 12)}


def _rate(rules, segments: list[dict], quantities: list[tuple]) -> pl.DataFrame:
    """Rate `segments` (dicts as `one_segment` makes) with `quantities`: (segment dict, charge_id, quantity)
    rows, several rows for one line allowed."""
    q = pl.DataFrame([{"customer_id": s["customer_id"], "period_start": s["period_start"],
                       "segment_start": s["segment_start"], "plan": s["plan"], "plan_version": s["plan_version"],
                       "charge_id": cid, "quantity": Decimal(str(qty))} for s, cid, qty in quantities],
                     schema=QSCHEMA)
    return rate(pl.DataFrame(segments), q, rules)


# --- an exact reference for the usage models --------------------------------------------------------------

# Tiers with fractional bounds and prices of up to twelve decimals; every tier has a flat amount but
# the second (so "flat only when reached" shows).
TIERS = [  # (up_to, unit_amount, flat_amount)
    (Decimal("2.5"), Decimal("1.000000000007"), Decimal("0.3")),
    (Decimal("10"), Decimal("0.25"), Decimal("0")),
    (None, Decimal("0.125"), Decimal("1.01")),
]
INCLUDED = Decimal("1.5")
PACKAGE = (Decimal("2.5"), Decimal("0.7"))   # package_size, package_amount


def _charge_yaml(model: str) -> str:
    if model == "per_unit":
        return f'- {{meter: tokens, model: per_unit, unit_amount: "{TIERS[0][1]}", included: "{INCLUDED}"}}'
    if model in ("package_up", "package_down"):
        return (f'- {{meter: tokens, model: package, package_size: "{PACKAGE[0]}", package_amount: "{PACKAGE[1]}",'
                f' package_round: {model.split("_")[1]}, included: "{INCLUDED}"}}')
    tiers = ", ".join(
        "{up_to: %s, unit_amount: \"%s\", flat_amount: \"%s\"}" % ("null" if u is None else f'"{u}"', p, f)
        for u, p, f in TIERS)
    return f'- {{meter: tokens, model: {model}, included: "{INCLUDED}", tiers: [{tiers}]}}'


def _reference(model: str, quantity: Decimal) -> tuple[Fraction, Fraction]:
    """(billable, exact amount in major units), by Stripe's definitions (docs/rating.md)."""
    b = max(Fraction(quantity) - Fraction(INCLUDED), Fraction(0))
    if model == "per_unit":
        return b, b * Fraction(TIERS[0][1])
    if model.startswith("package"):
        size, price = Fraction(PACKAGE[0]), Fraction(PACKAGE[1])
        n = b // size if model == "package_down" else -(-b // size)
        return b, n * price
    total, lower = Fraction(0), Fraction(0)
    for up_to, unit, flat in TIERS:
        upper = None if up_to is None else Fraction(up_to)
        if model == "graduated":
            units = max(min(b, upper if upper is not None else b) - lower, Fraction(0))
            if units > 0:
                total += units * Fraction(unit) + Fraction(flat)
        elif b > lower and (upper is None or b <= upper):   # volume: the one tier the whole quantity reaches
            total = b * Fraction(unit) + Fraction(flat)
        lower = upper if upper is not None else lower
    return b, total


def _round(x: Fraction, rounding: str) -> int:
    """Python's round() of a Fraction is half-even; half-up (x >= 0) is floor(x + 1/2)."""
    return round(x) if rounding == "half_even" else (2 * x.numerator + x.denominator) // (2 * x.denominator)


MODELS = ["per_unit", "graduated", "volume", "package_up", "package_down"]
# quantities: included + each tier bound exactly, one unit of 10^-12 either side, zero, the included edge
EDGES = [Decimal(0), INCLUDED, INCLUDED + Decimal("1e-12"), INCLUDED + Decimal("2.5"),
         INCLUDED + Decimal("2.500000000001"),
         INCLUDED + Decimal("2.499999999999"), INCLUDED + Decimal("10"), INCLUDED + Decimal("10.000000000001"),
         INCLUDED + Decimal("5"), INCLUDED + Decimal("7.5")]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=st.sampled_from(MODELS), currency=st.sampled_from(["usd", "jpy"]),
       rounding=st.sampled_from(["half_up", "half_even"]),
       quantity=st.one_of(st.sampled_from(EDGES),
                          st.decimals(min_value=0, max_value=10**6, places=12, allow_nan=False, allow_infinity=False)))
# volume at a tier's upper bound (1.5 + 2.5 = 4 -> billable 2.5, all in tier 1: 2.5 x 1.000000000007 + 0.3
# = 2.8000000000175 -> 2.80; in tier 2 it would be 0.625) and one unit past it (tier 2: 0.625000000000250)
@example(model="volume", currency="usd", rounding="half_up", quantity=Decimal("4"))
@example(model="volume", currency="usd", rounding="half_up", quantity=Decimal("4.000000000001"))
@example(model="volume", currency="usd", rounding="half_up", quantity=Decimal("11.5"))
@example(model="volume", currency="usd", rounding="half_up", quantity=Decimal("11.500000000001"))
# graduated at 11.5 (billable 10): 2.5 x 1.000000000007 + 0.3 + 7.5 x 0.25 = 4.6750000000175 -> 4.68;
# past 10 the third tier's flat 1.01 comes in
@example(model="graduated", currency="usd", rounding="half_even", quantity=Decimal("11.5"))
@example(model="graduated", currency="usd", rounding="half_even", quantity=Decimal("11.500000000001"))
# package at an exact multiple: billable 5 = 2 packages up or down (1.40); 5.000000000001 up = 3 (2.10)
@example(model="package_up", currency="usd", rounding="half_up", quantity=Decimal("6.5"))
@example(model="package_up", currency="usd", rounding="half_up", quantity=Decimal("6.500000000001"))
@example(model="package_down", currency="jpy", rounding="half_up", quantity=Decimal("6.499999999999"))
# ties in the minor unit: volume tier 2 at billable 3.06 (q 4.56) = 0.765 = 76.5 cents: half_up 77, half_even 76
@example(model="volume", currency="usd", rounding="half_even", quantity=Decimal("4.56"))
@example(model="volume", currency="usd", rounding="half_up", quantity=Decimal("4.56"))
# jpy: volume tier 3 at billable 12 = 1.5 + 1.01 = 2.51 -> 3 yen; tier 2 at billable 6 = 1.5 yen -> 2 either way
@example(model="volume", currency="jpy", rounding="half_even", quantity=Decimal("7.5"))
@example(model="volume", currency="jpy", rounding="half_even", quantity=Decimal("13.5"))
def test_usage_models_match_an_exact_reference(make_rules, rate_q, model, currency, rounding, quantity):
    """Kills m07/m08 (minor-unit divisor), p01-p05, p08, p09 (tier units and bounds), p13/p14 (packages),
    p24/p40 (included), and the rounding mutants m01-m06: every usage line's billable quantity, exact
    amount and rounded minor amount equal a Fraction computation of Stripe's definitions."""
    rules = make_rules(_charge_yaml(model), currency=currency, rounding=rounding)
    billable, exact = _reference(model, quantity)
    line = rate_q(rules, {0: quantity}).row(0, named=True)
    assert Fraction(line["billable_quantity"]) == billable
    assert Fraction(line["amount_unrounded"]) == exact   # unprorated amounts are exact at 24 decimals
    digits = 0 if currency == "jpy" else 2
    minor = _round(exact * 10**digits, rounding)
    assert line["amount_minor"] == minor
    assert line["amount"] == Decimal(minor).scaleb(-digits)


def test_volume_and_graduated_at_a_fractional_tier_bound_by_hand(make_rules, rate_q):
    """Hand-worked anchors for the reference above (billable = q - 1.5 included):
    volume q 4 -> billable 2.5, on tier 1's upper bound (inclusive): 2.5 x 1.000000000007 + 0.3 flat =
    2.8000000000175 -> 2.80; q 4.000000000001 -> billable 2.500000000001 in tier 2: x 0.25 =
    0.62500000000025 -> 0.63. graduated q 11.5 -> billable 10: 2.5000000000175 + 0.3 + 7.5 x 0.25 =
    4.6750000000175 -> 4.68 (tier 3's 1.01 not reached)."""
    volume = make_rules(_charge_yaml("volume"))
    at = rate_q(volume, {0: "4"}).row(0, named=True)
    assert (at["amount_unrounded"], at["amount_minor"]) == (Decimal("2.8000000000175"), 280)
    past = rate_q(volume, {0: "4.000000000001"}).row(0, named=True)
    assert (past["amount_unrounded"], past["amount_minor"]) == (Decimal("0.62500000000025"), 63)
    graduated = make_rules(_charge_yaml("graduated"))
    g = rate_q(graduated, {0: "11.5"}).row(0, named=True)
    assert (g["amount_unrounded"], g["amount_minor"]) == (Decimal("4.6750000000175"), 468)
    assert [t["tier"] for t in json.loads(g["tiers"])] == [1, 2]


# --- the largest amount a line holds ------------------------------------------------------------------------

def test_a_line_of_exactly_the_largest_amount_is_rated_and_one_unit_more_is_refused(make_rules, rate_q):
    """Kills p10 (`major > LIMIT // 10^24` -> `>=`). LIMIT = 10^38 - 1, so a line holds up to
    99,999,999,999,999.999... major units; the tiers' whole major units may sum to 99,999,999,999,999.
    Graduated, 1.00 a unit in two tiers (5e13 + 49,999,999,999,999 units): 99,999,999,999,999.00 exactly,
    9,999,999,999,999,900 cents. 10^14 units (10^14 dollars) is refused."""
    rules = make_rules("""
        - meter: api_calls
          model: graduated
          tiers:
            - {up_to: "50000000000000", unit_amount: "1"}
            - {up_to: null, unit_amount: "1"}
    """)
    line = rate_q(rules, {0: 99_999_999_999_999}).row(0, named=True)
    assert line["amount"] == Decimal("99999999999999.00")
    assert line["amount_minor"] == 9_999_999_999_999_900
    with pytest.raises(BadInputError, match="exceeds 10\\^14 major units"):
        rate_q(rules, {0: 100_000_000_000_000})


# --- quantities ----------------------------------------------------------------------------------------------

def test_several_quantity_rows_of_one_line_add_up(make_rules):
    """Kills p22 (rows of a line combined by max instead of sum): 3 + 4 + 0.5 calls at 0.10 = 0.75
    (the largest row alone, 0.40)."""
    rules = make_rules('- {name: calls, meter: api_calls, model: per_unit, unit_amount: "0.10"}')
    seg = one_segment()
    out = _rate(rules, [seg], [(seg, 0, "3"), (seg, 0, "4"), (seg, 0, "0.5")])
    assert out.select("quantity", "amount_minor").rows() == [(Decimal("7.5"), 75)]


def test_the_smallest_negative_quantity_is_refused(make_rules, rate_q):
    """Kills p23 (`q12 < 0` -> `q12 < -1`): -0.000000000001 (one unit of 10^-12) is negative, refused."""
    rules = make_rules('- {name: calls, meter: api_calls, model: per_unit, unit_amount: "0.01"}')
    # written out in plain digits (it was Python's default text for that Decimal, -1E-12)
    with pytest.raises(BadInputError,
                       match="negative quantity -0\\.000000000001 for customer c1, charge 'calls'"):
        rate_q(rules, {0: "-0.000000000001"})


def test_flat_and_minimum_lines_have_no_quantity(make_rules, rate_q):
    """Kills p39 (billable_quantity kept for every model): only usage lines carry a (billable) quantity;
    a flat fee and a minimum show null in both. 2 calls x 0.01 = 0.02, fee 5.00, minimum 1.00 - 0.02."""
    rules = make_rules("""
        - {name: calls, meter: api_calls, model: per_unit, unit_amount: "0.01"}
        - {name: fee, model: flat, amount: "5.00"}
        - {name: min, model: minimum, amount: "1.00"}
    """)
    out = rate_q(rules, {0: 2})
    assert out.select("charge", "quantity", "billable_quantity", "amount_minor").rows() == [
        ("calls", Decimal(2), Decimal(2), 2), ("fee", None, None, 500), ("min", None, None, 98)]


# --- a gauge in an unsplit period ----------------------------------------------------------------------------

@pytest.mark.parametrize("cycle_days", [None, 31])
def test_a_gauge_in_an_unsplit_period_is_not_prorated(make_rules, rate_q, segment, cycle_days):
    """Kills p18 (`segment_days < period_len` -> `<=`) and p21 (compared with the cycle's days instead of
    the period's): a peak of 10 GB at 1.00 in the period Oct 25 - Nov 20 (26 days, unsplit; with
    cycle_days 31 it is a first, partial period) is 10.00, with no {segment_days, period_days} part in
    its tiers. (Either mutant prorates it by 26/26, same amount, but marks it as a split gauge, which
    `service` reads to compare closed periods' gauge usage.)"""
    rules = make_rules('- {name: storage, meter: storage_gb, model: per_unit, unit_amount: "1.00"}')
    period = (dt.date(2026, 10, 25), dt.date(2026, 11, 20))
    seg = segment(start=period[0], end=period[1], period=period) | ({"cycle_days": cycle_days} if cycle_days else {})
    line = rate_q(rules, {0: 10}, seg).row(0, named=True)
    assert line["amount_minor"] == 1000
    assert json.loads(line["tiers"]) == [{"tier": 1, "units": "10", "unit_amount": "1", "flat_amount": "0",
                                          "amount": "10"}]


# --- the minimum ---------------------------------------------------------------------------------------------

def _two_plans(tmp_path):
    """Plan `a`: calls at 1.00, no minimum; plan `b`: calls at 1.00 and a 31.00 minimum (usd, half_up)."""
    calls = '- {name: calls, meter: api_calls, model: per_unit, unit_amount: "1.00"}'
    root = write_rules(tmp_path / "rules2", plan_yaml(calls, plan="a"), "a")
    (root / "plans" / "b.yaml").write_text(plan_yaml("""
        - {name: calls, meter: api_calls, model: per_unit, unit_amount: "1.00"}
        - {name: min, model: minimum, amount: "31.00"}
    """, plan="b"))
    return load_rules(root)


def test_after_a_plan_change_only_the_plans_own_usage_meets_its_minimum(tmp_path):
    """Kills p27 (the minimum keyed by customer and period without the plan). October: plan a Oct 1-16
    (50 calls = 50.00), plan b Oct 16 - Nov 1 (16 days, no usage). b's commitment is 31 x 16/31 = 16.00
    and b had no usage: true-up 16.00. Counting a's 50.00 against it billed 0."""
    rules = _two_plans(tmp_path)
    mid = dt.date(2026, 10, 16)
    a = one_segment(plan="a", version="v1", end=mid)
    b = one_segment(plan="b", version="v1", start=mid)
    out = _rate(rules, [a, b], [(a, 0, 50)])
    assert out.select("plan", "charge", "amount_minor").rows() == [
        ("a", "calls", 5000), ("b", "calls", 0), ("b", "min", 1600)]


@pytest.mark.parametrize(("rounding", "expected"), [("half_up", 1), ("half_even", 0)])
def test_a_minimum_with_more_decimals_than_the_currency_trues_up_its_fraction(make_rules, rate_q, rounding, expected):
    """Kills p29 (the largest minimum floored to cents in the `below_minimum` shortcut, instead of
    ceiled). Minimum 100.005, usage 100 calls x 1.00 = 100.00: the true-up is 0.005 = half a cent,
    1 cent half_up, 0 half_even. With the floor, 10000 cents was not below 10000 and no true-up was
    computed at all (0 in both modes)."""
    rules = make_rules("""
        - {name: calls, meter: api_calls, model: per_unit, unit_amount: "1.00"}
        - {name: min, model: minimum, amount: "100.005"}
    """, rounding=rounding)
    out = rate_q(rules, {0: 100})
    assert out["amount_minor"].to_list() == [10000, expected]
    assert out["amount_unrounded"].to_list()[1] == Decimal("0.005")


def test_a_first_partial_period_with_usage_trues_up_its_prorated_minimum(make_rules, rate_q, segment):
    """Kills p31 (usage scaled by the period's days instead of the cycle's in the true-up). Period
    Oct 25 - Nov 20 (26 days) of a 31-day cycle, minimum 62.00, 10 calls x 1.00 = 10.00: commitment
    62 x 26/31 = 52.00, true-up 52.00 - 10.00 = 42.00. The mutant gave (62 - 10) x 26/31 = 43.61."""
    rules = make_rules("""
        - {name: calls, meter: api_calls, model: per_unit, unit_amount: "1.00"}
        - {name: min, model: minimum, amount: "62.00"}
    """)
    period = (dt.date(2026, 10, 25), dt.date(2026, 11, 20))
    seg = segment(start=period[0], end=period[1], period=period) | {"cycle_days": 31}
    out = rate_q(rules, {0: 10}, seg)
    assert out["amount_minor"].to_list() == [1000, 4200]
    assert out["amount_unrounded"].to_list()[1] == Decimal(42)


def test_versions_with_different_minimums_compare_usage_with_the_larger(tmp_path):
    """Kills p32 (the `below_minimum` shortcut taken against the smallest version's minimum). v1 (Oct 1-17,
    16 days) commits to 100.00, v2 (Oct 17 - Nov 1, 15 days) to 200.00: 100 x 16/31 + 200 x 15/31 =
    4600/31 = 148.387... 120 calls x 1.00 = 120.00 of usage, so the true-up is 4600/31 - 120 = 28.387...
    -> 28.39 on v2's line. Against v1's 100.00 the usage looked sufficient and nothing was trued up."""
    text = "plan: t\ncurrency: usd\nversions:\n"
    for version, start, minimum in (("v1", "2026-01-01", "100.00"), ("v2", "2026-10-17", "200.00")):
        text += (f'  - version: "{version}"\n    effective_from: {start}\n    rounding: half_up\n    charges:\n'
                 '      - {name: calls, meter: api_calls, model: per_unit, unit_amount: "1.00"}\n'
                 f'      - {{name: min, model: minimum, amount: "{minimum}"}}\n')
    rules = load_rules(write_rules(tmp_path / "rules", text))
    split = dt.date(2026, 10, 17)
    v1 = one_segment(end=split)
    v2 = one_segment(version="v2", start=split)
    out = _rate(rules, [v1, v2], [(v1, 0, 120)])
    assert out.select("plan_version", "charge", "amount_minor").rows() == [
        ("v1", "calls", 12000), ("v1", "min", 0), ("v2", "calls", 0), ("v2", "min", 2839)]
    mins = out.filter(pl.col("charge") == "min")
    # 880/31 = 28.387096774193548387096774|19... truncated at 24 decimals
    assert mins["amount_unrounded"].to_list() == [Decimal(0), Decimal("28.387096774193548387096774")]
    # the audit (kills p43, the usage written in minor units as if major, and p44): the commitment
    # 4600/31 truncated at 24 decimals, from the period's first segment, against 120.00 of usage
    assert [json.loads(t) for t in mins["tiers"]] == [
        [{"minimum": "100", "segment_days": 16, "cycle_days": 31, "true_up_on_segment": "2026-10-17"}],
        [{"minimum": "200", "segment_days": 15, "cycle_days": 31, "commitment": "148.387096774193548387096774",
          "commitment_from": "2026-10-01", "usage_amount": "120"}]]


def test_a_split_gauge_without_usage_has_a_valid_breakdown(tmp_path):
    """Kills p42 (the separator before the gauge's {segment_days, period_days} written even when no tier
    was reached): October split on Oct 17 (16 + 15 days), no storage at all. Each storage line is 0.00
    and its tiers are exactly the proration part: `[{"segment_days":16,"period_days":31}]`, valid JSON
    (the mutant wrote `[,{...}]`)."""
    text = "plan: t\ncurrency: usd\nversions:\n"
    for version, start in (("v1", "2026-01-01"), ("v2", "2026-10-17")):
        text += (f'  - version: "{version}"\n    effective_from: {start}\n    rounding: half_up\n    charges:\n'
                 '      - {name: storage, meter: storage_gb, model: per_unit, unit_amount: "1.00"}\n')
    rules = load_rules(write_rules(tmp_path / "rules", text))
    split = dt.date(2026, 10, 17)
    v1, v2 = one_segment(end=split), one_segment(version="v2", start=split)
    out = _rate(rules, [v1, v2], [])
    assert out["amount_minor"].to_list() == [0, 0]
    assert out["tiers"].to_list() == ['[{"segment_days":16,"period_days":31}]',
                                      '[{"segment_days":15,"period_days":31}]']


def test_a_usage_charge_without_a_quantity_row_has_quantity_zero(make_rules, rate_q):
    """Kills p45 (a usage line with no quantity row left with a null quantity): every usage charge is
    listed with quantity 0 and billable 0 (a flat fee, by contrast, has none)."""
    rules = make_rules("""
        - {name: calls, meter: api_calls, model: per_unit, unit_amount: "0.01"}
        - {name: tok, meter: tokens, model: package, package_size: 1000, package_amount: "0.07"}
        - {name: fee, model: flat, amount: "5.00"}
    """)
    out = rate_q(rules, {})
    assert out.select("charge", "quantity", "billable_quantity", "amount_minor").rows() == [
        ("calls", Decimal(0), Decimal(0), 0), ("tok", Decimal(0), Decimal(0), 0), ("fee", None, None, 500)]


# --- a defect: the over-limit refusal of a tiered line named as a gauge's ------------------------------------

def test_tiers_summing_just_past_the_limit_are_refused_as_tier_amounts(make_rules, rate_q):
    """Graduated API calls (a count meter, no gauge), 1.00 a unit, tiers split at 49,999,999,999,999.9:
    100,000,000,000,000.1 calls are 49,999,999,999,999.9 + 50,000,000,000,000.2 dollars. The whole major
    units of the tiers sum to 99,999,999,999,999 (within the 10^14 - 1 a line holds), their fractions
    carry the line to 100,000,000,000,000.1, past LIMIT = 10^38 - 1 units of 10^-24. The line must be
    refused as the tiers' sum. The `_tiered` check counted whole units only, so the gauge proration's
    `checked_mul` (by 1 day, on every unsplit line) refused it, and the message read `gauge amount: ...`
    for a charge that is no gauge. 99,999,999,999,999.9 calls still rate exactly."""
    rules = make_rules("""
        - meter: api_calls
          model: graduated
          tiers:
            - {up_to: "49999999999999.9", unit_amount: "1"}
            - {up_to: null, unit_amount: "1"}
    """)
    assert rate_q(rules, {0: "99999999999999.9"})["amount_minor"].item() == 9_999_999_999_999_990
    with pytest.raises(BadInputError, match="^tier amount \\(the tiers together\\): an amount exceeds 10\\^14 major "
                       "units in one line .*; customer c1, period 2026-10-01, charge 'api_calls'"):
        rate_q(rules, {0: "100000000000000.1"})
