"""The Dagster layer (pipelines/defs/reconciliation): real materialize, blocking check stops the report."""

from __future__ import annotations

import dagster as dg
from recon_scenario import invoice_total_is_its_lines, write_scenario

from metering import warehouse
from pipelines.defs.reconciliation.assets import UNEXPLAINED_CHECK, reconcile_and_report
from pipelines.resources import ProjectPaths, WarehouseResource

PARTITION = "2026-10-01"


def _run(isolated_env, max_unexplained: int, selection=None,
         fee_charged: int | None = None) -> dg.ExecuteInProcessResult:
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        if fee_charged is not None:  # Stripe charges cus_a's platform fee (we rate 4900) at this many cents
            con.execute("UPDATE stripe_invoice_lines_api SET amount = ? WHERE line_id = 'il_fee'", [fee_charged])
            invoice_total_is_its_lines(con, "in_a0")   # the fee invoice's totals follow its line
            con.execute("UPDATE stripe_invoices_api SET amount_due = ?, amount_paid = ? WHERE invoice_id = 'in_a0'",
                        [fee_charged, fee_charged])
    with dg.instance_for_test() as instance:
        return dg.materialize(
            [reconcile_and_report],
            selection=selection,
            partition_key=PARTITION,
            instance=instance,
            resources={"warehouse": WarehouseResource(), "paths": ProjectPaths(data_dir=str(isolated_env))},
            run_config={"ops": {"usage_reconciliation": {"config": {"max_unexplained_minor": max_unexplained}}}},
            raise_on_error=False,
        )


def _materialized(result: dg.ExecuteInProcessResult) -> set[str]:
    return {e.event_specific_data.materialization.asset_key.to_user_string()
            for e in result.get_asset_materialization_events()}


def test_blocking_check_fails_the_run_but_finance_still_gets_the_report(isolated_env):
    result = _run(isolated_env, max_unexplained=0)
    assert not result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert (evaluation.check_name, evaluation.passed, evaluation.blocking) == (UNEXPLAINED_CHECK, False, True)
    assert evaluation.metadata["unexplained_minor/usd"].value == 125
    assert _materialized(result) == {"usage_reconciliation", "finance_report"}
    assert (isolated_env / "reports" / "2026-10" / "report.html").exists()


def test_report_alone_is_rendered_from_the_stored_reconciliation(isolated_env):
    result = _run(isolated_env, max_unexplained=0, selection=["finance_report"])
    assert result.success  # the check belongs to usage_reconciliation, which did not run
    assert _materialized(result) == {"finance_report"}


def test_the_report_alone_judges_by_the_settings_the_rows_were_reconciled_with(isolated_env):
    """Review: materialized alone, finance_report judged the rows by its own run config (threshold 0:
    FAILED) where the reconciliation that wrote them passed at 125."""
    assert _run(isolated_env, max_unexplained=125).success
    with dg.instance_for_test() as instance:
        alone = dg.materialize([reconcile_and_report], selection=["finance_report"], partition_key=PARTITION,
                               instance=instance, raise_on_error=False,
                               resources={"warehouse": WarehouseResource(),
                                          "paths": ProjectPaths(data_dir=str(isolated_env))},
                               run_config={"ops": {"usage_reconciliation": {"config": {"max_unexplained_minor": 0}}}})
    assert alone.success
    html = (isolated_env / "reports" / "2026-10" / "report.html").read_text()
    assert "Blocking check for USD: passed" in html and "threshold: 125 minor unit(s)" in html


def test_report_written_when_within_threshold(isolated_env):
    result = _run(isolated_env, max_unexplained=125)
    assert result.success
    mats = {e.event_specific_data.materialization.asset_key.to_user_string(): e.event_specific_data.materialization
            for e in result.get_asset_materialization_events()}
    assert mats["usage_reconciliation"].metadata["dagster/row_count"].value == 4
    assert mats["usage_reconciliation"].metadata["status/amount_mismatch"].value == 1
    assert mats["finance_report"].metadata["usd/money_at_risk_minor"].value == 125
    # cus_a's dimension-filtered tokens charge (50), which Stripe cannot price, has no invoice item yet
    assert mats["finance_report"].metadata["usd/unbilled_minor"].value == 50
    # and no item of ours beyond its charges: no credit due
    assert mats["finance_report"].metadata["usd/credit_due_minor"].value == 0
    assert (isolated_env / "reports" / "2026-10" / "report.html").exists()
    # the report states the run's threshold and the check's verdict (it used the environment's: 0, FAILED)
    summary = (isolated_env / "reports" / "2026-10" / "summary.csv").read_text()
    assert "max_unexplained_minor,,125" in summary
    assert "Blocking check for USD: passed (unexplained 1.25 USD)" in \
        (isolated_env / "reports" / "2026-10" / "report.html").read_text()


def test_a_flat_fee_difference_fails_the_blocking_check(isolated_env):
    """Usage rows within the threshold (125), but Stripe charged a $59 fee where we rate $49: the
    invoice-level +1000 fails the check (it once passed: only usage rows were counted)."""
    result = _run(isolated_env, max_unexplained=125, fee_charged=5900)
    assert not result.success
    [evaluation] = result.get_asset_check_evaluations()
    assert (evaluation.check_name, evaluation.passed) == (UNEXPLAINED_CHECK, False)
    assert evaluation.metadata["unexplained_minor/usd"].value == 125 + 1000
    assert _materialized(result) == {"usage_reconciliation", "finance_report"}


def test_pull_rate_follows_the_stripe_resource_unless_configured(monkeypatch):
    from pipelines.defs.reconciliation.assets import ReconcileConfig, _settings
    from pipelines.resources import StripeResource

    monkeypatch.delenv("METERING_STRIPE_PULL_RATE", raising=False)
    monkeypatch.delenv("STRIPE_PUSH_RATE", raising=False)
    assert _settings(ReconcileConfig(), StripeResource(base_url="http://127.0.0.1:1", push_rate=0.0)).pull_rate == 0
    assert _settings(ReconcileConfig(pull_rate=7), StripeResource(push_rate=0.0)).pull_rate == 7
    monkeypatch.setenv("METERING_STRIPE_PULL_RATE", "5")
    assert _settings(ReconcileConfig(), StripeResource(push_rate=0.0)).pull_rate == 5


def test_run_config_overrides_the_invoice_grace(monkeypatch):
    from pipelines.defs.reconciliation.assets import ReconcileConfig, _settings

    monkeypatch.setenv("METERING_STRIPE_INVOICE_GRACE_SECONDS", "120")
    assert _settings(ReconcileConfig()).invoice_grace_seconds == 120
    assert _settings(ReconcileConfig(invoice_grace_seconds=7200)).invoice_grace_seconds == 7200
    assert _settings(ReconcileConfig(invoice_grace_seconds=0)).invoice_grace_seconds == 0


def test_the_reports_match_rate_metadata_reads_as_the_report_does(isolated_env):
    """A currency with invoice rows and no usage row (cus_f's flat fee in EUR) has no match rate: every
    report file says "n/a", and until the thirty-first session the asset's metadata said "None". USD's
    rate in the scenario is 50.0: of its 4 usage rows, cus_a's two are matched, cus_b's is an
    amount_mismatch and cus_c's is not_pushed (recon_scenario.EXPECTED)."""
    assert _run(isolated_env, max_unexplained=125).success
    with warehouse.open_warehouse() as con:
        con.execute("""INSERT INTO invoice_reconciliation SELECT * REPLACE ('cus_f' AS customer_id, 'eur' AS currency)
                       FROM invoice_reconciliation WHERE customer_id = 'cus_a'""")
    with dg.instance_for_test() as instance:
        alone = dg.materialize([reconcile_and_report], selection=["finance_report"], partition_key=PARTITION,
                               instance=instance, raise_on_error=False,
                               resources={"warehouse": WarehouseResource(),
                                          "paths": ProjectPaths(data_dir=str(isolated_env))})
    assert alone.success
    [report] = [e.event_specific_data.materialization for e in alone.get_asset_materialization_events()]
    assert report.metadata["eur/match_rate_percent"].value == "n/a"
    assert report.metadata["usd/match_rate_percent"].value == "50.0"
