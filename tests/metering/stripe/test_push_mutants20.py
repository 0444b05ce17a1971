"""Gaps a hand mutation audit found in the push's guards (real sandbox, real DuckDB): a finalized invoice's
period is half-open [start, end), so its FIRST window (window_start = period_start) is inside it and late."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import polars as pl

from metering.stripe.push import PushConfig, Pusher
from push_world import FAST_RETRY, World, customer_on_clock, day_start

UTC = dt.timezone.utc


def test_the_first_day_of_a_finalized_period_is_late_not_pushed(tmp_path: Path, rules_dir: Path) -> None:
    """acme (calendar months) subscribed on a test clock at Oct 1 00:00, advanced to Nov 2 00:00: the October
    invoice, period [Oct 1, Nov 1), is finalized. Tokens: 3 on Oct 1 (04:00), 5 on Nov 1 (04:00).
    Oct 1's window starts at Oct 1 00:00 = period_start: inside [Oct 1, Nov 1), late (35 days is not the
    reason: oldest = Nov 2 00:00 - 35 d + 1 h = Sep 28 01:00 < Oct 1). Nov 1 is November's: acknowledged.
    One call in all; Stripe's October holds 0, Nov 1 holds 5."""
    oct1, nov1 = dt.date(2026, 10, 1), dt.date(2026, 11, 1)
    with customer_on_clock(tmp_path, rules_dir) as (sb, con, client, clock, rules, report):
        world = World(con, sb, client, rules, report)
        world.add_events([("acme", "tokens", day_start(oct1) + dt.timedelta(hours=4), "3", {"model": "small"}),
                          ("acme", "tokens", day_start(nov1) + dt.timedelta(hours=4), "5", {"model": "small"})])
        sb.advance_clock(clock.id, int(dt.datetime(2026, 11, 2, tzinfo=UTC).timestamp()))
        pushed = Pusher(con, client, rules.meters, PushConfig(rate=0, retry=FAST_RETRY),
                        sleep=lambda s: None).push(oct1, nov1)
        assert (pushed.acknowledged, pushed.late, pushed.calls, pushed.failed, pushed.unknown) == (1, 1, 1, 0, 0)
        rows = world.ledger().filter(pl.col("meter") == "tokens").sort("event_date").select(
            "event_date", "revision", "value", "status").rows()
        assert rows == [(oct1, 1, Decimal(3), "late"), (nov1, 1, Decimal(5), "acknowledged")]
        late_error = world.ledger().filter(pl.col("event_date") == oct1)["last_error"][0]
        assert late_error == "the invoice for this period is already finalized: report to finance"
        assert len(world.meter_event_requests()) == 1
        assert world.stripe_total("acme", "tokens", day_start(oct1), day_start(nov1)) == 0
        assert world.stripe_total("acme", "tokens", day_start(nov1), day_start(dt.date(2026, 11, 2))) == 5
