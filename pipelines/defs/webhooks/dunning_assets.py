"""Dunning assets: each calls into `metering.dunning`; this file only wires Dagster.

`dunning_state` -> `dunning_actions`, both in group `dunning`, downstream of `stripe_invoices`.
Imported by `pipelines/defs/webhooks/definitions.py` through `defs` (or `DUNNING_ASSETS`).
No `from __future__ import annotations` here: Dagster resolves config annotations at runtime.

The Stripe client comes from the shared `StripeResource` (resource key `stripe`, declared once in
`pipelines/resources.py`). Without a key or base URL, reminders still run; Stripe steps wait, and
so does a suspension or write-off behind a retry not yet made (reported in the run's metadata).
"""


from datetime import datetime
from pathlib import Path

import dagster as dg
import polars as pl

from metering.dunning.actions import read_ledger
from metering.dunning.policy import load_policy
from metering.dunning.run import run_dunning
from metering.dunning.state import parse_clock, refresh_state
from metering.dunning.summary import dunning_summary
from metering.errors import BadInputError
from pipelines.cadence import SCHEDULE_STATUS
from pipelines.defs.publish.assets import with_snapshot
from pipelines.resources import StripeResource
from pipelines.resources import WAREHOUSE_POOL, ProjectPaths, WarehouseResource

GROUP = "dunning"
ACTIONS_ONCE_CHECK = "each_action_once"
NO_PENDING_CHECK = "no_pending_actions"


class DunningConfig(dg.Config):
    now: str = ""
    """The dunning clock as ISO 8601 (UTC when no offset); empty = the current time. For replays and tests."""


def _now(config: DunningConfig) -> datetime:
    return parse_clock(config.now, where="dunning config now")


def _folder(paths: ProjectPaths, name: str) -> Path | None:
    """`<paths.data_dir>/<name>` when the resource sets a data dir, else None (the env-aware default)."""
    return Path(paths.data_dir) / name if paths.data_dir else None


def _md(frame: pl.DataFrame) -> dg.MetadataValue:
    if frame.is_empty():
        return dg.MetadataValue.md("_none_")
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * frame.width + "\n"
    body = "".join("| " + " | ".join("" if v is None else str(v) for v in row) + " |\n" for row in frame.rows())
    return dg.MetadataValue.md(head + body)


@dg.asset(
    group_name=GROUP,
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "polars"},
    deps=[dg.AssetKey("stripe_invoices"), dg.AssetKey("stripe_subscriptions"), dg.AssetKey("stripe_payment_attempts"),
          dg.AssetKey("customer_plans")],
)
def dunning_state(
    context: dg.AssetExecutionContext,
    config: DunningConfig,
    warehouse: WarehouseResource,
    paths: ProjectPaths,
) -> dg.MaterializeResult:
    """One row per invoice that failed a payment: not_in_dunning / in_dunning at step N / recovered /
    written_off / void, with day 0, the step reached and the next one.

    Source: `stripe_invoices` (+ first failures from `stripe_payment_attempts` / `stripe_webhook_events`,
    subscription statuses from `stripe_subscriptions`, the customer's plan from `customer_plans` when
    present, the actions already performed), the policy
    in `rating_rules/dunning.yaml`, and the clock (config `now`). State only moves forward. A `now`
    in the future is a what-if: the steps it shows are a projection, which the next run at the real
    clock does not carry over (nor does `dunning_actions` act on this table: it recomputes the state).
    """
    policy = load_policy(paths.rules)
    now = _now(config)
    with warehouse.get_connection() as con:
        state = refresh_state(con, policy, now)
    summary = dunning_summary(state)
    counts = dict(state.group_by("state").len().rows())
    context.log.info(f"dunning state at {now.isoformat()}: {counts}")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": state.height,
        "now": now.isoformat(),
        "policy_hash": policy.content_hash,
        **{f"invoices/{k}": v for k, v in sorted(counts.items())},
        "summary": _md(summary.select("currency", "category", "step_name", "invoices", "amount")),
    })


@dg.asset(
    group_name=GROUP,
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "stripe"},
    deps=[dunning_state],
    check_specs=[
        dg.AssetCheckSpec(ACTIONS_ONCE_CHECK, asset="dunning_actions", blocking=True,
                          description="At most one ledger row per (invoice, step) idempotency key."),
        dg.AssetCheckSpec(NO_PENDING_CHECK, asset="dunning_actions",
                          description="No action left pending (a Stripe outage leaves rows pending; the next run retries them)."),
    ],
)
def dunning_actions(
    context: dg.AssetExecutionContext,
    config: DunningConfig,
    warehouse: WarehouseResource,
    paths: ProjectPaths,
    stripe: StripeResource,
) -> dg.MaterializeResult:
    """One row per (invoice, step) ever acted on: reminders rendered to the outbox, payment retries and
    write-offs sent to Stripe, suspensions; each performed exactly once (ledger row committed before
    the call, the key as Stripe's Idempotency-Key). Also replaces `dunning_outbox` rows it renders,
    the `suspensions` table and data/published/suspensions.csv/.json.

    Source: the dunning state recomputed here, at this run's clock, from the same inputs as
    `dunning_state` (a payment landed since that step is seen: no reminder for a paid invoice), the
    policy, the ledger itself. It runs `metering dunning run`'s code (`run_dunning`), which also
    leaves `dunning_state` as it stands after the actions.
    """
    policy = load_policy(paths.rules)
    now = _now(config)
    try:
        client = stripe.get_client()
    except BadInputError as exc:
        context.log.warning(f"no Stripe client, payment retries and write-offs wait: {exc}")
        client = None
    with warehouse.get_connection() as con:
        # Acting on the table `dunning_state` wrote would act on a state that may be stale by now (a
        # stripe_state_job run can land a payment between the two steps: a paid customer once got the
        # final notice). `run_dunning` recomputes the state just before acting, as the CLI does, and
        # again after the actions (a write-off just done is not shown in dunning with the write-off next).
        result = run_dunning(
            con, client, policy, now,
            outbox_folder=_folder(paths, "outbox"), published_folder=_folder(paths, "published"),
        )
        report, suspensions, sent = result.report, result.suspensions, result.reminders_sent
        ledger = read_ledger(con)
    duplicates = ledger.group_by("idempotency_key").len().filter(pl.col("len") > 1).height
    pending = ledger.filter(pl.col("status") == "pending").height
    for line in report.errors:
        context.log.warning(f"dunning action pending: {line}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": ledger.height,
            "now": now.isoformat(),
            **{f"this_run/{k}": v for k, v in sorted(report.counts.items())},
            "suspended_customers": suspensions.height,
            "reminders_sent": sent,
            "pending": pending,
        },
        check_results=[
            dg.AssetCheckResult(check_name=ACTIONS_ONCE_CHECK, passed=duplicates == 0,
                                metadata={"duplicate_keys": duplicates}),
            dg.AssetCheckResult(check_name=NO_PENDING_CHECK, passed=pending == 0,
                                severity=dg.AssetCheckSeverity.WARN, metadata={"pending": pending}),
        ],
    )


DUNNING_ASSETS: list[dg.AssetsDefinition] = [dunning_state, dunning_actions]

dunning_job = dg.define_asset_job(
    "dunning_job",
    selection=with_snapshot(dg.AssetSelection.groups(GROUP)),
    description="Recompute dunning state and perform the steps due (each once).",
)

dunning_schedule = dg.ScheduleDefinition(
    name="dunning_schedule", job=dunning_job, cron_schedule="30 6 * * *", execution_timezone="UTC",
    default_status=SCHEDULE_STATUS,
)

defs = dg.Definitions(assets=DUNNING_ASSETS, jobs=[dunning_job], schedules=[dunning_schedule])
