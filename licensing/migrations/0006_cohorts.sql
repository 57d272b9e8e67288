-- Saved cohort definitions (issue 8): an analyst's inclusion and exclusion criteria, kept per
-- license and evaluated by the query service in every session of that license as the table
-- cohort_<name>. The definition is the analyst's JSON (codes, ages, dates: no identified data).
CREATE TABLE IF NOT EXISTS cohort_definitions (
    license TEXT NOT NULL,
    name TEXT NOT NULL,
    definition TEXT NOT NULL,
    saved_at_ms BIGINT NOT NULL,
    saved_by TEXT NOT NULL,
    PRIMARY KEY (license, name)
)
