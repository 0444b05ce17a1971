"""Validation: classify every staged row as clean (typed) or quarantined with one reason.

Row-level rules run as one DuckDB SQL expression over whole batches (no per-row Python); the
first failing check in `metering.ingest.contract.REASONS` order wins. Checks that need context
(is the meter defined, does the timestamp lie in the future, what is already stored) take it from
the meter definitions, the ingestion time and the warehouse. The clean rows are then checked
against a pandera schema on Polars (`CLEAN_EVENT_SCHEMA`): the typed contract of `usage_events`.

Numbers are never floats on the way to the warehouse: values are cast from their text straight to
DECIMAL(38, 12). A DOUBLE appears only to recognise NaN and infinities.
"""

from __future__ import annotations

from datetime import datetime

import pandera.polars as pa
import polars as pl

from metering.ingest.contract import (
    CONTROL_CHARACTERS,
    FUTURE_TOLERANCE,
    MAX_JSON_NUMBER_DIGITS,
    MAX_VALUE,
    MIN_TIMESTAMP,
    REASONS,
    VALUE_SCALE,
)
from metering.rules.meters import Meter
from metering.warehouse import sql_string

# RFC 3339 with its ranges: DuckDB's cast alone takes 24:00:00 as the next day and offsets such as
# +25:00 or +99:99, which would move an event into another day or billing period
_RFC3339 = (r"\d{4}-\d{2}-\d{2}[Tt ]([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,9})?"
            r"([Zz]|[+-]([01]\d|2[0-3]):[0-5]\d)")
_EPOCH_MS = r"\d{1,15}"  # 15 digits reach the year 33658; more would overflow DuckDB's timestamp
_NUMBER = r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
_NON_FINITE = "['nan', '+nan', '-nan', 'inf', '+inf', '-inf', 'infinity', '+infinity', '-infinity']"
_HAS_E = "(contains(vtext, 'e') OR contains(vtext, 'E'))"
_MANTISSA = "split_part(lower(vtext), 'e', 1)"
_DIGITS = f"regexp_replace({_MANTISSA}, '[^0-9]', '', 'g')"  # the mantissa's digits, the point taken out
# value_too_precise, in three parts; cheap guards first, as most values are short
_TOO_MANY_DECIMALS = (f"(length(vtext) > {VALUE_SCALE} + 1 AND strpos(vtext, '.') > 0 AND NOT {_HAS_E} AND "
                      f"length(rtrim(vtext, '0')) - strpos(vtext, '.') > {VALUE_SCALE})")
# a JSON number with more significant digits than a binary float keeps; zeros at either end are not
# significant (the parser writes 1e14 back as 100000000000000.0). Not a Parquet float column's value
# (value_t FLOAT): that is the float itself, read as the shortest decimal naming it.
_TOO_MANY_DIGITS = (f"(value_t = 'DOUBLE' AND length(vtext) > {MAX_JSON_NUMBER_DIGITS} AND "
                    f"length(trim({_DIGITS}, '0')) > {MAX_JSON_NUMBER_DIGITS})")
_EXPONENT = "try_cast(split_part(lower(vtext), 'e', 2) AS BIGINT)"
_NEGATIVE_EXPONENT = "prefix(split_part(lower(vtext), 'e', 2), '-')"  # also when too long to read
# exponent form: with the mantissa's digits D (the point taken out), f of them after the point, and t
# trailing zeros, the value is D/10^t x 10^(t - f + exp): its decimals are f - t - exp. So 1e-19 is
# refused rather than rounded to 0, and 120e-13 (0.000000000012) accepted. An exponent too long to
# read means many decimals when negative (a large one is value_too_large).
_EXPONENT_TOO_PRECISE = (f"({_HAS_E} AND regexp_matches({_MANTISSA}, '[1-9]') AND coalesce("
                         f"length(split_part({_MANTISSA}, '.', 2)) - (length({_DIGITS}) - length(rtrim({_DIGITS}, '0')))"
                         f" - {_EXPONENT} > {VALUE_SCALE}, {_NEGATIVE_EXPONENT}))")
_TOO_PRECISE = f"({_TOO_MANY_DECIMALS} OR {_TOO_MANY_DIGITS} OR {_EXPONENT_TOO_PRECISE})"


# exponent form: where the point falls, counted in digits from the mantissa's first non-zero digit
# (1.5e3: 4, 0.05e0: -1); NULL when the exponent is too long to read
_POINT = (f"({_EXPONENT} + length(ltrim(split_part({_MANTISSA}, '.', 1), '+-')) - length({_DIGITS}) "
          f"+ length(ltrim({_DIGITS}, '0')))")


def _exact_value() -> str:
    """SQL: the value as DECIMAL(38, 12) where `v12` is NULL, for an exponent form DuckDB's cast fails
    on: the number written plainly, its point moved by the exponent.

    DuckDB's cast reads the mantissa into the decimal before applying the exponent, so it fails on a
    long mantissa whatever the value (`100000000000000000000000000000e-29` is 1) and on a long
    exponent, even of a zero. The checks judge such a literal by its text (`_LITERAL_TOO_LARGE`,
    `_TOO_PRECISE`); this is for the stored value only, once in the query: every copy of it made
    DuckDB's planning of each batch's query slower (~30 ms for three).
    """
    plain = ("list_transform([{'d': ltrim(" + _DIGITS + ", '0'), 'p': " + _POINT + "}], s -> "
             "CASE WHEN s.d = '' THEN '0' "
             f"WHEN s.p BETWEEN -{VALUE_SCALE} AND 0 THEN '0.' || repeat('0', -s.p) || s.d "
             "WHEN s.p BETWEEN 1 AND 27 THEN CASE WHEN s.p < length(s.d) THEN left(s.d, s.p) || '.' || "
             "substr(s.d, s.p + 1) ELSE s.d || repeat('0', s.p - length(s.d)) END END)[1]")
    sign = "CASE WHEN prefix(vtext, '-') THEN '-' ELSE '' END"
    return f"CASE WHEN {_HAS_E} THEN try_cast({sign} || {plain} AS DECIMAL(38, {VALUE_SCALE})) END"


_NOT_ZERO = f"(ltrim({_DIGITS}, '0') <> '')"
_NOT_A_POWER_OF_TEN = f"(rtrim(ltrim({_DIGITS}, '0'), '0') <> '1')"   # significant digits other than a lone 1
# a number that is no DECIMAL(38, 12) (v12 NULL) is too large when it has more than 16 digits before
# the point, or 16 and is not exactly 1e15, judged from the literal: plain decimals fail the cast only
# there
_LITERAL_TOO_LARGE = (f"(NOT {_HAS_E} OR ({_NOT_ZERO} AND coalesce({_POINT} + "
                      f"{_NOT_A_POWER_OF_TEN}::INT > 16, "
                      f"NOT {_NEGATIVE_EXPONENT})))")

# a number above 1e15 that the cast to DECIMAL(38, 12) rounds onto 1e15 itself (1e15 + 1e-13): v12 is
# exactly 1e15, so the literal decides: at least 16 digits before its point, and not 1e15 written with
# zeros. (Below 1e15, 999999999999999.9999999999999 rounds onto it too: too precise, not too large.)
_ROUNDED_ONTO_MAX = (f"(abs(v12) = {MAX_VALUE} AND {_NOT_A_POWER_OF_TEN} AND "
                     f"CASE WHEN {_HAS_E} THEN {_POINT} > 15 "
                     f"ELSE length(ltrim(split_part(ltrim(vtext, '+-'), '.', 1), '0')) > 15 END)")


# NaN or an infinity as a JSON token, outside strings (`"nan"` and a key `nan` are text): DuckDB's
# JSON parser takes NaN, Infinity, inf and -nan in any case, and writes them back as read; JSON does
# not, so text holding one may not be stored as JSON. Strings are consumed whole (an escaped quote
# included), so a token is looked for only where a value starts.
_NON_JSON_NUMBER = r'^(([^"]|"([^"\\]|\\.)*")*[:,\[])?-?(?i:nan|inf)'
# a list for list_contains, not an `IN (...)` list: DuckDB turns an IN list of five constants into a
# join against them, one hash probe per row (10M rows: the IN lists cost the classification ~0.35 s)
_NUMBER_KINDS = "['BIGINT', 'UBIGINT', 'DOUBLE', 'FLOAT', 'DECIMAL', 'VARCHAR']"

NOT_AN_OBJECT = "not a single JSON object"
"""The detail of a JSON line that yields no object (a syntax error, an array, trailing text)."""
REPEATED_KEY = "the object repeats a key (JSON parsers differ on which of its values counts)"
"""The detail of a JSON line that parses but names a key twice (`bad_json` too)."""
_PARSE_REASON = "CASE WHEN parse_error = 'repeated_key' THEN 'bad_json' ELSE parse_error END"

CLASSIFIED_COLUMNS = """
    line BIGINT, raw VARCHAR, reason VARCHAR, detail VARCHAR,
    event_id VARCHAR, customer_id VARCHAR, meter VARCHAR, event_time TIMESTAMPTZ, event_date DATE,
    value DECIMAL(38, 12), properties VARCHAR, extra VARCHAR, byte_offset BIGINT
"""


def _list(values: list[str]) -> str:
    return "[" + ", ".join(sql_string(v) for v in values) + "]::VARCHAR[]"


def _blank(col: str) -> str:
    """Absent, null, empty or only spaces (the trim runs only when the text starts with a space)."""
    return f"({col}_t = 'NULL' OR ({col}_t = 'VARCHAR' AND ({col} = '' OR (prefix({col}, ' ') AND trim({col}) = ''))))"


def _may_hold_control(text: str, json: bool = False) -> str:
    """A cheap pre-test for `CONTROL_CHARACTERS`: JSON escapes every character below 0x20 (as a backslash
    sequence) and leaves only DEL (0x7f) raw. False means the text has no control character."""
    escaped = text if json else f"to_json({text})"
    return f"(contains({escaped}, '\\') OR contains({text}, chr(127)))"


def _counted_properties(meters: dict[str, Meter]) -> dict[str, str]:
    """Meter -> the property whose distinct values it counts (unique_count meters)."""
    return {n: m.property for n, m in meters.items() if m.aggregation == "unique_count" and m.property}


def _parsed_properties_needed(meters: dict[str, Meter]) -> str:
    """When `pm` (the properties parsed into a map) is needed. Canonical text of string values (a
    Parquet struct of text fields) is parsed only for the control-character check and for the
    meters that count a property's distinct values."""
    counted = sorted(_counted_properties(meters))
    return (f"properties_t = 'OBJECT' AND (NOT properties_canonical OR {_may_hold_control('properties', json=True)}"
            f" OR list_contains({_list(counted)}, meter))")


def _checks(meters: dict[str, Meter], now: datetime) -> list[tuple[str, str, str]]:
    """(reason, condition, detail) in evaluation order; conditions see the columns of `typed`.

    Every condition runs on every row that passed the ones before it, so they are written to be
    cheap on the common (valid) row: related checks share one condition and the detail says which.
    """
    names = sorted(meters)
    need_value = sorted(n for n, m in meters.items() if m.aggregation in ("sum", "max", "last"))
    counted = _counted_properties(meters)
    horizon = sql_string((now + FUTURE_TOLERANCE).isoformat())
    required = (("event_id", "event_id"), ("customer_id", "customer_id"), ("meter", "meter"), ("timestamp", "ts"))
    typed_fields = ("event_id", "customer_id", "meter")
    checks: list[tuple[str, str, str]] = [
        ("parse_error", "parse_error IS NOT NULL",
         f"CASE parse_error WHEN 'invalid_utf8' THEN 'the row is not valid UTF-8' WHEN 'bad_json' THEN "
         f"'{NOT_AN_OBJECT}' WHEN 'repeated_key' THEN '{REPEATED_KEY}' "
         f"ELSE 'broken quoting or wrong number of fields' END"),
        # before every other check, as for any other line that is not JSON. In a known field NaN is that
        # field's own error: non_finite_value for `value`, bad_type elsewhere (not a string, not an object
        # of strings), which the detail names
        ("bad_json", f"extra IS NOT NULL AND regexp_matches(extra, '{_NON_JSON_NUMBER}')",
         "'a JSON value may not be NaN or Infinity (in a field kept in extra)'"),
        ("missing_field", " OR ".join(_blank(c) for _, c in required),
         "CASE " + " ".join(f"WHEN {_blank(c)} THEN '{f} is missing or empty'" for f, c in required) + " END"),
        # an empty or blank text value is an absent one, as an empty CSV cell is
        ("missing_field", f"(value_t = 'NULL' OR (value_t = 'VARCHAR' AND vtext IS NULL)) "
                          f"AND list_contains({_list(need_value)}, meter)",
         "'value is required for meter ' || meter"),
        *[("missing_field", f"meter = {sql_string(meter)} AND coalesce(trim(pm[{sql_string(prop)}]->>'$'), '') = ''",
           sql_string(f"properties.{prop} is required for meter {meter}")) for meter, prop in sorted(counted.items())],
        ("bad_type", " OR ".join(f"{f}_t <> 'VARCHAR'" for f in typed_fields),
         "CASE " + " ".join(f"WHEN {f}_t <> 'VARCHAR' THEN '{f} must be a string, got ' || lower({f}_t)"
                            for f in typed_fields) + " END"),
        # a null value is an absent key, as a Parquet struct's null field is
        ("bad_type", "properties_t NOT IN ('NULL', 'OBJECT') OR "
                     "(properties_t = 'OBJECT' AND pm IS NULL AND NOT properties_canonical) OR "
                     "(cardinality(pm) > 0 AND NOT list_bool_and(list_transform(map_values(pm), "
                     "v -> v IS NULL OR prefix(v, '\"')))) OR "
                     "(cardinality(pm) > 1 AND len(list_distinct(map_keys(pm))) < cardinality(pm))",
         "CASE WHEN cardinality(pm) > 1 AND len(list_distinct(map_keys(pm))) < cardinality(pm) "
         "THEN 'properties repeat a key' ELSE 'properties must be an object of string values' END || "
         f"CASE WHEN regexp_matches(properties, '{_NON_JSON_NUMBER}') THEN ' (NaN and Infinity are not JSON)' "
         "ELSE '' END"),
        # (NaN or an infinity is not a number either, but its own reason, later in the order)
        ("bad_type", f"value_t <> 'NULL' AND (NOT list_contains({_NUMBER_KINDS}, value_t) OR "
                     f"(vtext IS NOT NULL AND NOT num_ok AND NOT list_contains({_NON_FINITE}, lower(vtext))))",
         "'value must be a decimal number, got ' || coalesce(vtext, lower(value_t))"),
        ("control_characters",
         # the (costly) regex runs only where a control character may be: text whose JSON form has
         # an escape or that holds DEL; a meter that names a defined meter has none
         # (each id tested alone, not their concatenation, which built and escaped a new string per
         # row: 10M Parquet rows, the checks 0.3-0.5 CPU-s faster)
         f"(({_may_hold_control('event_id')} OR {_may_hold_control('customer_id')}) AND "
         f"regexp_matches(event_id || customer_id, '{CONTROL_CHARACTERS}')) OR "
         f"(NOT list_contains({_list(names)}, meter) AND regexp_matches(meter, '{CONTROL_CHARACTERS}')) OR "
         f"({_may_hold_control('props', json=True)} AND "
         f"regexp_matches(array_to_string(list_transform(map_entries(pm), e -> e.key || (e.value->>'$')), ''),"
         f" '{CONTROL_CHARACTERS}'))",
         "'event_id, customer_id, meter or a property contains a control character'"),
        ("unknown_meter", f"NOT list_contains({_list(names)}, meter)",
         "'meter ' || meter || ' is not defined in meters.yaml'"),
        ("bad_timestamp", f"t IS NULL OR t < TIMESTAMPTZ {sql_string(MIN_TIMESTAMP)}",
         "'timestamp ' || coalesce(ts, '') || ' is not RFC 3339 with an offset or epoch milliseconds after 2000'"),
        ("future_timestamp", f"t > TIMESTAMPTZ {horizon}",
         "'timestamp ' || t::VARCHAR || ' is in the future (ingested at ' || " + sql_string(now.isoformat())
         + " || ')'"),
        ("non_finite_value", f"NOT num_ok AND list_contains({_NON_FINITE}, lower(vtext))",
         "'value ' || vtext || ' is not finite'"),
        ("value_too_large",
         f"vtext IS NOT NULL AND (abs(v12) > {MAX_VALUE} OR (v12 IS NULL AND {_LITERAL_TOO_LARGE}) OR "
         f"{_ROUNDED_ONTO_MAX})",
         f"'value ' || vtext || ' exceeds {MAX_VALUE}'"),
        # v12 NULL here: a number too precise for DECIMAL(38, 12), judged next; v12 0: one below the
        # 12th decimal, rounded (-1e-13), which is negative before it is too precise
        ("negative_value", f"v12 < 0 OR (coalesce(v12, 0) = 0 AND vtext IS NOT NULL AND prefix(vtext, '-') "
                           f"AND {_NOT_ZERO})",
         "'value ' || vtext || ' is negative'"),
        # cheap guards first: most values are short integers or have a few decimals
        ("value_too_precise", _TOO_PRECISE,
         f"'value ' || vtext || CASE WHEN {_TOO_MANY_DIGITS} THEN ' has more than {MAX_JSON_NUMBER_DIGITS} "
         f"significant digits, more than a JSON number carries exactly (send it as a string)' "
         f"ELSE ' has more than {VALUE_SCALE} decimal places' END"),
    ]
    assert {c[0] for c in checks} <= set(REASONS) | {"parse_error"}
    return checks


def timestamp_sql(text: str) -> str:
    """SQL: the instant the timestamp text `text` names, or NULL where it is neither RFC 3339 with an
    offset nor epoch milliseconds (digits only). The one rule, for validation and for `peek`."""
    # RFC 3339 first: the common case, and exclusive with the digits-only epoch form. The upper-case
    # retry only where the cast failed: RFC 3339 allows a lower-case `t` and `z`, DuckDB does not.
    return (f"CASE WHEN regexp_full_match({text}, '{_RFC3339}') THEN coalesce(try_cast({text} AS TIMESTAMPTZ), "
            f"try_cast(upper({text}) AS TIMESTAMPTZ)) "
            f"WHEN regexp_full_match({text}, '{_EPOCH_MS}') THEN epoch_ms({text}::BIGINT)::TIMESTAMPTZ END")


def classify_select(source_sql: str, meters: dict[str, Meter], now: datetime) -> str:
    """SQL turning staged rows (see `readers.STAGE_COLUMNS`) into `CLASSIFIED_COLUMNS`."""
    checks = _checks(meters, now)
    # parse_error holds its own reason, but for a repeated key, which is bad_json with its own detail
    label = lambda r: _PARSE_REASON if r == "parse_error" else f"'{r}'"  # noqa: E731
    reason = "CASE " + " ".join(f"WHEN {c} THEN {label(r)}" for r, c, _ in checks) + " END"
    detail = "CASE " + " ".join(f"WHEN {c} THEN {d}" for _, c, d in checks) + " END"
    return f"""
WITH staged AS ({source_sql}),
prepared AS (
    SELECT *,
        CASE WHEN {_parsed_properties_needed(meters)} THEN try(json_transform(properties, '"MAP(VARCHAR, JSON)"'))
        END AS pm,
        CASE WHEN list_contains({_NUMBER_KINDS}, value_t) THEN nullif(trim(value), '') END AS vtext,
        CASE WHEN ts_native IS NOT NULL THEN ts_native
             WHEN ts_t = 'VARCHAR' OR ts_t = 'BIGINT' OR ts_t = 'UBIGINT' THEN {timestamp_sql('ts')}
        END AS t
    FROM staged
), typed AS (
    SELECT *,
        -- DuckDB 1.5 casts text to DECIMAL(38, s) ~100x slower than to DECIMAL(18, s): take the fast
        -- path whenever a plain decimal fits (|v| < 1e6), the exact wide cast otherwise (same result).
        -- Not for an exponent form: the narrow cast keeps 18 of the mantissa's digits and its scale's
        -- decimals before applying the exponent (1.000000000000000001e6 -> 1000000, outside its own
        -- range; 0.0000000000000000001057e18 -> 0), where the wide one is exact (NULL also for an
        -- exponent form DuckDB cannot cast: see `_exact_value`)
        CASE WHEN {_HAS_E} THEN try_cast(vtext AS DECIMAL(38, {VALUE_SCALE}))
             ELSE coalesce(try_cast(vtext AS DECIMAL(18, {VALUE_SCALE}))::DECIMAL(38, {VALUE_SCALE}),
                           try_cast(vtext AS DECIMAL(38, {VALUE_SCALE}))) END AS v12,
        vtext IS NOT NULL AND regexp_full_match(vtext, '{_NUMBER}') AS num_ok,
        CASE WHEN properties_canonical AND properties_t = 'OBJECT' THEN properties
             WHEN pm IS NULL OR cardinality(pm) = 0 THEN '{{}}'
             -- one key: already canonical, as every reader writes objects back compact with DuckDB,
             -- unless its value is null (`{{"k":null}}`: an absent key)
             WHEN cardinality(pm) = 1 AND NOT suffix(properties, ':null}}') THEN properties
             ELSE '{{' || array_to_string(list_transform(list_sort(list_filter(map_entries(pm), e -> e.value IS NOT NULL)),
                  e -> to_json(e.key) || ':' || e.value), ',') || '}}' END AS props
    FROM prepared
), judged AS (
    SELECT *, {reason} AS reason FROM typed
)
SELECT line,
       CASE WHEN reason IS NOT NULL THEN raw END AS raw,  -- valid rows' text is re-read only if one conflicts
       reason,
       CASE WHEN reason IS NOT NULL THEN {detail} END AS detail,
       event_id, customer_id, meter,
       CASE WHEN reason IS NULL THEN t END AS event_time,
       -- the UTC date by arithmetic: casting TIMESTAMPTZ to DATE goes through the time zone library
       -- (0.6 s per 10M rows); t lies after 2000, so the floor division is exact
       CASE WHEN reason IS NULL THEN DATE '1970-01-01' + (epoch_us(t) // 86400000000)::INTEGER END AS event_date,
       -- a quarantined row keeps its quantity where it is one exactly (I1: the values read add up to the
       -- values stored, quarantined and dropped), not from a row that did not parse (a CSV row with a
       -- field too many shifts its cells, a line with NaN in a field kept in extra is not JSON). The first
       -- branch is the rare number DuckDB's cast failed on (two null tests on the others); CASE evaluates
       -- the last branch on quarantined rows only
       CASE WHEN v12 IS NULL AND vtext IS NOT NULL THEN
                CASE WHEN reason IS NULL OR (parse_error IS NULL AND reason <> 'bad_json' AND num_ok
                     AND NOT {_LITERAL_TOO_LARGE} AND NOT {_TOO_PRECISE}) THEN {_exact_value()} END
            WHEN reason IS NULL THEN v12
            WHEN parse_error IS NULL AND reason <> 'bad_json' AND num_ok AND abs(v12) <= {MAX_VALUE}
                 AND NOT {_TOO_PRECISE} THEN v12
       END AS value,
       CASE WHEN reason IS NULL THEN props END AS properties,
       extra,
       CASE WHEN reason IS NULL THEN byte_offset END AS byte_offset  -- to fetch a conflicting line's text
FROM judged
"""


CLEAN_EVENT_SCHEMA = pa.DataFrameSchema(
    {
        "event_id": pa.Column(pl.String, pa.Check.str_length(min_value=1), nullable=False),
        "customer_id": pa.Column(pl.String, pa.Check.str_length(min_value=1), nullable=False),
        "meter": pa.Column(pl.String, nullable=False),
        "event_time": pa.Column(pl.Datetime("us", "UTC"), nullable=False),
        "event_date": pa.Column(pl.Date, nullable=False),
        "value": pa.Column(pl.Decimal(38, VALUE_SCALE), [pa.Check.ge(0), pa.Check.le(MAX_VALUE)], nullable=True),
        "properties": pa.Column(pl.String, pa.Check.str_startswith("{"), nullable=False),
    },
    checks=[pa.Check(lambda data: data.lazyframe.select(
        pl.col("event_time").dt.date() == pl.col("event_date")), error="event_date is the UTC date of event_time")],
    strict=False,
    name="usage_events",
)
"""The typed contract of a clean event (what `usage_events` holds), checked with pandera on Polars."""


CLEAN_COLUMNS = ", ".join(CLEAN_EVENT_SCHEMA.columns)
"""The columns `CLEAN_EVENT_SCHEMA` checks, as a SQL select list."""


def empty_clean_frame() -> pl.DataFrame:
    """No rows, the columns and types of `CLEAN_EVENT_SCHEMA`."""
    return pl.DataFrame(schema={name: col.dtype.type for name, col in CLEAN_EVENT_SCHEMA.columns.items()})


def check_clean(frame: pl.DataFrame, meter_names: list[str]) -> pl.DataFrame:
    """Validate clean rows against `CLEAN_EVENT_SCHEMA` and the meter list; raises on a breach.

    A breach is a bug in the SQL rules above (they should have quarantined the row), so it is an
    internal error, not bad input.
    """
    schema = CLEAN_EVENT_SCHEMA.update_column("meter", checks=[pa.Check.isin(meter_names)])
    return schema.validate(frame, lazy=True)
