"""Meter events: identifier de-duplication, pre-aggregated windows, timestamp bounds, the
one-call-per-customer-and-meter limit, cancellations and summaries."""

from __future__ import annotations

import threading

import httpx
import pytest
import stripe

from conftest import in_flight, metered_price, ts, wait_until

T0 = ts("2026-10-10T00:00:00")


def _event(client, meter, customer, value, timestamp, identifier=None):
    params = {"event_name": meter.event_name, "payload": {"stripe_customer_id": customer, "value": str(value)}, "timestamp": timestamp}
    if identifier:
        params["identifier"] = identifier
    return client.v1.billing.meter_events.create(params)


def _summary(client, meter, customer, start, end, window=None):
    params = {"customer": customer, "start_time": start, "end_time": end}
    if window:
        params["value_grouping_window"] = window
    return [(s.start_time, s.end_time, s.aggregated_value) for s in client.v1.billing.meters.event_summaries.list(meter.id, params).data]


def test_an_identifier_is_accepted_once_within_a_rolling_24_hours(sb, client):
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, 5, T0, identifier="usage-1")
    with pytest.raises(stripe.InvalidRequestError) as info:
        _event(client, meter, customer, 5, T0, identifier="usage-1")
    assert "already exists with identifier usage-1" in info.value.user_message
    assert info.value.headers.get("Stripe-Should-Retry") == "false"
    sb.set_now(T0 + 24 * 3600 - 1)
    with pytest.raises(stripe.InvalidRequestError):
        _event(client, meter, customer, 5, T0, identifier="usage-1")
    sb.set_now(T0 + 24 * 3600)
    _event(client, meter, customer, 5, T0, identifier="usage-1")  # the window has rolled on
    assert _summary(client, meter, customer, T0 - 86400, T0 + 86400) == [(T0 - 86400, T0 + 86400, 10)]


def test_a_newer_event_in_the_same_window_replaces_the_older_one(sb, client):
    sb.set_now(T0 + 5 * 3600)
    meter, _ = metered_price(client, window="hour")
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, 10, T0 + 3600 + 60)  # 01:01
    _event(client, meter, customer, 4, T0 + 3600)  # 01:00, received later: replaces 10
    _event(client, meter, customer, 3, T0 + 2 * 3600 + 59 * 60)  # 02:59, another window
    assert _summary(client, meter, customer, T0, T0 + 4 * 3600, "hour") == [   # newest window first
        (T0 + 2 * 3600, T0 + 3 * 3600, 3),
        (T0 + 3600, T0 + 2 * 3600, 4),
    ]
    assert _summary(client, meter, customer, T0, T0 + 4 * 3600) == [(T0, T0 + 4 * 3600, 7)]
    raw, _ = metered_price(client, event_name="metering_raw")
    for value in (10, 4):
        _event(client, raw, customer, value, T0 + 3600)
    assert _summary(client, raw, customer, T0, T0 + 4 * 3600) == [(T0, T0 + 4 * 3600, 14)]


def test_grouped_summaries_are_listed_newest_window_first(sb, client):
    """Stripe's documented example (GET /v1/billing/meters/{id}/event_summaries, hourly) lists the later
    hour first; the sandbox listed the oldest first, so `limit=1` or `data[0]` gave another window."""
    sb.set_now(T0 + 3 * 3600)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, 10, T0 + 60)
    _event(client, meter, customer, 15, T0 + 3600 + 60)
    assert _summary(client, meter, customer, T0, T0 + 2 * 3600, "hour") == [
        (T0 + 3600, T0 + 7200, 15), (T0, T0 + 3600, 10)]
    first_page = client.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": customer, "start_time": T0, "end_time": T0 + 7200, "value_grouping_window": "hour",
                   "limit": 1})
    assert ([s.aggregated_value for s in first_page.data], first_page.has_more) == ([15], True)


def test_day_windows_and_day_grouping_need_midnight_bounds(sb, client):
    sb.set_now(T0 + 3 * 86400)
    meter, _ = metered_price(client, window="day")
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, 100, T0 + 3600)
    _event(client, meter, customer, 120, T0 + 20 * 3600)  # same day: replaces
    _event(client, meter, customer, 7, T0 + 86400 + 5)
    assert _summary(client, meter, customer, T0, T0 + 2 * 86400, "day") == [(T0 + 86400, T0 + 2 * 86400, 7), (T0, T0 + 86400, 120)]
    with pytest.raises(stripe.InvalidRequestError):
        _summary(client, meter, customer, T0 + 3600, T0 + 86400, "day")


def test_timestamps_are_bounded_by_the_customers_test_clock(sb, client):
    frozen = ts("2026-10-01T00:00:00")
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": frozen})
    meter, _ = metered_price(client)
    on_clock = client.v1.customers.create({"name": "A", "test_clock": clock.id}).id
    _event(client, meter, on_clock, 1, frozen - 35 * 86400)
    _event(client, meter, on_clock, 1, frozen + 300)
    for bad in (frozen - 35 * 86400 - 1, frozen + 301):
        with pytest.raises(stripe.InvalidRequestError) as info:
            _event(client, meter, on_clock, 1, bad)
        assert info.value.http_status == 400 and info.value.param == "timestamp"
    # a customer without a clock is judged by the sandbox clock
    sb.set_now(T0)
    off_clock = client.v1.customers.create({"name": "B"}).id
    _event(client, meter, off_clock, 1, T0 + 300)  # 9 days after the clock's frozen_time: fine here
    _event(client, meter, off_clock, 1, T0 - 35 * 86400)
    for bad in (T0 + 301, T0 - 35 * 86400 - 1):
        with pytest.raises(stripe.InvalidRequestError):
            _event(client, meter, off_clock, 1, bad)
    with pytest.raises(stripe.InvalidRequestError):
        _event(client, meter, on_clock, 1, T0)  # the same instant is 9 days ahead of the clock


def test_one_concurrent_call_per_customer_and_meter(sb, client):
    sb.set_now(T0)
    meter, _ = metered_price(client)
    a = client.v1.customers.create({"name": "A"}).id
    b = client.v1.customers.create({"name": "B"}).id
    sb.inject_fault("slow", path="/v1/billing/meter_events", count=1, delay=60)
    results = {}
    worker = threading.Thread(target=lambda: results.setdefault("first", _event(client, meter, a, 1, T0)))
    worker.start()
    wait_until(lambda: in_flight(sb, "/v1/billing/meter_events"))
    with pytest.raises(stripe.RateLimitError) as info:
        _event(client, meter, a, 2, T0)
    assert info.value.http_status == 429
    assert info.value.headers["Stripe-Rate-Limited-Reason"] == "resource-specific"
    assert info.value.error.code == "rate_limit"
    _event(client, meter, b, 3, T0)  # another customer is not blocked
    sb.release_slow()
    worker.join()
    assert results["first"].payload["value"] == "1"
    _event(client, meter, a, 4, T0)  # the slot is free again
    assert _summary(client, meter, a, T0, T0 + 60) == [(T0, T0 + 60, 5)]


def test_cancel_adjustment_removes_an_event_received_in_the_last_24_hours(sb, client):
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, 5, T0, identifier="keep")
    _event(client, meter, customer, 7, T0, identifier="drop")
    client.v1.billing.meter_event_adjustments.create({"event_name": meter.event_name, "type": "cancel", "cancel": {"identifier": "drop"}})
    assert _summary(client, meter, customer, T0, T0 + 60) == [(T0, T0 + 60, 5)]
    sb.set_now(T0 + 24 * 3600 + 1)
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_event_adjustments.create({"event_name": meter.event_name, "type": "cancel", "cancel": {"identifier": "keep"}})


def test_count_and_last_formulas(sb, client):
    sb.set_now(T0)
    count, _ = metered_price(client, event_name="metering_count", formula="count")
    last, _ = metered_price(client, event_name="metering_last", formula="last")
    customer = client.v1.customers.create({"name": "A"}).id
    for value, at in ((3, T0 - 120), (9, T0 - 600), (4, T0 - 60)):
        _event(client, count, customer, value, at)
        _event(client, last, customer, value, at)
    assert _summary(client, count, customer, T0 - 3600, T0 + 60) == [(T0 - 3600, T0 + 60, 3)]
    assert _summary(client, last, customer, T0 - 3600, T0 + 60) == [(T0 - 3600, T0 + 60, 4)]


def test_unknown_meter_or_customer_is_accepted_but_not_counted(sb, client):
    sb.set_now(T0)
    meter, _ = metered_price(client)
    client.v1.billing.meter_events.create({"event_name": "metering_nothing", "payload": {"stripe_customer_id": "cus_x", "value": "1"}})
    _event(client, meter, "cus_unknown", 1, T0)
    errors = sb.control("GET", "meter_errors")["errors"]
    assert [e["type"] for e in errors] == ["no_meter_found", "customer_not_found"]


def test_meter_event_form_encoding_over_raw_http(sb, client):
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    response = httpx.post(
        sb.base_url + "/v1/billing/meter_events",
        content=f"event_name={meter.event_name}&payload[stripe_customer_id]={customer}&payload[value]=2.5&timestamp={T0}",
        headers={"Authorization": f"Bearer {sb.api_key}", "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200 and response.json()["payload"] == {"stripe_customer_id": customer, "value": "2.5"}
    assert _summary(client, meter, customer, T0, T0 + 60) == [(T0, T0 + 60, 2.5)]


def test_a_lagging_summary_shows_a_window_as_it_stood_before_its_newest_event(sb, client):
    """A pre-aggregated day window holds 5; a 0 sent for it is not visible yet. The summary showed the
    window empty (the 0 overwrote the 5, then was hidden itself), a state that never existed, which the
    push reads as "Stripe holds 0" (audit). It shows 5 until the 0 is visible."""
    sb.set_now(T0 + 86400)
    sb.configure(summary_lag=600)
    meter, _ = metered_price(client, window="day")
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, 5, T0 + 1)
    sb.set_now(T0 + 86400 + 700)
    assert _summary(client, meter, customer, T0, T0 + 86400, "day") == [(T0, T0 + 86400, 5)]
    _event(client, meter, customer, 0, T0 + 2)
    assert _summary(client, meter, customer, T0, T0 + 86400, "day") == [(T0, T0 + 86400, 5)]
    sb.set_now(T0 + 86400 + 1300)
    assert _summary(client, meter, customer, T0, T0 + 86400, "day") == [(T0, T0 + 86400, 0)]


def test_summaries_can_lag_like_stripes_eventually_consistent_ones(sb, client):
    sb.set_now(T0)
    sb.configure(summary_lag=120)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, 5, T0)
    assert _summary(client, meter, customer, T0, T0 + 60) == [(T0, T0 + 60, 0)]
    sb.set_now(T0 + 120)
    assert _summary(client, meter, customer, T0, T0 + 60) == [(T0, T0 + 60, 5)]
