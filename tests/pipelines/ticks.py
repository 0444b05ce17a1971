"""For the schedule tests: a schedule's tick evaluated as the daemon would, and the days the hourly usage
schedule always asks for."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from pipelines.definitions import defs


def schedule_tick(name: str, instance: dg.DagsterInstance, at: dt.datetime) -> list[dg.RunRequest]:
    """The run requests of schedule `name`'s tick at `at`, against `instance`."""
    context = dg.build_schedule_context(instance=instance, scheduled_execution_time=at,
                                         repository_def=defs.get_repository_def())
    return list(defs.resolve_schedule_def(name).evaluate_tick(context).run_requests or [])


def yesterday_and_today(at: dt.datetime) -> list[str]:
    """The partitions every hourly tick at `at` requests: its own yesterday and today (a tick an hour or
    two after a test's start may fall on the next day)."""
    return [(at.date() - dt.timedelta(days=1)).isoformat(), at.date().isoformat()]
