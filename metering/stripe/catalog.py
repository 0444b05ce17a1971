"""Keep Stripe's catalog in step with `rating_rules/`: meters, products and prices, customers and
subscriptions. Create what is missing, find what exists, never change what differs.

- **Meters**: one per our meter, `event_name = metering_<meter>`, pre-aggregated
  (`event_time_window` day by default, hour configurable), formula `sum` for our sum and count,
  `last` for max, last and unique_count (the push sends the period-to-date value).
- **Products / prices**: one product per plan; one price per plan version x charge that Stripe can
  express, found again by `lookup_key` (`metering:<plan>:<version>:<charge>`) and metadata:
  per_unit (`unit_amount_decimal` in minor units), graduated / volume tiers with flat amounts,
  package (`transform_quantity`), included quantity (a free first tier), flat fees (licensed
  monthly prices). Not expressible, reported as findings: minimums, charges filtered by a dimension
  (one Stripe meter carries all dimensions), included quantities on volume or package charges,
  fractional tier bounds. A price that exists but differs from our rules is reported as drift and
  left alone: Stripe prices are immutable, a new rule version gets new prices.
- **Customers / subscriptions**: looked up by `metadata[customer_id]`; created when missing only
  when asked (`create_customers`, the sandbox), with `billing_cycle_anchor_config[day_of_month]` from
  `billing_anchor_day` and an optional test clock (whose customers and subscriptions are then the
  ones listed: Stripe lists objects on a test clock only when asked). The subscription carries the
  prices of the plan version in force at its (backdated) start; none is created before the
  customer's first plan starts (`not_subscribed`). A live subscription our rules do not rate (its
  customer left the list, its plan is retired or has no version in force) is reported (`orphan`),
  never cancelled.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import duckdb
import polars as pl
import stripe

from metering import warehouse
from metering.customers import midnight_unix, period_containing
from metering.rules.meters import Meter
from metering.rules.model import Charge, PlanVersion, Rules, dec_str, minor_digits
from metering.rules.plans import stripe_lookup_key
from metering.stripe.keys import event_name
from metering.stripe.windows import WINDOW_KINDS, stripe_formula

log = logging.getLogger(__name__)

OUR_SUBSCRIPTIONS_SQL = "SELECT DISTINCT subscription_id FROM stripe_customer_map WHERE subscription_id IS NOT NULL"
"""Every Stripe subscription a sync of ours created or took, the latest and earlier ones: a Stripe
customer may hold others (another product's), whose invoices carry none of our usage."""


def our_subscriptions(con: duckdb.DuckDBPyConnection) -> set[str]:
    """`OUR_SUBSCRIPTIONS_SQL` as a set."""
    return {s for (s,) in con.execute(OUR_SUBSCRIPTIONS_SQL).fetchall()}


def parent_subscription(obj: Any) -> str | None:
    """The subscription an invoice (or a pending invoice item) belongs to, from its `parent` (None:
    none, such as a one-off invoice or an item for the customer's next invoice)."""
    parent = getattr(obj, "parent", None)
    details = getattr(parent, "subscription_details", None) if parent else None
    subscription = getattr(details, "subscription", None) if details else None
    return subscription if isinstance(subscription, str) or subscription is None else subscription.id


LATEST_CUSTOMER_MAP_SQL = (
    "SELECT * FROM stripe_customer_map WHERE synced_at = (SELECT max(synced_at) FROM stripe_customer_map)")
"""The latest sync's rows of `stripe_customer_map`, which also keeps earlier syncs' mappings
(`write_catalog`): what a reader that means "the map" must read (one row per customer)."""


def customer_map(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """Per customer of ours, the latest sync's Stripe customer, subscription (and the plan version it
    was created with) and test clock (`LATEST_CUSTOMER_MAP_SQL`); a customer the latest sync did not
    map is not in this map."""
    return warehouse.query_frame(
        con,
        "SELECT customer_id, stripe_customer_id, subscription_id, plan, plan_version, test_clock_id "
        f"FROM ({LATEST_CUSTOMER_MAP_SQL}) "
        "QUALIFY row_number() OVER (PARTITION BY customer_id ORDER BY synced_at DESC) = 1")


ROUNDING_DETAIL = ("a Stripe price has no rounding mode, and Stripe does not document how it rounds an amount that "
                   "falls exactly on half a minor unit (the sandbox rounds half up): such a line may differ from ours "
                   "by one minor unit, which reconciliation reports as within_tolerance (rounding)")
"""Why a price of a version that does not round half up is reported (finding `rounding`)."""

NOT_EXPRESSIBLE_PRICE_SQL = (
    "(plan || '|' || plan_version || '|' || charge) IN (SELECT our_key FROM stripe_catalog_findings "
    "WHERE finding = 'not_expressible' AND kind = 'price')")
"""Boolean SQL over rated_usage: the charge has no Stripe price (the last sync found it not expressible),
so the engine bills it as invoice items (metering.stripe.invoice_items)."""

MAX_MINOR_DECIMALS = 12


ENDED_SUBSCRIPTIONS = ("canceled", "incomplete_expired")
"""Stripe subscription statuses that end it for good: it bills nothing more."""

FINDINGS = ("drift", "not_expressible", "rounding", "not_subscribed", "orphan")
"""The kinds of catalog finding (`Finding.finding`). `not_subscribed`: a customer whose first plan
starts later gets no subscription yet (Stripe would bill the days before it), or a customer with no
live subscription of ours at Stripe that the sync may not create (Stripe bills it nothing). `orphan`: a live Stripe
subscription bills time our rules do not rate (its customer left our list, its plan has no version in
force, or the customer's first plan has not started); reported, never cancelled."""


@dataclass(frozen=True)
class Finding:
    finding: str            # drift | not_expressible | rounding | not_subscribed | orphan
    kind: str               # meter | price | subscription
    our_key: str
    stripe_id: str | None = None
    field: str | None = None
    ours: str | None = None
    theirs: str | None = None
    detail: str | None = None


@dataclass
class CatalogReport:
    meters: dict[str, str] = field(default_factory=dict)              # our meter -> mtr id
    meter_windows: dict[str, str | None] = field(default_factory=dict)  # our meter -> its event_time_window
    prices: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (plan, version, charge) -> price id
    created: dict[str, int] = field(default_factory=dict)
    found: dict[str, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    customers: list[dict[str, Any]] = field(default_factory=list)    # stripe_customer_map rows
    missing_customers: list[str] = field(default_factory=list)
    archived_prices: set[str] = field(default_factory=set)  # mapped price ids Stripe holds inactive
    inactive_meters: set[str] = field(default_factory=set)  # mapped meter ids Stripe holds deactivated

    def count(self, what: str, created: bool) -> None:
        target = self.created if created else self.found
        target[what] = target.get(what, 0) + 1

    def finding_counts(self) -> dict[str, int]:
        """How many findings of each kind (drift, not_expressible, rounding), zeros included."""
        return {kind: sum(1 for f in self.findings if f.finding == kind) for kind in FINDINGS}

    def summary(self) -> str:
        counts = self.finding_counts()
        return (f"stripe sync: created {dict(sorted(self.created.items()))}, found {dict(sorted(self.found.items()))}, "
                f"{counts['drift']} drift, {counts['not_expressible']} not expressible, {counts['rounding']} rounding, "
                f"{len(self.missing_customers)} customers missing in Stripe, "
                f"{counts['not_subscribed']} not yet subscribed, {counts['orphan']} orphan subscriptions")


# -- meters ---------------------------------------------------------------------------------------
def meter_params(meter: Meter, window_kind: str) -> dict[str, Any]:
    if window_kind not in WINDOW_KINDS:
        raise ValueError(f"window kind must be one of {WINDOW_KINDS}")
    return {
        "display_name": f"{meter.name} ({meter.unit})" if meter.unit else meter.name,
        "event_name": event_name(meter.name),
        "default_aggregation": {"formula": stripe_formula(meter)},
        "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
        "value_settings": {"event_payload_key": "value"},
        "event_time_window": window_kind,
    }


def sync_meters(client: stripe.StripeClient, meters: dict[str, Meter], window_kind: str,
                report: CatalogReport) -> None:
    listed = list(client.v1.billing.meters.list({"limit": 100}).auto_paging_iter())
    existing = {m.event_name: m for m in listed if m.status == "active"}
    # a deactivated meter keeps its event name: created again under the same idempotency key, Stripe
    # answered with that inactive meter (within 24 h), and the sync mapped it as if it were new
    inactive = {m.event_name: m for m in listed if m.status != "active" and m.event_name not in existing}
    for meter in meters.values():
        params = meter_params(meter, window_kind)
        found = existing.get(params["event_name"])
        if found is None and params["event_name"] in inactive:
            found = inactive[params["event_name"]]
            report.inactive_meters.add(found.id)
            report.findings.append(Finding("drift", "meter", meter.name, found.id, "status", "active", found.status,
                                           INACTIVE_METER_DETAIL))
        if found is None:
            created = client.v1.billing.meters.create(
                params, {"idempotency_key": f"metering-catalog:meter:{params['event_name']}:{window_kind}"})
            report.meters[meter.name] = created.id
            report.meter_windows[meter.name] = window_kind
            report.count("meter", True)
            continue
        report.meters[meter.name] = found.id
        report.meter_windows[meter.name] = getattr(found, "event_time_window", None)
        report.count("meter", False)
        for fld, ours, theirs in (
            ("default_aggregation.formula", params["default_aggregation"]["formula"], found.default_aggregation.formula),
            ("event_time_window", window_kind, getattr(found, "event_time_window", None)),
            ("customer_mapping.event_payload_key", "stripe_customer_id", found.customer_mapping.event_payload_key),
            ("value_settings.event_payload_key", "value", found.value_settings.event_payload_key),
        ):
            if ours != theirs:
                report.findings.append(Finding("drift", "meter", meter.name, found.id, fld, str(ours), str(theirs),
                                               "meters cannot be changed: create a new meter or fix the rules"))


# -- prices ---------------------------------------------------------------------------------------
class NotExpressible(Exception):
    pass


def lookup_key(version: PlanVersion, charge: Charge) -> str:
    """`metering:<plan>:<version>:<charge>`: unique per charge and at most 200 characters, which the
    rules validator ensures (no ':' in a version name; `metering.rules.plans.stripe_lookup_key`)."""
    return stripe_lookup_key(version.plan, version.version, charge.name)


def _minor(amount: Decimal, currency: str) -> str:
    """A major-unit amount as Stripe's `*_decimal` string in minor units (<= 12 decimals)."""
    value = amount * (Decimal(10) ** minor_digits(currency))
    text = dec_str(value)
    if "." in text and len(text.split(".")[1]) > MAX_MINOR_DECIMALS:
        raise NotExpressible(f"{amount} {currency} has more than {MAX_MINOR_DECIMALS} decimals in minor units")
    return text


def _int_bound(value: Decimal) -> int:
    if value != value.to_integral_value():
        raise NotExpressible(f"tier bound {value} is not a whole number (Stripe's up_to is an integer)")
    return int(value)


def price_params(version: PlanVersion, charge: Charge, meter_id: str | None) -> dict[str, Any]:
    """The `POST /v1/prices` parameters mirroring one charge, or raise `NotExpressible`."""
    cur = version.currency
    base: dict[str, Any] = {
        "currency": cur,
        "lookup_key": lookup_key(version, charge),
        "nickname": f"{version.plan} {version.version} {charge.name}",
        "metadata": {"plan": version.plan, "plan_version": version.version, "charge": charge.name,
                     "model": charge.model, "rules_hash": version.content_hash},
    }
    if charge.model == "minimum":
        raise NotExpressible("a minimum spend has no Stripe price: the engine rates the true-up and bills it as an invoice item "
                            "(metering stripe invoice-items)")
    if charge.model == "flat":
        return {**base, "unit_amount_decimal": _minor(charge.amount or Decimal(0), cur),
                "recurring": {"interval": "month", "usage_type": "licensed"}}
    if charge.filters:
        dims = ", ".join(f"{k} in {list(v)}" for k, v in charge.filters)
        raise NotExpressible(f"priced only for {dims}: one Stripe meter carries every dimension")
    if meter_id is None:
        raise NotExpressible(f"meter {charge.meter} has no Stripe meter")
    base["recurring"] = {"interval": "month", "usage_type": "metered", "meter": meter_id}
    included = charge.included or Decimal(0)
    if charge.model == "per_unit":
        if not included:
            return {**base, "unit_amount_decimal": _minor(charge.unit_amount or Decimal(0), cur)}
        return {**base, "billing_scheme": "tiered", "tiers_mode": "graduated", "tiers": [
            {"up_to": _int_bound(included), "unit_amount_decimal": "0"},
            {"up_to": "inf", "unit_amount_decimal": _minor(charge.unit_amount or Decimal(0), cur)},
        ]}
    if charge.model == "package":
        if included:
            raise NotExpressible("an included quantity cannot be combined with a package price (transform_quantity)")
        return {**base, "unit_amount_decimal": _minor(charge.package_amount or Decimal(0), cur),
                "transform_quantity": {"divide_by": _int_bound(charge.package_size or Decimal(1)),
                                       "round": charge.package_round}}
    if charge.model in ("graduated", "volume"):
        if included and charge.model == "volume":
            raise NotExpressible("an included quantity on a volume price changes which tier applies")
        if not included and charge.tiers and charge.tiers[0].flat_amount:
            # a quantity of 0 sits in Stripe's first tier, so Stripe would bill that tier's flat amount
            # for a period without usage, where we bill nothing: the engine's amount goes as an item
            raise NotExpressible("the first tier has a flat amount, which Stripe bills even for zero usage while the "
                                 "engine bills nothing for zero usage")
        tiers = []
        if included:
            tiers.append({"up_to": _int_bound(included), "unit_amount_decimal": "0"})
        for tier in charge.tiers:
            spec: dict[str, Any] = {
                "up_to": "inf" if tier.up_to is None else _int_bound(tier.up_to + included),
                "unit_amount_decimal": _minor(tier.unit_amount, cur),
            }
            if tier.flat_amount:
                spec["flat_amount_decimal"] = _minor(tier.flat_amount, cur)
            tiers.append(spec)
        return {**base, "billing_scheme": "tiered", "tiers_mode": charge.model, "tiers": tiers}
    raise NotExpressible(f"model {charge.model!r} has no Stripe equivalent")


def _norm_dec(value: Any) -> str | None:
    if value in (None, ""):
        return None
    return dec_str(Decimal(str(value)))


def price_drift(expected: dict[str, Any], price: Any) -> list[tuple[str, str, str]]:
    """(field, ours, theirs) for every difference between our price parameters and a Stripe price."""
    diffs: list[tuple[str, str, str]] = []
    price = price.to_dict() if hasattr(price, "to_dict") else price

    def cmp(name: str, ours: Any, theirs: Any) -> None:
        if ours != theirs:
            diffs.append((name, str(ours), str(theirs)))

    cmp("currency", expected["currency"], price.get("currency"))
    scheme = expected.get("billing_scheme", "per_unit")
    cmp("billing_scheme", scheme, price.get("billing_scheme"))
    rec = expected.get("recurring") or {}
    their_rec = price.get("recurring") or {}
    cmp("recurring.usage_type", rec.get("usage_type"), their_rec.get("usage_type") if their_rec else None)
    cmp("recurring.interval", rec.get("interval"), their_rec.get("interval") if their_rec else None)
    if rec.get("meter"):
        cmp("recurring.meter", rec.get("meter"), their_rec.get("meter") if their_rec else None)
    if scheme == "per_unit":
        cmp("unit_amount_decimal", _norm_dec(expected.get("unit_amount_decimal")), _norm_dec(price.get("unit_amount_decimal")))
        tq = expected.get("transform_quantity")
        their_tq = price.get("transform_quantity")
        cmp("transform_quantity",
            (tq["divide_by"], tq["round"]) if tq else None,
            (int(their_tq["divide_by"]), their_tq["round"]) if their_tq else None)
    else:
        cmp("tiers_mode", expected.get("tiers_mode"), price.get("tiers_mode"))
        ours = [(None if t["up_to"] == "inf" else int(t["up_to"]), _norm_dec(t.get("unit_amount_decimal")) or "0",
                 _norm_dec(t.get("flat_amount_decimal")) or "0") for t in expected["tiers"]]
        theirs_raw = price.get("tiers")
        if theirs_raw is not None:
            theirs = [(t.get("up_to"), _norm_dec(t.get("unit_amount_decimal") or t.get("unit_amount")) or "0",
                       _norm_dec(t.get("flat_amount_decimal") or t.get("flat_amount")) or "0") for t in theirs_raw]
            cmp("tiers", ours, theirs)
    return diffs


def sync_prices(client: stripe.StripeClient, rules: Rules, report: CatalogReport) -> None:
    products = {_metadata(p)["plan"]: p for p in client.v1.products.list({"limit": 100}).auto_paging_iter()
                if _metadata(p).get("plan")}
    existing = {p.lookup_key: p for p in client.v1.prices.list(
        {"limit": 100, "expand": ["data.tiers"]}).auto_paging_iter() if p.lookup_key}
    for version in rules.all_versions:
        product = products.get(version.plan)
        if product is None:
            plan = rules.plans[version.plan]
            product = client.v1.products.create(
                {"name": f"{plan.name}", "metadata": {"plan": plan.name}},
                {"idempotency_key": f"metering-catalog:product:{plan.name}"})
            products[version.plan] = product
            report.count("product", True)
        for charge in version.charges:
            key = (version.plan, version.version, charge.name)
            our_key = "|".join(key)
            meter_id = report.meters.get(charge.meter) if charge.meter else None
            try:
                params = price_params(version, charge, meter_id)
            except NotExpressible as exc:
                kept = existing.get(lookup_key(version, charge))
                if kept is not None:
                    # a price an earlier sync created (before the rule that refuses it): subscriptions
                    # carry it, so Stripe bills the charge; billing it as items too would bill it twice.
                    # New subscriptions of the version get it too: one rule bills the whole version
                    report.prices[key] = kept.id
                    report.count("price", False)
                    report.findings.append(Finding(
                        "drift", "price", our_key, kept.id, "expressible", "no", "a price exists",
                        f"kept for every subscription of this version, and Stripe bills the charge its own way, "
                        f"which reconciliation reports where it differs: {exc}; a new plan version bills it as "
                        f"invoice items"))
                    if getattr(kept, "active", True) is False:   # as for a price found archived, below
                        report.archived_prices.add(kept.id)
                        report.findings.append(Finding(
                            "drift", "price", our_key, kept.id, "active", "true", "false", ARCHIVED_DETAIL))
                else:
                    report.findings.append(Finding("not_expressible", "price", our_key, detail=str(exc)))
                continue
            if version.rounding != "half_up":
                report.findings.append(Finding("rounding", "price", our_key, None, "rounding", version.rounding,
                                               "not settable", ROUNDING_DETAIL))
            found = existing.get(params["lookup_key"])
            if found is None and meter_id in report.inactive_meters:
                report.findings.append(Finding("drift", "price", our_key, None, "recurring.meter", meter_id,
                                               "inactive", INACTIVE_METER_DETAIL))
                continue
            if found is not None:
                report.prices[key] = found.id
                report.count("price", False)
                for fld, ours, theirs in price_drift(params, found):
                    report.findings.append(Finding(
                        "drift", "price", our_key, found.id, fld, ours, theirs,
                        "left unchanged (prices are immutable): publish a new plan version"))
                if getattr(found, "active", True) is False:
                    # still ours (the subscriptions that carry it go on billing it), but Stripe refuses
                    # an archived price on a new subscription: one with it failed the whole sync
                    report.archived_prices.add(found.id)
                    report.findings.append(Finding(
                        "drift", "price", our_key, found.id, "active", "true", "false", ARCHIVED_DETAIL))
                continue
            created = client.v1.prices.create(
                {**params, "product": product.id},
                {"idempotency_key": f"metering-catalog:price:{params['lookup_key']}:{version.content_hash[:16]}"[:255]})
            report.prices[key] = created.id
            report.count("price", True)


# -- customers and subscriptions -------------------------------------------------------------------
def billing_cycle_anchor(start: dt.datetime, anchor_day: int | None) -> int | None:
    """The first billing-anchor instant (UTC midnight) strictly after `start`, or None if `start` is one.

    `anchor_day` beyond a month's length means that month's last day; None = the 1st.
    """
    first_day, next_day = period_containing(start.date(), anchor_day)
    if start == dt.datetime.combine(first_day, dt.time(), tzinfo=dt.timezone.utc):
        return None
    return midnight_unix(next_day)


def period_start_at(now: dt.datetime, anchor_day: int | None) -> dt.datetime:
    """The UTC midnight our billing period holding `now` starts."""
    return dt.datetime.fromtimestamp(midnight_unix(period_containing(now.date(), anchor_day)[0]), tz=dt.timezone.utc)


def proration_behavior(start: dt.datetime, period_start: dt.datetime, previous_end: dt.datetime | None) -> str:
    """How a new subscription starting at `start` is created: Stripe charges its first period up to the
    anchor (backdated time included) prorated, as we rate it (`create_prorations`), unless that time is
    paid already: a subscription canceled inside our period (at `previous_end`, where the new one
    starts) had billed the period's fee in advance, and a cancellation credits nothing. Then `none`:
    "doesn't charge the customer for backdated time" (docs.stripe.com/billing/subscriptions/backdating);
    with `create_prorations` the rest of the period's fee was billed twice (Oct 10 - 31: 1348 on top
    of October's 1900)."""
    paid_ahead = previous_end is not None and start == previous_end and start > period_start
    return "none" if paid_ahead else "create_prorations"


def subscription_start(now: dt.datetime, plan_day: dt.date | None, anchor_day: int | None,
                       previous_end: dt.datetime | None = None) -> dt.datetime:
    """When a subscription created at `now` starts: the UTC midnight our billing period starts,
    not the instant of the sync.

    Our periods are UTC days; a subscription created at 14:00 gives Stripe a period starting at 14:00,
    before which Stripe bills none of the day's usage (the push dates a day's event at its first
    second). So it is backdated to the start of our period holding `now`, but never before:
    - the first day of the plan assignment in force (`plan_day`): the subscription carries that
      plan's prices, which must not price the time of an earlier plan;
    - the end of the customer's previous subscription (`previous_end`), which billed its own time:
      backdated over it, the period's fee and usage would be billed twice;
    - the period's start: a customer synced months late is not billed the months before (the push
      cannot send usage over 35 days old either).
    A start after `now` (a plan day still to come) leaves `now`.
    """
    start = period_start_at(now, anchor_day)
    if plan_day is not None:
        start = max(start, dt.datetime.fromtimestamp(midnight_unix(plan_day), tz=dt.timezone.utc))
    if previous_end is not None:
        start = max(start, previous_end)
    return min(start, now)


def _current_assignments(customers: pl.DataFrame, on: dt.date) -> pl.DataFrame:
    """One row per customer: the plan assignment in force on `on` (else its first one)."""
    frame = customers.with_columns(pl.col("plan_effective_from").cast(pl.Date))
    in_force = frame.filter(pl.col("plan_effective_from") <= on).sort("plan_effective_from").group_by(
        "customer_id", maintain_order=True).last()
    missing = frame.join(in_force.select("customer_id"), on="customer_id", how="anti").sort(
        "plan_effective_from").group_by("customer_id", maintain_order=True).first()
    return pl.concat([in_force, missing.select(in_force.columns)]).sort("customer_id")


def sync_customers(
    client: stripe.StripeClient,
    rules: Rules,
    customers: pl.DataFrame,
    report: CatalogReport,
    *,
    create: bool,
    test_clock: str | None = None,
    sandbox_payment_behavior: bool = False,
    subscriptions: bool = True,
) -> None:
    """Find (or create) each customer and its subscription; fill `report.customers`."""
    clock_now = None
    if test_clock:
        clock_now = dt.datetime.fromtimestamp(int(client.v1.test_helpers.test_clocks.retrieve(test_clock).frozen_time),
                                              tz=dt.timezone.utc)
    now = clock_now or dt.datetime.now(dt.timezone.utc)
    # On a test clock, list that clock's customers and subscriptions: Stripe leaves objects on test
    # clocks out of both lists unless `test_clock` is set ("The response will not include customers
    # with test clocks if this parameter is not set"; subscriptions: "... if this and the customer
    # parameter is not set"). Listed without it, a second sync on the clock found none of its own and
    # created a second customer and subscription (the fee billed twice). Without a clock, the lists
    # hold the objects on no clock, as the sync creates them then
    scope: dict[str, Any] = {"test_clock": test_clock} if test_clock else {}
    found_customers: dict[str, Any] = {}
    all_ours: list[tuple[str, Any]] = []   # every Stripe customer with our metadata (duplicates too)
    for cus in client.v1.customers.list({"limit": 100, **scope}).auto_paging_iter():
        ours = _metadata(cus).get("customer_id")
        if ours:
            all_ours.append((ours, cus))
        if ours and ours not in found_customers:
            found_customers[ours] = cus
    existing_subs: dict[str, Any] = {}
    live_subs: dict[str, list[Any]] = {}   # per Stripe customer, every subscription not ended
    ended: dict[str, int] = {}   # per Stripe customer, subscriptions that have ended
    last_end: dict[str, int] = {}   # per Stripe customer, when the latest of them ended (Unix seconds)
    for sub in client.v1.subscriptions.list({"limit": 100, "status": "all", **scope}).auto_paging_iter():
        if sub.status in ENDED_SUBSCRIPTIONS:
            ended[sub.customer] = ended.get(sub.customer, 0) + 1
            end = getattr(sub, "ended_at", None) or getattr(sub, "canceled_at", None)
            # an incomplete_expired one billed nothing (its first invoice is voided): its time is free
            if end and sub.status == "canceled":
                last_end[sub.customer] = max(last_end.get(sub.customer, 0), int(end))
            continue
        live_subs.setdefault(sub.customer, []).append(sub)
        # ours: our metadata, or our prices' lookup keys; a subscription to another product of the
        # account (support, say) bills none of our usage or fees, and is never taken for ours
        if _carried_version(sub) != (None, None):
            existing_subs.setdefault(sub.customer, sub)
    assignments = _current_assignments(customers, now.date())
    for row in assignments.iter_rows(named=True):
        cid = str(row["customer_id"])
        anchor_day = int(row["billing_anchor_day"]) if row.get("billing_anchor_day") not in (None, "") else None
        cus = found_customers.get(cid)
        if cus is None:
            if not create:
                report.missing_customers.append(cid)
                continue
            metadata = {"customer_id": cid}
            if sandbox_payment_behavior and row.get("payment_behavior"):
                metadata["payment_behavior"] = str(row["payment_behavior"])
            params: dict[str, Any] = {"metadata": metadata}
            for name in ("name", "email"):
                if row.get(name):
                    params[name] = str(row[name])
            if test_clock:
                params["test_clock"] = test_clock
            cus = client.v1.customers.create(params, {"idempotency_key": f"metering-catalog:customer:{cid}:{test_clock or ''}"[:255]})
            report.count("customer", True)
        else:
            report.count("customer", False)
        # the version in force today (or on the first day of a plan still to come): what the
        # subscription should bill now (findings compare with it)
        plan_day = row["plan_effective_from"]
        on = max(now.date(), plan_day)
        version = rules.plans[row["plan"]].version_at(on) if row["plan"] in rules.plans else None
        sub = existing_subs.get(cus.id)
        if sub is None and create and subscriptions and plan_day > now.date():
            # the customer's first plan starts later: subscribed now, Stripe would bill the days before
            # it (from the sync's instant, prorated), which we do not rate ("days before a customer's
            # first assignment are not billed"). Not created yet: a sync on or after that day creates
            # it, backdated to that day's midnight (Stripe cannot start one in the future without a
            # subscription schedule)
            report.findings.append(Finding(
                "not_subscribed", "subscription", cid, None, "plan", f"{row['plan']} from {plan_day}", None,
                f"not yet subscribed: the plan starts {plan_day}; a sync on or after that day subscribes it"))
        elif sub is None and create and subscriptions and version is not None:
            ended_at = dt.datetime.fromtimestamp(last_end[cus.id], dt.timezone.utc) if cus.id in last_end else None
            start = subscription_start(now, row["plan_effective_from"], anchor_day, ended_at)
            # the prices of the version in force at the (backdated) start, not today's: backdated to
            # Oct 1 with pro 2026-10's prices (in force from Oct 15), Stripe billed Oct 1 - 14 at them,
            # unreported. A later version in force today is then reported as not switched, as for an
            # older subscription. A start before the plan's first version (a plan starting mid-period)
            # waits for that version: no price covers the time before it
            carried = rules.plans[version.plan].version_at(start.date())
            if carried is None:
                carried = version
                start = min(max(start, dt.datetime.fromtimestamp(midnight_unix(version.effective_from),
                                                                 tz=dt.timezone.utc)), now)
            priced = [c for c in carried.charges if (carried.plan, carried.version, c.name) in report.prices]
            items = [{"price": report.prices[(carried.plan, carried.version, c.name)]} for c in priced]
            if not items:
                # Stripe refuses a subscription without items: one request failed the whole sync
                report.findings.append(Finding(
                    "not_subscribed", "subscription", cid, None, "plan", f"{carried.plan} {carried.version}", None,
                    "not subscribed: no charge of the version has a Stripe price (Stripe refuses a subscription "
                    "without items); its charges are billed as invoice items, which need a live subscription"))
                report.customers.append(_customer_row(cid, cus, None, carried.plan, carried.version, anchor_day))
                continue
            archived = sorted(i["price"] for i in items if i["price"] in report.archived_prices)
            if archived:
                report.findings.append(Finding(
                    "not_subscribed", "subscription", cid, None, "plan", f"{carried.plan} {carried.version}", None,
                    f"not subscribed: Stripe refuses archived prices on a new subscription ({', '.join(archived)}); "
                    f"Stripe bills none of its usage or fees until the prices are reactivated in Stripe"))
                report.customers.append(_customer_row(cid, cus, None, carried.plan, carried.version, anchor_day))
                continue
            for item, charge in zip(items, priced):
                if charge.model == "flat":
                    item["quantity"] = 1
            sub_params: dict[str, Any] = {
                "customer": cus.id,
                "items": items,
                "metadata": {"customer_id": cid, "plan": carried.plan, "plan_version": carried.version},
            }
            sub_params["proration_behavior"] = proration_behavior(start, period_start_at(now, anchor_day), ended_at)
            if start < now:
                sub_params["backdate_start_date"] = int(start.timestamp())
            # Always the next anchor after now, never left to Stripe: a backdated subscription with no
            # anchor is anchored at its creation (14:00 on the 15th, every month after)
            if anchor_day is not None:
                # the day itself, not the first anchor instant: an anchor on the 31st first met in
                # September falls on the 30th, and Stripe would keep the 30th for every later period
                # at midnight UTC, as our periods start: the time of day is said, not left to a default
                # (the spec does not give one; creation's time of day would put every period off ours)
                sub_params["billing_cycle_anchor_config"] = {"day_of_month": anchor_day, "hour": 0, "minute": 0,
                                                             "second": 0}
            elif (anchor := billing_cycle_anchor(now, anchor_day)) is not None:
                sub_params["billing_cycle_anchor"] = anchor
            # a customer whose subscription ended gets a new one: another request, so another key
            sub = client.v1.subscriptions.create(
                sub_params, {"idempotency_key": f"metering-catalog:subscription:{cus.id}:{ended.get(cus.id, 0)}"})
            report.count("subscription", True)
        elif sub is not None:
            report.count("subscription", False)
        elif subscriptions and version is not None and plan_day <= now.date():
            # nothing at Stripe bills this customer's usage or fees, and the sync may not create it
            others = [other.id for other in live_subs.get(cus.id, [])]
            report.findings.append(Finding(
                "not_subscribed", "subscription", cid, others[0] if others else None, "plan",
                f"{version.plan} {version.version}", None,
                f"no live Stripe subscription of ours (Stripe customer {cus.id}"
                + (f"; its live subscription(s) {', '.join(others)} carry none of our prices" if others else "")
                + "): Stripe bills none of its usage or fees; create the subscription (or sync with "
                  "--create-customers in test mode)"))
        # the plan version the subscription carries (its prices), which is not the one in force today
        # once a later version has started: the sync never switches a subscription's prices. A
        # subscription without our metadata (not created by this sync) has an unknown one: NULL
        subscribed = getattr(sub, "metadata", None) if sub is not None else None
        if sub is not None and plan_day > now.date():
            carried = _carried_version(sub)
            report.findings.append(Finding(
                "orphan", "subscription", cid, sub.id, "plan", f"{row['plan']} from {plan_day}",
                f"{carried[0]} {carried[1]}" if carried[0] else None,
                f"a live Stripe subscription before the customer's first plan starts: Stripe bills the days before "
                f"{plan_day}, which we do not rate (days before a customer's first assignment are not billed); "
                f"{_LEFT_AS_IS}"))
        if sub is not None:
            _report_unrated_time(report, rules, cid, sub, row["plan"], on, version)
            # (a subscription made before the plan starts is an orphan above, whatever its anchor)
            if plan_day <= now.date() and (theirs := _other_anchor_day(sub, anchor_day)) is not None:
                report.findings.append(Finding(
                    "drift", "subscription", cid, sub.id, "billing_anchor_day", str(anchor_day or 1), str(theirs),
                    f"the subscription bills from day {theirs} of each month, where the customer list anchors its "
                    f"periods on day {anchor_day or 1}: every period differs from ours (our usage between the two "
                    f"days is in another Stripe period); {_LEFT_AS_IS}"))
        if sub is not None and version is not None:
            # changes after the plan's first day only, for a plan still to come (its own start is above)
            _report_unswitched_changes(report, customers, rules, cid, version, on, _carried_version(sub), row)
        report.customers.append(_customer_row(
            cid, cus, sub,
            getattr(subscribed, "plan", None) if sub is not None else (version.plan if version else row["plan"]),
            getattr(subscribed, "plan_version", None) if sub is not None else (version.version if version else None),
            anchor_day))
    # Stripe customers of ours the map does not name (no longer in the customer list, or a duplicate
    # carrying the same metadata[customer_id]): their live subscriptions go on billing
    listed = set(customers["customer_id"].cast(pl.String).to_list())
    mapped = {c["customer_id"]: c["stripe_customer_id"] for c in report.customers}
    mapped_subs = {c["stripe_customer_id"]: c["subscription_id"] for c in report.customers}
    for ours, cus in all_ours:
        if mapped.get(ours) == cus.id:
            # a second live subscription of ours on the mapped customer bills the fee and usage again,
            # on invoices that are not ours (OUR_SUBSCRIPTIONS_SQL): reconciliation never sees them
            for extra in live_subs.get(cus.id, []):
                carried = _carried_version(extra)
                if extra.id != mapped_subs.get(cus.id) and carried != (None, None):
                    report.findings.append(Finding(
                        "orphan", "subscription", ours, extra.id, "subscription_id",
                        f"mapped to {mapped_subs.get(cus.id)}", f"{carried[0]} {carried[1]}",
                        f"a second live subscription of ours for Stripe customer {cus.id} (its status: "
                        f"{extra.status}): it bills what the mapped one bills, again; {_LEFT_AS_IS}"))
            continue
        why = ("is not in our customer list" if ours not in listed
               else f"is not the Stripe customer {ours} is mapped to ({mapped[ours]}): a duplicate" if ours in mapped
               else "has no plan in force")
        for gone in live_subs.get(cus.id, []):
            carried = _carried_version(gone)
            if carried == (None, None):   # another product's (support, say): never ours, as above
                continue
            report.findings.append(Finding(
                "orphan", "subscription", ours, gone.id, "customer_id",
                "not in the customer list" if ours not in listed else f"mapped to {mapped.get(ours)}",
                f"{carried[0]} {carried[1]}" if carried[0] else None,
                f"Stripe customer {cus.id} ({ours}) {why}, and its live subscription goes on billing (its status: "
                f"{gone.status}), which we do not rate; {_LEFT_AS_IS}"))


def _other_anchor_day(sub: Any, anchor_day: int | None) -> int | None:
    """The day of month a live subscription bills from when it is not the customer list's anchor (None:
    the same). A list whose anchor changed after the subscription was made was accepted silently: Stripe
    kept billing from the old day while rating moved, and usage between the two days was in no rated
    period (audit). An anchor instant bills on its own day of month for good (Sep 30 bills on the 30th,
    not on a list's 31st), so its day must be the list's, short months or not: clamped to the month,
    a Sep 30 instant passed for anchor 31 while Stripe billed Oct 30 - Nov 30 (audit)."""
    config = getattr(sub, "billing_cycle_anchor_config", None)
    stamp = getattr(sub, "billing_cycle_anchor", None)
    day = int(config.day_of_month) if config is not None and getattr(config, "day_of_month", None) else (
        dt.datetime.fromtimestamp(int(stamp), dt.timezone.utc).day if stamp else None)
    return None if day is None or day == (anchor_day or 1) else day


def _customer_row(cid: str, cus: Any, sub: Any, plan: str | None, plan_version: str | None,
                  anchor_day: int | None) -> dict[str, Any]:
    """A `stripe_customer_map` row."""
    return {"customer_id": cid, "stripe_customer_id": cus.id, "subscription_id": sub.id if sub is not None else None,
            "test_clock_id": _id_of(getattr(cus, "test_clock", None)), "plan": plan, "plan_version": plan_version,
            "billing_anchor_day": anchor_day}


INACTIVE_METER_DETAIL = ("deactivated in Stripe: it accepts no meter events (pushes to it fail) and attaches to no new "
                         "price; reactivate it in Stripe (the sync creates no second meter for the event name, and "
                         "changes none)")

ARCHIVED_DETAIL = ("archived in Stripe: the subscriptions that carry it go on billing it, but Stripe refuses it on a "
                   "new subscription, so the sync subscribes no new customer to this version; reactivate it in "
                   "Stripe (the sync changes no price) or publish a new plan version")

_LEFT_AS_IS = "the sync changes and cancels nothing at Stripe: cancel or fix the subscription there, or the rules"

_NOT_SWITCHED = "not switched on the Stripe subscription (needs a subscription schedule); Stripe keeps the current prices"


def _report_unrated_time(report: CatalogReport, rules: Rules, cid: str, sub: Any, plan_name: str, on: dt.date,
                         version: PlanVersion | None) -> None:
    """A live subscription that bills time no plan version prices (I14: reported, nothing corrected):
    the customer's plan is retired (its last version ends, `effective_to`), reported before the end
    as after it, with the same `ours`, as the not-switched changes are; or the plan has no version in
    force on `on` for another reason (not in the rules, not started)."""
    carried = _carried_version(sub)
    theirs = f"{carried[0]} {carried[1]}" if carried[0] else None
    plan = rules.plans.get(plan_name)
    retired_on = plan.versions[-1].effective_to if plan is not None and plan.versions else None
    if retired_on is not None:
        when = (f"in force: no version of {plan_name} is in force since {retired_on}" if on >= retired_on
                else f"the plan is retired from {retired_on} (its last version ends)")
        report.findings.append(Finding(
            "orphan", "subscription", cid, sub.id, "plan", f"{plan_name} ends {retired_on}", theirs,
            f"{when}: Stripe keeps billing the subscription after it, time we do not rate; {_LEFT_AS_IS}"))
    elif version is None:
        report.findings.append(Finding(
            "orphan", "subscription", cid, sub.id, "plan", f"{plan_name}: no version in force on {on}", theirs,
            f"Stripe bills the live subscription for time we do not rate; {_LEFT_AS_IS}"))


def _carried_version(sub: Any) -> tuple[str | None, str | None]:
    """(plan, plan version) a subscription bills: its metadata (the sync writes it), else its items'
    prices' lookup keys (`metering:<plan>:<version>:<charge>`), else (None, None)."""
    meta = _metadata(sub)
    if meta.get("plan") and meta.get("plan_version"):
        return meta["plan"], meta["plan_version"]
    try:
        items = sub["items"].data or []   # `sub.items` is the mapping method of the SDK's objects
    except (KeyError, AttributeError, TypeError):
        items = []
    for item in items:
        key = getattr(getattr(item, "price", None), "lookup_key", None)
        parts = key.split(":", 3) if isinstance(key, str) else []
        if len(parts) == 4 and parts[0] == "metering":
            return parts[1], parts[2]
    return None, None


def _report_unswitched_changes(report: CatalogReport, customers: pl.DataFrame, rules: Rules, cid: str,
                               version: PlanVersion, today: dt.date, carried: tuple[str | None, str | None],
                               assignment: dict) -> None:
    """A plan assignment or plan version other than the subscription's is not switched on the Stripe
    subscription (that needs a subscription schedule): report it, so finance knows Stripe keeps billing
    the subscription's prices. A later one is reported before it starts; once it is in force, it is
    still reported (with the same `ours`), for as long as the subscription carries another version: the
    finding once vanished on the day the change took effect, while Stripe went on billing the old prices."""
    later = customers.filter((pl.col("customer_id") == cid) & (pl.col("plan_effective_from").cast(pl.Date) > today))
    changes = [(str(r["plan"]), r["plan_effective_from"]) for r in later.iter_rows(named=True)]
    plan = rules.plans.get(version.plan)
    if plan is not None:
        changes += [(f"{v.plan} {v.version}", v.effective_from) for v in plan.versions if v.effective_from > today]
    if carried[0] is None or carried[1] is None:   # neither our metadata nor our prices: what it bills is unknown
        carried = (version.plan, version.version)
    theirs = f"{carried[0]} {carried[1]}"
    for what, when in changes:
        report.findings.append(Finding("not_expressible", "subscription", cid, None, "plan", f"{what} from {when}",
                                       theirs, _NOT_SWITCHED))
    if carried != (version.plan, version.version):
        # in force today: the later of the assignment's start and the version's (the key a future change had)
        assigned = assignment["plan_effective_from"]
        if carried[0] != version.plan:
            what, when = str(assignment["plan"]), assigned
        else:
            what, when = f"{version.plan} {version.version}", version.effective_from
        report.findings.append(Finding("not_expressible", "subscription", cid, None, "plan", f"{what} from {when}",
                                       theirs, f"in force, {_NOT_SWITCHED}"))


def _metadata(obj: Any) -> dict[str, str]:
    """A Stripe object's metadata as a plain dict (SDK objects are not dicts)."""
    meta = getattr(obj, "metadata", None)
    if meta is None:
        return {}
    return meta.to_dict() if hasattr(meta, "to_dict") else dict(meta)


def _id_of(value: Any) -> str | None:
    """An expandable field's id, whether it came back as an id string or an object."""
    if value is None or isinstance(value, str):
        return value
    return value.id


# -- the whole sync -------------------------------------------------------------------------------
def sync_catalog(
    con: duckdb.DuckDBPyConnection,
    client: stripe.StripeClient,
    rules: Rules,
    customers: pl.DataFrame | None,
    *,
    window_kind: str = "day",
    create_customers: bool = False,
    test_clock: str | None = None,
    sandbox_payment_behavior: bool = False,
    subscriptions: bool = True,
) -> CatalogReport:
    """Sync meters, prices and (when a customer list is given) customers; replace the map tables."""
    report = CatalogReport()
    sync_meters(client, rules.meters, window_kind, report)
    sync_prices(client, rules, report)
    if customers is not None and not customers.is_empty():
        sync_customers(client, rules, customers, report, create=create_customers, test_clock=test_clock,
                       sandbox_payment_behavior=sandbox_payment_behavior, subscriptions=subscriptions)
    write_catalog(con, report)
    for f in report.findings:
        log.warning("stripe catalog %s: %s %s %s %s", f.finding, f.kind, f.our_key, f.field or "", f.detail or "")
    log.info(report.summary())
    return report


def write_catalog(con: duckdb.DuckDBPyConnection, report: CatalogReport) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    objects = [{"kind": "meter", "our_key": k, "stripe_id": v,
                "details": json.dumps({"event_time_window": report.meter_windows.get(k)})}
               for k, v in report.meters.items()]
    objects += [{"kind": "price", "our_key": "|".join(k), "stripe_id": v, "details": None} for k, v in report.prices.items()]
    for c in report.customers:
        objects.append({"kind": "customer", "our_key": c["customer_id"], "stripe_id": c["stripe_customer_id"],
                        "details": json.dumps({"plan": c["plan"], "plan_version": c["plan_version"]})})
        if c["subscription_id"]:
            objects.append({"kind": "subscription", "our_key": c["customer_id"], "stripe_id": c["subscription_id"],
                            "details": None})
    obj_frame = pl.DataFrame(objects, schema={"kind": pl.String, "our_key": pl.String, "stripe_id": pl.String,
                                              "details": pl.String}).with_columns(synced_at=pl.lit(now))
    cmap = pl.DataFrame(report.customers, schema={
        "customer_id": pl.String, "stripe_customer_id": pl.String, "subscription_id": pl.String,
        "test_clock_id": pl.String, "plan": pl.String, "plan_version": pl.String, "billing_anchor_day": pl.Int32,
    }).with_columns(synced_at=pl.lit(now))
    findings = pl.DataFrame([f.__dict__ for f in report.findings], schema={
        "finding": pl.String, "kind": pl.String, "our_key": pl.String, "stripe_id": pl.String, "field": pl.String,
        "ours": pl.String, "theirs": pl.String, "detail": pl.String}).with_columns(synced_at=pl.lit(now))
    with warehouse.transaction(con):
        kinds = ["meter", "price"] + (["customer", "subscription"] if report.customers else [])
        warehouse.replace_rows(con, "stripe_objects", "kind IN (SELECT unnest(?::VARCHAR[]))", [kinds], obj_frame,
                               in_transaction=True)
        if report.customers:
            # earlier syncs' mappings stay: a subscription that has ended is still ours, and its invoices
            # (the draft that closes its last period) still are (OUR_SUBSCRIPTIONS_SQL); a mapping this
            # sync makes again replaces its earlier row, so the table holds one row per mapping ever made
            made = [[c["customer_id"], c["stripe_customer_id"], c["subscription_id"] or ""] for c in report.customers]
            warehouse.replace_rows(
                con, "stripe_customer_map",
                "[customer_id, stripe_customer_id, coalesce(subscription_id, '')] IN (SELECT unnest(?::VARCHAR[][]))",
                [made], cmap, in_transaction=True)
        warehouse.replace_rows(con, "stripe_catalog_findings", "TRUE", [], findings, in_transaction=True)
