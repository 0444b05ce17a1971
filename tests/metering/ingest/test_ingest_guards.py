"""Guards of one file's ingest: properties in the payload hash, the value-conservation and stored-rows
checks, and the rollback that undoes a failed file."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering.errors import CheckFailedError
from metering.ingest import IngestResult, ingest_file, load
from tests.metering.ingest.conftest import NOW, event, write_lines


def _count(con, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _counts(r: IngestResult) -> tuple[int, int, int, int, int]:
    return (r.rows_read, r.rows_accepted, r.rows_quarantined, r.duplicates_dropped, r.conflicting_duplicates)


# --- properties are part of the payload ------------------------------------------------------------------


def test_other_properties_in_one_file_are_a_conflict_not_a_duplicate(tmp_path, con):
    """Two rows of one id that differ only in properties are two versions: the second is quarantined as a
    conflict. A payload hash without properties would call it an exact duplicate and drop it unseen."""
    lines = [event("e1", properties={"region": "eu"}), event("e1", properties={"region": "us"})]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert _counts(r) == (2, 1, 1, 0, 1)
    assert r.reasons == {"conflicting_duplicate": 1}
    assert con.execute("SELECT event_id, properties FROM usage_events").fetchall() == [("e1", '{"region":"eu"}')]
    assert con.execute("SELECT event_id, source_line, reason FROM usage_quarantine").fetchall() == [
        ("e1", 2, "conflicting_duplicate")]


def test_other_properties_against_a_stored_event_are_a_conflict(tmp_path, con):
    """A later file's e1 with other properties than the stored e1 is a conflicting version; a payload hash
    without properties would drop it as an exact duplicate of the stored event."""
    first = ingest_file(con, write_lines(tmp_path / "1.jsonl", [event("e1", properties={"region": "eu"})]), now=NOW)
    assert _counts(first) == (1, 1, 0, 0, 0)
    r = ingest_file(con, write_lines(tmp_path / "2.jsonl", [event("e1", properties={"region": "us"})]), now=NOW)
    assert _counts(r) == (1, 0, 1, 0, 1)
    assert r.reasons == {"conflicting_duplicate": 1}
    assert con.execute("SELECT event_id, properties FROM usage_events").fetchall() == [("e1", '{"region":"eu"}')]
    assert con.execute("SELECT event_id, source_line, reason FROM usage_quarantine").fetchall() == [
        ("e1", 1, "conflicting_duplicate")]


def test_the_same_properties_in_another_key_order_or_spacing_are_an_exact_duplicate(tmp_path, con):
    """Properties are compared canonically: the same keys and values in another order, or with other
    spacing, are the same payload (dropped as a duplicate, in the file and against the stored event),
    while another value of one key is a conflict. Hashing the raw properties text would turn the first
    two into conflicts; leaving properties out would turn the last into a duplicate."""
    same = '{"event_id": "e1", "customer_id": "cust_00001", "meter": "tokens", ' \
           '"timestamp": "2026-10-05T12:00:00Z", "value": 5, "properties": %s}'
    r = ingest_file(con, write_lines(tmp_path / "1.jsonl", [
        same % '{"model": "small", "region": "eu"}',
        same % '{"region":"eu","model":"small"}',
        same % '{ "region" :  "eu" ,\t"model": "small" }',
    ]), now=NOW)
    assert _counts(r) == (3, 1, 0, 2, 0)
    r2 = ingest_file(con, write_lines(tmp_path / "2.jsonl", [
        same % '{"region": "eu",   "model": "small"}',
        same % '{"region": "us", "model": "small"}',
    ]), now=NOW)
    assert _counts(r2) == (2, 0, 1, 1, 1)
    assert r2.reasons == {"conflicting_duplicate": 1}
    assert _count(con, "usage_events") == 1
    assert con.execute("SELECT source_line, reason FROM usage_quarantine").fetchall() == [
        (2, "conflicting_duplicate")]


# --- value conservation --------------------------------------------------------------------------------------


def test_conserved_checks_values_as_well_as_rows():
    """Rows that add up with values that do not are not conserved; a `conserved` that looked at the rows
    only would pass a file whose accepted value lost a unit."""
    broken = IngestResult(path="f.jsonl", file_hash="h", format="jsonl", status="ingested", rows_read=1,
                          rows_accepted=1, value_read=Decimal(5), value_accepted=Decimal(4))
    assert broken.conserved is False
    whole = IngestResult(path="f.jsonl", file_hash="h", format="jsonl", status="ingested", rows_read=1,
                         rows_accepted=1, value_read=Decimal(5), value_accepted=Decimal(5))
    assert whole.conserved is True


def _shifted_stored(monkeypatch, rows: int = 0, value: Decimal = Decimal(0)):
    real = load._stored

    def stored(con, file_id, file_hash):
        clean, clean_value, quarantined, quarantined_value = real(con, file_id, file_hash)
        return clean + rows, clean_value + value, quarantined, quarantined_value

    monkeypatch.setattr(load, "_stored", stored)


def _nothing_stored(con) -> None:
    for table in ("ingested_files", "usage_events", "usage_quarantine"):
        assert _count(con, table) == 0, table


def test_a_stored_value_that_differs_from_the_value_read_fails_the_file(tmp_path, con, monkeypatch):
    """The stored clean rows carrying one unit more than was read break conservation in value (the row
    counts still add up): the file fails naming itself, and nothing of it stays. A conservation check
    by rows only would commit it."""
    path = write_lines(tmp_path / "f.jsonl", [event("a", value=5), event("b", value=2), "{bad"])
    _shifted_stored(monkeypatch, value=Decimal(1))
    with pytest.raises(CheckFailedError) as err:
        ingest_file(con, path, now=NOW)
    assert str(path) in str(err.value) and "conservation broken" in str(err.value)
    _nothing_stored(con)


def test_stored_rows_that_differ_from_the_manifest_fail_the_file(tmp_path, con, monkeypatch):
    """One clean row fewer stored than the insert reported (values unchanged, so conservation holds) fails
    the file, and nothing of it stays; without the stored-vs-manifest check it would be committed."""
    path = write_lines(tmp_path / "f.jsonl", [event("a", value=5), event("b", value=2), "{bad"])
    _shifted_stored(monkeypatch, rows=-1)
    with pytest.raises(CheckFailedError) as err:
        ingest_file(con, path, now=NOW)
    assert str(path) in str(err.value) and "(1, 1) differ from the manifest (2, 1)" in str(err.value)
    _nothing_stored(con)


# --- rollback -------------------------------------------------------------------------------------------------


def test_an_error_mid_file_rolls_the_file_back(tmp_path, con, monkeypatch):
    """An error after the clean rows are inserted (here while quarantining) rolls the whole file back: no
    clean rows stay visible, and the same file ingests whole on the same connection afterwards. Without
    the ROLLBACK the rows stay in an open transaction (seen by this connection), and the next file's
    BEGIN fails."""
    path = write_lines(tmp_path / "f.jsonl", [event("a"), event("b"), event("a", value=2), "{bad"])

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(load, "_insert_quarantine", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        ingest_file(con, path, now=NOW)
    _nothing_stored(con)
    monkeypatch.undo()
    r = ingest_file(con, path, now=NOW)
    assert r.status == "ingested"
    assert _counts(r) == (4, 2, 2, 0, 1)
    assert con.execute("SELECT event_id FROM usage_events ORDER BY source_line").fetchall() == [("a",), ("b",)]
    assert _count(con, "usage_quarantine") == 2
    assert _count(con, "ingested_files") == 1
