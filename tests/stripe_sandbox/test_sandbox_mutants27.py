"""Cases a hand mutation audit (m27f) of the sandbox's request handling, meters, meter events, meter
event summaries, persistence and server found untested. Each test names the Stripe rule it holds (the
OpenAPI spec, stripe-facts.md or docs/stripe-sandbox.md) and the mutant it kills; expected values are
worked out by hand in the docstrings. Every API call goes over loopback HTTP; the ``sb`` fixture holds
each response to the OpenAPI description."""

from __future__ import annotations

import threading

import httpx
import pytest
import stripe

from conftest import in_flight, metered_price, post_form, wait_until
from metering.stripe_sandbox.store import SandboxConfig, State
from metering.stripe_sandbox.testing import running_sandbox
from test_sandbox_meter_events import T0, _event, _summary


def _raw_event(sb, fields: dict, key: str | None = None):
    """POST /v1/billing/meter_events form-encoded as written (no SDK), optionally with an Idempotency-Key."""
    return post_form(sb, "/v1/billing/meter_events", fields, key)


# -- meters ---------------------------------------------------------------------------------------
def test_updating_a_meter_takes_expand_as_the_spec_lists_it(sb, client):
    """Spec, POST /v1/billing/meters/{id}: the parameters are display_name and expand. An update with
    expand[]=default_aggregation (an expandable field holding no id, so the body is unchanged) is 200
    with the new name, not 400 parameter_unknown. Kills M07 ("expand" dropped from the update's
    accepted names)."""
    meter, _ = metered_price(client)
    updated = client.v1.billing.meters.update(meter.id, {"display_name": "Renamed", "expand": ["default_aggregation"]})
    assert (updated.display_name, updated.default_aggregation.formula) == ("Renamed", "sum")


def test_renaming_a_meter_moves_updated_and_sends_billing_meter_updated(sb, client):
    """Created at T0, renamed at T0 + 60: `updated` is T0 + 60 (`created` stays T0) and one
    billing.meter.updated event carries the new name. Kills M08 (no event) and M09 (`updated` kept)."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    sb.set_now(T0 + 60)
    renamed = client.v1.billing.meters.update(meter.id, {"display_name": "Renamed"})
    assert (renamed.created, renamed.updated) == (T0, T0 + 60)
    [event] = client.v1.events.list({"type": "billing.meter.updated"}).data
    assert (event.data.object.id, event.data.object.display_name) == (meter.id, "Renamed")


def test_deactivating_and_reactivating_send_their_own_events_and_move_updated(sb, client):
    """Deactivated at T0 + 60, reactivated at T0 + 120: `updated` follows each (T0 + 60, then T0 + 120)
    and the events are billing.meter.deactivated then billing.meter.reactivated, one each.
    Kills M12 (every status change reported as deactivated) and M13 (`updated` not moved)."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    sb.set_now(T0 + 60)
    assert client.v1.billing.meters.deactivate(meter.id).updated == T0 + 60
    sb.set_now(T0 + 120)
    assert client.v1.billing.meters.reactivate(meter.id).updated == T0 + 120
    kinds = [e.type for e in client.v1.events.list({"type": "billing.meter.*"}).data]
    assert sorted(kinds) == ["billing.meter.created", "billing.meter.deactivated", "billing.meter.reactivated"]


def test_an_empty_event_time_window_makes_a_raw_meter(sb):
    """docs/stripe-sandbox.md: an empty value of an optional field is read as absent. A meter created
    with `event_time_window=` is a raw meter (event_time_window null), so two events in one hour both
    count: 10 + 4 = 14 (a pre-aggregated one would keep only the 4). Kills M06 (`or None` dropped: the
    empty string went to the enum check, 400)."""
    sb.set_now(T0 + 3600)
    created = post_form(sb, "/v1/billing/meters", {"display_name": "raw", "event_name": "metering_raw",
                                                  "default_aggregation[formula]": "sum", "event_time_window": ""})
    assert (created.status_code, created.json()["event_time_window"]) == (200, None)
    client = sb.client()
    customer = client.v1.customers.create({"name": "A"}).id
    meter = client.v1.billing.meters.retrieve(created.json()["id"])
    _event(client, meter, customer, 10, T0 + 60)
    _event(client, meter, customer, 4, T0 + 120)
    assert _summary(client, meter, customer, T0, T0 + 3600) == [(T0, T0 + 3600, 14)]


# -- meter events ---------------------------------------------------------------------------------
def test_a_payload_without_the_customer_key_is_refused_naming_it(sb, client):
    """Spec: the payload "must contain the fields corresponding to a meter's
    customer_mapping.event_payload_key (default is stripe_customer_id)": a payload holding only value 5
    is 400 parameter_missing, param payload[stripe_customer_id], and nothing is counted or reported.
    Kills M16 (the customer check dropped: the event was accepted for customer None)."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing.meter_events.create({"event_name": meter.event_name, "payload": {"value": "5"}})
    assert (refused.value.http_status, refused.value.code, refused.value.param) == (
        400, "parameter_missing", "payload[stripe_customer_id]")
    assert sb.control("GET", "meter_errors")["errors"] == []


def test_an_empty_value_counts_as_one_on_a_count_meter_and_is_missing_on_a_sum_meter(sb):
    """An empty value is an absent value: on a count meter the event counts as 1 (two such events: 2);
    on a sum meter it is 400 parameter_missing naming payload[value] (not an invalid decimal).
    Kills M17 (count: only a missing value counted, "" refused as a decimal) and M18 (sum: "" sent to
    the decimal parser, parameter_invalid)."""
    sb.set_now(T0)
    client = sb.client()
    count, _ = metered_price(client, event_name="metering_count", formula="count")
    total, _ = metered_price(client, event_name="metering_sum")
    customer = client.v1.customers.create({"name": "A"}).id
    for _ in range(2):
        sent = _raw_event(sb, {"event_name": count.event_name, "payload[stripe_customer_id]": customer,
                               "payload[value]": "", "timestamp": T0})
        assert sent.status_code == 200
    assert _summary(client, count, customer, T0, T0 + 60) == [(T0, T0 + 60, 2)]
    refused = _raw_event(sb, {"event_name": total.event_name, "payload[stripe_customer_id]": customer,
                              "payload[value]": "", "timestamp": T0})
    error = refused.json()["error"]
    assert (refused.status_code, error["code"], error["param"]) == (400, "parameter_missing", "payload[value]")


def test_an_empty_timestamp_defaults_to_now(sb, client):
    """Spec: timestamp "Defaults to current timestamp if not specified"; an empty value is read as
    absent (docs/stripe-sandbox.md). At T0 + 30, `timestamp=` gives an event stamped T0 + 30, counted
    in [T0, T0 + 60). Kills M20 (only a missing timestamp defaulted: "" was an invalid integer, 400)."""
    sb.set_now(T0 + 30)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    sent = _raw_event(sb, {"event_name": meter.event_name, "payload[stripe_customer_id]": customer,
                           "payload[value]": "3", "timestamp": ""})
    assert (sent.status_code, sent.json()["timestamp"]) == (200, T0 + 30)
    assert _summary(client, meter, customer, T0, T0 + 60) == [(T0, T0 + 60, 3)]


@pytest.mark.parametrize("offset", [301, -35 * 86400 - 1])
def test_a_refused_timestamp_is_kept_under_its_idempotency_key(sb, client, offset):
    """docs/stripe-sandbox.md: the first response, errors raised while executing included, is replayed
    for the same Idempotency-Key. At T0 an event stamped T0 + 301 (or 35 days and 1 s back) is 400;
    the same request with the same key is replayed (400, Idempotent-Replayed: true) even once the clock
    has moved 60 s on (T0 + 301 is then only 241 s ahead, and the old one is still too old: the point is
    the replay), and nothing is counted. Kills M22 (future) and M21 (past): the error not stored."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    fields = {"event_name": meter.event_name, "payload[stripe_customer_id]": customer, "payload[value]": "5",
              "timestamp": T0 + offset}
    first = _raw_event(sb, fields, key="evt-k")
    assert (first.status_code, first.json()["error"]["param"]) == (400, "timestamp")
    sb.set_now(T0 + 60)
    again = _raw_event(sb, fields, key="evt-k")
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (400, "true")
    assert again.json()["error"]["code"] == first.json()["error"]["code"]
    assert _summary(client, meter, customer, T0 - 36 * 86400, T0 + 3600) == [(T0 - 36 * 86400, T0 + 3600, 0)]


def test_the_meter_event_answers_when_it_was_created_and_the_timestamp_it_was_given(sb, client):
    """Spec, billing.meter_event: `created` is "Time at which the object was created", `timestamp` "The
    timestamp passed in when creating the event". Sent at T0 for T0 - 3600: created T0, timestamp
    T0 - 3600. Kills M27 (created = the timestamp) and M28 (timestamp = the time received)."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    event = _event(client, meter, customer, 1, T0 - 3600)
    assert (event.created, event.timestamp) == (T0, T0 - 3600)


def test_a_cancel_without_an_identifier_is_a_missing_parameter(sb, client):
    """An adjustment of type cancel needs cancel[identifier]: `cancel[identifier]=` is 400
    parameter_missing naming cancel[identifier] (not a 404 for "no such event"). Kills M29."""
    meter, _ = metered_price(client)
    refused = post_form(sb, "/v1/billing/meter_event_adjustments",
                        {"event_name": meter.event_name, "type": "cancel", "cancel[identifier]": ""})
    error = refused.json()["error"]
    assert (refused.status_code, error["code"], error["param"]) == (400, "parameter_missing", "cancel[identifier]")


def test_the_value_is_read_from_the_meters_own_value_key(sb, client):
    """Spec: the payload must contain the meter's `value_settings.event_payload_key` (default `value`).
    A meter whose value key is `tokens`: an event {stripe_customer_id, tokens: 7} is 200 and counts 7.
    Kills M45 (the value always read from `value`: 400 parameter_missing payload[value])."""
    sb.set_now(T0)
    meter = client.v1.billing.meters.create({
        "display_name": "tokens", "event_name": "metering_tokens", "default_aggregation": {"formula": "sum"},
        "value_settings": {"event_payload_key": "tokens"}})
    customer = client.v1.customers.create({"name": "A"}).id
    client.v1.billing.meter_events.create(
        {"event_name": "metering_tokens", "payload": {"stripe_customer_id": customer, "tokens": "7"}, "timestamp": T0})
    assert _summary(client, meter, customer, T0, T0 + 60) == [(T0, T0 + 60, 7)]


def test_the_one_call_limit_is_per_meter_too(sb, client):
    """stripe-facts: "only one concurrent call per customer per meter". While A's call for meter one is
    held in flight, A's call for meter two goes through (no 429). Counted: meter one 1, meter two 2.
    Kills M46 (the slot keyed by the customer alone: the second meter's call was refused)."""
    sb.set_now(T0)
    one, _ = metered_price(client, event_name="metering_one")
    two, _ = metered_price(client, event_name="metering_two")
    a = client.v1.customers.create({"name": "A"}).id
    sb.inject_fault("slow", path="/v1/billing/meter_events", count=1, delay=60)
    worker = threading.Thread(target=_event, args=(client, one, a, 1, T0))
    worker.start()
    try:
        wait_until(lambda: in_flight(sb, "/v1/billing/meter_events"))
        _event(client, two, a, 2, T0)
    finally:
        sb.release_slow()
        worker.join()
    assert _summary(client, one, a, T0, T0 + 60) == [(T0, T0 + 60, 1)]
    assert _summary(client, two, a, T0, T0 + 60) == [(T0, T0 + 60, 2)]


def test_events_sent_without_an_identifier_get_distinct_uuid_identifiers(sb, client):
    """Spec: "If not provided, one is generated. We recommend using UUID-like identifiers." Two events
    without one get two different identifiers, each a UUID (36 characters, 4 hyphens, version 4), and
    both count: 1 + 2 = 3. Kills M23 (the generated identifier cut to 8 characters)."""
    import uuid

    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    first = _event(client, meter, customer, 1, T0).identifier
    second = _event(client, meter, customer, 2, T0).identifier
    assert first != second
    assert [uuid.UUID(i).version for i in (first, second)] == [4, 4] and len(first) == len(second) == 36
    assert _summary(client, meter, customer, T0, T0 + 60) == [(T0, T0 + 60, 3)]


def test_a_cancellation_leaves_the_state_to_be_saved(sb, client, tmp_path):
    """The background saver writes only a state with unsaved changes. After a save, cancelling an event
    is such a change (the event is no longer counted): the state is unsaved again, so the cancellation
    reaches the state file. Kills M31 (the cancellation not marking the state unsaved)."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, 5, T0, identifier="drop")
    state = sb.sandbox.state
    state.save(tmp_path / "sandbox.json")
    assert state.dirty is False
    client.v1.billing.meter_event_adjustments.create(
        {"event_name": meter.event_name, "type": "cancel", "cancel": {"identifier": "drop"}})
    assert state.dirty is True


# -- summaries ------------------------------------------------------------------------------------
def test_a_last_meter_with_no_event_in_range_sums_up_to_zero(sb, client):
    """A `last` meter over [T0, T0 + 60) with no event there: one summary with aggregated_value 0 (no
    value is no usage). Kills M36 (the empty case answered 1)."""
    sb.set_now(T0)
    meter, _ = metered_price(client, event_name="metering_last", formula="last")
    customer = client.v1.customers.create({"name": "A"}).id
    assert _summary(client, meter, customer, T0, T0 + 60) == [(T0, T0 + 60, 0)]


def test_each_grouped_summary_has_its_own_id(sb, client):
    """Spec: a summary's `id` is its "Unique identifier for the object". Events in two hours, hourly
    grouping: two summaries with two different ids. Kills M42 (the window start left out of the id)."""
    sb.set_now(T0 + 3 * 3600)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, 1, T0 + 60)
    _event(client, meter, customer, 2, T0 + 3600 + 60)
    summaries = client.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": customer, "start_time": T0, "end_time": T0 + 7200, "value_grouping_window": "hour"}).data
    assert len({s.id for s in summaries}) == len(summaries) == 2


# -- persistence ----------------------------------------------------------------------------------
def test_a_pre_aggregated_window_is_overwritten_by_an_event_sent_after_a_restart(tmp_path):
    """The window rule is "the most recently received event": 10 for 01:00-02:00 before a restart, 4 for
    the same hour after it; the hour holds 4. Sequence numbers must continue across the restart, else the
    later event looks older and 10 stays. Kills S02 (`sequence` not restored)."""
    state = str(tmp_path / "sandbox.json")
    with running_sandbox(state_file=state, now=T0 + 3 * 3600) as first:
        client = first.client()
        meter, _ = metered_price(client, window="hour")
        customer = client.v1.customers.create({"name": "A"}).id
        _event(client, meter, customer, 10, T0 + 3600 + 60)
    with running_sandbox(state_file=state, now=T0 + 3 * 3600) as again:
        client = again.client()
        _event(client, meter, customer, 4, T0 + 3600 + 120)
        assert _summary(client, meter, customer, T0, T0 + 3 * 3600) == [(T0, T0 + 3 * 3600, 4)]


def test_an_identifier_reused_after_24_hours_is_held_by_its_newest_event_after_a_restart(tmp_path):
    """u-1 is first taken at T0 by an event for an unknown customer (counted nowhere), then, 24 h on,
    by a counted event at T0 + 86400. After a restart at T0 + 86400 + 60 the identifier is held by the
    newer event (received 60 s ago): a third u-1 is refused. Rebuilding the identifiers in another order
    than arrival left the old one (received 24 h 60 s ago, expired) in charge and let the third in.
    Kills S01 (identifiers rebuilt without sorting by sequence)."""
    state = str(tmp_path / "sandbox.json")
    day = 86400
    with running_sandbox(state_file=state, now=T0) as first:
        client = first.client()
        meter, _ = metered_price(client)
        _event(client, meter, "cus_unknown", 1, T0, identifier="u-1")
        first.set_now(T0 + day)
        customer = client.v1.customers.create({"name": "A"}).id
        _event(client, meter, customer, 2, T0 + day, identifier="u-1")
    with running_sandbox(state_file=state, now=T0 + day + 60) as again:
        with pytest.raises(stripe.InvalidRequestError) as refused:
            _event(again.client(), meter, customer, 3, T0 + day, identifier="u-1")
        assert "already exists with identifier u-1" in refused.value.user_message


def test_meter_errors_survive_a_restart(tmp_path):
    """docs/stripe-sandbox.md, persistence: "every ... side table" is kept. An event for an unknown meter
    before the restart is still reported (no_meter_found, identifier u-1) after it. Kills S03."""
    state = str(tmp_path / "sandbox.json")
    with running_sandbox(state_file=state, now=T0) as first:
        first.client().v1.billing.meter_events.create(
            {"event_name": "metering_nothing", "payload": {"stripe_customer_id": "cus_x", "value": "1"},
             "identifier": "u-1", "timestamp": T0})
    with running_sandbox(state_file=state, now=T0) as again:
        errors = again.control("GET", "meter_errors")["errors"]
        assert [(e["type"], e["identifier"]) for e in errors] == [("no_meter_found", "u-1")]


def test_a_freshly_loaded_state_has_nothing_unsaved(tmp_path):
    """What was just read from the file is what the file holds: after load the state is clean, so the
    background saver does not rewrite an unchanged file. Kills S04 (`dirty` left True by load)."""
    path = tmp_path / "sandbox.json"
    State(SandboxConfig(now=T0)).save(path)
    loaded = State(SandboxConfig(now=T0))
    loaded.load(path)
    assert loaded.dirty is False


# -- server ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["sk_live_abc123", "rk_test_abc123"])
def test_a_key_that_is_not_a_secret_test_key_is_refused(sb, key):
    """docs/stripe-sandbox.md, auth: `Bearer sk_test_...`; "anything else is Stripe's 401" when no key
    is configured: a live secret key and a restricted test key are 401 and create nothing.
    Kills V03 (any `sk_` key accepted)."""
    answer = httpx.post(f"{sb.base_url}/v1/customers", data={"name": "A"}, headers={"Authorization": f"Bearer {key}"})
    assert (answer.status_code, answer.json()["error"]["type"]) == (401, "invalid_request_error")
    assert sb.client().v1.customers.list().data == []
