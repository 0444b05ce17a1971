"""Warehouse-wide invariants of ingestion, as plain queries (the Dagster asset checks call these).

- Conservation (I1/I3): every file's manifest entry adds up (read = accepted + quarantined +
  duplicates dropped), in rows and in the quantities (`value`) they carry, and the rows stored per
  file, and their values, equal the manifest's. Files ingested before the manifest recorded values
  (migration 005) are checked by rows only.
- Uniqueness: no event_id appears twice among clean events.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb


@dataclass
class CheckOutcome:
    passed: bool
    metadata: dict


def conservation(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    unbalanced = con.execute(
        "SELECT count(*) FROM ingested_files "
        "WHERE rows_read <> rows_accepted + rows_quarantined + duplicates_dropped "
        "OR value_read <> value_accepted + value_quarantined + value_dropped").fetchone()[0]
    mismatched = con.execute("""
        WITH clean AS (SELECT file_id, count(*) AS n, coalesce(sum(value), 0) AS v FROM usage_events GROUP BY ALL),
             quarantined AS (SELECT file_hash, count(*) AS n, coalesce(sum(value), 0) AS v
                             FROM usage_quarantine GROUP BY ALL)
        SELECT count(*) FROM ingested_files f
        LEFT JOIN clean c USING (file_id) LEFT JOIN quarantined q USING (file_hash)
        WHERE coalesce(c.n, 0) <> f.rows_accepted OR coalesce(q.n, 0) <> f.rows_quarantined
           OR coalesce(c.v, 0) <> f.value_accepted OR coalesce(q.v, 0) <> f.value_quarantined""").fetchone()[0]
    orphans = con.execute("""
        SELECT (SELECT count(*) FROM usage_events
                WHERE file_id NOT IN (SELECT file_id FROM ingested_files WHERE file_id IS NOT NULL))
             + (SELECT count(*) FROM usage_quarantine WHERE file_hash NOT IN (SELECT file_hash FROM ingested_files))
    """).fetchone()[0]
    totals = con.execute("SELECT count(*), coalesce(sum(rows_read), 0), coalesce(sum(rows_accepted), 0), "
                         "coalesce(sum(rows_quarantined), 0), coalesce(sum(duplicates_dropped), 0), "
                         "coalesce(sum(value_read), 0)::VARCHAR, count(*) FILTER (value_read IS NULL) "
                         "FROM ingested_files").fetchone()
    return CheckOutcome(
        passed=unbalanced == 0 and mismatched == 0 and orphans == 0,
        metadata={"files": totals[0], "rows_read": totals[1], "rows_accepted": totals[2],
                  "rows_quarantined": totals[3], "duplicates_dropped": totals[4],
                  "value_read": totals[5], "files_without_value_sums": totals[6],
                  "unbalanced_files": unbalanced, "files_with_count_mismatch": mismatched,
                  "rows_without_manifest": orphans},
    )


def unique_event_ids(con: duckdb.DuckDBPyConnection) -> CheckOutcome:
    dupes = con.execute("SELECT count(*) - count(DISTINCT event_id) FROM usage_events").fetchone()[0]
    return CheckOutcome(passed=dupes == 0, metadata={"duplicate_event_ids": dupes})


def rows_by_date(con: duckdb.DuckDBPyConnection, dates: list[str]) -> dict[str, int]:
    """Clean events per event date (ISO text), for each of `dates` (0 where none), in one query."""
    if not dates:
        return {}
    counted = dict(con.execute("SELECT event_date::VARCHAR, count(*) FROM usage_events "
                               "WHERE list_contains(?::DATE[], event_date) GROUP BY 1", [dates]).fetchall())
    return {d: counted.get(d, 0) for d in dates}
