"""Edges of the load step that a second hand mutation audit (m26d) found untested: what the manifest
records (event dates, ingestion time), the hash re-check inside the file's transaction, the staging left
behind, which files are refused as unreadable or are no raw files, the rules a batch is validated with,
the change seen by the modification time alone, the contract check's wiring and the stored-vs-manifest
check of the quarantine.

Each test names the plausible bug it rules out. Expected values are worked out by hand from
docs/ingest.md (NOW is 2026-11-01T00:00:00Z; the default event is 5 tokens on 2026-10-05).
"""

from __future__ import annotations

import gzip
import shutil
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from metering.errors import BadInputError
from metering.ingest import ingest_file, ingest_files, load
from tests.metering.ingest.conftest import NOW, event, table_digest, write_lines

TABLES = ("usage_events", "usage_quarantine", "ingested_files")


def test_event_dates_are_the_dates_of_the_rows_stored_clean_only(tmp_path, con):
    """A file's event dates tell rating which days to re-aggregate: a quarantined row (10-07, negative),
    a dropped duplicate's copy and a conflicting version (10-08) touch no day's clean usage, so only
    2026-10-05 (events a and b) is recorded."""
    lines = [event("a"), event("q", value=-1, timestamp="2026-10-07T00:00:00Z"), event("b"),
             event("c", timestamp="2026-10-05T12:00:00Z"), event("c", timestamp="2026-10-08T00:00:00Z")]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert r.event_dates == ["2026-10-05"]
    assert con.execute("SELECT event_dates FROM ingested_files").fetchone()[0] == '["2026-10-05"]'


def test_the_transaction_checks_the_hash_again_when_the_size_check_misses_a_copy(tmp_path, con):
    """The size check only decides whether to hash before the read; "the ingest transaction checks the
    hash again" (docs/ingest.md). A manifest entry whose recorded size no longer matches (here set to 1)
    sends a copy of the file down the hash-beside-the-read path: it must still be skipped, storing nothing
    a second time (else a second manifest entry for the same content, its 2 rows dropped as duplicates)."""
    path = write_lines(tmp_path / "a.jsonl", [event("a"), event("b")])
    ingest_file(con, path, now=NOW)
    con.execute("UPDATE ingested_files SET bytes = 1")
    before = {t: table_digest(con, t) for t in TABLES}
    again = ingest_file(con, shutil.copy(path, tmp_path / "copy.jsonl"), now=NOW)
    assert again.status == "skipped"
    assert {t: table_digest(con, t) for t in TABLES} == before
    assert con.execute("SELECT count(*) FROM ingested_files").fetchone() == (1,)


def _leftovers(con) -> tuple[list, list]:
    databases = [d for (d,) in con.execute(
        "SELECT database_name FROM duckdb_databases() WHERE NOT internal ORDER BY 1").fetchall()]
    temp_tables = [t for (t,) in con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE temporary ORDER BY 1").fetchall()]
    return databases, temp_tables


@pytest.mark.parametrize("name", ["f.jsonl", "f.parquet"])
def test_an_ingested_file_leaves_no_staging_behind(name, tmp_path, con):
    """The staging database (every row of the file, in memory) and the temp tables of one file's load are
    dropped when it commits: a long-lived connection ingesting file after file would otherwise hold the
    last file's rows. Here one conflict, so every temp table is made (JSON lines: by seeking; Parquet:
    the rows rendered as JSON)."""
    rows = [event("a"), event("a", value=2), event("b", value=-1)]
    path = write_lines(tmp_path / "f.jsonl", rows)
    if name.endswith(".parquet"):
        import polars as pl
        pl.read_ndjson(path).write_parquet(tmp_path / name)
        path = tmp_path / name
    before = _leftovers(con)
    r = ingest_file(con, path, now=NOW)
    assert (r.rows_accepted, r.rows_quarantined, r.conflicting_duplicates) == (1, 2, 1)
    assert _leftovers(con) == before
    assert before[1] == [] and "ingest_stage" not in before[0]


def test_a_file_of_one_line_that_is_no_json_object_is_refused(tmp_path, con):
    """A one-line file whose line yields no object is no JSON lines file (1 of 1 lines unreadable), as
    for longer files: refused, nothing stored. Requiring two lines would quarantine it as bad_json."""
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\x89PNG not json\n")
    with pytest.raises(BadInputError, match=r"f\.jsonl: not JSON lines: none of its 1 line\(s\) parses"):
        ingest_file(con, path, now=NOW)
    assert con.execute("SELECT (SELECT count(*) FROM usage_quarantine), (SELECT count(*) FROM ingested_files)"
                       ).fetchone() == (0, 0)


def test_a_gzipped_file_none_of_whose_lines_parses_is_refused(tmp_path, con):
    """`.jsonl.gz` is JSON lines too: a gzip of 3 lines of which none is a JSON object is refused like the
    plain file, not quarantined line by line and recorded as ingested."""
    path = tmp_path / "f.jsonl.gz"
    path.write_bytes(gzip.compress(b"a,b,c\n1,2,3\n4,5,6\n", mtime=0))
    with pytest.raises(BadInputError, match=r"f\.jsonl\.gz: not JSON lines: none of its 3 line\(s\) parses"):
        ingest_file(con, path, now=NOW)
    assert con.execute("SELECT (SELECT count(*) FROM usage_quarantine), (SELECT count(*) FROM ingested_files)"
                       ).fetchone() == (0, 0)


def test_hidden_files_and_other_extensions_are_no_raw_files(tmp_path):
    # the sensor asks `is_raw_file` of each name it lists: `.a.jsonl` is a writer's file being staged
    assert load.is_raw_file(tmp_path / "a.jsonl")
    assert not load.is_raw_file(tmp_path / ".a.jsonl")
    assert not load.is_raw_file(tmp_path / "notes.txt")


def test_a_batch_is_validated_with_the_rules_folder_it_names(tmp_path, con):
    """`ingest_files(rules_dir=...)` reads that folder's meters for every file: an event of `gpu_seconds`,
    a meter only that folder defines, is accepted (the default rules would quarantine it as unknown_meter)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "meters.yaml").write_text("meters:\n  gpu_seconds: {aggregation: sum, value: value, unit: second}\n")
    path = write_lines(tmp_path / "f.jsonl", [event("g", meter="gpu_seconds", value=7)])
    (r,) = ingest_files(con, [path], rules_dir=rules, now=NOW)
    assert (r.rows_accepted, r.rows_quarantined, r.reasons) == (1, 0, {})
    assert con.execute("SELECT meter, value FROM usage_events").fetchall() == [("gpu_seconds", Decimal(7))]


def test_ingested_at_is_when_the_file_was_stored_not_the_validation_clock(tmp_path, con):
    """`now` is the clock future timestamps are judged by (a backfill or a test passes a fixed one);
    `ingested_files.ingested_at` and `usage_quarantine.quarantined_at` say when the rows were stored, which
    the Dagster asset compares with when it reported a date. With NOW = 2026-11-01 passed, they are still
    the wall-clock time of the ingest."""
    before = datetime.now(timezone.utc)
    ingest_file(con, write_lines(tmp_path / "f.jsonl", [event("a"), event("b", value=-1)]), now=NOW)
    after = datetime.now(timezone.utc)
    (ingested_at,) = con.execute("SELECT ingested_at FROM ingested_files").fetchone()
    (quarantined_at,) = con.execute("SELECT quarantined_at FROM usage_quarantine").fetchone()
    assert before <= ingested_at <= after and quarantined_at == ingested_at


def test_a_same_size_rewrite_in_place_while_the_file_is_read_is_a_change(tmp_path, con, monkeypatch):
    """A writer rewriting the file in place with content of the same length (here value 5 -> 6: same
    size, same inode) is seen by the modification time alone. Without it the rows read (value 5) would be
    stored under the hash of bytes never read (value 6), and the corrected file skipped for ever. The
    writer is simulated by wrapping our own JSON lines reader (set one second later, so that the time
    differs on any file system)."""
    import os

    from metering.errors import FileChangedError
    from metering.ingest import readers

    path = write_lines(tmp_path / "a.jsonl", [event("a", value=5)])
    rewritten = path.read_bytes().replace(b'"value": 5', b'"value": 6')
    assert len(rewritten) == path.stat().st_size
    real = readers.READERS["jsonl"]

    def rewritten_in_place_during_read(con, target, fmt, sink):
        info = real(con, target, fmt, sink)
        stat = target.stat()
        with open(target, "r+b") as fh:
            fh.write(rewritten)
        os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        return info

    monkeypatch.setitem(readers.READERS, "jsonl", rewritten_in_place_during_read)
    with pytest.raises(FileChangedError, match=r"a\.jsonl: the file changed while it was being read"):
        ingest_file(con, path, now=NOW)
    assert con.execute("SELECT (SELECT count(*) FROM usage_events), (SELECT count(*) FROM ingested_files)"
                       ).fetchone() == (0, 0)


def test_ingest_runs_the_contract_check_on_the_clean_rows_unless_told_not_to(tmp_path, con, monkeypatch):
    """The typed contract is checked on every ingest by default (validation is the first line, the
    contract the guard behind it): here 3 rows of which 2 are clean, so the check sees frames of 2 rows in
    all; with `check_contract=False` (the benchmark's switch) it is not run. The check itself is wrapped,
    not replaced, so it still runs."""
    from metering.ingest import validate

    real = validate.check_clean
    seen = []

    def counting(frame, names):
        seen.append(frame.height)
        return real(frame, names)

    monkeypatch.setattr(validate, "check_clean", counting)
    ingest_file(con, write_lines(tmp_path / "a.jsonl", [event("a"), event("b"), event("q", value=-1)]), now=NOW)
    assert sum(seen) == 2   # the empty frame pandera sets itself up with, then the 2 clean rows
    seen.clear()
    ingest_file(con, write_lines(tmp_path / "b.jsonl", [event("c")]), now=NOW, check_contract=False)
    assert seen == []


def test_stored_quarantine_rows_that_differ_from_the_manifest_fail_the_file(tmp_path, con, monkeypatch):
    """The stored-vs-manifest check covers the quarantine as well as the clean rows: one quarantined row
    more stored than the insert reported (a row without a quantity, so conservation in value still holds)
    fails the file naming both pairs, and nothing of it stays. Comparing the clean rows only would commit
    a manifest that miscounts the quarantine."""
    from metering.errors import CheckFailedError

    path = write_lines(tmp_path / "f.jsonl", [event("a", value=5), event("b", value=2), "{bad"])
    real = load._stored

    def one_more_quarantined(con, file_id, file_hash):
        clean, clean_value, quarantined, quarantined_value = real(con, file_id, file_hash)
        return clean, clean_value, quarantined + 1, quarantined_value

    monkeypatch.setattr(load, "_stored", one_more_quarantined)
    with pytest.raises(CheckFailedError, match=r"f\.jsonl: stored rows \(2, 2\) differ from the manifest \(2, 1\)"):
        ingest_file(con, path, now=NOW)
    assert con.execute("SELECT (SELECT count(*) FROM usage_events), (SELECT count(*) FROM usage_quarantine), "
                       "(SELECT count(*) FROM ingested_files)").fetchone() == (0, 0, 0)
