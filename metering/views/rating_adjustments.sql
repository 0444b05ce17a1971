-- analytics.rating_adjustments: one row per change rating made to a closed billing period's charge (I19), from
-- rating_adjustments.
CREATE OR REPLACE VIEW analytics.rating_adjustments AS
SELECT
    customer_id,
    period_start,                 -- the closed billing period [period_start, period_end), UTC dates
    period_end,
    currency,
    charge,
    before_minor,                 -- the charge's amount before, integer minor units (0: no such line)
    after_minor,
    delta_minor,                  -- after - before: what the period's total moved by
    reason,                       -- 'late_usage', or the operator's reason (metering rerate --adjust-closed)
    link,                         -- JSON: the late files ({"files": [...]}) or the customer list (path, sha256)
    timezone('UTC', adjusted_at) AS adjusted_at   -- UTC, no time zone
FROM main.rating_adjustments;
COMMENT ON VIEW analytics.rating_adjustments IS 'One row per change to a closed billing period''s charge (invariant I19): amounts before and after (integer minor units), reason and link (adjusted_at UTC without a time zone). A closed period changes only through these rows. Source: rating_adjustments.';
