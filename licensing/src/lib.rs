//! `tessera-licensing`: data-use agreements (licenses), their signed terms, credentials, the one
//! authorization decision every request goes through, and the hash-chained audit log.
//!
//! - `model`: licenses, their lifecycle, output rules, quotas and fees;
//! - `terms`: canonical terms, Ed25519 signatures and the platform's countersignature;
//! - `keys`: API keys (shown once, stored as a keyed hash);
//! - `decision`: the pure authorization decision with stable reason codes;
//! - `gate`: credential lookup, decision, metering and audit around `decision`, for HTTP and Flight;
//! - `output`: small-cell suppression and rounding of counts;
//! - `privacy`: differential-privacy terms, the zCDP accountant and its (ε, δ) conversion;
//! - `audit`: the hash chain and its verifier; `store`: all of it in SQL.
//!
//! Must not: plan queries, or know Flight or HTTP.

pub mod audit;
pub mod decision;
pub mod gate;
pub mod keys;
pub mod model;
pub mod output;
pub mod privacy;
pub mod store;
pub mod terms;

pub use decision::{Credential, Decision, Principal, Reason, Request, Usage, decide};
pub use model::{AccessMode, ColumnGrant, License, LicenseStatus, Money, VersionPin};
