-- Reconciliation against Stripe: what we pulled from Stripe's API, and how it compares with ours.
-- Quantities DECIMAL(38, 12); money as BIGINT integer minor units of `currency`. No floats.

-- Stripe's meter event summaries, pulled with the official SDK (GET /v1/billing/meters/{id}/event_summaries).
-- One row per customer x meter x billing period x summary window: grain 'day' rows (value_grouping_window=day)
-- and one grain 'period' row (no grouping: Stripe's own aggregate over the whole period, with the meter's
-- formula). status 'pending' rows (no value) mark a pull refused by the settle guard: pushed too recently.
CREATE TABLE IF NOT EXISTS stripe_meter_summaries (
    billing_month      DATE NOT NULL,          -- the monthly_billing partition (first day of the month)
    customer_id        VARCHAR NOT NULL,       -- ours
    stripe_customer_id VARCHAR,
    meter              VARCHAR NOT NULL,       -- ours (rating_rules/meters.yaml)
    stripe_meter_id    VARCHAR,
    event_name         VARCHAR,
    formula            VARCHAR,                -- the Stripe meter's default_aggregation.formula: sum|count|last
    period_start       DATE NOT NULL,          -- the customer's billing period [start, end), UTC
    period_end         DATE NOT NULL,
    grain              VARCHAR NOT NULL,       -- 'day' | 'period'
    summary_id         VARCHAR,
    window_start       TIMESTAMPTZ,            -- summary start_time (inclusive)
    window_end         TIMESTAMPTZ,            -- summary end_time (exclusive)
    aggregated_value   DECIMAL(38, 12),        -- parsed exactly from the response body (never via float)
    status             VARCHAR NOT NULL,       -- 'settled' | 'pending'
    status_reason      VARCHAR,                -- why pending (e.g. last acknowledged push 40 s ago < settle 900 s)
    pulled_at          TIMESTAMPTZ NOT NULL
);

-- Stripe invoices as read from the API (GET /v1/invoices), to complement webhook-derived stripe_invoices
-- (webhooks can be lost). One row per invoice.
CREATE TABLE IF NOT EXISTS stripe_invoices_api (
    billing_month      DATE NOT NULL,
    invoice_id         VARCHAR NOT NULL,
    customer           VARCHAR,                -- stripe customer id
    customer_id        VARCHAR,                -- ours (metadata, else the customer map)
    subscription_id    VARCHAR,
    status             VARCHAR,                -- draft|open|paid|uncollectible|void
    currency           VARCHAR,
    amount_due         BIGINT,
    amount_paid        BIGINT,
    amount_remaining   BIGINT,
    total              BIGINT,
    subtotal           BIGINT,
    attempt_count      BIGINT,
    period_start       TIMESTAMPTZ,
    period_end         TIMESTAMPTZ,
    created            TIMESTAMPTZ,
    finalized_at       TIMESTAMPTZ,
    pulled_at          TIMESTAMPTZ NOT NULL
);

-- Invoice lines as read from the API (GET /v1/invoices/{id}/lines). One row per invoice line.
-- The merged view `stripe_invoice_lines_all` (migration 051) prefers these over webhook-derived lines.
CREATE TABLE IF NOT EXISTS stripe_invoice_lines_api (
    billing_month      DATE NOT NULL,
    invoice_id         VARCHAR NOT NULL,
    line_id            VARCHAR NOT NULL,
    customer           VARCHAR,
    customer_id        VARCHAR,
    price_id           VARCHAR,
    stripe_meter_id    VARCHAR,
    event_name         VARCHAR,
    meter              VARCHAR,                -- ours, from event_name 'metering_<meter>'; NULL for non-metered lines
    quantity_decimal   DECIMAL(38, 12),
    amount             BIGINT,
    currency           VARCHAR,
    period_start       TIMESTAMPTZ,
    period_end         TIMESTAMPTZ,
    pulled_at          TIMESTAMPTZ NOT NULL
);

-- One row per customer x meter x billing period: ours vs pushed vs Stripe's meter vs Stripe's invoice.
CREATE TABLE IF NOT EXISTS usage_reconciliation (
    billing_month        DATE NOT NULL,
    customer_id          VARCHAR NOT NULL,
    meter                VARCHAR NOT NULL,
    period_start         DATE NOT NULL,
    period_end           DATE NOT NULL,
    currency             VARCHAR,
    plan                 VARCHAR,
    plan_version         VARCHAR,
    our_quantity         DECIMAL(38, 12),      -- rated quantity (rated_usage)
    pushed_quantity      DECIMAL(38, 12),      -- acknowledged in stripe_push_ledger
    stripe_quantity      DECIMAL(38, 12),      -- Stripe's meter summary over the period
    invoiced_quantity    DECIMAL(38, 12),      -- Stripe invoice lines for this meter and period
    our_amount_minor     BIGINT,               -- rated amount (every charge on this meter)
    not_in_stripe_minor  BIGINT,               -- part of it on charges Stripe cannot price (catalog findings
                                               -- 'not_expressible', e.g. dimension filters): billed by the engine
    stripe_amount_minor  BIGINT,               -- invoiced amount
    quantity_diff        DECIMAL(38, 12),      -- stripe_quantity - our_quantity
    amount_diff_minor    BIGINT,               -- stripe_amount_minor - (our_amount_minor - not_in_stripe_minor)
    tolerance_minor      BIGINT NOT NULL,      -- allowed |amount_diff_minor| for this row
    status               VARCHAR NOT NULL,     -- matched|within_tolerance|not_pushed|missing_in_stripe|extra_in_stripe|quantity_mismatch|amount_mismatch|late_after_finalization|pending
    reason               VARCHAR NOT NULL,     -- human-readable explanation with the numbers
    explained            BOOLEAN NOT NULL,     -- false: counts against the blocking check's threshold
    invoice_ids          VARCHAR,              -- comma-separated Stripe invoices holding the lines
    reconciled_at        TIMESTAMPTZ NOT NULL
);

-- One row per customer x billing period: our invoice preview total vs Stripe's invoiced total.
CREATE TABLE IF NOT EXISTS invoice_reconciliation (
    billing_month        DATE NOT NULL,
    customer_id          VARCHAR NOT NULL,
    period_start         DATE NOT NULL,
    period_end           DATE NOT NULL,
    currency             VARCHAR,
    our_total_minor      BIGINT,
    not_in_stripe_minor  BIGINT,               -- our charges Stripe cannot price (minimums, dimension filters)
    stripe_total_minor   BIGINT,               -- sum of Stripe invoice lines for the period
    amount_diff_minor    BIGINT,               -- stripe_total_minor - (our_total_minor - not_in_stripe_minor)
    tolerance_minor      BIGINT NOT NULL,
    invoice_ids          VARCHAR,
    invoice_status       VARCHAR,              -- status of the invoice carrying the period's usage
    amount_due           BIGINT,
    amount_paid          BIGINT,
    amount_remaining     BIGINT,
    status               VARCHAR NOT NULL,     -- matched|within_tolerance|amount_mismatch|missing_in_stripe|extra_in_stripe|pending
    reason               VARCHAR NOT NULL,
    reconciled_at        TIMESTAMPTZ NOT NULL
);
