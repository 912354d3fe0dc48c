//! `funnel_detail(window, ts, cond1, …, condN [, options])` (functions.md §D2): what a funnel
//! analysis needs per person beyond `window_funnel`'s level — which attempt, when each step
//! happened, the gaps — with per-step windows, minimum gaps, optional steps, strict order,
//! entry policies and totals counting.
//!
//! Events are the rows with a time, ordered by time, then by the conditions they meet, then
//! by arrival; one event fills at most one step. A chain assigns events at increasing
//! positions to steps 1, 2, … (an optional step may be skipped), all within `window` of the
//! first (inclusive); `step_windows` bound the gap to the previous assigned step and
//! `min_gaps` set its minimum; with `order=strict` each assigned event must directly follow
//! the previous one. Per entry (an event meeting step 1) the level is the last step of its
//! best chain; the reported chain is the earliest one reaching that level. With
//! `order=unordered` any step's event enters and the level is the most steps filled by
//! distinct events within the window of the entry, in any order (a bipartite matching).
//! `date_from`/`date_to` restrict the entries (conversion horizon): later steps may fall
//! after `date_to`.
//!
//! Entry policies: `latest` (default; the most recent entry among those reaching the best
//! level, as PostHog reports), `earliest_longest` (the earliest such entry, Amplitude),
//! `first` (only the first step-1 event may enter, Mixpanel uniques), `optimized_reentry`
//! (Mixpanel: before step 2 the latest step-1 event is the entry, later steps take their
//! first event, attempts follow one another). `funnel_attempts`
//! (same arguments) returns every attempt instead, for totals counting: an attempt enters at
//! a step-1 event and ends when it converts or its window runs out; the next attempt enters
//! after that (Mixpanel totals).
//!
//! `hold_constant` (a key argument after the options) makes one funnel per key value over
//! the events carrying it (Amplitude/Mixpanel "hold property constant"); exclusion events
//! count whatever their key. `breakdown=first_touch|last_touch|step_K|all_events` (a value
//! argument after the options, and after the key) reports a value of the attempt's events,
//! PostHog's breakdown attribution; `all_events` makes one funnel per value, like a key.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int32Array, Int64Array, IntervalMonthDayNanoArray, ListArray,
    StringArray, StructArray, TimestampMicrosecondArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Fields, IntervalMonthDayNano, IntervalUnit, TimeUnit,
};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, GroupsAccumulator, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;
use crate::events;
use crate::groups::{Event, EventGroups, Keep, OneGroup};

const NAME: &str = "funnel_detail";
const ATTEMPTS: &str = "funnel_attempts";
/// Most search steps per person before the search gives up with an error.
const BUDGET: u64 = 20_000_000;

/// `funnel_detail` (one struct per group) and `funnel_attempts` (a list of them).
pub fn functions() -> Vec<AggregateUDF> {
    [false, true]
        .into_iter()
        .map(|totals| {
            AggregateUDF::from(FunnelDetail {
                totals,
                signature: Signature::user_defined(Volatility::Immutable),
            })
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct FunnelDetail {
    totals: bool,
    signature: Signature,
}

/// Whose value the `breakdown` field reports (PostHog's breakdown attribution).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Breakdown {
    /// The attempt's entry event.
    FirstTouch,
    /// The attempt's last reached step's event.
    LastTouch,
    /// Step K's event (0-based here).
    Step(usize),
    /// One funnel per value, over the events carrying it.
    AllEvents,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Entry {
    Latest,
    EarliestLongest,
    First,
    /// Mixpanel's optimized re-entry: attempts one after another; before step 2 the most
    /// recent step-1 event is the entry, later steps take their first event.
    OptimizedReentry,
}

/// A call's settings.
#[derive(Debug, Clone)]
struct Config {
    /// Condition columns (steps and exclusions).
    conditions: usize,
    /// The condition bit of each step.
    step_bits: Vec<u32>,
    /// (condition bit, from step, to step), steps 0-based.
    exclusions: Vec<(u32, usize, usize)>,
    steps: usize,
    window: i64,
    strict: bool,
    /// Steps in any order (each filled by its own event within the window of the entry).
    unordered: bool,
    /// Entries only from / up to these times (inclusive); later steps may fall after.
    entry_from: Option<i64>,
    entry_to: Option<i64>,
    entry: Entry,
    totals: bool,
    /// Per step (index 0 unused): max gap to the previous assigned step.
    step_windows: Vec<Option<i64>>,
    /// Per step (index 0 unused): min gap to the previous assigned step.
    min_gaps: Vec<Option<i64>>,
    optional: Vec<bool>,
    /// The time type of the events (decides the output types).
    time_type: DataType,
    /// One funnel per value of the key argument.
    hold: bool,
    breakdown: Option<Breakdown>,
}

/// Where a call's arguments are: `conditions` condition columns after the window and the
/// time, then maybe the options text, then `extras` value arguments (the hold_constant key
/// and the breakdown value).
#[derive(Debug, Clone, Copy)]
struct Layout {
    conditions: usize,
    options: bool,
    extras: usize,
}

fn shape(types: &[DataType]) -> Result<Layout> {
    let usage = "(window, ts, cond1 [, …, condN] [, options [, hold_key] [, breakdown_value]])";
    if types.len() < 3 {
        return Err(invalid(NAME, format!("takes {usage}")));
    }
    // The options are the first text argument after a condition.
    let layout = match (3..types.len()).find(|&i| events::is_text(&types[i])) {
        Some(i) => Layout {
            conditions: i - 2,
            options: true,
            extras: types.len() - i - 1,
        },
        None => Layout {
            conditions: types.len() - 2,
            options: false,
            extras: 0,
        },
    };
    if layout.conditions > events::MAX_CONDITIONS {
        return Err(invalid(
            NAME,
            format!(
                "at most {} conditions, got {}",
                events::MAX_CONDITIONS,
                layout.conditions
            ),
        ));
    }
    if layout.extras > 2 {
        return Err(invalid(
            NAME,
            format!(
                "after the options come at most the hold_constant key and the breakdown value, \
                 got {} arguments",
                layout.extras
            ),
        ));
    }
    Ok(layout)
}

/// `30 minutes`, `2 days`; for integer times, an integer in their unit. Empty or `-` is no
/// limit.
fn duration_text(key: &str, v: &str, time_type: &DataType) -> Result<Option<i64>> {
    let v = v.trim();
    if v.is_empty() || v == "-" {
        return Ok(None);
    }
    let value = if let Ok(n) = v.parse::<i64>() {
        if !time_type.is_integer() {
            return Err(invalid(
                NAME,
                format!("{key}: give '{v}' with a unit, like '{v} minutes'"),
            ));
        }
        ScalarValue::Int64(Some(n))
    } else {
        let mut it = v.split_whitespace();
        let (Some(n), Some(unit), None) = (it.next(), it.next(), it.next()) else {
            return Err(invalid(
                NAME,
                format!("{key}: '{v}' is not like '30 minutes'"),
            ));
        };
        let n: i64 = n
            .parse()
            .map_err(|_| invalid(NAME, format!("{key}: '{v}' is not like '30 minutes'")))?;
        let secs = match unit.trim_end_matches('s').to_ascii_lowercase().as_str() {
            "second" | "sec" => 1,
            "minute" | "min" => 60,
            "hour" => 3600,
            "day" => 86_400,
            "week" => 604_800,
            _ => return Err(invalid(NAME, format!("{key}: unknown unit '{unit}'"))),
        };
        ScalarValue::IntervalMonthDayNano(Some(IntervalMonthDayNano::new(
            0,
            0,
            n * secs * 1_000_000_000,
        )))
    };
    events::duration(NAME, key, &value, time_type).map(Some)
}

/// `exclusions=K:F-T|…`: condition K (1-based among all conditions) is an exclusion between
/// steps F and T (1-based among the steps). Returns (condition, from, to), 0-based.
fn exclusion_option(text: &str, conditions: usize) -> Result<Vec<(usize, usize, usize)>> {
    let mut out = vec![];
    for part in text.split(',').map(str::trim) {
        let Some((k, v)) = part.split_once('=') else {
            continue;
        };
        if !k.trim().eq_ignore_ascii_case("exclusions") {
            continue;
        }
        for item in v.split('|').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = || {
                invalid(
                    NAME,
                    format!("exclusions: '{item}' is not like 4:1-2 (condition:from_step-to_step)"),
                )
            };
            let (cond, span) = item.split_once(':').ok_or_else(bad)?;
            let (from, to) = span.split_once('-').ok_or_else(bad)?;
            let num = |x: &str| x.trim().parse::<usize>().ok().filter(|n| *n >= 1);
            let (Some(cond), Some(from), Some(to)) = (num(cond), num(from), num(to)) else {
                return Err(bad());
            };
            if cond > conditions {
                return Err(invalid(
                    NAME,
                    format!("exclusions: there is no condition {cond}"),
                ));
            }
            out.push((cond - 1, from - 1, to - 1));
        }
    }
    Ok(out)
}

impl Config {
    fn from_args(args: &AccumulatorArgs, totals: bool) -> Result<Self> {
        let types: Vec<DataType> = args
            .expr_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let layout = shape(&types)?;
        let steps = layout.conditions;
        let window = events::literal(&args.exprs[0])
            .ok_or_else(|| invalid(NAME, "window must be a constant"))?;
        let window = events::duration(NAME, "window", window, &types[1])?;
        let text = if layout.options {
            let v = events::literal(&args.exprs[2 + steps])
                .ok_or_else(|| invalid(NAME, "options must be a constant"))?;
            events::text_literal(NAME, "options", v)?
        } else {
            String::new()
        };
        let exclusions = exclusion_option(&text, steps)?;
        let excluded: Vec<usize> = exclusions.iter().map(|e| e.0).collect();
        let step_bits: Vec<u32> = (0..steps)
            .filter(|k| !excluded.contains(k))
            .map(|k| 1u32 << k)
            .collect();
        let conditions = steps;
        let steps = step_bits.len();
        if steps == 0 {
            return Err(invalid(NAME, "at least one condition must be a step"));
        }
        for &(_, from, to) in &exclusions {
            if from >= to || to >= steps {
                return Err(invalid(
                    NAME,
                    format!(
                        "exclusions: steps {}-{} must be two steps in order, of 1 to {steps}",
                        from + 1,
                        to + 1
                    ),
                ));
            }
        }
        let mut c = Config {
            conditions,
            step_bits,
            exclusions: exclusions
                .into_iter()
                .map(|(k, f, t)| (1u32 << k, f, t))
                .collect(),
            steps,
            window,
            strict: false,
            unordered: false,
            entry_from: None,
            entry_to: None,
            entry: Entry::Latest,
            totals,
            step_windows: vec![None; steps],
            min_gaps: vec![None; steps],
            optional: vec![false; steps],
            time_type: types[1].clone(),
            hold: false,
            breakdown: None,
        };
        c.parse(&text)?;
        if c.entry == Entry::OptimizedReentry && (c.unordered || c.optional.contains(&true)) {
            return Err(invalid(
                NAME,
                "entry=optimized_reentry takes no order=unordered or optional_steps (each step \
                 takes its first event in order)",
            ));
        }
        let wanted = c.tags();
        if layout.extras != wanted {
            return Err(invalid(
                NAME,
                format!(
                    "the options ask for {wanted} argument(s) after them (the hold_constant key, \
                     then the breakdown value), got {}",
                    layout.extras
                ),
            ));
        }
        if c.unordered
            && (!c.exclusions.is_empty()
                || c.optional.contains(&true)
                || c.step_windows.iter().any(Option::is_some)
                || c.min_gaps.iter().any(Option::is_some))
        {
            return Err(invalid(
                NAME,
                "order=unordered takes no exclusions, optional_steps, step_windows or min_gaps \
                 (they need an order of steps)",
            ));
        }
        Ok(c)
    }

    fn parse(&mut self, text: &str) -> Result<()> {
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.eq_ignore_ascii_case("hold_constant") {
                self.hold = true;
                continue;
            }
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| invalid(NAME, format!("option '{part}' is not key=value")))?;
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            let per_step = |c: &Config, key: &str| -> Result<Vec<Option<i64>>> {
                let items: Vec<&str> = v.split('|').collect();
                if items.len() != c.steps - 1 {
                    return Err(invalid(
                        NAME,
                        format!(
                            "{key} needs {} values separated by | (one per step after the first)",
                            c.steps - 1
                        ),
                    ));
                }
                let mut out = vec![None];
                for i in items {
                    out.push(duration_text(key, i, &c.time_type)?);
                }
                Ok(out)
            };
            match k.as_str() {
                // Read before the others (it decides which conditions are steps).
                "exclusions" => {}
                "order" => {
                    (self.strict, self.unordered) = match v.to_ascii_lowercase().as_str() {
                        "ordered" => (false, false),
                        "strict" => (true, false),
                        "unordered" => (false, true),
                        other => {
                            return Err(invalid(
                                NAME,
                                format!("order '{other}' is not ordered, strict or unordered"),
                            ));
                        }
                    }
                }
                "entry" => {
                    self.entry = match v.to_ascii_lowercase().as_str() {
                        "latest" => Entry::Latest,
                        "earliest_longest" => Entry::EarliestLongest,
                        "first" => Entry::First,
                        "optimized_reentry" => Entry::OptimizedReentry,
                        other => {
                            return Err(invalid(
                                NAME,
                                format!(
                                    "entry '{other}' is not latest, earliest_longest, first or \
                                     optimized_reentry"
                                ),
                            ));
                        }
                    }
                }
                "hold_constant" => {
                    self.hold = match v.to_ascii_lowercase().as_str() {
                        "true" | "on" | "yes" => true,
                        "false" | "off" | "no" => false,
                        other => {
                            return Err(invalid(
                                NAME,
                                format!("hold_constant '{other}' is not true or false"),
                            ));
                        }
                    }
                }
                "breakdown" => {
                    let lower = v.to_ascii_lowercase();
                    self.breakdown = Some(match lower.as_str() {
                        "first_touch" => Breakdown::FirstTouch,
                        "last_touch" => Breakdown::LastTouch,
                        "all_events" => Breakdown::AllEvents,
                        other => match other.strip_prefix("step_").map(str::parse::<usize>) {
                            Some(Ok(k)) if k >= 1 && k <= self.steps => Breakdown::Step(k - 1),
                            _ => {
                                return Err(invalid(
                                    NAME,
                                    format!(
                                        "breakdown '{v}' is not first_touch, last_touch, \
                                         all_events or step_1 to step_{}",
                                        self.steps
                                    ),
                                ));
                            }
                        },
                    })
                }
                "date_from" => self.entry_from = Some(self.time_option(&k, v, false)?),
                "date_to" => self.entry_to = Some(self.time_option(&k, v, true)?),
                "step_windows" => self.step_windows = per_step(self, &k)?,
                "min_gaps" => self.min_gaps = per_step(self, &k)?,
                "optional_steps" => {
                    for s in v.split('|').map(str::trim).filter(|s| !s.is_empty()) {
                        match s.parse::<usize>() {
                            Ok(n) if n >= 2 && n <= self.steps => self.optional[n - 1] = true,
                            _ => {
                                return Err(invalid(
                                    NAME,
                                    format!(
                                        "optional_steps: '{s}' is not a step from 2 to {}",
                                        self.steps
                                    ),
                                ));
                            }
                        }
                    }
                    if self.optional[self.steps - 1] {
                        return Err(invalid(NAME, "the last step cannot be optional"));
                    }
                }
                other => {
                    return Err(invalid(
                        NAME,
                        format!(
                            "unknown option '{other}' (order, entry, step_windows, min_gaps, \
                             optional_steps, exclusions, date_from, date_to, hold_constant, \
                             breakdown)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A `date_from`/`date_to` value in the events' time: an integer for integer times,
    /// else a UTC date or date-time (`2026-01-31`, `2026-01-31 08:00:00`); a date alone as
    /// `date_to` is the whole day.
    fn time_option(&self, key: &str, v: &str, end: bool) -> Result<i64> {
        if self.integer_time() {
            return v
                .trim()
                .parse::<i64>()
                .map_err(|_| invalid(NAME, format!("{key}: '{v}' is not an integer")));
        }
        let t = crate::calendar::local_time(NAME, key, v)?;
        let date_only = chrono::NaiveDate::parse_from_str(v.trim(), "%Y-%m-%d").is_ok();
        Ok(if end && date_only {
            t + 86_400_000_000 - 1
        } else {
            t
        })
    }

    fn integer_time(&self) -> bool {
        self.time_type.is_integer()
    }

    /// The number of tag arguments (after the options): the key, the breakdown value.
    fn tags(&self) -> usize {
        usize::from(self.hold) + usize::from(self.breakdown.is_some())
    }

    /// Does each person get one funnel per key (and breakdown) value?
    fn partitioned(&self) -> bool {
        self.hold || self.breakdown == Some(Breakdown::AllEvents)
    }

    /// The condition bits of the exclusions.
    fn exclusion_bits(&self) -> u32 {
        self.exclusions.iter().fold(0, |a, e| a | e.0)
    }
}

/// The outcome of one attempt: level and the events (time) assigned to each step.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The last step reached (1-based; 0 when nothing entered).
    pub level: usize,
    /// Per step, the time of its event, or None (not reached, or an optional step skipped).
    pub step_ts: Vec<Option<i64>>,
    /// An exclusion event happened between its steps.
    pub excluded: bool,
    /// Per step, the position of its event in the person's ordered events.
    pub step_at: Vec<Option<usize>>,
    /// The position of the entry event.
    pub entry_at: Option<usize>,
    /// The breakdown value (see [`Breakdown`]).
    pub breakdown: Option<String>,
    /// The held key value.
    pub held: Option<String>,
}

impl Attempt {
    /// The attempt of a person with no entry.
    fn none(steps: usize) -> Self {
        Attempt {
            level: 0,
            step_ts: vec![None; steps],
            excluded: false,
            step_at: vec![None; steps],
            entry_at: None,
            breakdown: None,
            held: None,
        }
    }
}

/// The search over one person's ordered events.
struct Search<'a> {
    c: &'a Config,
    /// (time, condition mask) in order.
    ev: &'a [(i64, u32)],
    /// The events that may be exclusions (all of the person's, whatever their key).
    exclusion_ev: &'a [(i64, u32)],
    budget: u64,
}

impl Search<'_> {
    /// The steps that may follow step `j` (0-based): j+1, and past it while it is optional.
    fn next_steps(&self, j: usize) -> impl Iterator<Item = usize> + '_ {
        let mut k = j + 1;
        std::iter::from_fn(move || {
            if k >= self.c.steps {
                return None;
            }
            let s = k;
            if self.c.optional[k] {
                k += 1;
            } else {
                k = self.c.steps;
            }
            Some(s)
        })
    }

    /// Can the event at `q` fill step `s` after the event at `p` (time `tp`) filled a step,
    /// within the window of `t1`?
    fn fits(&self, p: usize, q: usize, s: usize, t1: i64) -> bool {
        let (tq, mq) = self.ev[q];
        let tp = self.ev[p].0;
        mq & self.c.step_bits[s] != 0
            && tq - t1 <= self.c.window
            && self.c.step_windows[s].is_none_or(|w| tq - tp <= w)
            && self.c.min_gaps[s].is_none_or(|g| tq - tp >= g)
            && (!self.c.strict || q == p + 1)
    }

    /// The best level reachable after event `p` filled step `j`, with memo.
    fn best(
        &mut self,
        p: usize,
        j: usize,
        t1: i64,
        memo: &mut HashMap<(usize, usize), usize>,
    ) -> Result<usize> {
        if let Some(v) = memo.get(&(p, j)) {
            return Ok(*v);
        }
        let mut best = j + 1;
        if j + 1 < self.c.steps {
            let steps: Vec<usize> = self.next_steps(j).collect();
            let end = if self.c.strict {
                (p + 2).min(self.ev.len())
            } else {
                self.ev.len()
            };
            for q in p + 1..end {
                if self.ev[q].0 - t1 > self.c.window {
                    break;
                }
                for &s in &steps {
                    self.budget += 1;
                    if self.budget > BUDGET {
                        return Err(invalid(
                            NAME,
                            "a person has too many events for this funnel's search; narrow \
                             the window or the events",
                        ));
                    }
                    if self.fits(p, q, s, t1) {
                        best = best.max(self.best(q, s, t1, memo)?);
                        if best == self.c.steps {
                            memo.insert((p, j), best);
                            return Ok(best);
                        }
                    }
                }
            }
        }
        memo.insert((p, j), best);
        Ok(best)
    }

    /// Does an exclusion event fall strictly between an exclusion's steps of this chain?
    /// When the later step was not reached, the span runs to the next reached step, or to
    /// the end of the window (inclusive).
    fn excluded(&self, step_ts: &[Option<i64>]) -> bool {
        let Some(t1) = step_ts[0] else {
            return false;
        };
        self.c.exclusions.iter().any(|&(bit, from, to)| {
            let Some(lo) = step_ts[from] else {
                return false;
            };
            let hi = step_ts[to..].iter().flatten().next().copied();
            self.exclusion_ev.iter().any(|&(t, m)| {
                m & bit != 0
                    && t > lo
                    && match hi {
                        Some(hi) => t < hi,
                        None => t <= t1 + self.c.window,
                    }
            })
        })
    }

    /// The attempt entering at event `p`: its best level and earliest chain reaching it.
    fn attempt(&mut self, p: usize) -> Result<Attempt> {
        if self.c.unordered {
            return self.unordered_attempt(p);
        }
        let t1 = self.ev[p].0;
        let mut memo = HashMap::new();
        let level = self.best(p, 0, t1, &mut memo)?;
        let mut step_ts = vec![None; self.c.steps];
        let mut step_at = vec![None; self.c.steps];
        step_ts[0] = Some(t1);
        step_at[0] = Some(p);
        let (mut at, mut j) = (p, 0usize);
        while j + 1 < level {
            let steps: Vec<usize> = self.next_steps(j).collect();
            let mut next = None;
            'search: for q in at + 1..self.ev.len() {
                for &s in &steps {
                    if s < level
                        && self.fits(at, q, s, t1)
                        && self.best(q, s, t1, &mut memo)? == level
                    {
                        next = Some((q, s));
                        break 'search;
                    }
                }
            }
            let Some((q, s)) = next else { break };
            step_ts[s] = Some(self.ev[q].0);
            step_at[s] = Some(q);
            at = q;
            j = s;
        }
        Ok(Attempt {
            level,
            excluded: self.excluded(&step_ts),
            step_ts,
            step_at,
            entry_at: Some(p),
            breakdown: None,
            held: None,
        })
    }
}

impl Search<'_> {
    /// Mixpanel's optimized re-entry, attempt after attempt over the entry events `entries`
    /// (positions, in order). While step 2 is not reached, every step-1 event may be the
    /// entry, each within its own window; step 2 is the first event that fits after one of
    /// them, and the entry is the latest one it fits. Each later step takes the first event
    /// that fits after the previous step. An attempt ends when it converts or its entry's
    /// window runs out (at step 1: the window of the last step-1 event); the next one
    /// enters at the first entry event after that.
    fn reentry_attempts(&self, entries: &[usize]) -> Vec<Attempt> {
        let (ev, c) = (self.ev, self.c);
        let is_entry = {
            let mut v = vec![false; ev.len()];
            for &p in entries {
                v[p] = true;
            }
            v
        };
        let mut out = vec![];
        let mut next = entries.first().copied();
        while let Some(start) = next {
            // Step 1: the open entries, latest last, and the latest entry.
            let mut open: Vec<usize> = vec![start];
            let mut latest = start;
            let mut chain: Vec<usize> = vec![];
            let mut q = start + 1;
            let end;
            loop {
                if q >= ev.len() {
                    end = None;
                    break;
                }
                let t = ev[q].0;
                if chain.is_empty() {
                    open.retain(|&p| t - ev[p].0 <= c.window);
                    if open.is_empty() {
                        // The last entry's window ran out before `q`.
                        end = Some(q);
                        break;
                    }
                    if let Some(&p) = open.iter().rev().find(|&&p| self.fits(p, q, 1, ev[p].0)) {
                        chain = vec![p, q];
                    } else if is_entry[q] {
                        open.push(q);
                        latest = q;
                    }
                } else {
                    let (t1, last) = (ev[chain[0]].0, chain[chain.len() - 1]);
                    if t - t1 > c.window {
                        end = Some(q);
                        break;
                    }
                    if self.fits(last, q, chain.len(), t1) {
                        chain.push(q);
                    }
                }
                if chain.len() == c.steps {
                    end = Some(q + 1);
                    break;
                }
                q += 1;
            }
            if chain.is_empty() {
                chain.push(latest);
            }
            let mut step_ts = vec![None; c.steps];
            let mut step_at = vec![None; c.steps];
            for (s, &p) in chain.iter().enumerate() {
                step_ts[s] = Some(ev[p].0);
                step_at[s] = Some(p);
            }
            out.push(Attempt {
                level: chain.len(),
                excluded: self.excluded(&step_ts),
                step_ts,
                step_at,
                entry_at: Some(chain[0]),
                breakdown: None,
                held: None,
            });
            // The next attempt enters at the first entry event from `end` on, after the
            // attempt's last event and its time (a converted attempt ends at its last step).
            let converted = chain.len() == c.steps;
            let last_t = if converted {
                ev[chain[chain.len() - 1]].0
            } else {
                ev[chain[0]].0 + c.window
            };
            next = end.and_then(|e| {
                entries
                    .iter()
                    .copied()
                    .find(|&p| p >= e && ev[p].0 > last_t)
            });
        }
        out
    }

    /// An unordered attempt entering at event `p`: the most steps filled by distinct
    /// events within the window of `p`, `p` among them (a bipartite matching of steps to
    /// events). Of those assignments, the steps in order each take the earliest event that
    /// still allows the most steps.
    fn unordered_attempt(&mut self, p: usize) -> Result<Attempt> {
        let t1 = self.ev[p].0;
        let end = (p..self.ev.len())
            .find(|&q| self.ev[q].0 - t1 > self.c.window)
            .unwrap_or(self.ev.len());
        // Per step, the events (positions) in the window that meet it.
        let cand: Vec<Vec<usize>> = self
            .c
            .step_bits
            .iter()
            .map(|&b| (p..end).filter(|&q| self.ev[q].1 & b != 0).collect())
            .collect();
        let mut m = Matching {
            cand: &cand,
            entry: p,
            fixed: vec![None; self.c.steps],
            budget: &mut self.budget,
        };
        let level = m.best()?;
        for (s, qs) in cand.iter().enumerate() {
            for &q in qs {
                if m.fixed.contains(&Some(q)) {
                    continue;
                }
                m.fixed[s] = Some(q);
                if m.best()? == level {
                    break;
                }
                m.fixed[s] = None;
            }
        }
        Ok(Attempt {
            level,
            step_ts: m.fixed.iter().map(|q| q.map(|q| self.ev[q].0)).collect(),
            excluded: false,
            step_at: m.fixed.clone(),
            entry_at: Some(p),
            breakdown: None,
            held: None,
        })
    }
}

/// Steps matched to distinct events, some fixed.
struct Matching<'a> {
    /// Per step, its candidate events.
    cand: &'a [Vec<usize>],
    /// The event that must be used.
    entry: usize,
    /// Per step, its fixed event.
    fixed: Vec<Option<usize>>,
    budget: &'a mut u64,
}

impl Matching<'_> {
    /// The most steps filled, keeping the fixed ones and using the entry event.
    fn best(&mut self) -> Result<usize> {
        let fixed = self.fixed.iter().flatten().count();
        if self.fixed.contains(&Some(self.entry)) {
            return Ok(fixed + self.free(None)?);
        }
        // The entry event fills one of the free steps it meets.
        let mut best = 0;
        for s in 0..self.cand.len() {
            if self.fixed[s].is_none() && self.cand[s].contains(&self.entry) {
                best = best.max(fixed + 1 + self.free(Some(s))?);
            }
        }
        Ok(best)
    }

    /// A maximum matching of the free steps (but `skip`) to events not fixed (nor the
    /// entry when `skip` is given: it fills `skip`). Kuhn's augmenting paths.
    fn free(&mut self, skip: Option<usize>) -> Result<usize> {
        let mut taken: HashMap<usize, usize> = HashMap::new();
        let entry = self.entry;
        let blocked = |q: usize, fixed: &[Option<usize>]| {
            fixed.contains(&Some(q)) || (skip.is_some() && q == entry)
        };
        let mut size = 0;
        for s in 0..self.cand.len() {
            if self.fixed[s].is_some() || Some(s) == skip {
                continue;
            }
            let mut seen = vec![false; self.cand.len()];
            if self.augment(s, &mut seen, &mut taken, &blocked)? {
                size += 1;
            }
        }
        Ok(size)
    }

    fn augment(
        &mut self,
        s: usize,
        seen: &mut [bool],
        taken: &mut HashMap<usize, usize>,
        blocked: &impl Fn(usize, &[Option<usize>]) -> bool,
    ) -> Result<bool> {
        if seen[s] {
            return Ok(false);
        }
        seen[s] = true;
        for i in 0..self.cand[s].len() {
            let q = self.cand[s][i];
            *self.budget += 1;
            if *self.budget > BUDGET {
                return Err(invalid(
                    NAME,
                    "a person has too many events for this funnel's search; narrow the window \
                     or the events",
                ));
            }
            if blocked(q, &self.fixed) {
                continue;
            }
            let free = match taken.get(&q).copied() {
                None => true,
                Some(h) => self.augment(h, seen, taken, blocked)?,
            };
            if free {
                taken.insert(q, s);
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// The attempts of some ordered events (time, mask): the best one for uniques (none when
/// nothing entered), all for totals. Positions in the attempts are into `ev`.
fn attempts(c: &Config, ev: &[(i64, u32)], exclusion_ev: &[(i64, u32)]) -> Result<Vec<Attempt>> {
    let mut search = Search {
        c,
        ev,
        exclusion_ev,
        budget: 0,
    };
    // Unordered, any step's event enters.
    let entry_bits = if c.unordered {
        c.step_bits.iter().fold(0, |a, b| a | b)
    } else {
        c.step_bits[0]
    };
    let entries: Vec<usize> = (0..ev.len())
        .filter(|&i| {
            ev[i].1 & entry_bits != 0
                && c.entry_from.is_none_or(|f| ev[i].0 >= f)
                && c.entry_to.is_none_or(|t| ev[i].0 <= t)
        })
        .collect();
    if c.entry == Entry::OptimizedReentry {
        let all = search.reentry_attempts(&entries);
        if c.totals {
            return Ok(all);
        }
        // The first attempt reaching the best level (the first conversion, if any).
        let best = all.iter().map(|a| a.level).max();
        return Ok(all
            .into_iter()
            .find(|a| Some(a.level) == best)
            .into_iter()
            .collect());
    }
    if c.totals {
        let mut out = vec![];
        let mut after: Option<i64> = None;
        for &p in &entries {
            if after.is_some_and(|a| ev[p].0 <= a) {
                continue;
            }
            let a = search.attempt(p)?;
            after = Some(if a.level == c.steps {
                a.step_ts.iter().flatten().copied().max().unwrap_or(ev[p].0)
            } else {
                ev[p].0 + c.window
            });
            out.push(a);
        }
        return Ok(out);
    }
    let candidates: Vec<usize> = match c.entry {
        Entry::First => entries.first().copied().into_iter().collect(),
        _ => entries,
    };
    let mut best: Option<Attempt> = None;
    for &p in &candidates {
        let a = search.attempt(p)?;
        if best.as_ref().is_none_or(|b| c.better(&a, b)) {
            best = Some(a);
        }
        if c.entry == Entry::EarliestLongest && best.as_ref().is_some_and(|b| b.level == c.steps) {
            break;
        }
    }
    Ok(best.into_iter().collect())
}

impl Config {
    /// Is attempt `a` preferred to `b` by the entry policy: the best level, then the latest
    /// entry (`latest`) or the earliest (the others)?
    fn better(&self, a: &Attempt, b: &Attempt) -> bool {
        match self.entry {
            Entry::Latest => (a.level, a.entry_at) >= (b.level, b.entry_at),
            _ => a.level > b.level || (a.level == b.level && a.entry_at < b.entry_at),
        }
    }
}

/// The attempts of one person's events (ordered by time, mask, tags, arrival; `tags` are in
/// the events' given order), with their breakdown and held values: one for uniques (level 0
/// when nothing entered), all for totals in entry order.
fn person_attempts(
    c: &Config,
    events: &[Event],
    tags: &[Option<Box<str>>],
) -> Result<Vec<Attempt>> {
    let k = c.tags();
    let raw = |i: usize, j: usize| -> Option<&str> {
        if j < k {
            tags.get(i * k + j).and_then(|v| v.as_deref())
        } else {
            None
        }
    };
    // Events alike in time and conditions are ordered by their tags, so that which of them
    // fills a step does not depend on arrival (which varies with parallelism).
    let mut order: Vec<usize> = (0..events.len()).collect();
    order.sort_unstable_by_key(|&i| (events[i].0, events[i].1, raw(i, 0), raw(i, 1), events[i].2));
    let ev: Vec<(i64, u32)> = order.iter().map(|&i| (events[i].0, events[i].1)).collect();
    let tag = |pos: usize, j: usize| raw(order[pos], j);
    let breakdown_col = usize::from(c.hold);
    // (held value, all_events value) → positions of the events carrying it.
    let mut parts: BTreeMap<(Option<&str>, Option<&str>), Vec<usize>> = BTreeMap::new();
    if c.partitioned() {
        for pos in 0..ev.len() {
            let held = if c.hold {
                match tag(pos, 0) {
                    Some(v) => Some(v),
                    None => continue,
                }
            } else {
                None
            };
            let value = if c.breakdown == Some(Breakdown::AllEvents) {
                match tag(pos, breakdown_col) {
                    Some(v) => Some(v),
                    None => continue,
                }
            } else {
                None
            };
            parts.entry((held, value)).or_default().push(pos);
        }
    } else {
        parts.insert((None, None), (0..ev.len()).collect());
    }
    let exclusion_ev: Vec<(i64, u32)> = if c.partitioned() && !c.exclusions.is_empty() {
        let bits = c.exclusion_bits();
        ev.iter().copied().filter(|e| e.1 & bits != 0).collect()
    } else {
        vec![]
    };
    let mut all: Vec<Attempt> = vec![];
    for ((held, value), positions) in parts {
        let sub: Vec<(i64, u32)> = positions.iter().map(|&p| ev[p]).collect();
        let excl = if c.partitioned() { &exclusion_ev } else { &sub };
        for mut a in attempts(c, &sub, excl)? {
            // Positions into the person's ordered events.
            for q in a.step_at.iter_mut().chain([&mut a.entry_at]).flatten() {
                *q = positions[*q];
            }
            let at = match c.breakdown {
                None | Some(Breakdown::AllEvents) => None,
                Some(Breakdown::FirstTouch) => a.step_at.iter().flatten().min().copied(),
                Some(Breakdown::LastTouch) => a.step_at.iter().flatten().max().copied(),
                Some(Breakdown::Step(s)) => a.step_at[s],
            };
            a.breakdown = match c.breakdown {
                Some(Breakdown::AllEvents) => value.map(str::to_string),
                _ => at.and_then(|p| tag(p, breakdown_col)).map(str::to_string),
            };
            a.held = held.map(str::to_string);
            all.push(a);
        }
    }
    if c.totals {
        all.sort_by_key(|a| a.entry_at);
        return Ok(all);
    }
    let mut best: Option<Attempt> = None;
    for a in all {
        if best.as_ref().is_none_or(|b| c.better(&a, b)) {
            best = Some(a);
        }
    }
    Ok(vec![best.unwrap_or_else(|| Attempt::none(c.steps))])
}

fn attempt_fields(time_type: &DataType) -> Fields {
    let (time, gap) = if time_type.is_integer() {
        (DataType::Int64, DataType::Int64)
    } else {
        let tz = match time_type {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        (
            DataType::Timestamp(TimeUnit::Microsecond, tz),
            DataType::Interval(IntervalUnit::MonthDayNano),
        )
    };
    Fields::from(vec![
        Field::new("level", DataType::Int32, false),
        Field::new("converted", DataType::Boolean, false),
        Field::new("excluded", DataType::Boolean, false),
        Field::new("entry_ts", time.clone(), true),
        Field::new(
            "step_ts",
            DataType::List(Arc::new(Field::new_list_field(time, true))),
            false,
        ),
        Field::new(
            "step_gap",
            DataType::List(Arc::new(Field::new_list_field(gap, true))),
            false,
        ),
        Field::new("breakdown", DataType::Utf8, true),
        Field::new("held", DataType::Utf8, true),
    ])
}

/// The struct array of some attempts.
fn attempt_array(c: &Config, attempts: &[Attempt]) -> Result<StructArray> {
    let n = c.steps;
    let level = Int32Array::from_iter_values(attempts.iter().map(|a| a.level as i32));
    let converted = BooleanArray::from_iter(attempts.iter().map(|a| Some(a.level == n)));
    let excluded = BooleanArray::from_iter(attempts.iter().map(|a| Some(a.excluded)));
    let entry: Vec<Option<i64>> = attempts
        .iter()
        .map(|a| {
            if a.level > 0 {
                a.step_ts.iter().flatten().min().copied()
            } else {
                None
            }
        })
        .collect();
    let flat: Vec<Option<i64>> = attempts.iter().flat_map(|a| a.step_ts.clone()).collect();
    let gaps: Vec<Option<i64>> = attempts
        .iter()
        .flat_map(|a| {
            let mut prev: Option<i64> = None;
            a.step_ts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let g = match (i, prev, t) {
                        (0, _, _) => None,
                        (_, Some(p), Some(t)) => Some(t - p),
                        _ => None,
                    };
                    if t.is_some() {
                        prev = *t;
                    }
                    g
                })
                .collect::<Vec<_>>()
        })
        .collect();
    let offsets = || OffsetBuffer::from_lengths(vec![n; attempts.len()]);
    let fields = attempt_fields(&c.time_type);
    let (time_t, gap_t) = match (fields[4].data_type(), fields[5].data_type()) {
        (DataType::List(a), DataType::List(b)) => (a.clone(), b.clone()),
        _ => unreachable!("step_ts and step_gap are lists"),
    };
    let (entry_a, ts_a, gap_a): (ArrayRef, ArrayRef, ArrayRef) = if c.integer_time() {
        (
            Arc::new(Int64Array::from(entry)),
            Arc::new(Int64Array::from(flat)),
            Arc::new(Int64Array::from(gaps)),
        )
    } else {
        let tz = match &c.time_type {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        (
            Arc::new(TimestampMicrosecondArray::from(entry).with_timezone_opt(tz.clone())),
            Arc::new(TimestampMicrosecondArray::from(flat).with_timezone_opt(tz)),
            Arc::new(IntervalMonthDayNanoArray::from(
                gaps.into_iter()
                    .map(|g| g.map(|us| IntervalMonthDayNano::new(0, 0, us * 1000)))
                    .collect::<Vec<_>>(),
            )),
        )
    };
    Ok(StructArray::try_new(
        fields,
        vec![
            Arc::new(level),
            Arc::new(converted),
            Arc::new(excluded),
            entry_a,
            Arc::new(ListArray::try_new(time_t, offsets(), ts_a, None)?),
            Arc::new(ListArray::try_new(gap_t, offsets(), gap_a, None)?),
            Arc::new(StringArray::from_iter(
                attempts.iter().map(|a| a.breakdown.as_deref()),
            )),
            Arc::new(StringArray::from_iter(
                attempts.iter().map(|a| a.held.as_deref()),
            )),
        ],
        None,
    )?)
}

impl AggregateUDFImpl for FunnelDetail {
    fn name(&self) -> &str {
        if self.totals { ATTEMPTS } else { NAME }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let l = shape(types)?;
        let head = types.len() - l.extras;
        let mut out = events::coerce_window_layout(NAME, &types[..head], l.conditions, l.options)?;
        // The key and the breakdown value are compared as text.
        out.extend(std::iter::repeat_n(DataType::Utf8, l.extras));
        Ok(out)
    }
    fn return_type(&self, types: &[DataType]) -> Result<DataType> {
        shape(types)?;
        let fields = attempt_fields(&types[1]);
        Ok(if self.totals {
            DataType::List(Arc::new(Field::new_list_field(
                DataType::Struct(fields),
                true,
            )))
        } else {
            DataType::Struct(fields)
        })
    }
    fn is_nullable(&self) -> bool {
        false
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        let types: Vec<DataType> = args
            .input_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let extras = shape(&types)?.extras;
        let mut out = vec![
            events::list_state(args.name, "ts", DataType::Int64),
            events::list_state(args.name, "mask", DataType::UInt32),
            events::list_state(args.name, "uid", DataType::UInt64),
        ];
        for j in 0..extras {
            out.push(events::list_state(
                args.name,
                &format!("tag{j}"),
                DataType::Utf8,
            ));
        }
        Ok(out)
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneGroup(groups(&args, self.totals)?)))
    }
    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(groups(&args, self.totals)?))
    }
}

fn groups(args: &AccumulatorArgs, totals: bool) -> Result<EventGroups> {
    let c = Config::from_args(args, totals)?;
    let keep = Keep {
        conditions: c.conditions,
        drop_null_rows: false,
        keep_unmatched: c.strict,
    };
    let tag_columns: Vec<usize> = (0..c.tags()).map(|j| 3 + c.conditions + j).collect();
    Ok(EventGroups::tagged(
        if totals { ATTEMPTS } else { NAME },
        keep,
        tag_columns,
        Box::new(move |events, tags| {
            let a = person_attempts(&c, events, tags)?;
            let structs = attempt_array(&c, &a)?;
            if !c.totals {
                return ScalarValue::try_from_array(&structs, 0);
            }
            Ok(events::one_list(Arc::new(structs)))
        }),
    ))
}
