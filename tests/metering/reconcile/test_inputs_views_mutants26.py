"""Gaps found by a hand mutation audit of metering/reconcile/inputs.py and metering/views (mutants26).

Second pass over reconciliation's inputs (what ours is per customer and period, Stripe's meter
summaries, its invoices and lines from the pull or from webhooks, how lines are bucketed and invoices
close periods, pending items) and the analytics views. Each test names the mutant it kills (the ids of
the audit's report); every expected figure is worked out by hand in its docstring or comments."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import duckdb
import polars as pl
from recon_scenario import (
    MONTH,
    PE,
    PS,
    PULLED,
    add_minimum_customer,
    insert_windows,
    invoice_total_is_its_lines,
    known_only_from_webhooks,
    ledger_item,
    pulled_item_line,
    write_scenario,
)
from test_views_mutants20 import _read

from metering import warehouse
from metering.reconcile import inputs
from metering.rules.meters import load_meters

CUS_A_OCTOBER = pl.DataFrame([dict(customer_id="cus_a", period_start=PS, period_end=PE)])


def _hour(con: duckdb.DuckDBPyConnection, customer: str, meter: str, hour: dt.datetime, quantity: int,
          last_event_time: dt.datetime, last_event_id: str, distinct_values: list[str] | None = None) -> None:
    con.execute("""INSERT INTO usage_aggregates (customer_id, meter, dimensions, hour, event_date, quantity,
                   event_count, last_event_time, last_event_id, distinct_values)
                   VALUES (?, ?, '{}', ?, ?, ?, 1, ?, ?, ?)""",
                [customer, meter, hour, hour.date(), quantity, last_event_time, last_event_id, distinct_values])


def _periods(*rows: tuple[str, dt.date, dt.date]) -> pl.DataFrame:
    return pl.DataFrame([dict(customer_id=c, period_start=s, period_end=e) for c, s, e in rows],
                        schema={"customer_id": pl.String, "period_start": pl.Date, "period_end": pl.Date})


def test_december_covers_the_periods_starting_in_december():
    """December 2026's billing month is [Dec 1 2026, Jan 1 2027): cus_a's period Dec 1 - Jan 1 is
    December's, its January period (Jan 1 - Feb 1 2027) is not. Kills H01 (December's end computed in
    the same year: Jan 1 2026, before its start, so December had no period)."""
    dec, jan, feb = dt.date(2026, 12, 1), dt.date(2027, 1, 1), dt.date(2027, 2, 1)
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        for start, end in ((dec, jan), (jan, feb)):
            con.execute("""INSERT INTO rated_usage SELECT * REPLACE (? AS period_start, ? AS period_end,
                           ? AS segment_start, ? AS segment_end) FROM rated_usage
                           WHERE customer_id = 'cus_a' AND charge = 'api calls'""", [start, end, start, end])
        periods = inputs.load_periods(con, dec)
    assert periods.rows() == [("cus_a", dec, jan)]


def test_a_last_meters_tie_between_hours_goes_to_the_larger_event_id(rules_dir):
    """seats (last) of c1 in October: two hour rows whose latest events share Oct 7 15:00; the larger
    event_id wins, as rating breaks ties ('e9' > 'e10' as strings): 8, not 5. The e9 row is written
    second, so a tie broken by the first row met gives 5. Kills H09 (arg_max by the time alone)."""
    at = dt.datetime(2026, 10, 7, 15, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        _hour(con, "c1", "seats", dt.datetime(2026, 10, 7, 14, tzinfo=dt.UTC), 5, at, "e10")
        _hour(con, "c1", "seats", dt.datetime(2026, 10, 7, 15, tzinfo=dt.UTC), 8, at, "e9")
        q = inputs.load_meter_quantities(con, _periods(("c1", PS, PE)), load_meters(rules_dir))
    assert q.select("meter", "our_quantity").rows() == [("seats", D(8))]


def test_a_unique_count_meter_with_no_values_counts_zero(rules_dir):
    """active_users (unique_count) of c1: one October hour whose events carried no user (distinct values
    an empty list). Its distinct count is 0, not unknown. Kills H11 (no fill_null(0): NULL)."""
    at = dt.datetime(2026, 10, 7, 15, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        _hour(con, "c1", "active_users", at, 0, at, "e1", [])
        q = inputs.load_meter_quantities(con, _periods(("c1", PS, PE)), load_meters(rules_dir))
    assert q.select("meter", "our_quantity").rows() == [("active_users", D(0))]


def test_each_meter_is_its_own_aggregate_over_the_period(rules_dir):
    """c1's October hours: storage_gb (max) 30, 70, 40 -> the peak 70, not their sum 140; seats (last)
    12 (latest event Oct 3 10:00) then 10 (Oct 4 09:00) -> the latest, 10, not the larger 12; api_calls
    (count) 3 in the hour starting at the period's start (Oct 1 00:00) and 4 on Oct 5 -> 3 + 4 = 7. Kills
    H10 (max read as the sum), H12 (last read as the max) and H08 (`hour > period_start`: 4)."""
    def at(day: int, hour: int) -> dt.datetime:
        return dt.datetime(2026, 10, day, hour, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        for i, q in enumerate((30, 70, 40)):
            _hour(con, "c1", "storage_gb", at(2, i), q, at(2, i), f"s{i}")
        _hour(con, "c1", "seats", at(3, 10), 12, at(3, 10), "e1")
        _hour(con, "c1", "seats", at(4, 9), 10, at(4, 9), "e2")
        _hour(con, "c1", "api_calls", at(1, 0), 3, at(1, 0), "a1")
        _hour(con, "c1", "api_calls", at(5, 0), 4, at(5, 0), "a2")
        q = inputs.load_meter_quantities(con, _periods(("c1", PS, PE)), load_meters(rules_dir))
    assert sorted(q.select("meter", "our_quantity").rows()) == [
        ("api_calls", D(7)), ("seats", D(10)), ("storage_gb", D(70))]


def test_the_segments_of_a_period_are_its_plan_versions_not_its_charges(rules_dir):
    """cus_a's api_calls carries two charges rated in the one segment from Oct 1 ('api calls' 100 and
    'api calls included' 0): one segment, not 2. Kills H06 (count(*) for count(DISTINCT segment_start))."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO rated_usage SELECT * REPLACE ('api calls included' AS charge, 0 AS amount_minor)
                       FROM rated_usage WHERE customer_id = 'cus_a' AND charge = 'api calls'""")
        ours = inputs.load_ours(con, MONTH, load_meters(rules_dir))
    r = ours.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (r["our_amount_minor"], r["segments"]) == (100 + 0, 1)


def test_a_period_only_previewed_is_a_period_of_the_month():
    """cus_p has an invoice preview for October (a plan with a zero fee) and no rated line: its period
    is one of October's all the same, beside the scenario's cus_a, cus_b, cus_c. Kills H13 (periods read
    from rated_usage alone)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO invoice_previews SELECT * REPLACE ('cus_p' AS customer_id, 0 AS total_minor)
                       FROM invoice_previews WHERE customer_id = 'cus_b'""")
        periods = inputs.load_periods(con, MONTH)
    assert sorted(periods.rows()) == [(c, PS, PE) for c in ("cus_a", "cus_b", "cus_c", "cus_p")]


def test_a_period_whose_lines_are_not_all_finalized_has_no_late_acknowledgement(rules_dir):
    """cus_a's api_calls lines are on a finalized invoice (Nov 1 01:00) and a draft: the row is not
    finalized, so nothing is late this way, though both windows were acknowledged at PULLED (Nov 2), after
    that finalized_at. late_acked_windows 0, late_acked_quantity 0; pushed 1000 + 500 = 1500. Kills H14
    (a finalized_at taken without `finalized`: 2 windows, 1500 late)."""
    finalized = pl.DataFrame([dict(customer_id="cus_a", meter="api_calls", period_start=PS, finalized=False,
                                   finalized_at=dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC))])
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        pushed = inputs.load_pushed(con, MONTH, load_meters(rules_dir), CUS_A_OCTOBER, finalized)
    r = pushed.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (r["pushed_quantity"], r["late_acked_windows"], r["late_acked_quantity"]) == (D(1500), 0, D(0))


def test_a_last_meters_pushed_quantity_is_its_latest_windows(rules_dir):
    """seats (last) of cus_a pushed per day: Oct 1 12 seats, Oct 2 10 seats, both acknowledged. Stripe's
    meter keeps the last value: 10, not the first window's 12. Kills H17 (arg_min by window_start)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        insert_windows(con, "cus_a", "seats", dt.timedelta(days=1), [
            (dt.datetime(2026, 10, 1, tzinfo=dt.UTC), 12, "acknowledged", PULLED),
            (dt.datetime(2026, 10, 2, tzinfo=dt.UTC), 10, "acknowledged", PULLED)])
        pushed = inputs.load_pushed(con, MONTH, load_meters(rules_dir), CUS_A_OCTOBER)
    assert pushed.filter(customer_id="cus_a", meter="seats")["pushed_quantity"].to_list() == [D(10)]


def _cus_c_subscription(con: duckdb.DuckDBPyConnection, *rows: tuple[str, str, dt.datetime | None]) -> None:
    for sub, status, ended in rows:
        con.execute("""INSERT INTO stripe_subscriptions (subscription_id, customer_id, status, ended_at)
                       VALUES (?, 'cus_c', ?, ?)""", [sub, status, ended])


def test_a_pulled_final_invoice_closes_the_period_by_the_subscriptions_end_webhooks_told(rules_dir):
    """cus_c's subscription sub_c was cancelled on Oct 20 (webhook state: canceled, ended Oct 20). Its
    final invoice in_cus_c was pulled before the pull read subscription ends (subscription_ended_at NULL)
    and covers Oct 1 - Oct 20: it reaches the subscription's end, so it closes October (no open row).
    Kills H25 (the pull's end alone: October open)."""
    oct20 = dt.datetime(2026, 10, 20, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET subscription_id = 'sub_c', period_end = ? "
                    "WHERE invoice_id = 'in_cus_c'", [oct20])
        _cus_c_subscription(con, ("sub_c", "canceled", oct20))
        open_ = inputs.load_open_periods(con, _periods(("cus_c", PS, PE)))
    assert open_.height == 0


def test_a_subscription_that_ended_at_the_periods_start_does_not_close_it():
    """cus_c's subscription sub_c ended at Oct 1 00:00, October's start; its final invoice (in_cus_c,
    Sep 1 - Oct 1) reaches that end but lies before October: it closes September, not October, which
    stays open with sub_c named ended. Kills H34 (`subscription_ended_at >= period_start`: October closed)."""
    oct1 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET subscription_id = 'sub_c', subscription_ended_at = ?, "
                    "period_start = TIMESTAMPTZ '2026-09-01 00:00:00+00', period_end = ? "
                    "WHERE invoice_id = 'in_cus_c'", [oct1, oct1])
        _cus_c_subscription(con, ("sub_c", "canceled", oct1))
        open_ = inputs.load_open_periods(con, _periods(("cus_c", PS, PE)))
    assert open_.select("customer_id", "period_start", "ended_subscription_ids").rows() == [("cus_c", PS, "sub_c")]


def test_a_live_subscription_beside_an_ended_one_has_not_ended():
    """cus_c has two subscriptions: sub_1 canceled on Oct 10, sub_2 active (no end). No invoice closes
    October (in_cus_c removed): October is open, and not every subscription has ended, so
    ended_subscription_ids is NULL. Kills H39 (the status not checked: sub_2's unknown end ignored by
    bool_and, 'sub_1,sub_2' named ended)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("DELETE FROM stripe_invoices_api WHERE invoice_id = 'in_cus_c'")
        _cus_c_subscription(con, ("sub_1", "canceled", dt.datetime(2026, 10, 10, tzinfo=dt.UTC)),
                            ("sub_2", "active", None))
        open_ = inputs.load_open_periods(con, _periods(("cus_c", PS, PE)))
    assert open_.select("customer_id", "ended_subscription_ids").rows() == [("cus_c", None)]


def test_a_pulled_invoices_lines_are_complete_whatever_a_further_state_says():
    """in_cus_c was pulled open (its one line, 0); its webhook state since says paid, with lines_complete
    false (the payload's lines had more pages). The header is the state's (paid), its lines the pull's,
    which are all there: the adjustment is computed, 0 - 0 = 0, not unknown. Kills H30 (the state's
    lines_complete alone: adjustments NULL)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET status = 'open', amount_paid = 0 WHERE invoice_id = 'in_cus_c'")
        con.execute("""INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency, amount_due, amount_paid,
                       amount_remaining, total, total_excluding_tax, lines_complete, created, period_start, period_end)
                       SELECT invoice_id, customer_id, 'paid', currency, 0, 0, 0, 0, 0, false, created, period_start,
                       period_end FROM stripe_invoices_api WHERE invoice_id = 'in_cus_c'""")
        invoices = inputs.load_stripe_invoices(con, MONTH, _periods(("cus_c", PS, PE)))
    r = invoices.filter(customer_id="cus_c").row(0, named=True)
    assert (r["invoice_status"], r["stripe_total_minor"], r["adjustments_minor"]) == ("paid", 0, 0)


def test_a_charge_stripe_cannot_price_neither_rounds_nor_prices_units(rules_dir):
    """cus_a's tokens row holds only 'tokens large' (50), which Stripe cannot price (not_expressible):
    not_in_stripe 50, no charge Stripe prices (stripe_charges 0), so no line of it rounds
    (our_rounded_lines 0) and it prices no unit Stripe would (priced_quantity NULL, though its tiers
    priced 25,000,000). Kills H04 (the rounded count without `NOT nx`: 1) and H05 (the priced units
    without it: 25,000,000)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""UPDATE rated_usage SET tiers = '[{"units": "25000000"}]' WHERE charge = 'tokens large'""")
        ours = inputs.load_ours(con, MONTH, load_meters(rules_dir))
    r = ours.filter(customer_id="cus_a", meter="tokens").row(0, named=True)
    assert (r["not_in_stripe_minor"], r["stripe_charges"], r["our_rounded_lines"], r["priced_quantity"]) == (
        50, 0, 0, None)


def _map(con: duckdb.DuckDBPyConnection, customer: str, subscription: str) -> None:
    con.execute("""INSERT INTO stripe_customer_map (customer_id, stripe_customer_id, subscription_id, synced_at)
                   VALUES (?, ?, ?, ?)""", [customer, f"{customer}_stripe", subscription, PULLED])


def test_an_invoice_of_a_customer_the_sync_never_mapped_is_not_another_products():
    """The sync mapped cus_a (sub_a) but never cus_b. in_cus_b names a subscription that is not one of
    ours (sub_b_old), and its line has no known price: with no subscription of ours known for cus_b,
    nothing says the invoice is another product's, so its 125 counts as cus_b's October. Kills H36 (the
    mapped-customer condition dropped: in_cus_b foreign, cus_b's period without a Stripe row)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _map(con, "cus_a", "sub_a")
        con.execute("UPDATE stripe_invoices_api SET subscription_id = 'sub_b_old' WHERE invoice_id = 'in_cus_b'")
        invoices = inputs.load_stripe_invoices(con, MONTH, _periods(("cus_b", PS, PE)))
    r = invoices.filter(customer_id="cus_b").row(0, named=True)
    assert (r["stripe_total_minor"], r["invoice_ids"], r["closing_invoice_id"]) == (125, "in_cus_b", "in_cus_b")


def test_a_webhook_line_without_a_currency_takes_its_invoices():
    """in_cus_c is known from webhooks only; its one line (1000 calls, 0) landed without a currency,
    its invoice says usd: the row's currency is usd, not unknown. Kills H46 (the line's own currency
    only: NULL)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        known_only_from_webhooks(con, "cus_c", "paid", 0, 0, 1000, dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC))
        con.execute("UPDATE stripe_invoice_lines SET currency = NULL WHERE invoice_id = 'in_cus_c'")
        lines = inputs.load_stripe_lines(con, MONTH, _periods(("cus_c", PS, PE)))
    r = lines.filter(customer_id="cus_c", meter="api_calls").row(0, named=True)
    assert (r["currency"], r["invoiced_quantity"], r["stripe_amount_minor"]) == ("usd", D(1000), 0)


def test_currencies_differing_only_in_case_are_one():
    """cus_a's api_calls lines: il_cus_a (1500 calls, 100) in 'USD' and a second line il_a2 (0 calls,
    0) in 'usd': one currency, 'usd', so no per-currency amounts (NULL). Kills H48 (no lower-casing:
    'USD,usd') and H49 (per-currency amounts for one currency too: '100 usd')."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoice_lines_api SET currency = 'USD' WHERE line_id = 'il_cus_a'")
        con.execute("""INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('il_a2' AS line_id, 0 AS quantity_decimal,
                       0 AS amount, 'usd' AS currency) FROM stripe_invoice_lines_api WHERE line_id = 'il_cus_a'""")
        lines = inputs.load_stripe_lines(con, MONTH, CUS_A_OCTOBER)
    r = lines.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (r["currency"], r["stripe_amounts"], r["stripe_amount_minor"], r["line_count"]) == ("usd", None, 100, 2)


def test_lines_of_an_invoice_whose_header_is_unknown_are_not_finalized():
    """in_cus_c's line landed by webhook (1000 calls) but its invoice's header is not known (no row in
    stripe_invoices, none pulled): its status is unknown, so the row is not finalized. Kills H50
    (`invoice_status != 'draft'` alone: an unknown status ignored by `.all()`, finalized)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        known_only_from_webhooks(con, "cus_c", "paid", 0, 0, 1000, dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC))
        con.execute("DELETE FROM stripe_invoices WHERE invoice_id = 'in_cus_c'")
        lines = inputs.load_stripe_lines(con, MONTH, _periods(("cus_c", PS, PE)))
    r = lines.filter(invoice_ids="in_cus_c").row(0, named=True)
    assert (r["meter"], r["invoiced_quantity"], r["finalized"]) == ("api_calls", D(1000), False)


def test_a_credit_note_on_an_uncollectible_invoice_is_off_what_remains():
    """in_cus_b (one line, 125) was marked uncollectible, with a 25 credit note issued before payment.
    Nothing paid; remaining 125 - 25 = 100; due 0 + 100 = 100; credit notes 25. Kills H55 (due less the
    paid credit only: 125) and H56 (uncollectible not among the remaining statuses: due and remaining 0,
    -25)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""UPDATE stripe_invoices_api SET status = 'uncollectible', amount_paid = 0, amount_remaining = 125,
                       pre_payment_credit_notes_amount = 25 WHERE invoice_id = 'in_cus_b'""")
        invoices = inputs.load_stripe_invoices(con, MONTH, _periods(("cus_b", PS, PE)))
    r = invoices.filter(customer_id="cus_b").row(0, named=True)
    assert (r["credit_notes_minor"], r["amount_paid"], r["amount_remaining"], r["amount_due"]) == (25, 0, 100, 100)


def test_only_invoices_with_an_adjustment_are_named_adjusted():
    """cus_a's October: in_a0 (fee 4900, total before tax 4900: no adjustment) and in_cus_a (100 of
    lines, 90 before tax: a 10 coupon). Adjustments 0 + (90 - 100) = -10, adjusted_invoice_ids
    'in_cus_a' alone. Kills H60 (every invoice named: 'in_a0,in_cus_a')."""
    with warehouse.open_warehouse() as con:
        write_scenario(con, total_excluding_tax={"in_cus_a": 90})
        invoices = inputs.load_stripe_invoices(con, MONTH, CUS_A_OCTOBER)
    r = invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (r["adjustments_minor"], r["adjusted_invoice_ids"]) == (-10, "in_cus_a")


def test_a_held_draft_is_no_closing_invoice():
    """in_cus_a, the only invoice reaching October's end, is a draft Stripe will not finalize
    (auto_advance false): it closes nothing, so cus_a's October row (in_a0's fee, 4900) has no closing
    invoice and no invoice status. Kills H57 (only void invoices left out of `_closing_invoices`)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET status = 'draft', auto_advance = false WHERE invoice_id = 'in_cus_a'")
        invoices = inputs.load_stripe_invoices(con, MONTH, CUS_A_OCTOBER)
    r = invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (r["stripe_total_minor"], r["closing_invoice_id"], r["invoice_status"]) == (4900, None, None)


def test_a_drift_on_a_metered_line_is_not_an_unmetered_ones():
    """in_cus_b's api_calls line was priced by price_b, which the catalog sync found drifted (unit amount
    ours 0.0667, Stripe 0.0833): the drifted meter is api_calls, and no line on no meter was drifted.
    Kills H54 (drifted_unmetered without `meter is null`: true)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoice_lines_api SET price_id = 'price_b' WHERE invoice_id = 'in_cus_b'")
        con.execute("""INSERT INTO stripe_catalog_findings (finding, kind, our_key, stripe_id, field, ours, theirs,
                       detail, synced_at) VALUES ('drift', 'price', 'pro|2026-01|api calls', 'price_b',
                       'unit_amount_decimal', '0.0667', '0.0833', 'd', ?)""", [PULLED])
        invoices = inputs.load_stripe_invoices(con, MONTH, _periods(("cus_b", PS, PE)))
    r = invoices.filter(customer_id="cus_b").row(0, named=True)
    assert (r["drifted_meters"], r["drifted_unmetered"]) == ("api_calls", False)
    assert r["price_drift"] == ("price_b (pro|2026-01|api calls) unit_amount_decimal: ours 0.0667, Stripe 0.0833")


def test_only_acknowledged_items_of_the_month_are_pending_at_stripe():
    """cus_m's October minimum (4000) as the engine's item ii_1, on no invoice yet:
    - acknowledged: Stripe holds it for the next invoice, 4000 pending for cus_m's October;
    - failed (Stripe refused it): not at Stripe, nothing pending (H65: status not checked, 4000);
    - of the period starting Nov 1: November's, not October's (H67: `period_start <= Nov 1`, 4000);
    - acknowledged, but a known line carries its key (metering_item) with no item id: Stripe has
      invoiced it, nothing pending (H66: the key not matched, 4000)."""
    got = {}
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        for case in ("acknowledged", "failed", "november", "on_a_line"):
            con.execute("DELETE FROM stripe_invoice_items")
            ledger_item(con, "ii_1", None)
            if case == "failed":
                con.execute("UPDATE stripe_invoice_items SET status = 'failed'")
            elif case == "november":
                con.execute("UPDATE stripe_invoice_items SET period_start = DATE '2026-11-01', "
                            "period_end = DATE '2026-12-01'")
            elif case == "on_a_line":
                pulled_item_line(con, "in_cus_m", "il_item", None, 4000,
                                 metering_item="cus_m|2026-10-01|pro|2026-01|minimum|r1")
            got[case] = inputs.load_engine_items_pending(con, MONTH).rows()
    assert got == {"acknowledged": [("cus_m", PS, 4000)], "failed": [], "november": [], "on_a_line": []}


def test_an_invoices_header_is_that_of_its_latest_pull():
    """in_cus_a was first pulled on Nov 1 00:30 as a draft, then on Nov 2 (PULLED) paid, with the same
    line (1500 calls, 100). Its header is the latest pull's: cus_a's October is closed by in_cus_a,
    paid, 100 of it paid (with in_a0's fee: 4900 + 100 = 5000). Kills H26 (`ORDER BY a.pulled_at ASC`
    in `merged_invoices_sql`: the draft's header, status draft, nothing of in_cus_a's line paid)."""
    early = dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("INSERT INTO stripe_invoices_api SELECT * REPLACE ('draft' AS status, 0 AS amount_paid, "
                    "? AS pulled_at) FROM stripe_invoices_api WHERE invoice_id = 'in_cus_a'", [early])
        con.execute("INSERT INTO stripe_invoice_lines_api SELECT * REPLACE (? AS pulled_at) "
                    "FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_a'", [early])
        invoices = inputs.load_stripe_invoices(con, MONTH, CUS_A_OCTOBER)
    r = invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (r["closing_invoice_id"], r["invoice_status"], r["stripe_total_minor"], r["amount_paid"]) == (
        "in_cus_a", "paid", 5000, 5000)


def test_a_webhook_invoice_of_unknown_completeness_has_its_adjustment():
    """in_cus_c is known from webhooks only, kept before the state recorded lines_complete (NULL): its
    lines count as complete, so its adjustment is computed: total before tax 0 less its line 0 = 0, not
    unknown. Kills H27 (`coalesce(w.lines_complete, false)`: adjustments NULL)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        known_only_from_webhooks(con, "cus_c", "paid", 0, 0, 1000, dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC))
        con.execute("UPDATE stripe_invoices SET lines_complete = NULL WHERE invoice_id = 'in_cus_c'")
        invoices = inputs.load_stripe_invoices(con, MONTH, _periods(("cus_c", PS, PE)))
    r = invoices.filter(customer_id="cus_c").row(0, named=True)
    assert (r["stripe_total_minor"], r["adjustments_minor"], r["invoice_status"]) == (0, 0, "paid")


def test_daily_usage_takes_the_aggregation_the_meter_was_first_rated_with():
    """rated_meters holds two definitions of seats: 'last', first rated Oct 1, and a later 'max' (Oct 20,
    the file edited). The view goes by the first: c1's Oct 7 hours 12 (10:00) then 10 (11:00) have a
    quantity_last of 10. Kills V01 (arg_max: the later 'max', quantity_last NULL)."""
    with warehouse.open_warehouse() as con:
        for definition, at in (('{"aggregation": "last"}', dt.datetime(2026, 10, 1, tzinfo=dt.UTC)),
                               ('{"aggregation": "max"}', dt.datetime(2026, 10, 20, tzinfo=dt.UTC))):
            con.execute("INSERT INTO rated_meters VALUES ('seats', ?, ?, ?)", [definition, definition, at])
        for hour, q in ((10, 12), (11, 10)):
            t = dt.datetime(2026, 10, 7, hour, tzinfo=dt.UTC)
            _hour(con, "c1", "seats", t, q, t, f"e{hour}")
        snapshot = warehouse.publish(con=con)
    assert _read(snapshot, "SELECT quantity_max, quantity_last FROM analytics.daily_usage") == [(D(12), D(10))]


def test_rated_lines_rated_at_is_the_latest_segments():
    """cus_a's 'api calls' rated in two segments (Oct 1 - Oct 15 at Nov 2 00:00, Oct 15 - Nov 1 at Nov 2
    05:00): the line's rated_at is the later, Nov 2 05:00 (UTC, no zone). Kills V06 (min: Nov 2 00:00)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""UPDATE rated_usage SET segment_end = DATE '2026-10-15' WHERE customer_id = 'cus_a'
                       AND charge = 'api calls'""")
        con.execute("""INSERT INTO rated_usage SELECT * REPLACE (DATE '2026-10-15' AS segment_start,
                       DATE '2026-11-01' AS segment_end, ? AS rated_at) FROM rated_usage
                       WHERE customer_id = 'cus_a' AND charge = 'api calls'""", [PULLED + dt.timedelta(hours=5)])
        snapshot = warehouse.publish(con=con)
    assert _read(snapshot, """SELECT amount_minor, len(segments), rated_at FROM analytics.rated_lines
                              WHERE customer_id = 'cus_a' AND charge = 'api calls'""") == [
        (200, 2, dt.datetime(2026, 11, 2, 5))]


def test_stripe_invoice_lines_status_is_the_latest_pulls():
    """in_cus_a was pulled on Nov 1 00:30 as open, then on Nov 2 paid (no webhook state): its line's
    invoice_status is the latest pull's, paid. Kills V08 (`ORDER BY h.pulled_at ASC`: open)."""
    early = dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("INSERT INTO stripe_invoices_api SELECT * REPLACE ('open' AS status, ? AS pulled_at) "
                    "FROM stripe_invoices_api WHERE invoice_id = 'in_cus_a'", [early])
        snapshot = warehouse.publish(con=con)
    assert _read(snapshot, """SELECT line_id, invoice_status FROM analytics.stripe_invoice_lines
                              WHERE invoice_id = 'in_cus_a'""") == [("il_cus_a", "paid")]


def test_invoices_vs_rated_describes_a_period_only_stripe_invoiced():
    """cus_x has no preview of ours; reconciliation found Stripe's October invoice for it
    (extra_in_stripe, 700 jpy, Oct 1 - Nov 1): the row carries the reconciliation's period end and
    currency, our total NULL. Kills V11 (the preview's currency only: NULL) and V14 (the preview's period
    end only: NULL)."""
    with warehouse.open_warehouse() as con:
        con.execute("""INSERT INTO invoice_reconciliation (billing_month, customer_id, period_start, period_end,
                       currency, our_total_minor, stripe_total_minor, amount_diff_minor, tolerance_minor, status,
                       reason, reconciled_at) VALUES (?, 'cus_x', ?, ?, 'jpy', NULL, 700, 700, 1, 'extra_in_stripe',
                       'r', ?)""", [MONTH, PS, PE, PULLED])
        snapshot = warehouse.publish(con=con)
    assert _read(snapshot, """SELECT customer_id, period_start, period_end, currency, our_total_minor,
                              stripe_total_minor, reconciliation_status FROM analytics.invoices_vs_rated""") == [
        ("cus_x", PS, PE, "jpy", None, 700, "extra_in_stripe")]


def test_an_invoice_whose_credit_falls_on_another_periods_lines_is_not_credited_here():
    """in_cus_c (paid) bills October's 1000 calls at 0 and November's fee in advance, 1900 (line from
    Nov 1), with a 500 credit note before payment: the fee line takes min(1900, 500) = 500, October's
    zero line nothing. October's row: credit_notes_minor 0 and no credited invoice (empty). Kills H61
    (credited_invoice_ids without `credit != 0`: 'in_cus_c')."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('il_c_fee_nov' AS line_id, NULL AS meter, "
                    "1 AS quantity_decimal, 1900 AS amount, TIMESTAMPTZ '2026-11-01 00:00:00+00' AS period_start, "
                    "TIMESTAMPTZ '2026-12-01 00:00:00+00' AS period_end) "
                    "FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_c'")
        invoice_total_is_its_lines(con, "in_cus_c")
        con.execute("UPDATE stripe_invoices_api SET pre_payment_credit_notes_amount = 500, amount_due = 1400, "
                    "amount_paid = 1400 WHERE invoice_id = 'in_cus_c'")
        invoices = inputs.load_stripe_invoices(con, MONTH, _periods(("cus_c", PS, PE)))
    r = invoices.filter(customer_id="cus_c").row(0, named=True)
    assert (r["stripe_total_minor"], r["credit_notes_minor"], r["credited_invoice_ids"] or "") == (0, 0, "")


def test_an_invoice_priced_by_our_price_is_ours_whatever_subscription_it_names():
    """cus_b is mapped to sub_b, yet in_cus_b names sub_b_old (a subscription the sync never recorded,
    say one Stripe replaced): its api_calls line was priced by price_api, one of our prices
    (stripe_objects). It bills what we rate, so its 125 counts as cus_b's October and it closes the
    period. Kills H37 (the price test dropped: in_cus_b taken for another product's, cus_b without a
    Stripe row)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _map(con, "cus_b", "sub_b")
        con.execute("INSERT INTO stripe_objects (kind, our_key, stripe_id, synced_at) "
                    "VALUES ('price', 'pro|2026-01|api calls', 'price_api', ?)", [PULLED])
        con.execute("UPDATE stripe_invoices_api SET subscription_id = 'sub_b_old' WHERE invoice_id = 'in_cus_b'")
        con.execute("UPDATE stripe_invoice_lines_api SET price_id = 'price_api' WHERE invoice_id = 'in_cus_b'")
        invoices = inputs.load_stripe_invoices(con, MONTH, _periods(("cus_b", PS, PE)))
    r = invoices.filter(customer_id="cus_b").row(0, named=True)
    assert (r["stripe_total_minor"], r["invoice_ids"], r["closing_invoice_id"]) == (125, "in_cus_b", "in_cus_b")


def test_rated_lines_meter_is_the_latest_segments():
    """cus_a's 'api calls' rated under pro 2026-01 from Oct 1 on meter api_calls, and after a version
    change (Oct 15) under pro 2026-10 on meter api_requests: one line whose meter is the latest
    segment's, api_requests, as its plan version is 2026-10. Kills V07 (arg_min: api_calls)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""UPDATE rated_usage SET segment_end = DATE '2026-10-15' WHERE customer_id = 'cus_a'
                       AND charge = 'api calls'""")
        con.execute("""INSERT INTO rated_usage SELECT * REPLACE (DATE '2026-10-15' AS segment_start,
                       DATE '2026-11-01' AS segment_end, '2026-10' AS plan_version, 'api_requests' AS meter)
                       FROM rated_usage WHERE customer_id = 'cus_a' AND charge = 'api calls'""")
        snapshot = warehouse.publish(con=con)
    assert _read(snapshot, """SELECT plan_version, meter, len(segments) FROM analytics.rated_lines
                              WHERE customer_id = 'cus_a' AND charge = 'api calls'""") == [("2026-10", "api_requests", 2)]


def test_our_invoice_counts_only_the_priced_lines_with_an_amount():
    """cus_a's October preview: 'api calls' 100 and the platform fee 4900 (priced by Stripe, amounts: 2
    lines that round, one of them on no meter), 'tokens large' 50 (Stripe cannot price it: not
    compared, not_in_stripe 50) and a new zero charge 'api calls included' (0: nothing to round).
    our_lines 2, our_unmetered_lines 1. Kills H51 (`rounds` without `amount_minor <> 0`: 3 lines), H52
    (`our_unmetered_lines` without `meter IS NULL`: 2) and H53 (the preview's 3 lines preferred)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO rated_usage SELECT * REPLACE ('api calls included' AS charge, 0 AS amount_minor)
                       FROM rated_usage WHERE customer_id = 'cus_a' AND charge = 'api calls'""")
        ours = inputs.load_our_invoices(con, MONTH)
    r = ours.filter(customer_id="cus_a").row(0, named=True)
    assert (r["our_total_minor"], r["not_in_stripe_minor"], r["our_lines"], r["our_unmetered_lines"]) == (
        5050, 50, 2, 1)


def test_an_open_period_says_whether_the_customer_is_on_a_test_clock_and_which_drafts_are_held():
    """No invoice closes cus_c's or cus_b's October but a draft Stripe will not finalize (in_cus_c and
    in_cus_b: auto_advance false): both periods are open, each naming its held draft. The sync mapped
    cus_c to a subscription on test clock clock_1 and cus_b to one on no clock: cus_c is on a test
    clock, cus_b is not. Kills H38 (`test_clock_id IS NULL`: the flags swapped) and H40 (a held draft
    closing the period: no open row)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO stripe_customer_map (customer_id, stripe_customer_id, subscription_id,
                       test_clock_id, synced_at) VALUES ('cus_c', 'cus_c_stripe', 'sub_c', 'clock_1', ?),
                       ('cus_b', 'cus_b_stripe', 'sub_b', NULL, ?)""", [PULLED, PULLED])
        con.execute("UPDATE stripe_invoices_api SET status = 'draft', auto_advance = false, subscription_id = "
                    "'sub_' || substr(customer_id, 5) WHERE invoice_id IN ('in_cus_b', 'in_cus_c')")
        open_ = inputs.load_open_periods(con, _periods(("cus_b", PS, PE), ("cus_c", PS, PE)))
    assert sorted(open_.select("customer_id", "held_invoice_ids", "voided_invoice_ids", "on_test_clock").rows()) == [
        ("cus_b", "in_cus_b", None, False), ("cus_c", "in_cus_c", None, True)]


def test_an_invoice_closes_only_the_longest_row_it_reaches():
    """cus_z, never rated, has two lines on in_z (paid, Oct 1 - Nov 1): a usage line Oct 1 - Nov 1
    (300) and an item dated Oct 15 - Oct 20 (200): two rows of their own periods, [Oct 1, Nov 1) and
    [Oct 15, Oct 20), both reached by in_z. It closes the longer one only: Oct 1's closing invoice is
    in_z, Oct 15's none. Kills H58 (`ORDER BY p.period_end ASC`: in_z closes the Oct 15 row instead)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("INSERT INTO stripe_invoices_api SELECT * REPLACE ('in_z' AS invoice_id, 'cus_z' AS customer_id) "
                    "FROM stripe_invoices_api WHERE invoice_id = 'in_cus_a'")
        for line, amount, start, end in (("il_z", 300, "2026-10-01", "2026-11-01"),
                                         ("il_z_item", 200, "2026-10-15", "2026-10-20")):
            con.execute(f"""INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('in_z' AS invoice_id,
                            '{line}' AS line_id, 'cus_z' AS customer_id, NULL AS meter, 1 AS quantity_decimal,
                            {amount} AS amount, TIMESTAMPTZ '{start} 00:00:00+00' AS period_start,
                            TIMESTAMPTZ '{end} 00:00:00+00' AS period_end)
                            FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_a'""")
        invoice_total_is_its_lines(con, "in_z")
        invoices = inputs.load_stripe_invoices(con, MONTH, CUS_A_OCTOBER)
    got = sorted(invoices.filter(customer_id="cus_z").select("period_start", "stripe_total_minor",
                                                               "closing_invoice_id").rows())
    assert got == [(PS, 300, "in_z"), (dt.date(2026, 10, 15), 200, None)]


def test_stripe_invoice_lines_names_a_webhook_lines_meter_from_its_event_name():
    """in_cus_c is known from webhooks only; its line landed with no meter but the event name
    metering_api_calls: the view's line is on meter api_calls (source webhook, status paid), as
    reconciliation reads it. Kills V10 (the stored meter only: NULL)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        known_only_from_webhooks(con, "cus_c", "paid", 0, 0, 1000, dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC))
        snapshot = warehouse.publish(con=con)
    assert _read(snapshot, """SELECT customer_id, meter, quantity_decimal, source, invoice_status
                              FROM analytics.stripe_invoice_lines WHERE invoice_id = 'in_cus_c'""") == [
        ("cus_c", "api_calls", D(1000), "webhook", "paid")]
