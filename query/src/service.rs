//! The query service's core, below any transport (Flight SQL calls it): a presented key, the
//! license it names and SQL in; an audited decision, a session built from the license, the
//! output rules, and metering out.
//!
//! The decision is `tessera_licensing::gate`'s, asked about what the plan actually reads (the
//! release family and version, the tables and, after projection push-down, the columns), never
//! about the SQL text. Sessions only hold what the license grants, so the decision and the
//! session agree by construction; the decision adds the key, the license's status and term, the
//! purpose, the rate limit and the quotas.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tessera_catalog::{Catalog, Purpose};
use tessera_licensing::decision::{Credential, Decision, Principal, Request, Usage, decide};
use tessera_licensing::gate::{Ask, Gate};
use tessera_licensing::{AccessMode, License, Reason, VersionPin};

use crate::session::{QueryError, QueryOutput, ReleaseSource, Scope, Session, schema_name};

fn sql_sha(sql: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, sql.as_bytes()).as_ref())
}

/// Per-query resource limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub memory: usize,
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: 1 << 30,
            time: Duration::from_secs(120),
        }
    }
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

/// The query service.
#[derive(Debug, Clone)]
pub struct QueryService {
    catalog: Catalog,
    gate: Gate,
    limits: Limits,
}

impl QueryService {
    pub fn new(catalog: Catalog, gate: Gate, limits: Limits) -> QueryService {
        QueryService {
            catalog,
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
    /// purpose, each with the persons whose consent covers that purpose at `now`.
    pub async fn scope(
        &self,
        license: &License,
        now: DateTime<Utc>,
    ) -> Result<Scope, ServiceError> {
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
            releases.push(ReleaseSource {
                family: family.clone(),
                version: version as u32,
                dir: row.path.clone().into(),
                manifest: row.parsed_manifest()?,
                consented: Arc::new(
                    self.catalog
                        .consented_pseudonyms(family, &purpose, now)
                        .await?,
                ),
            });
        }
        Ok(Scope {
            license: license.clone(),
            releases,
            memory_limit: self.limits.memory,
            time_limit: self.limits.time,
        })
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
    ) -> Result<datafusion::arrow::datatypes::SchemaRef, ServiceError> {
        let now = Utc::now();
        let (_, _, _, planned) = self
            .plan(credential, named, sql, &sql_sha(sql), now)
            .await?;
        Ok(planned.output_schema())
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
        let scope = self.scope(&license, now).await?;
        let covered = scope
            .releases
            .iter()
            .map(|r| (r.family.clone(), r.version, r.manifest.purpose.clone()))
            .collect();
        let session = Session::new(scope).await?;
        match session.plan(sql).await {
            Ok(planned) => Ok((license, covered, session, planned)),
            Err(e) => {
                self.audit_refusal(credential, &license.id, &e, sha, now)
                    .await?;
                Err(e.into())
            }
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
        let now = Utc::now();
        let sha = sql_sha(sql);
        // Plan first (it touches no data): the decision is about what the plan reads.
        let (license, covered, session, planned) =
            self.plan(credential, named, sql, &sha, now).await?;
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
            return Err(QueryError::refused(
                "one_release",
                "a query reads one release family at a time",
            )
            .into());
        }
        let tables: Vec<(String, Vec<String>)> = release_reads
            .iter()
            .map(|t| (t.table.clone(), t.columns.clone()))
            .collect();
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
        let output = session.run_planned(planned).await?;
        self.gate
            .record_result(&allowed, output.rows, output.persons, Utc::now())
            .await?;
        Ok(output)
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

    async fn audit_refusal(
        &self,
        credential: Option<&Credential>,
        license: &str,
        e: &QueryError,
        sha: &str,
        now: DateTime<Utc>,
    ) -> Result<(), ServiceError> {
        let rule = match e {
            QueryError::Refused { rule, .. } => *rule,
            QueryError::Invalid(_) => "invalid_sql",
            QueryError::Limit(_) => "limit",
            QueryError::Internal(_) => "internal",
        };
        self.gate
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
            .await?;
        Ok(())
    }
}
