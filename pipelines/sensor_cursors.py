"""Reading a sensor's cursor defensively: an unreadable cursor is dropped, never fatal.

A sensor whose cursor cannot be parsed (bad JSON, a shape from an older version, an entry with a
missing key) would otherwise raise on every tick until someone edits the cursor by hand. Our
sensors only request idempotent runs (ingestion skips content already ingested, landing reads
from offsets stored in the warehouse), so starting over from an empty cursor is always safe.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import dagster as dg

T = TypeVar("T")


def read_cursor(context: dg.SensorEvaluationContext, parse: Callable[[str], T]) -> T | None:
    """`parse(context.cursor)`, or None when there is no cursor or `parse` raises ValueError.

    `parse` must raise ValueError (json.JSONDecodeError is one) for anything it does not accept.
    An unreadable cursor is logged as a warning; the caller then starts from scratch.
    """
    if not context.cursor:
        return None
    try:
        return parse(context.cursor)
    except ValueError as exc:
        context.log.warning(
            f"unreadable sensor cursor dropped, starting over (rescanning is harmless: runs skip what is "
            f"already done): {exc}; cursor was {context.cursor[:200]!r}")
        return None


def json_object(text: str, what: str) -> dict:
    """`json.loads(text)` when it is a JSON object, else ValueError naming `what` was expected."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"expected {what}, got {type(value).__name__}")
    return value


def require_fields(value: object, fields: dict[str, type], where: str) -> dict:
    """`value` as a dict with exactly `fields` (name -> exact type; bool is not an int), else ValueError."""
    if not isinstance(value, dict) or set(value) != set(fields):
        keys = sorted(value) if isinstance(value, dict) else type(value).__name__
        raise ValueError(f"{where}: expected keys {sorted(fields)}, got {keys}")
    for name, kind in fields.items():
        if type(value[name]) is not kind:
            raise ValueError(f"{where}: {name} should be {kind.__name__}, got {value[name]!r}")
    return value
