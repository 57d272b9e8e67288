//! The gate every request passes, HTTP or Flight: it turns a presented key into a credential,
//! loads the license the request names and the usage under it, puts all of it to the pure
//! [`decide`](crate::decision::decide), appends the decision to the audit log — allow or deny —
//! and, for a denial, says when retrying can help. Results of queries are metered and audited
//! through [`Gate::record_result`].
//!
//! A decision is audited before any data is read: if the audit write fails, the request is
//! refused (the caller gets a store error, never data without its audit entry).

use chrono::{DateTime, Utc};

use crate::audit::{Entry, Event};
use crate::decision::{Credential, Decision, Reason, Request, Usage, decide};
use crate::model::License;
use crate::store::{LicensingStore, StoreError, UsageWindows};

/// What is being asked, for the audit log: an action name and the resource it touches (no
/// identified data: release families, versions, table and license ids).
#[derive(Debug, Clone)]
pub struct Ask {
    pub request: Request,
    pub action: String,
    pub resource: String,
    /// SHA-256 of the query text, when there is one.
    pub query_sha256: Option<String>,
}

/// An allowed request: the credential and the license it was judged under.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub credential: Credential,
    pub license: Option<License>,
    pub audit: Entry,
}

/// A refused request: the reason and, for rate limits and quotas, when to try again.
#[derive(Debug, Clone)]
pub struct Denied {
    pub reason: Reason,
    pub retry_after: Option<DateTime<Utc>>,
    pub audit: Entry,
}

/// The gate. `Debug` leaves the pepper out.
#[derive(Clone)]
pub struct Gate {
    store: LicensingStore,
    pepper: Vec<u8>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate").finish_non_exhaustive()
    }
}

/// The principal as the audit log names it.
pub fn principal_name(credential: Option<&Credential>) -> String {
    credential.map_or_else(|| "anonymous".to_string(), |c| c.id.clone())
}

impl Gate {
    pub fn new(store: LicensingStore, pepper: Vec<u8>) -> Gate {
        Gate { store, pepper }
    }

    pub fn store(&self) -> &LicensingStore {
        &self.store
    }

    /// The credential a presented key stands for (`None`: missing, malformed or unknown).
    pub async fn credential(
        &self,
        presented: Option<&str>,
    ) -> Result<Option<Credential>, StoreError> {
        match presented {
            Some(key) => self.store.credential(key, &self.pepper).await,
            None => Ok(None),
        }
    }

    /// Decides `ask` for `credential` now, and audits the decision.
    pub async fn authorize(
        &self,
        credential: Option<&Credential>,
        ask: Ask,
        now: DateTime<Utc>,
    ) -> Result<Result<Allowed, Denied>, StoreError> {
        let license_id = match &ask.request {
            Request::ReadTable { license, .. }
            | Request::RunQuery { license, .. }
            | Request::ViewLicense { license } => Some(license.clone()),
            Request::BrowseCatalog | Request::Admin(_) | Request::ManageOwnKeys { .. } => None,
        };
        // Nothing is looked up for a request without a credential.
        let license = match (&license_id, credential) {
            (Some(id), Some(_)) => self.store.find_license(id).await?,
            _ => None,
        };
        let metered = matches!(
            ask.request,
            Request::ReadTable { .. } | Request::RunQuery { .. }
        );
        let (usage, minute_frees) = match (&license, metered) {
            (Some(l), true) => self.store.usage(&l.id, now).await?,
            _ => (Usage::default(), None),
        };
        let decision = decide(&ask.request, credential, license.as_ref(), &usage, now);
        let audit = self
            .store
            .append_audit(Event {
                at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                principal: principal_name(credential),
                license: license_id,
                action: ask.action,
                resource: ask.resource,
                decision: decision_text(decision),
                query_sha256: ask.query_sha256,
                rows: None,
                persons: None,
            })
            .await?;
        Ok(match decision {
            Decision::Allow => Ok(Allowed {
                credential: credential.cloned().ok_or_else(|| {
                    StoreError::Invalid("an allowed request without a credential".into())
                })?,
                license,
                audit,
            }),
            Decision::Deny(reason) => {
                let retry_after = match (reason, &license) {
                    (Reason::RateLimited, _) => minute_frees,
                    (Reason::QuotaExceeded, Some(l)) => {
                        let w = UsageWindows::at(now);
                        let q = &l.quota;
                        if usage.queries_this_month >= q.queries_per_month
                            || usage.rows_this_month >= q.rows_per_month
                        {
                            Some(w.next_month)
                        } else {
                            Some(w.next_day)
                        }
                    }
                    _ => None,
                };
                Err(Denied {
                    reason,
                    retry_after,
                    audit,
                })
            }
        })
    }

    /// Audits a refusal made before the decision could run (a per-credential rate limit).
    pub async fn audit_refusal(
        &self,
        credential: Option<&Credential>,
        action: &str,
        resource: &str,
        reason: Reason,
        now: DateTime<Utc>,
    ) -> Result<Entry, StoreError> {
        self.store
            .append_audit(Event {
                at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                principal: principal_name(credential),
                license: None,
                action: action.to_string(),
                resource: resource.to_string(),
                decision: decision_text(Decision::Deny(reason)),
                query_sha256: None,
                rows: None,
                persons: None,
            })
            .await
    }

    /// Meters a completed query under its license and audits its result size.
    pub async fn record_result(
        &self,
        allowed: &Allowed,
        rows: u64,
        persons: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<Entry, StoreError> {
        self.record_metered(
            allowed,
            &crate::store::Metered {
                rows,
                persons,
                fingerprint: None,
            },
            now,
        )
        .await
    }

    /// [`Gate::record_result`] with the query plan's fingerprints (the query service's
    /// aggregate queries, counted against differencing limits).
    pub async fn record_metered(
        &self,
        allowed: &Allowed,
        metered: &crate::store::Metered,
        now: DateTime<Utc>,
    ) -> Result<Entry, StoreError> {
        let (rows, persons) = (metered.rows, metered.persons);
        let license = allowed.license.as_ref().map(|l| l.id.clone());
        if let Some(l) = &license {
            self.store.record_usage(l, now, metered).await?;
        }
        self.store
            .append_audit(Event {
                at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                principal: allowed.credential.id.clone(),
                license,
                action: format!("{}.result", allowed.audit.event.action),
                resource: allowed.audit.event.resource.clone(),
                decision: "allow".into(),
                query_sha256: allowed.audit.event.query_sha256.clone(),
                rows: Some(rows),
                persons,
            })
            .await
    }
}

/// `allow` or `deny:<reason code>`.
pub fn decision_text(d: Decision) -> String {
    match d {
        Decision::Allow => "allow".into(),
        Decision::Deny(r) => format!("deny:{}", r.code()),
    }
}
