"""Duplicates: exact ones dropped and counted, conflicting ones quarantined (first ingested stays clean)."""

from __future__ import annotations

import gzip
import itertools
import json

import pytest

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


def _conflicting_lines(ending: bytes) -> tuple[bytes, list[bytes]]:
    """A file whose lines end with `ending`, with blank lines, multi-byte and invalid UTF-8 before
    two conflicting versions of one event; returns its bytes and the two conflicting lines."""
    first, second, third = (json.dumps(event("a", value=v), ensure_ascii=False).encode() for v in (1, 2, 3))
    lines = [json.dumps(event("é€😀", customer_id="ü")).encode(), b"", b"  \t", b'{"event_id": "\xff"}', first,
             json.dumps(event("b")).encode(), second, b"", third]
    return ending.join(lines) + ending, [second, third]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
@pytest.mark.parametrize("name", ["f.jsonl", "f.jsonl.gz"])
def test_conflicting_versions_keep_their_exact_raw_line(tmp_path, con, ending, name):
    """A conflicting version's raw text is fetched by its byte offset where the offsets are exact
    (plain file, one-byte line ends) and by re-reading the file otherwise: the same text either way."""
    data, conflicting = _conflicting_lines(ending)
    path = tmp_path / name
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    r = ingest_file(con, path, now=NOW)
    assert (r.rows_accepted, r.conflicting_duplicates) == (3, 2)
    assert con.execute("SELECT raw FROM usage_quarantine WHERE reason = 'conflicting_duplicate' "
                       "ORDER BY source_line").fetchall() == [(c.decode(),) for c in conflicting]


def test_staged_byte_offsets_are_where_lines_start(tmp_path, con):
    """Offsets are counted in bytes (not characters), across blank lines and read batches, and are
    exact only when every line ends with one byte."""
    from metering.ingest import load, readers
    from metering.rules.meters import load_meters

    data, _ = _conflicting_lines(b"\n")
    data = data * 3
    starts = [0] + [i + 1 for i, byte in enumerate(data) if byte == 0x0A][:-1]
    for ending, exact in ((b"\n", True), (b"\r\n", False)):
        path = tmp_path / f"f{len(ending)}.jsonl"
        path.write_bytes(data.replace(b"\n", ending))
        sink = load._EventsSink(con, load_meters(), NOW)
        info = readers.stage_lines(con, path, "jsonl", sink, readers._insert_jsonl_batch, batch_bytes=512)
        assert info.offsets_exact is exact
        if exact:
            assert con.execute(f"SELECT line, byte_offset FROM {load.EVENTS} WHERE reason IS NULL "
                               f"ORDER BY line").fetchall() == [
                (line, starts[line - 1]) for line in range(1, len(starts) + 1)
                if data.split(b"\n")[line - 1].startswith(b'{"event_id": "') and b"\xff" not in data.split(b"\n")[line - 1]]
        load._drop_temp(con)


def test_offsets_that_no_longer_match_the_file_fall_back_to_none(tmp_path):
    from metering.ingest import readers

    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"event_id": "a"}\n{"event_id": "b"}\n')
    assert readers.lines_at(path, [(2, 18, "b")]) == [(2, b'{"event_id": "b"}')]
    assert readers.lines_at(path, [(2, 18, "a")]) is None   # another event at that place
    assert readers.lines_at(path, [(2, 17, "b")]) is None   # not the start of a line
    assert readers.lines_at(path, [(2, None, "b")]) is None


def test_deeply_nested_line_falls_back_to_the_re_read(tmp_path):
    from metering.ingest import readers

    path = tmp_path / "f.jsonl"
    deep = '{"event_id": "a", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    path.write_text(deep + "\n")
    assert readers.lines_at(path, [(1, 0, "a")]) is None


def test_many_conflicts_are_found_by_re_reading(tmp_path, con, monkeypatch):
    """Past load.SEEK_MAX_LINES conflicting lines the file is re-read instead: the same raw text."""
    from metering.ingest import load

    monkeypatch.setattr(load, "SEEK_MAX_LINES", 1)
    data, conflicting = _conflicting_lines(b"\n")
    (tmp_path / "f.jsonl").write_bytes(data)
    r = ingest_file(con, tmp_path / "f.jsonl", now=NOW)
    assert r.conflicting_duplicates == 2
    assert con.execute("SELECT raw FROM usage_quarantine WHERE reason = 'conflicting_duplicate' "
                       "ORDER BY source_line").fetchall() == [(c.decode(),) for c in conflicting]


@pytest.mark.parametrize("id_key", ["length(event_id)", "0"])
def test_ids_whose_keys_collide_are_still_judged_by_event_id(tmp_path, monkeypatch, id_key):
    """The batch is grouped by a hash of the id (`dedupe.ID_KEY`); ids whose hashes collide must come
    out as if they did not. With a key that collides for every id of one length (or for all ids), the
    outcomes equal those under the real hash."""
    from metering import warehouse
    from metering.ingest import dedupe

    files = [
        [event("aa", value=1), event("bb"), event("cc"), event("aa", value=1), event("dd", value=2)],
        [event("aa", value=3), event("bb"), event("ee"), event("ff", value=1), event("ff", value=2),
         event("aa", value=3), event("gg")],
    ]

    def outcome(run: str) -> tuple:
        con = warehouse.connect(tmp_path / f"{run}.duckdb")
        results = [ingest_file(con, write_lines(tmp_path / run / f"{i}.jsonl", lines), now=NOW)
                   for i, lines in enumerate(files)]
        counts = [(r.rows_accepted, r.rows_quarantined, r.duplicates_dropped, r.conflicting_duplicates)
                  for r in results]
        clean = con.execute("SELECT event_id, value::INT, file_id, source_line FROM usage_events ORDER BY ALL").fetchall()
        rejected = con.execute("SELECT event_id, source_line, reason FROM usage_quarantine ORDER BY ALL").fetchall()
        con.close()
        return counts, clean, rejected

    expected = outcome("hash")
    assert expected[0] == [(4, 0, 1, 0), (3, 2, 2, 2)]
    monkeypatch.setattr(dedupe, "ID_KEY", id_key)
    assert outcome("colliding") == expected
