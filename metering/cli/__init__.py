"""The `metering` command. Subcommands live in one module per domain and are imported lazily,
so `metering --help` stays fast and a broken optional area cannot stop the others.

Exit codes are documented in `metering.errors` and the README.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from metering.errors import EXIT_INTERNAL, MeteringError
from metering.logs import redact, setup_logging

# command name -> "module:attribute". A command whose module does not exist yet is not listed.
COMMANDS: dict[str, str] = {
    "generate": "metering.cli.ingest_cmds:generate",
    "ingest": "metering.cli.ingest_cmds:ingest",
    "publish": "metering.cli.warehouse_cmds:publish",
    "bench": "metering.cli:bench",
    "rules": "metering.cli.rating_cmds:rules",
    "rate": "metering.cli.rating_cmds:rate",
    "rerate": "metering.cli.rating_cmds:rerate",
    "stripe-sandbox": "metering.cli.sandbox_cmds:stripe_sandbox",
    "stripe": "metering.cli.push_cmds:stripe",
    "webhooks": "metering.cli.webhook_cmds:webhooks",
    "dunning": "metering.cli.dunning_cmds:dunning",
    "reconcile": "metering.cli.report_cmds:reconcile",
    "report": "metering.cli.report_cmds:report",
    "demo": "pipelines.demo:demo",  # drives Dagster, so it lives in the Dagster layer
}

BENCH_COMMANDS: dict[str, str] = {
    "ingest": "metering.cli.ingest_cmds:bench_ingest",
    "rate": "metering.cli.rating_cmds:bench_rate",
    "push": "metering.cli.push_cmds:bench_push",
}


def _available(spec: str) -> bool:
    module = spec.split(":")[0]
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _load(spec: str) -> click.Command:
    module, attr = spec.split(":")
    return getattr(importlib.import_module(module), attr)


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def __init__(self, *args, lazy: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, spec in self.lazy.items() if _available(spec))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        spec = self.lazy.get(name)
        if spec is None or not _available(spec):
            return None
        return _load(spec)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except MeteringError as exc:
            click.echo(f"error: {redact(str(exc))}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR.")
@click.option("--log-json/--log-text", default=None, help="Structured JSON logs (default when stderr is not a terminal).")
def cli(log_level: str | None, log_json: bool | None) -> None:
    """Usage metering and rating engine: raw logs -> DuckDB -> exact rating -> Stripe, reconciled.

    Exit codes: 0 ok, 1 internal error, 2 usage error, 3 bad input, 4 check failed,
    5 Stripe/external failure, 6 warehouse locked by another writer.
    """
    setup_logging(log_level, log_json)


@click.group(cls=LazyGroup, lazy=BENCH_COMMANDS)
def bench() -> None:
    """Benchmarks that measure speed and peak memory against a floor measured in the same run."""


def main() -> None:
    """Console entry point: user mistakes become one line and an exit code, never a traceback."""
    try:
        cli.main(standalone_mode=True)
    except MeteringError as exc:  # raised outside a group's invoke (e.g. while loading)
        click.echo(f"error: {redact(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except Exception:  # a bug: keep the traceback, but redacted
        import traceback

        click.echo(redact(traceback.format_exc()), err=True)
        sys.exit(EXIT_INTERNAL)
