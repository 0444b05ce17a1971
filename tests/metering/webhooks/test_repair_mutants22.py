"""Tests that kill mutants the repair suite let through (hand mutation audit 22c).

Expected values come from the rules in `metering.webhooks.repair`'s docstrings and Stripe's event list
(30 days of events, `created[gte]` narrows it); each is worked out by hand in a comment.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from metering.webhooks.events import land_directory
from metering.webhooks.inbox import LandingWriter
from metering.webhooks.repair import ambiguous_objects, repair_events
from metering.webhooks.state import rebuild_state
from test_webhook_state import START, con, land  # noqa: F401  (con is a fixture)
from webhook_payloads import body_of, event, invoice, subscription

UTC = timezone.utc
T0 = datetime(2026, 10, 1, tzinfo=UTC)


def _land_at(con, folder: Path, received: datetime, payloads: list[dict]) -> None:  # noqa: F811
    """Land `payloads` as the receiver would have written them at `received`, then rebuild the state."""
    writer = LandingWriter(folder, clock=lambda: received)
    for payload in payloads:
        writer.append(body_of(payload), {})
    writer.close()
    land_directory(con, folder)
    rebuild_state(con)


def test_an_open_invoice_with_attempts_one_and_two_in_one_second_is_not_ambiguous(con, tmp_path: Path):  # noqa: F811
    """Both versions are `open`; the attempt count only moves forward, so attempt 2 is the newer one
    and the state orders them without Stripe: nothing to re-fetch. Only two different versions with
    the same status AND attempt count would be."""
    t = START + 100
    land(con, tmp_path, [[
        event("evt_1", "invoice.payment_failed", t, invoice("in_1", status="open", attempt_count=1)),
        event("evt_2", "invoice.payment_failed", t, invoice("in_1", status="open", attempt_count=2)),
    ]])
    assert ambiguous_objects(con) == []


def test_a_tie_in_an_objects_own_newest_second_is_ambiguous_though_another_object_is_newer(
    con, tmp_path: Path  # noqa: F811
):
    """sub_1's newest second (t) holds past_due and active: ambiguous. sub_2 changes 10 s later, which
    says nothing about sub_1's order: each object's newest second is its own."""
    t = START + 100
    land(con, tmp_path, [[
        event("evt_1", "customer.subscription.updated", t, subscription("sub_1", status="past_due")),
        event("evt_2", "customer.subscription.updated", t, subscription("sub_1", status="active")),
        event("evt_3", "customer.subscription.updated", t + 10, subscription("sub_2", status="active")),
    ]])
    assert ambiguous_objects(con) == [("subscription", "sub_1")]


def test_a_repair_listing_from_created_gte_after_the_previous_repair_rereads_across_the_gap(
    con, tmp_path: Path, stripe_sandbox  # noqa: F811
):
    """An open invoice landed at T0; the first repair, at T0 + 1 h, is within reach. The second, at
    T0 + 3 days, lists only from `created_gte` = T0 + 2 days: events between T0 + 1 h and T0 + 2 days
    are never listed, so that is a gap and the open invoice is re-read (1 object: the sandbox does not
    know it, but it is counted as asked). The run records the narrower listing: from T0 + 2 days,
    not from T0 + 3 days - 30 days + 1 h."""
    _land_at(con, tmp_path / "landing", T0, [event("evt_1", "invoice.updated", START, invoice("in_open"))])
    client = stripe_sandbox.client()
    assert repair_events(con, client, now=T0 + timedelta(hours=1)).gap_refetched == 0
    gte = T0 + timedelta(days=2)
    second = repair_events(con, client, now=T0 + timedelta(days=3), created_gte=int(gte.timestamp()))
    assert second.gap_refetched == 1
    assert con.execute("SELECT list(listed_from ORDER BY repaired_at) FROM stripe_repair_runs").fetchone()[0] == [
        T0 + timedelta(hours=1) - timedelta(days=30) + timedelta(hours=1), gte]


def test_an_invoice_without_a_status_is_reread_across_a_gap(con, tmp_path: Path, stripe_sandbox):  # noqa: F811
    """Stripe's invoice `status` may be null. Unknown is not final (only paid and void are): a repair
    beyond the list's reach re-reads it with the open one: 2 objects; the paid one is not re-read."""
    _land_at(con, tmp_path / "landing", T0, [
        event("evt_1", "invoice.updated", START, invoice("in_open")),
        event("evt_2", "invoice.updated", START + 1, invoice("in_null", status=None)),
        event("evt_3", "invoice.updated", START + 2, invoice("in_paid", status="paid")),
    ])
    assert con.execute("SELECT status FROM stripe_invoices WHERE invoice_id = 'in_null'").fetchall() == [(None,)]
    client = stripe_sandbox.client()
    # first landing at T0; 31 days later the listing reaches back only to T0 + 1 day + 1 h: a gap
    stats = repair_events(con, client, now=T0 + timedelta(days=31))
    assert stats.gap_refetched == 2


def test_a_repair_whose_listing_reaches_back_exactly_to_the_previous_repair_has_no_gap(
    con, tmp_path: Path, stripe_sandbox  # noqa: F811
):
    """The previous repair ran at T0. The next, at T0 + 30 days - 1 h, lists from now - 30 days + 1 h
    = T0 exactly: everything since the previous listing is within reach, so nothing is re-read."""
    _land_at(con, tmp_path / "landing", T0, [event("evt_1", "invoice.updated", START, invoice("in_open"))])
    client = stripe_sandbox.client()
    assert repair_events(con, client, now=T0).gap_refetched == 0
    assert repair_events(con, client, now=T0 + timedelta(days=30) - timedelta(hours=1)).gap_refetched == 0


def test_a_deleted_draft_with_two_versions_in_its_last_second_is_not_refetched(con, tmp_path: Path):  # noqa: F811
    """Two drafts of in_1 in one second (amounts 1000 and 700) cannot be ordered, but the invoice was
    deleted afterwards: Stripe has nothing to return, so it is not asked for (every repair would ask again)."""
    t = START + 100
    land(con, tmp_path, [[
        event("evt_1", "invoice.created", t, invoice("in_1", status="draft")),
        event("evt_2", "invoice.updated", t, invoice("in_1", status="draft", amount_due=700)),
        event("evt_3", "invoice.deleted", t + 5, invoice("in_1", status="draft", amount_due=700)),
    ]])
    assert ambiguous_objects(con) == []
