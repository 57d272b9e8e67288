//! Aggregate-only licenses: what a plan may be, how it is rewritten, and what its result may
//! show. Checked on DataFusion's logical plan (subqueries included), never on the SQL text.
//!
//! A plan is accepted when, from its root down, only projections, sorts, limits, `HAVING`
//! filters, aliases and `DISTINCT` stand above one aggregate, and:
//! - no window function appears anywhere;
//! - no grouping expression reads `person_id` or a column the license marks identifying (a
//!   renamed identifier gets past this check, but not past suppression: its groups hold one
//!   person each);
//! - every aggregate function is on the allow-list (count, sum, avg, variance and standard
//!   deviation): `min`, `max`, `median`, percentiles, `array_agg`, `string_agg`,
//!   `first_value`/`last_value` and anything else would show a person-level value;
//! - no subquery appears in the aggregate's grouping or aggregate expressions or above it (a
//!   scalar subquery there could carry a person-level value into the result);
//! - the aggregate reads a table with `person_id`.
//!
//! Below the aggregate the analyst may shape rows freely (subqueries, CTEs, joins, inner
//! aggregates grouped by person, as in a time-to-first-event query), because only the
//! aggregate's groups leave the service. To count the persons behind each group, the plan is
//! rewritten so the aggregate's input carries the person columns it derives from
//! ([`expose_persons`]): projections that dropped `person_id` get it back under a hidden name,
//! and an inner join on equal person columns keeps one of them. The aggregate then gets one
//! hidden output per person column, the distinct persons behind each group ([`PERSONS`]`_i`),
//! carried up through the projections; [`protect`] takes the smallest of them (a group must
//! hold enough persons from every table it joins), drops the groups with fewer persons than
//! the license's minimum cell size, removes the hidden columns, and rounds integer results to
//! the license's rounding base.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Int64Array, RecordBatch, UInt64Array,
};
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::Column;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::functions_aggregate::expr_fn::count_distinct;
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, Projection, col};
use tessera_licensing::model::OutputRules;

use crate::session::{QueryError, QueryOutput};

/// The hidden column that counts distinct persons per group.
pub const PERSONS: &str = "__tessera_persons";

/// Aggregate functions whose result does not show any one person's value.
const ALLOWED: &[&str] = &[
    "count",
    "sum",
    "avg",
    "mean",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "var",
    "var_samp",
    "var_pop",
    "variance",
];

fn has_subquery(e: &Expr) -> bool {
    e.exists(|x| {
        Ok(matches!(
            x,
            Expr::ScalarSubquery(_) | Expr::Exists(_) | Expr::InSubquery(_)
        ))
    })
    .unwrap_or(true)
}

fn reads_identifier(e: &Expr, identifying: &[String]) -> bool {
    e.column_refs()
        .iter()
        .any(|c| c.name == "person_id" || identifying.contains(&c.name))
}

/// Whether an aggregate stands below `node` through the nodes allowed above one.
fn reaches_aggregate(node: &LogicalPlan) -> bool {
    let mut node = node;
    loop {
        match node {
            LogicalPlan::Aggregate(_) => return true,
            LogicalPlan::Projection(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Distinct(_) => match node.inputs().as_slice() {
                [input] => node = input,
                _ => return false,
            },
            _ => return false,
        }
    }
}

const NOT_AGGREGATE: &str = "this license is aggregate-only: the result must be an aggregate over persons (GROUP BY with count, sum or avg), without a row-level part";

/// Checks an analyst's plan against the aggregate-only rules and adds [`PERSONS`].
pub fn rewrite(plan: LogicalPlan, identifying: &[String]) -> Result<LogicalPlan, QueryError> {
    let (above, aggregate) = split(plan, identifying, ALLOWED)?;
    let mut hidden = Hidden::default();
    let (input, persons) = expose_persons(aggregate.input.as_ref().clone(), &mut hidden)?;
    if persons.is_empty() {
        return Err(QueryError::refused("no_persons", NO_PERSONS));
    }
    let mut aggr_expr = aggregate.aggr_expr.clone();
    let names: Vec<String> = (0..persons.len())
        .map(|i| format!("{PERSONS}_{i}"))
        .collect();
    for (person, name) in persons.into_iter().zip(&names) {
        aggr_expr.push(count_distinct(Expr::Column(person)).alias(name));
    }
    let current = LogicalPlan::Aggregate(
        Aggregate::try_new(Arc::new(input), aggregate.group_expr.clone(), aggr_expr)
            .map_err(internal)?,
    );
    rebuild_above(current, above, &names)
}

pub(crate) const NO_PERSONS: &str =
    "the aggregate must read a table with person_id, so that groups can be counted in persons";

/// Puts the nodes that stood above the aggregate back over `current`, each projection carrying
/// the hidden columns `names` up.
pub(crate) fn rebuild_above(
    mut current: LogicalPlan,
    above: Vec<LogicalPlan>,
    names: &[String],
) -> Result<LogicalPlan, QueryError> {
    for wrapper in above.into_iter().rev() {
        current = match wrapper {
            LogicalPlan::Projection(p) => {
                let mut exprs = p.expr.clone();
                exprs.extend(names.iter().map(|n| col(n.as_str())));
                LogicalPlan::Projection(
                    Projection::try_new(exprs, Arc::new(current)).map_err(internal)?,
                )
            }
            other => other
                .with_new_exprs(other.expressions(), vec![current])
                .map_err(internal)?,
        };
    }
    Ok(current)
}

/// Checks a plan against the aggregate-only rules with the aggregate functions `allowed`, and
/// splits it into the nodes above its aggregate (root first) and the aggregate.
pub(crate) fn split(
    plan: LogicalPlan,
    identifying: &[String],
    allowed: &[&str],
) -> Result<(Vec<LogicalPlan>, Aggregate), QueryError> {
    let mut window = false;
    plan.apply_with_subqueries(|node| {
        if matches!(node, LogicalPlan::Window(_)) {
            window = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })
    .map_err(|e| QueryError::Internal(e.to_string()))?;
    if window {
        return Err(QueryError::refused(
            "no_window",
            "window functions are not available under an aggregate-only license",
        ));
    }
    if plan
        .schema()
        .fields()
        .iter()
        .any(|f| f.name().starts_with("__tessera"))
    {
        return Err(QueryError::refused(
            "reserved_name",
            "names starting with __tessera are reserved: rename the column",
        ));
    }
    // Walk down to the aggregate through the nodes allowed above it.
    let mut above: Vec<LogicalPlan> = Vec::new();
    let mut node = plan;
    let aggregate = loop {
        match node {
            LogicalPlan::Aggregate(a) => break a,
            LogicalPlan::Projection(_)
            | LogicalPlan::Sort(_)
            | LogicalPlan::Limit(_)
            | LogicalPlan::Filter(_)
            | LogicalPlan::SubqueryAlias(_)
            | LogicalPlan::Distinct(_) => {
                if node.expressions().iter().any(has_subquery) {
                    // A row-level result (a saved cohort's rows, with its criteria's
                    // subqueries) is refused for what it is.
                    if !reaches_aggregate(&node) {
                        return Err(QueryError::refused("not_aggregate", NOT_AGGREGATE));
                    }
                    return Err(QueryError::refused(
                        "subquery_outside_aggregate",
                        "a subquery outside the aggregate could show a person-level value: move it inside the aggregated query",
                    ));
                }
                let inputs = node.inputs();
                let [input] = inputs.as_slice() else {
                    return Err(QueryError::refused("not_aggregate", NOT_AGGREGATE));
                };
                let input = (*input).clone();
                above.push(node);
                node = input;
            }
            _ => return Err(QueryError::refused("not_aggregate", NOT_AGGREGATE)),
        }
    };
    if aggregate
        .group_expr
        .iter()
        .any(|e| reads_identifier(e, identifying))
    {
        return Err(QueryError::refused(
            "group_by_person",
            "grouping by person_id or another column that identifies a person would make one group per person: group by a characteristic instead",
        ));
    }
    if aggregate
        .group_expr
        .iter()
        .chain(aggregate.aggr_expr.iter())
        .any(has_subquery)
    {
        return Err(QueryError::refused(
            "subquery_outside_aggregate",
            "subqueries in grouping or aggregate expressions are not available under an aggregate-only license",
        ));
    }
    for e in &aggregate.aggr_expr {
        let inner = match e {
            Expr::Alias(a) => a.expr.as_ref(),
            other => other,
        };
        let name = match inner {
            Expr::AggregateFunction(f) => f.func.name().to_ascii_lowercase(),
            _ => return Err(QueryError::refused("not_aggregate", NOT_AGGREGATE)),
        };
        if !allowed.contains(&name.as_str()) {
            return Err(QueryError::refused(
                "aggregate_function",
                format!(
                    "`{name}` can show one person's value, or is not available under this license: use {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok((above, aggregate))
}

pub(crate) fn internal(e: datafusion::common::DataFusionError) -> QueryError {
    QueryError::Internal(e.to_string())
}

/// Names for the person columns a rewrite adds to projections.
#[derive(Default)]
pub(crate) struct Hidden(usize);

impl Hidden {
    fn next(&mut self) -> String {
        self.0 += 1;
        format!("__tessera_person_{}", self.0)
    }
}

const LOST_PERSONS: &str = "the rows reaching the aggregate must keep track of persons: an inner aggregate must group by person_id, and DISTINCT or UNION below the aggregate must keep person_id";

/// Rewrites `plan` so its output carries the person columns its rows derive from, and returns
/// them as the parent refers to them. A node that cannot carry them without changing its
/// answer (an aggregate not grouped by person, `DISTINCT` or `UNION` over rows without
/// `person_id`) is refused; a node this does not know (a table without `person_id`, `VALUES`)
/// contributes none.
pub(crate) fn expose_persons(
    plan: LogicalPlan,
    hidden: &mut Hidden,
) -> Result<(LogicalPlan, Vec<Column>), QueryError> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let columns = (0..scan.projected_schema.fields().len())
                .map(|i| scan.projected_schema.qualified_field(i))
                .filter(|(_, f)| f.name() == "person_id")
                .map(|(q, f)| Column::new(q.cloned(), f.name()))
                .collect();
            Ok((LogicalPlan::TableScan(scan), columns))
        }
        LogicalPlan::Projection(p) => {
            let (input, persons) = expose_persons(p.input.as_ref().clone(), hidden)?;
            let mut exprs = p.expr.clone();
            let mut out = Vec::new();
            for person in persons {
                if exprs
                    .iter()
                    .any(|e| matches!(e, Expr::Column(c) if *c == person))
                {
                    out.push(person);
                } else {
                    let name = hidden.next();
                    exprs.push(Expr::Column(person).alias(&name));
                    out.push(Column::from_name(name));
                }
            }
            let plan = Projection::try_new(exprs, Arc::new(input)).map_err(internal)?;
            Ok((LogicalPlan::Projection(plan), out))
        }
        LogicalPlan::SubqueryAlias(a) => {
            let (input, persons) = expose_persons(a.input.as_ref().clone(), hidden)?;
            let alias = a.alias.clone();
            let plan = datafusion::logical_expr::SubqueryAlias::try_new(Arc::new(input), alias)
                .map_err(internal)?;
            let out = persons
                .into_iter()
                .map(|c| Column::new(Some(a.alias.clone()), c.name))
                .collect();
            Ok((LogicalPlan::SubqueryAlias(plan), out))
        }
        LogicalPlan::Filter(_)
        | LogicalPlan::Sort(_)
        | LogicalPlan::Limit(_)
        | LogicalPlan::Distinct(_) => {
            let before = plan.schema().fields().len();
            let inputs = plan.inputs();
            let [input] = inputs.as_slice() else {
                return Err(QueryError::Internal("a one-input node has several".into()));
            };
            let (input, persons) = expose_persons((*input).clone(), hidden)?;
            // DISTINCT over more columns would change its answer.
            if matches!(plan, LogicalPlan::Distinct(_)) && input.schema().fields().len() != before {
                return Err(QueryError::refused("no_persons", LOST_PERSONS));
            }
            let plan = plan
                .with_new_exprs(plan.expressions(), vec![input])
                .map_err(internal)?;
            Ok((plan, persons))
        }
        LogicalPlan::Aggregate(a) => {
            let (input, persons) = expose_persons(a.input.as_ref().clone(), hidden)?;
            let grouped: Vec<Column> = a
                .group_expr
                .iter()
                .filter_map(|e| match e {
                    Expr::Column(c) if persons.contains(c) => Some(c.clone()),
                    _ => None,
                })
                .collect();
            if grouped.is_empty() {
                return Err(QueryError::refused("no_persons", LOST_PERSONS));
            }
            let plan = Aggregate::try_new(Arc::new(input), a.group_expr.clone(), a.aggr_expr)
                .map_err(internal)?;
            Ok((LogicalPlan::Aggregate(plan), grouped))
        }
        LogicalPlan::Join(j) => {
            use datafusion::common::JoinType::*;
            let (left, left_persons) = expose_persons(j.left.as_ref().clone(), hidden)?;
            let (right, right_persons) = expose_persons(j.right.as_ref().clone(), hidden)?;
            // A right person column an inner join equates with a left one counts the same
            // persons: keep the left one only.
            // (SQL's `ON a = b` is still in the join's filter when the plan is checked; the
            // optimizer moves it to `on` later.)
            let mut pairs: Vec<(&Expr, &Expr)> = j.on.iter().map(|(l, r)| (l, r)).collect();
            if let Some(filter) = &j.filter {
                for conjunct in datafusion::logical_expr::utils::split_conjunction(filter) {
                    if let Expr::BinaryExpr(b) = conjunct
                        && b.op == datafusion::logical_expr::Operator::Eq
                    {
                        pairs.push((b.left.as_ref(), b.right.as_ref()));
                        pairs.push((b.right.as_ref(), b.left.as_ref()));
                    }
                }
            }
            let equated = |r: &Column| {
                j.join_type == Inner
                    && pairs.iter().any(|(l, rr)| {
                        matches!((l, rr), (Expr::Column(l), Expr::Column(rr))
                            if left_persons.contains(l) && rr == r)
                    })
            };
            let persons: Vec<Column> = match j.join_type {
                LeftSemi | LeftAnti | LeftMark => left_persons.clone(),
                RightSemi | RightAnti | RightMark => right_persons.clone(),
                _ => left_persons
                    .iter()
                    .cloned()
                    .chain(right_persons.iter().filter(|r| !equated(r)).cloned())
                    .collect(),
            };
            let plan = LogicalPlan::Join(j);
            let plan = plan
                .with_new_exprs(plan.expressions(), vec![left, right])
                .map_err(internal)?;
            Ok((plan, persons))
        }
        LogicalPlan::Union(u) => {
            // Each input must already output its person column, at the same place.
            let mut at = None;
            let mut inputs = Vec::new();
            for input in &u.inputs {
                let before = input.schema().fields().len();
                let (input, persons) = expose_persons(input.as_ref().clone(), hidden)?;
                let index = persons
                    .first()
                    .and_then(|c| input.schema().index_of_column(c).ok());
                if input.schema().fields().len() != before
                    || index.is_none()
                    || at.is_some_and(|a| Some(a) != index)
                {
                    return Err(QueryError::refused("no_persons", LOST_PERSONS));
                }
                at = index;
                inputs.push(Arc::new(input));
            }
            let Some(at) = at else {
                return Err(QueryError::refused("no_persons", LOST_PERSONS));
            };
            let (q, f) = u.schema.qualified_field(at);
            let person = Column::new(q.cloned(), f.name());
            let plan = datafusion::logical_expr::Union::try_new_with_loose_types(inputs)
                .map_err(internal)?;
            Ok((LogicalPlan::Union(plan), vec![person]))
        }
        other => Ok((other, Vec::new())),
    }
}

fn round(n: i64, base: i64) -> i64 {
    if base <= 1 {
        return n;
    }
    ((n + base / 2).div_euclid(base)) * base
}

/// Applies the output rules to an aggregate result carrying the [`PERSONS`] columns (`column`
/// is their prefix): groups under the
/// minimum cell size are dropped (and counted), the column is removed, and integer columns are
/// rounded to the rounding base when the license sets one.
pub fn protect(
    batches: Vec<RecordBatch>,
    column: &str,
    rules: &OutputRules,
) -> Result<QueryOutput, QueryError> {
    let min = i64::from(rules.min_cell_size);
    let base = rules.rounding_base.map(i64::from);
    let internal = |e: datafusion::arrow::error::ArrowError| QueryError::Internal(e.to_string());
    let mut out = Vec::new();
    let mut suppressed = 0u64;
    let mut persons = 0u64;
    let mut rows = 0u64;
    let mut schema = None;
    for b in batches {
        let hidden: Vec<usize> = (0..b.num_columns())
            .filter(|i| b.schema().field(*i).name().starts_with(column))
            .collect();
        if hidden.is_empty() {
            return Err(QueryError::Internal("the persons column is missing".into()));
        }
        // The persons behind a group: the fewest any of its tables contributes.
        let mut least: Option<Int64Array> = None;
        for i in &hidden {
            let counts = cast(b.column(*i), &DataType::Int64).map_err(internal)?;
            let counts = counts
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| QueryError::Internal("persons are not integers".into()))?
                .clone();
            least = Some(match least {
                None => counts,
                Some(l) => l
                    .iter()
                    .zip(counts.iter())
                    .map(|(a, b)| Some(a.unwrap_or(0).min(b.unwrap_or(0))))
                    .collect(),
            });
        }
        let counts = least.unwrap_or_else(|| Int64Array::from(Vec::<i64>::new()));
        let keep: BooleanArray = counts.iter().map(|n| Some(n.unwrap_or(0) >= min)).collect();
        suppressed += keep.iter().filter(|k| *k == Some(false)).count() as u64;
        persons += counts
            .iter()
            .zip(keep.iter())
            .filter(|(_, k)| *k == Some(true))
            .map(|(n, _)| n.unwrap_or(0).max(0) as u64)
            .sum::<u64>();
        let kept = filter_record_batch(&b, &keep).map_err(internal)?;
        let others: Vec<usize> = (0..kept.num_columns())
            .filter(|c| !hidden.contains(c))
            .collect();
        let kept = kept.project(&others).map_err(internal)?;
        let kept = match base {
            Some(base) if base > 1 => {
                let columns: Vec<ArrayRef> =
                    kept.columns().iter().map(|a| rounded(a, base)).collect();
                RecordBatch::try_new(kept.schema(), columns).map_err(internal)?
            }
            _ => kept,
        };
        rows += kept.num_rows() as u64;
        schema.get_or_insert_with(|| kept.schema());
        out.push(kept);
    }
    Ok(QueryOutput {
        schema: schema.unwrap_or_else(|| Arc::new(Schema::empty())),
        batches: out,
        rows,
        groups_suppressed: suppressed,
        rows_truncated: false,
        persons: Some(persons),
        privacy: None,
    })
}

fn rounded(a: &ArrayRef, base: i64) -> ArrayRef {
    if let Some(v) = a.as_any().downcast_ref::<Int64Array>() {
        return Arc::new(
            v.iter()
                .map(|x| x.map(|n| round(n, base)))
                .collect::<Int64Array>(),
        );
    }
    if let Some(v) = a.as_any().downcast_ref::<UInt64Array>() {
        let b = base as u64;
        return Arc::new(
            v.iter()
                .map(|x| x.map(|n| (n + b / 2) / b * b))
                .collect::<UInt64Array>(),
        );
    }
    a.clone()
}

#[cfg(test)]
mod tests {
    use super::round;

    #[test]
    fn rounding_goes_to_the_nearest_multiple() {
        assert_eq!(round(12, 5), 10);
        assert_eq!(round(13, 5), 15);
        assert_eq!(round(0, 5), 0);
        assert_eq!(round(7, 1), 7);
    }
}
