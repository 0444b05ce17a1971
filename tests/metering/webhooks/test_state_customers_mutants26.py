"""The reconciled Stripe state (`metering/webhooks/state.py`): cases a hand mutation audit (26g) found
unchecked.

Status precedence within one second (invoices and subscriptions), versions without an attempt
count, per-invoice version counts, the columns read from nested or expanded fields, the meter of a
line, and payment attempts. Expected values come from the ordering rules in docs/webhooks.md and
the module docstring, and from Stripe's object shapes (reference/stripe-facts.md); each is worked
out by hand in the test's docstring. (The customer list's cases are in
tests/metering/rating/test_customers_mutants26.py, which needs that directory's helpers.)
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from metering.webhooks.repair import _store_snapshots
from metering.webhooks.state import rebuild_state
from test_webhook_state import START, con, land  # noqa: F401  (con is a fixture)
from webhook_payloads import event, invoice, line, subscription

UTC = timezone.utc


def ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


# -- rule 3: the status precedence within one second ----------------------------------------------

# (earlier status, later status): the later one is sent with the LOWER event id, so only the status
# precedence can pick it (rule 5 would pick the earlier one).
SUBSCRIPTION_STEPS = [
    ("incomplete", "active"),          # the first payment succeeded as the subscription was created
    ("trialing", "active"),            # the trial ended and the first invoice was paid at once
    ("past_due", "unpaid"),            # the last retry failed: past_due -> unpaid
    ("active", "canceled"),            # canceled immediately after an update
    ("incomplete", "incomplete_expired"),
]


@pytest.mark.parametrize(("before", "after"), SUBSCRIPTION_STEPS, ids=[f"{a}-{b}" for a, b in SUBSCRIPTION_STEPS])
def test_a_subscription_status_further_on_wins_its_second(con, tmp_path: Path, before: str, after: str):  # noqa: F811
    """Subscriptions: incomplete < trialing < active < past_due < paused < unpaid < incomplete_expired
    < canceled."""
    t = START + 500
    land(con, tmp_path, [[
        event("evt_9", "customer.subscription.updated", t, subscription("sub_1", status=before)),
        event("evt_1", "customer.subscription.updated", t, subscription("sub_1", status=after)),
    ]])
    assert con.execute("SELECT subscription_id, status, state_event_id FROM stripe_subscriptions").fetchall() == [
        ("sub_1", after, "evt_1")]


INVOICE_STEPS = [("draft", "open"), ("void", "paid")]


@pytest.mark.parametrize(("before", "after"), INVOICE_STEPS, ids=[f"{a}-{b}" for a, b in INVOICE_STEPS])
def test_an_invoice_status_further_on_wins_its_second(con, tmp_path: Path, before: str, after: str):  # noqa: F811
    """Invoices: draft < open < uncollectible < void < paid (created then finalized in one second; the
    documented order of the two final statuses)."""
    t = START + 500
    land(con, tmp_path, [[
        event("evt_9", "invoice.updated", t, invoice("in_1", status=before)),
        event("evt_1", "invoice.updated", t, invoice("in_1", status=after)),
    ]])
    assert con.execute("SELECT invoice_id, status, state_event_id FROM stripe_invoices").fetchall() == [
        ("in_1", after, "evt_1")]


def test_a_version_with_an_unknown_status_loses_its_second_to_a_known_one(con, tmp_path: Path):  # noqa: F811
    """A status the rank does not know (here one no Stripe object has) ranks below every known one, so
    in one second it cannot displace `open` even with the higher event id."""
    t = START + 500
    land(con, tmp_path, [[
        event("evt_1", "invoice.finalized", t, invoice("in_1", status="open")),
        event("evt_9", "invoice.updated", t, invoice("in_1", status="not_a_status")),
    ]])
    assert con.execute("SELECT status, state_event_id FROM stripe_invoices").fetchall() == [("open", "evt_1")]


def test_a_subscription_tie_on_second_and_status_goes_to_the_higher_event_id(con, tmp_path: Path):  # noqa: F811
    """Rule 5: two `active` versions in one second (a metadata edit, then a quantity edit) are ordered
    by event id: evt_b (higher) is the state, with its customer_id."""
    t = START + 500
    land(con, tmp_path, [[
        event("evt_b", "customer.subscription.updated", t, subscription("sub_1", customer_id="beta")),
        event("evt_a", "customer.subscription.updated", t, subscription("sub_1", customer_id="alpha")),
    ]])
    assert con.execute("SELECT customer_id, state_event_id FROM stripe_subscriptions").fetchall() == [("beta", "evt_b")]


def test_a_refetched_subscription_beats_a_status_further_on_in_its_second(con, tmp_path: Path):  # noqa: F811
    """Subscriptions put rule 2 before rule 3 (their status moves both ways): past_due -> active in one
    second, the re-fetch says active though rule 3 alone would keep past_due."""
    t = START + 500
    land(con, tmp_path, [[
        event("evt_1", "customer.subscription.updated", t, subscription("sub_1", status="active")),
        event("evt_2", "customer.subscription.updated", t, subscription("sub_1", status="past_due")),
    ]])
    assert con.execute("SELECT status FROM stripe_subscriptions").fetchall() == [("past_due",)]
    refetched = subscription("sub_1", status="active")
    _store_snapshots(con, [{"object_id": "sub_1", "object_type": "subscription", "raw": json.dumps(refetched)}],
                     datetime(2026, 10, 1, tzinfo=UTC))
    rebuild_state(con)
    assert con.execute("SELECT status, state_event_created, state_event_id, state_events FROM stripe_subscriptions"
                       ).fetchall() == [("active", ts(t), "snapshot:sub_1", 3)]


# -- rule 4 and the version count -----------------------------------------------------------------

def test_a_version_without_an_attempt_count_does_not_beat_a_counted_attempt(con, tmp_path: Path):  # noqa: F811
    """Two `open` versions of one second, one with attempt_count 1 (evt_1) and one without the field
    (evt_9, higher id). An unknown count is no evidence of a later attempt: attempt 1 is the state."""
    t = START + 100
    uncounted = invoice("in_1")
    del uncounted["attempt_count"]
    land(con, tmp_path, [[
        event("evt_1", "invoice.payment_failed", t, invoice("in_1", attempt_count=1)),
        event("evt_9", "invoice.updated", t, uncounted),
    ]])
    assert con.execute("SELECT attempt_count, state_event_id FROM stripe_invoices").fetchall() == [(1, "evt_1")]


def test_each_invoice_counts_only_its_own_versions(con, tmp_path: Path):  # noqa: F811
    """in_1 has 2 versions (created, finalized), in_2 has 1: state_events 2 and 1, not 3 each."""
    land(con, tmp_path, [[
        event("evt_1", "invoice.created", START, invoice("in_1", status="draft")),
        event("evt_2", "invoice.finalized", START + 60, invoice("in_1")),
        event("evt_3", "invoice.created", START + 60, invoice("in_2", status="draft")),
    ]])
    assert con.execute("SELECT invoice_id, state_events FROM stripe_invoices ORDER BY 1").fetchall() == [
        ("in_1", 2), ("in_2", 1)]


# -- columns --------------------------------------------------------------------------------------

def test_an_invoices_amount_columns_and_status_times_are_each_their_own_field(con, tmp_path: Path):  # noqa: F811
    """A taxed, discounted invoice: subtotal 1000, a 100 discount -> total_excluding_tax 900, 10% tax
    -> total 990. Finalized at START+10, marked uncollectible at START+20 (its latest version): every
    column is the field of the same name (voided_at and paid_at still null)."""
    inv = invoice("in_1", status="uncollectible", amount_due=990)
    inv.update(subtotal=1000, total_excluding_tax=900, total=990)
    inv["status_transitions"] = {"finalized_at": START + 10, "paid_at": None,
                                 "marked_uncollectible_at": START + 20, "voided_at": None}
    land(con, tmp_path, [[event("evt_1", "invoice.marked_uncollectible", START + 20, inv)]])
    assert con.execute(
        "SELECT subtotal, total_excluding_tax, total, amount_due, amount_paid, amount_remaining,"
        " finalized_at, marked_uncollectible_at, voided_at, paid_at FROM stripe_invoices").fetchall() == [
        (1000, 900, 990, 990, 0, 990, ts(START + 10), ts(START + 20), None, None)]


def test_expanded_customer_and_test_clock_give_their_ids(con, tmp_path: Path):  # noqa: F811
    """`customer` and `test_clock` may arrive expanded (objects): the columns hold their ids."""
    inv = invoice("in_1")
    inv["customer"] = {"id": "cus_X", "object": "customer", "email": "x@x.test"}
    sub = subscription("sub_1")
    sub["customer"] = {"id": "cus_X", "object": "customer"}
    sub["test_clock"] = {"id": "clock_1", "object": "test_helpers.test_clock", "frozen_time": START}
    land(con, tmp_path, [[event("evt_1", "invoice.finalized", START, inv),
                          event("evt_2", "customer.subscription.created", START, sub)]])
    assert con.execute("SELECT customer FROM stripe_invoices").fetchall() == [("cus_X",)]
    assert con.execute("SELECT customer, test_clock FROM stripe_subscriptions").fetchall() == [("cus_X", "clock_1")]


def test_a_subscriptions_period_is_its_items_not_a_stale_top_level_one(con, tmp_path: Path):  # noqa: F811
    """Since basil the period lives on the items. A payload that still carries a top-level period
    (here [START-30d, START)) takes the items' [START, START+30d) (1_792_592_000 = START + 2_592_000)."""
    sub = subscription("sub_1")
    sub["current_period_start"] = START - 2_592_000
    sub["current_period_end"] = START
    land(con, tmp_path, [[event("evt_1", "customer.subscription.created", START, sub)]])
    assert con.execute("SELECT current_period_start, current_period_end FROM stripe_subscriptions").fetchall() == [
        (ts(START), ts(START + 2_592_000))]


def test_a_lines_meter_is_our_meter_through_the_catalog(con, tmp_path: Path):  # noqa: F811
    """The catalog (stripe_objects) maps our meter api_calls to Stripe's mtr_1; a line whose expanded
    price is recurring on mtr_1 is api_calls, event metering_api_calls."""
    con.execute("INSERT INTO stripe_objects (kind, our_key, stripe_id, synced_at) VALUES"
                " ('meter', 'api_calls', 'mtr_1', now())")
    ln = line("il_1", price="price_api", quantity_decimal="3", amount=30, start=START, end=START + 10)
    ln["pricing"]["price_details"]["price"] = {"id": "price_api", "object": "price", "recurring": {"meter": "mtr_1"}}
    land(con, tmp_path, [[event("evt_1", "invoice.finalized", START, invoice("in_1", lines=[ln]))]])
    assert con.execute("SELECT line_id, price_id, stripe_meter_id, meter, event_name FROM stripe_invoice_lines"
                       ).fetchall() == [("il_1", "price_api", "mtr_1", "api_calls", "metering_api_calls")]


def test_a_rebuild_replaces_only_the_webhook_sourced_lines(con, tmp_path: Path):  # noqa: F811
    """`rebuild_invoices` rebuilds "the webhook-sourced rows of stripe_invoice_lines": a row of
    another source (here 'api') is left as it was, and the webhook row is rebuilt from the event."""
    con.execute("INSERT INTO stripe_invoice_lines (invoice_id, line_id, amount, source)"
                " VALUES ('in_api', 'il_api', 7, 'api')")
    ln = line("il_1", price="price_api", quantity_decimal="3", amount=30, start=START, end=START + 10)
    land(con, tmp_path, [[event("evt_1", "invoice.finalized", START, invoice("in_1", lines=[ln]))]])
    assert con.execute("SELECT invoice_id, line_id, amount, source FROM stripe_invoice_lines ORDER BY 1").fetchall() == [
        ("in_1", "il_1", 30, "webhook"), ("in_api", "il_api", 7, "api")]


# -- payment attempts -----------------------------------------------------------------------------

def test_of_two_failures_of_one_attempt_the_later_one_is_kept(con, tmp_path: Path):  # noqa: F811
    """Same attempt, same outcome: the later event (evt_a at t+5, the lower id) is the attempt, with its
    next_payment_attempt (t+5+86_400)."""
    t = START + 3600
    land(con, tmp_path, [[
        event("evt_b", "invoice.payment_failed", t, invoice("in_1", attempt_count=1, next_payment_attempt=t + 86_400)),
        event("evt_a", "invoice.payment_failed", t + 5,
              invoice("in_1", attempt_count=1, next_payment_attempt=t + 5 + 86_400)),
    ]])
    assert con.execute("SELECT attempt_count, event_id, next_payment_attempt FROM stripe_payment_attempts"
                       ).fetchall() == [(1, "evt_a", ts(t + 5 + 86_400))]


def test_a_payment_event_without_an_attempt_count_is_attempt_zero(con, tmp_path: Path):  # noqa: F811
    """An invoice paid out of band (no attempt made) may carry no attempt_count: it is attempt 0."""
    paid = invoice("in_1", status="paid", amount_paid=1000)
    del paid["attempt_count"]
    land(con, tmp_path, [[event("evt_1", "invoice.paid", START, paid)]])
    assert con.execute("SELECT invoice_id, attempt_count, outcome FROM stripe_payment_attempts").fetchall() == [
        ("in_1", 0, "succeeded")]
