//! The patient's deletion page: `GET /me/delete` says what will be destroyed, what is kept and
//! why, and what stands in the way (money on its way, a balance not yet paid); `POST
//! /me/delete` (CSRF, a ticked box and the word DELETE typed) erases the patient through
//! [`crate::payouts::erase_patient`] and signs every one of their sessions out.
//!
//! Who may: the patient, or a parent or guardian acting for them. Other caregivers (a spouse,
//! an adult child) may change consent but not erase someone else's data: they are told to ask
//! the patient, or the operator with proof of authority.

// Handler helpers answer their refusal as the `Response` itself, as axum handlers do.
#![allow(clippy::result_large_err)]

use std::fmt::Write as _;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tessera_catalog::accounts::Relation;
use tessera_payouts::closure::Closing;

use super::AppState;
use super::me::{Me, Refusal, field, form_me, layout, me, message_page, page, parse_form};
use super::web::esc;
use crate::payouts::Erasure;

pub fn routes() -> Router<AppState> {
    Router::new().route("/me/delete", get(delete_page).post(delete))
}

/// Whether this session may erase the patient it acts for.
fn may_erase(me: &Me) -> bool {
    matches!(
        me.relation,
        Relation::Own | Relation::Parent | Relation::Guardian
    )
}

fn money(m: tessera_payouts::Money) -> String {
    super::patients::money(m.minor, m.currency)
}

fn requested_by(me: &Me) -> String {
    if me.relation == Relation::Own {
        "patient".into()
    } else {
        format!("caregiver:{}", me.relation.as_str())
    }
}

const KEPT: &str = "<h2>What is kept, and why</h2><ul>\
<li><b>Your consent history</b>: the dates you agreed to or stopped each kind of research, with no health data. It is the record that what was done with your data before was done with your permission.</li>\
<li><b>Payment records</b>: the amounts and dates of what you earned and were paid, kept by accounting and tax law, under a random number that no longer leads to you. Money you earned and were not paid is kept as unclaimed funds, as the law on unclaimed property asks.</li>\
<li><b>Research releases already published</b>: they hold de-identified rows, with no name, address or record number. From the moment you delete, every query leaves your rows out, and no later release includes you.</li>\
<li><b>The audit trail</b>: that a deletion happened, when, and under which random number: proof that your request was carried out.</li></ul>";

async fn delete_page(State(s): State<AppState>, h: HeaderMap) -> Response {
    let me = match me(&s, &h).await {
        Ok(m) => m,
        Err(r) => return r.page(),
    };
    let mut b = String::new();
    if !may_erase(&me) {
        b.push_str("<p>Only the patient, or a parent or guardian acting for them, can delete their data. You can still stop sharing it for research on the <a href=\"/me/consent\">Consent</a> page.</p>");
        return page(StatusCode::OK, layout("Delete your data", Some(&me), &b));
    }
    b.push_str("<p>You can delete everything Tessera holds about you, at any time. <a href=\"/me/download\">Download a copy</a> first if you want to keep one: once deleted, it cannot be brought back, by you or by us.</p>\
<h2>What is deleted</h2><ul>\
<li>Your name, birth date, address and every identifier we hold.</li>\
<li>Every record: from your providers, your survey answers and drafts, and every file you sent.</li>\
<li>Your shares (the links stop working at once) and the record of who opened them.</li>\
<li>Your account, its passkeys and sign-in links, and every browser signed in.</li></ul>\
<p>Your data is stored encrypted under a key of its own. Deleting destroys that key, so every copy, in our backups too, can never be read again.</p>");
    b.push_str(KEPT);
    if let Some(svc) = s.patients.as_ref() {
        match svc.payouts.standing(me.patient()).await {
            Ok(st) => {
                if !st.in_flight.is_empty() {
                    let total: Vec<String> = st.in_flight.iter().map(|p| money(p.amount)).collect();
                    let _ = write!(
                        b,
                        "<h2>Money on its way</h2><p role=\"status\">A payment to you ({}) has not arrived yet. If it was only prepared, deleting cancels it; if it is already with the payment provider, you can delete once it arrives (usually within a few days).</p>",
                        esc(&total.join(", "))
                    );
                }
                if !st.available.is_empty() {
                    let amounts: Vec<String> = st.available.iter().map(|m| money(*m)).collect();
                    let _ = write!(
                        b,
                        "<h2>Money not yet paid</h2><p role=\"status\">You have <b>{}</b> that has not been paid out. After deletion we can no longer pay you, because we will not know who you are: to receive it, choose a gift card, a donation or a direct payment on the <a href=\"/me\">Earnings</a> page first. If you delete now, it is kept as unclaimed funds.</p>",
                        esc(&amounts.join(" and "))
                    );
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "reading a patient's standing");
                return Refusal::Unavailable.page();
            }
        }
    }
    let _ = write!(
        b,
        "<h2>Delete</h2><form method=\"post\" action=\"/me/delete\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
<p><input type=\"checkbox\" id=\"understand\" name=\"understand\" value=\"yes\" required> <label for=\"understand\">I understand that my data will be destroyed and cannot be recovered</label></p>\
<p><label for=\"confirm\">Type DELETE to confirm</label><br><input id=\"confirm\" name=\"confirm\" autocomplete=\"off\" required pattern=\"DELETE\" size=\"10\"></p>\
<button type=\"submit\" class=\"danger\">Delete everything</button></form>",
        me.csrf
    );
    page(StatusCode::OK, layout("Delete your data", Some(&me), &b))
}

async fn delete(State(s): State<AppState>, h: HeaderMap, body: Bytes) -> Response {
    let form = parse_form(&body);
    let me = match form_me(&s, &h, &form).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if !may_erase(&me) {
        return message_page(
            StatusCode::FORBIDDEN,
            "Delete your data",
            "Only the patient, or a parent or guardian acting for them, can delete their data.",
        );
    }
    if field(&form, "understand") != Some("yes") || field(&form, "confirm") != Some("DELETE") {
        return message_page(
            StatusCode::BAD_REQUEST,
            "Delete your data",
            "Nothing was deleted: tick the box and type DELETE (in capitals) to confirm.",
        );
    }
    let Some(svc) = s.patients.as_ref() else {
        return Refusal::Unavailable.page();
    };
    let erased = crate::payouts::erase_patient(
        &s.catalog,
        &svc.payouts,
        &svc.rails,
        s.gate.store(),
        Some(&svc.records),
        me.patient(),
        &requested_by(&me),
        &format!("patient-account:{}", me.account.account_id),
    )
    .await;
    match erased {
        Ok(Erasure::PaymentsInFlight(list)) => {
            let amounts: Vec<String> = list.iter().map(|p| money(p.amount)).collect();
            message_page(
                StatusCode::CONFLICT,
                "Not deleted yet",
                &format!(
                    "Nothing was deleted: a payment to you ({}) is with the payment provider and has not arrived. Try again once it has (usually within a few days).",
                    amounts.join(", ")
                ),
            )
        }
        Ok(Erasure::Done { deletion, closing }) => {
            let mut b = String::new();
            let _ = write!(
                b,
                "<p role=\"status\">Everything Tessera held about you has been deleted, and the key that protected it destroyed ({}).</p><ul><li>{} records deleted</li>",
                esc(&super::me::minute(&deletion.deleted_at)),
                deletion.deleted.records
            );
            if !deletion.consents_revoked.is_empty() {
                let _ = write!(
                    b,
                    "<li>Sharing stopped for {} kind{} of research, effective for every query from now on</li>",
                    deletion.consents_revoked.len(),
                    if deletion.consents_revoked.len() == 1 {
                        ""
                    } else {
                        "s"
                    }
                );
            }
            if deletion.deleted.shares > 0 {
                let _ = write!(
                    b,
                    "<li>{} share link{} no longer work{}</li>",
                    deletion.deleted.shares,
                    if deletion.deleted.shares == 1 {
                        ""
                    } else {
                        "s"
                    },
                    if deletion.deleted.shares == 1 {
                        "s"
                    } else {
                        ""
                    }
                );
            }
            if let Closing::Closed { unclaimed, .. } = &closing
                && !unclaimed.is_empty()
            {
                let amounts: Vec<String> = unclaimed.iter().map(|m| money(*m)).collect();
                let _ = write!(
                    b,
                    "<li>{} not paid out is kept as unclaimed funds</li>",
                    esc(&amounts.join(" and "))
                );
            }
            b.push_str("</ul>");
            b.push_str(KEPT);
            b.push_str("<p>You have been signed out. Thank you for taking part.</p>");
            (
                [(header::SET_COOKIE, super::me::ended_session_cookie())],
                page(StatusCode::OK, layout("Your data is deleted", None, &b)),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "deleting a patient");
            message_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again",
                "The deletion did not finish just now. Try again in a minute: it picks up where it stopped.",
            )
        }
    }
}
