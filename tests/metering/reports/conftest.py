"""Fixture: a warehouse holding one reconciled month (see recon_fixture.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from recon_fixture import MONTH, reconciled_frames

from metering import warehouse
from metering.warehouse import replace_rows


@pytest.fixture
def reconciled_warehouse(isolated_env: Path) -> Path:
    path = isolated_env / "warehouse.duckdb"
    usage, invoices = reconciled_frames()
    with warehouse.open_warehouse(path) as con:
        replace_rows(con, "usage_reconciliation", "billing_month = ?", [MONTH], usage)
        replace_rows(con, "invoice_reconciliation", "billing_month = ?", [MONTH], invoices)
    return path
