"""Mutation audit 21 (aggregate, service, offline what-if): cases no earlier test pinned down."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import polars as pl
import pytest

from metering import warehouse
from metering.customers import load_customers
from metering.rating import service
from metering.rating.aggregate import build_aggregates, charge_quantities, unpriced_usage
from metering.rules.plans import load_rules
from tests.metering.rating.conftest import PROJECT_ROOT, plan_yaml, write_rules
from tests.metering.rating.test_rating_aggregate import insert, segments_oct
from tests.metering.rating.test_rating_cli import _rate_csv
from tests.metering.rating.test_rating_service import NOW, OCT, _late_calls, _list_of_a, _listed, rated_db  # noqa: F401  (a fixture)

UTC = dt.timezone.utc

HEADER = "customer_id,meter,quantity,plan,period_start\n"


# --- the offline what-if (`metering rate`) ------------------------------------------------------------------

def test_what_if_rows_of_one_unique_count_meter_add_up_as_disjoint_users(tmp_path):
    """Two rows of active_users for c1's October are taken as disjoint sets of users: 4 + 6 = 10 users, 5 of
    them included, 5 x 1.50 = 7.50 (pro 2026-01). Taking the larger row (as max and last do) billed 6 - 5 = 1
    user, 1.50."""
    usage, result = _rate_csv(tmp_path, HEADER + "c1,active_users,4,pro,2026-10-01\nc1,active_users,6,pro,2026-10-01\n")
    assert result.exit_code == 0, result.output
    rated = pl.read_csv(tmp_path / "o.csv", infer_schema=False).filter(pl.col("charge") == "active users")
    assert rated.select("quantity", "billable_quantity", "amount").rows() == [
        ("10.000000000000", "5.000000000000", "7.50")]


def test_what_if_refuses_a_customer_id_of_blanks_on_its_line(tmp_path):
    """A customer id of spaces is as empty as none: it was rated as a customer named '  '."""
    usage, result = _rate_csv(tmp_path, HEADER + "  ,seats,1,pro,2026-10-01\n")
    assert result.exit_code == 3, result.output
    assert f"error: {usage}:2: customer_id: empty (1 row(s); first value '  ')" in result.output


def test_what_if_without_at_refuses_a_blank_period_start_on_its_line(tmp_path):
    """Only `--at` dates a row left undated; without it a blank period_start names no period and is refused."""
    usage, result = _rate_csv(tmp_path, HEADER + "c1,seats,1,pro,2026-10-01\nc1,seats,1,pro,\n")
    assert result.exit_code == 3, result.output
    assert f"error: {usage}:3: period_start: not a date (YYYY-MM-DD) (1 row(s); first value None)" in result.output


def test_what_if_names_a_blank_line_by_the_field_it_lacks(tmp_path):
    """A blank line is read as a row of empty fields: the field checks name it on its own line (3)."""
    usage, result = _rate_csv(tmp_path, HEADER + "c1,seats,1,pro,2026-10-01\n\nc1,seats,1,pro,2026-10-01\n")
    assert result.exit_code == 3, result.output
    assert f"error: {usage}:3: customer_id: empty (1 row(s); first value None)" in result.output


@pytest.mark.parametrize("first, second", [("c1", "c2"), ("c2", "c1")])
def test_what_if_names_first_the_customer_period_whose_rows_start_earliest(tmp_path, first, second):
    """`first` (lines 2 and 5) and `second` (lines 3 and 4) both straddle pro's Oct 15 change. `first`'s
    rows start first (line 2 < 3), so it is named, at line 5, its first row under a second version.
    Ordering by each period's last line named `second` (4 < 5); ordering by customer id named c1 even
    when c2's rows start first (audit 24)."""
    usage, result = _rate_csv(tmp_path, HEADER + f"{first},seats,1,pro,2026-10-03\n{second},seats,1,pro,2026-10-03\n"
                              f"{second},seats,1,pro,2026-10-20\n{first},seats,1,pro,2026-10-20\n")
    assert result.exit_code == 3, result.output
    assert (f"error: {usage}:5: period_start: customer {first}'s period 2026-10-01..2026-11-01 would be priced"
            in result.output)
    assert "(2 customer period(s))" in result.output


def test_what_if_names_the_first_line_whose_quantity_cannot_be_rated_exactly(tmp_path):
    """Lines 2 (c1) and 3 (c2) each carry 1.8e17 API calls, 1.8e14 USD at 0.001 each, past the 10^14 a
    line holds: the message names the first, line 2, customer c1."""
    big = "180000000000000000"
    usage, result = _rate_csv(tmp_path, HEADER + f"c1,api_calls,{big},pro,2026-09-01\nc2,api_calls,{big},pro,2026-09-01\n")
    assert result.exit_code == 3, result.output
    assert f"error: {usage}:2: quantity:" in result.output
    assert "customer c1," in result.output and "(the quantity of line(s) 2)" in result.output


# --- aggregation: routing usage to charges, combining hours --------------------------------------------------

def test_a_charge_filtering_on_two_dimensions_prices_only_usage_matching_both(tmp_path):
    """A charge for us *and* gold: of 3 us/gold, 2 us/free and 1 eu/gold calls it prices the 3 that match
    both filters; matching either one priced 3 + 2 + 1 = 6."""
    root = write_rules(tmp_path / "rules", plan_yaml(
        '- {name: us gold, meter: api_calls, model: per_unit, unit_amount: "1", filters: {region: us, tier: gold}}'))
    (root / "meters.yaml").write_text("meters:\n  api_calls: {aggregation: count, unit: call, dimensions: [region, tier]}\n")
    rules = load_rules(root)
    t = dt.datetime(2026, 10, 5, 3, tzinfo=UTC)
    props = ['{"region":"us","tier":"gold"}'] * 3 + ['{"region":"us","tier":"free"}'] * 2 + ['{"region":"eu","tier":"gold"}']
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, [(f"e{i}", "api_calls", t, None, p) for i, p in enumerate(props)])
        partials = build_aggregates(con, rules.meters, dt.date(2026, 10, 1), dt.date(2026, 11, 1))
    q = charge_quantities(partials, segments_oct(), rules)
    assert q.select("charge_id", "quantity").rows() == [(0, Decimal(3))]


def test_hourly_aggregates_come_out_in_key_order_whatever_the_event_order(tmp_path):
    """usage_aggregates rows are written in (customer, meter, dimensions, hour) order, so a day's rebuild
    writes the same bytes however the events arrived (I5). Events inserted newest first, by customer
    c9 down to c0, come out c0 first, each customer's hours ascending."""
    meters = load_rules(PROJECT_ROOT / "rating_rules").meters
    with warehouse.open_warehouse(":memory:") as con:
        for c in reversed(range(10)):
            for h in reversed(range(24)):
                t = dt.datetime(2026, 10, 5, h, tzinfo=UTC)
                con.execute("INSERT INTO usage_events VALUES (?, ?, 'tokens', ?, DATE '2026-10-05', 1, "
                            "'{\"model\":\"small\"}', '{}', 1, 1)", [f"e{c}-{h}", f"c{c}", t])
        rows = build_aggregates(con, meters, dt.date(2026, 10, 5), dt.date(2026, 10, 6))
    keys = rows.select("customer_id", "hour").rows()
    assert len(keys) == 240 and keys == sorted(keys)


# --- unpriced usage: what the month lists, and how much ------------------------------------------------------

US = '{"region":"us"}'
NOV1 = dt.date(2026, 11, 1)


def test_unpriced_usage_of_the_month_counts_every_event_and_leaves_the_next_months_first_hour_alone(make_rules):
    """October's list, from hourly rows read through Nov 1: ghost (no customer) sent 2 calls at Oct 20 03:xx
    (one hourly row) and 1 on Oct 21: 2 rows, 3 events. Its call at Nov 1 00:00, and c1's, belong to
    November (c1's October period ends then), so October lists neither."""
    rules = make_rules('- {meter: api_calls, model: per_unit, unit_amount: "1"}')
    at = lambda *a: dt.datetime(2026, *a, tzinfo=UTC)  # noqa: E731
    events = [("g1", at(10, 20, 3, 0)), ("g2", at(10, 20, 3, 59)), ("g3", at(10, 21, 8)), ("g4", at(11, 1, 0))]
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, [("c1-nov", "api_calls", at(11, 1, 0), None, US), ("c1-oct", "api_calls", at(10, 5), None, US)])
        con.executemany("INSERT INTO usage_events VALUES (?, 'ghost', 'api_calls', ?, CAST(? AS DATE), NULL, ?, "
                        "'{}', 1, 1)", [(eid, t, t.date(), US) for eid, t in events])
        partials = build_aggregates(con, rules.meters, OCT, dt.date(2026, 11, 2))
    out = unpriced_usage(partials, segments_oct(), rules, OCT, NOV1)
    assert out.select("customer_id", "reason", "rows", "events").rows() == [("ghost", "unknown_customer", 2, 3)]


def test_usage_before_a_subscription_is_listed_in_its_own_month_only(make_rules):
    """c1 subscribes on Oct 10. Its calls on Sep 30 and Oct 2 precede it; October's list holds the Oct 2
    call only (1 event): the Sep 30 one is September's, even when the hourly rows handed in reach back."""
    rules = make_rules('- {meter: api_calls, model: per_unit, unit_amount: "1"}')
    events = [("a", "api_calls", dt.datetime(2026, 9, 30, 5, tzinfo=UTC), None, US),
              ("b", "api_calls", dt.datetime(2026, 10, 2, 5, tzinfo=UTC), None, US)]
    with warehouse.open_warehouse(":memory:") as con:
        insert(con, events)
        partials = build_aggregates(con, rules.meters, dt.date(2026, 9, 1), NOV1)
    oct10 = dt.date(2026, 10, 10)
    segments = segments_oct().with_columns(period_start=pl.lit(oct10), segment_start=pl.lit(oct10))
    starts = pl.DataFrame({"customer_id": ["c1"], "starts_on": [oct10]})
    out = unpriced_usage(partials, segments, rules, OCT, NOV1, starts)
    assert out.select("customer_id", "reason", "events").rows() == [("c1", "no_plan_in_force", 1)]


# --- rating writes: when a period closes, what an adjustment links to ----------------------------------------

def test_a_rating_at_the_very_instant_a_period_ends_closes_and_bills_it(tmp_path):
    """A period is billed once rated *at* or after its end. a's September (pro 2026-01), rated open on Sep 30
    with 2,000 calls, is rated again at exactly 2026-10-01 00:00 UTC: that is its closing rating (stamped,
    though no line changes), and the period is billed from then on, so 500 late calls are adjustments:
    by hand, 1,000 free then 0.002: 2,000 -> 2,500 calls is 2.00 -> 3.00, and the 100.00 minimum's true-up
    98.00 -> 97.00."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, ",pro,2026-01-01")
    sep = dt.date(2026, 9, 1)
    end = dt.datetime(2026, 10, 1, tzinfo=UTC)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        _late_calls(con, rules, "a", "2026-09-20", 2_000)

        def rate_at(at):
            return service.write_rated(con, sep, service.rate_month(con, rules, sep)[0], rules, at)

        assert rate_at(dt.datetime(2026, 9, 30, 2, 30, tzinfo=UTC)) > 0
        assert rate_at(end) > 0
        assert con.execute("SELECT DISTINCT rated_at FROM rated_usage").fetchall() == [(end,)]
        _late_calls(con, rules, "a", "2026-09-21", 500)
        rate_at(end + dt.timedelta(days=1))
        assert con.execute("SELECT charge, before_minor, after_minor FROM rating_adjustments ORDER BY charge"
                           ).fetchall() == [("api calls", 200, 300), ("minimum spend", 9800, 9700)]


def test_a_late_usage_link_names_only_files_with_events_inside_the_period(rated_db, tmp_path):
    """a's October (starter) is closed. Two files arrive after it was rated: one sets a's seats to 2 on
    Oct 20 (late: 2 x 8.00 = 16.00 more), the other holds a's seat count of Nov 1, the next period's first
    day. The adjustment links the first file only."""
    import json

    from metering.ingest import ingest_file

    db, rules = rated_db
    late, nov = tmp_path / "late.jsonl", tmp_path / "nov.jsonl"
    for path, eid, ts, seats in ((late, "s-oct", "2026-10-20T10:00:00Z", "2"), (nov, "s-nov", "2026-11-01T10:00:00Z", "3")):
        path.write_text(json.dumps({"event_id": eid, "customer_id": "a", "meter": "seats", "timestamp": ts,
                                    "value": seats}) + "\n")
    with warehouse.open_warehouse(db) as con:
        oct_file = ingest_file(con, late, now=NOW + dt.timedelta(hours=1))
        ingest_file(con, nov, now=NOW + dt.timedelta(hours=1))
        service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, 20))
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, NOW + dt.timedelta(hours=2))
        rows = con.execute("SELECT customer_id, charge, delta_minor, reason, CAST(link AS VARCHAR) "
                           "FROM rating_adjustments").fetchall()
    assert rows == [("a", "seats", 1600, "late_usage", json.dumps(
        {"files": [{"file_id": oct_file.file_id, "path": str(late), "sha256": oct_file.file_hash}]},
        separators=(",", ":")))]


def test_a_closed_period_of_a_plan_without_usage_charges_keeps_its_lines(tmp_path):
    """A plan of one flat fee (19.00) has no usage to change, so its closed October keeps the lines it
    was billed with: simulated as an older rating left them (19.07), re-rating writes nothing and records
    no adjustment (I19: never re-priced by the pricing code alone)."""
    rules = load_rules(write_rules(tmp_path / "rules", plan_yaml('- {name: fee, model: flat, amount: "19.00"}')))
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, ",t,2026-01-01")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, NOW)
        con.execute("UPDATE rated_usage SET amount_minor = 1907, amount = 19.07")
        assert service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules,
                                   NOW + dt.timedelta(days=1)) == 0
        assert con.execute("SELECT charge, amount_minor FROM rated_usage").fetchall() == [("fee", 1907)]
        assert con.execute("SELECT count(*) FROM rating_adjustments").fetchone() == (0,)


def test_a_billed_split_period_keeps_its_peak_storage_lines_priced_per_segment(tmp_path):
    """pro's Oct 15 version splits October. Billed before gauges were prorated, its storage (a max meter)
    was stored per segment: the Oct 1 segment's own peak, 100 GB (100 x 0.10 = 10.00), the Oct 15 one's,
    120 GB (volume 120 x 0.07 = 8.40), no proration mark. The period's usage is its peak, 120 GB, on both
    sides (the larger segment, not 100 + 120): re-rated with the same usage, it keeps those lines (I19)."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, ",pro,2026-01-01")
    closing = dt.datetime(2026, 11, 1, 3, tzinfo=UTC)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        for day in range(1, 32):
            con.execute("INSERT INTO usage_events VALUES (?, 'a', 'storage_gb', CAST(? AS TIMESTAMPTZ), CAST(? AS DATE), "
                        "?, '{}', '{}', 1, 1)", [f"g-{day}", f"2026-10-{day:02d} 12:00:00+00", f"2026-10-{day:02d}",
                                                 100 if day < 15 else 120])
            service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, day))
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, closing)
        # the lines as the per-segment pricing stored them: each segment's own peak, unprorated
        unmarked = r"""regexp_replace(CAST(tiers AS VARCHAR), ',\{"segment_days":[^}]*\}\]$', ']')"""
        con.execute(f"UPDATE rated_usage SET tiers = {unmarked} WHERE charge = 'storage'")
        con.execute("UPDATE rated_usage SET quantity = 100, amount = 10, amount_minor = 1000, amount_unrounded = 10 "
                    "WHERE charge = 'storage' AND segment_start = DATE '2026-10-01'")
        con.execute("UPDATE rated_usage SET amount = 8.40, amount_minor = 840, amount_unrounded = 8.40 "
                    "WHERE charge = 'storage' AND segment_start = DATE '2026-10-15'")
        assert con.execute("SELECT count(*) FROM rated_usage WHERE charge = 'storage' "
                           "AND CAST(tiers AS VARCHAR) LIKE '%period_days%'").fetchone() == (0,)
        before = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
        assert service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules,
                                   closing + dt.timedelta(days=4)) == 0
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before
        assert con.execute("SELECT count(*) FROM rating_adjustments").fetchone() == (0,)


# --- the previews check (`preview_mismatches`) ---------------------------------------------------------------

def test_a_yen_preview_equal_to_its_lines_is_no_mismatch(tmp_path):
    """Yen has no minor unit: a preview of 22,500 yen holds total 22500 and total_minor 22500, which the
    check must not scale by 100. By hand (pro_jpy, no usage): platform fee 7,500 + the 15,000 minimum's
    true-up 15,000 = 22,500."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        _listed(con, tmp_path / "customers.csv", rules, "j,J,j@j.test,jpy,,pro_jpy,2026-01-01,succeeds")
        rated, previews = service.rate_month(con, rules, OCT)
        service.write_rated(con, OCT, rated, rules, NOW)
        service.write_previews(con, OCT, previews, NOW)
        assert con.execute("SELECT currency, total_minor FROM invoice_previews").fetchall() == [("jpy", 22500)]
        assert service.preview_mismatches(con, OCT).height == 0


def test_a_preview_counting_a_line_too_many_is_a_mismatch(rated_db):
    """The check compares the number of lines too, not only the money: a's preview claiming one line
    more than its 6 stored (starter's six charges: api calls, tokens, storage, seats, active users, platform
    fee) with the same total is listed."""
    db, _ = rated_db
    with warehouse.open_warehouse(db) as con:
        con.execute("UPDATE invoice_previews SET lines = lines + 1 WHERE customer_id = 'a'")
        bad = service.preview_mismatches(con, OCT)
    assert bad.select("customer_id", "lines_minor", "total_minor", "n", "lines").rows() == [("a", 1900, 1900, 6, 7)]


# --- rate_month: what it reads ---------------------------------------------------------------------------------

def test_a_period_running_into_the_next_month_is_rated_with_that_months_usage(rated_db):
    """b (scale, anchor day 31) has the period Oct 31 - Nov 30, which October's partition rates. Its 1,000
    calls on Nov 10 are in it: by hand, volume tier 1 (up to 100,000) at 0.0015: 1,000 x 0.0015 = 1.50."""
    db, rules = rated_db
    with warehouse.open_warehouse(db) as con:
        _late_calls(con, rules, "b", "2026-11-10", 1_000)
        rated, _ = service.rate_month(con, rules, OCT)
    line = rated.filter((pl.col("customer_id") == "b") & (pl.col("charge") == "api calls"))
    assert line.select("period_start", "quantity", "amount_minor").rows() == [(dt.date(2026, 10, 31), Decimal(1000), 150)]


# --- what a rating records beside its lines: previews, rules_versions, rated time ----------------------------

def test_re_rating_unchanged_usage_of_many_customers_leaves_the_previews_as_they_were(tmp_path):
    """Twenty starter customers, no usage: each preview is the 19.00 fee. Computing the previews again
    from the same lines and writing them a day later writes nothing (their rated_at stays): the previews
    come out in one order whatever order grouping produced them in."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        _listed(con, tmp_path / "customers.csv", rules,
                *(f"c{i:02d},C,c@c.test,usd,,starter,2026-01-01,succeeds" for i in range(20)))
        rated, previews = service.rate_month(con, rules, OCT)
        service.write_rated(con, OCT, rated, rules, NOW)
        assert service.write_previews(con, OCT, previews, NOW) == 20
        for _ in range(3):
            again = service.invoice_previews(service.read_rated(con, OCT))
            assert service.write_previews(con, OCT, again, NOW + dt.timedelta(days=1)) == 0
        assert con.execute("SELECT DISTINCT rated_at, total_minor FROM invoice_previews").fetchall() == [(NOW, 1900)]


def test_a_plan_version_is_recorded_once_with_the_time_it_first_rated(rated_db):
    """rules_versions holds one row per plan version that rated lines, stamped with its first rating (NOW):
    re-rating a changed month a day later (b's open period gets 1,000 calls) adds no second row."""
    db, rules = rated_db
    with warehouse.open_warehouse(db) as con:
        _late_calls(con, rules, "b", "2026-11-10", 1_000)
        assert service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules,
                                   NOW + dt.timedelta(days=1)) > 0
        rows = con.execute("SELECT plan, plan_version, first_rated_at FROM rules_versions ORDER BY ALL").fetchall()
    assert rows == [("scale", "2026-01", NOW), ("starter", "2026-01", NOW)]


def test_rated_until_counts_only_days_already_past(rated_db):
    """rated_until names, per plan version, the day after the last past day its lines price. a's starter
    October (Oct 1..Nov 1) and b's scale period (Oct 31..Nov 30): on Oct 31, starter has priced Oct 1..30
    (until Oct 31) and scale nothing yet (its period starts that day); on Nov 2, starter through Oct 31
    (until Nov 1), scale Oct 31..Nov 1 (until Nov 2)."""
    db, _ = rated_db
    with warehouse.open_warehouse(db, read_only=True) as con:
        assert service.rated_until(con, dt.date(2026, 10, 31)) == {("starter", "2026-01"): dt.date(2026, 10, 31)}
        assert service.rated_until(con, dt.date(2026, 11, 2)) == {("starter", "2026-01"): dt.date(2026, 11, 1),
                                                                 ("scale", "2026-01"): dt.date(2026, 11, 2)}
