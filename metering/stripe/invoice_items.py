"""Bill the charges Stripe cannot price as Stripe invoice items, exactly once, through an outbox.

Stripe has no price for a minimum (a period true-up) or for a charge filtered by a dimension (one
Stripe meter carries every dimension): the catalog sync reports them `not_expressible`. Their
amounts are the engine's. Once a billing period is closed, each such charge is billed as invoice
items whose amounts sum to its rated amount. A period is closed when it has ended for the customer's
Stripe "now" (the push's: `push.stripe_now`), which for a customer on a test clock is the clock's
frozen time, not the wall clock; off a clock, a rating must also have run at or after its end (the
closing rating), which `rated_at`, wall time, cannot tell on a clock:

- **Plan.** Per customer x closed period x (plan, version, charge): the target is the rated amount
  (0 when the charge no longer has a line, e.g. late usage lifted the period above its minimum);
  the billed amount is the sum of the ledger's rows that may be at Stripe (all but `failed`). A
  difference becomes a new revision whose amount is the difference (negative: a credit). A charge
  with a row still in flight gets no new revision until that row is settled. A charge a later sync
  finds Stripe can price keeps what it was billed (Stripe's meters do not bill a closed period).
  In a period with push windows marked `late` (usage its Stripe invoice never carried), differences
  that come to a credit are all held for an operator: most likely a minimum's true-up shrinking under
  that unbilled usage. A usage charge of a plan version the Stripe subscription is not on, on a
  meter the subscription's version has a Stripe price for, is not billed (Stripe bills that usage at
  the subscription's price): counted for an operator. On a meter it has no price for (its charges
  there are all filtered too, or none reads it), nothing at Stripe bills the usage: it is billed.
- **Look up.** Before any call, every row not yet acknowledged is looked up among the customer's
  invoice items by its `metadata[metering_item]`: found, it is `acknowledged` with the amount Stripe
  holds, and its charge is planned again (a ledger restored from a snapshot does not know the items
  billed after it: this finds them instead of billing them twice). An item that names one of the
  month's charges in its metadata under a key the ledger does not hold is recorded too (`acknowledged`,
  with its revision and amount): the rows such a ledger lost may have numbered the revisions otherwise
  (a failed revision), so a row planned since would not find it by key. The charge's rows not at Stripe
  that it supersedes (older revisions, and rows never sent) are `failed`, and the charge is planned
  again above it. A `sent` / `unknown` row not found
  is sent again under its own Idempotency-Key while that key is young (Stripe replays a request it
  applied), else it is `failed` and planned again. An item Stripe holds pending is looked up again
  each run: on an invoice, that is recorded; pending for a subscription that has ended, the row is
  `blocked` for an operator (never sent again while Stripe holds it); deleted at Stripe, `failed`.
- **Send.** A row is marked `sent` with its Idempotency-Key and committed before its call. It goes
  onto the period's invoice while Stripe keeps it a draft (the hour after the period ends), else it
  stays pending at Stripe, which puts it on the subscription's next invoice; with no live
  subscription no invoice would, so the row is `blocked` for an operator instead (no call), and
  re-examined each run against the customer's subscription as mapped then. An invoice finalized
  between the look-up and the call refuses the item (400 `invoice_not_editable`, nothing stored): the
  row is `failed` and re-planned, pending, in the same run. A 400 of type `idempotency_error` (the key
  was used with other parameters, so something was applied under it) is `unknown`, for the look-up.

Every row is in `stripe_invoice_items`; reconciliation compares the items on Stripe's invoices with
the rated amounts (`metering.reconcile`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import duckdb
import polars as pl
import stripe

from metering import warehouse
from metering.customers import midnight_unix, month_bounds
from metering.stripe.catalog import (
    ENDED_SUBSCRIPTIONS, NOT_EXPRESSIBLE_PRICE_SQL, customer_map, our_subscriptions, parent_subscription,
)
from metering.stripe.push import clock_times, stripe_now
from metering.stripe.retry import CallOutcome, RateLimiter, RetryPolicy, call_with_retries

log = logging.getLogger(__name__)

PERIOD_KEY = ["customer_id", "period_start"]
CHARGE_KEY = [*PERIOD_KEY, "plan", "plan_version", "charge"]
IN_FLIGHT = ("pending", "sent", "unknown", "blocked")
# Stripe took the row's item and keeps it pending (acknowledged, or blocked for an operator)
HELD_PENDING = (pl.col("status").is_in(["acknowledged", "blocked"]) & pl.col("stripe_invoice_item_id").is_not_null()
                & pl.col("stripe_invoice_id").is_null())
KEY_MAX_AGE = dt.timedelta(hours=20)  # under Stripe's 24 h idempotency-key retention
MAX_ROUNDS = 5                        # plan -> look up -> send, again for the charges a round changed
_KEY_PREFIX = "metering-item:"
_ITEM_KEY_MAX = 200                   # metadata values may hold 500 characters


@dataclass
class InvoiceItemsReport:
    """What one run did; amounts are integer minor units per currency."""

    billing_month: dt.date
    charges: int = 0            # closed period x charge pairs considered
    new_revisions: int = 0
    calls: int = 0
    acknowledged: int = 0
    on_draft_invoice: int = 0   # acknowledged onto the period's own (draft) invoice
    pending_next: int = 0       # acknowledged as pending: the subscription's next invoice carries them
    settled_by_listing: int = 0
    failed: int = 0             # rows left failed by this run
    unknown: int = 0            # rows left sent / unknown
    unmapped: int = 0           # charges of customers not synced to Stripe (nothing billed)
    held: int = 0               # differences held for an operator: a credit in a period with usage Stripe never billed
    other_version: int = 0      # usage charges of a plan version the Stripe subscription is not on, whose
                                # meter it prices (not billed)
    blocked: int = 0            # rows no invoice can carry (no live subscription, the period's invoice final)
    billed_minor: dict[str, int] = field(default_factory=dict)   # the run's acknowledged amounts
    seconds: float = 0.0

    @property
    def needs_operator(self) -> int:
        return self.failed + self.unknown + self.unmapped + self.held + self.other_version + self.blocked

    def summary(self) -> str:
        money = ", ".join(f"{v} {c}" for c, v in sorted(self.billed_minor.items())) or "nothing"
        return (f"invoice items {self.billing_month:%Y-%m}: {self.charges} closed charge(s) Stripe cannot price, "
                f"{self.new_revisions} new revision(s), {self.calls} call(s); {self.acknowledged} acknowledged "
                f"({self.on_draft_invoice} on the period's draft invoice, {self.pending_next} pending for the next "
                f"invoice, {self.settled_by_listing} found by listing), billed {money} (minor units); "
                f"{self.failed} failed, {self.unknown} unknown, {self.blocked} blocked, {self.unmapped} unmapped, "
                f"{self.held} held, {self.other_version} of another plan version")


def item_key(customer_id: str, period_start: dt.date, plan: str, plan_version: str, charge: str,
             revision: int) -> str:
    """The row's identity at Stripe (`metadata[metering_item]`): readable when short, else a SHA-256."""
    text = f"{customer_id}|{period_start.isoformat()}|{plan}|{plan_version}|{charge}|r{revision}"
    return text if len(text) <= _ITEM_KEY_MAX else "h-" + hashlib.sha256(text.encode()).hexdigest()


def idempotency_key(key: str, destination: str | None) -> str:
    """One key per row and destination (the invoice, or the subscription a pending item waits for):
    the same row sent elsewhere is another request."""
    return f"{_KEY_PREFIX}{key}@{destination or 'pending'}"


def closed_targets(con: duckdb.DuckDBPyConnection, billing_month: dt.date, now: dt.datetime,
                   clock_now: pl.DataFrame) -> pl.DataFrame:
    """Per closed period starting in the month x charge: the rated amount, and whether Stripe cannot
    price the charge (the latest catalog sync's finding).

    A period is closed once it has ended for the customer's Stripe "now": `clock_now` (customer_id,
    clock_now) for a customer on a test clock, else `now`. Off a clock, a rating must also have run at
    or after its end (`rated_at`: the closing rating). On a clock, `rated_at` (wall time) says nothing
    of the clock's time, behind or ahead of it, so the clock alone decides."""
    m0, m1 = month_bounds(billing_month)
    rated = warehouse.query_frame(con, f"""
        SELECT customer_id, period_start, max(period_end) AS period_end, plan, plan_version, charge,
               any_value(currency) AS currency, CAST(sum(amount_minor) AS BIGINT) AS target_minor,
               bool_or({NOT_EXPRESSIBLE_PRICE_SQL}) AS not_expressible, any_value(meter) AS meter,
               max(max(period_end)) OVER period AS closes_on, max(max(rated_at)) OVER period AS rated_at
        FROM rated_usage WHERE period_start >= ? AND period_start < ?
        GROUP BY customer_id, period_start, plan, plan_version, charge
        WINDOW period AS (PARTITION BY customer_id, period_start)""", [m0, m1])
    ends = pl.col("closes_on").cast(pl.Datetime("us", "UTC"))
    on_clock = pl.col("clock_now").is_not_null()
    return (rated.join(clock_now.select("customer_id", "clock_now"), on="customer_id", how="left")
            .filter(ends <= pl.coalesce("clock_now", pl.lit(now).cast(pl.Datetime("us", "UTC"))))
            .filter(on_clock | (pl.col("rated_at") >= ends))
            .drop("closes_on", "rated_at", "clock_now"))


def _leave_for_operator(report: InvoiceItemsReport, counter: str, charges: pl.DataFrame, why: str) -> pl.DataFrame:
    """Count `charges` on the report's `counter` (the most any round saw), say why, and return their keys."""
    setattr(report, counter, max(getattr(report, counter), charges.height))
    log.warning("%d charge(s) left for an operator: %s (e.g. %s)", charges.height, why,
                charges.select(CHARGE_KEY).row(0, named=True))
    return charges.select(CHARGE_KEY)


def _periods_with_late_usage(con: duckdb.DuckDBPyConnection, billing_month: dt.date) -> pl.DataFrame:
    """(customer_id, period_start) of the month's rated periods holding a push window marked `late`:
    usage the period's Stripe invoice never carried."""
    m0, m1 = month_bounds(billing_month)
    return warehouse.query_frame(con, """
        SELECT DISTINCT r.customer_id, r.period_start
        FROM (SELECT DISTINCT customer_id, period_start, period_end FROM rated_usage
              WHERE period_start >= ? AND period_start < ?) r
        JOIN stripe_push_ledger l
          ON l.customer_id = r.customer_id AND l.status = 'late'
         AND l.window_start >= CAST(r.period_start AS TIMESTAMPTZ) AND l.window_start < CAST(r.period_end AS TIMESTAMPTZ)
        """, [m0, m1])


def _priced_meters(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Per plan version rating recorded (`rules_versions`, as `sub_plan`, `sub_version`): the meters a
    Stripe subscription on it bills, those of its charges with a Stripe price (the latest catalog sync's
    `stripe_objects`; a charge it found not expressible has none, and no subscription item)."""
    return warehouse.query_frame(con, """
        SELECT plan AS sub_plan, plan_version AS sub_version,
               coalesce(list(DISTINCT c.meter) FILTER (WHERE c.meter IS NOT NULL AND (plan || '|' || plan_version
                            || '|' || c.name) IN (SELECT our_key FROM stripe_objects WHERE kind = 'price')),
                        CAST([] AS VARCHAR[])) AS priced_meters
        FROM (SELECT plan, plan_version,
                     unnest(from_json(definition->'charges', '[{"name": "VARCHAR", "meter": "VARCHAR"}]')) AS c
              FROM rules_versions)
        GROUP BY ALL""")


def _ledger(con: duckdb.DuckDBPyConnection, billing_month: dt.date) -> pl.DataFrame:
    m0, m1 = month_bounds(billing_month)
    return warehouse.query_frame(
        con, "SELECT * FROM stripe_invoice_items WHERE period_start >= ? AND period_start < ?", [m0, m1])


class InvoiceItemBiller:
    """Bills one month's closed charges for one warehouse connection and one Stripe client."""

    def __init__(self, con: duckdb.DuckDBPyConnection, client: stripe.StripeClient, *,
                 rate: float = 20.0, retry: RetryPolicy | None = None,
                 now: Callable[[], dt.datetime] | None = None) -> None:
        self.con, self.client = con, client
        self.limiter = RateLimiter(rate, burst=max(1, int(rate) or 1))
        self.retry = retry or RetryPolicy()
        self._now = now or (lambda: dt.datetime.now(dt.UTC))

    def run(self, billing_month: dt.date) -> InvoiceItemsReport:
        started = time.monotonic()
        report = InvoiceItemsReport(billing_month)
        only: pl.DataFrame | None = None
        still_changing = 0
        for _ in range(MAX_ROUNDS):
            self._plan(billing_month, report, only)
            found = self._look_up(billing_month, report)
            sent = self._send(billing_month, report)
            # charges to plan again: a row Stripe already held (its amount may differ: a ledger
            # restored from a snapshot), one an invoice refused (it left draft: bill it pending), and
            # one just billed (a row planned by an earlier, interrupted run under an older rating)
            only = pl.concat([found, sent]).unique()
            if only.is_empty():
                break
        else:
            still_changing = only.height
            log.warning("%d charge(s) still changing after %d rounds: the next run continues", still_changing, MAX_ROUNDS)
        left = _ledger(self.con, billing_month)
        latest = left.sort("revision").group_by(CHARGE_KEY).last()
        # a failed row counts while its charge is still owed: one whose difference a later rating undid needs nothing
        report.failed = (latest.filter(pl.col("status") == "failed")
                         .join(self._owed, on=CHARGE_KEY, how="semi").height)
        report.unknown = left.filter(pl.col("status").is_in(["sent", "unknown"])).height + still_changing
        report.blocked = left.filter(pl.col("status") == "blocked").height
        report.seconds = time.monotonic() - started
        log.info(report.summary())
        return report

    # -- plan ------------------------------------------------------------------------------------
    def _plan(self, billing_month: dt.date, report: InvoiceItemsReport, only: pl.DataFrame | None = None) -> None:
        """New revisions for the charges whose billed amount is not their rated one (`only`: of these
        charges alone). A charge whose latest revision failed is planned again: one attempt a run."""
        customers = customer_map(self.con)
        closed = closed_targets(self.con, billing_month, *self._stripe_now(customers))
        # what was billed for a period not closed (yet, or any more: billed before the closing rule
        # read the customer's clock) is left as it is: a missing target there is no credit due
        ledger = _ledger(self.con, billing_month).join(closed.select(PERIOD_KEY).unique(), on=PERIOD_KEY, how="semi")
        # a charge billed as items that a later sync finds Stripe can price keeps what it was billed:
        # Stripe's meters do not bill a closed period after the fact, so crediting it would lose it
        targets = closed.filter(pl.col("not_expressible")).drop("not_expressible")
        priced_now = closed.filter(~pl.col("not_expressible")).select(CHARGE_KEY)
        ledger = ledger.join(priced_now, on=CHARGE_KEY, how="anti")
        report.charges = max(report.charges, targets.height)
        # A usage charge of a plan version the Stripe subscription is not on (a plan or version change
        # inside the period: the sync does not switch subscriptions) is billed by Stripe already when the
        # subscription's version has a price on its meter: an item would bill the same usage twice. On a
        # meter it has no price for (its charges there are all filtered too, or none reads it), nothing at
        # Stripe bills the usage: the charge is billed as an item like any other.
        subscribed = (customers.select("customer_id", sub_plan="plan", sub_version="plan_version")
                      .join(_priced_meters(self.con), on=["sub_plan", "sub_version"], how="left"))
        # (a subscription whose version is unknown, not created by our sync or never rated, may price the
        # meter too)
        other_version = (targets.join(subscribed, on="customer_id", how="inner")
                         .filter(pl.col("meter").is_not_null()
                                 & ((pl.col("plan") != pl.col("sub_plan")).fill_null(True)
                                    | (pl.col("plan_version") != pl.col("sub_version")).fill_null(True))
                                 & pl.col("priced_meters").list.contains(pl.col("meter")).fill_null(True)))
        if other_version.height:
            aside = _leave_for_operator(report, "other_version", other_version, "their plan version is not the "
                                        "Stripe subscription's, whose price bills the same usage")
            # and what was billed for it stays billed: never credited for this reason
            targets = targets.join(aside, on=CHARGE_KEY, how="anti")
            ledger = ledger.join(aside, on=CHARGE_KEY, how="anti")
        targets = targets.drop("meter")
        billed = (ledger.group_by(CHARGE_KEY).agg(
            billed_minor=pl.col("amount_minor").filter(pl.col("status") != "failed").sum(),
            revision=pl.col("revision").max(),
            in_flight=pl.col("status").is_in(IN_FLIGHT).any(),
            period_end=pl.col("period_end").first(), currency=pl.col("currency").first()))
        merged = (targets.join(billed, on=CHARGE_KEY, how="full", coalesce=True, suffix="_ledger")
                  .with_columns(pl.col("target_minor").fill_null(0), pl.col("billed_minor").fill_null(0),
                                pl.col("revision").fill_null(0), pl.col("in_flight").fill_null(False),
                                period_end=pl.coalesce("period_end", "period_end_ledger"),
                                currency=pl.coalesce("currency", "currency_ledger")))
        self._owed = merged.filter(pl.col("target_minor") != pl.col("billed_minor")).select(CHARGE_KEY)
        due = merged.filter(~pl.col("in_flight") & (pl.col("target_minor") != pl.col("billed_minor")))
        # A period with usage Stripe never billed (windows pushed too late for its invoice) whose
        # differences come to a credit: most likely a minimum's true-up shrinking under that very usage,
        # and crediting it would lose the money twice over. All its differences wait for an operator (a
        # credit note, or billing the late usage); billing only the positive ones would overcharge.
        late_credit = (due.join(_periods_with_late_usage(self.con, billing_month), on=PERIOD_KEY, how="semi")
                       .group_by(PERIOD_KEY).agg(net=(pl.col("target_minor") - pl.col("billed_minor")).sum())
                       .filter(pl.col("net") < 0))
        held = due.join(late_credit, on=PERIOD_KEY, how="semi")
        if held.height:
            due = due.join(_leave_for_operator(report, "held", held, "their periods have usage Stripe never billed "
                                               "(late windows in stripe_push_ledger) and come to a credit"),
                           on=CHARGE_KEY, how="anti")
        if only is not None:  # after the hold, which must weigh the whole period's differences
            due = due.join(only, on=CHARGE_KEY, how="semi")
        if due.is_empty():
            return
        due = due.join(customers.select("customer_id", "stripe_customer_id", "subscription_id"), on="customer_id",
                       how="left")
        unmapped = due.filter(pl.col("stripe_customer_id").is_null())
        if unmapped.height:
            report.unmapped = unmapped.height
            log.warning("%d charge(s) not billed: customers not synced to Stripe (e.g. %s); run `metering stripe sync`",
                        unmapped.height, ", ".join(sorted(set(unmapped["customer_id"].head(5).to_list()))))
        now = self._now()
        rows = [
            {**{k: r[k] for k in (*CHARGE_KEY, "period_end", "currency", "stripe_customer_id", "subscription_id")},
             "revision": r["revision"] + 1, "amount_minor": r["target_minor"] - r["billed_minor"],
             "target_minor": r["target_minor"],
             "item_key": item_key(r["customer_id"], r["period_start"], r["plan"], r["plan_version"], r["charge"],
                                  r["revision"] + 1),
             "status": "pending", "created_at": now, "updated_at": now}
            for r in due.filter(pl.col("stripe_customer_id").is_not_null()).iter_rows(named=True)
        ]
        self._insert(rows)
        report.new_revisions += len(rows)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        """Add ledger rows (all with the same keys)."""
        if not rows:
            return
        frame = pl.DataFrame(rows)  # noqa: F841 - read by DuckDB below
        cols = ", ".join(rows[0])
        self.con.execute(f"INSERT INTO stripe_invoice_items ({cols}) SELECT {cols} FROM frame")

    def _stripe_now(self, customers: pl.DataFrame) -> tuple[dt.datetime, pl.DataFrame]:
        """Stripe's "now" as the push reads it: the wall clock, and (customer_id, clock_now) for the
        customers on a test clock, whose "now" is the clock's frozen time."""
        by_clock = stripe_now(self.client, customers, self._now())
        return by_clock[None], (customers.join(clock_times(by_clock), on="test_clock_id")
                                .select("customer_id", clock_now="stripe_now"))

    # -- look up ---------------------------------------------------------------------------------
    def _look_up(self, billing_month: dt.date, report: InvoiceItemsReport) -> pl.DataFrame:
        """Rows not yet acknowledged, looked up among their customer's invoice items at Stripe by
        `metadata[metering_item]` before any call. Found: `acknowledged`, with the amount Stripe holds.
        A `sent` / `unknown` row not found is sent again under its own key while the key is young
        (Stripe replays a request it applied), else it is `failed` and planned again. Items Stripe
        holds pending are examined again (`_recheck_held`). Returns the charges to plan again."""
        ledger = _ledger(self.con, billing_month)
        rows = ledger.filter(pl.col("status").is_in(IN_FLIGHT) | HELD_PENDING)
        held = set(rows.filter(HELD_PENDING)["item_key"].to_list())
        known = set(ledger["item_key"].to_list())
        found, waiting = [], []
        now = self._now()
        for customer in rows["stripe_customer_id"].unique().sort().to_list():
            at_stripe = {
                getattr(item.metadata, "metering_item", None): item
                for item in self.client.v1.invoice_items.list({"customer": customer, "limit": 100}).auto_paging_iter()
            }
            adopted = self._record_unknown_items(customer, at_stripe, known, billing_month, now, waiting)
            found.extend(dict(zip(CHARGE_KEY, charge)) for charge in adopted)
            for row in rows.filter(pl.col("stripe_customer_id") == customer).iter_rows(named=True):
                item = at_stripe.get(row["item_key"])
                above = adopted.get(tuple(row[k] for k in CHARGE_KEY))
                if item is None and above is not None and (row["revision"] < above or row["first_attempt_at"] is None):
                    self._update(row, "failed", now, resolved_by="listing", last_error=(
                        f"superseded: Stripe holds revision {above} of this charge, which the ledger did not know "
                        f"(restored from a snapshot?); the charge is planned again above it"))
                elif row["item_key"] in held:
                    self._recheck_held(row, item, now, found, waiting)
                elif item is not None:
                    differs = int(item.amount) != row["amount_minor"]
                    self._update(row, "acknowledged", now, resolved_by="listing", stripe_invoice_item_id=item.id,
                                 stripe_invoice_id=_invoice_id(item), amount_minor=int(item.amount),
                                 last_error=(f"Stripe held this item with {item.amount}, the ledger {row['amount_minor']}"
                                             if differs else row["last_error"]))
                    report.settled_by_listing += 1
                    found.append({k: row[k] for k in CHARGE_KEY})
                    if _invoice_id(item) is None:
                        waiting.append(({**row, "status": "acknowledged", "stripe_invoice_item_id": item.id,
                                         "amount_minor": int(item.amount)}, item))
                elif row["status"] in ("pending", "blocked"):
                    continue
                elif row["first_attempt_at"] is not None and now - row["first_attempt_at"] < KEY_MAX_AGE:
                    self._update(row, "pending", now)
                else:
                    self._update(row, "failed", now, resolved_by="listing",
                                 last_error="not among the customer's invoice items at Stripe after its key expired")
                    found.append({k: row[k] for k in CHARGE_KEY})   # nothing bills it: planned again now
        self._block_stranded(waiting, now)
        return pl.DataFrame(found, schema=rows.select(CHARGE_KEY).schema)

    def _record_unknown_items(self, customer: str, at_stripe: dict[str | None, Any], known: set[str],
                              billing_month: dt.date, now: dt.datetime,
                              waiting: list[tuple[dict[str, Any], Any]]) -> dict[tuple[Any, ...], int]:
        """The customer's items at Stripe that name a charge of the month (`metadata`) under a key the
        ledger does not hold, recorded `acknowledged` with Stripe's amount and revision; `target_minor`
        is what Stripe holds for the charge up to that revision. Returns charge -> the highest revision
        recorded. Pending ones go to `waiting`, as a found row's do."""
        m0, m1 = month_bounds(billing_month)
        named = []   # (charge as CHARGE_KEY's values, revision, key, item) of every item naming a month's charge
        for key, item in at_stripe.items():
            meta = item.metadata
            try:
                start = dt.date.fromisoformat(getattr(meta, "metering_period_start", None) or "")
                revision = int(getattr(meta, "metering_revision", None) or "")
            except ValueError:
                continue
            parts = (getattr(meta, "metering_charge", None) or "").split("|", 2)
            if key is None or len(parts) != 3 or not m0 <= start < m1 or not getattr(meta, "metering_customer_id", None):
                continue
            named.append(((meta.metering_customer_id, start, *parts), revision, key, item))
        named.sort(key=lambda n: n[:2])   # each charge's revisions in order
        held_so_far: dict[tuple[Any, ...], int] = {}   # (charge, revision) -> Stripe's amount up to that revision
        running: dict[tuple[Any, ...], int] = {}
        for charge, revision, _, item in named:
            running[charge] = running.get(charge, 0) + int(item.amount)
            held_so_far[charge, revision] = running[charge]   # the last of a revision's items holds them all
        rows, adopted = [], {}
        for charge, revision, key, item in named:
            if key in known:
                continue
            rows.append({**dict(zip(CHARGE_KEY, charge)), "revision": revision,
                         "period_end": dt.datetime.fromtimestamp(int(item.period.end) + 1, dt.UTC).date(),
                         "currency": item.currency, "amount_minor": int(item.amount), "target_minor": held_so_far[charge, revision],
                         "item_key": key, "stripe_customer_id": customer, "subscription_id": parent_subscription(item),
                         "stripe_invoice_item_id": item.id, "stripe_invoice_id": _invoice_id(item),
                         "status": "acknowledged", "resolved_by": "listing", "created_at": now, "updated_at": now,
                         "last_error": "found at Stripe under a key the ledger did not hold (restored from a "
                                       "snapshot?): recorded as Stripe holds it"})
            known.add(key)
            adopted[charge] = revision   # the highest so far: revisions come in order
            if _invoice_id(item) is None:
                waiting.append((rows[-1], item))
        if rows:
            self._insert(rows)
            log.warning("%d invoice item(s) of customer %s found at Stripe under keys the ledger did not hold: "
                        "recorded", len(rows), customer)
        return adopted

    def _recheck_held(self, row: dict[str, Any], item: Any, now: dt.datetime, found: list[dict[str, Any]],
                      waiting: list[tuple[dict[str, Any], Any]]) -> None:
        """An item Stripe took pending (for the subscription's next invoice), examined again each run:
        on an invoice now, that invoice is recorded; gone from Stripe (deleted there), nothing bills
        it, so the row is `failed` and its charge planned again; still pending, it waits for
        `_block_stranded`. It is never sent a second time while Stripe holds it."""
        if item is None:
            self._update(row, "failed", now, resolved_by="listing", last_error=(
                f"Stripe no longer holds item {row['stripe_invoice_item_id']} (deleted there before any invoice "
                f"carried it): its charge is billed again"))
            found.append({k: row[k] for k in CHARGE_KEY})
        elif _invoice_id(item) is not None:
            self._update(row, "acknowledged", now, stripe_invoice_id=_invoice_id(item),
                         last_error=row["last_error"] if row["status"] == "acknowledged" else None)
        else:
            waiting.append((row, item))

    def _block_stranded(self, waiting: list[tuple[dict[str, Any], Any]], now: dt.datetime) -> None:
        """Rows whose item Stripe holds pending for a subscription that has ended: no scheduled invoice
        will carry it, so the row is `blocked` for an operator (the item stays: Stripe still charges a
        pending item on an invoice created for the customer). An item with no subscription (one made
        by hand) waits for the customer's next invoice, whatever makes it, and is left to whoever made it."""
        tied = [(row, sub) for row, item in waiting if (sub := parent_subscription(item)) is not None]
        live = self._live_subscriptions(sub for _, sub in tied)
        for row, sub in tied:
            if sub not in live and row["status"] != "blocked":   # an ended subscription stays ended
                self._update(row, "blocked", now, last_error=(
                    f"Stripe holds invoice item {row['stripe_invoice_item_id']} ({row['amount_minor']} "
                    f"{row['currency']} minor units) pending for subscription {sub}, which has ended: no scheduled "
                    f"invoice will carry it, and it is on no invoice. It is not billed again while Stripe holds it. "
                    f"Either create an invoice for customer {row['stripe_customer_id']} that includes its pending "
                    f"items (Stripe charges the item there; the next run records the invoice), or delete the item "
                    f"at Stripe (the next run bills the charge again: to a live subscription, else blocked)"))

    # -- send ------------------------------------------------------------------------------------
    def _send(self, billing_month: dt.date, report: InvoiceItemsReport) -> pl.DataFrame:
        """Send the pending rows; returns the charges whose item Stripe took, or an invoice refused
        (Stripe stored nothing: `invoice_not_editable`, the invoice is no longer a draft)."""
        pending = _ledger(self.con, billing_month).filter(pl.col("status").is_in(["pending", "blocked"])
                                                          & pl.col("stripe_invoice_item_id").is_null())
        if pending.is_empty():
            return pending.select(CHARGE_KEY)
        # a blocked row goes to the customer's subscription as mapped now
        current = customer_map(self.con).select("customer_id", current_subscription="subscription_id")
        pending = (pending.join(current, on="customer_id", how="left")
                   .with_columns(subscription_id=pl.when(pl.col("status") == "blocked")
                                 .then(pl.col("current_subscription")).otherwise(pl.col("subscription_id")))
                   .drop("current_subscription"))
        again = []
        drafts = self._draft_invoices(pending)
        live = self._live_subscriptions(pending["subscription_id"])
        for row in pending.sort(CHARGE_KEY + ["revision"]).iter_rows(named=True):
            now = self._now()
            if row["idempotency_key"] is None:  # first call: choose the destination, fixed with the key
                target = drafts.get((row["stripe_customer_id"], row["period_start"], row["period_end"]))
                row = {**row, "target_invoice_id": target,
                       "idempotency_key": idempotency_key(row["item_key"], target or row["subscription_id"])}
            if row["target_invoice_id"] is None and row["subscription_id"] not in live:
                # a pending item with no live subscription would wait for an invoice that never comes. The
                # look-up just ran, so nothing was applied under the row's key: it may choose another later
                self._update(row, "blocked", now, subscription_id=row["subscription_id"], idempotency_key=None,
                             target_invoice_id=None, last_error=(
                    f"no live subscription ({row['subscription_id'] or 'none mapped'}) and the period's invoice "
                    f"is no longer a draft: no invoice would carry a pending item. Invoice it by hand with an "
                    f"invoice item whose metadata[metering_item] is {row['item_key']!r} (the next run finds it "
                    f"and records it), or give the customer a subscription (the next run bills it there)"))
                continue
            self._update(row, "sent", now, idempotency_key=row["idempotency_key"],
                         target_invoice_id=row["target_invoice_id"], subscription_id=row["subscription_id"],
                         first_attempt_at=row["first_attempt_at"] or now, last_attempt_at=now)
            sent = self._call(row)
            report.calls += sent.outcome.attempts
            self._record(row, sent, report)
            refused = (sent.outcome.status == "failed" and row["target_invoice_id"]
                       and sent.error_code == "invoice_not_editable")
            if refused or sent.outcome.status == "acknowledged":
                again.append({k: row[k] for k in CHARGE_KEY})
        return pl.DataFrame(again, schema=pending.select(CHARGE_KEY).schema)

    def _draft_invoices(self, pending: pl.DataFrame) -> dict[tuple[str, dt.date, dt.date], str]:
        """(Stripe customer, period) -> the id of the period's invoice of our subscription while Stripe keeps
        it a draft (not another product's invoice of the same period)."""
        out: dict[tuple[str, dt.date, dt.date], str] = {}
        ours = our_subscriptions(self.con)
        for customer in pending["stripe_customer_id"].unique().sort().to_list():
            for invoice in self.client.v1.invoices.list(
                    {"customer": customer, "status": "draft", "limit": 100}).auto_paging_iter():
                if invoice.billing_reason != "subscription_cycle" or parent_subscription(invoice) not in ours:
                    continue
                start, end = (dt.datetime.fromtimestamp(int(t), dt.UTC) for t in (invoice.period_start, invoice.period_end))
                if start.time() == dt.time(0) and end.time() == dt.time(0):
                    out[(customer, start.date(), end.date())] = invoice.id
        return out

    def _live_subscriptions(self, subscriptions: Iterable[str | None]) -> set[str]:
        """The subscriptions that have not ended (a deleted one has)."""
        live = set()
        for sub in sorted({s for s in subscriptions if s is not None}):
            try:
                status = self.client.v1.subscriptions.retrieve(sub).status
            except stripe.InvalidRequestError as exc:
                if exc.http_status != 404:
                    raise
                continue
            if status not in ENDED_SUBSCRIPTIONS:
                live.add(sub)
        return live

    def _call(self, row: dict[str, Any]) -> _Sent:
        params: dict[str, Any] = {
            "customer": row["stripe_customer_id"],
            "amount": int(row["amount_minor"]),
            "currency": row["currency"].lower(),
            "description": (f"{row['charge']} ({row['plan']} {row['plan_version']}), "
                            f"{row['period_start']:%Y-%m-%d} to {row['period_end'] - dt.timedelta(days=1):%Y-%m-%d}"
                            + (f", revision {row['revision']}" if row["revision"] > 1 else "")),
            # Stripe's item period end is inclusive: the period's last second
            "period": {"start": midnight_unix(row["period_start"]), "end": midnight_unix(row["period_end"]) - 1},
            "metadata": {"metering_item": row["item_key"], "metering_customer_id": row["customer_id"],
                         "metering_period_start": row["period_start"].isoformat(),
                         "metering_charge": f"{row['plan']}|{row['plan_version']}|{row['charge']}",
                         "metering_revision": str(row["revision"])},
        }
        if row["target_invoice_id"]:
            params["invoice"] = row["target_invoice_id"]
        elif row["subscription_id"]:
            params["subscription"] = row["subscription_id"]
        sent = _Sent()

        def send() -> Any:
            try:
                sent.item = self.client.v1.invoice_items.create(
                    params, {"idempotency_key": row["idempotency_key"], "max_network_retries": 0})
            except stripe.StripeError as exc:
                sent.error_code, sent.error_type = exc.code, getattr(exc.error, "type", None)
                raise
            return sent.item

        sent.outcome = call_with_retries(send, limiter=self.limiter, policy=self.retry)
        return sent

    def _record(self, row: dict[str, Any], sent: _Sent, report: InvoiceItemsReport) -> None:
        now = self._now()
        outcome = sent.outcome
        extra: dict[str, Any] = {"attempts": (row["attempts"] or 0) + outcome.attempts, "last_error": outcome.error,
                                 "last_http_status": outcome.http_status, "stripe_request_id": outcome.request_id}
        status = outcome.status
        # Stripe's error `type` says idempotency_error; its `code` is None for a key reused with other parameters
        if status == "failed" and sent.error_type == "idempotency_error":
            # the key was used with other parameters: something was applied under it; look it up
            status = "unknown"
        if status == "acknowledged":
            item = sent.item
            extra.update(resolved_by="response", stripe_invoice_item_id=item.id, stripe_invoice_id=_invoice_id(item))
            report.acknowledged += 1
            if extra["stripe_invoice_id"]:
                report.on_draft_invoice += 1
            else:
                report.pending_next += 1
            report.billed_minor[row["currency"]] = report.billed_minor.get(row["currency"], 0) + int(row["amount_minor"])
        self._update(row, status, now, **extra)

    def _update(self, row: dict[str, Any], status: str, now: dt.datetime, **values: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in ("status", "updated_at", *values))
        self.con.execute(
            f"UPDATE stripe_invoice_items SET {sets} WHERE item_key = ?",
            [status, now, *values.values(), row["item_key"]])


@dataclass
class _Sent:
    """One create call: its outcome, the item Stripe returned, and the last error's code and type."""

    outcome: CallOutcome = field(default_factory=lambda: CallOutcome("unknown", 0))
    item: Any = None
    error_code: str | None = None
    error_type: str | None = None


def _invoice_id(item: Any) -> str | None:
    invoice = getattr(item, "invoice", None)
    return invoice if isinstance(invoice, str) or invoice is None else invoice.id


def bill_invoice_items(con: duckdb.DuckDBPyConnection, client: stripe.StripeClient, billing_month: dt.date,
                       **options: Any) -> InvoiceItemsReport:
    """Bill the month's closed charges Stripe cannot price (see the module docstring)."""
    return InvoiceItemBiller(con, client, **options).run(billing_month)
