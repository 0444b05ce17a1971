"""Duplicates: exact ones dropped and counted, conflicting ones quarantined (first ingested stays clean)."""

from __future__ import annotations

import itertools

from metering.ingest import ingest_file
from tests.metering.ingest.conftest import NOW, event, write_lines


def test_exact_duplicates_in_one_file(tmp_path, con):
    e = event("a")
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", [e, e, dict(e, retry=2)]), now=NOW)
    assert (r.rows_read, r.rows_accepted, r.rows_quarantined, r.duplicates_dropped) == (3, 1, 0, 2)


def test_same_payload_written_differently_is_an_exact_duplicate(tmp_path, con):
    a = event("a", value=5, timestamp="2026-10-05T12:00:00Z")
    b = event("a", value="5.000", timestamp="2026-10-05T14:00:00+02:00")
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", [a, b]), now=NOW)
    assert (r.rows_accepted, r.duplicates_dropped) == (1, 1)


def test_conflict_in_one_file_first_line_wins(tmp_path, con):
    lines = [event("a", value=1), event("a", value=2), event("a", value=2), event("a", value=3)]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert (r.rows_accepted, r.rows_quarantined, r.duplicates_dropped, r.conflicting_duplicates) == (1, 2, 1, 2)
    assert con.execute("SELECT value::INT, source_line FROM usage_events").fetchall() == [(1, 1)]
    assert con.execute("SELECT source_line, reason FROM usage_quarantine ORDER BY 1").fetchall() == [
        (2, "conflicting_duplicate"), (4, "conflicting_duplicate")]
    text = (tmp_path / "f.jsonl").read_text().splitlines()
    assert [r[0] for r in con.execute("SELECT raw FROM usage_quarantine ORDER BY source_line").fetchall()] == [
        text[1], text[3]], "a conflicting version keeps its raw line"


def test_conflict_against_stored_events(tmp_path, con):
    ingest_file(con, write_lines(tmp_path / "1.jsonl", [event("a", value=1), event("b")]), now=NOW)
    r = ingest_file(con, write_lines(tmp_path / "2.jsonl", [event("a", value=9), event("b"), event("c")]), now=NOW)
    assert (r.rows_accepted, r.rows_quarantined, r.duplicates_dropped) == (1, 1, 1)
    assert con.execute("SELECT event_id, value::INT FROM usage_events ORDER BY 1").fetchall() == [
        ("a", 1), ("b", 5), ("c", 5)]
    # the conflicting version seen again later is a duplicate of the quarantined one, not a new conflict
    r3 = ingest_file(con, write_lines(tmp_path / "3.jsonl", [event("a", value=9)]), now=NOW)
    assert (r3.rows_quarantined, r3.duplicates_dropped) == (0, 1)


def test_counts_do_not_depend_on_file_order(tmp_path):
    from metering import warehouse

    files = {
        "f1": [event("x", value=1), event("y")],
        "f2": [event("x", value=2), event("x", value=2), event("z")],
        "f3": [event("x", value=3), event("y"), event("x", value=1)],
    }
    totals, clean_sets = set(), set()
    for n, order in enumerate(itertools.permutations(files)):
        con = warehouse.connect(tmp_path / f"w{n}.duckdb")
        results = [ingest_file(con, write_lines(tmp_path / f"{n}" / f"{name}.jsonl", files[name]), now=NOW)
                   for name in order]
        totals.add(tuple(sum(getattr(r, k) for r in results)
                         for k in ("rows_read", "rows_accepted", "rows_quarantined", "duplicates_dropped")))
        clean_sets.add(con.execute("SELECT count(DISTINCT event_id) FROM usage_events").fetchone()[0])
        con.close()
    # 8 rows; ids x, y, z clean; x has 3 versions -> 2 conflicts; 3 exact copies dropped
    assert totals == {(8, 3, 2, 3)}
    assert clean_sets == {3}


def test_event_id_unique_in_the_warehouse(tmp_path, con):
    for i in range(3):
        ingest_file(con, write_lines(tmp_path / f"{i}.jsonl", [event("a", value=i), event(f"b{i}")]), now=NOW)
    assert con.execute("SELECT count(*) - count(DISTINCT event_id) FROM usage_events").fetchone()[0] == 0


def test_conflicts_keep_raw_text_in_csv_and_parquet(tmp_path, con):
    import polars as pl

    csv_path = tmp_path / "f.csv"
    csv_path.write_text("event_id,customer_id,meter,timestamp,value\n"
                        "a,c,tokens,2026-10-05T00:00:00Z,1\na,c,tokens,2026-10-05T00:00:00Z,2\n")
    ingest_file(con, csv_path, now=NOW)
    pq = tmp_path / "f.parquet"
    pl.DataFrame({"event_id": ["a"], "customer_id": ["c"], "meter": ["tokens"],
                  "timestamp": ["2026-10-05T00:00:00Z"], "value": ["3"]}).write_parquet(pq)
    ingest_file(con, pq, now=NOW)
    assert con.execute("SELECT source_line, raw FROM usage_quarantine ORDER BY source_file").fetchall() == [
        (3, "a,c,tokens,2026-10-05T00:00:00Z,2"),
        (1, '{"event_id":"a","customer_id":"c","meter":"tokens","timestamp":"2026-10-05T00:00:00Z","value":"3"}')]
