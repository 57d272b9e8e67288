//! The web consoles, server-rendered like the patients' earnings page (plain HTML forms, no
//! JavaScript build step):
//!
//! - `/`: the start page, linking the two consoles and the patients' sign-in.
//! - `/sign-in`: an analyst or operator signs in with their API key; it is kept in an
//!   HttpOnly, SameSite=Strict cookie and sent on as the request's bearer key, so every page
//!   goes through the same [`Caller`] (rate limit) and the same audited decision as the JSON
//!   API. Patients' keys are refused here (their pages are at `/me`).
//! - `/analyst/...`: the catalog (releases, tables, data dictionary, what de-identification
//!   did), the license's signed terms and their verification, usage and remaining quota and
//!   privacy budget, saved cohorts with their sizes (counted under the license's output
//!   rules), the organization's own keys, and connection snippets.
//! - `/operator/...`: patients and consent counts, the quarantine, releases (build, retire),
//!   organizations and licenses (create, sign and countersign, activate, suspend), the audit
//!   log and its chain, payouts and reconciliation.
//!
//! Every page and action calls the JSON API's own handler (`catalog::list_releases`,
//! `admin::set_license_status`, ...), so a console action is the very audited call the HTTP
//! API makes; the pages only render what those return. Forms carry a CSRF token bound to the
//! signed-in key.

// Handler helpers answer their refusal as the `Response` itself, as axum handlers do.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use axum::Router;
use axum::extract::{Form, Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use tessera_licensing::decision::{Principal, Reason};
use tessera_licensing::{License, LicenseStatus};

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use super::ops::{JsonBody, PathParams, QueryParams};
use super::web::{cookie, esc};
use super::{admin, catalog, cohorts, keys, licenses, operations};

const COOKIE: &str = "tessera_console";

pub fn routes(state: AppState) -> Router<AppState> {
    let signed_in = Router::new()
        .route("/analyst", get(analyst_home))
        .route("/analyst/releases/{family}/{version}", get(analyst_release))
        .route("/analyst/licenses/{id}", get(analyst_license))
        .route("/analyst/cohorts", get(analyst_cohorts))
        .route("/analyst/keys", get(analyst_keys).post(analyst_issue_key))
        .route("/analyst/keys/{id}/revoke", post(analyst_revoke_key))
        .route("/operator", get(operator_home))
        .route("/operator/quarantine", get(operator_quarantine))
        .route(
            "/operator/releases",
            get(operator_releases).post(operator_build),
        )
        .route(
            "/operator/releases/{family}/{version}/retire",
            post(operator_retire),
        )
        .route(
            "/operator/licenses",
            get(operator_licenses).post(operator_create_license),
        )
        .route("/operator/organizations", post(operator_add_org))
        .route("/operator/licenses/{id}", get(operator_license))
        .route("/operator/licenses/{id}/signature", post(operator_sign))
        .route("/operator/licenses/{id}/status", post(operator_status))
        .route("/operator/audit", get(operator_audit))
        .route("/operator/payouts", get(operator_payouts))
        .route("/operator/payouts/reconcile", post(operator_reconcile))
        .route("/sign-out", post(sign_out))
        .route_layer(middleware::from_fn_with_state(state, cookie_as_bearer));
    Router::new()
        .route("/", get(landing))
        .route("/sign-in", get(sign_in_page).post(sign_in))
        .merge(signed_in)
}

/// The console's cookie, when the request carries no `Authorization` of its own, becomes the
/// request's bearer key: the pages are then authenticated, rate limited and decided exactly
/// as the JSON API is.
async fn cookie_as_bearer(mut request: Request, next: Next) -> Response {
    if !request.headers().contains_key(header::AUTHORIZATION)
        && let Some(key) = cookie(request.headers(), COOKIE)
        && let Ok(v) = HeaderValue::from_str(&format!("Bearer {key}"))
    {
        request.headers_mut().insert(header::AUTHORIZATION, v);
    }
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Path segments in links: ids are `[a-z0-9._-]`, but escape anyway.
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Console {
    Analyst,
    Operator,
    None,
}

fn layout(title: &str, console: Console, csrf: Option<&str>, body: &str) -> String {
    let mut h = String::with_capacity(body.len() + 4096);
    let _ = write!(
        h,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{} · Tessera</title><style>{}</style></head><body><a class=\"skip\" href=\"#main\">Skip to content</a><header><a class=\"brand\" href=\"/\">Tessera</a>",
        esc(title),
        super::web::STYLE
    );
    let links: &[(&str, &str)] = match console {
        Console::Analyst => &[
            ("/analyst", "Catalog & licenses"),
            ("/analyst/cohorts", "Cohorts"),
            ("/analyst/keys", "API keys"),
        ],
        Console::Operator => &[
            ("/operator", "Overview"),
            ("/operator/quarantine", "Quarantine"),
            ("/operator/releases", "Releases"),
            ("/operator/licenses", "Organizations & licenses"),
            ("/operator/audit", "Audit log"),
            ("/operator/payouts", "Payouts"),
        ],
        Console::None => &[
            ("/analyst", "Analyst console"),
            ("/operator", "Operator console"),
            ("/me", "Patients"),
        ],
    };
    h.push_str("<nav aria-label=\"Console\"><ul>");
    for (href, label) in links {
        let _ = write!(h, "<li><a href=\"{href}\">{label}</a></li>");
    }
    h.push_str("</ul></nav>");
    if let Some(token) = csrf {
        let _ = write!(
            h,
            "<form class=\"inline\" method=\"post\" action=\"/sign-out\"><input type=\"hidden\" name=\"csrf\" value=\"{token}\"><button class=\"secondary\" type=\"submit\">Sign out</button></form>"
        );
    }
    let _ = write!(
        h,
        "</header><main id=\"main\"><h1>{}</h1>{body}</main></body></html>",
        esc(title)
    );
    h
}

fn html(status: StatusCode, page: String) -> Response {
    (status, Html(page)).into_response()
}

/// The sign-in form, optionally with a message (why the page asked again).
fn sign_in_form(message: Option<&str>, next: &str) -> String {
    let mut b = String::new();
    if let Some(m) = message {
        let _ = write!(b, "<p class=\"warn\" role=\"alert\">{}</p>", esc(m));
    }
    let _ = write!(
        b,
        "<p>Analysts sign in with an API key of their organization; operators with an operator key. Patients sign in with the link Tessera sent them (<a href=\"/me\">your earnings</a>).</p>\
<form method=\"post\" action=\"/sign-in\"><input type=\"hidden\" name=\"next\" value=\"{}\"><label for=\"key\">API key</label><input id=\"key\" name=\"key\" type=\"password\" autocomplete=\"current-password\" size=\"60\" required> <button type=\"submit\">Sign in</button></form>\
<p class=\"muted\">The key is kept in a cookie only this site can read, for 8 hours or until you sign out.</p>",
        esc(next)
    );
    layout("Sign in", Console::None, None, &b)
}

/// An API error as a page: 401 asks to sign in, the rest say what the API said.
fn error_page(e: ApiError, console: Console, next: &str) -> Response {
    if e.status == StatusCode::UNAUTHORIZED {
        return html(
            StatusCode::UNAUTHORIZED,
            sign_in_form(Some(&e.message), next),
        );
    }
    let body = format!(
        "<p class=\"warn\" role=\"alert\">{} <span class=\"muted\">({})</span></p><p><a href=\"/sign-in?next={}\">Sign in with another key</a> · <a href=\"/\">Start page</a></p>",
        esc(&e.message),
        esc(&e.code),
        seg(next)
    );
    let title = match e.status {
        StatusCode::FORBIDDEN => "Not for this key",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::TOO_MANY_REQUESTS => "Slow down",
        _ => "Could not do that",
    };
    let mut r = html(e.status, layout(title, console, None, &body));
    if let Some(s) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

fn csrf_token(s: &AppState, key_id: &str) -> String {
    super::web::csrf_token(&s.pepper, "console-csrf", key_id)
}

/// The signed-in caller of a console page: a live credential of the console's role. No
/// credential (or an expired or revoked one) asks to sign in; another role is refused.
fn signed_in(
    s: &AppState,
    caller: &Caller,
    console: Console,
    next: &str,
) -> Result<String, Response> {
    let Some(c) = caller.credential.as_ref() else {
        return Err(error_page(
            ApiError::denied(Reason::NoCredential, None),
            console,
            next,
        ));
    };
    if !c.is_live(Utc::now()) {
        return Err(html(
            StatusCode::UNAUTHORIZED,
            sign_in_form(
                Some("this key was revoked or has expired: sign in with another"),
                next,
            ),
        ));
    }
    let refuse = |m: &str| {
        Err(error_page(
            ApiError::new(StatusCode::FORBIDDEN, "wrong_console", m),
            console,
            next,
        ))
    };
    match (&c.principal, console) {
        (Principal::Analyst { .. }, Console::Analyst) | (Principal::Admin, Console::Operator) => {
            Ok(csrf_token(s, &c.id))
        }
        (Principal::Analyst { .. }, _) => {
            refuse("this is the operator console: analysts' pages are at /analyst")
        }
        (Principal::Admin, _) => {
            refuse("this is the analyst console: operators' pages are at /operator")
        }
        (Principal::Patient { .. }, _) => {
            refuse("a patient's sign-in reaches only their own pages, at /me")
        }
    }
}

/// A form post's CSRF token must be the signed-in key's.
fn check_csrf(token: &str, form: &HashMap<String, String>) -> Result<(), Response> {
    if form.get("csrf").map(String::as_str) == Some(token) {
        Ok(())
    } else {
        Err(error_page(
            ApiError::new(
                StatusCode::FORBIDDEN,
                "csrf",
                "the form is stale: reload the page and try again",
            ),
            Console::None,
            "/",
        ))
    }
}

/// The signed-in caller of a form post ([`signed_in`]) whose CSRF token is their key's.
fn signed_in_form(
    s: &AppState,
    caller: &Caller,
    console: Console,
    next: &str,
    form: &HashMap<String, String>,
) -> Result<String, Response> {
    let token = signed_in(s, caller, console, next)?;
    check_csrf(&token, form)?;
    Ok(token)
}

/// The value, or return the refusal page.
macro_rules! or_return {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

/// Unwraps a handler's answer, or answers its refusal as a page.
macro_rules! call {
    ($e:expr, $console:expr, $next:expr) => {
        match $e.await {
            Ok(v) => v,
            Err(e) => return error_page(e, $console, $next),
        }
    };
}

fn hidden_csrf(token: &str) -> String {
    format!("<input type=\"hidden\" name=\"csrf\" value=\"{token}\">")
}

// ---------------------------------------------------------------------------------------
// Start page and sign-in

async fn landing() -> Response {
    let body = "<p>Tessera de-identifies the health summaries patients consent to share, publishes research releases, lets licensed analysts query them, and pays patients their share.</p>\
<div class=\"cards\">\
<div class=\"card\"><h2><a href=\"/analyst\">Analyst console</a></h2><p>The catalog of releases and their data dictionary, your license's signed terms, usage and privacy budget, saved cohorts, your organization's API keys, and how to connect over Flight SQL.</p></div>\
<div class=\"card\"><h2><a href=\"/operator\">Operator console</a></h2><p>Patients and consents (counts only), the quarantine, releases, organizations and licenses, the audit log and payouts.</p></div>\
<div class=\"card\"><h2><a href=\"/me\">Patients</a></h2><p>Your earnings, how you are paid and what you share: sign in with the link Tessera sent you.</p></div>\
</div><h2>For developers</h2><ul><li><a href=\"/openapi.json\">The HTTP API's OpenAPI document</a></li><li><a href=\"/healthz\">Health</a> and <a href=\"/metrics\">metrics</a></li></ul>";
    html(StatusCode::OK, layout("Tessera", Console::None, None, body))
}

async fn sign_in_page(Query(q): Query<HashMap<String, String>>) -> Response {
    let next = q.get("next").map(String::as_str).unwrap_or("/");
    html(StatusCode::OK, sign_in_form(None, next))
}

/// Only local console paths are followed after sign-in.
fn safe_next(next: Option<&String>, fallback: &str) -> String {
    match next {
        Some(n)
            if (n.starts_with("/analyst") || n.starts_with("/operator"))
                && !n.contains("//")
                && !n.contains('\\') =>
        {
            n.clone()
        }
        _ => fallback.to_string(),
    }
}

async fn sign_in(State(s): State<AppState>, Form(f): Form<HashMap<String, String>>) -> Response {
    let key = f
        .get("key")
        .map(|k| k.trim().to_string())
        .unwrap_or_default();
    let next = f.get("next").cloned().unwrap_or_default();
    let credential = match s.gate.credential(Some(&key)).await {
        Ok(c) => c,
        Err(e) => return error_page(e.into(), Console::None, "/"),
    };
    let now = Utc::now();
    let live = credential.filter(|c| c.is_live(now));
    let home = match live.as_ref().map(|c| &c.principal) {
        Some(Principal::Analyst { .. }) => "/analyst",
        Some(Principal::Admin) => "/operator",
        Some(Principal::Patient { .. }) => {
            return html(
                StatusCode::FORBIDDEN,
                sign_in_form(
                    Some(
                        "that is a patient's key: patients' pages are at /me, through the link Tessera sent",
                    ),
                    &next,
                ),
            );
        }
        None => {
            // A failed sign-in is audited like any refused request.
            if let Err(e) = s
                .gate
                .audit_refusal(
                    None,
                    "console_sign_in",
                    "console",
                    Reason::NoCredential,
                    now,
                )
                .await
            {
                return error_page(e.into(), Console::None, "/");
            }
            return html(
                StatusCode::UNAUTHORIZED,
                sign_in_form(
                    Some(
                        "that key is not valid (unknown, expired or revoked): check it and try again",
                    ),
                    &next,
                ),
            );
        }
    };
    let target = match (home, next.as_str()) {
        ("/analyst", n) if n.starts_with("/analyst") => safe_next(Some(&next), home),
        ("/operator", n) if n.starts_with("/operator") => safe_next(Some(&next), home),
        _ => home.to_string(),
    };
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}={key}; HttpOnly; SameSite=Strict; Path=/; Max-Age=28800"),
        )],
        Redirect::to(&target),
    )
        .into_response()
}

async fn sign_out(
    State(s): State<AppState>,
    caller: Caller,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    if let Some(c) = caller.credential.as_ref()
        && let Err(r) = check_csrf(&csrf_token(&s, &c.id), &f)
    {
        return r;
    }
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

// ---------------------------------------------------------------------------------------
// Analyst console

fn status_text(s: LicenseStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn mode_text(l: &License) -> &'static str {
    match (l.mode, l.output.privacy.is_some()) {
        (tessera_licensing::model::AccessMode::RowLevel, _) => "row-level",
        (_, true) => "aggregate-only, differentially private",
        (_, false) => "aggregate-only",
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "<span class=\"ok\">yes</span>"
    } else {
        "<span class=\"bad\">no</span>"
    }
}

async fn analyst_home(State(s): State<AppState>, caller: Caller) -> Response {
    let next = "/analyst";
    let token = or_return!(signed_in(&s, &caller, Console::Analyst, next));
    let org = caller
        .analyst()
        .map(|(o, _)| o.to_string())
        .unwrap_or_default();
    let lics = call!(
        licenses::list_licenses(State(s.clone()), caller.clone()),
        Console::Analyst,
        next
    )
    .0;
    let releases = call!(
        catalog::list_releases(State(s.clone()), caller.clone()),
        Console::Analyst,
        next
    )
    .0;
    let mut b = String::new();
    let _ = write!(
        b,
        "<p>Signed in for <strong>{}</strong>.</p><h2>Your licenses</h2>",
        esc(&org)
    );
    if lics.is_empty() {
        b.push_str("<p>This key is bound to no license.</p>");
    } else {
        b.push_str("<table><caption class=\"muted\">Licenses this key is bound to</caption><thead><tr><th scope=\"col\">License</th><th scope=\"col\">Status</th><th scope=\"col\">Access</th><th scope=\"col\">Purpose</th><th scope=\"col\">Term ends</th><th scope=\"col\">Grants access now</th></tr></thead><tbody>");
        for v in &lics {
            let l = &v.license;
            let _ = write!(
                b,
                "<tr><td><a href=\"/analyst/licenses/{}\">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                seg(&l.id),
                esc(&l.id),
                status_text(l.status),
                mode_text(l),
                esc(&l.purpose),
                l.term_end.format("%Y-%m-%d"),
                yes(v.grants_now)
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str("<h2>Catalog</h2>");
    if releases.is_empty() {
        b.push_str("<p>No release your licenses cover is published yet.</p>");
    } else {
        b.push_str("<table><thead><tr><th scope=\"col\">Release</th><th scope=\"col\">Purpose</th><th scope=\"col\">Persons</th><th scope=\"col\">Tables</th><th scope=\"col\">Built</th><th scope=\"col\">Your licenses</th></tr></thead><tbody>");
        for r in &releases {
            let _ = write!(
                b,
                "<tr><td><a href=\"/analyst/releases/{}/{}\">{} v{}</a>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                seg(&r.family),
                r.version,
                esc(&r.family),
                r.version,
                if r.latest { " (latest)" } else { "" },
                esc(&r.purpose),
                r.patients,
                r.tables.len(),
                esc(&r.built_at[..10.min(r.built_at.len())]),
                esc(&r.licenses.join(", "))
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str(&connect_snippets(
        &s,
        &lics
            .iter()
            .map(|v| v.license.id.clone())
            .collect::<Vec<_>>(),
        releases.first().map(|r| r.family.as_str()),
    ));
    html(
        StatusCode::OK,
        layout("Analyst console", Console::Analyst, Some(&token), &b),
    )
}

fn connect_snippets(s: &AppState, licenses: &[String], family: Option<&str>) -> String {
    let flight = s
        .operations
        .get()
        .map(|o| o.flight_sql.clone())
        .unwrap_or_else(|| "grpc://127.0.0.1:50051".into());
    let hostport = flight
        .trim_start_matches("grpc+tls://")
        .trim_start_matches("grpc://")
        .to_string();
    let tls = flight.starts_with("grpc+tls://");
    let schema = family
        .unwrap_or("demo-natural-history")
        .replace(['-', '.'], "_");
    let license = licenses
        .first()
        .map(String::as_str)
        .unwrap_or("your-license");
    let mut b = String::new();
    let _ = write!(
        b,
        "<h2 id=\"connect\">Connect</h2><p>Flight SQL at <code>{}</code>. Use the API key you signed in with (or one from <a href=\"/analyst/keys\">API keys</a>); a key bound to several licenses picks one with the header <code>x-tessera-license</code>.</p>",
        esc(&flight)
    );
    let py = format!(
        "import adbc_driver_flightsql.dbapi as fs\n\nconn = fs.connect(\"{flight}\", db_kwargs={{\n    \"adbc.flight.sql.authorization_header\": \"Bearer \" + API_KEY,\n    \"adbc.flight.sql.rpc.call_header.x-tessera-license\": \"{license}\",\n}})\ncur = conn.cursor()\ncur.execute(\"SELECT gender_source_value, count(*) AS persons FROM {schema}.person GROUP BY 1\")\nprint(cur.fetch_arrow_table())"
    );
    let pandas = format!(
        "import pandas as pd\ndf = pd.read_sql(\"SELECT year_of_birth, count(*) AS persons FROM {schema}.person GROUP BY 1\", conn)"
    );
    let polars = format!(
        "import polars as pl\ndf = pl.read_database(\"SELECT year_of_birth, count(*) AS persons FROM {schema}.person GROUP BY 1\", conn)"
    );
    let jdbc = format!(
        "URL:      jdbc:arrow-flight-sql://{hostport}/?useEncryption={tls}\nDriver:   Arrow Flight SQL JDBC driver (DBeaver: Database → New connection → Arrow Flight SQL)\nProperty: token = <your API key>"
    );
    for (id, title, code) in [
        (
            "snippet-adbc",
            "Python, ADBC (pip install adbc-driver-flightsql pyarrow)",
            py,
        ),
        ("snippet-pandas", "pandas, on the ADBC connection", pandas),
        ("snippet-polars", "polars, on the ADBC connection", polars),
        ("snippet-dbeaver", "DBeaver and other JDBC clients", jdbc),
    ] {
        let _ = write!(
            b,
            "<h3>{title}</h3><pre id=\"{id}\" tabindex=\"0\" aria-label=\"{title}\">{}</pre>",
            esc(&code)
        );
    }
    b
}

async fn analyst_release(
    State(s): State<AppState>,
    caller: Caller,
    Path((family, version)): Path<(String, String)>,
) -> Response {
    let next = format!("/analyst/releases/{}/{}", seg(&family), seg(&version));
    let token = or_return!(signed_in(&s, &caller, Console::Analyst, &next));
    let d = call!(
        catalog::get_release(
            State(s.clone()),
            caller.clone(),
            PathParams((family.clone(), version.clone()))
        ),
        Console::Analyst,
        &next
    )
    .0;
    let dict = call!(
        catalog::get_dictionary(
            State(s.clone()),
            caller.clone(),
            PathParams((family.clone(), version.clone()))
        ),
        Console::Analyst,
        &next
    )
    .0;
    let mut b = String::new();
    let sm = &d.summary;
    let _ = write!(
        b,
        "<div class=\"cards\"><div class=\"card\">Persons<b>{}</b></div><div class=\"card\">Purpose<b>{}</b></div><div class=\"card\">Consent as of<b>{}</b></div><div class=\"card\">Tables<b>{}</b></div></div>",
        sm.patients,
        esc(&sm.purpose),
        esc(&d.consent_snapshot_at[..10.min(d.consent_snapshot_at.len())]),
        dict.len()
    );
    b.push_str("<h2>What de-identification did</h2><table><tbody>");
    let p = &d.person_deid;
    let row = |b: &mut String, k: &str, v: String| {
        let _ = write!(b, "<tr><th scope=\"row\">{k}</th><td>{}</td></tr>", esc(&v));
    };
    row(&mut b, "Person table: k asked", p["k"].to_string());
    row(
        &mut b,
        "Person table: smallest group (k achieved)",
        p["k_achieved"].to_string(),
    );
    row(
        &mut b,
        "Person table: records suppressed",
        p["suppressed_records"].to_string(),
    );
    row(
        &mut b,
        "Person table: generalization levels",
        p["levels"].to_string(),
    );
    if let Some(m) = d.events.get("m") {
        row(
            &mut b,
            "Event tables",
            format!(
                "(k = {}, k^m)-anonymous with m = {}: any person's released attributes plus up to {} of their events are shared by at least {} persons",
                d.events["k"], m, m, d.events["k"]
            ),
        );
    } else if let Some(model) = d.events.get("model") {
        row(
            &mut b,
            "Event tables",
            model.as_str().unwrap_or("").to_string(),
        );
    }
    row(&mut b, "Dates", d.date_handling.clone());
    row(
        &mut b,
        "Birth years pooled",
        d.birth_years_pooled.to_string(),
    );
    let rare: usize = d
        .rare_codes_suppressed
        .values()
        .flat_map(|c| c.values())
        .sum();
    row(&mut b, "Rare codes suppressed", rare.to_string());
    let excluded: usize = d.patients_excluded.values().sum();
    row(
        &mut b,
        "Patients left out (consent scope, no data)",
        excluded.to_string(),
    );
    b.push_str("</tbody></table>");
    if !d.safe_harbor.is_empty() {
        b.push_str("<details><summary>The 18 Safe Harbor identifiers and how each is handled</summary><table><tbody>");
        for i in &d.safe_harbor {
            let _ = write!(
                b,
                "<tr><th scope=\"row\">{}</th><td>{}</td></tr>",
                esc(&i.identifier),
                esc(&i.handling)
            );
        }
        b.push_str("</tbody></table></details>");
    }
    b.push_str("<h2>Data dictionary</h2>");
    for t in &dict {
        let _ = write!(
            b,
            "<h3 id=\"table-{}\">{} <span class=\"muted\">({} rows)</span></h3><table><thead><tr><th scope=\"col\">Column</th><th scope=\"col\">Type</th><th scope=\"col\">Description</th></tr></thead><tbody>",
            seg(&t.name),
            esc(&t.name),
            t.rows
        );
        for c in &t.columns {
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                esc(&c.name),
                esc(&c.r#type),
                esc(&c.description)
            );
        }
        b.push_str("</tbody></table>");
    }
    let title = format!("{} v{}", d.summary.family, d.summary.version);
    html(
        StatusCode::OK,
        layout(&title, Console::Analyst, Some(&token), &b),
    )
}

async fn analyst_license(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let next = format!("/analyst/licenses/{}", seg(&id));
    let token = or_return!(signed_in(&s, &caller, Console::Analyst, &next));
    let signed = call!(
        licenses::get_signatures(State(s.clone()), caller.clone(), PathParams(id.clone())),
        Console::Analyst,
        &next
    )
    .0;
    let usage = call!(
        licenses::get_usage(State(s.clone()), caller.clone(), PathParams(id.clone())),
        Console::Analyst,
        &next
    )
    .0;
    let l = &signed.view.license;
    let mut b = String::new();
    let _ = write!(
        b,
        "<div class=\"cards\"><div class=\"card\">Status<b>{}</b></div><div class=\"card\">Access<b>{}</b></div><div class=\"card\">Term<b>{} – {}</b></div><div class=\"card\">Grants access now<b>{}</b></div></div>",
        status_text(l.status),
        mode_text(l),
        l.term_start.format("%Y-%m-%d"),
        l.term_end.format("%Y-%m-%d"),
        yes(signed.view.grants_now)
    );
    b.push_str("<h2>Signed terms</h2>");
    let _ = write!(
        b,
        "<p id=\"verification\">{} <span class=\"muted\">Terms SHA-256 <code>{}</code></span></p>",
        if signed.valid {
            "<span class=\"ok\">The stored terms are the signed terms; your signature and the platform's countersignature verify.</span>".to_string()
        } else {
            format!(
                "<span class=\"bad\">Not verified: {}</span>",
                esc(signed.problem.as_deref().unwrap_or(""))
            )
        },
        esc(&signed.view.terms_sha256)
    );
    if let Some(sig) = &signed.signatures {
        let _ = write!(
            b,
            "<table><tbody><tr><th scope=\"row\">Your organization's key</th><td><code>{}</code></td></tr><tr><th scope=\"row\">Platform key</th><td><code>{}</code></td></tr></tbody></table>",
            esc(&sig.signatory_public_key),
            esc(sig.platform_public_key.as_deref().unwrap_or("—"))
        );
    }
    b.push_str("<table><tbody>");
    let releases: Vec<String> = l
        .releases
        .iter()
        .map(|(f, pin)| match pin {
            tessera_licensing::model::VersionPin::Latest => format!("{f} (latest)"),
            tessera_licensing::model::VersionPin::Pinned(v) => format!("{f} v{v}"),
        })
        .collect();
    let tables: Vec<String> = l
        .tables
        .iter()
        .map(|(t, g)| match g {
            tessera_licensing::model::ColumnGrant::All => t.clone(),
            tessera_licensing::model::ColumnGrant::Only(c) => format!("{t} ({})", c.join(", ")),
        })
        .collect();
    for (k, v) in [
        ("Purpose", l.purpose.clone()),
        ("Releases", releases.join(", ")),
        ("Tables", tables.join("; ")),
        ("Smallest count shown", l.output.min_cell_size.to_string()),
        (
            "Counts rounded to",
            l.output
                .rounding_base
                .map_or("not rounded".into(), |r| r.to_string()),
        ),
    ] {
        let _ = write!(b, "<tr><th scope=\"row\">{k}</th><td>{}</td></tr>", esc(&v));
    }
    b.push_str("</tbody></table>");
    if !l.clauses.is_empty() {
        b.push_str("<h3>Clauses</h3><ol>");
        for c in &l.clauses {
            let _ = write!(b, "<li>{}</li>", esc(c));
        }
        b.push_str("</ol>");
    }
    let q = &l.quota;
    let _ = write!(
        b,
        "<h2>Usage and quota</h2><table><thead><tr><th scope=\"col\"></th><th scope=\"col\">Used</th><th scope=\"col\">Limit</th><th scope=\"col\">Remaining</th></tr></thead><tbody>\
<tr><th scope=\"row\">Queries this minute</th><td>{}</td><td>{}</td><td>{}</td></tr>\
<tr><th scope=\"row\">Queries today (UTC)</th><td>{}</td><td>{}</td><td id=\"queries-today-remaining\">{}</td></tr>\
<tr><th scope=\"row\">Rows today</th><td>{}</td><td>{}</td><td>{}</td></tr>\
<tr><th scope=\"row\">Queries this month</th><td>{}</td><td>{}</td><td>{}</td></tr>\
<tr><th scope=\"row\">Rows this month</th><td>{}</td><td>{}</td><td>{}</td></tr></tbody></table>",
        usage.queries_last_minute,
        q.queries_per_minute,
        usage.remaining.queries_this_minute,
        usage.queries_today,
        q.queries_per_day,
        usage.remaining.queries_today,
        usage.rows_today,
        q.rows_per_day,
        usage.remaining.rows_today,
        usage.queries_this_month,
        q.queries_per_month,
        usage.remaining.queries_this_month,
        usage.rows_this_month,
        q.rows_per_month,
        usage.remaining.rows_this_month,
    );
    if let Some(p) = &usage.privacy {
        let _ = write!(
            b,
            "<h2>Privacy budget</h2><p id=\"privacy-budget\">{} noisy answers so far. Spent ρ = {:.4} of {:.4} (ε = {:.3} of {:.3} at δ = {:e}); ρ left: {:.4}.</p>",
            p.answers,
            p.rho_spent,
            p.rho_budget,
            p.epsilon_spent,
            p.epsilon_budget,
            p.delta,
            p.rho_remaining
        );
    }
    let _ = write!(
        b,
        "<p><a href=\"/analyst/cohorts?license={}\">Saved cohorts under this license</a></p>",
        seg(&l.id)
    );
    let title = format!("License {}", l.id);
    html(
        StatusCode::OK,
        layout(&title, Console::Analyst, Some(&token), &b),
    )
}

async fn analyst_cohorts(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let next = "/analyst/cohorts";
    let token = or_return!(signed_in(&s, &caller, Console::Analyst, next));
    let license = q.get("license").cloned();
    let bound: Vec<String> = caller
        .analyst()
        .map(|(_, l)| l.to_vec())
        .unwrap_or_default();
    let chosen = license.or_else(|| bound.first().cloned());
    let list = call!(
        cohorts::list_cohorts(
            State(s.clone()),
            caller.clone(),
            QueryParams(cohorts::LicenseParam {
                license: chosen.clone()
            })
        ),
        Console::Analyst,
        next
    )
    .0;
    let mut b = String::new();
    if bound.len() > 1 {
        b.push_str("<p>License: ");
        for l in &bound {
            if Some(l) == chosen.as_ref() {
                let _ = write!(b, "<strong>{}</strong> ", esc(l));
            } else {
                let _ = write!(
                    b,
                    "<a href=\"/analyst/cohorts?license={}\">{}</a> ",
                    seg(l),
                    esc(l)
                );
            }
        }
        b.push_str("</p>");
    }
    let _ = write!(
        b,
        "<p>Cohorts saved under <strong>{}</strong>. Each is the table <code>cohort_&lt;name&gt;</code> in every Flight SQL session of the license. Sizes are counted now, as an ordinary audited query under the license's output rules (a cohort smaller than the smallest count shown is withheld).</p>",
        esc(&list.license)
    );
    if list.cohorts.is_empty() {
        b.push_str("<p>No saved cohorts yet: save one with <code>PUT /v1/cohorts/{name}</code> (docs/query.md).</p>");
    } else {
        b.push_str("<table><thead><tr><th scope=\"col\">Name</th><th scope=\"col\">Table</th><th scope=\"col\">Persons now</th><th scope=\"col\">Saved</th><th scope=\"col\">Definition</th></tr></thead><tbody>");
        let service = s.query.as_ref();
        for c in &list.cohorts {
            let size = match service {
                Some(q) => match q
                    .cohort_size(caller.credential.as_ref(), Some(&list.license), &c.name)
                    .await
                {
                    Ok(Some(n)) => n.to_string(),
                    Ok(None) => "withheld (small cell)".into(),
                    Err(e) => format!("not counted: {}", cohorts::from_service(e).message),
                },
                None => "not counted (no query service)".into(),
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td><details><summary>JSON</summary><pre>{}</pre></details></td></tr>",
                esc(&c.name),
                esc(&c.table),
                esc(&size),
                esc(&c.saved_at[..10.min(c.saved_at.len())]),
                esc(&serde_json::to_string_pretty(&c.definition).unwrap_or_default())
            );
        }
        b.push_str("</tbody></table>");
    }
    html(
        StatusCode::OK,
        layout("Saved cohorts", Console::Analyst, Some(&token), &b),
    )
}

fn keys_page(
    token: &str,
    own: &keys::OwnKeys,
    bound: &[String],
    issued: Option<&admin::IssuedKey>,
) -> String {
    let mut b = String::new();
    if let Some(k) = issued {
        let _ = write!(
            b,
            "<div class=\"note\" role=\"status\"><p>New key <code>{}</code>, expiring {}. Copy it now: it is not shown again.</p><pre id=\"new-key\" tabindex=\"0\" aria-label=\"The new API key\">{}</pre></div>",
            esc(&k.id),
            esc(k.expires_at.as_deref().unwrap_or("never")),
            esc(&k.key)
        );
    }
    let _ = write!(
        b,
        "<p>Keys of <strong>{}</strong>. Revoking takes effect on the next request, over HTTP and Flight SQL alike.</p><table><thead><tr><th scope=\"col\">Key</th><th scope=\"col\">Licenses</th><th scope=\"col\">Created</th><th scope=\"col\">Expires</th><th scope=\"col\">State</th><th scope=\"col\"><span class=\"muted\">Action</span></th></tr></thead><tbody>",
        esc(&own.organization)
    );
    let now = Utc::now().to_rfc3339();
    for k in &own.keys {
        let state = if k.revoked_at.is_some() {
            "revoked".to_string()
        } else if k.expires_at.as_deref().is_some_and(|e| e < now.as_str()) {
            "expired".to_string()
        } else {
            "live".to_string()
        };
        let action = if state == "live" {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/analyst/keys/{}/revoke\">{}<button class=\"secondary\" type=\"submit\" aria-label=\"Revoke key {}\">Revoke</button></form>",
                seg(&k.id),
                hidden_csrf(token),
                esc(&k.id)
            )
        } else {
            String::new()
        };
        let _ = write!(
            b,
            "<tr id=\"key-{}\"><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            seg(&k.id),
            esc(&k.id),
            if k.id == own.current {
                " (this session)"
            } else {
                ""
            },
            esc(&k.licenses.join(", ")),
            esc(&k.created_at[..10.min(k.created_at.len())]),
            esc(k
                .expires_at
                .as_deref()
                .map_or("never", |e| &e[..10.min(e.len())])),
            state,
            action
        );
    }
    b.push_str(
        "</tbody></table><h2>Issue a key</h2><form method=\"post\" action=\"/analyst/keys\">",
    );
    b.push_str(&hidden_csrf(token));
    b.push_str("<fieldset><legend>Licenses the new key may use</legend>");
    for (i, l) in bound.iter().enumerate() {
        let _ = write!(
            b,
            "<label for=\"lic-{i}\"><input id=\"lic-{i}\" type=\"checkbox\" name=\"license\" value=\"{}\" checked> {}</label>",
            esc(l),
            esc(l)
        );
    }
    b.push_str("</fieldset><label for=\"days\">Expires in (days, 1 to 366)</label><input id=\"days\" name=\"expires_in_days\" type=\"number\" min=\"1\" max=\"366\" value=\"90\"> <button type=\"submit\">Issue key</button></form>");
    b
}

async fn analyst_keys(State(s): State<AppState>, caller: Caller) -> Response {
    let next = "/analyst/keys";
    let token = or_return!(signed_in(&s, &caller, Console::Analyst, next));
    let own = call!(
        keys::list_own_keys(State(s.clone()), caller.clone()),
        Console::Analyst,
        next
    )
    .0;
    let bound: Vec<String> = caller
        .analyst()
        .map(|(_, l)| l.to_vec())
        .unwrap_or_default();
    html(
        StatusCode::OK,
        layout(
            "API keys",
            Console::Analyst,
            Some(&token),
            &keys_page(&token, &own, &bound, None),
        ),
    )
}

async fn analyst_issue_key(
    State(s): State<AppState>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Response {
    let next = "/analyst/keys";
    let token = or_return!(signed_in(&s, &caller, Console::Analyst, next));
    // Repeated `license` fields: parsed by hand (a map keeps only one).
    let pairs: Vec<(String, String)> = form_urlencoded_pairs(&body);
    let f: HashMap<String, String> = pairs.iter().cloned().collect();
    or_return!(check_csrf(&token, &f));
    let licenses: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "license")
        .map(|(_, v)| v.clone())
        .collect();
    let days = match f.get("expires_in_days").map(|d| d.trim().parse::<u32>()) {
        Some(Ok(d)) => Some(d),
        None => None,
        Some(Err(_)) => {
            return error_page(
                ApiError::invalid("expires in: a number of days, 1 to 366"),
                Console::Analyst,
                next,
            );
        }
    };
    let (_, issued) = call!(
        keys::issue_own_key(
            State(s.clone()),
            caller.clone(),
            JsonBody(keys::NewOwnKey {
                licenses: Some(licenses),
                expires_in_days: days,
            })
        ),
        Console::Analyst,
        next
    );
    let own = call!(
        keys::list_own_keys(State(s.clone()), caller.clone()),
        Console::Analyst,
        next
    )
    .0;
    let bound: Vec<String> = caller
        .analyst()
        .map(|(_, l)| l.to_vec())
        .unwrap_or_default();
    html(
        StatusCode::CREATED,
        layout(
            "API keys",
            Console::Analyst,
            Some(&token),
            &keys_page(&token, &own, &bound, Some(&issued.0)),
        ),
    )
}

fn form_urlencoded_pairs(body: &[u8]) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body).unwrap_or_default()
}

async fn analyst_revoke_key(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let next = "/analyst/keys";
    or_return!(signed_in_form(&s, &caller, Console::Analyst, next, &f));
    let _ = call!(
        keys::revoke_own_key(State(s.clone()), caller.clone(), PathParams(id)),
        Console::Analyst,
        next
    );
    Redirect::to(next).into_response()
}

// ---------------------------------------------------------------------------------------
// Operator console

async fn operator_home(State(s): State<AppState>, caller: Caller) -> Response {
    let next = "/operator";
    let token = or_return!(signed_in(&s, &caller, Console::Operator, next));
    let o = call!(
        operations::overview(State(s.clone()), caller.clone()),
        Console::Operator,
        next
    )
    .0;
    let audit = call!(
        admin::verify_audit(State(s.clone()), caller.clone()),
        Console::Operator,
        next
    )
    .0;
    let mut b = String::new();
    let quarantined: usize = o.quarantine.values().sum();
    let _ = write!(
        b,
        "<div class=\"cards\"><div class=\"card\" id=\"patients\">Patients<b>{}</b></div><div class=\"card\">Quarantined entries<b>{}</b></div><div class=\"card\">Release versions<b>{}</b></div><div class=\"card\">Organizations<b>{}</b></div><div class=\"card\">Audit chain<b>{}</b></div></div>",
        o.patients,
        quarantined,
        o.releases,
        o.organizations,
        if audit.valid {
            format!(
                "<span class=\"ok\">intact</span> <span class=\"muted\">({} entries)</span>",
                audit.entries.unwrap_or(0)
            )
        } else {
            "<span class=\"bad\">broken</span>".into()
        }
    );
    b.push_str("<h2>Consent in force, by purpose</h2><table><thead><tr><th scope=\"col\">Purpose</th><th scope=\"col\">Patients</th></tr></thead><tbody>");
    for (p, n) in &o.consents {
        let _ = write!(b, "<tr><td>{}</td><td>{n}</td></tr>", esc(p));
    }
    b.push_str("</tbody></table><h2>Licenses by status</h2><table><thead><tr><th scope=\"col\">Status</th><th scope=\"col\">Licenses</th></tr></thead><tbody>");
    for (st, n) in &o.licenses {
        let _ = write!(b, "<tr><td>{}</td><td>{n}</td></tr>", esc(st));
    }
    b.push_str("</tbody></table><p class=\"muted\">Counts only: no page of this console shows a patient's identity.</p>");
    html(
        StatusCode::OK,
        layout("Operator console", Console::Operator, Some(&token), &b),
    )
}

async fn operator_quarantine(State(s): State<AppState>, caller: Caller) -> Response {
    let next = "/operator/quarantine";
    let token = or_return!(signed_in(&s, &caller, Console::Operator, next));
    let entries = call!(
        operations::quarantine(
            State(s.clone()),
            caller.clone(),
            QueryParams(operations::Limit { limit: Some(500) })
        ),
        Console::Operator,
        next
    )
    .0;
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &entries {
        *by_reason.entry(e.reason.as_str()).or_insert(0) += 1;
    }
    let mut b = String::from(
        "<p>What ingest refused, and why. Files are named by their SHA-256: file names can carry a patient's name, so they stay sealed. Fix the source and ingest it again; a repeated bad file does not pile up entries.</p>",
    );
    if entries.is_empty() {
        b.push_str("<p>The quarantine is empty.</p>");
    } else {
        b.push_str("<h2>By reason</h2><ul>");
        for (r, n) in &by_reason {
            let _ = write!(b, "<li><code>{}</code>: {n}</li>", esc(r));
        }
        b.push_str("</ul><h2>Entries (most recent 500)</h2><table><thead><tr><th scope=\"col\">File (SHA-256)</th><th scope=\"col\">Entry</th><th scope=\"col\">Field</th><th scope=\"col\">Reason</th><th scope=\"col\">Message</th><th scope=\"col\">Last seen</th></tr></thead><tbody>");
        for e in &entries {
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&e.file_sha256[..12.min(e.file_sha256.len())]),
                e.entry.map_or("—".into(), |n| n.to_string()),
                esc(&e.field),
                esc(&e.reason),
                esc(&e.message),
                esc(&e.last_seen_at[..16.min(e.last_seen_at.len())])
            );
        }
        b.push_str("</tbody></table>");
    }
    html(
        StatusCode::OK,
        layout("Quarantine", Console::Operator, Some(&token), &b),
    )
}

async fn operator_releases(State(s): State<AppState>, caller: Caller) -> Response {
    let next = "/operator/releases";
    let token = or_return!(signed_in(&s, &caller, Console::Operator, next));
    let builds = call!(
        operations::list_builds(State(s.clone()), caller.clone()),
        Console::Operator,
        next
    )
    .0;
    let releases = call!(
        catalog::list_releases(State(s.clone()), caller.clone()),
        Console::Operator,
        next
    )
    .0;
    let mut b = String::new();
    b.push_str("<table><thead><tr><th scope=\"col\">Release</th><th scope=\"col\">Purpose</th><th scope=\"col\">Persons</th><th scope=\"col\">Built</th><th scope=\"col\">State</th><th scope=\"col\">Licensed to</th><th scope=\"col\"><span class=\"muted\">Action</span></th></tr></thead><tbody>");
    for r in &releases {
        let action = if r.retired {
            String::new()
        } else {
            format!(
                "<form class=\"inline\" method=\"post\" action=\"/operator/releases/{}/{}/retire\">{}<button class=\"secondary\" type=\"submit\" aria-label=\"Retire {} v{}\">Retire</button></form>",
                seg(&r.family),
                r.version,
                hidden_csrf(&token),
                esc(&r.family),
                r.version
            )
        };
        let _ = write!(
            b,
            "<tr><td>{} v{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.family),
            r.version,
            esc(&r.purpose),
            r.patients,
            esc(&r.built_at[..16.min(r.built_at.len())]),
            if r.retired {
                "retired"
            } else if r.latest {
                "latest"
            } else {
                "published"
            },
            esc(&r.licenses.join(", ")),
            action
        );
    }
    b.push_str("</tbody></table><p class=\"muted\">Each version's manifest: <code>tessera release show</code>, or the analysts' catalog page.</p>");
    if !builds.builds.is_empty() {
        b.push_str("<h2>Builds started here</h2><table><thead><tr><th scope=\"col\">#</th><th scope=\"col\">Family</th><th scope=\"col\">Policy</th><th scope=\"col\">Started</th><th scope=\"col\">Status</th></tr></thead><tbody>");
        for j in &builds.builds {
            let status = match (&j.status[..], j.version, &j.error) {
                ("built", Some(v), _) => format!("built v{v}"),
                ("failed", _, Some(e)) => format!("failed: {e}"),
                (s, _, _) => s.to_string(),
            };
            let _ = write!(
                b,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                j.id,
                esc(&j.family),
                esc(&j.policy),
                esc(&j.started_at),
                esc(&status)
            );
        }
        b.push_str("</tbody></table>");
    }
    b.push_str(
        "<h2>Build the next version</h2><form method=\"post\" action=\"/operator/releases\">",
    );
    b.push_str(&hidden_csrf(&token));
    b.push_str("<label for=\"family\">Family</label><input id=\"family\" name=\"family\" required pattern=\"[a-z0-9._-]+\" value=\"demo-natural-history\"><label for=\"purpose\">Consent purpose</label><select id=\"purpose\" name=\"purpose\">");
    for p in tessera_catalog::consent::KNOWN_PURPOSES {
        let _ = write!(b, "<option>{p}</option>");
    }
    b.push_str("</select><label for=\"policy\">De-identification policy</label><select id=\"policy\" name=\"policy\">");
    for p in &builds.policies {
        let sel = if p == "natural-history.toml" {
            " selected"
        } else {
            ""
        };
        let _ = write!(b, "<option{sel}>{}</option>", esc(p));
    }
    b.push_str("</select> <button type=\"submit\">Build</button></form><p class=\"muted\">A build runs in the background; reload this page to follow it.</p>");
    html(
        StatusCode::OK,
        layout("Releases", Console::Operator, Some(&token), &b),
    )
}

async fn operator_build(
    State(s): State<AppState>,
    caller: Caller,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let next = "/operator/releases";
    or_return!(signed_in_form(&s, &caller, Console::Operator, next, &f));
    let get = |k: &str| f.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let _ = call!(
        operations::build_release(
            State(s.clone()),
            caller.clone(),
            JsonBody(operations::NewBuild {
                family: get("family"),
                purpose: get("purpose"),
                policy: get("policy"),
            })
        ),
        Console::Operator,
        next
    );
    Redirect::to(next).into_response()
}

async fn operator_retire(
    State(s): State<AppState>,
    caller: Caller,
    Path((family, version)): Path<(String, u32)>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let next = "/operator/releases";
    or_return!(signed_in_form(&s, &caller, Console::Operator, next, &f));
    let _ = call!(
        operations::retire_release(
            State(s.clone()),
            caller.clone(),
            PathParams((family, version))
        ),
        Console::Operator,
        next
    );
    Redirect::to(next).into_response()
}

/// A draft license to start from: the operator edits the JSON.
fn license_template() -> String {
    let now = Utc::now();
    let l = serde_json::json!({
        "id": "new-license",
        "organization": "demo-aggregate",
        "releases": {"demo-natural-history": "latest"},
        "tables": {"person": "all", "condition_occurrence": "all"},
        "purpose": "research.natural_history",
        "mode": "aggregate_only",
        "output": {"min_cell_size": 11, "rounding_base": null, "max_rows": null},
        "quota": {"queries_per_minute": 30, "queries_per_day": 2000, "rows_per_day": 1000000, "queries_per_month": 20000, "rows_per_month": 10000000},
        "term_start": now.format("%Y-%m-%dT00:00:00Z").to_string(),
        "term_end": (now + chrono::Duration::days(365)).format("%Y-%m-%dT00:00:00Z").to_string(),
        "fees": {"flat": {"minor": 100000, "currency": "USD"}, "per_contributing_patient": null, "patient_share_bps": 5000},
        "clauses": ["No attempt to re-identify any person."],
        "status": "draft"
    });
    serde_json::to_string_pretty(&l).unwrap_or_default()
}

async fn operator_licenses(State(s): State<AppState>, caller: Caller) -> Response {
    let next = "/operator/licenses";
    let token = or_return!(signed_in(&s, &caller, Console::Operator, next));
    let orgs = call!(
        admin::list_organizations(State(s.clone()), caller.clone()),
        Console::Operator,
        next
    )
    .0;
    let lics = call!(
        admin::list_all_licenses(State(s.clone()), caller.clone()),
        Console::Operator,
        next
    )
    .0;
    let mut b = String::new();
    b.push_str("<h2>Licenses</h2><table><thead><tr><th scope=\"col\">License</th><th scope=\"col\">Organization</th><th scope=\"col\">Status</th><th scope=\"col\">Access</th><th scope=\"col\">Signed</th><th scope=\"col\">Term ends</th><th scope=\"col\"><span class=\"muted\">Actions</span></th></tr></thead><tbody>");
    for v in &lics {
        let l = &v.license;
        let mut actions = String::new();
        for (to, label) in [
            (LicenseStatus::Active, "Activate"),
            (LicenseStatus::Suspended, "Suspend"),
            (LicenseStatus::Terminated, "Terminate"),
        ] {
            if (v.signed || to != LicenseStatus::Active) && l.status.can_become(to) {
                let _ = write!(
                    actions,
                    "<form class=\"inline\" method=\"post\" action=\"/operator/licenses/{}/status\">{}<input type=\"hidden\" name=\"status\" value=\"{}\"><button class=\"secondary\" type=\"submit\" aria-label=\"{label} {}\">{label}</button></form> ",
                    seg(&l.id),
                    hidden_csrf(&token),
                    status_text(to),
                    esc(&l.id)
                );
            }
        }
        let _ = write!(
            b,
            "<tr id=\"license-{}\"><td><a href=\"/operator/licenses/{}\">{}</a></td><td>{}</td><td class=\"status\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            seg(&l.id),
            seg(&l.id),
            esc(&l.id),
            esc(&l.organization),
            status_text(l.status),
            mode_text(l),
            if v.signed { "yes" } else { "no" },
            l.term_end.format("%Y-%m-%d"),
            actions
        );
    }
    b.push_str("</tbody></table><h2>Organizations</h2><table><thead><tr><th scope=\"col\">Id</th><th scope=\"col\">Name</th><th scope=\"col\">Signatory key</th><th scope=\"col\">Since</th></tr></thead><tbody>");
    for o in &orgs {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td><code>{}…</code></td><td>{}</td></tr>",
            esc(&o.id),
            esc(&o.name),
            esc(&o.public_key[..16.min(o.public_key.len())]),
            esc(&o.created_at[..10.min(o.created_at.len())])
        );
    }
    b.push_str("</tbody></table><h2>Add an organization</h2><form method=\"post\" action=\"/operator/organizations\">");
    b.push_str(&hidden_csrf(&token));
    b.push_str("<label for=\"org-id\">Id (lowercase letters, digits, <code>-_.</code>)</label><input id=\"org-id\" name=\"id\" required><label for=\"org-name\">Name</label><input id=\"org-name\" name=\"name\" required><label for=\"org-key\">Signatory's Ed25519 public key (hex; <code>tessera org keygen</code>)</label><input id=\"org-key\" name=\"public_key\" size=\"70\" required> <button type=\"submit\">Add</button></form>");
    b.push_str("<h2>Create a license (draft)</h2><p>Edit the terms; the licensee signs the terms hash shown on the license's page, and you record the signature there (the platform countersigns).</p><form method=\"post\" action=\"/operator/licenses\">");
    b.push_str(&hidden_csrf(&token));
    let _ = write!(
        b,
        "<label for=\"terms\">Terms (JSON)</label><textarea id=\"terms\" name=\"terms\" rows=\"22\" cols=\"90\" spellcheck=\"false\">{}</textarea><br><button type=\"submit\">Create draft</button></form>",
        esc(&license_template())
    );
    html(
        StatusCode::OK,
        layout(
            "Organizations & licenses",
            Console::Operator,
            Some(&token),
            &b,
        ),
    )
}

async fn operator_add_org(
    State(s): State<AppState>,
    caller: Caller,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let next = "/operator/licenses";
    or_return!(signed_in_form(&s, &caller, Console::Operator, next, &f));
    let get = |k: &str| f.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let _ = call!(
        admin::add_organization(
            State(s.clone()),
            caller.clone(),
            JsonBody(admin::NewOrganization {
                id: get("id"),
                name: get("name"),
                public_key: get("public_key"),
            })
        ),
        Console::Operator,
        next
    );
    Redirect::to(next).into_response()
}

async fn operator_create_license(
    State(s): State<AppState>,
    caller: Caller,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let next = "/operator/licenses";
    or_return!(signed_in_form(&s, &caller, Console::Operator, next, &f));
    let license: License =
        match serde_json::from_str(f.get("terms").map(String::as_str).unwrap_or("")) {
            Ok(l) => l,
            Err(e) => {
                return error_page(
                    ApiError::invalid(format!(
                        "the terms are not a license: {e} (line {}, column {})",
                        e.line(),
                        e.column()
                    )),
                    Console::Operator,
                    next,
                );
            }
        };
    let id = license.id.clone();
    let _ = call!(
        admin::create_license(State(s.clone()), caller.clone(), JsonBody(license)),
        Console::Operator,
        next
    );
    Redirect::to(&format!("/operator/licenses/{}", seg(&id))).into_response()
}

async fn operator_license(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Response {
    let next = format!("/operator/licenses/{}", seg(&id));
    let token = or_return!(signed_in(&s, &caller, Console::Operator, &next));
    let d = call!(
        admin::get_license_detail(State(s.clone()), caller.clone(), PathParams(id.clone())),
        Console::Operator,
        &next
    )
    .0;
    let l = &d.view.license;
    let mut b = String::new();
    let _ = write!(
        b,
        "<div class=\"cards\"><div class=\"card\">Organization<b>{}</b></div><div class=\"card\">Status<b id=\"status\">{}</b></div><div class=\"card\">Access<b>{}</b></div></div><p>Terms SHA-256 (what the licensee signs): <code id=\"terms-hash\">{}</code></p>",
        esc(&l.organization),
        status_text(l.status),
        mode_text(l),
        esc(&d.view.terms_sha256)
    );
    if d.signatures.is_some() {
        let v = call!(
            admin::verify_license(State(s.clone()), caller.clone(), PathParams(id.clone())),
            Console::Operator,
            &next
        )
        .0;
        let _ = write!(
            b,
            "<p id=\"verification\">{}</p>",
            if v.valid {
                "<span class=\"ok\">Signed and countersigned; both signatures verify over the stored terms.</span>".to_string()
            } else {
                format!(
                    "<span class=\"bad\">Does not verify: {}</span>",
                    esc(v.problem.as_deref().unwrap_or(""))
                )
            }
        );
    } else if l.status == LicenseStatus::Draft {
        b.push_str("<h2>Record the licensee's signature</h2><p>The licensee signs the terms hash with the organization's key (<code>tessera org sign</code>); the platform countersigns when you record it.</p><form method=\"post\" action=\"");
        let _ = write!(
            b,
            "/operator/licenses/{}/signature\">{}",
            seg(&l.id),
            hidden_csrf(&token)
        );
        b.push_str("<label for=\"sig\">Signatory's Ed25519 signature (hex)</label><input id=\"sig\" name=\"signatory_signature\" size=\"90\" required> <button type=\"submit\">Record and countersign</button></form>");
    }
    let _ = write!(
        b,
        "<h2>Terms</h2><pre>{}</pre><p><a href=\"/operator/licenses\">All licenses</a></p>",
        esc(&serde_json::to_string_pretty(l).unwrap_or_default())
    );
    html(
        StatusCode::OK,
        layout(
            &format!("License {}", l.id),
            Console::Operator,
            Some(&token),
            &b,
        ),
    )
}

async fn operator_sign(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let next = format!("/operator/licenses/{}", seg(&id));
    or_return!(signed_in_form(&s, &caller, Console::Operator, &next, &f));
    let _ = call!(
        admin::sign_license(
            State(s.clone()),
            caller.clone(),
            PathParams(id.clone()),
            JsonBody(admin::Signature {
                signatory_signature: f
                    .get("signatory_signature")
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default(),
            })
        ),
        Console::Operator,
        &next
    );
    Redirect::to(&next).into_response()
}

async fn operator_status(
    State(s): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let next = "/operator/licenses";
    or_return!(signed_in_form(&s, &caller, Console::Operator, next, &f));
    let status: LicenseStatus = match serde_json::from_value(serde_json::Value::String(
        f.get("status").cloned().unwrap_or_default(),
    )) {
        Ok(v) => v,
        Err(_) => {
            return error_page(
                ApiError::invalid("status: active, suspended, expired or terminated"),
                Console::Operator,
                next,
            );
        }
    };
    let _ = call!(
        admin::set_license_status(
            State(s.clone()),
            caller.clone(),
            PathParams(id),
            JsonBody(admin::StatusChange { status })
        ),
        Console::Operator,
        next
    );
    Redirect::to(next).into_response()
}

async fn operator_audit(
    State(s): State<AppState>,
    caller: Caller,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let next = "/operator/audit";
    let token = or_return!(signed_in(&s, &caller, Console::Operator, next));
    let v = call!(
        admin::verify_audit(State(s.clone()), caller.clone()),
        Console::Operator,
        next
    )
    .0;
    let total = v.entries.unwrap_or(0) as u64;
    let after = q
        .get("after")
        .and_then(|a| a.parse::<u64>().ok())
        .unwrap_or_else(|| total.saturating_sub(200));
    let entries = call!(
        admin::read_audit(
            State(s.clone()),
            caller.clone(),
            QueryParams(admin::AuditPage {
                after,
                limit: Some(200)
            })
        ),
        Console::Operator,
        next
    )
    .0;
    let mut b = String::new();
    let _ = write!(
        b,
        "<p id=\"chain\">{}</p>",
        if v.valid {
            format!(
                "<span class=\"ok\">The hash chain verifies</span> over all {} entries: none was changed, removed or reordered.",
                v.entries.unwrap_or(0)
            )
        } else {
            format!(
                "<span class=\"bad\">The hash chain is broken:</span> {}",
                esc(v.problem.as_deref().unwrap_or(""))
            )
        }
    );
    let _ = write!(
        b,
        "<p>Entries {} to {} (the latest 200; <a href=\"/operator/audit?after=0\">from the start</a>). Queries are recorded by their SHA-256, never their text.</p>",
        after + 1,
        after + entries.len() as u64
    );
    b.push_str("<table><thead><tr><th scope=\"col\">#</th><th scope=\"col\">At</th><th scope=\"col\">Key</th><th scope=\"col\">License</th><th scope=\"col\">Action</th><th scope=\"col\">Resource</th><th scope=\"col\">Decision</th><th scope=\"col\">Rows / persons</th></tr></thead><tbody>");
    for e in entries.iter().rev() {
        let ev = &e.event;
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            e.seq,
            esc(&ev.at[..19.min(ev.at.len())]),
            esc(&ev.principal),
            esc(ev.license.as_deref().unwrap_or("")),
            esc(&ev.action),
            esc(&ev.resource),
            esc(&ev.decision),
            match (ev.rows, ev.persons) {
                (None, None) => String::new(),
                (r, p) => format!(
                    "{} / {}",
                    r.map_or("—".into(), |v| v.to_string()),
                    p.map_or("—".into(), |v| v.to_string())
                ),
            }
        );
    }
    b.push_str("</tbody></table>");
    html(
        StatusCode::OK,
        layout("Audit log", Console::Operator, Some(&token), &b),
    )
}

fn usd(minor: i64) -> String {
    tessera_payouts::rails::decimal_text(tessera_payouts::Money::usd(minor))
}

fn payouts_page(
    token: &str,
    v: &operations::PayoutsView,
    reconciled: Option<&operations::Reconciliation>,
) -> String {
    let mut b = String::new();
    if let Some(r) = reconciled {
        let _ = write!(
            b,
            "<div class=\"note\" role=\"status\" id=\"reconciliation\"><p>Reconciliation: {} payouts checked against {} provider records; {}.</p>",
            r.payouts_checked,
            r.provider_records,
            if r.differences.is_empty() {
                "no differences".to_string()
            } else {
                format!("{} differences", r.differences.len())
            }
        );
        if !r.differences.is_empty() {
            b.push_str("<table><thead><tr><th scope=\"col\">Kind</th><th scope=\"col\">Subject</th><th scope=\"col\">Detail</th></tr></thead><tbody>");
            for d in &r.differences {
                let _ = write!(
                    b,
                    "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                    esc(&d.kind),
                    esc(&d.subject),
                    esc(&d.detail)
                );
            }
            b.push_str("</tbody></table>");
        }
        b.push_str("</div>");
    }
    let _ = write!(
        b,
        "<div class=\"cards\"><div class=\"card\">Available to patients<b>${}</b></div><div class=\"card\">Ledger<b>{}</b></div></div>",
        usd(v.available_minor),
        if v.ledger_problems.is_empty() {
            "<span class=\"ok\">balanced</span>".to_string()
        } else {
            format!(
                "<span class=\"bad\">{} problems</span>",
                v.ledger_problems.len()
            )
        }
    );
    b.push_str("<h2>Why balances are held</h2><p>Patients with an available balance, by what holds their payout (one patient can be held for several reasons; <em>none</em>: the next payout run pays them).</p><table><thead><tr><th scope=\"col\">Hold</th><th scope=\"col\">Patients</th></tr></thead><tbody>");
    for (h, n) in &v.holds {
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{n}</td></tr>",
            esc(&h.replace('_', " "))
        );
    }
    b.push_str("</tbody></table><h2>Payouts by status</h2><table><thead><tr><th scope=\"col\">Status</th><th scope=\"col\">Payouts</th></tr></thead><tbody>");
    for (st, n) in &v.by_status {
        let _ = write!(b, "<tr><td>{}</td><td>{n}</td></tr>", esc(st));
    }
    if v.by_status.is_empty() {
        b.push_str("<tr><td colspan=\"2\">No payouts yet (<code>tessera payouts run</code> makes them).</td></tr>");
    }
    b.push_str("</tbody></table>");
    if !v.recent.is_empty() {
        b.push_str("<h2>Recent payouts</h2><table><thead><tr><th scope=\"col\">Payout</th><th scope=\"col\">Rail</th><th scope=\"col\">Amount</th><th scope=\"col\">Status</th><th scope=\"col\">Attempts</th><th scope=\"col\">Failure</th><th scope=\"col\">Created</th></tr></thead><tbody>");
        for p in &v.recent {
            let _ = write!(
                b,
                "<tr><td><code>{}</code></td><td>{}</td><td>{} {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.id),
                esc(&p.rail),
                usd(p.amount_minor),
                esc(&p.currency),
                esc(&p.status),
                p.attempts,
                esc(p.failure.as_deref().unwrap_or("")),
                esc(&p.created_at[..10.min(p.created_at.len())])
            );
        }
        b.push_str("</tbody></table>");
    }
    let _ = write!(
        b,
        "<h2>Reconcile</h2><form method=\"post\" action=\"/operator/payouts/reconcile\">{}<button type=\"submit\">Reconcile with the providers now</button></form>",
        hidden_csrf(token)
    );
    b
}

async fn operator_payouts(State(s): State<AppState>, caller: Caller) -> Response {
    let next = "/operator/payouts";
    let token = or_return!(signed_in(&s, &caller, Console::Operator, next));
    let v = call!(
        operations::payouts_view(State(s.clone()), caller.clone()),
        Console::Operator,
        next
    )
    .0;
    html(
        StatusCode::OK,
        layout(
            "Payouts",
            Console::Operator,
            Some(&token),
            &payouts_page(&token, &v, None),
        ),
    )
}

async fn operator_reconcile(
    State(s): State<AppState>,
    caller: Caller,
    Form(f): Form<HashMap<String, String>>,
) -> Response {
    let next = "/operator/payouts";
    let token = or_return!(signed_in_form(&s, &caller, Console::Operator, next, &f));
    let r = call!(
        operations::reconcile(State(s.clone()), caller.clone()),
        Console::Operator,
        next
    )
    .0;
    let v = call!(
        operations::payouts_view(State(s.clone()), caller.clone()),
        Console::Operator,
        next
    )
    .0;
    html(
        StatusCode::OK,
        layout(
            "Payouts",
            Console::Operator,
            Some(&token),
            &payouts_page(&token, &v, Some(&r)),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_in_follows_only_console_paths() {
        let n = |s: &str| safe_next(Some(&s.to_string()), "/analyst");
        assert_eq!(n("/analyst/keys"), "/analyst/keys");
        assert_eq!(n("/operator/audit"), "/operator/audit");
        for bad in [
            "https://evil.example/",
            "//evil.example/analyst",
            "/analyst//evil",
            "/me",
            "/\\evil",
        ] {
            assert_eq!(n(bad), "/analyst", "{bad}");
        }
        assert_eq!(safe_next(None, "/operator"), "/operator");
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(
            esc("<a href=\"x\">'&"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;"
        );
        assert_eq!(seg("demo-natural-history"), "demo-natural-history");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }
}
