//! Sharing with the care team: the patient's page of shares, the SMART Health Links endpoints
//! that viewers call, and a plain page for whoever holds a link.
//!
//! - `GET /me/share`, `POST /me/share` (make), `POST /me/share/revoke`: the patient's side;
//!   every use of a share is listed under it.
//! - `POST /shl/{id}`: the SMART Health Links manifest (`{recipient, passcode,
//!   embeddedLengthMax}` → `{files: [{contentType, embedded | location}]}`; 401 with
//!   `remainingAttempts` for a missing or wrong passcode; 404 for unknown, expired, revoked or
//!   locked). `GET /shl/{id}/file?ticket=…` serves the JWE where it was not embedded (a ticket
//!   signed by the server, valid for an hour). Both answer cross-origin requests, since
//!   viewers are web applications elsewhere.
//! - `GET /s/{id}` asks for the viewer's name (and the passcode); `POST /s/{id}` shows the
//!   shared data as a page.

// Handler helpers answer their refusal as the `Response` itself, as axum handlers do.
#![allow(clippy::result_large_err)]

use std::fmt::Write as _;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use tessera_catalog::model::RecordKind;
use tessera_catalog::sharing::{Contents, DEFAULT_DAYS, Refused, ShareError};

use super::AppState;
use super::me::{Refusal, form_me, layout, me, minute};
use super::web::esc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/me/share", get(share_page).post(make_share))
        .route("/me/share/revoke", post(revoke))
        .route("/shl/{id}", post(manifest).options(preflight))
        .route("/shl/{id}/file", get(file).options(preflight))
        .route("/s/{id}", get(viewer_form).post(viewer_page))
}

fn public_url(s: &AppState) -> String {
    s.patients
        .as_ref()
        .map(|p| p.public_url.clone())
        .unwrap_or_default()
}

fn page(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        axum::response::Html(html),
    )
        .into_response()
}

const KINDS: [(RecordKind, &str); 8] = [
    (RecordKind::Condition, "Conditions"),
    (RecordKind::Medication, "Medications"),
    (RecordKind::Observation, "Measurements and test results"),
    (RecordKind::Procedure, "Procedures"),
    (RecordKind::Encounter, "Visits"),
    (RecordKind::Phenotype, "Phenotypes"),
    (RecordKind::Variant, "Genetic variants"),
    (RecordKind::SurveyResponse, "Survey answers"),
];

async fn share_page(State(s): State<AppState>, h: HeaderMap) -> Response {
    let me = match me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    let shares = match s.catalog.shares(me.patient()).await {
        Ok(v) => v,
        Err(_) => return Refusal::Unavailable.page(),
    };
    let now = Utc::now();
    let base = public_url(&s);
    let mut b = String::from(
        "<p>Share a copy of your data with a doctor, a nurse or a relative. They open it with the link (in any SMART Health Links viewer, or as a plain page here), and with the passcode if you set one. You can stop a share at any time, and you see every time it is opened.</p>",
    );
    let _ = write!(
        b,
        "<h2 id=\"new\">New share</h2><form method=\"post\" action=\"/me/share\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<label for=\"label\">Name it (only you and the viewer see this)</label><input id=\"label\" name=\"label\" required maxlength=\"80\" size=\"40\" placeholder=\"For Dr. Rivera\">\
<fieldset><legend>What to share</legend><label><input type=\"checkbox\" name=\"kind\" value=\"all\" checked> Everything</label>",
        me.csrf
    );
    for (k, label) in KINDS {
        let _ = write!(
            b,
            "<label style=\"margin-left:1.6rem\"><input type=\"checkbox\" name=\"kind\" value=\"{}\"> {label}</label>",
            k.as_str()
        );
    }
    let _ = write!(
        b,
        "<label><input type=\"checkbox\" name=\"identity\" value=\"yes\" checked> My name and birth date (a doctor needs them to know it is you)</label></fieldset>\
<label for=\"days\">Stops working after (days)</label><input id=\"days\" name=\"days\" type=\"number\" min=\"1\" max=\"365\" value=\"{DEFAULT_DAYS}\">\
<label for=\"passcode\">Passcode (optional; tell it to the viewer separately)</label><input id=\"passcode\" name=\"passcode\" type=\"password\" autocomplete=\"new-password\" minlength=\"4\">\
<p><button type=\"submit\">Make the link</button></p></form>"
    );
    b.push_str("<h2 id=\"shares\">Your shares</h2>");
    if shares.is_empty() {
        b.push_str("<p>None yet.</p>");
    }
    for sh in &shares {
        let live = sh.live(now);
        let status = if let Some(at) = &sh.revoked_at {
            format!("stopped {}", minute(at))
        } else if sh.attempts_left <= 0 {
            "locked: too many wrong passcodes".to_string()
        } else if !live {
            format!("expired {}", minute(&sh.expires_at))
        } else {
            format!("works until {}", minute(&sh.expires_at))
        };
        let _ = write!(
            b,
            "<section class=\"purpose\" aria-label=\"{label}\"><h3>{label}</h3><p>{what}; {pass}; <b>{status}</b>.</p>",
            label = esc(&sh.label),
            what = esc(&sh.contents.describe()),
            pass = if sh.passcode {
                "passcode required"
            } else {
                "no passcode"
            },
        );
        if live {
            let viewer = format!("{base}/s/{}", sh.share_id);
            let _ = write!(
                b,
                "<p>Link for the viewer: <a href=\"{v}\">{v}</a></p><details><summary>SMART Health Link (for health apps)</summary><p><code class=\"shlink\">{}</code></p></details>\
<form method=\"post\" action=\"/me/share/revoke\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"share\" value=\"{}\"><button type=\"submit\" class=\"secondary\">Stop this share</button></form>",
                esc(&shlink_of(&s, sh)),
                me.csrf,
                esc(&sh.share_id),
                v = esc(&viewer),
            );
        }
        if sh.views.is_empty() {
            b.push_str("<p class=\"muted\">Not opened yet.</p>");
        } else {
            b.push_str("<table><tr><th scope=\"col\">When</th><th scope=\"col\">Who said they were</th><th scope=\"col\">What</th><th scope=\"col\">Result</th></tr>");
            for v in sh.views.iter().rev() {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    minute(&v.at),
                    esc(if v.recipient.is_empty() {
                        "(not given)"
                    } else {
                        &v.recipient
                    }),
                    match v.what.as_str() {
                        "page" => "opened the page",
                        "manifest" => "opened in a health app",
                        _ => "downloaded the file",
                    },
                    match v.outcome.as_str() {
                        "ok" => "shown",
                        "wrong_passcode" => "wrong passcode",
                        "no_passcode" => "asked for the passcode",
                        "revoked" => "refused: stopped",
                        "expired" => "refused: expired",
                        _ => "refused: locked",
                    }
                );
            }
            b.push_str("</table>");
        }
        b.push_str("</section>");
    }
    page(
        StatusCode::OK,
        layout("Share with your care team", Some(&me), &b),
    )
}

/// A share's link again (its key is kept sealed for the patient's page).
fn shlink_of(s: &AppState, sh: &tessera_catalog::sharing::Share) -> String {
    sh.link(&format!("{}/shl/{}", public_url(s), sh.share_id))
}

async fn make_share(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let me = match form_me(&s, &h, &form).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    };
    let chosen: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "kind")
        .map(|(_, v)| v.as_str())
        .collect();
    let kinds = if chosen.is_empty() || chosen.contains(&"all") {
        Vec::new()
    } else {
        chosen.iter().filter_map(|k| RecordKind::parse(k)).collect()
    };
    let days = get("days").parse::<i64>().unwrap_or(DEFAULT_DAYS);
    let passcode = Some(get("passcode")).filter(|p| !p.is_empty());
    match s
        .catalog
        .create_share(
            me.patient(),
            &me.account.account_id,
            get("label"),
            Contents {
                kinds,
                identity: get("identity") == "yes",
            },
            days,
            passcode,
        )
        .await
    {
        Ok(_) => Redirect::to("/me/share#shares").into_response(),
        Err(e) if e.is_user_error() => page(
            StatusCode::BAD_REQUEST,
            layout(
                "Share with your care team",
                Some(&me),
                &format!(
                    "<p class=\"warn\" role=\"alert\">{}</p><p><a href=\"/me/share\">Back</a></p>",
                    esc(&e.to_string())
                ),
            ),
        ),
        Err(e) => {
            tracing::error!(error = %e, "making a share");
            Refusal::Unavailable.page()
        }
    }
}

async fn revoke(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let me = match form_me(&s, &h, &form).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let id = form
        .iter()
        .find(|(k, _)| k == "share")
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    match s.catalog.revoke_share(me.patient(), id).await {
        Ok(_) => Redirect::to("/me/share#shares").into_response(),
        Err(_) => Refusal::Unavailable.page(),
    }
}

// ---------------------------------------------------------------------------------------
// SMART Health Links endpoints

fn cors(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn preflight() -> Response {
    cors(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ManifestRequest {
    #[serde(default)]
    recipient: String,
    #[serde(default)]
    passcode: Option<String>,
    #[serde(default)]
    embedded_length_max: Option<usize>,
}

fn refused(e: ShareError) -> Response {
    match e {
        ShareError::Refused(Refused::NotFound) => cors(
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "this link is unknown, expired or stopped"})),
            )
                .into_response(),
        ),
        ShareError::Refused(Refused::Passcode { remaining }) => cors(
            (
                StatusCode::UNAUTHORIZED,
                Json(json!({"remainingAttempts": remaining})),
            )
                .into_response(),
        ),
        ShareError::Catalog(e) => {
            tracing::error!(error = %e, "opening a share");
            cors(StatusCode::SERVICE_UNAVAILABLE.into_response())
        }
    }
}

/// A file ticket: `expiry.hmac`, valid for an hour, bound to the share.
fn ticket(s: &AppState, id: &str, exp: i64) -> String {
    format!(
        "{exp}.{}",
        super::web::csrf_token(&s.pepper, "shl-file", &format!("{id}:{exp}"))
    )
}

async fn manifest(State(s): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    let req: ManifestRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return cors(
                (
                    StatusCode::BAD_REQUEST,
                    Json(json!({"error": "send JSON: {\"recipient\": \"...\", \"passcode\": \"...\"}"})),
                )
                    .into_response(),
            );
        }
    };
    if req.recipient.trim().is_empty() {
        return cors(
            (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": "recipient: say who is opening the link"})),
            )
                .into_response(),
        );
    }
    match s
        .catalog
        .open_share(&id, req.passcode.as_deref(), &req.recipient, "manifest")
        .await
    {
        Ok(opened) => {
            let file = match req.embedded_length_max {
                Some(max) if opened.jwe.len() <= max => {
                    json!({"contentType": "application/fhir+json", "embedded": opened.jwe})
                }
                _ => {
                    let exp = Utc::now().timestamp() + 3600;
                    json!({"contentType": "application/fhir+json", "location": format!("{}/shl/{id}/file?ticket={}", public_url(&s), ticket(&s, &id, exp))})
                }
            };
            cors(Json(json!({"files": [file]})).into_response())
        }
        Err(e) => refused(e),
    }
}

async fn file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let t = q.get("ticket").map(String::as_str).unwrap_or("");
    let valid = t
        .split_once('.')
        .and_then(|(exp, _)| exp.parse::<i64>().ok())
        .is_some_and(|exp| exp > Utc::now().timestamp() && ticket(&s, &id, exp) == t);
    if !valid {
        return refused(ShareError::Refused(Refused::NotFound));
    }
    // The ticket stands for the passcode checked at the manifest.
    match s.catalog.open_share_by_ticket(&id, "file").await {
        Ok(opened) => {
            cors(([(header::CONTENT_TYPE, "application/jose")], opened.jwe).into_response())
        }
        Err(e) => refused(e),
    }
}

// ---------------------------------------------------------------------------------------
// The plain page

fn viewer_form_html(id: &str, message: Option<&str>) -> String {
    let mut b = String::new();
    if let Some(m) = message {
        let _ = write!(b, "<p class=\"warn\" role=\"alert\">{}</p>", esc(m));
    }
    let _ = write!(
        b,
        "<p>Someone shared health information with you through Tessera. Say who you are (the patient sees it), and give the passcode if they told you one.</p>\
<form method=\"post\" action=\"/s/{}\"><label for=\"recipient\">Your name and role</label><input id=\"recipient\" name=\"recipient\" required maxlength=\"120\" size=\"40\" placeholder=\"Dr. Rivera, Springfield Clinic\">\
<label for=\"passcode\">Passcode (if you were given one)</label><input id=\"passcode\" name=\"passcode\" type=\"password\" autocomplete=\"off\">\
<p><button type=\"submit\">Open</button></p></form>",
        esc(id)
    );
    layout("Shared health information", None, &b)
}

async fn viewer_form(Path(id): Path<String>) -> Response {
    page(StatusCode::OK, viewer_form_html(&id, None))
}

async fn viewer_page(State(s): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.trim())
            .unwrap_or("")
    };
    if get("recipient").is_empty() {
        return page(
            StatusCode::BAD_REQUEST,
            viewer_form_html(&id, Some("Say who you are first.")),
        );
    }
    let passcode = Some(get("passcode")).filter(|p| !p.is_empty());
    match s
        .catalog
        .open_share(&id, passcode, get("recipient"), "page")
        .await
    {
        Ok(opened) => page(
            StatusCode::OK,
            layout(
                &format!("Shared: {}", opened.label),
                None,
                &render_bundle(&opened.bundle),
            ),
        ),
        Err(ShareError::Refused(Refused::Passcode { remaining })) => page(
            StatusCode::UNAUTHORIZED,
            viewer_form_html(
                &id,
                Some(&format!(
                    "That passcode is not right ({remaining} tries left). Ask the person who shared it."
                )),
            ),
        ),
        Err(ShareError::Refused(Refused::NotFound)) => page(
            StatusCode::NOT_FOUND,
            layout(
                "Shared health information",
                None,
                "<p role=\"alert\">This link is unknown, has expired, or was stopped by the person who shared it.</p>",
            ),
        ),
        Err(ShareError::Catalog(e)) => {
            tracing::error!(error = %e, "opening a share");
            Refusal::Unavailable.page()
        }
    }
}

fn text_of(r: &Value) -> String {
    for path in [
        &["code", "text"][..],
        &["code", "coding", "0", "display"],
        &["medicationCodeableConcept", "text"],
        &["medicationCodeableConcept", "coding", "0", "display"],
        &["vaccineCode", "text"],
        &["vaccineCode", "coding", "0", "display"],
        &["type", "0", "text"],
        &["type", "0", "coding", "0", "display"],
    ] {
        let mut v = r;
        for p in path {
            v = match p.parse::<usize>() {
                Ok(i) => &v[i],
                Err(_) => &v[*p],
            };
        }
        if let Some(s) = v.as_str() {
            return s.to_string();
        }
    }
    String::new()
}

fn when_of(r: &Value) -> String {
    for k in [
        "effectiveDateTime",
        "onsetDateTime",
        "authoredOn",
        "performedDateTime",
        "occurrenceDateTime",
        "recordedDate",
        "issued",
    ] {
        if let Some(s) = r[k].as_str() {
            return s.chars().take(10).collect();
        }
    }
    if let Some(s) = r["period"]["start"].as_str() {
        return s.chars().take(10).collect();
    }
    String::new()
}

fn value_of(r: &Value) -> String {
    if let Some(v) = r["valueQuantity"]["value"].as_f64() {
        return format!("{v} {}", r["valueQuantity"]["unit"].as_str().unwrap_or(""))
            .trim()
            .to_string();
    }
    r["valueCodeableConcept"]["coding"][0]["display"]
        .as_str()
        .or(r["valueString"].as_str())
        .unwrap_or("")
        .to_string()
}

/// A shared bundle as a readable page: the patient, then each kind of resource as a table.
fn render_bundle(bundle: &Value) -> String {
    let mut b = String::new();
    let mut by_type: std::collections::BTreeMap<String, Vec<&Value>> = Default::default();
    for e in bundle["entry"].as_array().into_iter().flatten() {
        let r = &e["resource"];
        let t = r["resourceType"].as_str().unwrap_or("").to_string();
        if t == "Patient" {
            let name = r["name"][0]["given"]
                .as_array()
                .map(|g| {
                    g.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            let family = r["name"][0]["family"].as_str().unwrap_or("");
            let full = format!("{name} {family}").trim().to_string();
            let _ = write!(
                b,
                "<p>Patient: <b>{}</b>{}</p>",
                esc(if full.is_empty() {
                    "(name not shared)"
                } else {
                    &full
                }),
                r["birthDate"]
                    .as_str()
                    .map(|d| format!(", born {}", esc(d)))
                    .unwrap_or_default()
            );
            continue;
        }
        by_type.entry(t).or_default().push(r);
    }
    let _ = write!(
        b,
        "<p class=\"muted\">A copy made {}; the person who shared it can stop this link at any time.</p>",
        esc(bundle["timestamp"].as_str().unwrap_or(""))
    );
    for (t, rs) in by_type {
        let _ = write!(
            b,
            "<h2>{}</h2><table><tr><th scope=\"col\">What</th><th scope=\"col\">When</th><th scope=\"col\">Value</th></tr>",
            esc(&t)
        );
        for r in rs {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&text_of(r)),
                esc(&when_of(r)),
                esc(&value_of(r))
            );
        }
        b.push_str("</table>");
    }
    b
}
