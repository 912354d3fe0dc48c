//! Grouped aggregation for the event aggregates (`window_funnel`, `sequence_*`): one
//! buffer of (time, condition mask, arrival id) per group, filled from whole batches at
//! once (DataFusion's per-group `Accumulator` path slices every batch per group, which is
//! slow with many persons). Its state is the same three lists as the row accumulators',
//! plus one list of text per tag column when the function keeps per-event tags
//! (`funnel_detail`'s hold_constant key and breakdown value).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, ListArray, StringArray, StringBuilder,
    UInt32Array, UInt64Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::{cast, concat};
use datafusion::arrow::datatypes::Field;
use datafusion::arrow::datatypes::{DataType, Int64Type, UInt32Type, UInt64Type};
use datafusion::error::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::scalar::ScalarValue;

use crate::events;
use crate::group_log::{GroupLog, Grouped};

/// One event: (time, conditions met as a bitmask, arrival id within its group).
pub type Event = (i64, u32, u64);

/// Which rows become events.
#[derive(Debug, Clone, Copy)]
pub struct Keep {
    /// Number of condition columns (after `values[0..2]`).
    pub conditions: usize,
    /// Rows with a NULL condition are dropped (ClickHouse), instead of NULL = false.
    pub drop_null_rows: bool,
    /// Rows meeting no condition are kept (funnels in `strict_order`).
    pub keep_unmatched: bool,
}

/// The per-row event of a batch, or None for rows that are not events.
pub fn batch_events(
    function: &'static str,
    values: &[ArrayRef],
    keep: Keep,
) -> Result<Vec<Option<(i64, u32)>>> {
    let ts = events::times(function, &values[1])?;
    let n = ts.len();
    // Each row's mask, and whether a condition was NULL, built a column at a time from
    // the boolean bits.
    let mut masks = vec![0u32; n];
    let mut has_null = vec![false; n];
    for (i, c) in values[2..2 + keep.conditions].iter().enumerate() {
        let b: ArrayRef = match c.data_type() {
            DataType::Boolean => c.clone(),
            DataType::Null => {
                has_null.iter_mut().for_each(|h| *h = true);
                continue;
            }
            t if t.is_integer() => cast(c, &DataType::Boolean)?,
            other => {
                return Err(crate::error::invalid(
                    function,
                    format!("conditions must be boolean, not {other}"),
                ));
            }
        };
        let b = b.as_boolean();
        let bit = 1u32 << i;
        for row in b.values().set_indices() {
            masks[row] |= bit;
        }
        if let Some(nulls) = b.nulls() {
            for row in 0..n {
                if nulls.is_null(row) {
                    has_null[row] = true;
                    // A NULL condition is not true.
                    masks[row] &= !bit;
                }
            }
        }
    }
    Ok(ts
        .into_iter()
        .zip(masks)
        .zip(has_null)
        .map(|((t, mask), null)| {
            let t = t?;
            if null && keep.drop_null_rows {
                return None;
            }
            (mask != 0 || keep.keep_unmatched).then_some((t, mask))
        })
        .collect())
}

/// Does a GROUP BY aggregate's FILTER (WHERE …) leave out `row`?
pub fn skipped(opt_filter: Option<&BooleanArray>, row: usize) -> bool {
    opt_filter.is_some_and(|f| !f.is_valid(row) || !f.value(row))
}

/// An event's tag: the text of one tag column (NULL as None).
pub type Tag = Option<Box<str>>;

/// The state lists of some groups' events: time, mask and arrival id, then one list of
/// text per tag column (`k` of them) when `tags` is given (`k` per event, event-major).
fn state_lists(events: &Grouped<Event>, tags: Option<(&Grouped<Tag>, usize)>) -> Vec<ArrayRef> {
    let rows = &events.rows;
    let offsets = OffsetBuffer::from_lengths(events.lengths());
    let list = |values: ArrayRef| -> ArrayRef {
        Arc::new(ListArray::new(
            Arc::new(Field::new_list_field(values.data_type().clone(), true)),
            offsets.clone(),
            values,
            None,
        ))
    };
    let mut out: Vec<ArrayRef> = vec![
        list(Arc::new(Int64Array::from_iter_values(
            rows.iter().map(|e| e.0),
        ))),
        list(Arc::new(UInt32Array::from_iter_values(
            rows.iter().map(|e| e.1),
        ))),
        list(Arc::new(UInt64Array::from_iter_values(
            rows.iter().map(|e| e.2),
        ))),
    ];
    if let Some((tags, k)) = tags {
        for j in 0..k {
            let mut b = StringBuilder::new();
            for v in tags.rows.iter().skip(j).step_by(k) {
                b.append_option(v.as_deref());
            }
            out.push(list(Arc::new(b.finish())));
        }
    }
    out
}

/// Append row `row` of the tag state lists (`k` of them, after the three event lists) to
/// group `g`'s tags, event-major.
fn merge_tag_row(states: &[ArrayRef], row: usize, k: usize, g: usize, tags: &mut GroupLog<Tag>) {
    let lists: Vec<ArrayRef> = (0..k)
        .map(|j| states[3 + j].as_list::<i32>().value(row))
        .collect();
    let strings: Vec<&StringArray> = lists.iter().map(|a| a.as_string::<i32>()).collect();
    let n = strings.first().map_or(0, |a| a.len());
    for i in 0..n {
        for s in &strings {
            tags.push(g, s.is_valid(i).then(|| s.value(i).into()));
        }
    }
}

/// The tag columns of a batch as text.
fn tag_arrays(values: &[ArrayRef], columns: &[usize]) -> Result<Vec<StringArray>> {
    columns
        .iter()
        .map(|&c| {
            Ok(cast(&values[c], &DataType::Utf8)?
                .as_string::<i32>()
                .clone())
        })
        .collect()
}

/// Push row `row`'s tags to group `g`.
fn push_tags(arrays: &[StringArray], row: usize, g: usize, tags: &mut GroupLog<Tag>) {
    for a in arrays {
        tags.push(g, a.is_valid(row).then(|| a.value(row).into()));
    }
}

/// Append row `row` of the state lists to group `g`'s events, with arrival ids after
/// `next`'s.
fn merge_state_row(
    states: &[ArrayRef],
    row: usize,
    g: usize,
    events: &mut GroupLog<Event>,
    next: &mut u64,
) {
    let (ts, mask, uid) = (
        states[0].as_list::<i32>(),
        states[1].as_list::<i32>(),
        states[2].as_list::<i32>(),
    );
    if ts.is_null(row) {
        return;
    }
    // Straight from the flat buffers (state lists hold no NULL values); the three lists
    // share their lengths but not necessarily their offsets.
    let span = |l: &ListArray| {
        let o = l.value_offsets();
        (o[row] as usize, o[row + 1] as usize)
    };
    let ((t0, t1), (m0, _), (u0, _)) = (span(ts), span(mask), span(uid));
    let t = &ts.values().as_primitive::<Int64Type>().values()[t0..t1];
    let m = &mask.values().as_primitive::<UInt32Type>().values()[m0..m0 + t.len()];
    let u = &uid.values().as_primitive::<UInt64Type>().values()[u0..u0 + t.len()];
    let offset = *next;
    for i in 0..t.len() {
        let id = u[i] + offset;
        *next = (*next).max(id + 1);
        events.push(g, (t[i], m[i], id));
    }
}

/// The result of one group's events (and their tags, in buffer order).
pub type Finish = Box<dyn Fn(&mut [Event], &[Tag]) -> Result<ScalarValue> + Send + Sync>;

/// Groups whose values are built at once in `evaluate`.
const EVALUATE_CHUNK: usize = 8192;

/// A [`GroupsAccumulator`] over event buffers.
pub struct EventGroups {
    /// `size()` counted every few batches (see [`crate::state_size`]).
    size_cache: crate::state_size::SizeCache,
    name: &'static str,
    keep: Keep,
    finish: Finish,
    /// Every group's events, in one log.
    events: GroupLog<Event>,
    /// Per group, the next arrival id.
    next: Vec<u64>,
    /// The argument positions of the tag columns (none for most functions).
    tag_columns: Vec<usize>,
    /// The events' tags, `tag_columns.len()` per event.
    tags: GroupLog<Tag>,
}

impl std::fmt::Debug for EventGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventGroups")
            .field("name", &self.name)
            .field("groups", &self.next.len())
            .finish()
    }
}

impl EventGroups {
    /// Buffers for `name`, evaluated per group by `finish`.
    pub fn new(
        name: &'static str,
        keep: Keep,
        finish: impl Fn(&mut [Event]) -> Result<ScalarValue> + Send + Sync + 'static,
    ) -> Self {
        Self::tagged(name, keep, vec![], Box::new(move |e, _| finish(e)))
    }

    /// Buffers that also keep, per event, the text of the arguments at `tag_columns`.
    pub fn tagged(name: &'static str, keep: Keep, tag_columns: Vec<usize>, finish: Finish) -> Self {
        EventGroups {
            size_cache: Default::default(),
            name,
            keep,
            finish,
            events: GroupLog::default(),
            next: vec![],
            tag_columns,
            tags: GroupLog::default(),
        }
    }

    fn grow(&mut self, groups: usize) {
        if self.next.len() < groups {
            self.next.resize(groups, 1);
        }
        self.events.resize(groups);
        self.tags.resize(groups);
    }

    /// Take the groups `emit_to` names: their events and tags, grouped.
    fn take(&mut self, emit_to: EmitTo) -> (Grouped<Event>, Grouped<Tag>) {
        let _ = emit_to.take_needed(&mut self.next);
        (self.events.take(emit_to), self.tags.take(emit_to))
    }
}

impl GroupsAccumulator for EventGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let events = batch_events(self.name, values, self.keep)?;
        let tags = tag_arrays(values, &self.tag_columns)?;
        for (row, (&g, e)) in group_indices.iter().zip(events).enumerate() {
            if skipped(opt_filter, row) {
                continue;
            }
            let uid = self.next[g];
            self.next[g] += 1;
            if let Some((t, mask)) = e {
                self.events.push(g, (t, mask, uid));
                if !tags.is_empty() {
                    push_tags(&tags, row, g, &mut self.tags);
                }
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.size_cache.invalidate();
        let (mut events, tags) = self.take(emit_to);
        let k = self.tag_columns.len();
        if events.is_empty() {
            return ScalarValue::iter_to_array(Vec::new());
        }
        // The values a chunk of groups at a time: one vector of every group's value (64
        // bytes each) was reallocated as it grew, and its page faults and copies were 11% of
        // a 433,000-person sequence_match.
        let n = events.len();
        let mut arrays = Vec::with_capacity(n.div_ceil(EVALUATE_CHUNK));
        for from in (0..n).step_by(EVALUATE_CHUNK) {
            let values: Vec<ScalarValue> = (from..n.min(from + EVALUATE_CHUNK))
                .map(|g| {
                    let t = if k == 0 { &[][..] } else { tags.group(g) };
                    (self.finish)(events.group_mut(g), t)
                })
                .collect::<Result<_>>()?;
            arrays.push(ScalarValue::iter_to_array(values)?);
        }
        if arrays.len() == 1 {
            return Ok(arrays.swap_remove(0));
        }
        let refs: Vec<&dyn Array> = arrays.iter().map(|a| a.as_ref()).collect();
        Ok(concat(&refs)?)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.size_cache.invalidate();
        let (events, tags) = self.take(emit_to);
        let k = self.tag_columns.len();
        Ok(state_lists(&events, (k > 0).then_some((&tags, k))))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let k = self.tag_columns.len();
        for (row, &g) in group_indices.iter().enumerate() {
            merge_state_row(values, row, g, &mut self.events, &mut self.next[g]);
            if k > 0 && !values[0].is_null(row) {
                merge_tag_row(values, row, k, g, &mut self.tags);
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // One state per input row: a list of its event, or an empty list.
        let arrays = tag_arrays(values, &self.tag_columns)?;
        let k = self.tag_columns.len();
        let (mut events, mut tags) = (GroupLog::default(), GroupLog::default());
        let batch = batch_events(self.name, values, self.keep)?;
        events.resize(batch.len());
        tags.resize(batch.len());
        for (row, e) in batch.into_iter().enumerate() {
            if let Some((t, mask)) = e
                && !skipped(opt_filter, row)
            {
                events.push(row, (t, mask, 1));
                push_tags(&arrays, row, row, &mut tags);
            }
        }
        let (events, tags) = (events.take(EmitTo::All), tags.take(EmitTo::All));
        Ok(state_lists(&events, (k > 0).then_some((&tags, k))))
    }

    fn size(&self) -> usize {
        self.size_cache.get(|| {
            self.events.size()
                + self.tags.size()
                + self
                    .tags
                    .rows()
                    .iter()
                    .flatten()
                    .map(|v| v.len())
                    .sum::<usize>()
                + self.next.capacity() * 8
        })
    }
}

/// The row [`Accumulator`] of an aggregate (no GROUP BY, or a window) as its
/// [`GroupsAccumulator`] with one group: one implementation, one state layout.
#[derive(Debug)]
pub struct OneGroup<G>(pub G);

impl<G: GroupsAccumulator> OneGroup<G> {
    /// The group's state, left in place (emitting takes it out; it is merged back). The
    /// group exists even before any row arrived.
    fn snapshot(&mut self) -> Result<Vec<ArrayRef>> {
        // The first round creates the group if no row has arrived yet.
        let mut state = vec![];
        for _ in 0..2 {
            state = self.0.state(EmitTo::All)?;
            let rows = state.first().map_or(0, |a| a.len());
            self.0.merge_batch(&state, &vec![0; rows], 1)?;
            if rows > 0 {
                break;
            }
        }
        Ok(state)
    }
}

impl<G: GroupsAccumulator + std::fmt::Debug + Sync> datafusion::logical_expr::Accumulator
    for OneGroup<G>
{
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let n = values.first().map_or(0, |v| v.len());
        self.0.update_batch(values, &vec![0; n], None, 1)
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        self.snapshot()?
            .iter()
            .map(|a| ScalarValue::try_from_array(a, 0))
            .collect()
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let n = states.first().map_or(0, |s| s.len());
        self.0.merge_batch(states, &vec![0; n], 1)
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let state = self.snapshot()?;
        let out = self.0.evaluate(EmitTo::All)?;
        self.0.merge_batch(&state, &[0], 1)?;
        ScalarValue::try_from_array(&out, 0)
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.0.size()
    }
}
