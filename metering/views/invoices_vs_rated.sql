-- analytics.invoices_vs_rated: one row per customer x billing period: our invoice preview vs Stripe.
CREATE OR REPLACE VIEW analytics.invoices_vs_rated AS
SELECT
    coalesce(p.customer_id, r.customer_id)   AS customer_id,
    coalesce(p.period_start, r.period_start) AS period_start,
    coalesce(p.period_end, r.period_end)     AS period_end,
    coalesce(p.currency, r.currency)         AS currency,
    p.total_minor                     AS our_total_minor,
    p.lines                           AS our_lines,
    r.not_in_stripe_minor,            -- our charges Stripe cannot price (minimums, dimension filters): the
                                      -- engine bills them as Stripe invoice items once the period is closed
    r.engine_items_minor,             -- of which on Stripe's invoices as the engine's invoice items
    r.engine_items_pending_minor,     -- of which in the engine's items Stripe holds for the next invoice
    r.unbilled_minor,                 -- not_in_stripe_minor - engine_items_minor - engine_items_pending_minor
    r.stripe_total_minor,             -- every Stripe line of the period, the engine's invoice items included
    r.amount_diff_minor,              -- (stripe_total_minor - engine_items_minor) - (our_total_minor - not_in_stripe_minor)
    r.tolerance_minor,
    r.status                          AS reconciliation_status,
    r.invoice_ids,
    r.invoice_status,                 -- of the invoice that closed the period (NULL while none has)
    r.amount_paid,                    -- the period's own Stripe lines on paid invoices, whichever invoice
                                      -- carries them (its fee may be on an earlier one; the closing invoice
                                      -- bills the next period's fee in advance, which is that period's)
    r.amount_remaining,               -- the period's own Stripe lines on open or uncollectible invoices
                                      -- (both less the credit notes issued before payment on those invoices)
    r.credit_notes_minor,             -- those credit notes: Stripe collects that much less than its lines
    timezone('UTC', r.reconciled_at) AS reconciled_at   -- UTC, without a zone: the same in any session
FROM main.invoice_previews p
-- FULL: a period only Stripe invoiced (extra_in_stripe, no preview of ours) is a row too
FULL JOIN main.invoice_reconciliation r
  ON r.customer_id = p.customer_id AND r.period_start = p.period_start;
COMMENT ON VIEW analytics.invoices_vs_rated IS 'One row per customer x billing period: our invoice preview total vs the Stripe invoice lines of the period, with the reconciliation status, the status of the invoice that closed the period, and what of the period''s own Stripe lines is paid (amount_paid: on paid invoices) and remaining (amount_remaining: on open or uncollectible invoices), both less the credit notes issued before payment (credit_notes_minor), NULL until reconciled; a period only Stripe invoiced has no total of ours (NULL). Our charges Stripe cannot price (not_in_stripe_minor) are billed by the engine as Stripe invoice items: engine_items_minor on Stripe''s invoices, engine_items_pending_minor pending at Stripe, unbilled_minor not billed yet. Source: invoice_previews, invoice_reconciliation.';
