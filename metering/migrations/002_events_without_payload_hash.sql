-- usage_events no longer stores the payload hash: ingestion computes it from the typed columns
-- (customer, meter, instant, value, properties) for the few rows whose event_id repeats. Storing
-- 32 random hex characters per event made every insert hash and compress them, about 40 % of the
-- cost of storing an event. usage_quarantine keeps its payload_hash (conflicting versions only).
ALTER TABLE usage_events DROP COLUMN IF EXISTS payload_hash;
