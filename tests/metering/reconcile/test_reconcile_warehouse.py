"""reconcile_period over the real warehouse tables: inputs rolled up correctly, rows written once."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import polars as pl
import pytest
from recon_scenario import (
    EXPECTED,
    EXPECTED_INVOICES,
    MONTH,
    PULLED,
    add_minimum_customer,
    insert_windows,
    invoice_total_is_its_lines,
    known_only_from_webhooks,
    land_invoice_webhook,
    write_scenario,
)

from metering import warehouse
from metering.reconcile.run import ReconcileResult, reconcile_period
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
    """Reconciling before the period's invoice exists (half an hour after the period's end, within the
    grace): pending, not a mismatch."""
    with warehouse.open_warehouse() as con:
        _without_cus_c_invoice(con)
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir),
                                  now=dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.UTC))
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
        known_only_from_webhooks(con, "cus_b", "open", amount=125, paid=0, quantity=1500,
                                  created=dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC))
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
    b = result.usage.filter(customer_id="cus_b").row(0, named=True)
    assert (b["status"], b["amount_diff_minor"], b["invoice_ids"]) == ("amount_mismatch", 25, "in_cus_b")
    b_inv = result.invoices.filter(customer_id="cus_b").row(0, named=True)
    assert (b_inv["invoice_status"], b_inv["amount_remaining"]) == ("open", 125)


def test_a_line_starting_next_month_belongs_to_the_period_that_contains_it(isolated_env, rules_dir):
    """cus_b's price changed on Nov 3 inside a period Oct 15 .. Nov 15: that line is October's."""
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


def _acknowledged_at(con, customer: str, day: int, at: dt.datetime) -> None:
    """When the push recorded Stripe's acknowledgement of a window (`ledger.record_outcomes` sets updated_at)."""
    con.execute("UPDATE stripe_push_ledger SET updated_at = ? WHERE customer_id = ? AND meter = 'api_calls' "
                "AND window_start = ?", [at, customer, dt.datetime(2026, 10, day, tzinfo=dt.UTC)])


def _stripe_billed(con, customer: str, quantity: int, amount: int) -> None:
    con.execute("UPDATE stripe_invoice_lines_api SET quantity_decimal = ?, amount = ? "
                "WHERE customer_id = ? AND meter = 'api_calls'", [quantity, amount, customer])
    invoice_total_is_its_lines(con, f"in_{customer}")


FINALIZED = dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC)   # in_cus_a: created at 00:00, finalized after the 1 h grace


def _billed_1000_of_1500(con, oct2_acknowledged_at: dt.datetime) -> None:
    """cus_a's finalized invoice bills 1000 of its 1500 calls (67 cents); the Oct 1 window was
    acknowledged on Oct 2, the Oct 2 window at `oct2_acknowledged_at`."""
    con.execute("UPDATE stripe_invoices_api SET finalized_at = ? WHERE invoice_id = 'in_cus_a'", [FINALIZED])
    _stripe_billed(con, "cus_a", 1000, 67)
    _acknowledged_at(con, "cus_a", 1, dt.datetime(2026, 10, 2, tzinfo=dt.UTC))
    _acknowledged_at(con, "cus_a", 2, oct2_acknowledged_at)


def test_late_is_only_what_the_ledger_acknowledged_after_the_invoice_was_finalized(isolated_env, rules_dir):
    """cus_a: 1500 calls rated (100 cents), pushed (Oct 1: 1000, Oct 2: 500) and metered by Stripe;
    Stripe's finalized invoice bills 1000 calls for 67 cents (diff -33)."""
    meters = load_meters(rules_dir)
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        # both windows acknowledged before the invoice was finalized (Oct 2's during the grace period):
        # Stripe held all 1500 when it finalized, so nothing explains the 500 it did not bill
        _billed_1000_of_1500(con, dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.UTC))
        on_time = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=meters, now=PULLED)
        # the Oct 2 window acknowledged half an hour after finalization: its 500 calls are late
        _acknowledged_at(con, "cus_a", 2, dt.datetime(2026, 11, 1, 1, 30, tzinfo=dt.UTC))
        late = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=meters, now=PULLED)
        # Stripe billed only 900: the late window covers 500 of the 600 missing, 100 stay unexplained
        _stripe_billed(con, "cus_a", 900, 60)
        partly = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=meters, now=PULLED)

    a = on_time.usage.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (a["our_quantity"], a["pushed_quantity"], a["stripe_quantity"], a["invoiced_quantity"]) == (
        D(1500), D(1500), D(1500), D(1000))
    assert (a["status"], a["explained"], a["amount_diff_minor"]) == ("quantity_mismatch", False, -33)
    assert on_time.unexplained_minor() == {"usd": 125 + 33}
    # the invoice row's -33 is the usage row's: counted once
    a_inv = on_time.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a_inv["status"], a_inv["amount_diff_minor"]) == ("amount_mismatch", -33)

    a = late.usage.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (a["status"], a["explained"], a["amount_diff_minor"]) == ("late_after_finalization", True, -33)
    assert a["reason"].startswith("usage after the invoice was finalized (1 late window(s): 1 acknowledged by Stripe "
                                  "after the invoice was finalized, 500 not on it); ours 1500, pushed 1500")
    assert late.unexplained_minor() == {"usd": 125}

    a = partly.usage.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (a["status"], a["explained"], a["amount_diff_minor"]) == ("quantity_mismatch", False, -40)
    assert a["reason"].endswith("late windows cover at most 500 of the shortfall, worth at most 34 at our price "
                                "(1 late window(s): 1 acknowledged by Stripe after the invoice was finalized, 500 not "
                                "on it)")
    assert partly.unexplained_minor() == {"usd": 125 + 40}


def test_the_finalization_time_of_an_invoice_known_from_webhooks_counts_too(isolated_env, rules_dir):
    """cus_a's usage invoice known only from webhooks (stripe_invoices carries finalized_at)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        known_only_from_webhooks(con, "cus_a", "paid", amount=67, paid=67, quantity=1000,
                                  created=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), finalized_at=FINALIZED)
        _acknowledged_at(con, "cus_a", 1, dt.datetime(2026, 10, 2, tzinfo=dt.UTC))
        _acknowledged_at(con, "cus_a", 2, dt.datetime(2026, 11, 1, 1, 30, tzinfo=dt.UTC))
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
    a = result.usage.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (a["invoice_ids"], a["status"], a["amount_diff_minor"]) == ("in_cus_a", "late_after_finalization", -33)


def _fee_charged(con, amount: int) -> None:
    """Stripe charged cus_a's platform fee (in_a0, billed in advance) at `amount` cents; we rate 4900."""
    con.execute("UPDATE stripe_invoice_lines_api SET amount = ? WHERE line_id = 'il_fee'", [amount])
    invoice_total_is_its_lines(con, "in_a0")   # total and total_excluding_tax: no discount on it
    con.execute("UPDATE stripe_invoices_api SET amount_due = ?, amount_paid = ? WHERE invoice_id = 'in_a0'",
                [amount, amount])


def test_a_flat_fee_difference_fails_the_blocking_check(isolated_env, rules_dir):
    """Stripe charged cus_a a $59 platform fee where we rate $49: no usage row sees it, the invoice row
    does (+1000), and the check counts it on top of the usage rows' 125 (cus_b +25, cus_c -100, whose
    invoice rows carry the same money and add nothing)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _fee_charged(con, 5900)
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(max_unexplained_minor=125),
                                  meters=load_meters(rules_dir), now=PULLED)
    assert {(r["customer_id"], r["meter"]): (r["status"], r["amount_diff_minor"])
            for r in result.usage.iter_rows(named=True)} == EXPECTED
    a_inv = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a_inv["status"], a_inv["our_total_minor"], a_inv["stripe_total_minor"], a_inv["amount_diff_minor"]) == (
        "amount_mismatch", 5050, 6000, 1000)
    assert a_inv["reason"].endswith("; 1000 of it on no meter row (flat fees, other lines)")
    assert result.unexplained_minor() == {"usd": 125 + 1000}
    assert not result.check_passed()          # 1125 > 125; with the fee right, 125 passes (test_threshold_is_inclusive)


def test_reconcile_command_exits_4_on_a_flat_fee_difference(isolated_env, rules_dir, monkeypatch):
    from click.testing import CliRunner

    from metering.cli import cli

    with warehouse.open_warehouse() as con:
        write_scenario(con)
    monkeypatch.setenv("METERING_RECON_MAX_UNEXPLAINED_MINOR", "125")
    ok = CliRunner().invoke(cli, ["reconcile", "--period", "2026-10", "--no-pull"])
    assert ok.exit_code == 0, ok.output
    assert "unexplained 1.25 USD" in ok.output
    with warehouse.open_warehouse() as con:
        _fee_charged(con, 5900)
    bad = CliRunner().invoke(cli, ["reconcile", "--period", "2026-10", "--no-pull"])
    assert bad.exit_code == 4, bad.output
    assert "unexplained 11.25 USD" in bad.output


def test_reconcile_command_takes_the_invoice_grace(isolated_env, rules_dir, monkeypatch):
    """cus_c's invoice never came. Today (long after Nov 1 01:15) it is not_invoiced and its -100 counts:
    unexplained 1.25 USD. With a grace reaching past today it is pending again, and only cus_b's 25
    counts. The environment's grace is what the option overrides."""
    from click.testing import CliRunner

    from metering.cli import cli

    with warehouse.open_warehouse() as con:
        _without_cus_c_invoice(con)
    monkeypatch.setenv("METERING_RECON_MAX_UNEXPLAINED_MINOR", "1000")
    monkeypatch.setenv("METERING_STRIPE_INVOICE_GRACE_SECONDS", "3600")
    args = ["reconcile", "--period", "2026-10", "--no-pull"]
    default = CliRunner().invoke(cli, args)
    assert default.exit_code == 0, default.output
    assert "unexplained 1.25 USD" in default.output
    century = CliRunner().invoke(cli, [*args, "--invoice-grace-seconds", str(100 * 365 * 86400)])
    assert century.exit_code == 0, century.output
    assert "unexplained 0.25 USD" in century.output
    refused = CliRunner().invoke(cli, [*args, "--invoice-grace-seconds", "-1"])
    assert refused.exit_code == 2 and "--invoice-grace-seconds" in refused.output


def test_a_failed_window_beside_a_late_one_is_not_pushed(isolated_env, rules_dir):
    """cus_c: besides its failed Oct 2 window (500 calls), 7 calls on Oct 3 came after the invoice was
    finalized, and the push marked that window late. The late window explains its 7 calls, never the
    500: the row stays not_pushed and its 100 cents count (once, one late window explained them all)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO usage_aggregates (customer_id, meter, dimensions, hour, event_date, quantity,
                       event_count, last_event_time, last_event_id) VALUES ('cus_c', 'api_calls', '{"region":"us"}',
                       TIMESTAMPTZ '2026-10-03 08:00:00+00', DATE '2026-10-03', 7, 7,
                       TIMESTAMPTZ '2026-10-03 08:00:00+00', 'cus_c-3')""")
        con.execute("""INSERT INTO stripe_push_ledger (customer_id, meter, window_start, window_end, revision, value,
                       identifier, idempotency_key, status, attempts, last_error, created_at, window_kind, event_date,
                       event_name, event_timestamp, updated_at) VALUES ('cus_c', 'api_calls',
                       TIMESTAMPTZ '2026-10-03 00:00:00+00', TIMESTAMPTZ '2026-10-04 00:00:00+00', 1, 7, 'cus_c-3',
                       'k-cus_c-3', 'late', 0, 'the invoice for this period is already finalized: report to finance',
                       ?, 'day', DATE '2026-10-03', 'metering_api_calls', TIMESTAMPTZ '2026-10-03 00:00:01+00', ?)""",
                    [PULLED, PULLED])
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
    c = result.usage.filter(customer_id="cus_c").row(0, named=True)
    assert (c["our_quantity"], c["pushed_quantity"], c["stripe_quantity"]) == (D(1507), D(1000), D(1000))
    assert (c["status"], c["explained"], c["amount_diff_minor"]) == ("not_pushed", False, -100)
    assert c["reason"].endswith("; late windows cover at most 7 of the shortfall, worth at most 1 at our price "
                                "(1 late window(s))")
    assert result.unexplained_minor() == {"usd": 125}


def test_ledger_lateness_of_a_last_meter_is_its_last_window(isolated_env):
    """seats (`last`): Oct 3 = 5 acknowledged before the invoice was finalized, Oct 5 = 7 after it, Oct 6
    = 9 marked late. Stripe billed 5 (its value at finalization); 7 - 5 = 2 came after; the late window
    would make it 9: 2 more."""
    from metering.reconcile import inputs
    from metering.rules.meters import Meter

    with warehouse.open_warehouse() as con:
        insert_windows(con, "cus_a", "seats", dt.timedelta(days=1), [
            (dt.datetime(2026, 10, 3, tzinfo=dt.UTC), 5, "acknowledged", dt.datetime(2026, 10, 3, 1, tzinfo=dt.UTC)),
            (dt.datetime(2026, 10, 5, tzinfo=dt.UTC), 7, "acknowledged", dt.datetime(2026, 11, 1, 1, 30, tzinfo=dt.UTC)),
            (dt.datetime(2026, 10, 6, tzinfo=dt.UTC), 9, "late", PULLED)])
        periods = pl.DataFrame([dict(customer_id="cus_a", period_start=MONTH, period_end=dt.date(2026, 11, 1))])
        finalized = pl.DataFrame([dict(customer_id="cus_a", meter="seats", period_start=MONTH, finalized=True,
                                       finalized_at=FINALIZED)])
        meters = {"seats": Meter(name="seats", aggregation="last", unit="seat", value="value")}
        pushed = inputs.load_pushed(con, MONTH, meters, periods, finalized=finalized).row(0, named=True)
        draft = inputs.load_pushed(con, MONTH, meters, periods).row(0, named=True)
    assert (pushed["pushed_quantity"], pushed["late_windows"], pushed["late_quantity"]) == (D(7), 1, D(2))
    assert (pushed["late_acked_windows"], pushed["late_acked_quantity"]) == (1, D(2))
    # without a finalized invoice nothing was acknowledged late
    assert (draft["late_acked_windows"], draft["late_acked_quantity"], draft["late_quantity"]) == (0, D(0), D(2))


LONG_AFTER = dt.datetime(2027, 3, 1, tzinfo=dt.UTC)   # four months after the October periods closed


@pytest.mark.parametrize("now", [PULLED, LONG_AFTER])
def test_a_voided_invoice_is_money_stripe_will_never_collect(isolated_env, rules_dir, now):
    """cus_a's usage invoice in_cus_a (1500 calls for 100) was voided; in_a0 (the fee, 4900) stands. The
    period has no invoice and never will: not `pending` (explained, forever) but not_invoiced at once,
    naming in_cus_a. The check counts 25 (cus_b) + 100 (cus_c) + 100 (cus_a's calls) = 225; the
    invoice row's -100 (Stripe 4900 vs ours 5050 - 50) is the usage row's, not counted again."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET status = 'void', amount_paid = 0, amount_due = 0 "
                    "WHERE invoice_id = 'in_cus_a'")
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=now)
    a = result.usage.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (a["status"], a["explained"], a["amount_diff_minor"]) == ("not_invoiced", False, -100)
    assert a["reason"].startswith("Stripe voided in_cus_a and has no other invoice for this period; ours 1500")
    # Stripe prices none of the tokens charge: nothing to invoice, still matched
    t = result.usage.filter(customer_id="cus_a", meter="tokens").row(0, named=True)
    assert (t["status"], t["amount_diff_minor"]) == ("matched", 0)
    a_inv = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a_inv["status"], a_inv["stripe_total_minor"], a_inv["amount_diff_minor"]) == ("not_invoiced", 4900, -100)
    assert a_inv["reason"].startswith("Stripe voided in_cus_a and has no other invoice for this period; our total 5050")
    assert a_inv["reason"].endswith("; all of it on the meter rows")
    assert result.unexplained_minor() == {"usd": 225}
    assert not ReconcileResult(MONTH, result.usage, result.invoices,
                               ReconcileSettings(max_unexplained_minor=224)).check_passed()


def _without_cus_c_invoice(con, on_clock: bool = False) -> None:
    """The scenario with cus_c's invoice never come (no invoice closes its October); cus_c on a Stripe
    test clock when `on_clock`."""
    write_scenario(con)
    con.execute("DELETE FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_c'")
    con.execute("DELETE FROM stripe_invoices_api WHERE invoice_id = 'in_cus_c'")
    if on_clock:
        con.execute("INSERT INTO stripe_customer_map (customer_id, stripe_customer_id, test_clock_id, synced_at) "
                    "VALUES ('cus_c', 'cus_c', 'clock_1', now())")


def test_a_period_stripe_never_invoiced_is_pending_only_until_the_grace_has_passed(isolated_env, rules_dir):
    """cus_c's invoice never came. Stripe could still create it until the period's end (Nov 1 00:00) plus
    the invoice grace (1 h) plus the settle delay (900 s): 01:15. Until then pending; from then on
    not_invoiced, its -100 unexplained (25 + 100 = 125; the invoice row, -100 too, adds nothing)."""
    settings = ReconcileSettings()
    with warehouse.open_warehouse() as con:
        _without_cus_c_invoice(con)
        runs = {at: reconcile_period(con, MONTH, settings=settings, meters=load_meters(rules_dir),
                                     now=dt.datetime(2026, 11, 1, 1, *at, tzinfo=dt.UTC))
                for at in ((14, 59), (15, 0))}
    before, after = runs[(14, 59)], runs[(15, 0)]
    c = after.usage.filter(customer_id="cus_c").row(0, named=True)
    assert (c["status"], c["explained"], c["amount_diff_minor"]) == ("not_invoiced", False, -100)
    assert c["reason"].startswith("no Stripe invoice closes this period by 2026-11-01 01:15 UTC (period end + "
                                  "invoice grace 3600 s + settle delay 900 s); ours 1500, pushed 1000")
    c_inv = after.invoices.filter(customer_id="cus_c").row(0, named=True)
    assert (c_inv["status"], c_inv["amount_diff_minor"]) == ("not_invoiced", -100)
    assert after.unexplained_minor() == {"usd": 125}
    assert before.usage.filter(customer_id="cus_c").select("status", "explained").row(0) == ("pending", True)
    assert before.invoices.filter(customer_id="cus_c")["status"].to_list() == ["pending"]
    assert before.unexplained_minor() == {"usd": 25}


def _map_subscriptions(con) -> None:
    """Each scenario customer mapped to its own subscription `sub_<id>`, as the catalog sync records it."""
    con.execute("UPDATE stripe_invoices_api SET subscription_id = 'sub_' || customer_id")
    for c in ("cus_a", "cus_b", "cus_c"):
        con.execute("INSERT INTO stripe_customer_map (customer_id, stripe_customer_id, subscription_id, synced_at) "
                    "VALUES (?, ?, ?, ?)", [c, f"stripe_{c}", f"sub_{c}", PULLED])


def _with_support_contract(con, customer: str, start: dt.datetime, end: dt.datetime, line_end: dt.datetime) -> None:
    """Each scenario customer mapped to its own subscription `sub_<id>`, and `customer`'s Stripe customer
    also paying a support contract of another product (subscription sub_support): invoice in_support
    (paid, its period [start, end), created at `end`) with one 5000 line, [start, line_end), priced by no
    price of ours."""
    _map_subscriptions(con)
    con.execute("""INSERT INTO stripe_invoices_api (billing_month, invoice_id, customer_id, status, currency,
                   amount_due, amount_paid, amount_remaining, total, total_excluding_tax, period_start, period_end,
                   created, pulled_at, subscription_id) VALUES (?, 'in_support', ?, 'paid', 'usd', 5000, 5000,
                   0, 5000, 5000, ?, ?, ?, ?, 'sub_support')""", [MONTH, customer, start, end, end, PULLED])
    con.execute("""INSERT INTO stripe_invoice_lines_api (billing_month, invoice_id, line_id, customer_id, meter,
                   price_id, quantity_decimal, amount, currency, period_start, period_end, pulled_at) VALUES (?,
                   'in_support', 'il_support', ?, NULL, 'price_support', 1, 5000, 'usd', ?, ?, ?)""",
                [MONTH, customer, start, line_end, PULLED])


def test_another_products_new_subscription_does_not_end_the_wait_for_our_invoice(isolated_env, rules_dir):
    """cus_c's invoice has not come yet at 00:30 (Stripe may still create it until 01:15), but a support
    contract of another product started on its Stripe customer at 00:10, whose first invoice starts after
    our period's end. That invoice closes none of our periods, and it said "Stripe has moved past this
    period" too: the period was not_invoiced and unexplained at once (audit). It waits, pending."""
    with warehouse.open_warehouse() as con:
        _without_cus_c_invoice(con)
        t = dt.datetime(2026, 11, 1, 0, 10, tzinfo=dt.UTC)
        _with_support_contract(con, "cus_c", t, t, dt.datetime(2026, 12, 1, 0, 10, tzinfo=dt.UTC))
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir),
                                  now=dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.UTC))
    c = result.usage.filter(customer_id="cus_c").row(0, named=True)
    assert (c["status"], c["explained"]) == ("pending", True)
    assert result.invoices.filter(customer_id="cus_c")["status"].to_list() == ["pending"]


def test_a_customer_on_a_stripe_test_clock_is_not_judged_by_the_wall_clock(isolated_env, rules_dir):
    """Its Stripe time is the clock's (the main job bills September while the wall clock says
    November): a period past its deadline by the wall clock stays pending; a void still counts."""
    settings = ReconcileSettings()
    later = dt.datetime(2027, 3, 1, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        _without_cus_c_invoice(con, on_clock=True)
        result = reconcile_period(con, MONTH, settings=settings, meters=load_meters(rules_dir), now=later)
        # once Stripe invoices a later period (the clock moved on), it will not close this one
        con.execute("INSERT INTO stripe_invoices_api SELECT * REPLACE ('in_cus_c_dec' AS invoice_id, "
                    "TIMESTAMPTZ '2026-12-01 00:00:00+00' AS period_start, "
                    "TIMESTAMPTZ '2027-01-01 00:00:00+00' AS period_end) "
                    "FROM stripe_invoices_api WHERE invoice_id = 'in_cus_a'")
        con.execute("UPDATE stripe_invoices_api SET customer_id = 'cus_c' WHERE invoice_id = 'in_cus_c_dec'")
        moved_on = reconcile_period(con, MONTH, settings=settings, meters=load_meters(rules_dir), now=later)
    assert result.usage.filter(customer_id="cus_c").select("status", "explained").row(0) == ("pending", True)
    assert result.unexplained_minor() == {"usd": 25}
    c = moved_on.usage.filter(customer_id="cus_c").row(0, named=True)
    assert (c["status"], c["explained"]) == ("not_invoiced", False)
    assert c["reason"].startswith("Stripe invoiced a later period (in_cus_c_dec) but no invoice closes this one")


@pytest.mark.parametrize("status", ["incomplete_expired", "canceled"])
def test_a_period_of_a_customer_whose_subscriptions_all_ended_is_not_invoiced_clock_or_not(
        isolated_env, rules_dir, status):
    """Audit: 13 subscriptions of the main job expired (a first invoice unpaid for 23 h); their periods
    stayed pending, explained, for good: on a test clock only a void or a later invoice counted, and an
    ended subscription leaves neither. Every subscription of the customer ended before the period's end
    (Oct 2 here), no invoice closes it: not_invoiced, its -100 unexplained. A live one keeps it pending."""
    settings = ReconcileSettings()
    later = dt.datetime(2027, 3, 1, tzinfo=dt.UTC)
    with warehouse.open_warehouse() as con:
        _without_cus_c_invoice(con, on_clock=True)
        con.execute("INSERT INTO stripe_subscriptions (subscription_id, customer, customer_id, status, ended_at) "
                    "VALUES ('sub_c1', 'cus_c', 'cus_c', ?, TIMESTAMPTZ '2026-10-02 00:00:00+00')", [status])
        ended = reconcile_period(con, MONTH, settings=settings, meters=load_meters(rules_dir), now=later)
        con.execute("INSERT INTO stripe_subscriptions (subscription_id, customer, customer_id, status) "
                    "VALUES ('sub_c2', 'cus_c', 'cus_c', 'active')")
        live = reconcile_period(con, MONTH, settings=settings, meters=load_meters(rules_dir), now=later)
    c = ended.usage.filter(customer_id="cus_c").row(0, named=True)
    assert (c["status"], c["explained"], c["amount_diff_minor"]) == ("not_invoiced", False, -100)
    assert c["reason"].startswith("the customer's Stripe subscription(s) sub_c1 ended before the period's end")
    assert ended.unexplained_minor() == {"usd": 125}
    assert live.usage.filter(customer_id="cus_c").select("status", "explained").row(0) == ("pending", True)


@pytest.mark.parametrize(("fee", "inv_diff", "unexplained"), [
    (4900, -33, 125),          # the fee is right: the invoice's -33 is the late usage row's, explained
    (4933, 0, 125 + 33),       # +33 on the fee offsets the late -33: the totals agree, the fee does not
    (5900, 967, 125 + 1000),
])
def test_an_explained_usage_shortfall_never_hides_a_flat_fee_overcharge(isolated_env, rules_dir, fee, inv_diff,
                                                                        unexplained):
    """cus_a: Stripe billed 1000 of the 1500 calls (67 cents, diff -33) because the Oct 2 window was
    acknowledged after in_cus_a was finalized (late_after_finalization, explained), and charged the
    platform fee at `fee` where we rate 4900. Whatever the total says, the fee's difference is on no meter
    row: it is amount_mismatch and counted (the check's 125 is cus_b's +25 and cus_c's -100)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _billed_1000_of_1500(con, dt.datetime(2026, 11, 1, 1, 30, tzinfo=dt.UTC))
        _fee_charged(con, fee)
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
    a = result.usage.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (a["status"], a["amount_diff_minor"]) == ("late_after_finalization", -33)
    a_inv = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a_inv["status"], a_inv["amount_diff_minor"]) == ("amount_mismatch", inv_diff)
    offset = f"; {fee - 4900} on no meter row (flat fees, other lines), offset by -33 on the meter rows"
    assert a_inv["reason"].endswith("; all of it on the meter rows" if fee == 4900 else offset)
    assert result.unexplained_minor() == {"usd": unexplained}


def test_an_invoice_rows_tolerance_counts_only_lines_that_round(isolated_env, rules_dir):
    """cus_a has 2 rated lines Stripe prices with an amount (api calls, the fee; tokens is not compared)
    and Stripe 2 lines: tolerance 2 cents. Five more rated lines of 0 (every charge has a line) once made
    it 8, and a fee 8 cents over was within tolerance."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO rated_usage SELECT r.* REPLACE ('unused ' || t.i AS charge, 0 AS amount_minor)
                       FROM rated_usage r, range(5) t(i) WHERE customer_id = 'cus_a' AND charge = 'platform fee'""")
        con.execute("UPDATE invoice_previews SET lines = lines + 5 WHERE customer_id = 'cus_a'")
        _fee_charged(con, 4908)
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
    a = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a["status"], a["amount_diff_minor"], a["tolerance_minor"]) == ("amount_mismatch", 8, 2)
    assert result.unexplained_minor() == {"usd": 125 + 8}


def _reconcile(con, rules_dir, now: dt.datetime = PULLED) -> ReconcileResult:
    return reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=now)


def test_a_late_window_never_excuses_stripes_price(isolated_env, rules_dir):
    """cus_a: we rated 10 more calls (1510, 102 cents) in an Oct 30 window the push marked late (its
    invoice was finalized); Stripe's finalized invoice bills the 1500 others at its own price, 250 (ours:
    100). Lateness explains at most 1 cent of a shortfall (10 of 1510 calls worth 102) and never Stripe
    charging more: +148 is unexplained, counted once (the invoice's +148 is the usage row's)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO usage_aggregates SELECT * REPLACE (TIMESTAMPTZ '2026-10-30 10:00:00+00' AS hour,
                       DATE '2026-10-30' AS event_date, 10 AS quantity, 10 AS event_count) FROM usage_aggregates
                       WHERE customer_id = 'cus_a' AND meter = 'api_calls' AND event_date = DATE '2026-10-01'""")
        con.execute("UPDATE rated_usage SET amount_minor = 102, quantity = 1510 "
                    "WHERE customer_id = 'cus_a' AND meter = 'api_calls'")
        con.execute("UPDATE invoice_previews SET total_minor = 5052 WHERE customer_id = 'cus_a'")
        con.execute("""INSERT INTO stripe_push_ledger SELECT * REPLACE (TIMESTAMPTZ '2026-10-30 00:00:00+00' AS
                       window_start, TIMESTAMPTZ '2026-10-31 00:00:00+00' AS window_end, 10 AS value,
                       'cus_a-30' AS identifier, 'k-cus_a-30' AS idempotency_key, 'late' AS status)
                       FROM stripe_push_ledger WHERE identifier = 'cus_a-1' AND revision = 1""")
        con.execute("UPDATE stripe_invoices_api SET finalized_at = ? WHERE invoice_id = 'in_cus_a'", [FINALIZED])
        _stripe_billed(con, "cus_a", 1500, 250)
        result = _reconcile(con, rules_dir)
    a = result.usage.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    assert (a["our_quantity"], a["pushed_quantity"], a["invoiced_quantity"]) == (D(1510), D(1500), D(1500))
    assert (a["status"], a["explained"], a["amount_diff_minor"]) == ("not_pushed", False, 148)
    a_inv = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a_inv["status"], a_inv["amount_diff_minor"]) == ("amount_mismatch", 148)
    assert result.unexplained_minor() == {"usd": 125 + 148}


def test_a_period_billed_in_another_currency_is_flagged_and_kept_out_of_its_totals(isolated_env, rules_dir):
    """cus_b rated in JPY (1500 calls, 22500 yen); Stripe's invoice bills them 22500 USD cents ($225).
    Neither row is matched; the check counts 22500 yen; the report's JPY totals hold no dollars and the
    USD totals no yen."""
    from metering.reports.data import load_report_data

    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE rated_usage SET currency = 'jpy', amount_minor = 22500 WHERE customer_id = 'cus_b'")
        con.execute("UPDATE invoice_previews SET currency = 'jpy', total_minor = 22500 WHERE customer_id = 'cus_b'")
        con.execute("UPDATE stripe_invoices_api SET total = 22500, amount_due = 22500, amount_paid = 22500 "
                    "WHERE invoice_id = 'in_cus_b'")
        _stripe_billed(con, "cus_b", 1500, 22500)
        result = _reconcile(con, rules_dir)
        report = load_report_data(con, MONTH, settings=ReconcileSettings())
    b = result.usage.filter(customer_id="cus_b").row(0, named=True)
    assert (b["status"], b["currency"], b["amount_diff_minor"], b["stripe_amount_minor"]) == (
        "currency_mismatch", "jpy", -22500, None)
    b_inv = result.invoices.filter(customer_id="cus_b").row(0, named=True)
    assert (b_inv["status"], b_inv["stripe_total_minor"], b_inv["amount_paid"]) == ("currency_mismatch", None, None)
    assert result.unexplained_minor() == {"usd": 100, "jpy": 22500}
    totals = {t.currency: t for t in report.totals}
    assert (totals["jpy"].rated_minor, totals["jpy"].invoiced_minor, totals["jpy"].stripe_invoice_total_minor,
            totals["jpy"].amount_paid_minor, totals["jpy"].unexplained_minor) == (22500, 0, 0, 0, 22500)
    # usd: cus_a and cus_c only (rated 100 + 50 + 100, invoiced 100 + 0 on meter rows; their periods'
    # lines on paid invoices: cus_a's usage 100 and fee 4900 (in_a0), cus_c's 0)
    assert (totals["usd"].rated_minor, totals["usd"].invoiced_minor, totals["usd"].amount_paid_minor) == (
        250, 100, 100 + 4900)
    assert report.status_counts()["currency_mismatch"] == 1 and report.invoice_status_counts()["currency_mismatch"] == 1


def test_a_period_billed_in_two_currencies_names_each_currencys_amount_and_adds_none_up(isolated_env, rules_dir):
    """cus_b rated in JPY (1500 calls, 22500 yen). Stripe billed 1000 of them on in_cus_b at 22500 USD cents
    and 500 on a second invoice at 7500 yen. 22500 cents + 7500 yen is no amount in any currency: the reasons
    name each currency's own sum (they once said "30000 jpy,usd minor units", paid 30000)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE rated_usage SET currency = 'jpy', amount_minor = 22500 WHERE customer_id = 'cus_b'")
        con.execute("UPDATE invoice_previews SET currency = 'jpy', total_minor = 22500 WHERE customer_id = 'cus_b'")
        _stripe_billed(con, "cus_b", 1000, 22500)
        con.execute("""INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('in_cus_b2' AS invoice_id,
                       'il_b2' AS line_id, 500 AS quantity_decimal, 7500 AS amount, 'jpy' AS currency)
                       FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_b' AND meter = 'api_calls'""")
        con.execute("""INSERT INTO stripe_invoices_api SELECT * REPLACE ('in_cus_b2' AS invoice_id, 'jpy' AS currency)
                       FROM stripe_invoices_api WHERE invoice_id = 'in_cus_b'""")
        invoice_total_is_its_lines(con, "in_cus_b2")
        result = _reconcile(con, rules_dir)
    b = result.usage.filter(customer_id="cus_b").row(0, named=True)
    assert (b["status"], b["invoice_ids"], b["stripe_amount_minor"]) == ("currency_mismatch", "in_cus_b,in_cus_b2", None)
    assert b["reason"].startswith("Stripe invoiced 7500 jpy + 22500 usd minor units, we rated 22500 jpy minor units: "
                                  "two currencies are not compared")
    b_inv = result.invoices.filter(customer_id="cus_b").row(0, named=True)
    assert (b_inv["status"], b_inv["stripe_total_minor"], b_inv["amount_paid"]) == ("currency_mismatch", None, None)
    assert b_inv["reason"].startswith(
        "Stripe billed this period in jpy,usd: 7500 jpy + 22500 usd minor units (invoice in_cus_b,in_cus_b2 paid), "
        "we rated 22500 jpy minor units: two currencies are not compared")
    # still all of our 22500 yen counts, and nothing in dollars: cus_a's usd 100 as in the test above
    assert result.unexplained_minor() == {"usd": 100, "jpy": 22500}


def _zero_lines_and_fee(con, fee: int, *, zero_lines: bool) -> None:
    """cus_a's other charges rated 0 (storage, seats, active users: every charge has a line), Stripe's
    period-end invoice lists them at 0 too (`zero_lines`), and Stripe charges the platform fee at `fee`."""
    for charge, meter in (("storage", "storage_gb"), ("seats", "seats"), ("active users", "active_users")):
        con.execute(f"""INSERT INTO rated_usage SELECT * REPLACE ('{charge}' AS charge, '{meter}' AS meter,
                        0 AS quantity, 0 AS billable_quantity, 0 AS amount_minor)
                        FROM rated_usage WHERE customer_id = 'cus_a' AND charge = 'api calls'""")
        if zero_lines:
            con.execute(f"""INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('il_{meter}' AS line_id,
                            '{meter}' AS meter, 0 AS quantity_decimal, 0 AS amount)
                            FROM stripe_invoice_lines_api WHERE line_id = 'il_cus_a'""")
    _fee_charged(con, fee)


@pytest.mark.parametrize(("fee", "zero_lines"), [(4904, True), (4902, False), (4902, True)])
def test_a_fee_cents_over_is_not_hidden_by_lines_that_cannot_round(isolated_env, rules_dir, fee, zero_lines):
    """cus_a's fee is the one line that differs (every metered line matches exactly). Stripe's 3 zero-
    amount metered lines once made the invoice's tolerance 5 (a fee 4 over passed); our tokens line,
    left out of the comparison, made it 3 (2 over passed). The fee is judged by the fee lines: 1 cent."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _zero_lines_and_fee(con, fee, zero_lines=zero_lines)
        result = _reconcile(con, rules_dir)
    assert result.unexplained_minor() == {"usd": 125 + fee - 4900}
    a_inv = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a_inv["status"], a_inv["amount_diff_minor"], a_inv["tolerance_minor"],
            a_inv["residual_tolerance_minor"]) == ("amount_mismatch", fee - 4900, 2, 1)


def _cancelled_on_oct_20(con, *, subscription_ended: bool) -> None:
    """cus_a's subscription (sub_a) was cancelled on Oct 20 with invoice_now: its final invoice in_cus_a
    bills Oct 1 .. Oct 20 (the 1500 calls, 100 cents, paid). Webhooks told us the subscription ended
    (`subscription_ended`). Our period still ends on Nov 1."""
    cancel = dt.datetime(2026, 10, 20, tzinfo=dt.UTC)
    con.execute("UPDATE stripe_invoices_api SET period_end = ?, created = ?, finalized_at = ?, "
                "subscription_id = 'sub_a' WHERE invoice_id = 'in_cus_a'", [cancel, cancel, cancel])
    con.execute("UPDATE stripe_invoice_lines_api SET period_end = ? WHERE invoice_id = 'in_cus_a'",
                [cancel - dt.timedelta(seconds=1)])
    if subscription_ended:
        con.execute("INSERT INTO stripe_subscriptions (subscription_id, customer_id, status, canceled_at, ended_at) "
                    "VALUES ('sub_a', 'cus_a', 'canceled', ?, ?)", [cancel, cancel])


@pytest.mark.parametrize("clock", [False, True])
def test_the_final_invoice_of_a_cancelled_subscription_closes_the_period(isolated_env, rules_dir, clock):
    """Stripe invoiced and was paid every cent of cus_a's period on the final invoice, which ends when
    the subscription ended (Oct 20), not at the period's end (Nov 1). Once, no invoice 'closed' the
    period: not_invoiced by the wall clock (status and paid blanked: the report's paid lost 100) and
    pending for ever on a test clock."""
    from metering.reports.data import load_report_data

    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _cancelled_on_oct_20(con, subscription_ended=True)
        if clock:
            con.execute("INSERT INTO stripe_customer_map (customer_id, stripe_customer_id, test_clock_id, synced_at) "
                        "VALUES ('cus_a', 'cus_stripe_a', 'clock_1', ?)", [PULLED])
        result = _reconcile(con, rules_dir, now=LONG_AFTER if clock else PULLED)
        paid = {t.currency: t.amount_paid_minor for t in load_report_data(con, MONTH).totals}
    a_inv = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a_inv["status"], a_inv["amount_diff_minor"], a_inv["invoice_status"], a_inv["amount_paid"]) == (
        "matched", 0, "paid", 100 + 4900)
    assert result.usage.filter(customer_id="cus_a", meter="api_calls")["status"].to_list() == ["matched"]
    assert paid == {"usd": 100 + 4900 + 125 + 0}     # cus_a's usage (final invoice) and fee (in_a0), cus_b's, cus_c's
    assert result.unexplained_minor() == {"usd": 125}


def test_an_invoice_ending_mid_period_of_a_running_subscription_closes_nothing(isolated_env, rules_dir):
    """The same invoice while the subscription still runs (no end known): Stripe still owes the
    period's invoice; after the grace it is not_invoiced, as before."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _cancelled_on_oct_20(con, subscription_ended=False)
        result = _reconcile(con, rules_dir)
    assert result.invoices.filter(customer_id="cus_a")["status"].to_list() == ["not_invoiced"]


@pytest.mark.parametrize("total, before_tax, counted", [
    (110, 100, 0),    # a 10% tax: Stripe's to compute, the engine rates none; no difference to explain
    (99, 90, -10),    # a 10 discount under the same tax: 10 less than its lines, counted
    (90, None, None),  # pulled before total_excluding_tax was kept: its total may hold tax, nothing compared
])
def test_an_invoices_tax_is_no_difference_but_its_discount_is(isolated_env, rules_dir, total, before_tax, counted):
    """`total` includes tax; `total_excluding_tax` is after discounts and before tax, like nothing the
    lines hold but the discount. Comparing the total made every taxed invoice an amount_mismatch. In the
    unknown case cus_a's fee invoice in_a0 was pulled before the field too (else it alone is compared: 0)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con, total_excluding_tax=None if before_tax is not None else {"in_a0": None})
        con.execute("UPDATE stripe_invoices_api SET total = ?, total_excluding_tax = ? WHERE invoice_id = 'in_cus_a'",
                    [total, before_tax])
        result = _reconcile(con, rules_dir)
    a_inv = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert a_inv["stripe_adjustments_minor"] == counted
    assert result.unexplained_minor() == {"usd": 125 + abs(counted or 0)}


def test_a_coupon_that_zeroes_the_invoice_is_counted(isolated_env, rules_dir):
    """A 100% coupon on in_cus_a: its total and amount due are 0, its line still says 100 (line amounts
    are before discounts). Stripe collects 100 less than we rated: amount_mismatch, 100 counted."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET total = 0, total_excluding_tax = 0, amount_due = 0, "
                    "amount_paid = 0, amount_remaining = 0 WHERE invoice_id = 'in_cus_a'")
        result = _reconcile(con, rules_dir)
        assert result.unexplained_minor() == {"usd": 125 + 100}
        stored = con.execute("SELECT stripe_adjustments_minor FROM invoice_reconciliation "
                             "WHERE customer_id = 'cus_a'").fetchall()
    a_inv = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a_inv["status"], a_inv["amount_diff_minor"], a_inv["stripe_adjustments_minor"]) == (
        "amount_mismatch", 0, -100)
    assert "Stripe's invoice in_cus_a totals 100 less than its lines" in a_inv["reason"]
    assert stored == [(-100,)]
    assert result.unexplained_minor() == {"usd": 125 + 100}


def test_the_adjustment_check_is_on_for_every_invoice_the_fixture_builds(isolated_env, rules_dir):
    """The fixture writes each invoice's total_excluding_tax (the sum of its lines unless a test gives its
    own), so every closing invoice is compared with its lines: 0 where nothing is on the invoice (never
    NULL, which would mean the comparison was skipped), and a 500 coupon on in_cus_m (lines 6000, total
    before tax 5500) is found: -500, amount_mismatch although the totals agree, and counted."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con, total_excluding_tax=6000 - 500)
        before_tax = dict(con.execute("SELECT invoice_id, total_excluding_tax FROM stripe_invoices_api").fetchall())
        result = _reconcile(con, rules_dir)
    assert before_tax == {"in_cus_a": 100, "in_cus_b": 125, "in_cus_c": 0, "in_a0": 4900, "in_cus_m": 5500}
    adjustments = {r["customer_id"]: r["stripe_adjustments_minor"] for r in result.invoices.iter_rows(named=True)}
    assert adjustments == {"cus_a": 0, "cus_b": 0, "cus_c": 0, "cus_m": -500}
    inv = {r["customer_id"]: (r["status"], r["amount_diff_minor"]) for r in result.invoices.iter_rows(named=True)}
    assert inv == {**EXPECTED_INVOICES, "cus_m": ("amount_mismatch", 0)}
    m = result.invoices.filter(customer_id="cus_m").row(0, named=True)
    assert "; Stripe's invoice in_cus_m totals 500 less than its lines before tax" in m["reason"]
    assert result.unexplained_minor() == {"usd": 125 + 500}


def test_the_units_our_lines_priced_leave_the_included_ones_out(isolated_env, rules_dir):
    """What the late quantity's value divides by: the units in the lines' tiers (a tier's units, a
    package's packages x size), not the meter's quantity, which counts the included units too."""
    from metering.reconcile.inputs import load_ours

    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""UPDATE rated_usage SET tiers = '[{"tier":1,"units":"500","unit_amount":"0.2","amount":"100"}]'
                       WHERE customer_id = 'cus_a' AND charge = 'api calls'""")
        con.execute("""UPDATE rated_usage SET tiers = '[{"packages":"2","package_size":"1000","amount":"1"}]'
                       WHERE customer_id = 'cus_b' AND charge = 'api calls'""")
        ours = load_ours(con, MONTH, load_meters(rules_dir))
    priced = {(r["customer_id"], r["meter"]): r["priced_quantity"] for r in ours.iter_rows(named=True)}
    # tokens large is a charge Stripe cannot price: its units are no part of what Stripe's lines bill
    assert priced == {("cus_a", "api_calls"): D(500), ("cus_a", "tokens"): None,
                      ("cus_b", "api_calls"): D(2000), ("cus_c", "api_calls"): None}


def test_a_coupon_on_the_invoice_that_billed_the_fee_in_advance_is_counted_once(isolated_env, rules_dir):
    """cus_a's October fee (4900) was billed in advance on in_a0, the subscription's first invoice; its
    usage on in_cus_a, the invoice that closes October. A 500 coupon on in_a0 made Stripe collect 500
    less than its lines, and only the closing invoice was compared: cus_a stayed matched. Each invoice
    of a period counts in the period its own period starts in (in_a0's: Oct 1), so the coupon counts,
    once: 125 (cus_b) + 500."""
    with warehouse.open_warehouse() as con:
        write_scenario(con, total_excluding_tax={"in_a0": 4900 - 500})
        result = _reconcile(con, rules_dir)
    a = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a["status"], a["amount_diff_minor"], a["stripe_adjustments_minor"]) == ("amount_mismatch", 0, -500)
    assert "; Stripe's invoice in_a0 totals 500 less than its lines before tax" in a["reason"]
    assert result.unexplained_minor() == {"usd": 125 + 500}


def test_a_coupon_still_counts_when_stripe_voids_the_closing_invoice(isolated_env, rules_dir):
    """The same 500 coupon on in_a0, and Stripe voids in_cus_a, which closed October: not_invoiced. The
    coupon vanished from the row (NULL) and from the blocking check, as for a period still to be
    invoiced, though in_a0 is final and Stripe collected 500 less (audit). By hand: cus_b's 125, cus_a's
    usage 100 (never invoiced) and the coupon's 500."""
    with warehouse.open_warehouse() as con:
        write_scenario(con, total_excluding_tax={"in_a0": 4900 - 500})
        con.execute("UPDATE stripe_invoices_api SET status = 'void' WHERE invoice_id = 'in_cus_a'")
        result = _reconcile(con, rules_dir, now=LONG_AFTER)
    a = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a["status"], a["stripe_adjustments_minor"]) == ("not_invoiced", -500)
    assert "; Stripe's invoice in_a0 totals 500 less than its lines before tax" in a["reason"]
    assert result.unexplained_minor() == {"usd": 125 + 100 + 500}


@pytest.mark.parametrize("state_status, status, paid, remaining", [
    # the period's lines: October's fee 4900 (paid, on in_a0) and the usage 100 on in_cus_a
    ("void", "not_invoiced", 4900, 0),   # voided after the pull: the period is not invoiced, counted
    ("paid", "matched", 4900 + 100, 0),  # paid after the pull: the usage line is paid
    ("open", "matched", 4900, 100),      # no further than the pull: the pull's read stands
    ("draft", "matched", 4900, 100),     # behind the pull (an old event): the pull's read stands
])
def test_webhook_state_further_than_the_pull_gives_the_invoices_status(
        isolated_env, rules_dir, state_status, status, paid, remaining):
    """The month's pull saw in_cus_a (which closes cus_a's October) open; Stripe then voided or paid it
    and the webhook landed. A reconciliation without a new pull (--no-pull, or the asset alone) kept the
    pull's `open`, while dunning, which reads the webhook state, said void (audit). The state wins when
    its status is further along; the pull keeps its lines (the state's carry no meter without a price
    snapshot) and its customer (the state's has none here: it comes from metadata only)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET status = 'open', amount_paid = 0, amount_remaining = 100 "
                    "WHERE invoice_id = 'in_cus_a'")
        con.execute("""INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency, amount_due, amount_paid,
                       amount_remaining, total, total_excluding_tax, created, finalized_at, period_start, period_end,
                       state_event_created, lines_complete)
                       VALUES ('in_cus_a', NULL, ?, 'usd', 100, ?, ?, 100, 100,
                       TIMESTAMPTZ '2026-11-01 01:00:00+00', TIMESTAMPTZ '2026-11-01 01:00:00+00',
                       TIMESTAMPTZ '2026-10-01 00:00:00+00', TIMESTAMPTZ '2026-11-01 00:00:00+00',
                       TIMESTAMPTZ '2020-01-01 00:00:00+00', true)""",
                    [state_status, 100 if state_status == "paid" else 0, 0 if state_status in ("paid", "void") else 100])
        con.execute("""INSERT INTO stripe_invoice_lines (invoice_id, line_id, meter, event_name, quantity_decimal,
                       amount, currency, period_start, period_end, source) SELECT invoice_id, line_id, NULL, NULL,
                       quantity_decimal, amount, currency, period_start, period_end, 'webhook'
                       FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_a'""")
        result = _reconcile(con, rules_dir, now=LONG_AFTER)
    a = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a["status"], a["amount_paid"], a["amount_remaining"]) == (status, paid, remaining)
    usage = result.usage.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    if state_status == "void":
        assert "Stripe voided in_cus_a" in a["reason"]
        assert usage["status"] == "not_invoiced"
        assert result.unexplained_minor() == {"usd": 125 + 100}
    else:
        assert (usage["status"], usage["invoiced_quantity"]) == ("matched", D(1500))
        assert result.unexplained_minor() == {"usd": 125}


def test_a_pulled_draft_stays_a_draft_until_pulled_again_whatever_the_state_says(isolated_env, rules_dir):
    """Review: the pull saw in_cus_a a draft with 1500 calls; late usage then landed on it (2000 calls) and
    Stripe finalized and paid it. The state's `paid` with the pull's stale lines made the usage row
    matched at 1500 and blamed the 50 on a discount. A pulled draft stands: pending until re-pulled."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET status = 'draft', auto_advance = true WHERE invoice_id = 'in_cus_a'")
        con.execute("""INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency, amount_due, amount_paid,
                       amount_remaining, total, total_excluding_tax, period_start, period_end, lines_complete)
                       VALUES ('in_cus_a', 'cus_a', 'paid', 'usd', 150, 150, 0, 150, 150,
                       TIMESTAMPTZ '2026-10-01 00:00:00+00', TIMESTAMPTZ '2026-11-01 00:00:00+00', true)""")
        result = _reconcile(con, rules_dir, now=LONG_AFTER)
    a = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a["status"], a["stripe_adjustments_minor"]) == ("pending", 0)   # no 50 blamed on a discount
    assert a["reason"].startswith("invoice still draft")


@pytest.mark.parametrize("auto_advance, status", [(False, "not_invoiced"), (True, "pending"), (None, "pending")])
def test_a_draft_stripe_will_not_finalize_bills_nothing(isolated_env, rules_dir, auto_advance, status):
    """in_cus_a, which closes cus_a's October, is a draft with auto_advance false (an unpaid subscription's
    invoices stay drafts): Stripe will never finalize or collect it. It stayed `pending` for good, counted
    nowhere. Like a void invoice it now closes nothing: not_invoiced, its 100 counted. A draft Stripe will
    finalize (or one whose auto_advance is unknown: pulled before migration 056) is still pending."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET status = 'draft', auto_advance = ?, amount_paid = 0, "
                    "amount_remaining = 100 WHERE invoice_id = 'in_cus_a'", [auto_advance])
        result = _reconcile(con, rules_dir, now=LONG_AFTER)
    a = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert a["status"] == status
    usage = result.usage.filter(customer_id="cus_a", meter="api_calls").row(0, named=True)
    if auto_advance is False:
        assert a["reason"].startswith("Stripe holds in_cus_a as a draft it will not finalize (auto_advance false")
        assert usage["status"] == "not_invoiced"
        assert result.unexplained_minor() == {"usd": 125 + 100}
    else:
        assert a["reason"].startswith("invoice still draft")
        assert result.unexplained_minor() == {"usd": 125}


@pytest.mark.parametrize("now, note", [
    (dt.datetime(2026, 11, 4, 1, tzinfo=dt.UTC), ""),   # 72 h after Nov 1 01:00: not past it yet
    (dt.datetime(2026, 11, 5, 2, 30, tzinfo=dt.UTC),    # 97.5 h, in whole hours
     " for 97 h since Stripe created in_cus_a: Stripe finalizes a draft with auto_advance on within 72 h, so "
     "something holds it: look at the invoice and the webhook endpoint in Stripe")])
def test_a_draft_older_than_stripe_keeps_drafts_says_so(isolated_env, rules_dir, now, note):
    """in_cus_a (created Nov 1 01:00) closes cus_a's October and is still a draft Stripe will finalize.
    Stripe finalizes such a draft an hour after it is created, or within 72 h when its invoice.created
    webhook goes unacknowledged: a draft older than that was `pending` for good with a reason no
    different from an hour-old one's. The row stays pending (Stripe has not billed it), its reason says
    how long and where to look."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET status = 'draft', auto_advance = true, amount_paid = 0, "
                    "amount_remaining = 100 WHERE invoice_id = 'in_cus_a'")
        result = _reconcile(con, rules_dir, now=now)
    a = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert a["status"] == "pending"
    assert a["reason"].startswith(f"invoice still draft{note}; our total ")


def _flat_fee_subscription(con) -> None:
    """cus_f on a subscription with only a licensed price (1900 a month, billed in advance): in_f0 (its
    first invoice, Oct 1) bills October; in_f1 closes October and bills November, with a 500 coupon;
    in_f2 closes November and bills December. Pulled Dec 1."""
    def at(month: int, hour: int = 0) -> dt.datetime:
        return dt.datetime(2026, month, 1, hour, tzinfo=dt.UTC)

    invoices, lines = [], []
    for month, invoice, own, billed, created, before_tax in (
            (10, "in_f0", (at(10), at(10)), (at(10), at(11)), at(10), 1900),
            (10, "in_f1", (at(10), at(11)), (at(11), at(12)), at(11, 1), 1900 - 500),
            (11, "in_f2", (at(11), at(12)), (at(12), dt.datetime(2027, 1, 1, tzinfo=dt.UTC)), at(12, 1), 1900)):
        invoices.append(dict(billing_month=dt.date(2026, month, 1), invoice_id=invoice, customer_id="cus_f", status="paid",
                             currency="usd", amount_due=before_tax, amount_paid=before_tax, amount_remaining=0,
                             total=before_tax, total_excluding_tax=before_tax, period_start=own[0], period_end=own[1],
                             created=created, pulled_at=at(12, 2)))
        lines.append(dict(billing_month=dt.date(2026, month, 1), invoice_id=invoice, line_id=f"il_{invoice}",
                          customer_id="cus_f", meter=None, quantity_decimal=D(1), amount=1900, currency="usd",
                          period_start=billed[0], period_end=billed[1], pulled_at=at(12, 2)))
    warehouse.insert_frame(con, "stripe_invoices_api", pl.DataFrame(invoices, schema_overrides={"total_excluding_tax": pl.Int64}))
    warehouse.insert_frame(con, "stripe_invoice_lines_api", pl.DataFrame(lines, schema_overrides={"meter": pl.String})
                           .with_columns(pl.col("quantity_decimal").cast(pl.Decimal(38, 12))))


def test_an_invoice_counts_its_discount_in_the_period_of_its_earliest_line(isolated_env):
    """in_f1 closes October but holds only November's fee: counted by its own period (October), its
    500 coupon fell in no period (October's run does not see the invoice at all). It counts in the
    period of its earliest line, November, and in November only."""
    from metering.reconcile.inputs import load_stripe_invoices

    with warehouse.open_warehouse() as con:
        _flat_fee_subscription(con)
        runs = {}
        for month, end in ((dt.date(2026, 10, 1), dt.date(2026, 11, 1)), (dt.date(2026, 11, 1), dt.date(2026, 12, 1))):
            periods = pl.DataFrame({"customer_id": ["cus_f"], "period_start": [month], "period_end": [end]})
            runs[month] = load_stripe_invoices(con, month, periods).select(
                "invoice_ids", "stripe_total_minor", "adjustments_minor", "adjusted_invoice_ids").row(0)
    assert runs == {dt.date(2026, 10, 1): ("in_f0", 1900, 0, ""),
                    dt.date(2026, 11, 1): ("in_f1", 1900, -500, "in_f1")}


def test_a_period_only_stripe_billed_shows_no_other_periods_payment(isolated_env):
    """November is billed by Stripe (its fee, in advance, on in_f1) but none of ours is rated, and no
    invoice closes it yet (in_f2 is not pulled). in_f1 closes October: its status is October's. Its
    payment once was too, on both rows (finance's "paid" counted it twice), then on October's alone,
    where it paid November's fee, not October's. Each row now shows its own lines: October's fee paid on
    in_f0 (1900), November's on in_f1 (1900, before in_f1's 500 coupon: November's adjustment)."""
    from metering.reconcile.inputs import load_stripe_invoices

    with warehouse.open_warehouse() as con:
        _flat_fee_subscription(con)
        con.execute("DELETE FROM stripe_invoice_lines_api WHERE invoice_id = 'in_f2'")
        con.execute("DELETE FROM stripe_invoices_api WHERE invoice_id = 'in_f2'")
        november = load_stripe_invoices(con, dt.date(2026, 11, 1), pl.DataFrame(
            schema={"customer_id": pl.String, "period_start": pl.Date, "period_end": pl.Date}))
        october = load_stripe_invoices(con, dt.date(2026, 10, 1), pl.DataFrame(
            {"customer_id": ["cus_f"], "period_start": [dt.date(2026, 10, 1)], "period_end": [dt.date(2026, 11, 1)]}))
    columns = ("invoice_ids", "stripe_total_minor", "closing_invoice_id", "invoice_status", "amount_paid")
    assert november.select(columns).rows() == [("in_f1", 1900, None, None, 1900)]
    assert october.select(columns).rows() == [("in_f0", 1900, "in_f1", "paid", 1900)]


def test_an_invoice_closes_one_row_of_a_customer_at_most(isolated_env):
    """Nothing of ours is rated for cus_f's October. in_f1 (Nov 1) closes October and also carries a
    one-off item Stripe dates Oct 15 - Oct 15: its line makes a row of its own. in_f1 was the closing
    invoice of both rows, and its 1700 paid was counted twice; now it closes the October row alone, and
    each row shows what is paid of its own lines: October's fee (in_f0, 1900), the item (in_f1, 300)."""
    from metering.reconcile.inputs import load_stripe_invoices

    with warehouse.open_warehouse() as con:
        _flat_fee_subscription(con)
        oct15 = dt.datetime(2026, 10, 15, tzinfo=dt.UTC)
        warehouse.insert_frame(con, "stripe_invoice_lines_api", pl.DataFrame([dict(
            billing_month=dt.date(2026, 10, 1), invoice_id="in_f1", line_id="il_item", customer_id="cus_f", meter=None,
            quantity_decimal=D(1), amount=300, currency="usd", period_start=oct15, period_end=oct15,
            pulled_at=dt.datetime(2026, 12, 1, 2, tzinfo=dt.UTC))], schema_overrides={"meter": pl.String})
            .with_columns(pl.col("quantity_decimal").cast(pl.Decimal(38, 12))))
        con.execute("UPDATE stripe_invoices_api SET total = 1700, total_excluding_tax = 1700, amount_due = 1700, "
                    "amount_paid = 1700 WHERE invoice_id = 'in_f1'")
        october = load_stripe_invoices(con, dt.date(2026, 10, 1), pl.DataFrame(
            schema={"customer_id": pl.String, "period_start": pl.Date, "period_end": pl.Date}))
    rows = october.sort("period_start").select("period_start", "invoice_ids", "closing_invoice_id", "amount_paid").rows()
    assert rows == [(dt.date(2026, 10, 1), "in_f0", "in_f1", 1900), (dt.date(2026, 10, 15), "in_f1", None, 300)]


def _one_off_invoice(invoice_id: str, customer: str, amount: int, billing_reason: str, parent: dict | None) -> dict:
    """A paid invoice of Oct 10 with one line of `amount` priced by no price of ours, as webhooks send it."""
    oct10 = int(dt.datetime(2026, 10, 10, tzinfo=dt.UTC).timestamp())
    line = {"id": f"il_{invoice_id}", "object": "line_item", "amount": amount, "currency": "usd", "quantity": 1,
            "quantity_decimal": "1", "period": {"start": oct10, "end": oct10}, "pricing": None,
            "parent": {"type": "invoice_item_details", "subscription_item_details": None,
                       "invoice_item_details": {"invoice_item": f"ii_{invoice_id}", "proration": False,
                                                "subscription": None}}}
    return {"id": invoice_id, "object": "invoice", "status": "paid", "customer": f"stripe_{customer}",
            "currency": "usd", "amount_due": amount, "amount_paid": amount, "amount_remaining": 0, "total": amount,
            "subtotal": amount, "total_excluding_tax": amount, "attempt_count": 1, "created": oct10,
            "period_start": oct10, "period_end": oct10, "billing_reason": billing_reason,
            "metadata": {"customer_id": customer}, "parent": parent,
            "status_transitions": {"finalized_at": oct10 + 3600, "paid_at": oct10 + 3600},
            "lines": {"object": "list", "has_more": False, "data": [line]}}


def test_a_one_off_invoice_known_from_webhooks_is_not_the_periods(isolated_env, rules_dir, tmp_path):
    """An operator's one-off invoice (Stripe's billing_reason `manual`, no parent) of cus_a, a 50000
    workshop, known only from webhooks (not pulled yet). It bills nothing we rate, like another product's
    invoice: the month reconciles as without it. Stripe names no subscription on it in any API version's
    words but `billing_reason`, so the webhook state goes by that. The same invoice under another
    billing_reason (a subscription's invoice sent in an older API version's shape, with no `parent`) is
    not taken for one-off: it counts, as before."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _map_subscriptions(con)
        land_invoice_webhook(con, tmp_path / "landing", _one_off_invoice("in_workshop", "cus_a", 50000, "manual", None))
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
        land_invoice_webhook(con, tmp_path / "landing2",
                             _one_off_invoice("in_old_shape", "cus_b", 300, "subscription_cycle", None))
        counted = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
    inv = {r["customer_id"]: (r["status"], r["amount_diff_minor"]) for r in result.invoices.iter_rows(named=True)}
    assert inv == EXPECTED_INVOICES
    a_inv = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a_inv["stripe_total_minor"], a_inv["invoice_ids"]) == (5000, "in_a0,in_cus_a")
    assert result.unexplained_minor() == {"usd": 125}
    b_inv = counted.invoices.filter(customer_id="cus_b").row(0, named=True)
    assert "in_old_shape" in b_inv["invoice_ids"].split(",")
    assert b_inv["amount_diff_minor"] == EXPECTED_INVOICES["cus_b"][1] + 300


def test_another_products_invoice_is_not_the_periods(isolated_env, rules_dir):
    """cus_a's Stripe customer also pays a support contract (subscription sub_support, another product):
    its Oct 1 - 15 invoice, one 5000 line priced by no price of ours. Its line was counted as the
    period's: cus_a's invoice row became amount_mismatch +5000 (the audit's false positive, which also
    netted against a real shortfall). Invoices of a subscription the sync never mapped the customer to,
    carrying none of our prices or items, bill nothing we rate: the month reconciles as without it."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        support_end = dt.datetime(2026, 10, 15, tzinfo=dt.UTC)
        _with_support_contract(con, "cus_a", dt.datetime(2026, 10, 1, tzinfo=dt.UTC), support_end, support_end)
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
    got = {(r["customer_id"], r["meter"]): (r["status"], r["amount_diff_minor"]) for r in result.usage.iter_rows(named=True)}
    assert got == EXPECTED
    inv = {r["customer_id"]: (r["status"], r["amount_diff_minor"]) for r in result.invoices.iter_rows(named=True)}
    assert inv == EXPECTED_INVOICES
    a_inv = result.invoices.filter(customer_id="cus_a").row(0, named=True)
    assert (a_inv["stripe_total_minor"], a_inv["invoice_ids"]) == (5000, "in_a0,in_cus_a")
    assert result.unexplained_minor() == {"usd": 125}
