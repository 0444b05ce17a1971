"""The one seam to the DuckDB warehouse: connections, schema migrations, partition writes, publishing.

Nothing else in the project builds connection strings or attaches databases. Moving the warehouse
to DuckLake or MotherDuck is a change to this module only.

- Sessions run in UTC (`SET TimeZone='UTC'`), whatever the host says.
- The schema is a numbered list of SQL files in `metering/migrations/` (`NNN_name.sql`), applied in
  order and recorded in `schema_migrations`; a writable connection brings the file up to date.
  Number ranges by domain: 001-009 ingest, 010-019 rating, 020-029 Stripe push/catalog,
  030-039 webhooks/state, 040-049 dunning, 050-059 reconciliation/reports.
- Partition writes are delete-then-insert in one transaction (`replace_rows`), so re-running gives
  the state of running once. The helper keeps the "where" explicit so it can later switch to an
  append-only "latest load wins" layout for DuckLake.
- `publish` copies the warehouse to a snapshot file and swaps it in with an atomic rename, so
  analysts reading the snapshot are never blocked by, and never see half of, a running job.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import logging
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from metering import config, files
from metering.errors import BadInputError, MeteringError, WarehouseLockedError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VIEWS_DIR = Path(__file__).parent / "views"


_MEMORY_LIMIT = re.compile(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)")
_UNIT_BYTES = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30,
               "TiB": 2**40}
MIN_MEMORY_LIMIT = 64 * 10**6
"""Below this DuckDB cannot do the ingestion's work ("0GB" failed with an Out of Memory error)."""
MAX_MEMORY_LIMIT = 10**15
"""1PB: no machine has more; DuckDB's own parser refuses values above 2^63 bytes ("Memory value out of
range", which surfaced as a bad input naming DuckDB's parser)."""


def memory_limit_bytes(text: str) -> float:
    """The bytes of a size `is_memory_limit` accepts: 2GB -> 2e9, 512MiB -> 536870912."""
    match = _MEMORY_LIMIT.fullmatch(text)
    assert match is not None, text
    return float(text[:match.start(2)].strip()) * _UNIT_BYTES[match.group(2)]


def is_memory_limit(text: str) -> bool:
    """A DuckDB memory_limit written as a size such as 2GB or 512MiB (nothing else reaches SQL)."""
    return _MEMORY_LIMIT.fullmatch(text) is not None


def memory_limit_problem(text: str) -> str | None:
    """What is wrong with a memory_limit, or None: not a size, or a size outside 64MB .. 1PB."""
    if not is_memory_limit(text):
        return f"{text!r} is not a size like 2GB or 512MiB"
    if not MIN_MEMORY_LIMIT <= memory_limit_bytes(text) <= MAX_MEMORY_LIMIT:
        return f"{text!r} is outside 64MB .. 1PB"
    return None


def _on_a_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # no stdout, or a closed one
        return False


def _configure(con: duckdb.DuckDBPyConnection, memory_limit: str | None, threads: int | None) -> None:
    con.execute("SET TimeZone = 'UTC'")
    # DuckDB draws a progress bar on stdout for any query that runs over 2 s: on a terminal it shows
    # long work, but piped it would land in the middle of `--json` output or a job's logs
    if not _on_a_terminal():
        con.execute("SET enable_progress_bar = false")
    if memory_limit:
        if problem := memory_limit_problem(memory_limit.strip()):
            raise BadInputError(f"memory limit: {problem}")
        try:
            con.execute(f"SET memory_limit = '{memory_limit.strip()}'")  # SET takes no parameters; checked above
        except duckdb.Error as exc:   # a size DuckDB cannot hold (99999999TB)
            raise BadInputError(f"memory limit: {memory_limit!r}: {str(exc).splitlines()[0]}") from None
    if threads:
        con.execute(f"SET threads = {int(threads)}")


def _is_lock_conflict(message: str) -> bool:
    """DuckDB's error for a file another process holds: 'Could not set lock on file "...": Conflicting
    lock is held in <program> (PID n)' or '...: Resource temporarily unavailable'. Not just "lock":
    a corrupt file's error says '... in block at location ...'."""
    return "Could not set lock on file" in message


def _lock_holder(message: str) -> str:
    """' (PID n, program)' from DuckDB's lock error, which names the process holding the file."""
    found = re.search(r"lock is held in (.+?) \(PID (\d+)\)", message)
    return f" (PID {found.group(2)}, {found.group(1)})" if found else ""


def _held_by_reader(message: str) -> bool:
    """DuckDB's lock error says the file could still be opened read-only: the holder is a read-only
    connection (a shared lock), not a writer."""
    return "would be able to open this database in read-only mode" in message


_HELD_BY_WRITER = ("the warehouse is held by another writing process{holder}; wait for the running job to "
                   "finish, or read the published snapshot instead")
_HELD_BY_READER = ("the warehouse is open read-only in another process{holder}, which keeps every writer out: "
                   "close that connection (analysts query the published snapshot, which keeps no job waiting)")


def _open_failure(path: Path, exc: duckdb.Error, when_locked: str) -> MeteringError:
    """Why DuckDB would not open the warehouse at `path`, told in one place for every opener:
    `when_locked` (its `{holder}` names the holding process) if another process holds the file,
    else the file itself is unreadable (not DuckDB's, or corrupt) and DuckDB's reason is bad input."""
    message = str(exc)
    if _is_lock_conflict(message):
        return WarehouseLockedError(f"{path}: {when_locked.format(holder=_lock_holder(message))}")
    return BadInputError(f"{path}: cannot open the warehouse: {message.splitlines()[0]}")


def connect(
    path: str | os.PathLike[str] | None = None,
    *,
    read_only: bool = False,
    memory_limit: str | None = None,
    threads: int | None = None,
    wait_seconds: float = 0.0,
    must_exist: bool = False,
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse (UTC session); a writable connection applies pending migrations.

    Raises `WarehouseLockedError` if another process holds the file and it is not released within
    `wait_seconds` (saying once, as a warning, whom it waits for), and `BadInputError` if the file
    cannot be a warehouse, or does not exist and `must_exist` is set: commands that only derive from
    what is stored pass it, so a mistyped path fails instead of creating an empty warehouse.
    """
    target = config.warehouse_path(path)
    if (must_exist or read_only) and not target.exists():
        raise BadInputError(f"{target}: no warehouse there (check --warehouse or $METERING_WAREHOUSE; "
                            "`metering ingest` creates one)")
    if not read_only:
        config.ensure_file_target(target, "warehouse")
    _refuse_other_formats(target)
    deadline = time.monotonic() + wait_seconds
    told = False
    while True:
        try:
            con = duckdb.connect(str(target), read_only=read_only)
            break
        except (duckdb.InternalException, duckdb.FatalException) as exc:
            if "WAL" not in str(exc):
                raise
            raise _log_replay_failure(target, exc) from None
        except duckdb.IOException as exc:
            reader = _held_by_reader(str(exc))
            if not _is_lock_conflict(str(exc)) or time.monotonic() >= deadline:
                raise _open_failure(target, exc, _HELD_BY_READER if reader else _HELD_BY_WRITER) from None
            if not told:
                holder, until = (("open read-only in another process", "close") if reader
                                 else ("held by another writing process", "finish"))
                log.warning(f"{target}: {holder}{_lock_holder(str(exc))}; waiting up to {wait_seconds:g} s for it "
                            f"to {until}")
                told = True
            time.sleep(0.2)
    try:
        _configure(con, memory_limit, threads)
        if not read_only:
            apply_migrations(con, target)
    except BaseException as exc:
        con.close()
        failure = _failure_in_use(target, exc, memory_limit) if isinstance(exc, duckdb.Error) else None
        if failure is None:
            raise
        raise failure from exc
    return con


def _log_replay_failure(path: Path, exc: duckdb.Error) -> BadInputError:
    """DuckDB could not replay the write-ahead log beside `path` onto it (a log left beside a restored file)."""
    return BadInputError(f"{path}: its write-ahead log {database_files(path)[1]} cannot be replayed onto it: "
                         f"{str(exc).splitlines()[0]} (a log left beside a file restored from a snapshot "
                         "belongs to the file it replaced: move it aside; see docs/durability.md)")


def _failure_in_use(path: Path, exc: duckdb.Error, memory_limit: str | None = None) -> MeteringError | None:
    """A DuckDB error met while working on an open warehouse that is about the file or the settings, not
    a bug: corruption found in a block read late (exit 3, like corruption found at open), a write the
    disk refused (full), or a memory_limit too small for the work. None for anything else."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if "Corrupt database file" in message:
        return BadInputError(f"{path}: the warehouse file is corrupt: {message} (restore it from the last "
                             "published snapshot: see docs/durability.md)")
    if "database has been invalidated" in message:  # what every statement says after a fatal error
        return BadInputError(f"{path}: DuckDB stopped working on the warehouse after a fatal error: {message} "
                             "(if it will not reopen, see docs/durability.md)")
    if any(sign in message for sign in ("No space left on device", "File too large", "Disk quota exceeded")):
        return BadInputError(f"{path}: DuckDB could not write the warehouse: {message} (free space on its disk and "
                             "run the command again: the failed transaction left nothing behind)")
    if memory_limit and isinstance(exc, duckdb.OutOfMemoryException):
        return BadInputError(f"memory limit {memory_limit} is too small for this work: {message}")
    return None


def database_files(path: Path) -> tuple[Path, Path]:
    """A DuckDB database file and its write-ahead log, which DuckDB names after it plus `.wal`."""
    return path, path.with_name(path.name + ".wal")


def overwrites_database(target: Path, database: Path) -> bool:
    """Whether writing `target` would replace the DuckDB file `database` or its write-ahead log
    (the log too: a snapshot swapped in for it lost the commits it held)."""
    for file in database_files(database):
        if target.resolve() == file.resolve() or (target.exists() and file.exists() and os.path.samefile(target, file)):
            return True
    return False


def remove_database(path: Path) -> None:
    """Delete a DuckDB database file and its write-ahead log, where they exist."""
    for file in database_files(path):
        file.unlink(missing_ok=True)


@contextlib.contextmanager
def open_warehouse(
    path: str | os.PathLike[str] | None = None, *, read_only: bool = False, **kwargs: Any
) -> Iterator[duckdb.DuckDBPyConnection]:
    """`connect` as a context manager that always closes the connection. A corrupt block met inside
    the block, or a memory_limit too small for the work, becomes a `BadInputError` naming the file."""
    con = connect(path, read_only=read_only, **kwargs)
    try:
        yield con
    except duckdb.Error as exc:
        failure = _failure_in_use(config.warehouse_path(path), exc, kwargs.get("memory_limit"))
        if failure is None:
            raise
        raise failure from exc
    finally:
        con.close()


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql"))


def pending_migrations(done: set[str]) -> list[str]:
    """The migrations (file stems, in order) not in `done`, the versions a warehouse has recorded."""
    return [file.stem for file in migration_files() if file.stem not in done]


def _refuse_foreign_database(con: duckdb.DuckDBPyConnection, where: Path | None) -> None:
    """Refuse a DuckDB file that holds tables or views but no `schema_migrations`: another
    application's database. It was taken over (our tables created beside its own) and the first of
    our queries to meet a table of its that shares a name failed with a BinderException traceback."""
    ours, theirs = con.execute(
        "SELECT count(*) FILTER (table_name = 'schema_migrations' AND schema_name = 'main'), count(*) "
        "FROM (SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "      UNION ALL SELECT schema_name, view_name FROM duckdb_views() "
        "      WHERE database_name = current_database() AND NOT internal)").fetchone()
    if theirs and not ours:
        raise BadInputError(f"{where or 'the warehouse'}: not a metering warehouse: it holds {theirs} table(s) or "
                            f"view(s) but no schema_migrations (another application's database?); nothing was "
                            f"changed: choose another --warehouse file")


def migration_checksum(sql: str) -> str:
    """What `schema_migrations.checksum` records of a migration's text: SHA-256, line ends as `\n` (a
    checkout that turns them into `\r\n` is the same migration)."""
    return hashlib.sha256(sql.replace("\r\n", "\n").encode()).hexdigest()


def _refuse_other_migrations(recorded: dict[str, str], where: Path | None) -> None:
    """Refuse a warehouse whose recorded migrations are not this metering's: one with no file here (the
    warehouse was built by a newer version), or one whose text has changed since it was applied (the
    schema it made is not the one this code expects). Either way, working on it would fail late, with a
    DuckDB error in the middle of a job, or write rows of another layout."""
    ours = {file.stem: file for file in migration_files()}
    unknown = sorted(set(recorded) - set(ours))
    if unknown:
        raise BadInputError(
            f"{where or 'the warehouse'}: its schema was made by a newer version of metering (migration(s) "
            f"{', '.join(unknown)} unknown here); use that version, or ingest the raw files into a new warehouse")
    changed = sorted(v for v, checksum in recorded.items() if checksum != migration_checksum(ours[v].read_text()))
    if changed:
        raise BadInputError(
            f"{where or 'the warehouse'}: migration(s) {', '.join(changed)} were applied from another text than "
            f"metering/migrations/<name>.sql holds now (edited after they ran), so its schema is not the one this "
            f"version of metering expects; use the version that made it, or ingest the raw files into a new "
            f"warehouse")


def apply_migrations(con: duckdb.DuckDBPyConnection, where: Path | None = None) -> list[str]:
    """Apply every migration not yet recorded, each in its own transaction. Returns those applied.

    A warehouse that recorded a migration this version does not have, or one whose text has changed
    since, is refused (`BadInputError`, naming them) before anything is applied.

    A migration the stored data does not allow (say, 003 meeting an event whose file has no manifest
    entry) is rolled back and raises `BadInputError` naming it and `where` (the warehouse file).
    """
    _refuse_foreign_database(con, where)
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version VARCHAR NOT NULL, checksum VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
    )
    recorded = dict(con.execute("SELECT version, checksum FROM schema_migrations").fetchall())
    _refuse_other_migrations(recorded, where)
    applied = []
    for version in pending_migrations(set(recorded)):
        sql = (MIGRATIONS_DIR / f"{version}.sql").read_text()
        try:
            with transaction(con):
                con.execute(sql)
                con.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?, now())",
                    [version, migration_checksum(sql)],
                )
        except duckdb.Error as exc:
            if (failure := _failure_in_use(where or Path("warehouse"), exc)) is not None:
                raise failure from exc
            raise BadInputError(
                f"{where or 'the warehouse'}: migration {version} cannot be applied to the data stored: "
                f"{str(exc).splitlines()[0]} (rolled back: the warehouse keeps its schema before {version}; "
                f"see metering/migrations/{version}.sql for what it needs)") from None
        applied.append(version)
    if applied:
        log.debug("applied migrations %s", applied)
    return applied


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection, *, within: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN … COMMIT, rolling back on any exception; with `within`, nothing: the caller has opened the
    transaction these writes belong to."""
    if within:
        yield con
        return
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        # after a fatal error (a corrupt block) DuckDB refuses the ROLLBACK too; the first error says why
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


Frame = pl.DataFrame | pa.Table


def _as_arrow(frame: Frame) -> pa.Table:
    return frame.to_arrow() if isinstance(frame, pl.DataFrame) else frame


def insert_frame(con: duckdb.DuckDBPyConnection, table: str, frame: Frame) -> int:
    """Insert a frame's rows by column name (columns the frame lacks get their defaults/NULL)."""
    arrow = _as_arrow(frame)
    if arrow.num_rows == 0:
        return 0
    view = f"_frame_{abs(hash((table, id(arrow))))}"
    con.register(view, arrow)
    try:
        cols = ", ".join(f'"{c}"' for c in arrow.column_names)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {view}")
    finally:
        con.unregister(view)
    return arrow.num_rows


def replace_rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    where_sql: str,
    params: Sequence[Any],
    frame: Frame,
    *,
    in_transaction: bool = False,
) -> int:
    """Delete the rows matching `where_sql` and insert `frame`, atomically. Returns rows inserted.

    `where_sql` uses `?` placeholders bound to `params` (never string formatting of values). Pass
    `in_transaction=True` when the caller already opened a transaction that spans more writes.
    """
    with transaction(con, within=in_transaction):
        con.execute(f"DELETE FROM {table} WHERE {where_sql}", list(params))
        return insert_frame(con, table, frame)


def sql_string(value: str) -> str:
    """Quote a string as a SQL literal, for the few statements (ATTACH, COPY) that take no parameters."""
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(name: str) -> str:
    """Quote a name (a column, table, schema or database) for SQL."""
    return '"' + name.replace('"', '""') + '"'


def query_frame(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
    """Run a parameterised query and return a Polars frame (Decimals stay Decimals)."""
    return pl.from_arrow(con.execute(sql, list(params)).to_arrow_table())  # type: ignore[return-value]


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> set[str]:
    """The columns of `table` in the current schema (empty when the table does not exist): how the
    modules that read a table an optional step writes tell whether, and in which shape, it is there."""
    rows = con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? AND table_schema = current_schema() "
        "AND table_catalog = current_database()",
        [table],
    ).fetchall()
    return {r[0] for r in rows}


def publish(
    warehouse: str | os.PathLike[str] | None = None,
    snapshot: str | os.PathLike[str] | None = None,
    *,
    con: duckdb.DuckDBPyConnection | None = None,
) -> Path:
    """Copy the warehouse into a fresh snapshot file, add the analyst views, and swap it in atomically.

    Pass `con` when the caller already holds the warehouse (a writer connection); otherwise the
    warehouse is opened read-only for the copy. Readers of the old snapshot keep their open file;
    new readers see the new one. Returns the snapshot path.
    """
    dest = config.ensure_file_target(config.snapshot_path(snapshot), "snapshot")
    _refuse_catalog_named_like_the_views(dest)
    _refuse_overwriting_another_file(dest)
    held = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()[0] \
        if con is not None else config.warehouse_path(warehouse)
    source = Path(held) if held else None   # an in-memory warehouse has no path (and is no file to overwrite)
    if source is not None and overwrites_database(dest, source):
        # the swap would replace the warehouse itself, or its log, with the copy
        raise BadInputError(f"{dest}: the snapshot cannot be the warehouse or its write-ahead log; choose another "
                            f"file (the default is data/snapshot.duckdb)")
    if dest.exists() and dest.stat().st_size:
        _refuse_replacing_a_warehouse(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    _remove_abandoned_copies(dest)
    remove_database(tmp)
    try:
        copied = _write_snapshot(tmp, warehouse, con)
        files.sync(tmp)
        # a log beside the old snapshot (a session that opened it read-write and was killed) would be
        # replayed onto the new one by its next reader
        database_files(dest)[1].unlink(missing_ok=True)
        os.replace(tmp, dest)
        files.sync(dest.parent)   # the rename lives in the folder: a power cut could bring back the old one
    except BaseException:
        remove_database(tmp)   # a failed publish leaves the old snapshot, and nothing else
        raise
    log.info("published snapshot", extra={"snapshot": str(dest), "copied": copied})
    return dest


ANALYST_SCHEMA = "analytics"
"""The snapshot's schema of analyst views (`metering/views/`)."""


DUCKDB_MAGIC = b"DUCK"
"""What a DuckDB database file holds at bytes 8-11."""


def _holds_duckdb(path: Path) -> bool | None:
    """Whether the regular file at `path` begins as a DuckDB database does (an empty one counts: publish
    may replace it, and DuckDB 1.5's own open refuses it as a warehouse, which `connect` reports as bad
    input); None for something other than a regular file (a FIFO would block the read, a device worse).
    Raises OSError when there is nothing there or it cannot be read."""
    if not stat.S_ISREG(os.stat(path).st_mode):
        return None
    with open(path, "rb") as fh:
        head = fh.read(12)
    return not head or head[8:12] == DUCKDB_MAGIC


def _refuse_other_formats(path: Path) -> None:
    """Refuse a file that is not a DuckDB database before DuckDB opens it: DuckDB opens a `.csv`,
    `.parquet` or `.json` file as an in-memory database with a view over it, which a read-only open
    met as a CatalogException traceback ("Cannot launch in-memory database in read-only mode")."""
    try:
        holds = _holds_duckdb(path)
    except OSError:   # missing or unreadable: DuckDB's own open says which
        return
    if holds is False:
        raise BadInputError(f"{path}: cannot open the warehouse: not a valid DuckDB database file (its first bytes "
                            f"are no DuckDB header: a CSV, JSON or Parquet file? check --warehouse or "
                            f"$METERING_WAREHOUSE)")


def _refuse_overwriting_another_file(dest: Path) -> None:
    """The swap replaces `dest`: refuse when it is a file that is not a DuckDB database (a mistyped
    `--snapshot customers.csv` replaced the customer list with a snapshot, and printed `published`)."""
    try:
        holds = _holds_duckdb(dest)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BadInputError(f"{dest}: cannot check the file the snapshot would replace: {exc.strerror or exc}") from None
    if holds is None:
        raise BadInputError(f"{dest}: the snapshot would replace this, which is not a regular file; choose "
                            f"another file (the default is data/snapshot.duckdb)")
    if not holds:
        raise BadInputError(f"{dest}: the snapshot would replace this file, which is not a DuckDB database; choose "
                            f"another file (the default is data/snapshot.duckdb)")


def _refuse_replacing_a_warehouse(dest: Path) -> None:
    """Refuse to replace a DuckDB file that is a warehouse, not a snapshot: one with `main.schema_migrations`
    but no analyst views (the paths mixed up), or one a process holds open for writing (a running job's
    warehouse; a snapshot is only ever read): the swap would lose its data and the writes in its log."""
    try:
        with duckdb.connect(str(dest), read_only=True) as con:
            migrated, views = con.execute(
                "SELECT (SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() AND "
                "schema_name = 'main' AND table_name = 'schema_migrations'), (SELECT count(*) FROM duckdb_views() "
                "WHERE database_name = current_database() AND schema_name = ?)", [ANALYST_SCHEMA]).fetchone()
    except duckdb.IOException as exc:
        if _is_lock_conflict(str(exc)):
            raise BadInputError(f"{dest}: the snapshot would replace this file, which another process holds open "
                                f"for writing{_lock_holder(str(exc))} (a snapshot is opened read-only): close that "
                                "connection, or choose another file (the default is data/snapshot.duckdb)") from None
        return
    except duckdb.Error:
        return
    if migrated and not views:
        raise BadInputError(f"{dest}: the snapshot would replace this file, which is a metering warehouse (it has "
                            f"schema_migrations and no {ANALYST_SCHEMA} views); choose another file (the default is "
                            f"data/snapshot.duckdb)")


def _refuse_catalog_named_like_the_views(dest: Path) -> None:
    """DuckDB names a file's catalog after its name (leading dots dropped, up to the first dot): in a
    file called `analytics.duckdb` every `analytics.<view>` is ambiguous between the catalog and the
    views' schema, for the views' own creation and for every analyst query."""
    catalog = dest.name.lstrip(".").split(".")[0]
    if catalog.lower() == ANALYST_SCHEMA:
        raise BadInputError(
            f"{dest}: a snapshot cannot be named {dest.name}: DuckDB would name its catalog {catalog!r}, which makes "
            f"every `{ANALYST_SCHEMA}.<view>` ambiguous; choose another name (the default is data/snapshot.duckdb)")


def refuse_schema_behind(con: duckdb.DuckDBPyConnection, source: Path, *, then: str, catalog: str = "main") -> None:
    """Refuse a warehouse (attached as `catalog`) that has migrations to apply (restored from a backup, or
    not yet opened by a writer since an upgrade), or whose recorded migrations are not this metering's:
    for work that only reads it (a read-only connection does not migrate), written for the current
    schema. `then` tells the user what to do (the message ends with it)."""
    try:
        recorded = dict(con.execute(f"SELECT version, checksum FROM {catalog}.schema_migrations").fetchall())
    except duckdb.CatalogException:
        raise BadInputError(f"{source}: not a metering warehouse (it has no schema_migrations table)") from None
    _refuse_other_migrations(recorded, source)
    if pending := pending_migrations(set(recorded)):
        raise BadInputError(
            f"{source}: the warehouse's schema is behind this version of metering (not yet applied: "
            f"{', '.join(pending)}); {then}")


def _remove_abandoned_copies(dest: Path) -> None:
    """Delete the temporary copies (`.<snapshot>.<pid>.tmp` and their logs) that a killed publish
    left: their process no longer runs. A running publish's copy is left alone."""
    prefix = f".{dest.name}."
    for leftover in dest.parent.glob(f"{glob.escape(prefix)}*.tmp*"):
        copy = leftover.with_name(leftover.name.removesuffix(".wal"))   # a log may outlive its file
        pid = copy.name[len(prefix):].removesuffix(".tmp")
        if copy.name.endswith(".tmp") and pid.isdigit() and not _process_alive(int(pid)):
            remove_database(copy)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, someone else's
        return True
    return True


FILE_COPY, TABLE_COPY = "file", "tables"
"""How `publish` copied the warehouse: its file's bytes, or table by table (`COPY FROM DATABASE`)."""


def _write_snapshot(tmp: Path, warehouse: str | os.PathLike[str] | None, con: duckdb.DuckDBPyConnection | None) -> str:
    """The warehouse copied into the new file `tmp`, with the analyst views added; returns how it was
    copied: `file` or `tables`.

    The copy is the warehouse file's own bytes where the file holds every committed change (no
    write-ahead log to replay) and nothing can write it during the copy; every data block of the copy
    is then read once, so a corrupt block still fails the publish. An 11M-event warehouse: 0.75-0.9 s
    in all, where `COPY FROM DATABASE`, which rebuilds and recompresses every table, took 4.4-4.6 s
    (on every job's last step, growing with the data). Otherwise, or where the copy's tables do not
    hold the warehouse's rows, it is `COPY FROM DATABASE`.
    """
    copied = FILE_COPY
    if con is not None:
        source_db = con.execute("SELECT current_database()").fetchone()[0]
        if not _copy_held_file(con, source_db, tmp):
            copied = TABLE_COPY
            con.execute(f"ATTACH {sql_string(str(tmp))} AS snapshot_target")
            try:
                con.execute(f"COPY FROM DATABASE {sql_identifier(source_db)} TO snapshot_target")
            finally:
                con.execute("DETACH snapshot_target")
    else:
        source = config.warehouse_path(warehouse)
        if not source.exists():
            raise BadInputError(f"{source}: no warehouse there (check --warehouse or $METERING_WAREHOUSE)")
        # Copy from a read-only attachment, which also keeps writers out until the copy is done (a
        # read-only connection could not attach the target for writing).
        _refuse_other_formats(source)
        reader = duckdb.connect()
        try:
            try:
                reader.execute(f"ATTACH {sql_string(str(source))} AS snapshot_source (READ_ONLY)")
            except duckdb.IOException as exc:
                raise _open_failure(source, exc, "a running job holds the warehouse{holder}; publish from that "
                                    "job, or retry when it ends") from None
            except (duckdb.InternalException, duckdb.FatalException) as exc:
                if "WAL" not in str(exc):
                    raise
                raise _log_replay_failure(source, exc) from None
            # the analyst views are written for the current schema
            refuse_schema_behind(reader, source, catalog="snapshot_source",
                                 then="any writing command applies them (e.g. `metering ingest` of a folder "
                                      "already ingested), then publish again")
            if not (_log_is_empty(source) and _copy_file(reader, "snapshot_source", source, tmp)):
                copied = TABLE_COPY
                reader.execute(f"ATTACH {sql_string(str(tmp))} AS snapshot_target")
                try:
                    reader.execute("COPY FROM DATABASE snapshot_source TO snapshot_target")
                except duckdb.Error as exc:
                    failure = _failure_in_use(source, exc)
                    if failure is None:
                        raise
                    raise failure from exc
                reader.execute("DETACH snapshot_target")
            reader.execute("DETACH snapshot_source")
        finally:
            reader.close()
    views = sorted(VIEWS_DIR.glob("*.sql")) if VIEWS_DIR.exists() else []
    if views:
        snap = duckdb.connect(str(tmp))
        try:
            snap.execute("SET TimeZone = 'UTC'")
            for file in views:
                snap.execute(file.read_text())
            snap.execute("CHECKPOINT")
        except duckdb.Error as exc:   # the copy's disk filling up as the views are written, say
            failure = _failure_in_use(tmp, exc)
            if failure is None:
                raise
            raise failure from exc
        finally:
            snap.close()
    return copied


def _log_is_empty(path: Path) -> bool:
    """No write-ahead log beside the file: every committed change is in the file itself."""
    wal = database_files(path)[1]
    return not wal.exists() or wal.stat().st_size == 0


def _copy_held_file(con: duckdb.DuckDBPyConnection, database: str, tmp: Path) -> bool:
    """Copy the warehouse `con` holds as a writer by its file, after a checkpoint. False (nothing
    copied) for an in-memory warehouse, or when the checkpoint cannot run (another transaction of this
    process is open) or leaves a log."""
    held = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = ?", [database]).fetchone()[0]
    if not held:
        return False
    try:
        con.execute(f"CHECKPOINT {sql_identifier(database)}")
    except duckdb.Error as exc:
        log.info("publishing by a table copy: the warehouse could not be checkpointed: %s", exc)
        return False
    return _log_is_empty(Path(held)) and _copy_file(con, database, Path(held), tmp)


def _tables(con: duckdb.DuckDBPyConnection, database: str) -> list[tuple[str, str]]:
    """The (schema, table) names of `database`'s tables."""
    return con.execute("SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY ALL",
                       [database]).fetchall()


def _qualified(database: str, schema: str, table: str) -> str:
    return ".".join(map(sql_identifier, (database, schema, table)))


def _table_rows(con: duckdb.DuckDBPyConnection, database: str) -> dict[tuple[str, str], int]:
    """{(schema, table): rows} of `database`."""
    return {name: con.execute(f"SELECT count(*) FROM {_qualified(database, *name)}").fetchone()[0]
            for name in _tables(con, database)}


def _read_every_value(con: duckdb.DuckDBPyConnection, database: str) -> None:
    """Read every stored value of every table, so that DuckDB checks every data block's checksum: a
    block corrupted on disk raises here, as it did in the table copy, instead of being copied (11M
    events: ~0.7 s)."""
    for schema, table in _tables(con, database):
        columns = [c for (c,) in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND schema_name = ? AND table_name = ? "
            "ORDER BY column_index", [database, schema, table]).fetchall()]
        if columns:
            con.execute(f"SELECT {', '.join(f'bit_xor(hash({sql_identifier(c)}))' for c in columns)} "
                        f"FROM {_qualified(database, schema, table)}").fetchall()


def _copy_file(con: duckdb.DuckDBPyConnection, database: str, source: Path, tmp: Path) -> bool:
    """Copy the database file `source` (attached to `con` as `database`, which keeps other writers out)
    to `tmp`; check that the copy's tables hold as many rows as the warehouse's, and that every data
    block of the copy reads. False (and no `tmp` left) where the rows differ; a corrupt block raises,
    naming the warehouse."""
    shutil.copyfile(source, tmp)
    copied = duckdb.connect(str(tmp), read_only=True)
    try:
        copy_db = copied.execute("SELECT current_database()").fetchone()[0]
        same = _table_rows(copied, copy_db) == _table_rows(con, database)
        if same:
            try:
                _read_every_value(copied, copy_db)
            except duckdb.Error as exc:
                failure = _failure_in_use(source, exc)
                if failure is None:
                    raise
                raise failure from exc
    finally:
        copied.close()
    if not same:
        log.warning("publishing by a table copy: the copied warehouse file %s does not hold the warehouse's rows",
                    source)
        remove_database(tmp)
    return same
