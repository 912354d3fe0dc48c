//! Sessionization and event-window functions (functions.md §C), window functions over
//! `OVER (PARTITION BY person ORDER BY ts)`: `sessionize`, `conditional_true_event`,
//! `conditional_change_event`, `next_touchpoint`, `prev_touchpoint`, `time_since_prev`,
//! `time_to_next`. They read the whole partition in the window's order (a frame clause is
//! ignored); rows that tie in that order keep the order the window gives them, so add a
//! tie-breaker (`event_id`) to ORDER BY when ties matter.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Int64Array, IntervalMonthDayNanoArray, UInt32Array,
};
use datafusion::arrow::compute::kernels::cmp::distinct;
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, IntervalMonthDayNano, IntervalUnit};
use datafusion::error::Result;
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{
    PartitionEvaluator, Signature, Volatility, WindowUDF, WindowUDFImpl,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;
use crate::events;

/// The functions of this module.
pub fn functions() -> Vec<WindowUDF> {
    [
        Kind::Sessionize,
        Kind::TrueEvent,
        Kind::ChangeEvent,
        Kind::Next,
        Kind::Prev,
        Kind::SincePrev,
        Kind::ToNext,
    ]
    .into_iter()
    .map(|kind| {
        WindowUDF::from(EventWindow {
            kind,
            signature: Signature::user_defined(Volatility::Immutable),
        })
    })
    .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Sessionize,
    TrueEvent,
    ChangeEvent,
    Next,
    Prev,
    SincePrev,
    ToNext,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Sessionize => "sessionize",
            Kind::TrueEvent => "conditional_true_event",
            Kind::ChangeEvent => "conditional_change_event",
            Kind::Next => "next_touchpoint",
            Kind::Prev => "prev_touchpoint",
            Kind::SincePrev => "time_since_prev",
            Kind::ToNext => "time_to_next",
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct EventWindow {
    kind: Kind,
    signature: Signature,
}

fn interval() -> DataType {
    DataType::Interval(IntervalUnit::MonthDayNano)
}

/// The roles of `next/prev_touchpoint`'s optional arguments: (n, cond) positions.
fn lead_args(name: &'static str, types: &[DataType]) -> Result<(Option<usize>, Option<usize>)> {
    match types.len() {
        1 => Ok((None, None)),
        2 if types[1] == DataType::Boolean => Ok((None, Some(1))),
        2 if types[1].is_integer() => Ok((Some(1), None)),
        3 if types[1].is_integer() && matches!(types[2], DataType::Boolean | DataType::Null) => {
            Ok((Some(1), Some(2)))
        }
        _ => Err(invalid(
            name,
            "takes (value [, n integer] [, cond boolean])",
        )),
    }
}

/// `sessionize`'s optional arguments: (max_duration, new_session_when) positions.
fn session_args(types: &[DataType]) -> Result<(Option<usize>, Option<usize>)> {
    let name = "sessionize";
    let duration = |t: &DataType| events::is_interval(t) || t.is_integer();
    let cond = |t: &DataType| matches!(t, DataType::Boolean | DataType::Null);
    if types.len() < 2 || !events::is_time_type(&types[0]) || !duration(&types[1]) {
        return Err(invalid(
            name,
            "takes (ts, gap INTERVAL [, max_duration INTERVAL] [, new_session_when boolean])",
        ));
    }
    match types.len() {
        2 => Ok((None, None)),
        3 if duration(&types[2]) => Ok((Some(2), None)),
        3 if cond(&types[2]) => Ok((None, Some(2))),
        4 if duration(&types[2]) && cond(&types[3]) => Ok((Some(2), Some(3))),
        _ => Err(invalid(
            name,
            "takes (ts, gap INTERVAL [, max_duration INTERVAL] [, new_session_when boolean])",
        )),
    }
}

impl WindowUDFImpl for EventWindow {
    fn name(&self) -> &str {
        self.kind.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.kind.name();
        let mut out = types.to_vec();
        let to_bool = |t: &mut DataType| {
            if *t == DataType::Null {
                *t = DataType::Boolean;
            }
        };
        match self.kind {
            Kind::Sessionize => {
                let (_, cond) = session_args(types)?;
                if let Some(c) = cond {
                    to_bool(&mut out[c]);
                }
            }
            Kind::TrueEvent => {
                if types.len() != 1 || !matches!(types[0], DataType::Boolean | DataType::Null) {
                    return Err(invalid(name, "takes one boolean argument"));
                }
                to_bool(&mut out[0]);
            }
            Kind::ChangeEvent => {
                if types.len() != 1 {
                    return Err(invalid(name, "takes one argument"));
                }
            }
            Kind::Next | Kind::Prev => {
                let (_, cond) = lead_args(name, types)?;
                if let Some(c) = cond {
                    to_bool(&mut out[c]);
                }
            }
            Kind::SincePrev | Kind::ToNext => {
                let ok = match types {
                    [t] => events::is_time_type(t),
                    [t, c] => {
                        events::is_time_type(t) && matches!(c, DataType::Boolean | DataType::Null)
                    }
                    _ => false,
                };
                if !ok {
                    return Err(invalid(name, "takes (ts [, cond boolean])"));
                }
                if out.len() == 2 {
                    to_bool(&mut out[1]);
                }
            }
        }
        Ok(out)
    }
    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        let input = args.input_fields();
        let t = match self.kind {
            Kind::Sessionize | Kind::TrueEvent | Kind::ChangeEvent => DataType::Int64,
            Kind::Next | Kind::Prev => input
                .first()
                .map_or(DataType::Null, |f| f.data_type().clone()),
            Kind::SincePrev | Kind::ToNext => match input.first().map(|f| f.data_type()) {
                Some(t) if t.is_integer() => DataType::Int64,
                _ => interval(),
            },
        };
        Ok(Arc::new(Field::new(args.name(), t, true)))
    }
    fn partition_evaluator(
        &self,
        args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        let name = self.kind.name();
        let exprs = args.input_exprs();
        let types: Vec<DataType> = args
            .input_fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let constant = |i: usize, what: &str| -> Result<ScalarValue> {
            events::literal(&exprs[i])
                .cloned()
                .ok_or_else(|| invalid(name, format!("{what} must be a constant")))
        };
        let eval = match self.kind {
            Kind::Sessionize => {
                let (max, cond) = session_args(&types)?;
                let gap = events::duration(name, "gap", &constant(1, "gap")?, &types[0])?;
                let max = match max {
                    Some(i) => Some(events::duration(
                        name,
                        "max_duration",
                        &constant(i, "max_duration")?,
                        &types[0],
                    )?),
                    None => None,
                };
                Evaluator::Sessionize { gap, max, cond }
            }
            Kind::Next | Kind::Prev => {
                let (n, cond) = lead_args(name, &types)?;
                let n = match n {
                    Some(i) => match constant(i, "n")?.cast_to(&DataType::Int64)? {
                        ScalarValue::Int64(Some(n)) if n >= 1 => n as usize,
                        other => {
                            return Err(invalid(
                                name,
                                format!("n must be at least 1, not {other}"),
                            ));
                        }
                    },
                    None => 1,
                };
                Evaluator::Lead {
                    forward: self.kind == Kind::Next,
                    n,
                    cond,
                }
            }
            Kind::SincePrev | Kind::ToNext => Evaluator::Gap {
                forward: self.kind == Kind::ToNext,
                integer: types[0].is_integer(),
            },
            Kind::TrueEvent => Evaluator::TrueEvent,
            Kind::ChangeEvent => Evaluator::ChangeEvent,
        };
        Ok(Box::new(EventEvaluator { name, eval }))
    }
}

#[derive(Debug)]
enum Evaluator {
    Sessionize {
        gap: i64,
        max: Option<i64>,
        cond: Option<usize>,
    },
    TrueEvent,
    ChangeEvent,
    Lead {
        forward: bool,
        n: usize,
        cond: Option<usize>,
    },
    Gap {
        forward: bool,
        integer: bool,
    },
}

#[derive(Debug)]
struct EventEvaluator {
    name: &'static str,
    eval: Evaluator,
}

fn bools(name: &'static str, values: &[ArrayRef], i: Option<usize>, n: usize) -> Result<Vec<bool>> {
    Ok(match i {
        Some(i) => events::conditions(name, &values[i..=i])?
            .remove(0)
            .into_iter()
            .map(|v| v == Some(true))
            .collect(),
        None => vec![true; n],
    })
}

impl PartitionEvaluator for EventEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let name = self.name;
        match &self.eval {
            Evaluator::Sessionize { gap, max, cond } => {
                let ts = events::times(name, &values[0])?;
                let new_when = match cond {
                    Some(_) => bools(name, values, *cond, num_rows)?,
                    None => vec![false; num_rows],
                };
                let mut out = Vec::with_capacity(num_rows);
                let mut session = 0i64;
                let mut prev: Option<i64> = None;
                let mut start = 0i64;
                for (i, t) in ts.iter().enumerate() {
                    let Some(t) = *t else {
                        out.push(None);
                        continue;
                    };
                    let new = match prev {
                        None => true,
                        Some(p) => {
                            new_when[i]
                                || (t > p && (t - p >= *gap || max.is_some_and(|m| t - start >= m)))
                        }
                    };
                    if new {
                        session += 1;
                        start = t;
                    }
                    prev = Some(t);
                    out.push(Some(session));
                }
                Ok(Arc::new(Int64Array::from(out)))
            }
            Evaluator::TrueEvent => {
                let c = bools(name, values, Some(0), num_rows)?;
                let mut n = 0i64;
                Ok(Arc::new(Int64Array::from_iter_values(c.into_iter().map(
                    |b| {
                        n += i64::from(b);
                        n
                    },
                ))))
            }
            Evaluator::ChangeEvent => {
                let a = &values[0];
                let mut out = Vec::with_capacity(num_rows);
                if num_rows > 0 {
                    out.push(0i64);
                    let changed = distinct(&a.slice(1, num_rows - 1), &a.slice(0, num_rows - 1))?;
                    let mut n = 0;
                    for i in 0..num_rows - 1 {
                        n += i64::from(changed.value(i));
                        out.push(n);
                    }
                }
                Ok(Arc::new(Int64Array::from(out)))
            }
            Evaluator::Lead { forward, n, cond } => {
                let v = &values[0];
                let ok = bools(name, values, *cond, num_rows)?;
                let qualifying: Vec<u32> = (0..num_rows)
                    .filter(|&i| ok[i] && !v.is_null(i))
                    .map(|i| i as u32)
                    .collect();
                let mut idx = Vec::with_capacity(num_rows);
                for i in 0..num_rows as u32 {
                    // Position of the first qualifying row after (or the last before) i.
                    let at = qualifying.partition_point(|&q| q <= i);
                    let target = if *forward {
                        qualifying.get(at + n - 1).copied()
                    } else {
                        let before = qualifying.partition_point(|&q| q < i);
                        before.checked_sub(*n).map(|k| qualifying[k])
                    };
                    idx.push(target);
                }
                Ok(take(v.as_ref(), &UInt32Array::from(idx), None)?)
            }
            Evaluator::Gap { forward, integer } => {
                let ts = events::times(name, &values[0])?;
                let ok = bools(name, values, values.get(1).map(|_| 1), num_rows)?;
                let mut gaps: Vec<Option<i64>> = vec![None; num_rows];
                let order: Box<dyn Iterator<Item = usize>> = if *forward {
                    Box::new((0..num_rows).rev())
                } else {
                    Box::new(0..num_rows)
                };
                let mut last: Option<i64> = None;
                for i in order {
                    let Some(t) = ts[i] else { continue };
                    gaps[i] = last.map(|l| if *forward { l - t } else { t - l });
                    if ok[i] {
                        last = Some(t);
                    }
                }
                if *integer {
                    return Ok(Arc::new(Int64Array::from(gaps)));
                }
                Ok(Arc::new(IntervalMonthDayNanoArray::from(
                    gaps.into_iter()
                        .map(|g| g.map(|us| IntervalMonthDayNano::new(0, 0, us * 1000)))
                        .collect::<Vec<_>>(),
                )))
            }
        }
    }
}
