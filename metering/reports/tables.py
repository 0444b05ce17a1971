"""The report's tables as plain rows of cells, shared by the spreadsheet and the CSV writers.

Cells are `int` (counts and integer minor units: exact), or `str` (quantities as exact decimal text,
dates and timestamps in ISO form, UTC). No floats.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import polars as pl

from metering.reports.data import ReportData
from metering.reports.money import fmt_quantity

Cell = int | str
Table = tuple[list[str], list[list[Cell]]]
"""A report table: its header and its rows."""


def _cell(value: object) -> Cell:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return value
    if isinstance(value, Decimal):
        return fmt_quantity(value)
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def cell_text(value: object) -> str:
    """`value` as the CSV and the spreadsheet write it, as text: what the HTML's table cells show (a
    timestamp in UTC, `2026-10-16T01:00:00Z`, whatever the session's TimeZone it was read in)."""
    return str(_cell(value))


def frame_rows(frame: pl.DataFrame) -> Table:
    return list(frame.columns), [[_cell(v) for v in row] for row in frame.iter_rows()]


def report_tables(data: ReportData) -> dict[str, Table]:
    """sheet/CSV name -> (header, rows), in report order."""
    summary = (["metric", "currency", "value"], [list(r) for r in data.summary_rows()])
    from metering.dunning.summary import SUMMARY_SCHEMA

    dunning = frame_rows(data.dunning_finance) if data.dunning_finance.width else (list(SUMMARY_SCHEMA), [])
    queue = frame_rows(data.dunning) if data.dunning.width else (["invoice_id", "state"], [])
    return {
        "summary": summary,
        "lines": frame_rows(data.lines),
        "discrepancies": frame_rows(data.discrepancies),
        "invoices": frame_rows(data.invoices),
        "dunning": dunning,
        "dunning_invoices": queue,
    }
