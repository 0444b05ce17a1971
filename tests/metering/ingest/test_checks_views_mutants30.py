"""Gaps a hand mutation audit (mutants30) found in the ingest invariants (`metering.ingest.checks`), the
peek at a raw file's dates (`metering.ingest.peek`), the currency digits (`metering.currency`) and the
analyst views (`metering/views/*.sql`): each test names the plausible bug it rules out.

Real DuckDB warehouses under tmp_path; rows are broken by SQL the way the checks' docstring says they
are broken in real life ("written or removed outside ingestion"). Expected values are worked out by
hand in each docstring. NOW is 2026-11-01T00:00:00Z (tests/metering/ingest/conftest.py).
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from metering import currency, warehouse
from metering.ingest import checks, ingest_file
from metering.ingest.peek import event_date_range
from tests.metering.ingest.conftest import NOW, event, write_lines

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def _ingest(con, path: Path, lines: list) -> None:
    ingest_file(con, write_lines(path, lines), now=NOW)


def _file_id(con, name: str) -> int:
    return con.execute("SELECT file_id FROM ingested_files WHERE path LIKE ?", [f"%{name}"]).fetchone()[0]


# --------------------------------------------------------------------------- checks.conservation


def test_a_manifest_that_read_more_rows_than_it_accounts_for_is_unbalanced(tmp_path, con):
    """Two clean events: rows_read 2 = 2 + 0 + 0. Raised to 3 outside ingestion, 3 <> 2 + 0 + 0: one
    unbalanced file (a check of `rows_read < accounted` only would miss a manifest that read MORE rows
    than it accounts for, i.e. rows lost on the way). Stored rows still equal rows_accepted: no mismatch."""
    _ingest(con, tmp_path / "a.jsonl", [event("a"), event("b")])
    con.execute("UPDATE ingested_files SET rows_read = rows_read + 1")
    outcome = checks.conservation(con)
    assert not outcome.passed
    assert (outcome.metadata["unbalanced_files"], outcome.metadata["files_with_count_mismatch"],
            outcome.metadata["rows_without_manifest"], outcome.metadata["rows_read"]) == (1, 0, 0, 3)


def test_a_file_whose_every_stored_row_is_gone_is_a_mismatch(tmp_path, con):
    """One file of one clean event and no quarantined row; its one event deleted: the file has no
    group among usage_events (nor among usage_quarantine), so only an outer join still sees it:
    stored 0 <> rows_accepted 1 -> files_with_count_mismatch = 1 (an inner join drops the file and the
    check passes with every row of the file lost)."""
    _ingest(con, tmp_path / "a.jsonl", [event("a")])
    con.execute("DELETE FROM usage_events")
    outcome = checks.conservation(con)
    assert not outcome.passed
    assert (outcome.metadata["unbalanced_files"], outcome.metadata["files_with_count_mismatch"],
            outcome.metadata["rows_without_manifest"]) == (0, 1, 0)


def test_clean_rows_whose_manifest_entry_is_gone_are_rows_without_manifest(tmp_path, con):
    """Two clean events; their file's manifest entry deleted outside ingestion: no file is unbalanced or
    mismatched (there is no file), but both stored rows name a file_id no manifest has: 2 rows without
    manifest, and the check fails on them alone."""
    _ingest(con, tmp_path / "a.jsonl", [event("a"), event("b")])
    con.execute("DELETE FROM ingested_files")
    outcome = checks.conservation(con)
    assert not outcome.passed
    assert (outcome.metadata["unbalanced_files"], outcome.metadata["files_with_count_mismatch"],
            outcome.metadata["rows_without_manifest"], outcome.metadata["files"]) == (0, 0, 2, 0)


def test_a_row_moved_to_a_file_of_only_quarantined_rows_is_a_mismatch_of_both_not_an_orphan(tmp_path, con):
    """a.jsonl: one clean event (value 5). b.jsonl: one negative value (quarantined, rows_accepted 0).
    a's row re-pointed at b's file_id: a stores 0 of its 1 clean row, b stores 1 where it accepted 0:
    two mismatched files; the row's file_id is b's, which has a manifest entry: 0 rows without
    manifest (a manifest with no accepted row still names its file)."""
    _ingest(con, tmp_path / "a.jsonl", [event("a")])
    _ingest(con, tmp_path / "b.jsonl", [event("b", value=-1)])
    con.execute("UPDATE usage_events SET file_id = ?", [_file_id(con, "b.jsonl")])
    outcome = checks.conservation(con)
    assert not outcome.passed
    assert (outcome.metadata["unbalanced_files"], outcome.metadata["files_with_count_mismatch"],
            outcome.metadata["rows_without_manifest"]) == (0, 2, 0)


def test_a_sound_files_conservation_metadata(tmp_path, con):
    """One file: e1 (5), e2 (5), e1 again (an exact duplicate: dropped, 5), a broken JSON line
    (bad_json, no value). rows: read 4 = accepted 2 + quarantined 1 + dropped 1; values: read
    5 + 5 + 5 = 15 = accepted 10 + quarantined 0 + dropped 5. Stored: 2 rows of 5 + 5 = 10 (a sum of
    DISTINCT values, 5, would call two equal values one and fail the file). Every file has value sums."""
    _ingest(con, tmp_path / "a.jsonl", [event("e1"), event("e2"), event("e1"), '{"event_id": "broken'])
    outcome = checks.conservation(con)
    assert outcome.passed
    assert outcome.metadata == {
        "files": 1, "rows_read": 4, "rows_accepted": 2, "rows_quarantined": 1, "duplicates_dropped": 1,
        "value_read": "15.000000000000", "files_without_value_sums": 0,
        "unbalanced_files": 0, "files_with_count_mismatch": 0, "rows_without_manifest": 0}


# --------------------------------------------------------------------------- checks.unique_event_ids


def test_the_same_event_id_stored_under_two_files_is_one_duplicate(tmp_path, con):
    """a.jsonl holds `a`, b.jsonl holds `b`; a copy of `a` inserted under b's file_id: 3 rows, 2 distinct
    ids -> exactly 1 duplicate, and one is enough to fail (distinct over (event_id, file_id) would see 3
    distinct pairs and no duplicate; `dupes <= 1` would pass it)."""
    _ingest(con, tmp_path / "a.jsonl", [event("a")])
    _ingest(con, tmp_path / "b.jsonl", [event("b")])
    con.execute("INSERT INTO usage_events SELECT * REPLACE (? AS file_id) FROM usage_events WHERE event_id = 'a'",
                [_file_id(con, "b.jsonl")])
    outcome = checks.unique_event_ids(con)
    assert (outcome.passed, outcome.metadata) == (False, {"duplicate_event_ids": 1})


# --------------------------------------------------------------------------- checks.rows_by_date


def test_rows_by_date_counts_each_asked_date_in_the_order_asked_zero_where_none(tmp_path, con):
    """Events: two on 2026-10-05, one on 2026-10-06 (UTC dates; 23:30-01:00 is 10-06 00:30 UTC). Asked
    for 10-06, 10-04, 10-05: {10-06: 1, 10-04: 0, 10-05: 2}, keys in the order asked (10-04, with no
    events, is 0, not missing or None: the asset reports it as a partition's row count)."""
    _ingest(con, tmp_path / "a.jsonl", [event("a"), event("b", timestamp="2026-10-05T00:00:00Z"),
                                        event("c", timestamp="2026-10-05T23:30:00-01:00")])
    got = checks.rows_by_date(con, ["2026-10-06", "2026-10-04", "2026-10-05"])
    assert list(got.items()) == [("2026-10-06", 1), ("2026-10-04", 0), ("2026-10-05", 2)]
    assert checks.rows_by_date(con, []) == {}


# --------------------------------------------------------------------------- dedupe: the payload


def test_the_same_event_id_with_other_properties_is_a_conflict(tmp_path, con):
    """Properties are part of the payload (contract.PAYLOAD_FIELDS): e1 with model small, then e1 with
    model large, same customer, meter, instant and value: the first stays clean, the second is
    conflicting_duplicate (not an exact duplicate dropped: its model differs). rows: 2 read, 1
    accepted, 1 quarantined, 0 dropped."""
    r = ingest_file(con, write_lines(tmp_path / "a.jsonl", [event("e1", properties={"model": "small"}),
                                                            event("e1", properties={"model": "large"})]), now=NOW)
    assert (r.rows_read, r.rows_accepted, r.rows_quarantined, r.duplicates_dropped) == (2, 1, 1, 0)
    assert con.execute("SELECT reason, source_line FROM usage_quarantine").fetchall() == [("conflicting_duplicate", 2)]
    assert con.execute("SELECT properties::VARCHAR FROM usage_events").fetchall() == [('{"model":"small"}',)]


# --------------------------------------------------------------------------- checks.require_sound_events


def test_sound_events_return_both_outcomes(tmp_path, con):
    """A sound warehouse: both checks' outcomes come back, named, both passed."""
    _ingest(con, tmp_path / "a.jsonl", [event("a")])
    outcomes = checks.require_sound_events(con)
    assert {name: o.passed for name, o in outcomes.items()} == {"conservation": True, "unique_event_id": True}


def test_unsound_events_name_only_the_failed_invariant_and_its_nonzero_findings(tmp_path, con):
    """One of two clean events deleted: conservation fails (files_with_count_mismatch = 1, nothing else),
    event_id uniqueness holds. The error names conservation alone (not both invariants), carries only
    its outcome in `failed`, and lists only the non-zero finding (no `unbalanced_files=0`)."""
    _ingest(con, tmp_path / "a.jsonl", [event("a"), event("b")])
    con.execute("DELETE FROM usage_events WHERE event_id = 'a'")
    with pytest.raises(checks.UnsoundEventsError) as caught:
        checks.require_sound_events(con)
    assert list(caught.value.failed) == ["conservation"]
    message = str(caught.value)
    assert message.startswith("usage_events fail the ingest invariant(s) conservation, so nothing is aggregated")
    assert "): files_with_count_mismatch=1. Rows were written or removed outside ingestion" in message
    assert "=0" not in message


def test_unsound_events_from_a_changed_value_say_the_values_do_not_add_up(tmp_path, con):
    """A clean event's value changed outside ingestion (5 -> 6) keeps every row count right; only
    the values break conservation (stored 6 + 5 = 11 <> value_accepted 10). The error must say so: until
    the thirtieth session the text described conservation by rows alone ("rows read = accepted + ...") and reports
    `files_with_count_mismatch=1`, so an operator who compares the row counts, as it tells them to,
    finds them equal and nothing to fix."""
    _ingest(con, tmp_path / "a.jsonl", [event("a"), event("b")])
    con.execute("UPDATE usage_events SET value = value + 1 WHERE event_id = 'a'")
    with pytest.raises(checks.UnsoundEventsError) as caught:
        checks.require_sound_events(con)
    what_broke = str(caught.value).split(". Rows were written")[0]
    assert "value" in what_broke


# --------------------------------------------------------------------------- peek.event_date_range


def test_peek_reads_utc_dates_whatever_the_hosts_zone(tmp_path):
    """Under TZ=Asia/Tokyo (UTC+9, DuckDB's session zone by default), 2026-10-05T20:00:00Z is
    2026-10-06 05:00 local: the UTC date is still 10-05 (a session left in the host's zone casts the
    instant to the local date, and the sensor would pick the next day's partition). A process of its
    own: DuckDB takes the zone from the environment when the process starts."""
    path = write_lines(tmp_path / "f.jsonl", [event("a", timestamp="2026-10-05T20:00:00Z")])
    code = ("import sys; from pathlib import Path; from metering.ingest.peek import event_date_range; "
            "print(event_date_range(Path(sys.argv[1])))")
    env = {**os.environ, "TZ": "Asia/Tokyo", "PYTHONPATH": str(PROJECT_ROOT)}
    out = subprocess.run([sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    assert out == "(datetime.date(2026, 10, 5), datetime.date(2026, 10, 5))"


def test_peek_skips_a_csv_line_with_too_many_fields(tmp_path):
    """A CSV data line with a fifth field is a broken row (bad_csv_row at ingestion): the peek skips it
    and gives the other line's date, 10-04 (reading with errors not ignored raises instead)."""
    path = tmp_path / "f.csv"
    path.write_text("event_id,customer_id,meter,timestamp\n"
                    "a,c,tokens,2026-10-04T01:00:00Z\n"
                    "b,c,tokens,2026-10-09T00:00:00Z,extra\n")
    assert event_date_range(path) == (date(2026, 10, 4), date(2026, 10, 4))


def test_peek_leaves_out_timestamps_before_2000(tmp_path):
    """1999-12-31T23:59:59Z is bad_timestamp at ingestion (before 2000-01-01): it touches no partition;
    the range is the other event's, 2026-10-02 (a lower bound at the epoch would give 1999-12-31)."""
    path = write_lines(tmp_path / "f.jsonl", [event("a", timestamp="1999-12-31T23:59:59Z"),
                                              event("b", timestamp="2026-10-02T08:00:00Z")])
    assert event_date_range(path) == (date(2026, 10, 2), date(2026, 10, 2))


def test_peek_of_a_parquet_file_without_a_timestamp_column_is_none(tmp_path):
    """A Parquet file with no `timestamp` column carries no event date: None (every row is
    missing_field at ingestion), not an error from selecting a column that is not there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"event_id": ["a"], "ts": ["2026-10-03T00:00:00Z"]}), tmp_path / "f.parquet")
    assert event_date_range(tmp_path / "f.parquet") is None


def test_peek_leaves_out_timestamps_far_ahead_of_the_clock(tmp_path):
    """2099-01-01 is future_timestamp at ingestion (more than an hour ahead of any clock this runs
    under): it touches no partition; the range is the other event's, 2026-10-02 (without the upper
    bound the sensor would aim at the last partition for one bad row)."""
    path = write_lines(tmp_path / "f.jsonl", [event("a", timestamp="2099-01-01T00:00:00Z"),
                                              event("b", timestamp="2026-10-02T08:00:00Z")])
    assert event_date_range(path) == (date(2026, 10, 2), date(2026, 10, 2))


def test_peek_of_a_csv_without_a_timestamp_column_is_none(tmp_path):
    """A CSV whose header has no `timestamp` column carries no event date: None, as for a Parquet file
    without the column (peek returns None there), and so does an empty CSV. Until the thirtieth session
    this raised DuckDB's BinderException ("Referenced column timestamp not found"), which the sensor
    logged as a warning."""
    path = tmp_path / "f.csv"
    path.write_text("event_id,customer_id,meter,ts\na,c,tokens,2026-10-04T01:00:00Z\n")
    assert event_date_range(path) is None
    path.write_text("")
    assert event_date_range(path) is None


# --------------------------------------------------------------------------- currency.minor_digits

# Stripe's documented lists (docs: currencies#zero-decimal, currencies#three-decimal), by hand.
_ZERO = ["BIF", "CLP", "DJF", "GNF", "JPY", "KMF", "KRW", "MGA", "PYG", "RWF", "UGX", "VND", "VUV", "XAF", "XOF", "XPF"]
_THREE = ["BHD", "JOD", "KWD", "OMR", "TND"]


@pytest.mark.parametrize("code", _ZERO + [c.lower() for c in _ZERO])
def test_every_zero_decimal_currency_has_no_minor_digits(code):
    assert currency.minor_digits(code) == 0


@pytest.mark.parametrize("code", _THREE + [c.lower() for c in _THREE])
def test_every_three_decimal_currency_has_three_minor_digits(code):
    assert currency.minor_digits(code) == 3


def test_the_lists_are_exactly_stripes():
    """No currency beyond Stripe's lists has other than two digits (sixteen zero-, five three-decimal)."""
    assert currency.DIGITS == {c.lower(): 0 for c in _ZERO} | {c.lower(): 3 for c in _THREE}


# --------------------------------------------------------------------------- analytics views

UTC = dt.UTC
AT = dt.datetime(2026, 11, 2, 20, tzinfo=UTC)          # 2026-11-03 05:00 in Tokyo
AT_NAIVE = dt.datetime(2026, 11, 2, 20)                 # what a UTC view time reads, in any session zone


def _read(snapshot: Path, sql: str, zone: str = "Asia/Tokyo") -> list[tuple]:
    """The snapshot read as an analyst in Tokyo (UTC+9) would: a view that casts a TIMESTAMPTZ in the
    session's zone instead of converting to UTC reads 9 hours later."""
    c = duckdb.connect(str(snapshot), read_only=True)
    try:
        c.execute(f"SET TimeZone = '{zone}'")
        return c.execute(sql).fetchall()
    finally:
        c.close()


def _hour(con, customer, meter, hour, qty, count, last_time, last_id, distinct=None) -> None:
    con.execute("""INSERT INTO usage_aggregates (customer_id, meter, dimensions, hour, event_date, quantity, event_count,
                   last_event_time, last_event_id, distinct_values) VALUES (?, ?, '{}', ?, ?, ?, ?, ?, ?, ?)""",
                [customer, meter, hour, hour.date(), Decimal(qty), count, last_time, last_id, distinct])


def test_daily_usage_per_meter_aggregation_as_first_recorded(isolated_env):
    """c1 on 2026-10-07 (UTC hours):
    - seats, recorded `last` (Oct 1) then `max` (Oct 20): the first recording is the meter's (arg_min):
      hours 5 (1 event, last 10:15) and 3 (2 events, last 14:30) -> events 3, sum 8, max 5,
      quantity_last 3 (the 14:30 hour's), distinct NULL.
    - active_users (unique_count): hours {u1, u2} (2 events) and {u2, u3} (3 events) -> events 5,
      distinct_values 3 (u1, u2, u3; not 4 with u2 twice), quantity_last NULL.
    - storage_gb (max) whose hour carries a distinct value: distinct_values NULL (for unique_count only).
    - api_calls, never rated: still a row (events 4 + 6 = 10, sum 10, max 6), quantity_last NULL (no
      aggregation known), distinct NULL (its hours carry none)."""
    t = lambda h, m=0: dt.datetime(2026, 10, 7, h, m, tzinfo=UTC)  # noqa: E731
    with warehouse.open_warehouse() as con:
        con.execute("""INSERT INTO rated_meters VALUES ('seats', 'h1', '{"aggregation": "last"}', ?),
                       ('seats', 'h2', '{"aggregation": "max"}', ?), ('active_users', 'h3', '{"aggregation": "unique_count"}', ?),
                       ('storage_gb', 'h4', '{"aggregation": "max"}', ?)""",
                    [dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2026, 10, 20, tzinfo=UTC),
                     dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2026, 10, 1, tzinfo=UTC)])
        _hour(con, "c1", "seats", t(10), 5, 1, t(10, 15), "e1")
        _hour(con, "c1", "seats", t(14), 3, 2, t(14, 30), "e2")
        _hour(con, "c1", "active_users", t(10), 2, 2, t(10, 5), "e3", ["u1", "u2"])
        _hour(con, "c1", "active_users", t(11), 2, 3, t(11, 5), "e4", ["u2", "u3"])
        _hour(con, "c1", "storage_gb", t(10), 30, 1, t(10, 5), "e5", ["x"])
        _hour(con, "c1", "api_calls", t(10), 4, 4, t(10, 50), "e6")
        _hour(con, "c1", "api_calls", t(11), 6, 6, t(11, 50), "e7")
        snapshot = warehouse.publish(con=con)
    assert _read(snapshot, """SELECT meter, event_date, events, quantity_sum, quantity_max, distinct_values, quantity_last
                              FROM analytics.daily_usage ORDER BY meter""") == [
        ("active_users", date(2026, 10, 7), 5, Decimal(4), Decimal(2), 3, None),
        ("api_calls", date(2026, 10, 7), 10, Decimal(10), Decimal(6), None, None),
        ("seats", date(2026, 10, 7), 3, Decimal(8), Decimal(5), None, Decimal(3)),
        ("storage_gb", date(2026, 10, 7), 1, Decimal(30), Decimal(30), None, None)]


def test_dunning_queue_breaks_equal_times_by_invoice_id_and_gives_utc_times(isolated_env):
    """in_b and in_a share the next step time, in_c is later: in_a, in_b, in_c (ties by invoice_id
    ascending). Stripe's next attempt 2026-11-02T20:00Z reads 2026-11-02 20:00 in a Tokyo session too."""
    step = dt.datetime(2026, 11, 5, tzinfo=UTC)
    with warehouse.open_warehouse() as con:
        for invoice, step_at in (("in_b", step), ("in_c", step + dt.timedelta(days=1)), ("in_a", step)):
            con.execute("""INSERT INTO dunning_state (invoice_id, customer_id, policy, currency, amount_remaining, state,
                           next_payment_attempt, next_step_at, first_failed_at, reason, evaluated_at, policy_hash)
                           VALUES (?, 'cus_q', 'default', 'usd', 100, 'in_dunning', ?, ?, ?, 'r', ?, 'h')""",
                        [invoice, AT, step_at, AT, AT])
        snapshot = warehouse.publish(con=con)
    assert _read(snapshot, "SELECT invoice_id, next_payment_attempt FROM analytics.dunning_queue") == [
        ("in_a", AT_NAIVE), ("in_b", AT_NAIVE), ("in_c", AT_NAIVE)]


def test_invoices_vs_rated_keeps_a_period_only_stripe_invoiced(isolated_env):
    """cus_s has no preview of ours for October, only a reconciliation row (extra_in_stripe, 700 EUR
    cents): its row still names the customer, the period [10-01, 11-01) and the currency from the
    reconciliation, with no total of ours (NULL); reconciled_at reads in UTC in a Tokyo session."""
    with warehouse.open_warehouse() as con:
        con.execute("""INSERT INTO invoice_reconciliation (billing_month, customer_id, period_start, period_end, currency,
                       stripe_total_minor, amount_diff_minor, tolerance_minor, status, reason, reconciled_at)
                       VALUES (DATE '2026-10-01', 'cus_s', DATE '2026-10-01', DATE '2026-11-01', 'eur', 700, 700, 1,
                               'extra_in_stripe', 'r', ?)""", [AT])
        snapshot = warehouse.publish(con=con)
    assert _read(snapshot, """SELECT customer_id, period_start, period_end, currency, our_total_minor, stripe_total_minor,
                              reconciliation_status, reconciled_at FROM analytics.invoices_vs_rated""") == [
        ("cus_s", date(2026, 10, 1), date(2026, 11, 1), "eur", None, 700, "extra_in_stripe", AT_NAIVE)]


def test_rated_lines_add_up_segments_and_take_the_periods_end(isolated_env):
    """cus_a's October [10-01, 11-01) cut on 10-15 by a plan change into two segments (starter 2026-09 / h1,
    pro 2026-10 / h2); every line names the plan in force at the period's end, pro 2026-10 / h2:
    - 'api calls' (a usage charge: segments add up): 100 + 200 = 300 units, 150 + 250 = 400 minor,
      1.5 + 2.5 = 4.0 unrounded; model and meter those of the later segment (volume, api_calls; the
      earlier said graduated, api_calls_old); segments listed in order (10-01 then 10-15); rated_at
      the later rating, 2026-11-02 20:00 UTC (the first was 19:00).
    - 'seats' (a gauge prorated over the period: tiers carry period_days): each segment priced the
      period's 12 seats: quantity 12 once, not 24; amounts still add: 300 + 200 = 500."""
    rows = [  # segment start/end, version, hash, charge, model, meter, quantity, amount_minor, unrounded, tiers, rated_at
        (date(2026, 10, 1), date(2026, 10, 15), "2026-09", "h1", "api calls", "graduated", "api_calls_old", 100, 150,
         "1.5", '[{"up_to": null}]', AT - dt.timedelta(hours=1)),
        (date(2026, 10, 15), date(2026, 11, 1), "2026-10", "h2", "api calls", "volume", "api_calls", 200, 250,
         "2.5", '[{"up_to": null}]', AT),
        (date(2026, 10, 1), date(2026, 10, 15), "2026-09", "h1", "seats", "per_unit", "seats", 12, 300,
         "3", '[{"period_days": 31}]', AT),
        (date(2026, 10, 15), date(2026, 11, 1), "2026-10", "h2", "seats", "per_unit", "seats", 12, 200,
         "2", '[{"period_days": 31}]', AT),
    ]
    with warehouse.open_warehouse() as con:
        for i, (s, e, version, rules_hash, charge, model, meter, qty, minor, unrounded, tiers, rated_at) in enumerate(rows):
            con.execute("""INSERT INTO rated_usage (customer_id, period_start, period_end, segment_start, segment_end, plan,
                           plan_version, rules_hash, charge_id, charge, model, meter, quantity, billable_quantity,
                           amount_unrounded, amount, amount_minor, currency, rounding, tiers, rated_at)
                           VALUES ('cus_a', DATE '2026-10-01', DATE '2026-11-01', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,
                                   ?, ?, 'usd', 'half_up', ?, ?)""",
                        [s, e, "starter" if version == "2026-09" else "pro", version, rules_hash, i, charge, model, meter, Decimal(qty), Decimal(qty), Decimal(unrounded),
                         Decimal(minor) / 100, minor, tiers, rated_at])
        snapshot = warehouse.publish(con=con)
    got = _read(snapshot, """SELECT charge, plan, plan_version, rules_hash, model, meter, quantity, amount_minor, amount_unrounded,
                             [s.segment_start FOR s IN segments], rated_at FROM analytics.rated_lines ORDER BY charge""")
    assert got == [
        ("api calls", "pro", "2026-10", "h2", "volume", "api_calls", Decimal(300), 400, Decimal(4),
         [date(2026, 10, 1), date(2026, 10, 15)], AT_NAIVE),
        ("seats", "pro", "2026-10", "h2", "per_unit", "seats", Decimal(12), 500, Decimal(5),
         [date(2026, 10, 1), date(2026, 10, 15)], AT_NAIVE)]


def test_adjustment_and_reconciliation_times_are_utc_in_any_session(isolated_env):
    """adjusted_at and both reconciliations' reconciled_at, 2026-11-02T20:00Z, read 2026-11-02 20:00 in a
    Tokyo session (a plain cast would read 2026-11-03 05:00)."""
    with warehouse.open_warehouse() as con:
        con.execute("""INSERT INTO rating_adjustments VALUES ('cus_a', DATE '2026-09-01', DATE '2026-10-01', 'usd', 'api calls',
                       100, 150, 50, 'late_usage', '{"files": []}', ?)""", [AT])
        con.execute("""INSERT INTO usage_reconciliation (billing_month, customer_id, meter, period_start, period_end,
                       tolerance_minor, status, reason, explained, reconciled_at)
                       VALUES (DATE '2026-09-01', 'cus_a', 'api_calls', DATE '2026-09-01', DATE '2026-10-01', 1, 'pending',
                               'r', true, ?)""", [AT])
        con.execute("""INSERT INTO invoice_reconciliation (billing_month, customer_id, period_start, period_end,
                       tolerance_minor, status, reason, reconciled_at)
                       VALUES (DATE '2026-09-01', 'cus_a', DATE '2026-09-01', DATE '2026-10-01', 1, 'pending', 'r', ?)""",
                    [AT])
        snapshot = warehouse.publish(con=con)
    assert _read(snapshot, """SELECT (SELECT adjusted_at FROM analytics.rating_adjustments),
                                     (SELECT reconciled_at FROM analytics.reconciliation),
                                     (SELECT reconciled_at FROM analytics.invoice_reconciliation)""") == [
        (AT_NAIVE, AT_NAIVE, AT_NAIVE)]


def test_stripe_invoice_lines_take_the_latest_pull_and_the_webhooks_for_the_rest(isolated_env):
    """- in_x pulled 11-01 (open, line L1) and 11-02 (paid, lines L1 and L2): the latest pull's two lines,
      status paid; its webhook state says open (older, ranked lower): still paid.
    - in_y pulled once for two billing months at the same instant: October's pull saw Y1, November's Y1
      and Y2: the later month's two lines.
    - in_z pulled paid, the webhook state says void: paid stays (void < paid in the rank); in_v the
      other way round, pulled void and paid since by the webhook state: paid.
    - in_w known from webhooks only: its line's meter from the event name (metering_api_calls ->
      api_calls), status paid from its header, source webhook.
    - in_u: a webhook line whose invoice header never landed: listed, status NULL.
    Periods: 2026-10-01T00:00Z .. 2026-11-01T00:00Z read as those UTC times in a Tokyo session."""
    ps, pe = dt.datetime(2026, 10, 1, tzinfo=UTC), dt.datetime(2026, 11, 1, tzinfo=UTC)
    p1, p2 = dt.datetime(2026, 11, 1, 3, tzinfo=UTC), dt.datetime(2026, 11, 2, 3, tzinfo=UTC)
    pulls = [  # invoice, billing month, pulled_at, status, lines
        ("in_x", date(2026, 10, 1), p1, "open", ["L1"]),
        ("in_x", date(2026, 11, 1), p2, "paid", ["L1", "L2"]),
        ("in_y", date(2026, 10, 1), p2, "open", ["Y1"]),
        ("in_y", date(2026, 11, 1), p2, "open", ["Y1", "Y2"]),
        ("in_z", date(2026, 10, 1), p2, "paid", ["Z1"]),
        ("in_v", date(2026, 10, 1), p2, "void", ["V1"]),
    ]
    with warehouse.open_warehouse() as con:
        for invoice, month, pulled, status, lines in pulls:
            con.execute("INSERT INTO stripe_invoices_api (billing_month, invoice_id, customer_id, status, currency, pulled_at) "
                        "VALUES (?, ?, 'cus_a', ?, 'usd', ?)", [month, invoice, status, pulled])
            for line in lines:
                con.execute("""INSERT INTO stripe_invoice_lines_api (billing_month, invoice_id, line_id, customer_id, meter,
                               amount, currency, period_start, period_end, pulled_at)
                               VALUES (?, ?, ?, 'cus_a', 'api_calls', 100, 'usd', ?, ?, ?)""",
                            [month, invoice, line, ps, pe, pulled])
        for invoice, status in (("in_x", "open"), ("in_z", "void"), ("in_v", "paid"), ("in_w", "paid")):
            con.execute("INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency) VALUES (?, 'cus_a', ?, 'usd')",
                        [invoice, status])
        for invoice, line in (("in_w", "W1"), ("in_u", "U1")):
            con.execute("""INSERT INTO stripe_invoice_lines (invoice_id, line_id, event_name, amount, currency,
                           period_start, period_end, source) VALUES (?, ?, 'metering_api_calls', 100, 'usd', ?, ?, 'webhook')""",
                        [invoice, line, ps, pe])
        snapshot = warehouse.publish(con=con)
    naive_ps, naive_pe = dt.datetime(2026, 10, 1), dt.datetime(2026, 11, 1)
    assert _read(snapshot, """SELECT invoice_id, line_id, meter, invoice_status, source, period_start, period_end
                              FROM analytics.stripe_invoice_lines ORDER BY ALL""") == [
        ("in_u", "U1", "api_calls", None, "webhook", naive_ps, naive_pe),
        ("in_v", "V1", "api_calls", "paid", "api", naive_ps, naive_pe),
        ("in_w", "W1", "api_calls", "paid", "webhook", naive_ps, naive_pe),
        ("in_x", "L1", "api_calls", "paid", "api", naive_ps, naive_pe),
        ("in_x", "L2", "api_calls", "paid", "api", naive_ps, naive_pe),
        ("in_y", "Y1", "api_calls", "open", "api", naive_ps, naive_pe),
        ("in_y", "Y2", "api_calls", "open", "api", naive_ps, naive_pe),
        ("in_z", "Z1", "api_calls", "paid", "api", naive_ps, naive_pe)]
