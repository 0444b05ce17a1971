"""The receiver's limits on what a sender can hold: the request head's size and the body's time (I13:
oversized and malformed requests get a 4xx; a sender that never finishes must not hold the server)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from metering.webhooks.landing import landing_files
from metering.webhooks.receiver import ReceiverSettings, create_app
from test_webhook_receiver_crash import free_port, start_receiver
from webhook_payloads import SECRET, body_of, event, invoice, signature


@contextlib.contextmanager
def served_in_thread(app: Any) -> Iterator[int]:
    """The receiver app served by uvicorn on h11 (as `webhooks serve` runs it) in this process, on a free
    loopback port, which it yields once the server is up."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, http="h11"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_a_huge_request_head_is_refused_before_the_app(tmp_path: Path):
    """`webhooks serve` ran uvicorn on httptools, which buffers a request head of any size: a signed
    event carrying 256 KiB of one extra header was accepted (64 MiB were read whole). On h11 the
    server keeps at most 16 KiB of a head it has not seen the end of, answers 400 and closes; nothing
    lands, and the receiver goes on serving."""
    landing, port = tmp_path / "landing", free_port()
    env = {**os.environ, "STRIPE_WEBHOOK_SECRET": SECRET}
    proc = start_receiver(landing, port, env, tmp_path / "receiver.log")
    try:
        body = body_of(event("evt_big", "invoice.created", int(time.time()), invoice("in_big")))
        head = (f"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Stripe-Signature: {signature(body)}\r\nContent-Length: {len(body)}\r\n").encode()
        request = head + b"X-Pad: " + b"a" * 256 * 1024 + b"\r\n\r\n" + body.encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            with contextlib.suppress(ConnectionError):   # the server may close before it has all of it
                for at in range(0, len(request), 4096):
                    sock.sendall(request[at:at + 4096])
            answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400"), answer
        assert not any(p.stat().st_size for p in landing_files(landing))
        headers = {"stripe-signature": signature(body), "content-type": "application/json"}
        assert httpx.post(f"http://127.0.0.1:{port}/webhooks/stripe", content=body, headers=headers,
                          timeout=10).status_code == 200
    finally:
        proc.kill()
        proc.wait()


def test_a_body_that_stops_arriving_is_408_after_the_deadline(tmp_path: Path):
    """A sender that declares 200 bytes and sends 10 held its connection open for as long as it liked
    (25 s and counting in the audit; enough of them exhaust the descriptors). After `body_seconds` the
    receiver answers 408, counts the reject and lands nothing."""
    landing = tmp_path / "landing"
    app = create_app(ReceiverSettings(secrets=[SECRET.encode()], landing_dir=landing, body_seconds=0.5))
    with served_in_thread(app) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Stripe-Signature: t=1,v1=00\r\nContent-Length: 200\r\n\r\n" + b'{"id": "ev')
            started = time.monotonic()
            answer = sock.recv(4096)
            waited = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert 0.4 <= waited < 8
        assert b"body_timeout" in answer
        assert landing_files(landing) == []
