//! The analyzer rule [`EventFilter`]: a query that keeps only the groups where a sequence
//! matched reads only the rows that can be events.
//!
//! `sequence_match` and `sequence_count` ignore every row meeting none of their conditions
//! (they are not events), and a group without events matches nothing. So in
//!
//! ```sql
//! SELECT count(*) FROM (
//!   SELECT person_id, sequence_match('(?1).*(?2)', occurred_at, c1, c2) AS m
//!   FROM touchpoints GROUP BY person_id) s WHERE m
//! ```
//!
//! the aggregate may read `WHERE c1 OR c2` instead of every touchpoint: the groups it then
//! loses had no events, so the outer filter drops them anyway, and the groups it keeps see
//! the same events. The rule adds that filter under the aggregate when the outer filter
//! demands a match (`m`, `m = true`, `m IS TRUE`, `count > k` with k ≥ 0, `count >= k`
//! with k ≥ 1) of a pattern that names a condition, and every aggregate of that `GROUP BY`
//! is a `sequence_match` or `sequence_count` (the filter is the union of all their
//! conditions). A scan can then skip what the filter rules out, and the grouping hashes a
//! few percent of the rows.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{Column, Result, ScalarValue};
use datafusion::logical_expr::utils::{disjunction, split_conjunction};
use datafusion::logical_expr::{Aggregate, Expr, ExprSchemable, Filter, LogicalPlan, Operator};
use datafusion::optimizer::AnalyzerRule;

use crate::sequence::names_a_condition;

/// The analyzer rule (see the module documentation).
#[derive(Debug, Default)]
pub struct EventFilter;

impl AnalyzerRule for EventFilter {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(add_filter)
            .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "touchlake_event_filter"
    }
}

/// What an outer filter demands of an aggregate's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Demand {
    /// `sequence_match` true.
    Match,
    /// `sequence_count` above zero.
    Count,
}

impl Demand {
    fn function(self) -> &'static str {
        match self {
            Demand::Match => "sequence_match",
            Demand::Count => "sequence_count",
        }
    }
}

/// A literal, also under a cast (type coercion casts `0` to the count's type).
fn literal(e: &Expr) -> Option<&ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        Expr::Cast(c) => literal(&c.expr),
        _ => None,
    }
}

fn integer(v: &ScalarValue) -> Option<i64> {
    match v.cast_to(&DataType::Int64).ok()? {
        ScalarValue::Int64(Some(n)) => Some(n),
        _ => None,
    }
}

/// The column `e` demands something of, if it is one of the shapes the rule knows.
fn demand(e: &Expr) -> Option<(&Column, Demand)> {
    match e {
        Expr::Column(c) => Some((c, Demand::Match)),
        Expr::IsTrue(inner) => match inner.as_ref() {
            Expr::Column(c) => Some((c, Demand::Match)),
            _ => None,
        },
        Expr::BinaryExpr(b) => {
            let (column, op, value) = match (b.left.as_ref(), b.right.as_ref()) {
                (Expr::Column(c), r) => (c, b.op, literal(r)?),
                (l, Expr::Column(c)) => (c, b.op.swap()?, literal(l)?),
                _ => return None,
            };
            match op {
                Operator::Eq if value == &ScalarValue::Boolean(Some(true)) => {
                    Some((column, Demand::Match))
                }
                Operator::Gt if integer(value)? >= 0 => Some((column, Demand::Count)),
                Operator::GtEq if integer(value)? >= 1 => Some((column, Demand::Count)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// At a filter: the first conjunct demanding a match of a sequence aggregate below gets
/// that aggregate's input filtered.
fn add_filter(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Filter(filter) = &plan else {
        return Ok(Transformed::no(plan));
    };
    for conjunct in split_conjunction(&filter.predicate) {
        let Some((column, want)) = demand(conjunct) else {
            continue;
        };
        let Ok(index) = filter.input.schema().index_of_column(column) else {
            continue;
        };
        if let Some(input) = filtered(&filter.input, index, want)? {
            let f = Filter::try_new(filter.predicate.clone(), Arc::new(input))?;
            return Ok(Transformed::yes(LogicalPlan::Filter(f)));
        }
    }
    Ok(Transformed::no(plan))
}

/// `plan` with the rows going into the aggregate that computes its output column `index`
/// filtered, following renames (projections of a column, subquery aliases) and other
/// filters down to it; `None` where the rule does not apply.
fn filtered(plan: &LogicalPlan, index: usize, want: Demand) -> Result<Option<LogicalPlan>> {
    // The input and the column there that `index` comes from.
    let (input, i) = match plan {
        LogicalPlan::Aggregate(a) => return events_only(a, index, want),
        LogicalPlan::Projection(p) => {
            let Some(Expr::Column(c)) = p.expr.get(index).map(|e| e.clone().unalias()) else {
                return Ok(None);
            };
            let Ok(i) = p.input.schema().index_of_column(&c) else {
                return Ok(None);
            };
            (&p.input, i)
        }
        LogicalPlan::SubqueryAlias(s) => (&s.input, index),
        LogicalPlan::Filter(f) => (&f.input, index),
        _ => return Ok(None),
    };
    match filtered(input, i, want)? {
        Some(new) => Ok(Some(plan.with_new_exprs(plan.expressions(), vec![new])?)),
        None => Ok(None),
    }
}

/// `a` reading only the rows meeting a condition of one of its aggregates, if its output
/// column `index` is a sequence aggregate of the demanded kind whose pattern names a
/// condition, and all its aggregates are sequence aggregates.
fn events_only(a: &Aggregate, index: usize, want: Demand) -> Result<Option<LogicalPlan>> {
    let groups = a.group_expr.len();
    if index < groups
        || a.group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
    {
        return Ok(None);
    }
    let schema = a.input.schema();
    let mut conditions = vec![];
    for (i, e) in a.aggr_expr.iter().enumerate() {
        let Expr::AggregateFunction(f) = e.clone().unalias() else {
            return Ok(None);
        };
        let name = f.func.name();
        let p = &f.params;
        if p.distinct || p.filter.is_some() || !matches!(name, "sequence_match" | "sequence_count")
        {
            return Ok(None);
        }
        let Some(pattern) = p
            .args
            .first()
            .and_then(literal)
            .and_then(|v| v.try_as_str())
            .flatten()
        else {
            return Ok(None);
        };
        let mut conds = vec![];
        for c in p.args.iter().skip(2) {
            if c.get_type(schema)? == DataType::Boolean {
                if c.is_volatile() {
                    return Ok(None);
                }
                conds.push(c.clone());
            }
        }
        if i + groups == index
            && (name != want.function() || !names_a_condition(pattern, conds.len()))
        {
            return Ok(None);
        }
        conditions.extend(conds);
    }
    let Some(predicate) = disjunction(conditions) else {
        return Ok(None);
    };
    let input = LogicalPlan::Filter(Filter::try_new(predicate, a.input.clone())?);
    Ok(Some(LogicalPlan::Aggregate(
        Aggregate::try_new_with_schema(
            Arc::new(input),
            a.group_expr.clone(),
            a.aggr_expr.clone(),
            a.schema.clone(),
        )?,
    )))
}
