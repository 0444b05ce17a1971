-- Invoice items on Stripe's invoices. The engine bills the charges Stripe cannot price (minimums,
-- dimension-filtered prices) as invoice items (stripe_invoice_items, migration 022); reconciliation
-- tells those lines from Stripe's own pricing by the line's invoice item id.

-- A line's parent.invoice_item_details.invoice_item ('ii_...'); NULL for a subscription item's line.
ALTER TABLE stripe_invoice_lines_api ADD COLUMN IF NOT EXISTS invoice_item VARCHAR;
ALTER TABLE stripe_invoice_lines ADD COLUMN IF NOT EXISTS invoice_item VARCHAR;

-- Per customer x billing period, where not_in_stripe_minor (our charges Stripe cannot price) stands:
-- engine_items_minor, the period's lines on Stripe's invoices that are our invoice items;
-- engine_items_pending_minor, our acknowledged items of the period Stripe holds for the next invoice;
-- unbilled_minor = not_in_stripe_minor - engine_items_minor - engine_items_pending_minor (shown, not
-- counted by the blocking check: a period still open has no items yet by design).
ALTER TABLE invoice_reconciliation ADD COLUMN IF NOT EXISTS engine_items_minor BIGINT;
ALTER TABLE invoice_reconciliation ADD COLUMN IF NOT EXISTS engine_items_pending_minor BIGINT;
ALTER TABLE invoice_reconciliation ADD COLUMN IF NOT EXISTS unbilled_minor BIGINT;
