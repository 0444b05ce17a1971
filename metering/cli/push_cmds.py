"""`metering stripe sync`, `metering stripe push`, `metering bench push`.

Stripe is reached through `STRIPE_API_KEY` (+ `STRIPE_API_BASE` for the local sandbox); the key is
never printed. See metering.stripe.client for every variable.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import click

from metering.cli.options import UserPath, check_order, parse_date, parsed_by, stripe_errors
from metering.reconcile.run import parse_period
from metering.errors import ExternalServiceError



def _client():
    from metering.stripe.client import make_client, settings_from_env

    return make_client(settings_from_env(required=True))  # type: ignore[arg-type]


@click.group()
def stripe() -> None:
    """Stripe catalog sync and usage push (STRIPE_API_KEY, STRIPE_API_BASE)."""


@stripe.command()
@click.option("--rules", "rules_dir", type=UserPath(file_okay=False), default=None,
              help="Rules folder (default: $METERING_RULES or rating_rules/).")
@click.option("--customers", "customers_path", type=UserPath(dir_okay=False), default=None,
              help="Customer list CSV (default: the warehouse's customer_plans table).")
@click.option("--warehouse", "warehouse_path", type=UserPath(dir_okay=False), default=None)
@click.option("--window", type=click.Choice(["day", "hour"]), default=None,
              help="Meter event_time_window for new meters (default: $STRIPE_METER_WINDOW or day).")
@click.option("--create-customers/--no-create-customers", default=False,
              help="Create missing customers and subscriptions (the sandbox; off by default).")
@click.option("--test-clock", default=None, help="Attach created customers to this test clock.")
def sync(rules_dir: str | None, customers_path: str | None, warehouse_path: str | None, window: str | None,
         create_customers: bool, test_clock: str | None) -> None:
    """Create or find meters, products, prices (and customers); report drift and what Stripe cannot express."""
    from metering import warehouse
    from metering.customers import load_customers
    from metering.rating.service import read_customer_plans
    from metering.rules.plans import load_rules
    from metering.stripe.catalog import sync_catalog
    from metering.stripe.push import push_config_from_env

    rules = load_rules(rules_dir)
    client = _client()
    # without --customers the list is the warehouse's: a mistyped path must not create an empty one
    with stripe_errors(), warehouse.open_warehouse(warehouse_path, wait_seconds=30,
                                                   must_exist=not customers_path) as con:
        customers = load_customers(customers_path, rules) if customers_path else read_customer_plans(con)
        # the push's config checks the window kind (and the env variable) as the push does
        window_kind = push_config_from_env(window_kind=window).window_kind
        report = sync_catalog(con, client, rules, customers, window_kind=window_kind,
                              create_customers=create_customers, test_clock=test_clock,
                              sandbox_payment_behavior=create_customers)
    click.echo(report.summary())
    for f in report.findings:
        click.echo(f"  {f.finding}: {f.kind} {f.our_key}" + (f" {f.field}: ours {f.ours}, Stripe {f.theirs}" if f.field else "")
                   + (f" ({f.detail})" if f.detail else ""))


@stripe.command()
@click.option("--date", "day", callback=parse_date, default=None, help="One UTC day (YYYY-MM-DD).")
@click.option("--from", "date_from", callback=parse_date, default=None, help="First UTC day of a range.")
@click.option("--to", "date_to", callback=parse_date, default=None, help="Last UTC day of a range (inclusive).")
@click.option("--rules", "rules_dir", type=UserPath(file_okay=False), default=None)
@click.option("--warehouse", "warehouse_path", type=UserPath(dir_okay=False), default=None)
@click.option("--rate", type=click.FloatRange(min=0), default=None,
              help="Calls per second (default $STRIPE_PUSH_RATE or 20; 0 = no limit).")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Parallel customer x meter pairs (default: $STRIPE_PUSH_CONCURRENCY or 8).")
@click.option("--window", type=click.Choice(["day", "hour"]), default=None)
@click.option("--retry-failed", is_flag=True, help="Give windows whose last revision failed a new revision.")
def push(day: dt.date | None, date_from: dt.date | None, date_to: dt.date | None, rules_dir: str | None,
         warehouse_path: str | None, rate: float | None, concurrency: int | None, window: str | None,
         retry_failed: bool) -> None:
    """Push each customer x meter x window total to Stripe through the outbox ledger.

    Exits 5 when windows are left failed or unknown, or held as moved to another Stripe customer (they
    are listed in stripe_push_ledger), or are not pushed because their customer is not synced to Stripe.
    """
    from metering import warehouse
    from metering.rules.meters import load_meters
    from metering.stripe.push import push_config_from_env, push_usage

    if day and (date_from or date_to):
        raise click.UsageError("give either --date or --from/--to, not both")
    if date_from is None and date_to is not None:
        raise click.UsageError("--to needs --from")
    check_order(date_from, date_to, "--from", "--to")
    date_from = day or date_from
    date_to = day or date_to or date_from
    if date_from is None:
        raise click.UsageError("give --date YYYY-MM-DD or --from YYYY-MM-DD [--to YYYY-MM-DD]")
    config = push_config_from_env(rate=rate, concurrency=concurrency, window_kind=window,
                                  retry_failed=retry_failed or None)
    meters = load_meters(rules_dir)
    client = _client()
    with stripe_errors(), warehouse.open_warehouse(warehouse_path, wait_seconds=30, must_exist=True) as con:
        report = push_usage(con, client, meters, date_from, date_to, config)  # type: ignore[arg-type]
    click.echo(report.summary())
    if report.needs_operator:
        raise _needs_a_look(report.failed, report.unknown, "windows", "stripe_push_ledger", [
            (report.moved, "held because a previous Stripe customer still holds their usage (the warnings above "
                           "name both customers)"),
            (report.unmapped, "window(s) of customers not synced to Stripe, not pushed: run `metering stripe sync`")])


def _needs_a_look(failed: int, unknown: int, what: str, table: str,
                  notes: list[tuple[int, str]]) -> ExternalServiceError:
    """The exit-5 error of a push: the rows left failed or unknown in `table`, then each note whose count is not 0."""
    parts = [f"{failed} failed and {unknown} unknown {what} need a look (SELECT * FROM {table} WHERE status IN "
             "('failed', 'unknown', 'sent'))"] if failed + unknown else []
    return ExternalServiceError("; ".join(parts + [f"{count} {text}" for count, text in notes if count]))


@stripe.command("invoice-items")
@click.option("--period", "month", required=True, callback=parsed_by(parse_period),
              help="Billing month whose periods (those starting in it) are billed, e.g. 2026-10.")
@click.option("--warehouse", "warehouse_path", type=UserPath(dir_okay=False), default=None)
@click.option("--rate", type=click.FloatRange(min=0), default=None,
              help="Calls per second (default $STRIPE_PUSH_RATE or 20; 0 = no limit).")
def invoice_items(month: dt.date, warehouse_path: str | None, rate: float | None) -> None:
    """Bill the closed periods' charges Stripe cannot price (minimums, dimension-filtered prices) as
    Stripe invoice items, exactly once, through the stripe_invoice_items ledger.

    An item goes onto the period's invoice while Stripe keeps it a draft, else onto the subscription's
    next invoice. Re-running is safe. Exits 5 when items are left failed, unknown or blocked, customers
    are not synced to Stripe, differences are held, or charges belong to a plan version the Stripe
    subscription is not on; the message says which.
    """
    from metering import warehouse
    from metering.stripe.invoice_items import bill_invoice_items
    from metering.stripe.push import push_config_from_env

    config = push_config_from_env(rate=rate)
    client = _client()
    with stripe_errors(), warehouse.open_warehouse(warehouse_path, wait_seconds=30, must_exist=True) as con:
        report = bill_invoice_items(con, client, month, rate=config.rate, retry=config.retry)
    click.echo(report.summary())
    if report.needs_operator:
        raise _needs_a_look(report.failed, report.unknown, "invoice items", "stripe_invoice_items", [
            (report.unmapped, "charge(s) of customers not synced to Stripe: run `metering stripe sync`"),
            (report.blocked, "item(s) blocked: no live subscription and the period's invoice is final "
                             "(stripe_invoice_items WHERE status = 'blocked' says how to invoice them by hand)"),
            (report.held, "difference(s) held: they come to a credit in periods with usage Stripe never billed "
                          "(late windows in stripe_push_ledger); credit or bill them by hand"),
            (report.other_version, "usage charge(s) of a plan version the Stripe subscription is not on: Stripe "
                                   "bills that usage at the subscription's price (reconciliation shows the difference)")])


@click.command("push")
@click.option("--customers", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--concurrency", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--rate", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Client-side calls/s limit (0 = none: the sandbox).")
@click.option("--rules", "rules_dir", type=UserPath(file_okay=False), default=None)
def bench_push(customers: int, concurrency: int, rate: float, rules_dir: str | None) -> None:
    """Push one day for CUSTOMERS customers x 5 meters to a local sandbox; print time, calls, retries."""
    from metering.rules.plans import load_rules
    from metering.stripe import bench
    from metering.stripe.push import PushConfig
    from metering.stripe_sandbox.testing import running_sandbox

    rules = load_rules(rules_dir)
    day = dt.date(2026, 11, 20)
    now = dt.datetime(2026, 11, 20, 23, tzinfo=dt.timezone.utc)
    with tempfile.TemporaryDirectory() as scratch, running_sandbox(now=int(now.timestamp())) as sb:
        result = bench.run(rules, sb.base_url, sb.api_key, Path(scratch), customers=customers, day=day,
                           config=PushConfig(rate=rate, concurrency=concurrency), now=now)
    r = result.report
    click.echo(
        f"pushed {result.windows:,} windows ({result.customers:,} customers x {len(rules.meters)} meters, one day) "
        f"in {r.seconds:.2f} s ({r.calls / r.seconds if r.seconds else 0:,.0f} calls/s): {r.calls:,} calls, "
        f"{r.retries} retries, {r.acknowledged:,} acknowledged, {r.raw_events_per_call} raw events per call "
        f"(catalog sync, not timed: {result.sync_seconds:.1f} s)"
    )
    if r.needs_operator:
        raise ExternalServiceError(f"{r.needs_operator} windows were not acknowledged")
