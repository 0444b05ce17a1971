"""`raw_usage_files_sensor`: notices new or changed files in `data/raw/` and asks for ingest runs.

Per tick:

1. **Wait for a file to stop changing.** A file whose size or mtime differs from what the cursor
   recorded is first put in `pending`; it is hashed and requested only when a later tick sees
   the same size and mtime (one tick, >= 30 s, of latency). Writers should still write to a
   temporary name (or another folder) and rename into `data/raw/`: a writer that pauses longer
   than a tick would otherwise be read half-written.
2. **Request new content.** A stable file is new only when its content hash differs from the one
   handed to a run before (touching a file requests nothing). All new files of a tick go to one
   run (in path order, so "first ingested wins" follows path order) with a run key derived from
   their content hashes, for one partition: the newest event date the files carry, clamped to
   the partitions that exist (the asset reports every other date it touches itself).
3. **Follow up on earlier requests.** Each handed file records its run key and attempt. A run that
   failed or was canceled (and that Dagster's own run retries will not retry) is requested again
   with `-attempt<N>` appended to the key, up to `MAX_ATTEMPTS` runs in all; then the sensor
   gives up on those files and logs how to ingest them by hand. A run key with no run at all
   (evaluated outside the daemon, or the run was deleted) is requested again under the same
   key: Dagster launches at most one run per key.
4. Entries of files that no longer exist are dropped.

Cursor (JSON): `{"version": 2, "files": {path: {sha256, size, mtime_ns, run_key, attempt, status}},
"pending": {path: {size, mtime_ns}}}`; status is requested | done | gave_up. A cursor that cannot
be read (other JSON, another version, missing keys) is dropped with a warning and the folder is
rescanned: every file is requested again, which is harmless because ingestion skips content it
already holds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from datetime import date
from pathlib import Path

import dagster as dg

from metering.ingest import expand_paths
from metering.ingest.peek import event_date_range
from metering.ingest.readers import file_hash
from pipelines.defs.ingest.assets import usage_events
from pipelines.partitions import daily_usage
from pipelines.resources import ProjectPaths
from pipelines.sensor_cursors import json_object, read_cursor, require_fields

SENSOR_NAME = "raw_usage_files_sensor"
CURSOR_VERSION = 2
MAX_ATTEMPTS = 3
"""Runs per set of files (the first request and two retries) before the sensor gives up on them."""
# Tags the sensor daemon puts on every run it launches for a RunRequest.
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"

REQUESTED, DONE, GAVE_UP = "requested", "done", "gave_up"
_RETRYABLE = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
MANUAL_INGEST = (
    "fix the cause (see that run's logs), then from the repo root either "
    "`dagster asset materialize -m pipelines.definitions --select usage_events --partition <event date>` "
    "(ingests every not-yet-ingested file under data/raw/) or `metering ingest <files>`; "
    f"`dagster sensor cursor {SENSOR_NAME} --delete` makes the sensor rescan data/raw/ instead"
)


@dataclass(frozen=True)
class _Stat:
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> _Stat:
        st = path.stat()
        return cls(st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class _Handed:
    """A file version handed to a run, and where that run stands."""

    sha256: str
    size: int
    mtime_ns: int
    run_key: str  # the base key; attempt N > 1 runs under f"{run_key}-attempt{N}"
    attempt: int
    status: str

    @property
    def stat(self) -> _Stat:
        return _Stat(self.size, self.mtime_ns)


@dataclass
class _Cursor:
    files: dict[str, _Handed]
    pending: dict[str, _Stat]

    def dumps(self) -> str:
        return json.dumps({"version": CURSOR_VERSION, "files": {k: asdict(v) for k, v in self.files.items()},
                           "pending": {k: asdict(v) for k, v in self.pending.items()}}, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> _Cursor:
        raw = require_fields(json_object(text, "a JSON object"), {"version": int, "files": dict, "pending": dict},
                             "cursor")
        if raw["version"] != CURSOR_VERSION:
            raise ValueError(f"cursor version {raw['version']}, expected {CURSOR_VERSION}")
        files = {path: _Handed(**require_fields(entry, {"sha256": str, "size": int, "mtime_ns": int, "run_key": str,
                                                        "attempt": int, "status": str}, path))
                 for path, entry in raw["files"].items()}
        if bad := {p: f.status for p, f in files.items() if f.status not in (REQUESTED, DONE, GAVE_UP)}:
            raise ValueError(f"unknown file status: {bad}")
        pending = {path: _Stat(**require_fields(entry, {"size": int, "mtime_ns": int}, path))
                   for path, entry in raw["pending"].items()}
        return cls(files, pending)


def run_key_for(base: str, attempt: int) -> str:
    """The run key of attempt `attempt` (1-based) of the request `base`."""
    return base if attempt == 1 else f"{base}-attempt{attempt}"


def _partition_for(paths: list[Path], context: dg.SensorEvaluationContext) -> str:
    """The newest event date the files carry, clamped to the existing partitions (today if none is found)."""
    keys = daily_usage.get_partition_keys(dynamic_partitions_store=None)
    newest: date | None = None
    for path in paths:
        try:
            found = event_date_range(path)
        except Exception as exc:  # noqa: BLE001 -- only a hint: the run names unreadable files
            context.log.warning(f"{path}: cannot peek at event dates ({exc}); the run will report it")
            continue
        if found and (newest is None or found[1] > newest):
            newest = found[1]
    if newest is None:
        return keys[-1]
    return min(max(newest.isoformat(), keys[0]), keys[-1])


def _request(context: dg.SensorEvaluationContext, paths: list[Path], base: str, attempt: int) -> dg.RunRequest:
    partition = _partition_for(paths, context)
    key = run_key_for(base, attempt)
    context.log.info(f"requesting run {key} (attempt {attempt}/{MAX_ATTEMPTS}) for partition {partition}: "
                     f"{[str(p) for p in paths]}")
    return dg.RunRequest(
        run_key=key,
        partition_key=partition,
        run_config={"ops": {"usage_events": {"config": {"files": [str(p) for p in paths]}}}},
        tags={"metering/files": str(len(paths)), "metering/attempt": str(attempt)},
    )


def _latest_run(instance: dg.DagsterInstance, run_key: str) -> dg.DagsterRun | None:
    # newest first: a run Dagster re-executed itself (run_retries) keeps the parent's tags
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: SENSOR_NAME}),
                             limit=1)
    return runs[0] if runs else None


def _follow_up(context: dg.SensorEvaluationContext, handed: dict[str, _Handed], present: dict[str, Path],
               skip: set[str]) -> list[dg.RunRequest]:
    """Update `handed` in place from the runs of earlier requests; return requests for files to try again.

    Files in `skip` (changing, or with new content requested this tick) are left alone: their
    earlier content is gone, so the earlier request must not be retried with what is there now.
    """
    groups: dict[tuple[str, int], list[str]] = {}
    for key, entry in handed.items():
        if entry.status == REQUESTED and key not in skip:
            groups.setdefault((entry.run_key, entry.attempt), []).append(key)
    requests = []
    for (base, attempt), keys in sorted(groups.items()):
        run_key = run_key_for(base, attempt)
        run = _latest_run(context.instance, run_key)
        if run is None:
            requests.append(_request(context, [present[k] for k in keys], base, attempt))
        elif run.status == dg.DagsterRunStatus.SUCCESS:
            handed.update({k: replace(handed[k], status=DONE) for k in keys})
        elif run.status in _RETRYABLE and not run.is_complete_and_waiting_to_retry:
            if attempt >= MAX_ATTEMPTS:
                handed.update({k: replace(handed[k], status=GAVE_UP) for k in keys})
                context.log.error(
                    f"giving up on {len(keys)} raw file(s) after {attempt} runs; the last, {run.run_id} "
                    f"(run key {run_key}), ended {run.status.value}: {keys}. To ingest them: {MANUAL_INGEST}")
                continue
            handed.update({k: replace(handed[k], attempt=attempt + 1) for k in keys})
            context.log.warning(f"run {run.run_id} (run key {run_key}) ended {run.status.value}; requesting its "
                                f"{len(keys)} file(s) again")
            requests.append(_request(context, [present[k] for k in keys], base, attempt + 1))
        # otherwise queued, running, or about to be re-executed by Dagster's run retries: wait
    return requests


@dg.sensor(
    name=SENSOR_NAME,
    target=[usage_events],
    minimum_interval_seconds=30,
    description="New raw usage files in data/raw/, once they stop changing -> usage_events runs; "
                f"files of failed or canceled runs are requested again (up to {MAX_ATTEMPTS} runs).",
)
def raw_usage_files_sensor(context: dg.SensorEvaluationContext, paths: ProjectPaths) -> dg.SensorResult:
    state = read_cursor(context, _Cursor.loads) or _Cursor({}, {})
    raw = paths.raw
    present = {str(p): p for p in (expand_paths([raw]) if raw.exists() else [])}
    handed = {k: v for k, v in state.files.items() if k in present}  # entries of deleted files go
    pending: dict[str, _Stat] = {}
    new: dict[str, tuple[str, _Stat]] = {}
    for key, path in present.items():
        stat = _Stat.of(path)
        entry = handed.get(key)
        if entry and entry.stat == stat:
            continue
        if state.pending.get(key) != stat:  # first seen like this: wait one tick for it to settle
            pending[key] = stat
            continue
        digest = file_hash(path)
        if entry and entry.sha256 == digest:  # touched, same content
            handed[key] = replace(entry, size=stat.size, mtime_ns=stat.mtime_ns)
        else:
            new[key] = (digest, stat)
    requests = _follow_up(context, handed, present, skip=set(pending) | set(new))
    if new:
        digests = sorted(digest for digest, _ in new.values())
        base = "usage_files_" + hashlib.sha256("\n".join(digests).encode()).hexdigest()[:32]
        handed.update({key: _Handed(digest, stat.size, stat.mtime_ns, base, 1, REQUESTED)
                       for key, (digest, stat) in new.items()})
        requests.append(_request(context, [present[k] for k in new], base, 1))
    cursor = _Cursor(handed, pending).dumps()
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor)
    waiting = f"; waiting for {len(pending)} file(s) to stop changing" if pending else ""
    return dg.SensorResult(skip_reason=dg.SkipReason(f"no new raw files in {raw}{waiting}"), cursor=cursor)
