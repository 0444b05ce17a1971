-- The meters that priced rated lines, as they were: a meter's aggregation, counted property or
-- dimensions decide quantities, so editing one re-priced billed periods (max -> sum doubled a
-- month's storage) although every plan version's hash was unchanged. Like rules_versions, a row
-- is written the first time a meter prices a line, and `metering rules validate` and every rating
-- run refuse a meter that differs from it, or is missing.
CREATE TABLE IF NOT EXISTS rated_meters (
    meter           VARCHAR NOT NULL,
    definition_hash VARCHAR NOT NULL,
    definition      JSON NOT NULL,       -- the canonical JSON the hash covers
    first_rated_at  TIMESTAMPTZ NOT NULL
);
