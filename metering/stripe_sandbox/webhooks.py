"""Webhook delivery: sign like Stripe and POST each event to every matching endpoint, retrying
failed deliveries a bounded number of times (delays from ``SandboxConfig.webhook_retry_delays``).

``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "{t}.{body}")>``, ``t`` in real time
(receivers check it against their own wall clock).
"""

from __future__ import annotations

import hashlib
import hmac
import heapq
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from .store import State


def sign(body: bytes, secret: str, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def endpoint_wants(endpoint: dict[str, Any], event_type: str) -> bool:
    if endpoint["status"] != "enabled":
        return False
    return any(e == "*" or e == event_type for e in endpoint["enabled_events"])


class Deliverer:
    """A background thread with a time-ordered queue of deliveries."""

    def __init__(self, state: State, workers: int = 4) -> None:
        self.state = state
        self.busy = 0
        self.queue: list[tuple[float, int, str, str, int]] = []  # due, seq, event, endpoint, attempt
        self.cond = threading.Condition()
        self.log: list[dict[str, Any]] = []
        self.seq = 0
        self.stopped = False
        # a few workers, as Stripe delivers concurrently (and without ordering guarantees)
        self.threads = [
            threading.Thread(target=self._run, name=f"stripe-sandbox-webhooks-{i}", daemon=True) for i in range(workers)
        ]
        for thread in self.threads:
            thread.start()

    def enqueue(self, event: dict[str, Any]) -> None:
        """Called (under the state lock) for each new event."""
        endpoints = [e for e in self.state.objects["webhook_endpoint"].values() if endpoint_wants(e, event["type"])]
        event["pending_webhooks"] = len(endpoints)
        with self.cond:
            for endpoint in endpoints:
                self.seq += 1
                heapq.heappush(self.queue, (time.monotonic(), self.seq, event["id"], endpoint["id"], 1))
            self.cond.notify_all()

    def idle(self) -> bool:
        with self.cond:
            return not self.queue and self.busy == 0

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()
        for thread in self.threads:
            thread.join(timeout=5)

    def clear(self) -> None:
        with self.cond:
            self.queue.clear()
            self.log.clear()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.stopped and (not self.queue or self.queue[0][0] > time.monotonic()):
                    timeout = self.queue[0][0] - time.monotonic() if self.queue else None
                    self.cond.wait(timeout)
                if self.stopped:
                    return
                _, _, event_id, endpoint_id, attempt = heapq.heappop(self.queue)
                self.busy += 1
            try:
                self._deliver(event_id, endpoint_id, attempt)
            finally:
                with self.cond:
                    self.busy -= 1

    def _deliver(self, event_id: str, endpoint_id: str, attempt: int) -> None:
        with self.state.lock:
            event = self.state.get("event", event_id)
            endpoint = self.state.get("webhook_endpoint", endpoint_id)
            secret = self.state.webhook_secrets.get(endpoint_id)
            if event is None or endpoint is None or secret is None:
                return
            body = json.dumps(self.state.render(event), indent=2).encode()
            url = endpoint["url"]
        timestamp = int(time.time())
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                "Stripe-Signature": sign(body, secret, timestamp),
            },
        )
        status: int | None = None
        error = None
        try:
            with urllib.request.urlopen(request, timeout=self.state.config.webhook_timeout) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except Exception as exc:  # connection refused, timeout, ...
            error = type(exc).__name__
        ok = status is not None and 200 <= status < 300
        delays = self.state.config.webhook_retry_delays
        retry = not ok and attempt <= len(delays)
        with self.state.lock:
            self.log.append(
                {"event": event_id, "type": event["type"], "endpoint": endpoint_id, "attempt": attempt, "status": status, "error": error, "delivered": ok}
            )
            if ok:   # the spec: "webhooks that haven't been successfully delivered"; a given-up one stays
                event["pending_webhooks"] = max(0, event["pending_webhooks"] - 1)
        if retry:
            with self.cond:
                self.seq += 1
                heapq.heappush(self.queue, (time.monotonic() + delays[attempt - 1], self.seq, event_id, endpoint_id, attempt + 1))
                self.cond.notify_all()
