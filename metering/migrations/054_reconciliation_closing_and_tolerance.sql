-- Reconciliation: what closes a period cut short, the tolerance of the part only an invoice row sees,
-- and what an invoice's total says beyond its lines.

-- When the invoice's subscription ended (GET /v1/subscriptions, status=all; NULL while it runs): the
-- final invoice of a subscription cancelled mid-period (invoice_now) ends there, and closes the period.
ALTER TABLE stripe_invoices_api ADD COLUMN IF NOT EXISTS subscription_ended_at TIMESTAMPTZ;

-- The invoice's total before tax (after discounts and pre-tax credits), which its lines are compared
-- with: the engine rates no tax.
ALTER TABLE stripe_invoices_api ADD COLUMN IF NOT EXISTS total_excluding_tax BIGINT;

-- The tolerance of residual = amount_diff_minor - the usage rows' differences (flat fees, lines on no
-- meter): the currency's minor units per line on no meter that carries an amount, on either side.
ALTER TABLE invoice_reconciliation ADD COLUMN IF NOT EXISTS residual_tolerance_minor BIGINT;

-- The closing invoice's total before tax (after discounts and pre-tax credits) less the sum of its
-- lines (before them): Stripe collects that much more (less, when negative) than its lines say,
-- tax aside. Counted, never rounded.
ALTER TABLE invoice_reconciliation ADD COLUMN IF NOT EXISTS stripe_adjustments_minor BIGINT;
