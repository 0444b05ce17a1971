"""Edges of the warehouse seam that a fourth hand mutation audit (m31d) found untested: a connection opened
with stdout closed or with `threads=0`, a corrupt file met by a writer that was asked to wait for the lock,
the wordings of a full disk, `table_columns`' schema, which tables make a DuckDB file "another
application's", the name `open_warehouse()` gives the configured warehouse, and the snapshot publish: a
missing or non-metering source, the temporary copy's name and fsync, leftovers it must or must not clean,
and corruption in any column of the copy. Three tests show defects found by reading,
fixed in the thirty-first session (each fails on `a65de4b`).

Each test names the plausible bug it rules out. Real DuckDB files under `tmp_path` throughout.
"""

import os
import subprocess
import sys
import textwrap
import time

import duckdb
import pytest

from metering import warehouse
from metering.errors import BadInputError
from tests.test_cli_mutants30 import _held
from tests.test_warehouse import _corrupt_copy, _killed_writer


# --- opening ----------------------------------------------------------------------------------------------


def test_a_warehouse_opens_with_stdout_closed_and_draws_no_progress_bar(tmp_path):
    """A daemon or a job runner that closed stdout: `sys.stdout.isatty()` raises ValueError ("I/O operation
    on closed file"). That is "not a terminal" (no progress bar), not a traceback at every open."""
    script = textwrap.dedent(f"""
        import sys
        from metering import warehouse
        sys.stdout.close()
        con = warehouse.connect({str(tmp_path / 'w.duckdb')!r})
        sys.stderr.write(str(con.execute("SELECT current_setting('enable_progress_bar')").fetchone()[0]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == "False"


def test_a_memory_limit_written_as_duckdb_shows_it_is_taken(tmp_path):
    """DuckDB shows a memory limit with a space ("512.0 MiB"): a user who pastes that back (or writes
    "512 MiB") is not refused. 512 MiB = 512 * 2^20 = 536,870,912 bytes, inside 64MB .. 1PB."""
    assert warehouse.memory_limit_problem("512.0 MiB") is None
    assert warehouse.memory_limit_bytes("512 MiB") == 536_870_912
    with warehouse.open_warehouse(tmp_path / "w.duckdb", memory_limit="512 MiB") as con:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "512.0 MiB"


def test_threads_zero_leaves_duckdbs_own_thread_count(tmp_path):
    """`threads=0` (an unset option) means "DuckDB's default", the same count a plain connection has;
    `SET threads = 0` would be DuckDB's 'Must have at least 1 thread!' syntax error."""
    default = duckdb.connect().execute("SELECT current_setting('threads')").fetchone()[0]
    with warehouse.open_warehouse(tmp_path / "w.duckdb", threads=0) as con:
        assert con.execute("SELECT current_setting('threads')").fetchone()[0] == default


def test_a_corrupt_warehouse_is_refused_at_once_by_a_writer_willing_to_wait(tmp_path):
    """`wait_seconds` is for a lock another process holds: a corrupt file (an IO error that is no lock
    conflict) is refused at once, not after sleeping out the 10 s in a loop that can never succeed."""
    path = _corrupt_copy(tmp_path)
    started = time.monotonic()
    with pytest.raises(BadInputError, match="cannot open the warehouse: .*Corrupt database file"):
        warehouse.connect(path, wait_seconds=10)
    assert time.monotonic() - started < 5


def test_corruption_in_the_migration_record_is_named_by_connect(tmp_path):
    """The catalog opens, but the data block holding schema_migrations' rows (read by every writer's open,
    before any migration) has 64 flipped bytes: `connect` itself says the file is corrupt and where to
    restore it from (exit 3), not DuckDB's IOException."""
    path = tmp_path / "w.duckdb"
    with warehouse.open_warehouse(path) as con:
        con.execute("CHECKPOINT")
        block, offset = con.execute("SELECT block_id, min(block_offset) FROM pragma_storage_info('schema_migrations') "
                                    "WHERE block_id >= 0 GROUP BY 1 ORDER BY 1 LIMIT 1").fetchone()
    data = bytearray(path.read_bytes())
    start = 3 * 4096 + block * 262144 + 8 + offset   # after DuckDB's three header blocks and the block checksum
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    path.write_bytes(bytes(data))
    with pytest.raises(BadInputError) as raised:
        warehouse.connect(path)
    assert str(raised.value).startswith(f"{path}: the warehouse file is corrupt: IO Error: Corrupt database file")
    assert str(raised.value).endswith("(restore it from the last published snapshot: see docs/durability.md)")


def test_an_attached_databases_tables_do_not_make_the_warehouse_foreign(tmp_path):
    """Only the warehouse's own catalog is looked at: a connection that has another database attached (the
    ingest's stage, a notebook's) with a table in it still gets its migrations (1 foreign table counted
    from the attachment would refuse a brand-new warehouse)."""
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    try:
        con.execute(f"ATTACH {warehouse.sql_string(str(tmp_path / 'other.duckdb'))} AS other")
        con.execute("CREATE TABLE other.main.orders (x INTEGER)")
        applied = warehouse.apply_migrations(con, tmp_path / "w.duckdb")
        assert len(applied) == len(warehouse.migration_files())
    finally:
        con.close()


def test_open_warehouse_without_a_path_names_the_configured_file_when_it_finds_corruption(tmp_path, isolated_env):
    """`open_warehouse()` with no path opens $METERING_WAREHOUSE (here data/warehouse.duckdb, set by the
    conftest): corruption met inside the block names that file, not `None`."""
    from tests.test_warehouse import _corrupt_after_open

    configured = isolated_env / "warehouse.duckdb"
    _corrupt_after_open(tmp_path).rename(configured)
    with pytest.raises(BadInputError) as raised:
        with warehouse.open_warehouse() as con:
            con.execute("SELECT count(DISTINCT event_id) FROM usage_events").fetchall()
    assert str(raised.value).startswith(f"{configured}: the warehouse file is corrupt: IO Error: Corrupt database file")


# --- errors met on an open warehouse ----------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["No space left on device", "File too large", "Disk quota exceeded"])
def test_each_wording_of_a_full_disk_is_named_as_one(tmp_path, reason):
    """The OS says a disk is full in three ways (ENOSPC, EFBIG, EDQUOT): each is "free space and run the
    command again", with DuckDB's first line kept and the rest (its hints) dropped."""
    exc = duckdb.IOException(f'IO Error: Could not write file "{tmp_path / "w.duckdb"}": {reason}\nmore detail')
    failure = warehouse._failure_in_use(tmp_path / "w.duckdb", exc)
    assert isinstance(failure, BadInputError)
    assert str(failure) == (f'{tmp_path / "w.duckdb"}: DuckDB could not write the warehouse: IO Error: Could not '
                            f'write file "{tmp_path / "w.duckdb"}": {reason} (free space on its disk and run the '
                            "command again: the failed transaction left nothing behind)")


def test_an_unreadable_warehouse_is_told_by_duckdbs_first_line_only(tmp_path):
    """DuckDB's errors often run on over several lines (hints, a stack trace): the one-line message of a
    file that cannot be opened keeps the first, which names the problem, after the file's own name."""
    exc = duckdb.IOException("IO Error: Corrupt database file: bad block\n\nStack Trace:\n  frame 1")
    failure = warehouse._open_failure(tmp_path / "w.duckdb", exc, "held{holder}")
    assert isinstance(failure, BadInputError)
    assert str(failure) == f"{tmp_path / 'w.duckdb'}: cannot open the warehouse: IO Error: Corrupt database file: bad block"


def test_a_database_invalidated_by_a_fatal_error_is_named_with_its_file(tmp_path):
    """What DuckDB says of every statement after a fatal error is about the file, not a bug: bad input
    naming it and pointing at docs/durability.md."""
    exc = duckdb.FatalException("FATAL Error: Failed: database has been invalidated because of a previous fatal "
                                "error. The database must be restarted prior to being used again.")
    failure = warehouse._failure_in_use(tmp_path / "w.duckdb", exc)
    assert isinstance(failure, BadInputError)
    assert str(failure).startswith(f"{tmp_path / 'w.duckdb'}: DuckDB stopped working on the warehouse after a "
                                   "fatal error: FATAL Error: Failed: database has been invalidated")
    assert warehouse._failure_in_use(tmp_path / "w.duckdb", duckdb.BinderException("Binder Error: x")) is None


def test_table_columns_reads_the_current_schema_only(tmp_path):
    """Two tables called `t`, one in `main` (a, b) and one in schema `other` (z): the reader of `main` sees
    {a, b} (with z it would take a column that is not there for one it can read); a missing table is {}."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE t (a INTEGER, b INTEGER); CREATE SCHEMA other; CREATE TABLE other.t (z INTEGER)")
        assert warehouse.table_columns(con, "t") == {"a", "b"}
        assert warehouse.table_columns(con, "no_such_table") == set()


# --- publishing -------------------------------------------------------------------------------------------


def test_publishing_a_missing_warehouse_says_where_to_look_and_writes_nothing(tmp_path):
    """A mistyped --warehouse: told "no warehouse there" and which settings name it, not DuckDB's "Cannot
    open database ... in read-only mode" (which sounds like a permission problem); no snapshot appears."""
    missing = tmp_path / "typo.duckdb"
    with pytest.raises(BadInputError) as raised:
        warehouse.publish(missing, tmp_path / "s.duckdb")
    assert str(raised.value) == f"{missing}: no warehouse there (check --warehouse or $METERING_WAREHOUSE)"
    assert {p.name for p in tmp_path.iterdir()} == {"data"}


def test_publishing_a_duckdb_file_that_is_no_warehouse_is_refused_by_name(tmp_path):
    """An empty DuckDB file (no schema_migrations): refused before anything is copied, naming it."""
    other = tmp_path / "other.duckdb"
    duckdb.connect(str(other)).close()
    with pytest.raises(BadInputError) as raised:
        warehouse.publish(other, tmp_path / "s.duckdb")
    assert str(raised.value) == f"{other}: not a metering warehouse (it has no schema_migrations table)"
    assert not (tmp_path / "s.duckdb").exists()


def test_the_copy_is_made_under_this_process_id_and_synced_before_the_swap(tmp_path, synced_paths):
    """The temporary copy is `.<snapshot>.<pid>.tmp` (two publishes at once must not write one file, and a
    killed one's copy is told from a running one's by that pid), and it is fsynced (once) before the rename
    that makes it the snapshot; then the folder is, which makes the rename durable (as metering/files.py
    does; until the thirty-first session a power cut could bring back the old snapshot)."""
    wh = tmp_path / "w.duckdb"
    warehouse.connect(wh).close()
    synced_paths.clear()
    warehouse.publish(wh, tmp_path / "s.duckdb")
    assert synced_paths == [tmp_path / f".s.duckdb.{os.getpid()}.tmp", tmp_path]


def test_a_stale_copy_under_this_process_id_is_cleared_before_the_copy(tmp_path):
    """A killed publish's copy and log under a pid that this process now has (pids are reused): the pid is
    alive, so the abandoned-copy sweep keeps them. The publish still makes a snapshot with the warehouse's
    row, not one the stale log (which deletes the one row of `k`) was replayed onto, and leaves neither."""
    wh, snap = tmp_path / "w.duckdb", tmp_path / "s.duckdb"
    with warehouse.open_warehouse(wh) as con:
        con.execute("CREATE TABLE k AS SELECT 5 AS n")
    mine = tmp_path / f".s.duckdb.{os.getpid()}.tmp"
    mine.write_bytes(wh.read_bytes())                  # a copy as a killed publish made it ...
    _killed_writer(mine, "DELETE FROM k")              # ... and a log that deletes its row
    assert warehouse.publish(wh, snap) == snap
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "s.duckdb", "w.duckdb"]
    with duckdb.connect(str(snap), read_only=True) as reader:
        assert reader.execute("SELECT n FROM k").fetchall() == [(5,)]


def test_a_leftover_whose_name_holds_no_process_id_is_left_alone(tmp_path):
    """`.s.duckdb.backup.tmp` is someone's file, not a copy of ours (no pid in its name): the sweep leaves
    it, and does not fail on it (int('backup') is a ValueError)."""
    wh = tmp_path / "w.duckdb"
    warehouse.connect(wh).close()
    theirs = tmp_path / ".s.duckdb.backup.tmp"
    theirs.write_text("keep me\n")
    warehouse.publish(wh, tmp_path / "s.duckdb")
    assert theirs.read_text() == "keep me\n"


def _corrupt_second_column(tmp_path):
    """A warehouse with a table `t` of 200,000 rows: `a` is the constant 1 (DuckDB stores it as a constant, in
    no data block) and `b` 64 hex characters per row (FSST blocks of its own). The first block of `b` has 64
    flipped bytes: reading `a` alone never meets them, reading `b` does."""
    path = tmp_path / "late-corrupt.duckdb"
    with warehouse.open_warehouse(path) as con:
        con.execute("CREATE TABLE t AS SELECT 1 AS a, md5(i::VARCHAR) || md5((i + 1)::VARCHAR) AS b "
                    "FROM range(200000) r(i)")
        con.execute("CHECKPOINT")
        blocks = dict(con.execute("SELECT column_name, min(block_id) FROM pragma_storage_info('t') "
                                  "WHERE block_id >= 0 GROUP BY 1").fetchall())
    assert set(blocks) == {"b"}   # `a` has no data block
    block_size, header = 262144, 3 * 4096   # DuckDB's default block size, after its three header blocks
    data = bytearray(path.read_bytes())
    start = header + blocks["b"] * block_size + 1024
    assert start + 64 <= len(data)
    data[start:start + 64] = bytes(b ^ 0xFF for b in data[start:start + 64])
    path.write_bytes(bytes(data))
    return path


def test_corruption_in_a_later_column_fails_the_file_copy_naming_the_warehouse(tmp_path):
    """Every column of the copy is read before it is used, not only the first: a flipped block of `t.b`
    (its second column) fails the publish as the corrupt warehouse, and no snapshot and no temporary copy
    are left."""
    path = _corrupt_second_column(tmp_path)
    with pytest.raises(BadInputError, match=r"late-corrupt\.duckdb: the warehouse file is corrupt: IO Error: "
                                            r"Corrupt database file"):
        warehouse.publish(path, tmp_path / "s.duckdb")
    assert {p.name for p in tmp_path.iterdir()} == {"data", path.name}


# --- defects found by reading (each fails on a65de4b) ------------------------------


def test_publishing_a_warehouse_whose_log_cannot_be_replayed_is_bad_input_naming_the_log(tmp_path):
    """docs/durability.md's restore with the killed writer's log left beside the restored file (as in
    test_warehouse's connect test): `connect` says which log to move aside (exit 3); `metering publish`
    met DuckDB's INTERNAL Error 'Failure while replaying WAL file' as a traceback (exit 1)."""
    import shutil

    wh, snap = tmp_path / "w.duckdb", tmp_path / "s.duckdb"
    con = duckdb.connect(str(wh))
    con.execute("CREATE TABLE ledger AS SELECT range AS id, 'pending' AS status FROM range(100)")
    con.close()
    shutil.copyfile(wh, snap)
    con = duckdb.connect(str(wh))
    con.execute("INSERT INTO ledger SELECT range, 'pending' FROM range(100, 200)")
    con.close()
    _killed_writer(wh, "UPDATE ledger SET status = 'acknowledged' WHERE id >= 150")
    wh.rename(tmp_path / "w.corrupt")
    shutil.copyfile(snap, wh)
    log = warehouse.database_files(wh)[1]
    result = subprocess.run([sys.executable, "-m", "metering.cli", "publish", "--warehouse", str(wh),
                             "--snapshot", str(tmp_path / "out.duckdb")], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr[-1500:]
    assert "Traceback" not in result.stderr and f"{log} cannot be replayed onto it" in result.stderr
    assert not (tmp_path / "out.duckdb").exists()


def test_table_columns_ignores_a_same_named_table_in_an_attached_database(tmp_path):
    """`table_columns` is "the columns of `table` in the current schema": a connection with another database
    attached (`ingest_stage`, a notebook's ATTACH) whose `main` has a table of that name must not add its
    columns, nor make a table that exists only there look present here."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE t (a INTEGER, b INTEGER)")
        con.execute("ATTACH ':memory:' AS stage")
        con.execute("CREATE TABLE stage.main.t (z INTEGER); CREATE TABLE stage.main.only_there (q INTEGER)")
        assert warehouse.table_columns(con, "t") == {"a", "b"}
        assert warehouse.table_columns(con, "only_there") == set()


def test_publish_refuses_to_replace_another_metering_warehouse(tmp_path):
    """`metering publish --warehouse staging.duckdb --snapshot data/warehouse.duckdb` (the two paths
    mixed up, $METERING_WAREHOUSE pointing at staging): the snapshot check lets any DuckDB file be
    replaced, so the main warehouse, its 3 rows and the commits in its log were swapped for a copy of the
    staging one (0 rows) and `published` printed. A warehouse is told from a snapshot by what only a
    snapshot has, its `analytics` views: refused, and the main warehouse keeps its 3 + 1 rows."""
    staging, main = tmp_path / "staging.duckdb", tmp_path / "warehouse.duckdb"
    warehouse.connect(staging).close()
    with warehouse.open_warehouse(main) as con:
        con.execute("CREATE TABLE kept AS SELECT range AS n FROM range(3)")
    _killed_writer(main, "INSERT INTO kept VALUES (3)")   # a commit that lives in the log only
    with pytest.raises(BadInputError, match=r"warehouse\.duckdb"):
        warehouse.publish(staging, main)
    with duckdb.connect(str(main), read_only=True) as reader:
        assert reader.execute("SELECT count(*) FROM kept").fetchone() == (4,)


def test_publish_refuses_a_snapshot_another_process_holds_open_for_writing(tmp_path):
    """The destination held read-write by another process (a running job's warehouse given as the
    snapshot): it cannot be read to tell what it is, and the swap would lose its writes. Refused, naming
    the holder and what to do; the file is left as it was."""
    wh, snap = tmp_path / "w.duckdb", tmp_path / "s.duckdb"
    warehouse.connect(wh).close()
    warehouse.publish(wh, snap)
    before = snap.read_bytes()
    with _held(snap) as holder, pytest.raises(BadInputError) as raised:
        warehouse.publish(wh, snap)
    assert f"which another process holds open for writing (PID {holder.pid}," in str(raised.value)
    assert "(a snapshot is opened read-only): close that connection" in str(raised.value)
    assert snap.read_bytes() == before


def test_publish_replaces_a_snapshot_an_analyst_has_open_read_only(tmp_path):
    """An analyst's read-only session on the snapshot does not stop a publish (the point of the snapshot):
    the new copy, with the warehouse's new row, is in place."""
    wh, snap = tmp_path / "w.duckdb", tmp_path / "s.duckdb"
    with warehouse.open_warehouse(wh) as con:
        con.execute("CREATE TABLE k AS SELECT 1 AS n")
    warehouse.publish(wh, snap)
    with warehouse.open_warehouse(wh) as con:
        con.execute("INSERT INTO k VALUES (2)")
    with _held(snap, read_only=True):
        assert warehouse.publish(wh, snap) == snap
    with duckdb.connect(str(snap), read_only=True) as reader:
        assert reader.execute("SELECT n FROM k ORDER BY n").fetchall() == [(1,), (2,)]
