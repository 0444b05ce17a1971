"""Mutation audit 29 (m29i) over `rating/money.py`, `rating/pricing.py` and `rating/aggregate.py`.

What the earlier audits (`*_mutants20/21/26/27.py`) left open:

- `money.scaled_int` refusing a value with more decimals than its scale (the rules validator never
  hands it one, so only a direct call shows the check);
- a line of exactly LIMIT (10^38 - 1) units of 10^-24 is rated, not refused;
- an overflow on several lines says how many;
- an hour's `max` is its largest value, and an hour's `unique_count` quantity counts distinct values
  (the hypothesis test of `test_rating_aggregate.py` rarely puts two such events in one hour).

Each test names the mutant(s) of the m29i report it kills.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import polars as pl
import pytest

from metering import warehouse
from metering.errors import BadInputError
from metering.rating import money
from metering.rating.aggregate import build_aggregates
from metering.rating.pricing import rate
from tests.metering.rating.conftest import one_segment

UTC = dt.timezone.utc
QSCHEMA = {"customer_id": pl.String, "period_start": pl.Date, "segment_start": pl.Date, "plan": pl.String,
           "plan_version": pl.String, "charge_id": pl.Int32, "quantity": pl.Decimal(38, 12)}


def _rate(rules, segments: list[dict], quantities: list[tuple]) -> pl.DataFrame:
    """Rate `segments` with (segment dict, charge_id, quantity) rows."""
    q = pl.DataFrame([{"customer_id": s["customer_id"], "period_start": s["period_start"],
                       "segment_start": s["segment_start"], "plan": s["plan"], "plan_version": s["plan_version"],
                       "charge_id": cid, "quantity": Decimal(str(qty))} for s, cid, qty in quantities],
                     schema=QSCHEMA)
    return rate(pl.DataFrame(segments), q, rules)


# --- money ----------------------------------------------------------------------------------------------------

def test_scaled_int_refuses_a_decimal_beyond_its_scale():
    """Kills M01 (the "more decimals than the scale" check dropped): 0.002 at scale 12 is 2 x 10^9 units
    of 10^-12; 0.0000000000001 (13 decimals) cannot be held exactly and is refused, not truncated to 0;
    at scale 2, 1.005 is refused and 1.05 is 105."""
    assert money.scaled_int(Decimal("0.002"), 12) == 2_000_000_000
    assert money.scaled_int(Decimal("1.05"), 2) == 105
    with pytest.raises(ValueError, match="has more than 12 decimal places"):
        money.scaled_int(Decimal("0.0000000000001"), 12)
    with pytest.raises(ValueError, match="1.005 has more than 2 decimal places"):
        money.scaled_int(Decimal("1.005"), 2)


def test_a_line_of_exactly_limit_units_is_rated(make_rules, rate_q):
    """Kills P38 (`unrounded_a24 > LIMIT` -> `>=`). 99,999,999,999,999,999,999,999,999.999999999999 units
    (10^38 - 1 units of 10^-12, the largest DECIMAL(38, 12)) at 0.000000000001 (one unit of 10^-12) is
    (10^38 - 1) x 10^-24 = 99,999,999,999,999.999999999999999999999999 exactly: the largest amount a line
    holds. It rounds half up to 100,000,000,000,000.00 (10^16 cents)."""
    rules = make_rules('- {name: calls, meter: api_calls, model: per_unit, unit_amount: "0.000000000001"}')
    line = rate_q(rules, {0: "99999999999999999999999999.999999999999"}).row(0, named=True)
    assert line["amount_unrounded"] == Decimal("99999999999999.999999999999999999999999")
    assert line["amount"] == Decimal("100000000000000.00")
    assert line["amount_minor"] == 10**16


def test_an_overflow_on_two_lines_says_how_many(make_rules):
    """Kills P42 (`named.height > 1` -> `> 2`): c1 and c2 each have 10^15 calls at 1.00 = 10^15 dollars,
    past the 10^14 a line holds; the refusal names the first line (c1) and says 2 lines."""
    rules = make_rules('- {name: calls, meter: api_calls, model: per_unit, unit_amount: "1"}')
    s1, s2 = one_segment("c1"), one_segment("c2")
    with pytest.raises(BadInputError, match="; customer c1, period 2026-10-01, charge 'calls', "
                                            "quantity 1000000000000000.000000000000 \\(2 lines\\)$"):
        _rate(rules, [s2, s1], [(s1, 0, 10**15), (s2, 0, 10**15)])


# --- aggregate ------------------------------------------------------------------------------------------------

def _events(con, rows: list[tuple]) -> None:
    con.executemany("INSERT INTO usage_events VALUES (?, 'c1', ?, ?, CAST(? AS DATE), ?, ?, '{}', 1, 1)",
                    [(eid, meter, t, t.date(), value, props) for eid, meter, t, value, props in rows])


def test_an_hours_unique_count_counts_distinct_values(make_rules):
    """Kills A05 (`count(DISTINCT ...)` -> `count(...)`): users u1, u1, u2 in Oct 5's 10:00 hour are 2
    distinct users (the hour's row says so, beside its list [u1, u2]); 3 events."""
    rules = make_rules('- {meter: active_users, model: per_unit, unit_amount: "1"}')
    t = dt.datetime(2026, 10, 5, 10, tzinfo=UTC)
    with warehouse.open_warehouse(":memory:") as con:
        _events(con, [("e1", "active_users", t, None, '{"user_id":"u1"}'),
                      ("e2", "active_users", t + dt.timedelta(minutes=5), None, '{"user_id":"u1"}'),
                      ("e3", "active_users", t + dt.timedelta(minutes=9), None, '{"user_id":"u2"}')])
        out = build_aggregates(con, rules.meters, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    assert out.select("quantity", "event_count", "distinct_values").rows() == [(Decimal(2), 3, ["u1", "u2"])]


def test_an_hours_max_is_its_largest_value(make_rules):
    """Kills A03 (the hourly `max` as `min(value)`): storage 5, 9 and 2 GB in Oct 5's 10:00 hour peak at
    9 (the hypothesis test rarely puts two storage events in one hour)."""
    rules = make_rules('- {meter: storage_gb, model: per_unit, unit_amount: "1"}')
    t = dt.datetime(2026, 10, 5, 10, tzinfo=UTC)
    with warehouse.open_warehouse(":memory:") as con:
        _events(con, [("e1", "storage_gb", t, Decimal(5), "{}"),
                      ("e2", "storage_gb", t + dt.timedelta(minutes=20), Decimal(9), "{}"),
                      ("e3", "storage_gb", t + dt.timedelta(minutes=40), Decimal(2), "{}")])
        out = build_aggregates(con, rules.meters, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    assert out.select("quantity", "event_count").rows() == [(Decimal(9), 3)]

