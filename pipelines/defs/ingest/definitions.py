"""The ingest domain: `usage_events` (daily, by UTC event date) fed by `raw_usage_files_sensor`."""

from __future__ import annotations

import dagster as dg

from pipelines.defs.ingest.assets import usage_events
from pipelines.defs.ingest.sensors import raw_usage_files_sensor

ingest_job = dg.define_asset_job(
    "ingest_job", selection=dg.AssetSelection.assets(usage_events),
    description="Ingest new raw usage files (the sensor launches it; see the asset's docstring).",
)

defs = dg.Definitions(assets=[usage_events], sensors=[raw_usage_files_sensor], jobs=[ingest_job])
