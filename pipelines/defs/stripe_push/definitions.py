"""The Stripe push domain: `stripe_catalog` (meters, prices, customers), `stripe_usage_pushes` (daily) and
`stripe_invoice_items` (monthly: the closed periods' charges Stripe cannot price).

    dagster asset materialize -m pipelines.definitions --select stripe_catalog
    dagster asset materialize -m pipelines.definitions --select stripe_usage_pushes --partition 2026-10-05
    dagster asset materialize -m pipelines.definitions --select stripe_invoice_items --partition 2026-10-01
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

invoice_items_job = dg.define_asset_job(
    "invoice_items_job",
    selection=with_snapshot(dg.AssetSelection.assets("stripe_invoice_items")),
    description="Bill a month's closed charges Stripe cannot price (minimums, dimension filters) as invoice items.",
)

defs = dg.Definitions(
    assets=STRIPE_PUSH_ASSETS,
    jobs=[stripe_push_job, invoice_items_job],
)

__all__ = ["GROUP", "defs"]
