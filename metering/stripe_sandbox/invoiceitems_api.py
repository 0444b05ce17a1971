"""Invoice items: one-off charges (or, with a negative amount, credits) for a customer.

Without ``invoice`` an item is pending and joins the next invoice the sandbox drafts for its
customer (a subscription's invoices take the items of that subscription and those of none; see
``billing.pull_pending_items``). With ``invoice`` it becomes a line of that draft at once. Items are
priced by ``amount`` alone: ``pricing``, ``price_data``, ``quantity``, ``unit_amount_decimal``,
discounts and taxes are not modelled and answered with a 400 rather than ignored.
"""

from __future__ import annotations

from typing import Any

from . import billing
from .api import (
    Request,
    as_bool,
    as_dict,
    as_int,
    created_filter,
    fetch,
    public,
    public_list,
    reject_unmodelled,
    require,
    route,
    update_metadata,
)
from .apierrors import StripeAPIError, invalid, missing_param
from .store import State, new_id

UNMODELLED = (
    "discounts", "price_data", "pricing", "quantity", "quantity_decimal", "tax_behavior", "tax_code", "tax_rates",
    "unit_amount_decimal",
)


def _item(state: State, ident: str) -> dict[str, Any]:
    return fetch(state, "invoiceitem", ident, "invoiceitem", "invoiceitem")


def _not_editable(param: str | None = None) -> StripeAPIError:
    # Stripe's answer to an invoice item aimed at a finalized invoice
    return StripeAPIError(400, "Invalid invoice: This invoice is no longer editable", code="invoice_not_editable", param=param)


def _reject_unmodelled(params: dict[str, Any], names: tuple[str, ...]) -> None:
    reject_unmodelled(params, names, "The sandbox prices invoice items by amount only and does not model {name}.")


def _period(value: Any, now: int) -> dict[str, int]:
    """``period[start]``/``period[end]`` (both inclusive); an item without one is dated now."""
    if value is None or value == "":
        return {"start": now, "end": now}
    spec = as_dict(value, "period")
    start, end = as_int(spec.get("start"), "period[start]"), as_int(spec.get("end"), "period[end]")
    if end < start:
        raise invalid("The period end must be greater than or equal to its start.", "period[end]")
    return {"start": start, "end": end}


def charge_currency(params: dict[str, Any], customer: dict[str, Any], invoice: dict[str, Any] | None) -> str:
    """`currency` as given (lower case), else the invoice's or the customer's; 400 when there is none, or
    when it is not the invoice's."""
    given = params.get("currency")
    currency = str(given).lower() if given else (invoice or customer)["currency"]
    if not currency:
        raise missing_param("currency")
    if invoice is not None and currency != invoice["currency"]:
        raise invalid(f"Invalid currency: {currency}; the invoice {invoice['id']} is in {invoice['currency']}.", "currency", store=True)
    return currency


def _subscription(state: State, params: dict[str, Any], customer: dict[str, Any]) -> dict[str, Any] | None:
    if not params.get("subscription"):
        return None
    sub = fetch(state, "subscription", params["subscription"], "subscription", "subscription")
    if sub["customer"] != customer["id"]:
        raise invalid(f"The subscription {sub['id']} does not belong to the customer {customer['id']}.", "subscription", store=True)
    return sub


def _target_draft(state: State, params: dict[str, Any], customer: dict[str, Any]) -> dict[str, Any] | None:
    """The invoice named by ``invoice=``: a draft of the same customer, else 400."""
    if not params.get("invoice"):
        return None
    invoice = fetch(state, "invoice", params["invoice"], "invoice", "invoice")
    if invoice["status"] != "draft":
        raise _not_editable("invoice")
    if invoice["customer"] != customer["id"]:
        raise invalid(f"Invalid invoice: {invoice['id']} belongs to another customer than {customer['id']}.", "invoice", store=True)
    return invoice


def _draft_of(state: State, item: dict[str, Any]) -> dict[str, Any] | None:
    """The draft an item sits on (None: pending); 400 when its invoice is finalized, as Stripe
    lets an item change or go only before then."""
    if item["invoice"] is None:
        return None
    invoice = state.get("invoice", item["invoice"])
    if invoice is None or invoice["status"] != "draft":
        raise _not_editable()
    return invoice


@route("POST", "/v1/invoiceitems")
def create_invoice_item(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    _reject_unmodelled(params, UNMODELLED + ("customer_account",))
    customer = fetch(state, "customer", require(params, "customer"), "customer", "customer")
    amount = as_int(require(params, "amount"), "amount")
    now = state.customer_now(customer["id"])
    period = _period(params.get("period"), now)
    metadata = update_metadata({}, params.get("metadata"))
    sub = _subscription(state, params, customer)
    invoice = _target_draft(state, params, customer)
    currency = charge_currency(params, customer, invoice)
    item = {
        "id": new_id("ii_", 24),
        "object": "invoiceitem",
        "amount": amount,
        "currency": currency,
        "customer": customer["id"],
        "customer_account": None,
        "date": now,
        "description": params.get("description") or None,
        # Stripe: false for negative items, true for the others
        "discountable": as_bool(params.get("discountable", amount >= 0), "discountable"),
        "discounts": [],
        "invoice": invoice["id"] if invoice else None,
        "livemode": False,
        "metadata": metadata,
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": sub["id"]}} if sub else None,
        "period": period,
        "pricing": None,
        "proration": False,
        "proration_details": {"credited_items": None, "discount_amounts": []},
        "quantity": 1,
        "quantity_decimal": "1",
        "tax_rates": [],
        "test_clock": customer.get("test_clock"),
    }
    if customer.get("currency") is None:
        customer["currency"] = currency
    state.add(item)
    state.record_event("invoiceitem.created", item, request=req.event_request())
    if invoice is not None:
        billing.add_item_to_draft(state, invoice, item, req.event_request())
    return public(state, item, params)


@route("GET", "/v1/invoiceitems/{invoiceitem}")
def retrieve_invoice_item(state: State, req: Request, invoiceitem: str) -> dict[str, Any]:
    return public(state, _item(state, invoiceitem), req.params)


@route("POST", "/v1/invoiceitems/{invoiceitem}")
def update_invoice_item(state: State, req: Request, invoiceitem: str) -> dict[str, Any]:
    item = _item(state, invoiceitem)
    params = req.params
    _reject_unmodelled(params, UNMODELLED)
    invoice = _draft_of(state, item)
    changes: dict[str, Any] = {"metadata": update_metadata(item["metadata"], params.get("metadata"))}
    if params.get("amount") not in (None, ""):
        changes["amount"] = as_int(params["amount"], "amount")
    if "description" in params:
        changes["description"] = params["description"] or None
    if params.get("discountable") not in (None, ""):
        changes["discountable"] = as_bool(params["discountable"], "discountable")
    if params.get("period") not in (None, ""):
        changes["period"] = _period(params["period"], item["date"])
    item.update(changes)  # only once every parameter has been read: a bad one changes nothing
    state.dirty = True
    # the spec has no invoiceitem.updated event; a draft's changed totals are an invoice.updated
    if invoice is not None:
        billing.refresh_item_on_draft(state, invoice, item, req.event_request())
    return public(state, item, params)


@route("DELETE", "/v1/invoiceitems/{invoiceitem}")
def delete_invoice_item(state: State, req: Request, invoiceitem: str) -> dict[str, Any]:
    item = _item(state, invoiceitem)
    invoice = _draft_of(state, item)
    if invoice is not None:
        billing.remove_item_from_draft(state, invoice, item, req.event_request())
    del state.objects["invoiceitem"][invoiceitem]
    state.dirty = True
    state.record_event("invoiceitem.deleted", item, request=req.event_request())
    return {"id": invoiceitem, "object": "invoiceitem", "deleted": True}


@route("GET", "/v1/invoiceitems")
def list_invoice_items(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    accept = created_filter(params)
    customer, invoice, account = params.get("customer"), params.get("invoice"), params.get("customer_account")
    pending = None if params.get("pending") in (None, "") else as_bool(params["pending"], "pending")

    def keep(item: dict[str, Any]) -> bool:
        return (
            (not customer or item["customer"] == customer)
            and (not invoice or item["invoice"] == invoice)
            and (not account or item["customer_account"] == account)
            and (pending is None or (item["invoice"] is None) == pending)
            and accept(item["date"])
        )

    return public_list(state, [i for i in state.all("invoiceitem") if keep(i)], params, "/v1/invoiceitems")
