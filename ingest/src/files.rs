//! Reading a few rows of a big Delta table straight from its Parquet files.
//!
//! An incremental identity run looks up a few thousand identifiers among millions. Through
//! SQL that is a join or a semi-join over the whole table, decoding every column of every
//! row (DataFusion cannot push a filter into the Parquet reader of a table with deletion
//! vectors). Here each file is read in two steps: the columns that choose the rows, for
//! every row (the chosen rows its deletion vector removes are dropped); then the other
//! columns only at the chosen positions. The positions
//! are returned too, so that a writer can mark exactly those rows deleted.
//!
//! A long-running process can instead choose by per-row hashes of the choosing columns
//! ([`DataFiles::row_hashes`]), which it computes once per data file and keeps, and then
//! read the chosen rows ([`DataFiles::read_at`]).

mod hashes;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use datafusion::arrow::array::{RecordBatch, RecordBatchOptions, RecordBatchReader};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::Schema;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::LogicalFileView;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ParquetRecordBatchReader, RowSelection,
};
use deltalake::parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use deltalake::parquet::errors::ParquetError;
use deltalake::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;

use crate::error::{IngestError, Result};
pub use hashes::{kept_bytes as hashes_kept_bytes, row_hash};

/// The data files of one version of a table, with the rows their deletion vectors remove.
pub struct DataFiles {
    table: DeltaTable,
    store: Arc<dyn object_store::ObjectStore>,
    views: Vec<LogicalFileView>,
    /// Per file: its path, and the rows kept (`true`) if it has a deletion vector.
    files: Vec<(Path, Option<Arc<Vec<bool>>>)>,
    /// The files' footers, once read.
    footers: tokio::sync::OnceCell<Vec<ArrowReaderMetadata>>,
}

/// The rows chosen in one data file: their positions in the file and the columns asked.
pub struct Chosen {
    /// The file's index in [`DataFiles`].
    pub file: usize,
    /// Row positions in the file (0-based, physical), ascending.
    pub positions: Vec<u64>,
    /// The asked columns at those positions, by name.
    pub batch: RecordBatch,
}

/// A row group's hashes of some columns ([`DataFiles::row_hashes`]).
pub struct GroupHashes {
    /// The file's index in [`DataFiles`].
    pub file: usize,
    /// The position of the group's first row in the file.
    pub start: u64,
    /// [`row_hash`] of each row of the group, deleted rows included.
    pub hashes: Arc<Vec<u64>>,
    keep: Option<Arc<Vec<bool>>>,
}

impl GroupHashes {
    /// Whether the group's row `row` is live (not removed by the file's deletion vector).
    pub fn live(&self, row: usize) -> bool {
        live(&self.keep, self.start as usize + row)
    }
}

/// Whether row `at` of a file is live, given the rows its deletion vector keeps (if any).
fn live(keep: &Option<Arc<Vec<bool>>>, at: usize) -> bool {
    keep.as_ref()
        .is_none_or(|m| m.get(at).copied().unwrap_or(true))
}

impl DataFiles {
    /// The live data files of `table` as loaded.
    pub async fn of(ctx: &SessionContext, table: &DeltaTable) -> Result<Self> {
        let snapshot = table.snapshot()?;
        let views: Vec<_> = snapshot.log_data().into_iter().collect();
        let mut keep: HashMap<String, Arc<Vec<bool>>> = HashMap::new();
        if views
            .iter()
            .any(|f| f.deletion_vector_descriptor().is_some())
        {
            let scan = table.table_provider().build().await?;
            for s in scan.deletion_vectors(&ctx.state()).await? {
                keep.insert(s.filepath, Arc::new(s.keep_mask));
            }
        }
        // A file with a vector whose rows were not found would read deleted rows as live
        // (and a new vector written for it would bring them back): an error instead.
        let files = views
            .iter()
            .map(|f| {
                let path = f.object_store_path();
                let mask = match f.deletion_vector_descriptor() {
                    None => None,
                    Some(_) => Some(
                        keep.iter()
                            .find(|(uri, _)| uri.ends_with(path.as_ref()))
                            .map(|(_, m)| m.clone())
                            .ok_or_else(|| {
                                IngestError::Read(format!(
                                    "the deletion vector of {path} could not be read"
                                ))
                            })?,
                    ),
                };
                Ok((path, mask))
            })
            .collect::<Result<_>>()?;
        Ok(DataFiles {
            table: table.clone(),
            store: table.object_store(),
            views,
            files,
            footers: Default::default(),
        })
    }

    /// The table, at the version whose files these are.
    pub fn table(&self) -> &DeltaTable {
        &self.table
    }

    /// The store the files are in (the table's root).
    pub fn store(&self) -> Arc<dyn object_store::ObjectStore> {
        self.store.clone()
    }

    /// File `i` as the log describes it.
    pub fn view(&self, i: usize) -> &LogicalFileView {
        &self.views[i]
    }

    /// The positions of the rows file `i`'s deletion vector removes (none without one).
    pub fn deleted(&self, i: usize) -> impl Iterator<Item = u64> + '_ {
        self.files[i]
            .1
            .iter()
            .flat_map(|k| (0u64..).zip(k.iter()).filter(|(_, keep)| !**keep))
            .map(|(i, _)| i)
    }

    /// Every file's footer (read once, for all the passes over the files).
    async fn read_footers(&self) -> Result<Vec<ArrowReaderMetadata>> {
        let store = self.store.clone();
        let files: Vec<(Path, u64)> = self
            .files
            .iter()
            .zip(&self.views)
            .map(|((path, _), v)| (path.clone(), v.size() as u64))
            .collect();
        futures::stream::iter(files)
            .map(move |(path, size)| {
                let store = store.clone();
                async move {
                    let mut reader = ObjectFile {
                        store,
                        path: path.clone(),
                        size,
                    };
                    ArrowReaderMetadata::load_async(&mut reader, Default::default())
                        .await
                        .map_err(|e| IngestError::Read(format!("{path}: {e}")))
                }
            })
            .buffered(2)
            .try_collect()
            .await
    }

    /// Every row group of every file, in order, with its file's index.
    async fn groups(&self) -> Result<Vec<(usize, Group)>> {
        let opened = self.footers.get_or_try_init(|| self.read_footers()).await?;
        let mut groups = vec![];
        for (i, meta) in opened.iter().enumerate() {
            let mut start = 0usize;
            for (g, rg) in meta.metadata().row_groups().iter().enumerate() {
                let group = Group {
                    store: self.store.clone(),
                    path: self.files[i].0.clone(),
                    size: self.views[i].size() as u64,
                    meta: meta.clone(),
                    index: g,
                    start,
                    rows: rg.num_rows() as usize,
                    keep: self.files[i].1.clone(),
                };
                start += group.rows;
                groups.push((i, group));
            }
        }
        Ok(groups)
    }

    /// For every row group of every file, in order, [`row_hash`] of each row's values of
    /// `columns` (in that order), deleted rows included. A group's hashes are computed
    /// once per process and kept (see the `hashes` module): a second call reads nothing
    /// but the files added since.
    pub async fn row_hashes(&self, columns: &[&str]) -> Result<Vec<GroupHashes>> {
        self.row_hashes_or_stop(columns, Arc::new(AtomicBool::new(false)))
            .await
    }

    /// [`DataFiles::row_hashes`], given up with an error within a batch of rows once
    /// `stop` is set (the groups hashed by then are kept).
    pub async fn row_hashes_or_stop(
        &self,
        columns: &[&str],
        stop: Arc<AtomicBool>,
    ) -> Result<Vec<GroupHashes>> {
        let table = self.table.table_url().to_string();
        let live: HashSet<String> = self.files.iter().map(|(p, _)| p.to_string()).collect();
        hashes::retain(&table, &live);
        let names: Arc<Vec<String>> = Arc::new(columns.iter().map(|s| s.to_string()).collect());
        let jobs = self.groups().await?;
        futures::stream::iter(jobs)
            .map(move |(file, g)| {
                let (table, names, stop) = (table.clone(), names.clone(), stop.clone());
                async move {
                    let key = hashes::Key {
                        table,
                        file: g.path.to_string(),
                        group: g.index,
                        columns: names.join(","),
                    };
                    let hashes = match hashes::get(&key) {
                        Some(h) => h,
                        None => {
                            let h = Arc::new(g.hashes(names, stop).await?);
                            hashes::put(key, h.clone());
                            h
                        }
                    };
                    Ok::<_, IngestError>(GroupHashes {
                        file,
                        start: g.start as u64,
                        hashes,
                        keep: g.keep,
                    })
                }
            })
            .buffered(2)
            .try_collect()
            .await
    }

    /// The columns `read` at `at` (file index, ascending row positions in the file, as
    /// [`Chosen::positions`]), by file; files without positions are left out. The row
    /// groups are read two at a time, each only where it holds chosen rows.
    pub async fn read_at(&self, at: Vec<(usize, Vec<u64>)>, read: &[&str]) -> Result<Vec<Chosen>> {
        let read: Arc<Vec<String>> = Arc::new(read.iter().map(|s| s.to_string()).collect());
        let groups = self.groups().await?;
        let mut jobs = vec![];
        for (file, positions) in at {
            for (_, g) in groups.iter().filter(|(i, _)| *i == file) {
                // Positions are ascending: the group's are one run of them.
                let (lo, hi) = (g.start as u64, (g.start + g.rows) as u64);
                let (from, to) = (
                    positions.partition_point(|&p| p < lo),
                    positions.partition_point(|&p| p < hi),
                );
                let inside: Vec<u64> = positions[from..to].iter().map(|p| p - lo).collect();
                if !inside.is_empty() {
                    jobs.push((file, g.clone(), inside));
                }
            }
        }
        let parts: Vec<(usize, Option<Part>)> = futures::stream::iter(jobs)
            .map(move |(file, g, inside)| {
                let read = read.clone();
                async move {
                    let batch = g.read_rows(&inside, read).await?;
                    let start = g.start as u64;
                    let positions = inside.into_iter().map(|p| p + start).collect();
                    Ok::<_, IngestError>((file, Some((positions, batch))))
                }
            })
            .buffered(2)
            .try_collect()
            .await?;
        by_file(parts)
    }

    /// Live rows chosen by `choose` (given `by`, the columns it reads, of a batch of
    /// rows, deleted ones included; it returns the indexes of the rows it takes,
    /// ascending) with the columns `read` (none: only the positions), by file. The row
    /// groups of all files are read two at a time. Files with no chosen row are left out.
    pub async fn choose<F>(&self, by: &[&str], choose: F, read: &[&str]) -> Result<Vec<Chosen>>
    where
        F: Fn(&RecordBatch) -> Result<Vec<u32>> + Send + Sync + 'static,
    {
        let choose: Chooser = Arc::new(choose);
        let by: Arc<Vec<String>> = Arc::new(by.iter().map(|s| s.to_string()).collect());
        let read: Arc<Vec<String>> = Arc::new(read.iter().map(|s| s.to_string()).collect());
        // Each file's footer, then one job per row group. Only the column chunks a
        // step reads are fetched.
        let jobs = self.groups().await?;
        let parts: Vec<(usize, Option<Part>)> = futures::stream::iter(jobs)
            .map(move |(i, group)| {
                let (choose, by, read) = (choose.clone(), by.clone(), read.clone());
                async move {
                    let part = choose_in_group(group, by, choose, read).await?;
                    Ok::<_, IngestError>((i, part))
                }
            })
            .buffered(2)
            .try_collect()
            .await?;
        by_file(parts)
    }
}

/// The parts of each file (in row group order) as one.
fn by_file(parts: Vec<(usize, Option<Part>)>) -> Result<Vec<Chosen>> {
    let mut out: Vec<Chosen> = vec![];
    for (i, part) in parts {
        let Some((positions, batch)) = part else {
            continue;
        };
        match out.last_mut() {
            Some(c) if c.file == i => {
                c.positions.extend(positions);
                c.batch = concat_batches(&batch.schema(), [&c.batch, &batch])?;
            }
            _ => out.push(Chosen {
                file: i,
                positions,
                batch,
            }),
        }
    }
    Ok(out)
}

/// What picks the rows of a batch (indexes into it, ascending).
type Chooser = Arc<dyn Fn(&RecordBatch) -> Result<Vec<u32>> + Send + Sync>;

/// The rows chosen in a row group: positions in the file and the columns read.
type Part = (Vec<u64>, RecordBatch);

/// One row group of a data file.
#[derive(Clone)]
struct Group {
    store: Arc<dyn object_store::ObjectStore>,
    path: Path,
    size: u64,
    meta: ArrowReaderMetadata,
    index: usize,
    /// The position of its first row in the file.
    start: usize,
    rows: usize,
    /// The file's rows kept by its deletion vector, if it has one.
    keep: Option<Arc<Vec<bool>>>,
}

impl Group {
    /// A reader of `columns` at `rows` of the group: the chunks fetched here, the
    /// decoding left to the caller (on a blocking thread).
    async fn reader(
        &self,
        columns: &[String],
        rows: RowSelection,
    ) -> Result<ParquetRecordBatchReader> {
        let bad = |e: &dyn std::fmt::Display| IngestError::Read(format!("{}: {e}", self.path));
        let input = ObjectFile {
            store: self.store.clone(),
            path: self.path.clone(),
            size: self.size,
        };
        let builder = ParquetRecordBatchStreamBuilder::new_with_metadata(input, self.meta.clone());
        let mask =
            ProjectionMask::columns(builder.parquet_schema(), columns.iter().map(String::as_str));
        let mut stream = builder
            .with_projection(mask)
            .with_row_groups(vec![self.index])
            .with_batch_size(65536)
            .with_row_selection(rows)
            .build()
            .map_err(|e| bad(&e))?;
        stream
            .next_row_group()
            .await
            .map_err(|e| bad(&e))?
            .ok_or_else(|| bad(&"row group missing"))
    }

    /// The columns `read` at `positions` (ascending, in the group); with no columns, as
    /// many rows without any.
    async fn read_rows(&self, positions: &[u64], read: Arc<Vec<String>>) -> Result<RecordBatch> {
        if read.is_empty() {
            let options = RecordBatchOptions::new().with_row_count(Some(positions.len()));
            return Ok(RecordBatch::try_new_with_options(
                Arc::new(Schema::empty()),
                vec![],
                &options,
            )?);
        }
        let reader = self.reader(&read, selection(positions, self.rows)).await?;
        blocking(move || {
            let schema = reader.schema();
            let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(concat_batches(&schema, &batches)?)
        })
        .await
    }

    /// [`row_hash`] of each row's values of `columns`, in that order.
    async fn hashes(&self, columns: Arc<Vec<String>>, stop: Arc<AtomicBool>) -> Result<Vec<u64>> {
        let all = RowSelection::from_consecutive_ranges(std::iter::once(0..self.rows), self.rows);
        let reader = self.reader(&columns, all).await?;
        let rows = self.rows;
        blocking(move || {
            let mut out = Vec::with_capacity(rows);
            for batch in reader {
                if stop.load(Ordering::Relaxed) {
                    return Err(IngestError::Read("hashing rows stopped".into()));
                }
                let batch = batch?;
                // The reader gives the columns in the file's order.
                let order = columns
                    .iter()
                    .map(|c| batch.schema().index_of(c))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                out.extend(hashes::batch_hashes(&batch.project(&order)?)?);
            }
            Ok(out)
        })
        .await
    }
}

/// [`DataFiles::choose`] in one row group: positions are in the file.
async fn choose_in_group(
    g: Group,
    by: Arc<Vec<String>>,
    choose: Chooser,
    read: Arc<Vec<String>>,
) -> Result<Option<Part>> {
    // Every row of the group is read and tested, and the rows the deletion vector removes
    // are dropped from the chosen ones: selecting the live rows instead cost a skip and a
    // read per run of live rows, tens of thousands per row group once increments had
    // replaced rows all over the table.
    let all = RowSelection::from_consecutive_ranges(std::iter::once(0..g.rows), g.rows);
    let reader = g.reader(&by, all).await?;
    let (keep, start) = (g.keep.clone(), g.start);
    let positions = blocking(move || {
        let (mut positions, mut seen) = (Vec::new(), 0usize);
        for batch in reader {
            let batch = batch?;
            for k in choose(&batch)? {
                let at = seen + k as usize;
                if live(&keep, start + at) {
                    positions.push(at as u64);
                }
            }
            seen += batch.num_rows();
        }
        Ok(positions)
    })
    .await?;
    if positions.is_empty() {
        return Ok(None);
    }
    let batch = g.read_rows(&positions, read).await?;
    let start = g.start as u64;
    Ok(Some((
        positions.into_iter().map(|p| p + start).collect(),
        batch,
    )))
}

/// A Parquet file in an object store, read by ranges. (parquet 59 deprecates its own
/// `ParquetObjectReader` in favour of implementing `AsyncFileReader` like this.)
struct ObjectFile {
    store: Arc<dyn object_store::ObjectStore>,
    path: Path,
    size: u64,
}

impl AsyncFileReader for ObjectFile {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, deltalake::parquet::errors::Result<bytes::Bytes>> {
        Box::pin(async move {
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        })
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, deltalake::parquet::errors::Result<Vec<bytes::Bytes>>> {
        Box::pin(async move {
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(|e| ParquetError::External(Box::new(e)))
        })
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a deltalake::parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> BoxFuture<'a, deltalake::parquet::errors::Result<Arc<ParquetMetaData>>> {
        Box::pin(async move {
            let size = self.size;
            let meta = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(64 * 1024))
                .load_and_finish(self, size)
                .await?;
            Ok(Arc::new(meta))
        })
    }
}

/// `f` on a blocking thread.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| IngestError::Read(format!("reading a data file: {e}")))?
}

/// The rows at `positions` (ascending) of a file of `total` rows, as a selection.
fn selection(positions: &[u64], total: usize) -> RowSelection {
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < positions.len() {
        let start = positions[i] as usize;
        let mut end = start + 1;
        while i + 1 < positions.len() && positions[i + 1] as usize == end {
            i += 1;
            end += 1;
        }
        ranges.push(start..end);
        i += 1;
    }
    RowSelection::from_consecutive_ranges(ranges.into_iter(), total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_joins_consecutive_positions() {
        let s = selection(&[0, 1, 2, 5, 7, 8], 10);
        let ranges: Vec<(bool, usize)> = s.iter().map(|r| (r.skip, r.row_count)).collect();
        assert_eq!(
            ranges,
            vec![
                (false, 3),
                (true, 2),
                (false, 1),
                (true, 1),
                (false, 2),
                (true, 1)
            ]
        );
    }
}
