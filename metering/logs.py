"""One logging set-up for the CLI and the assets: readable on a terminal, JSON lines otherwise.

A redaction filter masks anything that looks like a Stripe secret (and the values of the secret
environment variables) in every record, so a stray f-string can never leak a key into a log.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import sys
from datetime import datetime, timezone

SECRET_ENV_VARS = ("STRIPE_API_KEY", "STRIPE_WEBHOOK_SECRET", "STRIPE_SANDBOX_API_KEY", "METERING_SMTP_PASSWORD")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
# `*` too: Stripe's own messages mask a key as `sk_test_********9876`, which still names its end
_SECRET_PATTERN = re.compile(r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9_*]+|\bwhsec_[A-Za-z0-9_*]+")
# uvicorn adds `color_message`, the message again with ANSI colour escapes: noise in a JSON line
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}


def redact(text: str) -> str:
    """Mask Stripe key shapes and the current values of the secret environment variables, whole or as
    Stripe echoes a refused key (`weird-se********-777`: its start and end around asterisks)."""
    for name in SECRET_ENV_VARS:
        raw = os.environ.get(name) or ""
        # the whole value first (a password may hold a comma: split, its halves could be too short to
        # mask), then the parts of the one list variable (the webhook secrets, comma-separated)
        parts = raw.split(",") if name == "STRIPE_WEBHOOK_SECRET" else []
        for value in dict.fromkeys(v.strip() for v in (raw, *parts)):
            if len(value) >= 6:
                text = _masked_form(value).sub("[REDACTED]", text)
                # whole, and as JSON writes it: extra fields are redacted in the written line, where a
                # quote, a backslash or (ensure_ascii) a non-ASCII character is escaped
                for form in dict.fromkeys((value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1])):
                    text = text.replace(form, "[REDACTED]")
    return _SECRET_PATTERN.sub("[REDACTED]", text)


_MASK_START = (4, 8)   # Stripe echoes a refused key as its first 8 characters (fewer of a short key) ...
_MASK_END = 4         # ... asterisks, and its last 4: `weird-se********-777`


@functools.lru_cache(maxsize=32)
def _masked_form(value: str) -> re.Pattern[str]:
    """`value` as Stripe masks it: a start of it (4 to 8 characters), asterisks, its last 4 characters.
    Anything less specific (asterisks beside a few characters that merely occur in the secret, such as
    `card ****2024`) is not it; the key shape `_SECRET_PATTERN` covers `sk_test_****`."""
    lo, hi = _MASK_START
    starts = "|".join(re.escape(value[:n]) for n in range(min(hi, len(value)), lo - 1, -1))
    if len(value) < _MASK_END or not starts:
        return re.compile(r"(?!)")   # too short to have a masked form worth matching (whole, it is replaced)
    return re.compile(rf"(?:{starts})\*+{re.escape(value[-_MASK_END:])}")


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
        payload.update(extra_fields(record))
        if record.exc_info:
            payload["exc"] = redact(self.formatException(record.exc_info))
        return redact(json.dumps(payload, default=str))


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The structured fields a call passed with `extra=` (the same in JSON and on a terminal)."""
    return {key: value for key, value in vars(record).items()
            if key not in _STANDARD_ATTRS and not key.startswith("_")}


def _compact(value: object) -> str:
    """A field value for a terminal line: bare when it is one plain word, else as JSON."""
    if isinstance(value, str) and value and not any(c.isspace() or c in "=\"'" for c in value):
        return value
    return json.dumps(value, default=str, ensure_ascii=False, separators=(",", ":"))


class TerminalFormatter(logging.Formatter):
    """`12:00:00 WARNING logger: message key=value ...`: the record's extra fields follow the message
    (they were dropped, and with them the file names of a warning), and the whole line, traceback
    included, passes the redaction."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record)
        fields = " ".join(f"{key}={_compact(value)}" for key, value in extra_fields(record).items())
        return f"{line} {fields}" if fields else line

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def parse_log_level(text: str, where: str = "--log-level") -> str:
    """`debug`, `Info`, ... -> the level's name. Raises ValueError naming `where` for anything else."""
    name = text.strip().upper()
    if name not in LOG_LEVELS:
        raise ValueError(f"{where}: {text!r} is not a log level (one of {', '.join(LOG_LEVELS)}, any case)")
    return name


def env_log_level() -> str | None:
    """`METERING_LOG_LEVEL` as a level name; None when unset or empty. Raises ValueError when invalid."""
    text = os.environ.get("METERING_LOG_LEVEL", "").strip()
    return parse_log_level(text, "METERING_LOG_LEVEL") if text else None


def env_log_json() -> bool | None:
    """`METERING_LOG_JSON`: 1/true/yes/on or 0/false/no/off; None when unset or empty. Raises ValueError
    otherwise, so a `yes` meant as JSON can never silently mean text."""
    text = os.environ.get("METERING_LOG_JSON", "").strip()
    if not text:
        return None
    if text.lower() in _TRUE + _FALSE:
        return text.lower() in _TRUE
    raise ValueError(f"METERING_LOG_JSON: {text!r} is not a yes/no value (1, true, yes, on / 0, false, no, off)")


def setup_logging(level: str | int | None = None, json_output: bool | None = None) -> None:
    """Configure the root logger once. JSON when stderr is not a terminal or `METERING_LOG_JSON` says so.

    `level` and `json_output` default to `METERING_LOG_LEVEL` / `METERING_LOG_JSON` (empty = unset);
    an invalid value raises ValueError naming the variable.
    """
    level = level or env_log_level() or "INFO"
    if isinstance(level, str):
        level = parse_log_level(level)
    if json_output is None:
        json_output = env_log_json()
    if json_output is None:
        json_output = not sys.stderr.isatty()
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
    _silence_stripe_console()
    # Dagster's instance storage migrates with alembic, which narrates every step at info.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _silence_stripe_console() -> None:
    """stripe-python prints every request and response to stderr when `STRIPE_LOG` is debug or info,
    past any logging handler and so past redaction (I16); it then logs through the `stripe` logger
    only. The variable is read when stripe is imported, so the module's copy is cleared too."""
    if os.environ.pop("STRIPE_LOG", None):
        logging.getLogger(__name__).warning(
            "STRIPE_LOG is ignored: stripe-python would print requests and responses unredacted")
    util = sys.modules.get("stripe._util")
    if util is not None:
        util.STRIPE_LOG = None  # type: ignore[attr-defined]
    sdk = sys.modules.get("stripe")
    if sdk is not None:
        sdk.log = None  # type: ignore[attr-defined]
