"""The dunning actions ledger (`dunning_actions`): every (invoice, step) is performed exactly once.

How exactly-once holds across re-runs and crashes:
1. Which steps to act on is decided as a whole frame (`plan_actions`) from `dunning_state`, the
   policy and the ledger; a step with a final ledger row (done / skipped / rejected / superseded)
   is never considered again.
2. Before anything leaves the process, the ledger row is written as `pending` and COMMITTED, under
   the deterministic key `dunning:<invoice>:<step>`.
3. The Stripe call carries that key as its `Idempotency-Key`. A crash after the call but before
   the row is marked `done` leaves it `pending`; the next run first re-reads the invoice from
   Stripe (GET) and, if the earlier call took effect (paid or uncollectible; for a retry, a payment
   event Stripe stamped with our key: never attempt_count, which our charge does not move), records
   it without calling again; otherwise it calls again with the same key. So a declined retry is
   never charged again, even after Stripe's 24-hour idempotency window.
4. The row is then marked `done` (or `rejected` when Stripe refuses the request for good). A row
   that cannot complete (an outage; a reminder that cannot be built or written) stays `pending`
   with its error and is reported; the run goes on with the other invoices.

Rules that keep the engine from doing harm (invariant I15):
- never charge an invoice Stripe is still retrying (`next_payment_attempt` set: Stripe clears it
  when its schedule ends, and a time in the past means its retry is due or under way, its outcome
  not yet known to us): the retry waits; once a later step is due, it is skipped
  (`stripe_retrying`) so it never blocks it. Right before charging, the invoice is read from
  Stripe (GET) and the charge waits if Stripe shows a retry scheduled there: our state, built from
  webhooks, may lag;
- each row records Stripe's attempt_count when the action was decided (the audit trail for I15);
  a manual retry does not move attempt_count (Stripe counts only automatic retries after the first
  attempt), so our steps are keyed by (invoice, step), not by attempt_count;
- when catching up after an outage, only the latest due reminder and the latest due retry are
  performed (earlier ones are `skipped`, superseded); suspension and write-off always run, in order;
- after a retry, the invoice's later steps wait for the next run, when its outcome is known; so
  do they while a due retry cannot be made in a Stripe outage, or while a pending Stripe call
  cannot be read back (without a client, too: the call may have gone through). Without a Stripe
  client, a retry never sent is reported (`no_stripe_client`) and waits for a client; the
  invoice's reminders go on (they need no Stripe), but its suspension and write-off are
  `deferred` until the retry has been made and its outcome seen: a customer is never suspended
  over a payment that was never retried (it once was, on day 14, without a key). A write-off
  never sent without a client is reported the same way;
- only steps due at the run's clock are acted on, whatever step the state records;
- a pending row whose invoice has left dunning is never performed. A retry or write-off is read back
  from Stripe's event log: `done` if an event stamped with our key shows the call went through (a
  retry that paid the invoice before a crash), else `superseded`; a reminder or suspension is
  `superseded`; a pending write-off whose invoice is written off is confirmed `done` (the call went
  through before a crash). One whose step is gone from the policy is resolved (`done` if it took
  effect, else `skipped`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import stripe

from metering.dunning import outbox
from metering.dunning.frames import conform
from metering.dunning.money import format_minor
from metering.dunning.policy import DunningPolicy
from metering.dunning.state import IN_DUNNING, STATE_SCHEMA, TS, WRITTEN_OFF, utc
from metering.logs import redact
from metering.warehouse import query_frame, table_columns, transaction

log = logging.getLogger(__name__)

FINAL_STATUSES = ("done", "skipped", "rejected", "superseded")
STRIPE_ACTIONS = ("retry", "write_off")
KEY_PREFIX = "dunning:"
# steps that wait while the invoice's due retry, which might recover the payment, has not been made
HELD_BY_AN_UNMADE_RETRY = ("suspend", "write_off")
STEP_REMOVED = "step_removed_from_policy"
LEFT_DUNNING = "left_dunning:"   # + the state: the reason of a pending row whose invoice left dunning

LEDGER_SCHEMA: dict[str, pl.DataType] = {
    "idempotency_key": pl.String, "invoice_id": pl.String, "step_index": pl.Int32,
    "step_name": pl.String, "action": pl.String, "customer_id": pl.String,
    "stripe_customer": pl.String, "currency": pl.String, "amount_minor": pl.Int64,
    "attempt_count": pl.Int64, "status": pl.String, "outcome": pl.String, "due_at": TS,
    "created_at": TS, "completed_at": TS, "attempts": pl.Int32, "last_error": pl.String,
    "stripe_request_id": pl.String, "message_id": pl.String,
}


def idempotency_key(invoice_id: str, step_name: str) -> str:
    """`dunning:<invoice>:<step>` (<= 255 chars, Stripe's limit; hashed if an id is absurdly long)."""
    key = f"{KEY_PREFIX}{invoice_id}:{step_name}"
    return key if len(key) <= 255 else KEY_PREFIX + hashlib.sha256(key.encode()).hexdigest()


@dataclass
class ActionHooks:
    """Seams for fault-injection tests (e.g. a subprocess that SIGKILLs itself at a given point)."""

    after_ledger_commit: Callable[[dict[str, Any]], None] | None = None
    after_stripe_call: Callable[[dict[str, Any]], None] | None = None


@dataclass
class ActionReport:
    """What one pass did: counts by (action, result) and the errors that left rows pending."""

    counts: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add(self, action: str, result: str) -> None:
        key = f"{action}:{result}"
        self.counts[key] = self.counts.get(key, 0) + 1


def read_ledger(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    return conform(query_frame(con, "SELECT * FROM dunning_actions"), LEDGER_SCHEMA)


# --- deciding (whole frames) ----------------------------------------------------------------------

def plan_actions(
    state: pl.DataFrame, policy: DunningPolicy, ledger: pl.DataFrame, now: datetime
) -> pl.DataFrame:
    """One row per (invoice, step) that needs attention now, with `decision` and `reason`.

    Only steps due at `now` (`due_at <= now`) are considered, whatever step the state records.

    decision: `perform` | `skip` | `wait` | `supersede` (a pending reminder or suspension whose
    invoice left dunning) | `confirm` (a pending write-off whose invoice is already written off: the
    call went through) | `resolve` (a pending row that would now be skipped, or whose step is gone
    from the invoice's schedule: done if its call took effect, else skipped; or a pending retry or
    write-off whose invoice left dunning, reason `left_dunning:<state>`: done if Stripe's event log
    shows our key's call, else superseded). Those of a removed step come first in their invoice, so
    a retry whose outcome is unknown holds the invoice's other steps back.
    """
    now = utc(now)
    state = conform(state, STATE_SCHEMA)
    ledger = conform(ledger, LEDGER_SCHEMA)
    final = ledger.filter(pl.col("status").is_in(FINAL_STATUSES)).select("invoice_id", "step_name")
    pending = ledger.filter(pl.col("status") == "pending").select(
        "invoice_id", "step_name", pl.col("attempts").alias("pending_attempts"),
    )
    steps = policy.steps_frame()
    active = state.filter(pl.col("state") == IN_DUNNING).select(
        "invoice_id", "customer_id", "stripe_customer", "currency", "amount_remaining",
        "attempt_count", "next_payment_attempt", "first_failed_at", "policy",
        pl.col("step_index").alias("current_step"),
    )
    reached = (
        active.join(steps, on="policy", how="inner")
        .with_columns(due_at=pl.col("first_failed_at") + pl.duration(days=pl.col("day")))
        # A step is acted on only once it is due at this run's clock, whatever step the state
        # records (a state computed under a later clock once had the write-off made weeks early);
        # `current_step` is then the latest step due, so "a later step is due" means just that.
        .filter((pl.col("step_index") <= pl.col("current_step")) & (pl.col("due_at") <= pl.lit(now, dtype=TS)))
        .with_columns(
            current_step=pl.col("step_index").max().over("invoice_id"),
            latest_of_action=pl.col("step_index").max().over("invoice_id", "action"),
        )
        .join(final, on=["invoice_id", "step_name"], how="anti")
        .join(pending, on=["invoice_id", "step_name"], how="left")
    )
    is_retry = pl.col("action") == "retry"
    catch_up = pl.col("action").is_in(["reminder", "retry"]) & (
        pl.col("step_index") < pl.col("latest_of_action"))
    later_due = pl.col("step_index") < pl.col("current_step")
    stripe_retrying = pl.col("next_payment_attempt").is_not_null()
    blocked = is_retry & stripe_retrying
    skippable = catch_up | (blocked & later_due)
    # a pending row may already have taken effect (crash after the call): it is resolved, not skipped
    has_pending = pl.col("pending_attempts").is_not_null()
    decided = reached.with_columns(
        decision=pl.when(skippable & has_pending).then(pl.lit("resolve"))
        .when(skippable).then(pl.lit("skip"))
        .when(blocked).then(pl.lit("wait"))
        .otherwise(pl.lit("perform")),
        reason=pl.when(catch_up).then(pl.lit("superseded_by_later_") + pl.col("action"))
        .when(blocked).then(pl.lit("stripe_retrying"))
        .otherwise(pl.lit("due")),
    )

    open_rows = (
        ledger.filter(pl.col("status") == "pending")
        .join(state.select("invoice_id", "state", "policy"), on="invoice_id", how="left")
        .with_columns(in_dunning=pl.col("state").fill_null("") == IN_DUNNING)
    )
    from_ledger = (
        "invoice_id", "customer_id", "stripe_customer", "currency",
        pl.col("amount_minor").alias("amount_remaining"), "attempt_count", "step_index",
        "step_name", "action", "due_at", pl.col("attempts").alias("pending_attempts"),
    )
    # a pending row of a step removed from the policy: the schedule above no longer reaches it
    removed = (
        open_rows.filter(pl.col("in_dunning"))
        .join(steps.select("policy", "step_name"), on=["policy", "step_name"], how="anti")
        .select(*from_ledger, decision=pl.lit("resolve"), reason=pl.lit(STEP_REMOVED))
    )
    confirmed = (pl.col("action") == "write_off") & (pl.col("state") == WRITTEN_OFF)
    left = (
        open_rows.filter(~pl.col("in_dunning"))
        .select(
            *from_ledger,
            # a write-off interrupted after Stripe accepted it: the invoice is written off -> done;
            # another Stripe call may have gone through before the invoice left dunning (a retry that
            # paid it): it is read back from Stripe; a reminder or suspension never left the process
            pl.when(confirmed).then(pl.lit("confirm"))
            .when(pl.col("action").is_in(STRIPE_ACTIONS)).then(pl.lit("resolve"))
            .otherwise(pl.lit("supersede")).alias("decision"),
            pl.when(confirmed).then(pl.lit("uncollectible"))
            .otherwise(pl.lit(LEFT_DUNNING) + pl.col("state").fill_null("unknown")).alias("reason"),
        )
    )
    columns = [
        "invoice_id", "customer_id", "stripe_customer", "currency", "amount_remaining",
        "attempt_count", "next_payment_attempt", "first_failed_at", "policy", "current_step",
        "step_index", "step_name", "action", "template", "day", "due_at", "pending_attempts",
        "decision", "reason",
    ]
    planned = pl.concat([decided, removed, left], how="diagonal_relaxed")
    return planned.select([pl.col(c) if c in planned.columns else pl.lit(None).alias(c) for c in columns]).sort(
        "invoice_id", pl.col("reason") != STEP_REMOVED, "step_index")


# --- performing (one external side effect per row) ------------------------------------------------

class _Ledger:
    """Single-row ledger writes; each statement commits on its own (DuckDB autocommit)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, now: datetime) -> None:
        self.con = con
        self.now = now

    def open(self, row: dict[str, Any], key: str, status: str = "pending",
             outcome: str | None = None) -> None:
        """Write the row (first time) or count one more attempt on the pending row."""
        exists = self.con.execute(
            "SELECT count(*) FROM dunning_actions WHERE idempotency_key = ?", [key]
        ).fetchone()[0]
        if exists and status in FINAL_STATUSES:
            self.close(key, status, outcome)
            return
        if exists:
            self.con.execute(
                "UPDATE dunning_actions SET attempts = attempts + 1 WHERE idempotency_key = ?", [key])
            return
        self.con.execute(
            "INSERT INTO dunning_actions (idempotency_key, invoice_id, step_index, step_name, action,"
            " customer_id, stripe_customer, currency, amount_minor, attempt_count, status, outcome,"
            " due_at, created_at, completed_at, attempts)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [key, row["invoice_id"], row["step_index"], row["step_name"], row["action"],
             row["customer_id"], row["stripe_customer"], row["currency"],
             row["amount_remaining"] or 0, row["attempt_count"], status, outcome, row["due_at"],
             self.now, self.now if status in FINAL_STATUSES else None, 0 if status != "pending" else 1],
        )

    def close(self, key: str, status: str, outcome: str | None, *, request_id: str | None = None,
              error: str | None = None, message_id: str | None = None) -> None:
        self.con.execute(
            "UPDATE dunning_actions SET status = ?, outcome = ?, completed_at = ?,"
            " stripe_request_id = coalesce(?, stripe_request_id), last_error = ?,"
            " message_id = coalesce(?, message_id) WHERE idempotency_key = ?",
            [status, outcome, self.now, request_id, error, message_id, key],
        )

    def note_error(self, key: str, error: str) -> None:
        self.con.execute("UPDATE dunning_actions SET last_error = ? WHERE idempotency_key = ?", [error, key])


def _request_id(obj: Any) -> str | None:
    response = getattr(obj, "last_response", None)
    return getattr(response, "request_id", None) if response is not None else None


def _error_text(exc: Exception) -> str:
    code = getattr(exc, "code", None)
    message = getattr(exc, "user_message", None) or str(exc)
    return redact(f"{type(exc).__name__}{f' ({code})' if code else ''}: {message}")[:500]


# The events Stripe emits for a charge attempt on an invoice, whatever its result.
PAYMENT_ATTEMPT_EVENTS = (
    "invoice.payment_failed", "invoice.payment_action_required", "invoice.payment_succeeded", "invoice.paid",
)
PAID_EVENTS = ("invoice.payment_succeeded", "invoice.paid")
# The event of each Stripe action we make, whatever its result.
ACTION_EVENTS = {"retry": PAYMENT_ATTEMPT_EVENTS, "write_off": ("invoice.marked_uncollectible",)}


def _attempt_event(
    client: stripe.StripeClient, invoice_id: str, key: str, types: tuple[str, ...] = PAYMENT_ATTEMPT_EVENTS
) -> str | None:
    """The type of an event of `types` (by default, a payment event) on `invoice_id` caused by our
    request with `key`, if Stripe has one.

    Stripe stamps every event with the request (and its Idempotency-Key) that caused it, and keeps
    events for 30 days. A manual charge that was declined moves neither the invoice's status nor its
    attempt_count, so this is the only trace Stripe keeps of it once its 24-hour idempotency window
    has passed.
    """
    page = client.v1.events.list({"types": list(types), "limit": 100})
    for event in page.auto_paging_iter():
        request = getattr(event, "request", None)
        obj = getattr(getattr(event, "data", None), "object", None)
        if getattr(request, "idempotency_key", None) == key and getattr(obj, "id", None) == invoice_id:
            return event.type
    return None


def _recover_pending(client: stripe.StripeClient, row: dict[str, Any], invoice: Any = None) -> str | None:
    """After a crash, did the earlier call with this key take effect? Returns its outcome, or None.
    `invoice`: the invoice as just retrieved from Stripe, if the caller has it."""
    invoice = invoice if invoice is not None else client.v1.invoices.retrieve(row["invoice_id"])
    status = getattr(invoice, "status", None)
    if row["action"] == "retry":
        if status == "paid":
            return "paid"
        # not attempt_count: a manual charge after the first attempt does not move it (only Stripe's
        # automatic retries do), so a higher count proves some retry of Stripe's, never ours
        seen = _attempt_event(client, row["invoice_id"], idempotency_key(row["invoice_id"], row["step_name"]))
        return f"attempted:{seen}" if seen else None
    if status == "uncollectible":
        return "uncollectible"
    return None


def _settle_left_dunning(client: stripe.StripeClient, row: dict[str, Any]) -> str | None:
    """A pending retry or write-off whose invoice has left dunning: did the earlier call take effect?
    Returns its outcome (`paid`, `attempted:<event type>`, `uncollectible`), or None.

    Only an event Stripe stamped with our key can say: the invoice's status is no evidence here, as
    it may be another's doing (the customer paid, Stripe wrote it off), and the call is never made
    again (a retry of a written-off invoice would charge it). As for any pending row, this relies on
    Stripe keeping events for 30 days.
    """
    key = idempotency_key(row["invoice_id"], row["step_name"])
    seen = _attempt_event(client, row["invoice_id"], key, ACTION_EVENTS[row["action"]])
    if seen is None:
        return None
    if row["action"] == "write_off":
        return "uncollectible"
    return "paid" if seen in PAID_EVENTS else f"attempted:{seen}"


def _call_stripe(client: stripe.StripeClient, row: dict[str, Any], key: str) -> tuple[str, str, str | None]:
    """Perform the Stripe action. Returns (status, outcome, request id); raises on transient failure."""
    options: stripe.RequestOptions = {"idempotency_key": key}
    invoices = client.v1.invoices
    try:
        if row["action"] == "retry":
            result = invoices.pay(row["invoice_id"], options=options)
            status = getattr(result, "status", None)
            outcome = "paid" if status == "paid" else f"status:{status}"
        else:
            result = invoices.mark_uncollectible(row["invoice_id"], options=options)
            outcome = str(getattr(result, "status", None))
        return "done", outcome, _request_id(result)
    except stripe.CardError as exc:
        # The retry happened; the card was declined. Stripe's attempt_count moves on.
        return "done", f"card_declined:{exc.code or 'declined'}", exc.request_id
    except (stripe.InvalidRequestError, stripe.IdempotencyError) as exc:
        # Refused for good (e.g. the invoice is already paid or void): never repeated.
        return "rejected", _error_text(exc), exc.request_id


def _reminder(
    con: duckdb.DuckDBPyConnection, policy: DunningPolicy, row: dict[str, Any], key: str,
    now: datetime, folder: Path, emails: dict[str, str],
) -> tuple[str, str]:
    """Render the reminder to the outbox (file, then table row). Returns (message id, outcome)."""
    template = policy.templates[row["template"]]
    elapsed = (now - row["first_failed_at"]).days
    fields = {
        "customer_id": row["customer_id"] or row["stripe_customer"] or "",
        "invoice_id": row["invoice_id"],
        "amount": format_minor(row["amount_remaining"] or 0, row["currency"]),
        "currency": row["currency"].upper(),
        "days_overdue": str(elapsed),
        "first_failed_date": row["first_failed_at"].date().isoformat(),
        "step": row["step_name"],
    }
    subject, body = outbox.render(template, fields)
    msg_id = outbox.message_id(key)
    to_address = emails.get(row["customer_id"] or "")
    message = outbox.build_message(msg_id, key, to_address, subject, body, now)
    file_name = outbox.write_message(folder, msg_id, message)
    with transaction(con):
        con.execute("DELETE FROM dunning_outbox WHERE message_id = ?", [msg_id])
        con.execute(
            "INSERT INTO dunning_outbox (message_id, idempotency_key, invoice_id, customer_id,"
            " stripe_customer, to_address, subject, body, file_name, rendered_at, status)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'rendered')",
            [msg_id, key, row["invoice_id"], row["customer_id"], row["stripe_customer"], to_address,
             subject, body, file_name, now],
        )
    return msg_id, "rendered"


def read_emails(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Our customer id -> email, from the rating part's `customer_plans` when it carries emails."""
    if not {"customer_id", "email"} <= table_columns(con, "customer_plans"):
        return {}
    rows = con.execute(
        "SELECT customer_id, max(email) FROM customer_plans WHERE email IS NOT NULL AND email <> ''"
        " GROUP BY customer_id").fetchall()
    return dict(rows)


def perform_actions(
    con: duckdb.DuckDBPyConnection,
    client: stripe.StripeClient | None,
    policy: DunningPolicy,
    state: pl.DataFrame,
    now: datetime,
    *,
    outbox_folder: Path | None = None,
    hooks: ActionHooks | None = None,
) -> ActionReport:
    """Perform what `plan_actions` decides, each (invoice, step) exactly once. See the module doc."""
    now = utc(now)
    hooks = hooks or ActionHooks()
    folder = outbox.outbox_dir(outbox_folder)
    report = ActionReport()
    plan = plan_actions(state, policy, read_ledger(con), now)
    ledger = _Ledger(con, now)
    emails = read_emails(con) if not plan.is_empty() else {}
    stopped: set[str] = set()   # invoices whose later steps wait for the next run
    unretried: set[str] = set()  # invoices whose due retry was not made for lack of a client

    def stop(action: str, key: str, invoice: str, status: str, error: str, *, hold: bool = True) -> None:
        """The row cannot go on this run (it stays as it is); with `hold`, nor can its invoice's later steps."""
        report.add(action, status)
        report.errors.append(f"{key}: {error}")
        if hold:
            stopped.add(invoice)

    for row in plan.iter_rows(named=True):
        action, invoice = row["action"], row["invoice_id"]
        key = idempotency_key(invoice, row["step_name"])
        decision = row["decision"]
        if decision == "confirm":
            ledger.close(key, "done", row["reason"])
            report.add(action, "done")
            continue
        if decision == "supersede":
            ledger.close(key, "superseded", row["reason"])
            report.add(action, "superseded")
            continue
        if invoice in stopped or (invoice in unretried and action in HELD_BY_AN_UNMADE_RETRY):
            report.add(action, "deferred")
            continue
        if decision == "wait":
            report.add(action, f"wait:{row['reason']}")
            stopped.add(invoice)
            continue
        if action in STRIPE_ACTIONS and client is None and decision in ("resolve", "perform"):
            # A pending call may have reached Stripe (a retry may even have paid): without a client
            # nothing can be known, so all the invoice's later steps wait. A call never made has no
            # outcome to wait for, so reminders (they need no Stripe) go on; but the retry might
            # have recovered the payment, so the suspension and write-off wait for it (deferred,
            # reported): suspending a customer whose payment would have gone through is the harm
            # to avoid (docs/dunning.md).
            in_flight = row["pending_attempts"] is not None
            stop(action, key, invoice, "no_stripe_client", "no Stripe client configured (set STRIPE_API_KEY)",
                 hold=in_flight)
            if action == "retry" and not in_flight:
                unretried.add(invoice)
            continue
        if decision == "resolve":
            left_dunning = row["reason"].startswith(LEFT_DUNNING)
            try:
                if left_dunning:
                    took_effect = _settle_left_dunning(client, row)
                else:
                    took_effect = _recover_pending(client, row) if action in STRIPE_ACTIONS else None
            except stripe.StripeError as exc:
                stop(action, key, invoice, "error", _error_text(exc))
                continue
            if took_effect:
                ledger.close(key, "done", took_effect)
                report.add(action, "done")
            elif left_dunning:   # Stripe has no trace of the call: it never happened
                ledger.close(key, "superseded", row["reason"])
                report.add(action, "superseded")
            else:
                if action == "reminder":   # a message rendered before a crash is withdrawn
                    outbox.withdraw(con, folder, outbox.message_id(key), row["reason"])
                ledger.close(key, "skipped", row["reason"])
                report.add(action, "skipped")
            continue
        if decision == "skip":
            ledger.open(row, key, status="skipped", outcome=row["reason"])
            report.add(action, "skipped")
            continue
        recovered = None
        if action in STRIPE_ACTIONS:   # reads only, so before the ledger row
            try:
                live = client.v1.invoices.retrieve(invoice)
                recovered = _recover_pending(client, row, live) if row["pending_attempts"] else None
            except stripe.StripeError as exc:
                stop(action, key, invoice, "error", _error_text(exc))
                continue
            live_status = getattr(live, "status", None)
            if recovered is None and live_status != "open":
                # Stripe has taken the invoice out of dunning (paid, void or written off) and our state
                # lags: a retry would charge a written-off invoice, a write-off would be refused
                ledger.open(row, key, status="skipped", outcome=f"stripe_{live_status}")
                report.add(action, "skipped")
                continue
            if action == "retry" and recovered is None and getattr(live, "next_payment_attempt", None) is not None:
                # Stripe's own schedule runs (our state lagged): as planned for a scheduled retry, ours
                # waits, or is skipped once a later step is due, so it never blocks that step
                if row["step_index"] < row["current_step"]:
                    ledger.open(row, key, status="skipped", outcome="stripe_retrying")
                    report.add(action, "skipped")
                else:
                    report.add(action, "wait:stripe_retrying")
                    stopped.add(invoice)
                continue
        if action in STRIPE_ACTIONS:
            # the audit trail records the attempt count Stripe had when the action was decided, not our
            # lagging state's
            row = {**row, "attempt_count": getattr(live, "attempt_count", None)}
        ledger.open(row, key)                       # committed before anything leaves the process
        if hooks.after_ledger_commit:
            hooks.after_ledger_commit(row)
        try:
            if action == "reminder":
                msg_id, outcome = _reminder(con, policy, row, key, now, folder, emails)
                ledger.close(key, "done", outcome, message_id=msg_id)
                report.add(action, "done")
                continue
            if action == "suspend":
                ledger.close(key, "done", "suspended")
                report.add(action, "done")
                continue
            if recovered is not None:
                status, outcome, request_id = "done", recovered, None
            else:
                status, outcome, request_id = _call_stripe(client, row, key)
            if hooks.after_stripe_call:
                hooks.after_stripe_call(row)
            ledger.close(key, status, outcome, request_id=request_id,
                         error=outcome if status == "rejected" else None)
            report.add(action, status)
            if action == "retry":
                stopped.add(invoice)
        except (stripe.StripeError, ValueError, OSError) as exc:
            # transient, or this row's data cannot be sent (e.g. a header the email package refuses):
            # the row stays pending with its error, retried next run; the other invoices go on
            error = _error_text(exc)
            ledger.note_error(key, error)
            stop(action, key, invoice, "error", error)
    if report.errors:
        log.warning("dunning actions left pending: %d", len(report.errors))
    return report
