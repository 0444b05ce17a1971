"""`metering dunning`: validate the policy, run dunning, and the finance summary."""

from __future__ import annotations

import datetime as dt
import json
import sys

import click
import stripe

from metering import config, warehouse
from metering.cli.options import UserPath, parsed_by
from metering.dunning.state import parse_clock
from metering.errors import EXIT_BAD_INPUT, BadInputError, ExternalServiceError

_WAREHOUSE = click.option(
    "--warehouse", "warehouse_path", type=UserPath(dir_okay=False), default=None,
    help="Warehouse file (default: $METERING_WAREHOUSE or data/warehouse.duckdb).")
_RULES = click.option(
    "--rules", "rules_dir", type=UserPath(file_okay=False), default=None,
    help="Rules folder holding dunning.yaml (default: $METERING_RULES or rating_rules/).")


def stripe_client_from_env() -> stripe.StripeClient | None:
    """The Stripe client configured by the environment (STRIPE_API_KEY, STRIPE_API_BASE), or None."""
    from metering.stripe.client import make_client, settings_from_env

    settings = settings_from_env(required=False)
    return make_client(settings) if settings is not None else None


@click.group()
def dunning() -> None:
    """Chase failed invoice payments by the policy in rating_rules/dunning.yaml."""


@dunning.command()
@_RULES
def validate(rules_dir: str | None) -> None:
    """Check dunning.yaml: every problem as `file: field: what is wrong` (exit 3 if any).

    A rules folder without dunning.yaml is valid for rating, but `dunning run` and the dunning assets
    refuse it (exit 3), which the message says; a folder that does not exist is not valid.
    """
    from metering.dunning.policy import policy_path, validate_dunning

    folder = config.rules_dir(rules_dir)
    if not folder.is_dir():
        raise BadInputError(f"{folder}: " + ("is a file, not the rules folder" if folder.exists()
                                             else "the rules folder does not exist"))
    errors = validate_dunning(rules_dir)
    if errors:
        for line in errors:
            click.echo(f"error: {line}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    path = policy_path(rules_dir)
    click.echo(f"ok: {path}" if path.exists() else
               f"ok: no {path.name}: rating needs none, but `metering dunning run` and the dunning assets refuse "
               f"to run without one (exit 3)")


@dunning.command()
@click.option("--now", default=None, callback=parsed_by(parse_clock),
              help="The dunning clock, ISO 8601 (default: now, UTC).")
@_RULES
@_WAREHOUSE
@click.option("--outbox", "outbox_dir", type=UserPath(file_okay=False), default=None,
              help="Folder for reminder messages (default: $METERING_OUTBOX_DIR or data/outbox/).")
@click.option("--published", "published_dir", type=UserPath(file_okay=False), default=None,
              help="Folder for suspensions.csv/.json (default: $METERING_PUBLISHED_DIR or data/published/).")
def run(now: dt.datetime | None, rules_dir: str | None, warehouse_path: str | None,
        outbox_dir: str | None, published_dir: str | None) -> None:
    """Compute dunning state, perform due steps exactly once, publish suspensions."""
    from metering.dunning.outbox import OUTBOX_ENV
    from metering.dunning.outbox import outbox_dir as resolve_outbox
    from metering.dunning.outbox import smtp_configured, smtp_port
    from metering.dunning.policy import load_policy
    from metering.dunning.run import run_dunning
    from metering.dunning.suspensions import PUBLISHED_ENV
    from metering.dunning.suspensions import published_dir as resolve_published

    now = now or parse_clock(None)
    policy = load_policy(rules_dir)
    if smtp_configured():
        smtp_port()  # checked before any step is performed, not when the first mail is due
    outbox = config.ensure_dir(resolve_outbox(outbox_dir), config.path_origin(outbox_dir, "--outbox", OUTBOX_ENV))
    published = config.ensure_dir(resolve_published(published_dir),
                                  config.path_origin(published_dir, "--published", PUBLISHED_ENV))
    client = stripe_client_from_env()
    with warehouse.open_warehouse(warehouse_path, must_exist=True) as con:
        result = run_dunning(con, client, policy, now, outbox_folder=outbox, published_folder=published)
    counts = ", ".join(f"{k}={v}" for k, v in sorted(result.report.counts.items())) or "nothing due"
    states = result.state.group_by("state").len().sort("state")
    click.echo(f"dunning at {now.isoformat()}: {counts}")
    click.echo("invoices: " + (", ".join(f"{s}={n}" for s, n in states.iter_rows()) or "none"))
    click.echo(f"suspended customers: {result.suspensions.height}; reminders sent: {result.reminders_sent}")
    if result.report.errors:
        for line in result.report.errors:
            click.echo(f"pending: {line}", err=True)
        raise ExternalServiceError(
            f"{len(result.report.errors)} dunning action(s) could not complete; they stay pending "
            "and the next run retries them with the same idempotency keys"
        )


@dunning.command()
@_WAREHOUSE
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table")
def summary(warehouse_path: str | None, fmt: str) -> None:
    """Invoices in dunning by step, amount at risk, recovered, written off (per currency)."""
    import polars as pl

    from metering.dunning.frames import table_exists
    from metering.dunning.state import STATE_SCHEMA, read_previous
    from metering.dunning.summary import dunning_summary, format_summary

    state = pl.DataFrame(schema=STATE_SCHEMA)
    with warehouse.open_warehouse(warehouse_path, read_only=True) as con:  # refuses a warehouse that is not there
        if table_exists(con, "dunning_state"):
            state = read_previous(con)
    table = dunning_summary(state)
    if fmt == "csv":
        click.echo(table.write_csv(), nl=False)
    elif fmt == "json":
        click.echo(json.dumps(table.to_dicts(), indent=2))
    else:
        click.echo(format_summary(table))
