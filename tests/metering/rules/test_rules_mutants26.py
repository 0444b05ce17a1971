"""Rule-file validation and loading that no earlier test pinned (hand mutation audit 26, second pass
over `metering/rules/`: plans.py, meters.py, model.py, yaml_marks.py).

Every refusal is checked for its file, line, field path and message (docs/rating.md, "Validation":
`file:line: path.to.field: what is wrong`); every acceptance for the value the rules then hold.
Each test names the mutant(s) it kills: a plausible small bug in `metering/rules/`.

Plan files are written with `plan()` from test_rules_validate: line 1 `plan: t`, 2 `currency`, 3
`versions:`, 4 `- version: "v1"`, 5 `effective_from: 2026-01-01`, 6 `charges:`, 7 the first charge.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from metering.errors import BadInputError
from metering.rules.meters import Meter, check_meters, load_meters
from metering.rules.model import Tier, minor_digits
from metering.rules.plans import RATED_METER, check_rules, load_rules
from tests.metering.rules.test_rules_validate import errors_for, plan, rules_dir

_V1 = '  - version: "v1"\n'
_FROM = "    effective_from: 2026-01-01\n"
_FLAT = '- {model: flat, amount: "1"}'


def _one_error(errs: list[str], ending: str) -> None:
    assert len(errs) == 1, errs
    assert errs[0].endswith(ending), errs[0]


# --- refusals: (plan text, the one error's ending) ------------------------------------------------

REFUSALS = {
    # P04: without the float branch, `included: 1.5` got the generic "not a quantity" message
    "a float quantity": (plan('- {meter: api_calls, model: per_unit, unit_amount: "1", included: 1.5}'),
                         't.yaml:7: versions[0].charges[0].included: 1.5 is a YAML float (inexact); write an '
                         'integer or a quoted decimal string, e.g. "1.5"'),
    # P05: a YAML boolean is an int in Python: `included: true` became one free unit
    "a boolean quantity": (plan('- {meter: api_calls, model: per_unit, unit_amount: "1", included: true}'),
                           "t.yaml:7: versions[0].charges[0].included: True is not a quantity"),
    # P06: `amount: true` is not the YAML integer 1 either
    "a boolean amount": (plan("- {model: flat, amount: true}"),
                         't.yaml:7: versions[0].charges[0].amount: True is not a decimal amount; write a quoted '
                         'decimal string such as "0.002"'),
    # P07: a timestamp is a datetime, a subclass of date: it was taken as the start date
    "a timestamp as effective date": (plan(_FLAT).replace(_FROM, "    effective_from: 2026-01-01T00:00:00\n"),
                                      "t.yaml:5: versions[0].effective_from: expected a date (YYYY-MM-DD, UTC "
                                      "midnight), not a timestamp"),
    # Y03: a date-shaped scalar that is no date stays text and is reported, not a reader crash
    "a date that does not exist": (plan(_FLAT).replace(_FROM, "    effective_from: 2026-02-30\n"),
                                   "t.yaml:5: versions[0].effective_from: '2026-02-30' is not a date (YYYY-MM-DD)"),
    # P09: `filters: {}` restricts nothing; it is refused rather than read as "all units"
    "empty filters": (plan('- {meter: api_calls, model: per_unit, unit_amount: "1", filters: {}}'),
                      "t.yaml:7: versions[0].charges[0].filters: expected a mapping of dimension to a value or a "
                      "list of values"),
    # P11: a filter value listed twice
    "a filter value twice": (plan('- {meter: api_calls, model: per_unit, unit_amount: "1", filters: {region: [eu, eu]}}'),
                             "t.yaml:7: versions[0].charges[0].filters.region: a value is listed twice"),
    # P12: an empty list of values would select no unit at all
    "an empty filter list": (plan('- {meter: api_calls, model: per_unit, unit_amount: "1", filters: {region: []}}'),
                             "t.yaml:7: versions[0].charges[0].filters.region: expected a non-empty string or list "
                             "of strings"),
    # P13: an empty string value
    "an empty filter value": (plan('- {meter: api_calls, model: per_unit, unit_amount: "1", filters: {region: ""}}'),
                              "t.yaml:7: versions[0].charges[0].filters.region: expected a non-empty string or "
                              "list of strings"),
    # P10: a filter on a charge whose meter is unknown: one error (the meter), no AttributeError
    "filters under an unknown meter": (plan('- {meter: nope, model: per_unit, unit_amount: "1", filters: {region: eu}}'),
                                       "t.yaml:7: versions[0].charges[0].meter: unknown meter 'nope' (declared in "
                                       "meters.yaml: active_users, api_calls, seats, storage_gb, tokens)"),
    # P26: a list as the meter name is unknown, not a TypeError (unhashable list)
    "a list as meter": (plan('- {meter: [api_calls], model: per_unit, unit_amount: "1"}'),
                        "t.yaml:7: versions[0].charges[0].meter: unknown meter ['api_calls'] (declared in "
                        "meters.yaml: active_users, api_calls, seats, storage_gb, tokens)"),
    # P16: a misspelt tier field (`price`) was silently ignored
    "an unknown tier field": (plan("""
        - meter: seats
          model: volume
          tiers:
            - {up_to: null, unit_amount: "5", price: "4"}
    """), "t.yaml:10: versions[0].charges[0].tiers[0].price: unknown tier field (allowed: up_to, unit_amount, "
          "flat_amount)"),
    # P20: a tier with no price at all would price its units at zero
    "a tier without a price": (plan("""
        - meter: seats
          model: volume
          tiers:
            - {up_to: null}
    """), "t.yaml:10: versions[0].charges[0].tiers[0]: a tier needs unit_amount, flat_amount or both"),
    # P19: one bad tier is one error: the checks of the tiers' order do not run on what is left
    # (without the early return the float tier dropped out and `up_to: 10` looked like a bounded last tier)
    "one bad tier, one error": (plan("""
        - meter: seats
          model: graduated
          tiers:
            - {up_to: 10, unit_amount: "1"}
            - {up_to: null, unit_amount: 0.5}
    """), "t.yaml:11: versions[0].charges[0].tiers[1].unit_amount: 0.5 is a YAML float (inexact); write amounts as "
          'quoted decimal strings, e.g. "0.5"'),
    # P22: a package charge without its price
    "a package without package_amount": (plan("- {meter: tokens, model: package, package_size: 1000}"),
                                         "t.yaml:7: versions[0].charges[0]: a package charge needs package_amount"),
    # P23: a graduated charge without a meter prices nothing
    "a graduated charge without meter": (plan("""
        - model: graduated
          tiers:
            - {up_to: null, unit_amount: "5"}
    """), "t.yaml:7: versions[0].charges[0]: a graduated charge needs meter"),
    # P25: a blank name is no name (its Stripe lookup key would end in spaces)
    "a blank charge name": (plan('- {name: "  ", model: flat, amount: "1"}'),
                            "t.yaml:7: versions[0].charges[0].name: expected a non-empty string"),
    # P29: a version with no charges
    "no charges": (plan("[]").replace("    charges:\n      []", "    charges: []"),
                   "t.yaml:6: versions[0].charges: expected a non-empty list of charges"),
    # P33: a plan with no versions
    "no versions": ("plan: t\ncurrency: usd\nversions: []\n", "t.yaml:3: versions: expected a non-empty list of versions"),
    # Y04: YAML 1.1 reads `yes` as true: a boolean key is not a field name (the problem is the
    # document's, line 1; the message names the key's line, 9)
    "a boolean key": (plan(_FLAT) + "yes: 1\n",
                      "t.yaml:1: (document): line 9: mapping keys must be plain names"),
    # Y05: an empty plan file is reported, not a crash on a None node
    "an empty file": ("", "t.yaml: (document): expected a mapping with plan, currency and versions"),
    # Y02: an alias inside its own anchor would recurse without end
    "an alias that contains itself": (plan(_FLAT) + "description: &x [*x]\n",
                                      "t.yaml:9: (document): an alias that contains itself: write the values out"),
    # Y07: a duplicate key keeps its first value; the error stands on the first one's line (8) and names
    # the duplicate's (9) (without the `continue` the second value replaced the first, and its line too)
    "a duplicate key": (plan("""
        - model: flat
          amount: "1"
          amount: "2"
    """), "t.yaml:8: versions[0].charges[0].amount: duplicate key 'amount' (line 9)"),
    # P34: two versions starting the same day are one error (the duplicate date), even when the first
    # has an explicit end: "overlapping" the version that starts with it adds nothing
    "a duplicate date with an explicit end": (plan(_FLAT, extra_versions="""
      - version: "v2"
        effective_from: 2026-01-01
        charges:
          - {model: flat, amount: "2"}
    """).replace(_FROM, _FROM + "    effective_to: 2026-03-01\n"),
        "t.yaml:10: versions[1].effective_from: duplicate effective date 2026-01-01: versions[0] starts the same "
        "day; every instant must resolve to exactly one version"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_refusal_names_file_line_and_field(tmp_path, case):
    text, ending = REFUSALS[case]
    _one_error(errors_for(tmp_path, text), ending)


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    """Y06: bytes that are not UTF-8 are bad input naming the file (0xff cannot start a UTF-8
    sequence: 'invalid start byte' at byte 0), not a UnicodeDecodeError traceback."""
    root = rules_dir(tmp_path, plan(_FLAT))
    (root / "plans" / "t.yaml").write_bytes(b"\xffplan: t\n")
    assert check_rules(root)[1] == [f"{root}/plans/t.yaml: not UTF-8 text (invalid start byte at byte 0)"]


# --- acceptances and the values the rules then hold -----------------------------------------------

def _accepted(tmp_path, text: str):
    rules, errs = check_rules(rules_dir(tmp_path, text))
    assert errs == []
    return rules.plans["t"].versions


def test_twelve_decimal_places_are_allowed(tmp_path):
    """P01: the limit is 12 places (MAX_DECIMALS), inclusive: 0.000000000001 = 10^-12 is a price."""
    [v] = _accepted(tmp_path, plan('- {meter: api_calls, model: per_unit, unit_amount: "0.000000000001"}'))
    assert v.charges[0].unit_amount == Decimal("1e-12")


def test_a_quoted_quantity_may_exceed_the_amount_limit(tmp_path):
    """P03: quantities are limited at 10^26 (DECIMAL(38, 12)), amounts at 10^12: a quoted allowance of
    10^12 units is a quantity, not an amount."""
    [v] = _accepted(tmp_path, plan('- {meter: api_calls, model: per_unit, unit_amount: "1", included: "1000000000000"}'))
    assert v.charges[0].included == Decimal(10**12)


def test_a_quoted_effective_date_is_a_date(tmp_path):
    """P08: `effective_from: "2026-01-01"` (quoted) is the same date as unquoted."""
    [v] = _accepted(tmp_path, plan(_FLAT).replace(_FROM, '    effective_from: "2026-01-01"\n'))
    assert v.effective_from == dt.date(2026, 1, 1)


@pytest.mark.parametrize("text", ["20260101", "2026-W01-1", "2026-001", "２０２６-01-01"])
def test_a_quoted_date_in_another_iso_form_is_refused(tmp_path, text):
    """docs/rating.md: dates are YYYY-MM-DD. Python's `date.fromisoformat` also reads the basic form,
    week and ordinal dates (`2026-W01-1` is 2025-12-29, a Monday in another year) and so did the rules;
    each is refused on line 5, as an unquoted `20260101` (a number) was already."""
    errs = errors_for(tmp_path, plan(_FLAT).replace(_FROM, f'    effective_from: "{text}"\n'))
    _one_error(errs, f"t.yaml:5: versions[0].effective_from: {text!r} is not a date (YYYY-MM-DD)")


def test_effective_to_null_means_no_end(tmp_path):
    """P28: `effective_to: null` is the same as leaving it out: open-ended."""
    [v] = _accepted(tmp_path, plan(_FLAT).replace(_FROM, _FROM + "    effective_to: null\n"))
    assert v.effective_to is None and v.explicit_end is None


def test_inf_marks_the_unbounded_last_tier(tmp_path):
    """P17: Stripe writes the last tier's bound as `inf` (stripe-facts.md); the rules accept it as null.
    P18: a tier that names only unit_amount has flat_amount 0 (and the reverse)."""
    [v] = _accepted(tmp_path, plan("""
        - meter: seats
          model: graduated
          tiers:
            - {up_to: 10, unit_amount: "7"}
            - {up_to: inf, flat_amount: "50"}
    """))
    assert v.charges[0].tiers == (Tier(up_to=Decimal(10), unit_amount=Decimal(7), flat_amount=Decimal(0)),
                                  Tier(up_to=None, unit_amount=Decimal(0), flat_amount=Decimal(50)))


def test_a_charge_may_have_a_description(tmp_path):
    """P21: `description` is allowed on every charge, as on plans and versions."""
    [v] = _accepted(tmp_path, plan('- {model: flat, amount: "1", description: platform fee}'))
    assert v.charges[0].name == "flat"


def test_the_version_name_is_stored_trimmed(tmp_path):
    """P27: `version: " v1 "` is version v1 (the lookup key already used the trimmed name)."""
    [v] = _accepted(tmp_path, plan(_FLAT).replace(_V1, '  - version: " v1 "\n'))
    assert v.version == "v1"


def test_a_lookup_key_of_exactly_200_characters_is_allowed(tmp_path):
    """P31: Stripe allows 200 characters: `metering:t:v1:` is 14, so a 186-character name fits exactly."""
    name = "n" * 186
    [v] = _accepted(tmp_path, plan(f'- {{name: {name}, model: flat, amount: "1"}}'))
    assert len(f"metering:t:v1:{v.charges[0].name}") == 200


def test_an_upper_case_currency_is_stored_lower_case(tmp_path):
    """P32: `currency: USD` is usd everywhere (Stripe's currency codes are lower case)."""
    rules, errs = check_rules(rules_dir(tmp_path, plan(_FLAT, currency="USD")))
    assert errs == []
    assert rules.plans["t"].currency == "usd"
    assert rules.plans["t"].versions[0].currency == "usd"
    # D01: minor_digits takes either case
    assert (minor_digits("USD"), minor_digits("JPY")) == (2, 0)


def test_versions_written_out_of_order_are_sorted(tmp_path):
    """P35: v2 (from Jun 1) written before v1 (from Jan 1): v1 runs Jan 1 .. Jun 1, v2 from Jun 1."""
    text = textwrap.dedent("""
        plan: t
        currency: usd
        versions:
          - version: "v2"
            effective_from: 2026-06-01
            charges:
              - {model: flat, amount: "2"}
          - version: "v1"
            effective_from: 2026-01-01
            charges:
              - {model: flat, amount: "1"}
    """)
    versions = _accepted(tmp_path, text)
    assert [(v.version, v.effective_from, v.effective_to) for v in versions] == [
        ("v1", dt.date(2026, 1, 1), dt.date(2026, 6, 1)), ("v2", dt.date(2026, 6, 1), None)]


def _two_dimension_root(tmp_path, charges: str) -> Path:
    root = rules_dir(tmp_path, plan(charges))
    with (root / "meters.yaml").open("a") as f:
        f.write("  calls2: {aggregation: count, dimensions: [tier, region]}\n")
    return root


def test_filters_are_kept_sorted_by_dimension_and_value(tmp_path):
    """P14, P15: filters are canonical (dimensions sorted, values sorted): the default name is
    calls2[region=eu,tier=gold|silver] however the file orders them, and so is the content hash."""
    a = _two_dimension_root(tmp_path / "a", '- {meter: calls2, model: per_unit, unit_amount: "1", '
                                            'filters: {tier: [silver, gold], region: eu}}')
    b = _two_dimension_root(tmp_path / "b", '- {meter: calls2, model: per_unit, unit_amount: "1", '
                                            'filters: {region: eu, tier: [gold, silver]}}')
    va, vb = (load_rules(r).plans["t"].versions[0] for r in (a, b))
    assert va.charges[0].name == "calls2[region=eu,tier=gold|silver]"
    assert va.charges[0].filters == (("region", ("eu",)), ("tier", ("gold", "silver")))
    assert va.content_hash == vb.content_hash


def test_a_plan_file_may_end_in_yml(tmp_path):
    """P40: plans/<plan>.yml is read as well as .yaml."""
    root = rules_dir(tmp_path, plan(_FLAT))
    (root / "plans" / "u.yml").write_text(plan(_FLAT).replace("plan: t", "plan: u"))
    rules, errs = check_rules(root)
    assert errs == []
    assert sorted(rules.plans) == ["t", "u"]


def test_a_plan_defined_in_two_files_is_refused(tmp_path):
    """P39: t.yaml and t.yml both define plan t: the second file (sorted: .yaml before .yml) is named."""
    root = rules_dir(tmp_path, plan(_FLAT))
    (root / "plans" / "t.yml").write_text(plan('- {model: flat, amount: "2"}'))
    assert check_rules(root)[1] == [f"{root}/plans/t.yml: plan: plan 't' is defined in two files"]


# --- immutability ---------------------------------------------------------------------------------

def test_a_rated_version_of_another_plan_is_not_missing_from_this_one(tmp_path):
    """P36: plan u's rated version w1 is checked against u.yaml only, not reported missing from t.yaml."""
    root = rules_dir(tmp_path, plan(_FLAT))
    (root / "plans" / "u.yaml").write_text(plan(_FLAT).replace("plan: t", "plan: u").replace(_V1, '  - version: "w1"\n'))
    rules = load_rules(root)
    rated = {("t", "v1"): rules.version("t", "v1").content_hash, ("u", "w1"): rules.version("u", "w1").content_hash}
    assert check_rules(root, rated_hashes=rated)[1] == []


def test_a_new_version_may_start_the_day_after_the_rated_time(tmp_path):
    """P37: v1 rated through May 31 (rated_until Jun 1, the day after): v2 starting Jun 1 cuts nothing
    short; starting May 31 it would, and is refused."""
    v1 = load_rules(rules_dir(tmp_path / "one", plan(_FLAT))).version("t", "v1")
    rated, until = {("t", "v1"): v1.content_hash}, {("t", "v1"): dt.date(2026, 6, 1)}

    def with_v2(start: str) -> list[str]:
        text = plan(_FLAT, extra_versions=f"""
          - version: "v2"
            effective_from: {start}
            charges:
              - {{model: flat, amount: "2"}}
        """)
        return check_rules(rules_dir(tmp_path / start, text), rated_hashes=rated, rated_until=until)[1]

    assert with_v2("2026-06-01") == []
    _one_error(with_v2("2026-05-31"), "t.yaml:9: versions[1].effective_from: version v2 starts 2026-05-31, inside "
               "the time version v1 has already rated (through 2026-05-31): published versions are immutable, "
               "their dates included; start it on 2026-06-01 or later")


def test_load_rules_enforces_rated_hashes(tmp_path):
    """P43: `load_rules(dir, rated_hashes)` (what rating uses) refuses a rated version whose content changed."""
    root = rules_dir(tmp_path, plan(_FLAT))
    with pytest.raises(BadInputError) as info:
        load_rules(root, rated_hashes={("t", "v1"): "0" * 64})
    assert "versions[0]: version v1 of plan t has already rated usage and its content changed (hash 000000000000 ->" \
        in str(info.value)


def test_a_rated_meter_whose_dimensions_changed_is_refused(tmp_path):
    """P42, M09: api_calls priced rated lines with dimensions [region]; adding `zone` changes how its
    quantities split, so it is refused, naming meters.yaml and the meter."""
    root = rules_dir(tmp_path, plan(_FLAT))
    rated = {(RATED_METER, "api_calls"): load_meters(root)["api_calls"].definition_hash()}
    assert check_rules(root, rated_hashes=rated)[1] == []
    meters = root / "meters.yaml"
    meters.write_text(meters.read_text().replace("dimensions: [region]", "dimensions: [region, zone]"))
    errs = check_rules(root, rated_hashes=rated)[1]
    assert len(errs) == 1
    assert errs[0].startswith(f"{meters}: meters.api_calls: has already priced rated usage and its aggregation, "
                              "property, dimensions or value changed")


# --- content hash and rules hash ------------------------------------------------------------------

def test_the_content_hash_is_sha256_of_the_documented_canonical_json(tmp_path):
    """D03: the hash covers what can change an amount; a flat charge has no `included` or `filters`.
    The canonical JSON of this version, keys sorted, no whitespace, written out by hand:"""
    canonical = ('{"charges":[{"amount":"1","model":"flat","name":"flat"}],"currency":"usd",'
                 '"effective_from":"2026-01-01","plan":"t","rounding":"half_up","version":"v1"}')
    [v] = _accepted(tmp_path, plan(_FLAT))
    assert v.content_hash == hashlib.sha256(canonical.encode()).hexdigest()


def test_package_rounding_is_part_of_the_content_hash(tmp_path):
    """D07: rounding packages up or down changes amounts, so it changes the hash."""
    up, down = (load_rules(rules_dir(tmp_path / r, plan(
        f'- {{meter: tokens, model: package, package_size: 1000, package_amount: "0.02", package_round: {r}}}'
    ))).plans["t"].versions[0] for r in ("up", "down"))
    assert up.charges[0].package_round == "up" and down.charges[0].package_round == "down"
    assert up.content_hash != down.content_hash


def test_the_rules_hash_covers_meter_dimensions(tmp_path):
    """D05: a meter's dimensions decide its quantities, so they are in the rules hash."""
    root = rules_dir(tmp_path, plan(_FLAT))
    before = load_rules(root).rules_hash
    meters = root / "meters.yaml"
    meters.write_text(meters.read_text().replace("dimensions: [region]", "dimensions: [region, zone]"))
    assert load_rules(root).rules_hash != before


# --- meters.yaml ----------------------------------------------------------------------------------

def _meter_errors(tmp_path, body: str) -> tuple[dict, list[str]]:
    root = tmp_path / "m"
    root.mkdir(parents=True)
    (root / "meters.yaml").write_text(body)
    return check_meters(root)


METER_REFUSALS = {
    # M01: an empty meter name
    "an empty name": ('meters:\n  "": {aggregation: count}\n', ":2: meters.: '': a meter's name is text (quote it: \"\")"),
    # M02: a misspelt field was ignored
    "an unknown field": ("meters:\n  a: {aggregation: count, colour: blue}\n",
                         ":2: meters.a.colour: unknown field (allowed: aggregation, unit, value, property, dimensions, "
                         "description, display_name)"),
    # M03: `property` on a count meter must still be a name
    "a numeric property": ("meters:\n  a: {aggregation: count, property: 5}\n",
                           ":2: meters.a.property: 5: expected a property name (text)"),
    # M04: a dimension listed twice
    "a dimension twice": ("meters:\n  a: {aggregation: count, dimensions: [region, region]}\n",
                          ":2: meters.a.dimensions: a dimension is listed twice"),
    # M05: an empty dimension name
    "an empty dimension": ('meters:\n  a: {aggregation: count, dimensions: [""]}\n',
                           ":2: meters.a.dimensions: expected a list of property names"),
    # M11: `meters:` that is a list, not a mapping (was an AttributeError on .items())
    "meters as a list": ("meters: [a, b]\n", ":1: meters: expected a mapping of meter name to definition"),
}


@pytest.mark.parametrize("case", list(METER_REFUSALS))
def test_each_meter_refusal_names_line_and_field(tmp_path, case):
    body, ending = METER_REFUSALS[case]
    meters, errs = _meter_errors(tmp_path, body)
    assert meters == {}          # M07: a malformed meter is not handed on
    _one_error(errs, "meters.yaml" + ending)


def test_a_rules_folder_without_meters_yaml(tmp_path):
    """M10: the message says every rules folder needs meters.yaml."""
    root = tmp_path / "r"
    root.mkdir()
    assert check_meters(root) == ({}, [f"{root}/meters.yaml: (document): file not found (every rules folder needs "
                                       "meters.yaml)"])


def test_dimensions_are_sorted_so_order_does_not_change_the_definition(tmp_path):
    """M06: [region, model] and [model, region] are one meter definition (same hash): dimensions sorted."""
    a, _ = _meter_errors(tmp_path / "a", "meters:\n  t: {aggregation: sum, dimensions: [region, model]}\n")
    b, _ = _meter_errors(tmp_path / "b", "meters:\n  t: {aggregation: sum, dimensions: [model, region]}\n")
    assert a["t"].dimensions == ("model", "region")
    assert a["t"].definition_hash() == b["t"].definition_hash()


def test_unique_count_is_a_gauge():
    """M08: distinct users over a period are not the sum of distinct users per day (docs/rating.md)."""
    assert [Meter(name="m", aggregation=a, property="p").is_gauge() for a in ("count", "sum", "max", "last",
                                                                            "unique_count")] == [
        False, False, True, True, True]


# --- aliases --------------------------------------------------------------------------------------

def _aliased(n_aliases: int) -> str:
    """A plan whose `description` holds an anchored list of 999 values (1000 nodes with the list
    itself) and `n_aliases` aliases of it: each alias repeats 1000 values."""
    values = ", ".join(["x"] * 999)
    aliases = ", ".join(["*a"] * n_aliases)
    return plan(_FLAT) + f"description: {{a: &a [{values}], b: [{aliases}]}}\n"


def test_aliases_may_repeat_exactly_the_limit(tmp_path):
    """Y01: 100 aliases x 1000 values = 100,000 repeats = MAX_REPEATS: allowed ("more than" is refused);
    101 aliases = 101,000 is refused."""
    assert errors_for(tmp_path / "ok", _aliased(100)) == []
    errs = errors_for(tmp_path / "over", _aliased(101))
    assert len(errs) == 1 and errs[0].endswith(": (document): aliases repeating more than 100000 values: write the "
                                               "values out")


def test_a_rated_meter_missing_from_meters_yaml_is_refused(tmp_path):
    """P46: a meter that priced rated lines and was deleted is named, not an AttributeError on None.
    P45: the meter entries of `rated_hashes` are not plans: no "plan (meter) ... file is missing"."""
    root = rules_dir(tmp_path, plan(_FLAT))
    errs = check_rules(root, rated_hashes={(RATED_METER, "old_calls"): "0" * 64})[1]
    assert errs == [f"{root}/meters.yaml: meters.old_calls: has already priced rated usage and is missing: "
                    "published meters are immutable; put it back"]


# --- explicit YAML tags ---------------------------------------------------------------------------

def test_an_unknown_tag_names_its_line(tmp_path):
    """Y08: `!!foo` has no constructor: bad input on the tag's line (7), from PyYAML's 0-based mark + 1."""
    errs = errors_for(tmp_path, plan("- {model: flat, amount: !!foo x}"))
    _one_error(errs, "t.yaml:7: (document): could not determine a constructor for the tag 'tag:yaml.org,2002:foo'")


TAG_MISFITS = {
    "int": "- {model: flat, amount: !!int abc}",
    "float": "- {model: flat, amount: !!float abc}",
    "bool": "- {model: flat, amount: !!bool abc}",
    "timestamp": "- {model: flat, amount: !!timestamp abc}",
}


@pytest.mark.parametrize("tag", list(TAG_MISFITS))
def test_a_value_that_does_not_fit_its_explicit_tag_is_bad_input(tmp_path, tag):
    """yaml_marks.parse_yaml's comment named `!!int abc` as handled, but PyYAML's int, float, bool and
    timestamp constructors raise ValueError, KeyError and AttributeError, not a YAMLError: check_rules
    (and `metering rules validate`, exit 1 with a traceback) crashed instead of naming the file and
    line (7, the charge's) as every other problem is."""
    errs = errors_for(tmp_path, plan(TAG_MISFITS[tag]))
    assert len(errs) == 1
    assert "/rules/plans/t.yaml:7: " in errs[0] and "abc" in errs[0]


def test_rules_validate_exits_3_on_a_value_that_does_not_fit_its_tag(tmp_path):
    """The same, seen from the CLI: exit 3 (bad input) naming the file and line, no traceback (was exit 1)."""
    root = rules_dir(tmp_path, plan("- {model: flat, amount: !!int abc}"))
    done = subprocess.run([sys.executable, "-c", "from metering.cli import main; main()", "rules", "validate", str(root)],
                          capture_output=True, text=True, timeout=120, env={**os.environ})
    assert done.returncode == 3, done.stderr
    assert f"{root}/plans/t.yaml:7: " in done.stdout
    assert "Traceback" not in done.stderr
