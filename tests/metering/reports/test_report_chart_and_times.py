"""The report's customer chart compares what the difference compares, and its times are UTC in any session.

Chart. The report's difference (`amount_diff_minor`, metering.reconcile.reconcile) is invoiced minus our
rated amount *less the part Stripe cannot price* (`not_in_stripe_minor`, billed by the engine as invoice
items). The chart once ranked customers by |invoiced - rated| and drew the whole rated amount: in the
demo, a customer whose whole 50.75 USD gap was that part (difference 0) ranked 11th and one 9.81 USD
short was left out of the top 25.

Times. The dunning table's cells were `str(value)`: in a session whose TimeZone is America/Los_Angeles
`next_payment_attempt` read `2026-10-15 18:00:00-07:00`, where the CSV / XLSX say `...Z` in UTC.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from html import unescape

import polars as pl
import pytest
from recon_fixture import MONTH, NOW

from metering import warehouse
from metering.reconcile.settings import ReconcileSettings
from metering.reports import html as report_html
from metering.reports import write_report
from metering.reports.data import ReportData

# customer, currency, our_amount_minor, not_in_stripe_minor, stripe_amount_minor, amount_diff_minor, status
# (amount_diff_minor = stripe - (ours - not_in_stripe), as reconcile_usage computes it)
LINES = [
    ("cus_a", "usd", 5075, 5075, None, 0, "matched"),             # all of its gap Stripe cannot price
    ("cus_b", "usd", 1000, 0, 19, -981, "amount_mismatch"),
    ("cus_b", "jpy", 90000, 0, 0, -90000, "missing_in_stripe"),  # another currency: not in the USD chart
    ("cus_c", "usd", 500, 100, 450, 50, "amount_mismatch"),        # +50 and -50: nets to 0
    ("cus_c", "usd", 300, 0, 250, -50, "amount_mismatch"),
    ("cus_d", "usd", 2000, 0, 2300, 300, "extra_in_stripe"),
    ("cus_e", "usd", 700, 0, 400, -300, "not_pushed"),           # |300| as cus_d, smaller amounts
    ("cus_f", "usd", 50, 0, 100, 50, "amount_mismatch"),         # cus_f and cus_g tie on both: by name
    ("cus_g", "usd", 100, 0, 50, -50, "amount_mismatch"),
    ("cus_h", "usd", 200, 0, None, -200, "currency_mismatch"),   # Stripe's amount in another currency: none
]


def _data(rows=LINES) -> ReportData:
    lines = pl.DataFrame(
        [dict(customer_id=c, meter="api_calls", currency=cur, our_amount_minor=o, not_in_stripe_minor=nx,
              stripe_amount_minor=s, amount_diff_minor=d, status=st) for c, cur, o, nx, s, d, st in rows],
        schema={"customer_id": pl.String, "meter": pl.String, "currency": pl.String, "our_amount_minor": pl.Int64,
                "not_in_stripe_minor": pl.Int64, "stripe_amount_minor": pl.Int64, "amount_diff_minor": pl.Int64,
                "status": pl.String})
    return ReportData(billing_month=MONTH, generated_at=NOW, settings=ReconcileSettings(), lines=lines,
                      invoices=pl.DataFrame(), dunning=pl.DataFrame(), totals=[])


def test_the_chart_ranks_by_the_reports_difference_and_draws_what_it_compares():
    """By hand, (customer, ours less what Stripe cannot price, Stripe's), |difference| first, then the
    larger of the two amounts, then the customer: cus_b -981; cus_d +300 (2300) before cus_e -300 (700);
    cus_h -200; cus_f +50 and cus_g -50 (both 100); cus_c 0 (700 = 400 + 300 vs 450 + 250); cus_a 0
    (5075 - 5075 vs nothing). The old ranking put cus_a first (|0 - 5075|) and cus_c before cus_f (|700 - 800|)."""
    rows = report_html._customer_chart_rows(_data(), "usd")
    assert rows == [("cus_b", 1000, 19), ("cus_d", 2000, 2300), ("cus_e", 700, 400), ("cus_h", 200, 0),
                    ("cus_f", 50, 100), ("cus_g", 100, 50), ("cus_c", 700, 700), ("cus_a", 0, 0)]
    # each bar pair's gap is the customer's summed difference, as the tables and the cards give it
    diffs = {"cus_a": 0, "cus_b": -981, "cus_c": 0, "cus_d": 300, "cus_e": -300, "cus_f": 50, "cus_g": -50,
             "cus_h": -200}
    assert {c: s - o for c, o, s in rows} == diffs
    assert report_html._customer_chart_rows(_data(), "jpy") == [("cus_b", 90000, 0)]


def test_the_chart_keeps_the_largest_differences(monkeypatch):
    """With room for three, cus_a (difference 0, 50.75 rated that Stripe cannot price) is left out."""
    monkeypatch.setattr(report_html, "CHART_CUSTOMERS", 3)
    assert [c for c, _o, _s in report_html._customer_chart_rows(_data(), "usd")] == ["cus_b", "cus_d", "cus_e"]


def test_the_chart_says_what_it_draws(reconciled_warehouse, tmp_path):
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        page = write_report(con, MONTH, tmp_path / "out", generated_at=NOW).html.read_text()
    section = page.split("<h2>Ours versus Stripe by customer</h2>")[1].split("<h2>")[0]
    note = unescape(re.sub(r"<[^>]+>", "", section.split("<svg")[0]))
    assert "largest |difference| first" in note
    assert "ours = rated less what Stripe cannot price" in note
    assert "Stripe = invoiced on its meters" in note
    assert "difference = Stripe − ours" in note
    # recon_fixture's USD customers, by |difference|: cus_e -10.00, cus_b +0.75, cus_d +0.20 (3.20 invoiced)
    # before cus_c -0.20 (3.00 rated), cus_a +0.01
    usd = next(c for c in section.split("<svg")[1:] if "<title>Ours versus Stripe by customer (USD): ours less what "
                                                        "Stripe cannot price, Stripe on its meters</title>" in c)
    assert re.findall(r">(cus_[a-z])<", usd) == ["cus_e", "cus_b", "cus_d", "cus_c", "cus_a"]


# --- times in UTC --------------------------------------------------------------------------------------

NEXT_ATTEMPT = dt.datetime(2026, 10, 16, 1, 0, tzinfo=dt.UTC)    # Oct 15, 18:00 in Los Angeles


def _dunning_html_rows(page: str) -> list[list[str]]:
    table = page.split("<summary>Invoices in the dunning state table</summary>")[1].split("</details>")[0]
    head = [unescape(h) for h in re.findall(r"<th>(.*?)</th>", table)]
    body = [[unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", tr)]
            for tr in re.findall(r"<tr>(.*?)</tr>", table)]
    return [head, *[r for r in body if r]]


@pytest.mark.parametrize("zone", ["America/Los_Angeles", "Asia/Tokyo"])
def test_dunning_times_are_utc_in_any_session_zone(reconciled_warehouse, tmp_path, zone):
    """The HTML's dunning cells are the CSV's, cell for cell: UTC `...Z`, whatever the session's TimeZone;
    but money in the invoice's currency (raw minor units, 280 for 2.80 USD, sat beside the formatted
    table above them: audit)."""
    with warehouse.open_warehouse(reconciled_warehouse) as con:
        con.execute("UPDATE dunning_state SET next_payment_attempt = ? WHERE invoice_id = 'in_cus_c'", [NEXT_ATTEMPT])
        con.execute(f"SET TimeZone = '{zone}'")
        files = write_report(con, MONTH, tmp_path / "out", generated_at=NOW)
    rows = _dunning_html_rows(files.html.read_text())
    header, cus_c = rows[0], next(r for r in rows[1:] if r[0] == "in_cus_c")
    assert cus_c[header.index("next_payment_attempt")] == "2026-10-16T01:00:00Z"
    assert cus_c[header.index("first_failed_at")] == "2026-11-01T02:00:00Z"
    assert cus_c[header.index("evaluated_at")] == "2026-11-02T09:30:00Z"
    assert [cus_c[header.index(c)] for c in ("amount_due", "amount_paid", "amount_remaining")] == [
        "2.80 USD", "0.00 USD", "2.80 USD"]
    with open(files.folder / "dunning_invoices.csv", newline="") as fh:
        written = list(csv.reader(fh))
    money = [header.index(c) for c in ("amount_due", "amount_paid", "amount_remaining")]
    assert [[c for i, c in enumerate(r) if i not in money] for r in rows] == [
        [c for i, c in enumerate(r) if i not in money] for r in written]
    assert next(r for r in written[1:] if r[0] == "in_cus_c")[money[0]] == "280"   # the CSV keeps minor units
