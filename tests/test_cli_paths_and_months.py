"""Audit findings on the CLI's edges: demo months it cannot run, paths of the wrong kind, re-rating usage
that nothing prices, a busy port, the fields of terminal log lines and secrets as Stripe masks them.
Each was a traceback, a silent success or a leak; each is now one line and the README's exit code."""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from metering import warehouse
from metering.cli import cli
from tests.pipelines.manifest import record_manifest

RULES = Path(__file__).resolve().parent.parent / "rating_rules"


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The console entry point in a real process: its stderr and exit code are what a user gets."""
    return subprocess.run([sys.executable, "-c", "from metering.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _month(day: dt.date, months: int) -> str:
    index = day.year * 12 + day.month - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


# --- 1. demo --month ---------------------------------------------------------------------------


def test_the_demo_runs_the_months_from_the_partitions_start_to_the_last_that_ended() -> None:
    from pipelines.demo import demo_months

    assert demo_months(dt.date(2026, 11, 27)) == (dt.date(2026, 1, 1), dt.date(2026, 10, 1))
    assert demo_months(dt.date(2026, 12, 1)) == (dt.date(2026, 1, 1), dt.date(2026, 11, 1))
    assert demo_months(dt.date(2027, 1, 31)) == (dt.date(2026, 1, 1), dt.date(2026, 12, 1))


@pytest.mark.parametrize("offset", [0, 1, 100 * 12])   # this month (not ended), next month, far ahead
def test_a_demo_month_that_has_not_ended_is_refused_before_any_work(tmp_path: Path, offset: int) -> None:
    """`--month 2026-12` crashed after ~30 s on an unknown Dagster partition, the current month on its
    remaining days, 2099-01 on Stripe's "no more than 5 minutes in the future" (audit)."""
    today = dt.datetime.now(dt.timezone.utc).date()
    month, last = _month(today, offset), _month(today, -1)
    started = time.monotonic()
    done = run_cli("demo", "--month", month, "--customers", "5", "--events", "500", "--data-dir", str(tmp_path / "d"),
                   env={"METERING_DATA_DIR": str(tmp_path / "d")}, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"'--month': {month} is outside 2026-01 .. {last}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert time.monotonic() - started < 30 and not (tmp_path / "d").exists()   # no work started


def test_a_demo_month_before_the_partitions_is_refused(tmp_path: Path) -> None:
    done = run_cli("demo", "--month", "2025-12", "--data-dir", str(tmp_path / "d"), timeout=60)
    assert done.returncode == 2, done.stderr
    assert "'--month': 2025-12 is outside 2026-01 .. " in done.stderr and "partitions start in 2026-01" in done.stderr
    assert not (tmp_path / "d").exists()


# --- 2. a file where a folder is expected, or the reverse ---------------------------------------


def test_a_path_of_the_wrong_kind_given_as_an_option_is_bad_input_as_from_the_environment(tmp_path: Path) -> None:
    """click.Path(dir_okay=False) made it exit 2 ("Invalid value ... is a directory") while the same
    mistake through the environment was exit 3 naming the path (audit)."""
    a_file, a_folder = tmp_path / "a-file", tmp_path / "a-folder"
    a_file.write_text("x\n")
    a_folder.mkdir()
    warehouse.connect(tmp_path / "w.duckdb").close()
    cases = [
        (["report", "--period", "2026-10", "--out", str(a_file)], f"--out {a_file}: is a file, not a folder"),
        (["publish", "--warehouse", str(tmp_path / "w.duckdb"), "--snapshot", str(a_folder)],
         f"--snapshot {a_folder}: is a folder, not a file"),
        (["ingest", str(a_file), "--warehouse", str(a_folder)], f"--warehouse {a_folder}: is a folder, not a file"),
        (["rerate", "--from", "2026-10-01", "--to", "2026-10-05", "--customers", str(a_folder)],
         f"--customers {a_folder}: is a folder, not a file"),
        (["demo", "--data-dir", str(a_file)], f"--data-dir {a_file}: is a file, not a folder"),
        (["rules", "validate", str(a_file)], f"{a_file}: is a file, not a folder"),
        (["rate", "--usage", str(a_folder), "--out", str(tmp_path / "o.csv")], f"--usage {a_folder}: is a folder"),
        (["webhooks", "land", "--landing", str(a_file)], f"--landing {a_file}: is a file, not a folder"),
        (["stripe-sandbox", "--state", str(a_folder)], f"--state {a_folder}: is a folder, not a file"),
    ]
    for args, says in cases:
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 3, (args, result.output)
        assert f"error: {says}" in result.output, (args, result.output)
        assert "Invalid value" not in result.output and "Traceback" not in result.output
    # through the environment: the same exit code
    done = run_cli("ingest", str(a_file), env={"METERING_WAREHOUSE": str(a_folder)})
    assert done.returncode == 3 and f"warehouse {a_folder}: is a folder, not a file" in done.stderr, done.stderr


def test_a_missing_input_file_is_bad_input_as_for_every_command(tmp_path: Path) -> None:
    """`ingest` alone made it click's usage error (exit 2); `rate --usage`, `rerate --customers` and
    `rules validate` name it as bad input (exit 3), as the README's exit codes say."""
    for args in (["ingest", str(tmp_path / "missing.jsonl")],
                 ["rate", "--usage", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o.csv")]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 3 and "missing." in result.output, (args, result.output)


# --- 3. rerate and usage nothing prices -----------------------------------------------------------


def _usage_without_customers(db: Path) -> None:
    with warehouse.open_warehouse(db) as con:
        con.execute("""INSERT INTO usage_events SELECT 'e' || i, 'ghost' || (i % 2), 'api_calls',
                       TIMESTAMPTZ '2026-10-03 00:00:00+00' + INTERVAL (i) SECOND, DATE '2026-10-03', NULL,
                       '{"region":"us"}', '{}', 1, i FROM range(40) t(i)""")
        record_manifest(con)   # as ingestion would have: rerate refuses usage that breaks conservation


def test_rerate_reports_usage_of_unknown_customers_and_exits_4(tmp_path: Path) -> None:
    """Customers never loaded: `2026-10: 0 lines, unchanged (no lines)`, exit 0 and no word (audit)."""
    db = tmp_path / "w.duckdb"
    _usage_without_customers(db)
    done = run_cli("--log-level", "ERROR", "rerate", "--from", "2026-10-01", "--to", "2026-10-05",
                   "--warehouse", str(db), "--rules", str(RULES))
    assert done.returncode == 4, done.stderr
    says = "40 event(s) of 2 customer(s) not in the customer list (unknown_customer) (ghost0, ghost1)"
    assert f"2026-10: 0 lines, unchanged (no lines); not priced: {says}" in done.stdout
    assert f"warning: 2026-10: usage no rated line covers, so it is not billed: {says}" in done.stderr
    assert "error: 40 usage event(s) not priced in 2026-10 (the check all_usage_priced" in done.stderr
    assert "Traceback" not in done.stderr


def test_rerate_names_usage_with_no_plan_in_force_and_is_quiet_when_all_is_priced(tmp_path: Path) -> None:
    db = tmp_path / "w.duckdb"
    _usage_without_customers(db)
    customers = tmp_path / "customers.csv"
    header = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
    customers.write_text(header + "ghost0,A,a@a.test,usd,,starter,2026-10-10,succeeds\n"
                                  "ghost1,B,b@b.test,usd,,starter,2026-01-01,succeeds\n")
    args = ["--log-level", "ERROR", "rerate", "--from", "2026-10-01", "--to", "2026-10-05", "--warehouse", str(db),
            "--rules", str(RULES)]
    late = run_cli(*args, "--customers", str(customers))
    assert late.returncode == 4, late.stderr
    assert "20 event(s) of 1 customer(s) with no plan in force (no_plan_in_force) (ghost0)" in late.stderr
    # the same usage, every customer on a plan from before it: nothing to say
    fresh = tmp_path / "fresh.duckdb"
    _usage_without_customers(fresh)
    customers.write_text(header + "ghost0,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                                  "ghost1,B,b@b.test,usd,,starter,2026-01-01,succeeds\n")
    args[args.index(str(db))] = str(fresh)
    priced = run_cli(*args, "--customers", str(customers))
    assert priced.returncode == 0, priced.stderr
    assert "not priced" not in priced.stdout + priced.stderr


# --- 4. webhooks serve on a busy port -------------------------------------------------------------


def test_webhooks_serve_on_a_busy_port_says_so_before_announcing(tmp_path: Path) -> None:
    """It printed `listening on ...`, then only uvicorn's log line, and exited 3 from uvicorn (audit)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        served = run_cli("--log-text", "webhooks", "serve", "--port", str(port),
                         "--landing", str(tmp_path / "landing"), env={"STRIPE_WEBHOOK_SECRET": "whsec_abcdefgh"},
                         timeout=60)
        sandbox = run_cli("stripe-sandbox", "--port", str(port), timeout=60)
    for done in (served, sandbox):
        assert done.returncode == 3, done.stderr
        assert done.stderr.strip().endswith(f"error: cannot listen on 127.0.0.1:{port}: Address already in use")
    assert "listening on" not in served.stderr and "Traceback" not in served.stderr


def test_webhooks_serve_announces_the_port_it_got(tmp_path: Path) -> None:
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "metering.cli", "--log-text", "webhooks", "serve", "--port", "0",
                             "--landing", str(tmp_path / "landing")], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "STRIPE_WEBHOOK_SECRET": "whsec_abcdefgh"})
    try:
        line = proc.stderr.readline()
        assert line.startswith("listening on http://127.0.0.1:") and ":0/" not in line, line
        url = line.split()[2].removesuffix(",").replace("/webhooks/stripe", "/healthz")
        for _ in range(100):
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"{url} never answered")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stderr.close()


# --- 5. terminal log lines keep their fields ------------------------------------------------------


def test_terminal_log_lines_carry_the_extra_fields_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """`landing files end in a torn record (skipped)` lost the files that JSON mode lists (audit)."""
    from metering.logs import RedactingFilter, TerminalFormatter

    monkeypatch.setenv("STRIPE_API_KEY", "weird-secret-value-777")
    record = logging.makeLogRecord({
        "msg": "landing files end in a torn record (skipped)", "levelname": "WARNING", "name": "metering.webhooks",
        "files": ["a.jsonl", "b c.jsonl"], "count": 2, "key": "weird-secret-value-777", "state": "open",
        "color_message": "\x1b[32mcoloured\x1b[0m"})
    RedactingFilter().filter(record)
    line = TerminalFormatter().format(record)
    assert line.endswith('metering.webhooks: landing files end in a torn record (skipped) '
                         'files=["a.jsonl","b c.jsonl"] count=2 key=[REDACTED] state=open'), line
    plain = logging.makeLogRecord({"msg": "no fields", "levelname": "INFO", "name": "x"})
    assert TerminalFormatter().format(plain).endswith("x: no fields")


def test_the_cli_prints_the_fields_on_a_terminal(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "stripe-2026-10-01T00.jsonl").write_text('{"id": "evt_1", "type": "invoice.paid"')   # torn: no newline
    done = run_cli("--log-text", "webhooks", "land", "--landing", str(landing), "--warehouse",
                   str(tmp_path / "w.duckdb"))
    assert done.returncode == 0, done.stderr
    torn = [line for line in done.stderr.splitlines() if "torn record" in line]
    assert torn and 'files=["stripe-2026-10-01T00.jsonl"]' in torn[0], done.stderr


# --- 6. a secret as Stripe masks it ---------------------------------------------------------------


@pytest.mark.parametrize(("name", "secret", "masked"), [
    ("STRIPE_API_KEY", "weird-secret-value-777", "weird-se********-777"),            # the sandbox's form
    ("STRIPE_API_KEY", "rk_custom_key_123456789", "rk_custo********6789"),
    ("STRIPE_WEBHOOK_SECRET", "abcdef", "abcdef********cdef"),                      # shorter than 8 + 4
    ("METERING_SMTP_PASSWORD", "hunter2hunter2", "hunt*****ter2"),
])
def test_a_secret_of_any_shape_is_redacted_as_stripe_masks_it(monkeypatch, name, secret, masked) -> None:
    from metering.logs import redact

    monkeypatch.setenv(name, secret)
    assert redact(f"Invalid API Key provided: {masked}") == "Invalid API Key provided: [REDACTED]"
    assert redact(f"key '{masked}'.") == "key '[REDACTED]'."
    # asterisks next to a little of it, or none of it, are not a secret (the review's cases: a card's last
    # digits, a start or an end of the secret alone)
    assert redact("rows **** total, a** b") == "rows **** total, a** b"
    for innocent in (f"card ****{secret[-4:]} declined", f"**{secret[-4:]}** totals", f"{secret[:4]}**** is the mask"):
        assert redact(innocent) == innocent


def test_stripe_sync_with_a_refused_key_of_any_shape_never_prints_its_masked_echo(
        tmp_path: Path, stripe_sandbox) -> None:
    """`Invalid API Key provided: weird-se********-777` (the first 8 and last 4 characters) (audit)."""
    customers = tmp_path / "customers.csv"
    customers.write_text("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,"
                         "payment_behavior\nc1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n")
    done = run_cli("stripe", "sync", "--customers", str(customers), "--warehouse", str(tmp_path / "w.duckdb"),
                   env={"STRIPE_API_KEY": "weird-secret-value-777", "STRIPE_API_BASE": stripe_sandbox.base_url,
                        "STRIPE_MAX_NETWORK_RETRIES": "0"})
    assert done.returncode == 5, done.stderr
    assert "Invalid API Key provided: [REDACTED]" in done.stderr
    assert "-777" not in done.stderr + done.stdout and "weird-se" not in done.stderr + done.stdout


def test_a_host_name_listens_on_ipv4_first_as_uvicorn_did() -> None:
    """`localhost` resolved ::1 first (Debian's /etc/hosts) bound ::1 alone: 127.0.0.1 was refused."""
    import socket

    from metering.cli.options import preferred_address

    v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 80, 0, 0))
    v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 80))
    assert preferred_address([v6, v4]) == v4 and preferred_address([v4, v6]) == v4
    assert preferred_address([v6]) == v6
