-- Dunning: the state of every failed invoice, the exactly-once actions ledger, the reminder outbox
-- and the published suspensions. Amounts are BIGINT minor units (Stripe's integers); times are UTC.
-- Every time column comes from the dunning clock (the `now` of the run), never the wall clock, so a
-- run replayed after a crash gives the same rows as an uninterrupted one.

CREATE TABLE IF NOT EXISTS dunning_state (
    invoice_id           VARCHAR NOT NULL,     -- one row per invoice that ever failed a payment
    customer_id          VARCHAR,              -- ours (invoice metadata), when known
    stripe_customer      VARCHAR,
    subscription_id      VARCHAR,
    plan                 VARCHAR,              -- the customer's plan when known (selects the schedule)
    policy               VARCHAR NOT NULL,     -- 'default' or the plan whose override applies
    currency             VARCHAR NOT NULL,
    amount_due           BIGINT,
    amount_paid          BIGINT,
    amount_remaining     BIGINT,
    invoice_status       VARCHAR,              -- Stripe's status as reconciled from webhooks
    attempt_count        BIGINT,
    next_payment_attempt TIMESTAMPTZ,          -- Stripe's next automatic retry (NULL = none scheduled)
    first_failed_at      TIMESTAMPTZ NOT NULL, -- day 0 of the schedule
    state                VARCHAR NOT NULL,     -- not_in_dunning | in_dunning | recovered | written_off | void
    step_index           INTEGER,              -- in_dunning: the latest step reached (NULL before the first)
    step_name            VARCHAR,
    step_action          VARCHAR,
    next_step_name       VARCHAR,
    next_step_at         TIMESTAMPTZ,
    reason               VARCHAR NOT NULL,     -- why the invoice is in this state
    entered_at           TIMESTAMPTZ,          -- when dunning started (= first_failed_at)
    closed_at            TIMESTAMPTZ,          -- when it left dunning (recovered / written off / void)
    evaluated_at         TIMESTAMPTZ NOT NULL, -- the dunning clock of the run that computed the row
    policy_hash          VARCHAR NOT NULL
);

CREATE TABLE IF NOT EXISTS dunning_actions (
    idempotency_key   VARCHAR NOT NULL,        -- 'dunning:<invoice>:<step>': one row per (invoice, step), ever
    invoice_id        VARCHAR NOT NULL,
    step_index        INTEGER NOT NULL,
    step_name         VARCHAR NOT NULL,
    action            VARCHAR NOT NULL,        -- reminder | retry | suspend | write_off
    customer_id       VARCHAR,
    stripe_customer   VARCHAR,
    currency          VARCHAR NOT NULL,
    amount_minor      BIGINT NOT NULL,         -- amount remaining when the action was decided
    attempt_count     BIGINT,                  -- Stripe's attempt_count when the action was decided
    status            VARCHAR NOT NULL,        -- pending | done | skipped | rejected | superseded
    outcome           VARCHAR,                 -- e.g. rendered, sent, paid, card_declined, uncollectible, superseded_by:<step>
    due_at            TIMESTAMPTZ NOT NULL,    -- first_failed_at + the step's day offset
    created_at        TIMESTAMPTZ NOT NULL,    -- dunning clock when the row was written (pending)
    completed_at      TIMESTAMPTZ,             -- dunning clock when it reached a final status
    attempts          INTEGER NOT NULL,        -- how many runs tried it (crashes and outages add attempts)
    last_error        VARCHAR,                 -- redacted
    stripe_request_id VARCHAR,
    message_id        VARCHAR                  -- reminders: the outbox message
);

CREATE TABLE IF NOT EXISTS dunning_outbox (
    message_id      VARCHAR NOT NULL,          -- deterministic, from the idempotency key
    idempotency_key VARCHAR NOT NULL,
    invoice_id      VARCHAR NOT NULL,
    customer_id     VARCHAR,
    stripe_customer VARCHAR,
    to_address      VARCHAR,                   -- NULL when no email is known
    subject         VARCHAR NOT NULL,
    body            VARCHAR NOT NULL,
    file_name       VARCHAR NOT NULL,          -- the .eml file in the outbox folder
    rendered_at     TIMESTAMPTZ NOT NULL,
    status          VARCHAR NOT NULL,          -- rendered | sent | send_failed
    sent_at         TIMESTAMPTZ,
    last_error      VARCHAR
);

CREATE TABLE IF NOT EXISTS suspensions (
    stripe_customer        VARCHAR NOT NULL,   -- one row per customer currently suspended
    customer_id            VARCHAR,
    currency               VARCHAR NOT NULL,
    invoice_ids            VARCHAR NOT NULL,   -- the unpaid invoices behind it, sorted, comma-separated
    amount_remaining_minor BIGINT NOT NULL,
    amount_remaining       VARCHAR NOT NULL,   -- exact decimal text in the major unit
    suspended_since        TIMESTAMPTZ NOT NULL,
    published_at           TIMESTAMPTZ NOT NULL
);
