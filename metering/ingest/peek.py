"""A quick look at a raw file's event dates, for scheduling (which daily partitions a file touches).

Best effort and cheap: DuckDB's own readers with errors ignored, timestamps only. The ingestion
itself decides what is valid; this only picks the partition range of the run that will ingest.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb

from metering.ingest.readers import (
    NO_HIVE_PARTITIONS, detect_format, literal_glob, parquet_columns, parquet_field_text, parquet_scan,
)
from metering.ingest.validate import timestamp_sql
from metering.warehouse import sql_string

_TS = timestamp_sql("ts")


def event_date_range(path: Path) -> tuple[date, date] | None:
    """(first, last) UTC event date of the parsable timestamps in the file, or None if there are none."""
    fmt = detect_format(path)
    p = sql_string(literal_glob(str(path)))
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if fmt == "parquet":
            types = parquet_columns(con, path)
            if "timestamp" not in types:
                return None
            # a timestamp column as the text validation reads (its VARCHAR cast, `... +00`, is no RFC 3339)
            source = f"SELECT {parquet_field_text(types, 'timestamp')} AS ts FROM {parquet_scan(path)}"
        elif fmt == "csv":
            scan = f"read_csv({p}, all_varchar = true, ignore_errors = true, header = true, {NO_HIVE_PARTITIONS})"
            # a header without the column (or an empty file) carries no date, as a Parquet file without it
            if "timestamp" not in {row[0] for row in con.execute(f"DESCRIBE SELECT * FROM {scan}").fetchall()}:
                return None
            source = f"SELECT timestamp AS ts FROM {scan}"
        else:
            # records = true: without it a line that is not an object (an array, a number) is read whole
            # as the one column, and its text makes the whole file's range NULL
            source = (f"SELECT timestamp AS ts FROM read_json({p}, format = 'newline_delimited', records = true, "
                      f"ignore_errors = true, columns = {{'timestamp': 'VARCHAR'}}, {NO_HIVE_PARTITIONS})")
        row = con.execute(f"SELECT min({_TS})::DATE, max({_TS})::DATE FROM ({source}) "
                          f"WHERE {_TS} >= TIMESTAMPTZ '2000-01-01 00:00:00+00' AND {_TS} <= now() + INTERVAL 1 DAY"
                          ).fetchone()
    finally:
        con.close()
    return None if row is None or row[0] is None else (row[0], row[1])
