//! Changes to the lake: schemas, tables, views, UPDATE and DELETE. Each table change is
//! one Delta commit; catalog objects are single JSON objects under `_touchlake/`.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use deltalake::kernel::StructType;
use deltalake::kernel::engine::arrow_conversion::TryFromArrow;
use deltalake::protocol::SaveMode;

use crate::error::{CatalogError, Result};
use crate::lake::{Lake, validate_name};
use crate::meta::{SchemaDef, ViewDef};

impl Lake {
    /// CREATE SCHEMA: records the schema under `_touchlake/schemas/` (folders appear with
    /// the first table). Returns false if it existed and `if_not_exists` was given.
    pub async fn create_schema(
        &self,
        name: &str,
        if_not_exists: bool,
        owner: &str,
    ) -> Result<bool> {
        validate_name(name)?;
        let exists = self.listing().tables.contains_key(name);
        if exists {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(CatalogError::SchemaExists(name.into()))
            };
        }
        let def = SchemaDef {
            owner: owner.to_string(),
            created_at: chrono::Utc::now().to_rfc3339(),
        };
        let body =
            serde_json::to_vec(&def).map_err(|e| CatalogError::Unsupported(e.to_string()))?;
        let created = self
            .put_meta(&["schemas", &format!("{name}.json")], body, true)
            .await?;
        if !created && !if_not_exists {
            return Err(CatalogError::SchemaExists(name.into()));
        }
        self.edit_listing(|l| {
            l.tables.entry(name.to_string()).or_default();
        });
        Ok(created)
    }

    /// DROP SCHEMA [CASCADE]: without CASCADE the schema must hold no tables or views.
    pub async fn drop_schema(&self, name: &str, if_exists: bool, cascade: bool) -> Result<()> {
        self.refresh_listing().await?;
        let listing = self.listing();
        let Some(tables) = listing.tables.get(name) else {
            return if if_exists {
                Ok(())
            } else {
                Err(CatalogError::NoSuchSchema(name.into()))
            };
        };
        let views = listing.views.get(name).cloned().unwrap_or_default();
        if !cascade && (!tables.is_empty() || !views.is_empty()) {
            return Err(CatalogError::SchemaNotEmpty(name.into()));
        }
        for t in tables {
            self.drop_table(name, t, true).await?;
        }
        for v in views.keys() {
            self.drop_view(name, v, true).await?;
        }
        self.delete_prefix(&[name]).await?;
        self.delete_meta(&["schemas", &format!("{name}.json")])
            .await?;
        self.edit_listing(|l| {
            l.tables.remove(name);
            l.views.remove(name);
        });
        Ok(())
    }

    /// Checks before creating `schema.name`: valid names, an existing schema, no relation
    /// of that name (false if there is one and `if_not_exists` was given).
    async fn can_create(&self, schema: &str, name: &str, if_not_exists: bool) -> Result<bool> {
        validate_name(schema)?;
        validate_name(name)?;
        if !self.listing().tables.contains_key(schema) {
            self.refresh_listing().await?;
            if !self.listing().tables.contains_key(schema) {
                return Err(CatalogError::NoSuchSchema(schema.into()));
            }
        }
        if self.relation_exists(schema, name) || self.table(schema, name).await?.is_some() {
            return if if_not_exists {
                Ok(false)
            } else {
                Err(CatalogError::AlreadyExists(format!("{schema}.{name}")))
            };
        }
        Ok(true)
    }

    fn relation_exists(&self, schema: &str, name: &str) -> bool {
        let l = self.listing();
        l.tables.get(schema).is_some_and(|t| t.contains(name))
            || l.views.get(schema).is_some_and(|v| v.contains_key(name))
    }

    /// CREATE TABLE: a new, empty Delta table with `schema`'s columns (nullability kept).
    /// Returns false if it existed and `if_not_exists` was given.
    pub async fn create_table(
        &self,
        schema: &str,
        name: &str,
        columns: SchemaRef,
        if_not_exists: bool,
    ) -> Result<bool> {
        if !self.can_create(schema, name, if_not_exists).await? {
            return Ok(false);
        }
        let delta_schema = StructType::try_from_arrow(columns.as_ref())
            .map_err(|e| CatalogError::UnsupportedType(e.to_string()))?;
        let table = self.table_builder(schema, name)?.build()?;
        let res = table
            .create()
            .with_table_name(name)
            .with_columns(delta_schema.fields().cloned())
            .with_save_mode(SaveMode::ErrorIfExists)
            .await;
        self.finish_create(schema, name, if_not_exists, res).await
    }

    /// CREATE TABLE … AS SELECT: the table and its rows in one Delta commit (version 0),
    /// so a failed query leaves no table behind. `plan` must already produce storable
    /// column types. Returns false if the table existed and `if_not_exists` was given.
    pub async fn create_table_as(
        &self,
        schema: &str,
        name: &str,
        plan: datafusion::logical_expr::LogicalPlan,
        if_not_exists: bool,
    ) -> Result<bool> {
        if !self.can_create(schema, name, if_not_exists).await? {
            return Ok(false);
        }
        // delta-rs plans the write with its own session; the input plan is already
        // resolved against our catalog.
        let table = self.table_builder(schema, name)?.build()?;
        let res = table
            .write(vec![])
            .with_input_plan(plan)
            .with_table_name(name)
            .with_save_mode(SaveMode::ErrorIfExists)
            .await;
        self.finish_create(schema, name, if_not_exists, res).await
    }

    /// After the commit that creates `schema.name`: a lost race with another creator is
    /// "already exists"; success updates the cache and listing.
    async fn finish_create<T>(
        &self,
        schema: &str,
        name: &str,
        if_not_exists: bool,
        res: deltalake::DeltaResult<T>,
    ) -> Result<bool> {
        match res {
            Ok(_) => {}
            Err(deltalake::DeltaTableError::VersionAlreadyExists(_)) => {
                return self.already_exists(schema, name, if_not_exists);
            }
            Err(e) if e.to_string().contains("already exists") => {
                return self.already_exists(schema, name, if_not_exists);
            }
            Err(e) => return Err(e.into()),
        }
        self.invalidate(schema, name).await;
        self.edit_listing(|l| {
            l.tables
                .entry(schema.to_string())
                .or_default()
                .insert(name.to_string());
        });
        Ok(true)
    }

    fn already_exists(&self, schema: &str, name: &str, if_not_exists: bool) -> Result<bool> {
        if if_not_exists {
            Ok(false)
        } else {
            Err(CatalogError::AlreadyExists(format!("{schema}.{name}")))
        }
    }

    /// DROP TABLE: removes the table's folder (data files and log).
    pub async fn drop_table(&self, schema: &str, name: &str, if_exists: bool) -> Result<()> {
        if self.table(schema, name).await?.is_none() {
            return if if_exists {
                Ok(())
            } else {
                Err(CatalogError::NoSuchTable(format!("{schema}.{name}")))
            };
        }
        // Remove the log first so no reader sees a table whose files are going.
        self.delete_prefix(&[schema, name, "_delta_log"]).await?;
        self.delete_prefix(&[schema, name]).await?;
        self.invalidate(schema, name).await;
        self.edit_listing(|l| {
            if let Some(t) = l.tables.get_mut(schema) {
                t.remove(name);
            }
        });
        Ok(())
    }

    /// CREATE [OR REPLACE] VIEW: persists the definition; the caller has planned it once.
    pub async fn create_view(
        &self,
        schema: &str,
        name: &str,
        def: ViewDef,
        or_replace: bool,
    ) -> Result<()> {
        validate_name(schema)?;
        validate_name(name)?;
        let qualified = format!("{schema}.{name}");
        if self
            .listing()
            .tables
            .get(schema)
            .is_some_and(|t| t.contains(name))
        {
            return Err(CatalogError::AlreadyExists(qualified));
        }
        let body = serde_json::to_vec_pretty(&def)
            .map_err(|e| CatalogError::Unsupported(e.to_string()))?;
        let created = self
            .put_meta(
                &["views", schema, &format!("{name}.json")],
                body,
                !or_replace,
            )
            .await?;
        if !created {
            return Err(CatalogError::AlreadyExists(qualified));
        }
        self.edit_listing(|l| {
            l.tables.entry(schema.to_string()).or_default();
            l.views
                .entry(schema.to_string())
                .or_default()
                .insert(name.to_string(), def);
        });
        Ok(())
    }

    /// DROP VIEW.
    pub async fn drop_view(&self, schema: &str, name: &str, if_exists: bool) -> Result<()> {
        let existed = self
            .delete_meta(&["views", schema, &format!("{name}.json")])
            .await?;
        self.edit_listing(|l| {
            if let Some(v) = l.views.get_mut(schema) {
                v.remove(name);
            }
        });
        if !existed && !if_exists {
            return Err(CatalogError::NoSuchTable(format!("{schema}.{name}")));
        }
        Ok(())
    }

    /// UPDATE … SET … [WHERE …] as one Delta commit. Expressions are SQL over the table's
    /// columns. Returns the number of rows updated.
    pub async fn update(
        &self,
        schema: &str,
        name: &str,
        predicate: Option<String>,
        assignments: Vec<(String, String)>,
        session: Arc<dyn Session>,
    ) -> Result<u64> {
        let Some((table, _)) = self.table(schema, name).await? else {
            return Err(CatalogError::NoSuchTable(format!("{schema}.{name}")));
        };
        // delta-rs plans with its own session (it needs its own extension planner).
        let _ = session;
        let mut b = table.update();
        if let Some(p) = predicate {
            b = b.with_predicate(p);
        }
        for (col, expr) in assignments {
            b = b.with_update(col, expr);
        }
        let (_, metrics) = b.await?;
        self.invalidate(schema, name).await;
        Ok(metrics.num_updated_rows as u64)
    }

    /// DELETE FROM … [WHERE …] as one Delta commit. Returns the rows deleted when delta-rs
    /// knows them (it may not for whole-file deletes).
    pub async fn delete(
        &self,
        schema: &str,
        name: &str,
        predicate: Option<String>,
        session: Arc<dyn Session>,
    ) -> Result<Option<u64>> {
        let Some((table, _)) = self.table(schema, name).await? else {
            return Err(CatalogError::NoSuchTable(format!("{schema}.{name}")));
        };
        let _ = session;
        let mut b = table.delete();
        if let Some(p) = predicate {
            b = b.with_predicate(p);
        }
        let (_, metrics) = b.await?;
        self.invalidate(schema, name).await;
        Ok(metrics.num_deleted_rows.map(|n| n as u64))
    }
}
