"""The `metering` command. Subcommands live in one module per domain and are imported lazily,
so `metering --help` stays fast and a broken optional area cannot stop the others.

Exit codes are documented in `metering.errors` and the README.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import NamedTuple

import click

from metering.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, MeteringError, user_path_error
from metering.logs import LOG_LEVELS, env_log_json, env_log_level, redact, setup_logging


class Lazy(NamedTuple):
    """Where a subcommand lives, and the one-line summary `metering --help` lists for it (the first
    sentence of its help; a test holds the two equal). Listing from here spares `--help` importing
    every command's module: with Dagster, Polars and the Stripe SDK it took 1.3-2.0 s, now ~0.07 s."""

    spec: str  # "module:attribute"
    summary: str


# A command whose module does not exist is not listed.
COMMANDS: dict[str, Lazy] = {
    "generate": Lazy("metering.cli.ingest_cmds:generate", "Write deterministic sample usage logs (with every defect the "
                     "validator knows) and the customer list."),
    "ingest": Lazy("metering.cli.ingest_cmds:ingest", "Validate, de-duplicate and load raw usage files (folders: every "
                   "raw file inside, in path order)."),
    "publish": Lazy("metering.cli.warehouse_cmds:publish", "Copy the warehouse to the read-only analyst snapshot and "
                    "swap it in atomically."),
    "bench": Lazy("metering.cli:bench", "Benchmarks that measure speed and peak memory against a floor measured in "
                  "the same run."),
    "rules": Lazy("metering.cli.rating_cmds:rules", "Pricing rules in rating_rules/: meters, plans and their versions."),
    "rate": Lazy("metering.cli.rating_cmds:rate", "Rate an aggregated usage file offline (no warehouse): one row per "
                 "customer x charge line."),
    "rerate": Lazy("metering.cli.rating_cmds:rerate", "Recompute usage aggregates for event dates FROM..TO and re-rate "
                   "every billing month they touch."),
    "stripe-sandbox": Lazy("metering.cli.sandbox_cmds:stripe_sandbox", "Run a local, stateful Stripe API sandbox; "
                           "point the official SDK at it."),
    "stripe": Lazy("metering.cli.push_cmds:stripe", "Stripe catalog sync and usage push (STRIPE_API_KEY, "
                   "STRIPE_API_BASE)."),
    "webhooks": Lazy("metering.cli.webhook_cmds:webhooks", "Stripe webhooks: receiver, landing into DuckDB, repair "
                     "from Stripe's event list."),
    "dunning": Lazy("metering.cli.dunning_cmds:dunning", "Chase failed invoice payments by the policy in "
                    "rating_rules/dunning.yaml."),
    "reconcile": Lazy("metering.cli.report_cmds:reconcile", "Reconcile a billing month: ours vs pushed vs Stripe's "
                      "meters vs Stripe's invoices."),
    "report": Lazy("metering.cli.report_cmds:report", "Write the finance report (HTML, XLSX, CSV) of a reconciled "
                   "billing month."),
    # drives Dagster, so it lives in the Dagster layer
    "demo": Lazy("pipelines.demo:demo", "The main job: a month of usage ingested, rated, pushed to the local Stripe "
                 "sandbox, invoiced, reconciled and dunned, end to end on this machine."),
}

BENCH_COMMANDS: dict[str, Lazy] = {
    "ingest": Lazy("metering.cli.ingest_cmds:bench_ingest", "Time full ingestion of N generated events against "
                   "DuckDB's floor, measured in the same run."),
    "rate": Lazy("metering.cli.rating_cmds:bench_rate", "Rate ROWS aggregated rows (customer x meter x day, every "
                 "model); print time and peak memory."),
    "push": Lazy("metering.cli.push_cmds:bench_push", "Push one day for CUSTOMERS customers x 5 meters to a local "
                 "sandbox; print time, calls, retries."),
}


def _short_help(summary: str, limit: int) -> str:
    """`summary` shortened to `limit` as click shortens a command's help."""
    return click.Command(None, help=summary).get_short_help_str(limit)


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

    def __init__(self, *args, lazy: dict[str, Lazy], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, lazy in self.lazy.items() if _available(lazy.spec))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        lazy = self.lazy.get(name)
        if lazy is None or not _available(lazy.spec):
            return None
        return _load(lazy.spec)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click lists commands, from the summaries instead of the loaded commands."""
        names = self.list_commands(ctx)
        if names:
            limit = formatter.width - 6 - max(len(n) for n in names)
            with formatter.section("Commands"):
                formatter.write_dl([(n, _short_help(self.lazy[n].summary, limit)) for n in names])

    def invoke(self, ctx: click.Context):
        # click 8.2+ warns on `protected_args`; click 9 will keep everything in `args`
        remaining = [*getattr(ctx, "_protected_args", ()), *ctx.args]
        ctx.meta["metering.asks_for_help"] = any(a in ctx.help_option_names for a in remaining[:_end(remaining)])
        try:
            return super().invoke(ctx)
        except MeteringError as exc:
            _fail(ctx, exc)
        except KeyboardInterrupt:
            _interrupted(ctx)
        except (RuntimeError, duckdb_interrupt()) as exc:
            if not is_interrupt(exc):
                raise
            _interrupted(ctx)
        except OSError as exc:
            # The one place a path the user chose (an --out folder under /proc, a file where a folder
            # should be, a read-only mount) turns into exit 3 naming the path, whichever command wrote it
            error = user_path_error(exc)
            if error is None:
                raise
            _fail(ctx, error)


def _end(args: list[str]) -> int:
    """Where options end: `--` makes the rest arguments (a file called --help)."""
    return args.index("--") if "--" in args else len(args)


def duckdb_interrupt() -> type[BaseException]:
    """DuckDB's error for an interrupted query, imported only where a command already loaded DuckDB
    (`--help` and the lazy listing stay free of it)."""
    duckdb = sys.modules.get("duckdb")
    return getattr(duckdb, "InterruptException", RuntimeError) if duckdb is not None else RuntimeError


def is_interrupt(exc: BaseException) -> bool:
    """Whether an error is Ctrl-C in DuckDB's words: its `InterruptException`, the RuntimeError "Query
    interrupted" it raises when the signal arrives while a result is fetched, or any error raised while a
    KeyboardInterrupt was being handled. Another RuntimeError that says "interrupted" (a dropped
    connection, say) is a failure, not the user's Ctrl-C."""
    interrupt = duckdb_interrupt()
    return ((interrupt is not RuntimeError and isinstance(exc, interrupt))
            or (type(exc) is RuntimeError and str(exc) == "Query interrupted")
            or isinstance(exc.__cause__ or exc.__context__, KeyboardInterrupt))


def _interrupted(ctx: click.Context) -> None:
    """Ctrl-C: one line and exit 130. Click's standalone mode made it "Aborted!" and exit 1 (a bug, by
    the exit codes), and DuckDB's form of it a RuntimeError traceback."""
    click.echo("interrupted", err=True)
    ctx.exit(EXIT_INTERRUPTED)


def _fail(ctx: click.Context, exc: MeteringError) -> None:
    click.echo(f"error: {redact(str(exc))}", err=True)
    ctx.exit(exc.exit_code)


def _log_settings(log_level: str | None, log_json: bool | None) -> tuple[str | None, bool | None]:
    """The options, else the environment. A bad variable is a usage error (exit 2) naming it, except
    under --help, which must always work: the help is shown and logging keeps its defaults."""
    try:
        level = log_level or env_log_level()
        as_json = log_json if log_json is not None else env_log_json()
    except ValueError as exc:
        if click.get_current_context().meta.get("metering.asks_for_help"):
            return log_level or "INFO", bool(log_json)
        raise click.UsageError(str(exc)) from None
    return level, as_json


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False), default=None,
              help="DEBUG, INFO (default), WARNING, ERROR, in any case (default: $METERING_LOG_LEVEL).")
@click.option("--log-json/--log-text", default=None,
              help="Structured JSON logs (default: $METERING_LOG_JSON, else JSON when stderr is not a terminal).")
def cli(log_level: str | None, log_json: bool | None) -> None:
    """Usage metering and rating engine: raw logs -> DuckDB -> exact rating -> Stripe, reconciled.

    Exit codes: 0 ok, 1 internal error, 2 usage error, 3 bad input, 4 check failed,
    5 Stripe/external failure, 6 warehouse locked by another writer, 130 interrupted.
    """
    setup_logging(*_log_settings(log_level, log_json))


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
        sys.exit(EXIT_INTERRUPTED)
    except Exception:  # a bug: keep the traceback, but redacted
        import traceback

        click.echo(redact(traceback.format_exc()), err=True)
        sys.exit(EXIT_INTERNAL)
