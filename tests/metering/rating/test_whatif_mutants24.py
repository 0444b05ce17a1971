"""Mutation audit 24 (offline what-if, money arithmetic): cases no earlier test pinned down.

`metering rate` over a usage file: the quantity pattern, `--plan` overriding the file's plan, the
date bounds and the version in force on its first day, aggregation across rows (sum and count add,
max takes the largest), the lines a refusal lists, Parquet names in any case; and
`money.scaled_int` and `money.checked_mul` at the exact edge of DECIMAL(38); `currency.minor_digits`.

Prices (rating_rules/plans): pro 2026-01 (from 2026-01-01): seats 10.00 each, tokens large 0.000002,
storage volume (first 100 GB at 0.10), platform fee 49.00, $100 minimum on usage (the fee does not
count); pro 2026-10 (from 2026-10-15): platform fee 59.00, otherwise alike for seats. starter 2026-01:
api calls 0.0005 after 10,000 included, seats 8.00, platform fee 19.00, no minimum.
"""

from __future__ import annotations

from decimal import Decimal

import polars as pl
import pytest

from metering import currency
from metering.rating import money
from tests.metering.rating.test_rating_cli import RULES, _rate_csv, run

HEADER = "customer_id,meter,quantity,plan,period_start\n"


def _amounts(tmp_path) -> dict[str, str]:
    """charge -> amount of the rated lines `_rate_csv` wrote (one customer, one period)."""
    rated = pl.read_csv(tmp_path / "o.csv", infer_schema=False)
    return {r["charge"]: r["amount"] for r in rated.iter_rows(named=True)}


# --- the quantity pattern ------------------------------------------------------------------------------------

@pytest.mark.parametrize("quantity", ["-5", "1.0000000000001"])
def test_what_if_refuses_a_negative_quantity_or_one_with_thirteen_decimals(tmp_path, quantity):
    """The pattern is anchored at both ends and allows 12 decimals (DECIMAL(38, 12)): `-5` matched
    once the start anchor went, and 13 decimals would be cut to 12 (or fail the cast) silently."""
    usage, result = _rate_csv(tmp_path, HEADER + f"c1,seats,{quantity},pro,2026-10-01\n")
    assert result.exit_code == 3, result.output
    assert (f"error: {usage}:2: quantity: not a non-negative decimal with at most 26 digits before the point "
            f"and 12 after (1 row(s); first value '{quantity}')") in result.output


# --- plan and version choice, date bounds ----------------------------------------------------------------------

def test_what_if_plan_option_prices_rows_the_file_puts_on_another_plan(tmp_path):
    """The file says starter; `--plan pro` prices the seat under pro 2026-01 (Oct 1): 1 x 10.00, fee 49.00,
    minimum 100 - 10 = 90.00, 149.00. Under the file's starter it would be 8.00 + 19.00 = 27.00."""
    usage = tmp_path / "usage.csv"
    usage.write_text(HEADER + "c1,seats,1,starter,2026-10-01\n")
    out = tmp_path / "o.csv"
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out), "--plan", "pro")
    assert result.exit_code == 0, result.output
    assert f"for 1 customers -> {out} (usd 149.00)" in result.output
    assert set(pl.read_csv(out, infer_schema=False)["plan"]) == {"pro"}


def test_what_if_with_plan_and_at_needs_neither_a_plan_nor_a_period_start_column(tmp_path):
    """A file of customer_id, meter, quantity only: `--plan pro --at 2026-10-20` prices it under pro
    2026-10 in October 2026 (the month holding that date): 10.00 + 59.00 + 90.00 = 159.00."""
    usage = tmp_path / "usage.csv"
    usage.write_text("customer_id,meter,quantity\nc1,seats,1\n")
    out = tmp_path / "o.csv"
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out), "--plan", "pro",
                 "--at", "2026-10-20")
    assert result.exit_code == 0, result.output
    assert f"for 1 customers -> {out} (usd 159.00)" in result.output
    rated = pl.read_csv(out, infer_schema=False)
    assert set(rated.select("plan", "plan_version", "period_start", "period_end").rows()) == {
        ("pro", "2026-10", "2026-10-01", "2026-11-01")}


def test_what_if_prices_a_row_dated_on_a_versions_first_day_under_that_version(tmp_path):
    """pro 2026-10 is in force from 2026-10-15 inclusive: a seat dated that day pays its 59.00 fee
    (10.00 + 59.00 + 90.00 minimum = 159.00); the day before's version (2026-01) would charge 49.00."""
    usage, result = _rate_csv(tmp_path, HEADER + "c1,seats,1,pro,2026-10-15\n")
    assert result.exit_code == 0, result.output
    assert "(usd 159.00)" in result.output
    rated = pl.read_csv(tmp_path / "o.csv", infer_schema=False)
    assert set(rated["plan_version"]) == {"2026-10"}
    assert _amounts(tmp_path)["platform fee"] == "59.00"


def test_what_if_accepts_the_last_date_and_tells_a_first_date_without_a_version_apart(tmp_path):
    """The bounds are inclusive. 9998-12-31 (LAST_DATE) is rated in its month 9998-12-01..9999-01-01
    under pro 2026-10 (10.00 + 59.00 + 90.00 = 159.00). 2000-01-01 (FIRST_DATE) is inside the bounds
    but before pro's first version: refused as such, not as out of range (nor a traceback)."""
    usage, result = _rate_csv(tmp_path, HEADER + "c1,seats,1,pro,9998-12-31\n")
    assert result.exit_code == 0, result.output
    assert "(usd 159.00)" in result.output
    rated = pl.read_csv(tmp_path / "o.csv", infer_schema=False)
    assert set(rated.select("period_start", "period_end").rows()) == {("9998-12-01", "9999-01-01")}

    usage, result = _rate_csv(tmp_path, HEADER + "c1,seats,1,pro,2000-01-01\n")
    assert result.exit_code == 3, result.output
    assert f"error: {usage}: plan: plan pro has no version in force on 2000-01-01" in result.output
    assert "outside" not in result.output


# --- aggregation across rows ---------------------------------------------------------------------------------

def test_what_if_adds_rows_of_a_sum_meter_and_of_a_count_meter(tmp_path):
    """tokens (sum): 1,000,000 + 1,000,000 large tokens = 2,000,000 x 0.000002 = 4.00 under pro
    (one row alone: 2.00). api_calls (count) under starter (c2): 6,000 + 7,000 = 13,000 calls, 10,000
    included, 3,000 x 0.0005 = 1.50 (the larger row alone is within the included calls: 0.00)."""
    _, result = _rate_csv(tmp_path, "customer_id,meter,quantity,plan,period_start,model\n"
                          "c1,tokens,1000000,pro,2026-10-01,large\nc1,tokens,1000000,pro,2026-10-01,large\n"
                          "c2,api_calls,6000,starter,2026-10-01,\nc2,api_calls,7000,starter,2026-10-01,\n")
    assert result.exit_code == 0, result.output
    rated = pl.read_csv(tmp_path / "o.csv", infer_schema=False)
    got = {(r["customer_id"], r["charge"]): (r["quantity"], r["amount"]) for r in rated.iter_rows(named=True)}
    assert got[("c1", "tokens large")] == ("2000000.000000000000", "4.00")
    assert got[("c2", "api calls")] == ("13000.000000000000", "1.50")


def test_what_if_takes_the_largest_row_of_a_max_meter(tmp_path):
    """storage_gb (max): rows of 30 and 70 GB in one month are a peak of 70 GB, 70 x 0.10 = 7.00
    (the smaller, 3.00; their sum, 10.00)."""
    _, result = _rate_csv(tmp_path, HEADER + "c1,storage_gb,30,pro,2026-10-01\nc1,storage_gb,70,pro,2026-10-01\n")
    assert result.exit_code == 0, result.output
    rated = pl.read_csv(tmp_path / "o.csv", infer_schema=False).filter(pl.col("charge") == "storage")
    assert rated.select("quantity", "amount").rows() == [("70.000000000000", "7.00")]


def test_what_if_tiers_audit_keeps_the_leading_zeros_of_a_fraction(tmp_path):
    """250,500 small tokens under pro 2026-01: 100,000 included, 150,500 billable, packages of 1000
    rounded up: 151 x 0.01 = 1.51; the minimum trues up 100 - 1.51 = 98.49. The audit JSON writes the
    package price 0.01 (10^10 units of 10^-12: its twelve fraction digits are `010000000000`); dropping
    the zero padding wrote 0.1."""
    _, result = _rate_csv(tmp_path, "customer_id,meter,quantity,plan,period_start,model\n"
                          "c1,tokens,250500,pro,2026-10-01,small\n")
    assert result.exit_code == 0, result.output
    rated = pl.read_csv(tmp_path / "o.csv", infer_schema=False)
    small = rated.filter(pl.col("charge") == "tokens small").row(0, named=True)
    assert (small["billable_quantity"], small["amount"]) == ("150500.000000000000", "1.51")
    assert small["tiers"] == ('[{"packages":"151","package_size":"1000","package_amount":"0.01","round":"up",'
                              '"amount":"1.51"}]')
    assert _amounts(tmp_path)["minimum spend"] == "98.49"


# --- what a refusal lists ------------------------------------------------------------------------------------

def test_what_if_refusal_lists_five_lines_per_version_then_an_ellipsis(tmp_path):
    """c1: five seats dated Oct 3 (lines 2-6, pro 2026-01) and six dated Oct 20 (lines 7-12, pro 2026-10):
    the first group is shown whole (exactly five lines, no ellipsis), the second as its first five and
    `...`; the line named is 7, the first under a second version. c2 and c3 straddle the change too
    (lines 13-16): three customer periods in all, while c1's period has two versions."""
    rows = ("c1,seats,1,pro,2026-10-03\n" * 5 + "c1,seats,1,pro,2026-10-20\n" * 6
            + "c2,seats,1,pro,2026-10-03\nc2,seats,1,pro,2026-10-20\nc3,seats,1,pro,2026-10-03\nc3,seats,1,pro,2026-10-20\n")
    usage, result = _rate_csv(tmp_path, HEADER + rows)
    assert result.exit_code == 3, result.output
    assert (f"error: {usage}:7: period_start: customer c1's period 2026-10-01..2026-11-01 would be priced under "
            "2 plan versions at once: pro 2026-01 (in force on 2026-10-03: line(s) 2, 3, 4, 5, 6); pro 2026-10 "
            "(in force on 2026-10-20: line(s) 7, 8, 9, 10, 11, ...); ") in result.output
    assert "(3 customer period(s))" in result.output


def test_what_if_too_large_names_five_lines_then_an_ellipsis(tmp_path):
    """Six lines of 3e16 API calls for c1's September: 1.8e17 calls, 1.8e14 USD at 0.001, past the
    10^14 a line holds. The message lists the first five lines and `...`."""
    usage, result = _rate_csv(tmp_path, HEADER + "c1,api_calls,30000000000000000,pro,2026-09-01\n" * 6)
    assert result.exit_code == 3, result.output
    assert f"error: {usage}:2: quantity:" in result.output
    assert "(the quantity of line(s) 2, 3, 4, 5, 6, ...)" in result.output


def test_what_if_reads_a_csv_with_a_byte_order_mark_before_a_quoted_header(tmp_path):
    """A spreadsheet export: a UTF-8 byte order mark, then a quoted first column whose name holds a
    comma. Read with the mark stripped, the header has 6 fields like the row; left in, the quote is not
    at the field's start, the header splits into 7 and the row was refused as short. One seat under pro
    2026-01: 10.00 + 49.00 + 90.00 = 149.00."""
    usage = tmp_path / "usage.csv"
    usage.write_bytes("\ufeff\"note, free text\",customer_id,meter,quantity,plan,period_start\n"
                      "x,c1,seats,1,pro,2026-10-01\n".encode("utf-8"))
    out = tmp_path / "o.csv"
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"for 1 customers -> {out} (usd 149.00)" in result.output


def test_what_if_names_the_file_line_after_a_record_spanning_two_lines(tmp_path):
    """Line 2's quoted region holds a line break, so its record runs over lines 2-3 and the unknown
    meter `calls` is on line 4. The record checks follow the lines (`reader.line_num`); the field checks
    counted records (row index + 2) and named line 3, until the audit (m24a) found it: each record's
    first line is now carried from the record check."""
    usage, result = _rate_csv(tmp_path, "customer_id,meter,quantity,plan,period_start,region\n"
                              "c1,api_calls,1,pro,2026-10-01,\"u\ns\"\nc1,calls,1,pro,2026-10-01,us\n")
    assert result.exit_code == 3, result.output
    assert f"error: {usage}:4: meter: unknown meter (1 row(s); first value 'calls')" in result.output


# --- Parquet names -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("usage_name", "out_name"), [("usage.pq", "rated.PARQUET"), ("usage.PARQUET", "rated.pq")])
def test_what_if_reads_and_writes_parquet_under_any_case_of_its_suffixes(tmp_path, usage_name, out_name):
    """`.parquet` and `.pq`, in any case, are Parquet both ways: 3 seats under pro 2026-01 are 30.00,
    fee 49.00, minimum 70.00, 149.00."""
    usage, out = tmp_path / usage_name, tmp_path / out_name
    pl.DataFrame({"customer_id": ["c1"], "meter": ["seats"], "quantity": ["3"], "plan": ["pro"],
                  "period_start": ["2026-10-01"]}).write_parquet(usage)
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "(usd 149.00)" in result.output
    rated = pl.read_parquet(out)
    assert rated.filter(pl.col("charge") == "seats")["amount_minor"].to_list() == [3000]


# --- money: scaling and checked_mul at the edge -----------------------------------------------------------------------------

def test_checked_mul_allows_a_product_up_to_the_limit_and_refuses_one_past_it():
    """LIMIT = 10^38 - 1. With b = 7, a = LIMIT // 7 gives a product <= LIMIT (allowed, exact); a + 1 gives
    one past LIMIT (refused). A zero factor never overflows, whatever the other."""
    a = money.LIMIT // 7
    frame = pl.DataFrame({"a": [a, 10**37], "b": [7, 0]}, schema={"a": pl.Int128, "b": pl.Int128})
    out = money.checked_mul(frame, "a", "b", "ab", "test amount")
    assert out["ab"].to_list() == [a * 7, 0]
    assert a * 7 <= money.LIMIT < (a + 1) * 7
    with pytest.raises(money.AmountTooLargeError, match="test amount: an amount exceeds 10"):
        money.checked_mul(pl.DataFrame({"a": [a + 1], "b": [7]}, schema={"a": pl.Int128, "b": pl.Int128}),
                          "a", "b", "ab", "test amount")


def test_scaled_int_scales_exactly_and_refuses_more_decimals_than_the_scale():
    """0.002 at scale 12 is 2 x 10^9 units of 10^-12; 13 decimals at scale 12 cannot be held and are
    refused rather than cut."""
    assert money.scaled_int(Decimal("0.002"), 12) == 2_000_000_000
    assert money.scaled_int(Decimal("0.000000000001"), 12) == 1
    with pytest.raises(ValueError, match="more than 12 decimal places"):
        money.scaled_int(Decimal("0.0000000000001"), 12)


@pytest.mark.parametrize(("code", "digits"), [
    ("jpy", 0), ("JPY", 0), ("Kwd", 3), ("kwd", 3), ("usd", 2), ("EUR", 2), ("xyz", 2), (None, 2), ("", 2)])
def test_minor_digits_reads_any_case_and_defaults_to_two(code, digits):
    """Stripe lists yen as zero-decimal and the Kuwaiti dinar as three-decimal; every other code, an
    unknown one or none has two places. The code is matched whatever its case."""
    assert currency.minor_digits(code) == digits
