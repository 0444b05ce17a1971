"""Gaps found by a hand mutation audit of metering/views (mutants20): dunning_queue lists only invoices in
dunning, and invoices_vs_rated joins on customer and period (one row per customer x billing period)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import duckdb

from metering import warehouse

AT = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)


def _read(snapshot, sql: str) -> list[tuple]:
    con = duckdb.connect(str(snapshot), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_dunning_queue_is_only_the_invoices_in_dunning(isolated_env):
    """One invoice in each state: only the in_dunning ones are queued (a written-off or void invoice is
    out of dunning), next step first, a row without a next step last."""
    rows = [  # invoice, state, next_step_at
        ("in_a", "in_dunning", dt.datetime(2026, 11, 9, tzinfo=dt.UTC)),
        ("in_b", "in_dunning", None),
        ("in_c", "in_dunning", dt.datetime(2026, 11, 5, tzinfo=dt.UTC)),
        ("in_w", "written_off", dt.datetime(2026, 11, 4, tzinfo=dt.UTC)),
        ("in_v", "void", dt.datetime(2026, 11, 4, tzinfo=dt.UTC)),
        ("in_r", "recovered", None),
        ("in_n", "not_in_dunning", None),
    ]
    with warehouse.open_warehouse() as con:
        for invoice, state, step_at in rows:
            con.execute("""INSERT INTO dunning_state (invoice_id, customer_id, policy, currency, amount_remaining,
                           state, next_step_at, first_failed_at, reason, evaluated_at, policy_hash)
                           VALUES (?, 'cus_q', 'default', 'usd', 100, ?, ?, ?, 'r', ?, 'h')""",
                        [invoice, state, step_at, AT, AT])
        snapshot = warehouse.publish(con=con)
    assert _read(snapshot, "SELECT invoice_id, next_step_at FROM analytics.dunning_queue") == [
        ("in_c", dt.datetime(2026, 11, 5)), ("in_a", dt.datetime(2026, 11, 9)), ("in_b", None)]


def test_invoices_vs_rated_is_one_row_per_customer_and_period(isolated_env):
    """cus_p has two periods (September and October), each previewed and reconciled: two rows, each
    pairing its own preview with its own reconciliation (joined on customer alone, 2 x 2 = 4 rows)."""
    with warehouse.open_warehouse() as con:
        for start, end, ours, stripe in ((dt.date(2026, 9, 1), dt.date(2026, 10, 1), 1000, 1000),
                                         (dt.date(2026, 10, 1), dt.date(2026, 11, 1), 2500, 2600)):
            con.execute("""INSERT INTO invoice_previews (customer_id, period_start, period_end, currency,
                           total_minor, total, lines, rated_at) VALUES ('cus_p', ?, ?, 'usd', ?, ?, 1, ?)""",
                        [start, end, ours, ours / 100, AT])
            con.execute("""INSERT INTO invoice_reconciliation (billing_month, customer_id, period_start, period_end,
                           currency, our_total_minor, stripe_total_minor, amount_diff_minor, tolerance_minor, status,
                           reason, reconciled_at) VALUES (?, 'cus_p', ?, ?, 'usd', ?, ?, ?, 1, ?, 'r', ?)""",
                        [start, start, end, ours, stripe, stripe - ours,
                         "matched" if stripe == ours else "amount_mismatch", AT])
        snapshot = warehouse.publish(con=con)
    # October: 2600 - 2500 = 100 minor units apart
    assert _read(snapshot, """SELECT period_start, our_total_minor, stripe_total_minor, amount_diff_minor,
                              reconciliation_status FROM analytics.invoices_vs_rated ORDER BY ALL""") == [
        (dt.date(2026, 9, 1), 1000, 1000, 0, "matched"),
        (dt.date(2026, 10, 1), 2500, 2600, 100, "amount_mismatch"),
    ]


def test_daily_usage_last_breaks_a_tie_between_dimension_rows_by_the_larger_event_id(isolated_env):
    """A `last` meter with a dimension: two hour rows of Oct 7 (region us, region eu) whose latest events
    share the instant 15:00 UTC; the larger event_id ('e9' > 'e10', as strings) wins, as rating breaks
    ties: quantity_last 8, not 5. quantity_sum 5 + 8 = 13, quantity_max 8, events 1 + 1 = 2."""
    at = dt.datetime(2026, 10, 7, 15, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        con.execute("""INSERT INTO rated_meters VALUES ('seats_by_region', 'h',
                       '{"aggregation": "last", "dimensions": ["region"]}', ?)""", [AT])
        for region, qty, event_id in (("us", 5, "e10"), ("eu", 8, "e9")):
            con.execute("""INSERT INTO usage_aggregates (customer_id, meter, dimensions, hour, event_date, quantity,
                           event_count, last_event_time, last_event_id) VALUES ('c1', 'seats_by_region', ?, ?,
                           DATE '2026-10-07', ?, 1, ?, ?)""",
                        [f'{{"region": "{region}"}}', at, qty, at, event_id])
        snapshot = warehouse.publish(con=con)
    assert _read(snapshot, """SELECT event_date, events, quantity_sum, quantity_max, distinct_values, quantity_last
                              FROM analytics.daily_usage""") == [
        (dt.date(2026, 10, 7), 2, D(13), D(8), None, D(8))]
