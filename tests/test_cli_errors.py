"""What every command shares: the logging settings, output paths and option ranges. A user's mistake
is one line naming the option, variable or path, with the exit code of `metering.errors`; never a
traceback, and `--help` always works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from metering import config
from metering.cli import cli


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The console entry point in a real process: its stderr is what a user sees."""
    import os

    return subprocess.run([sys.executable, "-c", "from metering.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("level", ["debug", "Warning", "ERROR"])
def test_log_level_takes_any_case(level: str) -> None:
    result = invoke("--log-level", level, "rules", "validate")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(("args", "env", "names"), [
    (["--log-level", "bogus"], {}, "'--log-level'"),
    ([], {"METERING_LOG_LEVEL": "bogus"}, "METERING_LOG_LEVEL: 'bogus' is not a log level"),
    ([], {"METERING_LOG_JSON": "maybe"}, "METERING_LOG_JSON: 'maybe' is not a yes/no value"),
])
def test_a_bad_log_setting_is_a_usage_error_naming_it(args: list[str], env: dict[str, str], names: str) -> None:
    done = run_cli(*args, "rules", "validate", env=env)
    assert done.returncode == 2, done.stderr
    assert names in done.stderr and "Traceback" not in done.stderr


def test_help_works_whatever_the_log_variables_say() -> None:
    for env in ({"METERING_LOG_LEVEL": "bogus"}, {"METERING_LOG_JSON": "maybe"}):
        for args in (["--help"], ["rules", "validate", "--help"], ["stripe", "push", "-h"]):
            done = run_cli(*args, env=env)
            assert done.returncode == 0 and "Usage:" in done.stdout, (env, args, done.stderr)


def test_empty_log_variables_mean_the_defaults() -> None:
    done = run_cli("rules", "validate", env={"METERING_LOG_LEVEL": "", "METERING_LOG_JSON": ""})
    assert done.returncode == 0, done.stderr


def test_log_json_yes_means_json(tmp_path: Path) -> None:
    wh = tmp_path / "w.duckdb"
    done = run_cli("publish", "--warehouse", str(wh), "--snapshot", str(tmp_path / "s.duckdb"),
                   env={"METERING_LOG_JSON": "yes", "METERING_WAREHOUSE": str(wh)})
    assert done.returncode == 3   # no warehouse yet: the error line is not a log record
    assert done.stderr.startswith("error: ")
    from metering import warehouse

    warehouse.connect(wh).close()
    done = run_cli("publish", "--warehouse", str(wh), "--snapshot", str(tmp_path / "s.duckdb"),
                   env={"METERING_LOG_JSON": "yes"})
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stderr.splitlines()[0])
    assert (record["message"], record["copied"]) == ("published snapshot", "file")


def test_empty_data_dir_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERING_DATA_DIR", "")
    assert config.data_dir() == config.PROJECT_ROOT / "data"   # not the current directory


@pytest.fixture
def blocked(tmp_path: Path) -> Path:
    """A file standing where an output folder would have to be created."""
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


def test_output_folders_that_cannot_be_created_are_bad_input_naming_the_option(
        tmp_path: Path, blocked: Path, rules_dir: Path) -> None:
    usage = tmp_path / "usage.csv"
    usage.write_text("customer_id,meter,quantity,plan,period_start\nc1,api_calls,10,pro,2026-10-01\n")
    cases = [
        (["generate", "--events", "10", "--customers", "2", "--out", str(blocked / "raw")],
         f"--out: cannot create the folder {blocked / 'raw'}"),
        (["generate", "--events", "10", "--customers", "2", "--out", str(tmp_path / "raw"),
          "--customers-file", str(blocked / "c.csv")], f"--customers-file {blocked / 'c.csv'}: {blocked} exists and is not a folder"),
        (["rate", "--rules", str(rules_dir), "--usage", str(usage), "--out", str(blocked / "o.csv")],
         f"--out {blocked / 'o.csv'}: {blocked} exists and is not a folder"),
        (["ingest", str(usage), "--warehouse", str(blocked / "sub" / "w.duckdb")],
         f"warehouse {blocked / 'sub' / 'w.duckdb'}: cannot create the folder {blocked / 'sub'}"),
        (["publish", "--warehouse", str(tmp_path / "w.duckdb"), "--snapshot", str(blocked / "s.duckdb")],
         f"snapshot {blocked / 's.duckdb'}: {blocked} exists and is not a folder"),
        (["dunning", "run", "--rules", str(rules_dir), "--warehouse", str(tmp_path / "w.duckdb"),
          "--outbox", str(blocked / "o")], f"--outbox: cannot create the folder {blocked / 'o'}"),
    ]
    from metering import warehouse

    warehouse.connect(tmp_path / "w.duckdb").close()
    for args, says in cases:
        result = invoke(*args)
        assert result.exit_code == 3, (args, result.output)
        assert says in result.output, (args, result.output)
        assert "Traceback" not in result.output


def test_environment_paths_that_are_not_folders_or_files_are_named(tmp_path: Path, blocked: Path) -> None:
    from metering import warehouse

    warehouse.connect(tmp_path / "w.duckdb").close()
    folder = tmp_path / "a-folder"
    folder.mkdir()
    result = invoke("publish", "--warehouse", str(tmp_path / "w.duckdb"), env={"METERING_SNAPSHOT": str(folder)})
    assert result.exit_code == 3 and f"snapshot {folder}: is a folder, not a file" in result.output
    assert list(tmp_path.glob(".*.tmp")) == [] and list(folder.iterdir()) == []
    result = invoke("webhooks", "serve", "--port", "0",
                    env={"METERING_STRIPE_LANDING": str(blocked), "STRIPE_WEBHOOK_SECRET": "whsec_abcdefgh"})
    assert result.exit_code == 3 and f"$METERING_STRIPE_LANDING: {blocked} exists and is not a folder" in result.output


def test_a_path_from_the_environment_is_blamed_on_its_variable_not_on_an_option(
        tmp_path: Path, blocked: Path, rules_dir: Path) -> None:
    """The messages named `--out` or `--outbox` for a path no option had given."""
    from metering import warehouse

    warehouse.connect(tmp_path / "w.duckdb").close()
    cases = [
        (["generate", "--events", "10", "--customers", "2"], {"METERING_RAW_DIR": str(blocked / "raw")},
         f"error: $METERING_RAW_DIR: cannot create the folder {blocked / 'raw'}"),
        (["generate", "--events", "10", "--customers", "2", "--out", str(tmp_path / "raw")],
         {"METERING_CUSTOMERS": str(blocked / "c.csv")},
         f"error: $METERING_CUSTOMERS {blocked / 'c.csv'}: {blocked} exists and is not a folder"),
        (["dunning", "run", "--rules", str(rules_dir), "--warehouse", str(tmp_path / "w.duckdb")],
         {"METERING_OUTBOX_DIR": str(blocked / "o")}, f"error: $METERING_OUTBOX_DIR: cannot create the folder {blocked / 'o'}"),
        (["dunning", "run", "--rules", str(rules_dir), "--warehouse", str(tmp_path / "w.duckdb"),
          "--outbox", str(tmp_path / "o")], {"METERING_PUBLISHED_DIR": str(blocked / "p")},
         f"error: $METERING_PUBLISHED_DIR: cannot create the folder {blocked / 'p'}"),
        (["dunning", "run", "--rules", str(rules_dir), "--warehouse", str(tmp_path / "w.duckdb"),
          "--outbox", str(tmp_path / "o")], {"METERING_DATA_DIR": str(blocked)},
         f"error: --published (default, under $METERING_DATA_DIR): cannot create the folder {blocked / 'published'}"),
    ]
    for args, env, says in cases:
        result = invoke(*args, env=env)
        assert result.exit_code == 3, (args, result.output)
        assert says in result.output, (args, result.output)


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux /proc, where no file can be created")
def test_a_folder_where_files_cannot_be_created_is_found_before_the_work(tmp_path: Path) -> None:
    from metering import warehouse

    warehouse.connect(tmp_path / "w.duckdb").close()
    result = invoke("publish", "--warehouse", str(tmp_path / "w.duckdb"), "--snapshot", "/proc/snap.duckdb")
    assert result.exit_code == 3 and "snapshot /proc/snap.duckdb: cannot create files in /proc" in result.output


def test_an_oserror_on_a_path_deep_in_a_command_is_bad_input_naming_it(blocked: Path) -> None:
    """`demo` (in the Dagster layer) creates its folders itself: the CLI's one net still names the path."""
    done = run_cli("demo", "--data-dir", str(blocked / "data"))
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {blocked}")
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(("args", "option"), [
    (["generate", "--seed", "-1"], "--seed"),
    (["generate", "--seed", "99999999999999999999"], "--seed"),
    (["generate", "--start", "2026-10-05", "--end", "2026-10-01"], "--end"),
    (["bench", "rate", "--rows", "-5"], "--rows"),
    (["bench", "rate", "--rows", "0"], "--rows"),
    (["bench", "rate", "--repeat", "0"], "--repeat"),
    (["bench", "push", "--customers", "-1"], "--customers"),
    (["rerate", "--from", "2026-10-05", "--to", "2026-10-01"], "--to"),
    (["rate", "--usage", "u.csv", "--out", "o.xlsx"], "--out"),
])
def test_option_values_out_of_range_are_usage_errors(args: list[str], option: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert option in result.output and "Traceback" not in result.output


def test_json_logs_drop_uvicorns_coloured_copy_and_redact_every_secret_variable(monkeypatch) -> None:
    import logging

    from metering.logs import JsonFormatter, RedactingFilter

    monkeypatch.setenv("STRIPE_SANDBOX_API_KEY", "sandbox-secret-value")
    monkeypatch.setenv("METERING_SMTP_PASSWORD", "smtp-secret-value")
    record = logging.makeLogRecord({"msg": "login with smtp-secret-value and sandbox-secret-value",
                                    "color_message": "\x1b[32mcoloured\x1b[0m", "levelname": "INFO"})
    RedactingFilter().filter(record)
    line = json.loads(JsonFormatter().format(record))
    assert "color_message" not in line
    assert line["message"] == "login with [REDACTED] and [REDACTED]"


def test_a_key_as_stripe_masks_it_is_redacted_too() -> None:
    """Stripe's authentication errors quote the key masked, `sk_test_********9876`: still its end, and
    the pattern let it through into logs and dunning_actions.last_error (I16)."""
    from metering.logs import redact

    assert redact("Invalid API Key provided: sk_test_********9876") == "Invalid API Key provided: [REDACTED]"
    assert redact("secret whsec_****abcd and rk_live_***1") == "secret [REDACTED] and [REDACTED]"


def test_stripe_python_never_prints_past_the_logging_set_up() -> None:
    """STRIPE_LOG=debug makes stripe-python print every request and response to stderr, unredacted and
    unstructured (I16); logging set-up turns that off, also when stripe was imported first, and says
    so. A fresh interpreter: the SDK reads the variable when it is imported."""
    import os

    script = ("import os, stripe, stripe._util; from metering.logs import setup_logging; "
              "setup_logging('info', json_output=True); "
              "print(os.environ.get('STRIPE_LOG'), stripe._util._console_log_level())")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          env={**os.environ, "STRIPE_LOG": "debug"})
    assert proc.stdout.strip() == "None None"
    assert "STRIPE_LOG is ignored" in proc.stderr


# Mistakes an audit found turned into tracebacks (exit 1), each now one line and exit 3 or 2.
@pytest.mark.parametrize(("args", "env", "code", "says"), [
    # a huge settle or grace time overflowed a timedelta
    (["reconcile", "--period", "2026-10", "--no-pull", "--settle-seconds", "99999999999999999999"], {}, 2,
     "--settle-seconds"),
    (["reconcile", "--period", "2026-10", "--no-pull"], {"METERING_STRIPE_INVOICE_GRACE_SECONDS": "99999999999999999999"},
     3, "$METERING_STRIPE_INVOICE_GRACE_SECONDS: '99999999999999999999' is too large"),
    # '²' passed str.isdigit() and then int() refused it; a 26-digit tolerance overflowed Int64
    (["reconcile", "--period", "2026-10", "--no-pull"], {"METERING_RECON_TOLERANCE": "usd=\u00b2"}, 3,
     "'usd=\u00b2' is not CURRENCY=MINOR_UNITS"),
    (["reconcile", "--period", "2026-10", "--no-pull"], {"METERING_RECON_TOLERANCE": "usd=" + "9" * 26}, 3,
     "is not CURRENCY=MINOR_UNITS"),
    # nan and inf crashed the rate limiter
    (["stripe", "push", "--date", "2026-09-05", "--rate", "nan"], {"STRIPE_API_KEY": "sk_test_x"}, 3,
     "push rate (--rate, STRIPE_PUSH_RATE): nan is not a number of calls per second"),
    (["stripe", "invoice-items", "--period", "2026-09"], {"STRIPE_API_KEY": "sk_test_x", "STRIPE_PUSH_RATE": "inf"}, 3,
     "push rate (--rate, STRIPE_PUSH_RATE): inf is not"),
    # `stripe sync` passed a bad window to the catalog, which raised
    (["stripe", "sync"], {"STRIPE_API_KEY": "sk_test_x", "STRIPE_METER_WINDOW": "week"}, 3,
     "window kind (--window, STRIPE_METER_WINDOW): 'week' is not one of day, hour"),
    # the push named neither the variable nor the option
    (["stripe", "push", "--date", "2026-09-05"], {"STRIPE_API_KEY": "sk_test_x", "STRIPE_METER_WINDOW": "week"}, 3,
     "window kind (--window, STRIPE_METER_WINDOW): 'week' is not one of day, hour"),
    # a key the SDK cannot put in a header was a "network error" from Stripe (exit 5)
    (["stripe", "push", "--date", "2026-09-05"], {"STRIPE_API_KEY": "sk_test_\u043a\u043b\u044e\u0447"}, 3,
     "STRIPE_API_KEY: not a Stripe key (it holds characters other than printable ASCII)"),
    # urlsplit raised on a host it could not read; a port out of range reached the SDK (exit 5)
    (["webhooks", "repair", "--api-base", "http://[::1"], {"STRIPE_API_KEY": "sk_test_x"}, 2,
     "'http://[::1' is not an http(s) URL"),
    (["stripe", "push", "--date", "2026-09-05"], {"STRIPE_API_KEY": "sk_test_x", "STRIPE_API_BASE": "http://[::1"}, 3,
     "environment variable STRIPE_API_BASE: 'http://[::1' is not an http(s) URL"),
    (["stripe", "push", "--date", "2026-09-05"], {"STRIPE_API_KEY": "sk_test_x",
                                                  "STRIPE_API_BASE": "http://127.0.0.1:99999"}, 3,
     "environment variable STRIPE_API_BASE: 'http://127.0.0.1:99999' is not an http(s) URL"),
    (["stripe", "push", "--date", "2026-09-05"], {"STRIPE_API_KEY": "sk_test_x", "STRIPE_PUSH_CONCURRENCY": "0"}, 3,
     "push concurrency (--concurrency, STRIPE_PUSH_CONCURRENCY) must be >= 1, got 0"),
])
def test_settings_out_of_range_are_named_not_tracebacks(tmp_path: Path, args, env, code, says) -> None:
    # a real warehouse, so the commands reach the settings (nothing is sent anywhere: they stop first)
    from metering import warehouse

    with warehouse.open_warehouse(tmp_path / "w.duckdb"):
        pass
    done = run_cli(*args, "--warehouse", str(tmp_path / "w.duckdb"),
                   env={"METERING_DATA_DIR": str(tmp_path / "data"), "STRIPE_API_BASE": "http://127.0.0.1:9", **env})
    assert done.returncode == code, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("raw", "rate"), [("0.5", 0.5), ("0", 0.0), ("nan", None), ("-1", None), ("fast", None)])
def test_a_pull_rate_is_a_number_of_calls_per_second(monkeypatch, raw: str, rate: float | None) -> None:
    """0.5 (a call every two seconds) was refused as "not a whole number"; nan and -1 are refused."""
    from metering.errors import BadInputError
    from metering.reconcile.settings import ReconcileSettings

    monkeypatch.setenv("METERING_STRIPE_PULL_RATE", raw)
    if rate is not None:
        assert ReconcileSettings.from_env().pull_rate == rate
    else:
        with pytest.raises(BadInputError, match=r"\$METERING_STRIPE_PULL_RATE: .* is not a rate"):
            ReconcileSettings.from_env()


def test_a_corrupt_sandbox_state_is_named_by_the_main_job(tmp_path: Path) -> None:
    """Resuming the main job over a cut-short `sandbox/state.json` was a JSONDecodeError traceback."""
    state = tmp_path / "data" / "sandbox" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text('{"objects": {')
    done = run_cli("demo", "--data-dir", str(tmp_path / "data"), env={"METERING_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 3, done.stderr[-2000:]
    assert f"{state}: not a sandbox state file" in done.stderr and "--fresh" in done.stderr
    assert "Traceback" not in done.stderr


def test_another_months_demo_on_a_folder_is_refused_before_any_work(tmp_path: Path) -> None:
    """`--month 2026-10` on September's folder failed a minute in: Stripe's "no more than 5 minutes in
    the future" traceback, then rating's refusal of periods overlapping September's."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "demo.json").write_text('{"month": "2026-09", "customers": 200, "events": 150000, "seed": 7}')
    before = sorted(data.rglob("*"))
    done = run_cli("demo", "--month", "2026-10", "--data-dir", str(data), env={"METERING_DATA_DIR": str(data)})
    assert done.returncode == 3, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {data} holds the demo of 2026-09 (200 customers, 150,000 events, seed 7), not 2026-10 (200 customers, "
        "150,000 events, seed 7): one data folder holds one demo. Run `metering demo --fresh` to replace it, or give "
        "another --data-dir")
    assert sorted(data.rglob("*")) == before   # no sample files, no warehouse, no sandbox


@pytest.mark.parametrize(("args", "says"), [
    # DuckDB's parser refused it (exit 3), and 0GB failed the work with an Out of Memory error (exit 3):
    # a number out of range is a usage error (exit 2), before anything is opened
    (["--memory-limit", "99999999TB"], "'99999999TB' is outside 64MB .. 1PB"),
    (["--memory-limit", "0GB"], "'0GB' is outside 64MB .. 1PB"),
    # an ingestion time in the future took events up to it as not in the future (one dated 2099 was
    # accepted); the last day of year 9999 overflowed (a traceback)
    (["--as-of", "2099-01-01"], "2099-01-01T00:00:00+00:00 is in the future"),
    (["--as-of", "9999-12-31T23:59:59+00:00"], "is outside"),
])
def test_ingest_options_out_of_range_are_usage_errors(tmp_path: Path, args, says) -> None:
    (tmp_path / "a.jsonl").write_text("{}\n")
    done = run_cli("ingest", "--warehouse", str(tmp_path / "w.duckdb"), *args,
                   str(tmp_path / "a.jsonl"), env={"METERING_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "w.duckdb").exists()


def test_a_demo_seed_out_of_range_is_a_usage_error_before_any_file_is_written(tmp_path: Path) -> None:
    """`--seed -1` was an OverflowError traceback once the sample files were half written."""
    done = run_cli("demo", "--seed", "-1", "--data-dir", str(tmp_path / "data"),
                   env={"METERING_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 2 and "Traceback" not in done.stderr and "--seed" in done.stderr
    assert not (tmp_path / "data" / "raw").exists() and not (tmp_path / "data" / "customers.csv").exists()


def test_an_in_memory_warehouse_still_publishes(tmp_path: Path) -> None:
    """It has no path: the check that the snapshot is not the warehouse itself once failed on it."""
    from metering import warehouse

    with warehouse.open_warehouse(":memory:") as con:
        assert warehouse.publish(":memory:", tmp_path / "s.duckdb", con=con) == tmp_path / "s.duckdb"
    assert (tmp_path / "s.duckdb").stat().st_size > 0


@pytest.mark.parametrize("snapshot", ["w.duckdb", "w.duckdb.wal"])
def test_publishing_onto_the_warehouse_itself_is_refused(tmp_path: Path, snapshot: str) -> None:
    """It printed `published` and replaced the live warehouse with its copy; onto its log (audit), the
    commits the log held were lost."""
    from metering import warehouse

    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE keep AS SELECT 1 AS x")
    done = run_cli("publish", "--warehouse", str(tmp_path / "w.duckdb"), "--snapshot", str(tmp_path / snapshot))
    assert done.returncode == 3, done.stderr
    assert "the snapshot cannot be the warehouse or its write-ahead log" in done.stderr
    assert not (tmp_path / "w.duckdb.wal").exists()
    with warehouse.open_warehouse(tmp_path / "w.duckdb", read_only=True) as con:
        assert con.execute("SELECT count(*) FROM information_schema.schemata WHERE schema_name = 'analytics'"
                           ).fetchone()[0] == 0


def test_a_rules_file_with_a_self_referencing_alias_is_named(tmp_path: Path) -> None:
    """`x: &a [1, *a]` recursed without end (RecursionError); nested aliases can expand to billions."""
    import shutil

    rules = tmp_path / "rules"
    shutil.copytree(config.PROJECT_ROOT / "rating_rules", rules)
    plan = rules / "plans" / "starter.yaml"
    plan.write_text("x: &a [1, *a]\n" + plan.read_text())
    done = run_cli("rules", "validate", str(rules))
    assert done.returncode == 3, done.stderr
    assert f"{plan}:1: (document): an alias that contains itself: write the values out" in done.stdout
    assert "Traceback" not in done.stderr
    nested = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))
    plan.write_text(nested)
    done = run_cli("rules", "validate", str(rules))
    assert done.returncode == 3 and "aliases repeating more than 100000 values" in done.stdout, done.stderr
    # many values written out, with no alias, are no trouble
    from metering.rules.yaml_marks import parse_yaml

    tiers = "".join(f"  - {{up_to: {i}, unit_amount: '0.1'}}\n" for i in range(34_000))
    assert len(parse_yaml("tiers:\n" + tiers, "big.yaml")[0]["tiers"]) == 34_000


@pytest.mark.parametrize(("args", "says"), [
    # date arithmetic around year 1 or 9999 overflowed: tracebacks, or demo's Dagster errors (exit 4)
    (["reconcile", "--period", "0001-01", "--no-pull"], "'--period': '0001-01' is outside 2000-01 .. 9998-12"),
    (["rerate", "--from", "0001-01-01", "--to", "0001-01-02"], "'--from': '0001-01-01' is outside 2000-01-01 .. 9998-12-31"),
    (["rerate", "--from", "9999-12-01", "--to", "9999-12-31"], "'--from': '9999-12-01' is outside"),
    (["generate", "--start", "0001-01-01", "--end", "0001-01-02"], "'--start': '0001-01-01' is outside"),
    (["rate", "--usage", "u.csv", "--out", "o.csv", "--at", "9999-12-31"], "'--at': '9999-12-31' is outside"),
    (["demo", "--month", "0001-01"], "'--month': 0001-01 is outside 2026-01 .. "),
    (["demo", "--month", "9998-12"], "'--month': 9998-12 is outside 2026-01 .. "),
])
def test_dates_far_outside_billing_are_usage_errors(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "u.csv").write_text("customer_id,meter,quantity,plan\nc1,api_calls,1,pro\n")
    done = run_cli(*args, env={"METERING_DATA_DIR": str(tmp_path / "data")}, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("args", "env", "says"), [
    # the SDK got it and a connection failure came back: exit 5, as if Stripe were down
    (["stripe", "invoice-items", "--period", "2026-09"], {"STRIPE_API_KEY": "sk_test_x", "STRIPE_API_BASE": "notaurl"},
     "environment variable STRIPE_API_BASE: 'notaurl' is not an http(s) URL"),
    (["ingest", "/dev/null"], {}, "/dev/null: not a regular file"),
    # nan passed the `<= 0` test and reached the SDK as a timeout; inf would wait for ever
    *[(["stripe", "invoice-items", "--period", "2026-09"], {"STRIPE_API_KEY": "sk_test_x", name: value},
       f"environment variable {name}: must be > 0 and at most 3600 seconds, got {value!r}")
      for name, value in (("STRIPE_READ_TIMEOUT", "nan"), ("STRIPE_CONNECT_TIMEOUT", "inf"),
                          ("STRIPE_READ_TIMEOUT", "1e9"))],
    # a negative count reached the SDK; a huge one retried a failing catalog call for ever
    *[(["stripe", "invoice-items", "--period", "2026-09"],
       {"STRIPE_API_KEY": "sk_test_x", "STRIPE_MAX_NETWORK_RETRIES": value},
       f"environment variable STRIPE_MAX_NETWORK_RETRIES: must be 0 to 20, got {value!r}") for value in ("-1", "1000")],
])
def test_settings_and_paths_of_the_wrong_kind_are_bad_input(tmp_path: Path, args, env, says) -> None:
    done = run_cli(*args, env={"METERING_DATA_DIR": str(tmp_path / "data"),
                               "METERING_WAREHOUSE": str(tmp_path / "w.duckdb"), **env})
    assert done.returncode == 3, done.stderr
    assert says in done.stderr and "Traceback" not in done.stderr


def test_the_customer_list_cannot_overwrite_the_warehouse(tmp_path: Path) -> None:
    """`generate --customers-file <the warehouse>` replaced a 5.7 MB warehouse with an 18 KB CSV (audit)."""
    from metering import warehouse

    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        con.execute("CREATE TABLE keep AS SELECT 1 AS x")
    before = (tmp_path / "w.duckdb").read_bytes()
    done = run_cli("generate", "--events", "10", "--customers", "2", "--out", str(tmp_path / "raw"),
                   "--customers-file", str(tmp_path / "w.duckdb"),
                   env={"METERING_WAREHOUSE": str(tmp_path / "w.duckdb"), "METERING_DATA_DIR": str(tmp_path / "d")})
    assert done.returncode == 3, done.stderr
    assert f"--customers-file {tmp_path / 'w.duckdb'}: is the warehouse" in done.stderr
    assert (tmp_path / "w.duckdb").read_bytes() == before


def test_stripe_sync_without_a_customer_list_needs_the_warehouse(tmp_path: Path) -> None:
    """A mistyped --warehouse created an empty warehouse and exited 0 with no customers (audit)."""
    done = run_cli("stripe", "sync", "--warehouse", str(tmp_path / "typo.duckdb"),
                   env={"STRIPE_API_KEY": "sk_test_x", "STRIPE_API_BASE": "http://127.0.0.1:9",
                        "METERING_DATA_DIR": str(tmp_path / "d")})
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "typo.duckdb").exists()


def test_ctrl_c_is_one_line_and_exit_130_and_stores_nothing(tmp_path: Path) -> None:
    """SIGINT during `metering ingest`: click's standalone mode printed "Aborted!" and exited 1 (a bug, by
    the exit codes), or DuckDB's form of the interrupt ("Query interrupted") was a traceback. Now it is
    `interrupted` and 130, and the file's transaction left nothing: the warehouse holds no event."""
    import os
    import signal
    import time

    import duckdb

    raw = tmp_path / "raw"
    generated = run_cli("generate", "--events", "400000", "--customers", "50", "--formats", "jsonl", "--single-file",
                        "--out", str(raw), "--customers-file", str(tmp_path / "c.csv"))
    assert generated.returncode == 0, generated.stderr
    db = tmp_path / "wh.duckdb"
    proc = subprocess.Popen([sys.executable, "-c", "from metering.cli import main; main()", "--log-json", "ingest",
                             str(raw), "--warehouse", str(db)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "METERING_DATA_DIR": str(tmp_path / "data")},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:   # the file is being read: DuckDB is at work
        seen.append(line)
        if '"reading ' in line:
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 130, "".join(seen) + rest
    assert "Traceback" not in rest and "Aborted!" not in rest
    assert rest.strip().splitlines()[-1] == "interrupted"
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM usage_events").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM ingested_files").fetchone() == (0,)


def test_an_output_path_that_is_not_utf8_is_bad_input_naming_it(tmp_path: Path) -> None:
    """A warehouse, snapshot or output name that is not UTF-8 ended in a UnicodeEncodeError (DuckDB) or
    TypeError (Polars' sink) traceback, exit 1, and `generate` left the files it had written. Now exit 3
    naming the option and the name (bad bytes escaped), before anything is written."""
    import os

    bad = os.fsdecode(b"w\xff")
    usage = tmp_path / "usage.csv"
    usage.write_text("customer_id,meter,quantity,plan\nc1,api_calls,10,pro\n")
    cases = [
        (["ingest", str(usage), "--warehouse", str(tmp_path / f"{bad}.duckdb")], "--warehouse"),
        (["publish", "--snapshot", str(tmp_path / f"{bad}.duckdb")], "--snapshot"),
        (["rate", "--usage", str(usage), "--out", str(tmp_path / f"{bad}.csv")], "--out"),
        (["generate", "--events", "100", "--out", str(tmp_path / bad)], "--out"),
    ]
    for args, option in cases:
        result = invoke(*args)
        assert result.exit_code == 3, (args, result.output)
        assert f"{option} {tmp_path}/w\\xff" in result.output and "is not valid UTF-8" in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "usage.csv"]
    assert list((tmp_path / "data").iterdir()) == []
    result = invoke("rules", "validate", env={"METERING_WAREHOUSE": str(tmp_path / f"{bad}.duckdb")})
    assert result.exit_code == 3 and f"$METERING_WAREHOUSE: {tmp_path}/w\\xff.duckdb" in result.output, result.output


def test_rate_will_not_write_its_lines_over_the_usage_it_prices(tmp_path: Path) -> None:
    """`rate --usage usage.csv --out usage.csv` replaced the input with the rated lines, exit 0."""
    usage = tmp_path / "usage.csv"
    usage.write_text("customer_id,meter,quantity,plan\nc1,api_calls,10,pro\n")
    before = usage.read_bytes()
    result = invoke("rate", "--usage", str(usage), "--out", str(tmp_path / "." / "usage.csv"))
    assert result.exit_code == 3, result.output
    assert "is the --usage file" in result.output
    assert usage.read_bytes() == before


def test_a_missing_customer_list_is_named_by_where_it_came_from(tmp_path: Path) -> None:
    """`rerate --customers X` said "(the customer list, see METERING_CUSTOMERS)", a variable never used."""
    from metering import warehouse

    db = tmp_path / "wh.duckdb"
    warehouse.connect(db).close()
    result = invoke("rerate", "--from", "2026-10-01", "--to", "2026-10-01", "--warehouse", str(db),
                    "--customers", str(tmp_path / "nope.csv"))
    assert result.exit_code == 3, result.output
    assert f"{tmp_path / 'nope.csv'}: file not found (the customer list)" in result.output
    assert "METERING_CUSTOMERS" not in result.output


def test_only_ctrl_c_in_duckdbs_words_is_an_interrupt_not_any_error_that_says_interrupted() -> None:
    """Exit 130 is for the user's Ctrl-C. DuckDB says it three ways (measured with SIGINT during a
    query on 1.5.5: RuntimeError "Query interrupted" with the KeyboardInterrupt as its cause; and
    `InterruptException` from `con.interrupt()`); a RuntimeError that merely says "interrupted" (a
    connection reset mid-upload) was also taken for one, and reported as the user's doing."""
    import threading

    import duckdb

    from metering.cli import is_interrupt

    con = duckdb.connect()
    timer = threading.Timer(0.2, con.interrupt)
    timer.start()
    with pytest.raises(duckdb.InterruptException) as raised:
        con.execute("SELECT sum(x) FROM range(100000000000) t(x)").fetchall()
    timer.join()
    assert is_interrupt(raised.value)
    assert is_interrupt(RuntimeError("Query interrupted"))
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("any words") from None
    except RuntimeError as during_ctrl_c:
        assert is_interrupt(during_ctrl_c)   # raised while the KeyboardInterrupt was handled
    assert not is_interrupt(RuntimeError("upload interrupted: connection reset by peer"))
    assert not is_interrupt(RuntimeError("Query interrupted by the server, retry"))
