-- analytics.dunning_queue: one row per invoice currently in dunning, next step first, from dunning_state.
-- Times are UTC without a time zone (converted explicitly, whatever the session's TimeZone).
CREATE OR REPLACE VIEW analytics.dunning_queue AS
SELECT
    invoice_id,
    customer_id,
    stripe_customer,
    plan,
    currency,
    amount_remaining,             -- integer minor units
    invoice_status,
    attempt_count,
    timezone('UTC', next_payment_attempt) AS next_payment_attempt,  -- Stripe's own next retry
    timezone('UTC', first_failed_at)      AS first_failed_at,
    step_name,                    -- latest dunning step reached
    next_step_name,
    timezone('UTC', next_step_at)         AS next_step_at,
    reason,
    timezone('UTC', evaluated_at)         AS evaluated_at
FROM main.dunning_state
WHERE state = 'in_dunning'
ORDER BY next_step_at NULLS LAST, invoice_id;
COMMENT ON VIEW analytics.dunning_queue IS 'One row per invoice in dunning (state in_dunning), ordered by the next step due: amount remaining, Stripe attempts, next step; times UTC without a time zone. Source: dunning_state.';
