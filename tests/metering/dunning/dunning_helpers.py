"""Hand-built reconciled Stripe state for the dunning tests (real DuckDB, no Stripe)."""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import duckdb
import pytest

T0 = datetime(2026, 11, 2, 9, 30, tzinfo=timezone.utc)   # the first failed payment in most tests
DAY = timedelta(days=1)

# stripe_invoices as the contract states it (contracts.md); the webhooks migration creates the same
# table with more columns, and CREATE TABLE IF NOT EXISTS keeps whichever came first.
STRIPE_INVOICES_DDL = """
CREATE TABLE IF NOT EXISTS stripe_invoices (
    invoice_id VARCHAR NOT NULL, customer VARCHAR, customer_id VARCHAR, subscription_id VARCHAR,
    status VARCHAR, currency VARCHAR, amount_due BIGINT, amount_paid BIGINT, amount_remaining BIGINT,
    total BIGINT, subtotal BIGINT, attempt_count BIGINT, next_payment_attempt TIMESTAMPTZ,
    period_start TIMESTAMPTZ, period_end TIMESTAMPTZ, created TIMESTAMPTZ, finalized_at TIMESTAMPTZ,
    paid_at TIMESTAMPTZ, state_event_created TIMESTAMPTZ, state_event_id VARCHAR
)
"""

NO_STRIPE_POLICY = """
default:
  minimum_amount: {usd: "1.00", jpy: "100"}
  steps:
    - {name: first_reminder, day: 0, action: reminder, template: failed}
    - {name: final_reminder, day: 7, action: reminder, template: failed}
    - {name: suspension, day: 14, action: suspend}
templates:
  failed:
    subject: "Invoice {invoice_id} unpaid"
    body: "{amount} {currency} unpaid for {days_overdue} days ({step}, since {first_failed_date})"
"""


def ensure_invoices_table(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(STRIPE_INVOICES_DDL)


def put_invoice(con: duckdb.DuckDBPyConnection, invoice_id: str, **fields: Any) -> None:
    """Insert or replace one reconciled invoice row (defaults: an open usd invoice of 50.00, failed once)."""
    row = {
        "invoice_id": invoice_id, "customer": f"cus_{invoice_id}", "customer_id": f"c_{invoice_id}",
        "status": "open", "currency": "usd", "amount_due": 5000, "amount_paid": 0,
        "amount_remaining": 5000, "attempt_count": 1, "next_payment_attempt": None,
        "finalized_at": T0, "paid_at": None, "state_event_created": T0,
    }
    row.update(fields)
    con.execute("DELETE FROM stripe_invoices WHERE invoice_id = ?", [invoice_id])
    cols = ", ".join(row)
    con.execute(f"INSERT INTO stripe_invoices ({cols}) VALUES ({', '.join('?' for _ in row)})", list(row.values()))


def pay_invoice(con: duckdb.DuckDBPyConnection, invoice_id: str, at: datetime) -> None:
    con.execute(
        "UPDATE stripe_invoices SET status = 'paid', amount_paid = amount_due, amount_remaining = 0,"
        " paid_at = ?, next_payment_attempt = NULL WHERE invoice_id = ?",
        [at, invoice_id],
    )


def write_rules(folder: Path, policy_text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dunning.yaml").write_text(policy_text)
    return folder


@dataclass
class SmtpRelay:
    """A minimal SMTP relay on loopback: every message it accepts, as raw bytes. `on_accept`, when set,
    runs after a message's last line and before the relay answers that it accepted it."""

    port: int
    received: list[bytes] = field(default_factory=list)
    on_accept: Callable[[], None] | None = None


def published_suspensions(data: Path) -> list[dict]:
    """The suspended customers in the published suspensions.json under the data folder `data`."""
    return json.loads((data / "published" / "suspensions.json").read_text())["suspended"]


def start_smtp_relay() -> tuple[SmtpRelay, socketserver.ThreadingTCPServer]:
    relay = SmtpRelay(port=0)

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            self.wfile.write(b"220 test relay\r\n")
            data = None
            while line := self.rfile.readline():
                if data is not None:
                    if line == b".\r\n":
                        relay.received.append(b"".join(data))
                        data = None
                        if relay.on_accept is not None:
                            relay.on_accept()
                        self.wfile.write(b"250 queued\r\n")
                    else:
                        data.append(line)
                    continue
                verb = line[:4].upper()
                if verb == b"EHLO":
                    self.wfile.write(b"250 relay\r\n")
                elif verb == b"DATA":
                    data = []
                    self.wfile.write(b"354 go\r\n")
                elif verb == b"QUIT":
                    self.wfile.write(b"221 bye\r\n")
                    return
                else:
                    self.wfile.write(b"250 ok\r\n")

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    relay.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return relay, server


def closed_port() -> int:
    """A loopback port nothing listens on (a relay that is down)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def point_smtp_at(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setenv("METERING_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("METERING_SMTP_PORT", str(port))
