"""What is paid of a period: its own Stripe lines by their invoice's status, not the closing invoice's payment.

recon_scenario's October, as Stripe bills a subscription: cus_a's October fee (4900) was billed in
advance on in_a0, the subscription's first invoice, which Stripe then marked uncollectible (written
off: paid 0, remaining 4900). in_cus_a closes October: October's usage (100) and November's fee
(4900), billed in advance, paid together (5000). The closing invoice's payment once stood for the
period's: October showed 5000 paid and 0 remaining, November's fee counted in October, and the
written-off October fee nowhere.
"""

from __future__ import annotations

import datetime as dt

from recon_scenario import MONTH, PULLED, invoice_total_is_its_lines, write_scenario

from metering import warehouse
from metering.reconcile.run import reconcile_period
from metering.reconcile.settings import ReconcileSettings
from metering.reports.data import load_report_data
from metering.rules.meters import load_meters

NOV, DEC = dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


def _fee_written_off_and_next_fee_on_the_closing_invoice(con) -> None:
    """in_a0 uncollectible; in_cus_a also bills November's fee (a line of November's period), paid."""
    con.execute("UPDATE stripe_invoices_api SET status = 'uncollectible', amount_paid = 0, amount_remaining = 4900 "
                "WHERE invoice_id = 'in_a0'")
    con.execute("""INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('il_nov_fee' AS line_id, 4900 AS amount,
                   ? AS period_start, ? AS period_end) FROM stripe_invoice_lines_api WHERE line_id = 'il_fee'""",
                [NOV, DEC])
    con.execute("UPDATE stripe_invoice_lines_api SET invoice_id = 'in_cus_a' WHERE line_id = 'il_nov_fee'")
    invoice_total_is_its_lines(con, "in_cus_a")
    con.execute("UPDATE stripe_invoices_api SET amount_due = 5000, amount_paid = 5000 WHERE invoice_id = 'in_cus_a'")


def test_a_period_is_paid_by_its_own_lines_whichever_invoice_carries_them(isolated_env, rules_dir):
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _fee_written_off_and_next_fee_on_the_closing_invoice(con)
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
        stored = con.execute("SELECT customer_id, invoice_status, amount_due, amount_paid, amount_remaining "
                             "FROM invoice_reconciliation WHERE billing_month = ? ORDER BY customer_id",
                             [MONTH]).fetchall()
        totals = {t.currency: t for t in load_report_data(con, MONTH, settings=ReconcileSettings()).totals}
    # (closing invoice's status, due, paid, remaining): cus_a's usage 100 paid on in_cus_a, its fee 4900
    # remaining on in_a0; November's fee is November's. cus_b 125 paid; cus_c's line is 0.
    assert stored == [("cus_a", "paid", 100 + 4900, 100, 4900), ("cus_b", "paid", 125, 125, 0),
                      ("cus_c", "paid", 0, 0, 0)]
    a = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a["status"], a["stripe_total_minor"], a["stripe_adjustments_minor"]) == ("matched", 5000, 0)
    assert a["reason"].endswith("; invoice in_a0,in_cus_a, closing invoice paid; the period's lines paid 100, "
                                "remaining 4900")
    usd = totals["usd"]
    # was 5000 + 125 + 0 paid (in_cus_a's payment, November's fee in it) and no remaining
    assert (usd.amount_paid_minor, usd.amount_remaining_minor) == (100 + 125 + 0, 4900)
    assert usd.stripe_invoice_total_minor == usd.amount_paid_minor + usd.amount_remaining_minor == 5000 + 125 + 0
