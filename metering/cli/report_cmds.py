"""`metering reconcile --period YYYY-MM` and `metering report --period YYYY-MM [--out DIR]`."""

from __future__ import annotations

import dataclasses
import datetime as dt

import click
import duckdb

from metering import config, warehouse
from metering.cli.options import UserPath, parsed_by, stripe_errors
from metering.errors import BadInputError, CheckFailedError
from metering.reconcile.run import parse_period, reconcile_period
from metering.reconcile.settings import ReconcileSettings
from metering.reports import default_folder, write_report
from metering.reports.money import fmt_money

WAREHOUSE_OPTION = click.option(
    "--warehouse", "warehouse_path", type=UserPath(dir_okay=False), default=None,
    help="Warehouse file (default: $METERING_WAREHOUSE or data/warehouse.duckdb).")
PERIOD_OPTION = click.option("--period", "month", required=True, callback=parsed_by(parse_period),
                             help="Billing month, e.g. 2026-10.")


@click.command()
@PERIOD_OPTION
@WAREHOUSE_OPTION
@click.option("--pull/--no-pull", default=True, show_default=True,
              help="Pull meter summaries and invoices from Stripe first (needs STRIPE_API_KEY).")
@click.option("--settle-seconds", type=click.IntRange(min=0, max=10**12), default=None,
              help="Trust Stripe's meter summaries only this long after the last acknowledged push "
                   "(default: $METERING_STRIPE_SETTLE_SECONDS or 900).")
@click.option("--invoice-grace-seconds", type=click.IntRange(min=0, max=10**12), default=None,
              help="How long after a period's end Stripe may still create its invoice before the period is "
                   "not_invoiced (default: $METERING_STRIPE_INVOICE_GRACE_SECONDS or 3600).")
@click.option("--fail/--no-fail", "fail", default=True, show_default=True,
              help="Exit 4 when unexplained differences exceed $METERING_RECON_MAX_UNEXPLAINED_MINOR.")
def reconcile(month: dt.date, warehouse_path: str | None, pull: bool, settle_seconds: int | None,
              invoice_grace_seconds: int | None, fail: bool) -> None:
    """Reconcile a billing month: ours vs pushed vs Stripe's meters vs Stripe's invoices.

    The warehouse must exist. A month with nothing to compare passes, with a warning.
    """
    settings = ReconcileSettings.from_env()
    if settle_seconds is not None:
        settings = dataclasses.replace(settings, settle_seconds=settle_seconds)
    if invoice_grace_seconds is not None:
        settings = dataclasses.replace(settings, invoice_grace_seconds=invoice_grace_seconds)
    client = None
    if pull:  # a missing key is told before the warehouse is opened (and waited for)
        from metering.stripe.client import make_client, settings_from_env

        client = make_client(settings_from_env())
    with stripe_errors(), warehouse.open_warehouse(warehouse_path, wait_seconds=30, must_exist=True) as con:
        if client is not None:
            from metering.reconcile.pulls import pull_stripe_state
            from metering.rules.meters import load_meters

            pulled = pull_stripe_state(con, client, month, meters=list(load_meters()), settings=settings)
            click.echo(f"pulled from Stripe: {pulled.summaries.height} meter summaries "
                       f"({pulled.pending} pending), {pulled.invoices.height} invoices, {pulled.lines.height} lines, "
                       f"{pulled.api_calls} API calls")
        result = reconcile_period(con, month, settings=settings)
    click.echo(f"reconciled {month:%Y-%m}: {result.usage.height} customer x meter rows, "
               f"{result.invoices.height} invoices; tolerance {settings.describe_tolerance()}")
    if result.usage.height == 0 and result.invoices.height == 0:
        click.echo(f"warning: nothing to reconcile for {month:%Y-%m} in {config.warehouse_path(warehouse_path)}: "
                   "no rated usage, pushes or Stripe invoices for the month", err=True)
    for status, n in result.status_counts().items():
        click.echo(f"  {status:<24} {n}")
    invoice_counts = ", ".join(f"{status} {n}" for status, n in result.invoice_status_counts().items())
    click.echo(f"  invoices: {invoice_counts or 'none'}")
    unexplained = result.unexplained_minor()
    for cur, minor in sorted(unexplained.items()):
        click.echo(f"  unexplained {fmt_money(minor, cur)}")
    if fail and not result.check_passed():
        raise CheckFailedError(
            f"unexplained differences exceed {settings.max_unexplained_minor} minor unit(s): "
            + ", ".join(fmt_money(m, c) for c, m in sorted(unexplained.items()))
            + f" (see `metering report --period {month:%Y-%m}`)")


@click.command()
@PERIOD_OPTION
@WAREHOUSE_OPTION
@click.option("--out", "out_dir", type=UserPath(file_okay=False), default=None,
              help="Folder for the files (default: data/reports/<period>/).")
def report(month: dt.date, warehouse_path: str | None, out_dir: str | None) -> None:
    """Write the finance report (HTML, XLSX, CSV) of a reconciled billing month.

    Exits 3, writing nothing, when the warehouse does not exist or holds no reconciliation rows of the
    month: it was never reconciled, or its reconciliation had nothing to compare (no rated usage, pushes
    or Stripe invoices: `metering reconcile` warns so and exits 0).
    """
    # read-only: the report only reads, so it never migrates, locks out or changes what it reports on
    with warehouse.open_warehouse(warehouse_path, read_only=True, wait_seconds=30) as con:
        # a read-only connection does not migrate: a schema behind this code's would fail in a query
        warehouse.refuse_schema_behind(
            con, config.warehouse_path(warehouse_path),
            then="the report only reads the warehouse, so it does not bring it up to date: reconcile the month "
                 "again (`metering reconcile --period YYYY-MM`, which does), then write the report")
        if not _reconciled(con, month):
            # no table records reconciliation runs, so "never reconciled" and "reconciled, nothing to
            # compare" look the same here: name both and what to run for each
            raise BadInputError(
                f"{config.warehouse_path(warehouse_path)}: nothing reconciled for {month:%Y-%m}: either it has not "
                f"been reconciled (run `metering reconcile --period {month:%Y-%m}` first), or it was but had "
                f"nothing to compare: no rated usage, pushes or Stripe invoices for the month (rate its usage with "
                f"`metering rerate --from YYYY-MM-DD --to YYYY-MM-DD`, then reconcile again)")
        files = write_report(con, month, config.ensure_dir(out_dir or default_folder(month),
                                                           config.path_origin(out_dir, "--out", None)))
    click.echo(f"report for {month:%Y-%m} in {files.folder}")
    click.echo(f"  {files.html.name}, {files.xlsx.name}, " + ", ".join(p.name for p in files.csvs))
    for t in files.data.totals:
        click.echo(f"  {t.currency}: rated {fmt_money(t.rated_minor, t.currency)}, "
                   f"invoiced {fmt_money(t.invoiced_minor, t.currency)}, match rate {t.match_rate_text('%')}, "
                   f"money at risk {fmt_money(t.money_at_risk_minor, t.currency)}")


def _reconciled(con: duckdb.DuckDBPyConnection, month: dt.date) -> bool:
    """Whether reconciliation left rows for the month (an empty month leaves none to report on either)."""
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    return any(
        con.execute(f"SELECT count(*) FROM {table} WHERE billing_month = ?", [month]).fetchone()[0]
        for table in ("usage_reconciliation", "invoice_reconciliation") if table in tables
    )
