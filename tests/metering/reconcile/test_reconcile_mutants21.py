"""Gaps found by a hand mutation audit of metering/reconcile/reconcile.py and inputs.py (mutants21).

Each test names the mutant it kills; every expected figure is worked out by hand in its comment."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import polars as pl
import pytest
from recon_scenario import (
    MINIMUM_TRUE_UP,
    MONTH,
    add_minimum_customer,
    insert_windows,
    invoice_total_is_its_lines,
    known_only_from_webhooks,
    ledger_item,
    pulled_item_line,
    write_scenario,
)
from test_reconcile import NOW, PE, PS, S, _one
from test_reconcile_warehouse import _without_cus_c_invoice

from metering import warehouse
from metering.reconcile import inputs
from metering.reconcile.reconcile import reconcile_invoices, reconcile_usage, unexplained_by_currency
from metering.rules.meters import load_meters


def _usage_row(*, our_q, our_amt, stripe_q, inv_q=None, inv_amt=None, open_periods=None, reconciled_at=NOW):
    """One api_calls row of c1 for October, pushed in full (pushed = ours), with the period's open state."""
    ours = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, period_end=PE, currency="usd",
                              plan="pro", plan_version="2026-01", our_quantity=D(our_q), our_amount_minor=our_amt)])
    pushed = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, pushed_quantity=D(our_q),
                                unacked_windows=0, late_windows=0)])
    meter = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, period_end=PE,
                               stripe_quantity=D(stripe_q), meter_status="settled")])
    lines = None if inv_q is None else pl.DataFrame([dict(
        customer_id="c1", meter="api_calls", period_start=PS, period_end=PE, currency="usd",
        invoiced_quantity=D(inv_q), stripe_amount_minor=inv_amt, line_count=1, invoice_ids="in_1", finalized=True)])
    out = reconcile_usage(ours, pushed, meter, lines, billing_month=PS, settings=S, reconciled_at=reconciled_at,
                          open_periods=open_periods)
    assert out.height == 1
    return out.row(0, named=True)


def test_a_late_window_that_adds_nothing_leaves_an_equal_row_matched():
    """A window marked late whose value adds nothing (late_quantity 0) beside a row where ours = pushed =
    Stripe's meter = invoiced = 1500 and 300 = 300: nothing is short, so `matched`, not late.
    Kills: `inv_q <= ours_q` for `inv_q < ours_q` in the late rule (an equal row became late)."""
    r = _one("1500", 300, "1500", "1500", "1500", 300, late=1, late_q="0")
    assert (r["status"], r["amount_diff_minor"]) == ("matched", 0)


def test_windows_acknowledged_late_are_not_named_when_the_invoice_bills_all_we_pushed():
    """One window (10 calls) acknowledged after finalization, but the finalized invoice bills all 1500
    pushed, at Stripe's own price: 375 vs our 300, diff +75 > tolerance 1 -> amount_mismatch. The late
    window explains nothing here and the reason must not name it. Kills: `pushed_q >= inv_q` for
    `pushed_q > inv_q` in `missed` (the reason then said "late windows cover at most 10 ...")."""
    r = _one("1500", 300, "1500", "1500", "1500", 375, acked=1, acked_q="10")
    assert (r["status"], r["amount_diff_minor"]) == ("amount_mismatch", 75)
    assert r["reason"].endswith("beyond tolerance 1")
    assert "late window" not in r["reason"]


def test_an_unused_meter_stripe_has_nothing_for_is_matched_not_missing():
    """A meter of the plan with no usage: we rated 0 calls for 0, pushed 0, Stripe's meter 0 and a zero
    line (0 calls, 0). Nothing of ours is missing in Stripe: `matched`, diff 0. Kills: `has_ours`
    without `our_quantity != 0` (the row became `missing_in_stripe`)."""
    r = _one("0", 0, "0", "0", "0", 0)
    assert (r["status"], r["amount_diff_minor"]) == ("matched", 0)


OPEN = pl.DataFrame([dict(customer_id="c1", period_start=PS)])   # no Stripe invoice reaches Nov 1


def test_a_line_in_a_period_stripe_has_not_closed_is_compared_not_pending():
    """Oct 20: no invoice closes October yet, but Stripe already has a line for the meter (1000 calls for
    200, e.g. an invoice cut mid-period). Pending is for a period Stripe has no line for; this one is
    compared: ours = pushed = meter = 1500, invoiced 1000 -> `quantity_mismatch`, diff 200 - 300 = -100.
    Kills: `awaiting_invoice` without `& no_line` (the row was `pending`, explained)."""
    r = _usage_row(our_q="1500", our_amt=300, stripe_q="1500", inv_q="1000", inv_amt=200, open_periods=OPEN,
                   reconciled_at=dt.datetime(2026, 10, 20, tzinfo=dt.UTC))
    assert (r["status"], r["amount_diff_minor"], r["explained"]) == ("quantity_mismatch", -100, False)


def test_a_window_acknowledged_at_the_moment_of_finalization_was_on_the_invoice(rules_dir):
    """October's invoice was finalized at Nov 1 01:00. Window Oct 1 (1000 calls) was acknowledged on Oct 2,
    window Oct 2 (500) at Nov 1 01:00 exactly: not *after* finalization, so Stripe's meter held both,
    1500, when it finalized: late_acked_windows 0, late_acked_quantity 1500 - 1500 = 0. Kills:
    `updated_at < finalized_at` for `<=` in `acked_then_value` (1 window, 500 calls, called late)."""
    final = dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        insert_windows(con, "cus_a", "api_calls", dt.timedelta(days=1), [
            (dt.datetime(2026, 10, 1, tzinfo=dt.UTC), 1000, "acknowledged", dt.datetime(2026, 10, 2, tzinfo=dt.UTC)),
            (dt.datetime(2026, 10, 2, tzinfo=dt.UTC), 500, "acknowledged", final)])
        meters = load_meters(rules_dir)
        periods = pl.DataFrame([dict(customer_id="cus_a", period_start=PS, period_end=PE)])
        finalized = pl.DataFrame([dict(customer_id="cus_a", meter="api_calls", period_start=PS, finalized=True,
                                       finalized_at=final)])
        pushed = inputs.load_pushed(con, PS, {"api_calls": meters["api_calls"]}, periods, finalized)
    r = pushed.row(0, named=True)
    assert (r["pushed_quantity"], r["late_acked_windows"], r["late_acked_quantity"]) == (D(1500), 0, D(0))


def test_the_plan_of_a_period_split_by_a_plan_change_is_the_later_segments(rules_dir):
    """cus_a's October api_calls rated under pro 2026-01 from Oct 1 (100) and, after an upgrade, under
    team 2026-06 from Oct 15 (40): one row of 100 + 40 = 140, plan and version those in force at the
    period's end (team, 2026-06), both versions named, 2 segments. Kills: `arg_min(plan, segment_start)`
    (the row's plan was pro while its version was team's 2026-06)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO rated_usage SELECT * REPLACE ('team' AS plan, '2026-06' AS plan_version,
                       DATE '2026-10-15' AS segment_start, 40 AS amount_minor)
                       FROM rated_usage WHERE customer_id = 'cus_a' AND charge = 'api calls'""")
        ours = inputs.load_ours(con, MONTH, load_meters(rules_dir))
    r = ours.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (r["our_amount_minor"], r["plan"], r["plan_version"], r["rule_versions"], r["segments"]) == (
        140, "team", "2026-06", "pro 2026-01 + team 2026-06", 2)


def test_stripes_double_is_read_as_what_we_pushed_before_what_we_rated():
    """At the largest quantity the contract takes, 10^15 calls rated, one call's window failed: pushed
    999,999,999,999,999, which Stripe's meter (a double, exact at this size) holds. It lies within the
    double slack of both (1 <= 10^15 x 64 x 2^-53, about 7), and is what we pushed: quantity_diff =
    999,999,999,999,999 - 10^15 = -1, `not_pushed`. Kills: trying ours before pushed in `stripe_q`
    (Stripe's meter read as ours, quantity_diff 0: the missing call hidden)."""
    r = _one("1000000000000000", 0, "999999999999999", "999999999999999", None, None, unacked=1)
    assert (r["status"], r["quantity_diff"]) == ("not_pushed", D(-1))


def test_a_zero_stripe_invoice_for_a_customer_we_never_rated_is_matched():
    """Stripe closed October for c9 with zero-amount lines only (a plan with no usage): total 0, and we
    rated nothing for c9. Nothing is extra in Stripe: diff 0 - 0 = 0, `matched`. Kills: `extra_in_stripe`
    whenever ours is missing, without `stripe_total != 0`."""
    stripe = pl.DataFrame([dict(customer_id="c9", period_start=PS, period_end=PE, currency="usd", stripe_total_minor=0,
                                line_count=2, rounded_lines=0, invoice_ids="in_9", invoice_status="paid",
                                amount_due=0, amount_paid=0, amount_remaining=0)])
    r = reconcile_invoices(None, stripe, billing_month=PS, settings=S, reconciled_at=NOW).row(0, named=True)
    assert (r["status"], r["amount_diff_minor"]) == ("matched", 0)


def test_a_period_of_unknown_end_that_no_invoice_closes_is_not_invoiced():
    """c1's October fee (4900, one line) with no period end known on either side, and no invoice closes
    the period: nothing proves Stripe still has time, so the row fails closed as `not_invoiced`, its
    deadline shown as '?'. Kills: `fill_null(False)` for `fill_null(True)` on the deadline test (the row
    was `pending`, explained for ever)."""
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=None, currency="usd",
                              our_total_minor=4900, our_lines=1)], schema_overrides={"period_end": pl.Date})
    r = reconcile_invoices(ours, None, billing_month=PS, settings=S, reconciled_at=NOW,
                           open_periods=OPEN).row(0, named=True)
    assert r["status"] == "not_invoiced"
    assert r["reason"].startswith("no Stripe invoice closes this period by ? (period end + invoice grace 3600 s + "
                                  "settle delay 900 s)")


def test_a_zero_amount_charge_on_a_meter_adds_no_rounding_line(rules_dir):
    """cus_a's api_calls: the scenario's charge 'api calls' (100) plus a second charge on the same meter
    that rated 0 ('api calls included'). Both are Stripe's to price (stripe_charges 2), but only the one
    with an amount was rounded: our_rounded_lines 1, so the row's tolerance stays 1 cent, not 2. Kills:
    counting zero-amount charges in `our_rounded_lines`."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO rated_usage SELECT * REPLACE ('api calls included' AS charge, 0 AS amount_minor)
                       FROM rated_usage WHERE customer_id = 'cus_a' AND charge = 'api calls'""")
        ours = inputs.load_ours(con, MONTH, load_meters(rules_dir))
    r = ours.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (r["our_amount_minor"], r["stripe_charges"], r["our_rounded_lines"]) == (100, 2, 1)


def test_a_held_draft_makes_the_period_not_invoiced_before_the_deadline():
    """Nov 1 00:30, within the grace (deadline Nov 1 01:15): October's only invoice reaching its end is
    in_7, a draft Stripe will not finalize (auto_advance false). Stripe will bill nothing until a person
    acts, so the row is `not_invoiced` at once, not `pending`, and its reason names in_7. Kills: `held`
    left out of `overdue` (the row waited as pending for the clock)."""
    held = pl.DataFrame([dict(customer_id="c1", period_start=PS, held_invoice_ids="in_7")])
    r = _usage_row(our_q="1500", our_amt=300, stripe_q="1500", open_periods=held,
                   reconciled_at=dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.UTC))
    assert (r["status"], r["explained"]) == ("not_invoiced", False)
    assert r["reason"].startswith("Stripe holds in_7 as a draft it will not finalize")


def test_a_line_for_a_meter_stripe_cannot_price_is_still_compared():
    """Every charge of the meter is the engine's (stripe_charges 0, all 412 of ours), yet Stripe's invoice
    has a line on the meter: 1000 of the 2,500,000 units, for 0. A line there is compared: invoiced 1000
    != ours 2,500,000 -> `quantity_mismatch`, diff 0 - (412 - 412) = 0. Kills: `priced` without `line_count
    is not null` (the line ignored: `matched`)."""
    r = _one("2500000", 412, "2500000", "2500000", "1000", 0, charges=0, not_in_stripe=412)
    assert (r["status"], r["amount_diff_minor"]) == ("quantity_mismatch", 0)


def test_a_late_window_is_not_also_counted_as_unacknowledged(rules_dir):
    """October's api_calls: Oct 1 acknowledged (1000), Oct 2 failed (500), Oct 3 marked late (20, never
    sent). load_pushed: pushed 1000, unacked_windows 1 (the failed one), late_windows 1, late_quantity
    20; reconciled, the not_pushed reason counts 1 + 1 = 2 windows, not 3. Kills: `NOT IN ('acknowledged')`
    for `NOT IN ('acknowledged', 'late')` (the late window counted twice)."""
    day = dt.timedelta(days=1)
    with warehouse.open_warehouse() as con:
        insert_windows(con, "cus_a", "api_calls", day, [
            (dt.datetime(2026, 10, 1, tzinfo=dt.UTC), 1000, "acknowledged", dt.datetime(2026, 10, 2, tzinfo=dt.UTC)),
            (dt.datetime(2026, 10, 2, tzinfo=dt.UTC), 500, "failed", dt.datetime(2026, 10, 3, tzinfo=dt.UTC)),
            (dt.datetime(2026, 10, 3, tzinfo=dt.UTC), 20, "late", dt.datetime(2026, 11, 2, tzinfo=dt.UTC))])
        meters = load_meters(rules_dir)
        periods = pl.DataFrame([dict(customer_id="cus_a", period_start=PS, period_end=PE)])
        pushed = inputs.load_pushed(con, PS, {"api_calls": meters["api_calls"]}, periods)
    p = pushed.row(0, named=True)
    assert (p["pushed_quantity"], p["unacked_windows"], p["late_windows"], p["late_quantity"]) == (D(1000), 1, 1, D(20))
    r = reconcile_usage(pl.DataFrame([dict(customer_id="cus_a", meter="api_calls", period_start=PS, period_end=PE,
                                           currency="usd", our_quantity=D(1520), our_amount_minor=304)]),
                        pushed, None, None, billing_month=PS, settings=S, reconciled_at=NOW).row(0, named=True)
    assert r["status"] == "not_pushed"
    assert r["reason"].startswith("2 window(s) not acknowledged by Stripe")


CUS_C_OCTOBER = pl.DataFrame([dict(customer_id="cus_c", period_start=PS, period_end=PE)])
CUS_A_OCTOBER = pl.DataFrame([dict(customer_id="cus_a", period_start=PS, period_end=PE)])


def test_an_invoice_starting_at_the_periods_end_is_a_later_period():
    """cus_c's October invoice never came, but Stripe invoiced its next period, Nov 1 - Dec 1
    (in_cus_c_nov): it starts at October's end, so Stripe has moved past October:
    later_invoice_ids = 'in_cus_c_nov' (and in_cus_c_nov closes nothing of October: it starts at its
    end). Kills: `period_start > period_end` for `>=` (a next period starting exactly at the end was
    missed, and October waited as pending)."""
    with warehouse.open_warehouse() as con:
        _without_cus_c_invoice(con)
        con.execute("INSERT INTO stripe_invoices_api SELECT * REPLACE ('in_cus_c_nov' AS invoice_id, "
                    "'cus_c' AS customer_id, TIMESTAMPTZ '2026-11-01 00:00:00+00' AS period_start, "
                    "TIMESTAMPTZ '2026-12-01 00:00:00+00' AS period_end) "
                    "FROM stripe_invoices_api WHERE invoice_id = 'in_cus_a'")
        open_ = inputs.load_open_periods(con, CUS_C_OCTOBER)
    assert open_.select("customer_id", "later_invoice_ids").rows() == [("cus_c", "in_cus_c_nov")]


def test_a_subscription_ended_at_the_periods_end_has_ended_before_it_closes():
    """cus_c's only subscription was cancelled at Nov 1 00:00, October's end, and no invoice closes
    October: Stripe will not invoice it any more, so ended_subscription_ids = 'sub_c1' (ended at or
    before the end). Kills: `ended_at < period_end` for `<=`."""
    with warehouse.open_warehouse() as con:
        _without_cus_c_invoice(con)
        con.execute("INSERT INTO stripe_subscriptions (subscription_id, customer, customer_id, status, ended_at) "
                    "VALUES ('sub_c1', 'cus_c', 'cus_c', 'canceled', TIMESTAMPTZ '2026-11-01 00:00:00+00')")
        open_ = inputs.load_open_periods(con, CUS_C_OCTOBER)
    assert open_.select("customer_id", "ended_subscription_ids").rows() == [("cus_c", "sub_c1")]


def test_a_zero_line_on_a_meter_we_do_not_rate_is_still_a_row():
    """Stripe's invoice in_1 has a line for c1's storage_gb (0 GB, 0), a meter c1's plan does not rate:
    nothing rated, pushed or metered, but invoiced, so it is a row (the line is shown), `matched` at
    0 - 0 = 0. Kills: the "nothing anywhere" filter without `line_count is null` (the row vanished)."""
    lines = pl.DataFrame([dict(customer_id="c1", meter="storage_gb", period_start=PS, period_end=PE, currency="usd",
                               invoiced_quantity=D(0), stripe_amount_minor=0, line_count=1, invoice_ids="in_1",
                               finalized=True)])
    out = reconcile_usage(None, None, None, lines, billing_month=PS, settings=S, reconciled_at=NOW)
    assert out.select("meter", "status", "amount_diff_minor", "invoice_ids").rows() == [
        ("storage_gb", "matched", 0, "in_1")]


FINALIZED_A = dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(("status", "finalized_at", "finalized", "latest"), [
    # in_cus_a2 a draft: not every line's invoice is final; the latest finalization is in_cus_a's
    ("draft", None, False, FINALIZED_A),
    # in_cus_a2 open, finalized Nov 3: both final, the latest finalization is Nov 3
    ("open", dt.datetime(2026, 11, 3, tzinfo=dt.UTC), True, dt.datetime(2026, 11, 3, tzinfo=dt.UTC)),
])
def test_a_meters_lines_are_finalized_only_when_every_invoice_is(status, finalized_at, finalized, latest):
    """cus_a's October api_calls lines on two invoices: in_cus_a (paid, finalized Nov 1 01:00, 1500 calls
    for 100) and in_cus_a2 (10 calls for 1, from Oct 15). The row is finalized only when both invoices
    are, and its finalized_at is the later finalization (lateness is measured against it). Kills:
    `.any()` for `.all()` (draft case) and `.min()` for `.max()` of `finalized_at` (open case)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET finalized_at = ? WHERE invoice_id = 'in_cus_a'", [FINALIZED_A])
        con.execute("INSERT INTO stripe_invoices_api SELECT * REPLACE ('in_cus_a2' AS invoice_id, ? AS status, "
                    "? AS finalized_at, TIMESTAMPTZ '2026-11-01 02:00:00+00' AS created) "
                    "FROM stripe_invoices_api WHERE invoice_id = 'in_cus_a'", [status, finalized_at])
        con.execute("INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('in_cus_a2' AS invoice_id, "
                    "'il_a2' AS line_id, 10 AS quantity_decimal, 1 AS amount, "
                    "TIMESTAMPTZ '2026-10-15 00:00:00+00' AS period_start) "
                    "FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_a'")
        invoice_total_is_its_lines(con, "in_cus_a2")
        lines = inputs.load_stripe_lines(con, MONTH, CUS_A_OCTOBER)
    r = lines.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (r["invoiced_quantity"], r["stripe_amount_minor"], r["invoice_ids"]) == (D(1510), 101, "in_cus_a,in_cus_a2")
    assert (r["finalized"], r["finalized_at"]) == (finalized, latest)


def test_a_first_invoices_zero_length_metered_line_is_no_usage():
    """cus_a's first invoice in_a0 (the fee, created Oct 1) also holds Stripe's zero-length, zero-amount
    api_calls line (Oct 1 00:00 - Oct 1 00:00, 0 calls, 0). It is not October's usage: the row's lines
    are in_cus_a's alone, line_count 1, 1500 calls for 100. Kills: `period_end < period_start` for `<=` in
    `_ZERO_LENGTH_FREE` (the zero-length line counted: 2 lines, in_a0 listed)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('il_a0_calls' AS line_id, "
                    "'api_calls' AS meter, 0 AS quantity_decimal, 0 AS amount, period_start AS period_end) "
                    "FROM stripe_invoice_lines_api WHERE invoice_id = 'in_a0'")
        lines = inputs.load_stripe_lines(con, MONTH, CUS_A_OCTOBER)
    r = lines.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (r["line_count"], r["invoice_ids"], r["invoiced_quantity"], r["stripe_amount_minor"]) == (
        1, "in_cus_a", D(1500), 100)


def test_a_residual_with_no_line_on_no_meter_has_no_tolerance():
    """c1's invoice has one line each side, on api_calls, whose usage row matched (300 = 300). Our
    invoice total says 301 (a preview one cent off its rated lines): diff 300 - 301 = -1 is within the
    invoice's tolerance (1 x 1 line), but all of it is residual (-1 - 0), and the residual's tolerance is
    that of the lines on no meter alone: none either side, 1 x max(0, 0) = 0. So `amount_mismatch`, 1
    counted. Kills: the residual tolerance's floor 0 raised to 1 (within_tolerance, nothing counted)."""
    usage = pl.DataFrame([_one("1500", 300, "1500", "1500", "1500", 300)])
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd", our_total_minor=301,
                              our_lines=1, our_unmetered_lines=0)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=300, line_count=1, rounded_lines=1, unmetered_lines=0,
                                invoice_ids="in_1", invoice_status="paid", amount_due=300, amount_paid=300,
                                amount_remaining=0)])
    inv = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW, usage=usage)
    r = inv.row(0, named=True)
    assert (r["status"], r["amount_diff_minor"], r["tolerance_minor"], r["residual_tolerance_minor"]) == (
        "amount_mismatch", -1, 1, 0)
    assert unexplained_by_currency(usage, inv) == {"usd": 1}


def test_the_closing_invoice_is_the_latest_one_reaching_the_periods_end():
    """Two non-void invoices of cus_a reach October's end: in_cus_a (paid, created Nov 1 01:00) and
    in_cus_a_late (open, created Nov 5, no line of its own). The period's closing invoice is the latest
    created: in_cus_a_late, status open. Kills: `ORDER BY created ASC` for `DESC` (in_cus_a, paid)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("INSERT INTO stripe_invoices_api SELECT * REPLACE ('in_cus_a_late' AS invoice_id, "
                    "'open' AS status, TIMESTAMPTZ '2026-11-05 00:00:00+00' AS created) "
                    "FROM stripe_invoices_api WHERE invoice_id = 'in_cus_a'")
        invoices = inputs.load_stripe_invoices(con, MONTH, CUS_A_OCTOBER)
    r = invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (r["closing_invoice_id"], r["invoice_status"]) == ("in_cus_a_late", "open")


def test_a_credit_beyond_an_invoices_lines_stays_on_its_first_billing_line():
    """in_cus_c (paid) bills October's 1000 calls at 0 and November's fee in advance, 1900 (line from Nov
    1). A credit note of 2000 before payment: the fee line takes min(1900, 2000) = 1900, and the 100
    beyond the invoice's lines stays on its first *billing* line, the fee (November), not on October's
    zero line. October's row: credit_notes_minor 0, amount_paid 0 - 0 = 0. Kills: the first line ranked
    without `amount <= 0` (the 100 put on October's zero line: credited 100, paid -100)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('il_c_fee_nov' AS line_id, NULL AS meter, "
                    "1 AS quantity_decimal, 1900 AS amount, TIMESTAMPTZ '2026-11-01 00:00:00+00' AS period_start, "
                    "TIMESTAMPTZ '2026-12-01 00:00:00+00' AS period_end) "
                    "FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_c'")
        invoice_total_is_its_lines(con, "in_cus_c")
        con.execute("UPDATE stripe_invoices_api SET pre_payment_credit_notes_amount = 2000, amount_due = 1900, "
                    "amount_paid = 1900 WHERE invoice_id = 'in_cus_c'")
        invoices = inputs.load_stripe_invoices(con, MONTH, CUS_C_OCTOBER)
    r = invoices.filter(customer_id="cus_c").row(0, named=True)
    assert (r["stripe_total_minor"], r["credit_notes_minor"], r["amount_paid"]) == (0, 0, 0)


def test_an_item_stripe_put_on_an_invoice_we_have_not_seen_is_not_pending():
    """cus_m's October minimum (4000) was acknowledged as invoice item ii_1 on in_unseen, an invoice no
    pull or webhook has shown us yet. Stripe holds nothing pending for the next invoice: no pending row
    for cus_m (the item waits, unbilled, until its invoice is read). Kills: pending items without
    `stripe_invoice_id IS NULL` (4000 called pending at Stripe)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        ledger_item(con, "ii_1", "in_unseen")
        pending = inputs.load_engine_items_pending(con, MONTH)
    assert pending.filter(customer_id="cus_m").height == 0


def test_a_drifted_price_that_charged_the_same_leaves_an_invoice_matched():
    """Without usage rows (the whole difference taken as the invoice's own): c1's lines were priced by a
    Stripe price that drifted from our rules, yet the totals agree, 5200 = 5200. No money differs on a
    drifted line, so `matched`. Kills: `price_drift_differs` without `amount_diff != 0` (any drift made
    the row an amount_mismatch)."""
    ours = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd", our_total_minor=5200,
                              our_lines=2)])
    stripe = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                stripe_total_minor=5200, line_count=2, invoice_ids="in_1", invoice_status="paid",
                                amount_due=5200, amount_paid=5200, amount_remaining=0,
                                price_drift="price_x (pro|2026-01|api calls) unit_amount_decimal: ours 0.2, "
                                            "Stripe 0.25")])
    r = reconcile_invoices(ours, stripe, billing_month=PS, settings=S, reconciled_at=NOW).row(0, named=True)
    assert (r["status"], r["amount_diff_minor"]) == ("matched", 0)


def test_an_invoice_whose_lines_are_not_all_known_has_no_adjustment():
    """cus_c's October invoice is known only from webhooks, and only part of its lines came with them
    (lines_complete false): its known line is the 1000 calls at 0, its total before tax 4900. The 4900
    may be a line we have not seen, not a discount, so nothing is compared: adjustments_minor NULL.
    Kills: the adjustment computed without `bool_and(lines_complete)` (4900 - 0 = 4900 taken as a
    difference on no line)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        known_only_from_webhooks(con, "cus_c", "paid", 0, 0, 1000, dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC),
                                 total_excluding_tax=4900)
        con.execute("UPDATE stripe_invoices SET lines_complete = false WHERE invoice_id = 'in_cus_c'")
        invoices = inputs.load_stripe_invoices(con, MONTH, CUS_C_OCTOBER)
    r = invoices.filter(customer_id="cus_c").row(0, named=True)
    assert (r["stripe_total_minor"], r["adjustments_minor"]) == (0, None)


def test_an_invoices_lines_are_those_of_its_latest_pull():
    """in_cus_a was first pulled on Nov 1 00:30 as a draft (900 calls for 60), then again on Nov 2
    (PULLED) finalized: 1500 calls for 100. Only the latest pull's lines count: cus_a's api_calls row is
    1500 for 100 in one line. Kills: `ORDER BY pulled_at ASC` for `DESC` in `merged_lines_sql` (the
    draft's 900 for 60)."""
    early = dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("INSERT INTO stripe_invoices_api SELECT * REPLACE ('draft' AS status, ? AS pulled_at) "
                    "FROM stripe_invoices_api WHERE invoice_id = 'in_cus_a'", [early])
        con.execute("INSERT INTO stripe_invoice_lines_api SELECT * REPLACE (900 AS quantity_decimal, 60 AS amount, "
                    "? AS pulled_at) FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_a'", [early])
        lines = inputs.load_stripe_lines(con, MONTH, CUS_A_OCTOBER)
    r = lines.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (r["invoiced_quantity"], r["stripe_amount_minor"], r["line_count"]) == (D(1500), 100, 1)


def test_a_discount_on_the_next_invoice_counts_in_the_period_of_its_first_usage_line():
    """cus_m's October minimum (4000) went onto in_next as item ii_1 (line period October), beside
    November's usage (700, from Nov 1); in_next carries a 100 discount (total before tax 4600 for 4700 of
    lines). The invoice counts in the period its earliest usage line starts in: Nov 1, November. So
    October's adjustments are in_cus_m's alone: 6000 - 6000 = 0. Kills: `closed="both"` for
    `closed="left"` (Nov 1 inside October too: the -100 counted in October and again in November)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        ledger_item(con, "ii_1", "in_next")
        con.execute("INSERT INTO stripe_invoices_api SELECT * REPLACE ('in_next' AS invoice_id, 'open' AS status, "
                    "TIMESTAMPTZ '2026-11-01 00:00:00+00' AS period_start, "
                    "TIMESTAMPTZ '2026-12-01 00:00:00+00' AS period_end, "
                    "TIMESTAMPTZ '2026-12-01 00:00:00+00' AS created) "
                    "FROM stripe_invoices_api WHERE invoice_id = 'in_cus_m'")
        con.execute("INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('in_next' AS invoice_id, "
                    "'il_next' AS line_id, 1050 AS quantity_decimal, 700 AS amount, "
                    "TIMESTAMPTZ '2026-11-01 00:00:00+00' AS period_start, "
                    "TIMESTAMPTZ '2026-12-01 00:00:00+00' AS period_end) "
                    "FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_m'")
        pulled_item_line(con, "in_next", "il_next_item", "ii_1", MINIMUM_TRUE_UP)
        con.execute("UPDATE stripe_invoices_api SET total_excluding_tax = 4600 WHERE invoice_id = 'in_next'")
        invoices = inputs.load_stripe_invoices(con, MONTH, pl.DataFrame([dict(customer_id="cus_m", period_start=PS,
                                                                             period_end=PE)]))
    r = invoices.filter(customer_id="cus_m").row(0, named=True)
    assert (r["stripe_total_minor"], r["engine_items_minor"], r["adjustments_minor"]) == (6000 + 4000, 4000, 0)


def test_the_engines_invoice_item_is_no_line_that_rounds():
    """cus_m's in_cus_m: the usage line (6000) and our invoice item ii_1 billing the minimum (4000). The
    item is not compared (Stripe's total less the items is), so it does not round: line_count 2,
    rounded_lines 1, unmetered_lines 0, and the invoice's tolerance stays 1 cent. Kills: `rounds` without
    `~engine_item` (2 rounding lines, 1 on no meter: a fee's cent hidden in the item's tolerance)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        ledger_item(con, "ii_1", "in_cus_m")
        pulled_item_line(con, "in_cus_m", "il_item", "ii_1", MINIMUM_TRUE_UP)
        invoices = inputs.load_stripe_invoices(con, MONTH, pl.DataFrame([dict(customer_id="cus_m", period_start=PS,
                                                                             period_end=PE)]))
    r = invoices.filter(customer_id="cus_m").row(0, named=True)
    assert (r["line_count"], r["rounded_lines"], r["unmetered_lines"], r["engine_items_minor"]) == (2, 1, 0, 4000)


def test_a_row_of_no_length_has_no_closing_invoice():
    """cus_z, whom we never rated, has one Stripe line: a 500 invoice item dated Oct 15 - Oct 15 on in_z
    (paid, Oct 1 - Nov 1). No rated period holds it, so it makes a row of its own period, which has no
    length: no invoice closes a period of no length, closing_invoice_id and invoice_status NULL (total
    500). Kills: `_closing_invoices` without `p.period_end > p.period_start`."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("INSERT INTO stripe_invoices_api SELECT * REPLACE ('in_z' AS invoice_id, 'cus_z' AS customer_id) "
                    "FROM stripe_invoices_api WHERE invoice_id = 'in_cus_a'")
        con.execute("INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('in_z' AS invoice_id, 'il_z' AS line_id, "
                    "'cus_z' AS customer_id, NULL AS meter, 1 AS quantity_decimal, 500 AS amount, "
                    "TIMESTAMPTZ '2026-10-15 00:00:00+00' AS period_start, "
                    "TIMESTAMPTZ '2026-10-15 00:00:00+00' AS period_end) "
                    "FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_a'")
        invoice_total_is_its_lines(con, "in_z")
        invoices = inputs.load_stripe_invoices(con, MONTH, CUS_A_OCTOBER)
    r = invoices.filter(customer_id="cus_z").row(0, named=True)
    assert (r["period_start"], r["stripe_total_minor"], r["closing_invoice_id"], r["invoice_status"]) == (
        dt.date(2026, 10, 15), 500, None, None)


def test_a_period_starting_on_the_first_of_next_month_is_not_this_months(rules_dir):
    """cus_a's November period (Nov 1 - Dec 1) is rated too (its api calls 70). October's reconciliation
    covers the periods starting in [Oct 1, Nov 1): only cus_a's October rows (api_calls 100, tokens 50),
    no November one. Kills: `period_start <= ?` for `<` in `load_ours`."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO rated_usage SELECT * REPLACE (DATE '2026-11-01' AS period_start,
                       DATE '2026-12-01' AS period_end, DATE '2026-11-01' AS segment_start,
                       DATE '2026-12-01' AS segment_end, 70 AS amount_minor)
                       FROM rated_usage WHERE customer_id = 'cus_a' AND charge = 'api calls'""")
        ours = inputs.load_ours(con, MONTH, load_meters(rules_dir))
    got = sorted((r["meter"], r["period_start"], r["our_amount_minor"])
                 for r in ours.filter(customer_id="cus_a").iter_rows(named=True))
    assert got == [("api_calls", PS, 100), ("tokens", PS, 50)]
