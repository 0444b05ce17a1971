"""A real uvicorn receiver process: killed with SIGKILL mid-stream it loses nothing it acked (I11,
durable before ack); it caps its connections; with --exit-with-parent it ends when its parent is killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from metering import warehouse
from metering.webhooks.events import land_directory
from webhook_payloads import SECRET, body_of, event, invoice, signature


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_receiver(landing: Path, port: int, env: dict[str, str], log: Path, *options: str) -> subprocess.Popen:
    with open(log, "ab") as log_file:  # a file, not a pipe: a full pipe would block the server
        proc = subprocess.Popen(
            [sys.executable, "-c", "from metering.cli import main; main()", "--log-json", "webhooks", "serve",
             "--port", str(port), "--landing", str(landing), *options],
            env=env, stdout=log_file, stderr=log_file,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"receiver exited: {log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("receiver did not come up")


def stream(port: int, prefix: str, acked: list[str], stop: threading.Event) -> None:
    with httpx.Client(timeout=5) as client:
        i = 0
        while not stop.is_set():
            event_id = f"evt_{prefix}_{i}"
            body = body_of(event(event_id, "invoice.updated", 1_790_000_000 + i, invoice(f"in_{prefix}_{i}")))
            try:
                response = client.post(
                    f"http://127.0.0.1:{port}/webhooks/stripe", content=body,
                    headers={"stripe-signature": signature(body), "content-type": "application/json"},
                )
            except httpx.HTTPError:
                return  # the receiver is gone: Stripe would retry this one later
            if response.status_code == 200:
                acked.append(event_id)
            i += 1


def test_sigkill_mid_stream_loses_no_acknowledged_event(tmp_path: Path):
    landing = tmp_path / "landing"
    env = {**os.environ, "STRIPE_WEBHOOK_SECRET": f"whsec_rotated_out_000,{SECRET}"}
    port, other_port = free_port(), free_port()
    proc = start_receiver(landing, port, env, tmp_path / "receiver1.log")
    # a second receiver process on the same landing folder, running throughout
    other = start_receiver(landing, other_port, env, tmp_path / "receiver_other.log")
    acked: list[list[str]] = [[] for _ in range(6)]
    stop = threading.Event()
    threads = [threading.Thread(target=stream, args=(port if n < 4 else other_port, str(n), acked[n], stop))
               for n in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while sum(map(len, acked[:4])) < 100 and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)  # while the senders are still posting
    proc.wait()
    stop.set()
    for t in threads:
        t.join()
    other.send_signal(signal.SIGTERM)
    other.wait(timeout=30)
    acknowledged = {event_id for ids in acked for event_id in ids}
    assert len(acknowledged) >= 100

    # a restarted receiver (same folder) keeps working and never appends to the dead process's file
    port2 = free_port()
    proc2 = start_receiver(landing, port2, env, tmp_path / "receiver2.log")
    try:
        after: list[str] = []
        stop2 = threading.Event()
        stop2_timer = threading.Timer(0.5, stop2.set)
        stop2_timer.start()
        stream(port2, "after", after, stop2)
    finally:
        proc2.send_signal(signal.SIGTERM)
        proc2.wait(timeout=30)
    assert after

    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        stats = land_directory(con, landing)
        landed = {row[0] for row in con.execute("SELECT event_id FROM stripe_webhook_events").fetchall()}
    assert acknowledged | set(after) <= landed
    assert stats.bad_records == 0
    # the only records not acknowledged are those in flight at the kill (at most one per sender)
    assert len(landed - acknowledged - set(after)) <= 4
    assert {f"evt_4_{i}" for i in range(len(acked[4]))} <= landed  # the other process's stream
    assert stats.records_read == stats.receipts_added
    # logs are structured and carry neither the secret nor signatures
    log_text = "".join((tmp_path / f"receiver{n}.log").read_text() for n in ("1", "2", "_other"))
    assert '"message": "webhook landed"' in log_text
    assert "whsec_" not in log_text and "v1=" not in log_text


def _once_released(ask: Callable[[], httpx.Response]) -> httpx.Response:
    """`ask()`, again while it answers 503: the server notices a closed connection a moment after it
    closes (as Stripe's retries would find)."""
    deadline = time.monotonic() + 10
    while (response := ask()).status_code == 503:
        assert time.monotonic() < deadline, "connections never released"
        time.sleep(0.05)
    return response


def test_a_request_beyond_the_connection_cap_gets_503_and_is_served_once_one_closes(tmp_path: Path):
    """Without a cap every sender's connection was served at once, however many: a flood held memory
    for each. Beyond `--max-connections` a request gets 503, which Stripe retries, and nothing lands."""
    port = free_port()
    env = {**os.environ, "STRIPE_WEBHOOK_SECRET": SECRET}
    proc = start_receiver(tmp_path / "landing", port, env, tmp_path / "receiver.log", "--max-connections", "2")
    body = body_of(event("evt_capped", "invoice.updated", 1_790_000_000, invoice("in_capped")))
    headers = {"stripe-signature": signature(body), "content-type": "application/json"}
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(timeout=5) as first, httpx.Client(timeout=5) as second:
            # two kept-alive connections: the cap's two
            assert _once_released(lambda: first.get(f"{url}/healthz")).status_code == 200
            assert _once_released(lambda: second.get(f"{url}/healthz")).status_code == 200
            with httpx.Client(timeout=5) as third:
                assert third.post(f"{url}/webhooks/stripe", content=body, headers=headers).status_code == 503
        health = _once_released(lambda: httpx.get(f"{url}/healthz", timeout=5)).json()
        assert health["accepted"] == 0    # the refused request landed nothing
        assert httpx.post(f"{url}/webhooks/stripe", content=body, headers=headers, timeout=5).status_code == 200
    finally:
        proc.kill()
        proc.wait()


# Starts each command as its own child, with its log in a file, prints the children's PIDs, waits.
_PARENT = """
import json, subprocess, sys, time
pids = []
for command, log in json.loads(sys.argv[1]):
    with open(log, "ab") as fh:
        pids.append(subprocess.Popen(command, stdout=fh, stderr=fh).pid)
print(json.dumps(pids), flush=True)
time.sleep(600)
"""


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_receiver_started_with_exit_with_parent_stops_when_its_parent_is_killed(tmp_path: Path):
    """`metering demo` starts its receiver with --exit-with-parent. A demo killed with SIGKILL runs no
    clean-up, and its receiver used to listen on for ever, orphaned: the child started without the
    flag, beside it, shows that it still would."""
    env = {**os.environ, "STRIPE_WEBHOOK_SECRET": SECRET}
    ports = {"with": free_port(), "without": free_port()}
    commands = [([sys.executable, "-m", "metering.cli", "--log-json", "webhooks", "serve", "--port", str(port),
                  "--landing", str(tmp_path / name), *(["--exit-with-parent"] if name == "with" else [])],
                 str(tmp_path / f"{name}.log"))
                for name, port in ports.items()]
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, json.dumps(commands)], env=env,
                              stdout=subprocess.PIPE, text=True)
    children = json.loads(parent.stdout.readline())
    try:
        deadline = time.monotonic() + 30
        while not all(_answers(port) for port in ports.values()):
            assert time.monotonic() < deadline, "receivers did not come up"
            time.sleep(0.05)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        # shut down as on SIGTERM (uvicorn's last line), not killed
        while "Finished server process" not in (tmp_path / "with.log").read_text():
            assert time.monotonic() < deadline, "the receiver outlived its killed parent"
            time.sleep(0.1)
        assert not _answers(ports["with"])
        assert _answers(ports["without"])
    finally:
        parent.kill()
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
