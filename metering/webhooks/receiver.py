"""The webhook receiver: a small Starlette app that verifies, lands durably, then acknowledges.

`POST /webhooks/stripe`:

1. Size: a `Content-Length` above the limit, or a body that grows past it, is 413.
2. Signature over the exact raw bytes (`metering.webhooks.signature`), with every configured
   secret, `v1` only, timestamp within the tolerance both ways: otherwise 400.
3. The body must be UTF-8 (else 400) and a JSON object shaped like a Stripe event with string
   `id` and `type`, integer `created` within [0, `MAX_CREATED`] and an object `data.object` (else
   400). JSON the warehouse could not read at landing (NaN, an unpaired surrogate, nesting too deep
   to parse) is 400 too: what is acknowledged must land.
4. The raw body is appended to this process's landing file and fsync'd (`metering.webhooks.inbox`);
   only then 200. Any failure there is 503, so Stripe retries.

No verification failure is ever a 5xx and nothing rejected reaches the landing folder: a reject is
a counter (per reason, shown on `/healthz`) and one body-free structured log line. Logs carry the
event id and type, never secrets, bodies or signatures.

`GET /healthz` answers 200 with the accept / reject counters.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from metering.webhooks.inbox import MAX_CREATED, LandingWriter
from metering.webhooks.signature import Rejected, verify

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE_SECONDS = 300
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_BODY_SECONDS = 10.0
"""How long a request's body may take to arrive: Stripe sends a whole event at once, and a sender that
trickles (or stops half-way) held its connection, and the memory behind it, for ever."""


@dataclass
class ReceiverSettings:
    """How a receiver behaves. `secrets` are the raw webhook signing secrets (never logged)."""

    secrets: Sequence[bytes]
    landing_dir: Path
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_seconds: float = DEFAULT_BODY_SECONDS
    clock: Callable[[], float] = field(default=time.time)

    def __repr__(self) -> str:  # keep secrets out of any accidental repr
        return (
            f"ReceiverSettings(secrets=<{len(self.secrets)} redacted>, landing_dir={self.landing_dir!r}, "
            f"tolerance_seconds={self.tolerance_seconds}, max_body_bytes={self.max_body_bytes})"
        )


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Rejected(400, "bad_content_length")
        if int(declared) > limit:
            raise Rejected(413, "body_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejected(413, "body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


# A `\uD800`-`\uDFFF` escape: valid only as half of a surrogate pair, which JSON parsers disagree on.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _refuse_repeated_keys(pairs: list[tuple[str, Any]]) -> dict:
    """An object whose key repeats: Python keeps the last value, DuckDB's JSON paths the first, so the
    id acknowledged and the id landed could differ (I11). Refused."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("a key repeats")
    return obj


def _parse_json(text: str) -> Any:
    """The body as Python values, refusing what the warehouse's JSON reader would refuse at landing.

    An acknowledged event that landing cannot read is lost to Stripe's retries, so anything
    DuckDB would not accept (NaN/Infinity, an unpaired surrogate), or would read otherwise (a key
    written twice), is a 400 here instead; nesting too deep for Python's parser is a 400 as well,
    never a 500.
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant, object_pairs_hook=_refuse_repeated_keys)
        if _SURROGATE_ESCAPE.search(text):
            json.dumps(value, ensure_ascii=False).encode("utf-8")  # raises on an unpaired surrogate
    except (ValueError, RecursionError):
        raise Rejected(400, "malformed_json") from None
    return value


def _check_event(text: str) -> dict:
    event = _parse_json(text)
    if not isinstance(event, dict):
        raise Rejected(400, "not_an_event")
    data = event.get("data")
    if not (
        isinstance(event.get("id"), str)
        and event["id"]
        and isinstance(event.get("type"), str)
        and isinstance(event.get("created"), int)
        and not isinstance(event.get("created"), bool)
        and 0 <= event["created"] <= MAX_CREATED
        and isinstance(data, dict)
        and isinstance(data.get("object"), dict)
    ):
        raise Rejected(400, "not_an_event")
    return event


class Receiver:
    """The app's state: settings, the landing writer, counters."""

    def __init__(self, settings: ReceiverSettings) -> None:
        if not settings.secrets:
            raise ValueError("a webhook receiver needs at least one signing secret")
        self.settings = settings
        self.writer = LandingWriter(settings.landing_dir)
        self.accepted = 0
        self.rejected: Counter[str] = Counter()
        self.landing_failures = 0

    def _reject(self, request: Request, exc: Rejected, size: int | None) -> JSONResponse:
        self.rejected[exc.reason] += 1
        log.warning(
            "webhook rejected",
            extra={
                "reason": exc.reason,
                "status": exc.status,
                "bytes": size,
                "client": request.client.host if request.client else None,
            },
        )
        return JSONResponse({"error": exc.reason}, status_code=exc.status)

    async def stripe(self, request: Request) -> JSONResponse:
        settings = self.settings
        body: bytes | None = None
        try:
            with anyio.move_on_after(settings.body_seconds) as deadline:
                body = await _read_body(request, settings.max_body_bytes)
            if deadline.cancelled_caught:
                raise Rejected(408, "body_timeout")
            verify(
                body,
                request.headers.get("stripe-signature"),
                settings.secrets,
                now=settings.clock(),
                tolerance=settings.tolerance_seconds,
            )
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise Rejected(400, "not_utf8") from None
            event = _check_event(text)
        except Rejected as exc:
            return self._reject(request, exc, None if body is None else len(body))
        except ClientDisconnect:
            return JSONResponse({"error": "client_disconnected"}, status_code=400)

        headers = {k: request.headers[k] for k in ("stripe-signature", "content-type") if k in request.headers}
        try:
            path, _ = await anyio.to_thread.run_sync(self.writer.append, text, headers)
        except Exception as exc:  # disk full, permissions, ...: Stripe must retry
            self.landing_failures += 1
            log.error(
                "webhook landing failed",
                extra={"event_id": event["id"], "error": type(exc).__name__},
            )
            return JSONResponse({"error": "landing_failed"}, status_code=503)
        self.accepted += 1
        log.info(
            "webhook landed",
            extra={"event_id": event["id"], "type": event["type"], "bytes": len(body), "file": path.name},
        )
        return JSONResponse({"received": True, "id": event["id"]})

    async def healthz(self, request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "status": "ok",
                "accepted": self.accepted,
                "rejected": dict(sorted(self.rejected.items())),
                "landing_failures": self.landing_failures,
            }
        )


def create_app(settings: ReceiverSettings) -> Starlette:
    """The ASGI app. `app.state.receiver` exposes the counters (tests read them)."""
    receiver = Receiver(settings)
    # Stripe takes any 3xx as a failed delivery and never follows it, so an endpoint registered
    # with a trailing slash must be served, not redirected (Starlette's default) to the bare path.
    app = Starlette(
        routes=[
            Route("/webhooks/stripe", receiver.stripe, methods=["POST"]),
            Route("/webhooks/stripe/", receiver.stripe, methods=["POST"]),
            Route("/healthz", receiver.healthz, methods=["GET"]),
        ],
    )
    app.router.redirect_slashes = False
    app.state.receiver = receiver
    return app
