//! State shared by every connection: the lake, the query runtime (memory pool, disk
//! spill), and the recipe for a connection's DataFusion `SessionContext`.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{
    CatalogProvider, CatalogProviderList, MemoryCatalogProviderList, SchemaProvider,
};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::logical_expr::{LogicalPlan, ScalarUDF, Volatility, create_udf};
use datafusion::physical_plan::ColumnarValue;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion_pg_catalog::pg_catalog::context::{PgCatalogContextProvider, Role};
use datafusion_pg_catalog::pg_catalog::{PgCatalogSchemaProvider, PgCatalogStaticTables};
use touchlake_catalog::meta::ViewDef;
use touchlake_catalog::pg_overlay::PgCatalogOverlay;
use touchlake_catalog::{DATABASE, DEFAULT_SCHEMA, Lake, LakeCatalogProvider, ViewPlanner};

use crate::config::Config;

/// The PostgreSQL version Touchlake reports; clients parse it from `version()` and
/// `server_version`.
pub const PG_VERSION: &str = "15.0";
/// The superuser role every lake has.
pub const SUPERUSER: &str = "touchlake";

/// `version()` in PostgreSQL's shape, which SQLAlchemy and DBeaver parse.
pub fn version_string() -> String {
    format!(
        "PostgreSQL {PG_VERSION} (Touchlake {}) on {}-pc-linux-gnu, compiled by rustc, 64-bit",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    )
}

/// Shared by all connections of one server process.
#[derive(Debug)]
pub struct Engine {
    /// The lake this server serves.
    pub lake: Arc<Lake>,
    /// The configuration the server started with.
    pub config: Config,
    /// That configuration as read-only `touchlake.*` settings, for every session.
    pub visible_settings: Vec<(String, String)>,
    views: Arc<EngineViewPlanner>,
}

/// Plans persisted views with a fresh default session over the same lake.
#[derive(Debug)]
struct EngineViewPlanner {
    me: Weak<EngineViewPlanner>,
    lake: Arc<Lake>,
    runtime: Arc<RuntimeEnv>,
    /// The server's one pg_catalog, shared by all sessions (set once at start).
    pg_catalog: std::sync::OnceLock<Arc<dyn SchemaProvider>>,
}

#[async_trait]
impl ViewPlanner for EngineViewPlanner {
    async fn plan_view(&self, schema: &str, name: &str, def: &ViewDef) -> DfResult<LogicalPlan> {
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| DataFusionError::Internal("view planner dropped".into()))?;
        let ctx = build_context(me, SUPERUSER, DEFAULT_SCHEMA)?;
        let df = ctx.sql(&def.sql).await.map_err(|e| {
            DataFusionError::Plan(format!("view {schema}.{name} cannot be planned: {e}"))
        })?;
        let plan = df.into_unoptimized_plan();
        if def.columns.is_empty() {
            return Ok(plan);
        }
        let builder = datafusion::logical_expr::LogicalPlanBuilder::from(plan);
        let exprs: Vec<_> = builder
            .schema()
            .columns()
            .into_iter()
            .zip(def.columns.iter())
            .map(|(c, n)| datafusion::prelude::col(c).alias(n))
            .collect();
        builder.project(exprs)?.build()
    }
}

/// Roles as pg_catalog (`pg_roles`, `\du`) shows them.
#[derive(Debug, Clone)]
pub struct RoleCatalog;

#[async_trait]
impl PgCatalogContextProvider for RoleCatalog {
    async fn roles(&self) -> Vec<String> {
        vec![SUPERUSER.to_string()]
    }

    async fn role(&self, name: &str) -> Option<Role> {
        (name == SUPERUSER).then(|| Role {
            name: SUPERUSER.to_string(),
            is_superuser: true,
            can_login: true,
            can_create_db: true,
            can_create_role: true,
            can_create_user: true,
            can_replication: false,
            grants: vec![],
            inherited_roles: vec![],
        })
    }
}

impl Engine {
    /// Open the lake and set up the shared runtime.
    pub async fn start(
        config: Config,
    ) -> Result<Arc<Engine>, Box<dyn std::error::Error + Send + Sync>> {
        crate::allocator::set_release_delay(config.memory_release_ms);
        crate::allocator::allow_transparent_huge_pages(config.transparent_huge_pages);
        let refresh = Duration::from_secs_f64(config.refresh_seconds.max(0.0));
        let lake = Lake::open(&config.lake, &config.storage_options, refresh).await?;
        let mut rt = RuntimeEnvBuilder::new();
        if config.memory_limit_mb > 0 {
            rt = rt.with_memory_limit(config.memory_limit_mb * 1024 * 1024, 1.0);
            tracing::info!("query memory limit: {} MiB", config.memory_limit_mb);
        }
        let runtime = rt.build_arc()?;
        let views = Arc::new_cyclic(|me| EngineViewPlanner {
            me: me.clone(),
            lake: lake.clone(),
            runtime: runtime.clone(),
            pg_catalog: std::sync::OnceLock::new(),
        });
        // One pg_catalog for the whole server, over its own view of the lake, so OIDs are
        // the same in every connection.
        let list = Arc::new(MemoryCatalogProviderList::new());
        let planner: Arc<dyn ViewPlanner> = views.clone();
        let lake_catalog = Arc::new(LakeCatalogProvider::for_catalog_queries(
            lake.clone(),
            planner,
        ));
        list.register_catalog(DATABASE.to_string(), lake_catalog.clone());
        let list: Arc<dyn CatalogProviderList> = list;
        let static_tables = Arc::new(PgCatalogStaticTables::try_new()?);
        let pg = Arc::new(PgCatalogSchemaProvider::try_new(
            list,
            static_tables,
            RoleCatalog,
        )?);
        let overlay: Arc<dyn SchemaProvider> = Arc::new(PgCatalogOverlay::new(pg, lake.clone()));
        lake_catalog.register_schema("pg_catalog", overlay.clone())?;
        let _ = views.pg_catalog.set(overlay);
        Ok(Arc::new(Engine {
            lake,
            visible_settings: config.visible(),
            config,
            views,
        }))
    }

    /// A new DataFusion context for one connection of role `user`.
    pub fn new_context(&self, user: &str) -> DfResult<SessionContext> {
        build_context(self.views.clone(), user, DEFAULT_SCHEMA)
    }

    /// Load the definitions of the config's `sources/` folder into the lake's catalog
    /// (replacing a stored definition of the same name when it differs).
    pub async fn sync_source_folder(&self) -> Result<usize, touchlake_ingest::IngestError> {
        let Some(dir) = &self.config.sources else {
            return Ok(0);
        };
        let defs = touchlake_ingest::source::read_folder(std::path::Path::new(dir))?;
        for def in &defs {
            touchlake_ingest::run::check_definition(def).await?;
            let stored = touchlake_ingest::source::load(&self.lake, &def.name).await?;
            if stored.as_ref() != Some(def) {
                touchlake_ingest::source::save(&self.lake, def, true).await?;
            }
        }
        Ok(defs.len())
    }

    /// Keep the cached lake listing fresh so new schemas and tables written by other
    /// servers or engines show up in catalog queries.
    pub fn spawn_refresher(self: &Arc<Self>) {
        let lake = self.lake.clone();
        let every = lake.refresh_interval().max(Duration::from_millis(500));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = lake.refresh_listing().await {
                    tracing::warn!("lake listing refresh failed: {e}");
                }
            }
        });
    }
}

fn build_context(
    views: Arc<EngineViewPlanner>,
    user: &str,
    schema: &str,
) -> DfResult<SessionContext> {
    let lake = views.lake.clone();
    let runtime = views.runtime.clone();
    let pg_catalog = views.pg_catalog.get().cloned();
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema(DATABASE, schema)
        .with_create_default_catalog_and_schema(false)
        .with_information_schema(true);
    let opts = config.options_mut();
    opts.set("datafusion.sql_parser.dialect", "PostgreSQL")?;
    opts.set(
        "datafusion.sql_parser.map_string_types_to_utf8view",
        "false",
    )?;
    opts.set(
        "datafusion.execution.parquet.schema_force_view_types",
        "false",
    )?;
    opts.set("datafusion.execution.time_zone", "UTC")?;
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime.clone())
        .with_default_features()
        .with_optimizer_rule(Arc::new(crate::join_exprs::JoinSideExpressions))
        .with_optimizer_rule(Arc::new(crate::distinct_counts::CountsBesideDistinct))
        .with_physical_optimizer_rule(Arc::new(crate::single_phase::ListStatesInOnePhase))
        .with_physical_optimizer_rule(Arc::new(crate::string_equals::StringEqualsLiteral))
        .with_analyzer_rule(Arc::new(crate::timestamp_text::TimestampText))
        .with_analyzer_rule(Arc::new(touchlake_functions::event_filter::EventFilter))
        .build();
    let ctx = SessionContext::new_with_state(state);
    let views: Arc<dyn ViewPlanner> = views;
    ctx.register_catalog(
        DATABASE,
        Arc::new(LakeCatalogProvider::new(lake.clone(), views)),
    );
    datafusion_pg_catalog::setup_pg_catalog(&ctx, DATABASE, RoleCatalog).map_err(|e| *e)?;
    // The shared pg_catalog (this context's own until the shared one exists), with this
    // connection's pg_settings in front of it.
    if let Some(catalog) = ctx.catalog(DATABASE)
        && let Some(pg) = pg_catalog.or_else(|| catalog.schema("pg_catalog"))
    {
        let own = crate::pg_settings::SessionPgCatalog::new(pg);
        catalog.register_schema("pg_catalog", Arc::new(own))?;
    }
    touchlake_functions::register_all(&mut *ctx.state_ref().write())?;
    for udf in touchlake_catalog::pg_functions::all()
        .into_iter()
        .chain(session_functions(user))
    {
        ctx.register_udf(udf);
    }
    Ok(ctx)
}

/// A zero-argument function returning `value` (e.g. `current_user`).
pub fn constant_udf(name: &str, value: String) -> ScalarUDF {
    let v = ScalarValue::Utf8(Some(value));
    create_udf(
        name,
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(v.clone()))),
    )
}

/// Functions whose answer depends on the server or the connection.
fn session_functions(user: &str) -> Vec<ScalarUDF> {
    vec![
        constant_udf("version", version_string()),
        constant_udf("current_user", user.to_string()),
        constant_udf("session_user", user.to_string()),
        constant_udf("user", user.to_string()),
        constant_udf("current_role", user.to_string()),
    ]
}
