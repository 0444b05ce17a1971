"""Reconciliation assets: Stripe pulls, the reconciliation, and the finance report.

Thin wiring over `metering.reconcile` and `metering.reports`; every partition is a billing month
(`monthly_billing`, keys like 2026-10-01) covering the customer billing periods that start in it.
"""


import dataclasses
import datetime as dt
import os

import dagster as dg

from metering.reconcile.pulls import pull_invoices_into_warehouse, pull_summaries_into_warehouse
from metering.reconcile.run import reconcile_period, stored_settings
from metering.reconcile.settings import ReconcileSettings
from metering.reports import write_report
from metering.rules.meters import load_meters
from pipelines.resources import StripeResource
from pipelines.partitions import monthly_billing
from pipelines.resources import WAREHOUSE_POOL, ProjectPaths, WarehouseResource

GROUP = "reconciliation"
UNEXPLAINED_CHECK = "unexplained_differences_within_threshold"


class ReconcileConfig(dg.Config):
    """Overrides of `ReconcileSettings.from_env()`; -1 keeps the environment's / default value."""

    settle_seconds: int = -1
    invoice_grace_seconds: int = -1
    max_unexplained_minor: int = -1
    pull_rate: int = -1


def _settings(config: ReconcileConfig, stripe: StripeResource | None = None) -> ReconcileSettings:
    """Environment defaults, overridden by run config. Without an explicit pull rate (config or
    `METERING_STRIPE_PULL_RATE`), pulls share the Stripe resource's rate: one budget per account
    (the main job's sandbox resource sets 0, no limit)."""
    base = ReconcileSettings.from_env()
    if config.pull_rate >= 0:
        pull_rate = float(config.pull_rate)
    elif os.environ.get("METERING_STRIPE_PULL_RATE") or stripe is None:
        pull_rate = base.pull_rate
    else:
        pull_rate = float(stripe.push_config().rate)
    return dataclasses.replace(
        base,
        settle_seconds=base.settle_seconds if config.settle_seconds < 0 else config.settle_seconds,
        invoice_grace_seconds=base.invoice_grace_seconds if config.invoice_grace_seconds < 0
        else config.invoice_grace_seconds,
        max_unexplained_minor=base.max_unexplained_minor if config.max_unexplained_minor < 0
        else config.max_unexplained_minor,
        pull_rate=pull_rate,
    )


def _month(context: dg.AssetExecutionContext) -> dt.date:
    return context.partition_time_window.start.date()


@dg.asset(
    group_name=GROUP,
    partitions_def=monthly_billing,
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "stripe"},
    deps=["rated_usage", "stripe_usage_pushes"],
)
def stripe_meter_summaries(
    context: dg.AssetExecutionContext,
    config: ReconcileConfig,
    warehouse: WarehouseResource,
    paths: ProjectPaths,
    stripe: StripeResource,
) -> dg.MaterializeResult:
    """One row per customer x meter x billing period x day (grain 'day') plus one 'period' row: what
    Stripe's meters hold. Source: Stripe's meter event summaries API (value_grouping_window=day),
    pulled only once the last acknowledged push of a window in that period is older than the settle delay,
    else a 'pending' row."""
    month = _month(context)
    with warehouse.get_connection() as con:
        result = pull_summaries_into_warehouse(
            con, stripe.get_client(), month,
            meters=list(load_meters(paths.rules)), settings=_settings(config, stripe))
    return dg.MaterializeResult(metadata={
        "dagster/row_count": result.summaries.height, "pending": result.pending, "api_calls": result.api_calls})


@dg.asset(
    group_name=GROUP,
    partitions_def=monthly_billing,
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "stripe"},
    deps=["stripe_invoices"],
)
def stripe_invoice_lines(
    context: dg.AssetExecutionContext,
    config: ReconcileConfig,
    warehouse: WarehouseResource,
    stripe: StripeResource,
) -> dg.MaterializeResult:
    """One row per Stripe invoice line (table stripe_invoice_lines_api, headers in stripe_invoices_api)
    of invoices whose period touches the month. Source: Stripe's invoices and invoice lines API, read
    because webhooks can be lost; reconciliation merges it with the webhook-derived stripe_invoice_lines
    (the API read wins for an invoice it saw)."""
    month = _month(context)
    with warehouse.get_connection() as con:
        result = pull_invoices_into_warehouse(con, stripe.get_client(), month, settings=_settings(config, stripe))
    return dg.MaterializeResult(metadata={
        "dagster/row_count": result.lines.height, "invoices": result.invoices.height, "api_calls": result.api_calls,
        # invoices whose metadata[customer_id] names another customer than the one billed (counted as the
        # billed one's; the log names each)
        "misattributed_invoices": len(result.misattributed)})


usage_reconciliation_spec = dg.AssetSpec(
    "usage_reconciliation",
    group_name=GROUP,
    kinds={"duckdb", "polars"},
    deps=[stripe_meter_summaries, stripe_invoice_lines, "rated_usage", "invoice_previews", "usage_aggregates",
          "stripe_invoice_items"],
    description=(
        "One row per customer x meter x billing period: our quantity, pushed, Stripe's metered and invoiced "
        "quantity, rated vs invoiced amount, difference, status and reason; plus invoice_reconciliation (one "
        "row per customer x period, with the charges Stripe cannot price and the engine's invoice items billing "
        "them). Source: usage_aggregates, rated_usage, stripe_push_ledger, stripe_meter_summaries, Stripe invoice "
        "lines (API + webhooks), stripe_invoice_items, invoice_previews."),
)
finance_report_spec = dg.AssetSpec(
    "finance_report",
    group_name=GROUP,
    kinds={"duckdb", "html"},
    deps=["usage_reconciliation", "dunning_state"],
    description=(
        "One report per billing month in data/reports/<YYYY-MM>/: report.html (self-contained), report.xlsx "
        "and CSVs (summary, lines, discrepancies, invoices, dunning). Source: usage_reconciliation, "
        "invoice_reconciliation, dunning_state."),
)


@dg.multi_asset(
    name="usage_reconciliation",  # the op keeps the asset's name, so run config `ops.usage_reconciliation` works
    specs=[usage_reconciliation_spec, finance_report_spec],
    partitions_def=monthly_billing,
    pool=WAREHOUSE_POOL,
    can_subset=True,
    check_specs=[dg.AssetCheckSpec(UNEXPLAINED_CHECK, asset="usage_reconciliation", blocking=True,
                                   description="Unexplained differences per currency within the configured amount")],
)
def reconcile_and_report(
    context: dg.AssetExecutionContext,
    config: ReconcileConfig,
    warehouse: WarehouseResource,
    paths: ProjectPaths,
):
    """usage_reconciliation (with the blocking check) and the finance_report, in one step.

    One step on purpose: the report is what finance needs most exactly when the blocking check fails,
    so the check must not stop it. The failed check still fails the run (and blocks anything
    downstream, in Dagster's sense) after both are written. Either asset can be materialized alone.
    """
    month = _month(context)
    selected = {key.to_user_string() for key in context.selected_asset_keys}
    if "usage_reconciliation" in selected:
        settings = _settings(config)
        with warehouse.get_connection() as con:
            result = reconcile_period(con, month, settings=settings, meters=load_meters(paths.rules))
        unexplained = result.unexplained_minor()
        counts = result.status_counts()
        yield dg.MaterializeResult(
            asset_key="usage_reconciliation",
            metadata={"dagster/row_count": result.usage.height, "invoices": result.invoices.height,
                      "tolerance": settings.describe_tolerance(), **{f"status/{k}": v for k, v in counts.items()},
                      **{f"invoice_status/{k}": v for k, v in result.invoice_status_counts().items()}},
            check_results=[dg.AssetCheckResult(
                asset_key="usage_reconciliation",
                check_name=UNEXPLAINED_CHECK,
                passed=result.check_passed(),
                metadata={"threshold_minor": settings.max_unexplained_minor,
                          **{f"unexplained_minor/{c}": v for c, v in sorted(unexplained.items())}},
            )],
        )
    if "finance_report" in selected:
        with warehouse.get_connection(read_only=True) as con:
            # the settings the month's rows were reconciled with (this step's, or an earlier run's when
            # the report is materialized alone): the report's threshold, settle delay and verdict are
            # the check's; the run's config only for rows reconciled before they were stored
            files = write_report(con, month, paths.data / "reports" / month.strftime("%Y-%m"),
                                 settings=stored_settings(con, month) or _settings(config))
        meta: dict[str, object] = {"folder": str(files.folder), "html": dg.MetadataValue.path(str(files.html)),
                                   "dagster/row_count": files.data.lines.height}
        for t in files.data.totals:
            meta[f"{t.currency}/match_rate_percent"] = t.match_rate_text()   # "n/a" as in every report file
            meta[f"{t.currency}/money_at_risk_minor"] = t.money_at_risk_minor   # pending rows excluded
            meta[f"{t.currency}/pending_minor"] = t.pending_minor
            # charges Stripe cannot price that no invoice item bills yet, of closed periods and of periods
            # not ended (which the engine cannot bill yet): shown, not part of the check
            meta[f"{t.currency}/unbilled_minor"] = t.unbilled_minor
            meta[f"{t.currency}/unbilled_pending_minor"] = t.unbilled_pending_minor
            # the engine's items beyond those charges (a credit is due), per customer x period, not netted
            meta[f"{t.currency}/credit_due_minor"] = t.credit_due_minor
        yield dg.MaterializeResult(asset_key="finance_report", metadata=meta)


RECONCILIATION_ASSETS = [stripe_meter_summaries, stripe_invoice_lines, reconcile_and_report]
