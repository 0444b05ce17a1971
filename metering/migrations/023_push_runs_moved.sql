-- Windows a push held because a previous Stripe customer of ours still holds their usage (the
-- customer was mapped to another Stripe customer since): counted per run, as failed and unknown are.
ALTER TABLE stripe_push_runs ADD COLUMN IF NOT EXISTS moved BIGINT;
