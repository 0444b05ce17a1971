"""Tests that kill mutants the webhook suite let through (hand mutation audit 23b).

Each test names the behaviour it pins down, from Stripe's webhook rules (reference/stripe-facts.md),
docs/webhooks.md or the modules' own contracts; expected values are worked out by hand in comments.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from metering.webhooks.events import event_counts, land_directory, land_records
from metering.webhooks.inbox import MAX_CREATED, LandingWriter, encode_record
from metering.webhooks.landing import read_new_records
from metering.webhooks.repair import _store_snapshots
from metering.webhooks.signature import Rejected, parse_secrets, verify
from metering.webhooks.state import rebuild_state
from test_webhook_landing import write
from test_webhook_receiver import NOW, landed_bodies, make_client, post, sample_body
from test_webhook_state import START, con, land  # noqa: F401  (con is a fixture)
from webhook_payloads import SECRET, body_of, event, invoice, signature, subscription

UTC = timezone.utc


# -- signature ------------------------------------------------------------------------------------

def test_verifying_with_no_secret_configured_is_a_configuration_error_not_a_reject():
    """No secret is the operator's mistake: it must fail loudly, never read as a bad request (a 400
    for every delivery, counted as signature mismatches)."""
    body = sample_body()
    with pytest.raises(ValueError, match="no webhook secret configured"):
        verify(body.encode(), signature(body, timestamp=NOW), [], now=NOW, tolerance=300)


def test_a_blank_entry_in_the_secret_list_adds_no_empty_key():
    """`STRIPE_WEBHOOK_SECRET="whsec_a, ,"` (a trailing comma after a rotation) is one secret: a blank
    entry kept as the empty key would let anyone sign with the empty key."""
    secrets = parse_secrets(f" {SECRET} , ,")
    assert secrets == (SECRET.encode(),)
    body = sample_body()
    with pytest.raises(Rejected) as err:
        verify(body.encode(), signature(body, secret="", timestamp=NOW), secrets, now=NOW, tolerance=300)
    assert (err.value.status, err.value.reason) == (400, "signature_mismatch")


def test_a_v1_longer_than_64_hex_digits_is_skipped_not_compared():
    """docs/webhooks.md: a well-formed v1 is exactly 64 lower-case hex digits; others are skipped, so
    a header whose only v1 has 65 digits has no v1 at all."""
    body = sample_body()
    v1 = signature(body, timestamp=NOW).split("v1=")[1]
    with pytest.raises(Rejected) as err:
        verify(body.encode(), f"t={NOW},v1={v1}0", [SECRET.encode()], now=NOW, tolerance=300)
    assert (err.value.status, err.value.reason) == (400, "no_v1_signature")


# -- receiver -------------------------------------------------------------------------------------

def test_a_body_of_exactly_the_size_limit_is_accepted_by_length_and_by_stream(tmp_path: Path):
    """Only a body *over* the limit is 413: a limit equal to the body's length accepts it, whether
    the size is declared (Content-Length) or only counted as the chunks arrive."""
    body = sample_body()
    landing = tmp_path / "landing"
    client = make_client(landing, max_body_bytes=len(body.encode()))
    header = signature(body, timestamp=NOW)
    assert post(client, body, header).status_code == 200

    def chunks():
        yield body[:100].encode()
        yield body[100:].encode()

    streamed = client.post("/webhooks/stripe", content=chunks(), headers={"stripe-signature": header})
    assert streamed.status_code == 200
    assert landed_bodies(landing) == [body, body]


def test_a_content_length_that_is_not_digits_is_400_not_a_server_error(tmp_path: Path):
    landing = tmp_path / "landing"
    body = sample_body()
    response = post(make_client(landing), body, signature(body, timestamp=NOW), **{"content-length": "1e3"})
    assert (response.status_code, response.json()) == (400, {"error": "bad_content_length"})
    assert landed_bodies(landing) == []


@pytest.mark.parametrize("body", [b"not json at all", b'{"id": "evt_1", "note": "\xff"}'], ids=["not_json", "not_utf8"])
def test_a_body_under_a_wrong_signature_is_refused_before_it_is_decoded(tmp_path: Path, body: bytes):
    """stripe-facts: verify the exact raw bytes before parsing. An unsigned body is a signature
    mismatch whatever it holds: it is never decoded or parsed."""
    landing = tmp_path / "landing"
    header = f"t={NOW},v1=" + "0" * 64
    response = post(make_client(landing), body, header)
    assert (response.status_code, response.json()) == (400, {"error": "signature_mismatch"})
    assert landed_bodies(landing) == []


@pytest.mark.parametrize(
    "body",
    [
        # JSON true is not an integer `created` (Python's bool is an int); landing sets it aside
        '{"id":"evt_b","type":"invoice.updated","created":true,"data":{"object":{"id":"in_1"}}}',
        # an empty id is no event id; landing sets it aside as body_not_an_event
        '{"id":"","type":"invoice.updated","created":1790000000,"data":{"object":{"id":"in_1"}}}',
    ],
    ids=["created_true", "empty_id"],
)
def test_an_event_landing_would_set_aside_is_never_acknowledged(tmp_path: Path, body: str):
    """I11: what the receiver acknowledges must land, so what landing refuses is a 400 at the door."""
    landing = tmp_path / "landing"
    response = post(make_client(landing), body, signature(body, timestamp=NOW))
    assert (response.status_code, response.json()) == (400, {"error": "not_an_event"})
    assert landed_bodies(landing) == []


@pytest.mark.parametrize(
    ("created", "stored"),
    [
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        # MAX_CREATED = 253402300799 = the last second of 9999: 9999-12-31 23:59:59 UTC
        (MAX_CREATED, datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ],
    ids=["epoch", "end_of_9999"],
)
def test_an_event_created_at_either_end_of_the_range_is_acknowledged_and_lands(
    tmp_path: Path, con, created: int, stored: datetime  # noqa: F811
):
    """The receiver's range [0, MAX_CREATED] and landing's are the same, bounds included: a 200 for
    such an event and then a bad record would lose it (Stripe does not retry a 2xx)."""
    landing = tmp_path / "landing"
    body = body_of(event("evt_edge", "invoice.updated", created, invoice("in_1")))
    assert post(make_client(landing), body, signature(body, timestamp=NOW)).status_code == 200
    stats = land_directory(con, landing)
    assert (stats.receipts_added, stats.events_added, stats.bad_records) == (1, 1, 0)
    assert con.execute("SELECT event_id, created FROM stripe_webhook_events").fetchall() == [("evt_edge", stored)]


# -- inbox and landing ----------------------------------------------------------------------------

def test_a_receipt_time_from_a_clock_in_another_zone_is_written_in_utc(tmp_path: Path):
    """inbox: `received_at` is ISO-8601 UTC with microseconds, and the file is named by its UTC hour.
    2026-10-01 02:00:01.5 at +02:00 is 2026-10-01 00:00:01.5 UTC: hour 20261001T00, not T02."""
    plus2 = timezone(timedelta(hours=2))
    writer = LandingWriter(tmp_path / "landing", clock=lambda: datetime(2026, 10, 1, 2, 0, 1, 500_000, tzinfo=plus2))
    writer.append(sample_body(), {})
    writer.close()
    [record] = [json.loads(line) for line in writer.current_path.read_text().splitlines()]
    assert record["received_at"] == "2026-10-01T00:00:01.500000+00:00"
    assert "-20261001T00-" in writer.current_path.name, writer.current_path.name


def test_a_body_in_raw_utf8_is_acknowledged_and_lands_as_sent(tmp_path: Path, con):  # noqa: F811
    """Stripe sends UTF-8 as is (not as \\u escapes): such a body is landed as the exact signed text,
    and the warehouse reads the name back."""
    landing = tmp_path / "landing"
    payload = event("evt_u", "invoice.finalized", NOW, {**invoice("in_1"), "customer_name": "Müller & Søn"})
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    assert "Müller" in body
    assert post(make_client(landing), body, signature(body, timestamp=NOW)).status_code == 200
    assert landed_bodies(landing) == [body]
    land_directory(con, landing)
    assert con.execute("SELECT event_id, raw ->> '$.data.object.customer_name' FROM stripe_webhook_events").fetchall() == [
        ("evt_u", "Müller & Søn")]


def test_a_file_in_the_landing_folder_not_ending_in_jsonl_is_not_landed(tmp_path: Path, con):  # noqa: F811
    """Only `stripe-*.jsonl` files are landing files: a copy kept beside one (here `.jsonl.bak`) would
    count every receipt in it a second time."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    write(writer, sample_body("evt_1"))
    writer.close()
    backup = writer.current_path.with_name(writer.current_path.name + ".bak")
    backup.write_bytes(writer.current_path.read_bytes())
    stats = land_directory(con, landing)
    assert (stats.files_read, stats.records_read, stats.receipts_added) == (1, 1, 1)
    assert con.execute("SELECT event_id, receipt_count FROM stripe_webhook_events").fetchall() == [("evt_1", 1)]


def test_a_pass_with_nothing_new_reads_no_file_and_rewrites_no_offset(tmp_path: Path, con):  # noqa: F811
    """I2: landing again when nothing (or only a torn tail) was added changes no table: the offset row
    keeps the first pass's time, and the pass reports 0 files read."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    write(writer, sample_body("evt_1"))
    writer.close()
    first = datetime(2026, 10, 1, tzinfo=UTC)
    land_directory(con, landing, now=first)
    with open(writer.current_path, "a") as fh:
        fh.write('{"v":1,"recei')  # a torn record: no line end yet
    stats = land_directory(con, landing, now=first + timedelta(hours=1))
    assert (stats.files_read, stats.records_read, stats.torn_files) == (0, 0, 1)
    size = len(writer.current_path.read_bytes()) - len('{"v":1,"recei')
    assert con.execute("SELECT offset_bytes, lines, updated_at FROM stripe_landing_offsets").fetchall() == [
        (size, 1, first)]


def test_landing_an_empty_folder_reports_zero_events_and_receipts(tmp_path: Path, con):  # noqa: F811
    """A fresh warehouse before the first webhook: the totals are 0, not a failed landing run."""
    stats = land_directory(con, tmp_path / "landing")
    assert (stats.files_read, stats.records_read, stats.receipts_added) == (0, 0, 0)
    assert event_counts(con) == {"events": 0, "receipts": 0, "events_from_repair": 0}


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        # a body whose id is empty: no event id to store it under
        ({"v": 1, "received_at": "2026-10-01T00:00:00+00:00",
          "body": '{"id":"","type":"invoice.updated","created":1,"data":{"object":{}}}'}, "body_not_an_event"),
        # no receipt time: the receipt cannot be stored (received_at is NOT NULL)
        ({"v": 1, "body": '{"id":"evt_nt","type":"invoice.updated","created":1,"data":{"object":{}}}'},
         "record_without_received_at"),
    ],
    ids=["empty_id", "no_received_at"],
)
def test_a_record_landing_cannot_store_is_set_aside_with_its_reason(
    tmp_path: Path, con, record: dict, reason: str  # noqa: F811
):
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    write(writer, sample_body("evt_1"))
    writer.close()
    with open(writer.current_path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
    stats = land_directory(con, landing)
    # 2 lines read: line 1 lands, line 2 is set aside
    assert (stats.records_read, stats.receipts_added, stats.bad_records) == (2, 1, 1)
    assert con.execute("SELECT list(event_id) FROM stripe_webhook_events").fetchone()[0] == ["evt_1"]
    assert con.execute("SELECT line_no, reason FROM stripe_webhook_bad_records").fetchall() == [(2, reason)]


def test_the_receipt_kept_for_two_at_the_same_instant_does_not_depend_on_landing_order(tmp_path: Path, con):  # noqa: F811
    """I12: two receivers take the same event in the same microsecond (Stripe's redelivery differs in
    `pending_webhooks`). The first receipt is the earliest, ties broken by receipt key
    (`<file>:<line>`): file `...-a` sorts before `...-b`, so a's copy (pending_webhooks 2) is kept,
    also when b's file is landed first."""
    landing = tmp_path / "landing"
    landing.mkdir()
    at = datetime(2026, 10, 1, 0, 0, 1, tzinfo=UTC)
    a, b = (landing / f"stripe-20261001T00-{n}.jsonl" for n in ("a", "b"))
    b.write_bytes(encode_record(body_of(event("evt_1", "invoice.created", 1, invoice("in_1"), pending_webhooks=1)), {}, at))
    land_directory(con, landing)
    a.write_bytes(encode_record(body_of(event("evt_1", "invoice.created", 1, invoice("in_1"), pending_webhooks=2)), {}, at))
    land_directory(con, landing)
    assert con.execute("SELECT event_id, receipt_count, raw ->> '$.pending_webhooks' FROM stripe_webhook_events"
                       ).fetchall() == [("evt_1", 2, "2")]


def test_of_two_receipts_in_one_file_at_the_same_instant_the_earlier_line_is_kept(tmp_path: Path, con):  # noqa: F811
    """Within one file, lines are in the order they were written. The receipt key `<file>:<line>` is text,
    so `f:10` sorts before `f:9`: ordered by it, the copy on line 10 (pending_webhooks 1) was kept over
    line 9's (pending_webhooks 2). Lines 1-8 are other events; all ten records share one microsecond."""
    landing = tmp_path / "landing"
    landing.mkdir()
    at = datetime(2026, 10, 1, 0, 0, 1, tzinfo=UTC)
    others = [encode_record(body_of(event(f"evt_{n}", "invoice.created", 1, invoice(f"in_{n}"))), {}, at)
              for n in range(2, 10)]
    line_9, line_10 = (encode_record(body_of(event("evt_1", "invoice.created", 1, invoice("in_1"),
                                                   pending_webhooks=pending)), {}, at) for pending in (2, 1))
    (landing / "stripe-20261001T00-a.jsonl").write_bytes(b"".join([*others, line_9, line_10]))
    land_directory(con, landing)
    assert con.execute("SELECT receipt_count, raw ->> '$.pending_webhooks' FROM stripe_webhook_events "
                       "WHERE event_id = 'evt_1'").fetchall() == [(2, "2")]


def test_relanding_a_file_from_its_start_sets_a_bad_record_aside_once(tmp_path: Path, con):  # noqa: F811
    """A bad record is keyed by file and line like a receipt: reading the file again from its start
    (offsets lost) adds no second copy of it."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    write(writer, sample_body("evt_1"))
    writer.close()
    with open(writer.current_path, "a") as fh:
        fh.write("this is not json\n")
    assert land_directory(con, landing).bad_records == 1
    again = read_new_records(landing, {})
    assert land_records(con, again.records, again.positions) == (0, 0, 0)
    assert con.execute("SELECT line_no, reason FROM stripe_webhook_bad_records").fetchall() == [(2, "record_not_json")]


# -- state ----------------------------------------------------------------------------------------

def test_a_later_attempt_in_the_same_second_wins_though_its_event_id_is_lower(con, tmp_path: Path):  # noqa: F811
    """Rule 4 before rule 5: two `open` versions in one second, attempt 2 (evt_1) and attempt 1
    (evt_9): the attempt count only moves forward, so attempt 2 is the state, whatever the ids."""
    t = START + 100
    land(con, tmp_path, [[
        event("evt_1", "invoice.payment_failed", t, invoice("in_1", attempt_count=2)),
        event("evt_9", "invoice.payment_failed", t, invoice("in_1", attempt_count=1)),
    ]])
    assert con.execute("SELECT invoice_id, status, attempt_count, state_event_id FROM stripe_invoices").fetchall() == [
        ("in_1", "open", 2, "evt_1")]


def _refetched(con, obj: dict) -> None:  # noqa: F811
    """Store `obj` as repair stores a re-fetched object (dated at its newest event's second), then
    rebuild the state."""
    _store_snapshots(con, [{"object_id": obj["id"], "object_type": obj["object"], "raw": json.dumps(obj)}],
                     datetime(2026, 10, 1, tzinfo=UTC))
    rebuild_state(con)


def test_a_refetched_invoice_beats_events_of_its_second_that_rules_3_and_4_cannot_order(con, tmp_path: Path):  # noqa: F811
    """Rule 2: finalized (1000) and updated (700) in one second, both open with attempt 0, are ordered
    by id alone (evt_2, 700); the re-fetch read Stripe's state after both (850): it is the state."""
    t = START + 100
    land(con, tmp_path, [[
        event("evt_1", "invoice.finalized", t, invoice("in_1", amount_due=1000)),
        event("evt_2", "invoice.updated", t, invoice("in_1", amount_due=700)),
    ]])
    assert con.execute("SELECT amount_due, state_event_id FROM stripe_invoices").fetchall() == [(700, "evt_2")]
    _refetched(con, invoice("in_1", amount_due=850))
    assert con.execute("SELECT amount_due, state_event_created, state_event_id FROM stripe_invoices").fetchall() == [
        (850, datetime.fromtimestamp(t, UTC), "snapshot:in_1")]


def test_a_subscriptions_period_spans_all_its_items(con, tmp_path: Path):  # noqa: F811
    """docs: the current period is the minimum start and the maximum end over the items. si_1 runs
    [START, START+30d), si_2 [START+10d, START+40d): the period is [START, START+40d)."""
    day = 86_400
    sub = subscription("sub_1")
    sub["items"]["data"].append({"id": "si_2", "object": "subscription_item", "price": "price_b",
                                 "current_period_start": START + 10 * day, "current_period_end": START + 40 * day})
    sub["items"]["data"][0]["current_period_end"] = START + 30 * day
    land(con, tmp_path, [[event("evt_1", "customer.subscription.created", START, sub)]])
    assert con.execute("SELECT current_period_start, current_period_end, items FROM stripe_subscriptions").fetchall() == [
        (datetime.fromtimestamp(START, UTC), datetime.fromtimestamp(START + 40 * day, UTC),
         '[{"id":"si_1","price":"price_api"},{"id":"si_2","price":"price_b"}]')]


def test_a_subscription_without_items_still_has_its_row(con, tmp_path: Path):  # noqa: F811
    """A subscription whose items list is empty (all removed) is still a subscription: its row stays,
    with no items and no period."""
    sub = subscription("sub_1", status="canceled")
    sub["items"]["data"] = []
    land(con, tmp_path, [[event("evt_1", "customer.subscription.deleted", START, sub)]])
    assert con.execute("SELECT subscription_id, status, items, current_period_start, current_period_end"
                       " FROM stripe_subscriptions").fetchall() == [("sub_1", "canceled", "[]", None, None)]


def test_the_subscriptions_customer_id_comes_before_the_invoices_own(con, tmp_path: Path):  # noqa: F811
    """docs/webhooks.md: with no catalog mapping of the Stripe customer, customer_id is the metadata under
    parent.subscription_details (the engine sets it), else the invoice's own metadata[customer_id]. Here
    the invoice says acme and its subscription says acme_old: acme_old. (Until the twenty-eighth session
    the invoice's own metadata came first: `test_invoice_attribution.py`.)"""
    inv = invoice("in_1", customer_id="acme")
    inv["parent"]["subscription_details"]["metadata"] = {"customer_id": "acme_old"}
    land(con, tmp_path, [[event("evt_1", "invoice.finalized", START, inv),
                          event("evt_2", "invoice.payment_failed", START + 60, {**inv, "attempt_count": 1})]])
    assert con.execute("SELECT customer_id FROM stripe_invoices").fetchall() == [("acme_old",)]
    assert con.execute("SELECT customer_id FROM stripe_payment_attempts").fetchall() == [("acme_old",)]


@pytest.mark.parametrize(("has_more", "complete"), [(None, True), (False, True), (True, False)],
                         ids=["absent", "false", "true"])
def test_an_invoices_lines_are_incomplete_only_when_stripe_says_there_are_more(
    con, tmp_path: Path, has_more, complete: bool  # noqa: F811
):
    """Migration 031: lines_complete is false when the payload's lines list had more pages."""
    inv = invoice("in_1")
    if has_more is None:
        del inv["lines"]["has_more"]
    else:
        inv["lines"]["has_more"] = has_more
    land(con, tmp_path, [[event("evt_1", "invoice.finalized", START, inv)]])
    assert con.execute("SELECT lines_complete FROM stripe_invoices").fetchall() == [(complete,)]


def test_a_payment_event_without_an_invoice_id_is_no_attempt_and_blocks_no_rebuild(con, tmp_path: Path):  # noqa: F811
    """An invoice.payment_failed whose object has no id names no invoice: it is left out (attempts'
    invoice_id is NOT NULL, so keeping it failed every rebuild) and in_A's attempts stand."""
    odd = invoice("in_X", attempt_count=1)
    del odd["id"]
    land(con, tmp_path, [[
        event("evt_1", "invoice.payment_failed", START + 60, invoice("in_A", attempt_count=1)),
        event("evt_2", "invoice.payment_failed", START + 61, odd),
    ]])
    assert con.execute("SELECT invoice_id, attempt_count, outcome, event_id FROM stripe_payment_attempts").fetchall() == [
        ("in_A", 1, "failed", "evt_1")]


def test_a_subscription_event_without_an_object_id_blocks_no_rebuild(con, tmp_path: Path):  # noqa: F811
    """A subscription version with no id names no subscription: it is left out (subscription_id is
    NOT NULL, so keeping it failed every rebuild) and sub_A's state stands."""
    odd = subscription("sub_X", status="past_due")
    del odd["id"]
    land(con, tmp_path, [[
        event("evt_1", "customer.subscription.created", START, subscription("sub_A")),
        event("evt_2", "customer.subscription.updated", START + 60, odd),
    ]])
    assert con.execute("SELECT subscription_id, status, state_event_id FROM stripe_subscriptions").fetchall() == [
        ("sub_A", "active", "evt_1")]
