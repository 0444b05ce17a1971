"""Edges of the raw file readers that a hand mutation audit (m21d) found untested."""

from __future__ import annotations

import gzip
import io
import json
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metering.errors import BadInputError
from metering.ingest import ingest_file, readers
from tests.metering.ingest.conftest import NOW, event
from tests.metering.ingest.test_hostile_inputs import _json_column

CSV_TEXT = ("event_id,customer_id,meter,timestamp,value\n"
            "a,cust_00001,tokens,2026-10-05T12:00:00Z,5\n")


def _counts(con):
    return con.execute("SELECT (SELECT count(*) FROM usage_events), (SELECT count(*) FROM usage_quarantine), "
                       "(SELECT count(*) FROM ingested_files)").fetchone()


@pytest.mark.parametrize("name", ["usage.csv.gz", "usage.parquet.gz", "usage.CSV.GZ"])
def test_only_json_lines_may_be_gzipped_a_gzipped_csv_is_refused_by_name(tmp_path, con, name):
    # read as JSON lines, each CSV line of a .csv.gz would be quarantined as bad_json
    path = tmp_path / name
    path.write_bytes(gzip.compress(CSV_TEXT.encode(), mtime=0))
    with pytest.raises(BadInputError, match="only JSON lines may be gzipped"):
        readers.detect_format(path)
    with pytest.raises(BadInputError, match="only JSON lines may be gzipped"):
        ingest_file(con, path, now=NOW)
    assert _counts(con) == (0, 0, 0)


def _parquet_bytes() -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"event_id": ["a"], "customer_id": ["cust_00001"], "meter": ["tokens"],
                             "timestamp": ["2026-10-05T12:00:00Z"], "value": [5]}), sink)
    return sink.getvalue()


@pytest.mark.parametrize(("kind", "content"), [
    ("gzip", lambda: gzip.compress(CSV_TEXT.encode(), mtime=0)),
    ("Parquet", _parquet_bytes),
], ids=["gzip", "parquet"])
def test_a_csv_file_whose_content_is_gzip_or_parquet_is_refused_naming_the_content(tmp_path, con, kind, content):
    path = tmp_path / "usage.csv"
    path.write_bytes(content())
    with pytest.raises(BadInputError, match=f"the content is {kind}, not csv text; rename the file"):
        ingest_file(con, path, now=NOW)
    assert _counts(con) == (0, 0, 0)


def test_a_file_split_in_python_keeps_its_last_line_when_it_has_no_line_end(tmp_path, con):
    # line 2 holds all four separator bytes, so the file is split in Python; line 3 ends the file
    # without a line end and is a row all the same: 3 rows read = 2 accepted + 1 bad_json
    path = tmp_path / "f.jsonl"
    path.write_bytes(json.dumps(event("a")).encode() + b"\n" + b'{"event_id": "x\x1f\x1e\x1d\x1c"}\r\n'
                     + json.dumps(event("b")).encode())
    result = ingest_file(con, path, now=NOW)
    assert (result.rows_read, result.rows_accepted, result.reasons) == (3, 2, {"bad_json": 1})
    assert con.execute("SELECT event_id, source_line FROM usage_events ORDER BY 1").fetchall() == [("a", 1), ("b", 3)]


def test_a_conflicting_version_on_a_crlf_line_keeps_its_raw_text_without_the_cr(tmp_path, con):
    """One `\\r\\n` and no line end after the last line: the one-byte-per-line-end count of positions
    matches the file's size (the missing last line end makes up for the extra `\\r`), so the conflicting
    version is looked up by its offset. Its line holds the `\\r`, which is not part of the row."""
    first = json.dumps(event("a", value=1)).encode()
    second = json.dumps(event("a", value=2)).encode()   # the same event_id, another payload
    last = json.dumps(event("b")).encode()
    path = tmp_path / "f.jsonl"
    path.write_bytes(first + b"\n" + second + b"\r\n" + last)
    result = ingest_file(con, path, now=NOW)
    assert (result.rows_read, result.rows_accepted, result.conflicting_duplicates) == (3, 2, 1)
    assert con.execute("SELECT source_line, raw FROM usage_quarantine").fetchall() == [(2, second.decode())]


def _parquet_row(n: int = 1, **columns):
    """n Parquet rows of tokens (event ids p1..pn), with `columns` added or replacing the base ones."""
    base = {"event_id": [f"p{i}" for i in range(1, n + 1)], "customer_id": ["cust_00001"] * n,
            "meter": ["tokens"] * n, "timestamp": ["2026-10-05T12:00:00Z"] * n}
    return pa.table({**base, **columns})


def test_a_parquet_decimal_of_exactly_38_digits_is_read_exactly(tmp_path, con):
    # 38 digits is DuckDB's widest exact decimal: read as it is, not refused as "wider than 38 digits"
    pq.write_table(_parquet_row(value=pa.array([Decimal("12345.678901234567")], pa.decimal128(38, 12))),
                   tmp_path / "d.parquet")
    result = ingest_file(con, tmp_path / "d.parquet", now=NOW)
    assert (result.rows_read, result.rows_accepted) == (1, 1)
    assert con.execute("SELECT value FROM usage_events").fetchone() == (Decimal("12345.678901234567"),)


def test_json_null_in_a_parquet_json_value_column_is_an_absent_value(tmp_path, con):
    # api_calls counts events and takes no value: `null` in a JSON column is absent, as SQL NULL is and as
    # `"value": null` in a JSON line is, so both rows are accepted with no value (not bad_type)
    pq.write_table(_parquet_row(event_id=["j1", "j2"], customer_id=["cust_00001"] * 2, meter=["api_calls"] * 2,
                                timestamp=["2026-10-05T12:00:00Z"] * 2, value=_json_column(["null", None])),
                   tmp_path / "j.parquet")
    result = ingest_file(con, tmp_path / "j.parquet", now=NOW)
    assert (result.rows_read, result.rows_accepted, result.reasons) == (2, 2, {})
    assert con.execute("SELECT event_id, value FROM usage_events ORDER BY 1").fetchall() == [("j1", None), ("j2", None)]


@pytest.mark.parametrize(("header", "row", "repeated"), [
    ("event_id,customer_id,meter,timestamp,value,value", "a,cust_00001,tokens,2026-10-05T12:00:00Z,5,7", "value"),
    ("event_id,customer_id,meter,timestamp,source,value,source", "a,cust_00001,tokens,2026-10-05T12:00:00Z,x,5,y",
     "source"),
], ids=["value", "source"])
def test_a_csv_header_that_repeats_a_column_is_refused_naming_it(tmp_path, con, header, row, repeated):
    # which of the two cells is the event's would be a guess (the first one was taken silently)
    path = tmp_path / "f.csv"
    path.write_text(f"{header}\n{row}\n")
    with pytest.raises(BadInputError, match=f"line 1: the CSV header repeats column\\(s\\) {repeated}$"):
        ingest_file(con, path, now=NOW)
    assert _counts(con) == (0, 0, 0)


def test_json_null_in_an_unknown_parquet_json_column_is_absent_from_extra(tmp_path, con):
    # a JSON column's top-level `null` is absent, as SQL NULL is; a null nested inside is JSON's own, kept
    pq.write_table(_parquet_row(event_id=["n1", "n2", "n3"], customer_id=["cust_00001"] * 3, meter=["api_calls"] * 3,
                                timestamp=["2026-10-05T12:00:00Z"] * 3,
                                source=_json_column(["null", None, '{"a": null}'])),
                   tmp_path / "x.parquet")
    assert ingest_file(con, tmp_path / "x.parquet", now=NOW).rows_accepted == 3
    assert con.execute("SELECT event_id, extra FROM usage_events ORDER BY 1").fetchall() == [
        ("n1", None), ("n2", None), ("n3", '{"source":{"a":null}}')]
