"""Billing on a test clock: period-end draft invoice from the meter with the price's tiers, grace
period, finalization, payment, failing cards, automatic retries, past_due, manual pay."""

from __future__ import annotations

from decimal import Decimal

import pytest
import stripe

from conftest import cycle_invoice as _cycle_invoice, metered_price, ts, usage as _usage

OCT = ts("2026-10-01T00:00:00")
NOV = ts("2026-11-01T00:00:00")
DOCS_TIERS = [{"up_to": 5, "unit_amount": 700}, {"up_to": 10, "unit_amount": 650}, {"up_to": "inf", "unit_amount": 600}]


def _setup(client, price_params=None, window=None, behavior=None, sb=None, anchor=NOV):
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    meter, price = metered_price(client, window=window, **(price_params or {}))
    customer = client.v1.customers.create({"name": "Acme", "test_clock": clock.id, "metadata": {"customer_id": "acme"}})
    if behavior:
        sb.set_payment_behavior(customer.id, behavior)
    sub = client.v1.subscriptions.create(
        {"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor": anchor, "metadata": {"customer_id": "acme"}}
    )
    return clock, meter, price, customer, sub


@pytest.mark.parametrize(
    ("mode", "quantity", "cents"),
    [  # docs.stripe.com/subscriptions/pricing-models/tiered-pricing (Typographic example)
        ("volume", 1, 700), ("volume", 5, 3500), ("volume", 6, 3900), ("volume", 20, 12000), ("volume", 25, 15000),
        ("graduated", 5, 3500), ("graduated", 6, 4150), ("graduated", 20, 12750),
    ],
)
def test_invoice_amounts_match_stripes_documented_tier_examples(sb, client, mode, quantity, cents):
    clock, meter, price, customer, _ = _setup(
        client, {"billing_scheme": "tiered", "tiers_mode": mode, "tiers": DOCS_TIERS}
    )
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, quantity, OCT + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    invoice = _cycle_invoice(client, customer)
    assert (invoice.status, invoice.amount_due, invoice.total) == ("draft", cents, cents)
    [line] = invoice.lines.data
    assert line.quantity_decimal == Decimal(quantity) and line.amount == cents


@pytest.mark.parametrize(
    ("mode", "quantity", "cents"),
    [
        # flat fees (hand-computed from the definitions: graduated charges each reached tier's flat
        # fee once; volume charges the containing tier's flat fee once):
        # tiers: 1-5 @ 7.00 + 10.00 flat, 6-10 @ 6.50 + 5.00 flat, 11+ @ 6.00 + 0.50 flat
        ("graduated", 0, 1000),  # zero usage still sits in the first tier
        ("graduated", 5, 3500 + 1000),
        ("graduated", 6, 4150 + 1000 + 500),
        ("graduated", 20, 12750 + 1000 + 500 + 50),
        ("volume", 0, 1000),
        ("volume", 6, 3900 + 500),
        ("volume", 20, 12000 + 50),
    ],
)
def test_flat_amounts_per_tier(sb, client, mode, quantity, cents):
    tiers = [dict(DOCS_TIERS[0], flat_amount=1000), dict(DOCS_TIERS[1], flat_amount=500), dict(DOCS_TIERS[2], flat_amount_decimal="50")]
    clock, meter, _, customer, _ = _setup(client, {"billing_scheme": "tiered", "tiers_mode": mode, "tiers": tiers})
    if quantity:
        client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
        _usage(client, meter, customer, quantity, OCT + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    assert _cycle_invoice(client, customer).amount_due == cents


def test_unit_amount_decimal_rounds_the_line_to_whole_cents(sb, client):
    clock, meter, _, customer, _ = _setup(client, {"unit_amount_decimal": "0.125"})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, "1234.5", OCT + 3600)  # 154.3125 cents -> 154
    _usage(client, meter, customer, "8", OCT + 7200)  # 1242.5 x 0.125 = 155.3125 -> 155
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    invoice = _cycle_invoice(client, customer)
    [line] = invoice.lines.data
    assert (line.amount, line.quantity, line.quantity_decimal) == (155, 1242, Decimal("1242.5"))


def test_the_period_end_invoice_lifecycle(sb, client):
    clock, meter, price, customer, sub = _setup(client)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 10 * 86400})
    _usage(client, meter, customer, 40, OCT + 86400)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 1800})
    invoice = _cycle_invoice(client, customer)
    assert invoice.status == "draft" and invoice.created == NOV
    assert invoice.automatically_finalizes_at == NOV + 3600
    assert (invoice.period_start, invoice.period_end) == (OCT, NOV)
    assert invoice.parent.subscription_details.subscription == sub.id
    assert invoice.parent.subscription_details.metadata["customer_id"] == "acme"
    [line] = invoice.lines.data
    assert line.pricing.price_details.price == price.id
    assert (line.period.start, line.period.end) == (OCT, NOV - 1)  # inclusive end
    assert line.parent.subscription_item_details.subscription_item == sub["items"].data[0].id
    # late usage inside the grace period lands on the draft
    _usage(client, meter, customer, 2, NOV - 10)
    assert client.v1.billing.meters.event_summaries.list(
        meter.id, {"customer": customer.id, "start_time": OCT, "end_time": NOV}
    ).data[0].aggregated_value == 42
    renewed = client.v1.subscriptions.retrieve(sub.id)
    assert renewed["items"].data[0].current_period_start == NOV
    assert renewed["items"].data[0].current_period_end == ts("2026-12-01T00:00:00")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    paid = client.v1.invoices.retrieve(invoice.id)
    assert (paid.status, paid.amount_due, paid.amount_paid, paid.attempt_count) == ("paid", 42 * 25, 42 * 25, 1)
    assert paid.status_transitions.finalized_at == NOV + 3600 and paid.status_transitions.paid_at == NOV + 3600
    types = [e.type for e in client.v1.events.list({"limit": 100}).data if e.type.startswith("invoice.") and e.data.object.id == invoice.id]
    assert list(reversed(types)) == ["invoice.created", "invoice.finalized", "invoice.paid", "invoice.payment_succeeded"]


def test_a_failing_card_drives_dunning(sb, client):
    clock, meter, _, customer, sub = _setup(client, behavior="fails", sb=sb)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, 4, OCT + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    invoice = _cycle_invoice(client, customer)
    assert (invoice.status, invoice.attempt_count, invoice.next_payment_attempt) == ("open", 1, NOV + 3600 + 3 * 86400)
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"
    failed = client.v1.events.list({"type": "invoice.payment_failed"}).data
    assert failed[0].data.object.attempt_count == 1
    updates = client.v1.events.list({"type": "customer.subscription.updated"}).data
    assert any(e.data.previous_attributes.to_dict().get("status") == "active" and e.data.object.status == "past_due" for e in updates)
    # the automatic retry 3 days later fails again; the next is 5 days after that
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600 + 3 * 86400})
    again = client.v1.invoices.retrieve(invoice.id)
    assert (again.attempt_count, again.next_payment_attempt) == (2, NOV + 3600 + 8 * 86400)
    # a manual retry with the card still failing: 402, and manual retries do not count as attempts
    with pytest.raises(stripe.CardError) as info:
        client.v1.invoices.pay(invoice.id)
    assert info.value.http_status == 402 and info.value.code == "card_declined"
    assert client.v1.invoices.retrieve(invoice.id).attempt_count == 2
    sb.set_payment_behavior(customer.id, "succeeds")
    assert client.v1.invoices.pay(invoice.id).status == "paid"
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_an_invoice_written_off_can_still_be_paid(sb, client):
    """Stripe's invoice states: an uncollectible invoice's status "can only be changed to void or
    paid". A declined charge leaves it uncollectible; a good card pays it in full."""
    clock, meter, _, customer, sub = _setup(client, behavior="fails", sb=sb)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, 4, OCT + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    invoice = _cycle_invoice(client, customer)
    written_off = client.v1.invoices.mark_uncollectible(invoice.id)
    assert (written_off.status, written_off.amount_remaining) == ("uncollectible", 4 * 25)
    with pytest.raises(stripe.CardError):
        client.v1.invoices.pay(invoice.id)
    assert client.v1.invoices.retrieve(invoice.id).status == "uncollectible"
    sb.set_payment_behavior(customer.id, "succeeds")
    paid = client.v1.invoices.pay(invoice.id)
    assert (paid.status, paid.amount_paid, paid.amount_remaining) == ("paid", 4 * 25, 0)
    assert paid.status_transitions.marked_uncollectible_at is not None and paid.status_transitions.paid_at is not None
    assert client.v1.events.list({"type": "invoice.paid"}).data[0].data.object.id == invoice.id
    with pytest.raises(stripe.InvalidRequestError, match="already paid"):
        client.v1.invoices.pay(invoice.id)


def test_fails_then_succeeds_pays_on_the_first_automatic_retry(sb, client):
    clock, meter, _, customer, sub = _setup(client, behavior="fails_then_succeeds", sb=sb)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, 4, OCT + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 5 * 86400})
    invoice = _cycle_invoice(client, customer)
    assert (invoice.status, invoice.attempt_count, invoice.status_transitions.paid_at) == ("paid", 2, NOV + 3600 + 3 * 86400)
    assert client.v1.subscriptions.retrieve(sub.id).status == "active"


def test_retries_exhausted_leave_the_subscription_past_due_by_default(sb, client):
    clock, meter, _, customer, sub = _setup(client, behavior="fails", sb=sb)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, 4, OCT + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 20 * 86400})
    invoice = _cycle_invoice(client, customer)
    assert (invoice.status, invoice.attempt_count, invoice.next_payment_attempt) == ("open", 4, None)
    assert client.v1.subscriptions.retrieve(sub.id).status == "past_due"


def test_metadata_and_test_payment_methods_configure_the_card(sb, client):
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    meter, price = metered_price(client)
    by_metadata = client.v1.customers.create({"test_clock": clock.id, "metadata": {"payment_behavior": "fails"}})
    by_method = client.v1.customers.create({"test_clock": clock.id, "payment_method": "pm_card_chargeCustomerFail"})
    for customer in (by_metadata, by_method):
        client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor": NOV})
        _usage(client, meter, customer, 4, OCT)   # 4 x 25 = 100: above Stripe's 50-cent minimum charge
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    assert sorted(i.status for i in client.v1.invoices.list({"status": "open"}).data) == ["open", "open"]


def test_a_billing_anchor_on_the_31st_bills_on_the_last_day_of_shorter_months(sb, client):
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    meter, price = metered_price(client)
    customer = client.v1.customers.create({"test_clock": clock.id})
    sub = client.v1.subscriptions.create(
        {"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor": ts("2026-10-31T00:00:00")}
    )
    assert sub["items"].data[0].current_period_end == ts("2026-10-31T00:00:00")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": ts("2026-12-31T12:00:00")})
    periods = sorted((i.period_start, i.period_end) for i in client.v1.invoices.list({"customer": customer.id}).data if i.billing_reason == "subscription_cycle")
    assert periods == [
        (OCT, ts("2026-10-31T00:00:00")),
        (ts("2026-10-31T00:00:00"), ts("2026-11-30T00:00:00")),
        (ts("2026-11-30T00:00:00"), ts("2026-12-31T00:00:00")),
    ]


def test_billing_cycle_anchor_config_keeps_the_day_past_shorter_months(sb, client):
    """Stripe's billing_cycle_anchor_config: the anchor is the day's next occurrence (Sep 30 for the 31st
    from a September start), and later periods keep the 31st. A plain billing_cycle_anchor on Sep 30
    would keep the 30th instead (Oct 30, Nov 30, ...)."""
    sep5 = ts("2026-09-05T00:00:00")
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": sep5})
    meter, price = metered_price(client)
    customer = client.v1.customers.create({"test_clock": clock.id})
    sub = client.v1.subscriptions.create(
        {"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor_config": {"day_of_month": 31}})
    assert sub.billing_cycle_anchor == ts("2026-09-30T00:00:00")
    assert sub.billing_cycle_anchor_config.day_of_month == 31
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": ts("2026-12-31T12:00:00")})
    periods = sorted((i.period_start, i.period_end) for i in client.v1.invoices.list({"customer": customer.id}).data
                     if i.billing_reason == "subscription_cycle")
    assert periods == [
        (sep5, ts("2026-09-30T00:00:00")),
        (ts("2026-09-30T00:00:00"), ts("2026-10-31T00:00:00")),
        (ts("2026-10-31T00:00:00"), ts("2026-11-30T00:00:00")),
        (ts("2026-11-30T00:00:00"), ts("2026-12-31T00:00:00")),
    ]
    with pytest.raises(stripe.InvalidRequestError, match="only specify one of these parameters"):
        client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}],
                                        "billing_cycle_anchor": ts("2026-12-31T12:00:00"),
                                        "billing_cycle_anchor_config": {"day_of_month": 31}})
    with pytest.raises(stripe.InvalidRequestError, match="billing_cycle_anchor_config\\[day_of_month\\]"):
        client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}],
                                        "billing_cycle_anchor_config": {"day_of_month": 32}})


def test_a_price_change_mid_period_bills_each_item_for_its_own_segment(sb, client):
    clock, meter, old, customer, sub = _setup(client)
    new = client.v1.prices.create(
        {"currency": "usd", "product": old.product, "unit_amount": 10, "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id}}
    )
    mid = ts("2026-10-15T00:00:00")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": mid})
    _usage(client, meter, customer, 10, mid - 3600)
    client.v1.subscriptions.update(sub.id, {"items": [{"id": sub["items"].data[0].id, "price": new.id}]})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": mid + 86400})
    _usage(client, meter, customer, 20, mid + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    invoice = _cycle_invoice(client, customer)
    assert sorted((l.pricing.price_details.price, l.quantity, l.amount) for l in invoice.lines.data) == sorted(
        [(old.id, 10, 250), (new.id, 20, 200)]
    )


def test_licensed_items_are_charged_in_advance_and_prorated(sb, client):
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": ts("2026-10-16T00:00:00")})
    product = client.v1.products.create({"name": "Platform fee"})
    fee = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 3100, "recurring": {"interval": "month"}})
    customer = client.v1.customers.create({"test_clock": clock.id})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": fee.id}], "billing_cycle_anchor": NOV})
    first = client.v1.invoices.retrieve(sub.latest_invoice)
    assert (first.billing_reason, first.status, first.amount_paid) == ("subscription_create", "paid", 1600)  # 16 of 31 days
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    assert _cycle_invoice(client, customer).amount_paid == 3100


def test_cancel_at_period_end_bills_the_last_period_then_cancels(sb, client):
    clock, meter, _, customer, sub = _setup(client)
    client.v1.subscriptions.update(sub.id, {"cancel_at_period_end": True})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, 8, OCT + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    ended = client.v1.subscriptions.retrieve(sub.id)
    assert (ended.status, ended.ended_at) == ("canceled", NOV)
    assert _cycle_invoice(client, customer).amount_paid == 8 * 25
    assert client.v1.events.list({"type": "customer.subscription.deleted"}).data[0].data.object.id == sub.id
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": ts("2026-12-15T00:00:00")})
    assert len([i for i in client.v1.invoices.list({"customer": customer.id}).data if i.billing_reason == "subscription_cycle"]) == 1


def test_deleting_a_customer_cancels_its_subscriptions_at_once(sb, client):
    """Stripe's DELETE /v1/customers/{id} "also immediately cancels any active subscriptions on the
    customer": canceled then, with customer.subscription.deleted, and no later invoice drafted."""
    clock, meter, _, customer, sub = _setup(client)
    oct20 = ts("2026-10-20T00:00:00")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": oct20})
    _usage(client, meter, customer, 3, OCT + 3600)
    client.v1.customers.delete(customer.id)
    ended = client.v1.subscriptions.retrieve(sub.id)
    assert (ended.status, ended.canceled_at, ended.ended_at) == ("canceled", oct20, oct20)
    events = client.v1.events.list({"limit": 2}).data
    assert [(e.type, e.data.object.id) for e in events] == [
        ("customer.deleted", customer.id), ("customer.subscription.deleted", sub.id)]
    assert events[1].data.object.status == "canceled"
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    assert [i.billing_reason for i in client.v1.invoices.list({"limit": 100}).data] == ["subscription_create"]


def test_cancel_with_invoice_now_bills_usage_so_far(sb, client):
    clock, meter, _, customer, sub = _setup(client)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": ts("2026-10-20T00:00:00")})
    _usage(client, meter, customer, 3, OCT + 3600)
    canceled = client.v1.subscriptions.cancel(sub.id, {"invoice_now": True})
    assert canceled.status == "canceled"
    invoice = _cycle_invoice(client, customer)
    assert (invoice.period_end, invoice.amount_due) == (ts("2026-10-20T00:00:00"), 75)


def test_pre_aggregated_windows_bill_only_the_latest_event_and_late_usage_after_finalization_is_lost(sb, client):
    clock, meter, _, customer, _ = _setup(client, window="hour")
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, 10, OCT + 3600)
    _usage(client, meter, customer, 4, OCT + 3600 + 1800)  # same hour, received later: replaces 10
    _usage(client, meter, customer, 6, OCT + 7200)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    invoice = _cycle_invoice(client, customer)
    assert (invoice.status, invoice.lines.data[0].quantity_decimal, invoice.amount_paid) == ("paid", Decimal(10), 250)
    _usage(client, meter, customer, 100, NOV - 60)  # after finalization: on no invoice
    assert client.v1.invoices.retrieve(invoice.id).amount_paid == 250


def test_negative_cycle_usage_is_billed_as_zero_not_credited(sb, client):
    """docs.stripe.com/billing/subscriptions/usage-based/recording-usage: "If the overall cycle usage is
    negative, Stripe reports the invoice line item usage quantity as 0". The sandbox billed 3 - 8 = -5
    units at 25 cents as a -125 line (audit); the summary still shows -5."""
    clock, meter, _, customer, _ = _setup(client)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, 3, OCT + 3600)
    _usage(client, meter, customer, -8, OCT + 7200)
    summary = client.v1.billing.meters.event_summaries.list(meter.id, {"customer": customer.id, "start_time": OCT,
                                                                      "end_time": OCT + 86400})
    assert [s.aggregated_value for s in summary.data] == [-5]
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    invoice = _cycle_invoice(client, customer)
    assert [(line.quantity_decimal, line.amount) for line in invoice.lines.data] == [(Decimal(0), 0)]
    assert invoice.total == 0


def test_a_backdated_subscription_runs_from_its_start_to_its_anchor(client) -> None:
    """Stripe's example: created Oct 15, backdated to Sep 1, anchored on Nov 1 (more than one interval
    after the start, one after the creation): the first period is Sep 1 - Nov 1. Without an anchor
    Stripe anchors at the creation and prorates at once, which the sandbox does not model: a 400."""
    import datetime as dt

    import stripe as stripe_sdk

    def ts(*args: int) -> int:
        return int(dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp())

    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": ts(2026, 10, 15, 14)})
    customer = client.v1.customers.create({"test_clock": clock.id})
    product = client.v1.products.create({"name": "Seats"})
    price = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 1000,
                                     "recurring": {"interval": "month"}})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}],
                                          "backdate_start_date": ts(2026, 9, 1), "billing_cycle_anchor": ts(2026, 11, 1),
                                          "proration_behavior": "none"})
    assert (sub.start_date, sub["items"].data[0].current_period_start, sub["items"].data[0].current_period_end) == (
        ts(2026, 9, 1), ts(2026, 9, 1), ts(2026, 11, 1))
    # "Backdating without charging users": proration_behavior none charges nothing for the backdated time
    first = client.v1.invoices.retrieve(sub.latest_invoice)
    assert (first.billing_reason, first.total, [line.amount for line in first.lines.data]) == ("subscription_create", 0, [0])
    for params in ({"backdate_start_date": ts(2026, 9, 1)},  # no anchor: Stripe anchors it at its creation
                   # charged, over two cycles: Stripe's rule for the prorated line is given for less than one
                   {"backdate_start_date": ts(2026, 9, 1), "billing_cycle_anchor": ts(2026, 11, 1)}):
        with pytest.raises(stripe_sdk.InvalidRequestError) as refused:
            client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}], **params})
        assert refused.value.param == "backdate_start_date"


@pytest.mark.parametrize(("now", "start", "anchor", "behavior", "cents"), [
    # docs.stripe.com/billing/subscriptions/backdating: backdated to February 15 (non-leap year), billed
    # on the 1st: "exactly half the amount of a normal monthly charge"
    ((2027, 2, 20), (2027, 2, 15), (2027, 3, 1), None, 500),
    # "to January 15 ... 17 divided by 31 (or 0.548) of a normal monthly charge": 548.39 cents
    ((2027, 1, 20), (2027, 1, 15), (2027, 2, 1), "create_prorations", 548),
    ((2027, 1, 20), (2027, 1, 15), (2027, 2, 1), "always_invoice", 548),
    # a whole cycle, backdated to its first day: the full fee
    ((2027, 1, 20), (2027, 1, 1), (2027, 2, 1), None, 1000),
    # "proration_behavior: 'none' ... doesn't charge the customer for backdated time"
    ((2027, 2, 20), (2027, 2, 15), (2027, 3, 1), "none", 0),
    ((2027, 1, 20), (2027, 1, 1), (2027, 2, 1), "none", 0),
    # and with a later anchor and no backdating: "the initial period up to the first full invoice date
    # for free" (docs.stripe.com/payments/checkout/billing-cycle); prorated otherwise (11/28 of 1000)
    ((2027, 2, 18), None, (2027, 3, 1), "none", 0),
    ((2027, 2, 18), None, (2027, 3, 1), None, 393),
])
def test_the_first_period_up_to_the_anchor_is_charged_prorated_unless_proration_behavior_is_none(
        client, now, start, anchor, behavior, cents) -> None:
    import datetime as dt

    def ts(*args: int) -> int:
        return int(dt.datetime(*args, tzinfo=dt.timezone.utc).timestamp())

    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": ts(*now)})
    customer = client.v1.customers.create({"test_clock": clock.id})
    product = client.v1.products.create({"name": "Seats"})
    price = client.v1.prices.create({"currency": "usd", "product": product.id, "unit_amount": 1000,
                                     "recurring": {"interval": "month"}})
    params = {"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor": ts(*anchor)}
    if start:
        params["backdate_start_date"] = ts(*start)
    if behavior:
        params["proration_behavior"] = behavior
    sub = client.v1.subscriptions.create(params)
    first = client.v1.invoices.retrieve(sub.latest_invoice)
    [line] = first.lines.data
    assert (first.total, line.amount, line.period.start, line.period.end) == (
        cents, cents, ts(*(start or now)), ts(*anchor) - 1)  # a line's period end is its last second
