"""Gaps a hand mutation audit (m30d) found in the push's windows, client settings, keys, clock and
ledger (real DuckDB, the Stripe sandbox over loopback where a call is needed):

- windows: `period_start_sql` for a calendar-month customer, the anchor day itself, an anchor past
  the month's end (clamped) and a day before the anchor (the previous month's anchor); a negative
  value of more than 15 digits is rounded like a positive one and a small one kept beside a big one;
  a sum meter's withdrawn window on the range's last day is 0; a `last` meter's window on date_from
  is evaluated once (usage and ledger) and still when its usage is gone; a `max` meter's period
  starts at the customer's own anchor, or at its first plan (not a later plan change), and includes
  its first hour; raw events are the window's own; a `last` meter's hour window ends an hour on;
- client: `with_base` with another key; the settings' defaults; an empty or blank number variable is
  its default; a key with spaces around it is trimmed; messages name the variable and the value as
  written; a fractional retry count is not an integer; a malformed meter-events base is refused;
- clock: each day of `push_days_on_clock` is pushed on its own (a report per day for that day only);
  the clock is moved to an aware instant whatever the host's zone;
- ledger: `status_counts_by_day` holds every day of the range including the last, and the sums add
  the days; a meter not in `whole_period_meters` is held by its own window only; `open_rows` are
  those of the window kind asked for; a newer answer replaces the request id and HTTP status.
"""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from metering import warehouse
from metering.errors import BadInputError
from metering.rules.meters import Meter
from metering.stripe import ledger, windows
from metering.stripe.client import StripeSettings, make_client, settings_from_env
from metering.stripe.clock import advance_clock, push_days_on_clock
from metering.stripe.push import PushConfig
from metering.stripe_sandbox.testing import running_sandbox
from push_world import FAST_RETRY, World, customer_on_clock
from test_ledger import T0, desired
from test_ledger_mutants23 import unknown_after_a_500


_ENV = ("STRIPE_API_KEY", "STRIPE_API_BASE", "STRIPE_METER_EVENTS_BASE", "STRIPE_MAX_NETWORK_RETRIES",
        "STRIPE_CONNECT_TIMEOUT", "STRIPE_READ_TIMEOUT")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """An environment holding only a test key (whatever the host exports)."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_abc")
    return monkeypatch


# -- windows ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("day", "anchor", "start"), [
    # calendar month (NULL anchor): the 1st of the day's month, the 1st itself included
    ("2026-11-01", None, "2026-11-01"),
    ("2026-11-30", None, "2026-11-01"),
    # anchor 15: the 15th itself starts a period; the 14th is in the period from Oct 15
    ("2026-11-15", 15, "2026-11-15"),
    ("2026-11-14", 15, "2026-10-15"),
    # anchor 31 in February 2026 (28 days): clamped to Feb 28, which starts its period
    ("2026-02-28", 31, "2026-02-28"),
    # anchor 31, Feb 27: before Feb 28, so the period from January's anchor (Jan 31)
    ("2026-02-27", 31, "2026-01-31"),
    # anchor 31, Mar 1: March's anchor is Mar 31, after it: the period from Feb 28 (clamped)
    ("2026-03-01", 31, "2026-02-28"),
    # anchor 1 given explicitly: the 1st
    ("2026-03-01", 1, "2026-03-01"),
])
def test_a_period_starts_on_the_anchor_day_clamped_to_the_month(tmp_path: Path, day: str, anchor: int | None,
                                                               start: str) -> None:
    """`period_start_sql` per the module doc: the anchor day in a month is min(anchor, days in the
    month); on or after it the period started that day, before it on the previous month's (clamped)
    anchor; NULL is the calendar month. Dates worked out by hand in the parameters."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        anchor_sql = "NULL::INTEGER" if anchor is None else f"{anchor}::INTEGER"
        [(got,)] = con.execute(f"SELECT {windows.period_start_sql(f'DATE {day!r}', anchor_sql)}").fetchall()
    assert got == dt.date.fromisoformat(start)


def test_a_negative_value_is_rounded_to_fifteen_digits_and_a_small_one_kept() -> None:
    """-1500.123456789013 has 16 significant digits: rounded half-even to 15, -1500.12345678901
    (the 16th digit, 3, rounds down), like its positive; 2.5 (2 digits) and 1500.5 (5) stay as they
    are, beside it in the same frame, each row in its place."""
    frame = pl.DataFrame({"k": [1, 2, 3],
                          "value": [Decimal("-1500.123456789013"), Decimal("2.5"), Decimal("1500.5")]},
                         schema={"k": pl.Int64, "value": pl.Decimal(38, 12)})
    got = windows.to_stripe_digits(frame).sort("k")
    assert got.rows() == [(1, Decimal("-1500.12345678901")), (2, Decimal("2.5")), (3, Decimal("1500.5"))]


def _usage_world(con, meters: dict[str, Meter]) -> World:
    """A World over `con` with no sandbox: enough to add events and aggregate them."""
    return World(con, None, None, SimpleNamespace(meters=meters), None)


def _plans(con, rows: list[tuple[str, int | None, str]]) -> None:
    """customer_plans rows (customer, billing_anchor_day, plan_effective_from)."""
    for i, (customer, anchor, start) in enumerate(rows):
        con.execute("INSERT INTO customer_plans (customer_id, currency, billing_anchor_day, plan, "
                    "plan_effective_from, payment_behavior, source_line) VALUES (?, 'usd', ?, 'starter', ?, "
                    "'succeeds', ?)", [customer, anchor, start, i + 2])


def _at(day: int, hour: int = 10, month: int = 11) -> dt.datetime:
    return dt.datetime(2026, month, day, hour, tzinfo=dt.timezone.utc)


def test_a_sum_meters_withdrawn_window_on_the_ranges_last_day_is_pushed_as_zero(tmp_path: Path) -> None:
    """The ledger holds a's api_calls (our count: Stripe's sum) windows Nov 1 and Nov 2, and no usage is
    left. desired_values(Nov 1, Nov 2) carries both windows at 0 with 0 raw events, the last day of the
    range included (the ledger is read for the whole range)."""
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        ledger.plan_revisions(con, desired({0: Decimal(5), 1: Decimal(6)}, set()), T0)
        got = windows.desired_values(con, {"api_calls": Meter("api_calls", "count")}, T0.date(),
                                     T0.date() + dt.timedelta(days=1))
    assert got.select("customer_id", "window_start", "value", "raw_events").rows() == [
        ("a", T0, Decimal(0), 0), ("a", T0 + dt.timedelta(days=1), Decimal(0), 0)]


def test_a_last_meters_window_on_the_first_day_is_evaluated_once_from_usage_and_ledger(tmp_path: Path) -> None:
    """`level` (last): a holds 4 at Nov 1 10:00 (in the ledger as pushed at 4) and 6 at Nov 2 10:00 (not in
    the ledger); usage of Nov 3 (9) is after the range. desired_values(Nov 1, Nov 1): the Nov 1 window
    once (usage and ledger both name it) at 4, nothing for Nov 2 (not in the range, not in the
    ledger) nor Nov 3. Then Nov 1's usage is withdrawn: the window, known from the ledger only (its
    event date is date_from), is still evaluated, at 0 (nothing left in the period up to its end)."""
    level = Meter("level", "last")
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        world = _usage_world(con, {"level": level})
        world.add_events([("a", "level", _at(1), "4", {}), ("a", "level", _at(2), "6", {}),
                          ("a", "level", _at(3), "9", {})])
        ledger.plan_revisions(con, desired({0: Decimal(4)}, set()).with_columns(
            meter=pl.lit("level"), event_name=pl.lit("metering_level")), T0)
        got = windows.desired_values(con, {"level": level}, T0.date(), T0.date())
        assert got.select("customer_id", "window_start", "window_end", "value", "raw_events").rows() == [
            ("a", T0, T0 + dt.timedelta(days=1), Decimal(4), 1)]
        con.execute("DELETE FROM usage_aggregates WHERE event_date = ?", [T0.date()])
        got = windows.desired_values(con, {"level": level}, T0.date(), T0.date())
        assert got.select("customer_id", "window_start", "value", "raw_events").rows() == [
            ("a", T0, Decimal(0), 0)]


def test_a_max_meters_period_starts_at_the_anchor_or_the_first_plan_of_that_customer(tmp_path: Path) -> None:
    """`peak` (max). Each customer: 9 on Nov 5 10:00 (hour 00:00 for c), 2 on Nov 20 10:00.
    - a: calendar month, first plan Jan 1, plan changed Nov 10 (a second row): the period is Nov 1..,
      so Nov 20's window carries max(9, 2) = 9 (the subscription began Jan 1, not at the change);
    - b: calendar month, subscribed Nov 10 (its only plan): its first period starts Nov 10, Nov 5 is
      before it: Nov 20 carries 2, and Nov 5's window (period start Nov 10, after its end) carries 0;
    - g: anchor 15, subscribed Jan 1: the period from Nov 15 holds only Nov 20's 2 (not a's or b's
      calendar month: each customer's own anchor);
    - c: calendar month, 9 at Nov 1 00:00 exactly (the period's first hour), 2 on Nov 2: Nov 2 carries 9.
    Raw events are the window's own events only (1 each)."""
    peak = Meter("peak", "max")
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        _plans(con, [("a", None, "2026-01-01"), ("a", None, "2026-11-10"), ("b", None, "2026-11-10"),
                     ("g", 15, "2026-01-01"), ("c", None, "2026-01-01")])
        world = _usage_world(con, {"peak": peak})
        world.add_events([(c, "peak", _at(5), "9", {}) for c in ("a", "b", "g")]
                         + [(c, "peak", _at(20), "2", {}) for c in ("a", "b", "g")]
                         + [("c", "peak", _at(1, 0), "9", {}), ("c", "peak", _at(2), "2", {})])
        got = windows.desired_values(con, {"peak": peak}, dt.date(2026, 11, 2), dt.date(2026, 11, 20))
    nov = lambda d: dt.datetime(2026, 11, d, tzinfo=dt.timezone.utc)  # noqa: E731
    assert got.select("customer_id", "window_start", "value", "raw_events").rows() == [
        ("a", nov(5), Decimal(9), 1), ("a", nov(20), Decimal(9), 1),
        ("b", nov(5), Decimal(0), 1), ("b", nov(20), Decimal(2), 1),
        ("c", nov(2), Decimal(9), 1),
        ("g", nov(5), Decimal(9), 1), ("g", nov(20), Decimal(2), 1)]


def test_a_last_meters_hour_window_ends_an_hour_after_it_starts(tmp_path: Path) -> None:
    """`level` (last) in hour windows: 5 at Nov 1 10:15, 7 at 11:15. The 10:00 window carries 5 (the
    period's last value up to 11:00), the 11:00 window 7; each ends an hour after it starts."""
    level = Meter("level", "last")
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        world = _usage_world(con, {"level": level})
        world.add_events([("a", "level", _at(1, 10) + dt.timedelta(minutes=15), "5", {}),
                          ("a", "level", _at(1, 11) + dt.timedelta(minutes=15), "7", {})])
        got = windows.desired_values(con, {"level": level}, T0.date(), T0.date(), "hour")
    assert got.select("window_start", "window_end", "value", "raw_events").rows() == [
        (_at(1, 10), _at(1, 11), Decimal(5), 1), (_at(1, 11), _at(1, 12), Decimal(7), 1)]


# -- client ----------------------------------------------------------------------------------------

def test_with_base_takes_the_key_given_and_points_both_hosts_at_the_base() -> None:
    """with_base(base, key): the sandbox's own key replaces the settings' key, and both the API and
    the meter-events host go to the base; without a key the settings' key stays."""
    settings = StripeSettings(api_key="sk_test_real", api_base="http://a.test", meter_events_base="http://m.test")
    moved = settings.with_base("http://127.0.0.1:12111", "sk_test_sandbox")
    assert (moved.api_key, moved.api_base, moved.meter_events_base) == (
        "sk_test_sandbox", "http://127.0.0.1:12111", "http://127.0.0.1:12111")
    assert settings.with_base("http://127.0.0.1:12111").api_key == "sk_test_real"


def test_the_settings_defaults_are_two_retries_five_and_thirty_seconds(env: pytest.MonkeyPatch) -> None:
    """Only STRIPE_API_KEY set: the table in client.py's doc gives 2 retries, a 5 s connect and a
    30 s read timeout, and no base (Stripe's own hosts)."""
    s = settings_from_env()
    assert (s.max_network_retries, s.connect_timeout, s.read_timeout, s.api_base, s.meter_events_base) == (
        2, 5.0, 30.0, None, None)


@pytest.mark.parametrize("blank", ["", "   "])
def test_an_empty_or_blank_number_variable_is_its_default(env: pytest.MonkeyPatch, blank: str) -> None:
    """`_env_number`: "default when unset or empty" (blank after trimming): no parse error."""
    for name in ("STRIPE_MAX_NETWORK_RETRIES", "STRIPE_CONNECT_TIMEOUT", "STRIPE_READ_TIMEOUT"):
        env.setenv(name, blank)
    s = settings_from_env()
    assert (s.max_network_retries, s.connect_timeout, s.read_timeout) == (2, 5.0, 30.0)


def test_a_key_with_spaces_around_it_is_trimmed(env: pytest.MonkeyPatch) -> None:
    """A key pasted with a trailing newline or spaces goes into the header trimmed (sk_test_abc);
    untrimmed it is not printable ASCII and was refused."""
    env.setenv("STRIPE_API_KEY", "  sk_test_abc\n")
    assert settings_from_env().api_key == "sk_test_abc"


def test_a_timeout_out_of_range_names_its_variable_and_the_value_as_written(env: pytest.MonkeyPatch) -> None:
    """STRIPE_READ_TIMEOUT=0: the message names the variable and shows '0' as written (not 0.0)."""
    env.setenv("STRIPE_READ_TIMEOUT", "0")
    with pytest.raises(BadInputError) as refused:
        settings_from_env()
    assert str(refused.value) == ("environment variable STRIPE_READ_TIMEOUT: must be > 0 and at most 3600 "
                                  "seconds, got '0'")


def test_a_retry_count_that_is_not_an_integer_names_its_variable(env: pytest.MonkeyPatch) -> None:
    """STRIPE_MAX_NETWORK_RETRIES=2.5 is not an integer (not silently 2); 25 is out of range; both
    messages name the variable."""
    env.setenv("STRIPE_MAX_NETWORK_RETRIES", "2.5")
    with pytest.raises(BadInputError) as refused:
        settings_from_env()
    assert str(refused.value) == "environment variable STRIPE_MAX_NETWORK_RETRIES: '2.5' is not an integer"
    env.setenv("STRIPE_MAX_NETWORK_RETRIES", "25")
    with pytest.raises(BadInputError) as refused:
        settings_from_env()
    assert str(refused.value) == "environment variable STRIPE_MAX_NETWORK_RETRIES: must be 0 to 20, got '25'"


def test_a_malformed_meter_events_base_is_refused_naming_its_variable(env: pytest.MonkeyPatch) -> None:
    """STRIPE_METER_EVENTS_BASE=127.0.0.1:12111 (no scheme) is bad input naming that variable, not a
    base handed to the SDK (a connection failure later, exit 5)."""
    env.setenv("STRIPE_METER_EVENTS_BASE", "127.0.0.1:12111")
    with pytest.raises(BadInputError) as refused:
        settings_from_env()
    assert str(refused.value) == ("environment variable STRIPE_METER_EVENTS_BASE: '127.0.0.1:12111' is not an "
                                  "http(s) URL (e.g. http://127.0.0.1:12111)")


# -- ledger ----------------------------------------------------------------------------------------

def test_status_counts_by_day_hold_every_day_of_the_range_including_the_last(tmp_path: Path) -> None:
    """Nov 1..Nov 2: window 0 (Nov 1) pending, window 1 (Nov 2) late: one entry per day, the last day
    (Nov 2) included with its late window; the summed counts add both days (pending 1, late 1)."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        ledger.plan_revisions(con, desired({0: Decimal(5), 1: Decimal(6)}, {1}), T0)
        nov2 = T0.date() + dt.timedelta(days=1)
        by_day = ledger.status_counts_by_day(con, T0.date(), nov2, "day")
        assert sorted(by_day) == [T0.date(), nov2]
        assert {s: n for s, n in by_day[T0.date()].items() if n} == {"pending": 1}
        assert {s: n for s, n in by_day[nov2].items() if n} == {"late": 1}
        assert {s: n for s, n in ledger.status_counts(con, T0.date(), nov2, "day").items() if n} == {
            "pending": 1, "late": 1}


def _settle_acknowledged(con) -> None:
    ids = [r[0] for r in con.execute("SELECT identifier FROM stripe_push_ledger WHERE status = 'pending'").fetchall()]
    ledger.mark_sent(con, ids, T0)
    ledger.record_outcomes(con, [{"identifier": i, "status": "acknowledged", "extra_attempts": 0, "last_error": None,
                                  "stripe_request_id": None, "last_http_status": 200, "resolved_by": None}
                                 for i in ids], T0)


def test_a_meter_not_billed_for_the_whole_period_is_held_by_its_own_window_only(tmp_path: Path) -> None:
    """a's api_calls Nov 1 at 3 and Nov 2 at 8, acknowledged for cus_a, now destined for cus_new. With no
    whole-period meters each window is held by cus_a with its own value (3 for Nov 1, 8 for Nov 2,
    its own window, no period): a window of the same month does not hold another."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        ledger.plan_revisions(con, desired({0: Decimal(3), 1: Decimal(8)}, set()), T0)
        _settle_acknowledged(con)
        moved = desired({0: Decimal(3), 1: Decimal(8)}, set()).with_columns(stripe_customer_id=pl.lit("cus_new"))
        held = ledger.held_elsewhere(con, moved)
    nov2 = T0 + dt.timedelta(days=1)
    assert held.select("window_start", "held_by", "held_value", "held_window", "period_start").rows() == [
        (T0, "cus_a", Decimal(3), T0, None), (nov2, "cus_a", Decimal(8), nov2, None)]


def test_open_rows_are_those_of_the_window_kind_asked_for(tmp_path: Path) -> None:
    """Nov 1: a day window of a's api_calls and an hour window (00:00-01:00) of b's tokens, both
    pending. open_rows for day windows holds a's only, for hour windows b's only."""
    hour = desired({2: Decimal(6)}, set()).with_columns(window_kind=pl.lit("hour"),
                                                       window_end=pl.col("window_start") + pl.duration(hours=1))
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        ledger.plan_revisions(con, pl.concat([desired({0: Decimal(5)}, set()), hour]), T0)
        day_rows = ledger.open_rows(con, T0.date(), T0.date(), "day")
        hour_rows = ledger.open_rows(con, T0.date(), T0.date(), "hour")
    assert day_rows.select("customer_id", "window_kind", "status").rows() == [("a", "day", "pending")]
    assert hour_rows.select("customer_id", "window_kind", "status").rows() == [("b", "hour", "pending")]


def test_a_newer_answer_replaces_the_request_id_and_http_status(tmp_path: Path) -> None:
    """Revision 1 answered `unknown` by a 500 with request req_1, then resent under its key and
    acknowledged (200, request req_2): the row holds Stripe's newest answer, req_2 and 200, with
    1 + 1 attempts."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        ident = unknown_after_a_500(con)
        ledger.mark_sent(con, [ident], T0)
        ledger.record_outcomes(con, [{"identifier": ident, "status": "acknowledged", "extra_attempts": 0,
                                      "last_error": None, "stripe_request_id": "req_2", "last_http_status": 200,
                                      "resolved_by": None}], T0)
        assert con.execute("SELECT status, attempts, stripe_request_id, last_http_status, last_error "
                           "FROM stripe_push_ledger").fetchall() == [("acknowledged", 2, "req_2", 200, None)]


# -- clock -----------------------------------------------------------------------------------------

def test_each_day_on_the_clock_is_pushed_on_its_own(tmp_path: Path, rules_dir: Path) -> None:
    """push_days_on_clock(Oct 5, Oct 6): two pushes, the first of Oct 5 only, the second of Oct 6 only
    (not Oct 5 again), and the clock ends at Oct 7 00:00 (the last day's end)."""
    oct5, oct6 = dt.date(2026, 10, 5), dt.date(2026, 10, 6)
    with customer_on_clock(tmp_path, rules_dir, subscriptions=False) as c:
        reports = push_days_on_clock(c.con, c.client, c.rules.meters, c.clock.id, oct5, oct6,
                                     PushConfig(rate=0, retry=FAST_RETRY), sleep=lambda s: None)
        assert [(r.date_from, r.date_to) for r in reports] == [(oct5, oct5), (oct6, oct6)]
        assert c.client.v1.test_helpers.test_clocks.retrieve(c.clock.id).frozen_time == int(
            dt.datetime(2026, 10, 7, tzinfo=dt.timezone.utc).timestamp())


@pytest.fixture
def tokyo(monkeypatch: pytest.MonkeyPatch):
    """The process's local zone is Asia/Tokyo (UTC+9) for the test, restored after."""
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_clock_is_advanced_to_the_instant_asked_whatever_the_hosts_zone(tokyo: None) -> None:
    """A clock frozen at Oct 1 00:00 UTC advanced to Oct 2 00:00 UTC (aware) on a host in UTC+9: the
    clock's frozen_time is 1790899200 (Oct 2 00:00 UTC), not 9 hours earlier."""
    oct1 = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
    with running_sandbox() as sb:
        client = make_client(StripeSettings(api_key=sb.api_key, api_base=sb.base_url, meter_events_base=sb.base_url))
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": int(oct1.timestamp())})
        advance_clock(client, clock.id, oct1 + dt.timedelta(days=1))
        assert client.v1.test_helpers.test_clocks.retrieve(clock.id).frozen_time == 1790899200


class _FailingClocks:
    """Stripe's test_clocks as a clock that fails while advancing shows them: Oct 1, then, once asked
    to advance, `internal_failure` (the sandbox's clocks always advance, so this stands in for it)."""

    def __init__(self, after_advance: str) -> None:
        self.status, self.after_advance, self.advanced = "ready", after_advance, []

    def retrieve(self, clock_id: str) -> SimpleNamespace:
        return SimpleNamespace(frozen_time=1790812800, status=self.status)   # 2026-10-01T00:00:00Z

    def advance(self, clock_id: str, params: dict, options: dict) -> None:
        self.advanced.append(params["frozen_time"])
        self.status = self.after_advance


def _client_of(clocks: _FailingClocks) -> SimpleNamespace:
    return SimpleNamespace(v1=SimpleNamespace(test_helpers=SimpleNamespace(test_clocks=clocks)))


def test_a_clock_that_fails_while_advancing_is_a_stripe_failure_at_once_not_a_timeout() -> None:
    """A clock in Stripe's `internal_failure` never becomes ready: the wait used to poll it for the whole
    timeout (120 s) and then raise a bare TimeoutError (exit 1, a traceback). Now it stops at the first
    read, an ExternalServiceError (exit 5) naming the clock, its status and the target (Oct 2 00:00
    UTC = 1790899200); a clock still `advancing` past the timeout is one too."""
    from metering.errors import ExternalServiceError

    clocks = _FailingClocks("internal_failure")
    started = time.monotonic()
    with pytest.raises(ExternalServiceError, match=r"^test clock clock_1 is internal_failure after being advanced "
                                                   r"to 2026-10-02 00:00 UTC: Stripe could not advance it"):
        tokyo_9am = dt.datetime(2026, 10, 2, 9, tzinfo=dt.timezone(dt.timedelta(hours=9)))   # Oct 2 00:00 UTC
        advance_clock(_client_of(clocks), "clock_1", tokyo_9am)
    assert time.monotonic() - started < 5
    assert clocks.advanced == [1790899200]
    with pytest.raises(ExternalServiceError, match=r"^test clock clock_1 did not finish advancing within 0s$"):
        advance_clock(_client_of(_FailingClocks("advancing")), "clock_1",
                      dt.datetime(2026, 10, 2, tzinfo=dt.timezone.utc), timeout=0.3)
