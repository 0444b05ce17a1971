"""Reconciled state: the newest version of each object, whatever the delivery order (I12)."""

from __future__ import annotations

import itertools
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering import warehouse
from metering.webhooks.events import land_directory
from metering.webhooks.inbox import LandingWriter
from metering.webhooks.state import rebuild_state
from webhook_payloads import body_of, dunning_lifecycle, event, invoice, line, subscription

START = 1_790_000_000
UTC = timezone.utc
STATE_TABLES = {
    "stripe_invoices": "invoice_id",
    "stripe_invoice_lines": "invoice_id, line_id",
    "stripe_subscriptions": "subscription_id",
    "stripe_payment_attempts": "invoice_id, attempt_count",
}
_counter = itertools.count()


def land(con, root: Path, batches: list[list[dict]]) -> None:
    """Deliver events in batches (one receiver process per batch), landing after each batch."""
    landing = root / f"landing-{next(_counter)}"
    for batch in batches:
        writer = LandingWriter(landing)
        for payload in batch:
            writer.append(body_of(payload), {})
        writer.close()
        land_directory(con, landing)
        rebuild_state(con)


def snapshot(con) -> dict[str, list[tuple]]:
    return {t: con.execute(f"SELECT * FROM {t} ORDER BY {key}").fetchall() for t, key in STATE_TABLES.items()}


@pytest.fixture
def con(tmp_path: Path):
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        yield con


def test_lifecycle_in_order_gives_the_paid_invoice(con, tmp_path: Path):
    land(con, tmp_path, [dunning_lifecycle()])
    row = con.execute(
        "SELECT invoice_id, customer, customer_id, subscription_id, status, currency, amount_due, amount_paid,"
        " amount_remaining, attempt_count, next_payment_attempt, finalized_at, paid_at, state_event_id, state_events,"
        " lines_complete FROM stripe_invoices"
    ).fetchall()
    assert row == [(
        "in_A", "cus_A", "acme", "sub_A", "paid", "usd", 1235, 1235, 0, 3, None,
        datetime.fromtimestamp(START + 3600, UTC), datetime.fromtimestamp(START + 3600 + 3 * 86_400, UTC),
        "evt_008",  # invoice.paid and invoice.payment_succeeded tie on created and status: higher id
        6, True,
    )]
    lines = con.execute(
        "SELECT invoice_id, line_id, price_id, quantity_decimal, amount, currency, period_start, period_end, source"
        " FROM stripe_invoice_lines"
    ).fetchall()
    assert lines == [("in_A", "il_1", "price_api", Decimal("1234.5"), 1235, "usd",
                      datetime.fromtimestamp(START, UTC), datetime.fromtimestamp(START + 2_592_000, UTC), "webhook")]
    subs = con.execute(
        "SELECT subscription_id, customer_id, status, current_period_start, items, state_event_id FROM stripe_subscriptions"
    ).fetchall()
    assert subs == [("sub_A", "acme", "active", datetime.fromtimestamp(START, UTC),
                     '[{"id":"si_1","price":"price_api"}]', "evt_009")]
    attempts = con.execute(
        "SELECT invoice_id, attempt_count, outcome, event_id, next_payment_attempt FROM stripe_payment_attempts"
        " ORDER BY attempt_count"
    ).fetchall()
    assert attempts == [
        ("in_A", 1, "failed", "evt_004", datetime.fromtimestamp(START + 3600 + 86_400, UTC)),
        ("in_A", 2, "failed", "evt_006", datetime.fromtimestamp(START + 3600 + 3 * 86_400, UTC)),
        ("in_A", 3, "succeeded", "evt_008", None),
    ]


def test_ties_in_the_same_second_resolve_by_status_then_attempt(con, tmp_path: Path):
    # finalized (open, attempt 0) and payment_failed (open, attempt 1) share a second: the failure is newer
    events = dunning_lifecycle()[:4]
    land(con, tmp_path, [list(reversed(events))])
    assert con.execute("SELECT status, attempt_count, state_event_id FROM stripe_invoices").fetchall() == [
        ("open", 1, "evt_004")]


def test_the_state_keeps_whether_stripe_will_finalize_a_draft(con, tmp_path: Path):
    """auto_advance false (an unpaid subscription's invoices stay drafts): reconciliation treats such a
    draft as billing nothing (migration 056)."""
    land(con, tmp_path, [[event("evt_h1", "invoice.created", START, invoice("in_H", status="draft", auto_advance=False)),
                          event("evt_a1", "invoice.created", START, invoice("in_A", status="draft"))]])
    assert con.execute("SELECT invoice_id, auto_advance FROM stripe_invoices ORDER BY 1").fetchall() == [
        ("in_A", True), ("in_H", False)]


def test_the_state_tables_are_rebuilt_together_or_not_at_all(con, tmp_path: Path):
    """Three transactions: a failure (a kill) after the invoices left them rebuilt from newer landings
    than the subscriptions and payment attempts (audit). One transaction now."""
    import duckdb

    land(con, tmp_path, [dunning_lifecycle()[:4]])
    before = con.execute("SELECT * FROM stripe_invoices ORDER BY ALL").fetchall()
    land_more = tmp_path / "more"
    writer = LandingWriter(land_more)
    for payload in dunning_lifecycle()[4:]:
        writer.append(body_of(payload), {})
    writer.close()
    land_directory(con, land_more)
    con.execute("ALTER TABLE stripe_payment_attempts RENAME TO attempts_aside")   # the last rebuild fails
    with pytest.raises(duckdb.Error):
        rebuild_state(con)
    assert con.execute("SELECT * FROM stripe_invoices ORDER BY ALL").fetchall() == before


def test_a_deleted_draft_leaves_the_state(con, tmp_path: Path):
    draft = invoice("in_D", status="draft")
    land(con, tmp_path, [[event("evt_d2", "invoice.deleted", START + 5, draft), event("evt_d1", "invoice.created", START, draft)]])
    assert con.execute("SELECT count(*) FROM stripe_invoices").fetchone()[0] == 0


def test_a_deleted_event_without_an_object_id_removes_nothing(con, tmp_path: Path):
    """A NULL among the deleted ids made `NOT IN` NULL for every invoice: the table came out empty."""
    odd = invoice("in_X", status="draft")
    del odd["id"]
    land(con, tmp_path, [dunning_lifecycle("in_A"), [event("evt_del", "invoice.deleted", START + 9, odd)]])
    assert con.execute("SELECT invoice_id FROM stripe_invoices").fetchall() == [("in_A",)]


def test_an_upcoming_invoice_is_no_invoice(con, tmp_path: Path):
    """`invoice.upcoming` carries a preview of the next invoice, which Stripe has not created: with the
    preview API's `upcoming_...` id it became a draft in stripe_invoices that never goes away."""
    preview = invoice("upcoming_in_P", status="draft", amount_due=4200)
    land(con, tmp_path, [dunning_lifecycle("in_A"), [event("evt_up", "invoice.upcoming", START + 9, preview)]])
    assert con.execute("SELECT invoice_id FROM stripe_invoices").fetchall() == [("in_A",)]


def test_a_time_out_of_range_inside_an_object_is_null_not_a_failed_rebuild(con, tmp_path: Path):
    """The event's own `created` is held to [0, end of 9999] at the door, the times nested in its object
    were not: one `next_payment_attempt` of 10^15 s failed every later state rebuild ("Epoch seconds
    out of range"), so no invoice's state moved again. Read as any field that does not fit its type:
    NULL, the other fields and invoices as sent. Year 9999's last second still fits."""
    odd = invoice("in_B", next_payment_attempt=10**15, created=-1)
    odd["period_end"] = 253_402_300_799
    odd["lines"]["data"] = [line("il_B", price="price_api", quantity_decimal="2", amount=20, start=1_790_000_000,
                                 end=253_402_300_800)]
    land(con, tmp_path, [dunning_lifecycle("in_A"), [event("evt_odd", "invoice.finalized", START + 9, odd)]])
    assert con.execute("SELECT invoice_id, status, amount_due, next_payment_attempt, created, period_end "
                       "FROM stripe_invoices ORDER BY 1").fetchall() == [
        ("in_A", "paid", 1235, None, datetime.fromtimestamp(START, UTC), datetime.fromtimestamp(1_792_592_000, UTC)),
        ("in_B", "open", 1000, None, None, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC))]
    assert con.execute("SELECT line_id, amount, period_start, period_end FROM stripe_invoice_lines "
                       "WHERE invoice_id = 'in_B'").fetchall() == [
        ("il_B", 20, datetime.fromtimestamp(1_790_000_000, UTC), None)]


def test_expanded_subscription_and_zero_decimal_currency(con, tmp_path: Path):
    inv = invoice("in_J", currency="jpy", amount_due=1500, subscription=None, customer_id=None)
    inv["parent"] = {"type": "subscription_details",
                     "subscription_details": {"subscription": {"id": "sub_J", "object": "subscription"},
                                              "metadata": {"customer_id": "tanaka"}}}
    land(con, tmp_path, [[event("evt_j", "invoice.finalized", START, inv)]])
    assert con.execute("SELECT subscription_id, customer_id, currency, amount_due FROM stripe_invoices").fetchall() == [
        ("sub_J", "tanaka", "jpy", 1500)]


def test_rebuilding_twice_is_the_same(con, tmp_path: Path):
    land(con, tmp_path, [dunning_lifecycle()])
    first = snapshot(con)
    rebuild_state(con)
    assert snapshot(con) == first


def _all_events() -> list[dict]:
    events = dunning_lifecycle("in_A")
    # a second invoice and subscription whose events interleave with the first in time
    other = [
        event("evt_101", "invoice.created", START + 10, invoice("in_B", status="draft", customer="cus_B", subscription="sub_B")),
        event("evt_102", "invoice.finalized", START + 3600, invoice("in_B", status="open", customer="cus_B", subscription="sub_B")),
        event("evt_103", "invoice.voided", START + 7200, invoice("in_B", status="void", customer="cus_B", subscription="sub_B")),
        event("evt_104", "customer.subscription.deleted", START + 7200, subscription("sub_B", status="canceled", customer="cus_B")),
        event("evt_105", "customer.subscription.created", START - 50, subscription("sub_B", customer="cus_B")),
    ]
    return events + other


@pytest.fixture(scope="module")
def expected_state(tmp_path_factory) -> dict[str, list[tuple]]:
    root = tmp_path_factory.mktemp("golden")
    with warehouse.open_warehouse(root / "w.duckdb") as con:
        land(con, root, [sorted(_all_events(), key=lambda e: (e["created"], e["id"]))])
        return snapshot(con)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_order_with_duplicates_and_any_batching_gives_the_same_state(tmp_path: Path, expected_state, data):
    events = _all_events()
    # a multiset: every event at least once, some several times, then any permutation
    extra = data.draw(st.lists(st.sampled_from(events), max_size=10), label="duplicates")
    delivered = data.draw(st.permutations(events + extra), label="order")
    cuts = sorted(data.draw(st.sets(st.integers(1, len(delivered) - 1), max_size=3), label="batch cuts"))
    batches = [delivered[a:b] for a, b in zip([0, *cuts], [*cuts, len(delivered)])]
    with warehouse.open_warehouse(":memory:") as con:
        land(con, tmp_path, batches)
        assert snapshot(con) == expected_state
        assert con.execute("SELECT sum(receipt_count) FROM stripe_webhook_events").fetchone()[0] == len(delivered)


def test_only_versions_the_state_cannot_order_are_refetched(con, tmp_path: Path):
    """Repair re-fetches an object whose newest second holds versions `state` orders by guess alone.
    An invoice created, finalized and paid within one second is ordered by its status: not re-fetched
    (every subscription's first invoice is). Two open versions with the same attempt count (an
    update in the second it was finalized) are ordered by event id: re-fetched. A subscription's
    status is no order: past_due and active in one second are re-fetched."""
    from metering.webhooks.repair import ambiguous_objects

    t = START + 100
    land(con, tmp_path, [[
        event("evt_1", "invoice.created", t, invoice("in_ordered", status="draft")),
        event("evt_2", "invoice.finalized", t, invoice("in_ordered", status="open")),
        event("evt_3", "invoice.paid", t, invoice("in_ordered", status="paid")),
        event("evt_4", "invoice.finalized", t, invoice("in_tied", status="open")),
        event("evt_5", "invoice.updated", t, invoice("in_tied", status="open", amount_due=700)),
        event("evt_6", "customer.subscription.updated", t, subscription("sub_1", status="past_due")),
        event("evt_7", "customer.subscription.updated", t, subscription("sub_1", status="active")),
        event("evt_8", "customer.subscription.updated", t - 5, subscription("sub_2", status="past_due")),
        event("evt_9", "customer.subscription.updated", t, subscription("sub_2", status="active")),
    ]])
    assert ambiguous_objects(con) == [("invoice", "in_tied"), ("subscription", "sub_1")]
