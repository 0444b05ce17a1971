"""`peek.event_date_range`: the UTC event dates a raw file carries, for the sensor's partition choice."""

from __future__ import annotations

from datetime import date

import pyarrow as pa
import pyarrow.parquet as pq

from metering.ingest.peek import event_date_range
from tests.metering.ingest.conftest import event, write_lines


def test_json_lines_dates_survive_lines_that_are_not_objects(tmp_path):
    """A line that is an array or a bare number once made DuckDB's reader return whole lines as the
    timestamp column, and the file's range came out empty; every generated file has such lines."""
    path = write_lines(tmp_path / "f.jsonl", [
        event("a", timestamp="2026-10-05T23:30:00-01:00"),  # 2026-10-06 in UTC
        "[1, 2, 3]", "7", '{"event_id": "broken', "",
        event("b", timestamp=1790812801490),  # epoch milliseconds: 2026-10-01T23:20:01.490Z
    ])
    assert event_date_range(path) == (date(2026, 10, 1), date(2026, 10, 6))


def test_dates_follow_the_validation_rule(tmp_path):
    """Only timestamps validation accepts count: lower-case RFC 3339 yes; 24:00, an offset of 25 hours
    and an epoch too long for a timestamp no (the last once raised instead of being skipped)."""
    path = write_lines(tmp_path / "f.jsonl.gz", [
        event("a", timestamp="2026-10-07t10:00:00z"), event("b", timestamp="2026-10-09T24:00:00Z"),
        event("c", timestamp="2026-10-20T12:00:00+25:00"), event("d", timestamp=9223372036854775),
        event("e", timestamp="2026-10-08T00:00:00Z")])
    assert event_date_range(path) == (date(2026, 10, 7), date(2026, 10, 8))


def test_parquet_and_csv(tmp_path):
    pq.write_table(pa.table({"event_id": ["a", "b"], "timestamp": ["2026-10-03T00:00:00Z", "not a time"]}),
                   tmp_path / "f.parquet")
    assert event_date_range(tmp_path / "f.parquet") == (date(2026, 10, 3), date(2026, 10, 3))
    (tmp_path / "f.csv").write_text("event_id,customer_id,meter,timestamp\na,c,tokens,2026-10-04T01:00:00+02:00\n")
    assert event_date_range(tmp_path / "f.csv") == (date(2026, 10, 3), date(2026, 10, 3))


def test_parquet_timestamp_columns(tmp_path):
    """A timestamp-typed column (with or without a zone) once gave no dates at all: its text cast reads
    `2026-10-05 12:00:00+00`, which is no RFC 3339, so the sensor fell back to today's partition."""
    import datetime as dt

    ts = [dt.datetime(2025, 10, 5, 12, tzinfo=dt.timezone.utc), dt.datetime(2026, 10, 5, 23, 30, tzinfo=dt.timezone.utc)]
    pq.write_table(pa.table({"event_id": ["a", "b"], "timestamp": pa.array(ts, pa.timestamp("ns", "UTC"))}),
                   tmp_path / "z.parquet")
    pq.write_table(pa.table({"event_id": ["a"], "timestamp": pa.array([dt.datetime(2026, 10, 7, 1)], pa.timestamp("ms"))}),
                   tmp_path / "n.parquet")
    assert event_date_range(tmp_path / "z.parquet") == (date(2025, 10, 5), date(2026, 10, 5))
    assert event_date_range(tmp_path / "n.parquet") == (date(2026, 10, 7), date(2026, 10, 7))


def test_no_usable_timestamp_gives_none(tmp_path):
    assert event_date_range(write_lines(tmp_path / "f.jsonl", ["[1]", event("a", timestamp="soon")])) is None
