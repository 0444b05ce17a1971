"""The finance report as one self-contained HTML file: inline CSS, inline SVG, no scripts, no fetches."""

from __future__ import annotations

from html import escape

import polars as pl

from metering.reports import svg
from metering.reports.data import CurrencyTotals, ReportData
from metering.reports.money import fmt_money, fmt_quantity
from metering.reports.tables import cell_text

CHART_CUSTOMERS = 25

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#1d2530;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #dde3ea;padding-bottom:4px}
.muted{color:#5b6776;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:12px 0}
.card{border:1px solid #dde3ea;border-radius:6px;padding:10px 14px;min-width:150px;background:#f7f9fb}
.card .k{font-size:12px;color:#5b6776}.card .v{font-size:20px;font-weight:600}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
th,td{border:1px solid #dde3ea;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#eef2f6}td.n{text-align:right;font-variant-numeric:tabular-nums}
.s{display:inline-block;padding:1px 6px;border-radius:8px;color:#fff;font-size:11px}
.bad{color:#a83232;font-weight:600}.ok{color:#2d7d46;font-weight:600}
"""


def _status(status: str) -> str:
    color = svg.STATUS_COLORS.get(status, "#777")
    return f'<span class="s" style="background:{color}">{escape(status)}</span>'


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _line_rows(frame: pl.DataFrame) -> list[list[str]]:
    return [
        [
            escape(r["customer_id"]), escape(r["meter"]), escape(cell_text(r["period_start"])), _status(r["status"]),
            escape(fmt_quantity(r["our_quantity"])), escape(fmt_quantity(r["pushed_quantity"])),
            escape(fmt_quantity(r["stripe_quantity"])), escape(fmt_quantity(r["invoiced_quantity"])),
            escape(fmt_money(r["our_amount_minor"], r["currency"])),
            escape(fmt_money(r["stripe_amount_minor"], r["currency"])),
            escape(fmt_money(r["amount_diff_minor"], r["currency"])), escape(r["reason"]),
        ]
        for r in frame.iter_rows(named=True)
    ]


LINE_HEADERS = ["customer", "meter", "period start", "status", "our qty", "pushed qty", "Stripe meter qty",
                "invoiced qty", "rated", "invoiced", "difference", "reason"]
# "difference" = invoiced - (rated - the part Stripe cannot price); the reason names that part
LINE_NUMERIC = {4, 5, 6, 7, 8, 9, 10}


def _customer_chart_rows(data: ReportData, currency: str) -> list[tuple[str, int, int]]:
    """(customer, ours, Stripe's) per customer, the amounts the report's difference compares
    (`amount_diff_minor` = Stripe's invoiced - (our rated - what Stripe cannot price), see
    metering.reconcile.reconcile): ours less `not_in_stripe_minor` (billed by the engine as invoice items,
    on no meter line), Stripe's on its meter lines (none where it billed another currency). Largest
    |summed difference| first, then the larger amount, then the customer."""
    per = (
        data.lines.filter(pl.col("currency").fill_null("?") == currency)
        .group_by("customer_id")
        .agg((pl.col("our_amount_minor").fill_null(0) - pl.col("not_in_stripe_minor").fill_null(0)).sum().alias("o"),
             pl.col("stripe_amount_minor").fill_null(0).sum().alias("s"),
             pl.col("amount_diff_minor").fill_null(0).sum().abs().alias("d"))
        .with_columns(m=pl.max_horizontal("o", "s"))
        .sort(["d", "m", "customer_id"], descending=[True, True, False])
        .head(CHART_CUSTOMERS)
    )
    return [(r["customer_id"], int(r["o"]), int(r["s"])) for r in per.iter_rows(named=True)]


CHART_NOTE = ("Up to {n} customers per currency, largest |difference| first (the difference of the tables: "
              "difference = Stripe − ours). The bars compare what the difference compares: ours = rated less what "
              "Stripe cannot price (the engine bills that as invoice items), Stripe = invoiced on its meters (the "
              "engine's invoice items left out; nothing where Stripe billed another currency).")


Card = tuple[str, str, str]   # (label, value, element id prefix)


def _usage_cards(t: CurrencyTotals) -> list[Card]:
    """The meter rows' cards (customer x meter x period): every row of the month, pending ones included."""
    cur = t.currency
    return [
        ("Rated (ours, meter rows)", fmt_money(t.rated_minor, cur), "rated"),
        ("of which Stripe cannot price (not compared)", fmt_money(t.rated_not_in_stripe_minor, cur),
         "rated-not-in-stripe"),
        ("Invoiced (Stripe, meter rows)", fmt_money(t.invoiced_minor, cur), "invoiced"),
        ("Difference = invoiced − (rated − cannot price)", fmt_money(t.difference_minor, cur), "difference"),
        ("Match rate (meter rows)", t.match_rate_text("%"), "match-rate"),
        ("Money at risk (rows not matched, pending left out)", fmt_money(t.money_at_risk_minor, cur), "at-risk"),
        ("Awaiting Stripe's invoice (pending rows)", fmt_money(t.pending_minor, cur), "pending"),
        ("Unexplained (the blocking check)", fmt_money(t.unexplained_minor, cur), "unexplained"),
    ]


def _invoice_cards(t: CurrencyTotals) -> list[Card]:
    """The invoice rows' cards (customer x period): every period of the month, and of it those Stripe has
    not closed yet; paid and remaining by the periods' own lines."""
    cur = t.currency
    return [
        ("Our invoice total (every period)", fmt_money(t.our_invoice_total_minor, cur), "our-invoice-total"),
        (f"of which {t.pending_periods} period(s) Stripe has not closed",
         fmt_money(t.pending_our_invoice_total_minor, cur), "our-invoice-total-pending"),
        ("Stripe invoice total (every period)", fmt_money(t.stripe_invoice_total_minor, cur), "stripe-invoice-total"),
        ("of which on periods Stripe has not closed", fmt_money(t.pending_stripe_invoice_total_minor, cur),
         "stripe-invoice-total-pending"),
        ("Paid (the periods' lines on paid invoices)", fmt_money(t.amount_paid_minor, cur), "paid"),
        ("Remaining (on open or uncollectible invoices)", fmt_money(t.amount_remaining_minor, cur), "remaining"),
        # a finance decision: off paid / remaining, never counted by the blocking check
        ("Credited before payment (credit notes, not counted)", fmt_money(t.credit_notes_minor, cur), "credited"),
    ]


def _items_cards(t: CurrencyTotals) -> list[Card]:
    """The charges Stripe cannot price, which the engine bills as invoice items, and where they stand."""
    cur = t.currency
    return [
        ("Stripe cannot price (ours)", fmt_money(t.not_in_stripe_minor, cur), "not-in-stripe"),
        ("of which on Stripe invoices as invoice items", fmt_money(t.engine_items_minor, cur), "engine-items"),
        ("of which pending at Stripe for the next invoice", fmt_money(t.engine_items_pending_minor, cur),
         "engine-items-pending"),
        ("of which unbilled (periods ended)", fmt_money(t.unbilled_minor, cur), "unbilled"),
        # the engine bills a period's items once it has ended: not missing yet
        ("of which awaiting the period's end (pending periods)", fmt_money(t.unbilled_pending_minor, cur),
         "unbilled-pending"),
        # per customer x period, not netted against the unbilled above
        ("our items beyond it (credit due)", fmt_money(t.credit_due_minor, cur), "credit-due"),
    ]


def _cards(cards: list[Card], cur: str) -> str:
    """One row of cards, each with the id `<prefix>-<currency>`."""
    return '<div class="cards">' + "".join(
        f'<div class="card" id="{key}-{escape(cur)}"><div class="k">{escape(k)}</div>'
        f'<div class="v">{escape(v)}</div></div>' for k, v, key in cards) + "</div>"


def _arithmetic_note(t: CurrencyTotals) -> str:
    """How the cards add up, in words with this currency's figures."""
    cur = t.currency

    def m(minor: int) -> str:
        return escape(fmt_money(minor, cur))

    return (
        f'<p class="muted" id="arithmetic-{escape(cur)}">Meter rows: difference {m(t.difference_minor)} = invoiced '
        f"{m(t.invoiced_minor)} − (rated {m(t.rated_minor)} − {m(t.rated_not_in_stripe_minor)} Stripe cannot price, "
        f"which the engine bills as invoice items); money at risk + awaiting Stripe's invoice = the |difference| "
        f"of the rows not matched or within tolerance. Unexplained is what the blocking check counts: the "
        f"unexplained meter rows, the invoice differences no meter row carries, and invoice discounts and credits. "
        f"Invoices: Stripe invoice total {m(t.stripe_invoice_total_minor)} = paid {m(t.amount_paid_minor)} + "
        f"remaining {m(t.amount_remaining_minor)} + {m(t.not_due_minor)} on invoices not finalized + credited "
        f"{m(t.credit_notes_minor)} by credit notes issued before payment (Stripe collects that much less; a "
        f"finance decision, not counted by the blocking check); paid and remaining are line amounts less those "
        f"credit notes, before an invoice's discounts and tax.</p>"
    )


def render_html(data: ReportData) -> str:
    """The report page. Every number shown comes from `data` (the warehouse's reconciliation rows)."""
    out: list[str] = [
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
        f"<title>Reconciliation report {escape(data.period_label)}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Billing reconciliation — {escape(data.period_label)}</h1>",
        f'<p class="muted">Generated {escape(data.generated_at.strftime("%Y-%m-%d %H:%M:%S UTC"))}. '
        f"Ours = rated by the engine; Stripe = Stripe's meters and invoices. Tolerance: "
        f'<span id="tolerance">{escape(data.settings.describe_tolerance([t.currency for t in data.totals]))}</span>. '
        f"Blocking check threshold: {data.settings.max_unexplained_minor} minor unit(s) of unexplained difference "
        f"per currency.</p>",
        "<h2>Totals</h2>",
    ]
    if not data.totals:
        out.append("<p>No reconciliation rows for this period.</p>")
    for t in data.totals:
        cur = t.currency
        out.append(f"<h3>{escape(cur.upper())} — {t.customers} customer(s), {t.rows} customer × meter row(s)</h3>")
        out.extend(_cards(group(t), cur) for group in (_usage_cards, _invoice_cards, _items_cards))
        out.append(_arithmetic_note(t))
        if t.unbilled_minor > 0:
            out.append(f'<p class="bad" id="unbilled-note-{escape(cur)}">{escape(fmt_money(t.unbilled_minor, cur))} of '
                       f"the charges Stripe cannot price (minimums, charges filtered by a dimension) on periods that "
                       f"have ended is not billed: no invoice item of the engine carries it. Run <code>metering "
                       f"stripe invoice-items --period {escape(data.period_label)}</code>: what it cannot bill it "
                       f"names (blocked, held, of another plan version); the invoices table lists it per customer.</p>")
        if t.credit_due_minor > 0:
            out.append(f'<p class="bad" id="credit-due-note-{escape(cur)}">The engine\'s invoice items exceed the '
                       f"charges Stripe cannot price by {escape(fmt_money(t.credit_due_minor, cur))} (a charge rated "
                       f"lower since it was billed). Run <code>metering stripe invoice-items --period "
                       f"{escape(data.period_label)}</code> to credit it; the invoices table lists it per "
                       f"customer.</p>")
        passed = t.unexplained_minor <= data.settings.max_unexplained_minor
        out.append(f'<p class="{"ok" if passed else "bad"}">Blocking check for {escape(cur.upper())}: '
                   f'{"passed" if passed else "FAILED"} (unexplained {escape(fmt_money(t.unexplained_minor, cur))}).</p>')

    out.append("<h2>Ours versus Stripe by customer</h2>")
    out.append(f'<p class="muted" id="chart-note">{escape(CHART_NOTE.format(n=CHART_CUSTOMERS))}</p>')
    for t in data.totals:
        out.append(svg.ours_vs_stripe(_customer_chart_rows(data, t.currency), t.currency,
                                      title=f"Ours versus Stripe by customer ({t.currency.upper()}): ours less what "
                                            f"Stripe cannot price, Stripe on its meters"))

    out.append("<h2>Discrepancy categories</h2>")
    out.append(svg.categories(data.status_counts(), data.status_money(), title="Rows by reconciliation status"))
    invoice_counts = ", ".join(f"{escape(s)} {n}" for s, n in data.invoice_status_counts().items() if n)
    out.append(f'<p>Invoices (customer &times; period) by status: {invoice_counts or "none"}.</p>')

    disc = data.discrepancies
    out.append(f"<h2>Discrepancies ({disc.height}), per currency, largest amount first</h2>")
    out.append(_table(LINE_HEADERS, _line_rows(disc), LINE_NUMERIC) if disc.height else "<p>None.</p>")

    out.append("<h2>Invoices</h2>")
    inv_rows = [
        [escape(r["customer_id"]), escape(cell_text(r["period_start"])), _status(r["status"]),
         escape(r["invoice_ids"] or ""), escape(r["invoice_status"] or ""),
         escape(fmt_money(r["our_total_minor"], r["currency"])),
         escape(fmt_money(r["not_in_stripe_minor"], r["currency"])),
         escape(fmt_money(r["engine_items_minor"], r["currency"])),
         escape(fmt_money(r["engine_items_pending_minor"], r["currency"])),
         escape(fmt_money(r["unbilled_minor"], r["currency"])),
         escape(fmt_money(r["stripe_total_minor"], r["currency"])),
         escape(fmt_money(r["amount_diff_minor"], r["currency"])), escape(fmt_money(r["amount_paid"], r["currency"])),
         escape(fmt_money(r["amount_remaining"], r["currency"])),
         escape(fmt_money(r["credit_notes_minor"], r["currency"])), escape(r["reason"])]
        for r in data.invoices.iter_rows(named=True)
    ]
    # "difference" = (Stripe total - our invoice items) - (our total - not priceable in Stripe)
    # "closing invoice status": of the invoice that closed the period; "paid" / "remaining": the period's
    # own lines on paid / open or uncollectible invoices, whichever invoice carries them, less the credit
    # notes issued before payment ("credited") of the invoices counted in the period
    out.append(_table(["customer", "period start", "status", "invoices", "closing invoice status", "our total",
                       "not priceable in Stripe", "as invoice items", "items pending at Stripe", "unbilled",
                       "Stripe total", "difference", "paid", "remaining", "credited", "reason"],
                      inv_rows, set(range(5, 15)))
               if inv_rows else "<p>No invoices.</p>")

    out.append("<h2>Dunning</h2>")
    out.append('<p class="muted">The invoices of this month\'s periods, each in one month only: the first whose '
               "periods it has lines of (an invoice billing September's usage and October's fee in advance is "
               "September's); one no month lists (a void invoice's lines are ignored) is the month its own "
               "period starts in, UTC.</p>")
    fin = data.dunning_finance
    if fin.height:
        out.append(_table(
            ["currency", "category", "step", "invoices", "amount"],
            [[escape(r["currency"].upper()), escape(r["category"]), escape(r["step_name"] or ""), str(r["invoices"]),
              escape(fmt_money(r["amount_minor"], r["currency"]))] for r in fin.iter_rows(named=True)],
            {3, 4}))
    if data.dunning.height:
        cols = data.dunning.columns
        # the cells as the CSV / XLSX give them (times in UTC whatever the session's TimeZone read them
        # in), but money in the invoice's currency: raw minor units beside the table above read 100x off
        money = {"amount_due", "amount_paid", "amount_remaining"}
        out.append("<details><summary>Invoices in the dunning state table</summary>" + _table(
            cols, [[escape(fmt_money(v, r["currency"]) if c in money else cell_text(v)) for c, v in r.items()]
                   for r in data.dunning.iter_rows(named=True)],
            {i for i, c in enumerate(cols) if c in money}) + "</details>")
    else:
        out.append("<p>No invoices in dunning.</p>")

    out.append(f"<h2>All lines ({data.lines.height})</h2>")
    out.append("<details><summary>Every customer × meter × period</summary>"
               + _table(LINE_HEADERS, _line_rows(data.lines), LINE_NUMERIC) + "</details>")
    out.append("</body></html>")
    return "\n".join(out)
