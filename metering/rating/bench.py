"""`metering bench rate`: rate N aggregated rows (customer x meter x day, every model) and time it."""

from __future__ import annotations

import datetime as dt
import resource
import statistics
import time
from dataclasses import dataclass

import polars as pl

from metering.customers import CUSTOMER_PLAN_SCHEMA, billing_segments, with_effective_to
from metering.rating import money
from metering.rating.aggregate import AGGREGATE_SCHEMA, charge_quantities
from metering.rating.pricing import rate
from metering.rules.model import Rules

MONTH = dt.date(2026, 10, 1)
DAYS = 30


@dataclass
class BenchResult:
    rows: int
    customers: int
    lines: int
    seconds: list[float]          # wall time of each repetition
    cpu_seconds: list[float]      # process CPU time of each repetition (all threads)
    peak_rss_mib: float

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def synthetic_usage(rules: Rules, rows: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(customer plan assignments, aggregated rows) with `rows` rows over October 2026, built vectorised."""
    meters = sorted(rules.meters)
    customers = max(1, -(-rows // (len(meters) * DAYS)))
    plans = sorted(rules.plans)
    cust = pl.DataFrame({"i": pl.int_range(0, customers, eager=True)}).with_columns(
        customer_id=pl.format("cus_{}", pl.col("i").cast(pl.String).str.zfill(7)),
    )
    plan_table = pl.DataFrame({"k": list(range(len(plans))), "plan_name": plans}, schema={"k": pl.Int64, "plan_name": pl.String})
    cust = cust.with_columns(k=(pl.col("i") % len(plans))).join(plan_table, on="k").sort("i")
    currency = {p: rules.plans[p].currency for p in plans}
    assignments = cust.select(
        "customer_id",
        name=pl.col("customer_id"),
        email=pl.format("{}@example.com", pl.col("customer_id")),
        currency=pl.col("plan_name").replace_strict(currency),
        billing_anchor_day=pl.when(pl.col("i") % 3 == 0).then(None).otherwise(pl.col("i") % 31 + 1).cast(pl.Int32),
        plan=pl.col("plan_name"),
        plan_effective_from=pl.lit(dt.date(2026, 1, 1)),
        plan_effective_to=pl.lit(None, dtype=pl.Date),
        payment_behavior=pl.lit("succeeds"),
        source_line=(pl.col("i") + 2).cast(pl.Int64),
    ).cast(CUSTOMER_PLAN_SCHEMA)  # type: ignore[arg-type]
    grid = (
        cust.select("customer_id", "i")
        .join(pl.DataFrame({"meter": meters}), how="cross")
        .join(pl.DataFrame({"day": pl.int_range(0, DAYS, eager=True)}), how="cross")
        .head(rows)
    )
    n = pl.int_range(0, pl.len())
    pseudo = (n * 2654435761 + 12345) % 100_003
    dims = {
        "api_calls": pl.when(pl.col("day") % 2 == 0).then(pl.lit('{"region":"us"}')).otherwise(pl.lit('{"region":"eu"}')),
        "tokens": pl.when(pl.col("day") % 3 == 0).then(pl.lit('{"model":"large"}')).otherwise(pl.lit('{"model":"small"}')),
    }
    dim_expr = pl.lit("{}")
    for meter, expr in dims.items():
        dim_expr = pl.when(pl.col("meter") == meter).then(expr).otherwise(dim_expr)
    hour = pl.lit(dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)) + pl.duration(days=pl.col("day"))
    usage = grid.with_columns(
        dimensions=dim_expr,
        hour=hour,
        event_date=hour.dt.date(),
        quantity=pl.when(pl.col("meter") == "tokens").then(pseudo * 1000)
        .when(pl.col("meter") == "storage_gb").then(pseudo % 2000)
        .when(pl.col("meter") == "seats").then(pseudo % 80)
        .otherwise(pseudo % 5000).cast(money.QUANTITY_DTYPE),
        event_count=pl.lit(1, dtype=pl.Int64),
        last_event_time=hour,
        last_event_id=pl.format("e{}", n),
        distinct_values=pl.when(pl.col("meter") == "active_users")
        .then(pl.concat_list([pl.format("u{}", pseudo % 40), pl.format("u{}", pseudo % 17)]))
        .otherwise(pl.lit(None, dtype=pl.List(pl.String))),
    ).select(list(AGGREGATE_SCHEMA)).cast(AGGREGATE_SCHEMA)  # type: ignore[arg-type]
    return with_effective_to(assignments), usage


def run(rules: Rules, rows: int = 1_000_000, repeat: int = 3) -> BenchResult:
    """Time aggregation to periods plus pricing (not data generation) for `rows` aggregated rows.

    Repeated `repeat` times on the same input (the machine is shared: report the median).
    """
    assignments, usage = synthetic_usage(rules, rows)
    walls, cpus = [], []
    lines = 0
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        segments = billing_segments(assignments, rules, MONTH)
        quantities = charge_quantities(usage, segments, rules)
        rated = rate(segments, quantities, rules)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
        lines = rated.height
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return BenchResult(rows=usage.height, customers=assignments.height, lines=lines, seconds=walls,
                       cpu_seconds=cpus, peak_rss_mib=peak)
