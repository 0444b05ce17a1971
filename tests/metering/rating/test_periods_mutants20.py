"""Billing periods, plan assignments and the customer list: cases a hand mutation audit (20g) found
unchecked. Dates are derived by hand from the anchor rule in metering/customers.py (Stripe's: an
anchor day a month lacks falls on its last day) and the half-open [start, end) periods of I7."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.customers import (
    anchor_date,
    CUSTOMER_PLAN_SCHEMA,
    billing_segments,
    load_customers,
    periods_between,
    subscription_periods,
    with_effective_to,
)
from metering.errors import BadInputError

# shipped_rules: pro 2026-01, then 2026-10 from Oct 15; starter 2026-01 only
from tests.metering.rating.test_rating_customers import shipped_rules, write  # noqa: F401  (a fixture)
D = dt.date


def problems(path: Path, rules) -> list[str]:
    with pytest.raises(BadInputError) as info:
        load_customers(path, rules)
    return str(info.value).splitlines()


# --- periods: the end is exclusive ------------------------------------------------------------------

def test_periods_between_ends_before_a_last_day_that_is_an_anchor_date() -> None:
    # [Oct 1, Nov 1) is one calendar period: Nov 1 itself is not in the range
    assert periods_between(D(2026, 10, 1), D(2026, 11, 1), None) == [(D(2026, 10, 1), D(2026, 11, 1))]
    # anchor 31 from Jan 31 to Mar 31: Jan 31 - Feb 28 (no Feb 31), Feb 28 - Mar 31; not Mar 31 - Apr 30
    assert periods_between(D(2026, 1, 31), D(2026, 3, 31), 31) == [
        (D(2026, 1, 31), D(2026, 2, 28)), (D(2026, 2, 28), D(2026, 3, 31))]
    # across the year end, anchor 15: Dec 15 - Jan 15 only
    assert periods_between(D(2026, 12, 20), D(2027, 1, 15), 15) == [(D(2026, 12, 15), D(2027, 1, 15))]


@settings(max_examples=150, deadline=None)
@given(anchor=st.one_of(st.none(), st.integers(1, 31)),
       first=st.dates(D(2024, 1, 1), D(2030, 12, 31)), days=st.integers(1, 400))
def test_every_period_between_overlaps_the_range(anchor, first, days) -> None:
    """I7: the periods overlapping [first, last), and no more: each starts before `last`, ends after `first`."""
    last = first + dt.timedelta(days=days)
    periods = periods_between(first, last, anchor)
    assert all(start < last and end > first for start, end in periods)


def test_subscription_periods_stop_at_until() -> None:
    # starts Oct 20 with anchor 15: a first, partial period to Nov 15, prorated over the 31-day cycle
    # Oct 15 - Nov 15; `until` Nov 15 is exclusive, so no Nov 15 - Dec 15 period
    assert subscription_periods(D(2026, 10, 20), D(2026, 11, 15), 15) == [(D(2026, 10, 20), D(2026, 11, 15), 31)]
    # anchor 31 from Jan 31: 28 days to Feb 28, then 31 to Mar 31; until Mar 31 stops there
    assert subscription_periods(D(2026, 1, 31), D(2026, 3, 31), 31) == [
        (D(2026, 1, 31), D(2026, 2, 28), 28), (D(2026, 2, 28), D(2026, 3, 31), 31)]


# --- plan assignments -------------------------------------------------------------------------------

def test_a_row_repeating_the_plan_in_force_is_folded_into_it(tmp_path, shipped_rules) -> None:
    """starter from Jan 1, starter again from Oct 16 (changes nothing), pro from Nov 10."""
    path = write(tmp_path, "c1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                           "c1,A,a@a.test,usd,,starter,2026-10-16,succeeds\n"
                           "c1,A,a@a.test,usd,,pro,2026-11-10,succeeds\n")
    customers = load_customers(path, shipped_rules)
    assert customers.select("plan", "plan_effective_from", "plan_effective_to", "source_line").rows() == [
        ("starter", D(2026, 1, 1), D(2026, 11, 10), 2), ("pro", D(2026, 11, 10), None, 4)]
    # October: one starter segment over the whole period (not cut at Oct 16, not left with a gap)
    assert billing_segments(customers, shipped_rules, D(2026, 10, 1)).rows() == [
        ("c1", D(2026, 10, 1), D(2026, 11, 1), D(2026, 10, 1), D(2026, 11, 1), "starter", "2026-01", 31)]
    # November: starter to Nov 10, then pro under its version in force (2026-10, from Oct 15)
    assert billing_segments(customers, shipped_rules, D(2026, 11, 1)).rows() == [
        ("c1", D(2026, 11, 1), D(2026, 12, 1), D(2026, 11, 1), D(2026, 11, 10), "starter", "2026-01", 30),
        ("c1", D(2026, 11, 1), D(2026, 12, 1), D(2026, 11, 10), D(2026, 12, 1), "pro", "2026-10", 30)]


def test_a_return_to_an_earlier_plan_is_a_new_assignment(tmp_path, shipped_rules) -> None:
    """starter -> pro -> starter: the third row is a change (pro was in force), not a repeat."""
    path = write(tmp_path, "c1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                           "c1,A,a@a.test,usd,,pro,2026-06-01,succeeds\n"
                           "c1,A,a@a.test,usd,,starter,2026-09-10,succeeds\n")
    customers = load_customers(path, shipped_rules)
    assert customers.select("plan", "plan_effective_from", "plan_effective_to").rows() == [
        ("starter", D(2026, 1, 1), D(2026, 6, 1)), ("pro", D(2026, 6, 1), D(2026, 9, 10)),
        ("starter", D(2026, 9, 10), None)]
    assert billing_segments(customers, shipped_rules, D(2026, 9, 1)).rows() == [
        ("c1", D(2026, 9, 1), D(2026, 10, 1), D(2026, 9, 1), D(2026, 9, 10), "pro", "2026-01", 30),
        ("c1", D(2026, 9, 1), D(2026, 10, 1), D(2026, 9, 10), D(2026, 10, 1), "starter", "2026-01", 30)]


def test_a_plan_change_on_a_period_boundary_leaves_no_empty_segment(tmp_path, shipped_rules) -> None:
    """Calendar months, starter until Nov 1, pro from Nov 1: October is all starter, November all pro."""
    path = write(tmp_path, "c1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                           "c1,A,a@a.test,usd,,pro,2026-11-01,succeeds\n")
    customers = load_customers(path, shipped_rules)
    assert billing_segments(customers, shipped_rules, D(2026, 10, 1)).rows() == [
        ("c1", D(2026, 10, 1), D(2026, 11, 1), D(2026, 10, 1), D(2026, 11, 1), "starter", "2026-01", 31)]
    assert billing_segments(customers, shipped_rules, D(2026, 11, 1)).rows() == [
        ("c1", D(2026, 11, 1), D(2026, 12, 1), D(2026, 11, 1), D(2026, 12, 1), "pro", "2026-10", 30)]


PLANS = ("starter", "pro")


@settings(max_examples=80, deadline=None)
@given(data=st.data(), anchor=st.one_of(st.none(), st.integers(1, 31)))
def test_segments_partition_each_period_from_the_subscription_start(shipped_rules, data, anchor) -> None:
    """I7: a period's segments are non-empty, contiguous, and cover [max(period start, first plan day),
    period end), whatever the plan changes (repeats, changes on anchor dates, returns to a plan); two
    adjacent segments never bill the same plan version (a repeated row changes nothing)."""
    # change days: any day, or an anchor date (a plan change on a period boundary)
    day = st.one_of(st.dates(D(2026, 1, 1), D(2026, 12, 31)),
                    st.integers(1, 12).map(lambda m: anchor_date(2026, m, anchor)))
    changes = data.draw(st.lists(st.tuples(day, st.sampled_from(PLANS)), min_size=1, max_size=4,
                                 unique_by=lambda c: c[0]))
    # a month holding one of the changes (or the one after it: a change before the month's anchor date)
    month = data.draw(st.sampled_from(sorted({min(12, d.month + k) for d, _ in changes for k in (0, 1)})))
    rows = [{"customer_id": "c", "name": "", "email": "", "currency": "usd", "billing_anchor_day": anchor,
             "plan": plan, "plan_effective_from": day, "plan_effective_to": None, "payment_behavior": "succeeds",
             "source_line": n} for n, (day, plan) in enumerate(changes, 2)]
    assignments = with_effective_to(pl.DataFrame(rows, schema=CUSTOMER_PLAN_SCHEMA))
    sub_start = min(day for day, _ in changes)
    segments = billing_segments(assignments, shipped_rules, D(2026, month, 1))
    for (_, period_start, period_end), seg in segments.group_by("customer_id", "period_start", "period_end"):
        spans = sorted(zip(seg["segment_start"], seg["segment_end"]))
        assert all(s < e for s, e in spans)
        assert spans[0][0] == max(period_start, sub_start) and spans[-1][1] == period_end
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
        # and the plan of each segment is the one in force on its first day
        for s, plan in zip(seg.sort("segment_start")["segment_start"], seg.sort("segment_start")["plan"]):
            assert plan == max((c for c in changes if c[0] <= s), key=lambda c: c[0])[1]
        ordered = seg.sort("segment_start").select("plan", "plan_version").rows()
        assert all(a != b for a, b in zip(ordered, ordered[1:]))


# --- the customer list: refusals and what is accepted -------------------------------------------------

LIST_PROBLEMS = {
    # the e-mail compared between a customer's rows like the name, currency and payment behaviour
    "an e-mail differing between rows": ("c1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                                         "c1,A,b@a.test,usd,,pro,2026-06-01,succeeds\n",
                                         ["{path}:3: email: 'b@a.test' differs from line 2 ('a@a.test') for customer c1"]),
    # a third assignment on one day names the first line holding it, not the second
    "a third assignment on one day": ("c1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                                      "c1,A,a@a.test,usd,,pro,2026-01-01,succeeds\n"
                                      "c1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n",
                                      ["{path}:3: plan_effective_from: customer c1 already has an assignment starting "
                                       "2026-01-01 (line 2)",
                                       "{path}:4: plan_effective_from: customer c1 already has an assignment starting "
                                       "2026-01-01 (line 2)"]),
    # line 2 refused (its e-mail): line 3 is then the customer's first row, compared with nothing
    "a refused row is no reference row": ("c1,A,not-an-email,usd,,starter,2026-01-01,succeeds\n"
                                          "c1,A,a@a.test,usd,,pro,2026-06-01,succeeds\n",
                                          ["{path}:2: email: 'not-an-email' is not an e-mail address"]),
}


@pytest.mark.parametrize("case", list(LIST_PROBLEMS))
def test_each_list_problem_is_named_once(tmp_path, shipped_rules, case) -> None:
    rows, expected = LIST_PROBLEMS[case]
    path = write(tmp_path, rows)
    assert problems(path, shipped_rules) == [f"{len(expected)} problem(s) in the customer list:"] + [
        line.format(path=path) for line in expected]


def test_an_upper_case_currency_is_accepted_as_its_code(tmp_path, shipped_rules) -> None:
    path = write(tmp_path, "c1,A,a@a.test,USD,,starter,2026-01-01,succeeds\n"
                           "c2,B,b@b.test,JPY,,pro_jpy,2026-01-01,succeeds\n")
    assert load_customers(path, shipped_rules).select("customer_id", "currency").rows() == [("c1", "usd"), ("c2", "jpy")]
