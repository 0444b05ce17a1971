"""Inputs DuckDB reads in its own way: deep nesting, NaN tokens, control characters in names, JSON
null in a Parquet JSON column, numbers its cast cannot take, and Parquet floats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metering.errors import BadInputError
from metering.ingest import ingest_file
from tests.metering.ingest.conftest import NOW, event, write_lines

_BASE = '"customer_id":"c","meter":"tokens","timestamp":"2026-10-05T12:00:00Z","value":5'


def _json_column(texts: list[str | None]) -> pa.Array:
    return pa.ExtensionArray.from_storage(pa.json_(), pa.array(texts, pa.string()))


def _rows(n: int, prefix: str = "p") -> dict[str, list]:
    return {"event_id": [f"{prefix}{i}" for i in range(n)], "customer_id": ["c"] * n, "meter": ["tokens"] * n,
            "timestamp": ["2026-10-05T12:00:00Z"] * n}


def _outcomes(con) -> dict[str, tuple]:
    got = {e: ("clean", v, x) for e, v, x in con.execute(
        "SELECT event_id, value::VARCHAR, extra FROM usage_events").fetchall()}
    got.update({e: (r, d) for e, r, d in con.execute(
        "SELECT event_id, reason, detail FROM usage_quarantine").fetchall()})
    return got


def test_an_unknown_field_nested_300000_deep_is_kept_without_a_crash(tmp_path):
    """json_merge_patch, which built `extra`, recursed once per level and crashed the process
    (segfault) on a 0.6 MB line; a Parquet JSON column did the same. In a child process, as a crash
    would take the test runner with it."""
    depth = 300_000
    nested = "[" * depth + "]" * depth
    (tmp_path / "deep.jsonl").write_text('{"event_id":"d1",%s,"x":%s}\n' % (_BASE, nested))
    pq.write_table(pa.table({**_rows(2), "value": [5, 5], "note": _json_column([nested, '{"a" : null}'])}),
                   tmp_path / "deep.parquet")
    script = f"""
from pathlib import Path
from metering import warehouse
from metering.ingest import ingest_file
from tests.metering.ingest.conftest import NOW
con = warehouse.connect(Path({str(tmp_path)!r}) / "w.duckdb")
for name in ("deep.jsonl", "deep.parquet"):
    ingest_file(con, Path({str(tmp_path)!r}) / name, now=NOW)
print(con.execute("SELECT list(length(extra) ORDER BY event_id) FROM usage_events").fetchone()[0])
print(con.execute("SELECT extra FROM usage_events WHERE event_id = 'p1'").fetchone()[0])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=Path(__file__).parents[3], timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    # JSON's own nulls in a JSON column are kept, as in JSON lines
    assert done.stdout.split("\n")[:2] == [f"[{2 * depth + 6}, {2 * depth + 9}, 19]", '{"note":{"a":null}}']


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(st.dictionaries(
    st.sampled_from(["event_id", "value", "properties", "x", "é\"\\", "nan", ""]),
    st.recursive(st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                 | st.floats(allow_nan=False, allow_infinity=False) | st.text(st.characters(codec="utf-8"), max_size=5),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3),
                 max_leaves=5), max_size=6), min_size=1, max_size=8), ascii_only=st.booleans())
def test_json_lines_extra_is_what_json_merge_patch_gave(lines, ascii_only):
    """`extra` is built from the parsed map, not by merge-patching the line: byte for byte the text
    the merge patch gave on lines it could handle (key order, escapes, numbers, nested nulls)."""
    import duckdb

    from metering.ingest import readers
    from metering.ingest.contract import KNOWN_FIELDS

    texts = [json.dumps(d, ensure_ascii=ascii_only) for d in lines]
    con = duckdb.connect()
    con.register("lines", pa.table({"line": pa.array(range(1, len(texts) + 1), pa.int64()),
                                    "b": pa.array([t.encode() for t in texts], pa.binary()),
                                    "starts_at": pa.nulls(len(texts), pa.int64())}))
    got = [x for (x,) in con.execute(
        f"SELECT extra FROM ({readers._JSONL_SELECT.replace('__BATCH__', 'lines')}) ORDER BY line").fetchall()]
    remove = json.dumps({k: None for k in KNOWN_FIELDS})
    patched = [x for (x,) in con.execute(
        "SELECT nullif(json_merge_patch(decode(b), ?), '{}') FROM lines ORDER BY line", [remove]).fetchall()]
    assert got == patched


def test_parquet_extra_columns_are_written_as_before(tmp_path, con):
    """Column by column now: the same text as the one merge patch of them all gave, nulls of structs and
    maps dropped at any depth, now also inside a list (the merge patch kept `"l":[{"a":null}]`: it
    replaced arrays whole); an empty list stays `[]`."""
    table = pa.table({**_rows(2), "value": [5, 5], "é\"x": [1.5, None], "s": ["x\x7f/é", None],
                      "st": pa.array([{"a": None, "b": {"c": None, "d": 1}}, None]),
                      "l": pa.array([[{"a": None}], []]),
                      "m": pa.array([[("k", None), ("z", "v")], None], pa.map_(pa.string(), pa.string()))})
    pq.write_table(table, tmp_path / "x.parquet")
    ingest_file(con, tmp_path / "x.parquet", now=NOW)
    assert con.execute("SELECT extra FROM usage_events ORDER BY event_id").fetchall() == [
        ('{"é\\"x":1.5,"s":"x\x7f/é","st":{"b":{"d":1}},"l":[{}],"m":{"z":"v"}}',), ('{"l":[]}',)]


def test_names_with_control_characters_refuse_the_file(tmp_path, con):
    """A NUL in a CSV header name gave a traceback (DuckDB's SQL parser ends a literal there), one in
    a Parquet name the parser's message: refused by name and position, nothing stored."""
    (tmp_path / "h.csv").write_bytes(b"event_id,customer_id,meter,timestamp,value,x\x00y\ne1,c,tokens,"
                                     b"2026-10-05T12:00:00Z,5,1\n")
    pq.write_table(pa.table({**_rows(1), "x\x00y": [1]}), tmp_path / "c.parquet")
    pq.write_table(pa.table({**_rows(1), "properties": pa.array([{"ok": "a", "k\x1f": "b"}])}),
                   tmp_path / "f.parquet")
    expected = {"h.csv": r"line 1: CSV header column(s) 6 ('x\x00y') hold a control character",
                "c.parquet": r"the columns include(s) a name holding a control character, at position(s) 5 ('x\x00y')",
                "f.parquet": r"the fields of properties include(s) a name holding a control character, "
                             r"at position(s) 2 ('k\x1f')"}
    for name, message in expected.items():
        with pytest.raises(BadInputError) as raised:
            ingest_file(con, tmp_path / name, now=NOW)
        assert message in str(raised.value)
    assert con.execute("SELECT count(*) FROM ingested_files").fetchone() == (0,)


def test_json_null_in_a_parquet_json_column_is_absent(tmp_path, con):
    """As `properties: null` in a JSON line or 'null' in a string column: `{}`, not bad_type."""
    pq.write_table(pa.table({**_rows(4), "value": [5] * 4,
                             "properties": _json_column([" null ", '{"a" : "b"}', "[1]", None])}),
                   tmp_path / "j.parquet")
    write_lines(tmp_path / "j.jsonl", [event("j1", properties=None)])
    assert ingest_file(con, tmp_path / "j.parquet", now=NOW).reasons == {"bad_type": 1}
    ingest_file(con, tmp_path / "j.jsonl", now=NOW)
    assert con.execute("SELECT event_id, properties FROM usage_events ORDER BY 1").fetchall() == [
        ("j1", "{}"), ("p0", "{}"), ("p1", '{"a":"b"}'), ("p3", "{}")]


def test_nan_and_infinity_in_an_unknown_field_are_bad_json(tmp_path, con):
    """DuckDB's parser takes NaN, Infinity, inf (any case, a leading -) and wrote them into `extra`,
    which then no JSON parser reads: bad_json. In a known field NaN is that field's error (value:
    non_finite_value; properties: bad_type, the detail naming it); text is text."""
    lines = {"n1": '"note":inf', "n2": '"note":{"a":nan}', "n3": '"note":[1,-Infinity]', "n4": '"properties":{"a":NaN}',
             "n5": '"properties":-INF', "n6": '"properties":{"a":[1,nan]}',
             "ok1": '"note":"nan","nan":[1,"-inf"]', "ok2": '"note":"a\\":nan"', "ok3": '"properties":{"a":"x:nan"}',
             "ok4": '"y":1e999'}
    raw = ['{"event_id":"%s",%s,%s}' % (e, _BASE, f) for e, f in lines.items()]
    raw.append('{"event_id":"v1","customer_id":"c","meter":"tokens","timestamp":"2026-10-05T12:00:00Z","value":NaN}')
    pq.write_table(pa.table({**_rows(2, "q"), "value": [5, 5], "score": [float("nan"), 1.5]}), tmp_path / "f.parquet")
    results = [ingest_file(con, write_lines(tmp_path / "f.jsonl", raw), now=NOW),
               ingest_file(con, tmp_path / "f.parquet", now=NOW)]
    got = _outcomes(con)
    for event_id in ("n1", "n2", "n3", "q0"):
        assert got[event_id] == ("bad_json", "a JSON value may not be NaN or Infinity (in a field kept in extra)")
    for event_id in ("n4", "n6"):
        assert got[event_id] == ("bad_type", "properties must be an object of string values (NaN and Infinity are "
                                             "not JSON)")
    assert got["n5"][0] == "bad_type"
    assert got["v1"][0] == "non_finite_value"
    assert {e: got[e][2] for e in ("ok1", "ok2", "q1")} == {
        "ok1": '{"note":"nan","nan":[1,"-inf"]}', "ok2": '{"note":"a\\":nan"}', "q1": '{"score":1.5}'}
    assert got["ok3"][0] == got["ok4"][0] == "clean"
    # a line that is not JSON carries no quantity, whichever its value
    assert [r.value_quarantined for r in results] == [15, 0]


def test_values_duckdb_cannot_cast_are_judged_from_the_literal(tmp_path, con):
    """DuckDB's cast reads the mantissa into the decimal before the exponent, so it failed on a long
    mantissa or exponent, and every such value was value_too_large."""
    values = {"a": '"100000000000000000000000000000e-29"', "b": "100000000000000000000000000000e-29",
              "c": '"12345678901234567890123456789e-20"', "d": '"1e-99999999999999999999"',
              "e": '"1e99999999999999999999"', "f": '"0e99999999999999999999"',
              "g": '"-12345678901234567890123456789e-20"', "h": '"1000000000000000000000000000000000e-18"',
              "i": '"1000000000000000000000000000000001e-18"', "j": '"999999999999999999999999999e-12"',
              "k": '"0.00012345678901234567890123456789e20"', "l": '"-0e-99999999999999999999"'}
    raw = ['{"event_id":"%s","customer_id":"c","meter":"tokens","timestamp":"2026-10-05T12:00:00Z","value":%s}'
           % (e, v) for e, v in values.items()]
    ingest_file(con, write_lines(tmp_path / "v.jsonl", raw), now=NOW)
    got = {e: o[:2] if o[0] == "clean" else o[0] for e, o in _outcomes(con).items()}
    assert got == {"a": ("clean", "1.000000000000"), "b": ("clean", "1.000000000000"), "c": "value_too_precise",
                   "d": "value_too_precise", "e": "value_too_large", "f": ("clean", "0.000000000000"),
                   "l": ("clean", "0.000000000000"),
                   "g": "negative_value", "h": ("clean", "1000000000000000.000000000000"), "i": "value_too_large",
                   "j": ("clean", "999999999999999.999999999999"), "k": "value_too_large"}


def test_a_parquet_float_value_is_the_float_itself(tmp_path, con):
    """A float column carries the float, no parser between: its value is the shortest decimal naming
    it, held to the 12 decimals, not to a JSON number's 15 significant digits."""
    pq.write_table(pa.table({**_rows(3), "value": pa.array([1e14 + 0.5, 0.1 + 0.2, 0.1], pa.float64())}),
                   tmp_path / "f.parquet")
    assert ingest_file(con, tmp_path / "f.parquet", now=NOW).reasons == {"value_too_precise": 1}
    assert _outcomes(con) == {
        "p0": ("clean", "100000000000000.500000000000", None), "p2": ("clean", "0.100000000000", None),
        "p1": ("value_too_precise", "value 0.30000000000000004 has more than 12 decimal places")}
