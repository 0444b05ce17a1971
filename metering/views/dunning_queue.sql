-- analytics.dunning_queue: one row per invoice currently in dunning, next step first.
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
    next_payment_attempt,         -- Stripe's own next retry
    first_failed_at,
    step_name,                    -- latest dunning step reached
    next_step_name,
    next_step_at,
    reason,
    evaluated_at
FROM main.dunning_state
WHERE state = 'in_dunning'
ORDER BY next_step_at NULLS LAST, invoice_id;
COMMENT ON VIEW analytics.dunning_queue IS 'One row per invoice in dunning (state in_dunning), ordered by the next step due: amount remaining, Stripe attempts, next step. Source: dunning_state.';
