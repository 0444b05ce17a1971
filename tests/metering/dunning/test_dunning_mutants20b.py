"""Gaps found by a hand mutation audit of metering/dunning (mutants20, second pass): two steps may share a
day (in order of day means not earlier, not strictly later), and a minimum of zero is allowed (only a
negative one is refused): every unpaid invoice then enters dunning."""

from __future__ import annotations

from pathlib import Path

import duckdb
from dunning_helpers import DAY, NO_STRIPE_POLICY, T0, put_invoice, write_rules

from metering.dunning.policy import load_policy, validate_dunning
from metering.dunning.run import run_dunning


def _outbox(wh: duckdb.DuckDBPyConnection) -> list[tuple]:
    return wh.execute("SELECT body FROM dunning_outbox ORDER BY rendered_at, body").fetchall()


def test_two_steps_on_the_same_day_are_valid_and_both_happen_that_day(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """The final reminder moved to day 14, the suspension's day: steps [0, 14, 14] are in order of day.
    At T0 + 14 d (2026-11-16 09:30 UTC) both are due and both are done in that one run."""
    text = NO_STRIPE_POLICY.replace("{name: final_reminder, day: 7,", "{name: final_reminder, day: 14,")
    assert text != NO_STRIPE_POLICY
    rules = write_rules(tmp_path / "rules", text)
    assert validate_dunning(rules) == []
    policy = load_policy(rules)
    assert [(s.name, s.day) for s in policy.default.steps] == [
        ("first_reminder", 0), ("final_reminder", 14), ("suspension", 14)]
    put_invoice(wh, "in_1")
    run_dunning(wh, None, policy, T0)
    run_dunning(wh, None, policy, T0 + 7 * DAY)      # day 7: nothing is due any more
    assert wh.execute("SELECT step_name FROM dunning_actions ORDER BY step_index").fetchall() == [("first_reminder",)]
    run_dunning(wh, None, policy, T0 + 14 * DAY)
    assert wh.execute("SELECT step_name, status, outcome, completed_at FROM dunning_actions "
                      "ORDER BY step_index").fetchall() == [
        ("first_reminder", "done", "rendered", T0),
        ("final_reminder", "done", "rendered", T0 + 14 * DAY),
        ("suspension", "done", "suspended", T0 + 14 * DAY),
    ]
    assert _outbox(wh) == [("50.00 USD unpaid for 0 days (first_reminder, since 2026-11-02)",),
                           ("50.00 USD unpaid for 14 days (final_reminder, since 2026-11-02)",)]


def test_a_minimum_of_zero_is_valid_and_puts_a_one_cent_invoice_in_dunning(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """minimum_amount {usd: "0.00", jpy: "0"}: zero minor units each, not negative, so valid. An open
    invoice of 0.01 USD (1 minor unit; 1 >= 0, not below the minimum) enters dunning; under the shipped
    1.00 (100 minor units; 1 < 100) it would not."""
    text = NO_STRIPE_POLICY.replace('minimum_amount: {usd: "1.00", jpy: "100"}',
                                    'minimum_amount: {usd: "0.00", jpy: "0"}')
    assert text != NO_STRIPE_POLICY
    rules = write_rules(tmp_path / "rules", text)
    assert validate_dunning(rules) == []
    policy = load_policy(rules)
    assert policy.default.minimum_minor == {"usd": 0, "jpy": 0}
    put_invoice(wh, "in_1", amount_due=1, amount_remaining=1)
    result = run_dunning(wh, None, policy, T0)
    assert result.state.select("invoice_id", "state", "amount_remaining").rows() == [("in_1", "in_dunning", 1)]
    assert _outbox(wh) == [("0.01 USD unpaid for 0 days (first_reminder, since 2026-11-02)",)]
