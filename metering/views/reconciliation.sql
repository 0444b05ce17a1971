-- analytics.reconciliation: one row per customer x meter x billing period (the finance report's lines), from
-- usage_reconciliation.
CREATE OR REPLACE VIEW analytics.reconciliation AS
SELECT
    billing_month,
    customer_id,
    meter,
    period_start,
    period_end,
    currency,
    plan,
    plan_version,
    our_quantity,                 -- the meter's quantity over the period (usage_aggregates)
    pushed_quantity,              -- acknowledged in the push ledger
    stripe_quantity,              -- Stripe's meter event summary over the period
    invoiced_quantity,            -- Stripe's invoice lines
    our_amount_minor,
    not_in_stripe_minor,
    stripe_amount_minor,
    quantity_diff,
    amount_diff_minor,
    tolerance_minor,
    status,                       -- matched | within_tolerance | not_pushed | not_invoiced | missing_in_stripe
                                  -- | extra_in_stripe | quantity_mismatch | amount_mismatch | currency_mismatch
                                  -- | late_after_finalization | pending
    reason,
    explained,                    -- false: counts against the blocking check's threshold
    invoice_ids,
    timezone('UTC', reconciled_at) AS reconciled_at  -- UTC, no time zone
FROM main.usage_reconciliation;
COMMENT ON VIEW analytics.reconciliation IS 'One row per customer x meter x billing period: ours vs pushed vs Stripe meter vs Stripe invoice, amount difference, status and reason. Source: usage_reconciliation.';

-- analytics.invoice_reconciliation: one row per customer x billing period (invoice level), from invoice_reconciliation.
CREATE OR REPLACE VIEW analytics.invoice_reconciliation AS
SELECT
    billing_month,
    customer_id,
    period_start,
    period_end,
    currency,
    our_total_minor,              -- our invoice preview total
    not_in_stripe_minor,          -- of it, charges Stripe cannot price (minimums, dimension filters)
    engine_items_minor,           -- the engine's invoice items billing them, on Stripe's invoices of the period
    engine_items_pending_minor,   -- the engine's invoice items Stripe holds for the next invoice
    unbilled_minor,               -- not_in_stripe_minor - engine_items_minor - engine_items_pending_minor
                                  -- (shown; not counted by the blocking check)
    stripe_total_minor,           -- every Stripe line of the period (the engine's invoice items included)
    amount_diff_minor,            -- (stripe_total_minor - engine_items_minor) - (our_total_minor - not_in_stripe_minor)
    tolerance_minor,
    residual_tolerance_minor,     -- of the part no usage row carries (lines on no meter that carry an amount)
    stripe_adjustments_minor,     -- invoice totals before tax less their lines (discounts, credits), each invoice counted in the period of its earliest line
    invoice_ids,
    invoice_status,               -- of the invoice that closed the period
    amount_due,                   -- the period's own lines on paid, open or uncollectible invoices, less credit_notes_minor
    amount_paid,                  -- those on paid invoices, less the credit notes issued before payment on them
    amount_remaining,             -- those on open or uncollectible invoices, less theirs
    credit_notes_minor,           -- credit notes issued before payment on the invoices counted in the period
                                  -- (each in one period): a finance decision, not counted by the blocking check;
                                  -- stripe_total_minor = amount_paid + amount_remaining + credit_notes_minor + drafts
    status,                       -- matched | within_tolerance | amount_mismatch | currency_mismatch
                                  -- | missing_in_stripe | extra_in_stripe | not_invoiced | pending
    reason,
    timezone('UTC', reconciled_at) AS reconciled_at  -- UTC, no time zone
FROM main.invoice_reconciliation;
COMMENT ON VIEW analytics.invoice_reconciliation IS 'One row per customer x billing period: our total vs Stripe total (all lines of the period), the charges Stripe cannot price and the engine''s invoice items billing them (on Stripe''s invoices, pending at Stripe, unbilled), invoice status, amount paid and remaining (less the credit notes issued before payment, credit_notes_minor), status and reason. Source: invoice_reconciliation.';
