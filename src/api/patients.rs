//! Patients' side of the HTTP service, and the payment providers' webhooks.
//!
//! - `POST /v1/webhooks/stripe`, `/v1/webhooks/giftcard`: the raw
//!   body's signature is verified (ring) before anything is read; 400 when it does not verify
//!   (the provider retries), 200 with what was done otherwise (duplicates included).
//! - `GET /me/sign-in?token=…`: a patient's sign-in link (`tessera payouts sign-in`) sets an
//!   HttpOnly, SameSite=Strict cookie and leads to `/me`.
//! - `GET /me`: the earnings page (server-rendered HTML, an inline SVG chart, plain forms: no
//!   JavaScript build step); `POST /me/payout-choice` and `POST /me/consent` change the payout
//!   choice and consent (a CSRF token bound to the sign-in is checked).
//! - `GET /v1/me/earnings`: the same as JSON (cookie or `Authorization: Bearer`).
//!
//! A patient's credential is refused by every licensing decision; here it reaches only that
//! patient's own money and consent.

// Handler helpers answer their refusal as the `Response` itself, as axum handlers do.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::fmt::Write as _;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde_json::json;
use tessera_licensing::decision::Principal;
use tessera_payouts::earnings::Earnings;
use tessera_payouts::payout::{Choice, Preferences};
use tessera_payouts::rails::Rails;
use tessera_payouts::webhook::{self, Provider};
use tessera_payouts::{Currency, Money, Payouts};

use super::AppState;
use super::web::esc;
use crate::payouts::PayoutsConfig;

/// What the patients' pages and the webhooks need.
#[derive(Debug, Clone)]
pub struct PatientServices {
    pub payouts: Payouts,
    pub config: PayoutsConfig,
    pub rails: Rails,
    /// Sends patients' sign-in links.
    pub mailer: crate::mail::Mailer,
    /// The address patients reach this server at, for links in e-mails
    /// (`TESSERA_PUBLIC_URL`, else the HTTP address).
    pub public_url: String,
    /// The passkeys' relying party at the public URL, or why passkeys are not offered.
    pub passkeys: std::sync::Arc<Result<super::passkeys::Passkeys, String>>,
    /// The gift-card catalog, fetched from the provider and kept for an hour.
    pub gift_cards: super::getting_paid::GiftCards,
    /// Identity proofing and records from providers.
    pub records: crate::records::RecordsServices,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/webhooks/stripe", post(stripe_hook))
        .route("/v1/webhooks/giftcard", post(giftcard_hook))
        .route("/me", get(page))
        .route("/me/payout-choice", post(set_choice))
        .route("/v1/me/earnings", get(earnings_json))
}

fn err(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn services(s: &AppState) -> Result<&PatientServices, Response> {
    s.patients.as_ref().ok_or_else(|| {
        err(
            StatusCode::SERVICE_UNAVAILABLE,
            "payouts_unavailable",
            "payouts are not configured on this server",
        )
    })
}

fn hook_result(r: Result<webhook::Outcome, tessera_payouts::PayoutsError>) -> Response {
    match r {
        Ok(o) => (StatusCode::OK, axum::Json(o)).into_response(),
        Err(e @ tessera_payouts::PayoutsError::Webhook(_)) => {
            err(StatusCode::BAD_REQUEST, "webhook_refused", &e.to_string())
        }
        Err(
            e @ (tessera_payouts::PayoutsError::Invalid(_)
            | tessera_payouts::PayoutsError::NotFound(_)),
        ) => {
            // Known to Tessera but not applicable (a payment of the wrong amount): answer 200 so
            // the provider stops retrying; reconciliation reports it.
            tracing::warn!(error = %e, "webhook not applied");
            (StatusCode::OK, axum::Json(json!({"result": "not_applied"}))).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "webhook handling failed");
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "retry",
                "could not handle the event now; the provider will retry",
            )
        }
    }
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

async fn stripe_hook(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let svc = match services(&s) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(e) = webhook::verify_stripe(
        &svc.config.stripe_webhook_secret,
        header_str(&h, "stripe-signature"),
        &body,
        Utc::now().timestamp(),
    ) {
        s.metrics.decision("webhook_refused");
        return err(StatusCode::BAD_REQUEST, "webhook_refused", &e.to_string());
    }
    hook_result(
        svc.payouts
            .handle_stripe_event(Provider::Stripe, &body)
            .await,
    )
}

async fn giftcard_hook(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let svc = match services(&s) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Err(e) = webhook::verify_hex_hmac(
        &svc.config.giftcard_webhook_secret,
        header_str(&h, "tremendous-webhook-signature"),
        &body,
    ) {
        return err(StatusCode::BAD_REQUEST, "webhook_refused", &e.to_string());
    }
    hook_result(svc.payouts.handle_giftcard_event(&body).await)
}

/// The signed-in patient of the JSON route: a session cookie (the pages' sign-in), or a
/// patient's bearer key (the operator's sign-in link, for scripts).
async fn patient(s: &AppState, h: &HeaderMap) -> Result<String, Response> {
    let bearer = header_str(h, "authorization")
        .strip_prefix("Bearer ")
        .map(str::to_string);
    let Some(key) = bearer else {
        return match super::me::me(s, h).await {
            Ok(me) => Ok(me.session.patient_id),
            Err(super::me::Refusal::Unavailable) => {
                Err(err(StatusCode::SERVICE_UNAVAILABLE, "retry", "try again"))
            }
            Err(_) => Err(err(
                StatusCode::UNAUTHORIZED,
                "sign_in",
                "sign in at /me/sign-in, or send a patient's key as a bearer token",
            )),
        };
    };
    let cred = s
        .gate
        .store()
        .credential(&key, &s.pepper)
        .await
        .map_err(|_| err(StatusCode::SERVICE_UNAVAILABLE, "retry", "try again"))?;
    match cred {
        Some(c) if c.is_live(Utc::now()) => match c.principal {
            Principal::Patient { patient } => Ok(patient),
            _ => Err(err(
                StatusCode::FORBIDDEN,
                "patient_credential",
                "these pages are for patients: analysts and operators use the API",
            )),
        },
        _ => Err(err(
            StatusCode::UNAUTHORIZED,
            "sign_in",
            "this sign-in link has expired or was revoked: ask for a new one",
        )),
    }
}

async fn earnings_of(s: &AppState, patient: &str) -> Result<Earnings, Response> {
    let svc = services(s)?;
    svc.payouts
        .earnings(patient, Utc::now().date_naive(), &svc.rails)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "reading earnings");
            err(
                StatusCode::SERVICE_UNAVAILABLE,
                "retry",
                "could not read your earnings now",
            )
        })
}

async fn earnings_json(State(s): State<AppState>, h: HeaderMap) -> Response {
    let p = match patient(&s, &h).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match earnings_of(&s, &p).await {
        Ok(e) => axum::Json(e).into_response(),
        Err(r) => r,
    }
}

pub(crate) fn money(minor: i64, c: Currency) -> String {
    let sym = if c == Currency::USD { "$" } else { "" };
    format!(
        "{sym}{}",
        tessera_payouts::rails::decimal_text(Money::new(minor, c))
    )
}

/// Days since 1970 of a `YYYY-MM-DD` day (the series' keys), if it parses.
fn day_number(day: &str) -> Option<i64> {
    chrono::NaiveDate::parse_from_str(day.get(..10)?, "%Y-%m-%d")
        .ok()
        .map(|d| {
            d.signed_duration_since(chrono::NaiveDate::default())
                .num_days()
        })
}

/// Cumulative earnings over time as an inline SVG (no script) that reads well whatever the
/// history: one day of earnings is one bar with its date and amount; longer histories are a
/// step line on a time axis (days placed by date, not by index), with a tick for each year
/// when they span more than one. A table of the same figures follows for screen readers.
fn chart(series: &[(String, i64)], c: Currency) -> String {
    let (w, h, pad) = (640.0f64, 200.0f64, 44.0f64);
    let points: Vec<(i64, &str, i64)> = series
        .iter()
        .filter_map(|(d, v)| day_number(d).map(|n| (n, d.as_str(), *v)))
        .collect();
    let Some(&(first, first_label, _)) = points.first() else {
        return "<p class=\"muted\">No earnings yet.</p>".into();
    };
    let &(last, last_label, total) = points.last().unwrap_or(&points[0]);
    let max = points.iter().map(|p| p.2).max().unwrap_or(1).max(1) as f64;
    let y = |v: i64| h - pad - (h - 2.0 * pad) * (v as f64 / max);
    let mut svg = format!(
        "<svg role=\"img\" aria-labelledby=\"chart-title\" viewBox=\"0 0 {w} {h}\" width=\"100%\" height=\"{h}\"><title id=\"chart-title\">Earnings over time: {} in all by {}</title>\
<line x1=\"{pad}\" y1=\"{y0}\" x2=\"{x1}\" y2=\"{y0}\" stroke=\"#767676\"/>",
        esc(&money(total, c)),
        esc(last_label),
        y0 = h - pad,
        x1 = w - pad,
    );
    if first == last {
        // One day: a bar, labelled.
        let (bx, bw) = (w / 2.0 - 30.0, 60.0);
        let _ = write!(
            svg,
            "<rect x=\"{bx}\" y=\"{top:.1}\" width=\"{bw}\" height=\"{hh:.1}\" fill=\"#1b6ac9\"/>\
<text x=\"{cx}\" y=\"{ty:.1}\" font-size=\"13\" text-anchor=\"middle\">{amount}</text>\
<text x=\"{cx}\" y=\"{dy}\" font-size=\"12\" text-anchor=\"middle\">{day}</text>",
            top = y(total),
            hh = (h - pad) - y(total),
            cx = w / 2.0,
            ty = y(total) - 6.0,
            amount = esc(&money(total, c)),
            dy = h - pad + 16.0,
            day = esc(first_label),
        );
    } else {
        let span = (last - first) as f64;
        let x = |d: i64| pad + (w - 2.0 * pad) * ((d - first) as f64 / span);
        // A step line: the total holds until the next day with earnings.
        let mut pts = format!("{:.1},{:.1} ", x(first), y(0));
        let mut prev = 0;
        for &(d, _, v) in &points {
            let _ = write!(pts, "{:.1},{:.1} {:.1},{:.1} ", x(d), y(prev), x(d), y(v));
            prev = v;
        }
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"#1b6ac9\" stroke-width=\"3\" points=\"{pts}\"/>"
        );
        // Year ticks when the history spans years; else the first and last days.
        let first_year: i32 = first_label
            .get(..4)
            .and_then(|y| y.parse().ok())
            .unwrap_or(1970);
        let last_year: i32 = last_label
            .get(..4)
            .and_then(|y| y.parse().ok())
            .unwrap_or(1970);
        if last_year > first_year {
            for year in (first_year + 1)..=last_year {
                if let Some(d) = day_number(&format!("{year}-01-01")) {
                    let _ = write!(
                        svg,
                        "<line x1=\"{tx:.1}\" y1=\"{y0}\" x2=\"{tx:.1}\" y2=\"{y1}\" stroke=\"#767676\"/><text x=\"{tx:.1}\" y=\"{ly}\" font-size=\"12\" text-anchor=\"middle\">{year}</text>",
                        tx = x(d),
                        y0 = h - pad,
                        y1 = h - pad + 5.0,
                        ly = h - pad + 18.0,
                    );
                }
            }
        } else {
            let _ = write!(
                svg,
                "<text x=\"{pad}\" y=\"{ly}\" font-size=\"12\">{}</text><text x=\"{x1}\" y=\"{ly}\" font-size=\"12\" text-anchor=\"end\">{}</text>",
                esc(first_label),
                esc(last_label),
                ly = h - pad + 18.0,
                x1 = w - pad,
            );
        }
        let _ = write!(
            svg,
            "<text x=\"{tx}\" y=\"{ty:.1}\" font-size=\"12\" text-anchor=\"end\">{}</text>",
            esc(&money(total, c)),
            tx = w - pad,
            ty = y(total) - 6.0,
        );
    }
    svg.push_str("</svg>");
    // The same figures as text: by month for long histories, by day for short ones.
    let monthly = points.len() > 12;
    let mut rows: Vec<(String, i64)> = Vec::new();
    for &(_, d, v) in &points {
        let key = if monthly { d.get(..7).unwrap_or(d) } else { d }.to_string();
        match rows.last_mut() {
            Some((k, total)) if *k == key => *total = v,
            _ => rows.push((key, v)),
        }
    }
    let _ = write!(
        svg,
        "<details><summary>The figures</summary><table><tr><th scope=\"col\">{}</th><th scope=\"col\">Earned by then</th></tr>",
        if monthly { "Month" } else { "Day" }
    );
    for (k, v) in rows {
        let _ = write!(
            svg,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(&k),
            esc(&money(v, c))
        );
    }
    svg.push_str("</table></details>");
    svg
}

/// The earnings page's body.
/// A survey's name for people: the questionnaire's title when Tessera holds it, else the last
/// part of its URL in words (`…/quality-of-life` → "Quality of life").
fn survey_title(url: &str, titles: &HashMap<String, String>) -> String {
    let canonical = url.split('|').next().unwrap_or(url);
    if let Some(t) = titles.get(canonical) {
        return t.clone();
    }
    let last = canonical
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(canonical)
        .replace(['-', '_'], " ");
    let mut c = last.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => canonical.to_string(),
    }
}

fn render(
    e: &Earnings,
    choice_form: &str,
    titles: &HashMap<String, String>,
    licenses: &HashMap<String, String>,
) -> String {
    let license = |id: &str| {
        licenses
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("License {id}"))
    };
    let c = e.currency;
    let mut h = String::with_capacity(8192);
    h.push_str("<div class=\"cards\">");
    for (label, v, id) in [
        ("Available", e.available_minor, "available"),
        ("Pending", e.pending_minor, "pending"),
        ("Paid to you", e.paid_minor, "paid"),
        ("Donated", e.donated_minor, "donated"),
    ] {
        let _ = write!(
            h,
            "<div class=\"card\" id=\"{id}\">{label}<b>{}</b></div>",
            money(v, c)
        );
    }
    h.push_str("</div>");
    for hold in &e.holds {
        let _ = write!(h, "<p class=\"hold\">{}</p>", esc(&hold.message));
    }
    h.push_str("<h2>Earnings over time</h2>");
    h.push_str(&chart(&e.series, c));
    h.push_str("<h2>Where it came from</h2><table><tr><th>Source</th><th>Amount</th></tr>");
    for (l, v) in &e.by_license {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td></tr>",
            esc(&license(l)),
            money(*v, c)
        );
    }
    for (st, v) in &e.by_study {
        let _ = write!(
            h,
            "<tr><td>Study {} (surveys)</td><td>{}</td></tr>",
            esc(st),
            money(*v, c)
        );
    }
    h.push_str("</table><h2>History</h2><table><tr><th>Date</th><th>What</th><th>Amount</th></tr>");
    for l in e.history.iter().rev() {
        let what = match l.kind.as_str() {
            "license_share" => format!(
                "Your share of the {}",
                license(l.source.license.as_deref().unwrap_or("")).to_lowercase_first()
            ),
            "survey_incentive" => format!(
                "Survey “{}” (study {})",
                survey_title(l.source.survey.as_deref().unwrap_or(""), titles),
                l.source.study.as_deref().unwrap_or("")
            ),
            "study_enrollment" => {
                format!("Joined study {}", l.source.study.as_deref().unwrap_or(""))
            }
            "payout_reserve" => "Payout".into(),
            "payout_void" | "payout_return" => "Payout returned to your balance".into(),
            other => other.replace('_', " "),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&l.at[..10.min(l.at.len())]),
            esc(&what),
            money(l.amount_minor, c)
        );
    }
    h.push_str("</table><h2>Payouts</h2><table><tr><th>Date</th><th>Kind</th><th>Amount</th><th>Status</th></tr>");
    for p in &e.payouts {
        let claim = p
            .claim_url
            .as_deref()
            .map(|u| format!(" · <a href=\"{}\">redeem</a>", esc(u)))
            .unwrap_or_default();
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{} {}</td><td>{}</td><td>{}{claim}</td></tr>",
            esc(&p.created_at[..10.min(p.created_at.len())]),
            esc(&p.kind),
            esc(&p.destination),
            money(p.amount_minor, c),
            esc(&p.status)
        );
    }
    let _ = write!(
        h,
        "</table><h2>Tax form</h2><p id=\"tax\">Payments in {}: {} paid so far. Reporting threshold: {}. W-9 on file: {}.</p>",
        e.tax.year,
        money(e.tax.paid_this_year_minor, c),
        e.tax
            .threshold_minor
            .map(|t| money(t, c))
            .unwrap_or_else(|| "none".into()),
        if e.tax.w9_on_file { "yes" } else { "no" }
    );
    let _ = write!(h, "<p>Identity verification: {}.</p>", e.identity.code());
    h.push_str(choice_form);
    h.push_str("<p>What you share, and with whom: <a href=\"/me/consent\">your consent</a>.</p>");
    h
}

async fn page(State(s): State<AppState>, h: HeaderMap) -> Response {
    let me = match super::me::me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    let e = match earnings_of(&s, me.patient()).await {
        Ok(e) => e,
        Err(r) => return r,
    };
    let svc = match services(&s) {
        Ok(svc) => svc,
        Err(r) => return r,
    };
    let orgs = svc.payouts.advocacy_orgs().await.unwrap_or_default();
    let titles: HashMap<String, String> = s
        .catalog
        .questionnaires()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|q| (q.questionnaire.url, q.questionnaire.title))
        .collect();
    let licenses = license_titles(&s, e.by_license.keys()).await;
    let gift = svc.gift_cards.offer(e.preferences.currency).await;
    let connect = svc
        .payouts
        .connect_account_of(me.patient())
        .await
        .unwrap_or_default();
    let form = super::getting_paid::choice_form(
        &me.csrf,
        &e.preferences.choice,
        Money::new(e.preferences.minimum_minor, e.preferences.currency),
        &gift,
        &orgs,
        connect.as_ref(),
        svc.config.stripe_key.is_some(),
    );
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(super::me::layout(
            "Your earnings",
            Some(&me),
            &render(&e, &form, &titles, &licenses),
        )),
    )
        .into_response()
}

/// What a patient reads for a license: the data license's purpose in plain words, and the
/// organization it is licensed to ("Data license for natural history research, to Acme
/// Pharma"), not its id.
async fn license_titles<'a>(
    s: &AppState,
    ids: impl Iterator<Item = &'a String>,
) -> HashMap<String, String> {
    let store = s.gate.store();
    let orgs: HashMap<String, String> = store
        .organizations()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|o| (o.id, o.name))
        .collect();
    let mut out = HashMap::new();
    for id in ids {
        if let Ok(Some(l)) = store.find_license(id).await {
            let (purpose, _) = tessera_catalog::consent::describe_purpose(&l.purpose);
            let org = orgs.get(&l.organization).unwrap_or(&l.organization);
            out.insert(
                id.clone(),
                format!(
                    "Data license for {}, to {org}",
                    purpose.to_lowercase_first()
                ),
            );
        }
    }
    out
}

/// Lower-cases the first letter ("Natural history research" reads "natural history research"
/// inside a sentence).
trait LowerFirst {
    fn to_lowercase_first(&self) -> String;
}

impl LowerFirst for str {
    fn to_lowercase_first(&self) -> String {
        let mut c = self.chars();
        match c.next() {
            Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
            None => String::new(),
        }
    }
}

async fn set_choice(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let me = match super::me::form_me(&s, &h, &pairs).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let p = me.patient().to_string();
    let f: HashMap<String, String> = pairs.into_iter().collect();
    let svc = match services(&s) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let get = |k: &str| f.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    // Each option is chosen from what the page offered: a product of the catalog, a
    // registered organization, the patient's own connected account once Stripe pays out to
    // it. Nothing is typed.
    let choice = match get("choice").as_str() {
        "gift_card" => {
            let product = get("product");
            if !svc.gift_cards.has(&product, Currency::USD).await {
                return super::me::message_page(
                    StatusCode::BAD_REQUEST,
                    "How you want to be paid",
                    "Choose one of the gift cards listed, then save.",
                );
            }
            Choice::GiftCard { product }
        }
        "donation" => Choice::Donation {
            organization: get("organization"),
        },
        "direct" => match svc.payouts.connect_account_of(&p).await {
            Ok(Some((account, status))) if status == "enabled" => Choice::Direct {
                stripe_account: account,
            },
            _ => {
                return super::me::message_page(
                    StatusCode::BAD_REQUEST,
                    "How you want to be paid",
                    "Set up direct payment with Stripe first: the option opens once Stripe says it can pay you.",
                );
            }
        },
        _ => Choice::Accumulate,
    };
    let minimum = tessera_payouts::rails::parse_decimal(&get("minimum"), Currency::USD);
    let Some(minimum) = minimum else {
        return err(
            StatusCode::BAD_REQUEST,
            "minimum",
            "minimum payout: an amount such as 25.00",
        );
    };
    match svc
        .payouts
        .set_preferences(
            &p,
            &Preferences {
                choice,
                currency: Currency::USD,
                minimum_minor: minimum.minor,
            },
        )
        .await
    {
        Ok(()) => Redirect::to("/me").into_response(),
        Err(e @ tessera_payouts::PayoutsError::Invalid(_)) => super::me::message_page(
            StatusCode::BAD_REQUEST,
            "How you want to be paid",
            &e.to_string(),
        ),
        Err(_) => err(
            StatusCode::SERVICE_UNAVAILABLE,
            "retry",
            "could not save your choice now",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_day_of_earnings_is_one_labelled_bar() {
        let svg = chart(&[("2026-10-02".into(), 4_000)], Currency::USD);
        assert_eq!(svg.matches("<rect").count(), 1);
        assert!(svg.contains("$40.00") && svg.contains("2026-10-02"));
        assert!(!svg.contains("<polyline"));
    }

    #[test]
    fn years_of_earnings_are_placed_by_date_with_year_ticks() {
        let series: Vec<(String, i64)> = (0..30)
            .map(|i| {
                let d = chrono::NaiveDate::from_ymd_opt(2023, 1, 15).expect("date")
                    + chrono::Duration::days(i * 40);
                (d.format("%Y-%m-%d").to_string(), (i + 1) * 500)
            })
            .collect();
        let svg = chart(&series, Currency::USD);
        assert!(svg.contains("<polyline"));
        for year in ["2024", "2025", "2026"] {
            assert!(
                svg.contains(&format!(">{year}</text>")),
                "a tick for {year}"
            );
        }
        assert!(
            svg.contains("<th scope=\"col\">Month</th>"),
            "long histories by month"
        );
        assert!(svg.contains("$150.00"), "the total");
    }

    #[test]
    fn surveys_are_named_by_their_titles() {
        let mut titles = HashMap::new();
        titles.insert(
            "https://tessera.example/Questionnaire/seizure-diary".to_string(),
            "Seizures this month".to_string(),
        );
        assert_eq!(
            survey_title(
                "https://tessera.example/Questionnaire/seizure-diary|1.0",
                &titles
            ),
            "Seizures this month"
        );
        assert_eq!(
            survey_title(
                "https://tessera.example/Questionnaire/quality-of-life",
                &titles
            ),
            "Quality of life"
        );
    }

    #[test]
    fn no_earnings_say_so() {
        assert!(chart(&[], Currency::USD).contains("No earnings yet"));
    }
}
