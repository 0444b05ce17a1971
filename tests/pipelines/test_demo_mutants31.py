"""Gaps found by the thirty-first hand mutation audit of the main job (`pipelines/demo.py`,
`pipelines/demo_plants.py`, mutants31), tested without running the whole job (tests/e2e/test_demo.py
does that, slowly; test_demo_mutants27.py and test_demo_folder.py cover what earlier audits found).

Covers: the test clock's instants are UTC; finding the month's test clock among others and creating it
at the month's first instant; moving the clock forward only (a re-run finds it there); the Dagster
runner's run count, its failure on a failed run and what its message names (the failing step's own
error, and the range of a single-run backfill); the project's Dagster instance only for the project's
data folder; the summary's lines not covered before (stripe, webhooks, dunning, invoice item totals,
report and snapshot); `--fresh` removing only what the demo owns; a bad sandbox state file refused
before any work; a record that cannot be read or was edited; the sample files all arriving inside the
month and grouped by their arrival day; more of the summary's figures read from a real warehouse;
the months `--month` accepts at both ends; the planted price drift in the local Stripe sandbox; which
customer and day the extra meter event goes to; and a late-usage plant with no customer to give it to.

Five defects, fixed in the thirty-first session (their tests fail on `a65de4b`): a demo with no
calendar-month customer for the late-usage plant ended in a traceback; a re-run more than 24 h later
planted the extra meter event twice; a failed step's message left out the step's own error, and a
failed single-run backfill said '(unpartitioned)'; an edited record with a value of another type was a
traceback, not bad input.

Expected values are worked out by hand in each test's docstring or comments.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import dagster as dg
import pytest

from metering import config, warehouse
from metering.errors import BadInputError, CheckFailedError
from metering.stripe.keys import event_name
from metering.stripe_sandbox.testing import running_sandbox
from pipelines.demo import (DemoOptions, DemoRunner, DemoSummary, _advance_clock, _claim_folder,
                            _files_by_arrival, _find_or_create_clock, _generate, _instance, _prepare, _unix, _utc,
                            demo_month, demo_months, read_figures)
from pipelines.demo_plants import LATE_FILE, plant_after_close, plant_before_sync, plant_extra_usage

SEP = dt.date(2026, 9, 1)
SEP1 = 1788220800   # 2026-09-01T00:00:00Z = 2026-10-01T00:00:00Z (1790812800) - 30 days x 86400 s
OCT1 = 1790812800   # 2026-10-01T00:00:00Z


def _options(tmp_path: Path, **kw) -> DemoOptions:
    return DemoOptions(**{"month": SEP, "data_dir": tmp_path / "data", "rules_dir": config.PROJECT_ROOT / "rating_rules",
                          **kw})


def _customers(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["customer_id", "name", "email", "currency", "billing_anchor_day", "plan", "plan_effective_from",
              "payment_behavior"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({"name": "C", "email": "c@example.com", "currency": "usd", "billing_anchor_day": "",
                             "plan_effective_from": "2026-09-01", "payment_behavior": "succeeds", **row})


# --- the test clock -------------------------------------------------------------------------------

def test_the_clocks_instants_are_utc():
    """Sep 1 2026 00:00 UTC is 1788220800 whatever the machine's zone: an aware UTC datetime."""
    at = _utc(SEP)
    assert at.utcoffset() == dt.timedelta(0)
    assert _unix(at) == SEP1


def test_the_months_clock_is_found_by_name_and_created_at_the_months_first_instant():
    """Another month's demo clock (October's) is not September's: a new one is created, frozen at
    Sep 1 00:00 UTC; asked again, the same clock is returned (a re-run keeps its customers' clock)."""
    with running_sandbox() as sb:
        client = sb.client()
        october = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT1, "name": "metering demo 2026-10"}).id
        september = _find_or_create_clock(client, SEP)
        assert september != october
        clock = client.v1.test_helpers.test_clocks.retrieve(september)
        assert (clock.name, clock.frozen_time) == ("metering demo 2026-09", SEP1)
        assert _find_or_create_clock(client, SEP) == september
        assert _find_or_create_clock(client, dt.date(2026, 10, 1)) == october
        assert len(client.v1.test_helpers.test_clocks.list({"limit": 100}).data) == 2


def test_the_clock_moves_forward_only_and_a_rerun_finds_it_there():
    """Sep 1 -> Sep 1 10:00 moves it; asked for the same instant again (a re-run) or an earlier one,
    it stays (Stripe refuses a clock advanced to its own time or back)."""
    with running_sandbox() as sb:
        client = sb.client()
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": SEP1, "name": "metering demo 2026-09"}).id
        ten = _utc(SEP) + dt.timedelta(hours=10)
        _advance_clock(sb, client, clock, ten)
        assert client.v1.test_helpers.test_clocks.retrieve(clock).frozen_time == SEP1 + 36_000
        _advance_clock(sb, client, clock, ten)
        _advance_clock(sb, client, clock, _utc(SEP))
        assert client.v1.test_helpers.test_clocks.retrieve(clock).frozen_time == SEP1 + 36_000


# --- the Dagster runner ---------------------------------------------------------------------------

def _runner(tmp_path: Path) -> tuple[DemoRunner, DemoOptions]:
    from pipelines.resources import ProjectPaths, WarehouseResource, stripe_resources

    options = _options(tmp_path)
    options.raw.mkdir(parents=True)
    resources = {
        "warehouse": WarehouseResource(path=str(options.warehouse)),
        "paths": ProjectPaths(data_dir=str(options.data_dir), rules_dir=str(options.rules_dir),
                              raw_dir=str(options.raw), customers=str(options.customers_file)),
        # nothing here calls Stripe: a closed port
        **stripe_resources(base_url="http://127.0.0.1:9"),
    }
    return DemoRunner(resources, dg.DagsterInstance.ephemeral()), options


def test_the_runner_counts_its_runs_and_fails_on_a_failed_run(tmp_path):
    """One good run: runs == 1, the rows written. Then a customer list without its header's columns:
    the run fails, the runner raises (the demo stops) naming the step, and that run counts too."""
    runner, options = _runner(tmp_path)
    _customers(options.customers_file, [{"customer_id": "cust_1", "plan": "pro"}])
    result = runner.materialize(["customer_plans"])
    assert result.success and runner.runs == 1
    with warehouse.open_warehouse(options.warehouse, read_only=True) as con:
        assert con.execute("SELECT customer_id, plan FROM customer_plans").fetchall() == [("cust_1", "pro")]
    options.customers_file.write_text("customer_id,plan\ncust_1,pro\n")
    with pytest.raises(CheckFailedError) as info:
        runner.materialize(["customer_plans"])
    prefix = "demo step ['customer_plans'] (unpartitioned) failed: "
    assert str(info.value).startswith(prefix)
    # the reason is kept whole up to 800 characters (Dagster's texts here are ~130: not cut)
    assert len(str(info.value)) - len(prefix) > 100
    assert runner.runs == 2


def test_a_checkpoints_run_is_one_backfill_of_its_range(tmp_path):
    """A checkpoint's run covers Sep 1 .. Sep 2 in one run: the range tags name its first and last
    day, in that order; the one event (Sep 1, api_calls, value 1) is ingested and aggregated."""
    from pipelines.partitions import RANGE_END_TAG, RANGE_START_TAG

    runner, options = _runner(tmp_path)
    raw = options.raw / "usage-2026-09-01.jsonl"
    raw.write_text('{"event_id": "e1", "customer_id": "c1", "meter": "api_calls", '
                   '"timestamp": "2026-09-01T10:00:00Z", "value": 1}\n')
    result = runner.materialize(["usage_events", "usage_aggregates"], partition_range=(SEP, dt.date(2026, 9, 2)),
                                run_config={"ops": {"usage_events": {"config": {"files": [str(raw)]}}}})
    tags = result.dagster_run.tags
    assert (tags[RANGE_START_TAG], tags[RANGE_END_TAG], tags["metering/source"]) == ("2026-09-01", "2026-09-02", "demo")
    assert runner.runs == 1
    with warehouse.open_warehouse(options.warehouse, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM usage_events").fetchone()[0] == 1


def test_a_failed_step_is_reported_with_its_own_error(tmp_path):
    """DEFECT (audit 31): the message kept Dagster's event texts ('Execution of step "customer_plans"
    failed.; Execution of run ... failed') and dropped the step's error, which names the file, the
    line and the columns missing: `customers.csv:1: header: missing column(s) name, email, ...`."""
    runner, options = _runner(tmp_path)
    options.customers_file.parent.mkdir(parents=True, exist_ok=True)
    options.customers_file.write_text("customer_id,plan\ncust_1,pro\n")
    with pytest.raises(CheckFailedError) as info:
        runner.materialize(["customer_plans"])
    assert f"{options.customers_file}:1: header: missing column(s) name, email" in str(info.value)


def test_a_failed_single_run_backfill_names_its_range(tmp_path):
    """DEFECT (audit 31): a checkpoint's run covers Sep 1 .. Sep 14 as one backfill (no partition key):
    its failure said '(unpartitioned)', as if it were not partitioned at all."""
    runner, options = _runner(tmp_path)
    with pytest.raises(CheckFailedError) as info:
        runner.materialize(["usage_events", "usage_aggregates"], partition_range=(SEP, dt.date(2026, 9, 14)),
                           run_config={"ops": {"usage_events": {"config": {"files": [str(options.raw / "gone.jsonl")]}}}})
    assert "(unpartitioned)" not in str(info.value)
    assert "2026-09-01" in str(info.value) and "2026-09-14" in str(info.value)


def test_a_demo_on_another_folder_than_the_projects_gets_an_ephemeral_instance(tmp_path, monkeypatch):
    """Only the project's own data/ (and no $DAGSTER_HOME) uses the project's dagster.yaml: a test's
    folder must not write runs into the project's Dagster storage."""
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert _instance(_options(tmp_path)).is_ephemeral


# --- the summary's text ---------------------------------------------------------------------------

FIGURES = {
    "period": "2026-09", "dagster_runs": 21, "rows_read": 150_321, "events_accepted": 148_000,
    "rows_quarantined": 1_300, "duplicates_dropped": 1_021, "rated_lines": 4_200, "rated_customers": 200,
    "rated_totals": {"usd": 6_476_037}, "meter_event_calls": 1_234, "raw_events_per_call": 119.9,
    "push_retries": 2, "late_windows": 1, "stripe_calls_this_run": 5_432, "invoices": 417,
    "invoice_status": {"open": 7, "paid": 410}, "invoice_items": 217,
    "invoice_items_on_period_invoice": 159, "invoice_items_totals": {"jpy": 5_000, "usd": 123_456},
    "webhook_events": 3_210, "reconciliation": {"matched": 900}, "unexplained_rows": 0,
    "dunning": {"active": 3, "recovered": 1}, "suspended": 1,
}


def test_summary_lines_for_stripe_webhooks_items_dunning_report_and_snapshot():
    """By hand: 1,234 calls, 119.9 events per call, 2 retries, 1 late window, 5,432 API calls; item
    totals 5,000 JPY (no minor unit) and 123,456 cents -> 1,234.56 USD; 3,210 webhooks; dunning states
    as 'state count'; the report folder and the snapshot where they are."""
    text = DemoSummary(dict(FIGURES), Path("/d/reports/2026-09"), Path("/d/snapshot.duckdb"), 5).render().splitlines()
    assert text[3] == ("  stripe:          1,234 meter event calls (119.9 accepted events per call, 2 retries), "
                       "1 window(s) too late to push; 5,432 API calls in this run")
    assert text[5] == ("  invoice items:   217 for charges Stripe cannot price (159 on their period's invoice, "
                       "the rest on the next): 5,000 JPY, 1,234.56 USD")
    assert text[6] == "  webhooks:        3,210 events landed"
    assert text[8] == "  dunning:         active 3, recovered 1; 1 suspended"
    assert text[9] == "  report:          /d/reports/2026-09"
    assert text[10] == ("  snapshot:        /d/snapshot.duckdb  (open it read-only: "
                        "duckdb.connect(path, read_only=True))")
    assert len(text) == 11


# --- the data folder ------------------------------------------------------------------------------

def test_fresh_removes_only_what_the_demo_owns(tmp_path):
    """--fresh removes the demo's outputs (raw/, landing/, sandbox/, the warehouse ...), not a file of
    someone else's in the folder, nor other folders in it."""
    options = _options(tmp_path, fresh=True)
    keep = [options.data_dir / "notes.txt", options.data_dir / "exports" / "q3.csv"]
    gone = [options.landing / "evt.json", options.sandbox_state]
    for path in keep + gone:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
    _prepare(options)
    assert [p for p in keep if not p.exists()] == []
    assert [p for p in gone if p.exists()] == []


def test_a_bad_sandbox_state_file_is_refused_by_prepare_before_any_work(tmp_path):
    """A resumed run with a sandbox state file cut short is told so by `_prepare`, before any file is
    generated, naming the file and --fresh."""
    options = _options(tmp_path)
    options.sandbox_state.parent.mkdir(parents=True)
    options.sandbox_state.write_text('{"customers": ')
    with pytest.raises(BadInputError) as info:
        _prepare(options)
    assert str(options.sandbox_state) in str(info.value) and "metering demo --fresh" in str(info.value)
    assert not options.raw.exists()


def test_a_record_that_cannot_be_read_is_bad_input(tmp_path):
    """`demo.json` a folder (an OSError, not a ValueError): bad input naming it, not a traceback."""
    options = _options(tmp_path)
    options.record.mkdir(parents=True)
    with pytest.raises(BadInputError) as info:
        _claim_folder(options)
    assert str(info.value).startswith(f"{options.record}: not the demo's record (")


def test_a_record_with_a_key_more_is_not_the_demos_record(tmp_path):
    """A record with the four keys and one more (edited by hand) is not the demo's record: it is named
    as such, not described as a demo of the same identity ('holds the demo of X, not X')."""
    options = _options(tmp_path)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    options.record.write_text(json.dumps({**options.identity(), "note": "mine"}))
    with pytest.raises(BadInputError) as info:
        _claim_folder(options)
    assert str(info.value).startswith(f"{options.record}: not the demo's record (expected an object with month, "
                                      "customers, events, seed)")


@pytest.mark.parametrize("edit", [{"customers": "200"}, {"events": None}, {"events": "6000"}])
def test_an_edited_record_is_bad_input_not_a_traceback(tmp_path, edit):
    """DEFECT (audit 31): a record with every key but a value of another type (customers "200", a
    string) differs from the wanted one, and describing it (`{customers:,}`) raised ValueError /
    TypeError: a traceback instead of the bad-input message `_json_object` promises for an edited file."""
    options = _options(tmp_path)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    options.record.write_text(json.dumps({**options.identity(), **edit}))
    with pytest.raises(BadInputError) as info:
        _claim_folder(options)
    assert str(options.record) in str(info.value) or str(options.data_dir) in str(info.value)
    assert "metering demo --fresh" in str(info.value)


# --- the sample files -----------------------------------------------------------------------------

def test_the_sample_files_arrive_inside_the_month_grouped_by_day(tmp_path):
    """Generated for September: every file is named for an arrival day Sep 1 .. Sep 30 (a file
    dated Oct 1 would never be ingested: the last checkpoint takes the days before Oct 1), and grouping by arrival keeps every file once under its day."""
    options = _options(tmp_path, customers=3, events=300)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    files = _generate(options)
    arrivals = _files_by_arrival(files)
    assert set(arrivals) <= {SEP + dt.timedelta(days=i) for i in range(30)}
    assert sorted(f for fs in arrivals.values() for f in fs) == sorted(str(f) for f in files)
    for day, fs in arrivals.items():
        assert all(Path(f).name.startswith(f"usage-{day.isoformat()}.") for f in fs)


def test_files_are_grouped_by_the_day_in_their_names_whatever_the_format():
    """`usage-2026-09-03.jsonl.gz`, `.csv`, `.parquet`: the day is the name's, before the first dot."""
    names = ["usage-2026-09-03.jsonl.gz", "usage-2026-09-03.csv", "usage-2026-09-04.parquet"]
    assert _files_by_arrival([Path("/r") / n for n in names]) == {
        dt.date(2026, 9, 3): ["/r/usage-2026-09-03.jsonl.gz", "/r/usage-2026-09-03.csv"],
        dt.date(2026, 9, 4): ["/r/usage-2026-09-04.parquet"]}


# --- the summary's figures, from a real warehouse -------------------------------------------------

def test_more_figures_are_read_from_the_warehouse(tmp_path):
    """By hand: two ingested files of 10 + 7 rows read (17, not the larger 10), 1 + 2 quarantined, 0 + 1
    dropped; push runs 4 + 3 calls with 1 + 0 retries -> 7 calls, 1 retry; ledger rows acknowledged,
    late, late -> 2 late windows; 1 suspension; 2 webhook events; September's acknowledged invoice
    items: A (on its target invoice, 500 usd), B (on another invoice than its target, 300 usd), C
    (no invoice yet, 200 usd) -> 3 items, 1 on its period's invoice, 1000 usd; not counted: D failed
    (700 usd) and E of a period starting Oct 1 (900 usd). No accepted events: 0 per call."""
    options = _options(tmp_path)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    with warehouse.open_warehouse(options.warehouse) as con:
        con.execute("""INSERT INTO ingested_files BY NAME
                       SELECT 'h' || i AS file_hash, 'p' || i AS path, 'jsonl' AS format, rows_read,
                              rows_read - q - d AS rows_accepted, q AS rows_quarantined, d AS duplicates_dropped,
                              now() AS ingested_at
                       FROM (VALUES (1, 10, 1, 0), (2, 7, 2, 1)) v(i, rows_read, q, d)""")
        con.execute("""INSERT INTO stripe_push_runs BY NAME
                       SELECT 'run_' || i AS run_id, now() AS started_at, DATE '2026-09-01' AS date_from,
                              DATE '2026-09-30' AS date_to, 'day' AS window_kind, calls, retries
                       FROM (VALUES (1, 4, 1), (2, 3, 0)) v(i, calls, retries)""")
        con.execute("""INSERT INTO stripe_push_ledger BY NAME
                       SELECT 'cus_' || i AS customer_id, 'api_calls' AS meter,
                              TIMESTAMPTZ '2026-09-02 00:00:00+00' AS window_start,
                              TIMESTAMPTZ '2026-09-03 00:00:00+00' AS window_end, 1 AS revision, 1 AS value,
                              'id' || i AS identifier, 'k' || i AS idempotency_key, status, 1 AS attempts,
                              now() AS created_at, 'day' AS window_kind, DATE '2026-09-02' AS event_date,
                              'e' AS event_name, TIMESTAMPTZ '2026-09-02 12:00:00+00' AS event_timestamp,
                              1 AS raw_events, now() AS updated_at
                       FROM (VALUES (1, 'acknowledged'), (2, 'late'), (3, 'late')) v(i, status)""")
        con.execute("""INSERT INTO suspensions VALUES ('cus_s', 'cust_s', 'usd', 'in_1', 100, '1.00', now(), now())""")
        con.execute("""INSERT INTO stripe_webhook_events BY NAME
                       SELECT 'evt_' || i AS event_id, 'invoice.paid' AS type, now() AS created, '{}' AS raw,
                              now() AS first_received_at, now() AS last_received_at, 1 AS receipt_count,
                              'webhook' AS source FROM range(2) t(i)""")
        con.execute("""INSERT INTO stripe_invoice_items BY NAME
                       SELECT 'cust_' || k AS customer_id, period_start, period_start + 30 AS period_end,
                              'pro' AS plan, '2026-01' AS plan_version, 'minimum' AS charge, 'usd' AS currency,
                              1 AS revision, amount AS amount_minor, amount AS target_minor, 'item_' || k AS item_key,
                              'cus_' || k AS stripe_customer_id, target AS target_invoice_id,
                              invoice AS stripe_invoice_id, status, 1 AS attempts, now() AS created_at,
                              now() AS updated_at
                       FROM (VALUES ('A', DATE '2026-09-01', 500, 'in_a', 'in_a', 'acknowledged'),
                                    ('B', DATE '2026-09-15', 300, 'in_b', 'in_next', 'acknowledged'),
                                    ('C', DATE '2026-09-01', 200, 'in_c', NULL, 'acknowledged'),
                                    ('D', DATE '2026-09-01', 700, 'in_d', 'in_d', 'failed'),
                                    ('E', DATE '2026-10-01', 900, 'in_e', 'in_e', 'acknowledged'))
                            v(k, period_start, amount, target, invoice, status)""")
    f = read_figures(options, stripe_calls=0)
    assert (f["rows_read"], f["rows_quarantined"], f["duplicates_dropped"]) == (17, 3, 1)
    assert (f["meter_event_calls"], f["push_retries"], f["late_windows"]) == (7, 1, 2)
    assert (f["suspended"], f["webhook_events"]) == (1, 2)
    assert (f["invoice_items"], f["invoice_items_on_period_invoice"], f["invoice_items_totals"]) == (3, 1, {"usd": 1000})
    assert (f["events_accepted"], f["raw_events_per_call"]) == (0, 0.0)


def test_no_meter_event_calls_is_zero_events_per_call(tmp_path):
    """An empty warehouse (nothing pushed): 0 per call, a number the summary can print."""
    options = _options(tmp_path)
    options.data_dir.mkdir(parents=True, exist_ok=True)
    with warehouse.open_warehouse(options.warehouse):
        pass
    f = read_figures(options, stripe_calls=0)
    assert f["raw_events_per_call"] == 0 and isinstance(f["raw_events_per_call"], int)


# --- the months --month accepts -------------------------------------------------------------------

def test_demo_months_stop_at_the_last_month_customer_lists_may_hold():
    """In (a far) 9999, the last month that has ended would be 9999-05; customer lists end on
    9998-12-31 (metering.customers.LAST_DATE), so the last demo month is 9998-12."""
    assert demo_months(dt.date(9999, 6, 15)) == (dt.date(2026, 1, 1), dt.date(9998, 12, 1))


def test_the_first_and_last_months_are_accepted():
    """Both ends are inclusive: 2026-01 (the partitions' first month) and the last month that ended."""
    first, last = demo_months()
    for month in (first, last):
        value = dt.datetime(month.year, month.month, 1)
        assert demo_month(None, None, value) == value


# --- the plants -----------------------------------------------------------------------------------

def test_price_drift_is_the_scale_plans_api_calls_price_ten_percent_higher_and_planted_once(tmp_path):
    """The scale plan's first metered charge, api calls (volume tiers 0.0015 / 0.0012 / 0.0010 USD, i.e.
    0.15 / 0.12 / 0.1 cents), gets a price under its lookup key `metering:scale:2026-01:api calls` at
    x 1.1: 0.165 / 0.132 / 0.11 cents, on one product whose metadata names the plan (not another plan's
    product). Planted again (a
    re-run): the same price, still one product; with a price under the key already (the sync ran
    first), that price is returned and nothing is created."""
    options = _options(tmp_path)
    with running_sandbox() as sb:
        client = sb.client()
        other = client.v1.products.create({"name": "pro", "metadata": {"plan": "pro"}})   # another plan's
        price_id = plant_before_sync(client, options)
        price = client.v1.prices.retrieve(price_id, {"expand": ["tiers"]})
        assert price.lookup_key == "metering:scale:2026-01:api calls"
        assert [str(t.unit_amount_decimal) for t in price.tiers] == ["0.165", "0.132", "0.11"]
        assert plant_before_sync(client, options) == price_id
        products = [p for p in client.v1.products.list({"limit": 100}).data
                    if p.metadata and p.metadata.to_dict().get("plan") == "scale"]
        assert [p.id for p in products] == [price.product] and price.product != other.id
        assert len(client.v1.products.list({"limit": 100}).data) == 2
        assert len(sb.requests_log("/v1/prices", "POST")) == 1


def test_the_extra_meter_event_picks_the_latest_free_day_and_the_first_fitting_customer(tmp_path):
    """Latest sync's map, all on `starter`: cust_0 has anchor 15 (not a calendar month); cust_a changes
    plan (two plan rows); cust_b has no api_calls usage at all; cust_c has api_calls on Sep 1 and Sep 30
    (latest free day Sep 29); cust_d and cust_e have api_calls on Sep 1 only (free on Sep 30), cust_d
    also tokens usage on Sep 30 (another meter: it does not make the day taken). Latest day first,
    then the smallest id: Sep 30, cust_d -- its Stripe customer gets 250 calls in Sep 30's bucket."""
    options = _options(tmp_path)
    with running_sandbox() as sb, warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        client = sb.client()
        meter = client.v1.billing.meters.create({"display_name": "api calls", "event_name": event_name("api_calls"),
                                                 "default_aggregation": {"formula": "sum"}})
        clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT1, "name": "metering demo 2026-09"})
        stripe_ids = {}
        for cid, anchor in (("cust_0", 15), ("cust_a", None), ("cust_b", None), ("cust_c", None), ("cust_d", None),
                            ("cust_e", None)):
            stripe_ids[cid] = client.v1.customers.create({"metadata": {"customer_id": cid}, "test_clock": clock.id}).id
            con.execute("INSERT INTO stripe_customer_map (customer_id, stripe_customer_id, plan, billing_anchor_day, "
                        "synced_at) VALUES (?, ?, 'starter', ?, TIMESTAMPTZ '2026-09-01 09:00:00+00')",
                        [cid, stripe_ids[cid], anchor])
            starts = ["2026-09-01", "2026-09-10"] if cid == "cust_a" else ["2026-09-01"]
            for i, start in enumerate(starts):
                con.execute("INSERT INTO customer_plans (customer_id, currency, plan, plan_effective_from, "
                            "payment_behavior, source_line) VALUES (?, 'usd', 'starter', ?, 'succeeds', ?)",
                            [cid, start, i + 1])
        usage = [("cust_0", "api_calls", "2026-09-01"), ("cust_a", "api_calls", "2026-09-01"),
                 ("cust_c", "api_calls", "2026-09-01"), ("cust_c", "api_calls", "2026-09-30"),
                 ("cust_d", "api_calls", "2026-09-01"), ("cust_d", "tokens", "2026-09-30"),
                 ("cust_e", "api_calls", "2026-09-01")]
        for i, (cid, meter_name, day) in enumerate(usage):
            con.execute("INSERT INTO usage_events (event_id, customer_id, meter, event_time, event_date, value, "
                        "file_id, source_line) VALUES (?, ?, ?, CAST(? AS TIMESTAMPTZ), CAST(? AS DATE), 1, 1, ?)",
                        [f"e{i}", cid, meter_name, f"{day} 10:00:00+00", day, i + 1])
        assert plant_extra_usage(client, con, options) == ("cust_d", "api_calls")
        summaries = client.v1.billing.meters.event_summaries.list(meter.id, {
            "customer": stripe_ids["cust_d"], "start_time": OCT1 - 86400, "end_time": OCT1}).data
        assert [(s.start_time, s.aggregated_value) for s in summaries] == [(OCT1 - 86400, 250)]


def _one_customer(client, con) -> tuple[str, str]:
    """cust_b, mapped by the latest sync to a Stripe customer on the demo's clock (Oct 1), with
    api_calls usage on Sep 1 only: the extra event goes to Sep 30. Returns (meter id, Stripe customer)."""
    meter = client.v1.billing.meters.create({"display_name": "api calls", "event_name": event_name("api_calls"),
                                             "default_aggregation": {"formula": "sum"}})
    clock = client.v1.test_helpers.test_clocks.create({"frozen_time": OCT1, "name": "metering demo 2026-09"})
    customer = client.v1.customers.create({"metadata": {"customer_id": "cust_b"}, "test_clock": clock.id}).id
    con.execute("INSERT INTO stripe_customer_map (customer_id, stripe_customer_id, plan, synced_at) "
                "VALUES ('cust_b', ?, 'starter', TIMESTAMPTZ '2026-09-01 09:00:00+00')", [customer])
    con.execute("INSERT INTO customer_plans (customer_id, currency, plan, plan_effective_from, payment_behavior, "
                "source_line) VALUES ('cust_b', 'usd', 'starter', DATE '2026-09-01', 'succeeds', 1)")
    con.execute("INSERT INTO usage_events (event_id, customer_id, meter, event_time, event_date, value, file_id, "
                "source_line) VALUES ('e1', 'cust_b', 'api_calls', TIMESTAMPTZ '2026-09-01 10:00:00+00', "
                "DATE '2026-09-01', 1, 1, 1)")
    return meter.id, customer


def _sep30(client, meter_id: str, customer: str) -> list[tuple[int, float]]:
    summaries = client.v1.billing.meters.event_summaries.list(meter_id, {
        "customer": customer, "start_time": OCT1 - 86400, "end_time": OCT1}).data
    return [(s.start_time, s.aggregated_value) for s in summaries]


def test_a_rerun_after_the_sandbox_restarts_finds_the_extra_event_planted(tmp_path):
    """The demo run again: the sandbox restarts from its state file, which keeps the event's identifier
    but not the idempotency key, so Stripe answers 'An event already exists with identifier ...': the
    plant is there already, which is not an error. Sep 30 still holds the one 250."""
    options = _options(tmp_path)
    state = str(tmp_path / "state.json")
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        with running_sandbox(state_file=state) as sb:
            meter_id, customer = _one_customer(sb.client(), con)
            assert plant_extra_usage(sb.client(), con, options) == ("cust_b", "api_calls")
        with running_sandbox(state_file=state) as sb:
            assert plant_extra_usage(sb.client(), con, options) == ("cust_b", "api_calls")
            assert _sep30(sb.client(), meter_id, customer) == [(OCT1 - 86400, 250)]


def test_a_rerun_a_day_later_does_not_plant_the_extra_event_twice(tmp_path):
    """DEFECT (audit 31): Stripe keeps a meter event's identifier unique for 24 hours (and the sandbox
    too, by its clock), and the idempotency key as long. `metering demo` run again a day later sent
    the planted event again and Stripe counted it: Sep 30 held 500, not 250, and the re-run's
    reconciliation differs from the first run's ("running it again is safe")."""
    options = _options(tmp_path)
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con, running_sandbox() as sb:
        client = sb.client()
        meter_id, customer = _one_customer(client, con)
        assert plant_extra_usage(client, con, options) == ("cust_b", "api_calls")
        sb.set_now(sb.now() + 25 * 3600)
        assert plant_extra_usage(client, con, options) == ("cust_b", "api_calls")
        assert _sep30(client, meter_id, customer) == [(OCT1 - 86400, 250)]


def test_late_usage_with_no_customer_to_give_it_to_is_skipped_not_a_traceback(tmp_path):
    """DEFECT (audit 31): `metering demo --customers 1 --seed 0` (a valid command: its one customer is
    on the drifted plan `scale`) crashed a minute in, after rating, with `ValueError: min() arg is an
    empty sequence` from the late-usage plant. Every customer here is excluded (scale; anchor 28;
    a plan change): no late file is written and nothing is to ingest."""
    options = _options(tmp_path)
    options.raw.mkdir(parents=True)
    _customers(options.customers_file, [
        {"customer_id": "cust_1", "plan": "scale"},
        {"customer_id": "cust_2", "plan": "pro", "billing_anchor_day": "28"},
        {"customer_id": "cust_3", "plan": "pro"},
        {"customer_id": "cust_3", "plan": "starter", "plan_effective_from": "2026-09-12"},
    ])
    assert plant_after_close(options) == []
    assert not (options.raw / LATE_FILE).exists()
