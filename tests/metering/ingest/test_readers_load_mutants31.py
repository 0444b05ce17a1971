"""Edges of the readers and the load step that a hand mutation audit (m31g) found untested: the clocks
of an ingest are UTC whatever the host's zone (the validation clock and `ingested_at`), a file that is
gone counts as changed, and a Parquet decimal of 39 digits (the first width DuckDB misreads) is
refused.

Each test names the plausible bug it rules out. Expected values are worked out by hand from
docs/ingest.md and the contract (NOW is 2026-11-01T00:00:00Z; the default event is 5 tokens on
2026-10-05T12:00:00Z, model small).
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from metering.errors import BadInputError
from metering.ingest import ingest_file, load
from tests.metering.ingest.conftest import NOW, event, write_lines
from tests.metering.ingest import test_load_mutants26 as mutants26   # a module: its tests are not collected here


@pytest.fixture
def local_zone(monkeypatch):
    """Set the process's local time zone (TZ) for one test; the host's zone comes back afterwards."""

    def set_zone(name: str) -> None:
        monkeypatch.setenv("TZ", name)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


# --------------------------------------------------------------------------- clocks are UTC


def test_the_default_validation_clock_is_utc_whatever_the_local_zone(tmp_path, con, local_zone):
    """Without `now`, future timestamps are judged against the wall clock in UTC. Under
    TZ=America/Los_Angeles (UTC-7 or -8) an event stamped 10 minutes ago (UTC) is in the past: accepted.
    A naive local `datetime.now()` (7-8 h behind, read as UTC by the session) would put the horizon at
    about now - 6 h, and quarantine that event as future_timestamp."""
    local_zone("America/Los_Angeles")
    stamp = (datetime.now(timezone.utc) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    r = ingest_file(con, write_lines(tmp_path / "f.jsonl", [event("a", timestamp=stamp)]))
    assert (r.rows_accepted, r.rows_quarantined, r.reasons) == (1, 0, {})


def test_ingested_at_is_utc_whatever_the_local_zone(tmp_path, con, local_zone):
    """`ingested_files.ingested_at` (and `quarantined_at`) is the UTC instant of the ingest: under
    TZ=Asia/Tokyo (UTC+9) it still lies between the UTC clock read before and after. A naive local
    `datetime.now()` would be stored 9 hours in the future (the session reads naive times as UTC), and
    the Dagster asset comparing it with its own reports would see every date as unreported."""
    local_zone("Asia/Tokyo")
    mutants26.test_ingested_at_is_when_the_file_was_stored_not_the_validation_clock(tmp_path, con)


# --------------------------------------------------------------------------- files


def test_a_file_that_is_gone_counts_as_changed(tmp_path):
    """`_changed_since` answers whether the file is still the one read: a file removed since (its
    identity can no longer be read) has changed, so its rows are not stored under a manifest entry."""
    path = write_lines(tmp_path / "f.jsonl", [event("a")])
    before = load._identity(path)
    assert not load._changed_since(path, before)
    path.unlink()
    assert load._changed_since(path, before)


# --------------------------------------------------------------------------- readers


def test_a_parquet_decimal_of_39_digits_is_refused_naming_the_column(tmp_path, con):
    """DuckDB reads a decimal wider than 38 digits as a float, and a wrong one: 39 digits is the first width
    refused (38 is read exactly, test_readers_mutants21). A `value` column of decimal(39, 2) holding 0.05 is
    refused naming the file and the column, and nothing is stored."""
    table = pa.table({"event_id": ["a"], "customer_id": ["cust_00001"], "meter": ["tokens"],
                      "timestamp": ["2026-10-05T12:00:00Z"],
                      "value": pa.array([Decimal("0.05")], pa.decimal256(39, 2))})
    pq.write_table(table, tmp_path / "f.parquet")
    with pytest.raises(BadInputError, match=r"f\.parquet: the Parquet schema cannot be read safely: value "
                                            r"\(decimal256\(39, 2\)\) is a decimal wider than 38 digits"):
        ingest_file(con, tmp_path / "f.parquet", now=NOW)
    assert con.execute("SELECT (SELECT count(*) FROM usage_events) + (SELECT count(*) FROM ingested_files)"
                       ).fetchone() == (0,)
