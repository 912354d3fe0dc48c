//! The physical optimizer rule [`StringEqualsLiteral`]: `column = 'text'` (and `<>`) over a
//! string-view column compares each row's 16-byte view with the literal's, instead of
//! going through Arrow's general comparison kernel.
//!
//! Filters and aggregate arguments such as `event_type = 'purchase'` run over every
//! touchpoint (TouchBench Q6 spent a fifth of its time in them). Arrow compares a string
//! view with a scalar row by row through a general routine that checks lengths, prefixes and
//! buffers in turn. Here the literal's view is built once: a literal of up to 12 bytes is
//! stored inline, so a row equals it exactly when the two 128-bit views are equal; a longer
//! literal equals a row only when their lengths and 4-byte prefixes (the view's low 64 bits)
//! match, and only then are the rest of the bytes compared.
//!
//! The rule rewrites the predicates of `FilterExec`, the expressions of `ProjectionExec` and
//! the arguments and filters of aggregates that read rows (not merged states). Scans keep
//! their own predicate, so pruning by statistics is unchanged.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::builder::make_view;
use datafusion::arrow::array::{Array, AsArray, BooleanArray, StringViewArray};
use datafusion::arrow::buffer::BooleanBuffer;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{ScalarValue, internal_datafusion_err};
use datafusion::error::Result;
use datafusion::logical_expr::{ColumnarValue, Operator};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::physical_expr_common::datum::apply_cmp;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::projection::ProjectionExec;

/// The physical optimizer rule (see the module documentation).
#[derive(Debug, Default)]
pub struct StringEqualsLiteral;

impl PhysicalOptimizerRule for StringEqualsLiteral {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| match rewrite_node(&node)? {
            Some(p) => Ok(Transformed::yes(p)),
            None => Ok(Transformed::no(node)),
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "touchlake_string_equals_literal"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `node` with its comparisons rewritten, if it has any.
fn rewrite_node(node: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if let Some(filter) = node.downcast_ref::<FilterExec>() {
        let schema = filter.input().schema();
        let Some(predicate) = rewrite_expr(filter.predicate(), &schema)? else {
            return Ok(None);
        };
        let exec = FilterExecBuilder::from(filter)
            .with_predicate(predicate)
            .build()?;
        return Ok(Some(Arc::new(exec)));
    }
    if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
        let schema = projection.input().schema();
        let mut changed = false;
        let mut exprs = Vec::with_capacity(projection.expr().len());
        for p in projection.expr() {
            let expr = rewrite_expr(&p.expr, &schema)?;
            changed |= expr.is_some();
            exprs.push(ProjectionExpr::new(
                expr.unwrap_or_else(|| p.expr.clone()),
                p.alias.clone(),
            ));
        }
        if !changed {
            return Ok(None);
        }
        let exec = ProjectionExec::try_new(exprs, projection.input().clone())?;
        if exec.schema() != projection.schema() {
            return Ok(None);
        }
        return Ok(Some(Arc::new(exec)));
    }
    if let Some(agg) = node.downcast_ref::<AggregateExec>() {
        return rewrite_aggregate(agg);
    }
    Ok(None)
}

/// An aggregate reading rows with its arguments' and filters' comparisons rewritten.
fn rewrite_aggregate(agg: &AggregateExec) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    // Final modes merge states: their arguments are not evaluated.
    if !matches!(
        agg.mode(),
        AggregateMode::Partial | AggregateMode::Single | AggregateMode::SinglePartitioned
    ) {
        return Ok(None);
    }
    let schema = agg.input_schema();
    let mut changed = false;
    let mut aggr = Vec::with_capacity(agg.aggr_expr().len());
    for a in agg.aggr_expr() {
        let mut args = Vec::with_capacity(a.expressions().len());
        let mut any = false;
        for e in a.expressions() {
            let new = rewrite_expr(&e, &schema)?;
            any |= new.is_some();
            args.push(new.unwrap_or(e));
        }
        let order_by = a.order_bys().iter().map(|s| s.expr.clone()).collect();
        match a.with_new_expressions(args, order_by) {
            Some(new) if any => {
                changed = true;
                aggr.push(Arc::new(new));
            }
            _ => aggr.push(a.clone()),
        }
    }
    let mut filters = Vec::with_capacity(agg.filter_expr().len());
    for f in agg.filter_expr() {
        match f {
            Some(f) => {
                let new = rewrite_expr(f, &schema)?;
                changed |= new.is_some();
                filters.push(Some(new.unwrap_or_else(|| f.clone())));
            }
            None => filters.push(None),
        }
    }
    if !changed {
        return Ok(None);
    }
    let exec = AggregateExec::try_new(
        *agg.mode(),
        agg.group_expr().clone(),
        aggr,
        filters,
        agg.input().clone(),
        schema,
    )?
    .with_limit_options(agg.limit_options());
    if exec.schema() != agg.schema() {
        return Ok(None);
    }
    Ok(Some(Arc::new(exec)))
}

/// `expr` with each `string-view column = literal` (or `<>`) replaced, if it has one.
fn rewrite_expr(
    expr: &Arc<dyn PhysicalExpr>,
    schema: &Schema,
) -> Result<Option<Arc<dyn PhysicalExpr>>> {
    let t = expr.clone().transform_up(|e| {
        Ok(match ViewEquals::try_from_binary(&e, schema)? {
            Some(fast) => Transformed::yes(Arc::new(fast) as Arc<dyn PhysicalExpr>),
            None => Transformed::no(e),
        })
    })?;
    Ok(t.transformed.then_some(t.data))
}

/// A string-view column compared with a text literal by `=` or `<>`: the rows' views are
/// compared with the literal's (see the module documentation).
#[derive(Debug, Eq)]
pub struct ViewEquals {
    column: Arc<dyn PhysicalExpr>,
    literal: Arc<dyn PhysicalExpr>,
    value: Vec<u8>,
    /// `Eq` or `NotEq`.
    op: Operator,
}

impl ViewEquals {
    /// `e` as a [`ViewEquals`] when it is `column = literal`, `literal = column` or the same
    /// with `<>`, the column a string view and the literal non-NULL text.
    fn try_from_binary(e: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Result<Option<Self>> {
        let Some(b) = e.downcast_ref::<BinaryExpr>() else {
            return Ok(None);
        };
        let op = *b.op();
        if !matches!(op, Operator::Eq | Operator::NotEq) {
            return Ok(None);
        }
        let (column, literal) = if b.left().downcast_ref::<Column>().is_some() {
            (b.left(), b.right())
        } else {
            (b.right(), b.left())
        };
        if column.downcast_ref::<Column>().is_none()
            || column.data_type(schema)? != DataType::Utf8View
        {
            return Ok(None);
        }
        let Some(lit) = literal.downcast_ref::<Literal>() else {
            return Ok(None);
        };
        let value = match lit.value() {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::Utf8View(Some(s))
            | ScalarValue::LargeUtf8(Some(s)) => s.as_bytes().to_vec(),
            _ => return Ok(None),
        };
        Ok(Some(ViewEquals {
            column: column.clone(),
            literal: literal.clone(),
            value,
            op,
        }))
    }

    /// Which rows of `array` equal the literal (NULL where the row is NULL).
    fn compare(&self, array: &StringViewArray) -> BooleanArray {
        let bits = equal_views(array, &self.value);
        let bits = if self.op == Operator::NotEq {
            !&bits
        } else {
            bits
        };
        BooleanArray::new(bits, array.nulls().cloned())
    }
}

/// One bit per row of `array`: whether the row's bytes equal `value`. The bits of NULL rows
/// are meaningless.
pub fn equal_views(array: &StringViewArray, value: &[u8]) -> BooleanBuffer {
    let views = array.views();
    let n = value.len();
    if n <= 12 {
        // An inline view holds the length and the zero-padded bytes: equal views, equal text.
        let target = make_view(value, 0, 0);
        return BooleanBuffer::collect_bool(views.len(), |i| views[i] == target);
    }
    // The low 64 bits of a view are its length and its first 4 bytes.
    let mut prefix = [0u8; 4];
    prefix.copy_from_slice(&value[..4]);
    let head = n as u64 | (u64::from(u32::from_le_bytes(prefix)) << 32);
    let rest = &value[4..];
    let buffers = array.data_buffers();
    BooleanBuffer::collect_bool(views.len(), |i| {
        let view = views[i];
        if view as u64 != head {
            return false;
        }
        let buffer = (view >> 64) as u32 as usize;
        let offset = (view >> 96) as u32 as usize;
        buffers
            .get(buffer)
            .and_then(|b| b.get(offset + 4..offset + n))
            .is_some_and(|bytes| bytes == rest)
    })
}

impl Hash for ViewEquals {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.column.hash(state);
        self.literal.hash(state);
        self.value.hash(state);
        self.op.hash(state);
    }
}

impl PartialEq for ViewEquals {
    fn eq(&self, other: &Self) -> bool {
        self.column.eq(&other.column)
            && self.literal.eq(&other.literal)
            && self.value == other.value
            && self.op == other.op
    }
}

impl fmt::Display for ViewEquals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.column, self.op, self.literal)
    }
}

impl PhysicalExpr for ViewEquals {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        self.column.nullable(input_schema)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let column = self.column.evaluate(batch)?;
        if let ColumnarValue::Array(a) = &column
            && let Some(views) = a.as_string_view_opt()
        {
            return Ok(ColumnarValue::Array(Arc::new(self.compare(views))));
        }
        // Anything else (a child another rule replaced): Arrow's comparison, as before.
        apply_cmp(self.op, &column, &self.literal.evaluate(batch)?)
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        vec![&self.column]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn PhysicalExpr>>,
    ) -> Result<Arc<dyn PhysicalExpr>> {
        let [column] = <[_; 1]>::try_from(children)
            .map_err(|_| internal_datafusion_err!("{self} takes one child"))?;
        Ok(Arc::new(ViewEquals {
            column,
            literal: self.literal.clone(),
            value: self.value.clone(),
            op: self.op,
        }))
    }

    fn fmt_sql(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.column.fmt_sql(f)?;
        write!(f, " {} ", self.op)?;
        self.literal.fmt_sql(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of short, 12-byte, 13-byte and long values, NULLs and a sliced array: the
    /// view comparison agrees with comparing the strings.
    #[test]
    fn equal_views_agrees_with_string_equality() {
        let values = [
            "",
            "a",
            "purchase",
            "add_to_cart",
            "twelve_bytes",
            "message_click",
            "message_clicks",
            "message_clack",
            "a much longer value that lives in a data buffer",
            "a much longer value that lives in a data buffeR",
        ];
        let rows: Vec<Option<&str>> = values
            .iter()
            .map(|v| Some(*v))
            .chain([None])
            .chain(values.iter().rev().map(|v| Some(*v)))
            .collect();
        let array = StringViewArray::from(rows.clone());
        let sliced = array.slice(3, rows.len() - 3);
        for value in values {
            for (array, rows) in [(&array, &rows[..]), (&sliced, &rows[3..])] {
                let bits = equal_views(array, value.as_bytes());
                for (i, row) in rows.iter().enumerate() {
                    if let Some(row) = row {
                        assert_eq!(bits.value(i), *row == value, "{row:?} = {value:?}");
                    }
                }
            }
        }
    }
}
