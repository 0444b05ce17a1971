"""Hand mutation audit of the twenty-fourth session's one-off rule in `merged_invoices_sql`: which source
says whether an invoice is one-off when both know it. Real DuckDB warehouse (`isolated_env`), the webhook
landed and folded by the state rebuild as in production."""

from __future__ import annotations

import datetime as dt

from recon_scenario import EXPECTED_INVOICES, MONTH, PULLED, land_invoice_webhook, write_scenario

from metering import warehouse
from metering.reconcile.inputs import merged_invoices_sql
from metering.reconcile.run import reconcile_period
from metering.reconcile.settings import ReconcileSettings
from metering.rules.meters import load_meters


def test_the_pull_says_whether_an_invoice_is_one_off_when_its_state_is_further(isolated_env, tmp_path):
    """in_manual: pulled open, naming subscription sub_cus_a (our API version names it in `parent`), so
    not one-off (`subscription_id IS NULL` is false). Its webhook state is further (paid) and says
    `billing_reason` manual, as Stripe reports an invoice created by hand with `subscription=` (the spec's
    POST /v1/invoices takes `subscription`; it does not say which billing_reason results, so this is the
    case where the two sources can disagree). The merged row comes from the state (status paid) but,
    as for its customer and lines, the pull's word stands: one_off false, subscription sub_cus_a.
    Kills M51 (`coalesce({manual}, p.one_off)`: the state's billing_reason preferred, one_off true)."""
    oct10 = dt.datetime(2026, 10, 10, tzinfo=dt.UTC)
    stamp = int(oct10.timestamp())
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("""INSERT INTO stripe_invoices_api (billing_month, invoice_id, customer_id, status, currency,
                       amount_due, amount_paid, amount_remaining, total, total_excluding_tax, period_start, period_end,
                       created, pulled_at, subscription_id) VALUES (?, 'in_manual', 'cus_a', 'open', 'usd', 700, 0,
                       700, 700, 700, ?, ?, ?, ?, 'sub_cus_a')""", [MONTH, oct10, oct10, oct10, PULLED])
        invoice = {"id": "in_manual", "object": "invoice", "status": "paid", "customer": "stripe_cus_a",
                   "currency": "usd", "amount_due": 700, "amount_paid": 700, "amount_remaining": 0, "total": 700,
                   "subtotal": 700, "total_excluding_tax": 700, "attempt_count": 1, "created": stamp,
                   "period_start": stamp, "period_end": stamp, "billing_reason": "manual",
                   "metadata": {"customer_id": "cus_a"},
                   "parent": {"type": "subscription_details", "quote_details": None,
                              "subscription_details": {"metadata": {}, "subscription": "sub_cus_a"}},
                   "status_transitions": {"finalized_at": stamp + 3600, "paid_at": stamp + 3600},
                   "lines": {"object": "list", "has_more": False, "data": []}}
        land_invoice_webhook(con, tmp_path / "landing", invoice)
        rows = con.execute(f"SELECT source, status, subscription_id, one_off FROM ({merged_invoices_sql(con)}) "
                           "WHERE invoice_id = 'in_manual'").fetchall()
    assert rows == [("webhook", "paid", "sub_cus_a", False)]


def test_an_invoice_whose_billing_reason_is_unknown_counts_as_the_periods(isolated_env, rules_dir, tmp_path):
    """`one_off` is NULL when unknown (docstring of `merged_invoices_sql`), and unknown is not one-off:
    `_foreign_invoice_sql` takes `coalesce(one_off, false)`. cus_b's Stripe customer, mapped to its
    subscription sub_cus_b, gets an invoice known only from webhooks, with no `parent` and no
    `billing_reason` at all (one_off NULL), one 300 line priced by no price of ours. It counts, as any
    invoice not shown to be foreign: cus_b's difference goes from 25 (the scenario's) to 25 + 300 = 325
    and the invoice is among its invoice ids.
    Kills M61 (`coalesce(one_off, true)`: the unknown taken for one-off, the invoice left out, 25)."""
    oct10 = int(dt.datetime(2026, 10, 10, tzinfo=dt.UTC).timestamp())
    line = {"id": "il_unknown", "object": "line_item", "amount": 300, "currency": "usd", "quantity": 1,
            "quantity_decimal": "1", "period": {"start": oct10, "end": oct10}, "pricing": None,
            "parent": {"type": "invoice_item_details", "subscription_item_details": None,
                       "invoice_item_details": {"invoice_item": "ii_unknown", "proration": False,
                                                "subscription": None}}}
    invoice = {"id": "in_unknown", "object": "invoice", "status": "paid", "customer": "stripe_cus_b",
               "currency": "usd", "amount_due": 300, "amount_paid": 300, "amount_remaining": 0, "total": 300,
               "subtotal": 300, "total_excluding_tax": 300, "attempt_count": 1, "created": oct10,
               "period_start": oct10, "period_end": oct10, "metadata": {"customer_id": "cus_b"}, "parent": None,
               "status_transitions": {"finalized_at": oct10 + 3600, "paid_at": oct10 + 3600},
               "lines": {"object": "list", "has_more": False, "data": [line]}}
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET subscription_id = 'sub_' || customer_id")
        for c in ("cus_a", "cus_b", "cus_c"):
            con.execute("INSERT INTO stripe_customer_map (customer_id, stripe_customer_id, subscription_id, synced_at) "
                        "VALUES (?, ?, ?, ?)", [c, f"stripe_{c}", f"sub_{c}", PULLED])
        land_invoice_webhook(con, tmp_path / "landing", invoice)
        [one_off] = con.execute(f"SELECT one_off FROM ({merged_invoices_sql(con)}) WHERE invoice_id = 'in_unknown'").fetchone()
        result = reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
    assert one_off is None
    b_inv = result.invoices.filter(customer_id="cus_b").row(0, named=True)
    assert EXPECTED_INVOICES["cus_b"][1] == 25
    assert "in_unknown" in b_inv["invoice_ids"].split(",")
    assert b_inv["amount_diff_minor"] == 325
