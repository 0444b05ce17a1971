"""Catching up after an outage applies to retries as it does to reminders: only the latest due retry
is made, the earlier ones are skipped as superseded (actions.py's module docstring: "only the latest
due reminder and the latest due retry are performed")."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import duckdb
from dunning_helpers import DAY, T0, put_invoice, write_rules
from test_actions import _FakeInvoices, _fake_client, ledger

from metering.dunning.policy import load_policy
from metering.dunning.run import run_dunning

TWO_RETRIES = """
default:
  steps:
    - {name: retry_d3, day: 3, action: retry}
    - {name: retry_d7, day: 7, action: retry}
"""


def test_after_an_outage_only_the_latest_due_retry_charges(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """Retries on day 3 and day 7; the first failure was 10 days ago (T0, run at T0 + 10 d); Stripe's
    own schedule is over (next_payment_attempt null). Both retries are due (3 <= 10, 7 <= 10): the
    day-3 one is skipped, superseded by the day-7 one (reason superseded_by_later_retry, never
    attempted), and exactly one charge is made, under dunning:in_1:retry_d7. A rerun at the same
    clock charges nothing more.

    Wrong implementation: catch-up limited to reminders performs retry_d3 (a charge under
    dunning:in_1:retry_d3; retry_d7 then waits a run for its outcome and charges the card again),
    two charges for one outage."""
    policy = load_policy(write_rules(tmp_path / "rules", TWO_RETRIES))
    put_invoice(wh, "in_1", next_payment_attempt=None)
    invoices = _FakeInvoices(SimpleNamespace(status="open", attempt_count=1, next_payment_attempt=None))
    client = _fake_client(invoices)

    result = run_dunning(wh, client, policy, T0 + 10 * DAY)
    assert (result.report.counts, result.report.errors) == ({"retry:skipped": 1, "retry:done": 1}, [])
    assert invoices.paid == ["dunning:in_1:retry_d7"]
    assert ledger(wh) == [
        ("dunning:in_1:retry_d3", "retry_d3", "retry", "skipped", "superseded_by_later_retry", 0),
        ("dunning:in_1:retry_d7", "retry_d7", "retry", "done", "status:open", 1),
    ]

    again = run_dunning(wh, client, policy, T0 + 10 * DAY)
    assert (again.report.counts, again.report.errors) == ({}, [])
    assert invoices.paid == ["dunning:in_1:retry_d7"]                  # charged once, ever


def test_on_schedule_each_retry_charges_on_its_own_day(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """The control: runs on day 3 and day 7 (no outage) make both retries, one per run, in order:
    catch-up skips only a retry that a later due one supersedes in the same run."""
    policy = load_policy(write_rules(tmp_path / "rules", TWO_RETRIES))
    put_invoice(wh, "in_1", next_payment_attempt=None)
    invoices = _FakeInvoices(SimpleNamespace(status="open", attempt_count=1, next_payment_attempt=None))
    client = _fake_client(invoices)
    for day, paid in [(3, ["dunning:in_1:retry_d3"]), (7, ["dunning:in_1:retry_d3", "dunning:in_1:retry_d7"])]:
        result = run_dunning(wh, client, policy, T0 + day * DAY)
        assert (result.report.counts, result.report.errors) == ({"retry:done": 1}, []), day
        assert invoices.paid == paid, day
    assert [r[:5] for r in ledger(wh)] == [
        ("dunning:in_1:retry_d3", "retry_d3", "retry", "done", "status:open"),
        ("dunning:in_1:retry_d7", "retry_d7", "retry", "done", "status:open"),
    ]
