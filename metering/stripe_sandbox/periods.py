"""Billing period arithmetic: anchors, intervals and the end-of-month rule (UTC)."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta, timezone


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def add_interval(anchor: int, interval: str, count: int, steps: int) -> int:
    """``anchor`` moved by ``steps`` intervals. Months keep the anchor's day, clamped to the last day
    of shorter months (an anchor on the 31st bills on Feb 28/29, then the 31st again)."""
    moment = _utc(anchor)
    if interval in ("day", "week"):
        days = (1 if interval == "day" else 7) * count * steps
        return int((moment + timedelta(days=days)).timestamp())
    months = count * steps * (12 if interval == "year" else 1)
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def next_boundary(anchor: int, interval: str, count: int, after: int) -> int:
    """The first billing boundary (anchor + k intervals, k >= 0 or k < 0) strictly after ``after``."""
    steps = 0
    if anchor > after:
        while add_interval(anchor, interval, count, steps - 1) > after:
            steps -= 1
        return add_interval(anchor, interval, count, steps)
    while add_interval(anchor, interval, count, steps) <= after:
        steps += 1
    return add_interval(anchor, interval, count, steps)


def previous_boundary(anchor: int, interval: str, count: int, boundary: int) -> int:
    """The boundary one interval before ``boundary`` (same anchor rules)."""
    steps = 0
    while add_interval(anchor, interval, count, steps) < boundary:
        steps += 1
    while add_interval(anchor, interval, count, steps) > boundary:
        steps -= 1
    return add_interval(anchor, interval, count, steps - 1)
