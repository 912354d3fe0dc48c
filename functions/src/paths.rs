//! Paths (functions.md §G): `path_sequence(item, ts [, session_gap] [, max_len]
//! [, collapse_repeats])`, one list of items per session, and `path_edges(item, ts
//! [, options])`, the Sankey edges of those paths (PostHog's paths semantics).
//!
//! A group's rows are ordered by time, then item (so ties never depend on row order); NULL
//! items and times are dropped; a new session starts when the gap to the previous row is at
//! least `session_gap` (default 30 minutes); consecutive repeats collapse into one (unless
//! `collapse_repeats` is false).

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Builder, Int64Array, IntervalMonthDayNanoBuilder,
    ListArray, ListBuilder, StringArray, StringBuilder, StringViewArray, StructArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Int64Type, IntervalMonthDayNano, IntervalUnit,
};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;
use crate::events;
use crate::group_log::{GroupLog, Grouped};
use crate::groups::{OneGroup, skipped};
use crate::intern::Interner;

/// Default session gap: 30 minutes.
const DEFAULT_GAP_US: i64 = 30 * 60 * 1_000_000;
/// PostHog's default number of steps.
const DEFAULT_STEP_LIMIT: usize = 5;
/// The target of a drop-off edge.
pub const DROP: &str = "$drop";

/// The functions of this module.
pub fn functions() -> Vec<AggregateUDF> {
    [Output::Sequence, Output::Edges]
        .into_iter()
        .map(|output| {
            AggregateUDF::from(Paths {
                output,
                signature: Signature::user_defined(Volatility::Immutable),
            })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Output {
    Sequence,
    Edges,
}

impl Output {
    fn name(self) -> &'static str {
        match self {
            Output::Sequence => "path_sequence",
            Output::Edges => "path_edges",
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Paths {
    output: Output,
    signature: Signature,
}

/// A call's options.
#[derive(Debug, Clone)]
struct Options {
    gap: i64,
    max_len: Option<usize>,
    collapse: bool,
    start: Option<String>,
    end: Option<String>,
    step_limit: usize,
}

impl Options {
    fn defaults(time_type: &DataType) -> Self {
        Options {
            gap: if time_type.is_integer() {
                1800
            } else {
                DEFAULT_GAP_US
            },
            max_len: None,
            collapse: true,
            start: None,
            end: None,
            step_limit: DEFAULT_STEP_LIMIT,
        }
    }

    fn from_args(output: Output, args: &AccumulatorArgs) -> Result<Self> {
        let name = output.name();
        let types: Vec<DataType> = args
            .expr_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let mut o = Options::defaults(&types[1]);
        for (i, t) in types.iter().enumerate().skip(2) {
            let v = events::literal(&args.exprs[i])
                .ok_or_else(|| invalid(name, format!("argument {} must be a constant", i + 1)))?;
            match (output, t) {
                (_, t) if events::is_text(t) => {
                    o.parse_text(name, &events::text_literal(name, "options", v)?, &types[1])?
                }
                (Output::Sequence, t) if events::is_interval(t) => {
                    o.gap = events::duration(name, "session_gap", v, &types[1])?;
                }
                (Output::Sequence, t) if t.is_integer() => {
                    o.max_len = Some(positive(name, "max_len", v)?)
                }
                (Output::Sequence, DataType::Boolean) => {
                    o.collapse = matches!(v, ScalarValue::Boolean(Some(true)));
                    if v.is_null() {
                        return Err(invalid(name, "collapse_repeats must not be NULL"));
                    }
                }
                (_, other) => {
                    return Err(invalid(
                        name,
                        format!("unexpected argument of type {other}"),
                    ));
                }
            }
        }
        Ok(o)
    }

    /// `key=value, …` options: session_gap (an interval such as `30 minutes`, or an
    /// integer in the time's unit), max_len, collapse_repeats, start_point, end_point,
    /// step_limit.
    fn parse_text(&mut self, name: &'static str, text: &str, time_type: &DataType) -> Result<()> {
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| invalid(name, format!("option '{part}' is not key=value")))?;
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "session_gap" => {
                    let value = match v.parse::<i64>() {
                        Ok(n) => ScalarValue::Int64(Some(n)),
                        Err(_) => interval_text(name, v)?,
                    };
                    self.gap = events::duration(name, "session_gap", &value, time_type)?;
                }
                "max_len" => {
                    self.max_len = Some(positive(name, "max_len", &text_int(name, &k, v)?)?)
                }
                "step_limit" => {
                    self.step_limit = positive(name, "step_limit", &text_int(name, &k, v)?)?
                }
                "collapse_repeats" => {
                    self.collapse = match v.to_ascii_lowercase().as_str() {
                        "true" | "on" | "1" => true,
                        "false" | "off" | "0" => false,
                        _ => {
                            return Err(invalid(
                                name,
                                format!("collapse_repeats: '{v}' is not a boolean"),
                            ));
                        }
                    }
                }
                "start_point" => self.start = Some(v.to_string()),
                "end_point" => self.end = Some(v.to_string()),
                other => {
                    return Err(invalid(
                        name,
                        format!(
                            "unknown option '{other}' (session_gap, max_len, collapse_repeats, \
                             start_point, end_point, step_limit)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn text_int(name: &'static str, key: &str, v: &str) -> Result<ScalarValue> {
    v.parse::<i64>()
        .map(|n| ScalarValue::Int64(Some(n)))
        .map_err(|_| invalid(name, format!("{key}: '{v}' is not an integer")))
}

fn positive(name: &'static str, what: &str, v: &ScalarValue) -> Result<usize> {
    match v.cast_to(&DataType::Int64) {
        Ok(ScalarValue::Int64(Some(n))) if n >= 1 => Ok(n as usize),
        _ => Err(invalid(
            name,
            format!("{what} must be a positive integer, not {v}"),
        )),
    }
}

/// `30 minutes`, `1 hour`, `2 days`, `90 seconds` as an interval.
fn interval_text(name: &'static str, v: &str) -> Result<ScalarValue> {
    let mut it = v.split_whitespace();
    let (Some(n), Some(unit), None) = (it.next(), it.next(), it.next()) else {
        return Err(invalid(
            name,
            format!("session_gap: '{v}' is not like '30 minutes'"),
        ));
    };
    let n: i64 = n
        .parse()
        .map_err(|_| invalid(name, format!("session_gap: '{v}' is not like '30 minutes'")))?;
    let secs = match unit.trim_end_matches('s').to_ascii_lowercase().as_str() {
        "second" | "sec" => 1,
        "minute" | "min" => 60,
        "hour" => 3600,
        "day" => 86400,
        _ => return Err(invalid(name, format!("session_gap: unknown unit '{unit}'"))),
    };
    Ok(ScalarValue::IntervalMonthDayNano(Some(
        IntervalMonthDayNano::new(0, 0, n * secs * 1_000_000_000),
    )))
}

fn edge_fields() -> Fields {
    Fields::from(vec![
        Field::new("step", DataType::Int32, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("dt", DataType::Interval(IntervalUnit::MonthDayNano), true),
    ])
}

impl AggregateUDFImpl for Paths {
    fn name(&self) -> &str {
        self.output.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.output.name();
        if types.len() < 2 || types.len() > 5 {
            return Err(invalid(
                name,
                match self.output {
                    Output::Sequence => {
                        "takes (item, ts [, session_gap interval] [, max_len integer] \
                         [, collapse_repeats boolean] [, options text])"
                    }
                    Output::Edges => "takes (item, ts [, options text])",
                },
            ));
        }
        if !events::is_time_type(&types[1]) {
            return Err(invalid(
                name,
                format!("ts must be a timestamp, date or integer, not {}", types[1]),
            ));
        }
        let mut out = types.to_vec();
        out[0] = DataType::Utf8;
        for t in out.iter_mut().skip(2) {
            if events::is_text(t) {
                *t = DataType::Utf8;
            }
        }
        Ok(out)
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(match self.output {
            Output::Sequence => DataType::List(Arc::new(Field::new_list_field(
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                true,
            ))),
            Output::Edges => DataType::List(Arc::new(Field::new_list_field(
                DataType::Struct(edge_fields()),
                true,
            ))),
        })
    }
    fn is_nullable(&self) -> bool {
        false
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            events::list_state(args.name, "ts", DataType::Int64),
            events::list_state(args.name, "item", DataType::Utf8),
        ])
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneGroup(PathGroups::new(
            self.output,
            Options::from_args(self.output, &args)?,
        ))))
    }
    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(PathGroups::new(
            self.output,
            Options::from_args(self.output, &args)?,
        )))
    }
}

/// Per group: (time, item) of rows with both.
#[derive(Debug)]
struct PathGroups {
    /// `size()` counted every few batches (see [`crate::state_size`]).
    size_cache: crate::state_size::SizeCache,
    output: Output,
    options: Options,
    rows: Vec<Vec<(i64, String)>>,
}

impl PathGroups {
    fn new(output: Output, options: Options) -> Self {
        PathGroups {
            size_cache: Default::default(),
            output,
            options,
            rows: vec![],
        }
    }

    fn grow(&mut self, n: usize) {
        if self.rows.len() < n {
            self.rows.resize_with(n, Vec::new);
        }
    }

    /// The sessions of one group: (time, item) runs after ordering, splitting, collapsing.
    fn sessions(&self, rows: &mut [(i64, String)]) -> Vec<Vec<(i64, String)>> {
        rows.sort_unstable();
        let mut out: Vec<Vec<(i64, String)>> = vec![];
        let mut prev: Option<i64> = None;
        for (t, item) in rows.iter() {
            if prev.is_none_or(|p| t - p >= self.options.gap) {
                out.push(vec![]);
            }
            prev = Some(*t);
            let s = out.last_mut().expect("a session");
            if self.options.collapse && s.last().is_some_and(|(_, last)| last == item) {
                continue;
            }
            s.push((*t, item.clone()));
        }
        if let Some(n) = self.options.max_len {
            out.iter_mut().for_each(|s| s.truncate(n));
        }
        out
    }

    /// The result column for some groups' rows.
    fn finish(&self, groups: &mut [Vec<(i64, String)>]) -> Result<ArrayRef> {
        match self.output {
            Output::Sequence => {
                let mut b = ListBuilder::new(ListBuilder::new(StringBuilder::new()));
                for rows in groups.iter_mut() {
                    for s in self.sessions(rows) {
                        for (_, item) in s {
                            b.values().values().append_value(item);
                        }
                        b.values().append(true);
                    }
                    b.append(true);
                }
                Ok(Arc::new(b.finish()))
            }
            Output::Edges => {
                let (mut step, mut source, mut target, mut dt) = (
                    Int32Builder::new(),
                    StringBuilder::new(),
                    StringBuilder::new(),
                    IntervalMonthDayNanoBuilder::new(),
                );
                let mut offsets = vec![0i32];
                for rows in groups.iter_mut() {
                    let mut n = 0;
                    for s in self.sessions(rows) {
                        let path = self.slice(s);
                        for (i, w) in path.windows(2).enumerate() {
                            step.append_value(i as i32 + 1);
                            source.append_value(&w[0].1);
                            target.append_value(&w[1].1);
                            dt.append_value(IntervalMonthDayNano::new(
                                0,
                                0,
                                (w[1].0 - w[0].0) * 1000,
                            ));
                            n += 1;
                        }
                        if let Some(last) = path.last() {
                            step.append_value(path.len() as i32);
                            source.append_value(&last.1);
                            target.append_value(DROP);
                            dt.append_null();
                            n += 1;
                        }
                    }
                    offsets.push(offsets.last().copied().unwrap_or(0) + n);
                }
                let structs = StructArray::try_new(
                    edge_fields(),
                    vec![
                        Arc::new(step.finish()),
                        Arc::new(source.finish()),
                        Arc::new(target.finish()),
                        Arc::new(dt.finish()),
                    ],
                    None,
                )?;
                Ok(Arc::new(ListArray::try_new(
                    Arc::new(Field::new_list_field(DataType::Struct(edge_fields()), true)),
                    OffsetBuffer::new(offsets.into()),
                    Arc::new(structs),
                    None,
                )?))
            }
        }
    }

    /// PostHog: from the first `start_point`, up to and including the first `end_point`,
    /// at most `step_limit` items.
    fn slice(&self, s: Vec<(i64, String)>) -> Vec<(i64, String)> {
        let from = match &self.options.start {
            Some(p) => match s.iter().position(|(_, i)| i == p) {
                Some(k) => k,
                None => return vec![],
            },
            None => 0,
        };
        let mut path: Vec<(i64, String)> = s.into_iter().skip(from).collect();
        if let Some(e) = &self.options.end
            && let Some(k) = path.iter().position(|(_, i)| i == e)
        {
            path.truncate(k + 1);
        }
        path.truncate(self.options.step_limit);
        path
    }

    fn add(&mut self, values: &[ArrayRef], group: impl Fn(usize) -> Option<usize>) -> Result<()> {
        let name = self.output.name();
        let items = cast(&values[0], &DataType::Utf8)?;
        let items = items.as_string::<i32>();
        let ts = events::times(name, &values[1])?;
        for (row, t) in ts.into_iter().enumerate() {
            let (Some(t), Some(g)) = (t, group(row)) else {
                continue;
            };
            if items.is_valid(row) {
                self.rows[g].push((t, items.value(row).to_string()));
            }
        }
        Ok(())
    }

    fn state_of(groups: &[Vec<(i64, String)>]) -> Vec<ArrayRef> {
        let ts = ListArray::from_iter_primitive::<Int64Type, _, _>(
            groups.iter().map(|g| Some(g.iter().map(|r| Some(r.0)))),
        );
        let mut items = ListBuilder::new(StringBuilder::new());
        for g in groups {
            for r in g {
                items.values().append_value(&r.1);
            }
            items.append(true);
        }
        vec![Arc::new(ts), Arc::new(items.finish())]
    }

    fn merge_row(&mut self, states: &[ArrayRef], row: usize, g: usize) {
        let (ts, items) = (states[0].as_list::<i32>(), states[1].as_list::<i32>());
        if ts.is_null(row) {
            return;
        }
        let (t, i) = (ts.value(row), items.value(row));
        let (t, i) = (t.as_primitive::<Int64Type>(), i.as_string::<i32>());
        for k in 0..t.len() {
            self.rows[g].push((t.value(k), i.value(k).to_string()));
        }
    }
}

impl GroupsAccumulator for PathGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        self.add(values, |row| {
            let filtered = skipped(opt_filter, row);
            (!filtered).then(|| group_indices[row])
        })
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.size_cache.invalidate();
        let mut groups = emit_to.take_needed(&mut self.rows);
        self.finish(&mut groups)
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.size_cache.invalidate();
        let groups = emit_to.take_needed(&mut self.rows);
        Ok(Self::state_of(&groups))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        for (row, &g) in group_indices.iter().enumerate() {
            self.merge_row(values, row, g);
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let mut one = PathGroups::new(self.output, self.options.clone());
        let n = values[0].len();
        one.grow(n);
        one.add(values, |row| {
            let filtered = skipped(opt_filter, row);
            (!filtered).then_some(row)
        })?;
        Ok(Self::state_of(&one.rows))
    }

    fn size(&self) -> usize {
        self.size_cache.get(|| {
            self.rows
                .iter()
                .map(|g| g.capacity() * 32 + g.iter().map(|r| r.1.capacity()).sum::<usize>())
                .sum::<usize>()
        })
    }
}

/// `paths_to(item, ts, target, n [, tiebreak])` / `paths_from(…)`: the items of the `n`
/// rows before (or after) the first row where `target` holds, in order; NULL when no row
/// meets `target`. Rows are ordered by time, then `tiebreak` (e.g. `touchpoint_id`), then
/// item; rows with a NULL item are skipped.
pub fn around_functions() -> Vec<AggregateUDF> {
    [true, false]
        .into_iter()
        .map(|before| {
            AggregateUDF::from(Around {
                before,
                signature: Signature::user_defined(Volatility::Immutable),
            })
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Around {
    before: bool,
    signature: Signature,
}

impl Around {
    fn name(&self) -> &'static str {
        if self.before {
            "paths_to"
        } else {
            "paths_from"
        }
    }
}

/// No item (a NULL item, skipped in the answer).
const NO_ITEM: u32 = u32::MAX;
/// No tiebreak array (the empty text).
const NO_TIE: u32 = u32::MAX;

/// One row of some group, kept in a [`GroupLog`].
#[derive(Debug, Clone, Copy, Default)]
struct AroundRow {
    t: i64,
    /// The tiebreak: (an array in [`AroundGroups::ties`], a row of it).
    tie: (u32, u32),
    /// The item interned, or [`NO_ITEM`].
    item: u32,
    target: bool,
}

/// A tiebreak column's values as text that sorts like the values, kept as the arrays
/// arrived (no copy per row): text as it is, integers offset and zero-padded.
#[derive(Debug)]
enum TieArray {
    Text(StringArray),
    View(StringViewArray),
}

impl TieArray {
    /// A batch's tiebreak column.
    fn of(a: &ArrayRef) -> Result<Self> {
        Ok(match a.data_type() {
            DataType::Utf8View => TieArray::View(a.as_string_view().clone()),
            DataType::Utf8 => TieArray::Text(a.as_string::<i32>().clone()),
            t if t.is_integer() => {
                let i = cast(a, &DataType::Int64)?;
                let mut b = StringBuilder::with_capacity(a.len(), a.len() * 20);
                for v in i.as_primitive::<Int64Type>() {
                    b.append_option(v.map(|v| format!("{:020}", i128::from(v) + (1i128 << 63))));
                }
                TieArray::Text(b.finish())
            }
            _ => TieArray::Text(cast(a, &DataType::Utf8)?.as_string::<i32>().clone()),
        })
    }

    /// Row `i`'s text; NULL is empty.
    fn value(&self, i: usize) -> &str {
        match self {
            TieArray::Text(a) if a.is_valid(i) => a.value(i),
            TieArray::View(a) if a.is_valid(i) => a.value(i),
            _ => "",
        }
    }

    fn size(&self) -> usize {
        match self {
            TieArray::Text(a) => a.get_array_memory_size(),
            TieArray::View(a) => a.get_array_memory_size(),
        }
    }
}

impl AggregateUDFImpl for Around {
    fn name(&self) -> &str {
        Around::name(self)
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let name = Around::name(self);
        let usage = "takes (item, ts, target boolean, n integer [, tiebreak])";
        if !(4..=5).contains(&types.len())
            || !events::is_time_type(&types[1])
            || !matches!(types[2], DataType::Boolean | DataType::Null)
            || !types[3].is_integer()
        {
            return Err(invalid(name, usage));
        }
        let mut out = types.to_vec();
        out[0] = DataType::Utf8;
        out[2] = DataType::Boolean;
        Ok(out)
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Utf8,
            true,
        ))))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            events::list_state(args.name, "ts", DataType::Int64),
            events::list_state(args.name, "tiebreak", DataType::Utf8),
            events::list_state(args.name, "target", DataType::Boolean),
            events::list_state(args.name, "item", DataType::Utf8),
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

impl Around {
    fn groups(&self, args: &AccumulatorArgs) -> Result<AroundGroups> {
        let name = Around::name(self);
        let n =
            events::literal(&args.exprs[3]).ok_or_else(|| invalid(name, "n must be a constant"))?;
        Ok(AroundGroups::new(
            name,
            self.before,
            positive(name, "n", n)?,
        ))
    }
}

#[derive(Debug)]
struct AroundGroups {
    /// `size()` counted every few batches (see [`crate::state_size`]).
    size_cache: crate::state_size::SizeCache,
    name: &'static str,
    before: bool,
    n: usize,
    /// Every group's rows, in arrival order; grouped and sorted when emitted.
    rows: GroupLog<AroundRow>,
    /// The tiebreak arrays the rows point into.
    ties: Vec<TieArray>,
    /// Items interned: most journeys repeat a few channels.
    names: Interner,
}

impl AroundGroups {
    fn new(name: &'static str, before: bool, n: usize) -> Self {
        AroundGroups {
            size_cache: Default::default(),
            name,
            before,
            n,
            rows: GroupLog::default(),
            ties: vec![],
            names: Interner::default(),
        }
    }

    /// Keep a tiebreak array; returns its number.
    fn keep_ties(&mut self, t: TieArray) -> u32 {
        self.ties.push(t);
        (self.ties.len() - 1) as u32
    }

    fn add(&mut self, values: &[ArrayRef], group: impl Fn(usize) -> Option<usize>) -> Result<()> {
        let items = cast(&values[0], &DataType::Utf8)?;
        let items = items.as_string::<i32>();
        let ts = events::times(self.name, &values[1])?;
        let target = events::conditions(self.name, &values[2..3])?.remove(0);
        let tie = match values.get(4) {
            Some(a) => self.keep_ties(TieArray::of(a)?),
            None => NO_TIE,
        };
        self.rows.reserve(ts.len());
        for (row, t) in ts.into_iter().enumerate() {
            let (Some(t), Some(g)) = (t, group(row)) else {
                continue;
            };
            let item = if items.is_valid(row) {
                self.names.id(items.value(row))
            } else {
                NO_ITEM
            };
            self.rows.push(
                g,
                AroundRow {
                    t,
                    tie: (tie, row as u32),
                    item,
                    target: target[row] == Some(true),
                },
            );
        }
        Ok(())
    }

    fn item(&self, i: u32) -> Option<&str> {
        (i != NO_ITEM).then(|| self.names.name(i))
    }

    fn tie(&self, r: &AroundRow) -> &str {
        match self.ties.get(r.tie.0 as usize) {
            Some(a) => a.value(r.tie.1 as usize),
            None => "",
        }
    }

    /// One group's answer (its rows are sorted here by time, tiebreak, item).
    fn around(&self, rows: &mut [AroundRow]) -> Option<(usize, usize)> {
        rows.sort_unstable_by(|a, b| {
            a.t.cmp(&b.t)
                .then_with(|| self.tie(a).cmp(self.tie(b)))
                .then_with(|| self.item(a.item).cmp(&self.item(b.item)))
        });
        let at = rows.iter().position(|r| r.target)?;
        Some(if self.before {
            (0, at)
        } else {
            (at + 1, rows.len())
        })
    }

    fn finish(&self, mut rows: Grouped<AroundRow>) -> ArrayRef {
        let mut b = ListBuilder::new(StringBuilder::new());
        for g in 0..rows.len() {
            let group = rows.group_mut(g);
            match self.around(group) {
                Some((from, to)) => {
                    let items = group[from..to].iter().filter_map(|r| self.item(r.item));
                    // Before: the last n items; after: the first n.
                    let skip = match self.before {
                        true => items.clone().count().saturating_sub(self.n),
                        false => 0,
                    };
                    for i in items.skip(skip).take(self.n) {
                        b.values().append_value(i);
                    }
                    b.append(true);
                }
                None => b.append(false),
            }
        }
        Arc::new(b.finish())
    }

    fn state_of(&self, grouped: &Grouped<AroundRow>) -> Vec<ArrayRef> {
        let rows = &grouped.rows;
        let list = |t: DataType, values: ArrayRef| -> ArrayRef {
            Arc::new(ListArray::new(
                Arc::new(Field::new_list_field(t, true)),
                OffsetBuffer::from_lengths(grouped.lengths()),
                values,
                None,
            ))
        };
        let mut tie = StringBuilder::with_capacity(rows.len(), rows.len() * 16);
        let mut item = StringBuilder::with_capacity(rows.len(), rows.len() * 8);
        for r in rows {
            tie.append_value(self.tie(r));
            item.append_option(self.item(r.item));
        }
        vec![
            list(
                DataType::Int64,
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.t))),
            ),
            list(DataType::Utf8, Arc::new(tie.finish())),
            list(
                DataType::Boolean,
                Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.target)))),
            ),
            list(DataType::Utf8, Arc::new(item.finish())),
        ]
    }

    fn merge(&mut self, states: &[ArrayRef], group: impl Fn(usize) -> usize) -> Result<()> {
        let l = |k: usize| states[k].as_list::<i32>();
        // Straight from the lists' flat values (the four lists share their lengths).
        let (t, target, item) = (
            l(0).values().as_primitive::<Int64Type>(),
            l(2).values().as_boolean(),
            l(3).values().as_string::<i32>(),
        );
        let ties = self.keep_ties(TieArray::of(l(1).values())?);
        for row in 0..states[0].len() {
            if l(0).is_null(row) {
                continue;
            }
            let at = |k: usize| l(k).value_offsets()[row] as usize;
            let (t0, tie0, target0, item0) = (at(0), at(1), at(2), at(3));
            for k in 0..l(0).value_length(row) as usize {
                let it = if item.is_valid(item0 + k) {
                    self.names.id(item.value(item0 + k))
                } else {
                    NO_ITEM
                };
                self.rows.push(
                    group(row),
                    AroundRow {
                        t: t.value(t0 + k),
                        tie: (ties, (tie0 + k) as u32),
                        item: it,
                        target: target.value(target0 + k),
                    },
                );
            }
        }
        Ok(())
    }

    /// Drop the tiebreak arrays once no row points into them.
    fn release(&mut self) {
        if self.rows.is_empty() {
            self.ties.clear();
        }
    }
}

impl GroupsAccumulator for AroundGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.rows.resize(total_num_groups);
        self.add(values, |row| {
            let filtered = skipped(opt_filter, row);
            (!filtered).then(|| group_indices[row])
        })
    }
    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.size_cache.invalidate();
        let rows = self.rows.take(emit_to);
        let out = self.finish(rows);
        self.release();
        Ok(out)
    }
    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.size_cache.invalidate();
        let rows = self.rows.take(emit_to);
        let out = self.state_of(&rows);
        self.release();
        Ok(out)
    }
    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.rows.resize(total_num_groups);
        self.merge(values, |row| group_indices[row])
    }
    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let mut one = AroundGroups::new(self.name, self.before, self.n);
        one.rows.resize(values[0].len());
        one.add(values, |row| {
            let filtered = skipped(opt_filter, row);
            (!filtered).then_some(row)
        })?;
        let rows = one.rows.take(EmitTo::All);
        Ok(one.state_of(&rows))
    }
    fn size(&self) -> usize {
        self.size_cache.get(|| {
            self.rows.size()
                + self.ties.iter().map(TieArray::size).sum::<usize>()
                + self.names.size()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(output: Output, text: &str) -> PathGroups {
        let mut o = Options::defaults(&DataType::Int64);
        o.parse_text("path_edges", text, &DataType::Int64).unwrap();
        PathGroups::new(output, o)
    }

    #[test]
    fn sessions_collapse_and_slice() {
        let g = groups(
            Output::Edges,
            "session_gap=100, start_point=b, end_point=d, step_limit=3",
        );
        let mut rows: Vec<(i64, String)> = [
            (1, "a"),
            (2, "b"),
            (3, "b"),
            (4, "c"),
            (5, "d"),
            (6, "e"),
            (500, "b"),
        ]
        .iter()
        .map(|(t, s)| (*t, s.to_string()))
        .collect();
        let s = g.sessions(&mut rows);
        assert_eq!(s.len(), 2);
        let items: Vec<&str> = s[0].iter().map(|r| r.1.as_str()).collect();
        assert_eq!(items, ["a", "b", "c", "d", "e"]);
        let path: Vec<String> = g.slice(s[0].clone()).into_iter().map(|r| r.1).collect();
        assert_eq!(path, ["b", "c", "d"]);
        assert!(
            Options::defaults(&DataType::Int64)
                .parse_text("x", "bogus=1", &DataType::Int64)
                .is_err()
        );
    }
}
