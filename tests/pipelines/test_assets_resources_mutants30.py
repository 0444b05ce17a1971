"""Gaps found by a hand mutation audit (mutants30) of the resources and the assets of every domain.

Resources: the warehouse's memory limit and snapshot path, the Stripe key's base address from the
environment, the meter window, the main job's Stripe resource, the default resources, the data folder.
usage_events: a raw "folder" that is a file, duplicates and conflicting versions counted, skipped and
unreadable files kept apart, every other date a run touched reported (and none again), the readable
check's severity, the quarantine reasons on the spec, the default ingestion time.
analyst_snapshot: its path and size. rated_usage: the rules hash it rated with, the unpriced check.
stripe_usage_pushes: raw events per call. Stripe state: the landing folder. Dunning: the metadata of
both assets and the clock's error. finance_report: the data folder and its row count.

Real Dagster (`dg.materialize`, instances for test), real DuckDB and the Stripe sandbox on loopback;
the helpers are the neighbouring tests' own (loaded as mutants20/23 load them)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from metering import warehouse
from metering.ingest import REASONS
from metering.stripe_sandbox.testing import running_sandbox
from pipelines.defs.ingest.assets import READABLE_CHECK, usage_events
from pipelines.defs.publish.assets import analyst_snapshot
from pipelines.defs.stripe_push.assets import stripe_usage_pushes
from pipelines.defs.rating.assets import customer_plans, usage_aggregates
from pipelines.defs.webhooks.assets import STATE_ASSETS
from pipelines.defs.webhooks.dunning_assets import DUNNING_ASSETS
from pipelines.resources import ProjectPaths, StripeResource, WarehouseResource, default_resources, stripe_resources
from tests.pipelines.manifest import record_manifest
from tests.pipelines.stripe_push.test_stripe_push_assets import CSV, _events, _resources
from tests.pipelines.test_pipelines_mutants23 import reminder_that_cannot_be_written
from tests.pipelines.test_pipelines_mutants20 import _ingest   # the ingest tests' conftest, loaded by path
from tests.pipelines.webhooks.test_webhook_pipeline import deliver, dunning_lifecycle
from tests.pipelines.webhooks.test_webhook_pipeline import resources as landing_resources

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "metering" / "dunning"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "metering" / "reconcile"))
from dunning_helpers import DAY, NO_STRIPE_POLICY, T0, ensure_invoices_table, put_invoice, write_rules  # noqa: E402
from recon_scenario import write_scenario  # noqa: E402

world = _ingest.world  # raw files under tmp_path, a fresh Dagster instance

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _meta(result: dg.ExecuteInProcessResult, partition: str) -> dict:
    [event] = [m for m in result.asset_materializations_for_node("usage_events") if m.partition == partition]
    return {k: v.value for k, v in event.metadata.items()}


def _ingest_run(world, partition: str, **kwargs) -> dg.ExecuteInProcessResult:
    return dg.materialize([usage_events], partition_key=partition, resources=world.resources(),
                          instance=world.instance, raise_on_error=False, **kwargs)


# -- resources ------------------------------------------------------------------------------------------

def test_the_warehouse_resources_memory_limit_reaches_the_connection(tmp_path):
    """512MiB asked for, 512.0 MiB in force (DuckDB's default is 80% of RAM). Kills: memory_limit not passed."""
    resource = WarehouseResource(path=str(tmp_path / "w.duckdb"), memory_limit="512MiB")
    with resource.get_connection() as con:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "512.0 MiB"


def test_the_warehouse_resource_waits_as_long_as_it_is_told_for_another_writer(tmp_path, caplog):
    """Another process holds the warehouse: a resource with wait_seconds=0.3 says it waits up to 0.3 s,
    then gives up naming the holder (the default would wait 60 s). Kills: wait_seconds not passed."""
    from metering.warehouse import WarehouseLockedError
    from tests.test_warehouse import _held

    path = tmp_path / "w.duckdb"
    with warehouse.open_warehouse(path):
        pass
    with _held(path) as holder, caplog.at_level("WARNING", logger="metering.warehouse"):
        with pytest.raises(WarehouseLockedError, match=f"PID {holder.pid}"):
            with WarehouseResource(path=str(path), wait_seconds=0.3).get_connection():
                pass
    assert [r for r in caplog.records if "waiting up to 0.3 s" in r.getMessage()]


def test_the_stripe_key_from_the_environment_keeps_its_base_address(monkeypatch):
    """STRIPE_API_KEY and STRIPE_API_BASE set, no base_url on the resource: the client talks to the
    environment's address (a staging proxy), not Stripe. Kills: api_base dropped from the settings."""
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_abc")
    monkeypatch.setenv("STRIPE_API_BASE", "http://127.0.0.1:12111")
    monkeypatch.delenv("STRIPE_METER_EVENTS_BASE", raising=False)
    settings = StripeResource().settings()
    assert (settings.api_base, settings.meter_events_base) == ("http://127.0.0.1:12111", "http://127.0.0.1:12111")


def test_the_resources_meter_window_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("STRIPE_METER_WINDOW", "day")
    assert StripeResource(meter_window="hour").window_kind == "hour"
    assert StripeResource().window_kind == "day"


def test_the_main_jobs_stripe_resource_carries_sandbox_mode_and_clock():
    """Kills: stripe_resources dropping create_customers (the catalog then never creates the demo's customers)."""
    [(key, resource)] = stripe_resources(base_url="http://127.0.0.1:9", create_customers=True,
                                         test_clock="clock_1").items()
    assert (key, resource.base_url, resource.create_customers, resource.test_clock, resource.push_rate) == (
        "stripe", "http://127.0.0.1:9", True, "clock_1", 0.0)


def test_the_default_resources_are_the_three_every_domain_expects():
    resources = default_resources()
    assert sorted(resources) == ["paths", "stripe", "warehouse"]
    assert isinstance(resources["stripe"], StripeResource)


def test_project_paths_data_dir_wins_over_the_environment(tmp_path, isolated_env):
    elsewhere = tmp_path / "elsewhere"
    assert ProjectPaths(data_dir=str(elsewhere)).data == elsewhere
    assert ProjectPaths().data == isolated_env


def test_the_snapshot_goes_to_the_resources_own_path_with_its_size(tmp_path, isolated_env):
    """snapshot= set on the resource (not $METERING_SNAPSHOT, which points at data/snapshot.duckdb): the
    copy lands there, and `bytes` is that file's size. Kills: snapshot field ignored; bytes not measured."""
    db, snap = tmp_path / "w.duckdb", tmp_path / "mine" / "snap.duckdb"
    snap.parent.mkdir()
    with warehouse.open_warehouse(db):
        pass
    with dg.instance_for_test() as instance:
        result = dg.materialize([analyst_snapshot], instance=instance,
                                resources={"warehouse": WarehouseResource(path=str(db), snapshot=str(snap))})
    assert result.success
    assert snap.exists() and not (isolated_env / "snapshot.duckdb").exists()
    meta = result.asset_materializations_for_node("analyst_snapshot")[0].metadata
    assert meta["bytes"].value == snap.stat().st_size > 0
    assert meta["usage_events"].value == 0


# -- usage_events -----------------------------------------------------------------------------------------

def test_a_raw_folder_that_is_a_file_fails_the_run(world):
    """ProjectPaths.raw_dir mistyped to name a file: no folder to scan, the run fails saying so (it
    ingested that one file as if it were the folder). Kills: `is_dir()` weakened to `exists()`."""
    world.raw.write_text(json.dumps({"event_id": "e1", "customer_id": "cust_00001", "meter": "api_calls",
                                     "timestamp": "2026-10-05T10:00:00Z"}) + "\n")
    result = _ingest_run(world, "2026-10-05")
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert f"the raw folder {world.raw} does not exist or is not a folder" in str(failure.event_specific_data)


def test_duplicates_conflicts_skipped_and_unreadable_files_are_each_counted_apart(world):
    """a.jsonl: e1=5, e1=5 (an exact copy), e2=1, e2=2 (another version). By the dedupe rule: accepted =
    distinct ids = 2, conflicts = versions - ids = 3 - 2 = 1 (quarantined), duplicates = rows - versions =
    4 - 3 = 1; values read 13 = accepted 5+1 + quarantined 2 + dropped 5. b.jsonl has a.jsonl's bytes:
    skipped. c.jsonl.gz is no gzip: unreadable, neither ingested nor skipped, and the readable check fails
    as an ERROR. `files` lists the two files read (a ingested, b skipped).
    Kills: duplicates or conflicts not summed, unreadable counted as skipped, `files` of ingested only,
    the readable check's severity."""
    a = world.write_usage("a.jsonl", [("e1", 5), ("e1", 5), ("e2", 1), ("e2", 2)])
    (world.raw / "b.jsonl").write_bytes(a.read_bytes())
    (world.raw / "c.jsonl.gz").write_bytes(b"\x1f\x8b\x08junk")
    result = _ingest_run(world, "2026-10-05")
    meta = _meta(result, "2026-10-05")
    assert {k: meta[k] for k in ("files_ingested", "files_skipped", "rows_read", "rows_accepted", "rows_quarantined",
                                 "duplicates_dropped", "conflicting_duplicates")} == {
        "files_ingested": 1, "files_skipped": 1, "rows_read": 4, "rows_accepted": 2, "rows_quarantined": 1,
        "duplicates_dropped": 1, "conflicting_duplicates": 1}
    assert [(f["path"], f["status"]) for f in meta["files"]] == [(str(a), "ingested"),
                                                                  (str(world.raw / "b.jsonl"), "skipped")]
    [readable] = [c for c in result.get_asset_check_evaluations() if c.check_name == READABLE_CHECK]
    assert (readable.passed, readable.severity) == (False, dg.AssetCheckSeverity.ERROR)
    assert list(readable.metadata["unreadable_files"].value) == [str(world.raw / "c.jsonl.gz")]


def test_every_other_date_a_run_touched_is_reported_and_none_again_once_reported(world):
    """One file with events on 10-03, 10-04 and 10-05, run for 10-05: both earlier dates are reported
    as materialized (two dates outside the run, not only the first). A later run over the folder skips
    the file: all three dates were reported after it was ingested, so none is reported again (every
    date's newest materialization is looked at, not one of them).
    Kills: only the first outside date reported; the newest materializations fetched with limit 1."""
    world.write_events("f.jsonl", ["2026-10-03T12:00:00Z", "2026-10-04T12:00:00Z", "2026-10-05T12:00:00Z"])
    first = _ingest_run(world, "2026-10-05")
    assert first.success
    assert world.materialized_partitions() == {"2026-10-03", "2026-10-04", "2026-10-05"}
    assert {p: world.latest(p)["dagster/row_count"] for p in ("2026-10-03", "2026-10-04")} == {
        "2026-10-03": 1, "2026-10-04": 1}
    again = _ingest_run(world, "2026-10-06")
    assert [m.partition for m in again.asset_materializations_for_node("usage_events")] == ["2026-10-06"]
    assert _meta(again, "2026-10-06")["event_dates_of_skipped_files"] == {}


def test_a_date_reported_before_a_file_was_ingested_is_reported_again_for_it(world):
    """10-03 was materialized (a.jsonl, one event). Then b.jsonl (one more 10-03 event) is ingested outside
    Dagster (`metering ingest`, or a run killed after the file committed). A run over the folder for 10-05
    skips both files, and reports 10-03 again, now with 2 rows: its last report is older than b's
    ingestion. Kills: only dates never reported counted as unreported."""
    from metering.ingest import ingest_file
    from metering.rules.meters import load_meters
    from metering.warehouse import open_warehouse

    world.write_events("a.jsonl", ["2026-10-03T10:00:00Z"])
    assert _ingest_run(world, "2026-10-03").success
    b = world.write_events("b.jsonl", ["2026-10-03T11:00:00Z"])
    with open_warehouse(world.warehouse) as con:
        assert ingest_file(con, b, meters=load_meters(PROJECT_ROOT / "rating_rules")).status == "ingested"
    result = _ingest_run(world, "2026-10-05")
    assert sorted(m.partition for m in result.asset_materializations_for_node("usage_events")) == [
        "2026-10-03", "2026-10-05"]
    assert _meta(result, "2026-10-05")["event_dates_of_skipped_files"] == {str(b): ["2026-10-03"]}
    assert world.latest("2026-10-03")["dagster/row_count"] == 2


def test_a_run_without_as_of_judges_by_the_time_it_starts(world):
    """No as_of: the ingestion time is the run's start (between the two clock readings around it), so an
    event a minute old is accepted. Kills: a default time other than now."""
    before = dt.datetime.now(dt.timezone.utc)
    stamp = (before - dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    world.write_events("now.jsonl", [stamp])
    result = _ingest_run(world, before.date().isoformat())
    after = dt.datetime.now(dt.timezone.utc)
    meta = _meta(result, before.date().isoformat()) if before.date() == after.date() else None
    if meta is None:
        pytest.skip("ran across midnight UTC")
    assert before <= dt.datetime.fromisoformat(meta["as_of"]) <= after
    assert (meta["rows_accepted"], meta["rows_quarantined"]) == (1, 0)


def test_the_ingest_asset_lists_the_quarantine_reasons():
    spec = usage_events.specs_by_key[dg.AssetKey("usage_events")]
    assert spec.metadata["quarantine_reasons"].value == REASONS


# -- stripe_usage_pushes ----------------------------------------------------------------------------------

def test_raw_events_per_call_is_events_over_calls(tmp_path, rules_dir):
    """Two api_calls events in one hour window of one day: one meter event sent, carrying 2 raw events
    (2 / 1 = 2.0, while calls = 1). The catalog, in sandbox mode, gave the customer it created the customer
    list's payment behavior. Kills: raw_events_per_call taken from another figure; sandbox payment behavior off."""
    db = tmp_path / "wh.duckdb"
    (tmp_path / "customers.csv").write_text(CSV)
    day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=2)).date()
    with running_sandbox() as sb, dg.instance_for_test() as instance:
        resources = _resources(tmp_path, rules_dir, sb.base_url)
        assert dg.materialize([customer_plans, stripe_catalog_asset()], resources=resources, instance=instance).success
        # sandbox mode: the customer the catalog created carries the list's payment behavior (acme: succeeds)
        [customer] = sb.client().v1.customers.list().data
        assert customer.metadata["payment_behavior"] == "succeeds"
        with warehouse.open_warehouse(db) as con:
            warehouse.insert_frame(con, "usage_events", _events(day).filter(pl.col("meter") == "api_calls"))
            record_manifest(con)
        pushed = dg.materialize([usage_aggregates, stripe_usage_pushes], resources=resources, instance=instance,
                                partition_key=day.isoformat())
    meta = pushed.asset_materializations_for_node("stripe_usage_pushes")[0].metadata
    assert (meta["calls"].value, meta["acknowledged"].value, meta["raw_events_per_call"].value) == (1, 1, 2.0)


def stripe_catalog_asset():
    from pipelines.defs.stripe_push.assets import stripe_catalog

    return stripe_catalog


# -- Stripe state -------------------------------------------------------------------------------------------

def test_the_events_asset_reads_the_landing_folder_of_the_resources_data_dir(tmp_path):
    """ProjectPaths.data_dir is tmp/other/data, not $METERING_DATA_DIR (tmp/data): the two events delivered
    under it are landed, and the folder is named. Kills: data_dir ignored (0 events); landing_folder blank."""
    other = tmp_path / "other"
    deliver(other, dunning_lifecycle()[:2])
    with dg.instance_for_test() as instance:
        result = dg.materialize(STATE_ASSETS[:1], instance=instance,
                                resources={**landing_resources(other), "stripe": StripeResource()})
    meta = result.asset_materializations_for_node("stripe_webhook_events")[0].metadata
    assert meta["landing_folder"].value == str(other / "data" / "landing" / "stripe")
    assert meta["dagster/row_count"].value == meta["events"].value == 2


def test_a_repair_run_configured_by_hand_re_fetches_by_default():
    """`repair: true` alone (as an operator types it in the launchpad) fills gaps AND re-fetches the objects
    involved, as the repair job does; only an explicit `refetch: false` skips it. Kills: the default off."""
    from pipelines.defs.webhooks.assets import StripeEventsConfig

    assert (StripeEventsConfig(repair=True).refetch, StripeEventsConfig().repair) == (True, False)


# -- dunning ------------------------------------------------------------------------------------------------

def _dunning(tmp_path: Path, now: str, raise_on_error: bool = True) -> dg.ExecuteInProcessResult:
    config = {"config": {"now": now}}
    return dg.materialize(
        DUNNING_ASSETS, raise_on_error=raise_on_error,
        resources={"warehouse": WarehouseResource(path=str(tmp_path / "wh.duckdb")),
                   "paths": ProjectPaths(rules_dir=str(tmp_path / "rules"), data_dir=str(tmp_path / "out")),
                   "stripe": StripeResource()},
        run_config={"ops": {"dunning_state": config, "dunning_actions": config}})


def _asset_meta(result: dg.ExecuteInProcessResult, node: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(node)[0].metadata.items()}


def test_dunning_metadata_counts_states_ledger_reminders_and_suspensions(tmp_path):
    """One failed invoice under NO_STRIPE_POLICY (reminder day 0, final reminder and suspension day 14).
    Day 0: one invoice in dunning, one ledger row (the first reminder), nobody suspended; no SMTP relay
    is configured, so the rendered file is the delivery and reminders_sent is 0. Day 14, clock given
    without offset (UTC): two more steps (final reminder, suspension) -> ledger 3 rows, 1 customer
    suspended; `now` is reported as UTC with its offset.
    Kills: state counts dropped, ledger row count taken from another figure, suspensions not reported,
    `now` echoed as given."""
    write_rules(tmp_path / "rules", NO_STRIPE_POLICY)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        ensure_invoices_table(con)
        put_invoice(con, "in_1")
    day0 = _dunning(tmp_path, T0.isoformat())
    state = _asset_meta(day0, "dunning_state")
    assert state["invoices/in_dunning"] == 1 and state["dagster/row_count"] == 1
    actions = _asset_meta(day0, "dunning_actions")
    assert (actions["dagster/row_count"], actions["reminders_sent"], actions["suspended_customers"]) == (1, 0, 0)
    naive = (T0 + 14 * DAY).replace(tzinfo=None).isoformat()   # 2026-11-16T09:30:00
    day14 = _dunning(tmp_path, naive)
    actions = _asset_meta(day14, "dunning_actions")
    assert (actions["dagster/row_count"], actions["reminders_sent"], actions["suspended_customers"]) == (3, 0, 1)
    assert actions["now"] == _asset_meta(day14, "dunning_state")["now"] == "2026-11-16T09:30:00+00:00"


def test_a_pending_action_counts_among_the_ledgers_rows(tmp_path):
    """The outbox path is a file: the day-0 reminder cannot be written and its ledger row stays pending. The
    ledger holds 1 row (pending 1): row count 1. Kills: a row count of the ledger's settled rows only."""
    reminder_that_cannot_be_written(tmp_path)
    actions = _asset_meta(_dunning(tmp_path, T0.isoformat()), "dunning_actions")
    assert (actions["dagster/row_count"], actions["pending"]) == (1, 1)


def test_dunning_with_no_failed_invoice_summarises_none(tmp_path):
    write_rules(tmp_path / "rules", NO_STRIPE_POLICY)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        ensure_invoices_table(con)
    state = _asset_meta(_dunning(tmp_path, T0.isoformat()), "dunning_state")
    assert (state["dagster/row_count"], state["summary"]) == (0, "_none_")


def test_a_dunning_clock_that_is_no_time_names_the_config_field(tmp_path):
    write_rules(tmp_path / "rules", NO_STRIPE_POLICY)
    result = _dunning(tmp_path, "next tuesday", raise_on_error=False)
    assert not result.success
    failures = [str(e.event_specific_data) for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures and "dunning config now: 'next tuesday' is not an ISO 8601 time" in failures[0]


# -- finance_report -----------------------------------------------------------------------------------------

def test_the_finance_report_goes_under_the_resources_data_folder(tmp_path, isolated_env):
    """ProjectPaths.data_dir elsewhere than $METERING_DATA_DIR: the report folder is under it; its row
    count is the report's lines (the scenario's 4 usage rows). Kills: `data` ignoring data_dir; row count."""
    from pipelines.defs.reconciliation.assets import reconcile_and_report

    with warehouse.open_warehouse() as con:
        write_scenario(con)
    elsewhere = tmp_path / "elsewhere"
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [reconcile_and_report], partition_key="2026-10-01", instance=instance, raise_on_error=False,
            resources={"warehouse": WarehouseResource(), "paths": ProjectPaths(data_dir=str(elsewhere))},
            run_config={"ops": {"usage_reconciliation": {"config": {"max_unexplained_minor": 125}}}})
    assert result.success
    assert (elsewhere / "reports" / "2026-10" / "report.html").exists()
    assert not (isolated_env / "reports").exists()
    report = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()
              if e.event_specific_data.materialization.asset_key == dg.AssetKey("finance_report")][0]
    assert report.metadata["folder"].value == str(elsewhere / "reports" / "2026-10")
    assert report.metadata["dagster/row_count"].value == 4


# -- rated_usage --------------------------------------------------------------------------------------------

def test_customer_plans_counts_customers_not_assignments(tmp_path):
    """One customer moving from starter to scale on 2026-10-11: two assignment rows, one customer.
    Kills: `customers` as the row count."""
    from tests.pipelines.rating.test_rating_assets import HEADER

    csv = tmp_path / "customers.csv"
    csv.write_text(HEADER + "a,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                            "a,A,a@a.test,usd,,scale,2026-10-11,succeeds\n")
    resources = {"warehouse": WarehouseResource(path=str(tmp_path / "wh.duckdb")),
                 "paths": ProjectPaths(rules_dir=str(PROJECT_ROOT / "rating_rules"), customers=str(csv))}
    with dg.instance_for_test() as instance:
        result = dg.materialize([customer_plans], resources=resources, instance=instance)
    meta = _asset_meta(result, "customer_plans")
    assert (meta["dagster/row_count"], meta["customers"]) == (2, 1)


def test_rated_usage_reports_the_hash_of_the_rules_it_rated_with_and_an_empty_month_as_empty(tmp_path):
    """The resource reads a copy of the rules (as `demo --rules` does): each materialization records that
    folder's rules_hash, not the code location's version text. A month in which no period starts (the one
    customer starts on 2026-10-01, September is rated) has 0 lines and no totals; its previews are 0 rows
    and the previews check passes.
    Kills: rules_hash from the code version; a row count of 1 for an empty month."""
    import shutil

    from metering.rules.plans import load_rules
    from pipelines.defs.rating.assets import invoice_previews, rated_usage
    from tests.pipelines.rating.test_rating_assets import HEADER, add_events

    rules = tmp_path / "rules"
    shutil.copytree(PROJECT_ROOT / "rating_rules", rules)
    csv = tmp_path / "customers.csv"
    csv.write_text(HEADER + "a,A,a@a.test,usd,,starter,2026-10-01,succeeds\n")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        add_events(con, "a", "api_calls", "2026-10-05 10:00:00+00", n=3, props='{"region":"us"}')
    resources = {"warehouse": WarehouseResource(path=str(tmp_path / "wh.duckdb")),
                 "paths": ProjectPaths(rules_dir=str(rules), customers=str(csv))}
    with dg.instance_for_test() as instance:
        assert dg.materialize([customer_plans], resources=resources, instance=instance).success
        assert dg.materialize([usage_aggregates], partition_key="2026-10-05", resources=resources,
                              instance=instance).success
        october = dg.materialize([rated_usage], partition_key="2026-10-01", resources=resources, instance=instance)
        september = dg.materialize([rated_usage, invoice_previews], partition_key="2026-09-01",
                                   resources=resources, instance=instance)
    assert _asset_meta(october, "rated_usage")["rules_hash"] == load_rules(rules).rules_hash
    empty = _asset_meta(september, "rated_usage")
    assert (empty["dagster/row_count"], empty["customers"], empty["totals"]) == (0, 0, {})
    assert _asset_meta(september, "invoice_previews")["dagster/row_count"] == 0
    assert [c.passed for c in september.get_asset_check_evaluations()] == [True, True]


def test_invoice_previews_are_downstream_of_rated_usage():
    """Previews are computed from the stored rated lines: a re-rated month must mark them stale, and a job
    selecting both must run the rating first. Kills: the dependency dropped."""
    from pipelines.defs.rating.assets import invoice_previews

    assert dg.AssetKey("rated_usage") in invoice_previews.asset_deps[dg.AssetKey("invoice_previews")]


# -- usage_reconciliation -----------------------------------------------------------------------------------

def test_recon_metadata_states_the_threshold_tolerance_and_unbilled_pending(isolated_env, monkeypatch):
    """The scenario (periods 2026-10-01 .. 2026-11-01, ended before today) at threshold 125: the check
    states threshold 125, the reconciliation the default tolerance (1 minor unit per line, no
    per-currency override), and the report no unbilled charge of a period not yet ended (0) beside the
    50 of cus_a's ended period. Kills: threshold, tolerance or unbilled_pending metadata wrong."""
    from test_reconciliation_assets import _run as _reconcile

    for name in ("METERING_RECONCILE_TOLERANCE_MINOR", "METERING_TOLERANCE_MINOR"):
        monkeypatch.delenv(name, raising=False)
    result = _reconcile(isolated_env, max_unexplained=125)
    assert result.success
    [check] = result.get_asset_check_evaluations()
    assert check.metadata["threshold_minor"].value == 125
    mats = {e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization
            for e in result.get_asset_materialization_events()}
    assert mats["usage_reconciliation"].metadata["tolerance"].value == "1 minor unit(s) per line, every currency"
    report = mats["finance_report"].metadata
    assert (report["usd/unbilled_minor"].value, report["usd/unbilled_pending_minor"].value) == (50, 0)


# -- defects found by reading (fixed in the thirtieth session; each failed on the code before) ------------

def test_a_negative_push_concurrency_on_the_resource_means_the_environments(monkeypatch):
    """StripeResource's docstring: a concurrency of 0 or less = the STRIPE_PUSH_CONCURRENCY environment
    default. -1 with STRIPE_PUSH_CONCURRENCY=3 is 3 (it was passed on, and PushConfig refused it)."""
    monkeypatch.setenv("STRIPE_PUSH_CONCURRENCY", "3")
    assert StripeResource(push_concurrency=-1).push_config().concurrency == 3
    assert StripeResource(push_concurrency=0).push_config().concurrency == 3


def test_a_meter_window_the_resource_cannot_use_names_the_resource_field(monkeypatch):
    """settings() names the resource's own fields (`StripeResource.read_timeout: ...`); push_config() does
    too: the user set `meter_window: week` in run config, not --window nor STRIPE_METER_WINDOW (which the
    message named). A push rate that is no number (NaN) is refused the same way: it compared as not >= 0
    and quietly became the environment's rate."""
    from metering.errors import BadInputError

    monkeypatch.delenv("STRIPE_METER_WINDOW", raising=False)
    with pytest.raises(BadInputError, match=r"^StripeResource\.meter_window: 'week' is not one of day, hour "):
        StripeResource(meter_window="week").push_config()
    with pytest.raises(BadInputError, match=r"^StripeResource\.push_rate: nan is not a number of calls per second"):
        StripeResource(push_rate=float("nan")).push_config()
    assert StripeResource(meter_window="hour").push_config().window_kind == "hour"


# -- stripe_invoice_lines -----------------------------------------------------------------------------------

def test_the_invoice_pull_counts_lines_as_its_rows_and_invoices_apart(stripe_sandbox, isolated_env):
    """One finalized October invoice of acme with two items (400 and 600): the asset's rows are the 2
    lines, its invoices 1. Kills: the row count taken from the invoices."""
    from pipelines.defs.reconciliation.assets import stripe_invoice_lines
    from test_pulls_sandbox import _ts

    client = stripe_sandbox.client()
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts("2026-10-15T00:00:00")})
    acme = client.v1.customers.create({"name": "Acme", "metadata": {"customer_id": "acme"}, "test_clock": clock.id})
    invoice = client.v1.invoices.create({"customer": acme.id, "currency": "usd", "auto_advance": False})
    for amount in (400, 600):
        client.v1.invoice_items.create({"customer": acme.id, "amount": amount, "currency": "usd",
                                        "invoice": invoice.id})
    client.v1.invoices.finalize_invoice(invoice.id)
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [stripe_invoice_lines], partition_key="2026-10-01", instance=instance,
            resources={"warehouse": WarehouseResource(), "stripe": StripeResource(base_url=stripe_sandbox.base_url)},
            run_config={"ops": {"stripe_invoice_lines": {"config": {"pull_rate": 0}}}})
    meta = _asset_meta(result, "stripe_invoice_lines")
    assert (meta["dagster/row_count"], meta["invoices"], meta["misattributed_invoices"]) == (2, 1, 0)
