"""Production cadence: the same assets the main job runs, on schedules.

| schedule | cron (UTC) | what it runs |
| --- | --- | --- |
| `hourly_usage_schedule` | `10 * * * *` | `hourly_usage_job` for today and yesterday: re-aggregate, push to Stripe (the ledger makes repeats free); `raw_usage_files_sensor` ingests |
| `daily_rating_schedule` | `30 2 * * *` | `billing_job` for this month (live invoice previews), last month and the month before (late events, also in anchored periods that ended last month) |
| `invoice_items_schedule` | `45 2 * * *` | `invoice_items_job` for this month, last month and the month before: the periods the rating just closed get their charges Stripe cannot price as invoice items (after the period's invoice left draft, they go onto the next invoice) |
| `period_close_schedule` | `0 4 * * *` | `reconciliation_job` for last month: pulls Stripe's meters and invoices once Stripe's 1 h grace period has long passed, reconciles, writes the finance report |

Sensors (defined by their domains): `raw_usage_files_sensor` (new raw files -> `usage_events`),
`stripe_landing_sensor` (landed webhooks -> Stripe state). Other schedules: `stripe_repair_schedule`
(03:17, fills webhook gaps from /v1/events), `dunning_schedule` (daily dunning run).

Every job ends with `analyst_snapshot` (pipelines/defs/publish): the analysts' copy is swapped in after it.

Every schedule, and the raw-file sensor, ships STOPPED (turn them on in the UI or with `dagster
schedule start`), unless `METERING_ENV=production`, where they start RUNNING (`pipelines.cadence`).
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from pipelines.cadence import SCHEDULE_STATUS
from pipelines.defs.publish.assets import with_snapshot

hourly_usage_job = dg.define_asset_job(
    "hourly_usage_job",
    # no ingestion here: `raw_usage_files_sensor` is the one ingestion path, so files are ingested in
    # arrival order (a job ingesting the folder in path order would take a file the sensor holds
    # behind an earlier, failed batch, and change which conflicting version is billed)
    selection=with_snapshot(dg.AssetSelection.assets("usage_aggregates", "stripe_usage_pushes")),
    description="Re-aggregate the day, push its windows to Stripe, then publish the analyst snapshot (the raw-file "
                "sensor ingests).",
)


def _month_key(day: dt.date) -> str:
    return day.replace(day=1).isoformat()


@dg.schedule(job=hourly_usage_job, cron_schedule="10 * * * *", execution_timezone="UTC",
             default_status=SCHEDULE_STATUS)
def hourly_usage_schedule(context: dg.ScheduleEvaluationContext):
    """Today's and yesterday's usage partitions, once an hour (run keys per hour and day)."""
    now = context.scheduled_execution_time.astimezone(dt.UTC)
    for day in (now.date() - dt.timedelta(days=1), now.date()):
        yield dg.RunRequest(run_key=f"{now:%Y-%m-%dT%H}:{day}", partition_key=day.isoformat())


@dg.schedule(job_name="billing_job", cron_schedule="30 2 * * *", execution_timezone="UTC",
             default_status=SCHEDULE_STATUS)
def daily_rating_schedule(context: dg.ScheduleEvaluationContext):
    """Rate this month (previews), last month and the month before (late events), once a day.

    A monthly partition holds the periods that start in it, and an anchored period ends in the next
    month (Oct 15 - Nov 15): the month before last holds the periods that ended last month, whose
    late usage would otherwise never be rated (billed periods without new usage keep their lines, so
    the extra run changes nothing else).
    """
    today = context.scheduled_execution_time.astimezone(dt.UTC).date()
    last_month = today.replace(day=1) - dt.timedelta(days=1)
    before_last = last_month.replace(day=1) - dt.timedelta(days=1)
    for month in (_month_key(before_last), _month_key(last_month), _month_key(today)):
        yield dg.RunRequest(run_key=f"{today}:{month}", partition_key=month)


@dg.schedule(job_name="invoice_items_job", cron_schedule="45 2 * * *", execution_timezone="UTC",
             default_status=SCHEDULE_STATUS)
def invoice_items_schedule(context: dg.ScheduleEvaluationContext):
    """Bill the charges Stripe cannot price of the periods the daily rating closed: last month's
    calendar periods, anchored ones that started the month before, and short first periods that start
    and end within this month (Oct 1 - 15 for an anchor on the 15th)."""
    today = context.scheduled_execution_time.astimezone(dt.UTC).date()
    last_month = today.replace(day=1) - dt.timedelta(days=1)
    for month in (_month_key(last_month.replace(day=1) - dt.timedelta(days=1)), _month_key(last_month),
                  _month_key(today)):
        yield dg.RunRequest(run_key=f"{today}:{month}", partition_key=month)


@dg.schedule(job_name="reconciliation_job", cron_schedule="0 4 * * *", execution_timezone="UTC",
             default_status=SCHEDULE_STATUS)
def period_close_schedule(context: dg.ScheduleEvaluationContext):
    """Reconcile last month's billing periods against Stripe, after its grace period."""
    today = context.scheduled_execution_time.astimezone(dt.UTC).date()
    month = _month_key(today.replace(day=1) - dt.timedelta(days=1))
    return dg.RunRequest(run_key=f"{today}:{month}", partition_key=month)


defs = dg.Definitions(
    jobs=[hourly_usage_job],
    schedules=[hourly_usage_schedule, daily_rating_schedule, invoice_items_schedule, period_close_schedule],
)
