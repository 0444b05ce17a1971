"""Write the report's files: report.html, report.xlsx (xlsxwriter) and one CSV per table, each to the
path it is given (`metering.reports.write_report` gives temporary ones and puts them in place together)."""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import xlsxwriter

from metering.reports.data import ReportData
from metering.reports.html import render_html
from metering.reports.tables import Cell, Table


def write_html(data: ReportData, path: Path) -> None:
    path.write_text(render_html(data), encoding="utf-8")


def write_xlsx(data: ReportData, tables: dict[str, Table], path: Path) -> None:
    """Sheets summary, lines, discrepancies, invoices, dunning (money as integer minor units).

    Byte-identical for the same data and `generated_at`: the document's created/modified dates are
    `generated_at` (not the wall clock), and the zip entries carry xlsxwriter's fixed 1980-01-01 stamp
    (in_memory: no temporary files whose mtime or local time zone could leak in).
    """
    book = xlsxwriter.Workbook(str(path), {"strings_to_numbers": False, "strings_to_formulas": False,
                                           "strings_to_urls": False, "in_memory": True})
    book.set_properties({"created": _naive_utc(data.generated_at)})
    try:
        bold = book.add_format({"bold": True, "bg_color": "#EEF2F6"})
        for name, (header, rows) in tables.items():
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


def _naive_utc(moment: dt.datetime) -> dt.datetime:
    """xlsxwriter formats the datetime as UTC without converting it; a naive one is taken as UTC already
    (as the summary's generated_at does)."""
    return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment


def _summary_value(value: object) -> object:
    """The summary's values are text (the CSV's too); whole numbers (minor units, counts) go into the
    spreadsheet as numbers, so finance can add them up (as text cells they could not)."""
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


# text a spreadsheet opening the CSV would run as a formula (OWASP "CSV injection")
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
# a number as `report_tables` writes it as text (quantities '-0.5', summary minor units '-1115'):
# left as is, so it still reads as a number
NUMBER_TEXT = re.compile(r"[+-]?\d+(\.\d+)?")


def _csv_cell(cell: Cell) -> Cell:
    """`cell` safe to open in a spreadsheet: text starting with = + - @ TAB or CR gets a leading
    apostrophe (shown as text, not run); ints, and text that is a plain decimal number, stay as they are."""
    if isinstance(cell, str) and cell.startswith(FORMULA_TRIGGERS) and not NUMBER_TEXT.fullmatch(cell):
        return "'" + cell
    return cell


def write_csv(table: Table, path: Path) -> None:
    """One report table as CSV, cells as `report_tables` gives them (ints, text).

    Formula injection: a text cell that a spreadsheet would read as a formula (first character
    = + - @ TAB or CR; a customer id like '=HYPERLINK(...)', say) is written with a leading apostrophe.
    Numbers are never changed: ints, and text that is a plain decimal number such as '-1.25' (a
    negative quantity or amount), so they still read as numbers. The spreadsheet sets
    strings_to_formulas=False instead, so it needs no escaping.
    """
    header, rows = table
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows([_csv_cell(c) for c in row] for row in rows)
