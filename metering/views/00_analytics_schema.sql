-- The `analytics` schema of the published snapshot (data/snapshot.duckdb): documented, read-only
-- views for analysts over the engine's tables. Run by metering.warehouse.publish after the copy, in
-- file-name order. Money: *_minor columns are integer minor units of `currency`; quantities are
-- DECIMAL(38,12). Time: every date is a UTC date (DATE) and every time a UTC TIMESTAMP without a time zone,
-- converted explicitly (timezone('UTC', ...)) from the tables' TIMESTAMPTZ, so a view returns the same rows
-- whatever the session's TimeZone (an analyst's DuckDB uses the machine's zone). Compare them with
-- `now() AT TIME ZONE 'UTC'`, not now(). The tables themselves keep TIMESTAMPTZ: query them in a session
-- with `SET TimeZone = 'UTC'`, or convert with `AT TIME ZONE 'UTC'` before casting to DATE or truncating.
CREATE SCHEMA IF NOT EXISTS analytics;
