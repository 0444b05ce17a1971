"""Warehouse-facing rating: partition writes, the preview totals check, rules_versions immutability."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering import warehouse
from metering.customers import load_customers
from metering.errors import BadInputError
from metering.rating import service
from metering.rules.plans import load_rules
from tests.pipelines.manifest import record_manifest

PROJECT_ROOT = Path(__file__).resolve().parents[3]
OCT = dt.date(2026, 10, 1)
NOW = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)


@pytest.fixture
def rated_db(tmp_path):
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    csv.write_text("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
                   "a,A,a@a.test,usd,,starter,2026-01-01,succeeds\nb,B,b@b.test,usd,31,scale,2026-01-01,fails\n")
    db = tmp_path / "wh.duckdb"
    with warehouse.open_warehouse(db) as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        rated, previews = service.rate_month(con, rules, OCT)
        service.write_rated(con, OCT, rated, rules, NOW)
        service.write_previews(con, OCT, previews, NOW)
    return db, rules


def test_previews_match_lines_and_tampering_is_caught(rated_db):
    db, _ = rated_db
    with warehouse.open_warehouse(db) as con:
        assert service.preview_mismatches(con, OCT).height == 0
        # starter: fee 19.00; scale (anchor 31: Oct 31 - Nov 30): fee 499 + minimum 2000
        assert con.execute("SELECT customer_id, period_start, period_end, total_minor FROM invoice_previews "
                           "ORDER BY 1").fetchall() == [
            ("a", OCT, dt.date(2026, 11, 1), 1900), ("b", dt.date(2026, 10, 31), dt.date(2026, 11, 30), 249900)]
        con.execute("UPDATE rated_usage SET amount_minor = amount_minor + 1 WHERE customer_id = 'b' AND charge = 'platform fee'")
        bad = service.preview_mismatches(con, OCT)
        assert bad.select("customer_id", "lines_minor", "total_minor").rows() == [("b", 249901, 249900)]


def test_rewriting_a_partition_replaces_it(rated_db):
    db, rules = rated_db
    with warehouse.open_warehouse(db) as con:
        before = service.fingerprint(service.read_rated(con, OCT))
        rated, previews = service.rate_month(con, rules, OCT)
        stamps = con.execute("SELECT DISTINCT rated_at FROM rated_usage").fetchall()
        assert service.write_rated(con, OCT, rated, rules, NOW + dt.timedelta(days=1)) == 0   # unchanged: no write
        assert service.fingerprint(service.read_rated(con, OCT)) == before
        assert con.execute("SELECT DISTINCT rated_at FROM rated_usage").fetchall() == stamps
        assert service.write_previews(con, OCT, previews, NOW + dt.timedelta(days=1)) == 0
        # a changed line is written
        changed = rated.with_columns(amount_minor=rated["amount_minor"] + 1)
        assert service.write_rated(con, OCT, changed, rules, NOW) == rated.height
        assert con.execute("SELECT count(*) FROM rated_usage").fetchone()[0] == rated.height == 14


def test_rated_versions_become_immutable(rated_db, tmp_path):
    db, _ = rated_db
    with warehouse.open_warehouse(db, read_only=True) as con:
        hashes = service.rated_hashes(con)
    meters = {("(meter)", m) for m in ("api_calls", "tokens", "storage_gb", "seats", "active_users")}
    assert set(hashes) == {("starter", "2026-01"), ("scale", "2026-01")} | meters   # and the meters they read
    root = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rating_rules", root)
    scale = root / "plans" / "scale.yaml"
    scale.write_text(scale.read_text().replace('amount: "499.00"', 'amount: "449.00"'))
    with pytest.raises(BadInputError, match="version 2026-01 of plan scale has already rated usage"):
        load_rules(root, rated_hashes=hashes)
    # adding a new version instead is fine
    scale.write_text((PROJECT_ROOT / "rating_rules" / "plans" / "scale.yaml").read_text() + """
  - version: "2026-12"
    effective_from: 2026-12-01
    charges:
      - {name: platform fee, model: flat, amount: "449.00"}
""")
    assert [v.version for v in load_rules(root, rated_hashes=hashes).plans["scale"].versions] == ["2026-01", "2026-12"]


def test_meters_that_priced_rated_lines_become_immutable(rated_db, tmp_path):
    """A meter's aggregation decides quantities: max -> sum for storage_gb once re-priced billed periods
    (a month's storage doubled, as `recomputed` adjustments) with every plan version's hash unchanged."""
    from click.testing import CliRunner

    from metering.cli import cli

    db, _ = rated_db
    with warehouse.open_warehouse(db, read_only=True) as con:
        hashes = service.rated_hashes(con)
        stored = con.execute("SELECT meter, definition FROM rated_meters WHERE meter = 'storage_gb'").fetchall()
    assert stored == [("storage_gb", '{"aggregation": "max", "dimensions": [], "property": null, "value": "value"}')]
    root = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rating_rules", root)
    meters = root / "meters.yaml"
    original = meters.read_text()
    meters.write_text(original.replace("storage_gb:   {aggregation: max,", "storage_gb:   {aggregation: sum,"))
    with pytest.raises(BadInputError, match=r"meters\.storage_gb: has already priced rated usage and its aggregation"):
        load_rules(root, rated_hashes=hashes)
    result = CliRunner().invoke(cli, ["rules", "validate", str(root), "--warehouse", str(db)])
    assert result.exit_code == 3 and "published meters are immutable" in result.output
    meters.write_text(original.replace("  seats:", "  # seats:"))   # a rated meter removed
    with pytest.raises(BadInputError, match=r"meters\.seats: has already priced rated usage and is missing"):
        load_rules(root, rated_hashes=hashes)
    meters.write_text(original.replace("unit: GB}", "unit: gigabyte}"))   # a label is not a definition
    assert load_rules(root, rated_hashes=hashes).meters["storage_gb"].unit == "gigabyte"


def _scale_with_version(root: Path, effective_from: str) -> Path:
    """The shipped rules with a new scale version (a different platform fee) from `effective_from`."""
    shutil.copytree(PROJECT_ROOT / "rating_rules", root)
    (root / "plans" / "scale.yaml").write_text((PROJECT_ROOT / "rating_rules" / "plans" / "scale.yaml").read_text() + f"""
  - version: "2026-10x"
    effective_from: {effective_from}
    charges:
      - {{name: platform fee, model: flat, amount: "449.00"}}
""")
    return root


def test_a_version_backdated_into_rated_time_is_refused(rated_db, tmp_path):
    """Customer b (scale, anchor 31) has the period Oct 31 - Nov 30, rated on Nov 2 under scale 2026-01.
    A version starting Oct 10 passes validation (its hash is new) but would re-price Oct 31 and Nov 1,
    already past: rating refuses and keeps the stored lines. A version starting Nov 5, still ahead,
    may change the open period. (Once, a backdated version re-priced a billed month silently.)"""
    db, _ = rated_db
    with warehouse.open_warehouse(db) as con:
        before = service.fingerprint(service.read_rated(con, OCT))
        rules = load_rules(_scale_with_version(tmp_path / "r1", "2026-10-10"), rated_hashes=service.rated_hashes(con))
        rated, _ = service.rate_month(con, rules, OCT)
        with pytest.raises(BadInputError, match="plan scale would re-price 2026-10-31 \\(already past and rated\\) "
                                                "under version 2026-10x instead of 2026-01, for 1 customer"):
            service.write_rated(con, OCT, rated, rules, NOW)
        assert service.fingerprint(service.read_rated(con, OCT)) == before
        rules = load_rules(_scale_with_version(tmp_path / "r2", "2026-11-05"), rated_hashes=service.rated_hashes(con))
        rated, _ = service.rate_month(con, rules, OCT)
        assert service.write_rated(con, OCT, rated, rules, NOW) > 0
        assert ("scale", "2026-10x") in service.rated_hashes(con)


def test_a_rated_version_or_plan_cannot_be_deleted(rated_db, tmp_path):
    db, _ = rated_db
    with warehouse.open_warehouse(db, read_only=True) as con:
        hashes = service.rated_hashes(con)
    root = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rating_rules", root)
    hashes = {**hashes, ("scale", "2025-06"): "0" * 64}   # as if an older version had been rated too
    with pytest.raises(BadInputError, match="version 2025-06 of plan scale has already rated usage and is missing"):
        load_rules(root, rated_hashes=hashes)
    (root / "plans" / "starter.yaml").unlink()
    with pytest.raises(BadInputError, match="plan starter has already rated usage and its file is missing"):
        load_rules(root, rated_hashes={k: v for k, v in hashes.items() if k != ("scale", "2025-06")})


def test_months_touching_a_range():
    assert service.months_touching(dt.date(2026, 1, 5), dt.date(2026, 2, 3)) == [
        dt.date(2025, 12, 1), dt.date(2026, 1, 1), dt.date(2026, 2, 1)]


CUSTOMERS_HEADER = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"


def _list_of_a(csv: Path, *assignments: str) -> None:
    """Write customer a's list (usd, succeeds), one row per `billing_anchor_day,plan,plan_effective_from`."""
    csv.write_text(CUSTOMERS_HEADER + "".join(f"a,A,a@a.test,usd,{a},succeeds\n" for a in assignments))


def _listed(con, csv: Path, rules, *rows: str) -> None:
    """Write a customer list of `rows` (each a line after the header) to `csv`; load it into customer_plans."""
    csv.write_text(CUSTOMERS_HEADER + "".join(f"{row}\n" for row in rows))
    warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))


def _late_calls(con, rules, customer: str, day: str, n: int) -> None:
    con.execute("INSERT INTO usage_events SELECT 'late-' || i, ?, 'api_calls', CAST(? AS TIMESTAMPTZ) + INTERVAL (i) "
                "SECOND, CAST(? AS DATE), NULL, '{\"region\":\"us\"}', '{}', 1, i FROM range(?) t(i)",
                [customer, f"{day} 00:00:00+00", day, n])
    service.refresh_aggregates(con, rules.meters, dt.date.fromisoformat(day))


def _line(con, customer: str, charge: str) -> tuple:
    return con.execute("SELECT CAST(quantity AS VARCHAR), amount_minor FROM rated_usage WHERE customer_id = ? "
                       "AND charge = ?", [customer, charge]).fetchone()


def test_a_closed_period_keeps_its_lines_unless_its_usage_changes(rated_db):
    """I19: re-rating a closed period (a's October, ended before NOW) under the same usage keeps its lines,
    even when the pricing code would now price them otherwise (simulated: its fee as an older rating
    left it, 19.07); late usage re-rates it. b's period (Oct 31 - Nov 30) is open."""
    db, rules = rated_db
    with warehouse.open_warehouse(db) as con:
        con.execute("UPDATE rated_usage SET amount_minor = 1907, amount = 19.07 "
                    "WHERE customer_id = 'a' AND charge = 'platform fee'")
        rated, _ = service.rate_month(con, rules, OCT)
        assert service.write_rated(con, OCT, rated, rules, NOW) == 0
        assert _line(con, "a", "platform fee") == (None, 1907)
        # 12,000 late calls in October: starter includes 10,000, then 0.0005 each: 1.00; the period is
        # rated again, as the code prices it now
        _late_calls(con, rules, "a", "2026-10-20", 12_000)
        rated, _ = service.rate_month(con, rules, OCT)
        assert service.write_rated(con, OCT, rated, rules, NOW) == rated.height
        assert _line(con, "a", "platform fee") == (None, 1900)
        assert _line(con, "a", "api calls") == ("12000.000000000000", 100)
        # and every change to the closed period is an adjustment row (I19); the late events were not
        # ingested from a file here, so no file explains them: `recomputed`, linked to none
        assert con.execute("SELECT customer_id, period_start, charge, before_minor, after_minor, delta_minor, reason, "
                           "CAST(link AS VARCHAR) FROM rating_adjustments ORDER BY charge").fetchall() == [
            ("a", OCT, "api calls", 0, 100, 100, "recomputed", '{"files": []}'),
            ("a", OCT, "platform fee", 1907, 1900, -7, "recomputed", '{"files": []}'),
        ]


def test_late_usage_in_a_closed_period_is_an_adjustment_linked_to_its_file(rated_db, tmp_path):
    """I19: a closed period's total changes only through adjustment rows with a reason and a link. 12,000
    late starter calls (10,000 included, then 0.0005 each) add 1.00 to a's closed October: one row,
    reason late_usage, linked to the file that brought them; re-rating again adds none; b's open
    period is no adjustment."""
    import json

    from metering.ingest import ingest_file

    db, rules = rated_db
    late = tmp_path / "late.jsonl"
    late.write_text("".join(json.dumps({"event_id": f"late-{i}", "customer_id": "a", "meter": "api_calls",
                                        "timestamp": "2026-10-20T10:00:00Z", "properties": {"region": "us"}}) + "\n"
                            for i in range(12_000)))
    with warehouse.open_warehouse(db) as con:
        result = ingest_file(con, late, now=NOW)
        service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, 20))
        for _ in range(2):
            rated, previews = service.rate_month(con, rules, OCT)
            service.write_rated(con, OCT, rated, rules, NOW + dt.timedelta(hours=1))
        rows = con.execute("SELECT customer_id, charge, before_minor, after_minor, delta_minor, reason, "
                           "CAST(link AS VARCHAR) FROM rating_adjustments").fetchall()
    assert rows == [("a", "api calls", 0, 100, 100, "late_usage", json.dumps(
        {"files": [{"file_id": result.file_id, "path": str(late), "sha256": result.file_hash}]},
        separators=(",", ":")))]


def test_a_closed_period_cut_otherwise_by_an_older_rating_is_kept_not_refused(rated_db, tmp_path):
    """An older rating cut a's October in two at a row repeating its plan (Oct 16), which the customer
    list now folds away: every day is still starter 2026-01, so it is not refused, and with the same
    usage it keeps its lines, gauges included (5 seats and 10 GB in both segments are the month's 5
    and 10, not 10 and 20: per segment they were billed twice, which the period keeps as billed)."""
    from metering.customers import with_effective_to

    db, rules = rated_db
    with warehouse.open_warehouse(db) as con:
        for day in (3, 20):   # in both of the older rating's segments
            for meter, value in (("seats", "5"), ("storage_gb", "10")):
                con.execute("INSERT INTO usage_events VALUES (?, 'a', ?, CAST(? AS TIMESTAMPTZ), CAST(? AS DATE), ?, "
                            "'{}', '{}', 1, 1)", [f"g-{meter}-{day}", meter, f"2026-10-{day} 00:00:00+00",
                                                  f"2026-10-{day}", value])
            service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, day))
        plans = service.read_customer_plans(con)
        a = plans.filter(plans["customer_id"] == "a")
        split = (a.with_columns(plan_effective_to=dt.date(2026, 10, 16))
                 .vstack(a.with_columns(plan_effective_from=dt.date(2026, 10, 16))))
        older = split.vstack(plans.filter(plans["customer_id"] != "a"))
        rated, _ = service.rate_month(con, rules, OCT, customers=older)
        assert rated.filter(rated["customer_id"] == "a")["segment_start"].unique().to_list() == [
            OCT, dt.date(2026, 10, 16)]
        service.write_rated(con, OCT, rated, rules, NOW)
        before = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
        assert len(with_effective_to(older).filter(pl.col("customer_id") == "a")) == 1   # folded today
        rated, _ = service.rate_month(con, rules, OCT)
        assert service.write_rated(con, OCT, rated, rules, NOW) == 0
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 31), st.integers(1, 20_000)),
                      min_size=1, max_size=4))
def test_a_closed_periods_total_is_its_first_total_plus_its_adjustments(tmp_path_factory, steps):
    """I19 as an equation: after any sequence of late usage and re-ratings, each closed period's total is
    its first rated total plus the deltas of its adjustment rows, and open periods have none."""
    tmp = tmp_path_factory.mktemp("adj")
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp / "customers.csv"
    csv.write_text("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
                   "a,A,a@a.test,usd,,starter,2026-01-01,succeeds\nb,B,b@b.test,usd,,pro,2026-01-01,fails\n")
    totals = "SELECT customer_id, period_start, sum(amount_minor) FROM rated_usage GROUP BY ALL ORDER BY ALL"
    with warehouse.open_warehouse(tmp / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        rated, _ = service.rate_month(con, rules, OCT)
        service.write_rated(con, OCT, rated, rules, NOW)
        first = {(c, p): t for c, p, t in con.execute(totals).fetchall()}
        for i, (customer, day, n) in enumerate(steps):
            con.execute("INSERT INTO usage_events SELECT ? || '-' || i, ?, 'api_calls', CAST(? AS TIMESTAMPTZ) "
                        "+ INTERVAL (i) MILLISECOND, CAST(? AS DATE), NULL, '{\"region\":\"us\"}', '{}', 1, i "
                        "FROM range(?) t(i)", [f"s{i}", customer, f"2026-10-{day:02d} 00:00:00+00",
                                               f"2026-10-{day:02d}", n])
            service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, day))
            rated, _ = service.rate_month(con, rules, OCT)
            service.write_rated(con, OCT, rated, rules, NOW + dt.timedelta(hours=i + 1))
        deltas = dict(((c, p), d) for c, p, d in con.execute(
            "SELECT customer_id, period_start, sum(delta_minor) FROM rating_adjustments GROUP BY ALL").fetchall())
        now = {(c, p): t for c, p, t in con.execute(totals).fetchall()}
        # a row is a change (pro's minimum can absorb usage: +calls and -minimum, a period sum of 0)
        assert con.execute("SELECT count(*) FROM rating_adjustments WHERE delta_minor = 0").fetchone() == (0,)
    assert set(now) == set(first) == {("a", OCT), ("b", OCT)}   # both calendar months: closed at NOW
    for key, total in now.items():
        assert total == first[key] + deltas.get(key, 0), key


def test_a_periods_first_rating_after_its_end_is_its_closing_not_an_adjustment(tmp_path):
    """A period is billed once rated at or after its end. a's October, rated on Oct 31 while open, then
    gets its last day's calls and a plan change dated Oct 28 (allowed in an open period): the rating on
    Nov 1 is October's closing rating, neither refused nor an adjustment. Calls arriving after that are
    (12,000 starter calls: 10,000 included, 2,000 x 0.0005 = 1.00 before; pro from Oct 28 prices them)."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, ",starter,2026-01-01")
    open_rating = dt.datetime(2026, 10, 31, 2, 30, tzinfo=dt.timezone.utc)
    closing = dt.datetime(2026, 11, 1, 2, 30, tzinfo=dt.timezone.utc)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        _late_calls(con, rules, "a", "2026-10-20", 12_000)
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, open_rating)
        _late_calls(con, rules, "a", "2026-10-31", 3)   # on time: the period is open
        _list_of_a(csv, ",starter,2026-01-01", ",pro,2026-10-28")
        warehouse.replace_rows(con, "customer_plans", "TRUE", [], load_customers(csv, rules))
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, closing)
        assert con.execute("SELECT count(*) FROM rating_adjustments").fetchone() == (0,)
        assert con.execute("SELECT DISTINCT plan FROM rated_usage ORDER BY 1").fetchall() == [("pro",), ("starter",)]
        # now billed: a changed list is refused, late calls are an adjustment
        _list_of_a(csv, ",starter,2026-01-01")
        with pytest.raises(BadInputError, match="would re-price customer a's closed period 2026-10-01..2026-11-01"):
            service.write_rated(con, OCT, service.rate_month(con, rules, OCT, load_customers(csv, rules))[0],
                                rules, closing + dt.timedelta(days=1))
        _late_calls(con, rules, "a", "2026-10-29", 1)   # a late pro call (pro: 1,000 free: no money)
        _late_calls(con, rules, "a", "2026-10-10", 4_000)   # late starter calls: 4,000 x 0.0005 = 2.00
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, closing + dt.timedelta(days=2))
        assert con.execute("SELECT charge, delta_minor FROM rating_adjustments ORDER BY ALL").fetchall() == [
            ("api calls", 200)]


def test_a_plan_change_moved_inside_a_closed_period_is_refused_or_adjusted(tmp_path):
    """a's closed October: starter, then pro from Oct 28; its only usage is on Oct 20. A list moving pro's
    start to Oct 29 changes no charge's usage, so the stored lines were kept: the move was neither refused
    nor applied, even on purpose (audit). It is refused; with a reason it re-prices the fees by their
    days, by hand: starter 19.00 x 27/31 = 16.55 and pro 59.00 x 4/31 = 7.61 (2416) become 19.00 x 28/31
    = 17.16 and 59.00 x 3/31 = 5.71 (2287)."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, ",starter,2026-01-01", ",pro,2026-10-28")
    closing = dt.datetime(2026, 11, 1, 2, 30, tzinfo=dt.timezone.utc)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        _late_calls(con, rules, "a", "2026-10-20", 10)
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, closing)
        before = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
        csv.write_text(csv.read_text().replace("2026-10-28", "2026-10-29"))
        moved = load_customers(csv, rules)
        with pytest.raises(BadInputError, match="would re-price customer a's closed period 2026-10-01..2026-11-01"):
            service.write_rated(con, OCT, service.rate_month(con, rules, OCT, moved)[0], rules,
                                closing + dt.timedelta(days=1))
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before
        reason = service.Adjustment("pro started a day later", {"customers": "moved"})
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT, moved)[0], rules,
                            closing + dt.timedelta(days=1), reason)
        assert con.execute("SELECT before_minor, after_minor, reason FROM rating_adjustments "
                           "WHERE charge = 'platform fee'").fetchall() == [(2416, 2287, "pro started a day later")]


def test_a_list_giving_an_earlier_month_a_period_over_a_stored_one_is_refused(tmp_path):
    """a (anchor 31) subscribed on Oct 10: its billed period Oct 10..Oct 31 is stored with October. A list
    dating the start back to Sep 30 (September's anchor date: Sep 30..Oct 31), re-rated over September
    alone, stored the new period with September beside the old one: Oct 10..31 billed twice, the
    billed period neither refused nor adjusted (audit). Refused, nothing written; over both months the
    billed period's own refusal speaks."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, "31,starter,2026-10-10")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        _late_calls(con, rules, "a", "2026-10-12", 10)
        record_manifest(con)   # as ingestion would have: rerate refuses usage that breaks conservation
        service.rerate_range(con, rules, dt.date(2026, 10, 1), dt.date(2026, 10, 31), NOW)
        assert con.execute("SELECT DISTINCT period_start, period_end FROM rated_usage ORDER BY 1").fetchall() == [
            (dt.date(2026, 10, 10), dt.date(2026, 10, 31)), (dt.date(2026, 10, 31), dt.date(2026, 11, 30))]
        before = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
        _list_of_a(csv, "31,starter,2026-09-30")
        warehouse.replace_rows(con, "customer_plans", "TRUE", [], load_customers(csv, rules))
        later = NOW + dt.timedelta(days=1)
        with pytest.raises(BadInputError, match=r"gives customer a the period 2026-09-30\.\.2026-10-31, which overlaps "
                                                r"its period 2026-10-10\.\.2026-10-31 .*--from 2026-09-30 --to 2026-10-30"):
            service.rerate_range(con, rules, dt.date(2026, 9, 1), dt.date(2026, 9, 30), later)
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before
        with pytest.raises(BadInputError, match="would re-price customer a's closed period 2026-10-10..2026-10-31"):
            service.rerate_range(con, rules, dt.date(2026, 9, 30), dt.date(2026, 10, 30), later)
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before


@pytest.mark.parametrize("anchor, last_day_between", [(20, 19), (2, 1)])   # (2, 1): a single day
def test_a_changed_anchor_leaving_days_in_no_period_is_refused(tmp_path, anchor, last_day_between):
    """a (calendar months) has October 1..November 1 stored. A list moving its anchor to the 20th rated
    November's period from Nov 20 (Nov 20..Dec 20): Nov 1..19 fell in no period, billed by nobody, and
    all_usage_priced listed nothing (audit). Refused, nothing written, the days named; to the 2nd, Nov 1
    alone falls between, and is refused as a longer gap is."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, ",starter,2026-01-01")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, NOW)
        before = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
        _list_of_a(csv, f"{anchor},starter,2026-01-01")
        moved = load_customers(csv, rules)
        nov = dt.date(2026, 11, 1)
        rated = service.rate_month(con, rules, nov, moved)[0]
        assert rated["period_start"].unique().to_list() == [dt.date(2026, 11, anchor)]
        with pytest.raises(BadInputError, match=rf"leaves customer a's days 2026-11-01\.\.2026-11-{last_day_between:02d} "
                                                rf"in no billing period, between its periods 2026-10-01\.\.2026-11-01 "
                                                rf"and 2026-11-{anchor:02d}\.\.2026-12-{anchor:02d} \(1 customer\(s\)\)"):
            service.write_rated(con, nov, rated, rules, NOW)
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before


def test_a_month_re_rated_away_from_the_stored_period_after_it_is_refused(tmp_path):
    """a subscribed on Oct 1 with anchor 20: Oct 1..20 and Oct 20..Nov 20 start in October, Nov 20..Dec 20
    in November. A list dropping the anchor re-rates October alone as Oct 1..Nov 1, which leaves
    Nov 1..19 between it and the stored November period: the gap after is refused as the one before."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, "20,starter,2026-10-01")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        record_manifest(con)   # as ingestion would have: rerate refuses usage that breaks conservation
        service.rerate_range(con, rules, OCT, dt.date(2026, 11, 30), dt.datetime(2026, 10, 5, tzinfo=dt.UTC))
        assert con.execute("SELECT DISTINCT period_start, period_end FROM rated_usage ORDER BY 1").fetchall() == [
            (dt.date(2026, 10, 1), dt.date(2026, 10, 20)), (dt.date(2026, 10, 20), dt.date(2026, 11, 20)),
            (dt.date(2026, 11, 20), dt.date(2026, 12, 20))]
        before = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
        _list_of_a(csv, ",starter,2026-10-01")
        calendar = load_customers(csv, rules)
        with pytest.raises(BadInputError, match=r"days 2026-11-01\.\.2026-11-19 in no billing period, between its "
                                                r"periods 2026-10-01\.\.2026-11-01 and 2026-11-20\.\.2026-12-20"):
            service.rerate_range(con, rules, OCT, dt.date(2026, 10, 31), dt.datetime(2026, 10, 6, tzinfo=dt.UTC),
                                 customers=calendar)
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before
        # the months together re-cut both periods: Oct 1..Nov 1 and Nov 1..Dec 1, contiguous
        service.rerate_range(con, rules, OCT, dt.date(2026, 11, 30), dt.datetime(2026, 10, 6, tzinfo=dt.UTC),
                             customers=calendar)
        assert con.execute("SELECT DISTINCT period_start, period_end FROM rated_usage ORDER BY 1").fetchall() == [
            (dt.date(2026, 10, 1), dt.date(2026, 11, 1)), (dt.date(2026, 11, 1), dt.date(2026, 12, 1))]


def test_a_version_backdated_into_a_closed_period_is_blamed_on_the_rules(tmp_path):
    """A pro version from Oct 20 added after October closed: the refusal blamed the customer list (none
    was given) and advised --adjust-closed, which was then refused for the real reason (audit)."""
    root = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rating_rules", root)
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, ",pro,2026-01-01")
    closing = dt.datetime(2026, 11, 1, 2, 30, tzinfo=dt.timezone.utc)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        rules = load_rules(root)
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        _late_calls(con, rules, "a", "2026-10-20", 10)
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, closing)
        pro = root / "plans" / "pro.yaml"
        pro.write_text(pro.read_text() + '  - version: "2026-11"\n    effective_from: 2026-10-20\n'
                       '    charges:\n      - {name: platform fee, model: flat, amount: "69.00"}\n')
        backdated = load_rules(root)
        with pytest.raises(BadInputError, match="^rules: plan pro would re-price 2026-10-20 .* under version 2026-11"):
            service.write_rated(con, OCT, service.rate_month(con, backdated, OCT)[0], backdated,
                                closing + dt.timedelta(days=1))


def test_a_rerate_refused_in_one_month_writes_no_month(tmp_path):
    """rerate_range writes its months in one transaction: October refused (a billed period re-priced by
    the list) leaves September's late-usage re-rating and its adjustment unwritten too."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, ",starter,2026-01-01")
    sep = dt.date(2026, 9, 1)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        service.rerate_range(con, rules, sep, dt.date(2026, 10, 31), NOW)
        before = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
        _late_calls(con, rules, "a", "2026-09-15", 12_000)   # would be a September adjustment of 1.00
        record_manifest(con)   # as ingestion would have: rerate refuses usage that breaks conservation
        _list_of_a(csv, ",starter,2026-01-01", ",pro,2026-10-10")
        warehouse.replace_rows(con, "customer_plans", "TRUE", [], load_customers(csv, rules))
        with pytest.raises(BadInputError, match="closed period 2026-10-01..2026-11-01"):
            service.rerate_range(con, rules, sep, dt.date(2026, 10, 31), NOW + dt.timedelta(days=1))
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before
        assert con.execute("SELECT count(*) FROM rating_adjustments").fetchone() == (0,)


def test_a_late_files_link_survives_ratings_of_other_periods_in_the_month(tmp_path):
    """The link names the files ingested after the period last changed. a's October is billed; a late
    file for it is ingested on Nov 3 but aggregated only on Nov 6, while b's open period (anchor 15:
    Oct 15 - Nov 15) changes every day and the month is re-rated daily. a's period keeps its rated_at
    meanwhile, so the adjustment still names the file (the month's restamping used to lose it)."""
    import json

    from metering.ingest import ingest_file

    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    csv.write_text("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
                   "a,A,a@a.test,usd,,starter,2026-01-01,succeeds\nb,B,b@b.test,usd,15,starter,2026-01-01,succeeds\n")
    at = lambda day: dt.datetime(2026, 11, day, 2, 30, tzinfo=dt.timezone.utc)  # noqa: E731
    late = tmp_path / "late.jsonl"
    late.write_text("".join(json.dumps({"event_id": f"late-{i}", "customer_id": "a", "meter": "api_calls",
                                        "timestamp": "2026-10-20T10:00:00Z", "properties": {"region": "us"}}) + "\n"
                            for i in range(12_000)))
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, at(1))
        file_id = ingest_file(con, late, now=at(3)).file_id
        con.execute("UPDATE ingested_files SET ingested_at = ? WHERE file_id = ?", [at(3), file_id])
        for day in (3, 4, 5):   # b's open period gets calls every day; the month is re-rated
            _late_calls(con, rules, "b", f"2026-11-0{day}", 20_000 + day)
            service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, at(day) + dt.timedelta(hours=1))
        service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, 20))   # the backfill of a's late date
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, at(6))
        rows = con.execute("SELECT customer_id, charge, delta_minor, reason, link->'$.files[0].file_id' "
                           "FROM rating_adjustments").fetchall()
    assert rows == [("a", "api calls", 100, "late_usage", str(file_id))]


def test_a_periods_closing_rating_stamps_it_even_when_its_lines_do_not_change(tmp_path):
    """a's September (pro 2026-01 all month), rated on Sep 30 while open, gets no usage after: the
    rating on Oct 1 is its closing rating and stamps it (billed from then on), though nothing else
    changes; later ratings keep that stamp. Before, the period kept its Oct 31 stamp for ever: never billed, so its minimum was never
    invoiced and later changes to it were never adjustments."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    csv.write_text("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
                   "a,A,a@a.test,usd,,pro,2026-01-01,succeeds\n")
    sep = dt.date(2026, 9, 1)
    open_rating = dt.datetime(2026, 9, 30, 2, 30, tzinfo=dt.timezone.utc)
    closing = dt.datetime(2026, 10, 1, 2, 30, tzinfo=dt.timezone.utc)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        _late_calls(con, rules, "a", "2026-09-20", 2_000)

        def rate_at(at: dt.datetime) -> int:
            return service.write_rated(con, sep, service.rate_month(con, rules, sep)[0], rules, at)

        def stamps() -> set:
            return {r for (r,) in con.execute("SELECT DISTINCT rated_at FROM rated_usage").fetchall()}

        assert rate_at(open_rating) > 0 and stamps() == {open_rating}
        lines = con.execute("SELECT * EXCLUDE (rated_at) FROM rated_usage ORDER BY ALL").fetchall()
        assert rate_at(closing) > 0 and stamps() == {closing}
        assert con.execute("SELECT * EXCLUDE (rated_at) FROM rated_usage ORDER BY ALL").fetchall() == lines
        assert rate_at(closing + dt.timedelta(days=1)) == 0 and stamps() == {closing}
        # billed now: late usage is an adjustment. 2,000 -> 2,500 calls (the first 1,000 free, then 0.002):
        # 2.00 -> 3.00; the $100.00 minimum's true-up over the usage lines: 98.00 -> 97.00
        assert _line(con, "a", "minimum spend") == (None, 9800)
        _late_calls(con, rules, "a", "2026-09-21", 500)
        rate_at(closing + dt.timedelta(days=2))
        assert con.execute("SELECT charge, before_minor, after_minor FROM rating_adjustments ORDER BY charge"
                           ).fetchall() == [("api calls", 200, 300), ("minimum spend", 9800, 9700)]


def test_a_gauge_is_billed_once_per_period_across_a_version_change(tmp_path):
    """pro changes version on 2026-10-15: October splits 14 + 17 days. A gauge's quantity is the period's
    (10 seats, a 500 GB peak, 8 distinct users), priced by each version and prorated by its days; per
    segment each was billed in full twice (seats 200.00, storage 75.00, users 9.00). By hand:
    seats 100.00 x 14/31 = 45.16 (half_up) + 100.00 x 17/31 = 54.84 (half_even);
    storage 500 x 0.08 = 40.00 x 14/31 = 18.06, 500 x 0.07 = 35.00 x 17/31 = 19.19;
    users (8 - 5 included) x 1.50 = 4.50 x 14/31 = 2.03, x 17/31 = 2.47."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        _listed(con, tmp_path / "customers.csv", rules, "p,P,p@p.test,usd,,pro,2026-01-01,succeeds")
        for day in range(1, 32):
            ts = f"2026-10-{day:02d} 12:00:00+00"
            for meter, value, props in (("seats", "10", "{}"), ("storage_gb", "500", "{}"),
                                        ("active_users", None, f'{{"user_id":"u{day % 8}"}}')):
                con.execute("INSERT INTO usage_events VALUES (?, 'p', ?, CAST(? AS TIMESTAMPTZ), CAST(? AS DATE), ?, ?, "
                            "'{}', 1, 1)", [f"{meter}-{day}", meter, ts, f"2026-10-{day:02d}", value, props])
            service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, day))
        rated, _ = service.rate_month(con, rules, OCT)
    gauges = rated.filter(pl.col("charge").is_in(["seats", "storage", "active users"])).sort("charge", "segment_start")
    assert gauges.select("charge", "segment_start", "quantity", "amount_minor").rows() == [
        ("active users", OCT, 8, 203), ("active users", dt.date(2026, 10, 15), 8, 247),
        ("seats", OCT, 10, 4516), ("seats", dt.date(2026, 10, 15), 10, 5484),
        ("storage", OCT, 500, 1806), ("storage", dt.date(2026, 10, 15), 500, 1919)]
    assert gauges.filter(pl.col("charge") == "seats")["tiers"].to_list()[0].endswith(
        ',{"segment_days":14,"period_days":31}]')


def test_a_billed_split_period_keeps_its_gauge_lines_from_before_the_proration(tmp_path):
    """October billed before gauges were prorated: seats 10 then 12 were stored per segment (10 x 10.00
    and 12 x 10.00). Re-rated with the same usage it keeps those lines, no adjustment (I19: never
    re-priced by a change of the pricing code); a late seat count still re-prices it."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    csv.write_text("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
                   "p,P,p@p.test,usd,,pro,2026-01-01,succeeds\n")
    closing = dt.datetime(2026, 11, 1, 3, tzinfo=dt.timezone.utc)
    seats = "SELECT segment_start, quantity, amount_minor FROM rated_usage WHERE charge = 'seats' ORDER BY 1"

    def add_seats(day: int, n: int) -> None:
        con.execute("INSERT INTO usage_events VALUES (?, 'p', 'seats', CAST(? AS TIMESTAMPTZ), CAST(? AS DATE), ?, "
                    "'{}', '{}', 1, 1)", [f"s-{day}-{n}", f"2026-10-{day:02d} 12:00:00+00", f"2026-10-{day:02d}", n])
        service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, day))

    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        for day in range(1, 32):
            add_seats(day, 10 if day < 15 else 12)
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, closing)
        # the lines as the per-segment pricing stored them
        con.execute("UPDATE rated_usage SET quantity = 10, amount = 100, amount_minor = 10000, "
                    "amount_unrounded = 100 WHERE charge = 'seats' AND segment_start = DATE '2026-10-01'")
        con.execute("UPDATE rated_usage SET amount = 120, amount_minor = 12000, amount_unrounded = 120 "
                    "WHERE charge = 'seats' AND segment_start = DATE '2026-10-15'")
        before = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
        assert service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules,
                                   closing + dt.timedelta(days=4)) == 0
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before
        assert con.execute("SELECT count(*) FROM rating_adjustments").fetchone()[0] == 0
        add_seats(31, 15)   # late: the month's last count is now 15 (same time as the 12, a larger id)
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, closing + dt.timedelta(days=5))
        # 15 x 10.00 x 14/31 = 67.74 (half_up) and x 17/31 = 82.26 (half_even)
        assert con.execute(seats).fetchall() == [(OCT, 15, 6774), (dt.date(2026, 10, 15), 15, 8226)]
        assert con.execute("SELECT charge, before_minor, after_minor FROM rating_adjustments ORDER BY 1").fetchall() \
            == [("seats", 22000, 15000)]
