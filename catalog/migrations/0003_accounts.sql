-- Patients' accounts (issue 19): who may sign in to the patients' pages, for which patients,
-- with which one-time links and sessions. Identified values (the e-mail address, a display
-- name) are sealed like every other identified value; the plaintext columns hold random ids,
-- keyed hashes and times. Secrets (link and session tokens) are stored only as keyed hashes.

-- Where a record came from: the ingest source it arrived through (`--source`; NULL for
-- records stored before this column existed).
ALTER TABLE records ADD COLUMN source TEXT;

CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY,
    -- Keyed blind index of the normalized (trimmed, lowercased) e-mail address; NULL until
    -- the account has one (an account made from an operator's link).
    email_index TEXT UNIQUE,
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    sealed BYTEA NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- Whom an account acts for: the patient themself (`self`) or, for a caregiver, the patient
-- and the relation (HL7 v3 RoleCode-style: parent, guardian, spouse, child, other).
CREATE TABLE account_patients (
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    patient_id TEXT NOT NULL REFERENCES patients (patient_id),
    relation TEXT NOT NULL,
    linked_at TEXT NOT NULL,
    linked_by TEXT NOT NULL,
    PRIMARY KEY (account_id, patient_id)
);

CREATE INDEX account_patients_by_patient ON account_patients (patient_id);

-- One-time sign-in links (e-mailed, or an operator's invitation): single use, short-lived.
CREATE TABLE sign_in_links (
    token_hash TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    kind TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
);

CREATE INDEX sign_in_links_by_account ON sign_in_links (account_id, created_at);

-- Browser sessions: the cookie holds the token; only its keyed hash is stored.
CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    patient_id TEXT NOT NULL REFERENCES patients (patient_id),
    method TEXT NOT NULL,
    -- The browser as its user agent names itself, coarsely ("Chrome on Linux").
    label TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    last_seen_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE INDEX sessions_by_account ON sessions (account_id, created_at);

-- Passkeys (WebAuthn credentials) of accounts: the credential id (base64url) finds the account;
-- `credential` is the relying party's record of it (public key, counter, flags: webauthn-rs's
-- `Passkey` as JSON). Public keys are not secret, but which account holds one is, so the row is
-- found only by its credential id.
CREATE TABLE passkeys (
    credential_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    -- The WebAuthn user handle the authenticator returns (a random UUID per account).
    user_handle TEXT NOT NULL,
    credential TEXT NOT NULL,
    label TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT
);

CREATE INDEX passkeys_by_account ON passkeys (account_id);

-- Shares (SMART Health Links) a patient made of their data for a clinician or relative. The
-- snapshot is a compact JWE under the link's key; the key is sealed here too, so that Tessera
-- can also show the share as a plain page to whoever holds the link (and the passcode).
CREATE TABLE shares (
    share_id TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients (patient_id),
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    -- Sealed JSON: label, what it holds, the link's key.
    sealed BYTEA NOT NULL,
    jwe TEXT NOT NULL,
    -- PBKDF2-HMAC-SHA256 of the passcode (salt:hash, hex), NULL when none.
    passcode_hash TEXT,
    attempts_left BIGINT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE INDEX shares_by_patient ON shares (patient_id, created_at);

-- Every use of a share: the manifest, the file, the plain page; with the outcome.
CREATE TABLE share_views (
    view_id TEXT PRIMARY KEY,
    share_id TEXT NOT NULL REFERENCES shares (share_id),
    at TEXT NOT NULL,
    what TEXT NOT NULL,
    outcome TEXT NOT NULL,
    -- Sealed: who the viewer said they are (SMART Health Links' `recipient`).
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    recipient BYTEA NOT NULL
);

CREATE INDEX share_views_by_share ON share_views (share_id, at);

-- Study questionnaires patients answer on their pages (FHIR R4 Questionnaire JSON: not
-- identified data), each with the study whose incentive it earns.
CREATE TABLE questionnaires (
    questionnaire_id TEXT PRIMARY KEY,
    url TEXT NOT NULL UNIQUE,
    version TEXT,
    title TEXT NOT NULL,
    study TEXT,
    resource TEXT NOT NULL,
    added_at TEXT NOT NULL
);

-- A survey a patient saved to finish later: the form's fields, sealed.
CREATE TABLE survey_drafts (
    patient_id TEXT NOT NULL REFERENCES patients (patient_id),
    questionnaire_id TEXT NOT NULL REFERENCES questionnaires (questionnaire_id),
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    sealed BYTEA NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (patient_id, questionnaire_id)
)
