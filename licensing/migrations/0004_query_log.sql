-- Query service (issue 6): each completed query also records the distinct persons whose data
-- contributed (what payouts read), and, for aggregate queries, two fingerprints of the plan:
-- the plan as run (the same aggregate) and the plan with its literal values masked (a
-- near-identical one), so that repeats within a window can be counted against differencing.
ALTER TABLE usage_log ADD COLUMN persons BIGINT;
ALTER TABLE usage_log ADD COLUMN fingerprint TEXT;
ALTER TABLE usage_log ADD COLUMN shape TEXT;
CREATE INDEX usage_log_by_fingerprint ON usage_log (license, fingerprint, at_ms);
CREATE INDEX usage_log_by_shape ON usage_log (license, shape, at_ms)
