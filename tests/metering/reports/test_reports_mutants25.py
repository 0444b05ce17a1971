"""Gaps found by a hand mutation audit of metering/reports and `metering report` (mutants25).

Covers: money text of None, of no currency, of negative and zero-decimal amounts; the status money of
the categories chart (|difference|, per currency, never summed across currencies; currencies in order,
zero amounts left out); bar geometry of the customer chart; escaping of hostile customer ids and
reasons in the HTML tables and the inline SVG; the invoices table (paid / remaining columns, a row
without invoices); the invoice status counts line; the blocking check's boundary (equal to the
threshold passes); the dunning table's money in the invoice's own currency (JPY beside USD, never
summed); what the files hold (booleans as true/false text, the generated_at timestamp, a dunning sheet
with its header when the month has no dunning, formula text stored as text in the spreadsheet, the
header row frozen); the month scope (other months' rows left out, any day of the month, currency
order); and `metering report`'s output and its acceptance of a month with invoice rows only.

Expected values are worked out by hand from recon_fixture.ROWS (see each test's docstring).
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from html import unescape

import openpyxl
import polars as pl
from click.testing import CliRunner
from recon_fixture import MONTH, NOW, reconciled_frames

from metering import warehouse
from metering.cli import cli
from metering.reconcile.settings import ReconcileSettings
from metering.reports import svg, write_report
from metering.reports.data import load_report_data
from metering.reports.money import fmt_money
from metering.warehouse import replace_rows


def _section(html: str, heading_start: str) -> str:
    """The HTML from the <h2> starting with `heading_start` to the next <h2>."""
    return html.split("<h2>" + heading_start, 1)[1].split("<h2>", 1)[0]


def _rows(table_html: str) -> list[list[str]]:
    """The body rows of the first table in `table_html`, each cell's inner HTML (not unescaped)."""
    body = table_html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    return [re.findall(r"<td[^>]*>(.*?)</td>", tr) for tr in re.findall(r"<tr>(.*?)</tr>", body)]


def _csv(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


# --- money text -------------------------------------------------------------------------------------

def test_money_text_of_none_of_no_currency_and_of_negatives():
    """None is an empty cell (not 0.00); no currency is two decimals and no trailing space; negative
    amounts keep their sign and thousands separators in every currency's digits."""
    assert fmt_money(None, "usd") == ""
    assert fmt_money(None, None) == ""
    assert fmt_money(1234, None) == "12.34"               # 2 digits when unknown, no code, no space
    assert fmt_money(-123456789, "usd") == "-1,234,567.89 USD"
    assert fmt_money(-1234567, "jpy") == "-1,234,567 JPY"
    assert fmt_money(-1234, "kwd") == "-1.234 KWD"


# --- categories chart money -------------------------------------------------------------------------

def test_status_money_is_the_absolute_difference_per_currency(reconciled_warehouse):
    """By hand from recon_fixture.ROWS (amount_diff_minor = invoiced - rated): matched cus_a 0 (usd) and
    cus_j 0 (jpy); within_tolerance cus_a tokens +1; amount_mismatch cus_b +75; not_pushed cus_c -20 ->
    20; extra_in_stripe cus_d +20; late cus_e -1000 -> 1000. A JPY not_pushed row of -50 added for
    cus_k: not_pushed holds 20 usd and 50 jpy, never 70 of anything."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""INSERT INTO usage_reconciliation SELECT * REPLACE ('cus_k' AS customer_id,
                       'not_pushed' AS status, false AS explained, -50 AS amount_diff_minor)
                       FROM usage_reconciliation WHERE customer_id = 'cus_j'""")
        data = load_report_data(con, MONTH, generated_at=NOW)
    assert data.status_money() == {
        "matched": {"usd": 0, "jpy": 0}, "within_tolerance": {"usd": 1}, "amount_mismatch": {"usd": 75},
        "not_pushed": {"usd": 20, "jpy": 50}, "extra_in_stripe": {"usd": 20},
        "late_after_finalization": {"usd": 1000}}


def test_categories_chart_labels_currencies_in_order_and_leaves_out_zero_amounts():
    """not_pushed: 0.20 USD and 0.05 EUR given in that order, shown EUR first (sorted); JPY 0 left out.
    matched has only a zero amount: its label is the count alone."""
    chart = svg.categories({"matched": 3, "not_pushed": 2}, {"matched": {"usd": 0},
                                                              "not_pushed": {"usd": 20, "eur": 5, "jpy": 0}},
                           title="t")
    labels = re.findall(r'font-size="12">(\d[^<]*)</text>', chart)
    assert labels == ["3", "2 · 0.05 EUR, 0.20 USD"]


# --- customer chart geometry ------------------------------------------------------------------------

def test_customer_bars_are_scaled_to_the_largest_of_either_side():
    """bar_w 420, maximum 4000 (cus_a's Stripe side). cus_a: 1000 * 420 // 4000 = 105, 4000 -> 420;
    cus_b: 0 -> no bar (0), 3 * 420 // 4000 = 0 but not zero -> 1 px; cus_c: 2000 -> 210, 1 -> 1 px.
    Labels: ours then Stripe's, exact amounts."""
    chart = svg.ours_vs_stripe([("cus_a", 1000, 4000), ("cus_b", 0, 3), ("cus_c", 2000, 1)], "usd", title="t")
    widths = [int(w) for w in re.findall(r'<rect x="150" y="\d+" width="(\d+)" height="11"', chart)]
    assert widths == [105, 420, 0, 1, 210, 1]
    amounts = re.findall(r'font-size="11">([^<]*)</text>', chart)
    assert amounts == ["10.00 USD", "40.00 USD", "0.00 USD", "0.03 USD", "20.00 USD", "0.01 USD"]


# --- hostile text -----------------------------------------------------------------------------------

EVIL_ID = "<img src=x onerror=alert(1)>\"&'"
EVIL_REASON = "<script>alert(2)</script> & more"


def test_hostile_customer_ids_and_reasons_are_escaped_in_tables_and_charts(tmp_path):
    """cus_b is renamed to an id carrying markup and its usage row's reason to a script: the page holds
    neither as markup; the id shows escaped in the USD chart, the discrepancies table and the invoices
    table, the reason in the discrepancies table."""
    usage, invoices = reconciled_frames()
    usage = usage.with_columns(
        reason=pl.when(pl.col("customer_id") == "cus_b").then(pl.lit(EVIL_REASON)).otherwise(pl.col("reason")))
    usage, invoices = (f.with_columns(pl.col("customer_id").replace({"cus_b": EVIL_ID})) for f in (usage, invoices))
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        replace_rows(con, "usage_reconciliation", "billing_month = ?", [MONTH], usage)
        replace_rows(con, "invoice_reconciliation", "billing_month = ?", [MONTH], invoices)
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    assert "<img" not in page and "<script" not in page.lower()
    escaped_id = "&lt;img src=x onerror=alert(1)&gt;&quot;&amp;&#x27;"
    chart = _section(page, "Ours versus Stripe by customer")
    assert f'text-anchor="end">{escaped_id}</text>' in chart
    disc = _rows(_section(page, "Discrepancies ("))
    evil_rows = [r for r in disc if unescape(r[0]) == EVIL_ID]
    assert len(evil_rows) == 1 and evil_rows[0][0] == escaped_id
    assert evil_rows[0][-1] == "&lt;script&gt;alert(2)&lt;/script&gt; &amp; more"
    inv = _rows(_section(page, "Invoices</h2>"))
    assert [r[0] for r in inv if unescape(r[0]) == EVIL_ID] == [escaped_id]


def test_line_tables_cells_by_column(reconciled_warehouse, tmp_path):
    """By hand from recon_fixture.ROWS, cells after the status: our qty, pushed, Stripe meter, invoiced
    qty, rated, invoiced, difference. cus_e (seats): 12, 11, 11, 11; 120.00 USD rated, 110.00 invoiced,
    -10.00; cus_b: 1500 x4; 3.00, 3.75, 0.75 USD. In all lines, cus_j: 1000 x4; 500 JPY, 500 JPY, 0 JPY."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    disc = {r[0]: r for r in _rows(_section(page, "Discrepancies ("))}
    assert disc["cus_e"][:3] + disc["cus_e"][4:11] == [
        "cus_e", "seats", "2026-10-01", "12", "11", "11", "11", "120.00 USD", "110.00 USD", "-10.00 USD"]
    assert disc["cus_b"][4:11] == ["1500", "1500", "1500", "1500", "3.00 USD", "3.75 USD", "0.75 USD"]
    every = {r[0]: r for r in _rows(_section(page, "All lines ("))}
    assert every["cus_j"][4:11] == ["1000", "1000", "1000", "1000", "500 JPY", "500 JPY", "0 JPY"]


def test_a_hostile_currency_code_is_escaped_in_headings_and_chart_labels(tmp_path):
    """Currency codes come from the warehouse; one carrying markup (cus_j's 'jpy' renamed '<i>x') must
    show as text: in the per-currency heading (upper-cased, '&lt;I&gt;X'), and in the categories chart's
    money label ('5.00 <I>X' escaped)."""
    usage, invoices = (f.with_columns(pl.col("currency").replace({"jpy": "<i>x"})) for f in reconciled_frames())
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        replace_rows(con, "usage_reconciliation", "billing_month = ?", [MONTH], usage)
        replace_rows(con, "invoice_reconciliation", "billing_month = ?", [MONTH], invoices)
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    assert "<i" not in page.lower()
    assert "<h3>&lt;I&gt;X — 1 customer(s), 1 customer × meter row(s)</h3>" in page
    chart = svg.categories({"not_pushed": 1}, {"not_pushed": {"<i>x": 500}}, title="t")
    assert "<i" not in chart.lower() and ">1 · 5.00 &lt;I&gt;X</text>" in chart


# --- invoices table, invoice counts, verdict --------------------------------------------------------

INVOICE_HEADERS = ["customer", "period start", "status", "invoices", "closing invoice status", "our total",
                   "not priceable in Stripe", "as invoice items", "items pending at Stripe", "unbilled",
                   "Stripe total", "difference", "paid", "remaining", "credited", "reason"]


def test_invoices_table_paid_and_remaining_and_a_row_without_invoices(reconciled_warehouse, tmp_path):
    """recon_fixture: cus_b's invoice paid (375 paid, 0 remaining), cus_c's open (0 paid, 280 remaining).
    cus_z: a flat fee of 49.00 USD Stripe never invoiced: no invoice ids, no closing invoice status,
    shown as empty cells (it made the page fail to render)."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""INSERT INTO invoice_reconciliation SELECT * REPLACE ('cus_z' AS customer_id,
                       4900 AS our_total_minor, NULL::BIGINT AS stripe_total_minor, -4900 AS amount_diff_minor,
                       NULL AS invoice_ids, NULL AS invoice_status, NULL::BIGINT AS amount_paid,
                       NULL::BIGINT AS amount_remaining, 'not_invoiced' AS status)
                       FROM invoice_reconciliation WHERE customer_id = 'cus_a'""")
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    section = _section(page, "Invoices</h2>")
    assert re.findall(r"<th>(.*?)</th>", section) == INVOICE_HEADERS
    rows = {r[0]: r for r in _rows(section)}
    paid, remaining, our, stripe = (INVOICE_HEADERS.index(c) for c in ("paid", "remaining", "our total",
                                                                        "Stripe total"))
    assert [rows["cus_b"][i] for i in (our, stripe, paid, remaining)] == [
        "3.00 USD", "3.75 USD", "3.75 USD", "0.00 USD"]
    assert [rows["cus_c"][i] for i in (our, stripe, paid, remaining)] == [
        "3.00 USD", "2.80 USD", "0.00 USD", "2.80 USD"]
    z = rows["cus_z"]
    assert (z[3], z[4], z[our], z[stripe], z[paid], z[remaining]) == ("", "", "49.00 USD", "", "", "")


def test_invoice_status_counts_line_lists_only_statuses_present(reconciled_warehouse, tmp_path):
    """recon_fixture has 6 invoice rows (cus_a, b, c, d, e, j): the line names each status present with
    its count (they add up to 6) and no status with 0. Without invoice rows it says none."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        page = write_report(con, MONTH, tmp_path / "a", generated_at=NOW).html.read_text()
        con.execute("DELETE FROM invoice_reconciliation")
        empty = write_report(con, MONTH, tmp_path / "b", generated_at=NOW).html.read_text()
    line = re.search(r"<p>Invoices \(customer &times; period\) by status: (.*?)\.</p>", page).group(1)
    counts = [(s, int(n)) for s, n in (item.rsplit(" ", 1) for item in line.split(", "))]
    assert all(n > 0 for _s, n in counts) and sum(n for _s, n in counts) == 6
    assert "<p>Invoices (customer &times; period) by status: none.</p>" in empty


def test_unexplained_equal_to_the_threshold_passes(reconciled_warehouse, tmp_path):
    """USD unexplained is 75 + 20 + 20 = 115 (cus_b, cus_c, cus_d): the check fails only when it
    exceeds the threshold, so 115 passes and 114 fails (docs: "exceeds")."""
    verdicts = []
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        for threshold in (115, 114):
            files = write_report(con, MONTH, tmp_path / str(threshold), generated_at=NOW,
                                 settings=ReconcileSettings(max_unexplained_minor=threshold))
            verdicts += re.findall(r"Blocking check for USD: [^<]*", files.html.read_text())
    assert verdicts == ["Blocking check for USD: passed (unexplained 1.15 USD).",
                        "Blocking check for USD: FAILED (unexplained 1.15 USD)."]


# --- dunning in two currencies ----------------------------------------------------------------------

def test_dunning_amounts_are_in_each_invoices_currency_and_not_summed(reconciled_warehouse, tmp_path):
    """in_cus_j (cus_j's October invoice, JPY) is in dunning with 500 yen remaining beside conftest's
    in_cus_c (2.80 USD): the dunning table shows 500 JPY (not 5.00), and the summary keeps 500 jpy and
    280 usd at risk apart."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""INSERT INTO dunning_state SELECT * REPLACE ('in_cus_j' AS invoice_id, 'cus_j' AS customer_id,
                       'jpy' AS currency, 500 AS amount_due, 0 AS amount_paid, 500 AS amount_remaining)
                       FROM dunning_state WHERE invoice_id = 'in_cus_c'""")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    html = files.html.read_text()
    fin = _rows(_section(html, "Dunning"))
    assert ["JPY", "in_dunning", "reminder", "1", "500 JPY"] in fin
    assert ["USD", "in_dunning", "reminder", "1", "2.80 USD"] in fin
    assert all(r[4].endswith(" JPY") for r in fin if r[0] == "JPY")
    summary = {(m, c): v for m, c, v in _csv(files.folder / "summary.csv")[1:]}
    assert (summary[("dunning_at_risk_minor", "jpy")], summary[("dunning_at_risk_minor", "usd")]) == ("500", "280")
    assert summary[("dunning_invoices_in_dunning", "")] == "2"


# --- what the files hold ----------------------------------------------------------------------------

def test_lines_csv_booleans_are_true_false_text_in_warehouse_order(reconciled_warehouse, tmp_path):
    """explained, by hand: cus_a's two rows (matched, within tolerance), cus_e (late: explained) and
    cus_j (matched) true; cus_b, cus_c, cus_d (unexplained: 75 + 20 + 20 = the 115 counted) false. Rows
    in customer, period, meter order; the spreadsheet holds the same text."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    rows = _csv(files.folder / "lines.csv")
    h = rows[0]
    got = [(r[h.index("customer_id")], r[h.index("meter")], r[h.index("explained")]) for r in rows[1:]]
    assert got == [("cus_a", "api_calls", "true"), ("cus_a", "tokens", "true"), ("cus_b", "api_calls", "false"),
                   ("cus_c", "api_calls", "false"), ("cus_d", "api_calls", "false"), ("cus_e", "seats", "true"),
                   ("cus_j", "api_calls", "true")]
    sheet = list(openpyxl.load_workbook(files.xlsx, read_only=True)["lines"].iter_rows(values_only=True))
    assert [r[sheet[0].index("explained")] for r in sheet[1:]] == [e for _c, _m, e in got]


def test_summary_generated_at_is_iso_utc(reconciled_warehouse, tmp_path):
    """NOW = 2026-11-02 09:30 UTC, given in Tokyo time (18:30+09:00): the summary says 2026-11-02T09:30:00Z."""
    tokyo = dt.timezone(dt.timedelta(hours=9))
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW.astimezone(tokyo))
    summary = {m: v for m, _c, v in _csv(files.folder / "summary.csv")[1:]}
    assert summary["generated_at"] == "2026-11-02T09:30:00Z"
    assert summary["period"] == "2026-10"


def test_a_month_without_dunning_still_has_the_dunning_tables_headers(reconciled_warehouse, tmp_path):
    """No dunning_state row: dunning.csv is the finance summary's header alone, the sheet too."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("DELETE FROM dunning_state")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    header = ["currency", "category", "step_index", "step_name", "invoices", "amount_minor", "amount"]
    assert _csv(files.folder / "dunning.csv") == [header]
    sheet = list(openpyxl.load_workbook(files.xlsx, read_only=True)["dunning"].iter_rows(values_only=True))
    assert [list(r) for r in sheet] == [header]
    assert "<p>No invoices in dunning.</p>" in files.html.read_text()


def test_spreadsheet_keeps_formula_text_as_text_and_freezes_the_header(tmp_path):
    """A customer id '=HYPERLINK(...)' is a text cell in the spreadsheet (a formula cell would run when
    opened); every sheet's header row stays in view (frozen at A2)."""
    evil = '=HYPERLINK("http://evil.example/","x")'
    usage, invoices = (f.with_columns(pl.col("customer_id").replace({"cus_b": evil})) for f in reconciled_frames())
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        replace_rows(con, "usage_reconciliation", "billing_month = ?", [MONTH], usage)
        replace_rows(con, "invoice_reconciliation", "billing_month = ?", [MONTH], invoices)
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    book = openpyxl.load_workbook(files.xlsx)
    for name in ("lines", "discrepancies", "invoices"):
        sheet = book[name]
        col = [c.value for c in sheet[1]].index("customer_id") + 1
        cells = [sheet.cell(row=i, column=col) for i in range(2, sheet.max_row + 1)]
        evil_cells = [c for c in cells if c.value == evil]
        assert len(evil_cells) == 1 and evil_cells[0].data_type == "s", name
    assert {name: book[name].freeze_panes for name in book.sheetnames} == {name: "A2" for name in book.sheetnames}


# --- month scope ------------------------------------------------------------------------------------

def test_the_report_holds_its_own_month_only_whatever_day_it_is_given(reconciled_warehouse):
    """recon_fixture's October copied into September and November (each a 1.00 USD larger difference
    on cus_b so a leak would show): October's report, asked for 2026-10-17, has October's 7 meter rows
    and 6 invoice rows, USD difference -9.24 (= 162.76 - 172.00) and invoice totals 172.00 / 162.76."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        for month in ("2026-09-01", "2026-11-01"):
            for table in ("usage_reconciliation", "invoice_reconciliation"):
                con.execute(f"""INSERT INTO {table} SELECT * REPLACE (DATE '{month}' AS billing_month,
                                amount_diff_minor + 100 AS amount_diff_minor) FROM {table}
                                WHERE billing_month = DATE '2026-10-01'""")
        data = load_report_data(con, dt.date(2026, 10, 17), generated_at=NOW)
    assert data.billing_month == MONTH and data.period_label == "2026-10"
    assert (data.lines.height, data.invoices.height) == (7, 6)
    assert set(data.lines["billing_month"]) == set(data.invoices["billing_month"]) == {MONTH}
    usd = next(t for t in data.totals if t.currency == "usd")
    assert (usd.difference_minor, usd.our_invoice_total_minor, usd.stripe_invoice_total_minor) == (
        -924, 17200, 16276)


def test_totals_are_in_currency_order_in_every_file(reconciled_warehouse, tmp_path):
    """Currencies sorted: eur (cus_f's flat fee, added), jpy, usd, in the totals and the summary CSV."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""INSERT INTO invoice_reconciliation SELECT * REPLACE ('cus_f' AS customer_id, 'eur' AS currency)
                       FROM invoice_reconciliation WHERE customer_id = 'cus_j'""")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    assert [t.currency for t in files.data.totals] == ["eur", "jpy", "usd"]
    rated = [c for m, c, _v in _csv(files.folder / "summary.csv")[1:] if m == "rated_minor"]
    assert rated == ["eur", "jpy", "usd"]
    headings = re.findall(r"<h3>(\w+) — ", files.html.read_text())
    assert headings == ["EUR", "JPY", "USD"]


# --- metering report --------------------------------------------------------------------------------

def test_report_command_prints_its_folder_and_files(reconciled_warehouse, isolated_env):
    result = CliRunner().invoke(cli, ["report", "--period", "2026-10"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"report for 2026-10 in {isolated_env / 'reports' / '2026-10'}"
    assert lines[1] == ("  report.html, report.xlsx, summary.csv, lines.csv, discrepancies.csv, invoices.csv, "
                        "dunning.csv, dunning_invoices.csv")
    # one line per currency, in currency order
    assert lines[2:] == ["  jpy: rated 500 JPY, invoiced 500 JPY, match rate 100.0%, money at risk 0 JPY",
                         "  usd: rated 172.00 USD, invoiced 162.76 USD, match rate 33.3%, money at risk 11.15 USD"]


def test_report_command_accepts_a_month_with_invoice_rows_only(reconciled_warehouse, tmp_path):
    """A month whose only rows are invoice rows (flat fees: no meter) was reconciled: it is reported
    (exit 0), its usage figures zero and its match rate n/a."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("DELETE FROM usage_reconciliation")
    result = CliRunner().invoke(cli, ["report", "--period", "2026-10", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "  usd: rated 0.00 USD, invoiced 0.00 USD, match rate n/a, money at risk 0.00 USD\n" in result.output
    assert (tmp_path / "r" / "report.html").exists()


def test_reconcile_command_names_the_unexplained_money_when_the_check_fails(isolated_env, monkeypatch):
    """The reconcile tests' scenario leaves 1.25 USD unexplained (125 minor units, tests/metering/reconcile:
    test_reconcile_warehouse). At a threshold of 124 the check fails: exit 4, and the error names the
    amount as money, not as 125 bare minor units; --no-fail prints the same and exits 0."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reconcile"))
    from recon_scenario import write_scenario

    with warehouse.open_warehouse() as con:
        write_scenario(con)
    monkeypatch.setenv("METERING_RECON_MAX_UNEXPLAINED_MINOR", "124")
    failed = CliRunner().invoke(cli, ["reconcile", "--period", "2026-10", "--no-pull"])
    assert failed.exit_code == 4, failed.output
    assert failed.output.splitlines()[-2:] == [
        "  unexplained 1.25 USD",
        "error: unexplained differences exceed 124 minor unit(s): 1.25 USD (see `metering report --period 2026-10`)"]
    passed = CliRunner().invoke(cli, ["reconcile", "--period", "2026-10", "--no-pull", "--no-fail"])
    assert passed.exit_code == 0, passed.output
    assert passed.output.splitlines()[-1] == "  unexplained 1.25 USD"
