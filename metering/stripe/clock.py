"""Pushing on a Stripe test clock (sandbox / test mode demos): Stripe's "now" for a customer on a
test clock is the clock's frozen time, so a day can only be pushed once the clock has reached it,
and must be pushed before the invoice of its billing period is finalized (period end + grace).

`push_days_on_clock` does the safe interleaving: for each day, advance the clock to that day's end
(the next UTC midnight: period-end invoices are then still drafts in their grace period) and push
the day. Advance the clock further only after the last day has been pushed.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import duckdb
import stripe

from metering.errors import ExternalServiceError
from metering.rules.meters import Meter
from metering.stripe.push import PushConfig, PushReport, Pusher


def advance_clock(client: stripe.StripeClient, clock_id: str, to: dt.datetime, *, timeout: float = 120.0) -> None:
    """Advance a test clock to `to` (no-op when it is already there or beyond) and wait until ready."""
    target = int(to.timestamp())
    clock = client.v1.test_helpers.test_clocks.retrieve(clock_id)
    if int(clock.frozen_time) >= target:
        return
    client.v1.test_helpers.test_clocks.advance(clock_id, {"frozen_time": target},
                                               {"idempotency_key": f"metering-clock:{clock_id}:{target}"})
    deadline = time.monotonic() + timeout
    while (status := client.v1.test_helpers.test_clocks.retrieve(clock_id).status) != "ready":
        # Stripe's statuses: advancing, internal_failure, ready; a failed clock never becomes ready
        if status != "advancing":
            raise ExternalServiceError(
                f"test clock {clock_id} is {status} after being advanced to "
                f"{to.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M} UTC: Stripe could not advance it; create a new clock")
        if time.monotonic() > deadline:
            raise ExternalServiceError(f"test clock {clock_id} did not finish advancing within {timeout:.0f}s")
        time.sleep(0.2)


def push_days_on_clock(
    con: duckdb.DuckDBPyConnection,
    client: stripe.StripeClient,
    meters: dict[str, Meter],
    clock_id: str,
    date_from: dt.date,
    date_to: dt.date,
    config: PushConfig | None = None,
    **pusher_kwargs: Any,
) -> list[PushReport]:
    """For each day in [date_from, date_to]: advance the clock to the day's end, then push the day."""
    reports = []
    day = date_from
    while day <= date_to:
        end = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
        advance_clock(client, clock_id, end)
        reports.append(Pusher(con, client, meters, config, **pusher_kwargs).push(day, day))
        day += dt.timedelta(days=1)
    return reports
