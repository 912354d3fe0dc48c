//! `mysql` sources: the MySQL / MariaDB side of a [`crate::pull`]. A row becomes one JSON
//! object with `JSON_OBJECT('col', t.col, …)` over the table's columns (read from
//! `information_schema.columns`), so the mapping sees the same column names as in MySQL.

use futures::future::BoxFuture;
use mysql_async::prelude::Queryable;
use touchlake_catalog::Lake;

use crate::error::{IngestError, Result};
use crate::pull::{self, Dialect, Fetch, Position, Pulled};
use crate::run::RunSummary;
use crate::source::SourceDef;

struct My<'a> {
    conn: mysql_async::Conn,
    columns: Vec<String>,
    source: &'a str,
}

fn text(v: mysql_async::Value) -> Option<String> {
    match v {
        mysql_async::Value::NULL => None,
        mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        other => Some(other.as_sql(true).trim_matches('\'').to_string()),
    }
}

impl Fetch for My<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Mysql
    }

    fn row_json(&self) -> String {
        let pairs: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("{}, t.{}", Dialect::Mysql.lit(c), Dialect::Mysql.ident(c)))
            .collect();
        format!("JSON_OBJECT({})", pairs.join(", "))
    }

    fn fetch<'a>(&'a mut self, sql: String, keys: usize) -> BoxFuture<'a, Result<Vec<Pulled>>> {
        Box::pin(async move {
            let rows: Vec<mysql_async::Row> = self
                .conn
                .query(sql)
                .await
                .map_err(|e| IngestError::Read(format!("source {}: {e}", self.source)))?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let mut values = row.unwrap().into_iter().map(text);
                let mut next = || values.next().flatten().unwrap_or_default();
                let json = next();
                let cursor = next();
                let key = (0..keys).map(|_| next()).collect();
                out.push(Pulled {
                    json,
                    pos: Position { cursor, key },
                });
            }
            Ok(out)
        })
    }
}

/// Pull everything after the saved position, one run per batch.
pub async fn pull(lake: &Lake, def: &SourceDef, record_empty: bool) -> Result<Vec<RunSummary>> {
    let cant = |e: mysql_async::Error| {
        IngestError::Read(format!("source {}: cannot connect: {e}", def.name))
    };
    let url = pull::expand_env(def.connection.as_deref().unwrap_or(""));
    let opts = mysql_async::Opts::from_url(&url)
        .map_err(|e| IngestError::Definition(format!("source {}: connection: {e}", def.name)))?;
    let mut conn = mysql_async::Conn::new(opts).await.map_err(cant)?;
    let table = def.table.as_deref().unwrap_or("");
    let (db, name) = match table.split_once('.') {
        Some((db, name)) => (Dialect::Mysql.lit(db), name),
        None => ("DATABASE()".to_string(), table),
    };
    let columns: Vec<String> = conn
        .query(format!(
            "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = {db} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
            Dialect::Mysql.lit(name)
        ))
        .await
        .map_err(|e| IngestError::Read(format!("source {}: {e}", def.name)))?;
    if columns.is_empty() {
        return Err(IngestError::Read(format!(
            "source {}: table {table} does not exist",
            def.name
        )));
    }
    let mut db = My {
        conn,
        columns,
        source: &def.name,
    };
    let result = pull::pull_with(lake, def, &mut db, record_empty).await;
    let _ = db.conn.disconnect().await;
    result
}
