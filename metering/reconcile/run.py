"""Reconcile one billing month in the warehouse: read inputs, compare, write both tables atomically."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import duckdb
import polars as pl

from metering.reconcile import inputs
from metering.reconcile.reconcile import reconcile_invoices, reconcile_usage, unexplained_by_currency
from metering.reconcile.settings import ReconcileSettings
from metering.rules.meters import Meter, load_meters
from metering.warehouse import replace_rows, transaction


@dataclass(frozen=True)
class ReconcileResult:
    billing_month: dt.date
    usage: pl.DataFrame          # usage_reconciliation rows written
    invoices: pl.DataFrame       # invoice_reconciliation rows written
    settings: ReconcileSettings

    def status_counts(self) -> dict[str, int]:
        """Usage rows (customer x meter x period) per status."""
        return {r["status"]: r["len"] for r in self.usage.group_by("status").len().sort("status").iter_rows(named=True)}

    def invoice_status_counts(self) -> dict[str, int]:
        """Invoice rows (customer x period) per status."""
        counts = self.invoices.group_by("status").len().sort("status")
        return {r["status"]: r["len"] for r in counts.iter_rows(named=True)}

    def unexplained_minor(self) -> dict[str, int]:
        """Per currency: unexplained usage rows' |differences| plus unexplained invoice rows' differences
        net of their usage rows (flat fees and other lines without a meter), see `unexplained_by_currency`."""
        return unexplained_by_currency(self.usage, self.invoices)

    def check_passed(self) -> bool:
        """The blocking check: unexplained |differences| per currency within the configured amount."""
        return all(v <= self.settings.max_unexplained_minor for v in self.unexplained_minor().values())


def parse_period(text: str) -> dt.date:
    """'2026-10' or '2026-10-01' (a monthly_billing key) -> date(2026, 10, 1)."""
    from metering.customers import FIRST_DATE, LAST_DATE, outside_dates
    from metering.errors import BadInputError

    for fmt in ("%Y-%m", "%Y-%m-%d"):
        try:
            month = dt.datetime.strptime(text, fmt).date().replace(day=1)
        except ValueError:
            continue
        if outside_dates(month):   # date arithmetic around year 1 or 9999 overflows
            raise BadInputError(f"--period: {text!r} is outside {FIRST_DATE:%Y-%m} .. {LAST_DATE:%Y-%m}")
        return month
    raise BadInputError(f"--period: {text!r} is not a month like 2026-10")


def reconcile_period(
    con: duckdb.DuckDBPyConnection,
    billing_month: dt.date,
    *,
    settings: ReconcileSettings | None = None,
    meters: dict[str, Meter] | None = None,
    now: dt.datetime | None = None,
) -> ReconcileResult:
    """Write `usage_reconciliation` and `invoice_reconciliation` for the month (delete-then-insert)."""
    settings = settings or ReconcileSettings.from_env()
    meters = meters if meters is not None else load_meters()
    now = now or dt.datetime.now(dt.UTC)
    billing_month = billing_month.replace(day=1)
    periods = inputs.load_periods(con, billing_month)
    open_periods = inputs.load_open_periods(con, periods)
    lines = inputs.load_stripe_lines(con, billing_month, periods)
    usage = reconcile_usage(
        inputs.load_ours(con, billing_month, meters),
        inputs.load_pushed(con, billing_month, meters, periods, finalized=lines),
        inputs.load_stripe_meter(con, billing_month),
        lines,
        billing_month=billing_month, settings=settings, reconciled_at=now, open_periods=open_periods,
    )
    invoices = reconcile_invoices(
        inputs.load_our_invoices(con, billing_month),
        inputs.load_stripe_invoices(con, billing_month, periods),
        billing_month=billing_month, settings=settings, reconciled_at=now, open_periods=open_periods, usage=usage,
        pending_items=inputs.load_engine_items_pending(con, billing_month),
    )
    with transaction(con):
        replace_rows(con, "usage_reconciliation", "billing_month = ?", [billing_month], usage, in_transaction=True)
        replace_rows(con, "invoice_reconciliation", "billing_month = ?", [billing_month], invoices, in_transaction=True)
        # the settings that judged these rows, for the report's verdict (not the report writer's environment)
        replace_rows(con, "reconciliation_runs", "billing_month = ?", [billing_month], pl.DataFrame(
            {"billing_month": [billing_month], "reconciled_at": [now],
             "settings": [json.dumps(settings.to_record(), sort_keys=True)]}), in_transaction=True)
    return ReconcileResult(billing_month, usage, invoices, settings)


def stored_settings(con: duckdb.DuckDBPyConnection, billing_month: dt.date) -> ReconcileSettings | None:
    """The settings the month's latest reconciliation ran with, None when it ran before migration 057."""
    row = con.execute("SELECT settings FROM reconciliation_runs WHERE billing_month = ?",
                      [billing_month.replace(day=1)]).fetchone()
    return ReconcileSettings.from_record(json.loads(row[0])) if row else None
