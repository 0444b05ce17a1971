"""`metering stripe-sandbox`: serve the local Stripe stand-in (the only CLI module that imports it)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import click

from metering.cli.options import UserPath, cannot_listen
from metering.errors import BadInputError


def _delays(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(x) for x in value.split(",") if x.strip())
    except ValueError:
        delays = ()
    if not delays or any(not 0 <= d < float("inf") for d in delays):
        raise click.BadParameter(f"{value!r}: expected seconds >= 0 like 5,30,120")
    return delays


def _faults(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> list[dict]:
    """Each --fault as a JSON object the sandbox accepts; a mistake is a usage error naming it."""
    from metering.stripe_sandbox.faults import Faults

    rules = []
    for value in values:
        try:
            rule = json.loads(value)
        except ValueError as exc:
            raise click.BadParameter(f"{value!r}: not JSON ({exc})") from None
        if not isinstance(rule, dict):
            raise click.BadParameter(f"{value!r}: must be a JSON object like '{{\"kind\": \"rate_limit\", \"rate\": 0.1}}'")
        try:
            Faults(None).add(dict(rule))  # checked here, so the option is named and nothing has started
        except (ValueError, TypeError) as exc:
            raise click.BadParameter(f"{value!r}: {exc}") from None
        rules.append(rule)
    return rules


def _test_mode_key(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not value.startswith("sk_test_"):
        source = ctx.get_parameter_source(param.name or "")
        where = " (from STRIPE_SANDBOX_API_KEY)" if source is click.core.ParameterSource.ENVIRONMENT else ""
        raise click.BadParameter(f"the sandbox only accepts test-mode keys (sk_test_...){where}")
    return value


@click.command("stripe-sandbox")
@click.option("--port", type=click.IntRange(0, 65535), default=12111, show_default=True, help="TCP port to listen on (0: any free port).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind (keep it on loopback).")
@click.option("--api-key", envvar="STRIPE_SANDBOX_API_KEY", default=None, callback=_test_mode_key,
              help="Accept only this key (default: any key starting sk_test_). Env: STRIPE_SANDBOX_API_KEY.")
@click.option("--state", "state_file", type=UserPath(dir_okay=False), default=None,
              help="Persist state to this JSON file (loaded at start, saved every 5 s and on exit).")
@click.option("--grace-period", type=click.IntRange(min=0), default=3600, show_default=True,
              help="Seconds a period-end invoice stays draft before it is finalized.")
@click.option("--webhook-retry-delays", "delays", default="5,30,120", show_default=True, callback=_delays,
              help="Comma-separated seconds between webhook delivery attempts (bounded retries).")
@click.option("--fault", "faults", multiple=True, callback=_faults,
              help='A fault rule as JSON, e.g. \'{"kind": "rate_limit", "path": "/v1/billing/meter_events", "rate": 0.1}\'. Repeatable.')
@click.option("--seed", type=int, default=None, help="Seed for fault rates (reproducible runs).")
@click.option("--now", type=click.IntRange(min=0), default=None, help="Freeze the sandbox clock at this unix time.")
def stripe_sandbox(
    port: int,
    host: str,
    api_key: str | None,
    state_file: str | None,
    grace_period: int,
    delays: tuple[float, ...],
    faults: list[dict],
    seed: int | None,
    now: int | None,
) -> None:
    """Run a local, stateful Stripe API sandbox; point the official SDK at it.

    \b
      client = stripe.StripeClient("sk_test_x",
          base_addresses={"api": "http://127.0.0.1:12111", "meter_events": "http://127.0.0.1:12111"})

    Control API (clock, faults, request log, webhook deliveries) under /_sandbox/; see the README.
    """
    from metering import config as paths
    from metering.stripe_sandbox import SandboxConfig, StripeSandbox

    if state_file:
        # it is saved every 5 s and at exit: a path that cannot be written must fail now, not at Ctrl-C
        paths.ensure_file_target(state_file, "--state")
    config = SandboxConfig(
        api_key=api_key,
        grace_period=grace_period,
        webhook_retry_delays=delays,
        faults=faults,
        seed=seed,
        now=now,
    )
    try:
        sandbox = StripeSandbox(config)
    except (ValueError, KeyError) as exc:
        raise BadInputError(f"could not start the sandbox: {exc}") from None
    if state_file:
        # loaded here rather than by the constructor, so a broken file is named as the culprit
        config.state_file = state_file
        if Path(state_file).exists():
            try:
                sandbox.state.load(state_file)
            except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
                why = f"no {exc} field" if isinstance(exc, KeyError) else str(exc)
                raise BadInputError(f"--state {state_file}: not a sandbox state file ({why})") from None
    try:
        sandbox.start(host, port)
    except OSError as exc:
        raise cannot_listen(host, port, exc) from None
    click.echo(f"stripe sandbox listening on {sandbox.base_url} (Ctrl-C to stop)", err=True)

    def _terminate(signum: int, frame: object) -> None:  # SIGTERM: stop and save like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        while sandbox.thread is not None and sandbox.thread.is_alive():
            sandbox.thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
        click.echo("stripe sandbox stopped", err=True)
