"""Edges a hand mutation audit of ingestion found untested: each test names the plausible bug it rules out.

Expected values are derived by hand from the contract in docs/ingest.md (NOW is 2026-11-01T00:00:00Z).
"""

from __future__ import annotations

from decimal import Decimal

from metering.ingest import checks, ingest_file
from tests.metering.ingest.conftest import NOW, event, write_lines
from tests.metering.ingest.test_ingest_guards import _counts

_CONTROL = "event_id, customer_id, meter or a property contains a control character"


def _clean(con) -> dict[str, tuple[int, str]]:
    return {e: (us, d) for e, us, d in con.execute(
        "SELECT event_id, epoch_us(event_time), event_date::VARCHAR FROM usage_events").fetchall()}


def _quarantined(con) -> dict[str, str]:
    return dict(con.execute("SELECT event_id, reason FROM usage_quarantine").fetchall())


def test_timestamp_limits_are_inclusive_at_the_one_hour_tolerance_and_at_2000(tmp_path, con):
    """Exactly 1 hour after ingestion is not in the future and exactly 2000-01-01T00:00:00Z is not before
    2000 (`t >= horizon` or `t <= 2000-01-01` would refuse them); one microsecond or millisecond past is."""
    lines = [event("f_edge", timestamp="2026-11-01T01:00:00Z"),
             event("f_past", timestamp="2026-11-01T01:00:00.000001Z"),
             event("m_edge", timestamp="2000-01-01T00:00:00Z"),
             event("m_past", timestamp="1999-12-31T23:59:59.999999Z"),
             event("fe_edge", timestamp=1793494800000),      # 2026-11-01T01:00:00Z in epoch milliseconds
             event("fe_past", timestamp=1793494800001),
             event("me_edge", timestamp=946684800000),       # 2000-01-01T00:00:00Z
             event("me_past", timestamp=946684799999)]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _counts(r) == (8, 4, 4, 0, 0)
    assert _clean(con) == {"f_edge": (1793494800000000, "2026-11-01"), "fe_edge": (1793494800000000, "2026-11-01"),
                           "m_edge": (946684800000000, "2000-01-01"), "me_edge": (946684800000000, "2000-01-01")}
    assert _quarantined(con) == {"f_past": "future_timestamp", "fe_past": "future_timestamp",
                                 "m_past": "bad_timestamp", "me_past": "bad_timestamp"}


def test_timestamp_forms_at_the_edges_of_the_contract(tmp_path, con):
    """A space for the `T` is RFC 3339 (a regex of `[Tt]` would refuse it); offsets run to +-23:59, not
    +-24:00 (DuckDB's cast takes +24:00); epoch milliseconds have up to 15 digits, so a 14- or 15-digit one
    is a (far) future instant, not an unreadable timestamp, while 16 digits are refused."""
    lines = [event("space", timestamp="2026-10-05 12:00:00Z"),
             event("plus2359", timestamp="2026-10-05T12:00:00+23:59"),
             event("plus2400", timestamp="2026-10-05T12:00:00+24:00"),
             event("minus2400", timestamp="2026-10-05T12:00:00-24:00"),
             event("ms14", timestamp=10000000000000),          # 2286-11-20
             event("ms15", timestamp="999999999999999"),       # year 33658
             event("ms16", timestamp=1000000000000000)]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _counts(r) == (7, 2, 5, 0, 0)
    # 12:00 at +23:59 is 12:01 UTC the day before: 1791201600 - 86340 seconds
    assert _clean(con) == {"space": (1791201600000000, "2026-10-05"), "plus2359": (1791115260000000, "2026-10-04")}
    assert _quarantined(con) == {"plus2400": "bad_timestamp", "minus2400": "bad_timestamp",
                                 "ms14": "future_timestamp", "ms15": "future_timestamp", "ms16": "bad_timestamp"}


def test_timestamps_a_fraction_of_a_millisecond_apart_are_different_payloads(tmp_path, con):
    """The payload compares instants to the microsecond (a hash over epoch milliseconds would call the second
    version an exact duplicate and drop it unseen); the same microsecond at +02:00 is an exact duplicate."""
    lines = [event("a", timestamp="2026-10-05T12:00:00.000100Z"),
             event("a", timestamp="2026-10-05T12:00:00.000600Z"),
             event("a", timestamp="2026-10-05T14:00:00.0001+02:00")]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _counts(r) == (3, 1, 1, 1, 1)
    assert _clean(con) == {"a": (1791201600000100, "2026-10-05")}
    assert con.execute("SELECT source_line, reason FROM usage_quarantine").fetchall() == [
        (2, "conflicting_duplicate")]


def test_control_characters_are_found_in_a_meter_a_property_key_and_as_nul(tmp_path, con):
    """control_characters comes before unknown_meter, also for the meter itself (a meter holding one is no
    defined meter, but the control character is its first fault); a property's key is checked as well as its
    value; NUL (U+0000) is one."""
    lines = [event("c1", meter="tok\u0001ens"),
             event("c2\u0001", meter="gpu_hours"),
             event("c3", properties={"mo\u0001del": "small"}),
             event("c4", customer_id="c\u0000")]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _counts(r) == (4, 0, 4, 0, 0)
    assert con.execute("SELECT source_line, reason, detail FROM usage_quarantine ORDER BY 1").fetchall() == [
        (1, "control_characters", _CONTROL), (2, "control_characters", _CONTROL),
        (3, "control_characters", _CONTROL), (4, "control_characters", _CONTROL)]


def test_ids_of_only_spaces_are_missing(tmp_path, con):
    """A required text field holding only spaces is missing, as an empty one is (not stored as an id)."""
    lines = [event("s1", customer_id="   "), event("  "), event("s3", meter=" ")]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _counts(r) == (3, 0, 3, 0, 0)
    assert con.execute("SELECT source_line, reason, detail FROM usage_quarantine ORDER BY 1").fetchall() == [
        (1, "missing_field", "customer_id is missing or empty"), (2, "missing_field", "event_id is missing or empty"),
        (3, "missing_field", "meter is missing or empty")]


def test_nan_in_an_unknown_field_is_bad_json_before_a_missing_field(tmp_path, con):
    """The NaN test of fields kept in extra runs before every other check (the line is not JSON), so a
    line that also lacks its customer is bad_json, not missing_field."""
    line = '{"event_id":"n1","meter":"tokens","timestamp":"2026-10-05T12:00:00Z","value":1,"note":NaN}'
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", [event("good"), line]), now=NOW)
    assert _counts(r) == (2, 1, 1, 0, 0)
    assert con.execute("SELECT event_id, reason, detail, value FROM usage_quarantine").fetchall() == [
        ("n1", "bad_json", "a JSON value may not be NaN or Infinity (in a field kept in extra)", None)]


def test_a_quarantined_row_keeps_a_quantity_of_exactly_1e15(tmp_path, con):
    """A quarantined row keeps its quantity when it is one exactly, within +-1e15 inclusive: 1e15 itself is
    in the value sums (`< 1e15` would leave it out of value_read and value_quarantined alike)."""
    lines = [event("good", value="12.5"), event("u", meter="gpu_hours", value="1000000000000000")]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _counts(r) == (2, 1, 1, 0, 0)
    assert con.execute("SELECT event_id, reason, value::VARCHAR FROM usage_quarantine").fetchall() == [
        ("u", "unknown_meter", "1000000000000000.000000000000")]
    assert (r.value_read, r.value_accepted, r.value_quarantined, r.value_dropped) == (
        Decimal("1000000000000012.5"), Decimal("12.5"), Decimal("1000000000000000"), 0)


def _failed_conservation(con) -> dict:
    """The conservation check, which must fail: its counts of unbalanced and mismatched files."""
    outcome = checks.conservation(con)
    assert not outcome.passed
    return {k: outcome.metadata[k] for k in ("unbalanced_files", "files_with_count_mismatch", "rows_without_manifest")}


def test_the_conservation_check_sees_a_lost_quarantine_row_without_a_quantity(tmp_path, con):
    """A quarantined row with no value (bad_json) deleted outside ingestion changes no value sum: only the
    per-file quarantine count catches it."""
    ingest_file(con, write_lines(tmp_path / "f.jsonl", [event("a"), "{"]), now=NOW)
    assert checks.conservation(con).passed
    con.execute("DELETE FROM usage_quarantine")
    assert _failed_conservation(con) == {
        "unbalanced_files": 0, "files_with_count_mismatch": 1, "rows_without_manifest": 0}


def test_the_conservation_check_sees_a_manifest_whose_values_do_not_add_up(tmp_path, con):
    """A manifest whose value_read is not accepted + quarantined + dropped is unbalanced, though its rows add
    up and the stored rows match its counts and sums."""
    ingest_file(con, write_lines(tmp_path / "f.jsonl", [event("a", value=5), event("a", value=5)]), now=NOW)
    assert con.execute("SELECT value_read, value_accepted, value_quarantined, value_dropped FROM ingested_files"
                       ).fetchone() == (10, 5, 0, 5)
    con.execute("UPDATE ingested_files SET value_read = value_read + 0.000000000001")
    assert _failed_conservation(con) == {
        "unbalanced_files": 1, "files_with_count_mismatch": 0, "rows_without_manifest": 0}
