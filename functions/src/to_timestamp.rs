//! `to_timestamp(text, template)` and `to_date(text, template)` with PostgreSQL's template
//! patterns (`'YYYY-MM-DD HH24:MI:SS'`, `'DD Mon YYYY'`, `'HH12:MI AM'`), the patterns of
//! [`crate::to_char`]. A template with a `%` is a strftime format and goes to DataFusion's
//! function, as does every other form of the call (`to_timestamp(epoch)`, one argument).
//!
//! Reading follows PostgreSQL outside FX mode: blanks before a field are skipped, a
//! separator in the template matches any one non-alphanumeric character of the input (or
//! none), a field reads digits up to its width when another field follows directly and
//! all of them otherwise, month and day names match in any case, text after the template
//! is ignored, and fields the template lacks default to 0001-01-01 00:00:00. A time
//! without `TZH` is read in the session's time zone.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, NaiveDateTime, NaiveTime, TimeZone};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Date32Array, TimestampMicrosecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
};
use datafusion::scalar::ScalarValue;

use crate::error::{bad_datetime, invalid};
use crate::to_char::{DAYS, Field, MONTHS, Part, Token, parse_template};

/// `to_timestamp`, DataFusion's, reading PostgreSQL templates.
pub fn to_timestamp() -> ScalarUDF {
    ScalarUDF::new_from_impl(PgTemplate {
        inner: datafusion::functions::datetime::to_timestamp(&ConfigOptions::default()),
        date: false,
    })
}

/// `to_date`, DataFusion's, reading PostgreSQL templates.
pub fn to_date() -> ScalarUDF {
    ScalarUDF::new_from_impl(PgTemplate {
        inner: datafusion::functions::datetime::to_date(),
        date: true,
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PgTemplate {
    inner: Arc<ScalarUDF>,
    date: bool,
}

impl PgTemplate {
    fn name_static(&self) -> &'static str {
        if self.date { "to_date" } else { "to_timestamp" }
    }
}

/// The fields read from one text.
#[derive(Debug, Default, Clone, PartialEq)]
struct Read {
    year: Option<i32>,
    month: Option<u32>,
    day: Option<u32>,
    day_of_year: Option<u32>,
    hour: Option<u32>,
    /// Hours were read on a 12-hour clock.
    twelve: bool,
    pm: Option<bool>,
    minute: Option<u32>,
    second: Option<u32>,
    micros: Option<u32>,
    /// Offset east of UTC in seconds (`TZH`, `TZM`).
    offset: Option<i32>,
}

struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.at).copied()
    }
    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(|c| c == b' ' || c == b'\t') {
            self.at += 1;
        }
    }
    fn digits(&mut self, max: Option<usize>) -> Option<(u64, usize)> {
        let start = self.at;
        let mut v: u64 = 0;
        while let Some(c) = self.peek() {
            if !c.is_ascii_digit() || max.is_some_and(|m| self.at - start >= m) {
                break;
            }
            v = v.saturating_mul(10).saturating_add(u64::from(c - b'0'));
            self.at += 1;
        }
        (self.at > start).then_some((v, self.at - start))
    }
    /// Match one of `words` (case-insensitive), longest first; its index.
    fn word(&mut self, words: &[&str]) -> Option<usize> {
        let mut best: Option<(usize, usize)> = None;
        for (i, w) in words.iter().enumerate() {
            let n = w.len();
            if self.s.len() >= self.at + n
                && self.s[self.at..self.at + n].eq_ignore_ascii_case(w.as_bytes())
                && best.is_none_or(|(_, len)| n > len)
            {
                best = Some((i, n));
            }
        }
        let (i, n) = best?;
        self.at += n;
        Some(i)
    }
}

/// Read `text` by `tokens`; an error message (and whether it is a range error) if it
/// does not fit.
fn read(text: &str, tokens: &[Token]) -> std::result::Result<Read, (String, bool)> {
    let mut c = Cursor {
        s: text.as_bytes(),
        at: 0,
    };
    let mut r = Read::default();
    let unsupported = |what: &str| (format!("the pattern {what} cannot be read"), false);
    for (k, tok) in tokens.iter().enumerate() {
        let next_is_field = tokens
            .get(k + 1)
            .is_some_and(|t| !matches!(t.part, Part::Text(_)));
        match &tok.part {
            Part::Text(lit) => {
                for ch in lit.chars() {
                    if ch.is_whitespace() {
                        c.skip_blanks();
                    } else if ch.is_alphanumeric() {
                        // Quoted letters skip as many characters.
                        if c.peek().is_some() {
                            c.at += ch.len_utf8().min(c.s.len() - c.at);
                        }
                    } else if c.peek().is_some_and(|b| !b.is_ascii_alphanumeric()) {
                        // A separator matches any one separator.
                        c.at += 1;
                    }
                }
            }
            Part::Number(field, width) => {
                c.skip_blanks();
                let negative = matches!(field, Field::Year) && c.peek() == Some(b'-');
                if negative {
                    c.at += 1;
                }
                let max = next_is_field.then_some(*width);
                let Some((v, n)) = c.digits(max) else {
                    if c.peek().is_none() {
                        break;
                    }
                    let rest = String::from_utf8_lossy(&c.s[c.at..])
                        .chars()
                        .take(10)
                        .collect::<String>();
                    return Err((format!("invalid value \"{rest}\" for a number"), false));
                };
                if tok.ordinal.is_some() {
                    let _ = c.word(&["st", "nd", "rd", "th"]);
                }
                let v32 = u32::try_from(v).unwrap_or(u32::MAX);
                match field {
                    Field::Year => {
                        let y = i32::try_from(v).unwrap_or(i32::MAX);
                        r.year = Some(if negative { -y } else { y });
                    }
                    Field::Year2 => {
                        // PostgreSQL: the year nearest 2020.
                        r.year = Some(if n > 2 {
                            v32 as i32
                        } else if v < 70 {
                            2000 + v32 as i32
                        } else {
                            1900 + v32 as i32
                        });
                    }
                    Field::Year3 => {
                        r.year = Some(if n > 3 { v32 as i32 } else { 2000 + v32 as i32 });
                    }
                    Field::Year1 => {
                        r.year = Some(if n > 1 { v32 as i32 } else { 2020 + v32 as i32 })
                    }
                    Field::Month => r.month = Some(v32),
                    Field::Day => r.day = Some(v32),
                    Field::DayOfYear => r.day_of_year = Some(v32),
                    Field::Hour24 => r.hour = Some(v32),
                    Field::Hour12 => {
                        r.hour = Some(v32);
                        r.twelve = true;
                    }
                    Field::Minute => r.minute = Some(v32),
                    Field::Second => r.second = Some(v32),
                    Field::Millis => {
                        r.micros = Some(
                            v32.saturating_mul(10u32.pow(3 - n.min(3) as u32))
                                .saturating_mul(1000),
                        )
                    }
                    Field::Micros => {
                        r.micros = Some(v32.saturating_mul(10u32.pow(6 - n.min(6) as u32)))
                    }
                    Field::Fraction(_) => {
                        r.micros = Some(v32.saturating_mul(10u32.pow(6 - n.min(6) as u32)));
                    }
                    Field::DayOfWeek
                    | Field::IsoDayOfWeek
                    | Field::Quarter
                    | Field::Week
                    | Field::WeekOfMonth => {}
                    other => return Err(unsupported(&format!("{other:?}"))),
                }
            }
            Part::MonthName(_, long) => {
                c.skip_blanks();
                let full: Vec<&str> = MONTHS.to_vec();
                let short: Vec<String> = MONTHS.iter().map(|m| m[..3].to_string()).collect();
                let words: Vec<&str> = if *long {
                    full.iter()
                        .copied()
                        .chain(short.iter().map(String::as_str))
                        .collect()
                } else {
                    short.iter().map(String::as_str).collect()
                };
                let Some(i) = c.word(&words) else {
                    return Err(("invalid value for a month name".into(), false));
                };
                r.month = Some((i % 12) as u32 + 1);
            }
            Part::DayName(_, long) => {
                c.skip_blanks();
                let short: Vec<String> = DAYS.iter().map(|d| d[..3].to_string()).collect();
                let mut words: Vec<&str> = short.iter().map(String::as_str).collect();
                if *long {
                    words.extend(DAYS.iter().copied());
                }
                if c.word(&words).is_none() {
                    return Err(("invalid value for a day name".into(), false));
                }
            }
            Part::Meridian(_, _) => {
                c.skip_blanks();
                match c.word(&["am", "pm", "a.m.", "p.m."]) {
                    Some(i) => r.pm = Some(i % 2 == 1),
                    None => return Err(("invalid value for AM/PM".into(), false)),
                }
            }
            Part::ZoneHours => {
                c.skip_blanks();
                let sign = match c.peek() {
                    Some(b'-') => {
                        c.at += 1;
                        -1
                    }
                    Some(b'+') => {
                        c.at += 1;
                        1
                    }
                    _ => 1,
                };
                let Some((h, _)) = c.digits(Some(2)) else {
                    return Err(("invalid value for TZH".into(), false));
                };
                let m = r.offset.map_or(0, |o| o.abs() % 3600);
                r.offset = Some(sign * (h as i32 * 3600 + m));
            }
            Part::ZoneMinutes => {
                let Some((m, _)) = c.digits(Some(2)) else {
                    return Err(("invalid value for TZM".into(), false));
                };
                let o = r.offset.unwrap_or(0);
                let sign = if o < 0 { -1 } else { 1 };
                r.offset = Some(o + sign * m as i32 * 60);
            }
            Part::Era(..)
            | Part::RomanMonth(_)
            | Part::YearComma
            | Part::Zone(_)
            | Part::Offset => return Err(unsupported("AD/BC, RM, Y,YYY, TZ or OF")),
        }
    }
    Ok(r)
}

impl Read {
    /// The wall-clock time read, checked.
    fn wall(&self) -> std::result::Result<NaiveDateTime, String> {
        let year = self.year.unwrap_or(1);
        let date = match self.day_of_year {
            Some(doy) if self.month.is_none() && self.day.is_none() => {
                NaiveDate::from_yo_opt(year, doy)
                    .ok_or(format!("day of year {doy} is out of range"))?
            }
            _ => {
                let (m, d) = (self.month.unwrap_or(1), self.day.unwrap_or(1));
                NaiveDate::from_ymd_opt(year, m, d)
                    .ok_or(format!("date {year:04}-{m:02}-{d:02} is out of range"))?
            }
        };
        let mut hour = self.hour.unwrap_or(0);
        if self.twelve || self.pm.is_some() {
            if !(1..=12).contains(&hour) {
                return Err(format!("hour \"{hour}\" is invalid for the 12-hour clock"));
            }
            hour %= 12;
            if self.pm == Some(true) {
                hour += 12;
            }
        }
        let (mi, s) = (self.minute.unwrap_or(0), self.second.unwrap_or(0));
        let time = NaiveTime::from_hms_micro_opt(hour, mi, s.min(59), self.micros.unwrap_or(0))
            .ok_or(format!("time {hour:02}:{mi:02}:{s:02} is out of range"))?;
        let mut t = NaiveDateTime::new(date, time);
        if s == 60 {
            t += chrono::Duration::seconds(1);
        }
        Ok(t)
    }
}

/// Microseconds since the epoch of a wall-clock time in `tz` (None: UTC).
fn instant(t: NaiveDateTime, tz: Option<&str>, offset: Option<i32>) -> Result<i64> {
    if let Some(o) = offset {
        return Ok(t.and_utc().timestamp_micros() - i64::from(o) * 1_000_000);
    }
    let Some(tz) = tz.filter(|z| !matches!(*z, "UTC" | "+00:00" | "Z" | "Etc/UTC")) else {
        return Ok(t.and_utc().timestamp_micros());
    };
    if let Ok(zone) = tz.parse::<chrono_tz::Tz>() {
        let local = zone
            .from_local_datetime(&t)
            .earliest()
            .ok_or_else(|| invalid("to_timestamp", format!("{t} does not exist in {tz}")))?;
        return Ok(local.timestamp_micros());
    }
    let fixed: chrono::FixedOffset = tz
        .parse()
        .map_err(|_| invalid("to_timestamp", format!("unknown time zone '{tz}'")))?;
    Ok(fixed
        .from_local_datetime(&t)
        .single()
        .map(|d: DateTime<chrono::FixedOffset>| d.timestamp_micros())
        .unwrap_or_else(|| t.and_utc().timestamp_micros()))
}

/// The template of a call this wrapper reads itself: two text arguments, a constant
/// template without `%`.
fn pg_template(args: &[ColumnarValue]) -> Option<String> {
    let [value, ColumnarValue::Scalar(t)] = args else {
        return None;
    };
    if !matches!(
        value.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        return None;
    }
    let t = match t {
        ScalarValue::Utf8(Some(t))
        | ScalarValue::LargeUtf8(Some(t))
        | ScalarValue::Utf8View(Some(t)) => t,
        _ => return None,
    };
    (!t.contains('%')).then(|| t.clone())
}

impl ScalarUDFImpl for PgTemplate {
    delegate_to_inner!();
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        // PostgreSQL's to_timestamp(text, text) is a timestamptz.
        let text =
            |t: &DataType| matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View);
        let pg = !self.date
            && args.arg_fields.len() == 2
            && text(args.arg_fields[0].data_type())
            && matches!(
                args.scalar_arguments.get(1),
                Some(Some(
                    ScalarValue::Utf8(Some(t)) | ScalarValue::LargeUtf8(Some(t)) | ScalarValue::Utf8View(Some(t))
                )) if !t.contains('%')
            );
        if pg {
            return Ok(Arc::new(datafusion::arrow::datatypes::Field::new(
                self.name(),
                DataType::Timestamp(
                    datafusion::arrow::datatypes::TimeUnit::Microsecond,
                    Some("UTC".into()),
                ),
                true,
            )));
        }
        self.inner.return_field_from_args(args)
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }
    fn with_updated_config(&self, config: &ConfigOptions) -> Option<ScalarUDF> {
        let inner = self.inner.inner().with_updated_config(config)?;
        Some(ScalarUDF::new_from_impl(PgTemplate {
            inner: Arc::new(inner),
            date: self.date,
        }))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let Some(template) = pg_template(&args.args) else {
            return self.inner.invoke_with_args(args);
        };
        let name = self.name_static();
        let tokens = parse_template(&template);
        let scalar = matches!(args.args[0], ColumnarValue::Scalar(_));
        let values = cast(&args.args[0].to_array(args.number_rows)?, &DataType::Utf8)?;
        let values = values.as_string::<i32>();
        let want = args.return_field.data_type().clone();
        let tz: Option<String> = match &want {
            DataType::Timestamp(_, tz) => tz.as_deref().map(str::to_string),
            _ => None,
        };
        // A wall-clock time is read in the session's zone, as in PostgreSQL.
        let session = args
            .config_options
            .execution
            .time_zone
            .clone()
            .or(tz.clone());
        let mut out: Vec<Option<i64>> = Vec::with_capacity(values.len());
        for v in values.iter() {
            let Some(v) = v else {
                out.push(None);
                continue;
            };
            let r = read(v, &tokens).map_err(|(m, range)| bad_datetime(name, m, range))?;
            let wall = r.wall().map_err(|m| bad_datetime(name, m, true))?;
            out.push(Some(if self.date {
                (wall.date() - DateTime::UNIX_EPOCH.date_naive()).num_days()
            } else {
                instant(wall, session.as_deref(), r.offset)?
            }));
        }
        let array: ArrayRef = if self.date {
            Arc::new(Date32Array::from(
                out.into_iter()
                    .map(|d| d.map(|d| d as i32))
                    .collect::<Vec<_>>(),
            ))
        } else {
            Arc::new(
                TimestampMicrosecondArray::from(out).with_timezone_opt(tz.map(Arc::<str>::from)),
            )
        };
        let array = if array.data_type() == &want {
            array
        } else {
            cast(&array, &want)?
        };
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
        } else {
            ColumnarValue::Array(array)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str, template: &str) -> NaiveDateTime {
        read(text, &parse_template(template))
            .unwrap()
            .wall()
            .unwrap()
    }

    #[test]
    fn postgres_templates_read() {
        let t = |s: &str| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap();
        assert_eq!(
            at("2026-03-01 13:05:09", "YYYY-MM-DD HH24:MI:SS"),
            t("2026-03-01 13:05:09")
        );
        assert_eq!(at("01 Mar 2026", "DD Mon YYYY"), t("2026-03-01 00:00:00"));
        assert_eq!(
            at("march 1, 2026 1:05 pm", "Month DD, YYYY HH:MI AM"),
            t("2026-03-01 13:05:00")
        );
        assert_eq!(at("20260301", "YYYYMMDD"), t("2026-03-01 00:00:00"));
        assert_eq!(at("2026/3/1", "YYYY-MM-DD"), t("2026-03-01 00:00:00"));
        assert_eq!(
            at("12:00:00.5 AM", "HH12:MI:SS.MS AM"),
            t("0001-01-01 00:00:00.5")
        );
        assert_eq!(at("2026-060", "YYYY-DDD"), t("2026-03-01 00:00:00"));
        assert_eq!(at("26-03-01", "YY-MM-DD"), t("2026-03-01 00:00:00"));
        assert!(
            read("2026-13-01", &parse_template("YYYY-MM-DD"))
                .unwrap()
                .wall()
                .is_err()
        );
        assert!(read("x2026", &parse_template("YYYY")).is_err());
        // Too many digits: an error, never an overflow.
        for (text, t) in [
            ("10:00:00.99999999999", "HH24:MI:SS.MS"),
            ("10:00:00.99999999999", "HH24:MI:SS.US"),
            ("99999999999999-01-01", "YYYY-MM-DD"),
            ("2026-01-01 99999999999:00", "YYYY-MM-DD HH24:MI"),
        ] {
            let r = read(text, &parse_template(t));
            assert!(r.is_err() || r.unwrap().wall().is_err(), "{text}");
        }
    }
}
