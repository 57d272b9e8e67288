//! Aggregate-only licenses: what a plan may be, how it is rewritten, and what its result may
//! show. Checked on DataFusion's logical plan (subqueries included), never on the SQL text.
//!
//! A plan is accepted when, from its root down, only projections, sorts, limits, `HAVING`
//! filters, aliases and `DISTINCT` stand above one aggregate, and:
//! - no window function appears anywhere;
//! - no grouping expression reads `person_id`;
//! - every aggregate function is on the allow-list (count, sum, avg, variance and standard
//!   deviation): `min`, `max`, `median`, percentiles, `array_agg`, `string_agg`,
//!   `first_value`/`last_value` and anything else would show a person-level value;
//! - no subquery appears in the aggregate's grouping or aggregate expressions or above it (a
//!   scalar subquery there could carry a person-level value into the result);
//! - the aggregate reads a table with `person_id`.
//!
//! The aggregate then gets one more output, the number of distinct persons behind each group
//! ([`PERSONS`]), carried up through the projections; [`protect`] drops the groups with fewer
//! persons than the license's minimum cell size, removes the column, and rounds integer
//! results to the license's rounding base.

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

fn reads_person_id(e: &Expr) -> bool {
    e.column_refs().iter().any(|c| c.name == "person_id")
}

const NOT_AGGREGATE: &str = "this license is aggregate-only: the result must be an aggregate over persons (GROUP BY with count, sum or avg), without a row-level part";

/// Checks an analyst's plan against the aggregate-only rules and adds [`PERSONS`].
pub fn rewrite(plan: LogicalPlan) -> Result<LogicalPlan, QueryError> {
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
    if aggregate.group_expr.iter().any(reads_person_id) {
        return Err(QueryError::refused(
            "group_by_person",
            "grouping by person_id would make one group per person: group by a characteristic instead",
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
        if !ALLOWED.contains(&name.as_str()) {
            return Err(QueryError::refused(
                "aggregate_function",
                format!(
                    "`{name}` can show one person's value: under an aggregate-only license use {}",
                    ALLOWED[..4].join(", ")
                ),
            ));
        }
    }
    let input_schema = aggregate.input.schema();
    let person = (0..input_schema.fields().len())
        .map(|i| input_schema.qualified_field(i))
        .find(|(_, f)| f.name() == "person_id")
        .map(|(q, f)| Column::new(q.cloned(), f.name()))
        .ok_or_else(|| {
            QueryError::refused(
                "no_persons",
                "the aggregate must read a table with person_id, so that groups can be counted in persons",
            )
        })?;
    let mut aggr_expr = aggregate.aggr_expr.clone();
    aggr_expr.push(count_distinct(Expr::Column(person)).alias(PERSONS));
    let internal = |e: datafusion::common::DataFusionError| QueryError::Internal(e.to_string());
    let mut current = LogicalPlan::Aggregate(
        Aggregate::try_new(
            aggregate.input.clone(),
            aggregate.group_expr.clone(),
            aggr_expr,
        )
        .map_err(internal)?,
    );
    for wrapper in above.into_iter().rev() {
        current = match wrapper {
            LogicalPlan::Projection(p) => {
                let mut exprs = p.expr.clone();
                exprs.push(col(PERSONS));
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

fn round(n: i64, base: i64) -> i64 {
    if base <= 1 {
        return n;
    }
    ((n + base / 2).div_euclid(base)) * base
}

/// Applies the output rules to an aggregate result carrying [`PERSONS`]: groups under the
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
        let i = b
            .schema()
            .index_of(column)
            .map_err(|_| QueryError::Internal("the persons column is missing".into()))?;
        let counts = cast(b.column(i), &DataType::Int64).map_err(internal)?;
        let counts = counts
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| QueryError::Internal("persons are not integers".into()))?;
        let keep: BooleanArray = counts.iter().map(|n| Some(n.unwrap_or(0) >= min)).collect();
        suppressed += keep.iter().filter(|k| *k == Some(false)).count() as u64;
        persons += counts
            .iter()
            .zip(keep.iter())
            .filter(|(_, k)| *k == Some(true))
            .map(|(n, _)| n.unwrap_or(0).max(0) as u64)
            .sum::<u64>();
        let kept = filter_record_batch(&b, &keep).map_err(internal)?;
        let others: Vec<usize> = (0..kept.num_columns()).filter(|c| *c != i).collect();
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
