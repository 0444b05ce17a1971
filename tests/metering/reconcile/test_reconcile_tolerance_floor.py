"""The rounding tolerance never drops below one line's worth: a row whose line counts are unknown
(NULL on both sides) still rounded at least once (`_lines_tolerance`, floor 1). Hand-computed."""

from __future__ import annotations

import polars as pl

from metering.reconcile.reconcile import reconcile_invoices
from test_reconcile import NOW, PE, PS, S, _one


def test_a_usage_row_without_line_counts_keeps_one_lines_tolerance():
    """Ours 1500 calls at 1234 cents; Stripe invoiced the same quantity at 1235, its lines' count not
    given (line_count and rounded_lines NULL; our_rounded_lines NULL): tolerance = 1 cent (usd
    default) x max(0, 0, floor 1) = 1, so a 1-cent difference is rounding (`within_tolerance`) and a
    2-cent one is `amount_mismatch`.

    Wrong implementation: a floor of 0 makes the tolerance 0 x 1 cent = 0, and the 1-cent rounding
    difference an unexplained `amount_mismatch`."""
    r = _one("1500", 1234, "1500", "1500", "1500", 1235, lines=None)
    assert (r["status"], r["amount_diff_minor"], r["tolerance_minor"], r["explained"]) == (
        "within_tolerance", 1, 1, True)
    r = _one("1500", 1234, "1500", "1500", "1500", 1236, lines=None)
    assert (r["status"], r["amount_diff_minor"], r["tolerance_minor"], r["explained"]) == (
        "amount_mismatch", 2, 1, False)


def test_an_invoice_row_without_line_counts_keeps_one_lines_tolerance():
    """Our total 2900, Stripe's 2901, no line counts on either side (our_lines, line_count NULL):
    tolerance 1 x max(0, 0, 1) = 1 -> `within_tolerance`, diff +1. A floor of 0: tolerance 0,
    `amount_mismatch`."""
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                              our_total_minor=2900)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=2901, invoice_ids="in_1", invoice_status="paid",
                                amount_due=2901, amount_paid=2901, amount_remaining=0)])
    r = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW).row(0, named=True)
    assert (r["status"], r["amount_diff_minor"], r["tolerance_minor"]) == ("within_tolerance", 1, 1)
