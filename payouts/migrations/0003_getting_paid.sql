-- Getting paid as a person expects (issue 19): a sentence about each advocacy organization, and
-- the Stripe connected account a patient opened through Stripe's hosted onboarding, with what
-- Stripe last said of it.
ALTER TABLE advocacy_orgs ADD COLUMN description TEXT NOT NULL DEFAULT '';

CREATE TABLE connect_accounts (
    patient          TEXT PRIMARY KEY,
    account          TEXT NOT NULL UNIQUE,
    -- `onboarding` (details not yet submitted), `pending` (submitted, payouts not yet enabled),
    -- `enabled` (Stripe pays out to it), `restricted` (Stripe needs more before paying).
    status           TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
