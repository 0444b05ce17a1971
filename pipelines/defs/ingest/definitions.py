"""The ingest domain: `usage_events` (daily, by UTC event date) fed by `raw_usage_files_sensor`."""

from __future__ import annotations

import dagster as dg

from pipelines.defs.ingest.assets import usage_events
from pipelines.defs.ingest.jobs import ingest_job
from pipelines.defs.ingest.sensors import raw_usage_files_sensor

defs = dg.Definitions(assets=[usage_events], sensors=[raw_usage_files_sensor], jobs=[ingest_job])
