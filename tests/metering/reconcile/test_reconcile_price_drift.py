"""A Stripe price that drifted from our rules is a price difference, never rounding, however small.

The catalog sync records a `drift` finding naming the Stripe price whose amount fields differ from our rule
version's (metering.stripe.catalog.price_drift). A difference at equal quantities on a line that price
priced is `amount_mismatch` (unexplained), even within the rounding tolerance; a `rounding` finding (a
half-even version whose Stripe price rounds half up) stays explainable by the tolerance.

The scenario is recon_scenario's October (cus_b: api_calls under pro 2026-01, one Stripe line), its
api_calls made small enough for a drift to fit the tolerance of 1 minor unit per line:
- 28 calls: ours 28 x $0.0015 = $0.042 -> 4 cents; Stripe's drifted price 28 x $0.00165 = $0.0462 -> 5 cents.
- 30 calls: ours 30 x $0.0015 = $0.045 -> 4 cents half-even; Stripe, same price, rounds half up -> 5 cents.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal as D

import polars as pl
import pytest
from recon_scenario import MONTH, PULLED, invoice_total_is_its_lines, known_only_from_webhooks, write_scenario

from metering import warehouse
from metering.reconcile.reconcile import reconcile_invoices, reconcile_usage
from metering.reconcile.run import ReconcileResult, reconcile_period
from metering.reconcile.settings import ReconcileSettings
from metering.rules.meters import load_meters

PRICE = "price_api_drifted"
API_CALLS = "pro|2026-01|api calls"


def _reconcile(con, rules_dir) -> ReconcileResult:
    return reconcile_period(con, MONTH, settings=ReconcileSettings(), meters=load_meters(rules_dir), now=PULLED)


def _cus_b_calls(con, day1: int, day2: int, ours: int, stripe: int, price_id: str | None = PRICE) -> None:
    """cus_b's October api_calls: day1 + day2 calls, used, pushed, metered and invoiced alike; rated
    `ours`, Stripe's line (priced by `price_id`) `stripe` minor units."""
    total = day1 + day2
    for day, calls in ((1, day1), (2, day2)):
        con.execute("UPDATE usage_aggregates SET quantity = ?, event_count = ? WHERE customer_id = 'cus_b' "
                    "AND meter = 'api_calls' AND event_date = ?", [calls, calls, dt.date(2026, 10, day)])
        con.execute("UPDATE stripe_push_ledger SET value = ? WHERE customer_id = 'cus_b' AND meter = 'api_calls' "
                    "AND event_date = ?", [calls, dt.date(2026, 10, day)])
    con.execute("UPDATE stripe_meter_summaries SET aggregated_value = ? WHERE customer_id = 'cus_b'", [total])
    con.execute("UPDATE rated_usage SET quantity = ?, billable_quantity = ?, amount_minor = ? "
                "WHERE customer_id = 'cus_b' AND meter = 'api_calls'", [total, total, ours])
    con.execute("UPDATE invoice_previews SET total_minor = ? WHERE customer_id = 'cus_b'", [ours])
    con.execute("UPDATE stripe_invoice_lines_api SET quantity_decimal = ?, amount = ?, price_id = ? "
                "WHERE invoice_id = 'in_cus_b'", [total, stripe, price_id])
    invoice_total_is_its_lines(con, "in_cus_b")


def _finding(con, finding: str, our_key: str, stripe_id: str | None, field: str, ours: str, theirs: str) -> None:
    con.execute("INSERT INTO stripe_catalog_findings (finding, kind, our_key, stripe_id, field, ours, theirs, detail, "
                "synced_at) VALUES (?, 'price', ?, ?, ?, ?, ?, 'test', ?)",
                [finding, our_key, stripe_id, field, ours, theirs, PULLED])


def _drifted(con, price_id: str = PRICE) -> None:
    """The sync found `price_id` (our pro 2026-01 api calls) at 0.165 cents a call where ours is 0.15."""
    _finding(con, "drift", API_CALLS, price_id, "unit_amount_decimal", "0.15", "0.165")


def _row(frame: pl.DataFrame, **key) -> dict:
    rows = frame.filter(**key)
    assert rows.height == 1
    return rows.row(0, named=True)


def test_a_drifted_price_within_tolerance_is_an_amount_mismatch(isolated_env, rules_dir):
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _cus_b_calls(con, 20, 8, ours=4, stripe=5)   # 28 x 0.15c = 4.2 -> 4; 28 x 0.165c = 4.62 -> 5
        _drifted(con)
        result = _reconcile(con, rules_dir)
    b = _row(result.usage, customer_id="cus_b", meter="api_calls")
    assert (b["our_quantity"], b["invoiced_quantity"], b["our_amount_minor"], b["stripe_amount_minor"]) == (
        D(28), D(28), 4, 5)
    assert (b["status"], b["explained"], b["amount_diff_minor"], b["tolerance_minor"]) == (
        "amount_mismatch", False, 1, 1)
    assert b["reason"].startswith("same quantity 28, Stripe's price differs from ours (price_api_drifted "
                                  "(pro|2026-01|api calls) unit_amount_decimal: ours 0.15, Stripe 0.165)")
    assert "rated 4 vs invoiced 5 (usd minor units, diff 1), a price difference, not rounding" in b["reason"]
    # the invoice's difference is that usage row's: 5 - 4 = 1, within its tolerance of 1, but a price
    inv = _row(result.invoices, customer_id="cus_b")
    assert (inv["status"], inv["amount_diff_minor"], inv["tolerance_minor"]) == ("amount_mismatch", 1, 1)
    assert "Stripe's price differs from ours (price_api_drifted" in inv["reason"]
    # counted once, by the usage row: cus_c's not_pushed 100 + cus_b's 1
    assert result.unexplained_minor() == {"usd": 100 + 1}
    # everything else as recon_scenario has it
    assert _row(result.usage, customer_id="cus_a", meter="api_calls")["status"] == "matched"
    assert _row(result.invoices, customer_id="cus_a")["status"] == "matched"


def test_without_a_drift_the_same_cent_stays_rounding(isolated_env, rules_dir):
    """The control: the same 4 vs 5 with no finding, or a drift of another price, is today's within_tolerance."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _cus_b_calls(con, 20, 8, ours=4, stripe=5)
        plain = _reconcile(con, rules_dir)
        _drifted(con, price_id="price_some_other")   # not the price on cus_b's line: says nothing of it
        other = _reconcile(con, rules_dir)
    for result in (plain, other):
        b = _row(result.usage, customer_id="cus_b", meter="api_calls")
        assert (b["status"], b["explained"], b["amount_diff_minor"]) == ("within_tolerance", True, 1)
        assert b["reason"] == "rounding: rated 4 vs invoiced 5 (usd minor units, diff 1) within tolerance 1"
        assert _row(result.invoices, customer_id="cus_b")["status"] == "within_tolerance"
        assert result.unexplained_minor() == {"usd": 100}


def test_a_rounding_finding_stays_within_tolerance(isolated_env, rules_dir):
    """A half-even version's price (catalog finding `rounding`): 30 x 0.15c = 4.5c, 4 for us (half even), 5 for
    Stripe (half up). Same price, a half-cent rounded two ways: explained. A drift on a field that does not
    price (the meter) does not make it a price difference either, nor does a price kept for a first tier
    with a flat amount (`expressible`: its amounts are ours; the review found its cent made unexplained)."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _cus_b_calls(con, 20, 10, ours=4, stripe=5)
        _finding(con, "rounding", API_CALLS, None, "rounding", "half_even", "not settable")
        _finding(con, "drift", API_CALLS, PRICE, "recurring.meter", "mtr_ours", "mtr_theirs")
        _finding(con, "drift", API_CALLS, PRICE, "expressible", "no", "a price exists")
        result = _reconcile(con, rules_dir)
    b = _row(result.usage, customer_id="cus_b", meter="api_calls")
    assert (b["our_quantity"], b["status"], b["explained"], b["amount_diff_minor"]) == (
        D(30), "within_tolerance", True, 1)
    assert b["reason"].startswith("rounding: rated 4 vs invoiced 5")
    assert _row(result.invoices, customer_id="cus_b")["status"] == "within_tolerance"
    assert result.unexplained_minor() == {"usd": 100}


def test_a_drift_beyond_tolerance_names_the_price(isolated_env, rules_dir):
    """1500 calls: ours 1500 x 0.15c = 225, Stripe's 1500 x 0.165c = 247.5 -> 248 (half up): 23 beyond 1."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _cus_b_calls(con, 1000, 500, ours=225, stripe=248)
        _drifted(con)
        result = _reconcile(con, rules_dir)
    b = _row(result.usage, customer_id="cus_b", meter="api_calls")
    assert (b["status"], b["explained"], b["amount_diff_minor"]) == ("amount_mismatch", False, 23)
    assert "price_api_drifted" in b["reason"] and "unit_amount_decimal" in b["reason"]


def test_a_line_without_a_price_id_falls_back_to_our_rule_versions_drift(isolated_env, rules_dir):
    """cus_b's invoice known only from webhooks, its line without a price id: the drift of the price of
    the charge we rated on that meter (pro 2026-01 api calls) is the signal."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        _cus_b_calls(con, 20, 8, ours=4, stripe=5)
        known_only_from_webhooks(con, "cus_b", "paid", 5, 5, 28, dt.datetime(2026, 11, 1, 1, tzinfo=dt.UTC))
        _drifted(con)
        result = _reconcile(con, rules_dir)
    b = _row(result.usage, customer_id="cus_b", meter="api_calls")
    assert (b["invoiced_quantity"], b["status"], b["explained"], b["amount_diff_minor"]) == (
        D(28), "amount_mismatch", False, 1)
    assert "price_api_drifted (pro|2026-01|api calls) unit_amount_decimal" in b["reason"]
    assert _row(result.invoices, customer_id="cus_b")["status"] == "amount_mismatch"


def test_a_drifted_fee_within_tolerance_is_an_amount_mismatch_on_the_invoice(isolated_env, rules_dir):
    """cus_a's platform fee (no meter): ours $49.00 = 4900, Stripe's price drifted to 4901. The invoice
    differs by 1 = the residual (no usage row carries it), within the tolerance of its one fee line, but a
    price: amount_mismatch, and the blocking check counts it."""
    with warehouse.open_warehouse() as con:
        write_scenario(con)
        con.execute("UPDATE stripe_invoice_lines_api SET amount = 4901, price_id = 'price_fee' "
                    "WHERE line_id = 'il_fee'")
        invoice_total_is_its_lines(con, "in_a0")
        plain = _reconcile(con, rules_dir)
        _finding(con, "drift", "pro|2026-01|platform fee", "price_fee", "unit_amount_decimal", "4900", "4901")
        drifted = _reconcile(con, rules_dir)
    before = _row(plain.invoices, customer_id="cus_a")
    assert (before["status"], before["amount_diff_minor"]) == ("within_tolerance", 1)
    assert plain.unexplained_minor() == {"usd": 125}
    a = _row(drifted.invoices, customer_id="cus_a")
    assert (a["status"], a["amount_diff_minor"], a["residual_tolerance_minor"]) == ("amount_mismatch", 1, 0)
    assert "Stripe's price differs from ours (price_fee (pro|2026-01|platform fee) unit_amount_decimal" in a["reason"]
    assert drifted.unexplained_minor() == {"usd": 125 + 1}
    assert _row(drifted.usage, customer_id="cus_a", meter="api_calls")["status"] == "matched"


PS, PE = dt.date(2026, 10, 1), dt.date(2026, 11, 1)
NOW = dt.datetime(2026, 11, 2, 12, tzinfo=dt.UTC)
S = ReconcileSettings()


@pytest.mark.parametrize(("drift", "status"), [(None, "within_tolerance"), (
    "price_x (scale|2026-01|api calls) tiers: ours [(100000, '0.15', '0')], Stripe [(100000, '0.165', '0')]",
    "amount_mismatch")])
def test_the_pure_rules_take_the_drift_from_the_lines(drift, status):
    """reconcile_usage / reconcile_invoices as frames: 28 calls, 4 vs 5, the lines' `price_drift`."""
    ours = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, period_end=PE, currency="usd",
                              plan="scale", plan_version="2026-01", our_quantity=D(28), our_amount_minor=4)])
    lines = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, period_end=PE, currency="usd",
                               invoiced_quantity=D(28), stripe_amount_minor=5, line_count=1, invoice_ids="in_1",
                               finalized=True, price_drift=drift)], schema_overrides={"price_drift": pl.String})
    pushed = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, pushed_quantity=D(28))])
    meter = pl.DataFrame([dict(customer_id="c1", meter="api_calls", period_start=PS, period_end=PE,
                               stripe_quantity=D(28), meter_status="settled")])
    usage = reconcile_usage(ours, pushed, meter, lines, billing_month=PS, settings=S, reconciled_at=NOW)
    r = usage.row(0, named=True)
    assert (r["status"], r["amount_diff_minor"], r["tolerance_minor"], r["explained"]) == (
        status, 1, 1, status == "within_tolerance")
    # the invoice: 2 lines (a fee of 1000 and the 5), a tolerance of 2, differs by the usage row's 1
    our_inv = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                 our_total_minor=1004, our_lines=2, our_unmetered_lines=1)])
    stripe_inv = pl.DataFrame([dict(customer_id="c1", period_start=PS, period_end=PE, currency="usd",
                                    stripe_total_minor=1005, line_count=2, rounded_lines=2, unmetered_lines=1,
                                    invoice_ids="in_1", invoice_status="paid", price_drift=drift,
                                    drifted_meters=None if drift is None else "api_calls", drifted_unmetered=False)],
                              schema_overrides={"price_drift": pl.String, "drifted_meters": pl.String})
    for with_usage in (usage, None):
        inv = reconcile_invoices(our_inv, stripe_inv, billing_month=PS, settings=S, reconciled_at=NOW,
                                 usage=with_usage).row(0, named=True)
        assert (inv["status"], inv["amount_diff_minor"], inv["tolerance_minor"]) == (status, 1, 2)
