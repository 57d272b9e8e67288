//! Records from providers: what Tessera does so that a patient's records reach the registry
//! without an operator handing it files.
//!
//! - [`identity`]: identity proofing behind a provider trait (Persona first, Stripe Identity
//!   second), webhooks verified and applied in order, one status per patient that unlocks record
//!   requests and payouts only when approved at IAL2 (the payout hold reads it: every change is
//!   mirrored into `tessera-payouts`).
//! - [`smart`]: SMART on FHIR patient access: the provider directory, the standalone launch
//!   (PKCE), sealed tokens, fetching (`$everything` or US Core searches, paging, 429, refresh,
//!   incremental), isolation, ingest as the patient's records, disconnecting.
//! - [`access_request`]: right-of-access requests (45 CFR 164.524) for providers without an
//!   API: the letter (PDF), the rule's deadlines, follow-ups, escalation, the scorecard.
//!
//! The crate keeps its tables in the catalog's database (component `records` in
//! `tessera_migrations`); it depends on `tessera-catalog` (sealing under patients' data keys,
//! ingest) and `tessera-payouts` (the identity hold), and on no HTTP server: the binary serves
//! its pages and webhooks.

pub mod access_request;
#[cfg(feature = "fixture")]
pub mod fixture;
pub mod identity;
pub mod smart;
mod store;

use sqlx::AnyPool;

/// What can go wrong; messages name the step and never a patient's identified data.
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("records store: {what}: {source}")]
    Sql {
        what: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// The caller's input cannot be used; the message says what to change.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// A webhook whose signature, age or shape is refused; nothing was changed.
    #[error("webhook refused: {0}")]
    Webhook(String),
    /// A provider answered with an error or could not be reached; worth trying again later.
    #[error("{provider}: {message}")]
    Provider {
        provider: &'static str,
        message: String,
    },
    #[error(transparent)]
    Catalog(#[from] tessera_catalog::CatalogError),
    #[error(transparent)]
    Payouts(#[from] tessera_payouts::PayoutsError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RecordsError {
    pub(crate) fn internal(what: impl Into<String>) -> RecordsError {
        RecordsError::Internal(what.into())
    }
}

pub type Result<T, E = RecordsError> = std::result::Result<T, E>;

/// The records store: a pool on the catalog's database with the records tables migrated.
#[derive(Debug, Clone)]
pub struct RecordsStore {
    pool: AnyPool,
}

impl RecordsStore {
    /// Connects to the database the catalog uses and brings the records tables up to date.
    pub async fn connect(url: &str) -> Result<RecordsStore> {
        Ok(RecordsStore {
            pool: store::connect(url).await?,
        })
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A random id (128 bits, hex) from the operating system's generator.
pub(crate) fn random_id() -> Result<String> {
    let mut b = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| RecordsError::internal("the system random generator failed"))?;
    Ok(hex::encode(b))
}
