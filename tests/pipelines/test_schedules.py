import datetime as dt

import dagster as dg

from pipelines.definitions import defs
from tests.pipelines.ticks import schedule_tick


def _tick(name: str, at: dt.datetime) -> list[dg.RunRequest]:
    with dg.instance_for_test() as instance:
        return schedule_tick(name, instance, at)


def test_hourly_usage_runs_yesterday_and_today():
    requests = _tick("hourly_usage_schedule", dt.datetime(2026, 11, 1, 0, 10, tzinfo=dt.UTC))
    assert [r.partition_key for r in requests] == ["2026-10-31", "2026-11-01"]
    assert len({r.run_key for r in requests}) == 2


def test_daily_rating_rates_this_month_and_the_two_before():
    """September's partition holds an anchored period Sep 15 - Oct 15: late usage for it arriving in
    November is rated only if the month before last is (it was not)."""
    requests = _tick("daily_rating_schedule", dt.datetime(2026, 11, 3, 2, 30, tzinfo=dt.UTC))
    assert [r.partition_key for r in requests] == ["2026-09-01", "2026-10-01", "2026-11-01"]
    january = _tick("daily_rating_schedule", dt.datetime(2027, 1, 2, 2, 30, tzinfo=dt.UTC))
    assert [r.partition_key for r in january] == ["2026-11-01", "2026-12-01", "2027-01-01"]


def test_period_close_reconciles_the_two_months_the_rating_still_changes_in_january_too():
    """The daily rating and invoice items change the month before last too (late usage, anchored periods
    that ended last month); reconciling last month only left those changes out of any report (audit)."""
    requests = _tick("period_close_schedule", dt.datetime(2027, 1, 2, 4, 0, tzinfo=dt.UTC))
    assert [r.partition_key for r in requests] == ["2026-11-01", "2026-12-01"]
    assert len({r.run_key for r in requests}) == 2


def test_hourly_usage_does_not_ask_again_for_a_day_whose_run_is_still_in_flight():
    """Each hourly tick added runs of the same days while the earlier ones waited for the writer slot:
    2, 4, 6 in-flight runs over three hours (audit). A day with a run queued or running is left out."""
    with dg.instance_for_test() as instance:
        def tick(hour: int) -> list[str]:
            at = dt.datetime(2026, 11, 1, hour, 10, tzinfo=dt.UTC)
            return [r.partition_key for r in schedule_tick("hourly_usage_schedule", instance, at)]

        assert tick(0) == ["2026-10-31", "2026-11-01"]
        queued = instance.create_run_for_job(job_def=defs.resolve_job_def("hourly_usage_job"),
                                             tags={"dagster/partition": "2026-11-01"})   # launched, not started
        assert tick(1) == ["2026-10-31"]
        instance.report_run_canceled(queued)
        assert tick(2) == ["2026-10-31", "2026-11-01"]


def test_hourly_usage_does_not_ask_again_for_the_days_of_a_range_backfill_in_flight():
    """A single-run backfill of hourly_usage_job over Oct 30 - Nov 1 (`dagster job backfill`, or the UI's
    range launch) carries range tags, not `dagster/partition`: the schedule saw none of its days as busy
    and asked for yesterday and today again behind it (a duplicate run each, waiting for the one writer
    slot). A range that ends before yesterday keeps nothing out."""
    job = defs.resolve_job_def("hourly_usage_job")
    at = dt.datetime(2026, 11, 1, 1, 10, tzinfo=dt.UTC)
    with dg.instance_for_test() as instance:
        backfill = instance.create_run_for_job(job_def=job, tags={
            "dagster/asset_partition_range_start": "2026-10-30", "dagster/asset_partition_range_end": "2026-11-01"})
        assert [r.partition_key for r in schedule_tick("hourly_usage_schedule", instance, at)] == []
        instance.report_run_canceled(backfill)
        instance.create_run_for_job(job_def=job, tags={
            "dagster/asset_partition_range_start": "2026-10-01", "dagster/asset_partition_range_end": "2026-10-30"})
        assert [r.partition_key for r in schedule_tick("hourly_usage_schedule", instance, at)] == [
            "2026-10-31", "2026-11-01"]


def test_invoice_items_bill_the_months_the_rating_closes_in_january_too():
    """Last month's calendar periods, the anchored ones that started the month before (Oct 15 - Nov 15
    sits in October's partition and closes in November), and short first periods inside this month."""
    requests = _tick("invoice_items_schedule", dt.datetime(2027, 1, 2, 2, 45, tzinfo=dt.UTC))
    assert [r.partition_key for r in requests] == ["2026-11-01", "2026-12-01", "2027-01-01"]
    assert len({r.run_key for r in requests}) == 3


SCHEDULES = ["daily_rating_schedule", "dunning_schedule", "hourly_usage_schedule", "invoice_items_schedule",
             "period_close_schedule", "stripe_repair_schedule"]


def test_schedules_are_stopped_unless_production():
    assert sorted(s.name for s in defs.schedules) == SCHEDULES
    for name in SCHEDULES:
        assert defs.resolve_schedule_def(name).default_status == dg.DefaultScheduleStatus.STOPPED
    assert defs.resolve_sensor_def("raw_usage_files_sensor").default_status == dg.DefaultSensorStatus.STOPPED


def test_production_starts_every_schedule_and_the_raw_file_sensor():
    """`METERING_ENV=production` starts them all (dunning and the webhook repair used to stay stopped,
    and nothing ingested new files but the hourly job). Read at import: a fresh interpreter."""
    import json
    import os
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", (
        "import json; from pipelines.definitions import defs; "
        "print(json.dumps({**{s.name: s.default_status.value for s in defs.schedules}, "
        "**{s.name: s.default_status.value for s in defs.sensors}}))")],
        env={**os.environ, "METERING_ENV": "production"}, capture_output=True, text=True, check=True).stdout
    statuses = json.loads(out.strip().splitlines()[-1])
    assert statuses == {**{name: "RUNNING" for name in SCHEDULES}, "raw_usage_files_sensor": "RUNNING",
                        "stripe_landing_sensor": "RUNNING"}


def test_only_the_raw_file_sensor_ingests():
    """The hourly job re-aggregates and pushes but does not ingest: a job taking the whole raw folder in
    path order would ingest a file the sensor holds behind an earlier, failed batch (I17)."""
    jobs = [j for j in defs.resolve_all_job_defs()
            if not j.name.startswith("__") and dg.AssetKey("usage_events") in j.asset_layer.executable_asset_keys]
    assert sorted(j.name for j in jobs) == ["ingest_job"]
    assert defs.resolve_sensor_def("raw_usage_files_sensor").job_name == "ingest_job"


def test_months_before_the_partitions_start_are_left_out_not_a_failed_tick():
    """On 2026-02-01 the month before last is 2025-12, which has no partition: the tick failed with
    DagsterUnknownPartitionError, dropping last month's request too (review)."""
    for name in ("period_close_schedule", "daily_rating_schedule", "invoice_items_schedule"):
        requests = _tick(name, dt.datetime(2026, 2, 1, 4, 0, tzinfo=dt.UTC))
        assert [r.partition_key for r in requests][0] == "2026-01-01", name
