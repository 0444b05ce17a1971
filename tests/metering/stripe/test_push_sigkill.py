"""SIGKILL at random points of `metering stripe push` (a real subprocess), then a clean re-run:
Stripe's meter totals equal ours exactly, and no meter event was executed twice."""

from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from push_world import (NOW, applied_per_key, day_start, expected_total, make_world, opened as _opened,
                        random_usage, run_then_kill, sandbox_reached,
                        unless_duckdb_corrupted as _unless_duckdb_corrupted)
from metering import warehouse
from metering.stripe_sandbox.testing import running_sandbox

DAYS = [dt.date(2026, 11, 16), dt.date(2026, 11, 17), dt.date(2026, 11, 18)]
CUSTOMERS = [f"k{i:02d}" for i in range(16)]
CSV = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n" + "".join(
    f"{c},{c},{c}@x.test,usd,,starter,2026-01-01,succeeds\n" for c in CUSTOMERS)
METERS = ["api_calls", "tokens", "storage_gb", "seats", "active_users"]
KILLS = 20


@pytest.mark.slow
def test_sigkill_during_push_then_rerun_leaves_exact_totals(tmp_path: Path, rules_dir: Path) -> None:
    db = tmp_path / "wh.duckdb"
    rng = random.Random(20261120)
    with running_sandbox(now=int(NOW.timestamp()), seed=5) as sb:
        with warehouse.open_warehouse(db) as con:
            world = make_world(con, sb, rules_dir, tmp_path, CSV)
            random_usage(world, CUSTOMERS, DAYS, seed=9, per_day=2)
        env = {**os.environ, "STRIPE_API_KEY": sb.api_key, "STRIPE_API_BASE": sb.base_url,
               "METERING_WAREHOUSE": str(db), "METERING_RULES": str(rules_dir), "METERING_LOG_LEVEL": "WARNING"}
        cmd = [str(Path(sys.executable).parent / "metering"), "stripe", "push", "--from", str(DAYS[0]), "--to",
               str(DAYS[-1]), "--rate", "0", "--concurrency", "4"]
        kills = kills_mid_push = 0
        while kills < KILLS:
            if kills and kills % 5 == 0:   # late events arrive between crashes: new revisions
                with _opened(db) as con:
                    world.con = con
                    random_usage(world, rng.sample(CUSTOMERS, 3), [rng.choice(DAYS)], seed=kills, per_day=1)
            before = len(sb.sandbox.requests)   # the sandbox runs in this process: read its log directly
            # kill it at a random point once it talks to Stripe: a fifth of the kills around planning
            # (ledger writes, first reads), the rest while meter events are being sent and outcomes committed
            early = rng.random() < 0.2
            path = None if early else "/v1/billing/meter_events"
            if run_then_kill(cmd, env, lambda: sandbox_reached(sb, before, path), wait_seconds=30, poll=0.01,
                             pause=rng.uniform(0.0, 0.3 if early else 1.2)):
                kills += 1
                kills_mid_push += sandbox_reached(sb, before, "/v1/billing/meter_events")
            else:
                with _opened(db) as con:   # finished: make more work for the next one
                    world.con = con
                    random_usage(world, rng.sample(CUSTOMERS, 4), [rng.choice(DAYS)], seed=100 + kills, per_day=1)
        assert kills_mid_push >= KILLS // 2, f"only {kills_mid_push} kills landed while events were being sent"

        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        _unless_duckdb_corrupted(done.stderr)
        assert done.returncode == 0, done.stderr[-2000:]

        with _opened(db) as con:
            world.con = con
            ledger = world.ledger()
            latest = ledger.sort("revision").group_by("customer_id", "meter", "window_start").last()
            assert set(latest["status"].to_list()) == {"acknowledged"}
            assert ledger.filter(pl.col("revision") > 1).height > 0     # revisions happened under kills
            start, end = day_start(DAYS[0]), day_start(DAYS[-1]) + dt.timedelta(days=1)
            for customer in CUSTOMERS:
                for meter in METERS:
                    assert world.stripe_total(customer, meter, start, end) == \
                        expected_total(world.events, customer, meter), (customer, meter)
            requests = world.meter_event_requests()
            assert {r["idempotency_key"] for r in requests} <= set(ledger["idempotency_key"].to_list())
            assert all(n == 1 for n in applied_per_key(requests).values())
