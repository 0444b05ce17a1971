"""`ingest_job`: what `raw_usage_files_sensor` launches (in its own module, so the sensor can target it)."""

from __future__ import annotations

import dagster as dg

from pipelines.defs.ingest.assets import usage_events
from pipelines.defs.publish.assets import with_snapshot

ingest_job = dg.define_asset_job(
    "ingest_job", selection=with_snapshot(dg.AssetSelection.assets(usage_events)),
    description="Ingest new raw usage files (the sensor launches it; see the asset's docstring), then publish "
                "the analyst snapshot.",
)
