"""Dagster wiring: the landing sensor notices files, the assets land them and rebuild state."""

from __future__ import annotations

import json
import logging
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
        assert empty.run_requests == []  # replaced even with nothing to do
        assert json.loads(empty.cursor) == {"version": 2, "sizes": {}, "run_key": "", "attempt": 0}
        deliver(tmp_path, dunning_lifecycle()[:3])
        landed = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, resources=resources(tmp_path),
                                                              cursor=cursor))
        assert len(landed.run_requests) == 1
        assert all(type(size) is int and size > 0 for size in json.loads(landed.cursor)["sizes"].values())


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, tmp_path: Path, cursor: str | None,
          errors: _Errors | None = None) -> dg.SensorExecutionData:
    context = dg.build_sensor_context(instance=instance, resources=resources(tmp_path), cursor=cursor)
    if errors is not None:
        context.log.addHandler(errors)
    return sensor.evaluate_tick(context)


def _fail_landing_run(instance: dg.DagsterInstance, tmp_path: Path, run_key: str) -> None:
    """A landing run under `run_key`, as the daemon launches it, that fails: its warehouse is no DuckDB file."""
    broken = tmp_path / "broken.duckdb"
    broken.write_bytes(b"not duckdb" * 100)
    result = dg.materialize(STATE_ASSETS, instance=instance, raise_on_error=False,
                            resources={**resources(tmp_path), "warehouse": WarehouseResource(path=str(broken)),
                                       "stripe": StripeResource()},
                            tags={"dagster/run_key": run_key, "dagster/sensor_name": "stripe_landing_sensor"})
    assert not result.success


def test_a_failed_landing_run_is_requested_again_until_the_sensor_gives_up(tmp_path: Path):
    sensor = location_defs.resolve_sensor_def("stripe_landing_sensor")
    with dg.instance_for_test() as instance:
        deliver(tmp_path, dunning_lifecycle()[:3])
        first = _tick(sensor, instance, tmp_path, None)
        [request] = first.run_requests
        base = request.run_key
        assert _tick(sensor, instance, tmp_path, first.cursor).run_requests == []  # not launched yet: wait
        cursor = first.cursor
        for attempt in (2, 3):
            _fail_landing_run(instance, tmp_path, run_key=request.run_key)
            tick = _tick(sensor, instance, tmp_path, cursor)
            [request] = tick.run_requests
            assert request.run_key == f"{base}-attempt{attempt}"
            assert request.tags["stripe/landing_attempt"] == str(attempt)
            assert json.loads(tick.cursor)["run_key"] == base and json.loads(tick.cursor)["attempt"] == attempt
            cursor = tick.cursor
        _fail_landing_run(instance, tmp_path, run_key=request.run_key)
        errors = _Errors()
        gave_up = _tick(sensor, instance, tmp_path, cursor, errors)
        assert gave_up.run_requests == [] and gave_up.skip_message == "no new landed webhooks"
        assert (json.loads(gave_up.cursor)["run_key"], json.loads(gave_up.cursor)["attempt"]) == ("", 0)
        [error] = errors.messages
        assert error.startswith("giving up on landing after 3 runs") and f"(run key {base}-attempt3)" in error
        assert _tick(sensor, instance, tmp_path, gave_up.cursor).run_requests == []
        deliver(tmp_path, dunning_lifecycle()[3:])  # a new webhook requests landing again
        assert len(_tick(sensor, instance, tmp_path, gave_up.cursor).run_requests) == 1


def test_growth_while_the_landing_run_is_in_flight_waits_for_it(tmp_path: Path):
    """A webhook between ticks requested another landing run while the first was still queued: 3 ticks,
    3 runs in flight, each rebuilding the snapshot behind the one writer slot (audit). The sensor waits
    for the run in flight, then asks once for what came meanwhile."""
    sensor = location_defs.resolve_sensor_def("stripe_landing_sensor")
    with dg.instance_for_test() as instance:
        deliver(tmp_path, dunning_lifecycle()[:3])
        first = _tick(sensor, instance, tmp_path, None)
        [request] = first.run_requests
        queued = instance.create_run_for_job(job_def=location_defs.resolve_job_def("stripe_state_job"),
                                             tags={"dagster/run_key": request.run_key,
                                                   "dagster/sensor_name": "stripe_landing_sensor"})
        deliver(tmp_path, dunning_lifecycle()[3:5])
        waiting = _tick(sensor, instance, tmp_path, first.cursor)
        assert waiting.run_requests == [] and f"waiting for landing run {queued.run_id}" in waiting.skip_message
        deliver(tmp_path, dunning_lifecycle()[5:])
        assert _tick(sensor, instance, tmp_path, first.cursor).run_requests == []
        instance.report_run_canceled(queued)
        [after] = _tick(sensor, instance, tmp_path, first.cursor).run_requests
        assert after.run_key != request.run_key


def test_a_succeeded_landing_run_is_not_requested_again(tmp_path: Path):
    sensor = location_defs.resolve_sensor_def("stripe_landing_sensor")
    with dg.instance_for_test() as instance:
        deliver(tmp_path, dunning_lifecycle()[:3])
        first = _tick(sensor, instance, tmp_path, None)
        assert dg.materialize(STATE_ASSETS, instance=instance,
                              resources={**resources(tmp_path), "stripe": StripeResource()},
                              tags={"dagster/run_key": first.run_requests[0].run_key,
                                    "dagster/sensor_name": "stripe_landing_sensor"}).success
        done = _tick(sensor, instance, tmp_path, first.cursor)
        assert done.run_requests == [] and json.loads(done.cursor)["run_key"] == ""


def test_a_cursor_of_bare_sizes_from_before_the_follow_up_still_works(tmp_path: Path):
    sensor = location_defs.resolve_sensor_def("stripe_landing_sensor")
    with dg.instance_for_test() as instance:
        deliver(tmp_path, dunning_lifecycle()[:3])
        sizes = json.loads(_tick(sensor, instance, tmp_path, None).cursor)["sizes"]
        unchanged = _tick(sensor, instance, tmp_path, json.dumps(sizes))
        assert unchanged.run_requests == []
        assert json.loads(unchanged.cursor) == {"version": 2, "sizes": sizes, "run_key": "", "attempt": 0}
        deliver(tmp_path, dunning_lifecycle()[3:])
        assert len(_tick(sensor, instance, tmp_path, json.dumps(sizes)).run_requests) == 1


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
