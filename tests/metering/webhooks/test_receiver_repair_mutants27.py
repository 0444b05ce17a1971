"""Tests that kill mutants the webhook suite let through (hand mutation audit 27d).

Covers the receiver's event-shape gate and signature header, the landing writer's and reader's
file handling, and repair's listing, gap accounting and re-fetch choices. Each test names the rule
it pins down (reference/stripe-facts.md, docs/webhooks.md, or the module's own contract); expected
values are worked out by hand in the docstrings and comments.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from metering import warehouse
from metering.stripe_sandbox.testing import running_sandbox
from metering.webhooks.events import land_directory
from metering.webhooks.inbox import LandingWriter, encode_record
from metering.webhooks.landing import landing_files
from metering.webhooks.receiver import ReceiverSettings, create_app
from metering.webhooks.repair import _store_snapshots, ambiguous_objects, repair_events
from metering.webhooks.state import rebuild_state
from test_webhook_receiver import NOW, landed_bodies, make_client, post, sample_body
from test_webhook_receiver_limits import served_in_thread
from test_webhook_state import START, con, land  # noqa: F401  (con is a fixture)
from webhook_payloads import SECRET, body_of, event, invoice, signature, subscription

UTC = timezone.utc


# -- receiver: signature header -------------------------------------------------------------------

def test_an_empty_signature_header_is_counted_as_missing(tmp_path: Path):
    """An empty `Stripe-Signature` is no header at all: the reject is `missing_signature_header`, the
    reason an operator looks for on /healthz when a proxy strips the header, not `malformed`."""
    landing = tmp_path / "landing"
    client = make_client(landing)
    response = post(client, sample_body(), "")
    assert (response.status_code, response.json()) == (400, {"error": "missing_signature_header"})
    assert client.get("/healthz").json()["rejected"] == {"missing_signature_header": 1}
    assert landed_bodies(landing) == []


# -- receiver: what is acknowledged must land (I11) -----------------------------------------------

@pytest.mark.parametrize(
    "body",
    [
        # an unpaired *low* surrogate (\udc00-\udfff): DuckDB refuses it at landing as it does a high one
        '{"id":"evt_1","type":"x","created":1,"data":{"object":{"a":"\\udc00"}}}',
        '{"id":"evt_1","type":"x","created":1,"data":{"object":{"a":"\\uDFFF"}}}',
    ],
    ids=["low_dc00", "low_DFFF"],
)
def test_a_lone_low_surrogate_escape_is_400_never_acknowledged(tmp_path: Path, body: str):
    landing = tmp_path / "landing"
    response = post(make_client(landing), body, signature(body, timestamp=NOW))
    assert (response.status_code, response.json()) == (400, {"error": "malformed_json"})
    assert landed_bodies(landing) == []


@pytest.mark.parametrize(
    "body",
    [
        # no type: landing sets it aside as body_not_an_event, so a 200 would lose it
        '{"id":"evt_1","created":1,"data":{"object":{"id":"in_1"}}}',
        '{"id":"evt_1","type":7,"created":1,"data":{"object":{"id":"in_1"}}}',
        # data that is not an object: `data.object` cannot be read (it was a 500, not a 400)
        '{"id":"evt_1","type":"x","created":1,"data":[{"object":{}}]}',
        '{"id":"evt_1","type":"x","created":1,"data":"object"}',
    ],
    ids=["no_type", "type_int", "data_list", "data_string"],
)
def test_a_body_without_an_event_shape_is_a_400_not_an_event(tmp_path: Path, body: str):
    landing = tmp_path / "landing"
    client = make_client(landing)
    response = post(client, body, signature(body, timestamp=NOW))
    assert (response.status_code, response.json()) == (400, {"error": "not_an_event"})
    assert client.get("/healthz").json()["rejected"] == {"not_an_event": 1}
    assert landed_bodies(landing) == []


def test_a_body_over_the_limit_in_chunks_each_under_it_is_413(tmp_path: Path):
    """The limit is on the whole body: a chunked body (no Content-Length) whose chunks each stay under
    the limit but add up past it is 413, and nothing lands. Limit = len(body) - 1; the body goes to a
    real server (uvicorn, h11) in chunks of 300 bytes, 0.2 s apart so each arrives on its own: every
    one is far under the limit, their sum one byte over it."""
    body = body_of(event("evt_1", "invoice.finalized", int(time.time()), invoice("in_1"))).encode()
    landing = tmp_path / "landing"
    app = create_app(ReceiverSettings(secrets=[SECRET.encode()], landing_dir=landing, max_body_bytes=len(body) - 1))
    with served_in_thread(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         + f"Stripe-Signature: {signature(body.decode())}\r\n".encode()
                         + b"Transfer-Encoding: chunked\r\n\r\n")
            with contextlib.suppress(ConnectionError):   # the server may answer before the last chunk
                for at in range(0, len(body), 300):
                    piece = body[at:at + 300]
                    sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    time.sleep(0.2)
                sock.sendall(b"0\r\n\r\n")
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 413"), answer
        assert b"body_too_large" in answer
        assert not any(p.stat().st_size for p in landing_files(landing))
        assert app.state.receiver.rejected == {"body_too_large": 1}


# -- inbox ----------------------------------------------------------------------------------------

def test_a_failed_sync_on_reopening_an_hours_file_keeps_the_records_already_in_it(
    tmp_path: Path, con, monkeypatch  # noqa: F811
):
    """The host clock is stepped back across an hour (NTP): the writer reopens the earlier hour's file,
    which holds an acknowledged record, and the sync after opening fails (EIO). Only a file that holds
    no record may be removed then; this one keeps evt_a, and evt_a and evt_b (written in the next hour)
    both land. The failed delivery (evt_c) is a 503 that Stripe retries."""
    from metering.webhooks import inbox

    hours = iter([datetime(2026, 10, 1, 0, 30, tzinfo=UTC), datetime(2026, 10, 1, 1, 0, 5, tzinfo=UTC),
                  datetime(2026, 10, 1, 0, 59, 59, tzinfo=UTC)])
    landing = tmp_path / "landing"
    writer = LandingWriter(landing, clock=lambda: next(hours))
    writer.append(body_of(event("evt_a", "invoice.created", 1, invoice("in_a"))), {})
    first = writer.current_path
    writer.append(body_of(event("evt_b", "invoice.created", 2, invoice("in_b"))), {})
    assert writer.current_path != first   # hour 01: a new file

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(inbox.os, "fsync", broken)
    with pytest.raises(OSError):
        writer.append(body_of(event("evt_c", "invoice.created", 3, invoice("in_c"))), {})
    monkeypatch.undo()
    writer.close()
    assert first.exists()
    land_directory(con, landing)
    assert con.execute("SELECT list(event_id ORDER BY event_id) FROM stripe_webhook_events").fetchone()[0] == [
        "evt_a", "evt_b"]


def test_a_first_record_cut_short_by_a_full_disk_leaves_no_empty_file(tmp_path: Path, con):  # noqa: F811
    """The hour's first delivery fails part-way (files may not grow past 100 bytes, as with a full
    disk; a record is ~900 bytes): the file is cut back to 0 bytes and, holding no record, removed
    (inbox: no empty file per failed delivery). Once there is room the next delivery makes a new
    file: 1 file, 1 record, nothing torn."""
    landing = tmp_path / "landing"
    script = f"""
import os, resource, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from webhook_payloads import body_of, event, invoice
from metering.webhooks.inbox import LandingWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
writer = LandingWriter({str(landing)!r})
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
try:
    writer.append(body_of(event("evt_1", "invoice.created", 1, invoice("in_1"))), {{}})
    print("appended")
except OSError:
    print("failed", sorted(os.listdir({str(landing)!r})))
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
writer.append(body_of(event("evt_2", "invoice.created", 2, invoice("in_2"))), {{}})
writer.close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["failed", "[]"]
    assert len(landing_files(landing)) == 1
    stats = land_directory(con, landing)
    assert (stats.files_read, stats.records_read, stats.torn_files, stats.bad_records) == (1, 1, 0, 0)
    assert con.execute("SELECT list(event_id) FROM stripe_webhook_events").fetchone()[0] == ["evt_2"]


# -- landing --------------------------------------------------------------------------------------

def test_a_jsonl_file_not_named_stripe_dash_is_not_landed(tmp_path: Path, con):  # noqa: F811
    """inbox: landing files are `stripe-<hour>-<host>-<pid>-<nonce>.jsonl`. A `.jsonl` without that
    prefix beside them (an export kept in the folder, here a copy of the receiver's file) is not a
    landing file: landing it would count evt_1's receipt twice. 1 file, 1 record, receipt_count 1."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    writer.append(sample_body("evt_1"), {})
    writer.close()
    (landing / "export.jsonl").write_bytes(writer.current_path.read_bytes())
    stats = land_directory(con, landing)
    assert (stats.files_read, stats.records_read, stats.receipts_added) == (1, 1, 1)
    assert con.execute("SELECT event_id, receipt_count FROM stripe_webhook_events").fetchall() == [("evt_1", 1)]


def test_a_line_of_invalid_utf8_is_set_aside_and_blocks_nothing(tmp_path: Path, con):  # noqa: F811
    """A landing line that is not UTF-8 (a damaged disk block; the receiver only writes ASCII) must
    not stop every landing run for good: it is set aside as `record_not_json` (line 2) and the
    records around it land. 3 lines read, 2 receipts, 1 bad record."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    writer.append(sample_body("evt_1"), {})
    with open(writer.current_path, "ab") as fh:
        fh.write(b"\xff\xfe\x00damaged\n")
    writer.append(sample_body("evt_2"), {})
    writer.close()
    stats = land_directory(con, landing)
    assert (stats.records_read, stats.receipts_added, stats.bad_records, stats.torn_files) == (3, 2, 1, 0)
    assert con.execute("SELECT list(event_id ORDER BY event_id) FROM stripe_webhook_events").fetchone()[0] == [
        "evt_1", "evt_2"]
    assert con.execute("SELECT line_no, reason FROM stripe_webhook_bad_records").fetchall() == [(2, "record_not_json")]


@pytest.mark.parametrize("created", ['"1790000000"', "1.5"], ids=["string", "fraction"])
def test_an_event_whose_created_is_not_a_json_integer_is_set_aside(tmp_path: Path, con, created: str):  # noqa: F811
    """An event's `created` is whole epoch seconds as a JSON integer (the receiver refuses anything
    else). A record written otherwise, with `created` "1790000000" (a string) or 1.5, is set aside as
    `event_created_out_of_range`, not stored as if it were 1790000000 or 2 (1.5 rounded)."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    writer.append(sample_body("evt_1"), {})
    odd = '{"id":"evt_odd","type":"invoice.updated","created":%s,"data":{"object":{"id":"in_1"}}}' % created
    writer.append(odd, {})
    writer.close()
    stats = land_directory(con, landing)
    assert (stats.records_read, stats.receipts_added, stats.bad_records) == (2, 1, 1)
    assert con.execute("SELECT list(event_id) FROM stripe_webhook_events").fetchone()[0] == ["evt_1"]
    assert con.execute("SELECT line_no, reason FROM stripe_webhook_bad_records").fetchall() == [
        (2, "event_created_out_of_range")]


def test_the_first_receipt_is_the_earliest_by_time_not_by_file_name(tmp_path: Path, con):  # noqa: F811
    """Two receivers in one hour took evt_1: receiver `a` at 00:30 (pending_webhooks 2, a retry) and
    receiver `b` at 00:10 (pending_webhooks 1). events keeps the first receipt by receipt time: b's,
    though a's file sorts first by name. 2 receipts, first 00:10, last 00:30."""
    landing = tmp_path / "landing"
    landing.mkdir()
    early, late = datetime(2026, 10, 1, 0, 10, tzinfo=UTC), datetime(2026, 10, 1, 0, 30, tzinfo=UTC)
    for name, at, pending in (("a", late, 2), ("b", early, 1)):
        (landing / f"stripe-20261001T00-{name}.jsonl").write_bytes(encode_record(
            body_of(event("evt_1", "invoice.created", 1, invoice("in_1"), pending_webhooks=pending)), {}, at))
    land_directory(con, landing)
    assert con.execute("SELECT event_id, raw ->> '$.pending_webhooks', first_received_at, last_received_at,"
                       " receipt_count FROM stripe_webhook_events").fetchall() == [("evt_1", "1", early, late, 2)]


# -- repair ---------------------------------------------------------------------------------------

def test_a_repair_from_created_gte_lists_the_events_of_that_very_second(tmp_path: Path):
    """stripe-facts: `created[gte]` is inclusive. The sandbox's clock stands at T; creating a product
    emits product.created at T. A repair listing from T lists and repairs that one event (a strict
    `gt` would list nothing and lose it for good once the next run lists from later still)."""
    t = 1_790_000_000
    with running_sandbox(now=t) as sb, warehouse.open_warehouse(tmp_path / "w.duckdb") as con:  # noqa: F811
        client = sb.client()
        product = client.v1.products.create({"name": "API calls"})
        stats = repair_events(con, client, created_gte=t, now=datetime.fromtimestamp(t, UTC), refetch=False)
        assert (stats.events_listed, stats.events_repaired) == (1, 1)
        assert con.execute("SELECT type, object_id, created, source FROM stripe_webhook_events").fetchall() == [
            ("product.created", product.id, datetime.fromtimestamp(t, UTC), "repair")]


def test_a_repaired_deletion_does_not_ask_stripe_for_the_deleted_object(tmp_path: Path):
    """A one-off draft invoice was created (its webhooks landed) and then deleted while the receiver
    was down: repair lists 3 events, lands the one missing (invoice.deleted), re-fetches nothing,
    and does not ask Stripe for the invoice, which no longer exists (GET /v1/invoices/<id> would be
    a 404 on every run until the event left the 30-day list)."""
    t = 1_790_000_000
    with running_sandbox(now=t) as sb, warehouse.open_warehouse(tmp_path / "w.duckdb") as con:  # noqa: F811
        client = sb.client()
        customer = client.v1.customers.create({"name": "Acme"})
        draft = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
        writer = LandingWriter(tmp_path / "landing")   # the receiver was up: every event so far landed
        for e in client.v1.events.list({"limit": 100}).auto_paging_iter():
            writer.append(json.dumps(e.to_dict(for_json=True)), {})
        writer.close()
        land_directory(con, tmp_path / "landing")
        client.v1.invoices.delete(draft.id)             # ... and then down
        stats = repair_events(con, client, now=datetime.fromtimestamp(t, UTC))
        # listed: customer.created, invoice.created (both landed already) and invoice.deleted
        assert (stats.events_listed, stats.events_repaired, stats.objects_refetched) == (3, 1, 0)
        assert con.execute("SELECT type FROM stripe_webhook_events WHERE source = 'repair'").fetchall() == [
            ("invoice.deleted",)]
        assert sb.requests_log(path=f"/v1/invoices/{draft.id}", method="GET") == []


def test_two_previews_of_an_upcoming_invoice_in_one_second_are_not_refetched(con, tmp_path: Path):  # noqa: F811
    """`invoice.upcoming` carries a preview (here with the preview API's `upcoming_in_P` id) that
    Stripe has not created: two different previews in one second (4200 and 4300) are no tie to settle,
    since there is no invoice to fetch; asking for it would fail on every repair."""
    t = START + 100
    land(con, tmp_path, [[
        event("evt_1", "invoice.upcoming", t, invoice("upcoming_in_P", status="draft", amount_due=4200)),
        event("evt_2", "invoice.upcoming", t, invoice("upcoming_in_P", status="draft", amount_due=4300)),
    ]])
    assert ambiguous_objects(con) == []


def test_versions_of_an_object_without_an_id_are_never_refetched(con, tmp_path: Path):  # noqa: F811
    """Two different invoice.updated versions in one second whose object has no id (1000 and 700) name
    no invoice: there is nothing to ask Stripe for, so no (invoice, NULL) target; in_1's own tie in
    that second (amounts 1000 and 500, both open, attempt 0) is one."""
    t = START + 100
    no_id_a, no_id_b = invoice("in_x"), invoice("in_x", amount_due=700)
    del no_id_a["id"], no_id_b["id"]
    land(con, tmp_path, [[
        event("evt_1", "invoice.updated", t, no_id_a),
        event("evt_2", "invoice.updated", t, no_id_b),
        event("evt_3", "invoice.updated", t, invoice("in_1")),
        event("evt_4", "invoice.updated", t, invoice("in_1", amount_due=500)),
    ]])
    assert ambiguous_objects(con) == [("invoice", "in_1")]


def test_a_refetched_invoice_is_dated_at_its_newest_event_not_its_own_created(con, tmp_path: Path):  # noqa: F811
    """repair: a snapshot is ordered against events at the newest `created` known for the object. in_1
    was created at START (its own `created` field) and has events at START + 60 and START + 120:
    the snapshot's version_created is START + 120, so it is not older than the events it follows."""
    land(con, tmp_path, [[
        event("evt_1", "invoice.finalized", START + 60, invoice("in_1", created=START)),
        event("evt_2", "invoice.payment_failed", START + 120, invoice("in_1", created=START, attempt_count=1)),
    ]])
    fetched = datetime(2026, 10, 1, tzinfo=UTC)
    _store_snapshots(con, [{"object_id": "in_1", "object_type": "invoice",
                            "raw": json.dumps(invoice("in_1", created=START, attempt_count=1))}], fetched)
    assert con.execute("SELECT object_id, version_created, fetched_at FROM stripe_object_snapshots").fetchall() == [
        ("in_1", datetime.fromtimestamp(START + 120, UTC), fetched)]


def test_with_no_repair_yet_the_gap_is_taken_from_the_first_webhook_not_the_last(
    con, tmp_path: Path, stripe_sandbox  # noqa: F811
):
    """No repair has run: events may have been missed since the first webhook landed (T0). A repair at
    T0 + 31 days lists from T0 + 1 day + 1 h, after T0: a gap, though a later webhook landed at
    T0 + 20 days (after the listing's start). The open invoice is re-read (1; the paid one is final)."""
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    for received, payload in [(t0, event("evt_1", "invoice.updated", START, invoice("in_open"))),
                              (t0 + timedelta(days=20),
                               event("evt_2", "invoice.updated", START + 1, invoice("in_paid", status="paid")))]:
        writer = LandingWriter(tmp_path / "landing", clock=lambda received=received: received)
        writer.append(body_of(payload), {})
        writer.close()
        land_directory(con, tmp_path / "landing")
    rebuild_state(con)
    stats = repair_events(con, stripe_sandbox.client(), now=t0 + timedelta(days=31))
    assert stats.gap_refetched == 1


def test_an_expired_incomplete_subscription_is_final_and_not_reread_across_a_gap(
    con, tmp_path: Path, stripe_sandbox  # noqa: F811
):
    """A subscription's final statuses are canceled and incomplete_expired. Across a gap (first webhook
    at T0, repair at T0 + 31 days) only the active subscription is re-read: 1."""
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    writer = LandingWriter(tmp_path / "landing", clock=lambda: t0)
    writer.append(body_of(event("evt_1", "customer.subscription.updated", START,
                                subscription("sub_exp", status="incomplete_expired"))), {})
    writer.append(body_of(event("evt_2", "customer.subscription.updated", START + 1,
                                subscription("sub_live", status="active"))), {})
    writer.close()
    land_directory(con, tmp_path / "landing")
    rebuild_state(con)
    assert repair_events(con, stripe_sandbox.client(), now=t0 + timedelta(days=31)).gap_refetched == 1


def _land_one_open_invoice(con, path: Path, at: datetime) -> None:  # noqa: F811
    """evt_1 (invoice.updated, in_open still open), received at `at`, landed and folded into the state."""
    writer = LandingWriter(path / "landing", clock=lambda: at)
    writer.append(body_of(event("evt_1", "invoice.updated", START, invoice("in_open"))), {})
    writer.close()
    land_directory(con, path / "landing")
    rebuild_state(con)


def test_a_gap_left_unread_reports_nothing_reread(con, tmp_path: Path, stripe_sandbox):  # noqa: F811
    """Without --refetch a repair across a gap re-reads nothing: `gap_refetched` (of the objects re-read,
    those re-read for the gap) is 0 like `objects_refetched`, though one open invoice awaits a re-read,
    and the run is not recorded, so the next run (with re-reads) still sees the gap: 1."""
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    _land_one_open_invoice(con, tmp_path, t0)
    client = stripe_sandbox.client()
    unread = repair_events(con, client, now=t0 + timedelta(days=31), refetch=False)
    assert (unread.objects_refetched, unread.gap_refetched) == (0, 0)
    assert con.execute("SELECT count(*) FROM stripe_repair_runs").fetchone() == (0,)
    assert repair_events(con, client, now=t0 + timedelta(days=31, hours=1)).gap_refetched == 1


def test_a_repair_without_refetch_and_no_gap_is_recorded_so_the_next_sees_none(
    con, tmp_path: Path, stripe_sandbox  # noqa: F811
):
    """A run without --refetch that finds no gap still listed everything since the previous one: it is
    a repair run (listed from T0 + 1 h - 30 days + 1 h, before T0: no gap). The next, at T0 + 30 days,
    lists from T0 + 1 h, exactly where the recorded run was: no gap, nothing re-read. Unrecorded, the
    first webhook (T0) would count as the previous listing and the open invoice be re-read (1)."""
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    _land_one_open_invoice(con, tmp_path, t0)
    client = stripe_sandbox.client()
    first = repair_events(con, client, now=t0 + timedelta(hours=1), refetch=False)
    assert (first.objects_refetched, first.gap_refetched) == (0, 0)
    assert con.execute("SELECT repaired_at, listed_from FROM stripe_repair_runs").fetchall() == [
        (t0 + timedelta(hours=1), t0 + timedelta(hours=2) - timedelta(days=30))]
    assert repair_events(con, client, now=t0 + timedelta(days=30)).gap_refetched == 0
