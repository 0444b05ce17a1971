"""The billing engine: period ends -> draft invoices -> finalization after the grace period ->
payment attempts and automatic retries, all in time order on the customer's clock.

Metered lines are priced with the price's own tier arithmetic (``tiers.py``) from the meter's
aggregation (``meters_api.usage``). Licensed items are charged in advance for the coming period
(prorated by time for a first period shortened by a billing anchor). Pending invoice items
(``invoiceitems_api``) join the next invoice drafted for their customer.
"""

from __future__ import annotations

from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Any

from . import meters_api, tiers
from .api import decimal_string
from .apierrors import StripeAPIError
from .periods import anchor_day, next_boundary, previous_boundary
from .store import RENDERERS, State, new_id

INCOMPLETE_EXPIRY = 23 * 3600
"""Stripe (subscription.status): "If the first invoice is not paid within 23 hours, the subscription
transitions to incomplete_expired." Counted from the subscription's creation on its clock."""
ENDED_STATUSES = ("canceled", "incomplete_expired")
DEFAULT_DAYS_UNTIL_DUE = 30
MINIMUM_CHARGE = {
    "usd": 50, "aed": 200, "aud": 50, "bgn": 100, "brl": 50, "cad": 50, "chf": 50, "czk": 1500, "dkk": 250,
    "eur": 50, "gbp": 30, "hkd": 400, "huf": 17500, "inr": 50, "jpy": 50, "mxn": 1000, "myr": 200, "nok": 300,
    "nzd": 50, "pln": 200, "ron": 200, "sek": 300, "sgd": 50, "thb": 1000,
}
"""Stripe's minimum charge per currency, in minor units (docs.stripe.com/currencies, "Minimum and maximum
charge amounts"); an invoice whose amount due is below it is marked paid and the amount carried to the
customer's balance (spec, invoice). Other currencies: none. `SandboxConfig.minimum_charge` replaces it."""


# -- prices ---------------------------------------------------------------------------------------
def price_for_math(price: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in price.items() if not k.startswith("_")}
    if price.get("_tiers") is not None:
        body["tiers"] = price["_tiers"]
    return body


def item_interval(state: State, item: dict[str, Any]) -> tuple[str, int]:
    recurring = state.get("price", item["_price"])["recurring"]
    return recurring["interval"], recurring["interval_count"]


# -- invoices -------------------------------------------------------------------------------------
def _line(
    state: State,
    invoice: dict[str, Any],
    sub: dict[str, Any],
    item: dict[str, Any],
    quantity: Decimal,
    amount: int,
    start: int,
    end: int,
    proration: bool = False,
) -> dict[str, Any]:
    price = state.get("price", item["_price"])
    product = state.get("product", price["product"]) or {"name": price["product"]}
    unit = price.get("unit_amount_decimal") if price["billing_scheme"] == "per_unit" else None
    return {
        "id": new_id("il_", 24),
        "object": "line_item",
        "amount": amount,
        "currency": price["currency"],
        "description": f"{decimal_string(quantity)} × {product['name']}",
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "invoice": invoice["id"],
        "livemode": False,
        # spec, line_item.metadata: "for line items with type=subscription, metadata reflects the current
        # metadata from the subscription associated with the line item"
        "metadata": dict(sub.get("metadata") or {}),
        "parent": {
            "type": "subscription_item_details",
            "invoice_item_details": None,
            "subscription_item_details": {
                "invoice_item": None,
                "proration": proration,
                "proration_details": {"credited_items": None},
                "subscription": sub["id"],
                "subscription_item": item["id"],
            },
        },
        # Stripe documents a line's period end as inclusive: the last second of the period.
        "period": {"start": start, "end": max(start, end - 1)},
        "pretax_credit_amounts": [],
        "pricing": {
            "type": "price_details",
            "price_details": {"price": price["id"], "product": price["product"]},
            "unit_amount_decimal": unit,
        },
        "quantity": int(quantity.to_integral_value(rounding=ROUND_DOWN)),
        "quantity_decimal": decimal_string(quantity),
        "subtotal": amount,
        "taxes": [],
    }


def _items_in(state: State, sub: dict[str, Any], start: int, end: int) -> list[dict[str, Any]]:
    """Items active at some instant of ``[start, end)``."""
    items = [state.get("subscription_item", i) for i in sub["_items"]]
    return [
        i
        for i in items
        if i is not None and i["_started"] < max(end, start + 1) and (i.get("_ended") is None or i["_ended"] > start)
    ]


def metered_lines(state: State, invoice: dict[str, Any], sub: dict[str, Any], start: int, end: int) -> list[dict[str, Any]]:
    lines = []
    for item in _items_in(state, sub, start, end):
        price = state.get("price", item["_price"])
        if price["recurring"]["usage_type"] != "metered":
            continue
        lo = max(start, item["_started"])
        hi = min(end, item["_ended"]) if item.get("_ended") is not None else end
        quantity = meters_api.usage(state, price["recurring"]["meter"], sub["customer"], lo, hi) if hi > lo else Decimal(0)
        # Stripe: "If the overall cycle usage is negative, Stripe reports the invoice line item usage
        # quantity as 0" (the summaries still show it)
        quantity = max(quantity, Decimal(0))
        amount = tiers.amount_minor(price_for_math(price), quantity)
        lines.append(_line(state, invoice, sub, item, quantity, amount, lo, hi))
    return lines


def licensed_lines(state: State, invoice: dict[str, Any], sub: dict[str, Any], start: int, end: int,
                   free: bool = False) -> list[dict[str, Any]]:
    """Licensed items billed in advance for ``[start, end)``, prorated when shorter than an interval;
    at zero when `free` (a first period up to the anchor created with `proration_behavior=none`)."""
    lines = []
    for item in _items_in(state, sub, start, end):
        if item.get("_ended") is not None:
            continue
        price = state.get("price", item["_price"])
        if price["recurring"]["usage_type"] != "licensed":
            continue
        interval, count = price["recurring"]["interval"], price["recurring"]["interval_count"]
        full_start = previous_boundary(sub["billing_cycle_anchor"], interval, count, end, anchor_day(sub))
        quantity = Decimal(1 if item.get("quantity") is None else item["quantity"])   # 0 seats bill 0
        exact = tiers.unrounded_amount(price_for_math(price), quantity)
        proration = start > full_start and not free
        if proration:
            exact = exact * Decimal(end - start) / Decimal(end - full_start)
        amount = 0 if free else int(exact.quantize(Decimal(1), rounding=ROUND_HALF_UP))
        lines.append(_line(state, invoice, sub, item, quantity, amount, start, end, proration))
    return lines


def new_invoice(state: State, sub: dict[str, Any], created: int, start: int, end: int, reason: str) -> dict[str, Any]:
    """A draft of the subscription ``sub`` (its customer, currency and collection method)."""
    parent = {
        "type": "subscription_details",
        "quote_details": None,
        "subscription_details": {"metadata": dict(sub["metadata"]), "subscription": sub["id"]},
    }
    return blank_invoice(state, sub["customer"], sub["currency"], sub["collection_method"], created, start, end, reason, parent)


def blank_invoice(state: State, customer_id: str, currency: str, collection_method: str, created: int, start: int,
                  end: int, reason: str, parent: dict[str, Any] | None) -> dict[str, Any]:
    """A draft with no lines: a subscription's (``parent``) or a one-off invoice (``parent`` None)."""
    customer = state.get("customer", customer_id)
    invoice = {
        "id": new_id("in_", 24),
        "object": "invoice",
        "account_country": "US",
        "account_name": "Metering Sandbox",
        "account_tax_ids": None,
        "amount_due": 0,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_paid_off_stripe": 0,
        "amount_remaining": 0,
        "amount_shipping": 0,
        "application": None,
        "attempt_count": 0,
        "attempted": False,
        "auto_advance": True,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None, "provider": None, "status": None},
        "automatically_finalizes_at": None,
        "billing_reason": reason,
        "collection_method": collection_method,
        "created": created,
        "currency": currency,
        "custom_fields": None,
        "customer": customer_id,
        "customer_address": None,
        "customer_email": customer.get("email") if customer else None,
        "customer_name": customer.get("name") if customer else None,
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discounts": [],
        "due_date": None,
        "effective_at": None,
        "ending_balance": None,
        "footer": None,
        "from_invoice": None,
        "hosted_invoice_url": None,
        "invoice_pdf": None,
        "issuer": {"type": "self"},
        "last_finalization_error": None,
        "latest_revision": None,
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": None,
        "on_behalf_of": None,
        "parent": parent,
        "payment_settings": {"default_mandate": None, "payment_method_options": None, "payment_method_types": None},
        "period_end": end,
        "period_start": start,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": None,
        "rendering": None,
        "shipping_cost": None,
        "shipping_details": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": "draft",
        "status_transitions": {"finalized_at": None, "marked_uncollectible_at": None, "paid_at": None, "voided_at": None},
        "subtotal": 0,
        "subtotal_excluding_tax": 0,
        "test_clock": customer.get("test_clock") if customer else None,
        "total": 0,
        "total_discount_amounts": [],
        "total_excluding_tax": 0,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": None,
        "_lines": [],
        "_failures": 0,
        "_metered": None,  # (start, end) of the metered usage window this invoice bills
    }
    return invoice


TOTALS = ("subtotal", "subtotal_excluding_tax", "total", "total_excluding_tax", "amount_due", "amount_remaining")


def set_lines(state: State, invoice: dict[str, Any], lines: list[dict[str, Any]]) -> None:
    for old in invoice["_lines"]:
        state.objects["line_item"].pop(old, None)
    for line in lines:
        state.add(line)
    invoice["_lines"] = [line["id"] for line in lines]
    total = sum(line["amount"] for line in lines)
    for name in TOTALS:
        invoice[name] = total
    _show_current_balance(state, invoice)
    state.dirty = True


def _show_current_balance(state: State, draft: dict[str, Any]) -> None:
    """Spec, starting_balance: "If the invoice has not been finalized yet, this will be the current customer
    balance"; amount_due takes it into account. Credits (negative items, a credit balance) can take the sum
    below zero: nothing is then due."""
    draft["starting_balance"] = _customer_balance(state, draft)[1]
    draft["amount_due"] = draft["amount_remaining"] = max(draft["total"] + draft["starting_balance"], 0)


def set_balance(state: State, customer: dict[str, Any], balance: int) -> None:
    """The customer's balance is now `balance`; when that changes it, its drafts show it."""
    if int(customer.get("balance") or 0) != balance:
        customer["balance"] = balance
        refresh_draft_balances(state, customer["id"])


def refresh_draft_balances(state: State, customer_id: str) -> None:
    """The customer's balance changed (set by hand, or applied or given back by another invoice): its drafts
    show the balance as it is now."""
    for invoice in state.objects["invoice"].values():
        if invoice["customer"] == customer_id and invoice["status"] == "draft":
            _show_current_balance(state, invoice)


def _customer_balance(state: State, invoice: dict[str, Any]) -> tuple[dict[str, Any] | None, int]:
    """The invoice's customer and its balance, when the balance applies: it is in the customer's currency
    (spec, customer.balance: "stored on the customer in their default currency"); (None, 0) otherwise."""
    customer = state.get("customer", invoice["customer"])
    if customer is None or customer.get("currency") not in (None, invoice["currency"]):
        return None, 0
    return customer, int(customer.get("balance") or 0)


def _apply_customer_balance(state: State, invoice: dict[str, Any]) -> None:
    """At finalization, as the spec's invoice describes it: "Stripe applies any customer credit on the
    account before determining the amount due ... If the amount due for the invoice is less than Stripe's
    minimum allowed charge per currency, the invoice is automatically marked paid, and we add the amount
    due to the customer's credit balance which is applied to the next invoice." A positive balance (owed)
    is added to the amount due; a credit larger than the invoice stays on the balance (`ending_balance`).
    The invoice's change to the balance is kept (`_balance_change`) for a void to take back."""
    customer, balance = _customer_balance(state, invoice)
    due = invoice["total"] + balance
    minimums = MINIMUM_CHARGE if state.config.minimum_charge is None else state.config.minimum_charge
    carried = due if customer is not None and (due < 0 or 0 < due < minimums.get(invoice["currency"], 0)) else 0
    invoice["starting_balance"] = balance
    invoice["ending_balance"] = carried
    invoice["amount_due"] = invoice["amount_remaining"] = max(due - carried, 0)
    invoice["_balance_change"] = carried - balance
    if customer is not None:   # runs at every finalization: drafts change only with the balance
        set_balance(state, customer, carried)


def invoice_lines(state: State, invoice: dict[str, Any]) -> list[dict[str, Any]]:
    return [state.objects["line_item"][i] for i in invoice["_lines"] if i in state.objects["line_item"]]


# -- invoice items --------------------------------------------------------------------------------
def item_subscription(item: dict[str, Any]) -> str | None:
    details = (item.get("parent") or {}).get("subscription_details")
    return details["subscription"] if details else None


def item_line(invoice: dict[str, Any], item: dict[str, Any], line_id: str | None = None) -> dict[str, Any]:
    """The invoice line an invoice item becomes: its amount, description, period and metadata."""
    return {
        "id": line_id or new_id("il_", 24),
        "object": "line_item",
        "amount": item["amount"],
        "currency": item["currency"],
        "description": item["description"],
        "discount_amounts": [],
        "discountable": item["discountable"],
        "discounts": [],
        "invoice": invoice["id"],
        "livemode": False,
        "metadata": dict(item["metadata"] or {}),
        "parent": {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": item["id"],
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": item_subscription(item),
            },
            "subscription_item_details": None,
        },
        "period": dict(item["period"]),  # an item's period end is inclusive already
        "pretax_credit_amounts": [],
        "pricing": None,
        "quantity": 1,
        "quantity_decimal": "1",
        "subtotal": item["amount"],
        "taxes": [],
    }


def pull_pending_items(state: State, invoice: dict[str, Any], subscription: str | None) -> list[dict[str, Any]]:
    """Attach the customer's pending invoice items to a new invoice and return their lines, oldest
    first. A subscription invoice takes the items of that subscription and those of none."""
    lines = []
    for item in state.objects["invoiceitem"].values():
        if (
            item["customer"] == invoice["customer"]
            and item["invoice"] is None
            and item["currency"] == invoice["currency"]
            and item_subscription(item) in (None, subscription)
        ):
            item["invoice"] = invoice["id"]
            line = item_line(invoice, item)
            item["_line"] = line["id"]
            lines.append(line)
    return lines


def change_draft_lines(
    state: State, invoice: dict[str, Any], lines: list[dict[str, Any]], request: dict[str, Any] | None
) -> None:
    """Replace a draft's lines and record ``invoice.updated`` with the totals that moved."""
    before = {name: invoice[name] for name in TOTALS}
    set_lines(state, invoice, lines)
    previous = {name: value for name, value in before.items() if invoice[name] != value}
    state.record_event("invoice.updated", invoice, previous, request)


def add_item_to_draft(state: State, invoice: dict[str, Any], item: dict[str, Any], request: dict[str, Any] | None) -> None:
    item["invoice"] = invoice["id"]
    line = item_line(invoice, item)
    item["_line"] = line["id"]
    change_draft_lines(state, invoice, invoice_lines(state, invoice) + [line], request)


def refresh_item_on_draft(state: State, invoice: dict[str, Any], item: dict[str, Any], request: dict[str, Any] | None) -> None:
    """The item changed: its line follows (same line id)."""
    lines = [
        item_line(invoice, item, line["id"]) if line["id"] == item.get("_line") else line
        for line in invoice_lines(state, invoice)
    ]
    change_draft_lines(state, invoice, lines, request)


def remove_item_from_draft(state: State, invoice: dict[str, Any], item: dict[str, Any], request: dict[str, Any] | None) -> None:
    lines = [line for line in invoice_lines(state, invoice) if line["id"] != item.get("_line")]
    change_draft_lines(state, invoice, lines, request)


def release_items(state: State, invoice: dict[str, Any]) -> None:
    """A deleted draft's invoice items are pending again (they would otherwise name no invoice)."""
    for item in state.objects["invoiceitem"].values():
        if item["invoice"] == invoice["id"]:
            item["invoice"] = None
            item.pop("_line", None)
    state.dirty = True


def render_invoice(state: State, obj: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    lines = [state.render(line) for line in invoice_lines(state, obj)]
    body["lines"] = {
        "object": "list",
        "data": lines[:10],
        "has_more": len(lines) > 10,
        "url": f"/v1/invoices/{obj['id']}/lines",
    }
    return body


def render_subscription(state: State, obj: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    items = [state.get("subscription_item", i) for i in obj["_items"]]
    data = [state.render(i) for i in items if i is not None and i.get("_ended") is None]
    body["items"] = {
        "object": "list",
        "data": data,
        "has_more": False,
        "url": f"/v1/subscription_items?subscription={obj['id']}",
    }
    return body


def render_item(state: State, obj: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    price = state.get("price", obj["_price"])
    body["price"] = state.render(price)
    return body


RENDERERS["invoice"] = render_invoice
RENDERERS["subscription"] = render_subscription
RENDERERS["subscription_item"] = render_item


# -- lifecycle ------------------------------------------------------------------------------------
def _set_sub_status(state: State, sub: dict[str, Any], status: str, request: dict[str, Any] | None = None,
                    **fields: Any) -> None:
    """Move the subscription to `status` (and set `fields` with it): one
    ``customer.subscription.updated`` whose ``previous_attributes`` hold the values replaced."""
    if sub["status"] == status:
        return
    previous = {"status": sub["status"], **{name: sub[name] for name in fields}}
    sub["status"] = status
    sub.update(fields)
    state.dirty = True
    state.record_event("customer.subscription.updated", sub, previous, request)


def stop_collection(state: State, invoice: dict[str, Any], request: dict[str, Any] | None = None) -> None:
    """Turn automatic collection off (``auto_advance`` false, no payment attempt scheduled), with the
    ``invoice.updated`` that says so."""
    previous = {"auto_advance": invoice["auto_advance"], "next_payment_attempt": invoice["next_payment_attempt"]}
    invoice["auto_advance"] = False
    invoice["next_payment_attempt"] = None
    changed = {name: value for name, value in previous.items() if invoice[name] != value}
    if changed:
        state.dirty = True
        state.record_event("invoice.updated", invoice, changed, request)


def finalize(state: State, invoice: dict[str, Any], at: int, request: dict[str, Any] | None = None) -> None:
    """draft -> open; late usage that arrived during the grace period lands on the invoice."""
    sub = _invoice_sub(state, invoice)
    if invoice["_metered"] and sub is not None:
        start, end = invoice["_metered"]
        # licensed lines and invoice items stay as they are; only usage can have moved
        kept = [line for line in invoice_lines(state, invoice) if not _is_metered_line(state, line)]
        set_lines(state, invoice, metered_lines(state, invoice, sub, start, end) + kept)
    customer = state.get("customer", invoice["customer"])
    prefix = customer["invoice_prefix"] if customer else "SANDBOX"
    seq = state.invoice_seq.get(prefix, 0) + 1
    state.invoice_seq[prefix] = seq
    if customer:
        customer["next_invoice_sequence"] = seq + 1
    invoice["number"] = f"{prefix}-{seq:04d}"
    invoice["status"] = "open"
    invoice["status_transitions"]["finalized_at"] = at
    invoice["effective_at"] = at
    invoice["automatically_finalizes_at"] = None
    _apply_customer_balance(state, invoice)
    invoice["hosted_invoice_url"] = f"https://invoice.stripe.com/i/sandbox/{invoice['id']}"
    invoice["invoice_pdf"] = f"https://pay.stripe.com/invoice/sandbox/{invoice['id']}/pdf"
    if invoice["collection_method"] == "send_invoice" and invoice["due_date"] is None:
        # the subscription's `days_until_due` ("Number of days a customer has to pay invoices generated
        # by this subscription", spec); 30 when it sets none. A one-off invoice created with
        # `days_until_due` or `due_date` has its due date already.
        sub_days = sub.get("days_until_due") if sub is not None else None
        invoice["due_date"] = at + (DEFAULT_DAYS_UNTIL_DUE if sub_days is None else sub_days) * 86400
    state.dirty = True
    state.record_event("invoice.finalized", invoice, request=request)
    if invoice["amount_due"] == 0:
        # nothing to collect (a zero or credited total, or one below the minimum charge): paid at once,
        # whichever the collection method, with no payment attempt
        _mark_paid(state, invoice, at, request)


def _is_metered_line(state: State, line: dict[str, Any]) -> bool:
    if line["parent"]["type"] != "subscription_item_details":
        return False
    price = state.get("price", line["pricing"]["price_details"]["price"])
    return bool(price and price["recurring"] and price["recurring"]["usage_type"] == "metered")


def _mark_paid(state: State, invoice: dict[str, Any], at: int, request: dict[str, Any] | None, out_of_band: bool = False) -> None:
    invoice["status"] = "paid"
    invoice["auto_advance"] = False  # Stripe: always false on paid, void and uncollectible invoices
    if out_of_band:
        invoice["amount_paid_off_stripe"] = invoice["amount_remaining"]
    invoice["amount_paid"] = invoice["amount_due"]
    invoice["amount_remaining"] = 0
    invoice["next_payment_attempt"] = None
    invoice["status_transitions"]["paid_at"] = at
    state.dirty = True
    state.record_event("invoice.paid", invoice, request=request)
    state.record_event("invoice.payment_succeeded", invoice, request=request)
    # spec, customer.delinquent: "Paying or marking uncollectible any customer invoice regardless of
    # whether it is the latest invoice for a subscription will always set this field to false"
    set_not_delinquent(state, invoice)
    sub = _invoice_sub(state, invoice)
    if sub is not None and sub["status"] == "unpaid":
        # Stripe: "pay the most recent invoice before its due date to update the subscription's
        # status to active" (subscriptions overview, unpaid subscriptions)
        if invoice["id"] == sub["latest_invoice"]:
            _set_sub_status(state, sub, "active", request)
    elif sub is not None and sub["status"] in ("past_due", "incomplete"):
        unpaid = [
            i
            for i in state.objects["invoice"].values()
            if i["status"] == "open" and i["attempt_count"] > 0 and _invoice_sub(state, i) is sub
        ]
        if not unpaid:
            _set_sub_status(state, sub, "active", request)


def set_not_delinquent(state: State, invoice: dict[str, Any]) -> None:
    customer = state.get("customer", invoice["customer"])
    if customer is not None:
        customer["delinquent"] = False


def _invoice_sub(state: State, invoice: dict[str, Any]) -> dict[str, Any] | None:
    details = (invoice.get("parent") or {}).get("subscription_details")
    return state.get("subscription", details["subscription"]) if details else None


def attempt_payment(state: State, invoice: dict[str, Any], at: int, *, automatic: bool, request: dict[str, Any] | None = None) -> bool:
    """Charge the customer's card once. Returns True when paid."""
    from .core_api import payment_behavior

    if invoice["amount_due"] == 0:
        _mark_paid(state, invoice, at, request)
        return True
    behavior = payment_behavior(state, invoice["customer"])
    succeeds = behavior == "succeeds" or (behavior == "fails_then_succeeds" and invoice["_failures"] > 0)
    invoice["attempted"] = True
    if automatic or invoice["attempt_count"] == 0:
        invoice["attempt_count"] += 1
    if succeeds:
        _mark_paid(state, invoice, at, request)
        return True
    invoice["_failures"] += 1
    # A subscription's first invoice is not retried: the subscription is incomplete until it is paid
    # and expires 23 h after its creation. Nor is an invoice whose automatic collection is off, nor one
    # the customer is sent to pay (spec, next_payment_attempt: "null for invoices where
    # collection_method=send_invoice").
    first = invoice["billing_reason"] == "subscription_create"
    schedule = state.config.payment_retry_days
    retries_used = invoice["attempt_count"] - 1
    if first or not invoice["auto_advance"] or invoice["collection_method"] != "charge_automatically":
        invoice["next_payment_attempt"] = None
    elif automatic or invoice["next_payment_attempt"] is None and retries_used < len(schedule):
        invoice["next_payment_attempt"] = at + schedule[retries_used] * 86400 if retries_used < len(schedule) else None
    customer = state.get("customer", invoice["customer"])
    if customer is not None:
        customer["delinquent"] = True
    state.dirty = True
    state.record_event("invoice.payment_failed", invoice, request=request)
    sub = _invoice_sub(state, invoice)
    if sub is not None and not first:
        # past_due "when payment is required but cannot be paid" is charge_automatically's rule; a sent
        # invoice makes its subscription past_due by its due date, not by a declined card
        if sub["status"] in ("active", "trialing") and sub["collection_method"] == "charge_automatically":
            _set_sub_status(state, sub, "past_due", request)
        if automatic and invoice["next_payment_attempt"] is None:
            _after_final_failure(state, invoice, sub, at)
    return False


def _after_final_failure(state: State, invoice: dict[str, Any], sub: dict[str, Any], at: int) -> None:
    action = state.config.after_final_failure
    if sub["status"] in ENDED_STATUSES:
        return  # e.g. the final invoice of a canceled subscription: nothing left to end
    if action == "unpaid":
        _set_sub_status(state, sub, "unpaid")
    elif action == "canceled":
        cancel(state, sub, at)
    elif action == "mark_uncollectible":
        mark_uncollectible(state, invoice, at)


def mark_uncollectible(state: State, invoice: dict[str, Any], at: int, request: dict[str, Any] | None = None) -> None:
    invoice["status"] = "uncollectible"
    invoice["auto_advance"] = False
    invoice["next_payment_attempt"] = None
    invoice["status_transitions"]["marked_uncollectible_at"] = at
    state.dirty = True
    state.record_event("invoice.marked_uncollectible", invoice, request=request)


def void(state: State, invoice: dict[str, Any], at: int, request: dict[str, Any] | None = None) -> None:
    """Void an open or uncollectible invoice; the customer balance it applied goes back to the customer
    (Stripe's `unapplied_from_invoice` balance transaction)."""
    customer = state.get("customer", invoice["customer"])
    if customer is not None and invoice.get("_balance_change"):
        set_balance(state, customer, int(customer.get("balance") or 0) - invoice["_balance_change"])
        invoice["_balance_change"] = 0
    invoice["status"] = "void"
    invoice["auto_advance"] = False
    invoice["next_payment_attempt"] = None
    invoice["amount_remaining"] = 0
    invoice["status_transitions"]["voided_at"] = at
    state.dirty = True
    state.record_event("invoice.voided", invoice, request=request)


def cancel(state: State, sub: dict[str, Any], at: int, request: dict[str, Any] | None = None) -> None:
    """End the subscription now. Stripe: "By default, upon subscription cancellation, Stripe stops
    automatic collection of all finalized invoices for the customer" (DELETE /v1/subscriptions/{id});
    drafts (a final invoice of `invoice_now` or of a period end) are finalized and charged as usual."""
    previous = {"status": sub["status"]}
    sub["status"] = "canceled"
    sub["canceled_at"] = sub["canceled_at"] or at
    sub["ended_at"] = at
    for item_id in sub["_items"]:
        item = state.get("subscription_item", item_id)
        if item is not None and item.get("_ended") is None:
            item["_ended"] = at
    state.dirty = True
    state.record_event("customer.subscription.deleted", sub, previous, request)
    for invoice in list(state.objects["invoice"].values()):
        if invoice["customer"] == sub["customer"] and invoice["status"] == "open":
            stop_collection(state, invoice, request)


def expire_incomplete(state: State, sub: dict[str, Any], at: int) -> None:
    """The first invoice went unpaid for 23 h: the subscription is `incomplete_expired` (terminal,
    no further invoices) and "the open invoice will be voided" (subscription.status)."""
    _set_sub_status(state, sub, "incomplete_expired", ended_at=at)
    invoice = state.get("invoice", sub["latest_invoice"]) if sub["latest_invoice"] else None
    if invoice is not None and invoice["status"] == "open":
        void(state, invoice, at)


def create_initial_invoice(state: State, sub: dict[str, Any], at: int, request: dict[str, Any] | None,
                           proration_behavior: str = "create_prorations") -> dict[str, Any]:
    """The invoice Stripe issues when a subscription starts: licensed items for the first period
    (prorated), metered items at zero; finalized and charged at once.

    A first period that runs up to a billing cycle anchor (a later anchor, or a backdated start) is
    free with `proration_behavior=none`: Stripe "doesn't charge the customer for backdated time",
    and "customers receive the initial period up to the first full invoice date for free"
    (docs.stripe.com/billing/subscriptions/backdating, /payments/checkout/billing-cycle). Its
    licensed lines are then at zero."""
    start, end = sub["_period_start"], sub["_period_end"]
    invoice = new_invoice(state, sub, at, start, start, "subscription_create")
    lines = []
    for item in _items_in(state, sub, start, end):
        price = state.get("price", item["_price"])
        if price["recurring"]["usage_type"] == "metered":
            lines.append(_line(state, invoice, sub, item, Decimal(0), 0, start, start + 1))
    free = proration_behavior == "none" and sub["billing_cycle_anchor"] > start
    lines += licensed_lines(state, invoice, sub, start, end, free=free)
    lines += pull_pending_items(state, invoice, sub["id"])
    set_lines(state, invoice, lines)
    state.add(invoice)
    sub["latest_invoice"] = invoice["id"]
    state.record_event("invoice.created", invoice, request=request)
    finalize(state, invoice, at, request)
    if sub["collection_method"] != "charge_automatically" or invoice["status"] != "open":
        return invoice  # send_invoice: the customer is sent the invoice and pays it by its due date
    if not attempt_payment(state, invoice, at, automatic=True, request=request):
        # no customer.subscription.updated: the creation's event, recorded after this, says incomplete
        sub["status"] = "incomplete"
    return invoice


def close_period(state: State, sub: dict[str, Any], at: int) -> dict[str, Any]:
    """The period ``[_period_start, _period_end)`` has ended: draft its invoice, start the next."""
    start, end = sub["_period_start"], sub["_period_end"]
    interval, count = sub["_interval"]
    ending = sub["cancel_at_period_end"] or (sub.get("cancel_at") is not None and sub["cancel_at"] <= end)
    next_end = next_boundary(sub["billing_cycle_anchor"], interval, count, end, anchor_day(sub))
    invoice = new_invoice(state, sub, at, start, end, "subscription_cycle")
    lines = metered_lines(state, invoice, sub, start, end)
    if not ending:
        lines += licensed_lines(state, invoice, sub, end, next_end)
    lines += pull_pending_items(state, invoice, sub["id"])
    set_lines(state, invoice, lines)
    invoice["_metered"] = (start, end)
    invoice["automatically_finalizes_at"] = at + state.config.grace_period
    if sub["status"] == "unpaid":
        # Stripe: an unpaid subscription's invoices "continue to be generated each billing cycle and
        # remain in draft state" (subscriptions overview): not finalized, never attempted
        invoice["auto_advance"] = False
        invoice["automatically_finalizes_at"] = None
    state.add(invoice)
    previous = {"latest_invoice": sub["latest_invoice"]}
    sub["latest_invoice"] = invoice["id"]
    state.record_event("invoice.created", invoice)
    if ending:
        cancel(state, sub, end)
        return invoice
    sub["_period_start"], sub["_period_end"] = end, next_end
    for item_id in sub["_items"]:
        item = state.get("subscription_item", item_id)
        if item is not None and item.get("_ended") is None:
            item["current_period_start"], item["current_period_end"] = end, next_end
    state.dirty = True
    state.record_event("customer.subscription.updated", sub, previous)
    return invoice


# -- time -----------------------------------------------------------------------------------------
def _customer_ids(state: State, clock_id: str | None) -> set[str]:
    return {c["id"] for c in state.objects["customer"].values() if c.get("test_clock") == clock_id}


def _next_action(state: State, customers: set[str], target: int) -> tuple[int, int, str, dict[str, Any]] | None:
    best = None
    for sub in state.objects["subscription"].values():
        if sub["customer"] not in customers or sub["status"] in ENDED_STATUSES:
            continue
        # an incomplete subscription closes no period: it becomes active when paid, or expires
        if sub["status"] == "incomplete":
            candidate = (sub["created"] + INCOMPLETE_EXPIRY, 0, "expire", sub)
        else:
            candidate = (sub["_period_end"], 0, "period", sub)
        if candidate[0] <= target and (best is None or candidate[:2] < best[:2]):
            best = candidate
    for invoice in state.objects["invoice"].values():
        if invoice["customer"] not in customers or not invoice["auto_advance"]:
            continue
        if invoice["status"] == "draft" and invoice["automatically_finalizes_at"] is not None:
            candidate = (invoice["automatically_finalizes_at"], 1, "finalize", invoice)
        elif invoice["status"] == "open" and invoice["next_payment_attempt"] is not None:
            candidate = (invoice["next_payment_attempt"], 2, "retry", invoice)
        else:
            continue
        if candidate[0] <= target and (best is None or candidate[:2] < best[:2]):
            best = candidate
    return best


def run_until(state: State, target: int, clock_id: str | None = None) -> int:
    """Perform every billing action due up to ``target`` for the customers on ``clock_id``
    (None: customers without a test clock), in time order. Returns the number of actions."""
    customers = _customer_ids(state, clock_id)
    clock = state.get("test_helpers.test_clock", clock_id) if clock_id else None
    done = 0
    while True:
        action = _next_action(state, customers, target)
        if action is None:
            return done
        at, _, kind, obj = action
        if clock is not None:
            clock["frozen_time"] = max(clock["frozen_time"], at)
        if kind == "period":
            close_period(state, obj, at)
        elif kind == "expire":
            expire_incomplete(state, obj, at)
        elif kind == "finalize":
            finalize(state, obj, at)
            if obj["auto_advance"] and obj["collection_method"] == "charge_automatically":
                attempt_payment(state, obj, at, automatic=True)
        else:
            attempt_payment(state, obj, at, automatic=True)
        done += 1


def pay_manually(state: State, invoice: dict[str, Any], at: int, params: dict[str, Any], request: dict[str, Any]) -> None:
    """``POST /v1/invoices/{id}/pay``: finalize a draft, then charge (402 card_error when declined).

    An uncollectible invoice can still be paid (Stripe's invoice states: its status "can only be
    changed to void or paid"); a declined charge leaves it uncollectible."""
    if invoice["status"] == "draft":
        finalize(state, invoice, at, request)
        if invoice["status"] == "paid":
            return   # nothing was due: paid by its finalization
    if invoice["status"] not in ("open", "uncollectible"):
        raise StripeAPIError(400, f"Invoice is already {invoice['status']}.", code="invoice_not_open" if invoice["status"] != "paid" else "invoice_already_paid")
    if str(params.get("paid_out_of_band")) == "true":
        _mark_paid(state, invoice, at, request, out_of_band=True)
        return
    if not attempt_payment(state, invoice, at, automatic=False, request=request):
        raise StripeAPIError(
            402,
            "Your card was declined.",
            type="card_error",
            code="card_declined",
            extra={"decline_code": "generic_decline"},
        )
