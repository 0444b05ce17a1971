"""Gaps a second hand mutation audit (m26c) found in the push ledger and the invoice items.

Ledger (real DuckDB, `stripe_push_ledger` driven through `plan_revisions` / `mark_sent` /
`record_outcomes` as the push drives it):

- a revision throttled on every attempt (`pending`, attempted: nothing recorded) is replaced when its
  window's value changes, while an `unknown` one is kept until Stripe answers;
- a window whose newest revision was `superseded` (its key expired unconfirmed) gets a new revision
  for the same value; a window mapped to another Stripe customer gets a new one, and a `sent` revision
  of the old destination (the process died in its call) is superseded;
- an outcome without an error clears the earlier one; a `sent` row throttled on every attempt is
  `pending` again, not `unknown`;
- event timestamps are `window_start + revision` seconds (docs/stripe-push.md).

Invoice items (real sandbox over loopback on a test clock, real DuckDB, the real SDK): see the
docstrings of the tests below the ledger's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from decimal import Decimal
from pathlib import Path

import polars as pl

from metering import warehouse
from metering.stripe import ledger as push_ledger
from metering.stripe.invoice_items import closed_targets, item_key
from push_world import FAST_RETRY, OCT1, SEP1, SEPTEMBER, customer_on_clock, rate_by_hand as rate
from test_invoice_items import CSV, NOW, biller, items_at_stripe, ledger, minimum_left_unknown
from test_ledger import T0, desired


def _rows(con) -> list[tuple]:
    return con.execute("SELECT revision, value, status, stripe_customer_id FROM stripe_push_ledger "
                       "ORDER BY window_start, revision").fetchall()


def _only_identifier(con) -> str:
    [ident] = [r[0] for r in con.execute(
        "SELECT identifier FROM stripe_push_ledger WHERE status IN ('pending', 'sent', 'unknown')").fetchall()]
    return ident


def _outcome(ident: str, status: str, *, error: str | None = None, http: int | None = None,
             resolved_by: str | None = None, request_id: str | None = None) -> dict:
    return {"identifier": ident, "status": status, "extra_attempts": 0, "last_error": error,
            "stripe_request_id": request_id, "last_http_status": http, "resolved_by": resolved_by}


# -- ledger.py ---------------------------------------------------------------------------------------

def test_a_revision_throttled_on_every_attempt_is_pending_and_replaced_when_its_window_changes(tmp_path: Path) -> None:
    """Window 0 (a, api_calls, Nov 1) planned at 5 (revision 1) and attempted: every attempt got a 429,
    so Stripe recorded nothing and the row is `pending` again (not `unknown`: it was `sent`, not
    attempted before). The window's value becomes 7: nothing of revision 1 can be at Stripe, so
    revision 2 (7, pending) replaces it and revision 1 is superseded (keeping it would push 5 for a
    window that is 7)."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        push_ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0)
        ident = _only_identifier(con)
        push_ledger.mark_sent(con, [ident], T0)
        push_ledger.record_outcomes(con, [_outcome(ident, "pending", error="429", http=429)], T0)
        assert con.execute("SELECT status, first_attempt_at FROM stripe_push_ledger").fetchall() == [("pending", T0)]
        assert push_ledger.plan_revisions(con, desired({0: Decimal(7)}, set()), T0) == {
            "new_revisions": 1, "newly_late": 0}
        assert _rows(con) == [(1, Decimal(5), "superseded", "cus_a"), (2, Decimal(7), "pending", "cus_a")]


def test_an_unknown_revision_is_kept_whatever_its_window_holds_now(tmp_path: Path) -> None:
    """Revision 1 (5) attempted, no answer (`unknown`: it may be at Stripe). The window becomes 7: no new
    revision yet; the push sends revision 1 again under its key (or reads the summary) first."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        push_ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0)
        ident = _only_identifier(con)
        push_ledger.mark_sent(con, [ident], T0)
        push_ledger.record_outcomes(con, [_outcome(ident, "unknown", error="500", http=500)], T0)
        assert push_ledger.plan_revisions(con, desired({0: Decimal(7)}, set()), T0) == {
            "new_revisions": 0, "newly_late": 0}
        assert _rows(con) == [(1, Decimal(5), "unknown", "cus_a")]


def test_a_window_whose_key_expired_unconfirmed_gets_a_new_revision_for_the_same_value(tmp_path: Path) -> None:
    """Revision 1 (5) was settled `superseded` by Stripe's summary (its key too old to resend, Stripe
    holds nothing): the window still wants 5, so revision 2 carries 5 under a new identifier and key
    (never revision 1's again)."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        push_ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0)
        ident = _only_identifier(con)
        push_ledger.mark_sent(con, [ident], T0)
        push_ledger.record_outcomes(con, [_outcome(ident, "superseded", error="summary holds 0",
                                                   resolved_by="summary")], T0)
        assert push_ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0) == {
            "new_revisions": 1, "newly_late": 0}
        assert _rows(con) == [(1, Decimal(5), "superseded", "cus_a"), (2, Decimal(5), "pending", "cus_a")]
        keys = con.execute("SELECT identifier, idempotency_key FROM stripe_push_ledger ORDER BY revision").fetchall()
        assert keys == [("a|api_calls|day|20261101T0000Z|r1", "metering-push:a|api_calls|day|20261101T0000Z|r1"),
                        ("a|api_calls|day|20261101T0000Z|r2", "metering-push:a|api_calls|day|20261101T0000Z|r2")]


def test_a_window_mapped_to_another_stripe_customer_gets_a_new_revision_for_the_same_value(tmp_path: Path) -> None:
    """Revision 1 (5) acknowledged at cus_a; the customer is now mapped to cus_new with the same value:
    revision 2 (5, pending) for cus_new. Revision 1 stays acknowledged: cus_a holds it."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        push_ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0)
        ident = _only_identifier(con)
        push_ledger.mark_sent(con, [ident], T0)
        push_ledger.record_outcomes(con, [_outcome(ident, "acknowledged", http=200, resolved_by="response")], T0)
        moved = desired({0: Decimal(5)}, set()).with_columns(stripe_customer_id=pl.lit("cus_new"))
        assert push_ledger.plan_revisions(con, moved, T0) == {"new_revisions": 1, "newly_late": 0}
        assert _rows(con) == [(1, Decimal(5), "acknowledged", "cus_a"), (2, Decimal(5), "pending", "cus_new")]


def test_a_sent_revision_of_a_window_mapped_elsewhere_is_superseded_by_the_new_one(tmp_path: Path) -> None:
    """Revision 1 (5) marked `sent` for cus_a, and the process died in the call. The window is mapped to
    cus_new: revision 2 (pending, cus_new), and revision 1 becomes `superseded` (one open revision per
    window: left `sent`, it would be an open row no push ever settles, counted nowhere)."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        push_ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0)
        push_ledger.mark_sent(con, [_only_identifier(con)], T0)
        moved = desired({0: Decimal(5)}, set()).with_columns(stripe_customer_id=pl.lit("cus_new"))
        assert push_ledger.plan_revisions(con, moved, T0) == {"new_revisions": 1, "newly_late": 0}
        assert _rows(con) == [(1, Decimal(5), "superseded", "cus_a"), (2, Decimal(5), "pending", "cus_new")]


def test_an_outcome_without_an_error_clears_the_earlier_error(tmp_path: Path) -> None:
    """Revision 1 answered 500 (`unknown`, last_error '500'), then acknowledged by its resend with no
    error: last_error is NULL (a stale '500' on an acknowledged row would send finance after nothing)."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        push_ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0)
        ident = _only_identifier(con)
        push_ledger.mark_sent(con, [ident], T0)
        push_ledger.record_outcomes(con, [_outcome(ident, "unknown", error="500", http=500)], T0)
        push_ledger.mark_sent(con, [ident], T0)
        push_ledger.record_outcomes(con, [_outcome(ident, "acknowledged", http=200, resolved_by="response")], T0)
        assert con.execute("SELECT status, last_error, last_http_status FROM stripe_push_ledger").fetchall() == [
            ("acknowledged", None, 200)]


def test_event_timestamps_are_the_window_start_plus_the_revision_in_seconds(tmp_path: Path) -> None:
    """docs/stripe-push.md: `window_start + revision` seconds, so on a `last` meter each revision is the
    window's newest event. Window 0 (Nov 1 00:00) at 5, then 7: 00:00:01 and 00:00:02."""
    with warehouse.open_warehouse(tmp_path / "l.duckdb") as con:
        push_ledger.plan_revisions(con, desired({0: Decimal(5)}, set()), T0)
        push_ledger.plan_revisions(con, desired({0: Decimal(7)}, set()), T0)
        assert con.execute("SELECT revision, event_timestamp FROM stripe_push_ledger ORDER BY revision").fetchall() == [
            (1, T0 + dt.timedelta(seconds=1)), (2, T0 + dt.timedelta(seconds=2))]


# -- invoice_items.py --------------------------------------------------------------------------------

OFF_CLOCK = pl.DataFrame(schema={"customer_id": pl.String, "clock_now": pl.Datetime("us", "UTC")})


def test_a_key_of_exactly_200_characters_is_kept_readable_and_one_more_is_hashed() -> None:
    """`_ITEM_KEY_MAX` is 200: "<customer>|2026-09-01|pro|2026-01|minimum spend|r1" is the customer
    id and 40 characters (1 + 10 + 1 + 3 + 1 + 7 + 1 + 13 + 1 + 2); a 160-character id makes 200, kept
    as it reads; a 161-character one makes 201: "h-" and the text's SHA-256 (66 characters)."""
    text = "c" * 160 + "|2026-09-01|pro|2026-01|minimum spend|r1"
    assert len(text) == 200
    assert item_key("c" * 160, SEPTEMBER, "pro", "2026-01", "minimum spend", 1) == text
    longer = "c" * 161 + "|2026-09-01|pro|2026-01|minimum spend|r1"
    assert item_key("c" * 161, SEPTEMBER, "pro", "2026-01", "minimum spend", 1) == (
        "h-" + hashlib.sha256(longer.encode()).hexdigest())


def test_a_period_closes_at_the_instant_it_ends_on_the_clock_and_off_it(tmp_path: Path) -> None:
    """September [Sep 1, Oct 1): on a test clock frozen at exactly Oct 1 00:00 it has ended (its end is
    exclusive), and off a clock with the wall clock at Oct 1 00:00 and the closing rating at that
    instant too. A second before, it is open either way."""
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        rate(con, {"minimum spend": 4000}, rated_at=OCT1)
        on_clock = pl.DataFrame({"customer_id": ["acme"], "clock_now": [OCT1]},
                                schema={"customer_id": pl.String, "clock_now": pl.Datetime("us", "UTC")})
        assert closed_targets(con, SEPTEMBER, NOW, on_clock).select("charge", "target_minor").rows() == [
            ("minimum spend", 4000)]
        assert closed_targets(con, SEPTEMBER, OCT1, OFF_CLOCK).select("charge", "target_minor").rows() == [
            ("minimum spend", 4000)]
        second_before = on_clock.with_columns(clock_now=pl.lit(OCT1 - dt.timedelta(seconds=1)).cast(
            pl.Datetime("us", "UTC")))
        assert closed_targets(con, SEPTEMBER, NOW, second_before).is_empty()
        assert closed_targets(con, SEPTEMBER, OCT1 - dt.timedelta(seconds=1), OFF_CLOCK).is_empty()


def test_an_item_shows_the_period_inclusively_and_names_a_later_revision(tmp_path: Path, rules_dir: Path) -> None:
    """September's 40.00 true-up onto the draft, then re-rated to 45.00: revision 2, 5.00, pending.
    Each item's `period` is September, its end inclusive (Oct 1 00:00 - 1 s = 1790812799, Sep 1 00:00 =
    1788220800), its description the last day as Sep 30, and only revision 2's says its revision."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(minutes=10))
        biller(con, client).run(SEPTEMBER)
        rate(con, {"minimum spend": 4500}, rated_at=OCT1 + dt.timedelta(days=1))
        assert biller(con, client).run(SEPTEMBER).billed_minor == {"usd": 500}
        items = sorted(client.v1.invoice_items.list({"customer": cus}).data, key=lambda i: i.metadata["metering_revision"])
        assert [(i.amount, i.period.start, i.period.end, i.description) for i in items] == [
            (4000, 1788220800, 1790812799, "minimum spend (pro 2026-01), 2026-09-01 to 2026-09-30"),
            (500, 1788220800, 1790812799, "minimum spend (pro 2026-01), 2026-09-01 to 2026-09-30, revision 2")]


def test_attempts_add_up_across_runs(tmp_path: Path, rules_dir: Path) -> None:
    """Every call of revision 1 dropped: 8 attempts (FAST_RETRY's) in the first run, 8 more when the next
    run resends it under its young key: 16 in the ledger, not the last run's 8."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        minimum_left_unknown(sb, con, client, clock, drops=100)
        assert ledger(con)["attempts"].to_list() == [FAST_RETRY.max_attempts]
        again = biller(con, client, now=NOW + dt.timedelta(hours=1)).run(SEPTEMBER)
        assert again.calls == FAST_RETRY.max_attempts
        assert ledger(con).select("status", "attempts").rows() == [("unknown", 2 * FAST_RETRY.max_attempts)]


def test_a_true_up_goes_onto_the_periods_draft_though_its_subscription_has_ended(
        tmp_path: Path, rules_dir: Path) -> None:
    """acme cancels at the period's end: at Oct 1 00:15 the subscription is `canceled` but September's
    cycle invoice is still a draft. The 51.00 true-up goes onto that draft, which Stripe will finalize
    and charge (blocking it, as for a pending item with no live subscription, would leave an
    operator to bill what the draft could carry)."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus, sub = report.customers[0]["stripe_customer_id"], report.customers[0]["subscription_id"]
        client.v1.subscriptions.update(sub, {"cancel_at_period_end": True})
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        assert client.v1.subscriptions.retrieve(sub).status == "canceled"
        [draft] = [i for i in client.v1.invoices.list({"customer": cus}).data
                   if i.billing_reason == "subscription_cycle" and i.period_end == int(OCT1.timestamp())]
        assert draft.status == "draft"
        rate(con, {"minimum spend": 5100}, rated_at=OCT1 + dt.timedelta(minutes=10))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.on_draft_invoice, run.blocked, run.needs_operator) == (1, 0, 0)
        assert [(a, inv) for a, inv, _ in items_at_stripe(client, cus)] == [(5100, draft.id)]


def test_a_subscription_stripe_does_not_know_is_not_live_and_the_charge_is_blocked(
        tmp_path: Path, rules_dir: Path) -> None:
    """The map names a subscription Stripe answers 404 for (gone: e.g. deleted with its test clock's
    objects, or a map restored from elsewhere). September's invoice is final, so the 40.00 true-up would
    go pending for it: no live subscription, so the row is blocked for an operator, no call, and the
    run goes on (the 404 is not an error of the run)."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))
        con.execute("UPDATE stripe_customer_map SET subscription_id = 'sub_gone'")
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(hours=1))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.blocked, run.calls, run.needs_operator) == (1, 0, 1)
        [row] = ledger(con).rows(named=True)
        assert row["status"] == "blocked" and "no live subscription (sub_gone)" in row["last_error"]
        assert items_at_stripe(client, cus) == []


def _by_hand(client, cus: str, amount: int, period_start: dt.date, revision: int) -> None:
    """An invoice item as the biller makes one for acme's pro 2026-01 minimum (its key and metadata),
    made by hand: what a ledger restored from a snapshot no longer knows."""
    start = dt.datetime.combine(period_start, dt.time(0), dt.UTC)
    end = (start + dt.timedelta(days=32)).replace(day=1)
    client.v1.invoice_items.create({
        "customer": cus, "amount": amount, "currency": "usd",
        "period": {"start": int(start.timestamp()), "end": int(end.timestamp()) - 1},
        "metadata": {"metering_item": item_key("acme", period_start, "pro", "2026-01", "minimum spend", revision),
                     "metering_customer_id": "acme", "metering_period_start": period_start.isoformat(),
                     "metering_charge": "pro|2026-01|minimum spend", "metering_revision": str(revision)}})


def test_items_the_ledger_lost_are_recorded_with_what_stripe_holds_up_to_them_and_only_the_months(
        tmp_path: Path, rules_dir: Path) -> None:
    """Stripe holds September's minimum as revision 1 (30.00) and revision 2 (10.00), and October's
    revision 1 (25.00); the ledger lost all three (restored). September is rated 40.00 and its invoice
    is final. September's run plans revision 1 (40.00) again, finds it at Stripe with 30.00 under its key,
    and records revision 2 under the key it did not hold, with target_minor 30.00 + 10.00 = 40.00 (what
    Stripe holds for the charge up to and including it). 40.00 is held, nothing is sent. October's item
    is October's (period start Oct 1, outside September): September's run does not record it."""
    with customer_on_clock(tmp_path, rules_dir, CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(hours=2)).timestamp()))
        _by_hand(client, cus, 3000, SEPTEMBER, 1)
        _by_hand(client, cus, 1000, SEPTEMBER, 2)
        _by_hand(client, cus, 2500, OCT1.date(), 1)
        rate(con, {"minimum spend": 4000}, rated_at=OCT1 + dt.timedelta(hours=1))
        run = biller(con, client).run(SEPTEMBER)
        assert (run.calls, run.new_revisions, run.needs_operator) == (0, 1, 0)
        assert ledger(con).select("period_start", "revision", "amount_minor", "target_minor", "status").rows() == [
            (SEPTEMBER, 1, 3000, 4000, "acknowledged"), (SEPTEMBER, 2, 1000, 4000, "acknowledged")]
        notes = ledger(con)["last_error"].to_list()
        assert notes == ["Stripe held this item with 3000, the ledger 4000",
                         "found at Stripe under a key the ledger did not hold (restored from a snapshot?): "
                         "recorded as Stripe holds it"]

        # the operator invoices the pending items by hand: the next run records the invoice, and the
        # rows' notes of how they were found stay (they are acknowledged either way)
        invoice = client.v1.invoices.create({"customer": cus, "pending_invoice_items_behavior": "include"})
        later = biller(con, client).run(SEPTEMBER)
        assert (later.calls, later.new_revisions, later.needs_operator) == (0, 0, 0)
        assert ledger(con).select("revision", "status", "stripe_invoice_id", "last_error").rows() == [
            (1, "acknowledged", invoice.id, notes[0]), (2, "acknowledged", invoice.id, notes[1])]


JPY_CSV = """customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior
tanaka,Tanaka,billing@tanaka.test,jpy,,pro_jpy,2026-01-01,succeeds
"""


def test_a_yen_true_up_is_billed_in_whole_yen(tmp_path: Path, rules_dir: Path) -> None:
    """pro_jpy's minimum spend (15,000 yen) trues up to 12,345 yen for September: JPY has no minor unit,
    so the rated amount_minor 12345 is 12,345 yen and the item's `amount` is 12345 in `jpy` (not
    1,234,500, nor 123.45), onto the period's draft; the report says 12345 jpy."""
    with customer_on_clock(tmp_path, rules_dir, JPY_CSV, start=SEP1) as (sb, con, client, clock, rules, report):
        cus = report.customers[0]["stripe_customer_id"]
        sb.advance_clock(clock.id, int((OCT1 + dt.timedelta(minutes=15)).timestamp()))
        con.execute(
            "INSERT INTO rated_usage (customer_id, period_start, period_end, segment_start, segment_end, plan, "
            "plan_version, rules_hash, charge_id, charge, model, amount, amount_minor, currency, rounding, rated_at) "
            "VALUES ('tanaka', ?, ?, ?, ?, 'pro_jpy', '2026-01', 'h', 0, 'minimum spend', 'minimum', 12345, 12345, "
            "'jpy', 'half_up', ?)", [SEPTEMBER, OCT1.date(), SEPTEMBER, OCT1.date(), OCT1 + dt.timedelta(minutes=10)])
        run = biller(con, client).run(SEPTEMBER)
        assert (run.on_draft_invoice, run.billed_minor, run.needs_operator) == (1, {"jpy": 12345}, 0)
        [item] = client.v1.invoice_items.list({"customer": cus}).data
        assert (item.amount, item.currency, item.invoice is not None) == (12345, "jpy", True)
        assert ledger(con).select("currency", "amount_minor", "target_minor").rows() == [("jpy", 12345, 12345)]
