"""Option parsing and error translation shared by the command modules.

A value given on the command line that is not valid is a usage error (exit 2, click's `BadParameter`
naming the option), whichever command takes it; the library parsers raise `BadInputError` (exit 3)
for the same text read from files, so `parsed_by` turns one into the other.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import click

from metering.config import is_http_url, refuse_non_utf8
from metering.errors import BadInputError, ExternalServiceError

T = TypeVar("T")

SEED = click.IntRange(0, 2**32 - 1)
"""A sample-data seed (`generate`, `demo`): the generator's random streams take 32 bits (-1 was an
OverflowError traceback once files were half written)."""


def parse_date(ctx: click.Context, param: click.Parameter, value: str | None) -> dt.date | None:
    """A click callback: `YYYY-MM-DD` (UTC calendar date) or None; anything else is a usage error."""
    if value is None:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)") from None
    return within_dates(day, value)


def within_dates(day: T, text: str) -> T:
    """`day` (a date or datetime) if it lies in the dates commands accept, else a usage error."""
    from metering.customers import FIRST_DATE, LAST_DATE, outside_dates

    if outside_dates(day.date() if isinstance(day, dt.datetime) else day):  # type: ignore[arg-type, attr-defined]
        raise click.BadParameter(f"{text!r} is outside {FIRST_DATE} .. {LAST_DATE}")
    return day


def date_in_range(ctx: click.Context, param: click.Parameter, value: dt.datetime | None) -> dt.datetime | None:
    """A click callback for `click.DateTime` options: the value within the dates commands accept."""
    return None if value is None else within_dates(value, value.date().isoformat())  # strftime: '1-01-01'


def parsed_by(parse: Callable[[str], T]) -> Callable[[click.Context, click.Parameter, str | None], T | None]:
    """A click callback running a library parser; its `BadInputError` becomes a usage error (exit 2)."""
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> T | None:
        if value is None:
            return None
        try:
            return parse(value)
        except (BadInputError, ValueError) as exc:
            # click names the option itself; the parsers name it too, for callers outside the CLI
            text = str(exc)
            for name in param.opts:
                text = text.removeprefix(f"{name}: ")
            raise click.BadParameter(text) from None
    return callback


class UserPath(click.Path):
    """`click.Path` whose file-for-a-folder (or folder-for-a-file) mistake is bad input (exit 3) naming
    the option and path, as the same path from an environment variable is; click made it a usage error
    (exit 2, "Invalid value ... is a directory"). Every path option and argument of the CLI uses it.
    A name that is not UTF-8 is refused the same way (`config.refuse_non_utf8`)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        text = os.fsdecode(value) if isinstance(value, (str, bytes, os.PathLike)) else None
        if text and not (self.allow_dash and text == "-"):
            where = f"{param.opts[0]} " if isinstance(param, click.Option) and param.opts else ""
            refuse_non_utf8(text, where)
            if not self.dir_okay and os.path.isdir(text):
                raise BadInputError(f"{where}{text}: is a folder, not a file")
            if not self.file_okay and os.path.exists(text) and not os.path.isdir(text):
                raise BadInputError(f"{where}{text}: is a file, not a folder")
        return super().convert(value, param, ctx)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to host:port and listening, so a server can announce its address only once
    it holds it. A port in use (or a host that is not this machine's) is bad input naming both."""
    try:
        family, kind, proto, _, address = preferred_address(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise cannot_listen(host, port, exc) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as uvicorn and http.server do
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise cannot_listen(host, port, exc) from None
    return sock


def preferred_address(found: list[tuple]) -> tuple:
    """Of `getaddrinfo`'s answers, the first IPv4 one, else the first: as uvicorn binds a name.
    `localhost` listed as ::1 first in /etc/hosts (Debian's default) would otherwise listen on ::1
    alone and refuse the deliveries sent to 127.0.0.1."""
    return min(found, key=lambda answer: answer[0] != socket.AF_INET)


def cannot_listen(host: str, port: int, exc: OSError) -> BadInputError:
    """The one message for a server that cannot bind (`stripe-sandbox`, `webhooks serve`)."""
    return BadInputError(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


def parse_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A click callback: an http(s) URL such as http://127.0.0.1:12111, or None."""
    if value is None:
        return None
    if not is_http_url(value):
        raise click.BadParameter(f"{value!r} is not an http(s) URL like http://127.0.0.1:12111")
    return value


def check_order(first: Any, last: Any, first_option: str, last_option: str) -> None:
    """A usage error when a range's end comes before its start."""
    if first is not None and last is not None and last < first:
        raise click.UsageError(f"{last_option} {last} is before {first_option} {first}")


@contextlib.contextmanager
def stripe_errors() -> Iterator[None]:
    """Stripe failures retries did not fix (unreachable, refused key, API error) become one line and
    exit code 5: no traceback, no key."""
    import stripe as stripe_sdk

    from metering.logs import redact

    try:
        yield
    except stripe_sdk.StripeError as exc:
        status = f" (HTTP {exc.http_status})" if exc.http_status else ""
        text = " ".join(str(exc.user_message or exc).split())
        raise ExternalServiceError(redact(f"Stripe: {type(exc).__name__}{status}: {text}")) from None
