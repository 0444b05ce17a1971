-- Stripe webhooks: receipts of landed deliveries, one row per Stripe event, and landing offsets.
-- No primary keys or indexes (see performance-notes.md); uniqueness is kept by the writers
-- (anti-joins and delete-then-insert inside one transaction).

-- One row per landed record (webhook) or per event fetched by repair. receipt_key is
-- '<landing file>:<line>' for webhooks and 'repair:<event id>' for repair, so re-reading a file or
-- re-running repair never counts a receipt twice.
CREATE TABLE IF NOT EXISTS stripe_webhook_receipts (
    receipt_key   VARCHAR NOT NULL,
    event_id      VARCHAR NOT NULL,
    source        VARCHAR NOT NULL,          -- 'webhook' | 'repair'
    received_at   TIMESTAMPTZ NOT NULL,      -- receiver's clock (webhook) or fetch time (repair)
    landing_file  VARCHAR,                   -- NULL for repair
    line_no       BIGINT,                    -- 1-based line in landing_file; NULL for repair
    raw           JSON NOT NULL,             -- the event exactly as delivered / fetched
    landed_at     TIMESTAMPTZ NOT NULL
);

-- Landing records that could not be read as an event (should never happen: the receiver only
-- lands verified events). Kept, with the reason, so nothing disappears silently.
CREATE TABLE IF NOT EXISTS stripe_webhook_bad_records (
    landing_file  VARCHAR NOT NULL,
    line_no       BIGINT NOT NULL,
    reason        VARCHAR NOT NULL,
    line          VARCHAR,
    landed_at     TIMESTAMPTZ NOT NULL
);

-- How far each landing file has been read.
CREATE TABLE IF NOT EXISTS stripe_landing_offsets (
    landing_file  VARCHAR NOT NULL,
    offset_bytes  BIGINT NOT NULL,
    lines         BIGINT NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL
);

-- One row per Stripe event id: the first receipt's raw JSON, with every receipt counted.
CREATE TABLE IF NOT EXISTS stripe_webhook_events (
    event_id          VARCHAR NOT NULL,
    type              VARCHAR NOT NULL,
    created           TIMESTAMPTZ NOT NULL,
    object_id         VARCHAR,
    object_type       VARCHAR,
    api_version       VARCHAR,
    livemode          BOOLEAN,
    raw               JSON NOT NULL,
    first_received_at TIMESTAMPTZ NOT NULL,
    last_received_at  TIMESTAMPTZ NOT NULL,
    receipt_count     BIGINT NOT NULL,
    source            VARCHAR NOT NULL       -- source of the first receipt: 'webhook' | 'repair'
);

-- Objects re-fetched by repair: the object's state as Stripe returned it at fetch time. Ordered
-- against events by version_created = the newest event `created` known for the object when fetched.
CREATE TABLE IF NOT EXISTS stripe_object_snapshots (
    object_id       VARCHAR NOT NULL,
    object_type     VARCHAR NOT NULL,
    version_created TIMESTAMPTZ NOT NULL,
    fetched_at      TIMESTAMPTZ NOT NULL,
    raw             JSON NOT NULL
);
