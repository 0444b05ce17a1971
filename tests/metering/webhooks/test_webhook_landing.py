"""Landing: landed files -> stripe_webhook_events, one row per event id, re-runs count nothing twice."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from metering import warehouse
from metering.webhooks.events import event_counts, land_directory
from metering.webhooks.inbox import LandingWriter
from metering.webhooks.landing import landing_dir, landing_files
from webhook_payloads import body_of, event, invoice


def clock(*stamps: str):
    it = iter(stamps)
    return lambda: datetime.fromisoformat(next(it))


@pytest.fixture
def con(tmp_path: Path):
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        yield con


def write(writer: LandingWriter, *bodies: str) -> None:
    for body in bodies:
        writer.append(body, {"stripe-signature": "t=1,v1=" + "0" * 64})


def test_default_landing_dir_is_under_data(isolated_env: Path, monkeypatch):
    assert landing_dir() == isolated_env / "landing" / "stripe"
    monkeypatch.setenv("METERING_STRIPE_LANDING", "/elsewhere")
    assert landing_dir() == Path("/elsewhere")


def test_one_row_per_event_first_receipt_kept_duplicates_counted(tmp_path: Path, con):
    landing = tmp_path / "landing"
    first = body_of(event("evt_1", "invoice.created", 100, invoice("in_1", status="draft"), pending_webhooks=2))
    again = body_of(event("evt_1", "invoice.created", 100, invoice("in_1", status="draft"), pending_webhooks=1))
    other = body_of(event("evt_2", "invoice.finalized", 200, invoice("in_1")))
    writer = LandingWriter(landing, clock=clock(
        "2026-10-01T00:00:01+00:00", "2026-10-01T00:00:02+00:00", "2026-10-01T00:00:03+00:00", "2026-10-01T01:00:00+00:00"))
    write(writer, first, other, again, again)
    assert len(landing_files(landing)) == 2  # one file per process per hour

    stats = land_directory(con, landing)
    assert (stats.records_read, stats.receipts_added, stats.events_added, stats.duplicate_receipts) == (4, 4, 2, 2)
    rows = con.execute(
        "SELECT event_id, type, created, object_id, object_type, api_version, livemode, receipt_count,"
        " first_received_at, last_received_at, source, raw->>'$.pending_webhooks' FROM stripe_webhook_events ORDER BY event_id"
    ).fetchall()
    utc = timezone.utc
    assert rows == [
        ("evt_1", "invoice.created", datetime.fromtimestamp(100, utc), "in_1", "invoice", "2025-03-31.basil", False, 3,
         datetime(2026, 10, 1, 0, 0, 1, tzinfo=utc), datetime(2026, 10, 1, 1, 0, 0, tzinfo=utc), "webhook", "2"),
        ("evt_2", "invoice.finalized", datetime.fromtimestamp(200, utc), "in_1", "invoice", "2025-03-31.basil", False, 1,
         datetime(2026, 10, 1, 0, 0, 2, tzinfo=utc), datetime(2026, 10, 1, 0, 0, 2, tzinfo=utc), "webhook", "1"),
    ]
    assert rows[0][11] == "2"  # the first receipt's raw JSON is the one kept

    # landing again reads nothing new and changes nothing
    again_stats = land_directory(con, landing)
    assert again_stats.records_read == 0
    assert event_counts(con) == {"events": 2, "receipts": 4, "events_from_repair": 0}


def test_records_appended_later_are_picked_up_from_the_stored_offset(tmp_path: Path, con):
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    write(writer, body_of(event("evt_1", "invoice.created", 1, invoice("in_1"))))
    assert land_directory(con, landing).receipts_added == 1
    write(writer, body_of(event("evt_2", "invoice.created", 2, invoice("in_2"))),
          body_of(event("evt_1", "invoice.created", 1, invoice("in_1"))))
    stats = land_directory(con, landing)
    assert (stats.records_read, stats.events_added, stats.duplicate_receipts) == (2, 1, 1)
    assert con.execute("SELECT sum(lines) FROM stripe_landing_offsets").fetchone()[0] == 3


def test_torn_last_record_is_skipped_and_everything_before_it_lands(tmp_path: Path, con):
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    write(writer, body_of(event("evt_1", "invoice.created", 1, invoice("in_1"))),
          body_of(event("evt_2", "invoice.created", 2, invoice("in_2"))))
    path = writer.current_path
    full = path.read_bytes()
    torn_line = full.split(b"\n")[1]
    path.write_bytes(full.split(b"\n")[0] + b"\n" + torn_line[: len(torn_line) // 2])  # crash mid-write
    stats = land_directory(con, landing)
    assert (stats.records_read, stats.events_added, stats.torn_files, stats.bad_records) == (1, 1, 1, 0)
    assert con.execute("SELECT list(event_id) FROM stripe_webhook_events").fetchone()[0] == ["evt_1"]
    # a later pass does not count the torn bytes as a record either
    assert land_directory(con, landing).records_read == 0


def test_a_corrupt_record_is_set_aside_with_a_reason_not_dropped(tmp_path: Path, con):
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    write(writer, body_of(event("evt_1", "invoice.created", 1, invoice("in_1"))))
    with open(writer.current_path, "a") as fh:
        fh.write("this is not json\n")
        fh.write(json.dumps({"v": 1, "received_at": "2026-10-01T00:00:00+00:00", "body": "{\"no\": 1}"}) + "\n")
    stats = land_directory(con, landing)
    assert (stats.records_read, stats.receipts_added, stats.bad_records) == (3, 1, 2)
    assert con.execute("SELECT list(reason ORDER BY line_no) FROM stripe_webhook_bad_records").fetchone()[0] == [
        "record_not_json", "body_not_an_event"]
    land_directory(con, landing)
    assert con.execute("SELECT count(*) FROM stripe_webhook_bad_records").fetchone()[0] == 2


@pytest.mark.parametrize(
    ("bad_body", "reason"),
    [
        (body_of(event("evt_big", "invoice.updated", 10**17, invoice("in_big"))), "event_created_out_of_range"),
        (body_of(event("evt_huge", "invoice.updated", 2**64, invoice("in_huge"))), "event_created_out_of_range"),
        (body_of(event("evt_neg", "invoice.updated", -1, invoice("in_neg"))), "event_created_out_of_range"),
        (body_of(event("evt_str", "invoice.updated", "soon", invoice("in_str"))), "event_created_out_of_range"),  # type: ignore[arg-type]
        ('{"id":"evt_no_type","created":1,"data":{"object":{}}}', "body_not_an_event"),
        ('{"id":"evt_no_obj","type":"invoice.updated","created":1,"data":{}}', "body_not_an_event"),
        ('{"id":"evt_sur","type":"x","created":1,"data":{"object":{"a":"\\ud800"}}}', "body_not_json"),
    ],
    ids=["created_1e17", "created_2_64", "created_negative", "created_text", "no_type", "no_data_object",
         "lone_surrogate"],
)
def test_a_record_that_cannot_be_stored_as_an_event_never_blocks_the_ones_around_it(
    tmp_path: Path, con, bad_body: str, reason: str
):
    """A poison record (written by an older receiver, or by hand) is set aside; landing moves on."""
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    write(writer, body_of(event("evt_before", "invoice.created", 1, invoice("in_1"))), bad_body,
          body_of(event("evt_after", "invoice.created", 2, invoice("in_2"))))
    stats = land_directory(con, landing)
    assert (stats.records_read, stats.receipts_added, stats.bad_records) == (3, 2, 1)
    assert con.execute("SELECT list(event_id ORDER BY event_id) FROM stripe_webhook_events").fetchone()[0] == [
        "evt_after", "evt_before"]
    assert con.execute("SELECT line_no, reason FROM stripe_webhook_bad_records").fetchall() == [(2, reason)]
    assert con.execute("SELECT lines FROM stripe_landing_offsets").fetchone()[0] == 3

    write(writer, body_of(event("evt_later", "invoice.created", 3, invoice("in_3"))))
    assert land_directory(con, landing).events_added == 1
    assert con.execute("SELECT count(*) FROM stripe_webhook_bad_records").fetchone()[0] == 1


def test_two_writers_in_one_folder_never_share_a_file(tmp_path: Path, con):
    landing = tmp_path / "landing"
    a, b = LandingWriter(landing), LandingWriter(landing)
    for i in range(50):
        write(a if i % 2 else b, body_of(event(f"evt_{i}", "invoice.created", i, invoice(f"in_{i}"))))
    assert len(landing_files(landing)) == 2
    assert land_directory(con, landing).events_added == 50


def test_a_writer_that_failed_mid_write_moves_to_a_new_file(tmp_path: Path):
    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    write(writer, body_of(event("evt_1", "invoice.created", 1, invoice("in_1"))))
    first = writer.current_path
    import os
    os.close(writer._fd)  # simulate the descriptor failing under us
    with pytest.raises(OSError):
        write(writer, body_of(event("evt_2", "invoice.created", 2, invoice("in_2"))))
    write(writer, body_of(event("evt_3", "invoice.created", 3, invoice("in_3"))))
    assert writer.current_path != first


def test_a_full_disk_leaves_whole_records_and_no_empty_files(tmp_path: Path, con):
    """A disk full (here files may not grow past a limit: writes fail with EFBIG as with ENOSPC): every
    failed delivery used to leave a new empty landing file (20 deliveries, 20 files), and the file that
    failed could end in a partial record. The failed append is cut back and an empty file removed."""
    import subprocess
    import sys

    landing = tmp_path / "landing"
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from webhook_payloads import body_of, event, invoice
from metering.webhooks.inbox import LandingWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
writer = LandingWriter({str(landing)!r})
body = body_of(event("evt_0", "invoice.created", 1, invoice("in_0")))
writer.append(body, {{}})
resource.setrlimit(resource.RLIMIT_FSIZE, (len(body) * 5 // 2, len(body) * 5 // 2))
results = []
for i in range(1, 25):
    try:
        writer.append(body_of(event(f"evt_{{i}}", "invoice.created", i, invoice(f"in_{{i}}"))), {{}})
        results.append("ok")
    except OSError as exc:
        results.append(exc.errno)
print(results.count("ok"), len(results) - results.count("ok"))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    appended, failed = map(int, done.stdout.split())
    assert appended >= 1 and failed >= 20
    files = landing_files(landing)
    assert len(files) == 1 and all(f.stat().st_size > 0 for f in files)
    stats = land_directory(con, landing)
    assert (stats.records_read, stats.torn_files, stats.bad_records) == (1 + appended, 0, 0)


def test_a_whole_record_whose_fsync_failed_is_never_cut_off_under_a_reader(tmp_path: Path, con, monkeypatch):
    """Review: the record reached the file whole and only its fsync failed; a landing run read it
    meanwhile and stored an offset past it. Cutting the file back put the next records below that
    offset, and they were never landed. Such a file is left as it is and the writer moves on."""
    import os

    from metering.webhooks import inbox

    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    write(writer, body_of(event("evt_a", "invoice.created", 1, invoice("in_a"))))
    real_fsync = os.fsync

    calls = []

    def land_then_fail(fd: int) -> None:   # a landing run reads the file before the fsync fails, once
        calls.append(fd)
        if len(calls) > 1:
            return real_fsync(fd)
        land_directory(con, landing)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(inbox.os, "fsync", land_then_fail)
    with pytest.raises(OSError):
        write(writer, body_of(event("evt_b", "invoice.created", 2, invoice("in_b"))))
    monkeypatch.setattr(inbox.os, "fsync", real_fsync)
    write(writer, body_of(event("evt_c", "invoice.created", 3, invoice("in_c"))),
          body_of(event("evt_d", "invoice.created", 4, invoice("in_d"))))
    land_directory(con, landing)
    landed = con.execute("SELECT list(event_id ORDER BY event_id) FROM stripe_webhook_events").fetchone()[0]
    assert landed == ["evt_a", "evt_b", "evt_c", "evt_d"]


def test_a_failed_fsync_of_a_new_file_leaks_no_descriptor_and_leaves_no_file(tmp_path: Path, con, monkeypatch):
    """The sync after creating an hour's landing file fails (EIO) on every delivery: each one left its
    descriptor open and an empty file behind (50 deliveries: 50 descriptors, until accept() failed).
    Once the disk recovers, the next delivery lands as usual."""
    import os

    from metering.webhooks import inbox

    landing = tmp_path / "landing"
    writer = LandingWriter(landing)
    real_fsync = os.fsync

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    descriptors = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(inbox.os, "fsync", broken)
    for n in range(20):
        with pytest.raises(OSError):
            write(writer, body_of(event(f"evt_{n}", "invoice.created", n, invoice(f"in_{n}"))))
    monkeypatch.setattr(inbox.os, "fsync", real_fsync)
    assert len(os.listdir("/proc/self/fd")) == descriptors
    assert landing_files(landing) == []
    write(writer, body_of(event("evt_ok", "invoice.created", 99, invoice("in_ok"))))
    assert land_directory(con, landing).records_read == 1


def test_folders_made_for_the_landing_file_are_synced_into_their_parents(tmp_path: Path, synced_paths):
    """The first delivery makes the landing folder (and any missing above it): its file and the folder's
    entry for it were fsync'd, the folder's own entry in its parent was not, so a power cut could lose
    the folder with every acknowledged record in it. Each new folder is synced into its parent now;
    one that exists already is not synced again."""
    landing = tmp_path / "spool" / "landing" / "stripe"
    write(LandingWriter(landing), body_of(event("evt_1", "invoice.created", 1, invoice("in_1"))))
    folders = [p for p in synced_paths if p.is_dir()]
    assert folders[:3] == [tmp_path, tmp_path / "spool", tmp_path / "spool" / "landing"]
    assert set(folders[3:]) == {landing}   # the new file's entry, in its folder
    synced_paths.clear()
    write(LandingWriter(landing), body_of(event("evt_2", "invoice.created", 2, invoice("in_2"))))
    assert {p for p in synced_paths if p.is_dir()} == {landing}


def test_a_landing_file_removed_while_listed_is_skipped(tmp_path: Path, con, monkeypatch):
    """The receiver removes an empty landing file after a failed delivery (a full disk), which can
    happen between a landing run's listing and its reading of the folder: the run (and the sensor's
    size check) failed with FileNotFoundError instead of skipping the file."""
    from metering.webhooks import landing as landing_module

    landing = tmp_path / "landing"
    write(LandingWriter(landing), body_of(event("evt_1", "invoice.created", 1, invoice("in_1"))))
    gone = landing / "stripe-20260101T00-gone-0000.jsonl"
    listed = landing_files(landing)
    monkeypatch.setattr(landing_module, "landing_files", lambda directory: [gone, *listed])
    assert landing_module.landing_sizes(landing) == {p.name: p.stat().st_size for p in listed}
    assert landing_module.read_new_records(landing, {}).records.height == 1
