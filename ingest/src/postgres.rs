//! `postgres` sources: incremental pulls of a PostgreSQL table by cursor column and primary
//! key. Each pull reads rows after the last position `(cursor, primary key…)`, in that
//! order, `batch_rows` at a time, as JSON (`row_to_json`), and ingests each batch like a
//! file's chunk. The position is kept in the lake (`_touchlake/cursors/<source>.json`) and
//! moved only after the batch is committed; the batch id is a hash of the rows, so a pull
//! repeated after a crash re-reads the same rows and commits nothing twice.
//!
//! Rows whose cursor is NULL are never pulled; a row updated later (new cursor value)
//! keeps its natural key and so its `touchpoint_id`, and counts as a duplicate.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio_postgres::NoTls;
use touchlake_catalog::Lake;

use crate::error::{IngestError, Result};
use crate::read;
use crate::run::{self, RunSummary};
use crate::source::{Format, SourceDef};

/// The last position pulled.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Position {
    /// The cursor value as text.
    pub cursor: String,
    /// The primary key values as text.
    pub key: Vec<String>,
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `schema.table` → `"schema"."table"`.
fn quote_table(t: &str) -> String {
    t.split('.').map(quote_ident).collect::<Vec<_>>().join(".")
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

/// The SQL that reads the next batch after `pos`.
pub fn batch_sql(def: &SourceDef, pos: Option<&Position>, limit: usize) -> Result<String> {
    let table = def
        .table
        .as_deref()
        .ok_or_else(|| IngestError::Definition("postgres source without table".into()))?;
    let cursor = def
        .cursor
        .as_deref()
        .ok_or_else(|| IngestError::Definition("postgres source without cursor".into()))?;
    let mut order = vec![format!("t.{}", quote_ident(cursor))];
    order.extend(
        def.primary_key
            .iter()
            .map(|k| format!("t.{}", quote_ident(k))),
    );
    let texts: Vec<String> = order.iter().map(|c| format!("({c})::text")).collect();
    let filter = match pos {
        Some(p) => {
            let mut lits = vec![quote_lit(&p.cursor)];
            lits.extend(p.key.iter().map(|k| quote_lit(k)));
            format!("AND ({}) > ({})", order.join(", "), lits.join(", "))
        }
        None => String::new(),
    };
    Ok(format!(
        "SELECT row_to_json(t)::text, {texts} FROM {table} t WHERE t.{c} IS NOT NULL {filter} ORDER BY {order} LIMIT {limit}",
        texts = texts.join(", "),
        table = quote_table(table),
        c = quote_ident(cursor),
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
    let conn = expand_env(def.connection.as_deref().unwrap_or(""));
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .map_err(|e| IngestError::Read(format!("source {}: cannot connect: {e}", def.name)))?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    let result = pull_with(lake, def, &client, record_empty).await;
    drop(client);
    let _ = task.await;
    result
}

async fn pull_with(
    lake: &Lake,
    def: &SourceDef,
    client: &tokio_postgres::Client,
    record_empty: bool,
) -> Result<Vec<RunSummary>> {
    let limit = def.batch_rows();
    let mut pos = load_position(lake, &def.name).await?;
    let mut runs = vec![];
    let format = Format {
        kind: "ndjson".into(),
        ..def.format.clone()
    };
    loop {
        let sql = batch_sql(def, pos.as_ref(), limit)?;
        let rows = client
            .query(sql.as_str(), &[])
            .await
            .map_err(|e| IngestError::Read(format!("source {}: {e}", def.name)))?;
        if rows.is_empty() {
            if runs.is_empty() && record_empty {
                runs.push(run::run_chunks(lake, def, "pg:empty", vec![]).await?);
            }
            return Ok(runs);
        }
        let mut text = String::new();
        let mut last = Position::default();
        for r in &rows {
            let json: String = r.get(0);
            text.push_str(&json);
            text.push('\n');
            last.cursor = r.get(1);
            last.key = (0..def.primary_key.len())
                .map(|i| r.get::<_, Option<String>>(i + 2).unwrap_or_default())
                .collect();
        }
        let hash = hex::encode(sha2::Sha256::digest(text.as_bytes()));
        let label = def.table.clone().unwrap_or_default();
        let chunks = read::parse(&text, &label, &format, usize::MAX)?;
        let summary = run::run_chunks(lake, def, &format!("pg:{hash}"), chunks).await?;
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
        unsafe { std::env::set_var("TL_TEST_PW", "s3cret") };
        assert_eq!(
            expand_env("password=$TL_TEST_PW x=${TL_TEST_PW}!"),
            "password=s3cret x=s3cret!"
        );
    }
}
