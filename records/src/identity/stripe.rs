//! Stripe Identity: a VerificationSession of type `document` with a matching live selfie,
//! Stripe's hosted flow (`url`), events `identity.verification_session.*` signed like every
//! Stripe webhook (`Stripe-Signature: t=…,v1=…`).
//!
//! API calls (form-encoded, `Idempotency-Key` on creation):
//! - `POST /v1/identity/verification_sessions` (type, options\[document\]…, client_reference_id,
//!   metadata\[tessera_patient\], return_url) → `{id, url, status}`;
//! - `GET /v1/identity/verification_sessions/{id}` → `status`, `last_error.code`, `url`;
//! - `POST /v1/identity/verification_sessions/{id}/redact`.
//!
//! Statuses: requires_input → started, or failed with the `last_error` code once an attempt
//! was made; processing → in review; verified → approved; canceled → failed.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::persona::check_ref;
use super::{
    Assurance, IdentityProvider, ProviderUpdate, Started, State, exchange, str_at,
    verify_timestamped,
};
use crate::{RecordsError, Result};

/// What an operator configures (environment: `STRIPE_SECRET_KEY`, `TESSERA_IDENTITY_*`).
#[derive(Clone)]
pub struct StripeIdentityConfig {
    /// `https://api.stripe.com` in production; a local server in tests.
    pub base_url: String,
    pub secret_key: String,
    pub webhook_secrets: Vec<Vec<u8>>,
    pub assurance: Assurance,
}

impl std::fmt::Debug for StripeIdentityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeIdentityConfig")
            .field("base_url", &self.base_url)
            .field("assurance", &self.assurance)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct StripeIdentity {
    config: StripeIdentityConfig,
    http: reqwest::Client,
}

fn provider(message: String) -> RecordsError {
    RecordsError::Provider {
        provider: "Stripe Identity",
        message,
    }
}

impl StripeIdentity {
    pub fn new(config: StripeIdentityConfig) -> Result<StripeIdentity> {
        if config.secret_key.is_empty() {
            return Err(RecordsError::Invalid(
                "Stripe Identity needs the Stripe secret key (STRIPE_SECRET_KEY)".into(),
            ));
        }
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .map_err(|e| RecordsError::internal(format!("HTTP client: {e}")))?;
        Ok(StripeIdentity { config, http })
    }

    async fn call(
        &self,
        what: &str,
        method: reqwest::Method,
        path: &str,
        form: Option<&[(&str, &str)]>,
        idempotency_key: Option<&str>,
    ) -> Result<Value> {
        let mut req = self
            .http
            .request(
                method,
                format!("{}{path}", self.config.base_url.trim_end_matches('/')),
            )
            .bearer_auth(&self.config.secret_key);
        if let Some(k) = idempotency_key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(form) = form {
            let body = serde_urlencoded::to_string(form)
                .map_err(|_| RecordsError::internal("encoding a form"))?;
            req = req
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body);
        }
        exchange("Stripe Identity", what, req, |v| {
            str_at(v, &["error", "code"]).or_else(|| str_at(v, &["error", "type"]))
        })
        .await
    }

    fn update(
        &self,
        event_id: String,
        object: &Value,
        kind: &str,
        at: DateTime<Utc>,
    ) -> ProviderUpdate {
        let last_error = str_at(object, &["last_error", "code"]).map(str::to_string);
        let (state, reason) = match kind {
            "created" => (Some(State::Started), None),
            "requires_input" if last_error.is_some() => (Some(State::Failed), last_error),
            "requires_input" => (Some(State::Started), None),
            "processing" => (Some(State::InReview), None),
            "verified" => (Some(State::Approved), None),
            "canceled" => (Some(State::Failed), Some("canceled".to_string())),
            _ => (None, None),
        };
        ProviderUpdate {
            event_id,
            provider_ref: str_at(object, &["id"]).unwrap_or("").to_string(),
            patient: str_at(object, &["client_reference_id"])
                .or_else(|| str_at(object, &["metadata", "tessera_patient"]))
                .map(str::to_string),
            state,
            reason,
            at,
        }
    }
}

#[async_trait]
impl IdentityProvider for StripeIdentity {
    fn code(&self) -> &'static str {
        "stripe_identity"
    }

    fn assurance(&self) -> Assurance {
        self.config.assurance
    }

    fn signature_header(&self) -> &'static str {
        "stripe-signature"
    }

    async fn start(
        &self,
        patient: &str,
        return_url: &str,
        idempotency_key: &str,
    ) -> Result<Started> {
        let form: [(&str, &str); 9] = [
            ("type", "document"),
            ("options[document][require_matching_selfie]", "true"),
            ("options[document][require_live_capture]", "true"),
            ("options[document][allowed_types][]", "driving_license"),
            ("options[document][allowed_types][]", "passport"),
            ("options[document][allowed_types][]", "id_card"),
            ("client_reference_id", patient),
            ("metadata[tessera_patient]", patient),
            ("return_url", return_url),
        ];
        let v = self
            .call(
                "creating a verification session",
                reqwest::Method::POST,
                "/v1/identity/verification_sessions",
                Some(&form),
                Some(idempotency_key),
            )
            .await?;
        let id = str_at(&v, &["id"])
            .ok_or_else(|| provider("creating a verification session: no id".into()))?;
        let url = str_at(&v, &["url"])
            .ok_or_else(|| provider("creating a verification session: no url".into()))?;
        Ok(Started {
            provider_ref: id.to_string(),
            url: url.to_string(),
        })
    }

    async fn resume(&self, provider_ref: &str, _return_url: &str) -> Result<String> {
        check_ref(provider_ref)?;
        let v = self
            .call(
                "reading a verification session",
                reqwest::Method::GET,
                &format!("/v1/identity/verification_sessions/{provider_ref}"),
                None,
                None,
            )
            .await?;
        str_at(&v, &["url"]).map(str::to_string).ok_or_else(|| {
            provider(
                "the verification session cannot be continued (no url): start a new one".into(),
            )
        })
    }

    async fn lookup(&self, provider_ref: &str) -> Result<ProviderUpdate> {
        check_ref(provider_ref)?;
        let v = self
            .call(
                "reading a verification session",
                reqwest::Method::GET,
                &format!("/v1/identity/verification_sessions/{provider_ref}"),
                None,
                None,
            )
            .await?;
        let now = Utc::now();
        let status = str_at(&v, &["status"]).unwrap_or("").to_string();
        Ok(self.update(
            format!("lookup:{}", now.timestamp_micros()),
            &v,
            &status,
            now,
        ))
    }

    async fn redact(&self, provider_ref: &str) -> Result<()> {
        check_ref(provider_ref)?;
        self.call(
            "redacting a verification session",
            reqwest::Method::POST,
            &format!("/v1/identity/verification_sessions/{provider_ref}/redact"),
            Some(&[]),
            Some(&format!("redact-{provider_ref}")),
        )
        .await?;
        Ok(())
    }

    fn verify_event(&self, signature: &str, body: &[u8], now: i64) -> Result<ProviderUpdate> {
        let mut t = None;
        let mut sigs = Vec::new();
        for part in signature.split(',') {
            match part.trim().split_once('=') {
                Some(("t", v)) => t = v.parse().ok(),
                Some(("v1", v)) => sigs.push(v.to_string()),
                _ => {}
            }
        }
        if t.is_none() {
            return Err(RecordsError::Webhook(
                "no Stripe-Signature header: the request is not from Stripe".into(),
            ));
        }
        verify_timestamped(&self.config.webhook_secrets, &[(t, sigs)], body, now)?;
        let v: Value = serde_json::from_slice(body).map_err(|e| {
            RecordsError::Webhook(format!(
                "not a Stripe event (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        let id = str_at(&v, &["id"])
            .ok_or_else(|| RecordsError::Webhook("the event has no id".into()))?;
        let kind = str_at(&v, &["type"]).unwrap_or("");
        let at = v
            .get("created")
            .and_then(Value::as_i64)
            .and_then(|s| DateTime::from_timestamp(s, 0))
            .ok_or_else(|| RecordsError::Webhook("the event has no `created` time".into()))?;
        let object = v
            .get("data")
            .and_then(|d| d.get("object"))
            .unwrap_or(&Value::Null);
        let Some(kind) = kind.strip_prefix("identity.verification_session.") else {
            return Ok(ProviderUpdate {
                event_id: id.to_string(),
                provider_ref: String::new(),
                patient: None,
                state: None,
                reason: None,
                at,
            });
        };
        Ok(self.update(id.to_string(), object, kind, at))
    }
}
