"""Second hand mutation audit (m25f) of the sandbox's billing engine (``billing.py``) and subscriptions
(``subscriptions_api.py``): period-end invoices, proration of a shortened first period, payment attempts
and retries, cancellation and the subscription parameters' limits. Each test names the Stripe rule it
holds (the spec's descriptions, stripe-facts.md, docs/stripe-sandbox.md) and the mutant it kills;
expected values are worked out by hand in the docstrings."""

from __future__ import annotations

import pytest
import stripe

from conftest import metered_price, ts, usage as _usage
from test_sandbox_billing import NOV, OCT, _setup
from test_sandbox_lifecycle import FEE, HOUR, _invoices, _subscribe

DAY = 86400
DEC = ts("2026-12-01T00:00:00")


def _licensed(client, cents: int):
    product = client.v1.products.create({"name": "Seats"})
    return client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": cents,
                                    "recurring": {"interval": "month"}})


def test_a_half_cent_proration_of_the_first_period_rounds_up(sb, client):
    """docs/stripe-sandbox.md: the first period shortened by the anchor is "prorated by time"; rounding is
    "the line's exact amount, half-up once". Subscribed on Oct 31 12:00 anchored at NOV: 12 h of the 31-day
    interval [OCT, NOV): 3131 x 0.5 / 31 = 50.5 -> 51.
    Kills B10 (denominator one second longer: 50.4999... -> 50)."""
    start = ts("2026-10-31T12:00:00")
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": start})
    customer = client.v1.customers.create({"test_clock": clock.id})
    price = _licensed(client, 3131)
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}],
                                          "billing_cycle_anchor": NOV})
    first = client.v1.invoices.retrieve(sub.latest_invoice)
    [line] = first.lines.data
    assert (line.amount, line.parent.subscription_item_details.proration, first.amount_paid) == (51, True, 51)


def test_finalizing_moves_the_customers_next_invoice_sequence_past_the_number_used(sb, client):
    """Spec, customer.next_invoice_sequence: "The suffix of the customer's next invoice number (for example,
    0001)". A new customer's first finalized invoice is numbered <prefix>-0001, so the next is 2; after the
    second (<prefix>-0002) it is 3.
    Kills B17 (`next_invoice_sequence = seq` instead of `seq + 1`: the number just used)."""
    customer = client.v1.customers.create({"name": "Acme"})
    numbers = []
    for _ in range(2):
        invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
        client.v1.invoice_items.create({"customer": customer.id, "amount": 1000, "invoice": invoice.id})
        numbers.append(client.v1.invoices.finalize_invoice(invoice.id).number)
        if len(numbers) == 1:
            assert client.v1.customers.retrieve(customer.id).next_invoice_sequence == 2
    prefix = customer.invoice_prefix
    assert numbers == [f"{prefix}-0001", f"{prefix}-0002"]
    assert client.v1.customers.retrieve(customer.id).next_invoice_sequence == 3


def test_an_open_invoice_never_attempted_does_not_keep_the_subscription_past_due(sb, client):
    """docs/stripe-sandbox.md (subscription lifecycle): "`past_due` and `incomplete` become `active` once none
    of their attempted invoices is open". The Oct-Nov invoice (4 x 25 = 100) fails at NOV + 1 h: past_due.
    The Nov-Dec draft (2 x 25 = 50) is finalized by hand with auto_advance=false: open, attempt_count 0.
    Paying the failed invoice leaves no attempted invoice open: the subscription is active again.
    Kills B23 (`attempt_count > 0` dropped: the unattempted invoice kept it past_due)."""
    clock, meter, _, customer, sub = _setup(client, behavior="fails", sb=sb)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + DAY})
    _usage(client, meter, customer, 4, OCT + HOUR)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + HOUR})
    _usage(client, meter, customer, 2, NOV + 1800)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": DEC + 60})
    invoices = _invoices(client, customer)
    failed, december = invoices[("subscription_cycle", NOV)], invoices[("subscription_cycle", DEC)]
    assert (failed.status, failed.amount_remaining, december.status) == ("open", 100, "draft")
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"
    opened = client.v1.invoices.finalize_invoice(december.id, {"auto_advance": False})
    assert (opened.status, opened.attempt_count, opened.amount_due) == ("open", 0, 50)
    sb.set_payment_behavior(customer.id, "succeeds")
    assert client.v1.invoices.pay(failed.id).status == "paid"
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_a_first_attempt_made_by_hand_starts_the_retry_schedule(sb, client):
    """Spec, attempt_count: "Any payment attempt counts as the first attempt, and subsequently only automatic
    retries increment the attempt count"; docs/stripe-sandbox.md: a failure sets `next_payment_attempt` after
    3, 5, 7 days. The Oct-Nov draft (4 x 25 = 100) is paid by hand at NOV + 60, before its automatic
    finalization: declined (402), attempt 1, next attempt NOV + 60 + 3 days; that retry runs on the clock and
    is attempt 2, the next 5 days after it.
    Kills B27 (a retry scheduled only after an automatic attempt: next_payment_attempt stayed null)."""
    clock, meter, _, customer, sub = _setup(client, behavior="fails", sb=sb)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + DAY})
    _usage(client, meter, customer, 4, OCT + HOUR)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    draft = _invoices(client, customer)[("subscription_cycle", NOV)]
    assert (draft.status, draft.amount_due) == ("draft", 100)
    with pytest.raises(stripe.CardError):
        client.v1.invoices.pay(draft.id)
    declined = client.v1.invoices.retrieve(draft.id)
    assert (declined.status, declined.attempt_count, declined.next_payment_attempt) == ("open", 1, NOV + 60 + 3 * DAY)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60 + 3 * DAY})
    retried = client.v1.invoices.retrieve(draft.id)
    assert (retried.attempt_count, retried.next_payment_attempt) == (2, NOV + 60 + 8 * DAY)


def test_a_declined_manual_payment_is_not_the_final_failure(sb, client):
    """docs/stripe-sandbox.md: `after_final_failure` acts "after the last retry"; a payment attempted by hand is
    not a retry. Configured `unpaid`: the Oct-Nov draft (100) finalized by hand with auto_advance=false has no
    retry (next_payment_attempt null); paying it by hand is declined: the subscription is past_due (a failed
    payment on an active charge_automatically subscription), not unpaid.
    Kills B30 (`automatic and` dropped: the declined manual payment made the subscription unpaid)."""
    sb.configure(after_final_failure="unpaid")
    clock, meter, _, customer, sub = _setup(client, behavior="fails", sb=sb)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + DAY})
    _usage(client, meter, customer, 4, OCT + HOUR)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    draft = _invoices(client, customer)[("subscription_cycle", NOV)]
    opened = client.v1.invoices.finalize_invoice(draft.id, {"auto_advance": False})
    assert (opened.status, opened.amount_due, opened.next_payment_attempt) == ("open", 100, None)
    with pytest.raises(stripe.CardError):
        client.v1.invoices.pay(draft.id)
    assert client.v1.invoices.retrieve(draft.id).next_payment_attempt is None
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"


def test_an_invoice_written_off_by_dunning_no_longer_auto_advances_and_the_customer_stays_delinquent(sb, client):
    """docs/stripe-sandbox.md: "Paid, void and uncollectible invoices have `auto_advance` false, as at Stripe";
    spec, customer.delinquent: "If an invoice becomes uncollectible by dunning, `delinquent` doesn't reset to
    false". No retries and `after_final_failure=mark_uncollectible`: the Oct-Nov invoice (100) fails at its
    finalization, NOV + 1 h, and is written off then.
    Kills B31 (`auto_advance = False` dropped from marking uncollectible)."""
    sb.configure(payment_retry_days=[], after_final_failure="mark_uncollectible")
    clock, meter, _, customer, sub = _setup(client, behavior="fails", sb=sb)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + DAY})
    _usage(client, meter, customer, 4, OCT + HOUR)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 2 * HOUR})
    invoice = _invoices(client, customer)[("subscription_cycle", NOV)]
    assert (invoice.status, invoice.auto_advance, invoice.next_payment_attempt, invoice.amount_remaining,
            invoice.status_transitions.marked_uncollectible_at) == ("uncollectible", False, None, 100, NOV + HOUR)
    assert client.v1.customers.retrieve(customer.id).delinquent is True


def test_canceled_at_is_the_time_of_the_request_to_cancel_at_period_end_not_the_period_end(sb, client):
    """Spec, subscription.canceled_at: "If the subscription was canceled with `cancel_at_period_end`,
    `canceled_at` will reflect the time of the most recent update request, not the end of the subscription
    period". The request at OCT + 5 days; the subscription ends at NOV: canceled_at OCT + 5 days, ended_at NOV.
    Kills B33 (`canceled_at = at` at the cancellation: NOV)."""
    clock, meter, _, customer, sub = _setup(client)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 5 * DAY})
    assert client.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True}).canceled_at == OCT + 5 * DAY
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 2 * HOUR})
    ended = client.v1.subscriptions.retrieve(sub.id)
    assert (ended.status, ended.canceled_at, ended.ended_at) == ("canceled", OCT + 5 * DAY, NOV)


def test_canceling_leaves_an_item_replaced_earlier_ended_when_it_was_replaced(sb, client):
    """An item's usage window ends when its price is replaced (docs/stripe-sandbox.md: "price changes"; each
    item is billed for its own segment). Replaced on Oct 15 (10 units before, at 25; 20 after, at 10), then
    canceled with invoice_now on Oct 20: the final invoice, once finalized an hour later (usage is metered
    again then), is 10 x 25 + 20 x 10 = 250 + 200 = 450.
    Kills B34 (the cancellation ending every item, the replaced one again: its window reached Oct 20 and
    billed all 30 units at 25 = 750)."""
    clock, meter, old, customer, sub = _setup(client)
    new = client.v1.prices.create({"currency": "usd", "product": old.product, "unit_amount": 10,
                                   "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}})
    mid, oct20 = ts("2026-10-15T00:00:00"), ts("2026-10-20T00:00:00")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": mid})
    _usage(client, meter, customer, 10, mid - HOUR)
    client.v1.subscriptions.update(sub.id, {"items": [{"id": sub["items"].data[0].id, "price": new.id}]})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": oct20})
    _usage(client, meter, customer, 20, mid + HOUR)
    client.v1.subscriptions.cancel(sub.id, {"invoice_now": True})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": oct20 + 2 * HOUR})
    final = _invoices(client, customer)[("subscription_cycle", oct20)]
    assert final.status == "paid"
    assert sorted((l.pricing.price_details.price, l.quantity, l.amount) for l in final.lines.data) == sorted(
        [(old.id, 10, 250), (new.id, 20, 200)])
    assert final.amount_paid == 450


def test_an_invoice_paid_out_of_band_after_a_credit_records_only_what_was_due(sb, client):
    """Spec, invoice: "Stripe applies any customer credit on the account before determining the amount due";
    `paid_out_of_band` records the amount remaining as paid off Stripe. 1000 of charges less the customer's
    300 credit: 700 due, so 700 paid, 700 of it off Stripe, nothing remaining (not the total, 1000).
    Kills B46 (`amount_paid_off_stripe` from the total instead of the amount remaining)."""
    customer = client.v1.customers.create({"name": "Acme", "balance": -300})
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 1000, "invoice": invoice.id})
    opened = client.v1.invoices.finalize_invoice(invoice.id, {"auto_advance": False})
    assert (opened.total, opened.starting_balance, opened.amount_due) == (1000, -300, 700)
    paid = client.v1.invoices.pay(invoice.id, {"paid_out_of_band": True})
    assert (paid.status, paid.amount_paid, paid.amount_paid_off_stripe, paid.amount_remaining) == ("paid", 700, 700, 0)


def test_repeating_a_licensed_items_quantity_is_no_change_and_needs_no_proration_behavior(sb, client):
    """The sandbox refuses Stripe's default `create_prorations` only on a change to what licensed items charge
    (subscriptions_api._no_proration); the item's own quantity (1) sent again changes nothing, so it is
    accepted without `proration_behavior`, while quantity 2 is refused (400, param proration_behavior).
    Kills S2 (any quantity counted as a change: the repeated 1 was refused)."""
    _, _, sub = _subscribe(client, "succeeds")
    item = sub["items"].data[0]
    same = client.v1.subscriptions.update(sub.id, {"items": [{"id": item.id, "quantity": 1}]})
    assert same["items"].data[0].quantity == 1
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.subscriptions.update(sub.id, {"items": [{"id": item.id, "quantity": 2}]})
    assert refused.value.param == "proration_behavior"
    assert client.v1.subscription_items.retrieve(item.id).quantity == 1


def test_changing_a_metered_item_to_a_licensed_price_needs_proration_behavior_none(sb, client):
    """A price change that starts a licensed charge is a licensed change: Stripe's default `create_prorations`
    is refused (400, param proration_behavior) and nothing changes; with `none` the item is replaced.
    Kills S3 (only the old price's usage type considered: the metered -> licensed change went through)."""
    clock, meter, metered, customer, sub = _setup(client)
    seats = client.v1.prices.create({"currency": "usd", "product": metered.product, "unit_amount": 900,
                                     "recurring": {"interval": "month"}})
    item = sub["items"].data[0].id
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.subscriptions.update(sub.id, {"items": [{"id": item, "price": seats.id}]})
    assert refused.value.param == "proration_behavior"
    assert [i.price.id for i in client.v1.subscription_items.list({"subscription": sub.id}).data] == [metered.id]
    client.v1.subscriptions.update(sub.id, {"items": [{"id": item, "price": seats.id}], "proration_behavior": "none"})
    assert [i.price.id for i in client.v1.subscription_items.list({"subscription": sub.id}).data] == [seats.id]


def test_a_quantity_on_a_metered_item_is_refused_and_nothing_is_created(sb, client):
    """A metered price bills the meter's usage, not a quantity: Stripe refuses a quantity on it ("You cannot
    set the quantity for metered prices", 400 naming items[0][quantity]); no subscription is created.
    Kills S4 (the check dropped: the subscription was created)."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    _, price = metered_price(client)
    customer = client.v1.customers.create({"name": "Acme", "test_clock": clock.id})
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id, "quantity": 3}]})
    assert (refused.value.http_status, refused.value.param) == (400, "items[0][quantity]")
    assert client.v1.subscriptions.list({"customer": customer.id, "status": "all"}).data == []


def test_an_anchor_config_at_the_lowest_bounds_is_accepted(sb, client):
    """billing_cycle_anchor_config (spec: "the next occurrence of the day_of_month at the hour, minute, and
    second UTC"): day_of_month 1 and hour, minute, second 0 are the lowest valid values. On Oct 16 the next
    1st at 00:00:00 is NOV.
    Kills S5 (`low <= value` -> `low < value`: day_of_month 1 was refused)."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": ts("2026-10-16T00:00:00")})
    _, price = metered_price(client)
    customer = client.v1.customers.create({"name": "Acme", "test_clock": clock.id})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}],
                                          "billing_cycle_anchor_config": {"day_of_month": 1, "hour": 0,
                                                                          "minute": 0, "second": 0}})
    assert (sub.billing_cycle_anchor, sub.billing_cycle_anchor_config.day_of_month,
            sub.billing_cycle_anchor_config.hour) == (NOV, 1, 0)


def test_an_incomplete_subscriptions_metadata_update_may_ask_for_expansions(sb, client):
    """Spec, subscription.status: an incomplete subscription "can only have metadata and default_source
    updated"; `expand` is not an update but a choice of what the response shows, so metadata with
    expand[]=latest_invoice is accepted and shows the open first invoice (5000 remaining).
    Kills S12 (`expand` counted as an update: refused)."""
    _, _, sub = _subscribe(client, "fails")
    assert sub.status == "incomplete"
    updated = client.v1.subscriptions.update(sub.id, {"metadata": {"team": "ops"}, "expand": ["latest_invoice"]})
    assert (updated.status, updated.metadata["team"]) == ("incomplete", "ops")
    assert (updated.latest_invoice.status, updated.latest_invoice.amount_remaining) == ("open", FEE)


@pytest.mark.parametrize("change", ["delete", "add", "quantity"])
def test_an_incomplete_subscriptions_items_cannot_change(sb, client, change):
    """Spec, subscription.status: "A subscription in this status can only have metadata and default_source
    updated". Removing an item (even with proration_behavior=none), adding one or changing its quantity
    changes the subscription: 400, and the one item, quantity 1, is still listed. The sandbox refused these
    through POST /v1/subscriptions/{id} only, not through /v1/subscription_items, until the twenty-fifth
    session (m25f D1; reached later, an item removed after the period end the incomplete subscription did
    not close is what mutant B8 would charge for a whole period). The item's own metadata may change."""
    _, _, sub = _subscribe(client, "fails")
    assert sub.status == "incomplete"
    item = sub["items"].data[0]
    with pytest.raises(stripe.InvalidRequestError, match="incomplete can only have metadata"):
        if change == "delete":
            client.v1.subscription_items.delete(item.id, {"proration_behavior": "none"})
        elif change == "add":
            client.v1.subscription_items.create({"subscription": sub.id, "price": item.price.id,
                                                 "proration_behavior": "none"})
        else:
            client.v1.subscription_items.update(item.id, {"quantity": 2, "proration_behavior": "none"})
    client.v1.subscription_items.update(item.id, {"metadata": {"team": "ops"}})
    assert [(i.id, i.quantity, i.metadata.to_dict())
            for i in client.v1.subscription_items.list({"subscription": sub.id}).data] == [(item.id, 1, {"team": "ops"})]


def test_a_canceled_subscription_takes_no_new_item(sb, client):
    """A canceled subscription "can only update its cancellation_details and metadata" (Stripe's message, the
    sandbox's rule for POST /v1/subscriptions/{id}, and now for its items too): adding an item to it is 400,
    and its metadata may still change (the sandbox refused that too until the twenty-fifth session)."""
    _, _, sub = _subscribe(client, "succeeds")
    client.v1.subscriptions.cancel(sub.id)
    with pytest.raises(stripe.InvalidRequestError, match="canceled subscription"):
        client.v1.subscription_items.create({"subscription": sub.id, "price": sub["items"].data[0].price.id,
                                             "proration_behavior": "none"})
    # its metadata still changes, as the message says
    assert client.v1.subscriptions.update(sub.id, {"metadata": {"note": "churned"}}).metadata.to_dict() == {
        "note": "churned"}


def test_replacing_an_items_price_keeps_the_items_metadata(sb, client):
    """A price change through items[0][id] + items[0][price] changes the price of that item (Stripe keeps the
    item and its metadata; the sandbox ends the old item and starts a new one for the new segment): the
    metadata set on the item, {"team": "ops"}, is on the item now listed.
    Kills S14 (the new item started without the old one's metadata)."""
    clock, meter, old, customer, sub = _setup(client)
    item = sub["items"].data[0].id
    client.v1.subscription_items.update(item, {"metadata": {"team": "ops"}})
    new = client.v1.prices.create({"currency": "usd", "product": old.product, "unit_amount": 10,
                                   "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}})
    client.v1.subscriptions.update(sub.id, {"items": [{"id": item, "price": new.id}]})
    [listed] = client.v1.subscription_items.list({"subscription": sub.id}).data
    assert (listed.price.id, listed.metadata.to_dict()) == (new.id, {"team": "ops"})


def test_canceling_a_canceled_subscription_is_refused_and_changes_nothing(sb, client):
    """Spec, DELETE /v1/subscriptions/{id}: it cancels a customer's active subscription; a subscription
    already canceled (on Oct 10) cannot be canceled again on Oct 20: 400, `ended_at` stays Oct 10 and there
    is still one customer.subscription.deleted.
    Kills S15 (the check dropped: canceled again, ended_at moved to Oct 20, a second deleted event)."""
    clock, meter, _, customer, sub = _setup(client)
    oct10, oct20 = ts("2026-10-10T00:00:00"), ts("2026-10-20T00:00:00")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": oct10})
    client.v1.subscriptions.cancel(sub.id)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": oct20})
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.subscriptions.cancel(sub.id)
    assert refused.value.http_status == 400
    ended = client.v1.subscriptions.retrieve(sub.id)
    assert (ended.status, ended.canceled_at, ended.ended_at) == ("canceled", oct10, oct10)
    assert len(client.v1.events.list({"type": "customer.subscription.deleted"}).data) == 1
