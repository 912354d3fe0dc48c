//! Sequences (functions.md §E): `sequence_match(pattern, ts, cond1, …, condN [, options])`
//! and `sequence_count(…)` with ClickHouse's pattern syntax: `(?N)` an event meeting
//! condition N, `.` any one event, `.*` any events, `(?t op secs)` a time condition with op
//! in `<= < >= > ==`. Rows meeting no condition are not events. The pattern may match
//! anywhere; `sequence_count` counts matches that do not overlap.
//!
//! Differences from ClickHouse, undone by the option `compat=clickhouse`: events at the same
//! time are ordered by the conditions they meet (ClickHouse leaves their order to its sort);
//! a time condition after `.*` is measured from the last event matched before it
//! (ClickHouse measures from the first event `.*` skipped); `sequence_match` of a group
//! without events is NULL (ClickHouse: 0). A NULL condition counts as false.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, Int64Array, ListArray, ListBuilder,
    StringArray, StringBuilder, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type, TimeUnit, UInt32Type};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;
use crate::events;
use crate::groups::{Event, EventGroups, Keep, OneGroup, skipped};
use crate::intern::Interner;

/// ClickHouse's bound on pattern steps before giving up.
const MAX_ITERATIONS: usize = 1_000_000;

/// The functions of this module.
pub fn functions() -> Vec<AggregateUDF> {
    [Output::Match, Output::Count, Output::Events]
        .into_iter()
        .map(|output| {
            AggregateUDF::from(Sequence {
                output,
                signature: Signature::user_defined(Volatility::Immutable),
            })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Output {
    Match,
    Count,
    Events,
}

impl Output {
    fn name(self) -> &'static str {
        match self {
            Output::Match => "sequence_match",
            Output::Count => "sequence_count",
            Output::Events => "sequence_match_events",
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Sequence {
    output: Output,
    signature: Signature,
}

/// One step of a compiled pattern.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    Event(usize),
    Any,
    Star,
    Time(TimeOp, i64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum TimeOp {
    Le,
    Lt,
    Ge,
    Gt,
    Eq,
}

/// A compiled pattern.
#[derive(Debug, Clone)]
struct Pattern {
    actions: Vec<Action>,
    has_time: bool,
    /// Conditions the pattern names (a group meeting none of them cannot match).
    needed: u32,
}

/// Parse `pattern` for `conditions` conditions; time values are seconds, scaled by
/// `unit_us` microseconds (or used as they are for integer times: `per_second` = 1).
fn parse(name: &'static str, pattern: &str, conditions: usize, per_second: i64) -> Result<Pattern> {
    let mut actions = vec![Action::Star];
    let mut has_time = false;
    let mut needed = 0u32;
    let b = pattern.as_bytes();
    let mut i = 0;
    let err =
        |at: usize, m: &str| invalid(name, format!("pattern '{pattern}': {m} at position {at}"));
    let number = |i: &mut usize| -> Option<i64> {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        pattern.get(start..*i)?.parse().ok()
    };
    while i < b.len() {
        if b[i..].starts_with(b"(?") {
            i += 2;
            if b.get(i) == Some(&b't') {
                i += 1;
                let ops: [(&[u8], TimeOp); 5] = [
                    (b"<=", TimeOp::Le),
                    (b"<", TimeOp::Lt),
                    (b">=", TimeOp::Ge),
                    (b">", TimeOp::Gt),
                    (b"==", TimeOp::Eq),
                ];
                let Some((len, op)) = ops
                    .iter()
                    .find(|(s, _)| b[i..].starts_with(s))
                    .map(|(s, op)| (s.len(), *op))
                else {
                    return Err(err(i, "unknown time condition"));
                };
                i += len;
                let secs = number(&mut i).ok_or_else(|| err(i, "expected a number"))?;
                if !matches!(
                    actions.last(),
                    Some(Action::Event(_) | Action::Any | Action::Star)
                ) {
                    return Err(err(i, "a time condition must follow an event"));
                }
                has_time = true;
                actions.push(Action::Time(op, secs.saturating_mul(per_second)));
            } else {
                let n = number(&mut i).ok_or_else(|| err(i, "expected a condition number"))?;
                if n < 1 || n as usize > conditions {
                    return Err(err(
                        i,
                        &format!("condition {n} does not exist (1 to {conditions})"),
                    ));
                }
                actions.push(Action::Event(n as usize - 1));
                needed |= 1 << (n - 1);
            }
            if b.get(i) != Some(&b')') {
                return Err(err(i, "expected ')'"));
            }
            i += 1;
        } else if b[i..].starts_with(b".*") {
            actions.push(Action::Star);
            i += 2;
        } else if b[i] == b'.' {
            actions.push(Action::Any);
            i += 1;
        } else {
            return Err(err(i, "unexpected character"));
        }
    }
    Ok(Pattern {
        actions,
        has_time,
        needed,
    })
}

/// Whether `pattern` (valid for `conditions` conditions) names a condition: then a group
/// without events cannot match it.
pub(crate) fn names_a_condition(pattern: &str, conditions: usize) -> bool {
    parse("sequence_match", pattern, conditions, 1).is_ok_and(|p| p.needed != 0)
}

/// The argument layout: (conditions, has options).
fn shape(name: &'static str, types: &[DataType]) -> Result<(usize, bool)> {
    events::condition_layout(name, "(pattern, ts, cond1 [, …, condN] [, options])", types)
}

impl AggregateUDFImpl for Sequence {
    fn name(&self) -> &str {
        self.output.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.output.name();
        let (n, has_options) = shape(name, types)?;
        if !events::is_text(&types[0]) {
            return Err(invalid(name, "the pattern must be text"));
        }
        if !events::is_time_type(&types[1]) {
            return Err(invalid(
                name,
                format!("ts must be a timestamp, date or integer, not {}", types[1]),
            ));
        }
        let mut out = types.to_vec();
        out[0] = DataType::Utf8;
        events::coerce_conditions(name, &mut out, 2..2 + n)?;
        if has_options {
            let last = out.len() - 1;
            out[last] = DataType::Utf8;
        }
        Ok(out)
    }
    fn return_type(&self, types: &[DataType]) -> Result<DataType> {
        Ok(match self.output {
            Output::Match => DataType::Boolean,
            Output::Count => DataType::UInt64,
            Output::Events => DataType::List(Arc::new(Field::new_list_field(
                event_time_type(types.get(1)),
                true,
            ))),
        })
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            events::list_state(args.name, "ts", DataType::Int64),
            events::list_state(args.name, "mask", DataType::UInt32),
            events::list_state(args.name, "uid", DataType::UInt64),
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

impl Sequence {
    fn groups(&self, args: &AccumulatorArgs) -> Result<EventGroups> {
        let c = Config::from_args(self.output, args)?;
        Ok(EventGroups::new(
            c.name,
            c.keep(),
            move |events: &mut [Event]| c.evaluate(events),
        ))
    }
}

/// A call's constant arguments.
#[derive(Debug, Clone)]
struct Config {
    name: &'static str,
    output: Output,
    conditions: usize,
    pattern: Pattern,
    clickhouse: bool,
    /// Integer times (else timestamps/dates, reported as UTC timestamps).
    integer_time: bool,
}

impl Config {
    fn from_args(output: Output, args: &AccumulatorArgs) -> Result<Self> {
        let name = output.name();
        let types: Vec<DataType> = args
            .expr_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let (n, has_options) = shape(name, &types)?;
        let pattern = events::literal(&args.exprs[0])
            .ok_or_else(|| invalid(name, "the pattern must be a constant"))?;
        let pattern = events::text_literal(name, "the pattern", pattern)?;
        let per_second = if types[1].is_integer() { 1 } else { 1_000_000 };
        let pattern = parse(name, &pattern, n, per_second)?;
        let mut clickhouse = false;
        if has_options {
            let v = events::literal(&args.exprs[types.len() - 1])
                .ok_or_else(|| invalid(name, "options must be a constant"))?;
            for t in events::mode_tokens(name, v)? {
                match t.as_str() {
                    "compat=clickhouse" | "clickhouse" => clickhouse = true,
                    other => {
                        return Err(invalid(
                            name,
                            format!("unknown option '{other}' (compat=clickhouse)"),
                        ));
                    }
                }
            }
        }
        Ok(Config {
            name,
            output,
            conditions: n,
            pattern,
            clickhouse,
            integer_time: types[1].is_integer(),
        })
    }

    /// Rows meeting no condition are not events.
    fn keep(&self) -> Keep {
        Keep {
            conditions: self.conditions,
            drop_null_rows: false,
            keep_unmatched: false,
        }
    }

    /// The result over one group's events (sorted here by time, then conditions).
    fn evaluate(&self, buffer: &mut [Event]) -> Result<ScalarValue> {
        let mut events: Vec<(i64, u32)> = buffer.iter().map(|e| (e.0, e.1)).collect();
        let empty = events.is_empty();
        let met = events.iter().fold(0, |a, e| a | e.1);
        let possible = met & self.pattern.needed == self.pattern.needed;
        events.sort_unstable();
        let m = Matcher {
            name: self.name,
            pattern: &self.pattern,
            events: &events,
            clickhouse: self.clickhouse,
        };
        Ok(match self.output {
            Output::Match => {
                if empty && !self.clickhouse {
                    ScalarValue::Boolean(None)
                } else if !possible {
                    ScalarValue::Boolean(Some(false))
                } else if !self.pattern.has_time {
                    ScalarValue::Boolean(Some(m.dfa_matches()))
                } else {
                    let mut at = 0;
                    ScalarValue::Boolean(Some(m.matches(&mut at)?))
                }
            }
            Output::Count => {
                let mut n = 0u64;
                if possible {
                    let mut at = 0;
                    while at < events.len() && m.matches(&mut at)? {
                        n += 1;
                    }
                }
                ScalarValue::UInt64(Some(n))
            }
            Output::Events => {
                let mut consumed = vec![];
                let mut at = 0;
                let matched = possible && m.matches_recording(&mut at, &mut consumed)?;
                let times: Vec<i64> = if matched {
                    consumed.iter().map(|&k| events[k].0).collect()
                } else {
                    vec![]
                };
                let values: ArrayRef = if self.integer_time {
                    Arc::new(Int64Array::from(times))
                } else {
                    Arc::new(TimestampMicrosecondArray::from(times).with_timezone("UTC"))
                };
                events::one_list(values)
            }
        })
    }
}

struct Matcher<'a> {
    name: &'static str,
    pattern: &'a Pattern,
    events: &'a [(i64, u32)],
    clickhouse: bool,
}

impl Matcher<'_> {
    /// Without time conditions, a match is decided in one pass over the events by a set of
    /// live pattern positions (ClickHouse's DFA; linear, where backtracking over `.*`
    /// can take exponential time). Same answer as [`Self::matches`].
    fn dfa_matches(&self) -> bool {
        // States between the pattern's event steps: (loops on any event, step out).
        let mut states: Vec<(bool, Option<Action>)> = vec![(false, None)];
        for a in &self.pattern.actions {
            match a {
                Action::Star => states.last_mut().expect("one state").0 = true,
                Action::Event(_) | Action::Any => {
                    states.last_mut().expect("one state").1 = Some(*a);
                    states.push((false, None));
                }
                Action::Time(..) => {}
            }
        }
        let last = states.len() - 1;
        let mut live = vec![false; states.len()];
        let mut next = vec![false; states.len()];
        live[0] = true;
        for &(_, mask) in self.events {
            if live[last] {
                break;
            }
            next.iter_mut().for_each(|x| *x = false);
            let mut any = false;
            for (i, (star, step)) in states.iter().enumerate() {
                if !live[i] {
                    continue;
                }
                let advance = match step {
                    Some(Action::Any) => true,
                    Some(Action::Event(c)) => mask & (1 << c) != 0,
                    _ => false,
                };
                if advance {
                    next[i + 1] = true;
                    any = true;
                }
                if *star {
                    next[i] = true;
                    any = true;
                }
            }
            std::mem::swap(&mut live, &mut next);
            if !any {
                break;
            }
        }
        live[last]
    }

    /// ClickHouse's backtracking match from event `*at`; on return `*at` is past the match
    /// (or one past where it started, so repeated calls always advance).
    fn matches(&self, at: &mut usize) -> Result<bool> {
        self.matches_recording(at, &mut vec![])
    }

    /// [`Self::matches`], also recording in `consumed` the events that matched the
    /// pattern's `(?N)` steps (for `sequence_match_events`).
    fn matches_recording(&self, at: &mut usize, consumed: &mut Vec<usize>) -> Result<bool> {
        consumed.clear();
        let actions = &self.pattern.actions;
        let ev = self.events;
        let begin = *at;
        let mut a = 0usize;
        let mut e = *at;
        let mut base = *at;
        let mut stack: Vec<(usize, usize, usize, usize)> = vec![];
        let backtrack = |a: &mut usize,
                         e: &mut usize,
                         base: &mut usize,
                         stack: &mut Vec<(usize, usize, usize, usize)>,
                         consumed: &mut Vec<usize>| {
            while let Some((sa, se, sb, sc)) = stack.pop() {
                *a = sa;
                *e = se + 1;
                *base = sb;
                consumed.truncate(sc);
                if *e < ev.len() {
                    return true;
                }
            }
            false
        };
        let mut steps = 0usize;
        while a < actions.len() && e < ev.len() {
            match actions[a] {
                Action::Event(c) => {
                    if ev[e].1 & (1 << c) != 0 {
                        consumed.push(e);
                        base = e;
                        a += 1;
                        e += 1;
                    } else if !backtrack(&mut a, &mut e, &mut base, &mut stack, consumed) {
                        break;
                    }
                }
                Action::Any => {
                    base = e;
                    a += 1;
                    e += 1;
                }
                Action::Star => {
                    stack.push((a, e, base, consumed.len()));
                    if self.clickhouse {
                        base = e;
                    }
                    a += 1;
                }
                Action::Time(op, d) => {
                    // The anchor: ClickHouse's `base`; by default the last matched event
                    // (the one before `e`), which `.*` does not move.
                    let anchor = ev[base].0;
                    let t = ev[e].0;
                    let ok = match op {
                        TimeOp::Le => t <= anchor.saturating_add(d),
                        TimeOp::Lt => t < anchor.saturating_add(d),
                        TimeOp::Ge => t >= anchor.saturating_add(d),
                        TimeOp::Gt => t > anchor.saturating_add(d),
                        TimeOp::Eq => t == anchor.saturating_add(d),
                    };
                    if ok {
                        stack.push((a, e, base, consumed.len()));
                        if self.clickhouse {
                            base = e;
                        }
                        a += 1;
                    } else if matches!(op, TimeOp::Le | TimeOp::Lt) {
                        if !backtrack(&mut a, &mut e, &mut base, &mut stack, consumed) {
                            break;
                        }
                    } else {
                        e += 1;
                        if e == ev.len()
                            && !backtrack(&mut a, &mut e, &mut base, &mut stack, consumed)
                        {
                            break;
                        }
                    }
                }
            }
            steps += 1;
            if steps > MAX_ITERATIONS {
                return Err(invalid(
                    self.name,
                    format!("the pattern needs more than {MAX_ITERATIONS} steps on this group"),
                ));
            }
        }
        // Actions that match nothing at the end.
        while a < actions.len()
            && matches!(
                actions[a],
                Action::Star
                    | Action::Time(TimeOp::Le | TimeOp::Lt, _)
                    | Action::Time(TimeOp::Ge, 0)
            )
        {
            a += 1;
        }
        *at = if e == begin { e + 1 } else { e };
        Ok(a == actions.len())
    }
}

/// The element type of `sequence_match_events`: integers for integer times, else UTC
/// timestamps (µs).
fn event_time_type(t: Option<&DataType>) -> DataType {
    match t {
        Some(t) if t.is_integer() => DataType::Int64,
        _ => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

/// `sequence_next_node(direction, base, ts, value, base_cond, event1 [, …])`: ClickHouse's
/// `sequenceNextNode`. Rows are ordered by time, then value; the base row is the first
/// row (`head`), the last (`tail`), or the first / last row meeting `event1`
/// (`first_match` / `last_match`), and must meet `base_cond`; from it the rows must meet
/// `event1`, `event2`, … one after another (`forward`) or one before another
/// (`backward`), and the value of the row after (before) that chain is the result, or NULL.
pub fn next_node() -> AggregateUDF {
    AggregateUDF::from(NextNode {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

const NEXT_NODE: &str = "sequence_next_node";

#[derive(Debug, PartialEq, Eq, Hash)]
struct NextNode {
    signature: Signature,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Base {
    Head,
    Tail,
    FirstMatch,
    LastMatch,
}

impl AggregateUDFImpl for NextNode {
    fn name(&self) -> &str {
        NEXT_NODE
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let usage = "takes (direction, base, ts, value, base_cond, event1 [, …, event32])";
        if types.len() < 6 || types.len() > 5 + events::MAX_CONDITIONS {
            return Err(invalid(NEXT_NODE, usage));
        }
        if !events::is_text(&types[0])
            || !events::is_text(&types[1])
            || !events::is_time_type(&types[2])
        {
            return Err(invalid(NEXT_NODE, usage));
        }
        let mut out = types.to_vec();
        out[0] = DataType::Utf8;
        out[1] = DataType::Utf8;
        out[3] = DataType::Utf8;
        let n = out.len();
        events::coerce_conditions(NEXT_NODE, &mut out, 4..n)?;
        Ok(out)
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            events::list_state(args.name, "ts", DataType::Int64),
            events::list_state(args.name, "value", DataType::Utf8),
            events::list_state(args.name, "mask", DataType::UInt32),
            events::list_state(args.name, "base", DataType::Boolean),
        ])
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneGroup(NextNodeGroups::new(next_node_config(
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
        Ok(Box::new(NextNodeGroups::new(next_node_config(&args)?)))
    }
}

/// `sequence_next_node`'s constant arguments.
#[derive(Debug, Clone, Copy)]
struct NextNodeConfig {
    forward: bool,
    base: Base,
    events: usize,
}

fn next_node_config(args: &AccumulatorArgs) -> Result<NextNodeConfig> {
    let text = |i: usize, what: &str| -> Result<String> {
        let v = events::literal(&args.exprs[i])
            .ok_or_else(|| invalid(NEXT_NODE, format!("{what} must be a constant")))?;
        Ok(events::text_literal(NEXT_NODE, what, v)?
            .trim()
            .to_ascii_lowercase())
    };
    let forward = match text(0, "direction")?.as_str() {
        "forward" => true,
        "backward" => false,
        other => {
            return Err(invalid(
                NEXT_NODE,
                format!("unknown direction '{other}' (forward, backward)"),
            ));
        }
    };
    let base = match text(1, "base")?.as_str() {
        "head" => Base::Head,
        "tail" => Base::Tail,
        "first_match" => Base::FirstMatch,
        "last_match" => Base::LastMatch,
        other => {
            return Err(invalid(
                NEXT_NODE,
                format!("unknown base '{other}' (head, tail, first_match, last_match)"),
            ));
        }
    };
    if (base == Base::Head && !forward) || (base == Base::Tail && forward) {
        return Err(invalid(
            NEXT_NODE,
            "head goes with forward and tail with backward",
        ));
    }
    Ok(NextNodeConfig {
        forward,
        base,
        events: args.exprs.len() - 5,
    })
}

/// One row: (time, value id, events met, base condition met).
type NodeRow = (i64, Option<u32>, u32, bool);

/// Per group: its rows, with values interned.
#[derive(Debug)]
struct NextNodeGroups {
    /// `size()` counted every few batches (see [`crate::state_size`]).
    size_cache: crate::state_size::SizeCache,
    config: NextNodeConfig,
    names: Interner,
    rows: Vec<Vec<NodeRow>>,
}

impl NextNodeGroups {
    fn new(config: NextNodeConfig) -> Self {
        NextNodeGroups {
            size_cache: Default::default(),
            config,
            names: Interner::default(),
            rows: vec![],
        }
    }

    fn grow(&mut self, n: usize) {
        if self.rows.len() < n {
            self.rows.resize_with(n, Vec::new);
        }
    }

    /// Each input row as a node row (None without a time).
    fn batch_rows(&mut self, values: &[ArrayRef]) -> Result<Vec<Option<NodeRow>>> {
        let ts = events::times(NEXT_NODE, &values[2])?;
        let value = cast(&values[3], &DataType::Utf8)?;
        let value = value.as_string::<i32>();
        let base = events::conditions(NEXT_NODE, &values[4..5])?.remove(0);
        let conds = events::conditions(NEXT_NODE, &values[5..5 + self.config.events])?;
        let mut out = Vec::with_capacity(ts.len());
        for (row, t) in ts.into_iter().enumerate() {
            let Some(t) = t else {
                out.push(None);
                continue;
            };
            let mut mask = 0u32;
            for (i, c) in conds.iter().enumerate() {
                if c[row] == Some(true) {
                    mask |= 1 << i;
                }
            }
            let v = value.is_valid(row).then(|| self.names.id(value.value(row)));
            out.push(Some((t, v, mask, base[row] == Some(true))));
        }
        Ok(out)
    }

    /// The result of one group's rows.
    fn evaluate_rows(&self, rows: &mut [NodeRow]) -> Option<u32> {
        let c = self.config;
        let n = c.events;
        if rows.len() <= n {
            return None;
        }
        // Time, then value (ClickHouse's order), then the rest so that ties are settled.
        let name = |v: Option<u32>| v.map(|i| self.names.name(i));
        rows.sort_unstable_by(|a, b| (a.0, name(a.1), a.2, a.3).cmp(&(b.0, name(b.1), b.2, b.3)));
        let first_event = |r: &NodeRow| r.2 & 1 != 0 && r.3;
        let base = match c.base {
            Base::Head => rows[0].3.then_some(0),
            Base::Tail => rows[rows.len() - 1].3.then_some(rows.len() - 1),
            Base::FirstMatch => rows.iter().position(first_event),
            Base::LastMatch => rows.iter().rposition(first_event),
        }?;
        let at = if c.forward {
            let ok = (0..n).all(|i| base + i < rows.len() && rows[base + i].2 & (1 << i) != 0);
            ok.then_some(base + n)
        } else {
            let ok = (0..n).all(|i| i < base && rows[base - i].2 & (1 << i) != 0);
            ok.then(|| base - n)
        };
        at.and_then(|k| rows.get(k)).and_then(|r| r.1)
    }

    fn state_arrays(&self, groups: &[Vec<NodeRow>]) -> Vec<ArrayRef> {
        let ts = ListArray::from_iter_primitive::<Int64Type, _, _>(
            groups.iter().map(|g| Some(g.iter().map(|r| Some(r.0)))),
        );
        let mask = ListArray::from_iter_primitive::<UInt32Type, _, _>(
            groups.iter().map(|g| Some(g.iter().map(|r| Some(r.2)))),
        );
        let mut value = ListBuilder::new(StringBuilder::new());
        let mut base = ListBuilder::new(BooleanBuilder::new());
        for g in groups {
            for r in g {
                value
                    .values()
                    .append_option(r.1.map(|i| self.names.name(i)));
                base.values().append_value(r.3);
            }
            value.append(true);
            base.append(true);
        }
        vec![
            Arc::new(ts),
            Arc::new(value.finish()),
            Arc::new(mask),
            Arc::new(base.finish()),
        ]
    }
}

impl GroupsAccumulator for NextNodeGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let rows = self.batch_rows(values)?;
        for (row, (&g, r)) in group_indices.iter().zip(rows).enumerate() {
            if skipped(opt_filter, row) {
                continue;
            }
            if let Some(r) = r {
                self.rows[g].push(r);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.size_cache.invalidate();
        let mut groups = emit_to.take_needed(&mut self.rows);
        let out: StringArray = groups
            .iter_mut()
            .map(|g| self.evaluate_rows(g).map(|i| self.names.name(i)))
            .collect();
        Ok(Arc::new(out))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.size_cache.invalidate();
        let groups = emit_to.take_needed(&mut self.rows);
        Ok(self.state_arrays(&groups))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let l = |k: usize| values[k].as_list::<i32>();
        for (row, &g) in group_indices.iter().enumerate() {
            if l(0).is_null(row) {
                continue;
            }
            let (t, v, m, b) = (
                l(0).value(row),
                l(1).value(row),
                l(2).value(row),
                l(3).value(row),
            );
            let (t, v, m, b) = (
                t.as_primitive::<Int64Type>(),
                v.as_string::<i32>(),
                m.as_primitive::<UInt32Type>(),
                b.as_boolean(),
            );
            for k in 0..t.len() {
                let id = v.is_valid(k).then(|| self.names.id(v.value(k)));
                self.rows[g].push((t.value(k), id, m.value(k), b.value(k)));
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let mut scratch = NextNodeGroups::new(self.config);
        let rows = scratch.batch_rows(values)?;
        let groups: Vec<Vec<NodeRow>> = rows
            .into_iter()
            .enumerate()
            .map(|(row, r)| {
                let filtered = skipped(opt_filter, row);
                r.filter(|_| !filtered).into_iter().collect()
            })
            .collect();
        Ok(scratch.state_arrays(&groups))
    }

    fn size(&self) -> usize {
        self.size_cache.get(|| {
            self.rows.iter().map(|r| r.capacity() * 24).sum::<usize>()
                + self.rows.capacity() * 24
                + self.names.size()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(pattern: &str, events: &[(i64, u32)], clickhouse: bool) -> (bool, u64) {
        let p = parse("sequence_match", pattern, 3, 1).unwrap();
        let m = Matcher {
            name: "sequence_match",
            pattern: &p,
            events,
            clickhouse,
        };
        let mut at = 0;
        let matched = m.matches(&mut at).unwrap();
        if !p.has_time {
            assert_eq!(m.dfa_matches(), matched, "{pattern}");
        }
        let mut at = 0;
        let mut n = 0;
        while at < events.len() && m.matches(&mut at).unwrap() {
            n += 1;
        }
        (matched, n)
    }

    #[test]
    fn patterns() {
        // A=1, B=2, C=4
        let ev = [(1, 1), (2, 4), (3, 2), (10, 1), (11, 2)];
        assert_eq!(run("(?1)(?2)", &ev, true), (true, 1));
        assert_eq!(run("(?1).*(?2)", &ev, true), (true, 2));
        assert_eq!(run("(?1)(?t<=1)(?2)", &ev, true), (true, 1));
        assert_eq!(run("(?1).(?2)", &ev, true), (true, 1));
        assert_eq!(run("(?3)", &ev, true), (true, 1));
        // After `.*` the anchor differs: ClickHouse measures from C@2, we from A@1.
        assert!(run("(?1).*(?t<=1)(?2)", &ev, true).0);
        assert!(run("(?1).*(?t>=2)(?2)", &[(1, 1), (2, 4), (3, 2)], false).0);
        assert!(!run("(?1).*(?t>=2)(?2)", &[(1, 1), (2, 4), (3, 2)], true).0);
        assert!(parse("x", "(?4)", 3, 1).is_err());
        assert!(parse("x", "(?1", 3, 1).is_err());
        assert!(parse("x", "(?t<=1)(?1)", 3, 1).is_ok());
        assert!(parse("x", "a", 3, 1).is_err());
    }
}
