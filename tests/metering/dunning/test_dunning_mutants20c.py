"""Gaps found by a hand mutation audit of metering/dunning (mutants20, third pass): written off and void
rank the same, so an invoice written off and then voided is void (the later close), which lifts its
customer's suspension; and a run's own paid retry counts at once, for the reminders it sends and for the state
it returns and stores."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import test_sandbox_scenario as scenario
from dunning_helpers import DAY, T0, SmtpRelay, point_smtp_at, published_suspensions, put_invoice

from metering import warehouse
from metering.dunning.policy import DunningPolicy
from metering.dunning.run import run_dunning
from metering.stripe_sandbox.testing import running_sandbox


def test_a_written_off_invoice_then_voided_is_void_and_lifts_the_suspension(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    """in_1 (50.00 USD) fails at T0 (2026-11-02 09:30): suspended on day 14 (2026-11-16 09:30). Stripe marks it
    uncollectible on day 15: written off, still suspended. Stripe voids it on day 16: written_off and void
    have the same rank (neither goes back to the other), so the later close wins: void, reason `voided`,
    and a void invoice no longer suspends its customer (suspended only in_dunning or written_off)."""
    put_invoice(wh, "in_1")
    run_dunning(wh, None, no_stripe_policy, T0 + 14 * DAY)
    assert [r["invoice_ids"] for r in published_suspensions(isolated_env)] == [["in_1"]]
    put_invoice(wh, "in_1", status="uncollectible", state_event_created=T0 + 15 * DAY)
    written_off = run_dunning(wh, None, no_stripe_policy, T0 + 15 * DAY)
    assert written_off.state.select("invoice_id", "state", "reason").rows() == [("in_1", "written_off", "uncollectible")]
    assert [r["invoice_ids"] for r in published_suspensions(isolated_env)] == [["in_1"]]
    put_invoice(wh, "in_1", status="void", state_event_created=T0 + 16 * DAY)
    voided = run_dunning(wh, None, no_stripe_policy, T0 + 16 * DAY)
    # closed_at stays the first close, Stripe's write-off seen on day 15 (2026-11-17 09:30)
    assert voided.state.select("invoice_id", "state", "reason", "closed_at").rows() == [
        ("in_1", "void", "voided", T0 + 15 * DAY)]
    assert published_suspensions(isolated_env) == []
    assert wh.execute("SELECT count(*) FROM suspensions").fetchone() == (0,)
    assert wh.execute("SELECT invoice_id, state FROM dunning_state").fetchall() == [("in_1", "void")]


@pytest.mark.slow
def test_our_paid_retry_withdraws_the_waiting_reminder_and_the_run_records_recovered(
    tmp_path: Path, rules_dir: Path, monkeypatch: pytest.MonkeyPatch, smtp_relay: SmtpRelay
) -> None:
    """The shipped policy against the sandbox (scenario.Scenario): c_pays' yearly renewal (50.00 USD) declines on
    day 0 (2026-10-01 00:00); the first reminder is rendered with no relay configured, so it waits in the outbox.
    Day 3: the card works again and the relay is up. The run's payment_retry pays the invoice; no webhook is
    synced before the run ends. The reminders are sent against the state AFTER the actions: the invoice is
    recovered, so the waiting "unpaid" reminder is withdrawn, not sent; and the run's final state (returned
    and stored in dunning_state) is recovered, with 5000 paid, 0 remaining, closed at the run's clock."""
    with running_sandbox(payment_retry_days=(), after_final_failure="past_due") as sb:
        s = scenario.Scenario(sb, tmp_path / "data" / "warehouse.duckdb", rules_dir, tmp_path)
        [(cus, inv)] = s.subscribe("c_pays")
        with warehouse.open_warehouse(s.db) as con:
            con.execute("INSERT INTO customer_plans (customer_id, email, currency, plan, plan_effective_from,"
                        " payment_behavior, source_line) VALUES ('c_pays', 'pay@c.example', 'usd', 'starter',"
                        " DATE '2026-01-01', 'fails', 2)")
        s.run()                                            # day 0: rendered, no relay configured
        key = f"dunning:{inv}:first_reminder"
        assert s.table("SELECT idempotency_key, status FROM dunning_outbox") == [(key, "rendered")]

        day3 = s.advance(3)
        sb.set_payment_behavior(cus, "succeeds")
        point_smtp_at(monkeypatch, smtp_relay.port)
        with warehouse.open_warehouse(s.db) as con:
            s.sync(con)
            result = run_dunning(con, s.client, s.policy, day3)
        assert result.report.errors == []
        assert result.report.counts == {"retry:done": 1}
        assert s.ours("/pay") == [(f"/v1/invoices/{inv}/pay", f"dunning:{inv}:payment_retry", 200)]
        assert (result.reminders_sent, smtp_relay.received) == (0, [])
        assert s.table("SELECT idempotency_key, status, last_error FROM dunning_outbox") == [
            (key, "withdrawn", "invoice_left_dunning")]
        expected = [(inv, "recovered", "paid", 5000, 0, "payment_retry", day3)]
        cols = ("invoice_id", "state", "reason", "amount_paid", "amount_remaining", "step_name", "closed_at")
        assert result.state.select(cols).rows() == expected
        assert s.table(f"SELECT {', '.join(cols)} FROM dunning_state") == expected


def test_a_message_that_fails_to_send_is_not_marked_sent(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch, smtp_relay: SmtpRelay,
) -> None:
    """in_1 fails at T0; its first reminder is rendered with no relay configured (status `rendered`). Its .eml
    file is then gone, so at T0 + 1 d, with the relay up, reading it fails (an OSError for that one message):
    the message is `send_failed` with its error, not `sent`; 0 sent, nothing reaches the relay."""
    wh.execute("INSERT INTO customer_plans (customer_id, email, currency, plan, plan_effective_from,"
               " payment_behavior, source_line) VALUES ('c_in_1', 'pay@one.example', 'usd', 'starter',"
               " DATE '2026-01-01', 'fails', 2)")
    put_invoice(wh, "in_1")
    run_dunning(wh, None, no_stripe_policy, T0)
    [eml] = list((isolated_env / "outbox").iterdir())
    eml.unlink()
    point_smtp_at(monkeypatch, smtp_relay.port)
    result = run_dunning(wh, None, no_stripe_policy, T0 + DAY)
    assert (result.reminders_sent, smtp_relay.received, len(result.report.errors)) == (0, [], 1)
    assert "FileNotFoundError" in result.report.errors[0]
    [(status, sent_at, error)] = wh.execute("SELECT status, sent_at, last_error FROM dunning_outbox").fetchall()
    assert (status, sent_at) == ("send_failed", None) and error.startswith("FileNotFoundError")
