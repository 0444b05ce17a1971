"""Gaps found by a hand mutation audit of metering/reconcile/reconcile.py, settings.py, run.py and pulls.py
(mutants27): the rounding slack of Stripe's doubles, the invoicing deadline's boundary and its settle delay,
lateness at equal money and within the tolerance, Stripe holding more than we pushed but not more than we
rated, charges Stripe cannot price, the blocking check's boundary, and the settings a run stores.

Each test names the mutant it kills; every expected figure is worked out by hand in its docstring."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import polars as pl
import pytest
from test_reconcile import NOW, PE, PS, S, _one

from metering.errors import BadInputError
from metering.reconcile.reconcile import reconcile_invoices, reconcile_usage
from metering.reconcile.run import ReconcileResult
from metering.reconcile.settings import ReconcileSettings


def _usage(*, open_periods=None, reconciled_at=NOW, charges=None, not_in_stripe=None, amount=300):
    """c1's October api_calls: 1500 calls rated for `amount`, pushed 1500, Stripe's meter 1500, no invoice line."""
    ours = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, period_end=PE, currency="usd",
                              plan="pro", plan_version="2026-01", our_quantity=D(1500), our_amount_minor=amount,
                              stripe_charges=charges, not_in_stripe_minor=not_in_stripe)],
                        schema_overrides={"stripe_charges": pl.Int64, "not_in_stripe_minor": pl.Int64})
    pushed = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, pushed_quantity=D(1500),
                                unacked_windows=0, late_windows=0)])
    meter = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, period_end=PE,
                               stripe_quantity=D(1500), meter_status="settled")])
    out = reconcile_usage(ours, pushed, meter, None, billing_month=PS, settings=S, reconciled_at=reconciled_at,
                          open_periods=open_periods)
    assert out.height == 1
    return out.row(0, named=True)


OPEN = pl.DataFrame([dict(customer_id="c1", period_start=PS)])


def test_a_summed_double_a_few_roundings_off_is_our_quantity():
    """1,000,000 calls pushed; Stripe's period is a sum of daily doubles, and comes back one step of a double
    above it: 1e6 + 2^-33 = 1000000.000000000116 (to 12 places). Relatively that is 1.16e-16, within the slack
    of 64 roundings (64 x 2^-53 = 7.1e-15), so it is our quantity: quantity_diff 0, matched (200 = 200).
    Kills R01 (DOUBLE_SLACK 0: only a double exactly equal to ours passes; quantity_mismatch)."""
    r = _one("1000000", 200, "1000000", "1000000.000000000116", "1000000", 200)
    assert (r["status"], r["quantity_diff"], r["explained"]) == ("matched", D(0), True)


def test_the_moment_stripe_should_have_invoiced_by_is_already_past_it():
    """October ends Nov 1 00:00; Stripe may invoice it until + 3600 s grace + 900 s settle = Nov 1 01:15.
    Reconciled at exactly 01:15 with no invoice closing October, that moment has come: not_invoiced, its
    reason naming 2026-11-01 01:15 UTC. Kills R08 (`deadline < reconciled_at`: still pending at 01:15)."""
    r = _usage(open_periods=OPEN, reconciled_at=dt.datetime(2026, 11, 1, 1, 15, tzinfo=dt.UTC))
    assert (r["status"], r["explained"]) == ("not_invoiced", False)
    assert r["reason"].startswith("no Stripe invoice closes this period by 2026-11-01 01:15 UTC "
                                  "(period end + invoice grace 3600 s + settle delay 900 s)")


def test_the_settle_delay_extends_the_wait_for_the_invoice():
    """Nov 1 01:10: past the 1 h grace (01:00) but before grace + settle delay (01:15): Stripe may still
    invoice October, so the row is pending, explained. Kills S01 (`invoice_wait` without the settle delay:
    the deadline 01:00 passed, not_invoiced)."""
    r = _usage(open_periods=OPEN, reconciled_at=dt.datetime(2026, 11, 1, 1, 10, tzinfo=dt.UTC))
    assert (r["status"], r["explained"]) == ("pending", True)
    assert ReconcileSettings().invoice_wait == dt.timedelta(seconds=4500)


def test_a_late_window_of_free_calls_is_late_at_equal_money():
    """1500 calls all within the included ones (rated 0); the last window, 100 calls, was marked late (never
    sent): pushed 1400, Stripe metered and invoiced 1400 for 0. Every rule of lateness holds: ours - pushed =
    100 <= late 100, pushed - invoiced = 0, and the money: diff 0 - 0 = 0, not positive, |0| <= worth 0 + tolerance
    1. late_after_finalization, explained. Kills R15 (`diff < 0`: a zero difference not late: not_pushed)."""
    r = _one("1500", 0, "1400", "1400", "1400", 0, late=1, late_q="100")
    assert (r["status"], r["amount_diff_minor"], r["explained"]) == ("late_after_finalization", 0, True)


def test_a_late_shortfall_may_be_a_rounding_beyond_the_late_value():
    """1500 calls rated 300; the last 100 came late (pushed 1400). They are worth ceil(300 x 100 / 1500) = 20.
    Stripe billed its 1400 calls 279 (its own rounding of the line took a cent): diff 279 - 300 = -21, short by
    21 <= 20 + tolerance 1 (one line). late_after_finalization. Kills R16 (the tolerance left out: 21 > 20,
    not_pushed)."""
    r = _one("1500", 300, "1400", "1400", "1400", 279, late=1, late_q="100")
    assert (r["status"], r["amount_diff_minor"], r["tolerance_minor"]) == ("late_after_finalization", -21, 1)
    # one cent more is beyond rounding: not lateness
    r = _one("1500", 300, "1400", "1400", "1400", 278, late=1, late_q="100")
    assert (r["status"], r["explained"]) == ("not_pushed", False)


def test_stripe_above_what_we_pushed_but_not_what_we_rated_is_not_pushed():
    """1500 calls rated 300; one window of 100 is not acknowledged in the ledger (its response was lost), yet
    Stripe holds 50 of it: meter 1450, invoiced 1450 for 290. Stripe holds more than we pushed (1400) but not
    more than we rated, so no double count: the ledger's unacknowledged window is the story, not_pushed with
    diff 290 - 300 = -10. Kills R18 (`stripe_q > ours_q` left out of the double count: extra_in_stripe)."""
    r = _one("1500", 300, "1400", "1450", "1450", 290, unacked=1)
    assert (r["status"], r["amount_diff_minor"], r["explained"]) == ("not_pushed", -10, False)


def test_a_meter_stripe_cannot_price_is_compared_in_a_period_stripe_will_not_invoice():
    """c1's api_calls are billed by the engine alone (stripe_charges 0: 300, all not priceable in Stripe); Stripe
    voided October's invoice. The meter has no invoice line to miss: its usage is compared (1500 = 1500, diff
    0 - (300 - 300) = 0), matched, not not_invoiced (that is for a meter Stripe prices). Kills R28 (`priced`
    left out of the not_invoiced rule)."""
    voided = pl.DataFrame([dict(customer_id="c1", period_start=PS, voided_invoice_ids="in_v")])
    r = _usage(open_periods=voided, charges=0, not_in_stripe=300)
    assert (r["status"], r["amount_diff_minor"], r["explained"]) == ("matched", 0, True)


def test_the_blocking_check_passes_at_its_threshold():
    """max_unexplained_minor 75: one amount_mismatch of 75 (Stripe's price 375 vs our 300) is exactly at it,
    and the check passes; 76 fails it. Kills U01 (`v < max`: 75 failed)."""
    s75 = ReconcileSettings(max_unexplained_minor=75)
    at = pl.DataFrame([_one("1500", 300, "1500", "1500", "1500", 375)])
    over = pl.DataFrame([_one("1500", 300, "1500", "1500", "1500", 376)])
    empty = reconcile_invoices(None, None, billing_month=PS, settings=s75, reconciled_at=NOW)
    assert ReconcileResult(PS, at, empty, s75).unexplained_minor() == {"usd": 75}
    assert ReconcileResult(PS, at, empty, s75).check_passed()
    assert not ReconcileResult(PS, over, empty, s75).check_passed()


def test_the_stored_settings_keep_the_invoice_grace():
    """A run with grace 60 s, settle 30 s, usd tolerance 2, threshold 5 stores them all; read back they judge
    alike: the invoice wait is 90 s. Kills S05 (from_record without invoice_grace_seconds: 3600 + 30)."""
    s = ReconcileSettings(tolerance_minor={"usd": 2}, settle_seconds=30, invoice_grace_seconds=60,
                          max_unexplained_minor=5)
    back = ReconcileSettings.from_record(s.to_record())
    assert back == s and back.invoice_wait == dt.timedelta(seconds=90)


def test_a_currencys_tolerance_applies_whatever_the_case_of_its_code():
    """The plan rates in 'JPY', Stripe's lines say 'jpy' (one currency, compared); the tolerance is set as
    jpy=3 per line. 22500 rated, 22502 invoiced: diff 2 <= 3 x 1 line, within_tolerance. Kills R03 (the
    currency compared without lower-casing: the default 1 per line, amount_mismatch)."""
    s = ReconcileSettings(tolerance_minor={"jpy": 3})
    r = _one("1500", 22500, "1500", "1500", "1500", 22502, currency="JPY", stripe_currency="jpy", settings_=s)
    assert (r["status"], r["amount_diff_minor"], r["tolerance_minor"]) == ("within_tolerance", 2, 3)


def test_only_stripes_lines_with_an_amount_round():
    """Stripe billed c1's 1500 calls on 3 lines, two of them zero-amount (the free tier), one for 302; we rated
    one line, 300. Lines that round: max(1, 1) = 1, so the tolerance is 1 and the diff 2 is an amount_mismatch.
    Kills R26 (Stripe's line_count, 3, taken for the lines that round: tolerance 3, within_tolerance)."""
    ours = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, period_end=PE, currency="usd",
                              plan="pro", plan_version="2026-01", our_quantity=D(1500), our_amount_minor=300,
                              our_rounded_lines=1)])
    pushed = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, pushed_quantity=D(1500),
                                unacked_windows=0, late_windows=0)])
    meter = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, period_end=PE,
                               stripe_quantity=D(1500), meter_status="settled")])
    lines = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, period_end=PE, currency="usd",
                               invoiced_quantity=D(1500), stripe_amount_minor=302, line_count=3, rounded_lines=1,
                               invoice_ids="in_1", finalized=True)])
    r = reconcile_usage(ours, pushed, meter, lines, billing_month=PS, settings=S, reconciled_at=NOW).row(0, named=True)
    assert (r["status"], r["amount_diff_minor"], r["tolerance_minor"]) == ("amount_mismatch", 2, 1)


def _invoice_pair(*, ours_total, stripe_total, **stripe_extra):
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                              our_total_minor=ours_total, our_lines=2, our_unmetered_lines=1)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=stripe_total, line_count=2, rounded_lines=2, unmetered_lines=1,
                                invoice_ids="in_0,in_1", closing_invoice_id="in_1", invoice_status="paid",
                                amount_due=stripe_total, amount_paid=stripe_total, amount_remaining=0,
                                **stripe_extra)])
    return ours, stripe


def test_a_fee_short_offset_by_a_usage_overcharge_names_both():
    """Stripe charged c1's 1500 calls 400 where we rate 300 (usage row: amount_mismatch, +100) and the fee 4800
    where we rate 4900: both totals 5200, diff 0. The residual 0 - 100 = -100 exceeds the fee line's tolerance
    1: amount_mismatch, and the reason names both parts of opposite signs: '; -100 on no meter row (flat fees,
    other lines), offset by 100 on the meter rows'. Counted: 100 (usage) + 100 (residual) = 200. Kills R45
    (the signs' test reversed: '-100 of it on no meter row') and R47 (a zero diff taken for nothing to say:
    no note)."""
    usage = pl.DataFrame([_one("1500", 300, "1500", "1500", "1500", 400)])
    ours, stripe = _invoice_pair(ours_total=5200, stripe_total=5200)
    inv = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW, usage=usage)
    r = inv.row(0, named=True)
    assert (r["status"], r["amount_diff_minor"], r["residual_tolerance_minor"]) == ("amount_mismatch", 0, 1)
    assert r["reason"].endswith("; -100 on no meter row (flat fees, other lines), offset by 100 on the meter rows")
    assert ReconcileResult(PS, usage, inv, S).unexplained_minor() == {"usd": 200}


def test_a_coupon_on_a_period_stripe_will_not_close_still_counts():
    """c1's October fee 4900 was billed in advance on in_0 with a 100 coupon (in_0 totals 100 less than its
    lines); October's own invoice in_1 was voided, so Stripe will not close October: not_invoiced. in_0 is
    final, so its coupon stays on the row (stripe_adjustments_minor -100) and is counted: diff 4900 - 4900 = 0,
    residual 0, unexplained 0 + |-100| = 100. Kills R31 (the adjustment dropped for every unclosed period, not
    only one Stripe may still close: -100 lost, nothing counted)."""
    usage = reconcile_usage(None, None, None, None, billing_month=PS, settings=S, reconciled_at=NOW)
    ours, stripe = _invoice_pair(ours_total=4900, stripe_total=4900, adjustments_minor=-100,
                                 adjusted_invoice_ids="in_0")
    voided = pl.DataFrame([dict(customer_id="c1", period_start=PS, voided_invoice_ids="in_1")])
    inv = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW, open_periods=voided,
                             usage=usage)
    r = inv.row(0, named=True)
    assert (r["status"], r["stripe_adjustments_minor"]) == ("not_invoiced", -100)
    assert ReconcileResult(PS, usage, inv, S).unexplained_minor() == {"usd": 100}


def test_a_period_in_another_currency_names_what_is_paid_of_it():
    """We rated c1's October 4900 usd; Stripe billed it in eur, 4500, all of it paid on in_1, in one currency
    (no per-currency amounts). The reason names it: 'Stripe billed this period in eur: 4500 minor units (invoice
    in_0,in_1 paid, paid 4500), we rated 4900 usd minor units'. Kills R48 (the paid part named only when the
    lines are in several currencies)."""
    ours, stripe = _invoice_pair(ours_total=4900, stripe_total=4500)
    stripe = stripe.with_columns(currency=pl.lit("eur"))
    r = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW).row(0, named=True)
    assert r["status"] == "currency_mismatch"
    assert r["reason"].startswith("Stripe billed this period in eur: 4500 minor units (invoice in_0,in_1 paid, "
                                  "paid 4500), we rated 4900 usd minor units")


def test_charges_only_the_engine_bills_are_not_missing_at_stripe():
    """c1's October is one charge Stripe cannot price, a minimum of 4000 (not_in_stripe 4000), and Stripe has no
    invoice row for c1: of ours, 4000 - 4000 = 0 is Stripe's to bill, so nothing is missing there. The 4000 is
    unbilled (named, not a difference): diff (0 - 0) - (4000 - 4000) = 0, matched. Kills R37 (`missing_in_stripe`
    on our whole total: the engine's own charge called missing in Stripe)."""
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                              our_total_minor=4000, not_in_stripe_minor=4000, our_lines=0)])
    r = reconcile_invoices(ours, None, billing_month=PS, settings=S, reconciled_at=NOW).row(0, named=True)
    assert (r["status"], r["amount_diff_minor"], r["unbilled_minor"]) == ("matched", 0, 4000)


def test_a_draft_older_than_stripe_lets_one_stay_says_so():
    """c1's October closes on the draft in_1, created Oct 30 00:00; reconciled Nov 2 12:00, 84 h later, beyond the
    72 h within which Stripe finalizes a draft with auto_advance on: pending, and the reason says 'invoice still
    draft for 84 h since Stripe created in_1'. Kills R43 (the age test reversed: no such words)."""
    ours, stripe = _invoice_pair(ours_total=4900, stripe_total=4900, closing_invoice_created=dt.datetime(
        2026, 10, 30, tzinfo=dt.UTC))
    stripe = stripe.with_columns(invoice_status=pl.lit("draft"))
    r = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW).row(0, named=True)
    assert r["status"] == "pending"
    assert r["reason"].startswith("invoice still draft for 84 h since Stripe created in_1: Stripe finalizes a draft "
                                  "with auto_advance on within 72 h")


def test_a_row_whose_lines_record_no_priced_units_values_lateness_over_the_whole_quantity():
    """1500 calls rated 300, but the rated lines record no priced units (priced_quantity 0: `_with_late_value`
    then takes the whole quantity). The last 100 came late: worth ceil(300 x 100 / 1500) = 20; Stripe billed 1400
    for 280, diff -20 <= 20 + 1: late_after_finalization. Kills R07 (`priced_quantity >= 0`: a whole of 0 values
    the late calls at 0, and the row became not_pushed)."""
    r = _one("1500", 300, "1400", "1400", "1400", 280, late=1, late_q="100", priced_q="0")
    assert (r["status"], r["amount_diff_minor"], r["explained"]) == ("late_after_finalization", -20, True)


def test_stripe_invoicing_a_later_period_ends_the_wait_at_once():
    """Nov 1 00:30, before October's deadline (01:15): no invoice closes October, but Stripe already invoiced
    c1's next period on in_nov. Stripe has moved on and will not invoice October: not_invoiced, its reason naming
    in_nov. Kills R09 (`moved_on` left out of `overdue`: pending until 01:15)."""
    later = pl.DataFrame([dict(customer_id="c1", period_start=PS, later_invoice_ids="in_nov")])
    r = _usage(open_periods=later, reconciled_at=dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.UTC))
    assert (r["status"], r["explained"]) == ("not_invoiced", False)
    assert r["reason"].startswith("Stripe invoiced a later period (in_nov) but no invoice closes this one")


def test_a_subscription_ended_before_the_periods_end_ends_the_wait_at_once():
    """Nov 1 00:30, before the deadline: no invoice closes October and c1's only subscription sub_1 ended before
    October's end. Stripe will not invoice it: not_invoiced, naming sub_1. Kills R10 (`ended` left out of
    `overdue`: pending)."""
    ended = pl.DataFrame([dict(customer_id="c1", period_start=PS, ended_subscription_ids="sub_1")])
    r = _usage(open_periods=ended, reconciled_at=dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.UTC))
    assert (r["status"], r["explained"]) == ("not_invoiced", False)
    assert r["reason"].startswith("the customer's Stripe subscription(s) sub_1 ended before the period's end")


def test_a_customer_on_a_test_clock_is_not_judged_by_the_wall_clock():
    """Nov 2 12:00 on the wall clock, long past October's deadline (Nov 1 01:15), but c1 is on a Stripe test clock
    that may stand weeks behind: with nothing voided, held, moved on or ended, Stripe may still invoice October:
    pending. A customer on no clock, same numbers: not_invoiced. Kills R11 (the test-clock test inverted)."""
    on_clock = pl.DataFrame([dict(customer_id="c1", period_start=PS, on_test_clock=True)])
    assert _usage(open_periods=on_clock)["status"] == "pending"
    off_clock = pl.DataFrame([dict(customer_id="c1", period_start=PS, on_test_clock=False)])
    assert _usage(open_periods=off_clock)["status"] == "not_invoiced"


def test_a_line_of_the_shape_before_basil_keeps_its_price():
    """Before Stripe's basil API version a line named its price as `price: {id: ...}`, with no `pricing`; the
    pull reads the price (and so the line's meter) from either shape, the newer first. Kills P13 (the old shape
    dropped: the line's price None, its meter unknown)."""
    from metering.reconcile.pulls import _line_price

    assert _line_price({"id": "il_1", "price": {"id": "price_old"}}) == "price_old"
    assert _line_price({"id": "il_2", "pricing": {"price_details": {"price": "price_new"}},
                        "price": {"id": "price_old"}}) == "price_new"
    assert _line_price({"id": "il_3", "pricing": {"price_details": {"price": {"id": "price_x"}}}}) == "price_x"


def test_a_meter_stripe_cannot_price_is_late_only_when_stripes_meter_is_short():
    """c1's api_calls are billed by the engine alone (stripe_charges 0, 300 not priceable in Stripe): no invoice
    line to expect, so lateness asks whether Stripe's meter is short of ours. A window marked late that adds
    nothing (late 0): ours 1500 = pushed = Stripe's meter, nothing short, so nothing late: matched (diff
    0 - (300 - 300) = 0). Kills R17 (the invoiced quantity asked on every meter: 0 < 1500, called late)."""
    r = _one("1500", 300, "1500", "1500", late=1, late_q="0", charges=0, not_in_stripe=300)
    assert (r["status"], r["amount_diff_minor"]) == ("matched", 0)


def test_a_tolerance_without_minor_units_is_refused(monkeypatch):
    """`usd=` names no minor units: refused as not CURRENCY=MINOR_UNITS (a BadInputError naming it), never a
    bare ValueError. Kills S06 (`{0,15}` digits: int('') raised ValueError)."""
    monkeypatch.setenv("METERING_RECON_TOLERANCE", "usd=")
    with pytest.raises(BadInputError, match=r"'usd=' is not CURRENCY=MINOR_UNITS"):
        ReconcileSettings.from_env()


def test_a_negative_pull_rate_is_refused(monkeypatch):
    """`METERING_STRIPE_PULL_RATE=-1` is no rate (0 means unlimited, below it means nothing): refused. Kills S03
    (`value < 0` dropped: -1 accepted as a rate)."""
    monkeypatch.setenv("METERING_STRIPE_PULL_RATE", "-1")
    with pytest.raises(BadInputError, match=r"METERING_STRIPE_PULL_RATE: '-1' is not a rate"):
        ReconcileSettings.from_env()


def test_a_last_meters_period_row_keeps_the_summary_stripe_gave(stripe_sandbox, isolated_env):
    """The sandbox October (test_pulls_sandbox): seats is a `last` meter, read as one ungrouped summary for Oct 1 -
    Nov 1, Stripe's own period value 7 (5 on Oct 3, then 7 on Oct 5). Its period row keeps that summary's id, the
    one Stripe lists for the same customer, meter and bounds. Kills P10 (the id dropped: NULL)."""
    from test_pulls_sandbox import MONTH, _periods, _stripe_month, _ts

    from metering import warehouse
    from metering.reconcile.pulls import pull_stripe_state

    client = stripe_sandbox.client()
    cus, _ = _stripe_month(client)
    with warehouse.open_warehouse() as con:
        _periods(con)
        result = pull_stripe_state(con, client, MONTH, meters=["api_calls", "seats"],
                                   settings=ReconcileSettings(settle_seconds=0, pull_rate=0), now=NOW)
    row = result.summaries.filter(meter="seats", grain="period").row(0, named=True)
    listed = list(client.v1.billing.meters.event_summaries.list(row["stripe_meter_id"], {
        "customer": cus, "start_time": _ts("2026-10-01T00:00:00"), "end_time": _ts("2026-11-01T00:00:00")}))
    assert len(listed) == 1
    assert (row["aggregated_value"], row["summary_id"]) == (D(7), listed[0].id)


def test_a_negative_charge_stripe_cannot_price_is_named_in_the_reason():
    """c1's api_calls rate 250: 300 for the calls, which Stripe prices, and a credit of -50 on a charge Stripe
    cannot price (not_in_stripe -50). Stripe billed its 300: diff 300 - (250 - (-50)) = 0, matched; the reason
    says where our 250 stands: 'rated 250 of which -50 not priceable in Stripe vs invoiced 300'. Kills R50 (the
    part named only when positive: a credit hidden from the reason)."""
    r = _one("1500", 250, "1500", "1500", "1500", 300, not_in_stripe=-50)
    assert (r["status"], r["amount_diff_minor"]) == ("matched", 0)
    assert "rated 250 of which -50 not priceable in Stripe vs invoiced 300 (usd minor units, diff 0)" in r["reason"]


def test_a_fractional_quantity_is_pulled_from_quantity_decimal_not_the_truncated_quantity(
        stripe_sandbox, isolated_env):
    """Since basil a line's `quantity` is truncated; `quantity_decimal` is exact (reference/stripe-facts.md).
    cus_1's October storage: 2.5 + 0.25 = 2.75 GB-months on a metered price, invoiced on Nov 1 at 1.00
    each (275 cents). The pulled line's quantity is 2.75, not 2 (reconciliation would then call a matched
    month a quantity mismatch of 0.75). Kills P07 (`quantity` preferred to `quantity_decimal`)."""
    from test_pulls_sandbox import _ts

    from metering import warehouse
    from metering.reconcile.pulls import pull_invoices_into_warehouse

    client = stripe_sandbox.client()
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts("2026-10-01T00:00:00")})
    customer = client.v1.customers.create({"name": "Acme", "metadata": {"customer_id": "cus_1"},
                                           "test_clock": clock.id})
    meter = client.v1.billing.meters.create({
        "display_name": "storage", "event_name": "metering_storage", "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"}})
    product = client.v1.products.create({"name": "storage"})
    price = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 100,
                                     "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}})
    client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}],
                                    "billing_cycle_anchor": _ts("2026-11-01T00:00:00")})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-10-06T00:00:00")})
    for value, when in (("2.5", "2026-10-03T10:00:00"), ("0.25", "2026-10-04T10:00:00")):
        client.v1.billing.meter_events.create({"event_name": "metering_storage", "timestamp": _ts(when),
                                               "payload": {"stripe_customer_id": customer.id, "value": value},
                                               "identifier": f"storage-{when}"})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-11-01T02:00:00")})
    with warehouse.open_warehouse() as con:
        result = pull_invoices_into_warehouse(con, client, PS, settings=ReconcileSettings(settle_seconds=0, pull_rate=0),
                                              now=NOW)
    # the cycle invoice's line (the subscription's first invoice, for nothing used yet, has 0.00)
    storage = result.lines.filter((pl.col("meter") == "storage") & (pl.col("amount") > 0))
    assert storage.select("customer_id", "quantity_decimal", "amount").rows() == [("cus_1", D("2.75"), 275)]
