"""One reconciled month built from hand-written reconciliation inputs (shared by the report tests)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D
from pathlib import Path

import polars as pl

from metering import warehouse
from metering.reconcile.reconcile import reconcile_invoices, reconcile_usage
from metering.reconcile.settings import ReconcileSettings
from metering.warehouse import replace_rows

MONTH = dt.date(2026, 10, 1)
PS, PE = dt.date(2026, 10, 1), dt.date(2026, 11, 1)
NOW = dt.datetime(2026, 11, 2, 9, 30, tzinfo=dt.UTC)

# (customer, meter, currency, our qty, our amount, pushed, stripe meter, invoiced qty, invoiced amount, late)
ROWS = [
    ("cus_a", "api_calls", "usd", "1500", 300, "1500", "1500", "1500", 300, 0),        # matched
    ("cus_a", "tokens", "usd", "2000000", 4000, "2000000", "2000000", "2000000", 4001, 0),  # within_tolerance +1
    ("cus_b", "api_calls", "usd", "1500", 300, "1500", "1500", "1500", 375, 0),        # amount_mismatch +75
    ("cus_c", "api_calls", "usd", "1500", 300, "1400", "1400", "1400", 280, 0),        # not_pushed -20
    ("cus_d", "api_calls", "usd", "1500", 300, "1500", "1600", "1600", 320, 0),        # extra_in_stripe +20
    ("cus_e", "seats", "usd", "12", 12000, "11", "11", "11", 11000, 1),                # late -1000
    ("cus_j", "api_calls", "jpy", "1000", 500, "1000", "1000", "1000", 500, 0),        # matched jpy
]


def reconciled_frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    ours, pushed, meter, lines = [], [], [], []
    for cus, m, cur, q, amt, pq, sq, iq, iamt, late in ROWS:
        base = dict(customer_id=cus, meter=m, period_start=PS)
        ours.append({**base, "period_end": PE, "currency": cur, "plan": "pro_jpy" if cur == "jpy" else "pro",
                     "plan_version": "2026-01", "our_quantity": D(q), "our_amount_minor": amt})
        pushed.append({**base, "pushed_quantity": D(pq), "unacked_windows": int(D(q) != D(pq) and not late),
                       # the late window's quantity: lateness explains no more than it
                       "late_windows": late, "late_quantity": D(q) - D(pq) if late else D(0)})
        meter.append({**base, "period_end": PE, "stripe_quantity": D(sq), "meter_status": "settled"})
        lines.append({**base, "period_end": PE, "currency": cur, "invoiced_quantity": D(iq),
                      "stripe_amount_minor": iamt, "line_count": 1, "invoice_ids": f"in_{cus}", "finalized": True})
    s = ReconcileSettings()
    usage = reconcile_usage(pl.DataFrame(ours), pl.DataFrame(pushed), pl.DataFrame(meter), pl.DataFrame(lines),
                            billing_month=MONTH, settings=s, reconciled_at=NOW)
    totals: dict[tuple[str, str], list[int]] = {}
    for cus, _m, cur, _q, amt, _pq, _sq, _iq, iamt, _late in ROWS:
        t = totals.setdefault((cus, cur), [0, 0])
        t[0] += amt
        t[1] += iamt
    our_inv = pl.DataFrame([dict(customer_id=c, period_start=PS, period_end=PE, currency=cur, our_total_minor=o,
                                 our_lines=1) for (c, cur), (o, _s) in totals.items()])
    stripe_inv = pl.DataFrame([dict(customer_id=c, period_start=PS, period_end=PE, currency=cur, stripe_total_minor=s_,
                                    line_count=1, invoice_ids=f"in_{c}", invoice_status="paid" if c != "cus_c" else "open",
                                    amount_due=s_, amount_paid=s_ if c != "cus_c" else 0,
                                    amount_remaining=0 if c != "cus_c" else s_)
                               for (c, cur), (_o, s_) in totals.items()])
    invoices = reconcile_invoices(our_inv, stripe_inv, billing_month=MONTH, settings=s, reconciled_at=NOW)
    return usage, invoices


