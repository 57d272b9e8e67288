//! An analyst's own organization's API keys: list, issue, revoke (`/v1/keys`). The decision
//! is `Request::ManageOwnKeys`: an analyst reaches only their own organization's keys, and a
//! key they issue may be bound only to licenses their own key is bound to (no one widens
//! their own access by issuing a key). Operators use `/v1/admin/keys` for every key.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tessera_licensing::decision::{Principal, Request};
use tessera_licensing::store::KeyListing;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::admin::IssuedKey;
use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, Refusals};
use super::ops::{JsonBody, PathParams};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_own_keys, issue_own_key))
        .routes(routes!(revoke_own_key))
}

/// The organization and licenses of an analyst caller, after the audited decision.
async fn own(
    state: &AppState,
    caller: &Caller,
    action: &str,
    resource: String,
) -> ApiResult<(String, Vec<String>)> {
    let Some((org, bound)) = caller.analyst() else {
        // Operators and patients are refused by the decision too; ask it, so it is audited.
        let org = String::new();
        state
            .authorize(
                caller,
                Request::ManageOwnKeys { organization: org },
                action,
                resource,
                None,
            )
            .await?;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_analyst",
            "these are an analyst's own keys: operators manage every key at /v1/admin/keys",
        ));
    };
    let (org, bound) = (org.to_string(), bound.to_vec());
    state
        .authorize(
            caller,
            Request::ManageOwnKeys {
                organization: org.clone(),
            },
            action,
            resource,
            None,
        )
        .await?;
    Ok((org, bound))
}

/// The keys of the caller's organization, without secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct OwnKeys {
    pub organization: String,
    /// The key this request was made with.
    pub current: String,
    pub keys: Vec<KeyListing>,
}

/// Your organization's API keys.
#[utoipa::path(get, path = "/v1/keys", tag = "licenses", security(("bearer" = [])),
    responses(
        (status = 200, description = "Keys", body = OwnKeys),
        (status = 403, description = "Not an analyst key (`not_analyst`, `patient_credential`)", body = ErrorBody),
        Refusals,
    ))]
pub async fn list_own_keys(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<OwnKeys>> {
    let (org, _) = own(&state, &caller, "list_own_keys", "keys".into()).await?;
    let keys = state
        .gate
        .store()
        .keys()
        .await?
        .into_iter()
        .filter(|k| k.organization.as_deref() == Some(org.as_str()))
        .collect();
    Ok(Json(OwnKeys {
        organization: org,
        current: caller
            .credential
            .as_ref()
            .map(|c| c.id.clone())
            .unwrap_or_default(),
        keys,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOwnKey {
    /// Licenses the new key may use: a subset of those your own key is bound to (default: all
    /// of them).
    #[serde(default)]
    pub licenses: Option<Vec<String>>,
    /// Days until it expires (1 to 366, default 90): your keys always expire.
    #[serde(default)]
    pub expires_in_days: Option<u32>,
}

/// Issues a key for your organization; the key is shown only in this answer.
#[utoipa::path(post, path = "/v1/keys", tag = "licenses", security(("bearer" = [])),
    request_body = NewOwnKey,
    responses(
        (status = 201, description = "Issued; the key is shown only now", body = IssuedKey),
        (status = 400, description = "Invalid", body = ErrorBody),
        (status = 403, description = "Not an analyst key (`not_analyst`, `patient_credential`)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        Refusals,
    ))]
pub async fn issue_own_key(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<NewOwnKey>,
) -> ApiResult<(StatusCode, Json<IssuedKey>)> {
    let (org, bound) = own(&state, &caller, "issue_own_key", "keys".into()).await?;
    let licenses = body.licenses.unwrap_or_else(|| bound.clone());
    if licenses.is_empty() {
        return Err(ApiError::invalid("licenses: name at least one"));
    }
    if let Some(l) = licenses.iter().find(|l| !bound.contains(l)) {
        return Err(ApiError::invalid(format!(
            "licenses: your key is not bound to `{l}`, so a key you issue cannot be"
        )));
    }
    let days = body.expires_in_days.unwrap_or(90);
    if !(1..=366).contains(&days) {
        return Err(ApiError::invalid("expires_in_days: 1 to 366"));
    }
    let expires_at = Utc::now() + chrono::Duration::days(i64::from(days));
    let (key, id) = state
        .gate
        .store()
        .issue_key(
            &Principal::Analyst {
                organization: org,
                licenses,
            },
            Some(expires_at),
            &state.pepper,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedKey {
            id,
            key,
            expires_at: Some(expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        }),
    ))
}

/// Revokes one of your organization's keys at once (the key in use included).
#[utoipa::path(delete, path = "/v1/keys/{id}", tag = "licenses", security(("bearer" = [])),
    params(("id" = String, Path, description = "Key id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 403, description = "Not an analyst key (`not_analyst`, `patient_credential`)", body = ErrorBody),
        (status = 404, description = "No live key of your organization with that id", body = ErrorBody),
        Refusals,
    ))]
pub async fn revoke_own_key(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(id): PathParams<String>,
) -> ApiResult<StatusCode> {
    let (org, _) = own(&state, &caller, "revoke_own_key", format!("key/{id}")).await?;
    let store = state.gate.store();
    let theirs = store.keys().await?.into_iter().any(|k| {
        k.id == id && k.organization.as_deref() == Some(org.as_str()) && k.revoked_at.is_none()
    });
    // Another organization's key is "not found", so ids of others' keys are not confirmed.
    if !theirs {
        return Err(ApiError::not_found(format!(
            "no live key `{id}` of your organization: GET /v1/keys lists them"
        )));
    }
    store.revoke_key(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}
