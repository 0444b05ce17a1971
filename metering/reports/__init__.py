"""The finance report for a billing month: HTML (self-contained, opens offline), XLSX and CSV.

Entry point: `write_report(con, billing_month, out_dir=None)`; default folder
`data/reports/<YYYY-MM>/`. Reads `usage_reconciliation`, `invoice_reconciliation` (run
`metering.reconcile.run.reconcile_period` first) and `dunning_state`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import duckdb

from metering import config
from metering.files import replacing_all
from metering.reconcile.settings import ReconcileSettings
from metering.reports.data import ReportData, load_report_data
from metering.reports.tables import report_tables
from metering.reports.writers import write_csv, write_html, write_xlsx


@dataclass(frozen=True)
class ReportFiles:
    folder: Path
    html: Path
    xlsx: Path
    csvs: list[Path]
    data: ReportData


def default_folder(billing_month: dt.date) -> Path:
    return config.data_dir() / "reports" / billing_month.strftime("%Y-%m")


def write_report(
    con: duckdb.DuckDBPyConnection,
    billing_month: dt.date,
    out_dir: str | Path | None = None,
    *,
    settings: ReconcileSettings | None = None,
    generated_at: dt.datetime | None = None,
) -> ReportFiles:
    """Write report.html, report.xlsx and <table>.csv for the month; returns their paths.

    All of them or none (`files.replacing_all`): each is written and synced beside its target, and all
    are put in place once every one is written (a full disk half way once left a new report.html beside
    the previous run's CSVs)."""
    data = load_report_data(con, billing_month, settings=settings, generated_at=generated_at)
    folder = Path(out_dir) if out_dir else default_folder(data.billing_month)
    tables = report_tables(data)
    html, xlsx = folder / "report.html", folder / "report.xlsx"
    csvs = [folder / f"{name}.csv" for name in tables]
    with replacing_all([html, xlsx, *csvs]) as (html_tmp, xlsx_tmp, *csv_tmps):
        write_html(data, html_tmp)
        write_xlsx(data, tables, xlsx_tmp)
        for table, tmp in zip(tables.values(), csv_tmps):
            write_csv(table, tmp)
    return ReportFiles(folder=folder, html=html, xlsx=xlsx, csvs=csvs, data=data)


__all__ = ["ReportFiles", "ReportData", "default_folder", "load_report_data", "write_report"]
