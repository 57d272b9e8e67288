-- Metering (issue 5): one row per completed query under a license, for rate limits and quotas.
CREATE TABLE usage_log (
    license  TEXT NOT NULL,
    at_ms    BIGINT NOT NULL,
    result_rows BIGINT NOT NULL
);

CREATE INDEX usage_log_by_license ON usage_log (license, at_ms)
