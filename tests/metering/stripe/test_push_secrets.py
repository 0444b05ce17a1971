"""I16: the API key never appears in logs (any level, stripe-python debug included), CLI output,
error text or warehouse tables. A canary key is planted and searched for."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest
from click.testing import CliRunner

from push_world import CUSTOMERS_CSV, NOW, World, day_start, make_world
from metering import warehouse
from metering.cli import cli
from metering.stripe_sandbox.testing import running_sandbox

CANARY = "sk_test_CANARYc4n4ry0000xyzzy"
CANARY_TAIL = "c4n4ry0000xyzzy"   # also never a fragment


def _scan_tables(db: Path) -> list[str]:
    hits = []
    with warehouse.open_warehouse(db, read_only=True) as con:
        tables = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()]
        for table in tables:
            text = con.execute(f'SELECT CAST(list(t) AS VARCHAR) FROM "{table}" t').fetchone()[0] or ""
            if CANARY_TAIL in text:
                hits.append(table)
    return hits


def test_the_key_never_leaks(tmp_path: Path, rules_dir: Path, monkeypatch: pytest.MonkeyPatch,
                             caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "wh.duckdb"
    monkeypatch.setenv("STRIPE_API_KEY", CANARY)
    monkeypatch.setenv("METERING_WAREHOUSE", str(db))
    caplog.set_level(logging.DEBUG)
    with running_sandbox(api_key=CANARY, now=int(NOW.timestamp())) as sb:
        monkeypatch.setenv("STRIPE_API_BASE", sb.base_url)
        logging.getLogger("stripe").setLevel(logging.DEBUG)
        with warehouse.open_warehouse(db) as con:
            world: World = make_world(con, sb, rules_dir, tmp_path, CUSTOMERS_CSV)
            day = dt.date(2026, 11, 18)
            world.add_events([("acme", "api_calls", day_start(day) + dt.timedelta(hours=2), None, {"region": "us"})])
            world.pusher().push(day, day)
        runner = CliRunner()
        outputs = []
        for args in (["--log-level", "DEBUG", "stripe", "sync"],
                     ["--log-level", "DEBUG", "stripe", "push", "--date", "2026-11-18"]):
            result = runner.invoke(cli, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            outputs.append(result.output + (result.stderr if result.stderr_bytes is not None else ""))
        # a refused key: the error names the problem, not the key
        monkeypatch.setenv("STRIPE_API_KEY", CANARY + "wrong")
        refused = runner.invoke(cli, ["stripe", "push", "--date", "2026-11-18"])
        assert refused.exit_code != 0
        outputs.append(refused.output + (refused.stderr if refused.stderr_bytes is not None else ""))
    assert any("stripe" in r.name for r in caplog.records)          # stripe-python did log at debug
    logged = "\n".join(r.getMessage() for r in caplog.records) + "\n".join(caplog.text.splitlines())
    assert CANARY_TAIL not in logged
    assert all(CANARY_TAIL not in out for out in outputs)
    assert _scan_tables(db) == []


def test_a_refused_keys_masked_tail_is_in_no_sdk_error_or_log(caplog: pytest.LogCaptureFixture) -> None:
    """Stripe answers a refused key with "Invalid API Key provided: sk_test_********…", the key's last
    characters. A Dagster run stores an asset's exception text as raised (event log, compute logs),
    outside the CLI's log redaction (audit: 'sk_test_********3456' in a run's event log). The client
    masks secrets in error responses before the SDK reads them: its exception and its own debug log of
    the body carry no key shape."""
    import stripe

    from metering.stripe.client import StripeSettings, make_client

    caplog.set_level(logging.DEBUG)
    logging.getLogger("stripe").setLevel(logging.DEBUG)
    with running_sandbox(api_key=CANARY, now=int(NOW.timestamp())) as sb:
        client = make_client(StripeSettings(api_key=CANARY + "wrong", api_base=sb.base_url,
                                            meter_events_base=sb.base_url, max_network_retries=0))
        with pytest.raises(stripe.AuthenticationError) as refused:
            client.v1.customers.list({"limit": 1})
    text = f"{refused.value} {refused.value.user_message} {refused.value.json_body}"
    assert "Invalid API Key provided: [REDACTED]" in text
    assert "sk_test_" not in text and "rong" not in text    # "…wrong": the masked key's tail
    logged = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("stripe"))
    assert "error_message='Invalid API Key provided: [REDACTED]'" in logged   # stripe-python's debug log of it
    assert "sk_test_" not in logged and "rong" not in logged
