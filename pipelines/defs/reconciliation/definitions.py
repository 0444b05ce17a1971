"""The reconciliation domain: Stripe pulls -> usage_reconciliation (blocking check) -> finance_report."""

from __future__ import annotations

import dagster as dg

from pipelines.defs.publish.assets import with_snapshot
from pipelines.defs.reconciliation.assets import GROUP, RECONCILIATION_ASSETS

reconciliation_job = dg.define_asset_job(
    "reconciliation_job",
    selection=with_snapshot(dg.AssetSelection.groups(GROUP)),
    description="Pull Stripe's meters and invoices for a closed billing month, reconcile, write the report.",
)

defs = dg.Definitions(
    assets=RECONCILIATION_ASSETS,
    jobs=[reconciliation_job],
)
# The Stripe client is the shared resource key `stripe` (pipelines.resources.StripeResource).
