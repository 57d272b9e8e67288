//! The SQL connection and migrations of the payouts tables, in the same database as the
//! catalog and licensing (SQLite or PostgreSQL through sqlx's `Any` driver), recorded under
//! component `payouts` in `tessera_migrations`.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, AssertSqlSafe};

use crate::PayoutsError;

/// Which SQL server holds the tables (a few statements differ, such as triggers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// (version, name, SQL for both, SQL for SQLite only, SQL for PostgreSQL only)
type Migration = (i64, &'static str, &'static str, &'static str);

const MIGRATIONS: &[Migration] = &[
    (
        1,
        "ledger",
        include_str!("../migrations/0001_ledger.sql"),
        "",
    ),
    (
        2,
        "append_only",
        include_str!("../migrations/0002_append_only.sqlite.sql"),
        include_str!("../migrations/0002_append_only.postgres.sql"),
    ),
    (
        3,
        "getting_paid",
        include_str!("../migrations/0003_getting_paid.sql"),
        "",
    ),
];

pub(crate) fn sql_err(what: &'static str) -> impl FnOnce(sqlx::Error) -> PayoutsError {
    move |source| PayoutsError::Sql { what, source }
}

/// Opens a pool on `url` with the pragmas the ledger relies on (WAL, synchronous=FULL).
pub(crate) async fn connect(url: &str) -> Result<(AnyPool, Backend), PayoutsError> {
    sqlx::any::install_default_drivers();
    let backend = if url.starts_with("sqlite:") {
        Backend::Sqlite
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Backend::Postgres
    } else {
        return Err(PayoutsError::Invalid(
            "database URL: use sqlite://PATH or postgres://USER@HOST/DB".into(),
        ));
    };
    let options = AnyConnectOptions::from_str(url).map_err(sql_err("reading the database URL"))?;
    let sqlite = backend == Backend::Sqlite;
    let pool = AnyPoolOptions::new()
        .max_connections(if sqlite { 4 } else { 8 })
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
        .map_err(sql_err("connecting to the database"))?;
    migrate(&pool, backend).await?;
    Ok((pool, backend))
}

async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), PayoutsError> {
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
    .map_err(sql_err("creating the migrations table"))?;
    for (version, name, sqlite_or_both, postgres) in MIGRATIONS {
        let sql = match (backend, postgres.is_empty()) {
            (Backend::Postgres, false) => *postgres,
            _ => *sqlite_or_both,
        };
        let mut tx = pool
            .begin()
            .await
            .map_err(sql_err("starting a migration"))?;
        let done: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM tessera_migrations WHERE component = 'payouts' AND version = $1",
        )
        .bind(*version)
        .fetch_optional(&mut *tx)
        .await
        .map_err(sql_err("reading applied migrations"))?;
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
                .map_err(sql_err("applying a payouts migration"))?;
        }
        sqlx::query(
            "INSERT INTO tessera_migrations (component, version, name, applied_at) VALUES ('payouts', $1, $2, $3)",
        )
        .bind(*version)
        .bind(*name)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(&mut *tx)
        .await
        .map_err(sql_err("recording a migration"))?;
        tx.commit()
            .await
            .map_err(sql_err("committing a migration"))?;
    }
    Ok(())
}

/// A write that lost a race with another writer (SQLite busy/locked, a unique violation, a
/// PostgreSQL serialization failure): worth trying again.
pub(crate) fn contended(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || matches!(
                    db.code().as_deref(),
                    Some("5" | "6" | "517" | "261" | "40001" | "40P01")
                )
                || db.message().contains("database is locked")
        }
        _ => false,
    }
}

/// A CHECK constraint refused the write (a balance below zero, a non-positive amount).
pub(crate) fn check_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_check_violation()
                || matches!(db.code().as_deref(), Some("275" | "23514"))
                || db.message().contains("CHECK constraint failed")
        }
        _ => false,
    }
}

/// A random id with a prefix: `txn_` + 16 hex digits of the system's CSPRNG.
pub(crate) fn new_id(prefix: &str) -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 10];
    // The system RNG does not fail on supported platforms; fall back to the clock if it did.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default();
        b[..8].copy_from_slice(&t.to_le_bytes());
    }
    format!("{prefix}_{}", hex::encode(b))
}

/// A timestamp that sorts as text: RFC 3339, UTC, microseconds.
pub(crate) fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
