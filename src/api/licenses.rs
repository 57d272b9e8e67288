//! The caller's licenses, their usage and what remains of their quotas.

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde::Serialize;
use tessera_licensing::decision::Request;
use tessera_licensing::{License, terms};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, Refusals};
use super::ops::PathParams;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_licenses))
        .routes(routes!(get_license))
        .routes(routes!(get_usage))
        .routes(routes!(get_signatures))
}

/// A license with what it means now.
#[derive(Debug, Serialize, ToSchema)]
pub struct LicenseView {
    pub license: License,
    /// Signed by the licensee and countersigned.
    pub signed: bool,
    /// Active and within its term: it grants access now.
    pub grants_now: bool,
    /// SHA-256 of the canonical terms (what the signatures cover).
    pub terms_sha256: String,
}

pub(super) fn view(license: License, signed: bool) -> LicenseView {
    LicenseView {
        grants_now: license.grants_at(Utc::now()),
        terms_sha256: terms::terms_hash(&license),
        license,
        signed,
    }
}

/// Usage under a license and what remains.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub license: String,
    pub at: String,
    pub queries_last_minute: u32,
    pub queries_today: u64,
    pub rows_today: u64,
    pub queries_this_month: u64,
    pub rows_this_month: u64,
    pub remaining: Remaining,
    /// The privacy budget, for a license with differential privacy: ρ spent and left, and ε
    /// at the terms' δ.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub privacy: Option<tessera_licensing::privacy::BudgetView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Remaining {
    pub queries_this_minute: u32,
    pub queries_today: u64,
    pub rows_today: u64,
    pub queries_this_month: u64,
    pub rows_this_month: u64,
}

/// The licenses the caller's key is bound to (operators: every license).
#[utoipa::path(
    get, path = "/v1/licenses", tag = "licenses",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The caller's licenses", body = Vec<LicenseView>),
        Refusals,
    )
)]
pub async fn list_licenses(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<LicenseView>>> {
    state
        .authorize(
            &caller,
            Request::BrowseCatalog,
            "list_licenses",
            "licenses".into(),
            None,
        )
        .await?;
    let all = state
        .gate
        .store()
        .licenses(caller.analyst().map(|(org, _)| org))
        .await?;
    Ok(Json(
        all.into_iter()
            .filter(|(l, _)| match caller.analyst() {
                Some((_, bound)) => bound.contains(&l.id),
                None => true,
            })
            .map(|(l, signed)| view(l, signed))
            .collect(),
    ))
}

/// A license the caller may view (its own, in any status; any, for operators), decided and
/// audited as `action`.
pub(super) async fn viewable(
    state: &AppState,
    caller: &Caller,
    id: &str,
    action: &str,
) -> ApiResult<License> {
    state
        .authorize(
            caller,
            Request::ViewLicense {
                license: id.to_string(),
            },
            action,
            format!("license/{id}"),
            None,
        )
        .await?
        .license
        .ok_or_else(|| ApiError::not_found(format!("no license `{id}`")))
}

/// One of the caller's licenses, in any status.
#[utoipa::path(
    get, path = "/v1/licenses/{id}", tag = "licenses",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "License id", example = "demo-aggregate-license")),
    responses(
        (status = 200, description = "The license", body = LicenseView),
        (status = 403, description = "Not the caller's license", body = ErrorBody),
        (status = 404, description = "No such license (operators)", body = ErrorBody),
        Refusals,
    )
)]
pub async fn get_license(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<LicenseView>> {
    let license = viewable(&state, &caller, &id, "get_license").await?;
    let (_, signed) = state.gate.store().license(&license.id).await?;
    Ok(Json(view(license, signed.is_some())))
}

/// Usage under one of the caller's licenses and the remaining quota (UTC day and month).
#[utoipa::path(
    get, path = "/v1/licenses/{id}/usage", tag = "licenses",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "License id", example = "demo-aggregate-license")),
    responses(
        (status = 200, description = "Usage and remaining quota", body = UsageView),
        (status = 403, description = "Not the caller's license", body = ErrorBody),
        (status = 404, description = "No such license (operators)", body = ErrorBody),
        Refusals,
    )
)]
pub async fn get_usage(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<UsageView>> {
    let license = viewable(&state, &caller, &id, "get_usage").await?;
    let now = Utc::now();
    let (u, _) = state.gate.store().usage(&license.id, now).await?;
    let q = &license.quota;
    let privacy = match &license.output.privacy {
        Some(terms) => {
            let spent = state.gate.store().privacy_spent(&license.id).await?;
            Some(tessera_licensing::privacy::BudgetView::new(
                terms,
                spent.rho,
                spent.answers,
                spent.delta,
            ))
        }
        None => None,
    };
    Ok(Json(UsageView {
        license: license.id.clone(),
        at: now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        queries_last_minute: u.queries_last_minute,
        queries_today: u.queries_today,
        rows_today: u.rows_today,
        queries_this_month: u.queries_this_month,
        rows_this_month: u.rows_this_month,
        remaining: Remaining {
            queries_this_minute: q.queries_per_minute.saturating_sub(u.queries_last_minute),
            queries_today: q.queries_per_day.saturating_sub(u.queries_today),
            rows_today: q.rows_per_day.saturating_sub(u.rows_today),
            queries_this_month: q.queries_per_month.saturating_sub(u.queries_this_month),
            rows_this_month: q.rows_per_month.saturating_sub(u.rows_this_month),
        },
        privacy,
    }))
}

/// One of the caller's licenses with its signatures, and whether they verify.
#[derive(Debug, Serialize, ToSchema)]
pub struct SignedLicense {
    #[serde(flatten)]
    pub view: LicenseView,
    pub signatures: Option<terms::SignedTerms>,
    /// The stored terms are the signed terms, and the licensee's signature and the
    /// platform's countersignature both verify.
    pub valid: bool,
    /// Why not, when not.
    pub problem: Option<String>,
}

/// One of the caller's licenses with its signed terms, checked now.
#[utoipa::path(
    get, path = "/v1/licenses/{id}/signatures", tag = "licenses",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "License id", example = "demo-aggregate-license")),
    responses(
        (status = 200, description = "The license, its signatures and the verdict", body = SignedLicense),
        (status = 403, description = "Not the caller's license", body = ErrorBody),
        (status = 404, description = "No such license (operators)", body = ErrorBody),
        Refusals,
    )
)]
pub async fn get_signatures(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<SignedLicense>> {
    let license = viewable(&state, &caller, &id, "verify_license").await?;
    let store = state.gate.store();
    let (_, signed) = store.license(&license.id).await?;
    let verdict = match &signed {
        Some(_) => store.verify_license(&license.id, &state.platform.1).await?,
        None => Ok(()),
    };
    Ok(Json(SignedLicense {
        valid: signed.is_some() && verdict.is_ok(),
        problem: match (&signed, verdict) {
            (None, _) => Some("not signed yet".into()),
            (Some(_), Err(e)) => Some(e.to_string()),
            (Some(_), Ok(())) => None,
        },
        view: view(license, signed.is_some()),
        signatures: signed,
    }))
}
