-- The settings each month's reconciliation ran with (one row per month: the latest run's), so the
-- finance report judges the rows by the check that produced them. Written in the same transaction as
-- the rows. A report of rows reconciled before this migration uses the environment's settings (the
-- CLI) or the run's config (the Dagster asset), as before.
CREATE TABLE IF NOT EXISTS reconciliation_runs (
    billing_month   DATE NOT NULL,       -- one row a month: reconcile_period replaces it (no key: DuckLake has none)
    reconciled_at   TIMESTAMPTZ NOT NULL,
    settings        JSON NOT NULL        -- ReconcileSettings.to_record(): tolerances, settle delay, grace, threshold
);
