//! Touchlake's own statements (see [`crate::extension`]) and `CALL ingest(…)`.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use touchlake_ingest::IngestError;
use touchlake_ingest::mapping::Mapping;
use touchlake_ingest::run::RunSummary;
use touchlake_ingest::source::{self, SourceDef};

use super::{Executed, Outcome, Result, Session, SessionError, command};
use crate::extension::LakeCommand;

fn fields(cols: &[(&str, DataType)]) -> SchemaRef {
    Arc::new(Schema::new(
        cols.iter()
            .map(|(n, t)| Field::new(*n, t.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

fn show_sources_schema() -> SchemaRef {
    fields(&[
        ("name", DataType::Utf8),
        ("kind", DataType::Utf8),
        ("channel", DataType::Utf8),
        ("channel_type", DataType::Utf8),
        ("path", DataType::Utf8),
        ("format", DataType::Utf8),
        ("raw_table", DataType::Utf8),
        ("poll_seconds", DataType::Int64),
        ("definition", DataType::Utf8),
    ])
}

/// Columns of `CALL ingest(…)`.
pub fn ingest_schema() -> SchemaRef {
    fields(&[
        ("source", DataType::Utf8),
        ("run_id", DataType::Utf8),
        ("status", DataType::Utf8),
        ("files", DataType::Int64),
        ("rows_read", DataType::Int64),
        ("rows_accepted", DataType::Int64),
        ("rows_rejected", DataType::Int64),
        ("rows_duplicate", DataType::Int64),
        ("seconds", DataType::Float64),
        ("error", DataType::Utf8),
    ])
}

/// Columns of `CALL identity_run(…)`.
pub fn identity_schema() -> SchemaRef {
    fields(&[
        ("run_id", DataType::Utf8),
        ("mode", DataType::Utf8),
        ("touchpoints", DataType::Int64),
        ("identifiers", DataType::Int64),
        ("edges", DataType::Int64),
        ("persons", DataType::Int64),
        ("persons_kept", DataType::Int64),
        ("merges", DataType::Int64),
        ("splits", DataType::Int64),
        ("guarded", DataType::Int64),
        ("skipped_edges", DataType::Int64),
        ("largest_person", DataType::Int64),
        ("seconds", DataType::Float64),
        ("full_reason", DataType::Utf8),
    ])
}

/// The row of `CALL identity_run(…)`.
pub fn identity_rows(s: &touchlake_ingest::identity::IdentitySummary) -> Result<RecordBatch> {
    let i = |v: u64| -> ArrayRef { Arc::new(Int64Array::from(vec![v as i64])) };
    batch(
        identity_schema(),
        vec![
            Arc::new(StringArray::from(vec![s.run_id.clone()])),
            Arc::new(StringArray::from(vec![s.mode.clone()])),
            i(s.touchpoints),
            i(s.identifiers),
            i(s.edges),
            i(s.persons),
            i(s.persons_kept),
            i(s.merges),
            i(s.splits),
            i(s.guarded),
            i(s.skipped_edges),
            i(s.largest_person),
            Arc::new(Float64Array::from(vec![s.seconds])),
            // Why the run resolved everything (NULL when it continued incrementally).
            Arc::new(StringArray::from(vec![
                (!s.full_reason.is_empty()).then(|| s.full_reason.clone()),
            ])),
        ],
    )
}

fn optimize_schema() -> SchemaRef {
    fields(&[
        ("table_name", DataType::Utf8),
        ("files_added", DataType::Int64),
        ("files_removed", DataType::Int64),
        ("files_considered", DataType::Int64),
        ("files_skipped", DataType::Int64),
    ])
}

fn vacuum_schema() -> SchemaRef {
    fields(&[
        ("table_name", DataType::Utf8),
        ("dry_run", DataType::Utf8),
        ("files", DataType::Int64),
    ])
}

/// Result columns of a Touchlake statement (for Describe in the extended protocol).
pub fn lake_command_schema(c: &LakeCommand) -> SchemaRef {
    match c {
        LakeCommand::ShowSources => show_sources_schema(),
        LakeCommand::ShowCreateSource { .. } => fields(&[("create_source", DataType::Utf8)]),
        LakeCommand::Optimize { .. } => optimize_schema(),
        LakeCommand::Vacuum { .. } => vacuum_schema(),
        LakeCommand::CreateSource { .. } | LakeCommand::DropSource { .. } => {
            Arc::new(Schema::empty())
        }
    }
}

fn rows(batch: RecordBatch) -> Executed {
    let schema = batch.schema();
    let stream = futures::stream::iter(vec![Ok(batch)]);
    Outcome::Rows(Box::pin(RecordBatchStreamAdapter::new(schema, stream))).into()
}

fn batch(schema: SchemaRef, cols: Vec<ArrayRef>) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(schema, cols).map_err(DataFusionError::from)?)
}

/// The rows of `CALL ingest(…)`.
pub fn run_rows(runs: &[RunSummary]) -> Result<RecordBatch> {
    batch(
        ingest_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(
                runs.iter().map(|r| &r.source),
            )),
            Arc::new(StringArray::from_iter_values(
                runs.iter().map(|r| &r.run_id),
            )),
            Arc::new(StringArray::from_iter_values(
                runs.iter().map(|r| &r.status),
            )),
            Arc::new(Int64Array::from_iter_values(
                runs.iter().map(|r| r.files_ingested as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                runs.iter().map(|r| r.rows_read as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                runs.iter().map(|r| r.rows_accepted as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                runs.iter().map(|r| r.rows_rejected as i64),
            )),
            Arc::new(Int64Array::from_iter_values(
                runs.iter().map(|r| r.rows_duplicate as i64),
            )),
            Arc::new(Float64Array::from_iter_values(
                runs.iter().map(|r| r.seconds),
            )),
            Arc::new(StringArray::from(
                runs.iter().map(|r| r.error.clone()).collect::<Vec<_>>(),
            )),
        ],
    )
}

impl Session {
    /// Execute a Touchlake statement.
    pub(super) async fn lake_command(&self, c: LakeCommand) -> Result<Executed> {
        let lake = &self.engine.lake;
        match c {
            LakeCommand::CreateSource {
                name,
                or_replace,
                if_not_exists,
                options,
            } => {
                let def = SourceDef::from_options(&name, &options)?;
                touchlake_ingest::run::check_definition(&def).await?;
                Mapping::compile(&def)?;
                if if_not_exists && source::load(lake, &name).await?.is_some() {
                    return Ok(command("CREATE SOURCE"));
                }
                source::save(lake, &def, or_replace).await?;
                Ok(command("CREATE SOURCE"))
            }
            LakeCommand::DropSource { name, if_exists } => {
                if !source::drop(lake, &name).await? && !if_exists {
                    return Err(IngestError::NoSuchSource(name).into());
                }
                Ok(command("DROP SOURCE"))
            }
            LakeCommand::ShowSources => {
                let defs = source::load_all(lake).await?;
                let tomls: Vec<String> = defs
                    .iter()
                    .map(|d| d.to_toml())
                    .collect::<std::result::Result<_, _>>()?;
                Ok(rows(batch(
                    show_sources_schema(),
                    vec![
                        Arc::new(StringArray::from_iter_values(defs.iter().map(|d| &d.name))),
                        Arc::new(StringArray::from_iter_values(
                            defs.iter().map(|d| d.kind.as_str()),
                        )),
                        Arc::new(StringArray::from_iter_values(
                            defs.iter().map(|d| &d.channel),
                        )),
                        Arc::new(StringArray::from_iter_values(
                            defs.iter().map(|d| &d.channel_type),
                        )),
                        Arc::new(StringArray::from(
                            defs.iter().map(|d| d.path.clone()).collect::<Vec<_>>(),
                        )),
                        Arc::new(StringArray::from_iter_values(
                            defs.iter().map(|d| &d.format.kind),
                        )),
                        Arc::new(StringArray::from_iter_values(
                            defs.iter().map(|d| format!("raw.{}", d.raw_table())),
                        )),
                        Arc::new(Int64Array::from(
                            defs.iter()
                                .map(|d| d.poll_seconds.map(|s| s as i64))
                                .collect::<Vec<_>>(),
                        )),
                        Arc::new(StringArray::from(tomls)),
                    ],
                )?))
            }
            LakeCommand::ShowCreateSource { name } => {
                let def = source::load(lake, &name)
                    .await?
                    .ok_or(IngestError::NoSuchSource(name))?;
                Ok(rows(batch(
                    lake_command_schema(&LakeCommand::ShowCreateSource {
                        name: String::new(),
                    }),
                    vec![Arc::new(StringArray::from(vec![def.to_sql()?]))],
                )?))
            }
            LakeCommand::Optimize { table, zorder } => {
                let (schema, name) = self.resolve_parts(&table)?;
                let (t, _) = lake.table(&schema, &name).await?.ok_or_else(|| {
                    touchlake_catalog::CatalogError::NoSuchTable(format!("{schema}.{name}"))
                })?;
                // Compaction writes the table's own Parquet settings (row groups, encodings).
                let metrics =
                    touchlake_ingest::tables::optimize(lake, t, &schema, &name, zorder).await?;
                Ok(rows(batch(
                    optimize_schema(),
                    vec![
                        Arc::new(StringArray::from(vec![format!("{schema}.{name}")])),
                        Arc::new(Int64Array::from(vec![metrics.num_files_added as i64])),
                        Arc::new(Int64Array::from(vec![metrics.num_files_removed as i64])),
                        Arc::new(Int64Array::from(vec![
                            metrics.total_considered_files as i64,
                        ])),
                        Arc::new(Int64Array::from(vec![metrics.total_files_skipped as i64])),
                    ],
                )?))
            }
            LakeCommand::Vacuum {
                table,
                retain_hours,
                dry_run,
            } => {
                let (schema, name) = self.resolve_parts(&table)?;
                let (t, _) = lake.table(&schema, &name).await?.ok_or_else(|| {
                    touchlake_catalog::CatalogError::NoSuchTable(format!("{schema}.{name}"))
                })?;
                let mut op = t.vacuum().with_dry_run(dry_run);
                if let Some(h) = retain_hours {
                    // An explicit RETAIN is the user's decision, even below the table's
                    // default retention (it limits how far back time travel reaches).
                    op = op
                        .with_retention_period(chrono::Duration::hours(h as i64))
                        .with_enforce_retention_duration(false);
                }
                let (_, metrics) = op.await.map_err(touchlake_catalog::CatalogError::from)?;
                lake.invalidate(&schema, &name).await;
                Ok(rows(batch(
                    vacuum_schema(),
                    vec![
                        Arc::new(StringArray::from(vec![format!("{schema}.{name}")])),
                        Arc::new(StringArray::from(vec![if dry_run { "yes" } else { "no" }])),
                        Arc::new(Int64Array::from(vec![metrics.files_deleted.len() as i64])),
                    ],
                )?))
            }
        }
    }

    /// `CALL ingest()` (every source) or `CALL ingest('name', …)`.
    pub(super) async fn call_ingest(&self, names: Vec<String>) -> Result<Executed> {
        let lake = &self.engine.lake;
        let defs = if names.is_empty() {
            source::load_all(lake).await?
        } else {
            let mut defs = vec![];
            for n in names {
                defs.push(
                    source::load(lake, &n)
                        .await?
                        .ok_or(IngestError::NoSuchSource(n))?,
                );
            }
            defs
        };
        let mut runs = vec![];
        for def in defs {
            match touchlake_ingest::run::run_any(lake, &def, true, &|_| {}).await {
                Ok(s) => runs.extend(s),
                Err(e) => return Err(SessionError::Ingest(e)),
            }
        }
        Ok(rows(run_rows(&runs)?))
    }

    /// `CALL identity_run()`, or with settings for this run:
    /// `CALL identity_run('max_degree.device_id=3', 'limit.email=1')`.
    pub(super) async fn call_identity_run(&self, args: Vec<String>) -> Result<Executed> {
        let mut config = self
            .engine
            .config
            .identity
            .config()
            .map_err(|e| SessionError::Data("22023", e))?;
        for a in &args {
            let (k, v) = a.split_once('=').ok_or_else(|| {
                SessionError::Data(
                    "22023",
                    format!("identity_run argument '{a}' is not setting=value"),
                )
            })?;
            config
                .set(k.trim(), v.trim())
                .map_err(|e| SessionError::Data("22023", e))?;
        }
        let summary = touchlake_ingest::identity::run(&self.engine.lake, &config).await?;
        // The next increment's lookups, prepared while the server is idle.
        touchlake_ingest::identity::warm_up(self.engine.lake.clone());
        Ok(rows(identity_rows(&summary)?))
    }

    fn resolve_parts(&self, parts: &[String]) -> Result<(String, String)> {
        let name = datafusion::sql::sqlparser::ast::ObjectName::from(
            parts
                .iter()
                .map(|p| datafusion::sql::sqlparser::ast::Ident::with_quote('"', p))
                .collect::<Vec<_>>(),
        );
        self.resolve(&name)
    }
}
