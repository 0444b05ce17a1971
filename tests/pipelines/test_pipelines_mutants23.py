"""Gaps found by a hand mutation audit of pipelines/defs (mutants23): the hourly schedule leaves out a day
whatever in-flight status its run has and never asks for yesterday twice; the reconciliation's run config
of 0 (threshold, settle delay, pull rate) overrides the environment; push_settled fails on windows left
unknown; a month's rating depends on the next month's aggregates; the preview check is blocking; the
dunning checks see a pending step and a duplicated ledger row.

Real Dagster instances, real DuckDB and the Stripe sandbox on loopback; scenarios and materialize helpers
are the neighbouring tests' (tests/metering/reconcile and tests/metering/dunning are put on sys.path, as
pytest does for their own tests)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import dagster as dg
import pytest

from metering import warehouse
from metering.stripe_sandbox.testing import running_sandbox
from pipelines.definitions import defs
from pipelines.defs.rating.assets import (
    PREVIEW_TOTALS_CHECK, customer_plans, invoice_previews, rated_usage, usage_aggregates,
)
from pipelines.defs.reconciliation.assets import UNEXPLAINED_CHECK, ReconcileConfig, _settings
from pipelines.defs.stripe_push.assets import stripe_catalog, stripe_usage_pushes
from pipelines.defs.webhooks.dunning_assets import ACTIONS_ONCE_CHECK, NO_PENDING_CHECK
from pipelines.partitions import daily_usage, monthly_billing
from pipelines.resources import StripeResource
from pipelines.resources import ProjectPaths, WarehouseResource
from tests.pipelines.manifest import record_manifest
from tests.pipelines.rating.test_rating_assets import HEADER, PROJECT_ROOT, add_events
from tests.pipelines.stripe_push.test_stripe_push_assets import CSV, _events, _resources, day_pushed
from tests.pipelines.ticks import schedule_tick, yesterday_and_today
from tests.pipelines.webhooks.test_webhook_pipeline import _fail_landing_run, deliver, dunning_lifecycle
from tests.pipelines.webhooks.test_webhook_pipeline import _tick as _sensor_tick

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "metering" / "reconcile"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "metering" / "dunning"))
from dunning_helpers import NO_STRIPE_POLICY, T0, ensure_invoices_table, put_invoice, write_rules  # noqa: E402
from test_dunning_assets import _run as _dun  # noqa: E402  (both dunning assets, no Stripe, outbox under out/)
from test_reconciliation_assets import _run as _reconcile  # noqa: E402  (scenario: 125 minor units unexplained)


# -- hourly_usage_schedule: every in-flight status keeps the day out ------------------------------------

def _hourly_origin():
    """Where the daemon would launch an hourly run from: a QUEUED run must name its code location."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    location = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="pipelines.definitions"))
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, "__repository__"), "hourly_usage_job")


@pytest.mark.parametrize("status", [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING,
                                    dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING])
def test_a_day_whose_hourly_run_is_queued_or_running_is_not_asked_for_again(status):
    """The existing test only has a run that was created and never launched (NOT_STARTED): a run the
    queue holds, or one starting, running or being canceled, must keep its day out of the next tick too
    (else each hour adds a run of the same day behind the one writer slot). Kills: QUEUED, or STARTED,
    dropped from IN_FLIGHT."""
    at = dt.datetime(2026, 11, 1, 1, 10, tzinfo=dt.UTC)   # yesterday and today: 2026-10-31, 2026-11-01
    with dg.instance_for_test() as instance:
        instance.create_run_for_job(job_def=defs.resolve_job_def("hourly_usage_job"), status=status,
                                    remote_job_origin=_hourly_origin(), tags={"dagster/partition": "2026-11-01"})
        assert [r.partition_key for r in schedule_tick("hourly_usage_schedule", instance, at)] == ["2026-10-31"]


def test_yesterday_with_open_windows_is_requested_once_not_twice():
    """Yesterday's newest push left a window open: yesterday is asked for anyway (it is one of the two
    recent days), so the tick requests yesterday and today once each, not yesterday again as a late day
    (the same run key twice). Kills: `day <= recent[0]` for `day < recent[0]` in the late days."""
    now = dt.datetime.now(dt.UTC).replace(minute=10, second=0, microsecond=0)
    yesterday = (now.date() - dt.timedelta(days=1)).isoformat()
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key="stripe_usage_pushes", partition=yesterday, metadata={"open_windows": 1}))
        requests = schedule_tick("hourly_usage_schedule", instance, now)
    assert [r.partition_key for r in requests] == yesterday_and_today(now)
    assert len({r.run_key for r in requests}) == 2


# -- reconciliation: a run config of 0 is a value, -1 keeps the environment's ------------------------

def test_a_threshold_of_zero_in_run_config_fails_the_check_the_environments_500_would_pass(
        isolated_env, monkeypatch):
    """The scenario leaves 125 minor units (USD) unexplained. The environment allows 500; the run
    config asks for 0, so the blocking check must fail (125 > 0), and say its threshold is 0. Kills:
    `max_unexplained_minor <= 0` keeping the environment's value (a run told to tolerate nothing passed)."""
    monkeypatch.setenv("METERING_RECON_MAX_UNEXPLAINED_MINOR", "500")
    result = _reconcile(isolated_env, max_unexplained=0)
    [check] = result.get_asset_check_evaluations()
    assert (check.check_name, check.passed, check.metadata["threshold_minor"].value) == (UNEXPLAINED_CHECK, False, 0)
    assert check.metadata["unexplained_minor/usd"].value == 125
    assert not result.success


def test_a_threshold_of_minus_one_in_run_config_keeps_the_environments(isolated_env, monkeypatch):
    """Same scenario, run config -1: the environment's 500 applies and the check passes (125 <= 500)."""
    monkeypatch.setenv("METERING_RECON_MAX_UNEXPLAINED_MINOR", "500")
    result = _reconcile(isolated_env, max_unexplained=-1)
    [check] = result.get_asset_check_evaluations()
    assert (check.passed, check.metadata["threshold_minor"].value, check.metadata["unexplained_minor/usd"].value) \
        == (True, 500, 125)
    assert result.success


def test_a_settle_delay_of_zero_in_run_config_overrides_the_environment(monkeypatch):
    """METERING_STRIPE_SETTLE_SECONDS=120, run config 0: no settle delay (0 seconds), not 120; -1 keeps 120.
    Kills: `settle_seconds <= 0` keeping the environment's value."""
    monkeypatch.setenv("METERING_STRIPE_SETTLE_SECONDS", "120")
    assert _settings(ReconcileConfig(settle_seconds=0)).settle_seconds == 0
    assert _settings(ReconcileConfig(settle_seconds=-1)).settle_seconds == 120


def test_a_pull_rate_of_zero_in_run_config_lifts_the_stripe_resources_limit(monkeypatch):
    """The Stripe resource pushes at 5 calls/s, which pulls share by default; run config pull_rate 0
    means no limit (0), not the resource's 5. Kills: `pull_rate > 0` for `>= 0`."""
    monkeypatch.delenv("METERING_STRIPE_PULL_RATE", raising=False)
    stripe = StripeResource(base_url="http://127.0.0.1:9", push_rate=5.0)
    assert _settings(ReconcileConfig(pull_rate=0), stripe).pull_rate == 0
    assert _settings(ReconcileConfig(), stripe).pull_rate == 5


# -- stripe_usage_pushes: a window whose outcome is unknown is not settled ------------------------------

def _push_a_day(tmp_path, rules_dir, break_stripe) -> dg.ExecuteInProcessResult:
    """Two days ago's four events (two windows: api_calls, tokens) aggregated, then pushed after
    `break_stripe(sandbox)` set Stripe up to misbehave (`day_pushed`, the neighbouring push tests')."""
    day = (dt.datetime.now(dt.UTC) - dt.timedelta(days=2)).date()
    with running_sandbox() as sb, dg.instance_for_test() as instance:
        return day_pushed(tmp_path, rules_dir, sb, instance, day, break_stripe)[1]


def test_a_push_whose_outcome_stripe_left_unknown_fails_the_push_settled_check(tmp_path, rules_dir):
    """Stripe answers every meter event with a 500 it says not to retry: we cannot know whether it
    applied them, so both windows of the day stay `unknown`, the day reports 2 open windows and the
    push_settled check fails (warns). Kills: `unknown` left out of the check's open windows
    (`open_left = pending + sent`): the check passed with usage Stripe may never have counted."""
    pushed = _push_a_day(tmp_path, rules_dir, lambda sb: sb.inject_fault(
        "server_error", path="/v1/billing/meter_events", method="POST", should_retry=False))
    assert pushed.success   # the push materializes; the check warns
    meta = pushed.asset_materializations_for_node("stripe_usage_pushes")[0].metadata
    assert (meta["unknown"].value, meta["acknowledged"].value, meta["open_windows"].value) == (2, 0, 2)
    [check] = pushed.get_asset_check_evaluations()
    assert (check.passed, check.metadata["unknown"].value, check.metadata["pending"].value) == (False, 2, 0)




def test_a_push_on_a_test_clock_not_told_to_advance_leaves_the_clock_where_it_is(tmp_path, rules_dir):
    """The customer sits on a test clock frozen at 2026-10-01 00:00 UTC and the resource does not ask
    for it to be advanced (advance_test_clock False): pushing 2026-10-05 must not move the clock (moving
    a test clock bills every subscription on it up to the new time). The existing test only covers
    advance_test_clock True. Kills: `day_by_day` ignoring advance_test_clock."""
    day = dt.date(2026, 10, 5)
    oct1 = int(dt.datetime(2026, 10, 1, tzinfo=dt.UTC).timestamp())
    (tmp_path / "customers.csv").write_text(CSV)
    with running_sandbox() as sb, dg.instance_for_test() as instance:
        clock = sb.client().v1.test_helpers.test_clocks.create({"frozen_time": oct1})
        resources = _resources(tmp_path, rules_dir, sb.base_url, test_clock=clock.id, advance_test_clock=False)
        assert dg.materialize([customer_plans, stripe_catalog], resources=resources, instance=instance).success
        with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
            warehouse.insert_frame(con, "usage_events", _events(day))
            record_manifest(con)
        assert dg.materialize([usage_aggregates, stripe_usage_pushes], resources=resources, instance=instance,
                              partition_key=day.isoformat()).success
        assert sb.client().v1.test_helpers.test_clocks.retrieve(clock.id).frozen_time == oct1

# -- rating: what a month's rating depends on, and what its preview check stops --------------------------

def test_a_months_rating_depends_on_the_daily_aggregates_of_that_month_and_the_next():
    """September's partition holds anchored periods that end in October (Sep 15 - Oct 15), so rated_usage
    2026-09-01 depends on usage_aggregates 2026-09-01 .. 2026-10-31: 30 + 31 = 61 days (late October
    events then mark it changed). Kills: `end_offset=0` (30 days: October's late usage never shows
    September as stale; the rating itself reads by time range, so no existing test noticed)."""
    mapping = rated_usage.get_partition_mapping(dg.AssetKey("usage_aggregates"))
    upstream = mapping.get_upstream_mapped_partitions_result_for_partitions(
        monthly_billing.subset_with_partition_keys(["2026-09-01"]), monthly_billing, daily_usage).partitions_subset
    days = sorted(upstream.get_partition_keys())
    assert (len(days), days[0], days[-1]) == (61, "2026-09-01", "2026-10-31")


def test_the_preview_totals_check_blocks_what_follows_the_previews():
    """A preview whose total is not the sum of its lines must stop the run (the invoice items and the
    snapshot after it), not warn: the check is blocking. The check cannot fail on sound data (the asset
    writes the previews from the lines it then compares), so its spec is what is checked. Kills:
    `blocking=False`."""
    [spec] = invoice_previews.check_specs
    assert (spec.name, spec.blocking) == (PREVIEW_TOTALS_CHECK, True)



def test_rated_usage_reports_customers_not_lines_and_unpriced_hourly_rows(tmp_path):
    """Two customers on starter (a with 3 api calls on Oct 5, b with none) and an unknown customer
    with one call at 10:00 and one at 11:00 that day. The data team reads: customers 2 (a and b, each
    with its lines: not the number of lines), and 2 unpriced hourly rows (the unknown customer's two
    hours), under the reason unknown_customer. Kills: `customers` as the line count, and
    `unpriced_usage_rows` as the number of unpriced groups (1) rather than their hourly rows."""
    csv = tmp_path / "customers.csv"
    csv.write_text(HEADER + "a,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                            "b,B,b@b.test,usd,,starter,2026-01-01,succeeds\n")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        add_events(con, "a", "api_calls", "2026-10-05 10:00:00+00", n=3, props='{"region":"us"}')
        add_events(con, "ghost", "api_calls", "2026-10-05 10:00:00+00", props='{"region":"us"}')
        add_events(con, "ghost", "api_calls", "2026-10-05 11:00:00+00", props='{"region":"us"}')
    resources = {"warehouse": WarehouseResource(path=str(tmp_path / "wh.duckdb")),
                 "paths": ProjectPaths(rules_dir=str(PROJECT_ROOT / "rating_rules"), customers=str(csv))}
    with dg.instance_for_test() as instance:
        assert dg.materialize([customer_plans], resources=resources, instance=instance).success
        assert dg.materialize([usage_aggregates], partition_key="2026-10-05", resources=resources,
                              instance=instance).success
        rated = dg.materialize([rated_usage], partition_key="2026-10-01", resources=resources, instance=instance)
    meta = rated.asset_materializations_for_node("rated_usage")[0].metadata
    assert (meta["customers"].value, meta["unpriced_usage_rows"].value) == (2, 2)
    [check] = rated.get_asset_check_evaluations()
    assert (check.passed, check.metadata["unpriced_hourly_rows"].value, check.metadata["reasons"].value) == (
        False, 2, ["unknown_customer"])

# -- dunning_actions: a step that could not be done is reported pending ------------------------------------

def reminder_that_cannot_be_written(tmp_path: Path) -> None:
    """One failed invoice (in_1) under the no-Stripe policy, and an outbox path that is a file, not a
    folder: the day-0 reminder cannot be written, so its ledger row stays pending."""
    write_rules(tmp_path / "rules", NO_STRIPE_POLICY)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        ensure_invoices_table(con)
        put_invoice(con, "in_1")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "outbox").write_text("not a folder")


def test_a_reminder_that_cannot_be_written_is_reported_pending_by_the_check(tmp_path):
    """The outbox path is a file, not a folder: the day-0 reminder of the one failed invoice cannot be
    written, so its ledger row stays pending (the next run retries it) and the no_pending_actions check
    fails with pending 1, as a warning (the run succeeds; each_action_once still passes). Kills: the
    pending count not read from the ledger (the check passed while a customer was never reminded)."""
    reminder_that_cannot_be_written(tmp_path)
    result = _dun(tmp_path, T0.isoformat())
    assert result.success
    checks = {c.check_name: (c.passed, {k: v.value for k, v in c.metadata.items()})
              for c in result.get_asset_check_evaluations()}
    assert checks == {ACTIONS_ONCE_CHECK: (True, {"duplicate_keys": 0}), NO_PENDING_CHECK: (False, {"pending": 1})}
    # a warning, not an error: the next run retries the step, and nothing downstream is stopped or paged
    # (an ERROR severity also lets the run succeed; mutants27 found it unchecked)
    [pending] = [c for c in result.get_asset_check_evaluations() if c.check_name == NO_PENDING_CHECK]
    assert pending.severity == dg.AssetCheckSeverity.WARN
    with warehouse.open_warehouse(tmp_path / "wh.duckdb", read_only=True) as con:
        assert con.execute("SELECT step_name, status FROM dunning_actions").fetchall() == [("first_reminder", "pending")]


def test_an_action_recorded_twice_fails_the_blocking_check_and_the_run(tmp_path):
    """The day-0 reminder's ledger row stored twice (the table has no key constraint: a second writer,
    a restore): the next run must stop, as each_action_once is blocking, and name that check; one
    duplicated key is enough (2 rows > 1). Kills: the duplicate test `len > 2`, and `blocking=False`
    (the run went on, and the snapshot after it was published)."""
    write_rules(tmp_path / "rules", NO_STRIPE_POLICY)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        ensure_invoices_table(con)
        put_invoice(con, "in_1")
    assert _dun(tmp_path, T0.isoformat()).success
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        con.execute("INSERT INTO dunning_actions SELECT * FROM dunning_actions")
        assert con.execute("SELECT idempotency_key, count(*) FROM dunning_actions GROUP BY 1").fetchall() == [
            ("dunning:in_1:first_reminder", 2)]
    with pytest.raises(dg.DagsterError, match=f"(?s)blocking asset check failed.*dunning_actions: {ACTIONS_ONCE_CHECK}"):
        _dun(tmp_path, T0.isoformat())


# -- stripe_landing_sensor: the cursor follows the folder ---------------------------------------------------

def test_a_landing_file_removed_from_the_folder_drops_out_of_the_cursor_and_a_new_one_is_landed(tmp_path):
    """Three webhooks land in a file and request a run; the file is then removed (archived): the next
    tick asks for nothing and its cursor no longer lists the file; a new file of one webhook (smaller
    than the old one) then requests a run. Kills: the cursor written with the old sizes when nothing
    grew (a file removed stayed in the cursor forever, and a new one under its name went unseen until
    it outgrew the old size)."""
    sensor = defs.resolve_sensor_def("stripe_landing_sensor")
    folder = tmp_path / "data" / "landing" / "stripe"
    with dg.instance_for_test() as instance:
        deliver(tmp_path, dunning_lifecycle()[:3])
        first = _sensor_tick(sensor, instance, tmp_path, None)
        assert len(first.run_requests) == 1
        for landed in folder.iterdir():
            landed.unlink()
        emptied = _sensor_tick(sensor, instance, tmp_path, first.cursor)
        assert emptied.run_requests == []
        assert json.loads(emptied.cursor)["sizes"] == {}
        deliver(tmp_path, dunning_lifecycle()[3:4])
        assert len(_sensor_tick(sensor, instance, tmp_path, emptied.cursor).run_requests) == 1



def test_a_failed_landing_run_dagster_will_retry_is_not_requested_again_by_the_sensor(tmp_path):
    """With run retries on (as dagster.yaml has them), a failed landing run is re-run by Dagster: the
    sensor's next tick, with no new webhooks, must wait for that retry, not request attempt 2 beside it
    (two runs landing the same files). mutants20 covers the same wait when files grew (`_in_flight`);
    this is the follow-up path. Kills: `_follow_up` ignoring `is_complete_and_waiting_to_retry`."""
    sensor = defs.resolve_sensor_def("stripe_landing_sensor")
    with dg.instance_for_test(overrides={"run_retries": {"enabled": True, "max_retries": 1}}) as instance:
        deliver(tmp_path, dunning_lifecycle()[:3])
        first = _sensor_tick(sensor, instance, tmp_path, None)
        [request] = first.run_requests
        _fail_landing_run(instance, tmp_path, run_key=request.run_key)
        [failed] = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/run_key": request.run_key}))
        assert failed.is_complete_and_waiting_to_retry
        assert _sensor_tick(sensor, instance, tmp_path, first.cursor).run_requests == []
