"""`metering rules validate`, `metering rate` (offline what-if) and `metering rerate`."""

from __future__ import annotations

import datetime as dt
import hashlib

import shutil
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner

from metering import warehouse
from metering.cli import cli
from tests.pipelines.manifest import record_manifest

PROJECT_ROOT = Path(__file__).resolve().parents[3]
RULES = PROJECT_ROOT / "rating_rules"


def run(*args: str):
    return CliRunner().invoke(cli, ["--log-level", "ERROR", *args], catch_exceptions=False)


def test_validate_shipped_rules():
    result = run("rules", "validate", str(RULES))
    assert result.exit_code == 0, result.output
    assert "ok: 5 meters, 4 plans, 5 versions" in result.output


def test_validate_lists_every_error_and_exits_3(tmp_path):
    root = tmp_path / "rules"
    shutil.copytree(RULES, root)
    pro = root / "plans" / "pro.yaml"
    pro.write_text(pro.read_text().replace('unit_amount: "0.000002"', "unit_amount: 0.000002")
                   .replace("meter: storage_gb", "meter: storage"))
    result = run("rules", "validate", str(root))
    assert result.exit_code == 3
    lines = [line for line in result.output.splitlines() if line.startswith(str(pro))]
    assert len(lines) == 3   # the float, and the unknown meter in both versions
    assert any("charges[1].unit_amount: 0.000002 is a YAML float" in line for line in lines)
    assert sum("meter: unknown meter 'storage'" in line for line in lines) == 2
    assert "error: 3 problem(s) in" in result.output


def test_validate_refuses_meter_names_and_properties_that_are_not_text(tmp_path):
    """`12345:` (a YAML number) and `property: 5` passed validation, then rating failed with a TypeError
    traceback (exit 1) (audit)."""
    root = tmp_path / "rules"
    shutil.copytree(RULES, root)
    meters = root / "meters.yaml"
    meters.write_text(meters.read_text().replace("property: user_id", "property: 5")
                      + "  12345: {aggregation: count}\n")
    result = run("rules", "validate", str(root))
    assert result.exit_code == 3
    assert f"{meters}:8: meters.active_users.property: 5: expected a property name (text)" in result.output
    assert f"{meters}:9: meters[12345]: 12345: a meter's name is text (quote it: \"12345\")" in result.output


@pytest.mark.parametrize("written", ["2026-02-30", "2026-13-01", "2026-01-01T25:00:00"])
def test_an_impossible_date_is_reported_on_its_line_by_every_command(tmp_path, written):
    root = tmp_path / "rules"
    shutil.copytree(RULES, root)
    pro = root / "plans" / "pro.yaml"
    text = pro.read_text()
    assert text.splitlines()[8].strip() == "effective_from: 2026-01-01"
    pro.write_text(text.replace("effective_from: 2026-01-01", f"effective_from: {written}", 1))
    says = f"{pro}:9: versions[0].effective_from: '{written}' is not a date (YYYY-MM-DD)"
    usage = tmp_path / "usage.csv"
    usage.write_text("customer_id,meter,quantity,plan,period_start\nc1,api_calls,10,pro,2026-10-01\n")
    db = tmp_path / "wh.duckdb"
    warehouse.connect(db).close()
    for args in (["rules", "validate", str(root)],
                 ["rate", "--rules", str(root), "--usage", str(usage), "--out", str(tmp_path / "o.csv")],
                 ["rerate", "--rules", str(root), "--from", "2026-10-01", "--to", "2026-10-01", "--warehouse", str(db)]):
        result = CliRunner().invoke(cli, ["--log-level", "ERROR", *args])
        assert result.exit_code == 3, (args, result.output)
        assert says in result.output, (args, result.output)


def test_validate_also_checks_the_dunning_policy(tmp_path):
    root = tmp_path / "rules"
    shutil.copytree(RULES, root)
    policy = root / "dunning.yaml"
    text = policy.read_text()
    first_day = text.index("day: ")
    policy.write_text(text[:first_day] + "day: -5" + text[text.index("\n", first_day):])
    result = run("rules", "validate", str(root))
    assert result.exit_code == 3
    assert f"{policy}: default.steps[0].day: required, a whole number of days from 0 to 3650" in result.output
    assert "error: 1 problem(s) in" in result.output


def test_validate_refuses_a_changed_rated_version(tmp_path):
    root = tmp_path / "rules"
    shutil.copytree(RULES, root)
    db = tmp_path / "wh.duckdb"
    with warehouse.open_warehouse(db) as con:
        con.execute("INSERT INTO rules_versions VALUES ('starter', '2026-01', 'not-the-current-hash', 'usd', "
                    "DATE '2026-01-01', '{}', now())")
    result = run("rules", "validate", str(root), "--warehouse", str(db))
    assert result.exit_code == 3
    assert "version 2026-01 of plan starter has already rated usage and its content changed" in result.output
    assert "add a new version with a later effective_from instead" in result.output


def test_validate_refuses_a_new_version_starting_inside_rated_time(tmp_path):
    """starter 2026-01 rated October 2026; a new version from Oct 15 would cut that rated time short.
    `rules validate --warehouse` said ok (its hash check cannot see the end a successor implies) and
    only the next rerate refused it (audit). Now validate names the line; from Nov 1 it is fine."""
    root = tmp_path / "rules"
    shutil.copytree(RULES, root)
    db, customers = _starter_calls_on_october_3(tmp_path, 3)
    rated = run("rerate", "--from", "2026-10-01", "--to", "2026-10-31", "--warehouse", str(db), "--rules", str(root),
                "--customers", str(customers))
    assert rated.exit_code == 0, rated.output
    starter = root / "plans" / "starter.yaml"
    text = starter.read_text()
    version = text[text.index('  - version: "2026-01"'):]
    starter.write_text(text + version.replace('"2026-01"', '"2026-10b"').replace("2026-01-01", "2026-10-15"))
    result = run("rules", "validate", str(root), "--warehouse", str(db))
    assert result.exit_code == 3, result.output
    line = 1 + len(text.splitlines()) + 1   # the new version's effective_from
    assert (f"{starter}:{line}: versions[1].effective_from: version 2026-10b starts 2026-10-15, inside the time version "
            f"2026-01 has already rated (through 2026-10-31): published versions are immutable, their dates "
            f"included; start it on 2026-11-01 or later") in result.output
    starter.write_text(text + version.replace('"2026-01"', '"2026-11"').replace("2026-01-01", "2026-11-01"))
    assert run("rules", "validate", str(root), "--warehouse", str(db)).exit_code == 0


USAGE = (
    "customer_id,meter,quantity,plan,period_start,region,model\n"
    "c1,api_calls,1500,pro,2026-10-20,us,\n"
    "c1,api_calls,400,pro,2026-10-20,eu,\n"
    "c1,tokens,1000000,pro,2026-10-20,,large\n"
    "c1,seats,5,pro,2026-10-20,,\n"
    "c2,api_calls,1201,pro_jpy,2026-10-20,eu,\n"
)


def test_rate_offline(tmp_path):
    usage = tmp_path / "usage.csv"
    usage.write_text(USAGE)
    out = tmp_path / "rated.csv"
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out))
    assert result.exit_code == 0, result.output
    rated = pl.read_csv(out, infer_schema=False)
    assert {"customer_id", "plan", "plan_version", "charge", "meter", "quantity", "billable_quantity", "amount",
            "currency", "tiers"} <= set(rated.columns)
    got = {(r["customer_id"], r["charge"]): Decimal(r["amount"]) for r in rated.iter_rows(named=True)}
    # pro 2026-10 (in force on 2026-10-20): whole period offline, no proration
    assert got[("c1", "api calls us")] == Decimal("1.00")      # 500 x 0.002
    assert got[("c1", "api calls eu")] == Decimal("1.00")      # 400 x 0.0025
    assert got[("c1", "tokens large")] == Decimal("1.80")      # 10^6 x 0.0000018
    assert got[("c1", "seats")] == Decimal("50.00")
    assert got[("c1", "platform fee")] == Decimal("59.00")
    assert got[("c1", "minimum spend")] == Decimal("46.20")    # 100 - 53.80
    assert got[("c2", "api calls")] == Decimal("60")           # 201 x 0.3 yen, half_up
    assert set(rated.filter(pl.col("customer_id") == "c1")["plan_version"]) == {"2026-10"}
    assert "rated 16 lines for 2 customers" in result.output
    assert "(jpy 22500, usd 159.00)" in result.output


def test_rate_what_if_other_plan_and_date(tmp_path):
    usage = tmp_path / "usage.csv"
    usage.write_text(USAGE.replace(",pro_jpy,", ",pro,"))
    out = tmp_path / "rated.parquet"
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out), "--plan", "pro", "--at", "2026-10-01")
    assert result.exit_code == 0, result.output
    rated = pl.read_parquet(out)
    assert set(rated["plan_version"]) == {"2026-01"}
    c1 = {r["charge"]: r["amount"] for r in rated.filter(pl.col("customer_id") == "c1").iter_rows(named=True)}
    # 2026-01 prices all regions together: 1900 calls -> 900 x 0.002 = 1.80
    assert c1["api calls"] == Decimal("1.80")
    assert c1["tokens large"] == Decimal("2.00")


def test_rate_bad_usage_names_the_line(tmp_path):
    usage = tmp_path / "usage.csv"
    usage.write_text("customer_id,meter,quantity,plan,period_start\nc1,api_calls,10,pro,2026-10-01\nc1,calls,1,pro,2026-10-01\n")
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 3
    assert f"{usage}:3: meter: unknown meter (1 row(s); first value 'calls')" in result.output
    usage.write_text("customer_id,meter,quantity,plan,period_start\nc1,api_calls,1.5e3,pro,2026-10-01\n")
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 3
    assert f"{usage}:2: quantity: not a non-negative decimal" in result.output
    usage.write_text("customer_id,meter,quantity,plan,period_start\n,api_calls,1,pro,2026-10-01\n")
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 3 and f"{usage}:2: customer_id: empty" in result.output   # was rated as ''
    usage.write_text("customer_id,meter,quantity,plan,period_start\nc1,api_calls,1,pro,9999-12-05\n")
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 3   # its month has no end date (year 10000): a traceback before
    assert f"{usage}:2: period_start: outside 2000-01-01 .. 9998-12-31" in result.output
    # year 0 Polars holds but Python cannot: the message itself was a traceback (audit)
    usage.write_text("customer_id,meter,quantity,plan,period_start\nc1,api_calls,1,pro,0000-01-01\n")
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 3, result.output
    assert f"{usage}:2: period_start: outside 2000-01-01 .. 9998-12-31 (1 row(s); first value '0000-01-01')" \
        in result.output
    # empty plan and meter cells are named like unknown ones (an empty plan was a KeyError traceback)
    for row, field in (("c1,api_calls,1,,2026-10-01", "plan"), ("c1,,1,pro,2026-10-01", "meter")):
        usage.write_text(f"customer_id,meter,quantity,plan,period_start\n{row}\n")
        result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(tmp_path / "o.csv"))
        assert result.exit_code == 3, result.output
        assert f"{usage}:2: {field}: unknown {field} (1 row(s); first value None)" in result.output


def test_rerate_refuses_usage_events_that_break_the_ingest_invariants(tmp_path):
    """As the usage_aggregates asset: a row written outside ingestion (a duplicate event_id) is never
    aggregated, so never rated (rerate aggregated 7 events for 6 distinct ids). Exit 4, aggregates as they were."""
    db = tmp_path / "wh.duckdb"
    with warehouse.open_warehouse(db) as con:
        con.execute("""INSERT INTO usage_events SELECT 'e' || i, 'c1', 'api_calls',
                       TIMESTAMPTZ '2026-10-05 00:00:00+00' + INTERVAL (i) SECOND, DATE '2026-10-05', NULL,
                       '{"region":"us"}', '{}', 1, i FROM range(6) t(i)""")
        record_manifest(con)
    args = ["rerate", "--from", "2026-10-05", "--to", "2026-10-05", "--warehouse", str(db), "--rules", str(RULES)]
    assert run(*args).exit_code == 4   # unpriced (no customers), but aggregated: 6 events
    with warehouse.open_warehouse(db) as con:
        before = con.execute("SELECT sum(event_count) FROM usage_aggregates").fetchone()
        con.execute("INSERT INTO usage_events SELECT * FROM usage_events LIMIT 1")
    refused = run(*args)
    assert refused.exit_code == 4 and "unique_event_id" in refused.output and "nothing is aggregated" in refused.output
    with warehouse.open_warehouse(db, read_only=True) as con:
        assert con.execute("SELECT sum(event_count) FROM usage_aggregates").fetchone() == before == (6,)
    # a customer list given with the refused run does not stay behind either: "nothing rated" held, but
    # the next scheduled run priced with the list (audit)
    customers = tmp_path / "customers.csv"
    customers.write_text("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
                         "c1,A,a@a.test,usd,,pro,2026-10-10,succeeds\n")
    refused = run(*args, "--customers", str(customers))
    assert refused.exit_code == 4 and "nothing is aggregated" in refused.output
    with warehouse.open_warehouse(db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM customer_plans").fetchone() == (0,)


def _starter_calls_on_october_3(tmp_path, calls: int):
    """A warehouse holding `calls` api calls of c1 on Oct 3, 2026, and a customer list with c1 on starter."""
    db = tmp_path / "wh.duckdb"
    customers = tmp_path / "customers.csv"
    customers.write_text("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
                         "c1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n")
    with warehouse.open_warehouse(db) as con:
        con.execute("""INSERT INTO usage_events SELECT 'e' || i, 'c1', 'api_calls',
                       TIMESTAMPTZ '2026-10-03 00:00:00+00' + INTERVAL (i) SECOND, DATE '2026-10-03', NULL,
                       '{"region":"us"}', '{}', 1, i FROM range(?) t(i)""", [calls])
        record_manifest(con)   # as ingestion would have: rerate refuses usage that breaks conservation
    return db, customers


def test_rerate_range_is_repeatable(tmp_path):
    db, customers = _starter_calls_on_october_3(tmp_path, 30000)
    args = ["rerate", "--from", "2026-10-01", "--to", "2026-10-31", "--warehouse", str(db), "--rules", str(RULES)]
    first = run(*args, "--customers", str(customers))
    assert first.exit_code == 0, first.output
    # starter: 20,000 billable calls x 0.0005 = 10.00 + platform fee 19.00
    assert "2026-10: 6 lines, changed (usd 29.00)" in first.output
    again = run(*args)
    assert "2026-10: 6 lines, unchanged (usd 29.00)" in again.output
    # a new customer list re-rates only the range given: the months it leaves are named
    customers.write_text(customers.read_text() + "c1,A,a@a.test,usd,,pro,2026-11-15,succeeds\n")
    narrow = run("rerate", "--from", "2026-11-01", "--to", "2026-11-02", "--warehouse", str(db), "--rules", str(RULES),
                 "--customers", str(customers))
    assert narrow.exit_code == 0, narrow.output
    assert ("warning: the customer list changed; 2026-09 stay rated with the previous one until re-rated"
            in narrow.output)
    # a list that moves a closed (ended, rated) period to another plan is refused: September and October
    # were rated as starter (October 29.00) (I19); the refusal, at the first such period, changes nothing
    with warehouse.open_warehouse(db, read_only=True) as con:
        before = con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall()
    customers.write_text(customers.read_text().replace("starter", "pro"))
    backdated = run(*args, "--customers", str(customers))
    assert backdated.exit_code == 3, backdated.output
    assert ("customers: the customer list (customer_plans) would re-price customer c1's closed period 2026-09-01..2026-10-01 "
            "(already ended and rated): starter 2026-01 from 2026-09-01 -> pro 2026-01 from 2026-09-01, "
            "for 1 customer(s)") in backdated.output
    assert "Traceback" not in backdated.output
    with warehouse.open_warehouse(db, read_only=True) as con:
        assert con.execute("SELECT * FROM rated_usage ORDER BY ALL").fetchall() == before
        # the refused list did not stay behind in customer_plans for the next run to trip on
        assert con.execute("SELECT DISTINCT plan FROM customer_plans ORDER BY 1").fetchall() == [("pro",), ("starter",)]
    # on purpose, with a reason: the closed periods are re-rated and every change is an adjustment
    reason = "signed up on pro; credited in Stripe"
    adjusted = run(*args, "--customers", str(customers), "--adjust-closed", reason)
    assert adjusted.exit_code == 0, adjusted.output
    with warehouse.open_warehouse(db, read_only=True) as con:
        rows = con.execute("SELECT period_start, charge, before_minor, after_minor, delta_minor, reason, "
                           "link->>'$.sha256' FROM rating_adjustments WHERE period_start = DATE '2026-10-01' "
                           "ORDER BY charge").fetchall()
    digest = hashlib.sha256(customers.read_bytes()).hexdigest()
    # October as starter: calls 10.00 (20,000 billable), fee 19.00; as pro: 30,000 calls, 1,000 free, then
    # 9,000 x 0.002 = 18.00, then 20,000 x 0.001 + 5.00 = 25.00 (43.00, before the Oct 15 version: all on Oct 3);
    # fees 49 x 14/31 = 22.13 and 59 x 17/31 = 32.35; 43.00 of usage leaves 57.00 to the $100 minimum
    assert rows == [
        (dt.date(2026, 10, 1), "api calls", 1000, 4300, 3300, reason, digest),
        (dt.date(2026, 10, 1), "minimum spend", 0, 5700, 5700, reason, digest),
        (dt.date(2026, 10, 1), "platform fee", 1900, 2213 + 3235, 2213 + 3235 - 1900, reason, digest),
    ]


def test_rate_refuses_float_quantities_in_parquet(tmp_path):
    usage = tmp_path / "usage.parquet"
    pl.DataFrame({"customer_id": ["c1"], "meter": ["seats"], "quantity": [1.5], "plan": ["pro"],
                  "period_start": ["2026-10-01"]}).write_parquet(usage)
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 3
    assert "quantity: a floating-point column is inexact" in result.output
    pl.DataFrame({"customer_id": ["c1"], "meter": ["seats"], "quantity": [3], "plan": ["pro"],
                  "period_start": ["2026-10-01"]}).write_parquet(usage)
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 0, result.output
    assert "usd 149.00" in result.output     # 3 seats x 10 = 30, minimum true-up 70, platform fee 49


def _rate_csv(tmp_path, text: str):
    """`metering rate` on a usage CSV holding `text`; (the file, the result)."""
    usage = tmp_path / "usage.csv"
    usage.write_text(text)
    return usage, run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(tmp_path / "o.csv"))


def test_rate_refuses_a_quantity_too_long_for_exact_rating(tmp_path):
    """27 digits before the point do not fit DECIMAL(38, 12): once a Polars panic (exit 1)."""
    usage, result = _rate_csv(tmp_path, "customer_id,meter,quantity,plan,period_start\n"
                              "c1,seats,3,pro,2026-10-01\nc1,api_calls,123456789012345678901234567,pro,2026-10-01\n")
    assert result.exit_code == 3
    assert f"{usage}:3: quantity: not a non-negative decimal with at most 26 digits before the point" in result.output


def test_rate_names_the_lines_whose_quantities_add_up_past_exact_rating(tmp_path):
    """Each of lines 3 and 5 is 9e16 API calls, 9e13 USD at 0.001 each; together 1.8e17 calls are
    1.8e14 USD, past the 10^14 a line holds. The message named neither the file nor a line, only
    internal scaled integers (`billable_q12`, `unit_p12`)."""
    usage, result = _rate_csv(tmp_path, "customer_id,meter,quantity,plan,period_start\n"
                              "c1,seats,3,pro,2026-09-01\n"
                              "c1,api_calls,90000000000000000,pro,2026-09-01\n"
                              "c2,api_calls,90000000000000000,pro,2026-09-01\n"
                              "c1,api_calls,90000000000000000,pro,2026-09-01\n")
    assert result.exit_code == 3
    assert (f"error: {usage}:3: quantity: tier amount: an amount exceeds 10^14 major units in one line (quantity "
            f"x price too large to rate exactly); customer c1, period 2026-09-01, charge 'api calls', quantity "
            f"180000000000000000.000000000000 (the quantity of line(s) 3, 5)") in result.output
    assert "_q12" not in result.output and not (tmp_path / "o.csv").exists()
    _, alone = _rate_csv(tmp_path, "customer_id,meter,quantity,plan,period_start\n"
                         "c2,api_calls,90000000000000000,pro,2026-09-01\n")
    assert alone.exit_code == 0, alone.output
    # by hand: api calls 9000 x 0.002 + (9e16 - 10000) x 0.001 + 5.00 flat = 18 + 89,999,999,999,990 + 5,
    # plus the 49.00 platform fee (the minimum is met): 90,000,000,000,062.00
    assert "(usd 90000000000062.00)" in alone.output


def test_rate_refuses_an_input_column_it_reserves(tmp_path):
    """`_line` carries each row's file line through the joins: an input column of that name was a
    Polars duplicate-column traceback (review)."""
    usage, result = _rate_csv(tmp_path, "customer_id,meter,quantity,plan,period_start,_line\nc1,seats,1,pro,2026-10-01,x\n")
    assert result.exit_code == 3
    assert f"error: {usage}: (header): column '_line' is reserved; rename it" in result.output


@pytest.mark.parametrize(("rows", "message"), [
    # a short record: Polars padded it with nulls, so this row lost its region and was priced as
    # another charge (or, without a period_start, refused on the wrong field)
    ("c1,api_calls,10,pro,2026-10-20,us\nc1,api_calls,10,pro,2026-10-20\n", ":3: (row): 5 field(s) where the header has 6"),
    # a long one: Polars' message named no line
    ("c1,api_calls,10,pro,2026-10-20,us,x\n", ":2: (row): 7 field(s) where the header has 6"),
    ("c1,\"api_calls,10,pro,2026-10-20,us\n", ":2: (row): broken quoting: unexpected end of data"),
    # the record's first line, not the end of the file it swallowed (review)
    ("c0,api_calls,1,pro,2026-10-20,us\nc1,\"api_calls,10,pro,2026-10-20,us\n" + "c2,api_calls,1,pro,2026-10-20,us\n" * 3,
     ":3: (row): broken quoting: unexpected end of data"),
])
def test_rate_names_the_line_of_a_ragged_record(tmp_path, rows: str, message: str):
    usage, result = _rate_csv(tmp_path, "customer_id,meter,quantity,plan,period_start,region\n" + rows)
    assert result.exit_code == 3
    assert f"error: {usage}{message}" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.csv").exists()


def test_rate_warns_about_rows_no_charge_prices(tmp_path):
    usage, result = _rate_csv(tmp_path, "customer_id,meter,quantity,plan,period_start,region\n"
                              "c1,api_calls,10,pro,2026-10-20,us\nc1,api_calls,10,pro,2026-10-20,\n")
    assert result.exit_code == 0
    assert (f"warning: 1 usage row(s) match no charge of their plan version and are not priced "
            f"(first: {usage}:3: api_calls {{\"region\":null}} under pro 2026-10)") in result.output


TWO_DATES = "customer_id,meter,quantity,plan,period_start\nc1,seats,1,pro,2026-10-03\nc1,seats,1,pro,2026-10-20\n"


def test_rate_refuses_a_period_under_two_versions(tmp_path):
    """Rows either side of pro's Oct 15 change made two whole-month segments of October: the fee
    (49 + 59) and the minimum's 90.00 true-up charged twice, usd 488.00 for one seat (I6)."""
    usage, result = _rate_csv(tmp_path, TWO_DATES)
    assert result.exit_code == 3, result.output
    assert (f"error: {usage}:3: period_start: customer c1's period 2026-10-01..2026-11-01 would be priced under "
            "2 plan versions at once: pro 2026-01 (in force on 2026-10-03: line(s) 2); pro 2026-10 (in force on "
            "2026-10-20: line(s) 3); a period is priced under one version (else its flat fee and minimum are "
            "charged once per version): pass --at DATE to price every row under the version in force that day, "
            "or date the rows alike (1 customer period(s))") in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.csv").exists()
    # two plans for one customer's period are refused the same way, on the plan field
    usage, result = _rate_csv(tmp_path, TWO_DATES.replace("pro,2026-10-20", "starter,2026-10-05"))
    assert result.exit_code == 3, result.output
    assert f"error: {usage}:3: plan: customer c1's period 2026-10-01..2026-11-01 would be priced under 2" in result.output
    assert "starter 2026-01 (in force on 2026-10-05: line(s) 3); " in result.output
    assert "give each plan its own customer id, or pass --plan" in result.output


@pytest.mark.parametrize(("at", "version", "fee", "total"), [
    # seats is a `last` meter: the two rows take the max, 1 seat x 10.00; the flat fee is whole offline;
    # the $100 minimum trues up 100 - 10 = 90 (the fee does not count toward it)
    ("2026-10-01", "2026-01", "49.00", "149.00"),
    ("2026-10-20", "2026-10", "59.00", "159.00"),
])
def test_rate_at_prices_the_period_under_one_version(tmp_path, at, version, fee, total):
    usage = tmp_path / "usage.csv"
    usage.write_text(TWO_DATES)
    out = tmp_path / "o.csv"
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out), "--at", at)
    assert result.exit_code == 0, result.output
    assert f"for 1 customers -> {out} (usd {total})" in result.output
    rated = pl.read_csv(out, infer_schema=False).filter(pl.col("amount") != "0.00")
    assert rated.select("plan_version", "charge", "period_start", "period_end", "amount").rows() == [
        (version, "seats", "2026-10-01", "2026-11-01", "10.00"),
        (version, "platform fee", "2026-10-01", "2026-11-01", fee),
        (version, "minimum spend", "2026-10-01", "2026-11-01", "90.00"),
    ]


def test_rate_at_picks_the_version_and_keeps_each_row_in_its_own_month(tmp_path):
    """`--at` names the version, not the period: October's and November's rows priced --at 2026-10-01
    are two periods, each with its own tiers, fee and minimum. By hand (pro 2026-01): 6000 calls,
    the first 1000 free, 5000 x 0.002 = 10.00; fee 49.00; minimum 100 - 10 = 90.00 true-up; 149.00
    a month, 298.00 for both. They were folded into October: 12000 calls, one fee, 149.00."""
    usage = tmp_path / "usage.csv"
    usage.write_text("customer_id,plan,meter,region,quantity,period_start\n"
                     "c1,pro,api_calls,us,6000,2026-10-01\nc1,pro,api_calls,us,6000,2026-11-01\n")
    out = tmp_path / "o.csv"
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out), "--at", "2026-10-01")
    assert result.exit_code == 0, result.output
    assert f"for 1 customers -> {out} (usd 298.00)" in result.output
    rated = pl.read_csv(out, infer_schema=False).filter(pl.col("amount") != "0.00")
    month = [("2026-01", "api calls", "10.00"), ("2026-01", "platform fee", "49.00"), ("2026-01", "minimum spend", "90.00")]
    assert sorted(rated.select("period_start", "period_end", "plan_version", "charge", "amount").rows()) == sorted(
        [("2026-10-01", "2026-11-01", *line) for line in month] + [("2026-11-01", "2026-12-01", *line) for line in month])


def test_rate_at_dates_a_row_left_undated_and_refuses_a_wrong_date(tmp_path):
    """With --at, a blank period_start is dated by it (as a file without the column is); a value that
    is no date is still refused with its line."""
    usage = tmp_path / "usage.csv"
    usage.write_text("customer_id,plan,meter,region,quantity,period_start\nc1,pro,api_calls,us,6000,\n")
    out = tmp_path / "o.csv"
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out), "--at", "2026-10-01")
    assert result.exit_code == 0, result.output
    assert f"for 1 customers -> {out} (usd 149.00)" in result.output
    usage.write_text("customer_id,plan,meter,region,quantity,period_start\nc1,pro,api_calls,us,6000,Oct 1\n")
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out), "--at", "2026-10-01")
    assert result.exit_code == 3 and "usage.csv:2: period_start: not a date (YYYY-MM-DD)" in result.output


def test_validate_refuses_a_gap_between_versions(tmp_path):
    root = tmp_path / "rules"
    shutil.copytree(RULES, root)
    pro = root / "plans" / "pro.yaml"
    text = pro.read_text()
    pro.write_text(text.replace("    effective_from: 2026-01-01\n", "    effective_from: 2026-01-01\n    effective_to: 2026-10-10\n"))
    result = run("rules", "validate", str(root))
    assert result.exit_code == 3
    assert (f"{pro}:10: versions[0].effective_to: version 2026-01 runs to 2026-10-10, leaving a gap before version "
            "2026-10 which starts 2026-10-15: 2026-10-10 .. 2026-10-14 (5 day(s)) would be in no version and go "
            "unbilled; end version 2026-01 on 2026-10-15 (or drop its effective_to)") in result.output
    assert "error: 1 problem(s) in" in result.output and "Traceback" not in result.output


def test_bench_rate_runs_small():
    result = run("bench", "rate", "--rows", "3000", "--repeat", "1", "--rules", str(RULES))
    assert result.exit_code == 0, result.output
    assert "rated 3,000 aggregated rows (20 customers" in result.output
    assert "peak RSS" in result.output
