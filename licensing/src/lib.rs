//! `tessera-licensing`: data-use agreements (licenses), their signed terms, credentials, the one
//! authorization decision every request goes through, and the hash-chained audit log.
//!
//! Landed (issue 5, first layer): the license model and lifecycle, canonical terms with Ed25519
//! signatures and countersignatures, API keys (shown once, stored as a keyed hash), the pure authorization decision
//! with reason codes, and the audit chain with its verifier. Organizations, licenses, signatures, keys and the audit log are stored (`store`);
//! `tessera audit verify` checks the chain. Still to come: the CLI twins and the HTTP API.
//!
//! Must not: plan queries, or know Flight or HTTP.

pub mod audit;
pub mod decision;
pub mod keys;
pub mod model;
pub mod store;
pub mod terms;

pub use decision::{Credential, Decision, Principal, Reason, Request, Usage, decide};
pub use model::{AccessMode, ColumnGrant, License, LicenseStatus, Money, VersionPin};
