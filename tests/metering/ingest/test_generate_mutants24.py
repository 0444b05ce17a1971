"""The sample-data generator's promises that a hand mutation audit (m24c) found untested: the exact number of
each injected defect, how many days late or apart its copies land, UTC and the range's last day, seed use,
Zipf-like activity, value shapes, and the plan changes in the customer list.

Most tests write JSON lines only (`formats=("jsonl",)`) and read the files back line by line, so a row's
arrival day is its file's name and every count can be worked out by hand from the configuration.
Expected numbers are derived in each docstring or comment from `GenerateConfig` and the module docstring
of `metering.ingest.generate` (a share of N events is round(N x share), at least one when the share > 0).
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from collections import Counter
from datetime import date, datetime, timezone
from pathlib import Path

import pytest

from metering import warehouse
from metering.customers import load_customers
from metering.ingest import ingest_files
from metering.ingest.generate import HOSTILE_IDS, GenerateConfig, generate
from tests.metering.ingest.conftest import NOW

ZERO = dict(duplicate_share=0.0, conflict_share=0.0, late_share=0.0, malformed_share=0.0, hostile_share=0.0)
CLEAN_ID = re.compile(r"^evt_\d+_\d{10}$")


def _instant(ts) -> datetime:
    """A generated timestamp (epoch milliseconds, or ISO 8601 with Z or an offset) as a UTC instant."""
    if isinstance(ts, int):
        return datetime.fromtimestamp(ts / 1000, tz=timezone.utc)
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(timezone.utc)


def _rows(files: list[Path]) -> list[dict]:
    """Every line of generated JSONL files, in file (= arrival day) order, with `_day` = the file's day and
    `_line` = the raw text. Only for configurations without malformed rows (every line is JSON)."""
    out = []
    for f in sorted(files):
        day = date.fromisoformat(f.name.removeprefix("usage-").removesuffix(".jsonl"))
        for line in f.read_text(encoding="utf-8").splitlines():
            out.append({**json.loads(line), "_day": day, "_line": line})
    return out


def _versions(rows: list[dict]) -> dict[str, list[dict]]:
    by_id: dict[str, list[dict]] = {}
    for r in rows:
        by_id.setdefault(r["event_id"], []).append(r)
    return by_id


# --------------------------------------------------------------------------- shares and counts


def test_each_share_injects_exactly_its_rounded_count(tmp_path):
    """3950 events: duplicates 0.0101 x 3950 = 39.895 -> 40; conflicts 0.005 x 3950 = 19.75 -> 20; hostile ids
    0.003 x 3950 = 11.85 -> 12 (truncating instead of rounding gives 39 / 19 / 11; taking a share from another
    field gives another number). The files hold 3950 + 40 + 20 = 4010 lines and 3950 distinct ids; a later
    line identical to an id's first line is an exact duplicate, a different one a conflicting version."""
    cfg = GenerateConfig(seed=3, customers=30, events=3950, end=date(2026, 10, 10), formats=("jsonl",),
                         duplicate_share=0.0101, conflict_share=0.005, late_share=0.0, malformed_share=0.0,
                         hostile_share=0.003)
    summary = generate(cfg, tmp_path / "raw")
    assert (summary.exact_duplicates, summary.conflicting_duplicates, summary.hostile_ids) == (40, 20, 12)
    rows = _rows(summary.files)
    assert len(rows) == summary.rows == 4010
    by_id = _versions(rows)
    assert len(by_id) == 3950
    exact = sum(1 for v in by_id.values() for r in v[1:] if r["_line"] == v[0]["_line"])
    conflicting = sum(1 for v in by_id.values() for r in v[1:] if r["_line"] != v[0]["_line"])
    assert (exact, conflicting) == (40, 20)
    assert sum(1 for i in by_id if not CLEAN_ID.match(i)) == 12


def test_a_zero_share_injects_nothing(tmp_path):
    """All shares 0: no duplicate, conflict, late event, malformed row or hostile id, not even one; the files
    hold exactly the 300 events, each id once, each on the day of its own UTC date."""
    cfg = GenerateConfig(seed=8, customers=10, events=300, end=date(2026, 10, 5), formats=("jsonl",), **ZERO)
    summary = generate(cfg, tmp_path / "raw")
    assert (summary.exact_duplicates, summary.conflicting_duplicates, summary.late_events, summary.hostile_ids,
            summary.malformed, summary.rows) == (0, 0, 0, 0, {}, 300)
    rows = _rows(summary.files)
    assert len(rows) == len(_versions(rows)) == 300
    assert all(CLEAN_ID.match(r["event_id"]) for r in rows)
    assert all(_instant(r["timestamp"]).date() == r["_day"] for r in rows)


def test_malformed_rows_per_reason_are_counted_as_written(tmp_path):
    """2000 events, malformed share 0.05 -> 100 bad rows, spread over 2 files (days) x 12 reasons a JSONL file
    can carry (13 generated reasons less bad_csv_row): 100 // 24 = 4 per reason per file, so 8 per reason in
    all, 96 bad rows, 2096 rows. Ingested, the quarantine holds exactly those 8 per reason."""
    cfg = GenerateConfig(seed=2, customers=10, events=2000, end=date(2026, 10, 2), formats=("jsonl",),
                         **{**ZERO, "malformed_share": 0.05})
    summary = generate(cfg, tmp_path / "raw")
    reasons = ["missing_field", "bad_type", "control_characters", "unknown_meter", "bad_timestamp",
               "future_timestamp", "non_finite_value", "value_too_large", "negative_value", "value_too_precise",
               "invalid_utf8", "bad_json"]
    assert summary.malformed == {r: 8 for r in reasons}
    assert summary.rows == 2096
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        ingest_files(con, summary.files, now=NOW)
        stored = dict(con.execute("SELECT reason, count(*) FROM usage_quarantine GROUP BY 1").fetchall())
    assert stored == {r: 8 for r in reasons}


# --------------------------------------------------------------------------- days: late, retries, conflicts


def test_late_events_arrive_one_to_four_days_after_their_date_and_never_after_the_range(tmp_path):
    """10 days, 3000 events, late share 0.05 of the events that have a later day to arrive on (those dated
    before 2026-10-10): round(0.05 x that number) rows sit in a file 1..4 days after their UTC date, the
    summary says so, and no file is named after the range's last day. Every other row sits in the file of its
    own UTC date."""
    cfg = GenerateConfig(seed=1, customers=20, events=3000, end=date(2026, 10, 10), formats=("jsonl",),
                         **{**ZERO, "late_share": 0.05})
    summary = generate(cfg, tmp_path / "raw")
    rows = _rows(summary.files)
    assert {r["_day"] for r in rows} == {date(2026, 10, d) for d in range(1, 11)}
    eligible = sum(1 for r in rows if _instant(r["timestamp"]).date() < date(2026, 10, 10))
    lags = [(r["_day"] - _instant(r["timestamp"]).date()).days for r in rows]
    late = [lag for lag in lags if lag]
    assert len(late) == summary.late_events == max(1, round(eligible * 0.05))
    assert set(late) == {1, 2, 3, 4}


def test_retries_and_conflicting_versions_land_within_their_windows(tmp_path):
    """An exact duplicate arrives the same or the next day as its original (lags {0, 1}); a conflicting
    version up to two days later ({0, 1, 2}); never before the original, never after the range. With 60 of
    each over 10 days every lag in the window shows up. The two draws pick (mostly) different events."""
    cfg = GenerateConfig(seed=6, customers=20, events=3000, end=date(2026, 10, 10), formats=("jsonl",),
                         **{**ZERO, "duplicate_share": 0.02, "conflict_share": 0.02, "late_share": 0.02})
    summary = generate(cfg, tmp_path / "raw")
    assert (summary.exact_duplicates, summary.conflicting_duplicates) == (60, 60)
    exact_lags, conflict_lags, retried, conflicted = [], [], set(), set()
    for event_id, versions in _versions(_rows(summary.files)).items():
        first = versions[0]
        for r in versions[1:]:
            exact = r["_line"] == first["_line"]
            (exact_lags if exact else conflict_lags).append((r["_day"] - first["_day"]).days)
            (retried if exact else conflicted).add(event_id)
    assert len(exact_lags) == len(conflict_lags) == 60
    # drawn independently (each defect hashes with its own salt): two draws of 60 out of 3000 share about
    # 60 x 60 / 3000 = 1.2 ids, not all 60
    assert len(retried & conflicted) < 10
    assert set(exact_lags) == {0, 1}
    assert set(conflict_lags) == {0, 1, 2}


def test_hostile_ids_use_every_name_and_stay_unique(tmp_path):
    """3000 events, hostile share 0.02 -> 60 renamed events: each id is one of the six hostile names, then
    " #" and the event's row number, so all 60 are distinct and all six names are used."""
    cfg = GenerateConfig(seed=7, customers=20, events=3000, end=date(2026, 10, 5), formats=("jsonl",),
                         **{**ZERO, "hostile_share": 0.02})
    summary = generate(cfg, tmp_path / "raw")
    hostile = [r["event_id"] for r in _rows(summary.files) if not CLEAN_ID.match(r["event_id"])]
    assert len(hostile) == len(set(hostile)) == summary.hostile_ids == 60
    names = {h.rsplit(" #", 1)[0] for h in hostile}
    assert names == set(HOSTILE_IDS)


# --------------------------------------------------------------------------- time, seed, activity, values


def test_events_cover_every_utc_day_of_the_range_whatever_the_local_zone(tmp_path):
    """Generated under TZ=Pacific/Kiritimati (UTC+14), the events still fall in [2026-10-01T00:00Z,
    2026-10-06T00:00Z), each in the file of its UTC date, and every day of the range, the last included,
    has events (500 events over 5 days: ~100 a day)."""
    cfg = GenerateConfig(seed=9, customers=10, events=500, end=date(2026, 10, 5), formats=("jsonl",), **ZERO)
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Pacific/Kiritimati"
    time.tzset()
    try:
        summary = generate(cfg, tmp_path / "raw")
    finally:
        if old is None:
            os.environ.pop("TZ")
        else:
            os.environ["TZ"] = old
        time.tzset()
    rows = _rows(summary.files)
    lo, hi = datetime(2026, 10, 1, tzinfo=timezone.utc), datetime(2026, 10, 6, tzinfo=timezone.utc)
    assert all(lo <= _instant(r["timestamp"]) < hi for r in rows)
    assert all(_instant(r["timestamp"]).date() == r["_day"] for r in rows)
    assert [f.name for f in summary.files] == [f"usage-2026-10-0{d}.jsonl" for d in range(1, 6)]


def test_another_seed_draws_other_customers_meters_and_times(tmp_path):
    """The seed feeds every random choice, not only the event ids: seeds 1 and 2 give different (customer,
    meter, timestamp, value) rows; seed 1 twice gives the same."""
    def sample(seed: int, name: str) -> list:
        cfg = GenerateConfig(seed=seed, customers=10, events=200, end=date(2026, 10, 3), formats=("jsonl",), **ZERO)
        rows = _rows(generate(cfg, tmp_path / name).files)
        return sorted((r["customer_id"], r["meter"], str(r["timestamp"]), str(r.get("value"))) for r in rows)
    assert sample(1, "a") == sample(1, "b")
    assert sample(1, "a") != sample(2, "c")


@pytest.fixture(scope="module")
def big_sample(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("big")
    cfg = GenerateConfig(seed=11, customers=20, events=100_000, end=date(2026, 10, 4), formats=("jsonl",), **ZERO)
    return _rows(generate(cfg, tmp / "raw").files)


def test_activity_is_zipf_like(big_sample):
    """Weights 1/rank^1.1 over 20 customers sum to about 3.14, so cust_00001 gets about 1/3.14 = 32% of the
    events and cust_00020 about 20^-1.1 / 3.14 = 1.2%: a ratio near 20^1.1 = 27 (uniform would be 5% each)."""
    counts = Counter(r["customer_id"] for r in big_sample)
    assert 0.28 < counts["cust_00001"] / len(big_sample) < 0.36
    assert counts["cust_00001"] > 15 * counts["cust_00020"] > 0


def test_values_have_their_meters_shapes(big_sample):
    """tokens: an integer 1..5000 (never 0); seats: 1..50; storage_gb: a decimal with three places;
    api_calls and active_users carry no value. 100 000 events hold ~30 000 tokens events, so both ends of
    1..5000 occur."""
    by_meter: dict[str, list] = {}
    for r in big_sample:
        by_meter.setdefault(r["meter"], []).append(r.get("value"))
    tokens = by_meter["tokens"]
    assert all(isinstance(v, int) for v in tokens) and (min(tokens), max(tokens)) == (1, 5000)
    seats = by_meter["seats"]
    assert (min(seats), max(seats)) == (1, 50)
    assert all(v is None for v in by_meter["api_calls"] + by_meter["active_users"])
    storage = [r["_line"] for r in big_sample if r["meter"] == "storage_gb"]
    assert all(re.search(r'"value":\d+\.\d{3},', line) for line in storage)


def test_every_customer_of_a_long_tail_can_have_usage(tmp_path):
    """With 100 000 customers most Zipf weights round to less than one ticket; each customer still holds at
    least one, so the tail (ranks above 20 000, about 80 000 of the ~190 000 tickets) gets a good share of
    3000 events."""
    cfg = GenerateConfig(seed=12, customers=100_000, events=3000, end=date(2026, 10, 2), formats=("jsonl",),
                         **ZERO)
    rows = _rows(generate(cfg, tmp_path / "raw").files)
    tail = sum(1 for r in rows if int(r["customer_id"].removeprefix("cust_")) > 20_000)
    assert tail > 500


# --------------------------------------------------------------------------- the customer list


def _customers(tmp_path: Path, customers: int, end: date) -> list[dict]:
    cfg = GenerateConfig(seed=13, customers=customers, events=50, end=end, formats=("jsonl",), **ZERO)
    path = generate(cfg, tmp_path / "raw", tmp_path / "customers.csv").customers_file
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_plan_changes_follow_the_ladder_near_mid_month(tmp_path):
    """Every customer's first row starts on 2026-10-01; a plan change (a second row, same customer, same
    currency usd) moves starter -> pro, pro -> scale or scale -> pro and starts within 5 days of the range's
    middle, 2026-10-01 + 30 // 2 = 2026-10-16: between 10-11 and 10-21. Ids run cust_00001..cust_03000."""
    rows = _customers(tmp_path, 3000, date(2026, 10, 31))
    first = {}
    for r in rows:
        first.setdefault(r["customer_id"], r)
    assert list(first) == [f"cust_{k:05d}" for k in range(1, 3001)]
    assert all(r["plan_effective_from"] == "2026-10-01" for r in first.values())
    changes = [r for r in rows if r is not first[r["customer_id"]]]
    assert len(changes) > 50  # ~3000 x 0.9 (usd) x 0.05 = 135
    ladder = {"starter": "pro", "pro": "scale", "scale": "pro"}
    for r in changes:
        before = first[r["customer_id"]]
        assert r["plan"] == ladder[before["plan"]] and r["currency"] == before["currency"] == "usd"
        assert date(2026, 10, 11) <= date.fromisoformat(r["plan_effective_from"]) <= date(2026, 10, 21)


def test_plan_changes_are_clamped_into_a_short_range(tmp_path):
    """Range 10-01..10-04: middle 10-01 + 3 // 2 = 10-02, so mid +- 5 days spans 09-27..10-07; clamped to the
    day after the start (10-02) and to the last day (10-04), both of which occur (~135 changes, a third of
    the draws fall below 10-02 and a quarter above 10-04)."""
    rows = _customers(tmp_path, 3000, date(2026, 10, 4))
    dates = Counter(r["plan_effective_from"] for r in rows)
    changes = {d for d in dates if d != "2026-10-01"}
    assert changes == {"2026-10-02", "2026-10-03", "2026-10-04"}
    assert dates["2026-10-01"] == 3000


def test_events_name_only_listed_customers(tmp_path):
    """The events' customer ids are ids of the customer list written beside them (same zero-padded form)."""
    cfg = GenerateConfig(seed=14, customers=40, events=2000, end=date(2026, 10, 3), formats=("jsonl",), **ZERO)
    summary = generate(cfg, tmp_path / "raw", tmp_path / "customers.csv")
    with open(summary.customers_file, newline="") as fh:
        listed = {r["customer_id"] for r in csv.DictReader(fh)}
    used = {r["customer_id"] for r in _rows(summary.files)}
    assert len(listed) == 40 and used <= listed and len(used) > 20


def test_a_one_day_range_writes_a_loadable_customer_list(tmp_path):
    """DEFECT (m24c): `--start` equal to `--end` is a legal range (the CLI only refuses an end before the start),
    but no day after the start exists for a mid-range plan change. The clamp min(max(mid +- 5, start + 1), end)
    then dates the change on the start day itself, so ~3.4% of customers (usd x 5%) get two assignments
    starting 2026-10-01, which `load_customers` rejects. Each customer must keep one assignment instead: the
    list of 300 loads, with 300 rows."""
    cfg = GenerateConfig(seed=42, customers=300, events=50, end=date(2026, 10, 1), formats=("jsonl",), **ZERO)
    path = generate(cfg, tmp_path / "raw", tmp_path / "customers.csv").customers_file
    assert load_customers(path).height == 300


def test_a_conflicting_version_always_differs_from_its_original(tmp_path):
    """DEFECT (m24c): a conflicting version is rewritten as a tokens event of value i % 997 + 7 with model
    "large", keeping the original's id, customer and timestamp. When the original already is exactly that (a
    tokens event, model large, value i % 997 + 7, odds ~ 0.3 x 1/3 x 1/5000 per conflict) the "conflict" is a
    byte-identical retry: ingestion drops it as an exact duplicate and the summary's counts are wrong. Seed 23,
    2000 events, every event given a conflicting version (share 1.0): event 760 is a tokens/large event of
    value 767 = 760 % 997 + 7. Expected: 2000 conflicting duplicates quarantined, 0 dropped, as the summary
    says."""
    cfg = GenerateConfig(seed=23, customers=5, events=2000, end=date(2026, 10, 3), formats=("jsonl",),
                         **{**ZERO, "conflict_share": 1.0})
    summary = generate(cfg, tmp_path / "raw")
    assert (summary.exact_duplicates, summary.conflicting_duplicates) == (0, 2000)
    with warehouse.open_warehouse(tmp_path / "w.duckdb") as con:
        results = ingest_files(con, summary.files, now=NOW)
    assert sum(r.duplicates_dropped for r in results) == 0
    assert sum(r.conflicting_duplicates for r in results) == 2000
    assert sum(r.rows_accepted for r in results) == 2000


def test_a_days_format_follows_its_date_even_when_days_are_empty(tmp_path):
    """Formats take turns day by day: the file of 2026-10-01 + d days is formats[d % 4], whether or not the
    days before it had events. 4 events over 10 days leave most days without a file."""
    formats = ("jsonl", "jsonl.gz", "csv", "parquet")
    cfg = GenerateConfig(seed=15, customers=3, events=4, end=date(2026, 10, 10), formats=formats, **ZERO)
    summary = generate(cfg, tmp_path / "raw")
    assert 1 < len(summary.files) < 10
    for f in summary.files:
        day, suffix = f.name.removeprefix("usage-").split(".", 1)
        assert suffix == formats[(date.fromisoformat(day) - date(2026, 10, 1)).days % 4], f.name
