"""The main job (`metering demo`) at a small scale: it finishes, its summary is the warehouse's,
every planted discrepancy is found, and running it again changes nothing."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow

TABLES_THAT_MUST_NOT_CHANGE = (
    "usage_events", "usage_quarantine", "ingested_files", "usage_aggregates", "rated_usage",
    "invoice_previews", "stripe_push_ledger", "stripe_invoice_items",
)


def _run_demo(data: Path) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "metering.cli", "demo", "--data-dir", str(data), "--customers", "30",
         "--events", "6000", "--seed", "7"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout


# Observations a run may add without changing what was billed: an invoice item Stripe held pending
# when one run sent it is recorded on the invoice that took it by the next (`stripe_invoice_id`).
OBSERVED = {"stripe_invoice_items": ("stripe_invoice_id", "updated_at")}


def _table_digest(con: duckdb.DuckDBPyConnection, table: str) -> str:
    skip = ("ingested_at", "quarantined_at", "rated_at", "created_at", "synced_at", *OBSERVED.get(table, ()))
    cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall() if r[0] not in skip]
    rows = con.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY ALL").fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def _item_invoices(con: duckdb.DuckDBPyConnection) -> dict[str, str | None]:
    return dict(con.execute("SELECT item_key, stripe_invoice_id FROM stripe_invoice_items").fetchall())


def _number(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in summary:\n{text}"
    return int(match.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data = tmp_path_factory.mktemp("demo")
    return data, _run_demo(data)


def test_summary_figures_are_the_warehouses(demo_run):
    data, summary = demo_run
    con = duckdb.connect(str(data / "snapshot.duckdb"), read_only=True)
    read = _number(r"([\d,]+) rows read", summary)
    accepted = _number(r"([\d,]+) accepted", summary)
    quarantined = _number(r"([\d,]+) quarantined", summary)
    dropped = _number(r"([\d,]+) exact duplicates dropped", summary)
    assert accepted == con.execute("SELECT count(*) FROM usage_events").fetchone()[0]
    assert quarantined == con.execute("SELECT count(*) FROM usage_quarantine").fetchone()[0]
    # conservation, independently of the manifest the summary reads
    assert read == accepted + quarantined + dropped
    assert read == sum(
        1 for path in (data / "raw").iterdir() for _ in _raw_rows(path)
    )
    # money in each currency's own minor unit: yen has none (it once printed "JPY 1,077,914.00")
    rated = next(line for line in summary.splitlines() if line.strip().startswith("rated:"))
    assert re.search(r"[\d,]+ JPY", rated) and not re.search(r"\.\d+ JPY", rated), rated
    assert re.search(r"[\d,]+\.\d\d USD", rated), rated


def _raw_rows(path: Path):
    """Rows in a raw file, counted without the engine: lines (minus a CSV header) or Parquet rows."""
    import gzip

    import pyarrow.parquet as pq

    if path.suffix == ".parquet":
        yield from range(pq.ParquetFile(path).metadata.num_rows)
        return
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        lines = fh.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    yield from range(len(lines) - (1 if path.suffix == ".csv" else 0))


def test_planted_discrepancies_are_reported(demo_run):
    data, _ = demo_run
    con = duckdb.connect(str(data / "snapshot.duckdb"), read_only=True)
    statuses = {r[0] for r in con.execute("SELECT status FROM usage_reconciliation").fetchall()}
    drift = con.execute("SELECT count(*) FROM stripe_catalog_findings WHERE finding = 'drift'").fetchone()[0]
    assert drift >= 1
    assert "late_after_finalization" in statuses
    assert statuses & {"quantity_mismatch", "extra_in_stripe"}
    assert (data / "reports" / "2026-09").is_dir()


def test_charges_stripe_cannot_price_are_billed_as_invoice_items(demo_run):
    """Every closed calendar-month period's minimums and dimension-filtered charges are on its own
    Stripe invoice (the draft the demo rated inside), as the engine's invoice items, to the cent."""
    data, _ = demo_run
    con = duckdb.connect(str(data / "snapshot.duckdb"), read_only=True)
    rated = dict(con.execute("""
        SELECT customer_id, sum(amount_minor) FROM rated_usage
        WHERE period_start = DATE '2026-09-01' AND period_end = DATE '2026-10-01'
          AND (plan || '|' || plan_version || '|' || charge) IN
              (SELECT our_key FROM stripe_catalog_findings WHERE finding = 'not_expressible' AND kind = 'price')
        GROUP BY ALL HAVING sum(amount_minor) <> 0""").fetchall())
    # the lines Stripe's September invoices (period Sep 1 - Oct 1, pulled from Stripe) carry for our items
    on_period_invoice = dict(con.execute("""
        SELECT inv.customer_id, sum(l.amount)
        FROM analytics.stripe_invoice_lines l
        JOIN stripe_invoices inv ON inv.invoice_id = l.invoice_id
        JOIN stripe_invoice_items i ON i.stripe_invoice_item_id = l.invoice_item
        WHERE inv.period_start = TIMESTAMPTZ '2026-09-01 00:00:00+00'
          AND inv.period_end = TIMESTAMPTZ '2026-10-01 00:00:00+00'
          AND i.period_start = DATE '2026-09-01' AND i.period_end = DATE '2026-10-01'
        GROUP BY ALL""").fetchall())
    assert rated and on_period_invoice == rated
    unbilled = con.execute("""SELECT count(*) FROM invoice_reconciliation
                              WHERE period_start = DATE '2026-09-01' AND period_end = DATE '2026-10-01'
                                AND unbilled_minor <> 0""").fetchone()[0]
    assert unbilled == 0


def test_running_again_changes_nothing(demo_run):
    data, _ = demo_run
    before = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    digests = {t: _table_digest(before, t) for t in TABLES_THAT_MUST_NOT_CHANGE}
    pushes = before.execute("SELECT count(*) FROM stripe_push_ledger").fetchone()[0]
    item_invoices = _item_invoices(before)
    before.close()
    _run_demo(data)
    after = duckdb.connect(str(data / "warehouse.duckdb"), read_only=True)
    assert {t: _table_digest(after, t) for t in TABLES_THAT_MUST_NOT_CHANGE} == digests
    assert after.execute("SELECT count(*) FROM stripe_push_ledger").fetchone()[0] == pushes
    # an item's invoice is only ever learned (None -> the invoice that took it), never moved
    assert {k: v for k, v in _item_invoices(after).items() if item_invoices[k] is not None} == \
        {k: v for k, v in item_invoices.items() if v is not None}


def _readme_queries() -> list[str]:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("## Querying the warehouse", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, flags=re.S)


def test_readme_example_queries_run_on_the_demo_snapshot(demo_run):
    data, _ = demo_run
    queries = _readme_queries()
    assert len(queries) >= 5
    con = duckdb.connect(str(data / "snapshot.duckdb"), read_only=True)
    for sql in queries:
        rows = con.execute(sql).fetchall()
        assert rows, f"README query returned nothing on the demo snapshot:\n{sql}"


def test_the_demo_snapshot_stays_under_its_data_folder(tmp_path, monkeypatch):
    """Everything the demo writes goes under its data folder: a $METERING_SNAPSHOT naming the analysts'
    real snapshot must not be overwritten with demo data (it was, when the data folder was the default)."""
    from pipelines.demo import DemoOptions

    monkeypatch.setenv("METERING_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("METERING_SNAPSHOT", str(tmp_path / "analysts" / "snapshot.duckdb"))
    assert DemoOptions().snapshot == tmp_path / "snapshot.duckdb"
    assert DemoOptions(data_dir=tmp_path / "other").snapshot == tmp_path / "other" / "snapshot.duckdb"
