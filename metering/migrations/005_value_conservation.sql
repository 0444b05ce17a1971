-- Conservation of value (invariant I1), checked on every run as rows are: the quantities a file's
-- rows carry add up to those stored clean, quarantined and dropped as duplicates. A quarantined
-- row keeps its quantity where it is one exactly (a finite decimal within +-1e15 with at most 12
-- decimals); the manifest records the four sums. NULL in files ingested before this migration.
ALTER TABLE usage_quarantine ADD COLUMN IF NOT EXISTS value DECIMAL(38, 12);
ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS value_read DECIMAL(38, 12);
ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS value_accepted DECIMAL(38, 12);
ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS value_quarantined DECIMAL(38, 12);
ALTER TABLE ingested_files ADD COLUMN IF NOT EXISTS value_dropped DECIMAL(38, 12);
