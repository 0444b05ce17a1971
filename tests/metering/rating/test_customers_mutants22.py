"""Tests that kill mutants the customer-list suite let through (hand mutation audit 22c)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from test_rating_customers import write

from metering.customers import load_customers, periods_for_month
from metering.errors import BadInputError


def test_a_plan_change_row_in_another_currency_is_refused(tmp_path: Path):
    """A customer is billed in one currency: the plan-change row (line 3) repeats every column but
    plan and date, and its eur is not the usd of line 2."""
    path = write(tmp_path, "c1,C,c@c.test,usd,,starter,2026-01-01,succeeds\n"
                           "c1,C,c@c.test,eur,,growth,2026-03-01,succeeds\n")
    with pytest.raises(BadInputError) as err:
        load_customers(path)
    assert str(err.value) == (f"1 problem(s) in the customer list:\n"
                              f"{path}:3: currency: 'eur' differs from line 2 ('usd') for customer c1")


def test_a_currency_written_in_capitals_on_one_row_is_the_same_currency(tmp_path: Path):
    """The list takes 'USD' as usd (every row is lowercased); the rows of one customer were compared as
    written, so 'USD' then 'usd' was refused as two currencies."""
    customers = load_customers(write(tmp_path, "c1,C,c@c.test,USD,,starter,2026-01-01,succeeds\n"
                                               "c1,C,c@c.test,usd,,growth,2026-03-01,succeeds\n"))
    assert customers.select("plan", "currency").rows() == [("starter", "usd"), ("growth", "usd")]


def test_a_subscription_starting_on_the_first_of_next_month_has_no_period_in_this_month(tmp_path: Path):
    """c1 (anchor 15) and c2 (calendar months) both start on 2026-11-01. October's partition holds no
    period of theirs. November's holds c1's first, partial period [Nov 1, Nov 15), prorated over the
    cycle [Oct 15, Nov 15) of 31 days (17 + 14), then c1's full cycle [Nov 15, Dec 15) of 30 days,
    and c2's full period [Nov 1, Dec 1) of 30 days."""
    customers = load_customers(write(tmp_path, "c1,C,c@c.test,usd,15,starter,2026-11-01,succeeds\n"
                                               "c2,D,d@d.test,usd,,starter,2026-11-01,succeeds\n"))
    assert periods_for_month(customers, dt.date(2026, 10, 1)).rows() == []
    assert periods_for_month(customers, dt.date(2026, 11, 1)).rows() == [
        ("c1", dt.date(2026, 11, 1), dt.date(2026, 11, 15), 31),
        ("c1", dt.date(2026, 11, 15), dt.date(2026, 12, 15), 30),
        ("c2", dt.date(2026, 11, 1), dt.date(2026, 12, 1), 30),
    ]


def test_exactly_fifty_problems_are_all_listed_with_no_more_line(tmp_path: Path):
    """50 rows with an empty customer_id: one problem each (lines 2..51), exactly MAX_ERRORS, so all
    50 are listed and there is no "... and N more" line."""
    path = write(tmp_path, ",C,c@c.test,usd,,starter,2026-01-01,succeeds\n" * 50)
    with pytest.raises(BadInputError) as err:
        load_customers(path)
    lines = str(err.value).split("\n")
    assert lines[0] == "50 problem(s) in the customer list:"
    assert lines[1:] == [f"{path}:{n}: customer_id: empty" for n in range(2, 52)]
