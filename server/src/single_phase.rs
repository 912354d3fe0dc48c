//! The physical optimizer rule [`ListStatesInOnePhase`]: a `GROUP BY` whose aggregates
//! keep every row of a group (a funnel's events, a person's sessions or path) aggregates
//! once, after the rows are partitioned by the group key, instead of twice.
//!
//! DataFusion aggregates in two phases: each input partition into states, the states
//! partitioned by key, then merged. That pays when a state is smaller than its rows (a
//! sum). A state that is the list of the group's rows (`window_funnel`, `sessions`,
//! `paths_to`, `array_agg`…) is as large as the rows: the first phase only builds the lists
//! once more, emits them as Arrow lists and the second reads them back. Partitioning the
//! rows themselves and aggregating once (`SinglePartitioned`) skips that.
//!
//! The rule applies to `Final(Partitioned) ← Repartition(hash of the keys) ← Partial` when
//! an aggregate's state has a list field, no aggregate is `DISTINCT`, none needs its input
//! sorted, and the grouping is plain (no grouping sets).

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::Partitioning;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::repartition::RepartitionExec;

/// The physical optimizer rule (see the module documentation).
#[derive(Debug, Default)]
pub struct ListStatesInOnePhase;

impl PhysicalOptimizerRule for ListStatesInOnePhase {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_down(|node| match one_phase(&node)? {
            Some(p) => Ok(Transformed::yes(p)),
            None => Ok(Transformed::no(node)),
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "touchlake_list_states_in_one_phase"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Whether a state field is a list (the group's rows).
fn is_list(t: &DataType) -> bool {
    matches!(
        t,
        DataType::List(_) | DataType::LargeList(_) | DataType::ListView(_)
    )
}

/// `node` as one aggregation over the rows partitioned by its keys, if the rule applies.
fn one_phase(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(last) = node.downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    if *last.mode() != AggregateMode::FinalPartitioned || last.limit_options().is_some() {
        return Ok(None);
    }
    let Some(shuffle) = last.input().downcast_ref::<RepartitionExec>() else {
        return Ok(None);
    };
    let Partitioning::Hash(_, partitions) = shuffle.partitioning() else {
        return Ok(None);
    };
    let Some(first) = shuffle.input().downcast_ref::<AggregateExec>() else {
        return Ok(None);
    };
    if *first.mode() != AggregateMode::Partial
        || !first.group_expr().is_single()
        || first.group_expr().expr().is_empty()
        || shuffle.preserve_order()
    {
        return Ok(None);
    }
    let mut lists = false;
    for a in first.aggr_expr() {
        if a.is_distinct() {
            return Ok(None);
        }
        lists |= a.state_fields()?.iter().any(|f| is_list(f.data_type()));
    }
    if !lists {
        return Ok(None);
    }
    let rows = Arc::new(RepartitionExec::try_new(
        first.input().clone(),
        Partitioning::Hash(first.group_expr().input_exprs(), *partitions),
    )?);
    let once = AggregateExec::try_new(
        AggregateMode::SinglePartitioned,
        first.group_expr().clone(),
        first.aggr_expr().to_vec(),
        first.filter_expr().to_vec(),
        rows,
        first.input_schema(),
    )?;
    // An aggregate that needs its rows in order (DataFusion sorted the input for it) is
    // left alone: the new partitioning does not keep an order.
    if once.schema() != last.schema() || once.required_input_ordering().iter().any(Option::is_some)
    {
        return Ok(None);
    }
    Ok(Some(Arc::new(once)))
}
