"""Fold landed deliveries into `stripe_webhook_events`: one row per Stripe event id.

Every landed record becomes a row of `stripe_webhook_receipts` (keyed by file and line, so landing
the same file twice counts nothing twice); `stripe_webhook_events` is then rebuilt for the event ids
touched: the first receipt's raw JSON (by receipt time), first/last receipt time, the number of
receipts, and the first receipt's source (`webhook` or `repair`). All of it is whole-frame SQL in
one transaction with the landing offsets, so a crash leaves either the old or the new state.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import polars as pl

from metering.warehouse import transaction
from metering.webhooks.inbox import MAX_CREATED
from metering.webhooks.landing import FilePosition, read_new_records

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LandingStats:
    """What one landing pass did."""

    files_read: int
    records_read: int
    receipts_added: int
    events_added: int
    duplicate_receipts: int
    bad_records: int
    torn_files: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def stored_positions(con: duckdb.DuckDBPyConnection) -> dict[str, FilePosition]:
    rows = con.execute("SELECT landing_file, offset_bytes, lines FROM stripe_landing_offsets").fetchall()
    return {name: FilePosition(offset, lines) for name, offset, lines in rows}


_PARSE_SQL = """
CREATE OR REPLACE TEMP TABLE _wh_parsed AS
WITH lines AS (
    -- a record is ASCII (inbox.encode_record): any other character is damage, even where the line
    -- still parses (a byte of an id read as U+FFFD made an event Stripe never sent)
    SELECT landing_file, line_no, line, json_valid(line) AND strlen(line) = length(line) AS line_ok
    FROM _wh_landed
), fields AS (
    SELECT landing_file, line_no, line, line_ok,
           CASE WHEN line_ok THEN line ->> '$.body' END AS body,
           CASE WHEN line_ok THEN TRY_CAST(line ->> '$.received_at' AS TIMESTAMPTZ) END AS received_at
    FROM lines
)
SELECT landing_file, line_no, line, received_at, body,
       CASE
           WHEN NOT line_ok THEN 'record_not_json'
           WHEN received_at IS NULL THEN 'record_without_received_at'
           WHEN body IS NULL OR NOT json_valid(body) THEN 'body_not_json'
           WHEN json_type(body) <> 'OBJECT'
                OR json_type(body, '$.id') IS DISTINCT FROM 'VARCHAR' OR (body ->> '$.id') = ''
                OR json_type(body, '$.type') IS DISTINCT FROM 'VARCHAR'
                OR json_type(body, '$.data.object') IS DISTINCT FROM 'OBJECT' THEN 'body_not_an_event'
           WHEN NOT coalesce(json_type(body, '$.created') IN ('UBIGINT', 'BIGINT')
                    AND TRY_CAST(body ->> '$.created' AS BIGINT) BETWEEN 0 AND {max_created}, false)
                THEN 'event_created_out_of_range'
       END AS bad_reason
FROM fields
""".format(max_created=MAX_CREATED)


# The envelope fields of an event, parsed in one pass (see metering.webhooks.state).
_EVENT_SHAPE = (
    '{"type":"VARCHAR","created":"BIGINT","api_version":"VARCHAR","livemode":"BOOLEAN",'
    '"data":{"object":{"id":"VARCHAR","object":"VARCHAR"}}}'
)


def refresh_events(con: duckdb.DuckDBPyConnection, touched_table: str) -> None:
    """Rebuild `stripe_webhook_events` rows for the event ids in `touched_table(event_id)`."""
    con.execute(f"DELETE FROM stripe_webhook_events WHERE event_id IN (SELECT event_id FROM {touched_table})")
    con.execute(
        f"""
        INSERT INTO stripe_webhook_events
        WITH r AS (
            SELECT * FROM stripe_webhook_receipts
            WHERE event_id IN (SELECT event_id FROM {touched_table})
        ), agg AS (
            SELECT event_id, min(received_at) AS first_received_at, max(received_at) AS last_received_at,
                   count(*) AS receipt_count
            FROM r GROUP BY event_id
        ), first_receipt AS (
            SELECT * FROM r
            -- ties: a file's lines in the order written (the key is text, and 'f:10' < 'f:9')
            QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY received_at, landing_file, line_no, receipt_key) = 1
        )
        SELECT f.event_id, f.e.type, to_timestamp(f.e.created), f.e.data.object.id, f.e.data.object.object,
               f.e.api_version, f.e.livemode, f.raw,
               a.first_received_at, a.last_received_at, a.receipt_count, f.source
        FROM (SELECT *, json_transform(raw, '{_EVENT_SHAPE}') AS e FROM first_receipt) f
        JOIN agg a USING (event_id)
        """
    )


def land_records(
    con: duckdb.DuckDBPyConnection,
    records: pl.DataFrame,
    positions: dict[str, FilePosition],
    *,
    now: datetime | None = None,
) -> tuple[int, int, int]:
    """Store landed records and the new file positions in one transaction.

    Returns (receipts added, new event ids, bad records).
    """
    now = now or datetime.now(timezone.utc)
    con.register("_wh_landed", records.to_arrow())
    try:
        with transaction(con):
            con.execute(_PARSE_SQL)
            bad = con.execute(
                """
                INSERT INTO stripe_webhook_bad_records
                SELECT landing_file, line_no, bad_reason, line, ? FROM _wh_parsed p
                WHERE bad_reason IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM stripe_webhook_bad_records b
                    WHERE b.landing_file = p.landing_file AND b.line_no = p.line_no)
                """,
                [now],
            ).fetchone()[0]
            con.execute(
                """
                CREATE OR REPLACE TEMP TABLE _wh_new AS
                SELECT landing_file || ':' || line_no AS receipt_key, body ->> '$.id' AS event_id,
                       'webhook' AS source, received_at, landing_file, line_no, CAST(body AS JSON) AS raw
                FROM _wh_parsed p
                WHERE bad_reason IS NULL AND NOT EXISTS (
                    SELECT 1 FROM stripe_webhook_receipts r
                    WHERE r.receipt_key = p.landing_file || ':' || p.line_no)
                """
            )
            added, new_events = insert_receipts(con, "_wh_new", now)
            if positions:
                names = list(positions)
                con.execute("DELETE FROM stripe_landing_offsets WHERE list_contains(?, landing_file)", [names])
                con.executemany(
                    "INSERT INTO stripe_landing_offsets VALUES (?, ?, ?, ?)",
                    [[name, p.offset, p.lines, now] for name, p in positions.items()],
                )
    finally:
        con.unregister("_wh_landed")
    return added, new_events, bad


def insert_receipts(con: duckdb.DuckDBPyConnection, new_table: str, now: datetime) -> tuple[int, int]:
    """Append `new_table` receipts and refresh their events (caller holds the transaction)."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _wh_touched AS
        SELECT DISTINCT event_id,
               event_id NOT IN (SELECT event_id FROM stripe_webhook_events) AS is_new
        FROM {new_table}
        """
    )
    added = con.execute(
        f"""
        INSERT INTO stripe_webhook_receipts
        SELECT receipt_key, event_id, source, received_at, landing_file, line_no, raw, ? FROM {new_table}
        """,
        [now],
    ).fetchone()[0]
    new_events = con.execute("SELECT count(*) FROM _wh_touched WHERE is_new").fetchone()[0]
    refresh_events(con, "_wh_touched")
    return added, new_events


def land_directory(
    con: duckdb.DuckDBPyConnection, directory: Path, *, now: datetime | None = None
) -> LandingStats:
    """Land every complete record not yet landed from `directory` into the warehouse."""
    landed = read_new_records(directory, stored_positions(con))
    added, new_events, bad = land_records(con, landed.records, landed.positions, now=now)
    stats = LandingStats(
        files_read=len(landed.positions),
        records_read=landed.records.height,
        receipts_added=added,
        events_added=new_events,
        duplicate_receipts=added - new_events,
        bad_records=bad,
        torn_files=landed.torn_files,
    )
    if landed.torn_bytes:
        log.warning("landing files end in a torn record (skipped)", extra={"files": sorted(landed.torn_bytes)})
    if bad:
        log.error("landed records that are not events were set aside", extra={"count": bad})
    log.info("landed webhook files", extra=stats.as_dict())
    return stats


def event_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Totals for reporting: events, receipts, events whose first receipt came from repair."""
    events, receipts, repaired = con.execute(
        "SELECT count(*), coalesce(sum(receipt_count), 0), count(*) FILTER (WHERE source = 'repair')"
        " FROM stripe_webhook_events"
    ).fetchone()
    return {"events": events, "receipts": int(receipts), "events_from_repair": repaired}
