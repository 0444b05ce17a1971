"""Price charge quantities: the one rating function behind the assets, `metering rerate` and the
offline `metering rate`.

`rate(segments, quantities, rules)` takes

- `segments`: one row per customer x billing period x segment (a sub-interval with one plan
  version in force): customer_id, period_start, period_end, segment_start, segment_end (DATE,
  half-open, UTC), plan, plan_version, and optionally `cycle_days`: the length of the full
  anchor cycle flat fees and minimums are prorated over (a customer's first, partial period is
  shorter than its cycle, as in Stripe); default: the period's own length;
- `quantities`: the period quantity of each usage charge in a segment: customer_id, period_start,
  segment_start, plan, plan_version, charge_id, quantity DECIMAL(38, 12) (already aggregated by the
  meter's rule and filtered by the charge's `filters`: see `metering.rating.aggregate`);

and returns one row per segment x charge of its version (`RATED_COLUMNS`), every charge listed even
with zero usage. Semantics:

- `included` units are free per segment and taken before the tiers: billable = max(q - included, 0).
- per_unit = q x unit_amount. graduated: each tier prices the units that fall in it, plus its
  flat_amount when any unit reaches it. volume: the tier the whole quantity reaches prices all of
  it (plus that tier's flat_amount). A zero quantity costs nothing in every usage model.
- package: ceil (or, with package_round: down, floor) of billable / package_size, x package_amount.
- flat: amount x (days in segment / days in the billing cycle): prorated by day across a plan or
  version change and for a first, partial period.
- a gauge's usage charge (a max, last or unique_count meter) in a period split by a plan or version
  change: each segment prices the whole period's quantity (`aggregate.charge_quantities`) and its
  amount is prorated by the segment's days over the period's; its `tiers` end with
  `{"segment_days", "period_days"}`. Unsplit periods are not prorated.
- minimum: one commitment per customer, period and plan (`MINIMUM_KEY`), however many versions the
  period spans: the sum of each segment's minimum prorated by its days, less the rounded usage
  lines of all those segments, if positive. The true-up is on the minimum line of the plan's last
  segment in the period; the other minimum lines are 0 and name it.
- Amounts are exact (`money`: 10^-24 of a major unit); each line is rounded once to the currency's
  minor unit by the version's `rounding` (half_up / half_even). For prorated lines the rounding is
  of the exact fraction; `amount_unrounded` shows it truncated at 24 decimals.
- Output order is fixed (sorted by the key), so the result does not depend on input row order.
"""

from __future__ import annotations

import polars as pl

from metering.errors import BadInputError
from metering.rating import money
from metering.rating.catalog import charges_frame, tiers_frame
from metering.rating.money import I128, lit
from metering.rules.model import Rules

SEGMENT_KEY = ["customer_id", "period_start", "segment_start", "plan", "plan_version"]
LINE_KEY = SEGMENT_KEY + ["charge_id"]
MINIMUM_KEY = ["customer_id", "period_start", "plan"]
PRORATED_GAUGE_MARK = '"period_days":'
"""In a line's `tiers`, marks a gauge segment that priced the whole period's quantity, prorated by its
days (flat fees and minimums write `cycle_days` instead)."""
"""What a minimum commits to: a customer's period on one plan, across that plan's version changes."""

SEGMENT_SCHEMA = {
    "customer_id": pl.String, "period_start": pl.Date, "period_end": pl.Date,
    "segment_start": pl.Date, "segment_end": pl.Date, "plan": pl.String, "plan_version": pl.String,
}
QUANTITY_SCHEMA = {
    "customer_id": pl.String, "period_start": pl.Date, "segment_start": pl.Date, "plan": pl.String,
    "plan_version": pl.String, "charge_id": pl.Int32, "quantity": money.QUANTITY_DTYPE,
}
RATED_COLUMNS = [
    "customer_id", "period_start", "period_end", "segment_start", "segment_end", "plan", "plan_version",
    "rules_hash", "charge_id", "charge", "model", "meter", "quantity", "billable_quantity",
    "amount_unrounded", "amount", "amount_minor", "currency", "rounding", "tiers",
]


def _tiered(lines: pl.DataFrame, tiers: pl.DataFrame) -> pl.DataFrame:
    """per_unit / graduated / volume lines -> line_id, amount_a24, tiers (JSON)."""
    t = lines.select("line_id", "plan", "plan_version", "charge_id", "model", "billable_q12").join(
        tiers, on=["plan", "plan_version", "charge_id"], how="inner"
    )
    b, lower, upper = pl.col("billable_q12"), pl.col("lower_q12"), pl.col("upper_q12")
    in_graduated = pl.min_horizontal(b, upper.fill_null(b)) - lower
    in_volume = pl.when((b > lower) & (upper.is_null() | (b <= upper))).then(b).otherwise(lit(0))
    t = t.with_columns(
        units_q12=pl.when(pl.col("model") == "volume").then(in_volume)
        .otherwise(pl.when(in_graduated > lit(0)).then(in_graduated).otherwise(lit(0)))
    )
    t = money.checked_mul(t, "units_q12", "unit_p12", "usage_a24", "tier amount")
    t = t.with_columns(
        tier_a24=pl.col("usage_a24") + pl.when(pl.col("units_q12") > lit(0)).then(pl.col("flat_a24")).otherwise(lit(0))
    )
    # Each tier is within range (checked_mul), but their sum can pass Int128 and wrap without a
    # word: the sum of the tiers' whole major units plus the carry of their fractions, which cannot
    # wrap, says when it would (without the carry, a line just past the limit went on to be refused
    # by a later check under the wrong name).
    unit = lit(10**money.AMOUNT_SCALE)
    amounts = t.group_by("line_id").agg(amount_a24=pl.col("tier_a24").sum(),
                                        major=(pl.col("tier_a24") // unit).sum(),
                                        fraction=(pl.col("tier_a24") % unit).sum())
    beyond = amounts.filter(pl.col("major") + pl.col("fraction") // unit > lit(money.LIMIT // 10**money.AMOUNT_SCALE))
    if beyond.height:
        raise money.AmountTooLargeError("tier amount (the tiers together)", beyond)
    amounts = amounts.drop("major", "fraction")
    # The audit JSON, built only for tiers the quantity reached (vectorised, then concatenated per line).
    reached = money.with_decimal_strings(
        t.filter(pl.col("units_q12") > lit(0)).sort("line_id", "tier"),
        {"units_s": ("units_q12", money.QUANTITY_SCALE), "unit_s": ("unit_p12", money.PRICE_SCALE),
         "flat_s": ("flat_a24", money.AMOUNT_SCALE), "amount_s": ("tier_a24", money.AMOUNT_SCALE)},
    )
    tier_json = pl.concat_str([
        pl.lit('{"tier":'), pl.col("tier").cast(pl.String), pl.lit(',"units":"'), pl.col("units_s"),
        pl.lit('","unit_amount":"'), pl.col("unit_s"), pl.lit('","flat_amount":"'), pl.col("flat_s"),
        pl.lit('","amount":"'), pl.col("amount_s"), pl.lit('"}'),
    ])
    breakdown = reached.with_columns(tier_json=tier_json).group_by("line_id", maintain_order=True).agg(
        tiers=pl.col("tier_json").str.join(",")
    )
    return amounts.join(breakdown, on="line_id", how="left").select(
        "line_id", "amount_a24",
        tiers=pl.concat_str([pl.lit("["), pl.col("tiers").fill_null(""), pl.lit("]")]),
    )


def _package(lines: pl.DataFrame) -> pl.DataFrame:
    p = lines.filter(pl.col("model") == "package").select(
        "line_id", "billable_q12", "package_size_q12", "package_round", "package_p12"
    )
    size = pl.col("package_size_q12")
    p = p.with_columns(
        packages=pl.when(pl.col("package_round") == "down").then(pl.col("billable_q12") // size)
        .otherwise((pl.col("billable_q12") + size - lit(1)) // size),
        package_a24=pl.col("package_p12") * lit(10**money.QUANTITY_SCALE),
    )
    p = money.checked_mul(p, "packages", "package_a24", "amount_a24", "package amount")
    return p.select(
        "line_id", "amount_a24",
        tiers=pl.concat_str([
            pl.lit('[{"packages":"'), pl.col("packages").cast(pl.String),
            pl.lit('","package_size":"'), money.to_decimal_string(size, money.QUANTITY_SCALE),
            pl.lit('","package_amount":"'), money.to_decimal_string(pl.col("package_p12"), money.PRICE_SCALE),
            pl.lit('","round":"'), pl.col("package_round"),
            pl.lit('","amount":"'), money.to_decimal_string(pl.col("amount_a24"), money.AMOUNT_SCALE),
            pl.lit('"}]'),
        ]),
    )


def _empty_rated() -> pl.DataFrame:
    schema = {
        **SEGMENT_SCHEMA, "rules_hash": pl.String, "charge_id": pl.Int32, "charge": pl.String,
        "model": pl.String, "meter": pl.String, "quantity": money.QUANTITY_DTYPE,
        "billable_quantity": money.QUANTITY_DTYPE, "amount_unrounded": money.AMOUNT_DTYPE,
        "amount": pl.Decimal(38, 2), "amount_minor": pl.Int64, "currency": pl.String,
        "rounding": pl.String, "tiers": pl.String,
    }
    return pl.DataFrame(schema=schema).select(RATED_COLUMNS)


def _prorated(lines: pl.DataFrame, mask: pl.Expr, numerator: pl.Expr, audit: list[pl.Expr],
              days: str = "period_days") -> pl.DataFrame:
    """Set the masked lines' amount to `numerator / days` (an exact a24 amount; by default the cycle's
    days), rounded once to the minor unit by the line's rounding rule, with `audit` (JSON text parts)
    as the breakdown."""
    return lines.with_columns(
        minor=pl.when(mask).then(money.round_ratio(numerator, pl.col(days) * pl.col("divisor"),
                                                   pl.col("rounding"))).otherwise(pl.col("minor")),
        unrounded_a24=pl.when(mask).then(numerator // pl.col(days)).otherwise(pl.col("unrounded_a24")),
        tiers=pl.when(mask).then(pl.concat_str(audit)).otherwise(pl.col("tiers")),
    )


def _named(exc: money.AmountTooLargeError, lines: pl.DataFrame) -> money.AmountTooLargeError:
    """The overflow with the lines it happened on: customer, period, charge and quantity, by line_id."""
    named = lines.join(exc.rows.select("line_id").unique(), on="line_id", how="semi").sort("line_id")
    first = named.row(0, named=True)
    where = (f"customer {first['customer_id']}, period {first['period_start']}, charge {first['charge']!r}, "
             f"quantity {first['quantity']}" + (f" ({named.height} lines)" if named.height > 1 else ""))
    return money.AmountTooLargeError(exc.what, named, where)


def _priced(lines: pl.DataFrame, usage: pl.Expr, rules: Rules) -> pl.DataFrame:
    """Usage lines' exact amounts (tiers, packages), rounded once; split gauges prorated by their days."""
    priced = pl.concat([_tiered(lines, tiers_frame(rules)), _package(lines)])
    lines = lines.join(priced, on="line_id", how="left")
    gauges = sorted(name for name, meter in rules.meters.items() if meter.is_gauge())
    # Usage lines: round the exact amount once.
    lines = lines.with_columns(
        minor=pl.when(usage).then(money.round_ratio(pl.col("amount_a24"), pl.col("divisor"), pl.col("rounding"))),
        unrounded_a24=pl.when(usage).then(pl.col("amount_a24")),
    )
    # A gauge's segment of a split period priced the whole period's quantity: prorated by its days
    # (of the period itself, not the cycle: a gauge is not prorated for a first, partial period).
    split_gauge = usage & pl.col("meter").is_in(gauges) & (pl.col("segment_days") < pl.col("period_len"))
    lines = money.checked_mul(lines.with_columns(gauge_days=pl.when(split_gauge).then(pl.col("segment_days"))
                                                 .otherwise(lit(1))),
                              "amount_a24", "gauge_days", "gauge_a24", "gauge amount")
    lines = _prorated(lines, split_gauge, pl.col("gauge_a24"), [
        pl.col("tiers").str.strip_suffix("]"), pl.when(pl.col("tiers") == "[]").then(pl.lit("")).otherwise(pl.lit(",")),
        pl.lit('{"segment_days":'), pl.col("segment_days").cast(pl.String),
        pl.lit("," + PRORATED_GAUGE_MARK), pl.col("period_len").cast(pl.String), pl.lit("}]"),
    ], days="period_len")
    return lines


def rate(segments: pl.DataFrame, quantities: pl.DataFrame, rules: Rules) -> pl.DataFrame:
    """Rate every charge of every segment (see the module docstring). Pure: no I/O, no clock."""
    if segments.height == 0:
        return _empty_rated()
    if "cycle_days" not in segments.columns:   # a whole billing cycle: prorate over the period itself
        segments = segments.with_columns(cycle_days=(pl.col("period_end") - pl.col("period_start")).dt.total_days())
    segments = segments.select([*SEGMENT_SCHEMA, "cycle_days"]).cast(
        {**SEGMENT_SCHEMA, "cycle_days": pl.Int64})  # type: ignore[arg-type]
    quantities = quantities.select(list(QUANTITY_SCHEMA)).cast(QUANTITY_SCHEMA)  # type: ignore[arg-type]
    # Several rows for one line (e.g. a caller that did not pre-sum) add up.
    quantities = quantities.group_by(LINE_KEY).agg(pl.col("quantity").sum())
    lines = (
        segments.join(charges_frame(rules), on=["plan", "plan_version"], how="inner")
        .join(quantities, on=LINE_KEY, how="left")
        .sort(LINE_KEY)
        .with_row_index("line_id")
    )
    usage = pl.col("model").is_in(["per_unit", "graduated", "volume", "package"])
    lines = lines.with_columns(
        quantity=pl.when(usage).then(pl.col("quantity").fill_null(0)).otherwise(pl.lit(None)),
        period_days=pl.col("cycle_days").cast(I128),
        period_len=(pl.col("period_end") - pl.col("period_start")).dt.total_days().cast(I128),
        segment_days=(pl.col("segment_end") - pl.col("segment_start")).dt.total_days().cast(I128),
        divisor=money.minor_unit_divisor(pl.col("digits")),
    )
    q12 = money.decimal_to_int(lines["quantity"].fill_null(0), money.QUANTITY_SCALE)
    if (q12 < 0).any():
        bad = lines.filter(q12 < 0).row(0, named=True)
        raise BadInputError(f"usage: negative quantity {bad['quantity']:f} for customer {bad['customer_id']}, "
                            f"charge {bad['charge']!r}: quantities must be >= 0")
    lines = lines.with_columns(q12=q12).with_columns(
        billable_q12=pl.when(usage)
        .then(pl.max_horizontal(pl.col("q12") - pl.col("included_q12"), lit(0)))
        .otherwise(lit(0))
    )

    try:
        lines = _priced(lines, usage, rules)
    except money.AmountTooLargeError as exc:
        raise _named(exc, lines) from None

    # Flat fees: prorated by day; round the exact fraction.
    lines = _prorated(lines, pl.col("model") == "flat", pl.col("fixed_a24") * pl.col("segment_days"), [
        pl.lit('[{"amount":"'), money.to_decimal_string(pl.col("fixed_a24"), money.AMOUNT_SCALE),
        pl.lit('","segment_days":'), pl.col("segment_days").cast(pl.String),
        pl.lit(',"cycle_days":'), pl.col("period_days").cast(pl.String), pl.lit("}]"),
    ])
    # Minimum: one commitment per period and plan (a version change does not restart it): the sum of
    # each segment's prorated minimum, compared with the rounded usage lines of all those segments.
    # The true-up sits on the minimum line of the last such segment; the others show 0.
    usage_minor = lines.filter(usage).group_by(MINIMUM_KEY).agg(usage_minor=pl.col("minor").sum())
    commitments = lines.filter(pl.col("model") == "minimum").group_by(MINIMUM_KEY).agg(
        commitment=(pl.col("fixed_a24") * pl.col("segment_days")).sum(),  # x 1/cycle days: the prorated sum
        largest_minimum=pl.col("fixed_a24").max(),
        carrier_start=pl.col("segment_start").max(),
        first_start=pl.col("segment_start").min(),
    )
    lines = (lines.join(usage_minor, on=MINIMUM_KEY, how="left").join(commitments, on=MINIMUM_KEY, how="left")
             .with_columns(pl.col("usage_minor").fill_null(lit(0))))
    carrier = (pl.col("model") == "minimum") & (pl.col("segment_start") == pl.col("carrier_start"))
    # Usage at or above the largest whole (unprorated) minimum needs no true-up (the prorated sum is
    # never more); testing that first keeps usage x divisor x days, which passes Int128 for usage
    # beyond ~5e12 major units, out of the sum.
    below_minimum = pl.col("usage_minor") < (pl.col("largest_minimum") + pl.col("divisor") - lit(1)) // pl.col("divisor")
    min_num = pl.when(carrier & below_minimum).then(pl.max_horizontal(
        pl.col("commitment") - pl.col("usage_minor") * pl.col("divisor") * pl.col("period_days"),
        lit(0),
    )).otherwise(lit(0))
    own = [pl.lit('[{"minimum":"'), money.to_decimal_string(pl.col("fixed_a24"), money.AMOUNT_SCALE),
           pl.lit('","segment_days":'), pl.col("segment_days").cast(pl.String),
           pl.lit(',"cycle_days":'), pl.col("period_days").cast(pl.String)]
    lines = _prorated(lines, pl.col("model") == "minimum", min_num, [
        *own,
        pl.when(carrier).then(pl.concat_str([
            pl.lit(',"commitment":"'),
            money.to_decimal_string(pl.col("commitment") // pl.col("period_days"), money.AMOUNT_SCALE),
            pl.lit('","commitment_from":"'), pl.col("first_start").cast(pl.String),
            pl.lit('","usage_amount":"'),
            money.to_decimal_string(pl.col("usage_minor") * pl.col("divisor"), money.AMOUNT_SCALE), pl.lit('"'),
        ])).otherwise(pl.concat_str([pl.lit(',"true_up_on_segment":"'), pl.col("carrier_start").cast(pl.String),
                                     pl.lit('"')])),
        pl.lit("}]"),
    ])
    bad = lines.filter((pl.col("unrounded_a24") < lit(0)) | (pl.col("unrounded_a24") > lit(money.LIMIT)))
    if bad.height:
        raise _named(money.AmountTooLargeError("amount", bad), lines)

    return lines.with_columns(
        quantity=pl.when(usage).then(pl.col("quantity")).otherwise(pl.lit(None)).cast(money.QUANTITY_DTYPE),
        billable_quantity=money.int_to_decimal(lines["billable_q12"], money.QUANTITY_SCALE),
        amount_unrounded=money.int_to_decimal(lines["unrounded_a24"], money.AMOUNT_SCALE),
        amount=money.int_to_decimal(
            lines.select(
                pl.col("minor") * pl.when(pl.col("digits") == 0).then(lit(100)).otherwise(lit(1))
            ).to_series(),
            2,
        ),
        amount_minor=pl.col("minor").cast(pl.Int64),
    ).with_columns(
        billable_quantity=pl.when(usage).then(pl.col("billable_quantity")),
    ).select(RATED_COLUMNS).sort(LINE_KEY)   # I5: Polars does not promise that a join keeps the left order
