"""Gaps a hand mutation audit found in the push's keys, windows and ledger (real sandbox, real DuckDB).

- a hashed identifier / Idempotency-Key (long customer ids) must still depend on every input, the
  window above all: two windows of one customer under one identifier collide at Stripe;
- a `max` / `last` / `unique_count` window carries the period-to-date value up to its end,
  exclusive: the first hour of the next billing period is not in the previous period's last window;
- an hour window's ledger row ends one hour after it starts (the push reads Stripe's summary over
  [window_start, window_end) when it resolves a stale row);
- a revision's meter event is timestamped window_start + revision seconds, so a corrected total is
  Stripe's most recent event of its window.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from pathlib import Path

import polars as pl

from metering import warehouse
from metering.stripe.keys import idempotency_key, meter_event_identifier
from metering.stripe_sandbox.testing import running_sandbox
from push_world import NOW, World, day_start, make_world

OCT1 = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
LONG = "customer-" + "x" * 91   # 100 characters: the readable identifier would be longer than 100


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_a_hashed_identifier_and_key_are_the_sha256_of_every_input() -> None:
    # keys.py contract: identifier = "h-" + sha256(canonical) when canonical > 100 characters;
    # key = "metering-push:h-" + sha256("metering-push:" + canonical) when that is > 255 characters
    canonical = f"{LONG}|tokens|day|20261001T0000Z|r3"
    assert meter_event_identifier(LONG, "tokens", "day", OCT1, 3) == "h-" + _sha(canonical)
    longer = "c" * 300
    key_text = f"metering-push:{longer}|tokens|hour|20261001T0500Z|r2"
    assert (idempotency_key(longer, "tokens", "hour", OCT1 + dt.timedelta(hours=5), 2)
            == "metering-push:h-" + _sha(key_text))
    # every input moves it: the window's start and kind, the meter, the customer, the revision
    def variants(customer: str) -> list[tuple]:
        return [(customer, "tokens", "day", OCT1, 3), (customer, "tokens", "day", OCT1 + dt.timedelta(days=1), 3),
                (customer, "tokens", "hour", OCT1, 3), (customer, "api_calls", "day", OCT1, 3),
                (customer + "y", "tokens", "day", OCT1, 3), (customer, "tokens", "day", OCT1, 4)]

    assert len({meter_event_identifier(*v) for v in variants(LONG)}) == 6
    assert len({idempotency_key(*v) for v in variants(longer)}) == 6


def test_two_windows_of_a_customer_with_a_long_id_both_reach_stripe(tmp_path: Path, rules_dir: Path) -> None:
    csv = ("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
           f"{LONG},Long,billing@long.test,usd,,starter,2026-01-01,succeeds\n")
    with running_sandbox(now=int(NOW.timestamp()), seed=7) as sb, \
            warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        world = make_world(con, sb, rules_dir, tmp_path, csv)
        d1, d2 = dt.date(2026, 11, 17), dt.date(2026, 11, 18)
        world.add_events([(LONG, "tokens", day_start(d1) + dt.timedelta(hours=5), "7", {"model": "small"}),
                          (LONG, "tokens", day_start(d2) + dt.timedelta(hours=5), "11", {"model": "small"})])
        report = world.pusher().push(d1, d2)
        assert (report.acknowledged, report.failed, report.unknown) == (2, 0, 0)
        # 7 + 11: each day's window is its own event at Stripe
        assert world.stripe_total(LONG, "tokens", day_start(d1), day_start(d2) + dt.timedelta(days=1)) == Decimal(18)
        assert world.ledger()["identifier"].n_unique() == 2


def test_the_first_hour_of_the_next_period_is_not_in_the_previous_periods_last_window(world: World) -> None:
    """acme bills by calendar month. Oct 31 10:00: storage 5 GB, 4 seats, user u1; Nov 1 00:30 (the
    next period's first hour): storage 9 GB, 8 seats, users u2, u3. Stripe's `last` formula bills
    October with its newest event, Oct 31's window: max 5, last 4, 1 distinct user. November: the
    Nov 1 window's period-to-date values from Nov 1 on: 9, 8, 2 users."""
    oct31, nov1 = dt.date(2026, 10, 31), dt.date(2026, 11, 1)
    before = day_start(oct31) + dt.timedelta(hours=10)
    after = day_start(nov1) + dt.timedelta(minutes=30)
    world.add_events([
        ("acme", "storage_gb", before, "5", {}), ("acme", "storage_gb", after, "9", {}),
        ("acme", "seats", before, "4", {}), ("acme", "seats", after, "8", {}),
        ("acme", "active_users", before, None, {"user_id": "u1"}),
        ("acme", "active_users", after, None, {"user_id": "u2"}),
        ("acme", "active_users", after, None, {"user_id": "u3"}),
    ])
    report = world.pusher().push(oct31, nov1)
    assert (report.acknowledged, report.failed, report.late) == (6, 0, 0)
    values = {(m, d): v for m, d, v in world.ledger().select("meter", "event_date", "value").rows()}
    assert values == {("storage_gb", oct31): Decimal(5), ("storage_gb", nov1): Decimal(9),
                      ("seats", oct31): Decimal(4), ("seats", nov1): Decimal(8),
                      ("active_users", oct31): Decimal(1), ("active_users", nov1): Decimal(2)}
    nov1_start, dec1 = day_start(nov1), dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    for meter, october, november in (("storage_gb", 5, 9), ("seats", 4, 8), ("active_users", 1, 2)):
        assert world.stripe_total("acme", meter, OCT1, nov1_start) == Decimal(october), meter
        assert world.stripe_total("acme", meter, nov1_start, dec1) == Decimal(november), meter


def test_hour_windows_end_an_hour_after_they_start(tmp_path: Path, rules_dir: Path) -> None:
    with running_sandbox(now=int(NOW.timestamp())) as sb, warehouse.open_warehouse(tmp_path / "h.duckdb") as con:
        world = make_world(con, sb, rules_dir, tmp_path, window_kind="hour")
        d1 = dt.date(2026, 11, 17)
        world.add_events([("acme", "api_calls", day_start(d1) + dt.timedelta(hours=5, minutes=10), None, {}),
                          ("acme", "storage_gb", day_start(d1) + dt.timedelta(hours=23, minutes=59), "3", {})])
        report = world.pusher(window_kind="hour").push(d1, d1)
        assert report.acknowledged == 2
        rows = world.ledger().select("meter", "window_start", "window_end").rows()
        h5, h23 = day_start(d1) + dt.timedelta(hours=5), day_start(d1) + dt.timedelta(hours=23)
        assert sorted(rows) == [("api_calls", h5, h5 + dt.timedelta(hours=1)),
                                ("storage_gb", h23, h23 + dt.timedelta(hours=1))]


def test_each_revision_is_timestamped_after_the_previous_one(world: World) -> None:
    d1 = dt.date(2026, 11, 17)
    world.add_events([("acme", "api_calls", day_start(d1) + dt.timedelta(hours=1), None, {})])
    world.pusher().push(d1, d1)
    world.add_events([("acme", "api_calls", day_start(d1) + dt.timedelta(hours=2), None, {})])
    world.pusher().push(d1, d1)
    world.add_events([("acme", "api_calls", day_start(d1) + dt.timedelta(hours=3), None, {})])
    world.pusher().push(d1, d1)
    led = world.ledger().filter(pl.col("meter") == "api_calls")
    # revision r is sent at window_start + r seconds: Nov 17 00:00:01, :02, :03
    assert led.select("revision", "value", "status", "event_timestamp").rows() == [
        (r, Decimal(r), "acknowledged", day_start(d1) + dt.timedelta(seconds=r)) for r in (1, 2, 3)]
    assert world.stripe_total("acme", "api_calls", day_start(d1), day_start(d1) + dt.timedelta(days=1)) == Decimal(3)


def test_a_period_is_closed_at_the_instant_it_ends_on_the_customers_clock(tmp_path: Path, rules_dir: Path) -> None:
    """Periods are half-open [start, end): on a clock frozen exactly at Oct 1 00:00 (where
    `clock.push_days_on_clock` leaves it after pushing Sep 30) September has ended, and its draft
    invoice is there to carry the true-up. 4 seats x 10.00 = 40.00 under pro's 100.00 minimum:
    6000 minor units."""
    from metering.stripe.invoice_items import InvoiceItemBiller, item_key
    from push_world import FAST_RETRY, SEP1, SEPTEMBER, customer_on_clock, rate_by_hand

    csv = ("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
           "acme,Acme,billing@acme.test,usd,,pro,2026-01-01,succeeds\n")
    wall = dt.datetime(2026, 9, 20, tzinfo=dt.UTC)
    with customer_on_clock(tmp_path, rules_dir, csv, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int(OCT1.timestamp()))
        [draft] = [i for i in client.v1.invoices.list({"customer": cus, "limit": 100}).data
                   if i.billing_reason == "subscription_cycle" and i.period_end == int(OCT1.timestamp())]
        assert draft.status == "draft"
        rate_by_hand(con, {"platform fee": 4900, "seats": 4000, "minimum spend": 6000},
                     rated_at=wall - dt.timedelta(minutes=5))
        run = InvoiceItemBiller(con, client, rate=0, retry=FAST_RETRY, now=lambda: wall).run(SEPTEMBER)
        assert (run.charges, run.new_revisions, run.on_draft_invoice, run.needs_operator) == (1, 1, 1, 0)
        items = [(i.amount, i.invoice, i.metadata["metering_item"])
                 for i in client.v1.invoice_items.list({"customer": cus, "limit": 100}).auto_paging_iter()]
        assert items == [(6000, draft.id, item_key("acme", SEPTEMBER, "pro", "2026-01", "minimum spend", 1))]
        # Stripe's item period end is inclusive (stripe-facts.md): September's last second, Sep 30 23:59:59
        [item] = client.v1.invoice_items.list({"customer": cus, "limit": 100}).data
        assert (item.period.start, item.period.end) == (int(SEP1.timestamp()), int(OCT1.timestamp()) - 1)
