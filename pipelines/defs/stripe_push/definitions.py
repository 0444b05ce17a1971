"""The Stripe push domain: `stripe_catalog` (meters, prices, customers) and `stripe_usage_pushes` (daily).

    dagster asset materialize -m pipelines.definitions --select stripe_catalog
    dagster asset materialize -m pipelines.definitions --select stripe_usage_pushes --partition 2026-10-05
"""

from __future__ import annotations

import dagster as dg

from pipelines.defs.publish.assets import with_snapshot
from pipelines.defs.stripe_push.assets import GROUP, STRIPE_PUSH_ASSETS

stripe_push_job = dg.define_asset_job(
    "stripe_push_job",
    selection=with_snapshot(dg.AssetSelection.assets("stripe_usage_pushes")),
    description="Push one day's usage totals to Stripe through the outbox ledger.",
)

defs = dg.Definitions(
    assets=STRIPE_PUSH_ASSETS,
    jobs=[stripe_push_job],
)

__all__ = ["GROUP", "defs"]
