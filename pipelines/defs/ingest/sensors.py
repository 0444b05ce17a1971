"""`raw_usage_files_sensor`: notices new or changed files in `data/raw/` and asks for ingest runs.

Per tick:

1. **Wait for a file to stop changing.** A file whose size or mtime differs from what the cursor
   recorded is first put in `pending`; it is hashed and requested only when a later tick sees
   the same size and mtime (one tick, >= 30 s, of latency). Writers should still write to a
   temporary name (or another folder) and rename into `data/raw/`: a writer that pauses longer
   than a tick would otherwise be read half-written.
2. **Follow up on earlier requests.** Each handed file records its run key and attempt. A request
   is done once its run succeeded (or at least its `usage_events` step did: a failed snapshot
   publish after it does not make the files be ingested again). A run that failed or was canceled
   (and that Dagster's own run retries will not retry) is requested again with `-attempt<N>`
   appended to the key, up to `MAX_ATTEMPTS` runs in all; then the sensor gives up on those files
   and logs how to ingest them by hand. A run key with no run at all (evaluated outside the
   daemon, or the run was deleted) is requested again under the same key: Dagster launches at
   most one run per key.
3. **Request new content, in arrival order.** A stable file is new only when its content hash
   differs from the one handed to a run before (touching a file requests nothing). New files are
   requested only when no earlier request is outstanding: while one is queued, running, failed
   and waiting for Dagster's run retry or for the sensor's next attempt, or given up, later files
   are held (kept in `pending` with the tick that first saw them stable, not hashed) and the tick says
   so. A request stays outstanding however its files look now: touching, rewriting, moving or deleting
   one does not release the files held behind it (a rewritten file's new content takes the earlier
   request's place once that request's run has ended without it). A file moved (renamed) within
   `data/raw/` keeps its place in line: a new path with the content of a handed file that is gone takes
   over its cursor entry (request, attempt, status), and one with the size and mtime of a held file
   gone since the last tick keeps its arrival. The dedupe rule is "the first
   version of an event ever ingested stays clean", so ingesting a later file before an earlier
   batch is retried could make a different version the billed one (I17). A batch the sensor gave
   up on holds later files until an operator acts (an ERROR when it gives up, a WARNING naming
   the held files on every tick after): proceeding would silently change what is billed once the
   given-up files are ingested, while holding only delays it. All new files of a tick (held ones
   included) go to one run, in arrival order (then path order among files first seen stable on one
   tick: the run ingests them in the order listed), with a run key of its own (a hash of their
   content hashes and the requesting tick's time: a rescan after a deleted cursor must not reuse the
   key of an earlier run, for which Dagster launches nothing), for one partition: the newest event date the files carry,
   clamped to the partitions that exist (the asset reports every other date it touches itself).
4. Entries of files that no longer exist are dropped once no longer requested (removing a given-up
   file from `data/raw/` releases the files held behind it): a requested file's entry stays until its
   run has ended (the run fails naming the missing file), and is then dropped, not retried.

Every request carries `as_of` in its config: the time of the tick that first requested those files,
kept in the cursor and passed again with every later attempt, so that future timestamps are judged
against the same instant however late a retry runs (a retry is then classified as the fault-free
run would have been: I17).

Cursor (JSON): `{"version": 2, "tick": N, "files": {path: {sha256, size, mtime_ns, run_key, attempt, status,
as_of}}, "pending": {path: {size, mtime_ns, arrival}}}` (files still changing, and files held behind an
earlier request with `arrival`, the `tick` that first saw them stable); status is requested | done |
gave_up. A cursor without `tick` or `arrival` (written before they were kept) is still read (unknown
arrivals: path order among them, as before). A cursor that cannot be read (other JSON, another
version, missing keys) is dropped with a warning and the folder is rescanned: every file is
requested again, in one run in path order, which is harmless because ingestion skips content it
already holds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime, timezone
from pathlib import Path

import dagster as dg

from metering import warehouse as metering_warehouse
from metering.errors import MeteringError
from metering.ingest import expand_paths
from metering.ingest.peek import event_date_range
from metering.ingest.readers import file_hash
from pipelines.cadence import SENSOR_STATUS
from pipelines.defs.ingest.jobs import ingest_job
from pipelines.partitions import daily_usage
from pipelines.resources import ProjectPaths, WarehouseResource
from pipelines.sensor_cursors import json_object, read_cursor, require_fields

SENSOR_NAME = "raw_usage_files_sensor"
CURSOR_VERSION = 2
MAX_ATTEMPTS = 3
MAX_REQUEST_BYTES = 256 * 2**20
"""The most file bytes one request takes (a larger single file goes alone): a tick hashes and peeks
every file it requests (about 4 s per 60 MB gzip of 3M events), and a tick past Dagster's 60 s timeout
saves no cursor, so a large backlog (or a rescan after the cursor is deleted) timed out on every tick.
The rest waits, in arrival order, for the next request (after this one's run is done)."""
"""Runs per set of files (the first request and two retries) before the sensor gives up on them."""
# Tags the sensor daemon puts on every run it launches for a RunRequest.
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
INGEST_STEP = "usage_events"

REQUESTED, DONE, GAVE_UP = "requested", "done", "gave_up"
RETRYABLE = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
MANUAL_INGEST = (
    "fix the cause (see that run's logs), then ingest exactly those files, in the order listed, with "
    "`metering ingest <files>` (not a whole-folder materialization, which would also take later files)"
)
RELEASE_HELD = (
    "later raw files wait for an operator (ingesting them first could change which version of a conflicting "
    "event is billed): once the given-up files are in the warehouse, the sensor releases the later ones by "
    "itself on its next tick; or remove the given-up files from data/raw/ to let the later ones go without them "
    f"(`DAGSTER_HOME=$PWD dagster sensor cursor {SENSOR_NAME} --delete`, from the repo root, makes it rescan "
    "data/raw/ in path order)"
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
    # the ingestion time every attempt judges future timestamps by: the first request's tick, so a
    # retry hours later classifies the rows as the first attempt would have (I17); "" in entries
    # written before the sensor kept it (their runs use the time they run)
    as_of: str = ""
    # the file's place in its request's list (the order its runs ingest the files): a retry lists them
    # in the same order; 0 in entries written before the sensor kept it (path order among them)
    position: int = 0

    @property
    def stat(self) -> _Stat:
        return _Stat(self.size, self.mtime_ns)


@dataclass
class _Cursor:
    files: dict[str, _Handed]
    pending: dict[str, _Stat]
    # held files: the tick that first saw them stable (`tick` below), so that they are requested in
    # the order they arrived; files still changing have none, and a cursor written before the sensor
    # kept it has none for its held files either (unknown: they take the arrival of the tick that reads
    # them, so they go in path order among themselves, as before)
    arrivals: dict[str, int] = field(default_factory=dict)
    tick: int = 0  # ticks evaluated since the cursor was started

    def dumps(self) -> str:
        return json.dumps({"version": CURSOR_VERSION, "tick": self.tick,
                           "files": {k: asdict(v) for k, v in self.files.items()},
                           "pending": {k: {**asdict(v), **({"arrival": self.arrivals[k]} if k in self.arrivals else {})}
                                       for k, v in self.pending.items()}}, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> _Cursor:
        raw = require_fields({"tick": 0, **json_object(text, "a JSON object")},
                             {"version": int, "tick": int, "files": dict, "pending": dict}, "cursor")
        if raw["version"] != CURSOR_VERSION:
            raise ValueError(f"cursor version {raw['version']}, expected {CURSOR_VERSION}")
        defaults = {"as_of": "", "position": 0}
        files = {path: _Handed(**require_fields({**defaults, **entry} if isinstance(entry, dict) else entry,
                                                {"sha256": str, "size": int, "mtime_ns": int, "run_key": str,
                                                 "attempt": int, "status": str, "as_of": str, "position": int},
                                                path))
                 for path, entry in raw["files"].items()}
        if bad := {p: f.status for p, f in files.items() if f.status not in (REQUESTED, DONE, GAVE_UP)}:
            raise ValueError(f"unknown file status: {bad}")
        pending = {path: require_fields(entry, {"size": int, "mtime_ns": int, "arrival": int}
                                        if isinstance(entry, dict) and "arrival" in entry
                                        else {"size": int, "mtime_ns": int}, path)
                   for path, entry in raw["pending"].items()}
        return cls(files, {path: _Stat(e["size"], e["mtime_ns"]) for path, e in pending.items()},
                   {path: e["arrival"] for path, e in pending.items() if "arrival" in e}, raw["tick"])


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


def _request(context: dg.SensorEvaluationContext, paths: list[Path], base: str, attempt: int,
             as_of: str) -> dg.RunRequest:
    partition = _partition_for(paths, context)
    key = run_key_for(base, attempt)
    context.log.info(f"requesting run {key} (attempt {attempt}/{MAX_ATTEMPTS}) for partition {partition}: "
                     f"{[str(p) for p in paths]}")
    config: dict[str, object] = {"files": [str(p) for p in paths]}
    if as_of:
        config["as_of"] = as_of
    return dg.RunRequest(
        run_key=key,
        partition_key=partition,
        run_config={"ops": {"usage_events": {"config": config}}},
        tags={"metering/files": str(len(paths)), "metering/attempt": str(attempt)},
    )


def latest_run(instance: dg.DagsterInstance, run_key: str, sensor_name: str = SENSOR_NAME) -> dg.DagsterRun | None:
    """The newest run a sensor requested under `run_key`: a run Dagster re-executed itself
    (run_retries) keeps the parent's tags."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: sensor_name}),
                             limit=1)
    return runs[0] if runs else None


def _ingest_step_succeeded(instance: dg.DagsterInstance, run_key: str) -> bool:
    """Whether a run of `run_key` (a Dagster retry included) completed its `usage_events` step.

    The ingest job ends with the analyst snapshot: a run that ingested and checked its files but
    failed to publish has still ingested them, in order.
    """
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key, SENSOR_NAME_TAG: SENSOR_NAME}))
    return any(stats.status is not None and stats.status.value == "SUCCESS"
               for run in runs for stats in instance.get_run_step_stats(run.run_id, step_keys=[INGEST_STEP]))


def _follow_up(context: dg.SensorEvaluationContext, handed: dict[str, _Handed], present: dict[str, Path],
               changing: set[str], replaced: set[str]) -> tuple[list[dg.RunRequest], set[str]]:
    """Update `handed` in place from the runs of earlier requests; return (requests for files to try
    again, files whose earlier request is over and whose content is gone).

    Requests with files in `changing` (not stable yet, or touched) are looked at on a later tick.
    Files in `replaced` (stable new content) and files no longer in `present` (moved away or deleted
    while their request was outstanding) are never retried: their earlier content is gone. Once
    their run is over without ingesting them, they are returned (superseded); while it is in flight,
    or once it is done or given up, they stay in it (the caller drops entries of files that are gone
    once they are no longer requested).
    """
    groups: dict[tuple[str, int], list[str]] = {}
    for key, entry in handed.items():
        if entry.status == REQUESTED:
            groups.setdefault((entry.run_key, entry.attempt), []).append(key)
    requests: list[dg.RunRequest] = []
    superseded: set[str] = set()
    for (base, attempt), keys in sorted(groups.items()):
        keys.sort(key=lambda k: (handed[k].position, k))   # the order the request listed them in
        if changing.intersection(keys):
            continue
        retry = [k for k in keys if k not in replaced and k in present]
        gone = replaced.union(k for k in keys if k not in present).intersection(keys)
        run_key = run_key_for(base, attempt)
        run = latest_run(context.instance, run_key)
        as_of = handed[keys[0]].as_of  # one request, one as_of
        if run is None:
            superseded.update(gone)
            if retry:
                requests.append(_request(context, [present[k] for k in retry], base, attempt, as_of))
        elif run.status == dg.DagsterRunStatus.SUCCESS or (
                run.status in RETRYABLE and _ingest_step_succeeded(context.instance, run_key)):
            handed.update({k: replace(handed[k], status=DONE) for k in keys})
        elif run.status in RETRYABLE and not run.is_complete_and_waiting_to_retry:
            if attempt >= MAX_ATTEMPTS:
                handed.update({k: replace(handed[k], status=GAVE_UP) for k in keys})
                context.log.error(
                    f"giving up on {len(keys)} raw file(s) after {attempt} runs; the last, {run.run_id} "
                    f"(run key {run_key}), ended {run.status.value}: {keys}. To ingest them: {MANUAL_INGEST}"
                    + (f" (add `--as-of {as_of}` to judge future timestamps as the runs did)" if as_of else "")
                    + f". Meanwhile {RELEASE_HELD}")
                continue
            superseded.update(gone)
            if not retry:
                continue
            handed.update({k: replace(handed[k], attempt=attempt + 1) for k in retry})
            context.log.warning(f"run {run.run_id} (run key {run_key}) ended {run.status.value}; requesting its "
                                f"{len(retry)} file(s) again")
            requests.append(_request(context, [present[k] for k in retry], base, attempt + 1, as_of))
        # otherwise queued, running, or about to be re-executed by Dagster's run retries: wait
    return requests, superseded


def _release_ingested(context: dg.SensorEvaluationContext, handed: dict[str, _Handed],
                      warehouse: WarehouseResource) -> None:
    """Mark `done` the files the sensor gave up on whose content the warehouse now holds: ingested by
    hand as the give-up message says, or committed by a run whose later step failed. Only read when
    there are such files; a warehouse a writer holds right now is read on a later tick."""
    given_up = {k: e for k, e in handed.items() if e.status == GAVE_UP}
    if not given_up:
        return
    try:
        con = metering_warehouse.connect(warehouse.path or None, read_only=True)
    except MeteringError:   # held by a writer, or not there yet: nothing to release now
        return
    try:
        held = {h for (h,) in con.execute("SELECT file_hash FROM ingested_files WHERE list_contains(?, file_hash)",
                                          [sorted({e.sha256 for e in given_up.values()})]).fetchall()}
    finally:
        con.close()
    released = sorted(k for k, e in given_up.items() if e.sha256 in held)
    if released:
        handed.update({k: replace(handed[k], status=DONE) for k in released})
        context.log.info(f"released {len(released)} given-up raw file(s) now in the warehouse: {released}")


def _outstanding(handed: dict[str, _Handed]) -> tuple[list[str], list[str]]:
    """(files of requests not done yet, files given up on), whatever their files look like now: a file
    touched, changing or rewritten still holds the later ones."""
    live = sorted(k for k, e in handed.items() if e.status == REQUESTED)
    gave_up = sorted(k for k, e in handed.items() if e.status == GAVE_UP)
    return live, gave_up


def _hash_or_note(path: Path, unreadable: dict[str, str]) -> str | None:
    """The file's content hash, or None with the reason noted in `unreadable` (no permission, an I/O error)."""
    try:
        return file_hash(path)
    except OSError as exc:
        unreadable[str(path)] = str(exc)
        return None


def _take_over_moved(context: dg.SensorEvaluationContext, handed: dict[str, _Handed], gone: dict[str, _Handed],
                     gone_held: dict[str, tuple[_Stat, int]], fresh: dict[str, _Stat], present: dict[str, Path],
                     unreadable: dict[str, str]) -> tuple[dict[str, str], dict[str, int]]:
    """Files moved (renamed) within data/raw/ keep their place in line; returns (content hashes computed
    here, {path: arrival inherited from a held file moved there}).

    A stable new path (in `fresh`) with the content of a handed file that is gone (`gone`: its request
    still outstanding, or gone since the last tick) takes over that file's entry, moved in `handed` and
    removed from `fresh`: its request, attempt and status go with it, so a request in flight still
    holds the later files and its retry ingests the moved file, a given-up file still holds them, and
    a done one is not requested again. One with the size and mtime of a held file gone since the last
    tick (held files are not hashed) keeps that file's arrival. Only new paths of the size of a gone
    entry are hashed for this.
    """
    known: dict[str, str] = {}
    inherited: dict[str, int] = {}
    claimable = dict(gone)
    held = dict(gone_held)
    for key in sorted(fresh):
        stat = fresh[key]
        candidates = sorted((k for k, e in claimable.items() if e.size == stat.size),
                            key=lambda k: (claimable[k].status != REQUESTED, k))
        digest = _hash_or_note(present[key], unreadable) if candidates else None
        if digest is not None:
            known[key] = digest
            if match := next((k for k in candidates if claimable[k].sha256 == digest), None):
                entry = claimable.pop(match)
                handed.pop(match, None)
                handed[key] = replace(entry, size=stat.size, mtime_ns=stat.mtime_ns)
                del fresh[key]
                context.log.info(f"{match} moved to {key}: it keeps its place (status {entry.status}, "
                                 f"run key {run_key_for(entry.run_key, entry.attempt)})")
                continue
        if match := next((k for k, (s, _) in sorted(held.items(), key=lambda kv: kv[1][1]) if s == stat), None):
            inherited[key] = held.pop(match)[1]
            context.log.info(f"held file {match} moved to {key}: it keeps its arrival")
    return known, inherited


def tick_run_key(prefix: str, parts: list[str], requested_at: datetime) -> str:
    """A base run key of its own for every request: what it requests (the files' content hashes, the
    landing files' sizes) and the time of the tick that requests it (to the microsecond). Content alone
    would give the same key to a request of the same files after a cursor was deleted, and Dagster
    launches no run for a key it has seen."""
    text = "\n".join([requested_at.isoformat(), *sorted(parts)])
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:32]


@dg.sensor(
    name=SENSOR_NAME,
    target=ingest_job,
    minimum_interval_seconds=30,
    default_status=SENSOR_STATUS,
    description="New raw usage files in data/raw/, once they stop changing -> ingest_job runs, one batch at a "
                f"time in arrival order; files of failed or canceled runs are requested again (up to "
                f"{MAX_ATTEMPTS} runs), and later files wait until they are done.",
)
def raw_usage_files_sensor(context: dg.SensorEvaluationContext, paths: ProjectPaths,
                           warehouse: WarehouseResource) -> dg.SensorResult:
    state = read_cursor(context, _Cursor.loads) or _Cursor({}, {})
    tick = state.tick + 1
    raw = paths.raw
    present = {str(p): p for p in (expand_paths([raw]) if raw.exists() else [])}
    # entries of deleted files go, but a request stays outstanding until its run is seen to end
    # (`_follow_up`), whatever happened to its files: it holds the later files until then
    handed = {k: v for k, v in state.files.items() if k in present or v.status == REQUESTED}
    # files gone since the last tick, or whose request is still outstanding: a new path may be one of
    # them moved (renamed) within data/raw/, which keeps its place in line (below)
    gone = {k: v for k, v in state.files.items() if k not in present}
    gone_held = {k: (v, state.arrivals[k]) for k, v in state.pending.items()
                 if k not in present and k in state.arrivals}
    moved_stats = {e.stat for e in gone.values()} | {stat for stat, _ in gone_held.values()}
    pending: dict[str, _Stat] = {}
    fresh: dict[str, _Stat] = {}  # stable, never handed: hashed only once it can be requested
    new: dict[str, tuple[str, _Stat]] = {}
    unreadable: dict[str, str] = {}
    settling_held: dict[str, int] = {}   # held files changing again (a touch, a copy over): their arrivals
    for key, path in present.items():
        try:
            stat = _Stat.of(path)
        except OSError as exc:  # gone since the listing, a dangling link: nothing to do with it now
            unreadable[key] = str(exc)
            continue
        entry = handed.get(key)
        if entry and entry.stat == stat:
            continue
        # a new path with the size and mtime of a stable file now gone is that file moved (mv keeps
        # both): it is not being written, and is matched below on the tick that sees the move, before
        # the request it belongs to may be seen to end and the files held behind it go
        moved_here = entry is None and key not in state.pending and stat in moved_stats
        if state.pending.get(key) != stat and not moved_here:  # first seen like this: wait one tick to settle
            pending[key] = stat
            if key in state.arrivals:   # held before: it keeps its place, and the files after it wait
                settling_held[key] = state.arrivals[key]
            continue
        if entry is None:
            fresh[key] = stat
            continue
        digest = _hash_or_note(path, unreadable)
        if digest is None:   # changed, content unknown: new content the sensor cannot read, held in order
            fresh[key] = stat
            continue
        if entry.sha256 == digest:  # touched, same content
            handed[key] = replace(entry, size=stat.size, mtime_ns=stat.mtime_ns)
        else:
            new[key] = (digest, stat)
    known, inherited = _take_over_moved(context, handed, gone, gone_held, fresh, present, unreadable)
    arrived = set(fresh) | set(new)
    requests, superseded = _follow_up(context, handed, present, changing=set(pending), replaced=set(new))
    for key in superseded:  # its earlier request ended and cannot be retried: the new content takes its place
        del handed[key]
    for key in [k for k, e in handed.items() if k not in present and e.status != REQUESTED]:
        del handed[key]   # gone, and its request is over (done, or given up: that releases the later files)
    # arrival order: the tick that first saw a file stable (one already held keeps its own, and so does one
    # moved; new content that took an earlier request's place goes first), then path
    arrival = {k: 0 if k in superseded else state.arrivals.get(k, inherited.get(k, tick)) for k in arrived}
    order = sorted(arrived, key=lambda k: (arrival[k], k))
    _release_ingested(context, handed, warehouse)
    live, gave_up = _outstanding(handed)
    held = order if live or gave_up else []
    if held:  # back to pending: requested once the earlier files are done (no need to settle again)
        pending.update(fresh)
        pending.update({k: stat for k, (_, stat) in new.items()})
        if gave_up:
            context.log.warning(f"holding {len(held)} new raw file(s) {held} behind {len(gave_up)} file(s) the "
                                f"sensor gave up on {gave_up}: {RELEASE_HELD}")
        else:
            context.log.info(f"holding {len(held)} new raw file(s) until the earlier request of {live} is done "
                             f"(ingestion follows arrival order)")
    elif arrived:
        # hashed in arrival order. A file the sensor cannot read (permissions, an I/O error) holds itself
        # and every later file, with a warning each tick, as a batch given up on does: a later file
        # ingested first could change which version of a conflicting event is billed. The earlier files
        # go. (Failing the tick instead stalled every file; leaving the file out let later ones pass it.)
        # a held file changing again (an operator copying a readable version over it) keeps its place:
        # the files after it in `order` (arrival, then path: also those of its own tick) wait until it
        # has settled and gone
        first_changing = min(((a, k) for k, a in settling_held.items()), default=None)
        taken = 0
        capped = False
        for i, key in enumerate(order):
            if first_changing is not None and (arrival[key], key) > first_changing:
                order, held = order[:i], order[i:]
                break
            size = (fresh.get(key) or new[key][1]).size
            if i and taken + size > MAX_REQUEST_BYTES:
                order, held, capped = order[:i], order[i:], True
                break
            taken += size
            digest = (new[key][0] if key in new else None if key in unreadable
                      else known.get(key) or _hash_or_note(present[key], unreadable))
            if digest is None:
                order, held = order[:i], order[i:]
                break
            new[key] = (digest, fresh.get(key) or new[key][1])
        for key in held:
            pending[key] = new.pop(key)[1] if key in new else fresh[key]
        if capped:
            context.log.info(f"requesting {len(order)} raw file(s) ({taken:,} bytes) now and holding {len(held)} "
                             f"for later requests: a request takes at most {MAX_REQUEST_BYTES:,} bytes so a tick "
                             f"stays within Dagster's sensor timeout (ingestion follows arrival order)")
        elif held and held[0] in unreadable:
            context.log.warning(f"holding {len(held)} new raw file(s) {held} in arrival order behind one the sensor "
                                f"cannot read, {held[0]} ({unreadable[held[0]]}): make it readable, or remove it "
                                f"from data/raw/ to let the later ones go without it")
        elif held:
            context.log.info(f"holding {len(held)} new raw file(s) {held} behind earlier held file(s) changing "
                             f"again {sorted(settling_held)} (ingestion follows arrival order)")
    if order and not (live or gave_up):
        now = datetime.now(timezone.utc)
        base = tick_run_key("usage_files_", [digest for digest, _ in new.values()], now)
        as_of = now.replace(microsecond=0).isoformat()
        handed.update({key: _Handed(new[key][0], new[key][1].size, new[key][1].mtime_ns, base, 1, REQUESTED, as_of, i)
                       for i, key in enumerate(order)})
        requests.append(_request(context, [present[k] for k in order], base, 1, as_of))  # arrival order
    if unreadable:
        context.log.warning(f"cannot read {len(unreadable)} raw file(s): {unreadable}")
    cursor = _Cursor(handed, pending, {**settling_held, **{k: arrival[k] for k in held}}, tick).dumps()
    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor)
    if held:
        why = (f"the sensor gave up on {len(gave_up)} earlier file(s), so these wait for an operator (see the "
               f"warning)" if gave_up else f"an earlier request of {len(live)} file(s) is not done yet" if live
               else f"the sensor cannot read {held[0]}, which came first (see the warning)" if held[0] in unreadable
               else f"earlier held file(s) {sorted(settling_held)} are changing again")
        return dg.SensorResult(skip_reason=dg.SkipReason(f"holding {len(held)} new raw file(s): {why}"),
                               cursor=cursor)
    waiting = f"; waiting for {len(pending)} file(s) to stop changing" if pending else ""
    missing = "" if raw.is_dir() else " (the folder does not exist: check ProjectPaths.raw_dir)"
    return dg.SensorResult(skip_reason=dg.SkipReason(f"no new raw files in {raw}{missing}{waiting}"), cursor=cursor)
