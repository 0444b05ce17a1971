"""Pushes under injected faults (429, 500, dropped connections, lost responses, stale keys): after
re-runs, Stripe's totals equal ours exactly, no event is executed twice, no key is random."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from push_world import NOW, World, applied_per_key, day_start, expected_total, make_world, random_usage
from metering import warehouse
from metering.stripe_sandbox.testing import running_sandbox

DAYS = [dt.date(2026, 11, 16), dt.date(2026, 11, 17), dt.date(2026, 11, 18)]
CUSTOMERS = [f"cust{i}" for i in range(6)]
CSV = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n" + "".join(
    f"{c},{c},{c}@x.test,usd,,starter,2026-01-01,succeeds\n" for c in CUSTOMERS)
METERS = ["api_calls", "tokens", "storage_gb", "seats", "active_users"]


@pytest.fixture
def big_world(tmp_path, rules_dir):
    with running_sandbox(now=int(NOW.timestamp()), seed=11) as sb, \
            warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        world = make_world(con, sb, rules_dir, tmp_path, CSV)
        random_usage(world, CUSTOMERS, DAYS, seed=3)
        yield world


def assert_stripe_equals_ours(world: World) -> None:
    start, end = day_start(DAYS[0]), day_start(DAYS[-1]) + dt.timedelta(days=1)
    for customer in CUSTOMERS:
        for meter in METERS:
            assert world.stripe_total(customer, meter, start, end) == expected_total(world.events, customer, meter), \
                (customer, meter)


def drain(world: World, runs: int = 10, **config) -> list:
    reports = []
    for _ in range(runs):
        reports.append(world.pusher(**config).push(DAYS[0], DAYS[-1]))
        open_rows = world.ledger().filter(pl.col("status").is_in(["pending", "sent", "unknown"]))
        if open_rows.is_empty():
            return reports
    raise AssertionError(f"still open after {runs} runs: {open_rows}")


def assert_keys_are_ours_and_executed_once(world: World) -> None:
    requests = world.meter_event_requests()
    ledger_keys = set(world.ledger()["idempotency_key"].to_list())
    assert {r["idempotency_key"] for r in requests} <= ledger_keys
    assert all(n == 1 for n in applied_per_key(requests).values())


@pytest.mark.parametrize("faults", [
    [{"kind": "rate_limit", "rate": 0.3}],
    [{"kind": "server_error", "rate": 0.3}],
    [{"kind": "drop", "rate": 0.25}],
    [{"kind": "lost_response", "rate": 0.25}],
    [{"kind": "rate_limit", "rate": 0.1}, {"kind": "server_error", "rate": 0.1},
     {"kind": "drop", "rate": 0.1}, {"kind": "lost_response", "rate": 0.1}],
], ids=["429", "500", "drop", "lost_response", "mixed"])
def test_faults_never_double_count_or_lose_usage(big_world: World, faults) -> None:
    for fault in faults:
        big_world.sandbox.inject_fault(path="/v1/billing/meter_events", method="POST", **fault)
    reports = drain(big_world, retry=_few_attempts())
    assert sum(r.retries for r in reports) > 0           # the faults did fire
    big_world.sandbox.clear_faults()
    assert_stripe_equals_ours(big_world)
    assert_keys_are_ours_and_executed_once(big_world)
    assert drain(big_world)[0].calls == 0                 # settled: nothing more to send


def _few_attempts():
    from push_world import FAST_RETRY
    from dataclasses import replace

    return replace(FAST_RETRY, max_attempts=3)


def test_stored_500_without_retry_leaves_unknown_then_the_next_run_settles(big_world: World) -> None:
    big_world.sandbox.inject_fault(path="/v1/billing/meter_events", method="POST", kind="server_error",
                                   count=5, should_retry=False)
    first = big_world.pusher().push(DAYS[0], DAYS[-1])
    assert first.unknown == 5 and first.needs_operator == 5
    second = big_world.pusher().push(DAYS[0], DAYS[-1])
    assert (second.calls, second.unknown, second.acknowledged) == (5, 0, 5)
    assert_stripe_equals_ours(big_world)
    assert_keys_are_ours_and_executed_once(big_world)


@pytest.mark.parametrize("kind, resent", [("lost_response", False), ("drop", True)])
def test_attempt_older_than_20h_is_checked_against_summaries_before_resending(
        big_world: World, kind: str, resent: bool) -> None:
    """An unknown outcome whose key is about to expire: read Stripe first; resend only if missing,
    and then as a new revision (a new key), never the old key."""
    big_world.sandbox.inject_fault(path="/v1/billing/meter_events", method="POST", kind=kind, count=1)
    from dataclasses import replace
    from push_world import FAST_RETRY

    first = big_world.pusher(retry=replace(FAST_RETRY, max_attempts=1)).push(DAYS[0], DAYS[-1])
    assert first.unknown == 1
    unknown = big_world.ledger().filter(pl.col("status") == "unknown").row(0, named=True)
    later = NOW + dt.timedelta(hours=21)
    big_world.sandbox.set_now(int(later.timestamp()))
    requests_before = len(big_world.meter_event_requests())
    second = big_world.pusher(now=later).push(DAYS[0], DAYS[-1])
    assert second.summary_checks == 1
    window = big_world.ledger().filter(
        (pl.col("customer_id") == unknown["customer_id"]) & (pl.col("meter") == unknown["meter"])
        & (pl.col("window_start") == unknown["window_start"])).sort("revision")
    new_requests = big_world.meter_event_requests()[requests_before:]
    if resent:
        assert window.select("revision", "status", "resolved_by").rows() == [
            (1, "superseded", "summary"), (2, "acknowledged", "response")]
        assert [r["idempotency_key"] for r in new_requests] == [window["idempotency_key"][1]]
    else:
        assert window.select("revision", "status", "resolved_by").rows() == [(1, "acknowledged", "summary")]
        assert new_requests == []
    assert_stripe_equals_ours(big_world)
    assert_keys_are_ours_and_executed_once(big_world)


def test_an_identifier_stripe_already_holds_is_settled_by_its_summary(big_world: World) -> None:
    """A push killed after Stripe applied a call but before its outcome was recorded leaves the row
    `sent`; if Stripe has dropped the idempotency key meanwhile (here: 25 h on Stripe's side, the row
    still young on ours), the resend is refused as a duplicate identifier. That once became `failed`,
    "nothing recorded", although Stripe holds the event; Stripe's summary now decides it."""
    first = big_world.pusher().push(DAYS[0], DAYS[-1])
    assert first.failed == 0 and first.unknown == 0
    row = big_world.ledger().filter(pl.col("status") == "acknowledged").row(0, named=True)
    big_world.con.execute("UPDATE stripe_push_ledger SET status = 'sent' WHERE identifier = ?", [row["identifier"]])
    big_world.sandbox.configure(identifier_ttl=72 * 3600)
    big_world.sandbox.set_now(int((NOW + dt.timedelta(hours=25)).timestamp()))
    second = big_world.pusher().push(DAYS[0], DAYS[-1])
    refused = [r for r in big_world.meter_event_requests() if r["idempotency_key"] == row["idempotency_key"]]
    assert [r["status"] for r in refused] == [200, 400]   # the key forgotten, the identifier known
    assert (second.failed, second.unknown, second.summary_checks) == (0, 0, 1)
    window = big_world.ledger().filter(pl.col("identifier") == row["identifier"]).row(0, named=True)
    assert (window["status"], window["resolved_by"]) == ("acknowledged", "summary")
    assert_stripe_equals_ours(big_world)


def test_never_two_calls_in_flight_for_one_customer_and_meter(big_world: World) -> None:
    """The sandbox answers 429 (resource-specific) to a second concurrent call for one customer x
    meter, as Stripe does: with 8 workers and 3 windows per pair, none may occur."""
    report = big_world.pusher(concurrency=8).push(DAYS[0], DAYS[-1])
    assert report.acknowledged == len(CUSTOMERS) * len(METERS) * len(DAYS) and report.rate_limited == 0
    assert [r for r in big_world.meter_event_requests() if r["status"] == 429] == []
