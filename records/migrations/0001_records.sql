-- Records from providers (issue 20). Nothing here is identified in plaintext: patients are named
-- by the catalog's random id, providers by their published directory entries, and what is a
-- secret or identifies someone (tokens, PKCE verifiers) is sealed under the patient's data key.

-- Identity proofing: one row per attempt at a provider (a Persona inquiry, a Stripe Identity
-- verification session). The latest attempt of a patient is their status.
CREATE TABLE identity_verifications (
    id TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_ref TEXT NOT NULL,
    assurance TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    -- the provider's time of the newest event applied: an older event arriving late is not applied
    last_event_at TEXT NOT NULL,
    UNIQUE (provider, provider_ref)
);
CREATE INDEX identity_verifications_patient ON identity_verifications (patient, created_at);

-- Webhook events seen, per provider: a repeated delivery is recognized and changes nothing.
CREATE TABLE identity_events (
    provider TEXT NOT NULL,
    event_id TEXT NOT NULL,
    received_at TEXT NOT NULL,
    outcome TEXT NOT NULL,
    PRIMARY KEY (provider, event_id)
);

-- The provider directory: FHIR endpoints of certified EHRs with the organizations they serve,
-- loaded from Endpoint/Organization bundles as the vendors publish them.
CREATE TABLE provider_endpoints (
    id TEXT PRIMARY KEY,
    organization TEXT NOT NULL,
    fhir_base TEXT NOT NULL,
    city TEXT,
    region TEXT,
    client_id TEXT,
    directory TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- A patient's connection to one endpoint through SMART on FHIR.
CREATE TABLE provider_connections (
    id TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    state TEXT NOT NULL,
    -- SHA-256 of the OAuth `state` parameter while the patient is at the provider
    oauth_state_hash TEXT,
    -- sealed under the patient's data key: the PKCE verifier while authorizing, then the tokens
    secret BYTEA,
    source TEXT NOT NULL,
    last_sync_at TEXT,
    last_error TEXT,
    resources_fetched BIGINT NOT NULL DEFAULT 0,
    -- while a sync runs: until when it holds the connection (one sync at a time, across
    -- processes; a crashed sync's lease runs out)
    sync_lease TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX provider_connections_patient ON provider_connections (patient);
CREATE UNIQUE INDEX provider_connections_state ON provider_connections (oauth_state_hash);

-- Right-of-access requests (45 CFR 164.524) to providers without an API.
CREATE TABLE access_requests (
    id TEXT PRIMARY KEY,
    patient TEXT NOT NULL,
    provider TEXT NOT NULL,
    provider_name TEXT NOT NULL,
    state TEXT NOT NULL,
    prepared_at TEXT NOT NULL,
    sent_at TEXT,
    acknowledged_at TEXT,
    due_at TEXT,
    extended_due_at TEXT,
    extension_reason TEXT,
    fee_minor BIGINT,
    fee_currency TEXT,
    received_at TEXT,
    completeness TEXT,
    follow_ups BIGINT NOT NULL DEFAULT 0,
    next_follow_up_at TEXT,
    escalated_at TEXT,
    closed_at TEXT,
    updated_at TEXT NOT NULL
);
CREATE INDEX access_requests_patient ON access_requests (patient);

-- Every step of a request, in order: what the scorecard is computed from.
CREATE TABLE access_request_events (
    request_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT,
    PRIMARY KEY (request_id, seq)
);
