"""`raw_usage_files_sensor`: notices new or changed files in `data/raw/` and asks for one ingest run.

Cursor: JSON `{path: {"sha256": ..., "size": ..., "mtime_ns": ...}}` of the files already handed
to a run. A file is re-hashed only when its size or mtime changed, and it is new to the sensor
only when its content hash changed. Each tick with new files issues one run (files in path
order, so "first ingested wins" follows path order) whose run key is derived from the content
hashes (the same files never launch twice) and whose partition range spans the event dates the
files carry (clamped to the partitions that exist).
"""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import dagster as dg

from metering.errors import BadInputError
from metering.ingest import expand_paths
from metering.ingest.peek import event_date_range
from metering.ingest.readers import file_hash
from pipelines.defs.ingest.assets import usage_events
from pipelines.partitions import daily_usage
from pipelines.resources import ProjectPaths


def _clamp(day: date, keys: list[str]) -> str:
    iso = day.isoformat()
    return min(max(iso, keys[0]), keys[-1])


@dg.sensor(
    name="raw_usage_files_sensor",
    target=[usage_events],
    minimum_interval_seconds=30,
    description="New raw usage files in data/raw/ -> one usage_events run over the event dates they carry.",
)
def raw_usage_files_sensor(context: dg.SensorEvaluationContext, paths: ProjectPaths) -> dg.SensorResult:
    seen: dict[str, dict] = json.loads(context.cursor) if context.cursor else {}
    raw = paths.raw
    files = expand_paths([raw]) if raw.exists() else []
    new_files: list[Path] = []
    cursor = dict(seen)
    for path in files:
        stat = path.stat()
        key = str(path)
        before = seen.get(key)
        if before and before["size"] == stat.st_size and before["mtime_ns"] == stat.st_mtime_ns:
            continue
        digest = file_hash(path)
        cursor[key] = {"sha256": digest, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if before and before["sha256"] == digest:
            continue
        new_files.append(path)
    if not new_files:
        return dg.SensorResult(skip_reason=dg.SkipReason(f"no new raw files in {raw}"), cursor=json.dumps(cursor))
    ranges = []
    for path in new_files:
        try:
            found = event_date_range(path)
        except (BadInputError, Exception) as exc:  # the run reports unreadable files; here only a hint
            context.log.warning(f"{path}: cannot peek at event dates ({exc}); the run will report it")
            found = None
        if found:
            ranges.append(found)
    keys = daily_usage.get_partition_keys(dynamic_partitions_store=None)
    if ranges:
        start, end = _clamp(min(r[0] for r in ranges), keys), _clamp(max(r[1] for r in ranges), keys)
    else:
        start = end = keys[-1]
    hashes = sorted(cursor[str(p)]["sha256"] for p in new_files)
    run_key = "usage_files_" + hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:32]
    request = dg.RunRequest(
        run_key=run_key,
        run_config={"ops": {"usage_events": {"config": {"files": [str(p) for p in new_files]}}}},
        tags={"dagster/asset_partition_range_start": start, "dagster/asset_partition_range_end": end,
              "metering/files": str(len(new_files))},
    )
    context.log.info(f"{len(new_files)} new raw file(s): one run over {start}..{end}")
    return dg.SensorResult(run_requests=[request], cursor=json.dumps(cursor))
