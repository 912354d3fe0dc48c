//! `sessions(ts, gap [, max_duration])`: an aggregate giving a person's sessions as a list
//! of structs `{session, started_at, ended_at, events, duration}`, with the rule of
//! `sessionize` (a new session when `ts − previous ts >= gap`, or when `ts − session start
//! >= max_duration`; rows at the same time stay together). One pass per person over its
//! sorted times, instead of a window over every row and a GROUP BY of the rows again:
//! `SELECT unnest(sessions(occurred_at, INTERVAL '30 minutes')) … GROUP BY person_id`.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, IntervalMonthDayNanoArray, ListArray,
    StructArray, TimestampMicrosecondArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Int64Type, IntervalMonthDayNano, IntervalUnit, TimeUnit,
};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

use crate::error::invalid;
use crate::events;
use crate::group_log::{GroupLog, Grouped};
use crate::groups::{OneGroup, skipped};

const NAME: &str = "sessions";
const USAGE: &str = "takes (ts, gap INTERVAL [, max_duration INTERVAL])";

/// The `sessions` aggregate.
pub fn sessions() -> AggregateUDF {
    AggregateUDF::from(Sessions {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Sessions {
    signature: Signature,
}

/// The output's time type (timestamps in µs keeping their zone; dates as timestamps;
/// integers as Int64) and duration type.
fn time_types(ts: &DataType) -> (DataType, DataType) {
    match ts {
        t if t.is_integer() => (DataType::Int64, DataType::Int64),
        DataType::Timestamp(_, tz) => (
            DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
            DataType::Interval(IntervalUnit::MonthDayNano),
        ),
        _ => (
            DataType::Timestamp(TimeUnit::Microsecond, None),
            DataType::Interval(IntervalUnit::MonthDayNano),
        ),
    }
}

fn session_fields(ts: &DataType) -> Fields {
    let (time, duration) = time_types(ts);
    Fields::from(vec![
        Field::new("session", DataType::Int64, false),
        Field::new("started_at", time.clone(), false),
        Field::new("ended_at", time, false),
        Field::new("events", DataType::Int64, false),
        Field::new("duration", duration, false),
    ])
}

fn list_type(ts: &DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(
        DataType::Struct(session_fields(ts)),
        true,
    )))
}

fn check(types: &[DataType]) -> Result<()> {
    let duration = |t: &DataType| events::is_interval(t) || t.is_integer();
    if !(2..=3).contains(&types.len())
        || !events::is_time_type(&types[0])
        || !types[1..].iter().all(duration)
    {
        return Err(invalid(NAME, USAGE));
    }
    Ok(())
}

/// The settings of one call.
#[derive(Debug, Clone)]
struct Rule {
    gap: i64,
    max: Option<i64>,
    time_type: DataType,
}

impl Rule {
    fn from_args(args: &AccumulatorArgs) -> Result<Self> {
        let time_type = args.expr_fields[0].data_type().clone();
        let constant = |i: usize, what: &str| {
            events::literal(&args.exprs[i])
                .ok_or_else(|| invalid(NAME, format!("{what} must be a constant")))
        };
        let gap = events::duration(NAME, "gap", constant(1, "gap")?, &time_type)?;
        let max = match args.exprs.len() {
            3 => Some(events::duration(
                NAME,
                "max_duration",
                constant(2, "max_duration")?,
                &time_type,
            )?),
            _ => None,
        };
        Ok(Rule {
            gap,
            max,
            time_type,
        })
    }

    /// Split sorted times into sessions: (start, end, events) each.
    fn split(&self, times: &[i64], out: &mut Vec<(i64, i64, i64)>) {
        let mut iter = times.iter().copied();
        let Some(first) = iter.next() else { return };
        let (mut start, mut prev, mut n) = (first, first, 1i64);
        for t in iter {
            let new =
                t > prev && (t - prev >= self.gap || self.max.is_some_and(|m| t - start >= m));
            if new {
                out.push((start, prev, n));
                (start, n) = (t, 0);
            }
            prev = t;
            n += 1;
        }
        out.push((start, prev, n));
    }
}

/// Every group's times, in one log.
#[derive(Debug)]
struct SessionGroups {
    /// `size()` counted every few batches (see [`crate::state_size`]).
    size_cache: crate::state_size::SizeCache,
    rule: Rule,
    times: GroupLog<i64>,
}

impl SessionGroups {
    fn new(rule: Rule) -> Self {
        SessionGroups {
            size_cache: Default::default(),
            rule,
            times: GroupLog::default(),
        }
    }

    /// One list of sessions per group.
    fn lists(&self, mut groups: Grouped<i64>) -> Result<ArrayRef> {
        let mut sessions: Vec<(i64, i64, i64)> = vec![];
        let mut numbers: Vec<i64> = vec![];
        let mut lengths = Vec::with_capacity(groups.len());
        for g in 0..groups.len() {
            let g = groups.group_mut(g);
            g.sort_unstable();
            let before = sessions.len();
            self.rule.split(g, &mut sessions);
            lengths.push(sessions.len() - before);
            numbers.extend(1..=(sessions.len() - before) as i64);
        }
        let started = sessions.iter().map(|s| s.0);
        let ended = sessions.iter().map(|s| s.1);
        let events = Int64Array::from_iter_values(sessions.iter().map(|s| s.2));
        let durations = sessions.iter().map(|s| s.1 - s.0);
        let (time, _) = time_types(&self.rule.time_type);
        let (started, ended, duration): (ArrayRef, ArrayRef, ArrayRef) = match time {
            DataType::Timestamp(_, tz) => (
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(started)
                        .with_timezone_opt(tz.clone()),
                ),
                Arc::new(TimestampMicrosecondArray::from_iter_values(ended).with_timezone_opt(tz)),
                Arc::new(IntervalMonthDayNanoArray::from_iter_values(
                    durations.map(|us| IntervalMonthDayNano::new(0, 0, us * 1000)),
                )),
            ),
            _ => (
                Arc::new(Int64Array::from_iter_values(started)),
                Arc::new(Int64Array::from_iter_values(ended)),
                Arc::new(Int64Array::from_iter_values(durations)),
            ),
        };
        let structs = StructArray::try_new(
            session_fields(&self.rule.time_type),
            vec![
                Arc::new(Int64Array::from(numbers)),
                started,
                ended,
                Arc::new(events),
                duration,
            ],
            None,
        )?;
        let field = match list_type(&self.rule.time_type) {
            DataType::List(f) => f,
            _ => unreachable!("sessions returns a list"),
        };
        Ok(Arc::new(ListArray::try_new(
            field,
            OffsetBuffer::from_lengths(lengths),
            Arc::new(structs),
            None,
        )?))
    }
}

/// The state: one list of times per group.
fn state_list(groups: Grouped<i64>) -> ArrayRef {
    Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(DataType::Int64, true)),
        OffsetBuffer::from_lengths(groups.lengths()),
        Arc::new(Int64Array::from(groups.rows)),
        None,
    ))
}

impl GroupsAccumulator for SessionGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.times.resize(total_num_groups);
        let ts = events::times(NAME, &values[0])?;
        self.times.reserve(ts.len());
        for (row, (&g, t)) in group_indices.iter().zip(ts).enumerate() {
            if let Some(t) = t
                && !skipped(opt_filter, row)
            {
                self.times.push(g, t);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.size_cache.invalidate();
        let groups = self.times.take(emit_to);
        self.lists(groups)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.size_cache.invalidate();
        let groups = self.times.take(emit_to);
        Ok(vec![state_list(groups)])
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.times.resize(total_num_groups);
        // Straight from the flat buffer.
        let lists = values[0].as_list::<i32>();
        let offsets = lists.value_offsets();
        let times = lists.values().as_primitive::<Int64Type>();
        let flat = times.values();
        self.times.reserve(flat.len());
        for (row, &g) in group_indices.iter().enumerate() {
            if lists.is_valid(row) {
                for i in offsets[row] as usize..offsets[row + 1] as usize {
                    if times.is_valid(i) {
                        self.times.push(g, flat[i]);
                    }
                }
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let ts = events::times(NAME, &values[0])?;
        let mut one = GroupLog::default();
        one.resize(ts.len());
        for (row, t) in ts.into_iter().enumerate() {
            if let Some(t) = t
                && !skipped(opt_filter, row)
            {
                one.push(row, t);
            }
        }
        Ok(vec![state_list(one.take(EmitTo::All))])
    }

    fn size(&self) -> usize {
        self.size_cache.get(|| self.times.size())
    }
}

impl AggregateUDFImpl for Sessions {
    fn name(&self) -> &str {
        NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        check(types)?;
        Ok(types.to_vec())
    }
    fn return_type(&self, types: &[DataType]) -> Result<DataType> {
        check(types)?;
        Ok(list_type(&types[0]))
    }
    fn is_nullable(&self) -> bool {
        false
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![events::list_state(args.name, "ts", DataType::Int64)])
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneGroup(SessionGroups::new(Rule::from_args(
            &args,
        )?))))
    }
    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(SessionGroups::new(Rule::from_args(&args)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_split_like_sessionize() {
        let rule = Rule {
            gap: 30,
            max: Some(100),
            time_type: DataType::Int64,
        };
        let mut out = vec![];
        // A gap of exactly 30 starts a session; equal times stay; 100 from the start cuts.
        rule.split(&[0, 10, 10, 40, 65, 90, 115, 140, 141], &mut out);
        assert_eq!(out, vec![(0, 10, 3), (40, 115, 4), (140, 141, 2)]);
    }
}
