"""Invoices and their lines: list, retrieve, update (drafts), finalize, pay, void, mark_uncollectible."""

from __future__ import annotations

from typing import Any

from . import billing
from .api import (
    Request,
    as_bool,
    created_filter,
    fetch,
    paginate,
    public,
    public_list,
    route,
    update_metadata,
)
from .apierrors import StripeAPIError
from .store import State


def _invoice(state: State, ident: str) -> dict[str, Any]:
    return fetch(state, "invoice", ident, "invoice", "invoice")


def _now(state: State, invoice: dict[str, Any]) -> int:
    return state.customer_now(invoice["customer"])


@route("GET", "/v1/invoices")
def list_invoices(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    accept = created_filter(params)
    customer, status, subscription = params.get("customer"), params.get("status"), params.get("subscription")

    def keep(inv: dict[str, Any]) -> bool:
        sub = ((inv.get("parent") or {}).get("subscription_details") or {}).get("subscription")
        return (
            (not customer or inv["customer"] == customer)
            and (not status or inv["status"] == status)
            and (not subscription or sub == subscription)
            and accept(inv["created"])
        )

    return public_list(state, [i for i in state.all("invoice") if keep(i)], params, "/v1/invoices")


@route("GET", "/v1/invoices/{invoice}")
def retrieve_invoice(state: State, req: Request, invoice: str) -> dict[str, Any]:
    return public(state, _invoice(state, invoice), req.params)


@route("POST", "/v1/invoices/{invoice}")
def update_invoice(state: State, req: Request, invoice: str) -> dict[str, Any]:
    obj = _invoice(state, invoice)
    params = req.params
    if obj["status"] != "draft" and set(params) - {"metadata", "expand"}:
        raise StripeAPIError(400, "Only metadata can be updated on a finalized invoice.", code="invoice_not_editable")
    previous = {}
    if "metadata" in params:
        previous["metadata"] = dict(obj["metadata"])
        obj["metadata"] = update_metadata(obj["metadata"], params["metadata"])
    if "auto_advance" in params:
        previous["auto_advance"] = obj["auto_advance"]
        obj["auto_advance"] = as_bool(params["auto_advance"], "auto_advance")
        if not obj["auto_advance"]:
            obj["automatically_finalizes_at"] = None
    if "description" in params:
        previous["description"] = obj["description"]
        obj["description"] = params["description"] or None
    state.dirty = True
    state.record_event("invoice.updated", obj, previous, req.event_request())
    return public(state, obj, params)


@route("DELETE", "/v1/invoices/{invoice}")
def delete_invoice(state: State, req: Request, invoice: str) -> dict[str, Any]:
    obj = _invoice(state, invoice)
    if obj["status"] != "draft":
        raise StripeAPIError(400, "You can only delete draft invoices.", code="invoice_not_editable")
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
    return public(state, obj, req.params)


@route("GET", "/v1/invoices/{invoice}/lines")
def list_invoice_lines(state: State, req: Request, invoice: str) -> dict[str, Any]:
    obj = _invoice(state, invoice)
    lines = billing.invoice_lines(state, obj)
    page = paginate([state.render(line) for line in lines], req.params, f"/v1/invoices/{invoice}/lines")
    return page
