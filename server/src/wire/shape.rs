//! Result columns PostgreSQL has no type for: a list of lists (`path_sequence`'s sessions,
//! which are ragged, so not a PostgreSQL multi-dimensional array), a list of structs
//! (`path_edges`), a struct or a map. They are sent as `text` holding JSON
//! (`[["web","store"],["app"]]`, `[{"step":1,"source":"a",…}]`), which every client and BI
//! tool can show and parse; `UNNEST` and `x['field']` in SQL still see the real types.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, DurationMicrosecondArray, RecordBatch, StringBuilder,
};
use datafusion::arrow::datatypes::{
    DataType, Field, IntervalMonthDayNanoType, IntervalUnit, Schema, SchemaRef,
};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

/// Can arrow-pg encode columns of type `t`?
fn encodable(t: &DataType) -> bool {
    match t {
        DataType::Struct(_) | DataType::Map(_, _) => false,
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => !matches!(
            f.data_type(),
            DataType::List(_)
                | DataType::LargeList(_)
                | DataType::FixedSizeList(_, _)
                | DataType::Struct(_)
                | DataType::Map(_, _)
        ),
        _ => true,
    }
}

/// The schema as sent: columns arrow-pg cannot encode become text.
pub fn wire_schema(schema: &SchemaRef) -> SchemaRef {
    if schema.fields().iter().all(|f| encodable(f.data_type())) {
        return schema.clone();
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| {
            if encodable(f.data_type()) {
                f.as_ref().clone()
            } else {
                Field::new(f.name(), DataType::Utf8, true)
            }
        })
        .collect();
    Arc::new(Schema::new(fields))
}

/// The batch as sent (see [`wire_schema`]). Also: arrow-pg 0.16 encodes a NULL
/// `Interval` as `00:00:00` (it ignores the validity of interval arrays), so an interval
/// column with NULLs whose values are all plain durations (no months or days) is sent as
/// a `Duration`, which it encodes, NULLs included, as the same `interval` type.
pub fn wire_batch(batch: RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let needs = |c: &ArrayRef| !encodable(c.data_type()) || null_interval(c).is_some();
    if !batch.columns().iter().any(needs) {
        return Ok(batch);
    }
    let columns = batch
        .columns()
        .iter()
        .map(|c| {
            if !encodable(c.data_type()) {
                json_column(c)
            } else if let Some(d) = null_interval(c) {
                Ok(d)
            } else {
                Ok(c.clone())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(&columns)
        .map(|(f, c)| Field::new(f.name(), c.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// An interval column with NULLs and only sub-day values, as microsecond durations.
fn null_interval(c: &ArrayRef) -> Option<ArrayRef> {
    if c.data_type() != &DataType::Interval(IntervalUnit::MonthDayNano) || c.null_count() == 0 {
        return None;
    }
    let i = c.as_primitive::<IntervalMonthDayNanoType>();
    if i.iter().flatten().any(|v| v.months != 0 || v.days != 0) {
        return None;
    }
    Some(Arc::new(DurationMicrosecondArray::from(
        i.iter()
            .map(|v| v.map(|v| v.nanoseconds / 1000))
            .collect::<Vec<_>>(),
    )))
}

fn json_column(a: &ArrayRef) -> Result<ArrayRef, ArrowError> {
    let mut out = StringBuilder::new();
    let mut s = String::new();
    for i in 0..a.len() {
        if a.is_null(i) {
            out.append_null();
            continue;
        }
        s.clear();
        json_value(a.as_ref(), i, &mut s)?;
        out.append_value(&s);
    }
    Ok(Arc::new(out.finish()))
}

/// Append element `i` of `a` as JSON.
fn json_value(a: &dyn Array, i: usize, out: &mut String) -> Result<(), ArrowError> {
    if a.is_null(i) {
        out.push_str("null");
        return Ok(());
    }
    match a.data_type() {
        DataType::List(_) => json_list(&a.as_list::<i32>().value(i), out),
        DataType::LargeList(_) => json_list(&a.as_list::<i64>().value(i), out),
        DataType::FixedSizeList(_, _) => json_list(&a.as_fixed_size_list().value(i), out),
        DataType::Struct(fields) => {
            let s = a.as_struct();
            out.push('{');
            for (k, (f, c)) in fields.iter().zip(s.columns()).enumerate() {
                if k > 0 {
                    out.push(',');
                }
                json_string(f.name(), out);
                out.push(':');
                json_value(c.as_ref(), i, out)?;
            }
            out.push('}');
            Ok(())
        }
        t => {
            let text = ArrayFormatter::try_new(a, &FormatOptions::default())?
                .value(i)
                .to_string();
            if t.is_numeric() || *t == DataType::Boolean {
                out.push_str(&text);
            } else {
                json_string(&text, out);
            }
            Ok(())
        }
    }
}

fn json_list(values: &ArrayRef, out: &mut String) -> Result<(), ArrowError> {
    out.push('[');
    for k in 0..values.len() {
        if k > 0 {
            out.push(',');
        }
        json_value(values.as_ref(), k, out)?;
    }
    out.push(']');
    Ok(())
}

fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ListBuilder, StringBuilder};

    #[test]
    fn nested_lists_become_json() {
        let mut b = ListBuilder::new(ListBuilder::new(StringBuilder::new()));
        b.values().values().append_value("a\"b");
        b.values().values().append_value("c");
        b.values().append(true);
        b.values().append(true);
        b.append(true);
        b.append_null();
        let a: ArrayRef = Arc::new(b.finish());
        let schema = Arc::new(Schema::new(vec![Field::new(
            "p",
            a.data_type().clone(),
            true,
        )]));
        let out = wire_batch(RecordBatch::try_new(schema, vec![a]).unwrap()).unwrap();
        let s = out.column(0).as_string::<i32>();
        assert_eq!(s.value(0), r#"[["a\"b","c"],[]]"#);
        assert!(s.is_null(1));
    }
}
