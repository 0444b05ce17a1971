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
import hashlib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa

from metering import config
from metering.errors import BadInputError, MeteringError, WarehouseLockedError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VIEWS_DIR = Path(__file__).parent / "views"


_MEMORY_LIMIT = re.compile(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)")


def is_memory_limit(text: str) -> bool:
    """A DuckDB memory_limit written as a size such as 2GB or 512MiB (nothing else reaches SQL)."""
    return _MEMORY_LIMIT.fullmatch(text) is not None


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
        if not is_memory_limit(memory_limit.strip()):
            raise BadInputError(f"memory limit: {memory_limit!r} is not a size like 2GB or 512MiB")
        con.execute(f"SET memory_limit = '{memory_limit.strip()}'")  # SET takes no parameters; checked above
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
) -> duckdb.DuckDBPyConnection:
    """Open the warehouse (UTC session); a writable connection applies pending migrations.

    Raises `WarehouseLockedError` if another process holds the file and it is not released within
    `wait_seconds`.
    """
    target = config.warehouse_path(path)
    if not read_only:
        target.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            con = duckdb.connect(str(target), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if not _is_lock_conflict(str(exc)) or time.monotonic() >= deadline:
                raise _open_failure(target, exc, "the warehouse is held by another writing process{holder}; "
                                    "wait for the running job to finish, or read the published snapshot instead"
                                    ) from None
            time.sleep(0.2)
    try:
        _configure(con, memory_limit, threads)
        if not read_only:
            apply_migrations(con)
    except BaseException:
        con.close()
        raise
    return con


def database_files(path: Path) -> tuple[Path, Path]:
    """A DuckDB database file and its write-ahead log, which DuckDB names after it plus `.wal`."""
    return path, path.with_name(path.name + ".wal")


def remove_database(path: Path) -> None:
    """Delete a DuckDB database file and its write-ahead log, where they exist."""
    for file in database_files(path):
        file.unlink(missing_ok=True)


@contextlib.contextmanager
def open_warehouse(
    path: str | os.PathLike[str] | None = None, *, read_only: bool = False, **kwargs: Any
) -> Iterator[duckdb.DuckDBPyConnection]:
    """`connect` as a context manager that always closes the connection."""
    con = connect(path, read_only=read_only, **kwargs)
    try:
        yield con
    finally:
        con.close()


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9]_*.sql"))


def apply_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply every migration not yet recorded, each in its own transaction. Returns those applied."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version VARCHAR NOT NULL, checksum VARCHAR NOT NULL, applied_at TIMESTAMPTZ NOT NULL)"
    )
    done = {row[0] for row in con.execute("SELECT version FROM schema_migrations").fetchall()}
    applied = []
    for file in migration_files():
        version = file.stem
        if version in done:
            continue
        sql = file.read_text()
        with transaction(con):
            con.execute(sql)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, now())",
                [version, hashlib.sha256(sql.encode()).hexdigest()],
            )
        applied.append(version)
    if applied:
        log.debug("applied migrations %s", applied)
    return applied


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN … COMMIT, rolling back on any exception."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
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
    def _do() -> int:
        con.execute(f"DELETE FROM {table} WHERE {where_sql}", list(params))
        return insert_frame(con, table, frame)

    if in_transaction:
        return _do()
    with transaction(con):
        return _do()


def sql_string(value: str) -> str:
    """Quote a string as a SQL literal, for the few statements (ATTACH, COPY) that take no parameters."""
    return "'" + value.replace("'", "''") + "'"


def query_frame(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> pl.DataFrame:
    """Run a parameterised query and return a Polars frame (Decimals stay Decimals)."""
    return pl.from_arrow(con.execute(sql, list(params)).to_arrow_table())  # type: ignore[return-value]


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
    dest = config.snapshot_path(snapshot)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    remove_database(tmp)
    if con is not None:
        source_db = con.execute("SELECT current_database()").fetchone()[0]
        con.execute(f"ATTACH {sql_string(str(tmp))} AS snapshot_target")
        try:
            con.execute(f'COPY FROM DATABASE "{source_db}" TO snapshot_target')
        finally:
            con.execute("DETACH snapshot_target")
    else:
        # Copy from a read-only attachment into the new file (a read-only connection could not
        # attach the target for writing).
        target = duckdb.connect(str(tmp))
        try:
            source = config.warehouse_path(warehouse)
            try:
                target.execute(f"ATTACH {sql_string(str(source))} AS snapshot_source (READ_ONLY)")
            except duckdb.IOException as exc:
                raise _open_failure(source, exc, "a running job holds the warehouse{holder}; publish from that "
                                    "job, or retry when it ends") from None
            target_db = target.execute("SELECT current_database()").fetchone()[0]
            target.execute(f'COPY FROM DATABASE snapshot_source TO "{target_db}"')
            target.execute("DETACH snapshot_source")
        finally:
            target.close()
    views = sorted(VIEWS_DIR.glob("*.sql")) if VIEWS_DIR.exists() else []
    if views:
        snap = duckdb.connect(str(tmp))
        try:
            snap.execute("SET TimeZone = 'UTC'")
            for file in views:
                snap.execute(file.read_text())
            snap.execute("CHECKPOINT")
        finally:
            snap.close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, dest)
    log.info("published snapshot", extra={"snapshot": str(dest)})
    return dest
