"""The publish domain: `analyst_snapshot`, which every warehouse job runs last (see its module)."""

from __future__ import annotations

import dagster as dg

from pipelines.defs.publish.assets import analyst_snapshot

defs = dg.Definitions(assets=[analyst_snapshot])
