"""The dunning state of every failed invoice, computed as whole frames.

Inputs (all frames; `load_inputs` reads them from the warehouse):
- `stripe_invoices` (the webhooks part's reconciled state: status, amounts, attempt_count,
  next_payment_attempt, paid_at, ...);
- the first failed payment per invoice (`stripe_payment_attempts` / `invoice.payment_failed` in
  `stripe_webhook_events`): day 0 of the schedule when it lies between the invoice's finalization
  and now, else the invoice's `finalized_at` (test-clock objects live in the clock's time while
  events carry real time), else the reconciled row's `state_event_created`;
- the status of each invoice's subscription (`stripe_subscriptions`), with the invoice's
  `billing_reason`: a new subscription's declined first invoice is not chased (below);
- the previous `dunning_state` (so that state only moves forward and day 0 never moves; its step
  counts only when it was evaluated at or before `now`, see `compute_state`);
- the actions already performed (`dunning_actions`), so a step taken counts even before Stripe's
  webhooks report its effect (our own write-off makes the invoice written off at once);
- optionally each customer's plan (selects a per-plan schedule);
- the clock `now` (UTC), which tests control.

States: `not_in_dunning` (failed but below the policy's minimum, or a new subscription's first
invoice while the subscription is `incomplete`: Stripe voids it 23 hours after creation unless it is
paid, so dunning is for renewals), `in_dunning` (at step N, or before the first step), `recovered`
(paid after failing: always wins, lifts any suspension), `written_off` (uncollectible), `void`
(voided while in dunning, or before the first run when it was to be chased: like paid and
uncollectible). Order of progress: not_in_dunning < in_dunning < written_off = void < recovered; a
state never goes back. Nor does a step taken (the ledger) or reached at an earlier clock; of a row
evaluated under a later clock (a what-if run with a future `now`) only a paid, written-off or void
state and day 0 carry over.
"""

from __future__ import annotations

from datetime import datetime, timezone

import duckdb
import polars as pl

from metering.dunning.frames import conform, table_exists
from metering.dunning.policy import DEFAULT_SCHEDULE, DunningPolicy
from metering.errors import BadInputError
from metering.warehouse import query_frame, replace_rows, table_columns

NOT_IN_DUNNING, IN_DUNNING, RECOVERED, WRITTEN_OFF, VOID = (
    "not_in_dunning", "in_dunning", "recovered", "written_off", "void",
)
# the `reason` of a new subscription's declined first invoice, not chased (see compute_state)
SUBSCRIPTION_INCOMPLETE = "subscription_incomplete"
# Stripe: a subscription whose first invoice is unpaid is `incomplete`, and `incomplete_expired` once
# Stripe voided that invoice 23 hours after the subscription's creation
INCOMPLETE_SUBSCRIPTION_STATUSES = ("incomplete", "incomplete_expired")
STATE_RANK = {NOT_IN_DUNNING: 0, IN_DUNNING: 1, WRITTEN_OFF: 2, VOID: 2, RECOVERED: 3}
OPEN_STATES = (IN_DUNNING,)
# the `reason` of an invoice Stripe closed, and the state that closing means once it was chased
CLOSED_BY_STRIPE = {"paid": RECOVERED, "voided": VOID, "uncollectible": WRITTEN_OFF}

TS = pl.Datetime("us", "UTC")

INVOICE_SCHEMA: dict[str, pl.DataType] = {
    "invoice_id": pl.String, "customer": pl.String, "customer_id": pl.String,
    "subscription_id": pl.String, "status": pl.String, "currency": pl.String,
    "amount_due": pl.Int64, "amount_paid": pl.Int64, "amount_remaining": pl.Int64,
    "attempt_count": pl.Int64, "next_payment_attempt": TS, "finalized_at": TS, "paid_at": TS,
    "state_event_created": TS, "billing_reason": pl.String, "voided_at": TS, "marked_uncollectible_at": TS,
}
SUBSCRIPTION_SCHEMA = {"subscription_id": pl.String, "subscription_status": pl.String}
FAILURE_SCHEMA = {"invoice_id": pl.String, "first_failed_at": TS}
PLAN_SCHEMA = {"customer_id": pl.String, "plan": pl.String}
PERFORMED_SCHEMA = {
    "invoice_id": pl.String, "step_index": pl.Int32, "step_name": pl.String, "action": pl.String,
    "status": pl.String, "outcome": pl.String,
}

STATE_SCHEMA: dict[str, pl.DataType] = {
    "invoice_id": pl.String, "customer_id": pl.String, "stripe_customer": pl.String,
    "subscription_id": pl.String, "plan": pl.String, "policy": pl.String, "currency": pl.String,
    "amount_due": pl.Int64, "amount_paid": pl.Int64, "amount_remaining": pl.Int64,
    "invoice_status": pl.String, "attempt_count": pl.Int64, "next_payment_attempt": TS,
    "first_failed_at": TS, "state": pl.String, "step_index": pl.Int32, "step_name": pl.String,
    "step_action": pl.String, "next_step_name": pl.String, "next_step_at": TS, "reason": pl.String,
    "entered_at": TS, "closed_at": TS, "evaluated_at": TS, "policy_hash": pl.String,
}

DAY_US = 86_400 * 1_000_000


def parse_clock(text: str | None, where: str = "--now") -> datetime:
    """The dunning clock from ISO 8601 text (UTC when no offset); empty = the current time.

    Raises `BadInputError` naming `where` when the text is not a time.
    """
    if not text:
        return datetime.now(timezone.utc)
    try:
        return utc(datetime.fromisoformat(text.strip().replace("Z", "+00:00")))
    except (ValueError, OverflowError):   # overflow: a time that has no UTC date (0001-01-01T00:00+01:00)
        raise BadInputError(f"{where}: {text!r} is not an ISO 8601 time (e.g. 2026-11-15T00:00:00Z)") from None


def utc(moment: datetime) -> datetime:
    """The clock as an aware UTC datetime (naive input is taken as UTC)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


def compute_state(
    invoices: pl.DataFrame,
    policy: DunningPolicy,
    now: datetime,
    *,
    failures: pl.DataFrame | None = None,
    previous: pl.DataFrame | None = None,
    performed: pl.DataFrame | None = None,
    plans: pl.DataFrame | None = None,
    subscriptions: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per invoice that failed a payment (STATE_SCHEMA), as of `now`.

    The step is recomputed on every call: the latest step due at `now` under the invoice's schedule,
    or a later step the ledger (`performed`) shows taken, or the step of a `previous` row evaluated
    at or before `now`. A previous row evaluated under a later clock (a what-if `dunning_state` with a
    future `now`, or a clock set back) is a projection: only a state Stripe decided (paid, written
    off, void) and day 0 carry over from it. Its step would make the next run at the real clock act on
    steps that are not due (it once wrote off and suspended weeks early); its schedule and its entry
    into dunning follow the plan in force at its clock (a customer under the real plan's minimum
    would be chased).

    `subscriptions` (subscription_id, subscription_status): a new subscription's first invoice
    (`billing_reason` `subscription_create`) whose subscription is `incomplete` or
    `incomplete_expired` (or not known yet) is `not_in_dunning` (reason `subscription_incomplete`):
    Stripe voids it 23 hours after the subscription's creation unless it is paid, and never retries
    it. Closed, it is filed by what happened to it (voided, paid), as an invoice under the minimum is.
    """
    now = utc(now)
    now_lit = pl.lit(now, dtype=TS)
    inv = conform(invoices, INVOICE_SCHEMA)
    failures = conform(failures, FAILURE_SCHEMA).group_by("invoice_id").agg(
        pl.col("first_failed_at").min().alias("event_failed_at"))
    # a row evaluated under a later clock is a projection, never reached at this one (see the docstring):
    # only what Stripe decided (paid, written off, void) and day 0 carry over from it
    seen = pl.col("evaluated_at").is_null() | (pl.col("evaluated_at") <= now_lit)
    prev = conform(previous, STATE_SCHEMA).select(
        "invoice_id",
        pl.when(seen | pl.col("state").is_in([RECOVERED, WRITTEN_OFF, VOID])).then(pl.col("state")).alias("prev_state"),
        pl.when(seen).then(pl.col("step_name")).alias("prev_step_name"),
        pl.col("first_failed_at").alias("prev_first_failed_at"),
        pl.when(seen).then(pl.col("policy")).alias("prev_policy"),
        pl.when(seen).then(pl.col("entered_at")).alias("prev_entered_at"),
        # a close seen by a run at a later clock (a what-if) is not this run's
        pl.when(pl.col("closed_at") <= now_lit).then(pl.col("closed_at")).alias("prev_closed_at"),
    )
    taken = conform(performed, PERFORMED_SCHEMA).filter(pl.col("status").is_in(["done", "skipped"]))
    done = taken.group_by("invoice_id").agg(
        ((pl.col("action") == "write_off") & (pl.col("status") == "done")).any().alias("written_off_by_us"),
        ((pl.col("action") == "retry") & (pl.col("status") == "done") & (pl.col("outcome") == "paid"))
        .any().alias("paid_by_us"),
    )
    plan_of = conform(plans, PLAN_SCHEMA).unique("customer_id", keep="last")
    subscription_of = conform(subscriptions, SUBSCRIPTION_SCHEMA).filter(
        pl.col("subscription_id").is_not_null()).unique("subscription_id", keep="last")
    override_names = list(policy.plans)

    df = (
        inv.join(failures, on="invoice_id", how="left")
        .join(prev, on="invoice_id", how="left")
        .join(done, on="invoice_id", how="left")
        .join(plan_of, on="customer_id", how="left")
        .join(subscription_of, on="subscription_id", how="left")
    )
    open_failed = (pl.col("status") == "open") & (pl.col("attempt_count").fill_null(0) >= 1)
    paid_by_us_early = pl.col("paid_by_us").fill_null(False) & (pl.col("status") != "paid")
    df = df.filter(
        pl.col("event_failed_at").is_not_null() | pl.col("prev_state").is_not_null() | open_failed
    ).with_columns(
        # Day 0 is fixed once seen. The first failure event's `created` is used when it lies between
        # finalization and now; otherwise (customers on a Stripe test clock, whose objects live in
        # the clock's time while events carry real time) the invoice's finalized_at, when Stripe
        # made the first automatic attempt.
        first_failed_at=pl.coalesce(
            "prev_first_failed_at",
            pl.when(
                pl.col("event_failed_at").is_between(
                    pl.coalesce("finalized_at", "event_failed_at"), pl.lit(now, dtype=TS))
            ).then(pl.col("event_failed_at")),
            "finalized_at", "event_failed_at", "state_event_created", pl.lit(now, dtype=TS),
        ),
        # an invoice keeps the schedule it entered with, while the policy still has it; a removed plan
        # override falls back to the plan's current schedule (once it stopped every later step)
        policy=pl.coalesce(
            pl.when(pl.col("prev_policy").is_in([DEFAULT_SCHEDULE, *override_names])).then(pl.col("prev_policy")),
            pl.when(pl.col("plan").is_in(override_names)).then(pl.col("plan")),
            pl.lit(DEFAULT_SCHEDULE),
        ),
        written_off_by_us=pl.col("written_off_by_us").fill_null(False),
        stripe_status=pl.col("status"),
        # our own retry's response said paid: recovered now, before the webhook confirms it, and what
        # was remaining is paid (the summary counts a recovered invoice by its amount paid)
        status=pl.when(paid_by_us_early).then(pl.lit("paid")).otherwise("status"),
        amount_paid=pl.when(paid_by_us_early)
        .then(pl.col("amount_paid").fill_null(0) + pl.col("amount_remaining").fill_null(0)).otherwise("amount_paid"),
        amount_remaining=pl.when(paid_by_us_early).then(pl.lit(0, pl.Int64)).otherwise("amount_remaining"),
    )
    elapsed_days = ((pl.lit(now, dtype=TS) - pl.col("first_failed_at")).dt.total_microseconds() // DAY_US)
    df = df.with_columns(elapsed_days=elapsed_days.cast(pl.Int64))

    # Progress is remembered by step NAME and placed in the schedule as it is now: after a step is
    # removed from the policy, positions shift, and a stored position would point at a later step
    # (a write-off) before its day. A name the schedule no longer has simply stops counting.
    steps = policy.steps_frame()
    position = steps.select("policy", "step_name", "step_index")
    prev_at = (
        df.select("invoice_id", "policy", pl.col("prev_step_name").alias("step_name"))
        .join(position, on=["policy", "step_name"], how="inner")
        .select("invoice_id", pl.col("step_index").alias("prev_step_index"))
    )
    performed_at = (
        taken.select("invoice_id", "step_name")
        .join(df.select("invoice_id", "policy"), on="invoice_id", how="inner")
        .join(position, on=["policy", "step_name"], how="inner")
        .group_by("invoice_id")
        .agg(pl.col("step_index").max().alias("performed_step"))
    )
    df = df.join(prev_at, on="invoice_id", how="left").join(performed_at, on="invoice_id", how="left")
    reached = (
        df.select("invoice_id", "policy", "elapsed_days")
        .join(steps, on="policy", how="inner")
        .filter(pl.col("day") <= pl.col("elapsed_days"))
        .group_by("invoice_id")
        .agg(pl.col("step_index").max().alias("scheduled_step"))
    )
    df = df.join(reached, on="invoice_id", how="left")

    minimums = policy.minimums_frame()
    subscription_status = pl.col("subscription_status")
    df = df.join(minimums, on=["policy", "currency"], how="left").with_columns(
        below_minimum=pl.when(pl.col("status") == "open").then(pl.col("amount_remaining"))
        .otherwise(pl.col("amount_due")).fill_null(0) < pl.col("minimum_minor").fill_null(0),
        # a new subscription's declined first invoice: Stripe voids it after 23 h, dunning is for renewals
        first_invoice=(
            (pl.col("billing_reason") == "subscription_create")
            & (subscription_status.is_null() | subscription_status.is_in(INCOMPLETE_SUBSCRIPTION_STATUSES))
        ).fill_null(False),
    )

    prev_s = pl.col("prev_state")
    entered = prev_s.is_in([IN_DUNNING, WRITTEN_OFF, VOID, RECOVERED]).fill_null(False)
    never_entered = (prev_s == NOT_IN_DUNNING).fill_null(False) | (
        prev_s.is_null() & (pl.col("below_minimum").fill_null(False) | pl.col("first_invoice")))
    status = pl.col("status")
    # a closed invoice that was due to be chased counts as closed, even if no run saw it open
    chased = entered | ~never_entered
    computed = (
        pl.when(status == "paid").then(
            pl.when(chased).then(pl.lit(RECOVERED)).otherwise(pl.lit(NOT_IN_DUNNING)))
        .when(status == "void").then(
            pl.when(chased).then(pl.lit(VOID)).otherwise(pl.lit(NOT_IN_DUNNING)))
        .when(status == "uncollectible").then(
            pl.when(chased).then(pl.lit(WRITTEN_OFF)).otherwise(pl.lit(NOT_IN_DUNNING)))
        .when(pl.col("written_off_by_us")).then(pl.lit(WRITTEN_OFF))
        .when(pl.col("below_minimum") & ~entered).then(pl.lit(NOT_IN_DUNNING))
        .when(pl.col("first_invoice") & ~entered).then(pl.lit(NOT_IN_DUNNING))
        .otherwise(pl.lit(IN_DUNNING))
    )
    reason = (
        pl.when(status == "paid").then(pl.lit("paid"))
        .when(status == "void").then(pl.lit("voided"))
        .when(status == "uncollectible").then(pl.lit("uncollectible"))
        .when(pl.col("written_off_by_us")).then(pl.lit("written_off_by_dunning"))
        # as `computed`: an invoice already chased stays chased when what remains falls under the minimum
        .when(pl.col("below_minimum") & ~entered).then(pl.lit("below_minimum"))
        .when(pl.col("first_invoice") & ~entered).then(pl.lit(SUBSCRIPTION_INCOMPLETE))
        .otherwise(pl.lit("payment_failed"))
    )
    rank = {k: v for k, v in STATE_RANK.items()}
    df = df.with_columns(computed=computed, reason=reason).with_columns(
        state=pl.when(
            prev_s.is_not_null()
            & (prev_s.replace_strict(rank, default=0, return_dtype=pl.Int8)
               > pl.col("computed").replace_strict(rank, default=0, return_dtype=pl.Int8))
        ).then(prev_s).otherwise(pl.col("computed")),
    ).with_columns(
        reason=pl.when(pl.col("state") != pl.col("computed"))
        .then(pl.lit("kept_") + pl.col("state"))
        .otherwise(pl.col("reason")),
    ).with_columns(
        # the schedule moves the step only while in dunning; afterwards it stays where it stopped
        step_index=pl.when(pl.col("state") == IN_DUNNING)
        .then(pl.max_horizontal("scheduled_step", "prev_step_index", "performed_step"))
        .when(pl.col("state") != NOT_IN_DUNNING)
        .then(pl.max_horizontal("prev_step_index", "performed_step"))
        .cast(pl.Int32),
    )

    named = steps.select("policy", "step_index", "step_name", pl.col("action").alias("step_action"))
    upcoming = (
        df.filter(pl.col("state") == IN_DUNNING)
        .select("invoice_id", "policy", "step_index", "first_failed_at")
        .join(steps, on="policy", how="inner", suffix="_next")
        .filter(pl.col("step_index_next") > pl.col("step_index").fill_null(-1))
        .sort("step_index_next")
        .group_by("invoice_id", maintain_order=True)
        .first()
        .select(
            "invoice_id",
            pl.col("step_name").alias("next_step_name"),
            (pl.col("first_failed_at") + pl.duration(days=pl.col("day"))).alias("next_step_at"),
        )
    )
    terminal = pl.col("state").is_in([RECOVERED, WRITTEN_OFF, VOID])
    df = (
        df.join(named, on=["policy", "step_index"], how="left")
        .join(upcoming, on="invoice_id", how="left")
        .with_columns(
            stripe_customer=pl.col("customer"),
            invoice_status=pl.col("stripe_status"),
            entered_at=pl.coalesce(
                "prev_entered_at",
                pl.when(pl.col("state") != NOT_IN_DUNNING).then(pl.col("first_failed_at")),
            ),
            closed_at=pl.when(terminal).then(pl.coalesce(
                "prev_closed_at",
                pl.when(pl.col("state") == RECOVERED).then(pl.col("paid_at")),
                pl.when(pl.col("state") == VOID).then(pl.col("voided_at")),
                pl.when(pl.col("state") == WRITTEN_OFF).then(pl.col("marked_uncollectible_at")),
                now_lit,
            )),
            evaluated_at=now_lit,
            policy_hash=pl.lit(policy.content_hash),
        )
    )
    state = conform(df, STATE_SCHEMA)
    # An invoice missing from this read of stripe_invoices keeps its last state: nothing is lost.
    carried = conform(previous, STATE_SCHEMA).join(inv.select("invoice_id"), on="invoice_id", how="anti")
    return pl.concat([state, carried]).sort("invoice_id")


# --- reading the inputs from the warehouse -------------------------------------------------------

def read_invoices(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The reconciled `stripe_invoices` (empty when the webhooks part has not created it yet)."""
    if not table_exists(con, "stripe_invoices"):
        return pl.DataFrame(schema=INVOICE_SCHEMA)
    have = table_columns(con, "stripe_invoices")
    cols = ", ".join(f'"{c}"' for c in INVOICE_SCHEMA if c in have)
    return conform(query_frame(con, f"SELECT {cols} FROM stripe_invoices"), INVOICE_SCHEMA)


def read_failures(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """The first failed payment time per invoice: the earliest failed attempt in
    `stripe_payment_attempts` or `invoice.payment_failed` event in `stripe_webhook_events`."""
    parts = []
    if table_exists(con, "stripe_payment_attempts"):
        parts.append(query_frame(
            con,
            "SELECT invoice_id, min(attempted_at) AS first_failed_at FROM stripe_payment_attempts"
            " WHERE outcome = ? GROUP BY invoice_id",
            ["failed"],
        ))
    if table_exists(con, "stripe_webhook_events"):
        parts.append(query_frame(
            con,
            "SELECT object_id AS invoice_id, min(created) AS first_failed_at FROM stripe_webhook_events"
            " WHERE type = ? AND object_id IS NOT NULL GROUP BY object_id",
            ["invoice.payment_failed"],
        ))
    if not parts:
        return pl.DataFrame(schema=FAILURE_SCHEMA)
    frame = pl.concat([conform(p, FAILURE_SCHEMA) for p in parts])
    return frame.group_by("invoice_id").agg(pl.col("first_failed_at").min())


def read_subscriptions(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Each subscription's status, from the webhooks part's reconciled `stripe_subscriptions` (empty
    when there is no such table)."""
    if not {"subscription_id", "status"} <= table_columns(con, "stripe_subscriptions"):
        return pl.DataFrame(schema=SUBSCRIPTION_SCHEMA)
    return conform(query_frame(
        con, "SELECT subscription_id, status AS subscription_status FROM stripe_subscriptions"), SUBSCRIPTION_SCHEMA)


def read_plans(con: duckdb.DuckDBPyConnection, now: datetime) -> pl.DataFrame | None:
    """Each customer's plan in force at `now`, from the rating part's `customer_plans` table, if any.

    Accepts a table with customer_id and plan, and optionally plan_effective_from (the latest
    assignment effective by `now` wins). Returns None when there is no such table.
    """
    if not table_exists(con, "customer_plans"):
        return None
    have = table_columns(con, "customer_plans")
    if not {"customer_id", "plan"} <= have:
        return None
    if "plan_effective_from" in have:
        sql = (
            "SELECT customer_id, arg_max(plan, plan_effective_from) AS plan FROM customer_plans"
            " WHERE CAST(plan_effective_from AS DATE) <= CAST(? AS DATE) GROUP BY customer_id"
        )
        return conform(query_frame(con, sql, [utc(now).date()]), PLAN_SCHEMA)
    return conform(query_frame(con, "SELECT DISTINCT customer_id, plan FROM customer_plans"), PLAN_SCHEMA)


def read_previous(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return conform(query_frame(con, "SELECT * FROM dunning_state"), STATE_SCHEMA)


def read_performed(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return conform(
        query_frame(con, "SELECT invoice_id, step_index, step_name, action, status, outcome FROM dunning_actions"),
        PERFORMED_SCHEMA,
    )


def current_state(con: duckdb.DuckDBPyConnection, policy: DunningPolicy, now: datetime) -> pl.DataFrame:
    """The dunning state as of `now`, from the warehouse (nothing written)."""
    return compute_state(
        read_invoices(con), policy, now,
        failures=read_failures(con), previous=read_previous(con),
        performed=read_performed(con), plans=read_plans(con, now), subscriptions=read_subscriptions(con),
    )


def refresh_state(con: duckdb.DuckDBPyConnection, policy: DunningPolicy, now: datetime) -> pl.DataFrame:
    """Recompute `dunning_state` and replace the table in one transaction. Returns the new state."""
    state = current_state(con, policy, now)
    replace_rows(con, "dunning_state", "TRUE", [], state)
    return state
