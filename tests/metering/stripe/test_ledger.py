"""The ledger state machine on a real DuckDB: whatever sequence of totals and call outcomes, each
window has consecutive revisions with unique keys, at most one open revision, and its newest
revision carries the newest total (unless an attempted open revision awaits Stripe's summary)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering import warehouse
from metering.stripe import ledger

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
WINDOWS = [("a", "api_calls", T0), ("a", "api_calls", T0 + dt.timedelta(days=1)), ("b", "tokens", T0)]


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    with warehouse.open_warehouse(tmp_path_factory.mktemp("ledger") / "l.duckdb") as c:
        yield c


def desired(values: dict[int, Decimal], late: set[int]) -> pl.DataFrame:
    rows = []
    for i, value in values.items():
        customer, meter, start = WINDOWS[i]
        rows.append({"customer_id": customer, "meter": meter, "window_kind": "day", "window_start": start,
                     "window_end": start + dt.timedelta(days=1), "event_date": start.date(), "value": value,
                     "raw_events": 1, "event_name": f"metering_{meter}", "stripe_customer_id": f"cus_{customer}",
                     "late_reason": "too old" if i in late else None})
    return pl.DataFrame(rows).cast(ledger.PLAN_SCHEMA)


def _attempted_open(con, statuses: tuple[str, ...] = ("pending", "sent", "unknown")) -> set[int]:
    """The windows (indexes into WINDOWS) whose newest revision was attempted and is still open."""
    rows = con.execute(
        "SELECT customer_id, meter, window_start FROM stripe_push_ledger "
        "WHERE list_contains(?, status) AND first_attempt_at IS NOT NULL", [list(statuses)]).fetchall()
    return {WINDOWS.index((c, m, s.astimezone(dt.timezone.utc))) for c, m, s in rows}


step = st.tuples(
    st.dictionaries(st.integers(0, 2), st.decimals(0, 1000, places=2).map(Decimal), min_size=1),
    st.sets(st.integers(0, 2), max_size=1),
    st.sampled_from(["acknowledged", "failed", "unknown", "crash"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=6))
def test_ledger_invariants(con, steps) -> None:
    con.execute("DELETE FROM stripe_push_ledger")
    latest_value: dict[int, Decimal] = {}
    for values, late, outcome in steps:
        awaiting_summary = (_attempted_open(con) & late) | _attempted_open(con, ("sent", "unknown"))
        ledger.plan_revisions(con, desired(values, late), T0)
        # an attempted open revision that may have reached Stripe keeps its value until the push has
        # sent it again or read Stripe's summary (those tests are in test_push_faults.py)
        latest_value.update({i: v for i, v in values.items() if i not in awaiting_summary})
        open_rows = ledger.open_rows(con, T0.date(), (T0 + dt.timedelta(days=1)).date(), "day")
        ids = open_rows["identifier"].to_list()
        ledger.mark_sent(con, ids, T0)
        if outcome != "crash":   # a crash leaves them `sent`
            ledger.record_outcomes(con, [{"identifier": i, "status": outcome, "extra_attempts": 0, "last_error": None,
                                          "stripe_request_id": None, "last_http_status": None, "resolved_by": None}
                                         for i in ids], T0)
    rows = warehouse.query_frame(con, "SELECT * FROM stripe_push_ledger")
    assert rows["identifier"].n_unique() == rows.height == rows["idempotency_key"].n_unique()
    for (customer, meter, start), group in rows.group_by("customer_id", "meter", "window_start"):
        revisions = sorted(group["revision"].to_list())
        assert revisions == list(range(1, len(revisions) + 1))
        assert group.filter(pl.col("status").is_in(list(ledger.OPEN_STATUSES))).height <= 1
        newest = group.sort("revision").row(-1, named=True)
        i = WINDOWS.index((customer, meter, start.astimezone(dt.timezone.utc)))
        assert newest["value"] == latest_value[i]
        older_open = group.filter((pl.col("revision") < newest["revision"])
                                  & pl.col("status").is_in(["pending", "sent", "unknown"]))
        assert older_open.is_empty()
        assert newest["event_timestamp"] == newest["window_start"] + dt.timedelta(seconds=newest["revision"])
