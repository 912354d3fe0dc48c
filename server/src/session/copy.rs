//! `COPY … FROM STDIN` (text and CSV formats), so psql's `\copy` and drivers' copy APIs
//! load data. Two targets:
//!
//! - a table (`COPY schema.table [(cols)] FROM STDIN …`): PostgreSQL semantics — every
//!   value must convert to its column's type, otherwise the whole COPY fails with 22P02
//!   naming the line, and nothing is written; the rows land in one Delta commit;
//! - a source (`COPY sources.<name> [(cols)] FROM STDIN …`): the data goes through the
//!   source's pipeline like one of its files — raw landing, mapping, quarantine, dedup —
//!   exactly once per payload (the same data copied again adds nothing); the counts come
//!   back as a NOTICE and the run is in `quality.ingest_runs`.
//!
//! The data is buffered in memory until CopyDone.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, StringArray, new_null_array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource,
};
use touchlake_ingest::read::{self, CopyOptions};
use touchlake_ingest::{IngestError, SourceDef};

use super::{Executed, Outcome, Result, Session, SessionError, ident, lock};

/// The schema name under which `COPY` addresses sources.
pub const SOURCES_SCHEMA: &str = "sources";

/// A `COPY … FROM STDIN` in progress on a session.
#[derive(Debug)]
pub struct CopyIn {
    target: Target,
    columns: Vec<String>,
    options: CopyOptions,
    data: Vec<u8>,
}

#[derive(Debug)]
enum Target {
    Table {
        schema: String,
        table: String,
        table_schema: Arc<Schema>,
    },
    Source(Box<SourceDef>),
}

/// What a finished COPY reports: rows for the tag, and a notice.
pub struct CopyDone {
    /// Rows read (the `COPY n` tag).
    pub rows: usize,
    /// Counts of a source COPY.
    pub notice: Option<String>,
}

impl Session {
    /// Start `COPY target FROM STDIN`: check the target and options, then wait for data.
    pub(super) async fn begin_copy(
        &self,
        source: CopySource,
        options: Vec<CopyOption>,
        legacy: Vec<CopyLegacyOption>,
    ) -> Result<Executed> {
        let copy = self.plan_copy(source, options, legacy).await?;
        let n = copy.columns.len();
        *lock(&self.copy) = Some(copy);
        Ok(Outcome::CopyIn(n).into())
    }

    /// Check a `COPY … FROM STDIN` (also when it is prepared, so that a client using the
    /// extended protocol hears about a missing target before it starts sending data).
    pub(super) async fn plan_copy(
        &self,
        source: CopySource,
        options: Vec<CopyOption>,
        legacy: Vec<CopyLegacyOption>,
    ) -> Result<CopyIn> {
        let CopySource::Table {
            table_name,
            columns,
        } = source
        else {
            return Err(SessionError::NotSupported(
                "COPY (query) FROM is not valid; COPY a table FROM STDIN".into(),
            ));
        };
        let opts = copy_options(&options, &legacy)?;
        let listed: Vec<String> = columns.iter().map(ident).collect();
        let (schema, table) = self.resolve(&table_name)?;
        let (target, columns) = if schema == SOURCES_SCHEMA {
            let def = touchlake_ingest::source::load(&self.engine.lake, &table)
                .await?
                .ok_or(IngestError::NoSuchSource(table.clone()))?;
            if listed.is_empty() && !opts.header {
                return Err(SessionError::Data(
                    "42601",
                    format!(
                        "COPY into source {table} needs a column list or HEADER to name the columns"
                    ),
                ));
            }
            (Target::Source(Box::new(def)), listed)
        } else {
            let Some(table_schema) = self.engine.lake.cached_schema(&schema, &table).await? else {
                return Err(SessionError::Data(
                    "42P01",
                    format!("relation \"{schema}.{table}\" does not exist"),
                ));
            };
            let columns = if listed.is_empty() {
                table_schema
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect()
            } else {
                for c in &listed {
                    if table_schema.field_with_name(c).is_err() {
                        return Err(SessionError::Data(
                            "42703",
                            format!("column \"{c}\" of relation \"{table}\" does not exist"),
                        ));
                    }
                }
                listed
            };
            (
                Target::Table {
                    schema,
                    table,
                    table_schema,
                },
                columns,
            )
        };
        Ok(CopyIn {
            target,
            columns,
            options: opts,
            data: vec![],
        })
    }

    /// A CopyData message.
    pub fn copy_data(&self, bytes: &[u8]) -> Result<()> {
        match lock(&self.copy).as_mut() {
            Some(c) => {
                c.data.extend_from_slice(bytes);
                Ok(())
            }
            None => Err(SessionError::Data("08P01", "no COPY in progress".into())),
        }
    }

    /// The client gave up (CopyFail): drop the data.
    pub fn abort_copy(&self) {
        lock(&self.copy).take();
    }

    /// CopyDone: write the data.
    pub async fn finish_copy(&self) -> Result<CopyDone> {
        let Some(copy) = lock(&self.copy).take() else {
            return Err(SessionError::Data("08P01", "no COPY in progress".into()));
        };
        let text = String::from_utf8(copy.data).map_err(|e| {
            SessionError::Data(
                "22021",
                format!("invalid byte sequence for encoding \"UTF8\" in COPY data: {e}"),
            )
        })?;
        match copy.target {
            Target::Source(def) => {
                self.copy_to_source(&def, &copy.columns, &copy.options, &text)
                    .await
            }
            Target::Table {
                schema,
                table,
                table_schema,
            } => {
                self.copy_to_table(
                    &schema,
                    &table,
                    &table_schema,
                    &copy.columns,
                    &copy.options,
                    &text,
                )
                .await
            }
        }
    }

    async fn copy_to_source(
        &self,
        def: &SourceDef,
        listed: &[String],
        opts: &CopyOptions,
        text: &str,
    ) -> Result<CopyDone> {
        let s = touchlake_ingest::run::run_copy(&self.engine.lake, def, listed, opts, text).await?;
        Ok(CopyDone {
            rows: s.rows_read as usize,
            notice: Some(format!(
                "source {}: {} read, {} accepted, {} rejected, {} duplicate (run {})",
                s.source, s.rows_read, s.rows_accepted, s.rows_rejected, s.rows_duplicate, s.run_id
            )),
        })
    }

    async fn copy_to_table(
        &self,
        schema: &str,
        table: &str,
        table_schema: &Arc<Schema>,
        columns: &[String],
        opts: &CopyOptions,
        text: &str,
    ) -> Result<CopyDone> {
        let chunks = read::parse_copy(text, "line", opts, columns, usize::MAX)
            .map_err(SessionError::Ingest)?;
        let mut batches = vec![];
        let mut rows = 0;
        for chunk in chunks {
            if let Some(r) = chunk.rejects.first() {
                let line = r.location.trim_start_matches("line:");
                return Err(SessionError::Data(
                    "22P04",
                    format!("{}; COPY {table}, line {line}: \"{}\"", r.reason, r.raw),
                ));
            }
            let landed = chunk.batch;
            rows += landed.num_rows();
            let line_of = |i: usize| -> String {
                landed
                    .column_by_name(read::LOCATION)
                    .and_then(|a| {
                        a.as_any()
                            .downcast_ref::<datafusion::arrow::array::StringArray>()
                            .map(|s| s.value(i).trim_start_matches("line:").to_string())
                    })
                    .unwrap_or_default()
            };
            let mut arrays: Vec<ArrayRef> = vec![];
            for field in table_schema.fields() {
                let Some(pos) = columns.iter().position(|c| c == field.name()) else {
                    if !field.is_nullable() {
                        return Err(SessionError::Data(
                            "23502",
                            format!(
                                "null value in column \"{}\" of relation \"{table}\" violates not-null constraint",
                                field.name()
                            ),
                        ));
                    }
                    arrays.push(new_null_array(field.data_type(), landed.num_rows()));
                    continue;
                };
                let completed;
                let mut input = landed.column(pos);
                if matches!(field.data_type(), DataType::Timestamp(..))
                    && let Some(text) = input.as_any().downcast_ref::<StringArray>()
                {
                    completed = Arc::new(
                        text.iter()
                            .map(|v| v.map(crate::timestamp_text::with_seconds))
                            .collect::<StringArray>(),
                    ) as ArrayRef;
                    input = &completed;
                }
                let out = cast_with_options(
                    input,
                    field.data_type(),
                    &CastOptions {
                        safe: true,
                        ..Default::default()
                    },
                )
                .map_err(DataFusionError::from)?;
                for i in 0..input.len() {
                    if input.is_null(i) && !field.is_nullable() {
                        return Err(SessionError::Data(
                            "23502",
                            format!(
                                "null value in column \"{}\" of relation \"{table}\" violates not-null constraint; COPY {table}, line {}",
                                field.name(),
                                line_of(i)
                            ),
                        ));
                    }
                    if input.is_valid(i) && out.is_null(i) {
                        let value = input
                            .as_any()
                            .downcast_ref::<datafusion::arrow::array::StringArray>()
                            .map(|s| s.value(i).to_string())
                            .unwrap_or_default();
                        return Err(SessionError::Data(
                            "22P02",
                            format!(
                                "invalid input syntax for type {}: \"{value}\"; COPY {table}, line {}, column {}",
                                pg_type_name(field.data_type()),
                                line_of(i),
                                field.name()
                            ),
                        ));
                    }
                }
                arrays.push(out);
            }
            if landed.num_rows() > 0 {
                batches.push(
                    RecordBatch::try_new(table_schema.clone(), arrays)
                        .map_err(DataFusionError::from)?,
                );
            }
        }
        if !batches.is_empty() {
            let app_id = format!("touchlake-copy:{}", touchlake_ingest::run::new_run_id());
            touchlake_ingest::run::append(
                &self.engine.lake,
                schema,
                table,
                batches,
                &app_id,
                false,
            )
            .await?;
        }
        Ok(CopyDone { rows, notice: None })
    }
}

fn pg_type_name(t: &DataType) -> String {
    match t {
        DataType::Int16 => "smallint".into(),
        DataType::Int32 => "integer".into(),
        DataType::Int64 => "bigint".into(),
        DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Date32 => "date".into(),
        DataType::Decimal128(p, s) => format!("numeric({p},{s})"),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        other => other.to_string().to_lowercase(),
    }
}

/// COPY options, new style (`WITH (FORMAT csv, HEADER)`) or old (`CSV HEADER`).
fn copy_options(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Result<CopyOptions> {
    let mut csv = false;
    for o in options {
        if let CopyOption::Format(f) = o {
            match f.value.to_ascii_lowercase().as_str() {
                "csv" => csv = true,
                "text" => csv = false,
                other => {
                    return Err(SessionError::NotSupported(format!(
                        "COPY format \"{other}\" is not supported (text and csv are)"
                    )));
                }
            }
        }
    }
    if legacy.iter().any(|o| matches!(o, CopyLegacyOption::Csv(_))) {
        csv = true;
    }
    let mut opts = CopyOptions::new(csv);
    for o in options {
        match o {
            CopyOption::Format(_) | CopyOption::Freeze(_) => {}
            CopyOption::Delimiter(c) => opts.delimiter = *c,
            CopyOption::Null(s) => opts.null = s.clone(),
            CopyOption::Header(h) => opts.header = *h,
            CopyOption::Quote(c) => opts.quote = *c,
            CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            other => {
                return Err(SessionError::NotSupported(format!(
                    "COPY option {other} is not supported"
                )));
            }
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Csv(csv_opts) => {
                for c in csv_opts {
                    match c {
                        CopyLegacyCsvOption::Header => opts.header = true,
                        CopyLegacyCsvOption::Quote(q) => opts.quote = *q,
                        other => {
                            return Err(SessionError::NotSupported(format!(
                                "COPY option {other} is not supported"
                            )));
                        }
                    }
                }
            }
            CopyLegacyOption::Delimiter(c) => opts.delimiter = *c,
            CopyLegacyOption::Null(s) => opts.null = s.clone(),
            CopyLegacyOption::Header => opts.header = true,
            other => {
                return Err(SessionError::NotSupported(format!(
                    "COPY option {other} is not supported"
                )));
            }
        }
    }
    if opts.csv && opts.delimiter == opts.quote {
        return Err(SessionError::Data(
            "22023",
            "COPY delimiter and quote must be different".into(),
        ));
    }
    Ok(opts)
}
