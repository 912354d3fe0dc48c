//! Delta tables as DataFusion sees them: every filter pushed into a Delta scan is checked
//! again above it.
//!
//! delta-rs reports some filters as applied exactly by its scan when it only prunes files
//! with them: a filter the optimizer folded to a constant (`col = NULL` becomes `NULL`)
//! then keeps every row, so `WHERE t = 'phone' AND v = NULL` returned rows. Marking the
//! pushdown inexact keeps DataFusion's own filter (cheap) while the scan still prunes.

use std::borrow::Cow;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{ScanArgs, ScanResult, Session, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Constraints, DFSchemaRef, Statistics};
use datafusion::datasource::TableType;
use datafusion::datasource::physical_plan::{FileScanConfig, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::Result;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{
    Expr, LogicalPlan, MergeIntoClause, Operator, TableProviderFilterPushDown,
};
use datafusion::physical_plan::ExecutionPlan;

/// The identifier columns of `unified.touchpoints` (the data contract's normalized ids).
pub const IDENTIFIERS: [&str; 7] = [
    "user_id",
    "anonymous_id",
    "phone",
    "email",
    "device_id",
    "member_id",
    "openid",
];

/// Columns whose values identify one person or one touchpoint, beside the [`IDENTIFIERS`]
/// (in any table that has them): a filter pinning one of them to a few values keeps a few
/// rows of millions.
const KEYS: &[&str] = &[
    "touchpoint_id",
    "person_id",
    "identifier_value",
    "anchor_value",
    "from_person_id",
    "into_person_id",
    "via_identifier_value",
];

/// Whether `filter` is a lookup: an identity column equal to a literal, or in a list of
/// literals. Such a filter is worth evaluating while decoding (a row filter): the other
/// columns are then decoded for the few rows that pass.
fn is_lookup(filter: &Expr) -> bool {
    let identity = |e: &Expr| {
        matches!(e, Expr::Column(c)
            if IDENTIFIERS.contains(&c.name.as_str()) || KEYS.contains(&c.name.as_str()))
    };
    let literal = |e: &Expr| matches!(e, Expr::Literal(..));
    match filter {
        Expr::BinaryExpr(b) if b.op == Operator::And => is_lookup(&b.left) || is_lookup(&b.right),
        Expr::BinaryExpr(b) if b.op == Operator::Eq => {
            (identity(&b.left) && literal(&b.right)) || (literal(&b.left) && identity(&b.right))
        }
        Expr::InList(l) => !l.negated && identity(&l.expr) && l.list.iter().all(literal),
        _ => false,
    }
}

/// `plan` with every Parquet scan evaluating its predicate as a row filter only when
/// `enabled`: the session's `datafusion.execution.parquet.pushdown_filters` is on, or a
/// filter is a lookup ([`is_lookup`]).
///
/// delta-rs turns row filters on in every scan it builds. A row filter decodes the filter's
/// columns first and then the rest for the rows that pass: a win for a selective filter,
/// a loss for `person_id IS NOT NULL` (most rows pass: the string column was decoded and
/// copied twice) and even for `event_type = 'purchase'` (a few percent pass, scattered:
/// 59 ms against 31 ms over a million touchpoints). With it off the predicate still prunes files, row groups
/// and pages, and DataFusion's own filter above the scan drops the rows.
fn parquet_row_filters(
    plan: Arc<dyn ExecutionPlan>,
    enabled: bool,
) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        let Some(exec) = node.downcast_ref::<DataSourceExec>() else {
            return Ok(Transformed::no(node));
        };
        let Some(config) = exec.data_source().downcast_ref::<FileScanConfig>() else {
            return Ok(Transformed::no(node));
        };
        let Some(parquet) = config.file_source.downcast_ref::<ParquetSource>() else {
            return Ok(Transformed::no(node));
        };
        if parquet.table_parquet_options().global.pushdown_filters == enabled {
            return Ok(Transformed::no(node));
        }
        let mut config = config.clone();
        config.file_source = Arc::new(parquet.clone().with_pushdown_filters(enabled));
        let exec = exec.clone().with_data_source(Arc::new(config));
        Ok(Transformed::yes(Arc::new(exec) as Arc<dyn ExecutionPlan>))
    })
    .map(|t| t.data)
}

/// A table provider whose exact filter pushdowns are reported as inexact.
#[derive(Debug)]
pub struct Checked(pub Arc<dyn TableProvider>);

impl Checked {
    /// Wrap `inner`.
    pub fn wrap(inner: Arc<dyn TableProvider>) -> Arc<dyn TableProvider> {
        Arc::new(Checked(inner))
    }
}

#[async_trait]
impl TableProvider for Checked {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn constraints(&self) -> Option<&Constraints> {
        self.0.constraints()
    }

    fn table_type(&self) -> TableType {
        self.0.table_type()
    }

    fn get_table_definition(&self) -> Option<&str> {
        self.0.get_table_definition()
    }

    fn get_logical_plan(&'_ self) -> Option<Cow<'_, LogicalPlan>> {
        self.0.get_logical_plan()
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.0.get_column_default(column)
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.scan(state, projection, filters, limit).await
    }

    async fn scan_with_args<'a>(
        &self,
        state: &dyn Session,
        args: ScanArgs<'a>,
    ) -> Result<ScanResult> {
        let row_filters = state.config_options().execution.parquet.pushdown_filters
            || args.filters().is_some_and(|f| f.iter().any(is_lookup));
        let result = self.0.scan_with_args(state, args).await?;
        Ok(ScanResult::new(parquet_row_filters(
            result.into_inner(),
            row_filters,
        )?))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        Ok(self
            .0
            .supports_filters_pushdown(filters)?
            .into_iter()
            .map(|p| match p {
                TableProviderFilterPushDown::Exact => TableProviderFilterPushDown::Inexact,
                other => other,
            })
            .collect())
    }

    fn statistics(&self) -> Option<Statistics> {
        self.0.statistics()
    }

    async fn insert_into(
        &self,
        state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.insert_into(state, input, insert_op).await
    }

    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.delete_from(state, filters).await
    }

    async fn update(
        &self,
        state: &dyn Session,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.update(state, assignments, filters).await
    }

    async fn truncate(&self, state: &dyn Session) -> Result<Arc<dyn ExecutionPlan>> {
        self.0.truncate(state).await
    }

    async fn merge_into(
        &self,
        state: &dyn Session,
        source: Arc<dyn ExecutionPlan>,
        merge_schema: DFSchemaRef,
        on: Expr,
        clauses: Vec<MergeIntoClause>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.0
            .merge_into(state, source, merge_schema, on, clauses)
            .await
    }
}
