"""Everything a finance report shows, read from the warehouse once (every renderer uses this, so the
HTML, the spreadsheet and the CSVs cannot disagree)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

import duckdb
import polars as pl

from metering.reconcile.inputs import merged_invoices_sql
from metering.reconcile.reconcile import (
    INVOICE_COLUMNS, INVOICE_STATUSES, STATUSES, USAGE_COLUMNS, unexplained_by_currency,
)
from metering.reconcile.settings import ReconcileSettings
from metering.warehouse import query_frame, table_columns

CLEAN_STATUSES = ("matched", "within_tolerance")
PENDING = "pending"   # a row Stripe has not invoiced (or closed) yet: explained, not at risk
NO_MATCH_RATE = "n/a"


def _month_invoices_sql(con: duckdb.DuckDBPyConnection) -> str:
    """The invoice ids of one billing month (the single parameter): each known invoice is in exactly one.

    The rule: an invoice is the month of the first reconciled invoice row listing it (`invoice_ids`: it
    has lines of that month's periods). The invoice closing September that bills October's fee in
    advance is September's, so adding monthly reports counts it once. An invoice no reconciled month
    lists (reconciliation ignores a void invoice's lines, so a voided one never is) is the month of its
    own period start, in UTC, from the Stripe invoice headers; one unknown there is in no month.
    """
    return f"""
        WITH listed AS (
            SELECT invoice_id, min(billing_month) AS billing_month
            FROM (SELECT unnest(string_split(invoice_ids, ',')) AS invoice_id, billing_month
                  FROM invoice_reconciliation WHERE invoice_ids IS NOT NULL)
            GROUP BY invoice_id),
        own AS (
            SELECT invoice_id, CAST(date_trunc('month', timezone('UTC', min(period_start))) AS DATE) AS billing_month
            FROM ({merged_invoices_sql(con)}) GROUP BY invoice_id)
        SELECT coalesce(l.invoice_id, o.invoice_id) AS invoice_id
        FROM listed l FULL JOIN own o ON o.invoice_id = l.invoice_id
        WHERE coalesce(l.billing_month, o.billing_month) = ?
    """


@dataclass(frozen=True)
class CurrencyTotals:
    """The headline numbers of one currency (all money in integer minor units)."""

    currency: str
    customers: int
    rows: int
    rated_minor: int            # sum of our rated amounts (metered lines)
    rated_not_in_stripe_minor: int  # of which on charges Stripe cannot price: left out of the difference
    invoiced_minor: int         # sum of Stripe's invoiced amounts (metered lines)
    difference_minor: int       # the sum of the rows' differences: invoiced - (rated - rated_not_in_stripe)
    # per customer x period (invoice rows): our charges Stripe cannot price (minimums, dimension
    # filters: billed by the engine as invoice items), and where they stand
    not_in_stripe_minor: int
    engine_items_minor: int          # of which on Stripe's invoices as the engine's invoice items
    engine_items_pending_minor: int  # of which in the engine's items Stripe holds for the next invoice
    # per customer x period, unbilled = not_in_stripe - items - pending; never netted across rows (one
    # customer's excess item does not bill another's charge). The engine bills a period's items once
    # it has ended, so a pending period's unbilled is not missing yet:
    unbilled_minor: int              # of which not billed: the positive rows' unbilled, periods not pending
    unbilled_pending_minor: int      # of which awaiting the period's end: the positive pending rows' unbilled
    credit_due_minor: int            # the engine's items beyond the charges: sum of the negative rows' |unbilled|
    # per customer x period (invoice rows), every period of the month, and of it the periods Stripe has
    # not closed yet (status pending)
    our_invoice_total_minor: int
    stripe_invoice_total_minor: int
    pending_periods: int
    pending_our_invoice_total_minor: int
    pending_stripe_invoice_total_minor: int
    amount_paid_minor: int      # the periods' own Stripe lines on paid invoices, less their credit notes
    amount_remaining_minor: int  # the periods' own Stripe lines on open or uncollectible invoices, less theirs
    credit_notes_minor: int     # credit notes Stripe issued before payment (the invoice rows' credit_notes_minor)
    money_at_risk_minor: int    # sum of |difference| over rows not matched / within tolerance, nor pending
    pending_minor: int          # sum of |difference| over pending rows: Stripe has not invoiced them yet
    unexplained_minor: int      # what the blocking check counts: unexplained usage rows, and invoice
                                # differences no usage row carries (reconcile.unexplained_by_currency)
    clean_rows: int             # matched + within tolerance

    @property
    def match_rate(self) -> Decimal | None:
        """Share of rows matched or within tolerance, in percent, 0.1 precision (half-up); None when the
        currency has no usage row (only invoice rows: flat fees, minimums): no rate, rather than 100%."""
        if self.rows == 0:
            return None
        return (Decimal(100) * self.clean_rows / self.rows).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)

    @property
    def not_due_minor(self) -> int:
        """Stripe's lines of the month on no paid, open or uncollectible invoice: on drafts (or on
        invoices whose status is unknown). Stripe invoice total = paid + remaining + credited (credit
        notes before payment) + this."""
        return (self.stripe_invoice_total_minor - self.amount_paid_minor - self.amount_remaining_minor
                - self.credit_notes_minor)

    def match_rate_text(self, unit: str = "") -> str:
        """The match rate as every output shows it: '33.3' + unit, or 'n/a' without usage rows."""
        rate = self.match_rate
        return NO_MATCH_RATE if rate is None else f"{rate}{unit}"


@dataclass(frozen=True)
class ReportData:
    billing_month: dt.date
    generated_at: dt.datetime
    settings: ReconcileSettings
    lines: pl.DataFrame          # usage_reconciliation rows
    invoices: pl.DataFrame       # invoice_reconciliation rows
    dunning: pl.DataFrame        # the month's dunning_state rows (`_month_invoices_sql`), as stored
    totals: list[CurrencyTotals]
    dunning_finance: pl.DataFrame = field(default_factory=pl.DataFrame)  # metering.dunning.summary: currency x category (x step)

    @property
    def period_label(self) -> str:
        return self.billing_month.strftime("%Y-%m")

    @property
    def discrepancies(self) -> pl.DataFrame:
        """Rows not matched / within tolerance, per currency (in currency order, as the totals), largest
        |amount difference| first within it: minor units of two currencies are not comparable (51,000
        JPY is about 340 USD, not above 396.00 USD)."""
        return (
            self.lines.filter(~pl.col("status").is_in(list(CLEAN_STATUSES)))
            # no currency sorts as the totals' '?' (first), not last
            .with_columns(abs_diff_minor=pl.col("amount_diff_minor").abs(), _cur=pl.col("currency").fill_null("?"))
            .sort(["_cur", "abs_diff_minor", "customer_id", "meter"], descending=[False, True, False, False],
                  nulls_last=True)
            .drop("abs_diff_minor", "_cur")
        )

    def status_counts(self) -> dict[str, int]:
        """Usage rows (customer x meter x period) per status, every status listed."""
        counts = dict(self.lines.group_by("status").len().iter_rows())
        return {s: int(counts.get(s, 0)) for s in STATUSES}

    def invoice_status_counts(self) -> dict[str, int]:
        """Invoice rows (customer x period) per status, every status listed: a period's flat fees and
        minimums have no usage row, so a not_invoiced or amount_mismatch invoice is counted only here."""
        counts = dict(self.invoices.group_by("status").len().iter_rows()) if self.invoices.height else {}
        return {s: int(counts.get(s, 0)) for s in INVOICE_STATUSES}

    def status_money(self) -> dict[str, dict[str, int]]:
        """status -> currency -> sum of |amount difference| (minor units)."""
        out: dict[str, dict[str, int]] = {}
        frame = self.lines.group_by(["status", pl.col("currency").fill_null("?")]).agg(
            pl.col("amount_diff_minor").abs().sum().alias("m"))
        for status, cur, m in frame.iter_rows():
            out.setdefault(status, {})[cur] = int(m)
        return out

    def dunning_summary(self) -> list[tuple[str, int]]:
        """(category, invoices) over every currency, in metering.dunning.summary's categories and order,
        so the counts are those of the amounts beside them (an invoice never chased that Stripe saw paid
        is `recovered` there, not `not_in_dunning`); `at_risk` repeats `in_dunning`, so it is left out."""
        if not self.dunning_finance.height:
            return []
        counts = (self.dunning_finance.filter(pl.col("category") != "at_risk")
                  .group_by("category", maintain_order=True).agg(pl.col("invoices").sum()))
        return [(str(k), int(v)) for k, v in counts.iter_rows()]

    def summary_rows(self) -> list[tuple[str, str, str]]:
        """(metric, currency, value) rows: the 'summary' sheet / CSV, identical in every format."""
        rows: list[tuple[str, str, str]] = [
            ("period", "", self.period_label),
            ("generated_at", "", self.generated_at.strftime("%Y-%m-%dT%H:%M:%SZ")),
            ("tolerance", "", self.settings.describe_tolerance([t.currency for t in self.totals])),
            ("max_unexplained_minor", "", str(self.settings.max_unexplained_minor)),
            ("settle_seconds", "", str(self.settings.settle_seconds)),
        ]
        for t in self.totals:
            for metric in TOTAL_METRICS:
                rows.append((metric, t.currency, str(getattr(t, metric))))
            rows.append(("match_rate_percent", t.currency, t.match_rate_text()))
        for status, n in self.status_counts().items():
            rows.append((f"rows_{status}", "", str(n)))
        for status, n in self.invoice_status_counts().items():
            rows.append((f"invoice_rows_{status}", "", str(n)))
        for state, n in self.dunning_summary():
            rows.append((f"dunning_invoices_{state}", "", str(n)))
        if self.dunning_finance.height:
            for r in self.dunning_finance.filter(pl.col("category") != "in_dunning").iter_rows(named=True):
                rows.append((f"dunning_{r['category']}_minor", r["currency"], str(r["amount_minor"])))
        return rows


TOTAL_METRICS = (
    "customers", "rows", "clean_rows", "rated_minor", "rated_not_in_stripe_minor", "invoiced_minor",
    "difference_minor", "not_in_stripe_minor", "engine_items_minor", "engine_items_pending_minor", "unbilled_minor",
    "unbilled_pending_minor", "credit_due_minor", "our_invoice_total_minor", "stripe_invoice_total_minor",
    "pending_periods", "pending_our_invoice_total_minor", "pending_stripe_invoice_total_minor", "amount_paid_minor",
    "amount_remaining_minor", "credit_notes_minor", "money_at_risk_minor", "pending_minor", "unexplained_minor",
)
"""The summary sheet's per-currency metrics, in order (CurrencyTotals' fields)."""


def _currency_totals(lines: pl.DataFrame, invoices: pl.DataFrame) -> list[CurrencyTotals]:
    cur = pl.col("currency").fill_null("?")
    clean = pl.col("status").is_in(list(CLEAN_STATUSES))
    pending = pl.col("status") == PENDING
    # customers: of either side (a customer with only a flat fee has no usage row)
    customers = pl.concat([lines.select(cur, "customer_id"), invoices.select(cur, "customer_id")]).group_by(
        "currency").agg(pl.col("customer_id").n_unique().alias("customers"))
    abs_diff = pl.col("amount_diff_minor").abs()
    usage = lines.group_by(cur).agg(
        pl.len().alias("rows"),
        pl.col("our_amount_minor").fill_null(0).sum().alias("rated"),
        pl.col("not_in_stripe_minor").fill_null(0).sum().alias("rated_nx"),
        pl.col("stripe_amount_minor").fill_null(0).sum().alias("invoiced"),
        pl.col("amount_diff_minor").fill_null(0).sum().alias("diff"),
        abs_diff.filter(~clean & ~pending).sum().alias("risk"),
        abs_diff.filter(pending).sum().alias("pending"),
        clean.sum().alias("clean"),
    )
    # what the blocking check counts: usage rows, and invoice differences no usage row carries
    unexplained = unexplained_by_currency(lines, invoices)
    # per row; rows reconciled before the engine billed invoice items have none: all of it was unbilled
    unbilled = pl.coalesce("unbilled_minor", pl.col("not_in_stripe_minor").fill_null(0)
                           - pl.col("engine_items_minor").fill_null(0)
                           - pl.col("engine_items_pending_minor").fill_null(0))
    our_total, stripe_total = pl.col("our_total_minor").fill_null(0), pl.col("stripe_total_minor").fill_null(0)
    inv = invoices.group_by(cur).agg(
        our_total.sum().alias("our_total"),
        stripe_total.sum().alias("stripe_total"),
        pending.sum().alias("pending_periods"),
        our_total.filter(pending).sum().alias("pending_our_total"),
        stripe_total.filter(pending).sum().alias("pending_stripe_total"),
        pl.col("amount_paid").fill_null(0).sum().alias("paid"),
        pl.col("amount_remaining").fill_null(0).sum().alias("remaining"),
        # rows reconciled before migration 055 have none (NULL): 0, as their paid / remaining are gross
        pl.col("credit_notes_minor").fill_null(0).sum().alias("credited"),
        # a minimum has no meter: only the invoice rows see every charge Stripe cannot price
        pl.col("not_in_stripe_minor").fill_null(0).sum().alias("nx"),
        pl.col("engine_items_minor").fill_null(0).sum().alias("items"),
        pl.col("engine_items_pending_minor").fill_null(0).sum().alias("items_pending"),
        # not netted: one customer's unbilled charge and another's excess item are two separate amounts
        unbilled.clip(lower_bound=0).filter(~pending).sum().alias("unbilled"),
        unbilled.clip(lower_bound=0).filter(pending).sum().alias("unbilled_pending"),
        (-unbilled).clip(lower_bound=0).sum().alias("credit_due"),
    )
    both = (usage.join(inv, on="currency", how="full", coalesce=True).join(customers, on="currency", how="left")
            .fill_null(0).sort("currency"))
    return [
        CurrencyTotals(
            currency=r["currency"], customers=int(r["customers"]), rows=int(r["rows"]),
            rated_minor=int(r["rated"]), rated_not_in_stripe_minor=int(r["rated_nx"]),
            invoiced_minor=int(r["invoiced"]), difference_minor=int(r["diff"]),
            not_in_stripe_minor=int(r["nx"]), engine_items_minor=int(r["items"]),
            engine_items_pending_minor=int(r["items_pending"]), unbilled_minor=int(r["unbilled"]),
            unbilled_pending_minor=int(r["unbilled_pending"]), credit_due_minor=int(r["credit_due"]),
            our_invoice_total_minor=int(r["our_total"]), stripe_invoice_total_minor=int(r["stripe_total"]),
            pending_periods=int(r["pending_periods"]), pending_our_invoice_total_minor=int(r["pending_our_total"]),
            pending_stripe_invoice_total_minor=int(r["pending_stripe_total"]),
            amount_paid_minor=int(r["paid"]), amount_remaining_minor=int(r["remaining"]),
            credit_notes_minor=int(r["credited"]),
            money_at_risk_minor=int(r["risk"]), pending_minor=int(r["pending"]),
            unexplained_minor=unexplained.get(r["currency"], 0), clean_rows=int(r["clean"]),
        )
        for r in both.iter_rows(named=True)
    ]


def _dunning(con: duckdb.DuckDBPyConnection, billing_month: dt.date) -> pl.DataFrame:
    """The month's dunning_state rows (`_month_invoices_sql`)."""
    if not table_columns(con, "dunning_state"):
        return pl.DataFrame()
    return query_frame(
        con, f"SELECT * FROM dunning_state WHERE invoice_id IN ({_month_invoices_sql(con)}) ORDER BY ALL",
        [billing_month])


def load_report_data(
    con: duckdb.DuckDBPyConnection,
    billing_month: dt.date,
    *,
    settings: ReconcileSettings | None = None,
    generated_at: dt.datetime | None = None,
) -> ReportData:
    """Read the month's reconciliation (run `reconcile_period` first) and the dunning state of its invoices."""
    billing_month = billing_month.replace(day=1)
    if settings is None:
        # the settings that produced the rows: a report written later, or by someone else, gives the
        # same verdict as the check did (it re-judged them by the writer's environment)
        from metering.reconcile.run import stored_settings

        settings = stored_settings(con, billing_month) or ReconcileSettings.from_env()
    lines = query_frame(
        con,
        f"SELECT {', '.join(USAGE_COLUMNS)} FROM usage_reconciliation WHERE billing_month = ? "
        "ORDER BY customer_id, period_start, meter",
        [billing_month],
    )
    invoices = query_frame(
        con,
        f"SELECT {', '.join(INVOICE_COLUMNS)} FROM invoice_reconciliation WHERE billing_month = ? "
        "ORDER BY customer_id, period_start",
        [billing_month],
    )
    dunning = _dunning(con, billing_month)
    finance = pl.DataFrame()
    if dunning.height:
        from metering.dunning.summary import dunning_summary

        finance = dunning_summary(dunning)
    return ReportData(
        billing_month=billing_month,
        generated_at=(generated_at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC),   # shown with a Z
        settings=settings,
        lines=lines,
        invoices=invoices,
        dunning=dunning,
        totals=_currency_totals(lines, invoices),
        dunning_finance=finance,
    )
