-- Reconciled current Stripe state derived from stripe_webhook_events (+ repair snapshots).
-- Money in integer minor units (BIGINT); quantities DECIMAL(38, 12); times TIMESTAMPTZ (UTC).

-- One row per Stripe invoice: its latest known version.
CREATE TABLE IF NOT EXISTS stripe_invoices (
    invoice_id            VARCHAR NOT NULL,
    customer              VARCHAR,            -- Stripe customer id (cus_...)
    customer_id           VARCHAR,            -- ours: invoice metadata[customer_id], else the subscription's
    subscription_id       VARCHAR,            -- parent.subscription_details.subscription
    status                VARCHAR,            -- draft | open | paid | uncollectible | void
    currency              VARCHAR,
    amount_due            BIGINT,
    amount_paid           BIGINT,
    amount_remaining      BIGINT,
    total                 BIGINT,
    subtotal              BIGINT,
    attempt_count         BIGINT,
    next_payment_attempt  TIMESTAMPTZ,
    period_start          TIMESTAMPTZ,
    period_end            TIMESTAMPTZ,
    created               TIMESTAMPTZ,
    finalized_at          TIMESTAMPTZ,
    paid_at               TIMESTAMPTZ,
    marked_uncollectible_at TIMESTAMPTZ,
    voided_at             TIMESTAMPTZ,
    billing_reason        VARCHAR,
    collection_method     VARCHAR,
    livemode              BOOLEAN,
    lines_complete        BOOLEAN,            -- false when the payload's lines list had more pages
    metadata              JSON,
    state_event_created   TIMESTAMPTZ,        -- `created` of the event (or snapshot) this row comes from
    state_event_id        VARCHAR,            -- that event's id ('snapshot:<invoice id>' for a repair re-fetch)
    state_events          BIGINT              -- how many versions of this invoice were folded
);

-- One row per invoice line of the latest version of each invoice (webhook-derived rows have
-- source 'webhook'; another writer may add rows with another source).
CREATE TABLE IF NOT EXISTS stripe_invoice_lines (
    invoice_id        VARCHAR NOT NULL,
    line_id           VARCHAR NOT NULL,
    price_id          VARCHAR,               -- pricing.price_details.price
    meter             VARCHAR,               -- OUR meter name, via stripe_objects (kind 'meter') when known
    event_name        VARCHAR,               -- 'metering_<meter>' when the meter is known
    stripe_meter_id   VARCHAR,               -- the price's recurring.meter (expanded price, or a re-fetched price)
    subscription_item VARCHAR,
    quantity_decimal  DECIMAL(38, 12),       -- quantity_decimal (quantity is truncated since basil)
    amount            BIGINT,
    currency          VARCHAR,
    period_start      TIMESTAMPTZ,           -- inclusive
    period_end        TIMESTAMPTZ,           -- inclusive, as Stripe states since basil
    description       VARCHAR,
    source            VARCHAR NOT NULL
);

-- One row per Stripe subscription: its latest known version.
CREATE TABLE IF NOT EXISTS stripe_subscriptions (
    subscription_id       VARCHAR NOT NULL,
    customer              VARCHAR,
    customer_id           VARCHAR,           -- ours: metadata[customer_id]
    status                VARCHAR,           -- incomplete | trialing | active | past_due | unpaid | canceled | ...
    currency              VARCHAR,
    collection_method     VARCHAR,
    cancel_at_period_end  BOOLEAN,
    cancel_at             TIMESTAMPTZ,
    canceled_at           TIMESTAMPTZ,
    ended_at              TIMESTAMPTZ,
    current_period_start  TIMESTAMPTZ,       -- min over items (since basil the period lives on items)
    current_period_end    TIMESTAMPTZ,
    billing_cycle_anchor  TIMESTAMPTZ,
    latest_invoice        VARCHAR,
    test_clock            VARCHAR,
    created               TIMESTAMPTZ,
    livemode              BOOLEAN,
    items                 JSON,              -- [{id, price}] of the latest version
    metadata              JSON,
    state_event_created   TIMESTAMPTZ,
    state_event_id        VARCHAR,
    state_events          BIGINT
);

-- One row per invoice x payment attempt number, from invoice.payment_failed /
-- invoice.payment_action_required / invoice.payment_succeeded / invoice.paid events.
CREATE TABLE IF NOT EXISTS stripe_payment_attempts (
    invoice_id            VARCHAR NOT NULL,
    attempt_count         BIGINT NOT NULL,
    outcome               VARCHAR NOT NULL,  -- succeeded | action_required | failed
    event_id              VARCHAR NOT NULL,
    event_type            VARCHAR NOT NULL,
    attempted_at          TIMESTAMPTZ NOT NULL,  -- the event's `created`
    customer              VARCHAR,
    customer_id           VARCHAR,
    subscription_id       VARCHAR,
    currency              VARCHAR,
    amount_due            BIGINT,
    amount_paid           BIGINT,
    amount_remaining      BIGINT,
    next_payment_attempt  TIMESTAMPTZ
);
