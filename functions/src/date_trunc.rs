//! `date_trunc` with a fast path: DataFusion's own `date_trunc` goes through a calendar per
//! row even for UTC, where `second`, `minute`, `hour`, `day` and `week` (from Monday) are
//! plain integer arithmetic. This wrapper does that arithmetic for timestamps without a
//! time zone or in UTC, and hands every other call to DataFusion's function. Everything
//! else about the function (name, signature, return type, ordering) is DataFusion's.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, FieldRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::error::Result;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
};
use datafusion::scalar::ScalarValue;

/// `date_trunc`, DataFusion's, with the UTC fast path.
pub fn date_trunc() -> ScalarUDF {
    ScalarUDF::new_from_impl(FastDateTrunc {
        inner: datafusion::functions::datetime::date_trunc(),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct FastDateTrunc {
    inner: Arc<ScalarUDF>,
}

/// Seconds in a fixed granularity, and whether weeks start on Monday.
fn period_seconds(granularity: &str) -> Option<(i64, bool)> {
    match granularity.to_ascii_lowercase().as_str() {
        "second" => Some((1, false)),
        "minute" => Some((60, false)),
        "hour" => Some((3600, false)),
        "day" => Some((86_400, false)),
        "week" => Some((604_800, true)),
        _ => None,
    }
}

/// The start of the period holding `t` (in units of `per_second` per second).
fn truncate(t: i64, period: i64, week: bool, per_second: i64) -> i64 {
    if week {
        // Day 0 (1970-01-01) was a Thursday: weeks start 3 days earlier.
        let day = 86_400 * per_second;
        let days = t.div_euclid(day);
        (days - (days + 3).rem_euclid(7)) * day
    } else {
        let p = period * per_second;
        t.div_euclid(p) * p
    }
}

fn utc(tz: &Option<Arc<str>>) -> bool {
    match tz.as_deref() {
        None => true,
        Some(z) => matches!(z, "UTC" | "utc" | "+00:00" | "Z" | "Etc/UTC"),
    }
}

fn fast(args: &ScalarFunctionArgs) -> Option<Result<ColumnarValue>> {
    let granularity = match &args.args[0] {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(g))
            | ScalarValue::Utf8View(Some(g))
            | ScalarValue::LargeUtf8(Some(g)),
        ) => g,
        _ => return None,
    };
    let (period, week) = period_seconds(granularity)?;
    let DataType::Timestamp(unit, tz) = args.args[1].data_type() else {
        return None;
    };
    if !utc(&tz) {
        return None;
    }
    let per_second = match unit {
        TimeUnit::Second => 1,
        TimeUnit::Millisecond => 1_000,
        TimeUnit::Microsecond => 1_000_000,
        TimeUnit::Nanosecond => 1_000_000_000,
    };
    let f = |t: i64| truncate(t, period, week, per_second);
    let array: ArrayRef = match &args.args[1] {
        ColumnarValue::Array(a) => a.clone(),
        ColumnarValue::Scalar(s) => match s.to_array() {
            Ok(a) => a,
            Err(e) => return Some(Err(e)),
        },
    };
    let out: ArrayRef = match unit {
        TimeUnit::Second => Arc::new(
            array
                .as_primitive::<TimestampSecondType>()
                .unary::<_, TimestampSecondType>(f)
                .with_timezone_opt(tz),
        ),
        TimeUnit::Millisecond => Arc::new(
            array
                .as_primitive::<TimestampMillisecondType>()
                .unary::<_, TimestampMillisecondType>(f)
                .with_timezone_opt(tz),
        ),
        TimeUnit::Microsecond => Arc::new(
            array
                .as_primitive::<TimestampMicrosecondType>()
                .unary::<_, TimestampMicrosecondType>(f)
                .with_timezone_opt(tz),
        ),
        TimeUnit::Nanosecond => Arc::new(
            array
                .as_primitive::<TimestampNanosecondType>()
                .unary::<_, TimestampNanosecondType>(f)
                .with_timezone_opt(tz),
        ),
    };
    // The type DataFusion's function promised for this call.
    let want = args.return_field.data_type();
    let out = if out.data_type() == want {
        out
    } else {
        match cast(&out, want) {
            Ok(a) => a,
            Err(e) => return Some(Err(e.into())),
        }
    };
    Some(Ok(match &args.args[1] {
        ColumnarValue::Scalar(_) => match ScalarValue::try_from_array(&out, 0) {
            Ok(s) => ColumnarValue::Scalar(s),
            Err(e) => return Some(Err(e)),
        },
        ColumnarValue::Array(_) => ColumnarValue::Array(out),
    }))
}

impl ScalarUDFImpl for FastDateTrunc {
    delegate_to_inner!();
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match fast(&args) {
            Some(out) => out,
            None => self.inner.invoke_with_args(args),
        }
    }

    fn output_ordering(&self, input: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(input)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weeks_start_on_monday_and_negative_times_floor() {
        let us = 1_000_000;
        // 1970-01-01 00:00:01 (Thursday) → Monday 1969-12-29.
        assert_eq!(truncate(us, 604_800, true, us), -3 * 86_400 * us);
        // 1969-12-31 23:59:59.5 → 1969-12-31 00:00.
        assert_eq!(truncate(-us / 2, 86_400, false, us), -86_400 * us);
        assert_eq!(truncate(-us / 2, 1, false, us), -us);
    }
}
