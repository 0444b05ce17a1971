"""Mutation audit 31 (rating service, catalog frames, offline what-if): cases no earlier test pinned down.

Each test names the mutant it kills (ids of the audit's report: S.. for `service.py`, C.. for
`catalog.py`, W.. for `whatif.py`) or the defect it shows. The two defect tests (D1: a Parquet
Decimal(38, 18) quantity refused; D2: a CSV with bare-CR line ends priced as empty) failed on `a65de4b`
and pass since the thirty-first session's fix.

Prices (rating_rules/plans/*.yaml): starter 2026-01 (usd, from 2026-01-01): api calls 0.0005 each
after 10000 included, storage 0.25 per GB (peak), seats 8.00 each, platform fee 19.00; scale 2026-01
(usd): platform fee 499.00 and a 2000.00 minimum on usage (test_rating_service's helper adds a scale
version "2026-10x" whose only charge is a 449.00 platform fee).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from decimal import Decimal

import polars as pl
import pytest

from metering import warehouse
from metering.customers import load_customers
from metering.errors import BadInputError
from metering.rating import catalog, service, whatif
from metering.rules.plans import load_rules
from tests.metering.rating.conftest import PROJECT_ROOT
from tests.metering.rating.test_rating_service import OCT, _late_calls, _list_of_a, _scale_with_version

UTC = dt.timezone.utc
RULES = PROJECT_ROOT / "rating_rules"
CUSTOMERS = ("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
             "a,A,a@a.test,usd,,starter,2026-01-01,succeeds\nb,B,b@b.test,usd,31,scale,2026-01-01,fails\n")


def _warehouse(tmp_path, rules):
    """A warehouse with customers a (starter, calendar months) and b (scale, anchor 31: its October
    period is Oct 31 - Nov 30)."""
    csv = tmp_path / "customers.csv"
    csv.write_text(CUSTOMERS)
    db = tmp_path / "wh.duckdb"
    with warehouse.open_warehouse(db) as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
    return db


# --- write_rated: "today" is the UTC date of rated_at ----------------------------------------------------------

def test_a_rating_late_on_a_utc_day_may_still_price_that_day_under_a_new_version(tmp_path):
    """b's period Oct 31 - Nov 30 is first rated on Oct 20 under scale 2026-01 (fee 499.00). A version
    2026-10x from Oct 31 (fee 449.00) is then rated at 2026-11-01 01:30+03:00, which is Oct 31 22:30 UTC:
    the UTC day is Oct 31, so no day of b's period is past yet and the new version may price it (b's fee
    becomes 44900 minor units). Taking the local date (Nov 1) made Oct 31 a past, rated day and
    refused the rating. Kills S13 (today = rated_at.date())."""
    rules = load_rules(RULES)
    db = _warehouse(tmp_path, rules)
    with warehouse.open_warehouse(db) as con:
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, dt.datetime(2026, 10, 20, tzinfo=UTC))
        assert con.execute("SELECT plan_version, amount_minor FROM rated_usage WHERE customer_id = 'b' "
                           "AND charge = 'platform fee'").fetchall() == [("2026-01", 49900)]
        new = load_rules(_scale_with_version(tmp_path / "r", "2026-10-31"), rated_hashes=service.rated_hashes(con))
        late_evening = dt.datetime(2026, 11, 1, 1, 30, tzinfo=dt.timezone(dt.timedelta(hours=3)))
        assert service.write_rated(con, OCT, service.rate_month(con, new, OCT)[0], new, late_evening) > 0
        assert con.execute("SELECT plan_version, amount_minor FROM rated_usage WHERE customer_id = 'b' "
                           "AND charge = 'platform fee'").fetchall() == [("2026-10x", 44900)]


# --- what-if: an exact decimal column -----------------------------------------------------------------------------

def test_what_if_prices_an_exact_parquet_decimal_stored_with_more_than_twelve_places(tmp_path):
    """DEFECT. A Parquet quantity column of type Decimal(38, 18) (what DuckDB or Spark often write)
    holding 1.5 seats is exact: the column's scale pads it to '1.500000000000000000', and those
    trailing zeros are no digits of the value. The file is refused ("at most ... 12 after") although
    the refusal of floats tells the analyst to store quantities as decimal columns. Priced, 1.5 seats
    under starter are 1.5 x 8.00 = 12.00 (and the fee 19.00)."""
    usage = tmp_path / "u.parquet"
    pl.DataFrame({"customer_id": ["c1"], "meter": ["seats"], "quantity": [Decimal("1.5")], "plan": ["starter"],
                  "period_start": ["2026-10-01"]},
                 schema={"customer_id": pl.String, "meter": pl.String, "quantity": pl.Decimal(38, 18),
                         "plan": pl.String, "period_start": pl.String}).write_parquet(usage)
    rated = whatif.rate_usage(whatif.read_usage_file(usage), load_rules(RULES), source=str(usage)).rated
    lines = {r["charge"]: (r["quantity"], r["amount"]) for r in rated.iter_rows(named=True)}
    assert lines["seats"] == (Decimal("1.5"), Decimal("12.00"))
    assert lines["platform fee"][1] == Decimal("19.00")


def test_what_if_names_a_usage_file_that_does_not_exist(tmp_path):
    """A missing --usage file is refused with its path (the CLI's option does not check that it exists):
    'file not found' alone did not say which. Kills W01."""
    missing = tmp_path / "nowhere" / "usage.csv"
    with pytest.raises(BadInputError) as info:
        whatif.read_usage_file(missing)
    assert str(info.value) == f"{missing}: file not found"


# --- catalog: the version frame ----------------------------------------------------------------------------------

def test_versions_frame_gives_each_version_its_first_day_and_the_next_versions_first_as_its_end():
    """pro 2026-01 runs [2026-01-01, 2026-10-15): pro 2026-10 starts on Oct 15 and is open-ended, as is
    starter 2026-01 (from 2026-01-01). Kills C06 (version_to always null) and C12 (version_from a day late)."""
    frame = catalog.versions_frame(load_rules(RULES))
    rows = {(r["plan"], r["plan_version"]): (r["version_from"], r["version_to"]) for r in frame.iter_rows(named=True)}
    assert rows[("pro", "2026-01")] == (dt.date(2026, 1, 1), dt.date(2026, 10, 15))
    assert rows[("pro", "2026-10")] == (dt.date(2026, 10, 15), None)
    assert rows[("starter", "2026-01")] == (dt.date(2026, 1, 1), None)


# --- fingerprint: types are part of the content ------------------------------------------------------------------

def test_a_fingerprint_tells_frames_of_equal_text_and_other_types_apart():
    """1 as Int32 and 1 as Int64 print alike in CSV; the hash covers the column types too (its
    docstring), so the two differ, while an equal frame hashes equal. Kills S09 (schema not hashed)."""
    small = pl.DataFrame({"n": [1]}, schema={"n": pl.Int32})
    wide = pl.DataFrame({"n": [1]}, schema={"n": pl.Int64})
    assert service.fingerprint(small) == service.fingerprint(pl.DataFrame({"n": [1]}, schema={"n": pl.Int32}))
    assert service.fingerprint(small) != service.fingerprint(wide)


# --- preview_mismatches: only the month's previews ---------------------------------------------------------------

def test_the_next_months_previews_are_no_mismatch_of_this_month(tmp_path):
    """October and November rated and previewed: a's November period starts on Nov 1, the first day
    after October. October's check compares October's previews with October's lines only: none is a
    mismatch, in either month. Counting the preview starting on Nov 1 into October (period_start <= Nov 1)
    listed it against no lines. Kills S55."""
    rules = load_rules(RULES)
    db = _warehouse(tmp_path, rules)
    nov = dt.date(2026, 11, 1)
    at = dt.datetime(2026, 12, 2, tzinfo=UTC)
    with warehouse.open_warehouse(db) as con:
        for month in (OCT, nov):
            rated, previews = service.rate_month(con, rules, month)
            service.write_rated(con, month, rated, rules, at)
            service.write_previews(con, month, previews, at)
        assert con.execute("SELECT count(*) FROM invoice_previews WHERE period_start = DATE '2026-11-01'").fetchone() == (1,)
        assert service.preview_mismatches(con, OCT).height == 0
        assert service.preview_mismatches(con, nov).height == 0


# --- a closed period's refusal names what it was and what it would be ---------------------------------------------

def test_a_list_dropping_a_customer_with_a_closed_period_is_refused_with_no_lines_for_one_customer(tmp_path):
    """a's October (starter from Oct 1) is rated on Nov 2, after its end: closed. A list keeping only b
    would leave a's period with no lines: refused, saying what the 31 days were priced under (starter
    2026-01 from 2026-10-01, the first day of the run) and what they would be ("no lines"), for one
    customer (31 day rows of one customer). Kills S30 ("" for no lines), S31 (day rows counted as
    customers) and S73 (a run dated by its last day)."""
    rules = load_rules(RULES)
    db = _warehouse(tmp_path, rules)
    only_b = tmp_path / "only_b.csv"
    only_b.write_text(CUSTOMERS.replace("a,A,a@a.test,usd,,starter,2026-01-01,succeeds\n", ""))
    with warehouse.open_warehouse(db) as con:
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, dt.datetime(2026, 11, 2, tzinfo=UTC))
        before = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
        rated = service.rate_month(con, rules, OCT, load_customers(only_b, rules))[0]
        with pytest.raises(BadInputError) as info:
            service.write_rated(con, OCT, rated, rules, dt.datetime(2026, 11, 3, tzinfo=UTC))
        assert ("would re-price customer a's closed period 2026-10-01..2026-11-01 (already ended and rated): "
                "starter 2026-01 from 2026-10-01 -> no lines, for 1 customer(s). ") in str(info.value)
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before


# --- what-if: a CSV whose records Polars does not see -------------------------------------------------------------

CR_ONLY = b"customer_id,meter,quantity,note\rc1,seats,1,x\rc2,seats,2,y\r"
"""Two records ended by a bare CR (classic Mac line ends): Python's csv module reads a header and two
records; Polars reads one header line of ten columns (`note\\rc1`, `seats`, ...) and no row."""


def test_a_csv_with_bare_cr_line_ends_is_bad_input_not_a_traceback(tmp_path):
    """Without --plan and --at the file is refused as bad input (it lacks the plan column Polars can see),
    not with a Polars ShapeError from attaching two line numbers to no row. Kills W03 (line numbers
    attached whatever the row count)."""
    usage = tmp_path / "mac.csv"
    usage.write_bytes(CR_ONLY)
    with pytest.raises(BadInputError, match=re.escape(str(usage))):
        whatif.rate_usage(whatif.read_usage_file(usage), load_rules(RULES), source=str(usage))


def test_a_csv_with_bare_cr_line_ends_is_not_priced_as_an_empty_file(tmp_path):
    """DEFECT (a lost row). With --plan pro --at 2026-10-01 nothing else is asked of the header, so the
    file above rates 0 lines with no unmatched row and no error (`metering rate` says "rated 0 lines for 0
    customers"): c1's seat and c2's two seats vanish. The reader sees two records where Polars read no
    row; it should refuse the file (name it and say it cannot be read) rather than price nothing."""
    usage = tmp_path / "mac.csv"
    usage.write_bytes(CR_ONLY)
    with pytest.raises(BadInputError, match=re.escape(str(usage))):
        whatif.rate_usage(whatif.read_usage_file(usage), load_rules(RULES), plan="pro", at=dt.date(2026, 10, 1),
                          source=str(usage))


# --- rerate_range reports and previews the lines it stores, kept ones included ------------------------------------

def test_a_rerate_summarises_and_previews_the_kept_lines_of_a_closed_period(tmp_path):
    """An older rating cut a's October at Oct 16 (a list repeating starter there): 2 segments x starter's
    6 charges = 12 lines, rated on Nov 2, after the period's end (closed); the older pricing left one
    of its fee parts a cent higher (simulated), so a's total is 19.01. b's period (Oct 31 - Nov 30,
    scale) has 8 lines, 499.00 + the 2000.00 minimum = 2499.00. `metering rerate` over Oct 15 re-rates
    September and October with the stored list (one starter row): a's usage is unchanged, so its 12
    stored lines are kept. October's summary counts the 20 lines stored (not the 14 just priced),
    totals 19.01 + 2499.00 = 2518.01 from the stored lines and is unchanged; its previews equal their
    lines. Kills S61 (lines counted from the new rating) and S62 (previews of the new rating)."""
    rules = load_rules(RULES)
    db = _warehouse(tmp_path, rules)
    closed_at = dt.datetime(2026, 11, 2, tzinfo=UTC)
    with warehouse.open_warehouse(db) as con:
        plans = service.read_customer_plans(con)
        a = plans.filter(pl.col("customer_id") == "a")
        older = (a.with_columns(plan_effective_to=dt.date(2026, 10, 16))
                 .vstack(a.with_columns(plan_effective_from=dt.date(2026, 10, 16)))
                 .vstack(plans.filter(pl.col("customer_id") != "a")))
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT, older)[0], rules, closed_at)
        con.execute("UPDATE rated_usage SET amount_minor = amount_minor + 1, amount = amount + 0.01 "
                    "WHERE customer_id = 'a' AND charge = 'platform fee' AND segment_start = DATE '2026-10-16'")
        assert con.execute("SELECT count(*), sum(amount_minor) FROM rated_usage WHERE customer_id = 'a'").fetchone() \
            == (12, 1901)
        summaries = service.rerate_range(con, rules, dt.date(2026, 10, 15), dt.date(2026, 10, 15),
                                         closed_at + dt.timedelta(hours=1))
        october = summaries[1]
        assert (october["month"], october["lines"], october["changed"], october["totals"]) == (
            OCT, 20, False, {"usd": 251801})
        assert con.execute("SELECT total_minor, lines FROM invoice_previews WHERE customer_id = 'a' "
                           "AND period_start = ?", [OCT]).fetchall() == [(1901, 12)]
        assert service.preview_mismatches(con, OCT).height == 0


def test_what_if_names_a_missing_meter_column(tmp_path):
    """A file without the meter column is refused on its header, naming the column (not a Polars
    ColumnNotFoundError when the rows' meters are read). Kills W27 (meter not among the columns checked)."""
    usage = tmp_path / "u.csv"
    usage.write_text("customer_id,quantity,plan,period_start\nc1,3,pro,2026-10-01\n")
    with pytest.raises(BadInputError) as info:
        whatif.rate_usage(whatif.read_usage_file(usage), load_rules(RULES), source=str(usage))
    assert str(info.value) == f"{usage}: (header): missing column 'meter'"


# --- guarded_rules records the meters of lines rated before migration 012 -----------------------------------------

def test_guarded_rules_records_the_meters_that_priced_lines_before_it_returns(tmp_path):
    """October rated (a on starter, b on scale: both price api_calls, tokens, storage_gb, seats and
    active_users); its meter records are deleted, as in a warehouse rated before migration 012. The
    guard every writing asset runs first records those five meters (before any aggregation could
    rebuild hours with an edited one), each once, with the time of the run that recorded it: a second
    run records none again. Kills S19 (guarded_rules no longer records them) and S18 (every rated
    meter recorded again, the recorded ones included)."""
    rules = load_rules(RULES)
    db = _warehouse(tmp_path, rules)
    with warehouse.open_warehouse(db) as con:
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, dt.datetime(2026, 10, 20, tzinfo=UTC))
        con.execute("DELETE FROM rated_meters")
        first = dt.datetime(2026, 10, 21, tzinfo=UTC)
        for day in (21, 22):   # the second run finds them recorded and adds none
            service.guarded_rules(con, RULES, dt.datetime(2026, 10, day, tzinfo=UTC))
        assert con.execute("SELECT meter, first_rated_at FROM rated_meters ORDER BY meter").fetchall() == [
            (meter, first) for meter in ("active_users", "api_calls", "seats", "storage_gb", "tokens")]


# --- rate_month_full: a subscription starts at its first assignment -------------------------------------------------

def test_usage_under_a_customers_first_plan_is_priced_not_listed_as_before_its_subscription(tmp_path):
    """a is on starter from 2026-01-01 and on pro from Oct 15; 10 calls on Oct 5 fall in starter's
    segment (Oct 1 - Oct 15): priced there, and nothing is unpriced. The subscription starts at the
    earliest assignment; dating it by the latest (Oct 15) listed the Oct 5 calls as `no_plan_in_force`
    too. Kills S07 (starts_on = max)."""
    rules = load_rules(RULES)
    csv = tmp_path / "customers.csv"
    _list_of_a(csv, ",starter,2026-01-01", ",pro,2026-10-15")
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        warehouse.insert_frame(con, "customer_plans", load_customers(csv, rules))
        _late_calls(con, rules, "a", "2026-10-05", 10)
        result = service.rate_month_full(con, rules, OCT)
        calls = result.rated.filter(pl.col("charge") == "api calls").select("plan", "segment_start", "quantity").rows()
        # pro 2026-10 (from Oct 15) prices calls per region ("api calls us" / "eu"): one "api calls" line
        assert calls == [("starter", OCT, Decimal(10))]
        assert result.unpriced.height == 0


def test_what_if_names_line_1_for_a_header_whose_quote_never_closes(tmp_path):
    """The header opens a quote it never closes: the csv reader fails at the end of the file, and the
    refusal names the line the broken record starts on, the header's line 1 (not 0, nor the last
    line). Kills W29 (the first record's line counted from 0)."""
    usage = tmp_path / "u.csv"
    usage.write_text('customer_id,"meter,quantity\nc1,seats,1\nc2,seats,2\n')
    with pytest.raises(BadInputError) as info:
        whatif.read_usage_file(usage)
    assert str(info.value).startswith(f"{usage}:1: (row): broken quoting: ")


def test_an_unknown_customers_usage_is_listed_in_its_own_month_not_in_a_period_running_into_it(tmp_path):
    """October's rating reads usage up to Nov 30 (b's period Oct 31 - Nov 30 runs into November), but
    lists as unpriced only October's: 3 calls of an unknown customer z on Nov 5 are November's
    (`unknown_customer`, 3 events), not October's too (listed in both, the check counted them twice).
    Kills S08 (the unpriced list bounded by the last period's end)."""
    rules = load_rules(RULES)
    db = _warehouse(tmp_path, rules)
    with warehouse.open_warehouse(db) as con:
        _late_calls(con, rules, "z", "2026-11-05", 3)
        assert service.rate_month_full(con, rules, OCT).unpriced.height == 0
        november = service.rate_month_full(con, rules, dt.date(2026, 11, 1)).unpriced
        assert november.select("customer_id", "reason", "events").rows() == [("z", "unknown_customer", 3)]


# --- the gap refusal counts customers, not gaps --------------------------------------------------------------------

def test_a_period_with_days_in_no_period_on_both_sides_is_one_customer(tmp_path):
    """Stored for a (seeded in one transaction, which defers the checks to its caller): September
    (calendar, Sep 1 - Oct 1) and November from an anchor-5 list (Nov 5 - Dec 5). October rated alone
    from a list starting a on Oct 5 (calendar anchor): its period Oct 5 - Nov 1 leaves Oct 1..4 before
    it and Nov 1..4 after it in no period: two gaps of one customer. The refusal names the first,
    counts 1 customer, and advises re-rating Sep 1 .. Dec 4 (the first gap's earlier period's start to
    the day before the later gap's period ends). Kills S37 (gaps counted as customers)."""
    rules = load_rules(RULES)
    csv = tmp_path / "customers.csv"
    sep, nov = dt.date(2026, 9, 1), dt.date(2026, 11, 1)
    at = dt.datetime(2026, 9, 15, tzinfo=UTC)
    with warehouse.open_warehouse(tmp_path / "wh.duckdb") as con:
        _list_of_a(csv, ",starter,2026-01-01")
        calendar = load_customers(csv, rules)
        _list_of_a(csv, "5,starter,2026-01-01")
        fifth = load_customers(csv, rules)
        with warehouse.transaction(con):
            service.write_rated(con, sep, service.rate_month(con, rules, sep, calendar)[0], rules, at, in_transaction=True)
            service.write_rated(con, nov, service.rate_month(con, rules, nov, fifth)[0], rules, at, in_transaction=True)
        _list_of_a(csv, ",starter,2026-10-05")
        late = load_customers(csv, rules)
        with pytest.raises(BadInputError) as info:
            service.write_rated(con, OCT, service.rate_month(con, rules, OCT, late)[0], rules, at)
        message = str(info.value)
        assert ("leaves customer a's days 2026-10-01..2026-10-04 in no billing period, between its periods "
                "2026-09-01..2026-10-01 and 2026-10-05..2026-11-01 (1 customer(s)); nothing was written") in message
        assert "`metering rerate --from 2026-09-01 --to 2026-12-04`" in message
        assert con.execute("SELECT count(*) FROM rated_usage WHERE period_start >= ? AND period_start < ?",
                           [OCT, nov]).fetchone() == (0,)


# --- an adjusted re-rating keeps the late-usage reason of periods it does not re-segment ---------------------------

def test_late_usage_in_a_closed_period_keeps_its_reason_and_file_under_an_adjusted_rerating(tmp_path):
    """a's October (starter) is closed (rated Nov 2). 12,000 calls on Oct 20 arrive in a file ingested
    an hour later: 10,000 are included, 2,000 x 0.0005 = 1.00 more. The re-rating runs with an operator's
    reason (--adjust-closed) but re-segments no period: the reason applies to periods whose plans by
    day change, so a's change stays `late_usage`, linked to that file (not `recomputed`, linked to none).
    Kills S70 (only re-segmented periods get a link)."""
    from metering.ingest import ingest_file

    rules = load_rules(RULES)
    db = _warehouse(tmp_path, rules)
    closed_at = dt.datetime(2026, 11, 2, tzinfo=UTC)
    late = tmp_path / "late.jsonl"
    late.write_text("".join(json.dumps({"event_id": f"late-{i}", "customer_id": "a", "meter": "api_calls",
                                        "timestamp": "2026-10-20T10:00:00Z", "properties": {"region": "us"}}) + "\n"
                            for i in range(12_000)))
    with warehouse.open_warehouse(db) as con:
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules, closed_at)
        result = ingest_file(con, late, now=closed_at + dt.timedelta(hours=1))
        service.refresh_aggregates(con, rules.meters, dt.date(2026, 10, 20))
        reason = service.Adjustment("credited in Stripe", {"ticket": "T-1"})
        service.write_rated(con, OCT, service.rate_month(con, rules, OCT)[0], rules,
                            closed_at + dt.timedelta(hours=2), reason)
        rows = con.execute("SELECT customer_id, charge, before_minor, after_minor, reason, CAST(link AS VARCHAR) "
                           "FROM rating_adjustments").fetchall()
    assert rows == [("a", "api calls", 0, 100, "late_usage", json.dumps(
        {"files": [{"file_id": result.file_id, "path": str(late), "sha256": result.file_hash}]}, separators=(",", ":")))]
