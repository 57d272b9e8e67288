//! Identity proofing: webhook signatures (valid, rotated, stale, tampered), the providers' API
//! calls against local HTTP servers that check what Persona's and Stripe's APIs require (paths,
//! headers, bodies, idempotency keys), the state machine under duplicate and out-of-order
//! events, and the payout hold that reads the same status.
//!
//! Persona and Stripe cannot be reached from here: the stand-ins below answer as their
//! documented APIs do and refuse (HTTP 400 with the reason) any call that would not be valid
//! against the real one.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{TimeZone, Utc};
use serde_json::{Value, json};
use tessera_payouts::payout::{Hold, IdentityStatus};
use tessera_payouts::rails::Rails;
use tessera_records::RecordsError;
use tessera_records::identity::{
    Assurance, Identity, Persona, PersonaConfig, State, StripeIdentity, StripeIdentityConfig,
    verify_persona_signature,
};

use tessera_records::fixture::{persona, serve};

use crate::support::fresh;

const SECRET: &[u8] = b"wbhsec_current";
const OLD_SECRET: &[u8] = b"wbhsec_previous";

fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut msg = t.to_string().into_bytes();
    msg.push(b'.');
    msg.extend_from_slice(body);
    hex::encode(ring::hmac::sign(&key, &msg).as_ref())
}

#[test]
fn persona_signatures_valid_rotated_stale_and_tampered() {
    let body = br#"{"data":{"id":"evt_1"}}"#;
    let now = 1_780_000_000;
    let secrets = vec![SECRET.to_vec()];
    // Valid.
    let header = format!("t={now},v1={}", sign(SECRET, now, body));
    verify_persona_signature(&secrets, &header, body, now).unwrap();
    // During a rotation Persona signs with both secrets, two groups separated by a space; each
    // side of the rotation accepts it.
    let rotated = format!(
        "t={now},v1={} t={now},v1={}",
        sign(OLD_SECRET, now, body),
        sign(SECRET, now, body)
    );
    verify_persona_signature(&secrets, &rotated, body, now).unwrap();
    verify_persona_signature(&[OLD_SECRET.to_vec()], &rotated, body, now).unwrap();
    // Tessera holding both secrets accepts an event signed with either.
    let both = vec![SECRET.to_vec(), OLD_SECRET.to_vec()];
    let old_only = format!("t={now},v1={}", sign(OLD_SECRET, now, body));
    verify_persona_signature(&both, &old_only, body, now).unwrap();
    // Stale: a correct signature 301 seconds old is a replay.
    let stale = verify_persona_signature(&secrets, &header, body, now + 301).unwrap_err();
    assert!(stale.to_string().contains("300 seconds"), "{stale}");
    // Tampered body, or a signature under another secret, or none.
    let tampered = br#"{"data":{"id":"evt_2"}}"#;
    assert!(verify_persona_signature(&secrets, &header, tampered, now).is_err());
    assert!(verify_persona_signature(&secrets, &old_only, body, now).is_err());
    assert!(verify_persona_signature(&secrets, "", body, now).is_err());
    // A changed timestamp breaks the signature.
    let moved = header.replace(&format!("t={now}"), &format!("t={}", now + 1));
    assert!(verify_persona_signature(&secrets, &moved, body, now).is_err());
}

fn client(base: &str, review_configured: bool) -> Persona {
    client_at(base, review_configured, Assurance::Ial2)
}

fn client_at(base: &str, review_configured: bool, assurance: Assurance) -> Persona {
    Persona::new(PersonaConfig {
        base_url: base.into(),
        api_key: "persona_sandbox_key".into(),
        template_id: "itmpl_ial2".into(),
        webhook_secrets: vec![SECRET.to_vec()],
        review_configured,
        assurance,
    })
    .unwrap()
}

/// A Persona webhook body for an inquiry event, signed at `t`.
fn persona_event(
    id: &str,
    name: &str,
    inquiry: &str,
    status: &str,
    patient: &str,
    created: i64,
) -> Vec<u8> {
    let at = Utc.timestamp_opt(created, 0).unwrap().to_rfc3339();
    serde_json::to_vec(&json!({"data": {"type": "event", "id": id, "attributes": {
        "name": name, "created-at": at,
        "payload": {"data": {"type": "inquiry", "id": inquiry, "attributes": {"status": status, "reference-id": patient}}}}}}))
    .unwrap()
}

#[tokio::test]
async fn persona_verification_from_start_to_approval_in_any_event_order() {
    let (store, payouts, _d) = fresh().await;
    let (base, seen) = persona().await;
    let identity = Identity::new(
        store.clone(),
        Arc::new(client(&base, true)),
        payouts.clone(),
    );
    let patient = "0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    assert_eq!(
        identity.status(patient).await.unwrap().state,
        State::NotStarted
    );

    // Start: an inquiry from the template with the patient's reference, and a one-time link.
    let url = identity
        .start(patient, "https://tessera.test/me/identity/return")
        .await
        .unwrap();
    assert_eq!(url, format!("{base}/verify?code=otl_1"));
    {
        let s = seen.lock().unwrap();
        assert_eq!(s.created.len(), 1);
        assert_eq!(s.created[0]["data"]["attributes"]["reference-id"], patient);
        assert_eq!(
            s.created[0]["data"]["attributes"]["redirect-uri"],
            "https://tessera.test/me/identity/return"
        );
    }
    let st = identity.status(patient).await.unwrap();
    assert_eq!((st.state, st.unlocked()), (State::Started, false));
    assert_eq!(
        payouts.identity(patient).await.unwrap(),
        IdentityStatus::Pending
    );
    // Starting again resumes the same inquiry with a fresh link; no second inquiry.
    let again = identity
        .start(patient, "https://tessera.test/me/identity/return")
        .await
        .unwrap();
    assert_eq!(again, format!("{base}/verify?code=otl_2"));
    assert_eq!(seen.lock().unwrap().created.len(), 1);

    // The payout hold reads the same status: held while not approved.
    let today = chrono::NaiveDate::from_ymd_opt(2026, 12, 5).unwrap();
    let held = payouts.holds(patient, today, &Rails::new()).await.unwrap();
    assert!(
        held.iter()
            .any(|h| matches!(h, Hold::IdentityNotVerified { .. })),
        "{held:?}"
    );

    // Events: completed at t0+10, approved at t0+20, delivered approved first.
    let t0 = Utc::now().timestamp() - 60;
    let now = Utc::now().timestamp();
    let deliver = |body: Vec<u8>| {
        let header = format!("t={now},v1={}", sign(SECRET, now, &body));
        (header, body)
    };
    let (h1, approved) = deliver(persona_event(
        "evt_approved",
        "inquiry.approved",
        "inq_0",
        "approved",
        patient,
        t0 + 20,
    ));
    let (h2, completed) = deliver(persona_event(
        "evt_completed",
        "inquiry.completed",
        "inq_0",
        "completed",
        patient,
        t0 + 10,
    ));
    assert_eq!(
        identity
            .handle_webhook(&h1, &approved, now)
            .await
            .unwrap()
            .result,
        "applied"
    );
    assert_eq!(
        identity.status(patient).await.unwrap().state,
        State::Approved
    );
    // The older event arriving late is not applied: the status stays approved.
    assert_eq!(
        identity
            .handle_webhook(&h2, &completed, now)
            .await
            .unwrap()
            .result,
        "stale"
    );
    // The same event delivered again changes nothing.
    assert_eq!(
        identity
            .handle_webhook(&h1, &approved, now)
            .await
            .unwrap()
            .result,
        "duplicate"
    );
    let st = identity.status(patient).await.unwrap();
    assert_eq!((st.state, st.unlocked()), (State::Approved, true));
    assert_eq!(
        payouts.identity(patient).await.unwrap(),
        IdentityStatus::Verified
    );
    let held = payouts.holds(patient, today, &Rails::new()).await.unwrap();
    assert!(
        !held
            .iter()
            .any(|h| matches!(h, Hold::IdentityNotVerified { .. })),
        "{held:?}"
    );
    // Nothing to start once approved.
    let refused = identity
        .start(patient, "https://tessera.test/r")
        .await
        .unwrap_err();
    assert!(matches!(refused, RecordsError::Invalid(_)), "{refused}");

    // A tampered event is refused and changes nothing.
    let (h3, declined) = deliver(persona_event(
        "evt_declined",
        "inquiry.declined",
        "inq_0",
        "declined",
        patient,
        t0 + 30,
    ));
    let mut tampered = declined.clone();
    tampered.extend_from_slice(b" ");
    assert!(identity.handle_webhook(&h3, &tampered, now).await.is_err());
    assert_eq!(
        identity.status(patient).await.unwrap().state,
        State::Approved
    );

    // Deletion: the inquiry is redacted at Persona and the rows go.
    assert_eq!(identity.forget(patient).await.unwrap(), 1);
    assert_eq!(seen.lock().unwrap().redacted, vec!["inq_0".to_string()]);
    assert_eq!(
        identity.status(patient).await.unwrap().state,
        State::NotStarted
    );
}

#[tokio::test]
async fn completed_counts_only_without_review_and_declined_offers_a_retry() {
    let (store, payouts, _d) = fresh().await;
    let (base, seen) = persona().await;
    let patient = "11111111111111111111111111111111";
    let now = Utc::now().timestamp();
    let signed = |body: Vec<u8>| (format!("t={now},v1={}", sign(SECRET, now, &body)), body);

    // With review configured, `completed` waits for the reviewer.
    let reviewed = Identity::new(
        store.clone(),
        Arc::new(client(&base, true)),
        payouts.clone(),
    );
    reviewed
        .start(patient, "https://tessera.test/r")
        .await
        .unwrap();
    let (h, b) = signed(persona_event(
        "e1",
        "inquiry.completed",
        "inq_0",
        "completed",
        patient,
        now - 50,
    ));
    reviewed.handle_webhook(&h, &b, now).await.unwrap();
    assert_eq!(
        reviewed.status(patient).await.unwrap().state,
        State::InReview
    );
    assert_eq!(
        payouts.identity(patient).await.unwrap(),
        IdentityStatus::Pending
    );
    // Declined after review: the patient is told and may try again.
    let (h, b) = signed(persona_event(
        "e2",
        "inquiry.declined",
        "inq_0",
        "declined",
        patient,
        now - 40,
    ));
    reviewed.handle_webhook(&h, &b, now).await.unwrap();
    let st = reviewed.status(patient).await.unwrap();
    assert_eq!(st.state, State::Declined);
    assert!(st.state.can_retry());
    assert!(
        st.explanation().contains("try again"),
        "{}",
        st.explanation()
    );
    assert_eq!(
        payouts.identity(patient).await.unwrap(),
        IdentityStatus::Failed
    );
    // A retry is a new inquiry (a new idempotency key).
    reviewed
        .start(patient, "https://tessera.test/r")
        .await
        .unwrap();
    assert_eq!(seen.lock().unwrap().created.len(), 2);
    assert_eq!(
        reviewed.status(patient).await.unwrap().state,
        State::Started
    );

    // Without review, `completed` is approval; the return from the hosted flow looks it up
    // before any webhook arrives.
    let direct = Identity::new(
        store.clone(),
        Arc::new(client(&base, false)),
        payouts.clone(),
    );
    seen.lock()
        .unwrap()
        .status
        .insert("inq_1".into(), "completed".into());
    let st = direct.refresh(patient).await.unwrap();
    assert_eq!((st.state, st.unlocked()), (State::Approved, true));
    assert_eq!(
        payouts.identity(patient).await.unwrap(),
        IdentityStatus::Verified
    );
    // The webhook for an event before the lookup arrives afterwards: stale.
    let (h, b) = signed(persona_event(
        "e3",
        "inquiry.started",
        "inq_1",
        "pending",
        patient,
        now - 30,
    ));
    assert_eq!(
        direct.handle_webhook(&h, &b, now).await.unwrap().result,
        "stale"
    );

    // An event for an inquiry whose row is not written yet (the webhook raced the API's
    // answer) is matched by the reference Tessera gave.
    let other = "22222222222222222222222222222222";
    let (h, b) = signed(persona_event(
        "e4",
        "inquiry.expired",
        "inq_9",
        "expired",
        other,
        now - 5,
    ));
    assert_eq!(
        direct.handle_webhook(&h, &b, now).await.unwrap().result,
        "applied"
    );
    assert_eq!(direct.status(other).await.unwrap().state, State::Expired);
    // Other event types say nothing about a status.
    let report = serde_json::to_vec(
        &json!({"data": {"type": "event", "id": "e5", "attributes": {
        "name": "report/watchlist.ready", "created-at": Utc::now().to_rfc3339(),
        "payload": {"data": {"type": "report/watchlist", "id": "rep_1"}}}}}),
    )
    .unwrap();
    let (h, b) = signed(report);
    assert_eq!(
        direct.handle_webhook(&h, &b, now).await.unwrap().result,
        "ignored"
    );
}

#[tokio::test]
async fn an_ial1_configuration_does_not_unlock() {
    let (store, payouts, _d) = fresh().await;
    let (base, _seen) = persona().await;
    let config_ial1 = client_at(&base, false, Assurance::Ial1);
    let identity = Identity::new(store, Arc::new(config_ial1), payouts.clone());
    let patient = "33333333333333333333333333333333";
    identity
        .start(patient, "https://tessera.test/r")
        .await
        .unwrap();
    let now = Utc::now().timestamp();
    let body = persona_event(
        "e1",
        "inquiry.approved",
        "inq_0",
        "approved",
        patient,
        now - 5,
    );
    let h = format!("t={now},v1={}", sign(SECRET, now, &body));
    identity.handle_webhook(&h, &body, now).await.unwrap();
    let st = identity.status(patient).await.unwrap();
    assert_eq!(st.state, State::Approved);
    assert!(!st.unlocked(), "IAL1 must not unlock");
    assert!(st.explanation().contains("IAL2"));
    assert_ne!(
        payouts.identity(patient).await.unwrap(),
        IdentityStatus::Verified
    );
}

/// What the Stripe Identity stand-in saw.
#[derive(Debug, Default)]
struct StripeSeen {
    forms: Vec<Vec<(String, String)>>,
    keys: Vec<String>,
    status: String,
    last_error: Option<String>,
    redacted: Vec<String>,
}

async fn stripe_create(
    AxState(s): AxState<Arc<Mutex<StripeSeen>>>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    if h.get("authorization").and_then(|v| v.to_str().ok()) != Some("Bearer sk_test_identity") {
        return (
            StatusCode::UNAUTHORIZED,
            json!({"error": {"type": "invalid_request_error"}}).to_string(),
        )
            .into_response();
    }
    let Some(key) = h.get("idempotency-key").and_then(|v| v.to_str().ok()) else {
        return (
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "idempotency_key_missing"}}).to_string(),
        )
            .into_response();
    };
    if h.get("content-type").and_then(|v| v.to_str().ok())
        != Some("application/x-www-form-urlencoded")
    {
        return (
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "not_form"}}).to_string(),
        )
            .into_response();
    }
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap();
    let has = |k: &str, v: &str| form.iter().any(|(a, b)| a == k && b == v);
    if !has("type", "document")
        || !has("options[document][require_matching_selfie]", "true")
        || !form.iter().any(|(k, _)| k == "client_reference_id")
        || !form.iter().any(|(k, _)| k == "return_url")
    {
        return (
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": "parameter_missing"}}).to_string(),
        )
            .into_response();
    }
    let mut seen = s.lock().unwrap();
    seen.keys.push(key.to_string());
    seen.forms.push(form);
    seen.status = "requires_input".into();
    axum::Json(json!({"id": "vs_1", "object": "identity.verification_session", "status": "requires_input", "url": "https://verify.stripe.test/start/vs_1"})).into_response()
}

async fn stripe_get(
    AxState(s): AxState<Arc<Mutex<StripeSeen>>>,
    Path(id): Path<String>,
) -> Response {
    let seen = s.lock().unwrap();
    axum::Json(json!({"id": id, "object": "identity.verification_session", "status": seen.status,
        "last_error": seen.last_error.as_ref().map(|c| json!({"code": c})),
        "url": if seen.status == "requires_input" { Value::from("https://verify.stripe.test/start/vs_1") } else { Value::Null }})).into_response()
}

async fn stripe_redact(
    AxState(s): AxState<Arc<Mutex<StripeSeen>>>,
    Path(id): Path<String>,
) -> Response {
    s.lock().unwrap().redacted.push(id.clone());
    axum::Json(json!({"id": id, "object": "identity.verification_session", "redaction": {"status": "processing"}})).into_response()
}

#[tokio::test]
async fn stripe_identity_sessions_events_and_reasons() {
    let (store, payouts, _d) = fresh().await;
    let state: Arc<Mutex<StripeSeen>> = Arc::default();
    let app = Router::new()
        .route("/v1/identity/verification_sessions", post(stripe_create))
        .route("/v1/identity/verification_sessions/{id}", get(stripe_get))
        .route(
            "/v1/identity/verification_sessions/{id}/redact",
            post(stripe_redact),
        )
        .with_state(state.clone());
    let base = serve(app).await;
    let provider = StripeIdentity::new(StripeIdentityConfig {
        base_url: base,
        secret_key: "sk_test_identity".into(),
        webhook_secrets: vec![SECRET.to_vec()],
        assurance: Assurance::Ial2,
    })
    .unwrap();
    let identity = Identity::new(store, Arc::new(provider), payouts.clone());
    let patient = "44444444444444444444444444444444";
    let url = identity
        .start(patient, "https://tessera.test/me/identity/return")
        .await
        .unwrap();
    assert_eq!(url, "https://verify.stripe.test/start/vs_1");
    assert_eq!(state.lock().unwrap().keys.len(), 1);

    let now = Utc::now().timestamp();
    let event = |id: &str, kind: &str, created: i64, last_error: Option<&str>| {
        let body = serde_json::to_vec(&json!({"id": id, "object": "event", "type": kind, "created": created,
            "data": {"object": {"id": "vs_1", "object": "identity.verification_session", "client_reference_id": patient,
                "last_error": last_error.map(|c| json!({"code": c}))}}})).unwrap();
        (format!("t={now},v1={}", sign(SECRET, now, &body)), body)
    };
    // A failed document check: the patient reads the reason and may retry.
    let (h, b) = event(
        "evt_1",
        "identity.verification_session.requires_input",
        now - 30,
        Some("document_expired"),
    );
    identity.handle_webhook(&h, &b, now).await.unwrap();
    let st = identity.status(patient).await.unwrap();
    assert_eq!(st.state, State::Failed);
    assert!(st.explanation().contains("expired"), "{}", st.explanation());
    // Processing then verified, delivered in reverse order.
    let (hv, bv) = event(
        "evt_3",
        "identity.verification_session.verified",
        now - 10,
        None,
    );
    let (hp, bp) = event(
        "evt_2",
        "identity.verification_session.processing",
        now - 20,
        None,
    );
    assert_eq!(
        identity.handle_webhook(&hv, &bv, now).await.unwrap().result,
        "applied"
    );
    assert_eq!(
        identity.handle_webhook(&hp, &bp, now).await.unwrap().result,
        "stale"
    );
    assert!(identity.status(patient).await.unwrap().unlocked());
    assert_eq!(
        payouts.identity(patient).await.unwrap(),
        IdentityStatus::Verified
    );
    // Signed with another secret: refused.
    let body = bv.clone();
    let wrong = format!("t={now},v1={}", sign(OLD_SECRET, now, &body));
    assert!(identity.handle_webhook(&wrong, &body, now).await.is_err());
    // Deletion redacts the session at Stripe.
    identity.forget(patient).await.unwrap();
    assert_eq!(state.lock().unwrap().redacted, vec!["vs_1".to_string()]);
}
