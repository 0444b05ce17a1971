"""Gaps found by a hand mutation audit of metering/reconcile (mutants20)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import polars as pl
from recon_scenario import MONTH, PULLED, insert_windows

from metering import warehouse
from metering.reconcile import inputs
from metering.rules.meters import load_meters


def test_a_window_starting_at_the_period_end_belongs_to_the_next_period(isolated_env, rules_dir):
    """Periods are half-open [start, end): the hourly window Oct 31 23:00 (3 calls) is October's, the one
    starting Nov 1 00:00 (100 calls) is November's. `load_pushed` for the October period counts 3, and
    the November period 100. Kills: the join's `window_start < period_end` as `<=` (103 for October: the
    next period's first window pushed twice into reconciliation)."""
    with warehouse.open_warehouse() as con:
        insert_windows(con, "cus_a", "api_calls", dt.timedelta(hours=1), [
            (dt.datetime(2026, 10, 31, 23, tzinfo=dt.UTC), 3, "acknowledged", PULLED),
            (dt.datetime(2026, 11, 1, 0, tzinfo=dt.UTC), 100, "acknowledged", PULLED)])
        meters = load_meters(rules_dir)
        periods = pl.DataFrame([dict(customer_id="cus_a", period_start=MONTH, period_end=dt.date(2026, 11, 1)),
                                dict(customer_id="cus_a", period_start=dt.date(2026, 11, 1),
                                     period_end=dt.date(2026, 12, 1))])
        pushed = inputs.load_pushed(con, MONTH, {"api_calls": meters["api_calls"]}, periods)
    got = {(r["period_start"], r["pushed_quantity"], r["unacked_windows"], r["late_windows"])
           for r in pushed.iter_rows(named=True)}
    assert got == {(MONTH, D(3), 0, 0), (dt.date(2026, 11, 1), D(100), 0, 0)}
