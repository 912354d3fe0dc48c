//! PostgreSQL catalog functions that clients call during introspection and that
//! `datafusion-pg-catalog` does not provide.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Int32Builder, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};

/// OIDs of the built-in types, by the names `to_regtype` accepts.
const TYPES: &[(&[&str], i32)] = &[
    (&["bool", "boolean"], 16),
    (&["bytea"], 17),
    (&["char", "\"char\""], 18),
    (&["name"], 19),
    (&["int8", "bigint"], 20),
    (&["int2", "smallint"], 21),
    (&["int4", "integer", "int"], 23),
    (&["text"], 25),
    (&["oid"], 26),
    (&["json"], 114),
    (&["float4", "real"], 700),
    (&["float8", "double precision"], 701),
    (&["bpchar", "character"], 1042),
    (&["varchar", "character varying"], 1043),
    (&["date"], 1082),
    (&["time", "time without time zone"], 1083),
    (&["timestamp", "timestamp without time zone"], 1114),
    (&["timestamptz", "timestamp with time zone"], 1184),
    (&["interval"], 1186),
    (&["numeric", "decimal"], 1700),
    (&["uuid"], 2950),
    (&["jsonb"], 3802),
];

/// The OID of a built-in type name, as `to_regtype` resolves it.
pub fn type_oid(name: &str) -> Option<i32> {
    let n = name.trim().to_ascii_lowercase();
    let n = n.strip_prefix("pg_catalog.").unwrap_or(&n);
    TYPES
        .iter()
        .find(|(names, _)| names.contains(&n))
        .map(|(_, oid)| *oid)
}

/// `to_regtype(text)`: the type's OID, or NULL for an unknown type (psycopg asks for
/// `hstore` this way).
pub fn to_regtype() -> ScalarUDF {
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let arr = args[0].to_array(1)?;
            let arr = datafusion::arrow::compute::cast(&arr, &DataType::Utf8)?;
            let names = arr
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| DataFusionError::Internal("to_regtype expects text".into()))?;
            let mut out = Int32Builder::with_capacity(names.len());
            for v in names.iter() {
                out.append_option(v.and_then(type_oid));
            }
            let out: ArrayRef = Arc::new(out.finish());
            Ok(if matches!(args[0], ColumnarValue::Scalar(_)) {
                ColumnarValue::Scalar(datafusion::scalar::ScalarValue::try_from_array(&out, 0)?)
            } else {
                ColumnarValue::Array(out)
            })
        }),
    )
}

/// Every function of this module.
pub fn all() -> Vec<ScalarUDF> {
    use datafusion::scalar::ScalarValue;
    vec![
        to_regtype(),
        pg_like_escape(),
        constant("pg_get_serial_sequence", ScalarValue::Utf8(None)),
        constant("pg_get_function_result", ScalarValue::Utf8(None)),
        // COMMENT ON is not supported yet: no descriptions.
        constant("col_description", ScalarValue::Utf8(None)),
        constant("obj_description", ScalarValue::Utf8(None)),
        constant("shobj_description", ScalarValue::Utf8(None)),
        constant("pg_get_function_arguments", ScalarValue::Utf8(None)),
        // One role owns everything until roles arrive with the security issue.
        constant(
            "pg_get_userbyid",
            ScalarValue::Utf8(Some("touchlake".into())),
        ),
        constant("pg_collation_is_visible", ScalarValue::Boolean(Some(true))),
        constant("pg_type_is_visible", ScalarValue::Boolean(Some(true))),
        constant("pg_function_is_visible", ScalarValue::Boolean(Some(true))),
        ScalarUDF::from(JsonBuildObject {
            signature: datafusion::logical_expr::Signature::variadic_any(Volatility::Immutable),
        }),
    ]
}

/// Rewrite a LIKE pattern that uses `escape` as its escape character into one that uses
/// backslash, the only escape DataFusion's LIKE knows.
pub fn backslash_pattern(pattern: &str, escape: Option<char>) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if Some(c) == escape {
            match chars.next() {
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push_str("\\\\"),
            }
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    out
}

/// `pg_like_escape(pattern, escape)`: a LIKE pattern with escape character `escape`,
/// rewritten to backslash escapes (`ESCAPE ''` means no escape character).
pub fn pg_like_escape() -> ScalarUDF {
    create_udf(
        "pg_like_escape",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
            let n = args.iter().find_map(|a| match a {
                ColumnarValue::Array(a) => Some(a.len()),
                _ => None,
            });
            let n = n.unwrap_or(1);
            let p = datafusion::arrow::compute::cast(&args[0].to_array(n)?, &DataType::Utf8)?;
            let e = datafusion::arrow::compute::cast(&args[1].to_array(n)?, &DataType::Utf8)?;
            let (Some(p), Some(e)) = (
                p.as_any().downcast_ref::<StringArray>(),
                e.as_any().downcast_ref::<StringArray>(),
            ) else {
                return Err(DataFusionError::Internal(
                    "pg_like_escape expects text".into(),
                ));
            };
            let out: StringArray = p
                .iter()
                .zip(e.iter())
                .map(|(p, e)| p.map(|p| backslash_pattern(p, e.and_then(|e| e.chars().next()))))
                .collect();
            let out: ArrayRef = Arc::new(out);
            Ok(if scalar {
                ColumnarValue::Scalar(datafusion::scalar::ScalarValue::try_from_array(&out, 0)?)
            } else {
                ColumnarValue::Array(out)
            })
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_translate_to_backslash() {
        assert_eq!(backslash_pattern("pg/_%", Some('/')), "pg\\_%");
        assert_eq!(backslash_pattern("a\\b", Some('/')), "a\\\\b");
        assert_eq!(backslash_pattern("100#%", Some('#')), "100\\%");
        assert_eq!(type_oid("pg_catalog.int8"), Some(20));
        assert_eq!(type_oid("hstore"), None);
    }
}

/// A catalog function whose answer does not depend on its arguments
/// (`pg_get_serial_sequence` is always NULL: Touchlake has no sequences).
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConstantFn {
    name: &'static str,
    value: datafusion::scalar::ScalarValue,
    signature: datafusion::logical_expr::Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for ConstantFn {
    fn name(&self) -> &str {
        self.name
    }
    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(self.value.data_type())
    }
    fn invoke_with_args(
        &self,
        _: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        Ok(ColumnarValue::Scalar(self.value.clone()))
    }
}

fn constant(name: &'static str, value: datafusion::scalar::ScalarValue) -> ScalarUDF {
    ScalarUDF::from(ConstantFn {
        name,
        value,
        signature: datafusion::logical_expr::Signature::variadic_any(Volatility::Stable),
    })
}

/// `json_build_object(k1, v1, …)` as JSON text.
#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: datafusion::logical_expr::Signature,
}

fn json_value(arr: &ArrayRef, row: usize) -> datafusion::error::Result<serde_json::Value> {
    use datafusion::arrow::datatypes::DataType as D;
    if arr.is_null(row) {
        return Ok(serde_json::Value::Null);
    }
    let text = datafusion::arrow::util::display::array_value_to_string(arr, row)?;
    Ok(match arr.data_type() {
        D::Boolean => serde_json::Value::Bool(text == "true"),
        t if t.is_numeric() => {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        }
        _ => serde_json::Value::String(text),
    })
}

impl datafusion::logical_expr::ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }
    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return Err(DataFusionError::Plan(
                "json_build_object needs an even number of arguments".into(),
            ));
        }
        let n = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let mut out = datafusion::arrow::array::StringBuilder::new();
        for row in 0..n {
            let mut obj = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = datafusion::arrow::util::display::array_value_to_string(&pair[0], row)?;
                obj.insert(key, json_value(&pair[1], row)?);
            }
            out.append_value(serde_json::Value::Object(obj).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}
