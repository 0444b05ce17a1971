-- Stripe usage push: the outbox ledger and one row per push run (metering/stripe/push.py).
-- One ledger row per customer x meter x window x revision. Rows are written and committed before
-- any call; the identifier and Idempotency-Key are derived from (customer, meter, window, revision).
-- status: pending | sent (attempt started, outcome not yet recorded) | acknowledged | failed
--         | unknown | late (not pushable: > 35 days old or invoice finalized; for finance)
--         | superseded (a newer revision of the same window replaced it before it was acknowledged)
CREATE TABLE IF NOT EXISTS stripe_push_ledger (
    customer_id        VARCHAR NOT NULL,
    meter              VARCHAR NOT NULL,
    window_start       TIMESTAMPTZ NOT NULL,
    window_end         TIMESTAMPTZ NOT NULL,
    revision           INTEGER NOT NULL,
    value              DECIMAL(38, 12) NOT NULL,
    identifier         VARCHAR NOT NULL,
    idempotency_key    VARCHAR NOT NULL,
    status             VARCHAR NOT NULL,
    attempts           INTEGER NOT NULL DEFAULT 0,
    first_attempt_at   TIMESTAMPTZ,
    last_attempt_at    TIMESTAMPTZ,
    last_error         VARCHAR,
    stripe_request_id  VARCHAR,
    created_at         TIMESTAMPTZ NOT NULL,
    -- added by the push (beyond the contract)
    window_kind        VARCHAR NOT NULL,          -- day | hour
    event_date         DATE NOT NULL,             -- the UTC date of window_start (the push partition)
    event_name         VARCHAR NOT NULL,          -- metering_<meter>
    stripe_customer_id VARCHAR,                   -- the destination at the time of the revision
    event_timestamp    TIMESTAMPTZ NOT NULL,      -- meter event timestamp: window_start + revision seconds
    raw_events         BIGINT NOT NULL DEFAULT 0, -- raw usage events behind the value
    last_http_status   INTEGER,
    resolved_by        VARCHAR,                   -- response | summary
    updated_at         TIMESTAMPTZ NOT NULL
);

CREATE TABLE IF NOT EXISTS stripe_push_runs (
    run_id              VARCHAR NOT NULL,
    started_at          TIMESTAMPTZ NOT NULL,
    finished_at         TIMESTAMPTZ,
    date_from           DATE NOT NULL,
    date_to             DATE NOT NULL,             -- inclusive
    window_kind         VARCHAR NOT NULL,
    windows_considered  BIGINT,
    new_revisions       BIGINT,
    calls               BIGINT,                    -- HTTP attempts to create meter events
    retries             BIGINT,
    rate_limited        BIGINT,
    acknowledged        BIGINT,
    failed              BIGINT,
    unknown             BIGINT,
    pending             BIGINT,
    late                BIGINT,
    unmapped            BIGINT,                    -- windows skipped: customer not synced to Stripe
    summary_checks      BIGINT,
    raw_events          BIGINT,                    -- raw usage events behind the events sent
    seconds             DOUBLE                     -- wall time (not money)
);
