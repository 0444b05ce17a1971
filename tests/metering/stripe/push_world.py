"""Helpers for push tests (a uniquely named module: conftest modules cannot be imported by name).

A small world for push tests: a warehouse with customers and raw events (aggregated by the real
rating code), the real local Stripe sandbox over loopback, and the catalog synced into it."""

from __future__ import annotations

import contextlib
import datetime as dt
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import polars as pl
import pytest
import stripe

from metering import warehouse
from metering.errors import BadInputError
from metering.customers import load_customers
from metering.rating.service import refresh_aggregates
from metering.rules.model import Rules
from metering.rules.plans import load_rules
from metering.stripe import catalog
from metering.stripe.client import StripeSettings, make_client
from metering.stripe.push import PushConfig, Pusher
from metering.stripe.retry import RetryPolicy
from metering.stripe_sandbox.testing import SandboxHandle

NOW = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.timezone.utc)
FAST_RETRY = RetryPolicy(max_attempts=8, base_delay=0.001, max_delay=0.01, max_retry_after=0.01)

CUSTOMERS_CSV = """customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior
acme,Acme,billing@acme.test,usd,,starter,2026-01-01,succeeds
globex,Globex,ap@globex.test,usd,15,pro,2026-01-01,succeeds
"""


@dataclass
class World:
    con: duckdb.DuckDBPyConnection
    sandbox: SandboxHandle
    client: stripe.StripeClient
    rules: Rules
    report: catalog.CatalogReport
    now: dt.datetime = NOW
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stripe_customer(self) -> dict[str, str]:
        return {c["customer_id"]: c["stripe_customer_id"] for c in self.report.customers}

    def add_events(self, rows: list[tuple]) -> None:
        """rows: (customer_id, meter, event_time, value or None, properties dict); re-aggregates their days."""
        frame_rows = []
        for customer, meter, when, value, props in rows:
            n = len(self.events)
            event = {"event_id": f"ev{n:06d}", "customer_id": customer, "meter": meter, "event_time": when,
                     "event_date": when.date(), "value": None if value is None else Decimal(str(value)),
                     "properties": dict(sorted((props or {}).items()))}
            self.events.append(event)
            frame_rows.append({**event, "properties": _json(event["properties"]), "extra": "{}",
                               "file_id": 1, "source_line": n + 1})
        frame = pl.DataFrame(frame_rows, schema_overrides={"value": pl.Decimal(38, 12),
                                                           "event_time": pl.Datetime("us", "UTC")})
        warehouse.insert_frame(self.con, "usage_events", frame)
        for day in sorted({r["event_date"] for r in frame_rows}):
            refresh_aggregates(self.con, self.rules.meters, day)

    def pusher(self, **config: Any) -> Pusher:
        config.setdefault("rate", 0)
        config.setdefault("retry", FAST_RETRY)
        now = config.pop("now", None) or self.now
        return Pusher(self.con, self.client, self.rules.meters, PushConfig(**config), now=lambda: now,
                      sleep=lambda s: None)

    def stripe_total(self, customer: str, meter: str, start: dt.datetime, end: dt.datetime) -> Decimal:
        """What Stripe aggregates for [start, end) (no grouping): sum, or the last value."""
        summaries = self.client.v1.billing.meters.event_summaries.list(
            self.report.meters[meter],
            {"customer": self.stripe_customer[customer], "start_time": int(start.timestamp()),
             "end_time": int(end.timestamp())})
        return sum((Decimal(str(s.aggregated_value)) for s in summaries.data), Decimal(0))

    def ledger(self) -> pl.DataFrame:
        return warehouse.query_frame(self.con, "SELECT * FROM stripe_push_ledger ORDER BY customer_id, meter, window_start, revision")

    def remap_to_a_duplicate(self, tmp_path: Path, customer: str = "acme") -> tuple[str, str]:
        """A second Stripe customer with `customer`'s metadata, which a new sync maps it to (the newest);
        returns the (old, new) Stripe customer ids."""
        old = self.stripe_customer[customer]
        new = self.client.v1.customers.create({"name": f"{customer} (dup)", "metadata": {"customer_id": customer}}).id
        (tmp_path / "again.csv").write_text(CUSTOMERS_CSV)
        catalog.sync_catalog(self.con, self.client, self.rules, load_customers(tmp_path / "again.csv", self.rules),
                             subscriptions=False)
        assert catalog.customer_map(self.con).filter(pl.col("customer_id") == customer)["stripe_customer_id"][0] == new
        return old, new

    def meter_event_requests(self) -> list[dict[str, Any]]:
        return self.sandbox.requests_log(path="/v1/billing/meter_events", method="POST")


def _json(props: dict[str, str]) -> str:
    import json

    return json.dumps(props, sort_keys=True, separators=(",", ":"))


def day_start(day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)


CSV_ON_CLOCK = """customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior
acme,Acme,billing@acme.test,usd,,starter,2026-01-01,succeeds
"""
OCT1 = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
SEP1 = dt.datetime(2026, 9, 1, tzinfo=dt.timezone.utc)
SEPTEMBER = dt.date(2026, 9, 1)


class OnClock(NamedTuple):
    sb: Any
    con: Any
    client: Any
    clock: Any
    rules: Any
    report: catalog.CatalogReport


@contextlib.contextmanager
def customer_on_clock(tmp_path: Path, rules_dir: Path, csv: str = CSV_ON_CLOCK, start: dt.datetime = OCT1,
                      window_kind: str = "day", subscriptions: bool = True) -> Iterator[OnClock]:
    """The sandbox, a warehouse holding the customer list, and the catalog (meters of `window_kind`)
    synced with the customers on a test clock frozen at `start` (Oct 1), subscribed unless told not."""
    from metering.stripe_sandbox.testing import running_sandbox

    rules = load_rules(rules_dir)
    (tmp_path / "c.csv").write_text(csv)
    customers = load_customers(tmp_path / "c.csv", rules)
    with running_sandbox() as sb, warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        client = make_client(StripeSettings(api_key=sb.api_key, api_base=sb.base_url, meter_events_base=sb.base_url))
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": int(start.timestamp())})
        warehouse.replace_rows(con, "customer_plans", "TRUE", [], customers)
        report = catalog.sync_catalog(con, client, rules, customers, window_kind=window_kind, create_customers=True,
                                      test_clock=clock.id, subscriptions=subscriptions)
        yield OnClock(sb, con, client, clock, rules, report)


def make_world(con: duckdb.DuckDBPyConnection, sb: SandboxHandle, rules_dir: Path, tmp_path: Path,
               csv_text: str = CUSTOMERS_CSV, now: dt.datetime = NOW, window_kind: str = "day") -> World:
    rules = load_rules(rules_dir)
    csv_path = tmp_path / "customers.csv"
    csv_path.write_text(csv_text)
    customers = load_customers(csv_path, rules)
    warehouse.replace_rows(con, "customer_plans", "TRUE", [], customers)
    client = make_client(StripeSettings(api_key=sb.api_key, api_base=sb.base_url, meter_events_base=sb.base_url,
                                        max_network_retries=0))
    report = catalog.sync_catalog(con, client, rules, customers, window_kind=window_kind, create_customers=True,
                                  subscriptions=False)
    return World(con, sb, client, rules, report, now)


def push_then_bill_october(con: duckdb.DuckDBPyConnection, client: stripe.StripeClient, rules: Rules, clock: Any,
                           day: dt.date, stripe_customer: str) -> Any:
    """Push `day` (one window, acknowledged), then advance the test clock past Nov 1 and return the
    customer's October cycle invoice (finalized by the 1 h grace period)."""
    from metering.stripe.clock import advance_clock

    pushed = Pusher(con, client, rules.meters, PushConfig(rate=0, retry=FAST_RETRY), sleep=lambda s: None).push(day, day)
    assert pushed.acknowledged == 1
    advance_clock(client, clock.id, dt.datetime(2026, 11, 1, 2, tzinfo=dt.timezone.utc))
    [october] = [i for i in client.v1.invoices.list({"customer": stripe_customer}).data
                 if i.billing_reason == "subscription_cycle"]
    return october


def random_usage(world: World, customers: list[str], days: list[dt.date], seed: int, per_day: int = 4) -> None:
    """Seeded random events for every customer x meter x day."""
    import random

    rng = random.Random(seed)
    rows = []
    for customer in customers:
        for day in days:
            for _ in range(per_day):
                when = day_start(day) + dt.timedelta(seconds=rng.randrange(86400))
                rows += [
                    (customer, "api_calls", when, None, {"region": rng.choice(["us", "eu"])}),
                    (customer, "tokens", when, str(Decimal(rng.randrange(1, 10**6)) / 1000),
                     {"model": rng.choice(["small", "large"])}),
                    (customer, "storage_gb", when, str(Decimal(rng.randrange(1, 5000)) / 10), {}),
                    (customer, "seats", when, str(rng.randrange(1, 60)), {}),
                    (customer, "active_users", when, None, {"user_id": f"u{rng.randrange(12)}"}),
                ]
    world.add_events(rows)


def expected_total(events: list[dict[str, Any]], customer: str, meter: str) -> Decimal:
    """Our total for a customer and meter over every event given, computed directly from raw events
    (independently of the SQL the push uses): what Stripe must report for the same range."""
    mine = [e for e in events if e["customer_id"] == customer and e["meter"] == meter]
    if not mine:
        return Decimal(0)
    if meter == "api_calls":
        return Decimal(len(mine))
    if meter == "tokens":
        return sum((e["value"] for e in mine), Decimal(0))
    if meter == "storage_gb":
        return max(e["value"] for e in mine)
    if meter == "seats":
        return max(mine, key=lambda e: (e["event_time"], e["event_id"]))["value"]
    return Decimal(len({e["properties"]["user_id"] for e in mine}))


def applied_per_key(requests: list[dict[str, Any]]) -> dict[str, int]:
    """How many times the sandbox executed (not replayed) a meter event per Idempotency-Key."""
    counts: dict[str, int] = {}
    for r in requests:
        executed = (r["status"] == 200 and not r.get("replayed")) or r["status"] == "lost_response"
        if executed:
            counts[r["idempotency_key"]] = counts.get(r["idempotency_key"], 0) + 1
    return counts


def rate_by_hand(con: Any, amounts: dict[str, int], rated_at: dt.datetime, customer: str = "acme") -> None:
    """Replace a customer's September lines (plan pro 2026-01) with one line per charge (integer minor units)."""
    con.execute("DELETE FROM rated_usage WHERE customer_id = ? AND period_start = ?", [customer, SEPTEMBER])
    for n, (charge, minor) in enumerate(amounts.items()):
        con.execute(
            "INSERT INTO rated_usage (customer_id, period_start, period_end, segment_start, segment_end, plan, "
            "plan_version, rules_hash, charge_id, charge, model, amount, amount_minor, currency, rounding, rated_at) "
            "VALUES (?, ?, ?, ?, ?, 'pro', '2026-01', 'h', ?, ?, 'per_unit', ?, ?, 'usd', 'half_even', ?)",
            [customer, SEPTEMBER, OCT1.date(), SEPTEMBER, OCT1.date(), n, charge, minor / 100, minor, rated_at])


def unless_duckdb_corrupted(message: str) -> None:
    """DuckDB 1.5.5 itself sometimes leaves its file corrupt when the process is SIGKILLed at the
    wrong moment: the next open fails with 'Corrupt database file'. docs/durability.md reproduces it
    with DuckDB alone (about one kill in 1,000-2,000, none of our code involved), so it is reported here
    as an expected failure naming the cause, not as a failure of the crash safety the calling test
    checks, which it still checks on every run where DuckDB's file survives."""
    if "Corrupt database file" in message:
        pytest.xfail(f"DuckDB {duckdb.__version__} corrupted its file under SIGKILL (upstream; see "
                     f"docs/durability.md): {message[:300]}")


@contextlib.contextmanager
def opened(db: Path):
    try:
        con = warehouse.connect(db)
    except BadInputError as exc:
        unless_duckdb_corrupted(str(exc))
        raise
    try:
        yield con
    finally:
        con.close()


def sandbox_reached(sb: SandboxHandle, before: int, path: str | None = None, method: str | None = None) -> bool:
    """Has the sandbox (running in this process) seen a request since index `before` of its log: any,
    or (with `path`) one to that path (and `method`)?"""
    new = sb.sandbox.requests[before:]
    return any((path is None or r["path"] == path) and (method is None or r["method"] == method) for r in new)


def run_then_kill(cmd: list[str], env: dict[str, str], reached: Callable[[], bool], *, wait_seconds: float,
                  poll: float, pause: float) -> bool:
    """Start `cmd`; once `reached()` (or it ended, or `wait_seconds` passed: imports alone take seconds
    under load, so wait for the process, not the clock), wait `pause` seconds more and SIGKILL it if
    it is still running. Returns whether it was killed."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + wait_seconds
    while proc.poll() is None and time.monotonic() < deadline and not reached():
        time.sleep(poll)
    time.sleep(pause)
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True
