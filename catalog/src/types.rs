//! SQL column types that Touchlake stores in Delta, and their Arrow types.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::sql::sqlparser::ast::{DataType as SqlType, ExactNumberInfo, TimezoneInfo};

use crate::error::{CatalogError, Result};

/// Map a SQL type from CREATE TABLE to the Arrow type of the Delta column.
///
/// Timestamps are microseconds (Delta's precision); `timestamptz` is stored in UTC.
pub fn sql_to_arrow(t: &SqlType) -> Result<DataType> {
    use SqlType as S;
    Ok(match t {
        S::Text
        | S::Varchar(_)
        | S::CharVarying(_)
        | S::Char(_)
        | S::Character(_)
        | S::String(_) => DataType::Utf8,
        S::Custom(name, _) if is_name(name, &["citext", "name", "bpchar"]) => DataType::Utf8,
        S::Int(_) | S::Integer(_) | S::Int4(_) => DataType::Int32,
        S::SmallInt(_) | S::Int2(_) => DataType::Int16,
        S::BigInt(_) | S::Int8(_) => DataType::Int64,
        S::Real | S::Float4 => DataType::Float32,
        S::DoublePrecision | S::Double(_) | S::Float8 | S::Float(_) => DataType::Float64,
        S::Numeric(info) | S::Decimal(info) | S::Dec(info) => {
            let (p, s) = match info {
                ExactNumberInfo::None => (38, 10),
                ExactNumberInfo::Precision(p) => (*p, 0),
                ExactNumberInfo::PrecisionAndScale(p, s) => (*p, *s as u64),
            };
            if p == 0 || p > 38 || s > p {
                return Err(CatalogError::UnsupportedType(format!(
                    "numeric({p},{s}): precision must be 1..38 and scale at most the precision"
                )));
            }
            DataType::Decimal128(p as u8, s as i8)
        }
        S::Boolean | S::Bool => DataType::Boolean,
        S::Date => DataType::Date32,
        S::Timestamp(_, TimezoneInfo::Tz | TimezoneInfo::WithTimeZone) => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        S::Timestamp(_, _) | S::Datetime(_) => DataType::Timestamp(TimeUnit::Microsecond, None),
        S::TimestampNtz(_) => DataType::Timestamp(TimeUnit::Microsecond, None),
        S::Custom(name, _) if is_name(name, &["timestamptz"]) => {
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        }
        S::Bytea | S::Blob(_) | S::Binary(_) | S::Varbinary(_) => DataType::Binary,
        S::JSON | S::JSONB => DataType::Utf8,
        other => return Err(CatalogError::UnsupportedType(other.to_string())),
    })
}

fn is_name(name: &datafusion::sql::sqlparser::ast::ObjectName, candidates: &[&str]) -> bool {
    let s = name.to_string().to_ascii_lowercase();
    candidates.iter().any(|c| *c == s)
}

/// Adapt an Arrow type produced by a query so that Delta can store it
/// (Delta has no unsigned integers, no Utf8View, no nanosecond timestamps).
pub fn storable(t: &DataType) -> DataType {
    match t {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 | DataType::UInt64 => DataType::Int64,
        DataType::Float16 => DataType::Float32,
        DataType::Timestamp(_, tz) => {
            DataType::Timestamp(TimeUnit::Microsecond, tz.as_ref().map(|_| "UTC".into()))
        }
        DataType::Date64 => DataType::Date32,
        DataType::Null => DataType::Utf8,
        DataType::Dictionary(_, v) => storable(v),
        other => other.clone(),
    }
}
