"""Generated data: deterministic, and every injected defect accounted for exactly (hypothesis)."""

from __future__ import annotations

import csv
import hashlib
import time
from datetime import date

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metering import warehouse
from metering.ingest import checks, ingest_files
from metering.ingest.contract import REASONS
from metering.ingest.generate import GenerateConfig, generate, reasons_for
from tests.metering.ingest.conftest import NOW


def _digest(files):
    return [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]


def test_same_seed_same_bytes(tmp_path):
    cfg = GenerateConfig(seed=5, customers=20, events=2000, end=date(2026, 10, 8))
    a = generate(cfg, tmp_path / "a", tmp_path / "a.csv")
    time.sleep(1.1)  # gzip headers carry a write time in seconds: same seed must still give same bytes
    b = generate(cfg, tmp_path / "b", tmp_path / "b.csv")
    assert _digest(a.files) == _digest(b.files) and _digest([a.customers_file]) == _digest([b.customers_file])
    c = generate(GenerateConfig(seed=6, customers=20, events=2000, end=date(2026, 10, 8)), tmp_path / "c")
    assert _digest(c.files) != _digest(a.files)


def test_every_format_and_every_reason_is_generated(tmp_path):
    summary = generate(GenerateConfig(events=400, customers=5, end=date(2026, 10, 4)), tmp_path / "raw")
    assert sorted(f.name.split(".", 1)[1] for f in summary.files) == ["csv", "jsonl", "jsonl.gz", "parquet"]
    assert set(summary.malformed) == set(REASONS) - {"conflicting_duplicate"}
    assert summary.exact_duplicates and summary.conflicting_duplicates and summary.late_events
    assert summary.hostile_ids


def test_customer_list_contract(tmp_path):
    path = generate(GenerateConfig(customers=300, events=500), tmp_path / "raw", tmp_path / "customers.csv").customers_file
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["customer_id", "name", "email", "currency", "billing_anchor_day", "plan",
                             "plan_effective_from", "payment_behavior"]
    assert len({r["customer_id"] for r in rows}) == 300
    assert {r["plan"] for r in rows} == {"starter", "pro", "scale", "pro_jpy"}
    assert all((r["currency"] == "jpy") == (r["plan"] == "pro_jpy") for r in rows)
    assert {r["payment_behavior"] for r in rows} == {"succeeds", "fails", "fails_then_succeeds"}
    anchors = {r["billing_anchor_day"] for r in rows}
    assert "" in anchors and all(a == "" or 1 <= int(a) <= 31 for a in anchors)
    changes = [r for r in rows if r["plan_effective_from"] != "2026-10-01"]
    assert changes and all(date(2026, 10, 2) <= date.fromisoformat(r["plan_effective_from"]) <= date(2026, 10, 31)
                           for r in changes)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 10_000), events=st.integers(50, 400), days=st.integers(1, 6),
       dup=st.sampled_from([0.0, 0.01, 0.05]), conflict=st.sampled_from([0.0, 0.01, 0.03]),
       late=st.sampled_from([0.0, 0.05]), bad=st.sampled_from([0.0, 0.01, 0.05]),
       hostile=st.sampled_from([0.0, 0.02]))
def test_conservation_with_every_defect(tmp_path_factory, seed, events, days, dup, conflict, late, bad, hostile):
    tmp = tmp_path_factory.mktemp("gen")
    cfg = GenerateConfig(seed=seed, customers=7, events=events, end=date(2026, 10, days), duplicate_share=dup,
                         conflict_share=conflict, late_share=late, malformed_share=bad, hostile_share=hostile)
    summary = generate(cfg, tmp / "raw")
    with warehouse.open_warehouse(tmp / "w.duckdb") as con:
        results = ingest_files(con, summary.files, now=NOW)
        total = lambda k: sum(getattr(r, k) for r in results)  # noqa: E731
        assert total("rows_read") == summary.rows
        assert total("rows_read") == total("rows_accepted") + total("rows_quarantined") + total("duplicates_dropped")
        # exact numbers from the generator's injection plan
        assert total("rows_accepted") == events
        assert total("duplicates_dropped") == summary.exact_duplicates
        assert total("conflicting_duplicates") == summary.conflicting_duplicates
        reasons = dict(con.execute("SELECT reason, count(*) FROM usage_quarantine GROUP BY 1").fetchall())
        expected = dict(summary.malformed)
        if summary.conflicting_duplicates:
            expected["conflicting_duplicate"] = summary.conflicting_duplicates
        assert reasons == expected
        # each raw row id (file, line) is in at most one of clean / quarantine, and none is lost
        clash = con.execute("SELECT count(*) FROM usage_events e JOIN ingested_files f USING (file_id) "
                            "JOIN usage_quarantine q USING (file_hash, source_line)").fetchone()[0]
        assert clash == 0
        assert con.execute("SELECT count(*) - count(DISTINCT event_id) FROM usage_events").fetchone()[0] == 0
        # nothing lost or invented in value either (I1): the clean values sum, per meter and exactly, to
        # the values of the events the generator meant to be clean, whatever was injected around them
        stored = dict(con.execute("SELECT meter, sum(value) FROM usage_events WHERE value IS NOT NULL "
                                  "GROUP BY 1").fetchall())
        assert stored == summary.clean_values and summary.clean_values
        # and every file's values add up: read = accepted + quarantined + dropped, as the manifest says
        assert all(r.conserved for r in results) and checks.conservation(con).passed
        assert total("value_accepted") == sum(summary.clean_values.values())
        # every file's formats carry only reasons they can
        for f, r in zip(summary.files, results):
            fmt = r.format
            assert set(r.reasons) - {"conflicting_duplicate"} <= set(reasons_for(fmt))
