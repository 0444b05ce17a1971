"""Hand-written inline SVG bar charts (no JavaScript, no external assets): the report opens offline.

Bar lengths are pixel geometry computed with integers from integer minor units; the labels print the
exact amounts.
"""

from __future__ import annotations

from html import escape

from metering.reports.money import fmt_money

OURS_COLOR = "#2f6fde"
STRIPE_COLOR = "#f08c2e"
STATUS_COLORS = {
    "matched": "#3a9d5d",
    "within_tolerance": "#8cc084",
    "pending": "#9aa5b1",
    "late_after_finalization": "#b58de0",
    "not_pushed": "#e0a43a",
    "not_invoiced": "#b71c1c",
    "missing_in_stripe": "#d9534f",
    "extra_in_stripe": "#c2185b",
    "quantity_mismatch": "#e57373",
    "amount_mismatch": "#a83232",
    "currency_mismatch": "#6d1b7b",
}


def _scale(value: int, maximum: int, width: int) -> int:
    if maximum <= 0 or value <= 0:
        return 0
    return max(1, value * width // maximum)


def ours_vs_stripe(rows: list[tuple[str, int, int]], currency: str, *, title: str) -> str:
    """Grouped horizontal bars: per customer, ours (rated, less what Stripe cannot price) and Stripe's (invoiced on
    its meters)."""
    label_w, bar_w, right_w, row_h = 150, 420, 200, 30
    height = 40 + row_h * max(len(rows), 1) + 10
    width = label_w + bar_w + right_w
    maximum = max([max(o, s) for _, o, s in rows] + [0])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{escape(title)}">',
        f'<title>{escape(title)}</title>',
        f'<rect x="{label_w}" y="8" width="12" height="12" fill="{OURS_COLOR}"/>'
        # the amounts the report's difference compares (html._customer_chart_rows)
        f'<text x="{label_w + 16}" y="18" font-size="12">ours (rated, priceable in Stripe)</text>',
        f'<rect x="{label_w + 220}" y="8" width="12" height="12" fill="{STRIPE_COLOR}"/>'
        f'<text x="{label_w + 236}" y="18" font-size="12">Stripe (invoiced on its meters)</text>',
    ]
    if not rows:
        parts.append(f'<text x="{label_w}" y="52" font-size="12">no rows</text>')
    for i, (customer, ours, stripe) in enumerate(rows):
        y = 40 + i * row_h
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" font-size="12" text-anchor="end">{escape(customer)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{_scale(ours, maximum, bar_w)}" height="11" fill="{OURS_COLOR}"/>')
        parts.append(f'<rect x="{label_w}" y="{y + 12}" width="{_scale(stripe, maximum, bar_w)}" height="11" fill="{STRIPE_COLOR}"/>')
        parts.append(f'<text x="{label_w + bar_w + 6}" y="{y + 10}" font-size="11">{escape(fmt_money(ours, currency))}</text>')
        parts.append(f'<text x="{label_w + bar_w + 6}" y="{y + 22}" font-size="11">{escape(fmt_money(stripe, currency))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def categories(counts: dict[str, int], money: dict[str, dict[str, int]], *, title: str) -> str:
    """One bar per status: row count, labelled with the count and the money difference per currency."""
    label_w, bar_w, right_w, row_h = 190, 320, 260, 26
    items = list(counts.items())
    height = 14 + row_h * len(items)
    width = label_w + bar_w + right_w
    maximum = max([n for _, n in items] + [0])
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{escape(title)}">',
        f'<title>{escape(title)}</title>',
    ]
    for i, (status, n) in enumerate(items):
        y = 8 + i * row_h
        color = STATUS_COLORS.get(status, "#777")
        amounts = ", ".join(fmt_money(m, cur) for cur, m in sorted(money.get(status, {}).items()) if m)
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" font-size="12" text-anchor="end">{escape(status)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y}" width="{_scale(n, maximum, bar_w)}" height="18" fill="{color}"/>')
        parts.append(
            f'<text x="{label_w + bar_w + 6}" y="{y + 14}" font-size="12">{n}'
            f'{escape(" · " + amounts) if amounts else ""}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
