//! Run-time settings of one connection (`SET`, `SHOW`, `RESET`), with PostgreSQL's names,
//! defaults and the subset that is reported to the client as ParameterStatus.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::engine::PG_VERSION;

/// Settings reported to the client in ParameterStatus messages, by canonical name.
pub const REPORTED: &[&str] = &[
    "application_name",
    "client_encoding",
    "DateStyle",
    "default_transaction_read_only",
    "in_hot_standby",
    "integer_datetimes",
    "IntervalStyle",
    "is_superuser",
    "search_path",
    "server_encoding",
    "server_version",
    "session_authorization",
    "standard_conforming_strings",
    "TimeZone",
];

/// Settings a client may change and their defaults (lower-case names).
fn defaults(user: &str) -> BTreeMap<String, String> {
    let d = [
        ("application_name", ""),
        ("client_encoding", "UTF8"),
        ("client_min_messages", "notice"),
        ("datestyle", "ISO, MDY"),
        ("default_transaction_isolation", "read committed"),
        ("default_transaction_read_only", "off"),
        ("extra_float_digits", "1"),
        ("idle_in_transaction_session_timeout", "0"),
        ("in_hot_standby", "off"),
        ("integer_datetimes", "on"),
        ("intervalstyle", "postgres"),
        ("is_superuser", "on"),
        ("jit", "off"),
        ("lc_collate", "C"),
        ("lc_ctype", "C"),
        ("lc_messages", "C"),
        ("lc_monetary", "C"),
        ("lc_numeric", "C"),
        ("lc_time", "C"),
        ("lock_timeout", "0"),
        ("max_identifier_length", "63"),
        ("search_path", "public"),
        ("server_encoding", "UTF8"),
        ("server_version", PG_VERSION),
        ("server_version_num", "150000"),
        ("standard_conforming_strings", "on"),
        ("statement_timeout", "0"),
        ("timezone", "UTC"),
        ("transaction_isolation", "read committed"),
        ("transaction_read_only", "off"),
        ("bytea_output", "hex"),
        ("geqo", "on"),
        ("row_security", "on"),
        ("synchronous_commit", "on"),
        ("work_mem", "4MB"),
        ("escape_string_warning", "on"),
        ("max_index_keys", "32"),
        ("block_size", "8192"),
    ];
    let mut m: BTreeMap<String, String> = d
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    m.insert("session_authorization".into(), user.to_string());
    m
}

/// Settings that only the server may change.
const READ_ONLY: &[&str] = &[
    "server_version",
    "server_version_num",
    "server_encoding",
    "integer_datetimes",
    "in_hot_standby",
    "is_superuser",
    "lc_collate",
    "lc_ctype",
    "max_identifier_length",
    "max_index_keys",
    "block_size",
    "session_authorization",
];

/// The prefix of the server's configuration as settings ([`crate::config::Config::visible`]):
/// read-only, and reserved (no session variable of its own under it).
pub const SERVER_PREFIX: &str = "touchlake.";

/// Why a SET was refused.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// No such setting.
    #[error("unrecognized configuration parameter \"{0}\"")]
    Unknown(String),
    /// A setting that cannot be changed by a session.
    #[error("parameter \"{0}\" cannot be changed")]
    ReadOnly(String),
    /// The server's configuration (`touchlake.*`).
    #[error(
        "parameter \"{0}\" cannot be changed without restarting the server (it is set in the \
         configuration file or a TOUCHLAKE_* environment variable)"
    )]
    ServerOnly(String),
    /// A value of the wrong shape.
    #[error("invalid value for parameter \"{0}\": \"{1}\"")]
    Invalid(String, String),
}

/// One connection's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    values: BTreeMap<String, String>,
    initial: BTreeMap<String, String>,
}

/// `value` for the DataFusion option `key`, checked by DataFusion itself, with Postgres'
/// boolean spellings (`on`, `off`, `yes`, `no`, what `SET x = true` arrives as) turned into
/// the `true`/`false` it parses. Refused: an unknown option or a value it does not take, so
/// a bad `SET` fails alone instead of every statement after it.
fn datafusion_value(key: &str, value: &str) -> Result<String, SettingError> {
    let boolean = match value.to_ascii_lowercase().as_str() {
        "on" | "yes" => Some("true"),
        "off" | "no" => Some("false"),
        _ => None,
    };
    let mut options = datafusion::config::ConfigOptions::new();
    if options.set(key, value).is_ok() {
        return Ok(value.to_string());
    }
    if let Some(b) = boolean
        && options.set(key, b).is_ok()
    {
        return Ok(b.to_string());
    }
    if options.entries().iter().all(|e| e.key != key) {
        return Err(SettingError::Unknown(key.to_string()));
    }
    Err(SettingError::Invalid(key.to_string(), value.to_string()))
}

/// Refuse a change of `key` if it is the server's (`known`: a setting of this server).
fn server_only(key: &str, known: bool) -> Result<(), SettingError> {
    match key.strip_prefix(SERVER_PREFIX) {
        Some(_) if known => Err(SettingError::ServerOnly(key.to_string())),
        Some(_) => Err(SettingError::Unknown(key.to_string())),
        None => Ok(()),
    }
}

/// The canonical (reported) spelling of a setting name.
pub fn canonical(name: &str) -> String {
    let lower = name.to_ascii_lowercase();
    REPORTED
        .iter()
        .find(|r| r.eq_ignore_ascii_case(&lower))
        .map(|r| r.to_string())
        .unwrap_or(lower)
}

impl Settings {
    /// Defaults for `user`, then the startup packet's options (`application_name`, …),
    /// and the server's configuration (`server`: read-only `touchlake.*` settings).
    pub fn new(
        user: &str,
        startup: &BTreeMap<String, String>,
        statement_timeout_ms: u64,
        server: &[(String, String)],
    ) -> Settings {
        let mut values = defaults(user);
        values.insert("statement_timeout".into(), statement_timeout_ms.to_string());
        values.extend(server.iter().cloned());
        for (k, v) in startup {
            let k = k.to_ascii_lowercase();
            if values.contains_key(&k)
                && !READ_ONLY.contains(&k.as_str())
                && !k.starts_with(SERVER_PREFIX)
                && let Ok(v) = normalize(&k, v)
            {
                values.insert(k, v);
            }
        }
        Settings {
            initial: values.clone(),
            values,
        }
    }

    /// Current value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        let key = alias(&name.to_ascii_lowercase());
        self.values.get(&key).map(String::as_str)
    }

    /// SET `name` = `value`. Returns the canonical name if the client must be told
    /// (ParameterStatus).
    pub fn set(
        &mut self,
        name: &str,
        value: &str,
    ) -> Result<Option<(String, String)>, SettingError> {
        let key = alias(&name.to_ascii_lowercase());
        server_only(&key, self.values.contains_key(&key))?;
        if key.starts_with("datafusion.") {
            let v = datafusion_value(&key, value)?;
            self.values.insert(key, v);
            return Ok(None);
        }
        if key.contains('.') {
            self.values.insert(key, value.to_string());
            return Ok(None);
        }
        if !self.values.contains_key(&key) {
            return Err(SettingError::Unknown(name.to_string()));
        }
        if READ_ONLY.contains(&key.as_str()) {
            return Err(SettingError::ReadOnly(name.to_string()));
        }
        let v = normalize(&key, value)?;
        self.values.insert(key.clone(), v.clone());
        Ok(self.reported(&key, v))
    }

    /// RESET `name` to its value at connection start.
    pub fn reset(&mut self, name: &str) -> Result<Option<(String, String)>, SettingError> {
        let key = alias(&name.to_ascii_lowercase());
        server_only(&key, self.initial.contains_key(&key))?;
        match self.initial.get(&key).cloned() {
            Some(v) => {
                self.values.insert(key.clone(), v.clone());
                Ok(self.reported(&key, v))
            }
            None if key.contains('.') => {
                self.values.remove(&key);
                Ok(None)
            }
            None => Err(SettingError::Unknown(name.to_string())),
        }
    }

    /// RESET ALL; returns the reported settings that changed.
    pub fn reset_all(&mut self) -> Vec<(String, String)> {
        let changed: Vec<_> = self
            .initial
            .iter()
            .filter(|(k, v)| self.values.get(*k) != Some(*v))
            .filter_map(|(k, v)| self.reported(k, v.clone()))
            .collect();
        self.values = self.initial.clone();
        changed
    }

    fn reported(&self, key: &str, v: String) -> Option<(String, String)> {
        let c = canonical(key);
        REPORTED.contains(&c.as_str()).then_some((c, v))
    }

    /// The value of `key` (as stored, lower case) at connection start, if it had one.
    pub fn initial(&self, key: &str) -> Option<&str> {
        self.initial.get(key).map(String::as_str)
    }

    /// All settings, for `SHOW ALL` and `pg_settings`.
    pub fn all(&self) -> impl Iterator<Item = (&String, &String)> {
        self.values.iter()
    }

    /// `statement_timeout` as a duration (None when 0).
    pub fn statement_timeout(&self) -> Option<Duration> {
        let ms = self
            .get("statement_timeout")
            .and_then(|v| parse_ms(v).ok())
            .unwrap_or(0);
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// The session time zone (`TimeZone`).
    pub fn time_zone(&self) -> &str {
        self.get("timezone").unwrap_or("UTC")
    }

    /// Schemas of `search_path`, in order, without `$user` and quotes.
    pub fn search_path(&self) -> Vec<String> {
        self.get("search_path")
            .unwrap_or("public")
            .split(',')
            .map(|s| s.trim().trim_matches('"').to_string())
            .filter(|s| !s.is_empty() && s != "$user")
            .collect()
    }
}

fn alias(key: &str) -> String {
    match key {
        "time zone" | "time_zone" => "timezone".into(),
        "names" => "client_encoding".into(),
        "transaction isolation level" => "transaction_isolation".into(),
        "session authorization" => "session_authorization".into(),
        other => other.to_string(),
    }
}

/// Parse a PostgreSQL duration setting (`5000`, `5s`, `500ms`, `1min`) into milliseconds.
pub fn parse_ms(v: &str) -> Result<u64, ()> {
    let v = v.trim().trim_matches('\'');
    let split = v
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: f64 = num.parse().map_err(|_| ())?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "ms" => 1.0,
        "s" | "sec" => 1000.0,
        "min" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return Err(()),
    };
    Ok((n * mult) as u64)
}

/// Validate and normalize a value for `key`.
fn normalize(key: &str, value: &str) -> Result<String, SettingError> {
    let bad = || SettingError::Invalid(key.to_string(), value.to_string());
    match key {
        "timezone" => normalize_time_zone(value).ok_or_else(bad),
        "statement_timeout" | "lock_timeout" | "idle_in_transaction_session_timeout" => {
            parse_ms(value).map(|ms| ms.to_string()).map_err(|_| bad())
        }
        "client_encoding" => {
            let v = value.to_ascii_uppercase().replace('-', "");
            if v == "UTF8" || v == "UNICODE" {
                Ok("UTF8".into())
            } else {
                Err(bad())
            }
        }
        "extra_float_digits" => value
            .trim()
            .parse::<i32>()
            .map(|v| v.to_string())
            .map_err(|_| bad()),
        _ => Ok(value.to_string()),
    }
}

/// Accept IANA names (`Asia/Shanghai`), `UTC`/`GMT`/`Z`, and offsets (`+08:00`, `-5`).
pub fn normalize_time_zone(v: &str) -> Option<String> {
    let v = v.trim();
    if v.eq_ignore_ascii_case("utc")
        || v.eq_ignore_ascii_case("gmt")
        || v == "Z"
        || v.eq_ignore_ascii_case("local")
        || v.eq_ignore_ascii_case("default")
    {
        return Some("UTC".into());
    }
    if let Ok(tz) = v.parse::<chrono_tz::Tz>() {
        return Some(tz.name().to_string());
    }
    if let Some(tz) = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|t| t.name().eq_ignore_ascii_case(v))
    {
        return Some(tz.name().to_string());
    }
    // Offsets: +08:00, +0800, -5, 8
    let (sign, rest) = match v.as_bytes().first() {
        Some(b'+') => (1, &v[1..]),
        Some(b'-') => (-1, &v[1..]),
        _ => (1, v),
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h.parse::<i32>().ok()?, m.parse::<i32>().ok()?),
        None if rest.len() == 4 => (rest[..2].parse().ok()?, rest[2..].parse().ok()?),
        None => (rest.parse::<i32>().ok()?, 0),
    };
    if h > 15 || m > 59 {
        return None;
    }
    Some(format!(
        "{}{:02}:{:02}",
        if sign < 0 { '-' } else { '+' },
        h,
        m
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_zones_normalize() {
        assert_eq!(
            normalize_time_zone("asia/shanghai").as_deref(),
            Some("Asia/Shanghai")
        );
        assert_eq!(normalize_time_zone("+8").as_deref(), Some("+08:00"));
        assert_eq!(normalize_time_zone("-05:30").as_deref(), Some("-05:30"));
        assert_eq!(normalize_time_zone("Mars/Base"), None);
    }

    #[test]
    fn datafusion_options_are_checked() {
        let mut s = Settings::new("touchlake", &BTreeMap::new(), 0, &[]);
        // `SET x = true` arrives as `on`: DataFusion takes `true`.
        s.set("datafusion.execution.parquet.pushdown_filters", "on")
            .unwrap();
        assert_eq!(
            s.get("datafusion.execution.parquet.pushdown_filters"),
            Some("true")
        );
        s.set("datafusion.execution.batch_size", "4096").unwrap();
        assert_eq!(s.get("datafusion.execution.batch_size"), Some("4096"));
        assert!(matches!(
            s.set("datafusion.execution.batch_size", "many"),
            Err(SettingError::Invalid(..))
        ));
        assert!(matches!(
            s.set("datafusion.no_such.option", "1"),
            Err(SettingError::Unknown(_))
        ));
        assert_eq!(s.get("datafusion.execution.batch_size"), Some("4096"));
    }

    #[test]
    fn set_and_reset() {
        let mut s = Settings::new("touchlake", &BTreeMap::new(), 0, &[]);
        assert_eq!(
            s.set("TimeZone", "Asia/Tokyo").unwrap(),
            Some(("TimeZone".to_string(), "Asia/Tokyo".to_string()))
        );
        assert_eq!(s.time_zone(), "Asia/Tokyo");
        assert!(s.set("no_such_thing", "1").is_err());
        assert!(s.set("server_version", "16").is_err());
        s.reset_all();
        assert_eq!(s.time_zone(), "UTC");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_ms("5s"), Ok(5000));
        assert_eq!(parse_ms("250"), Ok(250));
        assert_eq!(parse_ms("1min"), Ok(60000));
        assert!(parse_ms("soon").is_err());
    }
}
