"""The ingest asset: what a run ingests, its blocking checks, and which partitions it reports as changed."""

from __future__ import annotations

import logging
from decimal import Decimal
from datetime import date
from pathlib import Path

import dagster as dg
import duckdb

from metering.ingest import ingest_file
from metering.ingest.generate import GenerateConfig, GenerateSummary, generate
from metering.rules.meters import load_meters
from metering.warehouse import open_warehouse
from pipelines.defs.ingest.assets import usage_events

PROJECT_ROOT = Path(__file__).resolve().parents[3]

def _meta(result: dg.ExecuteInProcessResult, partition: str) -> dict:
    """The run's own materialization of `partition` (a run also reports other dates it touched)."""
    [event] = [m for m in result.asset_materializations_for_node("usage_events") if m.partition == partition]
    return event.metadata


def _generate(world, days: int = 3, seed: int = 1) -> list[Path]:
    return _generated(world, days, seed).files


def _generated(world, days: int = 3, seed: int = 1) -> GenerateSummary:
    cfg = GenerateConfig(seed=seed, customers=10, events=300, start=date(2026, 10, 4),
                         end=date(2026, 10, 3 + days), late_share=0.02)
    return generate(cfg, world.raw)


def _materialize(world, partition: str, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize([usage_events], partition_key=partition, resources=world.resources(),
                          instance=world.instance, **kwargs)


def test_materialize_a_partition_ingests_new_files_and_passes_checks(world):
    generated = _generated(world)
    files = generated.files
    result = _materialize(world, "2026-10-05")
    assert result.success
    meta = _meta(result, "2026-10-05")
    assert meta["files_ingested"].value == len(files) == 3
    assert meta["rows_accepted"].value == 300
    assert meta["rows_read"].value == (meta["rows_accepted"].value + meta["rows_quarantined"].value
                                       + meta["duplicates_dropped"].value)
    assert meta["event_dates_touched"].value == ["2026-10-04", "2026-10-05", "2026-10-06"]
    read, accepted, quarantined, dropped = (Decimal(meta[k].value) for k in
                                            ("value_read", "value_accepted", "value_quarantined", "value_dropped"))
    assert read == accepted + quarantined + dropped and accepted > 0
    assert accepted == sum(generated.clean_values.values())  # the generator's own figure
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"conservation": True, "unique_event_id": True, "readable_files": True}
    expected = world.clean_rows()["2026-10-05"]
    assert meta["dagster/row_count"].value == expected > 0
    # again: nothing new, same state
    meta2 = _meta(_materialize(world, "2026-10-05"), "2026-10-05")
    assert (meta2["files_ingested"].value, meta2["files_skipped"].value) == (0, 3)
    assert meta2["dagster/row_count"].value == expected


def test_run_config_names_the_files(world):
    files = _generate(world)
    result = dg.materialize(
        [usage_events], resources=world.resources(), instance=world.instance,
        run_config={"ops": {"usage_events": {"config": {"files": [str(files[0])]}}}},
        tags={"dagster/asset_partition_range_start": "2026-10-04",
              "dagster/asset_partition_range_end": "2026-10-06"})
    assert _meta(result, "2026-10-04")["files_ingested"].value == 1


def test_as_of_is_the_ingestion_time_future_timestamps_are_judged_by(world):
    """Not the wall clock: a run (or its retry) given the same as_of classifies the same rows alike."""
    path = world.write_events("a.jsonl", ["2026-10-05T08:59:00Z", "2026-10-05T09:01:00Z"])

    def run(as_of: str) -> dg.ExecuteInProcessResult:
        return dg.materialize([usage_events], partition_key="2026-10-05", resources=world.resources(),
                              instance=world.instance, raise_on_error=False,
                              run_config={"ops": {"usage_events": {"config": {"files": [str(path)],
                                                                              "as_of": as_of}}}})

    failed = run("2026-10-05")  # no offset: refused, nothing ingested
    assert not failed.success
    [failure] = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "config as_of: '2026-10-05' is not an ISO 8601 time with an offset" in str(failure.event_specific_data)
    assert not world.warehouse.exists()  # refused before the warehouse was opened

    result = run("2026-10-05T10:00:00+02:00")  # 08:00 UTC: an hour's tolerance reaches 09:00
    assert result.success
    meta = _meta(result, "2026-10-05")
    assert meta["as_of"].value == "2026-10-05T08:00:00+00:00"
    assert (meta["rows_accepted"].value, meta["rows_quarantined"].value) == (1, 1)
    con = duckdb.connect(str(world.warehouse), read_only=True)
    try:
        assert con.execute("SELECT event_id, reason FROM usage_quarantine").fetchall() == [
            ("a.jsonl-1", "future_timestamp")]
    finally:
        con.close()


def test_blocking_checks_fail_on_a_tampered_warehouse(world):
    _generate(world, days=1)
    assert _materialize(world, "2026-10-04").success
    con = duckdb.connect(str(world.warehouse))
    row = con.execute("SELECT event_id, customer_id, meter, event_time, event_date, value, properties, extra, "
                      "file_id, source_line FROM usage_events LIMIT 1").fetchone()
    con.execute("INSERT INTO usage_events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", list(row))
    con.close()
    result = _materialize(world, "2026-10-04", raise_on_error=False)
    assert not result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["conservation"].passed and not checks["unique_event_id"].passed
    assert checks["unique_event_id"].metadata["duplicate_event_ids"].value == 1
    assert checks["conservation"].metadata["files_with_count_mismatch"].value == 1


def test_an_unreadable_file_is_named_and_the_others_still_load(world):
    files = _generate(world, days=2)
    bad = world.raw / "usage-0000-broken.jsonl.gz"  # sorts first
    bad.write_bytes(files[1].read_bytes()[:100] if files[1].name.endswith(".gz") else b"\x1f\x8b\x08junk")
    result = _materialize(world, "2026-10-04", raise_on_error=False)
    assert _meta(result, "2026-10-04")["files_ingested"].value == 2
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["conservation"].passed and checks["unique_event_id"].passed
    assert not checks["readable_files"].passed
    assert list(checks["readable_files"].metadata["unreadable_files"].value) == [str(bad)]


# One file: one event on 2026-10-03, five on 2026-10-05 (one written with a +02:00 offset that is
# still 10-05 in UTC), none on 10-04.
LATE_AND_CURRENT = ["2026-10-03T12:00:00Z", *[f"2026-10-05T1{i}:00:00Z" for i in range(4)],
                    "2026-10-06T01:00:00+02:00"]


def test_a_run_reports_every_date_it_touched_each_with_its_own_rows(world):
    # What the CLI and the hourly schedule do: one partition, no files named.
    world.write_events("f.jsonl", LATE_AND_CURRENT)
    result = _materialize(world, "2026-10-05")
    assert result.success
    assert world.clean_rows() == {"2026-10-03": 1, "2026-10-05": 5}
    assert world.materialized_partitions() == {"2026-10-03", "2026-10-05"}
    assert world.latest("2026-10-05")["dagster/row_count"] == 5
    late = world.latest("2026-10-03")
    assert late["dagster/row_count"] == 1
    assert late["source_files"] == [str(world.raw / "f.jsonl")]
    meta = _meta(result, "2026-10-05")
    assert meta["event_dates_touched"].value == ["2026-10-03", "2026-10-05"]
    assert meta["event_dates_outside_run"].value == ["2026-10-03"]

    # Nothing new: the run's own partition is materialized again, no other date is.
    again = _materialize(world, "2026-10-05")
    assert [m.partition for m in again.asset_materializations_for_node("usage_events")] == ["2026-10-05"]


def test_a_range_run_gives_each_partition_the_rows_of_its_own_date(world):
    world.write_events("f.jsonl", LATE_AND_CURRENT)
    result = dg.materialize([usage_events], resources=world.resources(), instance=world.instance,
                            tags={"dagster/asset_partition_range_start": "2026-10-02",
                                  "dagster/asset_partition_range_end": "2026-10-05"})
    assert result.success
    counts = {m.partition: m.metadata["dagster/row_count"].value
              for m in result.asset_materializations_for_node("usage_events")}
    assert counts == {"2026-10-02": 0, "2026-10-03": 1, "2026-10-04": 0, "2026-10-05": 5}


def test_dates_that_are_not_partitions_are_logged_not_materialized(world):
    world.write_events("f.jsonl", ["2025-12-31T23:00:00Z", "2026-10-05T10:00:00Z"])  # the first: before 2026-01-01
    result = _materialize(world, "2026-10-05")
    assert result.success
    assert world.clean_rows() == {"2025-12-31": 1, "2026-10-05": 1}
    assert world.materialized_partitions() == {"2026-10-05"}
    assert _meta(result, "2026-10-05")["event_dates_without_partition"].value == ["2025-12-31"]
    warnings = [e.user_message for e in world.instance.all_logs(result.run_id)
                if e.level == logging.WARNING and not e.is_dagster_event]
    assert any("2025-12-31" in w for w in warnings)
    # a later run over the whole folder skips the file and does not warn about that date again
    again = _materialize(world, "2026-10-06")
    meta = _meta(again, "2026-10-06")
    assert meta["files_skipped"].value == 1 and meta["event_dates_without_partition"].value == []
    assert meta["event_dates_of_skipped_files"].value == {}
    assert not [e for e in world.instance.all_logs(again.run_id)
                if e.level == logging.WARNING and not e.is_dagster_event and "2025-12-31" in e.user_message]


def test_the_retry_of_a_run_killed_after_a_file_committed_reports_that_files_dates(world, tmp_path):
    late = world.write_events("a_late.jsonl", [f"2026-10-03T12:{i:02d}:00Z" for i in range(10)])
    big = world.write_events("b_big.jsonl", [f"2026-10-06T{h:02d}:00:00Z" for h in range(24)])
    config = {"ops": {"usage_events": {"config": {"files": [str(late), str(big)]}}}}

    def run(instance: dg.DagsterInstance, warehouse: Path) -> dg.ExecuteInProcessResult:
        return dg.materialize([usage_events], partition_key="2026-10-06", run_config=config, instance=instance,
                              resources=world.resources(warehouse))

    with dg.instance_for_test() as golden:  # fault-free: one run ingests both
        assert run(golden, tmp_path / "golden.duckdb").success
        fault_free = set(golden.get_materialized_partitions(dg.AssetKey("usage_events")))
    assert fault_free == {"2026-10-03", "2026-10-06"}

    # The run killed after a_late.jsonl committed left exactly this behind: its rows and manifest entry
    # in the warehouse (one transaction), and nothing in Dagster (killed before it reported anything).
    with open_warehouse(world.warehouse) as con:
        assert ingest_file(con, late, meters=load_meters(PROJECT_ROOT / "rating_rules")).status == "ingested"

    retry = run(world.instance, world.warehouse)
    assert retry.success
    meta = _meta(retry, "2026-10-06")
    assert (meta["files_ingested"].value, meta["files_skipped"].value) == (1, 1)
    assert world.materialized_partitions() == fault_free
    late_report = world.latest("2026-10-03")
    assert (late_report["dagster/row_count"], late_report["source_files"]) == (10, [str(late)])
    assert world.latest("2026-10-06")["dagster/row_count"] == 24
    assert meta["event_dates_of_skipped_files"].value == {str(late): ["2026-10-03"]}

    # Once reported, a skipped file reports nothing again (a run over data/raw/ does not re-report history).
    again = run(world.instance, world.warehouse)
    assert [m.partition for m in again.asset_materializations_for_node("usage_events")] == ["2026-10-06"]


def test_a_named_file_that_no_longer_exists_fails_the_run(world):
    """A file the run was asked for and that was moved or deleted since is no unreadable file to skip:
    the run fails naming it (the sensor then follows up on its request), and ingests nothing."""
    kept = world.write_events("b.jsonl", ["2026-10-05T10:00:00Z"])
    gone = world.raw / "a.jsonl"
    result = dg.materialize([usage_events], partition_key="2026-10-05", resources=world.resources(),
                            instance=world.instance, raise_on_error=False,
                            run_config={"ops": {"usage_events": {"config": {"files": [str(gone), str(kept)]}}}})
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"{gone}" in str(failure.event_specific_data) and "no longer exist" in str(failure.event_specific_data)
    assert not world.warehouse.exists()   # failed before anything was ingested
