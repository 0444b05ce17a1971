-- Stripe's invoice total before tax (after discounts and pre-tax credits): what reconciliation
-- compares with the invoice's lines. The engine rates no tax, so a taxed invoice's total alone would
-- show every tax as money Stripe collects beyond its lines.
ALTER TABLE stripe_invoices ADD COLUMN IF NOT EXISTS total_excluding_tax BIGINT;
