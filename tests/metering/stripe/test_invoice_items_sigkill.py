"""SIGKILL at random points of `metering stripe invoice-items` (a real subprocess), with the rated
amounts changing between kills, then a clean re-run: for every charge, the items Stripe holds sum to
its rated amount exactly, and no item was created twice."""

from __future__ import annotations

import datetime as dt
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from push_world import OCT1, SEP1, customer_on_clock, opened as _opened, rate_by_hand as rate, run_then_kill
from push_world import sandbox_reached
from push_world import unless_duckdb_corrupted as _unless_duckdb_corrupted

CUSTOMERS = [f"k{i:02d}" for i in range(12)]
CSV = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n" + "".join(
    f"{c},{c},{c}@x.test,usd,,pro,2026-01-01,succeeds\n" for c in CUSTOMERS)
CHARGES = ("tokens large", "minimum spend")
KILLS = 12


def _rerate(db: Path, rng: random.Random, targets: dict[tuple[str, str], int], customers: list[str]) -> None:
    """New rated amounts for some customers (late usage re-rating their closed period)."""
    with _opened(db) as con:
        for n, customer in enumerate(customers):
            amounts = {charge: rng.choice([0, rng.randrange(1, 50_000)]) for charge in CHARGES}
            rate(con, amounts, OCT1 + dt.timedelta(minutes=10, seconds=len(targets) + n), customer=customer)
            targets.update({(customer, charge): minor for charge, minor in amounts.items()})


@pytest.mark.slow
def test_sigkill_during_invoice_items_then_rerun_bills_each_charge_exactly(tmp_path: Path, rules_dir: Path) -> None:
    rng = random.Random(20261126)
    db = tmp_path / "wh.duckdb"
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))  # September's drafts
        con.close()
        targets: dict[tuple[str, str], int] = {}
        _rerate(db, rng, targets, CUSTOMERS)
        env = {**os.environ, "STRIPE_API_KEY": sb.api_key, "STRIPE_API_BASE": sb.base_url,
               "METERING_WAREHOUSE": str(db), "METERING_LOG_LEVEL": "WARNING"}
        cmd = [str(Path(sys.executable).parent / "metering"), "stripe", "invoice-items", "--period", "2026-09",
               "--rate", "0"]
        kills = kills_mid_send = 0
        while kills < KILLS:
            before = len(sb.sandbox.requests)
            # a fifth of the kills from the first request on (look-ups, planning), the rest once items
            # are being created
            early = rng.random() < 0.2
            path, method = (None, None) if early else ("/v1/invoiceitems", "POST")
            if run_then_kill(cmd, env, lambda: sandbox_reached(sb, before, path, method), wait_seconds=60,
                             poll=0.005, pause=rng.uniform(0.0, 0.25 if early else 0.1)):
                kills += 1
                kills_mid_send += sandbox_reached(sb, before, "/v1/invoiceitems", "POST")
            # late usage between runs: some periods re-rated, so new revisions (and credits) follow
            _rerate(db, rng, targets, rng.sample(CUSTOMERS, 3))
        assert kills_mid_send >= KILLS // 2, f"only {kills_mid_send} kills landed while items were being sent"

        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        _unless_duckdb_corrupted(done.stderr)
        assert done.returncode == 0, done.stderr[-2000:]

        items = [i for c in report.customers for i in client.v1.invoice_items.list(
            {"customer": c["stripe_customer_id"], "limit": 100}).auto_paging_iter()]
        keys = Counter(i.metadata["metering_item"] for i in items)
        assert [k for k, n in keys.items() if n > 1] == []          # no row billed twice
        billed = Counter()
        for item in items:
            billed[(item.metadata["metering_customer_id"], item.metadata["metering_charge"].split("|")[2])] += item.amount
        assert {k: v for k, v in billed.items() if v} == {k: v for k, v in targets.items() if v}
        with _opened(db) as check:
            statuses = {s for (s,) in check.execute("SELECT DISTINCT status FROM stripe_invoice_items").fetchall()}
        assert statuses <= {"acknowledged", "failed"}
