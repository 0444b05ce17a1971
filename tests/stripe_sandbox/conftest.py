"""Fixtures for the sandbox's own tests: every API response a test provokes is checked against
Stripe's OpenAPI description when the test ends."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterator

import jsonschema
import pytest

from metering.stripe_sandbox import spec
from metering.stripe_sandbox.testing import SandboxHandle, running_sandbox


def ts(text: str) -> int:
    """'2026-10-01T00:00:00' (UTC) -> unix seconds."""
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp())


class Recorder:
    def __init__(self) -> None:
        self.responses: list[tuple[str, str, int, bytes]] = []

    def __call__(self, method: str, path: str, status: int, body: bytes) -> None:
        self.responses.append((method, path, status, body))

    def problems(self) -> list[str]:
        found = []
        for method, path, status, body in self.responses:
            try:
                spec.validate_response(method, path, status, json.loads(body))
            except LookupError as exc:
                found.append(f"{method} {path}: {exc}")
            except Exception as exc:  # jsonschema.ValidationError
                while getattr(exc, "context", None):
                    exc = jsonschema.exceptions.best_match(exc.context)
                where = "/".join(str(p) for p in getattr(exc, "absolute_path", []))
                found.append(f"{method} {path} -> {status}: at {where}: {getattr(exc, 'message', exc)}"[:600])
        return found


def start(**options: Any):
    return running_sandbox(**options)


@pytest.fixture
def sb() -> Iterator[SandboxHandle]:
    """A fresh sandbox whose every /v1 response must validate against the spec (strict)."""
    recorder = Recorder()
    with running_sandbox() as handle:
        handle.sandbox.observers.append(recorder)
        handle.recorder = recorder  # type: ignore[attr-defined]
        yield handle
    problems = recorder.problems()
    assert not problems, "responses that do not match the OpenAPI description:\n" + "\n".join(problems[:20])


@pytest.fixture
def client(sb: SandboxHandle):
    return sb.client()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.01):
    """Poll ``predicate`` until it returns something truthy (coordination, not a timing assertion)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(interval)


def post_form(handle: SandboxHandle, path: str, data: Any, key: str | None = None, **headers: str) -> Any:
    """POST to the sandbox without the SDK: `data` a dict (form-encoded) or text or bytes (sent as written),
    an Idempotency-Key when `key` is given, and any other headers."""
    import httpx

    if key is not None:
        headers["Idempotency-Key"] = key
    body = {"content": data} if isinstance(data, (str, bytes)) else {"data": data}
    return httpx.post(handle.base_url + path, **body, headers={"Authorization": f"Bearer {handle.api_key}", **headers},
                      timeout=30)


def in_flight(handle: SandboxHandle, path: str) -> bool:
    return any(e["status"] is None for e in handle.requests_log(path=path))


class Receiver:
    """A webhook receiver on a loopback port that records raw deliveries; the first ``fail_first``
    deliveries (all, with ``always_fail``) are answered 500, the others ``status``."""

    def __init__(self, fail_first: int = 0, always_fail: bool = False, status: int = 200) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self
        self.fail_first = fail_first
        self.always_fail = always_fail
        self.received: list[tuple[bytes, str, int]] = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    failing = receiver.always_fail or len(receiver.received) < receiver.fail_first
                    answer = 500 if failing else status
                    receiver.received.append((body, self.headers["Stripe-Signature"], answer))
                self.send_response(answer)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def metered_price(client, event_name: str = "metering_api_calls", window: str | None = None, formula: str = "sum", **price: Any):
    """A meter and a monthly metered price on it (per-unit 25 cents unless ``price`` says otherwise)."""
    params: dict[str, Any] = {
        "display_name": event_name,
        "event_name": event_name,
        "default_aggregation": {"formula": formula},
    }
    if window:
        params["event_time_window"] = window
    meter = client.v1.billing.meters.create(params)
    product = client.v1.products.create({"name": event_name})
    body = {"currency": "usd", "product": product.id, "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}}
    body.update(price or {"unit_amount": 25})
    return meter, client.v1.prices.create(body)


def uncovered_routes(responses) -> list[str]:
    """Sandbox API routes that no recorded response exercised."""
    from metering.stripe_sandbox.api import ROUTES

    hit = {(m, p) for m, p, _, _ in responses}
    return [f"{method} {regex.pattern}" for method, regex, _, _ in ROUTES if not any(m == method and regex.match(p) for m, p in hit)]


def usage(client, meter, customer, value, at):
    """One meter event for `customer` at `at` (unix)."""
    client.v1.billing.meter_events.create(
        {"event_name": meter.event_name, "payload": {"stripe_customer_id": customer.id, "value": str(value)}, "timestamp": at}
    )


def cycle_invoice(client, customer):
    """The customer's one period-end (subscription_cycle) invoice."""
    [invoice] = [i for i in client.v1.invoices.list({"customer": customer.id}).data if i.billing_reason == "subscription_cycle"]
    return invoice
