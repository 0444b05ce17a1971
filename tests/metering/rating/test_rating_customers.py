"""The customer list loader and billing periods (invariant I7)."""

from __future__ import annotations

import calendar
import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.customers import (
    anchor_date,
    billing_segments,
    load_customers,
    period_containing,
    period_starting_in,
    periods_between,
    periods_for_month,
    subscription_periods,
)
from metering.errors import BadInputError
from metering.rules.plans import load_rules

PROJECT_ROOT = Path(__file__).resolve().parents[3]
HEADER = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"


@pytest.fixture(scope="module")
def shipped_rules():
    """The shipped rules, read once (no test changes them)."""
    return load_rules(PROJECT_ROOT / "rating_rules")


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "customers.csv"
    path.write_text(HEADER + body)
    return path


# --- periods --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("year", "month", "anchor", "expected"), [
    (2026, 10, None, (dt.date(2026, 10, 1), dt.date(2026, 11, 1))),
    (2026, 10, 15, (dt.date(2026, 10, 15), dt.date(2026, 11, 15))),
    (2026, 1, 31, (dt.date(2026, 1, 31), dt.date(2026, 2, 28))),   # Feb has no 31st: last day
    (2026, 2, 31, (dt.date(2026, 2, 28), dt.date(2026, 3, 31))),   # and the anchor comes back in March
    (2028, 2, 30, (dt.date(2028, 2, 29), dt.date(2028, 3, 30))),   # leap year
    (2026, 4, 31, (dt.date(2026, 4, 30), dt.date(2026, 5, 31))),
    (2026, 12, 5, (dt.date(2026, 12, 5), dt.date(2027, 1, 5))),
])
def test_anchor_periods_follow_stripes_rule(year, month, anchor, expected):
    assert period_starting_in(year, month, anchor) == expected


@settings(max_examples=200, deadline=None)
@given(anchor=st.one_of(st.none(), st.integers(1, 31)),
       first=st.dates(dt.date(2024, 1, 1), dt.date(2030, 12, 31)), days=st.integers(1, 800))
def test_periods_are_contiguous_and_cover_every_day_once(anchor, first, days):
    last = first + dt.timedelta(days=days)
    periods = periods_between(first, last, anchor)
    assert periods[0][0] <= first and periods[-1][1] >= last
    for (s1, e1), (s2, e2) in zip(periods, periods[1:]):
        assert e1 == s2                    # contiguous, non-overlapping, half-open
    for start, end in periods:
        assert start < end
        assert start.day == min(anchor or 1, calendar.monthrange(start.year, start.month)[1])
        assert 28 <= (end - start).days <= 31
    # every day (so every timestamp of that day) is in exactly one period
    for offset in range(0, days, max(1, days // 40)):
        day = first + dt.timedelta(days=offset)
        holding = [p for p in periods if p[0] <= day < p[1]]
        assert holding == [period_containing(day, anchor)]


def test_anchor_date_clamps():
    assert anchor_date(2026, 2, 29) == dt.date(2026, 2, 28)
    assert anchor_date(2026, 3, None) == dt.date(2026, 3, 1)


# --- the customer list ----------------------------------------------------------------------------

def test_load_customers_with_plan_change(tmp_path, shipped_rules):
    path = write(tmp_path, "c1,Acme,a@acme.test,usd,31,starter,2026-01-01,succeeds\n"
                           "c1,Acme,a@acme.test,usd,31,pro,2026-10-11,succeeds\n"
                           "c2,Yen,y@yen.test,jpy,,pro_jpy,2026-03-01,fails_then_succeeds\n")
    frame = load_customers(path, shipped_rules)
    assert frame.select("customer_id", "plan", "plan_effective_from", "plan_effective_to", "billing_anchor_day").rows() == [
        ("c1", "starter", dt.date(2026, 1, 1), dt.date(2026, 10, 11), 31),
        ("c1", "pro", dt.date(2026, 10, 11), None, 31),
        ("c2", "pro_jpy", dt.date(2026, 3, 1), None, None),
    ]


@pytest.mark.parametrize("day", ["\u00b2", "\u0661", "007", "0"])   # superscript two, Arabic-Indic one
def test_an_anchor_day_of_other_digits_is_named_not_a_traceback(tmp_path, shipped_rules, day):
    """str.isdigit() takes '²' and '١', which int() refuses (a ValueError traceback) or reads as 1."""
    path = write(tmp_path, f"c1,Acme,a@acme.test,usd,{day},starter,2026-01-01,succeeds\n")
    with pytest.raises(BadInputError) as info:
        load_customers(path, shipped_rules)
    assert str(info.value).splitlines()[1] == (
        f"{path}:2: billing_anchor_day: {day!r} is not a day 1..31 (or empty for calendar months)")


def test_customer_errors_name_file_line_and_field(tmp_path, shipped_rules):
    path = write(tmp_path, "c1,Acme,not-an-email,usd,32,starter,2026-01-01,succeeds\n"
                           ",NoId,x@y.z,usd,,starter,2026-01-01,succeeds\n"
                           "c3,Cur,c@d.e,jpy,,pro,2026-01-01,succeeds\n"
                           "c4,Plan,c@d.e,usd,,gold,2026-13-01,sometimes\n"
                           "c5,Dup,c@d.e,usd,,pro,2026-01-01,succeeds\n"
                           "c5,Dup,c@d.e,usd,3,pro,2026-01-01,succeeds\n")
    with pytest.raises(BadInputError) as info:
        load_customers(path, shipped_rules)
    lines = str(info.value).splitlines()
    assert lines[0] == "9 problem(s) in the customer list:"
    assert lines[1:] == [
        f"{path}:2: email: 'not-an-email' is not an e-mail address",
        f"{path}:2: billing_anchor_day: '32' is not a day 1..31 (or empty for calendar months)",
        f"{path}:3: customer_id: empty",
        f"{path}:4: currency: jpy does not match plan pro's currency usd",
        f"{path}:5: plan: unknown plan 'gold' (plans: pro, pro_jpy, scale, starter)",
        f"{path}:5: plan_effective_from: '2026-13-01' is not a date (YYYY-MM-DD)",
        f"{path}:5: payment_behavior: 'sometimes' is not one of succeeds, fails, fails_then_succeeds",
        f"{path}:7: billing_anchor_day: differs from line 6 for customer c5",
        f"{path}:7: plan_effective_from: customer c5 already has an assignment starting 2026-01-01 (line 6)",
    ]


def test_missing_header_column(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("customer_id,name\nc1,x\n")
    with pytest.raises(BadInputError, match=r"c.csv:1: header: missing column\(s\) email, currency"):
        load_customers(path)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="file not found"):
        load_customers(tmp_path / "nope.csv")


def test_segments_split_at_plan_and_version_changes(tmp_path, shipped_rules):
    path = write(tmp_path, "c1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                           "c1,A,a@a.test,usd,,pro,2026-10-11,succeeds\n"
                           "c2,B,b@b.test,usd,20,pro,2026-10-25,succeeds\n")
    segments = billing_segments(load_customers(path, shipped_rules), shipped_rules, dt.date(2026, 10, 1))
    assert segments.rows() == [
        ("c1", dt.date(2026, 10, 1), dt.date(2026, 11, 1), dt.date(2026, 10, 1), dt.date(2026, 10, 11), "starter", "2026-01", 31),
        ("c1", dt.date(2026, 10, 1), dt.date(2026, 11, 1), dt.date(2026, 10, 11), dt.date(2026, 10, 15), "pro", "2026-01", 31),
        ("c1", dt.date(2026, 10, 1), dt.date(2026, 11, 1), dt.date(2026, 10, 15), dt.date(2026, 11, 1), "pro", "2026-10", 31),
        # c2 subscribes on Oct 25 with anchor 20: a first, partial period to Nov 20, prorated over
        # the 31-day cycle Oct 20 - Nov 20 (Stripe's first-period proration)
        ("c2", dt.date(2026, 10, 25), dt.date(2026, 11, 20), dt.date(2026, 10, 25), dt.date(2026, 11, 20), "pro", "2026-10", 31),
    ]


def test_periods_for_month_vectorised():
    frame = pl.DataFrame({"customer_id": ["a", "b", "c", "d"], "billing_anchor_day": [None, 31, 15, 15],
                          "plan_effective_from": [dt.date(2026, 1, 1)] * 3 + [dt.date(2026, 2, 3)]},
                         schema={"customer_id": pl.String, "billing_anchor_day": pl.Int32, "plan_effective_from": pl.Date})
    out = periods_for_month(frame, dt.date(2026, 2, 1)).rows()
    assert out == [("a", dt.date(2026, 2, 1), dt.date(2026, 3, 1), 28), ("b", dt.date(2026, 2, 28), dt.date(2026, 3, 31), 31),
                   ("c", dt.date(2026, 2, 15), dt.date(2026, 3, 15), 28),
                   # d subscribes Feb 3: first period Feb 3 - Feb 15 over the Jan 15 - Feb 15 cycle, then Feb 15 - Mar 15
                   ("d", dt.date(2026, 2, 3), dt.date(2026, 2, 15), 31), ("d", dt.date(2026, 2, 15), dt.date(2026, 3, 15), 28)]


@settings(max_examples=60, deadline=None)
@given(anchor=st.one_of(st.none(), st.integers(1, 31)), start=st.dates(dt.date(2025, 1, 1), dt.date(2027, 12, 31)))
def test_monthly_partitions_hold_each_subscription_period_exactly_once(anchor, start):
    """The periods rated by consecutive monthly partitions are the subscription's periods, contiguous from its start."""
    frame = pl.DataFrame({"customer_id": ["x"], "billing_anchor_day": [anchor], "plan_effective_from": [start]},
                         schema={"customer_id": pl.String, "billing_anchor_day": pl.Int32, "plan_effective_from": pl.Date})
    until = dt.date(start.year + 1, start.month, 1)
    expected = subscription_periods(start, until, anchor)
    got = []
    month = dt.date(start.year, start.month, 1)
    while month < until:
        got += [(s, e, c) for _, s, e, c in periods_for_month(frame, month).rows()]
        month = dt.date(month.year + (month.month == 12), month.month % 12 + 1, 1)
    assert got == [p for p in expected if p[0] < until]
    assert got[0][0] == start
    assert all(a[1] == b[0] for a, b in zip(got, got[1:]))


def test_quoted_fields_spanning_lines_keep_line_numbers(tmp_path, shipped_rules):
    path = write(tmp_path, 'c1,"Acme,\nInc",a@acme.test,usd,,starter,2026-01-01,succeeds\n'
                           "c2,B,b@b.test,usd,,platinum,2026-01-01,succeeds\n")
    with pytest.raises(BadInputError) as info:
        load_customers(path, shipped_rules)
    assert str(info.value).splitlines()[1] == f"{path}:4: plan: unknown plan 'platinum' (plans: pro, pro_jpy, scale, starter)"
