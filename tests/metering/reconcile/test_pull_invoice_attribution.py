"""Whose invoice it is, in the reconciliation pull: the Stripe customer it bills decides, not its metadata.

Against the loopback sandbox. acme (Stripe customer A) and globex (Stripe customer G) are ours. An
operator bills A a one-off invoice of 50000 and sets the invoice's `metadata[customer_id]` to globex.
Stripe charges A. Until the twenty-eighth session the pull counted it as globex's (a 50000 charge on
the wrong customer's reconciliation); now it is acme's, and the disagreement is reported. The webhook
state attributes it the same way (`tests/metering/webhooks/test_invoice_attribution.py`).
"""

from __future__ import annotations

import datetime as dt
import logging

import dagster as dg
from test_pulls_sandbox import _ts

from metering import warehouse
from metering.reconcile.pulls import Misattributed, pull_invoices_into_warehouse
from metering.reconcile.settings import ReconcileSettings
from pipelines.defs.reconciliation.assets import stripe_invoice_lines
from pipelines.resources import StripeResource, WarehouseResource

OCT = dt.date(2026, 10, 1)
NOW = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)
SETTINGS = ReconcileSettings(settle_seconds=0, pull_rate=0)


def _one_off(client, customer: str, amount: int, metadata: dict[str, str]) -> str:
    invoice = client.v1.invoices.create({"customer": customer, "currency": "usd", "metadata": metadata,
                                          "auto_advance": False})
    client.v1.invoice_items.create({"customer": customer, "amount": amount, "currency": "usd", "invoice": invoice.id})
    client.v1.invoices.finalize_invoice(invoice.id)
    return invoice.id


def _acme_billed_under_globexs_name(client) -> tuple[str, str, str, str, str]:
    """acme's and globex's Stripe customers (on a clock at Oct 15) and three finalized one-off invoices:
    returns (A, G, moved, own, plain)."""
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": _ts("2026-10-15T00:00:00")})
    a = client.v1.customers.create({"name": "Acme", "metadata": {"customer_id": "acme"}, "test_clock": clock.id})
    g = client.v1.customers.create({"name": "Globex", "metadata": {"customer_id": "globex"}, "test_clock": clock.id})
    moved = _one_off(client, a.id, 50000, {"customer_id": "globex"})       # the operator's metadata names globex
    own = _one_off(client, g.id, 700, {"customer_id": "globex"})           # agrees: nothing to report
    plain = _one_off(client, a.id, 300, {})                                # no metadata: nothing to report
    return a.id, g.id, moved, own, plain


def test_an_invoice_is_the_billed_stripe_customers_whatever_its_metadata_says(stripe_sandbox, isolated_env, caplog):
    client = stripe_sandbox.client()
    a, g, moved, own, plain = _acme_billed_under_globexs_name(client)
    with caplog.at_level(logging.WARNING, logger="metering.reconcile.pulls"), warehouse.open_warehouse() as con:
        result = pull_invoices_into_warehouse(con, client, OCT, settings=SETTINGS, now=NOW)
        stored = con.execute("SELECT invoice_id, customer, customer_id, total FROM stripe_invoices_api"
                             " ORDER BY total").fetchall()
        lines = con.execute("SELECT invoice_id, customer_id, amount FROM stripe_invoice_lines_api"
                            " ORDER BY amount").fetchall()

    # acme is billed 50000 + 300, globex 700: as Stripe charges them
    assert stored == [(plain, a, "acme", 300), (own, g, "globex", 700), (moved, a, "acme", 50000)]
    assert lines == [(plain, "acme", 300), (own, "globex", 700), (moved, "acme", 50000)]
    assert result.misattributed == (Misattributed(moved, "acme", "globex"),)
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert (warning.invoice_id, warning.customer_id, warning.metadata_customer_id) == (moved, "acme", "globex")


def test_the_pull_asset_counts_the_misattributed_invoices(stripe_sandbox, isolated_env):
    """The `stripe_invoice_lines` asset, materialized by Dagster for October: 3 invoices, 1 of them
    misattributed by its metadata."""
    _acme_billed_under_globexs_name(stripe_sandbox.client())
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [stripe_invoice_lines], partition_key="2026-10-01", instance=instance,
            resources={"warehouse": WarehouseResource(), "stripe": StripeResource(base_url=stripe_sandbox.base_url)},
            run_config={"ops": {"stripe_invoice_lines": {"config": {"pull_rate": 0}}}})
    [mat] = result.asset_materializations_for_node("stripe_invoice_lines")
    assert (mat.metadata["invoices"].value, mat.metadata["misattributed_invoices"].value) == (3, 1)
