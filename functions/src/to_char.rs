//! `to_char(value, template)` with PostgreSQL's template patterns (PostgreSQL manual,
//! "Data Type Formatting Functions", tables 9.26–9.29), instead of DataFusion's strftime
//! formats: `to_char(ts, 'YYYY-MM-DD HH24:MI:SS')`, `'FMMonth DD, YYYY'`, `'IYYY-IW'`,
//! `'Dy HH12:MI AM'`, and for numbers `'FM999,999.00'`, `'S0000'`. A timestamp with a zone
//! is shown in the session's `TimeZone`, as in PostgreSQL.

use std::sync::Arc;

use chrono::{DateTime, Datelike, NaiveDateTime, Offset, TimeZone, Timelike};
use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, DurationNanosecondType, IntervalMonthDayNanoType, IntervalUnit, TimeUnit,
    TimestampMicrosecondType,
};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;

const NAME: &str = "to_char";

/// `to_char` (see the module documentation).
pub fn to_char() -> ScalarUDF {
    ScalarUDF::new_from_impl(ToChar {
        signature: Signature::user_defined(Volatility::Stable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ToChar {
    signature: Signature,
}

/// How a text pattern is spelled: `MONTH`, `Month` or `month`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Case {
    Upper,
    Title,
    Lower,
}

impl Case {
    fn apply(self, s: &str) -> String {
        match self {
            Case::Upper => s.to_uppercase(),
            Case::Lower => s.to_lowercase(),
            Case::Title => s.to_string(),
        }
    }
}

/// One pattern of a date/time template.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Part {
    Text(String),
    /// A number: which, its width when zero-padded.
    Number(Field, usize),
    MonthName(Case, bool),
    DayName(Case, bool),
    Meridian(Case, bool),
    Era(Case, bool),
    RomanMonth(Case),
    YearComma,
    Zone(Case),
    Offset,
    ZoneHours,
    ZoneMinutes,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Field {
    Year,
    Year3,
    Year2,
    Year1,
    IsoYear,
    IsoYear3,
    IsoYear2,
    IsoYear1,
    Century,
    Quarter,
    Month,
    IsoWeek,
    Week,
    WeekOfMonth,
    DayOfYear,
    IsoDayOfYear,
    Day,
    DayOfWeek,
    IsoDayOfWeek,
    Julian,
    Hour24,
    Hour12,
    Minute,
    Second,
    SecondsOfDay,
    Millis,
    Micros,
    Fraction(u32),
}

/// A parsed pattern with its modifiers: fill mode (no padding) and an ordinal suffix.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub(crate) part: Part,
    pub(crate) fill: bool,
    pub(crate) ordinal: Option<Case>,
}

/// Patterns, longest first where one is a prefix of another. The bool: the spelling's case
/// decides the output's (names), else the pattern matches in any case.
const PATTERNS: &[(&str, bool)] = &[
    ("Y,YYY", false),
    ("IYYY", false),
    ("IYY", false),
    ("IY", false),
    ("IDDD", false),
    ("ID", false),
    ("IW", false),
    ("YYYY", false),
    ("YYY", false),
    ("YY", false),
    ("HH24", false),
    ("HH12", false),
    ("HH", false),
    ("SSSSS", false),
    ("SSSS", false),
    ("SS", false),
    ("MS", false),
    ("MI", false),
    ("MONTH", true),
    ("MON", true),
    ("MM", false),
    ("US", false),
    ("DAY", true),
    ("DDD", false),
    ("DD", false),
    ("DY", true),
    ("D", false),
    ("A.M.", true),
    ("P.M.", true),
    ("AM", true),
    ("PM", true),
    ("A.D.", true),
    ("B.C.", true),
    ("AD", true),
    ("BC", true),
    ("CC", false),
    ("FF1", false),
    ("FF2", false),
    ("FF3", false),
    ("FF4", false),
    ("FF5", false),
    ("FF6", false),
    ("FX", false),
    ("TZH", false),
    ("TZM", false),
    ("TZ", true),
    ("OF", false),
    ("RM", true),
    ("WW", false),
    ("W", false),
    ("Q", false),
    ("J", false),
    ("Y", false),
    ("I", false),
];

/// The case a name pattern was spelled in.
fn case_of(s: &str) -> Case {
    let mut letters = s.chars().filter(|c| c.is_alphabetic());
    match (letters.next(), letters.next()) {
        (Some(a), _) if a.is_lowercase() => Case::Lower,
        (Some(_), Some(b)) if b.is_lowercase() => Case::Title,
        _ => Case::Upper,
    }
}

fn part_of(pattern: &str, spelled: &str, fill: bool) -> Option<Part> {
    use Field::*;
    let case = case_of(spelled);
    let n = |f: Field, w: usize| Some(Part::Number(f, w));
    match pattern {
        "Y,YYY" => Some(Part::YearComma),
        "YYYY" => n(Year, 4),
        "YYY" => n(Year3, 3),
        "YY" => n(Year2, 2),
        "Y" => n(Year1, 1),
        "IYYY" => n(IsoYear, 4),
        "IYY" => n(IsoYear3, 3),
        "IY" => n(IsoYear2, 2),
        "I" => n(IsoYear1, 1),
        "IDDD" => n(IsoDayOfYear, 3),
        "ID" => n(IsoDayOfWeek, 1),
        "IW" => n(IsoWeek, 2),
        "HH24" => n(Hour24, 2),
        "HH12" | "HH" => n(Hour12, 2),
        "SSSSS" | "SSSS" => n(SecondsOfDay, 1),
        "SS" => n(Second, 2),
        "MS" => n(Millis, 3),
        "US" => n(Micros, 6),
        "MI" => n(Minute, 2),
        "MM" => n(Month, 2),
        "DDD" => n(DayOfYear, 3),
        "DD" => n(Day, 2),
        "D" => n(DayOfWeek, 1),
        "CC" => n(Century, 2),
        "WW" => n(Week, 2),
        "W" => n(WeekOfMonth, 1),
        "Q" => n(Quarter, 1),
        "J" => n(Julian, 1),
        "FF1" | "FF2" | "FF3" | "FF4" | "FF5" | "FF6" => {
            let d = pattern[2..].parse().unwrap_or(6);
            n(Fraction(d), d as usize)
        }
        "MONTH" => Some(Part::MonthName(case, true)),
        "MON" => Some(Part::MonthName(case, false)),
        "DAY" => Some(Part::DayName(case, true)),
        "DY" => Some(Part::DayName(case, false)),
        "AM" | "PM" => Some(Part::Meridian(case, false)),
        "A.M." | "P.M." => Some(Part::Meridian(case, true)),
        "AD" | "BC" => Some(Part::Era(case, false)),
        "A.D." | "B.C." => Some(Part::Era(case, true)),
        "RM" => Some(Part::RomanMonth(case)),
        "TZ" => Some(Part::Zone(case)),
        "TZH" => Some(Part::ZoneHours),
        "TZM" => Some(Part::ZoneMinutes),
        "OF" => Some(Part::Offset),
        "FX" => Some(Part::Text(String::new())),
        _ => {
            let _ = fill;
            None
        }
    }
}

/// Parse a date/time template.
pub(crate) fn parse_template(t: &str) -> Vec<Token> {
    let chars: Vec<char> = t.chars().collect();
    let mut out: Vec<Token> = vec![];
    let mut text = String::new();
    let mut i = 0;
    let mut fill = false;
    let flush = |text: &mut String, out: &mut Vec<Token>| {
        if !text.is_empty() {
            out.push(Token {
                part: Part::Text(std::mem::take(text)),
                fill: false,
                ordinal: None,
            });
        }
    };
    'outer: while i < chars.len() {
        let rest: String = chars[i..].iter().take(5).collect();
        let upper = rest.to_uppercase();
        // Modifiers: FM (fill mode), TM (translation: names are English anyway).
        if upper.starts_with("FM") || upper.starts_with("TM") {
            if upper.starts_with("FM") {
                fill = true;
            }
            i += 2;
            continue;
        }
        match chars[i] {
            '"' => {
                // Quoted text; \" inside is a quote.
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    text.push(chars[i]);
                    i += 1;
                }
                i += 1;
                fill = false;
                continue;
            }
            // Outside quotes a backslash escapes only a quote.
            '\\' if chars.get(i + 1) == Some(&'"') => {
                text.push('"');
                i += 2;
                continue;
            }
            _ => {}
        }
        for &(p, _) in PATTERNS {
            let len = p.chars().count();
            if upper.starts_with(p) {
                let spelled: String = chars[i..i + len].iter().collect();
                if let Some(part) = part_of(p, &spelled, fill) {
                    flush(&mut text, &mut out);
                    i += len;
                    // An ordinal suffix after a number: th or TH.
                    let mut ordinal = None;
                    if matches!(part, Part::Number(..)) && i + 1 < chars.len() {
                        let suffix: String = chars[i..i + 2].iter().collect();
                        if suffix == "th" || suffix == "TH" {
                            ordinal = Some(case_of(&suffix));
                            i += 2;
                        }
                    }
                    out.push(Token {
                        part,
                        fill,
                        ordinal,
                    });
                    fill = false;
                    continue 'outer;
                }
            }
        }
        text.push(chars[i]);
        i += 1;
    }
    flush(&mut text, &mut out);
    out
}

pub(crate) const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
pub(crate) const DAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const ROMAN: [&str; 12] = [
    "I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII",
];

fn ordinal_suffix(n: i64, case: Case) -> String {
    let s = match (n % 100, n % 10) {
        (11..=13, _) => "th",
        (_, 1) => "st",
        (_, 2) => "nd",
        (_, 3) => "rd",
        _ => "th",
    };
    case.apply(s)
}

/// A moment to format: the wall-clock time and its zone (name, offset seconds) if any.
struct Moment {
    t: NaiveDateTime,
    zone: Option<(String, i32)>,
}

fn number(m: &Moment, f: Field) -> i64 {
    let (d, t) = (m.t.date(), m.t.time());
    let year = i64::from(d.year());
    let iso = d.iso_week();
    match f {
        Field::Year => year,
        Field::Year3 => year.rem_euclid(1000),
        Field::Year2 => year.rem_euclid(100),
        Field::Year1 => year.rem_euclid(10),
        Field::IsoYear => i64::from(iso.year()),
        Field::IsoYear3 => i64::from(iso.year()).rem_euclid(1000),
        Field::IsoYear2 => i64::from(iso.year()).rem_euclid(100),
        Field::IsoYear1 => i64::from(iso.year()).rem_euclid(10),
        Field::Century => {
            if year > 0 {
                (year + 99) / 100
            } else {
                -((-year + 100) / 100)
            }
        }
        Field::Quarter => i64::from(d.month0() / 3 + 1),
        Field::Month => i64::from(d.month()),
        Field::IsoWeek => i64::from(iso.week()),
        Field::Week => i64::from(d.ordinal0() / 7 + 1),
        Field::WeekOfMonth => i64::from(d.day0() / 7 + 1),
        Field::DayOfYear => i64::from(d.ordinal()),
        Field::IsoDayOfYear => i64::from((iso.week() - 1) * 7 + d.weekday().number_from_monday()),
        Field::Day => i64::from(d.day()),
        Field::DayOfWeek => i64::from(d.weekday().number_from_sunday()),
        Field::IsoDayOfWeek => i64::from(d.weekday().number_from_monday()),
        // Days since 4714-11-24 BC (the Julian day of 0001-01-01 is 1721426).
        Field::Julian => i64::from(d.num_days_from_ce()) + 1_721_425,
        Field::Hour24 => i64::from(t.hour()),
        Field::Hour12 => i64::from((t.hour() + 11) % 12 + 1),
        Field::Minute => i64::from(t.minute()),
        Field::Second => i64::from(t.second()),
        Field::SecondsOfDay => i64::from(t.num_seconds_from_midnight()),
        Field::Millis => i64::from(t.nanosecond() / 1_000_000),
        Field::Micros => i64::from(t.nanosecond() / 1_000),
        Field::Fraction(digits) => i64::from(t.nanosecond() / 10u32.pow(9 - digits)),
    }
}

fn pad_name(s: String, long: bool, fill: bool) -> String {
    if long && !fill { format!("{s:<9}") } else { s }
}

/// A number field: zero-padded to its width (after a minus sign), or as it is in fill
/// mode; with its ordinal suffix.
fn push_number(out: &mut String, v: i64, width: usize, tok: &Token) {
    if tok.fill {
        out.push_str(&v.to_string());
    } else if v < 0 {
        out.push_str(&format!("-{:0width$}", v.unsigned_abs()));
    } else {
        out.push_str(&format!("{v:0width$}"));
    }
    if let Some(case) = tok.ordinal {
        out.push_str(&ordinal_suffix(v, case));
    }
}

/// An interval's fields: months, days, and the time part in nanoseconds.
struct Span {
    months: i64,
    days: i64,
    nanos: i64,
}

/// Format an interval as PostgreSQL does: the numeric fields of its parts (hours may pass
/// 24, a negative part keeps its sign); other patterns are an error.
fn format_span(sp: &Span, tokens: &[Token]) -> Result<String> {
    let mut out = String::new();
    let secs = sp.nanos / 1_000_000_000;
    let frac = sp.nanos % 1_000_000_000;
    for tok in tokens {
        match &tok.part {
            Part::Text(s) => out.push_str(s),
            Part::Number(f, width) => {
                let v = match f {
                    Field::Year => sp.months / 12,
                    Field::Month => sp.months % 12,
                    Field::Day => sp.days,
                    Field::Hour24 => secs / 3600,
                    Field::Hour12 => match (secs / 3600) % 12 {
                        0 => 12,
                        h => h,
                    },
                    Field::Minute => secs / 60 % 60,
                    Field::Second => secs % 60,
                    Field::SecondsOfDay => secs,
                    Field::Millis => frac / 1_000_000,
                    Field::Micros => frac / 1_000,
                    Field::Fraction(d) => frac / 10i64.pow(9 - d),
                    _ => return Err(interval_pattern()),
                };
                push_number(&mut out, v, *width, tok);
            }
            _ => return Err(interval_pattern()),
        }
    }
    Ok(out)
}

fn interval_pattern() -> datafusion::error::DataFusionError {
    crate::error::bad_datetime(
        NAME,
        "invalid format specification for an interval value (intervals are not tied to \
         calendar dates: use numeric fields such as HH24, MI, SS, DD, MM, YYYY)",
        false,
    )
}

fn format_moment(m: &Moment, tokens: &[Token]) -> String {
    let mut out = String::new();
    for tok in tokens {
        match &tok.part {
            Part::Text(s) => out.push_str(s),
            Part::Number(f, width) => {
                push_number(&mut out, number(m, *f), *width, tok);
            }
            Part::MonthName(case, long) => {
                let name = MONTHS[m.t.month0() as usize];
                let s = if *long { name } else { &name[..3] };
                out.push_str(&pad_name(case.apply(s), *long, tok.fill));
            }
            Part::DayName(case, long) => {
                let name = DAYS[m.t.weekday().num_days_from_sunday() as usize];
                let s = if *long { name } else { &name[..3] };
                out.push_str(&pad_name(case.apply(s), *long, tok.fill));
            }
            Part::Meridian(case, dots) => {
                let pm = m.t.hour() >= 12;
                let s = match (pm, dots) {
                    (false, false) => "AM",
                    (true, false) => "PM",
                    (false, true) => "A.M.",
                    (true, true) => "P.M.",
                };
                out.push_str(&if *case == Case::Lower {
                    s.to_lowercase()
                } else {
                    s.to_string()
                });
            }
            Part::Era(case, dots) => {
                let ad = m.t.year() > 0;
                let s = match (ad, dots) {
                    (true, false) => "AD",
                    (false, false) => "BC",
                    (true, true) => "A.D.",
                    (false, true) => "B.C.",
                };
                out.push_str(&if *case == Case::Lower {
                    s.to_lowercase()
                } else {
                    s.to_string()
                });
            }
            Part::RomanMonth(case) => {
                let r = ROMAN[m.t.month0() as usize];
                let s = if tok.fill {
                    r.to_string()
                } else {
                    format!("{r:<4}")
                };
                out.push_str(&if *case == Case::Lower {
                    s.to_lowercase()
                } else {
                    s
                });
            }
            Part::YearComma => {
                let y = m.t.year();
                out.push_str(&format!("{},{:03}", y / 1000, (y % 1000).abs()));
            }
            Part::Zone(case) => {
                if let Some((name, _)) = &m.zone {
                    out.push_str(&if *case == Case::Lower {
                        name.to_lowercase()
                    } else {
                        name.clone()
                    });
                }
            }
            Part::Offset | Part::ZoneHours | Part::ZoneMinutes => {
                let secs = m.zone.as_ref().map_or(0, |z| z.1);
                let sign = if secs < 0 { '-' } else { '+' };
                let (h, mi) = (secs.abs() / 3600, secs.abs() % 3600 / 60);
                match tok.part {
                    Part::Offset if mi == 0 => out.push_str(&format!("{sign}{h:02}")),
                    Part::Offset => out.push_str(&format!("{sign}{h:02}:{mi:02}")),
                    Part::ZoneHours => out.push_str(&format!("{sign}{h:02}")),
                    _ => out.push_str(&format!("{mi:02}")),
                }
            }
        }
    }
    out
}

/// A zone's display name at a moment: `UTC`, `+08` for fixed offsets, the abbreviation
/// (`CST`) for named zones.
fn zone_moment(us: i64, tz: &str) -> Result<Moment> {
    let utc = DateTime::from_timestamp_micros(us)
        .ok_or_else(|| invalid(NAME, "timestamp out of range"))?;
    if matches!(tz, "UTC" | "utc" | "Z" | "+00:00" | "+00" | "Etc/UTC") {
        return Ok(Moment {
            t: utc.naive_utc(),
            zone: Some(("UTC".to_string(), 0)),
        });
    }
    if let Ok(zone) = tz.parse::<chrono_tz::Tz>() {
        let local = zone.from_utc_datetime(&utc.naive_utc());
        let offset = local.offset().fix().local_minus_utc();
        return Ok(Moment {
            t: local.naive_local(),
            zone: Some((local.format("%Z").to_string(), offset)),
        });
    }
    let fixed: chrono::FixedOffset = tz
        .parse()
        .map_err(|_| invalid(NAME, format!("unknown time zone '{tz}'")))?;
    let local = fixed.from_utc_datetime(&utc.naive_utc());
    Ok(Moment {
        t: local.naive_local(),
        zone: Some((tz.to_string(), fixed.local_minus_utc())),
    })
}

/// One element of a numeric template.
#[derive(Debug, Clone, PartialEq)]
enum NumItem {
    /// A digit slot: `0` (always printed) or `9`, before or after the point.
    Digit {
        zero: bool,
        fraction: bool,
    },
    Point,
    Group,
    /// `S` after the digits (before them it is anchored to the number).
    TrailingSign,
    /// `MI` after the digits.
    TrailingMinus,
    /// `PR`: `<` anchored before the number, `>` here.
    AngleClose,
    Text(String),
}

/// A parsed numeric template.
#[derive(Debug, Clone, PartialEq)]
struct NumTemplate {
    items: Vec<NumItem>,
    fill: bool,
    /// `S` before the digits: `+`/`-` right before the number.
    leading_sign: bool,
    /// `PR`: `<` right before a negative number.
    angle: bool,
}

/// Parse a numeric template: `9 0 . D , G S MI PR FM`, quoted or other text. Patterns
/// PostgreSQL has and this does not (`PL SG EEEE V RN TH L`, `MI` or `S` inside the
/// digits) are an error rather than a different answer.
fn parse_number_template(t: &str) -> Result<NumTemplate> {
    let chars: Vec<char> = t.chars().collect();
    let mut items = vec![];
    let mut fill = false;
    let mut leading_sign = false;
    let mut angle = false;
    let mut seen_digit = false;
    let mut seen_point = false;
    let mut i = 0;
    let unsupported = |what: &str| {
        invalid(
            NAME,
            format!(
                "the number template pattern {what} is not supported (9 0 . D , G S MI PR FM are)"
            ),
        )
    };
    while i < chars.len() {
        let two: String = chars[i..].iter().take(2).collect::<String>().to_uppercase();
        let four: String = chars[i..].iter().take(4).collect::<String>().to_uppercase();
        if two == "FM" {
            fill = true;
            i += 2;
            continue;
        }
        if four == "EEEE" {
            return Err(unsupported("EEEE"));
        }
        if matches!(two.as_str(), "PL" | "SG" | "RN" | "TH") {
            return Err(unsupported(&two));
        }
        if two == "MI" {
            if !seen_digit {
                return Err(unsupported("MI before the digits"));
            }
            items.push(NumItem::TrailingMinus);
            i += 2;
            continue;
        }
        if two == "PR" {
            angle = true;
            items.push(NumItem::AngleClose);
            i += 2;
            continue;
        }
        let c = chars[i];
        match c {
            '9' | '0' => {
                if items
                    .iter()
                    .any(|x| matches!(x, NumItem::TrailingSign | NumItem::TrailingMinus))
                {
                    return Err(unsupported("S or MI inside the digits"));
                }
                seen_digit = true;
                items.push(NumItem::Digit {
                    zero: c == '0',
                    fraction: seen_point,
                });
            }
            '.' | 'D' | 'd' => {
                if seen_point {
                    return Err(invalid(NAME, "a number template has one decimal point"));
                }
                seen_point = true;
                items.push(NumItem::Point);
            }
            ',' | 'G' | 'g' => items.push(NumItem::Group),
            'S' | 's' => {
                if seen_digit || seen_point {
                    items.push(NumItem::TrailingSign);
                } else {
                    leading_sign = true;
                }
            }
            'V' | 'v' | 'L' | 'l' => return Err(unsupported(&c.to_string())),
            '"' => {
                let mut text = String::new();
                i += 1;
                while i < chars.len() && chars[i] != '"' {
                    if chars[i] == '\\' && i + 1 < chars.len() {
                        i += 1;
                    }
                    text.push(chars[i]);
                    i += 1;
                }
                items.push(NumItem::Text(text));
            }
            '\\' if i + 1 < chars.len() => {
                i += 1;
                items.push(NumItem::Text(chars[i].to_string()));
            }
            other => items.push(NumItem::Text(other.to_string())),
        }
        i += 1;
    }
    Ok(NumTemplate {
        items,
        fill,
        leading_sign,
        angle,
    })
}

/// Format a number as PostgreSQL's `to_char(double precision, template)` does (for the
/// patterns [`parse_number_template`] accepts).
fn format_number(v: f64, t: &NumTemplate) -> String {
    let slots = |fraction: bool| {
        t.items
            .iter()
            .filter(|x| matches!(x, NumItem::Digit { fraction: f, .. } if *f == fraction))
            .count()
    };
    let (pre, post) = (slots(false), slots(true));
    // The first integer slot from which digits are always printed (a `0`).
    let zero_start = t
        .items
        .iter()
        .filter(|x| {
            matches!(
                x,
                NumItem::Digit {
                    fraction: false,
                    ..
                }
            )
        })
        .position(|x| matches!(x, NumItem::Digit { zero: true, .. }));
    let negative = v < 0.0;
    let a = v.abs();
    // Like PostgreSQL, at most 15 significant digits (DBL_DIG) are printed; further
    // fraction slots get zeros.
    let int_len = format!("{a:.0}").len();
    let printed_post = if int_len >= 15 {
        0
    } else {
        post.min(15 - int_len)
    };
    let text = format!("{a:.printed_post$}");
    let (int_str, frac_str) = match text.split_once('.') {
        Some((x, y)) => (x.to_string(), format!("{y:0<post$}")),
        None => (text.clone(), "0".repeat(post)),
    };
    let overflow = int_str.len() > pre;
    // Fill mode drops trailing zeros in `9` fraction slots.
    let frac_kinds: Vec<bool> = t
        .items
        .iter()
        .filter_map(|x| match x {
            NumItem::Digit {
                zero,
                fraction: true,
            } => Some(*zero),
            _ => None,
        })
        .collect();
    let mut frac_keep = post;
    if t.fill && !overflow {
        while frac_keep > 0
            && !frac_kinds[frac_keep - 1]
            && frac_str.as_bytes()[frac_keep - 1] == b'0'
        {
            frac_keep -= 1;
        }
    }
    // A lone integer 0 before printed fraction digits is left out (" .50"), unless a `0`
    // slot asks for it.
    let int_digits = if !overflow && int_str == "0" && zero_start.is_none() && frac_keep > 0 {
        String::new()
    } else {
        int_str
    };
    let explicit = t.leading_sign
        || t.angle
        || t.items
            .iter()
            .any(|x| matches!(x, NumItem::TrailingSign | NumItem::TrailingMinus));
    let anchored: Option<char> = if t.leading_sign {
        Some(if negative { '-' } else { '+' })
    } else if t.angle {
        if negative {
            Some('<')
        } else {
            (!t.fill).then_some(' ')
        }
    } else if !explicit {
        if negative {
            Some('-')
        } else {
            (!t.fill).then_some(' ')
        }
    } else {
        None
    };
    let mut out = String::new();
    let mut started = false;
    let start = |out: &mut String, started: &mut bool| {
        if !*started {
            if let Some(c) = anchored {
                out.push(c);
            }
            *started = true;
        }
    };
    let (mut int_slot, mut frac_slot) = (0usize, 0usize);
    for item in &t.items {
        match item {
            NumItem::Digit {
                fraction: false, ..
            } => {
                let lead = pre - int_digits.len().min(pre);
                if overflow {
                    start(&mut out, &mut started);
                    out.push('#');
                } else if int_slot >= lead {
                    start(&mut out, &mut started);
                    out.push(int_digits.as_bytes()[int_slot - lead] as char);
                } else if zero_start.is_some_and(|z| int_slot >= z) {
                    start(&mut out, &mut started);
                    out.push('0');
                } else if !t.fill {
                    out.push(' ');
                }
                int_slot += 1;
            }
            NumItem::Digit { fraction: true, .. } => {
                if overflow {
                    out.push('#');
                } else if frac_slot < frac_keep {
                    out.push(frac_str.as_bytes()[frac_slot] as char);
                }
                frac_slot += 1;
            }
            NumItem::Point => {
                // No point when the template has no fraction digits (but with #s).
                if post > 0 || overflow {
                    start(&mut out, &mut started);
                    out.push('.');
                }
            }
            NumItem::Group => {
                if started {
                    out.push(',');
                } else if !t.fill {
                    out.push(' ');
                }
            }
            NumItem::TrailingSign => out.push(if negative { '-' } else { '+' }),
            NumItem::TrailingMinus => {
                if negative {
                    out.push('-');
                } else if !t.fill {
                    out.push(' ');
                }
            }
            NumItem::AngleClose => {
                if negative {
                    out.push('>');
                } else if !t.fill {
                    out.push(' ');
                }
            }
            NumItem::Text(s) => out.push_str(s),
        }
    }
    out
}

/// `format(row, template)` for each row whose value (`valid`) and template are not NULL;
/// a template text is parsed once for a run of rows that give it (usually all of them).
fn per_row<T>(
    templates: &StringArray,
    valid: impl Fn(usize) -> bool,
    parse: impl Fn(&str) -> Result<T>,
    mut format: impl FnMut(usize, &T) -> Result<String>,
) -> Result<StringArray> {
    let mut parsed: Option<(&str, T)> = None;
    let mut out = Vec::with_capacity(templates.len());
    for i in 0..templates.len() {
        if !valid(i) || templates.is_null(i) {
            out.push(None);
            continue;
        }
        let text = templates.value(i);
        let template = match parsed.take() {
            Some((t, p)) if t == text => (t, p),
            _ => (text, parse(text)?),
        };
        out.push(Some(format(i, &template.1)?));
        parsed = Some(template);
    }
    Ok(StringArray::from(out))
}

fn text_of(a: &ArrayRef) -> Result<StringArray> {
    Ok(cast(a, &DataType::Utf8)?.as_string::<i32>().clone())
}

impl ScalarUDFImpl for ToChar {
    fn name(&self) -> &str {
        NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        if types.len() != 2 {
            return Err(invalid(NAME, "takes (value, template)"));
        }
        let value = match &types[0] {
            DataType::Timestamp(_, tz) => DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
            DataType::Date32 | DataType::Date64 | DataType::Null => {
                DataType::Timestamp(TimeUnit::Microsecond, None)
            }
            t if t.is_numeric() => DataType::Float64,
            DataType::Interval(_) => DataType::Interval(IntervalUnit::MonthDayNano),
            DataType::Duration(_) => DataType::Duration(TimeUnit::Nanosecond),
            t => {
                return Err(invalid(
                    NAME,
                    format!("formats a timestamp, date, interval or number, not {t}"),
                ));
            }
        };
        Ok(vec![value, DataType::Utf8])
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let n = args.number_rows;
        let values = args.args[0].to_array(n)?;
        let templates = text_of(&args.args[1].to_array(n)?)?;
        let out: StringArray = match values.data_type() {
            DataType::Timestamp(_, tz) => {
                // A timestamptz shows in the session's zone, as in PostgreSQL.
                let session = args.config_options.execution.time_zone.clone();
                let tz: Option<String> = tz
                    .as_ref()
                    .map(|z| session.unwrap_or_else(|| z.to_string()));
                let ts = values.as_primitive::<TimestampMicrosecondType>();
                per_row(
                    &templates,
                    |i| ts.is_valid(i),
                    |t| Ok(parse_template(t)),
                    |i, tokens| {
                        let m = match &tz {
                            None => Moment {
                                t: DateTime::from_timestamp_micros(ts.value(i))
                                    .ok_or_else(|| invalid(NAME, "timestamp out of range"))?
                                    .naive_utc(),
                                zone: None,
                            },
                            Some(z) => zone_moment(ts.value(i), z.as_str())?,
                        };
                        Ok(format_moment(&m, tokens))
                    },
                )?
            }
            DataType::Interval(_) | DataType::Duration(_) => {
                let spans: Vec<Option<Span>> = match values.data_type() {
                    DataType::Interval(_) => values
                        .as_primitive::<IntervalMonthDayNanoType>()
                        .iter()
                        .map(|v| {
                            v.map(|i| Span {
                                months: i64::from(i.months),
                                days: i64::from(i.days),
                                nanos: i.nanoseconds,
                            })
                        })
                        .collect(),
                    _ => values
                        .as_primitive::<DurationNanosecondType>()
                        .iter()
                        .map(|v| {
                            v.map(|n| Span {
                                months: 0,
                                days: 0,
                                nanos: n,
                            })
                        })
                        .collect(),
                };
                per_row(
                    &templates,
                    |i| spans[i].is_some(),
                    |t| Ok(parse_template(t)),
                    |i, tokens| match &spans[i] {
                        Some(sp) => format_span(sp, tokens),
                        None => Ok(String::new()),
                    },
                )?
            }
            DataType::Float64 => {
                let v = values.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
                per_row(
                    &templates,
                    |i| v.is_valid(i),
                    parse_number_template,
                    |i, t| Ok(format_number(v.value(i), t)),
                )?
            }
            t => {
                return Err(invalid(
                    NAME,
                    format!("formats a timestamp, date or number, not {t}"),
                ));
            }
        };
        let out: ArrayRef = Arc::new(out);
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
        } else {
            ColumnarValue::Array(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Moment {
        Moment {
            t: NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f").unwrap(),
            zone: None,
        }
    }

    fn fmt(s: &str, t: &str) -> String {
        format_moment(&at(s), &parse_template(t))
    }

    #[test]
    fn dates_and_times_follow_postgres_templates() {
        let t = "2026-03-01 13:05:09.123456";
        assert_eq!(fmt(t, "YYYY-MM-DD HH24:MI:SS"), "2026-03-01 13:05:09");
        assert_eq!(fmt(t, "HH12:MI AM"), "01:05 PM");
        assert_eq!(fmt(t, "FMHH12:MI am"), "1:05 pm");
        assert_eq!(fmt(t, "Month"), "March    ");
        assert_eq!(fmt(t, "FMMonth DDth, YYYY"), "March 01st, 2026");
        assert_eq!(fmt(t, "FMMonth FMDDth"), "March 1st");
        assert_eq!(fmt(t, "MON mon Mon"), "MAR mar Mar");
        assert_eq!(fmt(t, "Day DY dy"), "Sunday    SUN sun");
        assert_eq!(fmt(t, "D ID"), "1 7");
        assert_eq!(fmt(t, "IYYY-IW"), "2026-09");
        assert_eq!(fmt(t, "YYYY-\"Q\"Q"), "2026-Q1");
        assert_eq!(fmt(t, "DDD WW W"), "060 09 1");
        assert_eq!(fmt(t, "MS US FF2"), "123 123456 12");
        assert_eq!(fmt(t, "SSSS"), "47109");
        assert_eq!(fmt(t, "CC Y,YYY RM"), "21 2,026 III ");
        assert_eq!(fmt(t, "J"), "2461101");
        assert_eq!(fmt("2026-12-31 00:00:00", "IYYY-IW-ID"), "2026-53-4");
        assert_eq!(fmt("2027-01-03 00:00:00", "IYYY IW"), "2026 53");
        assert_eq!(fmt("2026-03-22 23:00:00", "DDth HH12 AM"), "22nd 11 PM");
        assert_eq!(fmt("2026-03-11 00:00:00", "DDth HH12"), "11th 12");
        assert_eq!(fmt(t, "\"at\" HH24\\h \\\"Q\\\""), "at 13\\h \"1\"");
    }

    #[test]
    fn zones_show_their_wall_clock() {
        let m = zone_moment(1_772_370_000_000_000, "Asia/Shanghai").unwrap();
        assert_eq!(
            format_moment(&m, &parse_template("YYYY-MM-DD HH24:MI TZ OF")),
            "2026-03-01 21:00 CST +08"
        );
        let m = zone_moment(1_772_370_000_000_000, "UTC").unwrap();
        assert_eq!(
            format_moment(&m, &parse_template("HH24 TZ OF")),
            "13 UTC +00"
        );
    }

    #[test]
    fn numbers_follow_postgres_templates() {
        // Outputs of PostgreSQL 15's to_char(double precision, text).
        for (v, t, want) in [
            (1234.5, "FM999,999.00", "1,234.50"),
            (1234.5, "999,999.00", "   1,234.50"),
            (-1234.5, "999,999.00", "  -1,234.50"),
            (42.0, "0000", " 0042"),
            (42.0, "S0000", "+0042"),
            (-42.0, "9999MI", "  42-"),
            (0.5, "FM990.99", "0.5"),
            (12345.0, "999", " ###"),
            (3.14259, "9.99", " 3.14"),
            (-7.0, "999PR", "  <7>"),
            (7.0, "999PR", "   7 "),
            (0.5, "9.99", "  .50"),
            (-0.5, "9.99", " -.50"),
            (0.0, "9999", "    0"),
            (0.0, "FM9.9", "0."),
            (0.05, "FM9.9", ".1"),
            (7.0, "FM999.99", "7."),
            (-1234.5, "$999.99", "$-###.##"),
            (0.5, ".99", " .##"),
            (0.0, "9.", " 0"),
            (-0.5, "0999", "-0000"),
            (-7.0, "9,999", "    -7"),
            (0.5, "9.99S", " .50+"),
            (0.0, "S9.99", " +.00"),
            (0.0, "FM999.00", ".00"),
            (99.995, "999 \"units\"", " 100 units"),
        ] {
            let tpl = parse_number_template(t).unwrap();
            assert_eq!(format_number(v, &tpl), want, "{v} {t}");
        }
        for bad in ["9.99EEEE", "PL999", "MI9.99", "9MI9", "RN"] {
            assert!(parse_number_template(bad).is_err(), "{bad}");
        }
    }
}
