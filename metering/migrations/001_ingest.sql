-- Raw usage ingestion: clean events, quarantine, and the manifest of ingested files.
-- Money and quantities are DECIMAL(38, 12): no float anywhere on the path to an amount.

CREATE TABLE IF NOT EXISTS usage_events (
    event_id      VARCHAR NOT NULL,        -- unique per source; stored verbatim
    customer_id   VARCHAR NOT NULL,
    meter         VARCHAR NOT NULL,
    event_time    TIMESTAMPTZ NOT NULL,    -- UTC instant
    event_date    DATE NOT NULL,           -- UTC date of event_time: the daily partition key
    value         DECIMAL(38, 12),         -- NULL for count meters that carry no value
    properties    JSON,                    -- object of string -> string dimensions, keys sorted
    extra         JSON,                    -- unknown extra fields, kept verbatim
    payload_hash  VARCHAR NOT NULL,        -- hash of the canonical payload: detects conflicting duplicates
    source_file   VARCHAR NOT NULL,
    source_line   BIGINT NOT NULL,         -- 1-based line (JSONL/CSV data row) or row number (Parquet)
    file_hash     VARCHAR NOT NULL,        -- content hash of the source file
    ingested_at   TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS usage_quarantine (
    source_file   VARCHAR NOT NULL,
    source_line   BIGINT NOT NULL,
    file_hash     VARCHAR NOT NULL,
    reason        VARCHAR NOT NULL,        -- machine-readable, closed set (see metering.ingest)
    detail        VARCHAR,                 -- human-readable explanation
    event_id      VARCHAR,                 -- when it could be read
    raw           VARCHAR,                 -- the raw text of the row (invalid UTF-8 escaped); Parquet: the row as JSON
    quarantined_at TIMESTAMPTZ NOT NULL,
    payload_hash  VARCHAR                  -- conflicting_duplicate rows: the rejected version's payload hash
);

CREATE TABLE IF NOT EXISTS ingested_files (
    file_hash      VARCHAR NOT NULL,       -- content hash: a file with the same content is ingested once
    path           VARCHAR NOT NULL,
    format         VARCHAR NOT NULL,
    rows_read      BIGINT NOT NULL,
    rows_accepted  BIGINT NOT NULL,
    rows_quarantined BIGINT NOT NULL,
    duplicates_dropped BIGINT NOT NULL,
    event_dates    VARCHAR,                -- JSON list of event dates (partitions) this file touched
    ingested_at    TIMESTAMPTZ NOT NULL,
    bytes          BIGINT,                 -- file size
    blank_lines    BIGINT,                 -- blank lines skipped (not rows)
    conflicting_duplicates BIGINT          -- of rows_quarantined, those with reason conflicting_duplicate
);
