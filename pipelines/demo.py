"""The main job, `metering demo`: a month of billing end to end, on one machine, with no network.

What it does, in order (every step is a Dagster run in process, against the same definitions as
production, with resources pointed at local services):

1. writes a month of sample raw usage (every defect class included) and the customer list;
2. starts the local Stripe sandbox (state kept in `data/sandbox/state.json`) and the webhook
   receiver (`metering webhooks serve`, a separate process, like production) on loopback, and
   registers the receiver as the sandbox's webhook endpoint;
3. loads the customer list and syncs the Stripe catalog (meters, prices, customers, subscriptions
   on one test clock that starts at the month's first instant), planting the deliberate
   discrepancies finance should find;
4. at each billing-period boundary inside the month (the customers' anchor days, and the month's
   end): moves the test clock to just before it, ingests the files that arrived so far, and
   aggregates and pushes every day up to it in one run (late events become new revisions); then
   moves the clock past the boundary so Stripe drafts those periods' invoices;
5. rates the month while Stripe keeps the month's invoices draft (its grace hour) and bills the
   charges Stripe cannot price (minimums, per-model and per-region prices) as invoice items on them;
   moves the clock past the grace period (invoices finalized, paid or failed; webhooks delivered
   and landed); ingests a file that arrives after that and re-rates (a late-usage adjustment, whose
   invoice items go onto the next invoice); reconciles, runs dunning as
   the clock moves on through the policy's steps, writes the finance report and publishes the
   analyst snapshot;
6. prints a summary whose figures are read back from the warehouse.

Running it again is safe: the same seed writes the same files (ingest skips them by content hash),
the push ledger sends nothing twice, the sandbox resumes from its state file, and every asset
write is delete-then-insert. `--fresh` starts from empty state instead. Except after a demo killed
(SIGKILL, a power cut) rather than stopped: the local sandbox saves its state every 5 s, not before each
answer, so it may have forgotten calls it acknowledged in its last seconds, which real Stripe never
does; the re-run then reconciles those as differences. Start such a demo again with `--fresh`.

This module lives in `pipelines/` (not `metering/`) because it drives Dagster.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import click
import dagster as dg

from metering import config, warehouse
from metering.cli.options import SEED, UserPath
from metering.errors import BadInputError, CheckFailedError, ExternalServiceError
from metering.reports.money import fmt_money


DEMO_MONTH = dt.date(2026, 9, 1)
"""September: a whole month with one version of every plan, so the findings are the planted ones
and the customers whose plan changes mid-month (which the Stripe mirror does not follow yet)."""
DEMO_MAX_UNEXPLAINED_MINOR = 10**15
"""The demo plants differences on purpose: it reports them rather than stopping at the blocking
check (production keeps the configured threshold)."""
GRACE = dt.timedelta(hours=1)


def _utc(day: dt.date, hours: float = 0) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) + dt.timedelta(hours=hours)


def _unix(at: dt.datetime) -> int:
    return int(at.timestamp())


def _next_month(day: dt.date) -> dt.date:
    return (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)


@dataclass
class DemoOptions:
    customers: int = 200
    events: int = 150_000
    seed: int = 7
    month: dt.date = DEMO_MONTH
    data_dir: Path = field(default_factory=config.data_dir)
    rules_dir: Path = field(default_factory=config.rules_dir)
    fresh: bool = False
    plant_discrepancies: bool = True
    dunning_days: tuple[int, ...] = (0, 3, 7, 14)
    """Days after the period closes at which dunning runs (the clock moves there first)."""

    @property
    def warehouse(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def snapshot(self) -> Path:
        # under the data folder like everything else, whatever $METERING_SNAPSHOT names: a shell pointing
        # it at the analysts' real snapshot must not get it overwritten with demo data
        return self.data_dir / "snapshot.duckdb"

    @property
    def raw(self) -> Path:
        return self.data_dir / "raw"

    @property
    def customers_file(self) -> Path:
        return self.data_dir / "customers.csv"

    @property
    def landing(self) -> Path:
        return self.data_dir / "landing" / "stripe"

    @property
    def sandbox_state(self) -> Path:
        return self.data_dir / "sandbox" / "state.json"

    @property
    def month_end(self) -> dt.date:
        return _next_month(self.month)

    @property
    def record(self) -> Path:
        return self.data_dir / "demo.json"

    def identity(self) -> dict[str, object]:
        """What decides the demo's data: the sample files, the customer list and the test clock."""
        return {"month": f"{self.month:%Y-%m}", "customers": self.customers, "events": self.events, "seed": self.seed}


# --------------------------------------------------------------------------------------------------
# local services


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def webhook_receiver(landing: Path, secret: str, port: int) -> Iterator[str]:
    """Run `metering webhooks serve` as its own process (as in production); yields its URL."""
    landing.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "STRIPE_WEBHOOK_SECRET": secret, "METERING_LOG_JSON": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "metering.cli", "webhooks", "serve", "--port", str(port),
         "--landing", str(landing), "--exit-with-parent"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise ExternalServiceError("the webhook receiver did not start") from None
                time.sleep(0.1)
        yield f"{url}/webhooks/stripe"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _find_or_create_clock(client, month: dt.date) -> str:
    name = f"metering demo {month:%Y-%m}"
    for clock in client.v1.test_helpers.test_clocks.list({"limit": 100}).data:
        if clock.name == name:
            return clock.id
    return client.v1.test_helpers.test_clocks.create({"frozen_time": _unix(_utc(month)), "name": name}).id


def _advance_clock(sandbox, client, clock_id: str, to: dt.datetime) -> None:
    """Move the test clock forward (never back: a re-run finds it already there)."""
    current = client.v1.test_helpers.test_clocks.retrieve(clock_id).frozen_time
    if _unix(to) > current:
        sandbox.advance_clock(clock_id, _unix(to))
    sandbox.wait_for_webhooks(timeout=60)


# --------------------------------------------------------------------------------------------------
# Dagster


class DemoRunner:
    """Runs selections of the code location's assets in process, with the demo's resources."""

    def __init__(self, resources: dict[str, object], instance: dg.DagsterInstance) -> None:
        from pipelines.definitions import defs

        self.instance = instance
        self.assets = list(defs.assets or [])
        self.checks = list(defs.asset_checks or [])
        self.resources = resources
        self.runs = 0

    def materialize(
        self,
        keys: Sequence[str],
        partition_key: str | None = None,
        run_config: dict | None = None,
        partition_range: tuple[dt.date, dt.date] | None = None,
    ) -> dg.ExecuteInProcessResult:
        """One run of `keys` (and their checks); `partition_range` makes it a single-run backfill."""
        selection = dg.AssetSelection.assets(*keys) | dg.AssetSelection.checks_for_assets(*keys)
        from pipelines.partitions import RANGE_END_TAG, RANGE_START_TAG

        tags = {"metering/source": "demo"}
        if partition_range:
            tags[RANGE_START_TAG] = partition_range[0].isoformat()
            tags[RANGE_END_TAG] = partition_range[1].isoformat()
        config = {**(run_config or {}), "loggers": {"console": {"config": {"log_level": "WARNING"}}}}
        result = dg.materialize(
            [*self.assets, *self.checks], selection=selection, partition_key=partition_key,
            resources=self.resources, instance=self.instance, run_config=config,
            raise_on_error=False, tags=tags,
        )
        self.runs += 1
        if not result.success:
            scope = f"{partition_range[0]}..{partition_range[1]}" if partition_range else "unpartitioned"
            failed = [_failure_text(e) for e in result.all_events if e.is_step_failure] or \
                [e.message for e in result.all_events if e.is_failure]
            failed_checks = [
                f"{c.asset_key.to_user_string()}:{c.check_name}"
                for c in result.get_asset_check_evaluations() if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR
            ]
            raise CheckFailedError(
                f"demo step {list(keys)} ({partition_key or scope}) failed: "
                f"{'; '.join(failed_checks) or '; '.join(m or '' for m in failed)[:800]}"
            )
        return result


def _failure_text(event: dg.DagsterEvent) -> str:
    """A failed step's own error (the innermost cause: the op's exception, naming its file and line)."""
    error = event.step_failure_data.error
    while error is not None and error.cause is not None:
        error = error.cause
    return error.message.strip() if error is not None else (event.message or "")


def _instance(options: DemoOptions) -> dg.DagsterInstance:
    """The local instance of `dagster.yaml` when the demo runs on the project's data folder (so
    `dagster dev` shows the demo's runs); an ephemeral one otherwise (tests)."""
    if options.data_dir.resolve() == (config.PROJECT_ROOT / "data").resolve() and not os.environ.get("DAGSTER_HOME"):
        previous = os.getcwd()
        os.chdir(config.PROJECT_ROOT)  # dagster.yaml's base_dir paths are relative to the repo root
        try:
            return dg.DagsterInstance.from_config(str(config.PROJECT_ROOT))
        finally:
            os.chdir(previous)
    return dg.DagsterInstance.ephemeral()


# --------------------------------------------------------------------------------------------------
# the job


@dataclass
class DemoSummary:
    figures: dict[str, object]
    report_dir: Path | None
    snapshot: Path
    seconds: float

    def render(self) -> str:
        f = self.figures
        lines = [
            f"metering demo: {f['period']} billed end to end in {self.seconds:.0f} s ({f['dagster_runs']} Dagster runs)",
            f"  events:          {f['rows_read']:,} rows read, {f['events_accepted']:,} accepted, "
            f"{f['rows_quarantined']:,} quarantined, {f['duplicates_dropped']:,} exact duplicates dropped",
            f"  rated:           {f['rated_lines']:,} lines for {f['rated_customers']} customers: "
            + ", ".join(fmt_money(v, k) for k, v in f["rated_totals"].items()),
            f"  stripe:          {f['meter_event_calls']:,} meter event calls "
            f"({f['raw_events_per_call']} accepted events per call, {f['push_retries']} retries), "
            f"{f['late_windows']} window(s) too late to push; {f['stripe_calls_this_run']:,} API calls in this run",
            f"  invoices:        {f['invoices']} in Stripe: " + ", ".join(f"{k} {v}" for k, v in f["invoice_status"].items()),
            f"  invoice items:   {f['invoice_items']} for charges Stripe cannot price "
            f"({f['invoice_items_on_period_invoice']} on their period's invoice, the rest on the next): "
            + (", ".join(fmt_money(v, k) for k, v in f["invoice_items_totals"].items()) or "none"),
            f"  webhooks:        {f['webhook_events']:,} events landed",
            "  reconciliation:  " + ", ".join(f"{k} {v}" for k, v in f["reconciliation"].items())
            + f" (customer x meter x period rows; {f['unexplained_rows']} unexplained)",
            "  dunning:         " + (", ".join(f"{k} {v}" for k, v in f["dunning"].items()) or "nothing in dunning")
            + f"; {f['suspended']} suspended",
            f"  report:          {self.report_dir}",
            f"  snapshot:        {self.snapshot}  (open it read-only: duckdb.connect(path, read_only=True))",
        ]
        return "\n".join(lines)


def _prepare(options: DemoOptions) -> None:
    if options.fresh:
        for path in (options.raw, options.landing.parent, options.sandbox_state.parent,
                     options.data_dir / "reports", options.data_dir / "outbox", options.data_dir / "published"):
            shutil.rmtree(path, ignore_errors=True)
        warehouse.remove_database(options.warehouse)
        options.customers_file.unlink(missing_ok=True)
        options.record.unlink(missing_ok=True)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    _claim_folder(options)
    options.sandbox_state.parent.mkdir(parents=True, exist_ok=True)
    _check_sandbox_state(options.sandbox_state)


def _describe(identity: dict[str, object]) -> str:
    return (f"{identity['month']} ({identity['customers']:,} customers, {identity['events']:,} events, "
            f"seed {identity['seed']})")


def _claim_folder(options: DemoOptions) -> None:
    """A data folder holds one demo, recorded in `demo.json`: resuming it is safe, but another month's
    or seed's demo on top of it is refused here, before any work. Its customer list would give the
    customers periods that overlap the ones rated (rating refuses them, a minute in), its customers
    are on that month's test clock, and the summary, read from the whole warehouse, would add the two
    up. A folder from before the record is taken as this demo's."""
    import json

    wanted = options.identity()
    if options.record.exists():
        held = _json_object(options.record, "the demo's record", f"expected an object with {', '.join(wanted)}",
                            lambda doc: set(doc) == set(wanted)
                            and all(type(doc[k]) is type(v) for k, v in wanted.items()))
        if held != wanted:
            raise BadInputError(
                f"{options.data_dir} holds the demo of {_describe(held)}, not {_describe(wanted)}: one data folder "
                f"holds one demo. Run `metering demo --fresh` to replace it, or give another --data-dir")
    options.record.write_text(json.dumps(wanted) + "\n", encoding="utf-8")


def _json_object(path: Path, what: str, shape: str, fits=lambda doc: True) -> dict:
    """The JSON object in `path`; a file that is not one (cut short, edited, of another shape: `shape`
    says which) is bad input naming it and the way out, not a JSONDecodeError traceback."""
    import json

    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:
        doc, why = None, str(exc)
    else:
        why = shape
    if not isinstance(doc, dict) or not fits(doc):
        raise BadInputError(f"{path}: not {what} ({why}); run `metering demo --fresh` to start over")
    return doc


def _check_sandbox_state(path: Path) -> None:
    """A resumed run reads the sandbox's saved state: a file that is not one is named here."""
    if path.exists():
        _json_object(path, "a sandbox state file", "not a JSON object")


def _generate(options: DemoOptions) -> list[Path]:
    from metering.ingest.generate import GenerateConfig, generate

    last_day = options.month_end - dt.timedelta(days=1)
    cfg = GenerateConfig(seed=options.seed, customers=options.customers, events=options.events,
                         start=options.month, end=last_day)
    return generate(cfg, options.raw, customers_file=options.customers_file).files


def _files_by_arrival(files: list[Path]) -> dict[dt.date, list[str]]:
    """The generator names files `usage-YYYY-MM-DD.<format>` by the day they arrive."""
    out: dict[dt.date, list[str]] = {}
    for path in files:
        stamp = path.name.split(".")[0].removeprefix("usage-")
        out.setdefault(dt.date.fromisoformat(stamp[:10]), []).append(str(path))
    return out


def period_boundaries(options: DemoOptions) -> list[dt.date]:
    """The days in the month on which some customer's billing period ends, and the month's end."""
    import csv

    days_in_month = (options.month_end - options.month).days
    found = {options.month_end}
    with options.customers_file.open(newline="") as fh:
        for row in csv.DictReader(fh):
            anchor = (row.get("billing_anchor_day") or "").strip()
            if anchor:
                day = options.month.replace(day=min(int(anchor), days_in_month))
                if day > options.month:
                    found.add(day)
    return sorted(found)


def run_demo(options: DemoOptions, echo=print) -> DemoSummary:
    from metering.stripe_sandbox.testing import running_sandbox
    from pipelines.demo_plants import (plant_after_close, plant_before_sync, plant_extra_usage,
                                      settle_declined_first_invoices)
    from pipelines.resources import ProjectPaths, WarehouseResource, stripe_resources

    started = time.monotonic()
    _prepare(options)
    echo(f"generating {options.events:,} events for {options.customers} customers, {options.month:%B %Y} ...")
    files = _generate(options)
    arrivals = _files_by_arrival(files)

    with running_sandbox(state_file=str(options.sandbox_state), webhook_retry_delays=(0.2, 0.5, 1.0)) as sandbox:
        client = sandbox.client(max_network_retries=2)
        for endpoint in client.v1.webhook_endpoints.list({"limit": 100}).data:  # a previous run's receiver
            client.v1.webhook_endpoints.delete(endpoint.id)
        port = _free_port()
        endpoint = client.v1.webhook_endpoints.create(
            {"url": f"http://127.0.0.1:{port}/webhooks/stripe", "enabled_events": ["*"]})
        with webhook_receiver(options.landing, endpoint.secret, port):
            clock_id = _find_or_create_clock(client, options.month)
            paths = ProjectPaths(data_dir=str(options.data_dir), rules_dir=str(options.rules_dir),
                                 raw_dir=str(options.raw), customers=str(options.customers_file))
            resources = {
                "warehouse": WarehouseResource(path=str(options.warehouse)),
                "paths": paths,
                **stripe_resources(base_url=sandbox.base_url, create_customers=True, test_clock=clock_id),
            }
            runner = DemoRunner(resources, _instance(options))

            echo("syncing the Stripe catalog and customers ...")
            runner.materialize(["customer_plans"])
            if options.plant_discrepancies:
                plant_before_sync(client, options)
            runner.materialize(["stripe_catalog"])
            if options.plant_discrepancies:
                settle_declined_first_invoices(client)

            prev = options.month
            for checkpoint in period_boundaries(options):
                # Just before a billing period ends: everything that arrived so far is ingested,
                # aggregated and pushed, then the clock crosses the boundary and Stripe invoices it.
                _advance_clock(sandbox, client, clock_id, _utc(checkpoint) - dt.timedelta(minutes=10))
                arrived = [f for day, fs in sorted(arrivals.items()) if prev <= day < checkpoint for f in fs]
                keys, run_config = ["usage_aggregates", "stripe_usage_pushes"], None
                if arrived:   # with no file named, usage_events ingests every new file, ahead of the clock
                    keys = ["usage_events", *keys]
                    run_config = {"ops": {"usage_events": {"config": {"files": arrived}}}}
                runner.materialize(keys, partition_range=(options.month, checkpoint - dt.timedelta(days=1)),
                                   run_config=run_config)
                echo(f"  up to {checkpoint}: ingested {len(arrived)} file(s), aggregated and pushed")
                _advance_clock(sandbox, client, clock_id, _utc(checkpoint) + dt.timedelta(minutes=15))
                prev = checkpoint

            if options.plant_discrepancies:
                with warehouse.open_warehouse(options.warehouse, read_only=True) as con:
                    plant_extra_usage(client, con, options)
            month_key = options.month.isoformat()
            last_day = options.month_end - dt.timedelta(days=1)
            # Stripe keeps the period's invoices draft for its grace hour: the closing rating bills the
            # charges Stripe cannot price (minimums, per-model and per-region prices) onto them
            echo("rating the month; billing the charges Stripe cannot price as invoice items on the drafts ...")
            runner.materialize(["rated_usage", "invoice_previews", "stripe_invoice_items"], month_key)
            echo("closing the period (invoices finalized, paid or failed) ...")
            close = _utc(options.month_end) + GRACE + dt.timedelta(minutes=30)
            _advance_clock(sandbox, client, clock_id, close)
            if options.plant_discrepancies and (late := plant_after_close(options)):
                # usage arriving after the invoice was finalized: re-rated as a late-usage adjustment,
                # whose invoice items (if any) go onto the next invoice
                runner.materialize(["usage_events", "usage_aggregates", "stripe_usage_pushes"], last_day.isoformat(),
                                   {"ops": {"usage_events": {"config": {"files": late}}}})
                runner.materialize(["rated_usage", "invoice_previews", "stripe_invoice_items"], month_key)
            stripe_state = ["stripe_webhook_events", "stripe_invoices", "stripe_subscriptions", "stripe_payment_attempts"]

            echo("landing webhooks, reconciling, dunning ...")
            for offset in options.dunning_days:
                at = close + dt.timedelta(days=offset)
                _advance_clock(sandbox, client, clock_id, at)
                runner.materialize(stripe_state)
                runner.materialize(["dunning_state", "dunning_actions"],
                                   run_config={"ops": {name: {"config": {"now": at.isoformat()}}
                                                       for name in ("dunning_state", "dunning_actions")}})
            # the clock has passed the ends of the month's anchored periods (Oct 5, 15, 28 ...) by now:
            # bill their charges Stripe cannot price, as the daily invoice-items schedule would
            runner.materialize(["stripe_invoice_items"], month_key)
            runner.materialize(stripe_state)
            runner.materialize(["stripe_meter_summaries", "stripe_invoice_lines", "usage_reconciliation",
                                "finance_report"], month_key,
                               {"ops": {
                                   "stripe_meter_summaries": {"config": {"settle_seconds": 0}},
                                   "stripe_invoice_lines": {"config": {"settle_seconds": 0}},
                                   "usage_reconciliation": {"config": {
                                       "settle_seconds": 0, "max_unexplained_minor": DEMO_MAX_UNEXPLAINED_MINOR}},
                               }})
            stripe_calls = len(sandbox.requests_log())

    snapshot = warehouse.publish(options.warehouse, options.snapshot)
    figures = read_figures(options, stripe_calls)
    figures["dagster_runs"] = runner.runs
    report_dir = options.data_dir / "reports" / f"{options.month:%Y-%m}"
    return DemoSummary(figures, report_dir if report_dir.exists() else None, snapshot, time.monotonic() - started)


def read_figures(options: DemoOptions, stripe_calls: int) -> dict[str, object]:
    """The summary's numbers, read from the warehouse (so they are the warehouse's, by construction).
    Some are the whole warehouse's: the data folder holds this demo alone (`_claim_folder`)."""
    start, end = options.month, options.month_end
    with warehouse.open_warehouse(options.warehouse, read_only=True) as con:
        one = lambda sql, params=(): con.execute(sql, list(params)).fetchone()  # noqa: E731
        rows_read, quarantined, dups = one(
            "SELECT coalesce(sum(rows_read), 0), coalesce(sum(rows_quarantined), 0), "
            "coalesce(sum(duplicates_dropped), 0) FROM ingested_files")
        accepted = one("SELECT count(*) FROM usage_events")[0]
        rated_lines, rated_customers = one(
            "SELECT count(*), count(DISTINCT customer_id) FROM rated_usage WHERE period_start >= ? AND period_start < ?",
            [start, end])
        totals = con.execute(
            "SELECT currency, sum(amount_minor) FROM rated_usage WHERE period_start >= ? AND period_start < ? "
            "GROUP BY currency ORDER BY currency", [start, end]).fetchall()
        invoices = con.execute(
            "SELECT status, count(*) FROM stripe_invoices GROUP BY status ORDER BY status").fetchall()
        recon = con.execute(
            "SELECT status, count(*) FROM usage_reconciliation WHERE billing_month = ? GROUP BY status ORDER BY status",
            [start]).fetchall()
        dunning = con.execute("SELECT state, count(*) FROM dunning_state GROUP BY state ORDER BY state").fetchall()
        suspended = one("SELECT count(*) FROM suspensions")[0]
        webhook_events = one("SELECT count(*) FROM stripe_webhook_events")[0]
        calls, retries = one("SELECT coalesce(sum(calls), 0), coalesce(sum(retries), 0) FROM stripe_push_runs")
        late_windows = one("SELECT count(*) FROM stripe_push_ledger WHERE status = 'late'")[0]
        items = "FROM stripe_invoice_items WHERE status = 'acknowledged' AND period_start >= ? AND period_start < ?"
        item_count, on_period_invoice = one(
            f"SELECT count(*), count(*) FILTER (stripe_invoice_id IS NOT NULL AND stripe_invoice_id = target_invoice_id) "
            f"{items}", [start, end])
        item_totals = con.execute(f"SELECT currency, sum(amount_minor) {items} GROUP BY 1 ORDER BY 1", [start, end]).fetchall()
        unexplained = one(
            "SELECT count(*) FROM usage_reconciliation WHERE billing_month = ? AND NOT explained", [start])[0]
    return {
        "period": f"{start:%Y-%m}",
        "rows_read": int(rows_read), "events_accepted": int(accepted), "rows_quarantined": int(quarantined),
        "duplicates_dropped": int(dups),
        "rated_lines": int(rated_lines), "rated_customers": int(rated_customers),
        "rated_totals": {cur: int(total) for cur, total in totals},   # minor units of the currency
        "invoices": sum(n for _, n in invoices), "invoice_status": dict(invoices),
        "reconciliation": dict(recon), "dunning": dict(dunning), "suspended": int(suspended),
        "webhook_events": int(webhook_events),
        "stripe_calls_this_run": stripe_calls, "meter_event_calls": int(calls), "push_retries": int(retries),
        "late_windows": int(late_windows), "unexplained_rows": int(unexplained),
        "invoice_items": int(item_count), "invoice_items_on_period_invoice": int(on_period_invoice),
        "invoice_items_totals": {cur: int(total) for cur, total in item_totals},
        "raw_events_per_call": round(int(accepted) / int(calls), 1) if calls else 0,
    }


def demo_months(today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """The first and last month `metering demo` can run: from the partitions' start to the last month
    that has ended (UTC). The demo materializes every day of the month and closes its billing periods;
    a later month has days that are not partitions yet (Dagster: unknown partition key) and meter
    events Stripe refuses as in the future."""
    from metering.customers import LAST_DATE
    from pipelines.partitions import START_DATE

    today = today or dt.datetime.now(dt.timezone.utc).date()
    last = (today.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    return dt.date.fromisoformat(START_DATE), min(last, LAST_DATE.replace(day=1))


def demo_month(ctx: click.Context, param: click.Parameter, value: dt.datetime) -> dt.datetime:
    """A click callback: a month `demo_months` allows, checked before any work (a month too late
    failed after ~30 s with a Dagster or Stripe traceback)."""
    first, last = demo_months()
    if not first <= value.date() <= last:
        today = dt.datetime.now(dt.timezone.utc).date()
        raise click.BadParameter(
            f"{value.date().isoformat()[:7]} is outside {first:%Y-%m} .. {last:%Y-%m}: the demo runs a month that "
            f"has ended (today is {today}, UTC) and the Dagster partitions start in {first:%Y-%m}")
    return value


@click.command()
@click.option("--customers", type=click.IntRange(1, None), default=200, show_default=True)
@click.option("--events", type=click.IntRange(1, None), default=150_000, show_default=True)
@click.option("--seed", type=SEED, default=7, show_default=True,
              help="Same seed, same sample files (0 to 4294967295).")
@click.option("--month", type=click.DateTime(["%Y-%m"]), default=DEMO_MONTH.strftime("%Y-%m"), show_default=True,
              callback=demo_month,
              help="The billing month to simulate: one that has ended, 2026-01 (the partitions' start) or later.")
@click.option("--data-dir", type=UserPath(file_okay=False), default=None,
              help="Where everything is written (default: $METERING_DATA_DIR or data/).")
@click.option("--fresh", is_flag=True, help="Start from empty state instead of resuming the previous run's.")
@click.option("--no-plants", is_flag=True, help="Do not plant the deliberate discrepancies.")
def demo(customers: int, events: int, seed: int, month: dt.datetime, data_dir: str | None, fresh: bool,
         no_plants: bool) -> None:
    """The main job: a month of usage ingested, rated, pushed to the local Stripe sandbox, invoiced,
    reconciled and dunned, end to end on this machine. Safe to run again."""
    root = click.get_current_context().find_root()
    if root.params.get("log_level") is None and "METERING_LOG_LEVEL" not in os.environ:
        logging.getLogger().setLevel(logging.WARNING)  # the steps print their own progress
    options = DemoOptions(customers=customers, events=events, seed=seed, month=month.date().replace(day=1),
                          data_dir=Path(data_dir) if data_dir else config.data_dir(), fresh=fresh,
                          plant_discrepancies=not no_plants)
    summary = run_demo(options, echo=lambda m: click.echo(m, err=True))
    click.echo(summary.render())
