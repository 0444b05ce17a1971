"""Offline what-if rating of an aggregated usage file, with no warehouse.

The file (CSV or Parquet) has one row per customer x meter (x dimension values) with the period
quantity: `customer_id, meter, quantity`, optionally `plan`, `period_start` (YYYY-MM-DD) and one
column per dimension (`region`, `model`, ...). `--plan` prices every row under that plan instead;
`--at` picks the plan version in force on that date (else the version in force on each row's
`period_start`). A row's period is the calendar month holding its `period_start` (with `--at`, for
a file without the column or a row that leaves it blank: the month holding that date), and the
whole period is one segment (no anchor or plan change is known offline, so flat fees are not
prorated). `--at` never moves a row
to another period: rows of October and November priced `--at 2026-10-01` are two periods, each
with its own fee, minimum and tiers.

A customer's period is priced under exactly one plan version (I6). Rows of one customer whose dates
fall in one month but on either side of a version change (2026-10-03 and 2026-10-20 around pro's
Oct 15 change), or that name two plans, are refused with their lines (exit 3) rather than priced:
each would be a whole-month segment of its own, charging the flat fee and the minimum twice, and
picking one version silently would price rows under a version their date does not name. The
analyst chooses: `--at DATE` prices every row under the version in force that day, or the rows
are re-dated (or given distinct customer ids, to compare plans side by side).

Rows of one customer that fall under the same charge are combined by the meter's aggregation
across rows: count, sum and unique_count add (unique counts of different rows are taken as
disjoint), max and last take the largest. Pricing is `metering.rating.pricing.rate`, the same
function the assets use.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import NamedTuple

import polars as pl

from metering.customers import FIRST_DATE, LAST_DATE, month_bounds
from metering.errors import BadInputError
from metering.rating import money
from metering.rating.aggregate import charge_map
from metering.rating.pricing import rate
from metering.rules.model import Rules

FILE_LINE = "_file_line"   # read_usage_file's record start lines (a quoted value may span lines)

OUTPUT_COLUMNS = [
    "customer_id", "plan", "plan_version", "charge", "meter", "quantity", "billable_quantity", "amount",
    "currency", "amount_minor", "amount_unrounded", "period_start", "period_end", "rules_hash", "tiers",
]


def read_usage_file(path: str | Path) -> pl.DataFrame:
    """Read CSV (every column as text, nothing inferred) or Parquet."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pl.read_parquet(path, glob=False)  # `usage[1].parquet` is a name, not a pattern
            starts = None
        else:
            starts = _check_csv_records(path)
            frame = pl.read_csv(path, infer_schema=False, glob=False)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise BadInputError(f"{path}: cannot read usage file: {exc}") from None
    if FILE_LINE in frame.columns:   # the file's own values would be taken for line numbers in every message
        raise BadInputError(f"{path}: (header): column '{FILE_LINE}' is reserved; rename it")
    if starts is not None and frame.height != len(starts):   # bare CR line ends: Polars sees no record
        raise BadInputError(f"{path}: cannot read usage file: {len(starts)} record(s) but {frame.height} row(s) "
                            "read (line ends other than LF or CRLF?)")
    if starts is not None:   # a record may span lines
        frame = frame.with_columns(pl.Series(FILE_LINE, starts, dtype=pl.UInt32))
    return frame


def _check_csv_records(path: Path) -> list[int]:
    """Every record closes its quotes and has the header's number of fields, else name its line.

    Polars pads a short record with nulls (a dimension or `period_start` silently absent, so the
    row is priced under another charge or date) and refuses a long one without saying where. A
    blank line passes here; Polars reads it as a row of nulls, which the field checks then name.
    """
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as fh:
        reader = csv.reader(fh, strict=True)
        starts = 1   # the line the next record starts on: an unclosed quote is reported at EOF otherwise
        lines: list[int] = []
        try:
            header = next(reader, None)
            while header is not None:
                starts = reader.line_num + 1
                record = next(reader, None)
                if record is None:
                    break
                lines.append(starts)
                if record and len(record) != len(header):
                    raise BadInputError(f"{path}:{starts}: (row): {len(record)} field(s) where the "
                                        f"header has {len(header)}")
        except csv.Error as exc:
            raise BadInputError(f"{path}:{starts}: (row): broken quoting: {exc}") from None
    return lines


def _fail(path: str, frame: pl.DataFrame, mask: pl.Expr, field: str, what: str) -> None:
    bad = frame.filter(mask)
    if bad.height:
        # the field as text: a date Polars holds but Python cannot (year 0) made the message a traceback
        shown = pl.col(field).cast(pl.String) if field in frame.columns else pl.lit(None, pl.String).alias(field)
        row = bad.select("_line", shown).row(0, named=True)
        line = row["_line"]
        raise BadInputError(f"{path}:{line}: {field}: {what} ({bad.height} row(s); first value {row[field]!r})")


def _one_version_per_period(path: str, frame: pl.DataFrame, *, dated: bool) -> None:
    """Refuse a customer's period that rows put under two plan versions (or plans), naming their lines
    (`_line`).

    Offline, each distinct (customer, period, plan, version) is a whole-period segment, so two of
    them in one period would bill that month's flat fee and minimum once per version.
    """
    mixed = (
        frame.group_by("customer_id", "period_start", "period_end")
        .agg(pl.struct("plan", "plan_version").n_unique().alias("_versions"), pl.col("_line").min())
        .filter(pl.col("_versions") > 1)
        .sort("_line")
    )
    if not mixed.height:
        return
    customer, start, end = mixed.row(0)[:3]
    groups = (
        frame.filter((pl.col("customer_id") == customer) & (pl.col("period_start") == start))
        .group_by("plan", "plan_version", maintain_order=True)
        .agg(pl.col("_line"), pl.col("on").first())
    )
    parts = []
    for plan, version, lines, on in groups.iter_rows():
        shown = ", ".join(str(n) for n in lines[:5]) + (", ..." if len(lines) > 5 else "")
        parts.append(f"{plan} {version} (in force on {on}: line(s) {shown})")
    line = groups["_line"][1][0]      # the first row that brings in a second version
    two_plans = groups["plan"].n_unique() > 1
    field = "plan" if two_plans or not dated else "period_start"
    fix = ("give each plan its own customer id, or pass --plan" if two_plans
           else "pass --at DATE to price every row under the version in force that day, or date the rows alike")
    raise BadInputError(
        f"{path}:{line}: {field}: customer {customer}'s period {start}..{end} would be priced under "
        f"{groups.height} plan versions at once: {'; '.join(parts)}; a period is priced under one version "
        f"(else its flat fee and minimum are charged once per version): {fix} "
        f"({mixed.height} customer period(s))")


class WhatIf(NamedTuple):
    rated: pl.DataFrame       # OUTPUT_COLUMNS, one row per customer x charge line
    unmatched: pl.DataFrame   # input rows no charge of the plan version prices (with their 2-based line)


def rate_usage(usage: pl.DataFrame, rules: Rules, *, plan: str | None = None, at: dt.date | None = None,
               source: str = "usage") -> WhatIf:
    """Rate a period-level usage frame (see the module docstring)."""
    for col in ("customer_id", "meter", "quantity"):
        if col not in usage.columns:
            raise BadInputError(f"{source}: (header): missing column {col!r}")
    if "_line" in usage.columns:   # the rows' own line numbers travel under that name
        raise BadInputError(f"{source}: (header): column '_line' is reserved; rename it")
    if plan is None and "plan" not in usage.columns:
        raise BadInputError(f"{source}: (header): no plan column; pass --plan")
    if at is None and "period_start" not in usage.columns:
        raise BadInputError(f"{source}: (header): no period_start column; pass --at DATE")
    if usage.schema["quantity"].is_float():
        raise BadInputError(f"{source}: quantity: a floating-point column is inexact; store quantities as "
                            "decimal or integer (or text) columns")
    frame = usage.with_columns(pl.col("customer_id").cast(pl.String), pl.col("meter").cast(pl.String))
    if FILE_LINE in frame.columns:   # each record's first line, as read from the CSV
        frame = frame.rename({FILE_LINE: "_line"}).select("_line", pl.exclude("_line"))
    else:                            # CSV: header is line 1; carried through the joins below
        frame = frame.with_row_index("_line", offset=2)
    _fail(source, frame, pl.col("customer_id").str.strip_chars().fill_null("") == "", "customer_id", "empty")
    quantity = pl.col("quantity").cast(pl.String).str.strip_chars()
    if isinstance(usage.schema["quantity"], pl.Decimal):   # the column's scale pads the value with zeros
        quantity = quantity.str.replace(r"(\.[0-9]*?)0+$", "${1}").str.strip_suffix(".")
    frame = frame.with_columns(quantity_text=quantity)
    # at most 26 integer digits: what DECIMAL(38, 12) holds (more once ended in a Polars panic)
    _fail(source, frame, ~frame["quantity_text"].str.contains(r"^[0-9]{1,26}(\.[0-9]{1,12})?$").fill_null(False),
          "quantity", "not a non-negative decimal with at most 26 digits before the point and 12 after")
    frame = frame.with_columns(quantity=pl.col("quantity_text").cast(money.QUANTITY_DTYPE))
    _fail(source, frame, ~pl.col("meter").is_in(list(rules.meters)).fill_null(False), "meter", "unknown meter")
    frame = frame.with_columns(plan=pl.lit(plan) if plan else pl.col("plan").cast(pl.String))
    _fail(source, frame, ~pl.col("plan").is_in(list(rules.plans)).fill_null(False), "plan", "unknown plan")
    # `dated`: the row's own date, which names its period (calendar month); `on`: the date whose plan
    # version prices it (--at, else the row's date)
    if "period_start" in frame.columns:
        text = pl.col("period_start").cast(pl.String).str.strip_chars()
        frame = frame.with_columns(dated=text.str.to_date("%Y-%m-%d", strict=False))
        # with --at, a row left undated is dated by it (as a file with no period_start column is)
        blank = (text.fill_null("") == "") if at is not None else pl.lit(False)
        _fail(source, frame, pl.col("dated").is_null() & ~blank, "period_start", "not a date (YYYY-MM-DD)")
        frame = frame.with_columns(dated=pl.col("dated").fill_null(pl.lit(at)))
        _fail(source, frame, ~pl.col("dated").is_between(FIRST_DATE, LAST_DATE), "period_start",
              f"outside {FIRST_DATE} .. {LAST_DATE}")
    else:
        frame = frame.with_columns(dated=pl.lit(at))
    frame = frame.with_columns(on=pl.lit(at) if at is not None else pl.col("dated"))

    # Plan version per distinct (plan, date) and period per distinct date: a handful of Python calls.
    rows = []
    for p, on in frame.select("plan", "on").unique().sort("plan", "on").iter_rows():
        version = rules.plans[p].version_at(on)
        if version is None:
            raise BadInputError(f"{source}: plan: plan {p} has no version in force on {on}")
        rows.append((p, on, version.version))
    versions = pl.DataFrame(rows, orient="row", schema={"plan": pl.String, "on": pl.Date, "plan_version": pl.String})
    periods = pl.DataFrame([(d, *month_bounds(d)) for d in frame["dated"].unique().sort()], orient="row",
                           schema={"dated": pl.Date, "period_start": pl.Date, "period_end": pl.Date})
    frame = (frame.drop("period_start", strict=False).join(versions, on=["plan", "on"], how="left")
             .join(periods, on="dated", how="left"))
    _one_version_per_period(source, frame, dated=at is None)

    # Dimension values from the meter's declared dimension columns.
    dim_names = sorted({d for m in rules.meters.values() for d in m.dimensions if d in frame.columns})
    frame = frame.with_columns(pl.col(d).cast(pl.String) for d in dim_names)
    dim_json = pl.lit("{}")
    for name, meter in rules.meters.items():
        present = [d for d in meter.dimensions if d in frame.columns]
        if present:
            expr = pl.struct(present).struct.json_encode()
            dim_json = pl.when(pl.col("meter") == name).then(expr).otherwise(dim_json)
    frame = frame.with_columns(dimensions=dim_json)

    mapping = charge_map(frame.select("plan", "plan_version", "meter", "dimensions"), rules)
    route = ["plan", "plan_version", "meter", "dimensions"]
    unmatched = (
        frame.join(mapping, on=route, how="anti")
        .select(pl.col("_line").alias("line"), "customer_id", "meter", "dimensions", "plan", "plan_version", "quantity")
    )
    priced = frame.join(mapping, on=route, how="inner")
    kinds = pl.DataFrame({"meter": list(rules.meters), "aggregation": [m.aggregation for m in rules.meters.values()]})
    priced = priced.join(kinds, on="meter")
    key = ["customer_id", "period_start", "plan", "plan_version", "charge_id"]
    additive = pl.col("aggregation").is_in(["count", "sum", "unique_count"])
    quantities = pl.concat([
        priced.filter(additive).group_by(key).agg(pl.col("quantity").sum()),
        priced.filter(~additive).group_by(key).agg(pl.col("quantity").max()),
    ]).with_columns(segment_start=pl.col("period_start"))
    segments = (
        frame.select("customer_id", "period_start", "period_end", "plan", "plan_version").unique()
        .with_columns(segment_start=pl.col("period_start"), segment_end=pl.col("period_end"))
    )
    try:
        rated = rate(segments, quantities, rules)
    except money.AmountTooLargeError as exc:
        raise _too_large(source, priced, exc) from None
    return WhatIf(rated.select(OUTPUT_COLUMNS), unmatched)


def _too_large(source: str, priced: pl.DataFrame, exc: money.AmountTooLargeError) -> BadInputError:
    """An amount beyond exact rating, named by the file's lines whose quantities add up to it."""
    key = ["customer_id", "period_start", "plan", "plan_version", "charge_id"]
    first = exc.rows.sort("line_id").head(1).select(key)
    lines = priced.join(first, on=key, how="semi")["_line"].sort().to_list()
    shown = ", ".join(str(n) for n in lines[:5]) + (", ..." if len(lines) > 5 else "")
    return BadInputError(f"{source}:{lines[0]}: quantity: {exc} (the quantity of line(s) {shown})")


def write_output(frame: pl.DataFrame, path: str | Path) -> None:
    """Write CSV, or Parquet when the name ends in .parquet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".parquet", ".pq"):
        frame.write_parquet(path)
    else:
        frame.write_csv(path)
