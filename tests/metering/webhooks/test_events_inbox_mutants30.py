"""Tests that kill mutants the webhook suite let through (hand mutation audit 30b), over
`metering.webhooks` events, inbox, landing, signature and receiver, plus two defects found by reading.

Each test names the behaviour it pins down from the modules' own contracts (docstrings, the
`030_stripe_webhooks.sql` migration, docs/webhooks.md); expected values are worked out by hand in
comments, not copied from what the code printed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from metering.webhooks.events import event_counts, insert_receipts, land_directory
from metering.webhooks.inbox import LandingWriter, encode_record, epoch_sql
from metering.webhooks.landing import FilePosition, landing_files, read_new_records
from metering.webhooks.receiver import ReceiverSettings, create_app
from metering.webhooks.signature import Rejected, SignatureHeader, verify
from test_webhook_receiver import NOW, TestClient, landed_bodies, post, sample_body
from test_webhook_state import con  # noqa: F401  (con is a fixture)
from webhook_payloads import API_VERSION, OLD_SECRET, SECRET, body_of, event, invoice, signature

UTC = timezone.utc


# -- landing: a damaged record ----------------------------------------------------------------------

@pytest.mark.parametrize("damaged", [b"evt_\xff", b"evt_\xc3\xa9"], ids=["not_utf8", "utf8_not_ascii"])
def test_a_record_damaged_inside_its_event_id_is_set_aside_not_landed_as_another_event(
    tmp_path: Path, con, damaged: bytes  # noqa: F811
):
    """The receiver writes ASCII only (`ensure_ascii`), so any other byte in a landing line is damage
    (a bad disk block), to be set aside as `record_not_json` (see the mutants27 test of a damaged
    line). Here line 2's event id `evt_2` is damaged to `evt_` + 0xFF, or + the two bytes of é: the
    line is still well-formed JSON (0xFF decoded as U+FFFD), and until the thirtieth session it landed
    as a new event `evt_\\ufffd` (or `evt_é`) that Stripe never sent, with a raw body that is not what
    was delivered. Expected: 2 lines read, 1 receipt (evt_1), 1 bad record (line 2, record_not_json)."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    writer.append(sample_body("evt_1"), {})
    writer.append(sample_body("evt_2"), {})
    writer.close()
    data = writer.current_path.read_bytes()
    assert data.count(b"evt_2") == 1
    writer.current_path.write_bytes(data.replace(b"evt_2", damaged))
    stats = land_directory(con, landing)
    assert (stats.records_read, stats.receipts_added, stats.bad_records) == (2, 1, 1)
    assert con.execute("SELECT list(event_id) FROM stripe_webhook_events").fetchone()[0] == ["evt_1"]
    assert con.execute("SELECT line_no, reason FROM stripe_webhook_bad_records").fetchall() == [(2, "record_not_json")]


# -- events: what is set aside, and why -------------------------------------------------------------

def _append_raw(path: Path, *records: dict) -> None:
    with open(path, "a") as fh:
        for record in records:
            fh.write(json.dumps(record) + "\n")


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        # a record with no `body` at all: no body to read as JSON (not "a body that is not an event")
        ({"v": 1, "received_at": "2026-10-01T00:00:00+00:00", "headers": {}}, "body_not_json"),
        # MAX_CREATED + 1 = 253402300800 = 10000-01-01T00:00:00Z, one second past the range
        ({"v": 1, "received_at": "2026-10-01T00:00:00+00:00",
          "body": '{"id":"evt_x","type":"invoice.updated","created":253402300800,"data":{"object":{}}}'},
         "event_created_out_of_range"),
        # no `created` at all: stripe_webhook_events.created is NOT NULL, so storing it would fail the batch
        ({"v": 1, "received_at": "2026-10-01T00:00:00+00:00",
          "body": '{"id":"evt_x","type":"invoice.updated","data":{"object":{}}}'}, "event_created_out_of_range"),
    ],
    ids=["no_body", "created_max_plus_one", "no_created"],
)
def test_a_record_is_set_aside_with_the_reason_that_names_its_fault(tmp_path: Path, con, record: dict, reason: str):  # noqa: F811
    """Line 1 is a good event; line 2 is set aside with its reason and lines 1's event still lands."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    writer.append(sample_body("evt_1"), {})
    writer.close()
    _append_raw(writer.current_path, record)
    stats = land_directory(con, landing)
    assert (stats.records_read, stats.receipts_added, stats.bad_records) == (2, 1, 1)
    assert con.execute("SELECT list(event_id) FROM stripe_webhook_events").fetchone()[0] == ["evt_1"]
    assert con.execute("SELECT line_no, reason FROM stripe_webhook_bad_records").fetchall() == [(2, reason)]


def test_an_events_row_carries_the_envelope_of_its_first_receipt(tmp_path: Path, con):  # noqa: F811
    """One row per event: type, created (1790000000 = 2026-09-21T14:13:20Z), the object's id and kind,
    api_version and livemode from the envelope, and the receipt key is `<landing file>:<line>`
    (030_stripe_webhooks.sql)."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing, clock=lambda: datetime(2026, 10, 1, 0, 0, 1, 250_000, tzinfo=UTC))
    writer.append(sample_body("evt_1"), {})
    writer.close()
    land_directory(con, landing)
    assert con.execute(
        "SELECT event_id, type, created, object_id, object_type, api_version, livemode, source,"
        " first_received_at, last_received_at, receipt_count FROM stripe_webhook_events").fetchall() == [
        ("evt_1", "invoice.finalized", datetime(2026, 9, 21, 14, 13, 20, tzinfo=UTC), "in_1", "invoice",
         API_VERSION, False, "webhook", datetime(2026, 10, 1, 0, 0, 1, 250_000, tzinfo=UTC),
         datetime(2026, 10, 1, 0, 0, 1, 250_000, tzinfo=UTC), 1)]
    assert con.execute("SELECT receipt_key, line_no FROM stripe_webhook_receipts").fetchall() == [
        (f"{writer.current_path.name}:1", 1)]


def test_receipts_bad_records_and_offsets_are_stamped_with_the_landing_time(tmp_path: Path, con):  # noqa: F811
    """`now` given: every row written by the pass carries it; not given: the current UTC time."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    writer.append(sample_body("evt_1"), {})
    writer.close()
    _append_raw(writer.current_path, {"v": 1})
    at = datetime(2026, 10, 2, 3, 4, 5, tzinfo=UTC)
    land_directory(con, landing, now=at)
    assert con.execute(
        "SELECT (SELECT list(landed_at) FROM stripe_webhook_receipts), (SELECT list(landed_at) FROM"
        " stripe_webhook_bad_records), (SELECT list(updated_at) FROM stripe_landing_offsets)").fetchone() == (
        [at], [at], [at])

    writer.append(sample_body("evt_2"), {})
    writer.close()
    before = datetime.now(UTC)
    land_directory(con, landing)
    after = datetime.now(UTC)
    [(landed_at,)] = con.execute("SELECT landed_at FROM stripe_webhook_receipts WHERE event_id = 'evt_2'").fetchall()
    assert before <= landed_at <= after


def test_a_duplicate_is_a_receipt_of_a_known_event_and_a_bad_record_is_no_duplicate(tmp_path: Path, con):  # noqa: F811
    """Lines: evt_1, evt_1 again, evt_2, a bad record. 4 read, 3 receipts, 2 new events, so 3 - 2 = 1
    duplicate; the bad record is counted once, as bad, not as a duplicate too."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    for event_id in ("evt_1", "evt_1", "evt_2"):
        writer.append(sample_body(event_id), {})
    writer.close()
    _append_raw(writer.current_path, {"v": 1})
    stats = land_directory(con, landing)
    assert stats.as_dict() == {"files_read": 1, "records_read": 4, "receipts_added": 3, "events_added": 2,
                               "duplicate_receipts": 1, "bad_records": 1, "torn_files": 0}


def test_rereading_a_landed_file_reports_the_records_read_not_the_receipts_added(tmp_path: Path, con):  # noqa: F811
    """Offsets lost (the offsets table emptied): the second pass reads the file's 2 records again from
    the start but adds nothing. records_read is what was read (2), receipts_added 0."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    writer.append(sample_body("evt_1"), {})
    writer.append(sample_body("evt_2"), {})
    writer.close()
    land_directory(con, landing)
    con.execute("DELETE FROM stripe_landing_offsets")
    stats = land_directory(con, landing)
    assert (stats.files_read, stats.records_read, stats.receipts_added, stats.events_added) == (1, 2, 0, 0)
    assert con.execute("SELECT event_id, receipt_count FROM stripe_webhook_events ORDER BY 1").fetchall() == [
        ("evt_1", 1), ("evt_2", 1)]


def test_a_pass_logs_its_torn_files_by_name_and_its_bad_records_by_count(tmp_path: Path, con, caplog):  # noqa: F811
    """A torn tail is a warning naming the file; records set aside are an error with their count (2)."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    writer.append(sample_body("evt_1"), {})
    writer.close()
    _append_raw(writer.current_path, {"v": 1}, {"v": 1})
    with open(writer.current_path, "a") as fh:
        fh.write('{"v":1,"recei')
    with caplog.at_level("INFO", logger="metering.webhooks.events"):
        land_directory(con, landing)
    by_message = {r.getMessage(): r for r in caplog.records}
    torn = by_message["landing files end in a torn record (skipped)"]
    assert (torn.levelname, torn.files) == ("WARNING", [writer.current_path.name])
    bad = by_message["landed records that are not events were set aside"]
    assert (bad.levelname, bad.count) == ("ERROR", 2)


# -- landing files and the inbox record ------------------------------------------------------------

def test_landing_files_are_listed_in_name_order_whatever_the_folder_order(tmp_path: Path):
    """Hour first in the name, so name order is roughly receipt order; created here in the reverse
    of name order (T02, T01, T00), listed T00, T01, T02; other files are not landing files."""
    landing = tmp_path / "landing"
    landing.mkdir()
    names = [f"stripe-20261001T0{h}-host-1-abcd.jsonl" for h in (2, 1, 0)]
    for name in names:
        (landing / name).write_bytes(b"")
    (landing / "notes.txt").write_bytes(b"")
    assert [p.name for p in landing_files(landing)] == sorted(names)


def test_a_record_is_one_ascii_line_of_version_utc_time_kept_headers_and_body(tmp_path: Path):
    """inbox's record format, byte for byte: `v` 1; `received_at` in UTC with microseconds
    (02:00:01.000005 at +02:00 is 00:00:01.000005Z); only stripe-signature and content-type kept;
    the body as text, non-ASCII escaped (é is \\u00e9), so the line is ASCII and ends in one newline."""
    plus2 = timezone(timedelta(hours=2))
    record = encode_record('{"id":"é"}', {"stripe-signature": "t=1,v1=ab", "content-type": "application/json",
                                           "user-agent": "Stripe/1.0"}, datetime(2026, 10, 1, 2, 0, 1, 5, tzinfo=plus2))
    assert record == (
        b'{"v":1,"received_at":"2026-10-01T00:00:01.000005+00:00",'
        b'"headers":{"stripe-signature":"t=1,v1=ab","content-type":"application/json"},'
        b'"body":"{\\"id\\":\\"\\u00e9\\"}"}\n')


def test_a_writer_moves_to_a_new_file_when_the_utc_hour_turns(tmp_path: Path):
    """One file per process per UTC hour: receipts at 00:59:59.999999 and 01:00:00 go to the T00 and
    the T01 file, one record each; a third at 01:30 joins the T01 file."""
    stamps = iter([datetime(2026, 10, 1, 0, 59, 59, 999_999, tzinfo=UTC), datetime(2026, 10, 1, 1, 0, tzinfo=UTC),
                   datetime(2026, 10, 1, 1, 30, tzinfo=UTC)])
    landing = tmp_path / "landing"
    writer = LandingWriter(landing, clock=lambda: next(stamps))
    paths = [writer.append(sample_body(f"evt_{n}"), {})[0] for n in range(3)]
    writer.close()
    assert [p.name.split("-")[1] for p in paths] == ["20261001T00", "20261001T01", "20261001T01"]
    assert [len(p.read_bytes().splitlines()) for p in landing_files(landing)] == [1, 2]


# -- signature ---------------------------------------------------------------------------------------

def _v1(body: str, timestamp: int) -> str:
    return signature(body, timestamp=timestamp).split("v1=")[1]


def test_a_timestamp_of_thirteen_digits_is_malformed_not_merely_in_the_future():
    """A Unix time in canonical digits has at most 12 (`[1-9][0-9]{0,11}`): t=1000000000000 (13 digits),
    even correctly signed, is a malformed header, not a fresh-or-stale question."""
    body = sample_body()
    t = 10**12
    with pytest.raises(Rejected) as err:
        verify(body.encode(), f"t={t},v1={_v1(body, t)}", [SECRET.encode()], now=NOW, tolerance=300)
    assert (err.value.status, err.value.reason) == (400, "malformed_signature_header")


def test_a_v1_of_sixty_three_hex_digits_is_no_v1_at_all():
    """A well-formed v1 is exactly 64 lower-case hex digits (a SHA-256): one digit short is skipped,
    so a header whose only v1 has 63 digits has no v1 (the mutants23 test covers 65)."""
    body = sample_body()
    with pytest.raises(Rejected) as err:
        verify(body.encode(), f"t={NOW},v1={_v1(body, NOW)[:63]}", [SECRET.encode()], now=NOW, tolerance=300)
    assert (err.value.status, err.value.reason) == (400, "no_v1_signature")


def test_spaces_around_items_and_values_and_items_without_a_value_are_tolerated():
    """parse_header strips each item and each value, and skips an item without `=` (neither `t` nor
    `v1`): ` t= <now> , junk, t , v1= <hex> ` is t=<now> with one v1, and verifies."""
    body = sample_body()
    header = f" t= {NOW} , junk, t , v1= {_v1(body, NOW)} "
    assert verify(body.encode(), header, [SECRET.encode()], now=NOW, tolerance=300) == SignatureHeader(
        NOW, (_v1(body, NOW),))


def test_a_forged_signature_is_a_mismatch_whatever_its_timestamp():
    """The signature is checked before the time: a request no secret signed is counted as
    `signature_mismatch`, also when its (unsigned) timestamp is an hour old."""
    body = sample_body()
    header = signature(body, secret="whsec_someone_else", timestamp=NOW - 3600)
    with pytest.raises(Rejected) as err:
        verify(body.encode(), header, [SECRET.encode()], now=NOW, tolerance=300)
    assert (err.value.status, err.value.reason) == (400, "signature_mismatch")


# -- receiver ------------------------------------------------------------------------------------------

def test_the_default_body_limit_is_one_mebibyte_exactly(tmp_path: Path):
    """Without a configured limit, a signed event of exactly 1 MiB (1,048,576 bytes) is accepted and
    one byte more is 413 (the body is padded with a `description` to the exact size)."""
    landing = tmp_path / "landing"
    client = TestClient(create_app(ReceiverSettings(secrets=[SECRET.encode()], landing_dir=landing, clock=lambda: NOW)))
    stub = body_of(event("evt_big", "invoice.finalized", NOW, {**invoice("in_1"), "description": ""}))
    for size, status in ((1024 * 1024, 200), (1024 * 1024 + 1, 413)):
        body = stub.replace('"description":""', '"description":"' + "x" * (size - len(stub)) + '"')
        assert len(body.encode()) == size
        assert post(client, body, signature(body, timestamp=NOW)).status_code == status
    assert len(landed_bodies(landing)) == 1


def test_settings_default_to_a_ten_second_body_deadline_and_never_show_their_secrets(tmp_path: Path):
    """The receiver's documented defaults (tolerance 300 s, body 1 MiB within 10 s); the repr names how
    many secrets there are, never their value."""
    settings = ReceiverSettings(secrets=[SECRET.encode(), OLD_SECRET.encode()], landing_dir=tmp_path)
    assert (settings.tolerance_seconds, settings.max_body_bytes, settings.body_seconds) == (300, 1048576, 10.0)
    text = repr(settings)
    assert "<2 redacted>" in text
    assert "whsec_" not in text


def test_an_event_first_fetched_by_repair_keeps_repair_as_its_source_and_counts_later_webhooks(tmp_path: Path, con):  # noqa: F811
    """Repair stores evt_1 at 00:00:00 (as repair does: key `repair:evt_1`, no file); the webhook for
    evt_1 lands at 00:00:05, with evt_2 at 00:00:06. evt_1: source of its first receipt `repair`, 2
    receipts, first 00:00:00, last 00:00:05; evt_2: `webhook`, 1. The landing pass adds 2 receipts
    and 1 new event (evt_2), so 1 duplicate. Totals: 2 events, 3 receipts, 1 first seen by repair."""
    t0 = datetime(2026, 10, 1, tzinfo=UTC)
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _t_repair AS
           SELECT 'repair:evt_1' AS receipt_key, 'evt_1' AS event_id, 'repair' AS source,
                  CAST(? AS TIMESTAMPTZ) AS received_at, CAST(NULL AS VARCHAR) AS landing_file,
                  CAST(NULL AS BIGINT) AS line_no, CAST(? AS JSON) AS raw""",
        [t0, sample_body("evt_1")],
    )
    assert insert_receipts(con, "_t_repair", t0) == (1, 1)
    stamps = iter([t0 + timedelta(seconds=5), t0 + timedelta(seconds=6)])
    landing = tmp_path / "landing"
    writer = LandingWriter(landing, clock=lambda: next(stamps))
    writer.append(sample_body("evt_1"), {})
    writer.append(sample_body("evt_2"), {})
    writer.close()
    stats = land_directory(con, landing)
    assert (stats.receipts_added, stats.events_added, stats.duplicate_receipts) == (2, 1, 1)
    assert con.execute(
        "SELECT event_id, source, receipt_count, first_received_at, last_received_at FROM stripe_webhook_events"
        " ORDER BY event_id").fetchall() == [
        ("evt_1", "repair", 2, t0, t0 + timedelta(seconds=5)),
        ("evt_2", "webhook", 1, t0 + timedelta(seconds=6), t0 + timedelta(seconds=6))]
    assert event_counts(con) == {"events": 2, "receipts": 3, "events_from_repair": 1}


def test_epoch_sql_reads_a_time_inside_the_range_bounds_included_and_null_outside(con):  # noqa: F811
    """inbox.epoch_sql: [0, MAX_CREATED] in seconds is a timestamp, bounds included (0 is 1970-01-01,
    253402300799 is 9999-12-31 23:59:59 UTC); -1 and 253402300800 are NULL, not a failed query."""
    rows = con.execute(
        f"SELECT {epoch_sql('x')} FROM (VALUES (1, -1), (2, 0), (3, 253402300799), (4, 253402300800)) t(n, x)"
        " ORDER BY n").fetchall()
    assert [r[0] for r in rows] == [None, datetime(1970, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
                                    None]


def test_a_record_cut_back_after_a_full_disk_is_made_durable_and_an_emptied_file_leaves_its_folder(
    tmp_path: Path, con, monkeypatch  # noqa: F811
):
    """inbox `_cut_back`: a write that fails part-way (10 bytes written, then ENOSPC) is cut back to the
    file's last whole record and the cut is fsync'd; when that leaves the file empty (its first
    record failed), the file is removed and the removal synced into the folder.
    fsyncs seen, as (kind, size): first record failing: the new empty file (file, 0) and its folder
    (dir) when created, then the cut (file, 0) and, after the unlink, the folder (dir) again.
    With a whole record of S bytes in the file, a failing second record: only the cut, (file, S)."""
    from metering.webhooks import inbox

    landing = tmp_path / "landing"
    landing.mkdir()   # an existing folder: no parent folder is synced for it
    real_fsync, real_write = os.fsync, os.write
    calls: list[tuple[str, int | None]] = []
    disk = {"full": True, "wrote": False}

    def recording(fd: int) -> None:
        st = os.fstat(fd)
        calls.append(("dir", None) if stat.S_ISDIR(st.st_mode) else ("file", st.st_size))
        real_fsync(fd)

    def part_then_full(fd: int, data) -> int:
        if not disk["full"]:
            return real_write(fd, data)
        if not disk["wrote"]:
            disk["wrote"] = True
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(inbox.os, "fsync", recording)
    monkeypatch.setattr(inbox.os, "write", part_then_full)
    writer = LandingWriter(landing)
    with pytest.raises(OSError):
        writer.append(sample_body("evt_0"), {})
    assert calls == [("file", 0), ("dir", None), ("file", 0), ("dir", None)]
    assert landing_files(landing) == []

    disk["full"] = False
    writer.append(sample_body("evt_1"), {})
    size = writer.current_path.stat().st_size
    calls.clear()
    disk.update(full=True, wrote=False)
    with pytest.raises(OSError):
        writer.append(sample_body("evt_2"), {})
    assert calls == [("file", size)]
    disk["full"] = False
    writer.append(sample_body("evt_3"), {})
    writer.close()
    stats = land_directory(con, landing)
    assert (stats.records_read, stats.bad_records, stats.torn_files) == (2, 0, 0)
    assert con.execute("SELECT list(event_id ORDER BY event_id) FROM stripe_webhook_events").fetchone()[0] == [
        "evt_1", "evt_3"]


def test_a_reject_passes_through_a_generator_context_manager_as_itself():
    """`Rejected` was a frozen dataclass (until the thirtieth session; no code path reached this then),
    and a frozen dataclass refuses every attribute assignment, `__traceback__` included;
    `contextlib.contextmanager.__exit__` sets `exc.__traceback__` on the exception it re-raises. So a
    reject raised inside any `with` over a generator context manager (a timing or logging helper
    around `verify`, say) came out as a FrozenInstanceError, a 500, not the 400 it is. Expected: the
    same Rejected(400, ...) comes out."""

    @contextlib.contextmanager
    def around():
        yield

    body = sample_body()
    with pytest.raises(Rejected) as err:
        with around():
            verify(body.encode(), None, [SECRET.encode()], now=NOW, tolerance=300)
    assert (err.value.status, err.value.reason) == (400, "missing_signature_header")


def test_read_new_records_reports_each_torn_file_with_its_torn_byte_count(tmp_path: Path):
    """A file ending in the 13 bytes `{"v":1,"recei` (no line end) has 13 torn bytes; its one whole
    record is read and the position stops before the torn part (the file's size less 13)."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    writer.append(sample_body("evt_1"), {})
    writer.close()
    whole = writer.current_path.stat().st_size
    with open(writer.current_path, "a") as fh:
        fh.write('{"v":1,"recei')
    landed = read_new_records(landing, {})
    name = writer.current_path.name
    assert (landed.records.height, landed.torn_bytes, landed.torn_files) == (1, {name: 13}, 1)
    assert landed.positions == {name: FilePosition(whole, 1)}
