"""Billing meters, meter events, meter event adjustments and meter event summaries.

Aggregation (used by both the summaries endpoint and invoicing):
- only events that were not cancelled and whose ``timestamp`` lies in ``[start, end)``;
- on a pre-aggregated meter (``event_time_window`` hour/day), only the most recently *received*
  event of each window counts: a newer event overwrites the older one;
- then the meter's formula: ``sum`` of values, ``count`` of events, ``last`` value by timestamp.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from .api import (
    Request,
    as_decimal,
    as_dict,
    as_int,
    choice,
    decimal_string,
    fetch,
    paginate,
    public,
    public_list,
    require,
    route,
)
from .apierrors import StripeAPIError, invalid, not_found
from .store import State, new_id

MAX_PAST = 35 * 24 * 3600
MAX_VALUE_DIGITS = 15  # significant digits (API 2026-04-22.dahlia on: "billing meter event values validation")
MAX_FUTURE = 5 * 60
WINDOW_SECONDS = {"hour": 3600, "day": 86400}


# -- meters ---------------------------------------------------------------------------------------
def active_meter(state: State, event_name: str) -> dict[str, Any] | None:
    for meter in state.objects["billing.meter"].values():
        if meter["event_name"] == event_name and meter["status"] == "active":
            return meter
    return None


@route("POST", "/v1/billing/meters")
def create_meter(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    event_name = require(params, "event_name")
    if len(event_name) > 100:
        raise invalid("event_name must be at most 100 characters.", "event_name")
    if any(m["event_name"] == event_name for m in state.objects["billing.meter"].values()):
        raise invalid(f"A meter with event_name '{event_name}' already exists.", "event_name", code="resource_already_exists")
    aggregation = as_dict(require(params, "default_aggregation"), "default_aggregation")
    formula = choice(aggregation.get("formula"), ("sum", "count", "last"), "default_aggregation[formula]")
    mapping = as_dict(params.get("customer_mapping"), "customer_mapping")
    value_settings = as_dict(params.get("value_settings"), "value_settings")
    window = params.get("event_time_window") or None
    if window is not None:
        choice(window, ("hour", "day"), "event_time_window")
    now = state.now()
    meter = {
        "id": new_id("mtr_test_", 24),
        "object": "billing.meter",
        "created": now,
        "customer_mapping": {
            "event_payload_key": mapping.get("event_payload_key") or "stripe_customer_id",
            "type": choice(mapping.get("type", "by_id"), ("by_id",), "customer_mapping[type]"),
        },
        "default_aggregation": {"formula": formula},
        "display_name": require(params, "display_name"),
        "event_name": event_name,
        "event_time_window": window,
        "livemode": False,
        "status": "active",
        "status_transitions": {"deactivated_at": None},
        "updated": now,
        "value_settings": {"event_payload_key": value_settings.get("event_payload_key") or "value"},
    }
    state.add(meter)
    state.record_event("billing.meter.created", meter, request=req.event_request())
    return public(state, meter, params)


@route("GET", "/v1/billing/meters/{id}")
def retrieve_meter(state: State, req: Request, id: str) -> dict[str, Any]:
    return public(state, fetch(state, "billing.meter", id, "billing meter"), req.params)


@route("POST", "/v1/billing/meters/{id}")
def update_meter(state: State, req: Request, id: str) -> dict[str, Any]:
    meter = fetch(state, "billing.meter", id, "billing meter")
    for name in req.params:
        if name not in ("display_name", "expand"):
            raise invalid(f"Received unknown parameter: {name}", name, code="parameter_unknown")
    if "display_name" in req.params:
        meter["display_name"] = req.params["display_name"]
        meter["updated"] = state.now()
        state.dirty = True
        state.record_event("billing.meter.updated", meter, request=req.event_request())
    return public(state, meter, req.params)


def _set_status(state: State, req: Request, id: str, status: str) -> dict[str, Any]:
    meter = fetch(state, "billing.meter", id, "billing meter")
    if status == "active" and meter["status"] != "active" and active_meter(state, meter["event_name"]):
        raise invalid("Another active meter already uses this event_name.", "id")
    now = state.now()
    meter["status"] = status
    meter["status_transitions"]["deactivated_at"] = now if status == "inactive" else None
    meter["updated"] = now
    state.dirty = True
    kind = "deactivated" if status == "inactive" else "reactivated"
    state.record_event(f"billing.meter.{kind}", meter, request=req.event_request())
    return public(state, meter, req.params)


@route("POST", "/v1/billing/meters/{id}/deactivate")
def deactivate_meter(state: State, req: Request, id: str) -> dict[str, Any]:
    return _set_status(state, req, id, "inactive")


@route("POST", "/v1/billing/meters/{id}/reactivate")
def reactivate_meter(state: State, req: Request, id: str) -> dict[str, Any]:
    return _set_status(state, req, id, "active")


@route("GET", "/v1/billing/meters")
def list_meters(state: State, req: Request) -> dict[str, Any]:
    status = req.params.get("status")
    items = [m for m in state.all("billing.meter") if not status or m["status"] == status]
    return public_list(state, items, req.params, "/v1/billing/meters")


# -- meter events ---------------------------------------------------------------------------------
def concurrency_key(state: State, params: dict[str, Any]) -> str | None:
    """The (customer, event_name) slot a meter event call occupies: one call at a time each."""
    event_name = params.get("event_name")
    payload = params.get("payload")
    if not isinstance(event_name, str) or not isinstance(payload, dict):
        return None
    meter = active_meter(state, event_name)
    key = meter["customer_mapping"]["event_payload_key"] if meter else "stripe_customer_id"
    return f"{payload.get(key)}|{event_name}"


@route("POST", "/v1/billing/meter_events")
def create_meter_event(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    event_name = require(params, "event_name")
    payload = params.get("payload")
    if not isinstance(payload, dict) or not payload:
        raise StripeAPIError(400, "Missing required param: payload.", code="parameter_missing", param="payload", store=False)
    meter = active_meter(state, event_name)
    customer_key = meter["customer_mapping"]["event_payload_key"] if meter else "stripe_customer_id"
    value_key = meter["value_settings"]["event_payload_key"] if meter else "value"
    customer_id = payload.get(customer_key)
    if not customer_id:
        raise invalid(f"Missing required payload key: {customer_key}.", f"payload[{customer_key}]", code="parameter_missing")
    raw_value = payload.get(value_key)
    if meter and meter["default_aggregation"]["formula"] == "count" and raw_value in (None, ""):
        value = Decimal(1)
    elif raw_value in (None, ""):
        raise invalid(f"Missing required payload key: {value_key}.", f"payload[{value_key}]", code="parameter_missing")
    else:
        value = as_decimal(raw_value, f"payload[{value_key}]")
        if len(value.normalize().as_tuple().digits) > MAX_VALUE_DIGITS:
            raise invalid(f"The value in the event payload can have at most {MAX_VALUE_DIGITS} digits. Received {raw_value}.",
                          f"payload[{value_key}]", code="meter_event_value_too_many_digits")
    now = state.customer_now(customer_id if state.get("customer", customer_id) else None)
    timestamp = as_int(params["timestamp"], "timestamp") if params.get("timestamp") not in (None, "") else now
    if timestamp < now - MAX_PAST:
        raise invalid(
            "Timestamp must be within the past 35 days.", "timestamp", code="timestamp_too_far_in_past", store=True
        )
    if timestamp > now + MAX_FUTURE:
        raise invalid(
            "Timestamp must be no more than 5 minutes in the future.", "timestamp", code="timestamp_in_future", store=True
        )
    identifier = params.get("identifier") or str(uuid.uuid4())
    if len(identifier) > 100:
        raise invalid("identifier must be at most 100 characters.", "identifier")
    received = state.now()
    previous = state.identifiers.get(identifier)
    if previous is not None and previous["received"] > received - state.config.identifier_ttl:
        raise StripeAPIError(
            400,
            f"An event already exists with identifier {identifier}.",
            param="identifier",
            headers={"Stripe-Should-Retry": "false"},
        )
    record = {
        "identifier": identifier,
        "event_name": event_name,
        "customer": customer_id,
        "value": decimal_string(value),
        "timestamp": timestamp,
        "received": received,
        "seq": state.next_seq(),
        "canceled": False,
        "payload": {str(k): str(v) for k, v in payload.items()},
    }
    if meter is None:
        state.meter_errors.append({"type": "no_meter_found", "identifier": identifier, "event_name": event_name})
        state.uncounted_events.append(record)
    elif state.get("customer", customer_id) is None:
        state.meter_errors.append({"type": "customer_not_found", "identifier": identifier, "customer": customer_id})
        state.uncounted_events.append(record)
    else:
        state.meter_events.setdefault(event_name, {}).setdefault(customer_id, []).append(record)
    state.identifiers[identifier] = record
    state.dirty = True
    return {
        "object": "billing.meter_event",
        "created": received,
        "event_name": event_name,
        "identifier": identifier,
        "livemode": False,
        "payload": record["payload"],
        "timestamp": timestamp,
    }


@route("POST", "/v1/billing/meter_event_adjustments")
def create_meter_event_adjustment(state: State, req: Request) -> dict[str, Any]:
    params = req.params
    event_name = require(params, "event_name")
    choice(require(params, "type"), ("cancel",), "type")  # required by the spec: no default
    identifier = as_dict(require(params, "cancel"), "cancel").get("identifier")
    if not identifier:
        raise invalid("Missing required param: cancel[identifier].", "cancel[identifier]", code="parameter_missing")
    record = state.identifiers.get(identifier)
    if record is None or record["event_name"] != event_name:
        raise not_found("meter event with identifier", identifier, "cancel[identifier]")
    if record["received"] < state.now() - 24 * 3600:
        raise invalid("Only meter events received in the last 24 hours can be cancelled.", "cancel[identifier]")
    record["canceled"] = True
    adjustment = {
        "object": "billing.meter_event_adjustment",
        "cancel": {"identifier": identifier},
        "event_name": event_name,
        "livemode": False,
        "status": "complete",
        "type": "cancel",
    }
    state.adjustments.append(adjustment)
    state.dirty = True
    return adjustment


# -- aggregation ----------------------------------------------------------------------------------
def counted_events(state: State, meter: dict[str, Any], customer: str, start: int, end: int,
                   received_by: int | None = None) -> list[dict[str, Any]]:
    """The events that count for ``customer`` in ``[start, end)`` after cancellations and window overwrite;
    with ``received_by``, as they stood then (an event received later neither counts nor overwrites)."""
    records = [
        r
        for r in state.meter_events.get(meter["event_name"], {}).get(customer, ())
        if not r["canceled"] and start <= r["timestamp"] < end and (received_by is None or r["received"] <= received_by)
    ]
    window = meter.get("event_time_window")
    if window:
        size = WINDOW_SECONDS[window]
        latest: dict[int, dict[str, Any]] = {}
        for record in records:
            bucket = record["timestamp"] - record["timestamp"] % size
            if bucket not in latest or record["seq"] > latest[bucket]["seq"]:
                latest[bucket] = record
        records = list(latest.values())
    return records


def aggregate(meter: dict[str, Any], records: list[dict[str, Any]]) -> Decimal:
    formula = meter["default_aggregation"]["formula"]
    if formula == "count":
        return Decimal(len(records))
    if formula == "last":
        if not records:
            return Decimal(0)
        return Decimal(max(records, key=lambda r: (r["timestamp"], r["seq"]))["value"])
    return sum((Decimal(r["value"]) for r in records), Decimal(0))


def usage(state: State, meter_id: str, customer: str, start: int, end: int) -> Decimal:
    meter = state.get("billing.meter", meter_id)
    if meter is None:
        return Decimal(0)
    return aggregate(meter, counted_events(state, meter, customer, start, end))


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


@route("GET", "/v1/billing/meters/{id}/event_summaries")
def list_event_summaries(state: State, req: Request, id: str) -> dict[str, Any]:
    meter = fetch(state, "billing.meter", id, "billing meter")
    params = req.params
    customer = require(params, "customer")
    start = as_int(require(params, "start_time"), "start_time")
    end = as_int(require(params, "end_time"), "end_time")
    for name, value in (("start_time", start), ("end_time", end)):
        if value % 60:
            raise invalid(f"{name} must be aligned to a minute boundary.", name)
    if end <= start:
        raise invalid("end_time must be after start_time.", "end_time")
    grouping = params.get("value_grouping_window")
    if grouping:
        choice(grouping, ("hour", "day"), "value_grouping_window")
        size = WINDOW_SECONDS[grouping]
        if grouping == "day" and (start % 86400 or end % 86400):
            raise invalid("start_time and end_time must be aligned to UTC midnight for value_grouping_window=day.", "start_time")
        if grouping == "hour" and (start % 3600 or end % 3600):
            raise invalid("start_time and end_time must be aligned to an hour for value_grouping_window=hour.", "start_time")
        windows = [(t, min(t + size, end)) for t in range(start, end, size)]
    else:
        windows = [(start, end)]
    # eventual consistency: recent events are not in summaries yet (invoices see them all), and an
    # event not yet visible does not overwrite its window's earlier one either: the summary shows the
    # window as it stood, never a state that did not exist
    lag = state.config.summary_lag
    records = counted_events(state, meter, customer, start, end, state.now() - lag if lag else None)
    summaries = []
    for lo, hi in windows:
        inside = [r for r in records if lo <= r["timestamp"] < hi]
        if grouping and not inside:
            continue
        summaries.append(
            {
                "id": f"mtrusg_test_{id[-12:]}{customer[-8:]}{lo}",
                "object": "billing.meter_event_summary",
                "aggregated_value": _number(aggregate(meter, inside)),
                "end_time": hi,
                "livemode": False,
                "meter": id,
                "start_time": lo,
            }
        )
    # Newest window first, as Stripe's documented example lists them (the hourly example puts the
    # later hour first); until the twenty-first session the sandbox listed the oldest first.
    summaries.reverse()
    return paginate(summaries, params, f"/v1/billing/meters/{id}/event_summaries")
