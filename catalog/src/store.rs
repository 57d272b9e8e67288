//! All of the catalog's SQL. One dialect for SQLite and PostgreSQL (`$n` placeholders, TEXT /
//! BIGINT / BYTEA, `ON CONFLICT`), run through sqlx's `Any` driver so both backends share every
//! code path. Nothing outside this module writes SQL.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
// Dynamic SQL here is built only from fixed text and `$n` placeholders, never from input,
// which is what `AssertSqlSafe` asserts.
use sqlx::{Any, AnyPool, AssertSqlSafe, Row, Transaction};

use crate::crypto::Sealed;
use crate::error::{CatalogError, Result, StoreContext};

/// Which database is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A schema change: applied once, in order, recorded in `tessera_migrations` under its
/// component.
#[derive(Debug)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "catalog",
        sql: include_str!("../migrations/0001_catalog.sql"),
    },
    Migration {
        version: 2,
        name: "releases",
        sql: include_str!("../migrations/0002_releases.sql"),
    },
    Migration {
        version: 3,
        name: "accounts",
        sql: include_str!("../migrations/0003_accounts.sql"),
    },
    Migration {
        version: 4,
        name: "deletion",
        sql: include_str!("../migrations/0004_deletion.sql"),
    },
];

/// Bound parameters per bulk statement: below SQLite's 32,766 and PostgreSQL's 65,535 limits.
const MAX_PARAMS: usize = 2000;

/// The current time as stored: RFC 3339 UTC with microseconds (sorts as it reads).
pub fn now_text() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// A record ready to insert.
#[derive(Debug)]
pub struct RecordRow<'a> {
    pub record_id: &'a str,
    pub patient_id: Option<&'a str>,
    pub kind: &'a str,
    pub resource_type: &'a str,
    pub content_hash: &'a str,
    pub sealed: &'a Sealed,
    /// The ingest source it arrived through.
    pub source: &'a str,
}

/// A quarantine entry ready to upsert.
#[derive(Debug)]
pub struct QuarantineRow {
    pub quarantine_id: String,
    pub file_sha256: String,
    pub entry_index: Option<i64>,
    pub field: String,
    pub reason: String,
    pub sealed_detail: Sealed,
}

/// A quarantine entry as listed.
#[derive(Debug, Clone)]
pub struct QuarantineListRow {
    pub quarantine_id: String,
    pub run_id: String,
    pub file_sha256: String,
    pub entry_index: Option<i64>,
    pub field: String,
    pub reason: String,
    pub sealed_detail: Sealed,
    pub first_seen_at: String,
    pub last_seen_at: String,
}

/// A consent event row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentRow {
    pub event_id: String,
    pub patient_id: String,
    pub purpose: String,
    pub action: String,
    pub scope: String,
    pub valid_from: String,
    pub valid_until: Option<String>,
    pub recorded_at: String,
    pub seq: i64,
    pub actor: String,
}

/// What a patient's deletion removed, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeletedRows {
    pub records: u64,
    pub shares: u64,
    pub drafts: u64,
    pub accounts: u64,
    pub account_links: u64,
}

/// Totals of one ingest run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunTotals {
    pub files: i64,
    pub bytes: i64,
    pub patients_new: i64,
    pub patients_updated: i64,
    pub records_added: i64,
    pub records_updated: i64,
    pub records_unchanged: i64,
    pub quarantined: i64,
}

/// Rows of `records` as (`first`, `second`, sealed payload).
fn sealed_records(
    rows: &[AnyRow],
    first: &str,
    second: &str,
) -> Result<Vec<(String, String, Sealed)>> {
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get(first).ctx("reading records")?,
                r.try_get(second).ctx("reading records")?,
                sealed_from(r, "key_id", "nonce", "payload")?,
            ))
        })
        .collect()
}

fn sealed_from(row: &AnyRow, key: &str, nonce: &str, data: &str) -> Result<Sealed> {
    Ok(Sealed {
        key_id: row.try_get(key).ctx("reading a sealed value")?,
        nonce: row.try_get(nonce).ctx("reading a sealed value")?,
        ciphertext: row.try_get(data).ctx("reading a sealed value")?,
    })
}

/// `n` placeholders for parameters bound in order, numbered from `first`. PostgreSQL gets
/// `$first, $first+1, ...`; SQLite gets anonymous `?`s, because it finds a numbered parameter
/// by scanning a list, so binding n of them costs n² (it dominated ingest). Bulk statements are
/// built only from these, binding every parameter once, in order.
fn placeholders(backend: Backend, first: usize, n: usize) -> String {
    match backend {
        Backend::Sqlite => vec!["?"; n].join(", "),
        Backend::Postgres => (first..first + n)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Appends a consent event inside a transaction; its `seq` is one past the last for that
/// patient and purpose.
async fn insert_consent(tx: &mut Transaction<'_, Any>, row: &mut ConsentRow) -> Result<()> {
    let last: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(seq) FROM consent_events WHERE patient_id = $1 AND purpose = $2",
    )
    .bind(&row.patient_id)
    .bind(&row.purpose)
    .fetch_one(&mut **tx)
    .await
    .ctx("reading consent history")?;
    row.seq = last.unwrap_or(0) + 1;
    sqlx::query(
        "INSERT INTO consent_events
           (event_id, patient_id, purpose, action, scope, valid_from, valid_until, recorded_at, seq, actor)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&row.event_id)
    .bind(&row.patient_id)
    .bind(&row.purpose)
    .bind(&row.action)
    .bind(&row.scope)
    .bind(&row.valid_from)
    .bind(&row.valid_until)
    .bind(&row.recorded_at)
    .bind(row.seq)
    .bind(&row.actor)
    .execute(&mut **tx)
    .await
    .ctx("recording a consent event")?;
    Ok(())
}

/// A pool on `url`. SQLite connections get WAL, full syncs and foreign keys; `secure_delete`
/// (the key vault's) also zeroes deleted content in the file, so a destroyed key's bytes do
/// not linger in free pages.
/// Opens a pool on the catalog's database (same pragmas) for another crate's tables and
/// brings them up to date: `migrations` recorded under `component` in `tessera_migrations`.
/// The records crate keeps its tables this way.
pub async fn connect_component(
    url: &str,
    component: &'static str,
    migrations: &[Migration],
) -> Result<AnyPool> {
    let (pool, _) = connect_pool(url, false).await?;
    apply_migrations(&pool, component, migrations).await?;
    Ok(pool)
}

/// Applies `migrations` not yet recorded for `component`, each in a transaction of its own.
async fn apply_migrations(
    pool: &AnyPool,
    component: &'static str,
    migrations: &[Migration],
) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS tessera_migrations (
            component TEXT NOT NULL,
            version BIGINT NOT NULL,
            name TEXT NOT NULL,
            applied_at TEXT NOT NULL,
            PRIMARY KEY (component, version))",
    )
    .execute(pool)
    .await
    .ctx("creating the migrations table")?;
    for m in migrations {
        let mut tx = pool.begin().await.ctx("starting a migration")?;
        let done: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM tessera_migrations WHERE component = $1 AND version = $2",
        )
        .bind(component)
        .bind(m.version)
        .fetch_optional(&mut *tx)
        .await
        .ctx("reading applied migrations")?;
        if done.is_some() {
            continue;
        }
        for statement in split_sql(m.sql) {
            sqlx::query(AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await
                .ctx("applying a migration")?;
        }
        sqlx::query(
            "INSERT INTO tessera_migrations (component, version, name, applied_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(component)
        .bind(m.version)
        .bind(m.name)
        .bind(now_text())
        .execute(&mut *tx)
        .await
        .ctx("recording a migration")?;
        tx.commit().await.ctx("committing a migration")?;
        tracing::info!(
            component,
            version = m.version,
            name = m.name,
            "applied migration"
        );
    }
    Ok(())
}

async fn connect_pool(url: &str, secure_delete: bool) -> Result<(AnyPool, Backend)> {
    sqlx::any::install_default_drivers();
    let backend = if url.starts_with("sqlite:") {
        Backend::Sqlite
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Backend::Postgres
    } else {
        return Err(CatalogError::invalid(
            "the database URL must start with sqlite: or postgres: (for example sqlite://tessera-data/tessera.db)",
        ));
    };
    let options = AnyConnectOptions::from_str(url)
        .map_err(|e| CatalogError::invalid(format!("the database URL is not valid: {e}")))?;
    let pool = AnyPoolOptions::new()
        .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
        .acquire_timeout(Duration::from_secs(30))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if backend == Backend::Sqlite {
                    // WAL lets readers run beside the writer; FULL syncs every commit.
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA synchronous = FULL",
                        "PRAGMA foreign_keys = ON",
                        "PRAGMA busy_timeout = 10000",
                        // 64 MiB of page cache: ingest inserts by random keys, and the
                        // default 2 MiB cache evicts the index pages it keeps revisiting.
                        "PRAGMA cache_size = -65536",
                        // Statement journals (multi-row inserts) stay in memory.
                        "PRAGMA temp_store = MEMORY",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                    if secure_delete {
                        sqlx::query("PRAGMA secure_delete = ON")
                            .execute(&mut *conn)
                            .await?;
                    }
                }
                Ok(())
            })
        })
        .connect_with(options)
        .await
        .ctx("connecting to the database")?;
    Ok((pool, backend))
}

/// The key vault's database (see `vault`): patients' data keys, wrapped under the master key.
/// Its own database, so that it can be backed up apart from the data and on a shorter
/// retention: crypto-shredding reaches a data backup once no vault backup holds the key.
#[derive(Debug, Clone)]
pub struct VaultStore {
    pool: AnyPool,
    backend: Backend,
}

/// A wrapped patient data key as the vault stores it.
#[derive(Debug, Clone)]
pub struct WrappedKeyRow {
    pub patient_id: String,
    pub wrapped: Sealed,
}

const VAULT_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS patient_data_keys (
    patient_id TEXT PRIMARY KEY,
    -- The master key that wraps it, the nonce and the wrapped key (AES-256-GCM, bound to the
    -- patient id).
    key_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    wrapped BYTEA NOT NULL,
    created_at TEXT NOT NULL
)";

impl VaultStore {
    pub async fn connect(url: &str) -> Result<VaultStore> {
        let (pool, backend) = connect_pool(url, true).await?;
        sqlx::query(VAULT_SCHEMA)
            .execute(&pool)
            .await
            .ctx("creating the key vault's table")?;
        Ok(VaultStore { pool, backend })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Wrapped keys of the patients named (those the vault holds).
    pub async fn keys(&self, patient_ids: &[&str]) -> Result<Vec<WrappedKeyRow>> {
        let mut out = Vec::with_capacity(patient_ids.len());
        for chunk in patient_ids.chunks(MAX_PARAMS) {
            let sql = format!(
                "SELECT patient_id, key_id, nonce, wrapped FROM patient_data_keys WHERE patient_id IN ({})",
                placeholders(self.backend, 1, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&self.pool).await.ctx("reading the key vault")? {
                out.push(WrappedKeyRow {
                    patient_id: r.try_get("patient_id").ctx("reading the key vault")?,
                    wrapped: sealed_from(&r, "key_id", "nonce", "wrapped")?,
                });
            }
        }
        Ok(out)
    }

    /// Stores new wrapped keys in one transaction. A key already stored for a patient stays:
    /// a patient's key is never replaced (values sealed under it would no longer open).
    pub async fn insert(&self, rows: &[WrappedKeyRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let now = now_text();
        let mut tx = self.pool.begin().await.ctx("starting a key vault write")?;
        for chunk in rows.chunks(MAX_PARAMS / 5) {
            let values: Vec<String> = (0..chunk.len())
                .map(|i| format!("({})", placeholders(self.backend, 1 + i * 5, 5)))
                .collect();
            let sql = format!(
                "INSERT INTO patient_data_keys (patient_id, key_id, nonce, wrapped, created_at) VALUES {}
                 ON CONFLICT (patient_id) DO NOTHING",
                values.join(", ")
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(&r.patient_id)
                    .bind(&r.wrapped.key_id)
                    .bind(&r.wrapped.nonce)
                    .bind(&r.wrapped.ciphertext)
                    .bind(&now);
            }
            q.execute(&mut *tx)
                .await
                .ctx("storing patients' data keys")?;
        }
        tx.commit().await.ctx("committing patients' data keys")?;
        Ok(())
    }

    /// Destroys the keys of the patients named and makes sure their bytes leave the files:
    /// SQLite zeroes deleted content (`secure_delete`) and the write-ahead log is checkpointed
    /// and truncated; PostgreSQL's table is vacuumed (best effort: a failure is logged, the
    /// keys are gone from every query either way). Returns how many keys were destroyed.
    pub async fn destroy(&self, patient_ids: &[&str]) -> Result<u64> {
        let mut n = 0;
        for chunk in patient_ids.chunks(MAX_PARAMS) {
            let sql = format!(
                "DELETE FROM patient_data_keys WHERE patient_id IN ({})",
                placeholders(self.backend, 1, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            n += q
                .execute(&self.pool)
                .await
                .ctx("destroying patients' data keys")?
                .rows_affected();
        }
        if n > 0 {
            let scrub = match self.backend {
                Backend::Sqlite => "PRAGMA wal_checkpoint(TRUNCATE)",
                Backend::Postgres => "VACUUM patient_data_keys",
            };
            if let Err(e) = sqlx::query(scrub).execute(&self.pool).await {
                tracing::warn!(error = %e, "scrubbing the key vault after destroying keys failed; the keys are deleted, their bytes may linger in free space until the next vacuum");
            }
        }
        Ok(n)
    }

    /// How many keys the vault holds.
    pub async fn count(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM patient_data_keys")
            .fetch_one(&self.pool)
            .await
            .ctx("counting the key vault")
    }
}

impl Store {
    /// Connects to `url` (`sqlite://path` or `postgres://...`) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Store> {
        let (pool, backend) = connect_pool(url, false).await?;
        let store = Store { pool, backend };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn migrate(&self) -> Result<()> {
        apply_migrations(&self.pool, "catalog", MIGRATIONS).await
    }

    pub async fn begin(&self) -> Result<Tx> {
        Ok(Tx {
            tx: self.pool.begin().await.ctx("starting a transaction")?,
            backend: self.backend,
        })
    }

    /// The key checks stored: (key id, sealed canary).
    pub async fn key_checks(&self) -> Result<Vec<Sealed>> {
        let rows = sqlx::query("SELECT key_id, nonce, sealed FROM key_checks ORDER BY created_at")
            .fetch_all(&self.pool)
            .await
            .ctx("reading key checks")?;
        rows.iter()
            .map(|r| sealed_from(r, "key_id", "nonce", "sealed"))
            .collect()
    }

    pub async fn add_key_check(&self, sealed: &Sealed) -> Result<()> {
        sqlx::query(
            "INSERT INTO key_checks (key_id, nonce, sealed, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(now_text())
        .execute(&self.pool)
        .await
        .ctx("recording a key check")?;
        Ok(())
    }

    // ---- reads ---------------------------------------------------------------------------

    /// Stored records per source resource type.
    pub async fn count_by_resource_type(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT resource_type, COUNT(*) AS n FROM records GROUP BY resource_type ORDER BY resource_type",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("counting records")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("resource_type").ctx("counting")?,
                    r.try_get("n").ctx("counting")?,
                ))
            })
            .collect()
    }

    /// Quarantine entries per reason code (nothing is unsealed to count them).
    pub async fn count_quarantine_by_reason(&self) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT reason, COUNT(*) AS n FROM quarantine GROUP BY reason ORDER BY reason",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("counting the quarantine")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("reason").ctx("counting the quarantine")?,
                    r.try_get("n").ctx("counting the quarantine")?,
                ))
            })
            .collect()
    }

    /// Stored records per kind.
    pub async fn count_by_kind(&self) -> Result<Vec<(String, i64)>> {
        let rows =
            sqlx::query("SELECT kind, COUNT(*) AS n FROM records GROUP BY kind ORDER BY kind")
                .fetch_all(&self.pool)
                .await
                .ctx("counting records")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("kind").ctx("counting")?,
                    r.try_get("n").ctx("counting")?,
                ))
            })
            .collect()
    }

    pub async fn count_patients(&self) -> Result<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM patients WHERE deleted_at IS NULL")
            .fetch_one(&self.pool)
            .await
            .ctx("counting patients")
    }

    /// Patient ids with their record counts, in id order.
    pub async fn list_patients(
        &self,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<(String, String, i64)>> {
        let rows = sqlx::query(
            // The page of patients first, then each one's records counted by index: grouping
            // the whole join before the LIMIT read every record for every page.
            "SELECT p.patient_id, p.created_at,
                    (SELECT COUNT(*) FROM records r WHERE r.patient_id = p.patient_id) AS n
             FROM patients p WHERE p.deleted_at IS NULL ORDER BY p.patient_id LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .ctx("listing patients")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("patient_id").ctx("listing patients")?,
                    r.try_get("created_at").ctx("listing patients")?,
                    r.try_get("n").ctx("listing patients")?,
                ))
            })
            .collect()
    }

    pub async fn patient_exists(&self, patient_id: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM patients WHERE patient_id = $1 AND deleted_at IS NULL",
        )
        .bind(patient_id)
        .fetch_one(&self.pool)
        .await
        .ctx("looking up a patient")?;
        Ok(n > 0)
    }

    /// Whether a patient exists or existed (a deleted patient's tombstone counts).
    pub async fn patient_known(&self, patient_id: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM patients WHERE patient_id = $1")
            .bind(patient_id)
            .fetch_one(&self.pool)
            .await
            .ctx("looking up a patient")?;
        Ok(n > 0)
    }

    pub async fn patient_identity(&self, patient_id: &str) -> Result<Option<Sealed>> {
        let row = sqlx::query(
            "SELECT key_id, nonce, identity FROM patients WHERE patient_id = $1 AND deleted_at IS NULL",
        )
        .bind(patient_id)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a patient")?;
        row.map(|r| sealed_from(&r, "key_id", "nonce", "identity"))
            .transpose()
    }

    /// Sealed records of one patient: (record_id, kind, sealed payload).
    pub async fn patient_records(&self, patient_id: &str) -> Result<Vec<(String, String, Sealed)>> {
        let rows = sqlx::query(
            "SELECT record_id, kind, key_id, nonce, payload FROM records WHERE patient_id = $1 ORDER BY record_id",
        )
        .bind(patient_id)
        .fetch_all(&self.pool)
        .await
        .ctx("reading records")?;
        sealed_records(&rows, "record_id", "kind")
    }

    /// Sealed records of one kind across all patients: (patient_id, record_id, sealed payload).
    pub async fn records_of_kind(&self, kind: &str) -> Result<Vec<(String, String, Sealed)>> {
        let rows = sqlx::query(
            "SELECT patient_id, record_id, key_id, nonce, payload FROM records WHERE kind = $1 ORDER BY patient_id, record_id",
        )
        .bind(kind)
        .fetch_all(&self.pool)
        .await
        .ctx("reading records")?;
        sealed_records(&rows, "patient_id", "record_id")
    }

    pub async fn list_quarantine(&self, limit: i64) -> Result<Vec<QuarantineListRow>> {
        let rows = sqlx::query(
            "SELECT quarantine_id, run_id, file_sha256, entry_index, field, reason, key_id, nonce, detail,
                    first_seen_at, last_seen_at
             FROM quarantine ORDER BY last_seen_at DESC, quarantine_id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .ctx("listing the quarantine")?;
        rows.iter()
            .map(|r| {
                let c = "listing the quarantine";
                Ok(QuarantineListRow {
                    quarantine_id: r.try_get("quarantine_id").ctx(c)?,
                    run_id: r.try_get("run_id").ctx(c)?,
                    file_sha256: r.try_get("file_sha256").ctx(c)?,
                    entry_index: r.try_get("entry_index").ctx(c)?,
                    field: r.try_get("field").ctx(c)?,
                    reason: r.try_get("reason").ctx(c)?,
                    sealed_detail: sealed_from(r, "key_id", "nonce", "detail")?,
                    first_seen_at: r.try_get("first_seen_at").ctx(c)?,
                    last_seen_at: r.try_get("last_seen_at").ctx(c)?,
                })
            })
            .collect()
    }

    // ---- deletion ------------------------------------------------------------------------

    /// Deletes everything the catalog holds about a patient but their tombstone, in one
    /// transaction: the consent events given are appended first (revocations of what was in
    /// force), then shares and their views, drafts, sessions, the accounts that act for this
    /// patient alone (with their links and passkeys; a caregiver's account that acts for
    /// others too only loses its link), records and match keys; the patients row keeps its id
    /// and consent history, with the identity emptied and the deletion recorded. `None` when
    /// the patient does not exist or was already deleted.
    pub async fn delete_patient(
        &self,
        patient_id: &str,
        deleted_by: &str,
        revocations: &mut [ConsentRow],
    ) -> Result<Option<DeletedRows>> {
        let c = "deleting a patient";
        let mut tx = self.pool.begin().await.ctx(c)?;
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM patients WHERE patient_id = $1 AND deleted_at IS NULL",
        )
        .bind(patient_id)
        .fetch_one(&mut *tx)
        .await
        .ctx(c)?;
        if live == 0 {
            return Ok(None);
        }
        for row in revocations.iter_mut() {
            insert_consent(&mut tx, row).await?;
        }
        let only_this: Vec<String> = sqlx::query_scalar(
            "SELECT ap.account_id FROM account_patients ap
             WHERE ap.patient_id = $1
               AND NOT EXISTS (SELECT 1 FROM account_patients o
                               WHERE o.account_id = ap.account_id AND o.patient_id <> $1)",
        )
        .bind(patient_id)
        .fetch_all(&mut *tx)
        .await
        .ctx(c)?;
        let mut out = DeletedRows::default();
        let by_patient = |sql: &'static str| sqlx::query(sql).bind(patient_id.to_string());
        by_patient(
            "DELETE FROM share_views WHERE share_id IN (SELECT share_id FROM shares WHERE patient_id = $1)",
        )
        .execute(&mut *tx)
        .await
        .ctx(c)?;
        out.shares = by_patient("DELETE FROM shares WHERE patient_id = $1")
            .execute(&mut *tx)
            .await
            .ctx(c)?
            .rows_affected();
        out.drafts = by_patient("DELETE FROM survey_drafts WHERE patient_id = $1")
            .execute(&mut *tx)
            .await
            .ctx(c)?
            .rows_affected();
        by_patient("DELETE FROM sessions WHERE patient_id = $1")
            .execute(&mut *tx)
            .await
            .ctx(c)?;
        for account in &only_this {
            for sql in [
                "DELETE FROM sessions WHERE account_id = $1",
                "DELETE FROM sign_in_links WHERE account_id = $1",
                "DELETE FROM passkeys WHERE account_id = $1",
            ] {
                sqlx::query(sql)
                    .bind(account)
                    .execute(&mut *tx)
                    .await
                    .ctx(c)?;
            }
        }
        out.account_links = by_patient("DELETE FROM account_patients WHERE patient_id = $1")
            .execute(&mut *tx)
            .await
            .ctx(c)?
            .rows_affected();
        for account in &only_this {
            sqlx::query("DELETE FROM accounts WHERE account_id = $1")
                .bind(account)
                .execute(&mut *tx)
                .await
                .ctx(c)?;
        }
        out.accounts = only_this.len() as u64;
        out.records = by_patient("DELETE FROM records WHERE patient_id = $1")
            .execute(&mut *tx)
            .await
            .ctx(c)?
            .rows_affected();
        by_patient("DELETE FROM patient_keys WHERE patient_id = $1")
            .execute(&mut *tx)
            .await
            .ctx(c)?;
        let empty: Vec<u8> = Vec::new();
        sqlx::query(
            "UPDATE patients SET key_id = 'deleted', nonce = $2, identity = $2, identity_hash = '',
                 deleted_at = $3, deleted_by = $4, updated_at = $3
             WHERE patient_id = $1",
        )
        .bind(patient_id)
        .bind(&empty)
        .bind(now_text())
        .bind(deleted_by)
        .execute(&mut *tx)
        .await
        .ctx(c)?;
        tx.commit().await.ctx("committing a patient's deletion")?;
        Ok(Some(out))
    }

    /// Ids of the deleted patients (tombstones).
    pub async fn deleted_patients(&self) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT patient_id FROM patients WHERE deleted_at IS NOT NULL")
            .fetch_all(&self.pool)
            .await
            .ctx("listing deleted patients")
    }

    /// When a patient was deleted and at whose request, if they were.
    pub async fn deletion_of(&self, patient_id: &str) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "SELECT deleted_at, deleted_by FROM patients WHERE patient_id = $1 AND deleted_at IS NOT NULL",
        )
        .bind(patient_id)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a deletion")?;
        row.map(|r| {
            Ok((
                r.try_get("deleted_at").ctx("reading a deletion")?,
                r.try_get::<Option<String>, _>("deleted_by")
                    .ctx("reading a deletion")?
                    .unwrap_or_default(),
            ))
        })
        .transpose()
    }

    // ---- consent -------------------------------------------------------------------------

    /// Appends a consent event; its `seq` is one past the last for that patient and purpose.
    pub async fn append_consent(&self, mut row: ConsentRow) -> Result<ConsentRow> {
        let mut tx = self.pool.begin().await.ctx("starting a consent change")?;
        insert_consent(&mut tx, &mut row).await?;
        tx.commit().await.ctx("committing a consent event")?;
        Ok(row)
    }

    const CONSENT_COLUMNS: &'static str = "event_id, patient_id, purpose, action, scope, valid_from, valid_until, recorded_at, seq, actor";

    fn consent_from(r: &AnyRow) -> Result<ConsentRow> {
        let c = "reading consent";
        Ok(ConsentRow {
            event_id: r.try_get("event_id").ctx(c)?,
            patient_id: r.try_get("patient_id").ctx(c)?,
            purpose: r.try_get("purpose").ctx(c)?,
            action: r.try_get("action").ctx(c)?,
            scope: r.try_get("scope").ctx(c)?,
            valid_from: r.try_get("valid_from").ctx(c)?,
            valid_until: r.try_get("valid_until").ctx(c)?,
            recorded_at: r.try_get("recorded_at").ctx(c)?,
            seq: r.try_get("seq").ctx(c)?,
            actor: r.try_get("actor").ctx(c)?,
        })
    }

    /// A patient's whole consent history, oldest first.
    pub async fn consent_history(&self, patient_id: &str) -> Result<Vec<ConsentRow>> {
        let sql = format!(
            "SELECT {} FROM consent_events WHERE patient_id = $1 ORDER BY purpose, seq",
            Self::CONSENT_COLUMNS
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(patient_id)
            .fetch_all(&self.pool)
            .await
            .ctx("reading consent history")?;
        rows.iter().map(Self::consent_from).collect()
    }

    /// The latest event recorded at or before `at` for each patient, for one purpose.
    pub async fn latest_consents(&self, purpose: &str, at: &str) -> Result<Vec<ConsentRow>> {
        let sql = format!(
            "SELECT {} FROM consent_events e
             WHERE e.purpose = $1 AND e.recorded_at <= $2
               AND e.seq = (SELECT MAX(x.seq) FROM consent_events x
                            WHERE x.patient_id = e.patient_id AND x.purpose = e.purpose AND x.recorded_at <= $2)
               AND NOT EXISTS (SELECT 1 FROM patients d
                               WHERE d.patient_id = e.patient_id AND d.deleted_at IS NOT NULL)
             ORDER BY e.patient_id",
            Self::CONSENT_COLUMNS
                .split(", ")
                .map(|c| format!("e.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(purpose)
            .bind(at)
            .fetch_all(&self.pool)
            .await
            .ctx("reading current consents")?;
        rows.iter().map(Self::consent_from).collect()
    }
}

/// A release version as the catalog lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReleaseRow {
    pub family: String,
    pub version: i64,
    pub purpose: String,
    pub status: String,
    pub built_at: String,
    pub consent_at: String,
    pub policy_sha256: String,
    pub path: String,
    pub manifest: String,
    pub retired_at: Option<String>,
}

impl ReleaseRow {
    /// The stored `manifest.json`.
    pub fn parsed_manifest(&self) -> Result<crate::release::build::Manifest> {
        serde_json::from_str(&self.manifest).map_err(|e| {
            CatalogError::internal(format!(
                "the stored manifest of {} v{} does not parse: {e}",
                self.family, self.version
            ))
        })
    }

    /// Published and not retired.
    pub fn is_live(&self) -> bool {
        self.retired_at.is_none()
    }
}

impl Store {
    /// The highest version of a family, 0 when it has none.
    pub async fn last_release_version(&self, family: &str) -> Result<i64> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM releases WHERE family = $1")
                .bind(family)
                .fetch_one(&self.pool)
                .await
                .ctx("reading release versions")?;
        Ok(v.unwrap_or(0))
    }

    /// Records a published version and its contributors in one transaction.
    pub async fn insert_release(&self, row: &ReleaseRow, contributors: &[String]) -> Result<()> {
        let mut tx = self.pool.begin().await.ctx("starting a release record")?;
        sqlx::query(
            "INSERT INTO releases (family, version, purpose, status, built_at, consent_at, policy_sha256, path, manifest, retired_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&row.family)
        .bind(row.version)
        .bind(&row.purpose)
        .bind(&row.status)
        .bind(&row.built_at)
        .bind(&row.consent_at)
        .bind(&row.policy_sha256)
        .bind(&row.path)
        .bind(&row.manifest)
        .bind(&row.retired_at)
        .execute(&mut *tx)
        .await
        .ctx("recording a release")?;
        for patient in contributors {
            sqlx::query("INSERT INTO release_contributors (family, version, patient_id) VALUES ($1, $2, $3)")
                .bind(&row.family)
                .bind(row.version)
                .bind(patient)
                .execute(&mut *tx)
                .await
                .ctx("recording a release's contributors")?;
        }
        tx.commit().await.ctx("committing a release record")
    }

    const RELEASE_COLUMNS: &'static str = "family, version, purpose, status, built_at, consent_at, policy_sha256, path, manifest, retired_at";

    fn release_from(r: &AnyRow) -> Result<ReleaseRow> {
        let c = "reading a release";
        Ok(ReleaseRow {
            family: r.try_get("family").ctx(c)?,
            version: r.try_get("version").ctx(c)?,
            purpose: r.try_get("purpose").ctx(c)?,
            status: r.try_get("status").ctx(c)?,
            built_at: r.try_get("built_at").ctx(c)?,
            consent_at: r.try_get("consent_at").ctx(c)?,
            policy_sha256: r.try_get("policy_sha256").ctx(c)?,
            path: r.try_get("path").ctx(c)?,
            manifest: r.try_get("manifest").ctx(c)?,
            retired_at: r.try_get("retired_at").ctx(c)?,
        })
    }

    /// Every release version, by family and version.
    pub async fn list_releases(&self) -> Result<Vec<ReleaseRow>> {
        let sql = format!(
            "SELECT {} FROM releases ORDER BY family, version",
            Self::RELEASE_COLUMNS
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await
            .ctx("listing releases")?;
        rows.iter().map(Self::release_from).collect()
    }

    /// One release version.
    pub async fn release(&self, family: &str, version: i64) -> Result<Option<ReleaseRow>> {
        let sql = format!(
            "SELECT {} FROM releases WHERE family = $1 AND version = $2",
            Self::RELEASE_COLUMNS
        );
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(family)
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .ctx("reading a release")?;
        row.as_ref().map(Self::release_from).transpose()
    }

    /// The contributors of a version (internal patient ids).
    pub async fn release_contributors(&self, family: &str, version: i64) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT patient_id FROM release_contributors WHERE family = $1 AND version = $2 ORDER BY patient_id",
        )
        .bind(family)
        .bind(version)
        .fetch_all(&self.pool)
        .await
        .ctx("reading a release's contributors")
    }

    /// Marks a version retired (its files stay for audit; it is no longer offered).
    pub async fn retire_release(&self, family: &str, version: i64, at: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE releases SET status = 'retired', retired_at = $1 WHERE family = $2 AND version = $3 AND status = 'published'",
        )
        .bind(at)
        .bind(family)
        .bind(version)
        .execute(&self.pool)
        .await
        .ctx("retiring a release")?;
        Ok(done.rows_affected() == 1)
    }
}

/// A session as stored (the token itself is never stored, only its keyed hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    pub session_id: String,
    pub account_id: String,
    pub patient_id: String,
    pub method: String,
    pub label: String,
    pub created_at: String,
    pub expires_at: String,
    pub last_seen_at: String,
    pub revoked_at: Option<String>,
}

/// A patient an account acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRow {
    pub patient_id: String,
    pub relation: String,
    pub linked_at: String,
    pub linked_by: String,
}

/// One of a patient's own records with where and when it arrived: (record_id, kind, source,
/// ingested_at, updated_at, sealed payload).
pub type OwnRecordRow = (String, String, Option<String>, String, String, Sealed);

fn session_from(r: &AnyRow) -> Result<SessionRow> {
    let g = |c: &str| -> Result<String> { r.try_get(c).ctx("reading a session") };
    Ok(SessionRow {
        session_id: g("session_id")?,
        account_id: g("account_id")?,
        patient_id: g("patient_id")?,
        method: g("method")?,
        label: g("label")?,
        created_at: g("created_at")?,
        expires_at: g("expires_at")?,
        last_seen_at: g("last_seen_at")?,
        revoked_at: r.try_get("revoked_at").ctx("reading a session")?,
    })
}

const SESSION_COLUMNS: &str = "session_id, account_id, patient_id, method, label, created_at, expires_at, last_seen_at, revoked_at";

// ---- accounts, sign-in links, sessions (patients' pages) --------------------------------
impl Store {
    /// A patient's own records, every kind and category (the patient's right of access is not
    /// a consent question), with their source and times.
    pub async fn own_records(&self, patient_id: &str) -> Result<Vec<OwnRecordRow>> {
        let rows = sqlx::query(
            "SELECT record_id, kind, source, ingested_at, updated_at, key_id, nonce, payload
             FROM records WHERE patient_id = $1 ORDER BY ingested_at, record_id",
        )
        .bind(patient_id)
        .fetch_all(&self.pool)
        .await
        .ctx("reading a patient's records")?;
        rows.iter()
            .map(|r| {
                let g = |c: &str| -> Result<String> { r.try_get(c).ctx("reading records") };
                Ok((
                    g("record_id")?,
                    g("kind")?,
                    r.try_get("source").ctx("reading records")?,
                    g("ingested_at")?,
                    g("updated_at")?,
                    sealed_from(r, "key_id", "nonce", "payload")?,
                ))
            })
            .collect()
    }

    pub async fn insert_account(
        &self,
        account_id: &str,
        email_index: Option<&str>,
        sealed: &Sealed,
    ) -> Result<()> {
        let now = now_text();
        sqlx::query(
            "INSERT INTO accounts (account_id, email_index, key_id, nonce, sealed, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(account_id)
        .bind(email_index)
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(&now)
        .execute(&self.pool)
        .await
        .ctx("creating an account")?;
        Ok(())
    }

    pub async fn update_account(
        &self,
        account_id: &str,
        email_index: Option<&str>,
        sealed: &Sealed,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE accounts SET email_index = $2, key_id = $3, nonce = $4, sealed = $5, updated_at = $6
             WHERE account_id = $1",
        )
        .bind(account_id)
        .bind(email_index)
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(now_text())
        .execute(&self.pool)
        .await
        .ctx("updating an account")?;
        Ok(())
    }

    pub async fn account_by_email_index(&self, email_index: &str) -> Result<Option<String>> {
        sqlx::query_scalar("SELECT account_id FROM accounts WHERE email_index = $1")
            .bind(email_index)
            .fetch_optional(&self.pool)
            .await
            .ctx("finding an account")
    }

    /// (sealed profile, created_at) of an account.
    pub async fn account(&self, account_id: &str) -> Result<Option<(Sealed, String)>> {
        let row = sqlx::query(
            "SELECT key_id, nonce, sealed, created_at FROM accounts WHERE account_id = $1",
        )
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading an account")?;
        row.map(|r| {
            Ok((
                sealed_from(&r, "key_id", "nonce", "sealed")?,
                r.try_get("created_at").ctx("reading an account")?,
            ))
        })
        .transpose()
    }

    /// Links an account to a patient, or changes the relation of an existing link.
    pub async fn link_account(
        &self,
        account_id: &str,
        patient_id: &str,
        relation: &str,
        linked_by: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO account_patients (account_id, patient_id, relation, linked_at, linked_by)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (account_id, patient_id) DO UPDATE SET relation = excluded.relation",
        )
        .bind(account_id)
        .bind(patient_id)
        .bind(relation)
        .bind(now_text())
        .bind(linked_by)
        .execute(&self.pool)
        .await
        .ctx("linking an account to a patient")?;
        Ok(())
    }

    pub async fn account_links(&self, account_id: &str) -> Result<Vec<LinkRow>> {
        let rows = sqlx::query(
            "SELECT patient_id, relation, linked_at, linked_by FROM account_patients
             WHERE account_id = $1 ORDER BY linked_at, patient_id",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await
        .ctx("reading an account's patients")?;
        rows.iter()
            .map(|r| {
                let g = |c: &str| -> Result<String> { r.try_get(c).ctx("reading a link") };
                Ok(LinkRow {
                    patient_id: g("patient_id")?,
                    relation: g("relation")?,
                    linked_at: g("linked_at")?,
                    linked_by: g("linked_by")?,
                })
            })
            .collect()
    }

    /// The accounts that act for a patient with relation `self`.
    pub async fn own_accounts(&self, patient_id: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(
            "SELECT account_id FROM account_patients WHERE patient_id = $1 AND relation = 'self' ORDER BY linked_at",
        )
        .bind(patient_id)
        .fetch_all(&self.pool)
        .await
        .ctx("finding a patient's account")
    }

    pub async fn insert_sign_in_link(
        &self,
        token_hash: &str,
        account_id: &str,
        kind: &str,
        expires_at: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO sign_in_links (token_hash, account_id, kind, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(account_id)
        .bind(kind)
        .bind(now_text())
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .ctx("recording a sign-in link")?;
        Ok(())
    }

    /// Sign-in links of an account made since `since` (for the rate of e-mailed links).
    pub async fn count_sign_in_links(&self, account_id: &str, since: &str) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM sign_in_links WHERE account_id = $1 AND created_at >= $2",
        )
        .bind(account_id)
        .bind(since)
        .fetch_one(&self.pool)
        .await
        .ctx("counting sign-in links")
    }

    /// Uses a sign-in link: marks it used, in one statement, only if it is unused and not
    /// expired at `now`, and answers its (account, kind). A second use finds nothing.
    pub async fn redeem_sign_in_link(
        &self,
        token_hash: &str,
        now: &str,
    ) -> Result<Option<(String, String)>> {
        let row = sqlx::query(
            "UPDATE sign_in_links SET used_at = $2
             WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2
             RETURNING account_id, kind",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .ctx("using a sign-in link")?;
        row.map(|r| {
            Ok((
                r.try_get("account_id").ctx("using a sign-in link")?,
                r.try_get("kind").ctx("using a sign-in link")?,
            ))
        })
        .transpose()
    }

    pub async fn insert_session(&self, s: &SessionRow, token_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO sessions (session_id, token_hash, account_id, patient_id, method, label,
                                   created_at, expires_at, last_seen_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&s.session_id)
        .bind(token_hash)
        .bind(&s.account_id)
        .bind(&s.patient_id)
        .bind(&s.method)
        .bind(&s.label)
        .bind(&s.created_at)
        .bind(&s.expires_at)
        .bind(&s.last_seen_at)
        .execute(&self.pool)
        .await
        .ctx("starting a session")?;
        Ok(())
    }

    pub async fn session_by_token(&self, token_hash: &str) -> Result<Option<SessionRow>> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await
            .ctx("reading a session")?;
        row.map(|r| session_from(&r)).transpose()
    }

    pub async fn touch_session(&self, session_id: &str, now: &str) -> Result<()> {
        sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE session_id = $1")
            .bind(session_id)
            .bind(now)
            .execute(&self.pool)
            .await
            .ctx("updating a session")?;
        Ok(())
    }

    pub async fn set_session_patient(&self, session_id: &str, patient_id: &str) -> Result<()> {
        sqlx::query("UPDATE sessions SET patient_id = $2 WHERE session_id = $1")
            .bind(session_id)
            .bind(patient_id)
            .execute(&self.pool)
            .await
            .ctx("updating a session")?;
        Ok(())
    }

    /// An account's sessions, newest first.
    pub async fn sessions_of(&self, account_id: &str) -> Result<Vec<SessionRow>> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE account_id = $1 ORDER BY created_at DESC"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(account_id)
            .fetch_all(&self.pool)
            .await
            .ctx("reading sessions")?;
        rows.iter().map(session_from).collect()
    }

    /// Revokes one session of an account (`Some`) or all of them (`None`); answers how many
    /// live sessions it ended.
    pub async fn revoke_sessions(
        &self,
        account_id: &str,
        session_id: Option<&str>,
        now: &str,
    ) -> Result<u64> {
        let done = match session_id {
            Some(id) => sqlx::query(
                "UPDATE sessions SET revoked_at = $3
                 WHERE account_id = $1 AND session_id = $2 AND revoked_at IS NULL",
            )
            .bind(account_id)
            .bind(id)
            .bind(now),
            None => sqlx::query(
                "UPDATE sessions SET revoked_at = $2 WHERE account_id = $1 AND revoked_at IS NULL",
            )
            .bind(account_id)
            .bind(now),
        }
        .execute(&self.pool)
        .await
        .ctx("revoking sessions")?;
        Ok(done.rows_affected())
    }
}

/// A passkey as listed on the account page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeyRow {
    pub credential_id: String,
    pub label: String,
    pub created_at: String,
    pub last_used_at: Option<String>,
}

impl Store {
    pub async fn insert_passkey(
        &self,
        credential_id: &str,
        account_id: &str,
        user_handle: &str,
        credential: &str,
        label: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO passkeys (credential_id, account_id, user_handle, credential, label, created_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(credential_id)
        .bind(account_id)
        .bind(user_handle)
        .bind(credential)
        .bind(label)
        .bind(now_text())
        .execute(&self.pool)
        .await
        .ctx("storing a passkey")?;
        Ok(())
    }

    /// (account, user handle, credential) of a passkey.
    pub async fn passkey(&self, credential_id: &str) -> Result<Option<(String, String, String)>> {
        let row = sqlx::query(
            "SELECT account_id, user_handle, credential FROM passkeys WHERE credential_id = $1",
        )
        .bind(credential_id)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a passkey")?;
        row.map(|r| {
            Ok((
                r.try_get("account_id").ctx("reading a passkey")?,
                r.try_get("user_handle").ctx("reading a passkey")?,
                r.try_get("credential").ctx("reading a passkey")?,
            ))
        })
        .transpose()
    }

    pub async fn passkeys_of(&self, account_id: &str) -> Result<Vec<PasskeyRow>> {
        let rows = sqlx::query(
            "SELECT credential_id, label, created_at, last_used_at FROM passkeys
             WHERE account_id = $1 ORDER BY created_at",
        )
        .bind(account_id)
        .fetch_all(&self.pool)
        .await
        .ctx("reading passkeys")?;
        rows.iter()
            .map(|r| {
                Ok(PasskeyRow {
                    credential_id: r.try_get("credential_id").ctx("reading passkeys")?,
                    label: r.try_get("label").ctx("reading passkeys")?,
                    created_at: r.try_get("created_at").ctx("reading passkeys")?,
                    last_used_at: r.try_get("last_used_at").ctx("reading passkeys")?,
                })
            })
            .collect()
    }

    pub async fn update_passkey(&self, credential_id: &str, credential: &str) -> Result<()> {
        sqlx::query(
            "UPDATE passkeys SET credential = $2, last_used_at = $3 WHERE credential_id = $1",
        )
        .bind(credential_id)
        .bind(credential)
        .bind(now_text())
        .execute(&self.pool)
        .await
        .ctx("updating a passkey")?;
        Ok(())
    }

    pub async fn delete_passkey(&self, account_id: &str, credential_id: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM passkeys WHERE account_id = $1 AND credential_id = $2")
            .bind(account_id)
            .bind(credential_id)
            .execute(&self.pool)
            .await
            .ctx("removing a passkey")?;
        Ok(done.rows_affected() == 1)
    }
}

/// A share (SMART Health Link) as stored.
#[derive(Debug, Clone)]
pub struct ShareRow {
    pub share_id: String,
    pub patient_id: String,
    pub account_id: String,
    pub sealed: Sealed,
    pub jwe: String,
    pub passcode_hash: Option<String>,
    pub attempts_left: i64,
    pub created_at: String,
    pub expires_at: String,
    pub revoked_at: Option<String>,
}

/// One use of a share as stored.
#[derive(Debug, Clone)]
pub struct ShareViewRow {
    pub view_id: String,
    pub share_id: String,
    pub at: String,
    pub what: String,
    pub outcome: String,
    pub recipient: Sealed,
}

fn share_from(r: &AnyRow) -> Result<ShareRow> {
    let g = |c: &str| -> Result<String> { r.try_get(c).ctx("reading a share") };
    Ok(ShareRow {
        share_id: g("share_id")?,
        patient_id: g("patient_id")?,
        account_id: g("account_id")?,
        sealed: sealed_from(r, "key_id", "nonce", "sealed")?,
        jwe: g("jwe")?,
        passcode_hash: r.try_get("passcode_hash").ctx("reading a share")?,
        attempts_left: r.try_get("attempts_left").ctx("reading a share")?,
        created_at: g("created_at")?,
        expires_at: g("expires_at")?,
        revoked_at: r.try_get("revoked_at").ctx("reading a share")?,
    })
}

const SHARE_COLUMNS: &str = "share_id, patient_id, account_id, key_id, nonce, sealed, jwe, passcode_hash, attempts_left, created_at, expires_at, revoked_at";

impl Store {
    pub async fn insert_share(&self, r: &ShareRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO shares (share_id, patient_id, account_id, key_id, nonce, sealed, jwe,
                                 passcode_hash, attempts_left, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(&r.share_id)
        .bind(&r.patient_id)
        .bind(&r.account_id)
        .bind(&r.sealed.key_id)
        .bind(&r.sealed.nonce)
        .bind(&r.sealed.ciphertext)
        .bind(&r.jwe)
        .bind(&r.passcode_hash)
        .bind(r.attempts_left)
        .bind(&r.created_at)
        .bind(&r.expires_at)
        .execute(&self.pool)
        .await
        .ctx("storing a share")?;
        Ok(())
    }

    pub async fn share(&self, share_id: &str) -> Result<Option<ShareRow>> {
        let sql = format!("SELECT {SHARE_COLUMNS} FROM shares WHERE share_id = $1");
        let row = sqlx::query(AssertSqlSafe(sql))
            .bind(share_id)
            .fetch_optional(&self.pool)
            .await
            .ctx("reading a share")?;
        row.map(|r| share_from(&r)).transpose()
    }

    /// A patient's shares, newest first.
    pub async fn shares_of(&self, patient_id: &str) -> Result<Vec<ShareRow>> {
        let sql = format!(
            "SELECT {SHARE_COLUMNS} FROM shares WHERE patient_id = $1 ORDER BY created_at DESC"
        );
        let rows = sqlx::query(AssertSqlSafe(sql))
            .bind(patient_id)
            .fetch_all(&self.pool)
            .await
            .ctx("reading shares")?;
        rows.iter().map(share_from).collect()
    }

    pub async fn revoke_share(&self, patient_id: &str, share_id: &str, at: &str) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE shares SET revoked_at = $3
             WHERE patient_id = $1 AND share_id = $2 AND revoked_at IS NULL",
        )
        .bind(patient_id)
        .bind(share_id)
        .bind(at)
        .execute(&self.pool)
        .await
        .ctx("revoking a share")?;
        Ok(done.rows_affected() == 1)
    }

    /// Spends one passcode attempt; answers those left.
    pub async fn spend_share_attempt(&self, share_id: &str) -> Result<i64> {
        let left: Option<i64> = sqlx::query_scalar(
            "UPDATE shares SET attempts_left = attempts_left - 1
             WHERE share_id = $1 AND attempts_left > 0
             RETURNING attempts_left",
        )
        .bind(share_id)
        .fetch_optional(&self.pool)
        .await
        .ctx("counting a passcode attempt")?;
        Ok(left.unwrap_or(0))
    }

    pub async fn insert_share_view(&self, v: &ShareViewRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO share_views (view_id, share_id, at, what, outcome, key_id, nonce, recipient)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&v.view_id)
        .bind(&v.share_id)
        .bind(&v.at)
        .bind(&v.what)
        .bind(&v.outcome)
        .bind(&v.recipient.key_id)
        .bind(&v.recipient.nonce)
        .bind(&v.recipient.ciphertext)
        .execute(&self.pool)
        .await
        .ctx("recording a share's use")?;
        Ok(())
    }

    pub async fn share_views(&self, share_id: &str) -> Result<Vec<ShareViewRow>> {
        let rows = sqlx::query(
            "SELECT view_id, share_id, at, what, outcome, key_id, nonce, recipient
             FROM share_views WHERE share_id = $1 ORDER BY at",
        )
        .bind(share_id)
        .fetch_all(&self.pool)
        .await
        .ctx("reading a share's uses")?;
        rows.iter()
            .map(|r| {
                let g = |c: &str| -> Result<String> { r.try_get(c).ctx("reading a share's uses") };
                Ok(ShareViewRow {
                    view_id: g("view_id")?,
                    share_id: g("share_id")?,
                    at: g("at")?,
                    what: g("what")?,
                    outcome: g("outcome")?,
                    recipient: sealed_from(r, "key_id", "nonce", "recipient")?,
                })
            })
            .collect()
    }
}

/// A stored questionnaire: (id, url, title, study, resource JSON).
pub type QuestionnaireRow = (String, String, String, Option<String>, String);

impl Store {
    pub async fn upsert_questionnaire(
        &self,
        id: &str,
        url: &str,
        version: Option<&str>,
        title: &str,
        study: Option<&str>,
        resource: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO questionnaires (questionnaire_id, url, version, title, study, resource, added_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (questionnaire_id) DO UPDATE SET version = excluded.version,
                 title = excluded.title, study = excluded.study, resource = excluded.resource",
        )
        .bind(id)
        .bind(url)
        .bind(version)
        .bind(title)
        .bind(study)
        .bind(resource)
        .bind(now_text())
        .execute(&self.pool)
        .await
        .ctx("storing a questionnaire")?;
        Ok(())
    }

    pub async fn questionnaires(&self) -> Result<Vec<QuestionnaireRow>> {
        let rows = sqlx::query(
            "SELECT questionnaire_id, url, title, study, resource FROM questionnaires ORDER BY added_at, url",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("reading questionnaires")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("questionnaire_id")
                        .ctx("reading questionnaires")?,
                    r.try_get("url").ctx("reading questionnaires")?,
                    r.try_get("title").ctx("reading questionnaires")?,
                    r.try_get("study").ctx("reading questionnaires")?,
                    r.try_get("resource").ctx("reading questionnaires")?,
                ))
            })
            .collect()
    }

    pub async fn save_draft(
        &self,
        patient_id: &str,
        questionnaire_id: &str,
        sealed: &Sealed,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO survey_drafts (patient_id, questionnaire_id, key_id, nonce, sealed, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (patient_id, questionnaire_id) DO UPDATE SET key_id = excluded.key_id,
                 nonce = excluded.nonce, sealed = excluded.sealed, updated_at = excluded.updated_at",
        )
        .bind(patient_id)
        .bind(questionnaire_id)
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(now_text())
        .execute(&self.pool)
        .await
        .ctx("saving a survey draft")?;
        Ok(())
    }

    /// A patient's drafts: (questionnaire id, sealed fields, updated_at).
    pub async fn drafts(&self, patient_id: &str) -> Result<Vec<(String, Sealed, String)>> {
        let rows = sqlx::query(
            "SELECT questionnaire_id, key_id, nonce, sealed, updated_at FROM survey_drafts WHERE patient_id = $1",
        )
        .bind(patient_id)
        .fetch_all(&self.pool)
        .await
        .ctx("reading survey drafts")?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("questionnaire_id").ctx("reading survey drafts")?,
                    sealed_from(r, "key_id", "nonce", "sealed")?,
                    r.try_get("updated_at").ctx("reading survey drafts")?,
                ))
            })
            .collect()
    }

    pub async fn delete_draft(&self, patient_id: &str, questionnaire_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM survey_drafts WHERE patient_id = $1 AND questionnaire_id = $2")
            .bind(patient_id)
            .bind(questionnaire_id)
            .execute(&self.pool)
            .await
            .ctx("removing a survey draft")?;
        Ok(())
    }
}

/// A write transaction of the ingest writer.
#[derive(Debug)]
pub struct Tx {
    tx: Transaction<'static, Any>,
    backend: Backend,
}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        self.tx.commit().await.ctx("committing ingested data")
    }

    /// Which of `keys` are known, and to which patient.
    pub async fn patients_by_keys(&mut self, keys: &[String]) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for chunk in keys.chunks(MAX_PARAMS) {
            let sql = format!(
                "SELECT blind_index, patient_id FROM patient_keys WHERE blind_index IN ({})",
                placeholders(self.backend, 1, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for k in chunk {
                q = q.bind(k);
            }
            for r in q.fetch_all(&mut *self.tx).await.ctx("matching patients")? {
                out.push((
                    r.try_get(0).ctx("matching patients")?,
                    r.try_get(1).ctx("matching patients")?,
                ));
            }
        }
        Ok(out)
    }

    pub async fn patient_identity(&mut self, patient_id: &str) -> Result<(Sealed, String)> {
        let r = sqlx::query(
            "SELECT key_id, nonce, identity, identity_hash FROM patients WHERE patient_id = $1",
        )
        .bind(patient_id)
        .fetch_one(&mut *self.tx)
        .await
        .ctx("reading a patient")?;
        Ok((
            sealed_from(&r, "key_id", "nonce", "identity")?,
            r.try_get("identity_hash").ctx("reading a patient")?,
        ))
    }

    pub async fn insert_patient(
        &mut self,
        patient_id: &str,
        sealed: &Sealed,
        hash: &str,
    ) -> Result<()> {
        let now = now_text();
        sqlx::query(
            "INSERT INTO patients (patient_id, key_id, nonce, identity, identity_hash, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(patient_id)
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(hash)
        .bind(now)
        .execute(&mut *self.tx)
        .await
        .ctx("adding a patient")?;
        Ok(())
    }

    pub async fn update_patient(
        &mut self,
        patient_id: &str,
        sealed: &Sealed,
        hash: &str,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE patients SET key_id = $2, nonce = $3, identity = $4, identity_hash = $5, updated_at = $6
             WHERE patient_id = $1",
        )
        .bind(patient_id)
        .bind(&sealed.key_id)
        .bind(&sealed.nonce)
        .bind(&sealed.ciphertext)
        .bind(hash)
        .bind(now_text())
        .execute(&mut *self.tx)
        .await
        .ctx("updating a patient")?;
        Ok(())
    }

    /// Records blind-index keys `(key, kind, source)` for a patient; keys already present stay
    /// with the patient they name.
    pub async fn insert_patient_keys(
        &mut self,
        patient_id: &str,
        keys: &[(&str, &str, &str)],
    ) -> Result<()> {
        for chunk in keys.chunks(MAX_PARAMS / 4) {
            let values = (0..chunk.len())
                .map(|i| format!("({})", placeholders(self.backend, 1 + 4 * i, 4)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO patient_keys (blind_index, patient_id, kind, source) VALUES {values}
                 ON CONFLICT (blind_index) DO NOTHING"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for (key, kind, source) in chunk {
                q = q.bind(*key).bind(patient_id).bind(*kind).bind(*source);
            }
            q.execute(&mut *self.tx)
                .await
                .ctx("recording patient identifiers")?;
        }
        Ok(())
    }

    /// Whether a patient already has a logical id from `source`.
    pub async fn has_logical_id(&mut self, patient_id: &str, source: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM patient_keys WHERE patient_id = $1 AND kind = 'logical_id' AND source = $2",
        )
        .bind(patient_id)
        .bind(source)
        .fetch_one(&mut *self.tx)
        .await
        .ctx("matching patients")?;
        Ok(n > 0)
    }

    /// Content hashes of those of `ids` already stored.
    pub async fn record_hashes(&mut self, ids: &[&str]) -> Result<HashMap<String, String>> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(MAX_PARAMS) {
            let sql = format!(
                "SELECT record_id, content_hash FROM records WHERE record_id IN ({})",
                placeholders(self.backend, 1, chunk.len())
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q
                .fetch_all(&mut *self.tx)
                .await
                .ctx("checking stored records")?
            {
                out.insert(
                    r.try_get(0).ctx("checking stored records")?,
                    r.try_get(1).ctx("checking stored records")?,
                );
            }
        }
        Ok(out)
    }

    pub async fn insert_records(&mut self, rows: &[RecordRow<'_>]) -> Result<()> {
        const COLS: usize = 11;
        let now = now_text();
        for chunk in rows.chunks(MAX_PARAMS / COLS) {
            let values = (0..chunk.len())
                .map(|i| format!("({})", placeholders(self.backend, 1 + i * COLS, COLS)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO records (record_id, patient_id, kind, resource_type, content_hash, key_id, nonce,
                                      payload, ingested_at, updated_at, source)
                 VALUES {values}"
            );
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(r.record_id)
                    .bind(r.patient_id)
                    .bind(r.kind)
                    .bind(r.resource_type)
                    .bind(r.content_hash)
                    .bind(&r.sealed.key_id)
                    .bind(&r.sealed.nonce)
                    .bind(&r.sealed.ciphertext)
                    .bind(&now)
                    .bind(&now)
                    .bind(r.source);
            }
            q.execute(&mut *self.tx).await.ctx("storing records")?;
        }
        Ok(())
    }

    pub async fn update_record(&mut self, r: &RecordRow<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE records SET kind = $2, resource_type = $3, content_hash = $4, key_id = $5, nonce = $6,
                    payload = $7, updated_at = $8, source = $9
             WHERE record_id = $1",
        )
        .bind(r.record_id)
        .bind(r.kind)
        .bind(r.resource_type)
        .bind(r.content_hash)
        .bind(&r.sealed.key_id)
        .bind(&r.sealed.nonce)
        .bind(&r.sealed.ciphertext)
        .bind(now_text())
        .bind(r.source)
        .execute(&mut *self.tx)
        .await
        .ctx("updating a record")?;
        Ok(())
    }

    pub async fn upsert_quarantine(&mut self, run_id: &str, q: &QuarantineRow) -> Result<()> {
        let now = now_text();
        sqlx::query(
            "INSERT INTO quarantine (quarantine_id, run_id, file_sha256, entry_index, field, reason, key_id, nonce,
                                     detail, first_seen_at, last_seen_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
             ON CONFLICT (quarantine_id) DO UPDATE SET run_id = excluded.run_id, key_id = excluded.key_id,
                nonce = excluded.nonce, detail = excluded.detail, last_seen_at = excluded.last_seen_at",
        )
        .bind(&q.quarantine_id)
        .bind(run_id)
        .bind(&q.file_sha256)
        .bind(q.entry_index)
        .bind(&q.field)
        .bind(&q.reason)
        .bind(&q.sealed_detail.key_id)
        .bind(&q.sealed_detail.nonce)
        .bind(&q.sealed_detail.ciphertext)
        .bind(now)
        .execute(&mut *self.tx)
        .await
        .ctx("quarantining input")?;
        Ok(())
    }

    pub async fn start_run(&mut self, run_id: &str, source: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO ingest_runs (run_id, started_at, source, files, bytes, patients_new, patients_updated,
                                      records_added, records_updated, records_unchanged, quarantined)
             VALUES ($1, $2, $3, 0, 0, 0, 0, 0, 0, 0, 0)",
        )
        .bind(run_id)
        .bind(now_text())
        .bind(source)
        .execute(&mut *self.tx)
        .await
        .ctx("starting an ingest run")?;
        Ok(())
    }

    pub async fn finish_run(&mut self, run_id: &str, t: &RunTotals) -> Result<()> {
        sqlx::query(
            "UPDATE ingest_runs SET finished_at = $2, files = $3, bytes = $4, patients_new = $5, patients_updated = $6,
                    records_added = $7, records_updated = $8, records_unchanged = $9, quarantined = $10
             WHERE run_id = $1",
        )
        .bind(run_id)
        .bind(now_text())
        .bind(t.files)
        .bind(t.bytes)
        .bind(t.patients_new)
        .bind(t.patients_updated)
        .bind(t.records_added)
        .bind(t.records_updated)
        .bind(t.records_unchanged)
        .bind(t.quarantined)
        .execute(&mut *self.tx)
        .await
        .ctx("finishing an ingest run")?;
        Ok(())
    }
}

/// Splits a migration into statements at semicolons that end a line (the migrations contain no
/// semicolons inside strings), dropping comment-only pieces.
fn split_sql(sql: &str) -> Vec<String> {
    sql.split(";\n")
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .map(|s| s.trim().trim_end_matches(';').to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_splits_into_statements() {
        let stmts = split_sql(MIGRATIONS[0].sql);
        assert!(stmts.iter().all(|s| !s.contains(';')));
        assert!(
            stmts
                .iter()
                .any(|s| s.starts_with("CREATE TABLE consent_events"))
        );
        assert_eq!(
            stmts
                .iter()
                .filter(|s| s.starts_with("CREATE TABLE"))
                .count(),
            7
        );
    }

    #[test]
    fn placeholder_lists() {
        assert_eq!(placeholders(Backend::Postgres, 3, 3), "$3, $4, $5");
        assert_eq!(placeholders(Backend::Sqlite, 3, 3), "?, ?, ?");
    }
}
