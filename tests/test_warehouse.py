import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
from decimal import Decimal

import duckdb
import polars as pl
import pytest

from metering import warehouse
from metering.errors import BadInputError, WarehouseLockedError


@contextlib.contextmanager
def _held(path, read_only=False):
    """Another process holding `path` as the warehouse's writer (or a read-only reader) until the block
    ends; yields it."""
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from metering import warehouse
        con = warehouse.connect({str(path)!r}, read_only={read_only!r})
        print("ready", flush=True)
        sys.stdin.readline()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield holder
    finally:
        holder.stdin.write("\n"); holder.stdin.flush(); holder.wait(timeout=30)


def test_sessions_are_utc_and_migrated(tmp_path):
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        assert con.execute("SELECT current_setting('TimeZone')").fetchone()[0] == "UTC"
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        assert {"usage_events", "usage_quarantine", "ingested_files", "schema_migrations"} <= tables
        # Re-opening applies nothing new.
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        assert warehouse.apply_migrations(con) == []


def test_replace_rows_is_idempotent_and_exact(tmp_path):
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE t (d DATE, amount DECIMAL(38, 12))")
        frame = pl.DataFrame(
            {"d": [pl.date(2026, 1, 1)] * 2, "amount": [Decimal("0.000000000001"), Decimal("123456789012345.5")]}
        ).with_columns(pl.col("amount").cast(pl.Decimal(38, 12)), pl.lit("2026-01-01").str.to_date().alias("d"))
        for _ in range(2):
            warehouse.replace_rows(con, "t", "d = ?", ["2026-01-01"], frame)
        rows = con.execute("SELECT amount FROM t ORDER BY amount").fetchall()
        assert [r[0] for r in rows] == [Decimal("0.000000000001"), Decimal("123456789012345.500000000000")]


def test_replace_rows_rolls_back_on_failure(tmp_path):
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE t (k INTEGER NOT NULL)")
        con.execute("INSERT INTO t VALUES (1)")
        bad = pl.DataFrame({"k": [None]}, schema={"k": pl.Int32})
        with pytest.raises(duckdb.ConstraintException):
            warehouse.replace_rows(con, "t", "k = ?", [1], bad)
        assert con.execute("SELECT k FROM t").fetchall() == [(1,)]


def test_second_writer_process_fails_fast_with_clear_error(tmp_path):
    path = tmp_path / "w.duckdb"
    with _held(path) as holder:
        with pytest.raises(WarehouseLockedError, match="held by another writing process") as raised:
            warehouse.connect(path)
        assert "read-only" not in str(raised.value)
        assert f"(PID {holder.pid}, " in str(raised.value)   # which process holds it, as DuckDB says
        with pytest.raises(WarehouseLockedError, match=f"a running job holds the warehouse \\(PID {holder.pid}, "):
            warehouse.publish(path, tmp_path / "a.duckdb")   # publishing reads it, which the writer's lock forbids


def test_a_read_only_reader_holding_the_warehouse_is_named_as_a_reader(tmp_path, caplog):
    """DuckDB lets no writer in beside a read-only connection of another process (a notebook, say): the
    writer is told to close that reader, not to wait for a running job that does not exist."""
    path = tmp_path / "w.duckdb"
    warehouse.connect(path).close()
    with _held(path, read_only=True) as holder:
        with caplog.at_level("WARNING", logger="metering.warehouse"), pytest.raises(WarehouseLockedError) as raised:
            warehouse.connect(path, wait_seconds=0.3)
        program = os.path.realpath(sys.executable)   # DuckDB names the holder's executable, links resolved
        assert str(raised.value) == (
            f"{path}: the warehouse is open read-only in another process (PID {holder.pid}, {program}), "
            "which keeps every writer out: close that connection (analysts query the published snapshot, which "
            "keeps no job waiting)")
        assert [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()] == [
            f"{path}: open read-only in another process (PID {holder.pid}, {program}); waiting up to 0.3 s "
            "for it to close"]
        warehouse.connect(path, read_only=True).close()   # readers share the file


def test_snapshot_readable_while_writer_holds_warehouse(tmp_path):
    wh, snap = tmp_path / "w.duckdb", tmp_path / "a.duckdb"
    with warehouse.open_warehouse(wh) as con:
        con.execute("CREATE TABLE t AS SELECT 42 AS answer")
        warehouse.publish(snapshot=snap, con=con)
        # The writer still holds the warehouse; the snapshot opens read-only all the same.
        reader = duckdb.connect(str(snap), read_only=True)
        assert reader.execute("SELECT answer FROM t").fetchone() == (42,)
        con.execute("UPDATE t SET answer = 43")
        warehouse.publish(snapshot=snap, con=con)
        # The old reader keeps its consistent view; a new reader sees the new snapshot.
        assert reader.execute("SELECT answer FROM t").fetchone() == (42,)
        reader.close()
        assert duckdb.connect(str(snap), read_only=True).execute("SELECT answer FROM t").fetchone() == (43,)


def test_publish_without_a_connection_copies_every_table(tmp_path):
    wh, snap = tmp_path / "w.duckdb", tmp_path / "s.duckdb"
    with warehouse.open_warehouse(wh) as con:
        con.execute("CREATE TABLE t AS SELECT 'it''s' AS text, 1.5::DECIMAL(38, 12) AS amount")
    warehouse.publish(wh, snap)
    reader = duckdb.connect(str(snap), read_only=True)
    assert reader.execute("SELECT text, amount FROM t").fetchone() == ("it's", Decimal("1.5"))
    assert reader.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)


def _copies(caplog) -> list[str]:
    """How each publish in `caplog` copied the warehouse (`file` or `tables`)."""
    return [r.copied for r in caplog.records if r.name == "metering.warehouse" and hasattr(r, "copied")]


def _analyst_views(path) -> int:
    with duckdb.connect(str(path), read_only=True) as reader:
        return reader.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'analytics'").fetchone()[0]


def test_a_warehouse_whose_file_holds_every_change_is_published_by_copying_the_file(tmp_path, caplog):
    """The quick copy (the file's bytes, 0.2 s at 11M events against 4.5 s table by table) in both ways
    of publishing, with the rows committed just before it and the analyst views added."""
    caplog.set_level("INFO", logger="metering.warehouse")
    wh = tmp_path / "w.duckdb"
    with warehouse.open_warehouse(wh) as con:
        con.execute("CREATE TABLE t AS SELECT range AS n FROM range(100000)")
        con.execute("INSERT INTO t VALUES (-1)")   # in the log until the publish checkpoints
        warehouse.publish(snapshot=tmp_path / "held.duckdb", con=con)
    warehouse.publish(wh, tmp_path / "closed.duckdb")
    assert _copies(caplog) == ["file", "file"]
    for name in ("held.duckdb", "closed.duckdb"):
        with duckdb.connect(str(tmp_path / name), read_only=True) as reader:
            assert reader.execute("SELECT count(*), sum(n) FROM t").fetchone() == (100001, 4999950000 - 1)
        assert _analyst_views(tmp_path / name) > 0
    with duckdb.connect(str(wh), read_only=True) as source:   # the warehouse itself got no views
        assert source.execute("SELECT count(*) FROM duckdb_views() WHERE schema_name = 'analytics'").fetchone() == (0,)


def test_names_with_quotes_publish_by_the_file_copy(tmp_path, caplog):
    """DuckDB names a file's catalog after it: the copy's checks quote every name (a table name pasted
    into pragma_table_info('...') failed on `o'brien.duckdb`)."""
    caplog.set_level("INFO", logger="metering.warehouse")
    wh = tmp_path / 'o\'bri"en.duckdb'
    with warehouse.open_warehouse(wh) as con:
        con.execute('CREATE TABLE "it\'s ""t""" AS SELECT 7 AS "n\'"')
        warehouse.publish(snapshot=tmp_path / "sn'ap.duckdb", con=con)
    warehouse.publish(wh, tmp_path / 'cl"o\'sed.duckdb')
    assert _copies(caplog) == ["file", "file"]
    for name in ("sn'ap.duckdb", 'cl"o\'sed.duckdb'):
        with duckdb.connect(str(tmp_path / name), read_only=True) as reader:
            assert reader.execute('SELECT "n\'" FROM "it\'s ""t"""').fetchone() == (7,)


def test_a_warehouse_with_a_log_to_replay_is_published_table_by_table(tmp_path, caplog):
    """A writer that died before its checkpoint leaves committed rows in the write-ahead log only: the
    file's bytes lack them, so the copy is made table by table, from the warehouse as DuckDB reads it."""
    caplog.set_level("INFO", logger="metering.warehouse")
    wh = tmp_path / "w.duckdb"
    warehouse.connect(wh).close()
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os
        import duckdb
        con = duckdb.connect({str(wh)!r})
        con.execute("SET checkpoint_threshold = '1TB'")
        con.execute("CREATE TABLE t AS SELECT range AS n FROM range(1000)")
        os._exit(0)   # no checkpoint at close: the rows stay in the log
    """)], check=True)
    assert warehouse.database_files(wh)[1].stat().st_size > 0
    warehouse.publish(wh, tmp_path / "s.duckdb")
    assert _copies(caplog) == ["tables"]
    with duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True) as reader:
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (1000,)
    assert _analyst_views(tmp_path / "s.duckdb") > 0


@pytest.mark.parametrize("statement, copied", [
    ("INSERT INTO t VALUES (2)", "file"),           # DuckDB checkpoints the committed rows beside it
    ("CREATE TABLE u AS SELECT 2 AS n", "tables"),   # "Cannot CHECKPOINT: there are other write transactions"
])
def test_a_snapshot_taken_beside_an_open_transaction_holds_only_what_is_committed(tmp_path, caplog, statement,
                                                                                    copied):
    caplog.set_level("INFO", logger="metering.warehouse")
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS n")
        other = con.cursor()
        other.execute("BEGIN")
        other.execute(statement)
        warehouse.publish(snapshot=tmp_path / "s.duckdb", con=con)
        other.execute("ROLLBACK")
    assert _copies(caplog) == [copied]
    with duckdb.connect(str(tmp_path / "s.duckdb"), read_only=True) as reader:
        assert reader.execute("SELECT list(n) FROM t").fetchone() == ([1],)
        assert reader.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'u'").fetchone() == (0,)


def test_a_file_copy_without_the_warehouse_rows_is_not_used(tmp_path):
    """The copy is checked against the warehouse, table by table, before it is used."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS n")
        stale = tmp_path / "stale.duckdb"
        warehouse.publish(snapshot=stale, con=con)   # a file like the warehouse, one row short after this
        con.execute("INSERT INTO t VALUES (2)")
        database = con.execute("SELECT current_database()").fetchone()[0]
        assert warehouse._copy_file(con, database, stale, tmp_path / "copy.duckdb") is False
        assert not (tmp_path / "copy.duckdb").exists()
        assert warehouse._copy_file(con, database, tmp_path / "w.duckdb", tmp_path / "copy.duckdb") is False  # log
        con.execute("CHECKPOINT")
        assert warehouse._copy_file(con, database, tmp_path / "w.duckdb", tmp_path / "copy.duckdb") is True


def test_memory_limit_is_checked_before_it_reaches_sql(tmp_path):
    from metering.errors import BadInputError

    with warehouse.open_warehouse(tmp_path / "w.duckdb", memory_limit="512MiB") as con:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0].startswith("512")
    with pytest.raises(BadInputError, match="not a size"):
        warehouse.connect(tmp_path / "w.duckdb", memory_limit="1GB'; DROP TABLE usage_events; --")


def test_events_of_an_older_warehouse_get_their_file_id(tmp_path):
    """Migration 003 replaces usage_events' source_file/file_hash/ingested_at by ingested_files.file_id:
    an existing warehouse keeps every event, each pointing at the file it came from."""
    import duckdb

    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute("CREATE TABLE schema_migrations (version VARCHAR NOT NULL, checksum VARCHAR NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL)")
    for file in warehouse.migration_files()[:2]:  # the schema as 001 and 002 left it
        assert file.stem < "003"
        con.execute(file.read_text())
        con.execute("INSERT INTO schema_migrations VALUES (?, ?, now())",
                    [file.stem, warehouse.migration_checksum(file.read_text())])
    for n, (fh, at) in enumerate([("hash-b", "2026-10-02 00:00:00+00"), ("hash-a", "2026-10-01 00:00:00+00")]):
        con.execute("INSERT INTO ingested_files (file_hash, path, format, rows_read, rows_accepted, rows_quarantined, "
                    "duplicates_dropped, ingested_at) VALUES (?, ?, 'jsonl', 2, 2, 0, 0, ?)", [fh, f"f{n}", at])
        for line in (1, 2):
            con.execute("INSERT INTO usage_events VALUES (?, 'c', 'api_calls', TIMESTAMPTZ '2026-10-01 00:00:00+00', "
                        "DATE '2026-10-01', NULL, '{}', NULL, ?, ?, ?, ?)", [f"{fh}-{line}", f"f{n}", line, fh, at])
    con.close()
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        assert "003_events_name_their_file_by_id" in {r[0] for r in con.execute(
            "SELECT version FROM schema_migrations").fetchall()}
        columns = [r[0] for r in con.execute("DESCRIBE usage_events").fetchall()]
        assert "file_id" in columns and not {"source_file", "file_hash", "ingested_at"} & set(columns)
        # file ids follow ingestion order: hash-a was ingested first
        assert con.execute("SELECT file_hash, file_id FROM ingested_files ORDER BY file_id").fetchall() == [
            ("hash-a", 1), ("hash-b", 2)]
        assert con.execute("SELECT e.event_id, f.file_hash, e.source_line FROM usage_events e "
                           "JOIN ingested_files f USING (file_id) ORDER BY 1").fetchall() == [
            ("hash-a-1", "hash-a", 1), ("hash-a-2", "hash-a", 2), ("hash-b-1", "hash-b", 1), ("hash-b-2", "hash-b", 2)]


def test_usage_events_text_columns_keep_their_named_compression(tmp_path):
    """Migration 004 names each text column's compression; it must hold for rows inserted after the
    warehouse is re-opened, also where DuckDB's own analysis would choose otherwise (here it picks
    dictionary for one repeated id and FSST for distinct hex customer ids)."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb"):
        pass
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("""INSERT INTO usage_events (event_id, customer_id, meter, event_time, event_date, properties,
                                                 file_id, source_line)
                       SELECT 'the-same-id', md5(i::VARCHAR), 'api_calls', TIMESTAMPTZ '2026-10-01 00:00:00+00',
                              DATE '2026-10-01', '{}', 1, i FROM range(150000) r(i)""")
        con.execute("CHECKPOINT")
        used = dict(con.execute("""SELECT column_name, string_agg(DISTINCT compression, ',') FROM
                                   pragma_storage_info('usage_events') WHERE segment_type IN ('VARCHAR', 'JSON')
                                   AND column_name <> 'extra' GROUP BY 1""").fetchall())  # extra stays automatic
    assert used == {"event_id": "FSST", "customer_id": "Dictionary", "meter": "Dictionary", "properties": "Dictionary"}


def test_no_progress_bar_in_piped_output(tmp_path):
    """DuckDB's Python client draws a progress bar on stdout for any query over 2 s (it is on by
    default): piped, that would land in `--json` output or a job's logs, so a warehouse opened with
    stdout not a terminal turns it off."""
    script = (f"import duckdb\n"
              f"from metering import warehouse\n"
              f"print(duckdb.connect().execute(\"SELECT current_setting('enable_progress_bar')\").fetchone()[0])\n"
              f"with warehouse.open_warehouse({str(tmp_path / 'w.duckdb')!r}) as con:\n"
              f"    print(con.execute(\"SELECT current_setting('enable_progress_bar')\").fetchone()[0])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\nFalse\n"  # DuckDB's default, then the warehouse's


def _corrupt_copy(tmp_path):
    """A real warehouse whose first data block (the catalog, at byte 12288 after DuckDB's headers) has
    64 flipped bytes: DuckDB reports 'Corrupt database file: ... in block at location 12288'."""
    path = tmp_path / "corrupt.duckdb"
    warehouse.connect(path).close()
    data = bytearray(path.read_bytes())
    data[12288:12352] = bytes(b ^ 0xFF for b in data[12288:12352])
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("kind", ["corrupt", "not a database"])
def test_an_unreadable_warehouse_is_named_as_such_never_as_locked(tmp_path, kind):
    """'block' holds 'lock': a test for the word alone once reported a corrupt file as held by a writer."""
    from click.testing import CliRunner

    from metering.cli import cli
    from metering.errors import BadInputError

    if kind == "corrupt":
        path, says = _corrupt_copy(tmp_path), "Corrupt database file"
    else:
        path, says = tmp_path / "notes.duckdb", "not a valid DuckDB database file"
        path.write_text("hello\n" * 10)
    for opening in (lambda: warehouse.connect(path), lambda: warehouse.publish(path, tmp_path / "a.duckdb")):
        with pytest.raises(BadInputError) as raised:
            opening()
        assert str(raised.value).startswith(f"{path}: cannot open the warehouse: ") and says in str(raised.value)
        assert "held" not in str(raised.value)
    result = CliRunner().invoke(cli, ["publish", "--warehouse", str(path), "--snapshot", str(tmp_path / "a.duckdb")])
    assert result.exit_code == 3 and f"{path}: cannot open the warehouse" in result.output


@pytest.mark.parametrize("name", ["customers.csv", "events.parquet", "events.json"])
def test_a_data_file_given_as_the_warehouse_is_bad_input_for_readers_too(tmp_path, name):
    """DuckDB opens an existing .csv, .parquet or .json file as an in-memory database with a view over
    it: a read-only open (dunning summary, rules validate, publish) ended in a CatalogException traceback
    (exit 1). Every open now refuses it first, naming the file (exit 3), and leaves it as it was."""
    from click.testing import CliRunner

    from metering.cli import cli

    path = tmp_path / name
    duckdb.sql(f"COPY (SELECT 'c1' AS customer_id, 1 AS n) TO '{path}'")
    before = path.read_bytes()
    for args in (["dunning", "summary", "--warehouse", str(path)],
                 ["rules", "validate", "--warehouse", str(path)],
                 ["publish", "--warehouse", str(path), "--snapshot", str(tmp_path / "snap.duckdb")],
                 ["rerate", "--from", "2026-10-01", "--to", "2026-10-01", "--warehouse", str(path)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 3, (args, result.output)
        assert f"{path}: cannot open the warehouse: not a valid DuckDB database file" in result.output, result.output
    assert path.read_bytes() == before


def _corrupt_after_open(tmp_path):
    """A real warehouse that opens (catalog intact) but whose usage_events data block has flipped bytes:
    DuckDB finds the corruption only when a command reads the events, after the warehouse is open."""
    path = tmp_path / "late-corrupt.duckdb"
    with warehouse.open_warehouse(path) as con:
        con.execute("""INSERT INTO usage_events (event_id, customer_id, meter, event_time, event_date, properties,
                                                 file_id, source_line)
                       SELECT md5(i::VARCHAR), 'c' || (i % 50), 'api_calls',
                              TIMESTAMPTZ '2026-10-01 00:00:00+00' + to_seconds(i % 2000000), DATE '2026-10-01',
                              '{}', 1, i FROM range(200000) r(i)""")
        con.execute("CHECKPOINT")
        block = con.execute("SELECT max(block_id) FROM pragma_storage_info('usage_events') "
                            "WHERE column_name = 'event_id' AND block_id >= 0").fetchone()[0]
    block_size, header = 262144, 3 * 4096   # DuckDB's default block size, after its three header blocks
    data = bytearray(path.read_bytes())
    start = header + block * block_size + 1024
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    path.write_bytes(bytes(data))
    warehouse.connect(path).close()   # it still opens
    return path


def test_corruption_found_after_opening_is_bad_input_naming_the_file(tmp_path):
    from click.testing import CliRunner

    from metering.cli import cli

    path = _corrupt_after_open(tmp_path)
    for args in (["rerate", "--from", "2026-10-01", "--to", "2026-10-31"],
                 ["publish", "--snapshot", str(tmp_path / "s.duckdb")]):
        result = CliRunner().invoke(cli, [*args, "--warehouse", str(path)])
        assert result.exit_code == 3, (args, result.output)
        assert f"error: {path}: the warehouse file is corrupt: IO Error: Corrupt database file" in result.output
        assert "Traceback" not in result.output
    assert {p.name for p in tmp_path.iterdir()} - {"data"} == {path.name}   # no snapshot, no temporary copy


def test_a_failed_publish_leaves_no_temporary_copy(tmp_path):
    from metering.errors import BadInputError

    text = tmp_path / "notes.duckdb"
    text.write_text("hello\n")
    folder = tmp_path / "folder.duckdb"
    folder.mkdir()
    for source, snapshot in ((tmp_path / "missing.duckdb", tmp_path / "s.duckdb"), (text, tmp_path / "s.duckdb"),
                             (_corrupt_copy(tmp_path), tmp_path / "s.duckdb"), (text, folder)):
        with pytest.raises(BadInputError):
            warehouse.publish(source, snapshot)
        assert list(tmp_path.glob(".*")) == [], source
    held = tmp_path / "held.duckdb"
    with _held(held):
        with pytest.raises(WarehouseLockedError):
            warehouse.publish(held, tmp_path / "s.duckdb")
        assert list(tmp_path.glob(".*")) == []


def test_a_killed_publish_leaves_nothing_behind_after_the_next(tmp_path):
    """A publish killed mid-copy cannot clean up after itself: the next publish removes the copies of
    processes that no longer run, and leaves a running publish's copy alone."""
    wh, snap = tmp_path / "w.duckdb", tmp_path / "s.duckdb"
    with warehouse.open_warehouse(wh):
        pass
    gone, also_gone = (subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                      text=True, check=True).stdout.strip() for _ in range(2))
    running = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        leftovers = [f".s.duckdb.{gone}.tmp", f".s.duckdb.{gone}.tmp.wal", f".s.duckdb.{running.pid}.tmp",
                     f".s.duckdb.{also_gone}.tmp.wal"]   # the last: a log whose copy is gone
        for name in leftovers:
            (tmp_path / name).write_bytes(b"partial copy")
        warehouse.publish(wh, snap)
        assert sorted(p.name for p in tmp_path.glob(".*")) == [f".s.duckdb.{running.pid}.tmp"]
    finally:
        running.communicate(b"")
    assert duckdb.connect(str(snap), read_only=True).execute("SELECT count(*) FROM usage_events").fetchone() == (0,)


def _warehouse_before(path, version: str) -> None:
    """A warehouse as an older metering left it: the migrations up to `version` applied."""
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_migrations (version VARCHAR NOT NULL, checksum VARCHAR NOT NULL, "
                "applied_at TIMESTAMPTZ NOT NULL)")
    for file in warehouse.migration_files():
        if file.stem > version:
            break
        con.execute(file.read_text())
        con.execute("INSERT INTO schema_migrations VALUES (?, ?, now())",
                    [file.stem, warehouse.migration_checksum(file.read_text())])
    return con


@pytest.mark.parametrize("name", ["analytics.duckdb", "Analytics.db", "analytics"])
def test_a_snapshot_named_like_the_views_schema_is_refused_by_name(tmp_path, name):
    """DuckDB names a file's catalog after the file: `analytics.<view>` would be ambiguous in it (this
    was a traceback and exit 1, the issue's own suggested name among them)."""
    from click.testing import CliRunner

    from metering.cli import cli

    with warehouse.open_warehouse(tmp_path / "w.duckdb"):
        pass
    result = CliRunner().invoke(cli, ["publish", "--warehouse", str(tmp_path / "w.duckdb"),
                                       "--snapshot", str(tmp_path / name)])
    assert result.exit_code == 3, result.output
    assert f"{tmp_path / name}: a snapshot cannot be named {name}" in result.output
    assert "Traceback" not in result.output and not (tmp_path / name).exists()
    assert list(tmp_path.glob(".*")) == []


def test_publishing_a_warehouse_whose_schema_is_behind_is_refused(tmp_path):
    from click.testing import CliRunner

    from metering.cli import cli

    _warehouse_before(tmp_path / "old.duckdb", "002_events_without_payload_hash").close()
    later = [f.stem for f in warehouse.migration_files()][2:]
    result = CliRunner().invoke(cli, ["publish", "--warehouse", str(tmp_path / "old.duckdb"),
                                       "--snapshot", str(tmp_path / "s.duckdb")])
    assert result.exit_code == 3, result.output
    assert f"the warehouse's schema is behind this version of metering (not yet applied: {', '.join(later)})" \
        in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "s.duckdb").exists() and list(tmp_path.glob(".*")) == []
    with warehouse.open_warehouse(tmp_path / "old.duckdb"):   # a writer migrates it; then publish works
        pass
    warehouse.publish(tmp_path / "old.duckdb", tmp_path / "s.duckdb")


def test_a_migration_the_data_does_not_allow_is_rolled_back_and_named(tmp_path):
    from metering.errors import BadInputError

    # migration 003 gives every event its file's manifest id: an event whose file has no manifest entry
    # (deleted by hand) cannot have one
    con = _warehouse_before(tmp_path / "w.duckdb", "002_events_without_payload_hash")
    con.execute("INSERT INTO usage_events (event_id, customer_id, meter, event_time, event_date, source_file, "
                "source_line, file_hash, ingested_at) VALUES ('e1', 'c', 'api_calls', now(), current_date, 'f.jsonl', "
                "1, 'no-such-manifest-entry', now())")
    con.close()
    with pytest.raises(BadInputError, match=r"w.duckdb: migration 003_events_name_their_file_by_id cannot be "
                                            r"applied to the data stored: .*rolled back"):
        warehouse.connect(tmp_path / "w.duckdb")
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    assert [r[0] for r in con.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()] == [
        "001_ingest", "002_events_without_payload_hash"]
    assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (1,)


def test_must_exist_refuses_instead_of_creating(tmp_path):
    from metering.errors import BadInputError

    with pytest.raises(BadInputError, match="no warehouse there"):
        warehouse.connect(tmp_path / "typo.duckdb", must_exist=True)
    assert not (tmp_path / "typo.duckdb").exists()


@pytest.mark.parametrize(("limit", "says"), [
    # DuckDB took 1KB and then failed the migrations with an Out of Memory error; 99999999TB was its
    # parser's error. Every caller (the CLI, the Dagster resource) now gets one check, before DuckDB
    ("1KB", "memory limit: '1KB' is outside 64MB .. 1PB"),
    ("0GB", "memory limit: '0GB' is outside 64MB .. 1PB"),
    ("99999999TB", "memory limit: '99999999TB' is outside 64MB .. 1PB"),
    ("lots", "memory limit: 'lots' is not a size like 2GB or 512MiB"),
])
def test_a_memory_limit_out_of_range_is_bad_input(tmp_path, limit, says):
    from metering.errors import BadInputError

    with pytest.raises(BadInputError, match=re.escape(says)):
        warehouse.connect(tmp_path / "w.duckdb", memory_limit=limit)
    with warehouse.open_warehouse(tmp_path / "w.duckdb", memory_limit="1TiB") as con:   # DuckDB takes it
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "1.0 TiB"


def test_a_writer_that_waits_for_the_lock_says_for_whom(tmp_path, caplog):
    path = tmp_path / "w.duckdb"
    with _held(path) as holder:
        with caplog.at_level("WARNING", logger="metering.warehouse"), pytest.raises(WarehouseLockedError):
            warehouse.connect(path, wait_seconds=0.5)
        waiting = [r.getMessage() for r in caplog.records if "waiting up to 0.5 s" in r.getMessage()]
        assert len(waiting) == 1 and f"(PID {holder.pid}, " in waiting[0]


def test_rules_validate_reads_a_warehouse_older_than_the_meter_records(tmp_path):
    """`metering rules validate --warehouse` opens it read-only (no migrations run): one written before
    migration 012 has no rated_meters, which was a CatalogException traceback (exit 1)."""
    from click.testing import CliRunner

    from metering.cli import cli

    _warehouse_before(tmp_path / "old.duckdb", "011_rating_adjustments").close()
    result = CliRunner().invoke(cli, ["rules", "validate", "--warehouse", str(tmp_path / "old.duckdb")])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output


def _killed_writer(path, statements: str) -> None:
    """A process that commits `statements` to the DuckDB file `path` with no checkpoint (the commits stay
    in its write-ahead log) and is SIGKILLed."""
    subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        import os, signal
        import duckdb
        con = duckdb.connect({str(path)!r})
        con.execute("SET checkpoint_threshold = '1TB'")
        con.execute({statements!r})
        os.kill(os.getpid(), signal.SIGKILL)
    """)])
    assert warehouse.database_files(path)[1].stat().st_size > 0


def test_publish_removes_a_log_left_beside_the_old_snapshot(tmp_path):
    """A session that opened the snapshot read-write, deleted rows and was killed left a log beside it:
    the next reader of the new snapshot replayed it, and saw 0 of the 3 events the warehouse holds."""
    wh, snap = tmp_path / "w.duckdb", tmp_path / "s.duckdb"
    with warehouse.open_warehouse(wh) as con:
        con.execute("CREATE TABLE kept AS SELECT range AS n FROM range(3)")
    warehouse.publish(wh, snap)
    _killed_writer(snap, "DELETE FROM kept")
    warehouse.publish(wh, snap)
    assert not warehouse.database_files(snap)[1].exists()
    with duckdb.connect(str(snap), read_only=True) as reader:
        assert reader.execute("SELECT count(*) FROM kept").fetchone() == (3,)


def test_a_log_that_cannot_be_replayed_onto_the_warehouse_is_bad_input_naming_it(tmp_path):
    """docs/durability.md's restore with the killed writer's log left in place: the snapshot copied in
    is older than the log, whose replay fails inside DuckDB. It was a traceback (exit 1); it names the log."""
    wh, snap = tmp_path / "w.duckdb", tmp_path / "s.duckdb"
    con = duckdb.connect(str(wh))
    con.execute("CREATE TABLE ledger AS SELECT range AS id, 'pending' AS status FROM range(100)")
    con.close()
    shutil.copyfile(wh, snap)                                   # the published snapshot
    con = duckdb.connect(str(wh))
    con.execute("INSERT INTO ledger SELECT range, 'pending' FROM range(100, 200)")
    con.close()                                                 # checkpointed
    _killed_writer(wh, "UPDATE ledger SET status = 'acknowledged' WHERE id >= 150")
    wh.rename(tmp_path / "w.corrupt")
    shutil.copyfile(snap, wh)                                   # the log stays beside it
    log = warehouse.database_files(wh)[1]
    with pytest.raises(BadInputError, match=f"{log} cannot be replayed onto it.*move it aside"):
        warehouse.connect(wh)
    result = subprocess.run([sys.executable, "-m", "metering.cli", "rules", "validate", "--warehouse", str(wh)],
                            capture_output=True, text=True)
    assert result.returncode == 3 and "Traceback" not in result.stderr and str(log) in result.stderr


def test_a_full_disk_is_bad_input_naming_the_warehouse_and_keeps_nothing(tmp_path):
    """A full disk, simulated by a file-size limit (writes fail with EFBIG): the ingest's COMMIT fails,
    and the ROLLBACK after it raised "no transaction is active", a traceback (exit 1). Now exit 3 naming
    the warehouse; lifting the limit, the same command ingests the whole file."""
    wh, raw = tmp_path / "w.duckdb", tmp_path / "usage.jsonl"
    warehouse.connect(wh).close()
    raw.write_text("".join(f'{{"event_id":"e{i}","customer_id":"c{i % 97}","meter":"api_calls",'
                           f'"timestamp":"2026-10-01T00:00:00Z","properties":{{"region":"r{i}"}}}}\n'
                           for i in range(80_000)))
    limit = wh.stat().st_size + 256 * 1024

    def full_disk() -> None:
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    command = [sys.executable, "-m", "metering.cli", "ingest", "--warehouse", str(wh), str(raw)]
    result = subprocess.run(command, capture_output=True, text=True, preexec_fn=full_disk)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert f"{wh}: DuckDB could not write the warehouse" in result.stderr and "File too large" in result.stderr
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    with duckdb.connect(str(wh), read_only=True) as reader:
        assert reader.execute("SELECT count(*) FROM usage_events").fetchone() == (80_000,)
        assert reader.execute("SELECT count(*) FROM ingested_files").fetchone() == (1,)


def test_a_warehouse_whose_migration_text_changed_since_it_ran_is_refused_by_name(tmp_path):
    """A migration edited after a warehouse applied it left a schema this code does not expect: the
    first statement that met the difference failed with a DuckDB BinderException and a traceback,
    in the middle of a job. Now every writing command refuses the warehouse at once, naming the
    migration, and changes nothing (exit 3)."""
    from click.testing import CliRunner

    from metering.cli import cli

    path = tmp_path / "w.duckdb"
    with warehouse.open_warehouse(path) as con:
        con.execute("UPDATE schema_migrations SET checksum = ? WHERE version = '031_stripe_state'",
                    [warehouse.migration_checksum("-- the text as it was when this warehouse applied it\n")])
        recorded = con.execute("SELECT version, checksum FROM schema_migrations ORDER BY 1").fetchall()
    with pytest.raises(BadInputError, match=r"w.duckdb: migration\(s\) 031_stripe_state were applied from another "
                                            r"text"):
        warehouse.connect(path)
    (tmp_path / "e.jsonl").write_text('{"event_id": "e1"}\n')
    result = CliRunner().invoke(cli, ["ingest", "--warehouse", str(path), str(tmp_path / "e.jsonl")])
    assert result.exit_code == 3 and "031_stripe_state" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["publish", "--warehouse", str(path), "--snapshot", str(tmp_path / "s.duckdb")])
    assert result.exit_code == 3 and "031_stripe_state" in result.output, result.output
    assert not (tmp_path / "s.duckdb").exists()
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("SELECT version, checksum FROM schema_migrations ORDER BY 1").fetchall() == recorded


def test_a_warehouse_made_by_a_newer_metering_is_refused_by_name(tmp_path):
    """A migration recorded in the warehouse that this version has no file for: the schema is newer
    than this code (it used to be opened and written as if it were its own)."""
    path = tmp_path / "w.duckdb"
    with warehouse.open_warehouse(path) as con:
        con.execute("INSERT INTO schema_migrations VALUES ('099_from_the_future', 'abc', now())")
    with pytest.raises(BadInputError, match=r"w.duckdb: its schema was made by a newer version of metering "
                                            r"\(migration\(s\) 099_from_the_future unknown here\)"):
        warehouse.connect(path)


def test_a_migration_checked_out_with_crlf_line_ends_is_the_same_migration(tmp_path):
    """The recorded checksum ignores line ends: a checkout that writes `\\r\\n` (git's autocrlf) must not
    make every warehouse look edited."""
    for file in warehouse.migration_files():
        text = file.read_text()
        assert warehouse.migration_checksum(text.replace("\n", "\r\n")) == warehouse.migration_checksum(text)
        # what the warehouses made so far recorded: SHA-256 of the file's text as it is in git (LF)
        assert warehouse.migration_checksum(text) == hashlib.sha256(file.read_bytes()).hexdigest()


def test_another_applications_duckdb_file_is_refused_not_taken_over(tmp_path):
    """A DuckDB file with tables of its own and no schema_migrations: `ingest` created our 37 tables
    beside them (exit 0), and `rerate` then met its `customer_plans` in a BinderException traceback.
    Now every writing command refuses it, naming it (exit 3), and the file is left as it was."""
    from click.testing import CliRunner

    from metering.cli import cli

    path = tmp_path / "theirs.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE customer_plans (x INTEGER); CREATE VIEW v AS SELECT 1 AS one")
    con.close()
    with pytest.raises(BadInputError, match=r"theirs.duckdb: not a metering warehouse: it holds 2 table\(s\) or "
                                            r"view\(s\) but no schema_migrations"):
        warehouse.connect(path)
    (tmp_path / "a.jsonl").write_text("{}\n")
    result = CliRunner().invoke(cli, ["ingest", "--warehouse", str(path), str(tmp_path / "a.jsonl")])
    assert result.exit_code == 3 and "not a metering warehouse" in result.output, result.output
    con = duckdb.connect(str(path), read_only=True)
    assert sorted(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()) == ["customer_plans"]
    con.close()
    # an empty DuckDB file (created by hand, or by a first connect that stopped) becomes a warehouse
    duckdb.connect(str(tmp_path / "empty.duckdb")).close()
    with warehouse.open_warehouse(tmp_path / "empty.duckdb") as con:
        assert con.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == len(warehouse.migration_files())


def test_publish_refuses_to_replace_a_file_that_is_not_a_duckdb_database(tmp_path):
    """`publish --snapshot customers.csv` replaced the customer list with a snapshot and printed
    `published` (exit 0). A snapshot (or any DuckDB file) is still replaced, and so is an empty file."""
    from click.testing import CliRunner

    from metering.cli import cli

    with warehouse.open_warehouse(tmp_path / "w.duckdb"):
        pass
    (tmp_path / "customers.csv").write_text("customer_id,plan\nacme,pro\n")
    result = CliRunner().invoke(cli, ["publish", "--warehouse", str(tmp_path / "w.duckdb"),
                                       "--snapshot", str(tmp_path / "customers.csv")])
    assert result.exit_code == 3, result.output
    assert "customers.csv: the snapshot would replace this file, which is not a DuckDB database" in result.output
    assert (tmp_path / "customers.csv").read_text() == "customer_id,plan\nacme,pro\n"
    assert list(tmp_path.glob(".*")) == []
    import os

    os.mkfifo(tmp_path / "fifo")   # the check must not block reading it
    with pytest.raises(BadInputError, match="fifo: the snapshot would replace this, which is not a regular file"):
        warehouse.publish(tmp_path / "w.duckdb", tmp_path / "fifo")
    for name in ("s.duckdb", "s.duckdb", "empty.duckdb"):  # new, then over the snapshot, then over an empty file
        (tmp_path / "empty.duckdb").touch()
        assert warehouse.publish(tmp_path / "w.duckdb", tmp_path / name) == tmp_path / name
