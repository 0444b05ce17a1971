"""Subscriptions and subscription items."""

from __future__ import annotations

from typing import Any

from . import billing
from .api import (
    UNMODELLED_FILTER,
    Request,
    as_bool,
    as_dict,
    as_int,
    as_list,
    choice,
    created_filter,
    fetch,
    public,
    public_list,
    reject_all_but,
    reject_unmodelled,
    require,
    route,
    update_metadata,
)
from .apierrors import invalid
from .periods import add_interval, first_occurrence, next_boundary, previous_boundary
from .store import State, new_id


def _item_price(state: State, spec: dict[str, Any], index: int, currency: str | None,
                interval: tuple[str, int] | None) -> dict[str, Any]:
    """The item's price, refused as Stripe refuses it (a subscription's first price sets the currency
    and interval the others must share)."""
    price_id = spec.get("price")
    if not price_id:
        raise invalid(f"Missing required param: items[{index}][price].", f"items[{index}][price]", code="parameter_missing")
    price = fetch(state, "price", price_id, "price", f"items[{index}][price]")
    if not price["active"]:
        raise invalid("The price specified is inactive. This field only accepts active prices.", f"items[{index}][price]")
    if price["type"] != "recurring":
        raise invalid("The price specified is not a recurring price.", f"items[{index}][price]")
    if currency is not None and price["currency"] != currency:
        raise invalid("All prices on a subscription must have the same currency.", f"items[{index}][price]")
    if interval is not None and (price["recurring"]["interval"], price["recurring"]["interval_count"]) != interval:
        raise invalid("All prices on a subscription must have the same recurring interval.", f"items[{index}][price]")
    return price


# What an update applies; any other documented parameter is refused (400), not dropped. The sandbox
# prorates no change, so `proration_behavior` is taken only as `none`, which is what it does.
SUBSCRIPTION_UPDATE = {"metadata", "cancel_at_period_end", "description", "items", "proration_behavior"}
ITEM_UPDATE = {"id", "deleted", "price", "quantity", "metadata"}
ITEM_CHANGE = {"metadata", "quantity", "proration_behavior"}  # POST /v1/subscription_items/{item}
ITEM_CREATE = ITEM_CHANGE | {"subscription", "price"}


def _no_proration(params: dict[str, Any], licensed_change: bool = False) -> None:
    """Refuse a proration the sandbox would not make: an explicit ``proration_behavior`` other than
    ``none``, or Stripe's default (``create_prorations``) on a change to licensed items (their
    quantity, price, addition or removal; metered usage is billed in arrears and never prorated)."""
    behavior = params.get("proration_behavior") or ("create_prorations" if licensed_change else "none")
    if behavior != "none":
        raise invalid(f"The sandbox does not prorate changes to a subscription and does not model "
                      f"proration_behavior={behavior} (Stripe's default); pass proration_behavior=none.",
                      "proration_behavior")


def _licensed(state: State, price_id: Any) -> bool:
    price = state.get("price", price_id) if isinstance(price_id, str) else None
    return bool(price and price["recurring"] and price["recurring"]["usage_type"] == "licensed")


def _changes_licensed(state: State, item: dict[str, Any] | None, spec: dict[str, Any]) -> bool:
    """Whether applying ``spec`` to ``item`` (None: a new item) changes what licensed items charge."""
    if item is None:
        return _licensed(state, spec.get("price"))
    deleted = str(spec.get("deleted")) in ("true", "True", "1")
    new_price = spec.get("price") not in (None, "", item["_price"])
    new_quantity = spec.get("quantity") not in (None, "") and str(spec["quantity"]) != str(item.get("quantity"))
    return _licensed(state, item["_price"]) and (deleted or new_price or new_quantity) or (
        new_price and _licensed(state, spec["price"]))


def _new_item_price(state: State, sub: dict[str, Any], spec: dict[str, Any], index: int) -> dict[str, Any]:
    """The price of a new item `spec` of `sub`, refused as Stripe would (`_item_price`; no quantity on a
    metered price)."""
    price = _item_price(state, spec, index, sub["currency"], tuple(sub["_interval"]))
    if price["recurring"]["usage_type"] == "metered" and spec.get("quantity") not in (None, ""):
        raise invalid("You cannot set the quantity for metered prices.", f"items[{index}][quantity]")
    return price


def _build_item(state: State, sub: dict[str, Any], spec: dict[str, Any], at: int, index: int) -> dict[str, Any]:
    """A new item `spec` of `sub`, every field refused as Stripe would, not yet in the state: a request
    builds all it makes before it stores any (a refused one changes nothing)."""
    price = _new_item_price(state, sub, spec, index)
    price_id = price["id"]
    metered = price["recurring"]["usage_type"] == "metered"
    item = {
        "id": new_id("si_"),
        "object": "subscription_item",
        "billing_thresholds": None,
        "created": at,
        "current_period_end": sub["_period_end"],
        "current_period_start": sub["_period_start"],
        "discounts": [],
        "metadata": update_metadata({}, spec.get("metadata")),
        "subscription": sub["id"],
        "tax_rates": [],
        "_price": price_id,
        "_started": at,
        "_ended": None,
    }
    if not metered:
        item["quantity"] = as_int(spec.get("quantity", 1), f"items[{index}][quantity]")
    return item


def _add_item(state: State, sub: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    state.add(item)
    sub["_items"].append(item["id"])
    return item


def _new_item(state: State, sub: dict[str, Any], spec: dict[str, Any], at: int, index: int) -> dict[str, Any]:
    return _add_item(state, sub, _build_item(state, sub, spec, at, index))


def _anchor_config(params: dict[str, Any], interval: str) -> dict[str, Any] | None:
    """``billing_cycle_anchor_config`` checked as Stripe describes it: day_of_month 1-31 required,
    hour/minute/second optional, month only for yearly prices; exclusive with billing_cycle_anchor."""
    if not params.get("billing_cycle_anchor_config"):
        return None
    if params.get("billing_cycle_anchor"):
        raise invalid("You may only specify one of these parameters: billing_cycle_anchor, "
                      "billing_cycle_anchor_config.", "billing_cycle_anchor_config")
    if interval not in ("month", "year"):
        raise invalid("billing_cycle_anchor_config is only valid with monthly and yearly price intervals.",
                      "billing_cycle_anchor_config")
    raw = as_dict(params["billing_cycle_anchor_config"], "billing_cycle_anchor_config")
    limits = {"day_of_month": (1, 31), "hour": (0, 23), "minute": (0, 59), "second": (0, 59), "month": (1, 12)}
    config: dict[str, Any] = {}
    for name, (low, high) in limits.items():
        param = f"billing_cycle_anchor_config[{name}]"
        if raw.get(name) in (None, ""):
            if name == "day_of_month":
                raise invalid(f"Missing required param: {param}.", param, code="parameter_missing")
            config[name] = None
            continue
        value = as_int(raw[name], param)
        if not low <= value <= high:
            raise invalid(f"Invalid {param}: must be between {low} and {high}.", param)
        config[name] = value
    if config["month"] is not None and interval != "year":
        raise invalid("billing_cycle_anchor_config[month] is only valid with yearly price intervals.",
                      "billing_cycle_anchor_config[month]")
    return config


@route("POST", "/v1/subscriptions")
def create_subscription(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    customer_id = require(params, "customer")
    fetch(state, "customer", customer_id, "customer", "customer")
    specs = [as_dict(s, "items") for s in as_list(require(params, "items"), "items")]
    if not specs:
        raise invalid("Missing required param: items.", "items", code="parameter_missing")
    first = _item_price(state, specs[0], 0, None, None)
    interval = (first["recurring"]["interval"], first["recurring"]["interval_count"])
    for i, spec in enumerate(specs[1:], 1):   # every item before anything is created: no half-made subscription
        _item_price(state, spec, i, first["currency"], interval)
    other = next((s for s in state.all("subscription") if s["customer"] == customer_id
                  and s["status"] not in billing.ENDED_STATUSES and s["currency"] != first["currency"]), None)
    if other is not None:
        # Stripe (multi-currency customers): "You can't have two active subscriptions with different currencies"
        raise invalid(f"You cannot combine currencies on a single customer. This customer has an active subscription "
                      f"({other['id']}) with currency {other['currency']}.", "currency")
    now = state.customer_now(customer_id)
    start = as_int(params["backdate_start_date"], "backdate_start_date") if params.get("backdate_start_date") else now
    anchor_config = _anchor_config(params, interval[0])
    if anchor_config is not None:
        anchor = first_occurrence(start, anchor_config["day_of_month"], anchor_config["hour"] or 0,
                                  anchor_config["minute"] or 0, anchor_config["second"] or 0, anchor_config["month"])
    elif params.get("billing_cycle_anchor"):
        anchor = as_int(params["billing_cycle_anchor"], "billing_cycle_anchor")
    elif start < now:
        # Stripe anchors it at the creation and invoices the backdated time as a proration at once
        raise invalid("The sandbox does not model a backdated subscription without billing_cycle_anchor or "
                      "billing_cycle_anchor_config (Stripe anchors it at its creation).", "backdate_start_date")
    else:
        anchor = start
    if anchor < start:
        raise invalid("billing_cycle_anchor cannot be earlier than the start of the subscription.", "billing_cycle_anchor")
    # from the creation: a subscription backdated to Sep 1 on Oct 15 may be anchored on Nov 1
    if anchor > add_interval(now, interval[0], interval[1], 1):
        raise invalid("billing_cycle_anchor cannot be later than the next natural billing date.", "billing_cycle_anchor")
    collection = choice(
        params.get("collection_method", "charge_automatically"), ("charge_automatically", "send_invoice"), "collection_method"
    )
    if params.get("days_until_due") and collection != "send_invoice":
        # spec: "Valid only for subscriptions where collection_method is set to send_invoice"
        raise invalid("days_until_due is only valid with collection_method=send_invoice.", "days_until_due")
    proration_behavior = choice(params.get("proration_behavior", "create_prorations"),
                                ("always_invoice", "create_prorations", "none"), "proration_behavior")
    # the first period runs to the anchor (for a backdated start that may be more than one interval)
    day = anchor_config["day_of_month"] if anchor_config else None
    period_end = anchor if anchor > start else next_boundary(anchor, interval[0], interval[1], start, day)
    if proration_behavior != "none" and start < previous_boundary(anchor, interval[0], interval[1], period_end, day):
        # more than one anchor cycle: Stripe charges it as one prorated line, by a rule its docs give
        # for less than an interval only
        raise invalid("The sandbox does not model charging a backdated first period longer than one interval; "
                      "pass proration_behavior=none or a later backdate_start_date.", "backdate_start_date")
    customer = state.get("customer", customer_id)
    sub: dict[str, Any] = {
        "id": new_id("sub_"),
        "object": "subscription",
        "application": None,
        "application_fee_percent": None,
        "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
        "billing_cycle_anchor": anchor,
        "billing_cycle_anchor_config": anchor_config,
        "billing_mode": {"type": "classic"},
        "billing_schedules": [],
        "billing_thresholds": None,
        "cancel_at": None,
        "cancel_at_period_end": as_bool(params.get("cancel_at_period_end", False), "cancel_at_period_end"),
        "canceled_at": None,
        "cancellation_details": {"comment": None, "feedback": None, "reason": None},
        "collection_method": collection,
        "created": now,
        "currency": first["currency"],
        "customer": customer_id,
        "days_until_due": as_int(params["days_until_due"], "days_until_due") if params.get("days_until_due") else None,
        "default_payment_method": params.get("default_payment_method") or None,
        "default_source": None,
        "default_tax_rates": [],
        "description": params.get("description") or None,
        "discounts": [],
        "ended_at": None,
        "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
        "latest_invoice": None,
        "livemode": False,
        "metadata": update_metadata({}, params.get("metadata")),
        "next_pending_invoice_item_invoice": None,
        "on_behalf_of": None,
        "pause_collection": None,
        "pending_invoice_item_interval": None,
        "pending_setup_intent": None,
        "pending_update": None,
        "schedule": None,
        "start_date": start,
        "status": "active",
        "test_clock": customer.get("test_clock"),
        "transfer_data": None,
        "trial_end": None,
        "trial_start": None,
        "_items": [],
        "_interval": list(interval),
        "_period_start": start,
        "_period_end": period_end,
    }
    for item in [_build_item(state, sub, spec, start, i) for i, spec in enumerate(specs)]:
        _add_item(state, sub, item)
    state.add(sub)
    if customer.get("currency") is None:
        customer["currency"] = sub["currency"]
    billing.create_initial_invoice(state, sub, start, req.event_request(), proration_behavior)
    # after the first charge, so the event shows the status the creation ends in (incomplete when it
    # failed), as Stripe's does, and its latest_invoice
    state.record_event("customer.subscription.created", sub, request=req.event_request())
    return public(state, sub, params)


@route("GET", "/v1/subscriptions/{subscription_exposed_id}")
def retrieve_subscription(state: State, req: Request, subscription_exposed_id: str) -> dict[str, Any]:
    return public(state, fetch(state, "subscription", subscription_exposed_id, "subscription"), req.params)


def _refuse_changes(sub: dict[str, Any] | None, beyond_metadata: bool) -> None:
    """A canceled subscription changes nothing but its metadata (the sandbox takes no
    cancellation_details); nor does an incomplete one (spec, subscription.status: "A subscription in this
    status can only have metadata and default_source updated"; the sandbox takes no default_source at
    all), through its own route or its items'."""
    if sub is None or not beyond_metadata:
        return
    if sub["status"] == "canceled":
        raise invalid("A canceled subscription can only update its cancellation_details and metadata.", None)
    if sub["status"] == "incomplete":
        raise invalid("A subscription in status incomplete can only have metadata and default_source updated.", None)


def _check_item_specs(state: State, sub: dict[str, Any], specs: list[dict[str, Any]]) -> None:
    """Refuse an update's items as applying them would, every field, before any of them (or the
    subscription's own fields) changes."""
    for i, spec in enumerate(specs):
        if not spec.get("id"):
            _build_item(state, sub, spec, 0, i)
            continue
        item = fetch(state, "subscription_item", spec["id"], "subscription item", f"items[{i}][id]")
        if item["subscription"] != sub["id"]:
            raise invalid("That subscription item belongs to another subscription.", f"items[{i}][id]")
        if as_bool(spec.get("deleted", False), "deleted"):
            continue
        if spec.get("price") and spec["price"] != item["_price"]:   # the new item a price change makes
            _build_item(state, sub, {"price": spec["price"], "metadata": item["metadata"]}, 0, i)
        else:
            _item_changes(item, spec, f"items[{i}][quantity]")


def _item_changes(item: dict[str, Any], spec: dict[str, Any], quantity_param: str) -> dict[str, Any]:
    """The metadata and quantity `spec` gives an existing item, refused as Stripe would."""
    changes: dict[str, Any] = {"metadata": update_metadata(item["metadata"], spec.get("metadata"))}
    if spec.get("quantity") not in (None, ""):
        changes["quantity"] = as_int(spec["quantity"], quantity_param)
    return changes


@route("POST", "/v1/subscriptions/{subscription_exposed_id}")
def update_subscription(state: State, req: Request, subscription_exposed_id: str) -> dict[str, Any]:
    sub = fetch(state, "subscription", subscription_exposed_id, "subscription")
    params = req.params
    _refuse_changes(sub, bool(set(params) - {"metadata", "expand"}))
    reject_all_but(params, SUBSCRIPTION_UPDATE)
    specs = [as_dict(spec, f"items[{i}]") for i, spec in enumerate(as_list(params.get("items"), "items"))]
    for i, spec in enumerate(specs):
        reject_all_but(spec, ITEM_UPDATE, within=f"items[{i}]")
    current = [state.get("subscription_item", spec["id"]) if spec.get("id") else None for spec in specs]
    _no_proration(params, any(_changes_licensed(state, item, spec) for item, spec in zip(current, specs)
                              if item is not None or not spec.get("id")))
    _check_item_specs(state, sub, specs)   # every item before anything changes: a refused update changes nothing
    metadata = update_metadata(sub["metadata"], params.get("metadata"))
    cancel = as_bool(params["cancel_at_period_end"], "cancel_at_period_end") if "cancel_at_period_end" in params else None
    before = state.render(sub)
    now = state.customer_now(sub["customer"])
    sub["metadata"] = metadata
    if cancel is not None:
        sub["cancel_at_period_end"] = cancel
        sub["canceled_at"] = now if cancel else None
    if "description" in params:
        sub["description"] = params["description"] or None
    for i, spec in enumerate(specs):
        if spec.get("id"):
            item = state.get("subscription_item", spec["id"])   # ours: _check_item_specs fetched each one
            if as_bool(spec.get("deleted", False), "deleted"):
                item["_ended"] = now
            elif spec.get("price") and spec["price"] != item["_price"]:
                # A price change ends the old item's usage window and starts a new item.
                item["_ended"] = now
                _new_item(state, sub, {"price": spec["price"], "metadata": item["metadata"]}, now, i)
            else:
                item.update(_item_changes(item, spec, f"items[{i}][quantity]"))
        else:
            _new_item(state, sub, spec, now, i)
    after = state.render(sub)
    previous = {k: before[k] for k in before if before[k] != after.get(k)}
    state.dirty = True
    if previous:
        state.record_event("customer.subscription.updated", sub, previous, req.event_request())
    return public(state, sub, params)


@route("DELETE", "/v1/subscriptions/{subscription_exposed_id}")
def cancel_subscription(state: State, req: Request, subscription_exposed_id: str) -> dict[str, Any]:
    sub = fetch(state, "subscription", subscription_exposed_id, "subscription")
    if sub["status"] == "canceled":
        raise invalid("This subscription has already been canceled.", None)
    now = state.customer_now(sub["customer"])
    if as_bool(req.params.get("invoice_now", False), "invoice_now"):
        sub["_period_end"] = now
        sub["cancel_at_period_end"] = True
        billing.close_period(state, sub, now)
    else:
        billing.cancel(state, sub, now, req.event_request())
    return public(state, sub, req.params)


@route("GET", "/v1/subscriptions")
def list_subscriptions(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    # since basil a subscription's periods live on its items (see billing.render_item): not modelled here
    reject_unmodelled(params, ("current_period_end", "current_period_start", "customer_account"), UNMODELLED_FILTER)
    accept = created_filter(params)
    customer = params.get("customer")
    status = params.get("status")
    price = params.get("price")
    collection = params.get("collection_method")
    automatic_tax = as_dict(params.get("automatic_tax"), "automatic_tax")
    tax_enabled = as_bool(automatic_tax["enabled"], "automatic_tax[enabled]") if "enabled" in automatic_tax else None
    # spec, GET /v1/subscriptions `test_clock`: "Filter for subscriptions that are associated with the
    # specified test clock. The response will not include subscriptions with test clocks if this and
    # the customer parameter is not set." (the sandbox ignored the parameter and listed them all)
    clock = params.get("test_clock") or None

    def keep(sub: dict[str, Any]) -> bool:
        if customer and sub["customer"] != customer:
            return False
        if clock and sub.get("test_clock") != clock:
            return False
        if not clock and not customer and sub.get("test_clock"):
            return False
        if status == "all":
            pass
        elif status == "ended":
            # spec, GET /v1/subscriptions `status`: "Pass `ended` to find subscriptions that are canceled
            # and subscriptions that are expired due to incomplete payment"
            if sub["status"] not in billing.ENDED_STATUSES:
                return False
        elif status:
            if sub["status"] != status:
                return False
        elif sub["status"] in billing.ENDED_STATUSES:
            return False
        if collection and sub["collection_method"] != collection:
            return False
        if tax_enabled is not None and sub["automatic_tax"]["enabled"] != tax_enabled:
            return False
        # the items it contains: not ended, or ended with the subscription itself (a canceled one's)
        if price and not any(it["_price"] == price and it["_ended"] in (None, sub["ended_at"])
                             for it in (state.get("subscription_item", i) for i in sub["_items"])):
            return False
        return accept(sub["created"])

    return public_list(state, [s for s in state.all("subscription") if keep(s)], params, "/v1/subscriptions")


# -- subscription items ---------------------------------------------------------------------------
@route("GET", "/v1/subscription_items")
def list_subscription_items(state: State, req: Request) -> dict[str, Any]:
    sub_id = require(req.params, "subscription")
    sub = fetch(state, "subscription", sub_id, "subscription", "subscription")
    items = [state.get("subscription_item", i) for i in sub["_items"]]
    items = [i for i in items if i is not None and i.get("_ended") is None]
    return public_list(state, items, req.params, "/v1/subscription_items")


@route("GET", "/v1/subscription_items/{item}")
def retrieve_subscription_item(state: State, req: Request, item: str) -> dict[str, Any]:
    obj = fetch(state, "subscription_item", item, "subscription item")
    return public(state, obj, req.params)


@route("POST", "/v1/subscription_items")
def create_subscription_item(state: State, req: Request) -> dict[str, Any]:
    reject_all_but(req.params, ITEM_CREATE)
    _no_proration(req.params, _changes_licensed(state, None, req.params))
    sub = fetch(state, "subscription", require(req.params, "subscription"), "subscription", "subscription")
    _refuse_changes(sub, True)
    now = state.customer_now(sub["customer"])
    item = _new_item(state, sub, req.params, now, 0)
    state.record_event("customer.subscription.updated", sub, {"items": {"object": "list"}}, req.event_request())
    return public(state, item, req.params)


@route("POST", "/v1/subscription_items/{item}")
def update_subscription_item(state: State, req: Request, item: str) -> dict[str, Any]:
    obj = fetch(state, "subscription_item", item, "subscription item")
    reject_all_but(req.params, ITEM_CHANGE)
    _refuse_changes(state.get("subscription", obj["subscription"]), bool(set(req.params) - {"metadata", "expand"}))
    _no_proration(req.params, _changes_licensed(state, obj, req.params))
    obj.update(_item_changes(obj, req.params, "quantity"))
    state.dirty = True
    return public(state, obj, req.params)


@route("DELETE", "/v1/subscription_items/{item}")
def delete_subscription_item(state: State, req: Request, item: str) -> dict[str, Any]:
    obj = fetch(state, "subscription_item", item, "subscription item")
    reject_all_but(req.params, {"proration_behavior"})
    sub = state.get("subscription", obj["subscription"])
    _refuse_changes(sub, True)
    _no_proration(req.params, _changes_licensed(state, obj, {"deleted": "true"}))
    obj["_ended"] = state.customer_now(sub["customer"]) if sub else state.now()
    state.dirty = True
    if sub is not None:
        state.record_event("customer.subscription.updated", sub, {"items": {"object": "list"}}, req.event_request())
    return {"id": item, "object": "subscription_item", "deleted": True}
