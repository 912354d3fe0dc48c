//! Time parsing for channel mappings: `parse_timestamp(text [, formats [, time_zone]])`.
//!
//! Channels write times in every shape: ISO 8601 with or without an offset, local wall-clock
//! times in the store's zone, `2024/03/01 10:00`, epoch seconds or milliseconds. The
//! function tries the given chrono formats (separated by `|`) and then the common shapes;
//! a time without an offset is read in `time_zone` (default UTC). The result is a UTC
//! `timestamptz`; text that fits none of the shapes gives NULL, so a mapping can route the
//! row to quarantine instead of failing the batch. A bad format string or unknown zone is
//! an error (22023).

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use datafusion::arrow::array::{Array, ArrayRef, StringArray, TimestampMicrosecondBuilder};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;

/// Shapes tried after the caller's formats, for times without an offset.
const NAIVE_FORMATS: &[&str] = &[
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
    "%Y/%m/%d %H:%M:%S%.f",
    "%Y/%m/%d %H:%M",
    "%Y%m%d%H%M%S",
    "%d.%m.%Y %H:%M:%S",
];

/// Shapes tried for times that carry an offset.
const OFFSET_FORMATS: &[&str] = &[
    "%Y-%m-%d %H:%M:%S%.f%#z",
    "%Y-%m-%dT%H:%M:%S%.f%#z",
    "%Y/%m/%d %H:%M:%S%.f%#z",
];

/// A parser for one (formats, zone) configuration.
#[derive(Debug, Clone)]
pub struct TimeParser {
    formats: Vec<String>,
    zone: Tz,
}

impl TimeParser {
    /// `formats`: chrono format strings separated by `|` (may be empty); `zone`: an IANA
    /// name such as `Asia/Shanghai`, used for times without an offset.
    pub fn new(formats: Option<&str>, zone: Option<&str>) -> Result<Self> {
        let zone = match zone.map(str::trim) {
            None | Some("") => Tz::UTC,
            Some(z) => z
                .parse::<Tz>()
                .map_err(|_| invalid("parse_timestamp", format!("unknown time zone '{z}'")))?,
        };
        let formats: Vec<String> = formats
            .unwrap_or("")
            .split('|')
            .map(str::trim)
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect();
        for f in &formats {
            if chrono::format::StrftimeItems::new(f).parse().is_err() {
                return Err(invalid(
                    "parse_timestamp",
                    format!("invalid format '{f}' (chrono strftime syntax)"),
                ));
            }
        }
        Ok(Self { formats, zone })
    }

    /// Microseconds since the epoch, UTC; None when the text fits no shape.
    pub fn parse(&self, raw: &str) -> Option<i64> {
        let s = raw.trim();
        if s.is_empty() {
            return None;
        }
        for f in &self.formats {
            if let Some(t) = self.with_format(s, f) {
                return Some(t);
            }
        }
        if let Some(t) = naive_iso(s) {
            return self.local(t);
        }
        if let Ok(t) = DateTime::parse_from_rfc3339(s) {
            return Some(t.timestamp_micros());
        }
        for f in OFFSET_FORMATS {
            if let Ok(t) = DateTime::parse_from_str(s, f) {
                return Some(t.timestamp_micros());
            }
        }
        for f in NAIVE_FORMATS {
            if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
                return self.local(t);
            }
        }
        if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            return self.local(d.and_hms_opt(0, 0, 0)?);
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            let n: i64 = s.parse().ok()?;
            return match s.len() {
                10 => n.checked_mul(1_000_000),
                13 => n.checked_mul(1_000),
                16 => Some(n),
                _ => None,
            };
        }
        None
    }

    fn with_format(&self, s: &str, f: &str) -> Option<i64> {
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.timestamp_micros());
        }
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return self.local(t);
        }
        if let Ok(d) = NaiveDate::parse_from_str(s, f) {
            return self.local(d.and_hms_opt(0, 0, 0)?);
        }
        None
    }

    /// A wall-clock time in the zone; in a DST gap it is None, in an overlap the earlier.
    fn local(&self, t: NaiveDateTime) -> Option<i64> {
        self.zone
            .from_local_datetime(&t)
            .earliest()
            .map(|d| d.with_timezone(&Utc).timestamp_micros())
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ParseTimestamp {
    signature: Signature,
}

impl ScalarUDFImpl for ParseTimestamp {
    fn name(&self) -> &str {
        "parse_timestamp"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        ))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let config = |i: usize| -> Result<Option<String>> {
            match args.args.get(i) {
                None => Ok(None),
                Some(ColumnarValue::Scalar(s)) => {
                    if s.is_null() {
                        Err(invalid(
                            "parse_timestamp",
                            "format and time zone must not be NULL",
                        ))
                    } else {
                        Ok(Some(s.to_string()))
                    }
                }
                Some(_) => Err(invalid(
                    "parse_timestamp",
                    "format and time zone must be constants",
                )),
            }
        };
        let parser = TimeParser::new(config(1)?.as_deref(), config(2)?.as_deref())?;
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let n = if scalar { 1 } else { args.number_rows };
        let input = args.args[0].to_array(n)?;
        let input = datafusion::arrow::compute::cast(&input, &DataType::Utf8)?;
        let input = input
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| DataFusionError::Internal("expected text".into()))?;
        let mut out = TimestampMicrosecondBuilder::with_capacity(n);
        for i in 0..n {
            if input.is_null(i) {
                out.append_null();
            } else {
                out.append_option(parser.parse(input.value(i)));
            }
        }
        let out: ArrayRef = Arc::new(out.finish().with_timezone("UTC"));
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
        } else {
            ColumnarValue::Array(out)
        })
    }
}

/// The functions of this module.
pub fn functions() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(ParseTimestamp {
        signature: Signature::one_of(
            vec![
                TypeSignature::String(1),
                TypeSignature::String(2),
                TypeSignature::String(3),
                TypeSignature::Any(1),
            ],
            Volatility::Immutable,
        ),
    })]
}

/// The most common shape, `YYYY-MM-DD HH:MM:SS[.f]` (or with `T`), read without chrono's
/// format interpreter; None for anything else (the general path then decides, and gives
/// the same answer for these shapes: `%Y-%m-%d %H:%M:%S%.f`).
fn naive_iso(s: &str) -> Option<NaiveDateTime> {
    let b = s.as_bytes();
    if b.len() < 19 || !matches!(b[10], b' ' | b'T') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        b[r].iter().try_fold(0u32, |n, &c| {
            c.is_ascii_digit().then(|| n * 10 + u32::from(c - b'0'))
        })
    };
    if b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let nanos = match &b[19..] {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            let n = num(20..b.len())?;
            n * 10u32.pow(9 - digits.len() as u32)
        }
        _ => return None,
    };
    let date = NaiveDate::from_ymd_opt(num(0..4)? as i32, num(5..7)?, num(8..10)?)?;
    date.and_hms_nano_opt(num(11..13)?, num(14..16)?, num(17..19)?, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_shape_agrees_with_chrono() {
        let mut n = 0;
        for date in [
            "2024-02-29",
            "2023-02-29",
            "2024-13-01",
            "2024-00-10",
            "0999-01-01",
        ] {
            for sep in [" ", "T", "_"] {
                for time in [
                    "00:00:00",
                    "23:59:59",
                    "23:59:60",
                    "24:00:00",
                    "10:61:00",
                    "10:00:0x",
                    "10:00:00.5",
                    "10:00:00.123456789",
                    "10:00:00.1234567891",
                    "10:00:00.",
                    "10:00:00+08:00",
                    "10:00:00Z",
                    "1:00:00",
                ] {
                    let s = format!("{date}{sep}{time}");
                    let general = ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"]
                        .iter()
                        .find_map(|f| NaiveDateTime::parse_from_str(&s, f).ok());
                    if let Some(fast) = naive_iso(&s) {
                        assert_eq!(Some(fast), general, "{s}");
                        n += 1;
                    }
                }
            }
        }
        assert!(n >= 16, "{n}");
    }

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    #[test]
    fn shapes_and_zones() {
        let sh = TimeParser::new(None, Some("Asia/Shanghai")).unwrap();
        assert_eq!(
            sh.parse("2024-03-01 10:00:00"),
            Some(at("2024-03-01T02:00:00Z"))
        );
        assert_eq!(
            sh.parse("2024/03/01 10:00"),
            Some(at("2024-03-01T02:00:00Z"))
        );
        assert_eq!(
            sh.parse("2024-03-01T10:00:00+08:00"),
            Some(at("2024-03-01T02:00:00Z"))
        );
        assert_eq!(
            sh.parse("2024-03-01T02:00:00Z"),
            Some(at("2024-03-01T02:00:00Z"))
        );
        assert_eq!(sh.parse("1709258400"), Some(at("2024-03-01T02:00:00Z")));
        assert_eq!(sh.parse("1709258400000"), Some(at("2024-03-01T02:00:00Z")));
        assert_eq!(sh.parse("yesterday"), None);
        assert_eq!(sh.parse("2024-13-01 10:00:00"), None);
        let custom = TimeParser::new(Some("%d/%m/%Y %H.%M"), Some("Europe/London")).unwrap();
        assert_eq!(
            custom.parse("01/07/2024 10.30"),
            Some(at("2024-07-01T09:30:00Z"))
        );
        assert!(TimeParser::new(None, Some("Mars/Base")).is_err());
    }
}
