//! Errors as JSON: `{"error": {"code": "...", "message": "..."}}` with a stable code and a
//! message that says what to do. Messages never carry identified data; internal failures are
//! logged with a request id and answered with that id only.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tessera_licensing::Reason;
use tessera_licensing::store::StoreError;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: an authorization reason code (`no_credential`,
    /// `wrong_organization`, `quota_exceeded`, ...) or one of `invalid_request`,
    /// `not_found`, `conflict`, `payload_too_large`, `rate_limited`, `timeout`, `internal`,
    /// `unavailable`.
    pub code: String,
    /// What happened and what to do about it.
    pub message: String,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// Seconds, for `Retry-After`.
    pub retry_after: Option<u64>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// An internal failure: the detail goes to the log under a request id, not to the caller.
    pub fn internal(detail: &dyn std::fmt::Display) -> ApiError {
        let id = request_id();
        tracing::error!(request_id = %id, error = %detail, "request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!(
                "the server failed (request {id}); retry, and if it persists report the request id to the operators"
            ),
        )
    }

    /// A refusal by the authorization decision that may be retried at `retry_at`
    /// (`Retry-After` in whole seconds from `now`, at least 1).
    pub fn denied_until(
        reason: Reason,
        retry_at: Option<chrono::DateTime<chrono::Utc>>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> ApiError {
        ApiError::denied(
            reason,
            retry_at.map(|t| (t - now).num_seconds().max(1) as u64),
        )
    }

    /// A refusal by the authorization decision.
    pub fn denied(reason: Reason, retry_after: Option<u64>) -> ApiError {
        let status = match reason {
            Reason::NoCredential | Reason::CredentialExpired | Reason::CredentialRevoked => {
                StatusCode::UNAUTHORIZED
            }
            Reason::RateLimited | Reason::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::FORBIDDEN,
        };
        ApiError {
            status,
            code: reason.code().to_string(),
            message: reason.message().to_string(),
            retry_after,
        }
    }
}

fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "r{:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(ErrorBody {
                error: ErrorDetail {
                    code: self.code,
                    message: self.message,
                },
            }),
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(s) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&s.max(1).to_string())
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tessera\""),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Invalid(m) => ApiError::invalid(m),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::Sql { .. } | StoreError::Unavailable(_) => ApiError::internal(&e),
        }
    }
}

impl From<tessera_catalog::CatalogError> for ApiError {
    fn from(e: tessera_catalog::CatalogError) -> ApiError {
        use tessera_catalog::CatalogError as C;
        match &e {
            C::NotFound { .. } => ApiError::not_found(e.to_string()),
            C::InvalidInput { message } => ApiError::invalid(message.clone()),
            _ => ApiError::internal(&e),
        }
    }
}

/// Builds the documented error responses (JSON `ErrorBody`; 429 with `Retry-After`).
fn refusal_map(
    entries: &[(u16, &str)],
) -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
    use utoipa::openapi::header::HeaderBuilder;
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder, Type, schema::ObjectBuilder};
    entries
        .iter()
        .map(|(status, description)| {
            let mut r = ResponseBuilder::new().description(*description).content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            );
            if *status == 429 {
                r = r.header(
                    "Retry-After",
                    HeaderBuilder::new()
                        .schema(ObjectBuilder::new().schema_type(Type::Integer))
                        .description(Some("Seconds until a retry can succeed"))
                        .build(),
                );
            }
            (status.to_string(), r.build().into())
        })
        .collect()
}

const UNAUTHORIZED: (u16, &str) = (
    401,
    "No valid credential (`no_credential`, `credential_expired`, `credential_revoked`)",
);
const TOO_MANY: (u16, &str) = (
    429,
    "Rate limited, or the license's quota is used up (`rate_limited`, `quota_exceeded`)",
);

/// The refusals every route under `/v1` can answer: 401 and 429.
#[derive(Debug)]
pub struct Refusals;

impl utoipa::IntoResponses for Refusals {
    fn responses()
    -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        refusal_map(&[UNAUTHORIZED, TOO_MANY])
    }
}

/// The refusals of the operators' routes: 401, 403 (`not_admin`) and 429.
#[derive(Debug)]
pub struct AdminRefusals;

impl utoipa::IntoResponses for AdminRefusals {
    fn responses()
    -> std::collections::BTreeMap<String, utoipa::openapi::RefOr<utoipa::openapi::Response>> {
        refusal_map(&[
            UNAUTHORIZED,
            (403, "Not an operator key (`not_admin`)"),
            TOO_MANY,
        ])
    }
}
