"""The Dagster layer: stripe_catalog and stripe_usage_pushes materialised with real Dagster against
the local sandbox; the push settles, Stripe holds our totals, and the key is nowhere in the event log."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

import dagster as dg
import polars as pl
import pytest

from metering import warehouse
from metering.stripe_sandbox.testing import running_sandbox
from pipelines.defs.rating.assets import customer_plans, usage_aggregates
from pipelines.defs.stripe_push.assets import stripe_catalog, stripe_invoice_items, stripe_usage_pushes
from pipelines.resources import StripeResource
from pipelines.resources import ProjectPaths, WarehouseResource
from tests.pipelines.manifest import record_manifest
from tests.pipelines.ticks import schedule_tick, yesterday_and_today

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "metering" / "stripe"))
from push_world import OCT1, SEP1, customer_on_clock, rate_by_hand  # noqa: E402  (the push tests' helpers)

CANARY = "sk_test_DAGSTERc4n4ry1111plugh"
CSV = """customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior
acme,Acme,billing@acme.test,usd,,starter,2026-01-01,succeeds
"""


def _events(day: dt.date) -> pl.DataFrame:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc)
    rows = []
    for i, (meter, value, props) in enumerate([
        ("api_calls", None, {"region": "us"}), ("api_calls", None, {"region": "eu"}),
        ("tokens", Decimal("120.25"), {"model": "small"}), ("tokens", Decimal("79.75"), {"model": "large"}),
    ]):
        rows.append({"event_id": f"e{i}", "customer_id": "acme", "meter": meter,
                     "event_time": start + dt.timedelta(hours=i + 1), "event_date": day, "value": value,
                     "properties": json.dumps(props), "extra": "{}",
                     "file_id": 1, "source_line": i + 1})
    return pl.DataFrame(rows, schema_overrides={"value": pl.Decimal(38, 12)})


def _resources(tmp_path: Path, rules_dir: Path, base_url: str, **stripe: Any) -> dict[str, Any]:
    """The assets' resources: a warehouse and the customer list in `tmp_path`, the sandbox at `base_url`."""
    return {
        "warehouse": WarehouseResource(path=str(tmp_path / "wh.duckdb")),
        "paths": ProjectPaths(rules_dir=str(rules_dir), customers=str(tmp_path / "customers.csv")),
        "stripe": StripeResource(base_url=base_url, create_customers=True, push_rate=0, **stripe),
    }


@pytest.mark.parametrize("with_key", [False, True], ids=["no-key-sandbox-base-url", "canary-key"])
def test_catalog_then_daily_push(tmp_path: Path, rules_dir: Path, monkeypatch: pytest.MonkeyPatch, with_key: bool) -> None:
    db = tmp_path / "wh.duckdb"
    (tmp_path / "customers.csv").write_text(CSV)
    day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)).date()
    if with_key:
        monkeypatch.setenv("STRIPE_API_KEY", CANARY)
    with running_sandbox(api_key=CANARY if with_key else None) as sb, dg.instance_for_test() as instance:
        resources = _resources(tmp_path, rules_dir, sb.base_url)
        first = dg.materialize([customer_plans, stripe_catalog], resources=resources, instance=instance)
        assert first.success
        catalog_meta = first.asset_materializations_for_node("stripe_catalog")[0].metadata
        assert catalog_meta["meters"].value == 5 and catalog_meta["customers"].value == 1
        with warehouse.open_warehouse(db) as con:
            warehouse.insert_frame(con, "usage_events", _events(day))
            record_manifest(con)  # as ingestion would (usage_aggregates checks it)
        pushed = dg.materialize([usage_aggregates, stripe_usage_pushes], resources=resources, instance=instance,
                                partition_key=day.isoformat(),
                                selection=[usage_aggregates, stripe_usage_pushes])
        assert pushed.success
        meta = pushed.asset_materializations_for_node("stripe_usage_pushes")[0].metadata
        assert (meta["acknowledged"].value, meta["calls"].value, meta["raw_events_per_call"].value) == (2, 2, 2.0)
        checks = pushed.get_asset_check_evaluations()
        assert [c.passed for c in checks] == [True]
        again = dg.materialize([stripe_usage_pushes], resources=resources, instance=instance,
                               partition_key=day.isoformat())
        assert again.asset_materializations_for_node("stripe_usage_pushes")[0].metadata["calls"].value == 0
        with warehouse.open_warehouse(db) as con:   # usage of a customer not in the list: the rating names it
            warehouse.insert_frame(con, "usage_events", _events(day).with_columns(
                customer_id=pl.lit("stranger"), event_id=pl.col("event_id") + "-s"))
            record_manifest(con)
        unlisted = dg.materialize([usage_aggregates, stripe_usage_pushes], resources=resources, instance=instance,
                                  partition_key=day.isoformat())
        [check] = unlisted.get_asset_check_evaluations()
        assert check.passed
        assert unlisted.asset_materializations_for_node("stripe_usage_pushes")[0].metadata["unlisted"].value == 2
        with warehouse.open_warehouse(db) as con:   # a listed customer the catalog has not synced: not billed
            con.execute("CREATE TABLE map_saved AS SELECT * FROM stripe_customer_map")
            con.execute("DELETE FROM stripe_customer_map")
            warehouse.insert_frame(con, "usage_events", _events(day).with_columns(event_id=pl.col("event_id") + "-a"))
            record_manifest(con)
        unsynced = dg.materialize([usage_aggregates, stripe_usage_pushes], resources=resources, instance=instance,
                                  partition_key=day.isoformat())
        [check] = unsynced.get_asset_check_evaluations()
        assert not check.passed and check.metadata["unmapped"].value == 2  # api_calls and tokens
        with warehouse.open_warehouse(db) as con:
            con.execute("INSERT INTO stripe_customer_map SELECT * FROM map_saved")

        client = sb.client()
        with warehouse.open_warehouse(db, read_only=True) as con:
            meters = dict(con.execute("SELECT our_key, stripe_id FROM stripe_objects WHERE kind = 'meter'").fetchall())
            cus = con.execute("SELECT stripe_customer_id FROM stripe_customer_map").fetchone()[0]
        start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp())
        for meter, value in (("api_calls", 2), ("tokens", 200)):
            summaries = client.v1.billing.meters.event_summaries.list(
                meters[meter], {"customer": cus, "start_time": start, "end_time": start + 86400})
            assert sum(Decimal(str(s.aggregated_value)) for s in summaries.data) == value
        if with_key:
            logs = []
            for run in instance.get_runs():
                logs += [str(e) for e in instance.all_logs(run.run_id)]
            assert logs and not any("c4n4ry1111" in line for line in logs)


def test_push_on_a_test_clock_advances_it_to_the_day_end(tmp_path: Path, rules_dir: Path) -> None:
    db = tmp_path / "wh.duckdb"
    (tmp_path / "customers.csv").write_text(CSV)
    day = dt.date(2026, 10, 5)
    with running_sandbox() as sb, dg.instance_for_test() as instance:
        clock = sb.client().v1.test_helpers.test_clocks.create(
            {"frozen_time": int(dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc).timestamp())})
        resources = _resources(tmp_path, rules_dir, sb.base_url, test_clock=clock.id, advance_test_clock=True)
        assert dg.materialize([customer_plans, stripe_catalog], resources=resources, instance=instance).success
        with warehouse.open_warehouse(db) as con:
            warehouse.insert_frame(con, "usage_events", _events(day))
            record_manifest(con)  # as ingestion would (usage_aggregates checks it)
        pushed = dg.materialize([usage_aggregates, stripe_usage_pushes], resources=resources, instance=instance,
                                partition_key=day.isoformat())
        meta = pushed.asset_materializations_for_node("stripe_usage_pushes")[0].metadata
        assert (meta["acknowledged"].value, meta["not_yet_due"].value) == (2, 0)
        frozen = sb.client().v1.test_helpers.test_clocks.retrieve(clock.id).frozen_time
        assert frozen == int(dt.datetime(2026, 10, 6, tzinfo=dt.timezone.utc).timestamp())


def test_invoice_items_asset_bills_a_closed_period_and_checks_it_settled(tmp_path: Path, rules_dir: Path) -> None:
    """stripe_invoice_items through real Dagster: September's closed minimum (rated lines written by
    hand: 4000) becomes one item on the period's draft invoice; the check passes; a second run calls
    nothing; a customer missing from Stripe makes the check fail (warn) and says so."""
    csv = CSV.replace("usd,,starter", "usd,,pro")
    with customer_on_clock(tmp_path, rules_dir, csv, start=SEP1) as (sb, con, client, clock, rules, report), \
            dg.instance_for_test() as instance:
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate_by_hand(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        con.close()
        resources = {"warehouse": WarehouseResource(path=str(tmp_path / "wh.duckdb")),
                     "stripe": StripeResource(base_url=sb.base_url, push_rate=0)}

        def run() -> dg.ExecuteInProcessResult:
            return dg.materialize([stripe_invoice_items], resources=resources, instance=instance,
                                  partition_key="2026-09-01")

        first = run()
        meta = first.asset_materializations_for_node("stripe_invoice_items")[0].metadata
        assert (meta["acknowledged"].value, meta["on_draft_invoice"].value) == (1, 1)
        assert meta["billed_minor"].value == {"usd": 4000}
        [check] = first.get_asset_check_evaluations()
        assert check.passed
        assert [i.amount for i in client.v1.invoice_items.list(
            {"customer": report.customers[0]["stripe_customer_id"]}).data] == [4000]
        assert run().asset_materializations_for_node("stripe_invoice_items")[0].metadata["calls"].value == 0

        with warehouse.open_warehouse(tmp_path / "wh.duckdb") as again:
            rate_by_hand(again, {"minimum spend": 2500}, rated_at=OCT1 + dt.timedelta(minutes=10), customer="initech")
        [check] = run().get_asset_check_evaluations()
        assert not check.passed and check.metadata["unmapped"].value == 1


@pytest.mark.parametrize("field, value, says", [
    ("read_timeout", float("nan"), "StripeResource.read_timeout: must be > 0 and at most 3600 seconds, got nan"),
    ("connect_timeout", float("inf"), "StripeResource.connect_timeout: must be > 0 and at most 3600 seconds, got inf"),
    ("max_network_retries", 10_000, "StripeResource.max_network_retries: must be 0 to 20, got 10000"),
])
def test_the_stripe_resource_holds_its_settings_to_the_clients_bounds(field, value, says):
    """The environment's timeouts and retries were bounded; the resource's own fields reached the SDK as given."""
    from metering.errors import BadInputError

    with pytest.raises(BadInputError, match=re.escape(says)):
        StripeResource(base_url="http://127.0.0.1:9", **{field: value}).settings()


def test_a_range_run_of_usage_pushes_reports_each_day_its_own_push(tmp_path: Path, rules_dir: Path) -> None:
    """A single-run backfill pushes the range once (a push per day made the main job 2.4 times slower)
    and materializes each partition with its own windows, from the ledger, beside the range's calls."""
    db = tmp_path / "wh.duckdb"
    (tmp_path / "customers.csv").write_text(CSV)
    first = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)).date()
    second = first + dt.timedelta(days=1)
    with running_sandbox() as sb, dg.instance_for_test() as instance:
        resources = _resources(tmp_path, rules_dir, sb.base_url)
        assert dg.materialize([customer_plans, stripe_catalog], resources=resources, instance=instance).success
        only_api_calls = _events(second).filter(pl.col("meter") == "api_calls").with_columns(
            ("d2-" + pl.col("event_id")).alias("event_id"))
        with warehouse.open_warehouse(db) as con:
            warehouse.insert_frame(con, "usage_events", pl.concat([_events(first), only_api_calls]))
            record_manifest(con)  # as ingestion would (usage_aggregates checks it)
        pushed = dg.materialize([usage_aggregates, stripe_usage_pushes], resources=resources, instance=instance,
                                tags={"dagster/asset_partition_range_start": first.isoformat(),
                                      "dagster/asset_partition_range_end": second.isoformat()})
        assert pushed.success
    reported = {m.partition: {k: m.metadata[k].value for k in ("windows", "acknowledged", "pending", "range/calls",
                                                                 "range/acknowledged", "range")}
                for m in pushed.asset_materializations_for_node("stripe_usage_pushes")}
    both = f"{first.isoformat()}..{second.isoformat()}"
    assert reported == {
        first.isoformat(): {"windows": 2, "acknowledged": 2, "pending": 0, "range/calls": 3, "range/acknowledged": 3,
                            "range": both},
        second.isoformat(): {"windows": 1, "acknowledged": 1, "pending": 0, "range/calls": 3, "range/acknowledged": 3,
                             "range": both},
    }


def day_pushed(tmp_path: Path, rules_dir: Path, sb: Any, instance: dg.DagsterInstance, day: dt.date,
               break_stripe: Callable[[Any], None]) -> tuple[dict[str, Any], dg.ExecuteInProcessResult]:
    """The catalog synced, `day`'s events (`_events`: an api_calls and a tokens window) aggregated, then
    pushed after `break_stripe(sb)` set Stripe up to misbehave (its faults stay on). Returns the
    resources and the push's result."""
    (tmp_path / "customers.csv").write_text(CSV)
    resources = _resources(tmp_path, rules_dir, sb.base_url)
    assert dg.materialize([customer_plans, stripe_catalog], resources=resources, instance=instance).success
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "usage_events", _events(day))
        record_manifest(con)
    assert dg.materialize([usage_aggregates], resources=resources, instance=instance,
                          partition_key=day.isoformat()).success
    break_stripe(sb)
    return resources, dg.materialize([stripe_usage_pushes], resources=resources, instance=instance,
                                      partition_key=day.isoformat())


def _throttle_every_meter_event(sb: Any) -> None:
    sb.sandbox.faults.add({"kind": "rate_limit", "method": "POST", "path": "/v1/billing/meter_events"})


def test_a_day_whose_push_left_windows_open_is_requested_hourly_until_settled(tmp_path: Path, rules_dir: Path) -> None:
    """Stripe throttles every meter event: the push still materializes (its check warns), with the
    day's windows `pending`. The hourly schedule asks for that day (three days old, no new events)
    every hour until a push settles it; before, only today and yesterday were pushed again, and the
    day's usage never reached Stripe."""
    def hourly_days(at: dt.datetime) -> list[str]:
        return [r.partition_key for r in schedule_tick("hourly_usage_schedule", instance, at)]

    now = dt.datetime.now(dt.timezone.utc).replace(minute=10, second=0, microsecond=0)
    day = now.date() - dt.timedelta(days=3)
    with running_sandbox() as sb, dg.instance_for_test() as instance:
        resources, throttled = day_pushed(tmp_path, rules_dir, sb, instance, day, _throttle_every_meter_event)
        assert throttled.success
        meta = throttled.asset_materializations_for_node("stripe_usage_pushes")[0].metadata
        assert (meta["open_windows"].value, meta["acknowledged"].value) == (2, 0)
        assert [c.passed for c in throttled.get_asset_check_evaluations()] == [False]
        for later in (now, now + dt.timedelta(hours=1)):
            assert hourly_days(later) == [day.isoformat(), *yesterday_and_today(later)]

        sb.sandbox.faults.clear()
        settled = dg.materialize([stripe_usage_pushes], resources=resources, instance=instance,
                                 partition_key=day.isoformat())
        meta = settled.asset_materializations_for_node("stripe_usage_pushes")[0].metadata
        assert (meta["open_windows"].value, meta["acknowledged"].value) == (0, 2)
        assert hourly_days(now + dt.timedelta(hours=2)) == yesterday_and_today(now + dt.timedelta(hours=2))


def test_a_window_stripe_refused_fails_the_push_check_though_none_is_left_open(tmp_path: Path, rules_dir: Path) -> None:
    """A window whose call Stripe refused (400: nothing recorded) is `failed`: a plain push leaves it so
    (Stripe would refuse it again; `--retry-failed` sends a new revision). It is not open, so the hourly
    schedule does not ask for its day again: the push_settled check is what tells the data team, and it
    must fail while any window of the day is failed (metadata: failed 1, open_windows 0)."""
    from metering.stripe import ledger
    from metering.stripe.push import _outcome

    db = tmp_path / "wh.duckdb"
    day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)).date()
    with running_sandbox() as sb, dg.instance_for_test() as instance:
        resources, throttled = day_pushed(tmp_path, rules_dir, sb, instance, day, _throttle_every_meter_event)
        assert throttled.success   # both windows pending
        sb.sandbox.faults.clear()
        with warehouse.open_warehouse(db) as con:
            tokens = con.execute("SELECT identifier FROM stripe_push_ledger WHERE meter = 'tokens'").fetchone()[0]
            ledger.record_outcomes(con, [_outcome(tokens, "failed", 0, "refused", "req_1", 400, "response")],
                                   dt.datetime.now(dt.timezone.utc))
        pushed = dg.materialize([stripe_usage_pushes], resources=resources, instance=instance,
                                partition_key=day.isoformat())
        with warehouse.open_warehouse(db) as con:
            statuses = con.execute("SELECT meter, status FROM stripe_push_ledger ORDER BY meter").fetchall()
    assert pushed.success
    assert statuses == [("api_calls", "acknowledged"), ("tokens", "failed")]
    meta = pushed.asset_materializations_for_node("stripe_usage_pushes")[0].metadata
    assert (meta["open_windows"].value, meta["acknowledged"].value, meta["failed"].value) == (0, 1, 1)
    [check] = pushed.get_asset_check_evaluations()
    assert (check.check_name, check.passed, check.metadata["failed"].value) == ("push_settled", False, 1)
