-- Research releases (issue 4): one row per published version; its files live under the data
-- directory. A row is written only after every file of the version is written and hashed.
CREATE TABLE releases (
    family         TEXT NOT NULL,
    version        BIGINT NOT NULL,
    purpose        TEXT NOT NULL,
    status         TEXT NOT NULL,
    built_at       TEXT NOT NULL,
    consent_at     TEXT NOT NULL,
    policy_sha256  TEXT NOT NULL,
    path           TEXT NOT NULL,
    manifest       TEXT NOT NULL,
    retired_at     TEXT,
    PRIMARY KEY (family, version)
);

-- The patients whose data a version holds (internal ids; never in the release files), for
-- sharing license revenue with them later.
CREATE TABLE release_contributors (
    family      TEXT NOT NULL,
    version     BIGINT NOT NULL,
    patient_id  TEXT NOT NULL,
    PRIMARY KEY (family, version, patient_id)
);
