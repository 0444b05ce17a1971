"""Billing period arithmetic: anchors, intervals and the end-of-month rule (UTC)."""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta, timezone


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def add_interval(anchor: int, interval: str, count: int, steps: int, day_of_month: int | None = None) -> int:
    """``anchor`` moved by ``steps`` intervals. Months keep the anchor's day (or ``day_of_month``, from
    ``billing_cycle_anchor_config``, when the anchor itself fell on a shorter month's last day),
    clamped to the last day of shorter months (an anchor on the 31st bills on Feb 28/29, then the 31st
    again)."""
    moment = _utc(anchor)
    if interval in ("day", "week"):
        days = (1 if interval == "day" else 7) * count * steps
        return int((moment + timedelta(days=days)).timestamp())
    months = count * steps * (12 if interval == "year" else 1)
    index = moment.year * 12 + (moment.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(day_of_month or moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def next_boundary(anchor: int, interval: str, count: int, after: int, day_of_month: int | None = None) -> int:
    """The first billing boundary (anchor + k intervals, k >= 0 or k < 0) strictly after ``after``."""
    def at(steps: int) -> int:
        return add_interval(anchor, interval, count, steps, day_of_month)

    steps = 0
    if anchor > after:
        while at(steps - 1) > after:
            steps -= 1
        return at(steps)
    while at(steps) <= after:
        steps += 1
    return at(steps)


def previous_boundary(anchor: int, interval: str, count: int, boundary: int, day_of_month: int | None = None) -> int:
    """The boundary one interval before ``boundary`` (same anchor rules)."""
    def at(steps: int) -> int:
        return add_interval(anchor, interval, count, steps, day_of_month)

    steps = 0
    while at(steps) < boundary:
        steps += 1
    while at(steps) > boundary:
        steps -= 1
    return at(steps - 1)


def anchor_day(sub: dict) -> int | None:
    """The day of month a subscription's periods keep, when set by ``billing_cycle_anchor_config``."""
    config = sub.get("billing_cycle_anchor_config")
    return config["day_of_month"] if config else None


def first_occurrence(start: int, day_of_month: int, hour: int, minute: int, second: int, month: int | None) -> int:
    """The first instant at or after ``start`` on ``day_of_month`` (a shorter month's last day when it
    has fewer days; in ``month`` if given, for yearly prices) at hour:minute:second UTC."""
    moment = _utc(start)
    for ahead in range(0, 25):
        index = moment.year * 12 + moment.month - 1 + ahead
        year, month0 = divmod(index, 12)
        if month is not None and month0 + 1 != month:
            continue
        day = min(day_of_month, calendar.monthrange(year, month0 + 1)[1])
        candidate = datetime(year, month0 + 1, day, hour, minute, second, tzinfo=timezone.utc)
        if candidate >= moment:
            return int(candidate.timestamp())
    raise AssertionError("unreachable")
