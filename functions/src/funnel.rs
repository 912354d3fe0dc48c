//! Funnels (functions.md §D1): `window_funnel(window, ts, cond1, …, condN [, mode])`, the
//! deepest step of an ordered chain of events that fits in `window` after its first step.
//!
//! The chain rules are ClickHouse's `windowFunnel` (every mode: `strict_deduplication`
//! (alias `strict`), `strict_order`, `strict_increase` (alias `timestamp_dedup`),
//! `strict_once`, `allow_reentry`). Events are ordered by time, then by step, so the
//! answer never depends on the order rows arrive in. Two differences from ClickHouse, both
//! undone by the mode token `compat=clickhouse`: a NULL condition counts as false (ClickHouse
//! drops the row), and `strict_increase` keeps the best chain (ClickHouse's greedy scan can
//! miss a chain whose first step is followed by a second first step at the same time as
//! the next step).

use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, GroupsAccumulator, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;
use crate::events;
use crate::groups::{Event, EventGroups, Keep, OneGroup};

const NAME: &str = "window_funnel";

/// The options of a mode string.
#[derive(Debug, Clone, Copy, Default)]
struct Mode {
    dedup: bool,
    order: bool,
    increase: bool,
    once: bool,
    reentry: bool,
    clickhouse: bool,
}

impl Mode {
    fn parse(tokens: &[String]) -> Result<Self> {
        let mut m = Mode::default();
        for t in tokens {
            match t.as_str() {
                "strict_deduplication" | "strict" => m.dedup = true,
                "strict_order" => m.order = true,
                "strict_increase" | "timestamp_dedup" => m.increase = true,
                "strict_once" => m.once = true,
                "allow_reentry" => m.reentry = true,
                "compat=clickhouse" | "clickhouse" => m.clickhouse = true,
                other => {
                    return Err(invalid(
                        NAME,
                        format!(
                            "unknown mode '{other}' (strict_deduplication, strict_order, \
                             strict_increase, strict_once, allow_reentry, compat=clickhouse)"
                        ),
                    ));
                }
            }
        }
        if m.reentry && !m.order {
            return Err(invalid(NAME, "allow_reentry requires strict_order"));
        }
        Ok(m)
    }
}

/// `window_funnel` as an aggregate function.
pub fn window_funnel() -> AggregateUDF {
    AggregateUDF::from(WindowFunnel {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct WindowFunnel {
    signature: Signature,
}

/// (steps, has mode) from argument types.
fn shape(types: &[DataType]) -> Result<(usize, bool)> {
    events::condition_layout(NAME, "(window, ts, cond1 [, …, condN] [, mode])", types)
}

impl AggregateUDFImpl for WindowFunnel {
    fn name(&self) -> &str {
        NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let (steps, has_mode) = shape(types)?;
        events::coerce_window_layout(NAME, types, steps, has_mode)
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::UInt8)
    }
    fn is_nullable(&self) -> bool {
        false
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

impl WindowFunnel {
    fn groups(&self, args: &AccumulatorArgs) -> Result<EventGroups> {
        let c = Config::from_args(args)?;
        Ok(EventGroups::new(
            NAME,
            c.keep(),
            move |events: &mut [Event]| Ok(ScalarValue::UInt8(Some(c.level(events)))),
        ))
    }
}

/// A call's constant arguments.
#[derive(Debug, Clone, Copy)]
struct Config {
    window: i64,
    steps: usize,
    mode: Mode,
}

impl Config {
    fn from_args(args: &AccumulatorArgs) -> Result<Self> {
        let types: Vec<DataType> = args
            .expr_fields
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let (steps, has_mode) = shape(&types)?;
        let window = events::literal(&args.exprs[0])
            .ok_or_else(|| invalid(NAME, "window must be a constant"))?;
        let window = events::duration(NAME, "window", window, &types[1])?;
        let mode = if has_mode {
            let v = events::literal(&args.exprs[types.len() - 1])
                .ok_or_else(|| invalid(NAME, "the mode must be a constant"))?;
            Mode::parse(&events::mode_tokens(NAME, v)?)?
        } else {
            Mode::default()
        };
        Ok(Config {
            window,
            steps,
            mode,
        })
    }

    fn keep(&self) -> Keep {
        Keep {
            conditions: self.steps,
            drop_null_rows: self.mode.clickhouse,
            keep_unmatched: self.mode.order,
        }
    }

    fn level(&self, events: &[Event]) -> u8 {
        level(events, self.steps, self.window, self.mode)
    }
}

/// The funnel level of one group's events.
fn level(rows: &[Event], steps: usize, window: i64, mode: Mode) -> u8 {
    // One event per (row, condition that holds); rows matching none only in strict_order.
    let mut evs: Vec<(i64, usize, u64)> = vec![];
    for &(t, mask, uid) in rows {
        if mask == 0 {
            if mode.order {
                evs.push((t, 0, uid));
            }
            continue;
        }
        for i in (1..=steps).rev() {
            if mask & (1 << (i - 1)) != 0 {
                evs.push((t, i, uid));
            }
        }
    }
    if evs.is_empty() {
        return 0;
    }
    if !mode.order && steps == 1 {
        return 1;
    }
    evs.sort_unstable();
    if mode.once {
        level_once(&evs, steps, window, mode)
    } else {
        level_scan(&evs, steps, window, mode)
    }
}

/// The deepest level reached (the highest level with a value).
fn reached<T>(levels: &[Option<T>]) -> u8 {
    levels
        .iter()
        .rposition(Option::is_some)
        .map_or(0, |i| (i + 1) as u8)
}

/// The first level not reached.
fn first_gap<T>(levels: &[Option<T>]) -> u8 {
    levels
        .iter()
        .position(Option::is_none)
        .unwrap_or(levels.len()) as u8
}

/// ClickHouse's single scan: per level, the (first, last) time of the latest chain.
/// Outside compat mode, `strict_increase` extends chains only from the state before the
/// current timestamp, and keeps the latest first step among them (the best chain).
fn level_scan(evs: &[(i64, usize, u64)], steps: usize, window: i64, mode: Mode) -> u8 {
    let mut lv: Vec<Option<(i64, i64)>> = vec![None; steps];
    // Committed state for strict_increase (chains whose last event is before `group_ts`).
    let exact_increase = mode.increase && !mode.clickhouse;
    let mut before: Vec<Option<(i64, i64)>> = vec![None; steps];
    let mut group_ts: Option<i64> = None;
    let mut first_event = false;
    for &(t, step, _) in evs {
        if exact_increase && group_ts != Some(t) {
            before.clone_from(&lv);
            group_ts = Some(t);
        }
        if mode.order && step == 0 {
            if first_event {
                break;
            }
            continue;
        }
        let idx = step - 1;
        if idx == 0 {
            lv[0] = Some((t, t));
            first_event = true;
        } else if mode.dedup && lv[idx].is_some() {
            return reached(&lv);
        } else if mode.order && first_event && lv[idx - 1].is_none() {
            if mode.reentry {
                continue;
            }
            return first_gap(&lv);
        } else if exact_increase {
            if let Some((first, _)) = before[idx - 1]
                && t <= first.saturating_add(window)
            {
                let better = lv[idx].is_none_or(|(f, _)| f <= first);
                if better {
                    lv[idx] = Some((first, t));
                }
                if idx + 1 == steps {
                    return steps as u8;
                }
            }
        } else if let Some((first, last)) = lv[idx - 1] {
            let mut matched = t <= first.saturating_add(window);
            if mode.increase {
                matched = matched && last < t;
            }
            if matched {
                lv[idx] = Some((first, t));
                if idx + 1 == steps {
                    return steps as u8;
                }
            }
        }
    }
    reached(&lv)
}

/// `strict_once`: one row fills at most one step of a chain; every partial chain is kept
/// (as ClickHouse does), so the best one is found.
fn level_once(evs: &[(i64, usize, u64)], steps: usize, window: i64, mode: Mode) -> u8 {
    #[derive(Clone)]
    struct Chain {
        first: i64,
        last: i64,
        path: Vec<u64>,
    }
    let mut lv: Vec<Vec<Chain>> = vec![vec![]; steps];
    let nonempty = |lv: &Vec<Vec<Chain>>| -> Vec<Option<()>> {
        lv.iter().map(|l| (!l.is_empty()).then_some(())).collect()
    };
    let mut has_first = false;
    for &(t, step, uid) in evs {
        if mode.order && step == 0 {
            if has_first {
                break;
            }
            continue;
        }
        let idx = step - 1;
        if idx == 0 {
            lv[0].push(Chain {
                first: t,
                last: t,
                path: vec![uid],
            });
            has_first = true;
        } else if mode.dedup && !lv[idx].is_empty() {
            return reached(&nonempty(&lv));
        } else if mode.order && has_first && lv[idx - 1].is_empty() {
            if mode.reentry {
                continue;
            }
            return first_gap(&nonempty(&lv));
        } else if !lv[idx - 1].is_empty() {
            let mut prev = std::mem::take(&mut lv[idx - 1]);
            let mut k = 0;
            let mut grown = vec![];
            while k < prev.len() {
                let c = &prev[k];
                let mut matched = t <= c.first.saturating_add(window);
                if !matched && prev.len() > 1 {
                    prev.remove(k);
                    continue;
                }
                matched = matched && !c.path.contains(&uid);
                if matched && mode.increase {
                    matched = c.last < t;
                }
                if matched {
                    let mut path = c.path.clone();
                    path.push(uid);
                    grown.push(Chain {
                        first: c.first,
                        last: t,
                        path,
                    });
                    if idx + 1 == steps {
                        return steps as u8;
                    }
                }
                k += 1;
            }
            lv[idx - 1] = prev;
            lv[idx].extend(grown);
        }
    }
    reached(&nonempty(&lv))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rows: &[(i64, u32)], steps: usize, window: i64, mode: &str) -> u8 {
        let tokens: Vec<String> = mode
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let rows: Vec<(i64, u32, u64)> = rows
            .iter()
            .enumerate()
            .map(|(i, &(t, m))| (t, m, i as u64 + 1))
            .collect();
        level(&rows, steps, window, Mode::parse(&tokens).unwrap())
    }

    #[test]
    fn modes() {
        // A=1, B=2, C=4; D meets no condition.
        let abdc = [(1, 1), (2, 2), (3, 0), (4, 4)];
        assert_eq!(run(&abdc, 3, 10, ""), 3);
        assert_eq!(run(&abdc, 3, 10, "strict_order"), 2);
        assert_eq!(run(&abdc, 3, 2, ""), 2);
        // A, A, B: dedup stops at the second A.
        assert_eq!(run(&[(1, 1), (2, 1), (3, 2)], 2, 10, ""), 2);
        // The same row for two steps only without strict_once.
        assert_eq!(run(&[(1, 3)], 2, 10, ""), 2);
        assert_eq!(run(&[(1, 3)], 2, 10, "strict_once"), 1);
        // strict_increase: ClickHouse's scan loses A@1 → B@2 after A@2; we do not.
        let loss = [(1, 1), (2, 1), (2, 2)];
        assert_eq!(run(&loss, 2, 10, "strict_increase"), 2);
        assert_eq!(run(&loss, 2, 10, "strict_increase,compat=clickhouse"), 1);
        assert!(Mode::parse(&["allow_reentry".into()]).is_err());
        assert!(Mode::parse(&["bogus".into()]).is_err());
    }
}
