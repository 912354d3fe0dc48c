//! An ingest run of one source: list its files, skip those already in the ledger, and for
//! each chunk of each new file land the records in `raw.<source>`, map and validate them,
//! quarantine the bad ones in `quality.rejected`, drop duplicates, and append the rest to
//! `unified.touchpoints`.
//!
//! Exactly-once: every chunk has a deterministic batch id (source, file, content hash,
//! chunk number). Each table's commit for that chunk carries a Delta application
//! transaction (`txn` action) with that id, and a commit whose id the table already holds is
//! skipped. So a run killed at any point and run again writes each chunk to each table
//! exactly once, and the tables equal those of an uninterrupted run (apart from the
//! lineage columns `run_id`/`ingested_at`). The file enters `quality.ingest_files` last.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, new_null_array,
};
use datafusion::arrow::compute::{cast, concat_batches, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use deltalake::kernel::Transaction;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::Digest;
use touchlake_catalog::Lake;

use crate::error::{IngestError, Result};
use crate::mapping::{Mapping, REASON};
use crate::read::{self, LOCATION, RAW, ROW};
use crate::source::SourceDef;
use crate::tables;

/// What a run did, as written to `quality.ingest_runs`.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The run's id (also in every row it wrote).
    pub run_id: String,
    /// The source.
    pub source: String,
    /// `succeeded` or `failed`.
    pub status: String,
    /// Files matched by the glob.
    pub files_seen: u64,
    /// Files read in this run (new or changed).
    pub files_ingested: u64,
    /// Records read.
    pub rows_read: u64,
    /// Records that became touchpoints.
    pub rows_accepted: u64,
    /// Records quarantined in `quality.rejected`.
    pub rows_rejected: u64,
    /// Records whose touchpoint already existed (or repeated within the run).
    pub rows_duplicate: u64,
    /// Why the run failed.
    pub error: Option<String>,
    /// Wall-clock duration.
    pub seconds: f64,
    /// Per identifier column (see [`crate::checks::IDENTIFIERS`]): accepted rows with a value.
    pub identifiers_present: [u64; crate::checks::IDENTIFIERS.len()],
    /// Latest `occurred_at` (µs since the epoch) among the accepted rows.
    pub latest_occurred_us: Option<i64>,
}

/// Progress of a run, reported after each chunk.
#[derive(Debug, Clone)]
pub struct Progress {
    /// The file being read.
    pub file: String,
    /// Records read so far in this run.
    pub rows_read: u64,
    /// Files done so far / to do.
    pub files_done: u64,
    /// Files to read in this run.
    pub files_total: u64,
}

/// A new run id: time-ordered and unique.
pub fn new_run_id() -> String {
    format!(
        "{}-{}",
        Utc::now().format("%Y%m%dT%H%M%S%.3fZ"),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Ingest one source. Record-level problems are quarantined; an error here (unreadable
/// store, a mapping that does not plan) fails the run, which is recorded as `failed`.
pub async fn run_source(
    lake: &Lake,
    def: &SourceDef,
    progress: &(dyn Fn(&Progress) + Send + Sync),
) -> Result<RunSummary> {
    run_source_with(lake, def, true, progress).await
}

/// [`run_source`]; with `record_empty` false, a run that found nothing new leaves no row
/// in `quality.ingest_runs` (for the scheduler's frequent polls).
pub async fn run_source_with(
    lake: &Lake,
    def: &SourceDef,
    record_empty: bool,
    progress: &(dyn Fn(&Progress) + Send + Sync),
) -> Result<RunSummary> {
    tables::ensure(lake).await?;
    let started = Utc::now();
    let clock = std::time::Instant::now();
    let mut summary = RunSummary::new(&def.name);
    let result = ingest_files(lake, def, &mut summary, progress).await;
    let record = record_empty || result.is_err() || summary.files_ingested > 0;
    finish_run(lake, summary, result, started, clock, record).await
}

/// End a run: status and time, its rows in `quality.ingest_runs` and `quality.checks`
/// (when `record`), a fresh lake listing.
async fn finish_run(
    lake: &Lake,
    mut summary: RunSummary,
    result: Result<()>,
    started: DateTime<Utc>,
    clock: std::time::Instant,
    record: bool,
) -> Result<RunSummary> {
    if let Err(e) = &result {
        summary.status = "failed".into();
        summary.error = Some(e.to_string());
    }
    summary.seconds = clock.elapsed().as_secs_f64();
    if record {
        record_run(lake, &summary, started, Utc::now()).await?;
        crate::checks::record(lake, &summary).await?;
    }
    lake.refresh_listing().await?;
    result.map(|()| summary)
}

/// Ingest records pushed to a source rather than listed from files (`COPY … FROM STDIN`,
/// the HTTP collector, a database pull) as one run: `chunks` are committed exactly once
/// under batch ids `<source>:<batch>:<chunk>`, so the same `batch` sent again adds
/// nothing. A `batch` must name the records (e.g. a content hash), not the attempt.
pub async fn run_chunks(
    lake: &Lake,
    def: &SourceDef,
    batch: &str,
    chunks: Vec<read::Chunk>,
) -> Result<RunSummary> {
    tables::ensure(lake).await?;
    let started = Utc::now();
    let clock = std::time::Instant::now();
    let mut summary = RunSummary::new(&def.name);
    let result = async {
        let mapping = Mapping::compile(def)?;
        let ctx = mapping_context()?;
        let run_id = summary.run_id.clone();
        // Each chunk is mapped while the one before it commits.
        let mut chunks = chunks.into_iter();
        let mut pending: Option<Prepared> = None;
        loop {
            let commit = async {
                match pending.take() {
                    Some(p) => commit_chunk(lake, def, p, &run_id).await.map(Some),
                    None => Ok(None),
                }
            };
            let next = async {
                let Some(chunk) = chunks.next() else {
                    return Ok(None);
                };
                let batch_id = format!("{}:{batch}:{}", def.name, chunk.index);
                prepare_chunk(def, &mapping, &ctx, chunk, &batch_id, &run_id)
                    .await
                    .map(Some)
            };
            let (committed, next): (Result<_>, Result<_>) = tokio::join!(commit, next);
            if let Some(counts) = committed? {
                summary.add(&counts);
            }
            match next? {
                Some(p) => pending = Some(p),
                None => break,
            }
        }
        Ok::<(), IngestError>(())
    }
    .await;
    finish_run(lake, summary, result, started, clock, true).await
}

/// [`run_chunks`] over one payload of CSV/NDJSON text in `format`; the batch id is
/// `<label>:<sha256 of the bytes>`, and record locations read `<label>:<line>`.
pub async fn run_payload(
    lake: &Lake,
    def: &SourceDef,
    label: &str,
    bytes: &[u8],
    format: &crate::source::Format,
) -> Result<RunSummary> {
    let hash = hex::encode(sha2::Sha256::digest(bytes));
    let chunks = match format.kind.as_str() {
        "parquet" => read::parquet(bytes, label, def.batch_rows())?,
        _ => {
            let text = read::decode(bytes, &format.encoding)?;
            read::parse(&text, label, format, def.batch_rows())?
        }
    };
    run_chunks(lake, def, &format!("{label}:{hash}"), chunks).await
}

/// `COPY sources.<name> [(listed)] FROM STDIN` data as one run. Column names come from
/// `listed`, else from the header line; they are normalised like a file's header. The
/// batch id is a hash of the columns and data, so the same COPY twice adds nothing.
pub async fn run_copy(
    lake: &Lake,
    def: &SourceDef,
    listed: &[String],
    opts: &read::CopyOptions,
    text: &str,
) -> Result<RunSummary> {
    let mut opts = opts.clone();
    let mut columns: Vec<String> = listed.to_vec();
    let mut body = text;
    if opts.header {
        let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
        if columns.is_empty() {
            let first = first.trim_end_matches('\r');
            columns = if opts.csv {
                let mut r = csv::ReaderBuilder::new()
                    .delimiter(opts.delimiter as u8)
                    .quote(opts.quote as u8)
                    .has_headers(false)
                    .from_reader(first.as_bytes());
                r.records()
                    .next()
                    .and_then(|r| r.ok())
                    .map(|r| r.iter().map(str::to_string).collect())
                    .unwrap_or_default()
            } else {
                first.split(opts.delimiter).map(str::to_string).collect()
            };
        }
        body = rest;
        opts.header = false;
    }
    if columns.is_empty() {
        return Err(IngestError::Definition(format!(
            "COPY into source {} needs a column list or HEADER to name the columns",
            def.name
        )));
    }
    let columns: Vec<String> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| read::column_name(c, i))
        .collect();
    let chunks = read::parse_copy(body, "copy", &opts, &columns, def.batch_rows())?;
    let mut h = sha2::Sha256::new();
    h.update(columns.join("\u{1f}").as_bytes());
    h.update([0]);
    h.update(body.as_bytes());
    let hash = hex::encode(h.finalize());
    run_chunks(lake, def, &format!("copy:{hash}"), chunks).await
}

/// Run a source of any kind: files are listed and read, an `http` source's write-ahead
/// log is flushed, a `postgres` table is pulled. One summary per run made.
pub async fn run_any(
    lake: &Lake,
    def: &SourceDef,
    record_empty: bool,
    progress: &(dyn Fn(&Progress) + Send + Sync),
) -> Result<Vec<RunSummary>> {
    match def.kind {
        crate::source::SourceKind::Files => Ok(vec![
            run_source_with(lake, def, record_empty, progress).await?,
        ]),
        crate::source::SourceKind::Http => crate::collector::flush(lake, def, 1000).await,
        crate::source::SourceKind::Postgres | crate::source::SourceKind::Mysql => {
            crate::pull::pull(lake, def, record_empty).await
        }
        // Nothing to fetch: its records come by COPY.
        crate::source::SourceKind::Copy => Ok(vec![]),
    }
}

/// Plan a definition's mapping over an empty batch of the columns it reads, so that a
/// mapping with an unknown function or column type problem is refused when the source is
/// defined rather than at its first run.
pub async fn check_definition(def: &SourceDef) -> Result<()> {
    let mapping = Mapping::compile(def)?;
    let ctx = mapping_context()?;
    let mut fields: Vec<Field> = mapping
        .referenced()
        .map(|c| Field::new(c, DataType::Utf8, true))
        .collect();
    fields.push(Field::new(LOCATION, DataType::Utf8, false));
    fields.push(Field::new(RAW, DataType::Utf8, false));
    fields.push(Field::new(ROW, DataType::Int64, false));
    let src = RecordBatch::new_empty(Arc::new(Schema::new(fields)));
    let map_err = |e: datafusion::error::DataFusionError| IngestError::Mapping {
        name: def.name.clone(),
        message: e.to_string(),
    };
    ctx.register_batch("src", src.clone())?;
    let s1 = ctx
        .sql(&mapping.stage1_sql(&src.schema()))
        .await
        .map_err(map_err)?;
    let s1_schema: Schema = s1.schema().as_arrow().clone();
    ctx.register_table("stage1", s1.into_view())?;
    let s2 = ctx
        .sql(&mapping.stage2_sql(&s1_schema))
        .await
        .map_err(map_err)?;
    ctx.register_table("stage2", s2.into_view())?;
    ctx.sql(&mapping.stage3_sql()).await.map_err(map_err)?;
    Ok(())
}

/// A file matched by a source's glob.
struct FileRef {
    store: Arc<dyn ObjectStore>,
    location: Path,
    display: String,
    size: u64,
    modified: DateTime<Utc>,
}

/// Files matching `glob`: relative to the lake root, or an absolute local path.
async fn list_files(lake: &Lake, glob: &str) -> Result<Vec<FileRef>> {
    let local = glob.starts_with('/') || glob.starts_with("file://");
    let rel = glob.trim_start_matches("file://").trim_start_matches('/');
    let segments: Vec<&str> = rel.split('/').filter(|s| !s.is_empty()).collect();
    let literal = segments
        .iter()
        .take_while(|s| !s.contains(['*', '?', '[']))
        .count();
    let (store, base): (Arc<dyn ObjectStore>, Path) = if local {
        (
            Arc::new(object_store::local::LocalFileSystem::new()),
            Path::from_iter(segments[..literal].iter().copied()),
        )
    } else {
        (lake.store(), lake.path(&segments[..literal]))
    };
    // Path::from_iter would percent-encode the wildcards: join the pattern by hand.
    let pattern_text = std::iter::once(base.to_string())
        .chain(segments[literal..].iter().map(|s| s.to_string()))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    let pattern = glob::Pattern::new(&pattern_text)
        .map_err(|e| IngestError::Definition(format!("invalid path glob '{glob}': {e}")))?;
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let lake_root = lake.path(&[]).to_string();
    let mut out = vec![];
    let listed: Vec<object_store::ObjectMeta> = if literal == segments.len() {
        match store.head(&base).await {
            Ok(m) => vec![m],
            Err(object_store::Error::NotFound { .. }) => vec![],
            Err(e) => return Err(e.into()),
        }
    } else {
        store.list(Some(&base)).try_collect().await?
    };
    for m in listed {
        if !pattern.matches_with(m.location.as_ref(), opts) {
            continue;
        }
        let display = if local {
            format!("/{}", m.location)
        } else {
            m.location
                .as_ref()
                .strip_prefix(&lake_root)
                .unwrap_or(m.location.as_ref())
                .trim_start_matches('/')
                .to_string()
        };
        out.push(FileRef {
            store: store.clone(),
            location: m.location,
            display,
            size: m.size,
            modified: m.last_modified,
        });
    }
    out.sort_by(|a, b| a.display.cmp(&b.display));
    Ok(out)
}

/// The ledger entry of a file: (size, last_modified µs, content hash).
type Ledger = HashMap<String, Vec<(i64, Option<i64>, String)>>;

async fn read_ledger(lake: &Lake, ctx: &SessionContext, source: &str) -> Result<Ledger> {
    let mut ledger: Ledger = HashMap::new();
    let Some((_, provider)) = lake.table("quality", "ingest_files").await? else {
        return Ok(ledger);
    };
    ctx.deregister_table("ledger")?;
    ctx.register_table("ledger", provider)?;
    let batches = ctx
        .sql(&format!(
            "SELECT path, size, last_modified, content_hash FROM ledger WHERE source = '{}'",
            source.replace('\'', "''")
        ))
        .await?
        .collect()
        .await?;
    for b in batches {
        let path = cast(b.column(0), &DataType::Utf8)?;
        let path = path.as_string::<i32>();
        let size = b
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let modified = cast(b.column(2), &DataType::Int64)?;
        let modified = modified.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let hash = cast(b.column(3), &DataType::Utf8)?;
        let hash = hash.as_string::<i32>();
        for i in 0..b.num_rows() {
            ledger.entry(path.value(i).to_string()).or_default().push((
                size.value(i),
                (!modified.is_null(i)).then(|| modified.value(i)),
                hash.value(i).to_string(),
            ));
        }
    }
    Ok(ledger)
}

/// A session for mapping: Touchlake's functions and the PostgreSQL-compatible ones.
fn mapping_context() -> Result<SessionContext> {
    let config = datafusion::prelude::SessionConfig::new()
        .set_bool(
            "datafusion.execution.parquet.schema_force_view_types",
            false,
        )
        .set_bool("datafusion.sql_parser.map_string_types_to_utf8view", false)
        .set_str("datafusion.sql_parser.dialect", "PostgreSQL");
    let mut ctx = SessionContext::new_with_config(config);
    touchlake_functions::register_all(&mut ctx)?;
    for f in touchlake_catalog::pg_functions::all() {
        ctx.register_udf(f);
    }
    Ok(ctx)
}

async fn ingest_files(
    lake: &Lake,
    def: &SourceDef,
    summary: &mut RunSummary,
    progress: &(dyn Fn(&Progress) + Send + Sync),
) -> Result<()> {
    let glob = def
        .path
        .as_deref()
        .ok_or_else(|| IngestError::Definition(format!("source {} has no path", def.name)))?;
    let mapping = Mapping::compile(def)?;
    let ctx = mapping_context()?;
    let files = list_files(lake, glob).await?;
    summary.files_seen = files.len() as u64;
    let ledger = read_ledger(lake, &ctx, &def.name).await?;
    let mut todo = vec![];
    for f in files {
        let seen = ledger.get(&f.display);
        let unchanged = seen.is_some_and(|entries| {
            entries.iter().any(|(size, modified, _)| {
                *size == f.size as i64 && *modified == Some(f.modified.timestamp_micros())
            })
        });
        if !unchanged {
            todo.push(f);
        }
    }
    let total = todo.len() as u64;
    // Read and parse the next file on another core while this one is mapped and committed
    // (a channel of one parsed file bounds the memory).
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Parsed>>(1);
    let reader = {
        let def = def.clone();
        let ledger = ledger.clone();
        tokio::spawn(async move {
            for f in todo {
                let parsed = read_file(&def, &ledger, f).await;
                let failed = parsed.is_err();
                if tx.send(parsed).await.is_err() || failed {
                    break;
                }
            }
        })
    };
    // Each chunk is mapped while the one before it commits (the mapping runs on the
    // cores that the commits' Parquet encoding leaves idle). Commits stay in order: a
    // file's chunks, then its ledger entry.
    let run_id = summary.run_id.clone();
    let mut queued: std::collections::VecDeque<Queued> = Default::default();
    let mut pending: Option<Ready> = None;
    let mut files_done = 0u64;
    let mut file_rows = 0u64;
    loop {
        let commit = async {
            Ok(match pending.take() {
                Some(Ready::Chunk(file, prepared)) => {
                    let counts = commit_chunk(lake, def, *prepared, &run_id).await?;
                    Some(Committed::Chunk(file, counts))
                }
                Some(Ready::FileEnd(f, hash)) => {
                    commit_ledger(lake, def, &f, &hash, file_rows, &run_id).await?;
                    Some(Committed::File(f))
                }
                None => None,
            })
        };
        let next = async {
            loop {
                match queued.pop_front() {
                    Some(Queued::Chunk(file, chunk, batch_id)) => {
                        let prepared =
                            prepare_chunk(def, &mapping, &ctx, chunk, &batch_id, &run_id).await?;
                        return Ok(Some(Ready::Chunk(file, Box::new(prepared))));
                    }
                    Some(Queued::FileEnd(file, hash)) => {
                        return Ok(Some(Ready::FileEnd(file, hash)));
                    }
                    None => {}
                }
                let Some(parsed) = rx.recv().await else {
                    return Ok(None);
                };
                let Parsed { file, hash, chunks } = parsed?;
                let Some(chunks) = chunks else {
                    files_done += 1; // touched, not changed
                    continue;
                };
                summary.files_ingested += 1;
                let file = Arc::new(file);
                for chunk in chunks {
                    let batch_id = format!("{}:{}:{hash}:{}", def.name, file.display, chunk.index);
                    queued.push_back(Queued::Chunk(file.clone(), chunk, batch_id));
                }
                queued.push_back(Queued::FileEnd(file, hash));
            }
        };
        let (committed, next): (Result<Option<Committed>>, Result<Option<Ready>>) =
            tokio::join!(commit, next);
        match committed? {
            Some(Committed::Chunk(file, counts)) => {
                file_rows += counts.read;
                summary.add(&counts);
                progress(&Progress {
                    file: file.display.clone(),
                    rows_read: summary.rows_read,
                    files_done,
                    files_total: total,
                });
            }
            Some(Committed::File(file)) => {
                file_rows = 0;
                files_done += 1;
                progress(&Progress {
                    file: file.display.clone(),
                    rows_read: summary.rows_read,
                    files_done,
                    files_total: total,
                });
            }
            None => {}
        }
        match next? {
            Some(w) => pending = Some(w),
            None => break,
        }
    }
    reader
        .await
        .map_err(|e| IngestError::Read(format!("file reader failed: {e}")))?;
    Ok(())
}

/// A file read and parsed: `chunks` is None when its content was ingested before.
struct Parsed {
    file: FileRef,
    hash: String,
    chunks: Option<Vec<read::Chunk>>,
}

/// Read `f`, hash it, and (unless the ledger has that content) parse it into chunks on a
/// blocking thread.
async fn read_file(def: &SourceDef, ledger: &Ledger, f: FileRef) -> Result<Parsed> {
    let clock = std::time::Instant::now();
    let bytes = f.store.get(&f.location).await?.bytes().await?;
    let hash = hex::encode(sha2::Sha256::digest(&bytes));
    if ledger
        .get(&f.display)
        .is_some_and(|e| e.iter().any(|(_, _, h)| *h == hash))
    {
        return Ok(Parsed {
            file: f,
            hash,
            chunks: None,
        });
    }
    let def = def.clone();
    let display = f.display.clone();
    let chunks = tokio::task::spawn_blocking(move || -> Result<Vec<read::Chunk>> {
        match def.format.kind.as_str() {
            "parquet" => read::parquet(&bytes, &display, def.batch_rows()),
            _ => {
                let text = read::decode(&bytes, &def.format.encoding)?;
                read::parse(&text, &display, &def.format, def.batch_rows())
            }
        }
    })
    .await
    .map_err(|e| IngestError::Read(format!("parser failed: {e}")))??;
    tracing::debug!(
        file = f.display,
        read_ms = clock.elapsed().as_millis(),
        "file read and parsed"
    );
    Ok(Parsed {
        file: f,
        hash,
        chunks: Some(chunks),
    })
}

fn text(s: &str) -> ArrayRef {
    Arc::new(StringArray::from(vec![s.to_string()]))
}

fn now_ts(n: usize) -> ArrayRef {
    let now = Utc::now().timestamp_micros();
    Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC"))
}

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// A step of a file run waiting its turn, in commit order.
enum Queued {
    /// A chunk as parsed, with its batch id.
    Chunk(Arc<FileRef>, read::Chunk, String),
    /// The file's ledger entry (content hash), after all of its chunks.
    FileEnd(Arc<FileRef>, String),
}

/// A step of a file run ready to commit.
enum Ready {
    /// A chunk mapped and validated.
    Chunk(Arc<FileRef>, Box<Prepared>),
    /// The file's ledger entry (content hash): all of its chunks are committed.
    FileEnd(Arc<FileRef>, String),
}

/// What one commit step did.
enum Committed {
    Chunk(Arc<FileRef>, ChunkCounts),
    File(Arc<FileRef>),
}

/// Enter a file, all of whose chunks are committed, in `quality.ingest_files`.
async fn commit_ledger(
    lake: &Lake,
    def: &SourceDef,
    f: &FileRef,
    hash: &str,
    rows: u64,
    run_id: &str,
) -> Result<()> {
    let entry = RecordBatch::try_new(
        tables::ingest_files(),
        vec![
            text(&def.name),
            text(&f.display),
            Arc::new(Int64Array::from(vec![f.size as i64])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![f.modified.timestamp_micros()])
                    .with_timezone("UTC"),
            ),
            text(hash),
            Arc::new(Int64Array::from(vec![rows as i64])),
            text(run_id),
            now_ts(1),
        ],
    )?;
    let app_id = format!("touchlake-ingest:{}:{}:{hash}:file", def.name, f.display);
    append(lake, "quality", "ingest_files", vec![entry], &app_id, false).await?;
    Ok(())
}

impl RunSummary {
    /// A run of `source` that has not read anything yet.
    pub fn new(source: &str) -> Self {
        RunSummary {
            run_id: new_run_id(),
            source: source.to_string(),
            status: "succeeded".into(),
            files_seen: 0,
            files_ingested: 0,
            rows_read: 0,
            rows_accepted: 0,
            rows_rejected: 0,
            rows_duplicate: 0,
            error: None,
            seconds: 0.0,
            identifiers_present: Default::default(),
            latest_occurred_us: None,
        }
    }

    /// Add a chunk's counts and statistics.
    fn add(&mut self, c: &ChunkCounts) {
        self.rows_read += c.read;
        self.rows_accepted += c.accepted;
        self.rows_rejected += c.rejected;
        self.rows_duplicate += c.duplicate;
        for (a, b) in self
            .identifiers_present
            .iter_mut()
            .zip(c.identifiers_present)
        {
            *a += b;
        }
        self.latest_occurred_us = self.latest_occurred_us.max(c.latest_occurred_us);
    }
}

/// Counts of one chunk; read = accepted + rejected + duplicate.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChunkCounts {
    /// Accepted rows with a value, per identifier column.
    pub identifiers_present: [u64; crate::checks::IDENTIFIERS.len()],
    /// Latest `occurred_at` accepted (µs).
    pub latest_occurred_us: Option<i64>,
    /// Records read.
    pub read: u64,
    /// Became touchpoints.
    pub accepted: u64,
    /// Quarantined.
    pub rejected: u64,
    /// Already present.
    pub duplicate: u64,
}

/// A chunk mapped, validated and split into valid and rejected records: what
/// [`commit_chunk`] writes. Nothing of it is in the lake yet.
struct Prepared {
    batch_id: String,
    map_ms: u128,
    read_count: u64,
    /// The records as landed, for `raw.<source>` (None: the chunk had no parsed records).
    raw_batch: Option<RecordBatch>,
    /// The mapped rows (None: no parsed records).
    mapped: Option<RecordBatch>,
    /// Valid rows as (record position, row of `mapped`).
    valid: Vec<(i64, usize)>,
    /// Rejected records as (location, raw record, reason).
    rejected: Vec<(String, String, String)>,
}

/// Map and validate one chunk; writes nothing. `batch_id` must be the same every time
/// the same records are ingested (it makes the commits idempotent).
async fn prepare_chunk(
    def: &SourceDef,
    mapping: &Mapping,
    ctx: &SessionContext,
    chunk: read::Chunk,
    batch_id: &str,
    run_id: &str,
) -> Result<Prepared> {
    let clock = std::time::Instant::now();
    let read_count = chunk.records() as u64;
    let mut landed = chunk.batch;
    if def.format.kind == "ndjson" {
        // JSON records name only the keys they have: a key no record of this chunk has
        // is a column of NULLs, not a mapping error.
        landed = with_missing_columns(landed, mapping)?;
    }
    let rows = landed.num_rows();

    // 1. Map and validate.
    let map_err = |e: datafusion::error::DataFusionError| IngestError::Mapping {
        name: def.name.clone(),
        message: e.to_string(),
    };
    let mapped = if rows == 0 {
        None
    } else {
        for t in ["src", "stage1", "stage2"] {
            ctx.deregister_table(t)?;
        }
        ctx.register_table("src", Arc::new(partitioned(&landed)?))?;
        let s1 = ctx
            .sql(&mapping.stage1_sql(&landed.schema()))
            .await
            .map_err(map_err)?;
        let s1_schema: Schema = s1.schema().as_arrow().clone();
        ctx.register_table("stage1", s1.into_view())?;
        let s2 = ctx
            .sql(&mapping.stage2_sql(&s1_schema))
            .await
            .map_err(map_err)?;
        ctx.register_table("stage2", s2.into_view())?;
        // Partition by partition, in order: the mapped rows keep the records' order.
        let out: Vec<RecordBatch> = ctx
            .sql(&mapping.stage3_sql())
            .await
            .map_err(map_err)?
            .collect_partitioned()
            .await
            .map_err(map_err)?
            .into_iter()
            .flatten()
            .collect();
        let schema = match out.first() {
            Some(b) => b.schema(),
            None => return Err(IngestError::Read("mapping produced no batches".into())),
        };
        Some(concat_batches(&schema, &out)?)
    };

    let map_ms = clock.elapsed().as_millis();
    // 2. Split rejected / valid.
    let mut rejected: Vec<(String, String, String)> = chunk
        .rejects
        .iter()
        .map(|r| (r.location.clone(), r.raw.clone(), r.reason.clone()))
        .collect();
    // Valid rows as (record position, row of `mapped`).
    let mut valid: Vec<(i64, usize)> = vec![];
    if let Some(m) = &mapped {
        let reason = text_of(m, REASON)?;
        let reason = reason.as_string::<i32>();
        let pos = cast(m.column_by_name(ROW).ok_or_else(missing)?, &DataType::Int64)?;
        let pos = pos.as_primitive::<Int64Type>();
        let mut bad = vec![];
        for i in 0..m.num_rows() {
            if reason.value(i).is_empty() {
                valid.push((pos.value(i), i));
            } else {
                bad.push(i);
            }
        }
        // Locations and raw records only for the rejected rows.
        if !bad.is_empty() {
            let (loc, raw) = (text_of(m, LOCATION)?, text_of(m, RAW)?);
            let (loc, raw) = (loc.as_string::<i32>(), raw.as_string::<i32>());
            for i in bad {
                rejected.push((
                    loc.value(i).to_string(),
                    raw.value(i).to_string(),
                    reason.value(i).to_string(),
                ));
            }
        }
    }

    let raw_batch = if rows > 0 {
        Some(raw_landing(&landed, &def.name, run_id)?)
    } else {
        None
    };
    Ok(Prepared {
        batch_id: batch_id.to_string(),
        map_ms,
        read_count,
        raw_batch,
        mapped,
        valid,
        rejected,
    })
}

/// Commit a prepared chunk: its records to `raw.<source>`, its rejects to
/// `quality.rejected`, and its valid rows not yet in `unified.touchpoints` to that table,
/// each in one commit carrying the chunk's batch id; drops the rows already there (or
/// earlier in this chunk).
async fn commit_chunk(
    lake: &Lake,
    def: &SourceDef,
    p: Prepared,
    run_id: &str,
) -> Result<ChunkCounts> {
    let clock = std::time::Instant::now();
    let Prepared {
        batch_id,
        map_ms,
        read_count,
        raw_batch,
        mapped,
        mut valid,
        rejected,
    } = p;
    let app_id = format!("touchlake-ingest:{batch_id}");
    // 3. Commit raw (concurrently with the touchpoints' commit below: delta-rs encodes
    //    each write on tasks of its own, so the two use both cores) and rejected, each
    //    once per batch id.
    let raw_commit = async {
        let r = match raw_batch {
            Some(b) => append(lake, "raw", def.raw_table(), vec![b], &app_id, true)
                .await
                .map(|_| ()),
            None => Ok(()),
        };
        (r, clock.elapsed().as_millis())
    };
    if !rejected.is_empty() {
        let n = rejected.len();
        let batch = RecordBatch::try_new(
            tables::rejected(),
            vec![
                Arc::new(StringArray::from(vec![run_id.to_string(); n])),
                Arc::new(StringArray::from(vec![def.name.clone(); n])),
                Arc::new(StringArray::from_iter_values(rejected.iter().map(|r| &r.0))),
                Arc::new(StringArray::from_iter_values(rejected.iter().map(|r| &r.1))),
                Arc::new(StringArray::from_iter_values(rejected.iter().map(|r| &r.2))),
                now_ts(n),
            ],
        )?;
        append(lake, "quality", "rejected", vec![batch], &app_id, false).await?;
    }

    // 4. Under the lock of the table's id set: drop the records already in (or earlier in
    //    this chunk), commit the rest.
    let touchpoints_commit = async {
        let mut accepted_count = 0u64;
        let mut stats = Default::default();
        if let (Some(m), false) = (&mapped, valid.is_empty()) {
            let (mut seen, loaded) = crate::dedup::lock(lake).await?;
            valid.sort_unstable();
            let ids = text_of(m, "touchpoint_id")?;
            let ids = ids.as_string::<i32>();
            let mut keep = vec![false; m.num_rows()];
            let mut new_ids =
                crate::dedup::IdSet::with_capacity_and_hasher(valid.len(), Default::default());
            for &(_, i) in &valid {
                keep[i] = match crate::dedup::id_key(ids.value(i)) {
                    Some(k) => !seen.contains(k) && new_ids.insert(k),
                    None => true,
                };
            }
            let b = filter_record_batch(m, &BooleanArray::from(keep))?;
            if b.num_rows() > 0 {
                accepted_count = b.num_rows() as u64;
                stats = crate::checks::batch_stats(&b)?;
                let b = conform(&b, &tables::touchpoints(), run_id)?;
                // The table as the id set's lock loaded it: not loaded a second time.
                let target = ("unified", "touchpoints");
                if let Some(t) = append_to(lake, target, loaded, vec![b], &app_id, false).await? {
                    seen.committed(&t, new_ids);
                }
            }
        }
        Ok::<_, IngestError>((accepted_count, stats, clock.elapsed().as_millis()))
    };
    let ((raw, raw_ms), touchpoints) = tokio::join!(raw_commit, touchpoints_commit);
    raw?;
    let (accepted_count, stats, touchpoints_ms) = touchpoints?;
    tracing::debug!(
        batch_id = %batch_id,
        records = read_count,
        map_ms,
        raw_ms,
        touchpoints_ms,
        "chunk ingested (map: milliseconds to map; raw, touchpoints: milliseconds since its commit started)"
    );
    let (identifiers_present, latest_occurred_us) = stats;
    Ok(ChunkCounts {
        identifiers_present,
        latest_occurred_us,
        read: read_count,
        accepted: accepted_count,
        rejected: rejected.len() as u64,
        duplicate: valid.len() as u64 - accepted_count,
    })
}

/// The landed chunk as a table of one partition per core, so that the mapping (phone and
/// time parsing above all) runs on every core.
fn partitioned(landed: &RecordBatch) -> Result<MemTable> {
    let parts = std::thread::available_parallelism().map_or(1, usize::from);
    let n = landed.num_rows();
    let per = n.div_ceil(parts).max(1);
    let slices = (0..n)
        .step_by(per)
        .map(|start| vec![landed.slice(start, per.min(n - start))])
        .collect();
    Ok(MemTable::try_new(landed.schema(), slices)?)
}

fn with_missing_columns(batch: RecordBatch, mapping: &Mapping) -> Result<RecordBatch> {
    let schema = batch.schema();
    let absent: Vec<&String> = mapping
        .referenced()
        .filter(|c| schema.field_with_name(c).is_err())
        .collect();
    if absent.is_empty() {
        return Ok(batch);
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns = batch.columns().to_vec();
    for c in absent {
        fields.push(Field::new(c, DataType::Utf8, true));
        columns.push(new_null_array(&DataType::Utf8, batch.num_rows()));
    }
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Column `name` of the mapped rows, as text.
fn text_of(m: &RecordBatch, name: &str) -> Result<ArrayRef> {
    Ok(cast(
        m.column_by_name(name).ok_or_else(missing)?,
        &DataType::Utf8,
    )?)
}

fn missing() -> IngestError {
    IngestError::Read("mapping lost a lineage column".into())
}

/// The landed chunk as stored in `raw.<table>`: the source's columns plus `_source`,
/// `_run_id`, `_ingested_at`, `_location`.
fn raw_landing(landed: &RecordBatch, source: &str, run_id: &str) -> Result<RecordBatch> {
    let n = landed.num_rows();
    let mut fields = vec![];
    let mut arrays: Vec<ArrayRef> = vec![];
    for (f, a) in landed.schema().fields().iter().zip(landed.columns()) {
        if f.name() == RAW || f.name() == ROW || f.name() == LOCATION {
            continue;
        }
        fields.push(f.as_ref().clone().with_nullable(true));
        arrays.push(a.clone());
    }
    fields.push(Field::new("_source", DataType::Utf8, true));
    arrays.push(Arc::new(StringArray::from(vec![source.to_string(); n])));
    fields.push(Field::new("_run_id", DataType::Utf8, true));
    arrays.push(Arc::new(StringArray::from(vec![run_id.to_string(); n])));
    fields.push(Field::new("_ingested_at", utc(), true));
    arrays.push(now_ts(n));
    fields.push(Field::new(LOCATION, DataType::Utf8, true));
    arrays.push(
        landed
            .column_by_name(LOCATION)
            .cloned()
            .ok_or_else(missing)?,
    );
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// Shape `batch` as `schema`: the columns by name, cast to the schema's types; a column
/// `batch` lacks is NULL.
pub fn conform_to(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let mut arrays = vec![];
    for f in schema.fields() {
        arrays.push(match batch.column_by_name(f.name()) {
            Some(a) => cast(a, f.data_type())?,
            None => new_null_array(f.data_type(), n),
        });
    }
    Ok(RecordBatch::try_new(schema.clone(), arrays)?)
}

/// Shape `batch` as `schema` (same names, exact types), filling `run_id` and `ingested_at`.
fn conform(batch: &RecordBatch, schema: &SchemaRef, run_id: &str) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let mut arrays = vec![];
    for f in schema.fields() {
        let a: ArrayRef = match f.name().as_str() {
            "run_id" => Arc::new(StringArray::from(vec![run_id.to_string(); n])),
            "ingested_at" => now_ts(n),
            name => match batch.column_by_name(name) {
                Some(a) => cast(a, f.data_type())?,
                None => new_null_array(f.data_type(), n),
            },
        };
        arrays.push(a);
    }
    Ok(RecordBatch::try_new(schema.clone(), arrays)?)
}

/// Append to `schema.table` in one commit carrying the application transaction `app_id`,
/// unless the table already holds that transaction (then `None`; else the table as
/// written). Creates the table if it is missing
/// (raw landing tables); `merge_schema` lets new source columns in.
pub async fn append(
    lake: &Lake,
    schema: &str,
    table: &str,
    batches: Vec<RecordBatch>,
    app_id: &str,
    merge_schema: bool,
) -> Result<Option<deltalake::DeltaTable>> {
    // Ask the lake first: loading a missing table makes delta-kernel log an error.
    lake.invalidate(schema, table).await;
    let loaded = lake.table(schema, table).await?.map(|(t, _)| t);
    append_to(lake, (schema, table), loaded, batches, app_id, merge_schema).await
}

/// [`append`] to the table as the caller just loaded it (`None`: missing).
async fn append_to(
    lake: &Lake,
    (schema, table): (&str, &str),
    loaded: Option<deltalake::DeltaTable>,
    batches: Vec<RecordBatch>,
    app_id: &str,
    merge_schema: bool,
) -> Result<Option<deltalake::DeltaTable>> {
    let t = if let Some(t) = loaded {
        let snapshot = t.snapshot()?;
        if snapshot
            .transaction_version(t.log_store().as_ref(), app_id)
            .await?
            .is_some()
        {
            return Ok(None);
        }
        t
    } else {
        // No table yet (a source's first raw landing): this write creates it.
        lake.table_builder(schema, table)?.build()?
    };
    let props =
        CommitProperties::default().with_application_transaction(Transaction::new(app_id, 1));
    let mut write = t
        .write(batches)
        .with_writer_properties(crate::tables::writer_properties(schema, table))
        .with_save_mode(SaveMode::Append)
        .with_commit_properties(props);
    if merge_schema {
        write = write.with_schema_mode(SchemaMode::Merge);
    }
    let t = write.await?;
    lake.invalidate(schema, table).await;
    Ok(Some(t))
}

/// Append the run's row to `quality.ingest_runs`.
async fn record_run(
    lake: &Lake,
    s: &RunSummary,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
) -> Result<()> {
    let batch = RecordBatch::try_new(
        tables::ingest_runs(),
        vec![
            text(&s.run_id),
            text(&s.source),
            Arc::new(
                TimestampMicrosecondArray::from(vec![started.timestamp_micros()])
                    .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from(vec![finished.timestamp_micros()])
                    .with_timezone("UTC"),
            ),
            text(&s.status),
            Arc::new(Int64Array::from(vec![s.rows_read as i64])),
            Arc::new(Int64Array::from(vec![s.rows_accepted as i64])),
            Arc::new(Int64Array::from(vec![s.rows_rejected as i64])),
            Arc::new(Int64Array::from(vec![s.rows_duplicate as i64])),
            Arc::new(StringArray::from(vec![s.error.clone()])),
        ],
    )?;
    append(
        lake,
        "quality",
        "ingest_runs",
        vec![batch],
        &format!("touchlake-run:{}:{}", s.source, s.run_id),
        false,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POS: &str = r#"
name = "pos"
kind = "files"
channel = "store_pos"
channel_type = "offline"
path = "landing/pos/*.csv"
natural_key = ["order_id"]
currency = "CNY"
[format]
timezone = "Asia/Shanghai"
[mapping]
occurred_at = "paid_at"
event_type = "CASE status WHEN 'paid' THEN 'purchase' WHEN 'refund' THEN 'refund' END"
phone = "phone_e164(mobile, 'CN')"
revenue = "replace(amount, ',', '')::decimal(18,2)"
store_id = "store"
[[rules]]
column = "revenue"
min = -100000.0
max = 100000.0
"#;

    #[tokio::test]
    async fn messy_csv_is_counted_quarantined_and_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(
            dir.path().to_str().unwrap(),
            &Default::default(),
            std::time::Duration::from_millis(0),
        )
        .await
        .unwrap();
        let landing = dir.path().join("landing/pos");
        std::fs::create_dir_all(&landing).unwrap();
        std::fs::write(
            landing.join("a.csv"),
            "order_id,paid_at,status,mobile,amount,store\n\
             1,2024-03-01 10:00:00,paid,138 0013 8000,\"1,234.50\",S1\n\
             2,2024/03/01 11:00,paid,+86 138-0013-8001,12.00,S1\n\
             3,not a time,paid,13800138002,1.00,S2\n\
             4,2024-03-01 12:00:00,paid,13800138003,12x,S2\n\
             5,2024-03-01 12:00:00,lost,13800138004,1.00\n\
             1,2024-03-01 10:00:00,paid,138 0013 8000,\"1,234.50\",S1\n\
             6,2024-03-01 13:00:00,refund,,-5.00,S3\n\
             7,2024-03-01 13:00:00,paid,,999999.00,S3\n",
        )
        .unwrap();
        let def = SourceDef::from_toml(POS).unwrap();
        let s = run_source(&lake, &def, &|_| {}).await.unwrap();
        assert_eq!(s.rows_read, 8, "{s:?}");
        assert_eq!(s.rows_accepted, 3, "{s:?}");
        assert_eq!(s.rows_rejected, 4, "{s:?}");
        assert_eq!(s.rows_duplicate, 1, "{s:?}");
        let again = run_source(&lake, &def, &|_| {}).await.unwrap();
        assert_eq!(
            again.rows_read, 0,
            "the same file is not read twice: {again:?}"
        );

        let ctx = mapping_context().unwrap();
        let (_, tp) = lake.table("unified", "touchpoints").await.unwrap().unwrap();
        ctx.register_table("tp", tp).unwrap();
        let rows = ctx
            .sql("SELECT string_agg(concat_ws('|', store_id, phone, CAST(revenue AS VARCHAR), CAST(occurred_at AS VARCHAR), event_type), ',' ORDER BY store_id, revenue) FROM tp")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap()
            .to_string();
        assert!(
            text.contains("S1|+8613800138000|1234.50|2024-03-01T02:00:00Z|purchase"),
            "{text}"
        );
        assert!(
            text.contains("S3|-5.00|2024-03-01T05:00:00Z|refund"),
            "{text}"
        );
        let (_, rej) = lake.table("quality", "rejected").await.unwrap().unwrap();
        ctx.register_table("rej", rej).unwrap();
        let rows = ctx
            .sql("SELECT string_agg(location || ' ' || reason, '\n' ORDER BY location) FROM rej")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = datafusion::arrow::util::pretty::pretty_format_batches(&rows)
            .unwrap()
            .to_string();
        assert!(
            text.contains("landing/pos/a.csv:4 occurred_at: cannot parse 'not a time'"),
            "{text}"
        );
        assert!(
            text.contains("landing/pos/a.csv:5 revenue: cannot parse '12x'"),
            "{text}"
        );
        assert!(
            text.contains("landing/pos/a.csv:6 expected 6 fields, found 5"),
            "{text}"
        );
        assert!(
            text.contains("landing/pos/a.csv:9 revenue: out of range"),
            "{text}"
        );
    }
}
