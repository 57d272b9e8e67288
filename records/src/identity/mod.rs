//! Identity proofing: a patient proves who they are at a provider's hosted flow before Tessera
//! asks anyone for their records or pays them.
//!
//! The provider does the proofing (document, selfie, database checks) and tells Tessera the
//! outcome by webhook and on lookup; Tessera keeps one row per attempt with the provider's
//! reference, a status of its own and, on failure, a reason code (never the evidence: no name,
//! no document number, no picture reaches Tessera).
//!
//! Decisions:
//! - **What unlocks.** Only the latest attempt counts, and only `approved` at IAL2 (NIST SP
//!   800-63-4) unlocks record requests and payouts. A provider's `completed` counts as approved
//!   only where the operator says no manual review is configured; otherwise it is `in_review`.
//!   The assurance level is the operator's statement about the provider's configuration (the
//!   Persona template, Stripe Identity with document and matching selfie), recorded on each
//!   attempt, so changing the configuration does not upgrade old attempts.
//! - **Order.** Webhooks are de-duplicated by event id and applied only when no newer event
//!   (by the provider's creation time) has been applied to the same attempt; a lookup on the
//!   patient's return counts as an event at the time of the lookup.
//! - **Retry.** Declined, failed and expired attempts offer a new attempt; an approved one does
//!   not; an attempt in progress is resumed with a fresh link.
//! - **The payout hold** reads the same status: every applied change is written through to
//!   `tessera-payouts` (`Payouts::set_identity`) before the event is marked as handled, so a
//!   failure there makes the provider deliver it again.

mod persona;
mod stripe;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;
use tessera_payouts::Payouts;
use tessera_payouts::payout::IdentityStatus;

pub use persona::{Persona, PersonaConfig, verify_persona_signature};
pub use stripe::{StripeIdentity, StripeIdentityConfig};

use crate::store::{parse_time, sql_err, time_text};
use crate::{RecordsError, RecordsStore, Result, random_id};

/// How far a webhook's signed timestamp may be from now (both providers' recommendation).
pub const TOLERANCE_SECONDS: i64 = 300;

/// The identity assurance level an attempt was configured to reach (NIST SP 800-63-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Assurance {
    Ial1,
    Ial2,
}

impl Assurance {
    pub fn code(self) -> &'static str {
        match self {
            Assurance::Ial1 => "ial1",
            Assurance::Ial2 => "ial2",
        }
    }

    pub fn parse(s: &str) -> Result<Assurance> {
        match s.to_ascii_lowercase().as_str() {
            "ial1" => Ok(Assurance::Ial1),
            "ial2" => Ok(Assurance::Ial2),
            _ => Err(RecordsError::Invalid(format!(
                "identity assurance `{s}`: use ial2 (or ial1 for a configuration that does not reach IAL2)"
            ))),
        }
    }
}

/// Tessera's status of an identity verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No attempt yet.
    NotStarted,
    /// Created at the provider; the patient has not finished the flow.
    Started,
    /// The patient finished; the provider (or a reviewer there) is deciding.
    InReview,
    Approved,
    Declined,
    Failed,
    Expired,
}

impl State {
    pub fn code(self) -> &'static str {
        match self {
            State::NotStarted => "not_started",
            State::Started => "started",
            State::InReview => "in_review",
            State::Approved => "approved",
            State::Declined => "declined",
            State::Failed => "failed",
            State::Expired => "expired",
        }
    }

    fn parse(s: &str) -> State {
        match s {
            "started" => State::Started,
            "in_review" => State::InReview,
            "approved" => State::Approved,
            "declined" => State::Declined,
            "failed" => State::Failed,
            "expired" => State::Expired,
            _ => State::NotStarted,
        }
    }

    /// Whether the patient may start a new attempt.
    pub fn can_retry(self) -> bool {
        matches!(
            self,
            State::NotStarted | State::Declined | State::Failed | State::Expired
        )
    }

    /// Whether an attempt in this state can still be continued at the provider.
    pub fn can_resume(self) -> bool {
        self == State::Started
    }

    /// What the patient reads about this status.
    pub fn explanation(self) -> &'static str {
        match self {
            State::NotStarted => {
                "You have not verified your identity yet. We need to before we can ask your providers for your records or pay you."
            }
            State::Started => {
                "You started verifying your identity but have not finished. You can continue where you left off."
            }
            State::InReview => {
                "You finished the steps. The verification service is reviewing them; this usually takes minutes, sometimes a day."
            }
            State::Approved => {
                "Your identity is verified. We can ask your providers for your records and pay you."
            }
            State::Declined => {
                "The verification service could not confirm your identity after reviewing it. You can try again, with another document if you have one."
            }
            State::Failed => "The verification did not succeed. You can try again.",
            State::Expired => {
                "The verification was not finished in time and has expired. You can start again."
            }
        }
    }
}

/// A verification's reason codes as patients read them. Codes come from the providers (Stripe
/// Identity's `last_error.code`); unknown codes get the state's own explanation.
pub fn reason_text(code: &str) -> Option<&'static str> {
    Some(match code {
        "consent_declined" => "You did not agree to the verification's terms.",
        "document_expired" => "The document you used has expired. Please use a valid one.",
        "document_type_not_supported" => {
            "That kind of document is not accepted. Please use a driver's license, passport or national ID card."
        }
        "document_unverified_other" | "document_fraudulent" => {
            "The document could not be verified. Please try again with a clear photo, or another document."
        }
        "selfie_face_mismatch" => "The selfie did not match the photo on the document.",
        "selfie_document_missing_photo" => "The document has no photo to compare the selfie with.",
        "selfie_unverified_other" | "selfie_manipulated" => {
            "The selfie could not be verified. Please try again in good light."
        }
        "under_supported_age" => "The verification service does not verify people this young.",
        "canceled" => "The verification was cancelled.",
        _ => return None,
    })
}

/// What a provider says about one attempt (from a webhook or a lookup).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderUpdate {
    /// The provider's event id (`lookup:<time>` for a lookup).
    pub event_id: String,
    /// The provider's id of the attempt (inquiry or verification session).
    pub provider_ref: String,
    /// The patient, where the provider echoes Tessera's reference.
    pub patient: Option<String>,
    /// `None`: an event that says nothing about the status (recorded, not applied).
    pub state: Option<State>,
    pub reason: Option<String>,
    /// The provider's time of the event.
    pub at: DateTime<Utc>,
}

/// A new attempt at the provider.
#[derive(Debug, Clone)]
pub struct Started {
    pub provider_ref: String,
    /// Where the patient goes to do it (single use, short-lived).
    pub url: String,
}

/// An identity-proofing provider.
#[async_trait]
pub trait IdentityProvider: Send + Sync + std::fmt::Debug {
    /// `persona`, `stripe_identity`.
    fn code(&self) -> &'static str;
    /// The assurance level this provider's configuration reaches.
    fn assurance(&self) -> Assurance;
    /// The HTTP header that carries the webhook signature.
    fn signature_header(&self) -> &'static str;
    /// Creates an attempt for `patient`; `idempotency_key` makes a retried call create one.
    async fn start(
        &self,
        patient: &str,
        return_url: &str,
        idempotency_key: &str,
    ) -> Result<Started>;
    /// A fresh link into an attempt still in progress.
    async fn resume(&self, provider_ref: &str, return_url: &str) -> Result<String>;
    /// The attempt's status now.
    async fn lookup(&self, provider_ref: &str) -> Result<ProviderUpdate>;
    /// Asks the provider to delete what it holds of the attempt (a deleted patient).
    async fn redact(&self, provider_ref: &str) -> Result<()>;
    /// Checks a webhook's signature (`signature`: the header's value) and age at `now` (Unix
    /// seconds) and reads the event.
    fn verify_event(&self, signature: &str, body: &[u8], now: i64) -> Result<ProviderUpdate>;
}

/// A patient's identity status as pages and other crates read it.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub state: State,
    pub provider: Option<String>,
    pub assurance: Option<Assurance>,
    pub reason: Option<String>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl Status {
    /// Whether record requests and payouts are unlocked.
    pub fn unlocked(&self) -> bool {
        self.state == State::Approved && self.assurance == Some(Assurance::Ial2)
    }

    /// What the patient reads: the reason where the provider gave a known one, else the state's.
    pub fn explanation(&self) -> &'static str {
        if matches!(self.state, State::Failed | State::Declined)
            && let Some(text) = self.reason.as_deref().and_then(reason_text)
        {
            return text;
        }
        if self.state == State::Approved && !self.unlocked() {
            return "Your identity was verified, but not to the level we need (IAL2) before asking providers for records or paying you. Please verify again.";
        }
        self.state.explanation()
    }

    /// The payout hold's view of this status.
    pub fn payout_status(&self) -> IdentityStatus {
        match self.state {
            _ if self.unlocked() => IdentityStatus::Verified,
            State::Started | State::InReview => IdentityStatus::Pending,
            State::Declined | State::Failed | State::Expired | State::Approved => {
                IdentityStatus::Failed
            }
            State::NotStarted => IdentityStatus::Unverified,
        }
    }
}

/// What handling a webhook did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub event_id: String,
    /// `applied`, `duplicate`, `stale` (an older event after a newer one), `ignored` (says
    /// nothing about the status), `unmatched` (no attempt of Tessera's).
    pub result: &'static str,
}

/// Identity proofing over one provider.
#[derive(Debug, Clone)]
pub struct Identity {
    store: RecordsStore,
    provider: Arc<dyn IdentityProvider>,
    payouts: Payouts,
}

impl Identity {
    pub fn new(store: RecordsStore, provider: Arc<dyn IdentityProvider>, payouts: Payouts) -> Self {
        Identity {
            store,
            provider,
            payouts,
        }
    }

    pub fn provider(&self) -> &dyn IdentityProvider {
        self.provider.as_ref()
    }

    /// The patient's status: their latest attempt at any provider.
    pub async fn status(&self, patient: &str) -> Result<Status> {
        status_of(&self.store, patient).await
    }

    /// Starts an attempt (or resumes the one in progress) and returns where the patient goes.
    /// Refused when the patient is already verified or an attempt is being reviewed.
    pub async fn start(&self, patient: &str, return_url: &str) -> Result<String> {
        let current = self.latest(patient).await?;
        if let Some(row) = &current {
            let state = State::parse(&row.state);
            if state.can_resume() && row.provider == self.provider.code() {
                return self.provider.resume(&row.provider_ref, return_url).await;
            }
            let unlocked = state == State::Approved && row.assurance == Assurance::Ial2.code();
            if state == State::InReview || unlocked {
                return Err(RecordsError::Invalid(format!(
                    "there is nothing to start: the identity verification is {}",
                    if unlocked {
                        "approved"
                    } else {
                        "being reviewed"
                    }
                )));
            }
        }
        let id = random_id()?;
        // The attempt's own id is the idempotency key: a retried request creates one attempt.
        let started = self.provider.start(patient, return_url, &id).await?;
        let now = Utc::now();
        let done = sqlx::query(
            "INSERT INTO identity_verifications (id, patient, provider, provider_ref, assurance, state, created_at, updated_at, last_event_at)
             VALUES ($1, $2, $3, $4, $5, 'started', $6, $6, $7)
             ON CONFLICT (provider, provider_ref) DO NOTHING",
        )
        .bind(&id)
        .bind(patient)
        .bind(self.provider.code())
        .bind(&started.provider_ref)
        .bind(self.provider.assurance().code())
        .bind(time_text(now))
        .bind(time_text(DateTime::<Utc>::UNIX_EPOCH))
        .execute(self.store.pool())
        .await
        .map_err(sql_err("recording an identity verification"))?;
        if done.rows_affected() == 1 {
            self.mirror(patient).await?;
        }
        Ok(started.url)
    }

    /// Asks the provider for the status of the patient's latest attempt (on their return from
    /// the hosted flow, where the webhook may not have arrived yet) and applies it.
    pub async fn refresh(&self, patient: &str) -> Result<Status> {
        if let Some(row) = self.latest(patient).await?
            && row.provider == self.provider.code()
            && matches!(State::parse(&row.state), State::Started | State::InReview)
        {
            let update = self.provider.lookup(&row.provider_ref).await?;
            self.apply(&update).await?;
        }
        self.status(patient).await
    }

    /// Handles a webhook: signature and age checked, then de-duplicated and applied in order.
    pub async fn handle_webhook(&self, signature: &str, body: &[u8], now: i64) -> Result<Outcome> {
        let update = self.provider.verify_event(signature, body, now)?;
        let seen: Option<String> = sqlx::query_scalar(
            "SELECT outcome FROM identity_events WHERE provider = $1 AND event_id = $2",
        )
        .bind(self.provider.code())
        .bind(&update.event_id)
        .fetch_optional(self.store.pool())
        .await
        .map_err(sql_err("reading identity events"))?;
        if seen.is_some() {
            return Ok(Outcome {
                event_id: update.event_id,
                result: "duplicate",
            });
        }
        let result = self.apply(&update).await?;
        sqlx::query(
            "INSERT INTO identity_events (provider, event_id, received_at, outcome) VALUES ($1, $2, $3, $4)
             ON CONFLICT (provider, event_id) DO NOTHING",
        )
        .bind(self.provider.code())
        .bind(&update.event_id)
        .bind(time_text(Utc::now()))
        .bind(result)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("recording an identity event"))?;
        Ok(Outcome {
            event_id: update.event_id,
            result,
        })
    }

    /// Applies one update: to the attempt it names, unless a newer event was applied already.
    async fn apply(&self, u: &ProviderUpdate) -> Result<&'static str> {
        let Some(state) = u.state else {
            return Ok("ignored");
        };
        let row = sqlx::query(
            "SELECT patient, last_event_at FROM identity_verifications WHERE provider = $1 AND provider_ref = $2",
        )
        .bind(self.provider.code())
        .bind(&u.provider_ref)
        .fetch_optional(self.store.pool())
        .await
        .map_err(sql_err("reading an identity verification"))?;
        let patient = match row {
            Some(row) => {
                let last = parse_time(&row.get::<String, _>("last_event_at"))?;
                if u.at < last {
                    return Ok("stale");
                }
                let patient: String = row.get("patient");
                sqlx::query(
                    "UPDATE identity_verifications SET state = $1, reason = $2, updated_at = $3, last_event_at = $4
                     WHERE provider = $5 AND provider_ref = $6 AND last_event_at <= $4",
                )
                .bind(state.code())
                .bind(u.reason.as_deref())
                .bind(time_text(Utc::now()))
                .bind(time_text(u.at))
                .bind(self.provider.code())
                .bind(&u.provider_ref)
                .execute(self.store.pool())
                .await
                .map_err(sql_err("updating an identity verification"))?;
                patient
            }
            None => {
                // The provider's event can arrive before the attempt's own row is written (the
                // webhook races the API's answer): the reference Tessera gave names the patient.
                let Some(patient) = u.patient.clone() else {
                    return Ok("unmatched");
                };
                let now = time_text(Utc::now());
                sqlx::query(
                    "INSERT INTO identity_verifications (id, patient, provider, provider_ref, assurance, state, reason, created_at, updated_at, last_event_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)
                     ON CONFLICT (provider, provider_ref) DO NOTHING",
                )
                .bind(random_id()?)
                .bind(&patient)
                .bind(self.provider.code())
                .bind(&u.provider_ref)
                .bind(self.provider.assurance().code())
                .bind(state.code())
                .bind(u.reason.as_deref())
                .bind(&now)
                .bind(time_text(u.at))
                .execute(self.store.pool())
                .await
                .map_err(sql_err("recording an identity verification"))?;
                patient
            }
        };
        self.mirror(&patient).await?;
        Ok("applied")
    }

    async fn mirror(&self, patient: &str) -> Result<()> {
        mirror(&self.store, &self.payouts, patient).await
    }

    /// Forgets a patient's attempts (their deletion): each is redacted at the provider first,
    /// then the rows go. A provider that cannot be reached refuses the deletion for now.
    pub async fn forget(&self, patient: &str) -> Result<u64> {
        let rows = sqlx::query(
            "SELECT provider, provider_ref FROM identity_verifications WHERE patient = $1",
        )
        .bind(patient)
        .fetch_all(self.store.pool())
        .await
        .map_err(sql_err("reading identity verifications"))?;
        for row in &rows {
            let provider: String = row.get("provider");
            if provider == self.provider.code() {
                self.provider
                    .redact(&row.get::<String, _>("provider_ref"))
                    .await?;
            } else {
                tracing::warn!(
                    provider,
                    "an identity verification at a provider no longer configured was not redacted there"
                );
            }
        }
        forget_rows(&self.store, patient).await
    }

    async fn latest(&self, patient: &str) -> Result<Option<Attempt>> {
        latest_attempt(&self.store, patient).await
    }
}

#[derive(Debug)]
struct Attempt {
    provider: String,
    provider_ref: String,
    assurance: String,
    state: String,
    reason: Option<String>,
    updated_at: String,
}

async fn latest_attempt(store: &RecordsStore, patient: &str) -> Result<Option<Attempt>> {
    let row = sqlx::query(
        "SELECT provider, provider_ref, assurance, state, reason, updated_at FROM identity_verifications
         WHERE patient = $1 ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(patient)
    .fetch_optional(store.pool())
    .await
    .map_err(sql_err("reading identity verifications"))?;
    Ok(row.map(|r| Attempt {
        provider: r.get("provider"),
        provider_ref: r.get("provider_ref"),
        assurance: r.get("assurance"),
        state: r.get("state"),
        reason: r.get("reason"),
        updated_at: r.get("updated_at"),
    }))
}

/// Writes the patient's status through to the payout hold.
async fn mirror(store: &RecordsStore, payouts: &Payouts, patient: &str) -> Result<()> {
    let latest = latest_attempt(store, patient).await?;
    let reference = latest
        .as_ref()
        .map(|r| format!("{}:{}", r.provider, r.provider_ref))
        .unwrap_or_default();
    let status = status_from(latest)?;
    payouts
        .set_identity(patient, status.payout_status(), &reference)
        .await?;
    Ok(())
}

/// Deletes a patient's attempts without asking any provider (no provider is configured, or
/// after [`Identity::forget`] redacted them there).
pub async fn forget_rows(store: &RecordsStore, patient: &str) -> Result<u64> {
    let done = sqlx::query("DELETE FROM identity_verifications WHERE patient = $1")
        .bind(patient)
        .execute(store.pool())
        .await
        .map_err(sql_err("deleting identity verifications"))?;
    Ok(done.rows_affected())
}

/// Records an operator's decision after verifying a patient in person (NIST SP 800-63-4's
/// attended proofing, at IAL2 when the operator inspected the evidence the level asks for), as
/// an attempt of provider `operator`; the payout hold follows.
pub async fn record_attended(
    store: &RecordsStore,
    payouts: &Payouts,
    patient: &str,
    approved: bool,
    assurance: Assurance,
) -> Result<Status> {
    let now = time_text(Utc::now());
    let id = random_id()?;
    sqlx::query(
        "INSERT INTO identity_verifications (id, patient, provider, provider_ref, assurance, state, reason, created_at, updated_at, last_event_at)
         VALUES ($1, $2, 'operator', $1, $3, $4, $5, $6, $6, $6)",
    )
    .bind(&id)
    .bind(patient)
    .bind(assurance.code())
    .bind(if approved { State::Approved } else { State::Declined }.code())
    .bind(if approved { None } else { Some("attended_declined") })
    .bind(&now)
    .execute(store.pool())
    .await
    .map_err(sql_err("recording an identity verification"))?;
    mirror(store, payouts, patient).await?;
    status_of(store, patient).await
}

/// A patient's identity status, read without a provider configured (pages, record requests).
pub async fn status_of(store: &RecordsStore, patient: &str) -> Result<Status> {
    status_from(latest_attempt(store, patient).await?)
}

/// The status a latest attempt (or none) stands for.
fn status_from(latest: Option<Attempt>) -> Result<Status> {
    let Some(a) = latest else {
        return Ok(Status {
            state: State::NotStarted,
            provider: None,
            assurance: None,
            reason: None,
            updated_at: None,
        });
    };
    Ok(Status {
        state: State::parse(&a.state),
        assurance: Assurance::parse(&a.assurance).ok(),
        provider: Some(a.provider),
        reason: a.reason,
        updated_at: Some(parse_time(&a.updated_at)?),
    })
}

/// Verifies a `t=…,v1=…` signature (Persona's and Stripe's scheme): HMAC-SHA-256 of `t.body`
/// under any of `secrets` equals any `v1`, and `t` is within [`TOLERANCE_SECONDS`] of `now`.
/// `pairs` are the header's `t=…,v1=…` groups (Persona sends two during a secret rotation).
pub(crate) fn verify_timestamped(
    secrets: &[Vec<u8>],
    pairs: &[(Option<i64>, Vec<String>)],
    body: &[u8],
    now: i64,
) -> Result<()> {
    if secrets.is_empty() {
        return Err(RecordsError::Webhook(
            "no webhook secret is configured for this provider".into(),
        ));
    }
    let mut stale = false;
    for (t, sigs) in pairs {
        let Some(t) = *t else { continue };
        let mut signed = t.to_string().into_bytes();
        signed.push(b'.');
        signed.extend_from_slice(body);
        for secret in secrets {
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
            for sig in sigs {
                let Ok(sig) = hex::decode(sig) else { continue };
                if ring::hmac::verify(&key, &signed, &sig).is_ok() {
                    if (now - t).abs() > TOLERANCE_SECONDS {
                        stale = true;
                        continue;
                    }
                    return Ok(());
                }
            }
        }
    }
    Err(RecordsError::Webhook(if stale {
        format!(
            "the signature's timestamp is more than {TOLERANCE_SECONDS} seconds from now (a replay, or a clock off)"
        )
    } else {
        "no signature matches the body under the configured secrets".into()
    }))
}

/// Sends a provider's API request and reads its JSON answer (`Null` for an empty one). A
/// refusal is reported as `what`, the HTTP status and `error_code` of the answer's body (the
/// provider's error code or title, which carry no personal data); nothing else of the body.
pub(crate) async fn exchange(
    provider: &'static str,
    what: &str,
    req: reqwest::RequestBuilder,
    error_code: fn(&serde_json::Value) -> Option<&str>,
) -> Result<serde_json::Value> {
    let fail = |message: String| RecordsError::Provider { provider, message };
    let resp = req.send().await.map_err(|e| {
        fail(format!(
            "{what}: the API could not be reached ({}); try again later",
            e.without_url()
        ))
    })?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| fail(format!("{what}: {}", e.without_url())))?;
    let v: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    if !status.is_success() {
        let code = v.as_ref().and_then(error_code).unwrap_or("");
        return Err(fail(format!("{what}: HTTP {status} {code}")));
    }
    match v {
        Some(v) => Ok(v),
        None if body.is_empty() => Ok(serde_json::Value::Null),
        None => Err(fail(format!("{what}: the answer is not JSON"))),
    }
}

/// Reads a JSON string at a path of keys.
pub(crate) fn str_at<'a>(v: &'a serde_json::Value, path: &[&str]) -> Option<&'a str> {
    path.iter()
        .try_fold(v, |v, k| v.get(*k))
        .and_then(|v| v.as_str())
}
