"""Reminder emails: rendered from the policy's templates into an outbox (a table and one `.eml` file
per message), and sent through SMTP only when `METERING_SMTP_HOST` is configured.

| variable | meaning | default |
| --- | --- | --- |
| `METERING_OUTBOX_DIR` | folder of rendered messages | `data/outbox/` |
| `METERING_SMTP_HOST` / `METERING_SMTP_PORT` | the relay; unset = render only | - / 25 |
| `METERING_SMTP_FROM` | sender address | `billing@localhost` |
| `METERING_SMTP_USER` / `METERING_SMTP_PASSWORD` | login, when the relay needs one (never logged) | - |
| `METERING_SMTP_STARTTLS` | `1` to upgrade the connection with STARTTLS | off |

Rendering is deterministic (message id and Date come from the idempotency key and the dunning
clock), so re-rendering after a crash rewrites the same bytes. Sending is at-least-once: SMTP has no
idempotency key, so a crash between the relay's acceptance and the `sent` mark re-sends that one
message; the stable Message-ID lets mail systems drop the duplicate.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import smtplib
from collections.abc import Iterable
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

import duckdb
import pyarrow as pa

from metering import config
from metering.dunning.policy import LINE_BREAK, Template
from metering.errors import BadInputError
from metering.files import write_atomically
from metering.logs import redact

log = logging.getLogger(__name__)


def smtp_port() -> int:
    """`METERING_SMTP_PORT` (default 25). Raises `BadInputError` naming the variable when it is not a port."""
    text = (os.environ.get("METERING_SMTP_PORT") or "").strip() or "25"
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 0 < int(text) < 65536:   # ASCII: isdigit() takes '²'
        raise BadInputError(f"METERING_SMTP_PORT: {text!r} is not a TCP port (1-65535)")
    return int(text)


OUTBOX_ENV = "METERING_OUTBOX_DIR"


def outbox_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The reminder outbox: explicit, else `METERING_OUTBOX_DIR`, else `data/outbox/`."""
    return config.resolve_path(explicit, OUTBOX_ENV, lambda: config.data_dir() / "outbox")


def message_id(idempotency_key: str) -> str:
    return "dunning-" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:24]


def sender() -> str:
    return os.environ.get("METERING_SMTP_FROM") or "billing@localhost"


def header_text(value: str) -> str:
    """`value` on one line: each line break becomes a space.

    Header values carry data from Stripe (a customer's metadata id in the subject), and a line break
    there would start a header of its own (`Bcc: ...`); the email package refuses it outright.
    """
    return LINE_BREAK.sub(" ", value)


def render(template: Template, fields: dict[str, str]) -> tuple[str, str]:
    """Subject (one line) and body with the placeholders filled (the policy validator checked their names)."""
    return header_text(template.subject.format(**fields)).strip(), template.body.format(**fields)


def build_message(
    msg_id: str, key: str, to_address: str | None, subject: str, body: str, now: datetime
) -> EmailMessage:
    """The reminder as an email; every header value is kept on one line (`header_text`)."""
    msg = EmailMessage()
    msg["From"] = header_text(sender())
    if to_address:
        msg["To"] = header_text(to_address)
    msg["Subject"] = header_text(subject)
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = f"<{msg_id}@metering.dunning>"
    msg["X-Metering-Idempotency-Key"] = header_text(key)
    msg.set_content(body, cte="8bit")
    return msg


def write_message(folder: Path, msg_id: str, message: EmailMessage) -> str:
    """Write `<msg_id>.eml` atomically (temp file, fsync, rename). Returns the file name."""
    name = f"{msg_id}.eml"
    write_atomically(folder / name, message.as_bytes())
    return name


def smtp_configured() -> bool:
    return bool(os.environ.get("METERING_SMTP_HOST"))


def withdraw(con: duckdb.DuckDBPyConnection, folder: Path, msg_id: str, reason: str) -> None:
    """Take a message back before it is sent: its `.eml` file is removed, its row marked `withdrawn`."""
    (folder / f"{msg_id}.eml").unlink(missing_ok=True)
    con.execute(
        "UPDATE dunning_outbox SET status = 'withdrawn', last_error = ?"
        " WHERE message_id = ? AND status IN ('rendered', 'send_failed')",
        [reason, msg_id],
    )


def withdraw_stale(con: duckdb.DuckDBPyConnection, folder: Path, open_invoices: Iterable[str]) -> int:
    """Withdraw every unsent message that must not go out any more. Returns how many.

    A reminder waiting for the relay (not configured yet, or down) is stale once its invoice has
    left dunning (paid, void, written off: "payment failed" is then wrong), or once a later
    reminder exists for the same invoice (catching up sends only the latest one).
    """
    con.register("_dunning_open", pa.table({"invoice_id": pa.array(sorted(set(open_invoices)), pa.string())}))
    try:
        stale = con.execute(
            """
            WITH ranked AS (
                SELECT message_id, invoice_id, status,
                       row_number() OVER (PARTITION BY invoice_id ORDER BY rendered_at DESC, message_id DESC) AS rn
                FROM dunning_outbox
            )
            SELECT message_id,
                   CASE WHEN invoice_id NOT IN (SELECT invoice_id FROM _dunning_open) THEN 'invoice_left_dunning'
                        ELSE 'superseded_by_later_reminder' END
            FROM ranked
            WHERE status IN ('rendered', 'send_failed')
              AND (invoice_id NOT IN (SELECT invoice_id FROM _dunning_open) OR rn > 1)
            ORDER BY message_id
            """
        ).fetchall()
    finally:
        con.unregister("_dunning_open")
    for msg_id, reason in stale:
        withdraw(con, folder, msg_id, reason)
    return len(stale)


def send_pending(
    con: duckdb.DuckDBPyConnection, now: datetime, folder: Path, open_invoices: Iterable[str]
) -> tuple[int, list[str]]:
    """Send every rendered outbox message that has a recipient, when SMTP is configured.

    `open_invoices` are the invoices still in dunning: messages about any other invoice, and
    reminders overtaken by a later one, are withdrawn instead (`withdraw_stale`). Without SMTP the
    rendered file is the delivery (another mailer may already have picked it up), so nothing is
    withdrawn then. Returns (messages sent, errors). Each message is marked `sent` right after the
    relay accepts it.
    """
    if not smtp_configured():
        return 0, []
    withdraw_stale(con, folder, open_invoices)
    rows = con.execute(
        "SELECT message_id, file_name FROM dunning_outbox"
        " WHERE status IN ('rendered', 'send_failed') AND to_address IS NOT NULL ORDER BY message_id"
    ).fetchall()
    if not rows:
        return 0, []
    host = os.environ["METERING_SMTP_HOST"]
    port = smtp_port()
    sent, errors = 0, []
    try:
        with smtplib.SMTP(host, port, timeout=30) as smtp:
            if os.environ.get("METERING_SMTP_STARTTLS") == "1":
                smtp.starttls()
            user = os.environ.get("METERING_SMTP_USER")
            if user:
                smtp.login(user, os.environ.get("METERING_SMTP_PASSWORD", ""))
            for msg_id, file_name in rows:
                try:
                    smtp.send_message(_read_message(folder / file_name))
                except (smtplib.SMTPException, OSError) as exc:
                    error = redact(f"{type(exc).__name__}: {exc}")
                    errors.append(f"{msg_id}: {error}")
                    con.execute(
                        "UPDATE dunning_outbox SET status = 'send_failed', last_error = ? WHERE message_id = ?",
                        [error, msg_id],
                    )
                    continue
                con.execute(
                    "UPDATE dunning_outbox SET status = 'sent', sent_at = ?, last_error = NULL WHERE message_id = ?",
                    [now, msg_id],
                )
                sent += 1
    except (smtplib.SMTPException, OSError) as exc:
        errors.append(redact(f"SMTP relay {host}:{port}: {type(exc).__name__}: {exc}"))
    for error in errors:
        log.warning("reminder not sent: %s", error)
    return sent, errors


def _read_message(path: Path) -> EmailMessage:
    from email import policy as email_policy
    from email.parser import BytesParser

    with open(path, "rb") as fh:
        return BytesParser(policy=email_policy.default).parse(fh)  # type: ignore[return-value]
