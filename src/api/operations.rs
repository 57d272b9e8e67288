//! Operators' view of the platform and their release and payout actions (`/v1/admin/...`):
//! counts of patients and consents (no identities), the quarantine with its reasons, release
//! builds and retirement, payouts (pending, held and why) and reconciliation. Each needs an
//! operator key and is one audited decision, like the rest of `admin`; the operator console
//! calls these same handlers, and the CLI twins (`tessera stats`, `quarantine list`,
//! `release build|retire`, `payouts reconcile`) call the same crate functions.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tessera_catalog::{Purpose, ReleaseRequest};
use tessera_licensing::decision::AdminAction;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::admin::admin;
use super::auth::Caller;
use super::error::{AdminRefusals, ApiError, ApiResult, ErrorBody};
use super::ops::{JsonBody, PathParams, QueryParams};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(overview))
        .routes(routes!(quarantine))
        .routes(routes!(list_builds, build_release))
        .routes(routes!(retire_release))
        .routes(routes!(payouts_view))
        .routes(routes!(reconcile))
}

/// Where release builds write and which policies they may use (set by `tessera serve`).
#[derive(Debug)]
pub struct Operations {
    pub releases_dir: PathBuf,
    /// Policies operators may build with: the `.toml` files of this folder, by file name.
    pub policies_dir: PathBuf,
    /// The Flight SQL address, for the analyst console's connection snippets.
    pub flight_sql: String,
    builds: Mutex<Vec<BuildJob>>,
}

impl Operations {
    pub fn new(releases_dir: PathBuf, policies_dir: PathBuf, flight_sql: String) -> Operations {
        Operations {
            releases_dir,
            policies_dir,
            flight_sql,
            builds: Mutex::new(Vec::new()),
        }
    }

    /// The policy files operators can choose from, by name.
    pub fn policies(&self) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(&self.policies_dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.ends_with(".toml"))
            .collect();
        out.sort();
        out
    }

    fn jobs(&self) -> Vec<BuildJob> {
        self.builds.lock().map(|b| b.clone()).unwrap_or_default()
    }

    fn update(&self, id: usize, f: impl FnOnce(&mut BuildJob)) {
        if let Ok(mut b) = self.builds.lock()
            && let Some(j) = b.iter_mut().find(|j| j.id == id)
        {
            f(j);
        }
    }
}

fn operations(state: &AppState) -> ApiResult<&Operations> {
    state.operations.get().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "release builds are not configured on this server (`tessera serve` configures them)",
        )
    })
}

/// Counts, without identities.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    pub patients: i64,
    /// Patients whose consent for the purpose is in force now.
    pub consents: BTreeMap<String, usize>,
    /// Quarantined files and entries, by reason code.
    pub quarantine: BTreeMap<String, usize>,
    pub releases: usize,
    pub organizations: usize,
    /// Licenses by status.
    pub licenses: BTreeMap<String, usize>,
}

/// Patients, consents, quarantine, releases and licenses, counted.
#[utoipa::path(get, path = "/v1/admin/overview", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Counts", body = Overview),
        AdminRefusals,
    ))]
pub async fn overview(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Overview>> {
    admin(
        &state,
        &caller,
        AdminAction::Operate,
        "overview",
        "platform".into(),
    )
    .await?;
    let now = Utc::now();
    let mut consents = BTreeMap::new();
    for p in tessera_catalog::consent::KNOWN_PURPOSES {
        let purpose = Purpose::parse(p)?;
        consents.insert(
            p.to_string(),
            state.catalog.consented_patients(&purpose, now).await?.len(),
        );
    }
    let mut quarantine = BTreeMap::new();
    for (reason, n) in state.catalog.count_quarantine_by_reason().await? {
        *quarantine.entry(reason).or_insert(0) += n as usize;
    }
    let store = state.gate.store();
    let mut licenses = BTreeMap::new();
    for (l, _) in store.licenses(None).await? {
        let status = serde_json::to_value(l.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        *licenses.entry(status).or_insert(0) += 1;
    }
    Ok(Json(Overview {
        patients: state.catalog.count_patients().await?,
        consents,
        quarantine,
        releases: state.catalog.releases().await?.len(),
        organizations: store.organizations().await?.len(),
        licenses,
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Limit {
    /// At most this many, most recent first (1 to 1000, default 200).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// A quarantined file or entry. The file is named by its SHA-256: file names can carry a
/// patient's name (Synthea's do), so they stay sealed and out of this answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Quarantined {
    pub id: String,
    pub file_sha256: String,
    pub entry: Option<i64>,
    pub field: String,
    pub reason: String,
    pub message: String,
    pub first_seen_at: String,
    pub last_seen_at: String,
}

/// The quarantine: what was refused at ingest, and why.
#[utoipa::path(get, path = "/v1/admin/quarantine", tag = "admin", security(("bearer" = [])),
    params(Limit),
    responses(
        (status = 200, description = "Entries", body = Vec<Quarantined>),
        (status = 400, description = "Invalid limit", body = ErrorBody),
        AdminRefusals,
    ))]
pub async fn quarantine(
    State(state): State<AppState>,
    caller: Caller,
    QueryParams(q): QueryParams<Limit>,
) -> ApiResult<Json<Vec<Quarantined>>> {
    admin(
        &state,
        &caller,
        AdminAction::Operate,
        "read_quarantine",
        "quarantine".into(),
    )
    .await?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit: 1 to 1000"));
    }
    Ok(Json(
        state
            .catalog
            .quarantine(i64::from(limit))
            .await?
            .into_iter()
            .map(|q| Quarantined {
                id: q.id,
                file_sha256: q.file_sha256,
                entry: q.entry,
                field: q.field,
                reason: q.reason,
                message: q.message,
                first_seen_at: q.first_seen_at,
                last_seen_at: q.last_seen_at,
            })
            .collect(),
    ))
}

/// A release build started from the API or the console.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BuildJob {
    pub id: usize,
    pub family: String,
    pub purpose: String,
    pub policy: String,
    /// `running`, `built` or `failed`.
    pub status: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// The version built.
    pub version: Option<u32>,
    /// Why it failed (no identified data: the catalog's errors name counts and ids).
    pub error: Option<String>,
}

/// Release builds since the server started, newest first, and the policies to build with.
#[derive(Debug, Serialize, ToSchema)]
pub struct Builds {
    pub policies: Vec<String>,
    pub builds: Vec<BuildJob>,
}

/// Release builds started on this server, and the policies they can use.
#[utoipa::path(get, path = "/v1/admin/releases/builds", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Builds", body = Builds),
        AdminRefusals,
    ))]
pub async fn list_builds(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Builds>> {
    admin(
        &state,
        &caller,
        AdminAction::ManageReleases,
        "list_builds",
        "releases".into(),
    )
    .await?;
    let ops = operations(&state)?;
    let mut builds = ops.jobs();
    builds.reverse();
    Ok(Json(Builds {
        policies: ops.policies(),
        builds,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBuild {
    /// The release family (lowercase letters, digits, `-`, `_`, `.`).
    pub family: String,
    /// The consent purpose, e.g. `research.natural_history`.
    pub purpose: String,
    /// A policy file name from `GET /v1/admin/releases/builds`.
    pub policy: String,
}

/// Starts building the next version of a release family; it runs in the background
/// (`GET /v1/admin/releases/builds` follows it).
#[utoipa::path(post, path = "/v1/admin/releases/builds", tag = "admin", security(("bearer" = [])),
    request_body = NewBuild,
    responses(
        (status = 202, description = "Started", body = BuildJob),
        (status = 400, description = "Invalid", body = ErrorBody),
        (status = 409, description = "A build of that family is running", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        AdminRefusals,
    ))]
pub async fn build_release(
    State(state): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<NewBuild>,
) -> ApiResult<(StatusCode, Json<BuildJob>)> {
    admin(
        &state,
        &caller,
        AdminAction::ManageReleases,
        "build_release",
        format!("release/{}", body.family),
    )
    .await?;
    let ops = operations(&state)?;
    let purpose = Purpose::parse(&body.purpose)?;
    if !ops.policies().contains(&body.policy) {
        return Err(ApiError::invalid(format!(
            "policy: one of {}",
            ops.policies().join(", ")
        )));
    }
    let path = ops.policies_dir.join(&body.policy);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ApiError::invalid(format!("policy {}: {e}", body.policy)))?;
    let policy = tessera_deid::policy::Policy::from_file(&path)
        .map_err(|e| ApiError::invalid(format!("policy {}: {e}", body.policy)))?;
    tessera_catalog::check_release_request(&body.family, &policy)?;
    let job = {
        let mut b = ops
            .builds
            .lock()
            .map_err(|_| ApiError::internal(&"the build list lock is poisoned"))?;
        if b.iter()
            .any(|j| j.family == body.family && j.status == "running")
        {
            return Err(ApiError::conflict(format!(
                "a build of `{}` is running: wait for it (GET /v1/admin/releases/builds)",
                body.family
            )));
        }
        let job = BuildJob {
            id: b.len() + 1,
            family: body.family.clone(),
            purpose: body.purpose.clone(),
            policy: body.policy.clone(),
            status: "running".into(),
            started_at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            finished_at: None,
            version: None,
            error: None,
        };
        b.push(job.clone());
        job
    };
    let id = job.id;
    let st = state.clone();
    tokio::spawn(async move {
        let Some(ops) = st.operations.get() else {
            return;
        };
        let result = st
            .catalog
            .build_release(&ReleaseRequest {
                family: &body.family,
                purpose: &purpose,
                policy: &policy,
                policy_text: &text,
                releases_dir: &ops.releases_dir,
            })
            .await;
        let done = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        match result {
            Ok((_, manifest)) => {
                tracing::info!(family = %body.family, version = manifest.version, "release built from the API");
                ops.update(id, |j| {
                    j.status = "built".into();
                    j.version = Some(manifest.version);
                    j.finished_at = Some(done);
                });
            }
            Err(e) => {
                tracing::warn!(family = %body.family, error = %e, "release build from the API failed");
                ops.update(id, |j| {
                    j.status = "failed".into();
                    j.error = Some(e.to_string());
                    j.finished_at = Some(done);
                });
            }
        }
    });
    Ok((StatusCode::ACCEPTED, Json(job)))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Retired {
    pub family: String,
    pub version: u32,
    pub retired: bool,
}

/// Retires a release version: kept on disk for audit, no longer offered or queried.
#[utoipa::path(post, path = "/v1/admin/releases/{family}/{version}/retirement", tag = "admin", security(("bearer" = [])),
    params(
        ("family" = String, Path, description = "Release family"),
        ("version" = u32, Path, description = "Version"),
    ),
    responses(
        (status = 200, description = "Retired", body = Retired),
        (status = 400, description = "The version is not a number", body = ErrorBody),
        (status = 404, description = "No such version", body = ErrorBody),
        AdminRefusals,
    ))]
pub async fn retire_release(
    State(state): State<AppState>,
    caller: Caller,
    PathParams((family, version)): PathParams<(String, u32)>,
) -> ApiResult<Json<Retired>> {
    admin(
        &state,
        &caller,
        AdminAction::ManageReleases,
        "retire_release",
        format!("release/{family}/{version}"),
    )
    .await?;
    state
        .catalog
        .retire_release(&family, i64::from(version))
        .await?;
    Ok(Json(Retired {
        family,
        version,
        retired: true,
    }))
}

/// A payout as operators see it: the patient by their internal (random) id, never a name.
#[derive(Debug, Serialize, ToSchema)]
pub struct PayoutLine {
    pub id: String,
    pub patient: String,
    pub rail: String,
    pub kind: String,
    pub amount_minor: i64,
    pub currency: String,
    pub status: String,
    pub attempts: i64,
    pub failure: Option<String>,
    pub created_at: String,
}

/// Payouts by status, the most recent ones, and the patients whose balances are held.
#[derive(Debug, Serialize, ToSchema)]
pub struct PayoutsView {
    /// Payouts by status (`pending`, `submitted`, `paid`, `failed`, ...).
    pub by_status: BTreeMap<String, usize>,
    /// The 100 most recent.
    pub recent: Vec<PayoutLine>,
    /// Patients with an available balance, by what holds their payout (one patient can be
    /// held for several reasons; `none` means the next run pays them).
    pub holds: BTreeMap<String, usize>,
    /// Available balances awaiting payout, in minor units.
    pub available_minor: i64,
    /// The ledger's own check: empty when every transaction balances.
    pub ledger_problems: Vec<String>,
}

fn payouts_service(state: &AppState) -> ApiResult<&super::patients::PatientServices> {
    state.patients.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "payouts are not configured on this server",
        )
    })
}

fn payouts_failed(e: tessera_payouts::PayoutsError) -> ApiError {
    ApiError::internal(&e)
}

/// Payouts pending, made and held (and why).
#[utoipa::path(get, path = "/v1/admin/payouts", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "Payouts", body = PayoutsView),
        AdminRefusals,
    ))]
pub async fn payouts_view(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<PayoutsView>> {
    admin(
        &state,
        &caller,
        AdminAction::Operate,
        "read_payouts",
        "payouts".into(),
    )
    .await?;
    let svc = payouts_service(&state)?;
    let all = svc.payouts.payouts(None).await.map_err(payouts_failed)?;
    let mut by_status = BTreeMap::new();
    for p in &all {
        *by_status.entry(p.status.clone()).or_insert(0) += 1;
    }
    let mut newest: Vec<&tessera_payouts::payout::PayoutRow> = all.iter().collect();
    newest.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    let recent: Vec<PayoutLine> = newest
        .into_iter()
        .take(100)
        .map(|p| PayoutLine {
            id: p.id.clone(),
            patient: p.patient.clone(),
            rail: p.rail.clone(),
            kind: p.kind.clone(),
            amount_minor: p.amount.minor,
            currency: p.amount.currency.to_string(),
            status: p.status.clone(),
            attempts: p.attempts,
            failure: p.failure.clone(),
            created_at: p.created_at.clone(),
        })
        .collect();
    let today = Utc::now().date_naive();
    let mut holds = BTreeMap::new();
    let mut available_minor = 0;
    for b in svc.payouts.balances().await.map_err(payouts_failed)? {
        if b.kind != "available" || b.balance <= 0 {
            continue;
        }
        available_minor += b.balance;
        let reasons = svc
            .payouts
            .holds(&b.owner, today, &svc.rails)
            .await
            .map_err(payouts_failed)?;
        if reasons.is_empty() {
            *holds.entry("none".to_string()).or_insert(0) += 1;
        }
        for h in reasons {
            let code = serde_json::to_value(&h)
                .ok()
                .and_then(|v| v["hold"].as_str().map(str::to_string))
                .unwrap_or_else(|| "other".into());
            *holds.entry(code).or_insert(0) += 1;
        }
    }
    Ok(Json(PayoutsView {
        by_status,
        recent,
        holds,
        available_minor,
        ledger_problems: svc.payouts.verify_ledger().await.map_err(payouts_failed)?,
    }))
}

/// Compares the ledger with the providers' records (and with itself) now.
#[utoipa::path(post, path = "/v1/admin/payouts/reconciliation", tag = "admin", security(("bearer" = [])),
    responses(
        (status = 200, description = "What reconciliation found", body = Reconciliation),
        AdminRefusals,
    ))]
pub async fn reconcile(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Reconciliation>> {
    admin(
        &state,
        &caller,
        AdminAction::Operate,
        "reconcile_payouts",
        "payouts".into(),
    )
    .await?;
    let svc = payouts_service(&state)?;
    let r = svc
        .payouts
        .reconcile(&svc.rails)
        .await
        .map_err(payouts_failed)?;
    Ok(Json(Reconciliation {
        payouts_checked: r.payouts_checked,
        provider_records: r.provider_records,
        differences: r
            .differences
            .into_iter()
            .map(|d| Difference {
                kind: d.kind,
                subject: d.subject,
                detail: d.detail,
            })
            .collect(),
    }))
}

/// What reconciliation found.
#[derive(Debug, Serialize, ToSchema)]
pub struct Reconciliation {
    pub payouts_checked: usize,
    pub provider_records: usize,
    pub differences: Vec<Difference>,
}

/// One difference between the ledger and a provider (or within the ledger).
#[derive(Debug, Serialize, ToSchema)]
pub struct Difference {
    /// `ledger`, `missing_at_provider`, `amount_mismatch`, `paid_at_provider_not_posted`,
    /// `failed_at_provider`, `unknown_to_ledger`, `clearing_mismatch`, `unallocated_pool`,
    /// `provider_unreachable`, `funds_overdrawn`.
    pub kind: String,
    /// A payout, account or provider id.
    pub subject: String,
    pub detail: String,
}
