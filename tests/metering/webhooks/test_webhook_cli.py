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
