"""Resources shared by every domain: the warehouse seam, the project's paths, and Stripe."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import stripe

from metering import config, warehouse
from metering.errors import BadInputError
from metering.stripe.client import StripeSettings, checked_retries, checked_timeout, make_client, settings_from_env
from metering.stripe.push import PushConfig, push_config_from_env
from metering.stripe.windows import WINDOW_KINDS

WAREHOUSE_POOL = "duckdb_writer"
"""Every asset or check that writes the warehouse runs in this pool (limit 1: one writer at a time)."""


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse, opened through `metering.warehouse` (UTC sessions, migrations applied).

    `path` empty means `$METERING_WAREHOUSE`, else `data/warehouse.duckdb`; `snapshot` (the analysts'
    read-only copy) empty means `$METERING_SNAPSHOT`, else `data/snapshot.duckdb`, as for `metering publish`.
    """

    path: str = ""
    snapshot: str = ""
    memory_limit: str = ""
    wait_seconds: float = 60.0

    @property
    def snapshot_path(self) -> Path:
        return config.snapshot_path(self.snapshot or None)

    def publish(self, con: duckdb.DuckDBPyConnection) -> Path:
        """Copy the warehouse through `con` (a connection from `get_connection`, so the writer itself
        copies: nothing else could open the file meanwhile) into the snapshot, swapped in atomically."""
        return warehouse.publish(self.path or None, self.snapshot_path, con=con)

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


SANDBOX_PLACEHOLDER_KEY = "sk_test_local_sandbox"
"""Used only when no key is configured and `base_url` points at the local sandbox (which accepts
any test key): not a secret."""


class StripeResource(dg.ConfigurableResource):
    """Stripe through the official SDK. The key comes only from `STRIPE_API_KEY` (never from run
    config, so it never shows in Dagster's UI or event log).

    - `base_url`: API base (e.g. the local sandbox the main job starts); empty = `STRIPE_API_BASE`,
      else Stripe. With no key configured, a `base_url` is required and a placeholder test key is used.
    - `max_network_retries`, `connect_timeout`, `read_timeout`: SDK settings for catalog calls
      (pushes retry themselves, see metering.stripe.retry).
    - `push_rate` (calls/s, 0 = none), `push_concurrency`, `meter_window` (day | hour): push settings;
      a negative rate, a concurrency of 0 or less and an empty window = the `STRIPE_PUSH_*` /
      `STRIPE_METER_WINDOW` environment defaults.
    - `create_customers`, `test_clock`: sandbox mode for the catalog sync (new customers join the clock).
    - `advance_test_clock`: before pushing a day, advance `test_clock` to that day's end (a no-op when it
      is already later). Materialise days in order: a day whose period invoice was finalized meanwhile
      is marked late (see metering.stripe.clock).
    """

    base_url: str = ""
    max_network_retries: int = 2
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    push_rate: float = -1.0
    push_concurrency: int = 0
    meter_window: str = ""
    create_customers: bool = False
    test_clock: str = ""
    advance_test_clock: bool = False

    def settings(self) -> StripeSettings:
        found = settings_from_env(required=False)
        if found is None:
            if not self.base_url:
                raise BadInputError(
                    "STRIPE_API_KEY is not set and StripeResource.base_url is empty: set the key, "
                    "or point base_url at the local sandbox (the main job starts one)")
            found = StripeSettings(api_key=SANDBOX_PLACEHOLDER_KEY)
        settings = StripeSettings(
            api_key=found.api_key, api_base=found.api_base, meter_events_base=found.meter_events_base,
            max_network_retries=checked_retries("StripeResource.max_network_retries", self.max_network_retries),
            connect_timeout=checked_timeout("StripeResource.connect_timeout", self.connect_timeout),
            read_timeout=checked_timeout("StripeResource.read_timeout", self.read_timeout))
        return settings.with_base(self.base_url) if self.base_url else settings

    def get_client(self) -> stripe.StripeClient:
        return make_client(self.settings())

    def push_config(self) -> PushConfig:
        # checked here, naming the resource's field: the push's own checks name its CLI option and
        # variable, which a run configured in Dagster never set
        if self.meter_window and self.meter_window not in WINDOW_KINDS:
            raise BadInputError(f"StripeResource.meter_window: {self.meter_window!r} is not one of "
                                f"{', '.join(WINDOW_KINDS)} (empty = $STRIPE_METER_WINDOW, else day)")
        if not math.isfinite(self.push_rate):   # NaN compared as not >= 0 and fell back to the environment's
            raise BadInputError(f"StripeResource.push_rate: {self.push_rate!r} is not a number of calls per second "
                                f"(0 = no limit, negative = $STRIPE_PUSH_RATE)")
        return push_config_from_env(
            rate=self.push_rate if self.push_rate >= 0 else None,
            concurrency=self.push_concurrency if self.push_concurrency > 0 else None,   # as documented above
            window_kind=self.meter_window or None,
        )

    @property
    def window_kind(self) -> str:
        return self.push_config().window_kind


def default_resources() -> dict[str, object]:
    """The resources every domain's assets expect, on their embedded defaults."""
    return {"warehouse": WarehouseResource(), "paths": ProjectPaths(), "stripe": StripeResource()}



def stripe_resources(*, base_url: str, create_customers: bool = False, test_clock: str = "") -> dict[str, object]:
    """The Stripe resource (key `stripe`) pointed at one base address (the main job's local sandbox)."""
    return {
        "stripe": StripeResource(base_url=base_url, create_customers=create_customers, test_clock=test_clock,
                                 push_rate=0.0),
    }
