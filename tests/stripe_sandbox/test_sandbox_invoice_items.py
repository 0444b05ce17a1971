"""Invoice items: pending items join the next invoice drafted for their customer (a subscription's
invoices take the items of that subscription and those of none), ``invoice=`` adds an item to a
draft at once, finalized invoices refuse them, and every response matches the spec (``sb``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import stripe

from conftest import Receiver, cycle_invoice as _cycle_invoice, metered_price, post_form as _post, ts, usage as _usage
from metering.stripe_sandbox import spec
from metering.stripe_sandbox.testing import running_sandbox

OCT = ts("2026-10-01T00:00:00")
NOV = ts("2026-11-01T00:00:00")
DEC = ts("2026-12-01T00:00:00")


def _setup(client, name="Acme", clock=None, price=None):
    """A customer on a test clock with a monthly metered subscription (25 cents a unit) anchored on Nov 1."""
    clock = clock or client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    meter, price = price or metered_price(client)
    customer = client.v1.customers.create({"name": name, "test_clock": clock.id})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor": NOV})
    return clock, (meter, price), customer, sub


def _item_lines(invoice):
    return [line for line in invoice.lines.data if line.parent.type == "invoice_item_details"]


def test_pending_items_join_the_period_invoice_with_exact_totals(sb, client):
    clock, (meter, price), customer, sub = _setup(client)
    _, _, other, other_sub = _setup(client, "Other", clock, (meter, price))
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, 40, OCT + 3600)  # 40 x 25 = 1000
    minimum = client.v1.invoice_items.create({
        "customer": customer.id, "amount": 4000, "currency": "usd", "subscription": sub.id,
        "description": "Minimum commitment", "period": {"start": OCT, "end": NOV - 1},
        "metadata": {"metering_item": "min-oct", "charge": "minimum"},
    })
    credit = client.v1.invoice_items.create({"customer": customer.id, "amount": -1500, "description": "Goodwill credit"})
    elsewhere = client.v1.invoice_items.create({"customer": other.id, "amount": 700, "subscription": other_sub.id})
    assert (minimum.invoice, minimum.date, minimum.test_clock, minimum.proration, minimum.quantity) == (None, OCT + 86400, clock.id, False, 1)
    assert minimum.parent.type == "subscription_details" and minimum.parent.subscription_details.subscription == sub.id
    assert (credit.currency, credit.parent, credit.discountable) == ("usd", None, False)  # the customer's currency
    assert (credit.period.start, credit.period.end) == (OCT + 86400, OCT + 86400)

    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    invoice = _cycle_invoice(client, customer)
    assert invoice.status == "draft"
    assert (invoice.subtotal, invoice.total, invoice.amount_due, invoice.amount_remaining) == (3500, 3500, 3500, 3500)
    by_item = {line.parent.invoice_item_details.invoice_item: line for line in _item_lines(invoice)}
    assert set(by_item) == {minimum.id, credit.id}
    line = by_item[minimum.id]
    assert (line.amount, line.currency, line.description, line.quantity) == (4000, "usd", "Minimum commitment", 1)
    assert line.metadata.to_dict() == {"metering_item": "min-oct", "charge": "minimum"}
    assert (line.period.start, line.period.end) == (OCT, NOV - 1)
    assert line.parent.invoice_item_details.subscription == sub.id and line.parent.invoice_item_details.proration is False
    assert by_item[credit.id].parent.invoice_item_details.subscription is None
    assert client.v1.invoice_items.retrieve(minimum.id).invoice == invoice.id
    # the other customer's item went to the other customer's invoice only
    assert client.v1.invoice_items.retrieve(elsewhere.id).invoice == _cycle_invoice(client, other).id

    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    paid = client.v1.invoices.retrieve(invoice.id)
    assert (paid.status, paid.total, paid.amount_paid) == ("paid", 3500, 3500)
    assert len(_item_lines(paid)) == 2


def test_an_item_added_to_a_draft_stays_through_finalization(sb, client):
    clock, (meter, _), customer, _ = _setup(client)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, 8, OCT + 3600)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    draft = _cycle_invoice(client, customer)
    assert draft.amount_due == 200
    item = client.v1.invoice_items.create(
        {"customer": customer.id, "amount": 2500, "invoice": draft.id, "metadata": {"metering_item": "dim-eu"}})
    assert item.invoice == draft.id
    updated = client.v1.events.list({"type": "invoice.updated"}).data[0]
    assert updated.data.object.id == draft.id and updated.data.object.amount_due == 2700
    assert updated.data.previous_attributes.amount_due == 200
    _usage(client, meter, customer, 2, NOV - 10)  # late usage in the grace period lands on the draft too
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    final = client.v1.invoices.retrieve(draft.id)
    assert (final.status, final.total, final.amount_paid) == ("paid", 10 * 25 + 2500, 10 * 25 + 2500)
    [line] = _item_lines(final)
    assert (line.amount, line.parent.invoice_item_details.invoice_item, line.metadata["metering_item"]) == (2500, item.id, "dim-eu")
    assert [i.id for i in client.v1.invoice_items.list({"invoice": draft.id}).data] == [item.id]


def test_a_finalized_invoice_refuses_new_items_and_nothing_is_created(sb, client):
    _, _, customer, sub = _setup(client)
    first = client.v1.invoices.retrieve(sub.latest_invoice)
    assert first.status == "paid"
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.invoice_items.create({"customer": customer.id, "amount": 500, "invoice": first.id})
    assert (raised.value.http_status, raised.value.code, raised.value.param) == (400, "invoice_not_editable", "invoice")
    assert raised.value.user_message == "Invalid invoice: This invoice is no longer editable"
    assert client.v1.invoice_items.list({"customer": customer.id}).data == []
    assert client.v1.invoices.retrieve(first.id).total == first.total


def test_an_invoice_of_another_customer_is_refused(sb, client):
    clock, price, customer, _ = _setup(client)
    _, _, other, _ = _setup(client, "Other", clock, price)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.invoice_items.create({"customer": other.id, "amount": 500, "invoice": _cycle_invoice(client, customer).id})
    assert (raised.value.http_status, raised.value.param) == (400, "invoice")
    assert client.v1.invoice_items.list().data == []


def test_unknown_customer_subscription_invoice_and_item_are_404(sb, client):
    _, _, customer, _ = _setup(client)
    cases = [
        ({"customer": "cus_missing", "amount": 1}, "customer"),
        ({"customer": customer.id, "amount": 1, "subscription": "sub_missing"}, "subscription"),
        ({"customer": customer.id, "amount": 1, "invoice": "in_missing"}, "invoice"),
    ]
    for params, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as raised:
            client.v1.invoice_items.create(params)
        assert (raised.value.http_status, raised.value.code, raised.value.param) == (404, "resource_missing", param)
    for call in (lambda: client.v1.invoice_items.retrieve("ii_missing"), lambda: client.v1.invoice_items.delete("ii_missing")):
        with pytest.raises(stripe.InvalidRequestError) as raised:
            call()
        assert raised.value.http_status == 404 and raised.value.user_message == "No such invoiceitem: 'ii_missing'"
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.invoice_items.create({"customer": customer.id})
    assert (raised.value.code, raised.value.param) == ("parameter_missing", "amount")
    with pytest.raises(stripe.InvalidRequestError):  # priced by amount only: not silently ignored
        client.v1.invoice_items.create({"customer": customer.id, "pricing": {"price": "price_x"}})
    assert client.v1.invoice_items.list().data == []


def test_a_customer_without_a_currency_must_name_one(sb, client):
    customer = client.v1.customers.create({"name": "New"})
    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.invoice_items.create({"customer": customer.id, "amount": 100})
    assert (raised.value.code, raised.value.param) == ("parameter_missing", "currency")
    item = client.v1.invoice_items.create({"customer": customer.id, "amount": 100, "currency": "EUR"})
    assert item.currency == "eur" and client.v1.customers.retrieve(customer.id).currency == "eur"


def test_pending_items_are_deleted_and_updated_freely_but_finalized_ones_are_not(sb, client):
    clock, _, customer, _ = _setup(client)
    kept = client.v1.invoice_items.create({"customer": customer.id, "amount": 300, "description": "kept"})
    dropped = client.v1.invoice_items.create({"customer": customer.id, "amount": 900})
    updated = client.v1.invoice_items.update(
        kept.id, {"amount": 350, "description": "kept, repriced", "metadata": {"k": "v"}, "period": {"start": OCT, "end": OCT + 59}})
    assert (updated.amount, updated.description, updated.metadata.to_dict(), updated.period.end) == (350, "kept, repriced", {"k": "v"}, OCT + 59)
    with pytest.raises(stripe.InvalidRequestError) as raised:  # a bad parameter changes nothing
        client.v1.invoice_items.update(kept.id, {"amount": 1, "period": {"start": OCT + 60, "end": OCT}})
    assert raised.value.param == "period[end]" and client.v1.invoice_items.retrieve(kept.id).amount == 350
    assert client.v1.invoice_items.delete(dropped.id).deleted is True
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.invoice_items.retrieve(dropped.id)
    assert [i.id for i in client.v1.invoice_items.list({"customer": customer.id}).data] == [kept.id]

    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    invoice = _cycle_invoice(client, customer)
    assert (invoice.status, invoice.total) == ("paid", 350)
    for call in (lambda: client.v1.invoice_items.delete(kept.id), lambda: client.v1.invoice_items.update(kept.id, {"amount": 1})):
        with pytest.raises(stripe.InvalidRequestError) as raised:
            call()
        assert (raised.value.http_status, raised.value.code) == (400, "invoice_not_editable")
    assert client.v1.invoice_items.retrieve(kept.id).amount == 350
    assert client.v1.invoices.retrieve(invoice.id).total == 350
    types = {e.type for e in client.v1.events.list({"limit": 100}).data}
    assert {"invoiceitem.created", "invoiceitem.deleted"} <= types


def test_changing_or_deleting_an_item_on_a_draft_recomputes_its_totals(sb, client):
    clock, (meter, _), customer, _ = _setup(client)
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT + 86400})
    _usage(client, meter, customer, 4, OCT + 3600)  # 100
    a = client.v1.invoice_items.create({"customer": customer.id, "amount": 1000})
    b = client.v1.invoice_items.create({"customer": customer.id, "amount": 2000})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    draft = _cycle_invoice(client, customer)
    assert draft.total == 3100
    client.v1.invoice_items.update(a.id, {"amount": 1200, "metadata": {"v": "2"}})
    changed = client.v1.invoices.retrieve(draft.id)
    assert (changed.total, changed.amount_due) == (3300, 3300)
    line_a = next(l for l in _item_lines(changed) if l.parent.invoice_item_details.invoice_item == a.id)
    assert (line_a.amount, line_a.metadata.to_dict()) == (1200, {"v": "2"})
    client.v1.invoice_items.delete(b.id)
    after = client.v1.invoices.retrieve(draft.id)
    assert (after.total, [l.parent.invoice_item_details.invoice_item for l in _item_lines(after)]) == (1300, [a.id])
    assert client.v1.events.list({"type": "invoice.updated"}).data[0].data.previous_attributes.total == 3300


def test_a_credit_larger_than_the_charges_leaves_nothing_due(sb, client):
    clock, _, customer, _ = _setup(client)
    client.v1.invoice_items.create({"customer": customer.id, "amount": -800})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 3600})
    invoice = _cycle_invoice(client, customer)
    assert (invoice.status, invoice.total, invoice.amount_due, invoice.amount_paid) == ("paid", -800, 0, 0)


def test_a_subscriptions_first_invoice_takes_pending_items_but_not_another_subscriptions(sb, client):
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    meter, price = metered_price(client)
    customer = client.v1.customers.create({"test_clock": clock.id})
    setup_fee = client.v1.invoice_items.create({"customer": customer.id, "amount": 5000, "currency": "usd", "description": "Setup"})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor": NOV})
    first = client.v1.invoices.retrieve(sub.latest_invoice)
    assert (first.billing_reason, first.status, first.amount_paid) == ("subscription_create", "paid", 5000)
    assert client.v1.invoice_items.retrieve(setup_fee.id).invoice == first.id
    second = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}], "billing_cycle_anchor": NOV})
    for_second = client.v1.invoice_items.create({"customer": customer.id, "amount": 100, "subscription": second.id})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    drafts = {i.parent.subscription_details.subscription: i for i in client.v1.invoices.list({"customer": customer.id, "status": "draft"}).data}
    assert drafts[sub.id].total == 0 and drafts[second.id].total == 100
    assert client.v1.invoice_items.retrieve(for_second.id).invoice == drafts[second.id].id


def test_voiding_keeps_the_items_and_deleting_a_one_off_draft_frees_them(sb, client):
    clock, _, customer, _ = _setup(client)
    item = client.v1.invoice_items.create({"customer": customer.id, "amount": 400})
    one_off = client.v1.invoices.create({"customer": customer.id, "pending_invoice_items_behavior": "include"})
    assert client.v1.invoice_items.retrieve(item.id).invoice == one_off.id
    client.v1.invoices.delete(one_off.id)
    assert client.v1.invoice_items.retrieve(item.id).invoice is None
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    november = _cycle_invoice(client, customer)
    assert november.total == 400
    client.v1.invoices.finalize_invoice(november.id, {"auto_advance": False})
    client.v1.invoices.void_invoice(november.id)
    assert client.v1.invoice_items.retrieve(item.id).invoice == november.id
    assert client.v1.invoice_items.list({"pending": True}).data == []


def test_an_idempotent_replay_returns_the_same_item_and_creates_no_second(sb, client):
    _, _, customer, _ = _setup(client)
    data = {"customer": customer.id, "amount": "4000", "metadata[metering_item]": "k1"}
    first = _post(sb, "/v1/invoiceitems", data, "ii-key-1")
    again = _post(sb, "/v1/invoiceitems", data, "ii-key-1")
    assert first.status_code == again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and first.json()["id"].startswith("ii_")
    assert again.headers["Idempotent-Replayed"] == "true"
    a = client.v1.invoice_items.create({"customer": customer.id, "amount": 10}, {"idempotency_key": "ii-key-2"})
    b = client.v1.invoice_items.create({"customer": customer.id, "amount": 10}, {"idempotency_key": "ii-key-2"})
    assert a.id == b.id
    assert len(client.v1.invoice_items.list({"customer": customer.id}).data) == 2
    assert _post(sb, "/v1/invoiceitems", {**data, "amount": "1"}, "ii-key-1").status_code == 400  # other parameters


def test_the_list_filters_and_pages_newest_first(sb, client):
    clock, price, customer, _ = _setup(client)
    _, _, other, _ = _setup(client, "Other", clock, price)
    billed = client.v1.invoice_items.create({"customer": customer.id, "amount": 1})
    client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": NOV + 60})
    invoice = _cycle_invoice(client, customer)
    waiting = [client.v1.invoice_items.create({"customer": customer.id, "amount": n}).id for n in (2, 3, 4)]
    theirs = client.v1.invoice_items.create({"customer": other.id, "amount": 5})
    assert [i.id for i in client.v1.invoice_items.list({"pending": True, "customer": customer.id}).data] == waiting[::-1]
    assert [i.id for i in client.v1.invoice_items.list({"pending": False}).data] == [billed.id]
    assert [i.id for i in client.v1.invoice_items.list({"invoice": invoice.id}).data] == [billed.id]
    assert [i.id for i in client.v1.invoice_items.list({"customer": other.id}).data] == [theirs.id]
    page = client.v1.invoice_items.list({"customer": customer.id, "limit": 2})
    assert [i.id for i in page.data] == waiting[:0:-1] and page.has_more
    rest = client.v1.invoice_items.list({"customer": customer.id, "limit": 2, "starting_after": page.data[-1].id})
    assert [i.id for i in rest.data] == [waiting[0], billed.id] and not rest.has_more
    back = client.v1.invoice_items.list({"customer": customer.id, "ending_before": rest.data[0].id})
    assert [i.id for i in back.data] == [i.id for i in page.data]
    assert [i.id for i in client.v1.invoice_items.list({"created": {"gt": NOV}}).data] == [theirs.id, *waiting[::-1]]


def test_item_events_reach_webhook_endpoints(sb, client):
    receiver = Receiver()
    try:
        endpoint = client.v1.webhook_endpoints.create(
            {"url": receiver.url, "enabled_events": ["invoiceitem.created", "invoiceitem.deleted"]})
        customer = client.v1.customers.create({"name": "Hooked"})
        item = client.v1.invoice_items.create({"customer": customer.id, "amount": 100, "currency": "usd"})
        client.v1.invoice_items.delete(item.id)
        sb.wait_for_webhooks()
        events = [stripe.Webhook.construct_event(body, signature, endpoint.secret) for body, signature, _ in receiver.received]
        assert sorted(e.type for e in events) == ["invoiceitem.created", "invoiceitem.deleted"]
        for body, _, _ in receiver.received:
            payload = json.loads(body)
            spec.validate_object("event", payload)
            spec.validate_object("invoiceitem", payload["data"]["object"])
            assert payload["data"]["object"]["id"] == item.id
    finally:
        receiver.close()


def test_items_survive_a_restart(tmp_path: Path):
    state = tmp_path / "sandbox.json"
    with running_sandbox(state_file=str(state), now=OCT) as handle:
        client = handle.client()
        customer = client.v1.customers.create({"name": "Kept"})
        item = client.v1.invoice_items.create({"customer": customer.id, "amount": 4200, "currency": "usd", "metadata": {"k": "v"}})
    assert item.id in json.loads(state.read_text())["objects"]["invoiceitem"]
    with running_sandbox(state_file=str(state), now=OCT) as handle:
        kept = handle.client().v1.invoice_items.retrieve(item.id)
        assert (kept.amount, kept.metadata["k"], kept.invoice) == (4200, "v", None)
