"""Validator refusals and rule defaults that no other test pinned (found by a hand mutation audit).

Each test names the mutant it kills: a plausible one-character bug in `metering/rules/`.
"""

from __future__ import annotations

import datetime as dt

import pytest

from metering.rules.plans import check_rules
from tests.metering.rules.test_rules_validate import errors_for, plan, rules_dir


_EFFECTIVE_FROM = "    effective_from: 2026-01-01\n"

# (charges, the one error's ending); each case kills the mutant its comment names
REFUSALS = {
    # dropping `positive=True` for `up_to`: a tier up to 0 prices nothing
    "a tier up to zero": ("""
        - meter: seats
          model: volume
          tiers:
            - {up_to: 0, unit_amount: "7"}
            - {up_to: null, unit_amount: "5"}
    """, "t.yaml:10: versions[0].charges[0].tiers[0].up_to: must be greater than zero"),
    # a `_DECIMAL_RE` that accepts a sign: a negative unit price would credit usage
    "a negative amount": ('- {meter: api_calls, model: per_unit, unit_amount: "-0.01"}',
                          "t.yaml:7: versions[0].charges[0].unit_amount: '-0.01' is not a non-negative decimal "
                          "amount (digits, optionally a point and decimals)"),
    # `value < 0` -> `value < -1` in `_quantity`: `included: -1` would bill one unit more than used
    "a negative allowance": ('- {meter: api_calls, model: per_unit, unit_amount: "0.01", included: -1}',
                             "t.yaml:7: versions[0].charges[0].included: -1 is negative"),
    # removing the one-minimum check: two commitments per period and plan have no defined true-up
    "a second minimum": ("""
        - {name: m1, model: minimum, amount: "10"}
        - {name: m2, model: minimum, amount: "20"}
    """, "t.yaml:8: versions[0].charges[1]: a version may have only one minimum"),
    # removing the duplicate-name check: two charges named alike share one Stripe lookup key
    "a charge name used twice": ("""
        - {name: calls, meter: api_calls, model: per_unit, unit_amount: "0.01", filters: {region: eu}}
        - {name: calls, meter: api_calls, model: per_unit, unit_amount: "0.02", filters: {region: us}}
    """, "t.yaml:8: versions[0].charges[1].name: charge name 'calls' is used twice in this version (also "
         "charges[0]); give each its own `name`"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_refusal_names_its_field(tmp_path, case):
    charges, ending = REFUSALS[case]
    errs = errors_for(tmp_path, plan(charges))
    assert len(errs) == 1
    assert errs[0].endswith(ending)


def test_an_effective_to_equal_to_effective_from_is_refused(tmp_path):
    """Kills `end <= start` -> `end < start`: a version ending the day it starts is in force at no instant."""
    text = plan('- {model: flat, amount: "1"}').replace(_EFFECTIVE_FROM, _EFFECTIVE_FROM + "    effective_to: 2026-01-01\n")
    errs = errors_for(tmp_path, text)
    assert len(errs) == 1
    assert errs[0].endswith("t.yaml:6: versions[0].effective_to: 2026-01-01 is not after effective_from 2026-01-01")


def test_rounding_defaults_to_half_up(tmp_path):
    """DESIGN.md: "half-up unless the plan says otherwise". Kills a default of half_even."""
    rules, errs = check_rules(rules_dir(tmp_path, plan('- {model: flat, amount: "1"}')))
    assert errs == []
    assert rules.plans["t"].versions[0].rounding == "half_up"


def test_a_version_is_in_force_from_its_effective_from_day(tmp_path):
    """Kills `effective_from <= day` -> `<` in `Plan.version_at`: on the day v2 starts, v2 is in force
    (half-open [effective_from, effective_to)), not v1."""
    rules, errs = check_rules(rules_dir(tmp_path, plan('- {model: flat, amount: "1"}', extra_versions="""
      - version: "v2"
        effective_from: 2026-10-01
        charges:
          - {model: flat, amount: "2"}
    """)))
    assert errs == []
    p = rules.plans["t"]
    assert p.version_at(dt.date(2025, 12, 31)) is None
    assert p.version_at(dt.date(2026, 1, 1)).version == "v1"
    assert p.version_at(dt.date(2026, 9, 30)).version == "v1"
    assert p.version_at(dt.date(2026, 10, 1)).version == "v2"


def _two_dimension_rules(tmp_path, charges: str):
    root = rules_dir(tmp_path, plan(charges))
    with (root / "meters.yaml").open("a") as f:
        f.write("  calls2: {aggregation: count, dimensions: [region, tier]}\n")
    return check_rules(root)[1]


def test_filters_disjoint_in_any_one_dimension_do_not_overlap(tmp_path):
    """Kills `_filters_overlap` looking at only one shared dimension: eu/gold and eu/silver share region
    eu but no tier, so no unit is priced twice."""
    assert _two_dimension_rules(tmp_path, """
        - {name: g, meter: calls2, model: per_unit, unit_amount: "1", filters: {region: eu, tier: gold}}
        - {name: s, meter: calls2, model: per_unit, unit_amount: "2", filters: {region: eu, tier: silver}}
    """) == []


def test_filters_on_different_dimensions_overlap(tmp_path):
    """{region: eu} and {tier: gold} both take eu/gold units: refused."""
    errs = _two_dimension_rules(tmp_path, """
        - {name: eu, meter: calls2, model: per_unit, unit_amount: "1", filters: {region: eu}}
        - {name: gold, meter: calls2, model: per_unit, unit_amount: "2", filters: {tier: gold}}
    """)
    assert len(errs) == 1
    assert errs[0].endswith("t.yaml:8: versions[0].charges[1]: prices the same units as charges[0] (eu): both charge "
                            "meter calls2 for tier in ['gold'] vs region in ['eu']; make their filters disjoint")
