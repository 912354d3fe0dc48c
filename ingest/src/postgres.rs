//! `postgres` sources: the PostgreSQL side of a [`crate::pull`] (rows as `row_to_json`).

use futures::future::BoxFuture;
use tokio_postgres::NoTls;
use touchlake_catalog::Lake;

use crate::error::{IngestError, Result};
use crate::pull::{self, Dialect, Fetch, Position, Pulled};
use crate::run::RunSummary;
use crate::source::SourceDef;

struct Pg<'a> {
    client: &'a tokio_postgres::Client,
    source: &'a str,
}

impl Fetch for Pg<'_> {
    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }

    fn row_json(&self) -> String {
        "row_to_json(t)::text".into()
    }

    fn fetch<'a>(&'a mut self, sql: String, keys: usize) -> BoxFuture<'a, Result<Vec<Pulled>>> {
        Box::pin(async move {
            let rows = self
                .client
                .query(sql.as_str(), &[])
                .await
                .map_err(|e| IngestError::Read(format!("source {}: {e}", self.source)))?;
            Ok(rows
                .iter()
                .map(|r| Pulled {
                    json: r.get(0),
                    pos: Position {
                        cursor: r.get(1),
                        key: (0..keys)
                            .map(|i| r.get::<_, Option<String>>(i + 2).unwrap_or_default())
                            .collect(),
                    },
                })
                .collect())
        })
    }
}

/// Pull everything after the saved position, one run per batch.
pub async fn pull(lake: &Lake, def: &SourceDef, record_empty: bool) -> Result<Vec<RunSummary>> {
    let conn = pull::expand_env(def.connection.as_deref().unwrap_or(""));
    let (client, connection) = tokio_postgres::connect(&conn, NoTls)
        .await
        .map_err(|e| IngestError::Read(format!("source {}: cannot connect: {e}", def.name)))?;
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut db = Pg {
        client: &client,
        source: &def.name,
    };
    let result = pull::pull_with(lake, def, &mut db, record_empty).await;
    drop(client);
    let _ = task.await;
    result
}
