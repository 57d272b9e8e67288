//! Differentially private aggregates for licenses whose terms carry
//! [`tessera_licensing::privacy::PrivacyTerms`].
//!
//! The analyst's plan passes the same checks as any aggregate-only plan
//! ([`crate::aggregate::split`]), with fewer functions allowed: `count(*)`, `count(x)`,
//! `count(DISTINCT x)`, `sum(x)` and `avg(x)` (`FILTER` clauses allowed). It is then rewritten
//! so that the noise is part of the plan, below anything the analyst put above the aggregate:
//!
//! 1. **Contribution bounds.** The aggregate's input is reduced so that each person reaches at
//!    most `G` groups and at most `R` rows per group (Tumult Analytics' MaxGroupsPerID and
//!    MaxRowsPerID): `row_number()` over (person, group keys) in random order keeps `R` rows
//!    per group, and the groups a person reaches are ranked in random order and cut at `G`.
//!    Which rows survive depends only on that person's rows, so the bounds hold whatever the
//!    other persons' data.
//! 2. **Clamping.** `sum` and `avg` read their argument clamped to bounds the analyst gives in
//!    the query's options (`-- tessera: bounds.value_as_number=0..300`), else to the bounds
//!    the release's data dictionary declares for the column (`days_since_index`: a century
//!    either side); without bounds the query is refused, because the sensitivity of an
//!    unbounded sum is unbounded.
//! 3. **Noise.** Each statistic is computed exactly, then, in the plan's next node, replaced
//!    by itself plus discrete Gaussian noise from the `opendp` crate (its secure sampler,
//!    seeded from OpenSSL's CSPRNG). One person changes a statistic by at most `c` in each of at
//!    most `G` groups (`c` = 1 for distinct persons, `R` for rows, `R·max(|lo|, |hi|)` for a
//!    clamped sum), so its L2 sensitivity is `√G·c`; the query's ρ is split evenly among its
//!    statistics and each statistic's σ = `√G·c / √(2ρᵢ)`. What is charged is what opendp's
//!    privacy map of the mechanism says (`G ·` map(c) per statistic, added up), rounded up.
//!    `avg` is a noisy sum over a noisy count (post-processing).
//! 4. **Group keys.** Group keys are data too (a diagnosis only one person has). Each group's
//!    distinct persons are counted with noise (or the query's own `count(DISTINCT person_id)`
//!    is used), and a group is released only when that noisy count reaches
//!    τ = 1 + σ·√(2·ln(G/δ)): a group held by one person passes with probability at most δ/G,
//!    by the Gaussian tail bound (which the discrete Gaussian also meets; Canonne, Kamath and
//!    Steinke 2020), so the answer is (ε, δ)-DP with δ from the license's terms. The license's
//!    minimum cell size applies to the same noisy count (free post-processing). Without
//!    `GROUP BY` the one group is public and always shown.
//!
//! `HAVING`, `ORDER BY` and `LIMIT` run above the noisy values, so they see nothing exact.
//! DataFusion does not push filters through volatile expressions, and the noise function is
//! volatile; the tests check that every released group's noisy person count clears the
//! threshold.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Int64Array};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::Column;
use datafusion::functions::expr_fn::{coalesce, greatest, least, random};
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, sum};
use datafusion::functions_window::expr_fn::{first_value, row_number};
use datafusion::logical_expr::{
    Aggregate, ColumnarValue, Expr, ExprFunctionExt, ExprSchemable, Filter, LogicalPlan,
    LogicalPlanBuilder, Projection, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility, cast, col, lit,
};
use opendp::domains::AtomDomain;
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::AbsoluteDistance;
use tessera_licensing::privacy::PrivacyTerms;

use crate::aggregate::{Hidden, NO_PERSONS, PERSONS, expose_persons, internal, split};
use crate::session::QueryError;

/// Aggregate functions a DP license answers.
const ALLOWED: &[&str] = &["count", "sum", "avg", "mean"];

/// What an analyst may set per query, in comment lines before the statement:
///
/// ```sql
/// -- tessera: rho=0.1 max_groups=3 max_rows=2
/// -- tessera: bounds.value_as_number=0..300
/// SELECT ...
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    pub rho: Option<f64>,
    pub max_groups: Option<u32>,
    pub max_rows: Option<u32>,
    /// Clamping bounds by column name (`bounds.<column>`), or for every sum (`bounds`).
    pub bounds: BTreeMap<String, (f64, f64)>,
    pub default_bounds: Option<(f64, f64)>,
}

impl Options {
    /// Reads the `-- tessera:` lines at the top of `sql`. Unknown keys and bad values are the
    /// analyst's error, named.
    pub fn parse(sql: &str) -> Result<Options, QueryError> {
        let mut out = Options::default();
        for line in sql.lines().map(str::trim) {
            if line.is_empty() {
                continue;
            }
            let Some(comment) = line.strip_prefix("--") else {
                break;
            };
            let Some(settings) = comment.trim().strip_prefix("tessera:") else {
                continue;
            };
            for setting in settings.split_whitespace() {
                let (key, value) = setting.split_once('=').ok_or_else(|| {
                    QueryError::Invalid(format!(
                        "query option `{setting}`: write key=value (rho=0.1, max_groups=3, max_rows=2, bounds.<column>=lo..hi)"
                    ))
                })?;
                let bad = |what: &str| {
                    QueryError::Invalid(format!("query option `{key}`: {what}, not `{value}`"))
                };
                match key {
                    "rho" => {
                        let v: f64 = value.parse().map_err(|_| bad("a number"))?;
                        if !(v.is_finite() && v > 0.0) {
                            return Err(bad("a positive number"));
                        }
                        out.rho = Some(v);
                    }
                    "max_groups" | "max_rows" => {
                        let v: u32 = value.parse().map_err(|_| bad("a whole number"))?;
                        if v == 0 || v > 1000 {
                            return Err(bad("a whole number from 1 to 1000"));
                        }
                        if key == "max_groups" {
                            out.max_groups = Some(v);
                        } else {
                            out.max_rows = Some(v);
                        }
                    }
                    _ if key == "bounds" || key.starts_with("bounds.") => {
                        let (lo, hi) = value
                            .split_once("..")
                            .and_then(|(a, b)| {
                                Some((a.parse::<f64>().ok()?, b.parse::<f64>().ok()?))
                            })
                            .filter(|(a, b)| a.is_finite() && b.is_finite() && a <= b)
                            .ok_or_else(|| bad("lo..hi with lo <= hi"))?;
                        match key.strip_prefix("bounds.") {
                            Some(column) => {
                                out.bounds.insert(column.to_string(), (lo, hi));
                            }
                            None => out.default_bounds = Some((lo, hi)),
                        }
                    }
                    _ => {
                        return Err(QueryError::Invalid(format!(
                            "query option `{key}` is unknown: use rho, max_groups, max_rows, bounds or bounds.<column>"
                        )));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// One noisy statistic of an answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Statistic {
    /// The output column it answers (or the hidden persons column).
    pub column: String,
    pub kind: &'static str,
    /// The noise's standard deviation.
    pub stddev: f64,
    /// What it costs (zCDP ρ).
    pub rho: f64,
}

/// What the rewrite decided: the answer's cost and each column's noise.
#[derive(Debug, Clone, PartialEq)]
pub struct DpPlan {
    /// ρ charged for the answer: the sum over its statistics.
    pub rho: f64,
    /// δ spent by releasing group keys over a threshold (0 without `GROUP BY`).
    pub delta: f64,
    /// The noisy persons count a group must reach to be shown, when grouped.
    pub threshold: Option<f64>,
    pub max_groups: u32,
    pub max_rows: u32,
    /// Aggregate output name → its statistics (two for `avg`: sum and count).
    pub statistics: Vec<Statistic>,
    /// The result's columns that show one noisy statistic as it is (through aliases), with
    /// the noise's standard deviation.
    pub result_stddev: Vec<(String, f64)>,
}

impl DpPlan {
    /// The noise's standard deviation of an aggregate output column, where it is one number
    /// (not for `avg`, a ratio of two noisy values).
    pub fn stddev_of(&self, column: &str) -> Option<f64> {
        let mut of = self.statistics.iter().filter(|s| s.column == column);
        match (of.next(), of.next()) {
            (Some(s), None) => Some(s.stddev),
            _ => None,
        }
    }
}

/// How a statistic moves when one person is removed, within one group.
struct Stat {
    /// The exact aggregate over the bounded input.
    expr: Expr,
    /// Its largest change per group (`c`).
    per_group: f64,
    integer: bool,
    kind: &'static str,
    /// The output column it serves.
    column: String,
}

/// Rewrites an aggregate-only plan into its differentially private form.
pub fn rewrite(
    plan: LogicalPlan,
    identifying: &[String],
    terms: &PrivacyTerms,
    options: &Options,
    min_cell_size: u32,
) -> Result<(LogicalPlan, DpPlan), QueryError> {
    let (above, aggregate) = split(plan, identifying, ALLOWED)?;
    let mut hidden = Hidden::default();
    let (input, persons) = expose_persons(aggregate.input.as_ref().clone(), &mut hidden)?;
    let person = match persons.as_slice() {
        [] => return Err(QueryError::refused("no_persons", NO_PERSONS)),
        [one] => one.clone(),
        _ => {
            return Err(QueryError::refused(
                "dp_persons",
                "under a differential-privacy license the rows reaching the aggregate must belong to one person each: join the tables on person_id",
            ));
        }
    };
    let rho = options.rho.unwrap_or(terms.rho_per_query);
    if rho > terms.max_rho_per_query {
        return Err(QueryError::refused(
            "privacy_budget",
            format!(
                "rho={rho} is more than one answer may cost under this license ({})",
                terms.max_rho_per_query
            ),
        ));
    }
    let grouped = !aggregate.group_expr.is_empty();
    let max_groups = if grouped {
        options.max_groups.unwrap_or(terms.max_groups_per_person)
    } else {
        1
    };
    let max_rows = options.max_rows.unwrap_or(terms.max_rows_per_person);
    let r = f64::from(max_rows);

    // The statistics each aggregate output needs.
    let input_schema = input.schema().clone();
    let original = aggregate.schema.clone();
    let groups = aggregate.group_expr.len();
    let mut stats: Vec<Stat> = Vec::new();
    let mut outputs: Vec<(usize, Vec<usize>)> = Vec::new();
    // The centre added back to a mean, by its sum's statistic.
    let mut midpoints: BTreeMap<usize, f64> = BTreeMap::new();
    for (i, e) in aggregate.aggr_expr.iter().enumerate() {
        let column = original.field(groups + i).name().clone();
        let inner = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        let Expr::AggregateFunction(f) = inner else {
            return Err(QueryError::refused(
                "not_aggregate",
                "an aggregate is expected",
            ));
        };
        let name = f.func.name().to_ascii_lowercase();
        let params = &f.params;
        let filter = params.filter.as_deref().cloned();
        let with_filter = |e: Expr| -> Result<Expr, QueryError> {
            match &filter {
                None => Ok(e),
                Some(f) => e.filter(f.clone()).build().map_err(internal),
            }
        };
        let first = stats.len();
        match name.as_str() {
            "count" => {
                let of_person = params.distinct
                    && matches!(params.args.as_slice(), [Expr::Column(c)] if *c == person);
                stats.push(Stat {
                    expr: with_filter(Expr::AggregateFunction(f.clone()))?,
                    per_group: if of_person { 1.0 } else { r },
                    integer: true,
                    kind: if of_person { "persons" } else { "count" },
                    column: column.clone(),
                });
            }
            "sum" | "avg" | "mean" => {
                if params.distinct {
                    return Err(QueryError::refused(
                        "dp_function",
                        format!(
                            "{name}(DISTINCT ...) is not available under a differential-privacy license: use {name}(...)"
                        ),
                    ));
                }
                let [arg] = params.args.as_slice() else {
                    return Err(QueryError::refused(
                        "dp_function",
                        format!("{name} takes one argument"),
                    ));
                };
                let (lo, hi) = bounds_for(arg, options).ok_or_else(|| {
                    let named = arg
                        .column_refs()
                        .iter()
                        .next()
                        .map(|c| c.name.clone())
                        .unwrap_or_else(|| "column".into());
                    QueryError::refused(
                        "dp_bounds",
                        format!(
                            "{name}({arg}) needs clamping bounds under a differential-privacy license: add a first line `-- tessera: bounds.{named}=lo..hi` (values outside are clamped to the bounds)"
                        ),
                    )
                })?;
                let integer = arg
                    .get_type(input_schema.as_ref())
                    .map(|t| t.is_integer())
                    .unwrap_or(false)
                    && lo.fract() == 0.0
                    && hi.fract() == 0.0;
                let clamped = if integer {
                    greatest(vec![
                        least(vec![cast(arg.clone(), DataType::Int64), lit(hi as i64)]),
                        lit(lo as i64),
                    ])
                } else {
                    greatest(vec![
                        least(vec![cast(arg.clone(), DataType::Float64), lit(hi)]),
                        lit(lo),
                    ])
                };
                if name == "sum" {
                    stats.push(Stat {
                        expr: with_filter(sum(clamped))?,
                        per_group: r * lo.abs().max(hi.abs()),
                        integer,
                        kind: "sum",
                        column: column.clone(),
                    });
                } else {
                    // A mean sums its values centred on the bounds' midpoint, so a row moves
                    // the sum by at most half the range (not by the bounds' magnitude), and
                    // adds the midpoint back after the division.
                    let mid = (lo + hi) / 2.0;
                    let centred = greatest(vec![
                        least(vec![cast(arg.clone(), DataType::Float64), lit(hi)]),
                        lit(lo),
                    ]) - lit(mid);
                    stats.push(Stat {
                        expr: with_filter(sum(centred))?,
                        per_group: r * (hi - lo) / 2.0,
                        integer: false,
                        kind: "sum",
                        column: column.clone(),
                    });
                    midpoints.insert(stats.len() - 1, mid);
                    stats.push(Stat {
                        expr: with_filter(count(arg.clone()))?,
                        per_group: r,
                        integer: true,
                        kind: "count",
                        column: column.clone(),
                    });
                }
            }
            other => {
                return Err(QueryError::refused(
                    "aggregate_function",
                    format!(
                        "`{other}` is not available under a differential-privacy license: use {}",
                        ALLOWED[..3].join(", ")
                    ),
                ));
            }
        }
        outputs.push((i, (first..stats.len()).collect()));
    }
    // The persons behind each group: the query's own distinct-person count, else a hidden one.
    let persons_stat = match stats.iter().position(|s| s.kind == "persons") {
        Some(i) => i,
        None => {
            stats.push(Stat {
                expr: count_distinct(Expr::Column(person.clone())),
                per_group: 1.0,
                integer: true,
                kind: "persons",
                column: format!("{PERSONS}_0"),
            });
            stats.len() - 1
        }
    };

    // σ and ρ of each statistic, from opendp's privacy map.
    let share = rho / stats.len() as f64;
    let g = f64::from(max_groups);
    let mut statistics = Vec::with_capacity(stats.len());
    let mut charged = 0.0;
    for s in &stats {
        let sigma = (g.sqrt() * s.per_group) / (2.0 * share).sqrt();
        let rho_one = cell_rho(sigma, s.per_group, s.integer)?;
        let cost = g * rho_one;
        charged += cost;
        statistics.push(Statistic {
            column: s.column.clone(),
            kind: s.kind,
            stddev: sigma,
            rho: cost,
        });
    }
    let persons_sigma = statistics[persons_stat].stddev;
    let (threshold, delta) = if grouped {
        let tau = 1.0 + persons_sigma * (2.0 * (g / terms.delta).ln()).sqrt();
        (Some(tau.max(f64::from(min_cell_size))), terms.delta)
    } else {
        (None, 0.0)
    };

    // 1. The bounded input (the person table has one row per person: nothing to bound).
    let bounded = if one_row_per_person(&input) {
        input
    } else {
        bound_contributions(input, &person, &aggregate.group_expr, max_groups, max_rows)?
    };
    // 2. The exact statistics over it.
    let names: Vec<String> = (0..stats.len())
        .map(|i| format!("__tessera_dp_{i}"))
        .collect();
    let aggr_expr: Vec<Expr> = stats
        .iter()
        .zip(&names)
        .map(|(s, n)| s.expr.clone().alias(n))
        .collect();
    let exact = LogicalPlan::Aggregate(
        Aggregate::try_new(Arc::new(bounded), aggregate.group_expr.clone(), aggr_expr)
            .map_err(internal)?,
    );
    // 3. The noise: each statistic drawn once, in its own column (a statistic two outputs
    //    read, such as the query's own person count that is also the threshold's, must not be
    //    drawn twice); then the names the nodes above expect. DataFusion does not inline a
    //    volatile expression read twice, nor push a filter below it.
    let exact_schema = exact.schema().clone();
    let group_columns: Vec<Expr> = (0..groups)
        .map(|i| {
            let (q, f) = exact_schema.qualified_field(i);
            Expr::Column(Column::new(q.cloned(), f.name()))
        })
        .collect();
    let noisy_name = |i: usize| format!("__tessera_noisy_{i}");
    let mut drawn = group_columns.clone();
    for (i, s) in stats.iter().enumerate() {
        let value = coalesce(vec![col(names[i].as_str()), lit(0)]);
        let value = if s.integer {
            cast(value, DataType::Int64)
        } else {
            cast(value, DataType::Float64)
        };
        drawn.push(
            noise_udf()
                .call(vec![value, lit(statistics[i].stddev)])
                .alias(noisy_name(i)),
        );
    }
    let drawn =
        LogicalPlan::Projection(Projection::try_new(drawn, Arc::new(exact)).map_err(internal)?);
    let noisy = |i: usize| col(noisy_name(i).as_str());
    let mut exprs: Vec<Expr> = group_columns
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let (oq, of) = original.qualified_field(i);
            c.alias_qualified(oq.cloned(), of.name())
        })
        .collect();
    for (i, parts) in &outputs {
        let (q, f) = original.qualified_field(groups + i);
        let value = match parts.as_slice() {
            [one] => noisy(*one),
            [s, c] => {
                lit(midpoints.get(s).copied().unwrap_or(0.0))
                    + cast(noisy(*s), DataType::Float64)
                        / greatest(vec![cast(noisy(*c), DataType::Float64), lit(1.0)])
            }
            _ => {
                return Err(QueryError::Internal(
                    "an aggregate without statistics".into(),
                ));
            }
        };
        exprs.push(value.alias_qualified(q.cloned(), f.name()));
    }
    let persons_name = format!("{PERSONS}_0");
    exprs.push(noisy(persons_stat).alias(&persons_name));
    let mut current =
        LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(drawn)).map_err(internal)?);
    // 4. Group keys over the noisy threshold.
    if let Some(tau) = threshold {
        current = LogicalPlan::Filter(
            Filter::try_new(
                cast(col(persons_name.as_str()), DataType::Float64).gt_eq(lit(tau)),
                Arc::new(current),
            )
            .map_err(internal)?,
        );
    }
    let mut plan = DpPlan {
        rho: charged,
        delta,
        threshold,
        max_groups,
        max_rows,
        statistics,
        result_stddev: Vec::new(),
    };
    plan.result_stddev = result_columns(&above, &original)
        .into_iter()
        .filter_map(|(out, source)| plan.stddev_of(&source).map(|s| (out, s)))
        .collect();
    let current = crate::aggregate::rebuild_above(current, above, &[persons_name])?;
    Ok((current, plan))
}

/// The result's column names, each with the aggregate output it shows unchanged (through
/// projections that pass or rename it); columns computed from it are left out.
fn result_columns(
    above: &[LogicalPlan],
    aggregate: &datafusion::common::DFSchemaRef,
) -> Vec<(String, String)> {
    // From the aggregate up: each level's column names → the aggregate column they show.
    let mut names: Vec<(String, String)> = aggregate
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.name().clone()))
        .collect();
    for node in above.iter().rev() {
        if let LogicalPlan::Projection(p) = node {
            names = p
                .expr
                .iter()
                .zip(p.schema.fields())
                .filter_map(|(e, f)| {
                    let mut inner = e;
                    while let Expr::Alias(a) = inner {
                        inner = a.expr.as_ref();
                    }
                    match inner {
                        Expr::Column(c) => names
                            .iter()
                            .find(|(n, _)| *n == c.name)
                            .map(|(_, source)| (f.name().clone(), source.clone())),
                        _ => None,
                    }
                })
                .collect();
        }
    }
    names
}

/// Schema metadata of a noisy result: the noise's standard deviation of a column (on the
/// field), and what the answer cost and left (on the schema, set by the service).
pub const STDDEV: &str = "tessera.dp.stddev";

/// `schema` with each column that shows one noisy statistic marked with the noise's standard
/// deviation ([`STDDEV`] in the field's metadata).
pub fn annotate(
    schema: &datafusion::arrow::datatypes::SchemaRef,
    dp: &DpPlan,
) -> datafusion::arrow::datatypes::SchemaRef {
    use datafusion::arrow::datatypes::{Field, Schema};
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            let mut f = f.as_ref().clone();
            if let Some((_, s)) = dp.result_stddev.iter().find(|(n, _)| n == f.name()) {
                let mut m = f.metadata().clone();
                m.insert(STDDEV.into(), s.to_string());
                f = f.with_metadata(m);
            }
            f
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A noisy result as the analyst gets it: the hidden persons column removed (its noisy values
/// summed for metering), each column showing one statistic marked with its noise's standard
/// deviation. Nothing is suppressed here: the threshold ran inside the plan.
pub fn finish(
    batches: Vec<datafusion::arrow::array::RecordBatch>,
    column: &str,
    dp: &DpPlan,
) -> Result<crate::session::QueryOutput, QueryError> {
    use datafusion::arrow::datatypes::Schema;
    let failed = |e: datafusion::arrow::error::ArrowError| QueryError::Internal(e.to_string());
    let mut out = Vec::with_capacity(batches.len());
    let mut persons = 0u64;
    let mut rows = 0u64;
    let mut schema: Option<Arc<Schema>> = None;
    for b in batches {
        let hidden: Vec<usize> = (0..b.num_columns())
            .filter(|i| b.schema().field(*i).name().starts_with(column))
            .collect();
        for i in &hidden {
            let counts =
                datafusion::arrow::compute::cast(b.column(*i), &DataType::Int64).map_err(failed)?;
            if let Some(c) = counts.as_any().downcast_ref::<Int64Array>() {
                persons += c.iter().flatten().map(|n| n.max(0) as u64).sum::<u64>();
            }
        }
        let others: Vec<usize> = (0..b.num_columns())
            .filter(|c| !hidden.contains(c))
            .collect();
        let b = b.project(&others).map_err(failed)?;
        let schema = schema
            .get_or_insert_with(|| annotate(&b.schema(), dp))
            .clone();
        rows += b.num_rows() as u64;
        out.push(b.with_schema(schema).map_err(failed)?);
    }
    Ok(crate::session::QueryOutput {
        schema: schema.unwrap_or_else(|| Arc::new(Schema::empty())),
        batches: out,
        rows,
        groups_suppressed: 0,
        rows_truncated: false,
        persons: Some(persons),
        privacy: None,
    })
}

/// What a differentially private answer cost and what the license has left.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AnswerPrivacy {
    /// ρ this answer cost: 0 when it repeats an answer released before.
    pub rho_charged: f64,
    /// The answer was released before and is shown again as it was.
    pub cached: bool,
    /// The noisy distinct-person count a group had to reach to be shown.
    pub threshold: Option<f64>,
    pub max_groups_per_person: u32,
    pub max_rows_per_person: u32,
    /// The noise's standard deviation of each result column showing one statistic.
    pub stddev: BTreeMap<String, f64>,
    pub budget: tessera_licensing::privacy::BudgetView,
}

/// Result schema metadata keys of a noisy answer.
pub mod meta {
    pub const RHO_CHARGED: &str = "tessera.dp.rho_charged";
    pub const CACHED: &str = "tessera.dp.cached";
    pub const RHO_SPENT: &str = "tessera.dp.rho_spent";
    pub const RHO_BUDGET: &str = "tessera.dp.rho_budget";
    pub const RHO_REMAINING: &str = "tessera.dp.rho_remaining";
    pub const EPSILON_SPENT: &str = "tessera.dp.epsilon_spent";
    pub const DELTA: &str = "tessera.dp.delta";
    pub const THRESHOLD: &str = "tessera.dp.threshold";
    pub const MAX_GROUPS: &str = "tessera.dp.max_groups_per_person";
    pub const MAX_ROWS: &str = "tessera.dp.max_rows_per_person";
}

impl AnswerPrivacy {
    /// The schema metadata that carries it (Flight SQL clients read `schema.metadata`).
    pub fn metadata(&self) -> std::collections::HashMap<String, String> {
        let mut m = std::collections::HashMap::new();
        m.insert(meta::RHO_CHARGED.into(), self.rho_charged.to_string());
        m.insert(meta::CACHED.into(), self.cached.to_string());
        m.insert(meta::RHO_SPENT.into(), self.budget.rho_spent.to_string());
        m.insert(meta::RHO_BUDGET.into(), self.budget.rho_budget.to_string());
        m.insert(
            meta::RHO_REMAINING.into(),
            self.budget.rho_remaining.to_string(),
        );
        m.insert(
            meta::EPSILON_SPENT.into(),
            self.budget.epsilon_spent.to_string(),
        );
        m.insert(meta::DELTA.into(), self.budget.delta.to_string());
        if let Some(t) = self.threshold {
            m.insert(meta::THRESHOLD.into(), t.to_string());
        }
        m.insert(
            meta::MAX_GROUPS.into(),
            self.max_groups_per_person.to_string(),
        );
        m.insert(meta::MAX_ROWS.into(), self.max_rows_per_person.to_string());
        m
    }
}

/// A released answer as stored: Arrow IPC of its schema (with the noise's metadata) and rows.
pub fn encode(output: &crate::session::QueryOutput) -> Result<Vec<u8>, QueryError> {
    let failed = |e: datafusion::arrow::error::ArrowError| QueryError::Internal(e.to_string());
    let mut bytes = Vec::new();
    {
        let mut w =
            datafusion::arrow::ipc::writer::StreamWriter::try_new(&mut bytes, &output.schema)
                .map_err(failed)?;
        for b in &output.batches {
            w.write(b).map_err(failed)?;
        }
        w.finish().map_err(failed)?;
    }
    Ok(bytes)
}

/// A stored answer read back.
pub fn decode(bytes: &[u8]) -> Result<crate::session::QueryOutput, QueryError> {
    let failed = |e: datafusion::arrow::error::ArrowError| QueryError::Internal(e.to_string());
    let reader =
        datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(failed)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(failed)?;
    let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
    Ok(crate::session::QueryOutput {
        schema,
        batches,
        rows,
        groups_suppressed: 0,
        rows_truncated: false,
        persons: None,
        privacy: None,
    })
}

/// The clamping bounds of a sum's argument: those of the one column it reads, else the
/// query's default.
fn bounds_for(arg: &Expr, options: &Options) -> Option<(f64, f64)> {
    let columns = arg.column_refs();
    let named = match columns.iter().collect::<Vec<_>>().as_slice() {
        [one] => options.bounds.get(&one.name).copied(),
        _ => None,
    };
    named.or(options.default_bounds)
}

type Mechanism<T> =
    opendp::core::Measurement<AtomDomain<T>, AbsoluteDistance<T>, ZeroConcentratedDivergence, T>;

/// opendp's discrete Gaussian mechanism of scale `sigma` on integers.
fn integer_mechanism(sigma: f64) -> opendp::error::Fallible<Mechanism<i64>> {
    make_gaussian(
        AtomDomain::<i64>::default(),
        AbsoluteDistance::default(),
        sigma,
        None,
    )
}

/// opendp's discrete Gaussian mechanism of scale `sigma` on floats (its finest grid).
fn float_mechanism(sigma: f64) -> opendp::error::Fallible<Mechanism<f64>> {
    make_gaussian(
        AtomDomain::<f64>::new_non_nan(),
        AbsoluteDistance::default(),
        sigma,
        None,
    )
}

/// ρ of one cell of sensitivity `c` under discrete Gaussian noise of scale `sigma`, from
/// opendp's privacy map of the mechanism it will run.
fn cell_rho(sigma: f64, c: f64, integer: bool) -> Result<f64, QueryError> {
    let failed = |e: opendp::error::Error| QueryError::Internal(format!("opendp: {e}"));
    if integer {
        integer_mechanism(sigma)
            .and_then(|m| m.map(&(c.ceil() as i64)))
            .map_err(failed)
    } else {
        float_mechanism(sigma)
            .and_then(|m| m.map(&c))
            .map_err(failed)
    }
}

/// Whether `plan` holds at most one row per person: the release's `person` table (one row per
/// `person_id`, as every release is built), or an aggregate grouped by the person alone, under
/// projections, filters, sorts and limits only.
fn one_row_per_person(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(scan) => scan.table_name.table() == "person",
        // An inner aggregate grouped by the person alone (a time-to-first-event query).
        LogicalPlan::Aggregate(a) => matches!(a.group_expr.as_slice(),
            [Expr::Column(c)] if c.name == "person_id" || c.name.starts_with("__tessera_person")),
        LogicalPlan::Projection(_)
        | LogicalPlan::Filter(_)
        | LogicalPlan::SubqueryAlias(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_) => match plan.inputs().as_slice() {
            [input] => one_row_per_person(input),
            _ => false,
        },
        _ => false,
    }
}

/// `input` with each person's rows cut to `max_rows` per group and `max_groups` groups, the
/// rows and groups kept chosen at random.
fn bound_contributions(
    input: LogicalPlan,
    person: &Column,
    group_expr: &[Expr],
    max_groups: u32,
    max_rows: u32,
) -> Result<LogicalPlan, QueryError> {
    let columns: Vec<Expr> = input
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let p = Expr::Column(person.clone());
    // One group and one row per person (the defaults) is one random row per person: one
    // window over the person alone, instead of three.
    let one_row = max_groups == 1 && max_rows == 1;
    let group_expr = if one_row { &[][..] } else { group_expr };
    let mut per_group = vec![p.clone()];
    per_group.extend(group_expr.iter().cloned());
    let shuffle = col("__tessera_r").sort(true, false);
    let mut b = LogicalPlanBuilder::from(input);
    // A random order: `random()` is projected once, so every window sees the same draw.
    let mut with_random = columns.clone();
    with_random.push(random().alias("__tessera_r"));
    b = b.project(with_random).map_err(internal)?;
    b = b
        .window(vec![
            row_number()
                .partition_by(per_group.clone())
                .order_by(vec![shuffle.clone()])
                .build()
                .map_err(internal)?
                .alias("__tessera_rn"),
        ])
        .map_err(internal)?;
    if !group_expr.is_empty() {
        // The groups in a random order: the first row of each group (rn = 1) gets its group's
        // rank among the person's groups, and every row of the group takes that rank.
        b = b
            .window(vec![
                row_number()
                    .partition_by(vec![p.clone()])
                    .order_by(vec![col("__tessera_rn").sort(true, false), shuffle.clone()])
                    .build()
                    .map_err(internal)?
                    .alias("__tessera_gr"),
            ])
            .map_err(internal)?;
        b = b
            .window(vec![
                first_value(col("__tessera_gr"))
                    .partition_by(per_group)
                    .order_by(vec![col("__tessera_rn").sort(true, false)])
                    .build()
                    .map_err(internal)?
                    .alias("__tessera_g"),
            ])
            .map_err(internal)?;
        b = b
            .filter(col("__tessera_g").lt_eq(lit(u64::from(max_groups))))
            .map_err(internal)?;
    }
    b = b
        .filter(col("__tessera_rn").lt_eq(lit(u64::from(max_rows))))
        .map_err(internal)?;
    b = b.project(columns).map_err(internal)?;
    b.build().map_err(internal)
}

/// `tessera_dp_noise(value, sigma)`: the value plus discrete Gaussian noise of scale `sigma`
/// (integers: on the integers; floats: on opendp's finest float grid), drawn by `opendp`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct Noise {
    signature: Signature,
}

fn noise_udf() -> ScalarUDF {
    ScalarUDF::new_from_impl(Noise {
        signature: Signature::any(2, Volatility::Volatile),
    })
}

impl ScalarUDFImpl for Noise {
    fn name(&self) -> &str {
        "tessera_dp_noise"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, types: &[DataType]) -> datafusion::common::Result<DataType> {
        Ok(match types.first() {
            Some(DataType::Int64) => DataType::Int64,
            _ => DataType::Float64,
        })
    }
    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::common::Result<ColumnarValue> {
        use datafusion::common::{DataFusionError, ScalarValue};
        let rows = args.number_rows;
        let [value, sigma] = args.args.as_slice() else {
            return Err(DataFusionError::Internal(
                "tessera_dp_noise takes 2 arguments".into(),
            ));
        };
        let ColumnarValue::Scalar(ScalarValue::Float64(Some(sigma))) = sigma else {
            return Err(DataFusionError::Internal(
                "tessera_dp_noise: sigma must be a literal".into(),
            ));
        };
        let failed = |e: opendp::error::Error| DataFusionError::Execution(format!("noise: {e}"));
        let values = value.to_array(rows)?;
        let out: ArrayRef = if let Some(v) = values.as_any().downcast_ref::<Int64Array>() {
            let m = integer_mechanism(*sigma).map_err(failed)?;
            let noisy = v
                .iter()
                .map(|x| x.map(|x| m.invoke(&x)).transpose())
                .collect::<Result<Int64Array, _>>()
                .map_err(failed)?;
            Arc::new(noisy)
        } else if let Some(v) = values.as_any().downcast_ref::<Float64Array>() {
            let m = float_mechanism(*sigma).map_err(failed)?;
            let noisy = v
                .iter()
                .map(|x| {
                    x.filter(|x| x.is_finite())
                        .map(|x| m.invoke(&x))
                        .transpose()
                })
                .collect::<Result<Float64Array, _>>()
                .map_err(failed)?;
            Arc::new(noisy)
        } else {
            return Err(DataFusionError::Internal(format!(
                "tessera_dp_noise: {} values",
                values.data_type()
            )));
        };
        Ok(ColumnarValue::Array(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_read_from_the_leading_comments() {
        let o = Options::parse(
            "-- tessera: rho=0.1 max_groups=3\n-- a note\n-- tessera: bounds.value_as_number=0..300 bounds=-1..1\nSELECT 1 -- tessera: rho=9",
        )
        .expect("options");
        assert_eq!(o.rho, Some(0.1));
        assert_eq!(o.max_groups, Some(3));
        assert_eq!(o.bounds.get("value_as_number"), Some(&(0.0, 300.0)));
        assert_eq!(o.default_bounds, Some((-1.0, 1.0)));
        let e = Options::parse("-- tessera: epsilon=1\nSELECT 1").expect_err("refused");
        assert!(e.to_string().contains("`epsilon` is unknown"), "{e}");
        let e = Options::parse("-- tessera: bounds.x=5..1\nSELECT 1").expect_err("refused");
        assert!(e.to_string().contains("lo <= hi"), "{e}");
    }

    #[test]
    fn opendp_charges_what_the_formula_says() {
        // σ = 10 for a count: ρ = c²/(2σ²) = 0.005.
        let rho = cell_rho(10.0, 1.0, true).expect("ρ");
        assert!((rho - 0.005).abs() < 1e-12, "{rho}");
        let rho = cell_rho(10.0, 2.5, false).expect("ρ");
        assert!((rho - 2.5f64.powi(2) / 200.0).abs() < 1e-9, "{rho}");
    }
}
