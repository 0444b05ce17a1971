"""Gaps found by a hand mutation audit of the main job (`pipelines/demo.py`, `pipelines/demo_plants.py`,
mutants27), tested without running the whole job (tests/e2e/test_demo.py does that, slowly).

Covers: the month's end (`_next_month`, every month of a year, 31-day months included); the billing
period boundaries the job stops at (an anchor beyond the month's last day, an anchor of 1); a sandbox
state file that is JSON but not an object; what `--fresh` removes; the summary's text (money in each
currency's own digits, the counts in their places); the summary's figures read from a real warehouse
(invoice count, unexplained rows, events per call, the month's rated lines only); the planted price
drift on tiered prices; and which customer the late-usage plant picks.

Expected values are worked out by hand in each test's docstring.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import pytest

from metering import warehouse
from metering.errors import BadInputError
from pipelines.demo import (DemoOptions, DemoSummary, _check_sandbox_state, _next_month, _prepare,
                            period_boundaries, read_figures)
from pipelines.demo_plants import LATE_FILE, _bump, plant_after_close

SEP = dt.date(2026, 9, 1)


def _options(tmp_path: Path, month: dt.date = SEP, **kw) -> DemoOptions:
    return DemoOptions(month=month, data_dir=tmp_path / "data", rules_dir=tmp_path / "rules", **kw)


def _customers(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["customer_id", "plan", "plan_effective_from", "billing_anchor_day"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fields)
        writer.writeheader()
        writer.writerows(rows)


# --- the month's end ------------------------------------------------------------------------------

@pytest.mark.parametrize("month", range(1, 13))
def test_next_month_is_the_first_of_the_following_month(month):
    """Day 28 + 4 days is past the end of every month (28..31 days) and before the 5th of the next;
    December runs into January of the next year."""
    day = dt.date(2026, month, 17)
    expected = dt.date(2027, 1, 1) if month == 12 else dt.date(2026, month + 1, 1)
    assert _next_month(day) == expected


# --- billing period boundaries --------------------------------------------------------------------

def test_period_boundaries_clamp_anchors_to_the_months_last_day_and_skip_the_first(tmp_path):
    """September has 30 days. Anchors: '' (calendar month: no boundary inside), '1' (its period ends on
    the month's first instant: no boundary after the 1st), '15' -> Sep 15, '31' -> clamped to Sep 30,
    '30' -> Sep 30 too (once); and the month's end, Oct 1. Sorted, no duplicates."""
    options = _options(tmp_path)
    _customers(options.customers_file, [
        {"customer_id": c, "plan": "pro", "plan_effective_from": "2026-09-01", "billing_anchor_day": a}
        for c, a in (("cus_a", ""), ("cus_b", "1"), ("cus_c", "15"), ("cus_d", "31"), ("cus_e", "30"))])
    assert period_boundaries(options) == [dt.date(2026, 9, 15), dt.date(2026, 9, 30), dt.date(2026, 10, 1)]


def test_period_boundaries_in_february_clamp_to_the_28th(tmp_path):
    """February 2026 has 28 days: anchor 29 -> Feb 28; anchor 28 -> Feb 28; month's end Mar 1."""
    options = _options(tmp_path, month=dt.date(2026, 2, 1))
    _customers(options.customers_file, [
        {"customer_id": "cus_a", "plan": "pro", "plan_effective_from": "2026-02-01", "billing_anchor_day": "29"}])
    assert period_boundaries(options) == [dt.date(2026, 2, 28), dt.date(2026, 3, 1)]


# --- the sandbox's state file ---------------------------------------------------------------------

@pytest.mark.parametrize("text", ["[]", "null", "3", '"state"', '{"customers": ', ""])
def test_a_state_file_that_is_not_a_json_object_is_named_with_the_way_out(tmp_path, text):
    """A JSON list, null, number or string is not a state file (the sandbox reads an object), nor is a
    file cut short: each is refused, naming the file and `--fresh`."""
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(BadInputError) as info:
        _check_sandbox_state(path)
    assert str(path) in str(info.value) and "metering demo --fresh" in str(info.value)


def test_a_state_object_or_no_file_is_accepted(tmp_path):
    path = tmp_path / "state.json"
    _check_sandbox_state(path)          # no file: a first run
    path.write_text(json.dumps({"customers": {}}))
    _check_sandbox_state(path)


# --- --fresh --------------------------------------------------------------------------------------

def test_fresh_removes_every_previous_output_and_resuming_keeps_them(tmp_path):
    """--fresh starts from empty state: raw files, landing files, the sandbox's state, the reports, the
    outbox, the published files, the warehouse and the customer list all go. Without it all stay."""
    for fresh in (False, True):
        options = _options(tmp_path, fresh=fresh)
        leftovers = [options.raw / "usage-2026-09-01.jsonl", options.landing / "evt.json",
                     options.sandbox_state, options.data_dir / "reports" / "2026-09" / "report.html",
                     options.data_dir / "outbox" / "x.json", options.data_dir / "published" / "x.parquet",
                     options.customers_file]
        for path in leftovers:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
        with warehouse.open_warehouse(options.warehouse):
            pass
        _prepare(options)
        if fresh:
            assert [p for p in leftovers if p.exists()] == []
            assert not options.warehouse.exists()
            assert options.sandbox_state.parent.is_dir()     # made again for the sandbox
        else:
            assert all(p.exists() for p in leftovers) and options.warehouse.exists()


# --- the summary's text ---------------------------------------------------------------------------

FIGURES = {
    "period": "2026-09", "dagster_runs": 21, "rows_read": 150_321, "events_accepted": 148_000,
    "rows_quarantined": 1_300, "duplicates_dropped": 1_021, "rated_lines": 4_200, "rated_customers": 200,
    "rated_totals": {"jpy": 1_077_914, "usd": 6_476_037}, "meter_event_calls": 1_234, "raw_events_per_call": 119.9,
    "push_retries": 2, "late_windows": 1, "stripe_calls_this_run": 5_432, "invoices": 417,
    "invoice_status": {"open": 7, "paid": 409, "uncollectible": 1}, "invoice_items": 217,
    "invoice_items_on_period_invoice": 159, "invoice_items_totals": {}, "webhook_events": 3_210,
    "reconciliation": {"amount_mismatch": 53, "matched": 900}, "unexplained_rows": 57, "dunning": {},
    "suspended": 0,
}


def test_summary_text_puts_each_figure_in_its_place_and_money_in_its_currency():
    """Yen have no minor unit: 1,077,914 JPY; cents: 6,476,037 -> 64,760.37 USD. Quarantined 1,300 and
    duplicates 1,021 in their own places; no invoice items total -> 'none'; no dunning -> 'nothing in
    dunning'."""
    text = DemoSummary(dict(FIGURES), Path("/r"), Path("/s.duckdb"), 79.4).render().splitlines()
    assert text[0] == "metering demo: 2026-09 billed end to end in 79 s (21 Dagster runs)"
    assert text[1] == ("  events:          150,321 rows read, 148,000 accepted, 1,300 quarantined, "
                       "1,021 exact duplicates dropped")
    assert text[2] == "  rated:           4,200 lines for 200 customers: 1,077,914 JPY, 64,760.37 USD"
    assert text[4] == "  invoices:        417 in Stripe: open 7, paid 409, uncollectible 1"
    assert text[5] == ("  invoice items:   217 for charges Stripe cannot price (159 on their period's invoice, "
                       "the rest on the next): none")
    assert text[7] == ("  reconciliation:  amount_mismatch 53, matched 900 (customer x meter x period rows; "
                       "57 unexplained)")
    assert text[8] == "  dunning:         nothing in dunning; 0 suspended"


# --- the summary's figures, from a real warehouse -------------------------------------------------

def test_figures_are_read_from_the_warehouse(tmp_path):
    """By hand: 3 Stripe invoices (paid, paid, open) -> 3, {'open': 1, 'paid': 2} (not 2 statuses);
    September's usage_reconciliation rows: matched (explained), 2 x amount_mismatch (not explained),
    plus an October row not explained that is not September's -> 1 + 2 rows, 2 unexplained; 10
    accepted events over 3 meter event calls -> 3.3 per call (10 / 3 = 3.33, one decimal); rated
    lines of periods starting Sep 1 and Sep 15 count, one starting Oct 1 does not -> 2 lines,
    1500 + 250 = 1750 usd."""
    options = _options(tmp_path)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    with warehouse.open_warehouse(options.warehouse) as con:
        con.execute("""INSERT INTO stripe_invoices (invoice_id, status) VALUES
                       ('in_1', 'paid'), ('in_2', 'paid'), ('in_3', 'open')""")
        con.execute("""INSERT INTO usage_reconciliation BY NAME
                       SELECT billing_month, 'cus_' || i AS customer_id, 'api_calls' AS meter,
                              billing_month AS period_start, billing_month + INTERVAL 1 MONTH AS period_end,
                              0 AS tolerance_minor, status, 'r' AS reason, explained, now() AS reconciled_at
                       FROM (VALUES (1, DATE '2026-09-01', 'matched', true),
                                    (2, DATE '2026-09-01', 'amount_mismatch', false),
                                    (3, DATE '2026-09-01', 'amount_mismatch', false),
                                    (4, DATE '2026-10-01', 'amount_mismatch', false)) v(i, billing_month, status, explained)""")
        con.execute("""INSERT INTO usage_events BY NAME
                       SELECT 'evt_' || i AS event_id, 'cus_1' AS customer_id, 'api_calls' AS meter,
                              TIMESTAMPTZ '2026-09-02 00:00:00+00' AS event_time, DATE '2026-09-02' AS event_date,
                              1 AS file_id, i AS source_line FROM range(10) t(i)""")
        con.execute("""INSERT INTO stripe_push_runs BY NAME
                       SELECT 'run_' || i AS run_id, now() AS started_at, DATE '2026-09-01' AS date_from,
                              DATE '2026-09-30' AS date_to, 'day' AS window_kind, calls, 0 AS retries
                       FROM (VALUES (1, 2), (2, 1)) v(i, calls)""")
        con.execute("""INSERT INTO rated_usage BY NAME
                       SELECT 'cus_' || i AS customer_id, period_start, period_start + 30 AS period_end,
                              period_start AS segment_start, period_start + 30 AS segment_end, 'pro' AS plan,
                              '2026-01' AS plan_version, 'h' AS rules_hash, i AS charge_id, 'api' AS charge,
                              'flat' AS model, amount_minor, 'usd' AS currency, 'none' AS rounding, now() AS rated_at
                       FROM (VALUES (1, DATE '2026-09-01', 1500), (2, DATE '2026-09-15', 250),
                                    (3, DATE '2026-10-01', 9999)) v(i, period_start, amount_minor)""")
    f = read_figures(options, stripe_calls=42)
    assert (f["invoices"], f["invoice_status"]) == (3, {"open": 1, "paid": 2})
    assert (f["reconciliation"], f["unexplained_rows"]) == ({"amount_mismatch": 2, "matched": 1}, 2)
    assert (f["events_accepted"], f["meter_event_calls"], f["raw_events_per_call"]) == (10, 3, 3.3)
    assert (f["rated_lines"], f["rated_customers"], f["rated_totals"]) == (2, 2, {"usd": 1750})
    assert f["stripe_calls_this_run"] == 42


# --- the plants -----------------------------------------------------------------------------------

def test_price_drift_raises_flat_and_tiered_unit_amounts_by_ten_percent():
    """x 1.1, normalized: '10' -> '11', tiers '0.5' -> '0.55' and '0.25' -> '0.275'; other keys kept;
    the input left as it was."""
    flat = {"unit_amount_decimal": "10", "currency": "usd"}
    tiered = {"tiers": [{"up_to": 1000, "unit_amount_decimal": "0.5"},
                        {"up_to": "inf", "unit_amount_decimal": "0.25"}], "tiers_mode": "graduated"}
    assert _bump(flat) == {"unit_amount_decimal": "11", "currency": "usd"}
    assert _bump(tiered) == {"tiers": [{"up_to": 1000, "unit_amount_decimal": "0.55"},
                                       {"up_to": "inf", "unit_amount_decimal": "0.275"}], "tiers_mode": "graduated"}
    assert tiered["tiers"][0]["unit_amount_decimal"] == "0.5"
    assert Decimal("0.25") * Decimal("1.1") == Decimal("0.275")


def test_late_usage_goes_to_a_calendar_month_customer_on_one_plan_away_from_the_drift(tmp_path):
    """Candidates, by hand: cus_a is on the drifted plan (scale); cus_b has an anchor (15); cus_c
    changes plan mid-month (a second row from Sep 10); cus_d has anchor '1' (a calendar month) and
    cus_e none (''): both fit, the smallest id wins -> cus_d. The event is on Sep 30 (the month's last
    day), 18:30 UTC, in the late file under raw/."""
    options = _options(tmp_path)
    options.raw.mkdir(parents=True)
    _customers(options.customers_file, [
        {"customer_id": "cus_a", "plan": "scale", "plan_effective_from": "2026-09-01", "billing_anchor_day": ""},
        {"customer_id": "cus_b", "plan": "pro", "plan_effective_from": "2026-09-01", "billing_anchor_day": "15"},
        {"customer_id": "cus_c", "plan": "pro", "plan_effective_from": "2026-09-01", "billing_anchor_day": ""},
        {"customer_id": "cus_c", "plan": "scale", "plan_effective_from": "2026-09-10", "billing_anchor_day": ""},
        {"customer_id": "cus_d", "plan": "pro", "plan_effective_from": "2026-09-01", "billing_anchor_day": "1"},
        {"customer_id": "cus_e", "plan": "pro", "plan_effective_from": "2026-09-01", "billing_anchor_day": ""},
    ])
    files = plant_after_close(options)
    assert files == [str(options.raw / LATE_FILE)]
    event = json.loads(Path(files[0]).read_text())
    assert event == {"event_id": "evt_late_after_close_20260930", "customer_id": "cus_d", "meter": "api_calls",
                     "timestamp": "2026-09-30T18:30:00Z", "properties": {"region": "us"}}
