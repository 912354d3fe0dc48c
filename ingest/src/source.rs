//! Channel definitions ("sources"): one declarative definition per channel, written as a
//! TOML file in the config's `sources/` folder or as SQL
//! (`CREATE SOURCE name WITH (key = value, …)`), persisted in the lake under
//! `_touchlake/sources/<name>.toml`. The two forms round-trip: the SQL options are the TOML
//! keys flattened with dots (`format.delimiter`, `mapping.phone`, `rules.1.column`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use touchlake_catalog::Lake;

use crate::error::{IngestError, Result};

/// Where a source's records come from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Files matched by a glob on the lake's object store or a local path.
    Files,
    /// Events posted to the HTTP collector (Segment API) with this source's `write_key`.
    Http,
    /// Rows of a PostgreSQL table, pulled incrementally by `cursor` + `primary_key`.
    Postgres,
    /// Rows of a MySQL or MariaDB table, pulled like `postgres`.
    Mysql,
    /// Records arrive only by `COPY sources.<name> FROM STDIN` (psql `\copy`).
    Copy,
}

impl SourceKind {
    /// The name used in definitions and `SHOW SOURCES`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Files => "files",
            SourceKind::Http => "http",
            SourceKind::Postgres => "postgres",
            SourceKind::Mysql => "mysql",
            SourceKind::Copy => "copy",
        }
    }

    /// A database table pulled by cursor (`postgres`, `mysql`).
    pub fn is_database(self) -> bool {
        matches!(self, SourceKind::Postgres | SourceKind::Mysql)
    }
}

/// File format and parse options.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Format {
    /// `csv`, `ndjson` or `parquet`.
    #[serde(rename = "type")]
    pub kind: String,
    /// CSV field delimiter (one character).
    pub delimiter: String,
    /// CSV quote character.
    pub quote: String,
    /// Whether the first CSV line names the columns.
    pub header: bool,
    /// Text encoding of CSV/NDJSON files (`utf-8` with or without BOM, `gbk`, `gb18030`,
    /// `big5`, `shift_jis`, `latin1`, …: any WHATWG label).
    pub encoding: String,
    /// chrono formats (separated by `|`) tried first by `parse_timestamp` for this source.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub timestamp_format: String,
    /// Time zone of times without an offset (IANA name).
    pub timezone: String,
}

impl Default for Format {
    fn default() -> Self {
        Self {
            kind: "csv".into(),
            delimiter: ",".into(),
            quote: "\"".into(),
            header: true,
            encoding: "utf-8".into(),
            timestamp_format: String::new(),
            timezone: "UTC".into(),
        }
    }
}

/// A validation rule on mapped values. Exactly one of `not_null`, `accepted_values`,
/// `min`/`max`, `regex` or `check` is given; a row failing it goes to `quality.rejected`
/// with `reason` (or a generated one).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Rule {
    /// The unified column the rule is about (not needed for `check`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    /// The column must have a value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_null: Option<bool>,
    /// The value, if any, must be one of these.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_values: Option<Vec<String>>,
    /// Lowest allowed value (inclusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Highest allowed value (inclusive).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// The value, if any, must match this (POSIX-style) regular expression.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Any SQL condition over the unified columns; false rejects (NULL passes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
    /// The reason written to `quality.rejected`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One channel's definition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SourceDef {
    /// The source's name (lower snake case); also the default raw table `raw.<name>`.
    pub name: String,
    /// Where records come from.
    pub kind: SourceKind,
    /// The contract's `channel` value for every row (`store_pos`, `app`, …).
    pub channel: String,
    /// `online`, `offline` or `hybrid`.
    pub channel_type: String,
    /// For `files`: a glob, relative to the lake root (`landing/pos/*.csv`) or an absolute
    /// local path (`/data/pos/**/*.csv`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Parse options.
    #[serde(default)]
    pub format: Format,
    /// SQL expressions over the source's columns that make the natural key; the
    /// `touchpoint_id` is a hash of (source name, these values). Default for `http`:
    /// `message_id`; for `postgres` and `mysql`: the primary key.
    #[serde(default)]
    pub natural_key: Vec<String>,
    /// Unified column → SQL expression over the source's columns.
    #[serde(default)]
    pub mapping: BTreeMap<String, String>,
    /// Validation rules, checked after mapping.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    /// Currency of `revenue` when the mapping gives none (ISO 4217).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// The raw landing table (`raw.<raw_table>`); default: the source's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_table: Option<String>,
    /// Records per batch (one Delta commit per table per batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_rows: Option<usize>,
    /// Seconds between scheduled runs inside `touchlake serve` (none: only on demand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_seconds: Option<u64>,
    /// For `http`: the write key clients authenticate with (HTTP Basic user name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_key: Option<String>,
    /// For `postgres`: a connection string (`host=… user=… dbname=…` or
    /// `postgresql://…`); for `mysql`: `mysql://user:password@host:port/database`.
    /// `$NAME` parts are read from the environment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// For `postgres`: the table (`schema.table`) to pull; for `mysql`: `table` (in the
    /// connection's database) or `database.table`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    /// For `postgres` and `mysql`: the column that grows with new rows (e.g. `updated_at`, `id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// For `postgres` and `mysql`: the primary key columns (ties on the cursor are ordered by them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub primary_key: Vec<String>,
}

/// Unified columns a mapping may set, with their SQL types.
pub const MAPPABLE: &[(&str, &str)] = &[
    ("occurred_at", "timestamptz"),
    ("event_type", "text"),
    ("user_id", "text"),
    ("anonymous_id", "text"),
    ("phone", "text"),
    ("email", "text"),
    ("device_id", "text"),
    ("member_id", "text"),
    ("openid", "text"),
    ("store_id", "text"),
    ("campaign", "text"),
    ("content", "text"),
    ("revenue", "decimal(18,2)"),
    ("currency", "text"),
    ("score", "integer"),
    ("duration_ms", "bigint"),
    ("properties", "text"),
];

/// Default records per batch.
pub const DEFAULT_BATCH_ROWS: usize = 500_000;

impl SourceDef {
    /// Parse a TOML definition and check it.
    pub fn from_toml(text: &str) -> Result<Self> {
        let mut def: SourceDef =
            toml::from_str(text).map_err(|e| IngestError::Definition(e.to_string()))?;
        def.fill_defaults();
        def.validate()?;
        Ok(def)
    }

    /// The definition as TOML (the form stored in the lake and in `sources/`).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| IngestError::Definition(e.to_string()))
    }

    /// The raw landing table's name.
    pub fn raw_table(&self) -> &str {
        self.raw_table.as_deref().unwrap_or(&self.name)
    }

    /// Records per batch.
    pub fn batch_rows(&self) -> usize {
        self.batch_rows.unwrap_or(DEFAULT_BATCH_ROWS).max(1)
    }

    /// An `http` source gets the Segment mapping (see
    /// [`crate::collector::default_mapping`]) for the columns it leaves out, `message_id`
    /// as its natural key and NDJSON as its format.
    pub fn fill_defaults(&mut self) {
        if self.kind == SourceKind::Http {
            for (col, sql) in crate::collector::default_mapping() {
                self.mapping
                    .entry(col.to_string())
                    .or_insert_with(|| sql.to_string());
            }
            if self.natural_key.is_empty() {
                self.natural_key = vec!["message_id".into()];
            }
            self.format.kind = "ndjson".into();
        }
        if self.kind.is_database() {
            self.format.kind = "ndjson".into();
            if self.natural_key.is_empty() {
                self.natural_key = self.primary_key.clone();
            }
        }
    }

    /// Check names, required fields and the mapping's targets.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(IngestError::Definition(format!(
                "source {}: {m}",
                self.name
            )))
        };
        if touchlake_catalog::lake::validate_name(&self.name).is_err()
            || self.name.chars().any(|c| c.is_ascii_uppercase())
        {
            return bad("a source name is lower-case letters, digits and _".into());
        }
        if touchlake_catalog::lake::validate_name(self.raw_table()).is_err() {
            return bad(format!("invalid raw_table '{}'", self.raw_table()));
        }
        if self.channel.is_empty() || self.channel.chars().any(|c| c.is_ascii_uppercase()) {
            return bad("channel must be lower snake case, e.g. store_pos".into());
        }
        if !["online", "offline", "hybrid"].contains(&self.channel_type.as_str()) {
            return bad(format!(
                "channel_type '{}' is not online, offline or hybrid",
                self.channel_type
            ));
        }
        if self.kind == SourceKind::Files && self.path.as_deref().unwrap_or("").is_empty() {
            return bad("a files source needs path (a glob)".into());
        }
        if self.kind == SourceKind::Http && self.write_key.as_deref().unwrap_or("").len() < 8 {
            return bad("an http source needs write_key (at least 8 characters)".into());
        }
        if self.kind.is_database() {
            let kind = self.kind.as_str();
            if self.connection.as_deref().unwrap_or("").is_empty() {
                return bad(format!("a {kind} source needs connection"));
            }
            if self.table.as_deref().unwrap_or("").is_empty() {
                return bad(format!("a {kind} source needs table"));
            }
            if self.cursor.as_deref().unwrap_or("").is_empty() || self.primary_key.is_empty() {
                return bad(format!("a {kind} source needs cursor and primary_key"));
            }
        }
        if !["csv", "ndjson", "parquet"].contains(&self.format.kind.as_str()) {
            return bad(format!(
                "format.type '{}' is not csv, ndjson or parquet",
                self.format.kind
            ));
        }
        if self.format.delimiter.chars().count() != 1 || !self.format.delimiter.is_ascii() {
            return bad("format.delimiter must be one ASCII character".into());
        }
        if self.format.quote.chars().count() != 1 || !self.format.quote.is_ascii() {
            return bad("format.quote must be one ASCII character".into());
        }
        if encoding_rs::Encoding::for_label(self.format.encoding.as_bytes()).is_none() {
            return bad(format!("unknown encoding '{}'", self.format.encoding));
        }
        if self.natural_key.is_empty() {
            return bad("natural_key needs at least one expression".into());
        }
        for col in self.mapping.keys() {
            if !MAPPABLE.iter().any(|(c, _)| c == col) {
                return bad(format!(
                    "mapping.{col}: not a mappable column of unified.touchpoints ({})",
                    MAPPABLE
                        .iter()
                        .map(|(c, _)| *c)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
        for need in ["occurred_at", "event_type"] {
            if !self.mapping.contains_key(need) {
                return bad(format!("mapping.{need} is required"));
            }
        }
        for (i, r) in self.rules.iter().enumerate() {
            let kinds = [
                r.not_null.is_some(),
                r.accepted_values.is_some(),
                r.min.is_some() || r.max.is_some(),
                r.regex.is_some(),
                r.check.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                return bad(format!(
                    "rules.{}: give exactly one of not_null, accepted_values, min/max, regex, check",
                    i + 1
                ));
            }
            if r.check.is_none() {
                match &r.column {
                    Some(c) if c == "touchpoint_id" || MAPPABLE.iter().any(|(m, _)| m == c) => {}
                    Some(c) => return bad(format!("rules.{}: unknown column '{c}'", i + 1)),
                    None => return bad(format!("rules.{}: column is required", i + 1)),
                }
            }
        }
        Ok(())
    }

    /// `CREATE SOURCE` statement text that defines this source.
    pub fn to_sql(&self) -> Result<String> {
        let value =
            toml::Value::try_from(self).map_err(|e| IngestError::Definition(e.to_string()))?;
        let mut options = vec![];
        if let toml::Value::Table(t) = value {
            for (k, v) in t {
                if k != "name" {
                    flatten(&k, &v, &mut options);
                }
            }
        }
        let body: Vec<String> = options
            .iter()
            .map(|(k, v)| format!("  {} = {v}", sql_key(k)))
            .collect();
        Ok(format!(
            "CREATE SOURCE {} WITH (\n{}\n)",
            self.name,
            body.join(",\n")
        ))
    }

    /// Build a definition from `CREATE SOURCE name WITH (…)` options (dotted keys).
    pub fn from_options(name: &str, options: &[(String, OptionValue)]) -> Result<Self> {
        let mut root = toml::Table::new();
        root.insert("name".into(), toml::Value::String(name.to_string()));
        for (key, value) in options {
            insert_dotted(&mut root, key, value.to_toml())?;
        }
        let root = arrays_from_numbered(toml::Value::Table(root));
        let mut def: SourceDef = root
            .try_into()
            .map_err(|e: toml::de::Error| IngestError::Definition(e.to_string()))?;
        def.fill_defaults();
        def.validate()?;
        Ok(def)
    }
}

/// A value in `CREATE SOURCE … WITH (key = value)`.
#[derive(Debug, Clone, PartialEq)]
pub enum OptionValue {
    /// A string literal.
    Text(String),
    /// A number literal.
    Number(String),
    /// TRUE / FALSE.
    Bool(bool),
    /// `ARRAY[…]` or `(…)`.
    List(Vec<OptionValue>),
}

impl OptionValue {
    fn to_toml(&self) -> toml::Value {
        match self {
            OptionValue::Text(s) => toml::Value::String(s.clone()),
            OptionValue::Number(n) => n
                .parse::<i64>()
                .map(toml::Value::Integer)
                .or_else(|_| n.parse::<f64>().map(toml::Value::Float))
                .unwrap_or_else(|_| toml::Value::String(n.clone())),
            OptionValue::Bool(b) => toml::Value::Boolean(*b),
            OptionValue::List(v) => toml::Value::Array(v.iter().map(|x| x.to_toml()).collect()),
        }
    }
}

fn sql_key(k: &str) -> String {
    let plain = k.split('.').all(|p| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    });
    if plain {
        k.to_string()
    } else {
        format!("'{}'", k.replace('\'', "''"))
    }
}

fn sql_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("'{}'", s.replace('\'', "''")),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => {
            let s = f.to_string();
            if s.contains('.') || s.contains('e') {
                s
            } else {
                format!("{s}.0")
            }
        }
        toml::Value::Boolean(b) => if *b { "true" } else { "false" }.to_string(),
        toml::Value::Array(a) => format!(
            "ARRAY[{}]",
            a.iter().map(sql_value).collect::<Vec<_>>().join(", ")
        ),
        other => format!("'{}'", other.to_string().replace('\'', "''")),
    }
}

fn flatten(prefix: &str, v: &toml::Value, out: &mut Vec<(String, String)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                flatten(&format!("{prefix}.{k}"), v, out);
            }
        }
        toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => {
            for (i, x) in a.iter().enumerate() {
                flatten(&format!("{prefix}.{}", i + 1), x, out);
            }
        }
        other => out.push((prefix.to_string(), sql_value(other))),
    }
}

fn insert_dotted(root: &mut toml::Table, key: &str, value: toml::Value) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(IngestError::Definition(format!(
            "invalid option name '{key}'"
        )));
    }
    let mut table = root;
    for p in &parts[..parts.len() - 1] {
        let entry = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry.as_table_mut().ok_or_else(|| {
            IngestError::Definition(format!("option '{key}' conflicts with '{p}'"))
        })?;
    }
    let last = parts[parts.len() - 1].to_string();
    if table.insert(last, value).is_some() {
        return Err(IngestError::Definition(format!(
            "option '{key}' given twice"
        )));
    }
    Ok(())
}

/// Tables whose keys are all 1, 2, … (from `rules.1.column`) become arrays.
fn arrays_from_numbered(v: toml::Value) -> toml::Value {
    match v {
        toml::Value::Table(t) => {
            let numbered = !t.is_empty() && t.keys().all(|k| k.parse::<usize>().is_ok());
            let mut t: Vec<(String, toml::Value)> = t
                .into_iter()
                .map(|(k, v)| (k, arrays_from_numbered(v)))
                .collect();
            if numbered {
                t.sort_by_key(|(k, _)| k.parse::<usize>().unwrap_or(usize::MAX));
                toml::Value::Array(t.into_iter().map(|(_, v)| v).collect())
            } else {
                toml::Value::Table(t.into_iter().collect())
            }
        }
        other => other,
    }
}

/// Sources persisted in the lake (`_touchlake/sources/*.toml`).
pub async fn load_all(lake: &Lake) -> Result<Vec<SourceDef>> {
    let mut out = vec![];
    for rel in lake.list_meta("sources").await? {
        let Some(name) = rel.strip_suffix(".toml") else {
            continue;
        };
        if let Some(def) = load(lake, name).await? {
            out.push(def);
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One persisted source, if defined.
pub async fn load(lake: &Lake, name: &str) -> Result<Option<SourceDef>> {
    let Some(bytes) = lake.get_meta(&["sources", &format!("{name}.toml")]).await? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&bytes);
    Ok(Some(SourceDef::from_toml(&text).map_err(|e| {
        IngestError::Definition(format!("_touchlake/sources/{name}.toml: {e}"))
    })?))
}

/// Persist a definition; with `replace` false an existing one is an error.
pub async fn save(lake: &Lake, def: &SourceDef, replace: bool) -> Result<()> {
    def.validate()?;
    let body = def.to_toml()?.into_bytes();
    let created = lake
        .put_meta(&["sources", &format!("{}.toml", def.name)], body, !replace)
        .await?;
    if !created {
        return Err(IngestError::SourceExists(def.name.clone()));
    }
    Ok(())
}

/// Remove a definition; false if there was none.
pub async fn drop(lake: &Lake, name: &str) -> Result<bool> {
    let existed = lake
        .delete_meta(&["sources", &format!("{name}.toml")])
        .await?;
    if existed {
        // A source created again under this name starts from the beginning.
        crate::pull::reset_position(lake, name).await?;
    }
    Ok(existed)
}

/// Read every `*.toml` in a folder (the config's `sources/`).
pub fn read_folder(dir: &std::path::Path) -> Result<Vec<SourceDef>> {
    let mut out = vec![];
    let entries = std::fs::read_dir(dir)
        .map_err(|e| IngestError::Definition(format!("cannot read {}: {e}", dir.display())))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p)
            .map_err(|e| IngestError::Definition(format!("cannot read {}: {e}", p.display())))?;
        let def = SourceDef::from_toml(&text)
            .map_err(|e| IngestError::Definition(format!("{}: {e}", p.display())))?;
        out.push(def);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POS: &str = r#"
name = "pos"
kind = "files"
channel = "store_pos"
channel_type = "offline"
path = "landing/pos/*.csv"
natural_key = ["order_id", "line_no"]
currency = "CNY"

[format]
type = "csv"
encoding = "gbk"
timezone = "Asia/Shanghai"

[mapping]
occurred_at = "parse_timestamp(order_time)"
event_type = "CASE status WHEN 'paid' THEN 'purchase' WHEN 'refund' THEN 'refund' END"
phone = "phone_e164(mobile, 'CN')"
revenue = "replace(amount, ',', '')::decimal(18,2)"

[[rules]]
column = "event_type"
not_null = true
reason = "unknown order status"

[[rules]]
column = "revenue"
min = -100000.0
max = 100000.0
"#;

    #[test]
    fn toml_and_sql_round_trip() {
        let def = SourceDef::from_toml(POS).unwrap();
        let sql = def.to_sql().unwrap();
        assert!(sql.contains("format.encoding = 'gbk'"), "{sql}");
        assert!(sql.contains("rules.2.min = -100000.0"), "{sql}");
        assert!(sql.contains("'CN'')'"), "{sql}");
        // Options as the SQL parser would hand them over.
        let mut opts = vec![];
        let value = toml::Value::try_from(&def).unwrap();
        let mut flat = vec![];
        for (k, v) in value.as_table().unwrap() {
            if k != "name" {
                flatten(k, v, &mut flat);
            }
        }
        for (k, _) in &flat {
            let v = lookup(&value, k);
            opts.push((k.clone(), v));
        }
        let back = SourceDef::from_options("pos", &opts).unwrap();
        assert_eq!(back, def);
        assert_eq!(SourceDef::from_toml(&back.to_toml().unwrap()).unwrap(), def);
    }

    fn lookup(v: &toml::Value, key: &str) -> OptionValue {
        let mut cur = v;
        for p in key.split('.') {
            cur = match cur {
                toml::Value::Array(a) => &a[p.parse::<usize>().unwrap() - 1],
                other => &other[p],
            };
        }
        to_opt(cur)
    }

    fn to_opt(v: &toml::Value) -> OptionValue {
        match v {
            toml::Value::String(s) => OptionValue::Text(s.clone()),
            toml::Value::Integer(i) => OptionValue::Number(i.to_string()),
            toml::Value::Float(f) => OptionValue::Number(f.to_string()),
            toml::Value::Boolean(b) => OptionValue::Bool(*b),
            toml::Value::Array(a) => OptionValue::List(a.iter().map(to_opt).collect()),
            _ => unreachable!(),
        }
    }

    #[test]
    fn bad_definitions_say_what_is_wrong() {
        let e = SourceDef::from_toml(&POS.replace("phone = ", "phon = ")).unwrap_err();
        assert!(e.to_string().contains("mapping.phon"), "{e}");
        let e = SourceDef::from_toml(&POS.replace("\"offline\"", "\"shop\"")).unwrap_err();
        assert!(e.to_string().contains("channel_type"), "{e}");
        let e = SourceDef::from_toml(&POS.replace("\"gbk\"", "\"klingon\"")).unwrap_err();
        assert!(e.to_string().contains("encoding"), "{e}");
    }
}
