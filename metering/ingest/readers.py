"""Readers: turn one raw file (JSON lines, gzip JSON lines, CSV, Parquet) into the staging table.

Every format lands in the same staging shape, one row per raw row, with each contract field as
text plus its type as read (`VARCHAR`, `BIGINT`, `DOUBLE`, `OBJECT`, `NULL` for absent, ...), so
one set of validation rules (`metering.ingest.validate`) serves all formats.

Why not a library's JSON reader: Polars' NDJSON reader aborts on one broken line, and DuckDB's
`read_json(ignore_errors)` turns a broken line into an all-NULL row and the raw text is lost. So
text files are split into lines by Arrow's streaming CSV reader (one binary column, no quoting, a
separator byte chosen so that it does not occur), in bounded batches, and parsed with DuckDB's JSON
functions. Raw bytes are kept for every row, invalid UTF-8 included (escaped as `\\xNN`).

Line numbers are 1-based physical lines (`\\n`, `\\r\\n` or `\\r` end a line); blank lines are not
rows and are only counted. Parquet rows are numbered from 1 in file order.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import os
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from metering.errors import BadInputError
from metering.ingest.contract import CONTROL_CHARACTERS, KNOWN_FIELDS
from metering.warehouse import sql_identifier, sql_string

log = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("jsonl", "jsonl.gz", "csv", "parquet")
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}
# Text read per batch: bounds memory whatever the file size. Each batch is one INSERT of the whole
# validation query, with a fixed cost (planning ~20 ms, DuckDB's threads starting and draining):
# 10M JSON lines read and validated in 15.7-16.0 s with 64 MB batches, 17.6-19.2 s with 32 MB,
# for ~0.3 GB more at the read's peak (which stays below the later steps' peak).
BATCH_BYTES = 64 << 20
# Re-reading a file for a few chosen lines (the quarantine's raw text of conflicting versions) does
# little per batch, so smaller batches cost little there (~0.3 s per 10M lines); they keep Arrow
# buffers out of the peak, which falls at that moment (10M JSON lines: 2.9-3.2 -> 2.6-2.7 GB).
REREAD_BATCH_BYTES = 8 << 20
SCAN_CHUNK_ROWS = 16_384  # rows per Arrow record batch handed to DuckDB (its unit of parallel scan)
# Separator candidates for the one-column line reader: control bytes that valid JSON never holds raw.
_SEPARATORS = [chr(c) for c in (0x1F, 0x1E, 0x1D, 0x1C, *range(0x01, 0x09), 0x0B, 0x0C, *range(0x0E, 0x1C))]

STAGE_COLUMNS = """
    line BIGINT, raw VARCHAR, parse_error VARCHAR,
    event_id VARCHAR, event_id_t VARCHAR, customer_id VARCHAR, customer_id_t VARCHAR,
    meter VARCHAR, meter_t VARCHAR, ts VARCHAR, ts_t VARCHAR, ts_native TIMESTAMPTZ,
    value VARCHAR, value_t VARCHAR, properties VARCHAR, properties_t VARCHAR, extra VARCHAR,
    properties_canonical BOOLEAN,  -- true when `properties` is canonical JSON (keys sorted, compact) of text values
    byte_offset BIGINT  -- JSON lines: where the line starts in the file (see StageInfo.offsets_exact)
"""
# `properties` is always an object as DuckDB writes it (compact, JSON's own escapes): validation keeps
# an object of one key as it is.


class Sink(Protocol):
    """Where readers put rows: `insert` runs `INSERT INTO <target> <validation of select_sql>`."""

    def insert(self, select_sql: str) -> int: ...

    def reset(self) -> None: ...


@dataclass
class StageInfo:
    """What a reader put into the staging table."""

    rows: int
    blank_lines: int = 0
    # every line's `byte_offset` is where it starts in the file: true for plain JSON lines whose
    # lengths plus one byte per line end add up to the file's size (no `\r\n`)
    offsets_exact: bool = False


def detect_format(path: Path) -> str:
    """The format named by the file's extension (`.jsonl`, `.jsonl.gz`, `.csv`, `.parquet`)."""
    name = path.name.lower()
    if name.endswith(".gz"):
        inner = Path(name[:-3]).suffix
        if _SUFFIXES.get(inner) == "jsonl":
            return "jsonl.gz"
        raise BadInputError(f"{path}: only JSON lines may be gzipped (.jsonl.gz); cannot read {path.suffix} here")
    fmt = _SUFFIXES.get(Path(name).suffix)
    if fmt is None:
        raise BadInputError(
            f"{path}: unknown file type {path.suffix!r}; expected one of .jsonl, .jsonl.gz, .csv, .parquet"
        )
    return fmt


def check_magic(path: Path, fmt: str) -> None:
    """Refuse a file whose first bytes contradict its extension (a gzip named .jsonl, and so on)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    is_gzip, is_parquet = head[:2] == b"\x1f\x8b", head == b"PAR1"
    if fmt == "jsonl.gz" and not is_gzip:
        raise BadInputError(f"{path}: not a gzip file (named .gz but has no gzip header)")
    if fmt == "parquet" and not is_parquet:
        raise BadInputError(f"{path}: not a Parquet file (no PAR1 magic bytes)")
    if fmt in ("jsonl", "csv") and (is_gzip or is_parquet):
        kind = "gzip" if is_gzip else "Parquet"
        raise BadInputError(f"{path}: the content is {kind}, not {fmt} text; rename the file to match its content")


def file_hash(path: Path) -> str:
    """SHA-256 of the file's bytes: the file's identity (the same content is ingested once)."""
    with open(path, "rb") as fh:  # file_digest reads into one reused buffer, hashing without the GIL
        return hashlib.file_digest(fh, "sha256").hexdigest()


# --------------------------------------------------------------------------- line splitting


def local_path(path: str | os.PathLike[str]) -> str:
    """`path` as Arrow's and DuckDB's readers must be given it: absolute. Both read a leading `~` as the
    home folder, so a relative `~/x.parquet` (a folder named `~` here) read `$HOME/x.parquet` and stored
    its rows under this file's hash. Joined, not normalised: `os.path.abspath` folds `link/..` as text,
    which names another file than the one the system opens when `link` is a symbolic link."""
    return os.path.join(os.getcwd(), os.fspath(path))


def _open_stream(path: Path, fmt: str) -> pa.NativeFile:
    return pa.input_stream(local_path(path), compression="gzip" if fmt == "jsonl.gz" else None)


def _arrow_line_batches(path: Path, fmt: str, separator: str, batch_bytes: int) -> Iterator[pa.Array]:
    reader = pacsv.open_csv(
        _open_stream(path, fmt),
        read_options=pacsv.ReadOptions(column_names=["b"], block_size=batch_bytes),
        parse_options=pacsv.ParseOptions(
            delimiter=separator, quote_char=False, escape_char=False, double_quote=False,
            newlines_in_values=False, ignore_empty_lines=False,
        ),
        convert_options=pacsv.ConvertOptions(column_types={"b": pa.binary()}, check_utf8=False),
    )
    for batch in reader:
        yield batch.column(0)


def _python_line_batches(path: Path, fmt: str) -> Iterator[pa.Array]:
    """Fallback when every separator byte occurs in the file (binary-ish content): slow but exact."""
    opener: Callable = gzip.open if fmt == "jsonl.gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    data = data.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark, as Arrow's reader drops it
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    yield pa.array(lines, type=pa.binary())


def _read_error(path: Path, exc: Exception) -> BadInputError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, (EOFError, zlib.error)) or "gzip" in text.lower() or "zlib" in text.lower() \
            or "compressed" in text.lower():
        return BadInputError(f"{path}: cannot decompress (truncated or corrupt gzip): {text}")
    return BadInputError(f"{path}: cannot read the file: {text}")


def stage_lines(
    con: duckdb.DuckDBPyConnection,
    path: Path,
    fmt: str,
    sink: Sink,
    insert_batch: Callable[[duckdb.DuckDBPyConnection, Sink, pa.Table, int], int],
    batch_bytes: int = BATCH_BYTES,
) -> StageInfo:
    """Feed the file's lines, in order and numbered, to `insert_batch` (one call per batch of about
    `batch_bytes` of text).

    Tries separator bytes until one does not occur in the file; a file that contains them all is
    split in Python instead.
    """
    sources: list[Callable[[], Iterator[pa.Array]]] = [
        (lambda s=s: _arrow_line_batches(path, fmt, s, batch_bytes)) for s in _SEPARATORS[:4]
    ] + [lambda: _python_line_batches(path, fmt)]
    for attempt, source in enumerate(sources):
        sink.reset()
        offset = rows = position = 0
        try:
            for column in source():
                numbers = pl.int_range(offset + 1, offset + 1 + len(column), dtype=pl.Int64, eager=True)
                # where each line starts if every line ends with one byte (checked against the size below)
                spans = pc.add(pc.cast(pc.binary_length(column), pa.int64()), 1)
                ends = pc.cumulative_sum(spans)
                starts = pc.add(pc.subtract(ends, spans), position)
                # several record batches, so DuckDB scans (and parses) them on all its threads
                batch = pa.Table.from_batches(pa.table({"line": numbers.to_arrow(), "b": column, "starts_at": starts})
                                              .to_batches(max_chunksize=SCAN_CHUNK_ROWS))
                rows += insert_batch(con, sink, batch, offset)
                offset += len(column)
                position += ends[-1].as_py() if len(column) else 0
            size = path.stat().st_size
            # only the JSON-lines reader stages the offsets; + 1: no line end after the last line
            exact = fmt == "jsonl" and position in (size, size + 1)
            return StageInfo(rows=rows, blank_lines=offset - rows, offsets_exact=exact)
        except pa.ArrowInvalid as exc:
            if "Expected 1 columns" in str(exc) and attempt < len(sources) - 1:
                continue  # the separator byte occurs in the file: try the next one
            if "Empty CSV file" in str(exc):  # Arrow's word for no bytes at all: no lines, as for blank ones
                return StageInfo(rows=0)
            raise _read_error(path, exc) from None
        except (OSError, EOFError, zlib.error) as exc:
            raise _read_error(path, exc) from None
    raise AssertionError("unreachable")


def lines_at(path: Path, wanted: list[tuple[int, int, str]]) -> list[tuple[int, bytes]] | None:
    """The bytes of JSON lines found by seeking: `wanted` holds (line, byte_offset, event_id).

    For the few conflicting versions the quarantine keeps, instead of re-reading the whole file. Each
    line is checked: it starts after a line end, holds no `\r`, and is an object with that event_id.
    None when any check fails (the caller then re-reads the file): the offsets came from line
    lengths, so they are only as good as `StageInfo.offsets_exact`, and the file may have changed.
    """
    found = []
    with open(path, "rb") as fh:
        for line, at, event_id in wanted:
            if at is None:
                return None
            fh.seek(max(at - 1, 0))
            if at > 0 and fh.read(1) != b"\n":
                return None
            data = fh.readline().removesuffix(b"\n")
            try:
                parsed = json.loads(data.decode("utf-8"))
            except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python parses
                return None
            if b"\r" in data or not isinstance(parsed, dict) or parsed.get("event_id") != event_id:
                return None
            found.append((line, data))
    return found


NOT_BLANK = "b >= '!'::BLOB OR try(decode(b)) IS NULL OR trim(try(decode(b)), ' \t') <> ''"
"""SQL: the line `b` (bytes) is a row, not a blank line (empty, or only spaces and tabs).

DuckDB pushes a filter below the projection that computes `text` by pasting the expression in, so
a filter on `text` decodes each line again for every test it makes. A line whose first byte is
`!` (0x21) or above cannot be blank, and comparing bytes decodes nothing: the usual line passes on
that first test (10M JSON lines: ~2.5-5 CPU-s less). The rest decide on the decoded text.
"""


# --------------------------------------------------------------------------- JSON lines


_FIELDS = {"event_id": "event_id", "customer_id": "customer_id", "meter": "meter", "timestamp": "ts",
           "value": "value", "properties": "properties"}  # JSON key -> staged column


def _json_type(alias: str) -> str:
    """`json_type` of the JSON text `j_<alias>`, probing only numbers, booleans and null: objects,
    arrays and strings are known by their first character."""
    j = f"j_{alias}"
    return (f"CASE WHEN {j} IS NULL THEN 'NULL' WHEN prefix({j}, '\"') THEN 'VARCHAR' WHEN prefix({j}, '{{') "
            f"THEN 'OBJECT' WHEN prefix({j}, '[') THEN 'ARRAY' ELSE json_type({j}) END")


def _json_field(alias: str) -> str:
    """A field's text and type tag from its JSON text `j_<alias>`, as DuckDB writes a parsed value
    back: compact, strings with only the escapes JSON needs.

    The same as `j->>'$'` and `json_type(j)`, which parse the value again, without a parse in the
    common cases: a string holding no escape is its text between the quotes (the reader's query
    over 10M lines: 1.0-1.9 s less than probing every field; read + validate ~0.8 s less).
    """
    j = f"j_{alias}"
    return (f"CASE WHEN NOT prefix({j}, '\"') THEN {j} WHEN contains({j}, '\\') THEN {j}->>'$' "
            f"ELSE {j}[2:-2] END AS {alias}, {_json_type(alias)} AS {alias}_t")


_KNOWN_LIST = "[" + ", ".join(f"'{k}'" for k in KNOWN_FIELDS) + "]"
# `extra`: the parsed map's unknown entries joined back into an object (a null value's JSON is SQL
# NULL in the map). Byte for byte what `json_merge_patch(text, <known keys: null>)` gave, without its
# recursion: a 300,000-deep array in an unknown field crashed the process there (the parse and the
# map's values are not recursive: 20M levels pass). '{}' when no key is unknown.
_UNKNOWN_ENTRIES = (f"'{{' || array_to_string(list_transform(list_filter(map_entries(m), "
                    f"e -> NOT list_contains({_KNOWN_LIST}, e.key)), "
                    f"e -> to_json(e.key) || ':' || coalesce(e.value, 'null')), ',') || '}}'")
_LOOKUPS = ", ".join(f"m['{key}']::VARCHAR AS j_{alias}" for key, alias in _FIELDS.items())
# A line has an unknown key only if it has more keys than known ones with a value: a cheap sum that
# spares the lambda over the keys on the usual line (10M lines: ~0.6 s). A known key holding null
# counts as absent here, so such a line still goes through the lambda, which decides.
_MORE_KEYS_THAN_KNOWN = "cardinality(m) > " + " + ".join(f"(j_{alias} IS NOT NULL)::INT" for alias in _FIELDS.values())
assert set(_FIELDS) == set(KNOWN_FIELDS)

# DuckDB's parser reads a JSON number into a binary float and writes it back shortest-first:
# 0.30000000000000001 comes back as 0.3, 1e14 as 100000000000000.0. Validation judges the number
# as written (its digits, its decimals), so a fractional number's literal is taken from the line
# where that is unambiguous: the line names the key "value" exactly once (not also in a nested
# object) and holds no \u escape (which could spell the key). Otherwise the parser's reading
# stands. Where the value written back appears as such, it is the literal (compact JSON: usually).
_VALUE_LITERAL = r'"value"\s*:\s*(-?[0-9][0-9.eE+-]*)'
_VALUE_AS_WRITTEN = f"""CASE WHEN value_t = 'DOUBLE' AND NOT contains(text, '\\u')
        AND length(text) - length(replace(text, '"value"', '')) = 7
        AND NOT (contains(text, '"value":' || value || ',') OR contains(text, '"value":' || value || '}}'))
    THEN coalesce(nullif(regexp_extract(text, '{_VALUE_LITERAL}', 1), ''), value)
    ELSE value END"""

_JSONL_SELECT = f"""
WITH decoded AS (
    SELECT line, b, starts_at, try(decode(b)) AS text FROM __BATCH__
), parsed AS (
    SELECT line, b, starts_at, text,
           CASE WHEN text IS NOT NULL THEN try(json_transform(text, '"MAP(VARCHAR, JSON)"')) END AS m
    FROM decoded
    WHERE {NOT_BLANK}
), fields AS (
    SELECT *, {_LOOKUPS} FROM parsed  -- each key looked up once
), counted AS (
    SELECT *, {_MORE_KEYS_THAN_KNOWN} AS more_keys FROM fields
), shaped AS (
SELECT line, text,
       CASE WHEN text IS NULL THEN b::VARCHAR ELSE text END AS raw,
       -- a repeated key: the parser keeps both entries in the map (its error for them surfaced only when a
       -- broken line in the same vector made try() go row by row), and a lookup took the first value,
       -- where most JSON parsers keep the last. Only a line with more keys than known ones can repeat one
       CASE WHEN text IS NULL THEN 'invalid_utf8' WHEN m IS NULL THEN 'bad_json'
            WHEN more_keys AND len(list_distinct(map_keys(m))) < cardinality(m)
            THEN 'repeated_key' END AS parse_error,
       {_json_field('event_id')}, {_json_field('customer_id')}, {_json_field('meter')}, {_json_field('ts')},
       NULL::TIMESTAMPTZ AS ts_native,
       {_json_field('value')},
       j_properties AS properties, {_json_type('properties')} AS properties_t,
       false AS properties_canonical,
       CASE WHEN more_keys THEN nullif({_UNKNOWN_ENTRIES}, '{{}}') END AS extra,
       starts_at AS byte_offset
FROM counted
)
SELECT * EXCLUDE (text) REPLACE ({_VALUE_AS_WRITTEN} AS value) FROM shaped
"""


def _insert_jsonl_batch(con: duckdb.DuckDBPyConnection, sink: Sink, batch: pa.Table, offset: int) -> int:
    name = f"_lines_{id(batch)}"
    con.register(name, batch)
    try:
        return sink.insert(_JSONL_SELECT.replace("__BATCH__", name))
    finally:
        con.unregister(name)


def stage_jsonl(con: duckdb.DuckDBPyConnection, path: Path, fmt: str, sink: Sink) -> StageInfo:
    return stage_lines(con, path, fmt, sink, _insert_jsonl_batch)


# --------------------------------------------------------------------------- CSV


@dataclass(frozen=True)
class CsvLayout:
    """Where each contract field sits in a CSV file's header."""

    columns: tuple[str, ...]

    def index(self, name: str) -> int | None:
        return self.columns.index(name) + 1 if name in self.columns else None  # 1-based for SQL lists

    @property
    def property_columns(self) -> list[tuple[str, int]]:
        return [(c.split(".", 1)[1], i + 1) for i, c in enumerate(self.columns) if c.startswith("properties.")]

    @property
    def extra_columns(self) -> list[tuple[str, int]]:
        return [(c, i + 1) for i, c in enumerate(self.columns)
                if c not in KNOWN_FIELDS and not c.startswith("properties.")]


_CONTROL_CHARACTER = re.compile(CONTROL_CHARACTERS)


def _names_with_control_characters(names: list[str]) -> list[str]:
    """`position (name)` of each name holding a control character (U+0000-U+001F, U+007F).

    Column names are pasted into SQL, and DuckDB's parser ends a literal at a NUL byte; a name is no
    field of the contract then either, so the file is refused rather than the name changed.
    """
    return [f"{i} ({name!r})" for i, name in enumerate(names, 1) if _CONTROL_CHARACTER.search(name)]


def _csv_header(path: Path) -> CsvLayout:
    with open(path, "rb") as fh:
        head = fh.read(1 << 20)
    first = head.splitlines()[0] if head else b""  # lines may end at \n, \r\n or a lone \r
    try:
        text = first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInputError(f"{path}: line 1: the CSV header is not valid UTF-8") from None
    try:
        columns = tuple(c.strip() for c in next(csv.reader([text], strict=True)))
    except (csv.Error, StopIteration) as exc:
        raise BadInputError(f"{path}: line 1: cannot parse the CSV header: {exc}") from None
    if bad := _names_with_control_characters(list(columns)):
        raise BadInputError(f"{path}: line 1: CSV header column(s) {', '.join(bad)} hold a control character; "
                            f"rename them (nothing was stored)")
    missing = [f for f in ("event_id", "customer_id", "meter", "timestamp") if f not in columns]
    if missing:
        raise BadInputError(
            f"{path}: line 1: the CSV header lacks required column(s) {', '.join(missing)} "
            f"(found: {', '.join(columns) or 'nothing'})"
        )
    dupes = sorted({c for c in columns if columns.count(c) > 1})
    if dupes:
        raise BadInputError(f"{path}: line 1: the CSV header repeats column(s) {', '.join(dupes)}")
    if "properties" in columns and any(c.startswith("properties.") for c in columns):
        raise BadInputError(f"{path}: line 1: the CSV header has both a properties column (a JSON object) and "
                            f"properties.<name> columns; use one or the other")
    return CsvLayout(columns)


def _csv_field_sql(layout: CsvLayout, name: str, alias: str) -> str:
    i = layout.index(name)
    if i is None:
        return f"NULL AS {alias}, 'NULL' AS {alias}_t"
    return (f"nullif(f[{i}], '') AS {alias}, "
            f"CASE WHEN coalesce(f[{i}], '') = '' THEN 'NULL' ELSE 'VARCHAR' END AS {alias}_t")


def _map_json_sql(pairs: list[tuple[str, int]]) -> str:
    if not pairs:
        return "NULL"
    entries = ", ".join(f"{{'key': {sql_string(k)}, 'value': f[{i}]}}" for k, i in pairs)
    return f"to_json(map_from_entries(list_filter([{entries}], e -> coalesce(e.value, '') <> '')))"


def _json_text_sql(text: str, alias: str) -> str:
    """A text column holding JSON (a CSV cell, a Parquet string): its JSON written back compact, and
    its JSON type, or 'VARCHAR' when it is not JSON (so validation calls it a wrong type)."""
    parsed = f"try(json(nullif({text}, '')))"
    return (f"{parsed} AS {alias}, CASE WHEN coalesce({text}, '') = '' THEN 'NULL' "
            f"ELSE coalesce(json_type({parsed}), 'VARCHAR') END AS {alias}_t")


def _csv_properties_sql(layout: CsvLayout) -> str:
    """`properties.<name>` columns, one dimension each; or one `properties` column holding a JSON object."""
    i = layout.index("properties")
    if i is not None:
        return _json_text_sql(f"f[{i}]", "properties")
    props = _map_json_sql(layout.property_columns) if layout.property_columns else "'{}'"
    return f"{props} AS properties, 'OBJECT' AS properties_t"


def _csv_select_sql(layout: CsvLayout) -> str:
    extra = _map_json_sql(layout.extra_columns)
    return f"""
SELECT line, raw,
       CASE WHEN parse_error IS NOT NULL THEN parse_error
            WHEN len(f) <> {len(layout.columns)} THEN 'bad_csv_row' END AS parse_error,
       {_csv_field_sql(layout, 'event_id', 'event_id')}, {_csv_field_sql(layout, 'customer_id', 'customer_id')},
       {_csv_field_sql(layout, 'meter', 'meter')}, {_csv_field_sql(layout, 'timestamp', 'ts')},
       NULL::TIMESTAMPTZ AS ts_native,
       {_csv_field_sql(layout, 'value', 'value')},
       {_csv_properties_sql(layout)},
       false AS properties_canonical,
       CASE WHEN {extra} = '{{}}' THEN NULL ELSE {extra} END AS extra,
       NULL::BIGINT AS byte_offset
FROM __FIELDS__
"""


_RFC4180_FIELD = r'(?:"(?:[^"]|"")*"|[^",]*)'
_RFC4180_RECORD = re.compile(f"{_RFC4180_FIELD}(?:,{_RFC4180_FIELD})*")
"""A record whose fields are each quoted whole (a quote inside doubled) or hold no quote at all:
Python's csv module, even strict, reads `x"y` as the text x"y, where RFC 4180 has broken quoting."""


def _split_quoted(texts: list[tuple[int, str]]) -> pa.Table:
    """Lines with quotes are split by Python's csv module (few: only fields holding , or ")."""
    lines, fields, errors = [], [], []
    for line, text in texts:
        try:
            if not _RFC4180_RECORD.fullmatch(text):
                raise csv.Error("a quote inside an unquoted field")
            rows = list(csv.reader([text], strict=True))
            lines.append(line)
            fields.append(rows[0] if len(rows) == 1 else [])
            errors.append(None if len(rows) == 1 else "bad_csv_row")
        except csv.Error:
            lines.append(line)
            fields.append([])
            errors.append("bad_csv_row")
    return pa.table({"line": pa.array(lines, pa.int64()), "f": pa.array(fields, pa.list_(pa.string())),
                     "err": pa.array(errors, pa.string())})


def stage_csv(con: duckdb.DuckDBPyConnection, path: Path, fmt: str, sink: Sink) -> StageInfo:
    layout = _csv_header(path)
    select_sql = _csv_select_sql(layout)

    def insert_batch(con: duckdb.DuckDBPyConnection, sink: Sink, batch: pa.Table, offset: int) -> int:
        if offset == 0:
            batch = batch.slice(1)  # the header line
        name = f"_lines_{id(batch)}"
        con.register(name, batch)
        try:
            con.execute(f"""
                CREATE OR REPLACE TEMP TABLE _csv_decoded AS
                SELECT line, b, try(decode(b)) AS text FROM {name} WHERE {NOT_BLANK}""")
            quoted = con.execute(
                "SELECT line, text FROM _csv_decoded WHERE text IS NOT NULL AND contains(text, '\"')"
            ).fetchall()
            con.register("_csv_quoted", _split_quoted(quoted))
            sql = select_sql.replace("__FIELDS__", """(
                SELECT d.line, CASE WHEN d.text IS NULL THEN d.b::VARCHAR ELSE d.text END AS raw,
                       CASE WHEN d.text IS NULL THEN 'invalid_utf8' ELSE q.err END AS parse_error,
                       CASE WHEN d.text IS NULL THEN []::VARCHAR[]
                            WHEN q.line IS NOT NULL THEN q.f
                            ELSE string_split(d.text, ',') END AS f
                FROM _csv_decoded d LEFT JOIN _csv_quoted q USING (line))""")
            return sink.insert(sql)
        finally:
            con.unregister(name)
            con.unregister("_csv_quoted")
            con.execute("DROP TABLE IF EXISTS _csv_decoded")

    info = stage_lines(con, path, "csv", sink, insert_batch)
    info.blank_lines -= 1  # the header line is neither a row nor blank (a file without one fails above)
    return info


# --------------------------------------------------------------------------- Parquet

_NUMBER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
                 "UINTEGER", "UBIGINT", "UHUGEINT")


def _parquet_type(duck_type: str) -> str:
    t = duck_type.upper()
    if t == "VARCHAR":
        return "VARCHAR"
    if t in _NUMBER_TYPES:
        return "BIGINT"
    if t in ("FLOAT", "DOUBLE") or t.startswith("DECIMAL"):
        # FLOAT, not JSON lines' DOUBLE: a float column's value arrives as the float itself, with no
        # parser in between to lose digits, so the JSON numbers' digit limit does not apply
        return "FLOAT" if t in ("FLOAT", "DOUBLE") else "DECIMAL"
    if t.startswith("TIMESTAMP"):
        return "TIMESTAMP"
    if t.startswith(("STRUCT", "MAP")) or t == "JSON":
        return "OBJECT"
    if t.endswith("[]"):
        return "ARRAY"
    return t


def _struct_canonical_sql(col: str, fields: list[str]) -> str:
    """A struct's canonical JSON text built directly: keys sorted, null fields absent.

    The same text `validate` would build from the JSON object, without writing the struct as JSON,
    dropping its nulls with json_merge_patch and sorting the parsed keys again (2.4 s of 6.4 s of
    validation for 10M Parquet rows). Only for structs whose fields are all text: validation then
    knows every value is a string without parsing the text back.
    """
    parts = ", ".join(f"CASE WHEN {col}.{sql_identifier(f)} IS NOT NULL THEN to_json({sql_string(f)}) || ':' || "
                      f"to_json({col}.{sql_identifier(f)}) END" for f in sorted(fields))
    # concat: one new string per row where `'{' || ... || '}'` made two (10M rows: ~0.1 s)
    return f"CASE WHEN {col} IS NOT NULL THEN concat('{{', concat_ws(',', {parts}), '}}') END"


def _parquet_text_sql(col: str, kind: str, duck_type: str) -> str:
    if kind == "OBJECT" and duck_type.upper().startswith("STRUCT"):
        return f"json_merge_patch('{{}}', to_json({col}))"  # a struct's null fields are absent keys
    if kind == "OBJECT":
        return f"to_json({col})"
    if kind == "TIMESTAMP":
        return f"strftime({col}::TIMESTAMPTZ, '%Y-%m-%dT%H:%M:%S.%fZ')"
    return f"{col}::VARCHAR"


def parquet_field_text(types: dict[str, str], name: str) -> str:
    """SQL: a Parquet column's value as the text validation reads (a timestamp column as RFC 3339)."""
    return _parquet_text_sql(sql_identifier(name), _parquet_type(types[name]), types[name])


def _parquet_field_sql(types: dict[str, str], name: str, alias: str, text: str | None = None) -> str:
    if name not in types:
        return f"NULL AS {alias}, 'NULL' AS {alias}_t"
    kind = _parquet_type(types[name])
    col = sql_identifier(name)
    if text is None:  # the caller may bring its own text for the column
        text = _parquet_text_sql(col, kind, types[name])
    # a JSON column's null is JSON's own (`null`) as well as SQL's: absent, as in the other forms
    absent = f"{col} IS NULL OR json_type({col}) = 'NULL'" if types[name].upper() == "JSON" else f"{col} IS NULL"
    return f"{text} AS {alias}, CASE WHEN {absent} THEN 'NULL' ELSE '{kind}' END AS {alias}_t"


NO_HIVE_PARTITIONS = "hive_partitioning = false"
"""For every DuckDB file reader: by default DuckDB reads `key=value` folders in a file's path as
columns that REPLACE the file's own (a file under `raw/value=999/` had every value stored as 999)."""


ROW_NUMBER_COLUMN = "file_row_number"


_GLOB_CHARACTERS = "*?["


def literal_glob(path: str) -> str:
    """`path` as a DuckDB glob pattern matching that path alone. DuckDB's file readers take `*`, `?`
    and `[` in a path as a pattern (`usage[1].parquet` read `usage1.parquet`); each becomes a
    one-character class (`[[]`). A backslash next to them is read by DuckDB's matcher in ways no
    escape undoes (`u\\[[]1]` matches nothing, however written), so such a name is refused, naming the
    file, rather than read as a pattern that may name another file.

    The path is made absolute (`local_path`)."""
    path = local_path(path)
    if "\\" in path and any(c in path for c in _GLOB_CHARACTERS):
        raise BadInputError(f"{path}: cannot be read: its path holds a backslash and one of * ? [, which DuckDB's "
                            f"file readers take as a pattern (rename the file or its folder)")
    return "".join(f"[{c}]" if c in _GLOB_CHARACTERS else c for c in path)


def parquet_scan(path: Path, *, row_numbers: bool = False) -> str:
    """SQL reading the Parquet file `path` as it is: its own columns only (plus `file_row_number`)."""
    numbered = f", {ROW_NUMBER_COLUMN} = true" if row_numbers else ""
    return f"read_parquet({sql_string(literal_glob(str(path)))}, {NO_HIVE_PARTITIONS}{numbered})"


def parquet_columns(con: duckdb.DuckDBPyConnection, path: Path) -> dict[str, str]:
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {parquet_scan(path)}").fetchall()
    except duckdb.Error as exc:
        raise BadInputError(f"{path}: cannot read the Parquet file: {str(exc).splitlines()[0]}") from None
    return {r[0]: r[1] for r in rows}


def _struct_fields(con: duckdb.DuckDBPyConnection, path: Path, column: str) -> dict[str, str]:
    rows = con.execute(f"DESCRIBE SELECT {sql_identifier(column)}.* FROM {parquet_scan(path)}").fetchall()
    return {r[0]: r[1] for r in rows}


def _refuse_misread_schema(path: Path) -> None:
    """Refuse what DuckDB would read wrongly without an error: decimals wider than 38 digits (read as a
    float, and a wrong one: 0.05 as DECIMAL(60, 2) came back as 14073748835532.8); names that occur
    twice, also only differing in case, among the columns or a struct's fields (DuckDB's names are
    case-insensitive: it renames the second, `value` to `value_1`, so the event's would be a guess);
    struct fields without a name (which DuckDB cannot address); and names holding a control character
    (see `_names_with_control_characters`)."""
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(local_path(path))
    except (pa.ArrowException, OSError) as exc:
        raise BadInputError(f"{path}: cannot read the Parquet file: {str(exc).splitlines()[0]}") from None
    problems: list[str] = []

    def names(where: str, fields: list[pa.Field], prefix: str = "") -> None:
        folded = [f.name.lower() for f in fields]
        if dupes := sorted({f.name for f in fields if folded.count(f.name.lower()) > 1}):
            problems.append(f"{where} repeat(s) {', '.join(dupes)} (names differing only in case count as one)")
        if any(f.name == "" for f in fields):
            problems.append(f"{where} include(s) a field without a name")
        if bad := _names_with_control_characters([f.name for f in fields]):
            problems.append(f"{where} include(s) a name holding a control character, at position(s) "
                            f"{', '.join(bad)}")
        for f in fields:
            t = f.type
            if pa.types.is_decimal(t) and t.precision > 38:
                problems.append(f"{prefix}{f.name} ({t}) is a decimal wider than 38 digits, which cannot be read exactly: "
                                f"write it as decimal(38, s) or as text")
            children = [t.field(i) for i in range(t.num_fields)]
            if pa.types.is_struct(t):
                names(f"the fields of {prefix}{f.name}", children, f"{prefix}{f.name}.")
            elif children:   # lists and maps: look inside their items
                names(f"the items of {prefix}{f.name}", children, f"{prefix}{f.name}[].")

    names("the columns", list(schema))
    if problems:
        raise BadInputError(f"{path}: the Parquet schema cannot be read safely: {'; '.join(problems)}")


def stage_parquet(con: duckdb.DuckDBPyConnection, path: Path, fmt: str, sink: Sink) -> StageInfo:
    types = parquet_columns(con, path)
    _refuse_misread_schema(path)
    missing = [f for f in ("event_id", "customer_id", "meter", "timestamp") if f not in types]
    if missing:
        raise BadInputError(f"{path}: the Parquet schema lacks required column(s) {', '.join(missing)}")
    if ROW_NUMBER_COLUMN in types:   # DuckDB refuses to number the rows of such a file
        raise BadInputError(f"{path}: a column is named {ROW_NUMBER_COLUMN}, the name DuckDB's Parquet reader keeps "
                            f"for row numbers; rename that column (nothing was stored)")
    extra = _parquet_extra_sql(types, [c for c in types if c not in KNOWN_FIELDS])
    props_canonical = "false"
    props_field = _parquet_field_sql(types, "properties", "properties")
    if "properties" in types and types["properties"].upper().startswith("STRUCT"):
        fields = _struct_fields(con, path, "properties")
        if all(t.upper() == "VARCHAR" for t in fields.values()):
            props_canonical = "true"
            props_field = _parquet_field_sql(types, "properties", "properties",
                                             _struct_canonical_sql(sql_identifier("properties"), list(fields)))
    elif types.get("properties", "").upper() in ("VARCHAR", "JSON"):  # a JSON object, also written as a string
        # typed by its JSON type, as a JSON lines field is (`null` absent, an array not an object)
        props_field = _json_text_sql(f"{sql_identifier('properties')}::VARCHAR", "properties")
    ts_kind = _parquet_type(types["timestamp"])
    ts_native = '"timestamp"::TIMESTAMPTZ' if ts_kind == "TIMESTAMP" else "NULL::TIMESTAMPTZ"
    sql = f"""
        SELECT file_row_number + 1 AS line, NULL::VARCHAR AS raw, NULL::VARCHAR AS parse_error,
               {_parquet_field_sql(types, 'event_id', 'event_id')},
               {_parquet_field_sql(types, 'customer_id', 'customer_id')},
               {_parquet_field_sql(types, 'meter', 'meter')},
               {_parquet_field_sql(types, 'timestamp', 'ts')}, {ts_native} AS ts_native,
               {_parquet_field_sql(types, 'value', 'value')},
               {props_field},
               {props_canonical} AS properties_canonical,
               {extra} AS extra, NULL::BIGINT AS byte_offset
        FROM {parquet_scan(path, row_numbers=True)}"""
    sink.reset()
    try:
        rows = sink.insert(sql)
    except duckdb.Error as exc:
        raise BadInputError(f"{path}: cannot read the Parquet file: {str(exc).splitlines()[0]}") from None
    return StageInfo(rows=rows)


def _parquet_extra_sql(types: dict[str, str], columns: list[str]) -> str:
    """SQL: the unknown columns as one JSON object, in column order; a null column is absent, and so
    is a struct's or a map's null field at any depth, also inside a list and beside a JSON field.

    Column by column. A flat column is written by `to_json` (a JSON column by `json`: written back as
    parsed, its own nulls kept, as in JSON lines; its top-level `null` is absent); a struct, map or
    list column by `_nested_json_sql`, from its type: one SQL expression, no per-row Python.
    """
    if not columns:
        return "NULL"
    entries = []
    for name in columns:
        col, kind = sql_identifier(name), types[name].upper()
        present, value = f"{col} IS NOT NULL", f"to_json({col})"
        if kind == "JSON":
            present, value = f"{present} AND json_type({col}) <> 'NULL'", f"json({col})"
        elif kind.startswith(("STRUCT", "MAP")) or kind.endswith("]"):
            try:
                value = _nested_json_sql(col, _parse_duckdb_type(types[name]))
            except duckdb.Error:   # a type this reader cannot take apart is written whole: exact, nulls kept
                pass
        entries.append(f"CASE WHEN {present} THEN concat(to_json({sql_string(name)}), ':', {value}) END")
    return f"nullif(concat('{{', concat_ws(',', {', '.join(entries)}), '}}'), '{{}}')"


@dataclass(frozen=True)
class _DuckType:
    """A DuckDB type as far as `_nested_json_sql` needs it: `kind` is struct, map, list, json or leaf;
    `children` are a struct's (name, type) fields, a map's key and value, a list's element."""
    kind: str
    children: tuple[tuple[str, _DuckType], ...] = ()
    objects: bool = field(init=False, compare=False)  # a struct or a map is in it
    depth: int = field(init=False, compare=False)     # levels of structs, maps and lists

    def __post_init__(self) -> None:
        kids = [t for _, t in self.children]
        object.__setattr__(self, "objects", self.kind in ("struct", "map") or any(t.objects for t in kids))
        object.__setattr__(self, "depth", 1 + max(t.depth for t in kids) if kids else 0)


def _parse_duckdb_type(text: str) -> _DuckType:
    """A type as DuckDB spells it (`STRUCT(a VARCHAR, "b ""c" INTEGER[])`, `MAP(VARCHAR, JSON)`,
    `STRUCT(x BIGINT)[]`), read by DuckDB's own parser: a list or a fixed-size array is a list, any
    other type but JSON (`DECIMAL(18,3)`, `TIMESTAMP WITH TIME ZONE`, ...) a leaf. Raises duckdb.Error
    for text that is no type."""
    return _duck_type(duckdb.sqltype(text))


def _duck_type(t: duckdb.typing.DuckDBPyType) -> _DuckType:
    if t.id in ("struct", "map"):
        return _DuckType(t.id, tuple((name, _duck_type(child)) for name, child in t.children))
    if t.id in ("list", "array"):
        return _DuckType("list", (("element", _duck_type(t.children[0][1])),))
    return _DuckType("json" if str(t) == "JSON" else "leaf")


_NESTED_LEVELS = 12
"""The deepest type (levels of structs, maps and lists) `_nested_json_sql` writes out level by level,
with at most `_NESTED_LISTS` lists one in another; a deeper one is written by `to_json`, as it is.
DuckDB's cost grows faster than the depth: 12 list_transforms one in another took 70 s for 10,000
rows; a struct nesting 250 levels (DuckDB reads at most about 255), 37 s for 1,000 rows where
`to_json` took 2.6 s; at 150 levels the SQL passed DuckDB's expression depth limit."""
_NESTED_LISTS = 3


def _nested_json_sql(expr: str, typ: _DuckType, levels: int = 0, lists: int = 0) -> str:
    """SQL writing the value `expr` of type `typ` as JSON text (NULL when it is NULL): a struct as an
    object of its fields in order, a null field absent (all null: `{}`); a map as an object, keys as
    `to_json` spells them (their text), a null value absent; a list as an array of its elements, a
    null element `null`; a JSON value by `json` (its own nulls kept; as a field or map value, a JSON
    `null` is absent, as a JSON column holding `null` is); anything else by `to_json`, which writes
    numbers exactly (`json_merge_patch`, which once dropped the nulls, read them back as doubles).

    A part holding no struct or map is written by `to_json` whole; the rest level by level, lambda
    parameters named by depth (`x0`, `x1`, ...) so an inner one never hides an outer one. A type
    nesting more than `_NESTED_LEVELS` levels, or a list or map inside `_NESTED_LISTS` lists, is
    written by `to_json` whole: exact, its null fields kept as `null`."""
    if typ.kind == "json":
        return f"json({expr})"
    if not typ.objects or typ.depth > _NESTED_LEVELS or (lists >= _NESTED_LISTS and typ.kind != "struct"):
        return f"to_json({expr})"
    if typ.kind == "list":
        x = f"x{levels}"
        element = _nested_json_sql(x, typ.children[0][1], levels + 1, lists + 1)
        body = f"concat('[', array_to_string(list_transform({expr}, lambda {x}: coalesce({element}, 'null')), ','), ']')"
    elif typ.kind == "struct":
        members = [_member_json_sql(f"to_json({sql_string(name)})", f"struct_extract({expr}, {sql_string(name)})",
                                    field_type, levels + 1, lists) for name, field_type in typ.children]
        body = f"concat('{{', concat_ws(',', {', '.join(members)}), '}}')"
    else:   # a map: its entries are structs (key, value)
        x = f"x{levels}"
        member = _member_json_sql(f"to_json(CAST(struct_extract({x}, 'key') AS VARCHAR))",
                                  f"struct_extract({x}, 'value')", typ.children[1][1], levels + 1, lists + 1)
        body = f"concat('{{', array_to_string(list_transform(map_entries({expr}), lambda {x}: {member}), ','), '}}')"
    return f"CASE WHEN {expr} IS NOT NULL THEN {body} END"


def _member_json_sql(key: str, value: str, typ: _DuckType, levels: int, lists: int) -> str:
    """SQL: `key:value` of an object, NULL (absent) when the value is null or a JSON `null`."""
    present = f"{value} IS NOT NULL" + (f" AND json_type({value}) <> 'NULL'" if typ.kind == "json" else "")
    return f"CASE WHEN {present} THEN concat({key}, ':', {_nested_json_sql(value, typ, levels, lists)}) END"


def _struct_sql(columns: list[str]) -> str:
    return "{" + ", ".join(f"{sql_string(c)}: {sql_identifier(c)}" for c in columns) + "}"


def parquet_raw_rows(con: duckdb.DuckDBPyConnection, path: Path, lines_table: str) -> str:
    """SQL giving (line, raw) for the Parquet rows listed in `lines_table`: the row as a JSON object."""
    columns = list(parquet_columns(con, path))
    return f"""
        SELECT file_row_number + 1 AS line, to_json({_struct_sql(columns)}) AS raw
        FROM {parquet_scan(path, row_numbers=True)}
        WHERE file_row_number + 1 IN (SELECT line FROM {lines_table})"""


READERS: dict[str, Callable[[duckdb.DuckDBPyConnection, Path, str, Sink], StageInfo]] = {
    "jsonl": stage_jsonl,
    "jsonl.gz": stage_jsonl,
    "csv": stage_csv,
    "parquet": stage_parquet,
}
