"""The ingest asset: raw usage files -> `usage_events` (validated, de-duplicated), by UTC event date.

What a run ingests: the files named in its config (the sensor passes the new files it saw), or,
when none are named, every raw file under `data/raw/` whose content is not ingested yet. A named
file that no longer exists (moved or deleted since the run was requested) fails the run, naming it,
before anything is ingested: it is no unreadable file to skip. So

    dagster asset materialize -m pipelines.definitions --select usage_events --partition 2026-10-05

picks up whatever is new in `data/raw/`. A file lands rows on the dates its events carry (late
events included), which may lie outside the run's partitions. Dagster records a materialization
for every partition a run targets; this asset adds one for every other event date the run
touched (`AssetMaterialization` of its own key, logged with that partition), so exactly the
touched dates (plus the run's own) show as changed. Each partition's `dagster/row_count` is the
clean rows of that date alone. Touched dates that are not partitions (before the partitions'
start, or after today) cannot be materialised: they are logged as warnings and listed in the
run's metadata.

A file the run skips as already ingested counts too, when Dagster has not reported its dates
since: the run reports the event dates its manifest entry recorded (`ingested_files.event_dates`)
that have no materialization newer than the file's ingestion. That is the retry of a run killed
after a file committed (the file is skipped, but its dates were never reported), or a file
ingested outside Dagster (`metering ingest`). A file whose dates were reported after it was
ingested reports nothing again, so a run over the whole raw folder (no files named) does not
re-report every date it ever saw.
"""

from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import duckdb

from metering.errors import BadInputError, FileChangedError
from metering.ingest import REASONS, IngestResult, expand_paths, ingest_file
from metering.ingest import checks as ingest_checks
from metering.ingest.load import VALUE_SUMS, decimal_text, ingested_dates, sum_values
from metering.rules.meters import load_meters
from pipelines.partitions import START_DATE, daily_usage
from pipelines.resources import WAREHOUSE_POOL, ProjectPaths, WarehouseResource

GROUP = "ingest"
CONSERVATION_CHECK = "conservation"
UNIQUE_EVENT_ID_CHECK = "unique_event_id"
READABLE_CHECK = "readable_files"


class IngestConfig(dg.Config):
    """Which raw files to ingest (`files`; empty means every not-yet-ingested file under the raw
    folder), and the ingestion time future timestamps are judged against (`as_of`, ISO 8601 with an
    offset; empty means the time the run starts). The sensor passes the time it first requested the
    files, so a retry classifies the rows as the first attempt would have."""

    files: list[str] = []
    as_of: str = ""


def _as_of(text: str) -> datetime:
    """The run's ingestion time: `text` (ISO 8601 with an offset), or now when empty."""
    if not text:
        return datetime.now(timezone.utc)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise dg.Failure(description=f"config as_of: {text!r} is not an ISO 8601 time with an offset "
                                     f"(e.g. 2026-11-01T00:00:00+00:00)")
    return parsed.astimezone(timezone.utc)


def _fail_if_missing(files: list[str]) -> None:
    """Fail a run whose named files no longer exist (moved or deleted since the request)."""
    if missing := [f for f in files if not Path(f).exists()]:
        raise dg.Failure(description=f"named raw file(s) no longer exist (moved or deleted since the run was "
                                     f"requested): {missing}. Nothing of them was ingested; the sensor follows up "
                                     f"on this failed run (a file moved within data/raw/ keeps its request)")


def _dates_not_reported_since(
    context: dg.AssetExecutionContext, con: duckdb.DuckDBPyConnection, skipped: list[IngestResult],
    partitions: set[str]
) -> dict[str, list[str]]:
    """For files skipped as already ingested: {path: the event dates of its manifest entry that are
    `partitions` and that no materialization of this asset reported after the file was ingested},
    leaving out empty lists.

    Reporting a date twice is harmless; never reporting one hides late events from rating. A date that
    is no partition can never be reported: it was warned about when its file was ingested, and is
    left out here, or every whole-folder run would warn about it again.
    """
    if not skipped:
        return {}
    manifest = {h: ([d for d in dates if d in partitions], at)
                for h, (dates, at) in ingested_dates(con, [r.file_hash for r in skipped]).items()}
    wanted = {d for dates, _ in manifest.values() for d in dates}
    latest = context.instance.get_latest_storage_id_by_partition(
        context.asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=wanted) if wanted else {}
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=context.asset_key, storage_ids=list(latest.values())), limit=len(latest)
    ).records if latest else []
    reported_at = {r.partition_key: r.timestamp for r in records}
    found = {}
    for r in skipped:
        dates, ingested_at = manifest.get(r.file_hash, ([], 0.0))
        if unreported := [d for d in dates if reported_at.get(d, 0.0) <= ingested_at]:
            found[r.path] = unreported
    if found:
        context.log.info(f"files ingested before this run whose dates were not reported since, reported now: {found}")
    return found


@dg.asset(
    partitions_def=daily_usage,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "polars"},
    group_name=GROUP,
    check_specs=[
        dg.AssetCheckSpec(CONSERVATION_CHECK, asset="usage_events", blocking=True,
                          description="rows read = accepted + quarantined + duplicates dropped, per file, and the "
                                      "stored rows equal each file's manifest entry"),
        dg.AssetCheckSpec(UNIQUE_EVENT_ID_CHECK, asset="usage_events", blocking=True,
                          description="no event_id appears twice among clean events"),
        dg.AssetCheckSpec(READABLE_CHECK, asset="usage_events",
                          description="every file of the run could be read (an unreadable file is skipped, "
                                      "untouched, and named here; the other files are still ingested)"),
    ],
    metadata={"quarantine_reasons": dg.MetadataValue.json(REASONS)},
)
def usage_events(
    context: dg.AssetExecutionContext, config: IngestConfig, warehouse: WarehouseResource, paths: ProjectPaths
) -> dg.MaterializeResult:
    """One row per clean, de-duplicated usage event (event_id unique), partitioned by UTC event date.

    Source: raw usage log files (JSON lines, gzip JSON lines, CSV, Parquet) dropped into `data/raw/`.
    Rejected rows go to `usage_quarantine` with a reason; each file is recorded in `ingested_files`.
    """
    if not config.files and not paths.raw.is_dir():
        # a mistyped ProjectPaths.raw_dir read as an empty folder: a green run, the partition marked
        # materialized, nothing ingested
        raise dg.Failure(description=f"the raw folder {paths.raw} does not exist or is not a folder "
                                     f"(ProjectPaths.raw_dir): nothing to ingest")
    files = config.files or expand_paths([paths.raw])
    run_partitions = list(context.partition_keys)  # one day, or a range in a single-run backfill
    meters = load_meters(paths.rules)
    now = _as_of(config.as_of)  # one instant for every file of the run
    # moved or deleted since the run was asked for: not an unreadable file to skip (the run would succeed
    # and its request be done without the file's content, and the files held behind it would go ahead of
    # a moved copy). Checked before anything is ingested: the run changes nothing
    _fail_if_missing(list(config.files))
    results: list[IngestResult] = []
    unreadable: dict[str, str] = {}
    with warehouse.get_connection() as con:
        for path in files:
            try:
                r = ingest_file(con, path, meters=meters, now=now)
            except FileChangedError:
                # not unreadable, only not still: the run fails (the files before it are committed) and
                # the sensor requests the batch again once the file is still. Skipped like an unreadable
                # file, the run succeeded and the sensor took the file as done: it was never ingested
                raise
            except BadInputError as exc:  # this file changes nothing; the others still load
                if config.files:   # gone since the run started?
                    _fail_if_missing([str(path)])
                unreadable[str(path)] = str(exc)
                context.log.error(str(exc))
                continue
            results.append(r)
            context.log.info(f"{r.path}: {r.status}, {r.rows_read} read, {r.rows_accepted} accepted, "
                             f"{r.rows_quarantined} quarantined, {r.duplicates_dropped} duplicates dropped")
        conservation = ingest_checks.conservation(con)
        unique = ingest_checks.unique_event_ids(con)
        done = [r for r in results if r.status == "ingested"]
        existing = set(daily_usage.get_partition_keys())
        earlier = _dates_not_reported_since(context, con, [r for r in results if r.status != "ingested"], existing)
        dates_of = {**{r.path: r.event_dates for r in done}, **earlier}  # file -> dates this run reports
        touched = sorted({d for dates in dates_of.values() for d in dates})
        outside = [d for d in touched if d not in run_partitions]
        elsewhere = [d for d in outside if d in existing]
        unpartitioned = [d for d in outside if d not in existing]
        rows = ingest_checks.rows_by_date(con, [*run_partitions, *elsewhere])
    for day in run_partitions:
        context.add_asset_metadata({"dagster/row_count": rows[day]}, partition_key=day)
    for day in elsewhere:
        context.log_event(dg.AssetMaterialization(
            asset_key=context.asset_key, partition=day,
            description=f"events of this date ingested by run {context.run.run_id}",
            metadata={"dagster/row_count": rows[day],
                      "source_files": dg.MetadataValue.json([f for f, dates in dates_of.items() if day in dates])},
        ))
    if elsewhere:
        context.log.info(f"events landed on dates outside this run's partitions, each reported as materialized: "
                         f"{elsewhere}")
    if unpartitioned:
        context.log.warning(f"events landed on dates that are not partitions of usage_events (before "
                            f"{START_DATE}, or after today), so no materialization reports them: "
                            f"{unpartitioned}")
    return dg.MaterializeResult(
        metadata={
            "as_of": now.isoformat(),
            "files_ingested": len(done),
            "files_skipped": len(results) - len(done),
            "rows_read": sum(r.rows_read for r in done),
            "rows_accepted": sum(r.rows_accepted for r in done),
            "rows_quarantined": sum(r.rows_quarantined for r in done),
            "duplicates_dropped": sum(r.duplicates_dropped for r in done),
            "conflicting_duplicates": sum(r.conflicting_duplicates for r in done),
            # exact decimal text: read = accepted + quarantined + dropped
            **{k: decimal_text(sum_values(getattr(r, k) for r in done)) for k in VALUE_SUMS},
            "event_dates_touched": dg.MetadataValue.json(touched),
            "event_dates_of_skipped_files": dg.MetadataValue.json(earlier),
            "event_dates_outside_run": dg.MetadataValue.json(outside),
            "event_dates_without_partition": dg.MetadataValue.json(unpartitioned),
            "files": dg.MetadataValue.json([r.as_dict() for r in results]),
        },
        check_results=[
            dg.AssetCheckResult(check_name=CONSERVATION_CHECK, passed=conservation.passed,
                                metadata=conservation.metadata),
            dg.AssetCheckResult(check_name=UNIQUE_EVENT_ID_CHECK, passed=unique.passed, metadata=unique.metadata),
            dg.AssetCheckResult(check_name=READABLE_CHECK, passed=not unreadable,
                                severity=dg.AssetCheckSeverity.ERROR,
                                metadata={"unreadable_files": dg.MetadataValue.json(unreadable)}),
        ],
    )

