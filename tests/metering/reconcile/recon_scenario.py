"""A small billing month written straight into the warehouse's real tables (no Stripe needed).

Customers (usd, period 2026-10-01 .. 2026-11-01, one api_calls charge each, amounts hand-set):
- cus_a: clean. api_calls 1500 (hours of 1000 + 500), rated 100, pushed 1000 + 500, Stripe 1500,
  invoiced 1500 for 100. tokens 25,000,000 rated 50 on a dimension-filtered charge Stripe cannot
  price (catalog finding): Stripe meters it but has no line -> matched, 50 not in Stripe.
- cus_b: Stripe's price differs: invoiced 125 for the same 1500 -> amount_mismatch +25.
- cus_c: the 500 window failed to push: Stripe 1000, invoiced 1000 for 0 -> not_pushed -100.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import duckdb
import polars as pl

from metering.warehouse import insert_frame

MONTH = dt.date(2026, 10, 1)
PS, PE = dt.date(2026, 10, 1), dt.date(2026, 11, 1)
T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
PULLED = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)

EXPECTED = {
    ("cus_a", "api_calls"): ("matched", 0),
    ("cus_a", "tokens"): ("matched", 0),
    ("cus_b", "api_calls"): ("amount_mismatch", 25),
    ("cus_c", "api_calls"): ("not_pushed", -100),
}
EXPECTED_INVOICES = {"cus_a": ("matched", 0), "cus_b": ("amount_mismatch", 25), "cus_c": ("amount_mismatch", -100)}


def _ts(day: int, hour: int = 0) -> dt.datetime:
    return dt.datetime(2026, 10, day, hour, tzinfo=dt.UTC)


def write_scenario(con: duckdb.DuckDBPyConnection) -> None:
    agg = []
    for cus in ("cus_a", "cus_b", "cus_c"):
        agg += [
            dict(customer_id=cus, meter="api_calls", dimensions='{"region":"us"}', hour=_ts(1, 3),
                 event_date=dt.date(2026, 10, 1), quantity=D(1000), event_count=1000,
                 last_event_time=_ts(1, 3), last_event_id=f"{cus}-1"),
            dict(customer_id=cus, meter="api_calls", dimensions='{"region":"eu"}', hour=_ts(2, 5),
                 event_date=dt.date(2026, 10, 2), quantity=D(500), event_count=500,
                 last_event_time=_ts(2, 5), last_event_id=f"{cus}-2"),
        ]
    agg.append(dict(customer_id="cus_a", meter="tokens", dimensions='{"model":"large"}', hour=_ts(3, 1),
                    event_date=dt.date(2026, 10, 3), quantity=D(25_000_000), event_count=10,
                    last_event_time=_ts(3, 1), last_event_id="cus_a-t"))
    # an hour outside the period must not count
    agg.append(dict(customer_id="cus_a", meter="api_calls", dimensions='{"region":"us"}',
                    hour=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), event_date=dt.date(2026, 11, 1),
                    quantity=D(7), event_count=7, last_event_time=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                    last_event_id="nov"))
    insert_frame(con, "usage_aggregates", pl.DataFrame(agg).with_columns(pl.col("quantity").cast(pl.Decimal(38, 12))))

    rated = []
    for cus, amt in (("cus_a", 100), ("cus_b", 100), ("cus_c", 100)):
        rated.append(dict(customer_id=cus, charge="api calls", meter="api_calls", quantity=D(1500), amount_minor=amt))
    rated.append(dict(customer_id="cus_a", charge="tokens large", meter="tokens", quantity=D(25_000_000), amount_minor=50))
    rated.append(dict(customer_id="cus_a", charge="platform fee", meter=None, quantity=None, amount_minor=4900))
    rated_frame = pl.DataFrame(rated, schema_overrides={"meter": pl.String, "quantity": pl.Decimal(38, 12)}).with_columns(
        period_start=pl.lit(PS), period_end=pl.lit(PE), segment_start=pl.lit(PS), segment_end=pl.lit(PE),
        plan=pl.lit("pro"), plan_version=pl.lit("2026-01"), rules_hash=pl.lit("h"), charge_id=pl.lit(0),
        model=pl.lit("per_unit"), billable_quantity=pl.col("quantity"), currency=pl.lit("usd"),
        rounding=pl.lit("half_up"), rated_at=pl.lit(PULLED),
    )
    insert_frame(con, "rated_usage", rated_frame)
    insert_frame(con, "invoice_previews", pl.DataFrame([
        dict(customer_id="cus_a", total_minor=5050, lines=3),
        dict(customer_id="cus_b", total_minor=100, lines=1),
        dict(customer_id="cus_c", total_minor=100, lines=1),
    ]).with_columns(period_start=pl.lit(PS), period_end=pl.lit(PE), currency=pl.lit("usd"),
                    total=pl.lit(D(0)).cast(pl.Decimal(38, 2)), rated_at=pl.lit(PULLED)))
    con.execute("INSERT INTO stripe_catalog_findings (finding, kind, our_key, detail, synced_at) VALUES "
                "('not_expressible', 'price', 'pro|2026-01|tokens large', 'dimension filter', ?)", [PULLED])

    ledger = []
    for cus in ("cus_a", "cus_b", "cus_c"):
        for day, value, status in ((1, 1000, "acknowledged"), (2, 500, "acknowledged" if cus != "cus_c" else "failed")):
            ledger.append(dict(customer_id=cus, meter="api_calls", window_start=_ts(day), window_end=_ts(day + 1),
                               revision=1, value=D(value), identifier=f"{cus}-{day}", idempotency_key=f"k-{cus}-{day}",
                               status=status, attempts=1, last_attempt_at=PULLED - dt.timedelta(hours=2),
                               created_at=PULLED, window_kind="day", event_date=dt.date(2026, 10, day),
                               event_name="metering_api_calls", event_timestamp=_ts(day), updated_at=PULLED))
    # a superseded older revision of cus_a's first window does not count
    ledger.append({**ledger[0], "revision": 0, "value": D(999), "status": "acknowledged"})
    ledger.append(dict(ledger[0], meter="tokens", value=D(25_000_000), identifier="t", idempotency_key="kt",
                       window_start=_ts(3), window_end=_ts(4), event_date=dt.date(2026, 10, 3), event_name="metering_tokens"))
    insert_frame(con, "stripe_push_ledger", pl.DataFrame(ledger).with_columns(pl.col("value").cast(pl.Decimal(38, 12))))

    summaries = []
    for cus, meter, q in (("cus_a", "api_calls", 1500), ("cus_b", "api_calls", 1500), ("cus_c", "api_calls", 1000),
                          ("cus_a", "tokens", 25_000_000)):
        summaries.append(dict(billing_month=MONTH, customer_id=cus, meter=meter, period_start=PS, period_end=PE,
                              grain="period", aggregated_value=D(q), status="settled", pulled_at=PULLED))
        summaries.append(dict(billing_month=MONTH, customer_id=cus, meter=meter, period_start=PS, period_end=PE,
                              grain="day", aggregated_value=D(q), status="settled", pulled_at=PULLED))
    insert_frame(con, "stripe_meter_summaries",
                 pl.DataFrame(summaries).with_columns(pl.col("aggregated_value").cast(pl.Decimal(38, 12))))

    lines, invoices = [], []
    for cus, q, amt in (("cus_a", 1500, 100), ("cus_b", 1500, 125), ("cus_c", 1000, 0)):
        inv = f"in_{cus}"
        invoices.append(dict(billing_month=MONTH, invoice_id=inv, customer_id=cus, status="paid", currency="usd",
                             amount_due=amt, amount_paid=amt, amount_remaining=0, total=amt,
                             period_start=T0, period_end=dt.datetime(2026, 11, 1, tzinfo=dt.UTC),
                             created=dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC), pulled_at=PULLED))
        lines.append(dict(billing_month=MONTH, invoice_id=inv, line_id=f"il_{cus}", customer_id=cus,
                          meter="api_calls", quantity_decimal=D(q), amount=amt, currency="usd",
                          period_start=T0, period_end=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), pulled_at=PULLED))
    # cus_a's flat platform fee: a licensed line on the invoice created at the period start
    invoices.append(dict(billing_month=MONTH, invoice_id="in_a0", customer_id="cus_a", status="paid", currency="usd",
                         amount_due=4900, amount_paid=4900, amount_remaining=0, total=4900, created=T0,
                         period_start=T0, period_end=T0, pulled_at=PULLED))
    lines.append(dict(billing_month=MONTH, invoice_id="in_a0", line_id="il_fee", customer_id="cus_a", meter=None,
                      quantity_decimal=D(1), amount=4900, currency="usd", period_start=T0,
                      period_end=dt.datetime(2026, 11, 1, tzinfo=dt.UTC), pulled_at=PULLED))
    insert_frame(con, "stripe_invoices_api", pl.DataFrame(invoices))
    insert_frame(con, "stripe_invoice_lines_api", pl.DataFrame(
        lines, schema_overrides={"meter": pl.String}).with_columns(pl.col("quantity_decimal").cast(pl.Decimal(38, 12))))
