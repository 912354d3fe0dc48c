//! A logical optimizer rule: the parts of a join's filter that read one side only (the
//! lookback bound `p.ct - INTERVAL '30 days'` of an attribution join) are computed once
//! per row of that side, below the join, instead of once per candidate pair of rows.
//!
//! `t.ts >= p.ct - INTERVAL '30 days'` becomes `t.ts >= p.__touchlake_join_expr_N` with a
//! projection adding `p.ct - INTERVAL '30 days' AS __touchlake_join_expr_N` to the left
//! input; a projection above the join gives back the join's own columns. Only inner and
//! outer joins, and only expressions that are not volatile, hold no subquery, and are more
//! than a column or a cast of one.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, Result};
use datafusion::logical_expr::{Expr, Join, JoinType, LogicalPlan, Projection, col};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// Names of the computed columns.
const PREFIX: &str = "__touchlake_join_expr_";

/// Numbers the computed columns, so that names never clash between joins or passes.
static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The rule (see the module documentation).
#[derive(Debug, Default)]
pub struct JoinSideExpressions;

/// Is `e` worth computing below the join?
fn worth(e: &Expr) -> bool {
    match e {
        Expr::Column(_)
        | Expr::Literal(..)
        | Expr::Alias(_)
        | Expr::ScalarVariable(..)
        | Expr::Placeholder(_)
        | Expr::OuterReferenceColumn(..) => false,
        Expr::Cast(c) if matches!(*c.expr, Expr::Column(_)) => false,
        Expr::TryCast(c) if matches!(*c.expr, Expr::Column(_)) => false,
        _ => {
            !e.is_volatile()
                && !e
                    .exists(|x| {
                        Ok(matches!(
                            x,
                            Expr::Exists(_)
                                | Expr::InSubquery(_)
                                | Expr::ScalarSubquery(_)
                                | Expr::OuterReferenceColumn(..)
                                | Expr::AggregateFunction(_)
                                | Expr::WindowFunction(_)
                        ))
                    })
                    .unwrap_or(true)
        }
    }
}

/// Which side all columns of `e` come from: `Some(true)` left, `Some(false)` right.
fn side(e: &Expr, left: &DFSchema, right: &DFSchema) -> Option<bool> {
    let cols = e.column_refs();
    if cols.is_empty() {
        return None;
    }
    if cols.iter().all(|c| left.has_column(c)) {
        Some(true)
    } else if cols.iter().all(|c| right.has_column(c)) {
        Some(false)
    } else {
        None
    }
}

/// `input` with the columns `extra` added.
fn with_columns(input: &Arc<LogicalPlan>, extra: Vec<Expr>) -> Result<Arc<LogicalPlan>> {
    if extra.is_empty() {
        return Ok(input.clone());
    }
    let mut exprs: Vec<Expr> = input
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    exprs.extend(extra);
    Ok(Arc::new(LogicalPlan::Projection(Projection::try_new(
        exprs,
        input.clone(),
    )?)))
}

impl OptimizerRule for JoinSideExpressions {
    fn name(&self) -> &str {
        "touchlake_join_side_expressions"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Join(join) = &plan else {
            return Ok(Transformed::no(plan));
        };
        if !matches!(
            join.join_type,
            JoinType::Inner | JoinType::Left | JoinType::Right | JoinType::Full
        ) {
            return Ok(Transformed::no(plan));
        }
        let Some(filter) = join.filter.clone() else {
            return Ok(Transformed::no(plan));
        };
        let (ls, rs) = (join.left.schema().clone(), join.right.schema().clone());
        let (mut left_extra, mut right_extra) = (vec![], vec![]);
        let filter = filter.transform_down(|e| {
            if !worth(&e) {
                return Ok(Transformed::no(e));
            }
            let Some(left) = side(&e, &ls, &rs) else {
                return Ok(Transformed::no(e));
            };
            let name = format!("{PREFIX}{}", NEXT.fetch_add(1, Ordering::Relaxed));
            let computed = e.alias(name.clone());
            if left {
                left_extra.push(computed);
            } else {
                right_extra.push(computed);
            }
            Ok(Transformed::new(col(name), true, TreeNodeRecursion::Jump))
        })?;
        if !filter.transformed {
            return Ok(Transformed::no(plan));
        }
        let new_join = Join::try_new(
            with_columns(&join.left, left_extra)?,
            with_columns(&join.right, right_extra)?,
            join.on.clone(),
            Some(filter.data),
            join.join_type,
            join.join_constraint,
            join.null_equality,
            join.null_aware,
        )?;
        // The join's own columns, as before.
        let columns: Vec<Expr> = join
            .schema
            .columns()
            .into_iter()
            .map(Expr::Column)
            .collect();
        let top = Projection::try_new(columns, Arc::new(LogicalPlan::Join(new_join)))?;
        Ok(Transformed::yes(LogicalPlan::Projection(top)))
    }
}
