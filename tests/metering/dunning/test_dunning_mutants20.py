"""Gaps found by a hand mutation audit of metering/dunning (mutants20): a customer suspended over two
invoices, published as one row (amounts added up, suspended since the first suspension)."""

from __future__ import annotations

from pathlib import Path

import duckdb
from dunning_helpers import DAY, T0, published_suspensions, put_invoice

from metering.dunning.policy import DunningPolicy
from metering.dunning.run import run_dunning


def test_a_customer_suspended_over_two_invoices_is_one_row_adding_them_up(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    """cus_in_1: in_1 (50.00 USD) fails at T0, in_2 (2.50 USD) two days later; suspension is day 14 of
    each: in_1 suspended at T0 + 14 d (2026-11-16 09:30), in_2 at T0 + 16 d (2026-11-18 09:30)."""
    put_invoice(wh, "in_1")
    put_invoice(wh, "in_2", customer="cus_in_1", customer_id="c_in_1", amount_due=250, amount_remaining=250,
                finalized_at=T0 + 2 * DAY, state_event_created=T0 + 2 * DAY)
    run_dunning(wh, None, no_stripe_policy, T0 + 14 * DAY)
    assert [(r["invoice_ids"], r["amount_remaining_minor"]) for r in published_suspensions(isolated_env)] == [(["in_1"], 5000)]
    run_dunning(wh, None, no_stripe_policy, T0 + 16 * DAY)
    assert wh.execute("SELECT invoice_id, completed_at FROM dunning_actions WHERE action = 'suspend' "
                      "ORDER BY invoice_id").fetchall() == [("in_1", T0 + 14 * DAY), ("in_2", T0 + 16 * DAY)]
    # one row per customer x currency: 5000 + 250 = 5250 minor units = 52.50 USD; since the earlier
    # suspension (min of 2026-11-16T09:30 and 2026-11-18T09:30)
    assert published_suspensions(isolated_env) == [{
        "customer_id": "c_in_1", "stripe_customer": "cus_in_1", "currency": "usd", "invoice_ids": ["in_1", "in_2"],
        "amount_remaining_minor": 5250, "amount_remaining": "52.50", "suspended_since": "2026-11-16T09:30:00Z",
    }]
    assert wh.execute("SELECT invoice_ids, amount_remaining_minor, amount_remaining FROM suspensions").fetchall() == [
        ("in_1,in_2", 5250, "52.50")]


def test_a_written_off_invoice_keeps_its_customer_suspended(
    wh: duckdb.DuckDBPyConnection, no_stripe_policy: DunningPolicy, isolated_env: Path
) -> None:
    """Suspended on day 14 (2026-11-16 09:30); Stripe marks the invoice uncollectible on day 15: it is
    written off, still unpaid, so the customer stays suspended (only paying or voiding lifts it)."""
    put_invoice(wh, "in_1")
    run_dunning(wh, None, no_stripe_policy, T0 + 14 * DAY)
    put_invoice(wh, "in_1", status="uncollectible", state_event_created=T0 + 15 * DAY)
    result = run_dunning(wh, None, no_stripe_policy, T0 + 15 * DAY)
    assert result.state.select("invoice_id", "state").rows() == [("in_1", "written_off")]
    assert published_suspensions(isolated_env) == [{
        "customer_id": "c_in_1", "stripe_customer": "cus_in_1", "currency": "usd", "invoice_ids": ["in_1"],
        "amount_remaining_minor": 5000, "amount_remaining": "50.00", "suspended_since": "2026-11-16T09:30:00Z",
    }]
