//! The SQL connection and migrations of the records tables, in the same database as the
//! catalog and payouts (SQLite or PostgreSQL through sqlx's `Any` driver), recorded under
//! component `records` in `tessera_migrations`.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, AssertSqlSafe};

use crate::RecordsError;

/// (version, name, SQL)
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "records_from_providers",
    include_str!("../migrations/0001_records.sql"),
)];

pub(crate) fn sql_err(what: &'static str) -> impl FnOnce(sqlx::Error) -> RecordsError {
    move |source| RecordsError::Sql { what, source }
}

/// Times are stored as RFC 3339 text in UTC with microseconds, so that text order is time order.
pub(crate) fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

pub(crate) fn parse_time(s: &str) -> Result<DateTime<Utc>, RecordsError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| RecordsError::internal("a stored time does not parse"))
}

/// Opens a pool on `url` and brings the records tables up to date.
pub(crate) async fn connect(url: &str) -> Result<AnyPool, RecordsError> {
    sqlx::any::install_default_drivers();
    let sqlite = url.starts_with("sqlite:");
    if !sqlite && !url.starts_with("postgres:") && !url.starts_with("postgresql:") {
        return Err(RecordsError::Invalid(
            "database URL: use sqlite://PATH or postgres://USER@HOST/DB".into(),
        ));
    }
    let options = AnyConnectOptions::from_str(url).map_err(sql_err("reading the database URL"))?;
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
    migrate(&pool).await?;
    Ok(pool)
}

async fn migrate(pool: &AnyPool) -> Result<(), RecordsError> {
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
    for (version, name, sql) in MIGRATIONS {
        let mut tx = pool
            .begin()
            .await
            .map_err(sql_err("starting a migration"))?;
        let done: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM tessera_migrations WHERE component = 'records' AND version = $1",
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
                .map_err(sql_err("applying a records migration"))?;
        }
        sqlx::query(
            "INSERT INTO tessera_migrations (component, version, name, applied_at) VALUES ('records', $1, $2, $3)",
        )
        .bind(*version)
        .bind(*name)
        .bind(time_text(Utc::now()))
        .execute(&mut *tx)
        .await
        .map_err(sql_err("recording a migration"))?;
        tx.commit()
            .await
            .map_err(sql_err("committing a migration"))?;
    }
    Ok(())
}
