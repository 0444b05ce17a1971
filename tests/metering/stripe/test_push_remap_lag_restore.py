"""Three ways the push once told Stripe's state wrong, each against the real sandbox over loopback:

- a customer re-mapped to another Stripe customer: a `last`-formula meter (seats, storage) billed
  the period at both, because only the exact window the old customer held was held back;
- a lost response, then a summary read moments later, before Stripe's (eventually consistent)
  summary showed the event: recorded `late` ("report to finance") although Stripe invoiced it;
- a ledger restored from a snapshot re-planning a revision Stripe took after the snapshot with
  another value: the 400 `idempotency_error` was recorded `failed` ("nothing recorded").
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl

from metering.stripe.keys import event_name
from metering.stripe.push import PushConfig, Pusher
from push_world import (FAST_RETRY, NOW, World, applied_per_key, customer_on_clock, day_start,
                        expected_total)

D1, D2 = dt.date(2026, 11, 17), dt.date(2026, 11, 18)
NOVEMBER = (dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc))


def t(day: dt.date, hour: int) -> dt.datetime:
    return day_start(day) + dt.timedelta(hours=hour)


def period_value(world: World, stripe_customer: str, meter: str) -> Decimal:
    """What Stripe bills `stripe_customer` for November on `meter` (ungrouped: a sum, or the last value)."""
    summaries = world.client.v1.billing.meters.event_summaries.list(
        world.report.meters[meter], {"customer": stripe_customer, "start_time": int(NOVEMBER[0].timestamp()),
                                     "end_time": int(NOVEMBER[1].timestamp())})
    return sum((Decimal(str(s.aggregated_value)) for s in summaries.data), Decimal(0))


def test_a_remapped_customer_s_last_formula_period_is_billed_once(world: World, tmp_path: Path) -> None:
    """acme (calendar months) is pushed 7 seats, 50 GB of storage and 1500 tokens on Nov 17, then a
    later sync maps it to a duplicate Stripe customer. On Nov 18 it has 7 seats, 10 GB and 200 tokens.
    Seats (`last`) and storage (`max`, Stripe's `last`) carry November's value so far in every window,
    and Stripe bills the period's newest event: Nov 18's window sent to the duplicate made both bill
    November, 7 + 7 seats and 50 + 50 GB, while ours are 7 and 50. The old customer holds the whole
    period: every November window of those meters waits (`moved`). Tokens (`sum`) add up across the
    two customers, so only the window the old customer holds waits: Nov 18's 200 goes to the duplicate
    (1500 + 200 = 1700, ours). Once the operator zeroes seats in the old customer's newest November
    window, seats move (the duplicate bills 7, the old one 0) and storage stays held."""
    world.add_events([("acme", "seats", t(D1, 9), "7", {}), ("acme", "storage_gb", t(D1, 9), "50", {}),
                      ("acme", "tokens", t(D1, 9), "1500", {"model": "small"})])
    assert world.pusher().push(D1, D1).acknowledged == 3
    old, new = world.remap_to_a_duplicate(tmp_path)
    world.add_events([("acme", "seats", t(D2, 9), "7", {}), ("acme", "storage_gb", t(D2, 9), "10", {}),
                      ("acme", "tokens", t(D2, 9), "200", {"model": "small"})])
    assert [expected_total(world.events, "acme", m) for m in ("seats", "storage_gb", "tokens")] == [
        Decimal(7), Decimal(50), Decimal(1700)]

    # Nov 18 alone: seats and storage held (one summary read each, of the old customer's November);
    # tokens sent to the duplicate
    nov18 = world.pusher().push(D2, D2)
    assert (nov18.moved, nov18.new_revisions, nov18.acknowledged, nov18.summary_checks, nov18.calls,
            nov18.needs_operator) == (2, 1, 1, 2, 3, 2)
    assert any(old in e and new in e and "seats" in e and "2026-11-01..2026-12-01" in e for e in nov18.errors)
    billed = {m: (period_value(world, old, m), period_value(world, new, m)) for m in ("seats", "storage_gb", "tokens")}
    assert billed == {"seats": (Decimal(7), Decimal(0)), "storage_gb": (Decimal(50), Decimal(0)),
                      "tokens": (Decimal(1500), Decimal(200))}

    # both days: every November window of seats and storage held, and tokens' Nov 17 (the old customer's)
    both = world.pusher().push(D1, D2)
    assert (both.moved, both.new_revisions, both.acknowledged, both.summary_checks, both.calls) == (5, 0, 0, 3, 3)

    # the operator zeroes seats in the old customer's newest November window (Nov 17): seats move
    world.client.v1.billing.meter_events.create({
        "event_name": event_name("seats"), "payload": {"stripe_customer_id": old, "value": "0"},
        "identifier": "operator-zeroes-old-acme-seats", "timestamp": int(t(D1, 12).timestamp())})
    moved = world.pusher().push(D1, D2)
    assert (moved.moved, moved.new_revisions, moved.acknowledged, moved.summary_checks, moved.calls) == (3, 2, 2, 3, 5)
    billed = {m: (period_value(world, old, m), period_value(world, new, m)) for m in ("seats", "storage_gb", "tokens")}
    assert billed == {"seats": (Decimal(0), Decimal(7)), "storage_gb": (Decimal(50), Decimal(0)),
                      "tokens": (Decimal(1500), Decimal(200))}
    seats = world.ledger().filter(pl.col("meter") == "seats")
    assert seats.select("event_date", "revision", "value", "status", "stripe_customer_id").rows() == [
        (D1, 1, Decimal(7), "acknowledged", old), (D1, 2, Decimal(7), "acknowledged", new),
        (D2, 1, Decimal(7), "acknowledged", new)]
    storage = world.ledger().filter(pl.col("meter") == "storage_gb")
    assert storage.select("event_date", "revision", "value", "status", "stripe_customer_id").rows() == [
        (D1, 1, Decimal(50), "acknowledged", old)]


def test_a_lost_response_is_not_called_late_while_stripe_s_summary_may_lag(tmp_path: Path, rules_dir: Path) -> None:
    """The period's last push (10 tokens on Oct 31) is applied at Stripe but its response is lost
    (`unknown`); the clock then passes October's end and grace, and the invoice is finalized with the
    10 tokens. A push a minute after the attempt reads Stripe's summary, which is eventually consistent
    (10 minutes behind here): it does not show the event yet. The row was superseded and the value
    recorded `late` ("report to finance") although the invoice billed it. It stays `unknown` while the
    summary may lag (the push allows 15 minutes, reconciliation's settle delay); a push after that
    finds the 10 and acknowledges it. Nothing is sent again."""
    oct31 = dt.date(2026, 10, 31)
    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        world = World(con, sb, client, rules, report)
        sb.set_now(int(NOW.timestamp()))     # the sandbox's clock: when events are received and summaries show them
        sb.configure(summary_lag=600)

        def push(minutes: int, attempts: int = 8) -> Any:
            at = NOW + dt.timedelta(minutes=minutes)
            sb.set_now(int(at.timestamp()))
            config = PushConfig(rate=0, retry=replace(FAST_RETRY, max_attempts=attempts))
            return Pusher(con, client, rules.meters, config, now=lambda: at, sleep=lambda s: None).push(oct31, oct31)

        def tokens() -> list[tuple]:
            return world.ledger().filter(pl.col("meter") == "tokens").select(
                "revision", "value", "status", "resolved_by").rows()

        sb.advance_clock(clock.id, int(dt.datetime(2026, 10, 31, 12, tzinfo=dt.timezone.utc).timestamp()))
        world.add_events([("acme", "tokens", day_start(oct31) + dt.timedelta(hours=1), "10", {"model": "small"})])
        sb.inject_fault("lost_response", path="/v1/billing/meter_events", method="POST", count=1)
        assert push(0, attempts=1).unknown == 1
        sb.clear_faults()
        sb.advance_clock(clock.id, int(dt.datetime(2026, 11, 1, 2, tzinfo=dt.timezone.utc).timestamp()))
        requests_before = len(world.meter_event_requests())

        lagging = push(1)
        assert (lagging.calls, lagging.summary_checks, lagging.late, lagging.unknown, lagging.new_revisions) == (
            1, 1, 0, 1, 0)
        assert tokens() == [(1, Decimal(10), "unknown", None)]
        assert "may not show the attempt" in world.ledger()["last_error"][0]

        settled = push(16)
        assert (settled.calls, settled.summary_checks, settled.late, settled.unknown, settled.new_revisions) == (
            1, 1, 0, 0, 0)
        assert tokens() == [(1, Decimal(10), "acknowledged", "summary")]
        assert len(world.meter_event_requests()) == requests_before   # nothing sent again

        invoice = next(i for i in client.v1.invoices.list({"customer": report.customers[0]["stripe_customer_id"]}).data
                       if i.billing_reason == "subscription_cycle")
        billed = [line.quantity_decimal for line in client.v1.invoices.line_items.list(invoice.id, {"limit": 100}).data
                  if client.v1.prices.retrieve(line.pricing.price_details.price).recurring.meter == report.meters["tokens"]]
        assert (invoice.status, billed) == ("paid", [Decimal(10)])


def test_a_key_stripe_holds_with_another_value_is_settled_by_its_summary(world: World) -> None:
    """acme's Nov 17 tokens are pushed (1500, revision 1); the warehouse snapshot is taken; 100 more
    arrive and are pushed (1600, revision 2). The warehouse is then restored from the snapshot (its
    ledger knows revision 1 only) and the raw files re-ingested, by now with another 100 (1700). The
    push plans revision 2 again, with 1700 under the key Stripe holds with 1600: 400
    `idempotency_error`. That was recorded `failed` ("nothing recorded"), leaving Stripe at 1600, and
    a plain re-run sent nothing. Stripe holds that key's first request: the row is `unknown`, its
    summary (1600) settles it in the same run, and revision 3 carries 1700."""
    world.add_events([("acme", "tokens", t(D1, 5), "1500", {"model": "small"})])
    assert world.pusher().push(D1, D1).acknowledged == 1
    world.con.execute("CREATE TABLE snapshot_push_ledger AS SELECT * FROM stripe_push_ledger")
    world.add_events([("acme", "tokens", t(D1, 7), "100", {"model": "small"})])
    assert world.pusher(now=NOW + dt.timedelta(hours=1)).push(D1, D1).acknowledged == 1
    assert world.stripe_total("acme", "tokens", day_start(D1), day_start(D2)) == Decimal(1600)

    world.con.execute("DELETE FROM stripe_push_ledger")
    world.con.execute("INSERT INTO stripe_push_ledger SELECT * FROM snapshot_push_ledger")
    world.add_events([("acme", "tokens", t(D1, 8), "100", {"model": "small"})])
    restored = world.pusher(now=NOW + dt.timedelta(hours=3)).push(D1, D1)
    assert (restored.calls, restored.summary_checks, restored.new_revisions, restored.acknowledged, restored.failed,
            restored.unknown) == (3, 1, 2, 1, 0, 0)
    assert world.ledger().select("revision", "value", "status", "last_http_status", "resolved_by").rows() == [
        (1, Decimal(1500), "acknowledged", 200, "response"), (2, Decimal(1700), "superseded", 400, "summary"),
        (3, Decimal(1700), "acknowledged", 200, "response")]
    assert "holds 1600" in world.ledger()["last_error"][1]
    assert expected_total(world.events, "acme", "tokens") == Decimal(1700)
    assert world.stripe_total("acme", "tokens", day_start(D1), day_start(D2)) == Decimal(1700)
    assert [n for n in applied_per_key(world.meter_event_requests()).values()] == [1, 1, 1]

    again = world.pusher(now=NOW + dt.timedelta(hours=3)).push(D1, D1)
    assert (again.calls, again.new_revisions, again.needs_operator) == (0, 0, 0)
    assert world.stripe_total("acme", "tokens", day_start(D1), day_start(D2)) == Decimal(1700)


def test_the_push_allows_for_the_summary_lag_reconciliation_settles_by(monkeypatch) -> None:
    """One setting says how long Stripe's summaries may lag: reconciliation's settle delay."""
    import pytest

    from metering.errors import BadInputError
    from metering.stripe.push import push_config_from_env

    monkeypatch.delenv("METERING_STRIPE_SETTLE_SECONDS", raising=False)
    assert push_config_from_env().summary_lag == dt.timedelta(seconds=900)
    monkeypatch.setenv("METERING_STRIPE_SETTLE_SECONDS", "0")   # the local sandbox: immediately consistent
    assert push_config_from_env().summary_lag == dt.timedelta(0)
    for bad in ("-5", "soon"):
        monkeypatch.setenv("METERING_STRIPE_SETTLE_SECONDS", bad)
        with pytest.raises(BadInputError, match="METERING_STRIPE_SETTLE_SECONDS"):
            push_config_from_env()
