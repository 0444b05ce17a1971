-- Rating: the customer list, hourly usage aggregates, rated lines, invoice previews, and the
-- rule versions that have rated (for immutability checks). Amounts are exact DECIMALs/BIGINT minor units.

CREATE TABLE IF NOT EXISTS customer_plans (
    customer_id         VARCHAR NOT NULL,
    name                VARCHAR,
    email               VARCHAR,
    currency            VARCHAR NOT NULL,
    billing_anchor_day  INTEGER,               -- 1..31, NULL = calendar month
    plan                VARCHAR NOT NULL,
    plan_effective_from DATE NOT NULL,         -- inclusive, UTC
    plan_effective_to   DATE,                  -- exclusive: the next assignment's start; NULL = open
    payment_behavior    VARCHAR NOT NULL,
    source_line         BIGINT NOT NULL        -- line in the customer CSV
);

CREATE TABLE IF NOT EXISTS usage_aggregates (
    customer_id     VARCHAR NOT NULL,
    meter           VARCHAR NOT NULL,
    dimensions      JSON NOT NULL,             -- the meter's declared dimensions, keys sorted; '{}' when none
    hour            TIMESTAMPTZ NOT NULL,      -- window start, UTC
    event_date      DATE NOT NULL,             -- the daily partition key
    quantity        DECIMAL(38, 12) NOT NULL,  -- the hour's count / sum / max / last / distinct count
    event_count     BIGINT NOT NULL,
    last_event_time TIMESTAMPTZ NOT NULL,      -- for `last` across hours: latest event ...
    last_event_id   VARCHAR NOT NULL,          -- ... and its id (tie-break on equal times)
    distinct_values VARCHAR[]                  -- unique_count meters: the hour's distinct values (exact union)
);

CREATE TABLE IF NOT EXISTS rated_usage (
    customer_id       VARCHAR NOT NULL,
    period_start      DATE NOT NULL,
    period_end        DATE NOT NULL,           -- exclusive
    segment_start     DATE NOT NULL,           -- sub-interval with one plan version in force
    segment_end       DATE NOT NULL,
    plan              VARCHAR NOT NULL,
    plan_version      VARCHAR NOT NULL,
    rules_hash        VARCHAR NOT NULL,        -- content hash of the plan version
    charge_id         INTEGER NOT NULL,        -- position of the charge in its version
    charge            VARCHAR NOT NULL,
    model             VARCHAR NOT NULL,
    meter             VARCHAR,                 -- NULL for flat / minimum
    quantity          DECIMAL(38, 12),
    billable_quantity DECIMAL(38, 12),         -- after `included`
    amount_unrounded  DECIMAL(38, 24),
    amount            DECIMAL(38, 2),
    amount_minor      BIGINT NOT NULL,
    currency          VARCHAR NOT NULL,
    rounding          VARCHAR NOT NULL,
    tiers             JSON,                    -- the tier / package / proration breakdown
    rated_at          TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS invoice_previews (
    customer_id   VARCHAR NOT NULL,
    period_start  DATE NOT NULL,
    period_end    DATE NOT NULL,
    currency      VARCHAR NOT NULL,
    total_minor   BIGINT NOT NULL,
    total         DECIMAL(38, 2) NOT NULL,
    lines         BIGINT NOT NULL,
    rated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS rules_versions (
    plan           VARCHAR NOT NULL,
    plan_version   VARCHAR NOT NULL,
    rules_hash     VARCHAR NOT NULL,
    currency       VARCHAR NOT NULL,
    effective_from DATE NOT NULL,
    definition     JSON NOT NULL,              -- the canonical JSON the hash covers
    first_rated_at TIMESTAMPTZ NOT NULL
);
