//! The patients' web application: sign-in, the account, "my data", the consent centre and
//! the download of everything Tessera holds. Server-rendered HTML with plain forms (no
//! script), like the consoles; the earnings page (`patients.rs`) shares its layout and its
//! sign-in.
//!
//! - `GET /me/sign-in`: the e-mail form; `POST /me/sign-in/email` sends a single-use link
//!   (answered alike whether or not an account has the address, and sent in the background so
//!   the answer takes as long either way).
//! - `GET /me/sign-in?token=…`: an e-mailed or invitation link shows a button that signs in
//!   (`POST /me/sign-in`): mail scanners that fetch links do not use them up. The operator's
//!   older patient link (an API key of the patient) signs in at once, as before.
//! - Every other page needs the session cookie (`tessera_session`, HttpOnly, SameSite=Strict);
//!   forms carry a CSRF token bound to the session. A session acts for one patient of its
//!   account; a caregiver switches between the patients they act for on the account page.
//!   No session: 401 and the sign-in form. A bearer key of another role: 403.

// Handler helpers answer their refusal as the `Response` itself, as axum handlers do.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use tessera_catalog::access::OwnData;
use tessera_catalog::accounts::{
    Account, EMAIL_LINK_LIFETIME, EmailLink, Relation, Session, SignInMethod,
};
use tessera_catalog::consent::{ConsentState, describe_purpose};
use tessera_catalog::model::{Clinical, SensitiveCategory, Value};
use tessera_catalog::{Grant, Purpose, Scope};
use tessera_licensing::decision::Principal;

use super::AppState;
use super::web::{STYLE, esc};

/// The session cookie of the patients' pages.
pub const SESSION_COOKIE: &str = "tessera_session";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/me/sign-in", get(sign_in_page).post(sign_in_with_link))
        .route("/me/sign-in/email", post(send_link))
        .route("/me/sign-out", post(sign_out))
        .route("/me/account", get(account_page))
        .route("/me/account/sessions", post(revoke_session))
        .route("/me/account/act-for", post(act_for))
        .route("/me/account/email", post(set_email))
        .route("/me/data", get(data_page))
        .route("/me/consent", get(consent_page).post(set_consent))
        .route("/me/download", get(download_page))
        .route("/me/download/bundle.json", get(download_bundle))
        .route("/me/download/summary.html", get(download_summary))
}

// ---------------------------------------------------------------------------------------
// Layout

const ME_STYLE: &str = ".acting{background:#eef5ff;border-bottom:1px solid #9cc1f0;padding:.4rem 1rem}\
.plot{max-width:420px}fieldset{border:1px solid #c9ced6;border-radius:6px;margin:.6rem 0}\
.purpose{border:1px solid #c9ced6;border-radius:8px;padding:.6rem 1rem;margin:.8rem 0}\
input,textarea,select{max-width:100%}code.shlink{overflow-wrap:anywhere}\
button.danger{background:#a4161a;border-color:#a4161a}\
ul.choices{list-style:none;padding:0;margin:.2rem 0}ul.choices label{display:flex;gap:.6rem;align-items:center}\
fieldset.options{margin-left:1.6rem}\
@media (max-width:640px){table{table-layout:fixed}td,th{overflow-wrap:anywhere}main{padding:0 .6rem}\
table.stack{table-layout:auto}table.stack thead{position:absolute;left:-10000px}\
table.stack tr,table.stack td{display:block}table.stack tr{border-bottom:1px solid #c9ced6;padding:.4rem 0}\
table.stack td{border:0;padding:.15rem 0;overflow-wrap:normal}\
table.stack td:first-child{font-weight:600}\
table.stack td[data-label]::before{content:attr(data-label) \": \";font-weight:600}}";

/// A patients' page: the shared style, the patients' navigation, sign-out, and, for a
/// caregiver, whom they act for.
pub fn layout(title: &str, me: Option<&Me>, body: &str) -> String {
    let mut h = String::with_capacity(body.len() + 4096);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · Tessera</title><style>{STYLE}{ME_STYLE}</style></head><body><a class=\"skip\" href=\"#main\">Skip to content</a><header><a class=\"brand\" href=\"/me\">Tessera</a>",
        esc(title)
    );
    if let Some(me) = me {
        h.push_str("<nav aria-label=\"Your pages\"><ul>");
        for (href, label) in [
            ("/me", "Earnings"),
            ("/me/data", "My data"),
            ("/me/providers", "Providers"),
            ("/me/surveys", "Surveys"),
            ("/me/consent", "Consent"),
            ("/me/share", "Share"),
            ("/me/download", "Download"),
            ("/me/account", "Account"),
        ] {
            let _ = write!(h, "<li><a href=\"{href}\">{label}</a></li>");
        }
        let _ = write!(
            h,
            "</ul></nav><form class=\"inline\" method=\"post\" action=\"/me/sign-out\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><button class=\"secondary\" type=\"submit\">Sign out</button></form></header>",
            me.csrf
        );
        if me.relation != Relation::Own {
            let _ = write!(
                h,
                "<p class=\"acting\">You are signed in as {} of this patient: everything here is theirs. <a href=\"/me/account\">Switch patient</a></p>",
                esc(me.relation.describe())
            );
        }
    } else {
        h.push_str("</header>");
    }
    let _ = write!(
        h,
        "<main id=\"main\"><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    h
}

pub(crate) fn page(status: StatusCode, html: String) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], Html(html)).into_response()
}

pub(crate) fn message_page(status: StatusCode, title: &str, text: &str) -> Response {
    page(
        status,
        layout(title, None, &format!("<p role=\"alert\">{}</p>", esc(text))),
    )
}

// ---------------------------------------------------------------------------------------
// Who is signed in

/// The signed-in account and the patient its session acts for.
pub struct Me {
    pub session: Session,
    pub account: Account,
    pub relation: Relation,
    /// The CSRF token of this session's forms.
    pub csrf: String,
}

impl std::fmt::Debug for Me {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Me")
            .field("session", &self.session.session_id)
            .field("account", &self.account)
            .field("relation", &self.relation)
            .finish_non_exhaustive()
    }
}

impl Me {
    pub fn patient(&self) -> &str {
        &self.session.patient_id
    }
}

/// Why a page was refused.
#[derive(Debug)]
pub enum Refusal {
    /// No live session.
    SignIn,
    /// A credential of another role (an analyst's or operator's key).
    OtherRole,
    /// The store failed.
    Unavailable,
}

impl Refusal {
    /// As a page: the sign-in form for 401.
    pub fn page(self) -> Response {
        match self {
            Refusal::SignIn => page(
                StatusCode::UNAUTHORIZED,
                layout(
                    "Sign in",
                    None,
                    &sign_in_form(Some("Sign in to see this page."), None),
                ),
            ),
            Refusal::OtherRole => message_page(
                StatusCode::FORBIDDEN,
                "Not for this key",
                "These pages are for patients and their caregivers: analysts and operators use their consoles.",
            ),
            Refusal::Unavailable => message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "Tessera could not open your session just now: try again in a minute.",
            ),
        }
    }
}

pub fn csrf_token(s: &AppState, session_id: &str) -> String {
    super::web::csrf_token(&s.pepper, "me-csrf", session_id)
}

/// The signed-in patient of a page: a live session from the cookie. A bearer key of any
/// other role is refused (403) before the cookie is looked at.
pub async fn me(s: &AppState, h: &HeaderMap) -> Result<Me, Refusal> {
    if let Some(key) = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    {
        let cred = s
            .gate
            .store()
            .credential(key, &s.pepper)
            .await
            .map_err(|_| Refusal::Unavailable)?;
        if let Some(c) = cred
            && !matches!(c.principal, Principal::Patient { .. })
        {
            return Err(Refusal::OtherRole);
        }
    }
    let Some(token) = super::web::cookie(h, SESSION_COOKIE) else {
        return Err(Refusal::SignIn);
    };
    let session = match s.catalog.session(&token).await {
        Ok(Some(v)) => v,
        Ok(None) => return Err(Refusal::SignIn),
        Err(e) => {
            tracing::error!(error = %e, "reading a session");
            return Err(Refusal::Unavailable);
        }
    };
    let account = s.catalog.account(&session.account_id).await.map_err(|e| {
        tracing::error!(error = %e, "opening an account");
        Refusal::Unavailable
    })?;
    let relation = account
        .relation_to(&session.patient_id)
        .ok_or(Refusal::SignIn)?;
    Ok(Me {
        csrf: csrf_token(s, &session.session_id),
        session,
        account,
        relation,
    })
}

/// The signed-in patient of a form post whose CSRF token matches the session.
pub async fn form_me(
    s: &AppState,
    h: &HeaderMap,
    form: &[(String, String)],
) -> Result<Me, Response> {
    let me = me(s, h).await.map_err(Refusal::page)?;
    let sent = form
        .iter()
        .find(|(k, _)| k == "csrf")
        .map(|(_, v)| v.as_str());
    if sent != Some(me.csrf.as_str()) {
        return Err(message_page(
            StatusCode::FORBIDDEN,
            "Reload the page",
            "This form is out of date (or did not come from Tessera): reload the page and try again.",
        ));
    }
    Ok(me)
}

pub(crate) fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim())
}

pub(crate) fn parse_form(body: &Bytes) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// Sign-in

/// The sign-in page's body: the e-mail form and, where the server offers them at this
/// origin (`passkey_origin`), a passkey button the page's script shows.
fn sign_in_form(message: Option<&str>, passkey_origin: Option<&str>) -> String {
    let mut b = String::new();
    if let Some(m) = message {
        let _ = write!(b, "<p class=\"warn\" role=\"alert\">{}</p>", esc(m));
    }
    let _ = write!(
        b,
        "<p>Enter the e-mail address of your Tessera account and we will send you a link that signs you in. The link works once, for {} minutes.</p>\
<form method=\"post\" action=\"/me/sign-in/email\"><label for=\"email\">E-mail address</label><input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"email\" required size=\"36\"> <button type=\"submit\">Send me a sign-in link</button></form>\
<p class=\"muted\">New to Tessera? Accounts are opened by invitation from the study team that enrolled you; a parent, guardian or other caregiver is invited the same way, for the patient they look after.</p>",
        EMAIL_LINK_LIFETIME.num_minutes()
    );
    if let Some(origin) = passkey_origin {
        let _ = write!(
            b,
            "<section id=\"passkeys\" data-origin=\"{}\" aria-labelledby=\"passkey-heading\"><h2 id=\"passkey-heading\">Or use a passkey</h2><p>If you added a passkey on your account page, sign in with your phone's or computer's screen lock.</p><div data-passkey hidden><button type=\"button\" id=\"passkey-sign-in\">Sign in with a passkey</button></div><p id=\"passkey-status\" role=\"status\"></p></section>{}",
            esc(origin),
            super::passkeys::SCRIPT
        );
    }
    b
}

/// The origin passkeys work at, when the server offers them.
fn passkey_origin(s: &AppState) -> Option<String> {
    match s.patients.as_ref().map(|p| p.passkeys.as_ref()) {
        Some(Ok(p)) => Some(p.origin.clone()),
        _ => None,
    }
}

/// The cookie that carries a new session.
/// The `Set-Cookie` value that ends the session cookie in the browser.
pub(crate) fn ended_session_cookie() -> String {
    format!("{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0")
}

pub(crate) fn session_cookie(s: &AppState, token: &str) -> String {
    let secure = if s
        .patients
        .as_ref()
        .is_some_and(|p| p.public_url.starts_with("https://"))
    {
        "; Secure"
    } else {
        ""
    };
    format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{secure}",
        tessera_catalog::accounts::SESSION_LIFETIME.num_seconds()
    )
}

/// A coarse name of the browser for the account's session list ("Chrome on Linux"): family
/// and platform only, not the full user agent.
pub(crate) fn browser_label(h: &HeaderMap) -> String {
    let ua = h
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let browser = if ua.contains("Edg/") {
        "Edge"
    } else if ua.contains("Firefox/") {
        "Firefox"
    } else if ua.contains("Chrome/") || ua.contains("Chromium/") || ua.contains("HeadlessChrome") {
        "Chrome"
    } else if ua.contains("Safari/") {
        "Safari"
    } else {
        "a browser"
    };
    let platform = if ua.contains("Android") {
        "Android"
    } else if ua.contains("iPhone") || ua.contains("iPad") {
        "iOS"
    } else if ua.contains("Windows") {
        "Windows"
    } else if ua.contains("Mac OS") {
        "macOS"
    } else if ua.contains("Linux") {
        "Linux"
    } else {
        return browser.to_string();
    };
    format!("{browser} on {platform}")
}

fn signed_in(s: &AppState, token: &str) -> Response {
    (
        [(header::SET_COOKIE, session_cookie(s, token))],
        Redirect::to("/me"),
    )
        .into_response()
}

fn is_link_token(t: &str) -> bool {
    t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit())
}

async fn sign_in_page(
    State(s): State<AppState>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(token) = q.get("token").map(|t| t.trim()).filter(|t| !t.is_empty()) else {
        return page(
            StatusCode::OK,
            layout(
                "Sign in",
                None,
                &sign_in_form(None, passkey_origin(&s).as_deref()),
            ),
        );
    };
    if is_link_token(token) {
        // A single-use link: confirm with a button, so that a mail scanner's fetch of the
        // link does not use it up.
        let body = format!(
            "<p>Continue to sign in to Tessera on this device.</p><form method=\"post\" action=\"/me/sign-in\"><input type=\"hidden\" name=\"token\" value=\"{}\"><button type=\"submit\">Continue</button></form>",
            esc(token)
        );
        return page(StatusCode::OK, layout("Sign in", None, &body));
    }
    // The operator's patient sign-in link: a patient's API key (`tessera payouts sign-in`).
    let cred = match s.gate.store().credential(token, &s.pepper).await {
        Ok(c) => c,
        Err(_) => return Refusal::Unavailable.page(),
    };
    let patient = match cred {
        Some(c) if c.is_live(Utc::now()) => match c.principal {
            Principal::Patient { patient } => patient,
            _ => return Refusal::OtherRole.page(),
        },
        _ => {
            return page(
                StatusCode::UNAUTHORIZED,
                layout(
                    "Sign in",
                    None,
                    &sign_in_form(
                        Some("This sign-in link has expired or was revoked: ask for a new one."),
                        None,
                    ),
                ),
            );
        }
    };
    let started = async {
        let account = s.catalog.own_account(&patient, "operator-link").await?;
        s.catalog
            .start_session(&account, SignInMethod::OperatorLink, &browser_label(&h))
            .await
    }
    .await;
    match started {
        Ok((token, _)) => signed_in(&s, &token),
        Err(e) => {
            tracing::error!(error = %e, "starting a session");
            Refusal::Unavailable.page()
        }
    }
}

async fn sign_in_with_link(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    let token = field(&form, "token").unwrap_or("");
    let used = if is_link_token(token) {
        s.catalog.redeem_sign_in_link(token).await
    } else {
        Ok(None)
    };
    let (account, method) = match used {
        Ok(Some(v)) => v,
        Ok(None) => {
            return page(
                StatusCode::BAD_REQUEST,
                layout(
                    "Sign in",
                    None,
                    &sign_in_form(
                        Some("This link has expired or was used already: ask for a new one below."),
                        None,
                    ),
                ),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "using a sign-in link");
            return Refusal::Unavailable.page();
        }
    };
    match s
        .catalog
        .start_session(&account, method, &browser_label(&h))
        .await
    {
        Ok((token, _)) => signed_in(&s, &token),
        Err(e) if e.is_user_error() => {
            message_page(StatusCode::FORBIDDEN, "Not yet", &e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, "starting a session");
            Refusal::Unavailable.page()
        }
    }
}

async fn send_link(State(s): State<AppState>, body: Bytes) -> Response {
    let form = parse_form(&body);
    let email = field(&form, "email").unwrap_or("");
    let Some(svc) = s.patients.as_ref() else {
        return message_page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign in",
            "Sign-in by e-mail is not configured on this server.",
        );
    };
    let outcome = match s.catalog.email_sign_in_link(email).await {
        Ok(o) => o,
        Err(e) if e.is_user_error() => {
            return page(
                StatusCode::BAD_REQUEST,
                layout("Sign in", None, &sign_in_form(Some(&e.to_string()), None)),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "making a sign-in link");
            return Refusal::Unavailable.page();
        }
    };
    match outcome {
        EmailLink::Send { account_id, token } => {
            let mailer = svc.mailer.clone();
            let link = format!(
                "{}/me/sign-in?token={token}",
                svc.public_url.trim_end_matches('/')
            );
            let to = tessera_catalog::accounts::normalize_email(email).unwrap_or_default();
            // In the background: the answer takes as long whether or not an account exists.
            tokio::spawn(async move {
                match mailer
                    .send_sign_in_link(&to, &link, EMAIL_LINK_LIFETIME.num_minutes())
                    .await
                {
                    Ok(()) => tracing::info!(account = %account_id, "sign-in link sent"),
                    Err(e) => {
                        tracing::error!(account = %account_id, error = %e, "sign-in link not sent")
                    }
                }
            });
        }
        EmailLink::NoAccount => tracing::info!("sign-in link asked for an unknown address"),
        EmailLink::TooMany => tracing::warn!("sign-in links asked too often for one account"),
    }
    page(
        StatusCode::OK,
        layout(
            "Check your e-mail",
            None,
            &format!(
                "<p role=\"status\">If a Tessera account uses this address, we have sent it a link that signs you in. It works once, for {} minutes.</p><p class=\"muted\">Nothing arrived? Check your spam folder, or <a href=\"/me/sign-in\">ask again</a>.</p>",
                EMAIL_LINK_LIFETIME.num_minutes()
            ),
        ),
    )
}

async fn sign_out(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    let me = match form_me(&s, &h, &form).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if let Err(e) = s
        .catalog
        .revoke_sessions(&me.account.account_id, Some(&me.session.session_id))
        .await
    {
        tracing::error!(error = %e, "ending a session");
        return Refusal::Unavailable.page();
    }
    (
        [(header::SET_COOKIE, ended_session_cookie())],
        Redirect::to("/me/sign-in"),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Account

pub(crate) fn date(t: &str) -> &str {
    &t[..10.min(t.len())]
}

pub(crate) fn minute(t: &str) -> String {
    if t.len() >= 16 {
        format!("{} {} UTC", &t[..10], &t[11..16])
    } else {
        t.to_string()
    }
}

/// The name a caregiver sees for a patient they act for: given and family name.
async fn patient_name(s: &AppState, patient_id: &str) -> String {
    match s.catalog.own_identity(patient_id).await {
        Ok(identity) => {
            let mut n = identity.given_names.join(" ");
            if let Some(f) = &identity.family_name {
                if !n.is_empty() {
                    n.push(' ');
                }
                n.push_str(f);
            }
            if n.is_empty() {
                "(no name on record)".into()
            } else {
                n
            }
        }
        Err(_) => "(unavailable)".into(),
    }
}

async fn account_page(State(s): State<AppState>, h: HeaderMap) -> Response {
    let me = match me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    let sessions = match s.catalog.sessions(&me.account.account_id).await {
        Ok(v) => v,
        Err(_) => return Refusal::Unavailable.page(),
    };
    let passkeys = match s.catalog.passkeys(&me.account.account_id).await {
        Ok(v) => v,
        Err(_) => return Refusal::Unavailable.page(),
    };
    let now = Utc::now();
    let mut b = String::new();
    let _ = write!(
        b,
        "<h2>Sign-in</h2><p>Account opened {}. Sign-in links go to: <b>{}</b>.</p>\
<form method=\"post\" action=\"/me/account/email\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><label for=\"email\">Change the e-mail address</label><input id=\"email\" name=\"email\" type=\"email\" autocomplete=\"email\" required size=\"36\"> <button type=\"submit\">Save</button></form>",
        date(&me.account.created_at),
        esc(me
            .account
            .email
            .as_deref()
            .unwrap_or("no address yet: add one to sign in by e-mail")),
        csrf = me.csrf
    );
    b.push_str("<h2>Passkeys</h2>");
    if passkeys.is_empty() {
        b.push_str("<p>No passkey yet. A passkey signs you in with your phone's or computer's screen lock: no e-mail to wait for, nothing to phish.</p>");
    } else {
        b.push_str("<table><tr><th scope=\"col\">Passkey</th><th scope=\"col\">Added</th><th scope=\"col\">Last used</th><th scope=\"col\"></th></tr>");
        for p in &passkeys {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td><form class=\"inline\" method=\"post\" action=\"/me/passkeys/remove\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"passkey\" value=\"{}\"><button type=\"submit\" class=\"secondary\">Remove</button></form></td></tr>",
                esc(&p.label),
                date(&p.created_at),
                p.last_used_at.as_deref().map(date).unwrap_or("never"),
                me.csrf,
                esc(&p.credential_id)
            );
        }
        b.push_str("</table>");
    }
    match passkey_origin(&s) {
        Some(origin) => {
            let _ = write!(
                b,
                "<section id=\"passkeys\" data-origin=\"{}\"><div data-passkey hidden><button type=\"button\" id=\"passkey-add\" data-csrf=\"{}\">Add a passkey</button></div><p id=\"passkey-status\" role=\"status\"></p></section>{}",
                esc(&origin),
                me.csrf,
                super::passkeys::SCRIPT
            );
        }
        None => b.push_str(
            "<p class=\"muted\">This server does not offer passkeys at this address.</p>",
        ),
    }
    b.push_str("<h2>Whom you act for</h2><table><tr><th scope=\"col\">Patient</th><th scope=\"col\">You are</th><th scope=\"col\">Since</th><th scope=\"col\"></th></tr>");
    for l in &me.account.patients {
        let relation = Relation::parse(&l.relation).unwrap_or(Relation::Other);
        let current = l.patient_id == me.patient();
        let action = if current {
            "<b>shown now</b>".to_string()
        } else {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/me/account/act-for\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"patient\" value=\"{}\"><button type=\"submit\" class=\"secondary\">Show this patient</button></form>",
                me.csrf,
                esc(&l.patient_id)
            )
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
            esc(&patient_name(&s, &l.patient_id).await),
            if relation == Relation::Own {
                "the patient".to_string()
            } else {
                esc(relation.describe())
            },
            date(&l.linked_at)
        );
    }
    b.push_str("</table><h2>Where you are signed in</h2><table><tr><th scope=\"col\">Browser</th><th scope=\"col\">Signed in with</th><th scope=\"col\">Started</th><th scope=\"col\">Last active</th><th scope=\"col\">Status</th><th scope=\"col\"></th></tr>");
    for x in sessions.iter().take(20) {
        let live = tessera_catalog::accounts::session_live(x, now);
        let this = x.session_id == me.session.session_id;
        let status = match (this, live, &x.revoked_at) {
            (true, _, _) => "this browser".to_string(),
            (_, true, _) => "signed in".to_string(),
            (_, false, Some(at)) => format!("signed out {}", date(at)),
            _ => "ended".to_string(),
        };
        let action = if live && !this {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/me/account/sessions\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"session\" value=\"{}\"><button type=\"submit\" class=\"secondary\">Sign out this browser</button></form>",
                me.csrf,
                esc(&x.session_id)
            )
        } else {
            String::new()
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{action}</td></tr>",
            esc(&x.label),
            SignInMethod::parse(&x.method)
                .map(|m| m.describe())
                .unwrap_or("unknown"),
            minute(&x.created_at),
            minute(&x.last_seen_at),
            esc(&status)
        );
    }
    let _ = write!(
        b,
        "</table><form method=\"post\" action=\"/me/account/sessions\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"session\" value=\"all\"><button type=\"submit\">Sign out everywhere</button></form>\
<p class=\"muted\">A session ends {} hours after sign-in or after {} minutes without use.</p>\
<h2>Delete your data</h2><p>You can <a href=\"/me/delete\">delete everything Tessera holds about you</a> at any time: the page says first what is deleted and what the law asks us to keep.</p>",
        me.csrf,
        tessera_catalog::accounts::SESSION_LIFETIME.num_hours(),
        tessera_catalog::accounts::SESSION_IDLE.num_minutes()
    );
    page(StatusCode::OK, layout("Your account", Some(&me), &b))
}

async fn revoke_session(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    let me = match form_me(&s, &h, &form).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let which = field(&form, "session").unwrap_or("");
    let target = if which == "all" { None } else { Some(which) };
    match s
        .catalog
        .revoke_sessions(&me.account.account_id, target)
        .await
    {
        Ok(_) if target.is_none() => (
            [(header::SET_COOKIE, ended_session_cookie())],
            Redirect::to("/me/sign-in"),
        )
            .into_response(),
        Ok(_) => Redirect::to("/me/account").into_response(),
        Err(_) => Refusal::Unavailable.page(),
    }
}

async fn act_for(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    let me = match form_me(&s, &h, &form).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    match s
        .catalog
        .act_for(&me.session, field(&form, "patient").unwrap_or(""))
        .await
    {
        Ok(()) => Redirect::to("/me/data").into_response(),
        Err(e) if e.is_user_error() => {
            message_page(StatusCode::FORBIDDEN, "Not one of yours", &e.to_string())
        }
        Err(_) => Refusal::Unavailable.page(),
    }
}

async fn set_email(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    let me = match form_me(&s, &h, &form).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    match s
        .catalog
        .set_account_email(&me.account.account_id, field(&form, "email").unwrap_or(""))
        .await
    {
        Ok(()) => Redirect::to("/me/account").into_response(),
        Err(e) if e.is_user_error() => {
            message_page(StatusCode::BAD_REQUEST, "E-mail address", &e.to_string())
        }
        Err(_) => Refusal::Unavailable.page(),
    }
}

// ---------------------------------------------------------------------------------------
// My data

fn code_text(c: Option<&tessera_catalog::model::Code>) -> String {
    match c {
        Some(c) => match &c.display {
            Some(d) => format!("{d} ({} {})", short_system(&c.system), c.code),
            None => format!("{} {}", short_system(&c.system), c.code),
        },
        None => "(no code)".into(),
    }
}

/// A code system's usual short name.
fn short_system(system: &str) -> &str {
    match system {
        "http://snomed.info/sct" => "SNOMED CT",
        "http://loinc.org" => "LOINC",
        "http://www.nlm.nih.gov/research/umls/rxnorm" => "RxNorm",
        "http://hl7.org/fhir/sid/icd-10-cm" | "http://hl7.org/fhir/sid/icd-10" => "ICD-10",
        "http://purl.obolibrary.org/obo/hp.owl" | "HP" => "HPO",
        "http://www.ama-assn.org/go/cpt" => "CPT",
        other => other.rsplit('/').next().unwrap_or(other),
    }
}

fn value_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::Quantity { value, unit }) => {
            format!("{value} {}", unit.as_deref().unwrap_or(""))
                .trim()
                .to_string()
        }
        Some(Value::Coded { code }) => code.display.clone().unwrap_or_else(|| code.code.clone()),
        Some(Value::Text { text }) => text.clone(),
        Some(Value::Boolean { value }) => if *value { "yes" } else { "no" }.into(),
        Some(Value::Integer { value }) => value.to_string(),
        Some(Value::Date { date }) => date.clone(),
        None => String::new(),
    }
}

fn from_text(r: &tessera_catalog::access::OwnRecord) -> String {
    format!(
        "{} · {}",
        esc(r.source.as_deref().unwrap_or("earlier import")),
        date(&r.received_at)
    )
}

/// A measurement over time as a small inline SVG (dates along, values up), with the values
/// also in a table for screen readers.
fn plot(title: &str, points: &[(String, f64)], unit: &str) -> String {
    let (w, h, pad) = (420.0f64, 140.0f64, 30.0f64);
    let min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let max = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let span = if (max - min).abs() < f64::EPSILON {
        1.0
    } else {
        max - min
    };
    let n = (points.len().max(2) - 1) as f64;
    let mut pts = String::new();
    let mut dots = String::new();
    for (i, (_, v)) in points.iter().enumerate() {
        let x = pad + (w - 2.0 * pad) * (i as f64 / n);
        let y = h - pad - (h - 2.0 * pad) * ((v - min) / span);
        let _ = write!(pts, "{x:.1},{y:.1} ");
        let _ = write!(
            dots,
            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"#1b6ac9\"/>"
        );
    }
    format!(
        "<figure class=\"plot\"><svg role=\"img\" aria-label=\"{t} over time\" viewBox=\"0 0 {w} {h}\" width=\"100%\"><polyline fill=\"none\" stroke=\"#1b6ac9\" stroke-width=\"2\" points=\"{pts}\"/>{dots}\
<text x=\"{pad}\" y=\"{ty}\" font-size=\"11\">{first}</text><text x=\"{x1}\" y=\"{ty}\" font-size=\"11\" text-anchor=\"end\">{last}</text>\
<text x=\"2\" y=\"{ymax}\" font-size=\"11\">{max:.1}</text><text x=\"2\" y=\"{ymin}\" font-size=\"11\">{min:.1}</text></svg><figcaption>{t} ({u}), {n} measurements</figcaption></figure>",
        t = esc(title),
        u = esc(unit),
        first = esc(date(&points[0].0)),
        last = esc(date(&points[points.len() - 1].0)),
        ty = h - 8.0,
        x1 = w - pad,
        ymax = pad,
        ymin = h - pad,
        n = points.len(),
    )
}

/// The readable view of everything held about a patient (the page's body; the downloadable
/// summary shows the identity open).
fn render_data(d: &OwnData, identity_open: bool) -> String {
    let mut b = String::new();
    // Sources.
    let mut sources: BTreeMap<String, (usize, String, String)> = BTreeMap::new();
    for r in &d.records {
        let e = sources
            .entry(r.source.clone().unwrap_or_else(|| "earlier import".into()))
            .or_insert((0, r.received_at.clone(), r.received_at.clone()));
        e.0 += 1;
        if r.received_at < e.1 {
            e.1 = r.received_at.clone();
        }
        if r.received_at > e.2 {
            e.2 = r.received_at.clone();
        }
    }
    b.push_str("<h2 id=\"sources\">Where your data came from</h2>");
    if sources.is_empty() {
        b.push_str("<p>Tessera holds no records for you yet.</p>");
    } else {
        b.push_str("<table><tr><th scope=\"col\">Source</th><th scope=\"col\">Records</th><th scope=\"col\">First arrived</th><th scope=\"col\">Last arrived</th></tr>");
        for (src, (n, first, last)) in &sources {
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{n}</td><td>{}</td><td>{}</td></tr>",
                esc(src),
                date(first),
                date(last)
            );
        }
        b.push_str("</table>");
    }
    let _ = write!(
        b,
        "<details{}><summary>Identity Tessera holds (names, birth date, address, identifiers)</summary><ul>",
        if identity_open { " open" } else { "" }
    );
    let id = &d.identity;
    let name = {
        let mut n = id.given_names.join(" ");
        if let Some(f) = &id.family_name {
            n = format!("{n} {f}").trim().to_string();
        }
        n
    };
    for (label, v) in [
        ("Name", Some(name)),
        ("Birth date", id.birth_date.clone()),
        ("Sex", id.sex.clone()),
        (
            "Address",
            id.address.as_ref().map(|a| {
                let mut parts = a.lines.clone();
                parts.extend(
                    [&a.city, &a.state, &a.postal_code, &a.country]
                        .into_iter()
                        .flatten()
                        .cloned(),
                );
                parts.join(", ")
            }),
        ),
    ] {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            let _ = write!(b, "<li>{label}: {}</li>", esc(&v));
        }
    }
    for i in &id.identifiers {
        let _ = write!(
            b,
            "<li>Identifier ({}): {}</li>",
            esc(i.type_code.as_deref().unwrap_or(short_system(&i.system))),
            esc(&i.value)
        );
    }
    b.push_str("</ul><p class=\"muted\">Tessera keeps these sealed (encrypted) and never puts them in a research release.</p></details>");

    let mut conditions = String::new();
    let mut medications = String::new();
    let mut procedures = String::new();
    let mut phenotypes = String::new();
    let mut variants = String::new();
    let mut surveys = String::new();
    let mut series: BTreeMap<String, (String, Vec<(String, f64)>)> = BTreeMap::new();
    let mut other_obs = String::new();
    let mut others: BTreeMap<String, usize> = BTreeMap::new();
    let mut encounters = 0usize;
    for r in &d.records {
        let from = from_text(r);
        match &r.body.clinical {
            Clinical::Condition {
                code,
                onset,
                onset_age,
                clinical_status,
                ..
            } => {
                let _ = write!(
                    conditions,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{from}</td></tr>",
                    esc(&code_text(code.as_ref())),
                    esc(onset
                        .as_deref()
                        .map(date)
                        .or(onset_age.as_deref())
                        .unwrap_or("")),
                    esc(clinical_status.as_deref().unwrap_or(""))
                );
            }
            Clinical::Medication {
                code,
                status,
                authored,
            } => {
                let _ = write!(
                    medications,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{from}</td></tr>",
                    esc(&code_text(code.as_ref())),
                    esc(authored.as_deref().map(date).unwrap_or("")),
                    esc(status.as_deref().unwrap_or(""))
                );
            }
            Clinical::Procedure { code, performed } => {
                let _ = write!(
                    procedures,
                    "<tr><td>{}</td><td>{}</td><td>{from}</td></tr>",
                    esc(&code_text(code.as_ref())),
                    esc(performed.as_deref().map(date).unwrap_or(""))
                );
            }
            Clinical::Observation {
                code,
                value,
                effective,
                ..
            } => match (value, effective) {
                (Some(Value::Quantity { value, unit }), Some(at)) => {
                    let key = code_text(code.as_ref());
                    series
                        .entry(key)
                        .or_insert_with(|| (unit.clone().unwrap_or_default(), Vec::new()))
                        .1
                        .push((at.clone(), *value));
                }
                _ => {
                    let _ = write!(
                        other_obs,
                        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{from}</td></tr>",
                        esc(&code_text(code.as_ref())),
                        esc(&value_text(value.as_ref())),
                        esc(effective.as_deref().map(date).unwrap_or(""))
                    );
                }
            },
            Clinical::Phenotype {
                code,
                excluded,
                onset,
            } => {
                let _ = write!(
                    phenotypes,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{from}</td></tr>",
                    esc(&code_text(Some(code))),
                    if *excluded { "ruled out" } else { "observed" },
                    esc(onset.as_deref().unwrap_or(""))
                );
            }
            Clinical::Variant {
                gene,
                hgvs,
                zygosity,
                interpretation_status,
                ..
            } => {
                let _ = write!(
                    variants,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{from}</td></tr>",
                    esc(gene.as_deref().unwrap_or("")),
                    esc(&hgvs.join(", ")),
                    esc(zygosity.as_deref().unwrap_or("")),
                    esc(interpretation_status.as_deref().unwrap_or(""))
                );
            }
            Clinical::SurveyResponse {
                questionnaire,
                authored,
                answers,
                ..
            } => {
                let _ = write!(
                    surveys,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{from}</td></tr>",
                    esc(questionnaire.as_deref().unwrap_or("(survey)")),
                    esc(authored.as_deref().map(date).unwrap_or("")),
                    answers.len()
                );
            }
            Clinical::Encounter { .. } => encounters += 1,
            Clinical::Other { .. } | Clinical::Reference { .. } => {
                *others.entry(r.body.resource_type.clone()).or_default() += 1;
            }
        }
    }
    let section = |b: &mut String, id: &str, title: &str, head: &[&str], rows: &str| {
        if rows.is_empty() {
            return;
        }
        let _ = write!(b, "<h2 id=\"{id}\">{title}</h2><table><tr>");
        for h in head {
            let _ = write!(b, "<th scope=\"col\">{h}</th>");
        }
        let _ = write!(b, "</tr>{rows}</table>");
    };
    section(
        &mut b,
        "conditions",
        "Conditions",
        &["Condition", "Since", "Status", "From · received"],
        &conditions,
    );
    section(
        &mut b,
        "medications",
        "Medications",
        &["Medication", "Prescribed", "Status", "From · received"],
        &medications,
    );
    if !series.is_empty() {
        b.push_str("<h2 id=\"measurements\">Measurements</h2>");
        let mut rows = String::new();
        for (name, (unit, mut points)) in series {
            points.sort_by(|a, c| a.0.cmp(&c.0));
            if points.len() >= 2 {
                b.push_str(&plot(&name, &points, &unit));
            }
            let last = &points[points.len() - 1];
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td></tr>",
                esc(&name),
                last.1,
                esc(&unit),
                esc(date(&last.0)),
                points.len()
            );
        }
        let _ = write!(
            b,
            "<table><tr><th scope=\"col\">Measurement</th><th scope=\"col\">Latest</th><th scope=\"col\">On</th><th scope=\"col\">Times measured</th></tr>{rows}</table>"
        );
    }
    section(
        &mut b,
        "observations",
        "Other observations",
        &["Observation", "Value", "On", "From · received"],
        &other_obs,
    );
    section(
        &mut b,
        "procedures",
        "Procedures",
        &["Procedure", "On", "From · received"],
        &procedures,
    );
    section(
        &mut b,
        "phenotypes",
        "Phenotypes",
        &["Feature", "", "Onset", "From · received"],
        &phenotypes,
    );
    section(
        &mut b,
        "variants",
        "Genetic variants",
        &[
            "Gene",
            "Variant",
            "Zygosity",
            "Interpretation",
            "From · received",
        ],
        &variants,
    );
    section(
        &mut b,
        "surveys",
        "Surveys you answered",
        &["Survey", "Answered", "Answers", "From · received"],
        &surveys,
    );
    if encounters > 0 || !others.is_empty() {
        b.push_str("<h2 id=\"other\">Other records</h2><ul>");
        if encounters > 0 {
            let _ = write!(b, "<li>{encounters} visits and encounters</li>");
        }
        for (t, n) in others {
            let _ = write!(b, "<li>{n} × {}</li>", esc(&t));
        }
        b.push_str("</ul><p class=\"muted\">The <a href=\"/me/download\">download</a> holds every record in full, as it arrived.</p>");
    }
    b
}

async fn own_data(s: &AppState, me: &Me) -> Result<OwnData, Response> {
    s.catalog.own_data(me.patient()).await.map_err(|e| {
        tracing::error!(error = %e, "reading a patient's own data");
        Refusal::Unavailable.page()
    })
}

async fn data_page(State(s): State<AppState>, h: HeaderMap) -> Response {
    let me = match me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    let d = match own_data(&s, &me).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let body = format!(
        "<p>Everything Tessera holds for you, as it arrived from each source. Research releases never contain your name, contact details or record numbers; see <a href=\"/me/consent\">consent</a> for who may use the rest.</p>{}",
        render_data(&d, false)
    );
    page(StatusCode::OK, layout("My data", Some(&me), &body))
}

// ---------------------------------------------------------------------------------------
// Consent centre

fn category_text(c: SensitiveCategory) -> &'static str {
    match c {
        SensitiveCategory::Hiv => "HIV status and treatment",
        SensitiveCategory::MentalHealth => "Mental health",
        SensitiveCategory::SubstanceUse => "Alcohol and substance use",
        SensitiveCategory::Genetic => "Genetic test results",
    }
}

fn scope_text(scope: &str) -> String {
    match Scope::parse(scope) {
        Ok(Scope::All) => "all of your data".into(),
        Ok(Scope::Excluding(set)) => format!(
            "all but: {}",
            set.iter()
                .map(|c| category_text(*c).to_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Err(_) => scope.to_string(),
    }
}

async fn consent_page(State(s): State<AppState>, h: HeaderMap) -> Response {
    let me = match me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    let history = match s.catalog.consent_history(me.patient()).await {
        Ok(v) => v,
        Err(_) => return Refusal::Unavailable.page(),
    };
    let mut purposes: Vec<String> = tessera_catalog::consent::KNOWN_PURPOSES
        .iter()
        .map(|p| p.to_string())
        .collect();
    for e in &history {
        if !purposes.contains(&e.purpose) {
            purposes.push(e.purpose.clone());
        }
    }
    let now = Utc::now();
    let mut b = String::from(
        "<p class=\"note\" role=\"note\">A change here takes effect at the next query: analysts' queries check your consent every time they run, so stopping removes your data from their results at once, and every later research release leaves it out. Data already handed over in a past result cannot be called back.</p>",
    );
    for purpose in &purposes {
        let Ok(p) = Purpose::parse(purpose) else {
            continue;
        };
        let state = s
            .catalog
            .consent_state(me.patient(), &p, now)
            .await
            .unwrap_or(ConsentState::NotGiven);
        let (title, text) = describe_purpose(purpose);
        let (status, current_scope) = match &state {
            ConsentState::Granted { scope, .. } => (
                format!(
                    "<span class=\"ok\">Shared</span>: {}",
                    esc(&scope_text(&scope.to_db()))
                ),
                Some(scope.clone()),
            ),
            ConsentState::Revoked { at } => (format!("Not shared (stopped {})", date(at)), None),
            ConsentState::Expired { valid_until } => {
                (format!("Not shared (ended {})", date(valid_until)), None)
            }
            ConsentState::NotYetValid { valid_from } => {
                (format!("Shared from {}", date(valid_from)), None)
            }
            ConsentState::NotGiven => ("Not shared".to_string(), None),
        };
        let slug = purpose.replace('.', "-");
        let _ = write!(
            b,
            "<section class=\"purpose\" aria-labelledby=\"h-{slug}\"><h2 id=\"h-{slug}\">{}</h2><p>{}</p><p id=\"state-{slug}\">{status}</p>\
<form method=\"post\" action=\"/me/consent\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><input type=\"hidden\" name=\"purpose\" value=\"{}\"><input type=\"hidden\" name=\"action\" value=\"grant\">\
<fieldset><legend>What to share</legend>",
            esc(&title),
            esc(&text),
            esc(purpose),
            csrf = me.csrf
        );
        let excluded: Vec<SensitiveCategory> = match &current_scope {
            Some(Scope::Excluding(set)) => set.iter().copied().collect(),
            _ => Vec::new(),
        };
        let all = matches!(current_scope, None | Some(Scope::All));
        let _ = write!(
            b,
            "<label><input type=\"radio\" name=\"scope\" value=\"all\"{}> All of my data</label><label><input type=\"radio\" name=\"scope\" value=\"exclude\"{}> All but the kinds I tick:</label>",
            if all { " checked" } else { "" },
            if all { "" } else { " checked" }
        );
        for c in SensitiveCategory::ALL {
            let _ = write!(
                b,
                "<label style=\"margin-left:1.6rem\"><input type=\"checkbox\" name=\"exclude\" value=\"{}\"{}> {}</label>",
                c.as_str(),
                if excluded.contains(&c) || current_scope.is_none() {
                    " checked"
                } else {
                    ""
                },
                category_text(c)
            );
        }
        let _ = write!(
            b,
            "</fieldset><button type=\"submit\">{}</button></form>",
            if current_scope.is_some() {
                "Update what I share"
            } else {
                "Share"
            }
        );
        if current_scope.is_some() {
            let _ = write!(
                b,
                "<form method=\"post\" action=\"/me/consent\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><input type=\"hidden\" name=\"purpose\" value=\"{}\"><input type=\"hidden\" name=\"action\" value=\"revoke\"><button type=\"submit\" class=\"secondary\">Stop sharing for {}</button></form>",
                me.csrf,
                esc(purpose),
                esc(&title.to_lowercase())
            );
        }
        b.push_str("</section>");
    }
    b.push_str("<h2 id=\"history\">History</h2><table><tr><th scope=\"col\">When</th><th scope=\"col\">Purpose</th><th scope=\"col\">Change</th><th scope=\"col\">What</th><th scope=\"col\">By</th></tr>");
    for e in history.iter().rev() {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            minute(&e.recorded_at),
            esc(&describe_purpose(&e.purpose).0),
            if e.action == "grant" {
                "shared"
            } else {
                "stopped"
            },
            if e.action == "grant" {
                esc(&scope_text(&e.scope))
            } else {
                String::new()
            },
            esc(match e.actor.as_str() {
                "patient" => "you",
                a if a.starts_with("caregiver") => "your caregiver",
                _ => "the study team",
            })
        );
    }
    b.push_str("</table>");
    page(StatusCode::OK, layout("Your consent", Some(&me), &b))
}

async fn set_consent(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    let me = match form_me(&s, &h, &form).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(purpose) = field(&form, "purpose").and_then(|v| Purpose::parse(v).ok()) else {
        return message_page(StatusCode::BAD_REQUEST, "Consent", "Unknown purpose.");
    };
    // Who changed it: the patient, or a caregiver acting for them (the history says which).
    let actor = if me.relation == Relation::Own {
        "patient".to_string()
    } else {
        format!("caregiver:{}", me.relation.as_str())
    };
    let r = match field(&form, "action") {
        Some("grant") => {
            let scope = if field(&form, "scope") == Some("exclude") {
                let list: Vec<&str> = form
                    .iter()
                    .filter(|(k, _)| k == "exclude")
                    .map(|(_, v)| v.as_str())
                    .collect();
                if list.is_empty() {
                    Ok(Scope::All)
                } else {
                    Scope::parse(&list.join(","))
                }
            } else {
                Ok(Scope::All)
            };
            match scope {
                Ok(scope) => s
                    .catalog
                    .grant(Grant {
                        patient_id: me.patient().to_string(),
                        purpose,
                        scope,
                        valid_from: None,
                        valid_until: None,
                        actor,
                    })
                    .await
                    .map(|_| ()),
                Err(e) => Err(e),
            }
        }
        Some("revoke") => s
            .catalog
            .revoke(me.patient(), &purpose, &actor)
            .await
            .map(|_| ()),
        _ => {
            return message_page(StatusCode::BAD_REQUEST, "Consent", "Share or stop sharing.");
        }
    };
    match r {
        Ok(()) => Redirect::to("/me/consent").into_response(),
        Err(e) if e.is_user_error() => {
            message_page(StatusCode::BAD_REQUEST, "Consent", &e.to_string())
        }
        Err(e) => {
            tracing::error!(error = %e, "changing consent");
            Refusal::Unavailable.page()
        }
    }
}

// ---------------------------------------------------------------------------------------
// Download

async fn download_page(State(s): State<AppState>, h: HeaderMap) -> Response {
    let me = match me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    let body = "<p>Take a copy of everything Tessera holds about you, at any time, free of charge.</p><ul>\
<li><a href=\"/me/download/bundle.json\" download>Everything, as a FHIR R4 Bundle</a> (JSON): every record exactly as it arrived from its source (your survey answers among them), your identity as Tessera holds it, every consent you gave or withdrew as a FHIR Consent, and every share you made and each time it was opened, as FHIR AuditEvents. Apps and doctors' systems that read FHIR can import it.</li>\
<li><a href=\"/me/download/summary.html\" download>A summary to read or print</a> (HTML): the same as <a href=\"/me/data\">My data</a>, with your identity shown.</li></ul>";
    page(
        StatusCode::OK,
        layout("Download your data", Some(&me), body),
    )
}

fn attachment(content_type: &str, name: &str, body: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        body,
    )
        .into_response()
}

async fn download_bundle(State(s): State<AppState>, h: HeaderMap) -> Response {
    let me = match me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    let d = match own_data(&s, &me).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let now = Utc::now();
    let shares = match s.catalog.shares(me.patient()).await {
        Ok(v) => v,
        Err(_) => return Refusal::Unavailable.page(),
    };
    match tessera_catalog::access::fhir_bundle(&d, share_events(me.patient(), &shares), now) {
        Ok(bundle) => {
            tracing::info!(session = %me.session.session_id, "patient downloaded their bundle");
            attachment(
                "application/fhir+json",
                &format!("tessera-export-{}.json", now.format("%Y-%m-%d")),
                serde_json::to_vec_pretty(&bundle).unwrap_or_default(),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "building an export bundle");
            Refusal::Unavailable.page()
        }
    }
}

/// The patient's shares and every use of them, as FHIR AuditEvents (DICOM "Export" for making a
/// share, "Query" for a viewer's use), for the download.
fn share_events(
    patient_id: &str,
    shares: &[tessera_catalog::sharing::Share],
) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for sh in shares {
        let entity = serde_json::json!([{
            "what": {"reference": format!("Patient/{patient_id}")},
            "name": sh.label,
            "description": sh.contents.describe(),
        }]);
        out.push(serde_json::json!({
            "resourceType": "AuditEvent",
            "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110106", "display": "Export"},
            "action": "C",
            "recorded": sh.created_at,
            "outcome": "0",
            "agent": [{"requestor": true, "who": {"reference": format!("Patient/{patient_id}")}}],
            "source": {"observer": {"display": "Tessera"}},
            "entity": entity,
            "period": {"start": sh.created_at, "end": sh.revoked_at.clone().unwrap_or_else(|| sh.expires_at.clone())},
        }));
        for v in &sh.views {
            out.push(serde_json::json!({
                "resourceType": "AuditEvent",
                "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110112", "display": "Query"},
                "subtype": [{"system": "urn:tessera:share-use", "code": v.what}],
                "action": "R",
                "recorded": v.at,
                "outcome": if v.outcome == "ok" { "0" } else { "4" },
                "outcomeDesc": v.outcome,
                "agent": [{"requestor": true, "name": v.recipient}],
                "source": {"observer": {"display": "Tessera"}},
                "entity": entity,
            }));
        }
    }
    out
}

async fn download_summary(State(s): State<AppState>, h: HeaderMap) -> Response {
    let me = match me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    let d = match own_data(&s, &me).await {
        Ok(d) => d,
        Err(r) => return r,
    };
    let now = Utc::now();
    let body = format!(
        "<p>Everything Tessera held about you on {}.</p>{}",
        now.format("%Y-%m-%d"),
        render_data(&d, true)
    );
    attachment(
        "text/html; charset=utf-8",
        &format!("tessera-summary-{}.html", now.format("%Y-%m-%d")),
        layout("Your data at Tessera", None, &body).into_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn browsers_are_named_coarsely() {
        let mut h = HeaderMap::new();
        h.insert(
            header::USER_AGENT,
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/156.0.0.0 Safari/537.36"
                .parse()
                .expect("header"),
        );
        assert_eq!(browser_label(&h), "Chrome on Linux");
        assert_eq!(browser_label(&HeaderMap::new()), "a browser");
    }

    #[test]
    fn only_hex_tokens_of_64_are_links() {
        assert!(is_link_token(&"a".repeat(64)));
        assert!(!is_link_token(&"a".repeat(63)));
        assert!(!is_link_token("tsk_live_abc"));
    }

    #[test]
    fn a_plot_shows_first_and_last_dates() {
        let svg = plot(
            "Body weight",
            &[("2020-01-01".into(), 70.0), ("2021-06-01".into(), 72.5)],
            "kg",
        );
        assert!(svg.contains("2020-01-01") && svg.contains("2021-06-01"));
        assert!(svg.contains("aria-label=\"Body weight over time\""));
    }
}
