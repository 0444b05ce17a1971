"""A small billing month written straight into the warehouse's real tables (no Stripe needed).

Customers (usd, period 2026-10-01 .. 2026-11-01, one api_calls charge each, amounts hand-set):
- cus_a: clean. api_calls 1500 (hours of 1000 + 500), rated 100, pushed 1000 + 500, Stripe 1500,
  invoiced 1500 for 100. tokens 25,000,000 rated 50 on a dimension-filtered charge Stripe cannot
  price (catalog finding): Stripe meters it but has no line -> matched, 50 not in Stripe.
- cus_b: Stripe's price differs: invoiced 125 for the same 1500 -> amount_mismatch +25.
- cus_c: the 500 window failed to push: Stripe 1000, invoiced 1000 for 0 -> not_pushed -100.

`add_minimum_customer` adds cus_m, whose charge Stripe cannot price is a minimum (no meter).

Every invoice the fixture builds carries `total_excluding_tax` (Stripe's total after discounts, before
tax), so reconciliation's adjustment check (`stripe_adjustments_minor` = that total less the invoice's
lines) is on in every test. By default it is the sum of the invoice's lines as written: Stripe's, without
discounts or credits. The fixture's helpers that change an invoice's lines derive it again from them
(`invoice_total_is_its_lines`), so a test changing line amounts keeps its invoices consistent; a test
that changes lines by hand calls that helper. A test gives an invoice its own value (a discount: less
than its lines) through `write_scenario(total_excluding_tax=...)` or the helper's keyword, or None for
"unknown": an invoice stored before the field existed, whose lines nothing is compared with.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from metering.warehouse import insert_frame
from metering.webhooks.events import land_directory
from metering.webhooks.inbox import LandingWriter
from metering.webhooks.state import rebuild_invoices

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


class _FromLines:
    """The default `total_excluding_tax`: the sum of the invoice's lines (no discount, no credit)."""

    def __repr__(self) -> str:
        return "FROM_LINES"


FROM_LINES: Any = _FromLines()


def _lines_total(lines: list[dict[str, Any]], invoice_id: str) -> int:
    return sum(line["amount"] for line in lines if line["invoice_id"] == invoice_id)


def write_scenario(con: duckdb.DuckDBPyConnection, *,
                   total_excluding_tax: Mapping[str, int | None] | None = None) -> None:
    """The month above. Each invoice's `total_excluding_tax` is the sum of its lines as written, unless
    `total_excluding_tax` names the invoice: then its value (e.g. lines less a coupon), None meaning
    unknown (stored before the field existed: the adjustment check skips the invoice)."""
    given = dict(total_excluding_tax or {})
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
    unknown = set(given) - {i["invoice_id"] for i in invoices}
    assert not unknown, f"no such invoice in the scenario: {sorted(unknown)}"
    for invoice in invoices:   # derived from the lines as they are written, after every line is known
        invoice_id = invoice["invoice_id"]
        invoice["total_excluding_tax"] = given.get(invoice_id, _lines_total(lines, invoice_id))
    insert_frame(con, "stripe_invoices_api", pl.DataFrame(invoices, schema_overrides={"total_excluding_tax": pl.Int64}))
    insert_frame(con, "stripe_invoice_lines_api", pl.DataFrame(
        lines, schema_overrides={"meter": pl.String}).with_columns(pl.col("quantity_decimal").cast(pl.Decimal(38, 12))))


def insert_windows(con: duckdb.DuckDBPyConnection, customer: str, meter: str, span: dt.timedelta,
                   windows: list[tuple[dt.datetime, int, str, dt.datetime]]) -> None:
    """Push-ledger rows (revision 1) of one customer's meter, windows `span` long (an hour or a day):
    (window_start, value, status, updated_at) each."""
    kind = "hour" if span == dt.timedelta(hours=1) else "day"
    rows = [dict(customer_id=customer, meter=meter, window_start=start, window_end=start + span, revision=1,
                 value=D(value), identifier=f"{meter}-{start:%m%d%H}", idempotency_key=f"k-{meter}-{start:%m%d%H}",
                 status=status, attempts=1, created_at=PULLED, window_kind=kind, event_date=start.date(),
                 event_name=f"metering_{meter}", event_timestamp=start, updated_at=updated_at)
            for start, value, status, updated_at in windows]
    insert_frame(con, "stripe_push_ledger", pl.DataFrame(rows).with_columns(pl.col("value").cast(pl.Decimal(38, 12))))


def known_only_from_webhooks(con: duckdb.DuckDBPyConnection, customer: str, status: str, amount: int, paid: int,
                             quantity: int, created: dt.datetime, finalized_at: dt.datetime | None = None, *,
                             total_excluding_tax: int | None = FROM_LINES) -> None:
    """`customer`'s October usage invoice (in_<customer>, one api_calls line) as only webhooks told us:
    gone from the API pull (stripe_*_api), present in stripe_invoices and stripe_invoice_lines. Its
    `total_excluding_tax` is its line's `amount` unless given (None: unknown, state kept before the field).
    A test that changes its lines afterwards calls `invoice_total_is_its_lines`."""
    invoice = f"in_{customer}"
    before_tax = amount if total_excluding_tax is FROM_LINES else total_excluding_tax
    con.execute("DELETE FROM stripe_invoice_lines_api WHERE invoice_id = ?", [invoice])
    con.execute("DELETE FROM stripe_invoices_api WHERE invoice_id = ?", [invoice])
    con.execute("""INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency, amount_due, amount_paid,
                   amount_remaining, total, total_excluding_tax, created, finalized_at, period_start, period_end)
                   VALUES (?, ?, ?, 'usd', ?, ?, ?, ?, ?, ?, ?, TIMESTAMPTZ '2026-10-01 00:00:00+00',
                   TIMESTAMPTZ '2026-11-01 00:00:00+00')""",
                [invoice, customer, status, amount, paid, amount - paid, amount, before_tax, created, finalized_at])
    con.execute("""INSERT INTO stripe_invoice_lines (invoice_id, line_id, meter, event_name, quantity_decimal,
                   amount, currency, period_start, period_end, source) VALUES (?, ?, NULL, 'metering_api_calls',
                   ?, ?, 'usd', TIMESTAMPTZ '2026-10-01 00:00:00+00', TIMESTAMPTZ '2026-11-01 00:00:00+00',
                   'webhook')""", [invoice, f"il_{customer.removeprefix('cus_')}", quantity, amount])


MINIMUM_TRUE_UP = 4000


def add_minimum_customer(con: duckdb.DuckDBPyConnection, *, total_excluding_tax: int | None = FROM_LINES) -> None:
    """cus_m: cus_a's October api_calls usage (1500 calls, pushed, metered and invoiced alike) rated 6000
    under a $100.00 minimum, so rating adds a true-up of 4000 (charge 'minimum', no meter) that Stripe
    cannot price (catalog finding not_expressible). Our preview: 10000 in 2 lines. Stripe's invoice
    in_cus_m (paid, created Nov 1 01:00): the usage line, 1500 for 6000. No invoice item yet. Its
    `total_excluding_tax` is its lines' 6000 unless given (None: unknown)."""
    for table, where in (("usage_aggregates", "meter = 'api_calls' AND hour < TIMESTAMPTZ '2026-11-01 00:00:00+00'"),
                         ("stripe_push_ledger", "meter = 'api_calls' AND revision = 1"),
                         ("stripe_meter_summaries", "meter = 'api_calls'")):
        con.execute(f"INSERT INTO {table} SELECT * REPLACE ('cus_m' AS customer_id) FROM {table} "
                    f"WHERE customer_id = 'cus_a' AND {where}")
    con.execute("""INSERT INTO rated_usage SELECT * REPLACE ('cus_m' AS customer_id, 6000 AS amount_minor)
                   FROM rated_usage WHERE customer_id = 'cus_a' AND charge = 'api calls'""")
    con.execute(f"""INSERT INTO rated_usage SELECT * REPLACE ('cus_m' AS customer_id, 'minimum' AS charge,
                    NULL AS meter, NULL AS quantity, NULL AS billable_quantity, 'minimum' AS model,
                    {MINIMUM_TRUE_UP} AS amount_minor)
                    FROM rated_usage WHERE customer_id = 'cus_a' AND charge = 'platform fee'""")
    con.execute("""INSERT INTO invoice_previews SELECT * REPLACE ('cus_m' AS customer_id, 10000 AS total_minor,
                   2 AS lines) FROM invoice_previews WHERE customer_id = 'cus_a'""")
    con.execute("INSERT INTO stripe_catalog_findings (finding, kind, our_key, detail, synced_at) VALUES "
                "('not_expressible', 'price', 'pro|2026-01|minimum', 'minimum', ?)", [PULLED])
    con.execute("""INSERT INTO stripe_invoices_api SELECT * REPLACE ('in_cus_m' AS invoice_id, 'cus_m' AS customer_id,
                   6000 AS amount_due, 6000 AS amount_paid, 6000 AS total)
                   FROM stripe_invoices_api WHERE invoice_id = 'in_cus_a'""")
    con.execute("""INSERT INTO stripe_invoice_lines_api SELECT * REPLACE ('in_cus_m' AS invoice_id, 'il_m' AS line_id,
                   'cus_m' AS customer_id, 6000 AS amount)
                   FROM stripe_invoice_lines_api WHERE invoice_id = 'in_cus_a'""")
    # copied from in_cus_a's: derived again from in_cus_m's own lines, unless the test gives its value
    if total_excluding_tax is FROM_LINES:
        con.execute("""UPDATE stripe_invoices_api i SET total_excluding_tax = (SELECT sum(amount)
                       FROM stripe_invoice_lines_api l WHERE l.invoice_id = i.invoice_id AND l.pulled_at = i.pulled_at)
                       WHERE invoice_id = 'in_cus_m'""")
    else:
        con.execute("UPDATE stripe_invoices_api SET total_excluding_tax = ? WHERE invoice_id = 'in_cus_m'",
                    [total_excluding_tax])


def ledger_item(con: duckdb.DuckDBPyConnection, item_id: str, invoice_id: str | None,
                amount: int = MINIMUM_TRUE_UP) -> None:
    """cus_m's October minimum billed as invoice item `item_id`, acknowledged by Stripe: onto `invoice_id`,
    or (None) pending at Stripe for the subscription's next invoice (stripe_invoice_items, revision 1)."""
    con.execute("""INSERT INTO stripe_invoice_items (customer_id, period_start, period_end, plan, plan_version, charge,
                   currency, revision, amount_minor, target_minor, item_key, idempotency_key, stripe_customer_id,
                   subscription_id, target_invoice_id, stripe_invoice_item_id, stripe_invoice_id, status, attempts,
                   first_attempt_at, last_attempt_at, resolved_by, created_at, updated_at)
                   VALUES ('cus_m', DATE '2026-10-01', DATE '2026-11-01', 'pro', '2026-01', 'minimum', 'usd', 1, ?, ?,
                   'cus_m|2026-10-01|pro|2026-01|minimum|r1', 'k', 'cus_stripe_m', 'sub_m', ?, ?, ?, 'acknowledged',
                   1, ?, ?, 'response', ?, ?)""",
                [amount, amount, invoice_id, item_id, invoice_id, PULLED, PULLED, PULLED, PULLED])


def pulled_item_line(con: duckdb.DuckDBPyConnection, invoice_id: str, line_id: str, item_id: str, amount: int,
                     metering_item: str | None = None) -> None:
    """An invoice item's line on an API-pulled invoice of cus_m: no price meter, the item's period (October),
    and the item's metadata[metering_item] when it is one of the engine's. The invoice's total grows by
    it (Stripe's total is the sum of its lines, before discounts)."""
    con.execute("""INSERT INTO stripe_invoice_lines_api (billing_month, invoice_id, line_id, customer_id, meter,
                   quantity_decimal, amount, currency, period_start, period_end, invoice_item, metering_item,
                   pulled_at)
                   VALUES (?, ?, ?, 'cus_m', NULL, 1, ?, 'usd', TIMESTAMPTZ '2026-10-01 00:00:00+00',
                   TIMESTAMPTZ '2026-11-01 00:00:00+00', ?, ?, ?)""",
                [MONTH, invoice_id, line_id, amount, item_id, metering_item, PULLED])
    invoice_total_is_its_lines(con, invoice_id)


def invoice_total_is_its_lines(con: duckdb.DuckDBPyConnection, invoice_id: str) -> None:
    """Set the invoice's total and total_excluding_tax to the sum of its lines, as Stripe's are without
    discounts or taxes: the API-pulled copies' from the lines of the same pull, else the webhook state's
    from its lines. One stored without total_excluding_tax (NULL: before the field existed) keeps it
    unknown. Call it after changing an invoice's lines by hand."""
    lines_api = """(SELECT sum(amount) FROM stripe_invoice_lines_api l
                    WHERE l.invoice_id = i.invoice_id AND l.pulled_at = i.pulled_at)"""
    con.execute(f"""UPDATE stripe_invoices_api i SET total = {lines_api},
                    total_excluding_tax = CASE WHEN total_excluding_tax IS NOT NULL THEN {lines_api} END
                    WHERE invoice_id = ?""", [invoice_id])
    lines_webhook = "(SELECT sum(amount) FROM stripe_invoice_lines l WHERE l.invoice_id = i.invoice_id)"
    con.execute(f"""UPDATE stripe_invoices i SET total = {lines_webhook},
                    total_excluding_tax = CASE WHEN total_excluding_tax IS NOT NULL THEN {lines_webhook} END
                    WHERE invoice_id = ? AND invoice_id NOT IN (SELECT invoice_id FROM stripe_invoices_api)""",
                [invoice_id])


def _unix(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(0), dt.UTC).timestamp())


def next_invoice_with_item(item_id: str) -> dict[str, Any]:
    """cus_m's subscription invoice closing November (in_next, open, created Dec 1), as Stripe sends it:
    November's usage (700) and the October minimum's invoice item, which Stripe held pending until then
    (line period: the item's, October; parent: the item)."""
    item_line = {
        "id": "il_next_item", "object": "line_item", "amount": MINIMUM_TRUE_UP, "currency": "usd",
        "quantity": 1, "quantity_decimal": "1", "description": "minimum (pro 2026-01), 2026-10-01 to 2026-11-01",
        "period": {"start": _unix(PS), "end": _unix(PE)}, "pricing": None,
        "parent": {"type": "invoice_item_details", "subscription_item_details": None,
                   "invoice_item_details": {"invoice_item": item_id, "proration": False, "subscription": "sub_m"}},
        "metadata": {"metering_item": "cus_m|2026-10-01|pro|2026-01|minimum|r1", "metering_customer_id": "cus_m"},
    }
    usage_line = {
        "id": "il_next_usage", "object": "line_item", "amount": 700, "currency": "usd", "quantity": 1050,
        "quantity_decimal": "1050", "period": {"start": _unix(PE), "end": _unix(dt.date(2026, 12, 1))},
        "pricing": {"type": "price_details", "price_details": {"price": "price_api", "product": "prod_api"}},
        "parent": {"type": "subscription_item_details", "subscription_item_details": {"subscription_item": "si_m"}},
    }
    total = MINIMUM_TRUE_UP + 700
    return {
        "id": "in_next", "object": "invoice", "status": "open", "customer": "cus_stripe_m", "currency": "usd",
        "amount_due": total, "amount_paid": 0, "amount_remaining": total, "total": total, "subtotal": total,
        "total_excluding_tax": total,
        "attempt_count": 0, "created": _unix(dt.date(2026, 12, 1)), "period_start": _unix(PE),
        "period_end": _unix(dt.date(2026, 12, 1)), "billing_reason": "subscription_cycle",
        "metadata": {"customer_id": "cus_m"},
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_m", "metadata": {}}},
        "status_transitions": {"finalized_at": _unix(dt.date(2026, 12, 1)) + 3600},
        "lines": {"object": "list", "has_more": False, "data": [usage_line, item_line]},
    }


def land_invoice_webhook(con: duckdb.DuckDBPyConnection, landing: Path, invoice: dict[str, Any]) -> None:
    """`invoice` delivered as an invoice.finalized webhook: landed, then folded into stripe_invoices and
    stripe_invoice_lines by the state rebuild, as the receiver and the webhooks job do."""
    event = {"id": f"evt_{invoice['id']}", "object": "event", "api_version": "2025-03-31.basil",
             "created": invoice["status_transitions"]["finalized_at"], "livemode": False,
             "type": "invoice.finalized", "data": {"object": invoice}}
    writer = LandingWriter(landing)
    writer.append(json.dumps(event, separators=(",", ":")), {})
    writer.close()
    land_directory(con, landing)
    rebuild_invoices(con)


def rate_days(con: duckdb.DuckDBPyConnection, rules: Any, month: dt.date, days: list[dt.date]) -> None:
    """Aggregate `days` and rate `month` as the assets do, storing the rated lines and the previews."""
    from metering.rating import service

    for day in days:
        service.refresh_aggregates(con, rules.meters, day)
    rated, previews = service.rate_month(con, rules, month)
    now = dt.datetime.now(dt.UTC)
    service.write_rated(con, month, rated, rules, now)
    service.write_previews(con, month, previews, now)


ACME_SEPTEMBER_CSV = """customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior
acme,Acme,a@x.test,usd,,pro,2026-09-01,succeeds
"""


def _acme_september_events(path: Path) -> Path:
    """acme's September: 1,500 API calls (us), 1,000,000 large tokens, 2 seats."""
    lines = []
    for meter, when, count, value, props in (("api_calls", "2026-09-03T10:00:00", 1500, None, {"region": "us"}),
                                             ("tokens", "2026-09-04T10:00:00", 1, "1000000", {"model": "large"}),
                                             ("seats", "2026-09-05T10:00:00", 1, "2", None)):
        for i in range(count):
            event = {"event_id": f"acme-{meter}-{i}", "customer_id": "acme", "meter": meter, "timestamp": f"{when}Z"}
            if props:
                event["properties"] = props
            if value is not None:
                event["value"] = value
            lines.append(json.dumps(event))
    path.write_text("\n".join(lines) + "\n")
    return path


def acme_september_on_clock(con: duckdb.DuckDBPyConnection, client: Any, rules_dir: Path, tmp_path: Path,
                            before_push: Any = None) -> tuple[Any, Any]:
    """acme on pro from 2026-09-01 with its September usage: ingested, rated, the catalog synced onto a new
    test clock (frozen at Sep 1 00:00), then `before_push(clock)` (if given), then every September day
    pushed on the clock. Returns (rules, clock)."""
    from metering.customers import load_customers
    from metering.ingest.load import ingest_files
    from metering.rules.plans import load_rules
    from metering.stripe.catalog import sync_catalog
    from metering.stripe.clock import push_days_on_clock
    from metering.stripe.push import PushConfig
    from metering import warehouse

    september = dt.date(2026, 9, 1)
    rules = load_rules(rules_dir)
    (tmp_path / "raw").mkdir()
    (tmp_path / "customers.csv").write_text(ACME_SEPTEMBER_CSV)
    days = [september + dt.timedelta(days=i) for i in range(30)]
    ingest_files(con, [_acme_september_events(tmp_path / "raw" / "usage.jsonl")], rules_dir=rules_dir)
    customers = load_customers(tmp_path / "customers.csv", rules)
    warehouse.replace_rows(con, "customer_plans", "TRUE", [], customers)
    rate_days(con, rules, september, days)
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _unix(september)})
    sync_catalog(con, client, rules, customers, create_customers=True, test_clock=clock.id,
                 sandbox_payment_behavior=True)
    if before_push is not None:
        before_push(clock)

    def clock_now() -> dt.datetime:
        return dt.datetime.fromtimestamp(client.v1.test_helpers.test_clocks.retrieve(clock.id).frozen_time, dt.UTC)

    push_days_on_clock(con, client, rules.meters, clock.id, days[0], days[-1], PushConfig(rate=0), now=clock_now)
    return rules, clock
