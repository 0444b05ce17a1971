"""`metering webhooks ...`: clear errors, and `land` works outside Dagster."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from metering.cli import cli
from metering.webhooks.inbox import LandingWriter
from webhook_payloads import body_of, dunning_lifecycle


def test_serve_without_secret_is_a_one_line_bad_input_error(tmp_path: Path):
    result = CliRunner().invoke(cli, ["webhooks", "serve", "--port", "0", "--landing", str(tmp_path)])
    assert result.exit_code == 3
    assert "STRIPE_WEBHOOK_SECRET is not set" in result.output
    assert "Traceback" not in result.output


def test_repair_without_api_key_is_a_bad_input_error(tmp_path: Path):
    result = CliRunner().invoke(cli, ["webhooks", "repair", "--warehouse", str(tmp_path / "w.duckdb")])
    assert result.exit_code == 3
    assert "STRIPE_API_KEY" in result.output


def test_land_reads_the_folder_and_rebuilds_state(tmp_path: Path):
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    for payload in dunning_lifecycle() + dunning_lifecycle()[:1]:
        writer.append(body_of(payload), {})
    writer.close()
    args = ["webhooks", "land", "--landing", str(landing), "--warehouse", str(tmp_path / "w.duckdb")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["landing"]["events_added"] == 9
    assert report["landing"]["duplicate_receipts"] == 1
    assert report["state"] == {"invoices": 1, "invoice_lines": 1, "subscriptions": 1, "payment_attempts": 3}
    again = json.loads(CliRunner().invoke(cli, args).output.strip().splitlines()[-1])
    assert again["landing"]["records_read"] == 0 and again["state"] == report["state"]


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_repair_turns_stripe_failures_into_exit_5_in_one_line(tmp_path: Path, monkeypatch):
    from metering.stripe_sandbox.testing import running_sandbox

    monkeypatch.setenv("STRIPE_MAX_NETWORK_RETRIES", "0")
    warehouse_args = ["--warehouse", str(tmp_path / "w.duckdb")]
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_unreachable0000")
    result = CliRunner().invoke(cli, ["webhooks", "repair", "--api-base", f"http://127.0.0.1:{_closed_port()}",
                                      *warehouse_args])
    assert result.exit_code == 5 and "error: Stripe: APIConnectionError" in result.output
    with running_sandbox(api_key="sk_test_the_right_one") as sandbox:
        monkeypatch.setenv("STRIPE_API_KEY", "sk_test_a_wrong_key0000")
        result = CliRunner().invoke(cli, ["webhooks", "repair", "--api-base", sandbox.base_url, *warehouse_args])
    assert result.exit_code == 5 and "error: Stripe: AuthenticationError (HTTP 401)" in result.output
    assert "Traceback" not in result.output and "a_wrong_key0000" not in result.output


def test_repair_api_base_must_be_a_url(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_unused000000")
    result = CliRunner().invoke(cli, ["webhooks", "repair", "--api-base", "notaurl",
                                      "--warehouse", str(tmp_path / "w.duckdb")])
    assert result.exit_code == 2 and "Invalid value for '--api-base'" in result.output


def test_land_refuses_a_landing_folder_that_does_not_exist(tmp_path: Path, monkeypatch):
    missing = tmp_path / "typo"
    result = CliRunner().invoke(cli, ["webhooks", "land", "--landing", str(missing),
                                      "--warehouse", str(tmp_path / "w.duckdb")])
    assert result.exit_code == 3 and f"error: --landing: {missing} is not a folder" in result.output
    monkeypatch.setenv("METERING_STRIPE_LANDING", str(missing))
    result = CliRunner().invoke(cli, ["webhooks", "land", "--warehouse", str(tmp_path / "w.duckdb")])
    assert result.exit_code == 3 and f"error: $METERING_STRIPE_LANDING: {missing} is not a folder" in result.output
