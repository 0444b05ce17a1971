"""Fixtures for the ingest Dagster layer: raw files under tmp_path, one real Dagster instance per test."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from pipelines.defs.ingest.assets import usage_events
from pipelines.definitions import defs as location_defs
from pipelines.defs.publish.assets import analyst_snapshot
from pipelines.defs.ingest.sensors import RUN_KEY_TAG, SENSOR_NAME, SENSOR_NAME_TAG
from pipelines.resources import ProjectPaths, WarehouseResource

PROJECT_ROOT = Path(__file__).resolve().parents[3]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@dataclass
class Tick:
    """One sensor evaluation: its result and what it logged."""

    data: object
    logs: list[logging.LogRecord] = field(default_factory=list)

    @property
    def requests(self) -> list[dg.RunRequest]:
        return list(self.data.run_requests or [])

    @property
    def cursor(self) -> str:
        return self.data.cursor

    def logged(self, level: int) -> str:
        return "\n".join(r.getMessage() for r in self.logs if r.levelno == level)


@dataclass
class IngestWorld:
    tmp_path: Path
    instance: dg.DagsterInstance

    @property
    def raw(self) -> Path:
        return self.tmp_path / "raw"

    @property
    def warehouse(self) -> Path:
        return self.tmp_path / "w.duckdb"

    @property
    def snapshot(self) -> Path:
        return self.tmp_path / "snapshot.duckdb"

    def resources(self, warehouse: Path | None = None, snapshot: Path | None = None) -> dict:
        return {"warehouse": WarehouseResource(path=str(warehouse or self.warehouse),
                                               snapshot=str(snapshot or self.snapshot)),
                "paths": ProjectPaths(raw_dir=str(self.raw), rules_dir=str(PROJECT_ROOT / "rating_rules"))}

    def write_events(self, name: str, timestamps: list[str]) -> Path:
        """A JSON lines file of `api_calls` events (a count meter), one per timestamp."""
        path = self.raw / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"event_id": f"{name}-{i}", "customer_id": "cust_00001",
                                            "meter": "api_calls", "timestamp": ts}) + "\n"
                                for i, ts in enumerate(timestamps)))
        return path

    def tick(self, cursor: str | None = None) -> Tick:
        context = dg.build_sensor_context(instance=self.instance, cursor=cursor, definitions=location_defs,
                                          sensor_name=SENSOR_NAME, resources=self.resources())
        records = _Records()
        context.log.addHandler(records)
        return Tick(location_defs.resolve_sensor_def(SENSOR_NAME).evaluate_tick(context), records.records)

    def settle(self, cursor: str | None = None) -> Tick:
        """Two ticks: new files are requested once a second tick sees them unchanged."""
        first = self.tick(cursor)
        assert first.requests == [], "a file is requested only once it has stopped changing"
        return self.tick(first.cursor)

    def run(self, request: dg.RunRequest, warehouse: Path | None = None,
            snapshot: Path | None = None) -> dg.ExecuteInProcessResult:
        """Execute a sensor's request as the daemon would launch it: the assets of `ingest_job` (the
        sensor's target), run key and sensor name tagged. Also what Dagster's run retries launch (the
        parent's tags)."""
        return dg.materialize(
            [usage_events, analyst_snapshot], partition_key=request.partition_key, run_config=request.run_config,
            tags={**request.tags, RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: SENSOR_NAME},
            resources=self.resources(warehouse, snapshot), instance=self.instance, raise_on_error=False)

    def latest(self, partition: str) -> dict | None:
        """Metadata of the newest materialization of usage_events for `partition`, as plain values."""
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("usage_events"), asset_partitions=[partition]), limit=1
        ).records
        if not records:
            return None
        return {k: v.value for k, v in records[0].asset_materialization.metadata.items()}

    def materialized_partitions(self) -> set[str]:
        return set(self.instance.get_materialized_partitions(dg.AssetKey("usage_events")))

    def write_usage(self, name: str, events: list[tuple[str, int]]) -> Path:
        """A JSON lines file of `tokens` events (a sum meter), one per (event_id, value), all on 2026-10-05."""
        path = self.raw / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"event_id": event_id, "customer_id": "cust_00001", "meter": "tokens",
                                            "timestamp": "2026-10-05T12:00:00Z", "value": str(value),
                                            "properties": {"model": "m"}}) + "\n"
                                for event_id, value in events))
        return path

    def billed(self, event_id: str) -> tuple[str | None, int]:
        """(the clean value of `event_id`, conflicting versions quarantined)."""
        con = duckdb.connect(str(self.warehouse), read_only=True)
        try:
            clean = con.execute("SELECT value::INTEGER::VARCHAR FROM usage_events WHERE event_id = ?",
                                [event_id]).fetchall()
            conflicts = con.execute("SELECT count(*) FROM usage_quarantine WHERE event_id = ? "
                                    "AND reason = 'conflicting_duplicate'", [event_id]).fetchone()[0]
        finally:
            con.close()
        assert len(clean) <= 1
        return (clean[0][0] if clean else None), conflicts

    def clean_rows(self) -> dict[str, int]:
        con = duckdb.connect(str(self.warehouse), read_only=True)
        try:
            return {str(d): n for d, n in con.execute(
                "SELECT event_date, count(*) FROM usage_events GROUP BY 1").fetchall()}
        finally:
            con.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[IngestWorld]:
    with dg.instance_for_test() as instance:
        yield IngestWorld(tmp_path, instance)


@pytest.fixture
def retrying_world(tmp_path: Path) -> Iterator[IngestWorld]:
    """A world whose instance has Dagster's run retries on, as the repo's dagster.yaml does."""
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True, "max_retries": 1}}) as instance:
        yield IngestWorld(tmp_path, instance)
