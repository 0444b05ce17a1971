"""The rating assets end to end on a tmp DuckDB: events inserted directly, amounts hand-computed."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest

from metering import warehouse
from metering.rating.service import refresh_aggregates
from metering.rules.plans import load_rules
from pipelines.defs.rating.assets import (
    ALL_USAGE_PRICED_CHECK,
    PREVIEW_TOTALS_CHECK,
    customer_plans,
    invoice_previews,
    rated_usage,
    usage_aggregates,
)
from pipelines.resources import ProjectPaths, WarehouseResource
from tests.pipelines.manifest import record_manifest

PROJECT_ROOT = Path(__file__).resolve().parents[3]
HEADER = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
CUSTOMERS = HEADER + (
    "c_pro,Pro Co,pro@example.com,usd,,pro,2026-01-01,succeeds\n"
    "c_jpy,Yen KK,jpy@example.jp,jpy,15,pro_jpy,2026-01-01,fails\n"
    "c_change,Change Ltd,chg@example.com,usd,,starter,2026-01-01,succeeds\n"
    "c_change,Change Ltd,chg@example.com,usd,,scale,2026-10-11,succeeds\n"
)


def add_events(con, customer: str, meter: str, at: str, n: int = 1, value: str | None = None,
               props: str = "{}", prop_sql: str | None = None) -> None:
    """Insert n events at `at` (UTC); `prop_sql` may build per-event properties from `i`."""
    properties = prop_sql or f"'{props}'"
    con.execute(
        f"""
        INSERT INTO usage_events
        SELECT ? || '-' || ? || '-' || ? || '-' || i, ?, ?, CAST(? AS TIMESTAMPTZ) + INTERVAL (i) MICROSECOND,
               CAST(CAST(? AS TIMESTAMPTZ) AS DATE), CAST(? AS DECIMAL(38, 12)), {properties}, '{{}}',
               1, i
        FROM range(?) t(i)
        """,
        [customer, meter, at, customer, meter, at, at, value, n],
    )
    record_manifest(con)  # as ingestion would: usage_aggregates refuses rows of no ingested file


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    """One warehouse rated once for the module (materialising is the slow part)."""
    tmp_path = tmp_path_factory.mktemp("rating_assets")
    db = tmp_path / "wh.duckdb"
    customers = tmp_path / "customers.csv"
    customers.write_text(CUSTOMERS)
    with warehouse.open_warehouse(db) as con:
        add_events(con, "c_pro", "api_calls", "2026-10-02 10:00:00+00", n=1500, props='{"region":"us"}')
        add_events(con, "c_pro", "api_calls", "2026-10-20 10:00:00+00", n=400, props='{"region":"eu"}')
        add_events(con, "c_pro", "tokens", "2026-10-03 11:00:00+00", value="1000000", props='{"model":"large"}')
        add_events(con, "c_pro", "seats", "2026-10-03 12:00:00+00", value="3")
        add_events(con, "c_pro", "seats", "2026-10-04 12:00:00+00", value="5")
        add_events(con, "c_pro", "seats", "2026-10-16 12:00:00+00", value="4")
        add_events(con, "c_pro", "storage_gb", "2026-10-05 01:00:00+00", value="150.5")
        add_events(con, "c_pro", "storage_gb", "2026-10-06 01:00:00+00", value="120")
        add_events(con, "c_pro", "active_users", "2026-10-05 01:00:00+00", n=5,
                   prop_sql="'{\"user_id\":\"u' || (i + 1) || '\"}'")
        add_events(con, "c_pro", "active_users", "2026-10-06 01:00:00+00", n=5,
                   prop_sql="'{\"user_id\":\"u' || (i + 4) || '\"}'")
        add_events(con, "c_jpy", "api_calls", "2026-10-20 03:00:00+00", n=1201, props='{"region":"eu"}')
        add_events(con, "c_jpy", "storage_gb", "2026-10-10 03:00:00+00", value="7")
        add_events(con, "c_change", "seats", "2026-10-12 03:00:00+00", value="60")
        add_events(con, "c_ghost", "seats", "2026-10-12 04:00:00+00", value="1")   # not in the customer list
    resources = {
        "warehouse": WarehouseResource(path=str(db)),
        "paths": ProjectPaths(rules_dir=str(PROJECT_ROOT / "rating_rules"), customers=str(customers)),
    }
    with dg.instance_for_test() as instance:
        result = materialize_all(resources, instance)
        checks = {c.check_name: (c.passed, c.severity, c.metadata.get("reasons"))
                  for c in result.get_asset_check_evaluations()}
        version = _data_version(result, "rated_usage")
    return db, resources, checks, version


DAYS = ["2026-10-02", "2026-10-03", "2026-10-04", "2026-10-05", "2026-10-06", "2026-10-10", "2026-10-12",
        "2026-10-16", "2026-10-20"]


def materialize_all(resources, instance) -> dg.ExecuteInProcessResult:
    assert dg.materialize([customer_plans], resources=resources, instance=instance).success
    # One day through Dagster; the other days through the very function the asset calls (faster).
    assert dg.materialize([usage_aggregates], partition_key=DAYS[0], resources=resources, instance=instance).success
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    with resources["warehouse"].get_connection() as con:
        for day in DAYS[1:]:
            refresh_aggregates(con, rules.meters, dt.date.fromisoformat(day))
    result = dg.materialize([rated_usage, invoice_previews], partition_key="2026-10-01", resources=resources,
                            instance=instance)
    assert result.success
    return result


def rows(db: Path, sql: str) -> list[tuple]:
    with warehouse.open_warehouse(db, read_only=True) as con:
        return con.execute(sql).fetchall()


def test_rating_assets_hand_computed(setup):
    db, _, checks, _ = setup
    assert checks[PREVIEW_TOTALS_CHECK][0] is True
    # the unknown customer's usage is reported (a warning), not silently dropped
    passed, severity, reasons = checks[ALL_USAGE_PRICED_CHECK]
    assert (passed, severity, reasons.value) == (False, dg.AssetCheckSeverity.WARN, ["unknown_customer"])

    previews = rows(db, "SELECT customer_id, period_start, period_end, currency, total_minor, total, lines "
                        "FROM invoice_previews ORDER BY customer_id")
    assert previews == [
        # starter 10 days: 19 x 10/31 = 6.13, and the period's 60 seats (a gauge: the period's quantity,
        # prorated by day) 60 x 8.00 x 10/31 = 154.84; scale 21 days: fee 499 x 21/31 = 338.03, seats
        # 60 x 7.50 x 21/31 = 304.84, minimum 2000 x 21/31 - 304.84 = 1050.00 -> 1853.84 (6 + 8 lines)
        ("c_change", dt.date(2026, 10, 1), dt.date(2026, 11, 1), "usd", 185384, Decimal("1853.84"), 14),
        # anchor 15: period Oct 15 - Nov 15; 1201 calls: 201 x 0.3 = 60.3 -> 60 yen; fee 7500; minimum 15000 - 60
        ("c_jpy", dt.date(2026, 10, 15), dt.date(2026, 11, 15), "jpy", 22500, Decimal("22500.00"), 7),
        # the lines below: usage 28.53 + 31.19 = 59.72 is below the month's $100 minimum: true-up 40.28,
        # plus the fees 22.13 + 32.35
        ("c_pro", dt.date(2026, 10, 1), dt.date(2026, 11, 1), "usd", 15448, Decimal("154.48"), 17),
    ]
    lines = rows(db, "SELECT plan_version, charge, CAST(quantity AS VARCHAR), amount_minor FROM rated_usage "
                     "WHERE customer_id = 'c_pro' AND amount_minor <> 0 ORDER BY segment_start, charge_id")
    assert lines == [
        # gauges (storage max, seats last, active users distinct) price the whole period's quantity in
        # each segment, prorated by its days (14/31 half_up, then 17/31 half_even)
        ("2026-01", "api calls", "1500.000000000000", 100),        # 1000 free, 500 x 0.002
        ("2026-01", "tokens large", "1000000.000000000000", 200),  # 10^6 x 0.000002
        ("2026-01", "storage", "150.500000000000", 544),           # the month's peak, tier 2: 12.04 x 14/31
        ("2026-01", "seats", "4.000000000000", 1806),              # the month's last value: 40.00 x 14/31
        ("2026-01", "active users", "8.000000000000", 203),        # u1..u8, 5 included: 4.50 x 14/31
        ("2026-01", "platform fee", None, 2213),                   # 49 x 14/31
        ("2026-10", "api calls eu", "400.000000000000", 100),      # 400 x 0.0025
        ("2026-10", "storage", "150.500000000000", 578),           # 150.5 x 0.07 = 10.535 x 17/31
        ("2026-10", "seats", "4.000000000000", 2194),              # 40.00 x 17/31
        ("2026-10", "active users", "8.000000000000", 247),        # 4.50 x 17/31
        ("2026-10", "platform fee", None, 3235),                   # 59 x 17/31
        ("2026-10", "minimum spend", None, 4028),                  # 100 - 59.72 of usage
    ]
    versions = rows(db, "SELECT plan, plan_version FROM rules_versions ORDER BY ALL")
    assert versions == [("pro", "2026-01"), ("pro", "2026-10"), ("pro_jpy", "2026-01"), ("scale", "2026-01"),
                        ("starter", "2026-01")]


def _data_version(result: dg.ExecuteInProcessResult, key: str) -> str:
    [mat] = [m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey(key)]
    return mat.materialization.tags["dagster/data_version"]


def test_rematerialising_is_byte_identical_and_late_events_change_the_version(setup):
    """Runs last in the module: it adds a late event to the shared warehouse."""
    db, resources, _, first_version = setup
    snapshot = "SELECT * FROM rated_usage ORDER BY customer_id, segment_start, charge_id"   # rated_at included
    before = rows(db, snapshot)
    with dg.instance_for_test() as instance:
        again = dg.materialize([rated_usage, invoice_previews], partition_key="2026-10-01", resources=resources,
                               instance=instance)
        assert rows(db, snapshot) == before
        assert _data_version(again, "rated_usage") == first_version
        # a late event in the next month still lands in c_jpy's Oct 15 - Nov 15 period
        with warehouse.open_warehouse(db) as con:
            add_events(con, "c_jpy", "seats", "2026-11-03 00:00:00+00", value="2")
        assert dg.materialize([usage_aggregates], partition_key="2026-11-03", resources=resources,
                              instance=instance).success
        late = dg.materialize([rated_usage, invoice_previews], partition_key="2026-10-01", resources=resources,
                              instance=instance)
        assert _data_version(late, "rated_usage") != first_version
    assert rows(db, "SELECT total_minor FROM invoice_previews WHERE customer_id = 'c_jpy'") == [(22500 + 3000 - 3000,)]
    assert rows(db, "SELECT amount_minor FROM rated_usage WHERE customer_id = 'c_jpy' AND charge = 'seats'") == [(3000,)]


def _october(tmp_path: Path, customers: str, events: list[tuple]) -> dict[str, list[tuple]]:
    """Rate October 2026 for `customers` (CSV rows) with `events` (add_events arguments):
    customer -> [(segment_start, charge, amount_minor)] of its non-zero lines, in segment order."""
    from metering.customers import load_customers
    from metering.rating import service

    rules = load_rules(PROJECT_ROOT / "rating_rules")
    (tmp_path / "customers.csv").write_text(HEADER + customers)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(tmp_path / "customers.csv", rules))
        for event in events:
            add_events(con, *event[:4], props=event[4] if len(event) > 4 else "{}")
        for day in sorted({e[2][:10] for e in events}):
            refresh_aggregates(con, rules.meters, dt.date.fromisoformat(day))
        rated, _ = service.rate_month(con, rules, dt.date(2026, 10, 1))
    out: dict[str, list[tuple]] = {}
    for row in rated.filter(rated["amount_minor"] != 0).sort("customer_id", "segment_start", "charge_id").iter_rows(named=True):
        out.setdefault(row["customer_id"], []).append((row["segment_start"].day, row["charge"], row["amount_minor"]))
    return out


def test_a_monthly_minimum_is_one_commitment_across_a_version_change(tmp_path):
    """pro's version change on Oct 15 splits October (fees 49.00 x 14/31 = 22.13, 59.00 x 17/31 = 32.35);
    its $100 minimum is one commitment for the month: 100 x 14/31 + 100 x 17/31 = 100.00 against all
    the month's usage, not a true-up per segment."""
    rated = _october(tmp_path, "hi,Hi,h@h.test,usd,,pro,2026-01-01,succeeds\n"
                               "lo,Lo,l@l.test,usd,,pro,2026-01-01,succeeds\n", [
        # graduated 2026-01: 1,000 free, 9,000 x 0.002 = 18.00, then 0.001 each + 5.00 flat
        ("hi", "api_calls", "2026-10-03 00:00:00+00", 487_000, '{"region":"us"}'),  # 18 + 477 + 5 = 500.00
        ("lo", "api_calls", "2026-10-03 00:00:00+00", 47_000, '{"region":"us"}'),   # 18 + 37 + 5 = 60.00
    ])
    # $500 of usage is far above the minimum: no true-up (per segment it would have been 54.84)
    assert rated["hi"] == [(1, "api calls", 50000), (1, "platform fee", 2213), (15, "platform fee", 3235)]
    # $60 leaves 40.00 to the minimum, on the last segment's line (per segment: 0 + 54.84)
    assert rated["lo"] == [(1, "api calls", 6000), (1, "platform fee", 2213), (15, "platform fee", 3235),
                           (15, "minimum spend", 4000)]


def test_an_assignment_repeating_the_plan_in_force_changes_nothing(tmp_path):
    """starter includes 10,000 calls a month, then 0.0005 each: 20,000 calls are 19.00 + 5.00, also when a
    second row puts the customer on starter again mid-month (it used to restart `included`: 19.00)."""
    rated = _october(tmp_path, "r,R,r@r.test,usd,,starter,2026-01-01,succeeds\n"
                               "r,R,r@r.test,usd,,starter,2026-10-16,succeeds\n", [
        ("r", "api_calls", "2026-10-05 00:00:00+00", 10_000, '{"region":"us"}'),
        ("r", "api_calls", "2026-10-20 00:00:00+00", 10_000, '{"region":"us"}'),
    ])
    assert rated["r"] == [(1, "api calls", 500), (1, "platform fee", 1900)]


def test_a_range_run_of_usage_aggregates_reports_each_day_its_own_metadata(tmp_path):
    """A single-run backfill materializes each partition with that day's counts, as a run per day would."""
    db = tmp_path / "wh.duckdb"
    with warehouse.open_warehouse(db) as con:
        add_events(con, "c_pro", "api_calls", "2026-10-05 10:00:00+00")
        for hour in ("01", "02", "03"):
            add_events(con, "c_pro", "api_calls", f"2026-10-06 {hour}:00:00+00")
    resources = {"warehouse": WarehouseResource(path=str(db)),
                 "paths": ProjectPaths(rules_dir=str(PROJECT_ROOT / "rating_rules"))}
    with dg.instance_for_test() as instance:
        result = dg.materialize([usage_aggregates], resources=resources, instance=instance,
                                tags={"dagster/asset_partition_range_start": "2026-10-05",
                                      "dagster/asset_partition_range_end": "2026-10-06"})
    assert result.success
    reported = {m.partition: {k: m.metadata[k].value for k in ("dagster/row_count", "events", "event_dates")}
                for m in result.asset_materializations_for_node("usage_aggregates")}
    assert reported == {
        "2026-10-05": {"dagster/row_count": 1, "events": 1, "event_dates": "2026-10-05..2026-10-05"},
        "2026-10-06": {"dagster/row_count": 3, "events": 3, "event_dates": "2026-10-06..2026-10-06"},
    }
