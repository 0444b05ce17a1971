"""Resources shared by every domain: the warehouse seam and the project's paths."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb

from metering import config, warehouse

WAREHOUSE_POOL = "duckdb_writer"
"""Every asset or check that writes the warehouse runs in this pool (limit 1: one writer at a time)."""


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse, opened through `metering.warehouse` (UTC sessions, migrations applied).

    `path` empty means `$METERING_WAREHOUSE`, else `data/warehouse.duckdb`.
    """

    path: str = ""
    memory_limit: str = ""
    wait_seconds: float = 60.0

    @property
    def resolved_path(self) -> Path:
        return config.warehouse_path(self.path or None)

    @contextlib.contextmanager
    def get_connection(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        with warehouse.open_warehouse(
            self.path or None,
            read_only=read_only,
            memory_limit=self.memory_limit or None,
            wait_seconds=self.wait_seconds,
        ) as con:
            yield con


class ProjectPaths(dg.ConfigurableResource):
    """Folders and files the assets read: empty means the `metering.config` default (env overridable)."""

    rules_dir: str = ""
    raw_dir: str = ""
    customers: str = ""
    data_dir: str = ""

    @property
    def rules(self) -> Path:
        return config.rules_dir(self.rules_dir or None)

    @property
    def raw(self) -> Path:
        return config.raw_dir(self.raw_dir or None)

    @property
    def customers_file(self) -> Path:
        return config.customers_path(self.customers or None)

    @property
    def data(self) -> Path:
        return Path(self.data_dir) if self.data_dir else config.data_dir()


def default_resources() -> dict[str, object]:
    """The resources every domain's assets expect, on their embedded defaults."""
    return {"warehouse": WarehouseResource(), "paths": ProjectPaths()}



def stripe_resources(*, base_url: str, create_customers: bool = False, test_clock: str = "") -> dict[str, object]:
    """The Stripe resource (key `stripe`) pointed at one base address (the main job's local sandbox)."""
    from pipelines.defs.stripe_push.resources import StripeResource

    return {
        "stripe": StripeResource(base_url=base_url, create_customers=create_customers, test_clock=test_clock,
                                 push_rate=0.0),
    }
