"""The finance report for a billing month: HTML (self-contained, opens offline), XLSX and CSV.

Entry point: `write_report(con, billing_month, out_dir=None)`; default folder
`data/reports/<YYYY-MM>/`. Reads `usage_reconciliation`, `invoice_reconciliation` (run
`metering.reconcile.run.reconcile_period` first) and `dunning_state`.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import duckdb

from metering import config
from metering.reconcile.settings import ReconcileSettings
from metering.reports.data import ReportData, load_report_data
from metering.reports.writers import write_csvs, write_html, write_xlsx


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

    All of them or none: they are written into a staging folder inside the report folder, then moved
    in (a full disk half way once left a new report.html beside the previous run's CSVs)."""
    data = load_report_data(con, billing_month, settings=settings, generated_at=generated_at)
    folder = Path(out_dir) if out_dir else default_folder(data.billing_month)
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f".staging.{os.getpid()}"
    staging.mkdir(exist_ok=True)
    try:
        written = [write_html(data, staging / "report.html"), write_xlsx(data, staging / "report.xlsx"),
                   *write_csvs(data, staging)]
        for path in written:   # renames within one folder: they need no space
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    html, xlsx, *csvs = [folder / path.name for path in written]
    return ReportFiles(folder=folder, html=html, xlsx=xlsx, csvs=csvs, data=data)


__all__ = ["ReportFiles", "ReportData", "default_folder", "load_report_data", "write_report"]
