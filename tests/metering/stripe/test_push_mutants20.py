"""Gaps a hand mutation audit found in the push's guards (real sandbox, real DuckDB; the finalized
period's first day is in test_push_guard_edges.py): a refused duplicate identifier is `unknown` (Stripe
holds an event), never `failed`; and rows a key refused mid-run leaves `sent` count as unknown in the
recorded run."""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import stripe

from metering.errors import ExternalServiceError
from metering.stripe.client import StripeSettings, make_client
from push_world import FAST_RETRY, NOW, World, applied_per_key, day_start

UTC = dt.timezone.utc


NOV17, NOV18 = dt.date(2026, 11, 17), dt.date(2026, 11, 18)


def _runs_other_than(world: World, run_ids: set[str]) -> list[tuple[int, int, int]]:
    """(acknowledged, failed, unknown) of the recorded push runs not in `run_ids` (a run that raised
    returns no report, but its `finally` recorded it)."""
    return [(a, f, u) for run_id, a, f, u in world.con.execute(
        "SELECT run_id, acknowledged, failed, unknown FROM stripe_push_runs").fetchall() if run_id not in run_ids]


def test_an_identifier_stripe_holds_stays_unknown_when_its_summary_cannot_be_read(world: World) -> None:
    """acme, 5 tokens on Nov 18. Run 1: Stripe applies the call but its response is lost (one attempt):
    `unknown`. 25 h later on Stripe's side (its key forgotten, the identifier kept: identifier_ttl 72 h)
    run 2 resends under the key and is refused "An event already exists with identifier": Stripe holds
    an event, so the row is `unknown`, never `failed` ("nothing recorded"); the summary read that would
    settle it in the same run answers 500, and the run raises. Its recorded run says unknown 1, failed 0,
    and the row is left `unknown`. Run 3 (no fault) settles it from Stripe's summary (acknowledged,
    revision 1, nothing executed again): Stripe holds 5, one event, nothing left for an operator."""
    start = day_start(NOV18)
    world.add_events([("acme", "tokens", start + dt.timedelta(hours=3), "5", {"model": "small"})])
    world.sandbox.inject_fault("lost_response", path="/v1/billing/meter_events", method="POST", count=1)
    first = world.pusher(retry=replace(FAST_RETRY, max_attempts=1)).push(NOV18, NOV18)
    assert (first.unknown, first.failed) == (1, 0)
    [row] = world.ledger().rows(named=True)

    world.sandbox.configure(identifier_ttl=72 * 3600)
    world.sandbox.set_now(int((NOW + dt.timedelta(hours=25)).timestamp()))
    world.sandbox.inject_fault("server_error", path="/v1/billing/meters/*/event_summaries", method="GET", count=1)
    with pytest.raises(stripe.StripeError):
        world.pusher().push(NOV18, NOV18)
    refused = [r for r in world.meter_event_requests() if r["idempotency_key"] == row["idempotency_key"]]
    assert [r["status"] for r in refused] == ["lost_response", 400]   # the key forgotten, the identifier held
    assert _runs_other_than(world, {first.run_id}) == [(0, 0, 1)]
    after = world.ledger().select("revision", "status", "last_http_status").rows()
    assert after == [(1, "unknown", 400)]

    world.sandbox.clear_faults()
    third = world.pusher().push(NOV18, NOV18)
    assert (third.failed, third.unknown, third.needs_operator, third.summary_checks) == (0, 0, 0, 1)
    assert world.ledger().select("revision", "status", "resolved_by").rows() == [(1, "acknowledged", "summary")]
    assert applied_per_key(world.meter_event_requests()) == {row["idempotency_key"]: 1}
    assert world.stripe_total("acme", "tokens", start, start + dt.timedelta(days=1)) == 5


def test_rows_left_sent_by_a_key_refused_mid_run_are_recorded_unknown_then_sent_once(world: World) -> None:
    """Tokens: acme 3 on Nov 17 and 4 on Nov 18, globex 6 on Nov 18; one call at a time. The first meter
    event is held in flight (slow fault) while the account's API key is rolled (the sandbox accepts only
    the new one), then let through: acknowledged. Every later call gets 401: the run raises
    ExternalServiceError, the other two rows are left `sent` (the pair refused stops; the rest wait), and
    its recorded run counts them unknown (2), acknowledged 1. A run with the new key sends each of them
    once under its own key: Stripe holds exactly 3 + 4 and 6, each key executed once."""
    world.add_events([("acme", "tokens", day_start(NOV17) + dt.timedelta(hours=1), "3", {"model": "small"}),
                      ("acme", "tokens", day_start(NOV18) + dt.timedelta(hours=1), "4", {"model": "small"}),
                      ("globex", "tokens", day_start(NOV18) + dt.timedelta(hours=2), "6", {"model": "small"})])
    world.sandbox.inject_fault("slow", path="/v1/billing/meter_events", method="POST", count=1, delay=30.0)
    rolled = "sk_test_rolled_1111111111111111"
    with ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(world.pusher(concurrency=1).push, NOV17, NOV18)
        deadline = time.monotonic() + 30
        while world.sandbox.sandbox.faults.describe()[0]["fired"] == 0:   # the first call is held, authenticated
            assert time.monotonic() < deadline and not running.done()
            time.sleep(0.01)
        world.sandbox.sandbox.config.api_key = rolled
        world.sandbox.release_slow()
        with pytest.raises(ExternalServiceError, match="refused the API key"):
            running.result(timeout=60)
    assert [r["status"] for r in world.meter_event_requests()] == [200, 401, 401]
    assert sorted(world.ledger()["status"].to_list()) == ["acknowledged", "sent", "sent"]
    assert _runs_other_than(world, set()) == [(1, 0, 2)]

    world.sandbox.clear_faults()
    world.client = make_client(StripeSettings(api_key=rolled, api_base=world.sandbox.base_url,
                                              meter_events_base=world.sandbox.base_url, max_network_retries=0))
    second = world.pusher().push(NOV17, NOV18)
    assert (second.acknowledged, second.unknown, second.failed, second.new_revisions) == (2, 0, 0, 0)
    assert world.ledger().select("revision", "status").rows() == [(1, "acknowledged")] * 3
    requests = world.meter_event_requests()
    assert all(n == 1 for n in applied_per_key(requests).values()) and len(applied_per_key(requests)) == 3
    assert set(applied_per_key(requests)) == set(world.ledger()["idempotency_key"].to_list())
    assert world.stripe_total("acme", "tokens", day_start(NOV17), day_start(NOV18) + dt.timedelta(days=1)) == 7
    assert world.stripe_total("globex", "tokens", day_start(NOV18), day_start(NOV18) + dt.timedelta(days=1)) == 6
