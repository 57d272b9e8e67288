-- Organizations, licenses with their signed terms, and API keys (issue 5).
CREATE TABLE organizations (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE licenses (
    id            TEXT PRIMARY KEY,
    organization  TEXT NOT NULL REFERENCES organizations (id),
    status        TEXT NOT NULL,
    body          TEXT NOT NULL,
    signed        TEXT,
    updated_at    TEXT NOT NULL
);

-- Keys are stored only as an HMAC of their secret.
CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    principal     TEXT NOT NULL,
    organization  TEXT,
    licenses      TEXT NOT NULL,
    secret_hmac   TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    expires_at    TEXT,
    revoked_at    TEXT
);
