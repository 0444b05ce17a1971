"""Tests that kill mutants the webhook suite let through (hand mutation audit 20b).

Each test names the behaviour it pins down, from Stripe's webhook docs (reference/stripe-facts.md)
or from docs/webhooks.md; expected values are derived by hand from those rules.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from metering.webhooks.events import land_directory, land_records
from metering.webhooks.inbox import LandingWriter
from metering.webhooks.landing import landing_files, read_new_records
from metering.webhooks.repair import ambiguous_objects, repair_events
from metering.webhooks.signature import Rejected, verify
from metering.webhooks.state import rebuild_state
from test_webhook_state import START, con, land  # noqa: F401  (con is a fixture)
from webhook_payloads import OLD_SECRET, SECRET, body_of, dunning_lifecycle, event, invoice, signature, subscription

UTC = timezone.utc
NOW = 1_790_000_000


def _v1(body: str, secret: str) -> str:
    return signature(body, secret=secret, timestamp=NOW).split("v1=")[1]


# -- signature ------------------------------------------------------------------------------------

def test_any_v1_may_match_not_only_the_first():
    """Rotation: Stripe sends one v1 per secret, in no promised order; the endpoint that only knows the
    new secret must accept when its v1 is the second one."""
    body = body_of(event("evt_rot", "invoice.finalized", NOW, invoice("in_1")))
    header = f"t={NOW},v1={_v1(body, OLD_SECRET)},v1={_v1(body, SECRET)}"
    parsed = verify(body.encode(), header, [SECRET.encode()], now=NOW, tolerance=300)
    assert (parsed.timestamp, parsed.v1) == (NOW, (_v1(body, OLD_SECRET), _v1(body, SECRET)))


def test_a_header_with_two_timestamps_is_malformed_even_when_the_first_verifies():
    body = body_of(event("evt_tt", "invoice.finalized", NOW, invoice("in_1")))
    header = f"t={NOW},t={NOW + 1},v1={_v1(body, SECRET)}"
    with pytest.raises(Rejected) as err:
        verify(body.encode(), header, [SECRET.encode()], now=NOW, tolerance=300)
    assert (err.value.status, err.value.reason) == (400, "malformed_signature_header")


def test_an_upper_case_v1_is_not_well_formed():
    """docs/webhooks.md: a well-formed v1 is 64 lower-case hex digits; others are skipped."""
    body = body_of(event("evt_uc", "invoice.finalized", NOW, invoice("in_1")))
    header = f"t={NOW},v1={_v1(body, SECRET).upper()}"
    with pytest.raises(Rejected) as err:
        verify(body.encode(), header, [SECRET.encode()], now=NOW, tolerance=300)
    assert (err.value.status, err.value.reason) == (400, "no_v1_signature")


# -- inbox: durability ----------------------------------------------------------------------------

def test_a_new_file_and_its_directory_are_synced_and_each_record_after_it_is_written(tmp_path: Path, monkeypatch):
    """I11: the record is fsync'd once written whole, and the directory when a file is created."""
    from metering.webhooks import inbox

    landing = tmp_path / "landing"
    landing.mkdir()  # an existing folder: only the new file's name needs syncing into it
    real_fsync = os.fsync
    calls: list[tuple[str, int]] = []

    def recording(fd: int) -> None:
        st = os.fstat(fd)
        calls.append(("dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_size))
        real_fsync(fd)

    monkeypatch.setattr(inbox.os, "fsync", recording)
    writer = LandingWriter(landing, clock=lambda: datetime(2026, 10, 1, 0, 0, 1, tzinfo=UTC))
    body = body_of(event("evt_1", "invoice.created", 1, invoice("in_1")))
    writer.append(body, {})
    size = writer.current_path.stat().st_size
    writer.append(body, {})
    writer.close()
    # created (empty) file, its directory, then each record once it is whole; no directory sync for the
    # second record, which goes to the same hour's file
    assert [c[0] for c in calls] == ["file", "dir", "file", "file"]
    assert (calls[0][1], calls[2][1], calls[3][1]) == (0, size, 2 * size)


def test_a_record_cut_short_by_a_full_disk_and_cut_back_leaves_no_gap_before_the_next(tmp_path: Path, con):  # noqa: F811
    """A delivery fails part-way (the file may not grow), the writer cuts the file back to its last whole
    record and keeps using it; once there is room, the next record must follow that record directly
    (O_APPEND), not land after a hole of NUL bytes where the cut-off part was."""
    landing = tmp_path / "landing"
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from webhook_payloads import body_of, event, invoice
from metering.webhooks.inbox import LandingWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
writer = LandingWriter({str(landing)!r})
writer.append(body_of(event("evt_0", "invoice.created", 1, invoice("in_0"))), {{}})
size = writer.current_path.stat().st_size
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (size + size // 2, hard))
try:
    writer.append(body_of(event("evt_1", "invoice.created", 2, invoice("in_1"))), {{}})
    print("appended")
except OSError:
    print("failed")
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
writer.append(body_of(event("evt_2", "invoice.created", 3, invoice("in_2"))), {{}})
writer.close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["failed"]
    [path] = landing_files(landing)
    assert b"\x00" not in path.read_bytes()
    stats = land_directory(con, landing)
    assert (stats.records_read, stats.events_added, stats.bad_records, stats.torn_files) == (2, 2, 0, 0)
    assert con.execute("SELECT list(event_id ORDER BY event_id) FROM stripe_webhook_events").fetchone()[0] == [
        "evt_0", "evt_2"]


# -- landing and events ---------------------------------------------------------------------------

def test_the_stored_offset_is_the_file_size_after_every_pass(tmp_path: Path, con):  # noqa: F811
    """The offset is absolute: after a pass that started mid-file it must still equal the bytes read in
    total, or the third pass starts inside a record."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    for n in range(3):
        writer.append(body_of(event(f"evt_{n}", "invoice.created", n + 1, invoice(f"in_{n}"))), {})
        stats = land_directory(con, landing)
        assert (stats.records_read, stats.events_added, stats.bad_records) == (1, 1, 0)
        assert con.execute("SELECT offset_bytes, lines FROM stripe_landing_offsets").fetchall() == [
            (writer.current_path.stat().st_size, n + 1)]
    writer.close()


def test_relanding_a_file_from_its_start_counts_nothing_twice(tmp_path: Path, con):  # noqa: F811
    """docs: receipt_key is <file>:<line>, so re-landing a file counts nothing twice."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    for n in (1, 2):
        writer.append(body_of(event(f"evt_{n}", "invoice.created", n, invoice(f"in_{n}"))), {})
    writer.close()
    assert land_directory(con, landing).receipts_added == 2
    again = read_new_records(landing, {})  # the whole file, as if no offset were stored
    assert land_records(con, again.records, again.positions) == (0, 0, 0)
    assert con.execute("SELECT count(*) FROM stripe_webhook_receipts").fetchone()[0] == 2
    assert con.execute("SELECT list(receipt_count) FROM stripe_webhook_events").fetchone()[0] == [1, 1]


def test_two_receipts_at_the_same_instant_count_twice(tmp_path: Path, con):  # noqa: F811
    landing = tmp_path / "landing"
    writer = LandingWriter(landing, clock=lambda: datetime(2026, 10, 1, 0, 0, 1, tzinfo=UTC))
    body = body_of(event("evt_1", "invoice.created", 1, invoice("in_1")))
    writer.append(body, {})
    writer.append(body, {})
    writer.close()
    land_directory(con, landing)
    assert con.execute("SELECT event_id, receipt_count FROM stripe_webhook_events").fetchall() == [("evt_1", 2)]


# -- state: status precedence and event types -----------------------------------------------------

@pytest.mark.parametrize(("final_type", "final_status"), [("invoice.paid", "paid"), ("invoice.voided", "void")])
def test_an_uncollectible_invoice_paid_or_voided_in_the_same_second_takes_the_later_status(
    con, tmp_path: Path, final_type: str, final_status: str  # noqa: F811
):
    """Invoices: draft < open < uncollectible < void < paid. An uncollectible invoice can still be paid
    or voided; in one second the version further on wins, whatever the delivery order."""
    t = START + 500
    land(con, tmp_path, [[
        event("evt_z", final_type, t, invoice("in_U", status=final_status)),
        event("evt_a", "invoice.marked_uncollectible", t, invoice("in_U", status="uncollectible")),
    ]])
    assert con.execute("SELECT invoice_id, status, state_event_id FROM stripe_invoices").fetchall() == [
        ("in_U", final_status, "evt_z")]


def test_a_subscription_active_and_past_due_in_one_second_is_past_due(con, tmp_path: Path):  # noqa: F811
    """Subscriptions: ... active < past_due ...: renewal (active) then the failed payment (past_due),
    stamped in one second; the higher event id is the active one, so only the status decides."""
    t = START + 500
    land(con, tmp_path, [[
        event("evt_9", "customer.subscription.updated", t, subscription("sub_1", status="active")),
        event("evt_1", "customer.subscription.updated", t, subscription("sub_1", status="past_due")),
    ]])
    assert con.execute("SELECT subscription_id, status, state_event_id FROM stripe_subscriptions").fetchall() == [
        ("sub_1", "past_due", "evt_1")]


def test_a_deleted_subscription_is_canceled(con, tmp_path: Path):  # noqa: F811
    land(con, tmp_path, [[
        event("evt_d", "customer.subscription.deleted", START + 60, subscription("sub_1", status="canceled")),
        event("evt_c", "customer.subscription.created", START, subscription("sub_1", status="active")),
    ]])
    assert con.execute("SELECT subscription_id, status, state_event_id, state_events FROM stripe_subscriptions"
                       ).fetchall() == [("sub_1", "canceled", "evt_d", 2)]


def test_an_attempt_that_required_action_stays_so_when_a_later_failure_shares_it(con, tmp_path: Path):  # noqa: F811
    """docs: events sharing an attempt rank succeeded > action_required > failed, not by time."""
    t = START + 3600
    land(con, tmp_path, [[
        event("evt_ar", "invoice.payment_action_required", t, invoice("in_A", attempt_count=1)),
        event("evt_pf", "invoice.payment_failed", t + 10, invoice("in_A", attempt_count=1)),
    ]])
    assert con.execute("SELECT invoice_id, attempt_count, outcome, event_id, event_type FROM stripe_payment_attempts"
                       ).fetchall() == [("in_A", 1, "action_required", "evt_ar", "invoice.payment_action_required")]


# -- repair ---------------------------------------------------------------------------------------

def test_identical_versions_in_the_newest_second_are_not_ambiguous(con, tmp_path: Path):  # noqa: F811
    """invoice.payment_succeeded and invoice.paid carry the same object in the same second: one version,
    nothing to re-fetch (only two *different* versions are)."""
    land(con, tmp_path, [dunning_lifecycle()])
    assert ambiguous_objects(con) == []


def test_a_gap_is_taken_against_the_reach_less_an_hour_and_rereads_uncollectible_invoices(
    con, tmp_path: Path, stripe_sandbox  # noqa: F811
):
    """Reach = 30 days less an hour. A repair 30 days less 61 minutes after the first landed webhook is
    within reach; the next one, 30 days less 30 minutes after it, is not, and re-reads every invoice not
    paid or void: the open one and the uncollectible one (which can still be paid)."""
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    landing = tmp_path / "landing"
    writer = LandingWriter(landing, clock=lambda: t0)
    for n, status in enumerate(("open", "uncollectible", "paid", "void")):
        writer.append(body_of(event(f"evt_{n}", "invoice.updated", START + n, invoice(f"in_{status}", status=status))), {})
    writer.close()
    land_directory(con, landing)
    rebuild_state(con)
    client = stripe_sandbox.client()
    first_at = t0 + timedelta(days=30) - timedelta(minutes=61)
    assert repair_events(con, client, now=first_at).gap_refetched == 0
    second = repair_events(con, client, now=first_at + timedelta(days=30) - timedelta(minutes=30))
    assert second.gap_refetched == 2   # in_open, in_uncollectible (the sandbox knows neither: none stored)
    assert con.execute("SELECT list(gap_refetched ORDER BY repaired_at) FROM stripe_repair_runs").fetchone()[0] == [0, 2]
