"""Run the sandbox inside a test: ``with running_sandbox() as sb: client = sb.client()``.

The sandbox runs in a background thread of the test process on a free 127.0.0.1 port; every call
still goes over real loopback HTTP through the official SDK.
"""

from __future__ import annotations

import contextlib
import json
import time
import urllib.request
from typing import TYPE_CHECKING, Any, Iterator

from .server import StripeSandbox
from .store import SandboxConfig

if TYPE_CHECKING:
    import stripe

TEST_API_KEY = "sk_test_sandbox_0000000000000000"


class SandboxHandle:
    """What ``running_sandbox`` yields: addresses, a configured SDK client, and control helpers."""

    def __init__(self, sandbox: StripeSandbox, api_key: str) -> None:
        self.sandbox = sandbox
        self.base_url = sandbox.base_url
        self.api_key = api_key
        self.webhook_secret: str | None = None

    # -- clients ----------------------------------------------------------------------------------
    def client(self, max_network_retries: int = 0, **kwargs: Any) -> "stripe.StripeClient":
        import stripe

        return stripe.StripeClient(
            self.api_key,
            base_addresses={"api": self.base_url, "meter_events": self.base_url},
            max_network_retries=max_network_retries,
            **kwargs,
        )

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.base_url}/_sandbox/{path.lstrip('/')}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    # -- control helpers --------------------------------------------------------------------------
    def set_now(self, now: int | None) -> None:
        """Freeze the sandbox clock (None: back to real time)."""
        self.control("POST", "now", {"now": now})

    def now(self) -> int:
        return self.control("GET", "now")["now"]

    def advance_clock(self, clock_id: str, frozen_time: int) -> dict[str, Any]:
        """Advance a test clock through the API (runs billing up to ``frozen_time``)."""
        return self.client().v1.test_helpers.test_clocks.advance(clock_id, {"frozen_time": frozen_time}).to_dict()

    def inject_fault(
        self,
        kind: str,
        path: str = "*",
        method: str | None = None,
        count: int | None = None,
        rate: float | None = None,
        **options: Any,
    ) -> None:
        """Add a fault rule: kind in rate_limit, server_error, slow, drop, lost_response."""
        spec = {"kind": kind, "path": path, "method": method, "count": count, "rate": rate, **options}
        self.control("POST", "faults", {k: v for k, v in spec.items() if v is not None})

    def release_slow(self) -> None:
        """Let requests currently held by a ``slow`` fault continue now."""
        self.control("POST", "faults/release")

    def clear_faults(self) -> None:
        self.control("DELETE", "faults")

    def requests_log(self, path: str | None = None, method: str | None = None) -> list[dict[str, Any]]:
        entries = self.control("GET", "requests")["requests"]
        return [e for e in entries if (path is None or e["path"] == path) and (method is None or e["method"] == method)]

    def set_payment_behavior(self, customer_id: str, behavior: str) -> None:
        self.control("POST", f"customers/{customer_id}/payment_behavior", {"payment_behavior": behavior})

    def configure(self, **settings: Any) -> dict[str, Any]:
        return self.control("POST", "config", settings)

    def webhook_deliveries(self) -> dict[str, Any]:
        return self.control("GET", "webhook_deliveries")

    def wait_for_webhooks(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until the delivery queue is empty (all attempts made), return the delivery log."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.webhook_deliveries()
            if result["idle"] and result["pending"] == 0:
                return result["deliveries"]
            if time.monotonic() > deadline:
                raise TimeoutError("webhook deliveries still pending")
            time.sleep(0.02)

    def create_webhook_endpoint(self, url: str, events: list[str] | None = None) -> str:
        endpoint = self.client().v1.webhook_endpoints.create({"url": url, "enabled_events": events or ["*"]})
        self.webhook_secret = endpoint.secret
        return endpoint.id

    def reset(self) -> None:
        self.control("POST", "reset")


@contextlib.contextmanager
def running_sandbox(
    api_key: str | None = None, *, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> Iterator[SandboxHandle]:
    """Start a sandbox on a free loopback port for the duration of the block.

    ``options`` are :class:`SandboxConfig` fields (grace_period, webhook_retry_delays, now, faults,
    state_file, ...). Tests default to fast webhook retries. ``api_key`` makes the sandbox accept
    only that key; the handle's ``api_key`` is always a valid one.
    """
    options.setdefault("webhook_retry_delays", (0.05, 0.1, 0.2))
    # a receiver that stores each event durably can take seconds on a loaded machine; with 2 s every
    # fast retry could time out and a delivery be given up on, so an event "every delivery landed" missed
    options.setdefault("webhook_timeout", 10.0)
    config = SandboxConfig(api_key=api_key, **options)
    sandbox = StripeSandbox(config).start(host, port)
    try:
        yield SandboxHandle(sandbox, api_key or TEST_API_KEY)
    finally:
        sandbox.stop()
