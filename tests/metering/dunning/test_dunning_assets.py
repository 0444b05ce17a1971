"""The Dagster layer: dunning_state -> dunning_actions materialise with real Dagster and DuckDB."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
from dunning_helpers import DAY, NO_STRIPE_POLICY, T0, ensure_invoices_table, put_invoice, write_rules

from metering import warehouse
from pipelines.defs.webhooks.dunning_assets import (
    ACTIONS_ONCE_CHECK, DUNNING_ASSETS, NO_PENDING_CHECK, defs,
)
from pipelines.resources import StripeResource
from pipelines.resources import WAREHOUSE_POOL, ProjectPaths, WarehouseResource, default_resources


def _run(tmp_path: Path, now: str) -> dg.ExecuteInProcessResult:
    config = {"config": {"now": now}}
    return dg.materialize(
        DUNNING_ASSETS,
        resources={
            "warehouse": WarehouseResource(path=str(tmp_path / "wh.duckdb")),
            "paths": ProjectPaths(rules_dir=str(tmp_path / "rules"), data_dir=str(tmp_path / "out")),
            "stripe": StripeResource(),          # no key, no base URL: Stripe steps would wait
        },
        run_config={"ops": {"dunning_state": config, "dunning_actions": config}},
    )


def test_assets_run_the_schedule_once_each(tmp_path: Path) -> None:
    write_rules(tmp_path / "rules", NO_STRIPE_POLICY)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        ensure_invoices_table(con)
        put_invoice(con, "in_1")
    for day in (0, 14, 14):
        result = _run(tmp_path, (T0 + day * DAY).isoformat())
        assert result.success
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {ACTIONS_ONCE_CHECK: True, NO_PENDING_CHECK: True}
    with warehouse.open_warehouse(tmp_path / "wh.duckdb", read_only=True) as con:
        assert con.execute("SELECT step_name, status FROM dunning_actions ORDER BY step_index").fetchall() == [
            ("first_reminder", "done"), ("final_reminder", "done"), ("suspension", "done")]
        assert con.execute("SELECT state, step_name FROM dunning_state").fetchall() == [("in_dunning", "suspension")]
    doc = json.loads((tmp_path / "out" / "published" / "suspensions.json").read_text())
    assert [s["stripe_customer"] for s in doc["suspended"]] == ["cus_in_1"]
    assert len(list((tmp_path / "out" / "outbox").glob("*.eml"))) == 2


def test_asset_specs() -> None:
    specs = {a.key.to_user_string(): a for a in DUNNING_ASSETS}
    assert set(specs) == {"dunning_state", "dunning_actions"}
    for asset in DUNNING_ASSETS:
        assert asset.group_names_by_key[asset.key] == "dunning"
        assert asset.op.pool == WAREHOUSE_POOL
        assert "duckdb" in next(iter(asset.specs)).kinds
        assert (asset.op.description or "").startswith("One row per")
    assert dg.AssetKey("stripe_invoices") in specs["dunning_state"].asset_deps[dg.AssetKey("dunning_state")]
    # the dunning job ends with the analyst snapshot, which the publish domain defines
    from pipelines.defs.publish.definitions import defs as publish_defs

    dg.Definitions.validate_loadable(dg.Definitions.merge(
        defs, publish_defs, dg.Definitions(resources={**default_resources(), "stripe": StripeResource()})))
