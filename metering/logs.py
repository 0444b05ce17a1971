"""One logging set-up for the CLI and the assets: readable on a terminal, JSON lines otherwise.

A redaction filter masks anything that looks like a Stripe secret (and the values of the secret
environment variables) in every record, so a stray f-string can never leak a key into a log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import datetime, timezone

SECRET_ENV_VARS = ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "METERING_SANDBOX_API_KEY")
_SECRET_PATTERN = re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9_]+|\bwhsec_[A-Za-z0-9_]+")
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def redact(text: str) -> str:
    """Mask Stripe key shapes and the current values of the secret environment variables."""
    for name in SECRET_ENV_VARS:
        for value in (os.environ.get(name) or "").split(","):
            value = value.strip()
            if len(value) >= 6:
                text = text.replace(value, "[REDACTED]")
    return _SECRET_PATTERN.sub("[REDACTED]", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = value
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return redact(json.dumps(payload, default=str))


class TerminalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")


def setup_logging(level: str | int | None = None, json_output: bool | None = None) -> None:
    """Configure the root logger once. JSON when stderr is not a terminal or `METERING_LOG_JSON=1`."""
    level = level or os.environ.get("METERING_LOG_LEVEL", "INFO")
    if json_output is None:
        env = os.environ.get("METERING_LOG_JSON")
        json_output = env == "1" if env is not None else not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_output else TerminalFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if getattr(existing, "_metering", False):
            root.removeHandler(existing)
    handler._metering = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # stripe-python logs request details at debug; keep it at warning so nothing sensitive flows.
    logging.getLogger("stripe").setLevel(logging.WARNING)
    # Dagster's instance storage migrates with alembic, which narrates every step at info.
    logging.getLogger("alembic").setLevel(logging.WARNING)
