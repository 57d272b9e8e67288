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

/// A schema change: applied once, in order, recorded in `tessera_migrations`.
struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
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

impl Store {
    /// Connects to `url` (`sqlite://path` or `postgres://...`) and brings the schema up to date.
    pub async fn connect(url: &str) -> Result<Store> {
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
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .ctx("connecting to the database")?;
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
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS tessera_migrations (
                component TEXT NOT NULL,
                version BIGINT NOT NULL,
                name TEXT NOT NULL,
                applied_at TEXT NOT NULL,
                PRIMARY KEY (component, version))",
        )
        .execute(&self.pool)
        .await
        .ctx("creating the migrations table")?;
        for m in MIGRATIONS {
            let mut tx = self.pool.begin().await.ctx("starting a migration")?;
            let done: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM tessera_migrations WHERE component = 'catalog' AND version = $1",
            )
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
                    .ctx("applying a catalog migration")?;
            }
            sqlx::query(
                "INSERT INTO tessera_migrations (component, version, name, applied_at) VALUES ('catalog', $1, $2, $3)",
            )
            .bind(m.version)
            .bind(m.name)
            .bind(now_text())
            .execute(&mut *tx)
            .await
            .ctx("recording a migration")?;
            tx.commit().await.ctx("committing a migration")?;
            tracing::info!(
                version = m.version,
                name = m.name,
                "applied catalog migration"
            );
        }
        Ok(())
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
        sqlx::query_scalar("SELECT COUNT(*) FROM patients")
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
             FROM patients p ORDER BY p.patient_id LIMIT $1 OFFSET $2",
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
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM patients WHERE patient_id = $1")
            .bind(patient_id)
            .fetch_one(&self.pool)
            .await
            .ctx("looking up a patient")?;
        Ok(n > 0)
    }

    pub async fn patient_identity(&self, patient_id: &str) -> Result<Option<Sealed>> {
        let row = sqlx::query("SELECT key_id, nonce, identity FROM patients WHERE patient_id = $1")
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

    // ---- consent -------------------------------------------------------------------------

    /// Appends a consent event; its `seq` is one past the last for that patient and purpose.
    pub async fn append_consent(&self, mut row: ConsentRow) -> Result<ConsentRow> {
        let mut tx = self.pool.begin().await.ctx("starting a consent change")?;
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(seq) FROM consent_events WHERE patient_id = $1 AND purpose = $2",
        )
        .bind(&row.patient_id)
        .bind(&row.purpose)
        .fetch_one(&mut *tx)
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
        .execute(&mut *tx)
        .await
        .ctx("recording a consent event")?;
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
        const COLS: usize = 10;
        let now = now_text();
        for chunk in rows.chunks(MAX_PARAMS / COLS) {
            let values = (0..chunk.len())
                .map(|i| format!("({})", placeholders(self.backend, 1 + i * COLS, COLS)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO records (record_id, patient_id, kind, resource_type, content_hash, key_id, nonce,
                                      payload, ingested_at, updated_at)
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
                    .bind(&now);
            }
            q.execute(&mut *self.tx).await.ctx("storing records")?;
        }
        Ok(())
    }

    pub async fn update_record(&mut self, r: &RecordRow<'_>) -> Result<()> {
        sqlx::query(
            "UPDATE records SET kind = $2, resource_type = $3, content_hash = $4, key_id = $5, nonce = $6,
                    payload = $7, updated_at = $8
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
