"""The HTTP server: Stripe's wire protocol (auth, form parsing, JSON errors, idempotency, request
ids) in front of the resource handlers, plus the sandbox-only control API under ``/_sandbox/``.

Stdlib ``http.server`` (threaded) is used on purpose: it lets a fault drop a connection after
reading a request, which an ASGI server would not allow.
"""

from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from . import core_api, invoiceitems_api, invoices_api, meters_api, subscriptions_api  # noqa: F401  (register routes)
from . import billing
from .api import Request, check_params, resolve
from .apierrors import StripeAPIError, authentication, rate_limited, unrecognized_url
from .faults import Faults
from .forms import FormError, parse_form
from .idempotency import IdempotencyStore, fingerprint
from .store import API_VERSION, SandboxConfig, State
from .webhooks import Deliverer

log = logging.getLogger("stripe_sandbox")


class StripeSandbox:
    """A stateful local Stripe API. ``start()`` serves it on a background thread."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.state = State(self.config)
        self.faults = Faults(self.config.seed)
        for spec in self.config.faults:
            self.faults.add(dict(spec))
        self.idempotency = IdempotencyStore(self.config.idempotency_ttl)
        self.deliverer = Deliverer(self.state)
        self.state.on_event = self.deliverer.enqueue
        self.requests: list[dict[str, Any]] = []
        # callables (method, path, status, body bytes) told of every API response, e.g. to check
        # each one against the OpenAPI description in tests
        self.observers: list[Any] = []
        self.requests_lock = threading.Lock()
        self.slots: set[str] = set()
        self.slots_lock = threading.Lock()
        self.httpd: QuietServer | None = None
        self.thread: threading.Thread | None = None
        self._saver: threading.Thread | None = None
        self._stop = threading.Event()
        self._last_tick: int | None = None
        if self.config.state_file:
            try:
                self.state.load(self.config.state_file)
            except FileNotFoundError:
                pass

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self, host: str = "127.0.0.1", port: int = 0) -> "StripeSandbox":
        sandbox = self

        class Handler(SandboxHandler):
            pass

        Handler.sandbox = sandbox
        self.httpd = QuietServer((host, port), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="stripe-sandbox-http", daemon=True
        )
        self.thread.start()
        if self.config.state_file:
            self._saver = threading.Thread(target=self._save_loop, name="stripe-sandbox-saver", daemon=True)
            self._saver.start()
        return self

    @property
    def base_url(self) -> str:
        assert self.httpd is not None, "not started"
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def serve_forever(self, host: str, port: int) -> None:
        self.start(host, port)
        try:
            while self.thread is not None and self.thread.is_alive():
                self.thread.join(0.5)
        finally:
            self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        self.deliverer.stop()
        if self.config.state_file:
            self.save()

    def save(self) -> None:
        if self.config.state_file:
            self.state.save(self.config.state_file)

    def _save_loop(self) -> None:
        while not self._stop.wait(self.config.save_interval):
            if self.state.dirty:
                try:
                    self.save()
                except OSError as exc:  # keep serving; report once per failure
                    log.warning("could not save sandbox state: %s", exc)

    def reset(self) -> None:
        self.state.reset()
        self.faults.clear()
        self.idempotency.clear()
        self.deliverer.clear()
        with self.requests_lock:
            self.requests.clear()

    def tick(self) -> int:
        """Run billing for customers without a test clock up to the sandbox clock's now."""
        with self.state.lock:
            now = self.state.now()
            self._last_tick = now
            return billing.run_until(self.state, now, clock_id=None)

    # -- request log ------------------------------------------------------------------------------
    def log_start(self, method: str, path: str, key: str | None) -> dict[str, Any]:
        entry = {"method": method, "path": path, "idempotency_key": key, "status": None, "fault": None, "replayed": False, "started": time.time()}
        with self.requests_lock:
            entry["seq"] = len(self.requests) + 1
            self.requests.append(entry)
        return entry

    def request_log(self) -> list[dict[str, Any]]:
        with self.requests_lock:
            return [dict(e) for e in self.requests]

    # -- concurrency slots (one meter event call per customer and meter) --------------------------
    def take_slot(self, key: str) -> bool:
        with self.slots_lock:
            if key in self.slots:
                return False
            self.slots.add(key)
            return True

    def free_slot(self, key: str) -> None:
        with self.slots_lock:
            self.slots.discard(key)


class QuietServer(ThreadingHTTPServer):
    """A threaded HTTP server that does not print tracebacks when a client goes away mid-request."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            log.debug("client %s went away", client_address)
            return
        log.exception("sandbox request from %s failed", client_address)


class Dropped(Exception):
    """Close the connection without answering."""


class SandboxHandler(BaseHTTPRequestHandler):
    sandbox: StripeSandbox
    protocol_version = "HTTP/1.1"
    server_version = "stripe-sandbox"
    disable_nagle_algorithm = True  # headers and body go out at once: no 40 ms delayed-ACK stalls

    def log_message(self, format: str, *args: Any) -> None:  # quiet; the request log has it
        log.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # -- plumbing ---------------------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        raw = self._body()
        if url.path.startswith("/_sandbox/"):
            self._control(method, url.path, url.query, raw)
            return
        sandbox = self.sandbox
        key = self.headers.get("Idempotency-Key")
        entry = sandbox.log_start(method, url.path, key)
        request_id = "req_" + secrets.token_hex(7)
        headers = {
            "Content-Type": "application/json",
            "Request-Id": request_id,
            "Stripe-Version": self.headers.get("Stripe-Version") or API_VERSION,
        }
        if key:
            headers["Idempotency-Key"] = key
        try:
            status, body, extra = self._api(method, url.path, url.query, raw, key, request_id, entry)
        except Dropped:
            entry["status"] = "lost_response" if entry.get("fault") == "lost_response" else "dropped"
            self._drop()
            return
        headers.update(extra)
        entry["status"] = status
        for observer in list(sandbox.observers):
            observer(method, url.path, status, body)
        self._send(status, body, headers)

    def _api(
        self, method: str, path: str, query: str, raw: bytes, key: str | None, request_id: str, entry: dict[str, Any]
    ) -> tuple[int, bytes, dict[str, str]]:
        sandbox = self.sandbox
        account = "acct_sandbox"
        claimed = False
        slot = None
        rule = None
        try:
            self._authenticate()
            rule = sandbox.faults.pick(method, path)
            if rule is not None:
                entry["fault"] = rule.kind
                extra = {} if rule.should_retry is None else {"Stripe-Should-Retry": str(rule.should_retry).lower()}
                if rule.kind == "rate_limit":
                    raise rate_limited(rule.reason, headers=extra)
                if rule.kind == "server_error":
                    raise StripeAPIError(500, "An unknown error occurred", type="api_error", headers=extra)
                if rule.kind == "drop":
                    raise Dropped()
            try:
                params = parse_form(query) if method != "POST" else parse_form(raw)
                if method == "POST" and query:
                    params = {**parse_form(query), **params}
            except FormError as exc:
                raise StripeAPIError(400, str(exc)) from None
            found = resolve(method, path)
            if found is None:
                raise unrecognized_url(method, path)
            handler, path_params, template = found
            check_params(method, template, params)
            if key and method == "POST":
                stored = sandbox.idempotency.begin(account, key, fingerprint(method, path, params), sandbox.state.now())
                if stored is not None:
                    entry["replayed"] = True
                    return stored.status, stored.body, {**stored.headers, "Idempotent-Replayed": "true"}
                claimed = True
            if path == "/v1/billing/meter_events":
                with sandbox.state.lock:
                    slot = meters_api.concurrency_key(sandbox.state, params)
                if slot is not None and not sandbox.take_slot(slot):
                    slot = None
                    raise rate_limited(
                        "resource-specific",
                        "Too many concurrent requests for this customer and meter: only one meter event call per "
                        "customer and meter may be in flight. Retry after the previous call completes.",
                    )
            if rule is not None and rule.kind == "slow":
                sandbox.faults.sleep(rule.delay)
            request = Request(method, path, params, dict(self.headers), request_id, key)
            with sandbox.state.lock:
                if sandbox.state.now() != sandbox._last_tick:
                    sandbox.tick()
                try:
                    result = handler(sandbox.state, request, **path_params)
                except StripeAPIError:
                    raise
                except Exception:
                    log.exception("sandbox handler failed: %s %s", method, path)
                    raise StripeAPIError(500, "An unknown error occurred", type="api_error") from None
            body = json.dumps(result, indent=2).encode()
            if claimed:
                sandbox.idempotency.finish(account, key, 200, body, {"Request-Id": request_id})
                claimed = False
            if rule is not None and rule.kind == "lost_response":
                raise Dropped()
            return 200, body, {}
        except StripeAPIError as error:
            body = json.dumps(error.body(request_id), indent=2).encode()
            if claimed:
                if error.store:
                    sandbox.idempotency.finish(account, key, error.status, body, {"Request-Id": request_id, **error.headers})
                else:
                    sandbox.idempotency.abandon(account, key)
                claimed = False
            if rule is not None and rule.kind == "lost_response":
                raise Dropped() from None
            return error.status, body, dict(error.headers)
        finally:
            if claimed:
                sandbox.idempotency.abandon(account, key)
            if slot is not None:
                sandbox.free_slot(slot)

    def _authenticate(self) -> None:
        header = self.headers.get("Authorization") or ""
        key = ""
        if header.startswith("Bearer "):
            key = header[7:].strip()
        elif header.startswith("Basic "):
            import base64

            try:
                key = base64.b64decode(header[6:]).decode().split(":")[0]
            except (ValueError, UnicodeDecodeError):
                key = ""
        if not key:
            raise authentication(
                "You did not provide an API key. You need to provide your API key in the Authorization header, "
                "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY')."
            )
        expected = self.sandbox.config.api_key
        if (expected is not None and key != expected) or (expected is None and not key.startswith("sk_test_")):
            raise authentication(f"Invalid API Key provided: {key[:8]}{'*' * 8}{key[-4:]}")

    # -- control API ------------------------------------------------------------------------------
    def _control(self, method: str, path: str, query: str, raw: bytes) -> None:
        from . import control

        try:
            payload = json.loads(raw) if raw.strip() else {}
            if not isinstance(payload, dict):   # `[1]` or `"soon"`: every endpoint reads an object's fields
                raise ValueError(f"the request body must be a JSON object, not {type(payload).__name__}")
            status, result = control.handle(self.sandbox, method, path, parse_form(query), payload)
        except (ValueError, KeyError, TypeError) as exc:
            status, result = 400, {"error": str(exc)}
        self._send(status, json.dumps(result, indent=2, default=str).encode(), {"Content-Type": "application/json"})
