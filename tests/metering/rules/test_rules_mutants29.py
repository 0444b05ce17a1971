"""Rule-file validation, loading and hashing that no earlier test pinned (hand mutation audit 29,
third pass over `metering/rules/`: plans.py, yaml_marks.py, meters.py, model.py).

Every refusal is checked for its file, line, field path and whole message (docs/rating.md,
"Validation": `file:line: path.to.field: what is wrong`); every acceptance for the value the rules
then hold. Each test names the mutant(s) of the audit it kills (ids from the audit's report).

Plan files are written with `plan()` from test_rules_validate: line 1 `plan: t`, 2 `currency`, 3
`versions:`, 4 `- version: "v1"`, 5 `effective_from: 2026-01-01`, 6 `charges:`, 7 the first charge.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import textwrap
from decimal import Decimal

import pytest
import yaml

from metering.errors import BadInputError
from metering.rules.meters import check_meters, load_meters
from metering.rules.model import Plan, PlanVersion, Rules, dec_str
from metering.rules.plans import RATED_METER, check_rules, load_rules
from metering.rules.yaml_marks import SafeLoader, load_yaml
from tests.metering.rules.test_rules_mutants26 import _FLAT, _one_error
from tests.metering.rules.test_rules_validate import errors_for, plan, rules_dir



# --- refusals: (plan text, the one error's ending) ------------------------------------------------

REFUSALS = {
    # A04, Y07: the float is quoted back as written (`0.000002`), not as Python's repr (`2e-06`), so
    # the suggested fix `"2e-06"` is not a string the author never wrote
    "a float written in full": (plan("- {meter: api_calls, model: per_unit, unit_amount: 0.000002}"),
                                "t.yaml:7: versions[0].charges[0].unit_amount: 0.000002 is a YAML float (inexact); "
                                'write amounts as quoted decimal strings, e.g. "0.000002"'),
    # A14: the quantity limit named is 10^26 (27 digits: "100" and eight groups of ",000"), not the
    # amount limit 10^12
    "an integer quantity over the limit": (
        plan('- {meter: seats, model: per_unit, unit_amount: "1", included: 100000000000000000000000000}'),
        "t.yaml:7: versions[0].charges[0].included: 100000000000000000000000000 is too large (a quantity must be "
        "below 100,000,000,000,000,000,000,000,000)"),
    # A18: a filter on a meter that declares no dimension says so ("none"), not "(declared: )"
    "a filter on a meter without dimensions": (
        plan('- {meter: seats, model: per_unit, unit_amount: "1", filters: {region: eu}}'),
        "t.yaml:7: versions[0].charges[0].filters.region: meter seats has no dimension 'region' (declared: none)"),
    # A19: an undeclared dimension is one error; its (also bad) value is not checked on top
    "an undeclared dimension with an empty value": (
        plan('- {meter: api_calls, model: per_unit, unit_amount: "1", filters: {zone: ""}}'),
        "t.yaml:7: versions[0].charges[0].filters.zone: meter api_calls has no dimension 'zone' (declared: region)"),
    # A21: a tiered charge with no tier at all would price nothing (and Stripe refuses it)
    "an empty list of tiers": (plan("- {meter: seats, model: graduated, tiers: []}"),
                               "t.yaml:7: versions[0].charges[0].tiers: expected a non-empty list of tiers"),
    # A22: a tier that is a bare number is named, not a TypeError iterating it
    "a tier that is no mapping": (plan("""
        - meter: seats
          model: volume
          tiers:
            - 5
    """), "t.yaml:10: versions[0].charges[0].tiers[0]: expected a mapping with up_to, unit_amount and/or flat_amount"),
    # A23: a tier without up_to is named, not a KeyError
    "a tier without up_to": (plan("""
        - meter: seats
          model: volume
          tiers:
            - {unit_amount: "5"}
    """), "t.yaml:10: versions[0].charges[0].tiers[0]: missing up_to (a number, or null for the last, unbounded tier)"),
    # A29: a field of another model is one error: it is not then parsed as well (`amount: 5` would add
    # "amounts must be quoted decimal strings")
    "another model's field": (plan('- {meter: api_calls, model: per_unit, unit_amount: "1", amount: 5}'),
                              "t.yaml:7: versions[0].charges[0].amount: not a field of a per_unit charge (allowed: "
                              "meter, unit_amount, included, filters, name, model, description)"),
    # A31: a package rounds up or down; another word (`nearest`) has no meaning in pricing
    "an unknown package rounding": (
        plan('- {meter: tokens, model: package, package_size: 1000, package_amount: "0.02", package_round: nearest}'),
        "t.yaml:7: versions[0].charges[0].package_round: 'nearest' is not up or down"),
    # A35: a version without charges is named, not a KeyError
    "a version without charges": ('plan: t\ncurrency: usd\nversions:\n  - version: "v1"\n    effective_from: 2026-01-01\n',
                                  "t.yaml:4: versions[0]: missing charges"),
    # A41, A42: plan t with a 190-character version name: metering:t: (11) + 190 + :flat (5) = 206
    # characters; even an empty charge name leaves 202, so the name may have at most 0 (not -2); the
    # charge has no `name`, so the error stands on the charge (line 7), not on a `name` field
    "a version name too long for any charge name": (
        plan(_FLAT).replace('version: "v1"', f'version: "{"v" * 190}"'),
        f"t.yaml:7: versions[0].charges[0]: the Stripe lookup key of this charge's price (metering:t:{'v' * 29}...) "
        "would be 206 characters; Stripe allows 200: shorten the charge name to at most 0 characters (or the plan "
        "or version name)"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_each_refusal_names_file_line_field_and_message(tmp_path, case):
    text, ending = REFUSALS[case]
    _one_error(errors_for(tmp_path, text), ending)


def test_an_unknown_meter_when_meters_yaml_declares_none(tmp_path):
    """A30: with `meters: {}` the message says none are declared, not "(declared in meters.yaml: )"."""
    root = rules_dir(tmp_path, plan('- {meter: api_calls, model: per_unit, unit_amount: "1"}'))
    (root / "meters.yaml").write_text("meters: {}\n")
    assert check_rules(root)[1] == [f"{root}/plans/t.yaml:7: versions[0].charges[0].meter: unknown meter 'api_calls' "
                                    "(declared in meters.yaml: none)"]


def test_a_third_charge_of_the_same_name_names_the_first(tmp_path):
    """A38: three charges named f: charges[1] and charges[2] each point at the first, charges[0]."""
    errs = errors_for(tmp_path, plan("""
        - {name: f, model: flat, amount: "1"}
        - {name: f, model: flat, amount: "2"}
        - {name: f, model: flat, amount: "3"}
    """))
    assert [e.split("/plans/")[1] for e in errs] == [
        "t.yaml:8: versions[0].charges[1].name: charge name 'f' is used twice in this version (also charges[0]); "
        "give each its own `name`",
        "t.yaml:9: versions[0].charges[2].name: charge name 'f' is used twice in this version (also charges[0]); "
        "give each its own `name`"]


def _three_versions(names: tuple[str, str, str], dates: tuple[str, str, str]) -> str:
    """Versions on lines 4, 8 and 12 (their effective_from on 5, 9 and 13), one flat charge each."""
    return "plan: t\ncurrency: usd\nversions:\n" + "".join(
        f'  - version: "{n}"\n    effective_from: {d}\n    charges:\n      - {{model: flat, amount: "1"}}\n'
        for n, d in zip(names, dates))


def test_a_third_version_of_the_same_name_names_the_first_and_the_plan_is_not_usable(tmp_path):
    """A46: both repeats of v1 point at versions[0]. A52: a plan with a problem is not among the usable
    rules check_rules returns (the versions themselves were each well formed)."""
    root = rules_dir(tmp_path, _three_versions(("v1", "v1", "v1"), ("2026-01-01", "2026-02-01", "2026-03-01")))
    rules, errs = check_rules(root)
    assert errs == [f"{root}/plans/t.yaml:8: versions[1].version: version 'v1' is defined twice (also versions[0])",
                    f"{root}/plans/t.yaml:12: versions[2].version: version 'v1' is defined twice (also versions[0])"]
    assert rules.plans == {}


def test_a_third_version_on_the_same_day_names_the_first(tmp_path):
    """A47: v2 and v3 both start Jan 1 as v1 does: each points at versions[0]."""
    errs = errors_for(tmp_path, _three_versions(("v1", "v2", "v3"), ("2026-01-01",) * 3))
    tail = ("duplicate effective date 2026-01-01: versions[0] starts the same day; every instant must resolve to "
            "exactly one version")
    assert [e.split("/plans/")[1] for e in errs] == [f"t.yaml:9: versions[1].effective_from: {tail}",
                                                     f"t.yaml:13: versions[2].effective_from: {tail}"]


# --- acceptances ----------------------------------------------------------------------------------

def _accepted(tmp_path, text: str) -> tuple[PlanVersion, ...]:
    rules, errs = check_rules(rules_dir(tmp_path, text))
    assert errs == []
    return rules.plans["t"].versions


def test_an_amount_with_surrounding_spaces_is_read_trimmed(tmp_path):
    """A06: `" 0.5 "` is the amount 0.5 (the text is trimmed before the check, as before the parse)."""
    [v] = _accepted(tmp_path, plan('- {meter: api_calls, model: per_unit, unit_amount: " 0.5 "}'))
    assert v.charges[0].unit_amount == Decimal("0.5")


def test_an_allowance_of_zero_is_allowed(tmp_path):
    """A12: `included: 0` (no free units, the default written out) is not "negative"."""
    [v] = _accepted(tmp_path, plan('- {meter: api_calls, model: per_unit, unit_amount: "1", included: 0}'))
    assert v.charges[0].included == Decimal(0)


def test_the_canonical_form_of_usage_charges(tmp_path):
    """D01, D02, D04, D13: what the content hash covers for usage charges, written out by hand: the
    allowance and filters (both change which units are billed), every tier's three fields (a tier
    written without flat_amount has flat_amount 0), and a package's rounding, `up` when not written.
    Decimals are normalised ("0.0010" -> "0.001", "50.00" -> "50")."""
    [v] = _accepted(tmp_path, plan("""
        - {meter: api_calls, model: per_unit, unit_amount: "0.0010", included: 100, filters: {region: eu}}
        - meter: seats
          model: graduated
          tiers:
            - {up_to: 10, unit_amount: "7"}
            - {up_to: null, flat_amount: "50.00"}
        - {meter: tokens, model: package, package_size: 1000, package_amount: "0.02"}
    """))
    assert v.canonical()["charges"] == [
        {"name": "api_calls[region=eu]", "model": "per_unit", "meter": "api_calls", "unit_amount": "0.001",
         "included": "100", "filters": {"region": ["eu"]}},
        {"name": "seats", "model": "graduated", "meter": "seats",
         "tiers": [{"up_to": "10", "unit_amount": "7", "flat_amount": "0"},
                   {"up_to": None, "unit_amount": "0", "flat_amount": "50"}],
         "included": "0", "filters": {}},
        {"name": "tokens", "model": "package", "meter": "tokens", "package_size": "1000", "package_amount": "0.02",
         "package_round": "up", "included": "0", "filters": {}},
    ]


def test_an_implied_end_is_not_in_the_canonical_form(tmp_path):
    """D09: v1 runs to Jun 1 only because v2 starts then: its canonical form (which rating stores in
    `rules_versions` beside the hash) has no effective_to, so it matches its content hash and adding v2
    did not change either; v2's written end (Dec 1) is in its own."""
    v1, v2 = _accepted(tmp_path, plan(_FLAT, extra_versions="""
      - version: "v2"
        effective_from: 2026-06-01
        effective_to: 2026-12-01
        charges:
          - {model: flat, amount: "2"}
    """))
    assert v1.effective_to == dt.date(2026, 6, 1)
    assert "effective_to" not in v1.canonical()
    assert v2.canonical()["effective_to"] == "2026-12-01"
    alone = _accepted(tmp_path / "alone", plan(_FLAT))[0]
    assert v1.canonical() == alone.canonical() and v1.content_hash == alone.content_hash

# --- the rules folder -----------------------------------------------------------------------------

def test_a_missing_rules_folder(tmp_path):
    """A55: a folder that does not exist is one problem naming it, and no rules."""
    rules, errs = check_rules(tmp_path / "nope")
    assert errs == [f"{tmp_path}/nope: (document): rules folder not found"]
    assert (rules.meters, rules.plans) == ({}, {})


def test_a_rules_folder_without_plan_files(tmp_path):
    """A56: meters but no plan is a problem (rating would price nothing), naming the plans folder."""
    root = rules_dir(tmp_path, plan(_FLAT))
    (root / "plans" / "t.yaml").unlink()
    assert check_rules(root)[1] == [f"{root}/plans: (document): no plan files (plans/<plan>.yaml)"]


def test_a_rated_plan_whose_file_is_gone(tmp_path):
    """A57: plan `gone` rated usage and its file was deleted: named at the path it should be at."""
    root = rules_dir(tmp_path, plan(_FLAT))
    assert check_rules(root, rated_hashes={("gone", "v1"): "0" * 64})[1] == [
        f"{root}/plans/gone.yaml: (document): plan gone has already rated usage and its file is missing: published "
        "versions are immutable; put the file back"]


def test_load_rules_counts_the_problems(tmp_path):
    """A59: the first line of the error says how many problems follow (here 2: two integer amounts)."""
    root = rules_dir(tmp_path, plan("""
        - {model: flat, amount: 3}
        - {model: minimum, amount: 4}
    """))
    with pytest.raises(BadInputError) as info:
        load_rules(root)
    lines = str(info.value).splitlines()
    assert lines[0] == "2 problem(s) in the pricing rules:"
    assert len(lines) == 3


# --- immutability ---------------------------------------------------------------------------------

def test_a_rated_hash_is_compared_in_full(tmp_path):
    """A61: a recorded hash that shares the first 12 hex digits (all the message shows) but differs
    after them is a change, not a match."""
    root = rules_dir(tmp_path, plan(_FLAT))
    real = load_rules(root).version("t", "v1").content_hash
    other = real[:12] + ("0" if real[12] != "0" else "1") + real[13:]
    errs = check_rules(root, rated_hashes={("t", "v1"): other})[1]
    assert len(errs) == 1
    assert f"versions[0]: version v1 of plan t has already rated usage and its content changed (hash {real[:12]} -> " \
           f"{real[:12]}): published versions are immutable" in errs[0]


def test_a_changed_rated_meter_names_both_hashes(tmp_path):
    """A58, M01, M02: api_calls' definition with dimensions [region, zone] is, as canonical JSON written
    out by hand, the text below; the message shows 12 hex digits of the recorded and the new hash."""
    root = rules_dir(tmp_path, plan(_FLAT))
    meters = root / "meters.yaml"
    meters.write_text(meters.read_text().replace("dimensions: [region]", "dimensions: [region, zone]"))
    new = hashlib.sha256(b'{"aggregation":"count","dimensions":["region","zone"],"property":null,"value":"value"}'
                         ).hexdigest()
    assert check_rules(root, rated_hashes={(RATED_METER, "api_calls"): "0" * 64})[1] == [
        f"{meters}: meters.api_calls: has already priced rated usage and its aggregation, property, dimensions or "
        f"value changed (hash 000000000000 -> {new[:12]}): published meters are immutable, add a new meter (and a "
        "plan version that uses it)"]


def test_a_meter_definition_hash_is_sha256_of_its_canonical_json(tmp_path):
    """M01, M02: the hash rated meters are held to covers aggregation, dimensions, property and value,
    as JSON with sorted keys and no whitespace (written out by hand for two shipped meters)."""
    meters = load_meters(rules_dir(tmp_path, plan(_FLAT)))
    assert meters["tokens"].definition_hash() == hashlib.sha256(
        b'{"aggregation":"sum","dimensions":["model"],"property":null,"value":"value"}').hexdigest()
    assert meters["active_users"].definition_hash() == hashlib.sha256(
        b'{"aggregation":"unique_count","dimensions":[],"property":"user_id","value":"value"}').hexdigest()


# --- meters.yaml ----------------------------------------------------------------------------------

def _meters(tmp_path, body: str) -> tuple[dict, list[str], str]:
    root = tmp_path / "m"
    root.mkdir(parents=True)
    (root / "meters.yaml").write_text(body)
    return (*check_meters(root), f"{root}/meters.yaml")


def test_a_numeric_meter_name_is_refused(tmp_path):
    """M03: YAML reads `12345:` as an integer; it is refused (the path shows it as a number, [12345])."""
    meters, errs, path = _meters(tmp_path, "meters:\n  12345: {aggregation: count}\n")
    assert meters == {}
    assert errs == [f"{path}:2: meters[12345]: 12345: a meter's name is text (quote it: \"12345\")"]


def test_dimensions_null_means_none(tmp_path):
    """M05: `dimensions: null` is no dimension, as leaving it out is. M06: the unit is kept."""
    meters, errs, _ = _meters(tmp_path, "meters:\n  a: {aggregation: sum, unit: GB, dimensions: null}\n")
    assert errs == []
    assert (meters["a"].dimensions, meters["a"].unit) == ((), "GB")


def test_a_duplicate_meter_is_reported_and_the_first_kept(tmp_path):
    """M07: `a` defined twice is a problem on the first's line (2) naming the second's (3); the first
    definition (count) is the one kept."""
    meters, errs, path = _meters(tmp_path, "meters:\n  a: {aggregation: count}\n  a: {aggregation: sum}\n")
    assert errs == [f"{path}:2: meters.a: duplicate key 'a' (line 3)"]
    assert meters["a"].aggregation == "count"


def test_an_empty_meters_yaml(tmp_path):
    """M08: an empty file is no mapping of meters (no line to name: the document is empty)."""
    meters, errs, path = _meters(tmp_path, "")
    assert (meters, errs) == ({}, [f"{path}: meters: expected a mapping of meter name to definition"])


# --- model ----------------------------------------------------------------------------------------

def test_an_unknown_version_is_a_key_error(tmp_path):
    """D06: `Rules.version` of a version the plan does not have raises, rather than returning None."""
    rules = load_rules(rules_dir(tmp_path, plan(_FLAT)))
    with pytest.raises(KeyError):
        rules.version("t", "v9")


def test_all_versions_are_in_plan_name_order():
    """D07: plans a (2 versions) and b, given b first: a's versions come first, in their own order."""
    def version(p: str, name: str, day: int) -> PlanVersion:
        return PlanVersion(plan=p, currency="usd", version=name, effective_from=dt.date(2026, 1, day),
                           effective_to=None, rounding="half_up", charges=())
    a1, a2, b1 = version("a", "1", 1), version("a", "2", 2), version("b", "1", 1)
    rules = Rules(meters={}, plans={"b": Plan("b", "usd", (b1,)), "a": Plan("a", "usd", (a1, a2))})
    assert rules.all_versions == [a1, a2, b1]


def test_the_rules_hash_covers_meter_aggregation(tmp_path):
    """D08: api_calls counted (count) or summed (sum) prices differently, so the rules hash differs."""
    root = rules_dir(tmp_path, plan(_FLAT))
    before = load_rules(root).rules_hash
    meters = root / "meters.yaml"
    meters.write_text(meters.read_text().replace("api_calls:    {aggregation: count", "api_calls:    {aggregation: sum"))
    assert load_rules(root).rules_hash != before


def test_dec_str_writes_zero_without_a_sign():
    """D10: a negative zero (e.g. `-0.00` read back from Stripe) is "0", like every other zero."""
    assert [dec_str(Decimal(t)) for t in ("-0.00", "-0", "0E-12", "5.00")] == ["0", "0", "0", "5"]
    assert dec_str(None) == ""


# --- yaml_marks -----------------------------------------------------------------------------------

def test_load_yaml_of_a_missing_file(tmp_path):
    """Y10: a missing file is bad input naming it, not a FileNotFoundError."""
    with pytest.raises(BadInputError) as info:
        load_yaml(tmp_path / "gone.yaml")
    assert str(info.value) == f"{tmp_path}/gone.yaml: file not found"


def test_the_plain_safe_loader_keeps_an_impossible_date_as_text():
    """Y12: `SafeLoader` (files read without line marks, e.g. dunning.yaml) reads 2026-02-30 as the
    text it is instead of raising 'day is out of range for month'; a real date is still a date."""
    assert yaml.load(textwrap.dedent("""
        bad: 2026-02-30
        good: 2026-02-28
    """), Loader=SafeLoader) == {"bad": "2026-02-30", "good": dt.date(2026, 2, 28)}


# --- defects the audit found (fixed in the twenty-ninth session) ---------------------------------

def test_a_malformed_rated_meter_is_not_reported_missing(tmp_path):
    """api_calls priced rated lines (its hash recorded, unchanged) and now has a misspelt field: that
    field is the one problem (line 4, the meter's line in the shipped meters.yaml). It was also reported
    as "has already priced rated usage and is missing ... put it back", with no line, though the meter
    is in the file (check_meters drops a malformed meter, and _changed_meters took it for deleted; a
    plan file with a problem is not reported missing in the same way)."""
    root = rules_dir(tmp_path, plan(_FLAT))
    rated = {(RATED_METER, "api_calls"): load_meters(root)["api_calls"].definition_hash()}
    meters = root / "meters.yaml"
    meters.write_text(meters.read_text().replace("dimensions: [region]", "dimensions: [region], colour: blue"))
    assert check_rules(root, rated_hashes=rated)[1] == [
        f"{meters}:4: meters.api_calls.colour: unknown field (allowed: aggregation, unit, value, property, "
        "dimensions, description, display_name)"]


def test_a_quoted_quantity_over_the_limit_reads_a_quantity(tmp_path):
    """A quoted allowance of 10^26 is refused as an integer one is; the message says "a quantity" (it
    said "an quantity": `_decimal_text` put "an" before either word)."""
    errs = errors_for(tmp_path, plan('- {meter: seats, model: per_unit, unit_amount: "1", '
                                     'included: "100000000000000000000000000"}'))
    _one_error(errs, "t.yaml:7: versions[0].charges[0].included: '100000000000000000000000000' is too large (a "
                     "quantity must be below 100,000,000,000,000,000,000,000,000) to rate exactly")


def test_an_unreadable_meters_file_is_one_problem_not_one_per_rated_meter(tmp_path):
    """meters.yaml cut short (an unclosed flow list) with two meters that priced rated lines: the YAML
    error is the only meters problem. Each rated meter was also reported "missing ... put it back"."""
    root = rules_dir(tmp_path, plan(_FLAT))
    shipped = load_meters(root)
    rated = {(RATED_METER, name): shipped[name].definition_hash() for name in ("api_calls", "seats")}
    meters = root / "meters.yaml"
    meters.write_text(meters.read_text() + "  broken: [\n")
    errors = check_rules(root, rated_hashes=rated)[1]
    assert len(errors) == 1 and errors[0].startswith(f"{meters}:") and "put it back" not in errors[0]
