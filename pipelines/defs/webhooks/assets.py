"""Stripe state assets: each calls into `metering.webhooks`; this file only wires Dagster."""


import inspect
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import duckdb

from metering.webhooks import events, landing, repair, state
from pipelines.resources import StripeResource
from pipelines.resources import WAREHOUSE_POOL, ProjectPaths, WarehouseResource

GROUP = "stripe_state"


def landing_folder(paths: ProjectPaths) -> Path:
    """`paths.data_dir`/landing/stripe when the resource sets a data dir, else the env-aware default."""
    return Path(paths.data_dir) / "landing" / "stripe" if paths.data_dir else landing.landing_dir()


class StripeEventsConfig(dg.Config):
    repair: bool = False
    """Also list Stripe's /v1/events (30 days) and fill gaps, re-fetching the objects involved."""
    refetch: bool = True


@dg.asset(
    group_name=GROUP,
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "stripe"},
)
def stripe_webhook_events(
    context: dg.AssetExecutionContext,
    config: StripeEventsConfig,
    warehouse: WarehouseResource,
    paths: ProjectPaths,
    stripe: StripeResource,
) -> dg.MaterializeResult:
    """One row per Stripe event id: first receipt's raw JSON, receipts counted, source webhook|repair.

    Source: the webhook receiver's landing files (read from stored offsets), plus Stripe's
    `/v1/events` list when run with `repair: true` (the `stripe_repair_job`).
    """
    folder = landing_folder(paths)
    with warehouse.get_connection() as con:
        landed = events.land_directory(con, folder)
        metadata: dict[str, object] = {f"landing/{k}": v for k, v in landed.as_dict().items()}
        if config.repair:
            stats = repair.repair_events(con, stripe.get_client(), refetch=config.refetch)
            metadata.update({f"repair/{k}": v for k, v in stats.as_dict().items()})
        totals = events.event_counts(con)
    metadata.update(totals)
    metadata["dagster/row_count"] = totals["events"]
    metadata["landing_folder"] = str(folder)
    context.log.info(f"stripe events: {totals}")
    return dg.MaterializeResult(metadata=metadata)


def _state_asset(name: str, rebuild: Callable[[duckdb.DuckDBPyConnection], dict[str, int]],
                 doc: str) -> dg.AssetsDefinition:
    """One asset that rebuilds a Stripe state table with `rebuild`; `doc` becomes its description."""
    @dg.asset(
        name=name,
        description=inspect.cleandoc(doc),  # @asset reads the function's docstring, which is empty here
        group_name=GROUP,
        pool=WAREHOUSE_POOL,
        kinds={"duckdb"},
        deps=[stripe_webhook_events],
    )
    def _asset(warehouse: WarehouseResource) -> dg.MaterializeResult:
        with warehouse.get_connection() as con:
            counts = rebuild(con)
        return dg.MaterializeResult(metadata={**counts, "dagster/row_count": next(iter(counts.values()))})

    return _asset


stripe_invoices = _state_asset(
    "stripe_invoices",
    state.rebuild_invoices,
    """One row per Stripe invoice (its newest known version), plus `stripe_invoice_lines` (one row
    per line of that version, source 'webhook'). Source: stripe_webhook_events + repair snapshots,
    ordered by event `created`, then snapshot, status precedence, attempt_count, event id.""",
)
stripe_subscriptions = _state_asset(
    "stripe_subscriptions",
    state.rebuild_subscriptions,
    """One row per Stripe subscription (its newest known version). Source: stripe_webhook_events
    (customer.subscription.*) + repair snapshots, ordered as for invoices.""",
)
stripe_payment_attempts = _state_asset(
    "stripe_payment_attempts",
    state.rebuild_payment_attempts,
    """One row per invoice x payment attempt number, with its outcome (failed / action_required /
    succeeded). Source: invoice.payment_failed / payment_action_required / payment_succeeded / paid
    events in stripe_webhook_events.""",
)

STATE_ASSETS = [stripe_webhook_events, stripe_invoices, stripe_subscriptions, stripe_payment_attempts]
