"""End to end, small: raw events -> ingest -> aggregate -> rate -> Stripe catalog sync -> push -> test
clock past the period (invoices finalized and paid) -> pull -> reconcile -> report, against the real
local Stripe sandbox through the official SDK. Four discrepancies are planted; each must be reported
with its exact status and money difference, and no clean customer may be flagged.

Rules (written here, so every number is hand-checkable): plan `basic`:
api calls 1 cent per call (per_unit), seats $10.00 per seat (per_unit, `last` meter), platform fee
$5.00 (flat, a licensed price billed in advance). October 2026, calendar-month periods.

| customer | usage | planted | expected |
| --- | --- | --- | --- |
| c_clean1 | 70 + 50 calls, seats 3 | - | matched: api 120 c, seats 3000 c |
| c_clean2 | 80 calls, seats 1 then 2 | - | matched: api 80 c, seats 2000 c |
| c_price | 100 calls | its Stripe subscription item changed to a 1.25 c price (our rule: 1 c) | amount_mismatch +25 |
| c_notpushed | 50 calls Oct 1 (+30 Oct 2 ingested after the push) | Oct 2 window never pushed | not_pushed -30 |
| c_extra | 60 calls | an extra meter event of 5 sent straight to Stripe | extra_in_stripe +5 |
| c_late | 40 calls (+10 on Oct 31 ingested after the invoice was finalized) | late event | late_after_finalization -10 |
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
from decimal import Decimal as D
from pathlib import Path

import polars as pl
import pytest

from metering import warehouse
from tests.metering.reconcile.recon_scenario import rate_days

pytestmark = pytest.mark.slow

MONTH = dt.date(2026, 10, 1)
PROJECT = Path(__file__).resolve().parents[2]

PLAN = """plan: {name}
currency: usd
versions:
  - version: "2026-01"
    effective_from: 2026-01-01
    rounding: half_up
    charges:
      - {{name: api calls, meter: api_calls, model: per_unit, unit_amount: "0.01"}}
      - {{name: seats, meter: seats, model: per_unit, unit_amount: "10.00"}}
      - {{name: platform fee, model: flat, amount: "5.00"}}
"""
CUSTOMERS = {"c_clean1": "basic", "c_clean2": "basic", "c_price": "basic", "c_notpushed": "basic",
             "c_extra": "basic", "c_late": "basic"}


def _ts(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


def _events(path: Path, spec: list[tuple[str, str, str, int, str | None]]) -> Path:
    """spec: (customer, meter, ISO time, how many events, value) -> one JSONL line per event."""
    lines = []
    for customer, meter, when, count, value in spec:
        for i in range(count):
            event = {"event_id": f"{path.stem}-{customer}-{meter}-{when}-{i}", "customer_id": customer,
                     "meter": meter, "timestamp": f"{when}Z"}
            if meter == "api_calls":
                event["properties"] = {"region": "us"}
            if value is not None:
                event["value"] = value
            lines.append(json.dumps(event))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    (folder / "plans").mkdir(parents=True)
    shutil.copy(PROJECT / "rating_rules" / "meters.yaml", folder / "meters.yaml")
    (folder / "plans" / "basic.yaml").write_text(PLAN.format(name="basic"))
    return folder


def _plant_price(client, stripe_customer: str) -> None:
    """At the start of the period someone switches the customer's api calls subscription item in
    Stripe to a 1.25 c price (our rule: 1 c): Stripe bills a price that differs from our rule version."""
    sub = client.v1.subscriptions.list({"customer": stripe_customer}).data[0]
    for item in sub["items"].data:
        price = item.price
        if price.recurring and price.recurring.meter:
            meter = client.v1.billing.meters.retrieve(price.recurring.meter)
            if meter.event_name == "metering_api_calls":
                other = client.v1.prices.create({
                    "currency": "usd", "product": price.product, "unit_amount_decimal": "1.25",
                    "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}})
                client.v1.subscriptions.update(sub.id, {"items": [{"id": item.id, "price": other.id}]})
                return
    raise AssertionError("no api calls item to plant a price on")


def test_planted_discrepancies_are_reported_exactly(stripe_sandbox, tmp_path, rules, isolated_env):
    from metering.customers import load_customers
    from metering.ingest.load import ingest_files
    from metering.reconcile.pulls import pull_stripe_state
    from metering.reconcile.run import reconcile_period
    from metering.reconcile.settings import ReconcileSettings
    from metering.reports import write_report
    from metering.rules.plans import load_rules
    from metering.stripe.catalog import sync_catalog
    from metering.stripe.push import PushConfig, push_usage
    from metering.warehouse import replace_rows

    rules_obj = load_rules(rules)
    customers_csv = tmp_path / "customers.csv"
    customers_csv.write_text(
        "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
        + "".join(f"{c},{c},{c}@example.com,usd,,{p},2026-10-01,succeeds\n" for c, p in CUSTOMERS.items()))
    raw = tmp_path / "raw"
    raw.mkdir()
    first = _events(raw / "usage-1.jsonl", [
        ("c_clean1", "api_calls", "2026-10-01T09:00:00", 70, None),
        ("c_clean1", "api_calls", "2026-10-02T09:00:00", 50, None),
        ("c_clean1", "seats", "2026-10-03T09:00:00", 1, "3"),
        ("c_clean2", "api_calls", "2026-10-05T09:00:00", 80, None),
        ("c_clean2", "seats", "2026-10-03T09:00:00", 1, "1"),
        ("c_clean2", "seats", "2026-10-09T09:00:00", 1, "2"),
        ("c_price", "api_calls", "2026-10-03T09:00:00", 100, None),
        ("c_notpushed", "api_calls", "2026-10-01T09:00:00", 50, None),
        ("c_extra", "api_calls", "2026-10-04T09:00:00", 60, None),
        ("c_late", "api_calls", "2026-10-01T09:00:00", 40, None),
    ])
    client = stripe_sandbox.client(max_network_retries=2)
    days = [dt.date(2026, 10, d) for d in range(1, 32)]

    with warehouse.open_warehouse() as con:
        ingest_files(con, [first], rules_dir=rules)
        replace_rows(con, "customer_plans", "TRUE", [], load_customers(customers_csv, rules_obj))
        rate_days(con, rules_obj, MONTH, days)

        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts("2026-10-01T00:00:00")})
        sync_catalog(con, client, rules_obj, load_customers(customers_csv, rules_obj),
                     create_customers=True, test_clock=clock.id, sandbox_payment_behavior=True)
        stripe_ids = dict(con.execute("SELECT customer_id, stripe_customer_id FROM stripe_customer_map").fetchall())
        _plant_price(client, stripe_ids["c_price"])

        client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-10-31T12:00:00")})
        push_usage(con, client, rules_obj.meters, days[0], days[-1], PushConfig(rate=0))

        # planted: an event we never sent, straight to Stripe, in a window we have no usage for
        client.v1.billing.meter_events.create({
            "event_name": "metering_api_calls", "timestamp": _ts("2026-10-20T10:00:00"), "identifier": "planted-extra",
            "payload": {"stripe_customer_id": stripe_ids["c_extra"], "value": "5"}})
        # planted: a window rated but never pushed
        ingest_files(con, [_events(raw / "usage-2.jsonl", [("c_notpushed", "api_calls", "2026-10-02T09:00:00", 30, None)])],
                     rules_dir=rules)
        rate_days(con, rules_obj, MONTH, [dt.date(2026, 10, 2)])

        # close the period: invoices created at Nov 1, finalized after the 1 h grace, paid
        client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-11-01T02:00:00")})

        # planted: a late event for Oct 31 arrives after the invoice was finalized; rated and pushed
        ingest_files(con, [_events(raw / "usage-3.jsonl", [("c_late", "api_calls", "2026-10-31T20:00:00", 10, None)])],
                     rules_dir=rules)
        rate_days(con, rules_obj, MONTH, [dt.date(2026, 10, 31)])
        push_usage(con, client, rules_obj.meters, days[-1], days[-1], PushConfig(rate=0))

        pulled = pull_stripe_state(con, client, MONTH, meters=list(rules_obj.meters),
                                   settings=ReconcileSettings(settle_seconds=0))
        assert pulled.pending == 0
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(settle_seconds=0), meters=rules_obj.meters)
        files = write_report(con, MONTH, tmp_path / "report")

    usage = {(r["customer_id"], r["meter"]): r for r in result.usage.iter_rows(named=True)}
    flagged = {k: (r["status"], r["amount_diff_minor"]) for k, r in usage.items()
               if r["status"] not in ("matched", "within_tolerance")}
    assert flagged == {
        ("c_price", "api_calls"): ("amount_mismatch", 25),
        ("c_notpushed", "api_calls"): ("not_pushed", -30),
        ("c_extra", "api_calls"): ("extra_in_stripe", 5),
        ("c_late", "api_calls"): ("late_after_finalization", -10),
    }
    # the quantities behind each planted row
    q = {k: (r["our_quantity"], r["pushed_quantity"], r["stripe_quantity"], r["invoiced_quantity"])
         for k, r in usage.items() if k in flagged}
    assert q[("c_price", "api_calls")] == (D(100), D(100), D(100), D(100))
    assert q[("c_notpushed", "api_calls")] == (D(80), D(50), D(50), D(50))
    assert q[("c_extra", "api_calls")] == (D(60), D(60), D(65), D(65))
    # the push refused the Oct 31 window (invoice finalized) and marked it late in the ledger
    assert q[("c_late", "api_calls")] == (D(50), D(40), D(40), D(40))
    assert usage[("c_late", "api_calls")]["reason"].startswith("usage after the invoice was finalized (1 late window(s))")
    # clean customers: every row matched with zero difference, and the amounts are the hand-computed ones
    clean = {k: (r["status"], r["our_amount_minor"], r["stripe_amount_minor"]) for k, r in usage.items()
             if k[0] in ("c_clean1", "c_clean2")}
    assert clean == {
        ("c_clean1", "api_calls"): ("matched", 120, 120),
        ("c_clean1", "seats"): ("matched", 3000, 3000),
        ("c_clean2", "api_calls"): ("matched", 80, 80),
        ("c_clean2", "seats"): ("matched", 2000, 2000),
    }
    # invoice level: our total (usage + $5 fee) vs every Stripe line of October
    inv = {r["customer_id"]: (r["status"], r["amount_diff_minor"], r["our_total_minor"], r["invoice_status"])
           for r in result.invoices.iter_rows(named=True)}
    assert inv["c_clean1"] == ("matched", 0, 120 + 3000 + 500, "paid")
    assert inv["c_clean2"] == ("matched", 0, 80 + 2000 + 500, "paid")
    assert inv["c_price"][:2] == ("amount_mismatch", 25)
    assert inv["c_notpushed"][:2] == ("amount_mismatch", -30)
    assert inv["c_extra"][:2] == ("amount_mismatch", 5)
    assert inv["c_late"][:2] == ("amount_mismatch", -10)
    assert result.unexplained_minor() == {"usd": 25 + 30 + 5}

    # the report's discrepancies sheet carries exactly these rows, largest first
    disc = pl.read_csv(files.folder / "discrepancies.csv")
    assert disc.select("customer_id", "status", "amount_diff_minor").rows() == [
        ("c_notpushed", "not_pushed", -30), ("c_price", "amount_mismatch", 25),
        ("c_late", "late_after_finalization", -10), ("c_extra", "extra_in_stripe", 5)]


def test_usage_acknowledged_after_finalization_is_late_and_nothing_else(stripe_sandbox, tmp_path, rules, isolated_env):
    """The one way pushed usage misses an invoice: the push checked that the invoice was still a draft
    and sent the window, and Stripe finalized the invoice while the call was in flight. The ledger
    records the acknowledgement after `finalized_at`, so the 10 calls Stripe metered but did not bill
    are late (explained); nothing else about the row is. The push reads Stripe's time from the test
    clock (`now=`), so the ledger and the invoice share one clock."""
    import threading
    import time

    from metering.customers import load_customers
    from metering.ingest.load import ingest_files
    from metering.reconcile.pulls import pull_stripe_state
    from metering.reconcile.run import reconcile_period
    from metering.reconcile.settings import ReconcileSettings
    from metering.rules.plans import load_rules
    from metering.stripe.catalog import sync_catalog
    from metering.stripe.push import PushConfig, push_usage
    from metering.warehouse import replace_rows

    rules_obj = load_rules(rules)
    customers_csv = tmp_path / "customers.csv"
    customers_csv.write_text(
        "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
        "c_race,c_race,c_race@example.com,usd,,basic,2026-10-01,succeeds\n")
    raw = tmp_path / "raw"
    raw.mkdir()
    client = stripe_sandbox.client(max_network_retries=2)
    days = [dt.date(2026, 10, d) for d in range(1, 32)]
    clock_id = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts("2026-10-01T00:00:00")}).id

    def stripe_now() -> dt.datetime:  # Stripe's time for this customer: its test clock
        frozen = stripe_sandbox.client().v1.test_helpers.test_clocks.retrieve(clock_id).frozen_time
        return dt.datetime.fromtimestamp(frozen, dt.UTC)

    def in_flight() -> bool:
        return any(e["status"] is None for e in stripe_sandbox.requests_log(path="/v1/billing/meter_events"))

    with warehouse.open_warehouse() as con:
        ingest_files(con, [_events(raw / "usage-1.jsonl", [("c_race", "api_calls", "2026-10-01T09:00:00", 40, None)])],
                     rules_dir=rules)
        replace_rows(con, "customer_plans", "TRUE", [], load_customers(customers_csv, rules_obj))
        rate_days(con, rules_obj, MONTH, days)
        sync_catalog(con, client, rules_obj, load_customers(customers_csv, rules_obj),
                     create_customers=True, test_clock=clock_id, sandbox_payment_behavior=True)
        client.v1.test_helpers.test_clocks.advance(clock_id, {"frozen_time": _ts("2026-10-31T12:00:00")})
        push_usage(con, client, rules_obj.meters, days[0], days[-1], PushConfig(rate=0), now=stripe_now)

        # 00:30: the period's invoice is a draft (created at 00:00, finalized after the 1 h grace)
        client.v1.test_helpers.test_clocks.advance(clock_id, {"frozen_time": _ts("2026-11-01T00:30:00")})
        ingest_files(con, [_events(raw / "usage-2.jsonl", [("c_race", "api_calls", "2026-10-31T20:00:00", 10, None)])],
                     rules_dir=rules)
        rate_days(con, rules_obj, MONTH, [days[-1]])
        stripe_sandbox.inject_fault("slow", path="/v1/billing/meter_events", count=1, delay=60)
        pusher = threading.Thread(target=push_usage, args=(con, stripe_sandbox.client(max_network_retries=2),
                                                           rules_obj.meters, days[-1], days[-1], PushConfig(rate=0)),
                                  kwargs={"now": stripe_now})
        pusher.start()
        deadline = time.monotonic() + 30
        while not in_flight():  # coordination, not a timing assertion
            assert time.monotonic() < deadline, "the push never sent its window"
            time.sleep(0.01)
        # Stripe finalizes the invoice (40 calls) while the push's call is held, then takes the call
        client.v1.test_helpers.test_clocks.advance(clock_id, {"frozen_time": _ts("2026-11-01T02:00:00")})
        stripe_sandbox.release_slow()
        pusher.join(timeout=60)
        assert not pusher.is_alive()

        ledger = con.execute("SELECT status, last_attempt_at, updated_at FROM stripe_push_ledger "
                             "WHERE customer_id = 'c_race' AND window_start = TIMESTAMPTZ '2026-10-31 00:00:00+00'"
                             ).fetchall()
        settings = ReconcileSettings(settle_seconds=0)
        pull_stripe_state(con, client, MONTH, meters=list(rules_obj.meters), settings=settings)
        finalized_at = con.execute("SELECT finalized_at FROM stripe_invoices_api WHERE customer_id = 'c_race' "
                                   "AND period_end = TIMESTAMPTZ '2026-11-01 00:00:00+00'").fetchall()
        result = reconcile_period(con, MONTH, settings=settings, meters=rules_obj.meters)

    # sent at 00:30 while the invoice was a draft, acknowledged at 02:00; finalized at 01:00
    assert ledger == [("acknowledged", dt.datetime(2026, 11, 1, 0, 30, tzinfo=dt.UTC),
                       dt.datetime(2026, 11, 1, 2, tzinfo=dt.UTC))]
    assert finalized_at == [(dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC),)]
    row = result.usage.filter(customer_id="c_race", meter="api_calls").row(0, named=True)
    assert (row["our_quantity"], row["pushed_quantity"], row["stripe_quantity"], row["invoiced_quantity"]) == (
        D(50), D(50), D(50), D(40))
    assert (row["status"], row["explained"], row["amount_diff_minor"]) == ("late_after_finalization", True, -10)
    assert row["reason"].startswith("usage after the invoice was finalized (1 late window(s): 1 acknowledged by Stripe "
                                    "after the invoice was finalized, 10 not on it)")
    # invoice level: 40 calls + the $5 fee billed in advance vs our 50 + 500; the -10 is the late row's
    inv = result.invoices.filter(customer_id="c_race").row(0, named=True)
    assert (inv["status"], inv["amount_diff_minor"], inv["our_total_minor"]) == ("amount_mismatch", -10, 550)
    assert inv["reason"].endswith("; all of it on the meter rows")
    assert result.unexplained_minor() == {} and result.check_passed()
