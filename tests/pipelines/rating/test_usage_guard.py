"""usage_aggregates refuses a warehouse whose usage_events break the ingest invariants (conservation,
event_id uniqueness), checked in the warehouse, so the hourly job's Stripe push after it never runs.

`usage_events`' blocking checks only stop their own run: the hourly job does not ingest, so before this
guard a row added by SQL was aggregated and pushed. Real ingestion, real DuckDB, real Dagster instance;
the job is the location's own `hourly_usage_job` with the location's resources (pointed at tmp_path by
tests/conftest.py)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest

from metering import warehouse
from metering.ingest import ingest_file
from metering.rules.meters import load_meters
from pipelines.definitions import defs as location_defs
from pipelines.defs.rating.assets import usage_aggregates
from pipelines.resources import ProjectPaths, WarehouseResource

PROJECT_ROOT = Path(__file__).resolve().parents[3]
DAY = "2026-10-05"
EVENTS = 6

BREAKS = {
    # a retried INSERT: the same event twice, its file's stored rows no longer its manifest's
    "duplicate_event_id": ("INSERT INTO usage_events SELECT * FROM usage_events LIMIT 1",
                           ["unique_event_id", "event_id uniqueness", "duplicate_event_ids=1", "conservation"]),
    # a row lost outside ingestion: no duplicate, but the file no longer adds up
    "row_deleted": ("DELETE FROM usage_events WHERE event_id = 'usage-0'",
                    ["conservation", "rows read = accepted + quarantined + duplicates dropped",
                     "files_with_count_mismatch=1"]),
}


@pytest.fixture
def ingested(tmp_path: Path, isolated_env: Path) -> Path:
    """The location's warehouse (METERING_WAREHOUSE) with one file of EVENTS api_calls events on DAY,
    ingested as the sensor's runs do (manifest entry included)."""
    raw = tmp_path / "usage.jsonl"
    raw.write_text("".join(json.dumps({"event_id": f"usage-{i}", "customer_id": "cust_00001", "meter": "api_calls",
                                       "timestamp": f"{DAY}T{10 + i:02d}:00:00Z"}) + "\n" for i in range(EVENTS)))
    db = isolated_env / "warehouse.duckdb"
    with warehouse.open_warehouse(db) as con:
        result = ingest_file(con, raw, meters=load_meters(PROJECT_ROOT / "rating_rules"),
                             now=dt.datetime(2026, 10, 6, tzinfo=dt.UTC))
    assert result.rows_accepted == EVENTS
    return db


def _sql(db: Path, sql: str) -> None:
    with warehouse.open_warehouse(db) as con:
        con.execute(sql)


@pytest.mark.parametrize("broken", sorted(BREAKS))
def test_hourly_job_refuses_to_aggregate_and_push_unsound_events(ingested: Path, broken: str):
    sql, named = BREAKS[broken]
    _sql(ingested, sql)
    job = location_defs.resolve_job_def("hourly_usage_job")
    with dg.instance_for_test() as instance:
        result = job.execute_in_process(partition_key=DAY, instance=instance, raise_on_error=False)
        assert not result.success
        assert result.is_node_failed("usage_aggregates")
        message = result.failure_data_for_node("usage_aggregates").error.message
        for words in [*named, "nothing is aggregated", "then run again"]:
            assert words in message, (words, message)
        assert result.asset_materializations_for_node("usage_aggregates") == []
        # the push (and the analyst snapshot) never ran: nothing was sent to Stripe
        assert not result.is_node_success("stripe_usage_pushes")
        assert result.asset_materializations_for_node("stripe_usage_pushes") == []
        assert instance.get_latest_materialization_event(dg.AssetKey("stripe_usage_pushes")) is None
    with warehouse.open_warehouse(ingested, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM usage_aggregates").fetchone() == (0,)


def test_a_clean_warehouse_aggregates_as_before(ingested: Path):
    resources = {"warehouse": WarehouseResource(path=str(ingested)),
                 "paths": ProjectPaths(rules_dir=str(PROJECT_ROOT / "rating_rules"))}
    with dg.instance_for_test() as instance:
        result = dg.materialize([usage_aggregates], partition_key=DAY, resources=resources, instance=instance)
    assert result.success
    [materialization] = result.asset_materializations_for_node("usage_aggregates")
    assert materialization.metadata["events"].value == EVENTS
    with warehouse.open_warehouse(ingested, read_only=True) as con:
        assert con.execute("SELECT sum(event_count) FROM usage_aggregates").fetchone() == (EVENTS,)
