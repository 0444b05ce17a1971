"""Reconciliation: ours vs pushed vs Stripe's meters vs Stripe's invoices, as pure Polars functions.

`reconcile_usage` gives one row per customer x meter x billing period; `reconcile_invoices` one row
per customer x billing period. Both take already-rolled-up frames (see `metering.reconcile.inputs`
for how they are read from the warehouse), so they are testable without DuckDB or Stripe.

Quantities are compared exactly (DECIMAL(38,12)); amounts are integer minor units. The amount
difference is Stripe's invoiced amount minus our rated amount *on charges Stripe can price*: charges
the catalog sync reported as not expressible in Stripe (dimension filters, minimums) are billed by
the engine, shown as `not_in_stripe_minor` and named in the reason, never hidden. A difference
up to the row's tolerance (per-currency minor units x the lines that carry an amount and are compared,
the most of either side; default 1 per line) is `within_tolerance`. Minor units of two currencies are
never compared: Stripe billing a row in another currency than ours is `currency_mismatch`, its amount
kept out of our currency's columns (named in the reason), and all of ours counts. Nothing is
corrected: every difference becomes a row with a status and a reason (invariant I14).

Status of a usage row, first rule that applies wins:

| status | when |
| --- | --- |
| `currency_mismatch` | Stripe's lines are in another currency than our rating |
| `pending` | Stripe's meter summary was not pulled because a push was acknowledged too recently (settle guard), or Stripe has not invoiced the period yet (no invoice reaches its end) and has no line for it, and may still: nothing voided, reconciled before the period's end + the invoice grace + the settle delay |
| `not_invoiced` | as above, but Stripe will not invoice the period any more: it voided the period's invoice, or that moment has passed (a meter Stripe prices) |
| `late_after_finalization` | Stripe is short of ours only by what the push ledger proves came too late for the finalized invoice (see below) |
| `not_pushed` | we rated more than the ledger has acknowledged (windows never sent, failed or unknown) |
| `missing_in_stripe` | pushed, but Stripe has neither meter usage nor an invoice line for it |
| `extra_in_stripe` | Stripe metered or invoiced more than we pushed, or something we never rated |
| `quantity_mismatch` | Stripe's metered or invoiced quantity differs from ours for any other reason |
| `amount_mismatch` | quantities agree but the invoiced amount differs by more than the tolerance (e.g. Stripe's price is not our rule version's), or differs at all while a drifted Stripe price priced the lines (below) |
| `within_tolerance` | amounts differ by at least one and at most the tolerance, and no drifted price priced the lines: rounding |
| `matched` | quantities and amounts equal |

The tolerance is for rounding only. `price_drift` (Stripe's lines, `inputs.load_stripe_lines`) names the
Stripe prices that priced the row's lines and differ from our rule version's in what they charge (the
catalog sync's `drift` findings on amount fields, `inputs.PRICE_AMOUNT_FIELDS`, joined by the line's
price id; a `rounding` finding is not one): any difference at equal quantities is then that price.

Lateness explains only what the push ledger proves (`metering.reconcile.inputs.load_pushed`):
`late_quantity`, what the windows the push marked `late` (never sent: 35 days old, or their
invoice already finalized) would add to the pushed quantity, and `late_acked_quantity`, the part of
the pushed quantity Stripe acknowledged only after the period's invoice was finalized. A row is
`late_after_finalization` when it has late windows, Stripe's meter holds exactly what we pushed,
Stripe billed no more than we rated and is short of ours, the unpushed part (ours - pushed) is at
most `late_quantity`, and (on a meter Stripe prices) the part pushed but not invoiced (pushed -
invoiced) is at most `late_acked_quantity`; and in money, Stripe charged no more than we rate and is
short by at most what the late quantity is worth at the row's average price per priced unit (the
units our lines' tiers priced, included ones left out: `_with_late_value`, rounded up) plus the row's
tolerance. Any remainder is not explained: the row takes the status it would have
without lateness and its whole difference counts (one invoice line's money cannot be split between
its windows). So lateness never explains Stripe holding or billing more than we pushed or rated (a
double count), a price difference (at equal quantities or beside a late window), a failed window
beside a late one, or an invoice that bills less than Stripe had been sent before it was finalized.

`explained` is true for matched, within_tolerance, pending and late_after_finalization; every other
row's |amount difference| counts towards the blocking check's threshold.

`reconcile_invoices` compares Stripe's total less the engine's own invoice items (which bill the
charges Stripe cannot price) with our total less those charges; what the items do not cover yet is
`unbilled_minor`, shown but not a difference. Its status: `currency_mismatch` as above, `pending` or
`not_invoiced` as above (or `pending` for a draft), `missing_in_stripe` / `extra_in_stripe` when one
side has nothing, else `amount_mismatch` when the difference exceeds the tolerance, *or its residual*
(the part no usage row of the same customer x period carries: flat fees, other lines without a
meter) exceeds the residual's own tolerance (the lines on no meter alone), or the period's invoices'
totals before tax differ from their lines (`stripe_adjustments_minor`: a discount or credit on an invoice,
each invoice counted in the one period its own period starts in),
else `amount_mismatch` too when a line a drifted Stripe price priced carries money that differs (a usage
row of one of `drifted_meters` has a difference, or a drifted fee leaves a residual, whose tolerance is
then 0: `_with_drift`), `within_tolerance` when the difference or the residual is not zero, `matched`.
The residual decides too because equal totals can hide a fee overcharge offset by a usage row's difference.
`unexplained_by_currency` counts |residual| above its tolerance, and |stripe_adjustments_minor|, on
every row but a pending one, so money a usage row already counts, or explains, is never counted
twice, and never hides a fee's. Credit notes issued before payment (`credit_notes_minor`: they lower
what Stripe collects, not the invoice's total) are a finance decision: shown in the reason and taken
off the row's paid / remaining, never counted.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from fractions import Fraction

import polars as pl

from metering.reconcile.settings import ReconcileSettings

DOUBLE_SLACK = 64 * 2.0 ** -53
"""How far, relatively, Stripe's meter quantity may lie from ours and still be ours: 64 roundings of
a double (2^-53 each), for a period summed from up to 31 daily summaries with room to spare: about
7 parts in 10^15. A real difference that small is taken as rounding too (at 1,000,000 units, 0.000000005
of a unit; at the largest value the contract takes, 10^15, about 7 units, where a double's own step
is 0.125)."""

QTY = pl.Decimal(38, 12)

STATUSES = (
    "matched",
    "currency_mismatch",
    "within_tolerance",
    "not_pushed",
    "not_invoiced",
    "missing_in_stripe",
    "extra_in_stripe",
    "quantity_mismatch",
    "amount_mismatch",
    "late_after_finalization",
    "pending",
)
EXPLAINED_STATUSES = ("matched", "within_tolerance", "pending", "late_after_finalization")
INVOICE_STATUSES = ("matched", "within_tolerance", "amount_mismatch", "currency_mismatch", "missing_in_stripe",
                    "extra_in_stripe", "not_invoiced", "pending")
INVOICE_EXPLAINED_STATUSES = ("matched", "within_tolerance", "pending")

KEY = ["customer_id", "meter", "period_start"]

OURS_SCHEMA = {
    "customer_id": pl.String, "meter": pl.String, "period_start": pl.Date, "period_end": pl.Date,
    "currency": pl.String, "plan": pl.String, "plan_version": pl.String,
    "our_quantity": QTY, "our_amount_minor": pl.Int64, "not_in_stripe_minor": pl.Int64,
    "stripe_charges": pl.Int64,
    "our_rounded_lines": pl.Int64,   # of those charges, the ones with an amount: each was rounded once
    "priced_quantity": QTY,   # the units those charges priced: the quantity less the included units
    "rule_versions": pl.String,   # every plan version that rated the period, e.g. 'pro 2026-01 + pro 2026-10'
    "segments": pl.Int64,         # sub-intervals (plan changes split a period)
}
PUSHED_SCHEMA = {
    "customer_id": pl.String, "meter": pl.String, "period_start": pl.Date,
    "pushed_quantity": QTY, "unacked_windows": pl.Int64, "late_windows": pl.Int64,
    # what the `late` windows (never sent) would add to pushed_quantity
    "late_quantity": QTY,
    # windows whose acknowledged revision Stripe acknowledged after the period's invoice was finalized,
    # and how much of pushed_quantity that is (pushed minus what was acknowledged at finalization)
    "late_acked_windows": pl.Int64, "late_acked_quantity": QTY,
}
STRIPE_METER_SCHEMA = {
    "customer_id": pl.String, "meter": pl.String, "period_start": pl.Date, "period_end": pl.Date,
    "stripe_quantity": QTY, "meter_status": pl.String, "pending_reason": pl.String,
}
OPEN_PERIODS_SCHEMA = {"customer_id": pl.String, "period_start": pl.Date, "voided_invoice_ids": pl.String,
                       "held_invoice_ids": pl.String, "on_test_clock": pl.Boolean, "later_invoice_ids": pl.String,
                       "ended_subscription_ids": pl.String}
"""Customer periods no billing Stripe invoice reaches the end of, with the void invoices and the drafts
Stripe will not finalize (held: auto_advance false) that did (if any): `pending` while Stripe may still
invoice the period, else `not_invoiced` (`_with_invoicing`)."""
STRIPE_LINES_SCHEMA = {
    "customer_id": pl.String, "meter": pl.String, "period_start": pl.Date, "period_end": pl.Date,
    "currency": pl.String, "invoiced_quantity": QTY, "stripe_amount_minor": pl.Int64,
    "line_count": pl.Int64,
    "rounded_lines": pl.Int64,   # of line_count, those with an amount (a zero line has nothing to round)
    "invoice_ids": pl.String, "finalized": pl.Boolean,
    "finalized_at": pl.Datetime("us", "UTC"),   # the latest finalization among the lines' invoices
    # how the Stripe prices that priced the lines differ from our rules in what they charge (catalog
    # sync `drift` findings, inputs.PRICE_AMOUNT_FIELDS), NULL when none does
    "price_drift": pl.String,
    # lines in several currencies: each one's amount, '22500 jpy + 100 usd' (inputs._amounts_by_currency)
    "stripe_amounts": pl.String,
}
OUR_INVOICES_SCHEMA = {
    "customer_id": pl.String, "period_start": pl.Date, "period_end": pl.Date, "currency": pl.String,
    "our_total_minor": pl.Int64, "not_in_stripe_minor": pl.Int64,
    # our rated lines Stripe prices that carry an amount (each rounds once), and those of them on no meter
    "our_lines": pl.Int64, "our_unmetered_lines": pl.Int64,
}
STRIPE_INVOICES_SCHEMA = {
    "customer_id": pl.String, "period_start": pl.Date, "period_end": pl.Date, "currency": pl.String,
    "stripe_total_minor": pl.Int64,
    "engine_items_minor": pl.Int64,   # the part of stripe_total_minor on the engine's own invoice items
    "line_count": pl.Int64,
    # the lines that carry an amount, the engine's invoice items left out (they are not compared), and
    # those of them on no meter (what only the invoice row compares)
    "rounded_lines": pl.Int64, "unmetered_lines": pl.Int64,
    "invoice_ids": pl.String,
    # the invoice that closed the period; the period's invoices' totals before tax (after discounts) minus
    # their lines, each invoice counted in the period its own period starts in, and those that differ
    "closing_invoice_id": pl.String, "adjustments_minor": pl.Int64, "adjusted_invoice_ids": pl.String,
    "invoice_status": pl.String,   # the closing invoice's
    "closing_invoice_created": pl.Datetime("us", "UTC"),
    # the period's own lines, whichever invoice carries them: on paid invoices, on open or uncollectible
    # ones, and both (inputs._line_payments), less the pre-payment credit notes of the invoices counted in
    # the period (each invoice in one period, as adjustments_minor): off paid on a paid invoice, off
    # remaining on an open or uncollectible one; credit_notes_minor is their sum, credited_invoice_ids
    # the invoices that have one
    "amount_due": pl.Int64, "amount_paid": pl.Int64, "amount_remaining": pl.Int64,
    "credit_notes_minor": pl.Int64, "credited_invoice_ids": pl.String,
    # as STRIPE_LINES_SCHEMA's, over the period's lines; the meters of the lines a drifted price priced
    # ('api_calls,storage_gb'), and whether one of them is on no meter (a fee)
    "price_drift": pl.String, "drifted_meters": pl.String, "drifted_unmetered": pl.Boolean,
    "stripe_amounts": pl.String,   # as STRIPE_LINES_SCHEMA's, over the period's lines
}
PENDING_ITEMS_SCHEMA = {"customer_id": pl.String, "period_start": pl.Date, "engine_items_pending_minor": pl.Int64}
"""The engine's acknowledged invoice items of a period that Stripe holds for the next invoice."""

USAGE_COLUMNS = [
    "billing_month", "customer_id", "meter", "period_start", "period_end", "currency", "plan",
    "plan_version", "our_quantity", "pushed_quantity", "stripe_quantity", "invoiced_quantity",
    "our_amount_minor", "not_in_stripe_minor", "stripe_amount_minor", "quantity_diff", "amount_diff_minor",
    "tolerance_minor", "status", "reason", "explained", "invoice_ids", "reconciled_at",
]
INVOICE_COLUMNS = [
    "billing_month", "customer_id", "period_start", "period_end", "currency", "our_total_minor",
    "not_in_stripe_minor", "engine_items_minor", "engine_items_pending_minor", "unbilled_minor",
    "stripe_total_minor", "amount_diff_minor", "tolerance_minor", "residual_tolerance_minor",
    "stripe_adjustments_minor", "invoice_ids", "invoice_status", "amount_due", "amount_paid", "amount_remaining",
    "credit_notes_minor", "status", "reason", "reconciled_at",
]


def conform(frame: pl.DataFrame | None, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """The frame with exactly `schema`'s columns and types (missing columns become NULL)."""
    if frame is None:
        return pl.DataFrame(schema=schema)
    return frame.select(
        [
            (pl.col(name) if name in frame.columns else pl.lit(None)).cast(dtype).alias(name)
            for name, dtype in schema.items()
        ]
    )


def _num(col: str | pl.Expr) -> pl.Expr:
    """A decimal column as text without trailing zeros, for reasons ('12.5', not '12.500000000000')."""
    expr = pl.col(col) if isinstance(col, str) else col.cast(QTY)
    return (
        expr.cast(pl.String).str.strip_chars_end("0").str.strip_chars_end(".").fill_null("none")
    )


def _tolerance_expr(settings: ReconcileSettings, currency: pl.Expr) -> pl.Expr:
    expr = pl.lit(settings.default_tolerance_minor, dtype=pl.Int64)
    for cur, minor in settings.tolerance_minor.items():
        expr = pl.when(currency.str.to_lowercase() == cur).then(pl.lit(minor, dtype=pl.Int64)).otherwise(expr)
    return expr


def _lines_tolerance(settings: ReconcileSettings, *lines: pl.Expr, floor: int = 1) -> pl.Expr:
    """The currency's tolerance per line times the most lines either side rounded (at least `floor`)."""
    most = pl.max_horizontal(*(n.fill_null(0) for n in lines), pl.lit(floor, dtype=pl.Int64))
    return (_tolerance_expr(settings, pl.col("currency").fill_null("")) * most).cast(pl.Int64)


def _currency_differs(ours: str, stripes: str) -> pl.Expr:
    """Both sides name a currency and they differ (Stripe's lines in several currencies, 'jpy,usd', never
    equal one of ours): minor units of two currencies are not comparable."""
    return (pl.col(ours).str.to_lowercase() != pl.col(stripes).str.to_lowercase()).fill_null(False)


def _stripe_amounts(total: pl.Expr, currency: str | None) -> pl.Expr:
    """Stripe's amount for a reason: each currency's ('22500 jpy + 100 usd') when its lines are in several,
    else `total` (followed by the `currency` column, if named)."""
    one = pl.format("{} {}", total.fill_null(0), pl.col(currency)) if currency else total.fill_null(0).cast(pl.String)
    return pl.coalesce("stripe_amounts", one)


def value_up(amount: int | None, part: Decimal | None, whole: Decimal | None) -> int:
    """What `part` of the quantity `whole` is worth when `whole` is worth `amount`: ceil(amount x part /
    whole), exact, `part` clamped to `whole`; 0 when any is missing or not positive."""
    if amount is None or part is None or whole is None or amount <= 0 or part <= 0 or whole <= 0:
        return 0
    return math.ceil(Fraction(amount) * Fraction(min(part, whole)) / Fraction(whole))


def _with_late_value(frame: pl.DataFrame, amount: pl.Expr, late_quantity: pl.Expr) -> pl.DataFrame:
    """`frame` with `late_value_minor`: the late quantity's value at the row's average price per priced
    unit (`value_up`): the period's last units are the late ones, and included units are priced at 0
    before them (30,000 calls with 10,000 included for 10.00: 5,000 late are worth 2.50, not 1.67).

    Exact for a per-unit price, with or without included units; a late quantity in a tier dearer than
    the average is worth more than this, so such a row is flagged rather than explained (it fails
    closed, its reason has the numbers). Rows without `priced_quantity` use the whole quantity.
    """
    priced = pl.when(pl.col("priced_quantity") > 0).then(pl.col("priced_quantity")).otherwise(pl.col("our_quantity"))
    parts = frame.select(amount.alias("a"), late_quantity.cast(QTY).alias("q"), priced.alias("w"))
    values = [value_up(a, q, w) for a, q, w in parts.iter_rows()]
    return frame.with_columns(late_value_minor=pl.Series(values, dtype=pl.Int64))


def _with_invoicing(
    frame: pl.DataFrame, open_periods: pl.DataFrame | None, *, settings: ReconcileSettings, reconciled_at: dt.datetime
) -> pl.DataFrame:
    """`frame` (customer_id, period_start, period_end) with whether Stripe has invoiced each period.

    Of the periods no non-void invoice reaches the end of (`open_periods`), `awaiting_invoice` marks
    those Stripe may still invoice: nothing voided, and reconciled before the period's end + the
    invoice grace + the settle delay (`pending`). `invoice_missing` marks the others, with
    `invoice_missing_reason`: the voided invoices, or the moment by which Stripe should have invoiced.
    Stripe has also stopped when it invoiced a later period of the customer, or when every subscription
    of the customer ended before the period's end. A customer on a Stripe test clock is judged by
    those three signs only: its Stripe time is the clock's, which may stand
    weeks behind the wall clock `reconciled_at` (the main job bills September on one).
    """
    open_ = conform(open_periods, OPEN_PERIODS_SCHEMA).unique(["customer_id", "period_start"])
    deadline = pl.col("period_end").cast(pl.Datetime("us", "UTC")) + settings.invoice_wait
    is_open = pl.col("is_open").fill_null(False)
    voided = pl.col("voided_invoice_ids").is_not_null()
    held = pl.col("held_invoice_ids").is_not_null()
    moved_on = pl.col("later_invoice_ids").is_not_null()
    ended = pl.col("ended_subscription_ids").is_not_null()
    # an unknown period end cannot prove Stripe still has time: fail closed
    overdue = voided | held | moved_on | ended | (~pl.col("on_test_clock").fill_null(False)
                                   & (deadline <= pl.lit(reconciled_at, dtype=pl.Datetime("us", "UTC"))).fill_null(True))
    return (
        frame.join(open_.with_columns(is_open=pl.lit(True)), on=["customer_id", "period_start"], how="left")
        .with_columns(
            awaiting_invoice=is_open & ~overdue,
            invoice_missing=is_open & overdue,
            invoice_missing_reason=pl.when(voided)
            .then(pl.format("Stripe voided {} and has no other invoice for this period", pl.col("voided_invoice_ids")))
            .when(held)
            .then(pl.format("Stripe holds {} as a draft it will not finalize (auto_advance false: an unpaid "
                            "subscription's invoices stay drafts, or automatic collection was turned off): it bills "
                            "nothing until it is finalized or voided in Stripe", pl.col("held_invoice_ids")))
            .when(moved_on)
            .then(pl.format("Stripe invoiced a later period ({}) but no invoice closes this one",
                            pl.col("later_invoice_ids")))
            .when(ended)
            .then(pl.format("the customer's Stripe subscription(s) {} ended before the period's end, and no "
                            "invoice closes it: Stripe will not invoice it", pl.col("ended_subscription_ids")))
            .otherwise(pl.format(
                "no Stripe invoice closes this period by {} (period end + invoice grace {} s + settle delay {} s)",
                deadline.dt.strftime("%Y-%m-%d %H:%M UTC").fill_null("?"),
                pl.lit(settings.invoice_grace_seconds), pl.lit(settings.settle_seconds))),
        )
        .drop("is_open", "voided_invoice_ids", "held_invoice_ids", "on_test_clock", "later_invoice_ids",
              "ended_subscription_ids")
    )


def _as_double(stripe: pl.Expr, exact: pl.Expr) -> pl.Expr:
    """Stripe's double-valued quantity `stripe` is the exact decimal `exact`, as far as a double shows."""
    return (stripe.cast(pl.Float64) - exact.cast(pl.Float64)).abs() <= exact.cast(pl.Float64).abs() * DOUBLE_SLACK


def reconcile_usage(
    ours: pl.DataFrame | None,
    pushed: pl.DataFrame | None,
    stripe_meter: pl.DataFrame | None,
    stripe_lines: pl.DataFrame | None,
    *,
    billing_month: dt.date,
    settings: ReconcileSettings,
    reconciled_at: dt.datetime,
    open_periods: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per customer x meter x billing period with the status rules in the module docstring."""
    ours = conform(ours, OURS_SCHEMA)
    pushed = conform(pushed, PUSHED_SCHEMA)
    meter = conform(stripe_meter, STRIPE_METER_SCHEMA)
    lines = conform(stripe_lines, STRIPE_LINES_SCHEMA)

    keys = pl.concat([f.select(KEY) for f in (ours, meter, lines)]).unique()
    frame = (
        keys.join(ours, on=KEY, how="left")
        .join(pushed, on=KEY, how="left")
        .join(meter.rename({"period_end": "meter_period_end"}), on=KEY, how="left")
        .join(lines.rename({"period_end": "lines_period_end", "currency": "lines_currency"}), on=KEY, how="left")
        .with_columns(
            period_end=pl.coalesce("period_end", "meter_period_end", "lines_period_end"),
            currency=pl.coalesce("currency", "lines_currency"),
        )
    )
    frame = _with_invoicing(frame, open_periods, settings=settings, reconciled_at=reconciled_at)
    other_currency = _currency_differs("currency", "lines_currency")
    zero = pl.lit(Decimal(0), dtype=QTY)
    ours_q = pl.col("our_quantity").fill_null(zero)
    pushed_q = pl.col("pushed_quantity").fill_null(zero)
    # Stripe's meter summaries are JSON numbers, doubles: a quantity of more than ~15 significant
    # digits (123456.123456789012) comes back rounded to the nearest one, and a period summed from
    # daily rows carries a few such roundings. Within DOUBLE_SLACK of what we pushed (else of ours),
    # relatively, it is that quantity.
    raw_stripe_q = pl.col("stripe_quantity").fill_null(zero)
    stripe_q = (pl.when(_as_double(raw_stripe_q, pushed_q)).then(pushed_q)
                .when(_as_double(raw_stripe_q, ours_q)).then(ours_q)
                .otherwise(raw_stripe_q))
    inv_q = pl.col("invoiced_quantity").fill_null(zero)
    ours_amt = pl.col("our_amount_minor").fill_null(0)
    not_in_stripe = pl.col("not_in_stripe_minor").fill_null(0)
    # Stripe's money in another currency is compared with nothing: Stripe billed none of ours
    stripe_amt = pl.when(other_currency).then(0).otherwise(pl.col("stripe_amount_minor").fill_null(0))
    # a meter whose every charge Stripe cannot price has no invoice line to compare quantities with
    priced = pl.col("stripe_charges").is_null() | (pl.col("stripe_charges") > 0) | pl.col("line_count").is_not_null()

    frame = frame.with_columns(
        quantity_diff=(stripe_q - ours_q).cast(QTY),
        amount_diff_minor=(stripe_amt - (ours_amt - not_in_stripe)).cast(pl.Int64),
        # only lines that carry an amount round, on either side
        tolerance_minor=_lines_tolerance(settings, pl.coalesce("rounded_lines", "line_count"),
                                         pl.col("our_rounded_lines")),
    )
    has_ours = pl.col("our_quantity").is_not_null() & (ours_q != zero)
    stripe_has = (stripe_q != zero) | (inv_q != zero) | (stripe_amt != 0)
    abs_diff = pl.col("amount_diff_minor").abs()
    late_n = pl.col("late_windows").fill_null(0)
    late_q = pl.when(late_n > 0).then(pl.col("late_quantity").fill_null(zero)).otherwise(zero)
    # windows acknowledged after the invoice was finalized matter only where a finalized invoice of a
    # meter Stripe prices bills less than we pushed: elsewhere they explain nothing and are not named
    missed = priced & pl.col("finalized").fill_null(False) & (pushed_q > inv_q)
    late_acked_n = pl.when(missed).then(pl.col("late_acked_windows").fill_null(0)).otherwise(0)
    late_acked_q = pl.when(late_acked_n > 0).then(pl.col("late_acked_quantity").fill_null(zero)).otherwise(zero)
    frame = _with_late_value(frame, ours_amt - not_in_stripe, late_q + late_acked_q)
    diff = pl.col("amount_diff_minor")

    # Lateness explains only what the ledger proves came too late (module docstring): it only ever
    # leaves Stripe short of ours, so never Stripe holding more than we pushed or billing more than we
    # rated (a double count beside a late window), nor more than the late windows' quantity; and in
    # money never Stripe charging more than we rate, nor short by more than the late quantity is worth
    # at our price (beyond rounding): a price difference is not lateness.
    late = (
        ((late_n > 0) | (late_acked_n > 0))
        & (stripe_q == pushed_q) & (inv_q <= ours_q)
        & pl.when(priced).then(inv_q < ours_q).otherwise(stripe_q < ours_q)
        & ((ours_q - pushed_q) <= late_q)
        & (~priced | ((pushed_q - inv_q) <= late_acked_q))
        & (diff <= 0) & (-diff <= pl.col("late_value_minor") + pl.col("tolerance_minor"))
    )
    no_line = pl.col("line_count").is_null()
    # Stripe priced the lines with a price that differs from our rule version's in what it charges: a
    # difference at equal quantities is that price, not rounding, however small
    drift = pl.col("price_drift").is_not_null() & ~other_currency
    status = (
        pl.when(other_currency).then(pl.lit("currency_mismatch"))
        .when(pl.col("meter_status") == "pending").then(pl.lit("pending"))
        .when(pl.col("awaiting_invoice") & no_line).then(pl.lit("pending"))
        # a meter Stripe prices, in a period Stripe will not invoice: lateness cannot explain a missing invoice
        .when(pl.col("invoice_missing") & no_line & priced).then(pl.lit("not_invoiced"))
        .when(late).then(pl.lit("late_after_finalization"))
        # Stripe holding more than we pushed and more than we rated says more than a window we have
        # not pushed yet (a double count beside a late window)
        .when(has_ours & (((stripe_q > pushed_q) & (stripe_q > ours_q))
                          | (priced & (inv_q > pushed_q) & (inv_q > ours_q))))
        .then(pl.lit("extra_in_stripe"))
        .when(has_ours & (pushed_q < ours_q)).then(pl.lit("not_pushed"))
        .when(has_ours & ~stripe_has).then(pl.lit("missing_in_stripe"))
        .when(~has_ours & stripe_has).then(pl.lit("extra_in_stripe"))
        .when((stripe_q > pushed_q) | (priced & (inv_q > pushed_q))).then(pl.lit("extra_in_stripe"))
        .when((stripe_q != ours_q) | (priced & (inv_q != ours_q))).then(pl.lit("quantity_mismatch"))
        .when(drift & (abs_diff > 0)).then(pl.lit("amount_mismatch"))
        .when(abs_diff > pl.col("tolerance_minor")).then(pl.lit("amount_mismatch"))
        .when(abs_diff > 0).then(pl.lit("within_tolerance"))
        .otherwise(pl.lit("matched"))
    )
    # a meter nobody rated, pushed, metered or invoiced for this customer (e.g. not in its plan) says nothing
    empty = (pl.col("our_amount_minor").is_null() & (ours_q == zero) & (pushed_q == zero)
             & (stripe_q == zero) & pl.col("line_count").is_null() & (pl.col("meter_status") != "pending").fill_null(True))
    frame = frame.filter(~empty).with_columns(status=status)
    amounts = pl.format(
        "rated {}{} vs invoiced {} ({} minor units, diff {})",
        ours_amt,
        pl.when(not_in_stripe != 0).then(pl.format(" of which {} not priceable in Stripe", not_in_stripe))
        .otherwise(pl.lit("")),
        stripe_amt, pl.col("currency").fill_null("?"), pl.col("amount_diff_minor"),
    )
    qty = pl.format(
        "ours {}, pushed {}, Stripe meter {}, invoiced {}",
        _num("our_quantity"), _num("pushed_quantity"), _num("stripe_quantity"), _num("invoiced_quantity"),
    )
    s = pl.col("status")
    rule_versions = pl.coalesce("rule_versions", pl.format("rule version {}", pl.col("plan_version").fill_null("?")))
    segments = (pl.when(pl.col("segments").fill_null(1) > 1)
                .then(pl.format(" ({} segments: a plan change splits the period)", pl.col("segments")))
                .otherwise(pl.lit("")))
    late_windows = pl.format(
        "{} late window(s){}", late_n + late_acked_n,
        pl.when(late_acked_n > 0).then(pl.format(
            ": {} acknowledged by Stripe after the invoice was finalized, {} not on it", late_acked_n,
            _num(late_acked_q))).otherwise(pl.lit("")))
    # an unexplained row with late windows says how little of its shortfall they cover
    late_note = (
        pl.when((late_n + late_acked_n > 0) & ~s.is_in(list(EXPLAINED_STATUSES)))
        .then(pl.format("; late windows cover at most {} of the shortfall, worth at most {} at our price ({})",
                        _num(late_q + late_acked_q), pl.col("late_value_minor"), late_windows))
        .otherwise(pl.lit(""))
    )
    reason = (
        pl.when(s == "currency_mismatch").then(pl.format(
            "Stripe invoiced {} minor units, we rated {} {} minor units: two currencies are not compared, and "
            "Stripe's amount is in no {} total (diff {}: all of ours); {}",
            _stripe_amounts(pl.col("stripe_amount_minor"), "lines_currency"), ours_amt - not_in_stripe,
            pl.col("currency"), pl.col("currency"), pl.col("amount_diff_minor"), qty))
        .when((s == "pending") & (pl.col("meter_status") == "pending"))
        .then(pl.format("Stripe not settled: {}", pl.col("pending_reason").fill_null("")))
        .when(s == "pending").then(pl.format("Stripe has not invoiced this period yet; {}; {}", qty, amounts))
        .when(s == "not_invoiced").then(pl.format("{}; {}; {}", pl.col("invoice_missing_reason"), qty, amounts))
        .when(s == "late_after_finalization").then(pl.format(
            "usage after the invoice was finalized ({}); {}; {}", late_windows, qty, amounts))
        .when(s == "not_pushed").then(pl.format(
            "{} window(s) not acknowledged by Stripe; {}; {}", pl.col("unacked_windows").fill_null(0) + late_n, qty,
            amounts))
        .when(s == "missing_in_stripe").then(pl.format("pushed but Stripe has no usage or line; {}; {}", qty, amounts))
        .when(s == "extra_in_stripe").then(pl.format("Stripe has more than we pushed; {}; {}", qty, amounts))
        .when(s == "quantity_mismatch").then(pl.format("quantities differ; {}; {}", qty, amounts))
        .when((s == "amount_mismatch") & drift).then(pl.format(
            "same quantity {}, Stripe's price differs from ours ({}): invoiced amount differs from our rating under "
            "{}{}: {}, a price difference, not rounding (tolerance {} is for rounding)",
            _num("our_quantity"), pl.col("price_drift"), rule_versions, segments, amounts, pl.col("tolerance_minor")))
        .when(s == "amount_mismatch").then(pl.format(
            "same quantity {}, invoiced amount differs from our rating under {}{}: {} beyond tolerance {}",
            _num("our_quantity"), rule_versions, segments, amounts, pl.col("tolerance_minor")))
        .when(s == "within_tolerance").then(pl.format("rounding: {} within tolerance {}", amounts, pl.col("tolerance_minor")))
        .otherwise(pl.format("{}; {}", qty, amounts))
    )
    return (
        frame.with_columns(
            reason=pl.concat_str(reason, late_note),
            explained=s.is_in(list(EXPLAINED_STATUSES)),
            # in Stripe's currency: named in the reason, never summed into this row's currency
            stripe_amount_minor=pl.when(s != "currency_mismatch").then(pl.col("stripe_amount_minor")),
            billing_month=pl.lit(billing_month, dtype=pl.Date),
            reconciled_at=pl.lit(reconciled_at, dtype=pl.Datetime("us", "UTC")),
        )
        .select(USAGE_COLUMNS)
        .sort(["customer_id", "period_start", "meter"])
    )


def reconcile_invoices(
    ours: pl.DataFrame | None,
    stripe: pl.DataFrame | None,
    *,
    billing_month: dt.date,
    settings: ReconcileSettings,
    reconciled_at: dt.datetime,
    open_periods: pl.DataFrame | None = None,
    usage: pl.DataFrame | None = None,
    pending_items: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """One row per customer x billing period: our invoice total vs the sum of Stripe's lines for it.

    The engine bills `not_in_stripe_minor` (charges Stripe cannot price) as invoice items: those on
    Stripe's invoices (`engine_items_minor`, part of Stripe's total) are left out of the comparison on
    Stripe's side as `not_in_stripe_minor` is on ours; with those Stripe holds pending for the next
    invoice (`pending_items`), what remains is `unbilled_minor`, named in the reason but never counted
    as unexplained (a period still open has no items yet). Invoice items that are not the engine's
    stay in the comparison: unexplained money on Stripe's side.

    `invoice_status` is the closing invoice's (NULL while none closes the period; a draft makes the row
    `pending`). `amount_paid`, `amount_remaining` and `amount_due` are `stripe`'s as given: the period's
    own lines by their invoice's status (`inputs.load_stripe_invoices`), so an open period shows what of
    its fee, billed in advance, is paid, and no invoice's payment counts in two rows; less
    `credit_notes_minor`, the credit notes Stripe issued before payment on the invoices counted in the
    period. A credit note is a finance decision, not a rating difference: it changes no status and is
    not counted by the blocking check, and the reason names it (`…, credited 60 (credit notes issued
    before payment on in_…`).

    With `usage` (the period's `reconcile_usage` rows, as `reconcile_period` passes them), the status
    also weighs the part of the difference no usage row carries (`residual_minor`: what the blocking
    check counts, `invoice_residuals`), and an unexplained row's reason says how much that is. Without
    it, the whole difference is taken for that part.
    """
    ours = conform(ours, OUR_INVOICES_SCHEMA)
    stripe = conform(stripe, STRIPE_INVOICES_SCHEMA)
    pending = conform(pending_items, PENDING_ITEMS_SCHEMA)
    key = ["customer_id", "period_start"]
    keys = pl.concat([ours.select(key), stripe.select(key)]).unique()
    frame = (
        keys.join(ours, on=key, how="left")
        .join(stripe.rename({"period_end": "s_period_end", "currency": "s_currency"}), on=key, how="left")
        .join(pending, on=key, how="left")
        .with_columns(
            period_end=pl.coalesce("period_end", "s_period_end"),
            currency=pl.coalesce("currency", "s_currency"),
        )
    )
    frame = _with_invoicing(frame, open_periods, settings=settings, reconciled_at=reconciled_at)
    other_currency = _currency_differs("currency", "s_currency")
    # Stripe's money in another currency: named in the reason, in none of this currency's columns or totals
    frame = frame.with_columns(other_currency_note=pl.when(other_currency).then(pl.format(
        "Stripe billed this period in {}: {} minor units (invoice {} {}{}), we rated {} {} minor units: "
        "two currencies are not compared, and Stripe's amounts are in no {} total",
        pl.col("s_currency"), _stripe_amounts(pl.col("stripe_total_minor"), None),
        pl.col("invoice_ids").fill_null("none"), pl.col("invoice_status").fill_null("none"),
        # what is paid is summed over currencies too: named only when there is one
        pl.when(pl.col("stripe_amounts").is_null()).then(pl.format(", paid {}", pl.col("amount_paid").fill_null(0)))
        .otherwise(pl.lit("")),
        pl.col("our_total_minor").fill_null(0), pl.col("currency"), pl.col("currency"))))
    # A period Stripe has not closed has no closing invoice: the lines it already has (licensed
    # fees billed in advance) sit on the previous period's invoice, whose status belongs to that
    # period's row. What is paid of those lines is this period's own (by line, never twice).
    unclosed = pl.col("awaiting_invoice") | pl.col("invoice_missing")
    frame = frame.with_columns(
        [pl.when(~unclosed).then(pl.col(c)).alias(c) for c in ("invoice_status", "closing_invoice_id")]
        # the period's other invoices are final once Stripe will not close it (not_invoiced): a coupon
        # on the invoice that billed the fee in advance is still money Stripe did not collect
        + [pl.when(~pl.col("awaiting_invoice") & ~other_currency).then(pl.col(c)).alias(c)
           for c in ("adjustments_minor", "adjusted_invoice_ids")]
        + [pl.when(~other_currency).then(pl.col(c)).alias(c)
           for c in ("stripe_total_minor", "engine_items_minor", "amount_due", "amount_paid", "amount_remaining",
                     "credit_notes_minor")])
    ours_t = pl.col("our_total_minor")
    stripe_t = pl.col("stripe_total_minor")
    not_in_stripe = pl.col("not_in_stripe_minor").fill_null(0)
    items = pl.col("engine_items_minor").fill_null(0)
    items_pending = pl.col("engine_items_pending_minor").fill_null(0)
    frame = frame.with_columns(
        engine_items_minor=items.cast(pl.Int64),
        engine_items_pending_minor=items_pending.cast(pl.Int64),
        unbilled_minor=(not_in_stripe - items - items_pending).cast(pl.Int64),
        amount_diff_minor=((stripe_t.fill_null(0) - items) - (ours_t.fill_null(0) - not_in_stripe)).cast(pl.Int64),
        # only lines that carry an amount round: Stripe's zero-amount metered lines and our zero lines
        # do not, and the engine's invoice items and our charges Stripe cannot price are not compared
        tolerance_minor=_lines_tolerance(settings, pl.coalesce("rounded_lines", "line_count"), pl.col("our_lines")),
        # the residual (no usage row carries it) is judged by the lines on no meter alone: a fee-only
        # difference must not hide in the tolerance of the metered lines beside it
        residual_tolerance_minor=_lines_tolerance(
            settings, pl.coalesce("unmetered_lines", "rounded_lines", "line_count"),
            pl.coalesce("our_unmetered_lines", "our_lines"), floor=0) if usage is not None
        else pl.lit(None, dtype=pl.Int64),
        stripe_adjustments_minor=pl.col("adjustments_minor").cast(pl.Int64),
    )
    frame = _with_drift(_with_residuals(frame, usage).with_columns(
        residual_tolerance_minor=pl.coalesce("residual_tolerance_minor", "tolerance_minor")), usage)
    tolerance, residual_tolerance = pl.col("tolerance_minor"), pl.col("residual_tolerance_minor")
    diff, residual = pl.col("amount_diff_minor"), pl.col("residual_minor")
    adjustments = pl.col("stripe_adjustments_minor").fill_null(0)
    status = (
        pl.when(other_currency).then(pl.lit("currency_mismatch"))
        .when(pl.col("awaiting_invoice")).then(pl.lit("pending"))
        .when(pl.col("invoice_missing")).then(pl.lit("not_invoiced"))
        .when(stripe_t.is_null() & ((ours_t.fill_null(0) - not_in_stripe) != 0)).then(pl.lit("missing_in_stripe"))
        .when(ours_t.is_null() & (stripe_t.fill_null(0) != 0)).then(pl.lit("extra_in_stripe"))
        .when(pl.col("invoice_status") == "draft").then(pl.lit("pending"))
        # equal totals say nothing when a meter row's difference offsets one on no meter row (a fee)
        .when((diff.abs() > tolerance) | (residual.abs() > residual_tolerance) | (adjustments != 0))
        .then(pl.lit("amount_mismatch"))
        # a difference within tolerance on a line a drifted Stripe price priced is that price, not rounding
        .when(pl.col("price_drift_differs")).then(pl.lit("amount_mismatch"))
        .when((diff != 0) | (residual != 0)).then(pl.lit("within_tolerance"))
        .otherwise(pl.lit("matched"))
    )
    unbilled = pl.col("unbilled_minor")
    run_items = f"run `metering stripe invoice-items --period {billing_month:%Y-%m}`"
    # where the charges Stripe cannot price stand: billed as our invoice items, or not yet
    not_in_stripe_parts = pl.concat_str([
        pl.when(items != 0).then(pl.format("{} on Stripe's invoices as our invoice items", items)),
        pl.when(items_pending != 0).then(pl.format(
            "{} in our invoice items pending at Stripe for the next invoice", items_pending)),
        pl.when(unbilled > 0).then(pl.format(
            "{} unbilled: in no invoice item of ours, {} once the period is closed (it names what it cannot "
            "bill: blocked, held, of another plan version)", unbilled, pl.lit(run_items)))
        .when(unbilled < 0).then(pl.format(
            "{} unbilled: our invoice items exceed it by {}, {} to credit it", unbilled, -unbilled, pl.lit(run_items))),
    ], separator="; ", ignore_nulls=True)
    credited = pl.col("credit_notes_minor").fill_null(0)
    amounts = pl.format(
        "our total {}{} vs Stripe {} {}{} (diff {}, tolerance {}); invoice {}, closing invoice {}; the "
        "period's lines paid {}, remaining {}{}",
        ours_t.fill_null(0),
        pl.when((not_in_stripe != 0) | (items != 0) | (items_pending != 0))
        .then(pl.format(" of which {} not priceable in Stripe ({})", not_in_stripe, not_in_stripe_parts))
        .otherwise(pl.lit("")),
        stripe_t.fill_null(0), pl.col("currency").fill_null("?"),
        pl.when(items != 0).then(pl.format(", of which {} our invoice items", items)).otherwise(pl.lit("")),
        pl.col("amount_diff_minor"), pl.col("tolerance_minor"), pl.col("invoice_ids").fill_null("none"),
        pl.col("invoice_status").fill_null("none"), pl.col("amount_paid").fill_null(0),
        pl.col("amount_remaining").fill_null(0),
        # a credit note before payment leaves the invoice's total as it was: Stripe collects less than its lines
        pl.when(credited != 0).then(pl.format(
            ", credited {} (credit notes issued before payment on {}: Stripe collects that much less than its "
            "lines; a finance decision, shown, not counted by the check)",
            credited, pl.col("credited_invoice_ids").fill_null("?"))).otherwise(pl.lit("")),
    )
    frame = frame.with_columns(status=status)
    note = pl.concat_str(pl.lit("") if usage is None else _residual_note(), _adjustments_note(), _drift_note())
    return (
        frame.with_columns(
            reason=pl.when(pl.col("status") == "currency_mismatch")
            .then(pl.format("{} (diff {}: all of ours less what Stripe cannot price){}", pl.col("other_currency_note"),
                            pl.col("amount_diff_minor"), note))
            .when(pl.col("awaiting_invoice"))
            .then(pl.format("Stripe has not invoiced this period yet; {}", amounts))
            .when(pl.col("status") == "pending")
            .then(pl.format("invoice still draft{}; {}", _overdue_draft(reconciled_at), amounts))
            .when(pl.col("status") == "not_invoiced")
            .then(pl.concat_str(pl.col("invoice_missing_reason"), pl.lit("; "), amounts, note))
            .otherwise(pl.concat_str(amounts, note)),
            billing_month=pl.lit(billing_month, dtype=pl.Date),
            reconciled_at=pl.lit(reconciled_at, dtype=pl.Datetime("us", "UTC")),
        )
        .select(INVOICE_COLUMNS)
        .sort(["customer_id", "period_start"])
    )


DRAFT_FINALIZES_WITHIN = dt.timedelta(hours=72)
"""Stripe finalizes a period's draft after its grace period (1 h by default), or up to 72 h later when
the `invoice.created` webhook goes unacknowledged (stripe-facts.md)."""


def _overdue_draft(reconciled_at: dt.datetime) -> pl.Expr:
    """' for N h since Stripe created in_...: ...' when the closing draft is older than Stripe lets a draft
    it will finalize stay one; '' otherwise. Such a row was `pending` for good, its reason no different
    from an hour-old draft's."""
    age = pl.lit(reconciled_at, dtype=pl.Datetime("us", "UTC")) - pl.col("closing_invoice_created")
    return (pl.when(age > DRAFT_FINALIZES_WITHIN)
            .then(pl.format(" for {} h since Stripe created {}: Stripe finalizes a draft with auto_advance on "
                            "within {} h, so something holds it: look at the invoice and the webhook endpoint "
                            "in Stripe",
                            age.dt.total_hours(), pl.col("closing_invoice_id"),
                            pl.lit(int(DRAFT_FINALIZES_WITHIN.total_seconds() // 3600))))
            .otherwise(pl.lit("")))


def _with_drift(invoices: pl.DataFrame, usage: pl.DataFrame | None) -> pl.DataFrame:
    """Invoice rows with `price_drift_differs`: money differs on a line a drifted Stripe price priced.

    With `usage`, on a meter: a usage row of the period on one of `drifted_meters` has a difference; on no
    meter (a fee, `drifted_unmetered`): the residual (`_with_residuals`) is not zero, and its tolerance is 0,
    since a drifted fee's difference is no rounding. Without `usage`: the row has a difference at all.
    """
    key = ["customer_id", "period_start"]
    if usage is None:
        return invoices.with_columns(price_drift_differs=(
            pl.col("price_drift").is_not_null() & (pl.col("amount_diff_minor").fill_null(0) != 0)))
    differing = (usage.filter(pl.col("amount_diff_minor").fill_null(0) != 0).group_by(key)
                 .agg(pl.col("meter").drop_nulls().unique().alias("differing_meters")))
    on_meter = (pl.col("drifted_meters").str.split(",").list.set_intersection(pl.col("differing_meters"))
                .list.len() > 0).fill_null(False)
    on_fee = pl.col("drifted_unmetered").fill_null(False)
    return (
        invoices.join(differing.cast({"period_start": pl.Date}), on=key, how="left")
        .with_columns(residual_tolerance_minor=pl.when(on_fee).then(pl.lit(0, dtype=pl.Int64))
                      .otherwise(pl.col("residual_tolerance_minor")))
        .with_columns(price_drift_differs=on_meter | (on_fee & (pl.col("residual_minor").fill_null(0) != 0)))
        .drop("differing_meters")
    )


def _drift_note() -> pl.Expr:
    """The end of an invoice row's reason when its difference is on a line a drifted Stripe price priced."""
    return pl.when((pl.col("status") == "amount_mismatch") & pl.col("price_drift_differs")).then(pl.format(
        "; Stripe's price differs from ours ({}): a price difference, not rounding", pl.col("price_drift"))
    ).otherwise(pl.lit(""))


def _adjustments_note() -> pl.Expr:
    """The end of a closed invoice row's reason when the period's invoices total other than their lines."""
    adjustments = pl.col("stripe_adjustments_minor")
    return pl.when(adjustments.fill_null(0) != 0).then(pl.format(
        "; Stripe's invoice {} totals {} {} its lines before tax (a discount or credit on the invoice, on no line: "
        "Stripe collects that much {}, counted)", pl.col("adjusted_invoice_ids").fill_null("?"), adjustments.abs(),
        pl.when(adjustments < 0).then(pl.lit("less than")).otherwise(pl.lit("more than")),
        pl.when(adjustments < 0).then(pl.lit("less")).otherwise(pl.lit("more")))).otherwise(pl.lit(""))


def _residual_note() -> pl.Expr:
    """The end of an unexplained invoice row's reason: how much of its difference is on no meter row."""
    residual, usage_diff = pl.col("residual_minor"), pl.col("usage_diff_minor")
    what = (pl.when(residual.abs() > pl.col("residual_tolerance_minor")).then(pl.lit("flat fees, other lines"))
            .otherwise(pl.lit("within tolerance")))
    nothing = (pl.col("amount_diff_minor") == 0) & (residual == 0)   # a row flagged for its discount alone
    return (
        pl.when(pl.col("status").is_in(list(INVOICE_EXPLAINED_STATUSES)) | nothing).then(pl.lit(""))
        .when(residual == 0).then(pl.lit("; all of it on the meter rows"))
        # of opposite signs, the two parts are not parts "of" the difference: name both
        .when(residual.sign() * usage_diff.sign() < 0)
        .then(pl.format("; {} on no meter row ({}), offset by {} on the meter rows", residual, what, usage_diff))
        .otherwise(pl.format("; {} of it on no meter row ({})", residual, what))
    )


def _with_residuals(invoices: pl.DataFrame, usage: pl.DataFrame | None) -> pl.DataFrame:
    """Invoice rows with `usage_diff_minor` (their usage rows' summed difference) and `residual_minor`."""
    key = ["customer_id", "period_start"]
    per_period = (
        usage.group_by(key).agg(pl.col("amount_diff_minor").fill_null(0).sum().cast(pl.Int64).alias("usage_diff_minor"))
        if usage is not None and usage.height
        else pl.DataFrame(schema={"customer_id": pl.String, "period_start": pl.Date, "usage_diff_minor": pl.Int64})
    )
    residual = pl.col("amount_diff_minor").fill_null(0) - pl.col("usage_diff_minor")
    return (
        invoices.drop("usage_diff_minor", "residual_minor", strict=False)
        .join(per_period, on=key, how="left")
        .with_columns(pl.col("usage_diff_minor").fill_null(0))
        .with_columns(residual_minor=residual.cast(pl.Int64))
    )


def invoice_residuals(usage: pl.DataFrame, invoices: pl.DataFrame) -> pl.DataFrame:
    """Per invoice row, the part of its difference that no usage row of the same customer x period carries.

    `usage_diff_minor` is the sum of the usage rows' signed differences (explained or not: an explained
    row's money is accounted for by its reason, an unexplained row's is counted by that row), so
    `residual_minor` = invoice difference - usage_diff_minor is what only the invoice shows: flat fees,
    licensed seats, any line without a meter. `unexplained_minor` is |residual_minor| when it exceeds
    the residual's tolerance (the lines on no meter that carry an amount), plus |stripe_adjustments_minor|
    (the period's invoices' totals less their lines: a discount never rounds), whatever the row's status but
    `pending` (Stripe may still change the invoice): an explained usage difference must not hide a fee's
    by offsetting it in the total.
    """
    residual = pl.col("residual_minor").abs()
    # rows stored before the residual had a tolerance of its own, or a discount column, have NULL there
    tolerance = pl.coalesce(_column(invoices, "residual_tolerance_minor"), pl.col("tolerance_minor"))
    adjustments = _column(invoices, "stripe_adjustments_minor").fill_null(0).abs()
    settled = pl.col("status") != "pending"
    return _with_residuals(invoices, usage).with_columns(unexplained_minor=(
        pl.when(settled & (residual > tolerance)).then(residual).otherwise(0)
        + pl.when(settled).then(adjustments).otherwise(0)).cast(pl.Int64))


def _column(frame: pl.DataFrame, name: str) -> pl.Expr:
    """`name` of `frame`, or NULL when `frame` has no such column."""
    return pl.col(name) if name in frame.columns else pl.lit(None, dtype=pl.Int64)


def unexplained_by_currency(usage: pl.DataFrame, invoices: pl.DataFrame | None = None) -> dict[str, int]:
    """What the blocking check measures, per currency (minor units).

    The sum of |amount difference| over unexplained usage rows, plus, when `invoices` are given, each
    invoice row's |residual| above its tolerance, the part of its difference no usage row carries
    (`invoice_residuals`), whatever its status but `pending`: a flat fee Stripe charged differently
    fails the check even when a usage row's difference offsets it in the total, and money a usage
    row counts is not counted again. Plus what the period's invoices' totals before tax differ from their
    lines (discounts and credits on the invoice: `stripe_adjustments_minor`).
    """
    cur = pl.col("currency").fill_null("?").alias("currency")
    parts = [usage.filter(~pl.col("explained"))
             .select(cur, pl.col("amount_diff_minor").fill_null(0).abs().alias("minor"))]
    if invoices is not None and invoices.height:
        parts.append(invoice_residuals(usage, invoices).filter(pl.col("unexplained_minor") > 0)
                     .select(cur, pl.col("unexplained_minor").alias("minor")))
    rows = pl.concat([p.with_columns(pl.col("minor").cast(pl.Int64)) for p in parts]).group_by("currency").agg(
        pl.col("minor").sum())
    return {r["currency"]: int(r["minor"]) for r in rows.iter_rows(named=True)}
