"""Gaps found by a hand mutation audit of metering/reports (mutants31).

Covers: bar lengths rounded down (only the largest value is the full bar) in both charts; a negative
amount (a credit) draws no bar and does not shrink the other bars' scale; a status label in the
categories chart escaped; the dunning_invoices CSV's header when the warehouse has a dunning_state table
but no row of the month (dunning_state's own columns, not the fallback pair); a spreadsheet column as
wide as its header when the header is the longest cell; discrepancies of one customer with the same
|difference| in meter order; a customer's two periods of one month in period order (usage rows by
period before meter, invoice rows by period); a stored per-row unbilled amount used as stored (not
recomputed); the dunning tables' number cells right-aligned; the "All lines" heading counting every
line; no empty dunning table when the month has no dunning rows; the customer chart's tie broken by
the larger amount of either side. One defect, fixed in the thirty-first session (the test fails on `a65de4b`): a
discrepancy without a currency sorted last where the totals put its '?' first.

Expected values are worked out by hand (see each test's docstring); recon_fixture.ROWS is the month.
"""

from __future__ import annotations

import csv
import re

import openpyxl
import polars as pl
from recon_fixture import MONTH, NOW

from metering import warehouse
from metering.reconcile.settings import ReconcileSettings
from metering.reports import html as report_html
from metering.reports import svg, write_report
from metering.reports.data import ReportData
from metering.reports.writers import write_xlsx


def _section(html: str, heading_start: str) -> str:
    return html.split("<h2>" + heading_start, 1)[1].split("<h2>", 1)[0]


def _bars(chart: str, x: int, height: int) -> list[int]:
    return [int(w) for w in re.findall(rf'<rect x="{x}" y="\d+" width="(\d+)" height="{height}"', chart)]


# --- chart scales at the edges ------------------------------------------------------------------------------

def test_customer_bars_round_down_so_only_the_largest_is_full_width():
    """bar_w 420, maximum 1000: 999 -> 999 * 420 / 1000 = 419.58, drawn 419 (rounded down, never as long
    as the largest); 1000 -> 420; 501 -> 210.42 -> 210."""
    chart = svg.ours_vs_stripe([("cus_a", 999, 1000), ("cus_b", 501, 0)], "usd", title="t")
    assert _bars(chart, 150, 11) == [419, 420, 210, 0]


def test_category_bars_round_down():
    """bar_w 320, largest count 3: 2 -> 2 * 320 / 3 = 213.33, drawn 213; 3 -> 320; 1 -> 106.67 -> 106."""
    chart = svg.categories({"matched": 2, "not_pushed": 3, "amount_mismatch": 1}, {}, title="t")
    assert _bars(chart, 190, 18) == [213, 320, 106]


def test_a_negative_amount_draws_no_bar_and_does_not_change_the_scale():
    """cus_a's ours is a credit of -50.00 USD: no bar (width 0), its label keeps the sign. The scale is the
    largest positive amount, 1000 (cus_b's ours): cus_a's Stripe 100 -> 100 * 420 / 1000 = 42; cus_b
    1000 -> 420 and 500 -> 210 (by the size of the credit, 5000, they would be 8, 84 and 42)."""
    chart = svg.ours_vs_stripe([("cus_a", -5000, 100), ("cus_b", 1000, 500)], "usd", title="t")
    assert _bars(chart, 150, 11) == [0, 42, 420, 210]
    assert re.findall(r'font-size="11">([^<]*)</text>', chart) == ["-50.00 USD", "1.00 USD", "10.00 USD", "5.00 USD"]


def test_a_status_label_is_escaped_in_the_categories_chart():
    """categories() is given the statuses as they are; one carrying markup shows as text."""
    chart = svg.categories({"<b>odd</b>": 1}, {}, title="t")
    assert "<b>" not in chart
    assert 'text-anchor="end">&lt;b&gt;odd&lt;/b&gt;</text>' in chart


def test_the_customer_chart_breaks_a_tie_by_the_larger_amount_of_either_side():
    """Both customers' summed difference is 0: cus_x's only row is a currency mismatch (Stripe billed
    another currency: no Stripe amount, no difference), ours 3.00, Stripe's 0; cus_y matched 2.00 / 2.00.
    The larger of the two amounts ranks: cus_x (300) before cus_y (200); by the smaller (0 vs 200) cus_y
    would come first."""
    lines = pl.DataFrame(
        [dict(customer_id="cus_y", meter="api_calls", currency="usd", our_amount_minor=200, not_in_stripe_minor=0,
              stripe_amount_minor=200, amount_diff_minor=0, status="matched"),
         dict(customer_id="cus_x", meter="api_calls", currency="usd", our_amount_minor=300, not_in_stripe_minor=0,
              stripe_amount_minor=None, amount_diff_minor=None, status="currency_mismatch")],
        schema={"customer_id": pl.String, "meter": pl.String, "currency": pl.String, "our_amount_minor": pl.Int64,
                "not_in_stripe_minor": pl.Int64, "stripe_amount_minor": pl.Int64, "amount_diff_minor": pl.Int64,
                "status": pl.String})
    data = ReportData(billing_month=MONTH, generated_at=NOW, settings=ReconcileSettings(), lines=lines,
                      invoices=pl.DataFrame(), dunning=pl.DataFrame(), totals=[])
    assert report_html._customer_chart_rows(data, "usd") == [("cus_x", 300, 0), ("cus_y", 200, 200)]


# --- the tables the files hold ------------------------------------------------------------------------------

def test_dunning_invoices_csv_of_a_month_without_dunning_rows_has_the_tables_own_header(reconciled_warehouse,
                                                                                        tmp_path):
    """The warehouse has dunning_state but no row of October (all deleted): dunning_invoices.csv is the
    header alone, and that header is dunning_state's columns in the table's order (the fallback
    'invoice_id, state' is only for a warehouse without the table)."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("DELETE FROM dunning_state")
        columns = [c for (c,) in con.execute("SELECT column_name FROM information_schema.columns WHERE "
                                             "table_name = 'dunning_state' ORDER BY ordinal_position").fetchall()]
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    assert len(columns) > 2
    with open(files.folder / "dunning_invoices.csv", newline="") as fh:
        assert list(csv.reader(fh)) == [columns]


def test_a_spreadsheet_column_is_as_wide_as_its_header_when_that_is_longest(tmp_path):
    """Column 'customer_identifier' (19 characters) holding 'a' and 'b': 19 + 2 = 21 wide, stored by
    xlsxwriter as 21 + 0.7109375 = 21.7109375 (not the values' 1 + 2 raised to the minimum 8)."""
    data = ReportData(billing_month=MONTH, generated_at=NOW, settings=ReconcileSettings(), lines=pl.DataFrame(),
                      invoices=pl.DataFrame(), dunning=pl.DataFrame(), totals=[])
    path = tmp_path / "r.xlsx"
    write_xlsx(data, {"t": (["customer_identifier"], [["a"], ["b"]])}, path)
    assert openpyxl.load_workbook(path)["t"].column_dimensions["A"].width == 21.7109375


def test_one_customers_discrepancies_of_the_same_size_are_in_meter_order():
    """cus_a: tokens -20 and api_calls +20 (both |20|), given tokens first: api_calls comes first (the
    meter is the last sort key, ascending), then tokens; cus_b +5 after them."""
    rows = [("cus_a", "tokens", -20), ("cus_b", "api_calls", 5), ("cus_a", "api_calls", 20)]
    lines = pl.DataFrame([dict(customer_id=c, meter=m, currency="usd", amount_diff_minor=d, status="amount_mismatch")
                          for c, m, d in rows])
    data = ReportData(billing_month=MONTH, generated_at=NOW, settings=ReconcileSettings(), lines=lines,
                      invoices=pl.DataFrame(), dunning=pl.DataFrame(), totals=[])
    assert data.discrepancies.select("customer_id", "meter").rows() == [
        ("cus_a", "api_calls"), ("cus_a", "tokens"), ("cus_b", "api_calls")]


def test_a_customers_two_periods_are_in_period_order(reconciled_warehouse, tmp_path):
    """cus_a changed plan on October 15: a second period from 2026-10-15 with a meter 'aaa_calls' (usage)
    and its own invoice row. lines.csv lists cus_a by period first, then meter: (10-01 api_calls),
    (10-01 tokens), (10-15 aaa_calls), not aaa_calls first; invoices.csv cus_a's 10-01 row before its
    10-15 row (inserted in reverse)."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""INSERT INTO usage_reconciliation SELECT * REPLACE (DATE '2026-10-15' AS period_start,
                       'aaa_calls' AS meter) FROM usage_reconciliation WHERE customer_id = 'cus_a' AND meter = 'tokens'""")
        rows = con.execute("SELECT * FROM invoice_reconciliation WHERE customer_id = 'cus_a'").pl()
        con.execute("DELETE FROM invoice_reconciliation WHERE customer_id = 'cus_a'")
        con.execute("INSERT INTO invoice_reconciliation SELECT * REPLACE (DATE '2026-10-15' AS period_start) FROM rows")
        con.execute("INSERT INTO invoice_reconciliation SELECT * FROM rows")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    with open(files.folder / "lines.csv", newline="") as fh:
        got = [(r["period_start"], r["meter"]) for r in csv.DictReader(fh) if r["customer_id"] == "cus_a"]
    assert got == [("2026-10-01", "api_calls"), ("2026-10-01", "tokens"), ("2026-10-15", "aaa_calls")]
    with open(files.folder / "invoices.csv", newline="") as fh:
        periods = [r["period_start"] for r in csv.DictReader(fh) if r["customer_id"] == "cus_a"]
    assert periods == ["2026-10-01", "2026-10-15"]


def test_a_stored_unbilled_amount_is_used_as_stored(reconciled_warehouse, tmp_path):
    """cus_b's row: 15.00 Stripe cannot price, no engine items, and a stored unbilled_minor of 10.00 (the
    reconciliation found 5.00 of it billed elsewhere, say): the unbilled card and summary say 10.00 USD,
    the stored figure, not 15.00 - 0 - 0 recomputed (the formula is only for rows without one, NULL)."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""UPDATE invoice_reconciliation SET not_in_stripe_minor = 1500, engine_items_minor = 0,
                       engine_items_pending_minor = 0, unbilled_minor = 1000 WHERE customer_id = 'cus_b'""")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    usd = next(t for t in files.data.totals if t.currency == "usd")
    assert (usd.not_in_stripe_minor, usd.unbilled_minor) == (1500, 1000)
    assert '<div class="card" id="unbilled-usd"><div class="k">of which unbilled (periods ended)</div>' \
           '<div class="v">10.00 USD</div>' in files.html.read_text()


# --- the HTML's dunning section and headings ----------------------------------------------------------------

def _cells(table: str) -> list[list[tuple[bool, str]]]:
    body = table.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [[(bool(n), c) for n, c in re.findall(r'<td( class="n")?>(.*?)</td>', tr)]
            for tr in re.findall(r"<tr>(.*?)</tr>", body)]


def test_dunning_tables_number_cells_are_right_aligned(reconciled_warehouse, tmp_path):
    """The finance table's invoices and amount (columns 3 and 4) are numbers; currency, category, step are
    text. In the dunning state table only the three money columns are numbers (the conftest's in_cus_c:
    2.80 due, 0.00 paid, 2.80 remaining)."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    finance, details = _section(page, "Dunning").split("<details>", 1)
    first = _cells(finance)[0]
    assert [n for n, _c in first] == [False, False, False, True, True]
    head = re.findall(r"<th>(.*?)</th>", details)
    cus_c = next(r for r in _cells(details) if r[0][1] == "in_cus_c")
    numeric = {head[i]: c for i, (n, c) in enumerate(cus_c) if n}
    assert numeric == {"amount_due": "2.80 USD", "amount_paid": "0.00 USD", "amount_remaining": "2.80 USD"}


def test_the_all_lines_heading_counts_every_line(reconciled_warehouse, tmp_path):
    """recon_fixture's 7 usage rows, 4 of them discrepancies: 'All lines (7)', 'Discrepancies (4)'."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    assert "<h2>All lines (7)</h2>" in page
    assert "<h2>Discrepancies (4), per currency, largest amount first</h2>" in page


def test_a_month_without_dunning_has_no_empty_dunning_table(reconciled_warehouse, tmp_path):
    """No dunning_state row: the Dunning section is its note and 'No invoices in dunning.', no table."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("DELETE FROM dunning_state")
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    section = _section(page, "Dunning")
    assert "<table>" not in section
    assert "<p>No invoices in dunning.</p>" in section


# --- defect found by reading (fixed; fails on a65de4b) ----------------------------------------------------------

def test_discrepancies_of_no_currency_are_in_the_totals_currency_order():
    """ReportData.discrepancies promises 'per currency (in currency order, as the totals)'. A usage row
    without a currency is the totals' currency '?' (data._currency_totals fills NULL with '?'), which
    sorts before 'usd' ('?' is 0x3F, 'u' 0x75): the totals list '?' then 'usd', so the discrepancies
    must list cus_x (no currency, |diff| 50) before cus_y (usd, |diff| 75), not after it."""
    lines = pl.DataFrame([dict(customer_id="cus_y", meter="api_calls", currency="usd", our_amount_minor=300,
                               not_in_stripe_minor=0, stripe_amount_minor=375, amount_diff_minor=75,
                               status="amount_mismatch"),
                          dict(customer_id="cus_x", meter="api_calls", currency=None, our_amount_minor=300,
                               not_in_stripe_minor=0, stripe_amount_minor=250, amount_diff_minor=-50,
                               status="amount_mismatch")],
                         schema={"customer_id": pl.String, "meter": pl.String, "currency": pl.String,
                                 "our_amount_minor": pl.Int64, "not_in_stripe_minor": pl.Int64,
                                 "stripe_amount_minor": pl.Int64, "amount_diff_minor": pl.Int64, "status": pl.String})
    totals_order = (lines.select(pl.col("currency").fill_null("?")).unique().sort("currency")["currency"].to_list())
    assert totals_order == ["?", "usd"]
    data = ReportData(billing_month=MONTH, generated_at=NOW, settings=ReconcileSettings(), lines=lines,
                      invoices=pl.DataFrame(), dunning=pl.DataFrame(), totals=[])
    assert data.discrepancies["customer_id"].to_list() == ["cus_x", "cus_y"]
