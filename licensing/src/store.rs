//! Storage of the licensing data in the same SQL database as the catalog (SQLite or PostgreSQL
//! through sqlx's `Any` driver), with its own migrations recorded under component `licensing`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::audit::{self, ChainError, Entry, Event};
use crate::decision::{Credential, Principal, Usage};
use crate::keys;
use crate::model::{License, LicenseStatus};
use crate::privacy::Rho;
use crate::terms::{self, SignedTerms, TermsError};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "audit", include_str!("../migrations/0001_audit.sql")),
    (
        2,
        "licenses",
        include_str!("../migrations/0002_licenses.sql"),
    ),
    (3, "usage", include_str!("../migrations/0003_usage.sql")),
    (
        4,
        "query_log",
        include_str!("../migrations/0004_query_log.sql"),
    ),
    (
        5,
        "patient_keys",
        include_str!("../migrations/0005_patient_keys.sql"),
    ),
    (6, "cohorts", include_str!("../migrations/0006_cohorts.sql")),
    (7, "privacy", include_str!("../migrations/0007_privacy.sql")),
];

/// A cohort definition saved under a license (its JSON as saved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedCohort {
    pub license: String,
    pub name: String,
    pub definition: String,
    pub saved_at: DateTime<Utc>,
    pub saved_by: String,
}

/// A storage error: what failed, in words that say what to check.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("licensing store: {what}: {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// A request the data does not allow (unknown id, a lifecycle step out of order).
    #[error("{0}")]
    Invalid(String),
    /// Something with that id exists already.
    #[error("{0}")]
    Conflict(String),
    /// A write that could not be made (its cause is in the message).
    #[error("licensing store: {0}")]
    Unavailable(String),
}

fn ctx(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Sql { what, source }
}

/// Like [`ctx`], but a unique-key violation becomes a [`StoreError::Conflict`] saying `taken`.
fn ctx_unique(what: &'static str, taken: String) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| match &source {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(taken),
        _ => StoreError::Sql { what, source },
    }
}

/// A write that lost a race with another writer: SQLite's busy/locked codes, or a unique
/// violation (two writers chaining to the same head).
fn contended(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || matches!(
                    db.code().as_deref(),
                    Some("5" | "6" | "517" | "261" | "40001")
                )
                || db.message().contains("database is locked")
        }
        _ => false,
    }
}

/// Ids of organizations and licenses: 1 to 64 of lowercase letters, digits, `-`, `_`, `.`.
pub fn check_id(kind: &str, id: &str) -> Result<(), StoreError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{kind} id: use 1 to 64 lowercase letters, digits, `-`, `_` or `.`"
        )))
    }
}

fn status_text(s: LicenseStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The licensing store.
#[derive(Debug, Clone)]
pub struct LicensingStore {
    pool: AnyPool,
    /// Held by the one writer of audit batches in this process (each batch reads the chain's
    /// head, then writes after it). Other processes writing the same log are handled by
    /// retrying.
    audit_lock: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Audit entries waiting for the next batch, with where to send each one's outcome.
    audit_queue: std::sync::Arc<std::sync::Mutex<Vec<(Event, AuditReply)>>>,
}

type AuditReply = tokio::sync::oneshot::Sender<Result<Entry, StoreError>>;

impl LicensingStore {
    /// Connects to the database the catalog uses and brings the licensing schema up to date.
    pub async fn connect(url: &str) -> Result<LicensingStore, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let options = AnyConnectOptions::from_str(url).map_err(ctx("reading the database URL"))?;
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        for pragma in [
                            "PRAGMA journal_mode = WAL",
                            "PRAGMA synchronous = FULL",
                            "PRAGMA busy_timeout = 10000",
                        ] {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(ctx("connecting to the database"))?;
        let store = LicensingStore {
            pool,
            audit_lock: Default::default(),
            audit_queue: Default::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
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
        .map_err(ctx("creating the migrations table"))?;
        for (version, name, sql) in MIGRATIONS {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(ctx("starting a migration"))?;
            let done: Option<i64> = sqlx::query_scalar(
                "SELECT version FROM tessera_migrations WHERE component = 'licensing' AND version = $1",
            )
            .bind(*version)
            .fetch_optional(&mut *tx)
            .await
            .map_err(ctx("reading applied migrations"))?;
            if done.is_some() {
                continue;
            }
            for statement in sql.split(";\n").map(|s| {
                s.lines()
                    .filter(|l| !l.trim_start().starts_with("--"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }) {
                let statement = statement.trim().trim_end_matches(';').to_string();
                if statement.is_empty() {
                    continue;
                }
                sqlx::query(AssertSqlSafe(statement))
                    .execute(&mut *tx)
                    .await
                    .map_err(ctx("applying a licensing migration"))?;
            }
            sqlx::query(
                "INSERT INTO tessera_migrations (component, version, name, applied_at) VALUES ('licensing', $1, $2, $3)",
            )
            .bind(*version)
            .bind(*name)
            .bind(chrono::Utc::now().to_rfc3339())
            .execute(&mut *tx)
            .await
            .map_err(ctx("recording a migration"))?;
            tx.commit().await.map_err(ctx("committing a migration"))?;
        }
        Ok(())
    }

    /// Whether the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(ctx("checking the database"))?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Appends a decision to the audit chain and returns it once it is committed.
    ///
    /// Group commit: concurrent appends of this process queue up; whoever holds the audit lock
    /// writes everything queued in one transaction (reading the head, chaining each entry to
    /// the one before, committing once), and every caller returns only after the transaction
    /// holding its entry has committed. Another process (the CLI beside a server, or a second
    /// server on PostgreSQL) may append at the same moment: the loser of that race sees a
    /// locked database or a taken sequence number, and the batch is written again on the new
    /// head.
    pub async fn append_audit(&self, event: Event) -> Result<Entry, StoreError> {
        let (reply, mut written) = tokio::sync::oneshot::channel();
        self.audit_queue
            .lock()
            .map_err(|_| StoreError::Unavailable("the audit queue is poisoned".into()))?
            .push((event, reply));
        let _leader = self.audit_lock.lock().await;
        if let Ok(result) = written.try_recv() {
            // An earlier holder of the lock wrote it.
            return result;
        }
        let batch: Vec<(Event, AuditReply)> = std::mem::take(
            &mut *self
                .audit_queue
                .lock()
                .map_err(|_| StoreError::Unavailable("the audit queue is poisoned".into()))?,
        );
        let events: Vec<Event> = batch.iter().map(|(e, _)| e.clone()).collect();
        let mut attempt = 0u32;
        let outcome = loop {
            match self.write_audit_batch(&events).await {
                Err(StoreError::Sql { source, .. }) if attempt < 50 && contended(&source) => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(2 + u64::from(attempt % 10) * 3))
                        .await;
                }
                other => break other,
            }
        };
        match outcome {
            Ok(entries) => {
                for ((_, reply), entry) in batch.into_iter().zip(entries) {
                    let _ = reply.send(Ok(entry));
                }
            }
            Err(e) => {
                let message = e.to_string();
                for (_, reply) in batch {
                    let _ = reply.send(Err(StoreError::Unavailable(message.clone())));
                }
            }
        }
        written.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the audit write was abandoned".into(),
            ))
        })
    }

    async fn write_audit_batch(&self, events: &[Event]) -> Result<Vec<Entry>, StoreError> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(ctx("starting an audit write"))?;
        let last = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT 1"
        )))
        .fetch_optional(&mut *tx)
        .await
        .map_err(ctx("reading the audit head"))?;
        let mut previous = last.as_ref().map(entry_from).transpose()?;
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            let e = audit::chain(previous.as_ref(), event.clone());
            sqlx::query(
                "INSERT INTO audit_log (seq, at, principal, license, action, resource, decision, query_sha256, result_rows, persons, prev_hash, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(e.seq as i64)
            .bind(&e.event.at)
            .bind(&e.event.principal)
            .bind(&e.event.license)
            .bind(&e.event.action)
            .bind(&e.event.resource)
            .bind(&e.event.decision)
            .bind(&e.event.query_sha256)
            .bind(e.event.rows.map(|n| n as i64))
            .bind(e.event.persons.map(|n| n as i64))
            .bind(&e.prev_hash)
            .bind(&e.hash)
            .execute(&mut *tx)
            .await
            .map_err(ctx("appending to the audit log"))?;
            previous = Some(e.clone());
            out.push(e);
        }
        tx.commit().await.map_err(ctx("committing audit entries"))?;
        Ok(out)
    }

    /// The audit log in stored order (by rowid on SQLite, by sequence number otherwise: a
    /// swap of two rows' contents shows either way).
    pub async fn audit_entries(&self) -> Result<Vec<Entry>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM audit_log ORDER BY seq"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(ctx("reading the audit log"))?;
        rows.iter().map(entry_from).collect()
    }

    /// Verifies the stored chain: the number of entries, or the first bad one.
    pub async fn verify_audit(&self) -> Result<Result<usize, ChainError>, StoreError> {
        let entries = self.audit_entries().await?;
        Ok(audit::verify(&entries).map(|()| entries.len()))
    }
}

impl LicensingStore {
    /// Registers an organization with its signatory's Ed25519 public key (hex).
    pub async fn add_organization(
        &self,
        id: &str,
        name: &str,
        public_key: &str,
    ) -> Result<(), StoreError> {
        check_id("organization", id)?;
        if name.trim().is_empty() || name.len() > 200 {
            return Err(StoreError::Invalid(
                "organization name: 1 to 200 characters".into(),
            ));
        }
        let key_ok = hex::decode(public_key).is_ok_and(|k| k.len() == 32);
        if !key_ok {
            return Err(StoreError::Invalid(
                "public_key: the signatory's Ed25519 public key as 64 hex characters (`tessera org keygen` prints one)".into(),
            ));
        }
        sqlx::query(
            "INSERT INTO organizations (id, name, public_key, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(name)
        .bind(public_key)
        .bind(Utc::now().to_rfc3339())
        .execute(&self.pool)
        .await
        .map_err(ctx_unique(
            "adding an organization",
            format!("organization `{id}` exists already"),
        ))?;
        Ok(())
    }

    /// The registered public key of an organization's signatory.
    pub async fn organization_key(&self, id: &str) -> Result<String, StoreError> {
        sqlx::query_scalar::<_, String>("SELECT public_key FROM organizations WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading an organization"))?
            .ok_or_else(|| StoreError::Invalid(format!("no organization `{id}`: add it first")))
    }

    /// Stores a new license as a draft.
    pub async fn create_license(&self, license: &License) -> Result<(), StoreError> {
        check_id("license", &license.id)?;
        license.validate().map_err(StoreError::Invalid)?;
        self.organization_key(&license.organization).await?;
        let mut draft = license.clone();
        draft.status = LicenseStatus::Draft;
        let body = serde_json::to_string(&draft)
            .map_err(|e| StoreError::Invalid(format!("license: {e}")))?;
        sqlx::query("INSERT INTO licenses (id, organization, status, body, signed, updated_at) VALUES ($1, $2, $3, $4, NULL, $5)")
            .bind(&draft.id)
            .bind(&draft.organization)
            .bind(status_text(LicenseStatus::Draft))
            .bind(body)
            .bind(Utc::now().to_rfc3339())
            .execute(&self.pool)
            .await
            .map_err(ctx_unique(
                "creating a license",
                format!("license `{}` exists already", draft.id),
            ))?;
        Ok(())
    }

    /// A license and its signatures.
    pub async fn license(&self, id: &str) -> Result<(License, Option<SignedTerms>), StoreError> {
        self.license_with_signatures(id)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("no license `{id}`")))
    }

    /// A license and its signatures, or `None` when there is no such license.
    async fn license_with_signatures(
        &self,
        id: &str,
    ) -> Result<Option<(License, Option<SignedTerms>)>, StoreError> {
        let Some(row) = sqlx::query("SELECT status, body, signed FROM licenses WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading a license"))?
        else {
            return Ok(None);
        };
        let body: String = row.try_get("body").map_err(ctx("reading a license"))?;
        let signed: Option<String> = row.try_get("signed").map_err(ctx("reading a license"))?;
        let status: String = row.try_get("status").map_err(ctx("reading a license"))?;
        let mut license: License = serde_json::from_str(&body).map_err(|e| {
            StoreError::Invalid(format!("stored license `{id}` does not parse: {e}"))
        })?;
        license.status = serde_json::from_value(serde_json::Value::String(status))
            .map_err(|e| StoreError::Invalid(format!("stored license status: {e}")))?;
        let signed = signed
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| StoreError::Invalid(format!("stored signatures do not parse: {e}")))?;
        Ok(Some((license, signed)))
    }

    /// Records the signed and countersigned terms; the license becomes `signed`. The signatures
    /// must verify against the stored terms and the organization's registered key.
    pub async fn sign_license(
        &self,
        id: &str,
        signed: &SignedTerms,
        platform_key: &str,
    ) -> Result<(), StoreError> {
        let (license, _) = self.license(id).await?;
        let org_key = self.organization_key(&license.organization).await?;
        terms::verify(&license, signed, &org_key, platform_key)
            .map_err(|e| StoreError::Invalid(format!("license `{id}`: {e}")))?;
        self.transition(&license, LicenseStatus::Signed).await?;
        sqlx::query("UPDATE licenses SET signed = $1 WHERE id = $2")
            .bind(serde_json::to_string(signed).map_err(|e| StoreError::Invalid(e.to_string()))?)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(ctx("recording signatures"))?;
        Ok(())
    }

    /// Moves a license along its lifecycle (activate, suspend, resume, expire, terminate).
    pub async fn set_status(&self, id: &str, to: LicenseStatus) -> Result<(), StoreError> {
        let (license, signed) = self.license(id).await?;
        if to == LicenseStatus::Active && signed.is_none() {
            return Err(StoreError::Invalid(format!(
                "license `{id}` is not signed: it cannot become active"
            )));
        }
        self.transition(&license, to).await
    }

    async fn transition(&self, license: &License, to: LicenseStatus) -> Result<(), StoreError> {
        if !license.status.can_become(to) {
            return Err(StoreError::Invalid(format!(
                "license `{}` is {} and cannot become {}",
                license.id,
                status_text(license.status),
                status_text(to)
            )));
        }
        sqlx::query("UPDATE licenses SET status = $1, updated_at = $2 WHERE id = $3")
            .bind(status_text(to))
            .bind(Utc::now().to_rfc3339())
            .bind(&license.id)
            .execute(&self.pool)
            .await
            .map_err(ctx("changing a license's status"))?;
        Ok(())
    }

    /// Checks a license's stored terms against its signatures and the registered keys.
    pub async fn verify_license(
        &self,
        id: &str,
        platform_key: &str,
    ) -> Result<Result<(), TermsError>, StoreError> {
        let (license, signed) = self.license(id).await?;
        let Some(signed) = signed else {
            return Err(StoreError::Invalid(format!(
                "license `{id}` has no signatures"
            )));
        };
        let org_key = self.organization_key(&license.organization).await?;
        Ok(terms::verify(&license, &signed, &org_key, platform_key))
    }

    /// Issues a key; returns the text to show once and the key's id.
    pub async fn issue_key(
        &self,
        principal: &Principal,
        expires_at: Option<DateTime<Utc>>,
        pepper: &[u8],
    ) -> Result<(String, String), StoreError> {
        if let Principal::Analyst {
            organization,
            licenses,
        } = principal
        {
            self.organization_key(organization).await?;
            for id in licenses {
                match self.find_license(id).await? {
                    Some(l) if &l.organization == organization => {}
                    Some(_) => {
                        return Err(StoreError::Invalid(format!(
                            "license `{id}` belongs to another organization"
                        )));
                    }
                    None => return Err(StoreError::Invalid(format!("no license `{id}`"))),
                }
            }
        }
        let (text, stored) =
            keys::generate(pepper).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let (kind, org, licenses) = match principal {
            Principal::Admin => ("admin", None, Vec::new()),
            Principal::Patient { .. } => ("patient", None, Vec::new()),
            Principal::Analyst {
                organization,
                licenses,
            } => ("analyst", Some(organization.clone()), licenses.clone()),
        };
        let subject = match principal {
            Principal::Patient { patient } => Some(patient.clone()),
            _ => None,
        };
        sqlx::query("INSERT INTO api_keys (id, principal, organization, licenses, secret_hmac, created_at, expires_at, revoked_at, subject) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL, $8)")
            .bind(&stored.id)
            .bind(kind)
            .bind(org)
            .bind(serde_json::to_string(&licenses).unwrap_or_else(|_| "[]".into()))
            .bind(&stored.secret_hmac)
            .bind(Utc::now().to_rfc3339())
            .bind(expires_at.map(|t| t.to_rfc3339()))
            .bind(subject)
            .execute(&self.pool)
            .await
            .map_err(ctx("issuing a key"))?;
        Ok((text, stored.id))
    }

    /// Revokes a key at once.
    pub async fn revoke_key(&self, id: &str) -> Result<(), StoreError> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(Utc::now().to_rfc3339())
                .bind(id)
                .execute(&self.pool)
                .await
                .map_err(ctx("revoking a key"))?;
        if done.rows_affected() != 1 {
            return Err(StoreError::Invalid(format!("no live key `{id}`")));
        }
        Ok(())
    }

    /// Revokes every live key of a patient (their sign-in links, when the patient is deleted).
    /// Returns how many were revoked.
    pub async fn revoke_patient_keys(&self, patient: &str) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE principal = 'patient' AND subject = $2 AND revoked_at IS NULL",
        )
        .bind(Utc::now().to_rfc3339())
        .bind(patient)
        .execute(&self.pool)
        .await
        .map_err(ctx("revoking a patient's keys"))?
        .rows_affected())
    }

    /// The credential a presented key stands for, or `None` when it is malformed, unknown or
    /// its secret does not match (expiry and revocation are for [`crate::decide`] to judge).
    pub async fn credential(
        &self,
        presented: &str,
        pepper: &[u8],
    ) -> Result<Option<Credential>, StoreError> {
        let Ok((id, secret)) = keys::parse(presented) else {
            return Ok(None);
        };
        let Some(row) = sqlx::query("SELECT principal, organization, licenses, secret_hmac, expires_at, revoked_at, subject FROM api_keys WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading a key"))?
        else {
            return Ok(None);
        };
        let c = "reading a key";
        let stored = keys::StoredKey {
            id: id.to_string(),
            secret_hmac: row.try_get("secret_hmac").map_err(ctx(c))?,
        };
        if !keys::matches(pepper, &stored, secret) {
            return Ok(None);
        }
        let time = |v: Option<String>| {
            v.and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        let kind: String = row.try_get("principal").map_err(ctx(c))?;
        let principal = if kind == "admin" {
            Principal::Admin
        } else if kind == "patient" {
            Principal::Patient {
                patient: row
                    .try_get::<Option<String>, _>("subject")
                    .map_err(ctx(c))?
                    .unwrap_or_default(),
            }
        } else {
            let licenses: String = row.try_get("licenses").map_err(ctx(c))?;
            Principal::Analyst {
                organization: row
                    .try_get::<Option<String>, _>("organization")
                    .map_err(ctx(c))?
                    .unwrap_or_default(),
                licenses: serde_json::from_str(&licenses).unwrap_or_default(),
            }
        };
        Ok(Some(Credential {
            id: id.to_string(),
            principal,
            expires_at: time(row.try_get("expires_at").map_err(ctx(c))?),
            revoked_at: time(row.try_get("revoked_at").map_err(ctx(c))?),
        }))
    }
}

/// An organization as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Organization {
    pub id: String,
    pub name: String,
    /// The signatory's Ed25519 public key, hex.
    pub public_key: String,
    pub created_at: String,
}

/// An API key as listed: never its secret or the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyListing {
    pub id: String,
    /// `analyst` or `admin`.
    pub principal: String,
    pub organization: Option<String>,
    pub licenses: Vec<String>,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl LicensingStore {
    /// Every organization, by id.
    pub async fn organizations(&self) -> Result<Vec<Organization>, StoreError> {
        let c = "listing organizations";
        sqlx::query("SELECT id, name, public_key, created_at FROM organizations ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(ctx(c))?
            .iter()
            .map(|r| {
                Ok(Organization {
                    id: r.try_get("id").map_err(ctx(c))?,
                    name: r.try_get("name").map_err(ctx(c))?,
                    public_key: r.try_get("public_key").map_err(ctx(c))?,
                    created_at: r.try_get("created_at").map_err(ctx(c))?,
                })
            })
            .collect()
    }

    /// Every license (of one organization, when given), by id, with whether it is signed.
    pub async fn licenses(
        &self,
        organization: Option<&str>,
    ) -> Result<Vec<(License, bool)>, StoreError> {
        let ids: Vec<String> = match organization {
            Some(org) => {
                sqlx::query_scalar("SELECT id FROM licenses WHERE organization = $1 ORDER BY id")
                    .bind(org)
                    .fetch_all(&self.pool)
                    .await
            }
            None => {
                sqlx::query_scalar("SELECT id FROM licenses ORDER BY id")
                    .fetch_all(&self.pool)
                    .await
            }
        }
        .map_err(ctx("listing licenses"))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let (license, signed) = self.license(&id).await?;
            out.push((license, signed.is_some()));
        }
        Ok(out)
    }

    /// A license when it exists; `None` (not an error) when it does not.
    pub async fn find_license(&self, id: &str) -> Result<Option<License>, StoreError> {
        Ok(self.license_with_signatures(id).await?.map(|(l, _)| l))
    }

    /// Every API key, newest first, without secrets.
    pub async fn keys(&self) -> Result<Vec<KeyListing>, StoreError> {
        let c = "listing keys";
        sqlx::query("SELECT id, principal, organization, licenses, created_at, expires_at, revoked_at FROM api_keys ORDER BY created_at DESC, id")
            .fetch_all(&self.pool)
            .await
            .map_err(ctx(c))?
            .iter()
            .map(|r| {
                let licenses: String = r.try_get("licenses").map_err(ctx(c))?;
                Ok(KeyListing {
                    id: r.try_get("id").map_err(ctx(c))?,
                    principal: r.try_get("principal").map_err(ctx(c))?,
                    organization: r.try_get("organization").map_err(ctx(c))?,
                    licenses: serde_json::from_str(&licenses).unwrap_or_default(),
                    created_at: r.try_get("created_at").map_err(ctx(c))?,
                    expires_at: r.try_get("expires_at").map_err(ctx(c))?,
                    revoked_at: r.try_get("revoked_at").map_err(ctx(c))?,
                })
            })
            .collect()
    }

    /// Saves (or replaces) a cohort definition under a license. `definition` is its JSON,
    /// `by` the principal that saved it (an audit name, never a secret).
    pub async fn save_cohort(
        &self,
        license: &str,
        name: &str,
        definition: &str,
        by: &str,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO cohort_definitions (license, name, definition, saved_at_ms, saved_by) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (license, name) DO UPDATE SET definition = excluded.definition, saved_at_ms = excluded.saved_at_ms, saved_by = excluded.saved_by",
        )
        .bind(license)
        .bind(name)
        .bind(definition)
        .bind(at.timestamp_millis())
        .bind(by)
        .execute(&self.pool)
        .await
        .map_err(ctx("saving a cohort definition"))?;
        Ok(())
    }

    /// The cohort definitions saved under a license, by name.
    pub async fn cohorts(&self, license: &str) -> Result<Vec<SavedCohort>, StoreError> {
        let c = "reading cohort definitions";
        let rows = sqlx::query(
            "SELECT name, definition, saved_at_ms, saved_by FROM cohort_definitions WHERE license = $1 ORDER BY name",
        )
        .bind(license)
        .fetch_all(&self.pool)
        .await
        .map_err(ctx(c))?;
        rows.iter()
            .map(|r| {
                let at: i64 = r.try_get("saved_at_ms").map_err(ctx(c))?;
                Ok(SavedCohort {
                    license: license.to_string(),
                    name: r.try_get("name").map_err(ctx(c))?,
                    definition: r.try_get("definition").map_err(ctx(c))?,
                    saved_at: DateTime::<Utc>::from_timestamp_millis(at).unwrap_or_default(),
                    saved_by: r.try_get("saved_by").map_err(ctx(c))?,
                })
            })
            .collect()
    }

    /// Deletes a saved cohort; `false` when there was none of that name.
    pub async fn delete_cohort(&self, license: &str, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM cohort_definitions WHERE license = $1 AND name = $2")
            .bind(license)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(ctx("deleting a cohort definition"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Records one completed query under a license: the rows it returned, the distinct persons
    /// whose data contributed (when known), and the plan's fingerprints (aggregate queries).
    pub async fn record_usage(
        &self,
        license: &str,
        at: DateTime<Utc>,
        metered: &Metered,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO usage_log (license, at_ms, result_rows, persons, fingerprint, shape) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(license)
        .bind(at.timestamp_millis())
        .bind(i64::try_from(metered.rows).unwrap_or(i64::MAX))
        .bind(metered.persons.map(|p| i64::try_from(p).unwrap_or(i64::MAX)))
        .bind(metered.fingerprint.as_ref().map(|f| f.same.clone()))
        .bind(metered.fingerprint.as_ref().map(|f| f.shape.clone()))
        .execute(&self.pool)
        .await
        .map_err(ctx("recording usage"))?;
        Ok(())
    }

    /// How many completed queries under `license` since `since` had the same plan as
    /// `fingerprint`, and how many the same plan up to literal values.
    pub async fn repeats(
        &self,
        license: &str,
        fingerprint: &Fingerprint,
        since: DateTime<Utc>,
    ) -> Result<Repeats, StoreError> {
        let c = "counting repeated queries";
        let count = |column: &'static str, value: &str| {
            let sql = format!(
                "SELECT COUNT(*) AS n FROM usage_log WHERE license = $1 AND {column} = $2 AND at_ms >= $3"
            );
            let value = value.to_string();
            async move {
                let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                    .bind(license)
                    .bind(value)
                    .bind(since.timestamp_millis())
                    .fetch_one(&self.pool)
                    .await
                    .map_err(ctx(c))?;
                Ok::<u64, StoreError>(n.max(0) as u64)
            }
        };
        Ok(Repeats {
            same: count("fingerprint", &fingerprint.same).await?,
            near: count("shape", &fingerprint.shape).await?,
        })
    }

    /// The usage records of a license since `since`, oldest first (what payouts read).
    pub async fn usage_records(
        &self,
        license: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let c = "reading usage records";
        let rows = sqlx::query(
            "SELECT at_ms, result_rows, persons FROM usage_log WHERE license = $1 AND at_ms >= $2 ORDER BY at_ms",
        )
        .bind(license)
        .bind(since.timestamp_millis())
        .fetch_all(&self.pool)
        .await
        .map_err(ctx(c))?;
        rows.iter()
            .map(|r| {
                let at: i64 = r.try_get("at_ms").map_err(ctx(c))?;
                let rows: i64 = r.try_get("result_rows").map_err(ctx(c))?;
                let persons: Option<i64> = r.try_get("persons").map_err(ctx(c))?;
                Ok(UsageRecord {
                    at: DateTime::<Utc>::from_timestamp_millis(at).unwrap_or_default(),
                    rows: rows.max(0) as u64,
                    persons: persons.map(|p| p.max(0) as u64),
                })
            })
            .collect()
    }

    /// Usage under a license as of `now`: queries in the last 60 seconds, and queries and rows
    /// since the start of the UTC day and of the UTC month. Also when the oldest query of the
    /// last minute leaves the window (for `Retry-After`).
    pub async fn usage(
        &self,
        license: &str,
        now: DateTime<Utc>,
    ) -> Result<(Usage, Option<DateTime<Utc>>), StoreError> {
        let windows = UsageWindows::at(now);
        let c = "reading usage";
        let count_since = |from: DateTime<Utc>| {
            sqlx::query(
                "SELECT COUNT(*) AS n, CAST(COALESCE(SUM(result_rows), 0) AS BIGINT) AS r, MIN(at_ms) AS oldest FROM usage_log WHERE license = $1 AND at_ms >= $2",
            )
            .bind(license)
            .bind(from.timestamp_millis())
        };
        let minute = count_since(windows.minute)
            .fetch_one(&self.pool)
            .await
            .map_err(ctx(c))?;
        let day = count_since(windows.day)
            .fetch_one(&self.pool)
            .await
            .map_err(ctx(c))?;
        let month = count_since(windows.month)
            .fetch_one(&self.pool)
            .await
            .map_err(ctx(c))?;
        let n = |r: &AnyRow, col: &str| -> Result<u64, StoreError> {
            Ok(r.try_get::<i64, _>(col).map_err(ctx(c))?.max(0) as u64)
        };
        let first: Option<i64> = minute.try_get("oldest").map_err(ctx(c))?;
        let usage = Usage {
            queries_last_minute: u32::try_from(n(&minute, "n")?).unwrap_or(u32::MAX),
            queries_today: n(&day, "n")?,
            rows_today: n(&day, "r")?,
            queries_this_month: n(&month, "n")?,
            rows_this_month: n(&month, "r")?,
        };
        let frees = first
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .map(|t| t + chrono::Duration::seconds(60));
        Ok((usage, frees))
    }
}

/// What became of a noisy answer offered to [`LicensingStore::spend_privacy`].
#[derive(Debug, Clone, PartialEq)]
pub enum Spend {
    /// The answer is released and its cost added: the license's spend is now this.
    Spent(PrivacySpent),
    /// The same answer key was released before: that answer (Arrow IPC) is the one to show,
    /// and nothing is charged.
    Cached(Vec<u8>),
    /// The cost would take the license past its budget: nothing is released or charged.
    Exhausted { spent: Rho, budget: Rho },
}

/// A noisy answer offered for release: its key (the license's answers are told apart by it),
/// its bytes (Arrow IPC), what it costs and the δ it spends.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub key: &'a str,
    pub bytes: &'a [u8],
    pub cost: Rho,
    pub delta: f64,
}

/// A license's privacy spend.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PrivacySpent {
    pub rho: Rho,
    pub answers: u64,
    /// δ of the group thresholds, added up.
    pub delta: f64,
}

/// δ is stored in pico units (10⁻¹²), rounded up.
const PICO: f64 = 1e12;

/// A `privacy_spend` row (`spent_nano`, `answers`, `delta_spent_pico`).
fn spent_from(row: &AnyRow) -> Result<PrivacySpent, StoreError> {
    let n = |col: &str| -> Result<u64, StoreError> {
        Ok(row
            .try_get::<i64, _>(col)
            .map_err(ctx("reading the privacy spend"))?
            .max(0) as u64)
    };
    Ok(PrivacySpent {
        rho: Rho(n("spent_nano")?),
        answers: n("answers")?,
        delta: n("delta_spent_pico")? as f64 / PICO,
    })
}

impl LicensingStore {
    /// What a license has spent of its privacy budget.
    pub async fn privacy_spent(&self, license: &str) -> Result<PrivacySpent, StoreError> {
        let c = "reading the privacy spend";
        let row = sqlx::query(
            "SELECT spent_nano, answers, delta_spent_pico FROM privacy_spend WHERE license = $1",
        )
        .bind(license)
        .fetch_optional(&self.pool)
        .await
        .map_err(ctx(c))?;
        row.as_ref().map_or(Ok(PrivacySpent::default()), spent_from)
    }

    /// A noisy answer released before under `license` with `key`, if any (Arrow IPC).
    pub async fn dp_answer(&self, license: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        sqlx::query_scalar("SELECT answer FROM dp_answers WHERE license = $1 AND answer_key = $2")
            .bind(license)
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(ctx("reading a released answer"))
    }

    /// Releases a noisy answer under `license`: in one transaction, stores it under its key and
    /// adds its cost (and δ) to the license's spend, unless the spend would pass `budget` (then
    /// neither happens) or an answer with that key exists (then that one is returned and
    /// nothing is charged). The budget check is the `UPDATE`'s own condition, so concurrent
    /// answers cannot overspend on SQLite or PostgreSQL.
    pub async fn spend_privacy(
        &self,
        license: &str,
        answer: &Answer<'_>,
        budget: Rho,
        at: DateTime<Utc>,
    ) -> Result<Spend, StoreError> {
        let mut attempt = 0;
        loop {
            match self.try_spend(license, answer, budget, at).await {
                Err(StoreError::Sql { source, .. }) if contended(&source) && attempt < 20 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(5 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_spend(
        &self,
        license: &str,
        answer: &Answer<'_>,
        budget: Rho,
        at: DateTime<Utc>,
    ) -> Result<Spend, StoreError> {
        let Answer {
            key,
            bytes: answer,
            cost,
            delta,
        } = *answer;
        let c = "spending privacy budget";
        let as_i64 = |r: Rho| i64::try_from(r.0).unwrap_or(i64::MAX);
        let mut tx = self.pool.begin().await.map_err(ctx(c))?;
        let stored = sqlx::query(
            "INSERT INTO dp_answers (license, answer_key, answer, rho_nano, created_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (license, answer_key) DO NOTHING",
        )
        .bind(license)
        .bind(key)
        .bind(answer.to_vec())
        .bind(as_i64(cost))
        .bind(at.timestamp_millis())
        .execute(&mut *tx)
        .await
        .map_err(ctx(c))?;
        if stored.rows_affected() == 0 {
            let earlier: Vec<u8> = sqlx::query_scalar(
                "SELECT answer FROM dp_answers WHERE license = $1 AND answer_key = $2",
            )
            .bind(license)
            .bind(key)
            .fetch_one(&mut *tx)
            .await
            .map_err(ctx(c))?;
            tx.commit().await.map_err(ctx(c))?;
            return Ok(Spend::Cached(earlier));
        }
        sqlx::query(
            "INSERT INTO privacy_spend (license, spent_nano, answers, delta_spent_pico) VALUES ($1, 0, 0, 0) \
             ON CONFLICT (license) DO NOTHING",
        )
        .bind(license)
        .execute(&mut *tx)
        .await
        .map_err(ctx(c))?;
        let delta_pico = (delta * PICO).ceil().max(0.0) as i64;
        let updated = sqlx::query(
            "UPDATE privacy_spend SET spent_nano = spent_nano + $2, answers = answers + 1, delta_spent_pico = delta_spent_pico + $3 \
             WHERE license = $1 AND spent_nano + $2 <= $4",
        )
        .bind(license)
        .bind(as_i64(cost))
        .bind(delta_pico)
        .bind(as_i64(budget))
        .execute(&mut *tx)
        .await
        .map_err(ctx(c))?;
        if updated.rows_affected() == 0 {
            tx.rollback().await.map_err(ctx(c))?;
            let spent = self.privacy_spent(license).await?;
            return Ok(Spend::Exhausted {
                spent: spent.rho,
                budget,
            });
        }
        let row = sqlx::query(
            "SELECT spent_nano, answers, delta_spent_pico FROM privacy_spend WHERE license = $1",
        )
        .bind(license)
        .fetch_one(&mut *tx)
        .await
        .map_err(ctx(c))?;
        let spent = spent_from(&row)?;
        tx.commit().await.map_err(ctx(c))?;
        Ok(Spend::Spent(spent))
    }
}

/// What one completed query is metered with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metered {
    pub rows: u64,
    /// Distinct persons whose data contributed, when known.
    pub persons: Option<u64>,
    /// The plan's fingerprints, for aggregate queries (differencing limits).
    pub fingerprint: Option<Fingerprint>,
}

/// Two fingerprints of a query plan: `same` of the plan as run, `shape` of the plan with its
/// literal values masked (near-identical queries share it). Hex SHA-256, never the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub same: String,
    pub shape: String,
}

/// Counts of earlier queries sharing a [`Fingerprint`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Repeats {
    pub same: u64,
    pub near: u64,
}

/// One completed query, as payouts read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub at: DateTime<Utc>,
    pub rows: u64,
    pub persons: Option<u64>,
}

/// The starts of the metering windows around an instant (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageWindows {
    pub minute: DateTime<Utc>,
    pub day: DateTime<Utc>,
    pub month: DateTime<Utc>,
    pub next_day: DateTime<Utc>,
    pub next_month: DateTime<Utc>,
}

impl UsageWindows {
    pub fn at(now: DateTime<Utc>) -> UsageWindows {
        use chrono::{Datelike, NaiveDate, TimeZone};
        let date = now.date_naive();
        let midnight = |d: NaiveDate| Utc.from_utc_datetime(&d.and_time(chrono::NaiveTime::MIN));
        let first = date.with_day(1).unwrap_or(date);
        let next_first = if first.month() == 12 {
            NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
        }
        .unwrap_or(first);
        UsageWindows {
            minute: now - chrono::Duration::seconds(60),
            day: midnight(date),
            month: midnight(first),
            next_day: midnight(date.succ_opt().unwrap_or(date)),
            next_month: midnight(next_first),
        }
    }
}

const COLUMNS: &str = "seq, at, principal, license, action, resource, decision, query_sha256, result_rows, persons, prev_hash, hash";

fn entry_from(r: &AnyRow) -> Result<Entry, StoreError> {
    let c = ctx("reading an audit entry");
    let get_opt_num = |name: &str| -> Result<Option<u64>, StoreError> {
        r.try_get::<Option<i64>, _>(name)
            .map(|v| v.map(|n| n as u64))
            .map_err(ctx("reading an audit entry"))
    };
    Ok(Entry {
        seq: r.try_get::<i64, _>("seq").map_err(c)? as u64,
        event: Event {
            at: r.try_get("at").map_err(ctx("reading an audit entry"))?,
            principal: r
                .try_get("principal")
                .map_err(ctx("reading an audit entry"))?,
            license: r
                .try_get("license")
                .map_err(ctx("reading an audit entry"))?,
            action: r.try_get("action").map_err(ctx("reading an audit entry"))?,
            resource: r
                .try_get("resource")
                .map_err(ctx("reading an audit entry"))?,
            decision: r
                .try_get("decision")
                .map_err(ctx("reading an audit entry"))?,
            query_sha256: r
                .try_get("query_sha256")
                .map_err(ctx("reading an audit entry"))?,
            rows: get_opt_num("result_rows")?,
            persons: get_opt_num("persons")?,
        },
        prev_hash: r
            .try_get("prev_hash")
            .map_err(ctx("reading an audit entry"))?,
        hash: r.try_get("hash").map_err(ctx("reading an audit entry"))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Decision, Reason, Request, Usage, decide};
    use crate::model::*;
    use ring::signature::Ed25519KeyPair;

    fn pair() -> (Ed25519KeyPair, String) {
        let (pkcs8, public) = terms::generate_key().expect("key");
        (Ed25519KeyPair::from_pkcs8(&pkcs8).expect("pair"), public)
    }

    /// Concurrent appends (group-committed) form one unbroken chain, each caller getting its
    /// own entry back; two stores on one database (two processes) interleave without a gap.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_chain_without_gaps() {
        let dir = tempfile::tempdir().expect("temp");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("l.db").display());
        let a = LicensingStore::connect(&url).await.expect("store a");
        let b = LicensingStore::connect(&url).await.expect("store b");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..60u64 {
            let store = if i % 3 == 0 { b.clone() } else { a.clone() };
            tasks.spawn(async move {
                let e = store
                    .append_audit(Event {
                        at: "2026-11-23T12:00:00.000Z".into(),
                        principal: format!("key-{i}"),
                        license: None,
                        action: "list_releases".into(),
                        resource: "releases".into(),
                        decision: "allow".into(),
                        query_sha256: None,
                        rows: Some(i),
                        persons: None,
                    })
                    .await
                    .expect("append");
                (i, e)
            });
        }
        let mut seqs = std::collections::BTreeSet::new();
        while let Some(done) = tasks.join_next().await {
            let (i, e) = done.expect("task");
            assert_eq!(e.event.rows, Some(i), "each caller gets its own entry");
            seqs.insert(e.seq);
        }
        assert_eq!(seqs.len(), 60);
        assert_eq!(a.verify_audit().await.expect("read"), Ok(60));
    }

    /// Organization, draft, signatures, activation, a key, an allowed query, tampered terms
    /// refused by verification, revocation refused by the decision.
    #[tokio::test]
    async fn a_license_from_draft_to_revoked_key() {
        let dir = tempfile::tempdir().expect("temp");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("l.db").display());
        let store = LicensingStore::connect(&url).await.expect("store");
        let (org, org_pub) = pair();
        let (platform, platform_pub) = pair();
        store
            .add_organization("acme", "Acme Pharma", &org_pub)
            .await
            .expect("org");
        let now = Utc::now();
        // Active in the fixture: ignored, a new license is a draft.
        let license = sample_license(now);
        store.create_license(&license).await.expect("draft");
        let (stored, _) = store.license("lic-1").await.expect("read");
        assert_eq!(stored.status, LicenseStatus::Draft);
        let activate = store.set_status("lic-1", LicenseStatus::Active).await;
        assert!(activate.is_err(), "an unsigned license never activates");
        let mut signed = terms::sign(&stored, &org);
        terms::countersign(&mut signed, &platform);
        store
            .sign_license("lic-1", &signed, &platform_pub)
            .await
            .expect("sign");
        store
            .set_status("lic-1", LicenseStatus::Active)
            .await
            .expect("activate");
        assert_eq!(
            store
                .verify_license("lic-1", &platform_pub)
                .await
                .expect("verify"),
            Ok(())
        );

        let pepper = b"pepper";
        let (text, key_id) = store
            .issue_key(
                &Principal::Analyst {
                    organization: "acme".into(),
                    licenses: vec!["lic-1".into()],
                },
                None,
                pepper,
            )
            .await
            .expect("key");
        let credential = store
            .credential(&text, pepper)
            .await
            .expect("lookup")
            .expect("known key");
        let (active, _) = store.license("lic-1").await.expect("read");
        let request = Request::RunQuery {
            license: "lic-1".into(),
            family: "nh".into(),
            version: 1,
            latest_version: 1,
            release_purpose: Some("research.natural_history".into()),
            tables: vec![("person".into(), vec!["person_id".into()])],
            row_level: false,
        };
        assert_eq!(
            decide(
                &request,
                Some(&credential),
                Some(&active),
                &Usage::default(),
                Utc::now()
            ),
            Decision::Allow
        );
        assert!(
            store
                .credential(
                    &text.replace(&text[30..31], if &text[30..31] == "a" { "b" } else { "a" }),
                    pepper
                )
                .await
                .expect("lookup")
                .is_none()
        );

        // Terms edited in the database after signing: verification fails.
        sqlx::query("UPDATE licenses SET body = replace(body, '\"patient_share_bps\":5000', '\"patient_share_bps\":100') WHERE id = 'lic-1'")
            .execute(&store.pool)
            .await
            .expect("tamper");
        assert_eq!(
            store
                .verify_license("lic-1", &platform_pub)
                .await
                .expect("verify"),
            Err(TermsError::TermsChanged)
        );

        store.revoke_key(&key_id).await.expect("revoke");
        let revoked = store
            .credential(&text, pepper)
            .await
            .expect("lookup")
            .expect("still known");
        assert_eq!(
            decide(
                &request,
                Some(&revoked),
                Some(&active),
                &Usage::default(),
                Utc::now() + chrono::Duration::seconds(1)
            ),
            Decision::Deny(Reason::CredentialRevoked)
        );
        store
            .set_status("lic-1", LicenseStatus::Terminated)
            .await
            .expect("terminate");
        assert!(
            store
                .set_status("lic-1", LicenseStatus::Active)
                .await
                .is_err(),
            "terminated is final"
        );
    }
}
