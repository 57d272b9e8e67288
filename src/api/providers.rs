//! Records from providers, on the patient's side: the Providers page shows their identity
//! status and each provider (connected, request pending with its deadline, records received),
//! and lets them verify their identity, connect a provider through SMART on FHIR, fetch again
//! and disconnect. The identity providers' webhooks land here too.
//!
//! - `GET /me/providers`: the page (`?q=` searches the provider directory).
//! - `POST /me/identity/start` (CSRF): to the identity provider's hosted flow.
//! - `GET /me/identity/return`: back from it: the status asked of the provider at once.
//! - `POST /me/providers/connect` (CSRF): the standalone launch, to the provider's sign-in.
//! - `GET /me/providers/callback`: back from it with `code` and `state`; the first fetch runs
//!   in the background.
//! - `POST /me/providers/{id}/sync`, `POST /me/providers/{id}/disconnect` (CSRF).
//! - `POST /me/providers/requests` (CSRF): a right-of-access request prepared for a provider
//!   without an API; `GET /me/providers/requests/{id}/letter.pdf`: its letter to sign.
//! - `GET /providers/scorecard`: the published provider scorecard (public: no patient data).
//! - `POST /v1/webhooks/persona`, `POST /v1/webhooks/identity` (Stripe Identity): signed
//!   events of the configured identity provider.
//!
//! Who may: the patient, or a parent or guardian acting for them (their personal
//! representative, who holds the right of access under 45 CFR 164.502(g)); other caregivers
//! see the status but are told to ask the patient.

// Handler helpers answer their refusal as the `Response` itself, as axum handlers do.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use tessera_catalog::accounts::Relation;
use tessera_records::RecordsError;
use tessera_records::identity::State as IdState;

use super::AppState;
use super::me::{Me, Refusal, field, form_me, layout, me, message_page, page, parse_form};
use super::web::esc;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/me/providers", get(providers_page))
        .route("/me/identity/start", post(identity_start))
        .route("/me/identity/return", get(identity_return))
        .route("/me/providers/connect", post(connect))
        .route("/me/providers/callback", get(callback))
        .route("/me/providers/{id}/sync", post(sync))
        .route("/me/providers/{id}/disconnect", post(disconnect))
        .route("/me/providers/requests", post(request_letter))
        .route("/me/providers/requests/{id}/letter.pdf", get(letter))
        .route("/providers/scorecard", get(scorecard))
        .route("/v1/webhooks/persona", post(persona_hook))
        .route("/v1/webhooks/identity", post(stripe_identity_hook))
}

/// A form posted by someone who may act on the patient's records and identity: the session
/// (CSRF checked), the form's fields and the services; or the refusal to answer.
async fn acting<'a>(
    s: &'a AppState,
    h: &HeaderMap,
    body: &Bytes,
) -> Result<
    (
        Me,
        Vec<(String, String)>,
        &'a super::patients::PatientServices,
    ),
    Response,
> {
    let form = parse_form(body);
    let me = form_me(s, h, &form).await?;
    if !may_act(&me) {
        return Err(not_yours());
    }
    let svc = s
        .patients
        .as_ref()
        .ok_or_else(|| Refusal::Unavailable.page())?;
    Ok((me, form, svc))
}

/// Whether this session may act on the patient's records and identity.
fn may_act(me: &Me) -> bool {
    matches!(
        me.relation,
        Relation::Own | Relation::Parent | Relation::Guardian
    )
}

fn not_yours() -> Response {
    message_page(
        StatusCode::FORBIDDEN,
        "Providers",
        "Only the patient, or a parent or guardian acting for them, can verify identity and ask providers for records.",
    )
}

fn records_unavailable() -> Response {
    message_page(
        StatusCode::BAD_GATEWAY,
        "Providers",
        "The service could not be reached just now: try again in a few minutes. Nothing was changed.",
    )
}

fn when(t: chrono::DateTime<Utc>) -> String {
    t.format("%-d %B %Y, %H:%M UTC").to_string()
}

async fn providers_page(
    State(s): State<AppState>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let me = match me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    let Some(svc) = s.patients.as_ref() else {
        return Refusal::Unavailable.page();
    };
    let records = &svc.records;
    let status = match tessera_records::identity::status_of(&records.store, me.patient()).await {
        Ok(st) => st,
        Err(e) => {
            tracing::error!(error = %e, "reading an identity status");
            return Refusal::Unavailable.page();
        }
    };
    let mut b = String::new();
    b.push_str("<p>Your records are spread across the hospitals and clinics that treated you. Here you can connect them, so that your records reach Tessera without anyone sending us files.</p>");

    // Identity.
    let _ = write!(
        b,
        "<section aria-labelledby=\"identity\"><h2 id=\"identity\">Your identity</h2><p role=\"status\"><b>{}</b>: {}</p>",
        esc(match status.state {
            IdState::NotStarted => "Not verified",
            IdState::Started => "Started",
            IdState::InReview => "Being reviewed",
            IdState::Approved if status.unlocked() => "Verified",
            IdState::Approved => "Verified, below the level needed",
            IdState::Declined => "Declined",
            IdState::Failed => "Not successful",
            IdState::Expired => "Expired",
        }),
        esc(status.explanation())
    );
    let can_start = status.state.can_retry()
        || status.state.can_resume()
        || (status.state == IdState::Approved && !status.unlocked());
    match (&records.identity, may_act(&me), can_start) {
        (Some(_), true, true) => {
            let label = match status.state {
                IdState::Started => "Continue verifying",
                IdState::NotStarted => "Verify my identity",
                _ => "Try again",
            };
            let _ = write!(
                b,
                "<form method=\"post\" action=\"/me/identity/start\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><p>You will need a driver's license, passport or ID card and your phone's camera. The check is done by our verification partner; Tessera never sees your document or photo, only the result.</p><button type=\"submit\">{label}</button></form>",
                me.csrf
            );
        }
        (None, _, true) => b.push_str("<p>Online identity verification is not offered on this server. The registry's staff can verify you in person.</p>"),
        (_, false, _) => b.push_str("<p>Only the patient, or a parent or guardian acting for them, can verify identity.</p>"),
        _ => {}
    }
    b.push_str("</section>");

    // Connected providers.
    let connections = match records.smart.connections(me.patient()).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reading provider connections");
            return Refusal::Unavailable.page();
        }
    };
    b.push_str("<section aria-labelledby=\"connected\"><h2 id=\"connected\">Your providers</h2>");
    if connections.is_empty() {
        b.push_str("<p>No provider is connected yet.</p>");
    } else {
        b.push_str("<table class=\"stack\"><caption>Providers connected to Tessera</caption><thead><tr><th scope=\"col\">Provider</th><th scope=\"col\">Status</th><th scope=\"col\">Records received</th><th scope=\"col\">Actions</th></tr></thead><tbody>");
        for c in &connections {
            let state = match (c.state.as_str(), c.last_sync_at, c.last_error.as_deref()) {
                ("authorizing", ..) => "Waiting for you to sign in at the provider".to_string(),
                ("needs_reconnect", ..) => {
                    "The provider ended the connection: connect again".to_string()
                }
                (_, _, Some("sync_failed")) => {
                    "Connected; the last fetch failed and will be tried again".to_string()
                }
                (_, Some(t), _) => format!("Connected; last fetched {}", when(t)),
                (_, None, _) => "Connected; fetching your records…".to_string(),
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td data-label=\"Status\">{}</td><td data-label=\"Records received\">{}</td><td>",
                esc(&c.organization),
                esc(&state),
                c.resources_fetched
            );
            if may_act(&me) {
                if c.state == "connected" {
                    let _ = write!(
                        b,
                        "<form class=\"inline\" method=\"post\" action=\"/me/providers/{id}/sync\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button class=\"secondary\" type=\"submit\" aria-label=\"Fetch again from {org}\">Fetch again</button></form> ",
                        id = esc(&c.id),
                        csrf = me.csrf,
                        org = esc(&c.organization)
                    );
                }
                let _ = write!(
                    b,
                    "<form class=\"inline\" method=\"post\" action=\"/me/providers/{id}/disconnect\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><button class=\"secondary\" type=\"submit\" aria-label=\"Disconnect {org}\">Disconnect</button></form>",
                    id = esc(&c.id),
                    csrf = me.csrf,
                    org = esc(&c.organization)
                );
            }
            b.push_str("</td></tr>");
        }
        b.push_str("</tbody></table><p class=\"muted\">Disconnecting stops Tessera from fetching and destroys its access; the records already received stay, under your consent choices, until you delete them.</p>");
    }
    b.push_str("</section>");

    // Connect a provider.
    let search = q
        .get("q")
        .map(String::as_str)
        .unwrap_or("")
        .trim()
        .to_string();
    let _ = write!(
        b,
        "<section aria-labelledby=\"connect\"><h2 id=\"connect\">Connect a provider</h2><form method=\"get\" action=\"/me/providers\"><label for=\"q\">Hospital, clinic or town</label> <input id=\"q\" name=\"q\" value=\"{}\" autocomplete=\"off\"> <button type=\"submit\" class=\"secondary\">Search</button></form>",
        esc(&search)
    );
    if !status.unlocked() {
        b.push_str("<p>You can connect a provider once your identity is verified: we only ask for the records of a person we know is you.</p>");
    } else if !search.is_empty() {
        match records.smart.directory(&search).await {
            Ok(list) if list.is_empty() => {
                b.push_str("<p role=\"status\">No provider matches. Your provider may not offer patient access yet: the registry's staff can send them a written request for you.</p>");
            }
            Ok(list) => {
                b.push_str("<ul class=\"providers\">");
                for e in list.iter().take(50) {
                    let place: Vec<&str> = [e.city.as_deref(), e.region.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect();
                    let _ = write!(
                        b,
                        "<li><form method=\"post\" action=\"/me/providers/connect\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"endpoint\" value=\"{id}\"><b>{org}</b> {place} <button type=\"submit\" aria-label=\"Connect {org}\">Connect</button></form></li>",
                        csrf = me.csrf,
                        id = esc(&e.id),
                        org = esc(&e.organization),
                        place = esc(&place.join(", "))
                    );
                }
                b.push_str("</ul>");
            }
            Err(e) => {
                tracing::error!(error = %e, "searching the provider directory");
                return Refusal::Unavailable.page();
            }
        }
    }
    b.push_str("</section>");

    // Requests by letter.
    let roa = access_requests(&svc.records);
    let requests = match roa.list(Some(me.patient())).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "reading access requests");
            return Refusal::Unavailable.page();
        }
    };
    b.push_str("<section aria-labelledby=\"letters\"><h2 id=\"letters\">Requests by letter</h2><p>For a provider without patient access online, the law (HIPAA's right of access) lets you ask in writing. We prepare the letter; you sign it; the registry's staff send it and follow it up until your records arrive.</p>");
    if !requests.is_empty() {
        b.push_str("<table class=\"stack\"><caption>Your written requests</caption><thead><tr><th scope=\"col\">Provider</th><th scope=\"col\">Status</th><th scope=\"col\">Answer due</th><th scope=\"col\">Letter</th></tr></thead><tbody>");
        for r in &requests {
            let due = match (r.state.open(), r.due_at) {
                (true, Some(d)) => d.format("%-d %B %Y").to_string(),
                _ => "—".into(),
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td data-label=\"Status\">{}{}</td><td data-label=\"Answer due\">{}</td><td>",
                esc(&r.provider_name),
                esc(r.state.describe()),
                r.extension_reason
                    .as_deref()
                    .map(|why| format!(" (reason given: {})", esc(why)))
                    .unwrap_or_default(),
                esc(&due)
            );
            if may_act(&me) {
                let _ = write!(
                    b,
                    "<a href=\"/me/providers/requests/{id}/letter.pdf\" download>Letter to sign (PDF)</a>",
                    id = esc(&r.id)
                );
            }
            b.push_str("</td></tr>");
        }
        b.push_str("</tbody></table>");
    }
    if status.unlocked() && may_act(&me) {
        let _ = write!(
            b,
            "<form method=\"post\" action=\"/me/providers/requests\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><p><label for=\"provider_name\">Provider's name</label><br><input id=\"provider_name\" name=\"provider_name\" required maxlength=\"200\" autocomplete=\"organization\"></p><button type=\"submit\">Prepare a letter</button></form>",
            me.csrf
        );
    }
    b.push_str(
        "<p><a href=\"/providers/scorecard\">How providers answer such requests</a></p></section>",
    );
    page(StatusCode::OK, layout("Providers", Some(&me), &b))
}

fn access_requests(
    records: &crate::records::RecordsServices,
) -> tessera_records::access_request::AccessRequests {
    tessera_records::access_request::AccessRequests::new(
        records.store.clone(),
        tessera_records::access_request::Policy::default(),
    )
}

async fn request_letter(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let (me, form, svc) = match acting(&s, &h, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = field(&form, "provider_name").unwrap_or("");
    let key = format!("name:{}", name.to_lowercase());
    match access_requests(&svc.records)
        .prepare(me.patient(), &key, name, Utc::now())
        .await
    {
        Ok(_) => Redirect::to("/me/providers#letters").into_response(),
        Err(RecordsError::Invalid(why)) => {
            message_page(StatusCode::BAD_REQUEST, "Requests by letter", &why)
        }
        Err(e) => {
            tracing::error!(error = %e, "preparing an access request");
            Refusal::Unavailable.page()
        }
    }
}

async fn letter(State(s): State<AppState>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let me = match me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    if !may_act(&me) {
        return not_yours();
    }
    let Some(svc) = s.patients.as_ref() else {
        return Refusal::Unavailable.page();
    };
    let roa = access_requests(&svc.records);
    let request = match roa.get(&id).await {
        Ok(r) if r.patient == me.patient() => r,
        _ => {
            return message_page(
                StatusCode::NOT_FOUND,
                "Requests by letter",
                "No such request.",
            );
        }
    };
    let identity = match s.catalog.own_identity(me.patient()).await {
        Ok(i) => i,
        Err(_) => return Refusal::Unavailable.page(),
    };
    let deliver = std::env::var("TESSERA_RECORDS_DELIVERY")
        .ok()
        .filter(|d| !d.is_empty())
        .map(|d| format!("{d} (reference {})", request.id))
        .unwrap_or_else(|| "the address above".into());
    let mut details =
        tessera_records::access_request::LetterDetails::from_identity(&identity, None, &deliver);
    if me.relation != Relation::Own {
        details.representative = Some(("the undersigned".into(), me.relation.as_str().to_string()));
    }
    let pdf = tessera_records::access_request::letter_pdf(
        &tessera_records::access_request::letter_lines(
            &request,
            &details,
            Utc::now(),
            roa.policy(),
        ),
    );
    (
        [
            (
                axum::http::header::CONTENT_TYPE,
                "application/pdf".to_string(),
            ),
            (axum::http::header::CACHE_CONTROL, "no-store".to_string()),
            (
                axum::http::header::CONTENT_DISPOSITION,
                "attachment; filename=\"right-of-access-request.pdf\"".to_string(),
            ),
        ],
        pdf,
    )
        .into_response()
}

/// The published scorecard: providers, stars and the figures behind them; no patient data.
async fn scorecard(State(s): State<AppState>) -> Response {
    let Some(svc) = s.patients.as_ref() else {
        return Refusal::Unavailable.page();
    };
    let card = match access_requests(&svc.records).scorecard().await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "computing the scorecard");
            return Refusal::Unavailable.page();
        }
    };
    let mut b = String::from(
        "<p>How providers answered patients' written requests for their records (HIPAA's right of access), from the requests the registry sent for its patients. Stars start at 5; one is lost for a median answer after the rule's 30 days (two after 60), for needing more than one reminder on average, for a fee above the $6.50 flat option, and for sending less than asked in over a fifth of cases; a provider that left most requests unanswered has one star.</p>",
    );
    if card.is_empty() {
        b.push_str("<p>No request has been completed yet.</p>");
    } else {
        b.push_str("<table><caption>Provider scorecard</caption><thead><tr><th scope=\"col\">Provider</th><th scope=\"col\">Stars</th><th scope=\"col\">Answered</th><th scope=\"col\">Median days</th><th scope=\"col\">Reminders per request</th><th scope=\"col\">Charged a fee</th><th scope=\"col\">Complete</th></tr></thead><tbody>");
        for sc in &card {
            let _ = write!(
                b,
                "<tr><td>{}</td><td><span aria-label=\"{} of 5 stars\">{}</span></td><td>{} of {}</td><td>{}</td><td>{:.1}</td><td>{}</td><td>{:.0}%</td></tr>",
                esc(&sc.provider_name),
                sc.stars,
                "★".repeat(usize::from(sc.stars)),
                sc.fulfilled,
                sc.requests,
                sc.median_days
                    .map_or_else(|| "—".to_string(), |d| format!("{d:.0}")),
                sc.follow_ups_per_request,
                sc.charged,
                sc.complete_share * 100.0
            );
        }
        b.push_str("</tbody></table>");
    }
    page(StatusCode::OK, layout("Provider scorecard", None, &b))
}

async fn identity_start(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let (me, _, svc) = match acting(&s, &h, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let Some(identity) = svc.records.identity.as_ref() else {
        return message_page(
            StatusCode::NOT_FOUND,
            "Your identity",
            "Online identity verification is not offered on this server.",
        );
    };
    let back = format!(
        "{}/me/identity/return",
        svc.public_url.trim_end_matches('/')
    );
    match identity.start(me.patient(), &back).await {
        Ok(url) if url.starts_with("https://") || url.starts_with("http://") => {
            Redirect::to(&url).into_response()
        }
        Ok(_) => records_unavailable(),
        Err(RecordsError::Invalid(why)) => {
            message_page(StatusCode::CONFLICT, "Your identity", &why)
        }
        Err(e) => {
            tracing::warn!(error = %e, "starting an identity verification");
            records_unavailable()
        }
    }
}

async fn identity_return(
    State(s): State<AppState>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let me = match super::getting_paid::returning(
        &s,
        &h,
        &q,
        "/me/identity/return",
        "Back from identity verification",
    )
    .await
    {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Some(identity) = s
        .patients
        .as_ref()
        .and_then(|svc| svc.records.identity.as_ref())
        && let Err(e) = identity.refresh(me.patient()).await
    {
        // The webhook brings the status later; the page shows what is known now.
        tracing::warn!(error = %e, "looking up an identity verification");
    }
    Redirect::to("/me/providers#identity").into_response()
}

async fn connect(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let (me, form, svc) = match acting(&s, &h, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let endpoint = field(&form, "endpoint").unwrap_or("");
    match svc.records.smart.begin(me.patient(), endpoint).await {
        Ok(url) => Redirect::to(&url).into_response(),
        Err(RecordsError::Invalid(why)) => {
            message_page(StatusCode::CONFLICT, "Connect a provider", &why)
        }
        Err(RecordsError::NotFound(_)) => message_page(
            StatusCode::NOT_FOUND,
            "Connect a provider",
            "That provider is not in the directory any more. Search again.",
        ),
        Err(e) => {
            tracing::warn!(error = %e, "starting a provider connection");
            message_page(
                StatusCode::BAD_GATEWAY,
                "Connect a provider",
                "The provider's system could not be reached or does not offer secure patient access. Try again later; nothing was changed.",
            )
        }
    }
}

/// Fetches in the background (the first fetch of a large record takes minutes).
fn sync_later(s: &AppState, patient: &str, connection: &str) {
    let Some(svc) = s.patients.as_ref() else {
        return;
    };
    let smart = svc.records.smart.clone();
    let (patient, connection) = (patient.to_string(), connection.to_string());
    tokio::spawn(async move {
        if let Err(e) = smart.sync(&patient, &connection).await {
            tracing::warn!(error = %e, "fetching from a provider");
        }
    });
}

async fn callback(
    State(s): State<AppState>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let me = match super::getting_paid::returning(
        &s,
        &h,
        &q,
        "/me/providers/callback",
        "Back from your provider",
    )
    .await
    {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(svc) = s.patients.as_ref() else {
        return Refusal::Unavailable.page();
    };
    if let Some(error) = q.get("error") {
        // `access_denied` is the patient saying no at the provider: no error on our side.
        let text = if error == "access_denied" {
            "You did not allow access at the provider, so nothing was connected."
        } else {
            "The provider could not complete the connection. Try again later."
        };
        return message_page(StatusCode::OK, "Connect a provider", text);
    }
    let (Some(state), Some(code)) = (q.get("state"), q.get("code")) else {
        return message_page(
            StatusCode::BAD_REQUEST,
            "Connect a provider",
            "The provider sent you back without an authorization. Connect again from your Providers page.",
        );
    };
    match svc.records.smart.complete(me.patient(), state, code).await {
        Ok(c) => {
            sync_later(&s, me.patient(), &c.id);
            Redirect::to("/me/providers#connected").into_response()
        }
        Err(RecordsError::Invalid(why)) => {
            message_page(StatusCode::BAD_REQUEST, "Connect a provider", &why)
        }
        Err(e) => {
            tracing::warn!(error = %e, "completing a provider connection");
            message_page(
                StatusCode::BAD_GATEWAY,
                "Connect a provider",
                "The provider's system did not complete the connection. Try again later; nothing was stored.",
            )
        }
    }
}

async fn sync(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (me, _, svc) = match acting(&s, &h, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match svc.records.smart.connections(me.patient()).await {
        Ok(list) if list.iter().any(|c| c.id == id && c.state == "connected") => {
            sync_later(&s, me.patient(), &id);
            Redirect::to("/me/providers#connected").into_response()
        }
        Ok(_) => message_page(
            StatusCode::NOT_FOUND,
            "Providers",
            "No such connected provider.",
        ),
        Err(_) => Refusal::Unavailable.page(),
    }
}

async fn disconnect(
    State(s): State<AppState>,
    h: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let (me, _, svc) = match acting(&s, &h, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match svc.records.smart.disconnect(me.patient(), &id).await {
        Ok(_) => Redirect::to("/me/providers#connected").into_response(),
        Err(RecordsError::NotFound(_)) => message_page(
            StatusCode::NOT_FOUND,
            "Providers",
            "No such connected provider.",
        ),
        Err(e) => {
            tracing::error!(error = %e, "disconnecting a provider");
            Refusal::Unavailable.page()
        }
    }
}

fn hook_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"error": code, "message": message})),
    )
        .into_response()
}

async fn identity_hook(s: AppState, h: HeaderMap, body: Bytes, provider: &str) -> Response {
    let Some(identity) = s
        .patients
        .as_ref()
        .and_then(|svc| svc.records.identity.as_ref())
        .filter(|i| i.provider().code() == provider)
    else {
        return hook_error(
            StatusCode::NOT_FOUND,
            "not_configured",
            "this identity provider is not configured on this server",
        );
    };
    let signature = h
        .get(identity.provider().signature_header())
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match identity
        .handle_webhook(signature, &body, Utc::now().timestamp())
        .await
    {
        Ok(out) => {
            s.metrics.decision("webhook_identity");
            axum::Json(serde_json::json!({"event": out.event_id, "result": out.result}))
                .into_response()
        }
        Err(RecordsError::Webhook(why)) => {
            s.metrics.decision("webhook_refused");
            hook_error(StatusCode::BAD_REQUEST, "webhook_refused", &why)
        }
        Err(e) => {
            tracing::error!(error = %e, "identity webhook handling failed");
            hook_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "retry",
                "could not handle the event now; the provider will retry",
            )
        }
    }
}

async fn persona_hook(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    identity_hook(s, h, body, "persona").await
}

async fn stripe_identity_hook(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    identity_hook(s, h, body, "stripe_identity").await
}
