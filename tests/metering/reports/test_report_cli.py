"""`metering report` and `metering reconcile` through the real CLI group."""

from __future__ import annotations

from click.testing import CliRunner

from metering.cli import cli


def test_report_command_writes_default_folder(reconciled_warehouse, isolated_env):
    result = CliRunner().invoke(cli, ["report", "--period", "2026-10"])
    assert result.exit_code == 0, result.output
    folder = isolated_env / "reports" / "2026-10"
    assert (folder / "report.html").exists() and (folder / "report.xlsx").exists()
    assert "usd: rated 172.00 USD, invoiced 162.76 USD, match rate 33.3%, money at risk 11.15 USD" in result.output


def test_report_command_out_folder(reconciled_warehouse, tmp_path):
    result = CliRunner().invoke(cli, ["report", "--period", "2026-10", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "discrepancies.csv").exists()


def test_bad_period_is_one_line_exit_3(isolated_env):
    result = CliRunner().invoke(cli, ["report", "--period", "October"])
    assert result.exit_code == 3
    assert result.output.strip() == "error: --period: 'October' is not a month like 2026-10"


def test_reconcile_without_stripe_on_empty_warehouse(isolated_env):
    result = CliRunner().invoke(cli, ["reconcile", "--period", "2026-10", "--no-pull"])
    assert result.exit_code == 0, result.output
    assert "reconciled 2026-10: 0 customer x meter rows, 0 invoices" in result.output


def test_reconcile_pull_without_key_is_bad_input(isolated_env):
    result = CliRunner().invoke(cli, ["reconcile", "--period", "2026-10"])
    assert result.exit_code == 3
    assert "STRIPE_API_KEY is not set" in result.output
