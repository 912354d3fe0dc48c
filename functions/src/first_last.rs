//! `first_value` / `last_value` with `ORDER BY` under `GROUP BY`: DataFusion's functions with
//! a grouped accumulator whose cost per batch follows the batch, not the groups seen so far.
//!
//! DataFusion 55's grouped `first_value(x ORDER BY …)` collects each batch's winners by
//! walking every group it has seen, so `GROUP BY person_id` over 600,000 persons costs
//! groups × batches (TouchBench Q2: 0.9 s of its 1.9 s). [`FirstLast`] wraps DataFusion's
//! function (same name, signature, state, row accumulator and window behaviour) and only
//! replaces the grouped accumulator, [`FirstLastGroups`]:
//!
//! - per batch, each touched group's best row is found with arrow's comparators, the first
//!   ORDER BY key compared as an integer when it is integer-like (times, dates, integers);
//! - only a batch winner that beats or ties its group's kept row on that first key has its
//!   keys encoded (arrow's row format) and compared with the kept encoding;
//! - a winner's value is kept in a small array of the batch's winners, and those arrays are
//!   compacted into one when they hold more than twice as many rows as there are groups.
//!
//! The semantics are DataFusion's: the least row (`first_value`) or greatest (`last_value`)
//! by the ORDER BY keys and their directions and NULLS FIRST/LAST; between equal keys the
//! row that came first wins; `IGNORE NULLS` skips rows whose value is NULL; `FILTER`
//! applies; a group with no row gets NULL.

use std::cmp::Ordering;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, DynComparator, UInt32Array, make_comparator,
    new_empty_array, new_null_array,
};
use datafusion::arrow::compute::kernels::cast::can_cast_types;
use datafusion::arrow::compute::{SortOptions, cast, interleave, take};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::expr::{
    AggregateFunction, AggregateFunctionParams, WindowFunctionParams,
};
use datafusion::logical_expr::function::{
    AccumulatorArgs, AggregateFunctionSimplification, StateFieldsArgs,
};
use datafusion::logical_expr::utils::AggregateOrderSensitivity;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, EmitTo, Expr, GroupsAccumulator,
    Operator, ReversedUDAF, SetMonotonicity, Signature, StatisticsArgs,
};

/// Replace `first_value` and `last_value` in `registry` with [`FirstLast`] around them.
pub fn register(registry: &mut dyn FunctionRegistry) -> Result<()> {
    for name in ["first_value", "last_value"] {
        let inner = registry.udaf(name)?;
        registry.register_udaf(Arc::new(AggregateUDF::new_from_impl(FirstLast::new(
            Arc::clone(inner.inner()),
        ))))?;
    }
    Ok(())
}

/// DataFusion's `first_value` or `last_value` with [`FirstLastGroups`] as its grouped
/// accumulator (see the module documentation).
#[derive(Debug)]
pub struct FirstLast {
    inner: Arc<dyn AggregateUDFImpl>,
    /// `first_value` (the least row) rather than `last_value` (the greatest).
    first: bool,
}

impl FirstLast {
    /// Wrap DataFusion's `first_value` or `last_value` (by its name).
    pub fn new(inner: Arc<dyn AggregateUDFImpl>) -> Self {
        let first = inner.name() == "first_value";
        FirstLast { inner, first }
    }

    fn wrap(inner: Arc<dyn AggregateUDFImpl>) -> Arc<dyn AggregateUDFImpl> {
        Arc::new(FirstLast::new(inner))
    }

    /// The ORDER BY keys as sort fields, when ours can order by them.
    fn sort_fields(args: &AccumulatorArgs) -> Option<Vec<(DataType, SortOptions)>> {
        if args.order_bys.is_empty() {
            return None;
        }
        let mut fields = Vec::with_capacity(args.order_bys.len());
        for e in args.order_bys {
            let t = e.expr.data_type(args.schema).ok()?;
            let empty = new_empty_array(&t);
            let _ = make_comparator(empty.as_ref(), empty.as_ref(), e.options).ok()?;
            fields.push((t, e.options));
        }
        let sort: Vec<SortField> = fields
            .iter()
            .map(|(t, o)| SortField::new_with_options(t.clone(), *o))
            .collect();
        RowConverter::supports_fields(&sort).then_some(fields)
    }
}

impl PartialEq for FirstLast {
    fn eq(&self, other: &Self) -> bool {
        self.first == other.first && self.inner.as_ref() == other.inner.as_ref()
    }
}

impl Eq for FirstLast {}

impl Hash for FirstLast {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.first.hash(state);
        self.inner.dyn_hash(state);
    }
}

impl AggregateUDFImpl for FirstLast {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.accumulator(acc_args)
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.schema_name(params)
    }

    fn human_display(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.human_display(params)
    }

    fn window_function_schema_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.inner.window_function_schema_name(params)
    }

    fn display_name(&self, params: &AggregateFunctionParams) -> Result<String> {
        self.inner.display_name(params)
    }

    fn window_function_display_name(&self, params: &WindowFunctionParams) -> Result<String> {
        self.inner.window_function_display_name(params)
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        self.inner.state_fields(args)
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        Self::sort_fields(&args).is_some() || self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        match Self::sort_fields(&args) {
            Some(fields) => Ok(Box::new(FirstLastGroups::try_new(
                self.first,
                args.ignore_nulls,
                args.return_field.data_type(),
                fields,
            )?)),
            None => self.inner.create_groups_accumulator(args),
        }
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        self.inner.create_sliding_accumulator(args)
    }

    fn with_beneficial_ordering(
        self: Arc<Self>,
        beneficial_ordering: bool,
    ) -> Result<Option<Arc<dyn AggregateUDFImpl>>> {
        Ok(Arc::clone(&self.inner)
            .with_beneficial_ordering(beneficial_ordering)?
            .map(Self::wrap))
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }

    fn simplify(&self) -> Option<AggregateFunctionSimplification> {
        self.inner.simplify()
    }

    fn simplify_expr_op_literal(
        &self,
        agg_function: &AggregateFunction,
        arg: &Expr,
        op: Operator,
        lit: &Expr,
        arg_is_left: bool,
    ) -> Result<Option<Expr>> {
        self.inner
            .simplify_expr_op_literal(agg_function, arg, op, lit, arg_is_left)
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        match self.inner.reverse_expr() {
            ReversedUDAF::Reversed(udaf) => ReversedUDAF::Reversed(Arc::new(
                AggregateUDF::new_from_shared_impl(Self::wrap(Arc::clone(udaf.inner()))),
            )),
            other => other,
        }
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        self.inner.return_field(arg_fields)
    }

    fn is_nullable(&self) -> bool {
        self.inner.is_nullable()
    }

    fn is_descending(&self) -> Option<bool> {
        self.inner.is_descending()
    }

    fn value_from_stats(&self, statistics_args: &StatisticsArgs) -> Option<ScalarValue> {
        self.inner.value_from_stats(statistics_args)
    }

    fn default_value(&self, data_type: &DataType) -> Result<ScalarValue> {
        self.inner.default_value(data_type)
    }

    fn supports_null_handling_clause(&self) -> bool {
        self.inner.supports_null_handling_clause()
    }

    fn supports_within_group_clause(&self) -> bool {
        self.inner.supports_within_group_clause()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.set_monotonicity(data_type)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

/// No best row for a group in this batch yet.
const NONE: u32 = u32::MAX;

/// A kept row's rank by the first ORDER BY key when that key is integer-like: NULLs, values
/// and their direction folded into one unsigned number ordered like the key.
fn lead_rank(v: Option<i64>, options: SortOptions) -> u128 {
    match v {
        None if options.nulls_first => 0,
        None => 2 << 64,
        Some(v) => {
            let u = (v as u64) ^ (1 << 63);
            let u = if options.descending { !u } else { u };
            (1 << 64) | u as u128
        }
    }
}

/// Is the first ORDER BY key compared as an integer (its order is its `i64` cast's)?
fn integer_like(t: &DataType) -> bool {
    use DataType::*;
    matches!(
        t,
        Int8 | Int16
            | Int32
            | Int64
            | UInt8
            | UInt16
            | UInt32
            | Date32
            | Date64
            | Timestamp(_, _)
            | Time32(_)
            | Time64(_)
            | Duration(_)
    ) && can_cast_types(t, &Int64)
}

/// The grouped accumulator of [`FirstLast`] (see the module documentation).
pub struct FirstLastGroups {
    first: bool,
    ignore_nulls: bool,
    options: Vec<SortOptions>,
    converter: RowConverter,
    /// The first key is compared as an integer rank ([`lead_rank`]).
    lead: bool,
    /// The encoding of an all-NULL key row (the state of a group without a row).
    null_row: Vec<u8>,
    /// Per group: a row is kept.
    set: Vec<bool>,
    /// Per group: the kept row's [`lead_rank`] (when `lead`).
    leads: Vec<u128>,
    /// Per group: the kept row's keys in the row format.
    keys: Vec<Vec<u8>>,
    key_bytes: usize,
    /// Per group: its value's (chunk, row) in `chunks`.
    values: Vec<(u32, u32)>,
    /// Arrays of kept values; the first is a single NULL.
    chunks: Vec<ArrayRef>,
    chunk_rows: usize,
    chunk_bytes: usize,
    /// Per group: its best row in the current batch, or [`NONE`].
    best: Vec<u32>,
    touched: Vec<u32>,
}

impl std::fmt::Debug for FirstLastGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirstLastGroups")
            .field("first", &self.first)
            .field("groups", &self.set.len())
            .finish()
    }
}

/// How a batch's best row compares with its group's kept row on the first key.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Lead {
    Better,
    Tie,
}

impl FirstLastGroups {
    /// The accumulator for `first_value` (`first`) or `last_value` of `value_type` ordered by
    /// keys of these types and directions.
    pub fn try_new(
        first: bool,
        ignore_nulls: bool,
        value_type: &DataType,
        fields: Vec<(DataType, SortOptions)>,
    ) -> Result<Self> {
        let lead = fields.first().is_some_and(|(t, _)| integer_like(t));
        let options: Vec<SortOptions> = fields.iter().map(|(_, o)| *o).collect();
        let nulls: Vec<ArrayRef> = fields.iter().map(|(t, _)| new_null_array(t, 1)).collect();
        let converter = RowConverter::new(
            fields
                .into_iter()
                .map(|(t, o)| SortField::new_with_options(t, o))
                .collect(),
        )?;
        let null_row = converter.convert_columns(&nulls)?.row(0).as_ref().to_vec();
        let null_value = new_null_array(value_type, 1);
        Ok(FirstLastGroups {
            first,
            ignore_nulls,
            options,
            converter,
            lead,
            null_row,
            set: vec![],
            leads: vec![],
            keys: vec![],
            key_bytes: 0,
            values: vec![],
            chunk_bytes: null_value.get_array_memory_size(),
            chunks: vec![null_value],
            chunk_rows: 0,
            best: vec![],
            touched: vec![],
        })
    }

    /// Is `ord` (new against old) an improvement?
    fn better(&self, ord: Ordering) -> bool {
        if self.first {
            ord == Ordering::Less
        } else {
            ord == Ordering::Greater
        }
    }

    fn grow(&mut self, groups: usize) {
        if self.set.len() < groups {
            self.set.resize(groups, false);
            if self.lead {
                self.leads.resize(groups, 0);
            }
            self.keys.resize_with(groups, Vec::new);
            self.values.resize(groups, (0, 0));
        }
        if self.best.len() < groups {
            self.best.resize(groups, NONE);
        }
    }

    /// Take the rows of `values` (value, then the ORDER BY keys) that `keep` allows.
    fn add(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        keep: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let value = &values[0];
        let keys = &values[1..];
        let ranks: Option<Vec<u128>> = if self.lead {
            let k = cast(&keys[0], &DataType::Int64)?;
            let k = k.as_primitive::<Int64Type>();
            let o = self.options[0];
            Some(
                (0..k.len())
                    .map(|i| lead_rank(k.is_valid(i).then(|| k.value(i)), o))
                    .collect(),
            )
        } else {
            None
        };
        let start = usize::from(self.lead);
        let rest: Vec<DynComparator> = keys[start..]
            .iter()
            .zip(&self.options[start..])
            .map(|(k, o)| make_comparator(k.as_ref(), k.as_ref(), *o))
            .collect::<std::result::Result<_, _>>()?;
        let compare = |a: usize, b: usize| -> Ordering {
            if let Some(r) = &ranks {
                match r[a].cmp(&r[b]) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
            for c in &rest {
                match c(a, b) {
                    Ordering::Equal => {}
                    o => return o,
                }
            }
            Ordering::Equal
        };

        // Each touched group's best row in this batch (the earlier row among equals).
        for (row, &g) in group_indices.iter().enumerate() {
            if crate::groups::skipped(keep, row) || (self.ignore_nulls && value.is_null(row)) {
                continue;
            }
            let b = self.best[g];
            if b == NONE {
                self.best[g] = row as u32;
                self.touched.push(g as u32);
            } else if self.better(compare(row, b as usize)) {
                self.best[g] = row as u32;
            }
        }

        // The winners that may beat their group's kept row.
        let mut candidates: Vec<(usize, u32, Lead)> = Vec::with_capacity(self.touched.len());
        for &g in &self.touched {
            let g = g as usize;
            let row = std::mem::replace(&mut self.best[g], NONE);
            let lead = if !self.set[g] {
                Lead::Better
            } else if let Some(r) = &ranks {
                match r[row as usize].cmp(&self.leads[g]) {
                    Ordering::Equal => Lead::Tie,
                    o if self.better(o) => Lead::Better,
                    _ => continue,
                }
            } else {
                Lead::Tie
            };
            candidates.push((g, row, lead));
        }
        self.touched.clear();
        if candidates.is_empty() {
            return Ok(());
        }

        let rows = UInt32Array::from_iter_values(candidates.iter().map(|c| c.1));
        let taken: Vec<ArrayRef> = keys
            .iter()
            .map(|k| take(k.as_ref(), &rows, None))
            .collect::<std::result::Result<_, _>>()?;
        let encoded = self.converter.convert_columns(&taken)?;
        let chunk = compact(take(value.as_ref(), &rows, None)?);
        let c = self.chunks.len() as u32;
        for (i, &(g, row, lead)) in candidates.iter().enumerate() {
            let key = encoded.row(i);
            if lead == Lead::Tie && !self.better(key.as_ref().cmp(self.keys[g].as_slice())) {
                continue;
            }
            self.set[g] = true;
            if let Some(r) = &ranks {
                self.leads[g] = r[row as usize];
            }
            let kept = &mut self.keys[g];
            self.key_bytes = self.key_bytes + key.as_ref().len() - kept.len();
            kept.clear();
            kept.extend_from_slice(key.as_ref());
            self.values[g] = (c, i as u32);
        }
        self.chunk_rows += chunk.len();
        self.chunk_bytes += chunk.get_array_memory_size();
        self.chunks.push(chunk);
        if self.chunk_rows > 2 * self.set.len() + 8192 {
            self.compact_chunks()?;
        }
        Ok(())
    }

    /// The kept values of `groups` (NULL where no row is kept).
    fn gather(&self, values: &[(u32, u32)], set: &[bool]) -> Result<ArrayRef> {
        let chunks: Vec<&dyn Array> = self.chunks.iter().map(|c| c.as_ref()).collect();
        let indices: Vec<(usize, usize)> = values
            .iter()
            .zip(set)
            .map(|(&(c, r), &s)| if s { (c as usize, r as usize) } else { (0, 0) })
            .collect();
        Ok(interleave(&chunks, &indices)?)
    }

    /// Gather every group's value into one chunk.
    fn compact_chunks(&mut self) -> Result<()> {
        let all = compact(self.gather(&self.values, &self.set)?);
        self.chunks.truncate(1);
        self.chunk_rows = all.len();
        self.chunk_bytes = self.chunks[0].get_array_memory_size() + all.get_array_memory_size();
        self.chunks.push(all);
        for (g, v) in self.values.iter_mut().enumerate() {
            *v = (1, g as u32);
        }
        Ok(())
    }

    /// Take the emitted groups' (values, kept, keys) out of the accumulator.
    fn take(&mut self, emit_to: EmitTo) -> Result<(ArrayRef, Vec<bool>, Vec<Vec<u8>>)> {
        let values = emit_to.take_needed(&mut self.values);
        let set = emit_to.take_needed(&mut self.set);
        if self.lead {
            let _ = emit_to.take_needed(&mut self.leads);
        }
        let keys = emit_to.take_needed(&mut self.keys);
        self.key_bytes -= keys.iter().map(Vec::len).sum::<usize>();
        self.best.clear();
        let out = self.gather(&values, &set)?;
        if self.set.is_empty() {
            self.chunks.truncate(1);
            self.chunk_rows = 0;
            self.chunk_bytes = self.chunks[0].get_array_memory_size();
        } else if self.chunk_rows > 2 * self.set.len() + 8192 {
            self.compact_chunks()?;
        }
        Ok((out, set, keys))
    }
}

/// A kept-values array that holds only its own rows' bytes (a string view array taken from
/// a batch still points into the batch's buffers).
fn compact(a: ArrayRef) -> ArrayRef {
    match a.data_type() {
        DataType::Utf8View => Arc::new(a.as_string_view().gc()),
        DataType::BinaryView => Arc::new(a.as_binary_view().gc()),
        _ => a,
    }
}

/// Rows that a state's `is_set` column and a FILTER both allow (an absent one allows all).
fn allowed(n: usize, is_set: Option<&BooleanArray>, filter: Option<&BooleanArray>) -> BooleanArray {
    (0..n)
        .map(|i| Some(!crate::groups::skipped(is_set, i) && !crate::groups::skipped(filter, i)))
        .collect()
}

impl GroupsAccumulator for FirstLastGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.add(values, group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        Ok(self.take(emit_to)?.0)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let (value, set, keys) = self.take(emit_to)?;
        let parser = self.converter.parser();
        let rows = keys
            .iter()
            .zip(&set)
            .map(|(k, &s)| parser.parse(if s { k } else { &self.null_row }));
        let mut out = vec![value];
        out.extend(self.converter.convert_rows(rows)?);
        out.push(Arc::new(BooleanArray::from(set)));
        Ok(out)
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        let Some((is_set, rest)) = values.split_last() else {
            return Ok(());
        };
        let keep = allowed(is_set.len(), Some(is_set.as_boolean()), None);
        self.add(rest, group_indices, Some(&keep), total_num_groups)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let mut out = values.to_vec();
        let n = values.first().map_or(0, |v| v.len());
        out.push(Arc::new(allowed(n, None, opt_filter)));
        Ok(out)
    }

    fn size(&self) -> usize {
        self.set.capacity()
            + self.leads.capacity() * 16
            + self.keys.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.key_bytes
            + self.values.capacity() * 8
            + self.chunk_bytes
            + (self.best.capacity() + self.touched.capacity()) * 4
            + self.converter.size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lead_rank_orders_like_the_key() {
        let values = [
            None,
            Some(i64::MIN),
            Some(-5),
            Some(0),
            Some(7),
            Some(i64::MAX),
        ];
        for descending in [false, true] {
            for nulls_first in [false, true] {
                let o = SortOptions {
                    descending,
                    nulls_first,
                };
                for a in values {
                    for b in values {
                        let want = match (a, b) {
                            (None, None) => Ordering::Equal,
                            (None, _) if nulls_first => Ordering::Less,
                            (None, _) => Ordering::Greater,
                            (_, None) if nulls_first => Ordering::Greater,
                            (_, None) => Ordering::Less,
                            (Some(x), Some(y)) if descending => y.cmp(&x),
                            (Some(x), Some(y)) => x.cmp(&y),
                        };
                        assert_eq!(
                            lead_rank(a, o).cmp(&lead_rank(b, o)),
                            want,
                            "{a:?} {b:?} {o:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn grouped_state_merges_into_the_same_answer() {
        use datafusion::arrow::array::{Int64Array, StringArray};
        let asc = SortOptions::default();
        let fields = || vec![(DataType::Int64, asc)];
        let mut a = FirstLastGroups::try_new(true, false, &DataType::Utf8, fields()).unwrap();
        let v: ArrayRef = Arc::new(StringArray::from(vec![
            Some("x"),
            Some("y"),
            None,
            Some("z"),
        ]));
        let k: ArrayRef = Arc::new(Int64Array::from(vec![Some(5), Some(3), Some(1), None]));
        a.update_batch(&[v, k], &[0, 0, 1, 2], None, 4).unwrap();
        let state = a.state(EmitTo::All).unwrap();
        let mut b = FirstLastGroups::try_new(true, false, &DataType::Utf8, fields()).unwrap();
        b.merge_batch(&state, &[0, 1, 2, 3], 4).unwrap();
        let out = b.evaluate(EmitTo::All).unwrap();
        let out = out.as_string::<i32>();
        // Group 1's first row has a NULL value (kept: no IGNORE NULLS); group 3 had no row.
        let got: Vec<Option<&str>> = out.iter().collect();
        assert_eq!(got, vec![Some("y"), None, Some("z"), None]);
    }
}
