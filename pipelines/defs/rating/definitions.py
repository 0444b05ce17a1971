"""The rating domain: customer_plans, usage_aggregates (daily), rated_usage and invoice_previews (monthly).

Backfill / re-rate a range from Dagster (same code as `metering rerate`):

    dagster asset materialize -m pipelines.definitions --select usage_aggregates \
        --partition-range 2026-10-01...2026-10-31
    dagster asset materialize -m pipelines.definitions --select 'rated_usage,invoice_previews' \
        --partition 2026-10-01
"""

from __future__ import annotations

import dagster as dg

from pipelines.defs.publish.assets import with_snapshot
from pipelines.defs.rating.assets import GROUP, RATING_ASSETS, usage_aggregates


usage_aggregation_job = dg.define_asset_job(
    "usage_aggregation_job",
    selection=with_snapshot(dg.AssetSelection.assets(usage_aggregates)),
    description="Rebuild the hourly usage aggregates of one event date.",
)

billing_job = dg.define_asset_job(
    "billing_job",
    selection=with_snapshot(dg.AssetSelection.assets("rated_usage", "invoice_previews")),
    description="Rate the billing periods starting in a month and refresh their invoice previews.",
)

defs = dg.Definitions(assets=RATING_ASSETS, jobs=[usage_aggregation_job, billing_job])

__all__ = ["GROUP", "defs"]
