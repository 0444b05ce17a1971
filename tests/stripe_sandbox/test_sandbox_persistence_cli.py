"""State persistence to a JSON file, and `metering stripe-sandbox` started as a user would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import stripe

from conftest import ts, wait_until
from metering.stripe_sandbox.testing import running_sandbox

T0 = ts("2026-10-10T00:00:00")


def test_state_survives_a_restart(tmp_path: Path):
    state = tmp_path / "sandbox.json"
    with running_sandbox(state_file=str(state), now=T0) as sb:
        client = sb.client()
        customer = client.v1.customers.create({"name": "Kept", "metadata": {"customer_id": "kept"}})
        meter = client.v1.billing.meters.create({"display_name": "m", "event_name": "metering_m", "default_aggregation": {"formula": "sum"}})
        client.v1.billing.meter_events.create(
            {"event_name": "metering_m", "payload": {"stripe_customer_id": customer.id, "value": "3"}, "identifier": "once"}
        )
    saved = json.loads(state.read_text())
    assert customer.id in saved["objects"]["customer"]
    assert state.stat().st_mode & 0o777 == 0o600  # it holds the endpoints' whsec_ signing secrets
    with running_sandbox(state_file=str(state), now=T0) as sb:
        client = sb.client()
        assert client.v1.customers.retrieve(customer.id).metadata["customer_id"] == "kept"
        summary = client.v1.billing.meters.event_summaries.list(meter.id, {"customer": customer.id, "start_time": T0 - 60, "end_time": T0 + 60})
        assert summary.data[0].aggregated_value == 3
        try:
            client.v1.billing.meter_events.create(
                {"event_name": "metering_m", "payload": {"stripe_customer_id": customer.id, "value": "3"}, "identifier": "once"}
            )
            raise AssertionError("a persisted identifier must still de-duplicate")
        except stripe.InvalidRequestError:
            pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_cli_serves_the_sdk_and_saves_state_when_terminated(tmp_path: Path):
    port = _free_port()
    state = tmp_path / "state.json"
    process = subprocess.Popen(
        [sys.executable, "-c", "from metering.cli import main; main()", "stripe-sandbox", "--port", str(port), "--state", str(state)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy() -> bool:
            try:
                with urllib.request.urlopen(url + "/_sandbox/health", timeout=1) as response:
                    return json.loads(response.read())["ok"]
            except OSError:
                assert process.poll() is None, process.communicate()[1]
                return False

        wait_until(healthy, timeout=30)
        client = stripe.StripeClient("sk_test_anything", base_addresses={"api": url, "meter_events": url})
        customer = client.v1.customers.create({"name": "From the CLI"})
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 0, stderr
    assert f"listening on {url}" in stderr
    assert customer.id in json.loads(state.read_text())["objects"]["customer"]


@pytest.mark.parametrize(("args", "env", "says"), [
    (["--api-key", "sk_live_x"], {}, "Invalid value for '--api-key': the sandbox only accepts test-mode keys"),
    ([], {"STRIPE_SANDBOX_API_KEY": "rk_live_x"}, "test-mode keys (sk_test_...) (from STRIPE_SANDBOX_API_KEY)"),
    # a wrong type was accepted, then failed on every request (or with a TypeError traceback)
    (["--fault", '{"kind": "rate_limit", "rate": "x"}'], {},
     "Invalid value for '--fault': '{\"kind\": \"rate_limit\", \"rate\": \"x\"}': fault field rate: 'x' has the wrong type"),
    (["--fault", "{kind: 1}"], {}, "Invalid value for '--fault': '{kind: 1}': not JSON"),
    (["--fault", "[]"], {}, "'[]': must be a JSON object"),
    (["--fault", '{"kind": "nope"}'], {}, "fault kind must be one of rate_limit"),
    (["--fault", '{"kind": "slow", "rate": 2}'], {}, "rate must be between 0 and 1"),
])
def test_option_values_the_sandbox_cannot_take_are_usage_errors(args: list[str], env: dict, says: str) -> None:
    """Exit 2 as for every other option value (they were exit 3, which means bad input files)."""
    result = subprocess.run(
        [sys.executable, "-c", "from metering.cli import main; main()", "stripe-sandbox", "--port", "0", *args],
        capture_output=True, text=True, timeout=60,
        env={**{k: v for k, v in os.environ.items() if k != "STRIPE_SANDBOX_API_KEY"}, **env},
    )
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert "listening" not in result.stderr


@pytest.mark.parametrize(("args", "code", "says"), [
    (["--port", "70000"], 2, "Invalid value for '--port'"),
    (["--port", "-1"], 2, "Invalid value for '--port'"),
    (["--grace-period", "-5"], 2, "Invalid value for '--grace-period'"),
    (["--now", "-1"], 2, "Invalid value for '--now'"),
    (["--webhook-retry-delays", "a,b"], 2, "Invalid value for '--webhook-retry-delays'"),
    (["--state", "{tmp}/list.json"], 3, "error: --state {tmp}/list.json: not a sandbox state file"),
    (["--state", "{tmp}/text.json"], 3, "error: --state {tmp}/text.json: not a sandbox state file (Expecting value"),
    (["--state", "{tmp}/partial.json"], 3, "error: --state {tmp}/partial.json: not a sandbox state file (no 'objects'"),
    (["--state", "{tmp}/a-file/state.json"], 3, "error: --state {tmp}/a-file/state.json: {tmp}/a-file exists and is not"),
])
def test_bad_options_and_state_files_are_named_before_serving(tmp_path: Path, args, code, says):
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "text.json").write_text("hello\n")
    (tmp_path / "partial.json").write_text('{"customers": 5}')
    (tmp_path / "a-file").write_text("not a folder\n")
    args = [a.format(tmp=tmp_path) for a in args]
    result = subprocess.run(
        [sys.executable, "-c", "from metering.cli import main; main()", "stripe-sandbox", "--port", "0", *args],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == code, result.stderr
    assert says.format(tmp=tmp_path) in result.stderr and "Traceback" not in result.stderr


def test_the_saved_state_is_readable_by_its_owner_only_even_over_a_leftover(tmp_path: Path):
    """The state holds the webhook endpoints' signing secrets: it used to be written with the umask's
    permissions (world-readable under the usual 022), and a temporary file left by a killed save kept
    its own."""
    state = tmp_path / "sandbox.json"
    leftover = tmp_path / "sandbox.json.tmp"
    leftover.write_text("{}")
    leftover.chmod(0o644)
    with running_sandbox(state_file=str(state), now=T0) as sb:
        endpoint = sb.client().v1.webhook_endpoints.create({"url": "http://127.0.0.1:9/hook", "enabled_events": ["*"]})
    assert endpoint.secret.startswith("whsec_") and endpoint.secret in state.read_text()
    assert state.stat().st_mode & 0o777 == 0o600
    assert not leftover.exists()
