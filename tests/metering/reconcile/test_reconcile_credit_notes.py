"""Credit notes Stripe issued against an invoice before its payment (`pre_payment_credit_notes_amount`).

Such a credit note leaves the invoice's `total` and `total_excluding_tax` as they were and lowers its
`amount_due` / `amount_remaining`: Stripe collects that much less than its lines say. Sixteenth audit
(F1): the row's paid / remaining were its lines by invoice status, so a 60-cent credit note on a
100-cent open invoice left the row `matched` with 100 remaining, and 0.60 given away unseen.

recon_scenario's October: cus_a's fee 4900 on in_a0 (paid), its usage 100 on in_cus_a; cus_b's usage
125 on in_cus_b (paid; 25 over our 100: the check's 25); cus_c's 0 on in_cus_c (our 100: the check's
100). The check stays at 125 in every test: a credit note is a finance decision, shown, not counted.
"""

from __future__ import annotations

import csv
import datetime as dt
import re

import duckdb
from recon_scenario import MONTH, PULLED, invoice_total_is_its_lines, write_scenario

from metering import warehouse
from metering.reconcile.run import reconcile_period
from metering.reconcile.settings import ReconcileSettings
from metering.reports import write_report
from metering.rules.meters import load_meters

NOV, DEC = dt.datetime(2026, 11, 1, tzinfo=dt.UTC), dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
ROW = ("stripe_total_minor", "amount_due", "amount_paid", "amount_remaining", "credit_notes_minor",
       "stripe_adjustments_minor", "amount_diff_minor", "status")


def _credit_note(con, invoice: str, *, status: str, total: int, credit: int) -> None:
    """`invoice` (total `total`, its lines) as Stripe shows it after a credit note of `credit` before
    payment: total unchanged, amount_due total - credit; open (nothing paid) or paid (the rest paid)."""
    due = total - credit
    paid = due if status == "paid" else 0
    con.execute("""UPDATE stripe_invoices_api SET status = ?, amount_due = ?, amount_paid = ?, amount_remaining = ?,
                   pre_payment_credit_notes_amount = ? WHERE invoice_id = ?""",
                [status, due, paid, due - paid, credit, invoice])


def _october_and_november(rules_dir, *, status: str, credit: int) -> tuple[dict, dict]:
    """cus_a's October and November rows when in_cus_a closes October (usage 100) and bills November's
    fee (4900) in advance, with a credit note of `credit` before payment, the invoice `status`."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('il_nov_fee' AS line_id,
                       'in_cus_a' AS invoice_id, ? AS period_start, ? AS period_end)
                       FROM stripe_invoice_lines_api WHERE line_id = 'il_fee'""", [NOV, DEC])
        invoice_total_is_its_lines(con, "in_cus_a")
        _credit_note(con, "in_cus_a", status=status, total=5000, credit=credit)
        return _row(_reconcile(con, rules_dir), "cus_a"), _row(_reconcile(con, rules_dir, dt.date(2026, 11, 1)), "cus_a")


def _reconcile(con, rules_dir, month: dt.date = MONTH):
    return reconcile_period(con, month, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)


def _row(result, customer: str) -> dict:
    return result.invoices.filter(customer_id=customer).row(0, named=True)


def test_a_credit_note_before_payment_lowers_what_remains_and_is_shown(isolated_env, rules_dir, tmp_path):
    """in_cus_a (usage 100) open, with a 60-cent credit note: Stripe's total 100, amount_due = remaining = 40.
    cus_a's row: lines 4900 (in_a0, paid) + 100 (in_cus_a, open) = 5000; paid 4900, remaining 100 - 60 =
    40, credited 60, due 4900 + 40 = 4940; 5000 = 4900 + 40 + 60. Still matched, the check still 125."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _credit_note(con, "in_cus_a", status="open", total=100, credit=60)
        result = _reconcile(con, rules_dir)
        stored = con.execute("SELECT amount_due, amount_paid, amount_remaining, credit_notes_minor "
                             "FROM invoice_reconciliation WHERE customer_id = 'cus_a'").fetchall()
        files = write_report(con, MONTH, tmp_path / "report")
        snapshot = warehouse.publish(con=con)
    a = _row(result, "cus_a")
    # what Stripe will collect: 40 remaining, not the line's 100
    assert {c: a[c] for c in ("amount_due", "amount_paid", "amount_remaining")} == {
        "amount_due": 4940, "amount_paid": 4900, "amount_remaining": 40}
    assert tuple(a[c] for c in ROW) == (5000, 4940, 4900, 40, 60, 0, 0, "matched")
    assert a["stripe_total_minor"] == a["amount_paid"] + a["amount_remaining"] + a["credit_notes_minor"]
    assert stored == [(4940, 4900, 40, 60)]
    assert a["reason"].endswith(
        "; invoice in_a0,in_cus_a, closing invoice open; the period's lines paid 4900, remaining 40, credited 60 "
        "(credit notes issued before payment on in_cus_a: Stripe collects that much less than its lines; a finance "
        "decision, shown, not counted by the check)")
    # the other rows have no credit note: 0, and their reasons say nothing of one
    assert [(r["customer_id"], r["credit_notes_minor"]) for r in result.invoices.iter_rows(named=True)] == [
        ("cus_a", 60), ("cus_b", 0), ("cus_c", 0)]
    assert not any("credited" in r for r in result.invoices.filter(customer_id="cus_b")["reason"])
    # a finance decision, not a rating difference: the check counts cus_b's 25 and cus_c's 100 only
    assert result.unexplained_minor() == {"usd": 125}

    # the report: Stripe invoice total 5000 + 125 + 0 = paid (4900 + 125 + 0) + remaining 40 + credited 60
    usd = files.data.totals[0]
    assert (usd.stripe_invoice_total_minor, usd.amount_paid_minor, usd.amount_remaining_minor,
            usd.credit_notes_minor, usd.not_due_minor, usd.unexplained_minor) == (5125, 5025, 40, 60, 0, 125)
    with open(files.folder / "summary.csv", newline="") as fh:
        summary = {(m, c): v for m, c, v in list(csv.reader(fh))[1:]}
    assert (summary[("amount_remaining_minor", "usd")], summary[("credit_notes_minor", "usd")]) == ("40", "60")
    with open(files.folder / "invoices.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["customer_id"], r["amount_remaining"], r["credit_notes_minor"]) for r in rows] == [
        ("cus_a", "40", "60"), ("cus_b", "0", "0"), ("cus_c", "0", "0")]
    html = files.html.read_text()
    card = re.search(r'<div class="card" id="credited-usd"><div class="k">([^<]*)</div><div class="v">([^<]*)</div>',
                     html)
    assert card.groups() == ("Credited before payment (credit notes, not counted)", "0.60 USD")
    note = re.search(r'<p class="muted" id="arithmetic-usd">(.*?)</p>', html).group(1)
    assert ("Stripe invoice total 51.25 USD = paid 50.25 USD + remaining 0.40 USD + 0.00 USD on invoices not "
            "finalized + credited 0.60 USD by credit notes issued before payment") in note
    assert "<td>cus_a</td>" in html and '<td class="n">0.60 USD</td>' in html   # the invoices table's column

    # the analytics views list the row's column
    snap = duckdb.connect(str(snapshot), read_only=True)
    try:
        view = snap.execute("""SELECT amount_remaining, credit_notes_minor FROM analytics.invoice_reconciliation
                               WHERE customer_id = 'cus_a'""").fetchall()
        vs_rated = snap.execute("""SELECT amount_paid, amount_remaining, credit_notes_minor
                                   FROM analytics.invoices_vs_rated WHERE customer_id = 'cus_a'""").fetchall()
    finally:
        snap.close()
    assert view == [(40, 60)] and vs_rated == [(4900, 40, 60)]


def test_a_credit_note_on_a_paid_invoice_lowers_what_is_paid(isolated_env, rules_dir):
    """in_cus_b (usage 125) with a 25-cent credit note, then paid: Stripe collected 100. cus_b's row:
    paid 125 - 25 = 100, credited 25, remaining 0; Stripe's pricing is still 25 over ours (the check)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _credit_note(con, "in_cus_b", status="paid", total=125, credit=25)
        result = _reconcile(con, rules_dir)
    b = _row(result, "cus_b")
    assert {c: b[c] for c in ("amount_due", "amount_paid", "amount_remaining")} == {
        "amount_due": 100, "amount_paid": 100, "amount_remaining": 0}
    assert tuple(b[c] for c in ROW) == (125, 100, 100, 0, 25, 0, 25, "amount_mismatch")
    assert "the period's lines paid 100, remaining 0, credited 25 (credit notes issued before payment on in_cus_b" \
        in b["reason"]
    assert result.unexplained_minor() == {"usd": 125}


def test_a_credit_note_counts_once_in_the_period_of_the_invoices_earliest_line(isolated_env, rules_dir):
    """in_cus_a closes October (usage 100) and bills November's fee in advance (4900): a 60-cent credit note
    on it, paid (Stripe collected 4940). It counts in October, whose lines of the invoice (100) cover it;
    not in November, whose fee line on the same invoice shows paid 4900 and nothing credited."""
    october, november = _october_and_november(rules_dir, status="paid", credit=60)
    assert (october["amount_paid"], november["amount_paid"]) == (4940, 4900)
    assert tuple(october[c] for c in ROW) == (5000, 4940, 4940, 0, 60, 0, 0, "matched")
    assert (november["stripe_total_minor"], november["amount_paid"], november["credit_notes_minor"]) == (4900, 4900, 0)
    # every line once, the credit note once: Stripe collected 4900 (in_a0) + 4940 (in_cus_a)
    assert october["amount_paid"] + november["amount_paid"] == 4900 + 4940


def test_a_credit_note_larger_than_a_periods_lines_is_spread_over_the_invoices_periods(isolated_env, rules_dir):
    """The same invoice, open, with a 4950 credit note (Stripe will collect 50). All of it was taken off
    October, whose lines of it are 100: October remaining -4850, and November's 4900 fee shown still
    owed. Spread over the lines in the order they bill: October is credited its 100 (nothing left to
    collect), November 4850 of its 4900 (50 remaining); 50 in all, what Stripe will collect."""
    october, november = _october_and_november(rules_dir, status="open", credit=4950)
    assert (october["amount_remaining"], october["credit_notes_minor"]) == (0, 100)
    assert (november["amount_remaining"], november["credit_notes_minor"]) == (50, 4850)
    assert october["credit_notes_minor"] + november["credit_notes_minor"] == 4950


def test_an_invoice_pulled_before_its_credit_notes_were_read_counts_none(isolated_env, rules_dir):
    """Pulled before migration 055 (pre_payment_credit_notes_amount NULL: unknown), in_cus_a counts no
    credit note (taken as 0) until pulled again: its line is remaining in full, whatever amount_due says."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _credit_note(con, "in_cus_a", status="open", total=100, credit=60)
        con.execute("UPDATE stripe_invoices_api SET pre_payment_credit_notes_amount = NULL")
        a = _row(_reconcile(con, rules_dir), "cus_a")
    assert tuple(a[c] for c in ROW) == (5000, 5000, 4900, 100, 0, 0, 0, "matched")
    assert "credited" not in a["reason"]
