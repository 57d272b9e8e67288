-- A patient's deletion (issue 19): the patients row stays as a tombstone (its id is what the
-- consent history, release contributors and the payouts ledger name, all kept as law requires)
-- with its identity emptied; every record, link, account, share and draft is deleted, and the
-- patient's data key destroyed in the key vault (crypto-shredding: copies in backups do not open).
ALTER TABLE patients ADD COLUMN deleted_at TEXT;
-- Who asked: `patient`, `caregiver:<relation>` or `operator`.
ALTER TABLE patients ADD COLUMN deleted_by TEXT;
