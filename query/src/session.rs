//! One DataFusion session per request, built from the license.
//!
//! What exists in it is what the license grants and nothing else: catalog `tessera`, one schema
//! per release family the license covers (the family name with `-` and `.` as `_`, so
//! `demo-natural-history` is `tessera.demo_natural_history`), one view per licensed table that
//! selects only the licensed columns of the Parquet file and keeps only the rows of persons whose
//! consent covers the license's purpose now (a filter evaluated at scan time against the live
//! consent registry, so a revocation takes effect without rebuilding the release). The views'
//! inner scans are planned in a separate, private context: the user's session has no way to
//! name the files, the unlicensed columns or the consent filter.
//!
//! SQL is planned with DDL, DML (`INSERT`, `COPY`), and statements (`SET`, transactions)
//! refused, and without URL tables; `information_schema` lists only the licensed views.
//! Execution runs under a memory limit and a time limit.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::{
    CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider, SchemaProvider, TableProvider,
};
use datafusion::common::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{
    ColumnarValue, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility, col,
};
use datafusion::logical_expr::{TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use tessera_catalog::release::build::Manifest;
use tessera_licensing::{AccessMode, License};

/// The catalog every session shows.
pub const CATALOG: &str = "tessera";

/// Why a query was not run. `Refused` names the rule; `Invalid` is the analyst's SQL (unknown
/// names included: what is not licensed does not exist); `Limit` a resource limit.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("refused ({rule}): {message}")]
    Refused { rule: &'static str, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Limit(String),
    #[error("internal error (please report this): {0}")]
    Internal(String),
}

impl QueryError {
    pub(crate) fn refused(rule: &'static str, message: impl Into<String>) -> QueryError {
        QueryError::Refused {
            rule,
            message: message.into(),
        }
    }

    /// A DataFusion error while planning the analyst's SQL: their mistake, said in
    /// DataFusion's words, except that a refused statement kind names the rule.
    fn planning(e: DataFusionError) -> QueryError {
        let text = e.strip_backtrace();
        if text.contains("DDL not supported")
            || text.contains("DML not supported")
            || text.contains("Statement not supported")
        {
            return QueryError::refused(
                "read_only",
                "the query service is read-only: no DDL, DML, COPY, SET or transactions",
            );
        }
        QueryError::Invalid(text)
    }
}

/// One release version the license covers, with its files.
#[derive(Debug, Clone)]
pub struct ReleaseSource {
    pub family: String,
    pub version: u32,
    /// The version's folder (`manifest.json` and the Parquet files).
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// `person_id`s in the release of persons whose consent no longer covers the license's
    /// purpose (revoked, expired, or erased): their rows are filtered out at scan time. Empty
    /// when everyone in the release still consents, and then no filter runs.
    pub withdrawn: Arc<HashSet<String>>,
}

/// Everything a session is built from.
#[derive(Debug, Clone)]
pub struct Scope {
    pub license: License,
    pub releases: Vec<ReleaseSource>,
    /// Memory one query may use.
    pub memory_limit: usize,
    /// Time one query may take.
    pub time_limit: Duration,
    /// The cohorts saved under the license, each exposed as `cohort_<name>` in its family's
    /// schema ([`crate::cohort`]).
    pub cohorts: Vec<crate::cohort::CohortDefinition>,
}

/// The result of a query after the license's output rules.
#[derive(Debug, Clone)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub rows: u64,
    /// Groups withheld for describing fewer persons than the minimum cell size.
    pub groups_suppressed: u64,
    /// Rows cut by the license's maximum rows per result.
    pub rows_truncated: bool,
    /// Distinct persons whose data contributed, where known (the sum over released groups
    /// for aggregates, an upper bound when a person is in several groups).
    pub persons: Option<u64>,
    /// What a differentially private answer cost and left (licenses with privacy terms).
    pub privacy: Option<crate::dp::AnswerPrivacy>,
}

/// A session for one request.
pub struct Session {
    ctx: SessionContext,
    license: License,
    time_limit: Duration,
    /// Saved cohorts left out of the session, by name, with why.
    cohorts_left_out: Vec<(String, QueryError)>,
    /// Clamping bounds the releases' data dictionaries declare, by column name (where two
    /// releases or tables declare different bounds for a name, the wider).
    declared_bounds: std::collections::BTreeMap<String, (f64, f64)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("license", &self.license.id)
            .finish_non_exhaustive()
    }
}

/// The schema name of a release family.
pub fn schema_name(family: &str) -> String {
    family.replace(['-', '.'], "_")
}

/// `true` for rows whose `person_id` is not among the withdrawn persons (and is not null).
/// Equality and hashing go by the set's identity: two filters are the same filter only when
/// they share the set. Integer person ids (releases made elsewhere, the benchmark's) are looked
/// up as integers, without a cast per row.
#[derive(Debug)]
struct Consented {
    withdrawn: Arc<HashSet<String>>,
    /// The same set, hashed fast, as integers and as text (built at first use).
    withdrawn_ints: std::sync::OnceLock<foldhash::HashSet<i64>>,
    withdrawn_text: std::sync::OnceLock<foldhash::HashSet<String>>,
    signature: Signature,
}

impl PartialEq for Consented {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.withdrawn, &other.withdrawn)
    }
}

impl Eq for Consented {}

impl Hash for Consented {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (Arc::as_ptr(&self.withdrawn) as usize).hash(state);
    }
}

impl ScalarUDFImpl for Consented {
    fn name(&self) -> &str {
        "tessera_consented"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::buffer::BooleanBuffer;
        use datafusion::arrow::datatypes::Int64Type;
        let [arg] = args.args.as_slice() else {
            return Err(DataFusionError::Internal(
                "consent filter takes one argument".into(),
            ));
        };
        let array: ArrayRef = arg.to_array(args.number_rows)?;
        let len = array.len();
        // Rows with a null person_id are dropped too (a release has none).
        let valid = |i: usize| array.is_valid(i);
        let keep = if let Some(ids) = array.as_primitive_opt::<Int64Type>() {
            let withdrawn = self.withdrawn_ints.get_or_init(|| {
                self.withdrawn
                    .iter()
                    .filter_map(|id| id.parse().ok())
                    .collect()
            });
            let values = ids.values();
            BooleanBuffer::collect_bool(len, |i| valid(i) && !withdrawn.contains(&values[i]))
        } else {
            let withdrawn = self
                .withdrawn_text
                .get_or_init(|| self.withdrawn.iter().cloned().collect());
            if let Some(ids) = array.as_string_view_opt() {
                BooleanBuffer::collect_bool(len, |i| valid(i) && !withdrawn.contains(ids.value(i)))
            } else if let Some(ids) = array.as_string_opt::<i32>() {
                BooleanBuffer::collect_bool(len, |i| valid(i) && !withdrawn.contains(ids.value(i)))
            } else {
                let text = cast(&array, &DataType::Utf8)?;
                let ids = text.as_string::<i32>();
                BooleanBuffer::collect_bool(len, |i| {
                    ids.is_valid(i) && !withdrawn.contains(ids.value(i))
                })
            }
        };
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::new(
            keep, None,
        ))))
    }
}

/// A licensed table as the analyst's session sees it: the view over the file, but opaque (it
/// offers no logical plan to inline), so plans name the table itself (`tables_read` asks the
/// decision about it) and never the file behind it.
#[derive(Debug)]
struct LicensedTable {
    inner: Arc<dyn TableProvider>,
}

#[async_trait::async_trait]
impl TableProvider for LicensedTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&datafusion::logical_expr::Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}

impl Session {
    /// Builds the session the license allows.
    pub async fn new(scope: Scope) -> Result<Session, QueryError> {
        let license = scope.license;
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(
                CATALOG,
                scope
                    .releases
                    .first()
                    .map(|r| schema_name(&r.family))
                    .unwrap_or_else(|| "public".into()),
            );
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(scope.memory_limit, 1.0)
            .build_arc()
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        // The private context that plans the views' file scans.
        let inner = SessionContext::new();
        let catalog = Arc::new(MemoryCatalogProvider::new());
        let mut schemas = Vec::new();
        for release in &scope.releases {
            let schema = Arc::new(MemorySchemaProvider::new());
            schemas.push((release.family.clone(), schema.clone()));
            let filter = (!release.withdrawn.is_empty()).then(|| {
                ScalarUDF::from(Consented {
                    withdrawn: release.withdrawn.clone(),
                    withdrawn_ints: std::sync::OnceLock::new(),
                    withdrawn_text: std::sync::OnceLock::new(),
                    signature: Signature::any(1, Volatility::Immutable),
                })
            });
            for file in &release.manifest.files {
                let Some(grant) = license.tables.get(&file.table) else {
                    continue;
                };
                let columns: Vec<&str> = file
                    .columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .filter(|c| grant.allows(c))
                    .collect();
                if columns.is_empty() {
                    continue;
                }
                let path = release.dir.join(&file.file);
                let path_text = path.to_str().ok_or_else(|| {
                    QueryError::Internal(format!("release path {} is not UTF-8", path.display()))
                })?;
                let mut df = inner
                    .read_parquet(path_text, ParquetReadOptions::default())
                    .await
                    .map_err(|e| QueryError::Internal(format!("{}: {e}", file.table)))?;
                if let Some(filter) = &filter {
                    df = df
                        .filter(filter.call(vec![col("person_id")]))
                        .map_err(|e| QueryError::Internal(e.to_string()))?;
                }
                let df = df
                    .select_columns(&columns)
                    .map_err(|e| QueryError::Internal(e.to_string()))?;
                schema
                    .register_table(
                        file.table.clone(),
                        Arc::new(LicensedTable {
                            inner: df.into_view(),
                        }),
                    )
                    .map_err(|e| QueryError::Internal(e.to_string()))?;
            }
            catalog
                .register_schema(&schema_name(&release.family), schema)
                .map_err(|e| QueryError::Internal(e.to_string()))?;
        }
        ctx.register_catalog(CATALOG, catalog);
        // Saved cohorts: views planned over the licensed views above, so they inherit the
        // license's tables, columns and consent filter, and are inlined into each query's plan
        // (the plan rules, the decision and differencing see what they read).
        let mut cohorts_left_out = Vec::new();
        for cohort in &scope.cohorts {
            let planned = match cohort_family(cohort, &scope.releases) {
                Ok(family) => cohort_view(&ctx, cohort, family)
                    .await
                    .map(|view| (family, view)),
                Err(e) => Err(e),
            };
            match planned {
                Ok((family, view)) => {
                    if let Some((_, schema)) = schemas.iter().find(|(f, _)| f == family)
                        && !schema.table_exist(&cohort.table())
                    {
                        schema
                            .register_table(cohort.table(), view)
                            .map_err(|e| QueryError::Internal(e.to_string()))?;
                    }
                }
                Err(e) => {
                    tracing::warn!(
                        license = %license.id,
                        cohort = %cohort.name,
                        error = %e,
                        "a saved cohort cannot be evaluated under its license and is left out of the session"
                    );
                    cohorts_left_out.push((cohort.name.clone(), e));
                }
            }
        }
        let mut declared_bounds = std::collections::BTreeMap::new();
        for release in &scope.releases {
            for file in &release.manifest.files {
                for c in &file.columns {
                    if let Some((lo, hi)) = c.bounds {
                        let e = declared_bounds.entry(c.name.clone()).or_insert((lo, hi));
                        *e = (e.0.min(lo), e.1.max(hi));
                    }
                }
            }
        }
        Ok(Session {
            ctx,
            license,
            time_limit: scope.time_limit,
            cohorts_left_out,
            declared_bounds,
        })
    }

    /// Why the saved cohort `name` is not in this session, when it is not.
    pub fn cohort_left_out(&mut self, name: &str) -> Option<QueryError> {
        let at = self.cohorts_left_out.iter().position(|(n, _)| n == name)?;
        Some(self.cohorts_left_out.swap_remove(at).1)
    }

    /// The session, for catalog browsing (Flight SQL's GetTables and friends).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// Plans `sql` under the license: read-only, and for aggregate-only licenses checked and
    /// rewritten by [`crate::aggregate`].
    pub async fn plan(&self, sql: &str) -> Result<Planned, QueryError> {
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let state = self.ctx.state();
        let mut statement = state
            .sql_to_statement(sql, &state.config().options().sql_parser.dialect)
            .map_err(QueryError::planning)?;
        number_placeholders(&mut statement);
        let plan = state
            .statement_to_plan(statement)
            .await
            .map_err(QueryError::planning)?;
        options.verify_plan(&plan).map_err(QueryError::planning)?;
        if matches!(plan, LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)) {
            return Err(QueryError::refused(
                "no_explain",
                "EXPLAIN shows how releases are stored and filtered: it is not available",
            ));
        }
        match self.license.mode {
            AccessMode::RowLevel => Ok(Planned {
                plan,
                persons_column: None,
                dp: None,
            }),
            AccessMode::AggregateOnly if self.license.output.privacy.is_some() => {
                let terms = self.license.output.privacy.as_ref().ok_or_else(|| {
                    QueryError::Internal("a privacy license without terms".into())
                })?;
                let mut options = crate::dp::Options::parse(sql)?;
                for (column, bounds) in &self.declared_bounds {
                    options.bounds.entry(column.clone()).or_insert(*bounds);
                }
                let (plan, dp) = crate::dp::rewrite(
                    plan,
                    &self.license.output.identifying_columns,
                    terms,
                    &options,
                    self.license.output.min_cell_size,
                )?;
                Ok(Planned {
                    plan,
                    persons_column: Some(crate::aggregate::PERSONS.to_string()),
                    dp: Some(dp),
                })
            }
            AccessMode::AggregateOnly => {
                let plan =
                    crate::aggregate::rewrite(plan, &self.license.output.identifying_columns)?;
                Ok(Planned {
                    plan,
                    persons_column: Some(crate::aggregate::PERSONS.to_string()),
                    dp: None,
                })
            }
        }
    }

    /// Plans and runs `sql`, applies the output rules, and returns the result.
    pub async fn run(&self, sql: &str) -> Result<QueryOutput, QueryError> {
        let planned = self.plan(sql).await?;
        self.run_planned(planned).await
    }

    /// The release tables a plan reads, by schema, with their columns (the licensed columns of
    /// each view it scans): what the authorization decision is asked about. Read off the plan
    /// as planned, before the optimizer inlines the views into their file scans.
    pub fn tables_read(&self, plan: &LogicalPlan) -> Result<Vec<TableRead>, QueryError> {
        use datafusion::common::tree_node::TreeNodeRecursion;
        let state = self.ctx.state();
        let defaults = &state.config().options().catalog;
        let (catalog, schema) = (
            defaults.default_catalog.clone(),
            defaults.default_schema.clone(),
        );
        let mut out: Vec<TableRead> = Vec::new();
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                let r = scan.table_name.clone().resolve(&catalog, &schema);
                let columns: Vec<String> = scan
                    .projected_schema
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect();
                match out
                    .iter_mut()
                    .find(|t| t.schema == *r.schema && t.table == *r.table)
                {
                    Some(t) => {
                        for c in columns {
                            if !t.columns.contains(&c) {
                                t.columns.push(c);
                            }
                        }
                    }
                    None => out.push(TableRead {
                        schema: r.schema.to_string(),
                        table: r.table.to_string(),
                        columns,
                    }),
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })
        .map_err(|e| QueryError::Internal(e.to_string()))?;
        Ok(out)
    }

    /// Runs a plan made by [`Session::plan`] and applies the output rules.
    pub async fn run_planned(&self, planned: Planned) -> Result<QueryOutput, QueryError> {
        let df = self
            .ctx
            .execute_logical_plan(planned.plan)
            .await
            .map_err(QueryError::planning)?;
        let df = match (self.license.mode, self.license.output.max_rows) {
            // One more than allowed, to tell whether the result was cut.
            (AccessMode::RowLevel, Some(max)) => df
                .limit(0, Some(max as usize + 1))
                .map_err(|e| QueryError::Internal(e.to_string()))?,
            _ => df,
        };
        let batches = match tokio::time::timeout(self.time_limit, df.collect()).await {
            Err(_) => {
                return Err(QueryError::Limit(format!(
                    "the query took longer than {} s and was stopped: narrow it",
                    self.time_limit.as_secs()
                )));
            }
            Ok(Err(e)) => return Err(execution_error(e)),
            Ok(Ok(b)) => b,
        };
        match (planned.persons_column, &planned.dp) {
            (Some(column), Some(dp)) => crate::dp::finish(batches, &column, dp),
            (Some(column), None) => {
                crate::aggregate::protect(batches, &column, &self.license.output)
            }
            (None, _) => Ok(row_level(batches, self.license.output.max_rows)),
        }
    }
}

/// The release family a cohort is drawn from: the one it names, which the license must cover,
/// else the license's only family.
pub fn cohort_family<'a>(
    cohort: &'a crate::cohort::CohortDefinition,
    releases: &'a [ReleaseSource],
) -> Result<&'a str, QueryError> {
    match (&cohort.family, releases) {
        (Some(f), releases) if releases.iter().any(|r| &r.family == f) => Ok(f),
        (Some(f), _) => Err(QueryError::Invalid(format!(
            "cohort definition: family: the license covers no live release of `{f}`"
        ))),
        (None, [only]) => Ok(&only.family),
        (None, []) => Err(QueryError::Invalid(
            "cohort definition: the license covers no live release to draw a cohort from".into(),
        )),
        (None, _) => Err(QueryError::Invalid(
            "cohort definition: family: the license covers several release families: name one"
                .into(),
        )),
    }
}

/// A cohort definition planned as a view in `ctx` (whose catalog holds the licensed tables).
async fn cohort_view(
    ctx: &SessionContext,
    cohort: &crate::cohort::CohortDefinition,
    family: &str,
) -> Result<Arc<dyn TableProvider>, QueryError> {
    let sql = cohort
        .to_sql(&schema_name(family))
        .map_err(|e| QueryError::Invalid(e.to_string()))?;
    let df = ctx.sql(&sql).await.map_err(|e| {
        QueryError::Invalid(format!(
            "cohort `{}` cannot be evaluated under this license: {}",
            cohort.name,
            e.strip_backtrace()
        ))
    })?;
    Ok(df.into_view())
}

/// One table a plan reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableRead {
    /// The schema (a release family's schema name, or `information_schema`).
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
}

/// A plan ready to run, and the prefix of the hidden columns that count persons per group, if
/// any.
#[derive(Debug)]
pub struct Planned {
    pub plan: LogicalPlan,
    pub persons_column: Option<String>,
    /// The noise and cost of a differentially private answer (licenses with privacy terms).
    pub dp: Option<crate::dp::DpPlan>,
}

impl Planned {
    /// The schema of the result the analyst gets (without the hidden persons column).
    pub fn output_schema(&self) -> SchemaRef {
        let arrow = self.plan.schema().as_arrow();
        let fields: Vec<_> = arrow
            .fields()
            .iter()
            .filter(|f| {
                !self
                    .persons_column
                    .as_ref()
                    .is_some_and(|p| f.name().starts_with(p.as_str()))
            })
            .cloned()
            .collect();
        Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
    }
}

/// Numbers `?` placeholders `$1`, `$2`, … in the order they are written (JDBC and ODBC
/// clients send `?`; DataFusion binds positions by number).
fn number_placeholders(statement: &mut datafusion::sql::parser::Statement) {
    use datafusion::sql::sqlparser::ast::{Expr, Value, visit_expressions_mut};
    use std::ops::ControlFlow;
    let datafusion::sql::parser::Statement::Statement(inner) = statement else {
        return;
    };
    let mut n = 0;
    let _ = visit_expressions_mut(inner.as_mut(), |e| {
        if let Expr::Value(v) = e
            && let Value::Placeholder(p) = &mut v.value
            && p == "?"
        {
            n += 1;
            *p = format!("${n}");
        }
        ControlFlow::<()>::Continue(())
    });
}

impl Planned {
    /// The parameters the statement takes (`$1`, `$2`, … or `?`), as a schema whose field `i`
    /// is parameter `i + 1`: typed where the plan says (view types as their plain forms, which
    /// clients send), `Null` where it does not.
    pub fn parameter_schema(&self) -> Result<SchemaRef, QueryError> {
        use datafusion::arrow::datatypes::{Field, Schema};
        let types = self
            .plan
            .get_parameter_types()
            .map_err(QueryError::planning)?;
        let mut positions: Vec<(usize, Option<DataType>)> = Vec::new();
        for (id, t) in types {
            let position = id
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    QueryError::Invalid(format!("parameter `{id}`: name parameters $1, $2, … or ?"))
                })?;
            positions.push((position, t));
        }
        positions.sort_by_key(|(p, _)| *p);
        let fields: Vec<Field> = positions
            .into_iter()
            .map(|(p, t)| {
                let t = match t {
                    Some(DataType::Utf8View) => DataType::Utf8,
                    Some(DataType::BinaryView) => DataType::Binary,
                    Some(t) => t,
                    None => DataType::Null,
                };
                Field::new(format!("${p}"), t, true)
            })
            .collect();
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The plan with its parameters bound to `values` (`values[i]` is `$i+1`), each cast to
    /// the type the plan expects where it says one.
    pub fn bind(self, values: Vec<datafusion::common::ScalarValue>) -> Result<Planned, QueryError> {
        let expected = self.parameter_schema()?;
        if expected.fields().is_empty() && values.is_empty() {
            return Ok(self);
        }
        if values.len() != expected.fields().len() {
            return Err(QueryError::Invalid(format!(
                "the statement takes {} parameter(s), {} were bound",
                expected.fields().len(),
                values.len()
            )));
        }
        let types = self
            .plan
            .get_parameter_types()
            .map_err(QueryError::planning)?;
        let values: Vec<_> = values
            .into_iter()
            .enumerate()
            .map(|(i, v)| match types.get(&format!("${}", i + 1)) {
                Some(Some(t)) if v.data_type() != *t => v.cast_to(t).unwrap_or(v),
                _ => v,
            })
            .collect();
        let plan = self
            .plan
            .with_param_values(values)
            .map_err(QueryError::planning)?;
        Ok(Planned {
            plan,
            persons_column: self.persons_column,
            dp: self.dp,
        })
    }

    /// Fingerprints of an aggregate plan as bound (from its aggregate down, so that output
    /// names, order and limits do not tell queries apart): of the plan, and of the plan with
    /// literal values masked. `None` for plans without an aggregate.
    pub fn fingerprint(&self) -> Option<tessera_licensing::store::Fingerprint> {
        self.persons_column.as_ref()?;
        let mut node = &self.plan;
        let text = loop {
            match node {
                LogicalPlan::Aggregate(_) => break node.display_indent().to_string(),
                other => match other.inputs().as_slice() {
                    [input] => node = input,
                    _ => return None,
                },
            }
        };
        // A saved cohort is inlined into the plan under its table's name: the name is masked
        // too, so that saving the same criteria under another name (or a sweep of literal
        // values under many names) does not tell aggregates apart.
        let text = mask_cohort_names(&text);
        Some(tessera_licensing::store::Fingerprint {
            same: sha256_hex(&text),
            shape: sha256_hex(&mask_literals(&text)),
        })
    }
}

/// SHA-256 of a text, hex: how query texts and plans are named in the audit log and
/// `usage_log` (never the text itself: it can hold literals).
pub(crate) fn sha256_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()).as_ref())
}

/// A plan's text with every `cohort_<name>` identifier as `cohort_?`.
pub(crate) fn mask_cohort_names(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("cohort_") {
        let starts_word = rest[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        out.push_str(&rest[..at + "cohort_".len()]);
        rest = &rest[at + "cohort_".len()..];
        if starts_word {
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            out.push('?');
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// A plan's text with literal values (`Utf8("J00.0")`, `Int64(40)`, `Float64(90)`: a
/// mixed-case type name applied to a value) replaced by `?`.
pub(crate) fn mask_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let starts_word =
            i == 0 || !(chars[i - 1].is_alphanumeric() || "_.\"".contains(chars[i - 1]));
        if c.is_ascii_uppercase() && starts_word {
            let mut j = i;
            while j < chars.len() && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            // Type names mix cases (`Int64`); `CAST(` and `CASE` are keywords.
            let typed = chars[i..j].iter().any(|c| c.is_ascii_lowercase());
            if typed && j < chars.len() && chars[j] == '(' {
                // Skip the balanced parentheses, minding quoted text.
                let mut depth = 0;
                let mut quoted = false;
                let mut k = j;
                while k < chars.len() {
                    match chars[k] {
                        '\\' if quoted => k += 1,
                        '"' => quoted = !quoted,
                        '(' if !quoted => depth += 1,
                        ')' if !quoted => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    k += 1;
                }
                out.push('?');
                i = k + 1;
                continue;
            }
            out.extend(&chars[i..j]);
            i = j;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

fn execution_error(e: DataFusionError) -> QueryError {
    let text = e.strip_backtrace();
    if text.contains("Resources exhausted") {
        QueryError::Limit(
            "the query needs more memory than one query may use: aggregate more, or select fewer columns"
                .into(),
        )
    } else {
        // DataFusion's execution errors can quote a value from the data (a failed cast names
        // the string it could not convert): an aggregate-only caller must not read values that
        // way, so the answer carries no detail.
        QueryError::Invalid(
            "the query failed while running (a value could not be converted or computed): check casts and functions"
                .into(),
        )
    }
}

/// Row-level results: capped at `max_rows`, with the distinct persons counted.
fn row_level(batches: Vec<RecordBatch>, max_rows: Option<u64>) -> QueryOutput {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
    let mut out = Vec::new();
    let mut rows = 0u64;
    let mut truncated = false;
    // Distinct persons: integer ids as integers, text ids allocated once each.
    let mut persons: foldhash::HashSet<String> = foldhash::HashSet::default();
    let mut int_persons: foldhash::HashSet<i64> = foldhash::HashSet::default();
    let mut saw_person = false;
    for b in batches {
        let room = max_rows.map_or(u64::MAX, |m| m.saturating_sub(rows));
        let take = (b.num_rows() as u64).min(room);
        if take < b.num_rows() as u64 {
            truncated = true;
        }
        if take == 0 {
            continue;
        }
        let b = b.slice(0, take as usize);
        if let Ok(i) = b.schema().index_of("person_id") {
            use datafusion::arrow::array::AsArray;
            use datafusion::arrow::datatypes::Int64Type;
            let column = b.column(i);
            if let Some(ids) = column.as_primitive_opt::<Int64Type>() {
                saw_person = true;
                int_persons.extend(ids.iter().flatten());
            } else if let Ok(text) = cast(column, &DataType::Utf8)
                && let Some(ids) = text.as_any().downcast_ref::<StringArray>()
            {
                saw_person = true;
                for id in ids.iter().flatten() {
                    if !persons.contains(id) {
                        persons.insert(id.to_string());
                    }
                }
            }
        }
        rows += take;
        out.push(b);
    }
    QueryOutput {
        schema,
        batches: out,
        rows,
        groups_suppressed: 0,
        rows_truncated: truncated,
        persons: saw_person.then_some((persons.len() + int_persons.len()) as u64),
        privacy: None,
    }
}
