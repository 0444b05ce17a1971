-- Whether Stripe will finalize (and collect) a draft invoice on its own: the invoice's auto_advance.
-- An unpaid subscription's invoices, and any draft someone turned automatic collection off for, stay
-- drafts with auto_advance false until a person finalizes or voids them: reconciliation treats such a
-- draft as it treats a void invoice (the period is not_invoiced, counted), where it stayed `pending`
-- for good. NULL when unknown: pulled (or webhook state kept) before this migration, until the next
-- pull or state rebuild fills it; an unknown draft stays `pending`, as before.
ALTER TABLE stripe_invoices_api ADD COLUMN IF NOT EXISTS auto_advance BOOLEAN;
ALTER TABLE stripe_invoices ADD COLUMN IF NOT EXISTS auto_advance BOOLEAN;
