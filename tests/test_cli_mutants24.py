"""The `metering` command line, as a hand mutation audit of `metering/cli` found it under-tested: which
setting wins (an option over its environment variable, `--warehouse` over $METERING_WAREHOUSE), where
options end (`--`), option ranges at their bounds (seed, shares, retry delays, `--as-of`'s tolerance),
which mistake gives which exit code and names what, and the exit-5 message of a push that needs a look.

Every command runs for real (click's runner or the console entry point in a process), on files under
tmp_path, with real DuckDB and the local Stripe sandbox where Stripe is needed.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from metering import warehouse
from metering.cli import cli

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RULES = PROJECT_ROOT / "rating_rules"

# one clean event (the shape `metering ingest` accepts): dated 2026-10-01 00:00 UTC
EVENT = ('{"event_id":"e1","customer_id":"c1","meter":"api_calls","quantity":1,'
         '"timestamp":"2026-10-01T00:00:00Z"}\n')

# an aggregated usage file `metering rate` prices: c1 on the shipped plan `pro`
USAGE = ("customer_id,meter,quantity,plan,period_start,region,model\n"
         "c1,seats,5,pro,2026-10-20,,\n")


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["--log-level", "ERROR", *args], env=env)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The console entry point in a real process: its stderr is what a user sees."""
    return subprocess.run([sys.executable, "-c", "from metering.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


def _busy_port() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, sock.getsockname()[1]


# --- where options end, and which setting wins ----------------------------------------------------

def test_help_after_double_dash_is_a_file_name_not_a_request_for_help(tmp_path: Path) -> None:
    """`--help` always works, even with a bad $METERING_LOG_LEVEL; but after `--` it is an argument (a
    file called --help), so the bad variable is the usage error (exit 2) it is for any other run."""
    bad = {"METERING_LOG_LEVEL": "bogus"}
    result = CliRunner().invoke(cli, ["ingest", "--", "--help"], env=bad)
    assert result.exit_code == 2, result.output
    assert "METERING_LOG_LEVEL: 'bogus' is not a log level" in result.output
    # the same words with good settings: ingest looks for a file named --help (exit 3, naming it)
    result = CliRunner().invoke(cli, ["ingest", "--", "--help"])
    assert result.exit_code == 3, result.output
    assert "error: --help: no such file or folder" in result.output
    # before `--` it is help
    result = CliRunner().invoke(cli, ["ingest", "--help"], env=bad)
    assert result.exit_code == 0 and "Usage:" in result.output


def _published(tmp_path: Path, *options: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`metering [options] publish` of a new warehouse: `publish` logs one INFO record, "published
    snapshot"."""
    wh = tmp_path / "w.duckdb"
    if not wh.exists():
        warehouse.connect(wh).close()
    return run_cli(*options, "publish", "--warehouse", str(wh), "--snapshot", str(tmp_path / "s.duckdb"), env=env)


def test_the_log_level_option_wins_over_the_variable(tmp_path: Path) -> None:
    # --log-level ERROR with $METERING_LOG_LEVEL=DEBUG: the INFO record is not shown
    done = _published(tmp_path, "--log-level", "ERROR", "--log-text", env={"METERING_LOG_LEVEL": "DEBUG"})
    assert done.returncode == 0, done.stderr
    assert "published snapshot" not in done.stderr
    # --log-level INFO with $METERING_LOG_LEVEL=ERROR: it is
    done = _published(tmp_path, "--log-level", "INFO", "--log-text", env={"METERING_LOG_LEVEL": "ERROR"})
    assert done.returncode == 0, done.stderr
    assert "published snapshot" in done.stderr


def test_log_text_wins_over_a_json_variable(tmp_path: Path) -> None:
    """`--log-text` is an explicit False: $METERING_LOG_JSON=yes must not turn it into JSON."""
    done = _published(tmp_path, "--log-level", "INFO", "--log-text", env={"METERING_LOG_JSON": "yes"})
    assert done.returncode == 0, done.stderr
    record = next(line for line in done.stderr.splitlines() if "published snapshot" in line)
    assert not record.lstrip().startswith("{")
    # and --log-json with the variable saying no gives JSON
    done = _published(tmp_path, "--log-level", "INFO", "--log-json", env={"METERING_LOG_JSON": "no"})
    assert json.loads(done.stderr.splitlines()[0])["message"] == "published snapshot"


def test_warehouse_option_wins_over_the_variable_for_rerate(tmp_path: Path, isolated_env: Path) -> None:
    """$METERING_WAREHOUSE names a warehouse that exists; `--warehouse` a path that does not: the option
    is the one used, so rerate refuses it (exit 3, naming it) and creates nothing there."""
    warehouse.connect(isolated_env / "warehouse.duckdb").close()   # the variable's, from conftest
    missing = tmp_path / "typo.duckdb"
    result = invoke("rerate", "--from", "2026-10-01", "--to", "2026-10-01", "--warehouse", str(missing))
    assert result.exit_code == 3, result.output
    assert f"error: {missing}: no warehouse there" in result.output
    assert not missing.exists()


def test_warehouse_option_wins_over_the_variable_for_ingest(tmp_path: Path, isolated_env: Path) -> None:
    raw = tmp_path / "a.jsonl"
    raw.write_text(EVENT)
    chosen = tmp_path / "chosen.duckdb"
    result = invoke("ingest", str(raw), "--warehouse", str(chosen), "--as-of", "2026-10-02", "--json")
    assert result.exit_code == 0, result.output
    assert chosen.exists() and not (isolated_env / "warehouse.duckdb").exists()
    with warehouse.open_warehouse(chosen, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM ingested_files").fetchone()[0] == 1


def test_publish_copies_the_warehouse_option_not_the_variables(tmp_path: Path, isolated_env: Path) -> None:
    """Two warehouses, one with a table `marker`: publishing `--warehouse` that one gives a snapshot
    holding it, though $METERING_WAREHOUSE names the other."""
    warehouse.connect(isolated_env / "warehouse.duckdb").close()
    chosen = tmp_path / "chosen.duckdb"
    with warehouse.open_warehouse(chosen) as con:
        con.execute("CREATE TABLE marker AS SELECT 42 AS x")
    snapshot = tmp_path / "snap.duckdb"
    result = invoke("publish", "--warehouse", str(chosen), "--snapshot", str(snapshot))
    assert result.exit_code == 0, result.output
    import duckdb

    with duckdb.connect(str(snapshot), read_only=True) as con:
        assert con.execute("SELECT x FROM marker").fetchone() == (42,)


# --- option ranges at their bounds ----------------------------------------------------------------

def _generate(tmp_path: Path, *extra: str, out: str = "raw"):
    """A tiny `generate`: 5 clean events of 2 customers on one day, one CSV file, no defects unless asked."""
    return invoke("generate", "--events", "5", "--customers", "2", "--start", "2026-10-01", "--end", "2026-10-01",
                  "--formats", "csv", "--out", str(tmp_path / out), "--customers-file", str(tmp_path / f"{out}.csv"),
                  "--duplicate-share", "0", "--conflict-share", "0", "--late-share", "0", "--malformed-share", "0",
                  "--hostile-share", "0", *extra)


def test_the_largest_seed_is_taken_and_one_more_is_a_usage_error(tmp_path: Path) -> None:
    """Seeds are 32 bits: 2**32 - 1 = 4294967295 is the last one."""
    ok = _generate(tmp_path, "--seed", "4294967295")
    assert ok.exit_code == 0, ok.output
    assert "(5 events," in ok.output
    over = _generate(tmp_path, "--seed", "4294967296", out="over")
    assert over.exit_code == 2, over.output
    assert "Invalid value for '--seed'" in over.output
    assert not (tmp_path / "over").exists() and not (tmp_path / "over.csv").exists()


@pytest.mark.parametrize("share", ["0", "0.5"])
def test_a_share_of_0_or_one_half_is_taken(tmp_path: Path, share: str) -> None:
    """The shares lie in [0, 0.5], both ends included."""
    result = _generate(tmp_path, "--duplicate-share", share)
    assert result.exit_code == 0, result.output
    assert "(5 events," in result.output


@pytest.mark.parametrize("share", ["-0.001", "0.501"])
def test_a_share_outside_0_to_one_half_is_a_usage_error(tmp_path: Path, share: str) -> None:
    result = _generate(tmp_path, "--duplicate-share", share)
    assert result.exit_code == 2, result.output
    assert "--duplicate-share" in result.output and "a share is between 0 and 0.5" in result.output


@pytest.mark.parametrize("formats", [",", " , ,"])
def test_no_format_at_all_is_a_usage_error(tmp_path: Path, formats: str) -> None:
    result = invoke("generate", "--formats", formats, "--out", str(tmp_path / "raw"))
    assert result.exit_code == 2, result.output
    assert "unknown format(s) (none); choose from jsonl, jsonl.gz, csv, parquet" in result.output
    assert not (tmp_path / "raw").exists()


def test_generate_end_before_start_is_a_usage_error_before_any_file(tmp_path: Path) -> None:
    result = invoke("generate", "--start", "2026-10-02", "--end", "2026-10-01", "--out", str(tmp_path / "raw"),
                    "--customers-file", str(tmp_path / "c.csv"))
    assert result.exit_code == 2, result.output
    assert "--end 2026-10-01 is before --start 2026-10-02" in result.output
    assert not (tmp_path / "raw").exists() and not (tmp_path / "c.csv").exists()


def test_the_customer_list_cannot_overwrite_the_analyst_snapshot(tmp_path: Path, isolated_env: Path) -> None:
    snapshot = isolated_env / "snapshot.duckdb"   # $METERING_SNAPSHOT, from conftest
    result = invoke("generate", "--customers-file", str(snapshot), "--out", str(tmp_path / "raw"))
    assert result.exit_code == 3, result.output
    assert f"error: --customers-file {snapshot}: is the analyst snapshot ({snapshot})" in result.output
    assert not snapshot.exists()


def test_as_of_a_date_alone_is_midnight_utc(tmp_path: Path) -> None:
    """`--as-of 2026-10-02` (no time, no offset) is 2026-10-02T00:00Z: an event of 2026-10-01 is in its
    past and accepted (a naive time compared with an aware one was a TypeError)."""
    raw = tmp_path / "a.jsonl"
    raw.write_text(EVENT)
    result = invoke("ingest", str(raw), "--as-of", "2026-10-02", "--json")
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.splitlines()[0])
    assert (row["rows_read"], row["rows_accepted"]) == (1, 1)


def test_as_of_may_be_ahead_of_the_clock_by_less_than_the_tolerance(tmp_path: Path) -> None:
    """Event timestamps may run 1 hour ahead (FUTURE_TOLERANCE); `--as-of` likewise: now + 30 min is taken,
    now + 2 h is a usage error naming the option."""
    raw = tmp_path / "a.jsonl"
    raw.write_text(EVENT)
    now = dt.datetime.now(dt.timezone.utc)
    soon = (now + dt.timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    result = invoke("ingest", str(raw), "--as-of", soon, "--json")
    assert result.exit_code == 0, result.output
    later = (now + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+0000")
    result = invoke("ingest", str(raw), "--as-of", later, "--json", "--warehouse", str(tmp_path / "other.duckdb"))
    assert result.exit_code == 2, result.output
    assert "--as-of" in result.output and "is in the future" in result.output


# --- which mistake gives which code, naming what ---------------------------------------------------

def test_a_folder_without_raw_files_is_bad_input_and_creates_no_warehouse(tmp_path: Path, isolated_env: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a raw file\n")
    result = invoke("ingest", str(empty))
    assert result.exit_code == 3, result.output
    assert f"error: no raw files (.jsonl, .jsonl.gz, .csv, .parquet) under {empty}" in result.output
    assert not (isolated_env / "warehouse.duckdb").exists()


def test_a_dangling_link_is_missing_before_the_first_file_is_read(tmp_path: Path, isolated_env: Path) -> None:
    """`ingest` checks every path before it reads the first file, so a missing one ingests nothing
    (test_a_missing_file_is_bad_input_and_nothing_before_it_is_ingested). A symbolic link to nothing
    is a missing file too: it passed the check (`os.path.lexists`), so the file before it was ingested
    and then the run stopped at the link (found by the audit m24b; the message now says what it is)."""
    good = tmp_path / "a.jsonl"
    good.write_text(EVENT)
    link = tmp_path / "b.jsonl"
    link.symlink_to(tmp_path / "gone.jsonl")
    result = invoke("ingest", str(good), str(link), "--as-of", "2026-10-02")
    assert result.exit_code == 3, result.output
    assert f"{link}: no such file or folder (a symbolic link to nothing)" in result.output
    assert "a.jsonl" not in result.output   # no row for the good file: nothing was read
    wh = isolated_env / "warehouse.duckdb"
    if wh.exists():
        with warehouse.open_warehouse(wh, read_only=True) as con:
            assert con.execute("SELECT count(*) FROM ingested_files").fetchone()[0] == 0


@pytest.mark.parametrize("name", ["rated.CSV", "rated.Parquet", "rated.pq"])
def test_rate_takes_every_output_suffix_in_any_case(tmp_path: Path, name: str) -> None:
    usage = tmp_path / "usage.csv"
    usage.write_text(USAGE)
    out = tmp_path / name
    result = invoke("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert out.exists() and f"-> {out}" in result.output


def test_rate_an_unknown_plan_is_bad_input_listing_the_plans(tmp_path: Path) -> None:
    from metering.rules.plans import load_rules

    usage = tmp_path / "usage.csv"
    usage.write_text(USAGE)
    out = tmp_path / "rated.csv"
    result = invoke("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out), "--plan", "nope")
    assert result.exit_code == 3, result.output
    plans = ", ".join(sorted(load_rules(RULES).plans))
    assert f"error: --plan: unknown plan 'nope' (plans: {plans})" in result.output
    assert not out.exists()


def test_rate_reads_the_rules_folder_it_is_given(tmp_path: Path) -> None:
    """A copy of the shipped rules without plans/pro.yaml: the default rules have plan `pro`, the
    folder given as --rules does not, so pricing under it is bad input."""
    import shutil

    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    (rules / "plans" / "pro.yaml").unlink()
    usage = tmp_path / "usage.csv"
    usage.write_text(USAGE.replace(",pro,", ",starter,"))
    result = invoke("rate", "--rules", str(rules), "--usage", str(usage), "--out", str(tmp_path / "r.csv"),
                    "--plan", "pro")
    assert result.exit_code == 3, result.output
    assert "error: --plan: unknown plan 'pro' (plans: pro_jpy, scale, starter)" in result.output


def test_a_blank_adjust_closed_reason_is_a_usage_error_before_the_warehouse(tmp_path: Path) -> None:
    result = invoke("rerate", "--from", "2026-10-01", "--to", "2026-10-01", "--adjust-closed", "   ",
                    "--warehouse", str(tmp_path / "none.duckdb"))
    assert result.exit_code == 2, result.output
    assert "--adjust-closed: give the reason for re-pricing closed periods" in result.output


@pytest.mark.parametrize(("args", "says"), [
    (["--date", "2026-10-01", "--to", "2026-10-02"], "give either --date or --from/--to, not both"),
    (["--to", "2026-10-02"], "--to needs --from"),
])
def test_push_date_options_that_do_not_go_together(args: list[str], says: str) -> None:
    result = invoke("stripe", "push", *args)
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_the_exit_5_message_of_a_push_names_what_needs_a_look() -> None:
    """0 failed and 2 unknown still need a look (the unknown ones may have reached Stripe); a note whose
    count is 0 is left out."""
    from metering.cli.push_cmds import _needs_a_look

    error = _needs_a_look(0, 2, "windows", "stripe_push_ledger", [(0, "held"), (3, "not synced")])
    assert error.exit_code == 5
    assert str(error) == ("0 failed and 2 unknown windows need a look (SELECT * FROM stripe_push_ledger WHERE "
                          "status IN ('failed', 'unknown', 'sent')); 3 not synced")
    assert str(_needs_a_look(0, 0, "windows", "t", [(1, "held")])) == "1 held"


def test_a_refused_key_names_the_error_and_its_http_status(tmp_path: Path, stripe_sandbox) -> None:
    """The sandbox refuses a key that is not a test-mode one with HTTP 401, as Stripe does: one line,
    exit 5, the SDK's error class and the status, the key redacted."""
    customers = tmp_path / "customers.csv"
    customers.write_text("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,"
                         "payment_behavior\nc1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n")
    done = run_cli("stripe", "sync", "--customers", str(customers), "--warehouse", str(tmp_path / "w.duckdb"),
                   env={"STRIPE_API_KEY": "live-looking-key-1234", "STRIPE_API_BASE": stripe_sandbox.base_url,
                        "STRIPE_MAX_NETWORK_RETRIES": "0", "METERING_LOG_LEVEL": "ERROR"})
    assert done.returncode == 5, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: Stripe: AuthenticationError (HTTP 401): "), errors
    assert "1234" not in done.stderr + done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("delays", ["0", "0,5"])
def test_a_webhook_retry_delay_of_0_is_taken(delays: str) -> None:
    """Delays are seconds >= 0. With the port busy, the sandbox gets as far as listening: exit 3 naming
    the address, not a usage error about the delays."""
    sock, port = _busy_port()
    with sock:
        result = invoke("stripe-sandbox", "--port", str(port), "--webhook-retry-delays", delays)
    assert result.exit_code == 3, result.output
    # the system's words for the error, not Python's "[Errno 98] ..." form
    assert result.output.splitlines()[-1] == f"error: cannot listen on 127.0.0.1:{port}: {os.strerror(errno.EADDRINUSE)}"


@pytest.mark.parametrize("delays", ["inf", "5,nan", "-1"])
def test_a_webhook_retry_delay_that_is_not_finite_seconds_is_a_usage_error(delays: str) -> None:
    sock, port = _busy_port()
    with sock:
        result = invoke("stripe-sandbox", "--port", str(port), "--webhook-retry-delays", delays)
    assert result.exit_code == 2, result.output
    assert "expected seconds >= 0 like 5,30,120" in result.output


@pytest.mark.parametrize("fault", ["[]", '"rate_limit"'])
def test_a_fault_that_is_not_a_json_object_is_a_usage_error_saying_so(fault: str) -> None:
    result = invoke("stripe-sandbox", "--port", "0", "--fault", fault)
    assert result.exit_code == 2, result.output
    assert "must be a JSON object like" in result.output


# --- the group's error translation, on commands made to fail one way each ---------------------------

def _failing(exc: BaseException):
    import click

    @click.command()
    def fail() -> None:
        raise exc
    return fail


FAILING = None   # the command `_invoke_raising` runs, found by the lazy group as this module's attribute


def _invoke_raising(exc: BaseException):
    global FAILING
    import duckdb  # noqa: F401  (the commands that meet DuckDB's interrupt have it loaded)

    FAILING = _failing(exc)
    from metering.cli import Lazy, LazyGroup

    group = LazyGroup(name="metering", lazy={"fail": Lazy(f"{__name__}:FAILING", "A command that fails.")})
    return CliRunner().invoke(group, ["fail"])


def test_duckdbs_query_interrupted_is_exit_130_in_one_line() -> None:
    """DuckDB's RuntimeError("Query interrupted") (SIGINT while a result is fetched) is the user's Ctrl-C."""
    result = _invoke_raising(RuntimeError("Query interrupted"))
    assert result.exit_code == 130, (result.output, result.exception)
    assert result.output == "interrupted\n"


def test_another_runtime_error_is_a_bug_not_an_interrupt() -> None:
    result = _invoke_raising(RuntimeError("upload interrupted"))
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)


def test_an_oserror_naming_no_path_is_a_bug_and_one_naming_a_path_is_bad_input(tmp_path: Path) -> None:
    result = _invoke_raising(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
    assert result.exit_code == 1 and isinstance(result.exception, ConnectionResetError)
    result = _invoke_raising(PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "out")))
    assert result.exit_code == 3, (result.output, result.exception)
    assert result.output == f"error: {tmp_path / 'out'}: Permission denied\n"


def test_a_users_mistake_is_one_line_with_its_code_and_no_secret() -> None:
    """A MeteringError's message goes through `redact` (a Stripe key shape becomes [REDACTED]) and its
    class gives the exit code: BadInputError 3, ExternalServiceError 5."""
    from metering.errors import BadInputError, ExternalServiceError

    result = _invoke_raising(BadInputError("key sk_test_51abcdefghijklmnop refused"))
    assert (result.exit_code, result.output) == (3, "error: key [REDACTED] refused\n")
    result = _invoke_raising(ExternalServiceError("Stripe: down"))
    assert (result.exit_code, result.output) == (5, "error: Stripe: down\n")


def test_reconcile_no_fail_reports_the_differences_and_exits_0(tmp_path: Path) -> None:
    """Usage rated but never pushed nor invoiced is unexplained (> the default threshold of 0 minor
    units): exit 4 by default, exit 0 with --no-fail, the same differences listed either way."""
    raw, customers = tmp_path / "raw", tmp_path / "c.csv"
    made = invoke("generate", "--events", "50", "--customers", "2", "--start", "2026-10-01", "--end", "2026-10-02",
                  "--formats", "csv", "--out", str(raw), "--customers-file", str(customers))
    assert made.exit_code == 0, made.output
    assert invoke("ingest", str(raw)).exit_code == 0
    rated = invoke("rerate", "--from", "2026-10-01", "--to", "2026-10-02", "--customers", str(customers))
    assert rated.exit_code in (0, 4), rated.output   # 4: a malformed/hostile row's usage left unpriced
    failing = invoke("reconcile", "--period", "2026-10", "--no-pull")
    assert failing.exit_code == 4, failing.output
    assert "error: unexplained differences exceed 0 minor unit(s)" in failing.output
    passing = invoke("reconcile", "--period", "2026-10", "--no-pull", "--no-fail")
    assert passing.exit_code == 0, passing.output
    unexplained = [line for line in failing.output.splitlines() if line.startswith("  unexplained ")]
    assert unexplained and unexplained == [line for line in passing.output.splitlines()
                                           if line.startswith("  unexplained ")]
