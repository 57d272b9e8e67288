//! The SQL connection and migrations of the records tables, in the same database as the
//! catalog and payouts (SQLite or PostgreSQL through sqlx's `Any` driver), recorded under
//! component `records` in `tessera_migrations` by the catalog's migration runner.

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::AnyPool;
use tessera_catalog::{Migration, connect_component};

use crate::RecordsError;

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "records_from_providers",
    sql: include_str!("../migrations/0001_records.sql"),
}];

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

/// Opens a pool on the catalog's database (`url`) and brings the records tables up to date,
/// with the catalog's connection settings and migration runner (component `records`).
pub(crate) async fn connect(url: &str) -> Result<AnyPool, RecordsError> {
    Ok(connect_component(url, "records", MIGRATIONS).await?)
}
