"""Option parsing shared by the command modules."""

from __future__ import annotations

import datetime as dt

import click


def parse_date(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.date | None:
    """A click callback: `YYYY-MM-DD` (UTC calendar date) or None; anything else is a usage error."""
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None
