//! Storage of the licensing data in the same SQL database as the catalog (SQLite or PostgreSQL
//! through sqlx's `Any` driver), with its own migrations recorded under component `licensing`.
//! Landed so far: the audit log.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, AssertSqlSafe, Row};

use crate::audit::{self, ChainError, Entry, Event};

const MIGRATIONS: &[(i64, &str, &str)] =
    &[(1, "audit", include_str!("../migrations/0001_audit.sql"))];

/// A storage error: what failed, in words that say what to check.
#[derive(Debug, thiserror::Error)]
#[error("licensing store: {what}: {source}")]
pub struct StoreError {
    what: &'static str,
    #[source]
    source: sqlx::Error,
}

fn ctx(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError { what, source }
}

/// The licensing store.
#[derive(Debug, Clone)]
pub struct LicensingStore {
    pool: AnyPool,
}

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
        let store = LicensingStore { pool };
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

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Appends a decision to the audit chain, in one transaction with reading the head (two
    /// writers cannot both chain to the same entry: the second insert of a sequence number
    /// fails on the primary key).
    pub async fn append_audit(&self, event: Event) -> Result<Entry, StoreError> {
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
        let last = last.as_ref().map(entry_from).transpose()?;
        let e = audit::chain(last.as_ref(), event);
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
        tx.commit()
            .await
            .map_err(ctx("committing an audit entry"))?;
        Ok(e)
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
