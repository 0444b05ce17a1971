"""`raw_usage_files_sensor` against a real Dagster instance: when it requests, what, and what it does
with the runs it requested (failed, canceled, in flight, never launched)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest

from metering import warehouse as metering_warehouse
from pipelines.defs.ingest.assets import usage_events
from pipelines.defs.ingest.sensors import MAX_ATTEMPTS, RUN_KEY_TAG, SENSOR_NAME, SENSOR_NAME_TAG
from pipelines.partitions import daily_usage


def _files(request: dg.RunRequest) -> list[str]:
    return request.run_config["ops"]["usage_events"]["config"]["files"]


def _as_of(request: dg.RunRequest) -> str | None:
    return request.run_config["ops"]["usage_events"]["config"].get("as_of")


def _cursor(tick) -> dict:
    return json.loads(tick.cursor)


def _broken_warehouse(world):
    """A warehouse file DuckDB cannot open: any ingest run against it fails."""
    path = world.tmp_path / "broken.duckdb"
    path.write_bytes(b"this is not a DuckDB database" * 100)
    return path


def test_a_file_is_requested_only_once_it_stops_changing(world):
    path = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    first = world.tick()
    assert first.requests == [] and "waiting for 1 file(s)" in first.data.skip_message
    assert list(_cursor(first)["pending"]) == [str(path)]

    with path.open("a") as f:  # the writer is still appending
        f.write(json.dumps({"event_id": "a-late", "customer_id": "cust_00001", "meter": "api_calls",
                            "timestamp": "2026-10-05T11:00:00Z"}) + "\n")
    second = world.tick(first.cursor)
    assert second.requests == []

    third = world.tick(second.cursor)
    assert [_files(r) for r in third.requests] == [[str(path)]]
    assert _cursor(third)["pending"] == {}
    assert world.run(third.requests[0]).success
    assert world.clean_rows() == {"2026-10-05": 2}  # the whole file, not the first half


def test_the_run_targets_the_newest_event_date_and_reports_the_other_dates_itself(world):
    world.write_events("f.jsonl", ["2026-10-03T12:00:00Z", "2026-10-05T10:00:00Z", "2026-10-05T11:00:00Z"])
    [request] = world.settle().requests
    assert request.partition_key == "2026-10-05"
    assert "dagster/asset_partition_range_start" not in request.tags
    assert world.run(request).success
    # exactly the touched dates are materialized, each with its own rows; 10-04 is not
    assert world.materialized_partitions() == {"2026-10-03", "2026-10-05"}
    assert (world.latest("2026-10-03")["dagster/row_count"], world.latest("2026-10-05")["dagster/row_count"]) == (1, 2)


@pytest.mark.parametrize(("timestamps", "expected"), [
    (["2025-12-30T10:00:00Z", "2025-12-31T10:00:00Z"], daily_usage.get_first_partition_key()),
    (["not a time"], daily_usage.get_last_partition_key()),  # no date found: today
])
def test_the_partition_is_clamped_to_partitions_that_exist(world, timestamps, expected):
    world.write_events("f.jsonl", timestamps)
    [request] = world.settle().requests
    assert request.partition_key == expected


def test_touching_a_file_requests_nothing_new_content_does(world):
    a = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    settled = world.settle()
    [first] = settled.requests
    assert world.run(first).success
    done = world.tick(settled.cursor)
    assert done.requests == [] and _cursor(done)["files"][str(a)]["status"] == "done"

    os.utime(a, ns=(1, 1))  # same content, new mtime: waits a tick, is hashed, and is not new
    touched = world.tick(world.tick(done.cursor).cursor)
    assert touched.requests == []
    assert _cursor(touched)["files"][str(a)]["mtime_ns"] == 1

    b = world.write_events("b.jsonl", ["2026-10-06T10:00:00Z"])
    [second] = world.settle(touched.cursor).requests
    assert _files(second) == [str(b)] and second.run_key != first.run_key


def test_entries_of_deleted_files_leave_the_cursor(world):
    a = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    requested = world.settle()
    b = world.write_events("b.jsonl", ["2026-10-05T11:00:00Z"])
    pending = world.tick(requested.cursor)
    assert set(_cursor(pending)["files"]) == {str(a)} and set(_cursor(pending)["pending"]) == {str(b)}
    a.unlink()
    b.unlink()
    after = world.tick(pending.cursor)
    assert _cursor(after)["files"] == {} and _cursor(after)["pending"] == {}


@pytest.mark.parametrize("cursor", [
    "not json",
    json.dumps(["x"]),
    json.dumps({"/some/path.jsonl": "abc"}),  # an old {path: sha256} shape
    json.dumps({"/some/path.jsonl": {"sha256": "abc", "size": 1, "mtime_ns": 1}}),  # version 1
    json.dumps({"version": 2, "pending": {},
                "files": {"/some/path.jsonl": {"size": 1, "mtime_ns": 1, "run_key": "k", "attempt": 1,
                                               "status": "done"}}}),  # an entry without sha256
    json.dumps({"version": 2, "files": {}, "pending": {"/some/path.jsonl": {"size": "1", "mtime_ns": 1}}}),
])
def test_an_unreadable_cursor_is_dropped_with_a_warning_and_the_folder_rescanned(world, cursor):
    a = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    first = world.tick(cursor)
    assert "unreadable sensor cursor dropped" in first.logged(logging.WARNING)
    assert list(_cursor(first)["pending"]) == [str(a)]  # a readable cursor again, starting over
    [request] = world.tick(first.cursor).requests
    assert _files(request) == [str(a)]


def test_a_request_carries_the_time_of_the_tick_that_first_asked_for_it(world):
    world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    before = datetime.now(timezone.utc).replace(microsecond=0)
    settled = world.settle()
    [request] = settled.requests
    as_of = datetime.fromisoformat(_as_of(request))
    assert as_of.utcoffset() == timedelta(0) and before <= as_of <= datetime.now(timezone.utc)
    assert {e["as_of"] for e in _cursor(settled)["files"].values()} == {_as_of(request)}


def test_a_cursor_entry_written_before_the_sensor_kept_as_of_is_still_read(world):
    """Its retry carries no as_of: the run then judges by the time it runs, as before."""
    world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    settled = world.settle()
    [request] = settled.requests
    old = _cursor(settled)
    for entry in old["files"].values():
        del entry["as_of"]
    assert not world.run(request, warehouse=_broken_warehouse(world)).success
    retry_tick = world.tick(json.dumps(old))
    assert "unreadable sensor cursor" not in retry_tick.logged(logging.WARNING)
    [retry] = retry_tick.requests
    assert retry.run_key == f"{request.run_key}-attempt2" and _as_of(retry) is None


def test_a_failed_run_is_requested_again_and_then_the_files_are_done(world):
    world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    settled = world.settle()
    [request] = settled.requests
    assert not world.run(request, warehouse=_broken_warehouse(world)).success

    retry_tick = world.tick(settled.cursor)
    [retry] = retry_tick.requests
    assert retry.run_key == f"{request.run_key}-attempt2"
    assert (_files(retry), retry.partition_key, retry.tags["metering/attempt"]) == (_files(request), "2026-10-05", "2")
    # the retry judges future timestamps by the first request's time, not by when it runs (I17)
    assert _as_of(retry) == _as_of(request) is not None
    assert "requesting its 1 file(s) again" in retry_tick.logged(logging.WARNING)

    in_flight = world.tick(retry_tick.cursor)  # attempt 2 has no run yet: asked for again, same key
    assert [r.run_key for r in in_flight.requests] == [retry.run_key]
    assert world.run(retry).success
    done = world.tick(in_flight.cursor)
    assert done.requests == []
    assert {e["status"] for e in _cursor(done)["files"].values()} == {"done"}
    assert world.clean_rows() == {"2026-10-05": 1}


def test_a_file_touched_while_its_run_reads_it_is_requested_again(world, monkeypatch):
    """A backup tool touching a file (same bytes) while the run reads it: the run stores nothing of it.
    The asset once skipped it as unreadable and succeeded, the sensor took the file as done, and its
    events were never ingested. The run now fails, and the sensor's retry ingests the file."""
    from metering.ingest import readers

    path = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    settled = world.settle()
    [request] = settled.requests
    real_hash = readers.file_hash

    def hash_while_touched(target):
        later = path.stat().st_mtime_ns + 1_000_000_000
        os.utime(target, ns=(later, later))
        return real_hash(target)

    monkeypatch.setattr(readers, "file_hash", hash_while_touched)
    first = world.run(request)
    monkeypatch.setattr(readers, "file_hash", real_hash)
    assert not first.success and world.clean_rows() == {}
    changing = world.tick(settled.cursor)   # its mtime moved: looked at once it is still
    assert changing.requests == []
    [retry] = world.tick(changing.cursor).requests
    assert retry.run_key == f"{request.run_key}-attempt2" and _files(retry) == [str(path)]
    assert world.run(retry).success
    assert world.clean_rows() == {"2026-10-05": 1}


def test_a_file_the_sensor_cannot_read_holds_the_later_ones_and_the_earlier_go(world):
    """A file whose bytes cannot be read (here a link to this process's /proc/self/mem: reading its
    first page fails with EIO; a file without read permission under a non-root daemon alike) once
    failed every tick, so no file at all was ever requested. The files that arrived before it go; it
    and the later ones wait, with a warning each tick naming it."""
    good = world.write_events("good.jsonl", ["2026-10-05T10:00:00Z"])
    world.raw.joinpath("mem.jsonl").symlink_to("/proc/self/mem")
    late = world.write_events("zz-later.jsonl", ["2026-10-05T11:00:00Z"])
    settled = world.settle()
    [request] = settled.requests
    assert _files(request) == [str(good)]   # path order within a tick: good, mem, zz-later
    warning = settled.logged(logging.WARNING)
    assert f"behind one the sensor cannot read, {world.raw / 'mem.jsonl'}" in warning and str(late) in warning
    assert world.run(request).success and world.clean_rows() == {"2026-10-05": 1}
    again = world.tick(settled.cursor)
    assert again.requests == [] and "cannot read 1 raw file(s)" in again.logged(logging.WARNING)
    world.raw.joinpath("mem.jsonl").unlink()   # removed: the later file goes
    [after] = world.tick(again.cursor).requests
    assert _files(after) == [str(late)]


def test_a_file_unreadable_for_a_moment_keeps_its_place_in_arrival_order(world, monkeypatch):
    """a arrives first and b, a conflicting version of its event, a tick later; when the sensor cannot
    read a just then, b once went ahead and b's version was billed (I17). b now waits for a."""
    from pipelines.defs.ingest import sensors

    world.write_usage("a.jsonl", [("e1", 1)])
    first = world.tick()
    real = sensors.file_hash

    def denied_for_a(path):
        if path.name == "a.jsonl":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(sensors, "file_hash", denied_for_a)
    world.write_usage("b.jsonl", [("e1", 2)])
    blocked = world.tick(first.cursor)
    assert blocked.requests == []
    monkeypatch.setattr(sensors, "file_hash", real)
    tick = world.tick(blocked.cursor)
    for _ in range(4):
        for request in tick.requests:
            assert world.run(request).success
        tick = world.tick(tick.cursor)
    assert world.billed("e1") == ("1", 1)   # a's version clean, b's quarantined as a conflict


def _deny_reading(monkeypatch, name: str):
    """The sensor cannot read `name` (a PermissionError from its hash); returns the real hash."""
    from pipelines.defs.ingest import sensors

    real = sensors.file_hash

    def denied(path):
        if path.name == name:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(sensors, "file_hash", denied)
    return real


def test_a_rewritten_file_the_sensor_cannot_read_holds_the_later_ones_too(world, monkeypatch):
    """a, ingested, is rewritten with e1 = 1 while the sensor cannot read it; b, with e1 = 2, arrives
    after. The rewritten file was left out (only never-handed files were held), b went first, and b's
    version was billed (the review's repro). b now waits for a's new content."""
    from pipelines.defs.ingest import sensors

    world.write_usage("a.jsonl", [("e0", 1)])
    settled = world.settle()
    [first] = settled.requests
    assert world.run(first).success
    tick = world.tick(settled.cursor)
    world.write_usage("a.jsonl", [("e0", 1), ("e1", 1)])
    real = _deny_reading(monkeypatch, "a.jsonl")
    tick = world.tick(world.tick(tick.cursor).cursor)
    world.write_usage("b.jsonl", [("e1", 2)])
    tick = world.tick(world.tick(tick.cursor).cursor)
    assert tick.requests == [] and "behind one the sensor cannot read" in tick.logged(logging.WARNING)
    monkeypatch.setattr(sensors, "file_hash", real)
    for _ in range(4):
        tick = world.tick(tick.cursor)
        for request in tick.requests:
            assert world.run(request).success
    assert world.billed("e1") == ("1", 1)


def test_a_held_file_that_changes_again_keeps_its_place(world, monkeypatch):
    """The operator fixes the unreadable a by copying a version over it (a new mtime): a went back to
    settling with no place, and b, held behind it, was requested at once (the review's repro)."""
    from pipelines.defs.ingest import sensors

    world.write_usage("a.jsonl", [("e1", 1)])
    first = world.tick()
    real = _deny_reading(monkeypatch, "a.jsonl")
    world.write_usage("b.jsonl", [("e1", 2)])
    blocked = world.tick(world.tick(first.cursor).cursor)
    assert blocked.requests == []
    path = world.raw / "a.jsonl"
    later = path.stat().st_mtime_ns + 1_000_000_000
    os.utime(path, ns=(later, later))
    monkeypatch.setattr(sensors, "file_hash", real)
    changing = world.tick(blocked.cursor)
    assert changing.requests == []   # b still waits while a settles
    [request] = world.tick(changing.cursor).requests
    assert _files(request) == [str(path), str(world.raw / "b.jsonl")]   # a first, in one batch
    assert world.run(request).success and world.billed("e1") == ("1", 1)


def test_a_file_that_changes_after_a_failed_run_is_requested_anew_not_retried_half_written(world):
    world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    settled = world.settle()
    [request] = settled.requests
    assert not world.run(request, warehouse=_broken_warehouse(world)).success
    world.write_events("a.jsonl", ["2026-10-05T10:00:00Z", "2026-10-05T11:00:00Z"])  # rewritten in place
    changing = world.tick(settled.cursor)
    assert changing.requests == []
    [anew] = world.tick(changing.cursor).requests
    assert anew.tags["metering/attempt"] == "1" and anew.run_key != request.run_key
    assert "-attempt" not in anew.run_key


def test_after_three_failed_runs_the_sensor_gives_up_and_says_how_to_ingest_by_hand(world):
    path = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    broken = _broken_warehouse(world)
    tick = world.settle()
    keys = []
    for _ in range(MAX_ATTEMPTS):
        [request] = tick.requests
        keys.append(request.run_key)
        assert not world.run(request, warehouse=broken).success
        tick = world.tick(tick.cursor)
    assert len(set(keys)) == MAX_ATTEMPTS == 3
    assert tick.requests == []
    assert _cursor(tick)["files"][str(path)]["status"] == "gave_up"
    error = tick.logged(logging.ERROR)
    assert "giving up" in error and str(path) in error
    assert "ingest exactly those files, in the order listed, with `metering ingest <files>`" in error
    assert f"add `--as-of {_as_of(request)}`" in error
    assert world.tick(tick.cursor).requests == []  # and it stays quiet about them


def _run_record(world, request: dg.RunRequest) -> dg.DagsterRun:
    from pipelines.definitions import defs

    return world.instance.create_run_for_job(
        job_def=defs.resolve_job_def("ingest_job"), run_config=request.run_config,
        tags={RUN_KEY_TAG: request.run_key, SENSOR_NAME_TAG: SENSOR_NAME})


def test_runs_in_flight_or_about_to_be_retried_by_dagster_are_waited_for_canceled_ones_are_not(world):
    world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    settled = world.settle()
    [request] = settled.requests
    run = _run_record(world, request)  # created, not started
    assert world.tick(settled.cursor).requests == []

    world.instance.report_run_failed(run)
    world.instance.add_run_tags(run.run_id, {"dagster/will_retry": "true"})  # Dagster's run retries will re-run it
    assert world.tick(settled.cursor).requests == []

    canceled = _run_record(world, request)  # the newest run of the key decides
    world.instance.report_run_canceled(canceled)
    [retry] = world.tick(settled.cursor).requests
    assert retry.run_key == f"{request.run_key}-attempt2"


def test_sensor_skips_when_the_folder_is_missing(world):
    assert not world.raw.exists()
    tick = world.tick()
    assert tick.requests == [] and tick.data.skip_message.startswith("no new raw files")
    assert "(the folder does not exist: check ProjectPaths.raw_dir)" in tick.data.skip_message
    # materialized by hand, the asset fails (a green run marked the partition materialized: audit)
    result = dg.materialize([usage_events], partition_key="2026-10-05", resources=world.resources(),
                            instance=world.instance, raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"the raw folder {world.raw} does not exist or is not a folder" in str(failure.event_specific_data)


# --- Arrival order after a fault (I17): "the first version of an event ever ingested stays clean", so
# a later file must not be ingested while an earlier batch is still to be (re)tried.

def _drain(world, tick, rounds: int = 4):
    """What the daemon does meanwhile: evaluate the sensor and run whatever it requests, in order."""
    for _ in range(rounds):
        for request in tick.requests:
            assert world.run(request).success
        tick = world.tick(tick.cursor)
    return tick


@pytest.mark.parametrize("earlier", ["queued", "failed_awaiting_dagster_retry"])
def test_a_later_file_waits_until_the_earlier_batch_is_done_so_the_first_version_stays_billed(
        retrying_world, earlier):
    world = retrying_world
    world.write_usage("a.jsonl", [(f"evt-{i}", 1) for i in range(20)])
    world.write_usage("b.jsonl", [("evt-X", 10)])  # the version first sent
    settled = world.settle()
    [first] = settled.requests
    if earlier == "queued":
        _run_record(world, first)  # launched, not started yet
    else:  # the run dies; dagster.yaml's run retries will re-run it (the sensor waits for that)
        failed = world.run(first, warehouse=_broken_warehouse(world))
        assert world.instance.get_run_by_id(failed.run_id).is_complete_and_waiting_to_retry

    world.write_usage("c.jsonl", [("evt-X", 1000)])  # a conflicting resend, arriving meanwhile
    held = _drain(world, world.tick(settled.cursor))
    assert world.run(first).success  # the earlier batch runs (or Dagster's retry of it does)
    after = _drain(world, world.tick(held.cursor))

    # as in the fault-free order (a, b; then c): 10 is billed, 1000 is the quarantined conflict
    assert world.billed("evt-X") == ("10", 1)
    assert held.requests == [] and "holding 1 new raw file(s)" in held.data.skip_message
    assert list(_cursor(held)["pending"]) == [str(world.raw / "c.jsonl")]
    assert after.requests == [] and {e["status"] for e in _cursor(after)["files"].values()} == {"done"}


def _given_up(world):
    """b.jsonl (evt-X = 10) fails MAX_ATTEMPTS runs (a broken warehouse): (b, the tick that gave up)."""
    b = world.write_usage("b.jsonl", [("evt-X", 10)])
    broken = _broken_warehouse(world)
    tick = world.settle()
    for _ in range(MAX_ATTEMPTS):
        [request] = tick.requests
        assert not world.run(request, warehouse=broken).success
        tick = world.tick(tick.cursor)
    return b, tick


def test_after_giving_up_later_files_wait_for_an_operator(world):
    b, tick = _given_up(world)
    assert _cursor(tick)["files"][str(b)]["status"] == "gave_up"

    c = world.write_usage("c.jsonl", [("evt-X", 1000)])
    held = world.tick(world.tick(tick.cursor).cursor)
    assert held.requests == [] and "wait for an operator" in held.data.skip_message
    assert "later raw files wait for an operator" in tick.logged(logging.ERROR)
    warning = held.logged(logging.WARNING)
    assert str(c) in warning and str(b) in warning and "releases the later ones by itself" in warning
    assert world.tick(held.cursor).requests == []  # still held, tick after tick

    # the operator fixed the cause and deletes the cursor: a rescan requests both, in path order
    [rescan] = world.settle(None).requests
    assert _files(rescan) == [str(b), str(c)]
    assert world.run(rescan).success
    assert world.billed("evt-X") == ("10", 1)


def test_given_up_files_once_ingested_release_the_later_ones(world):
    """The give-up message says to ingest the files by hand; once the warehouse holds their content
    the sensor releases the files it held behind them, in order, without deleting its cursor (they
    used to wait for ever)."""
    from metering.ingest import ingest_files

    b, tick = _given_up(world)
    c = world.write_usage("c.jsonl", [("evt-X", 1000)])
    held = world.tick(world.tick(tick.cursor).cursor)
    assert held.requests == []
    with metering_warehouse.open_warehouse(world.warehouse) as con:   # the operator ingests b by hand
        ingest_files(con, [b])
    released = world.tick(held.cursor)
    assert _cursor(released)["files"][str(b)]["status"] == "done"
    assert "released 1 given-up raw file(s)" in released.logged(logging.INFO)
    [later] = released.requests
    assert _files(later) == [str(c)]
    assert world.run(later).success
    assert world.billed("evt-X") == ("10", 1)


def test_a_run_that_ingested_but_failed_to_publish_counts_as_done(world):
    world.write_usage("b.jsonl", [("evt-X", 10)])
    settled = world.settle()
    [request] = settled.requests
    folder = world.tmp_path / "a-folder"
    folder.mkdir()
    result = world.run(request, snapshot=folder)  # publishing fails: the snapshot path is a folder
    assert not result.success
    assert world.billed("evt-X") == ("10", 0)
    c = world.write_usage("c.jsonl", [("evt-Y", 5)])
    [later] = world.tick(world.tick(settled.cursor).cursor).requests
    assert _files(later) == [str(c)]


# --- Holding survives a touch or a rewrite of the outstanding file; held files go in arrival order;
# every request has a run key of its own.

@pytest.mark.parametrize("change", ["touch", "rewrite"])
def test_touching_or_rewriting_a_file_whose_request_is_outstanding_keeps_the_later_ones_held(world, change):
    b = world.write_usage("b.jsonl", [("evt-X", 10)])
    settled = world.settle()
    [first] = settled.requests
    run = _run_record(world, first)  # queued, not started
    world.write_usage("c.jsonl", [("evt-X", 1000)])
    tick = world.tick(settled.cursor)
    if change == "touch":
        os.utime(b, ns=(1, 1))  # same bytes, new mtime: a backup or sync tool
    else:
        world.write_usage("b.jsonl", [("evt-X", 10), ("evt-Y", 1)])
    for _ in range(3):  # the changed b waits a tick, then is hashed: c stays held throughout
        tick = world.tick(tick.cursor)
        assert tick.requests == [] and "holding" in tick.data.skip_message
    world.instance.report_run_canceled(world.instance.get_run_by_id(run.run_id))
    after = _drain(world, world.tick(tick.cursor))
    assert world.billed("evt-X") == ("10", 1)  # as fault-free: b, then c
    assert {e["status"] for e in _cursor(after)["files"].values()} == {"done"}


def test_touching_a_given_up_file_keeps_the_later_ones_held(world):
    b, tick = _given_up(world)
    world.write_usage("c.jsonl", [("evt-X", 1000)])
    tick = world.tick(world.tick(tick.cursor).cursor)
    os.utime(b, ns=(1, 1))
    for _ in range(3):
        tick = world.tick(tick.cursor)
        assert tick.requests == [] and "wait for an operator" in tick.data.skip_message
    assert _cursor(tick)["files"][str(b)]["status"] == "gave_up"


def test_held_files_are_requested_in_arrival_order_not_path_order(world):
    world.write_usage("b.jsonl", [("evt-1", 1)])
    settled = world.settle()
    [first] = settled.requests
    run = _run_record(world, first)  # the earlier batch is queued
    z = world.write_usage("z.jsonl", [("evt-X", 1000)])  # arrives first
    tick = world.tick(world.tick(settled.cursor).cursor)
    a = world.write_usage("a.jsonl", [("evt-X", 5)])  # arrives later
    tick = world.tick(world.tick(tick.cursor).cursor)
    assert tick.requests == [] and "holding 2 new raw file(s)" in tick.data.skip_message
    pending = _cursor(tick)["pending"]
    assert pending[str(z)]["arrival"] < pending[str(a)]["arrival"]
    world.instance.report_run_canceled(world.instance.get_run_by_id(run.run_id))
    [retry] = world.tick(tick.cursor).requests
    assert world.run(retry).success
    [released] = world.tick(world.tick(tick.cursor).cursor).requests
    assert _files(released) == [str(z), str(a)]
    assert world.run(released).success
    assert world.billed("evt-X") == ("1000", 1)  # as fault-free: z, then a


def test_held_files_of_a_cursor_written_before_arrivals_were_kept_go_in_path_order(world):
    world.write_usage("b.jsonl", [("evt-1", 1)])
    settled = world.settle()
    [first] = settled.requests
    _run_record(world, first)  # queued
    world.write_usage("z.jsonl", [("evt-X", 1000)])
    world.write_usage("a.jsonl", [("evt-X", 5)])
    held = world.tick(world.tick(settled.cursor).cursor)
    assert held.requests == [] and "holding 2 new raw file(s)" in held.data.skip_message
    old = _cursor(held)
    del old["tick"]
    for entry in old["pending"].values():
        del entry["arrival"]
    assert world.run(first).success
    tick = world.tick(json.dumps(old))
    assert "unreadable sensor cursor" not in tick.logged(logging.WARNING)
    [released] = tick.requests
    assert _files(released) == [str(world.raw / "a.jsonl"), str(world.raw / "z.jsonl")]


def test_a_rescan_after_the_cursor_is_deleted_gets_new_run_keys(world):
    """The documented recovery (fix the cause, delete the cursor) must launch runs: Dagster launches
    no run for a run key it has seen, and keys used to depend on the files' content only."""
    b, tick = _given_up(world)
    old_keys = {r.tags[RUN_KEY_TAG] for r in world.instance.get_runs()}
    assert len(old_keys) == MAX_ATTEMPTS
    [rescan] = world.settle(None).requests
    assert _files(rescan) == [str(b)] and rescan.run_key not in old_keys
    assert "-attempt" not in rescan.run_key
    assert world.run(rescan).success
    assert world.billed("evt-X") == ("10", 0)


def test_a_rescan_after_a_successful_run_gets_a_new_run_key(world):
    """After the warehouse is replaced and the cursor deleted, the same content is requested again
    under a key of its own (it used to equal the successful run's: no run, file marked done)."""
    world.write_usage("b.jsonl", [("evt-X", 10)])
    [request] = world.settle().requests
    assert world.run(request).success
    world.warehouse.unlink()
    settled = world.settle(None)
    [again] = settled.requests
    assert again.run_key != request.run_key
    assert world.run(again).success
    assert world.billed("evt-X") == ("10", 0)


# --- A file moved or removed while its request is outstanding (I17): the request stays outstanding
# until its run has ended, and a file moved within data/raw/ keeps its place in line.

def _queued_then_conflict(world):
    """a.jsonl (x = 10) requested and queued; c.jsonl (x = 1000, a conflicting resend) then arrives and
    is held behind it. Returns (a, a's request, its queued run, the tick holding c)."""
    a = world.write_usage("a.jsonl", [("x", 10)])
    settled = world.settle()
    [first] = settled.requests
    queued = _run_record(world, first)
    world.write_usage("c.jsonl", [("x", 1000)])
    held = world.tick(world.tick(settled.cursor).cursor)
    assert held.requests == [] and "holding 1 new raw file(s)" in held.data.skip_message
    return a, first, queued, held


def _run_queued(world, queued, request) -> dg.ExecuteInProcessResult:
    """The queued run starts now (the placeholder record makes way for the real run)."""
    world.instance.delete_run(queued.run_id)
    return world.run(request)


def _step_failure(result: dg.ExecuteInProcessResult) -> str:
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return str(failure.event_specific_data)


def test_a_file_renamed_while_its_run_is_queued_keeps_its_place_so_the_first_version_stays_billed(world):
    """The auditor's repro: a.jsonl renamed while its run was queued. Its cursor entry went with the
    file, nothing held c any more and c was requested at once; a's run then skipped the missing file as
    unreadable (and succeeded), a_renamed came after c, and c's 1000 was billed instead of a's 10."""
    a, first, queued, tick = _queued_then_conflict(world)
    renamed = a.rename(world.raw / "a_renamed.jsonl")
    waiting = []
    for _ in range(3):   # a's run is still queued; the daemon runs whatever the sensor requests meanwhile
        tick = world.tick(tick.cursor)
        waiting.append(tick)
        for request in tick.requests:
            assert world.run(request).success
    moved = _cursor(tick)["files"].get(str(renamed), {})
    failed = _run_queued(world, queued, first)   # a.jsonl is gone by the time the run starts
    retry_tick = world.tick(tick.cursor)
    after = _drain(world, retry_tick)

    assert world.billed("x") == ("10", 1)   # as fault-free: a, then c
    # everything waited for a's run, the renamed file included, which took a's cursor entry
    assert all(t.requests == [] and "holding" in t.data.skip_message for t in waiting)
    assert moved.get("run_key") == first.run_key
    # a's run failed on the missing file, naming it, and its retry took the renamed file, ahead of c
    assert not failed.success and f"{a}" in _step_failure(failed)
    [retry] = retry_tick.requests
    assert retry.run_key == f"{first.run_key}-attempt2" and _files(retry) == [str(renamed)]
    assert set(_cursor(after)["files"]) == {str(renamed), str(world.raw / "c.jsonl")}
    assert {e["status"] for e in _cursor(after)["files"].values()} == {"done"}


def test_a_file_renamed_after_its_run_failed_on_it_still_goes_before_the_later_files(world):
    """The tick that first sees the rename also sees the run that failed on the missing file: the
    renamed file (same size and mtime) is taken at once as the moved file, not left to settle while
    the files held behind it go."""
    a, first, queued, tick = _queued_then_conflict(world)
    renamed = a.rename(world.raw / "a_renamed.jsonl")
    assert not _run_queued(world, queued, first).success
    retry_tick = world.tick(tick.cursor)
    assert [_files(r) for r in retry_tick.requests] == [[str(renamed)]]
    _drain(world, retry_tick)
    assert world.billed("x") == ("10", 1)


def test_a_file_removed_while_its_run_is_queued_holds_the_later_ones_until_the_run_has_ended(world):
    """Its entry stays until its run has ended (the run fails, naming the missing file), then goes: the
    later files are released, and the cursor does not keep the entry for ever."""
    a, first, queued, tick = _queued_then_conflict(world)
    a.unlink()
    for _ in range(2):
        tick = world.tick(tick.cursor)
        assert tick.requests == [] and "holding 1 new raw file(s)" in tick.data.skip_message
        assert _cursor(tick)["files"][str(a)]["status"] == "requested"
    failed = _run_queued(world, queued, first)
    assert not failed.success and f"{a}" in _step_failure(failed)
    released = world.tick(tick.cursor)
    [later] = released.requests
    assert _files(later) == [str(world.raw / "c.jsonl")]   # not a retry of the missing file
    assert str(a) not in _cursor(released)["files"]
    assert world.run(later).success and world.billed("x") == ("1000", 0)


def test_a_held_file_renamed_keeps_its_arrival(world):
    world.write_usage("b.jsonl", [("evt-1", 1)])
    settled = world.settle()
    [first] = settled.requests
    queued = _run_record(world, first)
    z = world.write_usage("z.jsonl", [("evt-X", 1000)])   # arrives first
    tick = world.tick(world.tick(settled.cursor).cursor)
    world.write_usage("a.jsonl", [("evt-X", 5)])   # arrives later
    tick = world.tick(world.tick(tick.cursor).cursor)
    m = z.rename(world.raw / "m.jsonl")   # sorts after a.jsonl, and still goes first
    tick = world.tick(tick.cursor)
    assert tick.requests == []
    pending = _cursor(tick)["pending"]
    assert pending[str(m)]["arrival"] < pending[str(world.raw / "a.jsonl")]["arrival"]
    assert _run_queued(world, queued, first).success
    [released] = world.tick(tick.cursor).requests
    assert _files(released) == [str(m), str(world.raw / "a.jsonl")]
    assert world.run(released).success and world.billed("evt-X") == ("1000", 1)


def test_a_given_up_file_renamed_still_holds_the_later_ones(world):
    b, tick = _given_up(world)
    world.write_usage("c.jsonl", [("evt-X", 1000)])
    tick = world.tick(world.tick(tick.cursor).cursor)
    moved = b.rename(world.raw / "b2.jsonl")
    for _ in range(2):
        tick = world.tick(tick.cursor)
        assert tick.requests == [] and "wait for an operator" in tick.data.skip_message
    assert _cursor(tick)["files"][str(moved)]["status"] == "gave_up"


def test_a_large_backlog_is_requested_in_capped_batches_in_arrival_order(world, monkeypatch):
    """A tick hashes and peeks every file it requests: 14 files of 3M gzip events took 117 s, past
    Dagster's 60 s sensor timeout, and a timed-out tick saves no cursor, so every tick timed out again
    (audit). A request takes at most MAX_REQUEST_BYTES (one file at least); the rest wait their turn."""
    from pipelines.defs.ingest import sensors

    paths = [world.write_usage(f"{name}.jsonl", [(f"evt-{name}-{i}", 1) for i in range(3)]) for name in "abcde"]
    monkeypatch.setattr(sensors, "MAX_REQUEST_BYTES", 2 * paths[0].stat().st_size)
    tick = world.settle()
    batches = []
    for _ in range(8):
        for request in tick.requests:
            batches.append([Path(f).name for f in _files(request)])
            assert world.run(request).success
        tick = world.tick(tick.cursor)
    assert batches == [["a.jsonl", "b.jsonl"], ["c.jsonl", "d.jsonl"], ["e.jsonl"]]
    assert {e["status"] for e in _cursor(tick)["files"].values()} == {"done"}
    assert world.billed("evt-e-2") == ("1", 0)
