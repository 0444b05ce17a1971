"""`metering rules validate`, `metering rate` (offline what-if), `metering rerate`, `metering bench rate`."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from pathlib import Path

import click
import polars as pl

from metering import config
from metering.cli.options import UserPath, check_order, parse_date
from metering.errors import BadInputError, CheckFailedError

log = logging.getLogger(__name__)

OUTPUT_SUFFIXES = (".csv", ".parquet", ".pq")


def _output_file(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not value.lower().endswith(OUTPUT_SUFFIXES):
        raise click.BadParameter(f"{value!r}: the name must end in .csv or .parquet (the format it is written in)")
    return value


def format_minor(minor: int, currency: str) -> str:
    """12345 usd -> 123.45; 22500 jpy -> 22500."""
    from decimal import Decimal

    from metering.rules.model import minor_digits

    return str(Decimal(minor).scaleb(-minor_digits(currency)))


def _rated_versions(warehouse_path: str | None) -> tuple[dict, dict] | None:
    """Hashes of versions (and meters) that already rated, and the time each version rated before today
    (`service.rated_until`), read-only from the warehouse if it exists.

    When a running job holds the warehouse, the published snapshot (a copy) is read instead.
    """
    from metering import warehouse
    from metering.errors import WarehouseLockedError
    from metering.rating.service import rated_hashes, rated_until

    path = config.warehouse_path(warehouse_path)
    if not path.exists():
        return None
    # the snapshot copies the default warehouse, so it stands in only for that one
    candidates = [c for c in [path] + ([config.snapshot_path()] if warehouse_path is None else []) if c.exists()]
    for tried, candidate in enumerate(candidates, start=1):
        try:
            with warehouse.open_warehouse(candidate, read_only=True) as con:
                tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
                if not {"rules_versions", "rated_usage"} <= tables:
                    return {}, {}
                return rated_hashes(con), rated_until(con, dt.datetime.now(dt.timezone.utc).date())
        except WarehouseLockedError:
            if tried < len(candidates):
                click.echo(f"note: {candidate} is held by a running job; trying the published snapshot", err=True)
    raise WarehouseLockedError(f"{path}: held by another process and no published snapshot to read rated versions from")


@click.group()
def rules() -> None:
    """Pricing rules in rating_rules/: meters, plans and their versions."""


@rules.command()
@click.argument("rules_dir", required=False, type=UserPath(file_okay=False))
@click.option("--warehouse", "warehouse_path", type=UserPath(dir_okay=False), default=None,
              help="Warehouse whose rated versions must stay unchanged (default: $METERING_WAREHOUSE or "
                   "data/warehouse.duckdb; skipped when the file does not exist).")
def validate(rules_dir: str | None, warehouse_path: str | None) -> None:
    """Check every meter, plan and version; list every problem as `file:line: field: what is wrong`.

    Exits 3 when there are problems.
    """
    from metering.dunning.policy import validate_dunning
    from metering.rules.plans import check_rules

    rated = _rated_versions(warehouse_path)
    hashes, until = rated if rated is not None else (None, None)
    found, errors = check_rules(rules_dir, rated_hashes=hashes, rated_until=until)
    errors = [*errors, *validate_dunning(config.rules_dir(rules_dir))]  # the policy lives beside the plans
    for line in errors:
        click.echo(line)
    root = config.rules_dir(rules_dir)
    if errors:
        raise BadInputError(f"{len(errors)} problem(s) in {root}")
    versions = sum(len(p.versions) for p in found.plans.values())
    note = "" if hashes is not None else " (no warehouse: immutability of rated versions not checked)"
    click.echo(f"ok: {len(found.meters)} meters, {len(found.plans)} plans, {versions} versions{note}")


@click.command()
@click.option("--rules", "rules_dir", type=UserPath(file_okay=False), default=None,
              help="Rules folder (default: $METERING_RULES or rating_rules/).")
@click.option("--usage", "usage_file", required=True, type=UserPath(dir_okay=False),
              help="Aggregated usage, CSV or Parquet: customer_id, meter, quantity [, plan, period_start, dimensions].")
@click.option("--out", "out_file", required=True, type=UserPath(dir_okay=False), callback=_output_file,
              help="Where to write the rated lines (.csv or .parquet).")
@click.option("--plan", default=None, help="Price every row under this plan (what-if).")
@click.option("--at", "at", default=None, callback=parse_date, help="Use the plan version in force on this date.")
def rate(rules_dir: str | None, usage_file: str, out_file: str, plan: str | None, at: dt.date | None) -> None:
    """Rate an aggregated usage file offline (no warehouse): one row per customer x charge line."""
    from metering.rating.whatif import rate_usage, read_usage_file, write_output
    from metering.rules.plans import load_rules

    config.ensure_file_target(out_file, "--out")
    if os.path.exists(out_file) and os.path.exists(usage_file) and os.path.samefile(out_file, usage_file):
        raise BadInputError(f"--out {out_file}: is the --usage file; the rated lines would replace the usage they "
                            f"price: choose another file")
    rules_obj = load_rules(rules_dir)
    if plan is not None and plan not in rules_obj.plans:
        raise BadInputError(f"--plan: unknown plan {plan!r} (plans: {', '.join(sorted(rules_obj.plans))})")
    rated, unmatched = rate_usage(read_usage_file(usage_file), rules_obj, plan=plan, at=at, source=usage_file)
    write_output(rated, out_file)
    if unmatched.height:
        first = unmatched.row(0, named=True)
        click.echo(f"warning: {unmatched.height} usage row(s) match no charge of their plan version and are not "
                   f"priced (first: {usage_file}:{first['line']}: {first['meter']} {first['dimensions']} under "
                   f"{first['plan']} {first['plan_version']})", err=True)
    totals = rated.group_by("currency").agg(pl.col("amount_minor").sum()).sort("currency")
    summary = ", ".join(f"{c} {format_minor(t, c)}" for c, t in totals.iter_rows())
    click.echo(f"rated {rated.height} lines for {rated['customer_id'].n_unique()} customers -> {out_file} ({summary})")


@click.command()
@click.option("--from", "first", required=True, callback=parse_date, help="First event date (YYYY-MM-DD, UTC).")
@click.option("--to", "last", required=True, callback=parse_date, help="Last event date, inclusive.")
@click.option("--warehouse", "warehouse_path", type=UserPath(dir_okay=False), default=None,
              help="Warehouse file (default: $METERING_WAREHOUSE or data/warehouse.duckdb).")
@click.option("--rules", "rules_dir", type=UserPath(file_okay=False), default=None,
              help="Rules folder (default: $METERING_RULES or rating_rules/).")
@click.option("--customers", "customers_file", type=UserPath(dir_okay=False), default=None,
              help="Reload the customer list from this CSV first (default: keep the warehouse's customer_plans).")
@click.option("--adjust-closed", "adjust_reason", default=None, metavar="REASON",
              help="Let the customer list re-price closed (ended) periods, recording every change in "
                   "rating_adjustments with this reason (otherwise such a change is refused, I19).")
def rerate(first: dt.date, last: dt.date, warehouse_path: str | None, rules_dir: str | None,
           customers_file: str | None, adjust_reason: str | None) -> None:
    """Recompute usage aggregates for event dates FROM..TO and re-rate every billing month they touch.

    Same code as the Dagster assets; re-running with unchanged inputs gives identical lines. A closed
    period changes only with late usage, or with --adjust-closed; each change is recorded in
    rating_adjustments. Usage no line covers (an unknown customer, no plan in force, no matching
    charge) is listed on stderr and in the summary, and exits 4 (check failed) with the lines stored.
    """
    import hashlib

    from metering import warehouse
    from metering.customers import load_customers
    from metering.rating.service import Adjustment, guarded_rules, rerate_range

    check_order(first, last, "--from", "--to")
    if adjust_reason is not None and not adjust_reason.strip():
        raise click.BadParameter("give the reason for re-pricing closed periods", param_hint="--adjust-closed")
    with warehouse.open_warehouse(warehouse_path, wait_seconds=5, must_exist=True) as con:
        rules_obj = guarded_rules(con, config.rules_dir(rules_dir), dt.datetime.now(dt.timezone.utc))
        link: dict = {"customers": "customer_plans, as stored"}
        frame = None
        # what rating reads of the list (not names, emails or line numbers): a list giving the same again
        # leaves no month rated with another
        stored_plans = ("SELECT customer_id, currency, billing_anchor_day, plan, plan_effective_from, "
                        "plan_effective_to FROM customer_plans ORDER BY ALL")
        plans_before = con.execute(stored_plans).fetchall() if customers_file else None
        if customers_file:
            frame = load_customers(customers_file, rules_obj)
            link = {"customers": str(Path(customers_file).resolve()),
                    "sha256": hashlib.sha256(Path(customers_file).read_bytes()).hexdigest()}
        adjust = Adjustment(adjust_reason.strip(), link) if adjust_reason else None
        with click.progressbar(length=1, label="re-rating", file=sys.stderr) as bar:
            def progress(done: int, total: int) -> None:
                bar.length = total
                bar.update(done - bar.pos)

            # the list is stored in the transaction that writes the months: a refused list (bad input,
            # unsound events, an interrupt) never stays behind for the next run to price with
            summaries = rerate_range(con, rules_obj, first, last, dt.datetime.now(dt.timezone.utc), progress,
                                     adjust, customers=frame)
        unpriced_frames = {s["month"]: s["unpriced"] for s in summaries}   # what the check all_usage_priced lists
        done = {s["month"] for s in summaries}
        stale = [m for (m,) in con.execute(
            "SELECT DISTINCT date_trunc('month', period_start)::DATE FROM rated_usage ORDER BY 1").fetchall()
            if m not in done] if customers_file and con.execute(stored_plans).fetchall() != plans_before else []
    unpriced = {month: _unpriced_summary(frame) for month, frame in unpriced_frames.items() if frame.height}
    for s in summaries:
        totals = ", ".join(f"{c} {format_minor(t, c)}" for c, t in s["totals"].items()) or "no lines"
        state = "changed" if s["changed"] else "unchanged"
        line = f"{s['month']:%Y-%m}: {s['lines']} lines, {state} ({totals})"
        click.echo(line + (f"; not priced: {unpriced[s['month']]}" if s["month"] in unpriced else ""))
    if stale:   # the new customer list applies only to what was re-rated
        click.echo(f"warning: the customer list changed; {', '.join(f'{m:%Y-%m}' for m in stale)} "
                   f"stay rated with the previous one until re-rated (metering rerate over their dates)", err=True)
    if unpriced:
        for month, text in unpriced.items():
            click.echo(f"warning: {month:%Y-%m}: usage no rated line covers, so it is not billed: {text}", err=True)
        events = sum(int(frame["events"].sum()) for frame in unpriced_frames.values())
        raise CheckFailedError(
            f"{events} usage event(s) not priced in {', '.join(f'{m:%Y-%m}' for m in unpriced)} (the check "
            f"all_usage_priced; listed above). The rated lines are stored: load the customers (--customers) "
            f"or fix the rules, then re-rate")


def _unpriced_summary(unpriced: pl.DataFrame) -> str:
    """`aggregate.unpriced_usage` rows as one line: events and customers per reason, and the first."""
    parts = []
    for reason, frame in unpriced.group_by("reason", maintain_order=True):
        customers = sorted(frame["customer_id"].unique().to_list())
        shown = ", ".join(customers[:3]) + (", ..." if len(customers) > 3 else "")
        parts.append(f"{int(frame['events'].sum())} event(s) of {len(customers)} customer(s) "
                     f"{REASONS.get(reason[0], reason[0])} ({shown})")
    return "; ".join(parts)


# the reasons of `aggregate.unpriced_usage`, said for a person
REASONS = {"unknown_customer": "not in the customer list (unknown_customer)",
           "no_plan_in_force": "with no plan in force (no_plan_in_force)",
           "no_matching_charge": "that no charge of their plan prices (no_matching_charge)"}


@click.command("rate")
@click.option("--rows", type=click.IntRange(min=1), default=1_000_000, show_default=True, help="Aggregated rows to rate.")
@click.option("--repeat", type=click.IntRange(min=1), default=3, show_default=True,
              help="Repetitions on the same input (median reported).")
@click.option("--rules", "rules_dir", type=UserPath(file_okay=False), default=None)
def bench_rate(rows: int, repeat: int, rules_dir: str | None) -> None:
    """Rate ROWS aggregated rows (customer x meter x day, every model); print time and peak memory."""
    from metering.rating import bench
    from metering.rules.plans import load_rules

    r = bench.run(load_rules(rules_dir), rows, repeat)
    runs = ", ".join(f"{s:.3f}" for s in r.seconds)
    cpu = ", ".join(f"{s:.2f}" for s in r.cpu_seconds)
    click.echo(
        f"rated {r.rows:,} aggregated rows ({r.customers:,} customers -> {r.lines:,} lines): median {r.median:.3f} s "
        f"wall ({r.rows / r.median:,.0f} rows/s; runs {runs} s; CPU {cpu} s); peak RSS {r.peak_rss_mib:,.0f} MiB "
        f"(whole process, input generation included); target <= 2 s: {'met' if r.median <= 2 else 'MISSED'}"
    )
