"""Exactly-once dunning actions without Stripe: reminders to the outbox, suspension published and
lifted, catch-up after an outage, and a crash (SIGKILL) between the ledger write and the action."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pytest
import polars as pl
from click.testing import CliRunner, Result
from dunning_helpers import (
    DAY, T0, SmtpRelay, closed_port, pay_invoice, point_smtp_at, put_invoice, write_rules,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering.dunning.policy import DunningPolicy, load_policy
from metering.dunning.run import run_dunning
from metering.dunning.summary import dunning_summary

COLS = "idempotency_key, step_name, action, status, outcome, attempts"


def ledger(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(f"SELECT {COLS} FROM dunning_actions ORDER BY invoice_id, step_index").fetchall()


def published(data: Path) -> dict:
    return json.loads((data / "published" / "suspensions.json").read_text())


def test_each_step_once_on_schedule_and_reruns_repeat_nothing(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    put_invoice(wh, "in_1")
    outbox = isolated_env / "outbox"
    for day, expected_new in [(0, ["first_reminder"]), (3, []), (7, ["final_reminder"]), (14, ["suspension"])]:
        before = {r[1] for r in ledger(wh)}
        for _ in range(2):                      # the second run at the same clock does nothing
            run_dunning(wh, None, no_stripe_policy, T0 + day * DAY)
        after = {r[1] for r in ledger(wh)}
        assert sorted(after - before) == expected_new, day
    assert ledger(wh) == [
        ("dunning:in_1:first_reminder", "first_reminder", "reminder", "done", "rendered", 1),
        ("dunning:in_1:final_reminder", "final_reminder", "reminder", "done", "rendered", 1),
        ("dunning:in_1:suspension", "suspension", "suspend", "done", "suspended", 1),
    ]
    files = sorted(p.name for p in outbox.iterdir())
    assert len(files) == 2 and all(f.endswith(".eml") for f in files)
    outbox_rows = wh.execute("SELECT subject, body, status FROM dunning_outbox ORDER BY rendered_at").fetchall()
    assert outbox_rows == [
        ("Invoice in_1 unpaid", "50.00 USD unpaid for 0 days (first_reminder, since 2026-11-02)", "rendered"),
        ("Invoice in_1 unpaid", "50.00 USD unpaid for 7 days (final_reminder, since 2026-11-02)", "rendered"),
    ]
    doc = published(isolated_env)
    assert doc["suspended"] == [{
        "customer_id": "c_in_1", "stripe_customer": "cus_in_1", "currency": "usd", "invoice_ids": ["in_1"],
        "amount_remaining_minor": 5000, "amount_remaining": "50.00", "suspended_since": "2026-11-16T09:30:00Z",
    }]
    csv = pl.read_csv(isolated_env / "published" / "suspensions.csv", infer_schema=False)
    assert csv["stripe_customer"].to_list() == ["cus_in_1"] and csv["amount_remaining"].to_list() == ["50.00"]
    assert wh.execute("SELECT stripe_customer, invoice_ids FROM suspensions").fetchall() == [("cus_in_1", "in_1")]


def test_the_suspension_list_and_its_files_change_together_or_not_at_all(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    """The table was committed first, then the files written: a full disk left the `suspensions` table
    on the new list and the files, which the product reads, on the old one, with a temporary file beside
    them (audit). The files are written first, the table committed, then the files put in place: a
    table write that fails (a full disk meets DuckDB's log at the commit) leaves the files as they were,
    and a file that cannot be written leaves the table as it was."""
    import duckdb as ddb

    from metering.dunning.run import run_dunning as run

    put_invoice(wh, "in_1")
    run(wh, None, no_stripe_policy, T0)
    published_dir = isolated_env / "published"
    before = {p.name: p.read_bytes() for p in published_dir.iterdir()}
    wh.execute("ALTER TABLE suspensions RENAME TO suspensions_aside")   # the table write fails
    with pytest.raises(ddb.Error):
        run(wh, None, no_stripe_policy, T0 + 14 * DAY)    # the suspension is due
    assert {p.name: p.read_bytes() for p in published_dir.iterdir()} == before   # no temporary file either
    wh.execute("ALTER TABLE suspensions_aside RENAME TO suspensions")
    blocker = published_dir / f".suspensions.json.{os.getpid()}.tmp"
    blocker.mkdir()                                       # the JSON cannot be written
    with pytest.raises(OSError):
        run(wh, None, no_stripe_policy, T0 + 15 * DAY)
    blocker.rmdir()
    assert wh.execute("SELECT count(*) FROM suspensions").fetchone() == (0,)
    assert {p.name: p.read_bytes() for p in published_dir.iterdir()} == before


def test_paying_ends_dunning_and_lifts_the_suspension(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    put_invoice(wh, "in_1")
    put_invoice(wh, "in_2", customer="cus_other", customer_id="c_other", amount_due=250, amount_remaining=250)
    run_dunning(wh, None, no_stripe_policy, T0 + 14 * DAY)
    assert [r["stripe_customer"] for r in published(isolated_env)["suspended"]] == ["cus_in_1", "cus_other"]
    pay_invoice(wh, "in_1", T0 + 15 * DAY)
    result = run_dunning(wh, None, no_stripe_policy, T0 + 15 * DAY)
    assert [r["stripe_customer"] for r in published(isolated_env)["suspended"]] == ["cus_other"]
    assert wh.execute("SELECT stripe_customer FROM suspensions").fetchall() == [("cus_other",)]
    state = {r["invoice_id"]: r for r in result.state.to_dicts()}
    assert (state["in_1"]["state"], state["in_1"]["closed_at"]) == ("recovered", T0 + 15 * DAY)
    # nothing more ever happens to a recovered invoice, however far the clock goes
    run_dunning(wh, None, no_stripe_policy, T0 + 90 * DAY)
    assert [r[0] for r in ledger(wh) if r[0].startswith("dunning:in_1:")] == [
        "dunning:in_1:first_reminder", "dunning:in_1:final_reminder", "dunning:in_1:suspension"]
    summary = dunning_summary(result.state).select("currency", "category", "step_name", "invoices", "amount_minor", "amount")
    assert summary.rows() == [
        ("usd", "in_dunning", "suspension", 1, 250, "2.50"),
        ("usd", "at_risk", None, 1, 250, "2.50"),
        ("usd", "recovered", None, 1, 5000, "50.00"),
    ]


def test_catching_up_after_an_outage_sends_only_the_latest_reminder(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    put_invoice(wh, "in_1")
    run_dunning(wh, None, no_stripe_policy, T0 + 20 * DAY)
    assert ledger(wh) == [
        ("dunning:in_1:first_reminder", "first_reminder", "reminder", "skipped", "superseded_by_later_reminder", 0),
        ("dunning:in_1:final_reminder", "final_reminder", "reminder", "done", "rendered", 1),
        ("dunning:in_1:suspension", "suspension", "suspend", "done", "suspended", 1),
    ]
    assert len(list((isolated_env / "outbox").iterdir())) == 1


def test_below_minimum_is_never_chased(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    put_invoice(wh, "in_small", amount_due=99, amount_remaining=99)
    result = run_dunning(wh, None, no_stripe_policy, T0 + 20 * DAY)
    assert ledger(wh) == []
    assert result.state["state"].to_list() == ["not_in_dunning"]
    assert published(isolated_env)["suspended"] == []


def test_only_steps_due_at_the_runs_clock_are_acted_on(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    """Whatever step the state records: a state computed under a later clock (day 20, suspension
    reached) handed to the actions on day 1 sends the day-0 reminder and nothing else. The actions
    once took every step up to the recorded one, due or not: final reminder and suspension on day 1."""
    from metering.dunning.run import act_and_publish
    from metering.dunning.state import current_state

    put_invoice(wh, "in_1")
    ahead = current_state(wh, no_stripe_policy, T0 + 20 * DAY)
    assert ahead.select("state", "step_name").rows() == [("in_dunning", "suspension")]
    report, suspensions, _ = act_and_publish(wh, None, no_stripe_policy, ahead, T0 + DAY)
    assert (report.counts, report.errors) == ({"reminder:done": 1}, [])
    assert ledger(wh) == [("dunning:in_1:first_reminder", "first_reminder", "reminder", "done", "rendered", 1)]
    assert wh.execute("SELECT body FROM dunning_outbox").fetchall() == [
        ("50.00 USD unpaid for 1 days (first_reminder, since 2026-11-02)",)]
    assert suspensions.is_empty() and published(isolated_env)["suspended"] == []
    assert len(list((isolated_env / "outbox").glob("*.eml"))) == 1


CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from datetime import datetime
    from metering import warehouse
    from metering.dunning.actions import ActionHooks
    from metering.dunning.policy import load_policy
    from metering.dunning.run import run_dunning

    db, rules, now, crash_step = sys.argv[1:5]
    def crash(row):
        if row["step_name"] == crash_step:
            os.kill(os.getpid(), signal.SIGKILL)
    with warehouse.open_warehouse(db) as con:
        run_dunning(con, None, load_policy(rules), datetime.fromisoformat(now),
                    hooks=ActionHooks(after_ledger_commit=crash))
""")


def test_crash_between_ledger_write_and_action_repeats_nothing(
    tmp_path: Path, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    from metering import warehouse

    db = tmp_path / "data" / "warehouse.duckdb"
    with warehouse.open_warehouse(db) as con:
        from dunning_helpers import ensure_invoices_table

        ensure_invoices_table(con)
        put_invoice(con, "in_1")
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    now = (T0 + 14 * DAY).isoformat()
    proc = subprocess.run([sys.executable, str(script), str(db), str(no_stripe_policy.path.parent), now, "final_reminder"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr                  # killed by SIGKILL
    with warehouse.open_warehouse(db) as con:
        rows = ledger(con)
        # the earlier reminder was skipped, the final one was written pending and committed, then the crash
        assert rows == [
            ("dunning:in_1:first_reminder", "first_reminder", "reminder", "skipped", "superseded_by_later_reminder", 0),
            ("dunning:in_1:final_reminder", "final_reminder", "reminder", "pending", None, 1),
        ]
        assert not (isolated_env / "outbox").exists() or not any((isolated_env / "outbox").iterdir())
        # the rerun finishes the pending step under the same key, then the rest, once each
        run_dunning(con, None, no_stripe_policy, T0 + 14 * DAY)
        run_dunning(con, None, no_stripe_policy, T0 + 14 * DAY)
        assert ledger(con) == [
            ("dunning:in_1:first_reminder", "first_reminder", "reminder", "skipped", "superseded_by_later_reminder", 0),
            ("dunning:in_1:final_reminder", "final_reminder", "reminder", "done", "rendered", 2),
            ("dunning:in_1:suspension", "suspension", "suspend", "done", "suspended", 1),
        ]
        assert con.execute("SELECT count(*) FROM dunning_outbox").fetchone()[0] == 1
    assert len(list((isolated_env / "outbox").iterdir())) == 1


def test_plan_and_email_come_from_customer_plans(
    wh: duckdb.DuckDBPyConnection, rules_dir: Path, isolated_env: Path
) -> None:
    """The rating part's customer_plans table picks the schedule (plan in force at the clock) and the address."""
    from metering.dunning.policy import load_policy

    wh.execute(
        "INSERT INTO customer_plans (customer_id, name, email, currency, plan, plan_effective_from,"
        " plan_effective_to, payment_behavior, source_line) VALUES"
        " ('c_in_big', 'Big', 'ap@big.example', 'usd', 'pro', DATE '2026-01-01', DATE '2026-11-01', 'fails', 2),"
        " ('c_in_big', 'Big', 'ap@big.example', 'usd', 'scale', DATE '2026-11-01', NULL, 'fails', 3)"
    )
    put_invoice(wh, "in_big", amount_due=4000, amount_remaining=4000)      # c_in_big: below scale's 50.00
    put_invoice(wh, "in_big2", customer_id="c_in_big", amount_due=9000, amount_remaining=9000)
    result = run_dunning(wh, None, load_policy(rules_dir), T0)
    state = {r["invoice_id"]: (r["state"], r["plan"], r["policy"]) for r in result.state.to_dicts()}
    assert state == {"in_big": ("not_in_dunning", "scale", "scale"), "in_big2": ("in_dunning", "scale", "scale")}
    assert wh.execute("SELECT invoice_id, to_address FROM dunning_outbox ORDER BY invoice_id").fetchall() == [
        ("in_big2", "ap@big.example")]
    eml = (isolated_env / "outbox" / f"{wh.execute('SELECT message_id FROM dunning_outbox WHERE invoice_id = ?', ['in_big2']).fetchone()[0]}.eml").read_text()
    assert "To: ap@big.example" in eml and "Subject: Payment failed for invoice in_big2" in eml


def test_reminders_go_through_smtp_when_configured(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch, smtp_relay: SmtpRelay,
) -> None:
    """A minimal SMTP relay on loopback receives each reminder once; re-runs send nothing again."""
    received = smtp_relay.received
    point_smtp_at(monkeypatch, smtp_relay.port)
    _with_email(wh, "c_in_1", "pay@one.example")
    put_invoice(wh, "in_1")
    put_invoice(wh, "in_2")                           # no address known: rendered, not sent
    first = run_dunning(wh, None, no_stripe_policy, T0)
    again = run_dunning(wh, None, no_stripe_policy, T0)
    assert (first.reminders_sent, again.reminders_sent) == (1, 0)
    assert len(received) == 1 and b"To: pay@one.example" in received[0]
    assert wh.execute("SELECT invoice_id, status, sent_at FROM dunning_outbox ORDER BY invoice_id").fetchall() == [
        ("in_1", "sent", T0), ("in_2", "rendered", None)]


def test_a_reminder_is_marked_sent_only_after_the_relay_has_accepted_it(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch, smtp_relay: SmtpRelay,
) -> None:
    """While the relay takes the message in, the outbox row still says `rendered`: a process killed
    before the relay's answer sends the reminder again on the next run, and never loses it."""
    point_smtp_at(monkeypatch, smtp_relay.port)
    _with_email(wh, "c_in_1", "pay@one.example")
    put_invoice(wh, "in_1")
    reader = wh.cursor()
    seen: list = []
    smtp_relay.on_accept = lambda: seen.append(reader.execute("SELECT status FROM dunning_outbox").fetchall())
    assert run_dunning(wh, None, no_stripe_policy, T0).reminders_sent == 1
    assert seen == [[("rendered",)]]
    assert wh.execute("SELECT status FROM dunning_outbox").fetchall() == [("sent",)]


def _with_email(con: duckdb.DuckDBPyConnection, customer_id: str, email: str) -> None:
    con.execute(
        "INSERT INTO customer_plans (customer_id, email, currency, plan, plan_effective_from, payment_behavior,"
        " source_line) VALUES (?, ?, 'usd', 'starter', DATE '2026-01-01', 'fails', 2)", [customer_id, email])


def _invoice_while_the_relay_is_down(con: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch) -> None:
    """Customer c_in_1, with an address, and its failed invoice in_1; the mail relay unreachable."""
    _with_email(con, "c_in_1", "pay@one.example")
    put_invoice(con, "in_1")
    point_smtp_at(monkeypatch, closed_port())


def outbox_rows(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(
        "SELECT o.idempotency_key, o.status, o.last_error FROM dunning_outbox o ORDER BY o.rendered_at").fetchall()


def test_a_reminder_held_up_by_the_relay_is_withdrawn_once_the_invoice_is_paid(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch, smtp_relay: SmtpRelay,
) -> None:
    """Relay down on day 0; the customer pays on day 2; the relay is back: no "unpaid" email goes out."""
    _invoice_while_the_relay_is_down(wh, monkeypatch)
    assert run_dunning(wh, None, no_stripe_policy, T0).report.errors    # relay down: not sent
    pay_invoice(wh, "in_1", T0 + 2 * DAY)
    point_smtp_at(monkeypatch, smtp_relay.port)
    result = run_dunning(wh, None, no_stripe_policy, T0 + 2 * DAY)
    assert (result.reminders_sent, result.report.errors, smtp_relay.received) == (0, [], [])
    assert outbox_rows(wh) == [("dunning:in_1:first_reminder", "withdrawn", "invoice_left_dunning")]
    assert list((isolated_env / "outbox").iterdir()) == []


def test_after_a_long_relay_outage_only_the_latest_reminder_is_sent(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch, smtp_relay: SmtpRelay,
) -> None:
    _invoice_while_the_relay_is_down(wh, monkeypatch)
    run_dunning(wh, None, no_stripe_policy, T0)
    run_dunning(wh, None, no_stripe_policy, T0 + 7 * DAY)
    point_smtp_at(monkeypatch, smtp_relay.port)
    result = run_dunning(wh, None, no_stripe_policy, T0 + 8 * DAY)
    assert (result.reminders_sent, result.report.errors) == (1, [])
    assert len(smtp_relay.received) == 1 and b"unpaid for 7 days (final_reminder" in smtp_relay.received[0]
    assert outbox_rows(wh) == [
        ("dunning:in_1:first_reminder", "withdrawn", "superseded_by_later_reminder"),
        ("dunning:in_1:final_reminder", "sent", None),
    ]


def test_a_reminder_rendered_before_a_crash_and_then_superseded_is_withdrawn_for_good(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch, smtp_relay: SmtpRelay,
) -> None:
    """Crash after the .eml and outbox row are written, before the ledger row is done; the rerun
    comes after the next reminder is due. The first one is withdrawn (file and row), and later
    runs neither send it nor report an error about it."""
    from metering.dunning import actions

    class Crash(BaseException):
        pass

    real_close = actions._Ledger.close

    def crash_on_first_reminder(self, key: str, status: str, *args, **kwargs) -> None:
        if key.endswith(":first_reminder") and status == "done":
            raise Crash
        real_close(self, key, status, *args, **kwargs)

    _with_email(wh, "c_in_1", "pay@one.example")
    put_invoice(wh, "in_1")
    with monkeypatch.context() as patch:
        patch.setattr(actions._Ledger, "close", crash_on_first_reminder)
        with pytest.raises(Crash):
            run_dunning(wh, None, no_stripe_policy, T0)
    assert outbox_rows(wh) == [("dunning:in_1:first_reminder", "rendered", None)]
    point_smtp_at(monkeypatch, smtp_relay.port)
    for day in (8, 9):
        result = run_dunning(wh, None, no_stripe_policy, T0 + day * DAY)
        assert result.report.errors == [], day
    assert len(smtp_relay.received) == 1 and b"final_reminder" in smtp_relay.received[0]
    assert outbox_rows(wh) == [
        ("dunning:in_1:first_reminder", "withdrawn", "superseded_by_later_reminder"),
        ("dunning:in_1:final_reminder", "sent", None),
    ]
    assert len(list((isolated_env / "outbox").iterdir())) == 1


FOUR_STEPS = """
default:
  minimum_amount: {usd: "1.00"}
  steps:
    - {name: first_reminder, day: 0, action: reminder, template: failed}
    - {name: second_reminder, day: 3, action: reminder, template: failed}
    - {name: suspension, day: 14, action: suspend}
    - {name: write_off, day: 30, action: write_off}
templates:
  failed: {subject: "Invoice {invoice_id} unpaid", body: "{amount} {currency} since {first_failed_date}"}
"""


def test_removing_a_step_that_already_ran_never_brings_a_later_step_forward(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """Suspended on day 14 (the 3rd of 4 steps); the operator then deletes the day-3 reminder, so
    the write-off moves to position 3. Day 15 must still be the suspension, write-off on day 30."""
    rules = write_rules(tmp_path / "rules", FOUR_STEPS)
    put_invoice(wh, "in_1")
    for day in (0, 3, 14):
        run_dunning(wh, None, load_policy(rules), T0 + day * DAY)
    write_rules(rules, FOUR_STEPS.replace("    - {name: second_reminder, day: 3, action: reminder, template: failed}\n", ""))
    edited = load_policy(rules)
    assert [st.name for st in edited.default.steps] == ["first_reminder", "suspension", "write_off"]

    result = run_dunning(wh, None, edited, T0 + 15 * DAY)
    assert not any(k.startswith("write_off") for k in result.report.counts), result.report.counts
    assert result.state.select("state", "step_name", "next_step_name", "next_step_at").row(0) == (
        "in_dunning", "suspension", "write_off", T0 + 30 * DAY)
    assert [r[1] for r in ledger(wh)] == ["first_reminder", "second_reminder", "suspension"]
    assert wh.execute("SELECT step_name FROM dunning_state").fetchall() == [("suspension",)]


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(days=st.lists(st.integers(min_value=0, max_value=25), min_size=1, max_size=5),
       pay_after=st.one_of(st.none(), st.integers(min_value=0, max_value=4)))
def test_any_sequence_of_runs_performs_each_step_at_most_once(
    tmp_path_factory: pytest.TempPathFactory, no_stripe_policy: DunningPolicy,
    days: list[int], pay_after: int | None,
) -> None:
    """Runs at arbitrary (even repeated or backwards) clock times, optionally a payment midway."""
    from metering import warehouse
    from dunning_helpers import ensure_invoices_table

    folder = tmp_path_factory.mktemp("seq")
    with warehouse.open_warehouse(folder / "w.duckdb") as con:
        ensure_invoices_table(con)
        put_invoice(con, "in_1")
        for i, day in enumerate(days):
            if pay_after is not None and i == pay_after:
                pay_invoice(con, "in_1", T0 + day * DAY)
            run_dunning(con, None, no_stripe_policy, T0 + day * DAY,
                        outbox_folder=folder / "outbox", published_folder=folder / "pub")
        keys = [r[0] for r in con.execute("SELECT idempotency_key FROM dunning_actions").fetchall()]
        assert len(keys) == len(set(keys))
        rendered = con.execute("SELECT count(*) FROM dunning_outbox").fetchone()[0]
        done = con.execute(
            "SELECT count(*) FROM dunning_actions WHERE action = 'reminder' AND status = 'done'").fetchone()[0]
        files = list((folder / "outbox").glob("*.eml"))
        assert (rendered, done) == (len(files), len(files))
        assert con.execute("SELECT count(*) FROM dunning_actions WHERE status = 'pending'").fetchone()[0] == 0
        paid = pay_after is not None and pay_after < len(days)
        suspended = json.loads((folder / "pub" / "suspensions.json").read_text())["suspended"]
        if paid:
            assert suspended == []


RETRY_POLICY = """
default:
  steps:
    - {name: first_reminder, day: 0, action: reminder, template: t}
    - {name: payment_retry, day: 3, action: retry}
    - {name: final_reminder, day: 7, action: reminder, template: t}
templates:
  t: {subject: "s", body: "b"}
"""


def test_never_charges_while_stripe_is_still_retrying(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    from dunning_helpers import write_rules

    from metering.dunning.policy import load_policy

    policy = load_policy(write_rules(tmp_path / "retry_rules", RETRY_POLICY))
    put_invoice(wh, "in_1", next_payment_attempt=T0 + 5 * DAY)       # Stripe retries on day 5
    run_dunning(wh, None, policy, T0)
    for day in (3, 4):                                                 # due, but Stripe is retrying
        result = run_dunning(wh, None, policy, T0 + day * DAY)
        assert result.report.counts == {"retry:wait:stripe_retrying": 1}
        assert result.report.errors == []
    assert [r[1] for r in ledger(wh)] == ["first_reminder"]
    # day 5 Stripe retried and failed again, next try day 10; day 7: the final reminder is due and
    # the retry is skipped so it never blocks the schedule
    wh.execute("UPDATE stripe_invoices SET attempt_count = 2, next_payment_attempt = ?", [T0 + 10 * DAY])
    run_dunning(wh, None, policy, T0 + 7 * DAY)
    assert ledger(wh) == [
        ("dunning:in_1:first_reminder", "first_reminder", "reminder", "done", "rendered", 1),
        ("dunning:in_1:payment_retry", "payment_retry", "retry", "skipped", "stripe_retrying", 0),
        ("dunning:in_1:final_reminder", "final_reminder", "reminder", "done", "rendered", 1),
    ]


def test_a_scheduled_stripe_retry_that_is_overdue_still_blocks_ours(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """Stripe clears next_payment_attempt when its schedule ends; a time in the past means its retry
    is due or under way and its webhook has not landed yet. Charging then would be a second attempt
    beside Stripe's (I15): the engine once took a past time for "schedule over"."""
    policy = load_policy(write_rules(tmp_path / "retry_rules", RETRY_POLICY))
    put_invoice(wh, "in_1", next_payment_attempt=T0 + 3 * DAY - timedelta(minutes=30))  # due half an hour ago
    run_dunning(wh, None, policy, T0)
    result = run_dunning(wh, None, policy, T0 + 3 * DAY)
    assert result.report.counts == {"retry:wait:stripe_retrying": 1} and result.report.errors == []
    assert [r[1] for r in ledger(wh)] == ["first_reminder"]


def test_a_retry_with_no_stripe_client_waits_and_says_so(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    from dunning_helpers import write_rules

    from metering.dunning.policy import load_policy

    policy = load_policy(write_rules(tmp_path / "retry_rules", RETRY_POLICY))
    put_invoice(wh, "in_1", next_payment_attempt=None)                # Stripe's schedule is over
    result = run_dunning(wh, None, policy, T0 + 3 * DAY)
    assert result.report.errors == ["dunning:in_1:payment_retry: no Stripe client configured (set STRIPE_API_KEY)"]
    assert [r[1] for r in ledger(wh)] == ["first_reminder"]             # nothing written for the retry


def test_a_pending_step_that_is_now_superseded_is_resolved_not_left_pending(
    tmp_path: Path, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    """Crash at day 0 with the first reminder pending; the next run is on day 8: that reminder is
    closed as skipped (superseded by the final one), nothing stays pending, one message exists."""
    from dunning_helpers import ensure_invoices_table

    from metering import warehouse

    db = tmp_path / "data" / "warehouse.duckdb"
    with warehouse.open_warehouse(db) as con:
        ensure_invoices_table(con)
        put_invoice(con, "in_1")
    script = tmp_path / "crash.py"
    script.write_text(CRASH_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(db), str(no_stripe_policy.path.parent),
                           T0.isoformat(), "first_reminder"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    with warehouse.open_warehouse(db) as con:
        assert ledger(con) == [("dunning:in_1:first_reminder", "first_reminder", "reminder", "pending", None, 1)]
        run_dunning(con, None, no_stripe_policy, T0 + 8 * DAY)
        assert ledger(con) == [
            ("dunning:in_1:first_reminder", "first_reminder", "reminder", "skipped", "superseded_by_later_reminder", 1),
            ("dunning:in_1:final_reminder", "final_reminder", "reminder", "done", "rendered", 1),
        ]
    assert len(list((isolated_env / "outbox").glob("*.eml"))) == 1


HEADER_POLICY = """
default:
  minimum_amount: {usd: "1.00"}
  steps:
    - {name: first_reminder, day: 0, action: reminder, template: failed}
templates:
  failed: {subject: "Payment failed for {customer_id}", body: "{amount} {currency} for invoice {invoice_id}"}
"""


def _two_customers_one_with_a_line_break(db: Path) -> None:
    """in_0: a customer metadata id carrying a header of its own; in_1: a plain customer."""
    from dunning_helpers import ensure_invoices_table

    from metering import warehouse

    with warehouse.open_warehouse(db) as con:
        ensure_invoices_table(con)
        put_invoice(con, "in_0", customer_id="acme\nBcc: x@example.com")
        put_invoice(con, "in_1")


def _cli_run(rules: Path, now: str) -> Result:
    from metering.cli import cli

    return CliRunner().invoke(cli, ["dunning", "run", "--rules", str(rules), "--now", now])


def test_a_line_break_in_stripe_data_never_reaches_a_header(tmp_path: Path, isolated_env: Path) -> None:
    """A customer id from Stripe metadata with a line break once crashed every run (the email package
    refuses it in the Subject), stopping dunning for every customer; it must not add a header either."""
    from email import policy as email_policy
    from email.parser import BytesParser

    from metering import warehouse

    db = isolated_env / "warehouse.duckdb"
    _two_customers_one_with_a_line_break(db)
    rules = write_rules(tmp_path / "rules", HEADER_POLICY)
    result = _cli_run(rules, T0.isoformat())
    assert result.exit_code == 0, result.output
    with warehouse.open_warehouse(db, read_only=True) as con:
        assert ledger(con) == [
            ("dunning:in_0:first_reminder", "first_reminder", "reminder", "done", "rendered", 1),
            ("dunning:in_1:first_reminder", "first_reminder", "reminder", "done", "rendered", 1),
        ]
        rows = con.execute("SELECT invoice_id, subject, file_name FROM dunning_outbox ORDER BY invoice_id").fetchall()
    assert [r[:2] for r in rows] == [("in_0", "Payment failed for acme Bcc: x@example.com"),
                                     ("in_1", "Payment failed for c_in_1")]
    with open(isolated_env / "outbox" / rows[0][2], "rb") as fh:
        message = BytesParser(policy=email_policy.default).parse(fh)
    assert message["Subject"] == "Payment failed for acme Bcc: x@example.com"
    assert message["Bcc"] is None


def test_a_reminder_that_fails_stays_pending_and_the_others_go_on(
    tmp_path: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One row's failure (here its .eml cannot be written) is recorded on that row, left pending for
    the next run, and reported with exit 5, as a Stripe outage is; the other invoices are dunned."""
    from metering import warehouse
    from metering.dunning import outbox
    from metering.errors import EXIT_EXTERNAL

    real_write = outbox.write_message

    def disk_full_for_in_0(folder: Path, msg_id: str, message) -> str:
        if message["X-Metering-Idempotency-Key"] == "dunning:in_0:first_reminder":
            raise OSError(28, "No space left on device")
        return real_write(folder, msg_id, message)

    db = isolated_env / "warehouse.duckdb"
    _two_customers_one_with_a_line_break(db)
    rules = write_rules(tmp_path / "rules", HEADER_POLICY)
    monkeypatch.setattr(outbox, "write_message", disk_full_for_in_0)
    result = _cli_run(rules, T0.isoformat())
    assert result.exit_code == EXIT_EXTERNAL, result.output
    assert "pending: dunning:in_0:first_reminder: OSError: [Errno 28] No space left on device" in result.output
    with warehouse.open_warehouse(db, read_only=True) as con:
        assert con.execute(
            "SELECT idempotency_key, status, last_error FROM dunning_actions ORDER BY invoice_id").fetchall() == [
            ("dunning:in_0:first_reminder", "pending", "OSError: [Errno 28] No space left on device"),
            ("dunning:in_1:first_reminder", "done", None),
        ]
    monkeypatch.setattr(outbox, "write_message", real_write)     # space again: the next run finishes it
    assert _cli_run(rules, T0.isoformat()).exit_code == 0
    with warehouse.open_warehouse(db, read_only=True) as con:
        assert [r[3:] for r in ledger(con)] == [("done", "rendered", 2), ("done", "rendered", 1)]


RETRY_THEN_SUSPEND = RETRY_POLICY.replace(
    "templates:", "    - {name: suspension, day: 14, action: suspend}\ntemplates:")


class _FakeInvoices:
    """`client.v1.invoices` of a fake Stripe: `retrieve` answers with `live`, or raises `down`."""

    def __init__(self, live: object = None, down: Exception | None = None, pays: str = "open") -> None:
        self.live, self.down, self.pays, self.paid = live, down, pays, []

    def retrieve(self, invoice_id: str) -> object:
        if self.down is not None:
            raise self.down
        return self.live

    def pay(self, invoice_id: str, options: dict) -> object:
        self.paid.append(options["idempotency_key"])
        return SimpleNamespace(status=self.pays, last_response=None)


class _FakeEvents:
    """`client.v1.events`: no trace of our call, unless `events` are given."""

    def __init__(self, events: list | None = None) -> None:
        self.events = events or []

    def list(self, params: dict) -> object:
        return SimpleNamespace(auto_paging_iter=lambda: iter(self.events))


def _charge_event(invoice_id: str, key: str) -> object:
    """The event Stripe stamps with the request (and its Idempotency-Key) that charged the invoice."""
    return SimpleNamespace(type="invoice.payment_failed", request=SimpleNamespace(idempotency_key=key),
                           data=SimpleNamespace(object=SimpleNamespace(id=invoice_id)))


def _fake_client(invoices: _FakeInvoices, events: list | None = None) -> object:
    return SimpleNamespace(v1=SimpleNamespace(invoices=invoices, events=_FakeEvents(events)))


@pytest.mark.parametrize(("pays", "retry_outcome", "suspended"), [
    ("open", "status:open", True),        # the retry fails: the suspension follows, a run later
    ("paid", "paid", False),              # the retry recovers the payment: never suspended
])
def test_without_a_stripe_client_reminders_go_on_but_suspension_waits_for_the_retry(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path,
    pays: str, retry_outcome: str, suspended: bool,
) -> None:
    """No STRIPE_API_KEY: the retry is never sent and is reported on every run; reminders need no
    Stripe and keep their days, but the suspension waits (`deferred`) until the retry, which might
    recover the payment, has been made and has failed. It once suspended on day 14 a customer whose
    retry was never made (docs/dunning.md: the harm to avoid)."""
    policy = load_policy(write_rules(tmp_path / "retry_rules", RETRY_THEN_SUSPEND))
    put_invoice(wh, "in_1")
    waiting = "dunning:in_1:payment_retry: no Stripe client configured (set STRIPE_API_KEY)"
    expected = {
        0: ({"reminder:done": 1}, []),
        3: ({"retry:no_stripe_client": 1}, [waiting]),
        7: ({"retry:no_stripe_client": 1, "reminder:done": 1}, [waiting]),
        14: ({"retry:no_stripe_client": 1, "suspend:deferred": 1}, [waiting]),
        15: ({"retry:no_stripe_client": 1, "suspend:deferred": 1}, [waiting]),   # and every run after
    }
    for day, (counts, errors) in expected.items():
        result = run_dunning(wh, None, policy, T0 + day * DAY)
        assert (result.report.counts, result.report.errors) == (counts, errors), day
    assert ledger(wh) == [
        ("dunning:in_1:first_reminder", "first_reminder", "reminder", "done", "rendered", 1),
        ("dunning:in_1:final_reminder", "final_reminder", "reminder", "done", "rendered", 1),
    ]
    assert published(isolated_env)["suspended"] == []
    assert {r["invoice_id"]: r["state"] for r in result.state.to_dicts()} == {"in_1": "in_dunning"}

    # a client is configured: the retry is made first, and the suspension waits for its outcome
    invoices = _FakeInvoices(SimpleNamespace(status="open", attempt_count=1, next_payment_attempt=None), pays=pays)
    client = _fake_client(invoices)
    result = run_dunning(wh, client, policy, T0 + 16 * DAY)
    assert (result.report.counts, result.report.errors) == ({"retry:done": 1, "suspend:deferred": 1}, [])
    assert invoices.paid == ["dunning:in_1:payment_retry"]
    result = run_dunning(wh, client, policy, T0 + 17 * DAY)
    assert (result.report.counts, result.report.errors) == (({"suspend:done": 1} if suspended else {}), [])
    assert invoices.paid == ["dunning:in_1:payment_retry"]                    # charged once, ever
    assert [r[1:5] for r in ledger(wh)] == [
        ("first_reminder", "reminder", "done", "rendered"),
        ("payment_retry", "retry", "done", retry_outcome),
        ("final_reminder", "reminder", "done", "rendered"),
    ] + ([("suspension", "suspend", "done", "suspended")] if suspended else [])
    assert [s["invoice_ids"] for s in published(isolated_env)["suspended"]] == ([["in_1"]] if suspended else [])
    assert {r["invoice_id"]: r["state"] for r in result.state.to_dicts()} == {
        "in_1": "in_dunning" if suspended else "recovered"}


def test_during_a_stripe_outage_a_due_retry_still_holds_the_later_steps(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """Unlike running without a client, an outage passes: the retry, which may recover the payment,
    goes first once Stripe answers, and the final reminder and suspension wait for it (docs/dunning.md)."""
    import stripe

    policy = load_policy(write_rules(tmp_path / "retry_rules", RETRY_THEN_SUSPEND))
    put_invoice(wh, "in_1")
    run_dunning(wh, None, policy, T0)
    down = _fake_client(_FakeInvoices(down=stripe.APIConnectionError("connection refused")))
    result = run_dunning(wh, down, policy, T0 + 14 * DAY)
    assert result.report.counts == {"retry:error": 1, "reminder:deferred": 1, "suspend:deferred": 1}
    assert result.report.errors == ["dunning:in_1:payment_retry: APIConnectionError: connection refused"]
    assert [r[1] for r in ledger(wh)] == ["first_reminder"]


REMOVABLE = """
default:
  steps:
    - {name: first_reminder, day: 0, action: reminder, template: t}
    - {name: payment_retry, day: 3, action: retry}
    - {name: suspension, day: 14, action: suspend}
templates:
  t: {subject: "s", body: "b"}
"""


def _crash_with_pending(con: duckdb.DuckDBPyConnection, rules: Path, client: object, now, step: str) -> None:
    """A run killed right after `step`'s pending ledger row was committed."""
    from metering.dunning.actions import ActionHooks

    class Crash(BaseException):
        pass

    def crash(row: dict) -> None:
        if row["step_name"] == step:
            raise Crash

    with pytest.raises(Crash):
        run_dunning(con, client, load_policy(rules), now, hooks=ActionHooks(after_ledger_commit=crash))


def test_a_pending_reminder_whose_step_was_removed_is_resolved(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """Crash with the first reminder pending, then the step is deleted from the policy: the row is
    skipped with the reason and its message withdrawn, not left pending forever."""
    rules = write_rules(tmp_path / "rules", REMOVABLE)
    put_invoice(wh, "in_1")
    _crash_with_pending(wh, rules, None, T0, "first_reminder")
    write_rules(rules, REMOVABLE.replace("    - {name: first_reminder, day: 0, action: reminder, template: t}\n", ""))
    result = run_dunning(wh, None, load_policy(rules), T0 + DAY)
    assert (result.report.counts, result.report.errors) == ({"reminder:skipped": 1}, [])
    assert ledger(wh) == [
        ("dunning:in_1:first_reminder", "first_reminder", "reminder", "skipped", "step_removed_from_policy", 1)]
    assert wh.execute("SELECT count(*) FROM dunning_outbox").fetchone()[0] == 0


@pytest.mark.parametrize(
    ("charged", "attempt_count", "status", "outcome"),
    [(True, 1, "done", "attempted:invoice.payment_failed"),   # the charge went through before the crash
     (False, 1, "skipped", "step_removed_from_policy"),       # Stripe has no trace of it: never made
     # a higher count is one of Stripe's automatic retries: a manual charge does not move it (review)
     (False, 2, "skipped", "step_removed_from_policy")],
)
def test_a_pending_retry_whose_step_was_removed_is_read_back_from_stripe(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path,
    charged: bool, attempt_count: int, status: str, outcome: str,
) -> None:
    rules = write_rules(tmp_path / "rules", REMOVABLE)
    put_invoice(wh, "in_1")
    run_dunning(wh, None, load_policy(rules), T0)
    before = _FakeInvoices(SimpleNamespace(status="open", attempt_count=1, next_payment_attempt=None))
    _crash_with_pending(wh, rules, _fake_client(before), T0 + 3 * DAY, "payment_retry")
    write_rules(rules, REMOVABLE.replace("    - {name: payment_retry, day: 3, action: retry}\n", ""))
    edited = load_policy(rules)

    # without a client the charge's fate is unknown: the row stays pending and holds the invoice
    result = run_dunning(wh, None, edited, T0 + 14 * DAY)
    assert result.report.counts == {"retry:no_stripe_client": 1, "suspend:deferred": 1}
    assert result.report.errors == ["dunning:in_1:payment_retry: no Stripe client configured (set STRIPE_API_KEY)"]

    after = _FakeInvoices(SimpleNamespace(status="open", attempt_count=attempt_count, next_payment_attempt=None))
    events = [_charge_event("in_1", "dunning:in_1:payment_retry")] if charged else []
    result = run_dunning(wh, _fake_client(after, events), edited, T0 + 14 * DAY)
    assert (result.report.counts, result.report.errors) == ({"retry:" + status: 1, "suspend:done": 1}, [])
    assert after.paid == []                                  # read back, never charged again
    assert [r[1:5] for r in ledger(wh)] == [
        ("first_reminder", "reminder", "done", "rendered"),
        ("payment_retry", "retry", status, outcome),
        ("suspension", "suspend", "done", "suspended"),
    ]


def test_a_retry_cut_short_by_a_crash_is_made_when_our_state_lagged_stripes_attempts(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path
) -> None:
    """Our state says 1 attempt; Stripe has made 2 and its schedule has ended. The run crashed after
    the ledger row, before the charge. The row stored the state's count (1), so the rerun read Stripe's
    2 as proof that our charge was made: `done`, `attempted`, and the card was never charged (audit).
    A count is no proof of our charge (a manual one does not move it); the charge is made, once."""
    rules = write_rules(tmp_path / "rules", REMOVABLE)
    put_invoice(wh, "in_1")
    run_dunning(wh, None, load_policy(rules), T0)
    invoices = _FakeInvoices(SimpleNamespace(status="open", attempt_count=2, next_payment_attempt=None))
    _crash_with_pending(wh, rules, _fake_client(invoices), T0 + 3 * DAY, "payment_retry")
    assert invoices.paid == []
    result = run_dunning(wh, _fake_client(invoices), load_policy(rules), T0 + 3 * DAY + timedelta(hours=1))
    assert invoices.paid == ["dunning:in_1:payment_retry"]
    assert result.report.counts == {"retry:done": 1}
    assert [r[1:5] for r in ledger(wh)][1] == ("payment_retry", "retry", "done", "status:open")


@pytest.mark.parametrize("stripe_status", ["uncollectible", "paid", "void"])
def test_a_due_retry_never_charges_an_invoice_stripe_has_taken_out_of_dunning(
    wh: duckdb.DuckDBPyConnection, tmp_path: Path, isolated_env: Path, stripe_status: str
) -> None:
    """Our state still says open (the webhook has not landed); Stripe has written the invoice off. The
    retry charged it anyway and counted it recovered (audit). It is skipped, naming Stripe's status."""
    rules = write_rules(tmp_path / "rules", REMOVABLE)
    put_invoice(wh, "in_1")
    run_dunning(wh, None, load_policy(rules), T0)
    invoices = _FakeInvoices(SimpleNamespace(status=stripe_status, attempt_count=1, next_payment_attempt=None),
                             pays="paid")
    result = run_dunning(wh, _fake_client(invoices), load_policy(rules), T0 + 3 * DAY)
    assert invoices.paid == []
    assert result.report.counts == {"retry:skipped": 1}
    assert [r[1:5] for r in ledger(wh)][1] == ("payment_retry", "retry", "skipped", f"stripe_{stripe_status}")
