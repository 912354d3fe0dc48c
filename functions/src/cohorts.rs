//! Cohorts (functions.md §F): `retention_vector` (PostHog's retention, one person at a time),
//! `lifecycle_periods` (PostHog's lifecycle: new / returning / resurrecting / dormant per
//! period) and the window function `lifecycle_status` (the status of each row's period).
//!
//! Times are bucketed to calendar periods in a time zone ([`Calendar`]); options come as one
//! text argument `'key=value, …'` (`type`, `cumulative`, `min_occurrences`, `tz`,
//! `week_start`, `date_from`, `date_to`).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, ListArray, StringArray, StringBuilder, StructArray,
    TimestampMicrosecondArray, UInt8Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Int64Type, TimeUnit, UInt8Type,
};
use datafusion::error::Result;
use datafusion::logical_expr::function::{
    AccumulatorArgs, PartitionEvaluatorArgs, StateFieldsArgs, WindowUDFFieldArgs,
};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, PartitionEvaluator,
    Signature, Volatility, WindowUDF, WindowUDFImpl,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::scalar::ScalarValue;

use crate::calendar::{self, Calendar, Unit};
use crate::error::invalid;
use crate::events;
use crate::groups::{OneGroup, skipped};

/// Most periods `retention_vector` reports per cohort.
const MAX_PERIODS: i64 = 1000;

/// The aggregates of this module.
pub fn functions() -> Vec<AggregateUDF> {
    [Kind::Retention, Kind::Lifecycle]
        .into_iter()
        .map(|kind| {
            AggregateUDF::from(Cohorts {
                kind,
                signature: Signature::user_defined(Volatility::Immutable),
            })
        })
        .collect()
}

/// The window functions of this module.
pub fn window_functions() -> Vec<WindowUDF> {
    vec![WindowUDF::from(LifecycleStatus {
        signature: Signature::user_defined(Volatility::Immutable),
    })]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Retention,
    Lifecycle,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Retention => "retention_vector",
            Kind::Lifecycle => "lifecycle_periods",
        }
    }
    fn usage(self) -> &'static str {
        match self {
            Kind::Retention => {
                "takes (ts, is_start boolean, is_return boolean, period, n_periods integer \
                 [, options text])"
            }
            Kind::Lifecycle => "takes (ts, period [, options text])",
        }
    }
    /// Position of the period argument.
    fn period_arg(self) -> usize {
        match self {
            Kind::Retention => 3,
            Kind::Lifecycle => 1,
        }
    }
}

/// A call's settings.
#[derive(Debug, Clone)]
struct Options {
    calendar: Calendar,
    /// Periods per cohort, period 0 included (`retention_vector`).
    periods: usize,
    /// Every start period is a cohort (else only the first-ever start).
    recurring: bool,
    /// Retained at k if retained at any later period.
    cumulative: bool,
    /// Return events needed in a period to count it as retained.
    min_occurrences: u32,
    /// First and last period reported (inclusive).
    from: Option<i64>,
    to: Option<i64>,
}

/// Parse `(period, [n], [options])` from constant arguments.
fn options(
    name: &'static str,
    period: &ScalarValue,
    periods: usize,
    text: Option<&ScalarValue>,
) -> Result<Options> {
    let mut unit = Calendar::from_period(name, period)?;
    let mut zone = chrono_tz::Tz::UTC;
    let (mut recurring, mut cumulative, mut min_occurrences) = (false, false, 1u32);
    let (mut from, mut to) = (None, None);
    let text = match text {
        Some(v) => events::text_literal(name, "options", v)?,
        None => String::new(),
    };
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = match part.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), v.trim()),
            None => ("type".to_string(), part),
        };
        let flag = |v: &str| match v.to_ascii_lowercase().as_str() {
            "true" | "on" | "1" => Ok(true),
            "false" | "off" | "0" => Ok(false),
            _ => Err(invalid(name, format!("{k}: '{v}' is not a boolean"))),
        };
        match k.as_str() {
            "type" => match v.to_ascii_lowercase().as_str() {
                "first_time" | "retention_first_time" => recurring = false,
                "recurring" | "retention_recurring" => recurring = true,
                "cumulative" | "rolling" => cumulative = true,
                other => {
                    return Err(invalid(
                        name,
                        format!("type '{other}' is not first_time, recurring or cumulative"),
                    ));
                }
            },
            "cumulative" | "rolling" => cumulative = flag(v)?,
            "min_occurrences" => {
                min_occurrences = match v.parse::<u32>() {
                    Ok(n) if n >= 1 => n,
                    _ => {
                        return Err(invalid(
                            name,
                            format!("min_occurrences: '{v}' is not a positive integer"),
                        ));
                    }
                }
            }
            "tz" | "timezone" | "time_zone" => zone = Calendar::zone(name, v)?,
            "week_start" => {
                let sunday = match v.to_ascii_lowercase().as_str() {
                    "monday" | "mon" => false,
                    "sunday" | "sun" => true,
                    _ => {
                        return Err(invalid(
                            name,
                            format!("week_start: '{v}' is not monday or sunday"),
                        ));
                    }
                };
                if let Unit::Week { .. } = unit {
                    unit = Unit::Week { sunday };
                }
            }
            "date_from" => from = Some(calendar::local_time(name, &k, v)?),
            "date_to" => to = Some(calendar::local_time(name, &k, v)?),
            other => {
                return Err(invalid(
                    name,
                    format!(
                        "unknown option '{other}' (type, cumulative, min_occurrences, tz, \
                         week_start, date_from, date_to)"
                    ),
                ));
            }
        }
    }
    let calendar = Calendar { unit, zone };
    Ok(Options {
        calendar,
        periods,
        recurring,
        cumulative,
        min_occurrences,
        from: from.map(|t| calendar.local_index(t)),
        to: to.map(|t| calendar.local_index(t)),
    })
}

fn constant<'a>(
    name: &'static str,
    exprs: &'a [Arc<dyn PhysicalExpr>],
    i: usize,
    what: &str,
) -> Result<&'a ScalarValue> {
    events::literal(&exprs[i]).ok_or_else(|| invalid(name, format!("{what} must be a constant")))
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Cohorts {
    kind: Kind,
    signature: Signature,
}

fn retention_fields() -> Fields {
    Fields::from(vec![
        Field::new(
            "cohort_start",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
        Field::new(
            "retained",
            DataType::List(Arc::new(Field::new_list_field(DataType::UInt8, true))),
            false,
        ),
    ])
}

fn lifecycle_fields() -> Fields {
    Fields::from(vec![
        Field::new(
            "period_start",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
        Field::new("status", DataType::Utf8, false),
    ])
}

impl Cohorts {
    fn groups(&self, args: &AccumulatorArgs) -> Result<CohortGroups> {
        let name = self.kind.name();
        let p = self.kind.period_arg();
        let period = constant(name, args.exprs, p, "period")?;
        let (periods, text_at) = match self.kind {
            Kind::Retention => {
                let n = constant(name, args.exprs, 4, "n_periods")?;
                let n = match n.cast_to(&DataType::Int64) {
                    Ok(ScalarValue::Int64(Some(n))) if (1..=MAX_PERIODS).contains(&n) => n,
                    _ => {
                        return Err(invalid(
                            name,
                            format!("n_periods must be an integer from 1 to {MAX_PERIODS}"),
                        ));
                    }
                };
                (n as usize, 5)
            }
            Kind::Lifecycle => (0, 2),
        };
        let text = match args.exprs.len() > text_at {
            true => Some(constant(name, args.exprs, text_at, "options")?),
            false => None,
        };
        Ok(CohortGroups {
            size_cache: Default::default(),
            kind: self.kind,
            options: options(name, period, periods, text)?,
            entries: vec![],
        })
    }
}

impl AggregateUDFImpl for Cohorts {
    fn name(&self) -> &str {
        self.kind.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.kind.name();
        let (min, max) = match self.kind {
            Kind::Retention => (5, 6),
            Kind::Lifecycle => (2, 3),
        };
        if types.len() < min || types.len() > max || !events::is_time_type(&types[0]) {
            return Err(invalid(name, self.kind.usage()));
        }
        let mut out = types.to_vec();
        if self.kind == Kind::Retention {
            events::coerce_conditions(name, &mut out, 1..3)?;
            if !types[4].is_integer() {
                return Err(invalid(name, "n_periods must be an integer"));
            }
        }
        let p = self.kind.period_arg();
        if events::is_text(&types[p]) {
            out[p] = DataType::Utf8;
        }
        if types.len() == max {
            if !events::is_text(&types[max - 1]) {
                return Err(invalid(name, "options must be text"));
            }
            out[max - 1] = DataType::Utf8;
        }
        Ok(out)
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        let fields = match self.kind {
            Kind::Retention => retention_fields(),
            Kind::Lifecycle => lifecycle_fields(),
        };
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Struct(fields),
            true,
        ))))
    }
    fn is_nullable(&self) -> bool {
        false
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            events::list_state(args.name, "period", DataType::Int64),
            events::list_state(args.name, "kind", DataType::UInt8),
        ])
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneGroup(self.groups(&args)?)))
    }
    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(self.groups(&args)?))
    }
}

/// A start event (bit 0) and a return event (bit 1); lifecycle activity is a start.
const START: u8 = 1;
const RETURN: u8 = 2;

/// Per group: (period, kinds) of its events, in arrival order.
#[derive(Debug)]
struct CohortGroups {
    /// `size()` counted every few batches (see [`crate::state_size`]).
    size_cache: crate::state_size::SizeCache,
    kind: Kind,
    options: Options,
    entries: Vec<Vec<(i64, u8)>>,
}

impl CohortGroups {
    fn grow(&mut self, n: usize) {
        if self.entries.len() < n {
            self.entries.resize_with(n, Vec::new);
        }
    }

    /// The (period, kinds) of each row, None for rows that are no event.
    fn rows(&self, values: &[ArrayRef]) -> Result<Vec<Option<(i64, u8)>>> {
        let name = self.kind.name();
        let ts = events::times(name, &values[0])?;
        let kinds: Vec<u8> = match self.kind {
            Kind::Retention => {
                let c = events::conditions(name, &values[1..3])?;
                c[0].iter()
                    .zip(&c[1])
                    .map(|(s, r)| {
                        u8::from(*s == Some(true)) * START + u8::from(*r == Some(true)) * RETURN
                    })
                    .collect()
            }
            Kind::Lifecycle => vec![START; ts.len()],
        };
        Ok(ts
            .iter()
            .zip(kinds)
            .map(|(t, k)| match t {
                Some(t) if k != 0 => Some((self.options.calendar.index(*t), k)),
                _ => None,
            })
            .collect())
    }

    /// Consecutive repeats of an entry add nothing unless return events are counted.
    fn push(&self, buffer: &mut Vec<(i64, u8)>, e: (i64, u8)) {
        if self.options.min_occurrences > 1 || buffer.last() != Some(&e) {
            buffer.push(e);
        }
    }

    fn finish(&self, groups: &mut [Vec<(i64, u8)>]) -> Result<ArrayRef> {
        let o = &self.options;
        let in_range = |p: i64| o.from.is_none_or(|f| p >= f) && o.to.is_none_or(|t| p <= t);
        let mut starts_out: Vec<i64> = vec![];
        let mut offsets = vec![0i32];
        match self.kind {
            Kind::Retention => {
                let mut retained: Vec<u8> = vec![];
                for entries in groups.iter_mut() {
                    entries.sort_unstable();
                    let mut starts: Vec<i64> = entries
                        .iter()
                        .filter(|e| e.1 & START != 0)
                        .map(|e| e.0)
                        .collect();
                    starts.dedup();
                    let mut returns: Vec<(i64, u32)> = vec![];
                    for e in entries.iter().filter(|e| e.1 & RETURN != 0) {
                        match returns.last_mut() {
                            Some(last) if last.0 == e.0 => last.1 += 1,
                            _ => returns.push((e.0, 1)),
                        }
                    }
                    let cohorts: Vec<i64> = if o.recurring {
                        starts.into_iter().filter(|&s| in_range(s)).collect()
                    } else {
                        starts
                            .first()
                            .copied()
                            .filter(|&s| in_range(s))
                            .into_iter()
                            .collect()
                    };
                    for c in &cohorts {
                        starts_out.push(o.calendar.start(*c));
                        let mut row = vec![0u8; o.periods];
                        row[0] = 1;
                        for (k, r) in row.iter_mut().enumerate().skip(1) {
                            let count = returns
                                .binary_search_by_key(&(c + k as i64), |e| e.0)
                                .map_or(0, |i| returns[i].1);
                            *r = u8::from(count >= o.min_occurrences);
                        }
                        if o.cumulative {
                            for k in (1..o.periods.saturating_sub(1)).rev() {
                                row[k] |= row[k + 1];
                            }
                        }
                        retained.extend(row);
                    }
                    offsets.push(offsets.last().copied().unwrap_or(0) + cohorts.len() as i32);
                }
                let inner = ListArray::new(
                    Arc::new(Field::new_list_field(DataType::UInt8, true)),
                    OffsetBuffer::from_lengths(vec![o.periods; starts_out.len()]),
                    Arc::new(UInt8Array::from(retained)),
                    None,
                );
                let structs = StructArray::try_new(
                    retention_fields(),
                    vec![
                        Arc::new(TimestampMicrosecondArray::from(starts_out)),
                        Arc::new(inner),
                    ],
                    None,
                )?;
                list(structs, offsets)
            }
            Kind::Lifecycle => {
                let mut status = StringBuilder::new();
                for entries in groups.iter_mut() {
                    let mut active: Vec<i64> = entries.iter().map(|e| e.0).collect();
                    active.sort_unstable();
                    active.dedup();
                    let mut n = 0;
                    for (i, &p) in active.iter().enumerate() {
                        let s = lifecycle(&active, i);
                        if in_range(p) {
                            starts_out.push(o.calendar.start(p));
                            status.append_value(s);
                            n += 1;
                        }
                        let next = p + 1;
                        if active.get(i + 1) != Some(&next) && in_range(next) {
                            starts_out.push(o.calendar.start(next));
                            status.append_value("dormant");
                            n += 1;
                        }
                    }
                    offsets.push(offsets.last().copied().unwrap_or(0) + n);
                }
                let structs = StructArray::try_new(
                    lifecycle_fields(),
                    vec![
                        Arc::new(TimestampMicrosecondArray::from(starts_out)),
                        Arc::new(status.finish()),
                    ],
                    None,
                )?;
                list(structs, offsets)
            }
        }
    }
}

fn list(structs: StructArray, offsets: Vec<i32>) -> Result<ArrayRef> {
    Ok(Arc::new(ListArray::try_new(
        Arc::new(Field::new_list_field(structs.data_type().clone(), true)),
        OffsetBuffer::new(offsets.into()),
        Arc::new(structs),
        None,
    )?))
}

/// The status of the `i`-th of a person's sorted, distinct active periods.
fn lifecycle(active: &[i64], i: usize) -> &'static str {
    if i == 0 {
        "new"
    } else if active[i - 1] == active[i] - 1 {
        "returning"
    } else {
        "resurrecting"
    }
}

impl GroupsAccumulator for CohortGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let rows = self.rows(values)?;
        let mut entries = std::mem::take(&mut self.entries);
        for (row, (&g, e)) in group_indices.iter().zip(rows).enumerate() {
            if skipped(opt_filter, row) {
                continue;
            }
            if let Some(e) = e {
                self.push(&mut entries[g], e);
            }
        }
        self.entries = entries;
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.size_cache.invalidate();
        let mut groups = emit_to.take_needed(&mut self.entries);
        self.finish(&mut groups)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.size_cache.invalidate();
        let groups = emit_to.take_needed(&mut self.entries);
        Ok(state_lists(&groups))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let (period, kind) = (values[0].as_list::<i32>(), values[1].as_list::<i32>());
        for (row, &g) in group_indices.iter().enumerate() {
            if period.is_null(row) {
                continue;
            }
            let (p, k) = (period.value(row), kind.value(row));
            let (p, k) = (p.as_primitive::<Int64Type>(), k.as_primitive::<UInt8Type>());
            self.entries[g].extend(p.values().iter().copied().zip(k.values().iter().copied()));
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let rows: Vec<Vec<(i64, u8)>> = self
            .rows(values)?
            .into_iter()
            .enumerate()
            .map(|(row, e)| {
                let filtered = skipped(opt_filter, row);
                e.filter(|_| !filtered).into_iter().collect()
            })
            .collect();
        Ok(state_lists(&rows))
    }

    fn size(&self) -> usize {
        self.size_cache.get(|| {
            self.entries
                .iter()
                .map(|e| e.capacity() * 16)
                .sum::<usize>()
                + self.entries.capacity() * 24
        })
    }
}

fn state_lists(groups: &[Vec<(i64, u8)>]) -> Vec<ArrayRef> {
    let period = ListArray::from_iter_primitive::<Int64Type, _, _>(
        groups.iter().map(|g| Some(g.iter().map(|e| Some(e.0)))),
    );
    let kind = ListArray::from_iter_primitive::<UInt8Type, _, _>(
        groups.iter().map(|g| Some(g.iter().map(|e| Some(e.1)))),
    );
    vec![Arc::new(period), Arc::new(kind)]
}

/// `lifecycle_status(ts, period [, options]) OVER (PARTITION BY person …)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct LifecycleStatus {
    signature: Signature,
}

const STATUS: &str = "lifecycle_status";

impl WindowUDFImpl for LifecycleStatus {
    fn name(&self) -> &str {
        STATUS
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        if !(2..=3).contains(&types.len()) || !events::is_time_type(&types[0]) {
            return Err(invalid(STATUS, "takes (ts, period [, options text])"));
        }
        let mut out = types.to_vec();
        for t in out.iter_mut().skip(1) {
            if events::is_text(t) {
                *t = DataType::Utf8;
            }
        }
        Ok(out)
    }
    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(args.name(), DataType::Utf8, true)))
    }
    fn partition_evaluator(
        &self,
        args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        let exprs = args.input_exprs();
        let period = constant(STATUS, exprs, 1, "period")?;
        let text = match exprs.len() > 2 {
            true => Some(constant(STATUS, exprs, 2, "options")?),
            false => None,
        };
        Ok(Box::new(StatusEvaluator {
            options: options(STATUS, period, 0, text)?,
        }))
    }
}

#[derive(Debug)]
struct StatusEvaluator {
    options: Options,
}

impl PartitionEvaluator for StatusEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], _num_rows: usize) -> Result<ArrayRef> {
        let ts = events::times(STATUS, &values[0])?;
        let periods: Vec<Option<i64>> = ts
            .iter()
            .map(|t| t.map(|t| self.options.calendar.index(t)))
            .collect();
        let mut active: Vec<i64> = periods.iter().flatten().copied().collect();
        active.sort_unstable();
        active.dedup();
        let out: StringArray = periods
            .iter()
            .map(|p| {
                p.and_then(|p| active.binary_search(&p).ok())
                    .map(|i| lifecycle(&active, i))
            })
            .collect();
        Ok(Arc::new(out))
    }
}
