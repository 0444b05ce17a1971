"""Measure the webhook path (not a test): `python tests/metering/webhooks/bench_webhooks.py [N_INVOICES]`.

1. receiver: sequential signed POSTs to a real uvicorn receiver on loopback (each fsync'd before ack);
2. landing: N_INVOICES x 6 events (plus 5 % duplicates) from landing files into stripe_webhook_events;
3. state: rebuild stripe_invoices / lines / subscriptions / payment attempts from them.
"""

from __future__ import annotations

import os
import random
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import uvicorn

sys.path.insert(0, str(Path(__file__).parent))
from webhook_payloads import SECRET, body_of, dunning_lifecycle, signature  # noqa: E402

from metering import warehouse  # noqa: E402
from metering.webhooks.events import land_directory  # noqa: E402
from metering.webhooks.inbox import LandingWriter  # noqa: E402
from metering.webhooks.receiver import ReceiverSettings, create_app  # noqa: E402
from metering.webhooks.state import rebuild_state  # noqa: E402


def events_for(n: int) -> list[dict]:
    out = []
    for i in range(n):
        for e in dunning_lifecycle(f"in_{i:07d}")[1:7]:  # invoice events only
            e = {**e, "id": f"{e['id']}_{i:07d}"}
            out.append(e)
    return out


def bench_receiver(root: Path, count: int = 1000) -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app = create_app(ReceiverSettings(secrets=[SECRET.encode()], landing_dir=root / "recv"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    payloads = [body_of(e) for e in events_for(count // 6 + 1)][:count]
    with httpx.Client() as client:
        start = time.perf_counter()
        for body in payloads:
            r = client.post(f"http://127.0.0.1:{port}/webhooks/stripe", content=body,
                            headers={"stripe-signature": signature(body)})
            assert r.status_code == 200
        elapsed = time.perf_counter() - start
    server.should_exit = True
    thread.join()
    return count / elapsed


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    root = Path(tempfile.mkdtemp(prefix="bench_webhooks_"))
    print(f"receiver: {bench_receiver(root):,.0f} acknowledged events/s (sequential, fsync per event)")
    events = events_for(n)
    rng = random.Random(7)
    delivered = events + rng.sample(events, len(events) // 20)
    rng.shuffle(delivered)
    writer = LandingWriter(root / "landing")
    for e in delivered:
        writer.append(body_of(e), {})
    writer.close()
    with warehouse.open_warehouse(root / "w.duckdb") as con:
        start = time.perf_counter()
        stats = land_directory(con, root / "landing")
        landed = time.perf_counter() - start
        start = time.perf_counter()
        counts = rebuild_state(con)
        rebuilt = time.perf_counter() - start
    print(f"landing: {stats.records_read:,} records -> {stats.events_added:,} events in {landed:.2f} s "
          f"({stats.records_read / landed:,.0f} records/s)")
    print(f"state: {counts} in {rebuilt:.2f} s")


if __name__ == "__main__":
    os.environ.setdefault("METERING_LOG_LEVEL", "WARNING")
    main()
