"""Helpers for ingestion tests: a warehouse per test, files written under tmp_path."""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pytest

from metering import warehouse

NOW = datetime(2026, 11, 1, tzinfo=timezone.utc)


def event(event_id: str = "e1", **fields) -> dict:
    base = {"event_id": event_id, "customer_id": "cust_00001", "meter": "tokens",
            "timestamp": "2026-10-05T12:00:00Z", "value": 5, "properties": {"model": "small"}}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not ...}


def write_lines(path: Path, lines: list[bytes | str | dict]) -> Path:
    data = b"".join((json.dumps(x).encode() if isinstance(x, dict) else x.encode() if isinstance(x, str) else x)
                    + b"\n" for x in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(data, mtime=0))
    else:
        path.write_bytes(data)
    return path


def table_digest(con: duckdb.DuckDBPyConnection, table: str, exclude: tuple[str, ...] = ()) -> str:
    """A canonical hash of a table: rows as JSON, sorted."""
    cols = [c for (c,) in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
        [table]).fetchall() if c not in exclude]
    rows = con.execute(f"SELECT to_json({{{', '.join(f'{c!r}: {c}' for c in cols)}}})::VARCHAR AS j "
                       f"FROM {table} ORDER BY j").fetchall()
    return hashlib.sha256("\n".join(r[0] for r in rows).encode()).hexdigest()


@pytest.fixture
def con(tmp_path: Path):
    c = warehouse.connect(tmp_path / "w.duckdb")
    yield c
    c.close()
