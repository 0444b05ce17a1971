"""What each headline figure covers, how the cards add up, the month's dunning, the discrepancies' order.

recon_fixture's October (USD: rated 172.00, invoiced 162.76, difference -9.24; money at risk 11.15;
invoices: ours 172.00, Stripe 162.76, paid 159.96, cus_c's 2.80 open), plus, where a test says so:
- cus_p, whose period Stripe has not invoiced yet: a meter row rated 25.00 (pending, -25.00) and an
  invoice row, ours 44.00, Stripe's 19.00 so far (the fee billed in advance, paid);
- cus_a's storage, 3.00 rated on a charge Stripe cannot price (left out of the difference).
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import polars as pl
from recon_fixture import MONTH, NOW

from metering import warehouse
from metering.reports import write_report
from metering.reports.data import load_report_data

SEPTEMBER = dt.date(2026, 9, 1)


def _pending_period_and_a_charge_stripe_cannot_price(con) -> None:
    con.execute("""INSERT INTO usage_reconciliation SELECT * REPLACE ('cus_p' AS customer_id, 2500 AS our_amount_minor,
                   NULL::BIGINT AS stripe_amount_minor, -2500 AS amount_diff_minor, 'pending' AS status,
                   true AS explained) FROM usage_reconciliation WHERE customer_id = 'cus_a' AND meter = 'api_calls'""")
    con.execute("""INSERT INTO usage_reconciliation SELECT * REPLACE ('storage_gb' AS meter, 300 AS our_amount_minor,
                   300 AS not_in_stripe_minor, NULL::BIGINT AS stripe_amount_minor, 0 AS amount_diff_minor)
                   FROM usage_reconciliation WHERE customer_id = 'cus_a' AND meter = 'api_calls'""")
    con.execute("""INSERT INTO invoice_reconciliation SELECT * REPLACE ('cus_p' AS customer_id, 4400 AS our_total_minor,
                   1900 AS stripe_total_minor, -2500 AS amount_diff_minor, 'pending' AS status,
                   NULL AS invoice_status, 1900 AS amount_due, 1900 AS amount_paid, 0 AS amount_remaining)
                   FROM invoice_reconciliation WHERE customer_id = 'cus_a'""")


def _cards(html: str, currency: str) -> dict[str, str]:
    return dict(re.findall(rf'<div class="card" id="([a-z-]+)-{currency}"><div class="k">[^<]*</div>'
                           r'<div class="v">([^<]*)<', html))


def _summary(folder: Path) -> dict[tuple[str, str], str]:
    with open(folder / "summary.csv", newline="") as fh:
        return {(m, c): v for m, c, v in list(csv.reader(fh))[1:]}


def test_every_card_says_what_it_covers_and_the_cards_add_up(reconciled_warehouse, tmp_path):
    """Money at risk held cus_p's 25.00, which only waits for Stripe's invoice (pending, explained): 36.15
    at risk beside 1.15 unexplained. The difference left out the 3.00 Stripe cannot price without a card
    saying so: rated 200.00 - invoiced 162.76 = 37.24, the difference -34.24."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        _pending_period_and_a_charge_stripe_cannot_price(con)
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    usd = next(t for t in files.data.totals if t.currency == "usd")
    assert usd.money_at_risk_minor == 75 + 20 + 20 + 1000     # cus_b, cus_c, cus_d, cus_e: not cus_p
    assert usd.pending_minor == 2500
    assert (usd.rated_minor, usd.rated_not_in_stripe_minor, usd.invoiced_minor, usd.difference_minor) == (
        17200 + 2500 + 300, 300, 16276, -924 - 2500)
    assert usd.difference_minor == usd.invoiced_minor - (usd.rated_minor - usd.rated_not_in_stripe_minor)
    assert (usd.our_invoice_total_minor, usd.pending_periods, usd.pending_our_invoice_total_minor) == (
        17200 + 4400, 1, 4400)
    assert (usd.stripe_invoice_total_minor, usd.pending_stripe_invoice_total_minor) == (16276 + 1900, 1900)
    assert (usd.amount_paid_minor, usd.amount_remaining_minor, usd.not_due_minor) == (15996 + 1900, 280, 0)
    assert usd.unexplained_minor == 115

    summary = _summary(files.folder)
    assert {m: summary[(m, "usd")] for m in ("money_at_risk_minor", "pending_minor", "rated_not_in_stripe_minor",
                                             "pending_periods", "pending_our_invoice_total_minor",
                                             "pending_stripe_invoice_total_minor", "amount_remaining_minor")} == {
        "money_at_risk_minor": "1115", "pending_minor": "2500", "rated_not_in_stripe_minor": "300",
        "pending_periods": "1", "pending_our_invoice_total_minor": "4400",
        "pending_stripe_invoice_total_minor": "1900", "amount_remaining_minor": "280"}
    html = files.html.read_text()
    assert _cards(html, "usd") == {
        "rated": "200.00 USD", "rated-not-in-stripe": "3.00 USD", "invoiced": "162.76 USD",
        "difference": "-34.24 USD", "match-rate": "37.5%", "at-risk": "11.15 USD", "pending": "25.00 USD",
        "unexplained": "1.15 USD", "our-invoice-total": "216.00 USD", "our-invoice-total-pending": "44.00 USD",
        "stripe-invoice-total": "181.76 USD", "stripe-invoice-total-pending": "19.00 USD", "paid": "178.96 USD",
        "remaining": "2.80 USD", "credited": "0.00 USD", "not-in-stripe": "0.00 USD", "engine-items": "0.00 USD",
        "engine-items-pending": "0.00 USD", "unbilled": "0.00 USD", "unbilled-pending": "0.00 USD",
        "credit-due": "0.00 USD"}
    labels = dict(re.findall(r'<div class="card" id="([a-z-]+)-usd"><div class="k">([^<]*)</div>', html))
    assert labels["our-invoice-total-pending"] == "of which 1 period(s) Stripe has not closed"
    assert labels["difference"] == "Difference = invoiced − (rated − cannot price)"
    note = re.search(r'<p class="muted" id="arithmetic-usd">(.*?)</p>', html).group(1)
    assert "difference -34.24 USD = invoiced 162.76 USD − (rated 200.00 USD − 3.00 USD Stripe cannot price" in note
    assert "Stripe invoice total 181.76 USD = paid 178.96 USD + remaining 2.80 USD + 0.00 USD on invoices not" in note


def _dunning(con, invoice: str, customer: str, state: str, remaining: int, paid: int, reason: str = "r") -> None:
    con.execute("""INSERT INTO dunning_state (invoice_id, customer_id, policy, currency, amount_due, amount_paid,
                   amount_remaining, invoice_status, attempt_count, first_failed_at, state, reason, evaluated_at,
                   policy_hash) VALUES (?, ?, 'default', 'usd', ?, ?, ?, 'open', 1,
                   TIMESTAMPTZ '2026-10-01 02:00:00+00', ?, ?, TIMESTAMPTZ '2026-11-02 09:30:00+00', 'h')""",
                [invoice, customer, remaining + paid, paid, remaining, state, reason])


def _stripe_invoice(con, invoice: str, customer: str, status: str, period_start: str, due: int) -> None:
    """A Stripe invoice header (webhook state) whose own period starts at `period_start` (UTC)."""
    con.execute("""INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency, amount_due, amount_paid,
                   amount_remaining, total, period_start, period_end, created)
                   VALUES (?, ?, ?, 'usd', ?, 0, 0, ?, CAST(? AS TIMESTAMPTZ),
                           CAST(? AS TIMESTAMPTZ) + INTERVAL 1 MONTH, CAST(? AS TIMESTAMPTZ) + INTERVAL 1 MONTH)""",
                [invoice, customer, status, due, due, period_start, period_start, period_start])


def _dunning_metrics(data) -> dict[str, str]:
    return {m: v for m, _c, v in data.summary_rows() if m.startswith("dunning_")}


def test_the_dunning_section_is_the_months_own(reconciled_warehouse):
    """in_cus_b closes cus_b's September and bills October's fee in advance, so September's and
    October's invoice rows both list it: it is September's (the first month whose periods it bills).
    in_sep (September only, written off 19.00) is September's; in_cus_c (October only, in dunning,
    2.80) October's; in_elsewhere, in no reconciled month, in neither. October's report once held all
    four, and September's the same: added up, in_cus_b's 3.75 recovered counted twice."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""INSERT INTO invoice_reconciliation SELECT * REPLACE (DATE '2026-09-01' AS billing_month,
                       DATE '2026-09-01' AS period_start, DATE '2026-10-01' AS period_end,
                       'in_cus_b,in_sep' AS invoice_ids) FROM invoice_reconciliation WHERE customer_id = 'cus_b'""")
        _dunning(con, "in_sep", "cus_b", "written_off", 1900, 0)
        _dunning(con, "in_elsewhere", "cus_x", "in_dunning", 999, 0)
        october, september = (load_report_data(con, month, generated_at=NOW) for month in (MONTH, SEPTEMBER))
    assert october.dunning["invoice_id"].to_list() == ["in_cus_c"]
    assert _dunning_metrics(october) == {"dunning_invoices_in_dunning": "1", "dunning_at_risk_minor": "280"}
    assert sorted(september.dunning["invoice_id"].to_list()) == ["in_cus_b", "in_sep"]
    assert _dunning_metrics(september) == {"dunning_invoices_recovered": "1", "dunning_invoices_written_off": "1",
                                           "dunning_recovered_minor": "375", "dunning_written_off_minor": "1900"}


def test_a_void_invoice_is_in_the_month_of_its_own_period_start(reconciled_warehouse):
    """Reconciliation ignores a void invoice's lines, so no month's invoice rows list one: a voided
    invoice in dunning was in no report, and the summary's `void` category in none either. Listed
    nowhere, an invoice is the month of its own period's start in UTC: in_void_oct (50.00 due, from
    2026-10-01 00:00 UTC) is October's; in_void_sep, from 2026-09-30 22:00 UTC (already October 1 in
    the session's Tokyo time), September's. in_cus_c, whose own period starts 2026-09-15, is still
    listed by October's rows only: October's, and not September's too."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        _stripe_invoice(con, "in_void_oct", "cus_v", "void", "2026-10-01 00:00:00+00", 5000)
        _stripe_invoice(con, "in_void_sep", "cus_v", "void", "2026-09-30 22:00:00+00", 700)
        _stripe_invoice(con, "in_cus_c", "cus_c", "open", "2026-09-15 00:00:00+00", 280)
        _dunning(con, "in_void_oct", "cus_v", "void", 5000, 0)
        _dunning(con, "in_void_sep", "cus_v", "void", 700, 0)
        con.execute("SET TimeZone = 'Asia/Tokyo'")
        october, september = (load_report_data(con, month, generated_at=NOW) for month in (MONTH, SEPTEMBER))
    assert sorted(october.dunning["invoice_id"].to_list()) == ["in_cus_b", "in_cus_c", "in_void_oct"]
    assert _dunning_metrics(october) == {
        "dunning_invoices_in_dunning": "1", "dunning_invoices_recovered": "1", "dunning_invoices_void": "1",
        "dunning_at_risk_minor": "280", "dunning_recovered_minor": "375", "dunning_void_minor": "5000"}
    assert september.dunning["invoice_id"].to_list() == ["in_void_sep"]
    assert _dunning_metrics(september) == {"dunning_invoices_void": "1", "dunning_void_minor": "700"}


def test_dunning_invoice_counts_are_the_summarys_categories(reconciled_warehouse, tmp_path):
    """in_cus_a was never chased and Stripe saw it paid (not_in_dunning, reason paid): the finance summary
    files it under `recovered` (3.00 paid) beside in_cus_b (3.75); in_cus_d, never chased and still
    open (below the minimum, 3.20), is `below_minimum`. The invoice counts once went by dunning_state's
    state: 1 recovered and 2 not_in_dunning beside 6.75 recovered, and dunning.csv's 2 recovered."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        _dunning(con, "in_cus_a", "cus_a", "not_in_dunning", 0, 300, reason="paid")
        _dunning(con, "in_cus_d", "cus_d", "not_in_dunning", 320, 0, reason="below_minimum")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    summary = _summary(files.folder)
    assert {m: v for (m, _c), v in summary.items() if m.startswith("dunning_")} == {
        "dunning_invoices_in_dunning": "1", "dunning_invoices_recovered": "2", "dunning_invoices_below_minimum": "1",
        "dunning_at_risk_minor": "280", "dunning_recovered_minor": "675", "dunning_below_minimum_minor": "320"}
    with open(files.folder / "dunning.csv", newline="") as fh:
        counts = {r["category"]: r["invoices"] for r in csv.DictReader(fh)}
    assert counts == {"in_dunning": "1", "at_risk": "1", "recovered": "2", "below_minimum": "1"}


def test_discrepancies_are_sorted_within_their_currency(reconciled_warehouse, tmp_path):
    """510.00 JPY and 0.50 JPY beside the USD rows: by raw minor units 51000 came first, then 10.00 USD,
    0.75 USD, then 50 JPY (not 0.50 of anything) among the cents. Now per currency, in currency order,
    largest |amount| first within each."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        for customer, status, diff in (("cus_k", "amount_mismatch", 51000), ("cus_l", "not_pushed", -50)):
            con.execute(f"""INSERT INTO usage_reconciliation SELECT * REPLACE ('{customer}' AS customer_id,
                            '{status}' AS status, false AS explained, {diff} AS amount_diff_minor)
                            FROM usage_reconciliation WHERE customer_id = 'cus_j'""")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    expected = [("cus_k", "jpy", 51000), ("cus_l", "jpy", -50), ("cus_e", "usd", -1000), ("cus_b", "usd", 75),
                ("cus_c", "usd", -20), ("cus_d", "usd", 20)]
    assert files.data.discrepancies.select("customer_id", "currency", "amount_diff_minor").rows() == expected
    csv_rows = pl.read_csv(files.folder / "discrepancies.csv").select("customer_id", "currency", "amount_diff_minor")
    assert csv_rows.rows() == expected
    section = files.html.read_text().split("Discrepancies (6), per currency, largest amount first")[1].split("<h2>")[0]
    customers = [c for c, _cur, _d in expected]
    assert sorted(customers, key=section.index) == customers
