"""The dunning scenario end to end against the local Stripe sandbox (real SDK over loopback HTTP).

Two customers on a test clock, subscribed a year earlier, whose card declines at the yearly
renewal (a subscription's first invoice would not do: unpaid, Stripe voids it after 23 h). Stripe's
own retries are off (the sandbox's `payment_retry_days=()`), so the policy's retry is the engine's
to make. Stripe's state reaches the warehouse the way production gets it after an outage: the
webhooks part's repair (`/v1/events`) and its reconciled `stripe_invoices`. As the clock advances,
each step happens on its day; reruns and crashes (SIGKILL before and after a Stripe call) repeat
nothing — checked on the sandbox's own request log; paying ends dunning and lifts the suspension.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest

from metering import warehouse
from metering.dunning.policy import DunningPolicy, load_policy
from metering.dunning.run import run_dunning
from metering.stripe_sandbox.testing import SandboxHandle, running_sandbox
from metering.webhooks.repair import repair_events
from metering.webhooks.state import rebuild_state

START = int(datetime(2026, 10, 1, tzinfo=timezone.utc).timestamp())
"""Day 0: the renewal invoices are finalized, charged and declined (their period ended an hour before,
the sandbox's default grace)."""
SUBSCRIBED = int(datetime(2025, 9, 30, 23, tzinfo=timezone.utc).timestamp())
"""A year before the renewal's period end (START - 1 h): the yearly subscriptions start, first invoice paid."""
DAY = 86_400

CRASH_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from datetime import datetime
    import stripe
    from metering import warehouse
    from metering.dunning.actions import ActionHooks
    from metering.dunning.policy import load_policy
    from metering.dunning.run import run_dunning

    db, rules, now, point, step = sys.argv[1:6]
    def crash(row):
        if row["step_name"] == step:
            os.kill(os.getpid(), signal.SIGKILL)
    hooks = ActionHooks(**{point: crash})
    client = stripe.StripeClient(os.environ["STRIPE_API_KEY"], base_addresses={"api": os.environ["STRIPE_API_BASE"]})
    with warehouse.open_warehouse(db) as con:
        run_dunning(con, client, load_policy(rules), datetime.fromisoformat(now), hooks=hooks)
""")


class Scenario:
    def __init__(self, sb: SandboxHandle, db: Path, rules: Path, tmp: Path) -> None:
        self.sb, self.db, self.rules, self.tmp = sb, db, rules, tmp
        self.client = sb.client()
        self.policy: DunningPolicy = load_policy(rules)
        self.clock = self.client.v1.test_helpers.test_clocks.create({"frozen_time": SUBSCRIBED, "name": "dunning"})
        product = self.client.v1.products.create({"name": "Platform"})
        self.price = self.client.v1.prices.create({
            "product": product.id, "currency": "usd", "unit_amount": 5000, "recurring": {"interval": "year"}})
        self.t = SUBSCRIBED

    def subscribe(self, *our_ids: str) -> list[tuple[str, str]]:
        """Customers subscribed at SUBSCRIBED with a working card (the first invoice paid), which then
        declines; the clock moves to START (day 0), where each renewal (50.00 for the coming year) is
        charged and declined. Returns (customer, renewal invoice) per id."""
        subs = []
        for our_id in our_ids:
            cus = self.client.v1.customers.create({"test_clock": self.clock.id, "metadata": {"customer_id": our_id}})
            sub = self.client.v1.subscriptions.create({
                "customer": cus.id, "items": [{"price": self.price.id}], "metadata": {"customer_id": our_id}})
            self.sb.set_payment_behavior(cus.id, "fails")
            subs.append((cus.id, sub.id))
        self.advance(0)
        return [(cus, self.client.v1.subscriptions.retrieve(sub).latest_invoice) for cus, sub in subs]

    def advance(self, day: int) -> datetime:
        self.t = START + day * DAY
        self.sb.advance_clock(self.clock.id, self.t)
        return self.now

    @property
    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, tz=timezone.utc)

    def sync(self, con: duckdb.DuckDBPyConnection) -> None:
        """Stripe -> warehouse: the webhooks part's repair and reconciled state."""
        repair_events(con, self.client, now=self.now)
        rebuild_state(con)

    def run(self) -> None:
        with warehouse.open_warehouse(self.db) as con:
            self.sync(con)
            result = run_dunning(con, self.client, self.policy, self.now)
            assert result.report.errors == []

    def crash(self, point: str, step: str) -> None:
        with warehouse.open_warehouse(self.db) as con:
            self.sync(con)
        script = self.tmp / "crash.py"
        script.write_text(CRASH_SCRIPT)
        env = {**os.environ, "STRIPE_API_KEY": self.sb.api_key, "STRIPE_API_BASE": self.sb.base_url}
        proc = subprocess.run(
            [sys.executable, str(script), str(self.db), str(self.rules), self.now.isoformat(), point, step],
            capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == -9, proc.stderr

    def declined_retry_then_crash(self, our_id: str) -> str:
        """Day 3 for a new customer: the engine's retry is declined at Stripe and the process is killed
        right after the call, before recording it. Returns the invoice id."""
        [(_, inv)] = self.subscribe(our_id)
        self.run()
        self.advance(3)
        self.crash("after_stripe_call", "payment_retry")
        return inv

    def ours(self, action: str | None = None) -> list[tuple[str, str, int]]:
        """(path, idempotency key, status) of the engine's own requests: keys `dunning:...`."""
        return [(e["path"], e["idempotency_key"], e["status"]) for e in self.sb.requests_log(method="POST")
                if (e["idempotency_key"] or "").startswith("dunning:")
                and (action is None or e["path"].endswith(action))]

    def table(self, sql: str) -> list[tuple]:
        with warehouse.open_warehouse(self.db, read_only=True) as con:
            return con.execute(sql).fetchall()

    def suspended(self) -> list[str]:
        doc = json.loads((self.tmp / "data" / "published" / "suspensions.json").read_text())
        return [s["customer_id"] for s in doc["suspended"]]


@pytest.mark.slow
def test_dunning_scenario_against_the_sandbox(tmp_path: Path, rules_dir: Path) -> None:
    with running_sandbox(payment_retry_days=(), after_final_failure="past_due") as sb:
        s = Scenario(sb, tmp_path / "data" / "warehouse.duckdb", rules_dir, tmp_path)
        (cus_a, inv_a), (cus_b, inv_b) = s.subscribe("c_never_pays", "c_pays_late")
        for inv in (inv_a, inv_b):
            renewal = s.client.v1.invoices.retrieve(inv)
            assert (renewal.billing_reason, renewal.status, renewal.amount_remaining, renewal.attempt_count,
                    renewal.status_transitions.finalized_at) == ("subscription_cycle", "open", 5000, 1, START)
        ledger = "SELECT invoice_id, step_name, status, outcome FROM dunning_actions ORDER BY invoice_id, step_index"
        state = "SELECT invoice_id, state, step_name FROM dunning_state ORDER BY invoice_id"

        def by_invoice(rows: list[tuple]) -> dict[str, list[tuple]]:
            out: dict[str, list[tuple]] = {}
            for r in rows:
                out.setdefault(r[0], []).append(r[1:])
            return out

        # day 0: both renewals failed -> first reminder, twice run = once done
        s.run(); s.run()
        assert by_invoice(s.table(ledger)) == {
            inv_a: [("first_reminder", "done", "rendered")], inv_b: [("first_reminder", "done", "rendered")]}
        assert s.ours() == [] and s.suspended() == []

        # day 3: payment retry — A's run crashes after the ledger write, before the call
        s.advance(3)
        s.crash("after_ledger_commit", "payment_retry")
        pending = [r for r in s.table(ledger) if r[1] == "payment_retry"]
        assert pending == [(pending[0][0], "payment_retry", "pending", None)]
        assert s.ours() == []                                  # nothing reached Stripe
        s.run(); s.run()
        assert sorted(s.ours("/pay")) == sorted([
            (f"/v1/invoices/{inv_a}/pay", f"dunning:{inv_a}:payment_retry", 402),
            (f"/v1/invoices/{inv_b}/pay", f"dunning:{inv_b}:payment_retry", 402),
        ])
        assert {r[0]: r[3] for r in s.table(ledger) if r[1] == "payment_retry"} == {
            inv_a: "card_declined:card_declined", inv_b: "card_declined:card_declined"}

        # day 7: final reminder; day 14: suspension of both customers
        s.advance(7); s.run()
        s.advance(14); s.run(); s.run()
        assert sorted(s.suspended()) == ["c_never_pays", "c_pays_late"]
        assert s.table(state) == sorted([(inv_a, "in_dunning", "suspension"), (inv_b, "in_dunning", "suspension")])

        # day 20: B pays (card fixed, customer pays the invoice) -> recovered, suspension lifted
        s.advance(20)
        sb.set_payment_behavior(cus_b, "succeeds")
        s.client.v1.invoices.pay(inv_b)
        s.run()
        assert s.suspended() == ["c_never_pays"]
        assert dict((r[0], r[1]) for r in s.table(state)) == {inv_a: "in_dunning", inv_b: "recovered"}

        # day 30: write-off of A — the run crashes right AFTER Stripe accepted the call
        s.advance(30)
        s.crash("after_stripe_call", "write_off")
        assert s.ours("/mark_uncollectible") == [
            (f"/v1/invoices/{inv_a}/mark_uncollectible", f"dunning:{inv_a}:write_off", 200)]
        assert [r for r in s.table(ledger) if r[1] == "write_off"] == [(inv_a, "write_off", "pending", None)]
        s.run(); s.run()
        s.advance(45); s.run()
        # still exactly one write-off request: the rerun saw the invoice already uncollectible
        assert s.ours("/mark_uncollectible") == [
            (f"/v1/invoices/{inv_a}/mark_uncollectible", f"dunning:{inv_a}:write_off", 200)]
        assert len(s.ours("/pay")) == 2
        assert by_invoice(s.table(ledger)) == {
            inv_a: [("first_reminder", "done", "rendered"), ("payment_retry", "done", "card_declined:card_declined"),
                    ("final_reminder", "done", "rendered"), ("suspension", "done", "suspended"),
                    ("write_off", "done", "uncollectible")],
            inv_b: [("first_reminder", "done", "rendered"), ("payment_retry", "done", "card_declined:card_declined"),
                    ("final_reminder", "done", "rendered"), ("suspension", "done", "suspended")],
        }
        assert dict((r[0], r[1]) for r in s.table(state)) == {inv_a: "written_off", inv_b: "recovered"}
        assert s.client.v1.invoices.retrieve(inv_a).status == "uncollectible"
        assert s.suspended() == ["c_never_pays"]               # written off, still unpaid: stays suspended
        assert s.table("SELECT count(*) FROM dunning_outbox")[0][0] == 4


def _cli(*args: str):
    from click.testing import CliRunner

    from metering.cli import cli

    return CliRunner().invoke(cli, ["dunning", *args])


@pytest.mark.slow
def test_cli_run_survives_stripe_outages_without_repeating(
    tmp_path: Path, rules_dir: Path, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_sandbox(payment_retry_days=()) as sb:
        monkeypatch.setenv("STRIPE_API_KEY", sb.api_key)
        monkeypatch.setenv("STRIPE_API_BASE", sb.base_url)
        monkeypatch.setenv("STRIPE_MAX_NETWORK_RETRIES", "0")
        db = isolated_env / "warehouse.duckdb"          # the CLI's default warehouse (conftest env)
        s = Scenario(sb, db, rules_dir, tmp_path)
        [(_, inv)] = s.subscribe("c_1")

        def run() -> object:
            with warehouse.open_warehouse(db) as con:
                s.sync(con)
            return _cli("run", "--now", s.now.isoformat().replace("+00:00", "Z"))

        first = run()
        assert first.exit_code == 0, first.output
        assert "reminder:done=1" in first.output

        # day 3: Stripe answers 500 to every pay: the retry stays pending, exit code 5
        s.advance(3)
        sb.inject_fault("server_error", path="/v1/invoices/*/pay", method="POST")
        down = run()
        assert down.exit_code == 5, down.output
        assert f"pending: dunning:{inv}:payment_retry: APIError" in down.output
        assert s.table("SELECT status, attempts FROM dunning_actions WHERE step_name = 'payment_retry'") == [("pending", 1)]
        sb.clear_faults()
        up = run()
        assert up.exit_code == 0, up.output
        assert s.table("SELECT status, outcome, attempts FROM dunning_actions WHERE step_name = 'payment_retry'") == [
            ("done", "card_declined:card_declined", 2)]
        pays = [(e["status"], e["fault"]) for e in sb.requests_log(path=f"/v1/invoices/{inv}/pay", method="POST")]
        assert pays == [(500, "server_error"), (402, None)]   # applied once; the 500 was never applied

        # day 30: the write-off is applied but its response is lost: the rerun confirms, never repeats
        s.advance(30)
        sb.inject_fault("lost_response", path="/v1/invoices/*/mark_uncollectible", method="POST", count=1)
        lost = run()
        assert lost.exit_code == 5, lost.output
        assert run().exit_code == 0
        offs = sb.requests_log(path=f"/v1/invoices/{inv}/mark_uncollectible", method="POST")
        assert [(e["idempotency_key"], e["fault"]) for e in offs] == [(f"dunning:{inv}:write_off", "lost_response")]
        assert s.table("SELECT status, outcome FROM dunning_actions WHERE step_name = 'write_off'") == [
            ("done", "uncollectible")]

        # I16: no key in the dunning tables, the outbox, the published files or the CLI output
        dumped = [str(r) for t in ("dunning_state", "dunning_actions", "dunning_outbox", "suspensions")
                  for r in s.table(f"SELECT * FROM {t}")]
        files = [p.read_text() for p in isolated_env.rglob("*") if p.is_file() and p.suffix in (".eml", ".csv", ".json")]
        for text in [*dumped, *files, first.output, down.output, up.output, lost.output]:
            assert sb.api_key not in text and "sk_test_" not in text

        summary = _cli("summary", "--format", "csv")
        assert summary.exit_code == 0, summary.output
        assert summary.output.splitlines() == [
            "currency,category,step_index,step_name,invoices,amount_minor,amount",
            "usd,written_off,,,1,5000,50.00",
        ]


@pytest.mark.parametrize("clock", ["next tuesday", "0001-01-01T00:00:00+01:00"])  # the second: no UTC date
def test_cli_rejects_a_bad_clock(isolated_env: Path, clock: str) -> None:
    result = _cli("run", "--now", clock)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--now': '{clock}' is not an ISO 8601 time" in result.output


@pytest.mark.slow
def test_dagster_assets_call_stripe_once_through_the_shared_resource(tmp_path: Path, rules_dir: Path) -> None:
    import dagster as dg

    from pipelines.resources import StripeResource
    from pipelines.defs.webhooks.dunning_assets import DUNNING_ASSETS
    from pipelines.resources import ProjectPaths, WarehouseResource

    with running_sandbox(payment_retry_days=()) as sb:
        db = tmp_path / "wh.duckdb"
        s = Scenario(sb, db, rules_dir, tmp_path)
        [(_, inv)] = s.subscribe("c_1")
        resources = {
            "warehouse": WarehouseResource(path=str(db)),
            "paths": ProjectPaths(rules_dir=str(rules_dir), data_dir=str(tmp_path / "out")),
            "stripe": StripeResource(base_url=sb.base_url, max_network_retries=0),
        }
        s.advance(3)
        for _ in range(2):                                    # the second run repeats nothing
            with warehouse.open_warehouse(db) as con:
                s.sync(con)
            config = {"config": {"now": s.now.isoformat()}}
            result = dg.materialize(DUNNING_ASSETS, resources=resources,
                                    run_config={"ops": {"dunning_state": config, "dunning_actions": config}})
            assert result.success
        assert s.ours("/pay") == [(f"/v1/invoices/{inv}/pay", f"dunning:{inv}:payment_retry", 402)]
        assert s.table("SELECT step_name, status FROM dunning_actions ORDER BY step_index") == [
            ("first_reminder", "done"), ("payment_retry", "done")]   # different actions: both due, both done
        # the write-off of day 30: dunning_state shows its result after the run, as the CLI's does (it
        # once showed the state the actions started from: in dunning, write-off next)
        s.advance(30)
        with warehouse.open_warehouse(db) as con:
            s.sync(con)
        config = {"config": {"now": s.now.isoformat()}}
        assert dg.materialize(DUNNING_ASSETS, resources=resources,
                              run_config={"ops": {"dunning_state": config, "dunning_actions": config}}).success
        assert s.table("SELECT state, next_step_name FROM dunning_state") == [("written_off", None)]


@pytest.mark.slow
def test_a_declined_retry_is_not_charged_again_after_stripes_idempotency_window(
    tmp_path: Path, rules_dir: Path
) -> None:
    """A crash right after a declined /pay leaves the row pending; the rerun comes 25 h later, when
    Stripe no longer replays the key and the manual attempt moved neither status nor attempt_count.
    The payment_failed event Stripe stamped with our key proves the charge happened: no second one."""
    with running_sandbox(payment_retry_days=(), after_final_failure="past_due") as sb:
        s = Scenario(sb, tmp_path / "data" / "warehouse.duckdb", rules_dir, tmp_path)
        inv = s.declined_retry_then_crash("c_1")
        one_charge = [(f"/v1/invoices/{inv}/pay", f"dunning:{inv}:payment_retry", 402)]
        assert s.ours("/pay") == one_charge
        retry = "SELECT status, outcome FROM dunning_actions WHERE step_name = 'payment_retry'"
        assert s.table(retry) == [("pending", None)]
        assert s.client.v1.invoices.retrieve(inv).attempt_count == 1

        sb.set_now(int(time.time()) + 25 * 3600)           # past Stripe's 24-hour idempotency window
        s.advance(4); s.run(); s.run()
        assert s.ours("/pay") == one_charge
        assert s.table(retry) == [("done", "attempted:invoice.payment_failed")]


@pytest.mark.slow
def test_no_charge_while_stripe_smart_retries_are_scheduled(tmp_path: Path, rules_dir: Path) -> None:
    """Sandbox default: Stripe retries 3, 5 and 7 days after each failure. Our retry never fires
    while one is scheduled, and once the next step is due it is skipped, not made."""
    with running_sandbox() as sb:
        s = Scenario(sb, tmp_path / "data" / "warehouse.duckdb", rules_dir, tmp_path)
        [(_, inv)] = s.subscribe("c_1")
        for day in (0, 3, 4, 7):
            if day:
                s.advance(day)
            s.run()
            assert s.ours("/pay") == [], day
        assert s.client.v1.invoices.retrieve(inv).next_payment_attempt is not None
        assert s.table("SELECT step_name, status, outcome FROM dunning_actions ORDER BY step_index") == [
            ("first_reminder", "done", "rendered"),
            ("payment_retry", "skipped", "stripe_retrying"),
            ("final_reminder", "done", "rendered"),
        ]


@pytest.mark.slow
def test_no_charge_when_our_state_lags_and_stripe_shows_a_retry_scheduled(tmp_path: Path, rules_dir: Path) -> None:
    """Our `stripe_invoices` says Stripe's schedule is over (a webhook not landed yet, a repair not
    run); Stripe itself has its next retry scheduled. The invoice is read from Stripe right before a
    charge, and the charge waits: no /pay, no ledger row, no error."""
    with running_sandbox() as sb:   # Stripe retries 3, 5 and 7 days after each failure
        s = Scenario(sb, tmp_path / "data" / "warehouse.duckdb", rules_dir, tmp_path)
        [(_, inv)] = s.subscribe("c_1")
        s.run()
        s.advance(3)
        with warehouse.open_warehouse(s.db) as con:
            s.sync(con)
            con.execute("UPDATE stripe_invoices SET next_payment_attempt = NULL")   # the lagging view
            result = run_dunning(con, s.client, s.policy, s.now)
        assert s.client.v1.invoices.retrieve(inv).next_payment_attempt is not None
        assert result.report.counts == {"retry:wait:stripe_retrying": 1} and result.report.errors == []
        assert s.ours("/pay") == []
        assert s.table("SELECT step_name FROM dunning_actions ORDER BY step_index") == [("first_reminder",)]
        # day 7, still lagging: the final reminder is due, so the retry is skipped, never blocking it
        s.advance(7)
        with warehouse.open_warehouse(s.db) as con:
            s.sync(con)
            con.execute("UPDATE stripe_invoices SET next_payment_attempt = NULL")
            result = run_dunning(con, s.client, s.policy, s.now)
        assert result.report.errors == [] and s.ours("/pay") == []
        assert s.table("SELECT step_name, status, outcome FROM dunning_actions ORDER BY step_index") == [
            ("first_reminder", "done", "rendered"), ("payment_retry", "skipped", "stripe_retrying"),
            ("final_reminder", "done", "rendered")]


@pytest.mark.slow
def test_a_pending_retry_without_a_stripe_client_stays_pending_and_says_so(tmp_path: Path, rules_dir: Path) -> None:
    """A crash after the ledger row committed, and the next run has no Stripe client: whether the
    charge reached Stripe cannot be known, so the row stays pending and the run reports it (it was
    closed as skipped, the ledger then saying no charge was made although one may have been)."""
    with running_sandbox(payment_retry_days=(), after_final_failure="past_due") as sb:
        s = Scenario(sb, tmp_path / "data" / "warehouse.duckdb", rules_dir, tmp_path)
        inv = s.declined_retry_then_crash("c_1")
        assert s.ours("/pay") == [(f"/v1/invoices/{inv}/pay", f"dunning:{inv}:payment_retry", 402)]
        s.advance(7)   # the final reminder is due, and Stripe shows a retry of its own scheduled:
        with warehouse.open_warehouse(s.db) as con:   # the pending retry is to be resolved, not made
            s.sync(con)
            con.execute("UPDATE stripe_invoices SET next_payment_attempt = ?", [s.now + timedelta(days=2)])
            result = run_dunning(con, None, s.policy, s.now)
        assert result.report.errors == [f"dunning:{inv}:payment_retry: no Stripe client configured (set STRIPE_API_KEY)"]
        assert s.table("SELECT step_name, status FROM dunning_actions ORDER BY step_index") == [
            ("first_reminder", "done"), ("payment_retry", "pending")]
        s.run()   # with a client: resolved from Stripe's own record of the declined charge
        s.run()   # (the invoice's later steps wait for the run after a retry)
        assert s.table("SELECT step_name, status, outcome FROM dunning_actions ORDER BY step_index") == [
            ("first_reminder", "done", "rendered"), ("payment_retry", "done", "attempted:invoice.payment_failed"),
            ("final_reminder", "done", "rendered")]
        assert len(s.ours("/pay")) == 1


def _dagster(s: Scenario, tmp_path: Path, rules_dir: Path):
    """Materialize dunning assets with real Dagster against the scenario's warehouse and sandbox."""
    import dagster as dg

    from pipelines.defs.webhooks.dunning_assets import DUNNING_ASSETS
    from pipelines.resources import ProjectPaths, StripeResource, WarehouseResource

    resources = {
        "warehouse": WarehouseResource(path=str(s.db)),
        "paths": ProjectPaths(rules_dir=str(rules_dir), data_dir=str(tmp_path / "out")),
        "stripe": StripeResource(base_url=s.sb.base_url, max_network_retries=0),
    }

    def materialize(selection: list[str], now: datetime) -> None:
        config = {"config": {"now": now.isoformat()}}
        result = dg.materialize(DUNNING_ASSETS, selection=selection, resources=resources,
                                run_config={"ops": {name: config for name in selection}})
        assert result.success

    return materialize


@pytest.mark.slow
def test_a_what_if_dunning_state_with_a_future_clock_makes_no_step_early(tmp_path: Path, rules_dir: Path) -> None:
    """Someone materializes only `dunning_state` with now = day 30 (where will this invoice be?).
    The scheduled job then runs on days 3 and 4 with the real clock: only the day-3 retry is due.
    The state once kept the write-off reached under the future clock and the actions took every step
    up to it: Stripe's invoice was marked uncollectible and the customer suspended on day 3."""
    with running_sandbox(payment_retry_days=(), after_final_failure="past_due") as sb:
        s = Scenario(sb, tmp_path / "wh.duckdb", rules_dir, tmp_path)
        [(_, inv)] = s.subscribe("c_1")
        materialize = _dagster(s, tmp_path, rules_dir)
        both = ["dunning_state", "dunning_actions"]
        with warehouse.open_warehouse(s.db) as con:
            s.sync(con)
        materialize(both, s.now)                                        # day 0
        materialize(["dunning_state"], s.now + timedelta(days=30))      # the what-if
        assert s.table("SELECT state, step_name FROM dunning_state") == [("in_dunning", "write_off")]
        for day in (3, 4):
            s.advance(day)
            with warehouse.open_warehouse(s.db) as con:
                s.sync(con)
            materialize(both, s.now)
        assert s.table("SELECT step_name, status, outcome, completed_at FROM dunning_actions ORDER BY step_index") == [
            ("first_reminder", "done", "rendered", s.now - timedelta(days=4)),
            ("payment_retry", "done", "card_declined:card_declined", s.now - timedelta(days=1)),
        ]
        assert s.ours() == [(f"/v1/invoices/{inv}/pay", f"dunning:{inv}:payment_retry", 402)]
        assert s.client.v1.invoices.retrieve(inv).status == "open"
        assert s.table("SELECT count(*) FROM suspensions") == [(0,)]
        assert json.loads((tmp_path / "out" / "published" / "suspensions.json").read_text())["suspended"] == []
        assert len(list((tmp_path / "out" / "outbox").glob("*.eml"))) == 1
        assert s.table("SELECT state, step_name, next_step_name, next_step_at FROM dunning_state") == [
            ("in_dunning", "payment_retry", "final_reminder", s.now + timedelta(days=3))]


@pytest.mark.slow
def test_dagster_actions_see_a_payment_landed_after_the_state_step(tmp_path: Path, rules_dir: Path) -> None:
    """`dunning_job` materializes `dunning_state`, then `dunning_actions`; a `stripe_state_job` run
    between the two lands the customer's payment. The actions once acted on the stored state: the
    paid customer got the day-7 final notice (.eml written, no SMTP: the file is the delivery)."""
    with running_sandbox(payment_retry_days=(), after_final_failure="past_due") as sb:
        s = Scenario(sb, tmp_path / "wh.duckdb", rules_dir, tmp_path)
        [(cus, inv)] = s.subscribe("c_1")
        materialize = _dagster(s, tmp_path, rules_dir)
        both = ["dunning_state", "dunning_actions"]
        for day in (0, 3, 7):
            if day:
                s.advance(day)
            with warehouse.open_warehouse(s.db) as con:
                s.sync(con)
            materialize(["dunning_state"] if day == 7 else both, s.now)
        assert s.table("SELECT state, step_name FROM dunning_state") == [("in_dunning", "final_reminder")]
        sb.set_payment_behavior(cus, "succeeds")
        assert s.client.v1.invoices.pay(inv).status == "paid"               # the customer pays
        with warehouse.open_warehouse(s.db) as con:
            s.sync(con)
        materialize(["dunning_actions"], s.now)
        assert s.table("SELECT step_name, status, outcome FROM dunning_actions ORDER BY step_index") == [
            ("first_reminder", "done", "rendered"), ("payment_retry", "done", "card_declined:card_declined")]
        assert s.table("SELECT subject, status FROM dunning_outbox") == [
            (f"Payment failed for invoice {inv}", "rendered")]
        assert len(list((tmp_path / "out" / "outbox").glob("*.eml"))) == 1
        assert s.table("SELECT state, reason FROM dunning_state") == [("recovered", "paid")]
        assert json.loads((tmp_path / "out" / "published" / "suspensions.json").read_text())["suspended"] == []


@pytest.mark.slow
def test_a_pending_call_whose_invoice_left_dunning_is_read_back_from_stripe(tmp_path: Path, rules_dir: Path) -> None:
    """A pending retry or write-off whose invoice has since left dunning is `done` when Stripe's event
    log shows our key's call went through, `superseded` only when it never did. Such rows were all
    `superseded` unread: the ledger said our retry never happened although it had collected the money."""
    retry = "SELECT status, outcome FROM dunning_actions WHERE step_name = 'payment_retry'"
    # 1. the day-3 retry pays the invoice; the process is killed right after Stripe's answer
    with running_sandbox(payment_retry_days=(), after_final_failure="past_due") as sb:
        s = Scenario(sb, tmp_path / "a" / "warehouse.duckdb", rules_dir, tmp_path)
        [(cus, inv)] = s.subscribe("c_1")
        s.run()
        s.advance(3)
        sb.set_payment_behavior(cus, "succeeds")
        s.crash("after_stripe_call", "payment_retry")
        assert s.table(retry) == [("pending", None)]
        s.run(); s.run()
        assert s.table(retry) == [("done", "paid")]
        assert s.ours("/pay") == [(f"/v1/invoices/{inv}/pay", f"dunning:{inv}:payment_retry", 200)]
        assert s.table("SELECT state, reason FROM dunning_state") == [("recovered", "paid")]

    # 2. killed before the retry left the process; the customer then pays: our call never happened
    with running_sandbox(payment_retry_days=(), after_final_failure="past_due") as sb:
        s = Scenario(sb, tmp_path / "b" / "warehouse.duckdb", rules_dir, tmp_path)
        [(cus, inv)] = s.subscribe("c_1")
        s.run()
        s.advance(3)
        s.crash("after_ledger_commit", "payment_retry")
        sb.set_payment_behavior(cus, "succeeds")
        assert s.client.v1.invoices.pay(inv).status == "paid"
        s.run(); s.run()
        assert s.table(retry) == [("superseded", "left_dunning:recovered")]
        assert s.ours("/pay") == []

    # 3. the day-30 write-off is accepted and the process killed; the customer then pays the
    #    uncollectible invoice (payment always wins): the write-off did happen
    with running_sandbox(payment_retry_days=(), after_final_failure="past_due") as sb:
        s = Scenario(sb, tmp_path / "c" / "warehouse.duckdb", rules_dir, tmp_path)
        [(cus, inv)] = s.subscribe("c_1")
        s.run()
        for day in (3, 7, 14):
            s.advance(day)
            s.run()
        s.advance(30)
        s.crash("after_stripe_call", "write_off")
        assert s.client.v1.invoices.retrieve(inv).status == "uncollectible"
        sb.set_payment_behavior(cus, "succeeds")
        assert s.client.v1.invoices.pay(inv).status == "paid"
        s.run(); s.run()
        assert s.table("SELECT status, outcome FROM dunning_actions WHERE step_name = 'write_off'") == [
            ("done", "uncollectible")]
        assert s.ours("/mark_uncollectible") == [
            (f"/v1/invoices/{inv}/mark_uncollectible", f"dunning:{inv}:write_off", 200)]
        assert s.table("SELECT state, reason FROM dunning_state") == [("recovered", "paid")]
        assert s.suspended() == []                           # as this last run published it
        assert s.table("SELECT count(*) FROM suspensions") == [(0,)]


@pytest.mark.slow
def test_a_new_subscriptions_declined_first_invoice_is_not_dunned(tmp_path: Path, rules_dir: Path) -> None:
    """A new customer's first charge is declined: the subscription is `incomplete` and Stripe voids
    the invoice 23 hours later. A run 6 hours in once sent "payment failed, we will try again in a
    few days" for an invoice nothing would retry."""
    from metering.dunning.summary import dunning_summary

    with running_sandbox() as sb:
        s = Scenario(sb, tmp_path / "data" / "warehouse.duckdb", rules_dir, tmp_path)
        cus = s.client.v1.customers.create({"test_clock": s.clock.id, "metadata": {"customer_id": "c_new"}})
        sb.set_payment_behavior(cus.id, "fails")
        sub = s.client.v1.subscriptions.create({
            "customer": cus.id, "items": [{"price": s.price.id}], "metadata": {"customer_id": "c_new"}})
        first = s.client.v1.invoices.retrieve(sub.latest_invoice)
        assert (sub.status, first.billing_reason, first.status, first.attempt_count) == (
            "incomplete", "subscription_create", "open", 1)

        def run_at(hours: int) -> object:
            s.t = SUBSCRIBED + hours * 3600
            sb.advance_clock(s.clock.id, s.t)
            with warehouse.open_warehouse(s.db) as con:
                s.sync(con)
                return run_dunning(con, s.client, s.policy, s.now)

        result = run_at(6)
        assert (result.report.counts, result.report.errors) == ({}, [])
        assert s.table("SELECT invoice_id, state, reason, step_name FROM dunning_state") == [
            (first.id, "not_in_dunning", "subscription_incomplete", None)]
        assert dunning_summary(result.state).select("category", "invoices", "amount").rows() == [
            ("subscription_incomplete", 1, "50.00")]

        result = run_at(30)                                    # Stripe voided it at 23 h
        assert (s.client.v1.subscriptions.retrieve(sub.id).status, s.client.v1.invoices.retrieve(first.id).status) == (
            "incomplete_expired", "void")
        assert s.table("SELECT invoice_id, state, reason FROM dunning_state") == [
            (first.id, "not_in_dunning", "voided")]
        assert dunning_summary(result.state).select("category", "invoices", "amount").rows() == [("void", 1, "50.00")]
        assert s.table("SELECT count(*) FROM dunning_actions") == [(0,)]
        assert s.table("SELECT count(*) FROM dunning_outbox") == [(0,)]
        assert not (tmp_path / "data" / "outbox").exists() or list((tmp_path / "data" / "outbox").iterdir()) == []
        assert s.ours() == []
