//! DataFusion catalog over the lake: one `CatalogProvider` for the `touchlake` database
//! whose schemas are the lake's folders and whose tables are its Delta tables and views.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::datasource::ViewTable;
use datafusion::datasource::empty::EmptyTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::LogicalPlan;

use crate::lake::Lake;
use crate::meta::ViewDef;

/// Plans a view's SQL into a logical plan. Implemented by the server, which knows how a
/// session is built (functions, settings); the catalog only stores the SQL.
#[async_trait]
pub trait ViewPlanner: std::fmt::Debug + Send + Sync {
    /// Plan `def` (the view `schema.name`) against the current lake.
    async fn plan_view(&self, schema: &str, name: &str, def: &ViewDef) -> Result<LogicalPlan>;
}

/// The `touchlake` database as a DataFusion catalog: a view of the shared [`Lake`] plus
/// schemas a session registers for itself (`pg_catalog`).
#[derive(Debug)]
pub struct LakeCatalogProvider {
    lake: Arc<Lake>,
    planner: Arc<dyn ViewPlanner>,
    extra: RwLock<HashMap<String, Arc<dyn SchemaProvider>>>,
    schema_only: bool,
}

impl LakeCatalogProvider {
    /// A catalog over `lake`, planning views with `planner`.
    pub fn new(lake: Arc<Lake>, planner: Arc<dyn ViewPlanner>) -> Self {
        Self {
            lake,
            planner,
            extra: RwLock::new(HashMap::new()),
            schema_only: false,
        }
    }

    /// A catalog for pg_catalog's listings: its tables only describe their columns (from
    /// the cached snapshot), so listing the lake does not re-read every Delta log.
    pub fn for_catalog_queries(lake: Arc<Lake>, planner: Arc<dyn ViewPlanner>) -> Self {
        Self {
            lake,
            planner,
            extra: RwLock::new(HashMap::new()),
            schema_only: true,
        }
    }
}

impl CatalogProvider for LakeCatalogProvider {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.lake.listing().tables.keys().cloned().collect();
        if !names.iter().any(|n| n == crate::DEFAULT_SCHEMA) {
            names.push(crate::DEFAULT_SCHEMA.to_string());
        }
        if let Ok(extra) = self.extra.read() {
            names.extend(extra.keys().cloned());
        }
        names.sort();
        names.dedup();
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(s) = self.extra.read().ok().and_then(|e| e.get(name).cloned()) {
            return Some(s);
        }
        if crate::lake::validate_name(name).is_err() {
            return None;
        }
        Some(Arc::new(LakeSchemaProvider {
            lake: self.lake.clone(),
            schema: name.to_string(),
            planner: self.planner.clone(),
            schema_only: self.schema_only,
        }))
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        let mut extra = self
            .extra
            .write()
            .map_err(|_| DataFusionError::Internal("catalog lock poisoned".into()))?;
        Ok(extra.insert(name.to_string(), schema))
    }
}

/// One schema (folder) of the lake.
#[derive(Debug)]
pub struct LakeSchemaProvider {
    lake: Arc<Lake>,
    schema: String,
    planner: Arc<dyn ViewPlanner>,
    schema_only: bool,
}

/// A table name with a time-travel suffix: `name@v3` or `name@2026-11-01T00:00:00Z`.
enum TimeTravel {
    Version(i64),
    At(chrono::DateTime<chrono::Utc>),
}

fn split_time_travel(name: &str) -> Option<(&str, TimeTravel)> {
    let (base, spec) = name.split_once('@')?;
    if let Some(v) = spec.strip_prefix('v').and_then(|v| v.parse::<i64>().ok()) {
        return Some((base, TimeTravel::Version(v)));
    }
    if let Ok(ts) = chrono::DateTime::parse_from_rfc3339(spec) {
        return Some((base, TimeTravel::At(ts.to_utc())));
    }
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(ts) = chrono::NaiveDateTime::parse_from_str(spec, fmt) {
            return Some((base, TimeTravel::At(ts.and_utc())));
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(spec, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|ts| (base, TimeTravel::At(ts.and_utc())));
    }
    None
}

#[async_trait]
impl SchemaProvider for LakeSchemaProvider {
    fn table_names(&self) -> Vec<String> {
        let listing = self.lake.listing();
        let mut names: Vec<String> = listing
            .tables
            .get(&self.schema)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        if let Some(v) = listing.views.get(&self.schema) {
            names.extend(v.keys().cloned());
        }
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some((base, tt)) = split_time_travel(name) {
            let t = match tt {
                TimeTravel::Version(v) => self.lake.table_at_version(&self.schema, base, v).await?,
                TimeTravel::At(ts) => self.lake.table_at_time(&self.schema, base, ts).await?,
            };
            return Ok(t);
        }
        let view = self
            .lake
            .listing()
            .views
            .get(&self.schema)
            .and_then(|v| v.get(name).cloned());
        if let Some(def) = view {
            let plan = self.planner.plan_view(&self.schema, name, &def).await?;
            return Ok(Some(Arc::new(ViewTable::new(plan, Some(def.sql.clone())))));
        }
        if self.schema_only {
            let schema = self.lake.cached_schema(&self.schema, name).await?;
            return Ok(schema.map(|s| Arc::new(EmptyTable::new(s)) as Arc<dyn TableProvider>));
        }
        Ok(self.lake.table(&self.schema, name).await?.map(|(_, p)| p))
    }

    fn table_exist(&self, name: &str) -> bool {
        let listing = self.lake.listing();
        listing
            .tables
            .get(&self.schema)
            .is_some_and(|t| t.contains(name))
            || listing
                .views
                .get(&self.schema)
                .is_some_and(|v| v.contains_key(name))
    }
}
