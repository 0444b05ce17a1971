"""Gaps a hand mutation audit (m22a) found in invoice items, the retry decisions and the client settings.

Real sandbox over loopback, real DuckDB, the real SDK; helpers imported from the neighbouring tests.
"""

from __future__ import annotations

import datetime as dt
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl
import pytest
import stripe

from metering import warehouse
from metering.errors import BadInputError
from metering.stripe.client import StripeSettings, make_client, settings_from_env
from metering.stripe.invoice_items import MAX_ROUNDS, _periods_with_late_usage, closed_targets, item_key
from metering.stripe.retry import AuthError, RateLimiter, call_with_retries
from metering.stripe_sandbox.testing import running_sandbox
from push_world import FAST_RETRY, OCT1, SEP1, SEPTEMBER, customer_on_clock, rate_by_hand as rate
from test_invoice_items import (
    NOW, CSV, _late_window, biller, items_at_stripe, ledger, minimum_left_unknown, rated_on_version_2026_10,
    record_versions,
)
from test_keys_and_retry import Script, _error, run

T0 = NOW   # test_invoice_items.biller's default "now"
OFF_CLOCK = pl.DataFrame(schema={"customer_id": pl.String, "clock_now": pl.Datetime("us", "UTC")})


# -- invoice_items.py --------------------------------------------------------------------------------

def test_a_key_is_resent_while_young_and_counts_as_old_20_hours_after_its_first_attempt(
        tmp_path: Path, rules_dir: Path) -> None:
    """I10: every call of revision 1 (a 40.00 true-up) is dropped at T0 and again at T0 + 15 h (nothing
    applied: the row is unknown, resent under its key while it is young). At T0 + 20 h, counted from the
    first attempt, not the last, the key is past the engine's margin under Stripe's 24 h: the row is
    failed and the 40.00 billed once under revision 2's key."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        minimum_left_unknown(sb, con, client, clock, drops=100)
        young = biller(con, client, now=T0 + dt.timedelta(hours=15)).run(SEPTEMBER)
        assert (young.unknown, young.new_revisions, young.calls) == (1, 0, FAST_RETRY.max_attempts)
        sb.clear_faults()

        old = biller(con, client, now=T0 + dt.timedelta(hours=20)).run(SEPTEMBER)
        assert (old.new_revisions, old.acknowledged, old.needs_operator) == (1, 1, 0)
        assert ledger(con).select("revision", "status", "first_attempt_at").rows() == [
            (1, "failed", T0), (2, "acknowledged", T0 + dt.timedelta(hours=20))]
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [4000]


def test_off_a_test_clock_a_period_closes_with_a_rating_at_or_after_its_end(tmp_path: Path) -> None:
    """Off a clock September [Sep 1, Oct 1) is closed once the wall clock is past Oct 1 00:00 and a
    rating ran at or after that instant (the closing rating); one ran a second earlier saw an open period."""
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 - dt.timedelta(seconds=1))
        assert closed_targets(con, SEPTEMBER, T0, OFF_CLOCK).is_empty()
        rate(con, {"minimum spend": 4000}, rated_at=OCT1)
        assert closed_targets(con, SEPTEMBER, T0, OFF_CLOCK).select("charge", "target_minor").rows() == [
            ("minimum spend", 4000)]


def test_a_months_run_takes_the_periods_starting_in_that_month_only(tmp_path: Path) -> None:
    """September's run bills September's periods; October's (starting Oct 1, the first instant after
    September's bounds) closed and rated too, belongs to October's run: 4000 for September only."""
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        rate(con, {"minimum spend": 4000}, rated_at=OCT1)
        con.execute("""INSERT INTO rated_usage SELECT * REPLACE (
                           DATE '2026-10-01' AS period_start, DATE '2026-11-01' AS period_end,
                           DATE '2026-10-01' AS segment_start, DATE '2026-11-01' AS segment_end,
                           2500 AS amount_minor, TIMESTAMPTZ '2026-11-01 00:00:00+00' AS rated_at)
                       FROM rated_usage""")
        closed = closed_targets(con, SEPTEMBER, T0, OFF_CLOCK)
        assert closed.select("period_start", "target_minor").rows() == [(SEPTEMBER, 4000)]
        october = closed_targets(con, dt.date(2026, 10, 1), T0, OFF_CLOCK)
        assert october.select("period_start", "target_minor").rows() == [(dt.date(2026, 10, 1), 2500)]


def test_only_the_customers_own_late_windows_inside_the_period_hold_its_credits(tmp_path: Path) -> None:
    """A credit is held for a period holding a push window of its customer marked `late`, starting in
    [Sep 1, Oct 1). Not for another customer's late window, a window pushed in time, or a late window
    of the next period (Oct 1, the period's exclusive end)."""
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        rate(con, {"minimum spend": 4000}, rated_at=OCT1)
        _late_window(con, "globex", dt.date(2026, 9, 29))
        _late_window(con, "acme", dt.date(2026, 10, 1))
        _late_window(con, "acme", dt.date(2026, 9, 28))
        con.execute("UPDATE stripe_push_ledger SET status = 'acknowledged' "
                    "WHERE customer_id = 'acme' AND event_date = DATE '2026-09-28'")
        assert _periods_with_late_usage(con, SEPTEMBER).is_empty()
        _late_window(con, "acme", dt.date(2026, 9, 30))
        assert _periods_with_late_usage(con, SEPTEMBER).rows() == [("acme", SEPTEMBER)]


def test_what_was_billed_for_a_charge_later_found_of_another_version_stays_billed(
        tmp_path: Path, rules_dir: Path) -> None:
    """acme's subscription on pro 2026-10: 'api calls us' (25.00, per region: no Stripe price) and the
    minimum (15.00) are billed as items. A later sync maps the subscription to 2026-01, whose API-calls
    price bills that meter: the charge is now left to an operator, and its 25.00 is not credited for
    that reason (Stripe holds 25.00 + 15.00 still, no -25.00)."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))   # September closed
        record_versions(con, rules, ("pro", "2026-01"), ("pro", "2026-10"))
        con.execute("UPDATE stripe_customer_map SET plan = 'pro', plan_version = '2026-10'")
        rate(con, {"minimum spend": 1500}, rated_at=OCT1 + dt.timedelta(minutes=10))
        rated_on_version_2026_10(con, filtered=True)
        first = biller(con, client).run(SEPTEMBER)
        assert (first.other_version, first.acknowledged, first.billed_minor) == (0, 2, {"usd": 2500 + 1500})

        con.execute("UPDATE stripe_customer_map SET plan_version = '2026-01'")
        later = biller(con, client).run(SEPTEMBER)
        assert (later.other_version, later.new_revisions, later.calls) == (1, 0, 0)
        assert sorted(a for a, _, _ in items_at_stripe(client, cus)) == [1500, 2500]


def test_a_blocked_charge_is_billed_to_the_subscription_the_customer_has_now(tmp_path: Path, rules_dir: Path) -> None:
    """The blocked row's advice: give the customer a subscription. Its subscription ended with
    September (its invoice final): the 51.00 true-up is blocked, no call. The sync gives acme a new
    subscription; the next run bills the 51.00 once, pending for that one."""
    from metering.customers import load_customers
    from metering.stripe import catalog

    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus, old = report.customers[0]["stripe_customer_id"], report.customers[0]["subscription_id"]
        client.v1.subscriptions.update(old, {"cancel_at_period_end": True})
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))   # ended, invoice final
        rate(con, {"minimum spend": 5100}, rated_at=OCT1 + dt.timedelta(hours=1, minutes=30))
        blocked = biller(con, client).run(SEPTEMBER)
        assert (blocked.blocked, blocked.calls) == (1, 0)

        catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules), create_customers=True,
                             test_clock=clock.id)
        [new] = catalog.customer_map(con)["subscription_id"].to_list()
        assert new not in (None, old)
        run = biller(con, client).run(SEPTEMBER)
        assert (run.blocked, run.pending_next, run.billed_minor, run.needs_operator) == (0, 1, {"usd": 5100}, 0)
        [item] = client.v1.invoice_items.list({"customer": cus}).data
        assert (item.amount, item.invoice, catalog.parent_subscription(item)) == (5100, None, new)
        assert ledger(con).select("revision", "status", "subscription_id").rows() == [(1, "acknowledged", new)]


def test_a_charge_with_a_row_in_flight_gets_no_new_revision_until_it_is_settled(
        tmp_path: Path, rules_dir: Path) -> None:
    """Revision 1 (40.00) is left unknown (every call dropped); the period is re-rated to 55.00 before it
    is settled. The next run, still dropping, sends revision 1 again under its key and plans nothing
    beside it; once it goes through, the 15.00 difference follows: Stripe holds 40.00 + 15.00."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        minimum_left_unknown(sb, con, client, clock, drops=100)
        rate(con, {"minimum spend": 5500}, rated_at=OCT1 + dt.timedelta(days=1))
        waiting = biller(con, client).run(SEPTEMBER)
        assert (waiting.new_revisions, waiting.unknown) == (0, 1)
        assert ledger(con).select("revision", "amount_minor", "status").rows() == [(1, 4000, "unknown")]
        sb.clear_faults()

        settled = biller(con, client).run(SEPTEMBER)
        assert (settled.new_revisions, settled.acknowledged, settled.needs_operator) == (1, 2, 0)
        assert sorted(a for a, _, _ in items_at_stripe(client, cus)) == [1500, 4000]


def test_a_charge_throttled_on_every_attempt_waits_for_the_next_run_while_the_others_are_billed(
        tmp_path: Path, rules_dir: Path) -> None:
    """One attempt a run for a failed charge. Every attempt of the first call (the minimum's 40.00, onto
    the draft) gets a 429: `failed`, nothing recorded, and not planned again in this run, though the
    tokens' 7.00 goes through and makes a second round. The next run bills the 40.00 (revision 2)."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))   # September's draft
        rate(con, {"minimum spend": 4000, "tokens large": 700}, rated_at=OCT1 + dt.timedelta(minutes=10))
        sb.inject_fault("rate_limit", path="/v1/invoiceitems", method="POST", count=FAST_RETRY.max_attempts)
        first = biller(con, client).run(SEPTEMBER)
        assert (first.acknowledged, first.failed, first.new_revisions) == (1, 1, 2)
        assert ledger(con).select("charge", "revision", "status", "last_http_status").rows() == [
            ("minimum spend", 1, "failed", 429), ("tokens large", 1, "acknowledged", 200)]
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [700]

        second = biller(con, client).run(SEPTEMBER)
        assert (second.new_revisions, second.acknowledged, second.needs_operator) == (1, 1, 0)
        assert sorted(a for a, _, _ in items_at_stripe(client, cus)) == [700, 4000]


def test_every_attempt_of_an_item_is_the_billers_own_and_counted(tmp_path: Path, rules_dir: Path) -> None:
    """The client retries catalog calls itself (max_network_retries 2); an item's call must not, or its
    retries go uncounted and unthrottled: one dropped connection, then the 40.00 goes through, is two
    calls in the report, two requests at Stripe under one Idempotency-Key, one item."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        sb.inject_fault("drop", path="/v1/invoiceitems", method="POST", count=1)
        run = biller(con, client).run(SEPTEMBER)
        assert (run.calls, run.acknowledged) == (2, 1)
        [key] = ledger(con)["idempotency_key"].to_list()
        assert [r["idempotency_key"] for r in sb.requests_log(path="/v1/invoiceitems", method="POST")] == [key, key]
        assert [a for a, _, _ in items_at_stripe(client, cus)] == [4000]


def test_the_true_up_goes_onto_our_subscriptions_draft_not_another_products_of_the_same_period(
        tmp_path: Path, rules_dir: Path) -> None:
    """acme's Stripe customer also pays a support subscription (another product, 50.00 a month) on the
    same monthly cycle; our subscription is made again after it (the old one canceled), so at Oct 1
    both have a draft subscription_cycle invoice for [Sep 1, Oct 1). The 51.00 true-up goes onto ours."""
    from metering.customers import load_customers
    from metering.stripe import catalog

    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus, first = report.customers[0]["stripe_customer_id"], report.customers[0]["subscription_id"]
        support = client.v1.prices.create({"currency": "usd", "unit_amount": 5000,
                                           "product": client.v1.products.create({"name": "Premium support"}).id,
                                           "recurring": {"interval": "month", "usage_type": "licensed"}})
        foreign = client.v1.subscriptions.create({"customer": cus, "items": [{"price": support.id, "quantity": 1}]})
        client.v1.subscriptions.cancel(first)
        catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules), create_customers=True,
                             test_clock=clock.id)
        [ours] = catalog.customer_map(con)["subscription_id"].to_list()
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        drafts = {catalog.parent_subscription(i): i.id
                  for i in client.v1.invoices.list({"customer": cus, "status": "draft", "limit": 100}).auto_paging_iter()
                  if i.period_end == int(OCT1.timestamp())}
        assert set(drafts) == {ours, foreign.id}
        rate(con, {"minimum spend": 5100}, rated_at=OCT1 + dt.timedelta(minutes=10))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.on_draft_invoice, run.needs_operator) == (1, 0)
        assert [(a, inv) for a, inv, _ in items_at_stripe(client, cus)] == [(5100, drafts[ours])]


def test_a_charge_still_changing_after_the_last_round_needs_an_operator(tmp_path: Path, rules_dir: Path) -> None:
    """Items made by hand carry the keys of revisions 1 to 5 (1.00 each): every round finds the
    revision it just planned at Stripe with 1.00 and plans the rest again. After the last round the
    charge is still changing: the run is not clean (unknown 1). The next run bills the rest,
    40.00 - 5 x 1.00 = 35.00, as revision 6."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))   # invoice final
        for revision in range(1, MAX_ROUNDS + 1):
            client.v1.invoice_items.create({"customer": cus, "amount": 100, "currency": "usd", "metadata": {
                "metering_item": item_key("acme", SEPTEMBER, "pro", "2026-01", "minimum spend", revision)}})
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(hours=1))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.settled_by_listing, run.calls, run.unknown, run.needs_operator) == (MAX_ROUNDS, 0, 1, 1)

        rest = biller(con, client).run(SEPTEMBER)
        assert (rest.new_revisions, rest.billed_minor, rest.needs_operator) == (1, {"usd": 3500}, 0)
        assert sum(a for a, _, _ in items_at_stripe(client, cus)) == 4000


def test_a_subscription_expired_incomplete_is_ended_and_its_charge_blocked(tmp_path: Path, rules_dir: Path) -> None:
    """acme's card fails from Sep 1; its subscription made again then (the sync's, after the first one
    was canceled) stays `incomplete`, and 23 h later is `incomplete_expired`: terminal, no invoice ever
    again. September's 40.00 true-up is blocked for an operator, not left pending at Stripe for an
    invoice that never comes."""
    from metering.customers import load_customers
    from metering.stripe import catalog

    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus, first = report.customers[0]["stripe_customer_id"], report.customers[0]["subscription_id"]
        sb.set_payment_behavior(cus, "fails")
        client.v1.subscriptions.cancel(first)
        catalog.sync_catalog(con, client, rules, load_customers(tmp_path / "c.csv", rules), create_customers=True,
                             test_clock=clock.id)
        [sub] = catalog.customer_map(con)["subscription_id"].to_list()
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))
        assert client.v1.subscriptions.retrieve(sub).status == "incomplete_expired"
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(hours=1))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.blocked, run.calls, run.acknowledged, run.needs_operator) == (1, 0, 0, 1)
        assert items_at_stripe(client, cus) == []


# -- retry.py ----------------------------------------------------------------------------------------

def test_a_403_aborts_the_whole_call_like_a_401() -> None:
    # a key without the permission (a restricted key): a configuration problem, not a refused item
    with pytest.raises(AuthError):
        run(Script(stripe.PermissionError("The provided key does not have the required permissions", http_status=403),
                   {"ok": 1}))


def test_a_call_stripe_asked_to_retry_until_attempts_ran_out_is_unknown_not_failed() -> None:
    # only attempts that were all 429s say "nothing recorded"; four 400s carrying Stripe-Should-Retry: true do not
    script = Script(*[_error(stripe.InvalidRequestError, 400, {"Stripe-Should-Retry": "true"})] * 4)
    outcome = run(script)
    assert (outcome.status, outcome.attempts, script.calls) == ("unknown", 4, 4)


def test_a_409_for_a_request_still_running_under_the_key_is_retried_and_gets_its_result() -> None:
    """Stripe's 409 `idempotency_key_in_use` has type `idempotency_error` too (the SDK raises an APIError
    for it). It is not the 400 "key used with other parameters": the other request may still apply,
    and a retry once it has finished gets its stored result. One customer at Stripe, acknowledged on the
    second attempt."""
    with running_sandbox() as sb, ThreadPoolExecutor(max_workers=1) as pool:
        client = make_client(StripeSettings(api_key=sb.api_key, api_base=sb.base_url, max_network_retries=0))
        key, params = "m22a-in-flight", {"name": "Acme"}
        options = {"idempotency_key": key, "max_network_retries": 0}
        sb.inject_fault("slow", path="/v1/customers", method="POST", count=1, delay=60)
        first = pool.submit(client.v1.customers.create, params, options)
        entries, deadline = sb.sandbox.idempotency.entries, time.monotonic() + 30
        while not any(k == key and e.in_flight for (_, k), e in list(entries.items())):   # held, key claimed
            assert time.monotonic() < deadline and not first.done()
            time.sleep(0.005)

        def let_the_first_finish(_seconds: float) -> None:
            sb.release_slow()
            first.result(timeout=30)

        try:
            outcome = call_with_retries(lambda: client.v1.customers.create(params, options), limiter=RateLimiter(0),
                                        policy=FAST_RETRY, sleep=let_the_first_finish)
        finally:
            sb.release_slow()   # no retry: the first is still held
        assert (outcome.status, outcome.attempts, outcome.http_status) == ("acknowledged", 2, 200)
        assert [c.id for c in client.v1.customers.list().data] == [first.result().id]


# -- client.py ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["STRIPE_CONNECT_TIMEOUT", "STRIPE_READ_TIMEOUT"])
def test_a_zero_timeout_is_bad_input(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # urllib3 refuses a timeout of 0 at the first call, where it surfaced as a connection failure
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_x")
    monkeypatch.setenv(name, "0")
    with pytest.raises(BadInputError, match=f"{name}: must be > 0 and at most 3600 seconds, got '0'"):
        settings_from_env()
