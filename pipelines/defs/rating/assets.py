"""Rating assets: customer list -> hourly usage aggregates -> rated lines -> invoice previews.

Thin: every computation is in `metering.customers` and `metering.rating`; these functions only
pick the partition, open the warehouse and report metadata.

Partition mapping: a monthly_billing partition (key 2026-10-01) rates the billing periods that
START in that month. With anchors, such a period ends in the next month (e.g. 2026-10-15 ..
2026-11-15), so `rated_usage` depends on the daily usage_aggregates of its month AND the next
(`TimeWindowPartitionMapping(end_offset=1)`, offsets counted in monthly partitions) and reads
usage by time range. Late events for 2026-11-03 therefore mark both the 2026-10 partition (period
still open) and the 2026-11 partition as changed.

Versions: `code_version` of the rating assets includes the hash of the rules folder, so a price
change marks every partition stale. Dagster fixes a code version when the code location loads: it is
the folder the location reads then ($METERING_RULES, else rating_rules/), so an edit shows after a
reload, and a resource pointed at another folder (`ProjectPaths.rules_dir`, as `demo --rules` does)
is not what it describes: each rated_usage materialization records the hash of the rules it rated
with as `rules_hash` (the truth for that run), and every rated line carries its version's hash; each materialisation reports a `data_version` that hashes its
output rows (minus `rated_at`), so unchanged inputs reproduce the same data version and identical
rows, and changed inputs show up downstream.
"""


import datetime as dt
import hashlib
import warnings

import dagster as dg
import polars as pl

from metering import config
from metering.customers import load_customers
from metering.errors import BadInputError
from metering.ingest import checks as ingest_checks
from metering.rating import service
from metering.rules.plans import load_rules
from metering.warehouse import replace_rows
from pipelines.partitions import daily_usage, monthly_billing
from pipelines.resources import WAREHOUSE_POOL, ProjectPaths, WarehouseResource

GROUP = "rating"
KINDS = {"duckdb", "polars"}
PREVIEW_TOTALS_CHECK = "lines_sum_to_preview_totals"
ALL_USAGE_PRICED_CHECK = "all_usage_priced"
CODE_VERSION = "rating-1"


def _rules_code_versions() -> tuple[str, str]:
    """(meters version, rules version): the engine's version plus content hashes, read at load time.

    Aggregation depends on the meters only; rating on meters and every plan version.
    """
    try:
        rules = load_rules(config.rules_dir())
    except BadInputError:
        return f"{CODE_VERSION}+rules-invalid", f"{CODE_VERSION}+rules-invalid"
    meters = hashlib.sha256(repr(sorted(rules.meters.items())).encode()).hexdigest()
    return f"{CODE_VERSION}+meters-{meters[:16]}", f"{CODE_VERSION}+rules-{rules.rules_hash[:16]}"


METERS_CODE_VERSION, RULES_CODE_VERSION = _rules_code_versions()


def _partition_date(context: dg.AssetExecutionContext) -> dt.date:
    return dt.date.fromisoformat(context.partition_key[:10])


def _preview_md(frame: pl.DataFrame, rows: int = 10) -> dg.MetadataValue:
    head = frame.head(rows)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in head.iter_rows()]
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset(
    group_name=GROUP, kinds=KINDS, pool=WAREHOUSE_POOL, code_version=RULES_CODE_VERSION,
)
def customer_plans(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                   paths: ProjectPaths) -> dg.MaterializeResult:
    """One row per customer x plan assignment, from the customer list CSV (paths.customers).

    Validated against the pricing rules (plans exist, currency matches); each assignment runs from
    plan_effective_from until the customer's next assignment of another plan (plan_effective_to,
    exclusive): a row repeating the plan in force is folded into the one before it.
    """
    with warehouse.get_connection() as con:
        rules = service.guarded_rules(con, paths.rules, dt.datetime.now(dt.timezone.utc))
        frame = load_customers(paths.customers_file, rules)
        replace_rows(con, "customer_plans", "TRUE", [], frame)
    digest = service.fingerprint(frame)
    return dg.MaterializeResult(
        metadata={"dagster/row_count": frame.height, "customers": frame["customer_id"].n_unique(),
                  "source": str(paths.customers_file), "preview": _preview_md(frame)},
        data_version=dg.DataVersion(digest),
    )


@dg.asset(
    group_name=GROUP, kinds=KINDS, pool=WAREHOUSE_POOL, partitions_def=daily_usage, backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[dg.AssetKey("usage_events")], code_version=METERS_CODE_VERSION,
)
def usage_aggregates(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                     paths: ProjectPaths) -> dg.MaterializeResult:
    """One row per customer x meter x dimension values x hour (UTC), from usage_events of the day.

    Uses each meter's aggregation (count, sum, max, last, unique_count) and keeps what combining
    hours exactly needs: last value with its event time and id, the hour's distinct values.
    Refused, as rating is, when the rules change a meter that priced rated lines: hours rebuilt by
    an edited meter would be priced once the edit is reverted (`service.guarded_rules`).
    Refused too while usage_events break the ingest invariants (conservation, event_id uniqueness),
    checked in the warehouse itself: `usage_events`' blocking checks only stop their own run, and the
    hourly job runs this asset and the Stripe push without ingesting.
    """
    window = context.partition_time_window  # one day, or a range in a single-run backfill
    days = [window.start.date() + dt.timedelta(days=i) for i in range((window.end - window.start).days)]
    with warehouse.get_connection() as con:
        try:
            ingest_checks.require_sound_events(con)
        except ingest_checks.UnsoundEventsError as exc:  # fails the step: the push after it does not run
            raise dg.Failure(description=str(exc), metadata={
                f"{name}.{key}": value for name, o in exc.failed.items() for key, value in o.metadata.items()
            }) from exc
        rules = service.guarded_rules(con, paths.rules, dt.datetime.now(dt.timezone.utc))
        frames = [service.refresh_aggregates(con, rules.meters, day) for day in days]
    for day, frame in zip(days, frames):  # each partition reports its own day, not the run's range
        context.add_asset_metadata(
            {"dagster/row_count": frame.height, "event_dates": f"{day}..{day}",
             "events": int(frame["event_count"].sum() or 0), "preview": _preview_md(frame.drop("distinct_values"))},
            partition_key=day.isoformat())
    return dg.MaterializeResult(
        # A data version describes one partition's output: only set it when the run is one day.
        data_version=dg.DataVersion(service.fingerprint(frames[0])) if len(days) == 1 else None,
    )


with warnings.catch_warnings():   # allow_nonexistent_upstream_partitions is a beta parameter
    warnings.simplefilter("ignore", dg.BetaWarning)
    NEXT_MONTH_TOO = dg.TimeWindowPartitionMapping(end_offset=1, allow_nonexistent_upstream_partitions=True)
    """A month's periods can end in the next month: depend on the daily aggregates of both."""


@dg.asset(
    group_name=GROUP, kinds=KINDS, pool=WAREHOUSE_POOL, partitions_def=monthly_billing,
    code_version=RULES_CODE_VERSION,
    check_specs=[dg.AssetCheckSpec(ALL_USAGE_PRICED_CHECK, asset="rated_usage",
                                   description="Every event in a billing period is covered by a rated line "
                                               "(warns on unknown customers, days without a plan, unpriced meters).")],
    deps=[
        dg.AssetDep(usage_aggregates, partition_mapping=NEXT_MONTH_TOO),
        dg.AssetDep(customer_plans),
    ],
)
def rated_usage(context: dg.AssetExecutionContext, warehouse: WarehouseResource,
                paths: ProjectPaths) -> dg.MaterializeResult:
    """One row per customer x billing period x segment x charge, for periods starting in the month.

    Source: usage_aggregates over each period's time range, customer_plans, and the pricing rules
    (a version or meter that already rated may not change: checked against rules_versions and rated_meters).
    Every line carries plan, plan_version and the version's content hash. A closed (ended) period
    changes only with late usage, each change recorded in rating_adjustments (I19); a customer list
    that would re-price one fails the run (re-rate it on purpose with `metering rerate --adjust-closed`).
    """
    month = _partition_date(context)
    rated_at = dt.datetime.now(dt.timezone.utc)
    with warehouse.get_connection() as con:
        rules = service.guarded_rules(con, paths.rules, rated_at)
        rated, _, unpriced = service.rate_month_full(con, rules, month)
        service.write_rated(con, month, rated, rules, rated_at)
        stored = service.read_rated(con, month)   # closed periods without new usage keep their lines
    totals = (stored if stored.height else rated).group_by("currency").agg(pl.col("amount").sum()).sort("currency")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rated.height,
            "customers": rated["customer_id"].n_unique(),
            "totals": {c: str(t) for c, t in totals.iter_rows()},
            "plan_versions": sorted({f"{p}/{v}" for p, v in rated.select("plan", "plan_version").unique().iter_rows()}),
            "rules_hash": rules.rules_hash,
            "unpriced_usage_rows": int(unpriced["rows"].sum() or 0),
            "unpriced_usage": _preview_md(unpriced, 20),
            "output_hash": service.fingerprint(stored),
        },
        data_version=dg.DataVersion(service.fingerprint(stored)),
        check_results=[dg.AssetCheckResult(
            check_name=ALL_USAGE_PRICED_CHECK, passed=unpriced.height == 0, severity=dg.AssetCheckSeverity.WARN,
            metadata={"unpriced_hourly_rows": int(unpriced["rows"].sum() or 0),
                      "reasons": sorted(set(unpriced["reason"].to_list()))},
        )],
    )


@dg.asset(
    group_name=GROUP, kinds=KINDS, pool=WAREHOUSE_POOL, partitions_def=monthly_billing,
    deps=[rated_usage], code_version=CODE_VERSION,
    check_specs=[dg.AssetCheckSpec(PREVIEW_TOTALS_CHECK, asset="invoice_previews", blocking=True,
                                   description="Each preview total equals the sum of its rated lines (minor units).")],
)
def invoice_previews(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    """One row per customer x billing period starting in the month: total owed, from rated_usage."""
    month = _partition_date(context)
    with warehouse.get_connection() as con:
        rated = service.read_rated(con, month)
        previews = service.invoice_previews(rated) if rated.height else service.invoice_previews(
            pl.DataFrame(schema={"customer_id": pl.String, "period_start": pl.Date, "period_end": pl.Date,
                                 "currency": pl.String, "amount_minor": pl.Int64, "amount": pl.Decimal(38, 2)}))
        service.write_previews(con, month, previews, dt.datetime.now(dt.timezone.utc))
        mismatches = service.preview_mismatches(con, month)
    return dg.MaterializeResult(
        metadata={"dagster/row_count": previews.height, "preview": _preview_md(previews)},
        data_version=dg.DataVersion(service.fingerprint(previews)),
        check_results=[dg.AssetCheckResult(
            check_name=PREVIEW_TOTALS_CHECK, passed=mismatches.height == 0,
            metadata={"mismatches": mismatches.height, "previews": previews.height},
        )],
    )


RATING_ASSETS = [customer_plans, usage_aggregates, rated_usage, invoice_previews]
