"""The `metering` command line, as the 28th hand mutation audit of `metering/cli` and `metering/config.py`
found it under-tested (what the audits of rounds 24 and 25 left):

- `ingest`: its table's first..last event date, the summary line (files skipped as already ingested,
  events counted over ingested files, event dates touched counted once), `--as-of` of a date alone
  judging the future from midnight UTC;
- option bounds: `generate --customers` from 1, `bench ingest --events` from 1000;
- `rules validate` against a warehouse file that exists but holds no rated versions;
- `rerate`: no stale-month warning for a run without --customers, the --adjust-closed reason stored
  stripped, and the one-line summary of unpriced usage (three customers shown, `...` past three);
- `reconcile --invoice-grace-seconds 0` over its variable; `report` of a month whose reconciliation left
  invoice rows alone;
- `dunning run` with nothing due, `dunning summary --format csv|json`; `webhooks land --no-state`; `webhooks repair --no-refetch`
  (against the local Stripe sandbox); `webhooks serve --max-connections 1` serving one request;
- `stripe push` with no dates at all;
- the top-level help: commands in name order, each summary shortened to the terminal's width.

Every command runs for real (click's runner, or the console entry point in a process for the server),
on files under tmp_path with real DuckDB, and the Stripe sandbox over loopback where Stripe is needed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import duckdb
import polars as pl
import pytest
from click.testing import CliRunner

from metering import warehouse
from metering.cli import cli
from tests.pipelines.manifest import record_manifest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RULES = PROJECT_ROOT / "rating_rules"


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, ["--log-level", "ERROR", *args], env=env)


def _event(event_id: str, day: str) -> str:
    """One clean event `metering ingest` accepts (the shape test_cli_mutants24 uses)."""
    return (f'{{"event_id":"{event_id}","customer_id":"c1","meter":"api_calls","quantity":1,'
            f'"timestamp":"{day}T00:00:00Z"}}\n')


# --- ingest: the table and the summary line -------------------------------------------------------

def test_ingest_table_and_summary_count_what_was_ingested(tmp_path: Path) -> None:
    """a.jsonl: events of 2026-10-01 and 2026-10-03; b.jsonl: one of 2026-10-01.

    First run: a's row shows its first..last date `2026-10-01..2026-10-03 (2)`; 2 files ingested,
    0 skipped, 2 + 1 = 3 events accepted, and 2 event dates touched ({10-01, 10-03}: 10-01 counts once,
    though both files have it). Second run, the same two files: both skipped, so 0 ingested, 2
    skipped, 0 events accepted, 0 dates touched."""
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(_event("e1", "2026-10-01") + _event("e2", "2026-10-03"))
    b.write_text(_event("e3", "2026-10-01"))
    args = ["ingest", str(a), str(b), "--warehouse", str(tmp_path / "w.duckdb"), "--as-of", "2026-10-05"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    row_a = next(line for line in first.output.splitlines() if line.startswith("a.jsonl"))
    assert row_a.split()[1:] == ["ingested", "2", "2", "0", "0", "0", "2026-10-01..2026-10-03", "(2)"], row_a
    assert first.output.splitlines()[-1] == (
        "2 file(s) ingested, 0 skipped (already ingested); 3 events accepted, 0 quarantined, "
        "0 duplicates dropped; 2 event date(s) touched")
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert again.output.splitlines()[-1] == (
        "0 file(s) ingested, 2 skipped (already ingested); 0 events accepted, 0 quarantined, "
        "0 duplicates dropped; 0 event date(s) touched")


def test_as_of_a_date_alone_judges_the_future_from_midnight_utc(tmp_path: Path) -> None:
    """`--as-of 2026-10-01` is 2026-10-01T00:00Z, and events may run FUTURE_TOLERANCE (1 hour) ahead of
    it: one at 00:30Z is accepted, one at 01:30Z is in the future and quarantined. (Midnight in any
    zone west of UTC would put 00:30Z past the tolerance too; one east of it would take 01:30Z.)"""
    raw = tmp_path / "a.jsonl"
    raw.write_text(_event("e1", "2026-10-01").replace("T00:00:00Z", "T00:30:00Z")
                   + _event("e2", "2026-10-01").replace("T00:00:00Z", "T01:30:00Z"))
    result = invoke("ingest", str(raw), "--as-of", "2026-10-01", "--json", "--warehouse", str(tmp_path / "w.duckdb"))
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.splitlines()[0])
    assert (row["rows_read"], row["rows_accepted"], row["rows_quarantined"]) == (2, 1, 1)


def test_generate_needs_at_least_one_customer(tmp_path: Path) -> None:
    """`--customers 0` is below the option's range: a usage error naming it, before any file."""
    result = invoke("generate", "--customers", "0", "--events", "5", "--out", str(tmp_path / "raw"),
                    "--customers-file", str(tmp_path / "c.csv"))
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--customers': 0 is not in the range x>=1." in result.output
    assert not (tmp_path / "raw").exists() and not (tmp_path / "c.csv").exists()


def test_bench_ingest_needs_at_least_a_thousand_events(tmp_path: Path) -> None:
    """`bench ingest --events` starts at 1000: 999 is a usage error naming the option, before any work."""
    result = invoke("bench", "ingest", "--events", "999", "--workdir", str(tmp_path / "bench"))
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--events': 999 is not in the range x>=1000." in result.output
    assert not (tmp_path / "bench").exists()

# --- rules validate, rate, rerate's summary -------------------------------------------------------

def test_validate_against_a_warehouse_with_no_rated_versions_checks_immutability(tmp_path: Path) -> None:
    """A warehouse file that exists but has no rules_versions/rated_usage tables has rated nothing:
    immutability holds trivially and is checked, so there is no "(no warehouse: ...)" note. The
    shipped rules: 5 meters, 4 plans (pro, pro_jpy, scale, starter) of one version each but one with
    two = 5 versions (as test_rating_cli's shipped-rules test counts them)."""
    db = tmp_path / "w.duckdb"
    duckdb.connect(str(db)).close()
    result = invoke("rules", "validate", str(RULES), "--warehouse", str(db))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "ok: 5 meters, 4 plans, 5 versions"
    # and with no warehouse file at all, the note says immutability was not checked
    missing = invoke("rules", "validate", str(RULES), "--warehouse", str(tmp_path / "none.duckdb"))
    assert missing.output.splitlines()[-1] == ("ok: 5 meters, 4 plans, 5 versions (no warehouse: immutability of "
                                               "rated versions not checked)")


def test_unpriced_summary_shows_three_customers_and_dots_only_past_three() -> None:
    """Three customers are all shown, without `...`; a fourth is left out for `...`. Events add up per
    reason (1 + 2 + 3 = 6, then 6 + 4 = 10), and a reason with no wording of its own is said as is."""
    from metering.cli.rating_cmds import _unpriced_summary

    three = pl.DataFrame({"reason": ["unknown_customer"] * 3, "customer_id": ["c3", "c1", "c2"],
                          "events": [1, 2, 3]})
    assert _unpriced_summary(three) == ("6 event(s) of 3 customer(s) not in the customer list (unknown_customer) "
                                        "(c1, c2, c3)")
    four = pl.concat([three, pl.DataFrame({"reason": ["unknown_customer"], "customer_id": ["c4"], "events": [4]})])
    assert _unpriced_summary(four) == ("10 event(s) of 4 customer(s) not in the customer list (unknown_customer) "
                                       "(c1, c2, c3, ...)")
    other = pl.DataFrame({"reason": ["something_new"], "customer_id": ["c9"], "events": [7]})
    assert _unpriced_summary(other) == "7 event(s) of 1 customer(s) something_new (c9)"


def test_rerate_without_a_customer_list_warns_of_no_month_left_with_an_old_one(tmp_path: Path) -> None:
    """October is rated with a customer list; then September's dates are re-rated without one. The
    stored list did not change, so no month "stays rated with the previous one": no warning, though
    October is rated and was not re-rated this time (the warning is for a run given --customers)."""
    db = tmp_path / "w.duckdb"
    with warehouse.open_warehouse(db) as con:
        con.execute("""INSERT INTO usage_events SELECT 'e' || i, 'c' || (i % 2), 'api_calls',
                       TIMESTAMPTZ '2026-10-03 00:00:00+00' + INTERVAL (i) SECOND, DATE '2026-10-03', NULL,
                       '{"region":"us"}', '{}', 1, i FROM range(40) t(i)""")
        record_manifest(con)   # as ingestion would have: rerate refuses usage that breaks conservation
    customers = tmp_path / "customers.csv"
    customers.write_text("customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
                         "c0,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                         "c1,B,b@b.test,usd,,starter,2026-01-01,succeeds\n")
    args = ["rerate", "--warehouse", str(db), "--rules", str(RULES)]
    october = invoke(*args, "--from", "2026-10-01", "--to", "2026-10-05", "--customers", str(customers))
    assert october.exit_code == 0, october.output
    assert "2026-10: " in october.output and "warning" not in october.output
    september = invoke(*args, "--from", "2026-09-01", "--to", "2026-09-02")
    assert september.exit_code == 0, september.output
    assert "2026-09: " in september.output and "2026-10: " not in september.output
    assert "warning" not in september.output, september.output


def test_an_adjust_closed_reason_is_stored_without_its_surrounding_blanks(tmp_path: Path) -> None:
    """October's usage is rated with c0 and c1 on starter (their periods ended before today: closed);
    then c0 moves to pro from the same date, on purpose: `--adjust-closed "  moved to pro  "`. Every
    adjustment is c0's and carries the reason as written, less the blanks around it."""
    db = tmp_path / "w.duckdb"
    with warehouse.open_warehouse(db) as con:
        con.execute("""INSERT INTO usage_events SELECT 'e' || i, 'c' || (i % 2), 'api_calls',
                       TIMESTAMPTZ '2026-10-03 00:00:00+00' + INTERVAL (i) SECOND, DATE '2026-10-03', NULL,
                       '{"region":"us"}', '{}', 1, i FROM range(40) t(i)""")
        record_manifest(con)
    header = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"
    customers = tmp_path / "customers.csv"
    customers.write_text(header + "c0,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                                  "c1,B,b@b.test,usd,,starter,2026-01-01,succeeds\n")
    args = ["rerate", "--warehouse", str(db), "--rules", str(RULES), "--from", "2026-10-01", "--to", "2026-10-05",
            "--customers", str(customers)]
    assert invoke(*args).exit_code == 0
    customers.write_text(customers.read_text().replace("c0,A,a@a.test,usd,,starter", "c0,A,a@a.test,usd,,pro"))
    moved = invoke(*args, "--adjust-closed", "  moved to pro  ")
    assert moved.exit_code == 0, moved.output
    with warehouse.open_warehouse(db, read_only=True) as con:
        assert con.execute("SELECT DISTINCT customer_id, reason FROM rating_adjustments").fetchall() == [
            ("c0", "moved to pro")]

def test_an_invoice_grace_of_0_overrides_the_variable(tmp_path: Path, isolated_env: Path) -> None:
    """`--invoice-grace-seconds 0` (no grace at all) wins over $METERING_STRIPE_INVOICE_GRACE_SECONDS=11:
    0 is a value, not "not given". `reconciliation_runs` records the settings that judged the month."""
    warehouse.connect(isolated_env / "warehouse.duckdb").close()
    result = invoke("reconcile", "--period", "2026-10", "--no-pull", "--invoice-grace-seconds", "0",
                    env={"METERING_STRIPE_INVOICE_GRACE_SECONDS": "11"})
    assert result.exit_code == 0, result.output
    with warehouse.open_warehouse(isolated_env / "warehouse.duckdb", read_only=True) as con:
        stored = json.loads(con.execute("SELECT settings FROM reconciliation_runs").fetchone()[0])
    assert stored["invoice_grace_seconds"] == 0

def reconciled_warehouse(db: Path) -> None:
    """A warehouse whose reconciliation left one matched invoice row for 2026-10 (c1, 19.00 USD) and no
    usage rows."""
    with warehouse.open_warehouse(db) as con:
        con.execute("""INSERT INTO invoice_reconciliation (billing_month, customer_id, period_start, period_end,
                       currency, our_total_minor, stripe_total_minor, amount_diff_minor, tolerance_minor, status,
                       reason, reconciled_at)
                       VALUES (DATE '2026-10-01', 'c1', DATE '2026-10-01', DATE '2026-11-01', 'usd', 1900, 1900, 0,
                               1, 'matched', '', TIMESTAMPTZ '2026-11-02 00:00:00+00')""")


def test_a_month_with_invoice_rows_alone_is_reconciled_for_the_report(tmp_path: Path) -> None:
    """Reconciliation left an invoice row for 2026-10 and no usage rows (an invoice of a flat fee, no
    metered usage): the month was reconciled, so the report is written (exit 0), not refused as
    "nothing reconciled". Rated 0.00 (no usage rows), and 1 invoice."""
    db = tmp_path / "w.duckdb"
    reconciled_warehouse(db)
    result = invoke("report", "--period", "2026-10", "--warehouse", str(db), "--out", str(tmp_path / "report"))
    assert result.exit_code == 0, result.output
    assert f"report for 2026-10 in {tmp_path / 'report'}" in result.output
    assert (tmp_path / "report" / "invoices.csv").exists()

# --- dunning summary formats; webhooks land and serve ---------------------------------------------

def test_dunning_summary_csv_is_a_header_and_json_an_empty_list(tmp_path: Path) -> None:
    """A warehouse with no dunning_state: nothing in dunning, so CSV is the header alone, JSON `[]`."""
    db = tmp_path / "w.duckdb"
    duckdb.connect(str(db)).close()
    csv = invoke("dunning", "summary", "--warehouse", str(db), "--format", "csv")
    assert csv.exit_code == 0, csv.output
    assert csv.output == "currency,category,step_index,step_name,invoices,amount_minor,amount\n"
    as_json = invoke("dunning", "summary", "--warehouse", str(db), "--format", "json")
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.output) == []


def test_dunning_run_with_nothing_due_says_so(tmp_path: Path) -> None:
    """An empty warehouse, no Stripe key: no invoice in dunning, so no step is due; each of the three
    summary lines says so in words rather than leaving a blank."""
    db = tmp_path / "w.duckdb"
    warehouse.connect(db).close()
    result = invoke("dunning", "run", "--rules", str(RULES), "--warehouse", str(db), "--now", "2026-11-15T00:00:00Z",
                    "--outbox", str(tmp_path / "outbox"), "--published", str(tmp_path / "published"))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["dunning at 2026-11-15T00:00:00+00:00: nothing due", "invoices: none",
                                          "suspended customers: 0; reminders sent: 0"]


def test_land_no_state_lands_without_rebuilding_the_state(tmp_path: Path) -> None:
    """An empty landing folder: nothing to land; with --no-state the report has no `state` at all."""
    landing = tmp_path / "landing"
    landing.mkdir()
    args = ["webhooks", "land", "--landing", str(landing), "--warehouse", str(tmp_path / "w.duckdb")]
    bare = invoke(*args, "--no-state")
    assert bare.exit_code == 0, bare.output
    report = json.loads(bare.output.strip().splitlines()[-1])
    assert set(report) == {"landing"}
    full = json.loads(invoke(*args).output.strip().splitlines()[-1])
    assert set(full) == {"landing", "state"}


def test_serve_with_one_connection_allowed_answers_one_request(tmp_path: Path) -> None:
    """`--max-connections 1`: one request at a time is served (200), not refused with 503. uvicorn
    refuses once open connections, the asking one included, reach its limit, so the limit is N + 1."""
    proc = subprocess.Popen([sys.executable, "-m", "metering.cli", "--log-text", "webhooks", "serve", "--port", "0",
                             "--max-connections", "1", "--landing", str(tmp_path / "landing")],
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "STRIPE_WEBHOOK_SECRET": "whsec_abcdefgh"})
    try:
        line = proc.stderr.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[2].removesuffix(",").replace("/webhooks/stripe", "/healthz")
        status = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    status = response.status
                    break
            except urllib.error.HTTPError as exc:
                status = exc.code
                break
            except OSError:
                time.sleep(0.1)
        assert status == 200, status
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_repair_no_refetch_lists_events_but_reads_no_object(tmp_path: Path, stripe_sandbox,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The sandbox holds a customer and a draft invoice: 2 events (customer.created, invoice.created),
    both missing from a new warehouse, so both are repaired. The one object repair re-reads is the
    invoice (customers are not re-fetched); with --no-refetch it reads none."""
    client = stripe_sandbox.client()
    customer = client.v1.customers.create({"name": "Repair"})
    client.v1.invoices.create({"customer": customer.id, "currency": "usd"})
    monkeypatch.setenv("STRIPE_API_KEY", stripe_sandbox.api_key)
    reports = {}
    for name, extra in (("bare", ["--no-refetch"]), ("full", [])):
        result = invoke("webhooks", "repair", "--api-base", stripe_sandbox.base_url,
                        "--warehouse", str(tmp_path / f"{name}.duckdb"), *extra)
        assert result.exit_code == 0, result.output
        reports[name] = json.loads(result.output.strip().splitlines()[-1])["repair"]
    assert reports["bare"]["events_repaired"] == reports["full"]["events_repaired"] == 2
    assert reports["bare"]["objects_refetched"] == 0
    assert reports["full"]["objects_refetched"] == 1

def test_push_without_dates_says_which_options_give_them() -> None:
    """`stripe push` with neither --date nor --from: a usage error (exit 2) before any Stripe key or
    warehouse is needed, naming both ways of giving the dates."""
    result = invoke("stripe", "push")
    assert result.exit_code == 2, result.output
    assert "Error: give --date YYYY-MM-DD or --from YYYY-MM-DD [--to YYYY-MM-DD]" in result.output

# --- the top-level help ---------------------------------------------------------------------------

def test_top_level_help_lists_commands_in_name_order_shortened_to_the_width() -> None:
    """Commands are listed by name (COMMANDS keeps them in another order: generate, ingest, publish,
    bench, ...). The runner's terminal is 80 wide; the longest name, stripe-sandbox, is 14: click's
    definition list takes 2 of indent, the name column and 2 of gap, so a summary gets 80 - 6 - 14 = 60
    characters; `generate`'s (117 characters) is cut at the last word that fits before `...`."""
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    listed = [line.split()[0] for line in result.output.split("Commands:")[1].splitlines() if line.strip()]
    assert listed == ["bench", "demo", "dunning", "generate", "ingest", "publish", "rate", "reconcile", "report",
                      "rerate", "rules", "stripe", "stripe-sandbox", "webhooks"]
    assert "  generate        Write deterministic sample usage logs (with every defect...\n" in result.output

