-- The audit log (issue 5): append-only and hash-chained; see licensing/src/audit.rs.
CREATE TABLE audit_log (
    seq           BIGINT PRIMARY KEY,
    at            TEXT NOT NULL,
    principal     TEXT NOT NULL,
    license       TEXT,
    action        TEXT NOT NULL,
    resource      TEXT NOT NULL,
    decision      TEXT NOT NULL,
    query_sha256  TEXT,
    result_rows   BIGINT,
    persons       BIGINT,
    prev_hash     TEXT NOT NULL,
    hash          TEXT NOT NULL
);
