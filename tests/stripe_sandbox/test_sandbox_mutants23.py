"""Cases a hand mutation audit (m23f) of the sandbox's meters, invoices, store and server found
untested. Each test names the Stripe behaviour it holds; expected values are worked out by hand."""

from __future__ import annotations

import threading

import httpx
import pytest
import stripe

from conftest import in_flight, metered_price, wait_until
from metering.stripe_sandbox.store import SandboxConfig, State
from metering.stripe_sandbox.testing import running_sandbox
from test_sandbox_billing import NOV, OCT, _setup
from test_sandbox_lifecycle import _subscribe, _subscribe_again
from test_sandbox_meter_events import T0, _event, _summary


def test_an_event_name_of_exactly_100_characters_is_accepted_and_101_refused(sb, client):
    """stripe-facts: a meter's event_name is at most 100 characters: 100 is the limit itself."""
    longest, _ = metered_price(client, event_name="e" * 100)
    assert len(longest.event_name) == 100
    with pytest.raises(stripe.InvalidRequestError) as refused:
        metered_price(client, event_name="f" * 101)
    assert (refused.value.http_status, refused.value.param) == (400, "event_name")


def test_an_identifier_of_exactly_100_characters_is_accepted(sb, client):
    """stripe-facts: identifier at most 100 characters; 100 is allowed and the event counts (5)."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, 5, T0, identifier="i" * 100)
    assert _summary(client, meter, customer, T0, T0 + 60) == [(T0, T0 + 60, 5)]


def test_values_of_15_significant_digits_are_accepted_trailing_zeros_not_counted_and_16_refused(sb, client):
    """15 significant digits at most (docs/stripe-sandbox.md; trailing zeros are not counted):
    123456789012345 has 15 and "2.50000000000000000" has 2 (2.5), both accepted; 1234567890123456 has 16."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, "123456789012345", T0)
    _event(client, meter, customer, "2.50000000000000000", T0 + 60)
    assert _summary(client, meter, customer, T0 + 60, T0 + 120) == [(T0 + 60, T0 + 120, 2.5)]
    with pytest.raises(stripe.InvalidRequestError) as refused:
        _event(client, meter, customer, "1234567890123456", T0)
    assert refused.value.code == "meter_event_value_too_many_digits"


def test_a_cancel_naming_another_meters_event_name_is_refused_and_the_event_still_counts(sb, client):
    """An adjustment is for one event_name: cancelling meter A's identifier under meter B's name finds
    no such event (404) and A's 5 stays counted."""
    sb.set_now(T0)
    first, _ = metered_price(client, event_name="metering_a")
    second, _ = metered_price(client, event_name="metering_b")
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, first, customer, 5, T0, identifier="usage-a")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": second.event_name, "type": "cancel", "cancel": {"identifier": "usage-a"}})
    assert refused.value.http_status == 404
    assert _summary(client, first, customer, T0, T0 + 60) == [(T0, T0 + 60, 5)]


def test_pre_aggregation_windows_are_utc_hours_whatever_the_summarys_start(sb, client):
    """An hourly meter: 10 at 00:31 and 4 at 01:01 are in two UTC hours, so both count (14) in a
    summary from 00:30 to 02:00, although both lie within one hour of its start."""
    sb.set_now(T0 + 3 * 3600)
    meter, _ = metered_price(client, window="hour")
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, 10, T0 + 1860)
    _event(client, meter, customer, 4, T0 + 3660)
    assert _summary(client, meter, customer, T0 + 1800, T0 + 7200) == [(T0 + 1800, T0 + 7200, 14)]


@pytest.mark.parametrize(("window", "start", "end"), [
    ("day", T0, T0 + 86400 + 3600),  # start at midnight, end one hour past the next one
    ("hour", T0, T0 + 3600 + 60),    # start on the hour, end a minute past the next one
])
def test_grouped_summaries_need_an_aligned_end_time_too(sb, client, window, start, end):
    sb.set_now(T0 + 2 * 86400)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    with pytest.raises(stripe.InvalidRequestError) as refused:
        _summary(client, meter, customer, start, end, window)
    assert refused.value.http_status == 400


def test_a_summary_end_time_off_a_minute_boundary_is_refused(sb, client):
    """stripe-facts: start_time and end_time both minute-aligned; T0 + 90 s is not."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    with pytest.raises(stripe.InvalidRequestError) as refused:
        _summary(client, meter, customer, T0, T0 + 90)
    assert (refused.value.http_status, refused.value.param) == (400, "end_time")


def test_turning_automatic_collection_back_on_for_an_open_invoice_is_refused_not_pretended(sb, client):
    """The sandbox does not model resuming collection of an open invoice: auto_advance=true on the
    declined first invoice (turned off by hand) is a 400 naming auto_advance, and it stays false."""
    _, _, sub = _subscribe(client, "fails")
    client.v1.invoices.update(sub.latest_invoice, {"auto_advance": False})
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.update(sub.latest_invoice, {"auto_advance": True})
    assert (refused.value.http_status, refused.value.param) == (400, "auto_advance")
    assert client.v1.invoices.retrieve(sub.latest_invoice).auto_advance is False


def test_confirming_auto_advance_on_a_draft_keeps_its_automatic_finalization_time(sb, client):
    """The period-end draft is due to finalize at NOV + 1 h (grace); auto_advance=true, which it has
    already, changes nothing: still NOV + 3600, and it is finalized then."""
    clock, _, _, customer, _ = _setup(client)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    [draft] = client.v1.invoices.list({"customer": customer.id, "status": "draft"}).data
    updated = client.v1.invoices.update(draft.id, {"auto_advance": True})
    assert (updated.auto_advance, updated.automatically_finalizes_at) == (True, NOV + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 7200})
    assert client.v1.invoices.retrieve(draft.id).status_transitions.finalized_at == NOV + 3600


def test_an_empty_description_clears_an_invoices_description_to_null(sb, client):
    """Stripe's form encoding unsets a field with an empty string: "" reads back as null, not ""."""
    _, _, sub = _subscribe(client, "succeeds")
    assert client.v1.invoices.update(sub.latest_invoice, {"description": "October"}).description == "October"
    assert client.v1.invoices.update(sub.latest_invoice, {"description": ""}).description is None


def test_finalizing_a_send_invoice_draft_by_hand_sends_it_without_charging_the_card(sb, client):
    """send_invoice: the customer pays the sent invoice; finalizing its renewal draft leaves it open,
    nothing paid, although the card would succeed."""
    clock, customer, sub = _subscribe(client, "succeeds")
    sent = _subscribe_again(client, customer, sub, {"collection_method": "send_invoice", "days_until_due": 30})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    [draft] = client.v1.invoices.list({"subscription": sent.id, "status": "draft"}).data
    finalized = client.v1.invoices.finalize_invoice(draft.id)
    assert (finalized.status, finalized.amount_paid, finalized.attempted) == ("open", 0, False)




def test_a_draft_cannot_be_marked_uncollectible(sb, client):
    """Only a finalized (open) invoice can be written off; the period-end draft is refused and stays a draft."""
    clock, _, _, customer, _ = _setup(client)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    [draft] = client.v1.invoices.list({"customer": customer.id, "status": "draft"}).data
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.mark_uncollectible(draft.id)
    assert (refused.value.http_status, refused.value.code) == (400, "invoice_not_open")
    assert client.v1.invoices.retrieve(draft.id).status == "draft"


def test_a_reactivated_meter_no_longer_has_a_deactivation_time(sb, client):
    """Stripe's reactivate example answers status active with status_transitions.deactivated_at null;
    deactivated at T0 it said T0."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    assert client.v1.billing.meters.deactivate(meter.id).status_transitions.deactivated_at == T0
    sb.set_now(T0 + 60)
    reactivated = client.v1.billing.meters.reactivate(meter.id)
    assert (reactivated.status, reactivated.status_transitions.deactivated_at) == ("active", None)


def test_a_restart_with_a_frozen_clock_keeps_that_clock_not_the_saved_one(tmp_path):
    """`now` given at start wins over the clock saved in the state file: saved at T0, restarted with
    now = T0 + 3600, the sandbox says T0 + 3600."""
    state = str(tmp_path / "sandbox.json")
    with running_sandbox(state_file=state, now=T0) as first:
        first.client().v1.customers.create({"name": "Kept"})
    with running_sandbox(state_file=state, now=T0 + 3600) as again:
        assert again.now() == T0 + 3600


def test_the_one_call_limit_is_per_customer_under_the_meters_own_customer_key(sb, client):
    """A meter mapping customers by payload key `account`: while A's call is in flight, a second one
    for A is refused (429) but B's goes through; the limit must read the customer from `account`.
    Counted: A 1, B 3."""
    sb.set_now(T0)
    meter = client.v1.billing.meters.create({
        "display_name": "mapped", "event_name": "metering_mapped", "default_aggregation": {"formula": "sum"},
        "customer_mapping": {"type": "by_id", "event_payload_key": "account"}})
    a = client.v1.customers.create({"name": "A"}).id
    b = client.v1.customers.create({"name": "B"}).id

    def send(customer, value):
        return client.v1.billing.meter_events.create(
            {"event_name": "metering_mapped", "payload": {"account": customer, "value": str(value)}, "timestamp": T0})

    sb.inject_fault("slow", path="/v1/billing/meter_events", count=1, delay=60)
    worker = threading.Thread(target=send, args=(a, 1))
    worker.start()
    try:
        wait_until(lambda: in_flight(sb, "/v1/billing/meter_events"))
        with pytest.raises(stripe.RateLimitError):
            send(a, 2)
        send(b, 3)
    finally:
        sb.release_slow()
        worker.join()
    assert _summary(client, meter, a, T0, T0 + 60) == [(T0, T0 + 60, 1)]
    assert _summary(client, meter, b, T0, T0 + 60) == [(T0, T0 + 60, 3)]


def test_a_deleted_customer_still_reads_as_deleted_after_a_restart(tmp_path):
    """Stripe answers a retrieve of a deleted customer with {id, deleted: true}, not 404; that must
    survive the state file."""
    state = str(tmp_path / "sandbox.json")
    with running_sandbox(state_file=state, now=T0) as first:
        client = first.client()
        customer = client.v1.customers.create({"name": "Gone"})
        client.v1.customers.delete(customer.id)
    with running_sandbox(state_file=state, now=T0) as again:
        assert again.client().v1.customers.retrieve(customer.id).deleted is True


def test_a_finalized_invoice_cannot_be_deleted_only_voided(sb, client):
    """Spec, DELETE /v1/invoices/{invoice}: "Attempts to delete invoices that are no longer in a draft
    state will fail". The declined first invoice is open: 400, and it is still there, open."""
    _, _, sub = _subscribe(client, "fails")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.delete(sub.latest_invoice)
    assert (refused.value.http_status, refused.value.code) == (400, "invoice_not_editable")
    assert client.v1.invoices.retrieve(sub.latest_invoice).status == "open"


def test_an_idempotency_key_on_a_get_has_no_effect(sb, client):
    """Stripe (idempotent requests): keys on GET "have no effect", GETs being idempotent already. A
    retrieve with key k after the customer was renamed shows the new name, not a replay of the first."""
    customer = client.v1.customers.create({"name": "Before"})
    headers = {"Authorization": f"Bearer {sb.api_key}", "Idempotency-Key": "k"}
    url = f"{sb.base_url}/v1/customers/{customer.id}"
    assert httpx.get(url, headers=headers).json()["name"] == "Before"
    client.v1.customers.update(customer.id, {"name": "After"})
    again = httpx.get(url, headers=headers)
    assert (again.json()["name"], again.headers.get("Idempotent-Replayed")) == ("After", None)


def test_saving_the_state_leaves_nothing_unsaved(tmp_path):
    """After a save the state is clean, so the background saver does not rewrite an unchanged file."""
    state = State(SandboxConfig(now=T0))
    assert state.dirty is True  # a fresh state has never been written
    state.save(tmp_path / "sandbox.json")
    assert state.dirty is False


def test_a_handler_refusal_is_not_kept_under_the_key_so_the_corrected_call_goes_through(sb, client):
    """Stripe does not store a request that fails parameter validation: value "abc" is refused (400),
    then the corrected call with the same Idempotency-Key records 2, not an idempotency error."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    payload = {"event_name": meter.event_name, "timestamp": T0}
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.billing.meter_events.create(
            {**payload, "payload": {"stripe_customer_id": customer, "value": "abc"}}, {"idempotency_key": "evt-1"})
    client.v1.billing.meter_events.create(
        {**payload, "payload": {"stripe_customer_id": customer, "value": "2"}}, {"idempotency_key": "evt-1"})
    assert _summary(client, meter, customer, T0, T0 + 60) == [(T0, T0 + 60, 2)]


def test_a_lost_response_fault_also_loses_an_error_response(sb, client):
    """lost_response: the request runs, its answer never arrives, whatever it was; here a 404 for an
    unknown customer, so the client sees a connection error, not the 404."""
    sb.inject_fault("lost_response", path="/v1/customers/cus_missing", count=1)
    with pytest.raises(stripe.APIConnectionError):
        client.v1.customers.retrieve("cus_missing")
    assert [e["status"] for e in sb.requests_log(path="/v1/customers/cus_missing")] == ["lost_response"]


def test_confirming_auto_advance_on_an_open_invoice_that_already_auto_advances_is_accepted(sb, client):
    """Only a change of auto_advance is checked: the declined first invoice auto-advances already, so
    auto_advance=true changes nothing and is no attempt to resume collection."""
    _, _, sub = _subscribe(client, "fails")
    assert client.v1.invoices.update(sub.latest_invoice, {"auto_advance": True}).auto_advance is True


def test_an_inactive_meters_event_name_is_not_free_for_a_new_meter(sb, client):
    """stripe-facts: one meter per event name; deactivating the meter does not release it (400
    resource_already_exists)."""
    meter, _ = metered_price(client)
    client.v1.billing.meters.deactivate(meter.id)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing.meters.create({"display_name": "again", "event_name": meter.event_name,
                                         "default_aggregation": {"formula": "sum"}})
    assert (refused.value.code, refused.value.param) == ("resource_already_exists", "event_name")


def test_billing_due_while_time_passed_runs_on_the_next_api_call(sb, client):
    """On real time the sandbox clock moves between requests without a control call; the next API
    request runs the billing that fell due. Stand-in for that passage of time: the clock set in-process
    from OCT to NOV + 60 s (no tick). A monthly 50.00 subscription from OCT then has its NOV renewal:
    two invoices, the second for the NOV-DEC period."""
    sb.set_now(OCT)
    product = client.v1.products.create({"name": "Platform"})
    price = client.v1.prices.create(
        {"product": product.id, "currency": "usd", "unit_amount": 5000, "recurring": {"interval": "month"}})
    customer = client.v1.customers.create({"name": "Real time"})
    client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    sb.sandbox.state.clock.set(NOV + 60)
    invoices = client.v1.invoices.list({"customer": customer.id}).data
    assert sorted(i.billing_reason for i in invoices) == ["subscription_create", "subscription_cycle"]


def test_an_identifier_is_taken_even_by_an_event_for_an_unknown_customer(sb, client):
    """Uniqueness is enforced when the event is accepted; whether it counts is decided later. The
    event for an unknown customer was accepted (200), so its identifier u-1 is taken for 24 h."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    _event(client, meter, "cus_unknown", 1, T0, identifier="u-1")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        _event(client, meter, "cus_unknown", 1, T0, identifier="u-1")
    assert "already exists with identifier u-1" in refused.value.user_message


def test_an_uncounted_events_identifier_is_still_taken_and_cancelable_after_a_restart(tmp_path):
    """Found by audit m23f: the saved state kept only counted events, and a restart rebuilt the taken
    identifiers from them. An event for an unknown meter (accepted, 200, counted nowhere) then lost its
    identifier: a second event under it was taken, and cancelling it was a 404. Stripe holds an
    identifier for at least 24 h whatever the event's fate."""
    state = str(tmp_path / "sandbox.json")
    event = {"event_name": "metering_nothing", "payload": {"stripe_customer_id": "cus_x", "value": "1"},
             "identifier": "u-1", "timestamp": T0}
    with running_sandbox(state_file=state, now=T0) as first:
        first.client().v1.billing.meter_events.create(event)
    with running_sandbox(state_file=state, now=T0 + 60) as again:
        client = again.client()
        with pytest.raises(stripe.InvalidRequestError) as refused:
            client.v1.billing.meter_events.create(event)
        assert "already exists with identifier u-1" in refused.value.user_message
        client.v1.billing.meter_event_adjustments.create(
            {"event_name": "metering_nothing", "type": "cancel", "cancel": {"identifier": "u-1"}})


@pytest.mark.parametrize(("sent", "answered"), [("2026-10-28.endive", "2026-10-28.endive"), (None, "2026-08-26.dahlia")])
def test_the_response_names_the_api_version_the_request_asked_for(sb, sent, answered):
    """Stripe-Version on the response is the request's version; without one, the account's default
    (the sandbox's 2026-08-26.dahlia)."""
    headers = {"Authorization": f"Bearer {sb.api_key}", **({"Stripe-Version": sent} if sent else {})}
    response = httpx.get(f"{sb.base_url}/v1/customers", headers=headers)
    assert (response.status_code, response.headers["Stripe-Version"]) == (200, answered)


def test_a_draft_cannot_be_voided(sb, client):
    """Spec, POST /v1/invoices/{invoice}/void: "Mark a finalized invoice as void"; a draft is deleted,
    not voided. The period-end draft is refused (400) and stays a draft."""
    clock, _, _, customer, _ = _setup(client)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    [draft] = client.v1.invoices.list({"customer": customer.id, "status": "draft"}).data
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.void_invoice(draft.id)
    assert refused.value.http_status == 400
    assert client.v1.invoices.retrieve(draft.id).status == "draft"


def test_an_open_invoice_cannot_be_finalized_again(sb, client):
    """The declined first invoice is open already: finalizing it again is refused (400
    invoice_not_editable) and it keeps its number."""
    _, _, sub = _subscribe(client, "fails")
    number = client.v1.invoices.retrieve(sub.latest_invoice).number
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.finalize_invoice(sub.latest_invoice)
    assert (refused.value.http_status, refused.value.code) == (400, "invoice_not_editable")
    assert client.v1.invoices.retrieve(sub.latest_invoice).number == number
