"""The finance summary names what happened to each failed invoice, per currency."""

from __future__ import annotations

import polars as pl

from metering.dunning.state import STATE_SCHEMA
from metering.dunning.summary import dunning_summary


def state_rows(*rows: tuple[str, str, str, int, int, int]) -> pl.DataFrame:
    """(invoice, state, reason, amount_due, amount_paid, amount_remaining) in usd."""
    return pl.DataFrame(
        [{"invoice_id": i, "currency": "usd", "state": st, "reason": why, "amount_due": due,
          "amount_paid": paid, "amount_remaining": left} for i, st, why, due, paid, left in rows],
    ).select([pl.col(c) if c in ("invoice_id", "currency", "state", "reason", "amount_due", "amount_paid",
                                 "amount_remaining") else pl.lit(None, dtype=t).alias(c)
              for c, t in STATE_SCHEMA.items()])


def test_an_invoice_never_chased_is_filed_by_what_happened_to_it() -> None:
    """Only open invoices under the minimum are `below_minimum`. A voided invoice stored as
    not_in_dunning (by the engine before it counted voids like payments) was filed there, hiding a
    void of 50.00 as 0.00; a small invoice Stripe marked uncollectible hid a write-off the same way."""
    state = state_rows(
        ("in_void", "not_in_dunning", "voided", 5000, 0, 0),
        ("in_small", "not_in_dunning", "below_minimum", 99, 0, 99),
        ("in_small_paid", "not_in_dunning", "paid", 80, 80, 0),
        ("in_small_unc", "not_in_dunning", "uncollectible", 70, 0, 70),
        ("in_voided_later", "void", "voided", 3000, 0, 0),
    )
    assert dunning_summary(state).select("category", "invoices", "amount_minor", "amount").rows() == [
        ("recovered", 1, 80, "0.80"),
        ("written_off", 1, 70, "0.70"),
        ("void", 2, 8000, "80.00"),
        ("below_minimum", 1, 99, "0.99"),
    ]
