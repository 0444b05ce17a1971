"""Stripe catalog and usage push assets (thin: the work is in metering.stripe)."""

import datetime as dt

import dagster as dg

from metering.rating.service import read_customer_plans
from metering.rules.plans import load_rules
from metering.stripe import catalog, ledger
from metering.stripe.clock import push_days_on_clock
from metering.stripe.invoice_items import bill_invoice_items
from metering.stripe.push import PushReport, push_usage
from pipelines.resources import StripeResource
from pipelines.partitions import daily_usage, monthly_billing
from pipelines.resources import WAREHOUSE_POOL, ProjectPaths, WarehouseResource

GROUP = "stripe"
KINDS = {"stripe", "duckdb"}


@dg.asset(group_name=GROUP, kinds=KINDS, pool=WAREHOUSE_POOL, deps=[dg.AssetKey("customer_plans")])
def stripe_catalog(context: dg.AssetExecutionContext, warehouse: WarehouseResource, paths: ProjectPaths,
                   stripe: StripeResource) -> dg.MaterializeResult:
    """One row per Stripe object we map to (stripe_objects, stripe_customer_map) and one per finding
    (stripe_catalog_findings: drift, not expressible, rounding).

    Source: the pricing rules (meters, plan versions, charges) and customer_plans; Stripe's meters,
    prices and customers, created when missing (customers only in sandbox mode), never changed.
    """
    rules = load_rules(paths.rules)
    client = stripe.get_client()
    with warehouse.get_connection() as con:
        customers = read_customer_plans(con)
        report = catalog.sync_catalog(
            con, client, rules, customers, window_kind=stripe.window_kind,
            create_customers=stripe.create_customers, test_clock=stripe.test_clock or None,
            sandbox_payment_behavior=stripe.create_customers)
    findings = "\n".join(
        f"| {f.finding} | {f.kind} | {f.our_key} | {f.field or ''} | {f.detail or ''} |" for f in report.findings)
    return dg.MaterializeResult(metadata={
        "meters": len(report.meters), "prices": len(report.prices), "customers": len(report.customers),
        "created": dg.MetadataValue.json(report.created), "found": dg.MetadataValue.json(report.found),
        **report.finding_counts(),
        "missing_customers": len(report.missing_customers),
        "findings": dg.MetadataValue.md("| finding | kind | key | field | detail |\n|---|---|---|---|---|\n" + findings),
    })


@dg.asset(
    group_name=GROUP, kinds=KINDS, pool=WAREHOUSE_POOL, partitions_def=daily_usage,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[dg.AssetKey("usage_aggregates"), stripe_catalog],
    check_specs=[dg.AssetCheckSpec("push_settled", asset="stripe_usage_pushes",
                                   description="No window of the day is left pending, sent, unknown, failed or held (moved), "
                                               "and none is unmapped (its customer not synced to Stripe).")],
)
def stripe_usage_pushes(context: dg.AssetExecutionContext, warehouse: WarehouseResource, paths: ProjectPaths,
                        stripe: StripeResource):
    """One ledger row per customer x meter x window x revision (stripe_push_ledger) for the day, and one
    row per push (stripe_push_runs: one for a range, one per day on a test clock).

    Source: usage_aggregates of the day (and, for last-formula meters, later windows of the same
    billing periods already pushed), stripe_customer_map; each window's total sent to Stripe as one
    pre-aggregated meter event with a deterministic identifier and Idempotency-Key.
    """
    from metering.rules.meters import load_meters

    window = context.partition_time_window  # one day, or a range in a single-run backfill
    first, last = window.start.date(), window.end.date() - dt.timedelta(days=1)
    config = stripe.push_config()
    client = stripe.get_client()
    with warehouse.get_connection() as con:
        meters = load_meters(paths.rules)
        day_by_day = bool(stripe.advance_test_clock and stripe.test_clock)
        if day_by_day:
            # advance the clock to each day's end, then push that day (metering.stripe.clock)
            reports = push_days_on_clock(con, client, meters, stripe.test_clock, first, last, config)
        else:
            # one push for a range: each push reads Stripe's clocks and invoices once, and a push per day
            # made the main job's backfills (up to 30 days each) 2.4 times slower
            reports = [push_usage(con, client, meters, first, last, config)]
        by_day = ledger.status_counts_by_day(con, first, last, config.window_kind)
    if day_by_day or first == last:
        per_day = {r.date_from: _report_metadata(r) for r in reports}
    else:
        # each day reports its own windows from the ledger, and the range's calls under `range/` keys
        per_day = {day: {"windows": sum(day_counts.values()), **day_counts,
                         **{f"range/{k}": v for k, v in _report_metadata(reports[0]).items()},
                         "range": f"{first.isoformat()}..{last.isoformat()}"}
                   for day, day_counts in by_day.items()}
    counts = ledger.summed_counts(by_day)
    for day, metadata in per_day.items():
        # the hourly schedule re-requests a day whose newest push left windows open (unsettled_pushes)
        open_windows = sum(by_day.get(day, {}).get(status, 0) for status in ledger.OPEN_STATUSES)
        context.add_asset_metadata({**metadata, "open_windows": open_windows}, partition_key=day.isoformat())
    moved = sum(report.moved for report in reports)
    unmapped = sum(report.unmapped for report in reports)  # never in the ledger: nothing was planned
    open_left = counts["pending"] + counts["sent"] + counts["unknown"]
    yield dg.MaterializeResult()
    yield dg.AssetCheckResult(
        check_name="push_settled", passed=open_left == 0 and counts["failed"] == 0 and moved == 0 and unmapped == 0,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={**{k: v for k, v in counts.items()}, "moved": moved, "unmapped": unmapped,
                  "hint": "re-run the partition; failed rows: --retry-failed; moved: see the run's warnings; "
                          "unmapped: materialize stripe_catalog (metering stripe sync)"},
    )


@dg.asset(
    group_name=GROUP, kinds=KINDS, pool=WAREHOUSE_POOL, partitions_def=monthly_billing,
    deps=[dg.AssetKey("rated_usage"), stripe_catalog],
    check_specs=[dg.AssetCheckSpec("invoice_items_settled", asset="stripe_invoice_items",
                                   description="No invoice item of the month is left failed, sent, unknown or "
                                               "blocked, and none is unmapped, held or of another plan version.")],
)
def stripe_invoice_items(context: dg.AssetExecutionContext, warehouse: WarehouseResource, stripe: StripeResource):
    """One ledger row per customer x closed billing period x charge Stripe cannot price x revision
    (stripe_invoice_items), for the periods starting in the month.

    Source: rated_usage of the closed periods (rated at or after their end) and the catalog's
    not-expressible findings; each charge billed as Stripe invoice items summing to its rated amount,
    on the period's draft invoice or, once that is finalized, the subscription's next invoice.
    """
    config = stripe.push_config()
    month = dt.date.fromisoformat(context.partition_key)
    with warehouse.get_connection() as con:
        report = bill_invoice_items(con, stripe.get_client(), month, rate=config.rate, retry=config.retry)
    yield dg.MaterializeResult(metadata={
        "charges": report.charges, "new_revisions": report.new_revisions, "calls": report.calls,
        "acknowledged": report.acknowledged, "on_draft_invoice": report.on_draft_invoice,
        "pending_next_invoice": report.pending_next, "settled_by_listing": report.settled_by_listing,
        "failed": report.failed, "unknown": report.unknown, "blocked": report.blocked, "unmapped": report.unmapped,
        "held": report.held, "other_version": report.other_version,
        "billed_minor": dg.MetadataValue.json(report.billed_minor), "seconds": round(report.seconds, 3),
    })
    yield dg.AssetCheckResult(
        check_name="invoice_items_settled", passed=report.needs_operator == 0, severity=dg.AssetCheckSeverity.WARN,
        metadata={"failed": report.failed, "unknown": report.unknown, "blocked": report.blocked,
                  "unmapped": report.unmapped, "held": report.held, "other_version": report.other_version,
                  "hint": "failed / unknown: re-run the partition; blocked: see stripe_invoice_items.last_error; "
                          "unmapped: stripe_catalog; held, other_version: docs/stripe-push.md"})


STRIPE_PUSH_ASSETS = [stripe_catalog, stripe_usage_pushes, stripe_invoice_items]


def _report_metadata(report: PushReport) -> dict[str, object]:
    """A push's figures, as a partition's metadata."""
    return {
        "windows": report.windows_considered, "new_revisions": report.new_revisions, "calls": report.calls,
        "retries": report.retries, "rate_limited": report.rate_limited, "acknowledged": report.acknowledged,
        "failed": report.failed, "unknown": report.unknown, "late": report.late, "unmapped": report.unmapped,
        "unlisted": report.unlisted, "not_yet_due": report.not_yet_due, "moved": report.moved,
        "raw_events_per_call": float(report.raw_events_per_call),
        "seconds": round(report.seconds, 3),
    }
