"""The dunning policy file: the shipped one is valid, and every mistake is named precisely."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from dunning_helpers import write_rules
from hypothesis import given
from hypothesis import strategies as st

from metering.cli import cli
from metering.dunning.money import format_minor, minor_digits, parse_major
from metering.dunning.policy import load_policy, validate_dunning
from metering.errors import EXIT_BAD_INPUT, BadInputError

VALID = """
default:
  minimum_amount: {usd: "1.00"}
  steps:
    - {name: r1, day: 0, action: reminder, template: t}
    - {name: retry, day: 3, action: retry}
    - {name: write_off, day: 30, action: write_off}
templates:
  t: {subject: "s {invoice_id}", body: "b {amount}"}
"""


def test_shipped_policy_is_valid_and_ordered(rules_dir: Path) -> None:
    assert validate_dunning(rules_dir) == []
    policy = load_policy(rules_dir)
    assert [(s.name, s.day, s.action) for s in policy.default.steps] == [
        ("first_reminder", 0, "reminder"), ("payment_retry", 3, "retry"),
        ("final_reminder", 7, "reminder"), ("suspension", 14, "suspend"), ("write_off", 30, "write_off"),
    ]
    assert policy.default.minimum_minor == {"usd": 100, "jpy": 100}
    scale = policy.schedule_for("scale")
    assert scale.minimum_minor == {"usd": 5000, "jpy": 100}      # usd overridden, jpy inherited
    assert [s.day for s in scale.steps] == [0, 3, 10, 14, 21, 45]
    assert policy.schedule_for("starter") is policy.default
    assert policy.schedule_for(None) is policy.default


def _errors(tmp_path: Path, text: str) -> list[str]:
    folder = write_rules(tmp_path / "r", text)
    prefix = f"{folder / 'dunning.yaml'}: "
    errors = validate_dunning(folder)
    assert all(e.startswith(prefix) for e in errors), errors
    return [e[len(prefix):] for e in errors]


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("day: 3,", "day: -1,", "default.steps[1].day: required, a whole number of days from 0 to 3650 after the first failure, got -1"),
        ("day: 3,", "day: 1.5,", "default.steps[1].day: required, a whole number of days from 0 to 3650 after the first failure, got 1.5"),
        ("action: retry", "action: refund", "default.steps[1].action: 'refund' is not one of reminder, retry, suspend, write_off"),
        ("name: retry,", "name: r1,", "default.steps[1].name: duplicate step name 'r1' (step names key the actions ledger)"),
        ("name: retry,", "name: Retry-1,", "default.steps[1].name: required, lower-case letters, digits and underscores, got 'Retry-1'"),
        ("action: reminder, template: t}", "action: reminder}", "default.steps[0].template: a reminder needs a template (a name under templates)"),
        ("template: t}", "template: nope}", "default.steps[0].template: no template named 'nope' under templates"),
        ("action: retry}", "action: retry, template: t}", "default.steps[1].template: only reminders take a template, not retry"),
        ('usd: "1.00"', "usd: 1.00", "default.minimum_amount.usd: write the amount as a quoted decimal string (e.g. \"1.00\"), got 1.0"),
        ('usd: "1.00"', 'usd: "1.001"', "default.minimum_amount.usd: '1.001' has more than 2 decimal places for usd (the currency has 2 decimal places)"),
        ('usd: "1.00"', 'jpy: "1.5"', "default.minimum_amount.jpy: '1.5' has more than 0 decimal places for jpy (the currency has 0 decimal places)"),
        ('usd: "1.00"', 'usd: "-1"', "default.minimum_amount.usd: must not be negative, got '-1'"),
        ('usd: "1.00"', 'usd: "ten"', "default.minimum_amount.usd: 'ten' is not a decimal number (the currency has 2 decimal places)"),
        ('usd: "1.00"', 'USD: "1.00"', "default.minimum_amount.USD: currency must be a lower-case ISO 4217 code such as usd"),
        ("day: 30,", "day: 2,", "default.steps[2].day: steps must be in order of day: 2 comes after day 3"),
        ('b {amount}', 'b {amount} {secret}', "templates.t.body: unknown placeholder {secret} (allowed: {amount}, {currency}, {customer_id}, {days_overdue}, {first_failed_date}, {invoice_id}, {step})"),
        ('b {amount}', 'b {amount', "templates.t.body: malformed placeholder: expected '}' before end of string"),
        ("  steps:", "  stepz: []\n  steps:", "default.stepz: unknown field (allowed: minimum_amount, steps)"),
        # each once passed validation and then crashed every run: a format spec on a text field, a
        # day past 32 bits, and a repeated key that plain YAML collapses (the last one winning)
        ('b {amount}', 'b {days_overdue:d}', "templates.t.body: cannot be rendered: Unknown format code 'd' for object of type 'str' (every placeholder is text)"),
        ("day: 30,", "day: 3000000000,", "default.steps[2].day: required, a whole number of days from 0 to 3650 after the first failure, got 3000000000"),
        ('usd: "1.00"', 'usd: "1e30"', "default.minimum_amount.usd: '1e30' is too large (at most 9223372036854775807 in minor units)"),
        ('usd: "1.00"', 'usd: "1e999999999"', "default.minimum_amount.usd: '1e999999999' is too large (the currency has 2 decimal places)"),
        ('  t: {subject: "s {invoice_id}", body: "b {amount}"}', '  t: {subject: "s {invoice_id}", body: "b {amount}"}\n  t: {subject: "x", body: "y"}', "templates.t: duplicate key 't' (line 10)"),
        # a date-shaped scalar that is no date is a value to report, not a crash in the YAML reader
        ("day: 3,", "day: 2026-02-30,", "default.steps[1].day: required, a whole number of days from 0 to 3650 after the first failure, got '2026-02-30'"),
        # line breaks: `$` matched before a trailing one, so "retry\n" passed and then could never be
        # sent (it is part of the Idempotency-Key header); a subject with one crashed every run
        ("name: retry,", 'name: "retry\\n",', "default.steps[1].name: required, lower-case letters, digits and underscores, got 'retry\\n'"),
        ('usd: "1.00"', '"usd\\n": "1.00"', "default.minimum_amount.usd\\n: currency must be a lower-case ISO 4217 code such as usd"),
        ('subject: "s {invoice_id}"', 'subject: "s {invoice_id}\\nBcc: x@example.com"', "templates.t.subject: must be one line (it is the email's Subject header), got 's {invoice_id}\\nBcc: x@example.com'"),
        ('subject: "s {invoice_id}"', 'subject: "s\\r{invoice_id}"', "templates.t.subject: must be one line (it is the email's Subject header), got 's\\r{invoice_id}'"),
        ('subject: "s {invoice_id}"', 'subject: "s\\u2028{invoice_id}"', "templates.t.subject: must be one line (it is the email's Subject header), got 's\\u2028{invoice_id}'"),
    ],
)
def test_each_mistake_is_named_with_its_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in VALID
    assert _errors(tmp_path, VALID.replace(old, new, 1)) == [expected]


def test_a_subject_may_end_with_a_line_break_as_block_scalars_do(tmp_path: Path) -> None:
    """The run strips the subject's ends, so only a break inside it can never be sent."""
    text = VALID.replace('  t: {subject: "s {invoice_id}", body: "b {amount}"}',
                         '  t:\n    subject: >\n      s {invoice_id}\n    body: "b {amount}"')
    assert _errors(tmp_path, text) == []
    assert load_policy(tmp_path / "r").templates["t"].subject == "s {invoice_id}\n"


def test_a_template_name_with_a_line_break_is_refused_on_one_line(tmp_path: Path) -> None:
    assert _errors(tmp_path, VALID.replace("  t: {subject:", '  "t\\n": {subject:')) == [
        "templates.t\\n: template names are lower-case letters, digits and underscores",
        "default.steps[0].template: no template named 't' under templates",
    ]


def test_a_newline_in_a_step_name_fails_validate_and_run_with_exit_3(tmp_path: Path) -> None:
    folder = write_rules(tmp_path / "r", VALID.replace("name: retry,", 'name: "retry\\n",'))
    expected = f"error: {folder / 'dunning.yaml'}: default.steps[1].name: required, lower-case letters, " \
        "digits and underscores, got 'retry\\n'"
    for command in (["validate"], ["run", "--now", "2026-11-15T00:00:00Z"]):
        result = CliRunner().invoke(cli, ["dunning", *command, "--rules", str(folder)])
        assert (result.exit_code, result.output.strip()) == (EXIT_BAD_INPUT, expected), command


def test_write_off_must_be_last_and_unique(tmp_path: Path) -> None:
    text = VALID.replace("- {name: retry, day: 3, action: retry}", "- {name: early_off, day: 3, action: write_off}")
    assert _errors(tmp_path, text) == [
        "default.steps: at most one write_off step",
    ]
    text = VALID.replace(
        "- {name: write_off, day: 30, action: write_off}",
        "- {name: write_off, day: 30, action: write_off}\n    - {name: late, day: 31, action: suspend}")
    assert _errors(tmp_path, text) == [
        "default.steps[2].action: write_off must be the last step (nothing can follow a write-off)",
    ]


def test_plan_overrides_are_checked_against_the_plans_folder(tmp_path: Path) -> None:
    folder = tmp_path / "r"
    (folder / "plans").mkdir(parents=True)
    (folder / "plans" / "pro.yaml").write_text("{}\n")
    text = VALID + "plans:\n  enterprise:\n    minimum_amount: {usd: \"5\"}\n  pro:\n    steps: []\n"
    assert _errors(tmp_path, text) == [
        "plans.enterprise: no plan named 'enterprise' in plans/ (known: pro)",
        "plans.pro.steps: required, a non-empty list of steps",
    ]


def test_top_level_problems(tmp_path: Path) -> None:
    assert _errors(tmp_path, "templates: {}\n") == [
        "default: required, a mapping with steps (and optionally minimum_amount)"]
    assert _errors(tmp_path, "- a\n- b\n") == ["(top level): expected a mapping with default, plans, templates"]
    assert _errors(tmp_path, VALID + "extra: 1\n") == ["extra: unknown field (allowed: default, plans, templates)"]
    assert _errors(tmp_path, VALID.replace("name: r1,", "name: off,")) == [
        "default.steps[0].name: required, lower-case letters, digits and underscores, got False "
        "(YAML reads yes/no/on/off as booleans: quote the name)"]
    assert _errors(tmp_path, "default:\n  steps: [\n") [0].startswith("line 3: not valid YAML: ")


def test_validate_refuses_a_rules_folder_that_does_not_exist(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["dunning", "validate", "--rules", str(tmp_path / "nodir")])
    assert result.exit_code == EXIT_BAD_INPUT
    assert f"error: {tmp_path / 'nodir'}: the rules folder does not exist" in result.output


def test_validate_without_a_policy_says_that_dunning_cannot_run(tmp_path: Path) -> None:
    """It said "dunning is off" while `dunning run` and both dunning assets fail without the file (audit)."""
    (tmp_path / "rules").mkdir()
    result = CliRunner().invoke(cli, ["dunning", "validate", "--rules", str(tmp_path / "rules")])
    assert result.exit_code == 0
    assert "ok: no dunning.yaml: rating needs none, but `metering dunning run`" in result.output
    assert "dunning is off" not in result.output


def test_a_bad_smtp_port_is_named_before_any_step_runs(tmp_path: Path, rules_dir: Path, monkeypatch) -> None:
    from metering import warehouse

    warehouse.connect(tmp_path / "w.duckdb").close()
    monkeypatch.setenv("METERING_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("METERING_SMTP_PORT", "abc")
    result = CliRunner().invoke(cli, ["dunning", "run", "--rules", str(rules_dir), "--warehouse",
                                      str(tmp_path / "w.duckdb"), "--now", "2026-11-15T00:00:00Z"])
    assert result.exit_code == EXIT_BAD_INPUT
    assert "error: METERING_SMTP_PORT: 'abc' is not a TCP port (1-65535)" in result.output


def test_missing_file_means_no_dunning_but_load_says_so(tmp_path: Path) -> None:
    assert validate_dunning(tmp_path) == []
    with pytest.raises(BadInputError, match=r"dunning\.yaml: \(file\): not found"):
        load_policy(tmp_path)


def test_load_raises_bad_input_with_the_first_error_and_a_count(tmp_path: Path) -> None:
    folder = write_rules(tmp_path / "r", VALID.replace("day: 3,", "day: -1,").replace("action: reminder, template: t}", "action: reminder}"))
    with pytest.raises(BadInputError) as info:
        load_policy(folder)
    assert info.value.exit_code == EXIT_BAD_INPUT == 3
    assert str(info.value) == (
        f"{folder / 'dunning.yaml'}: default.steps[0].template: a reminder needs a template "
        "(a name under templates) (and 1 more: run `metering dunning validate`)"
    )


def test_cli_validate_prints_every_error_and_exits_3(tmp_path: Path) -> None:
    folder = write_rules(tmp_path / "r", VALID.replace("day: 3,", "day: -1,").replace('"1.00"', '"1.001"'))
    result = CliRunner().invoke(cli, ["dunning", "validate", "--rules", str(folder)])
    assert result.exit_code == 3
    lines = result.output.strip().splitlines()
    assert lines == [
        f"error: {folder / 'dunning.yaml'}: default.steps[1].day: required, a whole number of days from 0 to 3650 after the first failure, got -1",
        f"error: {folder / 'dunning.yaml'}: default.minimum_amount.usd: '1.001' has more than 2 decimal places for usd (the currency has 2 decimal places)",
    ]
    ok = CliRunner().invoke(cli, ["dunning", "validate", "--rules", str(write_rules(tmp_path / "ok", VALID))])
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("ok: ")


@pytest.mark.parametrize("tag", ["int", "float", "bool", "timestamp"])
def test_a_value_that_does_not_fit_its_explicit_tag_is_named_with_its_line(tmp_path: Path, tag: str) -> None:
    """`day: !!int abc` (line 6 of VALID: the retry step) made PyYAML's constructors raise ValueError,
    KeyError or AttributeError, not a YAML error: `dunning validate` (and `rules validate`, which checks
    the policy too) ended in a traceback with exit 1. It is bad input, named by file and line, exit 3."""
    folder = write_rules(tmp_path / "r", VALID.replace("day: 3,", f"day: !!{tag} abc,"))
    assert validate_dunning(folder) == [f"{folder / 'dunning.yaml'}:6: (document): 'abc' is not a valid {tag}"]
    result = CliRunner().invoke(cli, ["dunning", "validate", "--rules", str(folder)])
    assert (result.exit_code, result.output.strip()) == (
        EXIT_BAD_INPUT, f"error: {folder / 'dunning.yaml'}:6: (document): 'abc' is not a valid {tag}")


@given(amount=st.integers(min_value=-10**15, max_value=10**15),
       currency=st.sampled_from(["usd", "jpy", "kwd", "eur", "krw"]))
def test_minor_units_round_trip_exactly(amount: int, currency: str) -> None:
    text = format_minor(amount, currency)
    assert parse_major(text, currency) == amount
    assert Decimal(text) == Decimal(amount).scaleb(-minor_digits(currency))


@pytest.mark.parametrize("command", [["run", "--now", "2026-11-15T00:00:00Z"], ["summary"]])
def test_dunning_refuses_a_warehouse_that_does_not_exist(tmp_path: Path, rules_dir: Path, command) -> None:
    typo = tmp_path / "typo.duckdb"
    result = CliRunner().invoke(cli, ["dunning", *command, "--warehouse", str(typo),
                                      *(["--rules", str(rules_dir)] if command[0] == "run" else [])])
    assert result.exit_code == EXIT_BAD_INPUT
    assert f"error: {typo}: no warehouse there" in result.output and not typo.exists()
