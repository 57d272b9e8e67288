//! Operators' endpoints: organizations, licenses (create, sign, change status, verify), API
//! keys (issue, list, revoke) and the audit log. Every one needs an operator key; the CLI
//! twins (`tessera org|license|key|audit`) do the same without HTTP.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tessera_catalog::Purpose;
use tessera_licensing::audit::Entry;
use tessera_licensing::decision::{AdminAction, Principal, Request};
use tessera_licensing::store::{KeyListing, Organization};
use tessera_licensing::terms::{self, SignedTerms};
use tessera_licensing::{License, LicenseStatus};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Caller;
use super::error::{AdminRefusals, ApiError, ApiResult, ErrorBody};
use super::licenses::{LicenseView, view};
use super::ops::{JsonBody, PathParams, QueryParams};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_organizations, add_organization))
        .routes(routes!(list_all_licenses, create_license))
        .routes(routes!(get_license_detail))
        .routes(routes!(sign_license))
        .routes(routes!(set_license_status))
        .routes(routes!(verify_license))
        .routes(routes!(list_keys, issue_key))
        .routes(routes!(revoke_key))
        .routes(routes!(read_audit))
        .routes(routes!(verify_audit))
}

/// An operator's action, decided and audited (every route of this module and of `operations`).
pub(super) async fn admin(
    state: &AppState,
    caller: &Caller,
    action: AdminAction,
    what: &str,
    resource: String,
) -> ApiResult<()> {
    state
        .authorize(caller, Request::Admin(action), what, resource, None)
        .await
        .map(|_| ())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrganization {
    /// 1 to 64 lowercase letters, digits, `-`, `_`, `.`.
    pub id: String,
    pub name: String,
    /// The signatory's Ed25519 public key, 64 hex characters (`tessera org keygen`).
    pub public_key: String,
}

/// Every organization.
#[utoipa::path(get, path = "/v1/admin/organizations", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Organizations", body = Vec<Organization>),
        AdminRefusals,
    ))]
pub async fn list_organizations(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<Organization>>> {
    admin(
        &state,
        &caller,
        AdminAction::ManageOrganizations,
        "list_organizations",
        "organizations".into(),
    )
    .await?;
    Ok(Json(state.gate.store().organizations().await?))
}

/// Registers an organization and its signatory's public key.
#[utoipa::path(post, path = "/v1/admin/organizations", tag = "admin", security(("bearer" = [])),
    request_body = NewOrganization,
    responses(
        (status = 201, description = "Added", body = Organization),
        (status = 400, description = "Invalid", body = ErrorBody),
        (status = 409, description = "The id is taken", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        AdminRefusals,
    ))]
pub async fn add_organization(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<NewOrganization>,
) -> ApiResult<(StatusCode, Json<Organization>)> {
    admin(
        &state,
        &caller,
        AdminAction::ManageOrganizations,
        "add_organization",
        "organizations".into(),
    )
    .await?;
    let store = state.gate.store();
    store
        .add_organization(&body.id, &body.name, &body.public_key)
        .await?;
    let org = store
        .organizations()
        .await?
        .into_iter()
        .find(|o| o.id == body.id)
        .ok_or_else(|| ApiError::internal(&"an organization vanished after it was added"))?;
    Ok((StatusCode::CREATED, Json(org)))
}

/// Every license.
#[utoipa::path(get, path = "/v1/admin/licenses", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Licenses", body = Vec<LicenseView>),
        AdminRefusals,
    ))]
pub async fn list_all_licenses(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<LicenseView>>> {
    admin(
        &state,
        &caller,
        AdminAction::ManageLicenses,
        "list_all_licenses",
        "licenses".into(),
    )
    .await?;
    let all = state.gate.store().licenses(None).await?;
    Ok(Json(all.into_iter().map(|(l, s)| view(l, s)).collect()))
}

/// Creates a license as a draft (its `status` is ignored).
#[utoipa::path(post, path = "/v1/admin/licenses", tag = "admin", security(("bearer" = [])),
    request_body = License,
    responses(
        (status = 201, description = "Created as a draft", body = LicenseView),
        (status = 400, description = "Invalid", body = ErrorBody),
        (status = 409, description = "The id is taken", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        AdminRefusals,
    ))]
pub async fn create_license(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(license): JsonBody<License>,
) -> ApiResult<(StatusCode, Json<LicenseView>)> {
    admin(
        &state,
        &caller,
        AdminAction::ManageLicenses,
        "create_license",
        "licenses".into(),
    )
    .await?;
    Purpose::parse(&license.purpose)?;
    let store = state.gate.store();
    store.create_license(&license).await?;
    let (stored, _) = store.license(&license.id).await?;
    Ok((StatusCode::CREATED, Json(view(stored, false))))
}

/// A license with its signatures.
#[derive(Debug, Serialize, ToSchema)]
pub struct LicenseDetail {
    #[serde(flatten)]
    pub view: LicenseView,
    pub signatures: Option<SignedTerms>,
}

async fn existing(state: &AppState, id: &str) -> ApiResult<(License, Option<SignedTerms>)> {
    let store = state.gate.store();
    if store.find_license(id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "no license `{id}`: GET /v1/admin/licenses lists them"
        )));
    }
    Ok(store.license(id).await?)
}

/// One license with its signatures.
#[utoipa::path(get, path = "/v1/admin/licenses/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "License id")),
    responses(
        (status = 200, description = "The license", body = LicenseDetail),
        (status = 404, description = "No such license", body = ErrorBody),
        AdminRefusals,
    ))]
pub async fn get_license_detail(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<LicenseDetail>> {
    admin(
        &state,
        &caller,
        AdminAction::ManageLicenses,
        "get_license",
        format!("license/{id}"),
    )
    .await?;
    let (license, signed) = existing(&state, &id).await?;
    Ok(Json(LicenseDetail {
        view: view(license, signed.is_some()),
        signatures: signed,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The signatory's Ed25519 signature (hex) over the ASCII hex `terms_sha256` of the
    /// license, made with the key registered for the organization.
    pub signatory_signature: String,
}

/// Records the licensee's signature of the terms; the platform countersigns and the license
/// becomes `signed`.
#[utoipa::path(post, path = "/v1/admin/licenses/{id}/signature", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "License id")),
    request_body = Signature,
    responses(
        (status = 200, description = "Signed and countersigned", body = LicenseView),
        (status = 400, description = "The signature does not verify, or the license is not a draft", body = ErrorBody),
        (status = 404, description = "No such license", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        AdminRefusals,
    ))]
pub async fn sign_license(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<Signature>,
) -> ApiResult<Json<LicenseView>> {
    admin(
        &state,
        &caller,
        AdminAction::ManageLicenses,
        "sign_license",
        format!("license/{id}"),
    )
    .await?;
    let (license, _) = existing(&state, &id).await?;
    let store = state.gate.store();
    let mut signed = SignedTerms {
        terms_sha256: terms::terms_hash(&license),
        signatory_public_key: store.organization_key(&license.organization).await?,
        signatory_signature: body.signatory_signature,
        platform_public_key: None,
        platform_signature: None,
    };
    let (platform, platform_public) = &state.platform;
    terms::countersign(&mut signed, platform);
    store.sign_license(&id, &signed, platform_public).await?;
    let (license, _) = store.license(&id).await?;
    Ok(Json(view(license, true)))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusChange {
    /// `active`, `suspended`, `expired` or `terminated`; suspension and termination take
    /// effect on the next request.
    pub status: LicenseStatus,
}

/// Moves a license along its lifecycle.
#[utoipa::path(post, path = "/v1/admin/licenses/{id}/status", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "License id")),
    request_body = StatusChange,
    responses(
        (status = 200, description = "Changed", body = LicenseView),
        (status = 400, description = "Not a step the lifecycle allows", body = ErrorBody),
        (status = 404, description = "No such license", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        AdminRefusals,
    ))]
pub async fn set_license_status(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
    JsonBody(body): JsonBody<StatusChange>,
) -> ApiResult<Json<LicenseView>> {
    admin(
        &state,
        &caller,
        AdminAction::ManageLicenses,
        "set_license_status",
        format!("license/{id}"),
    )
    .await?;
    existing(&state, &id).await?;
    let store = state.gate.store();
    store.set_status(&id, body.status).await?;
    let (license, signed) = store.license(&id).await?;
    Ok(Json(view(license, signed.is_some())))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Verification {
    pub license: String,
    /// The stored terms are the signed terms and both signatures verify.
    pub valid: bool,
    pub problem: Option<String>,
}

/// Checks that the stored terms are the signed terms, with both signatures valid.
#[utoipa::path(get, path = "/v1/admin/licenses/{id}/verification", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "License id")),
    responses(
        (status = 200, description = "The verdict", body = Verification),
        (status = 400, description = "The license is not signed", body = ErrorBody),
        (status = 404, description = "No such license", body = ErrorBody),
        AdminRefusals,
    ))]
pub async fn verify_license(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> ApiResult<Json<Verification>> {
    admin(
        &state,
        &caller,
        AdminAction::ManageLicenses,
        "verify_license",
        format!("license/{id}"),
    )
    .await?;
    existing(&state, &id).await?;
    let verdict = state
        .gate
        .store()
        .verify_license(&id, &state.platform.1)
        .await?;
    Ok(Json(Verification {
        license: id,
        valid: verdict.is_ok(),
        problem: verdict.err().map(|e| e.to_string()),
    }))
}

/// Every API key, without secrets.
#[utoipa::path(get, path = "/v1/admin/keys", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Keys", body = Vec<KeyListing>),
        AdminRefusals,
    ))]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<KeyListing>>> {
    admin(
        &state,
        &caller,
        AdminAction::ManageKeys,
        "list_keys",
        "keys".into(),
    )
    .await?;
    Ok(Json(state.gate.store().keys().await?))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// The analyst's organization; leave out with `admin: true`.
    #[serde(default)]
    pub organization: Option<String>,
    /// Licenses of that organization the key may use.
    #[serde(default)]
    pub licenses: Vec<String>,
    /// An operator key instead of an analyst key.
    #[serde(default)]
    pub admin: bool,
    /// Days until it expires (1 to 3660); none: it does not expire.
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// A new key: `key` is shown only in this answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedKey {
    pub id: String,
    pub key: String,
    pub expires_at: Option<String>,
}

/// Issues an API key.
#[utoipa::path(post, path = "/v1/admin/keys", tag = "admin", security(("bearer" = [])),
    request_body = NewKey,
    responses(
        (status = 201, description = "Issued; the key is shown only now", body = IssuedKey),
        (status = 400, description = "Invalid", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        AdminRefusals,
    ))]
pub async fn issue_key(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<NewKey>,
) -> ApiResult<(StatusCode, Json<IssuedKey>)> {
    admin(
        &state,
        &caller,
        AdminAction::ManageKeys,
        "issue_key",
        "keys".into(),
    )
    .await?;
    let principal = match (body.admin, body.organization) {
        (true, None) if body.licenses.is_empty() => Principal::Admin,
        (true, _) => {
            return Err(ApiError::invalid(
                "an operator key has no organization or licenses",
            ));
        }
        (false, Some(organization)) => Principal::Analyst {
            organization,
            licenses: body.licenses,
        },
        (false, None) => {
            return Err(ApiError::invalid(
                "an analyst key needs its `organization` (or set `admin: true`)",
            ));
        }
    };
    let expires_at = match body.expires_in_days {
        Some(d) if (1..=3660).contains(&d) => {
            Some(Utc::now() + chrono::Duration::days(i64::from(d)))
        }
        Some(_) => return Err(ApiError::invalid("expires_in_days: 1 to 3660")),
        None => None,
    };
    let (key, id) = state
        .gate
        .store()
        .issue_key(&principal, expires_at, &state.pepper)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedKey {
            id,
            key,
            expires_at: expires_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        }),
    ))
}

/// Revokes a key at once.
#[utoipa::path(delete, path = "/v1/admin/keys/{id}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No live key with that id", body = ErrorBody),
        AdminRefusals,
    ))]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> ApiResult<StatusCode> {
    admin(
        &state,
        &caller,
        AdminAction::ManageKeys,
        "revoke_key",
        format!("key/{id}"),
    )
    .await?;
    match state.gate.store().revoke_key(&id).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(tessera_licensing::store::StoreError::Invalid(_)) => Err(ApiError::not_found(format!(
            "no live key `{id}`: GET /v1/admin/keys lists them"
        ))),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditPage {
    /// Entries after this sequence number (default 0: from the start).
    #[serde(default)]
    pub after: u64,
    /// At most this many (1 to 1000, default 100).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Audit entries in order (they hold no identified data).
#[utoipa::path(get, path = "/v1/admin/audit", tag = "admin", security(("bearer" = [])),
    params(AuditPage),
    responses(
        (status = 200, description = "Entries", body = Vec<Entry>),
        (status = 400, description = "Invalid paging", body = ErrorBody),
        AdminRefusals,
    ))]
pub async fn read_audit(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(page): QueryParams<AuditPage>,
) -> ApiResult<Json<Vec<Entry>>> {
    admin(
        &state,
        &caller,
        AdminAction::ReadAudit,
        "read_audit",
        "audit".into(),
    )
    .await?;
    let limit = page.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit: 1 to 1000"));
    }
    let entries = state.gate.store().audit_entries().await?;
    Ok(Json(
        entries
            .into_iter()
            .filter(|e| e.seq > page.after)
            .take(limit as usize)
            .collect(),
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuditVerification {
    pub valid: bool,
    pub entries: Option<usize>,
    /// The first bad entry, when the chain is broken.
    pub problem: Option<String>,
}

/// Verifies the audit log's hash chain.
#[utoipa::path(get, path = "/v1/admin/audit/verification", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "The verdict", body = AuditVerification),
        AdminRefusals,
    ))]
pub async fn verify_audit(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<AuditVerification>> {
    admin(
        &state,
        &caller,
        AdminAction::ReadAudit,
        "verify_audit",
        "audit".into(),
    )
    .await?;
    let verdict = state.gate.store().verify_audit().await?;
    Ok(Json(match verdict {
        Ok(n) => AuditVerification {
            valid: true,
            entries: Some(n),
            problem: None,
        },
        Err(e) => AuditVerification {
            valid: false,
            entries: None,
            problem: Some(e.to_string()),
        },
    }))
}
