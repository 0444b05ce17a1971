-- Webhook repair: one row per repair run that finished (metering.webhooks.repair).

-- Stripe's GET /v1/events reaches back 30 days only. A repair lists what it can reach, so events
-- missed before that reach are lost to listing for good; knowing when the previous repair listed
-- tells whether such a gap exists (the previous run lies before this run's reach), and the run then
-- re-fetches every invoice and subscription not yet final instead (gap_refetched).
CREATE TABLE IF NOT EXISTS stripe_repair_runs (
    repaired_at       TIMESTAMPTZ NOT NULL,  -- the run's clock when it listed Stripe's events
    listed_from       TIMESTAMPTZ NOT NULL,  -- the oldest `created` the listing could reach (30 days, or --created-gte)
    events_listed     BIGINT NOT NULL,
    events_repaired   BIGINT NOT NULL,
    objects_refetched BIGINT NOT NULL,
    gap_refetched     BIGINT NOT NULL         -- of objects_refetched, those re-read because of a gap (0 without one)
);
