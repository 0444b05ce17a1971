"""Edges of ingestion's core that a hand mutation audit (m23a) found untested: each test names the plausible
bug it rules out.

Expected values are derived by hand from the contract in docs/ingest.md (NOW is 2026-11-01T00:00:00Z).
"""

from __future__ import annotations

import json

import pytest

from metering.errors import BadInputError, CheckFailedError
from metering.ingest import checks, ingest_file, load, readers
from metering.ingest.load import ingested_dates
from metering.rules.meters import load_meters
from tests.metering.ingest.conftest import NOW, event, write_lines
from tests.metering.ingest.test_ingest_guards import _counts
from tests.metering.ingest.test_ingest_mutants20 import _failed_conservation


def test_a_corrected_event_whose_id_was_quarantined_for_another_reason_is_accepted(tmp_path, con):
    """Only a stored clean event or a stored conflicting version makes an id "known": a row quarantined for
    another reason (here negative_value) holds no version. Its sender's corrected re-send under the same id
    is accepted; counting every quarantined row as stored would quarantine it as a conflicting duplicate
    (and bill nothing for it)."""
    first = ingest_file(con, write_lines(tmp_path / "1.jsonl", [event("a", value=-1)]), now=NOW)
    assert _counts(first) == (1, 0, 1, 0, 0)
    fixed = ingest_file(con, write_lines(tmp_path / "2.jsonl", [event("a", value=5)]), now=NOW)
    # read 1 = accepted 1 + quarantined 0 + dropped 0; no conflict
    assert _counts(fixed) == (1, 1, 0, 0, 0) and fixed.reasons == {}
    assert con.execute("SELECT event_id, value::INT, file_id FROM usage_events").fetchall() == [("a", 5, 2)]
    assert con.execute("SELECT event_id, reason FROM usage_quarantine").fetchall() == [("a", "negative_value")]


def test_the_conservation_check_sees_quarantined_rows_whose_manifest_entry_is_gone(tmp_path, con):
    """A file of only quarantined rows whose manifest entry was deleted outside ingestion leaves rows no
    manifest accounts for: no entry is unbalanced or mismatched (there is none), so only the quarantine's
    orphan count catches it."""
    ingest_file(con, write_lines(tmp_path / "f.jsonl", ["{", event("b", value=-1)]), now=NOW)
    assert checks.conservation(con).passed
    con.execute("DELETE FROM ingested_files")
    # 0 clean rows + 2 quarantined rows without a manifest entry
    assert _failed_conservation(con) == {
        "unbalanced_files": 0, "files_with_count_mismatch": 0, "rows_without_manifest": 2}


def test_a_last_meter_event_without_a_value_is_missing_a_field(tmp_path, con):
    """seats aggregates the last value: an event without one is missing_field, as for sum and max meters (a
    need-value list without `last` would accept it with no value, which the seat count then reads as none)."""
    lines = [event("s1", meter="seats", value=3), event("s2", meter="seats", value=...),
             event("s3", meter="seats", value=None)]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _counts(r) == (3, 1, 2, 0, 0)
    assert con.execute("SELECT source_line, reason, detail FROM usage_quarantine ORDER BY 1").fetchall() == [
        (2, "missing_field", "value is required for meter seats"),
        (3, "missing_field", "value is required for meter seats")]


def test_a_csv_file_none_of_whose_rows_parses_is_refused_and_stores_nothing(tmp_path, con):
    """As for JSON lines, a CSV file whose every data line is a broken record (here a field short and a field
    too many against the header) is no CSV: refused whole, nothing stored. Counting only JSON lines (or not
    counting bad_csv_row) would quarantine every row and record the file as ingested."""
    path = tmp_path / "f.csv"
    path.write_text("event_id,customer_id,meter,timestamp,value\n"
                    "a,cust_00001,tokens\n"
                    "b,cust_00001,tokens,2026-10-05T12:00:00Z,5,extra\n")
    with pytest.raises(BadInputError, match="f.csv: not CSV: none of its 2 line"):
        ingest_file(con, path, now=NOW)
    assert con.execute("SELECT (SELECT count(*) FROM usage_quarantine), (SELECT count(*) FROM ingested_files)"
                       ).fetchone() == (0, 0)


def test_another_customer_or_meter_under_one_event_id_is_a_conflict_not_a_duplicate(tmp_path, con):
    """Customer and meter are part of the payload: the same event_id for another customer or another meter
    is a conflicting version, in the file and against the stored event. A payload hash without either would
    drop it unseen as an exact duplicate (the usage then billed to whichever customer came first, silently)."""
    lines = [event("c"), event("c", customer_id="cust_00002"), event("m"), event("m", meter="storage_gb")]
    r = ingest_file(con, write_lines(tmp_path / "1.jsonl", lines), now=NOW)
    # read 4 = accepted 2 (c, m on lines 1 and 3) + quarantined 2 conflicts + dropped 0
    assert _counts(r) == (4, 2, 2, 0, 2)
    later = [event("c", customer_id="cust_00003"), event("m", meter="seats")]
    r2 = ingest_file(con, write_lines(tmp_path / "2.jsonl", later), now=NOW)
    assert _counts(r2) == (2, 0, 2, 0, 2)
    assert con.execute("SELECT event_id, customer_id, meter FROM usage_events ORDER BY 1").fetchall() == [
        ("c", "cust_00001", "tokens"), ("m", "cust_00001", "tokens")]
    assert con.execute("SELECT file_id, source_line, reason FROM usage_quarantine "
                       "JOIN ingested_files USING (file_hash) ORDER BY 1, 2").fetchall() == [
        (1, 2, "conflicting_duplicate"), (1, 4, "conflicting_duplicate"),
        (2, 1, "conflicting_duplicate"), (2, 2, "conflicting_duplicate")]


def test_ingested_dates_give_a_skipped_files_event_dates_and_when_it_was_ingested(tmp_path, con):
    """What the ingest asset re-reports for a file skipped as already ingested: its manifest's event dates,
    sorted, and its ingestion instant in Unix seconds (a date reported before that instant is reported again).
    Folding the instants with min from 0.0 would give 0.0 for every file, so a date reported before a run
    that was killed after committing the file would never be re-reported."""
    late = write_lines(tmp_path / "late.jsonl", [event("b", timestamp="2026-10-09T10:00:00Z"),
                                                 event("c", timestamp="2026-10-02T23:59:59.999Z")])
    r = ingest_file(con, late, now=NOW)
    (ingested_at,) = con.execute("SELECT ingested_at FROM ingested_files").fetchone()
    assert ingested_dates(con, [r.file_hash, "not-ingested"]) == {
        r.file_hash: (["2026-10-02", "2026-10-09"], ingested_at.timestamp())}


def test_a_quarantined_row_before_two_copies_of_its_id_leaves_the_first_valid_copy_clean(tmp_path, con):
    """Only valid rows take part in de-duplication: a row quarantined for its own fault (here negative) on an
    earlier line holds no version, so the first valid copy of its id stays clean and the next is an exact
    duplicate. Judging the quarantined row as a version would make it the "earliest" one, and the valid
    event a conflicting duplicate: nothing accepted."""
    lines = [event("a", value=-1), event("a", value=5), event("a", value=5)]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    # read 3 = accepted 1 (line 2) + quarantined 1 (line 1, negative_value) + dropped 1 (line 3)
    assert _counts(r) == (3, 1, 1, 1, 0)
    assert (r.value_read, r.value_accepted, r.value_quarantined, r.value_dropped) == (9, 5, -1, 5)
    assert con.execute("SELECT event_id, value::INT, source_line FROM usage_events").fetchall() == [("a", 5, 2)]
    assert con.execute("SELECT source_line, reason FROM usage_quarantine").fetchall() == [(1, "negative_value")]


@pytest.mark.parametrize("bad_line", [3, 4], ids=["last-of-first-half", "first-of-second-half"])
def test_the_contract_check_reads_the_lines_where_its_halves_meet(bad_line, tmp_path, con):
    """Lines 1..6 split at (1 + 6) // 2 = 3 into 1..3 and 4..6: a breach on either side of the seam fails
    the file (test_load covers lines 1 and 6). Halves of 1..3 and 5..6 would never read line 4."""
    meters = load_meters()
    path = write_lines(tmp_path / "f.jsonl", [event(f"e{i}") for i in range(1, 7)])
    assert readers.stage_jsonl(con, path, "jsonl", load._EventsSink(con, meters, NOW)).rows == 6
    con.execute(f"UPDATE {load.EVENTS} SET meter = 'not_a_meter' WHERE line = ?", [bad_line])
    with pytest.raises(CheckFailedError, match=r"f\.jsonl: clean rows breach the usage_events contract"):
        load._pandera_check(con, meters, path)
    load._drop_temp(con)


def test_a_conflicting_version_after_crlf_lines_keeps_its_own_raw_text(tmp_path, con):
    """Offsets counted with one byte per line end are off by one byte per earlier `\\r\\n`. Here n blank
    `\\r\\n` lines come first and the clean version of "a" is n - 1 bytes long, so the counted offset of
    the conflicting version (line n + 2) is n + n = 2n, exactly where the clean version really starts
    (n lines of 2 bytes): it starts after a `\\n`, holds no `\\r` and names event "a". Only because such a
    file's offsets are known to be inexact is it re-read; seeking would keep the clean line's text as the
    rejected version's."""
    clean = json.dumps(event("a", value=1)).encode()
    conflicting = json.dumps(event("a", value=2)).encode()
    n = len(clean) + 1
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\r\n" * n + clean + b"\n" + conflicting + b"\n")
    r = ingest_file(con, path, now=NOW)
    assert (r.rows_read, r.rows_accepted, r.conflicting_duplicates, r.blank_lines) == (2, 1, 1, n)
    assert con.execute("SELECT source_line, raw FROM usage_quarantine").fetchall() == [(n + 2, conflicting.decode())]
