//! A size limit for the functions that build values from numbers rather than from data.
//!
//! Arrays: `range`/`generate_series` called as scalars (`SELECT range(1, 3000000000)`) and
//! `array_repeat`. DataFusion allocates their whole result up front, so one short
//! statement could ask for tens of gigabytes and get the server killed for running out of
//! memory. Past PostgreSQL's largest array (134,217,727 elements, its `MaxArraySize`) in
//! one call — one row, or all the rows of one batch together — they fail with SQLSTATE 54000
//! like PostgreSQL's "array size exceeds the maximum allowed". The table function
//! `generate_series` streams its rows and is not limited.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, FieldRef, Int64Type, IntervalMonthDayNanoType, TimeUnit,
};
use datafusion::common::Result;
use datafusion::error::DataFusionError;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
};

use crate::error::FunctionError;

/// The most elements one call may build (PostgreSQL's `MaxArraySize`).
pub const MAX_ELEMENTS: u64 = 134_217_727;

/// The most characters (`lpad`, `rpad`) or bytes (`repeat`) one call may build
/// (PostgreSQL's largest value, 1 GB, less one byte).
pub const MAX_TEXT: u64 = 1_073_741_823;

/// What the guarded function builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Builds {
    /// `range(start, stop[, step])` (stop excluded) or `generate_series` (included).
    Series,
    /// `array_repeat(element, count)`.
    Repeat,
    /// `lpad`/`rpad(text, length[, fill])`: characters.
    Pad,
    /// `repeat(text, count)`: bytes.
    RepeatText,
}

/// A DataFusion function that builds arrays or text, with the limit in front.
#[derive(Debug)]
struct Guarded {
    inner: Arc<dyn ScalarUDFImpl>,
    /// The name it is registered under (for errors).
    name: &'static str,
    builds: Builds,
}

impl PartialEq for Guarded {
    fn eq(&self, other: &Self) -> bool {
        self.builds == other.builds && self.inner.name() == other.inner.name()
    }
}

impl Eq for Guarded {}

impl Hash for Guarded {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.builds.hash(state);
        self.inner.name().hash(state);
    }
}

/// Replace `range`, `generate_series`, `array_repeat`, `lpad`, `rpad` and `repeat` in
/// `registry` with guarded ones.
pub fn register(registry: &mut dyn FunctionRegistry) -> Result<()> {
    for (name, builds) in [
        ("range", Builds::Series),
        ("generate_series", Builds::Series),
        ("array_repeat", Builds::Repeat),
        ("lpad", Builds::Pad),
        ("rpad", Builds::Pad),
        ("repeat", Builds::RepeatText),
    ] {
        let Ok(udf) = registry.udf(name) else {
            continue;
        };
        let guarded = Guarded {
            inner: udf.inner().clone(),
            name,
            builds,
        };
        registry.register_udf(Arc::new(ScalarUDF::new_from_impl(guarded)))?;
    }
    Ok(())
}

/// Argument `i` for every row as 64-bit integers (timestamps and dates as µs), or `None`
/// where it has no such form.
fn as_i64(args: &[ColumnarValue], i: usize, rows: usize) -> Result<Option<Vec<Option<i64>>>> {
    let Some(a) = args.get(i) else {
        return Ok(None);
    };
    let a = a.to_array(rows)?;
    let micros = match a.data_type() {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => cast(&a, &DataType::Int64)?,
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => cast(
            &cast(&a, &DataType::Timestamp(TimeUnit::Microsecond, None))?,
            &DataType::Int64,
        )?,
        _ => return Ok(None),
    };
    Ok(Some(micros.as_primitive::<Int64Type>().iter().collect()))
}

/// A step for every row, in the unit of the bounds: integers as they are, intervals as
/// µs (a month counted as 28 days, so the count is never underestimated).
fn steps(args: &[ColumnarValue], rows: usize) -> Result<Option<Vec<Option<i64>>>> {
    let Some(a) = args.get(2) else {
        return Ok(Some(vec![Some(1); rows]));
    };
    let a = a.to_array(rows)?;
    if let DataType::Interval(_) = a.data_type() {
        let m = cast(
            &a,
            &DataType::Interval(datafusion::arrow::datatypes::IntervalUnit::MonthDayNano),
        )?;
        let m = m.as_primitive::<IntervalMonthDayNanoType>();
        return Ok(Some(
            m.iter()
                .map(|v| {
                    v.map(|v| {
                        let days = i64::from(v.months) * 28 + i64::from(v.days);
                        days.saturating_mul(86_400_000_000)
                            .saturating_add(v.nanoseconds / 1000)
                    })
                })
                .collect(),
        ));
    }
    as_i64(args, 2, rows)
}

impl Guarded {
    /// Elements this call would build, if it can tell.
    fn elements(&self, args: &[ColumnarValue], rows: usize) -> Result<Option<u64>> {
        match self.builds {
            Builds::Series => {
                let (starts, stops) = if args.len() == 1 {
                    (Some(vec![Some(0); rows]), as_i64(args, 0, rows)?)
                } else {
                    (as_i64(args, 0, rows)?, as_i64(args, 1, rows)?)
                };
                let (Some(starts), Some(stops), Some(steps)) = (starts, stops, steps(args, rows)?)
                else {
                    return Ok(None);
                };
                let mut total = 0u64;
                for ((a, b), s) in starts.iter().zip(&stops).zip(&steps) {
                    if let (Some(a), Some(b), Some(s)) = (a, b, s)
                        && *s != 0
                    {
                        let span = (i128::from(*b) - i128::from(*a)).unsigned_abs();
                        let n = span / i128::from(*s).unsigned_abs() + 1;
                        total = total.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                    }
                }
                Ok(Some(total))
            }
            Builds::Pad => Ok(as_i64(args, 1, rows)?.map(|lengths| {
                lengths
                    .iter()
                    .fold(0u64, |t, n| t.saturating_add(n.unwrap_or(0).max(0) as u64))
            })),
            Builds::RepeatText => {
                let Some(counts) = as_i64(args, 1, rows)? else {
                    return Ok(None);
                };
                let text = cast(&args[0].to_array(rows)?, &DataType::Utf8View)?;
                let text = text.as_string_view();
                Ok(Some(counts.iter().enumerate().fold(0u64, |t, (r, c)| {
                    let len = if text.is_valid(r) {
                        text.value(r).len() as u64
                    } else {
                        0
                    };
                    t.saturating_add((c.unwrap_or(0).max(0) as u64).saturating_mul(len))
                })))
            }
            Builds::Repeat => {
                let Some(counts) = as_i64(args, 1, rows)? else {
                    return Ok(None);
                };
                // Repeating a list repeats its elements.
                let each: Vec<u64> = match args[0].to_array(rows)? {
                    a if matches!(a.data_type(), DataType::List(_)) => {
                        let l = a.as_list::<i32>();
                        (0..rows).map(|r| l.value_length(r).max(0) as u64).collect()
                    }
                    a if matches!(a.data_type(), DataType::LargeList(_)) => {
                        let l = a.as_list::<i64>();
                        (0..rows).map(|r| l.value_length(r).max(0) as u64).collect()
                    }
                    _ => vec![1; rows],
                };
                Ok(Some(counts.iter().zip(each).fold(0u64, |t, (c, e)| {
                    t.saturating_add(c.unwrap_or(0).max(0) as u64 * e.max(1))
                })))
            }
        }
    }
}

impl ScalarUDFImpl for Guarded {
    delegate_to_inner!();
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let limit = match self.builds {
            Builds::Series | Builds::Repeat => MAX_ELEMENTS,
            Builds::Pad | Builds::RepeatText => MAX_TEXT,
        };
        if let Some(n) = self.elements(&args.args, args.number_rows)?
            && n > limit
        {
            let message = match self.builds {
                Builds::Series => format!(
                    "would build {n} array elements, more than the maximum allowed ({limit}); \
                     for many rows use generate_series(…) in FROM"
                ),
                Builds::Repeat => format!(
                    "would build {n} array elements, more than the maximum allowed ({limit})"
                ),
                Builds::Pad => {
                    format!("requested length too large: {n} characters, more than {limit}")
                }
                Builds::RepeatText => {
                    format!("requested length too large: {n} bytes, more than {limit}")
                }
            };
            return Err(DataFusionError::External(Box::new(
                FunctionError::TooLarge {
                    function: self.name,
                    message,
                },
            )));
        }
        self.inner.invoke_with_args(args)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
}
