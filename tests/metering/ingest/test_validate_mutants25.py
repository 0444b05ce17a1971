"""Edges of the row checks (validate, dedupe, peek, checks, contract) that a hand mutation audit (m25a)
found untested: each test names the plausible bug it rules out.

Expected values are worked out by hand from the contract in docs/ingest.md ("The raw event contract",
"Quarantine reasons", "Duplicates, late events, re-runs"); NOW is 2026-11-01T00:00:00Z, and
2026-10-05T12:00:00Z is epoch second 1791201600.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import polars as pl
import pytest

from metering.ingest import ingest_file
from metering.ingest.peek import event_date_range
from metering.ingest.validate import check_clean
from tests.metering.ingest.conftest import NOW, event, write_lines
from tests.metering.ingest.test_ingest_guards import _counts

_HEAD = '{"event_id":"%s","customer_id":"c","meter":"tokens","timestamp":"2026-10-05T12:00:00Z",'


def _number(event_id: str, literal: str) -> str:
    """A tokens line whose value is the JSON number `literal`, written as is (json.dumps would respell it)."""
    return _HEAD % event_id + '"value":' + literal + "}"


def _outcomes(con) -> dict[str, tuple]:
    """event_id -> ("clean", value text) or (reason, value text kept in quarantine)."""
    got = {e: ("clean", v) for e, v in con.execute(
        "SELECT event_id, value::VARCHAR FROM usage_events").fetchall()}
    got.update({e: (r, v) for e, r, v in con.execute(
        "SELECT event_id, reason, value::VARCHAR FROM usage_quarantine").fetchall()})
    return got


# --- timestamps ---------------------------------------------------------------------------------------


def test_a_timestamp_has_at_most_nine_fractional_digits(tmp_path, con):
    """RFC 3339 as the contract reads it allows at most 9 fractional digits (nanoseconds); DuckDB's cast
    alone takes 10 or more. 9 digits: 12:00:00.123456789 cut to the microsecond, 1791201600123456 us."""
    lines = [event("nine", timestamp="2026-10-05T12:00:00.123456789Z"),
             event("ten", timestamp="2026-10-05T12:00:00.1234567890Z")]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _counts(r) == (2, 1, 1, 0, 0)
    assert con.execute("SELECT event_id, epoch_us(event_time) FROM usage_events").fetchall() == [
        ("nine", 1791201600123456)]
    assert con.execute("SELECT event_id, reason FROM usage_quarantine").fetchall() == [("ten", "bad_timestamp")]


# --- the order of the checks (REASONS order: the first failing one is the row's) -------------------------


def test_the_first_failing_check_in_reasons_order_is_the_rows_reason(tmp_path, con):
    """Rows breaking two rules each, whose rules are adjacent or close in REASONS order:

    - o1: event_id not a string (bad_type) and no value on a sum meter (missing_field): missing_field first;
    - o2: meter not defined and timestamp unparsable: unknown_meter before bad_timestamp;
    - o3: timestamp in the future and value NaN: future_timestamp before non_finite_value;
    - o4: 1000000000000001.0000000000001 is both above 1e15 and has 13 decimals: value_too_large before
      value_too_precise.
    """
    lines = ['{"event_id":17,"customer_id":"c","meter":"tokens","timestamp":"2026-10-05T12:00:00Z"}',
             event("o2", meter="nope", timestamp="yesterday"),
             event("o3", timestamp="2030-01-01T00:00:00Z", value="NaN"),
             event("o4", value="1000000000000001.0000000000001")]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _counts(r) == (4, 0, 4, 0, 0)
    assert con.execute("SELECT source_line, reason FROM usage_quarantine ORDER BY 1").fetchall() == [
        (1, "missing_field"), (2, "unknown_meter"), (3, "future_timestamp"), (4, "value_too_large")]


def test_a_value_just_above_1e15_is_too_large_though_it_rounds_to_1e15(tmp_path, con):
    """1000000000000000.0000000000001 (1e15 + 1e-13) exceeds 1e15, and value_too_large comes before
    negative_value and value_too_precise in REASONS. It was value_too_precise until the twenty-fifth
    session: the magnitude was read from the value cast to DECIMAL(38, 12), which rounds it onto exactly
    1e15. The same value in exponent form (1.0000000000000000000000000001e15: 28 decimals of mantissa,
    and 10000000000000000.000000000001e-1), as a JSON number, and negated (|v| > 1e15 before negative).
    Just below 1e15, 999999999999999.9999999999999 and 9.9999999999999999999999999999e14 (28 nines after
    the point: 14 decimals) round onto 1e15 too but lie below it: too precise, rightly. 1e15 written
    with thirteen zero decimals is 1e15 itself: clean (no digit beyond the 12th decimal is non-zero)."""
    lines = [event("above", value="1000000000000000.0000000000001"),
             _number("above_json", "1000000000000000.0000000000001"),
             event("above_e", value="1.0000000000000000000000000001e15"),
             event("above_e2", value="10000000000000000.000000000001e-1"),
             event("above_neg", value="-1000000000000000.0000000000001"),
             event("below", value="999999999999999.9999999999999"),
             event("below_e", value="9.9999999999999999999999999999e14"),
             event("exact", value="1000000000000000.0000000000000")]
    ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _outcomes(con) == {
        "above": ("value_too_large", None), "above_json": ("value_too_large", None),
        "above_e": ("value_too_large", None), "above_e2": ("value_too_large", None),
        "above_neg": ("value_too_large", None),
        "below": ("value_too_precise", None), "below_e": ("value_too_precise", None),
        "exact": ("clean", "1000000000000000.000000000000")}


# --- value rules -------------------------------------------------------------------------------------


def test_thirteen_decimals_in_the_shortest_text_are_too_precise(tmp_path, con):
    """`.1234567890123` (14 characters, 13 decimals) is the shortest text with 13 decimals; a length
    guard of 14 instead of 13 characters lets it through, rounded to 0.123456789012. 12 decimals
    (`.123456789012`) are fine."""
    lines = [event("d13", value=".1234567890123"), event("d12", value=".123456789012")]
    ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _outcomes(con) == {"d12": ("clean", "0.123456789012"), "d13": ("value_too_precise", None)}


def test_leading_zeros_of_a_json_numbers_mantissa_are_not_significant(tmp_path, con):
    """0.00000123456789012e6 = 1.23456789012: 12 significant digits (the six leading zeros are not) and
    11 decimals (17 after the point, less the exponent 6): clean. Counting leading zeros makes 18 digits."""
    ingest_file(con, write_lines(tmp_path / "f.jsonl", [_number("z", "0.00000123456789012e6")]), now=NOW)
    assert _outcomes(con) == {"z": ("clean", "1.234567890120")}


@pytest.mark.parametrize("text", ["+Infinity", "+infinity", "+INF", "+NaN", "-Infinity", "inf"])
def test_every_spelling_of_an_infinity_or_nan_is_non_finite(text, tmp_path, con):
    """Each sign and case of NaN and the infinities is non_finite_value, not bad_type (the list once
    missed a spelling, and that spelling became 'not a decimal number')."""
    ingest_file(con, write_lines(tmp_path / "f.jsonl", [event("n", value=text)]), now=NOW)
    assert _outcomes(con) == {"n": ("non_finite_value", None)}


def test_literals_duckdb_cannot_cast_are_judged_at_1e15_and_1e_minus_12(tmp_path, con):
    """Mantissas of 31-32 digits (no DECIMAL(38, 12) cast reads them) judged from the literal:

    - a: 1 then 31 zeros, e-15 = 1e16: too large (the point 17 digits in);
    - b: 15 then 29 zeros... e-15 = 1.5e15: too large (16 digits before the point, not exactly 1e15);
    - c: 1 then 30 zeros, e-15 = 1e15 exactly: clean;
    - d: 1 then 29 zeros, e-41 = 1e-12 (the 12th decimal): clean, not dropped to no value;
    - e: minus 1 then 29 zeros, e-29 = -1: negative, and it keeps its quantity -1 (within +-1e15, 0 decimals).
    """
    values = {"a": "1" + "0" * 31 + "e-15", "b": "15" + "0" * 29 + "e-15", "c": "1" + "0" * 30 + "e-15",
              "d": "1" + "0" * 29 + "e-41", "e": "-1" + "0" * 29 + "e-29"}
    lines = [event(e, value=v) for e, v in values.items()]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _outcomes(con) == {"a": ("value_too_large", None), "b": ("value_too_large", None),
                              "c": ("clean", "1000000000000000.000000000000"), "d": ("clean", "0.000000000001"),
                              "e": ("negative_value", "-1.000000000000")}
    assert (r.value_accepted, r.value_quarantined) == (Decimal("1000000000000000.000000000001"), Decimal(-1))


def test_a_too_precise_value_keeps_no_quantity_in_quarantine(tmp_path, con):
    """A value with more than 12 decimals is no exact quantity: usage_quarantine.value stays NULL and it is
    in no sum (DuckDB's cast would round 1.0000000000001 to 1, and the long literal to 12 decimals)."""
    lines = [event("ok", value="2"), event("p1", value="1.0000000000001"),
             event("p2", value="12345678901234567890123456789e-20")]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _outcomes(con) == {"ok": ("clean", "2.000000000000"), "p1": ("value_too_precise", None),
                              "p2": ("value_too_precise", None)}
    assert (r.value_read, r.value_accepted, r.value_quarantined) == (2, 2, 0)


# --- missing fields -------------------------------------------------------------------------------------


def test_a_counted_property_of_only_spaces_is_missing(tmp_path, con):
    """active_users counts distinct properties.user_id: a blank one is absent (as a blank id is), not a
    user named '  '."""
    lines = [event("b", meter="active_users", value=..., properties={"user_id": "  "}),
             event("g", meter="active_users", value=..., properties={"user_id": "u1"})]
    ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert con.execute("SELECT event_id, reason, detail FROM usage_quarantine").fetchall() == [
        ("b", "missing_field", "properties.user_id is required for meter active_users")]
    assert con.execute("SELECT event_id FROM usage_events").fetchall() == [("g",)]



# --- the typed contract (pandera) -----------------------------------------------------------------------


def _clean_frame(value: str, day: date) -> pl.DataFrame:
    return pl.DataFrame({
        "event_id": ["e"], "customer_id": ["c"], "meter": ["tokens"],
        "event_time": [datetime(2026, 10, 5, 12, tzinfo=timezone.utc)], "event_date": [day],
        "value": pl.Series([Decimal(value)], dtype=pl.Decimal(38, 12)), "properties": ["{}"]},
        schema_overrides={"event_time": pl.Datetime("us", "UTC")})


def test_the_clean_contract_refuses_a_negative_value_and_a_wrong_date():
    """check_clean is the last guard against a rule the SQL missed: a negative value and an event_date
    that is not event_time's UTC date (a day earlier) are breaches; the valid row passes."""
    check_clean(_clean_frame("1.5", date(2026, 10, 5)), ["tokens"])
    with pytest.raises(Exception, match="greater_than_or_equal_to"):
        check_clean(_clean_frame("-1", date(2026, 10, 5)), ["tokens"])
    with pytest.raises(Exception, match="event_date is the UTC date of event_time"):
        check_clean(_clean_frame("1.5", date(2026, 10, 4)), ["tokens"])


# --- duplicates ---------------------------------------------------------------------------------------


def test_copies_of_an_event_without_a_value_are_exact_duplicates(tmp_path, con):
    """A count meter's event needs no value; two copies of one (also across files) are the same event:
    one accepted, the others dropped, not both stored under one id."""
    same = event("a", meter="api_calls", value=..., properties={"region": "eu"})
    r1 = ingest_file(con, write_lines(tmp_path / "1.jsonl", [same, same]), now=NOW)
    r2 = ingest_file(con, write_lines(tmp_path / "2.jsonl", [same]), now=NOW)
    assert [_counts(r) for r in (r1, r2)] == [(2, 1, 0, 1, 0), (1, 0, 0, 1, 0)]
    assert con.execute("SELECT event_id, value FROM usage_events").fetchall() == [("a", None)]


def test_two_values_of_a_million_or_more_are_different_payloads(tmp_path, con):
    """Values from 1e6 up do not fit the narrow DECIMAL(18, 12) the payload hash tries first; 2000000 and
    3000000 under one id are still a conflict, and 2000000 vs "2000000.000" an exact duplicate."""
    lines = [event("m", value=2000000), event("m", value=3000000), event("m", value="2000000.000")]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _counts(r) == (3, 1, 1, 1, 1)
    assert con.execute("SELECT source_line, reason FROM usage_quarantine").fetchall() == [
        (2, "conflicting_duplicate")]


# --- peek (the sensor's partition range) -------------------------------------------------------------


def test_peek_keeps_a_timestamp_at_exactly_2000_and_one_just_ahead_of_the_clock(tmp_path):
    """peek keeps what validation may accept: 2000-01-01T00:00:00Z itself (not before 2000), and a
    timestamp two hours ahead of the real clock (within its one-day allowance for clock skew)."""
    ahead = datetime.now(timezone.utc) + timedelta(hours=2)
    path = write_lines(tmp_path / "f.jsonl", [event("a", timestamp="2000-01-01T00:00:00Z"),
                                              event("b", timestamp="2026-10-05T12:00:00Z"),
                                              event("c", timestamp=ahead.isoformat())])
    assert event_date_range(path) == (date(2000, 1, 1), ahead.date())

