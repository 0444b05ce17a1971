"""Tests that kill mutants the dunning suite let through in `metering.dunning.outbox` (hand mutation
audit 22c): a reminder the relay did not take (`send_failed`) is retried on the next run, and is
withdrawn, not sent, once its invoice has left dunning."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from dunning_helpers import DAY, T0, SmtpRelay, closed_port, pay_invoice, point_smtp_at, put_invoice
from test_actions import _with_email, outbox_rows

from metering.dunning.outbox import smtp_port
from metering.dunning.policy import DunningPolicy
from metering.dunning.run import run_dunning
from metering.errors import BadInputError

KEY = "dunning:in_1:first_reminder"


def _drop_the_connection() -> None:
    """The relay goes away after the message's last line, before it says it accepted it."""
    raise ConnectionAbortedError("relay dropped the connection")


def _first_reminder_not_taken(con, policy, monkeypatch, relay: SmtpRelay) -> None:
    """in_1 fails at T0; its first reminder goes to the relay, which drops the connection: `send_failed`."""
    _with_email(con, "c_in_1", "pay@one.example")
    put_invoice(con, "in_1")
    point_smtp_at(monkeypatch, relay.port)
    relay.on_accept = _drop_the_connection
    first = run_dunning(con, None, policy, T0)
    assert first.reminders_sent == 0 and len(first.report.errors) == 1
    assert [row[:2] for row in outbox_rows(con)] == [(KEY, "send_failed")]
    relay.on_accept = None


def test_a_reminder_the_relay_did_not_take_is_sent_on_the_next_run(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch, smtp_relay: SmtpRelay,
) -> None:
    """T0 + 1 d, the relay works again, the invoice is still unpaid: the same message goes out (1 sent),
    and its row is `sent` with the run's clock and no error left over from the failed attempt."""
    _first_reminder_not_taken(wh, no_stripe_policy, monkeypatch, smtp_relay)
    again = run_dunning(wh, None, no_stripe_policy, T0 + DAY)
    assert (again.reminders_sent, again.report.errors) == (1, [])
    assert wh.execute("SELECT idempotency_key, status, sent_at, last_error FROM dunning_outbox").fetchall() == [
        (KEY, "sent", T0 + DAY, None)]


def test_a_reminder_the_relay_did_not_take_is_withdrawn_once_the_invoice_is_paid(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch, smtp_relay: SmtpRelay,
) -> None:
    """The customer pays on day 2; the relay works again: no "unpaid" email goes out, no error is
    reported, the row is `withdrawn` (invoice_left_dunning) and its .eml file is gone."""
    _first_reminder_not_taken(wh, no_stripe_policy, monkeypatch, smtp_relay)
    received_before = len(smtp_relay.received)
    pay_invoice(wh, "in_1", T0 + 2 * DAY)
    result = run_dunning(wh, None, no_stripe_policy, T0 + 2 * DAY)
    assert (result.reminders_sent, result.report.errors) == (0, [])
    assert len(smtp_relay.received) == received_before
    assert outbox_rows(wh) == [(KEY, "withdrawn", "invoice_left_dunning")]
    assert list((isolated_env / "outbox").iterdir()) == []


def test_with_nothing_to_send_a_run_does_not_call_the_relay(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay is configured but down, and no invoice is in dunning: nothing to send, so no
    connection is tried and no "reminder not sent" error is reported."""
    point_smtp_at(monkeypatch, closed_port())
    result = run_dunning(wh, None, no_stripe_policy, T0)
    assert (result.reminders_sent, result.report.errors) == (0, [])


@pytest.mark.parametrize(("text", "port"), [("1", 1), ("65535", 65535), ("", 25)])
def test_the_smtp_port_takes_1_to_65535_and_defaults_to_25(monkeypatch: pytest.MonkeyPatch, text: str, port: int):
    monkeypatch.setenv("METERING_SMTP_PORT", text)
    assert smtp_port() == port


@pytest.mark.parametrize("text", ["0", "65536"])
def test_an_smtp_port_outside_1_to_65535_is_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, text: str):
    monkeypatch.setenv("METERING_SMTP_PORT", text)
    with pytest.raises(BadInputError, match=f"METERING_SMTP_PORT: '{text}' is not a TCP port"):
        smtp_port()
