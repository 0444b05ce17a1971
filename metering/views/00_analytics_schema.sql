-- The `analytics` schema of the published snapshot (data/snapshot.duckdb): documented, read-only
-- views for analysts over the engine's tables. Run by metering.warehouse.publish after the copy, in
-- file-name order. Money: *_minor columns are integer minor units of `currency`; quantities are
-- DECIMAL(38,12); all times UTC.
CREATE SCHEMA IF NOT EXISTS analytics;
