"""Gaps found by a hand mutation audit of metering/reports (mutants29).

Covers: a missing quantity shown as an empty cell; a 0.0 match rate for a currency with usage rows but
no clean one; the categories chart's geometry (height, one row per status 26 px apart, bar lengths
scaled to the largest count, each status's own colour, grey for an unknown one); the customer chart's
two bars per row 12 px apart; the customer chart's 25 customers; rows of an unknown currency (NULL,
shown as `?`) in the chart and in the status money; a discrepancy without an amount difference sorted
after those with one; the spreadsheet's bold header, its document date in UTC whatever the zone
`generated_at` was given in, its column widths (values past the first rows, at least 8); the usage rows
of a customer in meter order whatever order the warehouse holds them in; the dunning invoice counts of
a category added up over currencies, a step-less row's empty step (HTML and CSV), the dunning invoices
in invoice order, the dunning_invoices header without a dunning table; the summary's per-currency
metrics in order; the invoices table's numeric columns; the line table's quantity columns in order; a
month without invoice rows; a month without any rows.

Expected values are worked out by hand (see each test's docstring); recon_fixture.ROWS is the month.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from decimal import Decimal

import openpyxl
import polars as pl
from recon_fixture import MONTH, NOW, reconciled_frames

from metering import warehouse
from metering.reconcile.settings import ReconcileSettings
from metering.reports import html as report_html
from metering.reports import svg, write_report
from metering.reports.data import TOTAL_METRICS, CurrencyTotals, ReportData
from metering.reports.money import fmt_quantity
from metering.reports.tables import report_tables
from metering.reports.writers import write_xlsx
from metering.warehouse import replace_rows

LINE_SCHEMA = {"customer_id": pl.String, "meter": pl.String, "currency": pl.String, "our_amount_minor": pl.Int64,
               "not_in_stripe_minor": pl.Int64, "stripe_amount_minor": pl.Int64, "amount_diff_minor": pl.Int64,
               "status": pl.String}


def _data(rows, generated_at: dt.datetime = NOW) -> ReportData:
    """A ReportData holding only usage rows (customer, currency, ours, not in Stripe, Stripe's, diff, status)."""
    lines = pl.DataFrame(
        [dict(customer_id=c, meter="api_calls", currency=cur, our_amount_minor=o, not_in_stripe_minor=nx,
              stripe_amount_minor=s, amount_diff_minor=d, status=st) for c, cur, o, nx, s, d, st in rows],
        schema=LINE_SCHEMA)
    return ReportData(billing_month=MONTH, generated_at=generated_at, settings=ReconcileSettings(), lines=lines,
                      invoices=pl.DataFrame(), dunning=pl.DataFrame(), totals=[])


def _section(html: str, heading_start: str) -> str:
    return html.split("<h2>" + heading_start, 1)[1].split("<h2>", 1)[0]


def _summary(folder) -> dict[tuple[str, str], str]:
    with open(folder / "summary.csv", newline="") as fh:
        return {(m, c): v for m, c, v in list(csv.reader(fh))[1:]}


# --- money text ----------------------------------------------------------------------------------------

def test_a_missing_quantity_is_an_empty_cell_not_zero():
    """A row Stripe has no meter reading for has no quantity: blank, not '0' (which would claim a reading)."""
    assert fmt_quantity(None) == ""


def test_a_currency_with_no_clean_row_has_a_zero_match_rate_not_none():
    """3 usage rows, none matched or within tolerance: 0 * 100 / 3 = 0.0 percent; 'n/a' is only for a
    currency without usage rows."""
    t = CurrencyTotals(currency="usd", **{**{m: 0 for m in TOTAL_METRICS}, "rows": 3, "clean_rows": 0})
    assert t.match_rate == Decimal("0.0")
    assert t.match_rate_text("%") == "0.0%"


# --- chart geometry --------------------------------------------------------------------------------------

def test_categories_chart_rows_heights_lengths_and_colours():
    """label_w 190, bar_w 320, right_w 260, row_h 26: width 190 + 320 + 260 = 770; three statuses -> height
    14 + 3 * 26 = 92; bars at y 8, 34, 60;
    the largest count (4) is the full 320 px, 1 -> 320 // 4 = 80, 0 -> no bar. matched is green
    #3a9d5d, not_invoiced red #b71c1c, a status the chart does not know grey #777."""
    chart = svg.categories({"matched": 4, "not_invoiced": 1, "something_new": 0}, {}, title="t")
    assert 'width="770" height="92" viewBox="0 0 770 92"' in chart
    bars = re.findall(r'<rect x="190" y="(\d+)" width="(\d+)" height="18" fill="([^"]+)"/>', chart)
    assert bars == [("8", "320", "#3a9d5d"), ("34", "80", "#b71c1c"), ("60", "0", "#777")]


def test_customer_chart_draws_ours_above_stripes_in_each_row():
    """row_h 30 from y 40: row 0's bars at 40 (ours) and 52 (Stripe's, 12 below), row 1's at 70 and 82;
    height 40 + 2 * 30 + 10 = 110."""
    chart = svg.ours_vs_stripe([("cus_a", 100, 200), ("cus_b", 50, 50)], "usd", title="t")
    assert 'height="110" viewBox="0 0 770 110"' in chart
    ys = [(int(y), fill) for y, fill in re.findall(r'<rect x="150" y="(\d+)" width="\d+" height="11" fill="([^"]+)"',
                                                   chart)]
    assert ys == [(40, svg.OURS_COLOR), (52, svg.STRIPE_COLOR), (70, svg.OURS_COLOR), (82, svg.STRIPE_COLOR)]


def test_the_customer_chart_keeps_25_customers():
    """26 customers whose differences are 26, 25, ... 1 (cus_26 .. cus_01): the 25 largest are drawn,
    cus_01 (the smallest) is left out, and the note says 'Up to 25'."""
    rows = [(f"cus_{i:02d}", "usd", 100, 0, 100 + i, i, "amount_mismatch") for i in range(1, 27)]
    drawn = [c for c, _o, _s in report_html._customer_chart_rows(_data(rows), "usd")]
    assert drawn == [f"cus_{i:02d}" for i in range(26, 1, -1)]
    assert report_html.CHART_NOTE.format(n=report_html.CHART_CUSTOMERS).startswith("Up to 25 customers per currency")


# --- rows of no currency --------------------------------------------------------------------------------

def test_rows_of_no_currency_are_under_question_mark_in_the_chart_and_status_money():
    """A usage row whose currency is NULL is the totals' currency '?' (data._currency_totals): the '?'
    chart draws it (ours 3.00 - nothing Stripe cannot price, Stripe's 2.50), and the status money
    counts its |difference| 50 under '?', not under None."""
    data = _data([("cus_x", None, 300, 0, 250, -50, "amount_mismatch"),
                  ("cus_y", "usd", 100, 0, 100, 0, "matched")])
    assert report_html._customer_chart_rows(data, "?") == [("cus_x", 300, 250)]
    assert data.status_money() == {"amount_mismatch": {"?": 50}, "matched": {"usd": 0}}


def test_a_discrepancy_without_a_difference_comes_after_those_with_one():
    """Within USD: cus_a +75 first, cus_c -20 (20) next, cus_b (no amount difference: Stripe's amount in
    another currency) last, not first."""
    data = _data([("cus_a", "usd", 300, 0, 375, 75, "amount_mismatch"),
                  ("cus_b", "usd", 300, 0, None, None, "currency_mismatch"),
                  ("cus_c", "usd", 300, 0, 280, -20, "not_pushed"),
                  ("cus_d", "usd", 300, 0, 300, 0, "matched")])
    assert data.discrepancies["customer_id"].to_list() == ["cus_a", "cus_c", "cus_b"]


# --- the spreadsheet ---------------------------------------------------------------------------------------

def test_spreadsheet_header_is_bold_and_dated_in_utc(tmp_path):
    """generated_at 11:30 at +02:00 is 09:30 UTC: the document's created date (xlsxwriter writes it as
    UTC without converting); the header row is bold, the data rows are not."""
    data = _data([], generated_at=dt.datetime(2026, 11, 2, 11, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))))
    path = tmp_path / "r.xlsx"
    write_xlsx(data, {"summary": (["metric", "currency", "value"], [["period", "", "2026-10"]])}, path)
    book = openpyxl.load_workbook(path)
    assert book.properties.created == dt.datetime(2026, 11, 2, 9, 30)
    sheet = book["summary"]
    assert [sheet.cell(1, c).font.b for c in (1, 2, 3)] == [True, True, True]
    assert not sheet.cell(2, 1).font.b


def test_spreadsheet_column_width_counts_values_past_the_first_rows_and_is_at_least_8(tmp_path):
    """Column h: rows 'a', 'b', then 30 x 'c': 30 + 2 = 32 wide (xlsxwriter stores a width w as
    w + 0.7109375: 32.7109375), not the first rows' one character. Column k: header and values of one
    character: 1 + 2 = 3, raised to the minimum 8 (8.7109375)."""
    path = tmp_path / "r.xlsx"
    write_xlsx(_data([]), {"t": (["h", "k"], [["a", "x"], ["b", "y"], ["c" * 30, "z"]])}, path)
    sheet = openpyxl.load_workbook(path)["t"]
    assert (sheet.column_dimensions["A"].width, sheet.column_dimensions["B"].width) == (32.7109375, 8.7109375)


# --- warehouse order -----------------------------------------------------------------------------------------

def test_a_customers_rows_are_in_meter_order_whatever_the_warehouse_order(tmp_path):
    """The usage rows written in reverse order: lines.csv still lists customer, period, then meter
    ascending: cus_a's api_calls before its tokens."""
    usage, invoices = reconciled_frames()
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        replace_rows(con, "usage_reconciliation", "billing_month = ?", [MONTH], usage.reverse())
        replace_rows(con, "invoice_reconciliation", "billing_month = ?", [MONTH], invoices)
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    with open(files.folder / "lines.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["customer_id"], r["meter"]) for r in rows] == [
        ("cus_a", "api_calls"), ("cus_a", "tokens"), ("cus_b", "api_calls"), ("cus_c", "api_calls"),
        ("cus_d", "api_calls"), ("cus_e", "seats"), ("cus_j", "api_calls")]


# --- dunning ---------------------------------------------------------------------------------------------------

def test_dunning_counts_of_a_category_add_up_over_currencies(reconciled_warehouse, tmp_path):
    """Besides in_cus_b (recovered, 3.75 USD), in_cus_j recovered 500 JPY: 2 recovered invoices in the
    summary (1 per currency, added), the amounts per currency: 375 usd, 500 jpy. The fixture's step-less
    recovered row shows an empty step in the Dunning table and in dunning.csv, not 'None'."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute(
            """INSERT INTO dunning_state (invoice_id, customer_id, policy, currency, amount_due, amount_paid,
               amount_remaining, invoice_status, attempt_count, first_failed_at, state, step_index, step_name,
               reason, evaluated_at, policy_hash)
               VALUES ('in_cus_j', 'cus_j', 'default', 'jpy', 500, 500, 0, 'paid', 1,
                       TIMESTAMPTZ '2026-11-01 02:00:00+00', 'recovered', NULL, NULL, 'r',
                       TIMESTAMPTZ '2026-11-02 09:30:00+00', 'h')""")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    summary = _summary(files.folder)
    assert summary[("dunning_invoices_recovered", "")] == "2"
    assert summary[("dunning_recovered_minor", "usd")] == "375"
    assert summary[("dunning_recovered_minor", "jpy")] == "500"
    with open(files.folder / "dunning.csv", newline="") as fh:
        recovered_usd = next(r for r in csv.DictReader(fh) if (r["currency"], r["category"]) == ("usd", "recovered"))
    assert (recovered_usd["step_index"], recovered_usd["step_name"], recovered_usd["invoices"]) == ("", "", "1")
    table = _section(files.html.read_text(), "Dunning")
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", table.split("<details>")[0])]
    assert [r[:4] for r in rows if r] == [["JPY", "recovered", "", "1"], ["USD", "in_dunning", "reminder", "1"],
                                           ["USD", "at_risk", "", "1"], ["USD", "recovered", "", "1"]]


# --- empty months ----------------------------------------------------------------------------------------------

def test_a_month_without_invoice_rows_says_none_and_no_invoices(reconciled_warehouse, tmp_path):
    """Every invoice row deleted: the status line says 'none' (not an empty list) and the table
    'No invoices.'"""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("DELETE FROM invoice_reconciliation")
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    assert "<p>Invoices (customer &times; period) by status: none.</p>" in page
    assert "<p>No invoices.</p>" in _section(page, "Invoices</h2>")


def test_a_month_without_rows_says_so_under_totals(reconciled_warehouse, tmp_path):
    """December has no reconciliation rows: the Totals section says so rather than being empty."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        page = write_report(con, dt.date(2026, 12, 1), tmp_path / "out", generated_at=NOW).html.read_text()
    assert _section(page, "Totals</h2>").strip() == "<p>No reconciliation rows for this period.</p>"


def test_dunning_invoices_are_in_invoice_order(reconciled_warehouse, tmp_path):
    """The fixture writes in_cus_c's dunning row before in_cus_b's: the table lists them by invoice id
    (in_cus_b, in_cus_c) in every file, whatever order the warehouse returns them in."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    with open(files.folder / "dunning_invoices.csv", newline="") as fh:
        assert [r["invoice_id"] for r in csv.DictReader(fh)] == ["in_cus_b", "in_cus_c"]
    table = files.html.read_text().split("<summary>Invoices in the dunning state table</summary>")[1]
    assert table.index("<td>in_cus_b</td>") < table.index("<td>in_cus_c</td>")



def test_without_a_dunning_table_the_dunning_invoices_table_still_has_a_header(reconciled_warehouse, tmp_path):
    """No dunning_state table read (ReportData's dunning is an empty frame without columns, as
    `data._dunning` gives for a warehouse without the table): dunning_invoices is the header invoice_id,
    state alone, not a table without columns, and the page says 'No invoices in dunning.'. With the table
    but no row for the month, the CSV is dunning_state's own header alone."""
    tables = report_tables(_data([]))
    assert tables["dunning_invoices"] == (["invoice_id", "state"], [])
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("DELETE FROM dunning_state")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    with open(files.folder / "dunning_invoices.csv", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    assert rows == [] and header[0] == "invoice_id" and "state" in header
    assert "<p>No invoices in dunning.</p>" in files.html.read_text()


def test_summary_metrics_of_a_currency_are_in_the_documented_order(reconciled_warehouse, tmp_path):
    """summary.csv's USD rows, in order: counts, the meter rows' money, the charges Stripe cannot price,
    the invoice rows' totals, paid / remaining / credited, then at risk, pending, unexplained, and the
    match rate last (a reader's or a script's column order, the XLSX's too). The dunning amounts that
    follow later, also per currency, are left out here."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    with open(files.folder / "summary.csv", newline="") as fh:
        usd = [m for m, c, _v in list(csv.reader(fh))[1:] if c == "usd" and not m.startswith("dunning_")]
    assert usd == [
        "customers", "rows", "clean_rows", "rated_minor", "rated_not_in_stripe_minor", "invoiced_minor",
        "difference_minor", "not_in_stripe_minor", "engine_items_minor", "engine_items_pending_minor",
        "unbilled_minor", "unbilled_pending_minor", "credit_due_minor", "our_invoice_total_minor",
        "stripe_invoice_total_minor", "pending_periods", "pending_our_invoice_total_minor",
        "pending_stripe_invoice_total_minor", "amount_paid_minor", "amount_remaining_minor", "credit_notes_minor",
        "money_at_risk_minor", "pending_minor", "unexplained_minor", "match_rate_percent"]


def test_invoices_table_money_columns_are_numeric_cells(reconciled_warehouse, tmp_path):
    """The invoices table's 16 columns: customer, period start, status, invoices, closing invoice status
    (text, 0-4), then ten money columns (5-14: our total ... credited, right-aligned), then the reason (15)."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    body = _section(page, "Invoices</h2>").split("<tbody>", 1)[1]
    first_row = re.findall(r"<td( class=\"n\")?>", re.search(r"<tr>(.*?)</tr>", body).group(1))
    assert [bool(c) for c in first_row] == [False] * 5 + [True] * 10 + [False]


def test_line_tables_quantities_are_ours_pushed_stripes_meter_invoiced(reconciled_warehouse, tmp_path):
    """cus_d (recon_fixture.ROWS): ours 1500, pushed 1500, Stripe's meter 1600, invoiced 1600; the cells
    after the status, in the headers' order 'our qty', 'pushed qty', 'Stripe meter qty', 'invoiced qty'."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    body = _section(page, "Discrepancies (").split("<tbody>", 1)[1]
    rows = [re.findall(r"<td[^>]*>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", body)]
    cus_d = next(r for r in rows if r[0] == "cus_d")
    assert cus_d[4:8] == ["1500", "1500", "1600", "1600"]
