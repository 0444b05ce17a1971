"""Gaps found by a hand mutation audit (mutants29) of the raw-file sensor, the landing sensor and the
production schedules.

raw_usage_files_sensor: a cursor of an older version (1) is dropped, not read as if it were version 2; a
file whose event dates cannot be peeked at leaves the partition hint to the other files; a request's
as_of is whole seconds (what `metering ingest --as-of` takes); a moved file matching several gone entries
takes the outstanding request, or the earliest arrival of the held files it matches.
stripe_landing_sensor: a cursor whose sizes are JSON booleans is dropped with a warning (a bool is not a
size). hourly_usage_schedule: the run key carries the hour of the tick; a push that reported no
`open_windows` is settled, not re-requested.

Real Dagster instances and real DuckDB; the ingest world and the landing helpers are the ones the
neighbouring tests use (the ingest conftest is loaded by path, as test_pipelines_mutants20.py does: it
lives in a sibling folder that is not a package).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

import dagster as dg

from metering.webhooks.landing import landing_sizes
from pipelines.definitions import defs
from tests.pipelines.test_pipelines_mutants20 import _ingest   # the ingest tests' conftest, loaded by path
from tests.pipelines.ticks import schedule_tick
from tests.pipelines.webhooks.test_webhook_pipeline import deliver, dunning_lifecycle
from tests.pipelines.webhooks.test_webhook_pipeline import resources as landing_resources

world = _ingest.world  # the ingest tests' fixture: raw files under tmp_path, a fresh Dagster instance


class _Records(_ingest._Records):
    """The ingest conftest's log catcher, read by level."""

    def at(self, level: int) -> str:
        return "\n".join(r.getMessage() for r in self.records if r.levelno == level)


# -- raw_usage_files_sensor: a cursor of version 1 -------------------------------------------------------

def test_a_raw_file_cursor_of_version_1_is_dropped_not_read_as_version_2(world):
    """a.jsonl settles and is requested (its run is never launched). Its cursor is then given version 1
    (an older format) with everything else kept. The cursor must be dropped with a warning and the folder
    rescanned: a.jsonl is seen for the first time again, so it goes to pending and nothing is requested on
    this tick. Read as a version 2 cursor, a.jsonl would be a request whose run was never launched, and
    would be requested again at once under its old key. Kills: `!= CURSOR_VERSION` made `> CURSOR_VERSION`
    in `_Cursor.loads` (the existing test only tries version 3)."""
    a = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    settled = world.settle()
    [request] = settled.requests
    old = {**json.loads(settled.cursor), "version": 1}
    tick = world.tick(json.dumps(old))
    assert tick.requests == []
    assert "unreadable sensor cursor dropped" in tick.logged(logging.WARNING)
    assert "cursor version 1, expected 2" in tick.logged(logging.WARNING)
    cursor = json.loads(tick.cursor)
    assert cursor["files"] == {} and list(cursor["pending"]) == [str(a)]
    assert cursor["tick"] == 1  # counted from scratch


# -- stripe_landing_sensor: sizes that are booleans -------------------------------------------------------

def test_a_landing_cursor_with_boolean_sizes_is_dropped_with_a_warning(tmp_path: Path):
    """A cursor {"sizes": {<file>: true}} is no cursor of ours (json has true for 1 only by accident of
    Python's bool being an int): it is dropped with a warning naming the bad sizes, and the landing file
    then counts as grown from 0, so one run is requested and the cursor holds the file's real size.
    Kills: `type(v) is not int` made `not isinstance(v, int)` in `_sizes` (True read as size 1: no
    warning)."""
    sensor = defs.resolve_sensor_def("stripe_landing_sensor")
    deliver(tmp_path, dunning_lifecycle()[:3])
    sizes = landing_sizes(tmp_path / "data" / "landing" / "stripe")
    assert sizes and all(size > 1 for size in sizes.values())
    cursor = json.dumps({"version": 2, "sizes": {name: True for name in sizes}, "run_key": "", "attempt": 0})
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources=landing_resources(tmp_path), cursor=cursor)
        records = _Records()
        context.log.addHandler(records)
        result = sensor.evaluate_tick(context)
    assert len(result.run_requests) == 1
    assert "unreadable sensor cursor dropped" in records.at(logging.WARNING)
    assert "sizes must be integers" in records.at(logging.WARNING)
    assert json.loads(result.cursor)["sizes"] == sizes


# -- hourly_usage_schedule: run keys and pushes without open_windows ---------------------------------------

def test_the_hourly_run_key_carries_the_hour_of_the_tick():
    """The hourly tick's run keys are "<tick's date>T<hour>:<day>": the 00:10 and 01:10 ticks of
    2026-11-01 both ask for 2026-10-31 and 2026-11-01, under keys of their own hour (a key without the
    hour would make Dagster launch nothing for the later ticks of the day: a day whose late events
    arrive after the first tick would wait until tomorrow). Kills: the hour dropped from the run key."""
    with dg.instance_for_test() as instance:
        first = schedule_tick("hourly_usage_schedule", instance, dt.datetime(2026, 11, 1, 0, 10, tzinfo=dt.UTC))
        second = schedule_tick("hourly_usage_schedule", instance, dt.datetime(2026, 11, 1, 1, 10, tzinfo=dt.UTC))
    assert [r.run_key for r in first] == ["2026-11-01T00:2026-10-31", "2026-11-01T00:2026-11-01"]
    assert [r.run_key for r in second] == ["2026-11-01T01:2026-10-31", "2026-11-01T01:2026-11-01"]


def test_a_push_that_reported_no_open_windows_is_settled_not_requested_again():
    """Two stripe_usage_pushes materializations within Stripe's 35 days: 5 days ago with no
    `open_windows` metadata (a push that had nothing to send), 6 days ago with `open_windows` = 0. Both
    left nothing open: only yesterday and today are requested. Kills: the missing metadata read as 1 open
    window in `_open_windows`; `_open_windows(record) >= 0` for `> 0` in `unsettled_pushes`."""
    now = dt.datetime.now(dt.UTC).replace(minute=10, second=0, microsecond=0)
    bare, zero = ((now.date() - dt.timedelta(days=n)).isoformat() for n in (5, 6))
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="stripe_usage_pushes", partition=bare))
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="stripe_usage_pushes", partition=zero, metadata={"open_windows": 0}))
        requests = schedule_tick("hourly_usage_schedule", instance, now)
    assert [r.partition_key for r in requests] == [(now.date() - dt.timedelta(days=1)).isoformat(),
                                                   now.date().isoformat()]


# -- raw_usage_files_sensor: a file whose dates cannot be peeked at ----------------------------------------

def test_a_file_whose_dates_cannot_be_peeked_at_leaves_the_partition_to_the_others(world):
    """a.parquet is no Parquet file (its dates cannot be read: a warning, and the run will report it);
    b.jsonl has one event on 2026-10-05. Both settle on the same tick and go in one request, in path
    order (a, then b). The partition hint is b's newest date, 2026-10-05: the unreadable file is
    skipped, not taken to mean "no date" for the whole request (which falls back to today's partition).
    Kills: `continue` after the peek warning made `return keys[-1]` in `_partition_for`."""
    world.raw.mkdir(parents=True)
    a = world.raw / "a.parquet"
    a.write_bytes(b"this is not parquet\n" * 4)
    b = world.write_events("b.jsonl", ["2026-10-05T10:00:00Z"])
    tick = world.settle()
    [request] = tick.requests
    assert request.run_config["ops"]["usage_events"]["config"]["files"] == [str(a), str(b)]
    assert request.partition_key == "2026-10-05"
    assert f"{a}: cannot peek at event dates" in tick.logged(logging.WARNING)


# -- raw_usage_files_sensor: as_of is whole seconds, as `metering ingest --as-of` takes it -------------------

def test_a_requests_as_of_is_whole_seconds_as_the_cli_option_takes_it(world):
    """The give-up message tells the operator to add `--as-of <as_of>` to `metering ingest`, whose
    option reads "%Y-%m-%dT%H:%M:%S%z" only (metering/cli/ingest_cmds.py): an as_of with microseconds
    (`...T10:00:00.123456+00:00`) would be refused there. So the request's as_of, and the cursor's, parse
    with exactly that format and carry no fraction of a second. Kills: `now.replace(microsecond=0)`
    dropped (the existing test only checks as_of lies between two times)."""
    world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    settled = world.settle()
    [request] = settled.requests
    as_of = request.run_config["ops"]["usage_events"]["config"]["as_of"]
    parsed = dt.datetime.strptime(as_of, "%Y-%m-%dT%H:%M:%S%z")
    assert parsed.utcoffset() == dt.timedelta(0) and parsed.microsecond == 0
    assert [e["as_of"] for e in json.loads(settled.cursor)["files"].values()] == [as_of]


# -- raw_usage_files_sensor: two held files of one size and mtime gone, one new path -----------------------

def test_a_moved_held_file_takes_the_earliest_arrival_of_the_gone_files_it_matches(world):
    """x.jsonl is requested (its run not launched yet), so later files are held in arrival order. z.jsonl
    settles first (held, arrival tick 4), then c.jsonl (tick 6), then b.jsonl (tick 8), b with z's size
    and mtime. z and b are then removed and m.jsonl appears with that same size and mtime (one of them
    moved: the sensor cannot tell which without hashing held files). m keeps the earliest of the
    arrivals it matches, z's (4), not the first by path (b's 8), so once x's run is done the one request
    lists m before c (4 < 6 < 8). Kills: the gone held files matched in path order in `_take_over_moved`
    (`sorted(held.items())`: m inherits b's 8 and the request is [c, m])."""
    x = world.write_events("x.jsonl", ["2026-10-05T09:00:00Z"])
    tick = world.settle()                                           # ticks 1-2
    [request] = tick.requests
    z = world.write_usage("z.jsonl", [("evt-z", 1)])
    tick = world.tick(world.tick(tick.cursor).cursor)               # ticks 3-4: z held, arrival 4
    c = world.write_usage("c.jsonl", [("evt-cc", 1)])
    tick = world.tick(world.tick(tick.cursor).cursor)               # ticks 5-6: c held, arrival 6
    b = world.write_usage("b.jsonl", [("evt-b", 2)])
    stat = z.stat()
    os.utime(b, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (b.stat().st_size, b.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    tick = world.tick(world.tick(tick.cursor).cursor)               # ticks 7-8: b held, arrival 8
    assert {k: v["arrival"] for k, v in json.loads(tick.cursor)["pending"].items()} == {
        str(z): 4, str(c): 6, str(b): 8}
    m = world.raw / "m.jsonl"
    m.write_bytes(z.read_bytes())
    os.utime(m, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    z.unlink()
    b.unlink()
    tick = world.tick(tick.cursor)                                  # tick 9: m inherits an arrival
    # x's run was never launched, so each tick asks for it again under its key; nothing else is asked for
    assert [r.run_key for r in tick.requests] == [request.run_key]
    assert {k: v["arrival"] for k, v in json.loads(tick.cursor)["pending"].items()} == {str(c): 6, str(m): 4}
    assert world.run(request).success
    [after] = world.tick(tick.cursor).requests                      # tick 10: x done, the held go
    assert after.run_config["ops"]["usage_events"]["config"]["files"] == [str(m), str(c)]
    assert str(x) not in after.run_config["ops"]["usage_events"]["config"]["files"]


# -- raw_usage_files_sensor: a moved file matching two gone entries of one content ------------------------

def test_a_moved_file_matching_a_done_and_a_requested_entry_takes_over_the_request(world):
    """a.jsonl is requested and its run succeeds (done). A copy of it, a2.jsonl, then settles and is
    requested on its own (same content, a new request R2, its run not launched yet). Both are then
    removed and m.jsonl appears with that content, a2's size and a2's mtime (as `mv` keeps them): m
    matches both gone entries by content. It must take over the outstanding one, a2's request, so the
    tick asks for R2 again with m as its file (a request whose run was never launched is asked for
    again under its key); taking over a's done entry instead would leave R2 with no file and ask for
    nothing for m (it would be taken as done, never ingested). Kills: the candidates sorted with the requested
    ones last in `_take_over_moved` (`status == REQUESTED` for `!=`)."""
    a = world.write_events("a.jsonl", ["2026-10-05T10:00:00Z"])
    settled = world.settle()                                        # ticks 1-2
    [first] = settled.requests
    assert world.run(first).success
    a2 = world.raw / "a2.jsonl"
    a2.write_bytes(a.read_bytes())
    tick = world.tick(world.tick(settled.cursor).cursor)            # ticks 3-4: a done, a2 requested
    [second] = tick.requests
    assert second.run_config["ops"]["usage_events"]["config"]["files"] == [str(a2)]
    assert {k: v["status"] for k, v in json.loads(tick.cursor)["files"].items()} == {
        str(a): "done", str(a2): "requested"}
    stat = a2.stat()
    m = world.raw / "m.jsonl"
    m.write_bytes(a.read_bytes())
    os.utime(m, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    a.unlink()
    a2.unlink()
    tick = world.tick(tick.cursor)                                  # tick 5: m takes over a2's request
    [again] = tick.requests
    assert again.run_key == second.run_key
    assert again.run_config["ops"]["usage_events"]["config"]["files"] == [str(m)]
    entry = json.loads(tick.cursor)["files"][str(m)]
    assert (entry["status"], entry["run_key"]) == ("requested", second.run_key)


# -- raw_usage_files_sensor: two held files changing again ------------------------------------------------

def test_a_file_held_between_two_held_files_changing_again_waits_for_the_first_of_them(world):
    """x.jsonl is requested; p.jsonl, q.jsonl and r.jsonl then settle on ticks 4, 6 and 8 and are held
    behind it, in that arrival order. x's run succeeds, and p and r are touched (a backup tool) before
    the next tick: both are changing again and keep their places. q, stable, comes after p (6 > 4), so
    it must wait too (the tick requests nothing); once p and r have settled the three go in one request,
    in arrival order p, q, r. Kills: `max` for `min` in `first_changing` (the line drawn at the last
    changing file, r: q went ahead of p)."""
    world.write_events("x.jsonl", ["2026-10-05T09:00:00Z"])
    tick = world.settle()                                           # ticks 1-2
    [request] = tick.requests
    held = []
    for name in ("p", "q", "r"):                                    # ticks 3-8: held at 4, 6, 8
        held.append(world.write_usage(f"{name}.jsonl", [(f"evt-{name}", 1)]))
        tick = world.tick(world.tick(tick.cursor).cursor)
    p, q, r = held
    assert {k: v["arrival"] for k, v in json.loads(tick.cursor)["pending"].items()} == {
        str(p): 4, str(q): 6, str(r): 8}
    assert world.run(request).success
    for path in (p, r):
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    tick = world.tick(tick.cursor)                                  # tick 9: p and r changing again
    assert tick.requests == []
    assert "changing again" in tick.data.skip_message
    [after] = world.tick(tick.cursor).requests                      # tick 10: all settled
    assert after.run_config["ops"]["usage_events"]["config"]["files"] == [str(p), str(q), str(r)]
