"""Push each customer's usage to Stripe: one pre-aggregated meter event per customer x meter x window.

A push of [date_from, date_to]:

1. **Plan** (one transaction, before any call): compute every window's value from
   `usage_aggregates` (`windows.desired_values`), decide which windows are not pushable
   (`late`: older than Stripe's 35 days, with a margin, or the customer's invoice for that time is
   already finalized), and write new ledger revisions where a window's value or destination changed
   (`ledger.plan_revisions`). A window whose destination changed while the previous Stripe customer
   still holds a non-zero value for it (by Stripe's summary; on a `last`-formula meter, for any
   window of its billing period) is held for an operator (`moved`).
2. **Resolve stale attempts**: an open revision (pending / sent / unknown) first tried more than
   `key_max_age` (20 h, under Stripe's 24 h key retention) ago is not resent under its key. Stripe's
   meter event summary for the window is read: if it already holds the value, the row is
   `acknowledged`; otherwise the row is `superseded` and a new revision (new identifier and key,
   same value) is sent, which on a pre-aggregated meter replaces whatever the window held. On a
   `last`-formula meter an empty summary never acknowledges (not even a value of 0): Stripe bills
   the period's newest event, and a window without one leaves an older window's value billed.
   An attempted open revision of a window Stripe no longer takes (late) is settled the same way
   first, but nothing is sent: a summary without the value decides only once it can show the
   revision's last attempt (summaries lag, `PushConfig.summary_lag`); until then the row stays
   `unknown`, after it the row is superseded and the value gets a `late` revision.
3. **Send**: the open revisions of the windows planned in step 1 (so every one passed its guards;
   other open rows in the dates, e.g. another meter's after --to, wait for a push covering them), in
   batches: a batch is marked `sent` (committed) before its calls; calls run concurrently across
   customer x meter pairs, never two at once for one pair; each call carries the revision's
   identifier and Idempotency-Key and is retried with backoff (`retry.call_with_retries`); if any
   attempt may have been applied (no response, 409, 5xx), the call ends `unknown`, whatever the
   later attempts answered; outcomes are committed per batch. A call refused because Stripe holds
   something else under its identifier (a duplicate) or its key (a 400 `idempotency_error`: first
   used with another value) ends `unknown` too, and Stripe's summary settles it in the same run.
4. **Report**: calls, retries, 429s, outcomes, late and unmapped windows, raw events per call.

A process killed at any point leaves rows `pending` or `sent`; the next push resends them under
the same keys, so Stripe counts each window's newest value exactly once.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import duckdb
import polars as pl
import stripe

from metering import warehouse
from metering.customers import midnight_unix, period_containing
from metering.errors import BadInputError, ExternalServiceError
from metering.logs import redact
from metering.reconcile.settings import DEFAULT_SETTLE_SECONDS, settle_seconds_from_env
from metering.rules.meters import Meter
from metering.stripe import catalog, ledger, windows
from metering.stripe.keys import event_name
from metering.stripe.retry import AuthError, CallOutcome, RateLimiter, RetryPolicy, call_with_retries

log = logging.getLogger(__name__)

STRIPE_MAX_AGE = timedelta(days=35)
STRIPE_MAX_FUTURE = timedelta(minutes=5)
DEFAULT_RATE = 20.0  # calls/s: Stripe's test mode allows 25 operations/s per account in total


@dataclass(frozen=True)
class PushConfig:
    window_kind: str = "day"
    concurrency: int = 8
    rate: float = DEFAULT_RATE              # calls per second; <= 0 disables the client-side limit
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    key_max_age: timedelta = timedelta(hours=20)
    late_margin: timedelta = timedelta(hours=1)   # stay this far inside Stripe's 35 days
    batch_size: int = 500
    retry_failed: bool = False
    # Stripe's meter event summaries are eventually consistent: an attempt younger than this may not
    # show in them yet. The same setting as reconciliation's settle delay (METERING_STRIPE_SETTLE_SECONDS)
    summary_lag: timedelta = timedelta(seconds=DEFAULT_SETTLE_SECONDS)

    def __post_init__(self) -> None:
        if self.window_kind not in windows.WINDOW_KINDS:
            raise BadInputError(f"window kind (--window, STRIPE_METER_WINDOW): {self.window_kind!r} is not one of "
                                f"day, hour")
        if self.concurrency < 1:
            raise BadInputError(f"push concurrency (--concurrency, STRIPE_PUSH_CONCURRENCY) must be >= 1, "
                                f"got {self.concurrency}")
        if not math.isfinite(self.rate) or self.rate < 0:   # nan and inf crashed the rate limiter
            raise BadInputError(f"push rate (--rate, STRIPE_PUSH_RATE): {self.rate!r} is not a number of calls per "
                                f"second >= 0 (0: no client-side limit)")
        if self.key_max_age >= timedelta(hours=24):
            raise BadInputError("key_max_age must stay under Stripe's 24 h idempotency window")
        if self.summary_lag < timedelta(0):
            raise BadInputError(f"summary lag (METERING_STRIPE_SETTLE_SECONDS) must not be negative, "
                                f"got {self.summary_lag}")


@dataclass
class PushReport:
    run_id: str
    date_from: date
    date_to: date
    window_kind: str
    windows_considered: int = 0
    new_revisions: int = 0
    calls: int = 0
    retries: int = 0
    rate_limited: int = 0
    acknowledged: int = 0
    failed: int = 0
    unknown: int = 0
    pending: int = 0
    late: int = 0
    unmapped: int = 0
    unlisted: int = 0          # windows of customers not in the customer list: all_usage_priced names them
    not_yet_due: int = 0
    moved: int = 0              # windows held: a previous Stripe customer of ours still holds their usage
    summary_checks: int = 0
    raw_events: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def raw_events_per_call(self) -> Decimal:
        return (Decimal(self.raw_events) / Decimal(self.calls)).quantize(Decimal("0.01")) if self.calls else Decimal(0)

    @property
    def needs_operator(self) -> int:
        """Windows left unknown/failed/moved, or not sent as their customer is not synced to Stripe
        (unmapped: that usage is not billed), after this run: a person should look (or re-run later)."""
        return self.unknown + self.failed + self.moved + self.unmapped

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["raw_events_per_call"] = str(self.raw_events_per_call)
        out["needs_operator"] = self.needs_operator
        return out

    def summary(self) -> str:
        return (
            f"push {self.date_from}..{self.date_to} ({self.window_kind} windows): "
            f"{self.windows_considered} windows, {self.new_revisions} new revisions, "
            f"{self.calls} calls ({self.retries} retries, {self.rate_limited} rate-limited), "
            f"{self.acknowledged} acknowledged, {self.failed} failed, {self.unknown} unknown, "
            f"{self.pending} pending, {self.late} late, {self.unmapped} unmapped, {self.unlisted} unlisted, "
            f"{self.not_yet_due} not yet due, {self.moved} held at a previous Stripe customer, "
            f"{self.summary_checks} summary checks, "
            f"{self.raw_events_per_call} raw events per call, {self.seconds:.1f}s"
        )


def format_value(value: Decimal) -> str:
    """A meter event value as Stripe's decimal string: no exponent, no trailing zeros."""
    return format(value.normalize(), "f")


def _utc(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def stripe_now(client: stripe.StripeClient, customers: pl.DataFrame, now: datetime) -> dict[str | None, datetime]:
    """Stripe's "now" per test clock of `customers["test_clock_id"]` (its frozen time); key None: `now`,
    for customers on no clock. What every check of "has this ended at Stripe" reads (the push's guards,
    the invoice items' closed periods)."""
    out: dict[str | None, datetime] = {None: now}
    for clock_id in customers["test_clock_id"].drop_nulls().unique().to_list():
        clock = client.v1.test_helpers.test_clocks.retrieve(clock_id)
        out[clock_id] = datetime.fromtimestamp(int(clock.frozen_time), tz=timezone.utc)
    return out


def clock_times(now_by_clock: dict[str | None, datetime]) -> pl.DataFrame:
    """(test_clock_id, stripe_now): the clocks of a `stripe_now` reading, as a frame to join on."""
    return pl.DataFrame({"test_clock_id": [k for k in now_by_clock if k is not None],
                         "stripe_now": [v for k, v in now_by_clock.items() if k is not None]},
                        schema={"test_clock_id": pl.String, "stripe_now": pl.Datetime("us", "UTC")})


class Pusher:
    """Pushes usage for one warehouse connection and one Stripe client. Not thread-safe itself."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        client: stripe.StripeClient,
        meters: dict[str, Meter],
        config: PushConfig | None = None,
        *,
        now: Callable[[], datetime] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.con = con
        self.client = client
        self.meters = meters
        self.config = config or PushConfig()
        self._now = now or (lambda: datetime.now(timezone.utc))
        self._sleep = sleep
        self.limiter = RateLimiter(self.config.rate, burst=max(1, int(self.config.rate) or 1))
        # refused as duplicate identifiers, or their key reused with other parameters: Stripe holds
        # something under them, which its summary settles in the same run
        self._known_identifiers: list[str] = []

    # -- the whole run ---------------------------------------------------------------------------
    def push(self, date_from: date, date_to: date) -> PushReport:
        if date_to < date_from:
            raise BadInputError(f"push: --to {date_to} is before --from {date_from}")
        started = time.monotonic()
        self._known_identifiers.clear()
        report = PushReport(uuid.uuid4().hex, date_from, date_to, self.config.window_kind)
        kind = self.config.window_kind
        self._check_meter_windows()
        customers = catalog.customer_map(self.con).select("customer_id", "stripe_customer_id", "test_clock_id")
        desired = windows.desired_values(self.con, self.meters, date_from, date_to, kind)
        report.windows_considered = desired.height
        desired, report.unmapped, report.unlisted = self._attach_destinations(desired, customers)
        stripe_now = self._stripe_now(customers)
        desired, report.not_yet_due = self._guard(desired, customers, stripe_now)
        desired = self._hold_moved(desired, report)
        planned = ledger.plan_revisions(self.con, desired, self._now(), retry_failed=self.config.retry_failed)
        report.new_revisions = planned["new_revisions"]

        # `last`-formula meters widen the span to the later windows the ledger holds for them. Only
        # the windows in `desired` went through the guards (35 days, finalized invoice, 5 minutes in
        # the future): the ledger's other open rows in the span (other meters or customers, after
        # --to) are left to a push whose range covers them, which guards them first.
        span_to = max([date_to, *desired["event_date"].to_list()]) if not desired.is_empty() else date_to
        guarded = desired.select(ledger.WINDOW_KEY)

        def open_guarded() -> pl.DataFrame:
            return ledger.open_rows(self.con, date_from, span_to, kind).filter(
                pl.col("stripe_customer_id").is_not_null()).join(guarded, on=ledger.WINDOW_KEY, how="semi")

        open_rows = open_guarded()

        def settle_by_summary(rows: pl.DataFrame, then: str = "resent as a new revision",
                              resent: bool = True) -> pl.DataFrame:
            """Rows whose outcome Stripe's summary decides: acknowledged if it holds the value, else
            superseded and given a fresh revision (same value, new key; `late` for a window Stripe
            no longer takes: not `resent`). Returns the open rows then."""
            report.summary_checks += self._resolve_stale(rows, report, then, resent=resent)
            replan = desired.join(rows.select(ledger.WINDOW_KEY), on=ledger.WINDOW_KEY)
            report.new_revisions += ledger.plan_revisions(self.con, replan, self._now())["new_revisions"]
            return open_guarded()

        # An attempted row of a window Stripe no longer takes (35 days, finalized invoice) may have
        # reached Stripe (a lost response): its summary says whether, before it is called late (once
        # the summary can show the attempt: it lags). No such window is ever sent.
        late = desired.filter(pl.col("late_reason").is_not_null()).select(ledger.WINDOW_KEY)
        attempted_late = open_rows.join(late, on=ledger.WINDOW_KEY, how="semi")
        if not attempted_late.is_empty():
            open_rows = settle_by_summary(attempted_late, "not sent again, the window is late", resent=False)
        open_rows = open_rows.join(late, on=ledger.WINDOW_KEY, how="anti")

        stale = self._stale(open_rows)
        if not stale.is_empty():
            open_rows = settle_by_summary(stale, f"key older than {self.config.key_max_age}: resent as a new revision")
        try:
            self._send_all(open_rows, report)
            # Stripe holds something else under a row's identifier (the key it came with was lost, e.g.
            # the response to a killed push, and Stripe pruned the key early) or under its key (first
            # used with another value, e.g. by the pushes after a warehouse snapshot that was restored):
            # its summary decides, as for a stale row
            known = open_rows.filter(pl.col("identifier").is_in(self._known_identifiers))
            if not known.is_empty():
                self._send_all(settle_by_summary(known), report)
            # A change held behind a revision that may have reached Stripe (`sent`, `unknown`) is
            # planned once the send has told what Stripe did; superseded unread, a lost response that
            # Stripe applied (and may invoice) would be missing from the ledger
            held = ledger.plan_revisions(self.con, desired, self._now())
            if held["new_revisions"]:
                report.new_revisions += held["new_revisions"]
                # only the revisions just planned: the rows throttled or unanswered above wait for
                # the next run, as they would have without a change
                self._send_all(open_guarded().filter(pl.col("attempts") == 0), report)
        finally:
            counts = ledger.status_counts(self.con, date_from, span_to, kind)
            report.unknown = counts["unknown"] + counts["sent"]
            report.failed = counts["failed"]
            report.pending = counts["pending"]
            report.late = counts["late"]
            report.seconds = time.monotonic() - started
            self._record_run(report)
        log.info(report.summary())
        return report

    def _check_meter_windows(self) -> None:
        """Refuse to push hour windows to day meters (or back): Stripe would keep one event per its
        own window and drop the others. The windows are those recorded by the last catalog sync."""
        rows = warehouse.query_frame(
            self.con, "SELECT our_key, json_extract_string(details, '$.event_time_window') AS w "
                      "FROM stripe_objects WHERE kind = 'meter'")
        wrong = [f"{m} ({w or 'raw'})" for m, w in rows.iter_rows() if m in self.meters and w != self.config.window_kind]
        if wrong:
            raise BadInputError(
                f"push windows are '{self.config.window_kind}' but these Stripe meters aggregate otherwise: "
                f"{', '.join(sorted(wrong))}; set STRIPE_METER_WINDOW to match the meters (or create new meters)")

    # -- planning helpers ------------------------------------------------------------------------
    def _attach_destinations(self, desired: pl.DataFrame,
                             customers: pl.DataFrame) -> tuple[pl.DataFrame, int, int]:
        """The windows with their Stripe customer; and how many have none: of customers in the customer
        list (unmapped: a sync would map them) and of customers not in it (unlisted: no sync can, and
        the rating's check all_usage_priced already names them)."""
        joined = desired.join(customers, on="customer_id", how="left")
        missing = joined.filter(pl.col("stripe_customer_id").is_null())
        listed = warehouse.query_frame(self.con, "SELECT DISTINCT customer_id FROM customer_plans")
        unmapped = missing.join(listed, on="customer_id", how="semi")
        unlisted = missing.join(listed, on="customer_id", how="anti")
        for frame, why in ((unmapped, "customers not synced to Stripe (e.g. %s); run `metering stripe sync`"),
                           (unlisted, "customers not in the customer list (e.g. %s): no Stripe customer bills them")):
            if frame.height:
                log.warning("%d windows skipped: " + why, frame.height,
                            ", ".join(sorted(set(frame["customer_id"].head(5).to_list()))))
        mapped = joined.filter(pl.col("stripe_customer_id").is_not_null()).with_columns(
            event_name=pl.col("meter").map_elements(event_name, return_dtype=pl.String)
        )
        return mapped, unmapped.height, unlisted.height

    def _stripe_now(self, customers: pl.DataFrame) -> dict[str | None, datetime]:
        return stripe_now(self.client, customers, self._now())

    def _guard(self, desired: pl.DataFrame, customers: pl.DataFrame,
               stripe_now: dict[str | None, datetime]) -> tuple[pl.DataFrame, int]:
        """Set `late_reason` for windows Stripe can no longer take; drop windows not yet due."""
        if desired.is_empty():
            return desired.with_columns(late_reason=pl.lit(None, pl.String)), 0
        frame = desired.join(clock_times(stripe_now), on="test_clock_id", how="left").with_columns(
            pl.col("stripe_now").fill_null(pl.lit(stripe_now[None]).cast(pl.Datetime("us", "UTC")))
        )
        finalized = self._finalized_periods(frame)
        covered = (
            frame.select("customer_id", "meter", "window_start", "stripe_customer_id")
            .join(finalized, on="stripe_customer_id", how="inner")
            .filter((pl.col("window_start") >= pl.col("period_start")) & (pl.col("window_start") < pl.col("period_end")))
            .select("customer_id", "meter", "window_start").unique()
            .with_columns(finalized=pl.lit(True))
        )
        frame = frame.join(covered, on=["customer_id", "meter", "window_start"], how="left")
        oldest = pl.col("stripe_now") - STRIPE_MAX_AGE + self.config.late_margin
        frame = frame.with_columns(
            late_reason=pl.when(pl.col("window_start") < oldest)
            .then(pl.lit("window older than Stripe accepts (35 days): report to finance"))
            .when(pl.col("finalized").fill_null(False))
            .then(pl.lit("the invoice for this period is already finalized: report to finance"))
            .otherwise(pl.lit(None, pl.String))
        )
        due = frame.filter(pl.col("window_start") <= pl.col("stripe_now") + STRIPE_MAX_FUTURE - timedelta(seconds=60))
        return due.drop("stripe_now", "finalized", "test_clock_id"), frame.height - due.height

    def _finalized_periods(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Per Stripe customer, the usage periods [period_start, period_end) of our subscriptions'
        invoices that left `draft`.

        Usage timestamped inside such a period can no longer reach that invoice. Zero-length
        periods (the invoice issued when a subscription starts) cover no usage, and neither do the
        invoices of a subscription not ours (another product's on the same Stripe customer, whose
        mid-month invoice made our usage of those days `late`: never sent, and explained away by
        reconciliation as late). One paginated list.
        """
        schema = {"stripe_customer_id": pl.String, "period_start": pl.Datetime("us", "UTC"),
                  "period_end": pl.Datetime("us", "UTC")}
        earliest = frame["window_start"].min()
        if earliest is None:
            return pl.DataFrame(schema=schema)
        wanted = set(frame["stripe_customer_id"].unique().to_list())
        created_gte = int((_utc(earliest) - timedelta(days=40)).timestamp())
        ours = catalog.our_subscriptions(self.con)
        rows = []
        for invoice in self.client.v1.invoices.list({"limit": 100, "created": {"gte": created_gte}}).auto_paging_iter():
            if invoice.status == "draft" or invoice.customer not in wanted or catalog.parent_subscription(invoice) not in ours:
                continue
            start, end = int(invoice.period_start or 0), int(invoice.period_end or 0)
            if end > start:
                rows.append((invoice.customer, datetime.fromtimestamp(start, tz=timezone.utc),
                             datetime.fromtimestamp(end, tz=timezone.utc)))
        return pl.DataFrame(rows, schema=schema, orient="row")

    # -- stale attempts (key about to expire) ----------------------------------------------------
    def _stale(self, open_rows: pl.DataFrame) -> pl.DataFrame:
        """Open rows first attempted more than `key_max_age` ago, whatever their status: `sent`,
        `unknown`, and `pending` too (throttled every time, or after an attempt that may have been
        applied). None is resent under its key without reading Stripe's summary first."""
        limit = self._now() - self.config.key_max_age
        return open_rows.filter(
            pl.col("first_attempt_at").is_not_null() & (pl.col("first_attempt_at") < limit)
        )

    def _meter_ids(self) -> dict[str, str]:
        frame = warehouse.query_frame(
            self.con, "SELECT our_key, stripe_id FROM stripe_objects WHERE kind = 'meter'")
        ids = dict(frame.iter_rows())
        if not all(m in ids for m in self.meters):
            for meter in self.client.v1.billing.meters.list({"limit": 100}).auto_paging_iter():
                for ours in self.meters:
                    if meter.event_name == event_name(ours):
                        ids[ours] = meter.id
        return ids

    def _formula(self, meter: str) -> str:
        return windows.stripe_formula(self.meters[meter])

    def _summaries(self, meter_id: str, stripe_customer_id: str, start: int, end: int, grouping: str) -> list[Any]:
        """Stripe's meter event summaries for one customer over [start, end) (Unix seconds), grouped by
        `grouping` (hour or day): one per window with an event."""
        self.limiter.acquire()
        summaries = self.client.v1.billing.meters.event_summaries.list(
            meter_id, {"customer": stripe_customer_id, "start_time": start, "end_time": end,
                       "value_grouping_window": grouping, "limit": 100})
        return list(summaries.auto_paging_iter())

    def _summary_values(self, meter_id: str, stripe_customer_id: str, window: dict[str, Any]) -> list[int | float]:
        """Stripe's meter event summary values for one customer x window (none: no event in it)."""
        return [s.aggregated_value for s in self._summaries(
            meter_id, stripe_customer_id, int(_utc(window["window_start"]).timestamp()),
            int(_utc(window["window_end"]).timestamp()), window["window_kind"])]

    def _hold_moved(self, desired: pl.DataFrame, report: PushReport) -> pl.DataFrame:
        """Drop the windows whose Stripe customer changed (a later sync mapped ours to another one)
        while a previous Stripe customer may still hold a non-zero value for them: our ledger says it
        was sent one, and Stripe's summary shows no event of 0 there.
        Sending them would bill the usage to both. They wait for an operator (`moved`): mapping the
        customer back, or zeroing the window at the previous customer, releases them.

        On a `last`-formula meter the previous customer holds the whole billing period: every window
        carries the period's value so far and Stripe bills the period's newest event, so a later
        window of the period sent to the new customer would bill the period twice. Every window of a
        period in which the previous customer was sent a non-zero value is held, until Stripe's
        newest event of the period there holds 0."""
        last_meters = [m for m in self.meters if self._formula(m) == "last"]
        candidates = (ledger.held_elsewhere(self.con, desired, last_meters) if not desired.is_empty()
                      else pl.DataFrame())
        if candidates.is_empty():
            return desired
        meter_ids = self._meter_ids()
        held = []
        released: dict[tuple[Any, ...], bool] = {}   # one summary read per previous customer x window or period
        messages: set[str] = set()
        for row in candidates.join(desired.select(*ledger.WINDOW_KEY, "stripe_customer_id"),
                                   on=ledger.WINDOW_KEY).iter_rows(named=True):
            meter_id = meter_ids.get(row["meter"])
            if row["period_start"] is not None:
                start, end = period_containing(row["period_start"], row["anchor_day"])
                span = (start, end)
                where = f"its billing period {start}..{end} (its newest window there: {row['held_window']:%Y-%m-%d %H:%M})"
            else:
                span = (row["window_start"], row["window_end"])
                where = f"window {row['window_start']:%Y-%m-%d %H:%M}"
            key = (row["meter"], row["held_by"], *span)
            if key not in released:
                released[key] = False
                if meter_id is not None:
                    report.calls += 1
                    report.summary_checks += 1
                    # released only by an event Stripe shows holding 0 (the operator's): no event may be
                    # the summary lagging behind a push moments ago (eventually consistent), not an empty window
                    values = (self._period_last_value(meter_id, row["held_by"], *span) if row["period_start"] is not None
                              else self._summary_values(meter_id, row["held_by"], row))
                    released[key] = bool(values) and summary_holds(values, Decimal(0))
            if released[key]:
                continue
            held.append(row)
            message = (f"{row['customer_id']} {row['meter']} {where}: Stripe customer {row['held_by']} holds "
                       f"{format_value(row['held_value'])} for it, and {row['customer_id']} is now mapped to Stripe "
                       f"customer {row['stripe_customer_id']}: not pushed there, or both would bill it. Fix the map "
                       f"(metadata[customer_id] on the Stripe customers, then sync), or send {row['held_by']} a meter "
                       f"event of 0 for the " + ("newest window of the period (Stripe bills its newest event)"
                                                 if row["period_start"] is not None else "window") + ", then push again")
            if message not in messages:
                messages.add(message)
                report.errors.append(message)
                log.warning(message)
        if not held:
            return desired
        windows_held = pl.DataFrame(held).select(ledger.WINDOW_KEY).unique()
        report.moved = windows_held.height
        return desired.join(windows_held, on=ledger.WINDOW_KEY, how="anti")

    def _period_last_value(self, meter_id: str, stripe_customer_id: str, start: date, end: date) -> list[int | float]:
        """What a `last`-formula meter bills `stripe_customer_id` for the billing period [start, end):
        the value of its newest day with an event (none: no event in the period). Grouped by day,
        since an ungrouped summary reads 0 for a period without events."""
        days = self._summaries(meter_id, stripe_customer_id, midnight_unix(start), midnight_unix(end), "day")
        return [max(days, key=lambda s: s.start_time).aggregated_value] if days else []

    def _resolve_stale(self, stale: pl.DataFrame, report: PushReport, then: str, *, resent: bool = True) -> int:
        """Settle `stale` rows by Stripe's summary: acknowledged if it holds the value, else superseded
        (the caller plans what follows: `then`, for the ledger's message).

        When nothing is `resent` after (a late window), a summary without the value is not taken as
        final while it may lag behind the row's last attempt (`_summary_may_lag`): superseded, then
        `late`, a revision Stripe applied would be reported to finance as never sent. The row stays
        `unknown`, and a push after the lag decides. A resent value needs no wait: its new revision
        replaces whatever the window holds."""
        meter_ids = self._meter_ids()
        outcomes = []
        for row in stale.iter_rows(named=True):
            meter_id = meter_ids.get(row["meter"])
            if meter_id is None:
                continue
            values = self._summary_values(meter_id, row["stripe_customer_id"], row)
            report.calls += 1
            # On a `last` meter a window with no event is not a window holding 0: Stripe bills the
            # period's newest event, which is then an older window's. Only an event settles it.
            no_event_on_last = not values and self._formula(row["meter"]) == "last"
            holds = "no event" if no_event_on_last else " + ".join(map(str, values)) or "0"
            if summary_holds(values, row["value"]) and not no_event_on_last:
                outcomes.append(_outcome(row["identifier"], "acknowledged", 0, None, None, None, "summary"))
            elif not resent and row["status"] in ("sent", "unknown") and self._summary_may_lag(row["last_attempt_at"]):
                after = _utc(row["last_attempt_at"]) + self.config.summary_lag
                outcomes.append(_outcome(
                    row["identifier"], "unknown", 0,
                    f"Stripe's summary holds {holds}, ours {row['value']}, but it may not show the attempt of "
                    f"{_utc(row['last_attempt_at']):%Y-%m-%d %H:%M:%S} UTC yet (summaries lag up to "
                    f"{self.config.summary_lag}): a push after {after:%Y-%m-%d %H:%M:%S} UTC decides", None, None, None))
            else:
                outcomes.append(_outcome(
                    row["identifier"], "superseded", 0,
                    f"Stripe's summary holds {holds}, ours {row['value']}: {then}", None, None, "summary"))
        ledger.record_outcomes(self.con, outcomes, self._now())
        return len(outcomes)

    def _summary_may_lag(self, attempted_at: datetime | None) -> bool:
        """Whether Stripe's meter event summaries may not show an attempt made at `attempted_at` yet:
        they are eventually consistent (`PushConfig.summary_lag`, reconciliation's settle delay)."""
        return attempted_at is not None and self._now() - _utc(attempted_at) < self.config.summary_lag

    # -- sending ---------------------------------------------------------------------------------
    def _send_all(self, open_rows: pl.DataFrame, report: PushReport) -> None:
        if open_rows.is_empty():
            return
        by_pair: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in open_rows.iter_rows(named=True):
            by_pair[(row["customer_id"], row["meter"])].append(row)
        batches: list[list[list[dict[str, Any]]]] = [[]]
        size = 0
        for rows in by_pair.values():
            if size and size + len(rows) > self.config.batch_size:
                batches.append([])
                size = 0
            batches[-1].append(rows)
            size += len(rows)
        with ThreadPoolExecutor(max_workers=self.config.concurrency, thread_name_prefix="stripe-push") as pool:
            for batch in batches:
                identifiers = [r["identifier"] for rows in batch for r in rows]
                ledger.mark_sent(self.con, identifiers, self._now())
                results = list(pool.map(self._send_pair, batch))
                outcomes, auth_error = [], None
                for pair_outcomes, pair_auth_error in results:
                    outcomes.extend(pair_outcomes)
                    auth_error = auth_error or pair_auth_error
                for o, _ in outcomes:
                    report.rate_limited += o.pop("_rate_limited", 0)
                ledger.record_outcomes(self.con, [o for o, _ in outcomes], self._now())
                for o, row in outcomes:
                    report.calls += o["extra_attempts"] + 1
                    report.retries += o["extra_attempts"]
                    if o["status"] == "acknowledged":
                        report.acknowledged += 1
                        report.raw_events += int(row["raw_events"])
                if auth_error:
                    raise ExternalServiceError(f"Stripe refused the API key: {auth_error}")

    def _send_pair(self, rows: list[dict[str, Any]]) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], str | None]:
        """Send one pair's windows in order, one call at a time. Never raises."""
        outcomes = []
        for row in rows:
            try:
                result = call_with_retries(
                    lambda row=row: self._create_event(row),
                    limiter=self.limiter, policy=self.config.retry, sleep=self._sleep,
                )
            except AuthError as exc:
                # the attempt was made and refused; leave the row `sent` for the next run
                outcomes.append((_outcome(row["identifier"], "sent", 0, str(exc), None, 401, None), row))
                return outcomes, str(exc)
            except Exception as exc:  # a bug or an unexpected SDK error: keep the row retryable
                outcomes.append((_outcome(row["identifier"], "unknown", 0,
                                          redact(f"{type(exc).__name__}: {exc}")[:500], None, None, None), row))
                continue
            outcomes.append((self._to_outcome(row, result), row))
        return outcomes, None

    def _to_outcome(self, row: dict[str, Any], result: CallOutcome) -> dict[str, Any]:
        status = result.status
        if status == "failed" and result.http_status == 429:
            status = "pending"  # throttled every time: nothing recorded, try again next run
        if status == "failed" and result.http_status == 400 and _duplicate_identifier(result.error):
            status = "unknown"  # Stripe holds an event under this identifier: not "nothing recorded"
            self._known_identifiers.append(row["identifier"])
        if status == "unknown" and result.http_status == 400 and result.error_type == "idempotency_error":
            # Stripe holds this key's first request, made with another value: resending under the key
            # only gets the same answer, so its summary decides now (acknowledged, or a new revision)
            self._known_identifiers.append(row["identifier"])
        out = _outcome(row["identifier"], status, result.attempts - 1, result.error, result.request_id,
                       result.http_status, "response" if status in ("acknowledged", "failed") else None)
        out["_rate_limited"] = result.rate_limited
        return out

    def _create_event(self, row: dict[str, Any]) -> Any:
        return self.client.v1.billing.meter_events.create(
            {
                "event_name": row["event_name"],
                "payload": {"stripe_customer_id": row["stripe_customer_id"], "value": format_value(row["value"])},
                "identifier": row["identifier"],
                "timestamp": int(_utc(row["event_timestamp"]).timestamp()),
            },
            {"idempotency_key": row["idempotency_key"], "max_network_retries": 0},
        )

    def _record_run(self, report: PushReport) -> None:
        d = report.as_dict()
        frame = pl.DataFrame([{
            "run_id": d["run_id"], "started_at": self._now(), "finished_at": self._now(),
            "date_from": report.date_from, "date_to": report.date_to, "window_kind": report.window_kind,
            **{k: d[k] for k in ("windows_considered", "new_revisions", "calls", "retries", "rate_limited",
                                 "acknowledged", "failed", "unknown", "pending", "late", "unmapped", "moved",
                                 "summary_checks", "raw_events", "seconds")},
        }])
        with warehouse.transaction(self.con):
            warehouse.insert_frame(self.con, "stripe_push_runs", frame)


def summary_holds(aggregated_values: list[int | float], ours: Decimal) -> bool:
    """Whether Stripe's meter event summaries for a window hold our exact value.

    `aggregated_value` is a JSON number (a double), so a value with more than about 15 significant
    digits reaches us rounded: compared exactly with the DECIMAL(38, 12) that Stripe bills, it never
    matched. They are compared at the precision a double carries."""
    return float(sum((Decimal(str(v)) for v in aggregated_values), Decimal(0))) == float(ours)


def _duplicate_identifier(error: str | None) -> bool:
    """Stripe's 400 for a meter event identifier it already holds ("An event already exists with
    identifier ...")."""
    text = (error or "").lower()
    return "identifier" in text and "already exists" in text


def _outcome(identifier: str, status: str, extra_attempts: int, error: str | None, request_id: str | None,
             http_status: int | None, resolved_by: str | None) -> dict[str, Any]:
    return {
        "identifier": identifier, "status": status, "extra_attempts": extra_attempts, "last_error": error,
        "stripe_request_id": request_id, "last_http_status": http_status, "resolved_by": resolved_by,
    }


def push_usage(
    con: duckdb.DuckDBPyConnection,
    client: stripe.StripeClient,
    meters: dict[str, Meter],
    date_from: date,
    date_to: date,
    config: PushConfig | None = None,
    **kwargs: Any,
) -> PushReport:
    """Push [date_from, date_to] (UTC dates, inclusive). See the module docstring."""
    return Pusher(con, client, meters, config, **kwargs).push(date_from, date_to)


def push_config_from_env(**overrides: Any) -> PushConfig:
    """`PushConfig` from `STRIPE_PUSH_RATE` (calls/s, 0 = no client-side limit),
    `STRIPE_PUSH_CONCURRENCY`, `STRIPE_METER_WINDOW` (day | hour) and `METERING_STRIPE_SETTLE_SECONDS`
    (how long Stripe's summaries may lag, shared with reconciliation; default 900); explicit
    overrides win."""
    def num(name: str, cast: Callable[[str], Any], default: Any) -> Any:
        raw = os.environ.get(name)
        if raw in (None, ""):
            return default
        try:
            return cast(raw)
        except ValueError:
            raise BadInputError(f"environment variable {name}: {raw!r} is not a number") from None

    values: dict[str, Any] = {
        "rate": num("STRIPE_PUSH_RATE", float, DEFAULT_RATE),
        "concurrency": num("STRIPE_PUSH_CONCURRENCY", int, 8),
        "window_kind": os.environ.get("STRIPE_METER_WINDOW") or "day",
        "summary_lag": timedelta(seconds=settle_seconds_from_env()),
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return PushConfig(**values)
