"""`metering generate`, `metering ingest`, `metering bench ingest`."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from metering import config, warehouse
from metering.cli.options import SEED, UserPath, check_order, date_in_range
from metering.errors import BadInputError
from metering.ingest.generate import DEMO_END, DEMO_START, FORMAT_SUFFIX, GenerateConfig


def _formats(value: str) -> tuple[str, ...]:
    formats = tuple(f.strip() for f in value.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMAT_SUFFIX]
    if unknown or not formats:
        raise click.BadParameter(f"unknown format(s) {', '.join(unknown) or '(none)'}; choose from "
                                 f"{', '.join(FORMAT_SUFFIX)}")
    return formats


def _memory(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None and (problem := warehouse.memory_limit_problem(value)):
        raise click.BadParameter(problem)
    return value


def _as_of(ctx: click.Context, param: click.Parameter, value: datetime | None) -> datetime | None:
    """The ingestion time future timestamps are judged by: a past moment (re-judging files as an earlier
    run did), not a later one, which would take events up to it as not in the future (an event dated
    2099 was accepted with `--as-of 2099-01-01`; `9999-12-31T23:59:59+00:00` was a traceback)."""
    from metering.ingest.contract import FUTURE_TOLERANCE

    value = date_in_range(ctx, param, value)
    if value is None:
        return None
    value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if value > datetime.now(timezone.utc) + FUTURE_TOLERANCE:
        raise click.BadParameter(f"{value.isoformat()} is in the future: events dated up to it would be taken "
                                 f"as not in the future (leave it out to judge by the time now)")
    return value


def _share(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not 0 <= value <= 0.5:
        raise click.BadParameter("a share is between 0 and 0.5")
    return value


@click.command()
@click.option("--seed", type=SEED, default=42, show_default=True,
              help="Same seed and options, same files (0 to 4294967295).")
@click.option("--customers", type=click.IntRange(1), default=200, show_default=True)
@click.option("--events", type=click.IntRange(1), default=100_000, show_default=True,
              help="Distinct clean events (duplicates and malformed rows come on top).")
@click.option("--start", type=click.DateTime(["%Y-%m-%d"]), default=DEMO_START.isoformat(), show_default=True,
              callback=date_in_range)
@click.option("--end", type=click.DateTime(["%Y-%m-%d"]), default=DEMO_END.isoformat(), show_default=True,
              callback=date_in_range, help="Last event date (inclusive).")
@click.option("--formats", default="jsonl,jsonl.gz,csv,parquet", show_default=True,
              help="Formats the daily files take in turn.")
@click.option("--out", type=UserPath(file_okay=False), default=None,
              help="Folder for the raw files (default: $METERING_RAW_DIR or data/raw/).")
@click.option("--customers-file", type=UserPath(dir_okay=False), default=None,
              help="Customer list to write (default: $METERING_CUSTOMERS or data/customers.csv).")
@click.option("--single-file", is_flag=True, help="One file for the whole range instead of one per day.")
@click.option("--duplicate-share", type=float, default=0.005, show_default=True, callback=_share)
@click.option("--conflict-share", type=float, default=0.001, show_default=True, callback=_share)
@click.option("--late-share", type=float, default=0.002, show_default=True, callback=_share)
@click.option("--malformed-share", type=float, default=0.001, show_default=True, callback=_share)
@click.option("--hostile-share", type=float, default=0.0005, show_default=True, callback=_share)
def generate(seed: int, customers: int, events: int, start: datetime, end: datetime, formats: str,
             out: str | None, customers_file: str | None, single_file: bool, duplicate_share: float,
             conflict_share: float, late_share: float, malformed_share: float, hostile_share: float) -> None:
    """Write deterministic sample usage logs (with every defect the validator knows) and the customer list."""
    from metering.ingest.generate import generate as run

    check_order(start.date(), end.date(), "--start", "--end")
    cfg = GenerateConfig(seed=seed, customers=customers, events=events, start=start.date(), end=end.date(),
                         formats=_formats(formats), duplicate_share=duplicate_share, conflict_share=conflict_share,
                         late_share=late_share, malformed_share=malformed_share, hostile_share=hostile_share,
                         single_file=single_file)
    origin = config.path_origin(customers_file, "--customers-file", "METERING_CUSTOMERS")
    customers_path = config.customers_path(customers_file)
    # refused before any folder is made: a refusal writes nothing
    for name, database in (("warehouse", config.warehouse_path(None)), ("analyst snapshot", config.snapshot_path(None))):
        if warehouse.overwrites_database(customers_path, database):
            raise BadInputError(f"{origin} {customers_path}: is the {name} ({database}) or its write-ahead log; "
                                f"the customer list needs a file of its own")
    out_dir = config.ensure_dir(config.raw_dir(out), config.path_origin(out, "--out", "METERING_RAW_DIR"))
    customers_path = config.ensure_file_target(customers_path, origin)
    with click.progressbar(length=1, label="generating", file=sys.stderr) as bar:
        def progress(name: str, done: int, total: int) -> None:
            bar.length = total
            bar.update(1, name)

        summary = run(cfg, out_dir, customers_path, progress=progress)
    click.echo(f"wrote {len(summary.files)} file(s) to {out_dir}: {summary.rows} rows "
               f"({summary.events} events, {summary.exact_duplicates} exact duplicates, "
               f"{summary.conflicting_duplicates} conflicting duplicates, {summary.late_events} late, "
               f"{sum(summary.malformed.values())} malformed, {summary.hostile_ids} hostile ids)")
    click.echo(f"wrote customer list {summary.customers_file}")


@click.command()
@click.argument("paths", nargs=-1, required=True, type=UserPath())
@click.option("--warehouse", "warehouse_path", type=UserPath(dir_okay=False), default=None,
              help="Warehouse file (default: $METERING_WAREHOUSE or data/warehouse.duckdb).")
@click.option("--rules", "rules_dir", type=UserPath(file_okay=False), default=None,
              help="Rules folder with meters.yaml (default: $METERING_RULES or rating_rules/).")
@click.option("--as-of", type=click.DateTime(["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d"]), default=None, callback=_as_of,
              help="Ingestion time used to reject future timestamps: now or earlier (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file instead of a table.")
@click.option("--memory-limit", default=None,
              callback=_memory, help="DuckDB memory_limit (e.g. 2GB): bounds memory, spilling to disk beyond it.")
def ingest(paths: tuple[str, ...], warehouse_path: str | None, rules_dir: str | None, as_of: datetime | None,
           as_json: bool, memory_limit: str | None) -> None:
    """Validate, de-duplicate and load raw usage files (folders: every raw file inside, in path order).

    Each file is one transaction; a file whose content was ingested before is skipped. An
    unreadable file stops the run with exit code 3 and leaves the warehouse as it was for that file;
    the files after it are not read (the message names them).
    """
    from metering.ingest import expand_paths, ingest_files

    for path in paths:   # all of them before the first file is read
        if not os.path.exists(path):   # a symbolic link to nothing too (os.path.lexists took it)
            link = " (a symbolic link to nothing)" if os.path.islink(path) else ""
            raise BadInputError(f"{path}: no such file or folder{link}")
    files = expand_paths(paths)
    if not files:
        raise BadInputError(f"no raw files (.jsonl, .jsonl.gz, .csv, .parquet) under {', '.join(paths)}")

    def show(r) -> None:
        if as_json:
            click.echo(json.dumps(r.as_dict()))
            return
        dates = f"{r.event_dates[0]}..{r.event_dates[-1]} ({len(r.event_dates)})" if r.event_dates else "-"
        click.echo(f"{Path(r.path).name[:40]:<40} {r.status:<8} {r.rows_read:>9} {r.rows_accepted:>9} "
                   f"{r.rows_quarantined:>9} {r.duplicates_dropped:>7} {r.conflicting_duplicates:>9}  {dates}")

    shown: list[object] = []
    with warehouse.open_warehouse(warehouse_path, memory_limit=memory_limit) as con:
        if not as_json:   # once the warehouse is open: a held or damaged one leaves stdout empty
            click.echo(f"{'file':<40} {'status':<8} {'read':>9} {'accepted':>9} {'quarant.':>9} {'dups':>7} "
                       f"{'conflicts':>9}  event dates")
        try:
            results = ingest_files(con, files, rules_dir=rules_dir, now=as_of,
                                   on_file=lambda r: (shown.append(r), show(r)))
        except BadInputError as exc:
            failed, later = files[len(shown):len(shown) + 1], files[len(shown) + 1:]
            if not later or not str(exc).startswith(f"{failed[0]}:"):   # the last file, or not a file's fault
                raise
            # the order is kept (the first version of a conflicting duplicate is the one that stays): the
            # later files wait for this one, and the operator needs to know they were not read
            names = ", ".join(Path(f).name for f in later[:3]) + (", ..." if len(later) > 3 else "")
            kept = f" (the {len(shown)} before it are kept and will be skipped)" if shown else ""
            raise BadInputError(f"{exc}; {len(later)} later file(s) not read ({names}): run again once it is "
                                f"fixed or moved{kept}") from exc
    if not as_json:
        done = [r for r in results if r.status == "ingested"]
        touched = sorted({d for r in done for d in r.event_dates})
        click.echo(f"{len(done)} file(s) ingested, {len(results) - len(done)} skipped (already ingested); "
                   f"{sum(r.rows_accepted for r in done)} events accepted, "
                   f"{sum(r.rows_quarantined for r in done)} quarantined, "
                   f"{sum(r.duplicates_dropped for r in done)} duplicates dropped; "
                   f"{len(touched)} event date(s) touched")


@click.command("ingest")
@click.option("--events", type=click.IntRange(1000), default=10_000_000, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["parquet", "jsonl", "csv", "jsonl.gz"]), default="parquet",
              show_default=True)
@click.option("--add", "add_events", type=click.IntRange(0), default=1_000_000, show_default=True,
              help="Then time adding a further file of this many events to the loaded warehouse (0: skip).")
@click.option("--memory-limit", default="2GB", show_default=True, callback=_memory,
              help="DuckDB memory_limit for the ingest.")
@click.option("--workdir", type=UserPath(file_okay=False), default=None,
              help="Where the generated files and the warehouse go (default: a temp folder under data/).")
@click.option("--keep", is_flag=True, help="Keep the generated files and warehouse.")
@click.option("--repeat", type=click.IntRange(1), default=1, show_default=True,
              help="Measure this many times, the floor and the ingestion alternating; print medians and ranges.")
def bench_ingest(events: int, fmt: str, add_events: int, memory_limit: str, workdir: str | None,
                 keep: bool, repeat: int) -> None:
    """Time full ingestion of N generated events against DuckDB's floor, measured in the same run."""
    from metering.ingest.bench import run_bench

    report = run_bench(events=events, fmt=fmt, add_events=add_events, memory_limit=memory_limit,
                       workdir=Path(workdir) if workdir else None, keep=keep, repeat=repeat,
                       echo=lambda line: click.echo(line, err=True))
    for line in report.lines():
        click.echo(line)


__all__ = ["generate", "ingest", "bench_ingest"]
