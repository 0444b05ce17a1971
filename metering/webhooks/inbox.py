"""The durable inbox: verified webhook deliveries appended to landing files, fsync'd before the ack.

Layout and record format (the contract between the receiver and `metering.webhooks.landing`):

- One file per receiver process per UTC hour:
  `stripe-<YYYYMMDD>T<HH>-<host>-<pid>-<nonce>.jsonl` directly in the landing folder. The random
  `nonce` is drawn at process start, so a restarted process (even one reusing a pid) never appends
  to a file whose last record a crash may have torn. Several processes therefore never share a
  file, and records cannot interleave.
- One JSON line per delivery, written with a single `os.write` on an `O_APPEND` descriptor and
  fsync'd before the receiver answers 2xx:
  `{"v": 1, "received_at": "<ISO-8601 UTC, microseconds>", "headers": {...}, "body": "<raw body>"}`.
  The body is stored as the exact text Stripe signed (it is valid UTF-8 by the time it lands);
  `json.dumps` escapes newlines, so a record is exactly one line. The only headers kept are
  `stripe-signature` (so a record can be re-verified later) and `content-type`.
- A record without its trailing newline is a torn write from a crash: it was never acknowledged,
  and readers skip it.
- When a file is created, its directory is fsync'd too, so the new name survives a power cut
  (and so is each folder made for it, into its parent).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets as _secrets
import socket
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path

from metering import config, files

LANDING_ENV = "METERING_STRIPE_LANDING"
FILE_PREFIX = "stripe-"
FILE_SUFFIX = ".jsonl"
RECORD_VERSION = 1
KEPT_HEADERS = ("stripe-signature", "content-type")
# An event's `created` must be a whole number of epoch seconds in [0, MAX_CREATED] (the end of year
# 9999): the receiver refuses anything else, and landing sets such a record aside, because the
# warehouse stores `created` as a timestamp and one unstorable value would block the whole batch.
MAX_CREATED = 253_402_300_799


def epoch_sql(expr: str) -> str:
    """SQL for the timestamp of `expr` (BIGINT epoch seconds), NULL outside [0, MAX_CREATED]: a time
    nested in an object is read as any field that does not fit its type, where one out of DuckDB's
    range (`next_payment_attempt` 10^15) failed the whole state rebuild."""
    return f"CASE WHEN {expr} BETWEEN 0 AND {MAX_CREATED} THEN to_timestamp({expr}) END"


def landing_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The landing folder: explicit, else `METERING_STRIPE_LANDING`, else `data/landing/stripe/`."""
    return config.resolve_path(explicit, LANDING_ENV, lambda: config.data_dir() / "landing" / "stripe")


def encode_record(body: str, headers: Mapping[str, str], received_at: datetime) -> bytes:
    """One landing record as a single ASCII line ending in `\\n`."""
    record = {
        "v": RECORD_VERSION,
        "received_at": received_at.astimezone(timezone.utc).isoformat(timespec="microseconds"),
        "headers": {k: headers[k] for k in KEPT_HEADERS if k in headers},
        "body": body,
    }
    return (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


class LandingWriter:
    """Appends records to this process's landing file for the current hour; thread-safe."""

    def __init__(self, directory: Path, *, clock: Callable[[], datetime] | None = None) -> None:
        self.directory = Path(directory)
        self._clock = clock or (lambda: datetime.now(timezone.utc))
        host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"
        self._stem = f"{host}-{os.getpid()}-{_secrets.token_hex(4)}"
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._hour: str | None = None
        self.current_path: Path | None = None

    def _open_for(self, hour: str) -> int:
        if self._fd is not None and self._hour == hour:
            return self._fd
        self.close()
        files.make_dirs(self.directory)
        path = self.directory / f"{FILE_PREFIX}{hour}-{self._stem}{FILE_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.fsync(fd)
            files.sync(self.directory)
        except BaseException:
            # not yet ours to cut back: release it here (a failed fsync on every delivery leaked one
            # descriptor each until accept() failed), and remove it if it holds no record
            with contextlib.suppress(OSError):
                if os.fstat(fd).st_size == 0:
                    path.unlink(missing_ok=True)
            os.close(fd)
            raise
        self._fd, self._hour, self.current_path = fd, hour, path
        return fd

    def append(self, body: str, headers: Mapping[str, str]) -> tuple[Path, datetime]:
        """Write one record durably; returns (file, receipt time). Raises OSError on any failure."""
        with self._lock:
            received_at = self._clock().astimezone(timezone.utc)   # the file's hour is a UTC hour
            data = encode_record(body, headers, received_at)
            start: int | None = None
            view = memoryview(data)
            try:
                fd = self._open_for(received_at.strftime("%Y%m%dT%H"))
                start = os.fstat(fd).st_size
                while view:  # a regular-file write is whole unless the disk is full or a signal hits
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except BaseException:
                # only a record that never reached the file whole is cut off: a whole one (its fsync
                # failed) may already have been read by a landing run, whose stored offset is past it
                self._cut_back(start if view else None)
                raise
            assert self.current_path is not None
            return self.current_path, received_at

    def _cut_back(self, start: int | None) -> None:
        """After a failed append that left at most part of its record: cut the file back to `start` (its
        last whole record; no reader is past it, as a partial record has no line end) so it can go on
        being used, and remove it if that leaves it empty (a full disk used to leave one empty file per
        failed delivery). Otherwise (`start` None: the record is whole, or the cut fails) the file is
        never appended to again (a new file name), as a reader may have read up to its end."""
        path, fd = self.current_path, self._fd
        try:
            if fd is None or start is None:
                raise OSError("nothing to cut back")
            os.ftruncate(fd, start)
            os.fsync(fd)
            if start == 0 and path is not None:
                self.close()
                path.unlink(missing_ok=True)
                files.sync(self.directory)
        except OSError:
            self.close()
            self._stem = self._stem.rsplit("-", 1)[0] + "-" + _secrets.token_hex(4)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:  # already broken: nothing left to release
                pass
        self._fd = self._hour = None
