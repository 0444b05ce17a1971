"""Idempotence, late events, unreadable files, hostile ids, the manifest."""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
from datetime import date
from decimal import Decimal

import polars as pl
import pytest

from metering.errors import BadInputError
from metering.ingest import checks, ingest_file, ingest_files
from tests.metering.ingest.conftest import NOW, event, table_digest, write_lines

TABLES = ("usage_events", "usage_quarantine", "ingested_files")


def _digests(con):
    return {t: table_digest(con, t) for t in TABLES}


def test_reingest_changes_nothing(tmp_path, con):
    path = write_lines(tmp_path / "f.jsonl", [event("a"), event("a", value=2), "{bad", event("b")])
    first = ingest_file(con, path, now=NOW)
    before = _digests(con)
    again = ingest_file(con, path, now=NOW)
    copy = shutil.copy(path, tmp_path / "copy.jsonl")
    renamed = ingest_file(con, copy, now=NOW)
    assert first.status == "ingested" and again.status == renamed.status == "skipped"
    assert _digests(con) == before


def test_file_identity_is_the_content_hash_whichever_way_it_is_computed(tmp_path, con):
    # A file of a size never ingested cannot be a re-ingest: its hash is computed beside the read.
    # A file of a size already seen is hashed first, to skip it without reading when it is a copy.
    first = write_lines(tmp_path / "a.jsonl", [event("a")])
    same_size = write_lines(tmp_path / "b.jsonl", [event("b")])
    other_size = write_lines(tmp_path / "c.jsonl", [event("c"), event("d")])
    assert first.stat().st_size == same_size.stat().st_size != other_size.stat().st_size
    results = [ingest_file(con, p, now=NOW) for p in (first, same_size, other_size)]
    assert [r.status for r in results] == ["ingested"] * 3
    expected = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, same_size, other_size)]
    assert [r.file_hash for r in results] == expected
    assert con.execute("SELECT file_hash, bytes FROM ingested_files ORDER BY file_id").fetchall() == [
        (h, p.stat().st_size) for h, p in zip(expected, (first, same_size, other_size))]
    # a manifest entry of unknown size (older warehouses) may be any file: copies are still skipped
    con.execute("UPDATE ingested_files SET bytes = NULL WHERE file_hash = ?", [expected[2]])
    before = _digests(con)
    copies = [ingest_file(con, shutil.copy(p, tmp_path / f"copy-{p.name}"), now=NOW)
              for p in (first, other_size)]
    assert [(r.status, r.file_hash) for r in copies] == [("skipped", expected[0]), ("skipped", expected[2])]
    assert _digests(con) == before


@pytest.mark.parametrize("hashed", ["beside the read", "before the read"])
def test_a_file_that_changes_while_it_is_read_is_refused(tmp_path, con, monkeypatch, hashed):
    """A writer still appending: the rows read and the content hash would describe different bytes, and
    a manifest entry for content not read makes the complete file a skipped "re-ingest" for ever.
    The writer is simulated by our own hash function appending a line (beside the read: before it
    hashes; hashed first, for a file of a size seen before: after it hashed, before the read)."""
    from metering.ingest import readers

    if hashed == "before the read":   # a manifest entry of the same size makes the hash come first
        ingest_file(con, write_lines(tmp_path / "same-size.jsonl", [event("x")]), now=NOW)
    path = write_lines(tmp_path / "growing.jsonl", [event("a")])
    real_hash = readers.file_hash

    def hash_while_a_writer_appends(target):
        if hashed == "beside the read":
            with open(target, "ab") as fh:
                fh.write((json.dumps(event("b")) + "\n").encode())
            return real_hash(target)
        digest = real_hash(target)
        with open(target, "ab") as fh:
            fh.write((json.dumps(event("b")) + "\n").encode())
        return digest

    monkeypatch.setattr(readers, "file_hash", hash_while_a_writer_appends)
    before = _digests(con)
    with pytest.raises(BadInputError, match="growing.jsonl: the file changed while it was being read"):
        ingest_file(con, path, now=NOW)
    assert _digests(con) == before
    monkeypatch.setattr(readers, "file_hash", real_hash)
    again = ingest_file(con, path, now=NOW)   # the complete file, once the writer is done
    assert (again.status, again.rows_accepted) == ("ingested", 2)
    assert again.file_hash == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_file_rewritten_while_read_is_changed_not_unreadable(tmp_path, con, monkeypatch):
    """A writer rewriting a gzip file in place (cp, rsync --inplace) while it is read: half-written, it
    reads as corrupt. That was an unreadable file (BadInputError), which the Dagster asset skips for
    good; it is a changed one (FileChangedError, which fails the run for the sensor to retry)."""
    from metering.errors import FileChangedError
    from metering.ingest import readers

    full = gzip.compress(b"".join(json.dumps(event(f"e{i}")).encode() + b"\n" for i in range(2000)), mtime=0)
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(full)
    real = readers.READERS["jsonl.gz"]

    def rewritten_during_read(con, target, fmt, sink):
        target.write_bytes(full[: len(full) // 2])
        return real(con, target, fmt, sink)

    monkeypatch.setitem(readers.READERS, "jsonl.gz", rewritten_during_read)
    before = _digests(con)
    with pytest.raises(FileChangedError, match="a.jsonl.gz: the file changed while it was being read"):
        ingest_file(con, path, now=NOW)
    assert _digests(con) == before
    monkeypatch.setitem(readers.READERS, "jsonl.gz", real)
    path.write_bytes(full)
    assert ingest_file(con, path, now=NOW).rows_accepted == 2000


def test_a_file_rewritten_as_it_is_opened_is_changed_not_unreadable(tmp_path, con, monkeypatch):
    """The magic-byte check once ran before the file's identity was taken: a gzip file truncated by a
    writer just then failed as "not gzip", an unreadable file the Dagster asset skips for good."""
    from metering.errors import FileChangedError
    from metering.ingest import readers

    full = gzip.compress(b"".join(json.dumps(event(f"e{i}")).encode() + b"\n" for i in range(3)), mtime=0)
    path = tmp_path / "a.jsonl.gz"
    path.write_bytes(full)
    real = readers.check_magic

    def truncated_as_opened(target, fmt):
        target.write_bytes(b"")
        return real(target, fmt)

    monkeypatch.setattr(readers, "check_magic", truncated_as_opened)
    with pytest.raises(FileChangedError, match="a.jsonl.gz: the file changed while it was being read"):
        ingest_file(con, path, now=NOW)
    monkeypatch.setattr(readers, "check_magic", real)
    path.write_bytes(full)
    assert ingest_file(con, path, now=NOW).rows_accepted == 3


def test_late_events_land_on_their_own_date(tmp_path, con):
    ingest_file(con, write_lines(tmp_path / "d1.jsonl", [event("a", timestamp="2026-10-05T10:00:00Z")]), now=NOW)
    late = write_lines(tmp_path / "d2.jsonl", [event("b", timestamp="2026-10-09T10:00:00Z"),
                                               event("c", timestamp="2026-10-02T23:59:59.999Z")])
    result = ingest_file(con, late, now=NOW)
    assert result.event_dates == ["2026-10-02", "2026-10-09"]
    assert con.execute("SELECT event_dates FROM ingested_files WHERE path = ?", [str(late)]).fetchone()[0] == \
        json.dumps(["2026-10-02", "2026-10-09"])
    assert con.execute("SELECT event_id, event_date::VARCHAR FROM usage_events ORDER BY 1").fetchall() == [
        ("a", "2026-10-05"), ("b", "2026-10-09"), ("c", "2026-10-02")]


def test_clean_rows_are_stored_in_file_order(tmp_path, con):
    # no sort on insert (it cost 3.7 s per 10M events): a log written in time order stays in time
    # order, which is what keeps DuckDB's zone maps tight for date-range scans
    lines = [event(f"e{i}", timestamp=f"2026-10-{d:02d}T00:00:00Z") for i, d in enumerate([9, 3, 7, 1])]
    ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert [r[0] for r in con.execute("SELECT event_id FROM usage_events").fetchall()] == ["e0", "e1", "e2", "e3"]


HOSTILE = ["'; DROP TABLE usage_events; --", 'a"b\\"c', "Grüße 日本語 😀", "x' OR '1'='1", "$1 ? %s {0}"]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_hostile_ids_are_stored_verbatim(suffix, tmp_path, con):
    if suffix == ".jsonl":
        path = write_lines(tmp_path / "f.jsonl", [event(h, customer_id=h) for h in HOSTILE])
    else:
        path = tmp_path / "f.csv"
        pl.DataFrame({"event_id": HOSTILE, "customer_id": HOSTILE, "meter": ["api_calls"] * 5,
                      "timestamp": ["2026-10-05T00:00:00Z"] * 5}).write_csv(path)
    assert ingest_file(con, path, now=NOW).rows_accepted == len(HOSTILE)
    assert sorted(r[0] for r in con.execute("SELECT event_id FROM usage_events").fetchall()) == sorted(HOSTILE)
    assert con.execute("SELECT count(*) FROM usage_events WHERE event_id = customer_id").fetchone()[0] == 5


def _unreadable(tmp_path):
    good = write_lines(tmp_path / "src.jsonl", [event(f"e{i}") for i in range(200)])
    gz = gzip.compress(good.read_bytes())
    (tmp_path / "truncated.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    (tmp_path / "plain.jsonl.gz").write_bytes(good.read_bytes())
    (tmp_path / "gzip.jsonl").write_bytes(gz)
    (tmp_path / "junk.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 4)
    (tmp_path / "text.parquet").write_bytes(good.read_bytes())
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(256)) * 50)
    (tmp_path / "noheader.csv").write_text("a,b,c\n1,2,3\n")
    (tmp_path / "data.txt").write_text("hello")
    (tmp_path / "both.csv").write_text("event_id,customer_id,meter,timestamp,properties,properties.model\n")
    import pyarrow as pa
    import pyarrow.parquet as pq
    from decimal import Decimal
    base = {"event_id": ["w1"], "customer_id": ["c"], "meter": ["tokens"], "timestamp": ["2026-10-05T12:00:00Z"]}
    # DuckDB reads a decimal wider than 38 digits as a float, and a wrong one (0.05 -> 14073748835532.8)
    pq.write_table(pa.table({**base, "value": pa.array([Decimal("0.05")], pa.decimal256(60, 2))}),
                   tmp_path / "wide.parquet")
    pq.write_table(pa.table({**base, "value": [1]}).append_column("event_id", pa.array(["w2"])),
                   tmp_path / "twice.parquet")
    # DuckDB's names are case-insensitive: it renames the second (VALUE -> value_1, A -> a_1), and
    # cannot address a struct field without a name (once a traceback)
    pq.write_table(pa.table({**base, "value": [1], "VALUE": [2]}), tmp_path / "case.parquet")
    struct = pa.struct([("A", pa.string()), ("a", pa.string())])
    pq.write_table(pa.table({**base, "properties": pa.array([{"A": "x", "a": "y"}], struct)}), tmp_path / "struct.parquet")
    pq.write_table(pa.table({**base, "properties": pa.array([{"": "x"}], pa.struct([("", pa.string())]))}),
                   tmp_path / "unnamed.parquet")
    pq.write_table(pa.table({**base, "x": pa.array([[Decimal("1")]], pa.list_(pa.decimal256(50, 1)))}),
                   tmp_path / "listdec.parquet")
    return {
        "truncated.jsonl.gz": "truncated or corrupt gzip",
        "plain.jsonl.gz": "not a gzip file",
        "gzip.jsonl": "the content is gzip",
        "junk.parquet": "cannot read the Parquet file",
        "text.parquet": "not a Parquet file",
        "binary.jsonl": "not JSON lines",
        "noheader.csv": "lacks required column(s) event_id, customer_id, meter, timestamp",
        "data.txt": "unknown file type",
        "both.csv": "both a properties column (a JSON object) and properties.<name> columns",
        "wide.parquet": "value (decimal256(60, 2)) is a decimal wider than 38 digits, which cannot be read exactly",
        "twice.parquet": "the columns repeat(s) event_id",
        "case.parquet": "the columns repeat(s) VALUE, value (names differing only in case count as one)",
        "struct.parquet": "the fields of properties repeat(s) A, a",
        "unnamed.parquet": "the fields of properties include(s) a field without a name",
        "listdec.parquet": "x[].element (decimal256(50, 1)) is a decimal wider than 38 digits",
    }


@pytest.mark.parametrize("name", ["usage[1]", "a?", "a*", "[ab]c"])
def test_a_file_name_is_never_a_pattern(name, tmp_path, con):
    """DuckDB's readers take `*`, `?` and `[` in a path as a glob: `usage[1].parquet` was read as
    `usage1.parquet`, its own rows lost and the neighbour's stored under its hash."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from metering.ingest.peek import event_date_range
    from metering.rating.whatif import read_usage_file

    folder = tmp_path / "raw[1]"   # the folder's name too
    folder.mkdir()
    for decoy in ("usage1", "a1", "ab", "ac", "a", "bc"):
        pq.write_table(pa.table({"event_id": [f"decoy-{decoy}"], "customer_id": ["c"], "meter": ["tokens"],
                                 "timestamp": ["2026-10-01T00:00:00Z"], "value": ["1"]}), folder / f"{decoy}.parquet")
        write_lines(folder / f"{decoy}.jsonl", [event(f"decoy-{decoy}", timestamp="2026-10-01T00:00:00Z")])
    own = {"event_id": [f"own-{name}"], "customer_id": ["c"], "meter": ["tokens"],
           "timestamp": ["2026-10-09T00:00:00Z"], "value": ["7"]}
    pq.write_table(pa.table(own), folder / f"{name}.parquet")
    write_lines(folder / f"{name}.jsonl", [event(f"own-{name}", timestamp="2026-10-09T00:00:00Z", value=7)])
    for suffix in (".parquet", ".jsonl"):
        path = folder / f"{name}{suffix}"
        r = ingest_file(con, path, now=NOW)
        assert (r.rows_read, r.rows_accepted, r.duplicates_dropped) == (1, 1, 0) if suffix == ".parquet" else (1, 0, 1)
        assert event_date_range(path) == (date(2026, 10, 9), date(2026, 10, 9))
    assert con.execute("SELECT event_id, value::VARCHAR FROM usage_events").fetchall() == [(f"own-{name}", "7.000000000000")]
    assert read_usage_file(folder / f"{name}.parquet")["event_id"].to_list() == [f"own-{name}"]


def test_a_relative_path_under_a_folder_named_tilde_is_read_as_itself(tmp_path, con, monkeypatch):
    """DuckDB reads a leading `~` as the home folder: `metering ingest ~/x.parquet` run where `~` is a
    folder (the shell leaves a quoted `'~'` alone) read `$HOME/x.parquet`, storing the decoy's rows under
    this file's hash."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from metering.ingest.peek import event_date_range

    home = tmp_path / "home"
    (tmp_path / "work" / "~").mkdir(parents=True)
    home.mkdir()
    row = {"customer_id": ["c"], "meter": ["tokens"], "value": ["7"]}
    pq.write_table(pa.table({"event_id": ["decoy"], "timestamp": ["2026-10-01T00:00:00Z"], **row}), home / "x.parquet")
    pq.write_table(pa.table({"event_id": ["own"], "timestamp": ["2026-10-09T00:00:00Z"], **row}),
                   tmp_path / "work" / "~" / "x.parquet")
    con.execute("SET home_directory = ?", [str(home)])
    monkeypatch.chdir(tmp_path / "work")
    result = ingest_file(con, "~/x.parquet", now=NOW)
    assert result.file_hash == hashlib.sha256((tmp_path / "work" / "~" / "x.parquet").read_bytes()).hexdigest()
    assert con.execute("SELECT event_id FROM usage_events").fetchall() == [("own",)]
    assert event_date_range(tmp_path / "work" / "~" / "x.parquet") == (date(2026, 10, 9), date(2026, 10, 9))
    # Arrow's file reader, which reads JSON lines and CSV, does the same
    monkeypatch.setenv("HOME", str(home))
    write_lines(home / "y.jsonl", [event("decoy-line", timestamp="2026-10-01T00:00:00Z")])
    write_lines(tmp_path / "work" / "~" / "y.jsonl", [event("own-line", timestamp="2026-10-09T00:00:00Z")])
    assert ingest_file(con, "~/y.jsonl", now=NOW).rows_accepted == 1
    assert con.execute("SELECT event_id FROM usage_events ORDER BY 1").fetchall() == [("own",), ("own-line",)]
    # made absolute without folding `link/..` as text: through a link, `..` is the link target's parent
    (tmp_path / "elsewhere" / "sub").mkdir(parents=True)
    (tmp_path / "work" / "link").symlink_to(tmp_path / "elsewhere" / "sub")
    write_lines(tmp_path / "elsewhere" / "z.jsonl", [event("through-the-link", timestamp="2026-10-09T00:00:00Z")])
    write_lines(tmp_path / "work" / "z.jsonl", [event("beside-the-link", timestamp="2026-10-09T00:00:00Z")])
    result = ingest_file(con, "link/../z.jsonl", now=NOW)
    assert result.file_hash == hashlib.sha256((tmp_path / "elsewhere" / "z.jsonl").read_bytes()).hexdigest()
    assert con.execute("SELECT count(*) FROM usage_events WHERE event_id = 'through-the-link'").fetchone() == (1,)


def test_a_parquet_name_holding_a_backslash_and_a_pattern_character_is_refused_by_name(tmp_path, con):
    """No escape makes DuckDB's matcher take `u\\[1].parquet` literally once `[` is escaped: refused,
    naming the file (exit 3 on the command line), never read as another file's pattern. A backslash
    alone is an ordinary character."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = {"event_id": ["b"], "customer_id": ["c"], "meter": ["tokens"], "timestamp": ["2026-10-09T00:00:00Z"],
           "value": ["7"]}
    pq.write_table(pa.table(row), tmp_path / "u\\[1].parquet")
    pq.write_table(pa.table(row), tmp_path / "v\\x.parquet")
    with pytest.raises(BadInputError, match=r"u\\\[1\]\.parquet: cannot be read: its path holds a backslash"):
        ingest_file(con, tmp_path / "u\\[1].parquet", now=NOW)
    assert ingest_file(con, tmp_path / "v\\x.parquet", now=NOW).rows_accepted == 1


def test_unreadable_files_fail_clearly_and_change_nothing(tmp_path, con):
    ingest_file(con, write_lines(tmp_path / "ok.jsonl", [event("first")]), now=NOW)
    before = _digests(con)
    for name, why in _unreadable(tmp_path).items():
        with pytest.raises(BadInputError) as err:
            ingest_file(con, tmp_path / name, now=NOW)
        assert str(tmp_path / name) in str(err.value) and why in str(err.value), str(err.value)
        assert _digests(con) == before, name


def test_a_failing_file_keeps_earlier_files(tmp_path, con):
    ok = write_lines(tmp_path / "a.jsonl", [event("a")])
    (tmp_path / "b.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(BadInputError):
        ingest_files(con, [ok, tmp_path / "b.parquet"], now=NOW)
    assert con.execute("SELECT count(*) FROM ingested_files").fetchone()[0] == 1


def test_manifest_counts_match_rows(tmp_path, con):
    path = write_lines(tmp_path / "f.jsonl", [event("a"), event("a"), event("a", value=2), "{", event("b")])
    ingest_file(con, path, now=NOW)
    row = con.execute("SELECT rows_read, rows_accepted, rows_quarantined, duplicates_dropped, conflicting_duplicates, "
                      "bytes FROM ingested_files").fetchone()
    assert row == (5, 2, 2, 1, 1, path.stat().st_size)
    assert con.execute("SELECT count(*) FROM usage_events").fetchone()[0] == 2
    assert con.execute("SELECT count(*) FROM usage_quarantine").fetchone()[0] == 2


def test_values_read_add_up_to_values_stored_quarantined_and_dropped(tmp_path, con):
    """I1 in value, by hand: every exact quantity a row carries is accepted, quarantined (with the row)
    or dropped with a duplicate; a value that is not an exact quantity is in none of the sums."""
    path = write_lines(tmp_path / "f.jsonl", [
        event("a", value="1.5"),                      # accepted                1.5
        event("a", value=1.5),                        # exact duplicate         1.5 dropped
        event("a", value="2.25"),                     # conflicting version     2.25 quarantined
        event("b", value=-3),                         # negative_value         -3 quarantined
        event("c", meter="gpu_hours", value="4"),     # unknown_meter           4 quarantined
        event("d", customer_id=7, value="0.000000000001"),  # bad_type (customer) 0.000000000001 quarantined
        event("e", value="1e16"),                     # value_too_large: not a quantity
        event("f", value="0.0000000000001"),          # value_too_precise: not exactly one
        event("g", value="twelve"),                   # bad_type: not a number
        '{"event_id": "h", "value": 9',               # bad_json
        event("i", meter="api_calls", value=...),     # a count: no value
    ])
    r = ingest_file(con, path, now=NOW)
    assert (r.rows_read, r.rows_accepted, r.rows_quarantined, r.duplicates_dropped) == (11, 2, 8, 1)
    assert r.value_accepted == Decimal("1.5")
    assert r.value_dropped == Decimal("1.5")
    assert r.value_quarantined == Decimal("2.25") - 3 + 4 + Decimal("0.000000000001")
    assert r.value_read == Decimal("6.250000000001") and r.conserved
    assert r.as_dict()["value_read"] == "6.250000000001" and r.as_dict()["value_dropped"] == "1.5"
    assert con.execute("SELECT value_read, value_accepted, value_quarantined, value_dropped FROM ingested_files"
                       ).fetchone() == (Decimal("6.250000000001"), Decimal("1.5"), Decimal("3.250000000001"),
                                        Decimal("1.5"))
    assert dict(con.execute("SELECT event_id, value FROM usage_quarantine").fetchall()) == {
        "a": Decimal("2.25"), "b": Decimal(-3), "c": Decimal(4), "d": Decimal("0.000000000001"),
        "e": None, "f": None, "g": None, None: None}  # the broken line has no id
    assert checks.conservation(con).passed


def test_values_add_up_beyond_pythons_default_28_digits(tmp_path, con):
    """11 of the largest valid values sum to 29 digits: Python's default decimal context rounded the
    sum, and a valid file was refused as not conserved (exit 4)."""
    big = "999999999999999.999999999999"
    lines = [event(f"big{i}", value=big) for i in range(11)] + [event("big0", value=big), event("n", value="-" + big)]
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", lines), now=NOW)
    assert (r.rows_accepted, r.duplicates_dropped, r.rows_quarantined) == (11, 1, 1) and r.conserved
    # 12 x big - big, by hand: 11 accepted, 1 dropped, -1 quarantined (negative_value)
    assert {k: r.as_dict()[k] for k in ("value_read", "value_accepted", "value_dropped", "value_quarantined")} == {
        "value_read": "10999999999999999.999999999989", "value_accepted": "10999999999999999.999999999989",
        "value_dropped": big, "value_quarantined": "-" + big}
    assert checks.conservation(con).passed


def test_the_conservation_check_sees_a_changed_value_that_row_counts_miss(tmp_path, con):
    ingest_file(con, write_lines(tmp_path / "f.jsonl", [event("a", value=5), event("b", value=-1)]), now=NOW)
    assert checks.conservation(con).passed
    con.execute("UPDATE usage_events SET value = value + 0.000000000001")
    outcome = checks.conservation(con)
    assert not outcome.passed and outcome.metadata["files_with_count_mismatch"] == 1
    con.execute("UPDATE usage_events SET value = value - 0.000000000001")
    con.execute("UPDATE usage_quarantine SET value = NULL")  # a quarantined quantity lost
    assert not checks.conservation(con).passed
    # a manifest written before it recorded values (migration 005) is checked by rows only
    con.execute("UPDATE ingested_files SET value_read = NULL, value_accepted = NULL, value_quarantined = NULL, "
                "value_dropped = NULL")
    outcome = checks.conservation(con)
    assert outcome.passed and outcome.metadata["files_without_value_sums"] == 1
    # events whose file has no manifest entry are orphans, also beside a hand-made entry without a
    # file_id (a NULL in the `NOT IN` list once hid every orphan)
    con.execute("INSERT INTO ingested_files (file_hash, path, format, rows_read, rows_accepted, rows_quarantined, "
                "duplicates_dropped, ingested_at) VALUES ('by-hand', 'x.jsonl', 'jsonl', 0, 0, 0, 0, now())")
    con.execute("UPDATE usage_events SET file_id = 99")
    outcome = checks.conservation(con)
    assert not outcome.passed and outcome.metadata["rows_without_manifest"] == 1


@pytest.mark.parametrize("bad_line", [None, 1, 6], ids=["clean", "first-half", "second-half"])
def test_contract_check_catches_a_breach_in_either_half(bad_line, tmp_path, con):
    """The pandera check reads the clean rows in two halves, on two threads: a row that breaks the
    usage_events contract (here a meter that is not defined) fails the file whichever half holds it."""
    from metering.errors import CheckFailedError
    from metering.ingest import load, readers
    from metering.rules.meters import load_meters

    meters = load_meters()
    path = write_lines(tmp_path / "f.jsonl", [event(f"e{i}") for i in range(1, 7)])
    sink = load._EventsSink(con, meters, NOW)
    assert readers.stage_jsonl(con, path, "jsonl", sink).rows == 6
    if bad_line is None:
        load._pandera_check(con, meters, path)
    else:
        con.execute(f"UPDATE {load.EVENTS} SET meter = 'not_a_meter' WHERE line = ?", [bad_line])
        with pytest.raises(CheckFailedError, match=r"f\.jsonl: clean rows breach the usage_events contract"):
            load._pandera_check(con, meters, path)
    load._drop_temp(con)
    assert con.execute("SELECT count(*) FROM duckdb_databases() WHERE database_name = ?",
                       [load.STAGE_DB]).fetchone()[0] == 0


def test_a_file_whose_every_line_breaks_a_json_rule_but_parses_is_quarantined_not_refused(tmp_path, con):
    """Lines that parse but carry NaN in a field kept in `extra` are `bad_json` rows: a file of only such
    lines was refused whole as "not JSON lines: none of its lines parses (wrong format?)", so under
    Dagster it was skipped as unreadable, its rows never quarantined. A file of lines that do not parse
    is still refused."""
    line = ('{"event_id":"n%d","customer_id":"c","meter":"tokens","timestamp":"2026-10-05T00:00:00Z",'
            '"value":1,"latency":NaN}')
    result = ingest_file(con, write_lines(tmp_path / "nan.jsonl", [line % 1, line % 2]), now=NOW)
    assert (result.status, result.rows_read, result.rows_accepted, result.rows_quarantined) == ("ingested", 2, 0, 2)
    assert con.execute("SELECT event_id, reason FROM usage_quarantine ORDER BY 1").fetchall() == [
        ("n1", "bad_json"), ("n2", "bad_json")]
    # nor is a file of objects that name a key twice, with no event_id to read (the first fix of the
    # above took a missing event_id for a line that does not parse)
    result = ingest_file(con, write_lines(tmp_path / "rep.jsonl", ['{"a": 1, "a": 2}']), now=NOW)
    assert (result.status, result.rows_quarantined, result.reasons) == ("ingested", 1, {"bad_json": 1})
    with pytest.raises(BadInputError, match="none of its 2 line"):
        ingest_file(con, write_lines(tmp_path / "broken.jsonl", ['{"event_id": "x', "[1, 2]"]), now=NOW)


def test_files_in_a_hidden_folder_are_not_picked_up_from_a_folder(tmp_path):
    """`raw/.incoming/` is where a writer stages files before moving them into place, as under a hidden
    name: a folder's expansion (the CLI's and the sensor's) took them, half-written or not."""
    from metering.ingest import expand_paths

    raw = tmp_path / "raw"
    for name in (".incoming/a.jsonl", ".incoming/deep/b.jsonl", ".c.jsonl", "day/.tmp/d.jsonl", "day/e.jsonl",
                 "f.jsonl"):
        write_lines(raw / name, [event("x")])
    assert expand_paths([raw]) == [raw / "day" / "e.jsonl", raw / "f.jsonl"]
    # a folder named on the command line is taken as given, hidden or not
    assert expand_paths([raw / ".incoming" / "deep"]) == [raw / ".incoming" / "deep" / "b.jsonl"]


def test_a_file_name_that_is_not_utf8_is_refused_by_name_not_a_traceback(tmp_path, con):
    """Arrow and DuckDB cannot open a name Python holds with surrogates: `metering ingest` ended in a
    UnicodeEncodeError traceback (exit 1), and the Dagster asset failed every run until the sensor gave up
    on the files after it too. Now bad input (exit 3), its bad bytes shown escaped, nothing stored."""
    import os

    from click.testing import CliRunner

    from metering.cli import cli

    bad = tmp_path / os.fsdecode(b"usage-\xff.jsonl")
    bad.write_bytes(json.dumps(event("x")).encode() + b"\n")
    with pytest.raises(BadInputError, match=r"usage-\\xff\.jsonl: the file name is not valid UTF-8"):
        ingest_file(con, bad, now=NOW)
    assert con.execute("SELECT count(*) FROM ingested_files").fetchone() == (0,)
    result = CliRunner().invoke(cli, ["ingest", "--warehouse", str(tmp_path / "w.duckdb"), str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert "the file name is not valid UTF-8" in result.output and "Traceback" not in result.output
