"""An unknown Parquet column holding structs or maps, at any depth, is kept in `usage_events.extra` as JSON
with every struct's and map's null field absent: also inside a list and next to a JSON field (both once
kept as `null`: `json_merge_patch` replaced lists whole and was skipped for a struct holding JSON). A
list's null element stays `null`, a JSON field keeps its own nulls, a struct of null fields is `{}`;
odd names, lists of lists, numbers written exactly (`json_merge_patch` read them back as doubles), and a
generated comparison with a pure-Python reference (hypothesis). A type nesting more than 12 levels is
written by `to_json` whole (the bound, at its edge). The SQL of flat columns, the
ingest's hot path, is unchanged (`readers._parquet_extra_sql`)."""

from __future__ import annotations

import decimal
import json

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from metering import warehouse
from metering.ingest import ingest_file, readers
from tests.metering.ingest.conftest import NOW
from tests.metering.ingest.test_readers_mutants21 import _parquet_row


def _extra_of(tmp_path, con, **columns):
    """Ingest one tokens row (value 1) with `columns` added; its extra (or the quarantine reason)."""
    pq.write_table(_parquet_row(value=[1], **columns), tmp_path / "n.parquet")
    result = ingest_file(con, tmp_path / "n.parquet", now=NOW)
    assert (result.rows_read, result.rows_accepted, result.reasons) == (1, 1, {})
    return con.execute("SELECT extra FROM usage_events").fetchone()[0]


def _json_array(texts):
    return pa.ExtensionArray.from_storage(pa.json_(), pa.array(texts, pa.string()))


# --------------------------------------------------------------------------- lists


def test_a_null_field_of_a_struct_inside_a_list_is_absent(tmp_path, con):
    # [{"x": null, "y": "s"}, {"x": 1, "y": null}] -> each element loses its null field:
    # {"a":[{"y":"s"},{"x":1}]} (json_merge_patch kept both nulls: it replaces an array whole)
    a = pa.array([[{"x": None, "y": "s"}, {"x": 1, "y": None}]], pa.list_(pa.struct([("x", pa.int64()),
                                                                                      ("y", pa.string())])))
    assert _extra_of(tmp_path, con, a=a) == '{"a":[{"y":"s"},{"x":1}]}'


def test_a_null_element_of_a_list_stays_null(tmp_path, con):
    # an element is not a field: [null, {"x": 2}] keeps its null, as a list of numbers [1, null] does
    a = pa.array([[None, {"x": 2}]], pa.list_(pa.struct([("x", pa.int64())])))
    b = pa.array([[1, None]], pa.list_(pa.int64()))
    assert _extra_of(tmp_path, con, a=a, b=b) == '{"a":[null,{"x":2}],"b":[1,null]}'


def test_a_list_of_lists_drops_null_fields_in_its_inner_structs_only(tmp_path, con):
    # [[{"x": null}, {"x": 5}], null, []] -> [[{},{"x":5}],null,[]]: the struct whose one field is null
    # is {}, the null inner list stays null, the empty one stays []; a list of lists of numbers is as is
    a = pa.array([[[{"x": None}, {"x": 5}], None, []]], pa.list_(pa.list_(pa.struct([("x", pa.int64())]))))
    b = pa.array([[[1, None], None]], pa.list_(pa.list_(pa.int64())))
    assert _extra_of(tmp_path, con, a=a, b=b) == '{"a":[[{},{"x":5}],null,[]],"b":[[1,null],null]}'


def test_nan_in_a_struct_inside_a_list_makes_the_row_bad_json(tmp_path, con):
    # [{"f": NaN}] is written as NaN, not JSON: the row is bad_json, as NaN in a float column is
    a = pa.array([[{"f": float("nan")}]], pa.list_(pa.struct([("f", pa.float64())])))
    pq.write_table(_parquet_row(value=[1], a=a), tmp_path / "n.parquet")
    result = ingest_file(con, tmp_path / "n.parquet", now=NOW)
    assert (result.rows_read, result.rows_accepted, result.reasons) == (1, 0, {"bad_json": 1})


# --------------------------------------------------------------------------- maps and structs


def test_a_map_inside_a_struct_loses_its_null_values(tmp_path, con):
    # {"m": {"k1": null, "k2": 2}, "n": null} -> the map's null value and the struct's null field are
    # absent: {"st":{"m":{"k2":2}}}
    st_type = pa.struct([("m", pa.map_(pa.string(), pa.int64())), ("n", pa.int64())])
    st_col = pa.array([{"m": [("k1", None), ("k2", 2)], "n": None}], st_type)
    assert _extra_of(tmp_path, con, st=st_col) == '{"st":{"m":{"k2":2}}}'


def test_a_struct_inside_a_map_value_loses_its_null_fields(tmp_path, con):
    # a: {"x": null, "y": "v"} -> {"y":"v"}; b: null -> absent; c: {"x": 3, "y": null} -> {"x":3};
    # integer keys are written as their text, as to_json writes a map's keys: {"7":{}} for 7: {"x": null}
    value = pa.struct([("x", pa.int64()), ("y", pa.string())])
    m = pa.array([[("a", {"x": None, "y": "v"}), ("b", None), ("c", {"x": 3, "y": None})]], pa.map_(pa.string(), value))
    k = pa.array([[(7, {"x": None, "y": None})]], pa.map_(pa.int64(), value))
    assert _extra_of(tmp_path, con, m=m, k=k) == '{"m":{"a":{"y":"v"},"c":{"x":3}},"k":{"7":{}}}'


def test_a_json_fields_own_nulls_are_kept_at_depth_two_beside_a_dropped_null_field(tmp_path, con):
    # st.inner.j is JSON {"a": null, "b": [null, 1E2]}: kept with its nulls, its number as DuckDB's
    # parser reads it (100.0); st.inner.n and st.k are null fields: absent ->
    # {"st":{"inner":{"j":{"a":null,"b":[null,100.0]}}}}
    inner = pa.StructArray.from_arrays([_json_array(['{"a": null, "b": [null, 1E2]}']), pa.array([None], pa.string())],
                                       names=["j", "n"])
    st_col = pa.StructArray.from_arrays([inner, pa.array([None], pa.int64())], names=["inner", "k"])
    assert _extra_of(tmp_path, con, st=st_col) == '{"st":{"inner":{"j":{"a":null,"b":[null,100.0]}}}}'


def test_a_json_field_holding_null_is_absent_and_a_json_element_null_is_kept(tmp_path, con):
    # a JSON field holding `null` is an absent field, as a JSON column holding `null` is an absent
    # column; as a list's element it is an element: [{"j":null} -> {}, ...]. Row: st = {"j": null,
    # "s": "x"} -> {"s":"x"}; lst = [{"j": null}, {"j": [null]}] -> [{},{"j":[null]}]
    st_col = pa.StructArray.from_arrays([_json_array(["null"]), pa.array(["x"])], names=["j", "s"])
    elements = pa.StructArray.from_arrays([_json_array(["null", "[null]"])], names=["j"])
    lst = pa.ListArray.from_arrays(pa.array([0, 2], pa.int32()), elements)
    assert _extra_of(tmp_path, con, st=st_col, lst=lst) == '{"st":{"s":"x"},"lst":[{},{"j":[null]}]}'


def test_a_struct_of_null_fields_is_an_empty_object_and_a_null_struct_is_absent(tmp_path, con):
    # row 1: {"a": null, "b": null} -> {}, nested {"i": {"a": null}} -> {"i":{}} (the inner struct is
    # not null, only its field); row 2: both columns null -> absent, so extra is NULL
    flat = pa.array([{"a": None, "b": None}, None], pa.struct([("a", pa.int64()), ("b", pa.string())]))
    nested = pa.array([{"i": {"a": None}}, None], pa.struct([("i", pa.struct([("a", pa.int64())]))]))
    pq.write_table(_parquet_row(2, value=[1, 2], flat=flat, nested=nested), tmp_path / "n.parquet")
    assert ingest_file(con, tmp_path / "n.parquet", now=NOW).rows_accepted == 2
    assert con.execute("SELECT event_id, extra FROM usage_events ORDER BY 1").fetchall() == [
        ("p1", '{"flat":{},"nested":{"i":{}}}'), ("p2", None)]


def test_odd_column_field_and_key_names_are_written_as_json_strings(tmp_path, con):
    # names with a double quote, a single quote, a dot, a space and non-ASCII letters; the quote is
    # escaped in JSON (\"), the rest written as is; the null field x'y is absent. Column `we"ird col.ümn`:
    # {"q\"uote": 1, "d.ot": 2, "sp ace": 3, "ünï": 4, "x'y": null, "m": {"k\"ey é": 5}}
    names = ['q"uote', "d.ot", "sp ace", "ünï", "x'y"]
    fields = [(n, pa.int64()) for n in names] + [("m", pa.map_(pa.string(), pa.int64()))]
    col = pa.array([{'q"uote': 1, "d.ot": 2, "sp ace": 3, "ünï": 4, "x'y": None, "m": [('k"ey é', 5)]}],
                   pa.struct(fields))
    assert _extra_of(tmp_path, con, **{'we"ird col.ümn': col}) == (
        '{"we\\"ird col.ümn":{"q\\"uote":1,"d.ot":2,"sp ace":3,"ünï":4,"m":{"k\\"ey é":5}}}')


def test_a_column_nesting_more_than_12_levels_is_written_whole_by_to_json(tmp_path, con):
    # `deep`: 11 structs {"a": ...} around a list of {"x": 1, "n": null}: 13 levels (11 + list + struct),
    # written by to_json whole ("n":null stays); `ok`: 10 structs, 12 levels, written out: "n" absent
    def wrap(levels, t, v):
        for _ in range(levels):
            t, v = pa.struct([("a", t)]), {"a": v}
        return pa.array([v], t)
    inner_t = pa.list_(pa.struct([("x", pa.int64()), ("n", pa.int64())]))
    inner_v = [{"x": 1, "n": None}]
    extra = _extra_of(tmp_path, con, deep=wrap(11, inner_t, inner_v), ok=wrap(10, inner_t, inner_v))
    assert extra == ('{"deep":' + '{"a":' * 11 + '[{"x":1,"n":null}]' + "}" * 11
                     + ',"ok":' + '{"a":' * 10 + '[{"x":1}]' + "}" * 10 + "}")


def test_numbers_in_a_struct_or_map_are_written_exactly(tmp_path, con):
    """A struct's or map's numbers went through json_merge_patch, which reads a decimal back as a double:
    12345678901234567890.123 (DECIMAL(38,12)) was stored as 12345678901234567000.0. Written out from the
    type they keep every digit, as a flat decimal column does (to_json writes a DECIMAL(38,12) with its
    12 places); 2**64 - 1 (UINT64) stays 18446744073709551615."""
    big = decimal.Decimal("12345678901234567890.123")
    st_col = pa.array([{"d": big, "u": 2**64 - 1, "n": None}],
                      pa.struct([("d", pa.decimal128(38, 12)), ("u", pa.uint64()), ("n", pa.int64())]))
    m = pa.array([[("k", big)]], pa.map_(pa.string(), pa.decimal128(38, 12)))
    assert _extra_of(tmp_path, con, st=st_col, m=m) == (
        '{"st":{"d":12345678901234567890.123000000000,"u":18446744073709551615},'
        '"m":{"k":12345678901234567890.123000000000}}')


def test_the_sql_of_flat_columns_is_unchanged():
    # the hot path: a flat column is written by to_json (a JSON one by json), as before; a list of
    # numbers too. Written out by hand for the columns source (VARCHAR), j (JSON) and l (BIGINT[]):
    types = {"source": "VARCHAR", "j": "JSON", "l": "BIGINT[]"}
    assert readers._parquet_extra_sql(types, list(types)) == (
        "nullif(concat('{', concat_ws(',', "
        "CASE WHEN \"source\" IS NOT NULL THEN concat(to_json('source'), ':', to_json(\"source\")) END, "
        "CASE WHEN \"j\" IS NOT NULL AND json_type(\"j\") <> 'NULL' THEN concat(to_json('j'), ':', json(\"j\")) END, "
        "CASE WHEN \"l\" IS NOT NULL THEN concat(to_json('l'), ':', to_json(\"l\")) END), '}'), '{}')")


def test_a_type_the_reader_cannot_take_apart_is_written_whole():
    # a type spelled in a way the parser does not know (here cut short) is no traceback: the column is
    # written by to_json whole, as a flat one is
    assert readers._parquet_extra_sql({"st": 'STRUCT("a" BIGINT'}, ["st"]) == (
        "nullif(concat('{', concat_ws(',', "
        "CASE WHEN \"st\" IS NOT NULL THEN concat(to_json('st'), ':', to_json(\"st\")) END), '}'), '{}')")


def test_a_duckdb_type_is_read_with_quoted_names_and_leaf_types_holding_commas():
    # STRUCT("a""b" DECIMAL(18,3), "c d" TIMESTAMP WITH TIME ZONE, f MAP(VARCHAR, STRUCT(x JSON)[])[]):
    # fields a"b (a leaf), c d (a leaf), f: a list of maps from a leaf to lists of structs of one JSON field
    t = readers._parse_duckdb_type(
        'STRUCT("a""b" DECIMAL(18,3), "c d" TIMESTAMP WITH TIME ZONE, f MAP(VARCHAR, STRUCT(x JSON)[])[])')
    leaf, T = readers._DuckType("leaf"), readers._DuckType
    structs = T("list", (("element", T("struct", (("x", T("json")),))),))
    maps = T("list", (("element", T("map", (("key", leaf), ("value", structs)))),))
    assert t == T("struct", (('a"b', leaf), ("c d", leaf), ("f", maps)))


# --------------------------------------------------------------------------- generated


_NAMES = ["a", "B c", 'q"t', "d.o", "é", "x'y", "select"]
_TEXT = st.text(alphabet='ab"\\é☃ /', max_size=4)


def _types():
    leaves = st.sampled_from([pa.int64(), pa.uint64(), pa.string()])
    return st.recursive(leaves, lambda children: st.one_of(
        st.lists(st.tuples(st.sampled_from(_NAMES), children), min_size=1, max_size=3,
                 unique_by=lambda f: f[0].lower()).map(pa.struct),
        children.map(pa.list_),
        children.map(lambda t: pa.map_(pa.string(), t)),
    ), max_leaves=6)


def _values(t: pa.DataType):
    """A strategy of Python values of type t (None included); a map's value is a dict (unique keys)."""
    if pa.types.is_struct(t):
        inner = st.fixed_dictionaries({t.field(i).name: _values(t.field(i).type) for i in range(t.num_fields)})
    elif pa.types.is_map(t):
        inner = st.dictionaries(_TEXT, _values(t.item_type), max_size=3)
    elif pa.types.is_list(t):
        inner = st.lists(_values(t.value_type), max_size=3)
    else:
        inner = (st.integers(0, 2**64 - 1) if t == pa.uint64() else st.integers(-2**63, 2**63 - 1)
                 if pa.types.is_integer(t) else _TEXT)
    return st.one_of(st.none(), inner)


def _to_arrow(v, t: pa.DataType):
    if v is None:
        return None
    if pa.types.is_struct(t):
        return {t.field(i).name: _to_arrow(v[t.field(i).name], t.field(i).type) for i in range(t.num_fields)}
    if pa.types.is_map(t):
        return [(k, _to_arrow(x, t.item_type)) for k, x in v.items()]
    if pa.types.is_list(t):
        return [_to_arrow(x, t.value_type) for x in v]
    return v


def _reference(v, t: pa.DataType):
    """What extra holds for v: a struct's fields in the type's order, a struct's or map's None fields
    dropped at any depth, None kept as a list's element."""
    if v is None or not pa.types.is_nested(t):
        return v
    if pa.types.is_struct(t):
        fields = [t.field(i) for i in range(t.num_fields)]
        return {f.name: _reference(v[f.name], f.type) for f in fields if v[f.name] is not None}
    if pa.types.is_map(t):
        return {k: _reference(x, t.item_type) for k, x in v.items() if x is not None}
    return [_reference(x, t.value_type) for x in v]


@st.composite
def _columns(draw):
    t = draw(_types())
    return t, draw(st.lists(_values(t), min_size=1, max_size=3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(column=_columns())
@example(column=(pa.list_(pa.struct([("a", pa.int64())])), [[{"a": None}]]))   # once kept as [{"a":null}]
def test_extra_of_a_generated_nested_column_matches_a_python_reference(column, tmp_path_factory):
    """Structs, lists and maps of 64-bit integers (signed and not) and strings, nested, with nulls
    anywhere: each row's extra is the reference written compact (`,` `:`), keys in order, non-ASCII as
    is, every integer exact; a null column is absent."""
    t, rows = column
    base = tmp_path_factory.mktemp("nested")
    n = len(rows)
    arr = pa.array([_to_arrow(v, t) for v in rows], t)
    pq.write_table(_parquet_row(n, value=list(range(1, n + 1)), **{"c ol": arr}), base / "n.parquet")
    con = warehouse.connect(base / "w.duckdb")
    try:
        result = ingest_file(con, base / "n.parquet", now=NOW)
        assert (result.rows_accepted, result.reasons) == (n, {})
        stored = con.execute("SELECT extra FROM usage_events ORDER BY event_id").fetchall()
    finally:
        con.close()
    expected = [(None if v is None else json.dumps({"c ol": _reference(v, t)}, separators=(",", ":"), ensure_ascii=False),)
                for v in rows]
    assert stored == expected
