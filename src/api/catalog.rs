//! The catalog analysts browse before they query: the releases their licenses cover, each
//! release's manifest summary and data dictionary (only the tables and columns licensed to
//! them), and cohort counts with the license's small-cell suppression.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tessera_catalog::ReleaseRow;
use tessera_catalog::release::build::{ChecklistItem, Manifest};
use tessera_catalog::release::cohort::{CohortQuery, Criterion};
use tessera_licensing::decision::Request;
use tessera_licensing::output::{Cell, protect_counts};
use tessera_licensing::{ColumnGrant, License};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::auth::Caller;
use super::error::{ApiError, ApiResult, ErrorBody, Refusals};
use super::ops::PathParams;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_releases))
        .routes(routes!(get_release))
        .routes(routes!(get_dictionary))
        .routes(routes!(get_table))
        .routes(routes!(cohort_count))
}

/// A release version as listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseSummary {
    pub family: String,
    pub version: u32,
    /// The consent purpose the release was built for.
    pub purpose: String,
    pub built_at: String,
    /// Whether this is the newest version of its family.
    pub latest: bool,
    pub retired: bool,
    pub patients: usize,
    pub tables: Vec<String>,
    /// The caller's licenses that grant access to this version now.
    pub licenses: Vec<String>,
}

/// A release's manifest, summarized: what it holds and what was done to make it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReleaseDetail {
    #[serde(flatten)]
    pub summary: ReleaseSummary,
    pub consent_snapshot_at: String,
    pub policy_sha256: String,
    /// Patients of the catalog left out, by reason.
    pub patients_excluded: BTreeMap<String, usize>,
    pub date_handling: String,
    pub birth_years_pooled: usize,
    /// Per table and column, how many distinct rare codes were suppressed.
    pub rare_codes_suppressed: BTreeMap<String, BTreeMap<String, usize>>,
    /// The person table's de-identification report (k, levels, loss, risk).
    #[schema(value_type = Object)]
    pub person_deid: serde_json::Value,
    /// The event model: (k, k^m)-anonymity of the event tables, the columns each item is made
    /// of, and its report (items kept, generalized, suppressed; violations before and after;
    /// risk with m known items; NCP). Null for releases built before the event model.
    #[schema(value_type = Object)]
    pub events: serde_json::Value,
    /// The 18 HIPAA Safe Harbor identifier kinds and how the release handled each.
    pub safe_harbor: Vec<SafeHarborItem>,
    pub files: Vec<FileSummary>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SafeHarborItem {
    pub identifier: String,
    pub handling: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FileSummary {
    pub table: String,
    pub rows: usize,
    pub sha256: String,
}

/// One table of the data dictionary, with the columns the caller may see.
#[derive(Debug, Serialize, ToSchema)]
pub struct TableInfo {
    pub name: String,
    pub rows: usize,
    pub columns: Vec<ColumnInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ColumnInfo {
    pub name: String,
    /// Parquet/Arrow type.
    pub r#type: String,
    pub description: String,
    /// Declared public bounds of a numeric column, `[low, high]`: what a differentially
    /// private sum or mean clamps to when the query gives none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<f64>>)]
    pub bounds: Option<(f64, f64)>,
}

/// A cohort: persons meeting every criterion, counted, optionally by a person-table column.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CohortRequest {
    /// The license to count under; may be left out when the key is bound to one license.
    #[serde(default)]
    pub license: Option<String>,
    /// All must hold. None: every person of the release.
    #[serde(default)]
    pub criteria: Vec<CriterionBody>,
    /// A column of the `person` table to break the count down by.
    #[serde(default)]
    pub group_by: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CriterionBody {
    pub table: String,
    pub column: String,
    /// Persons with a row whose column (as text) is one of these.
    pub any_of: Vec<String>,
}

/// Counts after the license's output rules: cells under the minimum size are withheld
/// (`count` null, `suppressed` true), with a second cell withheld whenever one could be
/// derived from the total; counts are rounded when the license says so.
#[derive(Debug, Serialize, ToSchema)]
pub struct CohortResponse {
    pub family: String,
    pub version: u32,
    pub license: String,
    pub min_cell_size: u32,
    pub rounding_base: Option<u32>,
    pub total: Option<u64>,
    pub total_suppressed: bool,
    pub group_by: Option<String>,
    pub groups: Vec<Cell>,
    /// Under a license with a privacy budget: what the (last) answer cost, the noise's
    /// standard deviation per column (`stddev.persons`), the threshold groups had to reach,
    /// and the budget left.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub privacy: Option<serde_json::Value>,
}

/// A release the caller may see: its row, manifest, version numbers and covering licenses.
pub(super) struct Visible {
    pub row: ReleaseRow,
    pub manifest: Manifest,
    pub version: u32,
    pub latest: u32,
    pub licenses: Vec<License>,
}

/// The newest live version of each family.
fn latest_versions(rows: &[ReleaseRow]) -> BTreeMap<String, u32> {
    let mut latest = BTreeMap::new();
    for r in rows.iter().filter(|r| r.is_live()) {
        let v = latest.entry(r.family.clone()).or_insert(0u32);
        *v = (*v).max(r.version as u32);
    }
    latest
}

/// `latest` or a version number.
fn parse_version(text: &str) -> ApiResult<Option<u32>> {
    if text == "latest" {
        return Ok(None);
    }
    text.parse::<u32>()
        .map(Some)
        .map_err(|_| ApiError::invalid("the version is a number (1, 2, ...) or `latest`"))
}

impl AppState {
    /// Resolves a release for the caller; one they may not see is answered as absent.
    pub(super) async fn visible_release(
        &self,
        caller: &Caller,
        family: &str,
        version: &str,
    ) -> ApiResult<Visible> {
        let wanted = parse_version(version)?;
        let rows = self.catalog.releases().await?;
        let latest = latest_versions(&rows);
        let missing = || {
            ApiError::not_found(format!(
                "no release `{family}` version `{version}` is visible to you: GET /v1/releases lists what your licenses cover"
            ))
        };
        let family_latest = latest.get(family).copied();
        let version = match wanted {
            Some(v) => v,
            None => family_latest.ok_or_else(missing)?,
        };
        let row = rows
            .into_iter()
            .find(|r| r.family == family && r.version == i64::from(version))
            .ok_or_else(missing)?;
        let latest = family_latest.unwrap_or(0);
        let licenses: Vec<License> = self
            .usable_licenses(caller)
            .await?
            .into_iter()
            .filter(|l| l.covers(family, version, latest, &row.purpose))
            .collect();
        if caller.analyst().is_some() && (licenses.is_empty() || !row.is_live()) {
            return Err(missing());
        }
        let manifest = row.parsed_manifest()?;
        Ok(Visible {
            row,
            manifest,
            version,
            latest,
            licenses,
        })
    }
}

fn summary(v: &Visible) -> ReleaseSummary {
    ReleaseSummary {
        family: v.row.family.clone(),
        version: v.version,
        purpose: v.row.purpose.clone(),
        built_at: v.row.built_at.clone(),
        latest: v.version == v.latest,
        retired: !v.row.is_live(),
        patients: v.manifest.patients_included,
        tables: v.manifest.files.iter().map(|f| f.table.clone()).collect(),
        licenses: v.licenses.iter().map(|l| l.id.clone()).collect(),
    }
}

/// Whether any of the licenses lets the caller see `column` of `table` (operators see all).
fn may_see(caller: &Caller, licenses: &[License], table: &str, column: Option<&str>) -> bool {
    if caller.analyst().is_none() {
        return true;
    }
    licenses
        .iter()
        .any(|l| match (l.tables.get(table), column) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(g), Some(c)) => matches!(g, ColumnGrant::All) || g.allows(c),
        })
}

fn dictionary(caller: &Caller, v: &Visible) -> Vec<TableInfo> {
    v.manifest
        .files
        .iter()
        .filter(|f| may_see(caller, &v.licenses, &f.table, None))
        .map(|f| TableInfo {
            name: f.table.clone(),
            rows: f.rows,
            columns: f
                .columns
                .iter()
                .filter(|c| may_see(caller, &v.licenses, &f.table, Some(&c.name)))
                .map(|c| ColumnInfo {
                    name: c.name.clone(),
                    r#type: c.r#type.clone(),
                    description: c.description.clone(),
                    bounds: c.bounds,
                })
                .collect(),
        })
        .collect()
}

/// The releases the caller's licenses cover now (operators: every version, retired included).
#[utoipa::path(
    get, path = "/v1/releases", tag = "catalog",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Releases visible to the caller", body = Vec<ReleaseSummary>),
        Refusals,
    )
)]
pub async fn list_releases(
    State(state): State<AppState>,
    caller: Caller,
) -> ApiResult<Json<Vec<ReleaseSummary>>> {
    state
        .authorize(
            &caller,
            Request::BrowseCatalog,
            "list_releases",
            "releases".into(),
            None,
        )
        .await?;
    let rows = state.catalog.releases().await?;
    let latest = latest_versions(&rows);
    let usable = state.usable_licenses(&caller).await?;
    let mut out = Vec::new();
    for row in rows {
        let version = row.version as u32;
        let family_latest = latest.get(&row.family).copied().unwrap_or(0);
        let licenses: Vec<License> = usable
            .iter()
            .filter(|l| l.covers(&row.family, version, family_latest, &row.purpose))
            .cloned()
            .collect();
        if caller.analyst().is_some() && (licenses.is_empty() || !row.is_live()) {
            continue;
        }
        let manifest = row.parsed_manifest()?;
        out.push(summary(&Visible {
            row,
            manifest,
            version,
            latest: family_latest,
            licenses,
        }));
    }
    Ok(Json(out))
}

/// A release version's manifest summary.
#[utoipa::path(
    get, path = "/v1/releases/{family}/{version}", tag = "catalog",
    security(("bearer" = [])),
    params(
        ("family" = String, Path, description = "Release family", example = "demo-natural-history"),
        ("version" = String, Path, description = "Version number, or `latest`", example = "latest"),
    ),
    responses(
        (status = 200, description = "The manifest summary", body = ReleaseDetail),
        (status = 400, description = "Malformed version", body = ErrorBody),
        (status = 404, description = "No such release visible to the caller", body = ErrorBody),
        Refusals,
    )
)]
pub async fn get_release(
    State(state): State<AppState>,
    caller: Caller,
    PathParams((family, version)): PathParams<(String, String)>,
) -> ApiResult<Json<ReleaseDetail>> {
    state
        .authorize(
            &caller,
            Request::BrowseCatalog,
            "get_release",
            format!("{family}/{version}"),
            None,
        )
        .await?;
    let v = state.visible_release(&caller, &family, &version).await?;
    let m = &v.manifest;
    Ok(Json(ReleaseDetail {
        summary: summary(&v),
        consent_snapshot_at: m.consent_snapshot_at.clone(),
        policy_sha256: m.policy_sha256.clone(),
        patients_excluded: m.patients_excluded.clone(),
        date_handling: m.date_handling.clone(),
        birth_years_pooled: m.birth_years_pooled,
        rare_codes_suppressed: m.rare_codes_suppressed.clone(),
        person_deid: m.person_deid.clone(),
        events: m.events.clone(),
        safe_harbor: m
            .safe_harbor
            .iter()
            .map(
                |ChecklistItem {
                     identifier,
                     handling,
                 }| SafeHarborItem {
                    identifier: identifier.clone(),
                    handling: handling.clone(),
                },
            )
            .collect(),
        files: m
            .files
            .iter()
            .filter(|f| may_see(&caller, &v.licenses, &f.table, None))
            .map(|f| FileSummary {
                table: f.table.clone(),
                rows: f.rows,
                sha256: f.sha256.clone(),
            })
            .collect(),
    }))
}

/// The data dictionary: every table and column the caller's licenses cover, described.
#[utoipa::path(
    get, path = "/v1/releases/{family}/{version}/dictionary", tag = "catalog",
    security(("bearer" = [])),
    params(
        ("family" = String, Path, description = "Release family", example = "demo-natural-history"),
        ("version" = String, Path, description = "Version number, or `latest`", example = "latest"),
    ),
    responses(
        (status = 200, description = "Tables and their licensed columns", body = Vec<TableInfo>),
        (status = 400, description = "Malformed version", body = ErrorBody),
        (status = 404, description = "No such release visible to the caller", body = ErrorBody),
        Refusals,
    )
)]
pub async fn get_dictionary(
    State(state): State<AppState>,
    caller: Caller,
    PathParams((family, version)): PathParams<(String, String)>,
) -> ApiResult<Json<Vec<TableInfo>>> {
    state
        .authorize(
            &caller,
            Request::BrowseCatalog,
            "get_dictionary",
            format!("{family}/{version}"),
            None,
        )
        .await?;
    let v = state.visible_release(&caller, &family, &version).await?;
    Ok(Json(dictionary(&caller, &v)))
}

/// One table: its rows and the columns the caller may see, with types and descriptions.
#[utoipa::path(
    get, path = "/v1/releases/{family}/{version}/tables/{table}", tag = "catalog",
    security(("bearer" = [])),
    params(
        ("family" = String, Path, description = "Release family", example = "demo-natural-history"),
        ("version" = String, Path, description = "Version number, or `latest`", example = "latest"),
        ("table" = String, Path, description = "Table name", example = "person"),
    ),
    responses(
        (status = 200, description = "The table's licensed columns", body = TableInfo),
        (status = 400, description = "Malformed version", body = ErrorBody),
        (status = 404, description = "No such release or table visible to the caller", body = ErrorBody),
        Refusals,
    )
)]
pub async fn get_table(
    State(state): State<AppState>,
    caller: Caller,
    PathParams((family, version, table)): PathParams<(String, String, String)>,
) -> ApiResult<Json<TableInfo>> {
    state
        .authorize(
            &caller,
            Request::BrowseCatalog,
            "get_table",
            format!("{family}/{version}/{table}"),
            None,
        )
        .await?;
    let v = state.visible_release(&caller, &family, &version).await?;
    dictionary(&caller, &v)
        .into_iter()
        .find(|t| t.name == table)
        .map(Json)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no table `{table}` visible to you in {family} v{}: the dictionary lists them",
                v.version
            ))
        })
}

const MAX_CRITERIA: usize = 20;
const MAX_VALUES: usize = 1000;
const MAX_TEXT: usize = 200;

fn check_cohort(body: &CohortRequest) -> ApiResult<()> {
    if body.criteria.len() > MAX_CRITERIA {
        return Err(ApiError::invalid(format!(
            "at most {MAX_CRITERIA} criteria per cohort"
        )));
    }
    for (i, c) in body.criteria.iter().enumerate() {
        if c.any_of.is_empty() || c.any_of.len() > MAX_VALUES {
            return Err(ApiError::invalid(format!(
                "criteria[{i}].any_of: give 1 to {MAX_VALUES} values"
            )));
        }
        let long = [&c.table, &c.column]
            .into_iter()
            .chain(c.any_of.iter())
            .any(|s| s.len() > MAX_TEXT || s.is_empty());
        if long {
            return Err(ApiError::invalid(format!(
                "criteria[{i}]: names and values are 1 to {MAX_TEXT} characters"
            )));
        }
    }
    if body
        .group_by
        .as_ref()
        .is_some_and(|g| g.is_empty() || g.len() > MAX_TEXT)
    {
        return Err(ApiError::invalid(format!(
            "group_by: a column name of 1 to {MAX_TEXT} characters"
        )));
    }
    Ok(())
}

/// Counts the persons of a release meeting every criterion, under a license, with its
/// small-cell suppression and rounding. Metered against the license's rate limit and quota,
/// and audited with the number of cells and persons.
#[utoipa::path(
    post, path = "/v1/releases/{family}/{version}/cohort-count", tag = "catalog",
    security(("bearer" = [])),
    params(
        ("family" = String, Path, description = "Release family", example = "demo-natural-history"),
        ("version" = String, Path, description = "Version number, or `latest`", example = "latest"),
    ),
    request_body = CohortRequest,
    responses(
        (status = 200, description = "Protected counts", body = CohortResponse),
        (status = 400, description = "Malformed request", body = ErrorBody),
        (status = 403, description = "The license does not allow it", body = ErrorBody),
        (status = 404, description = "No such release, table or column visible to the caller", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        Refusals,
    )
)]
pub async fn cohort_count(
    State(state): State<AppState>,
    caller: Caller,
    PathParams((family, version)): PathParams<(String, String)>,
    super::ops::JsonBody(body): super::ops::JsonBody<CohortRequest>,
) -> ApiResult<Json<CohortResponse>> {
    check_cohort(&body)?;
    // The decision comes first and needs only the license and version numbers: a refusal
    // says nothing about whether the release exists.
    let wanted = parse_version(&version)?;
    let rows = state.catalog.releases().await?;
    let latest = latest_versions(&rows).get(&family).copied().unwrap_or(0);
    let number = wanted.unwrap_or(latest);
    // The live version asked for; an absent one is refused by the decision as not covered.
    let row = rows
        .into_iter()
        .find(|r| r.family == family && r.version == i64::from(number) && r.is_live());
    let license = match (&body.license, caller.analyst()) {
        (Some(l), _) => l.clone(),
        (None, Some((_, [only]))) => only.clone(),
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "this key is bound to several licenses: name one in `license`",
            ));
        }
        (None, None) => String::new(),
    };
    // A license with a privacy budget counts through the query service's noisy aggregates
    // (which decide, audit and meter the query themselves).
    if caller.analyst().is_some()
        && let Some(l) = state.gate.store().find_license(&license).await?
        && l.output.privacy.is_some()
    {
        let min_cell = l.output.min_cell_size;
        return dp_cohort_count(&state, &caller, (family, number), license, min_cell, body).await;
    }
    let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let person = tables.entry("person".into()).or_default();
    person.push("person_id".into());
    if let Some(g) = &body.group_by {
        person.push(g.clone());
    }
    for c in &body.criteria {
        let t = tables.entry(c.table.clone()).or_default();
        t.push("person_id".into());
        t.push(c.column.clone());
    }
    let canonical = serde_json::to_string(&body).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    let allowed = state
        .authorize(
            &caller,
            Request::RunQuery {
                license: license.clone(),
                family: family.clone(),
                version: number,
                latest_version: latest,
                release_purpose: row.as_ref().map(|r| r.purpose.clone()),
                tables: tables.into_iter().collect(),
                row_level: false,
            },
            "cohort_count",
            format!("{family}/v{number}"),
            Some(hex::encode(digest.as_ref())),
        )
        .await?;
    let rules = allowed
        .license
        .as_ref()
        .map(|l| l.output.clone())
        .ok_or_else(|| ApiError::internal(&"an allowed query without its license"))?;
    let query = CohortQuery {
        criteria: body
            .criteria
            .iter()
            .map(|c| Criterion {
                table: c.table.clone(),
                column: c.column.clone(),
                any_of: c.any_of.clone(),
            })
            .collect(),
        group_by: body.group_by.clone(),
    };
    let row = row.ok_or_else(|| ApiError::internal(&"an allowed query of an absent release"))?;
    let counts = state.catalog.cohort_count(&row, query).await?;
    let protected = protect_counts(counts.total, &counts.groups, &rules);
    let cells = protected.cells.len().max(1) as u64;
    if state.config.enforce {
        state
            .gate
            .record_result(&allowed, cells, Some(counts.total), Utc::now())
            .await?;
    }
    Ok(Json(CohortResponse {
        family,
        version: number,
        license,
        min_cell_size: rules.min_cell_size,
        rounding_base: rules.rounding_base,
        total: protected.total,
        total_suppressed: protected.total_suppressed,
        group_by: body.group_by,
        groups: protected.cells,
        privacy: None,
    }))
}

/// A cohort count under a license with a privacy budget: the criteria as SQL over the
/// release's tables (names checked, values bound as parameters), answered by the query
/// service's differentially private aggregates. The total and the breakdown are two answers,
/// each charged once (and free when repeated). Noisy counts below zero are shown as zero;
/// groups under the noisy threshold are left out, not marked suppressed.
async fn dp_cohort_count(
    state: &AppState,
    caller: &Caller,
    (family, version): (String, u32),
    license: String,
    min_cell: u32,
    body: CohortRequest,
) -> ApiResult<Json<CohortResponse>> {
    use tessera_query::arrow::array::{Array, AsArray};
    use tessera_query::arrow::datatypes::Int64Type;
    let service = super::cohorts::service(state)?;
    let name = |n: &str, what: &str| -> ApiResult<String> {
        if n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !n.is_empty()
        {
            Ok(format!("\"{n}\""))
        } else {
            Err(ApiError::invalid(format!(
                "{what} `{n}`: a table or column name of lowercase letters, digits and `_`"
            )))
        }
    };
    let schema = format!(
        "\"{}\".\"{}\"",
        tessera_query::session::CATALOG,
        tessera_query::session::schema_name(&family)
    );
    let mut filters = Vec::new();
    let mut params = Vec::new();
    for (i, c) in body.criteria.iter().enumerate() {
        let table = name(&c.table, &format!("criteria[{i}].table"))?;
        let column = name(&c.column, &format!("criteria[{i}].column"))?;
        let mut values = Vec::new();
        for v in &c.any_of {
            params.push(tessera_query::datafusion::common::ScalarValue::Utf8(Some(
                v.clone(),
            )));
            values.push(format!("${}", params.len()));
        }
        filters.push(format!(
            "p.person_id IN (SELECT person_id FROM {schema}.{table} WHERE CAST({column} AS VARCHAR) IN ({}))",
            values.join(", ")
        ));
    }
    let filter = if filters.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", filters.join(" AND "))
    };
    let count = |group: Option<&str>| {
        let (select, by) = match group {
            Some(g) => (
                format!("CAST(p.{g} AS VARCHAR) AS label, "),
                format!(" GROUP BY CAST(p.{g} AS VARCHAR)"),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "SELECT {select}count(DISTINCT p.person_id) AS persons FROM {schema}.\"person\" p{filter}{by}"
        )
    };
    let named = license.as_str();
    let run = |sql: String, params: Vec<tessera_query::datafusion::common::ScalarValue>| async move {
        service
            .query_with(caller.credential.as_ref(), Some(named), &sql, params)
            .await
            .map_err(super::cohorts::from_service)
    };
    let clamp = |n: i64| n.max(0) as u64;
    let total_out = run(count(None), params.clone()).await?;
    let total = total_out
        .batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .and_then(|b| b.column_by_name("persons").cloned())
        .and_then(|a| a.as_primitive_opt::<Int64Type>().map(|a| clamp(a.value(0))));
    let mut privacy = total_out.privacy;
    let mut groups = Vec::new();
    if let Some(g) = &body.group_by {
        let g = name(g, "group_by")?;
        let out = run(count(Some(&g)), params).await?;
        for b in &out.batches {
            let (Some(labels), Some(counts)) =
                (b.column_by_name("label"), b.column_by_name("persons"))
            else {
                continue;
            };
            let labels = tessera_query::arrow::compute::cast(
                labels,
                &tessera_query::arrow::datatypes::DataType::Utf8,
            )
            .map_err(|e| ApiError::internal(&e))?;
            let labels = labels.as_string::<i32>();
            if let Some(counts) = counts.as_primitive_opt::<Int64Type>() {
                for i in 0..b.num_rows() {
                    groups.push(Cell {
                        label: if labels.is_valid(i) {
                            labels.value(i).to_string()
                        } else {
                            "(none)".into()
                        },
                        count: Some(clamp(counts.value(i))),
                        suppressed: false,
                    });
                }
            }
        }
        privacy = out.privacy.or(privacy);
    }
    Ok(Json(CohortResponse {
        family,
        version,
        license,
        min_cell_size: min_cell,
        rounding_base: None,
        total,
        total_suppressed: false,
        group_by: body.group_by,
        groups,
        privacy: privacy.map(|p| serde_json::to_value(p).unwrap_or_default()),
    }))
}
