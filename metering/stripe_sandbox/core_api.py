"""Customers, products, prices, webhook endpoints, events and test clocks."""

from __future__ import annotations

import secrets
import string
from typing import Any, Callable

from . import billing
from .api import (
    UNMODELLED_FILTER,
    Request,
    as_bool,
    as_decimal,
    as_dict,
    as_int,
    as_list,
    child_param,
    choice,
    created_filter,
    decimal_string,
    fetch,
    public,
    public_list,
    reject_all_but,
    reject_unmodelled,
    require,
    route,
    update_metadata,
)
from .apierrors import StripeAPIError, invalid, missing_param, not_found
from .store import State, new_id

FAILING_PAYMENT_METHODS = {"pm_card_chargeCustomerFail", "pm_card_chargeDeclined", "pm_card_visa_chargeDeclined"}
PAYMENT_BEHAVIORS = ("succeeds", "fails", "fails_then_succeeds")
MAX_EVENT_TYPES = 20
# Stripe: "The maximum of three years interval allowed (3 years, 36 months, or 156 weeks)"
MAX_INTERVAL_COUNT = {"day": 3 * 365, "week": 156, "month": 36, "year": 3}


def _deleted(ident: str, kind: str) -> dict[str, Any]:
    return {"id": ident, "object": kind, "deleted": True}


def _updated(state: State, obj: dict[str, Any], before: dict[str, Any], req: Request) -> dict[str, Any]:
    """Record `<object>.updated` with the `previous_attributes` that changed since `before` (its render
    before the update), and none when nothing did."""
    after = state.render(obj)
    previous = {k: before[k] for k in before if before[k] != after.get(k)}
    state.dirty = True
    if previous:
        state.record_event(f"{obj['object']}.updated", obj, previous, req.event_request())
    return public(state, obj, req.params)


# -- customers ------------------------------------------------------------------------------------
# what the sandbox models of a customer: any other documented parameter (address, tax_exempt...) would
# be dropped. `balance` (spec: "A negative amount represents a credit that decreases the amount due on an
# invoice; a positive amount increases the amount due") is applied when an invoice is finalized.
CUSTOMER_PARAMS = {"name", "email", "description", "phone", "metadata", "payment_method", "invoice_settings",
                   "preferred_locales", "test_clock", "balance"}


def _customer_fields(customer: dict[str, Any], params: dict[str, Any]) -> None:
    """Apply `params` to `customer`, every one checked first: a refused request changes nothing."""
    reject_all_but(params, CUSTOMER_PARAMS)
    settings = as_dict(params.get("invoice_settings"), "invoice_settings")
    reject_all_but(settings, {"default_payment_method"}, within="invoice_settings")
    metadata = update_metadata(customer["metadata"], params.get("metadata"))
    locales = as_list(params["preferred_locales"], "preferred_locales") if "preferred_locales" in params else None
    balance = as_int(params["balance"], "balance") if params.get("balance") not in (None, "") else None
    for name in ("name", "email", "description", "phone"):
        if name in params:
            customer[name] = params[name] or None
    customer["metadata"] = metadata
    if balance is not None:
        customer["balance"] = balance
    if locales is not None:
        customer["preferred_locales"] = locales
    method = params.get("payment_method") or settings.get("default_payment_method")
    if method:
        customer["_payment_method"] = method


@route("POST", "/v1/customers")
def create_customer(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    clock_id = params.get("test_clock") or None
    if clock_id:
        fetch(state, "test_helpers.test_clock", clock_id, "test_clock", "test_clock")
    now = state.customer_now(None) if not clock_id else state.get("test_helpers.test_clock", clock_id)["frozen_time"]
    customer = {
        "id": new_id("cus_"),
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": now,
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": None,
        "invoice_prefix": "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(8)),
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None, "rendering_options": None},
        "livemode": False,
        "metadata": {},
        "name": None,
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": clock_id,
    }
    _customer_fields(customer, params)
    state.add(customer)
    state.record_event("customer.created", customer, request=req.event_request())
    return public(state, customer, params)


@route("GET", "/v1/customers/{customer}")
def retrieve_customer(state: State, req: Request, customer: str) -> dict[str, Any]:
    if customer in state.deleted_customers:
        return _deleted(customer, "customer")
    return public(state, fetch(state, "customer", customer, "customer"), req.params)


@route("POST", "/v1/customers/{customer}")
def update_customer(state: State, req: Request, customer: str) -> dict[str, Any]:
    obj = fetch(state, "customer", customer, "customer")
    before = state.render(obj)
    _customer_fields(obj, req.params)
    if obj["balance"] != before["balance"]:
        billing.refresh_draft_balances(state, obj["id"])
    return _updated(state, obj, before, req)


def _cancel_subscriptions(state: State, customer: str, request: dict[str, Any] | None) -> None:
    """Stripe: deleting a customer "also immediately cancels any active subscriptions on the customer",
    as DELETE /v1/subscriptions/{id} does (no final invoice), each with its customer.subscription.deleted."""
    now = state.customer_now(customer)
    for sub in state.all("subscription"):
        if sub["customer"] == customer and sub["status"] not in billing.ENDED_STATUSES:
            billing.cancel(state, sub, now, request)


@route("DELETE", "/v1/customers/{customer}")
def delete_customer(state: State, req: Request, customer: str) -> dict[str, Any]:
    obj = fetch(state, "customer", customer, "customer")
    _cancel_subscriptions(state, customer, req.event_request())
    del state.objects["customer"][customer]
    state.deleted_customers.append(customer)
    state.dirty = True
    state.record_event("customer.deleted", obj, request=req.event_request())
    return _deleted(customer, "customer")


@route("GET", "/v1/customers")
def list_customers(state: State, req: Request) -> dict[str, Any]:
    accept = created_filter(req.params)
    email = req.params.get("email")
    # spec, GET /v1/customers `test_clock`: "Provides a list of customers that are associated with the
    # specified test clock. The response will not include customers with test clocks if this parameter
    # is not set." Without it, only customers on no clock (the sandbox listed them all, so a caller
    # that forgot the parameter found customers real Stripe would not show it)
    clock = req.params.get("test_clock") or None
    items = [
        c
        for c in state.all("customer")
        if accept(c["created"]) and (not email or c["email"] == email) and c.get("test_clock") == clock
    ]
    return public_list(state, items, req.params, "/v1/customers")


def payment_behavior(state: State, customer_id: str) -> str:
    """How the customer's card behaves: control override, metadata, or test payment method."""
    if customer_id in state.payment_behavior:
        return state.payment_behavior[customer_id]
    customer = state.get("customer", customer_id) or {}
    metadata = customer.get("metadata") or {}
    for key in ("sandbox_payment_behavior", "payment_behavior"):
        if metadata.get(key) in PAYMENT_BEHAVIORS:
            return metadata[key]
    if customer.get("_payment_method") in FAILING_PAYMENT_METHODS:
        return "fails"
    return "succeeds"


# -- products -------------------------------------------------------------------------------------
@route("POST", "/v1/products")
def create_product(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    now = state.now()
    product = {
        "id": params.get("id") or new_id("prod_"),
        "object": "product",
        "active": as_bool(params.get("active", True), "active"),
        "created": now,
        "default_price": None,
        "description": params.get("description") or None,
        "images": [],
        "livemode": False,
        "marketing_features": [],
        "metadata": update_metadata({}, params.get("metadata")),
        "name": require(params, "name"),
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "unit_label": params.get("unit_label") or None,
        "updated": now,
        "url": None,
    }
    if state.get("product", product["id"]):
        raise invalid("Product already exists.", "id", code="resource_already_exists")
    state.add(product)
    state.record_event("product.created", product, request=req.event_request())
    return public(state, product, params)


@route("GET", "/v1/products/{id}")
def retrieve_product(state: State, req: Request, id: str) -> dict[str, Any]:
    return public(state, fetch(state, "product", id, "product"), req.params)


@route("POST", "/v1/products/{id}")
def update_product(state: State, req: Request, id: str) -> dict[str, Any]:
    product = fetch(state, "product", id, "product")
    params = req.params
    # the rest (default_price, images, url...) would be dropped; every parameter is checked first
    reject_all_but(params, {"name", "description", "unit_label", "active", "metadata"})
    active = as_bool(params["active"], "active") if "active" in params else product["active"]
    metadata = update_metadata(product["metadata"], params.get("metadata"))
    before = state.render(product)
    for name in ("name", "description", "unit_label"):
        if name in params:
            product[name] = params[name] or None
    product["active"], product["metadata"] = active, metadata
    if state.render(product) != before:
        product["updated"] = state.now()
    return _updated(state, product, before, req)


@route("GET", "/v1/products")
def list_products(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    # products are created without shipping or a url (create_product does not model them)
    reject_unmodelled(params, ("shippable", "url"), UNMODELLED_FILTER)
    active = params.get("active")
    accept = created_filter(params)
    ids = as_list(params.get("ids"), "ids")
    if ids and (params.get("starting_after") or params.get("ending_before")):
        # spec, GET /v1/products `ids`: "Cannot be used with starting_after or ending_before."
        raise invalid("You may not use ids with starting_after or ending_before.", "ids")
    items = [
        p
        for p in state.all("product")
        if (active is None or p["active"] == as_bool(active, "active"))
        and (not ids or p["id"] in ids)
        and accept(p["created"])
    ]
    return public_list(state, items, params, "/v1/products")


# -- prices ---------------------------------------------------------------------------------------
def _amount_pair(spec: dict[str, Any], name: str, within: str) -> tuple[int | None, str | None]:
    """``unit_amount`` / ``unit_amount_decimal`` (or flat_amount): integer and decimal forms. ``within``
    names the enclosing parameter (``tiers[0]``), for the errors."""
    whole, dec = spec.get(name), spec.get(f"{name}_decimal")
    param, param_dec = child_param(within, name), child_param(within, f"{name}_decimal")
    if whole not in (None, "") and dec not in (None, ""):
        raise invalid(f"You may only specify one of these parameters: {name}, {name}_decimal.", param)
    if whole not in (None, ""):
        value = as_int(whole, param)
        if value < 0:
            raise invalid(f"Invalid {name}: must be non-negative", param)
        return value, str(value)
    if dec not in (None, ""):
        value = as_decimal(dec, param_dec)
        if value < 0 or -value.as_tuple().exponent > 12:
            raise invalid(f"Invalid {name}_decimal: at most 12 decimal places, non-negative", param_dec)
        return (int(value) if value == value.to_integral_value() else None), decimal_string(value)
    return None, None


def _tiers(params: dict[str, Any]) -> list[dict[str, Any]]:
    tiers = []
    raw = as_list(params.get("tiers"), "tiers")
    if not raw:
        raise invalid("Tiers are required when billing_scheme is tiered.", "tiers", code="parameter_missing")
    previous = 0
    for i, spec in enumerate(raw):
        spec = as_dict(spec, f"tiers[{i}]")
        up_to_raw = spec.get("up_to")
        if up_to_raw in (None, ""):
            raise invalid("Missing required param: up_to.", f"tiers[{i}][up_to]", code="parameter_missing")
        up_to = None if up_to_raw == "inf" else as_int(up_to_raw, f"tiers[{i}][up_to]")
        last = i == len(raw) - 1
        if (up_to is None) != last:
            raise invalid("Only the last tier may have up_to=inf, and it must.", f"tiers[{i}][up_to]")
        if up_to is not None and up_to <= previous:   # the first above 0
            raise invalid("Tiers must be in increasing order of up_to.", f"tiers[{i}][up_to]")
        previous = up_to or previous
        unit, unit_dec = _amount_pair(spec, "unit_amount", f"tiers[{i}]")
        flat, flat_dec = _amount_pair(spec, "flat_amount", f"tiers[{i}]")
        tiers.append(
            {
                "flat_amount": flat,
                "flat_amount_decimal": flat_dec,
                "unit_amount": unit,
                "unit_amount_decimal": unit_dec,
                "up_to": up_to,
            }
        )
    return tiers


def _lookup_key_holder(state: State, params: dict[str, Any], own_id: str | None) -> dict[str, Any] | None:
    """The other price holding the lookup key asked for, when ``transfer_lookup_key`` moves it here;
    refused as Stripe refuses it otherwise (a lookup key names one price)."""
    key = params.get("lookup_key") or None
    holder = next((p for p in state.all("price") if key and p["lookup_key"] == key and p["id"] != own_id), None)
    if holder is not None and not as_bool(params.get("transfer_lookup_key", False), "transfer_lookup_key"):
        raise invalid(f"A price (`{holder['id']}`) already uses that lookup key.", "lookup_key")
    return holder


def _take_lookup_key(state: State, holder: dict[str, Any] | None, req: Request) -> None:
    """Remove the lookup key from the price that held it (``transfer_lookup_key``)."""
    if holder is not None:
        previous = {"lookup_key": holder["lookup_key"]}
        holder["lookup_key"] = None
        state.record_event("price.updated", holder, previous, req.event_request())


@route("POST", "/v1/prices")
def create_price(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    currency = str(require(params, "currency")).lower()
    product_id = params.get("product")
    product_data = params.get("product_data") if not product_id else None
    if not product_id and not isinstance(product_data, dict):
        raise StripeAPIError(400, "Missing required param: product.", code="parameter_missing", param="product", store=False)
    if product_id:
        fetch(state, "product", product_id, "product", "product")
    elif product_data.get("name") in (None, ""):
        raise missing_param("product_data[name]")
    holder = _lookup_key_holder(state, params, None)
    scheme = choice(params.get("billing_scheme", "per_unit"), ("per_unit", "tiered"), "billing_scheme")
    recurring = None
    if params.get("recurring"):
        spec = as_dict(params["recurring"], "recurring")
        usage_type = choice(spec.get("usage_type", "licensed"), ("licensed", "metered"), "recurring[usage_type]")
        meter = spec.get("meter") or None
        if usage_type == "metered":
            if not meter:
                raise invalid(
                    "Metered prices must be backed by a meter: pass recurring[meter].", "recurring[meter]", code="parameter_missing"
                )
            if fetch(state, "billing.meter", meter, "billing meter", "recurring[meter]")["status"] != "active":
                raise invalid("You can't attach a deactivated meter to a price.", "recurring[meter]")
        interval = choice(require(spec, "interval"), tuple(MAX_INTERVAL_COUNT), "recurring[interval]")
        count = as_int(spec.get("interval_count", 1), "recurring[interval_count]")
        if not 1 <= count <= MAX_INTERVAL_COUNT[interval]:
            raise invalid(f"Invalid recurring[interval_count]: between 1 and {MAX_INTERVAL_COUNT[interval]} for "
                          f"interval={interval} (at most three years).", "recurring[interval_count]")
        recurring = {"interval": interval, "interval_count": count, "meter": meter, "usage_type": usage_type}
    price: dict[str, Any] = {
        "id": new_id("price_", 24),
        "object": "price",
        "active": as_bool(params.get("active", True), "active"),
        "billing_scheme": scheme,
        "created": state.now(),
        "currency": currency,
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": params.get("lookup_key") or None,
        "metadata": update_metadata({}, params.get("metadata")),
        "nickname": params.get("nickname") or None,
        "product": None,
        "recurring": recurring,
        "tax_behavior": params.get("tax_behavior") or "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring" if recurring else "one_time",
        "unit_amount": None,
        "unit_amount_decimal": None,
    }
    # a price in several currencies, or one the customer names, would be dropped
    reject_unmodelled(params, ("currency_options", "custom_unit_amount"))
    if scheme == "tiered":
        price["tiers_mode"] = choice(require(params, "tiers_mode"), ("graduated", "volume"), "tiers_mode")
        price["_tiers"] = _tiers(params)
        if params.get("transform_quantity"):
            raise invalid("transform_quantity cannot be combined with tiers.", "transform_quantity")
        # a tiered price's amounts are its tiers': an amount beside them would be dropped
        reject_unmodelled(params, ("unit_amount", "unit_amount_decimal"), "{name} cannot be combined with tiers.")
    else:
        # spec, tiers: "Requires billing_scheme to be set to tiered"; they would be dropped
        reject_unmodelled(params, ("tiers", "tiers_mode"), "{name} requires billing_scheme=tiered.")
        unit, unit_dec = _amount_pair(params, "unit_amount", "")
        if unit_dec is None:
            raise invalid("Missing required param: unit_amount.", "unit_amount", code="parameter_missing")
        price["unit_amount"], price["unit_amount_decimal"] = unit, unit_dec
        if params.get("transform_quantity"):
            spec = as_dict(params["transform_quantity"], "transform_quantity")
            divide_by = as_int(require(spec, "divide_by"), "transform_quantity[divide_by]")
            if divide_by < 1:
                raise invalid("Invalid transform_quantity[divide_by]: must be at least 1.", "transform_quantity[divide_by]")
            price["transform_quantity"] = {
                "divide_by": divide_by,
                "round": choice(require(spec, "round"), ("up", "down"), "transform_quantity[round]"),
            }
    # the product last: a refused price creates none (and a retry with its key none either)
    price["product"] = product_id or create_product(
        state, Request("POST", "/v1/products", product_data, request_id=req.request_id))["id"]
    _take_lookup_key(state, holder, req)
    state.add(price)
    state.record_event("price.created", price, request=req.event_request())
    return public(state, price, params)


@route("GET", "/v1/prices/{price}")
def retrieve_price(state: State, req: Request, price: str) -> dict[str, Any]:
    return public(state, fetch(state, "price", price, "price"), req.params)


@route("POST", "/v1/prices/{price}")
def update_price(state: State, req: Request, price: str) -> dict[str, Any]:
    obj = fetch(state, "price", price, "price")
    params = req.params
    # tax_behavior and currency_options would be dropped; every parameter is checked first
    reject_all_but(params, {"active", "nickname", "lookup_key", "transfer_lookup_key", "metadata"})
    holder = _lookup_key_holder(state, params, obj["id"]) if "lookup_key" in params else None
    active = as_bool(params["active"], "active") if "active" in params else obj["active"]
    metadata = update_metadata(obj["metadata"], params.get("metadata"))
    before = state.render(obj)
    _take_lookup_key(state, holder, req)
    obj["active"], obj["metadata"] = active, metadata
    for name in ("nickname", "lookup_key"):
        if name in params:
            obj[name] = params[name] or None
    return _updated(state, obj, before, req)


@route("GET", "/v1/prices")
def list_prices(state: State, req: Request) -> dict[str, Any]:
    params = dict(req.params)
    reject_unmodelled(params, ("recurring",), UNMODELLED_FILTER)
    product, active = params.get("product"), params.get("active")
    kind, currency = params.get("type"), str(params.get("currency") or "").lower()
    accept = created_filter(params)
    lookup_keys = as_list(params.get("lookup_keys"), "lookup_keys")
    items = [
        p
        for p in state.all("price")
        if (not product or p["product"] == product)
        and (active is None or p["active"] == as_bool(active, "active"))
        and (not lookup_keys or p["lookup_key"] in lookup_keys)
        and (not kind or p["type"] == kind)
        and (not currency or p["currency"] == currency)
        and accept(p["created"])
    ]
    return public_list(state, items, params, "/v1/prices")


# -- webhook endpoints ----------------------------------------------------------------------------
@route("POST", "/v1/webhook_endpoints")
def create_webhook_endpoint(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    url = require(params, "url")
    events = as_list(require(params, "enabled_events"), "enabled_events")
    endpoint = {
        "id": new_id("we_", 24),
        "object": "webhook_endpoint",
        "api_version": params.get("api_version") or None,
        "application": None,
        "created": state.now(),
        "description": params.get("description") or None,
        "enabled_events": events,
        "livemode": False,
        "metadata": update_metadata({}, params.get("metadata")),
        "status": "enabled",
        "url": url,
    }
    secret = "whsec_" + secrets.token_hex(16)
    state.webhook_secrets[endpoint["id"]] = secret
    state.add(endpoint)
    body = public(state, endpoint, params)
    body["secret"] = secret  # only on create, as at Stripe
    return body


@route("GET", "/v1/webhook_endpoints/{webhook_endpoint}")
def retrieve_webhook_endpoint(state: State, req: Request, webhook_endpoint: str) -> dict[str, Any]:
    return public(state, fetch(state, "webhook_endpoint", webhook_endpoint, "webhook endpoint"), req.params)


@route("POST", "/v1/webhook_endpoints/{webhook_endpoint}")
def update_webhook_endpoint(state: State, req: Request, webhook_endpoint: str) -> dict[str, Any]:
    obj = fetch(state, "webhook_endpoint", webhook_endpoint, "webhook endpoint")
    params = req.params
    if "url" in params:
        obj["url"] = params["url"]
    if "enabled_events" in params:
        obj["enabled_events"] = as_list(params["enabled_events"], "enabled_events")
    if "description" in params:
        obj["description"] = params["description"] or None
    if "disabled" in params:
        obj["status"] = "disabled" if as_bool(params["disabled"], "disabled") else "enabled"
    obj["metadata"] = update_metadata(obj["metadata"], params.get("metadata"))
    state.dirty = True
    return public(state, obj, params)


@route("DELETE", "/v1/webhook_endpoints/{webhook_endpoint}")
def delete_webhook_endpoint(state: State, req: Request, webhook_endpoint: str) -> dict[str, Any]:
    fetch(state, "webhook_endpoint", webhook_endpoint, "webhook endpoint")
    del state.objects["webhook_endpoint"][webhook_endpoint]
    state.dirty = True
    return _deleted(webhook_endpoint, "webhook_endpoint")


@route("GET", "/v1/webhook_endpoints")
def list_webhook_endpoints(state: State, req: Request) -> dict[str, Any]:
    return public_list(state, state.all("webhook_endpoint"), req.params, "/v1/webhook_endpoints")


# -- events ---------------------------------------------------------------------------------------
def _type_matcher(params: dict[str, Any]) -> Callable[[str], bool]:
    single = params.get("type")
    types = as_list(params.get("types"), "types")
    if single and types:
        raise invalid("You may only specify one of these parameters: type, types.", "type")
    if len(types) > MAX_EVENT_TYPES:
        # spec, GET /v1/events `types`: "An array of up to 20 strings containing specific event names."
        raise invalid(f"Invalid array: types must have at most {MAX_EVENT_TYPES} elements.", "types")

    def match_one(pattern: str, value: str) -> bool:
        if pattern.endswith(".*"):
            return value.startswith(pattern[:-1])
        return pattern == value

    if single:
        return lambda t: match_one(single, t)
    if types:
        return lambda t: any(match_one(p, t) for p in types)
    return lambda t: True


@route("GET", "/v1/events")
def list_events(state: State, req: Request) -> dict[str, Any]:
    # webhook deliveries are not tracked per event: a filter on them would return unfiltered data
    reject_unmodelled(req.params, ("delivery_success",), UNMODELLED_FILTER)
    accept = created_filter(req.params)
    match = _type_matcher(req.params)
    oldest = state.now() - state.config.events_window
    items = [e for e in state.all("event") if e["created"] >= oldest and accept(e["created"]) and match(e["type"])]
    return public_list(state, items, req.params, "/v1/events")


@route("GET", "/v1/events/{id}")
def retrieve_event(state: State, req: Request, id: str) -> dict[str, Any]:
    event = state.get("event", id)
    if event is None or event["created"] < state.now() - state.config.events_window:
        raise not_found("event", id)
    return public(state, event, req.params)


# -- test clocks ----------------------------------------------------------------------------------
@route("POST", "/v1/test_helpers/test_clocks")
def create_test_clock(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    now = state.now()
    clock = {
        "id": new_id("clock_", 24),
        "object": "test_helpers.test_clock",
        "created": now,
        "deletes_after": now + 30 * 24 * 3600,
        "frozen_time": as_int(require(params, "frozen_time"), "frozen_time"),
        "livemode": False,
        "name": params.get("name") or None,
        "status": "ready",
        "status_details": {},
    }
    state.add(clock)
    state.record_event("test_helpers.test_clock.created", clock, request=req.event_request())
    return public(state, clock, params)


@route("GET", "/v1/test_helpers/test_clocks/{test_clock}")
def retrieve_test_clock(state: State, req: Request, test_clock: str) -> dict[str, Any]:
    return public(state, fetch(state, "test_helpers.test_clock", test_clock, "test_clock"), req.params)


@route("GET", "/v1/test_helpers/test_clocks")
def list_test_clocks(state: State, req: Request) -> dict[str, Any]:
    return public_list(state, state.all("test_helpers.test_clock"), req.params, "/v1/test_helpers/test_clocks")


@route("DELETE", "/v1/test_helpers/test_clocks/{test_clock}")
def delete_test_clock(state: State, req: Request, test_clock: str) -> dict[str, Any]:
    fetch(state, "test_helpers.test_clock", test_clock, "test_clock")
    del state.objects["test_helpers.test_clock"][test_clock]
    for customer in [c for c in state.all("customer") if c.get("test_clock") == test_clock]:
        del state.objects["customer"][customer["id"]]
    state.dirty = True
    return _deleted(test_clock, "test_helpers.test_clock")


@route("POST", "/v1/test_helpers/test_clocks/{test_clock}/advance")
def advance_test_clock(state: State, req: Request, test_clock: str) -> dict[str, Any]:
    clock = fetch(state, "test_helpers.test_clock", test_clock, "test_clock")
    target = as_int(require(req.params, "frozen_time"), "frozen_time")
    if target <= clock["frozen_time"]:
        raise invalid(
            "The test clock can only be advanced to a time later than its current frozen_time.", "frozen_time"
        )
    clock["status"] = "advancing"
    clock["status_details"] = {"advancing": {"target_frozen_time": target}}
    state.record_event("test_helpers.test_clock.advancing", clock, request=req.event_request())
    # Billing runs synchronously: every due period end, finalization and payment retry between the
    # old and the new frozen_time happens in time order, each at its own instant.
    billing.run_until(state, target, clock_id=test_clock)
    clock["frozen_time"] = target
    clock["status"] = "ready"
    clock["status_details"] = {}
    state.dirty = True
    state.record_event("test_helpers.test_clock.ready", clock)
    return public(state, clock, req.params)

