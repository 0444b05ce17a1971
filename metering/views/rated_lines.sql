-- analytics.rated_lines: one row per customer x billing period x charge line (unique on customer_id,
-- period_start, charge), from rated_usage. Rating prices a period in segments, one per plan version in
-- force (a plan or version change cuts the period); rated_usage keeps one row per segment x charge. Here
-- a charge line adds up its segments' amounts, carries the period's quantity once and lists its
-- segments in `segments`: sum `quantity` and `amount_minor` over lines, never over segments.
CREATE OR REPLACE VIEW analytics.rated_lines AS
WITH segment_lines AS (
    SELECT *,
           -- a gauge's (max, last, unique_count) segment of a cut period priced the whole period's
           -- quantity, prorated by its days, and says so in its tiers (pricing.PRORATED_GAUGE_MARK);
           -- a count / sum charge's segment priced its own hours' usage (the segments add up)
           contains(CAST(tiers AS VARCHAR), '"period_days":') AS priced_period_quantity,
           -- the plan version of the period's last segment, over all the period's charges: a charge
           -- only an earlier segment's plan has (dropped or renamed since) is still of the period's end
           arg_max(plan, segment_start) OVER period          AS plan_at_end,
           arg_max(plan_version, segment_start) OVER period  AS plan_version_at_end,
           arg_max(rules_hash, segment_start) OVER period    AS rules_hash_at_end
    FROM main.rated_usage
    WINDOW period AS (PARTITION BY customer_id, period_start, period_end)
)
SELECT
    customer_id,
    period_start,                 -- billing period [period_start, period_end), UTC dates
    period_end,
    any_value(plan_at_end)                AS plan,           -- in force at the period's end (as in
    any_value(plan_version_at_end)        AS plan_version,   -- analytics.reconciliation); each segment's
    any_value(rules_hash_at_end)          AS rules_hash,     -- own in `segments`
    charge,
    arg_max(model, segment_start)         AS model,
    arg_max(meter, segment_start)         AS meter,          -- NULL for flat fees and minimums
    CAST(CASE WHEN bool_or(priced_period_quantity) THEN max(quantity) ELSE sum(quantity) END
         AS DECIMAL(38, 12))              AS quantity,       -- the period's quantity, once
    CAST(sum(amount_unrounded) AS DECIMAL(38, 24)) AS amount_unrounded,
    CAST(sum(amount_minor) AS BIGINT)     AS amount_minor,   -- integer minor units: the segments' rounded amounts
    currency,
    list({'segment_start': segment_start, 'segment_end': segment_end, 'plan': plan,
          'plan_version': plan_version, 'rules_hash': rules_hash, 'model': model, 'quantity': quantity,
          'billable_quantity': billable_quantity, 'amount_unrounded': amount_unrounded,
          'amount_minor': amount_minor, 'rounding': rounding, 'tiers': tiers}
         ORDER BY segment_start)          AS segments,       -- one per plan version in force, in order:
                                                             -- its own quantity (a gauge's: the period's),
                                                             -- included units, amount, rounding, tiers (JSON)
    timezone('UTC', max(rated_at))        AS rated_at        -- UTC, no time zone
FROM segment_lines
GROUP BY customer_id, period_start, period_end, currency, charge;
COMMENT ON VIEW analytics.rated_lines IS 'One row per customer x billing period x charge line (unique on customer_id, period_start, charge): the period''s quantity once, the exact amount summed over the segments the period was rated in (amount_minor, integer minor units), plan, plan_version and rules_hash in force at the period''s end, and `segments`: one entry per plan version in force (segment_start, segment_end, plan, plan_version, rules_hash, model, quantity, billable_quantity, amount_unrounded, amount_minor, rounding, tiers). rated_at is UTC without a time zone. Source: rated_usage.';
