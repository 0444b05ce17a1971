"""Edges of the warehouse seam that a second hand mutation audit (m26d) found untested: the settings a
connection is opened with, where a writer may create the file, which files a snapshot may never replace,
and how errors met on an open warehouse are named.

Each test names the plausible bug it rules out. Real DuckDB files under `tmp_path` throughout.
"""

import os

import duckdb
import pytest

from metering import warehouse
from metering.errors import BadInputError


def test_a_connection_runs_on_the_threads_asked_for(tmp_path):
    # `--threads 3` caps DuckDB at 3 threads: the setting reads back exactly 3 (not the host's core count,
    # not 3 + 1)
    with warehouse.open_warehouse(tmp_path / "w.duckdb", threads=3) as con:
        assert con.execute("SELECT current_setting('threads')").fetchone()[0] == 3


def test_a_writer_creates_the_warehouse_folder_and_refuses_a_folder_as_the_file(tmp_path):
    """A first ingest into `data/new/w.duckdb` creates `data/new/`; a folder given as the warehouse is
    named as a folder. Without the writer's target check DuckDB's own open fails on both: 'cannot open the
    warehouse' for a folder that does not exist yet."""
    path = tmp_path / "a" / "b" / "w.duckdb"
    with warehouse.open_warehouse(path) as con:
        assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)
    assert path.is_file()
    folder = tmp_path / "folder.duckdb"
    folder.mkdir()
    with pytest.raises(BadInputError, match=r"warehouse .*folder\.duckdb: is a folder, not a file"):
        warehouse.connect(folder)


def test_an_out_of_memory_error_without_a_memory_limit_is_not_blamed_on_one(tmp_path):
    """Only a memory_limit the user gave can be "too small for this work": without one (here DuckDB's
    limit lowered inside the session, as a notebook might) the error is DuckDB's own, not a message
    naming `memory limit None`."""
    with pytest.raises(duckdb.OutOfMemoryException):
        with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
            con.execute("SET memory_limit = '64MB'")
            con.execute("SET threads = 1")
            # a list of 30M BIGINTs is 240MB held by one aggregate state, which cannot spill
            con.execute("SELECT list(i) FROM range(30000000) t(i)").fetchall()


def test_a_hard_link_to_the_warehouse_is_no_snapshot_name(tmp_path):
    """A hard link is the warehouse under another name: `os.path.samefile` sees it where comparing the
    resolved paths does not (resolve follows symbolic links only)."""
    wh = tmp_path / "w.duckdb"
    warehouse.connect(wh).close()
    os.link(wh, tmp_path / "link.duckdb")
    assert warehouse.overwrites_database(tmp_path / "link.duckdb", wh)
    with pytest.raises(BadInputError, match=r"link\.duckdb: the snapshot cannot be the warehouse or its "
                                            r"write-ahead log"):
        warehouse.publish(wh, tmp_path / "link.duckdb")


def test_the_warehouses_write_ahead_log_is_no_snapshot_name(tmp_path):
    """`--snapshot w.duckdb.wal` beside a cleanly closed warehouse (no log yet): a snapshot written there
    would be replayed onto the warehouse as its log at the next open. Refused, and the warehouse still
    opens with its rows."""
    wh = tmp_path / "w.duckdb"
    with warehouse.open_warehouse(wh) as con:
        con.execute("CREATE TABLE t AS SELECT 7 AS n")
    log = warehouse.database_files(wh)[1]
    assert not log.exists()
    assert warehouse.overwrites_database(log, wh)
    with pytest.raises(BadInputError, match=r"w\.duckdb\.wal: the snapshot cannot be the warehouse or its "
                                            r"write-ahead log"):
        warehouse.publish(wh, log)
    assert not log.exists()
    with warehouse.open_warehouse(wh) as con:
        assert con.execute("SELECT n FROM t").fetchall() == [(7,)]


def test_a_schema_migrations_table_outside_the_main_schema_does_not_make_a_warehouse(tmp_path):
    """Only `main.schema_migrations` marks a metering warehouse: another application's file with a
    table of that name in a schema of its own (2 tables in all) is still refused, and left as it was."""
    path = tmp_path / "theirs.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE SCHEMA app; CREATE TABLE app.schema_migrations (id INTEGER); CREATE TABLE orders (x INTEGER)")
    with pytest.raises(BadInputError, match=r"theirs\.duckdb: not a metering warehouse: it holds 2 table\(s\) or "
                                            r"view\(s\) but no schema_migrations"):
        warehouse.connect(path)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT schema_name, table_name FROM duckdb_tables() ORDER BY ALL").fetchall() == [
            ("app", "schema_migrations"), ("main", "orders")]


def test_replace_rows_within_the_callers_transaction_is_undone_with_it(tmp_path):
    """`in_transaction=True` writes into the transaction the caller opened: the caller's ROLLBACK undoes
    the delete and the insert (a helper that opened its own would fail on the nested BEGIN, or commit
    half of the caller's work)."""
    import polars as pl

    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE t (k INTEGER, v INTEGER)")
        con.execute("INSERT INTO t VALUES (1, 10), (2, 20)")
        con.execute("BEGIN TRANSACTION")
        inserted = warehouse.replace_rows(con, "t", "k = ?", [1], pl.DataFrame({"k": [1, 1], "v": [11, 12]}),
                                          in_transaction=True)
        assert inserted == 2
        # inside the transaction: row (1, 10) replaced by (1, 11) and (1, 12)
        assert con.execute("SELECT k, v FROM t ORDER BY ALL").fetchall() == [(1, 11), (1, 12), (2, 20)]
        con.execute("ROLLBACK")
        assert con.execute("SELECT k, v FROM t ORDER BY ALL").fetchall() == [(1, 10), (2, 20)]


def test_a_full_disk_during_a_migration_is_named_as_a_full_disk(tmp_path):
    """A migration that cannot be written (disk full, simulated by a file-size limit: writes fail with
    EFBIG) is not "a migration the data does not allow": the user is told to free space, and the
    warehouse keeps its schema before it. 004 rebuilds usage_events, here 300,000 events, so it writes
    several MB past the limit of the file's size + 256 KiB."""
    import subprocess
    import sys
    import textwrap

    from tests.test_warehouse import _warehouse_before

    path = tmp_path / "w.duckdb"
    con = _warehouse_before(path, "003_events_name_their_file_by_id")
    con.execute("INSERT INTO ingested_files (file_hash, path, format, rows_read, rows_accepted, rows_quarantined, "
                "duplicates_dropped, ingested_at, file_id) VALUES ('h', 'f.jsonl', 'jsonl', 0, 0, 0, 0, now(), 1)")
    con.execute("INSERT INTO usage_events SELECT 'e' || i, 'c' || (i % 97), 'api_calls', TIMESTAMPTZ '2026-10-01', "
                "DATE '2026-10-01', NULL, NULL, NULL, 1, i FROM range(300000) t(i)")
    con.close()
    limit = path.stat().st_size + 256 * 1024

    def full_disk() -> None:
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    script = textwrap.dedent(f"""
        from metering import warehouse
        from metering.errors import BadInputError
        try:
            warehouse.connect({str(path)!r})
        except BadInputError as exc:
            print(exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, preexec_fn=full_disk)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"{path}: DuckDB could not write the warehouse: "), result.stdout
    assert "File too large" in result.stdout and "cannot be applied" not in result.stdout
    with duckdb.connect(str(path), read_only=True) as reader:
        assert reader.execute("SELECT max(version) FROM schema_migrations").fetchone() == (
            "003_events_name_their_file_by_id",)


def test_an_empty_write_ahead_log_still_lets_the_file_be_copied(tmp_path, caplog):
    """A log of 0 bytes (what a checkpoint can leave) holds no commit: the warehouse file holds every
    change, so the publish copies the file's bytes (the fast path) and the snapshot has the rows. Treating
    any log as one to replay would rebuild every table instead."""
    wh, snap = tmp_path / "w.duckdb", tmp_path / "s.duckdb"
    with warehouse.open_warehouse(wh) as con:
        con.execute("CREATE TABLE t AS SELECT 3 AS n")
    warehouse.database_files(wh)[1].touch()
    with caplog.at_level("INFO", logger="metering.warehouse"):
        warehouse.publish(wh, snap)
    assert [r.copied for r in caplog.records if hasattr(r, "copied")] == [warehouse.FILE_COPY]
    with duckdb.connect(str(snap), read_only=True) as reader:
        assert reader.execute("SELECT n FROM t").fetchall() == [(3,)]


def test_an_in_memory_warehouse_is_published_table_by_table(tmp_path, caplog):
    """A writer connection to an in-memory warehouse (a test harness, a notebook) has no file to copy:
    its path is empty, and copying '' (the current folder) failed with IsADirectoryError. It is copied
    table by table, with its rows."""
    snap = tmp_path / "s.duckdb"
    con = duckdb.connect()
    try:
        warehouse.apply_migrations(con)
        con.execute("CREATE TABLE t AS SELECT 'memory' AS src")
        with caplog.at_level("INFO", logger="metering.warehouse"):
            assert warehouse.publish(snapshot=snap, con=con) == snap
    finally:
        con.close()
    assert [r.copied for r in caplog.records if hasattr(r, "copied")] == [warehouse.TABLE_COPY]
    with duckdb.connect(str(snap), read_only=True) as reader:
        assert reader.execute("SELECT src FROM t").fetchall() == [("memory",)]
