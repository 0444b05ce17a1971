"""Whose invoice it is, in the webhook state: the Stripe customer it bills decides, not its own metadata.

Stripe charges an invoice's `customer` whatever the invoice's `metadata[customer_id]` says. Until the
twenty-eighth session that metadata came first in `stripe_invoices.customer_id` and
`stripe_payment_attempts.customer_id`, so an operator who set it to another of our customers moved the
charge (and its dunning) to that customer. Now: the catalog sync's mapping of the Stripe customer
(`stripe_customer_map`), else the subscription's metadata (the engine sets it), else the invoice's own.
The pull attributes invoices the same way (`tests/metering/reconcile/test_invoice_attribution.py`).
"""

from __future__ import annotations

from pathlib import Path

from test_webhook_state import START, con, land  # noqa: F401  (con is a fixture)
from webhook_payloads import event, invoice


def _map(con, *pairs: tuple[str, str], synced_at: str = "2026-10-01 00:00:00+00") -> None:  # noqa: F811
    for customer_id, stripe_customer_id in pairs:
        con.execute("INSERT INTO stripe_customer_map (customer_id, stripe_customer_id, synced_at)"
                    " VALUES (?, ?, CAST(? AS TIMESTAMPTZ))", [customer_id, stripe_customer_id, synced_at])


def _failed(inv: dict, evt: str, at: int) -> list[dict]:
    return [event(f"{evt}_fin", "invoice.finalized", at, inv),
            event(f"{evt}_fail", "invoice.payment_failed", at + 60, {**inv, "attempt_count": 1})]


def test_the_mapped_stripe_customer_decides_over_the_invoices_and_subscriptions_metadata(con, tmp_path: Path):  # noqa: F811
    """acme is cus_A, globex is cus_G. An invoice billed to cus_A whose own metadata and whose
    subscription's metadata both say globex is acme's: Stripe charges cus_A. Its failed payment is
    acme's too (dunning chases acme, not globex). The metadata is kept as Stripe sent it, so the
    documented query finds the disagreement."""
    _map(con, ("acme", "cus_A"), ("globex", "cus_G"))
    land(con, tmp_path, [_failed(invoice("in_1", customer="cus_A", customer_id="globex"), "evt_1", START)])
    assert con.execute("SELECT invoice_id, customer, customer_id FROM stripe_invoices").fetchall() == [
        ("in_1", "cus_A", "acme")]
    assert con.execute("SELECT invoice_id, customer_id FROM stripe_payment_attempts").fetchall() == [("in_1", "acme")]
    assert con.execute(
        "SELECT invoice_id, customer_id, metadata ->> 'customer_id' FROM stripe_invoices"
        " WHERE metadata ->> 'customer_id' <> customer_id").fetchall() == [("in_1", "acme", "globex")]


def test_an_expanded_customer_object_is_mapped_by_its_id(con, tmp_path: Path):  # noqa: F811
    """`customer` may arrive expanded ({"id": "cus_A", ...}): the mapping is looked up by its id."""
    _map(con, ("acme", "cus_A"))
    inv = invoice("in_1", customer="cus_A", customer_id="globex")
    inv["customer"] = {"id": "cus_A", "object": "customer"}
    land(con, tmp_path, [_failed(inv, "evt_1", START)])
    assert con.execute("SELECT customer, customer_id FROM stripe_invoices").fetchall() == [("cus_A", "acme")]
    assert con.execute("SELECT customer_id FROM stripe_payment_attempts").fetchall() == [("acme",)]


def test_an_unmapped_stripe_customer_falls_back_to_the_subscription_then_the_invoice(con, tmp_path: Path):  # noqa: F811
    """Only acme (cus_A) is mapped; cus_X is no customer the sync mapped.
    - in_sub: cus_X's subscription says beta, the invoice says gamma: beta (the engine's own metadata);
    - in_one: cus_X, no subscription (a one-off invoice), the invoice says gamma: gamma;
    - in_none: cus_X, no subscription, no metadata: NULL."""
    _map(con, ("acme", "cus_A"))
    by_sub = invoice("in_sub", customer="cus_X", customer_id="gamma")
    by_sub["parent"]["subscription_details"]["metadata"] = {"customer_id": "beta"}
    one_off = invoice("in_one", customer="cus_X", customer_id="gamma", subscription=None)
    bare = invoice("in_none", customer="cus_X", customer_id=None, subscription=None)
    land(con, tmp_path, [_failed(by_sub, "evt_1", START) + _failed(one_off, "evt_2", START + 120)
                         + _failed(bare, "evt_3", START + 240)])
    expected = [("in_none", None), ("in_one", "gamma"), ("in_sub", "beta")]
    assert con.execute("SELECT invoice_id, customer_id FROM stripe_invoices ORDER BY 1").fetchall() == expected
    assert con.execute("SELECT invoice_id, customer_id FROM stripe_payment_attempts ORDER BY 1").fetchall() == expected


def test_a_rebuild_follows_the_mapping_the_sync_last_wrote(con, tmp_path: Path):  # noqa: F811
    """The state is rebuilt from the stored events: an invoice landed before its Stripe customer was
    mapped (subscription metadata says acme_old) is acme's once the sync maps cus_A to acme, and landing
    the same events again changes nothing."""
    events = _failed(invoice("in_1", customer="cus_A", customer_id="acme_old"), "evt_1", START)
    land(con, tmp_path, [events])
    assert con.execute("SELECT customer_id FROM stripe_invoices").fetchall() == [("acme_old",)]
    _map(con, ("acme", "cus_A"))
    land(con, tmp_path, [events])
    assert con.execute("SELECT customer_id FROM stripe_invoices").fetchall() == [("acme",)]
    assert con.execute("SELECT customer_id FROM stripe_payment_attempts").fetchall() == [("acme",)]


def test_a_stripe_customer_mapped_anew_is_the_latest_syncs_customer(con, tmp_path: Path):  # noqa: F811
    """The map keeps every mapping a sync made. cus_A was zeta's (Oct 1 sync), then acme's (Oct 2):
    acme's invoice. A sync on Oct 3 maps it to zeta again: zeta's, though acme sorts first (the latest
    mapping decides, as the pull reads the latest sync's map)."""
    _map(con, ("zeta", "cus_A"))
    _map(con, ("acme", "cus_A"), synced_at="2026-10-02 00:00:00+00")
    land(con, tmp_path, [_failed(invoice("in_1", customer="cus_A", customer_id=None), "evt_1", START)])
    assert con.execute("SELECT customer_id FROM stripe_invoices").fetchall() == [("acme",)]
    _map(con, ("zeta", "cus_A"), synced_at="2026-10-03 00:00:00+00")
    land(con, tmp_path, [[]])
    assert con.execute("SELECT customer_id FROM stripe_invoices").fetchall() == [("zeta",)]
