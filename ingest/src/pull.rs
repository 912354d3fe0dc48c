//! Database sources (`postgres`, `mysql`): incremental pulls of a table by cursor column
//! and primary key. Each pull reads rows after the last position `(cursor, primary key…)`,
//! in that order, `batch_rows` at a time, each row as one JSON object, and ingests each
//! batch like a file's chunk. The position is kept in the lake
//! (`_touchlake/cursors/<source>.json`) and moved only after the batch is committed; the
//! batch id is a hash of the rows, so a pull repeated after a crash re-reads the same rows
//! and commits nothing twice.
//!
//! Rows whose cursor is NULL are never pulled; a row updated later (new cursor value)
//! keeps its natural key and so its `touchpoint_id`, and counts as a duplicate.
//! The database-specific parts (connecting, the SQL dialect, a row as JSON) are in
//! [`crate::postgres`] and [`crate::mysql`].

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use touchlake_catalog::Lake;

use crate::error::{IngestError, Result};
use crate::read;
use crate::run::{self, RunSummary};
use crate::source::{Format, SourceDef, SourceKind};

/// The last position pulled.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Position {
    /// The cursor value as text.
    pub cursor: String,
    /// The primary key values as text.
    pub key: Vec<String>,
}

/// The SQL spelling of the database a source pulls from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL and MariaDB.
    Mysql,
}

impl Dialect {
    /// A quoted identifier.
    pub fn ident(self, s: &str) -> String {
        match self {
            Dialect::Postgres => format!("\"{}\"", s.replace('"', "\"\"")),
            Dialect::Mysql => format!("`{}`", s.replace('`', "``")),
        }
    }

    /// A string literal (MySQL also escapes backslashes).
    pub fn lit(self, s: &str) -> String {
        match self {
            Dialect::Postgres => format!("'{}'", s.replace('\'', "''")),
            Dialect::Mysql => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "''")),
        }
    }

    /// `schema.table` → `"schema"."table"` (or with backquotes).
    pub fn table(self, t: &str) -> String {
        t.split('.')
            .map(|p| self.ident(p))
            .collect::<Vec<_>>()
            .join(".")
    }

    fn text(self, expr: &str) -> String {
        match self {
            Dialect::Postgres => format!("({expr})::text"),
            Dialect::Mysql => format!("CAST({expr} AS CHAR)"),
        }
    }
}

/// One pulled row: the row as a JSON object, and its position.
pub struct Pulled {
    /// The row as one JSON object.
    pub json: String,
    /// Its position.
    pub pos: Position,
}

/// A connection to a source database.
pub trait Fetch: Send {
    /// How the database spells SQL.
    fn dialect(&self) -> Dialect;
    /// The expression that makes a row of `t` one JSON object (text).
    fn row_json(&self) -> String;
    /// Run a [`batch_sql`] query: column 0 is the JSON, 1 the cursor, then the key.
    fn fetch<'a>(&'a mut self, sql: String, keys: usize) -> BoxFuture<'a, Result<Vec<Pulled>>>;
}

/// Replace `$NAME` / `${NAME}` with environment variables (so passwords stay out of the
/// definition).
pub fn expand_env(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, tail) = if let Some(b) = after.strip_prefix('{') {
            match b.find('}') {
                Some(j) => (&b[..j], &b[j + 1..]),
                None => ("", after),
            }
        } else {
            let j = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..j], &after[j..])
        };
        if name.is_empty() {
            out.push('$');
            rest = after;
        } else {
            out.push_str(&std::env::var(name).unwrap_or_default());
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

/// The SQL that reads the next batch after `pos`: the row as JSON (`row_json`), then the
/// cursor and the key as text, in position order.
pub fn batch_sql(
    def: &SourceDef,
    dialect: Dialect,
    row_json: &str,
    pos: Option<&Position>,
    limit: usize,
) -> Result<String> {
    let kind = def.kind.as_str();
    let table = def
        .table
        .as_deref()
        .ok_or_else(|| IngestError::Definition(format!("{kind} source without table")))?;
    let cursor = def
        .cursor
        .as_deref()
        .ok_or_else(|| IngestError::Definition(format!("{kind} source without cursor")))?;
    let mut order = vec![format!("t.{}", dialect.ident(cursor))];
    order.extend(
        def.primary_key
            .iter()
            .map(|k| format!("t.{}", dialect.ident(k))),
    );
    let texts: Vec<String> = order.iter().map(|c| dialect.text(c)).collect();
    let filter = match pos {
        Some(p) => {
            let mut lits = vec![dialect.lit(&p.cursor)];
            lits.extend(p.key.iter().map(|k| dialect.lit(k)));
            format!("AND ({}) > ({})", order.join(", "), lits.join(", "))
        }
        None => String::new(),
    };
    Ok(format!(
        "SELECT {row_json}, {texts} FROM {table} t WHERE t.{c} IS NOT NULL {filter} ORDER BY {order} LIMIT {limit}",
        texts = texts.join(", "),
        table = dialect.table(table),
        c = dialect.ident(cursor),
        order = order.join(", "),
    ))
}

async fn load_position(lake: &Lake, source: &str) -> Result<Option<Position>> {
    let Some(b) = lake
        .get_meta(&["cursors", &format!("{source}.json")])
        .await?
    else {
        return Ok(None);
    };
    serde_json::from_slice(&b)
        .map(Some)
        .map_err(|e| IngestError::Read(format!("corrupt cursor of source {source}: {e}")))
}

/// Forget a source's position (DROP SOURCE, or to re-pull from the start).
pub async fn reset_position(lake: &Lake, source: &str) -> Result<()> {
    lake.delete_meta(&["cursors", &format!("{source}.json")])
        .await?;
    Ok(())
}

/// Pull everything after the saved position, one run per batch.
pub async fn pull(lake: &Lake, def: &SourceDef, record_empty: bool) -> Result<Vec<RunSummary>> {
    match def.kind {
        SourceKind::Mysql => crate::mysql::pull(lake, def, record_empty).await,
        _ => crate::postgres::pull(lake, def, record_empty).await,
    }
}

/// The pull loop over an open connection.
pub async fn pull_with(
    lake: &Lake,
    def: &SourceDef,
    db: &mut dyn Fetch,
    record_empty: bool,
) -> Result<Vec<RunSummary>> {
    let limit = def.batch_rows();
    let mut pos = load_position(lake, &def.name).await?;
    let mut runs = vec![];
    let format = Format {
        kind: "ndjson".into(),
        ..def.format.clone()
    };
    let row_json = db.row_json();
    // Batch ids of postgres sources written before MySQL existed start with `pg:`.
    let prefix = match def.kind {
        SourceKind::Postgres => "pg",
        other => other.as_str(),
    };
    loop {
        let sql = batch_sql(def, db.dialect(), &row_json, pos.as_ref(), limit)?;
        let rows = db.fetch(sql, def.primary_key.len()).await?;
        if rows.is_empty() {
            if runs.is_empty() && record_empty {
                runs.push(run::run_chunks(lake, def, &format!("{prefix}:empty"), vec![]).await?);
            }
            return Ok(runs);
        }
        let mut text = String::new();
        for r in &rows {
            text.push_str(&r.json);
            text.push('\n');
        }
        let last = rows.last().map(|r| r.pos.clone()).unwrap_or_default();
        let hash = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        let label = def.table.clone().unwrap_or_default();
        let chunks = read::parse(&text, &label, &format, usize::MAX)?;
        let summary = run::run_chunks(lake, def, &format!("{prefix}:{hash}"), chunks).await?;
        let body =
            serde_json::to_vec(&last).map_err(|e| IngestError::Read(format!("cursor: {e}")))?;
        lake.put_meta(&["cursors", &format!("{}.json", def.name)], body, false)
            .await?;
        runs.push(summary);
        let done = rows.len() < limit;
        pos = Some(last);
        if done {
            return Ok(runs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_sql_orders_by_cursor_then_key() {
        let def = SourceDef::from_toml(
            r#"
name = "crm"
kind = "postgres"
channel = "crm"
channel_type = "offline"
connection = "host=localhost user=$USER"
table = "public.contacts"
cursor = "updated_at"
primary_key = ["id"]
[mapping]
occurred_at = "updated_at"
event_type = "'register'"
"#,
        )
        .unwrap();
        assert_eq!(def.natural_key, vec!["id".to_string()]);
        let sql = batch_sql(
            &def,
            Dialect::Postgres,
            "row_to_json(t)::text",
            Some(&Position {
                cursor: "2026-01-01 00:00:00+00".into(),
                key: vec!["O'1".into()],
            }),
            10,
        )
        .unwrap();
        assert!(sql.contains(r#"FROM "public"."contacts" t"#), "{sql}");
        assert!(
            sql.contains(r#"AND (t."updated_at", t."id") > ('2026-01-01 00:00:00+00', 'O''1')"#),
            "{sql}"
        );
        assert!(
            sql.ends_with(r#"ORDER BY t."updated_at", t."id" LIMIT 10"#),
            "{sql}"
        );
        let my = batch_sql(
            &def,
            Dialect::Mysql,
            "JSON_OBJECT('id', t.`id`)",
            Some(&Position {
                cursor: "2026-01-01 00:00:00".into(),
                key: vec![r"O'1\".into()],
            }),
            10,
        )
        .unwrap();
        assert_eq!(
            my,
            r"SELECT JSON_OBJECT('id', t.`id`), CAST(t.`updated_at` AS CHAR), CAST(t.`id` AS CHAR) FROM `public`.`contacts` t WHERE t.`updated_at` IS NOT NULL AND (t.`updated_at`, t.`id`) > ('2026-01-01 00:00:00', 'O''1\\') ORDER BY t.`updated_at`, t.`id` LIMIT 10"
        );
        unsafe { std::env::set_var("TL_TEST_PW", "s3cret") };
        assert_eq!(
            expand_env("password=$TL_TEST_PW x=${TL_TEST_PW}!"),
            "password=s3cret x=s3cret!"
        );
    }
}
