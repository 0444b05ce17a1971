"""Production cadence: the same assets the main job runs, on schedules.

| schedule | cron (UTC) | what it runs |
| --- | --- | --- |
| `hourly_usage_schedule` | `10 * * * *` | `hourly_usage_job` for today and yesterday, and for every older day whose newest `usage_events` materialization (late events, within the last 62 days) is newer than its newest `usage_aggregates` or `stripe_usage_pushes` one, or (within the last 35 days) whose newest push left windows open: re-aggregate, push to Stripe (the ledger makes repeats free); `raw_usage_files_sensor` ingests |
| `daily_rating_schedule` | `30 2 * * *` | `billing_job` for this month (live invoice previews), last month and the month before (late events, also in anchored periods that ended last month) |
| `invoice_items_schedule` | `45 2 * * *` | `invoice_items_job` for this month, last month and the month before: the periods the rating just closed get their charges Stripe cannot price as invoice items (after the period's invoice left draft, they go onto the next invoice) |
| `period_close_schedule` | `0 4 * * *` | `reconciliation_job` for last month and the month before (which the rating and invoice items still change): pulls Stripe's meters and invoices once Stripe's 1 h grace period has long passed, reconciles, writes the finance reports |

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
from pipelines.partitions import RANGE_END_TAG, RANGE_START_TAG, START_DATE, daily_usage
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


def _months(*days: dt.date) -> list[str]:
    """The monthly partition keys of `days` that exist (a month before the partitions start has none:
    asking for it failed the whole tick, the months that do exist included)."""
    return [key for key in map(_month_key, days) if key >= _month_key(dt.date.fromisoformat(START_DATE))]


LATE_USAGE_LOOKBACK = dt.timedelta(days=62)
"""How far back the hourly schedule looks for usage_events materializations not yet re-aggregated."""

STRIPE_WINDOW_LIMIT = dt.timedelta(days=35)
"""How far back Stripe takes meter events: the hourly schedule re-pushes open windows within it only."""

USAGE_EVENTS = dg.AssetKey("usage_events")
USAGE_AGGREGATES = dg.AssetKey("usage_aggregates")
USAGE_PUSHES = dg.AssetKey("stripe_usage_pushes")


def _newest_materializations(instance: dg.DagsterInstance, key: dg.AssetKey, partitions: set[str] | None = None,
                             after: float | None = None) -> dict[str, dg.EventLogRecord]:
    """{partition: its newest materialization of `key`}, for `partitions` (None: all), leaving out
    partitions whose newest one is not after `after`. Two queries of the event log, however many
    materializations each partition has (not one record per materialization of the look-back)."""
    latest = instance.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION,
                                                         partitions=partitions)
    if not latest:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, storage_ids=list(latest.values()), after_timestamp=after),
        limit=len(latest)).records
    return {r.partition_key: r for r in records if r.partition_key}


def not_reaggregated(instance: dg.DagsterInstance, now: dt.datetime) -> list[str]:
    """Daily partitions whose newest usage_events materialization (made since `now` - the look-back) is
    newer than their newest usage_aggregates or stripe_usage_pushes materialization, or that have none:
    late events the ingestion reported on their own event date and nothing has aggregated and pushed
    since (a run whose aggregation succeeded and whose push failed leaves the day requested)."""
    events = _newest_materializations(instance, USAGE_EVENTS, after=(now - LATE_USAGE_LOOKBACK).timestamp())
    if not events:
        return []
    done = [_newest_materializations(instance, key, partitions=set(events)) for key in (USAGE_AGGREGATES, USAGE_PUSHES)]
    return sorted(p for p, record in events.items()
                  if record.timestamp > min(d[p].timestamp if p in d else float("-inf") for d in done))


def unsettled_pushes(instance: dg.DagsterInstance, now: dt.datetime) -> list[str]:
    """Daily partitions of the last 35 days (what Stripe still takes) whose newest stripe_usage_pushes
    materialization left windows open (`open_windows` > 0: pending, sent or unknown, e.g. a Stripe
    outage or throttling): the push materializes all the same, and only a later push of the day sends
    them."""
    pushes = _newest_materializations(instance, USAGE_PUSHES, after=(now - LATE_USAGE_LOOKBACK).timestamp())
    # Stripe takes no window more than 35 days old, and a push marks such windows late (settled); a
    # row no push of the day sends (its customer left the customer map) would be requested forever
    oldest = (now - STRIPE_WINDOW_LIMIT).date().isoformat()
    return sorted(p for p, record in pushes.items() if p >= oldest and _open_windows(record) > 0)


def _open_windows(record: dg.EventLogRecord) -> int:
    materialization = record.asset_materialization
    entry = materialization.metadata.get("open_windows") if materialization else None
    return int(entry.value) if entry is not None else 0


@dg.schedule(job=hourly_usage_job, cron_schedule="10 * * * *", execution_timezone="UTC",
             default_status=SCHEDULE_STATUS)
def hourly_usage_schedule(context: dg.ScheduleEvaluationContext):
    """Today's and yesterday's usage partitions, once an hour, plus every day with late events not yet
    re-aggregated (run keys per hour and day: a tick evaluated twice requests nothing new).

    The rule for older days: a daily partition is requested when its newest `usage_events`
    materialization is newer than its newest `usage_aggregates` or `stripe_usage_pushes` one. The ingest asset
    reports late events as a materialization of their own event date, so this re-aggregates (and
    pushes) them at the next tick, and the daily rating then bills the new numbers. A day whose newest
    push left windows open (a Stripe outage, throttling) is requested too, until a push settles them
    (within the 35 days Stripe takes: a row no push sends, its customer unmapped, stops there). Only
    materializations of usage_events from the last 62 days (`LATE_USAGE_LOOKBACK`) are considered
    (the daily rating re-rates at most the month before last). A day whose run fails stays requested
    every hour until one succeeds.
    """
    now = context.scheduled_execution_time.astimezone(dt.UTC)
    recent = [(now.date() - dt.timedelta(days=1)).isoformat(), now.date().isoformat()]
    older = set(not_reaggregated(context.instance, now)) | set(unsettled_pushes(context.instance, now))
    late = sorted(day for day in older if day < recent[0])
    # a day whose run is still queued or running (alone, or in a backfill's range) is not asked for again:
    # the hour in the run key made each tick add runs of the same days behind the one writer slot, without
    # end while runs were slow
    busy = in_flight_partitions(context.instance, hourly_usage_job.name)
    for day in [*late, *recent]:
        if day not in busy:
            yield dg.RunRequest(run_key=f"{now:%Y-%m-%dT%H}:{day}", partition_key=day)


def in_flight_partitions(instance: dg.DagsterInstance, job_name: str,
                         partitions_def: dg.PartitionsDefinition = daily_usage) -> set[str]:
    """The partition keys of `job_name`'s runs not yet finished (queued, starting, running, canceling):
    a run's one partition, or every key of a single-run backfill's range (which has range tags instead)."""
    keys: set[str] = set()
    for run in instance.get_runs(filters=dg.RunsFilter(job_name=job_name, statuses=IN_FLIGHT)):
        start, end = run.tags.get(RANGE_START_TAG), run.tags.get(RANGE_END_TAG)
        if key := run.tags.get("dagster/partition"):
            keys.add(key)
        elif start and end:
            keys.update(partitions_def.get_partition_keys_in_range(dg.PartitionKeyRange(start, end)))
    return keys


IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


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
    for month in _months(before_last, last_month, today):
        yield dg.RunRequest(run_key=f"{today}:{month}", partition_key=month)


@dg.schedule(job_name="invoice_items_job", cron_schedule="45 2 * * *", execution_timezone="UTC",
             default_status=SCHEDULE_STATUS)
def invoice_items_schedule(context: dg.ScheduleEvaluationContext):
    """Bill the charges Stripe cannot price of the periods the daily rating closed: last month's
    calendar periods, anchored ones that started the month before, and short first periods that start
    and end within this month (Oct 1 - 15 for an anchor on the 15th)."""
    today = context.scheduled_execution_time.astimezone(dt.UTC).date()
    last_month = today.replace(day=1) - dt.timedelta(days=1)
    for month in _months(last_month.replace(day=1) - dt.timedelta(days=1), last_month, today):
        yield dg.RunRequest(run_key=f"{today}:{month}", partition_key=month)


@dg.schedule(job_name="reconciliation_job", cron_schedule="0 4 * * *", execution_timezone="UTC",
             default_status=SCHEDULE_STATUS)
def period_close_schedule(context: dg.ScheduleEvaluationContext):
    """Reconcile last month's billing periods, and the month before's, against Stripe, after the
    rating and the invoice items of the day: the daily rating and invoice items still change the month
    before last (late usage, anchored periods that ended last month), and reconciling last month only
    left those changes out of its finance report for good (I14)."""
    today = context.scheduled_execution_time.astimezone(dt.UTC).date()
    last_month = today.replace(day=1) - dt.timedelta(days=1)
    for month in _months(last_month.replace(day=1) - dt.timedelta(days=1), last_month):
        yield dg.RunRequest(run_key=f"{today}:{month}", partition_key=month)


defs = dg.Definitions(
    jobs=[hourly_usage_job],
    schedules=[hourly_usage_schedule, daily_rating_schedule, invoice_items_schedule, period_close_schedule],
)
