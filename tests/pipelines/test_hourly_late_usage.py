"""The hourly schedule re-aggregates late events: a day whose newest usage_events materialization is
newer than its newest usage_aggregates one is requested with yesterday and today, until aggregated.

Real ingestion through the `usage_events` asset (which reports the late events' own event date as
materialized), a real Dagster instance, a tmp DuckDB warehouse; the schedule is evaluated as the daemon
would, at the current hour (materializations are stamped with the real time)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg

from pipelines.defs.ingest.assets import usage_events
from pipelines.defs.rating.assets import usage_aggregates
from pipelines.resources import ProjectPaths, WarehouseResource
from tests.pipelines.ticks import schedule_tick, yesterday_and_today

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _tick(instance: dg.DagsterInstance, at: dt.datetime) -> list[dg.RunRequest]:
    return schedule_tick("hourly_usage_schedule", instance, at)


def test_late_events_five_days_back_are_requested_until_aggregated(tmp_path: Path):
    now = dt.datetime.now(dt.UTC).replace(minute=10, second=0, microsecond=0)
    today = now.date()
    late, yesterday = today - dt.timedelta(days=5), today - dt.timedelta(days=1)
    raw = tmp_path / "raw" / "late.jsonl"
    raw.parent.mkdir()
    raw.write_text("".join(json.dumps({"event_id": f"late-{i}", "customer_id": "cust_00001", "meter": "api_calls",
                                       "timestamp": f"{late}T{9 + i:02d}:00:00Z"}) + "\n" for i in range(3)))
    resources = {"warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")),
                 "paths": ProjectPaths(raw_dir=str(raw.parent), rules_dir=str(PROJECT_ROOT / "rating_rules"))}
    with dg.instance_for_test() as instance:
        before = _tick(instance, now)
        assert [r.partition_key for r in before] == [yesterday.isoformat(), today.isoformat()]

        # the file arrives today: the run for today's partition reports its events' date as changed
        assert dg.materialize([usage_events], partition_key=today.isoformat(), resources=resources,
                              instance=instance, run_config={"ops": {"usage_events": {"config": {
                                  "files": [str(raw)]}}}}).success
        assert late.isoformat() in set(instance.get_materialized_partitions(dg.AssetKey("usage_events")))

        requests = _tick(instance, now)
        assert [r.partition_key for r in requests] == [late.isoformat(), yesterday.isoformat(), today.isoformat()]
        assert len({r.run_key for r in requests}) == 3
        # idempotent within the hour: the same tick evaluated again asks for the same runs
        assert [r.run_key for r in _tick(instance, now)] == [r.run_key for r in requests]
        # a new hour re-requests it (the run may have failed), under a new run key
        later = _tick(instance, now + dt.timedelta(hours=1))
        assert [r.partition_key for r in later][0] == late.isoformat()
        assert later[0].run_key != requests[0].run_key

        assert dg.materialize([usage_aggregates], partition_key=late.isoformat(), resources=resources,
                              instance=instance).success
        # aggregated, but its push failed (or did not run): still requested, or Stripe never gets the usage
        pushless = _tick(instance, now + dt.timedelta(hours=1))
        assert [r.partition_key for r in pushless][0] == late.isoformat()
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="stripe_usage_pushes",
                                                                    partition=late.isoformat()))
        after = _tick(instance, now + dt.timedelta(hours=1))
        assert [r.partition_key for r in after] == yesterday_and_today(now + dt.timedelta(hours=1))


def test_materializations_older_than_the_look_back_are_not_requested(tmp_path: Path):
    """Only usage_events materialized in the last 62 days count: a tick 63 days later asks for no old day."""
    now = dt.datetime.now(dt.UTC).replace(minute=10, second=0, microsecond=0)
    day = (now.date() - dt.timedelta(days=5)).isoformat()
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="usage_events", partition=day))
        assert [r.partition_key for r in _tick(instance, now)][0] == day
        much_later = now + dt.timedelta(days=63)
        assert [r.partition_key for r in _tick(instance, much_later)] == [
            (much_later.date() - dt.timedelta(days=1)).isoformat(), much_later.date().isoformat()]


def test_a_push_that_left_windows_open_is_requested_within_stripes_35_days_only():
    """A day whose newest push left windows open is requested every hour; past Stripe's 35 days no push
    can send them (a push marks them late, or they belong to a customer no longer mapped), so the day
    is no longer requested, however recent its push."""
    now = dt.datetime.now(dt.UTC).replace(minute=10, second=0, microsecond=0)
    recent, old = ((now.date() - dt.timedelta(days=n)).isoformat() for n in (5, 40))
    with dg.instance_for_test() as instance:
        for day in (recent, old):
            instance.report_runless_asset_event(dg.AssetMaterialization(
                asset_key="stripe_usage_pushes", partition=day, metadata={"open_windows": 2}))
        assert [r.partition_key for r in _tick(instance, now)][0] == recent
        assert old not in [r.partition_key for r in _tick(instance, now)]
