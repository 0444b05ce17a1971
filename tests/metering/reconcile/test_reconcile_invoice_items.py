"""The engine's invoice items (stripe_invoice_items) in invoice-level reconciliation.

recon_scenario's month plus cus_m (`add_minimum_customer`): usage rated 6000 under a $100.00 minimum,
so a true-up of 4000 Stripe cannot price; our total 10000, of which 4000 not in Stripe. Stripe's
invoice in_cus_m bills the usage, 6000. The other customers leave the check at 125 unexplained
(cus_b +25, cus_c -100), and cus_m's usage row is matched in every case: an item's line has no meter.
"""

from __future__ import annotations

import datetime as dt

from recon_scenario import (
    MONTH,
    PULLED,
    add_minimum_customer,
    invoice_total_is_its_lines,
    known_only_from_webhooks,
    land_invoice_webhook,
    ledger_item,
    next_invoice_with_item,
    pulled_item_line,
    write_scenario,
)

from metering import warehouse
from metering.reconcile import inputs
from metering.reconcile.run import ReconcileResult, reconcile_period
from metering.reconcile.settings import ReconcileSettings
from metering.rules.meters import load_meters

ITEM_COLUMNS = ("our_total_minor", "not_in_stripe_minor", "engine_items_minor", "engine_items_pending_minor",
                "unbilled_minor", "stripe_total_minor", "amount_diff_minor", "status")


def _reconcile(con, rules_dir) -> ReconcileResult:
    return reconcile_period(con, MONTH, settings=ReconcileSettings(max_unexplained_minor=125),
                            meters=load_meters(rules_dir), now=PULLED)


def _cus_m(result: ReconcileResult) -> dict:
    usage = result.usage.filter(customer_id="cus_m")
    assert usage.select("meter", "status", "amount_diff_minor").rows() == [("api_calls", "matched", 0)]
    return result.invoices.filter(customer_id="cus_m").row(0, named=True)


def test_an_item_on_the_periods_invoice_bills_what_stripe_cannot_price(isolated_env, rules_dir):
    """in_cus_m carries our item ii_m (4000) beside the usage (6000): Stripe 10000 = ours 10000."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        ledger_item(con, "ii_m", "in_cus_m")
        pulled_item_line(con, "in_cus_m", "il_m_min", "ii_m", 4000)
        result = _reconcile(con, rules_dir)
        stored = con.execute("SELECT engine_items_minor, engine_items_pending_minor, unbilled_minor "
                             "FROM invoice_reconciliation WHERE customer_id = 'cus_m'").fetchall()
    m = _cus_m(result)
    assert tuple(m[c] for c in ITEM_COLUMNS) == (10000, 4000, 4000, 0, 0, 10000, 0, "matched")
    assert stored == [(4000, 0, 0)]
    assert m["reason"].startswith("our total 10000 of which 4000 not priceable in Stripe (4000 on Stripe's invoices "
                                  "as our invoice items) vs Stripe 10000 usd, of which 4000 our invoice items (diff 0,")
    assert "unbilled" not in m["reason"]
    assert (m["invoice_ids"], m["invoice_status"]) == ("in_cus_m", "paid")
    assert result.unexplained_minor() == {"usd": 125} and result.check_passed()


def test_an_item_pending_at_stripe_is_billed_but_not_on_an_invoice_yet(isolated_env, rules_dir):
    """Stripe acknowledged ii_m after in_cus_m was finalized: pending for the subscription's next invoice."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        ledger_item(con, "ii_m", None)
        result = _reconcile(con, rules_dir)
    m = _cus_m(result)
    assert tuple(m[c] for c in ITEM_COLUMNS) == (10000, 4000, 0, 4000, 0, 6000, 0, "matched")
    assert m["reason"].startswith("our total 10000 of which 4000 not priceable in Stripe (4000 in our invoice items "
                                  "pending at Stripe for the next invoice) vs Stripe 6000 usd (diff 0,")
    assert "unbilled" not in m["reason"]
    assert result.check_passed()


def test_a_pending_item_later_on_the_next_invoice_counts_once(isolated_env, rules_dir, tmp_path):
    """Stripe put the pending ii_m on in_next (closing November, created Dec 1), known only from its webhook
    payload: the item's line (period October) counts with October, and no longer as pending (our ledger
    still says pending: nothing there changes); in_next's November usage (700) does not. The closing
    invoice stays in_cus_m (paid), not in_next (open)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        ledger_item(con, "ii_m", None)
        land_invoice_webhook(con, tmp_path / "landing", next_invoice_with_item("ii_m"))
        webhook_lines = con.execute(
            f"SELECT line_id, invoice_item, metering_item, source FROM ({inputs.merged_lines_sql(con)}) "
            "WHERE invoice_id = 'in_next' ORDER BY line_id").fetchall()
        result = _reconcile(con, rules_dir)
    # the item id of a webhook-derived line, read from the invoice payload
    assert webhook_lines == [("il_next_item", "ii_m", "cus_m|2026-10-01|pro|2026-01|minimum|r1", "webhook"),
                             ("il_next_usage", None, None, "webhook")]
    m = _cus_m(result)
    assert tuple(m[c] for c in ITEM_COLUMNS) == (10000, 4000, 4000, 0, 0, 10000, 0, "matched")
    assert (m["invoice_ids"], m["invoice_status"], m["amount_paid"]) == ("in_cus_m,in_next", "paid", 6000)


def test_an_item_on_an_invoice_known_only_from_webhooks(isolated_env, rules_dir):
    """in_cus_m known only from webhooks (shared helper), with our item's line in stripe_invoice_lines."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        known_only_from_webhooks(con, "cus_m", "paid", amount=10000, paid=10000, quantity=1500,
                                 created=dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC))
        con.execute("UPDATE stripe_invoice_lines SET amount = 6000 WHERE invoice_id = 'in_cus_m'")
        con.execute("""INSERT INTO stripe_invoice_lines (invoice_id, line_id, amount, currency, period_start,
                       period_end, invoice_item, source) VALUES ('in_cus_m', 'il_m_min', 4000, 'usd',
                       TIMESTAMPTZ '2026-10-01 00:00:00+00', TIMESTAMPTZ '2026-11-01 00:00:00+00', 'ii_m', 'webhook')""")
        invoice_total_is_its_lines(con, "in_cus_m")   # 6000 + 4000: the 10000 it was written with
        ledger_item(con, "ii_m", "in_cus_m")
        result = _reconcile(con, rules_dir)
    m = _cus_m(result)
    assert tuple(m[c] for c in ITEM_COLUMNS) == (10000, 4000, 4000, 0, 0, 10000, 0, "matched")


def test_no_item_yet_is_unbilled_named_in_the_reason_and_does_not_block(isolated_env, rules_dir):
    """The period is not billed as items yet (e.g. still open when reconciled): 4000 unbilled, shown only."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        result = _reconcile(con, rules_dir)
    m = _cus_m(result)
    assert tuple(m[c] for c in ITEM_COLUMNS) == (10000, 4000, 0, 0, 4000, 6000, 0, "matched")
    assert m["reason"].startswith(
        "our total 10000 of which 4000 not priceable in Stripe (4000 unbilled: in no invoice item of ours, "
        "run `metering stripe invoice-items --period 2026-10` once the period is closed (it names what it cannot "
        "bill: blocked, held, of another plan version)) vs Stripe 6000 usd (diff 0,")
    assert result.unexplained_minor() == {"usd": 125} and result.check_passed()


def test_an_invoice_item_not_in_our_ledger_is_unexplained(isolated_env, rules_dir):
    """Beside our ii_m, someone added ii_manual (500) to in_cus_m by hand: Stripe's side, unexplained."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        ledger_item(con, "ii_m", "in_cus_m")
        pulled_item_line(con, "in_cus_m", "il_m_min", "ii_m", 4000)
        pulled_item_line(con, "in_cus_m", "il_m_manual", "ii_manual", 500)
        result = _reconcile(con, rules_dir)
    m = _cus_m(result)
    assert tuple(m[c] for c in ITEM_COLUMNS) == (10000, 4000, 4000, 0, 0, 10500, 500, "amount_mismatch")
    assert m["reason"].endswith("; 500 of it on no meter row (flat fees, other lines)")
    assert result.unexplained_minor() == {"usd": 125 + 500} and not result.check_passed()


def test_an_invoice_pulled_with_two_months_counts_once(isolated_env, rules_dir):
    """in_cus_m's period ends on Nov 1, so November's pull reads it too (a later copy of the same
    invoice): its lines, our item's included, count once."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        ledger_item(con, "ii_m", "in_cus_m")
        pulled_item_line(con, "in_cus_m", "il_m_min", "ii_m", 4000)
        for table in ("stripe_invoices_api", "stripe_invoice_lines_api"):
            con.execute(f"""INSERT INTO {table} SELECT * REPLACE (DATE '2026-11-01' AS billing_month,
                            TIMESTAMPTZ '2026-12-02 00:00:00+00' AS pulled_at) FROM {table}
                            WHERE invoice_id = 'in_cus_m'""")
        result = _reconcile(con, rules_dir)
    m = _cus_m(result)
    assert tuple(m[c] for c in ITEM_COLUMNS) == (10000, 4000, 4000, 0, 0, 10000, 0, "matched")
    assert result.unexplained_minor() == {"usd": 125}


def test_items_beyond_the_charge_are_a_negative_unbilled(isolated_env, rules_dir):
    """The minimum was re-rated to 3000 after ii_m billed 4000: the credit of 1000 is still due."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        con.execute("UPDATE rated_usage SET amount_minor = 3000 WHERE customer_id = 'cus_m' AND charge = 'minimum'")
        con.execute("UPDATE invoice_previews SET total_minor = 9000 WHERE customer_id = 'cus_m'")
        ledger_item(con, "ii_m", "in_cus_m")
        pulled_item_line(con, "in_cus_m", "il_m_min", "ii_m", 4000)
        result = _reconcile(con, rules_dir)
    m = _cus_m(result)
    assert tuple(m[c] for c in ITEM_COLUMNS) == (9000, 3000, 4000, 0, -1000, 10000, 0, "matched")
    assert ("(4000 on Stripe's invoices as our invoice items; -1000 unbilled: our invoice items exceed it by 1000, "
            "run `metering stripe invoice-items --period 2026-10` to credit it)") in m["reason"]
    assert result.check_passed()


def test_our_item_whose_row_is_not_settled_yet_is_ours_by_its_key(isolated_env, rules_dir):
    """Review: a lost response leaves our row `unknown` (no item id yet) until the next items run finds
    it at Stripe, while in_cus_m already carries it. Its line's metadata[metering_item] names our row:
    it bills what Stripe cannot price, not an unexplained 4000 that fails the blocking check."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        ledger_item(con, "ii_m", "in_cus_m")
        con.execute("UPDATE stripe_invoice_items SET status = 'unknown', stripe_invoice_item_id = NULL, "
                    "stripe_invoice_id = NULL, resolved_by = NULL")
        pulled_item_line(con, "in_cus_m", "il_m_min", "ii_m", 4000, metering_item="cus_m|2026-10-01|pro|2026-01|minimum|r1")
        result = _reconcile(con, rules_dir)
    m = _cus_m(result)
    assert tuple(m[c] for c in ITEM_COLUMNS) == (10000, 4000, 4000, 0, 0, 10000, 0, "matched")
    assert result.unexplained_minor() == {"usd": 125} and result.check_passed()


def test_items_of_a_charge_a_later_sync_can_price_stay_the_engines(isolated_env, rules_dir):
    """Fourth audit: the minimum billed as our item, then a later catalog sync finds a price for it. The
    items run keeps the item (nothing to credit); reconciliation had dropped the charge from what the
    engine bills and reported the 4000 as an excess to credit, failing the blocking check."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        add_minimum_customer(con)
        ledger_item(con, "ii_m", "in_cus_m")
        pulled_item_line(con, "in_cus_m", "il_m_min", "ii_m", 4000)
        con.execute("DELETE FROM stripe_catalog_findings WHERE our_key = 'pro|2026-01|minimum'")
        result = _reconcile(con, rules_dir)
    m = _cus_m(result)
    assert tuple(m[c] for c in ITEM_COLUMNS) == (10000, 4000, 4000, 0, 0, 10000, 0, "matched")
    assert result.check_passed()
