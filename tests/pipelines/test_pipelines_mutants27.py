"""Gaps found by a third hand mutation audit of the Dagster layer (mutants27), beside mutants20 and 23.

Schedules: the monthly schedules' run keys carry the day (a key of the month alone is dropped as a
repeat the next day), only the hourly job's own runs keep a day out, two late days are both asked for,
the schedule times and their order, what the hourly job runs. The landing sensor: a cursor not exactly
version 2 (extra key, bool for int, older version) is dropped, an empty landing file is no growth, the
sensor runs outside production. Resources: a push rate of 0, the push concurrency, no key and no base
URL, the resource's own timeouts and base URL, the main job's unthrottled sandbox resource, read-only
warehouse connections. Rating: the code versions (a price edit re-rates, it does not re-aggregate),
rated_usage's dependencies, the single-run backfill, a range run's events and data versions. Stripe:
the catalog's create_customers and test_clock, the push check on unmapped and held (moved) windows and
its WARN severity, a range pushed day by day on a test clock. Stripe state: the repair job's config,
the row counts.

Real Dagster (instances for test, `dg.materialize`, `build_sensor_context`, schedule ticks), real
DuckDB, and the Stripe sandbox on loopback where Stripe is involved; helpers are the neighbouring
tests' own (tests/pipelines/*). The pending-actions check's WARN severity is asserted in mutants23."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from metering import warehouse
from metering.errors import BadInputError
from pipelines.definitions import defs
from pipelines.resources import ProjectPaths, StripeResource, WarehouseResource, stripe_resources
from tests.pipelines.ticks import schedule_tick
from tests.pipelines.webhooks.test_webhook_pipeline import _tick as _sensor_tick
from tests.pipelines.webhooks.test_webhook_pipeline import deliver, dunning_lifecycle

PROJECT_ROOT = Path(__file__).resolve().parents[2]


# -- the monthly schedules: a run key per day ------------------------------------------------------------

@pytest.mark.parametrize("name, hour", [("daily_rating_schedule", 2), ("invoice_items_schedule", 2),
                                        ("period_close_schedule", 4)])
def test_the_monthly_schedules_run_keys_change_every_day(name, hour):
    """Each daily tick must run its months again (the rating re-rates late usage, reconciliation picks up
    what the rating changed): on Nov 3 and Nov 4 the same months are asked for, under run keys that
    differ (Dagster drops a request whose run key it has seen, so a key of the month alone ran each month
    once, on its first day). Kills: `run_key=f"{month}"` in daily_rating_schedule / period_close_schedule."""
    with dg.instance_for_test() as instance:
        nov3 = schedule_tick(name, instance, dt.datetime(2026, 11, 3, hour, 30, tzinfo=dt.UTC))
        nov4 = schedule_tick(name, instance, dt.datetime(2026, 11, 4, hour, 30, tzinfo=dt.UTC))
    assert [r.partition_key for r in nov3] == [r.partition_key for r in nov4]
    assert not {r.run_key for r in nov3} & {r.run_key for r in nov4}


def test_an_ingest_run_of_today_in_flight_does_not_keep_today_out_of_the_hourly_tick():
    """Only hourly_usage_job's own runs in flight keep a day out: an ingest_job run of today's partition
    (the raw-file sensor's, running) is not an aggregation, and today must still be re-aggregated and
    pushed. Kills: the in-flight lookup not filtered on the job name."""
    at = dt.datetime(2026, 11, 1, 1, 10, tzinfo=dt.UTC)
    with dg.instance_for_test() as instance:
        instance.create_run_for_job(job_def=defs.resolve_job_def("ingest_job"),
                                    tags={"dagster/partition": "2026-11-01"})
        assert [r.partition_key for r in schedule_tick("hourly_usage_schedule", instance, at)] == [
            "2026-10-31", "2026-11-01"]


def test_schedule_times_follow_the_documented_order():
    """schedules/definitions.py's table and docs/dunning.md: hourly at :10, the rating at 02:30, invoice
    items at 02:45 (after the rating closed the periods), the webhook repair at 03:17, period close at
    04:00 (after both), dunning at 06:30, all UTC. Kills: invoice items moved before the rating, the
    dunning hour changed."""
    crons = {s.name: (s.cron_schedule, s.execution_timezone) for s in defs.schedules}
    assert crons == {
        "hourly_usage_schedule": ("10 * * * *", "UTC"), "daily_rating_schedule": ("30 2 * * *", "UTC"),
        "invoice_items_schedule": ("45 2 * * *", "UTC"), "stripe_repair_schedule": ("17 3 * * *", "UTC"),
        "period_close_schedule": ("0 4 * * *", "UTC"), "dunning_schedule": ("30 6 * * *", "UTC")}


def test_two_late_days_are_both_requested():
    """Late events reported on two days (6 and 5 days back), neither aggregated since: the tick asks for
    both, oldest first, then yesterday and today (the newest materialization of every partition is read,
    not only one). Kills: `limit=1` on the records fetched."""
    now = dt.datetime.now(dt.UTC).replace(minute=10, second=0, microsecond=0)
    days = [(now.date() - dt.timedelta(days=n)).isoformat() for n in (6, 5, 1, 0)]
    with dg.instance_for_test() as instance:
        for day in days[:2]:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="usage_events", partition=day))
        assert [r.partition_key for r in schedule_tick("hourly_usage_schedule", instance, now)] == days


# -- stripe_landing_sensor: the cursor's exact shape -------------------------------------------------------

def _landing_sizes(tmp_path: Path) -> dict[str, int]:
    folder = tmp_path / "data" / "landing" / "stripe"
    return {p.name: p.stat().st_size for p in folder.iterdir()}


@pytest.mark.parametrize("change", [
    {"extra": 1},                 # a key this version does not write
    {"attempt": True},            # a bool where an int belongs
    {"version": 1},               # an older version that had these keys
], ids=["extra-key", "bool-attempt", "version-1"])
def test_a_cursor_not_exactly_version_2_is_dropped_and_every_file_requested(tmp_path, change):
    """The cursor lists the landing file at its current size, so read as it stands it asks for nothing.
    But it is not exactly what version 2 writes (an extra key, `attempt: true`, version 1): it must be
    dropped, every non-empty file then counts as grown, and one run is requested (rescanning is
    harmless). Kills: extra keys accepted (`fields <= set(value)`), `isinstance` for the exact type (a
    bool is an int), and `version > CURSOR_VERSION` for `!=`."""
    sensor = defs.resolve_sensor_def("stripe_landing_sensor")
    deliver(tmp_path, dunning_lifecycle()[:3])
    cursor = {"version": 2, "sizes": _landing_sizes(tmp_path), "run_key": "", "attempt": 0, **change}
    with dg.instance_for_test() as instance:
        assert len(_sensor_tick(sensor, instance, tmp_path, json.dumps(cursor)).run_requests) == 1


def test_an_empty_landing_file_requests_nothing(tmp_path):
    """The receiver creates a landing file before its first record is written (or a delivery failed
    and left it empty): 0 bytes is no growth, and no landing run is requested for it. Kills: a file
    missing from the cursor counted from -1 (`sizes.get(name, -1)`)."""
    from metering.webhooks.inbox import FILE_PREFIX, FILE_SUFFIX

    sensor = defs.resolve_sensor_def("stripe_landing_sensor")
    folder = tmp_path / "data" / "landing" / "stripe"
    folder.mkdir(parents=True)
    (folder / f"{FILE_PREFIX}2026-11-01T10{FILE_SUFFIX}").touch()   # named as the receiver names its files
    assert set(_landing_sizes(tmp_path).values()) == {0}
    with dg.instance_for_test() as instance:
        assert _sensor_tick(sensor, instance, tmp_path, None).run_requests == []


def test_the_landing_sensor_runs_outside_production_too(monkeypatch):
    """pipelines/cadence.py: everything ships stopped but the webhook landing sensor, which always runs
    (it only moves what the receiver stored). Kills: the landing sensor given SENSOR_STATUS."""
    monkeypatch.delenv("METERING_ENV", raising=False)
    assert defs.resolve_sensor_def("stripe_landing_sensor").default_status == dg.DefaultSensorStatus.RUNNING


# -- the Stripe and warehouse resources ---------------------------------------------------------------------

def test_a_push_rate_of_zero_on_the_resource_means_no_limit_not_the_environments(monkeypatch):
    """StripeResource documents push_rate 0 as "none" (no client-side limit), negative as the
    environment's: with STRIPE_PUSH_RATE=7, push_rate 0 gives rate 0, -1 gives 7; the main job's sandbox
    resource (`stripe_resources`) pushes unthrottled whatever the environment says. Kills: `push_rate > 0`
    for `>= 0`, and `stripe_resources` not setting push_rate 0."""
    monkeypatch.setenv("STRIPE_PUSH_RATE", "7")
    assert StripeResource(base_url="http://127.0.0.1:9", push_rate=0.0).push_config().rate == 0
    assert StripeResource(base_url="http://127.0.0.1:9").push_config().rate == 7
    assert stripe_resources(base_url="http://127.0.0.1:9")["stripe"].push_config().rate == 0


def test_the_push_concurrency_of_the_resource_wins_over_the_environment(monkeypatch):
    """STRIPE_PUSH_CONCURRENCY=8 in the environment, the resource asks for 3: 3; 0 keeps the environment's 8."""
    monkeypatch.setenv("STRIPE_PUSH_CONCURRENCY", "8")
    assert StripeResource(push_concurrency=3).push_config().concurrency == 3
    assert StripeResource().push_config().concurrency == 8


def test_no_key_and_no_base_url_is_refused_not_sent_to_stripe_with_a_placeholder(monkeypatch):
    """Without STRIPE_API_KEY the placeholder test key is only for the local sandbox (a base_url): with
    neither, the resource refuses, naming both ways out. Kills: the refusal dropped (the placeholder key
    went to api.stripe.com)."""
    monkeypatch.delenv("STRIPE_API_KEY", raising=False)
    with pytest.raises(BadInputError, match="STRIPE_API_KEY is not set and StripeResource.base_url is empty"):
        StripeResource().settings()
    assert StripeResource(base_url="http://127.0.0.1:9").settings().api_key == "sk_test_local_sandbox"


def test_the_resources_own_timeouts_and_base_url_reach_the_client(monkeypatch):
    """connect 3 s and read 40 s stay apart; with a key and STRIPE_API_BASE in the environment, the
    resource's base_url still wins (both API and meter events). Kills: read_timeout passed as the connect
    timeout; the base_url ignored when a key is set."""
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_m27e")
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:1")
    settings = StripeResource(base_url="http://127.0.0.1:9", connect_timeout=3.0, read_timeout=40.0).settings()
    assert (settings.connect_timeout, settings.read_timeout) == (3.0, 40.0)
    assert (settings.api_base, settings.meter_events_base, settings.api_key) == (
        "http://127.0.0.1:9", "http://127.0.0.1:9", "sk_test_m27e")


def test_a_read_only_warehouse_connection_refuses_writes(tmp_path):
    """finance_report renders through `get_connection(read_only=True)`: that connection must not write
    (a report never changes the warehouse). Kills: read_only not passed on."""
    resource = WarehouseResource(path=str(tmp_path / "wh.duckdb"))
    with resource.get_connection() as con:
        con.execute("CREATE TABLE m27e (i INTEGER)")
    with resource.get_connection(read_only=True) as con:
        with pytest.raises(duckdb.Error):
            con.execute("INSERT INTO m27e VALUES (1)")
    with resource.get_connection(read_only=True) as con:
        assert con.execute("SELECT count(*) FROM m27e").fetchone()[0] == 0


# -- rating: code versions and dependencies ------------------------------------------------------------------

def test_a_price_edit_changes_the_rating_version_but_not_the_aggregation_version(tmp_path, monkeypatch):
    """Aggregation depends on the meters only: editing a plan's price in a copy of rating_rules changes
    the rules version (rating re-runs) and keeps the meters version (no re-aggregation of every day).
    customer_plans (validated against the plans) and rated_usage carry the rules version. Kills: the
    meters version hashing the whole rules; customer_plans on the bare engine version."""
    from pipelines.defs.rating import assets as rating

    monkeypatch.setenv("METERING_RULES", str(PROJECT_ROOT / "rating_rules"))
    meters_before, rules_before = rating._rules_code_versions()
    edited = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rating_rules", edited)
    starter = edited / "plans" / "starter.yaml"
    text = starter.read_text()
    assert text.count('{name: platform fee, model: flat, amount: "19.00"}') == 1
    starter.write_text(text.replace('amount: "19.00"}', 'amount: "21.00"}'))   # the platform fee, 19 -> 21 USD
    monkeypatch.setenv("METERING_RULES", str(edited))
    meters_after, rules_after = rating._rules_code_versions()
    assert meters_after == meters_before and meters_after.startswith("rating-1+meters-")
    assert rules_after != rules_before and rules_after.startswith("rating-1+rules-")
    assert rating.customer_plans.code_versions_by_key[rating.customer_plans.key] == rating.RULES_CODE_VERSION
    assert rating.rated_usage.code_versions_by_key[rating.rated_usage.key] == rating.RULES_CODE_VERSION


def test_the_rating_assets_dependencies_and_backfill_policy():
    """rated_usage depends on customer_plans (a changed customer list marks the months stale) and on the
    aggregates; usage_aggregates runs a range as one run (the hourly job's backfills). Kills: the
    customer_plans dep dropped; the single-run backfill policy dropped."""
    from pipelines.defs.rating.assets import rated_usage, usage_aggregates

    assert {dg.AssetKey("customer_plans"), dg.AssetKey("usage_aggregates")} <= set(
        rated_usage.asset_deps[rated_usage.key])
    assert usage_aggregates.backfill_policy == dg.BackfillPolicy.single_run()


# -- Stripe state: the repair job, the row counts ---------------------------------------------------------------

def test_the_repair_job_re_fetches_the_objects_it_repairs():
    """stripe_repair_job lists /v1/events AND re-fetches the objects involved (the events list holds
    snapshots that may be stale). Kills: `refetch: False` in the job's config."""
    job = defs.resolve_job_def("stripe_repair_job")
    assert job.run_config == {"ops": {"stripe_webhook_events": {"config": {"repair": True, "refetch": True}}}}


def test_the_state_assets_row_counts_are_their_own_tables(tmp_path):
    """Nine events of the dunning lifecycle, two of them delivered twice (11 receipts): stripe_webhook_events'
    row_count is its 9 rows (one per event id), not the 11 receipts; stripe_invoices' is its 1 invoice,
    not invoice + its 1 line (2). Kills: row counts from receipts, and from the sum of a rebuild's counts."""
    from pipelines.defs.webhooks.assets import STATE_ASSETS
    from tests.pipelines.webhooks.test_webhook_pipeline import resources

    deliver(tmp_path, dunning_lifecycle() + dunning_lifecycle()[:2])
    with dg.instance_for_test() as instance:
        result = dg.materialize(STATE_ASSETS, resources={**resources(tmp_path), "stripe": StripeResource()},
                                instance=instance)
    rows = {node: result.asset_materializations_for_node(node)[0].metadata["dagster/row_count"].value
            for node in ("stripe_webhook_events", "stripe_invoices")}
    assert rows == {"stripe_webhook_events": 9, "stripe_invoices": 1}


# -- Stripe push: catalog settings, the push check ------------------------------------------------------------

def test_a_customer_the_catalog_may_not_create_is_missing_and_its_windows_unmapped(tmp_path, rules_dir):
    """create_customers False (production: customers are made by billing, not by us) and acme absent from
    Stripe: the catalog creates no customer and reports missing_customers 1; pushing acme's day
    (`_events`: an api_calls and a tokens window) sends nothing, counts 2 unmapped windows, and the
    push_settled check fails as a warning (the push materializes). Kills: `create_customers=True` in the
    catalog sync; `unmapped == 0` dropped from the check; the check's WARN severity dropped."""
    from metering.stripe_sandbox.testing import running_sandbox
    from pipelines.defs.rating.assets import customer_plans, usage_aggregates
    from pipelines.defs.stripe_push.assets import stripe_catalog, stripe_usage_pushes
    from tests.pipelines.manifest import record_manifest
    from tests.pipelines.stripe_push.test_stripe_push_assets import CSV, _events, _resources

    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).date()
    (tmp_path / "customers.csv").write_text(CSV)
    with running_sandbox() as sb, dg.instance_for_test() as instance:
        resources = _resources(tmp_path, rules_dir, sb.base_url)
        resources["stripe"] = StripeResource(base_url=sb.base_url, create_customers=False, push_rate=0)
        synced = dg.materialize([customer_plans, stripe_catalog], resources=resources, instance=instance)
        assert synced.success
        meta = synced.asset_materializations_for_node("stripe_catalog")[0].metadata
        assert (meta["missing_customers"].value, meta["customers"].value) == (1, 0)
        assert sb.client().v1.customers.list().data == []
        with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
            warehouse.insert_frame(con, "usage_events", _events(day))
            record_manifest(con)
        pushed = dg.materialize([usage_aggregates, stripe_usage_pushes], resources=resources, instance=instance,
                                partition_key=day.isoformat())
    assert pushed.success
    [check] = pushed.get_asset_check_evaluations()
    assert (check.check_name, check.passed, check.severity) == ("push_settled", False, dg.AssetCheckSeverity.WARN)
    assert (check.metadata["unmapped"].value, check.metadata["moved"].value) == (2, 0)


def test_customers_the_catalog_creates_join_the_resources_test_clock(tmp_path, rules_dir):
    """Sandbox mode with a test clock: the customer the catalog creates is attached to that clock (so
    advancing it bills the subscription). Kills: the resource's test_clock not passed to the sync."""
    from metering.stripe_sandbox.testing import running_sandbox
    from pipelines.defs.rating.assets import customer_plans
    from pipelines.defs.stripe_push.assets import stripe_catalog
    from tests.pipelines.stripe_push.test_stripe_push_assets import CSV, _resources

    (tmp_path / "customers.csv").write_text(CSV)
    with running_sandbox() as sb, dg.instance_for_test() as instance:
        clock = sb.client().v1.test_helpers.test_clocks.create(
            {"frozen_time": int(dt.datetime(2026, 10, 1, tzinfo=dt.UTC).timestamp())})
        resources = _resources(tmp_path, rules_dir, sb.base_url, test_clock=clock.id)
        assert dg.materialize([customer_plans, stripe_catalog], resources=resources, instance=instance).success
        # Stripe lists a test clock's customers only when asked for that clock
        [customer] = sb.client().v1.customers.list({"test_clock": clock.id}).data
        assert (customer.metadata["customer_id"], customer.test_clock) == ("acme", clock.id)


def test_a_range_pushed_day_by_day_on_a_test_clock_reports_each_days_own_push(tmp_path, rules_dir):
    """On a test clock told to advance, a two-day range (Oct 5: an api_calls and a tokens window; Oct 6:
    an api_calls window) is pushed day by day (the clock moved to each day's end first): each partition
    reports its own push, Oct 5 2 calls and Oct 6 1 call, with no `range` keys (those are for one push of
    a whole range). Kills: `if first == last` for `if day_by_day or first == last` (both days then
    reported Oct 5's push as the range's)."""
    import polars as pl

    from metering.stripe_sandbox.testing import running_sandbox
    from pipelines.defs.rating.assets import customer_plans, usage_aggregates
    from pipelines.defs.stripe_push.assets import stripe_catalog, stripe_usage_pushes
    from tests.pipelines.manifest import record_manifest
    from tests.pipelines.stripe_push.test_stripe_push_assets import CSV, _events, _resources

    first, second = dt.date(2026, 10, 5), dt.date(2026, 10, 6)
    (tmp_path / "customers.csv").write_text(CSV)
    with running_sandbox() as sb, dg.instance_for_test() as instance:
        clock = sb.client().v1.test_helpers.test_clocks.create(
            {"frozen_time": int(dt.datetime(2026, 10, 1, tzinfo=dt.UTC).timestamp())})
        resources = _resources(tmp_path, rules_dir, sb.base_url, test_clock=clock.id, advance_test_clock=True)
        assert dg.materialize([customer_plans, stripe_catalog], resources=resources, instance=instance).success
        only_api_calls = _events(second).filter(pl.col("meter") == "api_calls").with_columns(
            ("d2-" + pl.col("event_id")).alias("event_id"))
        with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
            warehouse.insert_frame(con, "usage_events", pl.concat([_events(first), only_api_calls]))
            record_manifest(con)
        pushed = dg.materialize([usage_aggregates, stripe_usage_pushes], resources=resources, instance=instance,
                                tags={"dagster/asset_partition_range_start": first.isoformat(),
                                      "dagster/asset_partition_range_end": second.isoformat()})
    assert pushed.success
    reported = {m.partition: m.metadata for m in pushed.asset_materializations_for_node("stripe_usage_pushes")}
    assert {day: (meta["windows"].value, meta["calls"].value, meta["acknowledged"].value, meta["open_windows"].value)
            for day, meta in reported.items()} == {"2026-10-05": (2, 2, 2, 0), "2026-10-06": (1, 1, 1, 0)}
    assert not any(key.startswith("range") for meta in reported.values() for key in meta)


# -- usage_aggregates: a range run's figures per day ---------------------------------------------------------------

def test_a_range_run_counts_events_not_rows_and_gives_no_day_another_days_data_version(tmp_path):
    """Oct 5: one api call at 10:00; Oct 6: three api calls in the same hour (02:00), so one hourly row.
    A single-run backfill over both reports Oct 6 as 1 row and 3 events (events are summed, not rows
    counted); and it must not stamp Oct 6 with Oct 5's data version (the version a run of Oct 5 alone
    gives): one version describes one partition's output. Kills: `events` as the row count; the data
    version set from the first day for a whole range."""
    from pipelines.defs.rating.assets import usage_aggregates
    from tests.pipelines.rating.test_rating_assets import add_events

    db = tmp_path / "wh.duckdb"
    with warehouse.open_warehouse(db) as con:
        add_events(con, "c_pro", "api_calls", "2026-10-05 10:00:00+00")
        add_events(con, "c_pro", "api_calls", "2026-10-06 02:00:00+00", n=3)
    resources = {"warehouse": WarehouseResource(path=str(db)),
                 "paths": ProjectPaths(rules_dir=str(PROJECT_ROOT / "rating_rules"))}
    with dg.instance_for_test() as instance:
        alone = dg.materialize([usage_aggregates], resources=resources, instance=instance, partition_key="2026-10-05")
        ranged = dg.materialize([usage_aggregates], resources=resources, instance=instance,
                                tags={"dagster/asset_partition_range_start": "2026-10-05",
                                      "dagster/asset_partition_range_end": "2026-10-06"})
    assert alone.success and ranged.success
    [oct5] = alone.asset_materializations_for_node("usage_aggregates")
    oct5_version = oct5.tags.get("dagster/data_version")
    assert oct5_version
    reported = {m.partition: m for m in ranged.asset_materializations_for_node("usage_aggregates")}
    assert {p: (m.metadata["dagster/row_count"].value, m.metadata["events"].value) for p, m in reported.items()} == {
        "2026-10-05": (1, 1), "2026-10-06": (1, 3)}
    assert reported["2026-10-06"].tags.get("dagster/data_version") != oct5_version


def test_the_hourly_job_aggregates_pushes_and_publishes():
    """hourly_usage_job re-aggregates the day, pushes it to Stripe and publishes the snapshot: exactly
    those three assets (the push is how late usage and open windows reach Stripe; ingestion is the
    sensor's). Kills: stripe_usage_pushes dropped from the job's selection."""
    job = defs.resolve_job_def("hourly_usage_job")
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "usage_aggregates", "stripe_usage_pushes", "analyst_snapshot"}


def test_windows_held_at_a_previous_stripe_customer_fail_the_push_check(tmp_path, rules_dir):
    """acme's day (an api_calls and a tokens window) is pushed and acknowledged; then a second Stripe
    customer carrying metadata customer_id=acme appears and the next catalog sync maps acme to it. The
    day pushed again must not send the two windows to the new customer (the old one holds them: both
    would bill them): they are held, `moved` 2, nothing is left open or failed, and push_settled fails
    (warns) so someone fixes the map. Kills: `moved == 0` dropped from the check."""
    from metering.stripe_sandbox.testing import running_sandbox
    from pipelines.defs.stripe_push.assets import stripe_catalog, stripe_usage_pushes
    from tests.pipelines.stripe_push.test_stripe_push_assets import day_pushed

    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).date()
    with running_sandbox() as sb, dg.instance_for_test() as instance:
        resources, first = day_pushed(tmp_path, rules_dir, sb, instance, day, lambda sandbox: None)
        assert [c.passed for c in first.get_asset_check_evaluations()] == [True]
        sb.client().v1.customers.create({"name": "acme (dup)", "metadata": {"customer_id": "acme"}})
        assert dg.materialize([stripe_catalog], resources=resources, instance=instance).success
        again = dg.materialize([stripe_usage_pushes], resources=resources, instance=instance,
                               partition_key=day.isoformat())
    assert again.success
    [check] = again.get_asset_check_evaluations()
    assert (check.passed, check.metadata["moved"].value, check.metadata["failed"].value,
            check.metadata["unmapped"].value, check.metadata["pending"].value) == (False, 2, 0, 0, 0)
