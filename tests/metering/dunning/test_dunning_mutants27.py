"""Gaps found by a hand mutation audit of metering/dunning (mutants27, a later pass over actions, run, summary,
suspensions, frames and outbox): a write-off Stripe already made, before or after a crash; Stripe's
IdempotencyError as a refusal for good; a write-off is not held by Stripe's retry schedule; a pending retry
without a client holds the later reminder; a pending write-off of an invoice the customer paid, or that Stripe
voided; an error left over from an outage is cleared once the call goes through; catching up makes only the
latest of two retries; a pending row whose invoice has no state; the finance summary's written-off row, its
per-currency order and its text table; and the suspensions' publication time.

Each test names, in its docstring, the mutant it was written against (ids of the audit's report, H<n>)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import duckdb
import polars as pl
import pytest
import stripe
from dunning_helpers import DAY, T0, pay_invoice, published_suspensions, put_invoice, write_rules
from test_actions import RETRY_POLICY, _FakeEvents
from test_dunning_mutants25 import WRITE_OFF_POLICY

from metering.dunning.actions import LEDGER_SCHEMA, ActionHooks, plan_actions
from metering.dunning.frames import conform
from metering.dunning.policy import DunningPolicy, load_policy
from metering.dunning.run import run_dunning
from metering.dunning.state import STATE_SCHEMA
from metering.dunning.summary import dunning_summary, format_summary


class _Invoices:
    """`client.v1.invoices` of a fake Stripe: `retrieve` answers with `live`; `pay` and `mark_uncollectible`
    record (call, Idempotency-Key) and raise the next error of `failures`, if any, else answer."""

    def __init__(self, live: object, pays: str = "open", failures: list[Exception] | None = None) -> None:
        self.live, self.pays, self.failures, self.calls = live, pays, list(failures or []), []

    def retrieve(self, invoice_id: str) -> object:
        return self.live

    def _answer(self, call: str, options: dict, status: str) -> object:
        self.calls.append((call, options["idempotency_key"]))
        if self.failures:
            raise self.failures.pop(0)
        return SimpleNamespace(status=status, last_response=None)

    def pay(self, invoice_id: str, options: dict) -> object:
        return self._answer("pay", options, self.pays)

    def mark_uncollectible(self, invoice_id: str, options: dict) -> object:
        return self._answer("mark_uncollectible", options, "uncollectible")


def _client(invoices: _Invoices, events: list | None = None) -> object:
    return SimpleNamespace(v1=SimpleNamespace(invoices=invoices, events=_FakeEvents(events)))


def _open(**fields: object) -> SimpleNamespace:
    """Stripe's invoice as a GET shows it: open, attempt_count 1, no retry scheduled (unless overridden)."""
    return SimpleNamespace(**{"status": "open", "attempt_count": 1, "next_payment_attempt": None, **fields})


class Crash(BaseException):
    """The process dies (a BaseException: nothing in the engine catches it)."""


def _die_at(step: str):
    def hook(row: dict) -> None:
        if row["step_name"] == step:
            raise Crash
    return hook


def _ledger(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute("SELECT step_name, status, outcome, attempts FROM dunning_actions"
                       " ORDER BY invoice_id, step_index").fetchall()


def _up_to_day_30(wh: duckdb.DuckDBPyConnection, tmp_path: Path) -> DunningPolicy:
    """WRITE_OFF_POLICY (reminder day 0, retry day 3, write-off day 30); in_1 (50.00 USD) fails at T0
    (2026-11-02 09:30): the reminder is rendered at T0 and the retry, made on day 3, comes back open."""
    policy = load_policy(write_rules(tmp_path / "rules", WRITE_OFF_POLICY))
    put_invoice(wh, "in_1")
    run_dunning(wh, None, policy, T0)
    retried = _Invoices(_open())
    run_dunning(wh, _client(retried), policy, T0 + 3 * DAY)
    assert retried.calls == [("pay", "dunning:in_1:payment_retry")]
    return policy


def test_a_write_off_stripe_accepted_before_a_crash_is_done_and_counts_at_once(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(H17: `_recover_pending` no longer reads an uncollectible invoice as our write-off having gone
    through.) Day 30 (2026-12-02 09:30): mark_uncollectible is accepted, then the run dies before the row is
    closed (pending). An hour later no webhook has landed (our row says open); Stripe's GET says
    uncollectible: that is our write-off. The row is `done` (uncollectible, attempts 2), no second call, and
    the invoice is written off at once; it is not skipped as `stripe_uncollectible`."""
    policy = _up_to_day_30(wh, tmp_path)
    invoices = _Invoices(_open())
    with pytest.raises(Crash):
        run_dunning(wh, _client(invoices), policy, T0 + 30 * DAY, hooks=ActionHooks(after_stripe_call=_die_at("write_off")))
    assert invoices.calls == [("mark_uncollectible", "dunning:in_1:write_off")]
    invoices.live = _open(status="uncollectible")
    result = run_dunning(wh, _client(invoices), policy, T0 + 30 * DAY + timedelta(hours=1))
    assert (result.report.counts, result.report.errors) == ({"write_off:done": 1}, [])
    assert invoices.calls == [("mark_uncollectible", "dunning:in_1:write_off")]
    assert _ledger(wh) == [("first_reminder", "done", "rendered", 1), ("payment_retry", "done", "status:open", 1),
                           ("write_off", "done", "uncollectible", 2)]
    assert result.state.select("invoice_id", "state").rows() == [("in_1", "written_off")]


def test_a_write_off_stripe_already_made_is_skipped_not_sent_again(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(H29: an uncollectible invoice no longer counted as taken out of dunning by Stripe.) Day 30: Stripe
    wrote the invoice off on its own; our state lags (open). The GET before our write-off shows
    uncollectible: nothing is sent, the row is `skipped` with outcome `stripe_uncollectible`."""
    policy = _up_to_day_30(wh, tmp_path)
    invoices = _Invoices(_open(status="uncollectible"))
    result = run_dunning(wh, _client(invoices), policy, T0 + 30 * DAY)
    assert (result.report.counts, invoices.calls) == ({"write_off:skipped": 1}, [])
    assert _ledger(wh)[-1] == ("write_off", "skipped", "stripe_uncollectible", 0)


def test_a_write_off_is_not_held_by_stripes_retry_schedule(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(H25: the `next_payment_attempt` wait applied to the write-off too.) Only a charge waits for Stripe's
    own retries (plan_actions blocks only `retry`): on day 30 the GET shows a retry scheduled for day 31,
    and the write-off, which charges nothing, is made then (one mark_uncollectible), not left waiting."""
    policy = _up_to_day_30(wh, tmp_path)
    invoices = _Invoices(_open(next_payment_attempt=T0 + 31 * DAY))
    result = run_dunning(wh, _client(invoices), policy, T0 + 30 * DAY)
    assert (result.report.counts, result.report.errors) == ({"write_off:done": 1}, [])
    assert invoices.calls == [("mark_uncollectible", "dunning:in_1:write_off")]
    assert _ledger(wh)[-1] == ("write_off", "done", "uncollectible", 1)


def test_an_idempotency_error_is_a_refusal_for_good(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(H18: IdempotencyError dropped from the refusals; H2: `rejected` dropped from the final statuses, so a
    refused call is made again on the next run.) Day 3 (2026-11-05 09:30): Stripe refuses the retry
    with an IdempotencyError (the key was used with other parameters). The request will never succeed
    under that key: the row is `rejected` with the error text as outcome and last_error, the run reports
    no error, and it is never sent again (a day later: no new call)."""
    policy = load_policy(write_rules(tmp_path / "rules", RETRY_POLICY))
    put_invoice(wh, "in_1")
    run_dunning(wh, None, policy, T0)
    message = "Keys for idempotent requests can only be used with the same parameters"
    invoices = _Invoices(_open(), failures=[stripe.IdempotencyError(message, None)])
    result = run_dunning(wh, _client(invoices), policy, T0 + 3 * DAY)
    assert (result.report.counts, result.report.errors) == ({"retry:rejected": 1}, [])
    refused = f"IdempotencyError: {message}"
    assert wh.execute("SELECT status, outcome, last_error FROM dunning_actions WHERE step_name = 'payment_retry'"
                      ).fetchall() == [("rejected", refused, refused)]
    run_dunning(wh, _client(invoices), policy, T0 + 4 * DAY)
    assert invoices.calls == [("pay", "dunning:in_1:payment_retry")]


def test_a_pending_retry_without_a_client_holds_the_later_reminder(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(H23: a pending retry without a client treated as one never sent, which holds only the suspension and
    write-off.) RETRY_POLICY: reminder day 0, retry day 3, final reminder day 7. Day 3: the run dies right
    after the retry's pending row; the charge may have gone through. Day 7 (2026-11-09 09:30), no client:
    the retry is reported and the final reminder is `deferred`: a customer whose charge may have paid is
    not told it failed."""
    policy = load_policy(write_rules(tmp_path / "rules", RETRY_POLICY))
    put_invoice(wh, "in_1")
    run_dunning(wh, None, policy, T0)
    with pytest.raises(Crash):
        run_dunning(wh, _client(_Invoices(_open())), policy, T0 + 3 * DAY,
                    hooks=ActionHooks(after_ledger_commit=_die_at("payment_retry")))
    result = run_dunning(wh, None, policy, T0 + 7 * DAY)
    assert result.report.counts == {"retry:no_stripe_client": 1, "reminder:deferred": 1}
    assert _ledger(wh) == [("first_reminder", "done", "rendered", 1), ("payment_retry", "pending", None, 1)]


def test_a_pending_write_off_of_an_invoice_the_customer_paid_is_superseded(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(H13: every pending write-off of an invoice that left dunning `confirm`ed, not only one written off.)
    Day 30: the run dies right after the write-off's pending row, before the call. The customer then pays
    (day 30 + 1 h); Stripe's log has no event with our key. The next run: recovered, and the write-off is
    `superseded` (left_dunning:recovered), never `done` as if the invoice had been written off."""
    policy = _up_to_day_30(wh, tmp_path)
    invoices = _Invoices(_open())
    with pytest.raises(Crash):
        run_dunning(wh, _client(invoices), policy, T0 + 30 * DAY,
                    hooks=ActionHooks(after_ledger_commit=_die_at("write_off")))
    pay_invoice(wh, "in_1", T0 + 30 * DAY + timedelta(hours=1))
    invoices.live = _open(status="paid")
    result = run_dunning(wh, _client(invoices), policy, T0 + 31 * DAY)
    assert (result.report.counts, result.report.errors, invoices.calls) == ({"write_off:superseded": 1}, [], [])
    assert _ledger(wh)[-1] == ("write_off", "superseded", "left_dunning:recovered", 1)
    assert result.state.select("invoice_id", "state").rows() == [("in_1", "recovered")]


def test_a_pending_write_off_stripe_voided_is_closed_skipped(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(H14: a final status given to an existing row no longer closes it; H15: a pending row written with a
    completion time.) Day 30 (2026-12-02 09:30): the run dies right after the write-off's pending row: it is
    pending, attempts 1, not completed (completed_at NULL). Stripe then voids the invoice; our state lags
    (open). Day 31: the GET shows void: no call, and the pending row is closed `skipped` (stripe_void) at the
    run's clock, attempts still 1; it is not left pending with one more attempt."""
    policy = _up_to_day_30(wh, tmp_path)
    invoices = _Invoices(_open())
    with pytest.raises(Crash):
        run_dunning(wh, _client(invoices), policy, T0 + 30 * DAY,
                    hooks=ActionHooks(after_ledger_commit=_die_at("write_off")))
    query = "SELECT status, outcome, attempts, created_at, completed_at FROM dunning_actions WHERE step_name = 'write_off'"
    assert wh.execute(query).fetchall() == [("pending", None, 1, T0 + 30 * DAY, None)]
    invoices.live = _open(status="void")
    result = run_dunning(wh, _client(invoices), policy, T0 + 31 * DAY)
    assert (result.report.counts, result.report.errors, invoices.calls) == ({"write_off:skipped": 1}, [], [])
    assert wh.execute(query).fetchall() == [("skipped", "stripe_void", 1, T0 + 30 * DAY, T0 + 31 * DAY)]


def test_an_error_left_by_an_outage_is_cleared_once_the_call_goes_through(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(H16: closing a row keeps the last error.) Day 3: the charge fails to connect; the row stays pending
    with last_error `APIConnectionError: connection reset`. An hour later the charge goes through (open):
    `done`, outcome status:open, attempts 2, and no error left on the row."""
    policy = load_policy(write_rules(tmp_path / "rules", RETRY_POLICY))
    put_invoice(wh, "in_1")
    run_dunning(wh, None, policy, T0)
    invoices = _Invoices(_open(), failures=[stripe.APIConnectionError("connection reset")])
    query = "SELECT status, outcome, attempts, last_error FROM dunning_actions WHERE step_name = 'payment_retry'"
    first = run_dunning(wh, _client(invoices), policy, T0 + 3 * DAY)
    assert first.report.counts == {"retry:error": 1}
    assert wh.execute(query).fetchall() == [("pending", None, 1, "APIConnectionError: connection reset")]
    again = run_dunning(wh, _client(invoices), policy, T0 + 3 * DAY + timedelta(hours=1))
    assert (again.report.counts, again.report.errors) == ({"retry:done": 1}, [])
    assert wh.execute(query).fetchall() == [("done", "status:open", 2, None)]
    assert invoices.calls == [("pay", "dunning:in_1:payment_retry")] * 2


TWO_RETRIES = """
default:
  steps:
    - {name: first_reminder, day: 0, action: reminder, template: t}
    - {name: early_retry, day: 3, action: retry}
    - {name: late_retry, day: 5, action: retry}
templates:
  t: {subject: "s", body: "b"}
"""


def test_catching_up_makes_only_the_latest_due_retry(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(H7: retries left out of the catch-up.) Retries on days 3 and 5; no run between T0 and day 6
    (2026-11-08 09:30). Both are due: only the latest, late_retry, is charged (once); early_retry is
    `skipped` as superseded_by_later_retry, never charged."""
    policy = load_policy(write_rules(tmp_path / "rules", TWO_RETRIES))
    put_invoice(wh, "in_1")
    run_dunning(wh, None, policy, T0)
    invoices = _Invoices(_open())
    result = run_dunning(wh, _client(invoices), policy, T0 + 6 * DAY)
    assert (result.report.counts, result.report.errors) == ({"retry:skipped": 1, "retry:done": 1}, [])
    assert invoices.calls == [("pay", "dunning:in_1:late_retry")]
    assert _ledger(wh) == [("first_reminder", "done", "rendered", 1),
                           ("early_retry", "skipped", "superseded_by_later_retry", 0),
                           ("late_retry", "done", "status:open", 1)]


def test_a_pending_row_whose_invoice_has_no_state_left_dunning(rules_dir: Path) -> None:
    """(H11: a missing state row no longer read as out of dunning.) The ledger has a pending reminder and a
    pending retry of in_9, and the state frame has no row for in_9: it is not in dunning, so the reminder is
    superseded and the retry read back from Stripe, both with reason left_dunning:unknown; the rows are
    not silently dropped from the plan (they would stay pending for ever)."""
    ledger = conform(pl.DataFrame({
        "idempotency_key": ["dunning:in_9:first_reminder", "dunning:in_9:payment_retry"],
        "invoice_id": ["in_9", "in_9"], "step_index": [0, 1], "step_name": ["first_reminder", "payment_retry"],
        "action": ["reminder", "retry"], "currency": ["usd", "usd"], "status": ["pending", "pending"],
        "attempts": [1, 1],
    }), LEDGER_SCHEMA)
    plan = plan_actions(pl.DataFrame(schema=STATE_SCHEMA), load_policy(rules_dir), ledger, T0)
    assert plan.select("invoice_id", "step_name", "decision", "reason").rows() == [
        ("in_9", "first_reminder", "supersede", "left_dunning:unknown"),
        ("in_9", "payment_retry", "resolve", "left_dunning:unknown"),
    ]


def _states(*rows: tuple) -> pl.DataFrame:
    """(invoice, currency, state, reason, step_index, step_name, amount_due, amount_paid, amount_remaining)."""
    keys = ("invoice_id", "currency", "state", "reason", "step_index", "step_name", "amount_due", "amount_paid",
            "amount_remaining")
    return conform(pl.DataFrame([dict(zip(keys, r)) for r in rows]), STATE_SCHEMA)


SUMMARY_STATE = _states(
    ("in_u1", "usd", "in_dunning", "payment_failed", 2, "suspension", 5000, 0, 5000),
    ("in_u2", "usd", "written_off", "uncollectible", 2, "suspension", 3000, 0, 3000),
    ("in_e1", "eur", "in_dunning", "payment_failed", 0, "first_reminder", 1000, 250, 750),
)


def test_the_summary_files_written_off_invoices_apart_from_those_at_risk_per_currency() -> None:
    """(H34: written_off left out of the closed categories; H38: written-off invoices counted at risk;
    H35: rows no longer grouped by currency first.) usd: in_u1 in dunning at the suspension (50.00 remaining)
    and in_u2 written off by us (30.00 remaining when marked uncollectible); eur: in_e1 in dunning at the first
    reminder, 10.00 due, 2.50 paid, 7.50 remaining. At risk is only what is still in dunning: usd 50.00 (not
    80.00), eur 7.50. Rows by currency (eur before usd), then category order."""
    summary = dunning_summary(SUMMARY_STATE)
    assert summary.select("currency", "category", "step_name", "invoices", "amount_minor", "amount").rows() == [
        ("eur", "in_dunning", "first_reminder", 1, 750, "7.50"),
        ("eur", "at_risk", None, 1, 750, "7.50"),
        ("usd", "in_dunning", "suspension", 1, 5000, "50.00"),
        ("usd", "at_risk", None, 1, 5000, "50.00"),
        ("usd", "written_off", None, 1, 3000, "30.00"),
    ]


def test_the_summary_text_table_leaves_the_step_blank_where_there_is_none() -> None:
    """(H36: a missing step printed as `None`.) The table for the terminal: a header, a rule as long as the
    header, and one line per summary row; the at_risk and written_off rows have no step: blank, not None."""
    text = format_summary(dunning_summary(SUMMARY_STATE))
    header = f"{'currency':<8} {'category':<23} {'step':<20} {'invoices':>8} {'amount_minor':>14} {'amount':>16}"
    lines = text.split("\n")
    assert lines[:2] == [header, "-" * len(header)]
    assert lines[2:] == [
        f"{'eur':<8} {'in_dunning':<23} {'first_reminder':<20} {1:>8} {750:>14} {'7.50':>16}",
        f"{'eur':<8} {'at_risk':<23} {'':<20} {1:>8} {750:>14} {'7.50':>16}",
        f"{'usd':<8} {'in_dunning':<23} {'suspension':<20} {1:>8} {5000:>14} {'50.00':>16}",
        f"{'usd':<8} {'at_risk':<23} {'':<20} {1:>8} {5000:>14} {'50.00':>16}",
        f"{'usd':<8} {'written_off':<23} {'':<20} {1:>8} {3000:>14} {'30.00':>16}",
    ]
    assert "None" not in text
    assert format_summary(dunning_summary(_states())) == "no failed invoices"


def test_suspensions_are_published_with_the_runs_clock(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    """(H40: the table's published_at taken from the suspension; H43: the JSON's published_at dropped; H42:
    the CSV's time format.) in_1
    is suspended on day 14 (2026-11-16 09:30); the list is published again on day 15 (2026-11-17 09:30):
    suspended since day 14, published at day 15, in the table and in suspensions.json."""
    put_invoice(wh, "in_1")
    run_dunning(wh, None, no_stripe_policy, T0 + 14 * DAY)
    run_dunning(wh, None, no_stripe_policy, T0 + 15 * DAY)
    assert wh.execute("SELECT invoice_ids, suspended_since, published_at FROM suspensions").fetchall() == [
        ("in_1", T0 + 14 * DAY, T0 + 15 * DAY)]
    document = json.loads((isolated_env / "published" / "suspensions.json").read_text())
    assert document["published_at"] == "2026-11-17T09:30:00Z"
    assert [s["suspended_since"] for s in published_suspensions(isolated_env)] == ["2026-11-16T09:30:00Z"]
    # (H42: the CSV's times in another format.) The CSV gives the same ISO 8601 UTC text as the JSON (no
    # fraction of a second when there is none)
    csv = pl.read_csv(isolated_env / "published" / "suspensions.csv", infer_schema=False)
    assert csv.select("invoice_ids", "suspended_since", "published_at").rows() == [
        ("in_1", "2026-11-16T09:30:00Z", "2026-11-17T09:30:00Z")]


GOLD = """
default:
  steps:
    - {name: first_reminder, day: 0, action: reminder, template: t}
    - {name: payment_retry, day: 3, action: retry}
    - {name: suspension, day: 14, action: suspend}
plans:
  gold:
    steps:
      - {name: first_reminder, day: 0, action: reminder, template: t}
      - {name: payment_retry, day: 3, action: retry}
      - {name: suspension, day: 10, action: suspend}
templates:
  t: {subject: "s", body: "b"}
"""


def test_a_step_removed_from_a_plans_schedule_is_removed_even_if_the_default_keeps_it(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(H12: a removed step looked up in every schedule, not the invoice's own.) c_in_1 is on plan gold, whose
    schedule is reminder day 0, retry day 3, suspension day 10. Day 3: the run dies right after the retry's
    pending row. gold's payment_retry is then deleted; the default schedule still has a payment_retry. The
    invoice keeps gold's schedule, where the step is gone: on day 10 (2026-11-12 09:30) the pending retry is
    read back (Stripe has no event with our key: never made) and closed `skipped` (step_removed_from_policy),
    not left pending for ever; the suspension follows."""
    wh.execute("INSERT INTO customer_plans (customer_id, email, currency, plan, plan_effective_from,"
               " payment_behavior, source_line) VALUES ('c_in_1', NULL, 'usd', 'gold', DATE '2026-01-01', 'fails', 1)")
    rules = write_rules(tmp_path / "rules", GOLD)
    put_invoice(wh, "in_1")
    first = run_dunning(wh, None, load_policy(rules), T0)
    assert first.state.select("invoice_id", "policy").rows() == [("in_1", "gold")]
    invoices = _Invoices(_open())
    with pytest.raises(Crash):
        run_dunning(wh, _client(invoices), load_policy(rules), T0 + 3 * DAY,
                    hooks=ActionHooks(after_ledger_commit=_die_at("payment_retry")))
    edited = GOLD.replace("      - {name: payment_retry, day: 3, action: retry}\n", "")
    assert edited.count("payment_retry") == 1
    policy = load_policy(write_rules(rules, edited))
    result = run_dunning(wh, _client(invoices), policy, T0 + 10 * DAY)
    assert (result.report.counts, result.report.errors, invoices.calls) == (
        {"retry:skipped": 1, "suspend:done": 1}, [], [])
    assert _ledger(wh) == [("first_reminder", "done", "rendered", 1),
                           ("payment_retry", "skipped", "step_removed_from_policy", 1),
                           ("suspension", "done", "suspended", 1)]


def test_a_state_from_a_later_clock_never_skips_a_retry_stripe_is_running(tmp_path: Path) -> None:
    """(H5: `current_step` taken from the state as given, not the latest step due at this run's clock.) The
    state handed in was computed under a later clock: it says step 2 (the write-off, day 30), and Stripe's
    own retry is scheduled (next_payment_attempt T0 + 4 d). At T0 + 3 d (2026-11-05 09:30) only the reminder
    (done) and the payment retry (day 3) are due, so the retry is the latest step due: it waits
    (stripe_retrying); it is not skipped for good as if the write-off were due."""
    policy = load_policy(write_rules(tmp_path / "rules", WRITE_OFF_POLICY))
    state = conform(pl.DataFrame([{
        "invoice_id": "in_1", "customer_id": "c_in_1", "stripe_customer": "cus_in_1", "currency": "usd",
        "amount_remaining": 5000, "attempt_count": 1, "next_payment_attempt": T0 + 4 * DAY, "first_failed_at": T0,
        "policy": policy.default.name, "step_index": 2, "step_name": "write_off", "state": "in_dunning",
    }]), STATE_SCHEMA)
    ledger = conform(pl.DataFrame({
        "idempotency_key": ["dunning:in_1:first_reminder"], "invoice_id": ["in_1"], "step_index": [0],
        "step_name": ["first_reminder"], "action": ["reminder"], "status": ["done"], "attempts": [1],
    }), LEDGER_SCHEMA)
    plan = plan_actions(state, policy, ledger, T0 + 3 * DAY)
    assert plan.select("step_name", "current_step", "decision", "reason").rows() == [
        ("payment_retry", 1, "wait", "stripe_retrying")]


def test_a_pending_retry_overtaken_by_a_later_one_is_read_back_not_skipped(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """(H10: a pending row that would now be skipped is skipped unread, not resolved.) TWO_RETRIES: retries on
    days 3 and 5. Day 3 (2026-11-05 09:30): early_retry is charged (declined: Stripe answers open and logs
    invoice.payment_failed stamped with our key), then the run dies before the row is closed. Next run on day 6:
    early_retry is overtaken by late_retry, but its charge was made: it is `done`
    (attempted:invoice.payment_failed), not `skipped` as never made; late_retry is then charged once."""
    policy = load_policy(write_rules(tmp_path / "rules", TWO_RETRIES))
    put_invoice(wh, "in_1")
    run_dunning(wh, None, policy, T0)
    invoices = _Invoices(_open())
    with pytest.raises(Crash):
        run_dunning(wh, _client(invoices), policy, T0 + 3 * DAY,
                    hooks=ActionHooks(after_stripe_call=_die_at("early_retry")))
    events = [SimpleNamespace(type="invoice.payment_failed",
                              request=SimpleNamespace(idempotency_key="dunning:in_1:early_retry"),
                              data=SimpleNamespace(object=SimpleNamespace(id="in_1")))]
    result = run_dunning(wh, _client(invoices, events), policy, T0 + 6 * DAY)
    assert (result.report.counts, result.report.errors) == ({"retry:done": 2}, [])
    assert invoices.calls == [("pay", "dunning:in_1:early_retry"), ("pay", "dunning:in_1:late_retry")]
    assert _ledger(wh) == [("first_reminder", "done", "rendered", 1),
                           ("early_retry", "done", "attempted:invoice.payment_failed", 1),
                           ("late_retry", "done", "status:open", 1)]


def test_a_reminder_rendered_before_a_crash_is_rendered_again_as_the_same_one_message(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    """(H21: the outbox row no longer replaced when a reminder is rendered again.) The process dies after the
    first reminder's message is committed to the outbox and before its ledger row is closed: the ledger row
    is `pending` (built here as a SIGKILL in that window leaves it: the run at T0, then the row put back to
    pending). The re-run at the same clock renders the same message again (same id, same bytes): the outbox
    still holds ONE row for it, not two that would each be sent; the ledger row is `done` with 2 attempts."""
    put_invoice(wh, "in_1")
    run_dunning(wh, None, no_stripe_policy, T0)
    wh.execute("UPDATE dunning_actions SET status = 'pending', outcome = NULL, completed_at = NULL,"
               " message_id = NULL WHERE step_name = 'first_reminder'")
    before = {p.name: p.read_bytes() for p in (isolated_env / "outbox").iterdir()}
    result = run_dunning(wh, None, no_stripe_policy, T0)
    assert (result.report.counts, result.report.errors) == ({"reminder:done": 1}, [])
    assert wh.execute("SELECT idempotency_key, status, rendered_at FROM dunning_outbox").fetchall() == [
        ("dunning:in_1:first_reminder", "rendered", T0)]
    assert {p.name: p.read_bytes() for p in (isolated_env / "outbox").iterdir()} == before
    assert _ledger(wh) == [("first_reminder", "done", "rendered", 2)]


def test_a_reminder_rendered_before_a_crash_and_overtaken_is_withdrawn_without_smtp(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    """(H24: a pending reminder resolved as skipped no longer withdraws its message.) The first reminder's
    message is rendered at T0, and the process dies before its ledger row is closed (built as in the test
    above). No relay is configured, so nothing else withdraws messages. The next run is on day 7 (2026-11-09
    09:30): the final reminder is due and the pending first reminder is resolved `skipped`
    (superseded_by_later_reminder); its message is withdrawn with that reason and its .eml removed, so only
    the final reminder's file is left for delivery."""
    from metering.dunning.outbox import message_id

    put_invoice(wh, "in_1")
    run_dunning(wh, None, no_stripe_policy, T0)
    wh.execute("UPDATE dunning_actions SET status = 'pending', outcome = NULL, completed_at = NULL,"
               " message_id = NULL WHERE step_name = 'first_reminder'")
    result = run_dunning(wh, None, no_stripe_policy, T0 + 7 * DAY)
    assert (result.report.counts, result.report.errors) == ({"reminder:skipped": 1, "reminder:done": 1}, [])
    assert _ledger(wh) == [("first_reminder", "skipped", "superseded_by_later_reminder", 1),
                           ("final_reminder", "done", "rendered", 1)]
    assert wh.execute("SELECT idempotency_key, status, last_error FROM dunning_outbox ORDER BY rendered_at").fetchall() == [
        ("dunning:in_1:first_reminder", "withdrawn", "superseded_by_later_reminder"),
        ("dunning:in_1:final_reminder", "rendered", None)]
    assert sorted(p.name for p in (isolated_env / "outbox").iterdir()) == [
        f"{message_id('dunning:in_1:final_reminder')}.eml"]
