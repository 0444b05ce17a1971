"""Gaps found by a hand mutation audit (mutants31) of the raw-file sensor, the landing sensor and the
production schedules, beyond test_sensors_schedules_mutants29.py.

raw_usage_files_sensor: the skip reason of a tick that holds files behind one the sensor cannot read
names that file (not "changing again"); the "waiting for N file(s) to stop changing" count is the files
still settling, not every file in the folder.
stripe_landing_sensor: a request made after the cursor was dropped must not reuse the run key of an
earlier request of the same sizes (Dagster launches no run for a key it has seen).
Two defects, fixed in the thirty-first session (their tests fail on `a65de4b`): that run key, and a retried
request that listed its files in path order, not arrival order (a retry could bill another version of a
conflicting event than the first attempt would have: I17).

Real Dagster instances and real DuckDB; the ingest world and the landing helpers are the ones the
neighbouring tests use (the ingest conftest is loaded by path, as test_pipelines_mutants20.py does).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg

from pipelines.definitions import defs
from tests.pipelines.test_pipelines_mutants20 import _ingest   # the ingest tests' conftest, loaded by path
from tests.pipelines.webhooks.test_webhook_pipeline import deliver, dunning_lifecycle
from tests.pipelines.webhooks.test_webhook_pipeline import resources as landing_resources

world = _ingest.world  # the ingest tests' fixture: raw files under tmp_path, a fresh Dagster instance


def _files(request: dg.RunRequest) -> list[str]:
    return request.run_config["ops"]["usage_events"]["config"]["files"]


# -- raw_usage_files_sensor: skip reasons ----------------------------------------------------------------

def test_the_skip_reason_of_files_held_behind_an_unreadable_one_names_it(world):
    """good.jsonl, mem.jsonl (a link to /proc/self/mem: stat works, size 0, reading fails with EIO) and
    zz-later.jsonl settle on tick 2; good goes alone (path order within a tick: good, mem, zz-later, and
    mem cannot be hashed). good's run succeeds. On tick 3 nothing is outstanding, mem still cannot be read,
    so mem and zz-later (arrival 2 both, path order) are held and nothing is requested: the skip reason is
    exactly "holding 2 new raw file(s): the sensor cannot read <raw>/mem.jsonl, which came first (see the
    warning)". Kills: `held[0] in unreadable` made `held[-1] in unreadable` in the skip reason (zz-later
    is readable: the tick said "earlier held file(s) [] are changing again", which is false)."""
    good = world.write_events("good.jsonl", ["2026-10-05T10:00:00Z"])
    mem = world.raw / "mem.jsonl"
    mem.symlink_to("/proc/self/mem")
    world.write_events("zz-later.jsonl", ["2026-10-05T11:00:00Z"])
    settled = world.settle()                                        # ticks 1-2
    [request] = settled.requests
    assert _files(request) == [str(good)]
    assert world.run(request).success
    again = world.tick(settled.cursor)                              # tick 3
    assert again.requests == []
    assert again.data.skip_message == (f"holding 2 new raw file(s): the sensor cannot read {mem}, which came "
                                       f"first (see the warning)")


def test_the_waiting_count_is_the_files_still_changing_not_every_file(world):
    """a.jsonl settles and is ingested (tick 2 requests it, its run succeeds). b.jsonl then appears: on
    tick 3 a is done and unchanged, b is seen for the first time and must settle, so the tick skips with
    exactly "no new raw files in <raw>; waiting for 1 file(s) to stop changing" -- one file (b), not the
    two the folder holds. Kills: the count taken over every file present instead of `pending`."""
    a = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    settled = world.settle()                                        # ticks 1-2
    [request] = settled.requests
    assert _files(request) == [str(a)]
    assert world.run(request).success
    world.write_events("b.jsonl", ["2026-10-05T11:00:00Z"])
    tick = world.tick(settled.cursor)                               # tick 3
    assert tick.requests == []
    assert tick.data.skip_message == f"no new raw files in {world.raw}; waiting for 1 file(s) to stop changing"


# -- stripe_landing_sensor: a dropped cursor and run keys ------------------------------------------------

def test_a_landing_request_after_the_cursor_is_dropped_gets_a_run_key_of_its_own(tmp_path: Path):
    """Three webhooks are landed; the first tick (no cursor) asks for a landing run under key K. The
    cursor is then dropped (deleted by an operator, or unreadable: the sensor's docstring says every
    non-empty file then counts as grown and one run is requested). The second tick sees the same files
    of the same sizes and asks again -- but under K, the key of the first request: the daemon launches
    at most one run per run key, so this request lands nothing (and if K's runs had all failed, the
    follow-up re-requests K-attempt2 and K-attempt3, which also exist, and gives up without a single new
    run). The raw-file sensor fixed the same thing by mixing the tick's time into its keys
    (`tick_run_key`, test_a_rescan_after_the_cursor_is_deleted_gets_new_run_keys)."""
    sensor = defs.resolve_sensor_def("stripe_landing_sensor")
    deliver(tmp_path, dunning_lifecycle()[:3])
    with dg.instance_for_test() as instance:
        first = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=landing_resources(tmp_path)))
        [request] = first.run_requests
        again = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=landing_resources(tmp_path)))
        [rerequest] = again.run_requests
    assert json.loads(again.cursor)["sizes"] == json.loads(first.cursor)["sizes"]
    assert rerequest.run_key != request.run_key


# -- hourly_usage_schedule: the 62-day look-back, to the hour ---------------------------------------------

def test_the_late_usage_look_back_is_62_days_to_the_hour():
    """A usage_events materialization of a day 5 days back is reported at t0 (the real time: the event
    log stamps it). Nothing has aggregated or pushed it. A tick at t0 + 62 days - 1 hour still looks back
    past t0 (the look-back starts at t0 - 1 hour), so the day is requested before that tick's yesterday and
    today; a tick at t0 + 62 days + 1 hour looks back to t0 + 1 hour only, so it asks for yesterday and
    today alone. The existing tests check 61 days (in) and 63 days (out), which a 61- or 63-day look-back
    (or a day-rounded cut) passes as well. Kills: LATE_USAGE_LOOKBACK of 61 days (the first tick drops the
    day); of 63 days (the second keeps it)."""
    from tests.pipelines.ticks import schedule_tick, yesterday_and_today

    with dg.instance_for_test() as instance:
        before = dt.datetime.now(dt.UTC)
        day = (before.date() - dt.timedelta(days=5)).isoformat()
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="usage_events", partition=day))
        after = dt.datetime.now(dt.UTC)       # t0 lies in [before, after]
        inside = after + dt.timedelta(days=62) - dt.timedelta(hours=1)
        outside = before + dt.timedelta(days=62) + dt.timedelta(hours=1)
        assert [r.partition_key for r in schedule_tick("hourly_usage_schedule", instance, inside)] == [
            day, *yesterday_and_today(inside)]
        assert [r.partition_key for r in schedule_tick("hourly_usage_schedule", instance, outside)] == (
            yesterday_and_today(outside))


# -- raw_usage_files_sensor: a retry ingests its files in the order of the first attempt ----------------

def test_a_retried_request_keeps_the_arrival_order_of_its_files(world):
    """x.jsonl is requested on tick 2 and its run is not launched yet, so later files are held. z.jsonl
    (evt-1 = 1) settles and is held with arrival 4, then a.jsonl (evt-1 = 2, a conflicting version of the
    same event) with arrival 6. x's run succeeds: tick 7 asks for [z, a] in one request, in arrival order
    (z came first, so its version of evt-1 is the one billed: I17). That run fails (the warehouse cannot
    be opened; nothing is ingested), so tick 8 asks for attempt 2 -- which must list the files in the same
    order, [z, a], so the retry bills what the first attempt would have: evt-1 = 1 clean, a's 2
    quarantined as a conflicting duplicate. The sensor rebuilds the request from its cursor, whose file
    entries are written with sorted keys, so the retry lists [a, z] and bills evt-1 = 2. The give-up error
    ("ingest exactly those files, in the order listed") lists them in that path order too.
    Fix: keep each file's position in its request in the cursor entry and sort a request's files by it in
    `_follow_up` (see the audit report)."""
    x = world.write_events("x.jsonl", ["2026-10-05T09:00:00Z"])
    tick = world.settle()                                           # ticks 1-2
    [first] = tick.requests
    z = world.write_usage("z.jsonl", [("evt-1", 1)])
    tick = world.tick(world.tick(tick.cursor).cursor)               # ticks 3-4: z held, arrival 4
    a = world.write_usage("a.jsonl", [("evt-1", 2)])
    tick = world.tick(world.tick(tick.cursor).cursor)               # ticks 5-6: a held, arrival 6
    assert {k: v["arrival"] for k, v in json.loads(tick.cursor)["pending"].items()} == {str(z): 4, str(a): 6}
    assert world.run(first).success and _files(first) == [str(x)]
    tick = world.tick(tick.cursor)                                  # tick 7: x done, z and a go
    [request] = tick.requests
    assert _files(request) == [str(z), str(a)]
    broken = world.tmp_path / "broken.duckdb"
    broken.write_bytes(b"this is not a DuckDB database" * 100)
    assert not world.run(request, warehouse=broken).success
    tick = world.tick(tick.cursor)                                  # tick 8: attempt 2
    [retry] = tick.requests
    assert retry.run_key == f"{request.run_key}-attempt2"
    assert world.run(retry).success
    assert world.billed("evt-1") == ("1", 1)
    assert _files(retry) == [str(z), str(a)]


# -- raw_usage_files_sensor: new content that takes a failed request's place goes first -----------------

def test_a_file_rewritten_after_its_run_failed_goes_before_the_files_held_behind_it(world):
    """a.jsonl is requested on tick 2 (request A). b.jsonl appears and settles behind it: held, arrival 4.
    A's run then fails (the warehouse cannot be opened), and before the sensor retries it a.jsonl is
    rewritten with other content. Tick 5 sees a changing (A is not followed up while its file changes);
    tick 6 sees it stable with new content: A's file content is gone, so A is over (not retried) and the
    new content takes its place in line -- arrival 0, ahead of b's 4 -- so the one request of tick 6 is
    [a, b]. Kills: the superseded file given the current tick as its arrival (6: the request is [b, a],
    b passing the content that replaced an earlier request)."""
    a = world.write_usage("a.jsonl", [("evt-a", 1)])
    tick = world.settle()                                           # ticks 1-2
    [request] = tick.requests
    b = world.write_usage("b.jsonl", [("evt-b", 1)])
    tick = world.tick(world.tick(tick.cursor).cursor)               # ticks 3-4: b held, arrival 4
    assert {k: v["arrival"] for k, v in json.loads(tick.cursor)["pending"].items()} == {str(b): 4}
    broken = world.tmp_path / "broken.duckdb"
    broken.write_bytes(b"this is not a DuckDB database" * 100)
    assert not world.run(request, warehouse=broken).success
    world.write_usage("a.jsonl", [("evt-a", 1), ("evt-a2", 2)])     # rewritten: another size and content
    tick = world.tick(tick.cursor)                                  # tick 5: a changing
    assert tick.requests == []
    [anew] = world.tick(tick.cursor).requests                      # tick 6: a's new content, then b
    assert anew.run_key != request.run_key and anew.tags["metering/attempt"] == "1"
    assert _files(anew) == [str(a), str(b)]
