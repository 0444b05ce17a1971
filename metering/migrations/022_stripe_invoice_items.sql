-- Charges Stripe cannot price (catalog findings 'not_expressible': minimums, dimension-filtered
-- prices), billed as Stripe invoice items (metering/stripe/invoice_items.py). An outbox like the
-- usage push: one row per customer x closed period x charge x revision, written and committed
-- before its call. A row's amount is the change it makes: the charge's items sum to its rated amount.
-- status: pending | sent (call started, outcome not recorded) | acknowledged | failed (Stripe refused:
--         nothing recorded) | unknown (may have been applied: settled by listing the customer's items)
--         | blocked (no call made: no live subscription and the period's invoice is final)
CREATE TABLE IF NOT EXISTS stripe_invoice_items (
    customer_id            VARCHAR NOT NULL,
    period_start           DATE NOT NULL,
    period_end             DATE NOT NULL,          -- exclusive
    plan                   VARCHAR NOT NULL,
    plan_version           VARCHAR NOT NULL,
    charge                 VARCHAR NOT NULL,
    currency               VARCHAR NOT NULL,
    revision               INTEGER NOT NULL,
    amount_minor           BIGINT NOT NULL,        -- this item: target_minor minus what earlier revisions billed
    target_minor           BIGINT NOT NULL,        -- the charge's rated amount when this revision was planned
    item_key               VARCHAR NOT NULL,       -- deterministic; the item's metadata[metering_item]
    idempotency_key        VARCHAR,                -- set with the invoice chosen, before the first call
    stripe_customer_id     VARCHAR NOT NULL,
    subscription_id        VARCHAR,
    target_invoice_id      VARCHAR,                -- the period's draft invoice; NULL: pending, the next invoice
    stripe_invoice_item_id VARCHAR,
    stripe_invoice_id      VARCHAR,                -- where Stripe put it (NULL while pending at Stripe)
    status                 VARCHAR NOT NULL,
    attempts               INTEGER NOT NULL DEFAULT 0,
    first_attempt_at       TIMESTAMPTZ,
    last_attempt_at        TIMESTAMPTZ,
    last_error             VARCHAR,
    last_http_status       INTEGER,
    stripe_request_id      VARCHAR,
    resolved_by            VARCHAR,                -- response | listing
    created_at             TIMESTAMPTZ NOT NULL,
    updated_at             TIMESTAMPTZ NOT NULL
);
