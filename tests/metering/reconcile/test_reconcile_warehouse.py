"""reconcile_period over the real warehouse tables: inputs rolled up correctly, rows written once."""

from __future__ import annotations

from decimal import Decimal as D

from recon_scenario import EXPECTED, EXPECTED_INVOICES, MONTH, PULLED, write_scenario

from metering import warehouse
from metering.reconcile.run import reconcile_period
from metering.reconcile.settings import ReconcileSettings
from metering.rules.meters import load_meters


def test_reconcile_period_statuses_and_money(isolated_env, rules_dir):
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
        again = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
        stored = con.execute("SELECT count(*) FROM usage_reconciliation").fetchone()[0]
        inv_stored = con.execute("SELECT count(*) FROM invoice_reconciliation").fetchone()[0]
    got = {(r["customer_id"], r["meter"]): (r["status"], r["amount_diff_minor"]) for r in result.usage.iter_rows(named=True)}
    assert got == EXPECTED
    rows = {(r["customer_id"], r["meter"]): r for r in result.usage.iter_rows(named=True)}
    a = rows[("cus_a", "api_calls")]
    # the November hour is outside the period; the superseded revision 0 (999) is not counted
    assert (a["our_quantity"], a["pushed_quantity"], a["stripe_quantity"], a["invoiced_quantity"]) == (
        D(1500), D(1500), D(1500), D(1500))
    t = rows[("cus_a", "tokens")]
    assert (t["our_amount_minor"], t["not_in_stripe_minor"], t["stripe_amount_minor"]) == (50, 50, None)
    c = rows[("cus_c", "api_calls")]
    assert (c["pushed_quantity"], c["stripe_quantity"]) == (D(1000), D(1000))
    assert "1 window(s) not acknowledged" in c["reason"]
    assert rows[("cus_b", "api_calls")]["reason"].startswith(
        "same quantity 1500, invoiced amount differs from our rating under pro 2026-01: rated 100 vs invoiced 125")
    inv = {r["customer_id"]: (r["status"], r["amount_diff_minor"]) for r in result.invoices.iter_rows(named=True)}
    assert inv == EXPECTED_INVOICES
    a_inv = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a_inv["our_total_minor"], a_inv["not_in_stripe_minor"], a_inv["stripe_total_minor"]) == (5050, 50, 5000)
    assert a_inv["invoice_ids"] == "in_a0,in_cus_a"
    # idempotent: a second run replaces, never duplicates
    assert again.usage.equals(result.usage)
    assert (stored, inv_stored) == (4, 3)
    assert result.unexplained_minor() == {"usd": 125}
    assert not result.check_passed()


def test_periods_stripe_has_not_invoiced_yet_are_pending(isolated_env, rules_dir):
    """Reconciling before the period's invoice exists: pending, not a mismatch."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("DELETE FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_c'")
        con.execute("DELETE FROM stripe_invoices_api WHERE invoice_id = 'in_cus_c'")
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
    c = result.usage.filter(customer_id="cus_c").row(0, named=True)
    assert (c["status"], c["explained"]) == ("pending", True)
    assert c["reason"].startswith("Stripe has not invoiced this period yet")
    c_inv = result.invoices.filter(customer_id="cus_c").row(0, named=True)
    assert (c_inv["status"], c_inv["amount_diff_minor"]) == ("pending", -100)
    # the others are unchanged
    assert result.usage.filter(customer_id="cus_b")["status"].to_list() == ["amount_mismatch"]


def test_threshold_is_inclusive(isolated_env, rules_dir):
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        ok = reconcile_period(con, MONTH, settings=ReconcileSettings(max_unexplained_minor=125),
                              meters=load_meters(rules_dir), now=PULLED)
        bad = reconcile_period(con, MONTH, settings=ReconcileSettings(max_unexplained_minor=124),
                               meters=load_meters(rules_dir), now=PULLED)
    assert ok.check_passed() and not bad.check_passed()


def test_webhook_lines_fill_in_for_invoices_the_api_did_not_see(isolated_env, rules_dir):
    """cus_b's invoice known only from webhooks: its lines (table stripe_invoice_lines) are used."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("DELETE FROM stripe_invoice_lines_api WHERE customer_id = 'cus_b'")
        con.execute("DELETE FROM stripe_invoices_api WHERE customer_id = 'cus_b'")
        con.execute("""INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency, amount_due, amount_paid,
                       amount_remaining, total, created, period_start, period_end) VALUES ('in_cus_b', 'cus_b', 'open',
                       'usd', 125, 0, 125, 125, TIMESTAMPTZ '2026-11-01 01:00:00+00', TIMESTAMPTZ '2026-10-01 00:00:00+00',
                       TIMESTAMPTZ '2026-11-01 00:00:00+00')""")
        con.execute("""INSERT INTO stripe_invoice_lines (invoice_id, line_id, meter, event_name, quantity_decimal,
                       amount, currency, period_start, period_end, source) VALUES ('in_cus_b', 'il_b', NULL,
                       'metering_api_calls', 1500, 125, 'usd', TIMESTAMPTZ '2026-10-01 00:00:00+00',
                       TIMESTAMPTZ '2026-11-01 00:00:00+00', 'webhook')""")
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
    b = result.usage.filter(customer_id="cus_b").row(0, named=True)
    assert (b["status"], b["amount_diff_minor"], b["invoice_ids"]) == ("amount_mismatch", 25, "in_cus_b")
    b_inv = result.invoices.filter(customer_id="cus_b").row(0, named=True)
    assert (b_inv["invoice_status"], b_inv["amount_remaining"]) == ("open", 125)


def test_a_line_starting_next_month_belongs_to_the_period_that_contains_it(isolated_env, rules_dir):
    """cus_b's price changed on Nov 3 inside a period Oct 15 .. Nov 15: that line is October's."""
    import datetime as dt

    with warehouse.open_warehouse() as con:
        write_scenario(con)
        for table in ("rated_usage", "invoice_previews"):
            con.execute(f"UPDATE {table} SET period_start = DATE '2026-10-15', period_end = DATE '2026-11-15' "
                        "WHERE customer_id = 'cus_b'")
        con.execute("UPDATE rated_usage SET segment_start = DATE '2026-10-15' WHERE customer_id = 'cus_b'")
        con.execute("""UPDATE usage_aggregates SET hour = hour + INTERVAL 14 DAY, event_date = event_date + 14
                       WHERE customer_id = 'cus_b'""")
        con.execute("""UPDATE stripe_push_ledger SET window_start = window_start + INTERVAL 14 DAY,
                       window_end = window_end + INTERVAL 14 DAY WHERE customer_id = 'cus_b'""")
        con.execute("""UPDATE stripe_meter_summaries SET period_start = DATE '2026-10-15', period_end = DATE '2026-11-15'
                       WHERE customer_id = 'cus_b'""")
        con.execute("""UPDATE stripe_invoices_api SET period_start = TIMESTAMPTZ '2026-10-15 00:00:00+00',
                       period_end = TIMESTAMPTZ '2026-11-15 00:00:00+00' WHERE customer_id = 'cus_b'""")
        # Stripe split the line at the price change: 1000 at the old price from Oct 15, 500 at the new from Nov 3
        con.execute("""UPDATE stripe_invoice_lines_api SET quantity_decimal = 1000, amount = 100,
                       period_start = TIMESTAMPTZ '2026-10-15 00:00:00+00' WHERE customer_id = 'cus_b'""")
        con.execute("""INSERT INTO stripe_invoice_lines_api (billing_month, invoice_id, line_id, customer_id, meter,
                       quantity_decimal, amount, currency, period_start, period_end, pulled_at)
                       VALUES (DATE '2026-10-01', 'in_cus_b', 'il_b2', 'cus_b', 'api_calls', 500, 25, 'usd',
                       TIMESTAMPTZ '2026-11-03 00:00:00+00', TIMESTAMPTZ '2026-11-15 00:00:00+00', ?)""", [PULLED])
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
    b = result.usage.filter(customer_id="cus_b").row(0, named=True)
    assert (b["period_start"], b["invoiced_quantity"], b["stripe_amount_minor"], b["tolerance_minor"]) == (
        dt.date(2026, 10, 15), D(1500), 125, 2)
    assert (b["status"], b["amount_diff_minor"]) == ("amount_mismatch", 25)
    assert result.usage.filter(customer_id="cus_b").height == 1
