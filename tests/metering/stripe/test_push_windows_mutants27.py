"""Gaps a third hand mutation audit (m27c) of the push to Stripe found untested (push.py, windows.py,
keys.py, clock.py, client.py), against the real local sandbox over loopback and real DuckDB:

- the 5-minute future guard is inclusive at its limit: an hour window starting exactly at Stripe's
  now + 5 min - 60 s is due and sent (the window 5 minutes ahead is in test_push_guard_edges.py);
- the report's raw events per call is rounded to hundredths, and counts only the raw events of
  acknowledged windows;
- a window's raw events are its own usage events: a `sum` window's every event (not its aggregate
  rows), a `last` window's events inside the window only (not the period's before it);
- only the meters being pushed are held to the push's window kind: a meter the catalog still records
  with other windows but no longer in the rules does not block the push;
- the client's read timeout is the read timeout (not the connect one): a Stripe that accepted the
  connection but does not answer is given up on after it;
- only Stripe's "already exists with identifier" 400 is a duplicate identifier (an event Stripe
  holds); another "already exists" refusal is not;
- each revision's meter event reaches Stripe stamped with its ledger timestamp (window start +
  revision seconds), so a corrected total is the window's newest event by time, not only by arrival;
- a meter's Stripe `event_name` of exactly 100 characters (Stripe's limit) is allowed;
- a late window's row left `sent` by a killed push (the call may have reached Stripe) waits while
  Stripe's summary may lag behind that attempt, like an `unknown` one: it is not superseded and
  called late on a summary that may not show it yet;
- a value is sent as a plain decimal string, without the warehouse's trailing zeros or an exponent;
- a key holding an ASCII control character is refused as bad input.

Every expected value is worked out by hand in the test's docstring or comments."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
import stripe

from metering import warehouse
from metering.errors import BadInputError
from metering.stripe import ledger
from metering.stripe.client import StripeSettings, make_client, settings_from_env
from metering.stripe.keys import event_name
from metering.stripe.push import PushConfig, PushReport, Pusher, _duplicate_identifier
from metering.stripe_sandbox.testing import running_sandbox
from push_world import CUSTOMERS_CSV, FAST_RETRY, World, day_start, make_world

UTC = dt.timezone.utc


def test_an_hour_window_starting_exactly_at_the_future_limit_is_due(tmp_path: Path, rules_dir: Path) -> None:
    """Hour windows, Stripe's now Nov 19 10:56:00. A window is due when window_start <= now + 5 min -
    60 s = 11:00:00. Tokens 3 at 11:10: its window starts at 11:00:00, exactly the limit, so it is due
    and sent; its event is stamped 11:00:01 (window start + revision 1 s), 4 min 1 s ahead of Stripe's
    now, inside Stripe's 5 minutes: acknowledged, nothing waits, Stripe holds 3.

    Wrong implementation: `window_start < limit` leaves it not yet due (no call), and the usage waits
    for no reason."""
    now = dt.datetime(2026, 11, 19, 10, 56, tzinfo=UTC)
    day = now.date()
    h11 = now.replace(hour=11, minute=0)
    with running_sandbox(now=int(now.timestamp()), seed=7) as sb, \
            warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        world = make_world(con, sb, rules_dir, tmp_path, CUSTOMERS_CSV, now=now, window_kind="hour")
        world.add_events([("acme", "tokens", h11 + dt.timedelta(minutes=10), "3", {"model": "small"})])
        report = world.pusher(window_kind="hour").push(day, day)
        assert (report.not_yet_due, report.acknowledged, report.calls, report.late) == (0, 1, 1, 0)
        assert world.ledger().select("window_start", "value", "status", "event_timestamp").rows() == [
            (h11, Decimal(3), "acknowledged", h11 + dt.timedelta(seconds=1))]
        assert world.stripe_total("acme", "tokens", h11, h11 + dt.timedelta(hours=1)) == 3


def test_raw_events_per_call_is_rounded_to_hundredths() -> None:
    """2 raw events over 3 calls: 0.666... is 0.67 (half-even at the hundredths), in the report's dict
    and its summary line; no call at all is 0."""
    report = PushReport("r", dt.date(2026, 11, 18), dt.date(2026, 11, 18), "day", calls=3, raw_events=2)
    assert report.raw_events_per_call == Decimal("0.67")
    assert report.as_dict()["raw_events_per_call"] == "0.67"
    assert "0.67 raw events per call" in report.summary()
    assert PushReport("r", dt.date(2026, 11, 18), dt.date(2026, 11, 18), "day", raw_events=5).raw_events_per_call == 0


def test_a_late_window_left_sent_by_a_killed_push_waits_for_the_summary_lag(world: World) -> None:
    """acme's tokens on Oct 17 (4). T0 = Nov 20 12:00: the window is inside Stripe's 35 days (limit Oct 16
    13:00); its one attempt is throttled (429): `pending`. At T1 - 1 min (Nov 20 23:59) a push commits
    the row `sent` (`ledger.mark_sent`, before its call) and is killed: the call may have reached Stripe.
    At T1 = Nov 21 00:00 the limit is Oct 17 01:00 > Oct 17 00:00: the window is late. Its last attempt
    is 1 min old, under the 15 min summary lag: the (empty) summary may not show it yet, so the row is
    not superseded but left `unknown` ("may not show the attempt"), no `late` revision, nothing sent.
    At T1 + 15 min the lag has passed: the empty summary supersedes it and the value gets a `late`
    revision 2 (4); still nothing sent.

    Wrong implementation: only `unknown` rows wait; the `sent` row is superseded at T1 and its value
    reported late although the killed push's call may be billed."""
    oct17 = dt.date(2026, 10, 17)
    world.add_events([("acme", "tokens", day_start(oct17) + dt.timedelta(hours=3), "4", {"model": "small"})])
    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=1)
    assert world.pusher(retry=replace(FAST_RETRY, max_attempts=1)).push(oct17, oct17).pending == 1
    world.sandbox.clear_faults()
    t1 = dt.datetime(2026, 11, 21, tzinfo=UTC)
    ledger.mark_sent(world.con, [world.ledger()["identifier"][0]], t1 - dt.timedelta(minutes=1))
    assert world.ledger()["status"].to_list() == ["sent"]
    sent_before = len(world.meter_event_requests())

    world.sandbox.set_now(int(t1.timestamp()))
    waiting = world.pusher(now=t1).push(oct17, oct17)
    assert (waiting.summary_checks, waiting.late, waiting.unknown, waiting.new_revisions) == (1, 0, 1, 0)
    rows = world.ledger().sort("revision")
    assert rows.select("revision", "value", "status").rows() == [(1, Decimal(4), "unknown")]
    assert "may not show the attempt" in rows["last_error"][0]

    t2 = t1 + dt.timedelta(minutes=15)
    world.sandbox.set_now(int(t2.timestamp()))
    decided = world.pusher(now=t2).push(oct17, oct17)
    assert (decided.summary_checks, decided.late, decided.unknown, decided.new_revisions) == (1, 1, 0, 1)
    assert world.ledger().sort("revision").select("revision", "value", "status").rows() == [
        (1, Decimal(4), "superseded"), (2, Decimal(4), "late")]
    assert len(world.meter_event_requests()) == sent_before


def test_raw_events_count_only_windows_stripe_acknowledged(world: World) -> None:
    """acme: 3 API calls on Nov 17 (one window, 3 raw events) and tokens 5 on Nov 18 (1 raw event);
    one attempt per call, the first call throttled. The pair api_calls goes first or second, the
    meters are separate pairs: whichever call gets the 429 stays `pending` and its raw events are not
    counted. So raw events are those of the one acknowledged window: 3 or 1, with 2 calls, 1 pending."""
    nov17, nov18 = dt.date(2026, 11, 17), dt.date(2026, 11, 18)
    world.add_events([("acme", "api_calls", day_start(nov17) + dt.timedelta(hours=h), None, {"region": "us"})
                      for h in (1, 2, 3)] +
                     [("acme", "tokens", day_start(nov18) + dt.timedelta(hours=1), "5", {"model": "small"})])
    world.sandbox.inject_fault("rate_limit", path="/v1/billing/meter_events", method="POST", count=1)
    report = world.pusher(retry=replace(FAST_RETRY, max_attempts=1), concurrency=1).push(nov17, nov18)
    assert (report.calls, report.acknowledged, report.pending) == (2, 1, 1)
    [acknowledged] = world.ledger().filter(pl.col("status") == "acknowledged")["meter"].to_list()
    assert report.raw_events == {"api_calls": 3, "tokens": 1}[acknowledged]
    assert report.raw_events_per_call == Decimal(report.raw_events) / 2


def test_a_meter_no_longer_pushed_does_not_block_the_push_with_its_other_windows(world: World) -> None:
    """The catalog synced day meters. The `seats` meter is then recorded with hour windows (as after it
    was re-created by hand) and dropped from the meters pushed. A day push of the other meters checks
    only theirs (all day): acme's 5 tokens on Nov 18 are sent, acknowledged, Stripe holds 5. With
    `seats` among the meters pushed the same push is refused, naming it ("seats (hour)")."""
    nov18 = dt.date(2026, 11, 18)
    world.con.execute("UPDATE stripe_objects SET details = json_merge_patch(details, '{\"event_time_window\": \"hour\"}') "
                      "WHERE kind = 'meter' AND our_key = 'seats'")
    world.add_events([("acme", "tokens", day_start(nov18) + dt.timedelta(hours=1), "5", {"model": "small"})])
    with pytest.raises(BadInputError, match=r"seats \(hour\)"):
        world.pusher().push(nov18, nov18)
    others = {name: meter for name, meter in world.rules.meters.items() if name != "seats"}
    report = Pusher(world.con, world.client, others, PushConfig(rate=0, retry=FAST_RETRY),
                    now=lambda: world.now, sleep=lambda s: None).push(nov18, nov18)
    assert (report.acknowledged, report.failed, report.unknown) == (1, 0, 0)
    assert world.stripe_total("acme", "tokens", day_start(nov18), day_start(nov18) + dt.timedelta(days=1)) == 5


def test_a_stripe_that_does_not_answer_is_given_up_on_after_the_read_timeout(tmp_path: Path) -> None:
    """Connect timeout 5 s, read timeout 0.5 s, no SDK retries. The sandbox accepts the connection at
    once (loopback) and holds the answer to a customer list for 3 s (a slow fault): the read timeout
    (0.5 s) ends the call with a connection error well before the 3 s, instead of the answer after
    them (what the 5 s, the connect timeout, used as the read timeout would wait for)."""
    with running_sandbox(now=1_700_000_000) as sb:
        client = make_client(StripeSettings(api_key=sb.api_key, api_base=sb.base_url, meter_events_base=sb.base_url,
                                            max_network_retries=0, connect_timeout=5.0, read_timeout=0.5))
        client.v1.customers.list({"limit": 1})   # answered at once: the sandbox is up
        sb.inject_fault("slow", path="/v1/customers", method="GET", count=1, delay=3.0)
        started = time.monotonic()
        with pytest.raises(stripe.APIConnectionError):
            client.v1.customers.list({"limit": 1})
        assert time.monotonic() - started < 2.5
        sb.release_slow()


def test_a_windows_raw_events_are_the_usage_events_inside_it(world: World) -> None:
    """acme, Nov 17..18. Tokens (`sum`): 3 events on Nov 18 in the same hour and model, one aggregate
    row holding 3 events: 3 raw events. Seats (`last`): 2 events on Nov 17 (09:00 4 seats, 10:00 6) and 1
    on Nov 18 (09:00, 5): its Nov 17 window has 2 raw events and its Nov 18 window 1, although the
    Nov 18 value (5, the period's newest) is read from the period since Nov 1. 3 windows, all
    acknowledged: 3 calls, 3 + 2 + 1 = 6 raw events, 2.00 per call."""
    nov17, nov18 = dt.date(2026, 11, 17), dt.date(2026, 11, 18)
    world.add_events([("acme", "tokens", day_start(nov18) + dt.timedelta(hours=1, minutes=m), "2", {"model": "small"})
                      for m in (5, 10, 15)] +
                     [("acme", "seats", day_start(nov17) + dt.timedelta(hours=9), "4", {}),
                      ("acme", "seats", day_start(nov17) + dt.timedelta(hours=10), "6", {}),
                      ("acme", "seats", day_start(nov18) + dt.timedelta(hours=9), "5", {})])
    report = world.pusher().push(nov17, nov18)
    assert (report.calls, report.acknowledged, report.raw_events) == (3, 3, 6)
    assert report.raw_events_per_call == Decimal("2.00")
    assert world.ledger().select("meter", "event_date", "value", "raw_events").rows() == [
        ("seats", nov17, Decimal(6), 2), ("seats", nov18, Decimal(5), 1), ("tokens", nov18, Decimal(6), 3)]


def test_only_an_identifier_stripe_holds_is_a_duplicate_identifier() -> None:
    """Stripe's meter event 400 for an identifier it holds reads "An event already exists with
    identifier ..." (any case): a duplicate. Another 400 saying something else "already exists" (not
    about the identifier), or no message at all, is not: the call is `failed` (nothing recorded),
    not `unknown`."""
    assert _duplicate_identifier("An event already exists with identifier 'acme|tokens|day|20261118T0000Z|r1'.")
    assert _duplicate_identifier("AN EVENT ALREADY EXISTS WITH IDENTIFIER x")
    assert not _duplicate_identifier("A customer with this email already exists")
    assert not _duplicate_identifier("Invalid identifier: too long")
    assert not _duplicate_identifier(None)


def test_an_event_name_of_exactly_100_characters_is_allowed() -> None:
    """Stripe takes an `event_name` of up to 100 characters (stripe-facts.md). "metering_" is 9: a meter
    name of 91 gives exactly 100, allowed; 92 gives 101, refused."""
    assert event_name("m" * 91) == "metering_" + "m" * 91
    assert len(event_name("m" * 91)) == 100
    with pytest.raises(ValueError, match="too long"):
        event_name("m" * 92)


def test_each_revision_reaches_stripe_stamped_window_start_plus_its_revision_in_seconds(world: World) -> None:
    """acme's API calls on Nov 17: 1 call pushed (revision 1), a 2nd call pushed (revision 2). Stripe
    keeps a window's newest event; "newest" is its timestamp, so revision r must be stamped
    Nov 17 00:00:00 + r s: 00:00:01 and 00:00:02, as the ledger records (the sandbox's own record of
    each identifier shows the timestamp it received). Stamped at the window start both would tie,
    and which one a tie keeps is Stripe's choice, not ours."""
    nov17 = dt.date(2026, 11, 17)
    start = day_start(nov17)
    world.add_events([("acme", "api_calls", start + dt.timedelta(hours=1), None, {"region": "us"})])
    world.pusher().push(nov17, nov17)
    world.add_events([("acme", "api_calls", start + dt.timedelta(hours=2), None, {"region": "us"})])
    world.pusher().push(nov17, nov17)
    rows = world.ledger().select("revision", "identifier", "status", "event_timestamp").rows()
    # an acknowledged revision stays acknowledged: Stripe held it until the next replaced it
    assert [(r, s, t) for r, _, s, t in rows] == [(1, "acknowledged", start + dt.timedelta(seconds=1)),
                                                   (2, "acknowledged", start + dt.timedelta(seconds=2))]
    received = world.sandbox.sandbox.state.identifiers
    assert [received[ident]["timestamp"] for _, ident, _, _ in rows] == [
        int(start.timestamp()) + 1, int(start.timestamp()) + 2]
    assert world.stripe_total("acme", "api_calls", start, start + dt.timedelta(days=1)) == 2


def test_a_value_reaches_stripe_as_a_plain_decimal_string(world: World) -> None:
    """What the push sends is Stripe's decimal string, no exponent and no trailing zeros (`format_value`),
    whatever scale the warehouse holds it at (DECIMAL(38, 12)). acme's tokens on Nov 17: 1000.5 + 499.5 =
    1500, sent as "1500" (not "1500.000000000000", 16 digits as written); on Nov 18: 12345678901234567890
    rounded to 15 significant digits, sent as "12345678901234600000" (not "1.23456789012346E+19"). The
    sandbox keeps each payload as it received it."""
    nov17, nov18 = dt.date(2026, 11, 17), dt.date(2026, 11, 18)
    world.add_events([("acme", "tokens", day_start(nov17) + dt.timedelta(hours=5), "1000.5", {"model": "small"}),
                      ("acme", "tokens", day_start(nov17) + dt.timedelta(hours=6), "499.5", {"model": "large"}),
                      ("acme", "tokens", day_start(nov18) + dt.timedelta(hours=5), "12345678901234567890",
                       {"model": "small"})])
    report = world.pusher().push(nov17, nov18)
    assert (report.acknowledged, report.failed, report.unknown) == (2, 0, 0)
    received = world.sandbox.sandbox.state.identifiers
    sent = [received[ident]["payload"]["value"] for ident in world.ledger().sort("window_start")["identifier"]]
    assert sent == ["1500", "12345678901234600000"]


@pytest.mark.parametrize("key", ["sk_test_a\tb", "sk_test_a\x07b", "sk_test_a\x7fb"], ids=["tab", "bell", "delete"])
def test_a_key_with_an_ascii_control_character_is_refused(monkeypatch: pytest.MonkeyPatch, key: str) -> None:
    """client.py: a key with characters "other than printable ASCII" cannot go into an HTTP header. A tab,
    a bell or a DEL inside the key is ASCII but not printable (only the ends are stripped): refused as bad
    input, never shown. Kills the `isprintable()` check dropped (test_retry_mutants25 holds `isascii()`)."""
    monkeypatch.setenv("STRIPE_API_KEY", key)
    with pytest.raises(BadInputError, match="printable ASCII") as refused:
        settings_from_env()
    assert key not in str(refused.value)
