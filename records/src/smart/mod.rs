//! SMART on FHIR patient access (SMART App Launch 2.x, standalone launch): a patient connects
//! Tessera to a provider's certified FHIR API and their record is fetched and ingested.
//!
//! - **Discovery** at `<base>/.well-known/smart-configuration`; a server that does not offer
//!   PKCE `S256` is refused (SMART 2 requires it; `plain` is never used).
//! - **Authorization code with PKCE**: a random `state` (only its SHA-256 is stored) and code
//!   verifier (sealed under the patient's data key), `aud` = the FHIR base, scopes
//!   `launch/patient patient/*.rs offline_access`. The callback must come back to the same
//!   patient's session within [`AUTHORIZE_WINDOW_MINUTES`].
//! - **Tokens** (access, refresh, the FHIR patient id) are sealed under the patient's data key,
//!   like the rest of their identified data, so deleting the patient destroys them; refreshed
//!   when expired or when the server answers 401.
//! - **Fetching**: `Patient/<id>/$everything` where the server offers it, otherwise the US Core
//!   searches per resource type; `next` links followed (on the same origin only: a token is
//!   never sent elsewhere); 429 and 503 waited out per `Retry-After` (capped); OperationOutcome
//!   errors reported by their issue codes. Later syncs ask only for what changed (`_since` /
//!   `_lastUpdated=gt…`, from a little before the previous sync's start).
//! - **Isolation**: a resource that names another patient is dropped and counted, whatever the
//!   server sent; what is kept is ingested (quarantine included) as this patient's, with the
//!   provider as the source (`smart:<endpoint>`).
//! - **Disconnecting** revokes the refresh token where the server offers revocation (RFC 7009)
//!   and destroys the sealed tokens; records already received stay until the patient deletes
//!   them.

pub mod directory;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use tessera_catalog::{Catalog, IngestOptions, IngestReport, NoProgress};

use crate::identity::{status_of, str_at};
use crate::store::{parse_time, sql_err, time_text};
use crate::{RecordsError, RecordsStore, Result, random_id};
pub use directory::{DirectoryEntry, DirectoryReport, acceptable_base};

/// The scopes Tessera asks for: the patient's context, read and search of every resource type
/// (SMART v2 syntax), and a refresh token for later syncs.
pub const SCOPES: &str = "launch/patient patient/*.rs offline_access";

/// How long a patient has to finish at the provider and come back.
pub const AUTHORIZE_WINDOW_MINUTES: i64 = 15;

/// A later sync asks for what changed since this long before the previous sync started, so
/// that clocks a little apart lose nothing (what is fetched twice is ingested as unchanged).
const SYNC_OVERLAP_MINUTES: i64 = 5;

/// How long a sync holds its connection at most (a crashed one's lease runs out).
const SYNC_LEASE_MINUTES: i64 = 30;

/// The US Core 6.1 resource types searched by patient when `$everything` is not offered.
pub const US_CORE_TYPES: &[&str] = &[
    "AllergyIntolerance",
    "CarePlan",
    "CareTeam",
    "Condition",
    "Coverage",
    "Device",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "Goal",
    "Immunization",
    "MedicationDispense",
    "MedicationRequest",
    "Observation",
    "Procedure",
    "QuestionnaireResponse",
    "ServiceRequest",
];

/// What an operator configures.
#[derive(Debug, Clone)]
pub struct SmartConfig {
    /// Tessera's client id where the directory names none for an endpoint.
    pub client_id: String,
    /// Where providers send the patient back (`<public URL>/me/providers/callback`).
    pub redirect_uri: String,
    /// Results per page asked of servers (`_count`).
    pub page_size: u32,
    /// The longest `Retry-After` honoured; a longer one ends the sync (resumed at the next).
    pub max_wait: Duration,
    /// Retries of one request after 429/503 or a network failure.
    pub retries: u32,
    /// A request's timeout.
    pub timeout: Duration,
}

impl SmartConfig {
    pub fn new(client_id: &str, redirect_uri: &str) -> SmartConfig {
        SmartConfig {
            client_id: client_id.to_string(),
            redirect_uri: redirect_uri.to_string(),
            page_size: 100,
            max_wait: Duration::from_secs(120),
            retries: 5,
            timeout: Duration::from_secs(60),
        }
    }
}

/// A connection as the patient's page shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    pub id: String,
    pub endpoint: String,
    pub organization: String,
    /// `authorizing`, `connected`, `needs_reconnect`, `disconnected`.
    pub state: String,
    pub last_sync_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub resources_fetched: i64,
}

/// What one sync did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    /// `$everything` or `searches`.
    pub method: String,
    pub pages: u32,
    pub resources: u64,
    /// Resources that named another patient: dropped.
    pub foreign_dropped: u64,
    /// Tokens refreshed during the sync.
    pub refreshed: u32,
    /// Waits for 429/503.
    pub waited: u32,
    /// Resource types the server refused (not authorized, or an OperationOutcome error), with
    /// the issue code.
    pub refused_types: Vec<(String, String)>,
    pub incremental: bool,
    #[serde(skip)]
    pub ingest: Option<IngestReport>,
}

/// What is sealed in `provider_connections.secret`.
#[derive(Serialize, Deserialize)]
struct Secret {
    fhir_base: String,
    token_endpoint: String,
    revocation_endpoint: Option<String>,
    client_id: String,
    /// The PKCE verifier, while authorizing.
    verifier: Option<String>,
    access_token: Option<String>,
    refresh_token: Option<String>,
    /// Unix seconds.
    expires_at: Option<i64>,
    /// The FHIR id of the patient the token is for (the token response's `patient`).
    patient: Option<String>,
    scope: Option<String>,
    /// Whether the server answered `$everything` (learned at the first sync).
    everything: Option<bool>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// SMART on FHIR patient access.
#[derive(Debug, Clone)]
pub struct Smart {
    store: RecordsStore,
    catalog: Catalog,
    http: reqwest::Client,
    config: SmartConfig,
}

fn provider_err(message: String) -> RecordsError {
    RecordsError::Provider {
        provider: "the provider's FHIR server",
        message,
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()).as_ref())
}

fn random_token() -> Result<String> {
    let mut b = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
        .map_err(|_| RecordsError::internal("the system random generator failed"))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

/// The PKCE S256 challenge of a verifier (RFC 7636 §4.2).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ))
}

fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

/// The OperationOutcome issue codes of an error body (codes only: diagnostics may quote data).
fn outcome_codes(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(|v| str_at(v, &["resourceType"]) == Some("OperationOutcome"))
        .and_then(|v| {
            v.get("issue").and_then(Value::as_array).map(|issues| {
                issues
                    .iter()
                    .filter_map(|i| str_at(i, &["code"]))
                    .collect::<Vec<_>>()
                    .join(",")
            })
        })
        .unwrap_or_default()
}

/// Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = DateTime::parse_from_rfc2822(v).ok()?;
    let secs = (at.with_timezone(&Utc) - Utc::now()).num_seconds().max(0);
    Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

/// Whether a resource belongs to the FHIR patient `pid` (or to no patient: reference data).
fn belongs_to(r: &Value, pid: &str) -> bool {
    if str_at(r, &["resourceType"]) == Some("Patient") {
        return str_at(r, &["id"]) == Some(pid);
    }
    let mine = |reference: &str| {
        let reference = reference.split("/_history/").next().unwrap_or(reference);
        reference == format!("Patient/{pid}") || reference.ends_with(&format!("/Patient/{pid}"))
    };
    // Resources without a patient reference (Practitioner, Organization, Medication,
    // Location) are reference data.
    ["subject", "patient", "beneficiary"].iter().all(|field| {
        str_at(r, &[field, "reference"])
            .filter(|reference| reference.contains("Patient/"))
            .is_none_or(&mine)
    })
}

impl Smart {
    pub fn new(store: RecordsStore, catalog: Catalog, config: SmartConfig) -> Result<Smart> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RecordsError::internal(format!("HTTP client: {e}")))?;
        Ok(Smart {
            store,
            catalog,
            http,
            config,
        })
    }

    // ---- the directory -------------------------------------------------------------------

    /// Loads a directory bundle under `name` (replacing what that directory held before).
    pub async fn load_directory(&self, name: &str, bundle: &[u8]) -> Result<DirectoryReport> {
        let report = directory::parse(bundle)?;
        let now = time_text(Utc::now());
        let mut tx = self
            .store
            .pool()
            .begin()
            .await
            .map_err(sql_err("loading a directory"))?;
        sqlx::query("DELETE FROM provider_endpoints WHERE directory = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(sql_err("loading a directory"))?;
        for e in &report.entries {
            sqlx::query(
                "INSERT INTO provider_endpoints (id, organization, fhir_base, city, region, directory, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET organization = excluded.organization, fhir_base = excluded.fhir_base,
                   city = excluded.city, region = excluded.region, directory = excluded.directory, updated_at = excluded.updated_at",
            )
            .bind(&e.id)
            .bind(&e.organization)
            .bind(&e.fhir_base)
            .bind(e.city.as_deref())
            .bind(e.region.as_deref())
            .bind(name)
            .bind(&now)
            .execute(&mut *tx)
            .await
            .map_err(sql_err("loading a directory"))?;
        }
        tx.commit().await.map_err(sql_err("loading a directory"))?;
        Ok(report)
    }

    /// Sets the client id Tessera is registered under at one endpoint's server.
    pub async fn set_client_id(&self, endpoint: &str, client_id: &str) -> Result<()> {
        let done = sqlx::query("UPDATE provider_endpoints SET client_id = $1 WHERE id = $2")
            .bind(client_id)
            .bind(endpoint)
            .execute(self.store.pool())
            .await
            .map_err(sql_err("setting a client id"))?;
        if done.rows_affected() == 0 {
            return Err(RecordsError::NotFound(format!(
                "no provider `{endpoint}` in the directory: load one with `tessera providers load`"
            )));
        }
        Ok(())
    }

    /// Providers whose name or town contains `search` (case-insensitive), by name.
    pub async fn directory(&self, search: &str) -> Result<Vec<DirectoryEntry>> {
        let rows = sqlx::query(
            "SELECT id, organization, fhir_base, city, region FROM provider_endpoints ORDER BY organization, id",
        )
        .fetch_all(self.store.pool())
        .await
        .map_err(sql_err("reading the directory"))?;
        let needle = search.trim().to_lowercase();
        Ok(rows
            .iter()
            .map(|r| DirectoryEntry {
                id: r.get("id"),
                organization: r.get("organization"),
                fhir_base: r.get("fhir_base"),
                city: r.get("city"),
                region: r.get("region"),
            })
            .filter(|e| {
                needle.is_empty()
                    || e.organization.to_lowercase().contains(&needle)
                    || e.city
                        .as_deref()
                        .is_some_and(|c| c.to_lowercase().contains(&needle))
            })
            .collect())
    }

    async fn endpoint(&self, id: &str) -> Result<(DirectoryEntry, Option<String>)> {
        let r = sqlx::query(
            "SELECT id, organization, fhir_base, city, region, client_id FROM provider_endpoints WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.store.pool())
        .await
        .map_err(sql_err("reading the directory"))?
        .ok_or_else(|| RecordsError::NotFound("no such provider in the directory".into()))?;
        Ok((
            DirectoryEntry {
                id: r.get("id"),
                organization: r.get("organization"),
                fhir_base: r.get("fhir_base"),
                city: r.get("city"),
                region: r.get("region"),
            },
            r.get("client_id"),
        ))
    }

    // ---- connecting ------------------------------------------------------------------------

    /// Starts a standalone launch for `patient` at a directory provider: discovery, then the
    /// authorization URL the patient's browser goes to. Refused until the patient's identity
    /// is verified at IAL2.
    pub async fn begin(&self, patient: &str, endpoint_id: &str) -> Result<String> {
        if !status_of(&self.store, patient).await?.unlocked() {
            return Err(RecordsError::Invalid(
                "verify your identity first: records are requested only for a verified person"
                    .into(),
            ));
        }
        let (endpoint, client_id) = self.endpoint(endpoint_id).await?;
        let client_id = client_id.unwrap_or_else(|| self.config.client_id.clone());
        let discovery = self.discover(&endpoint.fhir_base).await?;
        let state = random_token()?;
        let verifier = random_token()?;
        let id = random_id()?;
        let secret = Secret {
            fhir_base: endpoint.fhir_base.clone(),
            token_endpoint: discovery.token_endpoint,
            revocation_endpoint: discovery.revocation_endpoint,
            client_id: client_id.clone(),
            verifier: Some(verifier.clone()),
            access_token: None,
            refresh_token: None,
            expires_at: None,
            patient: None,
            scope: None,
            everything: None,
        };
        let sealed = self.seal(patient, &id, &secret).await?;
        let now = time_text(Utc::now());
        sqlx::query(
            "INSERT INTO provider_connections (id, patient, endpoint, state, oauth_state_hash, secret, source, created_at, updated_at)
             VALUES ($1, $2, $3, 'authorizing', $4, $5, $6, $7, $7)",
        )
        .bind(&id)
        .bind(patient)
        .bind(&endpoint.id)
        .bind(sha256_hex(&state))
        .bind(sealed)
        .bind(format!("smart:{}", endpoint.id))
        .bind(&now)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("recording a connection"))?;
        let query = serde_urlencoded::to_string([
            ("response_type", "code"),
            ("client_id", client_id.as_str()),
            ("redirect_uri", self.config.redirect_uri.as_str()),
            ("scope", SCOPES),
            ("state", state.as_str()),
            ("aud", endpoint.fhir_base.as_str()),
            ("code_challenge", pkce_challenge(&verifier).as_str()),
            ("code_challenge_method", "S256"),
        ])
        .map_err(|_| RecordsError::internal("encoding the authorization request"))?;
        let sep = if discovery.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        Ok(format!("{}{sep}{query}", discovery.authorization_endpoint))
    }

    async fn discover(&self, base: &str) -> Result<Discovery> {
        let url = format!("{base}/.well-known/smart-configuration");
        let resp = self
            .http
            .get(&url)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| provider_err(format!("discovery: unreachable ({})", e.without_url())))?;
        if !resp.status().is_success() {
            return Err(provider_err(format!(
                "discovery: HTTP {} from .well-known/smart-configuration: the server does not offer SMART App Launch",
                resp.status()
            )));
        }
        let v: Value = resp
            .json()
            .await
            .map_err(|_| provider_err("discovery: the configuration is not JSON".into()))?;
        let s256 = v
            .get("code_challenge_methods_supported")
            .and_then(Value::as_array)
            .is_some_and(|m| m.iter().any(|x| x == "S256"));
        if !s256 {
            return Err(provider_err(
                "discovery: the server does not offer PKCE S256, which SMART App Launch 2 requires; Tessera does not connect without it".into(),
            ));
        }
        let endpoint = |k: &str| -> Result<String> {
            let u = str_at(&v, &[k]).ok_or_else(|| provider_err(format!("discovery: no {k}")))?;
            if !acceptable_base(u) {
                return Err(provider_err(format!("discovery: {k} is not HTTPS")));
            }
            Ok(u.to_string())
        };
        Ok(Discovery {
            authorization_endpoint: endpoint("authorization_endpoint")?,
            token_endpoint: endpoint("token_endpoint")?,
            revocation_endpoint: str_at(&v, &["revocation_endpoint"])
                .filter(|u| acceptable_base(u))
                .map(str::to_string),
        })
    }

    /// The provider sent the patient back: `state` must be an authorization of this patient
    /// still in its window; the code is exchanged (with the PKCE verifier) for tokens.
    pub async fn complete(&self, patient: &str, state: &str, code: &str) -> Result<Connection> {
        let row = sqlx::query(
            "SELECT id, patient, state, secret, created_at FROM provider_connections WHERE oauth_state_hash = $1",
        )
        .bind(sha256_hex(state))
        .fetch_optional(self.store.pool())
        .await
        .map_err(sql_err("reading a connection"))?
        .ok_or_else(|| {
            RecordsError::Invalid(
                "this authorization is unknown or was used already: connect again from your Providers page".into(),
            )
        })?;
        let id: String = row.get("id");
        if row.get::<String, _>("patient") != patient
            || row.get::<String, _>("state") != "authorizing"
        {
            return Err(RecordsError::Invalid(
                "this authorization belongs to another session: connect again from your Providers page".into(),
            ));
        }
        let created = parse_time(&row.get::<String, _>("created_at"))?;
        // The state is single use, whatever happens next.
        sqlx::query("UPDATE provider_connections SET oauth_state_hash = NULL WHERE id = $1")
            .bind(&id)
            .execute(self.store.pool())
            .await
            .map_err(sql_err("updating a connection"))?;
        if Utc::now() - created > chrono::Duration::minutes(AUTHORIZE_WINDOW_MINUTES) {
            self.set_state(&id, "disconnected", Some("authorization_expired"))
                .await?;
            return Err(RecordsError::Invalid(format!(
                "the authorization took longer than {AUTHORIZE_WINDOW_MINUTES} minutes: connect again"
            )));
        }
        let mut secret = self
            .open(patient, &id, &row.get::<Vec<u8>, _>("secret"))
            .await?;
        let verifier = secret.verifier.take().ok_or_else(|| {
            RecordsError::internal("a connection being authorized has no verifier")
        })?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.config.redirect_uri.as_str()),
            ("client_id", secret.client_id.as_str()),
            ("code_verifier", verifier.as_str()),
        ];
        let token = self.token_request(&secret.token_endpoint, &form).await?;
        secret.apply_token(&token)?;
        if secret.patient.is_none() {
            self.set_state(&id, "disconnected", Some("no_patient_context"))
                .await?;
            return Err(provider_err(
                "the token has no patient context (`patient`): the server did not grant launch/patient".into(),
            ));
        }
        let sealed = self.seal(patient, &id, &secret).await?;
        sqlx::query(
            "UPDATE provider_connections SET state = 'connected', secret = $1, last_error = NULL, updated_at = $2 WHERE id = $3",
        )
        .bind(sealed)
        .bind(time_text(Utc::now()))
        .bind(&id)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("updating a connection"))?;
        self.connection(patient, &id).await
    }

    async fn token_request(&self, endpoint: &str, form: &[(&str, &str)]) -> Result<Value> {
        let body = serde_urlencoded::to_string(form)
            .map_err(|_| RecordsError::internal("encoding a token request"))?;
        let resp = self
            .http
            .post(endpoint)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header("Accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                provider_err(format!("token endpoint unreachable ({})", e.without_url()))
            })?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            // OAuth errors (`invalid_grant`, …) are codes; descriptions are not passed on.
            let code = str_at(&v, &["error"]).unwrap_or("");
            return Err(RecordsError::Provider {
                provider: "the provider's authorization server",
                message: format!("token request refused: HTTP {status} {code}"),
            });
        }
        if str_at(&v, &["access_token"]).is_none()
            || !str_at(&v, &["token_type"]).is_some_and(|t| t.eq_ignore_ascii_case("bearer"))
        {
            return Err(RecordsError::Provider {
                provider: "the provider's authorization server",
                message: "the token response has no bearer access_token".into(),
            });
        }
        Ok(v)
    }

    // ---- syncing -------------------------------------------------------------------------

    /// Fetches what the provider holds (or what changed since the last sync) and ingests it.
    /// One sync of a connection at a time, across processes: a second one while the first
    /// holds the connection's lease is refused (the first finishes on its own). Two syncs at
    /// once would each refresh the token, and a provider that rotates refresh tokens would
    /// end the connection.
    pub async fn sync(&self, patient: &str, connection_id: &str) -> Result<SyncReport> {
        let now = Utc::now();
        let taken = sqlx::query(
            "UPDATE provider_connections SET sync_lease = $1
             WHERE id = $2 AND patient = $3 AND (sync_lease IS NULL OR sync_lease < $4)",
        )
        .bind(time_text(
            now + chrono::Duration::minutes(SYNC_LEASE_MINUTES),
        ))
        .bind(connection_id)
        .bind(patient)
        .bind(time_text(now))
        .execute(self.store.pool())
        .await
        .map_err(sql_err("taking a connection's sync lease"))?;
        if taken.rows_affected() == 0 {
            self.connection_row(patient, connection_id).await?;
            return Err(RecordsError::Invalid(
                "a fetch from this provider is already running; it finishes on its own".into(),
            ));
        }
        let outcome = self.sync_leased(patient, connection_id).await;
        if let Err(e) =
            sqlx::query("UPDATE provider_connections SET sync_lease = NULL WHERE id = $1")
                .bind(connection_id)
                .execute(self.store.pool())
                .await
        {
            tracing::warn!(error = %e, "releasing a sync lease (it runs out on its own)");
        }
        outcome
    }

    async fn connection_row(&self, patient: &str, connection_id: &str) -> Result<()> {
        sqlx::query_scalar::<_, String>(
            "SELECT id FROM provider_connections WHERE id = $1 AND patient = $2",
        )
        .bind(connection_id)
        .bind(patient)
        .fetch_optional(self.store.pool())
        .await
        .map_err(sql_err("reading a connection"))?
        .map(|_| ())
        .ok_or_else(|| RecordsError::NotFound("no such connection".into()))
    }

    async fn sync_leased(&self, patient: &str, connection_id: &str) -> Result<SyncReport> {
        let row = sqlx::query(
            "SELECT state, secret, endpoint, source, last_sync_at FROM provider_connections WHERE id = $1 AND patient = $2",
        )
        .bind(connection_id)
        .bind(patient)
        .fetch_optional(self.store.pool())
        .await
        .map_err(sql_err("reading a connection"))?
        .ok_or_else(|| RecordsError::NotFound("no such connection".into()))?;
        if row.get::<String, _>("state") != "connected" {
            return Err(RecordsError::Invalid(
                "this provider is not connected: connect it again from your Providers page".into(),
            ));
        }
        let Some(sealed) = row.get::<Option<Vec<u8>>, _>("secret") else {
            return Err(RecordsError::internal("a connected provider has no tokens"));
        };
        let mut secret = self.open(patient, connection_id, &sealed).await?;
        let source: String = row.get("source");
        let endpoint: String = row.get("endpoint");
        let since = row
            .get::<Option<String>, _>("last_sync_at")
            .map(|t| parse_time(&t))
            .transpose()?
            .map(|t| t - chrono::Duration::minutes(SYNC_OVERLAP_MINUTES));
        let started = Utc::now();
        let mut run = Run {
            smart: self,
            secret: &mut secret,
            report: SyncReport {
                incremental: since.is_some(),
                ..SyncReport::default()
            },
        };
        let outcome = run.fetch_all(since).await;
        let mut report = std::mem::take(&mut run.report);
        // Tokens may have been refreshed: store them whatever the outcome.
        let sealed = self.seal(patient, connection_id, &secret).await?;
        let resources = match outcome {
            Ok(r) => r,
            Err(e) => {
                let (state, code) = match &e {
                    RecordsError::Provider { message, .. } if message.contains("invalid_grant") => {
                        ("needs_reconnect", "authorization_ended")
                    }
                    _ => ("connected", "sync_failed"),
                };
                sqlx::query(
                    "UPDATE provider_connections SET secret = $1, state = $2, last_error = $3, updated_at = $4 WHERE id = $5",
                )
                .bind(sealed)
                .bind(state)
                .bind(code)
                .bind(time_text(Utc::now()))
                .bind(connection_id)
                .execute(self.store.pool())
                .await
                .map_err(sql_err("updating a connection"))?;
                return Err(e);
            }
        };
        report.resources = resources.len() as u64;
        let mut ndjson = Vec::new();
        for r in &resources {
            serde_json::to_writer(&mut ndjson, r)
                .map_err(|_| RecordsError::internal("writing a fetched resource"))?;
            ndjson.push(b'\n');
        }
        let ingest = self
            .catalog
            .ingest_memory(
                vec![(format!("{source}.ndjson"), ndjson)],
                &IngestOptions {
                    source: source.clone(),
                    owner: Some(patient.to_string()),
                    ..IngestOptions::default()
                },
                &NoProgress,
            )
            .await?;
        tracing::info!(
            endpoint = %endpoint,
            resources = report.resources,
            foreign_dropped = report.foreign_dropped,
            added = ingest.records.added,
            quarantined = ingest.quarantined.len(),
            "provider sync finished"
        );
        sqlx::query(
            "UPDATE provider_connections SET secret = $1, last_sync_at = $2, last_error = NULL,
               resources_fetched = resources_fetched + $3, updated_at = $4 WHERE id = $5",
        )
        .bind(sealed)
        .bind(time_text(started))
        .bind(i64::try_from(report.resources).unwrap_or(i64::MAX))
        .bind(time_text(Utc::now()))
        .bind(connection_id)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("updating a connection"))?;
        report.ingest = Some(ingest);
        Ok(report)
    }

    /// Connections that are connected and due a sync (none in the last `every`).
    pub async fn due(&self, every: chrono::Duration) -> Result<Vec<(String, String)>> {
        let cutoff = time_text(Utc::now() - every);
        let rows = sqlx::query(
            "SELECT patient, id FROM provider_connections WHERE state = 'connected' AND (last_sync_at IS NULL OR last_sync_at < $1) ORDER BY id",
        )
        .bind(cutoff)
        .fetch_all(self.store.pool())
        .await
        .map_err(sql_err("reading connections"))?;
        Ok(rows
            .iter()
            .map(|r| (r.get("patient"), r.get("id")))
            .collect())
    }

    // ---- the patient's connections ---------------------------------------------------------

    pub async fn connections(&self, patient: &str) -> Result<Vec<Connection>> {
        let rows = sqlx::query(
            "SELECT c.id, c.endpoint, e.organization, c.state, c.last_sync_at, c.last_error, c.resources_fetched
             FROM provider_connections c LEFT JOIN provider_endpoints e ON e.id = c.endpoint
             WHERE c.patient = $1 AND c.state <> 'disconnected' ORDER BY c.created_at",
        )
        .bind(patient)
        .fetch_all(self.store.pool())
        .await
        .map_err(sql_err("reading connections"))?;
        rows.iter()
            .map(|r| {
                Ok(Connection {
                    id: r.get("id"),
                    endpoint: r.get("endpoint"),
                    organization: r
                        .get::<Option<String>, _>("organization")
                        .unwrap_or_else(|| "a provider no longer in the directory".into()),
                    state: r.get("state"),
                    last_sync_at: r
                        .get::<Option<String>, _>("last_sync_at")
                        .map(|t| parse_time(&t))
                        .transpose()?,
                    last_error: r.get("last_error"),
                    resources_fetched: r.get("resources_fetched"),
                })
            })
            .collect()
    }

    async fn connection(&self, patient: &str, id: &str) -> Result<Connection> {
        self.connections(patient)
            .await?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| RecordsError::NotFound("no such connection".into()))
    }

    /// Disconnects a provider: the refresh token revoked where the server offers it, the
    /// tokens destroyed. Records already received stay.
    pub async fn disconnect(&self, patient: &str, connection_id: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT secret FROM provider_connections WHERE id = $1 AND patient = $2 AND state <> 'disconnected'",
        )
        .bind(connection_id)
        .bind(patient)
        .fetch_optional(self.store.pool())
        .await
        .map_err(sql_err("reading a connection"))?
        .ok_or_else(|| RecordsError::NotFound("no such connection".into()))?;
        let mut revoked = false;
        if let Some(sealed) = row.get::<Option<Vec<u8>>, _>("secret")
            && let Ok(secret) = self.open(patient, connection_id, &sealed).await
        {
            revoked = self.revoke(&secret).await;
        }
        sqlx::query(
            "UPDATE provider_connections SET state = 'disconnected', secret = NULL, oauth_state_hash = NULL, updated_at = $1 WHERE id = $2",
        )
        .bind(time_text(Utc::now()))
        .bind(connection_id)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("updating a connection"))?;
        Ok(revoked)
    }

    /// Revokes a connection's refresh (else access) token (RFC 7009); whether it was.
    async fn revoke(&self, secret: &Secret) -> bool {
        let (Some(endpoint), Some(token)) = (
            secret.revocation_endpoint.as_deref(),
            secret
                .refresh_token
                .as_deref()
                .or(secret.access_token.as_deref()),
        ) else {
            return false;
        };
        let hint = if secret.refresh_token.is_some() {
            "refresh_token"
        } else {
            "access_token"
        };
        let Ok(body) = serde_urlencoded::to_string([
            ("token", token),
            ("token_type_hint", hint),
            ("client_id", secret.client_id.as_str()),
        ]) else {
            return false;
        };
        match self
            .http
            .post(endpoint)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => true,
            Ok(r) => {
                tracing::warn!(status = %r.status(), "token revocation refused; the tokens are destroyed here anyway");
                false
            }
            Err(e) => {
                tracing::warn!(error = %e.without_url(), "token revocation unreachable; the tokens are destroyed here anyway");
                false
            }
        }
    }

    /// A deleted patient: every connection disconnected (tokens revoked) and its row deleted.
    pub async fn forget(&self, patient: &str) -> Result<u64> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM provider_connections WHERE patient = $1 AND state <> 'disconnected'",
        )
        .bind(patient)
        .fetch_all(self.store.pool())
        .await
        .map_err(sql_err("reading connections"))?;
        for id in &ids {
            self.disconnect(patient, id).await?;
        }
        forget_rows(&self.store, patient).await
    }

    async fn set_state(&self, id: &str, state: &str, error: Option<&str>) -> Result<()> {
        sqlx::query(
            "UPDATE provider_connections SET state = $1, last_error = $2, secret = CASE WHEN $1 = 'disconnected' THEN NULL ELSE secret END, updated_at = $3 WHERE id = $4",
        )
        .bind(state)
        .bind(error)
        .bind(time_text(Utc::now()))
        .bind(id)
        .execute(self.store.pool())
        .await
        .map_err(sql_err("updating a connection"))?;
        Ok(())
    }

    async fn seal(&self, patient: &str, id: &str, secret: &Secret) -> Result<Vec<u8>> {
        let json = serde_json::to_vec(secret)
            .map_err(|_| RecordsError::internal("serializing a connection's tokens"))?;
        Ok(self
            .catalog
            .seal_for_patient(patient, &format!("provider_connections/{id}"), &json)
            .await?)
    }

    async fn open(&self, patient: &str, id: &str, sealed: &[u8]) -> Result<Secret> {
        let json = self
            .catalog
            .open_for_patient(patient, &format!("provider_connections/{id}"), sealed)
            .await?;
        serde_json::from_slice(&json)
            .map_err(|_| RecordsError::internal("a connection's sealed tokens do not parse"))
    }
}

/// Deletes a patient's connection rows (after their tokens were revoked, or with no provider
/// reachable: the sealed tokens die with the patient's data key anyway).
pub async fn forget_rows(store: &RecordsStore, patient: &str) -> Result<u64> {
    let done = sqlx::query("DELETE FROM provider_connections WHERE patient = $1")
        .bind(patient)
        .execute(store.pool())
        .await
        .map_err(sql_err("deleting connections"))?;
    Ok(done.rows_affected())
}

struct Discovery {
    authorization_endpoint: String,
    token_endpoint: String,
    revocation_endpoint: Option<String>,
}

impl Secret {
    fn apply_token(&mut self, v: &Value) -> Result<()> {
        self.access_token = str_at(v, &["access_token"]).map(str::to_string);
        if let Some(r) = str_at(v, &["refresh_token"]) {
            self.refresh_token = Some(r.to_string());
        }
        self.expires_at = Some(
            Utc::now().timestamp() + v.get("expires_in").and_then(Value::as_i64).unwrap_or(3600),
        );
        if let Some(p) = str_at(v, &["patient"]) {
            if self.patient.as_deref().is_some_and(|old| old != p) {
                return Err(provider_err(
                    "a refreshed token names another patient: the connection is stopped".into(),
                ));
            }
            self.patient = Some(p.to_string());
        }
        if let Some(s) = str_at(v, &["scope"]) {
            self.scope = Some(s.to_string());
        }
        Ok(())
    }
}

/// One sync in progress.
struct Run<'a> {
    smart: &'a Smart,
    secret: &'a mut Secret,
    report: SyncReport,
}

/// How one GET ended.
enum Got {
    Ok(Value),
    /// A status the caller may handle (404/400/405/501 for `$everything`, 403 for a type).
    Refused(u16, String),
}

impl Run<'_> {
    async fn fetch_all(&mut self, since: Option<DateTime<Utc>>) -> Result<Vec<Value>> {
        if self
            .secret
            .expires_at
            .is_some_and(|t| t - 60 <= Utc::now().timestamp())
        {
            self.refresh().await?;
        }
        let pid = self
            .secret
            .patient
            .clone()
            .ok_or_else(|| RecordsError::internal("a connected provider has no patient"))?;
        let base = self.secret.fhir_base.clone();
        let count = self.smart.config.page_size.to_string();
        let since_text = since.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let mut out: Vec<Value> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        if self.secret.everything != Some(false) {
            let mut q = vec![("_count", count.clone())];
            if let Some(s) = &since_text {
                q.push(("_since", s.clone()));
            }
            let url = format!("{base}/Patient/{pid}/$everything?{}", encode(&q)?);
            match self.pages(&url, &pid, &mut out, &mut seen).await? {
                None => {
                    self.secret.everything = Some(true);
                    self.report.method = "$everything".into();
                    return Ok(out);
                }
                Some((status, codes)) => {
                    tracing::info!(status, codes = %codes, "$everything not offered; searching per resource type");
                    self.secret.everything = Some(false);
                    out.clear();
                    seen.clear();
                }
            }
        }
        self.report.method = "searches".into();
        // The Patient resource itself (it changes rarely; fetched every time so a changed
        // address or name reaches the identity).
        match self.get(&format!("{base}/Patient/{pid}")).await? {
            Got::Ok(p) => self.keep(p, &pid, &mut out, &mut seen),
            Got::Refused(status, codes) => {
                return Err(provider_err(format!(
                    "reading the patient: HTTP {status} {codes}"
                )));
            }
        }
        for kind in US_CORE_TYPES {
            let mut q = vec![("patient", pid.clone()), ("_count", count.clone())];
            if let Some(s) = &since_text {
                q.push(("_lastUpdated", format!("gt{s}")));
            }
            let url = format!("{base}/{kind}?{}", encode(&q)?);
            if let Some((status, codes)) = self.pages(&url, &pid, &mut out, &mut seen).await? {
                self.report.refused_types.push((
                    (*kind).to_string(),
                    format!("HTTP {status} {codes}").trim().to_string(),
                ));
            }
        }
        Ok(out)
    }

    /// Follows a search's pages; `Some(status, codes)` where the first page was refused.
    async fn pages(
        &mut self,
        first: &str,
        pid: &str,
        out: &mut Vec<Value>,
        seen: &mut std::collections::HashSet<String>,
    ) -> Result<Option<(u16, String)>> {
        let origin_ok = origin(&self.secret.fhir_base).to_string();
        let mut url = first.to_string();
        let mut n = 0u32;
        loop {
            let bundle = match self.get(&url).await? {
                Got::Ok(b) => b,
                Got::Refused(status, codes) if n == 0 => return Ok(Some((status, codes))),
                Got::Refused(status, codes) => {
                    return Err(provider_err(format!(
                        "page {} of a search: HTTP {status} {codes}",
                        n + 1
                    )));
                }
            };
            n += 1;
            self.report.pages += 1;
            if str_at(&bundle, &["resourceType"]) != Some("Bundle") {
                return Err(provider_err("a search did not answer a Bundle".into()));
            }
            for e in bundle
                .get("entry")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                if str_at(&e, &["search", "mode"]) == Some("outcome") {
                    continue;
                }
                if let Some(r) = e.get("resource") {
                    if str_at(r, &["resourceType"]) == Some("OperationOutcome") {
                        continue;
                    }
                    self.keep(r.clone(), pid, out, seen);
                }
            }
            let next = bundle
                .get("link")
                .and_then(Value::as_array)
                .and_then(|links| {
                    links
                        .iter()
                        .find(|l| str_at(l, &["relation"]) == Some("next"))
                        .and_then(|l| str_at(l, &["url"]))
                        .map(str::to_string)
                });
            match next {
                None => return Ok(None),
                Some(next) if origin(&next) == origin_ok => url = next,
                Some(_) => {
                    return Err(provider_err(
                        "a `next` link points to another server; the token is not sent there"
                            .into(),
                    ));
                }
            }
            if n > 10_000 {
                return Err(provider_err(
                    "a search did not end after 10,000 pages".into(),
                ));
            }
        }
    }

    fn keep(
        &mut self,
        r: Value,
        pid: &str,
        out: &mut Vec<Value>,
        seen: &mut std::collections::HashSet<String>,
    ) {
        if !belongs_to(&r, pid) {
            self.report.foreign_dropped += 1;
            return;
        }
        let key = format!(
            "{}/{}",
            str_at(&r, &["resourceType"]).unwrap_or(""),
            str_at(&r, &["id"]).unwrap_or("")
        );
        if seen.insert(key) {
            out.push(r);
        }
    }

    /// One GET with the access token: 401 refreshes once, 429/503 wait per `Retry-After`.
    async fn get(&mut self, url: &str) -> Result<Got> {
        let mut refreshed = false;
        let mut attempts = 0u32;
        loop {
            let token = self.secret.access_token.clone().unwrap_or_default();
            let sent = self
                .smart
                .http
                .get(url)
                .bearer_auth(&token)
                .header("Accept", "application/fhir+json")
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) if attempts < self.smart.config.retries => {
                    attempts += 1;
                    tracing::warn!(error = %e.without_url(), "FHIR request failed; retrying");
                    tokio::time::sleep(Duration::from_secs(u64::from(attempts))).await;
                    continue;
                }
                Err(e) => {
                    return Err(provider_err(format!("unreachable ({})", e.without_url())));
                }
            };
            let status = resp.status().as_u16();
            match status {
                200..=299 => {
                    let body = resp.bytes().await.map_err(|e| {
                        provider_err(format!("reading an answer ({})", e.without_url()))
                    })?;
                    return serde_json::from_slice(&body)
                        .map(Got::Ok)
                        .map_err(|_| provider_err("an answer is not JSON".into()));
                }
                401 if !refreshed => {
                    refreshed = true;
                    self.refresh().await?;
                }
                401 => {
                    return Err(provider_err(
                        "the server refused a freshly refreshed token (HTTP 401): reconnect".into(),
                    ));
                }
                429 | 503 if attempts < self.smart.config.retries => {
                    attempts += 1;
                    let wait = retry_after(resp.headers())
                        .unwrap_or(Duration::from_secs(u64::from(attempts)));
                    if wait > self.smart.config.max_wait {
                        return Err(provider_err(format!(
                            "the server asked to wait {} s (HTTP {status}); the next sync continues",
                            wait.as_secs()
                        )));
                    }
                    self.report.waited += 1;
                    tokio::time::sleep(wait).await;
                }
                _ => {
                    let body = resp.bytes().await.unwrap_or_default();
                    let codes = outcome_codes(&body);
                    if matches!(status, 400 | 403 | 404 | 405 | 422 | 501) {
                        return Ok(Got::Refused(status, codes));
                    }
                    return Err(provider_err(format!("HTTP {status} {codes}")));
                }
            }
        }
    }

    async fn refresh(&mut self) -> Result<()> {
        let Some(refresh) = self.secret.refresh_token.clone() else {
            return Err(RecordsError::Provider {
                provider: "the provider's authorization server",
                message: "the access token expired and there is no refresh token (invalid_grant): reconnect".into(),
            });
        };
        let form = [
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("client_id", self.secret.client_id.as_str()),
        ];
        let token_endpoint = self.secret.token_endpoint.clone();
        let v = self.smart.token_request(&token_endpoint, &form).await?;
        self.secret.apply_token(&v)?;
        self.report.refreshed += 1;
        Ok(())
    }
}

fn encode(q: &[(&str, String)]) -> Result<String> {
    serde_urlencoded::to_string(q).map_err(|_| RecordsError::internal("encoding a query"))
}
