"""Warehouse-wide invariants of ingestion, as plain queries (the Dagster asset checks call these).

- Conservation (I1/I3): every file's manifest entry adds up (read = accepted + quarantined +
  duplicates dropped), in rows and in the quantities (`value`) they carry, and the rows stored per
  file, and their values, equal the manifest's. Files ingested before the manifest recorded values
  (migration 005) are checked by rows only.
- Uniqueness: no event_id appears twice among clean events.

`require_sound_events` runs both and raises when either fails: whatever reads usage_events to bill
(the `usage_aggregates` asset) calls it first, so rows that break them are never aggregated or pushed,
whatever Dagster recorded about the ingest runs (blocking checks only stop their own run).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from metering.errors import CheckFailedError

CONSERVATION = "conservation"
UNIQUE_EVENT_ID = "unique_event_id"


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


_WHAT_BROKE = {
    CONSERVATION: "conservation (per file: rows read = accepted + quarantined + duplicates dropped, and so the "
                  "values (`value`) they carry; and the rows stored, and the sum of their values, equal the "
                  "file's manifest entry in ingested_files)",
    UNIQUE_EVENT_ID: "event_id uniqueness (no event_id twice in usage_events)",
}
_FINDINGS = ("unbalanced_files", "files_with_count_mismatch", "rows_without_manifest", "duplicate_event_ids")


class UnsoundEventsError(CheckFailedError):
    """usage_events break conservation or event_id uniqueness; `failed` holds each failed check's outcome."""

    def __init__(self, message: str, failed: dict[str, CheckOutcome]) -> None:
        super().__init__(message)
        self.failed = failed


def require_sound_events(con: duckdb.DuckDBPyConnection) -> dict[str, CheckOutcome]:
    """Run `conservation` and `unique_event_ids` over the whole warehouse; raise `UnsoundEventsError`
    naming each failed invariant, its findings and what to do, else return both outcomes.

    Whole warehouse, not one day's rows: a file's rows span several dates, and a duplicate elsewhere is
    the same fault. Cost: about one scan of usage_events per check (see docs/rating.md).
    """
    outcomes = {CONSERVATION: conservation(con), UNIQUE_EVENT_ID: unique_event_ids(con)}
    failed = {name: o for name, o in outcomes.items() if not o.passed}
    if not failed:
        return outcomes
    broken = "; ".join(
        f"{_WHAT_BROKE[name]}: " + ", ".join(f"{k}={o.metadata[k]}" for k in _FINDINGS if o.metadata.get(k))
        for name, o in failed.items())
    raise UnsoundEventsError(
        f"usage_events fail the ingest invariant(s) {', '.join(failed)}, so nothing is aggregated (and nothing "
        f"pushed or rated from it): {broken}. Rows were written or removed outside ingestion, or an ingestion "
        f"was interrupted. Find them (SELECT event_id, count(*) FROM usage_events GROUP BY 1 HAVING count(*) > 1; "
        f"per file, compare the count and sum(value) of usage_events grouped by file_id with ingested_files), "
        f"restore the warehouse from a backup or delete the stray rows so each file matches its manifest entry, "
        f"then run again.",
        failed)
