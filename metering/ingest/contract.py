"""The raw event contract: fields, limits and the closed set of quarantine reasons.

One raw event per row (a JSON lines line, a CSV data line, a Parquet row):

| field | type | rule |
| --- | --- | --- |
| `event_id` | string | required, non-empty; unique per event: a second row with the same id is a duplicate |
| `customer_id` | string | required, non-empty |
| `meter` | string | required; must name a meter in `rating_rules/meters.yaml` |
| `timestamp` | string or integer | RFC 3339 with an offset (`2026-10-05T12:00:00Z`, `...+02:00`) or integer epoch milliseconds |
| `value` | number or decimal string | optional for `count` meters, required otherwise; finite, >= 0, <= `MAX_VALUE`, at most 12 decimal places |
| `properties` | object of string -> string | optional (dimensions such as `region` or `model`) |

Any other field is kept in `usage_events.extra` (as JSON values). Text fields must not contain control
characters (U+0000-U+001F, U+007F). A JSON number with more than 15 significant digits cannot be
read exactly (JSON parsers go through a binary float): send such values as strings. A Parquet float
column's value is the float itself (its shortest decimal), without that digit limit. NaN and
infinities are no JSON values: in a field kept in `extra` they make the row bad_json.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

KNOWN_FIELDS: tuple[str, ...] = ("event_id", "customer_id", "meter", "timestamp", "value", "properties")
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"
"""A regex class of the characters no text field (nor a column name) may hold: U+0000-U+001F, U+007F."""

MAX_VALUE = Decimal("1000000000000000")  # 1e15: anything larger is a unit mistake, not usage
VALUE_SCALE = 12  # decimal places stored (DECIMAL(38, 12))
MAX_JSON_NUMBER_DIGITS = 15  # significant digits a JSON number keeps through a binary float
FUTURE_TOLERANCE = timedelta(hours=1)  # clock skew allowed for event timestamps
MIN_TIMESTAMP = "2000-01-01T00:00:00Z"  # earlier timestamps are treated as unparsable

# The closed set of quarantine reasons, in the order the checks run (the first failing check wins).
REASONS: dict[str, str] = {
    "invalid_utf8": "the row's bytes are not valid UTF-8 (raw bytes kept, escaped as \\xNN)",
    "bad_json": "a JSON lines line that is not one JSON object (syntax error, trailing text, duplicate keys, an array); "
    "in any format, NaN or an infinity in a field kept in extra (JSON has neither)",
    "bad_csv_row": "a CSV line with broken quoting or a number of fields different from the header's",
    "missing_field": "a required field is absent, null or empty (event_id, customer_id, meter, timestamp; "
    "value for sum, max and last meters; the counted property for unique_count meters)",
    "bad_type": "a field has the wrong type (ids not strings, properties not an object of strings, "
    "value not a decimal number)",
    "control_characters": "event_id, customer_id, meter or a property contains a control character",
    "unknown_meter": "meter does not name a meter defined in rating_rules/meters.yaml",
    "bad_timestamp": "timestamp is neither RFC 3339 with an offset nor integer epoch milliseconds, "
    "or is before 2000-01-01",
    "future_timestamp": "timestamp is more than 1 hour after the time of ingestion",
    "non_finite_value": "value is NaN or infinite",
    "value_too_large": "value's magnitude exceeds 1e15",
    "negative_value": "value is negative",
    "value_too_precise": "value has more than 12 decimal places, or is a JSON number (not a Parquet float) with "
    "more than 15 significant digits (which JSON cannot carry exactly: send it as a string)",
    "conflicting_duplicate": "an event with the same event_id but a different payload is already clean "
    "(stored earlier, or earlier in the same file)",
}

PAYLOAD_FIELDS = ("customer_id", "meter", "timestamp (as a UTC instant)", "value (as a number)", "properties")
"""What makes two rows with the same event_id the same event (an exact duplicate). `extra` is not part
of it: a retry that adds a transport field is still the same event."""
