-- Catalog schema, version 1. Written in the SQL that both SQLite and PostgreSQL accept:
-- TEXT, BIGINT and BYTEA columns, no autoincrement (ids are made by the application),
-- timestamps as RFC 3339 UTC text (which sorts chronologically).
-- Identified content lives only in the sealed BYTEA columns (AES-256-GCM, see crypto.rs);
-- plaintext columns hold random ids, keyed blind indexes, codes and counts.

CREATE TABLE patients (
    patient_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    identity BYTEA NOT NULL,
    identity_hash TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE patient_keys (
    blind_index TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients (patient_id),
    -- identifier | logical_id | full_url; logical ids are scoped to their ingest source.
    kind TEXT NOT NULL,
    source TEXT NOT NULL
);

CREATE INDEX patient_keys_by_patient ON patient_keys (patient_id);

CREATE TABLE records (
    record_id TEXT PRIMARY KEY,
    patient_id TEXT REFERENCES patients (patient_id),
    kind TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    payload BYTEA NOT NULL,
    ingested_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE INDEX records_by_patient ON records (patient_id, kind);

CREATE TABLE ingest_runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    source TEXT NOT NULL,
    files BIGINT NOT NULL,
    bytes BIGINT NOT NULL,
    patients_new BIGINT NOT NULL,
    patients_updated BIGINT NOT NULL,
    records_added BIGINT NOT NULL,
    records_updated BIGINT NOT NULL,
    records_unchanged BIGINT NOT NULL,
    quarantined BIGINT NOT NULL
);

CREATE TABLE quarantine (
    quarantine_id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    file_sha256 TEXT NOT NULL,
    entry_index BIGINT,
    field TEXT NOT NULL,
    reason TEXT NOT NULL,
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    detail BYTEA NOT NULL,
    first_seen_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL
);

CREATE INDEX quarantine_by_time ON quarantine (last_seen_at);

CREATE TABLE consent_events (
    event_id TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients (patient_id),
    purpose TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('grant', 'revoke')),
    scope TEXT NOT NULL,
    valid_from TEXT NOT NULL,
    valid_until TEXT,
    recorded_at TEXT NOT NULL,
    seq BIGINT NOT NULL,
    actor TEXT NOT NULL,
    UNIQUE (patient_id, purpose, seq)
);

CREATE INDEX consent_by_purpose ON consent_events (purpose, patient_id, seq);

-- One sealed canary per master key that has written to this database: opening the catalog with
-- a key that is not among them is refused, instead of silently starting a second, unreadable
-- set of blind indexes.
CREATE TABLE key_checks (
    key_id TEXT PRIMARY KEY,
    nonce BYTEA NOT NULL,
    sealed BYTEA NOT NULL,
    created_at TEXT NOT NULL
);
