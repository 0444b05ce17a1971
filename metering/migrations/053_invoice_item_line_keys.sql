-- The engine's key of an invoice item's line (metadata[metering_item], which Stripe copies from the
-- item onto its line): reconciliation recognises the engine's items by it even while their ledger
-- row is not yet acknowledged (a lost response settled by the next items run), when the line's
-- invoice item id is not yet in stripe_invoice_items.
ALTER TABLE stripe_invoice_lines_api ADD COLUMN IF NOT EXISTS metering_item VARCHAR;
ALTER TABLE stripe_invoice_lines ADD COLUMN IF NOT EXISTS metering_item VARCHAR;
