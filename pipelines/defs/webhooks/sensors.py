"""`stripe_landing_sensor`: start a landing run when landing files grow."""

from __future__ import annotations

import hashlib
import json

import dagster as dg

from metering.webhooks.landing import landing_sizes
from pipelines.defs.webhooks.assets import landing_folder
from pipelines.resources import ProjectPaths
from pipelines.sensor_cursors import json_object, read_cursor


def _sizes(text: str) -> dict[str, int]:
    sizes = json_object(text, "{landing file name: size}")
    if bad := {k: v for k, v in sizes.items() if type(v) is not int}:
        raise ValueError(f"sizes must be integers: {bad}")
    return sizes


def build_landing_sensor(job: dg.UnresolvedAssetJobDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name="stripe_landing_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def stripe_landing_sensor(context: dg.SensorEvaluationContext, paths: ProjectPaths):
        """Cursor: landing file name -> size already requested. Any growth requests one run, which
        lands everything new (the asset reads from offsets stored in the warehouse, so a run that
        covers more than the cursor saw is harmless; so is an unreadable cursor, dropped with a
        warning: every non-empty file then counts as grown)."""
        seen = read_cursor(context, _sizes) or {}
        sizes = landing_sizes(landing_folder(paths))
        grown = {name: size for name, size in sizes.items() if size > seen.get(name, 0)}
        cursor = json.dumps(sizes, sort_keys=True)  # files removed from the folder drop out of the cursor
        context.update_cursor(cursor)  # also when skipping, so an unreadable cursor is replaced at once
        if not grown:
            return dg.SkipReason("no new landed webhooks")
        run_key = hashlib.sha256(cursor.encode()).hexdigest()[:16]
        return dg.RunRequest(run_key=run_key, tags={"stripe/landing_files_grown": str(len(grown))})

    return stripe_landing_sensor
