"""The analytics schema in the published snapshot, and the README's example queries (run verbatim).

The queries are the ones in the README's "Analytics schema" section; expected rows are hand-computed
from recon_scenario.py.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import duckdb
import pytest
from recon_scenario import (
    MONTH,
    PULLED,
    add_minimum_customer,
    land_invoice_webhook,
    ledger_item,
    next_invoice_with_item,
    pulled_item_line,
    write_scenario,
)

from metering import warehouse
from metering.reconcile.run import reconcile_period
from metering.reconcile.settings import ReconcileSettings
from metering.rules.meters import load_meters

EXAMPLES = {
    "daily usage of one customer": (
        """SELECT event_date, events, quantity_sum
FROM analytics.daily_usage
WHERE customer_id = 'cus_a' AND meter = 'api_calls'
ORDER BY event_date""",
        [(dt.date(2026, 10, 1), 1000, D(1000)), (dt.date(2026, 10, 2), 500, D(500)),
         (dt.date(2026, 11, 1), 7, D(7))],
    ),
    "rated amount by rule version (each segment of a split period under its own version)": (
        """SELECT seg.plan, seg.plan_version, currency, sum(seg.amount_minor) AS amount_minor
FROM (SELECT currency, unnest(segments) AS seg FROM analytics.rated_lines
      WHERE period_start = DATE '2026-10-01')
GROUP BY ALL ORDER BY ALL""",
        [("pro", "2026-01", "usd", D(5250))],
    ),
    "discrepancies needing attention, largest first in each currency": (
        """SELECT customer_id, meter, status, currency, amount_diff_minor
FROM analytics.reconciliation
WHERE billing_month = DATE '2026-10-01' AND NOT explained
ORDER BY currency, abs(amount_diff_minor) DESC""",
        [("cus_c", "api_calls", "not_pushed", "usd", -100), ("cus_b", "api_calls", "amount_mismatch", "usd", 25)],
    ),
    "match rate per currency": (
        """SELECT currency,
       round(100 * count(*) FILTER (WHERE status IN ('matched', 'within_tolerance')) / count(*), 1) AS match_rate_percent
FROM analytics.reconciliation
WHERE billing_month = DATE '2026-10-01'
GROUP BY currency""",
        [("usd", 50.0)],
    ),
    "invoices versus rated": (
        """SELECT customer_id, our_total_minor, stripe_total_minor, reconciliation_status, invoice_status
FROM analytics.invoices_vs_rated
WHERE period_start = DATE '2026-10-01'
ORDER BY customer_id""",
        [("cus_a", 5050, 5000, "matched", "paid"), ("cus_b", 100, 125, "amount_mismatch", "paid"),
         ("cus_c", 100, 0, "amount_mismatch", "paid")],
    ),
    "Stripe invoice lines, API pull merged with webhooks": (
        """SELECT source, currency, count(*) AS lines, sum(amount) AS amount_minor
FROM analytics.stripe_invoice_lines
GROUP BY source, currency""",
        [("api", "usd", 4, D(5125))],
    ),
    "dunning queue": (
        """SELECT invoice_id, customer_id, amount_remaining, next_step_name, next_step_at
FROM analytics.dunning_queue""",
        [("in_late", "cus_c", 100, "reminder_2", dt.datetime(2026, 11, 9))],   # UTC, without a time zone
    ),
}


@pytest.fixture
def snapshot(isolated_env, rules_dir):
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
        for state, invoice, step_at in (("in_dunning", "in_late", dt.datetime(2026, 11, 9, tzinfo=dt.UTC)),
                                        ("recovered", "in_paid", None)):
            con.execute(
                """INSERT INTO dunning_state (invoice_id, customer_id, policy, currency, amount_remaining, state,
                   next_step_name, next_step_at, first_failed_at, reason, evaluated_at, policy_hash)
                   VALUES (?, 'cus_c', 'default', 'usd', 100, ?, 'reminder_2', ?, ?, 'r', ?, 'h')""",
                [invoice, state, step_at, PULLED, PULLED])
        return warehouse.publish(con=con)


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_readme_example_queries(snapshot, name):
    query, expected = EXAMPLES[name]
    con = duckdb.connect(str(snapshot), read_only=True)
    try:
        con.execute("SET TimeZone = 'UTC'")
        rows = con.execute(query).fetchall()
    finally:
        con.close()
    assert [tuple(float(v) if isinstance(v, D) and name == "match rate per currency" else v for v in r)
            for r in rows] == expected


def test_every_view_is_documented_and_works_when_attached(snapshot, tmp_path):
    con = duckdb.connect()
    try:
        con.execute(f"ATTACH '{snapshot}' AS snap (READ_ONLY)")
        views = con.execute(
            "SELECT view_name, comment FROM duckdb_views() WHERE database_name = 'snap' AND schema_name = 'analytics' "
            "ORDER BY view_name").fetchall()
        assert [v for v, _ in views] == ["daily_usage", "dunning_queue", "invoice_reconciliation",
                                         "invoices_vs_rated", "rated_lines", "rating_adjustments", "reconciliation",
                                         "stripe_invoice_lines"]
        assert all(comment and "Source:" in comment and "One row per" in comment for _, comment in views)
        for view, _ in views:  # each view binds inside the attached snapshot
            con.execute(f"SELECT count(*) FROM snap.analytics.{view}").fetchone()
    finally:
        con.close()


def test_publish_from_a_closed_warehouse_installs_the_views(isolated_env):
    """`metering publish` opens the warehouse read-only for the copy; the views must still be created."""
    with warehouse.open_warehouse():
        pass
    snapshot = warehouse.publish()
    con = duckdb.connect(str(snapshot), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM analytics.reconciliation").fetchone() == (0,)
    finally:
        con.close()


def test_a_period_only_stripe_invoiced_is_a_row_of_invoices_vs_rated(isolated_env):
    """invoices_vs_rated once started from our previews: a period Stripe invoiced and we never rated
    (extra_in_stripe) was missing from the view, and its money from every sum over it."""
    with warehouse.open_warehouse() as con:
        con.execute("""INSERT INTO invoice_reconciliation (billing_month, customer_id, period_start, period_end,
                       currency, stripe_total_minor, amount_diff_minor, tolerance_minor, status, reason, reconciled_at)
                       VALUES (DATE '2026-10-01', 'cus_x', DATE '2026-10-01', DATE '2026-11-01', 'usd', 24843, 24843,
                               1, 'extra_in_stripe', 'r', TIMESTAMPTZ '2026-11-02 00:00:00+00')""")
        snapshot = warehouse.publish(con=con)
    con = duckdb.connect(str(snapshot), read_only=True)
    try:
        assert con.execute("""SELECT customer_id, period_start, currency, our_total_minor, stripe_total_minor,
                              reconciliation_status FROM analytics.invoices_vs_rated""").fetchall() == [
            ("cus_x", dt.date(2026, 10, 1), "usd", None, 24843, "extra_in_stripe")]
    finally:
        con.close()


def test_invoice_items_in_the_views(isolated_env, rules_dir, tmp_path):
    """cus_m's minimum (4000, Stripe cannot price) billed as our item ii_m, which Stripe held pending and
    then put on in_next (known only from its webhook); in_cus_a pulled again with November (a later
    copy): each line once, the item id on the webhook line, and where cus_m's 4000 stands."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        ledger_item(con, "ii_m", None)
        land_invoice_webhook(con, tmp_path / "landing", next_invoice_with_item("ii_m"))
        pulled_item_line(con, "in_cus_m", "il_m_manual", "ii_manual", 500)
        con.execute("""INSERT INTO stripe_invoice_lines_api SELECT * REPLACE (DATE '2026-11-01' AS billing_month,
                       TIMESTAMPTZ '2026-12-02 00:00:00+00' AS pulled_at) FROM stripe_invoice_lines_api
                       WHERE invoice_id = 'in_cus_a'""")
        reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
        snapshot = warehouse.publish(con=con)
    con = duckdb.connect(str(snapshot), read_only=True)
    try:
        lines = con.execute("""SELECT invoice_id, line_id, amount, invoice_item, source
                               FROM analytics.stripe_invoice_lines WHERE invoice_id IN ('in_cus_a', 'in_cus_m', 'in_next') ORDER BY line_id""").fetchall()
        m = con.execute("""SELECT our_total_minor, not_in_stripe_minor, engine_items_minor, engine_items_pending_minor,
                           unbilled_minor, stripe_total_minor, amount_diff_minor, reconciliation_status
                           FROM analytics.invoices_vs_rated WHERE customer_id = 'cus_m'""").fetchall()
        same = con.execute("""SELECT engine_items_minor, engine_items_pending_minor, unbilled_minor
                              FROM analytics.invoice_reconciliation WHERE customer_id = 'cus_m'""").fetchall()
    finally:
        con.close()
    assert lines == [("in_cus_a", "il_cus_a", 100, None, "api"), ("in_cus_m", "il_m", 6000, None, "api"),
                     ("in_cus_m", "il_m_manual", 500, "ii_manual", "api"),
                     ("in_next", "il_next_item", 4000, "ii_m", "webhook"),
                     ("in_next", "il_next_usage", 700, None, "webhook")]
    # Stripe 6000 + 500 (by hand) + 4000 (ours, on in_next) vs ours 10000 of which 4000 not in Stripe
    assert m == [(10000, 4000, 4000, 0, 0, 10500, 500, "amount_mismatch")]
    assert same == [(4000, 0, 0)]


def _line_statuses_and_totals(snapshot) -> tuple[dict[str, str], int, int]:
    """From the snapshot: each invoice's status in analytics.stripe_invoice_lines, what its lines bill
    leaving out void invoices, and Stripe's totals in analytics.invoice_reconciliation."""
    con = duckdb.connect(str(snapshot), read_only=True)
    try:
        statuses = dict(con.execute("SELECT invoice_id, any_value(invoice_status) FROM analytics.stripe_invoice_lines "
                                    "GROUP BY 1").fetchall())
        billed = con.execute("SELECT sum(amount) FROM analytics.stripe_invoice_lines "
                             "WHERE invoice_status <> 'void'").fetchone()[0]
        totals = con.execute("SELECT sum(stripe_total_minor) FROM analytics.invoice_reconciliation").fetchone()[0]
    finally:
        con.close()
    return statuses, billed, totals


def test_invoice_lines_carry_their_invoices_status(isolated_env, rules_dir):
    """A void invoice's lines bill nothing: the view lists them with invoice_status, so its lines minus
    the void ones add up to Stripe's totals in invoice_reconciliation (5125 against 5025 without it)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET status = 'void' WHERE invoice_id = 'in_cus_a'")
        reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
        snapshot = warehouse.publish(con=con)
    statuses, billed, totals = _line_statuses_and_totals(snapshot)
    assert statuses["in_cus_a"] == "void" and {s for i, s in statuses.items() if i != "in_cus_a"} == {"paid"}
    assert billed == totals


def test_invoice_lines_show_a_void_the_webhooks_told_after_the_pull(isolated_env, rules_dir):
    """The pull saw in_cus_a open; Stripe voided it later and the webhook state says so. The view kept
    the pull's `open`, so `WHERE invoice_status <> 'void'` added up 100 that reconciliation leaves out
    (audit). The state's status wins when it has moved further, as in reconciliation."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET status = 'open' WHERE invoice_id IN ('in_cus_a', 'in_cus_b')")
        con.execute("INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency, amount_due, amount_paid, "
                    "amount_remaining, total) VALUES ('in_cus_a', 'cus_a', 'void', 'usd', 100, 0, 0, 100), "
                    "('in_cus_b', 'cus_b', 'draft', 'usd', 125, 0, 125, 125)")   # behind its pull: the pull's stands
        reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
        snapshot = warehouse.publish(con=con)
    statuses, billed, totals = _line_statuses_and_totals(snapshot)
    assert (statuses["in_cus_a"], statuses["in_cus_b"]) == ("void", "open")
    assert billed == totals
