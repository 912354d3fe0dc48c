//! Helpers for scalar functions over text arguments.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::ColumnarValue;
use datafusion::scalar::ScalarValue;

/// Apply `f` row by row to text arguments (any string type, cast to UTF-8), producing
/// text. All-scalar arguments give a scalar; a scalar beside arrays (a region, a mode) is
/// read once, not expanded to a column.
pub fn map_text(
    args: &[ColumnarValue],
    rows: usize,
    mut f: impl FnMut(&[Option<&str>]) -> Result<Option<String>>,
) -> Result<ColumnarValue> {
    let scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    let n = if scalar { 1 } else { rows };
    // Each argument as a UTF-8 array: a column of `n` rows, or one row for a scalar.
    let arrays: Vec<(ArrayRef, bool)> = args
        .iter()
        .map(|a| {
            let (array, one) = match a {
                ColumnarValue::Scalar(s) => (s.to_array_of_size(1)?, true),
                ColumnarValue::Array(a) => (a.clone(), false),
            };
            Ok((
                datafusion::arrow::compute::cast(&array, &DataType::Utf8)?,
                one,
            ))
        })
        .collect::<Result<_>>()?;
    let strings: Vec<(&StringArray, bool)> = arrays
        .iter()
        .map(|(a, one)| {
            a.as_any()
                .downcast_ref::<StringArray>()
                .map(|s| (s, *one))
                .ok_or_else(|| DataFusionError::Internal("expected text".into()))
        })
        .collect::<Result<_>>()?;
    let mut out = StringBuilder::with_capacity(n, n * 16);
    let mut row: Vec<Option<&str>> = Vec::with_capacity(strings.len());
    for i in 0..n {
        row.clear();
        row.extend(strings.iter().map(|(s, one)| {
            let i = if *one { 0 } else { i };
            if s.is_null(i) { None } else { Some(s.value(i)) }
        }));
        out.append_option(f(&row)?);
    }
    let out: ArrayRef = Arc::new(out.finish());
    Ok(if scalar {
        ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
    } else {
        ColumnarValue::Array(out)
    })
}
