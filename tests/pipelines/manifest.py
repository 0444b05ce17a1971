"""For tests that write usage_events by SQL: the manifest entries ingestion would have written for them.

`usage_aggregates` refuses a warehouse whose usage events break conservation (every stored row belongs
to a file of ingested_files and each file's rows equal its entry): rows inserted by hand belong to no
file. `record_manifest` gives every file_id in usage_events without an entry one that balances (read =
accepted = its stored rows and their values), re-balancing the entries it wrote before.
"""

from __future__ import annotations

import duckdb

PATH_PREFIX = "inserted-by-test:"


def record_manifest(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("DELETE FROM ingested_files WHERE path LIKE ? || '%'", [PATH_PREFIX])
    con.execute(f"""
        INSERT INTO ingested_files (file_hash, path, format, rows_read, rows_accepted, rows_quarantined,
                                    duplicates_dropped, event_dates, ingested_at, file_id, value_read,
                                    value_accepted, value_quarantined, value_dropped)
        SELECT '{PATH_PREFIX}' || file_id, '{PATH_PREFIX}' || file_id, 'jsonl', count(*), count(*), 0, 0,
               to_json(list(DISTINCT event_date::VARCHAR ORDER BY event_date::VARCHAR))::VARCHAR, now(), file_id,
               coalesce(sum(value), 0), coalesce(sum(value), 0), 0, 0
        FROM usage_events
        WHERE file_id NOT IN (SELECT file_id FROM ingested_files WHERE file_id IS NOT NULL)
        GROUP BY file_id""")
