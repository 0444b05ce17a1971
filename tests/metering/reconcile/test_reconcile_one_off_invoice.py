"""An operator's one-off invoice on our customer's Stripe customer is not the billing period's.

Real ingest, rating, catalog sync, push, items run, pull and reconciliation against the loopback sandbox,
the customer on a test clock (the world of `test_reconcile_items_on_a_later_invoice.py`: acme on pro,
Stripe's September lines 7000, our total 14900 of which 7900 the engine's items). On Sep 1 an operator
bills acme a 50000 onboarding workshop on a one-off invoice (`POST /v1/invoices`, no subscription,
`billing_reason` manual), which Stripe finalizes an hour later and charges. It bills nothing we rate,
like another product's subscription invoice (`test_another_products_invoice_is_not_the_periods`): its
line was counted as September's, so the month's invoice row was 50000 over, unexplained, and the
blocking check failed on an invoice nobody got wrong.
"""

from __future__ import annotations

import datetime as dt

from metering import warehouse
from metering.reconcile.pulls import pull_stripe_state
from metering.reconcile.run import reconcile_period
from metering.reconcile.settings import ReconcileSettings
from metering.stripe.invoice_items import bill_invoice_items
from recon_scenario import acme_september_on_clock, rate_days

SEP = dt.date(2026, 9, 1)
ITEMS = 200 + 7700
ROW = ("our_total_minor", "not_in_stripe_minor", "engine_items_minor", "engine_items_pending_minor",
       "unbilled_minor", "stripe_total_minor", "amount_diff_minor", "amount_paid", "status")
SETTINGS = ReconcileSettings(settle_seconds=0, pull_rate=0)
OCT1_0230 = int(dt.datetime(2026, 10, 1, 2, 30, tzinfo=dt.UTC).timestamp())


def test_a_one_off_invoice_is_not_the_periods_and_fails_no_check(stripe_sandbox, isolated_env, rules_dir, tmp_path):
    client = stripe_sandbox.client(max_network_retries=2)
    workshop: dict[str, str] = {}

    def bill_a_workshop(clock) -> None:
        [stripe_customer] = [c for c in client.v1.customers.list({"test_clock": clock.id}).data]
        invoice = client.v1.invoices.create({"customer": stripe_customer.id, "auto_advance": True,
                                             "description": "Onboarding workshop"})
        client.v1.invoice_items.create({"customer": stripe_customer.id, "amount": 50000, "invoice": invoice.id,
                                        "description": "Onboarding workshop"})
        workshop["id"] = invoice.id

    with warehouse.open_warehouse() as con:
        rules, clock = acme_september_on_clock(con, client, rules_dir, tmp_path, before_push=bill_a_workshop)
        client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": OCT1_0230})
        rate_days(con, rules, SEP, [])
        bill_invoice_items(con, client, SEP, rate=0)
        pull_stripe_state(con, client, SEP, meters=["api_calls", "seats", "tokens"], settings=SETTINGS)
        pulled = con.execute("SELECT status, total, subscription_id FROM stripe_invoices_api WHERE invoice_id = ?",
                             [workshop["id"]]).fetchall()
        result = reconcile_period(con, SEP, settings=SETTINGS)

    # the workshop was pulled as what it is: paid, 50000, of no subscription
    assert pulled == [("paid", 50000, None)]
    [row] = result.invoices.rows(named=True)
    # as without the workshop (test_reconcile_items_on_a_later_invoice: the items pending for October's invoice)
    assert tuple(row[c] for c in ROW) == (14900, ITEMS, 0, ITEMS, 0, 7000, 0, 7000, "matched")
    assert workshop["id"] not in row["invoice_ids"].split(",")
    assert result.usage["explained"].all()
    assert result.unexplained_minor() == {}
    assert result.check_passed()

