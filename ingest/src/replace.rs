//! Replacing a table's rows by key with Delta deletion vectors.
//!
//! An incremental identity run changes the rows of a few thousand persons spread over
//! every file of `unified.identities` and `unified.persons`. A `replace_where` rewrites
//! each file holding one of them: the whole table. Here the replaced rows are marked
//! deleted in a deletion vector per file (a Roaring bitmap of row positions, Delta's
//! `deletionVectors` feature) and the new rows appended, in one commit: the write is the
//! size of the change, not of the table. Readers (DataFusion's Delta scan, Spark,
//! DuckDB, Python deltalake) skip the deleted positions; `OPTIMIZE` rewrites a file
//! without them; `VACUUM` keeps the vectors that live files use.
//!
//! The deletion vector file format (Delta protocol, "Deletion Vector Format"): a version
//! byte `1`, then per vector its size (big-endian u32, magic included), the magic
//! `1681511377` (little-endian u32), the 64-bit Roaring bitmap in its portable form, and
//! a CRC-32 of magic and bitmap (big-endian u32). A descriptor names the file by its
//! UUID in Z85 and the vector by its offset (of the size field).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, DeletionVectorDescriptor, StorageType};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use object_store::ObjectStoreExt;
use roaring::RoaringTreemap;
use rustc_hash::FxHashSet;

use crate::error::{IngestError, Result};
use crate::files::DataFiles;

/// The table property that lets writers add deletion vectors (and, set on a table,
/// raises its protocol to reader 3 / writer 7 with the `deletionVectors` feature).
const ENABLE: &str = "delta.enableDeletionVectors";
/// The magic number that starts a serialized deletion vector.
const MAGIC: u32 = 1681511377;

/// Rows of a table whose `column` is one of `keys` are replaced by `batches`: the old
/// ones marked deleted by deletion vectors, the new ones appended, in one commit with
/// `props`. Returns the table's new version. The table must exist.
pub async fn replace_rows(
    ctx: &SessionContext,
    table: DeltaTable,
    column: &str,
    keys: &HashSet<String>,
    batches: Vec<RecordBatch>,
    props: CommitProperties,
    writer: WriterProperties,
) -> Result<i64> {
    let table = enable_deletion_vectors(table).await?;
    let files = DataFiles::of(ctx, &table).await?;
    let keys: Arc<FxHashSet<String>> = Arc::new(keys.iter().cloned().collect());
    let key_count = keys.len();
    let found: Vec<(usize, Vec<u64>)> = files
        .choose(
            &[column],
            move |b| {
                let a = cast(b.column(0), &DataType::Utf8View)?;
                let a = a.as_string_view();
                Ok((0..a.len() as u32)
                    .filter(|&i| a.is_valid(i as usize) && keys.contains(a.value(i as usize)))
                    .collect())
            },
            &[],
        )
        .await?
        .into_iter()
        .map(|c| (c.file, c.positions))
        .collect();
    let predicate = format!("{column} IN ({key_count} keys)");
    replace_at(&files, found, batches, props, writer, &predicate).await
}

/// The rows at `found` (file index in `files`, row positions) are replaced by `batches`,
/// in one commit with `props` on the version of `files` (described by `predicate` in
/// the log). Returns the table's new version. The table must have deletion vectors
/// enabled ([`enable_deletion_vectors`]) at that version.
pub async fn replace_at(
    files: &DataFiles,
    found: Vec<(usize, Vec<u64>)>,
    batches: Vec<RecordBatch>,
    props: CommitProperties,
    writer: WriterProperties,
    predicate: &str,
) -> Result<i64> {
    let table = files.table();
    let snapshot = table.snapshot()?.clone();
    // One deletion vector file for the commit, a vector per touched file.
    let mut actions = Vec::new();
    let mut dv_file = Vec::new();
    let uuid = uuid::Uuid::new_v4();
    let now = chrono::Utc::now().timestamp_millis();
    for (file, positions) in found {
        let f = files.view(file);
        let path = f.path().to_string();
        let mut bitmap: RoaringTreemap = positions.into_iter().collect();
        bitmap.extend(files.deleted(file));
        let mut remove = f.remove_action(true);
        remove.deletion_timestamp = Some(now);
        actions.push(Action::Remove(remove));
        if f.num_records().is_some_and(|n| bitmap.len() >= n as u64) {
            continue; // every row of the file is gone: the remove is enough
        }
        actions.push(Action::Add(Add {
            path,
            partition_values: f.partition_values_map(),
            size: f.size(),
            modification_time: f.modification_time(),
            data_change: true,
            stats: f.stats(),
            deletion_vector: Some(write_vector(&mut dv_file, &bitmap, &uuid)?),
            ..Default::default()
        }));
    }
    if !dv_file.is_empty() {
        let name = format!("deletion_vector_{uuid}.bin");
        files
            .store()
            .put(&object_store::path::Path::from(name), dv_file.into())
            .await?;
    }

    // The new rows.
    let mut writer = RecordBatchWriter::for_table(table)?.with_writer_properties(writer);
    for b in batches {
        if b.num_rows() > 0 {
            writer.write(b).await?;
        }
    }
    actions.extend(writer.flush().await?.into_iter().map(Action::Add));

    let operation = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: None,
        predicate: Some(predicate.to_string()),
    };
    let commit = CommitBuilder::from(props)
        .with_actions(actions)
        .build(Some(&snapshot), table.log_store(), operation)
        .await?;
    Ok(commit.version() as i64)
}

/// `table` with deletion vectors enabled (one commit the first time).
pub async fn enable_deletion_vectors(table: DeltaTable) -> Result<DeltaTable> {
    let enabled = table
        .snapshot()?
        .metadata()
        .configuration()
        .get(ENABLE)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    if enabled {
        return Ok(table);
    }
    Ok(table
        .set_tbl_properties()
        .with_properties(HashMap::from([(ENABLE.to_string(), "true".to_string())]))
        .await?)
}

/// Append `bitmap` to the deletion vector file being built in `file` (named by `uuid`)
/// and describe it.
fn write_vector(
    file: &mut Vec<u8>,
    bitmap: &RoaringTreemap,
    uuid: &uuid::Uuid,
) -> Result<DeletionVectorDescriptor> {
    if file.is_empty() {
        file.push(1); // format version
    }
    let mut data = MAGIC.to_le_bytes().to_vec();
    bitmap
        .serialize_into(&mut data)
        .map_err(|e| IngestError::Read(format!("deletion vector: {e}")))?;
    let too_big = || IngestError::Read("deletion vector larger than 2 GiB".into());
    let size = i32::try_from(data.len()).map_err(|_| too_big())?;
    let offset = i32::try_from(file.len()).map_err(|_| too_big())?;
    file.extend_from_slice(&(size as u32).to_be_bytes());
    file.extend_from_slice(&data);
    file.extend_from_slice(&crc32fast::hash(&data).to_be_bytes());
    Ok(DeletionVectorDescriptor {
        storage_type: StorageType::UuidRelativePath,
        path_or_inline_dv: z85::encode(uuid.as_bytes()),
        offset: Some(offset),
        size_in_bytes: size,
        cardinality: bitmap.len() as i64,
    })
}
