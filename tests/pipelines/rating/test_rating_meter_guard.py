"""The rating assets refuse a meter edit that would re-price rated usage, aggregation included: an
edited meter must not rebuild the hours a later rating prices. Amounts by hand."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import dagster as dg
import pytest

from metering import warehouse
from metering.errors import BadInputError
from metering.rules.plans import load_rules
from pipelines.defs.rating.assets import rated_usage, usage_aggregates
from pipelines.resources import ProjectPaths, WarehouseResource
from tests.metering.rating.conftest import PROJECT_ROOT, STORAGE, bill_storage_october
from tests.pipelines.manifest import record_manifest

CLOSING = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)
SUM = ("storage_gb:   {aggregation: max,", "storage_gb:   {aggregation: sum,")


@pytest.fixture
def billed(tmp_path: Path) -> tuple[Path, Path, dict]:
    """A warehouse whose October is billed: starter stores 100 GB, sampled at 12:00 and 12:30 every day,
    a peak of 100 x 0.25 = 25.00; plus the rules folder (a copy) and the assets' resources."""
    root = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rating_rules", root)
    db = tmp_path / "wh.duckdb"
    with warehouse.open_warehouse(db) as con:
        customers = bill_storage_october(con, load_rules(root), tmp_path, 2, CLOSING)
        record_manifest(con)  # as ingestion would: usage_aggregates refuses rows of no ingested file
        assert con.execute(STORAGE).fetchall() == [(2500,)]
    resources = {"warehouse": WarehouseResource(path=str(db)),
                 "paths": ProjectPaths(rules_dir=str(root), customers=str(customers))}
    return db, root, resources


def _rows(db: Path, sql: str) -> list[tuple]:
    with warehouse.open_warehouse(db, read_only=True) as con:
        return con.execute(sql).fetchall()


def test_aggregation_refuses_a_meter_edit_that_rating_refuses(billed):
    """storage_gb edited from max to sum while a late API call arrives (Oct 20): aggregating that day is
    refused, naming the meter and its file, and its hourly rows stay the maxima (100, not 200). Once
    the edit is reverted, October stays 25.00 (it became 50.00 as `late_usage`: the day's hours, rebuilt
    as sums, were priced by the reverted max)."""
    db, root, resources = billed
    meters = root / "meters.yaml"
    original = meters.read_text()
    meters.write_text(original.replace(*SUM))
    with warehouse.open_warehouse(db) as con:
        con.execute("INSERT INTO usage_events VALUES ('late', 'c1', 'api_calls', TIMESTAMPTZ '2026-10-20 09:00:00+00', "
                    "DATE '2026-10-20', NULL, '{\"region\":\"us\"}', '{}', 1, 1)")
        record_manifest(con)
    with dg.instance_for_test() as instance:
        with pytest.raises(BadInputError, match=rf"{meters}: meters\.storage_gb: has already priced rated usage"):
            dg.materialize([usage_aggregates], partition_key="2026-10-20", resources=resources, instance=instance)
        assert _rows(db, "SELECT meter, quantity FROM usage_aggregates WHERE event_date = DATE '2026-10-20' "
                         "ORDER BY meter") == [("storage_gb", 100)]
        meters.write_text(original)
        assert dg.materialize([usage_aggregates], partition_key="2026-10-20", resources=resources,
                              instance=instance).success
        assert dg.materialize([rated_usage], partition_key="2026-10-01", resources=resources,
                              instance=instance).success
    assert _rows(db, STORAGE) == [(2500,)]
    assert _rows(db, "SELECT count(*) FROM rating_adjustments WHERE charge = 'storage'") == [(0,)]


def test_aggregating_a_warehouse_rated_before_migration_012_records_its_meters_first(billed):
    """Rated before migration 012, the warehouse has lines but no meter records. The next aggregation
    records them as defined now (the best record there is), so a later edit of storage_gb to sum is
    refused, and October stays 25.00."""
    db, root, resources = billed
    with warehouse.open_warehouse(db) as con:
        con.execute("DELETE FROM rated_meters")
    with dg.instance_for_test() as instance:
        assert dg.materialize([usage_aggregates], partition_key="2026-10-20", resources=resources,
                              instance=instance).success
        assert _rows(db, "SELECT definition->>'aggregation' FROM rated_meters WHERE meter = 'storage_gb'") == [("max",)]
        meters = root / "meters.yaml"
        meters.write_text(meters.read_text().replace(*SUM))
        with pytest.raises(BadInputError, match=r"meters\.storage_gb: has already priced rated usage"):
            dg.materialize([rated_usage], partition_key="2026-10-01", resources=resources, instance=instance)
    assert _rows(db, STORAGE) == [(2500,)]
