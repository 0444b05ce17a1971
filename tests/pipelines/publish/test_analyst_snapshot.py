"""The analyst snapshot is published by the warehouse jobs themselves: the real `ingest_job` of the
code location, on its default resources (the autouse fixture points every default path at tmp_path:
METERING_DATA_DIR, METERING_WAREHOUSE, METERING_SNAPSHOT), a real instance and real DuckDB files."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from pipelines.definitions import defs


def _write(raw: Path, name: str, n: int) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    (raw / name).write_text("".join(
        json.dumps({"event_id": f"{name}-{i}", "customer_id": "cust_00001", "meter": "api_calls",
                    "timestamp": f"2026-10-05T{i:02d}:00:00Z"}) + "\n" for i in range(n)))


def _count(path: Path, sql: str) -> int:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql).fetchone()[0]
    finally:
        con.close()


def _run(job: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def(job).execute_in_process(
        instance=instance, partition_key="2026-10-05", raise_on_error=False)


def _ingest_job(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return _run("ingest_job", instance)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_ingest_job_publishes_the_snapshot_after_each_run(isolated_env, instance):
    warehouse, snapshot = isolated_env / "warehouse.duckdb", isolated_env / "snapshot.duckdb"
    _write(isolated_env / "raw", "a.jsonl", 7)
    first = _ingest_job(instance)
    assert first.success
    assert snapshot.exists()
    count = "SELECT count(*) FROM usage_events"
    assert _count(snapshot, count) == _count(warehouse, count) == 7
    # the analyst views come with it (empty: nothing is aggregated yet)
    daily = "SELECT coalesce(sum(events), 0) FROM analytics.daily_usage"
    assert _count(snapshot, daily) == 0

    _write(isolated_env / "raw", "b.jsonl", 3)
    assert _ingest_job(instance).success
    assert _count(snapshot, count) == _count(warehouse, count) == 10
    [published] = instance.fetch_materializations(dg.AssetKey("analyst_snapshot"), limit=1).records
    assert published.asset_materialization.metadata["usage_events"].value == 10

    # another job, the same: the day's aggregates reach the analysts when it ends
    assert _run("usage_aggregation_job", instance).success
    assert _count(snapshot, daily) == 10


def test_a_run_that_fails_its_blocking_check_does_not_publish(isolated_env, instance):
    warehouse, snapshot = isolated_env / "warehouse.duckdb", isolated_env / "snapshot.duckdb"
    _write(isolated_env / "raw", "a.jsonl", 4)
    assert _ingest_job(instance).success
    con = duckdb.connect(str(warehouse))  # a duplicated clean row: unique_event_id fails (blocking)
    con.execute("INSERT INTO usage_events SELECT * FROM usage_events LIMIT 1")
    con.close()
    failed = _ingest_job(instance)
    assert not failed.success
    assert not failed.asset_materializations_for_node("analyst_snapshot")
    assert _count(warehouse, "SELECT count(*) FROM usage_events") == 5
    assert _count(snapshot, "SELECT count(*) FROM usage_events") == 4  # the last good snapshot stays
