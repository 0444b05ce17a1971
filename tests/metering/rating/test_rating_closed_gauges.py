"""Closed periods and gauges (max, last, unique_count): late usage of any charge re-prices it, and a
period billed before gauges were prorated keeps its lines while its usage is the same. Amounts by hand."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest

from metering import warehouse
from metering.customers import load_customers
from metering.ingest import ingest_file
from metering.rating import service
from metering.rules.model import Rules
from metering.rules.plans import load_rules

from tests.metering.rating.conftest import PROJECT_ROOT, write_rules

OCT = dt.date(2026, 10, 1)
HEADER = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
GRID = """\
plan: grid
currency: usd
versions:
  - version: "2026-01"
    effective_from: 2026-01-01
    charges:
      - {name: gpu us, meter: gpu, model: per_unit, unit_amount: "100.00", filters: {region: us}}
      - {name: gpu eu, meter: gpu, model: per_unit, unit_amount: "120.00", filters: {region: eu}}
"""


def at(month: int, day: int) -> dt.datetime:
    return dt.datetime(2026, month, day, tzinfo=dt.timezone.utc)


def ingest(con: duckdb.DuckDBPyConnection, rules: Rules, path: Path, events: list[tuple], now: dt.datetime) -> None:
    """Ingest `events` (event_id, meter, day of October, value, properties) of customer c1 from a JSONL
    file ingested at `now`, and rebuild the aggregates of their days."""
    path.write_text("".join(json.dumps({"event_id": eid, "customer_id": "c1", "meter": meter, "value": value,
                                        "timestamp": f"2026-10-{day:02d}T10:00:00Z", "properties": props}) + "\n"
                            for eid, meter, day, value, props in events))
    ingest_file(con, path, meters=rules.meters, now=now)
    for day in sorted({e[2] for e in events}):
        service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, day))


def rate(con: duckdb.DuckDBPyConnection, rules: Rules, now: dt.datetime) -> int:
    return service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, now)


def adjustments(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute("SELECT charge, before_minor, after_minor, delta_minor, reason FROM rating_adjustments "
                       "ORDER BY charge").fetchall()


@pytest.mark.parametrize(("aggregation", "late", "expected", "adjustment"), [
    # the eu peak was 8, not 5: 8 x 120.00 = 960.00 (the us peak, 10, stays the meter's largest)
    ("max", ("late-eu", "gpu", 20, "8", {"region": "eu"}), [("gpu us", 10, 100000), ("gpu eu", 8, 96000)],
     ("gpu eu", 60000, 96000, 36000, "late_usage")),
    # the us count last read 14, not 10: 14 x 100.00 = 1400.00 (eu, the charge sorted last, stays 5)
    ("last", ("late-us", "gpu", 20, "14", {"region": "us"}), [("gpu us", 14, 140000), ("gpu eu", 5, 60000)],
     ("gpu us", 100000, 140000, 40000, "late_usage")),
])
def test_late_usage_of_one_charge_of_a_gauge_re_prices_the_closed_period(tmp_path, aggregation, late, expected,
                                                                          adjustment):
    """A gauge priced per region by two charges (us 100.00, eu 120.00 a unit). October closes with us 10
    (1000.00) and eu 5 (600.00); a late file changes one region's quantity. Compared per meter, the
    late usage was seen only when it moved the meter's largest (max) or last-sorted (last) charge."""
    root = write_rules(tmp_path / "rules", GRID, "grid")
    with (root / "meters.yaml").open("a") as meters:
        meters.write(f"  gpu:          {{aggregation: {aggregation}, unit: gpu, dimensions: [region]}}\n")
    rules = load_rules(root)
    (tmp_path / "customers.csv").write_text(HEADER + "c1,C,c@c.test,usd,,grid,2026-01-01,succeeds\n")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(tmp_path / "customers.csv", rules))
        ingest(con, rules, tmp_path / "october.jsonl", [("us", "gpu", 5, "10", {"region": "us"}),
                                                        ("eu", "gpu", 6, "5", {"region": "eu"})], at(10, 31))
        rate(con, rules, at(11, 2))   # the closing rating
        ingest(con, rules, tmp_path / "late.jsonl", [late], at(11, 3))
        rate(con, rules, at(11, 4))
        lines = con.execute("SELECT charge, quantity, amount_minor FROM rated_usage ORDER BY charge_id").fetchall()
        assert lines == expected
        assert adjustments(con) == [adjustment]
        assert rate(con, rules, at(11, 5)) == 0 and adjustments(con) == [adjustment]   # re-rating changes nothing


def _as_billed_before_the_proration(con: duckdb.DuckDBPyConnection) -> None:
    """Rewrite October's lines as the per-segment gauge pricing stored them: each segment its own
    quantity in full, no proration in `tiers`; starter (Oct 1-20) had the 10 seats (10 x 8.00 = 80.00)
    and the 8 users (10 included), pro (Oct 20 - Nov 1) none, so pro's minimum was its whole true-up,
    100.00 x 12/31 = 38.71."""
    con.execute("""UPDATE rated_usage SET tiers = regexp_replace(CAST(tiers AS VARCHAR),
                   ',?[{]"segment_days":[0-9]+,"period_days":[0-9]+[}][]]$', ']') WHERE meter IS NOT NULL""")
    con.execute("UPDATE rated_usage SET amount_unrounded = 80, amount = 80, amount_minor = 8000 "
                "WHERE plan = 'starter' AND charge = 'seats'")
    con.execute("UPDATE rated_usage SET quantity = 0, billable_quantity = 0, amount_unrounded = 0, amount = 0, "
                "amount_minor = 0, tiers = '[]' WHERE plan = 'pro' AND charge IN ('seats', 'active users')")
    con.execute("UPDATE rated_usage SET amount_unrounded = 38.71, amount = 38.71, amount_minor = 3871 "
                "WHERE charge = 'minimum spend'")


def test_a_split_period_billed_before_the_proration_keeps_its_lines_with_users_in_one_segment(tmp_path):
    """starter until Oct 20, then pro (version 2026-10): 10 seats and 8 active users, all before Oct 20.
    Billed per segment: seats 80.00, users 0.00 (10 included), starter fee 19.00 x 19/31 = 11.65, pro fee
    59.00 x 12/31 = 22.84, minimum 38.71. The users, in one segment then and in both now (the period's
    8), are the same usage: the period keeps its lines, no adjustment (it was re-priced as `recomputed`).
    A late user (u8, Oct 25) still re-prices it, as the code prices it now: seats 10 x 8.00 x 19/31 =
    49.03 + 10 x 10.00 x 12/31 = 38.71, users (9 - 5) x 1.50 x 12/31 = 2.32, no true-up (41.03 of pro
    usage against 38.71)."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    (tmp_path / "customers.csv").write_text(HEADER + "c1,C,c@c.test,usd,,starter,2026-01-01,succeeds\n"
                                                     "c1,C,c@c.test,usd,,pro,2026-10-20,succeeds\n")
    users = [(f"u{i}", "active_users", 2 + i % 7, None, {"user_id": f"u{i}"}) for i in range(8)]
    lines = ("SELECT plan, charge, amount_minor FROM rated_usage WHERE amount_minor <> 0 "
             "ORDER BY segment_start, charge_id")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(tmp_path / "customers.csv", rules))
        ingest(con, rules, tmp_path / "october.jsonl", [("s1", "seats", 2, "10", {}), *users], at(10, 31))
        rate(con, rules, at(11, 2))
        _as_billed_before_the_proration(con)
        billed = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
        assert rate(con, rules, at(11, 5)) == 0
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == billed
        assert con.execute(lines).fetchall() == [("starter", "seats", 8000), ("starter", "platform fee", 1165),
                                                 ("pro", "platform fee", 2284), ("pro", "minimum spend", 3871)]
        assert adjustments(con) == []
        ingest(con, rules, tmp_path / "late.jsonl", [("u8", "active_users", 25, None, {"user_id": "u8"})], at(11, 6))
        rate(con, rules, at(11, 7))
        assert con.execute(lines).fetchall() == [
            ("starter", "seats", 4903), ("starter", "platform fee", 1165), ("pro", "seats", 3871),
            ("pro", "active users", 232), ("pro", "platform fee", 2284)]
        assert adjustments(con) == [("active users", 0, 232, 232, "late_usage"),
                                    ("minimum spend", 3871, 0, -3871, "late_usage"),
                                    ("seats", 8000, 8774, 774, "late_usage")]
