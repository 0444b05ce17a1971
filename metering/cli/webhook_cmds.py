"""`metering webhooks`: run the receiver, land landed files into the warehouse, repair from Stripe."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import click

from metering.cli.options import UserPath, listening_socket, parse_url, stripe_errors
from metering.errors import BadInputError, MeteringError

if TYPE_CHECKING:
    import uvicorn

SECRET_ENV = "STRIPE_WEBHOOK_SECRET"


@click.group()
def webhooks() -> None:
    """Stripe webhooks: receiver, landing into DuckDB, repair from Stripe's event list."""


@webhooks.command()
@click.option("--port", type=click.IntRange(0, 65535), required=True, help="TCP port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--landing", type=UserPath(file_okay=False), default=None,
              help="Landing folder (default: $METERING_STRIPE_LANDING or data/landing/stripe/).")
@click.option("--tolerance", type=click.IntRange(1, None), default=300, show_default=True,
              help="Accepted clock difference, in seconds, for the signature timestamp (both directions).")
@click.option("--max-body-bytes", type=click.IntRange(1, None), default=1024 * 1024, show_default=True,
              help="Larger requests get 413.")
@click.option("--max-connections", type=click.IntRange(1, 100_000), default=256, show_default=True,
              help="Connections served at once; a request on one more gets 503, which Stripe retries.")
@click.option("--exit-with-parent", is_flag=True,
              help="Stop when the process that started this one ends, even if it was killed (metering demo "
                   "uses it: its receiver must not outlive it).")
def serve(port: int, host: str, landing: str | None, tolerance: int, max_body_bytes: int,
          max_connections: int, exit_with_parent: bool) -> None:
    """Receive Stripe webhooks on POST /webhooks/stripe (GET /healthz for checks).

    Signing secrets come from $STRIPE_WEBHOOK_SECRET (comma-separated during rotation).
    """
    import uvicorn

    from metering import config
    from metering.webhooks.inbox import LANDING_ENV, landing_dir
    from metering.webhooks.receiver import ReceiverSettings, create_app
    from metering.webhooks.signature import parse_secrets

    secrets = parse_secrets(os.environ.get(SECRET_ENV))
    if not secrets:
        raise BadInputError(f"${SECRET_ENV} is not set: the receiver needs the endpoint's signing secret(s)")
    folder = config.ensure_dir(landing_dir(landing), config.path_origin(landing, "--landing", LANDING_ENV))
    settings = ReceiverSettings(
        secrets=secrets, landing_dir=folder,
        tolerance_seconds=tolerance, max_body_bytes=max_body_bytes,
    )
    app = create_app(settings)
    # bound here, before announcing: uvicorn only logged a busy port and exited 3 itself, after our
    # "listening on" line and with no `error:` line (stripe-sandbox's message and code, shared)
    sock = listening_socket(host, port)
    port = sock.getsockname()[1]   # --port 0: the port the system chose
    shown = f"[{host}]" if ":" in host else host   # an IPv6 address goes in brackets in a URL (RFC 3986)
    click.echo(f"listening on http://{shown}:{port}/webhooks/stripe, landing in {settings.landing_dir}", err=True)
    # h11, not httptools: h11 refuses a request head over 16 KiB, where httptools buffered any size
    # (64 MiB of one header was read whole before its 400). uvicorn answers 503 once the open
    # connections, the asking one included, reach `limit_concurrency`: hence the + 1.
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False,
                                           server_header=False, http="h11",
                                           limit_concurrency=max_connections + 1))
    if exit_with_parent:
        _stop_when_orphaned(server)
    with sock:
        server.run(sockets=[sock])
    if not server.started:   # as uvicorn.run: the app's start-up failed (logged above)
        raise MeteringError("the webhook receiver did not start (see the log above)")


def _stop_when_orphaned(server: uvicorn.Server) -> None:
    """Shut `server` down as SIGTERM would once this process's parent is gone. A parent killed with
    SIGKILL runs no clean-up, and its child is re-parented (to init or a subreaper): that change of
    parent is what the watch sees."""
    import threading
    import time

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.2)
        server.should_exit = True

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@webhooks.command()
@click.option("--landing", type=UserPath(file_okay=False), default=None,
              help="Landing folder (default: $METERING_STRIPE_LANDING or data/landing/stripe/).")
@click.option("--warehouse", "warehouse_path", type=UserPath(dir_okay=False), default=None,
              help="Warehouse file (default: $METERING_WAREHOUSE or data/warehouse.duckdb).")
@click.option("--state/--no-state", default=True, show_default=True,
              help="Also rebuild stripe_invoices / stripe_subscriptions / stripe_payment_attempts.")
def land(landing: str | None, warehouse_path: str | None, state: bool) -> None:
    """Land new records from the landing folder into stripe_webhook_events (outside Dagster).

    A folder named by --landing or $METERING_STRIPE_LANDING must exist; the default one may not yet.
    """
    from metering import config, warehouse
    from metering.webhooks.events import land_directory
    from metering.webhooks.landing import LANDING_ENV, landing_dir
    from metering.webhooks.state import rebuild_state

    folder = landing_dir(landing)
    if (landing or os.environ.get(LANDING_ENV)) and not folder.is_dir():
        raise BadInputError(f"{config.path_origin(landing, '--landing', LANDING_ENV)}: {folder} is not a folder "
                            f"(a mistyped path would land nothing)")
    with warehouse.open_warehouse(warehouse_path) as con:
        result = {"landing": land_directory(con, folder).as_dict()}
        if state:
            result["state"] = rebuild_state(con)
    click.echo(json.dumps(result, sort_keys=True))


@webhooks.command()
@click.option("--warehouse", "warehouse_path", type=UserPath(dir_okay=False), default=None,
              help="Warehouse file (default: $METERING_WAREHOUSE or data/warehouse.duckdb).")
@click.option("--api-base", default=None, callback=parse_url,
              help="Stripe API base URL (default: $STRIPE_API_BASE or api.stripe.com).")
@click.option("--no-refetch", is_flag=True, help="Only list events; do not re-fetch the objects they touch.")
def repair(warehouse_path: str | None, api_base: str | None, no_refetch: bool) -> None:
    """Fill gaps from Stripe's /v1/events (the last 30 days) and re-fetch the objects involved.

    The API key comes from $STRIPE_API_KEY.
    """
    from metering import warehouse
    from metering.webhooks.repair import make_client, repair_events
    from metering.webhooks.state import rebuild_state

    client = make_client(api_base=api_base)
    with stripe_errors(), warehouse.open_warehouse(warehouse_path) as con:
        stats = repair_events(con, client, refetch=not no_refetch)
        result = {"repair": stats.as_dict(), "state": rebuild_state(con)}
    click.echo(json.dumps(result, sort_keys=True))
