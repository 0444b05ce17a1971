"""The `metering` command line, as the 30th hand mutation audit of `metering/cli/*.py` found it
under-tested (what the audits of rounds 24, 25 and 28 left), and five defects it found (fixed in the
thirtieth session; each of their tests failed on the code before):

- defects: `report` without `--out` blamed `--out` for its default folder (D1); `rules validate` on a
  held `--warehouse` said it was "trying the published snapshot", which it never reads (D2, tested in
  `test_cli_config_mutants25.py`); `dunning validate` said a rules path that is a file "does not exist" (D3); `rerate --customers` with the very
  same list warned "the customer list changed" and listed months to re-rate (D4); `webhooks serve
  --host ::1` announced `http://::1:PORT/...`, which is no URL (D5);
- `ingest`: `--as-of` with a UTC offset kept as that moment; a stop naming three later files in full and
  four with `...`; an error that is no file's fault told as it is; the table cutting a long name to 40
  and the summary counting exact duplicates (not conflicts);
- `generate`: the summary line, malformed rows summed over reasons and late rows as late;
- `rate`: the warning naming the first unpriced row; `rerate`: a month without lines, the months a
  changed customer list leaves stale; `rules validate` reading the snapshot while a job holds the
  default warehouse;
- `stripe sync`: a customer list needs no warehouse yet and its payment behaviour reaches the sandbox;
  a meter window variable it cannot use is refused before any call;
- `reconcile` of an empty month (`invoices: none`); `publish` naming the snapshot of the variable;
- `webhooks serve` passing --tolerance and --max-body-bytes to the receiver; `stripe-sandbox` taking
  retry delays with an empty item.

Every command runs for real (click's runner, or the console entry point in a process for the servers),
on files under tmp_path with real DuckDB, and the Stripe sandbox over loopback where Stripe is needed.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from metering import warehouse

from tests.test_cli_mutants28 import RULES, invoke, reconciled_warehouse


def _event(event_id: str, stamp: str, customer: str = "c1") -> str:
    """One clean event `metering ingest` accepts, at `stamp` (an ISO time in UTC)."""
    return (f'{{"event_id":"{event_id}","customer_id":"{customer}","meter":"api_calls","quantity":1,'
            f'"timestamp":"{stamp}"}}\n')



# --- report: the default folder is not `--out` (a defect) ------------------------------------------

def test_report_default_folder_that_cannot_be_created_is_blamed_on_the_default_not_on_out(tmp_path: Path) -> None:
    """No --out: the report goes to $METERING_DATA_DIR/reports/2026-10. With $METERING_DATA_DIR a file,
    that folder cannot be created: exit 3, naming the default under $METERING_DATA_DIR as `generate`,
    `dunning run` and every other command do; the message named `--out`, an option never given.
    (Fixed in the thirtieth session.)"""
    db = tmp_path / "w.duckdb"
    reconciled_warehouse(db)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder\n")
    result = invoke("report", "--period", "2026-10", "--warehouse", str(db), env={"METERING_DATA_DIR": str(blocked)})
    assert result.exit_code == 3, result.output
    assert (f"error: --out (default, under $METERING_DATA_DIR): cannot create the folder "
            f"{blocked / 'reports' / '2026-10'}") in result.output, result.output


def test_report_out_that_cannot_be_created_still_names_out(tmp_path: Path) -> None:
    """The same failure for a folder given as --out names --out (the fix must keep that)."""
    db = tmp_path / "w.duckdb"
    reconciled_warehouse(db)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder\n")
    result = invoke("report", "--period", "2026-10", "--warehouse", str(db), "--out", str(blocked / "r"))
    assert result.exit_code == 3, result.output
    assert f"error: --out: cannot create the folder {blocked / 'r'}" in result.output, result.output


# --- ingest --as-of keeps its offset ----------------------------------------------------------------

def test_as_of_with_an_offset_is_that_moment_not_the_same_clock_time_in_utc(tmp_path: Path) -> None:
    """`--as-of 2026-10-01T02:00:00+0200` is 2026-10-01T00:00Z. Events may run FUTURE_TOLERANCE (1 hour)
    ahead of it: 00:30Z is accepted, 01:30Z is in the future and quarantined. Taking 02:00 as UTC (the
    offset dropped) would accept both (horizon 03:00Z)."""
    raw = tmp_path / "a.jsonl"
    raw.write_text(_event("e1", "2026-10-01T00:30:00Z") + _event("e2", "2026-10-01T01:30:00Z"))
    result = invoke("ingest", str(raw), "--as-of", "2026-10-01T02:00:00+0200", "--json",
                    "--warehouse", str(tmp_path / "w.duckdb"))
    assert result.exit_code == 0, result.output
    row = json.loads(result.output.splitlines()[0])
    assert (row["rows_read"], row["rows_accepted"], row["rows_quarantined"]) == (2, 1, 1)


# --- rules validate while another process holds the warehouse -------------------------------------

@contextlib.contextmanager
def _held(db: Path, read_only: bool = False) -> Iterator[subprocess.Popen]:
    """Another process holds `db` while the block runs: for writing, as a running job does, or read-only,
    as an analyst does. Yields that process (its `pid` is the one DuckDB names)."""
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], "
                               f"read_only={read_only}); print('ready', flush=True); time.sleep(120)", str(db)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        yield holder
    finally:
        holder.kill()
        holder.wait(timeout=30)
        holder.stdout.close()


# --- generate: the summary line ----------------------------------------------------------------------

def test_generate_summary_counts_each_kind_of_row(tmp_path: Path) -> None:
    """400 clean events over 2026-10-01..02 (two daily jsonl files), shares chosen so each count differs:
    exact duplicates 2% of 400 = 8, conflicting 1% = 4, hostile ids 1% = 4, late 3% of the 200 events of
    the first day (only they can arrive a day late) = 6, malformed: each of the 12 reasons a jsonl file
    can carry, once per file = 24 rows (summed over reasons, not the 12 reasons counted). Rows written =
    400 + 8 + 4 + 24 = 436 (late and hostile rows are among the 400 events)."""
    out = tmp_path / "raw"
    result = invoke("generate", "--seed", "7", "--customers", "3", "--events", "400", "--start", "2026-10-01",
                    "--end", "2026-10-02", "--formats", "jsonl", "--out", str(out),
                    "--customers-file", str(tmp_path / "c.csv"), "--duplicate-share", "0.02",
                    "--conflict-share", "0.01", "--late-share", "0.03", "--malformed-share", "0.05",
                    "--hostile-share", "0.01")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"wrote 2 file(s) to {out}: 436 rows (400 events, 8 exact duplicates, 4 conflicting duplicates, 6 late, "
        f"24 malformed, 4 hostile ids)",
        f"wrote customer list {tmp_path / 'c.csv'}"]


# --- ingest: the files a stop leaves unread --------------------------------------------------------

def _bad_gzip(path: Path) -> None:
    """A cut-short gzip: `ingest` cannot read it (exit 3, naming it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(b'{"event_id": "a"}\n' * 1000)[:40])


def test_a_stop_names_three_later_files_in_full_and_four_with_dots(tmp_path: Path) -> None:
    """The first file (by path order) cannot be read. Three later files: all three are named, no `...`;
    four later files: the first three, then `...` (the count says 4)."""
    for n, later in ((3, "usage-2026-10-02.jsonl, usage-2026-10-03.jsonl, usage-2026-10-04.jsonl"),
                     (4, "usage-2026-10-02.jsonl, usage-2026-10-03.jsonl, usage-2026-10-04.jsonl, ...")):
        raw = tmp_path / f"raw{n}"
        _bad_gzip(raw / "usage-2026-10-01.jsonl.gz")
        for day in range(2, 2 + n):
            (raw / f"usage-2026-10-0{day}.jsonl").write_text(_event(f"e{day}", f"2026-10-0{day}T00:00:00Z"))
        result = invoke("ingest", str(raw), "--warehouse", str(tmp_path / f"w{n}.duckdb"))
        assert result.exit_code == 3, result.output
        assert result.output.strip().splitlines()[-1].endswith(
            f"; {n} later file(s) not read ({later}): run again once it is fixed or moved"), result.output


def test_an_error_that_is_no_files_fault_does_not_say_later_files_were_not_read(tmp_path: Path) -> None:
    """A rules folder without meters.yaml stops the run before any file is read: the error is the rules
    folder's, so it is told as it is, without "1 later file(s) not read" (which would blame the first file)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for day in (1, 2):
        (raw / f"usage-2026-10-0{day}.jsonl").write_text(_event(f"e{day}", f"2026-10-0{day}T00:00:00Z"))
    rules = tmp_path / "rules"
    rules.mkdir()
    result = invoke("ingest", str(raw), "--rules", str(rules), "--warehouse", str(tmp_path / "w.duckdb"))
    assert result.exit_code == 3, result.output
    assert result.output.strip().splitlines()[-1] == (
        f"error: {rules / 'meters.yaml'}: (document): file not found (every rules folder needs meters.yaml)")


# --- rate: the warning names the first row no charge prices ----------------------------------------

def test_rate_warning_names_the_first_unpriced_row_by_its_line(tmp_path: Path) -> None:
    """pro 2026-10 prices api_calls of region us and eu only. Line 2 (region ap) and line 4 (no region)
    match no charge, line 3 (us) is priced: 2 rows are not priced, and the first named is line 2."""
    usage = tmp_path / "usage.csv"
    usage.write_text("customer_id,meter,quantity,plan,period_start,region\n"
                     "c1,api_calls,10,pro,2026-10-20,ap\n"
                     "c1,api_calls,10,pro,2026-10-20,us\n"
                     "c1,api_calls,10,pro,2026-10-20,\n")
    result = invoke("rate", "--rules", str(RULES), "--usage", str(usage), "--out", str(tmp_path / "o.csv"))
    assert result.exit_code == 0, result.output
    assert (f"warning: 2 usage row(s) match no charge of their plan version and are not priced "
            f"(first: {usage}:2: api_calls {{\"region\":\"ap\"}} under pro 2026-10)") in result.output, result.output


# --- webhooks serve: --tolerance and --max-body-bytes reach the receiver --------------------------

SECRET = "whsec_abcdefgh"


def _post(url: str, body: bytes, timestamp: int) -> int:
    """POST `body` signed with SECRET at `timestamp`; the HTTP status."""
    from metering.webhooks.signature import expected_signature

    header = f"t={timestamp},v1={expected_signature(body, timestamp, SECRET.encode())}"
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Stripe-Signature": header, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_serve_passes_its_tolerance_and_body_limit_to_the_receiver(tmp_path: Path) -> None:
    """`--tolerance 10 --max-body-bytes 400`: a fresh signed event of about 150 bytes is landed (200); the
    same event signed 100 s ago is outside 10 s (400; the default 300 s would take it); a body of 500
    bytes is over the 400 limit (413; the default 1 MiB would take it to the signature check)."""
    proc = subprocess.Popen([sys.executable, "-m", "metering.cli", "--log-text", "webhooks", "serve", "--port", "0",
                             "--tolerance", "10", "--max-body-bytes", "400", "--landing", str(tmp_path / "landing")],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "STRIPE_WEBHOOK_SECRET": SECRET})
    try:
        line = proc.stderr.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[2].removesuffix(",")
        now = int(time.time())

        def event(event_id: str) -> bytes:
            return json.dumps({"id": event_id, "object": "event", "type": "invoice.paid", "created": now,
                               "data": {"object": {"id": "in_1", "object": "invoice"}}}).encode()

        assert len(event("evt_1")) < 400
        assert _post(url, event("evt_1"), now) == 200
        assert _post(url, event("evt_2"), now - 100) == 400
        assert _post(url, event("evt_3") + b" " * 500, now) == 413
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- publish names the snapshot it wrote ------------------------------------------------------------

def test_publish_without_snapshot_option_names_the_snapshot_of_the_variable(tmp_path: Path, isolated_env: Path) -> None:
    """No --snapshot: the copy goes to $METERING_SNAPSHOT (conftest: <data>/snapshot.duckdb), and the
    one line printed names that file (not `None`)."""
    db = tmp_path / "w.duckdb"
    warehouse.connect(db).close()
    result = invoke("publish", "--warehouse", str(db))
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [f"published {isolated_env / 'snapshot.duckdb'}"]
    assert (isolated_env / "snapshot.duckdb").exists()


# --- rerate: a month with no lines ------------------------------------------------------------------

def test_rerate_of_a_month_without_lines_says_no_lines_and_counts_unpriced_events(tmp_path: Path) -> None:
    """Two events of c1 (not in any customer list: the warehouse has none) on 2026-10-01 and 02. Re-rating
    2026-10-01..02 touches billing months 2026-09 (periods starting then reach into October) and
    2026-10: neither has a line, so each says `0 lines, unchanged (no lines)`; October's usage is not
    priced: 2 events of 1 customer, unknown_customer, which exits 4 naming 2 events."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for day in (1, 2):
        (raw / f"usage-2026-10-0{day}.jsonl").write_text(_event(f"e{day}", f"2026-10-0{day}T00:00:00Z"))
    db = tmp_path / "w.duckdb"
    assert invoke("ingest", str(raw), "--warehouse", str(db)).exit_code == 0
    result = invoke("rerate", "--from", "2026-10-01", "--to", "2026-10-02", "--warehouse", str(db))
    assert result.exit_code == 4, result.output
    assert result.stdout.splitlines() == [
        "2026-09: 0 lines, unchanged (no lines)",
        "2026-10: 0 lines, unchanged (no lines); not priced: 2 event(s) of 1 customer(s) not in the customer list "
        "(unknown_customer) (c1)"]
    assert "error: 2 usage event(s) not priced in 2026-10 (the check all_usage_priced" in result.output


# --- dunning validate: a rules "folder" that is a file (a defect) -----------------------------------

def test_dunning_validate_of_a_rules_variable_naming_a_file_does_not_say_it_does_not_exist(tmp_path: Path) -> None:
    """$METERING_RULES names a file (the option would be refused by UserPath, the variable is not):
    exit 3 naming the path, but the message said "the rules folder does not exist" of a path that
    exists, sending the operator to look for a missing folder instead of a wrong one. A folder that does
    not exist keeps its message. (Fixed in the thirtieth session: the first half failed.)"""
    a_file = tmp_path / "rules.yaml"
    a_file.write_text("plan: x\n")
    result = invoke("dunning", "validate", env={"METERING_RULES": str(a_file)})
    assert result.exit_code == 3, result.output
    assert str(a_file) in result.output
    assert "does not exist" not in result.output, result.output
    missing = tmp_path / "nowhere"
    result = invoke("dunning", "validate", "--rules", str(missing))
    assert result.exit_code == 3, result.output
    assert f"error: {missing}: the rules folder does not exist" in result.output


# --- stripe sync: the meter window variable is checked as the push checks it -----------------------

def test_sync_refuses_a_meter_window_variable_it_cannot_use_before_calling_stripe(tmp_path: Path) -> None:
    """No --window, $STRIPE_METER_WINDOW=week: meters would be created with a window the push refuses,
    so sync refuses it first (bad input, exit 3, naming the option and the variable), before any call
    to Stripe (whose address here, port 9 on loopback, would answer nothing: exit 5)."""
    db = tmp_path / "w.duckdb"
    warehouse.connect(db).close()
    result = invoke("stripe", "sync", "--warehouse", str(db),
                    env={"STRIPE_METER_WINDOW": "week", "STRIPE_API_KEY": "sk_test_window",
                         "STRIPE_API_BASE": "http://127.0.0.1:9", "STRIPE_MAX_NETWORK_RETRIES": "0"})
    assert result.exit_code == 3, result.output
    assert "error: window kind (--window, STRIPE_METER_WINDOW): 'week' is not one of day, hour" in result.output


# --- ingest: the table row of a long name; duplicates vs conflicts in the summary -------------------

def test_ingest_row_cuts_a_long_name_to_40_and_the_summary_counts_exact_duplicates(tmp_path: Path) -> None:
    """One file whose name is 52 characters: its row starts with the first 40 (the column's width).
    Its 6 lines: e1 three times alike (1 accepted, 2 exact duplicates dropped), e2 at 00:00 and again
    at 01:00 (another version: 1 accepted, 1 conflicting duplicate quarantined), e3 of an unknown
    meter (quarantined). So read 6, accepted 2, quarantined 2, dups 2, conflicts 1; dates 10-01..10-02.
    The summary's `duplicates dropped` is the exact duplicates (2), not the conflicts (1)."""
    name = "usage-2026-10-01-from-the-eu-west-collector-07.jsonl"
    assert len(name) == 52 and len(name[:40]) == 40
    raw = tmp_path / name
    raw.write_text(_event("e1", "2026-10-01T00:00:00Z") * 3 + _event("e2", "2026-10-02T00:00:00Z")
                   + _event("e2", "2026-10-02T01:00:00Z")
                   + _event("e3", "2026-10-02T00:00:00Z").replace('"api_calls"', '"nosuch"'))
    result = invoke("ingest", str(raw), "--warehouse", str(tmp_path / "w.duckdb"), "--as-of", "2026-10-05")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1] == (f"{'usage-2026-10-01-from-the-eu-west-collec':<40} {'ingested':<8} {6:>9} {2:>9} {2:>9} "
                        f"{2:>7} {1:>9}  2026-10-01..2026-10-02 (2)")
    assert lines[-1] == ("1 file(s) ingested, 0 skipped (already ingested); 2 events accepted, 2 quarantined, "
                         "2 duplicates dropped; 2 event date(s) touched")


# --- stripe-sandbox: empty items of the retry delays are skipped -----------------------------------

def test_sandbox_takes_retry_delays_with_an_empty_item(tmp_path: Path) -> None:
    """`--webhook-retry-delays 5,,30,` is the delays 5 and 30 (empty items, as a trailing comma leaves,
    are skipped): the sandbox starts and announces its address, rather than a usage error (exit 2)."""
    proc = subprocess.Popen([sys.executable, "-m", "metering.cli", "--log-text", "stripe-sandbox", "--port", "0",
                             "--webhook-retry-delays", "5,,30,"], stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        assert line.startswith("stripe sandbox listening on http://127.0.0.1:"), line
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- reconcile: an empty month says `invoices: none` ----------------------------------------------

def test_reconcile_of_an_empty_month_says_invoices_none(tmp_path: Path) -> None:
    """An empty warehouse, --no-pull: 0 rows and 0 invoices, no status line, and the invoice line says
    `none` rather than ending blank (the warning goes to stderr)."""
    db = tmp_path / "w.duckdb"
    warehouse.connect(db).close()
    result = invoke("reconcile", "--period", "2026-10", "--no-pull", "--warehouse", str(db))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "reconciled 2026-10: 0 customer x meter rows, 0 invoices; tolerance 1 minor unit(s) per line, every currency",
        "  invoices: none"]


# --- rerate --customers: the months left rated with the previous list -----------------------------

CUSTOMERS_HEADER = "customer_id,name,email,currency,billing_anchor_day,plan,plan_effective_from,payment_behavior\n"


def _rated_jul_to_oct(tmp_path: Path) -> tuple[Path, Path]:
    """c1 (starter since 2026-01-01) with one event on 2026-08-15 and one on 2026-10-15, re-rated over
    2026-08-01..10-31: billing months 2026-07..2026-10 are rated (a date re-rates its month and the one
    before, whose periods may reach it). The warehouse and the customer list."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for day in ("2026-08-15", "2026-10-15"):
        (raw / f"u-{day}.jsonl").write_text(_event(f"e{day}", f"{day}T00:00:00Z"))
    customers = tmp_path / "customers.csv"
    customers.write_text(CUSTOMERS_HEADER + "c1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n")
    db = tmp_path / "w.duckdb"
    assert invoke("ingest", str(raw), "--warehouse", str(db)).exit_code == 0
    first = invoke("rerate", "--from", "2026-08-01", "--to", "2026-10-31", "--warehouse", str(db),
                   "--customers", str(customers))
    assert first.exit_code == 0, first.output
    assert [line[:7] for line in first.stdout.splitlines()] == ["2026-07", "2026-08", "2026-09", "2026-10"]
    return db, customers


def test_rerate_with_a_changed_list_names_only_the_months_it_did_not_rerate(tmp_path: Path) -> None:
    """The list gains c2, on starter from 2026-12-01 (no rated month holds its periods, so no closed
    period is re-priced); re-rating 2026-10-15 alone re-rates 2026-09 and 2026-10 with the new list, so
    the warning names 2026-07 and 2026-08 only (rated with the previous list), not the months just
    re-rated. A change rating does not read (c1's name, A -> Acme) is no change of the list: no warning."""
    db, customers = _rated_jul_to_oct(tmp_path)
    customers.write_text(CUSTOMERS_HEADER + "c1,Acme,a@a.test,usd,,starter,2026-01-01,succeeds\n")
    renamed = invoke("rerate", "--from", "2026-10-15", "--to", "2026-10-15", "--warehouse", str(db),
                     "--customers", str(customers))
    assert renamed.exit_code == 0, renamed.output
    assert "customer list changed" not in renamed.output, renamed.output
    customers.write_text(CUSTOMERS_HEADER + "c1,Acme,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                         "c2,B,b@b.test,usd,,starter,2026-12-01,succeeds\n")
    result = invoke("rerate", "--from", "2026-10-15", "--to", "2026-10-15", "--warehouse", str(db),
                    "--customers", str(customers))
    assert result.exit_code == 0, result.output
    assert [line[:7] for line in result.stdout.splitlines()] == ["2026-09", "2026-10"]
    assert ("warning: the customer list changed; 2026-07, 2026-08 stay rated with the previous one until "
            "re-rated (metering rerate over their dates)") in result.output, result.output


def test_rerate_with_the_same_list_again_does_not_say_it_changed(tmp_path: Path) -> None:
    """The same customer list given again (not a byte changed): re-rating 2026-10-15 changes nothing
    (`unchanged`), and 2026-07 and 2026-08 are rated with exactly this list, so nothing is stale. The
    command warned "the customer list changed; 2026-07, 2026-08 stay rated with the previous one",
    telling the operator to re-rate months that are right. (Fixed in the thirtieth session.)"""
    db, customers = _rated_jul_to_oct(tmp_path)
    result = invoke("rerate", "--from", "2026-10-15", "--to", "2026-10-15", "--warehouse", str(db),
                    "--customers", str(customers))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["2026-09: 6 lines, unchanged (usd 19.00)",
                                          "2026-10: 6 lines, unchanged (usd 19.00)"]
    assert "customer list changed" not in result.output, result.output


# --- stripe sync --customers needs no warehouse yet -------------------------------------------------

def test_sync_with_a_customer_list_creates_the_warehouse_it_records_into(tmp_path: Path, stripe_sandbox) -> None:
    """With --customers the list comes from the file, so a warehouse that does not exist yet is made
    (it records the Stripe ids): exit 0 against the sandbox, the file now there, and the customer created
    carries the list's payment behaviour (`fails`) for the sandbox to act on. Without --customers
    the same missing warehouse is refused (exit 3), as a mistyped path must not sync an empty list."""
    customers = tmp_path / "customers.csv"
    customers.write_text(CUSTOMERS_HEADER + "c1,A,a@a.test,usd,,starter,2026-01-01,fails\n")
    db = tmp_path / "new.duckdb"
    env = {"STRIPE_API_KEY": stripe_sandbox.api_key, "STRIPE_API_BASE": stripe_sandbox.base_url,
           "STRIPE_MAX_NETWORK_RETRIES": "0"}
    result = invoke("stripe", "sync", "--warehouse", str(db), "--customers", str(customers), "--create-customers",
                    env=env)
    assert result.exit_code == 0, (result.output, result.exception)
    assert db.exists()
    # --create-customers is the sandbox's: the list's payment behaviour goes with the customer it creates
    created = stripe_sandbox.client().v1.customers.list().data
    assert [c.metadata.to_dict() for c in created] == [{"customer_id": "c1", "payment_behavior": "fails"}]
    other = tmp_path / "other.duckdb"
    refused = invoke("stripe", "sync", "--warehouse", str(other), env=env)
    assert refused.exit_code == 3, refused.output
    assert not other.exists()


def test_rules_validate_reads_the_snapshot_while_a_job_holds_the_default_warehouse(isolated_env: Path) -> None:
    """The default warehouse ($METERING_WAREHOUSE) is held by another process; the published snapshot
    exists (a migrated, empty warehouse): validate says it reads the snapshot instead and checks the
    shipped rules against it, 5 meters, 4 plans, 5 versions, exit 0, without the "no warehouse" note."""
    held = isolated_env / "warehouse.duckdb"
    warehouse.connect(held).close()
    warehouse.connect(isolated_env / "snapshot.duckdb").close()
    with _held(held):
        result = invoke("rules", "validate", str(RULES))
    assert result.exit_code == 0, result.output
    assert f"note: {held} is held by a running job; trying the published snapshot" in result.output
    assert result.stdout.splitlines()[-1] == "ok: 5 meters, 4 plans, 5 versions"


# --- webhooks serve on an IPv6 address announces a URL that works (a defect) ------------------------

def _ipv6_loopback() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="needs the IPv6 loopback ::1")
def test_serve_on_ipv6_loopback_announces_a_url_with_the_address_in_brackets(tmp_path: Path) -> None:
    """`--host ::1`: the receiver listens on ::1 and announces its URL. An IPv6 address in a URL goes in
    brackets (RFC 3986: http://[::1]:PORT/...); the line said http://::1:PORT/webhooks/stripe, whose port
    no URL parser reads (urlsplit's .port raises), so the announced address could not be pasted into
    Stripe's CLI or curl. (Fixed in the thirtieth session.)"""
    import urllib.parse

    proc = subprocess.Popen([sys.executable, "-m", "metering.cli", "--log-text", "webhooks", "serve", "--port", "0",
                             "--host", "::1", "--landing", str(tmp_path / "landing")],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "STRIPE_WEBHOOK_SECRET": SECRET})
    try:
        line = proc.stderr.readline()
        assert line.startswith("listening on http://"), line
        url = line.split()[2].removesuffix(",")
        parts = urllib.parse.urlsplit(url)
        assert parts.hostname == "::1" and parts.path == "/webhooks/stripe", url
        assert isinstance(parts.port, int), url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# --- reconcile: the unexplained amounts, one line per currency in currency order -------------------

def test_reconcile_lists_unexplained_amounts_in_currency_order(tmp_path: Path) -> None:
    """c1 on starter (usd) and c2 on pro_jpy (jpy), one api call each on 2026-10-15, rated, nothing
    pushed or invoiced (--no-pull). October: c1 = platform fee 19.00 (the call is within the 10,000
    included); c2 = platform fee 7,500 + minimum spend 15,000 (usage charges 0 yen, the minimum tops
    them up to 15,000) = 22,500 yen. All of it is unexplained (not invoiced): the lines come jpy then usd
    (currency order, as the exit-4 message lists them), whatever order the grouping returned."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.jsonl").write_text(_event("e1", "2026-10-15T00:00:00Z", customer="c1"))
    (raw / "b.jsonl").write_text(_event("e2", "2026-10-15T00:00:00Z", customer="c2"))
    customers = tmp_path / "customers.csv"
    customers.write_text(CUSTOMERS_HEADER + "c1,A,a@a.test,usd,,starter,2026-01-01,succeeds\n"
                                            "c2,B,b@b.test,jpy,,pro_jpy,2026-01-01,succeeds\n")
    db = tmp_path / "w.duckdb"
    assert invoke("ingest", str(raw), "--warehouse", str(db)).exit_code == 0
    assert invoke("rerate", "--from", "2026-10-15", "--to", "2026-10-15", "--warehouse", str(db),
                  "--customers", str(customers)).exit_code == 0
    for _ in range(3):   # the grouping's order may differ from run to run; the lines may not
        result = invoke("reconcile", "--period", "2026-10", "--no-pull", "--warehouse", str(db))
        assert result.exit_code == 4, result.output
        unexplained = [line for line in result.stdout.splitlines() if line.startswith("  unexplained")]
        assert unexplained == ["  unexplained 22,500 JPY", "  unexplained 19.00 USD"], result.output
        assert ("error: unexplained differences exceed 0 minor unit(s): 22,500 JPY, 19.00 USD "
                "(see `metering report --period 2026-10`)") in result.output
