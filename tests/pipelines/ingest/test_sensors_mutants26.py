"""Gaps found by a second hand mutation audit of the Dagster ingest layer (mutants26).

raw_usage_files_sensor: a cursor of another version or with an unknown status is dropped; the partition
and tags of a request of several files; a request never launched whose file is gone; a single file
larger than the per-request cap; a held file changing again while a file of the same arrival waits
behind it (a defect the audit found, fixed: the file behind it went first); a held file deleted as another of its size
settles. stripe_landing_sensor: a cursor of another version; a landing run still queued with nothing
new; the count of grown files in its tags. Declared settings: the sensors' interval, the ingest asset's
single-writer pool and single-run backfills. usage_events: a run naming its files while the raw folder
is missing; a range run reports its own partitions once.

Real Dagster instances (the ingest tests' `world` fixture, tests/pipelines/ingest/conftest.py) and real
DuckDB; the landing helpers are the neighbouring webhook tests'.
"""

from __future__ import annotations

import json
import logging
import os

import dagster as dg
import pytest

from pipelines.definitions import defs
from pipelines.defs.ingest.assets import usage_events
from pipelines.defs.ingest.sensors import RUN_KEY_TAG, SENSOR_NAME, SENSOR_NAME_TAG
from pipelines.resources import WAREHOUSE_POOL
from tests.pipelines.webhooks.test_webhook_pipeline import _tick as _landing_tick
from tests.pipelines.webhooks.test_webhook_pipeline import deliver, dunning_lifecycle


def _files(request: dg.RunRequest) -> list[str]:
    return request.run_config["ops"]["usage_events"]["config"]["files"]


def _cursor(tick) -> dict:
    return json.loads(tick.cursor)


def _run_record(world, request: dg.RunRequest) -> dg.DagsterRun:
    """The run the daemon launched for `request`, queued (created, not started)."""
    return world.instance.create_run_for_job(
        job_def=defs.resolve_job_def("ingest_job"), run_config=request.run_config,
        tags={RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: SENSOR_NAME})


# -- raw_usage_files_sensor: a cursor of another version, or with an unknown status, is dropped ---------

@pytest.mark.parametrize(("where", "value"), [("version", 3), ("status", "queued")])
def test_a_cursor_of_another_version_or_an_unknown_status_is_dropped_and_the_folder_rescanned(
        world, where, value):
    """a.jsonl is ingested and marked done. Its cursor is then changed to version 3 (a later format
    this code cannot know), or its entry's status to "queued" (no status of ours): either way the whole
    cursor is dropped with a warning and the folder rescanned, so a.jsonl goes back to pending (one
    tick to settle), not read as done. Kills: the version check dropped in `_Cursor.loads`; the status
    check dropped (both read the cursor as it stands: no warning, pending stays {})."""
    a = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    settled = world.settle()
    [request] = settled.requests
    assert world.run(request).success
    done = _cursor(world.tick(settled.cursor))
    assert done["files"][str(a)]["status"] == "done"
    if where == "version":
        done["version"] = value
    else:
        done["files"][str(a)]["status"] = value
    after = world.tick(json.dumps(done))
    assert "unreadable sensor cursor dropped" in after.logged(logging.WARNING)
    assert after.requests == [] and list(_cursor(after)["pending"]) == [str(a)] and _cursor(after)["files"] == {}


# -- raw_usage_files_sensor: a request of several files ----------------------------------------------------

def test_a_request_of_two_files_targets_the_newest_date_of_either_and_counts_its_files(world):
    """a.jsonl's events are all on 2026-10-05; b.jsonl's span 2026-10-01 .. 2026-10-08. The one request
    (both files, path order) targets 2026-10-08, the newest date of either file (b's last date beats a's
    2026-10-05, though b's first date does not), and is tagged with 2 files, attempt 1. Kills, in
    `_partition_for`: `found[1] < newest` and `found[0] > newest` (each kept a's 2026-10-05); the
    `metering/files` tag not counting the files."""
    a = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    b = world.write_events("b.jsonl", ["2026-10-01T10:00:00Z", "2026-10-08T10:00:00Z"])
    [request] = world.settle().requests
    assert _files(request) == [str(a), str(b)]
    assert request.partition_key == "2026-10-08"
    assert (request.tags["metering/files"], request.tags["metering/attempt"]) == ("2", "1")


# -- raw_usage_files_sensor: a request never launched whose file is gone --------------------------------

def test_a_file_deleted_before_its_run_was_ever_launched_lets_the_later_file_go(world):
    """a.jsonl is requested, but no run ever appears for its key (evaluated outside the daemon, or
    the run was deleted), and a.jsonl is then deleted; c.jsonl arrives. Tick 1: a's request has no run
    and no file left to ask for, so it is over (nothing requested: no run of an empty file list, which
    would ingest the whole folder) and its entry goes; c is seen for the first time. Tick 2: c, stable,
    is requested alone. Kills: `superseded.update(gone)` dropped when there is no run (a's entry stayed
    requested for ever and held c); `if retry:` dropped (a request with no files on tick 1)."""
    a = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    settled = world.settle()
    assert len(settled.requests) == 1
    a.unlink()
    c = world.write_events("c.jsonl", ["2026-10-05T11:00:00Z"])
    first = world.tick(settled.cursor)
    assert first.requests == []
    assert _cursor(first)["files"] == {} and list(_cursor(first)["pending"]) == [str(c)]
    [later] = world.tick(first.cursor).requests
    assert _files(later) == [str(c)]


# -- raw_usage_files_sensor: the per-request cap --------------------------------------------------------

def test_a_file_larger_than_the_request_cap_is_still_requested_alone(world, monkeypatch):
    """With a cap of 1 byte every file is larger than a request may take: each still goes, alone,
    in path order (a, then b once a's run is done), rather than never. Kills: `i and` dropped from
    the cap test (the first file over the cap was held for ever)."""
    from pipelines.defs.ingest import sensors

    monkeypatch.setattr(sensors, "MAX_REQUEST_BYTES", 1)
    a = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    b = world.write_events("b.jsonl", ["2026-10-05T11:00:00Z"])
    settled = world.settle()
    [first] = settled.requests
    assert _files(first) == [str(a)]
    assert world.run(first).success
    [second] = world.tick(settled.cursor).requests
    assert _files(second) == [str(b)]


# -- raw_usage_files_sensor: a held file changing again, and a file of the same arrival behind it --------

def test_a_held_file_changing_again_holds_a_file_that_arrived_on_the_same_tick_behind_it(world):
    """b.jsonl's run is queued; a.jsonl (x = 10) and c.jsonl (x = 1000, a conflicting resend) then
    arrive and settle on the same tick, so both are held with one arrival and go in path order: a, then
    c. a is touched (a backup tool) and b's run then succeeds. The next tick sees a changing again: a
    keeps its place, so c, behind it in that order, must wait too (the skip reason says a is changing
    again); a tick later a and c go in one run, a first, and a's 10 is billed, c's 1000 quarantined as
    the conflict (as fault-free). Only files whose arrival was strictly later than the changing file's
    waited, so c (same arrival, later path) was requested alone ahead of a and its 1000 was billed."""
    world.write_usage("b.jsonl", [("evt-1", 1)])
    settled = world.settle()
    [first] = settled.requests
    queued = _run_record(world, first)
    a = world.write_usage("a.jsonl", [("x", 10)])
    c = world.write_usage("c.jsonl", [("x", 1000)])
    held = world.tick(world.tick(settled.cursor).cursor)
    assert held.requests == [] and "holding 2 new raw file(s)" in held.data.skip_message
    pending = _cursor(held)["pending"]
    assert pending[str(a)]["arrival"] == pending[str(c)]["arrival"]
    later = a.stat().st_mtime_ns + 1_000_000_000
    os.utime(a, ns=(later, later))
    world.instance.delete_run(queued.run_id)   # the queued run starts now, and succeeds
    assert world.run(first).success

    changing = world.tick(held.cursor)
    assert changing.requests == [], f"c went ahead of a: {[_files(r) for r in changing.requests]}"
    assert "changing again" in changing.data.skip_message
    [both] = world.tick(changing.cursor).requests
    assert _files(both) == [str(a), str(c)]
    assert world.run(both).success and world.billed("x") == ("10", 1)


def test_a_held_file_deleted_as_a_file_of_its_size_settles_does_not_pass_on_its_arrival(world):
    """b.jsonl's run is queued; z.jsonl (evt-X = 1000) is held, then a.jsonl (evt-X = 5), a tick later.
    y.jsonl (evt-Y = 1000: the same size as z, written later, so another mtime) starts settling, and z
    is deleted on the tick y becomes stable. y is no z moved (`mv` keeps size and mtime; y's mtime
    differs): it arrives on that tick, after a, so once b's run is done the release is [a, y]. Kills: the
    held-file move matched on size alone (y took z's arrival and went ahead of a)."""
    world.write_usage("b.jsonl", [("evt-1", 1)])
    settled = world.settle()
    [first] = settled.requests
    queued = _run_record(world, first)
    z = world.write_usage("z.jsonl", [("evt-X", 1000)])
    tick = world.tick(world.tick(settled.cursor).cursor)
    a = world.write_usage("a.jsonl", [("evt-X", 5)])
    tick = world.tick(world.tick(tick.cursor).cursor)
    y = world.write_usage("y.jsonl", [("evt-Y", 1000)])
    assert y.stat().st_size == z.stat().st_size and y.stat().st_mtime_ns != z.stat().st_mtime_ns
    tick = world.tick(tick.cursor)   # y seen for the first time: settling
    z.unlink()
    tick = world.tick(tick.cursor)   # y stable, z gone
    assert tick.requests == [] and "holding 2 new raw file(s)" in tick.data.skip_message
    pending = _cursor(tick)["pending"]
    assert pending[str(a)]["arrival"] < pending[str(y)]["arrival"]
    world.instance.delete_run(queued.run_id)   # the queued run starts now, and succeeds
    assert world.run(first).success
    [released] = world.tick(tick.cursor).requests
    assert _files(released) == [str(a), str(y)]


# -- the sensors' and the ingest asset's declared settings --------------------------------------------------

def test_sensor_intervals_and_the_ingest_assets_pool_and_backfills():
    """docs/ingest.md: the raw-file sensor ticks every 30 s (a file is requested one tick, >= 30 s,
    after it stops changing), as does `stripe_landing_sensor`; usage_events runs in pool
    `duckdb_writer` (one writer at a time) and a backfill of many days is one run
    (BackfillPolicy.single_run). (Default statuses: tests/pipelines/test_schedules.py.) Kills: another
    interval; the pool dropped (two ingest runs writing DuckDB at once: the second fails on the lock);
    the backfill policy dropped (a backfill of N days launched N runs of the whole folder)."""
    raw = defs.resolve_sensor_def("raw_usage_files_sensor")
    landing = defs.resolve_sensor_def("stripe_landing_sensor")
    assert (raw.minimum_interval_seconds, landing.minimum_interval_seconds) == (30, 30)
    assert usage_events.op.pool == WAREHOUSE_POOL == "duckdb_writer"
    assert usage_events.backfill_policy == dg.BackfillPolicy.single_run()


# -- usage_events: named files while the raw folder is missing ----------------------------------------------

def test_a_run_naming_its_files_does_not_need_the_raw_folder(world):
    """The raw folder does not exist, but the run names a file elsewhere: it ingests that file (2
    events on 2026-10-05) and succeeds. Only a run with no files named reads the folder, and fails
    when it is missing. Kills: `not config.files and` dropped from the missing-folder test."""
    elsewhere = world.tmp_path / "elsewhere" / "a.jsonl"
    elsewhere.parent.mkdir()
    elsewhere.write_text("".join(json.dumps({"event_id": f"e{i}", "customer_id": "cust_00001",
                                             "meter": "api_calls", "timestamp": f"2026-10-05T1{i}:00:00Z"}) + "\n"
                                 for i in range(2)))
    assert not world.raw.exists()
    result = dg.materialize([usage_events], partition_key="2026-10-05", resources=world.resources(),
                            instance=world.instance, raise_on_error=False,
                            run_config={"ops": {"usage_events": {"config": {"files": [str(elsewhere)]}}}})
    assert result.success
    assert world.clean_rows() == {"2026-10-05": 2}


def test_a_range_run_reports_each_of_its_partitions_once_and_no_date_inside_it_as_outside(world):
    """A single-run backfill of 2026-10-02 .. 2026-10-05 over a file with one event on 10-03 and two on
    10-05 (no files named: the whole folder). Every touched date lies inside the range, so the run
    materializes each of its four partitions exactly once (Dagster's own), logs no extra
    materialization, and lists no date as outside the run. Kills: `outside` computed against the
    range's first day only (10-03 and 10-05 were reported twice, once as "elsewhere")."""
    world.write_events("f.jsonl", ["2026-10-03T12:00:00Z", "2026-10-05T10:00:00Z", "2026-10-05T11:00:00Z"])
    result = dg.materialize([usage_events], resources=world.resources(), instance=world.instance,
                            tags={"dagster/asset_partition_range_start": "2026-10-02",
                                  "dagster/asset_partition_range_end": "2026-10-05"})
    assert result.success
    events = result.asset_materializations_for_node("usage_events")
    assert sorted(m.partition for m in events) == ["2026-10-02", "2026-10-03", "2026-10-04", "2026-10-05"]
    [own] = [m for m in events if m.partition == "2026-10-02"]
    assert own.metadata["event_dates_touched"].value == ["2026-10-03", "2026-10-05"]
    assert own.metadata["event_dates_outside_run"].value == []


# -- stripe_landing_sensor ------------------------------------------------------------------------------

def test_a_landing_cursor_of_another_version_is_dropped_and_every_file_counts_as_grown(tmp_path):
    """A landing cursor of version 3 (a format this code cannot know), listing the current sizes: it
    is dropped, so every non-empty landing file counts as grown and one landing run is requested, and
    the cursor written is version 2 again. Kills: the version check dropped in the landing `_Cursor.loads`
    (read as it stands: nothing grew, no run)."""
    sensor = defs.resolve_sensor_def("stripe_landing_sensor")
    with dg.instance_for_test() as instance:
        deliver(tmp_path, dunning_lifecycle()[:3])
        first = _landing_tick(sensor, instance, tmp_path, None)
        assert len(first.run_requests) == 1
        other = {**json.loads(first.cursor), "version": 3, "run_key": "", "attempt": 0}
        again = _landing_tick(sensor, instance, tmp_path, json.dumps(other))
        assert len(again.run_requests) == 1
        assert json.loads(again.cursor)["version"] == 2


def test_a_landing_run_still_queued_is_waited_for_when_nothing_grew(tmp_path):
    """The landing run asked for is queued (created, not started) and no webhook came since: the tick
    asks for nothing and keeps following that run (same key, attempt 1). Kills: `_follow_up` treating
    any run that is neither FAILURE/CANCELED nor SUCCESS as ended (it requested attempt 2 beside the
    queued run: two landing runs behind the writer slot)."""
    sensor = defs.resolve_sensor_def("stripe_landing_sensor")
    with dg.instance_for_test() as instance:
        deliver(tmp_path, dunning_lifecycle()[:3])
        first = _landing_tick(sensor, instance, tmp_path, None)
        [request] = first.run_requests
        instance.create_run_for_job(job_def=defs.resolve_job_def("stripe_state_job"),
                                    tags={"dagster/run_key": request.run_key,
                                          "dagster/sensor_name": "stripe_landing_sensor"})
        waiting = _landing_tick(sensor, instance, tmp_path, first.cursor)
        assert waiting.run_requests == []
        assert (json.loads(waiting.cursor)["run_key"], json.loads(waiting.cursor)["attempt"]) == (request.run_key, 1)


def test_a_landing_request_counts_the_files_that_grew(tmp_path):
    """Each LandingWriter appends to a file of its own (its stem carries a random token): two deliveries
    leave two landing files, so the first request is tagged with 2 files grown (attempt 1); a third
    delivery adds a third file, the only one grown since, so the next request is tagged with 1. Kills:
    the `stripe/landing_files_grown` tag not counting the grown files."""
    sensor = defs.resolve_sensor_def("stripe_landing_sensor")
    lifecycle = dunning_lifecycle()
    with dg.instance_for_test() as instance:
        deliver(tmp_path, lifecycle[:2])
        deliver(tmp_path, lifecycle[2:3])
        assert len(list((tmp_path / "data" / "landing" / "stripe").iterdir())) == 2
        first = _landing_tick(sensor, instance, tmp_path, None)
        [request] = first.run_requests
        assert (request.tags["stripe/landing_files_grown"], request.tags["stripe/landing_attempt"]) == ("2", "1")
        instance.report_run_canceled(instance.create_run_for_job(   # that run ended: not in flight any more
            job_def=defs.resolve_job_def("stripe_state_job"),
            tags={"dagster/run_key": request.run_key, "dagster/sensor_name": "stripe_landing_sensor"}))
        deliver(tmp_path, lifecycle[3:4])
        [later] = _landing_tick(sensor, instance, tmp_path, first.cursor).run_requests
        assert later.tags["stripe/landing_files_grown"] == "1"
