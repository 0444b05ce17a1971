"""The customer list and its billing periods: cases a hand mutation audit (26g) found unchecked.

Covers `metering/customers.py`: how a row is read (a byte-order mark, spaces around fields, an empty
e-mail, a row longer than the header), the columns compared between a customer's rows, the currency
check against the plan, plan assignments of several customers, and periods. Expected values are
worked out by hand from docs/rating.md ("Customer list", "Billing periods") and the module's rules.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pytest
from test_rating_customers import HEADER, shipped_rules, write  # noqa: F401  (shipped_rules is a fixture)

from metering.customers import load_customers, midnight_unix, outside_dates
from metering.errors import BadInputError

D = dt.date


def problems(path: Path, rules=None) -> list[str]:
    with pytest.raises(BadInputError) as info:
        load_customers(path, rules)
    return str(info.value).splitlines()


# --- reading a row -----------------------------------------------------------------------------------

def test_a_list_saved_with_a_byte_order_mark_is_read(tmp_path: Path):
    """Spreadsheet programs save "CSV UTF-8" with a BOM (EF BB BF). Read as plain UTF-8 the first
    header would be '\\ufeffcustomer_id' and the list refused for a missing customer_id column."""
    path = tmp_path / "customers.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (HEADER + "c1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n").encode())
    assert load_customers(path).select("customer_id", "plan", "plan_effective_from").rows() == [
        ("c1", "starter", D(2026, 1, 1))]


def test_spaces_around_each_field_are_not_part_of_it(tmp_path: Path):
    """'c1 , A , a@a.test , USD , 15 , starter , 2026-01-01 , succeeds': every field is stripped, so
    the row is c1 / usd / anchor 15 / starter from Jan 1 (unstripped, ' USD ' is no currency and
    ' 2026-01-01 ' no date)."""
    path = write(tmp_path, "c1 , A , a@a.test , USD , 15 , starter , 2026-01-01 , succeeds\n")
    assert load_customers(path).select(
        "customer_id", "name", "email", "currency", "billing_anchor_day", "plan", "plan_effective_from",
        "payment_behavior").rows() == [("c1", "A", "a@a.test", "usd", 15, "starter", D(2026, 1, 1), "succeeds")]


def test_an_empty_email_is_allowed(tmp_path: Path):
    """The e-mail is checked only when given: an empty one is no problem."""
    path = write(tmp_path, "c1,A,,usd,,starter,2026-01-01,succeeds\n")
    assert load_customers(path).select("customer_id", "email").rows() == [("c1", "")]


def test_an_email_with_a_space_in_its_domain_is_refused(tmp_path: Path):
    """An address is `local@domain` with no '@' or white space on either side."""
    path = write(tmp_path, "c1,A,a@exa mple.test,usd,,starter,2026-01-01,succeeds\n")
    assert problems(path) == ["1 problem(s) in the customer list:",
                              f"{path}:2: email: 'a@exa mple.test' is not an e-mail address"]


def test_a_row_longer_than_the_header_is_refused_with_its_field_count(tmp_path: Path):
    """Row 2 has the 8 fields and one more ('vip'): 9 fields where the 8-column header has 8; the row
    is refused once, as a row, and nothing else about it is checked."""
    path = write(tmp_path, "c1,A,a@a.test,usd,,starter,2026-01-01,succeeds,vip\n")
    assert problems(path) == ["1 problem(s) in the customer list:",
                              f"{path}:2: (row): 9 fields where the header has 8"]


def test_a_row_longer_than_a_header_with_an_extra_column_counts_its_own_fields(tmp_path: Path):
    """The header has the 8 columns plus `notes` (9); row 2 has 10 fields (one more than the header).
    The message says 10 fields where the header has 9. (It counted the overflow plus the 8 *known*
    columns, 1 + 8 = 9: "9 fields where the header has 9".)"""
    path = tmp_path / "customers.csv"
    path.write_text(HEADER.rstrip("\n") + ",notes\n" + "c1,A,a@a.test,usd,,starter,2026-01-01,succeeds,vip,extra\n")
    assert problems(path) == ["1 problem(s) in the customer list:",
                              f"{path}:2: (row): 10 fields where the header has 9"]


# --- a customer's rows agree ---------------------------------------------------------------------------

def test_a_name_differing_between_a_customers_rows_is_refused(tmp_path: Path):
    path = write(tmp_path, "c1,Acme,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                           "c1,Acme Inc,a@a.test,usd,,starter,2026-06-01,succeeds\n")
    assert problems(path) == ["1 problem(s) in the customer list:",
                              f"{path}:3: name: 'Acme Inc' differs from line 2 ('Acme') for customer c1"]


def test_a_name_differing_only_in_case_is_still_a_different_name(tmp_path: Path):
    """Only the currency is a code compared without case (docs: USD is usd); 'ACME' is not the
    'Acme' of line 2, and the list must say so rather than keep either silently."""
    path = write(tmp_path, "c1,Acme,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                           "c1,ACME,a@a.test,usd,,pro,2026-06-01,succeeds\n")
    assert problems(path) == ["1 problem(s) in the customer list:",
                              f"{path}:3: name: 'ACME' differs from line 2 ('Acme') for customer c1"]


def test_a_payment_behavior_differing_between_a_customers_rows_is_refused(tmp_path: Path):
    """The sandbox charges a customer one way: the plan-change row must repeat `succeeds`."""
    path = write(tmp_path, "c1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                           "c1,A,a@a.test,usd,,pro,2026-06-01,fails\n")
    assert problems(path) == ["1 problem(s) in the customer list:",
                              f"{path}:3: payment_behavior: 'fails' differs from line 2 ('succeeds') for customer c1"]


def test_an_unknown_currency_is_one_problem_not_also_a_plan_mismatch(tmp_path: Path, shipped_rules):  # noqa: F811
    """'xyz' is no currency: that is the row's problem. Comparing it with starter's usd as well would
    report the same mistake twice."""
    path = write(tmp_path, "c1,A,a@a.test,xyz,,starter,2026-01-01,succeeds\n")
    assert problems(path, shipped_rules) == ["1 problem(s) in the customer list:",
                                             f"{path}:2: currency: unknown currency 'xyz'"]


# --- dates ---------------------------------------------------------------------------------------------

def test_the_first_and_last_nameable_dates_are_inside():
    """FIRST_DATE (2000-01-01) and LAST_DATE (9998-12-31) themselves may be named; the days either
    side may not."""
    assert [outside_dates(d) for d in (D(1999, 12, 31), D(2000, 1, 1), D(9998, 12, 31), D(9999, 1, 1))] == [
        True, False, False, True]


def test_midnight_is_utc_midnight_whatever_the_machines_zone(monkeypatch):
    """Stripe's periods and time filters take a day as its UTC midnight. 2026-10-01 is 20,727 days
    after 1970-01-01 (56 years with 14 leap days = 20,454, plus 273 days Jan..Sep 2026): 20,727 x
    86,400 = 1,790,812,800, also on a machine set to New York (where local midnight is 4 h later)."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert midnight_unix(D(2026, 10, 1)) == 1_790_812_800
    finally:
        monkeypatch.undo()
        time.tzset()


# --- where the list came from, and bytes that are not text ----------------------------------------------

def test_a_missing_list_names_where_its_path_came_from(tmp_path: Path, monkeypatch):
    """Named on the command line: "(the customer list)"; from the variable: "..., from
    $METERING_CUSTOMERS" (so the user knows which to correct)."""
    missing = tmp_path / "nope.csv"
    monkeypatch.delenv("METERING_CUSTOMERS", raising=False)
    with pytest.raises(BadInputError) as given:
        load_customers(missing)
    assert str(given.value) == f"{missing}: file not found (the customer list)"
    monkeypatch.setenv("METERING_CUSTOMERS", str(missing))
    with pytest.raises(BadInputError) as from_env:
        load_customers()
    assert str(from_env.value) == f"{missing}: file not found (the customer list, from $METERING_CUSTOMERS)"


def test_bytes_that_are_not_utf8_are_named_by_their_offset(tmp_path: Path):
    """The header is 93 bytes (85 letters, 7 commas, a newline); row 2 starts 'c1,' (bytes 93..95),
    so the stray 0xFF is byte 96: where the bad byte starts."""
    path = tmp_path / "customers.csv"
    path.write_bytes(HEADER.encode() + b"c1,\xffA,a@a.test,usd,,starter,2026-01-01,succeeds\n")
    with pytest.raises(BadInputError) as err:
        load_customers(path)
    assert str(err.value) == f"{path}: not UTF-8 text (invalid start byte at byte 96)"


def test_an_empty_plan_is_refused_without_rules_too(tmp_path: Path):
    """Without rules there is nothing to look the plan up in, but an empty plan is still no plan."""
    path = write(tmp_path, "c1,A,a@a.test,usd,,,2026-01-01,succeeds\n")
    assert problems(path) == ["1 problem(s) in the customer list:", f"{path}:2: plan: empty"]
