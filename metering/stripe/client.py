"""The one place a `stripe.StripeClient` is built.

Configuration comes from the environment (never from files, never logged):

| variable | meaning | default |
| --- | --- | --- |
| `STRIPE_API_KEY` | secret key (`sk_test_...` / `sk_live_...`); required | - |
| `STRIPE_API_BASE` | API base address (the local sandbox sets this) | Stripe's |
| `STRIPE_METER_EVENTS_BASE` | base for the meter-events host | `STRIPE_API_BASE` when set, else Stripe's |
| `STRIPE_MAX_NETWORK_RETRIES` | SDK-level retries for catalog calls (pushes retry themselves), 0-20 | 2 |
| `STRIPE_CONNECT_TIMEOUT` / `STRIPE_READ_TIMEOUT` | seconds, above 0 and at most 3600 | 5 / 30 |

The key lives only in `StripeSettings.api_key` (excluded from `repr`) and inside the SDK client.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import stripe

from metering.config import is_http_url
from metering.errors import BadInputError
from metering.logs import redact


@dataclass(frozen=True)
class StripeSettings:
    api_key: str = field(repr=False)
    api_base: str | None = None
    meter_events_base: str | None = None
    max_network_retries: int = 2
    connect_timeout: float = 5.0
    read_timeout: float = 30.0

    @property
    def is_live(self) -> bool:
        return self.api_key.startswith(("sk_live_", "rk_live_"))

    def with_base(self, base_url: str, api_key: str | None = None) -> "StripeSettings":
        """The same settings pointed at another base address (the local sandbox)."""
        return replace(
            self, api_base=base_url, meter_events_base=base_url, api_key=api_key or self.api_key
        )


MAX_TIMEOUT_SECONDS = 3600.0
MAX_NETWORK_RETRIES = 20


def checked_timeout(name: str, value: float, written: str | None = None) -> float:
    """Seconds for a timeout: finite, above 0 and at most an hour (`nan` passed every test of `<= 0`
    and reached the SDK as a timeout, `inf` would wait for ever). A message names `name` and the
    value as `written`."""
    if not (0 < value <= MAX_TIMEOUT_SECONDS):   # false for nan as well
        raise BadInputError(f"{name}: must be > 0 and at most {MAX_TIMEOUT_SECONDS:g} seconds, "
                            f"got {written or repr(value)}")
    return value


def checked_retries(name: str, value: int, written: str | None = None) -> int:
    """A count of network retries, 0 to 20 (a huge one retried a failing call for ever)."""
    if not 0 <= value <= MAX_NETWORK_RETRIES:
        raise BadInputError(f"{name}: must be 0 to {MAX_NETWORK_RETRIES}, got {written or repr(value)}")
    return value


def _env_number(name: str, default: float, parse: Callable[[str], float], kind: str,
                check: Callable[[str, Any, str], Any]) -> Any:
    """The environment variable `name` parsed (`default` when unset or empty) and held to `check`."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise BadInputError(f"environment variable {name}: {raw!r} is not {kind}") from None
    return check(f"environment variable {name}", value, repr(raw))


def _float_env(name: str, default: float) -> float:
    return _env_number(name, default, float, "a number", checked_timeout)


def _retries_env(name: str, default: int) -> int:
    return _env_number(name, default, int, "an integer", checked_retries)


def _url_env(name: str) -> str | None:
    """An http(s) base address from the environment, or None when unset (a malformed one was sent
    to the SDK and came back as a connection failure, exit 5, instead of a bad setting)."""
    raw = os.environ.get(name) or None
    if raw is not None and not is_http_url(raw):
        raise BadInputError(f"environment variable {name}: {raw!r} is not an http(s) URL "
                            f"(e.g. http://127.0.0.1:12111)")
    return raw


def settings_from_env(*, required: bool = True) -> StripeSettings | None:
    """Read `StripeSettings` from the environment; `None` when no key is set and not `required`."""
    key = os.environ.get("STRIPE_API_KEY", "").strip()
    if not key:
        if required:
            raise BadInputError(
                "STRIPE_API_KEY is not set: export a Stripe secret key, or run against the local "
                "sandbox (`metering stripe-sandbox`, then set STRIPE_API_BASE and its test key)"
            )
        return None
    if not (key.isascii() and key.isprintable()):
        # the key goes into an HTTP header, which the SDK cannot encode: it surfaced as a network error
        # from Stripe (exit 5). Never shown: it is a secret, however malformed
        raise BadInputError("STRIPE_API_KEY: not a Stripe key (it holds characters other than printable ASCII)")
    api_base = _url_env("STRIPE_API_BASE")
    retries = _retries_env("STRIPE_MAX_NETWORK_RETRIES", 2)
    return StripeSettings(
        api_key=key,
        api_base=api_base,
        meter_events_base=_url_env("STRIPE_METER_EVENTS_BASE") or api_base,
        max_network_retries=retries,
        connect_timeout=_float_env("STRIPE_CONNECT_TIMEOUT", 5.0),
        read_timeout=_float_env("STRIPE_READ_TIMEOUT", 30.0),
    )


class RedactingRequestsClient(stripe.RequestsClient):
    """The SDK's requests client, with secrets masked in every error response before the SDK reads it.

    Stripe answers a refused key with "Invalid API Key provided: sk_test_********3456", the key's
    last characters. The SDK puts that text into the exception it raises and into its own debug log
    of the body; a Dagster run stores an asset's exception text in its event log and compute logs,
    where the CLI's log redaction never reaches. Masked here, it is nowhere.
    """

    def request(self, method: str, url: str, headers: Any, post_data: Any = None) -> tuple[bytes, int, Any]:
        content, status, response_headers = super().request(method, url, headers, post_data)
        if status >= 400:
            text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
            masked = redact(text)
            if masked != text:
                content = masked.encode("utf-8")
        return content, status, response_headers


def make_client(settings: StripeSettings, *, max_network_retries: int | None = None) -> stripe.StripeClient:
    """A `StripeClient` with explicit retries and timeouts (the SDK defaults to 0 retries, 80 s)."""
    bases: dict[str, str] = {}
    if settings.api_base:
        bases["api"] = settings.api_base.rstrip("/")
    if settings.meter_events_base:
        bases["meter_events"] = settings.meter_events_base.rstrip("/")
    return stripe.StripeClient(
        settings.api_key,
        base_addresses=bases,  # type: ignore[arg-type]
        max_network_retries=(
            settings.max_network_retries if max_network_retries is None else max_network_retries
        ),
        http_client=RedactingRequestsClient(timeout=(settings.connect_timeout, settings.read_timeout)),
    )
