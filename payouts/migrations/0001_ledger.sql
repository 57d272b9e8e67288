-- The double-entry ledger (issue 7). Amounts are BIGINT minor units; each account has one
-- currency; a balance is kept in the account's normal direction and may not go below zero
-- unless the account allows it (the CHECK is the database's own guard; the posting code
-- also refuses before writing).
CREATE TABLE ledger_accounts (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    owner           TEXT NOT NULL,
    currency        TEXT NOT NULL,
    normal          TEXT NOT NULL,
    allow_negative  BIGINT NOT NULL,
    balance         BIGINT NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    CHECK (allow_negative = 1 OR balance >= 0)
);

CREATE TABLE ledger_transactions (
    id               TEXT PRIMARY KEY,
    idempotency_key  TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    source           TEXT NOT NULL,
    digest           TEXT NOT NULL,
    reverses         TEXT UNIQUE,
    created_at       TEXT NOT NULL
);

CREATE TABLE ledger_entries (
    transaction_id  TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    account_id      TEXT NOT NULL,
    side            TEXT NOT NULL,
    amount          BIGINT NOT NULL,
    currency        TEXT NOT NULL,
    PRIMARY KEY (transaction_id, seq),
    CHECK (amount > 0),
    CHECK (side IN ('D', 'C'))
);

CREATE INDEX ledger_entries_by_account ON ledger_entries (account_id, transaction_id);

CREATE INDEX ledger_transactions_by_time ON ledger_transactions (created_at);

-- Studies and their incentive schedules; one credit per (study, patient, survey).
CREATE TABLE studies (
    id                 TEXT PRIMARY KEY,
    sponsor            TEXT NOT NULL,
    questionnaires     TEXT NOT NULL,
    currency           TEXT NOT NULL,
    enrollment_minor   BIGINT NOT NULL,
    per_survey_minor   BIGINT NOT NULL,
    survey_cap_minor   BIGINT NOT NULL,
    patient_cap_minor  BIGINT NOT NULL,
    created_at         TEXT NOT NULL
);

CREATE TABLE survey_credits (
    study           TEXT NOT NULL,
    patient         TEXT NOT NULL,
    survey          TEXT NOT NULL,
    transaction_id  TEXT,
    amount_minor    BIGINT NOT NULL,
    credited_at     TEXT NOT NULL,
    PRIMARY KEY (study, patient, survey)
);

-- License fees: invoices and the contributors snapshotted when each was issued.
CREATE TABLE stripe_customers (
    organization  TEXT PRIMARY KEY,
    customer_id   TEXT NOT NULL
);

CREATE TABLE invoices (
    id                 TEXT PRIMARY KEY,
    license            TEXT NOT NULL,
    organization       TEXT NOT NULL,
    provider           TEXT NOT NULL,
    provider_ref       TEXT,
    currency           TEXT NOT NULL,
    amount_minor       BIGINT NOT NULL,
    patient_share_bps  BIGINT NOT NULL,
    status             TEXT NOT NULL,
    created_at         TEXT NOT NULL,
    paid_at            TEXT
);

CREATE TABLE invoice_contributors (
    invoice  TEXT NOT NULL,
    patient  TEXT NOT NULL,
    weight   BIGINT NOT NULL,
    PRIMARY KEY (invoice, patient)
);

-- Advocacy organizations that receive donations (each has a Stripe connected account).
CREATE TABLE advocacy_orgs (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    disease         TEXT NOT NULL,
    stripe_account  TEXT NOT NULL,
    created_at      TEXT NOT NULL
);

-- What each patient wants done with their balance, and the holds on paying them.
CREATE TABLE payout_prefs (
    patient         TEXT PRIMARY KEY,
    choice          TEXT NOT NULL,
    destination     TEXT,
    currency        TEXT NOT NULL,
    minimum_minor   BIGINT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE identity_checks (
    patient       TEXT PRIMARY KEY,
    status        TEXT NOT NULL,
    provider_ref  TEXT,
    updated_at    TEXT NOT NULL
);

CREATE TABLE tax_forms (
    patient      TEXT NOT NULL,
    form         TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    PRIMARY KEY (patient, form)
);

-- Payouts: reserved -> submitting -> submitted -> posted, or voided; each step once.
CREATE TABLE payouts (
    id               TEXT PRIMARY KEY,
    patient          TEXT NOT NULL,
    rail             TEXT NOT NULL,
    kind             TEXT NOT NULL,
    destination      TEXT NOT NULL,
    currency         TEXT NOT NULL,
    amount_minor     BIGINT NOT NULL,
    status           TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    provider_ref     TEXT,
    claim_url        TEXT,
    attempts         BIGINT NOT NULL,
    failure          TEXT,
    tax_year         BIGINT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    CHECK (amount_minor > 0)
);

CREATE INDEX payouts_by_patient ON payouts (patient, created_at);

CREATE INDEX payouts_by_status ON payouts (status);

-- Webhook events already handled, per provider.
CREATE TABLE webhook_events (
    provider     TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    outcome      TEXT NOT NULL,
    received_at  TEXT NOT NULL,
    PRIMARY KEY (provider, event_id)
);
