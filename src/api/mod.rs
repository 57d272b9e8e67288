//! The HTTP API (axum, JSON): the catalog analysts browse before they query, their licenses
//! and usage, operators' administration, and the service's health, metrics and OpenAPI
//! document. Every request under `/v1` goes through [`auth::Caller`] (credential, per-credential
//! rate limit) and one audited authorization decision (`tessera_licensing::gate`).
//!
//! Limits: request bodies over [`ApiConfig::body_limit`] are refused with 413, requests taking
//! longer than [`ApiConfig::request_timeout`] with 503 `timeout`; both as JSON errors.

pub mod admin;
pub mod auth;
pub mod catalog;
pub mod cohorts;
pub mod console;
pub mod deletion;
pub mod error;
pub mod getting_paid;
pub mod keys;
pub mod licenses;
pub mod me;
pub mod operations;
pub mod ops;
pub mod passkeys;
pub mod patients;
pub mod providers;
pub mod shares;
pub mod surveys;
pub mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use ring::signature::Ed25519KeyPair;
use tessera_catalog::Catalog;
use tessera_licensing::gate::Gate;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use error::ApiError;

/// Limits and switches of the HTTP service.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Longest a request may take.
    pub request_timeout: Duration,
    /// Sustained requests per second per credential (or per address without one).
    pub requests_per_second: u32,
    /// Requests a credential may send at once above the sustained rate.
    pub burst: u32,
    /// Authorization and audit. Only the benchmark turns this off, to measure their cost; no
    /// command-line flag or setting reaches it.
    pub enforce: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            body_limit: 64 * 1024,
            request_timeout: Duration::from_secs(30),
            requests_per_second: 20,
            burst: 40,
            enforce: true,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub catalog: Catalog,
    pub gate: Gate,
    /// The platform's countersigning key and its public half (hex).
    pub platform: (Ed25519KeyPair, String),
    /// The pepper API keys are hashed under (for issuing keys).
    pub pepper: Vec<u8>,
    pub limiter: DefaultKeyedRateLimiter<String>,
    pub metrics: Metrics,
    pub config: ApiConfig,
    /// Payouts, the patients' pages and the providers' webhooks (absent in the HTTP benchmark).
    pub patients: Option<patients::PatientServices>,
    /// The query service, for saved cohorts (absent in the HTTP benchmark).
    pub query: Option<tessera_query::QueryService>,
    /// Release builds from the API and the operator console (set by `tessera serve`).
    pub operations: std::sync::OnceLock<operations::Operations>,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(
        catalog: Catalog,
        gate: Gate,
        platform: (Ed25519KeyPair, String),
        pepper: Vec<u8>,
        config: ApiConfig,
        patients: Option<patients::PatientServices>,
        query: Option<tessera_query::QueryService>,
    ) -> AppState {
        let per_second =
            NonZeroU32::new(config.requests_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        AppState(Arc::new(Inner {
            catalog,
            gate,
            platform,
            pepper,
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            metrics: Metrics::new(),
            config,
            patients,
            query,
            operations: std::sync::OnceLock::new(),
        }))
    }

    /// Lets operators build releases into `releases_dir` with the policies of `policies_dir`.
    /// `flight_sql` is the Flight SQL address the analyst console's connection snippets show.
    pub fn with_operations(
        self,
        releases_dir: std::path::PathBuf,
        policies_dir: std::path::PathBuf,
        flight_sql: String,
    ) -> AppState {
        let _ = self.0.operations.set(operations::Operations::new(
            releases_dir,
            policies_dir,
            flight_sql,
        ));
        self
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    decision: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Prometheus metrics. Labels are route templates, methods, status codes and decision codes:
/// never a path with ids in it, never anything about a patient.
pub struct Metrics {
    registry: Registry,
    requests: Family<HttpLabels, Counter>,
    durations: HistogramFamily,
    decisions: Family<DecisionLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<HttpLabels, Counter>::default();
        let durations: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "tessera_http_requests",
            "HTTP requests answered, by method, route template and status",
            requests.clone(),
        );
        registry.register(
            "tessera_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template",
            durations.clone(),
        );
        registry.register(
            "tessera_authorization_decisions",
            "Authorization decisions: allow, or the reason code of a denial",
            decisions.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            decisions,
        }
    }

    pub fn decision(&self, code: &str) {
        self.decisions
            .get_or_create(&DecisionLabels {
                decision: code.to_string(),
            })
            .inc();
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

/// Records each request's route, status and duration.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .durations
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .get_or_create(&HttpLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// Answers 503 `timeout` when a request takes longer than the configured limit.
async fn time_limit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let limit = state.config.request_timeout;
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                format!(
                    "the request took longer than {} s and was stopped: narrow it, or retry later",
                    limit.as_secs()
                ),
            );
            e.retry_after = Some(5);
            e.into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint: /openapi.json lists them")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method: /openapi.json lists what it takes",
    )
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tessera API",
        description = "Catalog of de-identified research releases, data-use licenses and their usage, and administration. Authenticate with `Authorization: Bearer <API key>`; errors are JSON with a stable `code`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "catalog", description = "Releases, tables, the data dictionary and cohort counts"),
        (name = "cohorts", description = "Saved cohort definitions, evaluated as tables in the license's Flight SQL sessions"),
        (name = "licenses", description = "The caller's licenses, usage and remaining quota"),
        (name = "admin", description = "Organizations, licenses, signatures, keys and the audit log (operator keys)"),
        (name = "ops", description = "Health, readiness and metrics")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("tsk_<id>_<secret>")
                    .build(),
            ),
        );
    }
}

/// The router and the OpenAPI document generated from its handlers.
pub fn router(state: AppState) -> (Router, utoipa::openapi::OpenApi) {
    let (api, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(catalog::routes())
        .merge(cohorts::routes())
        .merge(licenses::routes())
        .merge(keys::routes())
        .merge(admin::routes())
        .merge(operations::routes())
        .merge(ops::routes())
        .split_for_parts();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    let document = Arc::new(doc.to_pretty_json().unwrap_or_default());
    let served = document.clone();
    let router = api
        .merge(patients::routes())
        .merge(me::routes())
        .merge(deletion::routes())
        .merge(getting_paid::routes())
        .merge(providers::routes())
        .merge(passkeys::routes())
        .merge(shares::routes())
        .merge(surveys::routes())
        .merge(console::routes(state.clone()))
        .route(
            "/openapi.json",
            axum::routing::get(move || {
                let d = served.clone();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        d.as_ref().clone(),
                    )
                }
            }),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), time_limit))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state);
    (router, doc)
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes the requests in
/// flight and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (router, _) = router(state.clone());
    // Forget idle rate-limit buckets now and then, so memory follows the active callers.
    let sweeper = {
        let state = state.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                state.limiter.retain_recent();
                state.limiter.shrink_to_fit();
            }
        })
    };
    let result = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await;
    sweeper.abort();
    result
}
