"""The customer list (plan assignments, billing anchors) and billing periods.

The list is a CSV with a header, one row per customer x plan assignment (a plan change is a second
row for the customer with a later `plan_effective_from`; the other columns repeat):

    customer_id, name, email, currency, billing_anchor_day, plan, plan_effective_from, payment_behavior

Billing periods (invariant I7) are half-open `[start, end)` UTC date ranges that follow the
customer's anchor day: a period starts on the anchor day of a month and ends on the anchor day of
the next. When the anchor day does not exist in a month (31 in April, 29-31 in February) the
period starts on that month's last day (Stripe's rule); no anchor means calendar months (anchor 1).
A customer's subscription starts at its first plan assignment; as in Stripe, when that day is not
an anchor date the first period runs from it to the next anchor date (flat fees prorated over the
full cycle). The monthly billing partition of month M rates the periods that START in M: one per
customer, plus a customer's first, partial period in the month its subscription starts.

A plan assignment is in force from `plan_effective_from` (inclusive) until the customer's next
assignment of another plan (a row repeating the plan in force changes nothing); `billing_segments`
intersects periods, assignments and plan versions into the sub-intervals rating prices separately.
"""

from __future__ import annotations

import calendar
import csv
import io
import datetime as dt
import os
import re
from pathlib import Path

import polars as pl

from metering import config
from metering.errors import BadInputError
from metering.rating.catalog import versions_frame
from metering.rules.model import CURRENCY_DIGITS, Rules

COLUMNS = ("customer_id", "name", "email", "currency", "billing_anchor_day", "plan",
           "plan_effective_from", "payment_behavior")
PAYMENT_BEHAVIORS = ("succeeds", "fails", "fails_then_succeeds")
MAX_ERRORS = 50
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")

CUSTOMER_PLAN_SCHEMA = {
    "customer_id": pl.String, "name": pl.String, "email": pl.String, "currency": pl.String,
    "billing_anchor_day": pl.Int32, "plan": pl.String, "plan_effective_from": pl.Date,
    "plan_effective_to": pl.Date, "payment_behavior": pl.String, "source_line": pl.Int64,
}


# --- billing periods ---------------------------------------------------------------------------

def anchor_date(year: int, month: int, anchor_day: int | None) -> dt.date:
    """The anchor date in a month: the anchor day, or the month's last day when it is shorter."""
    last = calendar.monthrange(year, month)[1]
    return dt.date(year, month, min(anchor_day or 1, last))


def _add_months(year: int, month: int, n: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + n
    return index // 12, index % 12 + 1


def period_starting_in(year: int, month: int, anchor_day: int | None) -> tuple[dt.date, dt.date]:
    """The billing period that starts in the given month: [anchor date, next month's anchor date)."""
    ny, nm = _add_months(year, month, 1)
    return anchor_date(year, month, anchor_day), anchor_date(ny, nm, anchor_day)


def period_containing(day: dt.date, anchor_day: int | None) -> tuple[dt.date, dt.date]:
    """The billing period [start, end) that holds `day`."""
    start, end = period_starting_in(day.year, day.month, anchor_day)
    if day < start:
        py, pm = _add_months(day.year, day.month, -1)
        start, end = period_starting_in(py, pm, anchor_day)
    return start, end


def periods_between(first: dt.date, last: dt.date, anchor_day: int | None) -> list[tuple[dt.date, dt.date]]:
    """Every period that overlaps [first, last), in order: contiguous and non-overlapping."""
    out = []
    start, end = period_containing(first, anchor_day)
    while start < last:
        out.append((start, end))
        start, end = period_containing(end, anchor_day)
    return out


def midnight_unix(day: dt.date) -> int:
    """Unix seconds of a UTC date's first instant: how Stripe's periods and time filters take a day."""
    return int(dt.datetime.combine(day, dt.time(0), dt.UTC).timestamp())


FIRST_DATE = dt.date(2000, 1, 1)
LAST_DATE = dt.date(9998, 12, 31)
"""The dates a command or file may name: events before 2000 are refused at ingest, and a period in
year 9999 has no end date (date arithmetic around year 1 or 9999 overflowed, as tracebacks)."""


def outside_dates(day: dt.date) -> bool:
    return not FIRST_DATE <= day <= LAST_DATE


def month_bounds(month: dt.date) -> tuple[dt.date, dt.date]:
    """[first day, first day of next month) of the month holding `month`."""
    ny, nm = _add_months(month.year, month.month, 1)
    return dt.date(month.year, month.month, 1), dt.date(ny, nm, 1)


# --- the customer list ---------------------------------------------------------------------------

def load_customers(path: str | Path | None = None, rules: Rules | None = None) -> pl.DataFrame:
    """Read and validate the customer list; one row per assignment with its `plan_effective_to`.

    Raises `BadInputError` listing every problem (up to 50) as `file:line: field: what is wrong`.
    With `rules`, plans must exist and the currency must be the plan's.
    """
    # named where it came from: "see METERING_CUSTOMERS" sent a user who passed --customers astray
    origin = ("" if path else ", from $METERING_CUSTOMERS" if os.environ.get("METERING_CUSTOMERS")
              else ", by default (pass the file, or set METERING_CUSTOMERS)")
    path = config.customers_path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise BadInputError(f"{path}: file not found (the customer list{origin})") from None
    except UnicodeDecodeError as exc:
        raise BadInputError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise BadInputError(f"{path}:1: header: missing column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)})")
    errors: list[str] = []
    rows: list[dict] = []
    first_seen: dict[str, dict] = {}
    seen_dates: dict[tuple[str, dt.date], int] = {}
    for raw in reader:
        line = reader.line_num   # the record's last physical line (quoted fields may span lines)
        def bad(field: str, msg: str, line: int = line) -> None:
            errors.append(f"{path}:{line}: {field}: {msg}")

        if None in raw:
            width = len(reader.fieldnames or [])
            bad("(row)", f"{width + len(raw[None])} fields where the header has {width}")
            continue
        rec = {k: (raw.get(k) or "").strip() for k in COLUMNS}
        before = len(errors)
        if not rec["customer_id"]:
            bad("customer_id", "empty")
        if rec["email"] and not _EMAIL_RE.match(rec["email"]):
            bad("email", f"{rec['email']!r} is not an e-mail address")
        currency = rec["currency"].lower()
        if currency not in CURRENCY_DIGITS:
            bad("currency", f"unknown currency {rec['currency']!r}")
        anchor = None
        if rec["billing_anchor_day"]:
            day = rec["billing_anchor_day"]   # ASCII digits: str.isdigit() takes '²', which int() refuses
            if not re.fullmatch(r"[0-9]{1,2}", day) or not 1 <= int(day) <= 31:
                bad("billing_anchor_day", f"{day!r} is not a day 1..31 (or empty for calendar months)")
            else:
                anchor = int(day)
        if not rec["plan"]:
            bad("plan", "empty")
        elif rules is not None:
            plan = rules.plans.get(rec["plan"])
            if plan is None:
                bad("plan", f"unknown plan {rec['plan']!r} (plans: {', '.join(sorted(rules.plans))})")
            elif currency in CURRENCY_DIGITS and plan.currency != currency:
                bad("currency", f"{currency} does not match plan {plan.name}'s currency {plan.currency}")
        try:
            effective = dt.date.fromisoformat(rec["plan_effective_from"])
        except ValueError:
            bad("plan_effective_from", f"{rec['plan_effective_from']!r} is not a date (YYYY-MM-DD)")
            effective = None
        if rec["payment_behavior"] not in PAYMENT_BEHAVIORS:
            bad("payment_behavior", f"{rec['payment_behavior']!r} is not one of {', '.join(PAYMENT_BEHAVIORS)}")
        if len(errors) > before:
            continue
        cid = rec["customer_id"]
        rec = {**rec, "currency": currency}   # 'USD' on one row and 'usd' on the next are one currency
        first = first_seen.setdefault(cid, {**rec, "line": line, "anchor": anchor})
        for field in ("name", "email", "currency", "payment_behavior"):
            if rec[field] != first[field]:
                bad(field, f"{rec[field]!r} differs from line {first['line']} ({first[field]!r}) for customer {cid}")
        if anchor != first["anchor"]:
            bad("billing_anchor_day", f"differs from line {first['line']} for customer {cid}")
        if (cid, effective) in seen_dates:
            bad("plan_effective_from", f"customer {cid} already has an assignment starting {effective} "
                f"(line {seen_dates[(cid, effective)]})")
        seen_dates.setdefault((cid, effective), line)
        rows.append({"customer_id": cid, "name": rec["name"], "email": rec["email"], "currency": currency,
                     "billing_anchor_day": anchor, "plan": rec["plan"], "plan_effective_from": effective,
                     "plan_effective_to": None, "payment_behavior": rec["payment_behavior"], "source_line": line})
    if errors:
        more = f"\n... and {len(errors) - MAX_ERRORS} more" if len(errors) > MAX_ERRORS else ""
        raise BadInputError(f"{len(errors)} problem(s) in the customer list:\n" + "\n".join(errors[:MAX_ERRORS]) + more)
    frame = pl.DataFrame(rows, schema=CUSTOMER_PLAN_SCHEMA)
    return with_effective_to(frame)


def with_effective_to(assignments: pl.DataFrame) -> pl.DataFrame:
    """Set each assignment's end to the customer's next plan change (null for the latest).

    A row that assigns the plan the customer is already on changes nothing, as in Stripe, whose
    subscription item stays the same: it is folded into the assignment before it. Kept as a second
    segment, it would restart the plan's `included` units and tiers mid-period (20,000 calls with
    10,000 included, split 10,000 / 10,000 by such a row, billed 0 instead of 10,000).
    """
    ordered = assignments.sort("customer_id", "plan_effective_from")
    repeated = pl.col("plan") == pl.col("plan").shift(1).over("customer_id")
    return (
        ordered.filter(~repeated.fill_null(False))
        .with_columns(plan_effective_to=pl.col("plan_effective_from").shift(-1).over("customer_id"))
        .select(list(CUSTOMER_PLAN_SCHEMA))
    )


def subscription_periods(start: dt.date, until: dt.date, anchor_day: int | None) -> list[tuple[dt.date, dt.date, int]]:
    """A customer's periods from its subscription start until `until`: (start, end, cycle_days).

    As in Stripe, the first period runs from the subscription start to the next anchor date when
    the start is not itself an anchor date; it is prorated over the whole anchor cycle it falls in
    (`cycle_days`). Every later period is a full anchor cycle.
    """
    out = []
    cycle_start, cycle_end = period_containing(start, anchor_day)
    out.append((start, cycle_end, (cycle_end - cycle_start).days))
    while cycle_end < until:
        cycle_start, cycle_end = period_containing(cycle_end, anchor_day)
        out.append((cycle_start, cycle_end, (cycle_end - cycle_start).days))
    return out


def periods_for_month(customers: pl.DataFrame, month: dt.date) -> pl.DataFrame:
    """customer_id, period_start, period_end, cycle_days of every period that starts in `month`.

    A customer's subscription starts at its first plan assignment. Each month holds one anchor
    date per customer; a first, partial period (start -> next anchor date) also starts in the
    month of the subscription start. Computed per distinct anchor day (at most 32) and joined:
    no per-customer Python.
    """
    cust = customers.group_by("customer_id").agg(
        pl.col("billing_anchor_day").first(), sub_start=pl.col("plan_effective_from").min()
    )
    anchors = sorted(cust["billing_anchor_day"].unique().to_list(), key=lambda a: -1 if a is None else a)
    m0, m1 = month_bounds(month)
    py, pm = _add_months(month.year, month.month, -1)
    rows = [(a, anchor_date(py, pm, a), *period_starting_in(month.year, month.month, a)) for a in anchors]
    table = pl.DataFrame(rows, orient="row", schema={"billing_anchor_day": pl.Int32, "a_prev": pl.Date,
                                                     "a_this": pl.Date, "a_next": pl.Date})
    both = cust.join(table, on="billing_anchor_day", how="left", nulls_equal=True)
    starts_here = (pl.col("sub_start") >= m0) & (pl.col("sub_start") < m1)
    days = lambda a, b: (pl.col(b) - pl.col(a)).dt.total_days()  # noqa: E731
    regular = both.filter(pl.col("a_this") >= pl.col("sub_start")).select(
        "customer_id", period_start=pl.col("a_this"), period_end=pl.col("a_next"), cycle_days=days("a_this", "a_next"))
    first_before = both.filter(starts_here & (pl.col("sub_start") < pl.col("a_this"))).select(
        "customer_id", period_start=pl.col("sub_start"), period_end=pl.col("a_this"), cycle_days=days("a_prev", "a_this"))
    first_after = both.filter(starts_here & (pl.col("sub_start") > pl.col("a_this"))).select(
        "customer_id", period_start=pl.col("sub_start"), period_end=pl.col("a_next"), cycle_days=days("a_this", "a_next"))
    return pl.concat([regular, first_before, first_after]).sort("customer_id", "period_start")


def billing_segments(assignments: pl.DataFrame, rules: Rules, month: dt.date) -> pl.DataFrame:
    """Segments of the periods starting in `month`: customer x period x (assignment ∩ plan version).

    One row per non-empty sub-interval with customer_id, period_start, period_end, segment_start,
    segment_end, plan, plan_version and cycle_days (what flat fees are prorated over).
    """
    periods = periods_for_month(assignments, month)
    far = dt.date(9999, 12, 31)
    seg = (
        periods.join(assignments.select("customer_id", "plan", "plan_effective_from", "plan_effective_to"),
                     on="customer_id", how="inner")
        .join(versions_frame(rules).select("plan", "plan_version", "version_from", "version_to"), on="plan", how="inner")
        .with_columns(
            segment_start=pl.max_horizontal("period_start", "plan_effective_from", "version_from"),
            segment_end=pl.min_horizontal("period_end", pl.col("plan_effective_to").fill_null(far),
                                          pl.col("version_to").fill_null(far)),
        )
        .filter(pl.col("segment_start") < pl.col("segment_end"))
    )
    return seg.select("customer_id", "period_start", "period_end", "segment_start", "segment_end", "plan",
                      "plan_version", "cycle_days").sort("customer_id", "segment_start")
