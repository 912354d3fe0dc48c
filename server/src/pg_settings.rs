//! `pg_catalog.pg_settings` of one connection: its settings as `SHOW ALL` lists them, with
//! the value at connection start (`reset_val`) and where the current one came from
//! (`source`: `session` after a `SET`, else `default`). BI tools and drivers read settings
//! there (`SELECT setting FROM pg_settings WHERE name = 'TimeZone'`).
//!
//! The rest of `pg_catalog` is shared by every connection; [`SessionPgCatalog`] puts this
//! connection's `pg_settings` in front of it.

use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{MemTable, SchemaProvider, TableProvider};
use datafusion::error::{DataFusionError, Result};

use crate::settings::{SERVER_PREFIX, Settings, canonical};

const TABLE: &str = "pg_settings";

/// PostgreSQL's `pg_settings` columns, all text but the last two.
const TEXT_COLUMNS: [&str; 15] = [
    "name",
    "setting",
    "unit",
    "category",
    "short_desc",
    "extra_desc",
    "context",
    "vartype",
    "source",
    "min_val",
    "max_val",
    "enumvals",
    "boot_val",
    "reset_val",
    "sourcefile",
];

fn schema() -> SchemaRef {
    let mut fields: Vec<Field> = TEXT_COLUMNS
        .iter()
        .map(|c| Field::new(*c, DataType::Utf8, true))
        .collect();
    fields.push(Field::new("sourceline", DataType::Int32, true));
    fields.push(Field::new("pending_restart", DataType::Boolean, true));
    Arc::new(Schema::new(fields))
}

/// One row: what differs between settings.
struct Row<'a> {
    name: String,
    setting: &'a str,
    initial: Option<&'a str>,
    context: &'static str,
    source: &'static str,
}

/// The rows of `settings`, by name.
fn table(settings: &Settings) -> Result<MemTable> {
    let mut rows: Vec<Row> = settings
        .all()
        .map(|(key, value)| {
            let initial = settings.initial(key);
            Row {
                name: canonical(key),
                setting: value,
                initial,
                context: if key.starts_with(SERVER_PREFIX) {
                    "postmaster"
                } else {
                    "user"
                },
                source: if initial == Some(value.as_str()) {
                    "default"
                } else {
                    "session"
                },
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    let n = rows.len();
    let text = |f: fn(&Row) -> Option<String>| {
        Arc::new(StringArray::from_iter(rows.iter().map(f))) as ArrayRef
    };
    let none = || Arc::new(StringArray::new_null(n)) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        text(|r| Some(r.name.clone())),
        text(|r| Some(r.setting.to_string())),
        none(),
        none(),
        none(),
        none(),
        text(|r| Some(r.context.to_string())),
        text(|_| Some("string".to_string())),
        text(|r| Some(r.source.to_string())),
        none(),
        none(),
        none(),
        text(|r| r.initial.map(str::to_string)),
        text(|r| r.initial.map(str::to_string)),
        none(),
        Arc::new(Int32Array::new_null(n)),
        Arc::new(BooleanArray::from(vec![false; n])),
    ];
    let schema = schema();
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    MemTable::try_new(schema, vec![vec![batch]])
}

/// A connection's `pg_catalog`: the shared one, with its own `pg_settings`, built from
/// its settings when a query reads it (not at every `SET` or connection start).
#[derive(Debug)]
pub struct SessionPgCatalog {
    inner: Arc<dyn SchemaProvider>,
    settings: RwLock<Option<Settings>>,
}

impl SessionPgCatalog {
    /// `inner` with an empty `pg_settings` until [`SessionPgCatalog::update`].
    pub fn new(inner: Arc<dyn SchemaProvider>) -> Self {
        SessionPgCatalog {
            inner,
            settings: RwLock::new(None),
        }
    }

    /// Show `settings` from now on.
    pub fn update(&self, settings: &Settings) -> Result<()> {
        *self
            .settings
            .write()
            .map_err(|_| DataFusionError::Internal("pg_settings lock poisoned".into()))? =
            Some(settings.clone());
        Ok(())
    }
}

#[async_trait]
impl SchemaProvider for SessionPgCatalog {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        if !names.iter().any(|n| n == TABLE) {
            names.push(TABLE.to_string());
        }
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name.eq_ignore_ascii_case(TABLE) {
            let settings = self
                .settings
                .read()
                .map_err(|_| DataFusionError::Internal("pg_settings lock poisoned".into()))?;
            let t = match settings.as_ref() {
                Some(s) => table(s)?,
                None => MemTable::try_new(schema(), vec![vec![]])?,
            };
            return Ok(Some(Arc::new(t)));
        }
        self.inner.table(name).await
    }

    fn register_table(
        &self,
        name: String,
        table: Arc<dyn TableProvider>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        self.inner.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        name.eq_ignore_ascii_case(TABLE) || self.inner.table_exist(name)
    }
}
