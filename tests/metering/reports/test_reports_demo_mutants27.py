"""Gaps found by a hand mutation audit of metering/reports (mutants27).

Covers: Stripe's lines on invoices not finalized (`not_due_minor`: credit notes subtracted) and the
arithmetic line that shows it with paid and remaining in their places; the summary's row counts for
every status, zero ones included, in the statuses' order; the summary's settle delay; the invoices
in customer order; which table cells are numeric (right-aligned) and which are not; escaping of a
status, of invoice ids and of dunning_state's text cells; the height of a customer chart with no
rows; quantities stored as text cells in the spreadsheet.

Expected values are worked out by hand from recon_fixture.ROWS (see each test's docstring).
"""

from __future__ import annotations

import csv
import re

import openpyxl
from recon_fixture import MONTH, NOW

from metering import warehouse
from metering.reconcile.reconcile import STATUSES
from metering.reconcile.settings import ReconcileSettings
from metering.reports import svg, write_report
from metering.reports.data import TOTAL_METRICS, CurrencyTotals


def _section(html: str, heading_start: str) -> str:
    return html.split("<h2>" + heading_start, 1)[1].split("<h2>", 1)[0]


def _summary(folder) -> list[list[str]]:
    with open(folder / "summary.csv", newline="") as fh:
        return list(csv.reader(fh))[1:]


# --- money not due --------------------------------------------------------------------------------

def test_lines_on_invoices_not_finalized_leave_out_the_credit_notes():
    """Stripe total 1000 = paid 500 + remaining 200 + credited 100 + 200 on drafts."""
    fields = {m: 0 for m in TOTAL_METRICS}
    t = CurrencyTotals(currency="usd", **{**fields, "stripe_invoice_total_minor": 1000, "amount_paid_minor": 500,
                                         "amount_remaining_minor": 200, "credit_notes_minor": 100})
    assert t.not_due_minor == 200


def test_the_arithmetic_line_adds_paid_remaining_drafts_and_credit_notes(reconciled_warehouse, tmp_path):
    """cus_b's 3.75 USD invoice: 0.25 credited before payment, so 3.50 paid. USD by hand: Stripe total
    162.76 (unchanged); paid = 162.76 - 2.80 (cus_c open) - 0.25 = 159.71; remaining 2.80 (cus_c);
    credited 0.25; on invoices not finalized 162.76 - 159.71 - 2.80 - 0.25 = 0.00."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""UPDATE invoice_reconciliation SET credit_notes_minor = 25, amount_paid = 350
                       WHERE customer_id = 'cus_b'""")
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    note = re.search(r'<p class="muted" id="arithmetic-usd">(.*?)</p>', page).group(1)
    assert ("Invoices: Stripe invoice total 162.76 USD = paid 159.71 USD + remaining 2.80 USD + 0.00 USD on "
            "invoices not finalized + credited 0.25 USD by credit notes") in note


# --- the summary ----------------------------------------------------------------------------------

def test_summary_counts_rows_of_every_status_zeros_included_in_order(reconciled_warehouse, tmp_path):
    """recon_fixture's 7 meter rows: matched 2 (cus_a api_calls, cus_j), within_tolerance 1 (cus_a
    tokens), amount_mismatch 1 (cus_b), not_pushed 1 (cus_c), extra_in_stripe 1 (cus_d),
    late_after_finalization 1 (cus_e); every other status 0, and listed (a zero is a finding too)."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    rows = [(m, v) for m, c, v in _summary(files.folder) if m.startswith("rows_")]
    nonzero = {"matched": 2, "within_tolerance": 1, "amount_mismatch": 1, "not_pushed": 1, "extra_in_stripe": 1,
               "late_after_finalization": 1}
    assert rows == [(f"rows_{s}", str(nonzero.get(s, 0))) for s in STATUSES]
    assert set(nonzero) <= set(STATUSES) and len(STATUSES) > len(nonzero)


def test_summary_settings_rows_are_each_their_own(reconciled_warehouse, tmp_path):
    """Given threshold 115 and settle delay 600 s: the summary holds each in its own row."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW,
                             settings=ReconcileSettings(max_unexplained_minor=115, settle_seconds=600))
    rows = {m: v for m, c, v in _summary(files.folder) if c == ""}
    assert (rows["max_unexplained_minor"], rows["settle_seconds"]) == ("115", "600")


# --- order and cells of the tables ----------------------------------------------------------------

def test_invoices_are_in_customer_order_in_every_file(reconciled_warehouse, tmp_path):
    """recon_fixture's invoice rows (one period each): cus_a, cus_b, cus_c, cus_d, cus_e, cus_j."""
    expected = ["cus_a", "cus_b", "cus_c", "cus_d", "cus_e", "cus_j"]
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    with open(files.folder / "invoices.csv", newline="") as fh:
        assert [r["customer_id"] for r in csv.DictReader(fh)] == expected
    section = _section(files.html.read_text(), "Invoices</h2>")
    assert re.findall(r"<tr><td>(cus_[a-z])</td>", section) == expected


def test_only_number_columns_are_numeric_cells(reconciled_warehouse, tmp_path):
    """A discrepancy row's cells: customer, meter, period start, status, reason are text (class-less
    <td>); the four quantities and three amounts (columns 5 to 11) are right-aligned numbers."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    body = _section(page, "Discrepancies (").split("<tbody>", 1)[1]
    first = re.search(r"<tr>(.*?)</tr>", body).group(1)
    classes = [c for c, _ in re.findall(r'<td( class="n")?>(.*?)</td>', first)]
    assert classes == [""] * 4 + [' class="n"'] * 7 + [""]


def test_a_status_invoice_ids_and_dunning_text_from_the_warehouse_are_escaped(reconciled_warehouse, tmp_path):
    """Text read from the warehouse is shown, never run: cus_b's status set to '<u>odd</u>' (usage and
    invoice rows), cus_c's invoice ids to '<b>in_1</b>,in_cus_c', and in_cus_c's dunning reason to
    '<i>late</i> & more'."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        for table in ("usage_reconciliation", "invoice_reconciliation"):
            con.execute(f"UPDATE {table} SET status = '<u>odd</u>' WHERE customer_id = 'cus_b'")
        con.execute("UPDATE invoice_reconciliation SET invoice_ids = '<b>in_1</b>,in_cus_c' WHERE customer_id = 'cus_c'")
        con.execute("UPDATE dunning_state SET reason = '<i>late</i> & more' WHERE invoice_id = 'in_cus_c'")
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    for tag in ("<u>", "<b>", "<i>"):
        assert tag not in page, tag
    assert ">&lt;u&gt;odd&lt;/u&gt;</span>" in _section(page, "Invoices</h2>")
    assert "<td>&lt;b&gt;in_1&lt;/b&gt;,in_cus_c</td>" in page
    assert "<td>&lt;i&gt;late&lt;/i&gt; &amp; more</td>" in page


# --- charts and spreadsheet -----------------------------------------------------------------------

def test_a_customer_chart_without_rows_is_tall_enough_for_its_no_rows_text():
    """One empty row's height: 40 (legend) + 30 + 10 = 80; the 'no rows' text sits at y = 52, inside."""
    chart = svg.ours_vs_stripe([], "usd", title="t")
    assert 'height="80" viewBox="0 0 770 80"' in chart
    assert '<text x="150" y="52" font-size="12">no rows</text>' in chart


def test_quantities_are_text_cells_in_the_spreadsheet(reconciled_warehouse, tmp_path):
    """Docs: quantities as exact decimal text. cus_a's api_calls: 1500 stays the text '1500', not a number."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    sheet = list(openpyxl.load_workbook(files.xlsx, read_only=True)["lines"].iter_rows(values_only=True))
    h = sheet[0]
    first = sheet[1]
    assert (first[h.index("customer_id")], first[h.index("meter")]) == ("cus_a", "api_calls")
    assert [first[h.index(c)] for c in ("our_quantity", "pushed_quantity", "stripe_quantity",
                                        "invoiced_quantity")] == ["1500"] * 4
    assert first[h.index("our_amount_minor")] == 300     # money: an integer number cell


def test_spreadsheet_columns_are_as_wide_as_their_longest_value_up_to_60(tmp_path):
    """cus_b renamed to a 40-character id and cus_c to a 70-character one: the lines sheet's
    customer_id column is 60 wide (the 70 + 2, capped), and with only the 40-character one 42 (40 + 2,
    not the header's 11 + 2 = 13). xlsxwriter stores a width w as w + 0.7109375 (its padding)."""
    import polars as pl
    from recon_fixture import reconciled_frames

    from metering.warehouse import replace_rows

    widths = []
    for renames in ({"cus_b": "b" * 40}, {"cus_b": "b" * 40, "cus_c": "c" * 70}):
        usage, invoices = (f.with_columns(pl.col("customer_id").replace(renames)) for f in reconciled_frames())
        folder = tmp_path / str(len(renames))
        with warehouse.open_warehouse(folder / "w.duckdb") as con:
            replace_rows(con, "usage_reconciliation", "billing_month = ?", [MONTH], usage)
            replace_rows(con, "invoice_reconciliation", "billing_month = ?", [MONTH], invoices)
            files = write_report(con, MONTH, folder / "out", generated_at=NOW)
        sheet = openpyxl.load_workbook(files.xlsx)["lines"]
        col = [c.value for c in sheet[1]].index("customer_id")
        widths.append(sheet.column_dimensions[openpyxl.utils.get_column_letter(col + 1)].width)
    assert widths == [42.7109375, 60.7109375]


# --- charges Stripe cannot price: rows without unbilled_minor, credit due of a pending period ---------

def test_a_row_reconciled_before_invoice_items_is_unbilled_less_items_and_pending(reconciled_warehouse, tmp_path):
    """cus_b's row has no unbilled_minor (NULL: reconciled before the engine billed invoice items):
    its unbilled is computed, not stripe cannot price 15.00 - items 3.00 - pending at Stripe 5.00 =
    7.00 USD (not 12.00, nor 15.00)."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""UPDATE invoice_reconciliation SET not_in_stripe_minor = 1500, engine_items_minor = 300,
                       engine_items_pending_minor = 500, unbilled_minor = NULL WHERE customer_id = 'cus_b'""")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    usd = next(t for t in files.data.totals if t.currency == "usd")
    assert (usd.not_in_stripe_minor, usd.engine_items_minor, usd.engine_items_pending_minor,
            usd.unbilled_minor, usd.credit_due_minor) == (1500, 300, 500, 700, 0)


def test_credit_due_counts_pending_periods_too(reconciled_warehouse, tmp_path):
    """cus_a's period is pending (Stripe has not closed it) and the engine's items exceed its charges by
    40.00 USD (unbilled -4000): the credit is due whatever the period's state (docs: the sum of the
    negative rows' -unbilled_minor), so the card and the red paragraph say 40.00 USD."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""UPDATE invoice_reconciliation SET status = 'pending', not_in_stripe_minor = 0,
                       engine_items_minor = 4000, engine_items_pending_minor = 0, unbilled_minor = -4000
                       WHERE customer_id = 'cus_a'""")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    usd = next(t for t in files.data.totals if t.currency == "usd")
    assert (usd.unbilled_minor, usd.unbilled_pending_minor, usd.credit_due_minor) == (0, 0, 4000)
    assert "exceed the charges Stripe cannot price by 40.00 USD" in files.html.read_text()
