-- Reconciliation: the credit notes Stripe issued against an invoice before its payment.

-- The invoice's pre_payment_credit_notes_amount (GET /v1/invoices): Stripe's total of the credit
-- notes issued before payment. Such a credit note leaves `total` and `total_excluding_tax` as they were
-- and lowers `amount_due` / `amount_remaining`: Stripe collects that much less than its lines say.
-- NULL for an invoice pulled before this migration (unknown: reconciliation takes it as 0 until the
-- next pull fills it).
ALTER TABLE stripe_invoices_api ADD COLUMN IF NOT EXISTS pre_payment_credit_notes_amount BIGINT;

-- Per customer x billing period: the pre-payment credit notes of the period's invoices, each invoice
-- counted in the one period its earliest line belongs to (as stripe_adjustments_minor). amount_due and
-- amount_paid (paid invoices) / amount_remaining (open or uncollectible ones) are lowered by them, so
-- stripe_total_minor = amount_paid + amount_remaining + credit_notes_minor + the lines on drafts. A
-- finance decision, shown, not counted by the blocking check. NULL for rows reconciled before this
-- migration.
ALTER TABLE invoice_reconciliation ADD COLUMN IF NOT EXISTS credit_notes_minor BIGINT;
