//! What the journey functions share (functions.md §2.0): event times as i64 microseconds
//! from any timestamp, date or integer column; `window`/`gap` arguments as INTERVALs or
//! integers; constant configuration arguments; mode strings.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Int64Type, IntervalDayTimeType, IntervalMonthDayNanoType,
    IntervalUnit, TimeUnit, TimestampMicrosecondType,
};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::scalar::ScalarValue;

use crate::error::invalid;

/// Microseconds per day.
const DAY_US: i64 = 86_400_000_000;

/// Is `t` a type an event time may have?
pub fn is_time_type(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(_, _)
            | DataType::Date32
            | DataType::Date64
            | DataType::Int64
            | DataType::Int32
            | DataType::UInt32
            | DataType::UInt64
            | DataType::Null
    )
}

/// How many microseconds one unit of an integer `window` is for events of type `t`:
/// the timestamp's own unit (seconds for `Timestamp(s)`), a day for dates, 1 for integers.
pub fn unit_us(t: &DataType) -> f64 {
    match t {
        DataType::Timestamp(TimeUnit::Second, _) => 1e6,
        DataType::Timestamp(TimeUnit::Millisecond, _) => 1e3,
        DataType::Timestamp(TimeUnit::Microsecond, _) => 1.0,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => 1e-3,
        DataType::Date32 | DataType::Date64 => DAY_US as f64,
        _ => 1.0,
    }
}

/// Event times as i64: microseconds since the epoch for timestamps and dates, the value
/// itself for integers. NULL stays NULL.
pub fn times(function: &'static str, a: &ArrayRef) -> Result<Vec<Option<i64>>> {
    let us: ArrayRef = match a.data_type() {
        DataType::Timestamp(_, _) => cast(a, &DataType::Timestamp(TimeUnit::Microsecond, None))?,
        DataType::Date32 => {
            let d = a.as_primitive::<Date32Type>();
            return Ok(d.iter().map(|v| v.map(|d| i64::from(d) * DAY_US)).collect());
        }
        DataType::Date64 => {
            let d = a.as_primitive::<Date64Type>();
            return Ok(d.iter().map(|v| v.map(|ms| ms * 1000)).collect());
        }
        DataType::Null => return Ok(vec![None; a.len()]),
        t if t.is_integer() => {
            let i = cast(a, &DataType::Int64)?;
            return Ok(i.as_primitive::<Int64Type>().iter().collect());
        }
        other => {
            return Err(invalid(
                function,
                format!("the time argument must be a timestamp, date or integer, not {other}"),
            ));
        }
    };
    Ok(us
        .as_primitive::<TimestampMicrosecondType>()
        .iter()
        .collect())
}

/// The constant value of a physical argument expression, if it is a literal.
pub fn literal(e: &Arc<dyn PhysicalExpr>) -> Option<&ScalarValue> {
    e.downcast_ref::<Literal>().map(Literal::value)
}

/// A duration argument (`window`, `gap`) in the units of the event times of type
/// `time_type`: an INTERVAL without months (microseconds; a day is 24 hours) or a
/// non-negative integer in the time column's unit. NULL and negative values are errors.
pub fn duration(
    function: &'static str,
    what: &str,
    v: &ScalarValue,
    time_type: &DataType,
) -> Result<i64> {
    let err = |m: String| invalid(function, format!("{what}: {m}"));
    if v.is_null() {
        return Err(err("must not be NULL".into()));
    }
    let integer_time = time_type.is_integer();
    let us: i64 = match v {
        ScalarValue::IntervalMonthDayNano(Some(i)) => {
            if i.months != 0 {
                return Err(err(
                    "month and year intervals have no fixed length; use days".into(),
                ));
            }
            let (_, days, nanos) = IntervalMonthDayNanoType::to_parts(*i);
            i64::from(days) * DAY_US + nanos / 1000
        }
        ScalarValue::IntervalDayTime(Some(i)) => {
            let (days, ms) = IntervalDayTimeType::to_parts(*i);
            i64::from(days) * DAY_US + i64::from(ms) * 1000
        }
        ScalarValue::IntervalYearMonth(_) => {
            return Err(err(
                "month and year intervals have no fixed length; use days".into(),
            ));
        }
        other => {
            let n = match other.cast_to(&DataType::Int64) {
                Ok(ScalarValue::Int64(Some(n))) => n,
                _ => {
                    return Err(err(format!(
                        "must be an INTERVAL or an integer, not {}",
                        other.data_type()
                    )));
                }
            };
            if n < 0 {
                return Err(err(format!("must not be negative ({n})")));
            }
            return Ok(if integer_time {
                n
            } else {
                (n as f64 * unit_us(time_type)).round() as i64
            });
        }
    };
    if us < 0 {
        return Err(err("must not be negative".into()));
    }
    if integer_time {
        return Err(err(
            "an INTERVAL needs timestamp or date times; with integer times give an integer".into(),
        ));
    }
    Ok(us)
}

/// Is `t` an interval type?
pub fn is_interval(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Interval(IntervalUnit::MonthDayNano | IntervalUnit::DayTime)
    )
}

/// Boolean condition columns: `None` for NULL.
pub fn conditions(function: &'static str, cols: &[ArrayRef]) -> Result<Vec<Vec<Option<bool>>>> {
    cols.iter()
        .map(|c| {
            let b = match c.data_type() {
                DataType::Boolean => c.clone(),
                DataType::Null => return Ok(vec![None; c.len()]),
                t if t.is_integer() => cast(c, &DataType::Boolean)?,
                other => {
                    return Err(invalid(
                        function,
                        format!("conditions must be boolean, not {other}"),
                    ));
                }
            };
            Ok(b.as_boolean().iter().collect())
        })
        .collect()
}

/// The comma-separated, case-insensitive tokens of a mode string.
pub fn mode_tokens(function: &'static str, v: &ScalarValue) -> Result<Vec<String>> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Ok(s
            .split(',')
            .map(|t| t.trim().to_ascii_lowercase().replace(' ', ""))
            .filter(|t| !t.is_empty())
            .collect()),
        v if v.is_null() => Err(invalid(function, "the mode must not be NULL")),
        other => Err(invalid(
            function,
            format!("the mode must be text, not {}", other.data_type()),
        )),
    }
}

/// A constant text argument.
pub fn text_literal(function: &'static str, what: &str, v: &ScalarValue) -> Result<String> {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Ok(s.clone()),
        v if v.is_null() => Err(invalid(function, format!("{what} must not be NULL"))),
        other => Err(invalid(
            function,
            format!("{what} must be text, not {}", other.data_type()),
        )),
    }
}

/// Is `t` a text type?
pub fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// `n` must be an integer column's i64 view, or an error naming `what`.
pub fn ints(function: &'static str, what: &str, a: &ArrayRef) -> Result<Vec<Option<i64>>> {
    if !a.data_type().is_integer() && a.data_type() != &DataType::Null {
        return Err(invalid(
            function,
            format!("{what} must be an integer, not {}", a.data_type()),
        ));
    }
    let i = cast(a, &DataType::Int64)?;
    Ok(i.as_primitive::<Int64Type>().iter().collect())
}

/// The number of elements of `a` (helper for evaluators that get no row count).
pub fn len(a: &[ArrayRef]) -> usize {
    a.first().map_or(0, |a| a.len())
}

/// Most conditions an event function takes (a bitmask of 32).
pub const MAX_CONDITIONS: usize = 32;

/// The layout `(config, ts, cond1, …, condN [, mode text])` shared by the funnel and
/// sequence aggregates: (N, whether a trailing mode is present).
pub fn condition_layout(
    function: &'static str,
    usage: &str,
    types: &[DataType],
) -> Result<(usize, bool)> {
    if types.len() < 3 {
        return Err(invalid(function, format!("takes {usage}")));
    }
    let has_mode = types.len() > 3 && is_text(&types[types.len() - 1]);
    let n = types.len() - 2 - usize::from(has_mode);
    if n > MAX_CONDITIONS {
        return Err(invalid(
            function,
            format!("at most {MAX_CONDITIONS} conditions, got {n}"),
        ));
    }
    Ok((n, has_mode))
}

/// Coerce `(window, ts, cond1, …, condN [, text])` (the funnels' layout, `n` conditions):
/// the window an INTERVAL or integer, the time a time type, the conditions boolean, the
/// trailing text UTF-8.
pub fn coerce_window_layout(
    function: &'static str,
    types: &[DataType],
    n: usize,
    has_text: bool,
) -> Result<Vec<DataType>> {
    let mut out = types.to_vec();
    if !(is_interval(&types[0]) || types[0].is_integer()) {
        return Err(invalid(
            function,
            format!("window must be an INTERVAL or an integer, not {}", types[0]),
        ));
    }
    if !is_time_type(&types[1]) {
        return Err(invalid(
            function,
            format!("ts must be a timestamp, date or integer, not {}", types[1]),
        ));
    }
    coerce_conditions(function, &mut out, 2..2 + n)?;
    if has_text {
        let last = out.len() - 1;
        out[last] = DataType::Utf8;
    }
    Ok(out)
}

/// Coerce the condition arguments `out[range]` to boolean (NULL literals become boolean);
/// other types are an error.
pub fn coerce_conditions(
    function: &'static str,
    out: &mut [DataType],
    range: std::ops::Range<usize>,
) -> Result<()> {
    for t in &mut out[range] {
        match t {
            DataType::Boolean => {}
            DataType::Null => *t = DataType::Boolean,
            other => {
                return Err(invalid(
                    function,
                    format!("conditions must be boolean, not {other}"),
                ));
            }
        }
    }
    Ok(())
}

/// A state field holding a list of `t`, named after the aggregate.
pub fn list_state(
    aggregate: &str,
    name: &str,
    t: DataType,
) -> datafusion::arrow::datatypes::FieldRef {
    Arc::new(datafusion::arrow::datatypes::Field::new(
        format!("{aggregate}[{name}]"),
        DataType::List(Arc::new(
            datafusion::arrow::datatypes::Field::new_list_field(t, true),
        )),
        true,
    ))
}

/// A list value holding all of `values` (one group's result or state).
pub fn one_list(values: ArrayRef) -> ScalarValue {
    ScalarValue::List(Arc::new(datafusion::arrow::array::ListArray::new(
        Arc::new(datafusion::arrow::datatypes::Field::new_list_field(
            values.data_type().clone(),
            true,
        )),
        datafusion::arrow::buffer::OffsetBuffer::from_lengths([values.len()]),
        values,
        None,
    )))
}
