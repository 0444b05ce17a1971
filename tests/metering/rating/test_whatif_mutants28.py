"""Mutation audit 28 (offline what-if, `metering rate`): cases no earlier test pinned down.

File names holding glob characters (CSV and Parquet), the line a Parquet row is named by, blanks
around a quantity or a date, a quantity ending in its decimal point, how many rows a refusal counts
and whose value it shows, which rows a two-version refusal lists (only the period refused) and the
date it says a version is in force on (its first row's), an output folder that does not exist yet
(`write_output` on its own), and a defect: a column named `_file_line` taken as line numbers.
Each test names the mutant it kills (ids of the audit's report: W01..W40).

Prices (rating_rules/plans/pro.yaml): pro 2026-01 (from 2026-01-01) seats 10.00 each, platform fee
49.00, $100 minimum on usage (the fee does not count); pro 2026-10 (from 2026-10-15) seats 10.00, fee
59.00, the same minimum. One seat in a month: 10.00 + fee + (100 - 10) = 149.00 (2026-01), 159.00 (2026-10).
"""

from __future__ import annotations

import polars as pl

from metering.rating import whatif
from tests.metering.rating.test_rating_cli import RULES, _rate_csv, run

HEADER = "customer_id,meter,quantity,plan,period_start\n"


# --- file names are names, not patterns ----------------------------------------------------------------------

def test_what_if_reads_a_csv_whose_name_holds_brackets(tmp_path):
    """`usage[1].csv` is that file: read as a glob pattern it means `usage1.csv`, which does not exist.
    Three seats under pro 2026-01: 30.00 + 49.00 + (100 - 30 =) 70.00 = 149.00. Kills W03 (CSV read with
    glob=True: file not found)."""
    usage = tmp_path / "usage[1].csv"
    usage.write_text(HEADER + "c1,seats,3,pro,2026-10-01\n")
    out = tmp_path / "o.csv"
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"for 1 customers -> {out} (usd 149.00)" in result.output


def test_what_if_reads_a_parquet_file_whose_name_holds_brackets(tmp_path):
    """As above for Parquet (`usage[1].parquet`): 149.00 for three seats under pro 2026-01. Kills
    W02 (Parquet read with glob=True)."""
    usage = tmp_path / "usage[1].parquet"
    pl.DataFrame({"customer_id": ["c1"], "meter": ["seats"], "quantity": ["3"], "plan": ["pro"],
                  "period_start": ["2026-10-01"]}).write_parquet(usage)
    out = tmp_path / "o.csv"
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert f"for 1 customers -> {out} (usd 149.00)" in result.output


def test_write_output_makes_the_folder_it_writes_into(tmp_path):
    """`write_output` called on its own (not through `metering rate`, whose `--out` check makes the
    folder first) writes into a folder that does not exist yet, CSV and Parquet alike. Kills W35 (no
    mkdir: the write fails)."""
    frame = pl.DataFrame({"customer_id": ["c1"], "amount": ["10.00"]})
    whatif.write_output(frame, tmp_path / "new" / "deeper" / "o.csv")
    whatif.write_output(frame, tmp_path / "other" / "o.parquet")
    assert pl.read_csv(tmp_path / "new" / "deeper" / "o.csv", infer_schema=False).rows() == [("c1", "10.00")]
    assert pl.read_parquet(tmp_path / "other" / "o.parquet").rows() == [("c1", "10.00")]


# --- blanks and the decimal point ------------------------------------------------------------------------------

def test_what_if_reads_a_quantity_and_a_date_padded_with_blanks(tmp_path):
    """` 3 ` seats dated ` 2026-10-20 ` (a spreadsheet's padding) are 3 seats in October under pro
    2026-10 (in force from Oct 15): 30.00 + 59.00 + (100 - 30 =) 70.00 = 159.00. Unstripped, the
    quantity failed its pattern and the date was no date. Kills W25 (quantity not stripped) and W27
    (period_start not stripped)."""
    usage, result = _rate_csv(tmp_path, HEADER + "c1,seats, 3 ,pro, 2026-10-20 \n")
    assert result.exit_code == 0, result.output
    assert "(usd 159.00)" in result.output
    rated = pl.read_csv(tmp_path / "o.csv", infer_schema=False).filter(pl.col("charge") == "seats")
    assert rated.select("plan_version", "quantity", "amount", "period_start").rows() == [
        ("2026-10", "3.000000000000", "30.00", "2026-10-01")]


def test_what_if_refuses_a_quantity_ending_in_its_decimal_point(tmp_path):
    """`5.` has a point and no fraction digit: the pattern wants 1 to 12 digits after a point. Kills
    W24 (`{0,12}` after the point: rated as 5)."""
    usage, result = _rate_csv(tmp_path, HEADER + "c1,seats,5.,pro,2026-10-01\n")
    assert result.exit_code == 3, result.output
    assert (f"error: {usage}:2: quantity: not a non-negative decimal with at most 26 digits before the point "
            "and 12 after (1 row(s); first value '5.')") in result.output


# --- what a refusal counts and shows -------------------------------------------------------------------------

def test_what_if_refusal_counts_every_bad_row_and_shows_the_first(tmp_path):
    """Lines 3 and 5 name unknown meters (`calls`, then `users`): the refusal names line 3, counts
    2 rows and shows the first one's value, 'calls'. Kills W10 (the last bad row's value shown,
    'users') and W11 (the count left at 1)."""
    usage, result = _rate_csv(tmp_path, HEADER + "c1,seats,1,pro,2026-10-01\nc1,calls,1,pro,2026-10-01\n"
                              "c1,seats,1,pro,2026-10-01\nc1,users,1,pro,2026-10-01\n")
    assert result.exit_code == 3, result.output
    assert f"error: {usage}:3: meter: unknown meter (2 row(s); first value 'calls')" in result.output


def test_what_if_names_a_parquet_rows_line_as_a_csv_would(tmp_path):
    """A Parquet file has no lines: its rows are named as the CSV of the same rows would be, the
    header on line 1, so the second row (unknown meter `calls`) is line 3. Kills W21 (row index from 1:
    line 2)."""
    usage = tmp_path / "usage.parquet"
    pl.DataFrame({"customer_id": ["c1", "c1"], "meter": ["seats", "calls"], "quantity": ["1", "1"],
                  "plan": ["pro", "pro"], "period_start": ["2026-10-01", "2026-10-01"]}).write_parquet(usage)
    result = run("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 3, result.output
    assert f"error: {usage}:3: meter: unknown meter (1 row(s); first value 'calls')" in result.output


def test_what_if_two_version_refusal_lists_only_the_refused_period_and_its_first_date(tmp_path):
    """c1 has a September seat (line 2, pro 2026-01, a period of its own and fine) and October seats
    dated Oct 3 and Oct 10 (lines 3-4, pro 2026-01) and Oct 20 (line 5, pro 2026-10). Only October is
    refused: its 2026-01 group is lines 3, 4 (not September's line 2), in force on Oct 3, the first of
    its rows (not Oct 10); line 5 is the first under a second version. Kills W14 (the customer's rows of
    every period listed: lines 2, 3, 4) and W39 (the group's last date: Oct 10)."""
    usage, result = _rate_csv(tmp_path, HEADER + "c1,seats,1,pro,2026-09-05\nc1,seats,1,pro,2026-10-03\n"
                              "c1,seats,1,pro,2026-10-10\nc1,seats,1,pro,2026-10-20\n")
    assert result.exit_code == 3, result.output
    assert (f"error: {usage}:5: period_start: customer c1's period 2026-10-01..2026-11-01 would be priced under "
            "2 plan versions at once: pro 2026-01 (in force on 2026-10-03: line(s) 3, 4); pro 2026-10 (in force on "
            "2026-10-20: line(s) 5); ") in result.output
    assert "(1 customer period(s))" in result.output


# --- a defect: a column named like the reader's own -----------------------------------------------------------

def test_what_if_refuses_an_input_column_it_reserves_for_line_numbers(tmp_path):
    """`read_usage_file` carries each CSV record's first line in `_file_line`; a file with a column of
    that name keeps its own values instead, and every refusal names them as lines: the unknown meter of
    line 3 is reported as `usage.csv:x:`. Like `_line`, the name should be refused in the header.
    The defect behind the surviving W04 (the mutant does not fix it either: the file's column is then
    overwritten silently), fixed in the twenty-eighth session; a Parquet file is refused the same way."""
    usage, result = _rate_csv(tmp_path, "customer_id,meter,quantity,plan,period_start,_file_line\n"
                              "c1,seats,1,pro,2026-10-01,7\nc1,calls,1,pro,2026-10-01,x\n")
    assert result.exit_code == 3, result.output
    assert f"error: {usage}: (header): column '_file_line' is reserved; rename it" in result.output
    parquet = tmp_path / "usage.parquet"
    pl.DataFrame({"customer_id": ["c1"], "meter": ["calls"], "quantity": ["1"], "plan": ["pro"],
                  "period_start": ["2026-10-01"], "_file_line": [7]}).write_parquet(parquet)
    result = run("rate", "--rules", str(RULES), "--usage", str(parquet), "--out", str(tmp_path / "p.csv"))
    assert result.exit_code == 3, result.output
    assert f"error: {parquet}: (header): column '_file_line' is reserved; rename it" in result.output
