-- Differential privacy (issue 17). `privacy_spend` is each license's running zCDP spend, in
-- nano-rho, updated only by a conditional UPDATE that refuses to pass the budget (atomic on
-- SQLite and PostgreSQL alike). `dp_answers` keeps every noisy answer released, keyed by the
-- license, the release versions read and the bound plan's fingerprint, so that asking again
-- returns the same answer at no cost (repeating a query reveals nothing new). An answer is
-- Arrow IPC of the noisy, thresholded result: no exact value is stored.
CREATE TABLE IF NOT EXISTS privacy_spend (
    license TEXT PRIMARY KEY,
    spent_nano BIGINT NOT NULL,
    answers BIGINT NOT NULL,
    delta_spent_pico BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS dp_answers (
    license TEXT NOT NULL,
    answer_key TEXT NOT NULL,
    answer BYTEA NOT NULL,
    rho_nano BIGINT NOT NULL,
    created_ms BIGINT NOT NULL,
    PRIMARY KEY (license, answer_key)
)
