"""Mutation audit 27 (rating service and aggregation, second pass): the `last` meter's order across
hourly rows, the unpriced list's first hour, a closing rating's stamp, a rated meter the rules lack,
rated lines without rules_versions, late files of a period's first day, the overlap refusal's advice
and first month, the months a re-rating touches and its progress."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest

from metering import warehouse
from metering.customers import load_customers
from metering.errors import BadInputError
from metering.rating import service
from metering.rating.aggregate import build_aggregates, charge_quantities, unpriced_usage
from metering.rules.plans import load_rules
from tests.metering.rating.conftest import PROJECT_ROOT, plan_yaml, write_rules
from tests.metering.rating.test_rating_aggregate import insert, segments_oct
from tests.metering.rating.test_rating_service import NOW, OCT, _late_calls, _list_of_a, rated_db  # noqa: F401  (a fixture)
from tests.pipelines.manifest import record_manifest

UTC = dt.timezone.utc
NOV1 = dt.date(2026, 11, 1)
US, EU = '{"region":"us"}', '{"region":"eu"}'


def at(month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


def _last_by_region_rules(tmp_path):
    """A `last` meter with a region dimension, priced by one charge for every region (no filters)."""
    charge = '- {name: level, meter: level, model: per_unit, unit_amount: "1"}'
    root = write_rules(tmp_path / "rules", plan_yaml(charge))
    (root / "meters.yaml").write_text(
        "meters:\n  level: {aggregation: last, value: value, unit: unit, dimensions: [region]}\n")
    return load_rules(root)


def _quantity(rules, events) -> list:
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, events)
        partials = build_aggregates(con, rules.meters, OCT, NOV1)
    return charge_quantities(partials, segments_oct(), rules).select("charge_id", "quantity").rows()


# --- `last` across hourly rows of one charge -------------------------------------------------------------------

def test_last_across_dimension_rows_takes_the_hours_latest_event_not_each_rows_first(tmp_path):
    """In Oct 5's 10:00 hour the us row has 5 at 10:05 and 7 at 10:50, the eu row 9 at 10:30. The charge
    (no filter) prices both rows: the latest event is us's 10:50 one, so 7. Dating each row by its
    earliest event (10:05 < 10:30) took eu's 9."""
    rules = _last_by_region_rules(tmp_path)
    events = [("e1", "level", at(10, 5, 10, 5), 5, US), ("e2", "level", at(10, 5, 10, 50), 7, US),
              ("e3", "level", at(10, 5, 10, 30), 9, EU)]
    assert _quantity(rules, events) == [(0, Decimal(7))]


# --- unpriced usage: the month's first hour -------------------------------------------------------------

def test_an_unknown_customers_call_in_the_months_first_hour_is_listed(make_rules):
    """ghost (no customer) calls at Oct 1 00:00 and 00:30: one hourly row, 2 events, in October."""
    rules = make_rules('- {meter: api_calls, model: per_unit, unit_amount: "1"}')
    with warehouse.open_warehouse(":memory:") as con:
        con.executemany("INSERT INTO usage_events VALUES (?, 'ghost', 'api_calls', ?, DATE '2026-10-01', NULL, ?, "
                        "'{}', 1, 1)", [("g1", at(10, 1, 0, 0), US), ("g2", at(10, 1, 0, 30), US)])
        partials = build_aggregates(con, rules.meters, OCT, NOV1)
    out = unpriced_usage(partials, segments_oct(), rules, OCT, NOV1)
    assert out.select("customer_id", "reason", "rows", "events").rows() == [("ghost", "unknown_customer", 1, 2)]


# --- writes: a closing rating's stamp -------------------------------------------------------------------------

def test_a_period_closed_at_its_very_end_is_not_closed_again(tmp_path):
    """a's September, rated open on Sep 30, is closed by a rating at exactly Oct 1 00:00 (stamped then).
    A rating on Oct 3 with nothing changed writes nothing: the period's rated_at stays Oct 1 00:00
    (taking a period stamped at its end for one still to close re-stamped it at every rating)."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, ",starter,2026-01-01")
    sep, end = dt.date(2026, 9, 1), at(10, 1)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))

        def rate_at(when):
            return service.write_rated(con, sep, service.rate_month(con, rules, sep)[0], rules, when)

        assert rate_at(at(9, 30, 5)) > 0
        assert rate_at(end) > 0
        assert rate_at(at(10, 3)) == 0
        assert con.execute("SELECT DISTINCT rated_at FROM rated_usage").fetchall() == [(end,)]


# --- adjustments: the late file of a period's first day ------------------------------------------------------

def test_a_late_file_with_events_on_the_periods_first_day_is_linked(rated_db, tmp_path):
    """a's October (starter) is closed. A file arriving after it was rated sets a's seats to 2 on Oct 1,
    the period's first day: late_usage (2 x 8.00 = 16.00 more), linked to that file (not `recomputed`
    with no file)."""
    from metering.ingest import ingest_file

    db, rules = rated_db
    late = tmp_path / "late.jsonl"
    late.write_text(json.dumps({"event_id": "s-oct1", "customer_id": "a", "meter": "seats",
                                "timestamp": "2026-10-01T10:00:00Z", "value": "2"}) + "\n")
    with warehouse.open_warehouse(db) as con:
        f = ingest_file(con, late, now=NOW + dt.timedelta(hours=1))
        service.refresh_aggregates(con, rules.meters, OCT)
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, NOW + dt.timedelta(hours=2))
        rows = con.execute("SELECT customer_id, charge, delta_minor, reason, CAST(link AS VARCHAR) "
                           "FROM rating_adjustments").fetchall()
    assert rows == [("a", "seats", 1600, "late_usage", json.dumps(
        {"files": [{"file_id": f.file_id, "path": str(late), "sha256": f.file_hash}]}, separators=(",", ":")))]


# --- the months a re-rating touches -------------------------------------------------------------------------

def test_months_touching_starts_one_month_back_and_crosses_the_year():
    """From Feb 3: January (its period may run into February) and February. From Dec 5 to Jan 3:
    November, December, January."""
    assert service.months_touching(dt.date(2026, 2, 3), dt.date(2026, 2, 10)) == [
        dt.date(2026, 1, 1), dt.date(2026, 2, 1)]
    assert service.months_touching(dt.date(2026, 12, 5), dt.date(2027, 1, 3)) == [
        dt.date(2026, 11, 1), dt.date(2026, 12, 1), dt.date(2027, 1, 1)]


# --- overlapping periods: the advice names every day involved -----------------------------------------------

def _write_months(con, rules, customers, months, when):
    for month in months:
        service.write_rated(con, month, service.rate_month(con, rules, month, customers)[0], rules, when)


@pytest.mark.parametrize("old, new, first_month_only, advice", [
    # Sep 30..Oct 31 (September's) vs the new Oct 10..Oct 31: the other period starts first
    ("31,starter,2026-09-30", "31,starter,2026-10-10", True, "--from 2026-09-30 --to 2026-10-30"),
    # the new Oct 20..Nov 20 vs November's stored Nov 10..Dec 10: the other period ends last
    ("10,starter,2026-10-10", "20,starter,2026-10-10", False, "--from 2026-10-20 --to 2026-12-09"),
])
def test_the_overlap_refusal_advises_the_range_of_both_periods(tmp_path, old, new, first_month_only, advice):
    """October re-rated alone with a list whose periods overlap one stored with another month is refused;
    the advice re-rates from the earlier of the two periods' starts to the day before the later of their
    ends. Case 1: from Sep 30 (the stored period's start, not the new one's Oct 10) to Oct 30 (both end
    Oct 31). Case 2: from Oct 20 (the new period's) to Dec 9 (the stored Nov 10..Dec 10 ends Dec 10; the
    new one's end, Nov 20, gave Nov 19)."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    sep, nov = dt.date(2026, 9, 1), dt.date(2026, 11, 1)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        _list_of_a(csv, old)
        _write_months(con, rules, load_customers(csv, rules), [sep, OCT] if first_month_only else [OCT, nov], NOW)
        before = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
        _list_of_a(csv, new)
        moved = load_customers(csv, rules)
        with pytest.raises(BadInputError, match=r"which overlaps its period .*" + advice.replace("-", r"\-")):
            _write_months(con, rules, moved, [OCT], NOW + dt.timedelta(hours=1))
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before


def test_a_rerate_refuses_an_overlap_in_its_first_month(tmp_path):
    """a (anchor 20, from Aug 20) has Aug 20..Sep 20, Sep 20..Oct 20 and Oct 20..Nov 20 stored, open (rated
    Aug 25). A calendar list re-rated over October touches September and October: September's new
    Sep 1..Oct 1 overlaps August's stored Aug 20..Sep 20, which that re-rating leaves alone. Refused, nothing
    written (checking the last month alone let it through)."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, "20,starter,2026-08-20")
    aug, sep = dt.date(2026, 8, 1), dt.date(2026, 9, 1)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        _write_months(con, rules, load_customers(csv, rules), [aug, sep, OCT], at(8, 25))
        record_manifest(con)   # as ingestion would have: rerate refuses usage that breaks conservation
        before = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
        _list_of_a(csv, ",starter,2026-08-20")
        with pytest.raises(BadInputError, match=r"gives customer a the period 2026-09-01\.\.2026-10-01, which overlaps "
                                                r"its period 2026-08-20\.\.2026-09-20"):
            service.rerate_range(con, rules, OCT, dt.date(2026, 10, 31), at(8, 26),
                                 customers=load_customers(csv, rules))
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before


# --- meters recorded beside the lines ------------------------------------------------------------------------

def test_recording_meters_skips_a_rated_meter_the_rules_no_longer_define(rated_db, tmp_path):
    """A warehouse whose rated lines name five meters and whose rated_meters is empty (as before migration
    012), recorded with rules defining api_calls alone: api_calls is recorded, the four others (the rules
    lack their definitions) are skipped rather than failing the run; the plan version naming them is
    refused by the rules check anyway."""
    db, _ = rated_db
    root = write_rules(tmp_path / "rules", plan_yaml('- {meter: api_calls, model: per_unit, unit_amount: "1"}'))
    (root / "meters.yaml").write_text("meters:\n  api_calls: {aggregation: count, unit: call, dimensions: [region]}\n")
    only_calls = load_rules(root)
    with warehouse.open_warehouse(db) as con:
        con.execute("DELETE FROM rated_meters")
        assert con.execute("SELECT DISTINCT meter FROM rated_usage WHERE meter IS NOT NULL ORDER BY 1").fetchall() == [
            ("active_users",), ("api_calls",), ("seats",), ("storage_gb",), ("tokens",)]
        assert service.record_meters(con, only_calls, NOW) == ["api_calls"]
        assert con.execute("SELECT meter FROM rated_meters").fetchall() == [("api_calls",)]


def test_rated_lines_alone_make_their_plan_versions_immutable(rated_db):
    """rules_versions lost its rows (a warehouse rated before it recorded them): the versions the rated
    lines name still count as rated, with the hash their lines carry, so a changed one is refused."""
    db, rules = rated_db
    with warehouse.open_warehouse(db) as con:
        con.execute("DELETE FROM rules_versions")
        hashes = service.rated_hashes(con)
    assert {k: v for k, v in hashes.items() if k[0] != "(meter)"} == {
        ("starter", "2026-01"): rules.version("starter", "2026-01").content_hash,
        ("scale", "2026-01"): rules.version("scale", "2026-01").content_hash}


# --- re-rating a range: progress -------------------------------------------------------------------------------

def test_rerate_reports_progress_over_its_days_and_months(rated_db):
    """Re-rating Oct 1..Oct 3 refreshes 3 days and rates the 2 months touching them (September, whose
    periods may run into October, and October): 5 steps, told one by one out of 5."""
    db, rules = rated_db
    told = []
    with warehouse.open_warehouse(db) as con:
        record_manifest(con)
        service.rerate_range(con, rules, OCT, dt.date(2026, 10, 3), NOW, progress=lambda d, t: told.append((d, t)))
    assert told == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


# --- closed periods: when a period counts as billed, charges it did not have -----------------------------------

def test_a_period_rated_on_its_last_day_is_still_open(tmp_path):
    """a's September is rated at Sep 30 12:00, before its end (Oct 1 00:00): open. 2,000 calls of Sep 29
    then re-rate it at 13:00, still open: its lines change (by hand, 1,000 free then 0.002: 2.00) and no
    adjustment is recorded, as none is for an open period."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, ",pro,2026-01-01")
    sep = dt.date(2026, 9, 1)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        service.write_rated(con, sep, service.rate_month(con, rules, sep)[0], rules, at(9, 30, 12))
        _late_calls(con, rules, "a", "2026-09-29", 2_000)
        assert service.write_rated(con, sep, service.rate_month(con, rules, sep)[0], rules, at(9, 30, 13)) > 0
        assert con.execute("SELECT amount_minor FROM rated_usage WHERE charge = 'api calls'").fetchall() == [(200,)]
        assert con.execute("SELECT count(*) FROM rating_adjustments").fetchone() == (0,)


def test_a_charge_new_to_an_adjusted_closed_period_is_an_adjustment_from_zero(tmp_path):
    """a's closed October was starter alone (fee 19.00). Re-rated on purpose with pro (version 2026-10)
    from Oct 20 and no usage: starter's fee becomes 19.00 x 19/31 = 11.65, pro's 59.00 x 12/31 = 22.84
    (platform fee 19.00 -> 34.49), and pro's minimum, a charge the period had no line for, 100.00 x
    12/31 = 38.71 of true-up (no usage): recorded from 0 to 38.71, not left out."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, ",starter,2026-01-01")
    closing = at(11, 1, 2, 30)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, closing)
        _list_of_a(csv, ",starter,2026-01-01", ",pro,2026-10-20")
        reason = service.Adjustment("moved to pro", {"customers": "pro"})
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT, load_customers(csv, rules))[0], rules,
                            closing + dt.timedelta(days=1), reason)
        rows = con.execute("SELECT charge, before_minor, after_minor, reason FROM rating_adjustments "
                           "ORDER BY charge").fetchall()
    assert rows == [("minimum spend", 0, 3871, "moved to pro"), ("platform fee", 1900, 3449, "moved to pro")]


def test_an_adjusted_period_with_a_late_file_records_each_charge_once_with_the_operators_reason(tmp_path):
    """As above, and a file ingested after the closing rating sets a's seats to 2 on Oct 5. The re-rating
    on purpose records one row per charge, with the operator's reason (not a second, late_usage one):
    seats 2 x 8.00 x 19/31 = 9.81 + 2 x 10.00 x 12/31 = 7.74 = 17.55; fees 19.00 -> 11.65 + 22.84 = 34.49;
    pro's minimum 38.71 - 7.74 of usage = 30.97."""
    from metering.ingest import ingest_file

    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv, late = tmp_path / "customers.csv", tmp_path / "late.jsonl"
    _list_of_a(csv, ",starter,2026-01-01")
    closing = at(11, 1, 2, 30)
    late.write_text(json.dumps({"event_id": "s1", "customer_id": "a", "meter": "seats",
                                "timestamp": "2026-10-05T10:00:00Z", "value": "2"}) + "\n")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, closing)
        ingest_file(con, late, now=closing + dt.timedelta(hours=1))
        service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, 5))
        _list_of_a(csv, ",starter,2026-01-01", ",pro,2026-10-20")
        reason = service.Adjustment("moved to pro", {"customers": "pro"})
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT, load_customers(csv, rules))[0], rules,
                            closing + dt.timedelta(days=1), reason)
        rows = con.execute("SELECT charge, before_minor, after_minor, reason FROM rating_adjustments "
                           "ORDER BY ALL").fetchall()
    assert rows == [("minimum spend", 0, 3097, "moved to pro"), ("platform fee", 1900, 3449, "moved to pro"),
                    ("seats", 0, 1755, "moved to pro")]
