"""Write the report's files: report.html, report.xlsx (xlsxwriter) and one CSV per table."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import xlsxwriter

from metering.reports.data import ReportData
from metering.reports.html import render_html
from metering.reports.tables import report_tables


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_html(data: ReportData, path: Path) -> Path:
    _atomic_write_text(path, render_html(data))
    return path


def write_xlsx(data: ReportData, path: Path) -> Path:
    """Sheets summary, lines, discrepancies, invoices, dunning (money as integer minor units)."""
    tmp = path.with_name(f".{path.name}.tmp")
    book = xlsxwriter.Workbook(str(tmp), {"strings_to_numbers": False, "strings_to_formulas": False,
                                          "strings_to_urls": False})
    try:
        bold = book.add_format({"bold": True, "bg_color": "#EEF2F6"})
        for name, (header, rows) in report_tables(data).items():
            sheet = book.add_worksheet(name)
            sheet.write_row(0, 0, header, bold)
            for i, row in enumerate(rows, start=1):
                sheet.write_row(i, 0, [_summary_value(v) for v in row] if name == "summary" else row)
            sheet.freeze_panes(1, 0)
            for col, title in enumerate(header):
                width = max([len(str(title))] + [len(str(r[col])) for r in rows[:200]])
                sheet.set_column(col, col, min(max(width + 2, 8), 60))
    finally:
        book.close()
    os.replace(tmp, path)
    return path


def _summary_value(value: object) -> object:
    """The summary's values are text (the CSV's too); whole numbers (minor units, counts) go into the
    spreadsheet as numbers, so finance can add them up (as text cells they could not)."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


def write_csvs(data: ReportData, folder: Path) -> list[Path]:
    paths = []
    for name, (header, rows) in report_tables(data).items():
        path = folder / f"{name}.csv"
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(rows)
        os.replace(tmp, path)
        paths.append(path)
    return paths
