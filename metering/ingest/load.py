"""Load: ingest raw files into the warehouse, one file per transaction, conservation checked.

For each file: hash its content (a file whose content hash is in `ingested_files` is skipped: re-
ingesting changes nothing), read and validate every row into a temp table, then in ONE transaction
resolve duplicates against what is stored, insert the clean rows (in file order), the
quarantined rows and the manifest entry, check conservation (rows read = accepted + quarantined +
duplicates dropped, and the stored counts equal the manifest's) and commit. Any error rolls the
whole file back: never rows without their manifest entry, never an entry without its rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from decimal import Context, Decimal, localcontext
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from metering.config import refuse_non_utf8
from metering.errors import BadInputError, CheckFailedError, FileChangedError
from metering.ingest import dedupe, readers, validate
from metering.rules.meters import Meter, load_meters

log = logging.getLogger(__name__)

# The staging table lives in an in-memory database attached to the connection, not in its temp
# space, so that other cursors of the same database can read it: the contract check exports it to
# Arrow on two threads (DuckDB's export runs on one thread per query).
STAGE_DB = "ingest_stage"
EVENTS = f"{STAGE_DB}.main._ingest_events"
OUTCOMES = "_ingest_outcomes"
ACCEPTED = f"reason IS NULL AND line NOT IN (SELECT line FROM {OUTCOMES})"
"""The staged rows that go into usage_events: valid, and neither a duplicate nor a conflict."""
PANDERA_BATCH_ROWS = 500_000  # per thread: two threads hold at most 1M exported rows
COMPACT_MAX_ROWS = 2_000_000
# Up to this many conflicting lines are fetched by seeking (each parsed in Python to check it); more
# are cheaper to find by re-reading the file (~0.1 s per million lines).
SEEK_MAX_LINES = 50_000


@dataclass
class IngestResult:
    """What one file did to the warehouse."""

    path: str
    file_hash: str
    format: str
    status: str  # "ingested" | "skipped" (same content already ingested)
    file_id: int | None = None  # ingested_files.file_id, which usage_events.file_id refers to
    rows_read: int = 0
    rows_accepted: int = 0
    rows_quarantined: int = 0
    duplicates_dropped: int = 0
    conflicting_duplicates: int = 0
    blank_lines: int = 0
    event_dates: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)
    # the quantities (`value`) the rows carry, where exact: read = accepted + quarantined + dropped
    value_read: Decimal = Decimal(0)
    value_accepted: Decimal = Decimal(0)
    value_quarantined: Decimal = Decimal(0)
    value_dropped: Decimal = Decimal(0)
    seconds: float = 0.0

    @property
    def conserved(self) -> bool:
        return (self.rows_read == self.rows_accepted + self.rows_quarantined + self.duplicates_dropped
                and self.value_read == sum_values((self.value_accepted, self.value_quarantined, self.value_dropped)))

    def as_dict(self) -> dict:
        """JSON-ready: the value sums as decimal text."""
        return {k: decimal_text(v) if isinstance(v, Decimal) else v for k, v in asdict(self).items()}


VALUE_SUMS = ("value_read", "value_accepted", "value_quarantined", "value_dropped")
"""`IngestResult`'s value sums, in the order of the conservation equation."""


_EXACT = Context(prec=80)
"""Python's default 28 digits round a sum of values (DECIMAL(38, 12): up to 38 digits each, 11 rows of
999999999999999.999999999999 make 29), which once refused a valid file as not conserved."""


def sum_values(values: Iterable[Decimal]) -> Decimal:
    """The exact sum of value sums (no rounding to Python's default precision)."""
    with localcontext(_EXACT):
        return sum(values, Decimal(0))


def decimal_text(value: Decimal) -> str:
    """Exact decimal text without trailing zeros or an exponent: 1.500000000000 -> 1.5, 1E+1 -> 10."""
    with localcontext(_EXACT):
        return format(value.normalize(), "f")


class _EventsSink:
    """Readers' rows go through validation straight into the events temp table."""

    def __init__(self, con: duckdb.DuckDBPyConnection, meters: dict[str, Meter], now: datetime) -> None:
        self.con, self.meters, self.now = con, meters, now
        self.reset()

    def reset(self) -> None:
        self.con.execute(f"ATTACH IF NOT EXISTS ':memory:' AS {STAGE_DB}")
        self.con.execute(f"CREATE OR REPLACE TABLE {EVENTS} ({validate.CLASSIFIED_COLUMNS})")

    def insert(self, select_sql: str) -> int:
        sql = validate.classify_select(select_sql, self.meters, self.now)
        return self.con.execute(f"INSERT INTO {EVENTS} {sql}").fetchone()[0]


def _pandera_check(con: duckdb.DuckDBPyConnection, meters: dict[str, Meter], path: Path) -> None:
    """Check the clean rows against the typed contract, in bounded batches, on two threads.

    Each thread exports half of the lines through its own cursor: fetching rows as Arrow is
    single-threaded per query and was nearly all of this check's time (10M rows: 2.2 -> 1.5 s).
    """
    import pandera.errors
    import polars as pl

    first, last = con.execute(f"SELECT min(line), max(line) FROM {EVENTS} WHERE reason IS NULL").fetchone()
    if first is None:
        return
    names = sorted(meters)
    validate.check_clean(validate.empty_clean_frame(), names)  # pandera sets itself up once, here

    def check_lines(low: int, high: int) -> None:
        cursor = con.cursor()
        try:
            cursor.execute("SET TimeZone = 'UTC'")
            reader = cursor.execute(
                f"SELECT {validate.CLEAN_COLUMNS} FROM {EVENTS} WHERE reason IS NULL AND line BETWEEN ? AND ?",
                [low, high]
            ).to_arrow_reader(PANDERA_BATCH_ROWS)
            for batch in reader:
                validate.check_clean(pl.from_arrow(batch), names)  # type: ignore[arg-type]
        finally:
            cursor.close()

    middle = (first + last) // 2
    with ThreadPoolExecutor(max_workers=2) as pool:
        halves = [pool.submit(check_lines, first, middle), pool.submit(check_lines, middle + 1, last)]
        for half in halves:
            try:
                half.result()
            except pandera.errors.SchemaErrors as exc:
                raise CheckFailedError(f"{path}: clean rows breach the usage_events contract: {exc}") from None


def _insert_clean(con: duckdb.DuckDBPyConnection, file_id: int, rows: int) -> int:
    # Up to COMPACT_MAX_ROWS, ordering by line (file order either way) packs the rows left after the
    # filter into whole vectors, which DuckDB appends to a non-empty table markedly faster: 1M rows
    # into a 10M-row table took 0.9 s filtered, 0.6 s filtered and ordered. Above ~3M rows the sort
    # costs more than it saves (10M rows: 5.1 s filtered, 7.5 s ordered).
    order = "ORDER BY line" if rows <= COMPACT_MAX_ROWS else ""
    return con.execute(f"""
        INSERT INTO usage_events (event_id, customer_id, meter, event_time, event_date, value, properties,
                                  extra, file_id, source_line)
        SELECT event_id, customer_id, meter, event_time, event_date, value, properties, extra, ?, line
        FROM {EVENTS}
        WHERE {ACCEPTED} {order}""", [file_id]).fetchone()[0]


class _RawLines:
    """Collects the text of chosen lines, found by seeking or while `readers.stage_lines` re-reads
    a file."""

    table = "_conflict_raw"

    def __init__(self, con: duckdb.DuckDBPyConnection, wanted: str) -> None:
        self.con = con
        self.wanted = con.execute(f"SELECT line FROM {wanted}").to_arrow_table().column(0).combine_chunks()

    def reset(self) -> None:
        self.con.execute(f"CREATE OR REPLACE TEMP TABLE {self.table} (line BIGINT, raw VARCHAR)")

    def insert(self, select_sql: str) -> int:  # pragma: no cover - not used by this sink
        raise NotImplementedError

    def insert_batch(self, con: duckdb.DuckDBPyConnection, sink: object, batch: pa.Table, offset: int) -> int:
        # pick the few wanted lines in Arrow: handing every batch to DuckDB for a semi-join cost
        # ~0.2 s per million lines
        picked = batch.filter(pc.is_in(batch.column("line"), value_set=self.wanted))
        if picked.num_rows:
            name = f"_raw_{id(picked)}"
            con.register(name, picked)
            try:
                con.execute(f"INSERT INTO {self.table} SELECT line, try(decode(b)) FROM {name}")
            finally:
                con.unregister(name)
        return len(batch)


def _insert_quarantine(con: duckdb.DuckDBPyConnection, meta: list, path: Path, fmt: str,
                       info: readers.StageInfo) -> int:
    """Quarantine rejected rows and conflicting versions, each with its raw text.

    Rejected rows carry their text from the read; the text of valid rows is not kept (it would
    double the memory of a big file), so a conflicting version's line is read again from the file:
    found by its byte offset where the offsets are exact (plain JSON lines without `\r\n`: 10M
    lines, ~1.2 s less), else by re-reading the file.
    """
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _conflict_lines AS
        SELECT line FROM {OUTCOMES} WHERE outcome = '{dedupe.CONFLICT}'""")
    if fmt == "parquet":  # Parquet rows have no text: quarantine the row rendered as JSON
        con.execute(f"""CREATE OR REPLACE TEMP TABLE _quarantine_lines AS
            SELECT line FROM {EVENTS} WHERE reason IS NOT NULL UNION ALL SELECT line FROM _conflict_lines""")
        con.execute(f"CREATE OR REPLACE TEMP TABLE {_RawLines.table} AS "
                    f"{readers.parquet_raw_rows(con, path, '_quarantine_lines')}")
    else:
        raw_lines = _RawLines(con, "_conflict_lines")
        raw_lines.reset()
        wanted = con.execute(f"SELECT e.line, e.byte_offset, e.event_id FROM {EVENTS} e "
                             f"JOIN _conflict_lines USING (line) ORDER BY e.line").fetchall()
        seek = wanted and info.offsets_exact and len(wanted) <= SEEK_MAX_LINES
        found = readers.lines_at(path, wanted) if seek else None
        if found:
            raw_lines.insert_batch(con, raw_lines, pa.table({
                "line": pa.array([line for line, _ in found], pa.int64()),
                "b": pa.array([data for _, data in found], pa.binary())}), 0)
        elif wanted:
            readers.stage_lines(con, path, fmt, raw_lines, raw_lines.insert_batch,
                                batch_bytes=readers.REREAD_BATCH_BYTES)
    inserted = con.execute(f"""
        INSERT INTO usage_quarantine (source_file, source_line, file_hash, reason, detail, event_id, raw,
                                      quarantined_at, payload_hash, value)
        SELECT ?, e.line, ?, coalesce(e.reason, 'conflicting_duplicate'),
               coalesce(e.detail, 'event_id ' || e.event_id || ' already has a clean event with a different '
                        || 'payload (the first ingested version stays clean)'),
               e.event_id, coalesce(e.raw, r.raw), ?, CASE WHEN e.reason IS NULL THEN o.payload_hash END, e.value
        FROM {EVENTS} e LEFT JOIN {OUTCOMES} o USING (line) LEFT JOIN {_RawLines.table} r USING (line)
        WHERE e.reason IS NOT NULL OR o.outcome = '{dedupe.CONFLICT}'
        ORDER BY e.line""", meta).fetchone()[0]
    return inserted


def _stored(con: duckdb.DuckDBPyConnection, file_id: int, file_hash: str) -> tuple[int, Decimal, int, Decimal]:
    """(clean rows, their value, quarantined rows, their value) the warehouse holds for one file."""
    clean, clean_value = con.execute("SELECT count(*), coalesce(sum(value), 0) FROM usage_events WHERE file_id = ?",
                                     [file_id]).fetchone()
    quarantined, quarantined_value = con.execute(
        "SELECT count(*), coalesce(sum(value), 0) FROM usage_quarantine WHERE file_hash = ?", [file_hash]).fetchone()
    return clean, clean_value, quarantined, quarantined_value


def already_ingested(con: duckdb.DuckDBPyConnection, file_hash: str) -> bool:
    return con.execute("SELECT count(*) FROM ingested_files WHERE file_hash = ?", [file_hash]).fetchone()[0] > 0


def ingested_dates(con: duckdb.DuckDBPyConnection, file_hashes: list[str]) -> dict[str, tuple[list[str], float]]:
    """{file hash: (the event dates its manifest entries recorded, sorted; the latest `ingested_at`
    as Unix seconds)} for the hashes the manifest holds."""
    found: dict[str, tuple[list[str], float]] = {}
    for file_hash, dates, ingested_us in con.execute(
            "SELECT file_hash, event_dates, epoch_us(ingested_at) FROM ingested_files "
            "WHERE list_contains(?::VARCHAR[], file_hash)", [file_hashes]).fetchall():
        listed, at = found.get(file_hash, ([], 0.0))
        found[file_hash] = (sorted({*listed, *json.loads(dates or "[]")}), max(at, ingested_us / 1e6))
    return found


def _may_be_ingested(con: duckdb.DuckDBPyConnection, size: int) -> bool:
    """Whether a file of `size` bytes can have the content of a file already ingested: only if one
    of them had that size (or an unknown size). Same content, same size."""
    return con.execute("SELECT count(*) FROM ingested_files WHERE bytes = ? OR bytes IS NULL",
                       [size]).fetchone()[0] > 0


def _file_changed(path: Path) -> FileChangedError:
    return FileChangedError(f"{path}: the file changed while it was being read (a writer still appending?); "
                            f"nothing was stored: write raw files elsewhere and move them into place when "
                            f"complete, then ingest again")


def _changed_since(path: Path, before: tuple) -> bool:
    """Whether the file is no longer the one `_identity` described as `before` (also: gone)."""
    try:
        return _identity(path) != before
    except OSError:
        return True


def _identity(path: Path) -> tuple[int, int, int, int]:
    """Size, modification time, inode and device: equal before and after the read and the hash, the
    two saw the same bytes (a writer appending or rewriting changes the size or the time)."""
    st = path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev


def _hash_beside_read(path: Path) -> Callable[[], str]:
    """Start hashing `path` on a thread and return what waits for its digest.

    For a file that cannot be a re-ingest (`_may_be_ingested`), the hash is not needed before the
    read, and SHA-256 runs without the GIL beside DuckDB's (10M JSON lines, 1.5 GB: ~1.2 s that
    were spent before the read began). The thread reads the file on its own, from the page cache.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="file-hash")
    try:
        return pool.submit(readers.file_hash, path).result
    finally:
        pool.shutdown(wait=False)  # the thread ends when the hash is done


def ingest_file(
    con: duckdb.DuckDBPyConnection,
    path: str | Path,
    *,
    meters: dict[str, Meter] | None = None,
    now: datetime | None = None,
    check_contract: bool = True,
) -> IngestResult:
    """Ingest one raw file. Raises `BadInputError` (warehouse unchanged) if the file cannot be read."""
    started = time.perf_counter()
    path = Path(path)
    refuse_non_utf8(path)   # Arrow's and DuckDB's readers cannot open it
    if not path.is_file():
        raise BadInputError(f"{path}: {'not a regular file' if path.exists() else 'no such file'}")
    fmt = readers.detect_format(path)
    before = _identity(path)
    try:
        readers.check_magic(path, fmt)
    except BadInputError:
        if _changed_since(path, before):   # rewritten in place just as it was opened: changed, not unreadable
            raise _file_changed(path) from None
        raise
    meters = meters if meters is not None else load_meters()
    now = now or datetime.now(timezone.utc)
    size = before[0]
    if _may_be_ingested(con, size):
        digest = readers.file_hash(path)
        if already_ingested(con, digest):
            log.info("skipped %s: the same content was ingested before", path)
            return IngestResult(path=str(path), file_hash=digest, format=fmt, status="skipped",
                                seconds=round(time.perf_counter() - started, 3))
        wait_for_digest: Callable[[], str] = lambda: digest  # noqa: E731
    else:
        wait_for_digest = _hash_beside_read(path)
    log.info("reading %s (%s, %.1f MB)", path, fmt, size / 1e6)
    sink = _EventsSink(con, meters, now)
    try:
        info = readers.READERS[fmt](con, path, fmt, sink)
        digest = wait_for_digest()
        if _changed_since(path, before):
            # the hash and the rows may then describe different bytes: a manifest entry for content
            # not read would skip the complete file for ever as already ingested
            raise _file_changed(path)
    except BadInputError as exc:
        _drop_temp(con)
        if not isinstance(exc, FileChangedError) and _changed_since(path, before):
            # a file rewritten while it was read (cp, rsync --inplace) can look corrupt half-way: that is
            # no unreadable file, and the Dagster asset skips unreadable ones for good
            raise _file_changed(path) from None
        raise
    except BaseException:
        _drop_temp(con)
        raise
    result = IngestResult(path=str(path), file_hash=digest, format=fmt, status="skipped")
    _readable_invalid_utf8(con)
    if info.rows > 0 and fmt in ("jsonl", "jsonl.gz", "csv"):
        # a line that parses but breaks a JSON rule (NaN in a field kept in extra, a repeated key) is a row
        # to quarantine, not a sign of another format: only lines that yield no object count here
        unreadable = con.execute(
            f"SELECT count(*) FROM {EVENTS} WHERE reason IN ('invalid_utf8', 'bad_csv_row') "
            f"OR (reason = 'bad_json' AND detail = ?)", [validate.NOT_AN_OBJECT]
        ).fetchone()[0]
        if unreadable == info.rows and info.rows >= 1:
            _drop_temp(con)
            what = "JSON lines" if fmt != "csv" else "CSV"
            raise BadInputError(f"{path}: not {what}: none of its {info.rows} line(s) parses "
                                f"(wrong format or binary content?)")
    if check_contract:
        _pandera_check(con, meters, path)
    ingested_at = datetime.now(timezone.utc)
    meta = [str(path), digest, ingested_at]
    con.execute("BEGIN TRANSACTION")
    try:
        if already_ingested(con, digest):  # re-check inside the transaction
            con.execute("ROLLBACK")
            _drop_temp(con)
            result.seconds = round(time.perf_counter() - started, 3)
            return result
        file_id = con.execute("SELECT coalesce(max(file_id), 0) + 1 FROM ingested_files").fetchone()[0]
        dedupe.resolve(con, EVENTS, OUTCOMES)
        accepted = _insert_clean(con, file_id, info.rows)
        quarantined = _insert_quarantine(con, meta, path, fmt, info)
        dropped, conflicts, value_dropped = con.execute(
            f"SELECT count(*) FILTER (outcome = '{dedupe.DUPLICATE}'), count(*) FILTER (outcome = '{dedupe.CONFLICT}'), "
            f"coalesce(sum(value) FILTER (outcome = '{dedupe.DUPLICATE}'), 0) FROM {OUTCOMES}").fetchone()
        value_read = con.execute(f"SELECT coalesce(sum(value), 0) FROM {EVENTS}").fetchone()[0]
        stored_clean, value_accepted, stored_quarantined, value_quarantined = _stored(con, file_id, digest)
        # from the rows just stored: their file_id skips the other files' row groups, and unlike the
        # staging table it needs no second anti-join against the outcomes (10M rows: ~0.1 s)
        dates = [d.isoformat() for (d,) in con.execute(
            "SELECT DISTINCT event_date FROM usage_events WHERE file_id = ? ORDER BY 1", [file_id]).fetchall()]
        reasons = dict(con.execute(
            "SELECT reason, count(*) FROM usage_quarantine WHERE file_hash = ? GROUP BY 1 ORDER BY 1", [digest]
        ).fetchall())
        result = IngestResult(
            path=str(path), file_hash=digest, file_id=file_id, format=fmt, status="ingested", rows_read=info.rows,
            rows_accepted=accepted, rows_quarantined=quarantined, duplicates_dropped=dropped,
            conflicting_duplicates=conflicts, blank_lines=info.blank_lines, event_dates=dates, reasons=reasons,
            value_read=value_read, value_accepted=value_accepted, value_quarantined=value_quarantined,
            value_dropped=value_dropped,
        )
        if not result.conserved:
            raise CheckFailedError(
                f"{path}: conservation broken: read {info.rows} rows carrying {value_read} != accepted {accepted} "
                f"({value_accepted}) + quarantined {quarantined} ({value_quarantined}) + duplicates {dropped} "
                f"({value_dropped})")
        if (stored_clean, stored_quarantined) != (accepted, quarantined):
            raise CheckFailedError(f"{path}: stored rows {(stored_clean, stored_quarantined)} differ from the "
                                   f"manifest ({accepted}, {quarantined})")
        con.execute(
            "INSERT INTO ingested_files (file_hash, path, format, rows_read, rows_accepted, rows_quarantined, "
            "duplicates_dropped, event_dates, ingested_at, bytes, blank_lines, conflicting_duplicates, file_id, "
            "value_read, value_accepted, value_quarantined, value_dropped) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [digest, str(path), fmt, info.rows, accepted, quarantined, dropped, json.dumps(dates),
             ingested_at, size, info.blank_lines, conflicts, file_id, value_read, value_accepted,
             value_quarantined, value_dropped],
        )
        con.execute("COMMIT")
    except BaseException:
        # after a failed COMMIT (a full disk) DuckDB has no transaction left to roll back: the first
        # error says why
        with contextlib.suppress(duckdb.Error):
            con.execute("ROLLBACK")
        raise
    finally:
        _drop_temp(con)
    result.seconds = round(time.perf_counter() - started, 3)
    log.info("ingested %s: %d read, %d accepted, %d quarantined, %d duplicates dropped", path,
             result.rows_read, result.rows_accepted, result.rows_quarantined, result.duplicates_dropped)
    return result


def _readable_invalid_utf8(con: duckdb.DuckDBPyConnection) -> None:
    """Rows that are not UTF-8 come out of DuckDB with every non-ASCII byte as \\xNN; keep the valid
    UTF-8 sequences as text and escape only the invalid bytes (Python's backslashreplace). Few rows."""
    rows = con.execute(f"SELECT line, raw FROM {EVENTS} WHERE reason = 'invalid_utf8'").fetchall()
    if not rows:
        return
    fixed = pa.table({
        "line": pa.array([line for line, _ in rows], pa.int64()),
        "raw": pa.array([_unescape_blob(raw).decode("utf-8", "backslashreplace") for _, raw in rows]),
    })
    con.register("_utf8_fixed", fixed)
    try:
        con.execute(f"UPDATE {EVENTS} AS e SET raw = f.raw FROM _utf8_fixed f WHERE e.line = f.line")
    finally:
        con.unregister("_utf8_fixed")


def _unescape_blob(text: str) -> bytes:
    return re.sub(rb"\\x([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), text.encode("latin-1", "replace"))


def _drop_temp(con: duckdb.DuckDBPyConnection) -> None:
    for table in (OUTCOMES, "_quarantine_lines", "_conflict_lines", _RawLines.table):
        con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute(f"DETACH DATABASE IF EXISTS {STAGE_DB}")  # and the staging table with it


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, plus the raw files inside any folder named (recursively, in path order; hidden
    files and folders left out)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            # nor files in a hidden folder below it: a writer stages there (`raw/.incoming/`) as under a
            # hidden name, and such a file was read half-written, its manifest naming a path soon gone
            found.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_raw_file(f)
                                and not any(part.startswith(".") for part in f.relative_to(p).parts)))
        else:
            found.append(p)
    return found


def is_raw_file(path: Path) -> bool:
    """A file whose extension names a raw format (`readers.detect_format`); hidden files are not."""
    if path.name.startswith("."):
        return False
    try:
        readers.detect_format(path)
    except BadInputError:
        return False
    return True


def ingest_files(
    con: duckdb.DuckDBPyConnection,
    paths: Sequence[str | Path],
    *,
    rules_dir: str | Path | None = None,
    now: datetime | None = None,
    on_file: Callable[[IngestResult], None] | None = None,
) -> list[IngestResult]:
    """Ingest files in order, each in its own transaction. Stops at the first unreadable file
    (files before it stay ingested; it and those after it are untouched)."""
    meters = load_meters(rules_dir)
    results = []
    for path in expand_paths(paths):
        result = ingest_file(con, path, meters=meters, now=now)
        results.append(result)
        if on_file:
            on_file(result)
    return results
