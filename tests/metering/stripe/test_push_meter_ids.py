"""The push finds a meter the warehouse's catalog does not hold by listing Stripe's meters (`_meter_ids`):
a warehouse restored from a backup older than the catalog sync that created the meter, say. Real sandbox
over loopback, real DuckDB (audit 23d's M36, left untested then)."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from decimal import Decimal

from push_world import FAST_RETRY, NOW, World, applied_per_key, day_start

NOV18 = dt.date(2026, 11, 18)


def test_a_meter_missing_from_the_catalog_is_found_by_its_event_name_and_its_summary_decides(world: World) -> None:
    """acme's tokens on Nov 18 (5): attempt 1 is applied at Stripe but its response is lost; attempts 2 and
    3 get 429, so the window is `unknown`. Then the catalog loses its meter rows. 25 h later the window
    is settled by Stripe's summary of the tokens meter, found by listing Stripe's meters by event name:
    acknowledged by the summary, no resend, Stripe's total 5. Matched to another meter (whose summary is
    empty) it would be resent as revision 2 and Stripe's tokens would hold 10; not found, the push fails."""
    world.add_events([("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=3), "5", {"model": "small"})])
    world.sandbox.inject_fault("lost_response", path="/v1/billing/meter_events", method="POST", count=1)
    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=2)
    assert world.pusher(retry=replace(FAST_RETRY, max_attempts=3)).push(NOV18, NOV18).unknown == 1
    key = world.ledger()["idempotency_key"][0]
    world.con.execute("DELETE FROM stripe_objects WHERE kind = 'meter'")
    world.sandbox.clear_faults()
    later = NOW + dt.timedelta(hours=25)
    world.sandbox.set_now(int(later.timestamp()))
    listed_before = len(world.sandbox.requests_log(path="/v1/billing/meters", method="GET"))

    second = world.pusher(now=later).push(NOV18, NOV18)

    assert (second.summary_checks, second.new_revisions, second.acknowledged, second.needs_operator) == (1, 0, 0, 0)
    assert len(world.sandbox.requests_log(path="/v1/billing/meters", method="GET")) == listed_before + 1
    rows = world.ledger().select("revision", "value", "status", "resolved_by").rows()
    assert rows == [(1, Decimal(5), "acknowledged", "summary")]
    assert applied_per_key(world.meter_event_requests()) == {key: 1}
    assert world.stripe_total("acme", "tokens", day_start(NOV18), day_start(NOV18) + dt.timedelta(days=1)) == 5
