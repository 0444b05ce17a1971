-- Stripe catalog: what our names map to in Stripe (metering/stripe/catalog.py).
-- kind: meter (our_key = meter) | product (our_key = plan) | price (our_key = plan|version|charge)
--       | customer / subscription / test_clock (our_key = customer_id)
--       | subscription_item (our_key = customer_id|plan|version|charge)
CREATE TABLE IF NOT EXISTS stripe_objects (
    kind        VARCHAR NOT NULL,
    our_key     VARCHAR NOT NULL,
    stripe_id   VARCHAR NOT NULL,
    details     JSON,
    synced_at   TIMESTAMPTZ NOT NULL
);

-- One row per our customer: where its usage goes.
CREATE TABLE IF NOT EXISTS stripe_customer_map (
    customer_id         VARCHAR NOT NULL,
    stripe_customer_id  VARCHAR NOT NULL,
    subscription_id     VARCHAR,
    test_clock_id       VARCHAR,
    plan                VARCHAR,
    plan_version        VARCHAR,
    billing_anchor_day  INTEGER,
    synced_at           TIMESTAMPTZ NOT NULL
);

-- Differences between our rules and what already exists in Stripe (never silently changed),
-- and charges Stripe cannot express (e.g. minimums): one row per finding of the latest sync.
CREATE TABLE IF NOT EXISTS stripe_catalog_findings (
    finding     VARCHAR NOT NULL,   -- drift | not_expressible
    kind        VARCHAR NOT NULL,   -- meter | price
    our_key     VARCHAR NOT NULL,
    stripe_id   VARCHAR,
    field       VARCHAR,
    ours        VARCHAR,
    theirs      VARCHAR,
    detail      VARCHAR,
    synced_at   TIMESTAMPTZ NOT NULL
);
