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
    FUTURE_TOLERANCE,
    MAX_JSON_NUMBER_DIGITS,
    MAX_VALUE,
    MIN_TIMESTAMP,
    REASONS,
    VALUE_SCALE,
)
from metering.rules.meters import Meter
from metering.warehouse import sql_string

_RFC3339 = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
_NUMBER = r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"
_NON_FINITE = "['nan', '+nan', '-nan', 'inf', '+inf', '-inf', 'infinity', '+infinity', '-infinity']"
_CONTROL = r"[\x00-\x1f\x7f]"
_NUMBER_KINDS = "('BIGINT', 'UBIGINT', 'DOUBLE', 'DECIMAL', 'VARCHAR')"

CLASSIFIED_COLUMNS = """
    line BIGINT, raw VARCHAR, reason VARCHAR, detail VARCHAR,
    event_id VARCHAR, customer_id VARCHAR, meter VARCHAR, event_time TIMESTAMPTZ, event_date DATE,
    value DECIMAL(38, 12), properties VARCHAR, extra VARCHAR, payload_hash VARCHAR
"""


def _list(values: list[str]) -> str:
    return "[" + ", ".join(sql_string(v) for v in values) + "]::VARCHAR[]"


def _checks(meters: dict[str, Meter], now: datetime) -> list[tuple[str, str, str]]:
    """(reason, condition, detail) in evaluation order; conditions see the columns of `_prepared`."""
    names = sorted(meters)
    need_value = sorted(n for n, m in meters.items() if m.aggregation in ("sum", "max", "last"))
    counted = {n: m.property for n, m in meters.items() if m.aggregation == "unique_count" and m.property}
    horizon = sql_string((now + FUTURE_TOLERANCE).isoformat())
    missing = lambda f, c: (f"{c}_t = 'NULL' OR ({c}_t = 'VARCHAR' AND trim({c}) = '')", f"'{f} is missing or empty'")  # noqa: E731
    wrong_type = lambda f, c: (f"{c}_t <> 'VARCHAR'", f"'{f} must be a string, got ' || lower({c}_t)")  # noqa: E731
    checks: list[tuple[str, str, str]] = [
        ("invalid_utf8", "parse_error = 'invalid_utf8'", "'the row is not valid UTF-8'"),
        ("bad_json", "parse_error = 'bad_json'", "'not a single JSON object'"),
        ("bad_csv_row", "parse_error = 'bad_csv_row'", "'broken quoting or wrong number of fields'"),
    ]
    for field, col in (("event_id", "event_id"), ("customer_id", "customer_id"), ("meter", "meter"),
                       ("timestamp", "ts")):
        checks.append(("missing_field", *missing(field, col)))
    for field in ("event_id", "customer_id", "meter"):
        checks.append(("bad_type", *wrong_type(field, field)))
    checks += [
        ("bad_type", "properties_t NOT IN ('NULL', 'OBJECT') OR (properties_t = 'OBJECT' AND pm IS NULL)",
         "'properties must be an object of string values'"),
        ("bad_type", "NOT list_bool_and(list_transform(map_values(pm), v -> json_type(v) = 'VARCHAR'))",
         "'every property value must be a string'"),
        ("control_characters",
         f"regexp_matches(event_id || customer_id || meter, '{_CONTROL}') OR (contains(props, '\\') AND "
         f"regexp_matches(array_to_string(list_transform(map_entries(pm), e -> e.key || (e.value->>'$')), ''),"
         f" '{_CONTROL}'))",
         "'event_id, customer_id, meter or a property contains a control character'"),
        ("unknown_meter", f"NOT list_contains({_list(names)}, meter)",
         "'meter ' || meter || ' is not defined in meters.yaml'"),
        ("bad_timestamp", f"t IS NULL OR t < TIMESTAMPTZ {sql_string(MIN_TIMESTAMP)}",
         "'timestamp ' || coalesce(ts, '') || ' is not RFC 3339 with an offset or epoch milliseconds after 2000'"),
        ("future_timestamp", f"t > TIMESTAMPTZ {horizon}",
         "'timestamp ' || t::VARCHAR || ' is in the future (ingested at ' || " + sql_string(now.isoformat())
         + " || ')'"),
        ("missing_field", f"value_t = 'NULL' AND list_contains({_list(need_value)}, meter)",
         "'value is required for meter ' || meter"),
    ]
    for meter, prop in sorted(counted.items()):
        checks.append(("missing_field",
                       f"meter = {sql_string(meter)} AND coalesce(trim(pm[{sql_string(prop)}]->>'$'), '') = ''",
                       sql_string(f"properties.{prop} is required for meter {meter}")))
    checks += [
        ("non_finite_value", f"list_contains({_NON_FINITE}, lower(vtext))", "'value ' || vtext || ' is not finite'"),
        ("bad_type", f"value_t <> 'NULL' AND (value_t NOT IN {_NUMBER_KINDS} OR NOT regexp_full_match(vtext, '{_NUMBER}'))",
         "'value must be a decimal number, got ' || coalesce(vtext, lower(value_t))"),
        ("value_too_large", f"vtext IS NOT NULL AND (v12 IS NULL OR abs(v12) > {MAX_VALUE})",
         f"'value ' || vtext || ' exceeds {MAX_VALUE}'"),
        ("negative_value", "v12 < 0", "'value ' || vtext || ' is negative'"),
        ("value_too_precise",
         f"(value_t = 'DOUBLE' AND length(ltrim(regexp_replace(split_part(lower(vtext), 'e', 1), '[^0-9]', '', 'g'), '0'))"
         f" > {MAX_JSON_NUMBER_DIGITS}) OR (NOT contains(lower(vtext), 'e') AND "
         f"length(rtrim(split_part(vtext, '.', 2), '0')) > {VALUE_SCALE}) OR (contains(lower(vtext), 'e') AND "
         f"try_cast(vtext AS DECIMAL(38, 18)) IS DISTINCT FROM v12::DECIMAL(38, 18))",
         f"'value ' || vtext || ' has more precision than can be stored exactly ({VALUE_SCALE} decimal places)'"),
    ]
    assert {c[0] for c in checks} <= set(REASONS)
    return checks


def classify_select(source_sql: str, meters: dict[str, Meter], now: datetime) -> str:
    """SQL turning staged rows (see `readers.STAGE_COLUMNS`) into `CLASSIFIED_COLUMNS`."""
    checks = _checks(meters, now)
    reason = "CASE " + " ".join(f"WHEN coalesce({c}, false) THEN '{r}'" for r, c, _ in checks) + " END"
    detail = "CASE " + " ".join(f"WHEN coalesce({c}, false) THEN {d}" for _, c, d in checks) + " END"
    return f"""
WITH staged AS ({source_sql}),
prepared AS (
    SELECT *,
        CASE WHEN properties_t = 'OBJECT' THEN try(json_transform(properties, '"MAP(VARCHAR, JSON)"')) END AS pm,
        CASE WHEN value_t IN {_NUMBER_KINDS} THEN trim(value) END AS vtext,
        CASE WHEN ts_native IS NOT NULL THEN ts_native
             WHEN ts_t IN ('BIGINT', 'UBIGINT') OR (ts_t = 'VARCHAR' AND regexp_full_match(ts, '\\d{{1,15}}'))
                THEN epoch_ms(try_cast(ts AS BIGINT))::TIMESTAMPTZ
             WHEN ts_t = 'VARCHAR' AND regexp_full_match(ts, '{_RFC3339}') THEN try_cast(ts AS TIMESTAMPTZ)
        END AS t
    FROM staged
), typed AS (
    SELECT *,
        try_cast(vtext AS DECIMAL(38, {VALUE_SCALE})) AS v12,
        CASE WHEN pm IS NULL THEN '{{}}' ELSE '{{' || array_to_string(list_transform(list_sort(map_entries(pm)),
             e -> to_json(e.key) || ':' || e.value), ',') || '}}' END AS props
    FROM prepared
), judged AS (
    SELECT *, {reason} AS reason FROM typed
)
SELECT line, raw, reason,
       CASE WHEN reason IS NOT NULL THEN {detail} END AS detail,
       event_id, customer_id, meter,
       CASE WHEN reason IS NULL THEN t END AS event_time,
       CASE WHEN reason IS NULL THEN t::DATE END AS event_date,
       CASE WHEN reason IS NULL THEN v12 END AS value,
       CASE WHEN reason IS NULL THEN props END AS properties,
       extra,
       CASE WHEN reason IS NULL THEN md5(customer_id || chr(1) || meter || chr(1) || epoch_us(t)::VARCHAR
            || chr(1) || coalesce(v12::VARCHAR, '') || chr(1) || props) END AS payload_hash
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
        "payload_hash": pa.Column(pl.String, pa.Check.str_length(32, 32), nullable=False),
    },
    checks=[pa.Check(lambda data: data.lazyframe.select(
        pl.col("event_time").dt.date() == pl.col("event_date")), error="event_date is the UTC date of event_time")],
    strict=False,
    name="usage_events",
)
"""The typed contract of a clean event (what `usage_events` holds), checked with pandera on Polars."""


def check_clean(frame: pl.DataFrame, meter_names: list[str]) -> pl.DataFrame:
    """Validate clean rows against `CLEAN_EVENT_SCHEMA` and the meter list; raises on a breach.

    A breach is a bug in the SQL rules above (they should have quarantined the row), so it is an
    internal error, not bad input.
    """
    schema = CLEAN_EVENT_SCHEMA.update_column("meter", checks=[pa.Check.isin(meter_names)])
    return schema.validate(frame, lazy=True)
