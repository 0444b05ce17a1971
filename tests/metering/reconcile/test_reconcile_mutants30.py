"""Gaps found by a hand mutation audit of metering/reconcile/reconcile.py (mutants30).

The pure reconciliation functions only (`reconcile_usage`, `reconcile_invoices`, `invoice_residuals`,
`unexplained_by_currency`): real Polars frames, as `reconcile_period` passes them, no warehouse or Stripe
needed. Each test names the mutant(s) it kills (ids of the mutants30 audit report); every expected
figure is worked out by hand in its docstring or comments.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import polars as pl
from test_reconcile import NOW, PE, PS, S, _one

from metering.reconcile.reconcile import (
    invoice_residuals,
    reconcile_invoices,
    reconcile_usage,
    unexplained_by_currency,
)


def _ours(customer="c1", meter="api_calls", q="1500", amount=300, **extra):
    return dict(customer_id=customer, meter=meter, period_start=PS, period_end=PE, currency="usd", plan="pro",
                plan_version="2026-01", our_quantity=D(q), our_amount_minor=amount, **extra)


def _pushed(customer="c1", meter="api_calls", q="1500"):
    return dict(customer_id=customer, meter=meter, period_start=PS, pushed_quantity=D(q), unacked_windows=0,
                late_windows=0)


def _meter(customer="c1", meter="api_calls", q="1500"):
    return dict(customer_id=customer, meter=meter, period_start=PS, period_end=PE, stripe_quantity=D(q),
                meter_status="settled")


def _line(customer="c1", meter="api_calls", q="1500", amount=300):
    return dict(customer_id=customer, meter=meter, period_start=PS, period_end=PE, currency="usd",
                invoiced_quantity=D(q), stripe_amount_minor=amount, line_count=1, invoice_ids=f"in_{customer}",
                finalized=True)


def test_a_missing_row_names_the_stripe_quantities_it_does_not_have():
    """Ours 1500 calls for 300, pushed 1500; Stripe has neither a meter summary nor a line: the reason says
    so in full, Stripe's side 'none' (not 0, which would read as a zero summary Stripe does have), and
    Stripe's amount 0: diff 0 - 300 = -300.
    Kills M03 (`_num` fills NULL with '0' instead of 'none')."""
    r = _one("1500", 300, "1500", None, None, None)
    assert r["reason"] == ("pushed but Stripe has no usage or line; ours 1500, pushed 1500, Stripe meter none, "
                           "invoiced none; rated 300 vs invoiced 0 (usd minor units, diff -300)")





def test_the_same_open_period_listed_twice_is_still_one_row():
    """The open-period listing names c1's October twice (two void invoices read on two pulls): one usage
    row and one invoice row still, each `pending` (Oct 20 is before Nov 1 + 1 h + 15 min).
    Kills M16 (`_with_invoicing` without `.unique`: each row came out twice)."""
    open_ = pl.DataFrame([dict(customer_id="c1", period_start=PS)] * 2)
    during = dt.datetime(2026, 10, 20, tzinfo=dt.UTC)
    usage = reconcile_usage(pl.DataFrame([_ours()]), pl.DataFrame([_pushed()]), pl.DataFrame([_meter()]), None,
                            billing_month=PS, settings=S, reconciled_at=during, open_periods=open_)
    assert usage.select("customer_id", "status").rows() == [("c1", "pending")]
    inv = reconcile_invoices(
        pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd", our_total_minor=300,
                           our_lines=1)]), None,
        billing_month=PS, settings=S, reconciled_at=during, open_periods=open_, usage=usage)
    assert inv.select("customer_id", "status").rows() == [("c1", "pending")]


def test_rows_come_out_sorted_by_customer_period_and_meter():
    """Input in the order c2/api_calls, c1/storage_gb, c1/api_calls, every row matched: the output is
    sorted c1/api_calls, c1/storage_gb, c2/api_calls; the invoice rows c1 .. c5 (given c5 first).
    Kills M80 and M102 (the sorts removed: the rows kept a join's order)."""
    keys = [("c2", "api_calls"), ("c1", "storage_gb"), ("c1", "api_calls")]
    for _ in range(5):   # a join's order is not guaranteed: several tries make a lucky order unlikely
        usage = reconcile_usage(pl.DataFrame([_ours(c, m) for c, m in keys]),
                                pl.DataFrame([_pushed(c, m) for c, m in keys]),
                                pl.DataFrame([_meter(c, m) for c, m in keys]),
                                pl.DataFrame([_line(c, m) for c, m in keys]),
                                billing_month=PS, settings=S, reconciled_at=NOW)
        assert usage.select("customer_id", "meter", "status").rows() == [
            ("c1", "api_calls", "matched"), ("c1", "storage_gb", "matched"), ("c2", "api_calls", "matched")]
    # invoices of five customers given in reverse: c1 .. c5 out, whatever order the join left them in
    customers = ["c5", "c4", "c3", "c2", "c1"]
    ours = pl.DataFrame([dict(customer_id=c, period_start=PS, period_end=PE, currency="usd", our_total_minor=300,
                              our_lines=1) for c in customers])
    stripe = pl.DataFrame([dict(customer_id=c, period_start=PS, period_end=PE, currency="usd", stripe_total_minor=300,
                                line_count=1, invoice_ids=f"in_{c}", invoice_status="paid") for c in customers])
    for _ in range(5):
        inv = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW)
        assert inv["customer_id"].to_list() == ["c1", "c2", "c3", "c4", "c5"]


def test_a_line_with_money_but_no_quantity_is_stripe_having_something():
    """Ours 1500 calls for 300, pushed 1500; Stripe's meter has 0 and its one line bills 0 calls for 300:
    Stripe has something (money), so not `missing_in_stripe`: its quantities differ from ours ->
    `quantity_mismatch`, diff 300 - 300 = 0. Kills M41 (`stripe_has` without `stripe_amt != 0`)."""
    r = _one("1500", 300, "1500", "0", "0", 300)
    assert (r["status"], r["amount_diff_minor"], r["quantity_diff"]) == ("quantity_mismatch", 0, D(-1500))


def test_an_invoiced_quantity_without_a_meter_summary_is_stripe_having_something():
    """1500 free calls (rated 0), pushed 1500; Stripe's meter summary says 0 but its invoice line bills
    1500 calls for 0: Stripe has the usage on its invoice, so `quantity_mismatch` (meter 0 vs ours
    1500), not `missing_in_stripe`. Kills M42 (`stripe_has` without `inv_q != 0`)."""
    r = _one("1500", 0, "1500", "0", "1500", 0)
    assert (r["status"], r["amount_diff_minor"]) == ("quantity_mismatch", 0)


def test_a_late_window_is_valued_without_the_charges_stripe_cannot_price():
    """1510 calls rated 1302, of which 1000 not priceable in Stripe (billed by the engine): Stripe's
    side of ours is 302. The last 10 calls came late (pushed 1500); Stripe billed 1500 calls for 297:
    diff 297 - 302 = -5. The late calls are worth ceil(302 x 10 / 1510) = 2, plus tolerance 1 = 3 < 5:
    not explained -> `not_pushed`. Valued at the whole 1302 they would be worth ceil(8.62) = 9 and hide
    the 3 cents. Kills M47 (`_with_late_value` given `ours_amt` instead of `ours_amt - not_in_stripe`)."""
    r = _one("1510", 1302, "1500", "1500", "1500", 297, late=1, late_q="10", not_in_stripe=1000)
    assert (r["status"], r["amount_diff_minor"], r["explained"]) == ("not_pushed", -5, False)
    assert r["reason"].endswith("; late windows cover at most 10 of the shortfall, worth at most 2 at our price "
                                "(1 late window(s))")


def test_a_rated_meter_of_no_usage_and_no_money_is_still_a_row():
    """We rated c1's api_calls 0 calls for 0 (a plan meter with no usage); nothing pushed, nothing in
    Stripe. It is ours, so it is a row, `matched` (0 = 0). A row with neither quantity nor an amount of
    ours and nothing elsewhere says nothing and is dropped.
    Kills M71 (`empty` without `our_amount_minor IS NULL`: our zero row was dropped) and M73 (the empty
    test's `meter_status` NULL read as pending: the empty row was kept)."""
    r = _one("0", 0, None, None, None, None)
    assert (r["status"], r["amount_diff_minor"]) == ("matched", 0)
    ours = pl.DataFrame([_ours(q="0", amount=None)])
    out = reconcile_usage(ours, None, None, None, billing_month=PS, settings=S, reconciled_at=NOW)
    assert out.height == 0


def _open_invoice(**stripe_extra):
    """c1's October, open (no invoice reaches Nov 1) on Oct 20: ours 300, Stripe's lines 300 so far."""
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd", our_total_minor=300,
                              our_lines=1)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=300, line_count=1, invoice_ids="in_0", **stripe_extra)])
    return reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=dt.datetime(
        2026, 10, 20, tzinfo=dt.UTC), open_periods=pl.DataFrame([dict(customer_id="c1", period_start=PS)]),
        usage=pl.DataFrame([_one("1500", 300, "1500", "1500", "1500", 300)])).row(0, named=True)


def test_a_discount_on_an_invoice_of_a_period_still_open_is_not_yet_the_periods():
    """c1's October is open on Oct 20; the invoice in_0 that billed its fee in advance shows a 100 coupon
    (adjustments -100). Stripe may still invoice October: the row is `pending` and carries no adjustment
    (it is the period's once Stripe closes it, or will not). Kills M84 (adjustments kept while awaiting)."""
    r = _open_invoice(adjustments_minor=-100, adjusted_invoice_ids="in_0")
    assert (r["status"], r["stripe_adjustments_minor"]) == ("pending", None)


def test_a_credit_note_in_another_currency_is_in_no_column_of_ours():
    """We rated c1's October 22500 jpy; Stripe billed it 22500 usd cents on in_1, and credited 60 usd
    cents before payment. The credit, like every other amount of Stripe's, is in no yen column: NULL.
    Kills M85 (`credit_notes_minor` left out of the columns nulled for another currency)."""
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="jpy", our_total_minor=22500,
                              our_lines=1)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=22500, line_count=1, invoice_ids="in_1", invoice_status="paid",
                                amount_due=22500, amount_paid=22440, amount_remaining=0, credit_notes_minor=60,
                                credited_invoice_ids="in_1")])
    r = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW).row(0, named=True)
    assert (r["status"], r["credit_notes_minor"], r["amount_paid"]) == ("currency_mismatch", None, None)
    assert "credited" not in r["reason"]



def _fee_row(stripe_total, *, adjustments=None):
    """c1: usage 1500 calls 300 = 300 (matched) + a flat fee 4900 of ours; Stripe's total `stripe_total`
    on 2 lines (1 on no meter), closing invoice in_1 paid."""
    usage = pl.DataFrame([_one("1500", 300, "1500", "1500", "1500", 300)])
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd", our_total_minor=5200,
                              our_lines=2, our_unmetered_lines=1)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=stripe_total, line_count=2, rounded_lines=2, unmetered_lines=1,
                                invoice_ids="in_1", closing_invoice_id="in_1", invoice_status="paid",
                                adjustments_minor=adjustments, adjusted_invoice_ids="in_1" if adjustments else None)])
    return usage, reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW, usage=usage)



def test_a_row_flagged_for_its_discount_alone_names_only_the_discount():
    """Stripe's lines 5200 = ours, but in_1's total before tax is 100 below them (a coupon): diff 0,
    residual 0, adjustments -100 -> amount_mismatch, and the reason ends with the discount alone, no
    '; all of it on the meter rows' (there is no difference to place). Kills M115 (`nothing` dropped)."""
    _, inv = _fee_row(5200, adjustments=-100)
    r = inv.row(0, named=True)
    assert (r["status"], r["amount_diff_minor"], r["stripe_adjustments_minor"]) == ("amount_mismatch", 0, -100)
    assert r["reason"].endswith("paid 0, remaining 0; Stripe's invoice in_1 totals 100 less than its lines before "
                                "tax (a discount or credit on the invoice, on no line: Stripe collects that much "
                                "less, counted)")



def test_invoice_residuals_of_its_own_output_is_the_same_frame():
    """Re-run safety: `invoice_residuals` over rows that already carry `usage_diff_minor` and
    `residual_minor` (its own output) recomputes them instead of joining a second copy: same columns,
    same values (c1: diff -4, usage 0, residual -4, unexplained 4).
    Kills M119 (the old columns not dropped: a `usage_diff_minor_right` column appeared)."""
    usage, inv = _fee_row(5196)
    once = invoice_residuals(usage, inv)
    twice = invoice_residuals(usage, once)
    assert sorted(twice.columns) == sorted(once.columns)
    assert twice.select("usage_diff_minor", "residual_minor", "unexplained_minor").row(0) == (0, -4, 4)


def test_stripes_double_of_our_quantity_is_ours_when_a_window_was_not_pushed():
    """Ours 123456.123456789012 tokens; one window of 1 token failed (pushed 123455.123456789012), yet
    Stripe's meter came back as the double 123456.123456789: that is ours, as far as a double shows, so
    the quantity difference is 0 (the row is `not_pushed` for the failed window either way).
    Kills M130 (Stripe's quantity matched only against what we pushed: quantity_diff -1.2e-11)."""
    exact = "123456.123456789012"
    r = _one(exact, 1235, "123455.123456789012", repr(float(exact)), exact, 1235, unacked=1)
    assert (r["status"], r["quantity_diff"]) == ("not_pushed", D(0))


def test_stripes_lines_in_two_currencies_are_named_each_in_its_own():
    """We rated c1's October 1500 calls 22500 jpy; Stripe's lines are in two currencies, 22500 jpy and
    100 usd cents ('jpy,usd', summed 22600 across them: a meaningless number). The reasons name each
    currency's amount, never the 22600: Stripe's lines are in no yen total (diff -22500, all of ours).
    Kills M09 (`_stripe_amounts` without the per-currency text: '22600 jpy,usd' / '22600')."""
    ours = pl.DataFrame([_ours(amount=22500) | dict(currency="jpy")])
    lines = pl.DataFrame([_line(amount=22600) | dict(currency="jpy,usd", stripe_amounts="22500 jpy + 100 usd")])
    usage = reconcile_usage(ours, pl.DataFrame([_pushed()]), pl.DataFrame([_meter()]), lines, billing_month=PS,
                            settings=S, reconciled_at=NOW)
    r = usage.row(0, named=True)
    assert (r["status"], r["amount_diff_minor"]) == ("currency_mismatch", -22500)
    assert r["reason"] == ("Stripe invoiced 22500 jpy + 100 usd minor units, we rated 22500 jpy minor units: two "
                           "currencies are not compared, and Stripe's amount is in no jpy total (diff -22500: all of "
                           "ours); ours 1500, pushed 1500, Stripe meter 1500, invoiced 1500")
    inv = reconcile_invoices(
        pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="jpy", our_total_minor=22500,
                           our_lines=1)]),
        pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="jpy,usd",
                           stripe_total_minor=22600, line_count=2, invoice_ids="in_1", invoice_status="paid",
                           amount_paid=22600, stripe_amounts="22500 jpy + 100 usd")]),
        billing_month=PS, settings=S, reconciled_at=NOW, usage=usage).row(0, named=True)
    assert inv["status"] == "currency_mismatch"
    assert inv["reason"].startswith("Stripe billed this period in jpy,usd: 22500 jpy + 100 usd minor units (invoice "
                                    "in_1 paid), we rated 22500 jpy minor units")


def test_a_row_takes_our_period_end_over_a_lines():
    """Our October row ends Nov 1; Stripe's only line for it ends Oct 15 (the line of a first segment):
    the row's period is ours, Oct 1 - Nov 1. Kills M31 (Stripe's line's end taken first)."""
    lines = pl.DataFrame([_line() | dict(period_end=dt.date(2026, 10, 15))])
    r = reconcile_usage(pl.DataFrame([_ours()]), pl.DataFrame([_pushed()]), pl.DataFrame([_meter()]), lines,
                        billing_month=PS, settings=S, reconciled_at=NOW).row(0, named=True)
    assert (r["period_end"], r["status"]) == (PE, "matched")


def test_something_only_stripe_has_is_in_stripes_currency():
    """c1's api_calls: we never rated or pushed them; Stripe's line bills 10 calls for 2 usd cents ->
    `extra_in_stripe` +2 in usd, and the blocking check counts it under usd, not '?'.
    Kills M32 (the row's currency only ours: NULL)."""
    usage = reconcile_usage(None, None, None, pl.DataFrame([_line(q="10", amount=2)]), billing_month=PS,
                            settings=S, reconciled_at=NOW)
    r = usage.row(0, named=True)
    assert (r["status"], r["amount_diff_minor"], r["currency"]) == ("extra_in_stripe", 2, "usd")
    assert r["reason"].endswith("invoiced 2 (usd minor units, diff 2)")
    assert unexplained_by_currency(usage) == {"usd": 2}


def _engine_meter():
    """c1's meter billed by the engine alone (stripe_charges 0, all 302 of ours not priceable in Stripe):
    1510 rated, 1500 acknowledged, Stripe's meter 1500, no invoice line; one window of 10 marked late."""
    return _one("1510", 302, "1500", "1500", None, None, charges=0, not_in_stripe=302, late=1, late_q="10")


def test_lateness_on_a_meter_stripe_cannot_price_is_judged_by_its_meter():
    """No line to compare on a meter Stripe cannot price: lateness is judged by the meter alone. 10 late
    calls, meter 1500 = pushed, ours 1510: the 10 are the late ones -> `late_after_finalization`, diff
    0 - (302 - 302) = 0. Kills M55 (the invoice test `pushed - invoiced <= late_acked` applied without a
    line: 1500 - 0 > 0, so the row was `not_pushed`)."""
    r = _engine_meter()
    assert (r["status"], r["amount_diff_minor"], r["explained"]) == ("late_after_finalization", 0, True)



def test_our_lines_set_the_tolerance_when_we_rounded_more_of_them():
    """Our invoice has 3 rated lines that carry an amount, Stripe's 1: the tolerance is 1 x max(1, 3) = 3,
    so 2903 vs our 2900 (+3) is rounding: `within_tolerance`. Kills M88 (our lines left out: tolerance 1)."""
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd", our_total_minor=2900,
                              our_lines=3)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=2903, line_count=1, invoice_ids="in_1", invoice_status="paid")])
    r = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW).row(0, named=True)
    assert (r["status"], r["amount_diff_minor"], r["tolerance_minor"]) == ("within_tolerance", 3, 3)


def test_equal_totals_hiding_a_fee_cent_and_a_usage_cent_are_rounding_not_matched():
    """Usage 1500 calls: Stripe 299 vs our 300 (-1, within_tolerance); the fee: Stripe 4901 vs our 4900
    (+1). Totals 5200 = 5200 (diff 0), but the residual +1 (0 - (-1)) is money on the fee line: within
    its tolerance 1 -> `within_tolerance`, not `matched`. Kills M97 (the residual no longer decides)."""
    usage = pl.DataFrame([_one("1500", 300, "1500", "1500", "1500", 299)])
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd", our_total_minor=5200,
                              our_lines=2, our_unmetered_lines=1)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=5200, line_count=2, unmetered_lines=1, invoice_ids="in_1",
                                invoice_status="paid")])
    inv = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW, usage=usage)
    assert (inv["status"][0], inv["amount_diff_minor"][0]) == ("within_tolerance", 0)
    assert invoice_residuals(usage, inv)["residual_minor"].to_list() == [1]


def test_a_period_stripe_will_not_invoice_shows_no_closing_invoice():
    """c1's October: Stripe voided in_void and no other invoice reaches Nov 1; the period's fee was billed
    in advance on September's invoice in_0 (paid), which is the one Stripe's row names. Stripe will not
    close October: `not_invoiced`, and in_0's status is not October's closing invoice's: NULL, the reason
    says 'closing invoice none'. Kills M83 (only `awaiting_invoice` left the closing invoice out)."""
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd", our_total_minor=4900,
                              our_lines=1)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=4900, line_count=1, invoice_ids="in_0", closing_invoice_id="in_0",
                                invoice_status="paid", amount_paid=4900, amount_remaining=0)])
    open_ = pl.DataFrame([dict(customer_id="c1", period_start=PS, voided_invoice_ids="in_void")])
    r = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW,
                           open_periods=open_).row(0, named=True)
    assert (r["status"], r["invoice_status"]) == ("not_invoiced", None)
    assert r["reason"].startswith("Stripe voided in_void and has no other invoice for this period; our total 4900 vs "
                                  "Stripe 4900 usd (diff 0, tolerance 1); invoice in_0, closing invoice none; ")


def _drift_invoice(storage_stripe, *, fee_stripe=4900, drifted_meters="api_calls", drifted_unmetered=False):
    """c1: api_calls 1500 calls 300 = 300 (its Stripe price drifted, but it charged the same here),
    storage_gb 10 GB ours 100 vs Stripe `storage_stripe`, a fee 4900 vs `fee_stripe`; 3 lines each side,
    1 on no meter. Returns (usage, invoice row)."""
    usage = pl.DataFrame([_one("1500", 300, "1500", "1500", "1500", 300),
                          _one("10", 100, "10", "10", "10", storage_stripe) | dict(meter="storage_gb")])
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd", our_total_minor=5300,
                              our_lines=3, our_unmetered_lines=1)])
    total = 300 + storage_stripe + fee_stripe
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=total, line_count=3, rounded_lines=3, unmetered_lines=1,
                                invoice_ids="in_1", invoice_status="paid", price_drift="price_1 unit_amount",
                                drifted_meters=drifted_meters, drifted_unmetered=drifted_unmetered)])
    inv = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW, usage=usage)
    return usage, inv.row(0, named=True)


def test_a_drifted_meter_that_charged_the_same_leaves_its_neighbours_rounding_alone():
    """api_calls' drifted price charged 300 = 300; storage_gb is 1 cent over (101 vs 100, rounding on an
    undrifted price). Invoice diff +1, within the tolerance 3: `within_tolerance`, since no line a drifted
    price priced differs, and no price note in the reason.
    Kills M108 (`list.len() >= 0`: any drifted meter beside any differing one made it a price difference)."""
    _, r = _drift_invoice(101)
    assert (r["status"], r["amount_diff_minor"], r["tolerance_minor"]) == ("within_tolerance", 1, 3)



def test_a_drifted_fee_that_charged_the_same_is_matched():
    """The fee's own Stripe price drifted (drifted_unmetered), but it charged 4900 = ours; usage matched:
    diff 0, residual 0. A drift that made no difference at this invoice is nothing: `matched`.
    Kills M110 (any row with a drifted fee taken as a price difference: amount_mismatch at equal money)."""
    _, r = _drift_invoice(100, fee_stripe=4900, drifted_meters=None, drifted_unmetered=True)
    assert (r["status"], r["amount_diff_minor"]) == ("matched", 0)


def _draft_row(created):
    """c1's October closed by the draft in_1 (auto_advance on), created at `created`; reconciled Nov 2 12:00."""
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd", our_total_minor=300,
                              our_lines=1)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=300, line_count=1, invoice_ids="in_1", closing_invoice_id="in_1",
                                invoice_status="draft", closing_invoice_created=created)])
    return reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW).row(0, named=True)


def test_a_draft_is_overdue_only_beyond_72_hours():
    """A draft Stripe finalizes within 72 h (1 h grace, up to 72 h while the webhook goes unanswered).
    Created Nov 2 10:00 (2 h before): `pending`, nothing more. Created Oct 30 12:00 (exactly 72 h):
    still within. Created Oct 30 11:00 (73 h): the reason says '... for 73 h since Stripe created in_1:
    Stripe finalizes a draft with auto_advance on within 72 h, so something holds it ...'.
    Kills M103 (`age >= 72 h`: the draft of exactly 72 h was called overdue)."""
    young = _draft_row(dt.datetime(2026, 11, 2, 10, tzinfo=dt.UTC))
    assert (young["status"], young["reason"].startswith("invoice still draft; our total 300")) == ("pending", True)
    assert _draft_row(dt.datetime(2026, 10, 30, 12, tzinfo=dt.UTC))["reason"].startswith("invoice still draft; ")
    old = _draft_row(dt.datetime(2026, 10, 30, 11, tzinfo=dt.UTC))
    assert old["status"] == "pending"
    assert old["reason"].startswith(
        "invoice still draft for 73 h since Stripe created in_1: Stripe finalizes a draft with auto_advance on "
        "within 72 h, so something holds it: look at the invoice and the webhook endpoint in Stripe; our total 300")


def _items_row(not_in_stripe, items, pending):
    """c1's October: ours 5300 of which `not_in_stripe` not priceable in Stripe; Stripe's total 300 +
    `items` (our invoice items on its invoice); `pending` of our items held for the next invoice."""
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                              our_total_minor=300 + not_in_stripe, not_in_stripe_minor=not_in_stripe, our_lines=1)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=300 + items, engine_items_minor=items, line_count=1,
                                invoice_ids="in_1", invoice_status="paid", amount_paid=300 + items,
                                amount_remaining=0)])
    pending_items = pl.DataFrame([dict(customer_id="c1", period_start=PS, engine_items_pending_minor=pending)])
    return reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW,
                              pending_items=pending_items).row(0, named=True)



def test_items_pending_for_a_charge_we_no_longer_rate_are_named():
    """Nothing of ours is unpriceable any more (not_in_stripe 0), yet 500 of our invoice items wait at
    Stripe for the next invoice (a charge since re-rated away): unbilled 0 - 0 - 500 = -500, and the
    reason names both. Kills M99 (the pending items alone did not open the 'of which' part)."""
    r = _items_row(0, 0, 500)
    assert (r["status"], r["unbilled_minor"], r["engine_items_pending_minor"]) == ("matched", -500, 500)
    assert r["reason"].startswith(
        "our total 300 of which 0 not priceable in Stripe (500 in our invoice items pending at Stripe for the next "
        "invoice; -500 unbilled: our invoice items exceed it by 500, run `metering stripe invoice-items --period "
        "2026-10` to credit it) vs Stripe 300 usd (diff 0")


def test_usage_only_stripes_meter_holds_is_a_row():
    """Stripe's meter summary holds 10 calls of c1's api_calls that we never rated or pushed, and no
    invoice line bills them yet: still a row, `extra_in_stripe`, quantity_diff +10.
    Kills M30 (the rows' keys taken from ours and Stripe's lines only: the row was lost)."""
    r = _one(None, None, None, "10", None, None)
    assert (r["status"], r["quantity_diff"], r["explained"]) == ("extra_in_stripe", D(10), False)


def test_a_late_window_never_explains_stripe_losing_what_we_pushed():
    """Ours 1520 calls for 304; 1510 pushed, of which 10 acknowledged after the invoice was finalized,
    and the last 10 marked late (never sent). Stripe's meter holds only 1500: it lost 10 we pushed and it
    acknowledged. Its invoice bills 1500 for 300 (diff -4, which the late calls' value, ceil(304 x 20 /
    1520) = 4, plus tolerance 1 would cover), but lateness explains only Stripe holding exactly what we
    pushed: `not_pushed`, unexplained. Kills M49 (the late rule without `stripe_q == pushed_q`)."""
    r = _one("1520", 304, "1510", "1500", "1500", 300, late=1, late_q="10", acked=1, acked_q="10")
    assert (r["status"], r["amount_diff_minor"], r["explained"]) == ("not_pushed", -4, False)


def test_money_on_a_zero_line_we_never_rated_is_extra_not_rounding():
    """Stripe's line for c1's api_calls bills 0 calls for 1 cent; we rated, pushed and metered nothing.
    That cent is Stripe's alone: `extra_in_stripe` +1, unexplained, not a 1-cent `within_tolerance`.
    Kills M65 (the `~has_ours & stripe_has` rule removed: the cent fell through to rounding)."""
    r = _one(None, None, None, None, "0", 1)
    assert (r["status"], r["amount_diff_minor"], r["explained"]) == ("extra_in_stripe", 1, False)


def test_a_period_stripe_already_closed_is_compared_before_the_deadline():
    """Stripe closed c1's October at Nov 1 00:05 (the period is in no open-period listing); reconciled at
    00:30, before Nov 1 + 1 h grace + 15 min settle. Closed is closed: 400 vs our 300 is +100 beyond the
    tolerance 1 -> `amount_mismatch`, not `pending`.
    Kills M24 (`awaiting_invoice` without `is_open`: every period before its deadline was pending)."""
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd", our_total_minor=300,
                              our_lines=1)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=400, line_count=1, invoice_ids="in_1", invoice_status="open")])
    r = reconcile_invoices(ours, stripe, billing_month=PS, settings=S,
                           reconciled_at=dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.UTC)).row(0, named=True)
    assert (r["status"], r["amount_diff_minor"]) == ("amount_mismatch", 100)


def test_an_explained_late_row_does_not_add_the_shortfall_note():
    """1510 calls rated 302, the last 10 late (pushed 1500); Stripe billed 1500 for 300: diff -2, within
    the late calls' worth ceil(302 x 10 / 1510) = 2 -> `late_after_finalization`, explained. Its reason is
    the lateness, ending with the amounts; the '; late windows cover at most ...' note is for rows lateness
    does not explain. Kills M76 (the note added to explained rows too)."""
    r = _one("1510", 302, "1500", "1500", "1500", 300, late=1, late_q="10")
    assert r["reason"] == ("usage after the invoice was finalized (1 late window(s)); ours 1510, pushed 1500, Stripe "
                           "meter 1500, invoiced 1500; rated 302 vs invoiced 300 (usd minor units, diff -2)")
