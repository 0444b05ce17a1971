"""Gaps a hand mutation audit (m23c) found in the push's ledger, windows, keys and clock (real DuckDB,
real sandbox over loopback):

- plan_revisions: a never-attempted revision of a window gone late is marked `late` in place (and
  only that revision: an older acknowledged one stays what Stripe holds); a failed window gets a new
  revision only with retry_failed, and the failed one is then superseded; a late window's new value
  supersedes its older `late` revision;
- mark_sent / record_outcomes: a row left `sent` by a killed attempt is `unknown` on its next attempt
  and stays so when throttled; attempts add up; first_attempt_at keeps the first; an outcome without
  a request id keeps the one Stripe gave before; status counts count only the window kind asked for;
- held_elsewhere: only a previous customer's newest attempted, unrefused, non-zero revision holds a
  window; a whole-period meter is held with the newest window's value of the period;
- desired_values: a sum meter's pushed window whose usage was withdrawn is pushed as 0; a `last`
  meter's tie between dimension rows goes to the higher event id, as rating orders them;
- keys: a window start in another zone is keyed by its UTC instant, a naive one is refused;
- clock: advancing to the clock's own time is a no-op (Stripe refuses it); a day pushed on a clock is
  pushed at the day's end, so every hour window of it is due.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest

from metering import warehouse
from metering.rules.meters import Meter
from metering.stripe import ledger, windows
from metering.stripe.clock import advance_clock, push_days_on_clock
from metering.stripe.keys import idempotency_key, meter_event_identifier
from metering.stripe.push import PushConfig
from metering.stripe_sandbox.testing import running_sandbox
from push_world import FAST_RETRY, World, customer_on_clock, day_start
from test_ledger import T0, desired
from test_push import withdraw_day

NOV17 = dt.date(2026, 11, 17)


def _rows(con) -> list[tuple]:
    return con.execute("SELECT customer_id, revision, value, status, last_error FROM stripe_push_ledger "
                       "ORDER BY customer_id, window_start, revision").fetchall()


def _settle(con, status: str) -> None:
    """Attempt every open revision (committed `sent`), then record Stripe's answer for each."""
    ids = [r[0] for r in con.execute(
        "SELECT identifier FROM stripe_push_ledger WHERE status IN ('pending', 'sent', 'unknown')").fetchall()]
    if not ids:
        raise AssertionError("nothing open to settle")
    ledger.mark_sent(con, ids, T0)
    ledger.record_outcomes(con, [{"identifier": i, "status": status, "extra_attempts": 0,
                                  "last_error": "400" if status == "failed" else None, "stripe_request_id": None,
                                  "last_http_status": 400 if status == "failed" else 200, "resolved_by": None}
                                 for i in ids], T0)


def test_a_never_attempted_revision_of_a_window_gone_late_is_marked_late_in_place(tmp_path: Path) -> None:
    """Window 0 (a, api_calls, Nov 1): revision 1 acknowledged at 5; revision 2 planned at 7 and never
    attempted; the next plan finds the window late (still 7): revision 2 itself becomes `late` with the
    reason (no new revision, no new key, newly_late 1), and revision 1 stays `acknowledged`: Stripe
    holds 5, which reconciliation counts as pushed."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0)
        _settle(con, "acknowledged")
        assert ledger.plan_revisions(con, desired({0: Decimal(7)}, set()), T0) == {"new_revisions": 1, "newly_late": 0}
        assert ledger.plan_revisions(con, desired({0: Decimal(7)}, {0}), T0) == {"new_revisions": 0, "newly_late": 1}
        assert _rows(con) == [("a", 1, Decimal(5), "acknowledged", None), ("a", 2, Decimal(7), "late", "too old")]


def test_a_window_start_in_another_zone_is_keyed_by_its_utc_instant() -> None:
    """Nov 1 02:00 at UTC+02:00 is Nov 1 00:00 UTC: the same window, the same identifier and key as
    the UTC datetime (stamp 20261101T0000Z), never ...T0200Z."""
    cest = dt.datetime(2026, 11, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert meter_event_identifier("a", "api_calls", "day", cest, 1) == "a|api_calls|day|20261101T0000Z|r1"
    assert idempotency_key("a", "api_calls", "day", cest, 1) == "metering-push:a|api_calls|day|20261101T0000Z|r1"
    assert meter_event_identifier("a", "api_calls", "day", cest, 1) == meter_event_identifier(
        "a", "api_calls", "day", T0, 1)


def test_a_naive_window_start_is_refused() -> None:
    naive = dt.datetime(2026, 11, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        meter_event_identifier("a", "api_calls", "day", naive, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        idempotency_key("a", "api_calls", "day", naive, 1)


def test_advancing_a_clock_to_its_own_time_or_before_does_nothing() -> None:
    """A clock frozen at Nov 1 00:00: advancing it to Nov 1 00:00 (or Oct 31) is a no-op, no call
    to Stripe's advance (which refuses a time not after frozen_time); Nov 2 advances it."""
    with running_sandbox() as sb:
        client = sb.client()
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": int(T0.timestamp())})
        advance_clock(client, clock.id, T0)
        advance_clock(client, clock.id, T0 - dt.timedelta(days=1))
        assert client.v1.test_helpers.test_clocks.retrieve(clock.id).frozen_time == int(T0.timestamp())
        assert sb.requests_log(path=f"/v1/test_helpers/test_clocks/{clock.id}/advance") == []
        advance_clock(client, clock.id, T0 + dt.timedelta(days=1))
        assert client.v1.test_helpers.test_clocks.retrieve(clock.id).frozen_time == int(T0.timestamp()) + 86400
        assert len(sb.requests_log(path=f"/v1/test_helpers/test_clocks/{clock.id}/advance")) == 1


def test_a_failed_window_gets_a_new_revision_only_when_failed_ones_are_retried(tmp_path: Path) -> None:
    """Window 0 at 5: revision 1 is refused (failed). Planning 5 again makes nothing (Stripe would refuse
    it again, every run); with retry_failed, revision 2 (pending, 5) and revision 1 superseded."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0)
        _settle(con, "failed")
        assert ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0) == {"new_revisions": 0, "newly_late": 0}
        assert _rows(con) == [("a", 1, Decimal(5), "failed", "400")]
        assert ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0, retry_failed=True) == {
            "new_revisions": 1, "newly_late": 0}
        assert _rows(con) == [("a", 1, Decimal(5), "superseded", "400"), ("a", 2, Decimal(5), "pending", None)]


def _remapped(values: dict[int, Decimal]) -> pl.DataFrame:
    """The windows of `values`, now destined for another Stripe customer."""
    return desired(values, set()).with_columns(stripe_customer_id=pl.lit("cus_new"))


def test_only_a_previous_customers_newest_attempted_unrefused_non_zero_revision_holds_a_window(tmp_path: Path) -> None:
    """Before the remap to cus_new: window 0 (a, api_calls, Nov 1) acknowledged at 5, then at 0 (the
    newest: cus_a holds 0); window 2 (b, tokens, Nov 1) refused (failed: Stripe recorded nothing);
    window 1 (a, api_calls, Nov 2) planned at 4 but never attempted. None of them holds its window at
    cus_new. Once window 1's revision is acknowledged, cus_a holds 4 for it: that window alone."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        for values, outcome in (({0: Decimal(5)}, "acknowledged"), ({0: Decimal(0)}, "acknowledged"),
                                ({2: Decimal(6)}, "failed")):
            ledger.plan_revisions(con, desired(values, set()), T0)
            _settle(con, outcome)
        ledger.plan_revisions(con, desired({1: Decimal(4)}, set()), T0)
        everything = _remapped({0: Decimal(0), 1: Decimal(4), 2: Decimal(6)})
        assert ledger.held_elsewhere(con, everything).is_empty()
        _settle(con, "acknowledged")
        held = ledger.held_elsewhere(con, everything)
        assert held.select("customer_id", "meter", "window_start", "held_by", "held_value", "held_window").rows() == [
            ("a", "api_calls", T0 + dt.timedelta(days=1), "cus_a", Decimal(4), T0 + dt.timedelta(days=1))]


def test_a_whole_period_meter_is_held_with_the_previous_customers_newest_window_of_the_period(tmp_path: Path) -> None:
    """api_calls taken as a whole-period (`last`) meter: cus_a was sent 3 for Nov 1 and 8 for Nov 2
    (calendar month, no plan row: anchor NULL). Each window of November at cus_new is held by cus_a with
    what Stripe bills there, its newest window's value: 8, from Nov 2; period Nov 1."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        ledger.plan_revisions(con, desired({0: Decimal(3), 1: Decimal(8)}, set()), T0)
        _settle(con, "acknowledged")
        held = ledger.held_elsewhere(con, _remapped({0: Decimal(3), 1: Decimal(8)}), ["api_calls"])
        nov2 = T0 + dt.timedelta(days=1)
        assert held.select("window_start", "held_by", "held_value", "held_window", "period_start").rows() == [
            (T0, "cus_a", Decimal(8), nov2, T0.date()), (nov2, "cus_a", Decimal(8), nov2, T0.date())]


def test_a_late_windows_new_value_supersedes_its_older_late_revision(tmp_path: Path) -> None:
    """Window 0 late at 5 (revision 1, `late`, never sent), then late at 7: revision 2 is `late` and
    revision 1 `superseded`, so one row per window says late (what the demo's summary and the invoice
    items' late-usage hold count: every `late` row)."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        assert ledger.plan_revisions(con, desired({0: Decimal(5)}, {0}), T0) == {"new_revisions": 1, "newly_late": 0}
        assert ledger.plan_revisions(con, desired({0: Decimal(7)}, {0}), T0) == {"new_revisions": 1, "newly_late": 0}
        assert _rows(con) == [("a", 1, Decimal(5), "superseded", "too old"), ("a", 2, Decimal(7), "late", "too old")]


def test_a_sum_meters_pushed_window_whose_usage_was_withdrawn_is_pushed_as_zero(world: World) -> None:
    """acme on Nov 17: 7 tokens and 2 api calls (our count, Stripe's sum), pushed: Stripe holds 7 and 2.
    The day's usage is then withdrawn (a correction): both windows are in the ledger, so the next push
    sends each a revision 2 of 0, and Stripe's sum for the day is 0 (keeping 7 and 2 would bill usage
    that no longer exists)."""
    at = day_start(NOV17) + dt.timedelta(hours=3)
    world.add_events([("acme", "tokens", at, "7", {"model": "small"}), ("acme", "api_calls", at, None, {"region": "us"}),
                      ("acme", "api_calls", at + dt.timedelta(minutes=1), None, {"region": "us"})])
    world.pusher().push(NOV17, NOV17)
    day = (day_start(NOV17), day_start(NOV17) + dt.timedelta(days=1))
    assert (world.stripe_total("acme", "tokens", *day), world.stripe_total("acme", "api_calls", *day)) == (7, 2)
    withdraw_day(world, NOV17)
    again = world.pusher().push(NOV17, NOV17)
    assert (again.new_revisions, again.acknowledged, again.failed) == (2, 2, 0)
    assert world.ledger().select("meter", "revision", "value", "status").rows() == [
        ("api_calls", 1, Decimal(2), "acknowledged"), ("api_calls", 2, Decimal(0), "acknowledged"),
        ("tokens", 1, Decimal(7), "acknowledged"), ("tokens", 2, Decimal(0), "acknowledged")]
    assert (world.stripe_total("acme", "tokens", *day), world.stripe_total("acme", "api_calls", *day)) == (0, 0)


def test_a_last_meters_tie_between_dimensions_goes_to_the_higher_event_id_as_rating_orders_them(tmp_path: Path) -> None:
    """A `last` meter with a dimension (not in the shipped rules, allowed by meters.yaml): Nov 17 at
    10:00:00 two events of one customer at the same instant, one aggregate row per team. Rating bills
    the last by (event time, event id), the higher id: acme ev000000 x=9, ev000001 y=3 -> 3; globex
    ev000002 x=3, ev000003 y=9 -> 9; so must the windows' values be, whichever row DuckDB reads first."""
    level = Meter("level", "last", dimensions=("team",))
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        world = World(con, None, None, SimpleNamespace(meters={"level": level}), None)
        at = day_start(NOV17) + dt.timedelta(hours=10)
        world.add_events([("acme", "level", at, "9", {"team": "x"}), ("acme", "level", at, "3", {"team": "y"}),
                          ("globex", "level", at, "3", {"team": "x"}), ("globex", "level", at, "9", {"team": "y"})])
        got = windows.desired_values(con, {"level": level}, NOV17, NOV17)
        assert got.select("customer_id", "window_start", "value", "raw_events").rows() == [
            ("acme", day_start(NOV17), Decimal(3), 2), ("globex", day_start(NOV17), Decimal(9), 2)]


def test_a_row_left_sent_by_a_killed_attempt_is_unknown_when_attempted_again(tmp_path: Path) -> None:
    """Revision 1 marked `sent`, then the process dies during the call (no outcome). The next attempt
    marks it `unknown` (the first may have reached Stripe), and a throttled outcome (`pending`: every
    attempt 429) leaves it `unknown`: 2 attempts, first_attempt_at still the first one's time."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0)
        [ident] = [r[0] for r in con.execute("SELECT identifier FROM stripe_push_ledger").fetchall()]
        ledger.mark_sent(con, [ident], T0)
        later = T0 + dt.timedelta(hours=2)
        ledger.mark_sent(con, [ident], later)
        assert con.execute("SELECT status, attempts, first_attempt_at, last_attempt_at FROM stripe_push_ledger"
                           ).fetchall() == [("unknown", 2, T0, later)]
        ledger.record_outcomes(con, [{"identifier": ident, "status": "pending", "extra_attempts": 3,
                                      "last_error": "429", "stripe_request_id": None, "last_http_status": 429,
                                      "resolved_by": None}], later)
        assert con.execute("SELECT status, attempts FROM stripe_push_ledger").fetchall() == [("unknown", 5)]


def unknown_after_a_500(con) -> str:
    """One window's revision 1, sent at T0 and answered by a 500 with request req_1: `unknown`. Its identifier."""
    ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0)
    [ident] = [r[0] for r in con.execute("SELECT identifier FROM stripe_push_ledger").fetchall()]
    ledger.mark_sent(con, [ident], T0)
    ledger.record_outcomes(con, [{"identifier": ident, "status": "unknown", "extra_attempts": 0, "last_error": "500",
                                  "stripe_request_id": "req_1", "last_http_status": 500, "resolved_by": None}], T0)
    return ident


def test_an_outcome_without_a_request_id_keeps_the_one_stripe_gave_before(tmp_path: Path) -> None:
    """Revision 1 answered `unknown` with request req_1 (a 500), then settled by Stripe's summary
    (no request id, no HTTP status): acknowledged, still req_1 and 500, resolved_by summary."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        ident = unknown_after_a_500(con)
        ledger.record_outcomes(con, [{"identifier": ident, "status": "acknowledged", "extra_attempts": 0,
                                      "last_error": None, "stripe_request_id": None, "last_http_status": None,
                                      "resolved_by": "summary"}], T0)
        assert con.execute("SELECT status, stripe_request_id, last_http_status, resolved_by FROM stripe_push_ledger"
                           ).fetchall() == [("acknowledged", "req_1", 500, "summary")]


def test_pushing_hour_windows_day_by_day_on_a_clock_sends_every_hour_of_the_day(tmp_path: Path, rules_dir: Path) -> None:
    """acme on a test clock frozen at Oct 1, hour meters; 1 api call at Oct 5 02:10 and 1 at 20:30.
    `push_days_on_clock` for Oct 5 moves the clock to the day's end (Oct 6 00:00) before pushing it:
    both hour windows are due and sent (had it stopped at Oct 5 00:00, the 02:00 and 20:00 windows
    would be in Stripe's future and never pushed by this day's run). Stripe holds 1 in each."""
    oct5 = dt.date(2026, 10, 5)
    with customer_on_clock(tmp_path, rules_dir, window_kind="hour", subscriptions=False) as c:
        con, client, clock = c.con, c.client, c.clock
        world = World(con, c.sb, client, c.rules, c.report)
        h2, h20 = day_start(oct5) + dt.timedelta(hours=2), day_start(oct5) + dt.timedelta(hours=20)
        world.add_events([("acme", "api_calls", h2 + dt.timedelta(minutes=10), None, {"region": "us"}),
                          ("acme", "api_calls", h20 + dt.timedelta(minutes=30), None, {"region": "us"})])
        [pushed] = push_days_on_clock(con, client, c.rules.meters, clock.id, oct5, oct5,
                                      PushConfig(window_kind="hour", rate=0, retry=FAST_RETRY), sleep=lambda s: None)
        assert (pushed.acknowledged, pushed.not_yet_due, pushed.late) == (2, 0, 0)
        assert client.v1.test_helpers.test_clocks.retrieve(clock.id).frozen_time == int(day_start(oct5).timestamp()) + 86400
        for hour in (h2, h20):
            assert world.stripe_total("acme", "api_calls", hour, hour + dt.timedelta(hours=1)) == Decimal(1)


def test_status_counts_count_only_the_windows_of_the_kind_asked_for(tmp_path: Path) -> None:
    """Nov 1: window 0 a day window (pending), window 2 an hour window 00:00-01:00 (late). A day push's
    counts hold the day window only (pending 1, late 0); an hour push's the hour window (late 1)."""
    hour = desired({2: Decimal(6)}, {2}).with_columns(window_kind=pl.lit("hour"),
                                                      window_end=pl.col("window_start") + pl.duration(hours=1))
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        ledger.plan_revisions(con, pl.concat([desired({0: Decimal(5)}, set()), hour]), T0)
        day, hours = (ledger.status_counts(con, T0.date(), T0.date(), kind) for kind in ("day", "hour"))
        assert {s: n for s, n in day.items() if n} == {"pending": 1}
        assert {s: n for s, n in hours.items() if n} == {"late": 1}
