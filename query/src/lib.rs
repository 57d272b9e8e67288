//! `tessera-query`: SQL over research releases under a license, with the license enforced
//! inside the DataFusion session and plan, never by looking at the SQL text.
//!
//! - [`session`]: one session per request, built from the license: catalog `tessera`, one
//!   schema per release family, only licensed tables and licensed columns, rows of persons
//!   whose consent still covers the license's purpose only (filtered at scan time), no DDL,
//!   DML, `SET`, `COPY` or file access, and memory and time limits.
//! - [`aggregate`]: aggregate-only licenses: the plan must be an aggregate over persons; it is
//!   rewritten so each group carries its number of distinct persons, and groups below the
//!   license's minimum cell size are suppressed.
//!
//! - [`dp`]: licenses with a privacy budget: contribution bounds, clamping and discrete
//!   Gaussian noise (opendp) inside the plan, group keys over a noisy threshold.
//!
//! - [`cohort`]: saved cohort definitions (inclusion and exclusion criteria as JSON), compiled
//!   to SQL over the licensed tables and exposed as `cohort_<name>` in the license's sessions.
//!
//! - [`service`]: the core any transport calls: key, license and SQL in; the audited decision
//!   about what the plan reads, the session, the output rules and metering out.
//!
//! - [`flight`]: Arrow Flight SQL over the service (bearer keys, Handshake, statements,
//!   prepared statements with parameters, the catalog calls, TLS).
//!
//! Must not: decide who may query (it asks `tessera-licensing`), or know HTTP.

pub mod aggregate;
pub mod cohort;
pub mod dp;
pub mod flight;
pub mod service;
pub mod session;

/// The DataFusion build the service runs on (the benchmark's plain baseline uses it too).
pub use datafusion;
/// Arrow, as the query service returns it.
pub use datafusion::arrow;
pub use service::{
    CatalogReleases, Described, Differencing, Limits, QueryService, Releases, SavedCohortReport,
    ServiceError,
};
pub use session::{QueryError, QueryOutput, ReleaseSource, Scope, Session};

#[cfg(test)]
mod tests;
