"""The deliberate discrepancies the main job plants, so finance sees each kind of finding.

- **price drift** (`amount_mismatch`): before the catalog sync, a Stripe price for one metered
  charge of the `scale` plan already exists under our lookup key with a unit amount 10 % higher
  than the rules say. The sync reports it as drift (prices are immutable) and the subscriptions use
  it, so Stripe invoices those customers more than we rated.
- **extra usage in Stripe** (`quantity_mismatch`): after the month's pushes, one meter event is sent
  to Stripe directly (not through the engine) for a customer and day we have no usage of that meter.
- **late usage** (`late_after_finalization`): after the period's invoices are finalized, a file
  arrives with an event dated on the month's last day; the engine rates it but may no longer push it.
- **declined renewals** (dunning): the customers whose card declines (`payment_behavior` in the
  customer list) settle their first invoice out of band the day it is issued, so their subscriptions
  go on and their renewals are declined and dunned. Left unpaid, Stripe would void that first invoice
  after 23 hours and end the subscription (`incomplete_expired`): nothing would be left to dun.

Everything goes through the official SDK against the local sandbox; nothing is planted in our own
warehouse, which only ever sees what a real deployment would see.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import stripe

from metering.rules.plans import load_rules
from metering.stripe.catalog import (LATEST_CUSTOMER_MAP_SQL, CatalogReport, NotExpressible, lookup_key, price_params,
                                     sync_meters)
from metering.stripe.keys import event_name

if TYPE_CHECKING:
    from pipelines.demo import DemoOptions

DRIFT_PLAN = "scale"
DRIFT_FACTOR = Decimal("1.1")
LATE_FILE = "usage-late-after-close.jsonl"


def _bump(params: dict[str, Any]) -> dict[str, Any]:
    def more(text: str) -> str:
        return format((Decimal(text) * DRIFT_FACTOR).normalize(), "f")

    out = dict(params)
    if "unit_amount_decimal" in out:
        out["unit_amount_decimal"] = more(out["unit_amount_decimal"])
    if "tiers" in out:
        out["tiers"] = [{**t, "unit_amount_decimal": more(t["unit_amount_decimal"])} for t in out["tiers"]]
    return out


def plant_before_sync(client: stripe.StripeClient, options: DemoOptions) -> str | None:
    """Create the drifted price (and the meters it needs, exactly as the sync would). Idempotent."""
    rules = load_rules(options.rules_dir)
    plan = rules.plans.get(DRIFT_PLAN)
    version = plan.version_at(options.month) if plan else None
    if version is None:
        return None
    report = CatalogReport()
    sync_meters(client, rules.meters, "day", report)
    for charge in version.charges:
        if charge.meter is None:
            continue
        try:
            params = price_params(version, charge, report.meters.get(charge.meter))
        except NotExpressible:
            continue
        key = lookup_key(version, charge)
        existing = client.v1.prices.list({"lookup_keys": [key], "limit": 1}).data
        if existing:
            return existing[0].id
        products = [p for p in client.v1.products.list({"limit": 100}).auto_paging_iter()
                    if p.metadata and p.metadata.to_dict().get("plan") == DRIFT_PLAN]
        product = products[0] if products else client.v1.products.create(
            {"name": DRIFT_PLAN, "metadata": {"plan": DRIFT_PLAN}},
            {"idempotency_key": f"metering-demo:product:{DRIFT_PLAN}"})
        price = client.v1.prices.create({**_bump(params), "product": product.id},
                                        {"idempotency_key": f"metering-demo:drift:{key}"})
        return price.id
    return None


def settle_declined_first_invoices(client: stripe.StripeClient) -> list[str]:
    """Pay out of band the first invoice of every subscription left `incomplete` by a declined card
    (run after the catalog sync, before the clock moves: within Stripe's 23 hours). Idempotent;
    returns the invoices settled."""
    settled: list[str] = []
    # Stripe lists a subscription on a test clock only with `test_clock` (or `customer`), and the
    # demo's customers are on its clock: every clock's, and those on none
    clocks = client.v1.test_helpers.test_clocks.list({"limit": 100}).auto_paging_iter()
    scopes: list[dict[str, Any]] = [{}] + [{"test_clock": c.id} for c in clocks]
    for scope in scopes:
        for sub in client.v1.subscriptions.list({"status": "incomplete", "limit": 100, **scope}).auto_paging_iter():
            invoice = sub.latest_invoice if isinstance(sub.latest_invoice, str) else sub.latest_invoice.id
            client.v1.invoices.pay(invoice, {"paid_out_of_band": True},
                                   {"idempotency_key": f"metering-demo:first-invoice:{invoice}"})
            settled.append(invoice)
    return settled


def plant_extra_usage(client: stripe.StripeClient, con, options: DemoOptions) -> tuple[str, str] | None:
    """Send one meter event the engine never sent: a customer and day with none of that meter's usage."""
    month_end = options.month_end
    # the latest sync's map: the table keeps earlier syncs' mappings too, to Stripe customers (on test
    # clocks) that may no longer be the customer's
    row = con.execute(
        """
        WITH days AS (
            SELECT CAST(d AS DATE) AS day FROM range(CAST(? AS DATE), CAST(? AS DATE), INTERVAL 1 DAY) t(d)
        )
        SELECT m.customer_id, m.stripe_customer_id, days.day
        FROM ({latest_map}) m CROSS JOIN days
        WHERE coalesce(m.billing_anchor_day, 1) = 1       -- a calendar-month period: closed by the demo
          AND m.plan <> ?                                   -- keep the findings apart from the price drift
          AND m.customer_id IN (SELECT customer_id FROM customer_plans GROUP BY 1 HAVING count(*) = 1)
          AND m.customer_id IN (SELECT customer_id FROM usage_events WHERE meter = 'api_calls')
          AND NOT EXISTS (SELECT 1 FROM usage_events e WHERE e.meter = 'api_calls'
                          AND e.customer_id = m.customer_id AND e.event_date = days.day)
        ORDER BY days.day DESC, m.customer_id LIMIT 1
        """.format(latest_map=LATEST_CUSTOMER_MAP_SQL),
        [options.month, month_end, DRIFT_PLAN],
    ).fetchone()
    if row is None:
        return None
    customer_id, stripe_customer, day = row
    if _planted(client, stripe_customer, day):   # by an earlier run (the day has none of our usage)
        return customer_id, "api_calls"
    try:
        _send_extra(client, customer_id, stripe_customer, day)
    except stripe.InvalidRequestError as exc:
        # A previous run planted it already: Stripe refuses the identifier a second time.
        if "already exists" not in str(exc):
            raise
    return customer_id, "api_calls"


def _planted(client: stripe.StripeClient, stripe_customer: str, day: dt.date) -> bool:
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    for meter in client.v1.billing.meters.list({"limit": 100}).auto_paging_iter():
        if meter.event_name == event_name("api_calls"):
            summaries = client.v1.billing.meters.event_summaries.list(
                meter.id, {"customer": stripe_customer, "start_time": start, "end_time": start + 86400}).data
            return any(s.aggregated_value for s in summaries)
    return False


def _send_extra(client: stripe.StripeClient, customer_id: str, stripe_customer: str, day: dt.date) -> None:
    client.v1.billing.meter_events.create(
        {"event_name": event_name("api_calls"), "identifier": f"demo-extra-{customer_id}"[:100],
         "timestamp": int(dt.datetime(day.year, day.month, day.day, 12, tzinfo=dt.UTC).timestamp()),
         "payload": {"stripe_customer_id": stripe_customer, "value": "250"}},
        {"idempotency_key": f"metering-demo:extra:{customer_id}"})


def plant_after_close(options: DemoOptions) -> list[str]:
    """Write the late file (an event on the month's last day); returns the files to ingest."""
    last_day = options.month_end - dt.timedelta(days=1)
    with options.customers_file.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    changing = {r["customer_id"] for r in rows if r["plan_effective_from"] != options.month.isoformat()}
    candidates = [r["customer_id"] for r in rows  # a calendar-month customer on one plan all month
                  if r["billing_anchor_day"] in ("", "1") and r["customer_id"] not in changing
                  and r["plan"] != DRIFT_PLAN]
    if not candidates:   # a small demo may have none: no late file (the demo skips that step)
        return []
    customer_id = min(candidates)
    event = {"event_id": f"evt_late_after_close_{last_day:%Y%m%d}", "customer_id": customer_id,
             "meter": "api_calls", "timestamp": f"{last_day}T18:30:00Z", "properties": {"region": "us"}}
    path = Path(options.raw) / LATE_FILE
    path.write_text(json.dumps(event) + "\n")
    return [str(path)]
