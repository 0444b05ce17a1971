"""The analytics views as an analyst reads them: in any session time zone, and rated_lines at its
documented grain.

Time zones. An analyst's DuckDB session takes the machine's zone, not the engine's UTC. The views once
passed the tables' TIMESTAMPTZ through: in Los Angeles a Stripe line of the period starting 2026-10-01
00:00 UTC cast to DATE 2026-09-30, and in any zone but UTC it joined no DATE period of the other views.
The month is recon_scenario's (recon_scenario.py), plus cus_c's invoice known only from webhooks, an
invoice in dunning and a rating adjustment, all at hand-set UTC instants.

Grain. analytics.rated_lines is one row per customer x billing period x charge line, also for a period
a version change cut in two. c1 is on the shipped pro plan all year; its version 2026-10 takes over on
Oct 15, so October is rated in two segments (2026-01: Oct 1-15, 2026-10: Oct 15 - Nov 1), both with
the charges seats, storage, active users and tokens large. October's usage, by hand: seats (last) 10
then 12 -> 12; storage (max) 50, 80, 60 -> 80; active users u1, u2 | u3, u1, u4 -> 4; tokens large
(sum) 1000 | 2000 -> 3000. The view once repeated each segment's row: seats 24, storage 160, users 8
in a sum, where the reconciliation (the meter's own aggregate over the period) says 12, 80 and 4.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from decimal import Decimal as D
from pathlib import Path

import duckdb
import pytest
from recon_scenario import MONTH, PULLED, known_only_from_webhooks, write_scenario

from metering import warehouse
from metering.customers import load_customers
from metering.ingest import ingest_file
from metering.rating import service
from metering.reconcile.run import reconcile_period
from metering.reconcile.settings import ReconcileSettings
from metering.rules.plans import load_rules

RULES = load_rules(Path(__file__).resolve().parents[3] / "rating_rules")
ZONES = ["America/Los_Angeles", "Asia/Tokyo"]


def _query(snapshot: Path, sql: str, zone: str = "UTC") -> list[tuple]:
    con = duckdb.connect(str(snapshot), read_only=True)
    try:
        con.execute(f"SET TimeZone = '{zone}'")
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data folder for the module's snapshot, built once and read-only from then on."""
    data = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as env:
        for name, path in (("METERING_DATA_DIR", data), ("METERING_WAREHOUSE", data / "warehouse.duckdb"),
                           ("METERING_SNAPSHOT", data / "snapshot.duckdb")):
            env.setenv(name, str(path))
        yield data


# --- time zones ---------------------------------------------------------------------------------------

NEXT_STEP = dt.datetime(2026, 11, 9, tzinfo=dt.UTC)
ADJUSTED = dt.datetime(2026, 11, 3, 23, 30, tzinfo=dt.UTC)   # Nov 4 in Tokyo
OCT_1, NOV_1 = dt.datetime(2026, 10, 1), dt.datetime(2026, 11, 1)


@pytest.fixture(scope="module")
def month(data_dir: Path) -> Path:
    """The snapshot of recon_scenario's month, with a webhook invoice, dunning and an adjustment."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        known_only_from_webhooks(con, "cus_c", "paid", 0, 0, 1000, created=dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC))
        reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=RULES.meters, now=PULLED)
        con.execute("""INSERT INTO dunning_state (invoice_id, customer_id, policy, currency, amount_remaining, state,
                       next_step_name, next_step_at, first_failed_at, reason, evaluated_at, policy_hash)
                       VALUES ('in_late', 'cus_c', 'default', 'usd', 100, 'in_dunning', 'reminder_2', ?, ?, 'r', ?,
                               'h')""", [NEXT_STEP, PULLED, PULLED])
        con.execute("""INSERT INTO rating_adjustments (customer_id, period_start, period_end, currency, charge,
                       before_minor, after_minor, delta_minor, reason, link, adjusted_at)
                       VALUES ('cus_a', DATE '2026-10-01', DATE '2026-11-01', 'usd', 'api calls', 100, 120, 20,
                               'late_usage', '{"files": []}', ?)""", [ADJUSTED])
        return warehouse.publish(con=con)


@pytest.mark.parametrize("zone", ZONES)
def test_stripe_invoice_lines_periods_are_utc(month, zone):
    """Both sources (the API pull and webhooks): Stripe's period as UTC wall-clock times and dates."""
    assert _query(month, """
        SELECT line_id, source, period_start, period_end, CAST(period_start AS DATE), CAST(period_end AS DATE)
        FROM analytics.stripe_invoice_lines ORDER BY line_id""", zone) == [
        ("il_c", "webhook", OCT_1, NOV_1, dt.date(2026, 10, 1), dt.date(2026, 11, 1)),
        ("il_cus_a", "api", OCT_1, NOV_1, dt.date(2026, 10, 1), dt.date(2026, 11, 1)),
        ("il_cus_b", "api", OCT_1, NOV_1, dt.date(2026, 10, 1), dt.date(2026, 11, 1)),
        ("il_fee", "api", OCT_1, NOV_1, dt.date(2026, 10, 1), dt.date(2026, 11, 1)),
    ]


@pytest.mark.parametrize("zone", ZONES)
def test_stripe_invoice_lines_join_the_periods_of_the_other_views(month, zone):
    """October's lines, found by UTC date and joined to invoices_vs_rated's DATE period_start."""
    assert _query(month, """
        SELECT count(*) FROM analytics.stripe_invoice_lines
        WHERE CAST(period_start AS DATE) >= DATE '2026-10-01' AND CAST(period_start AS DATE) < DATE '2026-11-01'
        """, zone) == [(4,)]
    assert _query(month, """
        SELECT r.customer_id, count(*), sum(l.amount)
        FROM analytics.stripe_invoice_lines l
        JOIN analytics.invoices_vs_rated r ON r.customer_id = l.customer_id AND r.period_start = l.period_start
        GROUP BY ALL ORDER BY ALL""", zone) == [("cus_a", 2, 5000), ("cus_b", 1, 125), ("cus_c", 1, 0)]


@pytest.mark.parametrize("zone", ZONES)
def test_view_times_are_utc(month, zone):
    """Every time a view shows is the UTC wall-clock time it was stored at, and casts to its UTC date."""
    assert _query(month, """SELECT invoice_id, next_step_at, CAST(next_step_at AS DATE), first_failed_at,
                            evaluated_at FROM analytics.dunning_queue""", zone) == [
        ("in_late", dt.datetime(2026, 11, 9), dt.date(2026, 11, 9), dt.datetime(2026, 11, 2), dt.datetime(2026, 11, 2))]
    assert _query(month, """SELECT charge, adjusted_at, CAST(adjusted_at AS DATE), date_trunc('day', adjusted_at)
                            FROM analytics.rating_adjustments""", zone) == [
        ("api calls", dt.datetime(2026, 11, 3, 23, 30), dt.date(2026, 11, 3), dt.datetime(2026, 11, 3))]
    for view in ("reconciliation", "invoice_reconciliation"):
        assert _query(month, f"SELECT DISTINCT reconciled_at, CAST(reconciled_at AS DATE) FROM analytics.{view}",
                      zone) == [(dt.datetime(2026, 11, 2), dt.date(2026, 11, 2))], view
    assert _query(month, "SELECT DISTINCT rated_at, CAST(rated_at AS DATE) FROM analytics.rated_lines", zone) == [
        (dt.datetime(2026, 11, 2), dt.date(2026, 11, 2))]


VIEWS = ["daily_usage", "dunning_queue", "invoice_reconciliation", "rated_lines", "rating_adjustments",
         "reconciliation", "stripe_invoice_lines", "invoices_vs_rated"]


def test_every_view_is_compared_across_zones(month):
    assert [v for (v,) in _query(month, "SELECT view_name FROM duckdb_views() WHERE schema_name = 'analytics' "
                                        "ORDER BY view_name")] == \
        sorted(VIEWS)


@pytest.mark.parametrize("zone", ZONES)
@pytest.mark.parametrize("view", VIEWS)
def test_a_view_reads_the_same_in_every_zone(month, view, zone):
    """Row for row, value for value (repr: an aware datetime shows its zone), as in a UTC session."""
    def rows(z: str) -> str:
        return repr(_query(month, f"SELECT * FROM analytics.{view} ORDER BY ALL", z))

    assert rows(zone) == rows("UTC")


# --- rated_lines' grain --------------------------------------------------------------------------------

HEADER = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
EVENTS = [  # event_id, meter, day of October, value, properties
    ("s1", "seats", 2, "10", {}), ("s2", "seats", 20, "12", {}),
    ("g1", "storage_gb", 3, "50", {}), ("g2", "storage_gb", 18, "80", {}), ("g3", "storage_gb", 25, "60", {}),
    ("u1", "active_users", 4, None, {"user_id": "u1"}), ("u2", "active_users", 5, None, {"user_id": "u2"}),
    ("u3", "active_users", 16, None, {"user_id": "u3"}), ("u1b", "active_users", 17, None, {"user_id": "u1"}),
    ("u4", "active_users", 26, None, {"user_id": "u4"}),
    ("t1", "tokens", 6, "1000", {"model": "large"}), ("t2", "tokens", 21, "2000", {"model": "large"}),
]
# charge -> (its meter, the period's quantity by hand)
PERIOD_QUANTITIES = {"seats": ("seats", D(12)), "storage": ("storage_gb", D(80)),
                     "active users": ("active_users", D(4)), "tokens large": ("tokens", D(3000))}


@pytest.fixture(scope="module")
def split(data_dir: Path) -> Path:
    """The snapshot of c1's October, rated (in two segments) and reconciled by the engine itself."""
    customers, raw = data_dir / "customers.csv", data_dir / "october.jsonl"
    customers.write_text(HEADER + "c1,C,c@c.test,usd,,pro,2026-01-01,succeeds\n")
    raw.write_text("".join(json.dumps({"event_id": eid, "customer_id": "c1", "meter": meter, "value": value,
                                       "timestamp": f"2026-10-{day:02d}T10:00:00Z", "properties": props}) + "\n"
                           for eid, meter, day, value, props in EVENTS))
    closing = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    snapshot = data_dir / "split.duckdb"
    with warehouse.open_warehouse(data_dir / "split_warehouse.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(customers, RULES))
        ingest_file(con, raw, meters=RULES.meters, now=closing)
        for day in sorted({e[2] for e in EVENTS}):
            service.refresh_aggregates(con, RULES.meters, dt.date(2026, 10, day))
        service.write_rated(con, MONTH, service.rate_month(con, RULES, MONTH)[0], RULES, closing)
        reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=RULES.meters, now=closing)
        return warehouse.publish(snapshot=snapshot, con=con)


def test_the_period_is_rated_in_two_segments(split):
    """The premise: rated_usage has a row per segment for each charge above."""
    assert _query(split, """SELECT charge, count(*) FROM rated_usage WHERE charge IN ('seats', 'storage',
                            'active users', 'tokens large') GROUP BY charge ORDER BY charge""") == [
        ("active users", 2), ("seats", 2), ("storage", 2), ("tokens large", 2)]


def test_rated_lines_is_unique_on_its_documented_grain(split):
    [(rows, lines)] = _query(split, """SELECT count(*), count(DISTINCT (customer_id, period_start, charge))
                                       FROM analytics.rated_lines""")
    assert rows == lines == _query(split, "SELECT count(DISTINCT (customer_id, period_start, charge)) "
                                          "FROM rated_usage")[0][0]


def test_summed_quantity_is_the_reconciliations(split):
    """Summing quantity per customer x period x charge gives the period's quantity, the one
    analytics.reconciliation compares (our_quantity), gauges included."""
    summed = dict(_query(split, """SELECT charge, sum(quantity) FROM analytics.rated_lines
                                   WHERE customer_id = 'c1' AND period_start = DATE '2026-10-01' GROUP BY charge"""))
    ours = dict(_query(split, """SELECT meter, our_quantity FROM analytics.reconciliation
                                 WHERE customer_id = 'c1' AND period_start = DATE '2026-10-01'"""))
    by_hand = {charge: q for charge, (_, q) in PERIOD_QUANTITIES.items()}
    assert {charge: summed[charge] for charge in PERIOD_QUANTITIES} == by_hand
    assert {charge: ours[meter] for charge, (meter, _) in PERIOD_QUANTITIES.items()} == by_hand


def test_a_line_adds_up_its_segments_and_lists_them(split):
    """Amounts are the segments' (each prorated), the version the one at the period's end, and
    `segments` lists both versions with what each priced."""
    assert _query(split, "SELECT charge, amount_minor FROM analytics.rated_lines ORDER BY charge") == \
        _query(split, "SELECT charge, sum(amount_minor) FROM rated_usage GROUP BY charge ORDER BY charge")
    assert _query(split, """
        SELECT plan, plan_version, quantity, [s.plan_version FOR s IN segments],
               [s.segment_start FOR s IN segments], [s.quantity FOR s IN segments],
               list_sum([s.amount_minor FOR s IN segments]) = amount_minor
        FROM analytics.rated_lines WHERE charge IN ('seats', 'tokens large') ORDER BY charge""") == [
        ("pro", "2026-10", D(12), ["2026-01", "2026-10"], [dt.date(2026, 10, 1), dt.date(2026, 10, 15)],
         [D(12), D(12)], True),       # a gauge: each segment priced the period's 12, prorated
        ("pro", "2026-10", D(3000), ["2026-01", "2026-10"], [dt.date(2026, 10, 1), dt.date(2026, 10, 15)],
         [D(1000), D(2000)], True),   # a sum: each segment its own usage
    ]


def test_every_line_carries_the_plan_version_in_force_at_the_periods_end(split):
    """Version 2026-10 replaced `api calls` by `api calls us` / `api calls eu` on Oct 15: `api calls` has
    a segment of 2026-01 only, yet October ends on 2026-10, as do all of c1's lines (and its rules_hash,
    the Oct 15 segment's). Taken per charge, `api calls` once said 2026-01 and its hash."""
    [(end_hash,)] = _query(split, "SELECT DISTINCT rules_hash FROM rated_usage WHERE segment_start = DATE '2026-10-15'")
    lines = _query(split, """SELECT charge, plan, plan_version, rules_hash, [s.plan_version FOR s IN segments]
                             FROM analytics.rated_lines WHERE customer_id = 'c1' ORDER BY charge""")
    assert [(c, v) for c, _p, _v, _h, v in lines if len(v) == 1] == [
        ("api calls", ["2026-01"]), ("api calls eu", ["2026-10"]), ("api calls us", ["2026-10"])]
    assert {(p, v, h) for _c, p, v, h, _s in lines} == {("pro", "2026-10", end_hash)}
    assert len(lines) == 10


# --- daily_usage: each meter's own daily figure ------------------------------------------------------------

# c1 (pro) on Oct 7 and 8, by hand. seats (last): 09:15 4, 09:45 6 | 13:00 20 | 15:00 5 (s10) and 8 (s9),
# the same instant, the larger event_id ('s9' > 's10') last, as the rating breaks ties -> the day's last 8,
# where quantity_sum adds the hours' last values (6 + 20 + 8 = 34) and quantity_max is the peak (20); Oct 8:
# one event, 3. storage_gb (max): 30 | 70 | 40. active_users (unique_count): u1, u2 | u1 -> 2 users (the
# hours' counts 2 + 1 = 3). api_calls (count): 2. tokens (sum): 1000 (large) + 500 (small).
# distinct_values is for unique_count meters only (NULL elsewhere, where it once said 0), quantity_last for
# `last` meters only. The file lists the events out of time order.
DAY_EVENTS = [  # event_id, meter, timestamp, value, properties
    ("s9", "seats", "2026-10-07T15:00:00Z", "8", {}), ("sc", "seats", "2026-10-07T13:00:00Z", "20", {}),
    ("sb", "seats", "2026-10-07T09:45:00Z", "6", {}), ("s10", "seats", "2026-10-07T15:00:00Z", "5", {}),
    ("sa", "seats", "2026-10-07T09:15:00Z", "4", {}), ("sd", "seats", "2026-10-08T02:00:00Z", "3", {}),
    ("g1", "storage_gb", "2026-10-07T08:00:00Z", "30", {}), ("g3", "storage_gb", "2026-10-07T20:00:00Z", "40", {}),
    ("g2", "storage_gb", "2026-10-07T12:00:00Z", "70", {}),
    ("u1", "active_users", "2026-10-07T10:00:00Z", None, {"user_id": "u1"}),
    ("u2", "active_users", "2026-10-07T10:30:00Z", None, {"user_id": "u2"}),
    ("u1b", "active_users", "2026-10-07T14:00:00Z", None, {"user_id": "u1"}),
    ("a1", "api_calls", "2026-10-07T10:00:00Z", None, {"region": "us"}),
    ("a2", "api_calls", "2026-10-07T11:00:00Z", None, {"region": "eu"}),
    ("t1", "tokens", "2026-10-07T10:00:00Z", "1000", {"model": "large"}),
    ("t2", "tokens", "2026-10-07T10:05:00Z", "500", {"model": "small"}),
]
DAILY = """SELECT meter, event_date, events, quantity_sum, quantity_max, distinct_values, quantity_last
           FROM analytics.daily_usage WHERE customer_id = 'c1' ORDER BY meter, event_date"""
OCT_7, OCT_8 = dt.date(2026, 10, 7), dt.date(2026, 10, 8)
DAILY_BY_HAND = [  # meter, day, events, quantity_sum, quantity_max, distinct_values, quantity_last
    ("active_users", OCT_7, 3, D(3), D(2), 2, None),
    ("api_calls", OCT_7, 2, D(2), D(1), None, None),
    ("seats", OCT_7, 5, D(34), D(20), None, D(8)),
    ("seats", OCT_8, 1, D(3), D(3), None, D(3)),
    ("storage_gb", OCT_7, 3, D(140), D(70), None, None),
    ("tokens", OCT_7, 2, D(1500), D(1000), None, None),
]


@pytest.fixture(scope="module")
def days(data_dir: Path) -> tuple[Path, Path]:
    """c1's Oct 7 and 8 (DAY_EVENTS) published twice: aggregated but not rated yet (rated_meters, where the
    view reads each meter's aggregation, is empty), then rated."""
    customers, raw = data_dir / "days_customers.csv", data_dir / "days.jsonl"
    customers.write_text(HEADER + "c1,C,c@c.test,usd,,pro,2026-01-01,succeeds\n")
    raw.write_text("".join(json.dumps({"event_id": eid, "customer_id": "c1", "meter": meter, "value": value,
                                       "timestamp": ts, "properties": props}) + "\n"
                           for eid, meter, ts, value, props in DAY_EVENTS))
    closing = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    with warehouse.open_warehouse(data_dir / "days_warehouse.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(customers, RULES))
        ingest_file(con, raw, meters=RULES.meters, now=closing)
        for day in (OCT_7, OCT_8):
            service.refresh_aggregates(con, RULES.meters, day)
        unrated = warehouse.publish(snapshot=data_dir / "days_unrated.duckdb", con=con)
        service.write_rated(con, MONTH, service.rate_month(con, RULES, MONTH)[0], RULES, closing)
        return unrated, warehouse.publish(snapshot=data_dir / "days_rated.duckdb", con=con)


@pytest.mark.parametrize("zone", ["UTC", *ZONES])
def test_daily_usage_gives_each_meter_its_own_daily_figure(days, zone):
    assert _query(days[1], DAILY, zone) == DAILY_BY_HAND


@pytest.mark.parametrize("published", [0, 1], ids=["not rated yet", "rated"])
def test_daily_usage_distinct_values_is_for_unique_count_meters_only(days, published):
    assert _query(days[published], "SELECT meter, event_date, distinct_values FROM analytics.daily_usage "
                                   "ORDER BY meter, event_date") == [r[:2] + r[5:6] for r in DAILY_BY_HAND]


def test_daily_usage_of_meters_not_rated_yet(days):
    """Before a meter rates its first line the warehouse does not record its aggregation: quantity_last is
    NULL, and distinct_values comes from the hours' distinct values, which only unique_count meters carry."""
    assert _query(days[0], DAILY) == [r[:6] + (None,) for r in DAILY_BY_HAND]


def test_daily_usage_last_is_the_ratings(days):
    """The view's day figures for seats are the rating's own `last` over the day's hours (aggregate._COMBINE)."""
    from metering.rating.aggregate import _COMBINE

    last = next(expr for aggs, _cols, expr in _COMBINE if aggs == ("last",))
    con = duckdb.connect(str(days[1]), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        hours = warehouse.query_frame(con, "SELECT event_date, quantity, last_event_time, last_event_id "
                                           "FROM usage_aggregates WHERE meter = 'seats'")
    finally:
        con.close()
    rated = dict(hours.group_by("event_date").agg(last).iter_rows())
    assert rated == {day: q for m, day, *_r, q in DAILY_BY_HAND if m == "seats"}
