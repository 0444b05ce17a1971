"""Gaps found by a hand mutation audit of pipelines/defs (mutants20): the raw-file sensor clamps an event
dated tomorrow to today's partition, the hourly schedule's two look-back windows (62 days of
usage_events materializations, Stripe's 35 days for open windows, the 35th day included), and the
landing sensor waits for a failed landing run that Dagster's run retries will re-run.

Real Dagster instances and real DuckDB; the ingest world and the landing helpers are the ones the
neighbouring tests use (loaded by path: they live in sibling folders that are not packages)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from pipelines.partitions import daily_usage

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


_ingest = _load("_mutants20_ingest_conftest", HERE / "ingest" / "conftest.py")
_landing = _load("_mutants20_webhook_pipeline", HERE / "webhooks" / "test_webhook_pipeline.py")
_hourly = _load("_mutants20_hourly_late_usage", HERE / "test_hourly_late_usage.py")

world = _ingest.world  # the ingest tests' fixture: raw files under tmp_path, a fresh Dagster instance


# -- raw_usage_files_sensor: partition clamping -------------------------------------------------------

def test_an_event_dated_tomorrow_is_clamped_to_todays_partition(world):
    """A client whose clock runs ahead sends events dated tomorrow (UTC): the peek still counts
    timestamps up to a day ahead, and tomorrow is no partition yet, so the request targets the last
    partition that exists (today), not a key that does not exist (which fails the tick and stalls every
    raw file). Kills: the upper clamp dropped in `_partition_for`."""
    today = dt.datetime.now(dt.UTC).date()
    path = world.write_events("ahead.jsonl", ["2026-10-05T10:00:00Z", f"{today + dt.timedelta(days=1)}T00:00:00Z"])
    [request] = world.settle().requests
    assert request.partition_key == daily_usage.get_last_partition_key() == today.isoformat()
    assert request.run_config["ops"]["usage_events"]["config"]["files"] == [str(path)]


# -- hourly_usage_schedule: the look-back windows ------------------------------------------------------

def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(minute=10, second=0, microsecond=0)


def test_a_usage_events_materialization_61_days_old_is_still_re_aggregated():
    """LATE_USAGE_LOOKBACK is 62 days: a day whose late events were reported 61 days before the tick,
    and that nothing has aggregated since, is still requested (with yesterday and today). The existing
    test only checks that 63 days is out. Kills: a shorter look-back (e.g. 40 days)."""
    now = _now()
    day = (now.date() - dt.timedelta(days=5)).isoformat()
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="usage_events", partition=day))
        later = now + dt.timedelta(days=61)
        assert [r.partition_key for r in _hourly._tick(instance, later)] == [
            day, (later.date() - dt.timedelta(days=1)).isoformat(), later.date().isoformat()]


@pytest.mark.parametrize(("days_back", "requested"), [(34, True), (35, True), (36, False)])
def test_open_windows_are_re_pushed_through_stripes_35th_day(days_back, requested):
    """STRIPE_WINDOW_LIMIT is 35 days, the 35th day before today included (Stripe still takes its later
    hours). The existing test only checks 5 days (in) and 40 days (out). Kills: a shorter limit (e.g.
    30 days), and `p > oldest` for `p >= oldest`."""
    now = _now()
    day = (now.date() - dt.timedelta(days=days_back)).isoformat()
    recent = [(now.date() - dt.timedelta(days=1)).isoformat(), now.date().isoformat()]
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="stripe_usage_pushes", partition=day, metadata={"open_windows": 1}))
        assert [r.partition_key for r in _hourly._tick(instance, now)] == ([day] if requested else []) + recent


# -- stripe_landing_sensor: a failed run Dagster will retry is still in flight ---------------------------

def test_growth_while_dagster_will_retry_the_failed_landing_run_waits_for_that_retry(tmp_path: Path):
    """With run retries on (as dagster.yaml has them), a landing run that failed is re-run by Dagster:
    new webhooks meanwhile must not request another landing run beside it (two runs behind the one
    writer slot, each rebuilding the snapshot). Kills: `_in_flight` treating a run waiting for Dagster's
    retry as finished."""
    sensor = _landing.location_defs.resolve_sensor_def("stripe_landing_sensor")
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True, "max_retries": 1}}) as instance:
        _landing.deliver(tmp_path, _landing.dunning_lifecycle()[:3])
        first = _landing._tick(sensor, instance, tmp_path, None)
        [request] = first.run_requests
        _landing._fail_landing_run(instance, tmp_path, run_key=request.run_key)
        [failed] = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": request.run_key}))
        assert failed.is_complete_and_waiting_to_retry

        _landing.deliver(tmp_path, _landing.dunning_lifecycle()[3:])
        waiting = _landing._tick(sensor, instance, tmp_path, first.cursor)
        assert waiting.run_requests == []
        assert waiting.skip_message == f"landing files grew; waiting for landing run {failed.run_id} (FAILURE)"
        # the cursor is not moved on: the growth is asked for once that run (and its retry) is over
        assert waiting.cursor is None or json.loads(waiting.cursor) == json.loads(first.cursor)


# -- usage_events: each blocking check blocks on its own ------------------------------------------------

_defs = _load("_mutants20_ingest_defs", HERE / "ingest" / "test_ingest_defs.py")


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_a_conservation_failure_alone_fails_the_run(world):
    """A clean row lost from usage_events (the manifest still counts it): only the conservation check
    fails, and, blocking, it fails the run. The existing test breaks both checks at once, so either one
    made non-blocking (or one check reporting the other's outcome) went unnoticed. Kills: conservation
    `blocking=False`; the unique_event_id result given conservation's outcome (`passed=conservation.passed`)."""
    _defs._generate(world, days=1)
    assert _defs._materialize(world, "2026-10-04").success
    con = duckdb.connect(str(world.warehouse))
    con.execute("DELETE FROM usage_events WHERE event_id = (SELECT min(event_id) FROM usage_events)")
    con.close()
    result = _defs._materialize(world, "2026-10-04", raise_on_error=False)
    assert _checks(result) == {"conservation": False, "unique_event_id": True, "readable_files": True}
    assert not result.success


def test_a_duplicate_event_id_alone_fails_the_run(world):
    """A clean row stored twice, the manifest of its file raised to match (so conservation holds): only
    unique_event_id fails, and, blocking, it fails the run. Kills: unique_event_id `blocking=False`; the
    unique_event_id result given conservation's outcome."""
    _defs._generate(world, days=1)
    assert _defs._materialize(world, "2026-10-04").success
    con = duckdb.connect(str(world.warehouse))
    row = con.execute("SELECT * FROM usage_events ORDER BY event_id LIMIT 1").fetchone()
    con.execute("INSERT INTO usage_events SELECT * FROM usage_events WHERE event_id = ?", [row[0]])
    con.execute("UPDATE ingested_files SET rows_read = rows_read + 1, rows_accepted = rows_accepted + 1, "
                "value_read = value_read + (SELECT value FROM usage_events WHERE event_id = ? LIMIT 1), "
                "value_accepted = value_accepted + (SELECT value FROM usage_events WHERE event_id = ? LIMIT 1) "
                "WHERE file_id = (SELECT file_id FROM usage_events WHERE event_id = ? LIMIT 1)", [row[0]] * 3)
    con.close()
    result = _defs._materialize(world, "2026-10-04", raise_on_error=False)
    assert _checks(result) == {"conservation": True, "unique_event_id": False, "readable_files": True}
    assert not result.success
