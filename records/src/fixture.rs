//! Stand-ins for the providers, for tests here and in the end-to-end suite (feature
//! `fixture`; never in a release build): a Persona API with its hosted flow, and a SMART on
//! FHIR server with its authorization server. Each checks what the real API requires and
//! answers as it documents; the FHIR one misbehaves on request (401s, 429s, another
//! patient's resource slipped in).

// Test stand-ins: a panic is the failure report; handler helpers answer their refusal as the
// `Response` itself, as axum handlers do.
#![allow(clippy::unwrap_used, clippy::result_large_err)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::smart::pkce_challenge;

/// Serves `app` on a loopback port; returns its base URL.
pub async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

/// What the Persona stand-in saw and answers.
#[derive(Debug, Default)]
pub struct PersonaSeen {
    pub base: String,
    /// Bodies of the inquiries created.
    pub created: Vec<Value>,
    pub idempotency_keys: Vec<String>,
    pub links: usize,
    /// One-time link code → inquiry.
    pub link_inquiry: BTreeMap<String, String>,
    pub redacted: Vec<String>,
    /// The status GET answers, per inquiry.
    pub status: BTreeMap<String, String>,
    /// The status the hosted flow (`/verify`) leaves an inquiry in.
    pub finish_as: String,
}

pub type PersonaState = Arc<Mutex<PersonaSeen>>;
type Shared = PersonaState;

fn check_persona_headers(h: &HeaderMap) -> Result<(), Response> {
    let bad = |why: &str| Err((StatusCode::BAD_REQUEST, why.to_string()).into_response());
    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer persona_sandbox_key") {
        return Err((StatusCode::UNAUTHORIZED, "bad API key").into_response());
    }
    if h.get("persona-version").and_then(|v| v.to_str().ok()) != Some("2023-01-05") {
        return bad("Persona-Version header missing");
    }
    if h.get("key-inflection").and_then(|v| v.to_str().ok()) != Some("kebab") {
        return bad("Key-Inflection header missing");
    }
    Ok(())
}

async fn persona_create(AxState(s): AxState<Shared>, h: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_persona_headers(&h) {
        return r;
    }
    let Some(key) = h.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return (StatusCode::BAD_REQUEST, "Idempotency-Key missing").into_response();
    };
    if h.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "body not JSON").into_response();
    };
    let attrs = &v["data"]["attributes"];
    if attrs["inquiry-template-id"] != "itmpl_ial2"
        || attrs["reference-id"].as_str().is_none_or(str::is_empty)
    {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"errors": [{"title": "template or reference missing"}]}).to_string(),
        )
            .into_response();
    }
    let mut seen = s.lock().unwrap();
    // Idempotent: the same key answers the same inquiry.
    let n = match seen.idempotency_keys.iter().position(|k| k == key) {
        Some(i) => i,
        None => {
            seen.idempotency_keys.push(key.to_string());
            seen.created.push(v.clone());
            seen.idempotency_keys.len() - 1
        }
    };
    let id = format!("inq_{n}");
    seen.status
        .entry(id.clone())
        .or_insert_with(|| "created".into());
    axum::Json(json!({"data": {"type": "inquiry", "id": id, "attributes": {"status": "created", "reference-id": attrs["reference-id"]}}})).into_response()
}

async fn persona_link(
    AxState(s): AxState<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = check_persona_headers(&h) {
        return r;
    }
    let mut seen = s.lock().unwrap();
    if !seen.status.contains_key(&id) {
        return StatusCode::NOT_FOUND.into_response();
    }
    seen.links += 1;
    let code = format!("otl_{}", seen.links);
    seen.link_inquiry.insert(code.clone(), id.clone());
    axum::Json(json!({"data": {"type": "inquiry", "id": id}, "meta": {"one-time-link": format!("{}/verify?code={code}", seen.base)}})).into_response()
}

async fn persona_get(
    AxState(s): AxState<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = check_persona_headers(&h) {
        return r;
    }
    let seen = s.lock().unwrap();
    match seen.status.get(&id) {
        Some(st) => {
            axum::Json(json!({"data": {"type": "inquiry", "id": id, "attributes": {"status": st}}}))
                .into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn persona_delete(
    AxState(s): AxState<Shared>,
    h: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = check_persona_headers(&h) {
        return r;
    }
    s.lock().unwrap().redacted.push(id.clone());
    axum::Json(json!({"data": {"type": "inquiry", "id": id}})).into_response()
}

/// Persona's hosted flow: the person "verifies" and is sent back to the inquiry's
/// `redirect-uri`, the inquiry left in [`PersonaSeen::finish_as`].
async fn persona_verify(
    AxState(s): AxState<Shared>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut seen = s.lock().unwrap();
    let Some(inquiry) = q
        .get("code")
        .and_then(|c| seen.link_inquiry.get(c))
        .cloned()
    else {
        return (StatusCode::NOT_FOUND, "this link was used or never made").into_response();
    };
    let finish = seen.finish_as.clone();
    seen.status.insert(inquiry.clone(), finish);
    let n: usize = inquiry.trim_start_matches("inq_").parse().unwrap_or(0);
    let redirect = seen.created[n]["data"]["attributes"]["redirect-uri"]
        .as_str()
        .unwrap_or("/")
        .to_string();
    (StatusCode::FOUND, [(header::LOCATION, redirect)]).into_response()
}

/// Starts the Persona stand-in on a loopback port (API key `persona_sandbox_key`, template
/// `itmpl_ial2`); `base` is its API base.
pub async fn persona() -> (String, PersonaState) {
    let state: Shared = Arc::default();
    let app = Router::new()
        .route("/api/v1/inquiries", post(persona_create))
        .route(
            "/api/v1/inquiries/{id}",
            get(persona_get).delete(persona_delete),
        )
        .route(
            "/api/v1/inquiries/{id}/generate-one-time-link",
            post(persona_link),
        )
        .route("/verify", get(persona_verify))
        .with_state(state.clone());
    let base = serve(app).await;
    {
        let mut s = state.lock().unwrap();
        s.base = base.clone();
        s.finish_as = "completed".into();
    }
    (base, state)
}

/// What the FHIR stand-in holds, saw and is told to do.
#[derive(Debug, Default)]
pub struct Fhir {
    pub base: String,
    /// Resources by FHIR patient id, each with its `meta.lastUpdated`.
    pub resources: BTreeMap<String, Vec<Value>>,
    pub everything: bool,
    pub s256: bool,
    /// code → (client_id, redirect_uri, challenge, patient)
    pub codes: BTreeMap<String, (String, String, String, String)>,
    /// access token → (patient, uses left before it stops working)
    pub access: BTreeMap<String, (String, u32)>,
    pub refresh: BTreeMap<String, String>,
    pub revoked: Vec<String>,
    /// Uses of an access token before it answers 401.
    pub token_uses: u32,
    pub issued: u32,
    /// The next request for a second page answers 429 once.
    pub throttle_page_two: bool,
    pub throttled: u32,
    /// Slip this resource into the first page of every search (a misbehaving server).
    pub foreign: Option<Value>,
    /// Query strings of FHIR requests, in order.
    pub requests: Vec<String>,
    pub refreshes: u32,
    /// Who signs in at the authorization page.
    pub login_as: String,
    /// The `aud` the authorization page requires (default: this stand-in's `/fhir`).
    pub audience: String,
    /// Access tokens as RS256 JWTs (signed with the test key, published at `/auth/jwks`) for a
    /// FHIR server that validates them itself, such as helios-hfs; lifetime in seconds.
    pub jwt_lifetime: Option<i64>,
}

pub type FhirState = Arc<Mutex<Fhir>>;
type S = FhirState;

fn outcome(status: StatusCode, code: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/fhir+json")],
        json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": "patient Jane Doe 1970-01-01 is not allowed"}]}).to_string(),
    )
        .into_response()
}

async fn smart_configuration(AxState(s): AxState<S>) -> Response {
    let f = s.lock().unwrap();
    let base = f.base.clone();
    axum::Json(json!({
        "authorization_endpoint": format!("{base}/auth/authorize"),
        "token_endpoint": format!("{base}/auth/token"),
        "revocation_endpoint": format!("{base}/auth/revoke"),
        "code_challenge_methods_supported": if f.s256 { json!(["S256"]) } else { json!(["plain"]) },
        "capabilities": ["launch-standalone", "client-public", "context-standalone-patient", "permission-offline", "permission-v2"],
        "scopes_supported": ["launch/patient", "patient/*.rs", "offline_access"],
    }))
    .into_response()
}

async fn authorize(AxState(s): AxState<S>, Query(q): Query<BTreeMap<String, String>>) -> Response {
    let mut f = s.lock().unwrap();
    let bad = |why: &str| (StatusCode::BAD_REQUEST, why.to_string()).into_response();
    if q.get("response_type").map(String::as_str) != Some("code") {
        return bad("response_type");
    }
    if q.get("aud").map(String::as_str) != Some(f.audience.as_str()) {
        return bad("aud must be the FHIR base");
    }
    if q.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return bad("PKCE S256 required");
    }
    let scope = q.get("scope").cloned().unwrap_or_default();
    for needed in ["launch/patient", "patient/*.rs", "offline_access"] {
        if !scope.split(' ').any(|x| x == needed) {
            return bad("scope");
        }
    }
    let (Some(client), Some(redirect), Some(challenge), Some(state)) = (
        q.get("client_id"),
        q.get("redirect_uri"),
        q.get("code_challenge"),
        q.get("state"),
    ) else {
        return bad("missing parameter");
    };
    let code = format!("code-{}", f.codes.len());
    let login = f.login_as.clone();
    f.codes.insert(
        code.clone(),
        (client.clone(), redirect.clone(), challenge.clone(), login),
    );
    let location = format!("{redirect}?code={code}&state={state}");
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

fn issue(f: &mut Fhir, patient: &str, refresh: Option<String>) -> Value {
    f.issued += 1;
    let access = match f.jwt_lifetime {
        Some(lifetime) => mint(
            f,
            &format!("Patient/{patient}"),
            "launch/patient patient/*.rs offline_access",
            Some(patient),
            lifetime,
        ),
        None => format!("at-{}", f.issued),
    };
    let refresh = refresh.unwrap_or_else(|| format!("rt-{}", f.issued));
    let uses = f.token_uses;
    f.access.insert(access.clone(), (patient.to_string(), uses));
    f.refresh.insert(refresh.clone(), patient.to_string());
    let expires_in = f.jwt_lifetime.unwrap_or(3600);
    json!({"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": "launch/patient patient/*.rs offline_access", "refresh_token": refresh, "patient": patient})
}

/// The test signing key (2048-bit RSA, PKCS#8; made for these tests, protects nothing).
const TEST_KEY: &[u8] = include_bytes!("fixture_data/test-rs256.pk8");
const TEST_KID: &str = "tessera-test-rs256";

fn test_key() -> ring::signature::RsaKeyPair {
    ring::signature::RsaKeyPair::from_pkcs8(TEST_KEY).unwrap()
}

/// An RS256 JWT from this authorization server: `sub`, `scope`, the `patient` launch context,
/// `iss` (this stand-in's `/auth`) and `aud` ([`Fhir::audience`]).
pub fn mint(f: &Fhir, sub: &str, scope: &str, patient: Option<&str>, lifetime: i64) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let now = chrono::Utc::now().timestamp();
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": TEST_KID});
    let mut claims = json!({"iss": format!("{}/auth", f.base), "aud": f.audience, "sub": sub,
        "iat": now, "exp": now + lifetime, "scope": scope, "jti": format!("jti-{}", f.issued)});
    if let Some(p) = patient {
        claims["patient"] = json!(p);
    }
    let signing_input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let key = test_key();
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .unwrap();
    format!("{signing_input}.{}", B64.encode(sig))
}

async fn jwks() -> Response {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    let key = test_key();
    let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(key.public());
    axum::Json(
        json!({"keys": [{"kty": "RSA", "kid": TEST_KID, "use": "sig", "alg": "RS256",
        "n": B64.encode(&public.n), "e": B64.encode(&public.e)}]}),
    )
    .into_response()
}

async fn token(AxState(s): AxState<S>, h: HeaderMap, body: Bytes) -> Response {
    if h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        return (StatusCode::BAD_REQUEST, "form expected").into_response();
    }
    let form: BTreeMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap();
    let mut f = s.lock().unwrap();
    let err = |e: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": e, "error_description": "Jane Doe's code"})),
        )
            .into_response()
    };
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let Some((client, redirect, challenge, patient)) =
                form.get("code").and_then(|c| f.codes.remove(c))
            else {
                return err("invalid_grant");
            };
            if form.get("client_id") != Some(&client) || form.get("redirect_uri") != Some(&redirect)
            {
                return err("invalid_client");
            }
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            if pkce_challenge(&verifier) != challenge {
                return err("invalid_grant");
            }
            axum::Json(issue(&mut f, &patient, None)).into_response()
        }
        Some("refresh_token") => {
            let Some(rt) = form.get("refresh_token").cloned() else {
                return err("invalid_request");
            };
            if f.revoked.contains(&rt) {
                return err("invalid_grant");
            }
            let Some(patient) = f.refresh.get(&rt).cloned() else {
                return err("invalid_grant");
            };
            f.refreshes += 1;
            axum::Json(issue(&mut f, &patient, Some(rt))).into_response()
        }
        _ => err("unsupported_grant_type"),
    }
}

async fn revoke(AxState(s): AxState<S>, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap();
    if let Some(t) = form.get("token") {
        s.lock().unwrap().revoked.push(t.clone());
    }
    StatusCode::OK.into_response()
}

/// The token's patient, or the refusal.
fn authorized(f: &mut Fhir, h: &HeaderMap) -> Result<String, Response> {
    let token = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    match f.access.get_mut(token) {
        Some((patient, uses)) if *uses > 0 => {
            *uses -= 1;
            Ok(patient.clone())
        }
        _ => Err(outcome(StatusCode::UNAUTHORIZED, "login")),
    }
}

fn updated(r: &Value) -> &str {
    r["meta"]["lastUpdated"].as_str().unwrap_or("")
}

/// A searchset page of `matches` (3 per page), with a `next` link.
fn page(f: &mut Fhir, path: &str, q: &BTreeMap<String, String>, matches: Vec<Value>) -> Response {
    let page: usize = q.get("_page").and_then(|p| p.parse().ok()).unwrap_or(0);
    if page == 1 && f.throttle_page_two {
        f.throttle_page_two = false;
        f.throttled += 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            "slow down",
        )
            .into_response();
    }
    let mut entries: Vec<Value> = matches
        .iter()
        .skip(page * 3)
        .take(3)
        .map(|r| json!({"fullUrl": format!("{}/fhir/{}/{}", f.base, r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()), "resource": r, "search": {"mode": "match"}}))
        .collect();
    if page == 0
        && let Some(foreign) = &f.foreign
    {
        entries.push(json!({"resource": foreign, "search": {"mode": "match"}}));
    }
    let mut links = vec![];
    if (page + 1) * 3 < matches.len() {
        let mut next = q.clone();
        next.insert("_page".into(), (page + 1).to_string());
        links.push(json!({"relation": "next", "url": format!("{}{path}?{}", f.base, serde_urlencoded::to_string(&next).unwrap())}));
    }
    axum::Json(json!({"resourceType": "Bundle", "type": "searchset", "total": matches.len(), "link": links, "entry": entries})).into_response()
}

async fn everything(
    AxState(s): AxState<S>,
    h: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut f = s.lock().unwrap();
    f.requests.push(format!(
        "$everything?{}",
        serde_urlencoded::to_string(&q).unwrap()
    ));
    let patient = match authorized(&mut f, &h) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if !f.everything {
        return outcome(StatusCode::NOT_FOUND, "not-supported");
    }
    if patient != id {
        return outcome(StatusCode::FORBIDDEN, "forbidden");
    }
    let since = q.get("_since").cloned().unwrap_or_default();
    let matches: Vec<Value> = f
        .resources
        .get(&id)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| updated(r) > since.as_str())
        .collect();
    page(
        &mut f,
        &format!("/fhir/Patient/{id}/$everything"),
        &q,
        matches,
    )
}

async fn read_patient(AxState(s): AxState<S>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let mut f = s.lock().unwrap();
    let patient = match authorized(&mut f, &h) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if patient != id {
        return outcome(StatusCode::FORBIDDEN, "forbidden");
    }
    let p = f.resources[&id]
        .iter()
        .find(|r| r["resourceType"] == "Patient")
        .cloned()
        .unwrap();
    axum::Json(p).into_response()
}

async fn search(
    AxState(s): AxState<S>,
    h: HeaderMap,
    Path(kind): Path<String>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let mut f = s.lock().unwrap();
    f.requests.push(format!(
        "{kind}?{}",
        serde_urlencoded::to_string(&q).unwrap()
    ));
    let patient = match authorized(&mut f, &h) {
        Ok(p) => p,
        Err(r) => return r,
    };
    if kind == "Goal" {
        return outcome(StatusCode::FORBIDDEN, "forbidden");
    }
    if q.get("patient") != Some(&patient) {
        return outcome(StatusCode::FORBIDDEN, "forbidden");
    }
    let since = q
        .get("_lastUpdated")
        .and_then(|s| s.strip_prefix("gt"))
        .unwrap_or("")
        .to_string();
    let matches: Vec<Value> = f
        .resources
        .get(&patient)
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r["resourceType"] == kind.as_str() && updated(r) > since.as_str())
        .collect();
    page(&mut f, &format!("/fhir/{kind}"), &q, matches)
}

pub fn patient_resource(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": format!("MRN-{id}")}],
        "name": [{"family": family, "given": ["Ann"]}], "gender": "female", "birthDate": "1980-04-02"})
}

pub fn condition(id: &str, patient: &str, code: &str, updated: &str) -> Value {
    json!({"resourceType": "Condition", "id": id, "meta": {"lastUpdated": updated},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")}, "onsetDateTime": "2019-05-01"})
}

pub fn observation(id: &str, patient: &str, value: f64) -> Value {
    json!({"resourceType": "Observation", "id": id, "meta": {"lastUpdated": "2026-01-02T00:00:00Z"}, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
        "subject": {"reference": format!("Patient/{patient}")}, "effectiveDateTime": "2024-02-03",
        "valueQuantity": {"value": value, "unit": "mm[Hg]", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}})
}

/// Starts the FHIR stand-in (SMART configuration under `/fhir`, authorization server under
/// `/auth`) with patients `pat-a` (a Patient, 7 Conditions, 5 Observations) and `pat-b`.
pub async fn fhir_server() -> FhirState {
    let s: S = Arc::default();
    let app = Router::new()
        .route(
            "/fhir/.well-known/smart-configuration",
            get(smart_configuration),
        )
        .route("/auth/authorize", get(authorize))
        .route("/auth/token", post(token))
        .route("/auth/revoke", post(revoke))
        .route("/auth/jwks", get(jwks))
        .route("/fhir/Patient/{id}/$everything", get(everything))
        .route("/fhir/Patient/{id}", get(read_patient))
        .route("/fhir/{kind}", get(search))
        .with_state(s.clone());
    let base = serve(app).await;
    {
        let mut f = s.lock().unwrap();
        f.base = base;
        f.everything = true;
        f.s256 = true;
        f.token_uses = 1000;
        f.login_as = "pat-a".into();
        f.audience = format!("{}/fhir", f.base);
        let mut a = vec![patient_resource("pat-a", "Quarry")];
        for i in 0..7 {
            a.push(condition(
                &format!("c{i}"),
                "pat-a",
                ["38341003", "44054006", "195967001"][i % 3],
                "2026-01-01T00:00:00Z",
            ));
        }
        for i in 0..5 {
            a.push(observation(&format!("o{i}"), "pat-a", 120.0 + f64::from(i)));
        }
        f.resources.insert("pat-a".into(), a);
        f.resources.insert(
            "pat-b".into(),
            vec![
                patient_resource("pat-b", "Other"),
                condition("cb", "pat-b", "73211009", "2026-01-01T00:00:00Z"),
            ],
        );
    }
    s
}

/// A directory bundle naming the stand-in (`ep-1` serving `org-1` and `org-2`) and two
/// endpoints to be left out (inactive; plain HTTP off loopback).
pub fn directory_bundle(base: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Endpoint", "id": "ep-1", "status": "active",
            "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
            "name": "Riverside patient access", "address": format!("{base}/fhir"), "managingOrganization": {"reference": "Organization/org-1"}}},
        {"resource": {"resourceType": "Organization", "id": "org-1", "name": "Riverside General Hospital",
            "address": [{"city": "Springfield", "state": "IL"}], "endpoint": [{"reference": "Endpoint/ep-1"}]}},
        {"resource": {"resourceType": "Organization", "id": "org-2", "name": "Riverside Children's Clinic",
            "address": [{"city": "Springfield", "state": "IL"}], "endpoint": [{"reference": "Endpoint/ep-1"}]}},
        {"resource": {"resourceType": "Endpoint", "id": "ep-off", "status": "off",
            "connectionType": {"code": "hl7-fhir-rest"}, "address": "https://off.example.test/fhir"}},
        {"resource": {"resourceType": "Endpoint", "id": "ep-clear", "status": "active",
            "connectionType": {"code": "hl7-fhir-rest"}, "address": "http://ehr.example.test/fhir"}},
        {"resource": {"resourceType": "Organization", "id": "org-3", "name": "Cleartext Clinic", "endpoint": [{"reference": "Endpoint/ep-clear"}]}},
    ]}))
    .unwrap()
}
