-- Rating adjustments (invariant I19: a closed period changes only through adjustment rows that carry a
-- reason and a link). A billing period is closed once it has ended (by the rating date). Every change
-- rating makes to a closed period's lines is recorded here, per customer x period x charge, in the
-- transaction that changes rated_usage: rated_usage holds the period as it is now, these rows say how
-- it got there and why.
CREATE TABLE IF NOT EXISTS rating_adjustments (
    customer_id   VARCHAR NOT NULL,
    period_start  DATE NOT NULL,
    period_end    DATE NOT NULL,             -- exclusive
    currency      VARCHAR NOT NULL,
    charge        VARCHAR NOT NULL,          -- the charge's name (its plan version may differ before and after)
    before_minor  BIGINT NOT NULL,           -- the charge's amount in the period before (0: it had no line)
    after_minor   BIGINT NOT NULL,
    delta_minor   BIGINT NOT NULL,           -- after_minor - before_minor, never 0
    reason        VARCHAR NOT NULL,          -- 'late_usage', or the operator's reason (rerate --adjust-closed)
    link          JSON NOT NULL,             -- the cause: the files whose events arrived after the last rating,
                                             -- or the customer list (path and sha256) an operator re-rated with
    adjusted_at   TIMESTAMPTZ NOT NULL
);
