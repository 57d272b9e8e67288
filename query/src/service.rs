//! The query service's core, below any transport (Flight SQL calls it): a presented key, the
//! license it names and SQL in; an audited decision, a session built from the license, the
//! output rules, and metering out.
//!
//! The decision is `tessera_licensing::gate`'s, asked about what the plan actually reads (the
//! release family and version, the tables and, after projection push-down, the columns), never
//! about the SQL text. Sessions only hold what the license grants, so the decision and the
//! session agree by construction; the decision adds the key, the license's status and term, the
//! purpose, the rate limit and the quotas.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use datafusion::common::ScalarValue;
use tessera_catalog::release::build::Manifest;
use tessera_catalog::{Catalog, Purpose};
use tessera_licensing::decision::{Credential, Decision, Principal, Request, Usage, decide};
use tessera_licensing::gate::{Ask, Gate};
use tessera_licensing::privacy::{BudgetView, PrivacyTerms, Rho};
use tessera_licensing::store::{Answer, Spend};
use tessera_licensing::{AccessMode, License, Reason, VersionPin};

use crate::cohort::CohortDefinition;
use crate::session::{QueryError, QueryOutput, ReleaseSource, Scope, Session, schema_name};

/// Per-query resource limits, and the differencing limits of aggregate-only licenses.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory: usize,
    pub time: Duration,
    pub differencing: Differencing,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 1 << 30,
            time: Duration::from_secs(120),
            differencing: Differencing::default(),
        }
    }
}

/// How often an aggregate-only license may run the same aggregate, or a near-identical one (the
/// same plan with other literal values), within a window, before further runs are refused.
/// Subtracting the answers of near-identical aggregates (`age >= 40` and `age >= 41`) reveals
/// the small cells suppression withholds; i2b2 locks a user out after 7 repeats of a query in
/// 30 days.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Differencing {
    /// Runs of the same aggregate allowed per window (i2b2: 7).
    pub same: u64,
    /// Runs of aggregates of one shape allowed per window. Higher than `same`, because an
    /// analyst comparing a few dozen codes is ordinary work, while a sweep over a literal (what
    /// differencing needs) takes many.
    pub near: u64,
    pub window: chrono::Duration,
}

impl Default for Differencing {
    fn default() -> Self {
        Differencing {
            same: 7,
            near: 50,
            window: chrono::Duration::days(30),
        }
    }
}

/// A cohort saved under a license, with its size as the license's output rules let it show.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SavedCohortReport {
    pub license: String,
    pub family: String,
    /// The table it is exposed as in the family's schema.
    pub table: String,
    /// Persons in the cohort now (rounded as the license says); `None` when withheld as a
    /// small cell.
    pub persons: Option<u64>,
    pub suppressed: bool,
    pub definition: CohortDefinition,
}

/// What a statement answers with and the parameters it takes.
#[derive(Debug, Clone)]
pub struct Described {
    pub schema: datafusion::arrow::datatypes::SchemaRef,
    pub parameters: datafusion::arrow::datatypes::SchemaRef,
}

/// Why a query was not answered.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The authorization decision refused it (audited).
    #[error("{}", .reason.message())]
    Denied {
        reason: Reason,
        retry_after: Option<DateTime<Utc>>,
    },
    /// The key is bound to several licenses and the request named none.
    #[error("this key is bound to several licenses ({0}): name the one to query under")]
    LicenseRequired(String),
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{0}")]
    Store(String),
}

impl From<tessera_licensing::store::StoreError> for ServiceError {
    fn from(e: tessera_licensing::store::StoreError) -> Self {
        ServiceError::Store(e.to_string())
    }
}

impl From<tessera_catalog::CatalogError> for ServiceError {
    fn from(e: tessera_catalog::CatalogError) -> Self {
        ServiceError::Store(e.to_string())
    }
}

/// Where a license's release versions come from.
#[async_trait::async_trait]
pub trait Releases: std::fmt::Debug + Send + Sync {
    /// The live release versions `license` covers that were built for its purpose, each with
    /// the persons whose consent no longer covers that purpose at `now`.
    async fn covered(
        &self,
        license: &License,
        now: DateTime<Utc>,
    ) -> Result<Vec<ReleaseSource>, ServiceError>;
}

/// The releases of a catalog, with the live consent registry.
#[derive(Debug, Clone)]
pub struct CatalogReleases {
    catalog: Catalog,
    /// The persons of each release version (family, version), read once from its files:
    /// versions are immutable.
    persons: Arc<Mutex<HashMap<(String, u32), Persons>>>,
}

/// The `person_id`s of one release version.
type Persons = Arc<HashSet<String>>;

impl CatalogReleases {
    pub fn new(catalog: Catalog) -> CatalogReleases {
        CatalogReleases {
            catalog,
            persons: Arc::default(),
        }
    }

    /// Every `person_id` in any table of a release version.
    async fn persons_of(
        &self,
        family: &str,
        version: u32,
        dir: &std::path::Path,
        manifest: &Manifest,
    ) -> Result<Arc<HashSet<String>>, ServiceError> {
        let key = (family.to_string(), version);
        if let Some(p) = self.persons.lock().map_err(poisoned)?.get(&key) {
            return Ok(p.clone());
        }
        let files: Vec<std::path::PathBuf> = manifest
            .files
            .iter()
            .filter(|f| f.columns.iter().any(|c| c.name == "person_id"))
            .map(|f| dir.join(&f.file))
            .collect();
        let persons = tokio::task::spawn_blocking(move || release_persons(&files))
            .await
            .map_err(|e| ServiceError::Store(e.to_string()))??;
        let persons = Arc::new(persons);
        self.persons
            .lock()
            .map_err(poisoned)?
            .insert(key, persons.clone());
        Ok(persons)
    }
}

fn poisoned<T>(_: T) -> ServiceError {
    ServiceError::Store("a lock was poisoned by an earlier failure: restart the service".into())
}

/// The `person_id` values of some Parquet files.
fn release_persons(files: &[std::path::PathBuf]) -> Result<HashSet<String>, ServiceError> {
    use datafusion::parquet::arrow::ProjectionMask;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut out = HashSet::new();
    for path in files {
        let unreadable = |e: &dyn std::fmt::Display| {
            ServiceError::Store(format!(
                "release file {} could not be read: {e}",
                path.display()
            ))
        };
        let file = std::fs::File::open(path).map_err(|e| unreadable(&e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| unreadable(&e))?;
        let index = builder
            .schema()
            .index_of("person_id")
            .map_err(|e| unreadable(&e))?;
        let mask = ProjectionMask::roots(builder.parquet_schema(), [index]);
        for batch in builder
            .with_projection(mask)
            .build()
            .map_err(|e| unreadable(&e))?
        {
            let batch = batch.map_err(|e| unreadable(&e))?;
            let text = datafusion::arrow::compute::cast(
                batch.column(0),
                &datafusion::arrow::datatypes::DataType::Utf8,
            )
            .map_err(|e| unreadable(&e))?;
            if let Some(ids) = text
                .as_any()
                .downcast_ref::<datafusion::arrow::array::StringArray>()
            {
                out.extend(ids.iter().flatten().map(str::to_string));
            }
        }
    }
    Ok(out)
}

#[async_trait::async_trait]
impl Releases for CatalogReleases {
    async fn covered(
        &self,
        license: &License,
        now: DateTime<Utc>,
    ) -> Result<Vec<ReleaseSource>, ServiceError> {
        let purpose = Purpose::parse(&license.purpose)?;
        let rows = self.catalog.releases().await?;
        let mut latest: HashMap<&str, i64> = HashMap::new();
        for r in rows.iter().filter(|r| r.is_live()) {
            let v = latest.entry(r.family.as_str()).or_insert(0);
            *v = (*v).max(r.version);
        }
        let mut releases = Vec::new();
        for (family, pin) in &license.releases {
            let version = match pin {
                VersionPin::Latest => match latest.get(family.as_str()) {
                    Some(v) => *v,
                    None => continue,
                },
                VersionPin::Pinned(v) => i64::from(*v),
            };
            let Some(row) = rows
                .iter()
                .find(|r| &r.family == family && r.version == version && r.is_live())
            else {
                continue;
            };
            if row.purpose != license.purpose {
                continue;
            }
            let dir: std::path::PathBuf = row.path.clone().into();
            let manifest = row.parsed_manifest()?;
            let persons = self
                .persons_of(family, version as u32, &dir, &manifest)
                .await?;
            let consented = self
                .catalog
                .consented_pseudonyms(family, &purpose, now)
                .await?;
            let withdrawn: HashSet<String> = persons
                .iter()
                .filter(|p| !consented.contains(*p))
                .cloned()
                .collect();
            releases.push(ReleaseSource {
                family: family.clone(),
                version: version as u32,
                dir,
                manifest,
                withdrawn: Arc::new(withdrawn),
            });
        }
        Ok(releases)
    }
}

/// The query service.
#[derive(Debug, Clone)]
pub struct QueryService {
    releases: Arc<dyn Releases>,
    gate: Gate,
    limits: Limits,
}

impl QueryService {
    /// The service over a catalog's releases and consent registry.
    pub fn new(catalog: Catalog, gate: Gate, limits: Limits) -> QueryService {
        QueryService::with_releases(Arc::new(CatalogReleases::new(catalog)), gate, limits)
    }

    /// The service over another source of releases (the benchmark's data set).
    pub fn with_releases(releases: Arc<dyn Releases>, gate: Gate, limits: Limits) -> QueryService {
        QueryService {
            releases,
            gate,
            limits,
        }
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// The license a request runs under: the one it names, else the key's only license.
    pub fn license_id(
        credential: Option<&Credential>,
        named: Option<&str>,
    ) -> Result<String, ServiceError> {
        if let Some(n) = named {
            return Ok(n.to_string());
        }
        match credential.map(|c| &c.principal) {
            Some(Principal::Analyst { licenses, .. }) if licenses.len() == 1 => {
                Ok(licenses[0].clone())
            }
            Some(Principal::Analyst { licenses, .. }) if licenses.len() > 1 => {
                Err(ServiceError::LicenseRequired(licenses.join(", ")))
            }
            // No key, an operator key, or a key without licenses: the decision refuses it.
            _ => Ok(String::new()),
        }
    }

    /// What a license can see now: the live release versions it covers that were built for its
    /// purpose, each with the persons whose consent no longer covers that purpose at `now`.
    pub async fn scope(
        &self,
        license: &License,
        now: DateTime<Utc>,
    ) -> Result<Scope, ServiceError> {
        let cohorts = self
            .gate
            .store()
            .cohorts(&license.id)
            .await?
            .into_iter()
            .filter_map(|saved| match CohortDefinition::parse(&saved.definition) {
                Ok(def) => Some(def),
                Err(e) => {
                    tracing::warn!(license = %license.id, cohort = %saved.name, error = %e, "a saved cohort definition no longer reads and is left out");
                    None
                }
            })
            .collect();
        Ok(Scope {
            license: license.clone(),
            releases: self.releases.covered(license, now).await?,
            memory_limit: self.limits.memory,
            time_limit: self.limits.time,
            cohorts,
        })
    }

    /// Saves a cohort definition under the caller's license, after evaluating it: it must plan
    /// over the license's tables, and its size is counted by an ordinary audited and metered
    /// aggregate query (`SELECT count(*) FROM cohort_<name>`), with the license's output rules
    /// (under an aggregate-only license a cohort smaller than the minimum cell size is saved,
    /// and its size withheld). Replaces a cohort of the same name.
    pub async fn save_cohort(
        &self,
        credential: Option<&Credential>,
        named: Option<&str>,
        definition: CohortDefinition,
    ) -> Result<SavedCohortReport, ServiceError> {
        let now = Utc::now();
        let license = self.usable_license(credential, named, "", now).await?;
        definition
            .validate()
            .map_err(|e| QueryError::Invalid(e.to_string()))?;
        let releases = self.releases.covered(&license, now).await?;
        let family = crate::session::cohort_family(&definition, &releases)?.to_string();
        let table = definition.table();
        // Evaluated with the new definition in place of any saved one of that name.
        let persons = self
            .count_cohort(credential, &license.id, &family, &table, Some(&definition))
            .await?;
        let text = serde_json::to_string(&definition)
            .map_err(|e| ServiceError::Store(format!("cannot write the cohort definition: {e}")))?;
        // Audited first: a save the audit log cannot record does not happen.
        self.audit_cohort(
            credential,
            &license.id,
            "cohort_save",
            &definition.name,
            Some(crate::session::sha256_hex(&text)),
            persons,
            now,
        )
        .await?;
        let by = tessera_licensing::gate::principal_name(credential);
        self.gate
            .store()
            .save_cohort(&license.id, &definition.name, &text, &by, now)
            .await?;
        Ok(SavedCohortReport {
            license: license.id,
            family,
            table,
            persons,
            suppressed: persons.is_none(),
            definition,
        })
    }

    /// Persons in a cohort now, counted by an ordinary audited and metered aggregate query
    /// (`SELECT count(*) FROM cohort_<name>`) under the license's output rules; `None` when
    /// withheld as a small cell. `pending` evaluates a definition not yet saved.
    async fn count_cohort(
        &self,
        credential: Option<&Credential>,
        license: &str,
        family: &str,
        table: &str,
        pending: Option<&CohortDefinition>,
    ) -> Result<Option<u64>, ServiceError> {
        let sql = format!(
            "SELECT count(*) AS persons FROM \"{}\".\"{}\".\"{table}\"",
            crate::session::CATALOG,
            schema_name(family)
        );
        let output = self
            .run(credential, Some(license), &sql, Vec::new(), pending)
            .await?;
        Ok(output
            .batches
            .iter()
            .find(|b| b.num_rows() > 0)
            .and_then(|b| {
                datafusion::arrow::compute::cast(
                    b.column(0),
                    &datafusion::arrow::datatypes::DataType::Int64,
                )
                .ok()
            })
            .and_then(|a| {
                use datafusion::arrow::array::{Array, AsArray};
                let a = a.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                (!a.is_empty() && a.is_valid(0)).then(|| a.value(0).max(0) as u64)
            }))
    }

    /// The size of a cohort saved under the caller's license, now (see [`Self::count_cohort`]:
    /// audited, metered, under the output rules).
    pub async fn cohort_size(
        &self,
        credential: Option<&Credential>,
        named: Option<&str>,
        name: &str,
    ) -> Result<Option<u64>, ServiceError> {
        let now = Utc::now();
        let license = self.usable_license(credential, named, "", now).await?;
        let saved = self
            .gate
            .store()
            .cohorts(&license.id)
            .await?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| {
                QueryError::Invalid(format!("no saved cohort `{name}` under this license"))
            })?;
        let definition: CohortDefinition =
            serde_json::from_str(&saved.definition).map_err(|e| {
                ServiceError::Store(format!("a saved cohort definition does not read: {e}"))
            })?;
        let releases = self.releases.covered(&license, now).await?;
        let family = crate::session::cohort_family(&definition, &releases)?.to_string();
        self.count_cohort(credential, &license.id, &family, &definition.table(), None)
            .await
    }

    /// The cohorts saved under the caller's license.
    pub async fn cohorts(
        &self,
        credential: Option<&Credential>,
        named: Option<&str>,
    ) -> Result<(String, Vec<tessera_licensing::store::SavedCohort>), ServiceError> {
        let license = self
            .usable_license(credential, named, "", Utc::now())
            .await?;
        let saved = self.gate.store().cohorts(&license.id).await?;
        Ok((license.id, saved))
    }

    /// Deletes a cohort saved under the caller's license (audited); `false` when there was
    /// none of that name.
    pub async fn delete_cohort(
        &self,
        credential: Option<&Credential>,
        named: Option<&str>,
        name: &str,
    ) -> Result<bool, ServiceError> {
        let now = Utc::now();
        let license = self.usable_license(credential, named, "", now).await?;
        let deleted = self.gate.store().delete_cohort(&license.id, name).await?;
        if deleted {
            self.audit_cohort(
                credential,
                &license.id,
                "cohort_delete",
                name,
                None,
                None,
                now,
            )
            .await?;
        }
        Ok(deleted)
    }

    /// Audits a change to a saved cohort (the definition's SHA-256, never its text).
    #[allow(clippy::too_many_arguments)]
    async fn audit_cohort(
        &self,
        credential: Option<&Credential>,
        license: &str,
        action: &str,
        name: &str,
        sha: Option<String>,
        persons: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        self.gate
            .store()
            .append_audit(tessera_licensing::audit::Event {
                at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                principal: tessera_licensing::gate::principal_name(credential),
                license: Some(license.to_string()),
                action: action.into(),
                resource: format!("cohort/{name}"),
                decision: "allow".into(),
                query_sha256: sha,
                rows: None,
                persons,
            })
            .await?;
        Ok(())
    }

    /// The license a caller may use, or the audited refusal. Nothing is planned for a caller
    /// who may not use the license at all (no key, an expired or revoked key, an operator key,
    /// another organization's license, a key not bound to it): the decision is asked at once,
    /// so that the refusal carries its reason and is audited.
    async fn usable_license(
        &self,
        credential: Option<&Credential>,
        named: Option<&str>,
        sha: &str,
        now: DateTime<Utc>,
    ) -> Result<License, ServiceError> {
        let license_id = Self::license_id(credential, named)?;
        let license = match credential {
            Some(_) => self.gate.store().find_license(&license_id).await?,
            None => None,
        };
        let usable = decide(
            &Request::ViewLicense {
                license: license_id.clone(),
            },
            credential,
            license.as_ref(),
            &Usage::default(),
            now,
        );
        match (license, usable) {
            (Some(l), Decision::Allow)
                if credential.is_some_and(|c| c.principal != Principal::Admin) =>
            {
                Ok(l)
            }
            _ => Err(self
                .deny_or_allow(
                    credential,
                    &license_id,
                    "",
                    0,
                    None,
                    vec![],
                    false,
                    sha,
                    now,
                )
                .await
                .err()
                .unwrap_or(ServiceError::Denied {
                    reason: Reason::UnknownLicense,
                    retry_after: None,
                })),
        }
    }

    /// The session a caller browses (Flight SQL's GetDbSchemas, GetTables): the license's
    /// tables and columns, after an audited `BrowseCatalog` decision.
    pub async fn browse(
        &self,
        credential: Option<&Credential>,
        named: Option<&str>,
    ) -> Result<Session, ServiceError> {
        let now = Utc::now();
        let ask = Ask {
            request: Request::BrowseCatalog,
            action: "browse_tables".into(),
            resource: "flight".into(),
            query_sha256: None,
        };
        if let Err(denied) = self.gate.authorize(credential, ask, now).await? {
            return Err(ServiceError::Denied {
                reason: denied.reason,
                retry_after: denied.retry_after,
            });
        }
        let license = self.usable_license(credential, named, "", now).await?;
        Ok(Session::new(self.scope(&license, now).await?).await?)
    }

    /// The schema `sql` would answer with, without running it (Flight SQL's GetFlightInfo and
    /// prepared statements). Refusals by the plan rules come back here already.
    pub async fn describe(
        &self,
        credential: Option<&Credential>,
        named: Option<&str>,
        sql: &str,
    ) -> Result<Described, ServiceError> {
        let now = Utc::now();
        let (_, _, _, planned) = self
            .plan(
                credential,
                named,
                sql,
                &crate::session::sha256_hex(sql),
                now,
                None,
            )
            .await?;
        let schema = planned.output_schema();
        // The noise of each column is known from the plan (clients that keep only the
        // announced schema, as the ADBC driver does, see it too).
        let schema = match &planned.dp {
            Some(dp) => crate::dp::annotate(&schema, dp),
            None => schema,
        };
        Ok(Described {
            schema,
            parameters: planned.parameter_schema()?,
        })
    }

    /// The usable license, the release versions its session covers (family, version,
    /// purpose), the session, and the plan of `sql`; a refusal by the plan rules is a decision
    /// too, and audited.
    async fn plan(
        &self,
        credential: Option<&Credential>,
        named: Option<&str>,
        sql: &str,
        sha: &str,
        now: DateTime<Utc>,
        cohort: Option<&CohortDefinition>,
    ) -> Result<
        (
            License,
            Vec<(String, u32, String)>,
            Session,
            crate::session::Planned,
        ),
        ServiceError,
    > {
        let license = self.usable_license(credential, named, sha, now).await?;
        let mut scope = self.scope(&license, now).await?;
        if let Some(cohort) = cohort {
            scope.cohorts.retain(|c| c.name != cohort.name);
            scope.cohorts.push(cohort.clone());
        }
        let covered = scope
            .releases
            .iter()
            .map(|r| (r.family.clone(), r.version, r.manifest.purpose.clone()))
            .collect();
        let mut session = Session::new(scope).await?;
        // The new definition must plan: its error is the analyst's to see.
        if let Some(e) = cohort.and_then(|c| session.cohort_left_out(&c.name)) {
            return Err(self.refuse(credential, &license.id, e, sha, now).await);
        }
        match session.plan(sql).await {
            Ok(planned) => Ok((license, covered, session, planned)),
            Err(e) => Err(self.refuse(credential, &license.id, e, sha, now).await),
        }
    }

    /// Answers `sql` for the holder of `credential` under the license `named` (or the key's
    /// only license): decided and audited before it runs, metered and audited after.
    pub async fn query(
        &self,
        credential: Option<&Credential>,
        named: Option<&str>,
        sql: &str,
    ) -> Result<QueryOutput, ServiceError> {
        self.query_with(credential, named, sql, Vec::new()).await
    }

    /// [`QueryService::query`] with parameters bound (`params[i]` is `$i+1`, or the `i+1`-th
    /// `?`).
    pub async fn query_with(
        &self,
        credential: Option<&Credential>,
        named: Option<&str>,
        sql: &str,
        params: Vec<ScalarValue>,
    ) -> Result<QueryOutput, ServiceError> {
        self.run(credential, named, sql, params, None).await
    }

    /// A query, with `cohort` in place of any saved cohort of its name.
    async fn run(
        &self,
        credential: Option<&Credential>,
        named: Option<&str>,
        sql: &str,
        params: Vec<ScalarValue>,
        cohort: Option<&CohortDefinition>,
    ) -> Result<QueryOutput, ServiceError> {
        let now = Utc::now();
        let sha = crate::session::sha256_hex(sql);
        // Plan first (it touches no data): the decision is about what the plan reads.
        let (license, covered, session, planned) =
            self.plan(credential, named, sql, &sha, now, cohort).await?;
        let planned = match planned.bind(params) {
            Ok(p) => p,
            Err(e) => return Err(self.refuse(credential, &license.id, e, &sha, now).await),
        };
        let fingerprint = planned.fingerprint();
        if let Some(f) = &fingerprint
            && let Err(e) = self.differencing(&license, f, now).await?
        {
            return Err(self.refuse(credential, &license.id, e, &sha, now).await);
        }
        let reads = session.tables_read(&planned.plan)?;
        let release_reads: Vec<_> = reads
            .iter()
            .filter(|t| t.schema != "information_schema")
            .collect();
        let (family, version, purpose) = match release_reads.first() {
            Some(t) => covered
                .iter()
                .find(|(f, _, _)| schema_name(f) == t.schema)
                .cloned()
                .ok_or_else(|| QueryError::Invalid(format!("no schema `{}`", t.schema)))?,
            None => covered
                .first()
                .cloned()
                .unwrap_or_else(|| (String::new(), 0, String::new())),
        };
        if release_reads
            .iter()
            .any(|t| t.schema != schema_name(&family))
        {
            let e =
                QueryError::refused("one_release", "a query reads one release family at a time");
            return Err(self.refuse(credential, &license.id, e, &sha, now).await);
        }
        let tables: Vec<(String, Vec<String>)> = release_reads
            .iter()
            .map(|t| (t.table.clone(), t.columns.clone()))
            .collect();
        // A noisy answer: released before (the same plan under the same license and release
        // version), or affordable.
        let dp = match (planned.dp.clone(), license.output.privacy.clone()) {
            (Some(dp), Some(terms)) => {
                let key = crate::session::sha256_hex(&format!(
                    "{family}/v{version}\n{}",
                    planned.plan.display_indent()
                ));
                let earlier = self.gate.store().dp_answer(&license.id, &key).await?;
                if earlier.is_none() {
                    let spent = self.gate.store().privacy_spent(&license.id).await?;
                    let cost = Rho::charge(dp.rho);
                    if spent.rho.0.saturating_add(cost.0) > terms.budget().0 {
                        let e = budget_exhausted(&terms, spent.rho, dp.rho);
                        return Err(self.refuse(credential, &license.id, e, &sha, now).await);
                    }
                }
                Some((dp, terms, key, earlier))
            }
            _ => None,
        };
        let allowed = self
            .deny_or_allow(
                credential,
                &license.id,
                &family,
                version,
                Some(purpose),
                tables,
                license.mode == AccessMode::RowLevel,
                &sha,
                now,
            )
            .await?;
        let output = match dp {
            None => session.run_planned(planned).await?,
            Some((dp, terms, key, earlier)) => {
                // The spend after this answer, where the transaction that paid for it read it.
                let (mut output, charged, cached, spent) = match earlier {
                    Some(bytes) => (crate::dp::decode(&bytes)?, 0.0, true, None),
                    None => {
                        let output = session.run_planned(planned).await?;
                        let bytes = crate::dp::encode(&output)?;
                        let spend = self
                            .gate
                            .store()
                            .spend_privacy(
                                &license.id,
                                &Answer {
                                    key: &key,
                                    bytes: &bytes,
                                    cost: Rho::charge(dp.rho),
                                    delta: dp.delta,
                                },
                                terms.budget(),
                                Utc::now(),
                            )
                            .await?;
                        match spend {
                            Spend::Spent(spent) => (output, dp.rho, false, Some(spent)),
                            // Another request released this answer first: show that one.
                            Spend::Cached(bytes) => (crate::dp::decode(&bytes)?, 0.0, true, None),
                            Spend::Exhausted { spent, .. } => {
                                let e = budget_exhausted(&terms, spent, dp.rho);
                                return Err(self
                                    .refuse(credential, &license.id, e, &sha, now)
                                    .await);
                            }
                        }
                    }
                };
                let spent = match spent {
                    Some(s) => s,
                    None => self.gate.store().privacy_spent(&license.id).await?,
                };
                let privacy = crate::dp::AnswerPrivacy {
                    rho_charged: charged,
                    cached,
                    threshold: dp.threshold,
                    max_groups_per_person: dp.max_groups,
                    max_rows_per_person: dp.max_rows,
                    stddev: dp.result_stddev.iter().cloned().collect(),
                    budget: BudgetView::new(&terms, spent.rho, spent.answers, spent.delta),
                };
                let mut meta = output.schema.metadata().clone();
                meta.extend(privacy.metadata());
                let schema = Arc::new(output.schema.as_ref().clone().with_metadata(meta));
                output.batches = output
                    .batches
                    .into_iter()
                    .map(|b| b.with_schema(schema.clone()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| QueryError::Internal(e.to_string()))?;
                output.schema = schema;
                output.privacy = Some(privacy);
                output
            }
        };
        let metered = tessera_licensing::store::Metered {
            rows: output.rows,
            persons: output.persons,
            fingerprint,
        };
        self.gate
            .record_metered(&allowed, &metered, Utc::now())
            .await?;
        Ok(output)
    }

    /// Refuses an aggregate run too often, as is or with other literal values, within the
    /// differencing window.
    async fn differencing(
        &self,
        license: &License,
        fingerprint: &tessera_licensing::store::Fingerprint,
        now: DateTime<Utc>,
    ) -> Result<Result<(), QueryError>, ServiceError> {
        let limits = self.limits.differencing;
        let repeats = self
            .gate
            .store()
            .repeats(&license.id, fingerprint, now - limits.window)
            .await?;
        let days = limits.window.num_days();
        if repeats.same >= limits.same {
            return Ok(Err(QueryError::refused(
                "differencing",
                format!(
                    "this aggregate has already been run {} times in the last {days} days, the most allowed: repeating it cannot tell you more",
                    repeats.same
                ),
            )));
        }
        // Under a privacy budget, near-identical aggregates are ordinary: each is charged, and
        // the budget bounds what any sequence of answers reveals.
        if repeats.near >= limits.near && license.output.privacy.is_none() {
            return Ok(Err(QueryError::refused(
                "differencing",
                format!(
                    "aggregates differing from this one only in their values have been run {} times in the last {days} days, the most allowed: comparing near-identical aggregates can reveal the small groups suppression withholds; ask the operators to review your analysis plan",
                    repeats.near
                ),
            )));
        }
        Ok(Ok(()))
    }

    /// The audited decision on a query of `version` of `family` (the version the license's
    /// scope picked, so it is also the newest the license can mean).
    #[allow(clippy::too_many_arguments)]
    async fn deny_or_allow(
        &self,
        credential: Option<&Credential>,
        license: &str,
        family: &str,
        version: u32,
        purpose: Option<String>,
        tables: Vec<(String, Vec<String>)>,
        row_level: bool,
        sha: &str,
        now: DateTime<Utc>,
    ) -> Result<tessera_licensing::gate::Allowed, ServiceError> {
        let latest = version;
        let ask = Ask {
            request: Request::RunQuery {
                license: license.to_string(),
                family: family.to_string(),
                version,
                latest_version: latest,
                release_purpose: purpose,
                tables,
                row_level,
            },
            action: "sql_query".into(),
            resource: format!("{family}/v{version}"),
            query_sha256: Some(sha.to_string()),
        };
        match self.gate.authorize(credential, ask, now).await? {
            Ok(allowed) => Ok(allowed),
            Err(denied) => Err(ServiceError::Denied {
                reason: denied.reason,
                retry_after: denied.retry_after,
            }),
        }
    }

    /// Audits a refusal by the plan rules (`deny:<rule>`) and returns it as the caller's error
    /// (or the store's, when the audit entry cannot be written: nothing is refused unaudited).
    async fn refuse(
        &self,
        credential: Option<&Credential>,
        license: &str,
        e: QueryError,
        sha: &str,
        now: DateTime<Utc>,
    ) -> ServiceError {
        let rule = match &e {
            QueryError::Refused { rule, .. } => *rule,
            QueryError::Invalid(_) => "invalid_sql",
            QueryError::Limit(_) => "limit",
            QueryError::Internal(_) => "internal",
        };
        let audited = self
            .gate
            .store()
            .append_audit(tessera_licensing::audit::Event {
                at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                principal: tessera_licensing::gate::principal_name(credential),
                license: Some(license.to_string()),
                action: "sql_query".into(),
                resource: "plan".into(),
                decision: format!("deny:{rule}"),
                query_sha256: Some(sha.to_string()),
                rows: None,
                persons: None,
            })
            .await;
        match audited {
            Ok(_) => e.into(),
            Err(store) => store.into(),
        }
    }
}

/// The refusal of an answer the license's privacy budget cannot pay for.
fn budget_exhausted(terms: &PrivacyTerms, spent: Rho, cost: f64) -> QueryError {
    QueryError::refused(
        "privacy_budget",
        format!(
            "this answer costs rho={cost:.6} and the license's privacy budget has {:.6} of {} left: the budget is spent (answers released before can still be repeated at no cost; ask the operators about a new license)",
            Rho(terms.budget().0.saturating_sub(spent.0)).as_f64(),
            terms.rho_budget
        ),
    )
}
