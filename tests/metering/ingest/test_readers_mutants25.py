"""Edges of the raw file readers (`metering/ingest/readers.py`) that a second hand mutation audit (m25h)
found untested: extensions in upper case and refusals that name the file, magic bytes that only begin like
gzip or Parquet, the Python line splitter's lone `\\r` and final line end, a value key spelled with a `\\u`
escape, CSV header rules (byte order mark, spaces, strict quoting, an empty header), empty CSV cells,
Parquet timestamp units and fractions, list and JSON columns' kinds, JSON fields inside an unknown struct
(a struct's own null field absent beside them), and a line longer than a read batch."""

from __future__ import annotations

import json
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metering.errors import BadInputError
from metering.ingest import ingest_file, readers
from tests.metering.ingest.conftest import NOW, event
from tests.metering.ingest.test_readers_mutants21 import _counts, _parquet_row

HEADER = "event_id,customer_id,meter,timestamp,value"
ROW = "a,cust_00001,tokens,2026-10-05T12:00:00Z,5"
# all four separator bytes the Arrow line reader tries: a file holding them is split in Python
ALL_SEPARATORS = b'{"event_id": "x\x1f\x1e\x1d\x1c"}'


# --------------------------------------------------------------------------- names and magic bytes


@pytest.mark.parametrize(("name", "fmt"), [("USAGE.JSONL", "jsonl"), ("Usage.Csv", "csv"), ("u.PARQUET", "parquet"),
                                           ("u.NDJSON", "jsonl")])
def test_an_extension_in_upper_case_names_its_format(tmp_path, name, fmt):
    # the extension is read case-insensitively, as `.JSONL.GZ` is
    assert readers.detect_format(tmp_path / name) == fmt


def test_a_gzipped_file_that_is_not_json_lines_is_refused_naming_the_file(tmp_path, con):
    # the message starts with the file's path (as every refusal does), then what is wrong with it
    path = tmp_path / "usage.txt.gz"
    path.write_bytes(b"\x1f\x8b")
    with pytest.raises(BadInputError, match=f"^{re.escape(str(path))}: only JSON lines may be gzipped"):
        ingest_file(con, path, now=NOW)
    assert _counts(con) == (0, 0, 0)


def test_a_json_lines_file_whose_first_byte_is_0x1f_alone_is_not_gzip(tmp_path, con):
    # gzip's magic is the two bytes 1f 8b; a line starting with the control byte 1f (then a space) is a
    # JSON lines row like any other: 2 rows read, line 1 bad_json, line 2 accepted
    path = tmp_path / "f.jsonl"
    path.write_bytes(b"\x1f {}\n" + json.dumps(event("a")).encode() + b"\n")
    result = ingest_file(con, path, now=NOW)
    assert (result.rows_read, result.rows_accepted, result.reasons) == (2, 1, {"bad_json": 1})


def test_a_csv_whose_first_column_starts_with_par_is_not_parquet(tmp_path, con):
    # Parquet's magic is the four bytes PAR1: a header starting "PART" is text. The unknown column goes to extra
    path = tmp_path / "f.csv"
    path.write_text("PARTNER," + HEADER + "\nacme," + ROW + "\n")
    result = ingest_file(con, path, now=NOW)
    assert (result.rows_read, result.rows_accepted) == (1, 1)
    assert con.execute("SELECT event_id, extra FROM usage_events").fetchall() == [("a", '{"PARTNER":"acme"}')]


# --------------------------------------------------------------------------- JSON lines


def test_a_value_key_spelled_with_a_unicode_escape_keeps_the_parsers_reading(tmp_path, con):
    # the line names "value" once as written, but inside the unknown field x; the event's own value key is
    # spelled \\u0076alue. The literal found by the key would be x's 2.25: the parser's 1.5 stands
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"event_id": "a", "customer_id": "cust_00001", "meter": "tokens", '
                     b'"timestamp": "2026-10-05T12:00:00Z", "\\u0076alue": 1.5, "x": {"value": 2.25}}\n')
    assert ingest_file(con, path, now=NOW).rows_accepted == 1
    assert con.execute("SELECT value::VARCHAR, extra FROM usage_events").fetchone() == (
        "1.500000000000", '{"x":{"value":2.25}}')


# --------------------------------------------------------------------------- the Python line splitter


def test_a_file_split_in_python_ends_a_line_at_a_lone_cr(tmp_path, con):
    # line 1 ends at a lone \r, line 2 (all four separators: the file is split in Python) at \n, line 3 at \n:
    # 3 rows (2 accepted, 1 bad_json), line numbers 1 and 3 for the events
    path = tmp_path / "f.jsonl"
    path.write_bytes(json.dumps(event("a")).encode() + b"\r" + ALL_SEPARATORS + b"\n"
                     + json.dumps(event("b")).encode() + b"\n")
    result = ingest_file(con, path, now=NOW)
    assert (result.rows_read, result.rows_accepted, result.reasons, result.blank_lines) == (3, 2, {"bad_json": 1}, 0)
    assert con.execute("SELECT event_id, source_line FROM usage_events ORDER BY 1").fetchall() == [("a", 1), ("b", 3)]


def test_a_file_split_in_python_counts_no_blank_line_after_its_last_line_end(tmp_path, con):
    # two lines each ended by \n, then one blank line (\n\n at the end: 1 blank line, not 2)
    path = tmp_path / "f.jsonl"
    path.write_bytes(json.dumps(event("a")).encode() + b"\n" + ALL_SEPARATORS + b"\n\n")
    result = ingest_file(con, path, now=NOW)
    assert (result.rows_read, result.rows_accepted, result.blank_lines) == (2, 1, 1)

# --------------------------------------------------------------------------- the CSV header


def test_a_csv_header_after_a_byte_order_mark_is_read(tmp_path, con):
    path = tmp_path / "f.csv"
    path.write_bytes(b"\xef\xbb\xbf" + f"{HEADER}\n{ROW}\n".encode())
    result = ingest_file(con, path, now=NOW)
    assert (result.rows_read, result.rows_accepted) == (1, 1)
    assert con.execute("SELECT event_id, value FROM usage_events").fetchone()[0] == "a"


def test_spaces_around_csv_header_names_are_not_part_of_them(tmp_path, con):
    path = tmp_path / "f.csv"
    path.write_text(" event_id , customer_id,meter ,timestamp,value\n" + ROW + "\n")
    result = ingest_file(con, path, now=NOW)
    assert (result.rows_read, result.rows_accepted) == (1, 1)
    assert con.execute("SELECT extra FROM usage_events").fetchone() == (None,)


def test_a_csv_header_with_broken_quoting_is_refused_as_unparseable(tmp_path, con):
    # `"event_id"x`: text after a closing quote; a lenient reader would make it the name `event_idx`
    path = tmp_path / "f.csv"
    path.write_text('"event_id"x,customer_id,meter,timestamp\n' + "a,cust_00001,tokens,2026-10-05T12:00:00Z\n")
    with pytest.raises(BadInputError, match=r"f\.csv: line 1: cannot parse the CSV header"):
        ingest_file(con, path, now=NOW)
    assert _counts(con) == (0, 0, 0)


def test_an_empty_csv_header_is_refused_saying_nothing_was_found(tmp_path, con):
    path = tmp_path / "f.csv"
    path.write_text("\n" + ROW + "\n")
    with pytest.raises(BadInputError, match=r"f\.csv: line 1: the CSV header lacks required column\(s\) "
                                            r"event_id, customer_id, meter, timestamp \(found: nothing\)$"):
        ingest_file(con, path, now=NOW)
    assert _counts(con) == (0, 0, 0)


# --------------------------------------------------------------------------- CSV rows


def test_a_csv_row_whose_extra_cells_are_all_empty_has_no_extra(tmp_path, con):
    # an empty cell is absent: a row with no unknown value has no extra (NULL), not an empty object
    path = tmp_path / "f.csv"
    path.write_text(f"{HEADER},source\n{ROW},\nb,cust_00001,tokens,2026-10-05T12:00:00Z,6,s\n")
    assert ingest_file(con, path, now=NOW).rows_accepted == 2
    assert con.execute("SELECT event_id, extra FROM usage_events ORDER BY 1").fetchall() == [
        ("a", None), ("b", '{"source":"s"}')]


# --------------------------------------------------------------------------- Parquet



def test_a_json_field_inside_an_unknown_parquet_struct_keeps_its_own_nulls(tmp_path, con):
    # a JSON field's value is written back as parsed, JSON's own nulls kept (as in JSON lines and in a
    # JSON column): {"a": null} stays {"a":null}, it does not lose its key as a struct's null field would
    j = pa.ExtensionArray.from_storage(pa.json_(), pa.array(['{"a": null}'], pa.string()))
    st = pa.StructArray.from_arrays([j, pa.array(["x"], pa.string())], names=["j", "s"])
    pq.write_table(_parquet_row(value=[1], st=st), tmp_path / "s.parquet")
    assert ingest_file(con, tmp_path / "s.parquet", now=NOW).rows_accepted == 1
    assert con.execute("SELECT extra FROM usage_events").fetchone() == ('{"st":{"j":{"a":null},"s":"x"}}',)


def test_a_null_field_of_an_unknown_parquet_struct_that_also_holds_json_is_absent(tmp_path, con):
    # the struct's own null field `n` is absent, as it is in a struct without a JSON field; the JSON
    # field's inner null is JSON's own and kept: {"st":{"j":{"a":null}}}
    j = pa.ExtensionArray.from_storage(pa.json_(), pa.array(['{"a": null}'], pa.string()))
    st = pa.StructArray.from_arrays([j, pa.array([None], pa.string())], names=["j", "n"])
    pq.write_table(_parquet_row(value=[1], st=st), tmp_path / "s.parquet")
    assert ingest_file(con, tmp_path / "s.parquet", now=NOW).rows_accepted == 1
    assert con.execute("SELECT extra FROM usage_events").fetchone() == ('{"st":{"j":{"a":null}}}',)


@pytest.mark.parametrize("arrow_type", [pa.timestamp("us", "UTC"), pa.timestamp("us"), pa.timestamp("ns", "UTC"),
                                        pa.timestamp("ms")], ids=["us_utc", "us_naive", "ns_utc", "ms_naive"])
def test_a_parquet_timestamp_column_keeps_its_fraction_in_every_unit(tmp_path, con, arrow_type):
    # 12:00:00.123456789 cut to the unit: ms -> .123, us/ns -> .123456 (stored to the microsecond, cut);
    # a column without a time zone is UTC
    import datetime as dt
    instant = dt.datetime(2026, 10, 5, 12, 0, 0, 123456, tzinfo=dt.timezone.utc)
    ts = pa.array([instant], pa.timestamp("us", "UTC")).cast(arrow_type, safe=False)
    expected = instant.replace(microsecond=123000) if arrow_type.unit == "ms" else instant
    pq.write_table(_parquet_row(value=[1], timestamp=ts), tmp_path / "t.parquet")
    result = ingest_file(con, tmp_path / "t.parquet", now=NOW)
    assert (result.rows_read, result.rows_accepted, result.reasons) == (1, 1, {})
    assert con.execute("SELECT event_time FROM usage_events").fetchone() == (expected,)


def test_a_parquet_timestamp_before_2000_is_named_with_its_fraction_in_the_detail(tmp_path, con):
    # the column's text is RFC 3339 with six fractional digits: 23:59:59.5 -> 23:59:59.500000Z
    import datetime as dt
    ts = pa.array([dt.datetime(1999, 12, 31, 23, 59, 59, 500000, tzinfo=dt.timezone.utc)], pa.timestamp("us", "UTC"))
    pq.write_table(_parquet_row(value=[1], timestamp=ts), tmp_path / "t.parquet")
    result = ingest_file(con, tmp_path / "t.parquet", now=NOW)
    assert (result.rows_read, result.reasons) == (1, {"bad_timestamp": 1})
    assert con.execute("SELECT detail FROM usage_quarantine").fetchone() == (
        "timestamp 1999-12-31T23:59:59.500000Z is not RFC 3339 with an offset or epoch milliseconds after 2000",)


def test_a_parquet_list_column_is_named_an_array_in_the_bad_type_detail(tmp_path, con):
    # a list is no number: bad_type, its kind named as JSON names it ("array"), as for a JSON lines array
    pq.write_table(_parquet_row(value=pa.array([["1"]], pa.list_(pa.string()))), tmp_path / "l.parquet")
    result = ingest_file(con, tmp_path / "l.parquet", now=NOW)
    assert result.reasons == {"bad_type": 1}
    assert con.execute("SELECT detail FROM usage_quarantine").fetchone() == (
        "value must be a decimal number, got array",)


def test_a_parquet_json_value_column_holding_an_object_is_named_an_object(tmp_path, con):
    # a JSON column is read as an object-kind field: {"x": 1} is no number, bad_type "got object"
    j = pa.ExtensionArray.from_storage(pa.json_(), pa.array(['{"x": 1}'], pa.string()))
    pq.write_table(_parquet_row(value=j), tmp_path / "j.parquet")
    result = ingest_file(con, tmp_path / "j.parquet", now=NOW)
    assert result.reasons == {"bad_type": 1}
    assert con.execute("SELECT detail FROM usage_quarantine").fetchone() == (
        "value must be a decimal number, got object",)


# --------------------------------------------------------------------------- reading in batches


class _StagingSink:
    """A real DuckDB staging table, as the loader's sink is, for calling the line reader directly."""

    def __init__(self, con):
        self.con = con
        con.execute(f"CREATE TEMP TABLE staged ({readers.STAGE_COLUMNS})")

    def insert(self, select_sql: str) -> int:
        return self.con.execute(f"INSERT INTO staged BY NAME {select_sql}").fetchone()[0]

    def reset(self) -> None:
        self.con.execute("DELETE FROM staged")


def test_a_line_longer_than_a_batch_is_refused_naming_the_file(tmp_path, con):
    # Arrow cannot split a line across its blocks: the file is unreadable, and the message names it
    path = tmp_path / "f.jsonl"
    path.write_bytes(b'{"a":"' + b"x" * 100 + b'"}\n')
    with pytest.raises(BadInputError, match=f"^{re.escape(str(path))}: cannot read the file: "):
        readers.stage_lines(con, path, "jsonl", _StagingSink(con), readers._insert_jsonl_batch, batch_bytes=16)


def test_an_empty_csv_cell_is_stored_as_no_value_in_the_quarantine(tmp_path, con):
    # an empty event_id cell is absent (missing_field), and the quarantine holds no event_id: NULL, not ''
    path = tmp_path / "f.csv"
    path.write_text(f"{HEADER}\n,cust_00001,tokens,2026-10-05T12:00:00Z,5\n")
    assert ingest_file(con, path, now=NOW).reasons == {"missing_field": 1}
    assert con.execute("SELECT event_id, reason FROM usage_quarantine").fetchall() == [(None, "missing_field")]
