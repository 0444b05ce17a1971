"""The outbox ledger (`stripe_push_ledger`, migration 020) and its state machine.

    pending ──mark_sent──► sent ──outcome──► acknowledged
       ▲                    │                failed      (Stripe said no: nothing recorded)
       │ (every attempt 429)└──────────────► unknown     (an attempt got no answer, a 409 or a 5xx,
       │                                                   or its key holds another request: a 400
       │                                                   idempotency_error)
       │
    a newer revision of the same window ──► superseded   (older pending / sent / unknown / failed / late)
    window not pushable (35 days, finalized invoice)    ──► late (for finance; never sent)

Every transition is one statement over a batch of rows in one transaction, so a kill at any
point leaves each row in a state the next run knows how to continue from:
`pending`/`sent`/`unknown` rows are (re)sent under their own identifier and Idempotency-Key while
the key is young (first attempt < ~20 h ago); older ones, whatever their status, are resolved by
reading Stripe's meter event summaries first (`push.Pusher._stale`). No row is ever sent under
another key: a resend after the key expired is a new revision (a new row) carrying the same value,
which on a pre-aggregated meter replaces, never adds to, the window's previous event.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import date, datetime, timedelta
from typing import Any

import duckdb
import polars as pl

from metering import warehouse
from metering.stripe.keys import idempotency_key, meter_event_identifier
from metering.stripe.windows import period_start_sql

OPEN_STATUSES = ("pending", "sent", "unknown")
STATUSES = ("pending", "sent", "acknowledged", "failed", "unknown", "late", "superseded")

WINDOW_KEY = ["customer_id", "meter", "window_kind", "window_start"]
"""The columns that name one window; each revision of a window is one ledger row."""
_WINDOW_COLS = ", ".join(WINDOW_KEY)

PLAN_SCHEMA = {
    "customer_id": pl.String,
    "meter": pl.String,
    "window_kind": pl.String,
    "window_start": pl.Datetime("us", "UTC"),
    "window_end": pl.Datetime("us", "UTC"),
    "event_date": pl.Date,
    "value": pl.Decimal(38, 12),
    "raw_events": pl.Int64,
    "event_name": pl.String,
    "stripe_customer_id": pl.String,
    "late_reason": pl.String,
}


def latest_revisions(con: duckdb.DuckDBPyConnection, where_sql: str = "TRUE", params: list[Any] | None = None) -> pl.DataFrame:
    """The newest revision of every window matching `where_sql` (over ledger columns)."""
    return warehouse.query_frame(
        con,
        f"""
        SELECT * FROM stripe_push_ledger
        WHERE {where_sql}
        QUALIFY row_number() OVER (PARTITION BY {_WINDOW_COLS} ORDER BY revision DESC) = 1
        """,
        params or [],
    )


def plan_revisions(
    con: duckdb.DuckDBPyConnection, desired: pl.DataFrame, now: datetime, *, retry_failed: bool = False
) -> dict[str, int]:
    """Write the revisions `desired` calls for, in one transaction, before any call is made.

    `desired` has `PLAN_SCHEMA`: one row per window with the value Stripe should hold, the
    destination customer and `late_reason` (NULL when pushable). A window gets a new revision when
    it has none yet, when its value or destination changed, or (with `retry_failed`) when its
    latest revision failed. The new revision is `late` instead of `pending` when not pushable;
    an open latest revision of a window that became unpushable is marked `late` in place if it was
    never attempted. An attempted one is kept, whatever the window's value now, for the push to
    settle by Stripe's summary first (it plans the change after); so is a `sent` or `unknown` one of a
    pushable window, which the push sends again under its key before planning the change.
    Older open revisions of a window that gets a new one become `superseded`.
    Returns counts: new_revisions, newly_late.
    """
    if desired.is_empty():
        return {"new_revisions": 0, "newly_late": 0}
    desired = desired.select([pl.col(c).cast(t) for c, t in PLAN_SCHEMA.items()])
    con.register("_desired", desired.to_arrow())
    try:
        decisions = warehouse.query_frame(
            con,
            f"""
            WITH latest AS (
                SELECT {_WINDOW_COLS}, revision, value, status, stripe_customer_id, first_attempt_at
                FROM stripe_push_ledger l
                WHERE EXISTS (SELECT 1 FROM _desired d
                              WHERE d.customer_id = l.customer_id AND d.meter = l.meter
                                AND d.window_kind = l.window_kind AND d.window_start = l.window_start)
                QUALIFY row_number() OVER (PARTITION BY {_WINDOW_COLS} ORDER BY revision DESC) = 1
            )
            SELECT d.*, l.revision AS prev_revision, l.status AS prev_status,
                   CASE
                     WHEN l.revision IS NULL THEN 'new'
                     -- attempted and open, and the window is now late: the attempt may have reached
                     -- Stripe (a lost response) and been invoiced. The push reads Stripe's summary
                     -- first (acknowledged or superseded), then plans the change; superseding it here
                     -- would drop from the ledger what Stripe billed
                     WHEN l.status IN ('pending', 'sent', 'unknown') AND d.late_reason IS NOT NULL
                          AND l.first_attempt_at IS NOT NULL
                       THEN 'keep'
                     -- sent or unknown: it may have reached Stripe, whatever the window's value now.
                     -- The push sends it again under its key (Stripe answers what it did) or reads
                     -- the summary, and plans the change after
                     -- (to the same Stripe customer: a window mapped to another one is held as `moved`
                     -- until an operator settles the old customer, and is never sent there again)
                     WHEN l.status IN ('sent', 'unknown') AND l.first_attempt_at IS NOT NULL
                          AND l.stripe_customer_id IS NOT DISTINCT FROM d.stripe_customer_id
                       THEN 'keep'
                     WHEN l.value <> d.value
                       OR l.stripe_customer_id IS DISTINCT FROM d.stripe_customer_id THEN 'new'
                     WHEN l.status = 'failed' AND ? THEN 'new'
                     WHEN l.status = 'superseded' THEN 'new'   -- its key expired unconfirmed
                     -- never attempted: it cannot reach Stripe now. An attempted one may have (a
                     -- lost response): the push settles it by Stripe's summary first
                     WHEN l.status IN ('pending', 'sent', 'unknown') AND d.late_reason IS NOT NULL
                          AND l.first_attempt_at IS NULL
                       THEN 'mark_late'
                     ELSE 'keep'
                   END AS decision
            FROM _desired d
            LEFT JOIN latest l USING ({_WINDOW_COLS})
            """,
            [retry_failed],
        )
    finally:
        con.unregister("_desired")
    new = decisions.filter(pl.col("decision") == "new")
    mark_late = decisions.filter(pl.col("decision") == "mark_late")
    if new.is_empty() and mark_late.is_empty():
        return {"new_revisions": 0, "newly_late": 0}

    rows = new.with_columns(
        revision=(pl.col("prev_revision").fill_null(0) + 1).cast(pl.Int32),
    )
    identifiers, keys = [], []
    for c, m, k, ws, r in rows.select("customer_id", "meter", "window_kind", "window_start", "revision").iter_rows():
        identifiers.append(meter_event_identifier(c, m, k, ws, r))
        keys.append(idempotency_key(c, m, k, ws, r))
    ledger_rows = rows.with_columns(
        identifier=pl.Series(identifiers, dtype=pl.String),
        idempotency_key=pl.Series(keys, dtype=pl.String),
        status=pl.when(pl.col("late_reason").is_null()).then(pl.lit("pending")).otherwise(pl.lit("late")),
        attempts=pl.lit(0, pl.Int32),
        last_error=pl.col("late_reason"),
        created_at=pl.lit(now).cast(pl.Datetime("us", "UTC")),
        updated_at=pl.lit(now).cast(pl.Datetime("us", "UTC")),
        event_timestamp=pl.col("window_start") + pl.duration(seconds=pl.col("revision")),
    ).select(
        "customer_id", "meter", "window_start", "window_end", "revision", "value", "identifier",
        "idempotency_key", "status", "attempts", "last_error", "created_at", "window_kind",
        "event_date", "event_name", "stripe_customer_id", "event_timestamp", "raw_events", "updated_at",
    )
    with warehouse.transaction(con):
        if not new.is_empty():
            _update_where_windows(
                con, new.select("customer_id", "meter", "window_kind", "window_start"),
                "SET status = 'superseded', updated_at = ? ",
                "AND l.status IN ('pending', 'sent', 'unknown', 'failed', 'late')", [now],
            )
            warehouse.insert_frame(con, "stripe_push_ledger", ledger_rows)
        if not mark_late.is_empty():
            ml = mark_late.select("customer_id", "meter", "window_kind", "window_start",
                                  pl.col("prev_revision").alias("revision"), "late_reason")
            con.register("_late", ml.to_arrow())
            try:
                con.execute(
                    """
                    UPDATE stripe_push_ledger AS l
                    SET status = 'late', last_error = _late.late_reason, updated_at = ?
                    FROM _late
                    WHERE l.customer_id = _late.customer_id AND l.meter = _late.meter
                      AND l.window_kind = _late.window_kind AND l.window_start = _late.window_start
                      AND l.revision = _late.revision
                    """,
                    [now],
                )
            finally:
                con.unregister("_late")
    return {"new_revisions": new.height, "newly_late": mark_late.height}


def _update_where_windows(con: duckdb.DuckDBPyConnection, windows: pl.DataFrame, set_sql: str,
                          extra_where: str, params: list[Any]) -> None:
    con.register("_windows", windows.to_arrow())
    try:
        con.execute(
            f"""
            UPDATE stripe_push_ledger AS l {set_sql}
            FROM _windows w
            WHERE l.customer_id = w.customer_id AND l.meter = w.meter
              AND l.window_kind = w.window_kind AND l.window_start = w.window_start {extra_where}
            """,
            params,
        )
    finally:
        con.unregister("_windows")


def held_elsewhere(con: duckdb.DuckDBPyConnection, desired: pl.DataFrame,
                   whole_period_meters: Collection[str] = ()) -> pl.DataFrame:
    """Windows of `desired` (WINDOW_KEY, `window_end`, `event_date`, `stripe_customer_id`: the destination now) that
    another Stripe customer may hold a non-zero value for: its newest revision there that may have
    reached Stripe (attempted, not refused) is non-zero.

    For the meters in `whole_period_meters` (Stripe's `last` formula: every window carries the
    billing period's value so far, and Stripe bills the period's newest event) such a revision in
    any window of the same billing period (the customer's `billing_anchor_day`, as `windows` computes
    the values) holds every window of that period: a later window sent to the new Stripe customer
    would make both bill the period's value. Other meters' windows are held by their own window only.

    One row per window x such customer: `held_by`, `held_value` and `held_window` (that customer's
    newest such window: the window itself, or one of its period), `period_start` and `anchor_day` (the
    billing period, for whole-period meters; NULL for the others)."""
    con.register("_dest", desired.select(*WINDOW_KEY, "window_end", "event_date", "stripe_customer_id").to_arrow())
    anchor = "(SELECT max(c.billing_anchor_day) FROM customer_plans c WHERE c.customer_id = {}.customer_id)"
    try:
        return warehouse.query_frame(
            con,
            f"""
            WITH dest AS (
                SELECT d.*, d.meter IN (SELECT unnest(?::VARCHAR[])) AS whole_period,
                       {anchor.format("d")} AS anchor_day,
                       {period_start_sql("d.event_date", anchor.format("d"))} AS period_start
                FROM _dest d
            ), elsewhere AS (
                -- per window and Stripe customer other than the destination now, the newest revision
                -- that may have reached Stripe
                SELECT {_WINDOW_COLS}, l.event_date, l.stripe_customer_id AS held_by, l.value AS held_value
                FROM stripe_push_ledger l
                WHERE l.first_attempt_at IS NOT NULL AND l.status <> 'failed'
                  AND EXISTS (SELECT 1 FROM _dest d
                              WHERE d.customer_id = l.customer_id AND d.meter = l.meter
                                AND d.window_kind = l.window_kind
                                AND d.stripe_customer_id IS DISTINCT FROM l.stripe_customer_id)
                QUALIFY row_number() OVER (PARTITION BY {_WINDOW_COLS}, l.stripe_customer_id ORDER BY l.revision DESC) = 1
            )
            SELECT d.customer_id, d.meter, d.window_kind, d.window_start, d.window_end, e.held_by,
                   arg_max(e.held_value, e.window_start) AS held_value, max(e.window_start) AS held_window,
                   CASE WHEN d.whole_period THEN d.period_start END AS period_start,
                   CASE WHEN d.whole_period THEN d.anchor_day END AS anchor_day
            FROM dest d JOIN elsewhere e
              ON e.customer_id = d.customer_id AND e.meter = d.meter AND e.window_kind = d.window_kind
             AND e.held_by IS DISTINCT FROM d.stripe_customer_id
             AND (e.window_start = d.window_start
                  OR (d.whole_period AND {period_start_sql("e.event_date", anchor.format("e"))} = d.period_start))
            WHERE e.held_value <> 0
            GROUP BY ALL
            ORDER BY {_WINDOW_COLS}, held_by
            """,
            [list(whole_period_meters)],
        )
    finally:
        con.unregister("_dest")


def open_rows(con: duckdb.DuckDBPyConnection, date_from: date, date_to: date, window_kind: str) -> pl.DataFrame:
    """Latest revisions still to be sent or confirmed (pending / sent / unknown), in the date range."""
    return latest_revisions(
        con,
        "event_date BETWEEN ? AND ? AND window_kind = ?",
        [date_from, date_to, window_kind],
    ).filter(pl.col("status").is_in(list(OPEN_STATUSES))).sort(
        "customer_id", "meter", "window_start"
    )


def mark_sent(con: duckdb.DuckDBPyConnection, identifiers: list[str], now: datetime) -> None:
    """Record that an attempt is about to start, committed before the call (one transaction).

    A row an earlier attempt may have reached Stripe with (`sent`: the process died during the call;
    `unknown`) becomes `unknown`, not `sent`: it stays so when this attempt is only throttled (429s
    prove nothing about the earlier one), and a change to its window waits for Stripe's answer.
    """
    if not identifiers:
        return
    with warehouse.transaction(con):
        con.execute(
            """
            UPDATE stripe_push_ledger
            SET status = CASE WHEN status IN ('sent', 'unknown') THEN 'unknown' ELSE 'sent' END,
                attempts = attempts + 1,
                first_attempt_at = coalesce(first_attempt_at, ?), last_attempt_at = ?, updated_at = ?
            WHERE identifier IN (SELECT unnest(?::VARCHAR[]))
            """,
            [now, now, now, identifiers],
        )


OUTCOME_SCHEMA = {
    "identifier": pl.String,
    "status": pl.String,
    "extra_attempts": pl.Int32,
    "last_error": pl.String,
    "stripe_request_id": pl.String,
    "last_http_status": pl.Int32,
    "resolved_by": pl.String,
}


def record_outcomes(con: duckdb.DuckDBPyConnection, outcomes: list[dict[str, Any]], now: datetime) -> None:
    """Write the outcomes of a batch of calls (or summary checks) in one transaction."""
    if not outcomes:
        return
    frame = pl.DataFrame(outcomes, schema=OUTCOME_SCHEMA)
    con.register("_outcomes", frame.to_arrow())
    try:
        with warehouse.transaction(con):
            con.execute(
                """
                UPDATE stripe_push_ledger AS l
                -- throttled every time: what an earlier attempt did is still unknown (`mark_sent`)
                SET status = CASE WHEN o.status = 'pending' AND l.status = 'unknown' THEN 'unknown' ELSE o.status END,
                    attempts = l.attempts + o.extra_attempts,
                    last_error = o.last_error,
                    stripe_request_id = coalesce(o.stripe_request_id, l.stripe_request_id),
                    last_http_status = coalesce(o.last_http_status, l.last_http_status),
                    resolved_by = o.resolved_by,
                    updated_at = ?
                FROM _outcomes o
                WHERE l.identifier = o.identifier
                """,
                [now],
            )
    finally:
        con.unregister("_outcomes")


def status_counts(con: duckdb.DuckDBPyConnection, date_from: date, date_to: date, window_kind: str) -> dict[str, int]:
    """How many windows' latest revisions are in each status, for the date range."""
    return summed_counts(status_counts_by_day(con, date_from, date_to, window_kind))


def summed_counts(by_day: dict[date, dict[str, int]]) -> dict[str, int]:
    """`status_counts_by_day`'s counts added up over the days."""
    counts = {s: 0 for s in STATUSES}
    for day in by_day.values():
        for status, n in day.items():
            counts[status] += n
    return counts


def status_counts_by_day(con: duckdb.DuckDBPyConnection, date_from: date, date_to: date,
                         window_kind: str) -> dict[date, dict[str, int]]:
    """`status_counts` per event date of the range (every date, 0 where none), in one read."""
    frame = latest_revisions(con, "event_date BETWEEN ? AND ? AND window_kind = ?", [date_from, date_to, window_kind])
    days = {date_from + timedelta(days=i): {s: 0 for s in STATUSES} for i in range((date_to - date_from).days + 1)}
    for day, status, n in frame.group_by("event_date", "status").len().iter_rows():
        days[day][status] = n
    return days
