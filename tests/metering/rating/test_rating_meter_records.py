"""The meters that priced rated lines are recorded (`rated_meters`), also on a warehouse rated before
migration 012, whose table came empty: otherwise an edited meter re-priced billed periods unchecked."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from metering import warehouse
from metering.errors import BadInputError
from metering.rating import service
from metering.rules.plans import load_rules
from tests.metering.rating.conftest import PROJECT_ROOT, STORAGE, bill_storage_october

OCT = dt.date(2026, 10, 1)
CLOSING = dt.datetime(2026, 11, 2, tzinfo=dt.timezone.utc)


def test_a_rating_that_changes_nothing_records_the_meters_of_a_warehouse_rated_before_migration_012(tmp_path):
    """starter stores 100 GB every day of October: its peak, 100 x 0.25 = 25.00, billed. Rated before
    migration 012, the warehouse has no meter records; the next rating changes no line and records them
    as defined now, so storage_gb edited from max to sum is refused (it re-priced the closed month
    as 31 x 100 GB = 775.00)."""
    rules = load_rules(PROJECT_ROOT / "rating_rules")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        bill_storage_october(con, rules, tmp_path, 1, CLOSING)
        con.execute("DELETE FROM rated_meters")   # as rated before migration 012
        assert service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules,
                                   CLOSING + dt.timedelta(days=3)) == 0
        assert con.execute("SELECT meter, definition->>'aggregation' FROM rated_meters ORDER BY meter").fetchall() == [
            ("active_users", "unique_count"), ("api_calls", "count"), ("seats", "last"), ("storage_gb", "max"),
            ("tokens", "sum")]
        hashes = service.rated_hashes(con)
        assert con.execute(STORAGE).fetchall() == [(2500,)]
    root = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rating_rules", root)
    meters = root / "meters.yaml"
    meters.write_text(meters.read_text().replace("storage_gb:   {aggregation: max,",
                                                 "storage_gb:   {aggregation: sum,"))
    with pytest.raises(BadInputError, match=rf"{meters}: meters\.storage_gb: has already priced rated usage"):
        load_rules(root, rated_hashes=hashes)
