"""`analyst_snapshot`: the last step of every job that writes the warehouse.

DESIGN: analysts read a published read-only copy of the warehouse, swapped in atomically after each
job, so a running job never locks them out. `metering publish` cannot copy while a job holds the
warehouse (it exits 6 and says to publish from that job), so the job publishes itself: this asset
is in the writer pool and copies through its own writer connection (`metering.warehouse.publish`
with `con=`).

It depends on every asset that writes the warehouse, so in any job that selects it, it runs after
all of that job's other assets; every warehouse job adds it with `with_snapshot(...)` (a test in
tests/test_definitions.py keeps both lists complete). It is skipped when an earlier step of the run
fails, a failed blocking check included: analysts keep the previous snapshot, and never get one
taken from a run that did not finish.

No `from __future__ import annotations` here: Dagster resolves the context annotation at runtime.
"""

import dagster as dg

from pipelines.resources import WAREHOUSE_POOL, WarehouseResource

GROUP = "publish"
SNAPSHOT_KEY = dg.AssetKey("analyst_snapshot")

WAREHOUSE_WRITERS = [
    dg.AssetKey(name) for name in (
        # ingest
        "usage_events",
        # rating
        "customer_plans", "usage_aggregates", "rated_usage", "invoice_previews",
        # stripe push
        "stripe_catalog", "stripe_usage_pushes", "stripe_invoice_items",
        # webhooks -> Stripe state
        "stripe_webhook_events", "stripe_invoices", "stripe_subscriptions", "stripe_payment_attempts",
        # dunning
        "dunning_state", "dunning_actions",
        # reconciliation
        "stripe_meter_summaries", "stripe_invoice_lines", "usage_reconciliation", "finance_report",
    )
]
"""Every asset in the writer pool: the snapshot comes after whichever of them a job runs."""


def with_snapshot(selection: dg.AssetSelection) -> dg.AssetSelection:
    """`selection` plus `analyst_snapshot`, which then runs last in the job."""
    return selection | dg.AssetSelection.assets(SNAPSHOT_KEY)


@dg.asset(
    key=SNAPSHOT_KEY,
    group_name=GROUP,
    pool=WAREHOUSE_POOL,
    kinds={"duckdb"},
    deps=WAREHOUSE_WRITERS,
)
def analyst_snapshot(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """One DuckDB file (`data/snapshot.duckdb`, or `$METERING_SNAPSHOT`): every warehouse table plus the
    `analytics` views, for analysts to open read-only.

    Source: the warehouse, copied through this job's own writer connection at the end of the job and
    swapped in atomically (`metering.warehouse.publish`); readers of the old file keep it open.
    """
    with warehouse.get_connection() as con:
        dest = warehouse.publish(con)
        events = con.execute("SELECT count(*) FROM usage_events").fetchone()[0]
    context.log.info(f"published the analyst snapshot {dest}")
    return dg.MaterializeResult(metadata={
        "path": dg.MetadataValue.path(str(dest)),
        "bytes": dest.stat().st_size,
        "usage_events": events,
    })
