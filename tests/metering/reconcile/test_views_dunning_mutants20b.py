"""Gaps found by a hand mutation audit of metering/views (mutants20, second pass): a pulled draft stays a
draft in analytics.stripe_invoice_lines whatever the webhook state says, as in reconciliation
(metering.reconcile.inputs.further_in_state_sql)."""

from __future__ import annotations

import duckdb
from recon_scenario import MONTH, PULLED, write_scenario

from metering import warehouse
from metering.reconcile.run import reconcile_period
from metering.reconcile.settings import ReconcileSettings
from metering.rules.meters import load_meters


def test_a_pulled_draft_stays_a_draft_whatever_the_webhook_state_says(isolated_env, rules_dir):
    """The pull saw in_cus_b (one line of 125) as a draft; the webhook state says paid (further than
    draft). A draft's lines may still change, so the pull's lines stay a draft until pulled again: the
    view says draft, as reconciliation does (cus_b pending, 'closing invoice draft'), not paid."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoices_api SET status = 'draft', amount_paid = 0, amount_remaining = 125 "
                    "WHERE invoice_id = 'in_cus_b'")
        con.execute("INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency, amount_due, amount_paid, "
                    "amount_remaining, total) VALUES ('in_cus_b', 'cus_b', 'paid', 'usd', 125, 125, 0, 125)")
        reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)
        snapshot = warehouse.publish(con=con)
    con = duckdb.connect(str(snapshot), read_only=True)
    try:
        lines = con.execute("SELECT invoice_id, source, invoice_status, amount FROM analytics.stripe_invoice_lines "
                            "ORDER BY invoice_id").fetchall()
        recon = con.execute("SELECT status FROM analytics.invoice_reconciliation "
                            "WHERE customer_id = 'cus_b'").fetchall()
    finally:
        con.close()
    assert lines == [("in_a0", "api", "paid", 4900), ("in_cus_a", "api", "paid", 100),
                     ("in_cus_b", "api", "draft", 125), ("in_cus_c", "api", "paid", 0)]
    assert recon == [("pending",)]


def test_an_invoice_the_pull_saw_lists_only_the_pulls_lines(isolated_env, rules_dir):
    """in_cus_b was pulled (one line il_cus_b of 125) and its webhooks landed too, with the same line and
    a second one (il_cus_b_late, 30) the pull did not see: the pull is the source for that invoice, so
    each of its lines once, from the pull. in_w, known only from webhooks (il_w, 40), is listed from
    them. Lines billed: 4900 + 100 + 125 + 0 + 40 = 5165 (with the webhook copies: 5165 + 125 + 30 = 5320)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("INSERT INTO stripe_invoices (invoice_id, customer_id, status, currency, amount_due, amount_paid, "
                    "amount_remaining, total) VALUES ('in_cus_b', 'cus_b', 'paid', 'usd', 155, 155, 0, 155), "
                    "('in_w', 'cus_w', 'open', 'usd', 40, 0, 40, 40)")
        con.execute("INSERT INTO stripe_invoice_lines (invoice_id, line_id, meter, amount, currency, source) VALUES "
                    "('in_cus_b', 'il_cus_b', 'api_calls', 125, 'usd', 'webhook'), "
                    "('in_cus_b', 'il_cus_b_late', 'api_calls', 30, 'usd', 'webhook'), "
                    "('in_w', 'il_w', 'api_calls', 40, 'usd', 'webhook')")
        snapshot = warehouse.publish(con=con)
    con = duckdb.connect(str(snapshot), read_only=True)
    try:
        lines = con.execute("SELECT invoice_id, line_id, source, invoice_status, amount "
                            "FROM analytics.stripe_invoice_lines ORDER BY invoice_id, line_id").fetchall()
        billed = con.execute("SELECT sum(amount) FROM analytics.stripe_invoice_lines").fetchone()[0]
    finally:
        con.close()
    assert lines == [("in_a0", "il_fee", "api", "paid", 4900), ("in_cus_a", "il_cus_a", "api", "paid", 100),
                     ("in_cus_b", "il_cus_b", "api", "paid", 125), ("in_cus_c", "il_cus_c", "api", "paid", 0),
                     ("in_w", "il_w", "webhook", "open", 40)]
    assert billed == 5165
