//! Saved cohort definitions: an analyst's inclusion and exclusion criteria (codes, ages, dates)
//! that the query service evaluates in every session of the license they were saved under, as
//! the table `cohort_<name>` (see `tessera_query::cohort` and docs/cohorts.md).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use tessera_query::ServiceError;
use tessera_query::cohort::CohortDefinition;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, Refusals};
use super::ops::{JsonBody, PathParams, QueryParams};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_cohorts))
        .routes(routes!(save_cohort, delete_cohort))
}

/// Which license: may be left out when the key is bound to one license.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LicenseParam {
    pub license: Option<String>,
}

/// One saved cohort.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohortView {
    pub name: String,
    /// The table it is exposed as, in its release family's schema.
    pub table: String,
    /// The definition as saved.
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
    pub saved_at: String,
}

/// The cohorts saved under a license.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohortList {
    pub license: String,
    pub cohorts: Vec<CohortView>,
}

/// A cohort saved and evaluated.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohortSaved {
    pub license: String,
    pub family: String,
    pub table: String,
    /// Persons in the cohort now, after the license's output rules; absent when withheld as
    /// a cell smaller than the license's minimum.
    pub persons: Option<u64>,
    pub suppressed: bool,
    #[schema(value_type = Object)]
    pub definition: serde_json::Value,
}

pub(super) fn service(state: &AppState) -> ApiResult<&tessera_query::QueryService> {
    state.query.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this server does not run the query service: cohorts need `tessera serve`",
        )
    })
}

/// The query service's errors in the HTTP API's words.
pub(super) fn from_service(e: ServiceError) -> ApiError {
    use tessera_query::QueryError;
    match e {
        ServiceError::Denied {
            reason,
            retry_after,
        } => ApiError::denied_until(reason, retry_after, chrono::Utc::now()),
        ServiceError::LicenseRequired(_) => {
            ApiError::invalid("this key is bound to several licenses: name one with `?license=`")
        }
        ServiceError::Query(QueryError::Refused { rule, message }) => {
            ApiError::new(StatusCode::FORBIDDEN, rule, message)
        }
        ServiceError::Query(QueryError::Invalid(m)) => ApiError::invalid(m),
        ServiceError::Query(QueryError::Limit(m)) => {
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "limit", m)
        }
        ServiceError::Query(QueryError::Internal(m)) | ServiceError::Store(m) => {
            ApiError::internal(&m)
        }
    }
}

/// The cohorts saved under the caller's license.
#[utoipa::path(
    get, path = "/v1/cohorts", tag = "cohorts",
    security(("bearer" = [])),
    params(LicenseParam),
    responses(
        (status = 200, description = "The saved cohorts", body = CohortList),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 403, description = "The key may not use the license", body = ErrorBody),
        Refusals,
    )
)]
pub async fn list_cohorts(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(params): QueryParams<LicenseParam>,
) -> ApiResult<Json<CohortList>> {
    let (license, saved) = service(&state)?
        .cohorts(caller.credential.as_ref(), params.license.as_deref())
        .await
        .map_err(from_service)?;
    Ok(Json(CohortList {
        license,
        cohorts: saved
            .into_iter()
            .map(|c| CohortView {
                table: format!("cohort_{}", c.name),
                name: c.name,
                definition: serde_json::from_str(&c.definition).unwrap_or_default(),
                saved_at: c
                    .saved_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            })
            .collect(),
    }))
}

/// Saves a cohort definition under the caller's license (replacing one of the same name),
/// after evaluating it: it must plan over the license's tables, and its size is counted by an
/// audited, metered aggregate query under the license's output rules. From then on every
/// Flight SQL session of the license has the table `cohort_<name>`.
#[utoipa::path(
    put, path = "/v1/cohorts/{name}", tag = "cohorts",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Cohort name: lower-case letters, digits and `_`", example = "epilepsy_adults"),
        LicenseParam,
    ),
    request_body(content = Object, description = "The cohort definition (docs/cohorts.md)"),
    responses(
        (status = 200, description = "Saved and evaluated", body = CohortSaved),
        (status = 400, description = "The definition is malformed or cannot be evaluated under the license", body = ErrorBody),
        (status = 403, description = "The license does not allow it, or the evaluation is refused by a rule (`differencing`)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        Refusals,
    )
)]
pub async fn save_cohort(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(name): PathParams<String>,
    QueryParams(params): QueryParams<LicenseParam>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> ApiResult<Json<CohortSaved>> {
    tessera_query::cohort::check_name(&name).map_err(|e| ApiError::invalid(e.to_string()))?;
    let serde_json::Value::Object(mut body) = body else {
        return Err(ApiError::invalid(
            "cohort definition: (document): a JSON object is expected",
        ));
    };
    match body.get("name") {
        None => {
            body.insert("name".into(), serde_json::Value::String(name.clone()));
        }
        Some(serde_json::Value::String(n)) if *n == name => {}
        Some(_) => {
            return Err(ApiError::invalid(
                "cohort definition: name: it differs from the name in the path",
            ));
        }
    }
    let definition = CohortDefinition::parse(&serde_json::Value::Object(body).to_string())
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let report = service(&state)?
        .save_cohort(
            caller.credential.as_ref(),
            params.license.as_deref(),
            definition,
        )
        .await
        .map_err(from_service)?;
    Ok(Json(CohortSaved {
        license: report.license,
        family: report.family,
        table: report.table,
        persons: report.persons,
        suppressed: report.suppressed,
        definition: serde_json::to_value(&report.definition).unwrap_or_default(),
    }))
}

/// Deletes a cohort saved under the caller's license.
#[utoipa::path(
    delete, path = "/v1/cohorts/{name}", tag = "cohorts",
    security(("bearer" = [])),
    params(
        ("name" = String, Path, description = "Cohort name"),
        LicenseParam,
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 403, description = "The key may not use the license", body = ErrorBody),
        (status = 404, description = "No cohort of that name under the license", body = ErrorBody),
        Refusals,
    )
)]
pub async fn delete_cohort(
    State(state): State<AppState>,
    caller: Caller,
    PathParams(name): PathParams<String>,
    QueryParams(params): QueryParams<LicenseParam>,
) -> ApiResult<StatusCode> {
    let deleted = service(&state)?
        .delete_cohort(caller.credential.as_ref(), params.license.as_deref(), &name)
        .await
        .map_err(from_service)?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(
            "no cohort of that name under this license",
        ))
    }
}
