"""Gaps found by a hand mutation audit of metering/reconcile/inputs.py (mutants28).

Reconciliation's inputs at their edges: an hour starting on the period's end, a meter the rules no
longer name, a sum meter's pushed windows, pending meter summaries of the day grain, a line starting
in the next month that belongs to a period starting in this one, a webhook line with a blank meter,
a pulled invoice's lines landed by webhooks too, a webhook state as far as its pull (the pull's
header stays), and a further state that keeps no credit notes (the pull's stand).
Each test names the mutant it kills (the ids of the audit's report); every expected figure is worked
out by hand in its docstring or comments. The what-if tests of the same audit are in
tests/metering/rating/test_whatif_mutants28.py (that directory's conftest)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import polars as pl
from recon_scenario import MONTH, PE, PS, PULLED, insert_windows, known_only_from_webhooks, write_scenario

from metering import warehouse
from metering.reconcile import inputs
from metering.rules.meters import load_meters

UTC = dt.UTC


def _periods(*rows: tuple[str, dt.date, dt.date]) -> pl.DataFrame:
    return pl.DataFrame([dict(customer_id=c, period_start=s, period_end=e) for c, s, e in rows],
                        schema={"customer_id": pl.String, "period_start": pl.Date, "period_end": pl.Date})


CUS_A_OCTOBER = _periods(("cus_a", PS, PE))


# --- ours ---------------------------------------------------------------------------------------------------

def test_an_hour_starting_on_the_periods_end_is_not_the_periods(rules_dir):
    """cus_a's api_calls hours in October are 1000 (Oct 1 03:00) and 500 (Oct 2 05:00); the scenario's
    hour starting Nov 1 00:00 (7 calls) is November's: October's quantity is 1500. Kills I06 (`hour <=
    period_end`: 1507)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        q = inputs.load_meter_quantities(con, CUS_A_OCTOBER, load_meters(rules_dir))
    assert sorted(q.select("meter", "our_quantity").rows()) == [("api_calls", D(1500)), ("tokens", D(25_000_000))]


def test_a_meter_the_rules_no_longer_name_is_summed(rules_dir):
    """cus_a's api_calls hours (1000 and 500) read with rules that no longer name api_calls (its
    aggregation unknown): the quantity falls back to the sum, 1500, as Stripe's meters of events add up.
    Kills I07 (the fallback read as the max: 1000)."""
    meters = {name: m for name, m in load_meters(rules_dir).items() if name != "api_calls"}
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        q = inputs.load_meter_quantities(con, CUS_A_OCTOBER, meters)
    assert q.filter(meter="api_calls")["our_quantity"].to_list() == [D(1500)]


# --- pushed ---------------------------------------------------------------------------------------------------

def test_a_sum_meters_pushed_windows_add_up(rules_dir):
    """tokens is a sum meter. Besides the scenario's Oct 3 window (25,000,000, acknowledged), cus_a pushed
    Oct 5 (100) and Oct 6 (200), both acknowledged: Stripe's pre-aggregated meter sums its windows,
    25,000,000 + 100 + 200 = 25,000,300. Kills I01 (only `count` additive: the last window's 200)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        insert_windows(con, "cus_a", "tokens", dt.timedelta(days=1), [
            (dt.datetime(2026, 10, 5, tzinfo=UTC), 100, "acknowledged", PULLED),
            (dt.datetime(2026, 10, 6, tzinfo=UTC), 200, "acknowledged", PULLED)])
        pushed = inputs.load_pushed(con, MONTH, load_meters(rules_dir), CUS_A_OCTOBER)
    assert pushed.filter(customer_id="cus_a", meter="tokens")["pushed_quantity"].to_list() == [D(25_000_300)]


# --- Stripe's meter -----------------------------------------------------------------------------------------------

def test_a_pending_day_summary_makes_the_meter_pending_and_adds_nothing(rules_dir):
    """Besides cus_a's settled period summary of api_calls (1500), the pull left a day-grain summary
    pending (value 5, 'settling'). The meter is pending (a pending row of any grain), its quantity stays
    the settled 1500 and the reason is named. Kills I14 (pending values summed: 1505) and I15 (only
    period-grain rows read: settled, no reason)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO stripe_meter_summaries (billing_month, customer_id, meter, period_start, period_end,
                       grain, aggregated_value, status, status_reason, pulled_at)
                       VALUES (?, 'cus_a', 'api_calls', ?, ?, 'day', 5, 'pending', 'settling', ?)""",
                    [MONTH, PS, PE, PULLED])
        meter = inputs.load_stripe_meter(con, MONTH)
    r = meter.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (r["stripe_quantity"], r["meter_status"], r["pending_reason"]) == (D(1500), "pending", "settling")


# --- Stripe's lines ------------------------------------------------------------------------------------------------

def test_a_line_starting_next_month_belongs_to_the_period_starting_this_month():
    """cus_c's period is Oct 15 - Nov 15 (rated so); its usage line on in_cus_c starts Nov 5 (a mid-period
    price change) and ends Nov 15: it belongs to the period holding its start, Oct 15's, which is
    October's billing month: 1000 calls invoiced for 0 in that row. Kills I31 (lines read only up to the
    month's end: no row)."""
    oct15, nov15 = dt.date(2026, 10, 15), dt.date(2026, 11, 15)
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE rated_usage SET period_start = ?, period_end = ?, segment_start = ?, segment_end = ? "
                    "WHERE customer_id = 'cus_c'", [oct15, nov15, oct15, nov15])
        con.execute("""UPDATE stripe_invoice_lines_api SET period_start = TIMESTAMPTZ '2026-11-05 00:00:00+00',
                       period_end = TIMESTAMPTZ '2026-11-15 00:00:00+00' WHERE invoice_id = 'in_cus_c'""")
        lines = inputs.load_stripe_lines(con, MONTH, _periods(("cus_c", oct15, nov15)))
    got = lines.filter(customer_id="cus_c").select("customer_id", "meter", "period_start", "period_end",
                                                   "invoiced_quantity", "stripe_amount_minor")
    assert got.rows() == [("cus_c", "api_calls", oct15, nov15, D(1000), 0)]


def test_a_webhook_line_with_a_blank_meter_is_on_no_meter():
    """in_cus_c is known from webhooks only; its one line (1000 calls, 0) landed with a blank meter and
    no event name: it is on no meter (a fee's line), so cus_c has no metered row in Stripe's lines.
    Kills I18 (the blank kept: a row on meter '')."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        known_only_from_webhooks(con, "cus_c", "paid", 0, 0, 1000, dt.datetime(2026, 11, 1, 1, tzinfo=UTC))
        con.execute("UPDATE stripe_invoice_lines SET meter = '', event_name = NULL WHERE invoice_id = 'in_cus_c'")
        lines = inputs.load_stripe_lines(con, MONTH, _periods(("cus_c", PS, PE)))
    assert lines.filter(customer_id="cus_c").height == 0


def test_a_pulled_invoices_lines_are_not_counted_again_from_webhooks():
    """in_cus_b was pulled with its one line (1500 calls, 125); webhooks also landed the invoice (paid,
    as pulled) and that line. The pull's lines stand for the invoice, once: 1500 calls for 125, one
    line, not 3000 for 250. Kills I50 (webhook lines of every invoice added to the pull's)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency, amount_due, amount_paid,
                       amount_remaining, total, total_excluding_tax, created, period_start, period_end)
                       SELECT invoice_id, customer_id, status, currency, amount_due, amount_paid, amount_remaining,
                       total, total_excluding_tax, created, period_start, period_end
                       FROM stripe_invoices_api WHERE invoice_id = 'in_cus_b'""")
        con.execute("""INSERT INTO stripe_invoice_lines (invoice_id, line_id, meter, event_name, quantity_decimal,
                       amount, currency, period_start, period_end, source)
                       SELECT invoice_id, line_id, meter, 'metering_api_calls', quantity_decimal, amount, currency,
                       period_start, period_end, 'webhook'
                       FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_b'""")
        lines = inputs.load_stripe_lines(con, MONTH, _periods(("cus_b", PS, PE)))
    r = lines.filter(customer_id="cus_b", meter="api_calls").row(0, named=True)
    assert (r["invoiced_quantity"], r["stripe_amount_minor"], r["line_count"]) == (D(1500), 125, 1)


# --- the merged invoice view --------------------------------------------------------------------------------------

def test_a_webhook_state_no_further_than_its_pull_leaves_the_pulls_header():
    """in_cus_b was pulled paid, 125 before tax (its one line). Its webhook state is paid too (no
    further), kept with an older total before tax of 100. The pull stands: adjustments 125 - 125 = 0.
    Kills I16 (a state as far as the pull counted as further: the state's 100, adjustments -25)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency, amount_due, amount_paid,
                       amount_remaining, total, total_excluding_tax, created, period_start, period_end)
                       SELECT invoice_id, customer_id, 'paid', currency, 100, 100, 0, 100, 100, created, period_start,
                       period_end FROM stripe_invoices_api WHERE invoice_id = 'in_cus_b'""")
        invoices = inputs.load_stripe_invoices(con, MONTH, _periods(("cus_b", PS, PE)))
    r = invoices.filter(customer_id="cus_b").row(0, named=True)
    assert (r["invoice_status"], r["stripe_total_minor"], r["adjustments_minor"]) == ("paid", 125, 0)


def test_a_further_state_keeps_the_credit_notes_its_pull_read():
    """in_cus_b (one line, 125) was pulled open with a 25 credit note issued before payment; webhooks
    since say paid, and the webhook state keeps no credit notes. The credit is the pull's all the same:
    credit_notes_minor 25, off what is paid: 125 - 25 = 100. Kills I47 (the state's unknown credit
    taken: 0 credited, 125 paid)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""UPDATE stripe_invoices_api SET status = 'open', amount_paid = 0, amount_remaining = 100,
                       amount_due = 100, pre_payment_credit_notes_amount = 25 WHERE invoice_id = 'in_cus_b'""")
        con.execute("""INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency, amount_due, amount_paid,
                       amount_remaining, total, total_excluding_tax, created, period_start, period_end)
                       SELECT invoice_id, customer_id, 'paid', currency, 100, 100, 0, 125, 125, created, period_start,
                       period_end FROM stripe_invoices_api WHERE invoice_id = 'in_cus_b'""")
        invoices = inputs.load_stripe_invoices(con, MONTH, _periods(("cus_b", PS, PE)))
    r = invoices.filter(customer_id="cus_b").row(0, named=True)
    assert (r["invoice_status"], r["stripe_total_minor"], r["credit_notes_minor"], r["amount_paid"]) == (
        "paid", 125, 25, 100)
