"""The ingest Dagster layer: the asset with its blocking checks, and the file sensor's cursor."""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path

import dagster as dg

from metering.ingest.generate import GenerateConfig, generate
from pipelines.defs.ingest.assets import usage_events
from pipelines.defs.ingest.sensors import raw_usage_files_sensor
from pipelines.resources import ProjectPaths, WarehouseResource

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def _resources(tmp_path: Path) -> dict:
    return {"warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")),
            "paths": ProjectPaths(raw_dir=str(tmp_path / "raw"), rules_dir=str(PROJECT_ROOT / "rating_rules"))}


def _generate(tmp_path: Path, days: int = 3, seed: int = 1) -> list[Path]:
    cfg = GenerateConfig(seed=seed, customers=10, events=300, start=date(2026, 10, 4),
                         end=date(2026, 10, 3 + days), late_share=0.02)
    return generate(cfg, tmp_path / "raw").files


def test_materialize_a_partition_ingests_new_files_and_passes_checks(tmp_path):
    files = _generate(tmp_path)
    with dg.instance_for_test() as instance:
        result = dg.materialize([usage_events], partition_key="2026-10-05", resources=_resources(tmp_path),
                                instance=instance)
        assert result.success
        meta = result.asset_materializations_for_node("usage_events")[0].metadata
        assert meta["files_ingested"].value == len(files) == 3
        assert meta["rows_accepted"].value == 300
        assert meta["rows_read"].value == (meta["rows_accepted"].value + meta["rows_quarantined"].value
                                           + meta["duplicates_dropped"].value)
        assert meta["event_dates_touched"].value == ["2026-10-04", "2026-10-05", "2026-10-06"]
        checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
        assert checks == {"conservation": True, "unique_event_id": True, "readable_files": True}
        import duckdb
        con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
        expected = con.execute("SELECT count(*) FROM usage_events WHERE event_date = '2026-10-05'").fetchone()[0]
        con.close()
        assert meta["dagster/row_count"].value == expected > 0
        # again: nothing new, same state
        again = dg.materialize([usage_events], partition_key="2026-10-05", resources=_resources(tmp_path),
                               instance=instance)
        meta2 = again.asset_materializations_for_node("usage_events")[0].metadata
        assert (meta2["files_ingested"].value, meta2["files_skipped"].value) == (0, 3)
        assert meta2["dagster/row_count"].value == expected


def test_run_config_names_the_files(tmp_path):
    files = _generate(tmp_path)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [usage_events], resources=_resources(tmp_path), instance=instance,
            run_config={"ops": {"usage_events": {"config": {"files": [str(files[0])]}}}},
            tags={"dagster/asset_partition_range_start": "2026-10-04",
                  "dagster/asset_partition_range_end": "2026-10-06"})
        meta = result.asset_materializations_for_node("usage_events")[0].metadata
        assert meta["files_ingested"].value == 1


def test_sensor_cursor_moves_and_second_tick_skips(tmp_path):
    files = _generate(tmp_path)
    resources = {"paths": _resources(tmp_path)["paths"]}
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources=resources)
        first = raw_usage_files_sensor.evaluate_tick(ctx)
        assert len(first.run_requests) == 1
        request = first.run_requests[0]
        assert request.run_config["ops"]["usage_events"]["config"]["files"] == [str(f) for f in files]
        assert (request.tags["dagster/asset_partition_range_start"],
                request.tags["dagster/asset_partition_range_end"]) == ("2026-10-04", "2026-10-06")
        cursor = json.loads(first.cursor)
        assert sorted(cursor) == sorted(str(f) for f in files)

        second = raw_usage_files_sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, resources=resources, cursor=first.cursor))
        assert second.run_requests == [] and second.skip_message.startswith("no new raw files")

        # same content, new mtime: still nothing new
        os.utime(files[0], ns=(1, 1))
        touched = raw_usage_files_sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, resources=resources, cursor=first.cursor))
        assert touched.run_requests == []

        # a new file: one new run, a different run key, only that file
        extra = _generate(tmp_path / "more", days=1, seed=9)[0]
        new_path = tmp_path / "raw" / "late-arrival.jsonl"
        assert extra.suffix == ".jsonl"
        new_path.write_bytes(extra.read_bytes())
        third = raw_usage_files_sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, resources=resources, cursor=touched.cursor))
        assert [r.run_config["ops"]["usage_events"]["config"]["files"] for r in third.run_requests] == [[str(new_path)]]
        assert third.run_requests[0].run_key != request.run_key


def test_sensor_skips_when_the_folder_is_missing(tmp_path):
    resources = {"paths": ProjectPaths(raw_dir=str(tmp_path / "nothing"))}
    with dg.instance_for_test() as instance:
        tick = raw_usage_files_sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources))
        assert tick.run_requests == []


def test_blocking_checks_fail_on_a_tampered_warehouse(tmp_path):
    import duckdb

    _generate(tmp_path, days=1)
    with dg.instance_for_test() as instance:
        assert dg.materialize([usage_events], partition_key="2026-10-04", resources=_resources(tmp_path),
                              instance=instance).success
        con = duckdb.connect(str(tmp_path / "w.duckdb"))
        row = con.execute("SELECT event_id, customer_id, meter, event_time, event_date, value, properties, extra, "
                          "file_id, source_line FROM usage_events "
                          "LIMIT 1").fetchone()
        con.execute("INSERT INTO usage_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", list(row))
        con.close()
        result = dg.materialize([usage_events], partition_key="2026-10-04", resources=_resources(tmp_path),
                                instance=instance, raise_on_error=False)
        assert not result.success
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert not checks["conservation"].passed and not checks["unique_event_id"].passed
        assert checks["unique_event_id"].metadata["duplicate_event_ids"].value == 1
        assert checks["conservation"].metadata["files_with_count_mismatch"].value == 1


def test_an_unreadable_file_is_named_and_the_others_still_load(tmp_path):
    files = _generate(tmp_path, days=2)
    bad = tmp_path / "raw" / "usage-0000-broken.jsonl.gz"  # sorts first
    bad.write_bytes(files[1].read_bytes()[:100] if files[1].name.endswith(".gz") else b"\x1f\x8b\x08junk")
    with dg.instance_for_test() as instance:
        result = dg.materialize([usage_events], partition_key="2026-10-04", resources=_resources(tmp_path),
                                instance=instance, raise_on_error=False)
        meta = result.asset_materializations_for_node("usage_events")[0].metadata
        assert meta["files_ingested"].value == 2
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert checks["conservation"].passed and checks["unique_event_id"].passed
        assert not checks["readable_files"].passed
        assert list(checks["readable_files"].metadata["unreadable_files"].value) == [str(bad)]
