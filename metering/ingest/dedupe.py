"""De-duplication: decide, for each valid row, whether it is accepted, an exact duplicate, or a conflict.

The rule (invariant I4), per `event_id`:

- A *version* is an (event_id, payload_hash) pair; the payload is customer, meter, instant, value and
  properties (`contract.PAYLOAD_FIELDS`).
- The first version ever ingested stays clean: the one already in `usage_events`, else the one on
  the earliest line of the file being ingested (files are ingested one at a time, in the order
  given; the sensor and `metering ingest` of a folder use path order).
- Every other version is quarantined once as `conflicting_duplicate` (its first row in the file).
- Every further copy of a version already seen (clean, or quarantined as a conflict) is an exact
  duplicate: dropped and counted.

So the counts never depend on arrival order: accepted = distinct ids, conflicts = distinct
versions - distinct ids, duplicates = rows - distinct versions. Which version is clean does.

Only rows whose id repeats (in the file or against the warehouse) reach the detailed SQL; unique
new ids take the fast path, so the cost is one grouping of the batch (by a hash of the id,
`ID_KEY`) plus one semi-join against the stored ids. The payload hash is computed for those few
rows only (and for the stored events they meet), from the typed columns both sides hold: it is
never stored with a clean event, which made every insert pay for hashing and compressing 32
random hex characters per row.
"""

from __future__ import annotations

import duckdb

from metering.ingest.contract import VALUE_SCALE

DUPLICATE = "duplicate"
CONFLICT = "conflict"
ID_KEY = "hash(event_id)"
"""What the batch is grouped by to find the ids that repeat. A 64-bit hash groups faster and in less
memory than the text: 10M ids 0.15-0.3 s less, and the text's grouping spilled ~250 MB to disk under
a 2 GB memory_limit beside the staged rows. Rows whose hashes meet only by collision go through the
detailed SQL, which judges by event_id itself, and come out accepted like any unique id."""


def payload_hash_sql() -> str:
    """SQL for the payload hash of a typed event row (the columns of a clean event).

    md5 over customer, meter, the instant in microseconds, the value as a number and the canonical
    properties text. The value is rendered at the narrowest scale that holds it, so `5` and `5.000`
    hash alike; the formula matches the hashes kept in `usage_quarantine.payload_hash`.
    """
    return (f"md5(customer_id || chr(1) || meter || chr(1) || epoch_us(event_time)::VARCHAR || chr(1) || "
            f"coalesce(try_cast(value AS DECIMAL(18, {VALUE_SCALE}))::VARCHAR, value::VARCHAR, '') || chr(1) "
            f"|| properties::VARCHAR)")


def resolve(con: duckdb.DuckDBPyConnection, events: str, outcomes: str) -> None:
    """Create temp table `outcomes(line, outcome, payload_hash, value)` for every valid row of `events`
    that is NOT accepted (the hash is what a conflicting version is quarantined with; the value is
    what a dropped duplicate carried, for conservation of value).

    Must run inside the ingest transaction, so what is "already stored" cannot change underneath.
    """
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dedupe_repeated AS
        SELECT {ID_KEY} AS id_key FROM {events} WHERE reason IS NULL GROUP BY 1 HAVING count(*) > 1""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dedupe_stored AS
        SELECT event_id, {payload_hash_sql()} AS payload_hash, true AS clean FROM usage_events
        WHERE event_id IN (SELECT event_id FROM {events} WHERE reason IS NULL)
        UNION ALL
        SELECT event_id, payload_hash, false AS clean FROM usage_quarantine
        WHERE reason = 'conflicting_duplicate'
          AND event_id IN (SELECT event_id FROM {events} WHERE reason IS NULL)""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {outcomes} AS
        WITH special AS (
            SELECT line, event_id, value, {payload_hash_sql()} AS payload_hash FROM {events}
            WHERE reason IS NULL AND {ID_KEY} IN (
                SELECT id_key FROM _dedupe_repeated UNION SELECT {ID_KEY} FROM _dedupe_stored)
        ), versions AS (
            SELECT event_id, payload_hash, min(line) AS first_line FROM special GROUP BY ALL
        ), judged AS (
            SELECT v.event_id, v.payload_hash, v.first_line,
                   EXISTS (SELECT 1 FROM _dedupe_stored s
                           WHERE s.event_id = v.event_id AND s.payload_hash = v.payload_hash) AS known_version,
                   EXISTS (SELECT 1 FROM _dedupe_stored s WHERE s.event_id = v.event_id) AS known_id,
                   v.first_line = min(v.first_line) OVER (PARTITION BY v.event_id) AS earliest
            FROM versions v
        )
        SELECT s.line, s.payload_hash, s.value,
               CASE WHEN j.known_version OR s.line <> j.first_line THEN '{DUPLICATE}'
                    WHEN j.known_id OR NOT j.earliest THEN '{CONFLICT}' END AS outcome
        FROM special s JOIN judged j USING (event_id, payload_hash)""")
    con.execute(f"DELETE FROM {outcomes} WHERE outcome IS NULL")
    con.execute("DROP TABLE _dedupe_repeated; DROP TABLE _dedupe_stored")
