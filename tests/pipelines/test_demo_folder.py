"""One data folder holds one demo (`pipelines/demo.py`, `_claim_folder`), and the planted extra meter
event goes to the latest catalog sync's Stripe customer (`plant_extra_usage`).

Until the twenty-ninth session `metering demo --month 2026-10` on a folder holding September's demo
ran for a minute and then failed: first with Stripe's "Timestamp must be no more than 5 minutes in the
future" traceback (the plant picked September's Stripe customer, on September's test clock, from the
map's earlier sync), and with that fixed, on rating, which refused October's customer list for
periods overlapping September's. Had it finished, its summary would have added both months up.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from metering import warehouse
from metering.errors import BadInputError
from metering.stripe.keys import event_name
from metering.stripe_sandbox.testing import running_sandbox
from pipelines.demo import DemoOptions, _prepare
from pipelines.demo_plants import plant_extra_usage

SEP = dt.date(2026, 9, 1)
OCT1 = 1790812800   # 2026-10-01T00:00:00Z: the demo's clock when it plants the event
SEPTEMBER = {"month": "2026-09", "customers": 200, "events": 150_000, "seed": 7}


def _options(tmp_path: Path, **kw) -> DemoOptions:
    return DemoOptions(**{"month": SEP, "data_dir": tmp_path / "data", "rules_dir": tmp_path / "rules", **kw})


def test_the_first_run_records_its_demo_and_a_resumed_run_keeps_it(tmp_path):
    options = _options(tmp_path)
    _prepare(options)
    assert json.loads(options.record.read_text()) == SEPTEMBER
    _prepare(options)                                   # the same demo again: resumed
    assert json.loads(options.record.read_text()) == SEPTEMBER


@pytest.mark.parametrize(("change", "described"), [
    ({"month": dt.date(2026, 10, 1)}, "2026-10 (200 customers, 150,000 events, seed 7)"),
    ({"customers": 30}, "2026-09 (30 customers, 150,000 events, seed 7)"),
    ({"events": 6000}, "2026-09 (200 customers, 6,000 events, seed 7)"),
    ({"seed": 8}, "2026-09 (200 customers, 150,000 events, seed 8)"),
])
def test_another_demo_on_the_folder_is_refused_and_changes_nothing(tmp_path, change, described):
    _prepare(_options(tmp_path))
    options = _options(tmp_path, **change)
    with warehouse.open_warehouse(options.warehouse):
        pass
    options.customers_file.write_text("customer_id\ncust_1\n")
    before = {p: p.read_bytes() for p in options.data_dir.rglob("*") if p.is_file()}
    with pytest.raises(BadInputError) as info:
        _prepare(options)
    assert str(info.value) == (
        f"{options.data_dir} holds the demo of 2026-09 (200 customers, 150,000 events, seed 7), not {described}: "
        "one data folder holds one demo. Run `metering demo --fresh` to replace it, or give another --data-dir")
    assert {p: p.read_bytes() for p in options.data_dir.rglob("*") if p.is_file()} == before


def test_fresh_replaces_the_folders_demo(tmp_path):
    _prepare(_options(tmp_path))
    october = _options(tmp_path, month=dt.date(2026, 10, 1), fresh=True)
    _prepare(october)
    assert json.loads(october.record.read_text()) == {**SEPTEMBER, "month": "2026-10"}


def test_a_folder_from_before_the_record_is_taken_as_this_demos(tmp_path):
    """Folders the demo filled before the twenty-ninth session have a warehouse and no record."""
    options = _options(tmp_path)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    with warehouse.open_warehouse(options.warehouse):
        pass
    _prepare(options)
    assert options.warehouse.exists() and json.loads(options.record.read_text()) == SEPTEMBER


@pytest.mark.parametrize(("text", "why"), [
    ('{"month": "2026-09"', "Expecting ',' delimiter"),          # cut short
    ('["2026-09"]', "expected an object with month, customers, events, seed"),
    ('{"month": "2026-09", "customers": 200, "events": 150000}', "expected an object with month, customers, events, seed"),
])
def test_a_record_that_is_not_one_is_named_with_the_way_out(tmp_path, text, why):
    options = _options(tmp_path)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    options.record.write_text(text)
    with pytest.raises(BadInputError) as info:
        _prepare(options)
    assert str(info.value).startswith(f"{options.record}: not the demo's record (")
    assert why in str(info.value) and str(info.value).endswith("run `metering demo --fresh` to start over")
    assert options.record.read_text() == text


def test_the_extra_meter_event_goes_to_the_latest_syncs_customer(tmp_path):
    """The map keeps every sync's mappings. An earlier sync mapped cust_a (on another month's clock);
    the latest maps cust_b alone. Both have api_calls usage on Sep 1 only, so the latest day without
    any is Sep 30 for either, and the tie goes to the first customer id: cust_a, had the plant read
    the earlier sync's row. It must pick cust_b, on the Stripe customer the latest sync mapped."""
    options = _options(tmp_path)
    with running_sandbox() as sb, warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        client = sb.client()
        meter = client.v1.billing.meters.create({"display_name": "api calls", "event_name": event_name("api_calls"),
                                         "default_aggregation": {"formula": "sum"}})
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT1, "name": "metering demo 2026-09"})
        new = client.v1.customers.create({"metadata": {"customer_id": "cust_b"}, "test_clock": clock.id})
        for customer_id, stripe_customer, synced in (("cust_a", "cus_gone", "2026-08-31 09:00:00+00"),
                                                     ("cust_b", new.id, "2026-09-01 09:00:00+00")):
            con.execute("INSERT INTO stripe_customer_map (customer_id, stripe_customer_id, plan, synced_at) "
                        "VALUES (?, ?, 'starter', ?)", [customer_id, stripe_customer, synced])
            con.execute("INSERT INTO customer_plans (customer_id, currency, plan, plan_effective_from, "
                        "payment_behavior, source_line) VALUES (?, 'usd', 'starter', DATE '2026-01-01', 'succeeds', 1)",
                        [customer_id])
            con.execute("INSERT INTO usage_events (event_id, customer_id, meter, event_time, event_date, value, "
                        "file_id, source_line) VALUES (?, ?, 'api_calls', TIMESTAMPTZ '2026-09-01 10:00:00+00', "
                        "DATE '2026-09-01', 1, 1, 1)", [f"e_{customer_id}", customer_id])
        assert plant_extra_usage(client, con, options) == ("cust_b", "api_calls")
        assert len(sb.requests_log("/v1/billing/meter_events", "POST")) == 1
        # the plant's 250 calls, at noon on Sep 30, on the latest sync's Stripe customer
        summaries = client.v1.billing.meters.event_summaries.list(meter.id, {
            "customer": new.id, "start_time": OCT1 - 86400, "end_time": OCT1}).data
        assert [(s.start_time, s.aggregated_value) for s in summaries] == [(OCT1 - 86400, 250)]
