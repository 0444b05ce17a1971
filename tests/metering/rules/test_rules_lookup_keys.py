"""Names that would break the Stripe prices' lookup keys (`metering:<plan>:<version>:<charge>`, at
most 200 characters at Stripe) are refused by the validator, naming the file, line and field (audit 16).

They were accepted: version "2026:seats" with charge "eu" and version "2026" with charge "seats:eu"
both got `metering:team:2026:seats:eu` (one price for the two, billing 10.00 where the rules say
25.00), and a 200-character charge name loaded fine, then failed the catalog sync (lookup key of 214
characters), leaving the later plans and every customer unsynced."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from metering.rules.model import Charge, PlanVersion
from metering.rules.plans import check_rules
from metering.stripe import catalog

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def _rules(tmp_path: Path, plan_text: str) -> Path:
    root = tmp_path / "rules"
    (root / "plans").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "rating_rules" / "meters.yaml", root / "meters.yaml")
    (root / "plans" / "team.yaml").write_text(textwrap.dedent(plan_text).lstrip("\n"))
    return root


COLLIDING = """
plan: team
currency: usd
versions:
  - version: "2026"
    effective_from: 2026-01-01
    charges:
      - {name: "seats:eu", meter: seats, model: per_unit, unit_amount: "10.00"}
  - version: "2026:seats"
    effective_from: 2026-06-01
    charges:
      - {name: eu, meter: seats, model: per_unit, unit_amount: "25.00"}
"""


def test_a_version_name_with_a_colon_is_refused(tmp_path: Path) -> None:
    root = _rules(tmp_path, COLLIDING)
    _, errors = check_rules(root)
    assert errors == [
        f"{root}/plans/team.yaml:8: versions[1].version: '2026:seats': a version name may not contain ':', which "
        "separates the parts of its Stripe prices' lookup key (metering:team:<version>:<charge>): two versions' "
        "charges could get one key, and one price"]
    # a charge name may hold ':' (the key's last part): alone, version 2026 is valid, and its key is its own
    alone = _rules(tmp_path / "alone", COLLIDING.split("  - version: \"2026:seats\"")[0])
    rules, errors = check_rules(alone)
    assert errors == []
    [version] = rules.plans["team"].versions
    assert catalog.lookup_key(version, version.charges[0]) == "metering:team:2026:seats:eu"


def _long(name_length: int) -> str:
    return f"""
plan: team
currency: usd
versions:
  - version: "v1"
    effective_from: 2026-01-01
    charges:
      - {{meter: api_calls, model: per_unit, unit_amount: "0.001"}}
      - name: "{'x' * name_length}"
        meter: seats
        model: per_unit
        unit_amount: "10.00"
"""


def test_a_lookup_key_over_200_characters_is_refused(tmp_path: Path) -> None:
    # metering:team:v1: is 17 characters, so a charge name may have 183
    root = _rules(tmp_path, _long(200))
    _, errors = check_rules(root)
    assert errors == [
        f"{root}/plans/team.yaml:8: versions[0].charges[1].name: the Stripe lookup key of this charge's price "
        f"(metering:team:v1:xxxxxxxxxxxxxxxxxxxxxxx...) would be 217 characters; Stripe allows 200: shorten the "
        "charge name to at most 183 characters (or the plan or version name)"]
    longest = _rules(tmp_path / "longest", _long(183))
    rules, errors = check_rules(longest)
    assert errors == []
    version: PlanVersion = rules.plans["team"].versions[0]
    charge: Charge = version.charges[1]
    assert len(catalog.lookup_key(version, charge)) == 200 == len(catalog.price_params(version, charge, "mtr_x")["lookup_key"])


def test_rules_validate_exits_3_naming_file_line_and_field(tmp_path: Path) -> None:
    root = _rules(tmp_path, _long(184))
    done = subprocess.run([sys.executable, "-c", "from metering.cli import main; main()", "rules", "validate", str(root)],
                          capture_output=True, text=True, timeout=120, env={**os.environ})
    assert done.returncode == 3, done.stderr
    assert (f"{root}/plans/team.yaml:8: versions[0].charges[1].name: the Stripe lookup key of this charge's price "
            "(metering:team:v1:xxxxxxxxxxxxxxxxxxxxxxx...) would be 201 characters; Stripe allows 200") in done.stdout
    assert "Traceback" not in done.stderr
