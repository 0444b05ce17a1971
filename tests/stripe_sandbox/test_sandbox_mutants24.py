"""Hand mutation audit of the twenty-fourth session's sandbox code (one-off invoices, the customer
balance and the minimum charge): tests for the mutants the existing tests let through. Each test names
the mutant it kills. Amounts are worked by hand; every response matches the spec (``sb``)."""

from __future__ import annotations

from conftest import metered_price, ts

OCT = ts("2026-10-01T00:00:00")


def test_days_until_due_zero_makes_the_invoice_due_at_its_creation(sb, client):
    """Spec, days_until_due: "The number of days from when the invoice is created until it is due"; the
    sandbox refuses only a negative count ("0 or more"). 0 days: due at creation, OCT + 0 x 86400 = OCT.
    Kills M19 (`count < 0` -> `count <= 0`, which refused 0)."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    customer = client.v1.customers.create({"name": "Acme", "test_clock": clock.id})
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd",
                                         "collection_method": "send_invoice", "days_until_due": 0})
    assert (invoice.status, invoice.due_date) == ("draft", OCT)


def test_confirming_auto_advance_on_an_open_invoice_schedules_no_finalization(sb, client):
    """Spec, automatically_finalizes_at: "If the invoice is not in the draft state, this field will always
    be null". A sent invoice finalized with auto_advance true is open (1000 due, nothing charged); an update
    repeating auto_advance=true changes nothing, and no finalization time appears.
    Kills M24 (the scheduling without `status == "draft"`)."""
    customer = client.v1.customers.create({"name": "Acme"})
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd", "collection_method": "send_invoice"})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 1000, "invoice": invoice.id})
    opened = client.v1.invoices.finalize_invoice(invoice.id, {"auto_advance": True})
    assert (opened.status, opened.auto_advance, opened.amount_due, opened.automatically_finalizes_at) == ("open", True, 1000, None)
    again = client.v1.invoices.update(invoice.id, {"auto_advance": True})
    assert (again.status, again.auto_advance, again.automatically_finalizes_at) == ("open", True, None)
    assert client.v1.invoices.retrieve(invoice.id).automatically_finalizes_at is None


def test_a_balance_on_a_customer_with_no_currency_yet_shows_on_its_first_draft(sb, client):
    """Spec, starting_balance: "If the invoice has not been finalized yet, this will be the current
    customer balance". A customer created with 300 of credit and no currency yet; its first (one-off,
    usd) draft, empty: starting_balance -300, amount_due max(0 - 300, 0) = 0. Finalized with a 1000 item
    added: 1000 - 300 = 700 due, balance 0.
    Kills M28 (a customer without a currency no longer counted as in the invoice's)."""
    customer = client.v1.customers.create({"name": "Acme", "balance": -300})
    assert client.v1.customers.retrieve(customer.id).currency is None
    draft = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    assert (draft.total, draft.starting_balance, draft.amount_due) == (0, -300, 0)
    client.v1.invoice_items.create({"customer": customer.id, "amount": 1000, "invoice": draft.id})
    opened = client.v1.invoices.finalize_invoice(draft.id, {"auto_advance": False})
    assert (opened.starting_balance, opened.amount_due, opened.ending_balance) == (-300, 700, 0)
    assert client.v1.customers.retrieve(customer.id).balance == 0


def test_a_balance_in_the_customers_currency_is_not_applied_to_an_invoice_in_another(sb, client):
    """Spec, customer.balance: "stored on the customer in their default currency" (multi-currency
    balances are another field the sandbox does not model). A usd customer with 500 of credit; a eur
    one-off invoice of 1000: starting_balance 0, 1000 due and charged, the usd credit untouched (-500).
    Kills M29 (the currency check dropped: the usd credit paid half the eur invoice)."""
    customer = client.v1.customers.create({"name": "Acme", "balance": -500})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 200, "currency": "usd"})   # its currency: usd
    assert client.v1.customers.retrieve(customer.id).currency == "usd"
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "eur"})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 1000, "invoice": invoice.id})
    draft = client.v1.invoices.retrieve(invoice.id)
    assert (draft.starting_balance, draft.amount_due) == (0, 1000)
    paid = client.v1.invoices.pay(invoice.id)
    assert (paid.currency, paid.status, paid.starting_balance, paid.amount_due, paid.amount_paid) == ("eur", "paid", 0, 1000, 1000)
    assert client.v1.customers.retrieve(customer.id).balance == -500


def test_a_currency_without_a_listed_minimum_charges_any_amount(sb, client):
    """`MINIMUM_CHARGE` lists Stripe's documented minimums; other currencies have none (its docstring). A
    25-unit invoice in krw (not listed) is charged in full: amount_due 25, paid 25, nothing carried.
    Kills M33 (a default minimum of 50 for unlisted currencies: the 25 carried to the balance)."""
    customer = client.v1.customers.create({"name": "Acme"})
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "krw"})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 25, "invoice": invoice.id})
    paid = client.v1.invoices.pay(invoice.id)
    assert (paid.status, paid.amount_due, paid.amount_paid, paid.ending_balance) == ("paid", 25, 25, 0)
    assert client.v1.customers.retrieve(customer.id).balance == 0


def test_the_usd_minimum_is_fifty_cents_exactly(sb, client):
    """Stripe's usd minimum charge is 50 cents (`MINIMUM_CHARGE`, from docs.stripe.com/currencies): 49
    cents is below it (paid with nothing due, 49 owed on the balance), 50 cents is not (charged).
    The second customer's 50 is charged: amount_paid 50, balance 0.
    Kills M39 (`"usd": 50` -> 49: the 49-cent invoice was charged)."""
    results = []
    for cents in (49, 50):
        customer = client.v1.customers.create({"name": f"Acme {cents}"})
        invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
        client.v1.invoice_items.create({"customer": customer.id, "amount": cents, "invoice": invoice.id})
        paid = client.v1.invoices.pay(invoice.id)
        results.append((paid.status, paid.amount_due, paid.amount_paid, paid.ending_balance,
                        client.v1.customers.retrieve(customer.id).balance))
    assert results == [("paid", 0, 0, 49, 49), ("paid", 50, 50, 0, 0)]


def test_a_credit_invoice_in_another_currency_leaves_the_balance_as_it_was(sb, client):
    """A usd customer (balance 0) gets a eur one-off invoice whose only line is a -300 credit: total -300,
    nothing due, paid at finalization. The sandbox keeps one balance, in the customer's currency (spec,
    customer.balance); the spec is silent on where a credit in another currency goes (Stripe's
    `invoice_credit_balance`, not modelled), so the sandbox carries none: ending_balance 0, the usd
    balance stays 0, and the invoice records no change to give back.
    Kills M34 (`customer is not None` dropped: ending_balance -300 on an invoice that changed no balance)."""
    customer = client.v1.customers.create({"name": "Acme"})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 100, "currency": "usd"})   # its currency: usd
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "eur"})
    client.v1.invoice_items.create({"customer": customer.id, "amount": -300, "invoice": invoice.id})
    done = client.v1.invoices.finalize_invoice(invoice.id, {"auto_advance": False})
    assert (done.status, done.total, done.amount_due, done.starting_balance, done.ending_balance) == ("paid", -300, 0, 0, 0)
    assert client.v1.customers.retrieve(customer.id).balance == 0


def test_a_subscriptions_zero_first_invoice_is_paid_once(sb, client):
    """A metered price only: the subscription's first invoice is 0 (no usage yet). Finalizing it pays it
    (nothing due: spec, invoice, amount_due "may be 0" and the invoice is marked paid), so there is no
    payment attempt after: exactly one invoice.paid and one invoice.payment_succeeded, attempt_count 0.
    Kills M44 (`or invoice["status"] != "open"` dropped: the paid invoice was "paid" a second time)."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT})
    _, price = metered_price(client)
    customer = client.v1.customers.create({"name": "Acme", "test_clock": clock.id})
    sub = client.v1.subscriptions.create({"customer": customer.id, "items": [{"price": price.id}]})
    first = client.v1.invoices.retrieve(sub.latest_invoice)
    assert (first.billing_reason, first.total, first.status, first.attempt_count, sub.status) == (
        "subscription_create", 0, "paid", 0, "active")
    kinds = [e.type for e in client.v1.events.list({"limit": 100}).data
             if e.type.startswith("invoice.") and e.data.object.id == first.id]
    assert sorted(kinds) == ["invoice.created", "invoice.finalized", "invoice.paid", "invoice.payment_succeeded"]


def test_finalization_takes_the_balance_as_it_is_then(sb, client):
    """Spec, starting_balance: "Starting customer balance before the invoice is finalized". A one-off
    draft gets a 1000 item while the balance is 0; then the customer is given 200 of credit; finalized:
    starting_balance -200, amount_due 1000 - 200 = 800, ending_balance 0, the customer's balance 0.
    Kills M59 (`starting_balance` not set at finalization: it stayed 0 while 800 was due)."""
    customer = client.v1.customers.create({"name": "Acme"})
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 1000, "invoice": invoice.id})
    client.v1.customers.update(customer.id, {"balance": -200})
    opened = client.v1.invoices.finalize_invoice(invoice.id, {"auto_advance": False})
    assert (opened.status, opened.starting_balance, opened.amount_due, opened.ending_balance) == ("open", -200, 800, 0)
    assert client.v1.customers.retrieve(customer.id).balance == 0


def test_a_draft_shows_the_customers_balance_as_it_is_now(sb, client):
    """Spec, starting_balance: "If the invoice has not been finalized yet, this will be the current customer
    balance"; amount_due takes it into account. A draft of 1000 made while the balance is 0; then the
    customer is given 200 of credit: the draft, retrieved, says starting_balance -200 and amount_due 800.
    Another invoice of 150 then takes 150 of that credit when paid: the draft says -50 and 950. The
    sandbox set both when the draft's lines last changed and kept them (0 and 1000: audit 24, m24d)."""
    customer = client.v1.customers.create({"name": "Acme"})
    invoice = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 1000, "invoice": invoice.id})
    client.v1.customers.update(customer.id, {"balance": -200})
    draft = client.v1.invoices.retrieve(invoice.id)
    assert (draft.status, draft.total, draft.starting_balance, draft.amount_due) == ("draft", 1000, -200, 800)
    other = client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    client.v1.invoice_items.create({"customer": customer.id, "amount": 150, "invoice": other.id})
    paid = client.v1.invoices.pay(other.id)
    assert (paid.amount_due, paid.ending_balance) == (0, -50)
    draft = client.v1.invoices.retrieve(invoice.id)
    assert (draft.starting_balance, draft.amount_due) == (-50, 950)
