"""Invoices and their lines: create (one-off drafts), list, retrieve, update (drafts), delete (one-off
drafts), finalize, pay, void, mark_uncollectible."""

from __future__ import annotations

from typing import Any

from . import billing
from .api import (
    UNMODELLED_FILTER,
    Request,
    as_bool,
    as_int,
    created_filter,
    fetch,
    paginate,
    public,
    public_list,
    reject_all_but,
    reject_unmodelled,
    require,
    route,
    update_metadata,
)
from .apierrors import StripeAPIError, invalid
from .invoiceitems_api import charge_currency
from .store import State


# editable on a draft only (spec, POST /v1/invoices/{invoice}): the monetary fields and collection_method
FINALIZED_LOCKED = (
    "collection_method", "application_fee_amount", "automatic_tax", "default_tax_rates", "discounts", "shipping_cost",
)


def _invoice(state: State, ident: str) -> dict[str, Any]:
    return fetch(state, "invoice", ident, "invoice", "invoice")


def _now(state: State, invoice: dict[str, Any]) -> int:
    return state.customer_now(invoice["customer"])


# POST /v1/invoices: what the sandbox models; any other parameter is refused (400), not dropped
CREATE_MODELLED = {
    "customer", "currency", "collection_method", "days_until_due", "due_date", "auto_advance", "description", "metadata",
    "pending_invoice_items_behavior",
}


@route("POST", "/v1/invoices")
def create_invoice(state: State, req: Request) -> dict[str, Any]:
    """A one-off draft for a customer (``billing_reason`` ``manual``, no parent).

    Spec: ``auto_advance`` "Defaults to false" (with it, Stripe finalizes the draft "after one hour",
    docs: automatic invoice advancement: the sandbox's grace period); ``pending_invoice_items_behavior``
    "Defaults to `exclude`" (``include`` takes the customer's pending items that belong to no
    subscription); ``days_until_due`` and ``due_date`` are "Valid only for invoices where
    collection_method=send_invoice" and date the invoice at once (``days_until_due`` counts "from when
    the invoice is created"); a sent invoice with neither is due 30 days after its finalization.
    ``subscription`` (an invoice Stripe would count as the subscription's) is not modelled."""
    params = req.params
    reject_all_but(params, CREATE_MODELLED)
    customer = fetch(state, "customer", require(params, "customer"), "customer", "customer")
    currency = charge_currency(params, customer, None)
    collection = params.get("collection_method") or "charge_automatically"   # its enum: the request schema
    behavior = params.get("pending_invoice_items_behavior") or "exclude"
    if behavior not in ("exclude", "include"):
        raise invalid("Invalid pending_invoice_items_behavior: must be one of exclude or include", "pending_invoice_items_behavior")
    now = state.customer_now(customer["id"])
    due_date = _due_date(params, collection, now)
    advance = as_bool(params["auto_advance"], "auto_advance") if params.get("auto_advance") not in (None, "") else False
    invoice = billing.blank_invoice(state, customer["id"], currency, collection, now, now, now, "manual", None)
    invoice["auto_advance"] = advance
    invoice["automatically_finalizes_at"] = now + state.config.grace_period if advance else None
    invoice["due_date"] = due_date
    invoice["description"] = params.get("description") or None
    invoice["metadata"] = update_metadata({}, params.get("metadata"))
    lines = billing.pull_pending_items(state, invoice, None) if behavior == "include" else []
    billing.set_lines(state, invoice, lines)
    if customer.get("currency") is None:
        customer["currency"] = currency
    state.add(invoice)
    state.record_event("invoice.created", invoice, request=req.event_request())
    return public(state, invoice, params)


def _due_date(params: dict[str, Any], collection: str, now: int) -> int | None:
    days, date = params.get("days_until_due"), params.get("due_date")
    given = [name for name, value in (("days_until_due", days), ("due_date", date)) if value not in (None, "")]
    if not given:
        return None
    if collection != "send_invoice":
        raise invalid(f"{given[0]} is valid only for invoices where collection_method=send_invoice.", given[0])
    if len(given) == 2:
        raise invalid("Pass either days_until_due or due_date, not both.", "due_date")
    if given == ["due_date"]:
        due = as_int(date, "due_date")
        if due <= now:
            raise invalid("The due_date must be in the future.", "due_date")
        return due
    count = as_int(days, "days_until_due")
    if count < 0:
        raise invalid("days_until_due must be 0 or more.", "days_until_due")
    return now + count * 86400


@route("GET", "/v1/invoices")
def list_invoices(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    reject_unmodelled(params, ("customer_account", "due_date"), UNMODELLED_FILTER)
    accept = created_filter(params)
    customer, status, subscription = params.get("customer"), params.get("status"), params.get("subscription")
    collection = params.get("collection_method")

    def keep(inv: dict[str, Any]) -> bool:
        sub = ((inv.get("parent") or {}).get("subscription_details") or {}).get("subscription")
        return (
            (not customer or inv["customer"] == customer)
            and (not status or inv["status"] == status)
            and (not collection or inv["collection_method"] == collection)
            and (not subscription or sub == subscription)
            and accept(inv["created"])
        )

    return public_list(state, [i for i in state.all("invoice") if keep(i)], params, "/v1/invoices")


@route("GET", "/v1/invoices/{invoice}")
def retrieve_invoice(state: State, req: Request, invoice: str) -> dict[str, Any]:
    return public(state, _invoice(state, invoice), req.params)


@route("POST", "/v1/invoices/{invoice}")
def update_invoice(state: State, req: Request, invoice: str) -> dict[str, Any]:
    """Spec: "Draft invoices are fully editable. Once an invoice is finalized, monetary values, as well
    as collection_method, become uneditable." and "pass auto_advance=false" to stop "automatically
    finalizing, reattempting payments on" it. The sandbox applies metadata, description and
    auto_advance (true on a draft with no finalization scheduled: one an hour later, the grace period);
    any other parameter is refused (400) rather than dropped."""
    obj = _invoice(state, invoice)
    params = req.params
    if obj["status"] != "draft":
        locked = [name for name in FINALIZED_LOCKED if params.get(name) not in (None, "")]
        if locked:
            raise StripeAPIError(400, f"You can't change {locked[0]} of a finalized invoice: once an invoice is "
                                 "finalized, monetary values and collection_method become uneditable.",
                                 code="invoice_not_editable", param=locked[0])
    reject_all_but(params, {"metadata", "description", "auto_advance"})
    advance = as_bool(params["auto_advance"], "auto_advance") if params.get("auto_advance") not in (None, "") else None
    if advance is not None and advance != obj["auto_advance"]:
        if obj["status"] not in ("draft", "open"):
            article = "an" if obj["status"][0] in "aeiou" else "a"   # an uncollectible, a paid, a void
            raise StripeAPIError(400, f"You can't change auto_advance of {article} {obj['status']} invoice.",
                                 code="invoice_not_editable", param="auto_advance")
        if advance and obj["status"] == "open":
            raise invalid("The sandbox does not model resuming automatic collection of an open invoice "
                          "(auto_advance=true).", "auto_advance")
    previous = {}
    if "metadata" in params:
        previous["metadata"] = dict(obj["metadata"])
        obj["metadata"] = update_metadata(obj["metadata"], params["metadata"])
    if advance is not None:
        previous["auto_advance"] = obj["auto_advance"]
        obj["auto_advance"] = advance
        if advance and obj["status"] == "draft" and obj["automatically_finalizes_at"] is None:
            # automatic advancement finalizes a draft "after one hour" (docs); counted from the change,
            # a sandbox choice: Stripe does not say from when
            previous["automatically_finalizes_at"] = None
            obj["automatically_finalizes_at"] = _now(state, obj) + state.config.grace_period
        if not advance:
            # no automatic finalization of a draft, no further payment attempt on an open invoice
            previous["automatically_finalizes_at"] = obj["automatically_finalizes_at"]
            previous["next_payment_attempt"] = obj["next_payment_attempt"]
            obj["automatically_finalizes_at"] = None
            obj["next_payment_attempt"] = None
    if "description" in params:
        previous["description"] = obj["description"]
        obj["description"] = params["description"] or None
    state.dirty = True
    previous = {name: value for name, value in previous.items() if obj[name] != value}
    state.record_event("invoice.updated", obj, previous, req.event_request())
    return public(state, obj, params)


@route("DELETE", "/v1/invoices/{invoice}")
def delete_invoice(state: State, req: Request, invoice: str) -> dict[str, Any]:
    obj = _invoice(state, invoice)
    if obj["status"] != "draft":
        raise StripeAPIError(400, "You can only delete draft invoices.", code="invoice_not_editable")
    if obj["parent"] is not None:
        # spec: "Permanently deletes a one-off invoice draft ... if an invoice is for a subscription, it
        # must be voided"; Stripe's words for it (stripe-node#657)
        raise StripeAPIError(400, "You can't delete invoices created by subscriptions.", code="invoice_not_editable")
    billing.release_items(state, obj)
    billing.set_lines(state, obj, [])
    del state.objects["invoice"][invoice]
    state.record_event("invoice.deleted", obj, request=req.event_request())
    return {"id": invoice, "object": "invoice", "deleted": True}


@route("POST", "/v1/invoices/{invoice}/finalize")
def finalize_invoice(state: State, req: Request, invoice: str) -> dict[str, Any]:
    obj = _invoice(state, invoice)
    if obj["status"] != "draft":
        raise StripeAPIError(400, "This invoice is already finalized, you can't re-finalize a non-draft invoice.", code="invoice_not_editable")
    if "auto_advance" in req.params:
        obj["auto_advance"] = as_bool(req.params["auto_advance"], "auto_advance")
    at = _now(state, obj)
    billing.finalize(state, obj, at, req.event_request())
    if obj["auto_advance"] and obj["collection_method"] == "charge_automatically":
        billing.attempt_payment(state, obj, at, automatic=True, request=req.event_request())
    return public(state, obj, req.params)


@route("POST", "/v1/invoices/{invoice}/pay")
def pay_invoice(state: State, req: Request, invoice: str) -> dict[str, Any]:
    obj = _invoice(state, invoice)
    billing.pay_manually(state, obj, _now(state, obj), req.params, req.event_request())
    return public(state, obj, req.params)


@route("POST", "/v1/invoices/{invoice}/void")
def void_invoice(state: State, req: Request, invoice: str) -> dict[str, Any]:
    obj = _invoice(state, invoice)
    if obj["status"] not in ("open", "uncollectible"):
        raise StripeAPIError(400, f"You can only void open or uncollectible invoices; this one is {obj['status']}.", code="invoice_not_open" if obj["status"] != "paid" else "invoice_already_paid")
    billing.void(state, obj, _now(state, obj), req.event_request())
    return public(state, obj, req.params)


@route("POST", "/v1/invoices/{invoice}/mark_uncollectible")
def mark_uncollectible_invoice(state: State, req: Request, invoice: str) -> dict[str, Any]:
    obj = _invoice(state, invoice)
    if obj["status"] != "open":
        raise StripeAPIError(400, f"You can only mark open invoices as uncollectible; this one is {obj['status']}.", code="invoice_not_open")
    billing.mark_uncollectible(state, obj, _now(state, obj), req.event_request())
    billing.set_not_delinquent(state, obj)   # through the API only: dunning's write-off leaves it (spec)
    return public(state, obj, req.params)


@route("GET", "/v1/invoices/{invoice}/lines")
def list_invoice_lines(state: State, req: Request, invoice: str) -> dict[str, Any]:
    obj = _invoice(state, invoice)
    lines = billing.invoice_lines(state, obj)
    page = paginate([state.render(line) for line in lines], req.params, f"/v1/invoices/{invoice}/lines")
    return page
