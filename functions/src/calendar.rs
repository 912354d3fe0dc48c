//! Calendar periods for cohort functions: an event time (UTC microseconds) is bucketed to
//! the hour, day, week, month or a fixed interval it falls in, in a time zone. Periods are
//! numbered consecutively (period k + 1 follows period k), so "the next period" is `k + 1`.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Offset, TimeZone};
use chrono_tz::Tz;
use datafusion::arrow::datatypes::IntervalMonthDayNanoType;
use datafusion::error::Result;
use datafusion::scalar::ScalarValue;

use crate::error::invalid;

const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;
/// Days from 0001-01-01 (day 1 of the common era) to 1970-01-01.
const EPOCH_CE_DAYS: i64 = 719_163;

/// The length of a period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Clock hours.
    Hour,
    /// Calendar days.
    Day,
    /// Calendar weeks starting on Monday (ISO) or Sunday.
    Week {
        /// Weeks start on Sunday instead of Monday.
        sunday: bool,
    },
    /// Calendar months.
    Month,
    /// A fixed number of microseconds, counted from 1970-01-01 00:00 local time.
    Fixed(i64),
}

/// Periods of one unit in one time zone.
#[derive(Debug, Clone, Copy)]
pub struct Calendar {
    /// The period length.
    pub unit: Unit,
    /// The zone whose wall clock the periods follow.
    pub zone: Tz,
}

impl Calendar {
    /// The period of a `period` argument: `'hour'`, `'day'`, `'week'`, `'month'` (singular
    /// or plural) or an INTERVAL (one month exactly is `'month'`; other month intervals are
    /// an error; a day-time interval is a fixed length).
    pub fn from_period(function: &'static str, v: &ScalarValue) -> Result<Unit> {
        match v {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => {
                match s.trim().to_ascii_lowercase().trim_end_matches('s') {
                    "hour" => Ok(Unit::Hour),
                    "day" => Ok(Unit::Day),
                    "week" => Ok(Unit::Week { sunday: false }),
                    "month" => Ok(Unit::Month),
                    _ => Err(invalid(
                        function,
                        format!("period '{s}' is not hour, day, week, month or an INTERVAL"),
                    )),
                }
            }
            ScalarValue::IntervalMonthDayNano(Some(i)) => {
                let (months, days, nanos) = IntervalMonthDayNanoType::to_parts(*i);
                match (months, days, nanos) {
                    (1, 0, 0) => Ok(Unit::Month),
                    (0, d, n) if i64::from(d) * DAY_US + n / 1000 > 0 => {
                        Ok(Unit::Fixed(i64::from(d) * DAY_US + n / 1000))
                    }
                    _ => Err(invalid(
                        function,
                        "period: an INTERVAL must be positive, and a month interval exactly \
                         '1 month'",
                    )),
                }
            }
            ScalarValue::IntervalYearMonth(Some(1)) => Ok(Unit::Month),
            ScalarValue::IntervalDayTime(Some(i)) => {
                let us = i64::from(i.days) * DAY_US + i64::from(i.milliseconds) * 1000;
                if us > 0 {
                    Ok(Unit::Fixed(us))
                } else {
                    Err(invalid(function, "period: an INTERVAL must be positive"))
                }
            }
            v if v.is_null() => Err(invalid(function, "period must not be NULL")),
            other => Err(invalid(
                function,
                format!(
                    "period must be 'day', 'week', 'month', 'hour' or an INTERVAL, not {}",
                    other.data_type()
                ),
            )),
        }
    }

    /// A time zone name (`UTC`, `Asia/Shanghai`).
    pub fn zone(function: &'static str, name: &str) -> Result<Tz> {
        name.trim()
            .parse::<Tz>()
            .map_err(|_| invalid(function, format!("unknown time zone '{name}'")))
    }

    /// Local wall-clock microseconds of a UTC instant.
    fn local(&self, utc_us: i64) -> i64 {
        if self.zone == Tz::UTC {
            return utc_us;
        }
        let Some(at) = DateTime::from_timestamp_micros(utc_us) else {
            return utc_us;
        };
        let offset = self
            .zone
            .offset_from_utc_datetime(&at.naive_utc())
            .fix()
            .local_minus_utc();
        utc_us + i64::from(offset) * 1_000_000
    }

    /// The period number of a UTC instant.
    pub fn index(&self, utc_us: i64) -> i64 {
        self.local_index(self.local(utc_us))
    }

    /// The period number of a local wall-clock time (microseconds as if UTC).
    pub fn local_index(&self, local_us: i64) -> i64 {
        match self.unit {
            Unit::Hour => local_us.div_euclid(HOUR_US),
            Unit::Day => local_us.div_euclid(DAY_US),
            // 1970-01-01 was a Thursday: Monday weeks start 3 days before, Sunday weeks 4.
            Unit::Week { sunday } => {
                (local_us.div_euclid(DAY_US) + if sunday { 4 } else { 3 }).div_euclid(7)
            }
            Unit::Month => {
                let days = local_us.div_euclid(DAY_US);
                match NaiveDate::from_num_days_from_ce_opt((days + EPOCH_CE_DAYS) as i32) {
                    Some(d) => i64::from(d.year()) * 12 + i64::from(d.month0()),
                    None => 0,
                }
            }
            Unit::Fixed(len) => local_us.div_euclid(len),
        }
    }

    /// The local wall-clock start (microseconds as if UTC) of period `index`.
    pub fn start(&self, index: i64) -> i64 {
        match self.unit {
            Unit::Hour => index * HOUR_US,
            Unit::Day => index * DAY_US,
            Unit::Week { sunday } => (index * 7 - if sunday { 4 } else { 3 }) * DAY_US,
            Unit::Month => {
                let first = NaiveDate::from_ymd_opt(
                    index.div_euclid(12) as i32,
                    index.rem_euclid(12) as u32 + 1,
                    1,
                );
                first.map_or(0, |d| {
                    (i64::from(d.num_days_from_ce()) - EPOCH_CE_DAYS) * DAY_US
                })
            }
            Unit::Fixed(len) => index * len,
        }
    }
}

/// A local date or date-time option value (`2024-01-01`, `2024-01-01 08:00[:00]`) as
/// wall-clock microseconds.
pub fn local_time(function: &'static str, key: &str, v: &str) -> Result<i64> {
    let v = v.trim();
    let t = NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S"))
        .or_else(|_| NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M"))
        .ok()
        .or_else(|| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
        })
        .ok_or_else(|| {
            invalid(
                function,
                format!("{key}: '{v}' is not a date like 2024-01-31 or 2024-01-31 08:00:00"),
            )
        })?;
    Ok(t.and_utc().timestamp_micros())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal(unit: Unit, zone: &str) -> Calendar {
        Calendar {
            unit,
            zone: zone.parse().expect("zone"),
        }
    }

    fn utc(s: &str) -> i64 {
        local_time("t", "t", s).expect("time")
    }

    #[test]
    fn periods_follow_the_calendar() {
        let week = cal(Unit::Week { sunday: false }, "UTC");
        // 2024-01-01 was a Monday; 2024-01-07 a Sunday.
        let k = week.index(utc("2024-01-01"));
        assert_eq!(week.index(utc("2024-01-07 23:59:59")), k);
        assert_eq!(week.index(utc("2024-01-08")), k + 1);
        assert_eq!(week.start(k), utc("2024-01-01"));
        let sunday = cal(Unit::Week { sunday: true }, "UTC");
        assert_eq!(
            sunday.start(sunday.index(utc("2024-01-03"))),
            utc("2023-12-31")
        );
        let month = cal(Unit::Month, "UTC");
        let m = month.index(utc("2024-02-29 12:00:00"));
        assert_eq!(month.start(m), utc("2024-02-01"));
        assert_eq!(month.start(m + 11), utc("2025-01-01"));
        assert_eq!(
            month.index(utc("1969-12-31")) + 1,
            month.index(utc("1970-01-01"))
        );
    }

    #[test]
    fn zones_shift_the_boundaries() {
        let day = cal(Unit::Day, "Asia/Shanghai");
        // 16:30 UTC is 00:30 the next day in Shanghai.
        assert_eq!(
            day.index(utc("2024-03-01 16:30:00")),
            day.local_index(utc("2024-03-02"))
        );
        assert_eq!(
            day.start(day.index(utc("2024-03-01 16:30:00"))),
            utc("2024-03-02")
        );
    }
}
