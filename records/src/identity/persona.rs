//! Persona (withpersona.com): inquiries from a template, hosted flow through one-time links,
//! webhooks signed `Persona-Signature: t=…,v1=…` (HMAC-SHA-256 over `t.body`; during a secret
//! rotation two space-separated groups, one per secret).
//!
//! API calls (version pinned by the `Persona-Version` header, kebab-case keys):
//! - `POST /api/v1/inquiries` `{"data":{"attributes":{"inquiry-template-id","reference-id",
//!   "redirect-uri"}}}` with an `Idempotency-Key`;
//! - `POST /api/v1/inquiries/{id}/generate-one-time-link` → `meta.one-time-link`;
//! - `GET /api/v1/inquiries/{id}` → `data.attributes.status`;
//! - `DELETE /api/v1/inquiries/{id}`: redaction of a deleted patient's inquiry.
//!
//! Inquiry statuses: created, pending → started; completed → approved where no review is
//! configured, else in review; needs_review → in review; approved, declined, failed, expired.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{
    Assurance, IdentityProvider, ProviderUpdate, Started, State, exchange, str_at,
    verify_timestamped,
};
use crate::{RecordsError, Result};

/// The API version Tessera was written against.
pub const PERSONA_VERSION: &str = "2023-01-05";

/// What an operator configures (environment: `TESSERA_PERSONA_*`).
#[derive(Clone)]
pub struct PersonaConfig {
    /// `https://api.withpersona.com` in production; a local server in tests.
    pub base_url: String,
    pub api_key: String,
    /// The inquiry template (`itmpl_…`) whose checks reach the stated assurance.
    pub template_id: String,
    /// Webhook secrets: one, or two while rotating.
    pub webhook_secrets: Vec<Vec<u8>>,
    /// Whether the template sends completed inquiries to manual review (then only `approved`
    /// verifies); without review, `completed` is the final positive outcome.
    pub review_configured: bool,
    pub assurance: Assurance,
}

impl std::fmt::Debug for PersonaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PersonaConfig")
            .field("base_url", &self.base_url)
            .field("template_id", &self.template_id)
            .field("review_configured", &self.review_configured)
            .field("assurance", &self.assurance)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct Persona {
    config: PersonaConfig,
    http: reqwest::Client,
}

impl Persona {
    pub fn new(config: PersonaConfig) -> Result<Persona> {
        if config.api_key.is_empty() || config.template_id.is_empty() {
            return Err(RecordsError::Invalid(
                "Persona needs an API key and an inquiry template id (TESSERA_PERSONA_API_KEY, TESSERA_PERSONA_TEMPLATE)".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| RecordsError::internal(format!("HTTP client: {e}")))?;
        Ok(Persona { config, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.config.base_url.trim_end_matches('/'))
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.config.api_key)
            .header("Persona-Version", PERSONA_VERSION)
            .header("Key-Inflection", "kebab")
            .header("Accept", "application/json")
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Result<Value> {
        // Persona's errors are `{"errors":[{"title": …}]}`.
        exchange("Persona", what, req, |v| {
            v.get("errors")
                .and_then(|e| e.get(0))
                .and_then(|e| e.get("title"))
                .and_then(Value::as_str)
        })
        .await
    }

    fn map_status(&self, status: &str) -> Option<State> {
        Some(match status {
            "created" | "pending" => State::Started,
            "completed" if self.config.review_configured => State::InReview,
            "completed" | "approved" => State::Approved,
            "needs_review" | "marked_for_review" => State::InReview,
            "declined" => State::Declined,
            "failed" => State::Failed,
            "expired" => State::Expired,
            _ => return None,
        })
    }
}

fn provider(message: String) -> RecordsError {
    RecordsError::Provider {
        provider: "Persona",
        message,
    }
}

#[async_trait]
impl IdentityProvider for Persona {
    fn code(&self) -> &'static str {
        "persona"
    }

    fn assurance(&self) -> Assurance {
        self.config.assurance
    }

    fn signature_header(&self) -> &'static str {
        "persona-signature"
    }

    async fn start(
        &self,
        patient: &str,
        return_url: &str,
        idempotency_key: &str,
    ) -> Result<Started> {
        let body = json!({"data": {"attributes": {
            "inquiry-template-id": self.config.template_id,
            "reference-id": patient,
            "redirect-uri": return_url,
        }}});
        let created = self
            .send(
                "creating an inquiry",
                self.request(reqwest::Method::POST, "/api/v1/inquiries")
                    .header("Idempotency-Key", idempotency_key)
                    .json(&body),
            )
            .await?;
        let id = str_at(&created, &["data", "id"])
            .ok_or_else(|| provider("creating an inquiry: no id in the answer".into()))?
            .to_string();
        let url = self.resume(&id, return_url).await?;
        Ok(Started {
            provider_ref: id,
            url,
        })
    }

    async fn resume(&self, provider_ref: &str, _return_url: &str) -> Result<String> {
        check_ref(provider_ref)?;
        let link = self
            .send(
                "making a one-time link",
                self.request(
                    reqwest::Method::POST,
                    &format!("/api/v1/inquiries/{provider_ref}/generate-one-time-link"),
                ),
            )
            .await?;
        str_at(&link, &["meta", "one-time-link"])
            .map(str::to_string)
            .ok_or_else(|| provider("making a one-time link: no link in the answer".into()))
    }

    async fn lookup(&self, provider_ref: &str) -> Result<ProviderUpdate> {
        check_ref(provider_ref)?;
        let v = self
            .send(
                "looking up an inquiry",
                self.request(
                    reqwest::Method::GET,
                    &format!("/api/v1/inquiries/{provider_ref}"),
                ),
            )
            .await?;
        let status = str_at(&v, &["data", "attributes", "status"]).unwrap_or("");
        let now = Utc::now();
        Ok(ProviderUpdate {
            event_id: format!("lookup:{}", now.timestamp_micros()),
            provider_ref: provider_ref.to_string(),
            patient: str_at(&v, &["data", "attributes", "reference-id"]).map(str::to_string),
            state: self.map_status(status),
            reason: None,
            at: now,
        })
    }

    async fn redact(&self, provider_ref: &str) -> Result<()> {
        check_ref(provider_ref)?;
        self.send(
            "redacting an inquiry",
            self.request(
                reqwest::Method::DELETE,
                &format!("/api/v1/inquiries/{provider_ref}"),
            ),
        )
        .await?;
        Ok(())
    }

    fn verify_event(&self, signature: &str, body: &[u8], now: i64) -> Result<ProviderUpdate> {
        verify_persona_signature(&self.config.webhook_secrets, signature, body, now)?;
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            RecordsError::Webhook(format!(
                "not a Persona event (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let event = v.get("data").unwrap_or(&Value::Null);
        let event_id = str_at(event, &["id"])
            .ok_or_else(|| RecordsError::Webhook("the event has no data.id".into()))?;
        let created = str_at(event, &["attributes", "created-at"])
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| {
                RecordsError::Webhook("the event has no data.attributes.created-at time".into())
            })?;
        let object = event
            .get("attributes")
            .and_then(|a| a.get("payload"))
            .and_then(|p| p.get("data"))
            .unwrap_or(&Value::Null);
        let is_inquiry = str_at(object, &["type"]) == Some("inquiry");
        let inquiry = str_at(object, &["id"]).unwrap_or("");
        let status = str_at(object, &["attributes", "status"]).unwrap_or("");
        Ok(ProviderUpdate {
            event_id: event_id.to_string(),
            provider_ref: inquiry.to_string(),
            patient: str_at(object, &["attributes", "reference-id"]).map(str::to_string),
            state: if is_inquiry && !inquiry.is_empty() {
                self.map_status(status)
            } else {
                None
            },
            reason: match status {
                "declined" | "failed" | "expired" => Some(format!("persona_{status}")),
                _ => None,
            },
            at: created,
        })
    }
}

/// Verifies a `Persona-Signature` header: `t=…,v1=…`, or during a rotation two such groups
/// separated by a space; any group's signature under any configured secret, within the
/// tolerance of `now`.
pub fn verify_persona_signature(
    secrets: &[Vec<u8>],
    header: &str,
    body: &[u8],
    now: i64,
) -> Result<()> {
    let pairs: Vec<(Option<i64>, Vec<String>)> = header
        .split_whitespace()
        .map(|group| {
            let mut t = None;
            let mut sigs = Vec::new();
            for part in group.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", v)) => t = v.parse().ok(),
                    Some(("v1", v)) => sigs.push(v.to_string()),
                    _ => {}
                }
            }
            (t, sigs)
        })
        .collect();
    if pairs.is_empty() {
        return Err(RecordsError::Webhook(
            "no Persona-Signature header: the request is not from Persona".into(),
        ));
    }
    verify_timestamped(secrets, &pairs, body, now)
}

/// Provider references go into URL paths: only the characters Persona's ids use.
pub(crate) fn check_ref(r: &str) -> Result<()> {
    if r.is_empty()
        || r.len() > 100
        || !r
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(RecordsError::Invalid("not a provider reference".into()));
    }
    Ok(())
}
