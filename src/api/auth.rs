//! Who is calling: the bearer key turned into a credential, the per-credential rate limit
//! (governor), and the one authorization decision, audited, for every request.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::Utc;
use governor::clock::{Clock, DefaultClock};
use tessera_licensing::decision::{Credential, Principal, Request};
use tessera_licensing::gate::{Allowed, Ask};
use tessera_licensing::{License, Reason};

use super::AppState;
use super::error::{ApiError, ApiResult};

/// The caller of a request: its credential when the key it presented is known (expired and
/// revoked keys included: the decision refuses those, with their own reason codes).
#[derive(Debug, Clone)]
pub struct Caller {
    pub credential: Option<Credential>,
    /// The route template, for the audit log's resource when no better one is given.
    pub route: String,
}

/// The bearer token of a request, if any (`Authorization: Bearer <key>`, scheme case-insensitive).
fn bearer(parts: &Parts) -> Option<String> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Caller> {
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| parts.uri.path().to_string());
        if !state.config.enforce {
            return Ok(Caller {
                credential: Some(Credential {
                    id: "unenforced".into(),
                    principal: Principal::Admin,
                    expires_at: None,
                    revoked_at: None,
                }),
                route,
            });
        }
        let credential = state.gate.credential(bearer(parts).as_deref()).await?;
        // The rate limit is per credential; callers without a known key share one bucket per
        // address (an unverified key id could otherwise drain another's bucket).
        let bucket = match &credential {
            Some(c) => format!("key:{}", c.id),
            None => {
                let peer = parts
                    .extensions
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip().to_string())
                    .unwrap_or_else(|| "unknown".into());
                format!("addr:{peer}")
            }
        };
        if let Err(not_until) = state.limiter.check_key(&bucket) {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            state.metrics.decision(Reason::RateLimited.code());
            state
                .gate
                .audit_refusal(
                    credential.as_ref(),
                    "request",
                    &route,
                    Reason::RateLimited,
                    Utc::now(),
                )
                .await?;
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Err(ApiError::denied(Reason::RateLimited, Some(secs)));
        }
        Ok(Caller { credential, route })
    }
}

impl Caller {
    /// An analyst's organization and bound licenses; `None` for an operator.
    pub fn analyst(&self) -> Option<(&str, &[String])> {
        match self.credential.as_ref().map(|c| &c.principal) {
            Some(Principal::Analyst {
                organization,
                licenses,
            }) => Some((organization.as_str(), licenses.as_slice())),
            _ => None,
        }
    }
}

impl AppState {
    /// Puts a request to the decision, audited; a refusal becomes the error answer.
    pub async fn authorize(
        &self,
        caller: &Caller,
        request: Request,
        action: &str,
        resource: String,
        query_sha256: Option<String>,
    ) -> ApiResult<Allowed> {
        if !self.config.enforce {
            let license = match &request {
                Request::RunQuery { license, .. }
                | Request::ReadTable { license, .. }
                | Request::ViewLicense { license } => {
                    self.gate.store().find_license(license).await?
                }
                _ => None,
            };
            return Ok(Allowed {
                credential: caller
                    .credential
                    .clone()
                    .ok_or_else(|| ApiError::denied(Reason::NoCredential, None))?,
                license,
                audit: tessera_licensing::audit::chain(
                    None,
                    tessera_licensing::audit::Event {
                        at: String::new(),
                        principal: "unenforced".into(),
                        license: None,
                        action: action.into(),
                        resource,
                        decision: "allow".into(),
                        query_sha256,
                        rows: None,
                        persons: None,
                    },
                ),
            });
        }
        let now = Utc::now();
        let ask = Ask {
            request,
            action: action.to_string(),
            resource,
            query_sha256,
        };
        match self
            .gate
            .authorize(caller.credential.as_ref(), ask, now)
            .await?
        {
            Ok(allowed) => {
                self.metrics.decision("allow");
                Ok(allowed)
            }
            Err(denied) => {
                self.metrics.decision(denied.reason.code());
                Err(ApiError::denied_until(
                    denied.reason,
                    denied.retry_after,
                    now,
                ))
            }
        }
    }

    /// The licenses an analyst's key may use now (its own organization's, bound to the key,
    /// active and in term); none for an operator, who sees every release without one.
    pub async fn usable_licenses(&self, caller: &Caller) -> ApiResult<Vec<License>> {
        let now = Utc::now();
        match caller.analyst() {
            Some((org, bound)) => {
                let mut out = Vec::new();
                for id in bound {
                    if let Some(l) = self.gate.store().find_license(id).await?
                        && l.organization == org
                        && l.grants_at(now)
                    {
                        out.push(l);
                    }
                }
                Ok(out)
            }
            None => Ok(Vec::new()),
        }
    }
}
