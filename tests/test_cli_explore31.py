"""What the thirty-first session's runs of the CLI as a user would found: cases no test covered.

- `metering ingest` printed its table's heading on stdout before it opened the warehouse, so a run
  refused for a held or damaged warehouse left a heading with no rows on stdout for a script to read.
"""
from __future__ import annotations

from pathlib import Path

from metering import warehouse
from tests.test_cli_mutants28 import _event, invoke
from tests.test_cli_mutants30 import _held


def test_ingest_refused_a_damaged_warehouse_prints_nothing_on_stdout(tmp_path: Path) -> None:
    """A warehouse file that is not a DuckDB database is exit 3 naming it; stdout stays empty."""
    raw = tmp_path / "a.jsonl"
    raw.write_text(_event("e1", "2026-10-05"))
    damaged = tmp_path / "warehouse.duckdb"
    damaged.write_text("not a database\n")
    result = invoke("ingest", "--warehouse", str(damaged), str(raw))
    assert result.exit_code == 3, result.output
    assert str(damaged) in result.stderr
    assert result.stdout == ""


def test_ingest_refused_a_held_warehouse_prints_nothing_on_stdout(tmp_path: Path) -> None:
    """Another process holds the warehouse: exit 6, the holder named on stderr, stdout empty."""
    raw = tmp_path / "a.jsonl"
    raw.write_text(_event("e1", "2026-10-05"))
    held = tmp_path / "held.duckdb"
    warehouse.connect(held).close()
    with _held(held) as holder:
        result = invoke("ingest", "--warehouse", str(held), str(raw))
    assert result.exit_code == 6, result.output
    assert f"PID {holder.pid}" in result.stderr
    assert result.stdout == ""


def test_ingest_prints_its_heading_once_the_warehouse_is_open(tmp_path: Path) -> None:
    """The heading still comes first when the run goes ahead (the table reads as before)."""
    raw = tmp_path / "a.jsonl"
    raw.write_text(_event("e1", "2026-10-05"))
    result = invoke("ingest", "--warehouse", str(tmp_path / "w.duckdb"), str(raw))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["file", "status", "read", "accepted", "quarant.", "dups", "conflicts", "event",
                                "dates"]
    assert lines[1].split()[:4] == ["a.jsonl", "ingested", "1", "1"]
    assert len(lines) == 3
