"""Dagster wiring: the landing sensor notices files, the assets land them and rebuild state."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from metering.webhooks.inbox import LandingWriter
from pipelines.defs.webhooks.assets import STATE_ASSETS
from pipelines.definitions import defs as location_defs
from pipelines.resources import StripeResource
from pipelines.resources import ProjectPaths, WarehouseResource

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "metering" / "webhooks"))
from webhook_payloads import body_of, dunning_lifecycle  # noqa: E402


def resources(tmp_path: Path) -> dict:
    return {
        "warehouse": WarehouseResource(path=str(tmp_path / "w.duckdb")),
        "paths": ProjectPaths(data_dir=str(tmp_path / "data")),
    }


def deliver(tmp_path: Path, payloads: list[dict]) -> None:
    writer = LandingWriter(tmp_path / "data" / "landing" / "stripe")
    for payload in payloads:
        writer.append(body_of(payload), {})
    writer.close()


def test_sensor_requests_a_run_only_when_landing_files_grow(tmp_path: Path):
    sensor = location_defs.resolve_sensor_def("stripe_landing_sensor")
    with dg.instance_for_test() as instance:
        ctx = dg.build_sensor_context(instance=instance, resources=resources(tmp_path))
        assert isinstance(sensor(ctx), dg.SkipReason)
        deliver(tmp_path, dunning_lifecycle()[:3])
        first = sensor.evaluate_tick(ctx)
        assert len(first.run_requests) == 1 and first.cursor
        ctx = dg.build_sensor_context(instance=instance, resources=resources(tmp_path), cursor=first.cursor)
        assert sensor.evaluate_tick(ctx).run_requests == []
        deliver(tmp_path, dunning_lifecycle()[3:])
        again = sensor.evaluate_tick(ctx)
        assert len(again.run_requests) == 1
        assert again.run_requests[0].run_key != first.run_requests[0].run_key


@pytest.mark.parametrize("cursor", ["not json", json.dumps(["x"]), json.dumps({"events.jsonl": "12"})])
def test_an_unreadable_landing_cursor_is_dropped_and_replaced(tmp_path: Path, cursor: str):
    sensor = location_defs.resolve_sensor_def("stripe_landing_sensor")
    with dg.instance_for_test() as instance:
        empty = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources(tmp_path),
                                                             cursor=cursor))
        assert empty.run_requests == [] and json.loads(empty.cursor) == {}  # replaced even with nothing to do
        deliver(tmp_path, dunning_lifecycle()[:3])
        landed = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources(tmp_path),
                                                              cursor=cursor))
        assert len(landed.run_requests) == 1
        assert all(type(size) is int and size > 0 for size in json.loads(landed.cursor).values())


def test_assets_land_events_and_build_state(tmp_path: Path):
    deliver(tmp_path, dunning_lifecycle() + dunning_lifecycle()[:2])  # two duplicates
    res = {**resources(tmp_path), "stripe": StripeResource()}
    # An explicit instance: an implicit ephemeral one can be collected mid-run when the whole suite
    # shares a process ("Attempted to resolve undefined DagsterInstance weakref").
    with dg.instance_for_test() as instance:
        _land_and_check(res, instance, tmp_path)


def _land_and_check(res: dict, instance: dg.DagsterInstance, tmp_path: Path) -> None:
    result = dg.materialize(STATE_ASSETS, resources=res, instance=instance)
    assert result.success
    events_md = result.asset_materializations_for_node("stripe_webhook_events")[0].metadata
    assert events_md["events"].value == 9
    assert events_md["landing/duplicate_receipts"].value == 2
    assert events_md["events_from_repair"].value == 0
    inv_md = result.asset_materializations_for_node("stripe_invoices")[0].metadata
    assert (inv_md["invoices"].value, inv_md["invoice_lines"].value) == (1, 1)
    assert result.asset_materializations_for_node("stripe_payment_attempts")[0].metadata["payment_attempts"].value == 3
    # running again lands nothing new and gives the same state
    assert dg.materialize(STATE_ASSETS, resources=res, instance=instance).success
    con = duckdb.connect(str(tmp_path / "w.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT status, amount_paid FROM stripe_invoices").fetchall() == [("paid", 1235)]
        assert con.execute("SELECT sum(receipt_count) FROM stripe_webhook_events").fetchone()[0] == 11
    finally:
        con.close()


def test_jobs_load_in_the_code_location():
    dg.Definitions.validate_loadable(location_defs)
    assert location_defs.resolve_job_def("stripe_repair_job")
    assert location_defs.resolve_job_def("stripe_state_job")
    keys = {k.to_user_string() for k in location_defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"stripe_webhook_events", "stripe_invoices", "stripe_subscriptions", "stripe_payment_attempts"} <= keys
