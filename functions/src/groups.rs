//! Grouped aggregation for the event aggregates (`window_funnel`, `sequence_*`): one
//! buffer of (time, condition mask, arrival id) per group, filled from whole batches at
//! once (DataFusion's per-group `Accumulator` path slices every batch per group, which is
//! slow with many persons). Its state is the same three lists as the row accumulators'.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, ListArray};
use datafusion::arrow::datatypes::{Int64Type, UInt32Type, UInt64Type};
use datafusion::error::Result;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::scalar::ScalarValue;

use crate::events;

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
    let conds = events::conditions(function, &values[2..2 + keep.conditions])?;
    Ok(ts
        .iter()
        .enumerate()
        .map(|(row, t)| {
            let t = (*t)?;
            let mut mask = 0u32;
            for (i, c) in conds.iter().enumerate() {
                match c[row] {
                    Some(true) => mask |= 1 << i,
                    Some(false) => {}
                    None if keep.drop_null_rows => return None,
                    None => {}
                }
            }
            (mask != 0 || keep.keep_unmatched).then_some((t, mask))
        })
        .collect())
}

/// Does a GROUP BY aggregate's FILTER (WHERE …) leave out `row`?
pub fn skipped(opt_filter: Option<&BooleanArray>, row: usize) -> bool {
    opt_filter.is_some_and(|f| !f.is_valid(row) || !f.value(row))
}

/// The three state lists of some event buffers.
pub fn state_lists<'a>(buffers: impl Iterator<Item = &'a Vec<Event>> + Clone) -> Vec<ArrayRef> {
    let ts = ListArray::from_iter_primitive::<Int64Type, _, _>(
        buffers.clone().map(|b| Some(b.iter().map(|e| Some(e.0)))),
    );
    let mask = ListArray::from_iter_primitive::<UInt32Type, _, _>(
        buffers.clone().map(|b| Some(b.iter().map(|e| Some(e.1)))),
    );
    let uid = ListArray::from_iter_primitive::<UInt64Type, _, _>(
        buffers.map(|b| Some(b.iter().map(|e| Some(e.2)))),
    );
    vec![Arc::new(ts), Arc::new(mask), Arc::new(uid)]
}

/// Append row `row` of the state lists to `buffer`, with arrival ids after `next`'s.
pub fn merge_state_row(states: &[ArrayRef], row: usize, buffer: &mut Vec<Event>, next: &mut u64) {
    let (ts, mask, uid) = (
        states[0].as_list::<i32>(),
        states[1].as_list::<i32>(),
        states[2].as_list::<i32>(),
    );
    if ts.is_null(row) {
        return;
    }
    let (t, m, u) = (ts.value(row), mask.value(row), uid.value(row));
    let (t, m, u) = (
        t.as_primitive::<Int64Type>(),
        m.as_primitive::<UInt32Type>(),
        u.as_primitive::<UInt64Type>(),
    );
    let offset = *next;
    for i in 0..t.len() {
        let id = u.value(i) + offset;
        *next = (*next).max(id + 1);
        buffer.push((t.value(i), m.value(i), id));
    }
}

/// The result of one group's events.
pub type Finish = Box<dyn Fn(&mut Vec<Event>) -> Result<ScalarValue> + Send + Sync>;

/// A [`GroupsAccumulator`] over event buffers.
pub struct EventGroups {
    name: &'static str,
    keep: Keep,
    finish: Finish,
    buffers: Vec<Vec<Event>>,
    next: Vec<u64>,
}

impl std::fmt::Debug for EventGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventGroups")
            .field("name", &self.name)
            .field("groups", &self.buffers.len())
            .finish()
    }
}

impl EventGroups {
    /// Buffers for `name`, evaluated per group by `finish`.
    pub fn new(name: &'static str, keep: Keep, finish: Finish) -> Self {
        EventGroups {
            name,
            keep,
            finish,
            buffers: vec![],
            next: vec![],
        }
    }

    fn grow(&mut self, groups: usize) {
        if self.buffers.len() < groups {
            self.buffers.resize_with(groups, Vec::new);
            self.next.resize(groups, 1);
        }
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
        for (row, (&g, e)) in group_indices.iter().zip(events).enumerate() {
            if skipped(opt_filter, row) {
                continue;
            }
            let uid = self.next[g];
            self.next[g] += 1;
            if let Some((t, mask)) = e {
                self.buffers[g].push((t, mask, uid));
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let mut buffers = emit_to.take_needed(&mut self.buffers);
        let _ = emit_to.take_needed(&mut self.next);
        let values: Vec<ScalarValue> = buffers
            .iter_mut()
            .map(|b| (self.finish)(b))
            .collect::<Result<_>>()?;
        ScalarValue::iter_to_array(values)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let buffers = emit_to.take_needed(&mut self.buffers);
        let _ = emit_to.take_needed(&mut self.next);
        Ok(state_lists(buffers.iter()))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        for (row, &g) in group_indices.iter().enumerate() {
            merge_state_row(values, row, &mut self.buffers[g], &mut self.next[g]);
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // One state per input row: a list of its event, or an empty list.
        let rows: Vec<Vec<Event>> = batch_events(self.name, values, self.keep)?
            .into_iter()
            .enumerate()
            .map(|(row, e)| {
                let filtered = skipped(opt_filter, row);
                match e {
                    Some((t, mask)) if !filtered => vec![(t, mask, 1)],
                    _ => vec![],
                }
            })
            .collect();
        Ok(state_lists(rows.iter()))
    }

    fn size(&self) -> usize {
        self.buffers
            .iter()
            .map(|b| b.capacity() * 24)
            .sum::<usize>()
            + self.buffers.capacity() * 32
            + self.next.capacity() * 8
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
