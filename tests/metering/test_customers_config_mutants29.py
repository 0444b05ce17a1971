"""The customer list, logging set-up, atomic files, paths and reconciliation settings: cases a hand
mutation audit (29e) found unchecked.

- customers: month bounds of a mid-month day, a missing list named as the default one, a row longer
  than the header reported once, an e-mail with nothing after `@`, the plan list in a message sorted,
  the problem count past 50;
- logs: a masked secret JSON must escape in a traceback, a password holding a comma (a defect, fixed
  in the twenty-ninth session), private `_` attributes, `=` and non-ASCII letters in terminal fields, a level with spaces,
  an unset or blank level variable, stripe's console log turned off, JSON on a pipe by default and
  stripe's and alembic's loggers kept at warning;
- files: text that cannot be UTF-8 fails the write and keeps the target;
- config: an empty explicit path counts as not given, a URL needs a host;
- reconciliation settings: the documented defaults, a pull concurrency of 0, a line without a
  currency, the describe sentence's own default, the 15-digit tolerance bound, the 10^12 bound on a
  pull rate.

Expected values are worked out by hand from the modules' docstrings and the README; every file lives
under `tmp_path` (conftest's `isolated_env`), logging set-up runs in a fresh interpreter.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from metering.customers import load_customers, month_bounds
from metering.errors import BadInputError
from metering.logs import JsonFormatter, TerminalFormatter, parse_log_level
from metering.rules.model import Rules
from metering.rules.plans import load_rules

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HEADER = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
D = dt.date


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "customers.csv"
    path.write_text(HEADER + body)
    return path


def problems(path: Path | None, rules: Rules | None = None) -> list[str]:
    with pytest.raises(BadInputError) as info:
        load_customers(path, rules)
    return str(info.value).splitlines()


@pytest.fixture(scope="module")
def shipped_rules() -> Rules:
    return load_rules(PROJECT_ROOT / "rating_rules")


# --- customers: months, origin, rows --------------------------------------------------------------------

def test_month_bounds_of_a_day_inside_a_month_start_on_its_first():
    """The month holding 2026-10-15 is [2026-10-01, 2026-11-01); December 2026 ends on 2027-01-01."""
    assert month_bounds(D(2026, 10, 15)) == (D(2026, 10, 1), D(2026, 11, 1))
    assert month_bounds(D(2026, 12, 31)) == (D(2026, 12, 1), D(2027, 1, 1))


def test_a_missing_default_list_says_it_was_the_default(isolated_env: Path, monkeypatch):
    """Neither a path nor $METERING_CUSTOMERS: the default `<data dir>/customers.csv` (the data dir
    is set by the test's own environment, which must not count as naming the list)."""
    monkeypatch.delenv("METERING_CUSTOMERS", raising=False)
    assert problems(None) == [f"{isolated_env / 'customers.csv'}: file not found "
                              "(the customer list, by default (pass the file, or set METERING_CUSTOMERS))"]


def test_a_row_longer_than_the_header_is_one_problem_whatever_its_fields(tmp_path: Path):
    """Line 2 has 9 fields for 8 columns (and an empty customer_id, which would be a second problem
    were its columns read): only the field count is reported, since the columns cannot be trusted."""
    path = write(tmp_path, ",A,a@a.test,usd,,starter,2026-01-01,succeeds,extra\n")
    assert problems(path) == ["1 problem(s) in the customer list:",
                              f"{path}:2: (row): 9 fields where the header has 8"]


def test_an_email_with_nothing_after_the_at_sign_is_refused(tmp_path: Path):
    path = write(tmp_path, "c1,A,a@,usd,,starter,2026-01-01,succeeds\n")
    assert problems(path) == ["1 problem(s) in the customer list:",
                              f"{path}:2: email: 'a@' is not an e-mail address"]


def test_an_unknown_plan_lists_the_plans_sorted_whatever_order_the_rules_hold(tmp_path: Path, shipped_rules):
    """The shipped plans are pro, pro_jpy, scale, starter; given in reverse they are still listed sorted."""
    reversed_rules = Rules(meters=shipped_rules.meters, plans=dict(reversed(list(shipped_rules.plans.items()))))
    assert list(reversed_rules.plans) == ["starter", "scale", "pro_jpy", "pro"]
    path = write(tmp_path, "c1,A,a@a.test,usd,,gold,2026-01-01,succeeds\n")
    assert problems(path, reversed_rules) == [
        "1 problem(s) in the customer list:",
        f"{path}:2: plan: unknown plan 'gold' (plans: pro, pro_jpy, scale, starter)"]


def test_fifty_one_problems_are_counted_all_and_fifty_listed(tmp_path: Path):
    """51 rows with an empty customer_id (lines 2..52): the count says 51, 50 are listed (lines 2..51),
    and the last line says one more."""
    path = write(tmp_path, ",A,a@a.test,usd,,starter,2026-01-01,succeeds\n" * 51)
    lines = problems(path)
    assert lines[0] == "51 problem(s) in the customer list:"
    assert lines[1:51] == [f"{path}:{n}: customer_id: empty" for n in range(2, 52)]
    assert lines[51:] == ["... and 1 more"]


# --- logs ----------------------------------------------------------------------------------------------

def _record(msg: str, exc_info=None, **extra: object) -> logging.LogRecord:
    return logging.makeLogRecord({"msg": msg, "args": None, "levelname": "WARNING", "name": "metering.t",
                                  "exc_info": exc_info, **extra})


def run_python(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter, its stderr a pipe (not a terminal), without the log variables unless given."""
    base = {k: v for k, v in os.environ.items() if k not in ("METERING_LOG_JSON", "METERING_LOG_LEVEL", "STRIPE_LOG")}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**base, **env})


def test_a_masked_secret_json_must_escape_is_redacted_in_a_traceback(monkeypatch):
    """Stripe echoes a refused key as its first 8 characters, asterisks, its last 4. The password
    `pa"ss-word-1234` so masked is `pa"ss-wo****1234`; in the JSON text the quote is escaped
    (`pa\\"ss-wo****1234`), which the masked-form pattern no longer matches, so the traceback must be
    redacted before it is put into the JSON."""
    monkeypatch.setenv("METERING_SMTP_PASSWORD", 'pa"ss-word-1234')
    try:
        raise ConnectionError('login refused for pa"ss-wo****1234')
    except ConnectionError:
        record = _record("smtp login failed", exc_info=sys.exc_info())
    text = JsonFormatter().format(record)
    assert json.loads(text)["exc"].endswith("ConnectionError: login refused for [REDACTED]")
    assert "****1234" not in text


@pytest.mark.parametrize(("password", "logged"), [
    ("abc,defg", "smtp login as abc,defg refused"),      # both halves under 6 characters: nothing masked
    ("hunter,22", "smtp login as hunter,22 refused"),    # the half ',22' was left in the line
])
def test_a_password_holding_a_comma_is_redacted_whole(monkeypatch, password: str, logged: str):
    """README: the filter masks the value of METERING_SMTP_PASSWORD; only STRIPE_WEBHOOK_SECRET is a
    comma-separated list. The whole 8- or 9-character password (>= 6, long enough to mask) goes."""
    from metering.logs import redact

    monkeypatch.setenv("METERING_SMTP_PASSWORD", password)
    assert redact(logged) == "smtp login as [REDACTED] refused"


def test_a_field_whose_name_starts_with_an_underscore_is_not_written():
    """Private attributes (`_name`) are not structured fields: JSON and terminal lines omit them."""
    record = _record("landed", _internal="x", files=2)
    assert json.loads(JsonFormatter().format(record))["files"] == 2
    assert "_internal" not in json.loads(JsonFormatter().format(record))
    assert TerminalFormatter().format(record).endswith("metering.t: landed files=2")


def test_a_field_value_holding_an_equals_sign_is_quoted_on_a_terminal():
    """`key=value` pairs stay readable: a value with `=` in it is written as JSON, `filter="a=b"`."""
    line = TerminalFormatter().format(_record("landed", filter="a=b", files=0))
    assert line.endswith('metering.t: landed filter="a=b" files=0')


def test_a_field_value_in_another_script_reads_as_written_on_a_terminal():
    """A value with a space is written as JSON, but on a terminal its letters stay letters:
    `city="São Paulo"`, not `"S\\u00e3o Paulo"`."""
    line = TerminalFormatter().format(_record("landed", city="São Paulo"))
    assert line.endswith('metering.t: landed city="São Paulo"')


def test_a_log_level_with_spaces_around_it_is_taken():
    assert parse_log_level("  debug\n") == "DEBUG"


@pytest.mark.parametrize(("text", "level"), [("", None), ("   ", None), (" warning ", "WARNING")])
def test_the_level_variable_unset_or_blank_is_none(monkeypatch, text: str, level: str | None):
    """`env_log_level`: None when unset or empty (so an option, or the caller's own default, decides)."""
    from metering.logs import env_log_level

    monkeypatch.setenv("METERING_LOG_LEVEL", text)
    assert env_log_level() == level
    monkeypatch.delenv("METERING_LOG_LEVEL")
    assert env_log_level() is None


def test_the_set_up_turns_off_stripes_console_log_however_it_was_turned_on():
    """stripe-python prints to stderr past every handler when `stripe.log` (or STRIPE_LOG, read at
    import) is debug or info. Set on the module before the set-up, it is cleared too: the SDK's own
    console level is then None."""
    script = ("import stripe, stripe._util; stripe.log = 'debug'; from metering.logs import setup_logging; "
              "setup_logging('info', json_output=True); print(stripe.log, stripe._util._console_log_level())")
    done = run_python(script, {})
    assert done.returncode == 0, done.stderr
    assert done.stdout == "None None\n"


def test_without_the_variables_a_pipe_gets_json_and_chatty_libraries_stay_quiet():
    """stderr is a pipe and METERING_LOG_JSON is unset: JSON lines. At level debug the app's own
    debug line is written, but stripe's and alembic's info lines are not (both kept at warning)."""
    script = ("import logging; from metering.logs import setup_logging; setup_logging('debug'); "
              "logging.getLogger('stripe').info('GET /v1/customers'); "
              "logging.getLogger('alembic').info('migrating'); logging.getLogger('t').debug('mine')")
    done = run_python(script, {})
    assert done.returncode == 0, done.stderr
    assert [(line["level"], line["logger"], line["message"]) for line in map(json.loads, done.stderr.splitlines())] == [
        ("debug", "t", "mine")]


# --- config --------------------------------------------------------------------------------------------

def test_an_empty_explicit_path_counts_as_not_given(isolated_env: Path, monkeypatch):
    """An empty option value is no path (read as one it would be `.`, the current folder): the
    variable applies, and a message about the path blames the variable, not the option."""
    from metering import config

    assert config.warehouse_path("") == isolated_env / "warehouse.duckdb"   # conftest's $METERING_WAREHOUSE
    monkeypatch.setenv("METERING_RAW_DIR", str(isolated_env / "drop"))
    assert config.raw_dir("") == isolated_env / "drop"
    assert config.path_origin("", "--out", "METERING_RAW_DIR") == "$METERING_RAW_DIR"


@pytest.mark.parametrize(("text", "ok"), [("http://:8080", False), ("http://user@", False), ("http://h:8080", True)])
def test_a_url_needs_a_host_not_just_a_port_or_a_user(text: str, ok: bool):
    """`http://:8080` and `http://user@` have a network location but no host to connect to."""
    from metering import config

    assert config.is_http_url(text) is ok


# --- reconciliation settings ---------------------------------------------------------------------------

SETTINGS_VARIABLES = ("METERING_RECON_TOLERANCE", "METERING_STRIPE_SETTLE_SECONDS",
                      "METERING_STRIPE_INVOICE_GRACE_SECONDS", "METERING_RECON_MAX_UNEXPLAINED_MINOR",
                      "METERING_STRIPE_PULL_RATE", "METERING_STRIPE_PULL_CONCURRENCY")


@pytest.mark.parametrize("empty", [False, True], ids=["unset", "empty"])
def test_settings_without_the_variables_are_the_documented_defaults(monkeypatch, empty: bool):
    """The module's docstring: tolerance 1 minor unit per line, settle 900 s, invoice grace 3600 s, max
    unexplained 0, pull rate 20/s, concurrency 4; so an invoice may come until 3600 + 900 = 4500 s after
    a period's end. README: an empty variable counts as unset (its default applies)."""
    from metering.reconcile.settings import ReconcileSettings

    for name in SETTINGS_VARIABLES:
        monkeypatch.setenv(name, "") if empty else monkeypatch.delenv(name, raising=False)
    s = ReconcileSettings.from_env()
    assert (s.tolerance_minor, s.default_tolerance_minor, s.settle_seconds, s.invoice_grace_seconds,
            s.max_unexplained_minor, s.pull_rate, s.pull_concurrency) == ({}, 1, 900, 3600, 0, 20.0, 4)
    assert s.invoice_wait == dt.timedelta(seconds=4500)


def test_a_pull_concurrency_of_0_still_reads_one_at_a_time(monkeypatch):
    """0 reads in flight would never read anything: taken as 1."""
    from metering.reconcile.settings import ReconcileSettings

    monkeypatch.setenv("METERING_STRIPE_PULL_CONCURRENCY", "0")
    assert ReconcileSettings.from_env().pull_concurrency == 1


def test_the_tolerance_for_every_currency_is_the_settings_own_default():
    """No currency named and none configured: the sentence gives this run's default (3), not the module's (1)."""
    from metering.reconcile.settings import ReconcileSettings

    described = ReconcileSettings(default_tolerance_minor=3).describe_tolerance()
    assert described == "3 minor unit(s) per line, every currency"


def test_a_line_without_a_currency_gets_the_default_tolerance():
    """`tolerance_for(None)`: a row with no currency is judged with the default (2 here), any case of a
    configured currency with its own (USD -> usd's 5)."""
    from metering.reconcile.settings import ReconcileSettings

    settings = ReconcileSettings(tolerance_minor={"usd": 5}, default_tolerance_minor=2)
    assert (settings.tolerance_for(None), settings.tolerance_for("USD"), settings.tolerance_for("eur")) == (2, 5, 2)


def test_a_tolerance_of_fifteen_digits_is_taken_and_one_of_sixteen_is_refused(monkeypatch):
    """At most 15 digits (10^15 - 1 = 999,999,999,999,999 minor units fits a 64-bit integer with room)."""
    from metering.reconcile.settings import ReconcileSettings

    monkeypatch.setenv("METERING_RECON_TOLERANCE", "usd=999999999999999")
    assert ReconcileSettings.from_env().tolerance_minor == {"usd": 999_999_999_999_999}
    monkeypatch.setenv("METERING_RECON_TOLERANCE", "usd=1000000000000000")
    with pytest.raises(BadInputError) as caught:
        ReconcileSettings.from_env()
    assert str(caught.value) == ("$METERING_RECON_TOLERANCE: 'usd=1000000000000000' is not CURRENCY=MINOR_UNITS "
                                 "(e.g. usd=1; at most 15 digits)")


def test_a_pull_rate_above_ten_to_the_twelfth_is_refused(monkeypatch):
    """Like every whole-number setting, a rate is at most 10^12 (calls per second): 1e12 is taken,
    1e13 is refused naming the variable."""
    from metering.reconcile.settings import ReconcileSettings

    monkeypatch.setenv("METERING_STRIPE_PULL_RATE", "1e12")
    assert ReconcileSettings.from_env().pull_rate == 10.0**12
    monkeypatch.setenv("METERING_STRIPE_PULL_RATE", "1e13")
    with pytest.raises(BadInputError) as caught:
        ReconcileSettings.from_env()
    assert str(caught.value) == ("$METERING_STRIPE_PULL_RATE: '1e13' is not a rate in calls per second "
                                 "(a number >= 0; 0: no limit)")


# --- files ---------------------------------------------------------------------------------------------

def test_text_that_cannot_be_utf8_is_refused_and_the_target_kept(tmp_path: Path):
    """A lone surrogate (`\\udcff`, what Python keeps of a byte that was not UTF-8) cannot be written as
    UTF-8: the write fails, the old file is untouched and no temporary file is left beside it."""
    from metering.files import write_atomically

    target = tmp_path / "out" / "list.txt"
    target.parent.mkdir()
    target.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        write_atomically(target, "new \udcff")
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["list.txt"]
