"""`stripe_landing_sensor`: start a landing run when landing files grow, and again when that run fails.

Cursor (JSON): `{"version": 2, "sizes": {landing file name: size already requested}, "run_key": base
key of the last request not known to have succeeded ("" if none), "attempt": its attempt (0 if none)}`.
A cursor of an older version (the bare sizes map) is read as sizes with no request to follow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone

import dagster as dg

from metering.webhooks.landing import landing_sizes
from pipelines.defs.ingest.sensors import RETRYABLE, latest_run, run_key_for, tick_run_key
from pipelines.defs.webhooks.assets import landing_folder
from pipelines.resources import ProjectPaths
from pipelines.sensor_cursors import json_object, read_cursor, require_fields

SENSOR_NAME = "stripe_landing_sensor"
CURSOR_VERSION = 2
MAX_ATTEMPTS = 3
"""Runs per request (the first and two retries) before the sensor gives up until files grow again."""


def _sizes(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise ValueError(f"expected {{landing file name: size}}, got {type(value).__name__}")
    if bad := {k: v for k, v in value.items() if type(v) is not int}:
        raise ValueError(f"sizes must be integers: {bad}")
    return value


@dataclass(frozen=True)
class _Cursor:
    sizes: dict[str, int]
    run_key: str = ""  # base key of the request being followed; attempt N > 1 runs under run_key_for(base, N)
    attempt: int = 0

    def dumps(self) -> str:
        return json.dumps({"version": CURSOR_VERSION, "sizes": self.sizes, "run_key": self.run_key,
                           "attempt": self.attempt}, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> _Cursor:
        raw = json_object(text, "a JSON object")
        if "version" not in raw:  # written before the sensor followed its runs: nothing to follow
            return cls(_sizes(raw))
        raw = require_fields(raw, {"version": int, "sizes": dict, "run_key": str, "attempt": int}, "cursor")
        if raw["version"] != CURSOR_VERSION:
            raise ValueError(f"cursor version {raw['version']}, expected {CURSOR_VERSION}")
        return cls(_sizes(raw["sizes"]), raw["run_key"], raw["attempt"])


def _request(context: dg.SensorEvaluationContext, base: str, attempt: int, grown: int) -> dg.RunRequest:
    key = run_key_for(base, attempt)
    context.log.info(f"requesting landing run {key} (attempt {attempt}/{MAX_ATTEMPTS})")
    return dg.RunRequest(run_key=key, tags={"stripe/landing_files_grown": str(grown),
                                            "stripe/landing_attempt": str(attempt)})


def _follow_up(context: dg.SensorEvaluationContext, state: _Cursor) -> tuple[_Cursor, dg.RunRequest | None]:
    """The cursor after looking up the run of the followed request, and a request to try it again."""
    key = run_key_for(state.run_key, state.attempt)
    run = latest_run(context.instance, key, SENSOR_NAME)
    if run is None or (run.status not in RETRYABLE and run.status != dg.DagsterRunStatus.SUCCESS) \
            or run.is_complete_and_waiting_to_retry:
        return state, None  # not launched yet, queued, running, or about to be retried by Dagster: wait
    done = _Cursor(state.sizes)
    if run.status == dg.DagsterRunStatus.SUCCESS:
        return done, None
    if state.attempt >= MAX_ATTEMPTS:
        context.log.error(
            f"giving up on landing after {state.attempt} runs; the last, {run.run_id} (run key {key}), ended "
            f"{run.status.value}. Fix the cause (see that run's logs), then run stripe_state_job or "
            f"`metering webhooks land`; the next webhook to arrive also requests a landing run")
        return done, None
    context.log.warning(f"landing run {run.run_id} (run key {key}) ended {run.status.value}; requesting it again")
    retry = _Cursor(state.sizes, state.run_key, state.attempt + 1)
    return retry, _request(context, state.run_key, retry.attempt, grown=0)


def _in_flight(context: dg.SensorEvaluationContext, state: _Cursor) -> dg.DagsterRun | None:
    """The run of the followed request if it exists and has not finished (or Dagster will retry it)."""
    if not state.run_key:
        return None
    run = latest_run(context.instance, run_key_for(state.run_key, state.attempt), SENSOR_NAME)
    if run is None or (run.is_finished and not run.is_complete_and_waiting_to_retry):
        return None
    return run


def build_landing_sensor(job: dg.UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name=SENSOR_NAME,
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def stripe_landing_sensor(context: dg.SensorEvaluationContext, paths: ProjectPaths):
        """Any growth of a landing file requests one run, which lands everything new (the asset reads
        from offsets stored in the warehouse, so a run that covers more than the cursor saw is
        harmless; so is an unreadable cursor, dropped with a warning: every non-empty file then counts
        as grown). A run that failed or was canceled is requested again under `<key>-attempt<N>`, up
        to `MAX_ATTEMPTS` runs; a newer request replaces it, as it lands the same records and more."""
        state = read_cursor(context, _Cursor.loads) or _Cursor({})
        sizes = landing_sizes(landing_folder(paths))  # files removed from the folder drop out of the cursor
        grown = {name: size for name, size in sizes.items() if size > state.sizes.get(name, 0)}
        if grown and (busy := _in_flight(context, state)):
            # the run asked for is queued or running: another would pile up behind the writer slot (each
            # also rebuilds the snapshot). The cursor keeps the old sizes, so the growth is asked for once
            # that run has ended, and it lands everything new, as it reads from the stored offsets
            return dg.SkipReason(f"landing files grew; waiting for landing run {busy.run_id} ({busy.status.value})")
        if grown:
            base = tick_run_key("landing_", [f"{name}={size}" for name, size in sizes.items()],
                                datetime.now(timezone.utc))
            context.update_cursor(_Cursor(sizes, base, 1).dumps())
            return _request(context, base, 1, len(grown))
        state, retry = _follow_up(context, state) if state.run_key else (state, None)
        # also when skipping, so an unreadable cursor is replaced at once
        context.update_cursor(_Cursor(sizes, state.run_key, state.attempt).dumps())
        return retry or dg.SkipReason("no new landed webhooks")

    return stripe_landing_sensor
