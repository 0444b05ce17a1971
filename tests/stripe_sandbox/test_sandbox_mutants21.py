"""Cases a hand mutation audit (m21e) of the sandbox's billing, subscriptions, invoices and meters
found untested. Each test names the Stripe behaviour it holds; expected values are worked out by hand."""

from __future__ import annotations

import pytest
import stripe

from conftest import metered_price, ts, usage as _usage
from test_sandbox_billing import NOV, OCT, _setup
from test_sandbox_lifecycle import FEE, _invoices, _subscribe, _subscribe_again
from test_sandbox_meter_events import T0, _event, _summary

DEC = ts("2026-12-01T00:00:00")


def _cycle(client, customer, period_start):
    """The customer's subscription_cycle invoice for the period that starts at ``period_start``."""
    [invoice] = [i for i in client.v1.invoices.list({"customer": customer.id, "limit": 100}).data
                 if i.billing_reason == "subscription_cycle" and i.period_start == period_start]
    return invoice


def test_an_item_replaced_exactly_at_a_renewal_is_not_on_the_next_periods_invoice(sb, client):
    """A price change at NOV 00:00:00, the instant the OCT period closes: the old item's usage window
    is [OCT, NOV), so it is on the OCT-NOV invoice (10 units x 25 = 250) and on no later one; the
    NOV-DEC invoice has the new item's line only (20 units x 10 = 200), no zero line for the old one."""
    clock, meter, old, customer, sub = _setup(client)
    new = client.v1.prices.create({"currency": "usd", "product": old.product, "unit_amount": 10,
                                   "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, 10, OCT + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV})
    client.v1.subscriptions.update(sub.id, {"items": [{"id": sub["items"].data[0].id, "price": new.id}]})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 86400})
    _usage(client, meter, customer, 20, NOV + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": DEC + 7200})
    october = _cycle(client, customer, OCT)
    assert [(l.pricing.price_details.price, l.quantity, l.amount) for l in october.lines.data] == [(old.id, 10, 250)]
    november = _cycle(client, customer, NOV)
    assert [(l.pricing.price_details.price, l.quantity, l.amount) for l in november.lines.data] == [(new.id, 20, 200)]
    assert november.amount_paid == 200


def test_a_whole_period_licensed_charge_is_not_marked_as_a_proration(sb, client):
    """Subscribed at OCT, anchored at OCT: the first invoice charges the whole OCT-NOV period (FEE) and
    the renewal the whole NOV-DEC period; neither line is a proration. Only a first period shortened
    by a later anchor is (see test_licensed_items_are_charged_in_advance_and_prorated)."""
    clock, customer, sub = _subscribe(client, "succeeds")
    first = client.v1.invoices.retrieve(sub.latest_invoice)
    [line] = first.lines.data
    assert (line.amount, line.parent.subscription_item_details.proration) == (FEE, False)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 7200})
    [renewal_line] = _invoices(client, customer)[("subscription_cycle", NOV)].lines.data
    assert (renewal_line.amount, renewal_line.parent.subscription_item_details.proration) == (FEE, False)


def test_a_pending_item_in_another_currency_stays_off_the_subscriptions_usd_invoice(sb, client):
    """An invoice has one currency: the usd renewal takes the usd item (700) but not a eur one, which
    stays pending. Renewal total: 4 units x 25 + 700 = 800."""
    clock, meter, _, customer, sub = _setup(client)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, 4, OCT + 3600)
    usd = client.v1.invoice_items.create({"customer": customer.id, "amount": 700, "currency": "usd"})
    eur = client.v1.invoice_items.create({"customer": customer.id, "amount": 900, "currency": "eur"})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    renewal = _cycle(client, customer, OCT)
    assert (renewal.currency, renewal.total, renewal.amount_due) == ("usd", 800, 800)
    assert client.v1.invoice_items.retrieve(usd.id).invoice == renewal.id
    assert client.v1.invoice_items.retrieve(eur.id).invoice is None


def test_a_send_invoice_subscription_with_zero_days_until_due_is_due_at_finalization(sb, client):
    """days_until_due=0 is a value, not "unset": the first invoice is due when it is finalized
    (finalized_at + 0 x 86400), not after the 30-day default."""
    _, customer, licensed = _subscribe(client, "succeeds")
    sub = _subscribe_again(client, customer, licensed, {"collection_method": "send_invoice", "days_until_due": 0})
    first = client.v1.invoices.retrieve(sub.latest_invoice)
    assert (sub.days_until_due, first.status, first.status_transitions.finalized_at) == (0, "open", OCT)
    assert first.due_date == OCT


def test_paying_the_failed_invoice_clears_delinquent_although_a_sent_invoice_is_still_open(sb, client):
    """Spec, customer.delinquent: paying an invoice sets it to false. The customer's send_invoice
    invoice is open but was never attempted (it is not overdue): it does not keep them delinquent."""
    _, customer, failed_sub = _subscribe(client, "fails")
    sent = _subscribe_again(client, customer, failed_sub, {"collection_method": "send_invoice", "days_until_due": 30})
    assert client.v1.invoices.retrieve(sent.latest_invoice).status == "open"
    assert client.v1.customers.retrieve(customer.id).delinquent is True  # the failed first charge
    sb.set_payment_behavior(customer.id, "succeeds")
    client.v1.invoices.pay(failed_sub.latest_invoice)
    assert client.v1.customers.retrieve(customer.id).delinquent is False


def test_a_manual_first_payment_counts_as_the_first_attempt(sb, client):
    """Spec, invoice.attempt_count: "Any payment attempt counts as the first attempt". A send_invoice
    invoice is never charged automatically; paying it by card is attempt 1."""
    _, customer, sub = _subscribe(client, "succeeds")
    sent = _subscribe_again(client, customer, sub, {"collection_method": "send_invoice"})
    invoice = client.v1.invoices.retrieve(sent.latest_invoice)
    assert (invoice.attempted, invoice.attempt_count) == (False, 0)
    paid = client.v1.invoices.pay(invoice.id)
    assert (paid.status, paid.attempted, paid.attempt_count, paid.amount_paid) == ("paid", True, 1, FEE)


def test_a_declined_manual_payment_schedules_no_retry_once_automatic_collection_is_off(sb, client):
    """The NOV renewal is declined at NOV + 1 h (attempt 1, retry due 3 days later); auto_advance=false
    cancels that retry. A declined manual /pay then is a 402 and leaves next_payment_attempt null:
    nothing is retried automatically any more, even when the card works again."""
    clock, customer, sub = _subscribe(client, "succeeds")
    sb.set_payment_behavior(customer.id, "fails")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 7200})
    renewal = _invoices(client, customer)[("subscription_cycle", NOV)]
    assert (renewal.attempt_count, renewal.next_payment_attempt) == (1, NOV + 3600 + 3 * 86400)
    client.v1.invoices.update(renewal.id, {"auto_advance": False})
    with pytest.raises(stripe.CardError):
        client.v1.invoices.pay(renewal.id)
    declined = client.v1.invoices.retrieve(renewal.id)
    assert (declined.status, declined.attempt_count, declined.next_payment_attempt) == ("open", 1, None)


def test_proration_behavior_none_still_charges_a_first_period_that_starts_on_its_anchor(sb, client):
    """proration_behavior=none makes only time before the anchor free; subscribed at OCT without a
    later anchor, the first period OCT-NOV is a whole one and is charged in full (FEE)."""
    _, customer, sub = _subscribe(client, "succeeds")
    again = _subscribe_again(client, customer, sub, {"proration_behavior": "none"})
    first = client.v1.invoices.retrieve(again.latest_invoice)
    assert (again.billing_cycle_anchor, first.total, first.amount_paid, first.status) == (OCT, FEE, FEE, "paid")


def test_a_canceled_subscriptions_final_invoice_failing_for_good_leaves_it_canceled(sb, client):
    """Canceled with invoice_now on OCT 20 (3 units x 25 = 75 due), the final invoice is finalized and
    charged after the 1 h grace; declined with no retries left, `after_final_failure=unpaid` has
    nothing to act on: a canceled subscription is ended and stays canceled."""
    sb.configure(payment_retry_days=[], after_final_failure="unpaid")
    clock, meter, _, customer, sub = _setup(client, behavior="fails", sb=sb)
    oct20 = ts("2026-10-20T00:00:00")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": oct20})
    _usage(client, meter, customer, 3, OCT + 3600)
    client.v1.subscriptions.cancel(sub.id, {"invoice_now": True})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": oct20 + 7200})
    final = _cycle(client, customer, OCT)
    assert (final.status, final.amount_due, final.attempt_count, final.next_payment_attempt) == ("open", 75, 1, None)
    assert client.v1.subscriptions.retrieve(sub.id).status == "canceled"


def test_an_invoice_paid_out_of_band_records_the_amount_paid_off_stripe(sb, client):
    """POST /v1/invoices/{id}/pay with paid_out_of_band=true charges nothing and marks the invoice
    paid: the whole FEE is amount_paid and amount_paid_off_stripe, nothing remains, no attempt made."""
    _, customer, sub = _subscribe(client, "fails")  # a card that would be declined is not charged
    sent = _subscribe_again(client, customer, sub, {"collection_method": "send_invoice"})
    paid = client.v1.invoices.pay(sent.latest_invoice, {"paid_out_of_band": True})
    assert (paid.status, paid.amount_paid, paid.amount_paid_off_stripe, paid.amount_remaining, paid.attempt_count) == (
        "paid", FEE, FEE, 0, 0)


def test_a_licensed_subscription_canceled_at_period_end_is_not_charged_for_the_period_after(sb, client):
    """cancel_at_period_end: the subscription ends at NOV, so NOV-DEC is never charged in advance.
    All the customer ever pays is the first period's FEE."""
    clock, customer, sub = _subscribe(client, "succeeds")
    client.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 7200})
    assert client.v1.subscriptions.retrieve(sub.id).status == "canceled"
    invoices = client.v1.invoices.list({"customer": customer.id, "limit": 100}).data
    assert sum(i.amount_paid for i in invoices) == FEE
    assert sum(i.amount_remaining for i in invoices) == 0


def test_a_billing_cycle_anchor_before_the_start_is_refused_and_nothing_is_created(sb, client):
    """Subscribed at OCT with an anchor one day earlier: a 400 on billing_cycle_anchor, and the
    customer has no new subscription or invoice."""
    _, customer, sub = _subscribe(client, "succeeds")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        _subscribe_again(client, customer, sub, {"billing_cycle_anchor": OCT - 86400})
    assert (refused.value.http_status, refused.value.param) == (400, "billing_cycle_anchor")
    assert [s.id for s in client.v1.subscriptions.list({"customer": customer.id}).data] == [sub.id]
    assert len(client.v1.invoices.list({"customer": customer.id}).data) == 1


def test_removing_a_licensed_item_without_proration_behavior_is_refused(sb, client):
    """Stripe's default for an update is create_prorations, which the sandbox does not model: removing
    a licensed item without proration_behavior=none is a 400 that changes nothing; with none it is removed."""
    _, _, sub = _subscribe(client, "succeeds")
    item = sub["items"].data[0].id
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.subscriptions.update(sub.id, {"items": [{"id": item, "deleted": True}]})
    assert refused.value.param == "proration_behavior"
    assert [i.id for i in client.v1.subscription_items.list({"subscription": sub.id}).data] == [item]
    client.v1.subscriptions.update(sub.id, {"items": [{"id": item, "deleted": True}], "proration_behavior": "none"})
    assert client.v1.subscription_items.list({"subscription": sub.id}).data == []


def test_undoing_cancel_at_period_end_clears_canceled_at(sb, client):
    """Spec, subscription.canceled_at: with cancel_at_period_end it is the time of the request
    (OCT + 1 day); taking the cancellation back leaves the subscription not canceled: null."""
    clock, _, sub = _subscribe(client, "succeeds")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    pending = client.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True})
    assert (pending.status, pending.cancel_at_period_end, pending.canceled_at) == ("active", True, OCT + 86400)
    kept = client.v1.subscriptions.update(sub.id, {"cancel_at_period_end": False})
    assert (kept.status, kept.cancel_at_period_end, kept.canceled_at) == ("active", False, None)


def test_a_replaced_item_is_no_longer_listed_among_the_subscriptions_items(sb, client):
    """After a price change the subscription has one item, the new one, in both its own items list
    and GET /v1/subscription_items."""
    clock, meter, old, customer, sub = _setup(client)
    new = client.v1.prices.create({"currency": "usd", "product": old.product, "unit_amount": 10,
                                   "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    updated = client.v1.subscriptions.update(sub.id, {"items": [{"id": sub["items"].data[0].id, "price": new.id}]})
    assert [i.price.id for i in updated["items"].data] == [new.id]
    assert [i.price.id for i in client.v1.subscription_items.list({"subscription": sub.id}).data] == [new.id]


def test_an_update_naming_another_subscriptions_item_is_refused_and_changes_nothing(sb, client):
    _, customer, first = _subscribe(client, "succeeds")
    second = _subscribe_again(client, customer, first)
    foreign = second["items"].data[0].id
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.subscriptions.update(first.id, {"items": [{"id": foreign, "metadata": {"moved": "yes"}}]})
    assert (refused.value.http_status, refused.value.param) == (400, "items[0][id]")
    assert client.v1.subscription_items.retrieve(foreign).metadata.to_dict() == {}


def test_a_paid_invoice_refuses_auto_advance_and_being_marked_uncollectible(sb, client):
    """Stripe's invoice states: a paid invoice is final. Turning automatic collection back on and
    writing it off are both 400s, and it stays paid with auto_advance false."""
    _, _, sub = _subscribe(client, "succeeds")
    paid = client.v1.invoices.retrieve(sub.latest_invoice)
    assert (paid.status, paid.auto_advance) == ("paid", False)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.update(paid.id, {"auto_advance": True})
    assert (refused.value.code, refused.value.param) == ("invoice_not_editable", "auto_advance")
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.invoices.mark_uncollectible(paid.id)
    assert refused.value.code == "invoice_not_open"
    after = client.v1.invoices.retrieve(paid.id)
    assert (after.status, after.auto_advance, after.status_transitions.marked_uncollectible_at) == ("paid", False, None)


def test_invoices_listed_by_subscription_are_that_subscriptions_only(sb, client):
    _, customer, first = _subscribe(client, "succeeds")
    second = _subscribe_again(client, customer, first)
    listed = client.v1.invoices.list({"subscription": second.id}).data
    assert [i.id for i in listed] == [second.latest_invoice]


def test_usage_stamped_exactly_at_the_period_end_is_billed_in_the_next_period(sb, client):
    """A period is [start, end): 3 units at OCT 01:00 are October's (3 x 25 = 75); 5 units stamped
    NOV 00:00:00 are November's (5 x 25 = 125), not October's."""
    clock, meter, _, customer, _ = _setup(client)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV - 60})
    _usage(client, meter, customer, 3, OCT + 3600)
    _usage(client, meter, customer, 5, NOV)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": DEC + 7200})
    october, november = _cycle(client, customer, OCT), _cycle(client, customer, NOV)
    assert [(l.quantity, l.amount) for l in october.lines.data] == [(3, 75)]
    assert [(l.quantity, l.amount) for l in november.lines.data] == [(5, 125)]


@pytest.mark.parametrize(("second_stamp", "last_value"), [(T0 - 120, 4), (T0 - 60, 3)],
                         ids=["an_earlier_timestamp_arriving_later", "a_tie_at_one_second"])
def test_the_last_formula_takes_the_latest_timestamp_and_of_a_tie_the_later_arrival(sb, client, second_stamp,
                                                                                   last_value):
    """4 stamped T0-60 arrives first, then 3 stamped `second_stamp`. Stamped T0-120 (earlier), the last
    value of the window by event time is 4. Stamped the same second, the later arrival wins: 3 (the
    sandbox's own tie rule, a mutant found by audit m23f: Stripe does not document ties)."""
    sb.set_now(T0)
    last, _ = metered_price(client, event_name="metering_last", formula="last")
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, last, customer, 4, T0 - 60)
    _event(client, last, customer, 3, second_stamp)
    assert _summary(client, last, customer, T0 - 3600, T0 + 60) == [(T0 - 3600, T0 + 60, last_value)]


def test_an_event_received_exactly_24_hours_ago_can_still_be_cancelled(sb, client):
    """The cancel window is the last 24 h, its first second included (the existing test covers
    24 h + 1 s, refused): 5 + 7 = 12 before, 5 after cancelling the 7 at T0 + 86400 exactly."""
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    _event(client, meter, customer, 5, T0, identifier="keep")
    _event(client, meter, customer, 7, T0, identifier="drop")
    sb.set_now(T0 + 24 * 3600)
    assert _summary(client, meter, customer, T0, T0 + 60) == [(T0, T0 + 60, 12)]
    client.v1.billing.meter_event_adjustments.create({"event_name": meter.event_name, "type": "cancel", "cancel": {"identifier": "drop"}})
    assert _summary(client, meter, customer, T0, T0 + 60) == [(T0, T0 + 60, 5)]


def test_a_summary_whose_end_time_equals_its_start_time_is_refused(sb, client):
    sb.set_now(T0)
    meter, _ = metered_price(client)
    customer = client.v1.customers.create({"name": "A"}).id
    with pytest.raises(stripe.InvalidRequestError) as refused:
        _summary(client, meter, customer, T0, T0)
    assert (refused.value.http_status, refused.value.param) == (400, "end_time")


def test_a_sum_meter_event_without_a_value_is_refused_while_a_count_meter_counts_it_as_one(sb, client):
    sb.set_now(T0)
    summed, _ = metered_price(client, event_name="metering_sum")
    counted, _ = metered_price(client, event_name="metering_count", formula="count")
    customer = client.v1.customers.create({"name": "A"}).id
    no_value = {"payload": {"stripe_customer_id": customer}, "timestamp": T0}
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.billing.meter_events.create({"event_name": summed.event_name, **no_value})
    assert (refused.value.code, refused.value.param) == ("parameter_missing", "payload[value]")
    client.v1.billing.meter_events.create({"event_name": counted.event_name, **no_value})
    assert _summary(client, summed, customer, T0, T0 + 60) == [(T0, T0 + 60, 0)]
    assert _summary(client, counted, customer, T0, T0 + 60) == [(T0, T0 + 60, 1)]


def test_a_voided_invoice_keeps_its_amount_due_but_has_nothing_remaining(sb, client):
    """The declined first invoice (FEE) is voided: nothing is collected on it any more (amount_remaining
    0), while amount_due still says what it was for and nothing was paid."""
    _, _, sub = _subscribe(client, "fails")
    voided = client.v1.invoices.void_invoice(sub.latest_invoice)
    assert (voided.status, voided.amount_due, voided.amount_paid, voided.amount_remaining) == ("void", FEE, 0, 0)


def test_a_second_invoice_failing_for_good_does_not_report_an_unpaid_subscription_as_changed(sb, client):
    """Daily periods, one retry a day later, then `unpaid`. Renewal A (period end OCT+1d) fails at
    +1h and for good at OCT+2d+1h: the subscription becomes unpaid. Renewal B (OCT+2d) fails at +1h
    and for good at OCT+3d+1h, when the subscription is unpaid already: no second status change.
    Status events: active -> past_due (A's first failure), past_due -> unpaid (A's last); nothing else."""
    sb.configure(payment_retry_days=[1], after_final_failure="unpaid")
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    product = client.v1.products.create({"name": "Daily"})
    price = client.v1.prices.create({"product": product.id, "currency": "usd", "unit_amount": 100,
                                     "recurring": {"interval": "day"}})
    customer = client.v1.customers.create({"test_clock": clock.id})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    sb.set_payment_behavior(customer.id, "fails")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 3 * 86400 + 7200})
    assert client.v1.subscriptions.retrieve(sub.id).status == "unpaid"
    changes = [(e.data.previous_attributes.to_dict().get("status"), e.data.object.status)
               for e in client.v1.events.list({"type": "customer.subscription.updated", "limit": 100}).data
               if e.data.object.id == sub.id and "status" in e.data.previous_attributes.to_dict()]
    assert list(reversed(changes)) == [("active", "past_due"), ("past_due", "unpaid")]


def test_canceling_reports_no_change_on_an_invoice_whose_collection_was_already_off(sb, client):
    """The declined first invoice has auto_advance turned off by hand (one invoice.updated); canceling
    the subscription then has nothing to stop on it, so no second invoice.updated (with empty
    previous_attributes) is recorded."""
    _, _, sub = _subscribe(client, "fails")
    client.v1.invoices.update(sub.latest_invoice, {"auto_advance": False})
    client.v1.subscriptions.cancel(sub.id)
    updates = [e.data.previous_attributes.to_dict()
               for e in client.v1.events.list({"type": "invoice.updated", "limit": 100}).data
               if e.data.object.id == sub.latest_invoice]
    assert updates == [{"auto_advance": True}]


@pytest.mark.parametrize(("pending", "shown", "has_more"), [(9, 10, False), (10, 10, True)])
def test_an_invoice_embeds_at_most_ten_lines_and_says_when_there_are_more(sb, client, pending, shown, has_more):
    """The first invoice of a licensed subscription takes the customer's pending items: 1 + 9 = 10
    lines all embedded (has_more false); 1 + 10 = 11 lines show 10 and has_more true."""
    _, customer, sub = _subscribe(client, "succeeds")
    for n in range(pending):
        client.v1.invoice_items.create({"customer": customer.id, "amount": 100 + n, "currency": "usd"})
    again = _subscribe_again(client, customer, sub)
    first = client.v1.invoices.retrieve(again.latest_invoice)
    assert (len(first.lines.data), first.lines.has_more) == (shown, has_more)
    assert len(client.v1.invoices.line_items.list(first.id, {"limit": 100}).data) == pending + 1


def test_a_finalized_invoice_no_longer_has_an_automatic_finalization_time(sb, client):
    """Spec, invoice.automatically_finalizes_at: "If the invoice is not in the draft state, this field
    will always be null". The draft said NOV + 1 h; open and then paid, it is null."""
    clock, meter, _, customer, _ = _setup(client)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    draft = _cycle(client, customer, OCT)
    assert (draft.status, draft.automatically_finalizes_at) == ("draft", NOV + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 7200})
    paid = client.v1.invoices.retrieve(draft.id)
    assert (paid.status, paid.status_transitions.finalized_at, paid.automatically_finalizes_at) == ("paid", NOV + 3600, None)
