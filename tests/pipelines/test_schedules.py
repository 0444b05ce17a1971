import datetime as dt

import dagster as dg

from pipelines.definitions import defs


def _tick(name: str, at: dt.datetime) -> list[dg.RunRequest]:
    schedule = defs.resolve_schedule_def(name)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, scheduled_execution_time=at,
                                             repository_def=defs.get_repository_def())
        return list(schedule.evaluate_tick(context).run_requests or [])


def test_hourly_usage_runs_yesterday_and_today():
    requests = _tick("hourly_usage_schedule", dt.datetime(2026, 11, 1, 0, 10, tzinfo=dt.UTC))
    assert [r.partition_key for r in requests] == ["2026-10-31", "2026-11-01"]
    assert len({r.run_key for r in requests}) == 2


def test_daily_rating_rates_last_and_current_month():
    requests = _tick("daily_rating_schedule", dt.datetime(2026, 11, 3, 2, 30, tzinfo=dt.UTC))
    assert [r.partition_key for r in requests] == ["2026-10-01", "2026-11-01"]


def test_period_close_reconciles_the_previous_month_in_january_too():
    requests = _tick("period_close_schedule", dt.datetime(2027, 1, 2, 4, 0, tzinfo=dt.UTC))
    assert [r.partition_key for r in requests] == ["2026-12-01"]


def test_schedules_are_stopped_unless_production():
    for name in ("hourly_usage_schedule", "daily_rating_schedule", "period_close_schedule"):
        assert defs.resolve_schedule_def(name).default_status == dg.DefaultScheduleStatus.STOPPED
