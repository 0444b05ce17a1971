"""The dunning summary for finance: invoices in dunning by step, amount at risk, recovered, written off.

One row per currency x category (x step for invoices in dunning). Amounts are integer minor units
(`amount_minor`) and the same amount as exact decimal text in the major unit (`amount`):
- `in_dunning` (one row per step reached): the amount still remaining;
- `at_risk`: all invoices in dunning together (the sum of the `in_dunning` rows);
- `recovered`: invoices paid after a failed payment: the amount paid;
- `written_off`: the amount remaining when the invoice was marked uncollectible;
- `void`: voided after a failed payment: the amount that was due;
- `below_minimum`: failed, not chased (under the policy's minimum) and still open: the amount remaining;
- `subscription_incomplete`: a new subscription's declined first invoice, not chased and still open
  (Stripe voids it 23 hours after the subscription's creation unless it is paid): the amount remaining.

An invoice never chased that Stripe then closed is filed by what happened to it (its `reason`:
paid, voided, uncollectible), not under `below_minimum`, which would hide a write-off or a void.
"""

from __future__ import annotations

import polars as pl

from metering.dunning.money import minor_to_text_expr
from metering.dunning.frames import conform
from metering.dunning.state import (
    CLOSED_BY_STRIPE, IN_DUNNING, NOT_IN_DUNNING, RECOVERED, STATE_SCHEMA, SUBSCRIPTION_INCOMPLETE, VOID,
    WRITTEN_OFF,
)

CATEGORY_ORDER = {
    "in_dunning": 0, "at_risk": 1, "recovered": 2, "written_off": 3, "void": 4, "below_minimum": 5,
    SUBSCRIPTION_INCOMPLETE: 6,
}
_CATEGORY_WIDTH = max(map(len, CATEGORY_ORDER))
# the category of an invoice never chased, by its `reason`; any other reason is `below_minimum`
NOT_CHASED = {**CLOSED_BY_STRIPE, SUBSCRIPTION_INCOMPLETE: SUBSCRIPTION_INCOMPLETE}
SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "currency": pl.String, "category": pl.String, "step_index": pl.Int32, "step_name": pl.String,
    "invoices": pl.Int64, "amount_minor": pl.Int64, "amount": pl.String,
}


def dunning_summary(state: pl.DataFrame) -> pl.DataFrame:
    """The finance view of a `dunning_state` frame (SUMMARY_SCHEMA), sorted by currency and category."""
    s = conform(state, STATE_SCHEMA)
    category = (
        pl.when(pl.col("state") == NOT_IN_DUNNING)
        .then(pl.col("reason").replace_strict(NOT_CHASED, default="below_minimum", return_dtype=pl.String))
        .otherwise(pl.col("state"))
    )
    amount = (
        pl.when(pl.col("category") == RECOVERED).then(pl.col("amount_paid"))
        .when(pl.col("category") == VOID).then(pl.col("amount_due"))
        .otherwise(pl.col("amount_remaining"))
        .fill_null(0)
    )
    s = s.with_columns(category=category).with_columns(amount_minor=amount)
    by_step = (
        s.filter(pl.col("state") == IN_DUNNING)
        .group_by("currency", "category", "step_index", "step_name")
        .agg(pl.len().cast(pl.Int64).alias("invoices"), pl.col("amount_minor").sum())
    )
    at_risk = (
        s.filter(pl.col("state") == IN_DUNNING)
        .group_by("currency")
        .agg(pl.len().cast(pl.Int64).alias("invoices"), pl.col("amount_minor").sum())
        .with_columns(category=pl.lit("at_risk"))
    )
    closed = (
        s.filter(pl.col("state").is_in([RECOVERED, WRITTEN_OFF, VOID, NOT_IN_DUNNING]))
        .group_by("currency", "category")
        .agg(pl.len().cast(pl.Int64).alias("invoices"), pl.col("amount_minor").sum())
    )
    out = pl.concat([by_step, at_risk, closed], how="diagonal_relaxed")
    out = conform(out, SUMMARY_SCHEMA).with_columns(
        amount=minor_to_text_expr("amount_minor", "currency"),
        _order=pl.col("category").replace_strict(CATEGORY_ORDER, default=9, return_dtype=pl.Int8),
    )
    return out.sort("currency", "_order", "step_index", nulls_last=True).drop("_order")


def format_summary(summary: pl.DataFrame) -> str:
    """A plain-text table for the terminal."""
    if summary.is_empty():
        return "no failed invoices"
    # as wide as the longest category and step name, so no row pushes its numbers out of their columns
    # (subscription_incomplete, 23 characters, did; a policy's step names are the user's)
    step = max([20, *(len(name) for name in summary["step_name"].drop_nulls())])
    header = (f"{'currency':<8} {'category':<{_CATEGORY_WIDTH}} {'step':<{step}} {'invoices':>8} "
              f"{'amount_minor':>14} {'amount':>16}")
    lines = [header, "-" * len(header)]
    for r in summary.iter_rows(named=True):
        lines.append(
            f"{r['currency']:<8} {r['category']:<{_CATEGORY_WIDTH}} {r['step_name'] or '':<{step}} "
            f"{r['invoices']:>8} {r['amount_minor']:>14} {r['amount']:>16}"
        )
    return "\n".join(lines)
