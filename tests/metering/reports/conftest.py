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
        # cus_c's invoice failed and is in dunning (step 1); cus_b failed once and then paid
        for inv, cus, state, due, paid, remaining, step in (("in_cus_c", "cus_c", "in_dunning", 280, 0, 280, "reminder"),
                                                            ("in_cus_b", "cus_b", "recovered", 375, 375, 0, None)):
            con.execute(
                """INSERT INTO dunning_state (invoice_id, customer_id, policy, currency, amount_due, amount_paid,
                   amount_remaining, invoice_status, attempt_count, first_failed_at, state, step_index, step_name,
                   reason, evaluated_at, policy_hash)
                   VALUES (?, ?, 'default', 'usd', ?, ?, ?, 'open', 1, TIMESTAMPTZ '2026-11-01 02:00:00+00', ?, ?, ?,
                           'r', TIMESTAMPTZ '2026-11-02 09:30:00+00', 'h')""",
                [inv, cus, due, paid, remaining, state, 0 if step else None, step])
    return path
