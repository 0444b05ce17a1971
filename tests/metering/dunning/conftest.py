"""Fixtures for the dunning tests: a real DuckDB warehouse under tmp_path with stripe_invoices."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest
from dunning_helpers import NO_STRIPE_POLICY, SmtpRelay, ensure_invoices_table, start_smtp_relay, write_rules

from metering import warehouse
from metering.dunning.policy import DunningPolicy, load_policy


@pytest.fixture
def wh(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    with warehouse.open_warehouse(tmp_path / "data" / "warehouse.duckdb") as con:
        ensure_invoices_table(con)
        yield con


@pytest.fixture
def no_stripe_policy(tmp_path: Path) -> DunningPolicy:
    """Reminder day 0, reminder day 7, suspension day 14: nothing that calls Stripe."""
    return load_policy(write_rules(tmp_path / "rules", NO_STRIPE_POLICY))


@pytest.fixture
def smtp_relay() -> Iterator[SmtpRelay]:
    relay, server = start_smtp_relay()
    try:
        yield relay
    finally:
        server.shutdown()
        server.server_close()
