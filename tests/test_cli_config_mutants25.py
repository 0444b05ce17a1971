"""Where things live and what the logs say, as a hand mutation audit of `metering/config.py`,
`metering/logs.py` and the rest of `metering/cli` found them under-tested.

- config: every default path (the project's `data/` and `rating_rules/`, the snapshot's file name), an
  empty variable counting as unset, which option or variable a message blames, the checks that a folder
  can be written and that an output file is not a folder, and which API bases are http(s) URLs;
- logs: the level names in JSON lines, `METERING_LOG_LEVEL`/`METERING_LOG_JSON` as the README reads
  them, one handler however often logging is set up, and redaction of every secret: comma-separated
  rotations, `%`-formatted messages, extra fields, tracebacks, and secrets JSON has to escape;
- the command line: `--warehouse` over `$METERING_WAREHOUSE` for reconcile, report, dunning summary and
  webhooks land; option bounds (`--events`, `--tolerance`, `--settle-seconds`); a bug's redacted
  traceback; a sandbox state file that lacks a field; which socket address a server prefers; Stripe's
  multi-line messages on one line; `rules validate` against a held warehouse.

Files under tmp_path, real DuckDB, each command run for real (click's runner or the entry point in a
process); the environment is set with monkeypatch or the runner's `env`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from metering import config, warehouse
from metering.cli import cli
from metering.errors import BadInputError
from tests.test_cli_mutants30 import _held

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PATH_VARIABLES = ("METERING_DATA_DIR", "METERING_WAREHOUSE", "METERING_SNAPSHOT", "METERING_RULES",
                  "METERING_RAW_DIR", "METERING_CUSTOMERS")


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["--log-level", "ERROR", *args], env=env)


def run_python(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


# --- config: defaults, empty variables, who is blamed -----------------------------------------------


def test_every_path_has_its_documented_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """README's table: data/, data/warehouse.duckdb, data/snapshot.duckdb, rating_rules/, data/raw/,
    data/customers.csv, all relative to the project root (this file's folder's parent), not the
    current folder."""
    for name in PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir("/")
    data = PROJECT_ROOT / "data"
    assert config.data_dir() == data
    assert config.warehouse_path() == data / "warehouse.duckdb"
    assert config.snapshot_path() == data / "snapshot.duckdb"
    assert config.rules_dir() == PROJECT_ROOT / "rating_rules"
    assert config.raw_dir() == data / "raw"
    assert config.customers_path() == data / "customers.csv"


def test_the_data_dir_moves_the_data_files_but_not_the_rules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("METERING_DATA_DIR", str(tmp_path))
    assert config.snapshot_path() == tmp_path / "snapshot.duckdb"
    assert config.raw_dir() == tmp_path / "raw"
    assert config.rules_dir() == PROJECT_ROOT / "rating_rules"   # the rules ship with the code


def test_an_empty_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """README: "An empty variable counts as unset (its default applies), METERING_DATA_DIR included"; an
    empty one read as a path would be `.`, the current folder."""
    monkeypatch.setenv("METERING_DATA_DIR", "")
    assert config.data_dir() == PROJECT_ROOT / "data"
    monkeypatch.setenv("METERING_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("METERING_WAREHOUSE", "")
    assert config.warehouse_path() == tmp_path / "warehouse.duckdb"
    monkeypatch.setenv("METERING_RAW_DIR", "")
    # not set, so not blamed: the default is, and the data dir that moved it
    assert config.path_origin(None, "--out", "METERING_RAW_DIR") == "--out (default, under $METERING_DATA_DIR)"


def test_a_message_blames_the_option_the_variable_or_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METERING_RAW_DIR", "/somewhere")
    assert config.path_origin("given", "--out", "METERING_RAW_DIR") == "--out"
    assert config.path_origin(None, "--out", "METERING_RAW_DIR") == "$METERING_RAW_DIR"
    monkeypatch.delenv("METERING_RAW_DIR")
    monkeypatch.delenv("METERING_DATA_DIR")
    assert config.path_origin(None, "--out", "METERING_RAW_DIR") == "--out (default)"


@pytest.mark.parametrize("name", ["METERING_DATA_DIR", "METERING_WAREHOUSE"])
def test_a_path_variable_that_is_not_utf8_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                                name: str) -> None:
    """Byte 0xff is not UTF-8; Python keeps it as the surrogate \\udcff, shown escaped as \\xff."""
    monkeypatch.setenv(name, f"{tmp_path}/w\udcff")
    with pytest.raises(BadInputError) as caught:
        config.data_dir() if name == "METERING_DATA_DIR" else config.warehouse_path()
    assert str(caught.value).startswith(f"${name}: {tmp_path}/w\\xff: the file name is not valid UTF-8")


# --- config: folders and files that cannot be written ------------------------------------------------


def test_a_file_where_a_folder_should_be_is_named_as_such(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("x")
    with pytest.raises(BadInputError) as caught:
        config.ensure_dir(plain, "--out")
    assert str(caught.value) == f"--out: {plain} exists and is not a folder"


def test_a_folder_no_file_can_be_created_in_is_refused_before_the_work() -> None:
    """/proc exists and is a folder, but nothing can be created in it, even by root: only trying tells.
    A folder under it cannot even be created, and the message says which of the two failed."""
    with pytest.raises(BadInputError) as caught:
        config.ensure_dir("/proc", "--out")
    assert str(caught.value).startswith("--out: cannot create files in /proc: ")
    with pytest.raises(BadInputError) as caught:
        config.ensure_dir("/proc/metering-new", "--out")
    assert str(caught.value).startswith("--out: cannot create the folder /proc/metering-new: ")


def test_an_output_file_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadInputError) as caught:
        config.ensure_file_target(tmp_path, "--out")
    assert str(caught.value) == f"--out {tmp_path}: is a folder, not a file"
    assert config.ensure_file_target(tmp_path / "new" / "f.csv", "--out") == tmp_path / "new" / "f.csv"
    assert (tmp_path / "new").is_dir()


@pytest.mark.parametrize(("text", "ok"), [
    ("https://api.stripe.com", True), ("http://127.0.0.1:12111/", True),
    ("ftp://127.0.0.1", False),
    ("http://", False), ("https:///v1", False),                 # no host
    ("http://127.0.0.1:99999", False), ("http://h:port", False),  # a port out of range, not a number
])
def test_which_api_bases_are_http_urls(text: str, ok: bool) -> None:
    assert config.is_http_url(text) is ok


# --- logs: levels, variables, one handler --------------------------------------------------------------


def test_logging_set_up_from_the_variables_once_however_often_it_is_called() -> None:
    """METERING_LOG_LEVEL=warning hides info; METERING_LOG_JSON=YES (any case) means JSON; a second
    set-up replaces the first handler, so the warning is one line, its level in lower case."""
    script = ("import logging; from metering.logs import setup_logging; setup_logging(); setup_logging(); "
              "log = logging.getLogger('t'); log.info('hidden'); log.warning('shown')")
    done = run_python(script, {"METERING_LOG_LEVEL": "warning", "METERING_LOG_JSON": "YES", "STRIPE_LOG": ""})
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert [(line["level"], line["logger"], line["message"]) for line in lines] == [("warning", "t", "shown")]


def test_the_set_up_redacts_a_message_before_it_becomes_json() -> None:
    """The handler's filter redacts the message while it is still plain text: after json.dumps the
    password `pa"ss\\word-1234` reads `pa\\"ss\\\\word-1234`, which the final pass would not find."""
    script = ("import logging, os; from metering.logs import setup_logging; setup_logging('info', json_output=True); "
              "logging.getLogger('t').warning('login %s refused', os.environ['METERING_SMTP_PASSWORD'])")
    done = run_python(script, {"METERING_SMTP_PASSWORD": 'pa"ss\\word-1234', "STRIPE_LOG": ""})
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["message"] for line in done.stderr.splitlines()] == ["login [REDACTED] refused"]
    assert "word-1234" not in done.stderr


@pytest.mark.parametrize(("text", "means"), [("Yes", True), ("ON", True), ("True", True), ("OFF", False), ("No", False)])
def test_the_json_variable_takes_any_case(monkeypatch: pytest.MonkeyPatch, text: str, means: bool) -> None:
    from metering.logs import env_log_json

    monkeypatch.setenv("METERING_LOG_JSON", text)
    assert env_log_json() is means


# --- logs: redaction ---------------------------------------------------------------------------------


def _record(msg: str, args: tuple = (), **extra: object) -> logging.LogRecord:
    from metering.logs import RedactingFilter

    record = logging.makeLogRecord({"msg": msg, "args": args, "levelname": "WARNING", "name": "metering.t", **extra})
    RedactingFilter().filter(record)
    return record


def test_every_rotated_webhook_secret_is_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    """STRIPE_WEBHOOK_SECRET lists secrets during rotation, comma-separated, maybe with spaces."""
    from metering.logs import redact

    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "rotating-old-111, rotating-new-222")
    assert redact("tried rotating-old-111 then rotating-new-222") == "tried [REDACTED] then [REDACTED]"


def test_a_secret_of_six_characters_is_redacted_and_one_of_five_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorter values would mask ordinary words; 6 is the shortest masked."""
    from metering.logs import redact

    monkeypatch.setenv("STRIPE_API_KEY", "q7x9z2")
    monkeypatch.setenv("METERING_SMTP_PASSWORD", "q7x9z")
    assert redact("key q7x9z2 and q7x9z") == "key [REDACTED] and q7x9z"


def test_a_percent_formatted_message_is_formatted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """`log.warning("%d%% of %s", 50, key)`: the filter formats it, redacts it and drops the args, or
    the formatter would apply them a second time to "50% of [REDACTED]"."""
    from metering.logs import JsonFormatter, TerminalFormatter

    record = _record("%d%% of %s", (50, "sk_test_abcdef123456"))
    assert json.loads(JsonFormatter().format(record))["message"] == "50% of [REDACTED]"
    assert TerminalFormatter().format(record).endswith("metering.t: 50% of [REDACTED]")


def test_json_lines_redact_extra_fields_and_say_the_level_in_lower_case(monkeypatch: pytest.MonkeyPatch) -> None:
    from metering.logs import JsonFormatter

    monkeypatch.setenv("STRIPE_API_KEY", "plain-secret-value-42")
    line = json.loads(JsonFormatter().format(_record("pushed", key="plain-secret-value-42", count=3)))
    assert (line["level"], line["message"], line["key"], line["count"]) == ("warning", "pushed", "[REDACTED]", 3)


def _json_escaped_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    """An SMTP password JSON must escape: a quote and a backslash (`"` -> `\\"`, `\\` -> `\\\\`)."""
    secret = 'pa"ss\\word-1234'
    monkeypatch.setenv("METERING_SMTP_PASSWORD", secret)
    return secret


def test_a_secret_json_escapes_is_redacted_in_the_message_and_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """The message is redacted by the filter and the traceback before they go into the JSON text; the
    final pass over that text no longer finds `pa"ss\\word-1234`, only `pa\\"ss\\\\word-1234`."""
    from metering.logs import JsonFormatter

    secret = _json_escaped_secret(monkeypatch)
    try:
        raise ConnectionError(f"login refused for {secret}")
    except ConnectionError:
        record = _record("smtp login with %s failed", (secret,), exc_info=sys.exc_info())
    text = JsonFormatter().format(record)
    line = json.loads(text)
    assert line["message"] == "smtp login with [REDACTED] failed"
    assert line["exc"].endswith("ConnectionError: login refused for [REDACTED]")
    assert "word-1234" not in text


@pytest.mark.parametrize("secret", ['pa"ss\\word-1234', "pässword-1234"])
def test_a_secret_json_escapes_is_redacted_in_an_extra_field(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    """Extra fields are redacted in the written line, after json.dumps, which wrote `pa\\"ss\\\\word-1234`
    (a quote and a backslash escaped) and, in JSON lines (ensure_ascii), `p\\u00e4ssword-1234`: the
    secret leaked, in JSON lines and on a terminal (where `_compact` dumps it as JSON too). Fixed in the
    twenty-fifth session: `redact` also replaces the secret's JSON-escaped forms."""
    from metering.logs import JsonFormatter, TerminalFormatter

    monkeypatch.setenv("METERING_SMTP_PASSWORD", secret)
    record = _record("smtp login failed", password=secret)
    for line in (JsonFormatter().format(record), TerminalFormatter().format(record)):
        assert "word-1234" not in line
        assert "[REDACTED]" in line


def test_an_empty_field_is_shown_quoted_on_a_terminal() -> None:
    from metering.logs import TerminalFormatter

    line = TerminalFormatter().format(_record("landed", folder="", files=0))
    assert line.endswith('metering.t: landed folder="" files=0')


# --- the command line -------------------------------------------------------------------------------


def _missing_beside_a_warehouse(tmp_path: Path, isolated_env: Path) -> Path:
    """$METERING_WAREHOUSE (conftest's) exists; the `--warehouse` given does not."""
    warehouse.connect(isolated_env / "warehouse.duckdb").close()
    return tmp_path / "typo.duckdb"


@pytest.mark.parametrize("command", [
    ["reconcile", "--period", "2026-10", "--no-pull"],
    ["report", "--period", "2026-10"],
    ["dunning", "summary"],
])
def test_the_warehouse_option_wins_over_the_variable(tmp_path: Path, isolated_env: Path, command: list[str]) -> None:
    """Each of these refuses a warehouse that is not there: the option's, though the variable's exists
    (reading that one instead would reconcile or report on another warehouse)."""
    missing = _missing_beside_a_warehouse(tmp_path, isolated_env)
    result = invoke(*command, "--warehouse", str(missing))
    assert result.exit_code == 3, result.output
    assert f"error: {missing}: no warehouse there" in result.output
    assert not missing.exists()


def test_webhooks_land_writes_to_the_warehouse_option(tmp_path: Path, isolated_env: Path) -> None:
    landing = tmp_path / "landing"
    landing.mkdir()
    chosen = tmp_path / "chosen.duckdb"
    result = invoke("webhooks", "land", "--landing", str(landing), "--warehouse", str(chosen))
    assert result.exit_code == 0, result.output
    assert chosen.exists() and not (isolated_env / "warehouse.duckdb").exists()


@pytest.mark.parametrize(("args", "option"), [
    (["generate", "--events", "0"], "--events"),
    (["webhooks", "serve", "--tolerance", "0"], "--tolerance"),
])
def test_zero_is_below_the_range(args: list[str], option: str) -> None:
    """At least one event to generate; a signature tolerance of 0 s would refuse every delivery."""
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output


def test_a_settle_time_of_0_is_taken_and_judges_the_rows(tmp_path: Path, isolated_env: Path) -> None:
    """0 s: trust Stripe's summaries at once (the default is 900). An empty warehouse has nothing to
    reconcile (exit 0), and `reconciliation_runs` records the settings that judged the month."""
    warehouse.connect(isolated_env / "warehouse.duckdb").close()
    result = invoke("reconcile", "--period", "2026-10", "--no-pull", "--settle-seconds", "0",
                    "--invoice-grace-seconds", "11")
    assert result.exit_code == 0, result.output
    assert "reconciled 2026-10: 0 customer x meter rows, 0 invoices" in result.output
    with warehouse.open_warehouse(isolated_env / "warehouse.duckdb", read_only=True) as con:
        stored = json.loads(con.execute("SELECT settings FROM reconciliation_runs").fetchone()[0])
    assert (stored["settle_seconds"], stored["invoice_grace_seconds"]) == (0, 11)


def test_a_sandbox_state_file_without_a_field_is_bad_input_naming_it(tmp_path: Path) -> None:
    """`{"objects": {}}` lacks `meter_events`, the next field the loader reads: exit 3, one line."""
    state = tmp_path / "state.json"
    state.write_text('{"objects": {}}')
    result = invoke("stripe-sandbox", "--port", "0", "--state", str(state))
    assert result.exit_code == 3, (result.output, result.exception)
    assert result.output.splitlines()[-1] == (
        f"error: --state {state}: not a sandbox state file (no 'meter_events' field)")


def test_a_bugs_traceback_is_printed_redacted(tmp_path: Path) -> None:
    """A bug (here a ValueError from a command) keeps its traceback, exit 1, with the key masked."""
    (tmp_path / "bugcmd.py").write_text("import click\n\n@click.command()\ndef boom():\n"
                                        "    raise ValueError('refused key sk_test_51bugbugbug')\n")
    script = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import metering.cli as m; "
              "m.cli.lazy['boom'] = m.Lazy('bugcmd:boom', 'A bug.'); m.main()")
    done = subprocess.run([sys.executable, "-c", script, "boom"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("Traceback"), done.stderr
    assert done.stderr.rstrip().endswith("ValueError: refused key [REDACTED]"), done.stderr
    assert "bugbugbug" not in done.stderr


def test_a_subclass_of_runtime_error_saying_query_interrupted_is_a_bug() -> None:
    """Only DuckDB's own RuntimeError("Query interrupted") is Ctrl-C; another class with those words
    is not the user's doing: exit 1, the exception kept."""
    import duckdb  # noqa: F401  (as the commands that meet DuckDB's interrupt have it loaded)

    from metering.cli import Lazy, LazyGroup

    global FAILING

    @click.command()
    def fail() -> None:
        raise NotImplementedError("Query interrupted")

    FAILING = fail
    group = LazyGroup(name="metering", lazy={"fail": Lazy(f"{__name__}:FAILING", "A command that fails.")})
    result = CliRunner().invoke(group, ["fail"])
    assert result.exit_code == 1 and isinstance(result.exception, NotImplementedError), result.output


FAILING = None


def test_a_server_prefers_the_ipv4_address_of_a_name() -> None:
    """localhost as Debian lists it: ::1 first, then 127.0.0.1. uvicorn binds the IPv4 one."""
    from metering.cli.options import preferred_address

    v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 8000, 0, 0))
    v4 = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 8000))
    assert preferred_address([v6, v4]) == v4
    assert preferred_address([v6]) == v6


def test_a_stripe_message_over_several_lines_is_one_line() -> None:
    import stripe

    from metering.cli.options import stripe_errors
    from metering.errors import ExternalServiceError

    with pytest.raises(ExternalServiceError) as caught, stripe_errors():
        raise stripe.InvalidRequestError("No such price:\n  'price_1'.\n", param="price")
    assert str(caught.value) == "Stripe: InvalidRequestError: No such price: 'price_1'."


def test_rules_validate_does_not_read_the_default_snapshot_for_a_held_warehouse_option(
        tmp_path: Path, isolated_env: Path) -> None:
    """`--warehouse held.duckdb`, held by another process: the published snapshot ($METERING_SNAPSHOT)
    is a copy of the default warehouse, not of this one, so it is not read instead: exit 6."""
    warehouse.connect(isolated_env / "snapshot.duckdb").close()
    held = tmp_path / "held.duckdb"
    warehouse.connect(held).close()
    with _held(held):
        result = invoke("rules", "validate", "--warehouse", str(held))
    assert result.exit_code == 6, result.output
    assert f"{held}: held by another process and no published snapshot" in result.output
    # nor does it say it tries the snapshot (until the thirtieth session it did, then did not)
    assert "trying the published snapshot" not in result.output, result.output


def test_a_push_given_only_from_pushes_that_one_day(isolated_env: Path, stripe_sandbox) -> None:
    """`--from D` without `--to` is the range D..D (nothing rated: nothing to send, exit 0)."""
    warehouse.connect(isolated_env / "warehouse.duckdb").close()
    result = invoke("stripe", "push", "--from", "2026-10-01",
                    env={"STRIPE_API_KEY": "sk_test_push_one_day", "STRIPE_API_BASE": stripe_sandbox.base_url,
                         "STRIPE_MAX_NETWORK_RETRIES": "0"})
    assert result.exit_code == 0, (result.output, result.exception)
    assert "push 2026-10-01..2026-10-01 (" in result.output
