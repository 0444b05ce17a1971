"""The engine's invoice items of a month that Stripe bills on a later invoice, re-reconciled afterwards.

Real ingest, rating, catalog sync, push, items run, pull and reconciliation against the loopback
sandbox, the customer on a test clock (sixteenth audit, F2). acme is on pro from 2026-09-01 and uses
1,500 API calls, 2 seats and 1,000,000 large tokens in September: Stripe's September lines are the
fee 4900 (on the subscription's first invoice), API calls 100 and seats 2000 (on the invoice closing
September, which also bills October's fee in advance): 7000. Large tokens (a model filter: rated 200)
and the minimum true-up (10000 - 100 - 2000 - 200 = 7700) have no Stripe price: the engine's items,
7900. Our total: 4900 + 100 + 2000 + 200 + 7700 = 14900.

September's invoice is finalized at 02:00 on Oct 1 and the items run comes at 02:30 (the schedule's
order), so Stripe holds both items pending for the next invoice: the one closing October (period
Oct 1 - Nov 1). The pull kept only invoices whose own period touches the month: re-reconciling
September once that invoice carried the items showed them neither on Stripe's invoices nor pending
(7900 "unbilled", with a red paragraph naming a command that bills nothing), and paid 7000.
"""

from __future__ import annotations

import datetime as dt
import re

import polars as pl

from metering import warehouse
from recon_scenario import acme_september_on_clock, rate_days
from metering.reconcile.pulls import pull_stripe_state
from metering.reconcile.run import reconcile_period
from metering.reconcile.settings import ReconcileSettings
from metering.reports import write_report
from metering.stripe.invoice_items import bill_invoice_items

SEP, OCT = dt.date(2026, 9, 1), dt.date(2026, 10, 1)
ITEMS = 200 + 7700
ROW = ("our_total_minor", "not_in_stripe_minor", "engine_items_minor", "engine_items_pending_minor",
       "unbilled_minor", "stripe_total_minor", "amount_diff_minor", "amount_paid", "status")
SETTINGS = ReconcileSettings(settle_seconds=0, pull_rate=0)


def _ts(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp())


def _september(con, client) -> dict:
    pull_stripe_state(con, client, SEP, meters=["api_calls", "seats", "tokens"], settings=SETTINGS)
    result = reconcile_period(con, SEP, settings=SETTINGS)
    [row] = result.invoices.rows(named=True)
    return row


def test_items_billed_on_a_later_invoice_count_with_the_month_they_bill(stripe_sandbox, isolated_env, rules_dir,
                                                                       tmp_path):
    client = stripe_sandbox.client(max_network_retries=2)
    with warehouse.open_warehouse() as con:
        rules, clock = acme_september_on_clock(con, client, rules_dir, tmp_path)
        client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-10-01T02:30:00")})
        rate_days(con, rules, SEP, [])
        first = bill_invoice_items(con, client, SEP, rate=0)
        assert (first.acknowledged, first.pending_next, first.billed_minor) == (2, 2, {"usd": ITEMS})
        # Oct 1: Stripe holds the items pending; the ledger knows it
        assert tuple(_september(con, client)[c] for c in ROW) == (
            14900, ITEMS, 0, ITEMS, 0, 7000, 0, 7000, "matched")

        # Nov 1: the invoice closing October carries them; the ledger does not know it yet (the items run's
        # daily recheck has not run): its lines name our items (metadata[metering_item])
        client.v1.test_helpers.test_clocks.advance(clock.id, {"frozen_time": _ts("2026-11-01T02:30:00")})
        found_by_key = _september(con, client)
        # the items run records that invoice on the ledger rows
        second = bill_invoice_items(con, client, SEP, rate=0)
        assert second.new_revisions == 0
        later = con.execute("SELECT DISTINCT stripe_invoice_id FROM stripe_invoice_items").fetchall()
        assert len(later) == 1 and later[0][0] is not None
        later_id = later[0][0]
        recorded = _september(con, client)
        # October's pull reads that invoice too (its own period): the latest pull of it counts, once
        pull_stripe_state(con, client, OCT, meters=["api_calls", "seats", "tokens"], settings=SETTINGS)
        again = reconcile_period(con, SEP, settings=SETTINGS).invoices.row(0, named=True)
        october = reconcile_period(con, OCT, settings=SETTINGS).invoices.row(0, named=True)
        copies = con.execute("SELECT billing_month, count(*) FROM stripe_invoice_lines_api WHERE invoice_id = ? "
                             "GROUP BY ALL ORDER BY ALL", [later_id]).fetchall()
        files = write_report(con, SEP, tmp_path / "report")

    # 7900 on Stripe's invoices, none pending, none unbilled; paid 7000 + 7900 (the later invoice is paid)
    expected = (14900, ITEMS, ITEMS, 0, 0, 14900, 0, 14900, "matched")
    for row in (recorded, again, found_by_key):
        assert {c: row[c] for c in ROW} == dict(zip(ROW, expected, strict=True))
        assert later_id in row["invoice_ids"].split(",")
        assert "unbilled" not in row["reason"]
    assert recorded["reason"].startswith("our total 14900 of which 7900 not priceable in Stripe (7900 on Stripe's "
                                         "invoices as our invoice items) vs Stripe 14900 usd, of which 7900 our "
                                         "invoice items (diff 0,")
    # the later invoice was pulled with both months, its lines (October's fee line and usage lines, November's
    # fee, our two items) once each: September has the items, October its fee billed in advance (4900, on the
    # invoice closing September) and its usage lines (0), and no item
    assert [m for m, _ in copies] == [SEP, OCT] and copies[0][1] == copies[1][1]
    assert (october["engine_items_minor"], october["stripe_total_minor"]) == (0, 4900)

    usd = files.data.totals[0]
    assert (usd.engine_items_minor, usd.engine_items_pending_minor, usd.unbilled_minor, usd.stripe_invoice_total_minor,
            usd.amount_paid_minor) == (ITEMS, 0, 0, 14900, 14900)
    html = files.html.read_text()
    assert 'id="unbilled-note-usd"' not in html
    assert re.search(r'id="engine-items-usd"><div class="k">[^<]*</div><div class="v">79.00 USD<', html)
    stored = pl.read_csv(files.folder / "invoices.csv")
    assert stored.select("engine_items_minor", "unbilled_minor").rows() == [(ITEMS, 0)]
