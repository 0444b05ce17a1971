"""CLI errors: one line and the documented exit code, never a traceback."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from metering import warehouse
from metering.cli import cli


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_stripe_is_exit_5_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_unreachable0000")
    monkeypatch.setenv("STRIPE_API_BASE", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setenv("STRIPE_MAX_NETWORK_RETRIES", "0")
    with warehouse.open_warehouse():   # sync without --customers reads the warehouse's list: it must exist
        pass
    result = CliRunner().invoke(cli, ["stripe", "sync"])
    assert result.exit_code == 5
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "APIConnectionError" in lines[0] and "Traceback" not in result.output
    assert "unreachable0000" not in result.output


@pytest.mark.parametrize("args, code, text", [
    # every invalid invocation is a usage error (2), like click's own, whichever check finds it
    (["stripe", "push"], 2, "give --date"),
    (["stripe", "push", "--date", "2026-11-01", "--from", "2026-11-01"], 2, "not both"),
    (["stripe", "push", "--from", "2026-11-05", "--to", "2026-11-01"], 2, "before"),
    (["stripe", "push", "--date", "2026-02-30"], 2, "not a date"),
    (["stripe", "push", "--date", "2026-11-01", "--rate", "-1"], 2, "--rate"),
    (["stripe", "push", "--date", "2026-11-01", "--concurrency", "0"], 2, "--concurrency"),
    (["bench", "push", "--customers", "0"], 2, "--customers"),
])
def test_bad_push_options(monkeypatch: pytest.MonkeyPatch, args, code, text) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_unused000000")
    monkeypatch.setenv("STRIPE_API_BASE", f"http://127.0.0.1:{_closed_port()}")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code and text in result.output


def test_missing_key_is_bad_input() -> None:
    result = CliRunner().invoke(cli, ["stripe", "push", "--date", "2026-11-01"])
    assert result.exit_code == 3 and "STRIPE_API_KEY is not set" in result.output


def test_a_push_that_leaves_a_customer_unsynced_is_exit_5(tmp_path, rules_dir, monkeypatch: pytest.MonkeyPatch) -> None:
    """Usage of a listed customer not synced to Stripe (globex, its map row gone) is not pushed, so not
    billed: the push said so in a warning and exited 0, where `stripe invoice-items` exits 5 for the same
    customer (audit). A customer not in the list (stranger) is no sync's to fix, and the rating's check
    all_usage_priced names it: counted apart (unlisted), not exit 5 (review)."""
    import datetime as dt

    from push_world import CUSTOMERS_CSV, NOW, day_start, make_world
    from metering.stripe_sandbox.testing import running_sandbox

    db = tmp_path / "wh.duckdb"
    day = dt.date(2026, 11, 18)
    with running_sandbox(now=int(NOW.timestamp())) as sb:
        monkeypatch.setenv("STRIPE_API_KEY", sb.api_key)
        monkeypatch.setenv("STRIPE_API_BASE", sb.base_url)
        with warehouse.open_warehouse(db) as con:
            world = make_world(con, sb, rules_dir, tmp_path, CUSTOMERS_CSV)
            world.add_events([("acme", "api_calls", day_start(day) + dt.timedelta(hours=2), None, {"region": "us"}),
                              ("stranger", "api_calls", day_start(day) + dt.timedelta(hours=3), None, {"region": "us"})])
        args = ["stripe", "push", "--date", "2026-11-18", "--warehouse", str(db), "--rate", "0"]
        unlisted = CliRunner().invoke(cli, args)
        assert unlisted.exit_code == 0, unlisted.output
        assert "0 unmapped, 1 unlisted" in unlisted.output
        with warehouse.open_warehouse(db) as con:
            world.con = con
            world.add_events([("globex", "api_calls", day_start(day) + dt.timedelta(hours=4), None, {"region": "eu"})])
            con.execute("DELETE FROM stripe_customer_map WHERE customer_id = 'globex'")
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 5, result.output
        error = result.output.split("error:")[-1]
        assert "1 window(s) of customers not synced to Stripe, not pushed: run `metering stripe sync`" in error
        assert "failed" not in error and "held" not in error
        with warehouse.open_warehouse(db, read_only=True) as con:   # the synced customer's window went out
            assert con.execute("SELECT customer_id, status FROM stripe_push_ledger").fetchall() == [("acme", "acknowledged")]
