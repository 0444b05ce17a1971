-- analytics.rated_lines: one row per customer x billing period x charge line, with its rule version.
CREATE OR REPLACE VIEW analytics.rated_lines AS
SELECT
    customer_id,
    period_start,                 -- billing period [period_start, period_end), UTC dates
    period_end,
    segment_start,                -- sub-interval with one plan version in force (plan changes)
    segment_end,
    plan,
    plan_version,                 -- the rule version that rated the line
    rules_hash,                   -- content hash of that version: re-derive any amount from raw events
    charge,
    model,
    meter,                        -- NULL for flat fees and minimums
    quantity,
    billable_quantity,
    amount_unrounded,
    amount_minor,
    currency,
    rounding,
    tiers,                        -- JSON tier breakdown
    rated_at
FROM main.rated_usage;
COMMENT ON VIEW analytics.rated_lines IS 'One row per customer x billing period x charge line: quantity, exact amount (amount_minor, integer minor units), plan_version and rules_hash of the rule that rated it. Source: rated_usage.';
