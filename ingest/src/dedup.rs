//! Which touchpoints `unified.touchpoints` already holds, for dropping duplicates at ingest.
//!
//! A `touchpoint_id` is the first 128 bits (32 hex digits) of a hash of (source, natural
//! key), so the set of ids of the whole table answers "is this record already in?" for
//! every source. The set is kept in memory per table and brought up to date from the Delta
//! log before each use: the data files added since it was last read are read (only their
//! `touchpoint_id` column). Files removed by a commit that keeps the ids (an identity
//! run, which only sets `person_id`, or a rearrangement such as OPTIMIZE whose removes
//! say `dataChange: false`) are followed through the log: their replacements are known
//! without reading them. If another commit removed a file it had read (DELETE, UPDATE,
//! an overwrite), it is built again from all files. A chunk's check and its
//! commit happen under the set's lock, so two runs in one process never both admit the
//! same new touchpoint. Memory: about 32 bytes per touchpoint.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::DataType;
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::parquet::arrow::ProjectionMask;
use deltalake::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use object_store::ObjectStoreExt;
use tokio::sync::{Mutex, OwnedMutexGuard};
use touchlake_catalog::Lake;

use crate::error::{IngestError, Result};

/// A set of touchpoint ids. Fx hashing: the ids are SHA-256 bits already, and std's
/// SipHash was most of the time of a chunk's check and of adding its ids.
pub type IdSet = rustc_hash::FxHashSet<u128>;

/// The ids of one table's touchpoints and the data files they were read from.
#[derive(Default)]
pub struct Seen {
    version: Option<u64>,
    files: HashSet<String>,
    ids: IdSet,
}

type Registry = Mutex<HashMap<String, Arc<Mutex<Seen>>>>;
static TABLES: LazyLock<Registry> = LazyLock::new(Default::default);

/// A `touchpoint_id` as a number (`None` if it is not 32 hex digits).
pub fn id_key(id: &str) -> Option<u128> {
    if id.len() != 32 {
        return None;
    }
    u128::from_str_radix(id, 16).ok()
}

/// The low 64 bits of a `touchpoint_id` of 32 hex digits (`None` for any other text):
/// [`id_key`]'s, read without its generic number parsing, for a key per row of millions.
pub fn id_key_low(id: &str) -> Option<u64> {
    let b = id.as_bytes();
    if b.len() != 32 || !b[..16].iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    b[16..].iter().try_fold(0u64, |v, &c| {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        Some(v << 4 | u64::from(d))
    })
}

/// The id set of `unified.touchpoints` of `lake`, locked and brought up to date, and the
/// table as loaded for that (`None`: no table yet), for the caller's append.
pub async fn lock(lake: &Lake) -> Result<(OwnedMutexGuard<Seen>, Option<DeltaTable>)> {
    let mut seen = hold(lake).await;
    lake.invalidate("unified", "touchpoints").await;
    let loaded = lake.table("unified", "touchpoints").await?.map(|(t, _)| t);
    match &loaded {
        Some(t) => seen.refresh(t).await?,
        None => *seen = Seen::default(),
    }
    Ok((seen, loaded))
}

/// The id set of `unified.touchpoints` of `lake`, locked as it is: for a writer that
/// keeps appends out while it rewrites the table but needs no ids (an identity run).
/// The set catches up with the rewritten files the next time it is locked.
pub async fn hold(lake: &Lake) -> OwnedMutexGuard<Seen> {
    let key = format!("{}/unified/touchpoints", lake.url());
    let entry = TABLES.lock().await.entry(key).or_default().clone();
    entry.lock_owned().await
}

impl Seen {
    /// Whether the table holds this id.
    pub fn contains(&self, id: u128) -> bool {
        self.ids.contains(&id)
    }

    /// Record ids just committed in version `version` of `t` (the caller's own commit):
    /// if no one else committed in between, the new files need not be read again.
    pub fn committed(&mut self, t: &DeltaTable, ids: impl IntoIterator<Item = u128>) {
        self.ids.extend(ids);
        let expected = self.version.map(|v| v + 1);
        if expected.is_some() && t.version() == expected {
            for f in active_files(t) {
                self.files.insert(f);
            }
            self.version = t.version();
        }
    }

    async fn refresh(&mut self, t: &DeltaTable) -> Result<()> {
        if self.version.is_some() && self.version == t.version() {
            return Ok(());
        }
        let active: HashSet<String> = active_files(t).collect();
        // Follow the log from the set's version: a file can be removed and added again
        // under its name with a deletion vector, so the listing alone does not tell.
        let followed = match (self.version, t.version()) {
            (Some(from), Some(to)) if from < to => self.follow(t, from, to).await?,
            (None, _) => self.files.is_empty(),
            _ => false,
        };
        let rebuilt = !followed || self.files.iter().any(|f| !active.contains(f));
        if rebuilt {
            self.files.clear();
            self.ids.clear();
        }
        let store = t.object_store();
        let mut read = 0usize;
        for f in &active {
            if self.files.contains(f) {
                continue;
            }
            read += 1;
            let bytes = store
                .get(&object_store::path::Path::from(f.as_str()))
                .await?
                .bytes()
                .await?;
            read_ids(bytes, &mut self.ids)?;
            self.files.insert(f.clone());
        }
        tracing::debug!(
            "touchpoint id set at version {:?}: {read} files read{}, {} ids",
            t.version(),
            if rebuilt { " (rebuilt)" } else { "" },
            self.ids.len()
        );
        self.version = t.version();
        Ok(())
    }

    /// Follow the commits after `from` up to `to` that removed files. Those of an
    /// identity run (its application transaction) and those that only rearrange rows
    /// (every remove with `dataChange: false`) keep the ids: the removed files leave the
    /// set's files, and the files they added enter it unread if every removed file had
    /// been read (else they are read, as they hold rows the set has not seen). False
    /// (rebuild) when another commit removed a file the set had read, or a commit is
    /// missing from the log.
    async fn follow(&mut self, t: &DeltaTable, from: u64, to: u64) -> Result<bool> {
        let log = t.log_store();
        for v in from + 1..=to {
            let Some(bytes) = log.read_commit_entry(v as _).await? else {
                return Ok(false);
            };
            let (mut identity, mut rearranged) = (false, true);
            let (mut removed, mut added) = (vec![], vec![]);
            for action in deltalake::logstore::get_actions(v as _, &bytes)? {
                match action {
                    Action::Txn(x) if x.app_id.starts_with(IDENTITY_TXN) => identity = true,
                    Action::Remove(r) => {
                        rearranged &= !r.data_change;
                        removed.push(store_path(&r.path));
                    }
                    Action::Add(a) => added.push(store_path(&a.path)),
                    _ => {}
                }
            }
            if removed.is_empty() {
                continue; // an append: its files are read by the caller
            }
            let keeps_ids = identity || rearranged;
            if !keeps_ids && removed.iter().any(|r| self.files.contains(r)) {
                return Ok(false);
            }
            let mut all_read = true;
            for r in &removed {
                all_read &= self.files.remove(r);
            }
            if keeps_ids && all_read {
                self.files.extend(added);
            }
        }
        Ok(true)
    }
}

/// The application transaction id prefix of an identity run's commits
/// (`touchlake-identity:<run id>`).
pub const IDENTITY_TXN: &str = "touchlake-identity:";

/// A log entry's (percent-encoded) file path as [`active_files`] names it.
fn store_path(raw: &str) -> String {
    object_store::path::Path::from_url_path(raw)
        .map(|p| p.to_string())
        .unwrap_or_else(|_| raw.to_string())
}

fn active_files(t: &DeltaTable) -> impl Iterator<Item = String> + '_ {
    t.snapshot()
        .into_iter()
        .flat_map(|s| s.log_data().into_iter())
        .map(|add| add.object_store_path().to_string())
}

/// Add the `touchpoint_id`s of one Parquet data file to `ids`.
fn read_ids(bytes: bytes::Bytes, ids: &mut IdSet) -> Result<()> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| IngestError::Read(format!("touchpoints data file: {e}")))?;
    let Some(col) = builder
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| c.name() == "touchpoint_id")
    else {
        return Ok(());
    };
    let mask = ProjectionMask::leaves(builder.parquet_schema(), [col]);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(65536)
        .build()
        .map_err(|e| IngestError::Read(format!("touchpoints data file: {e}")))?;
    for batch in reader {
        let batch = batch?;
        let a = datafusion::arrow::compute::cast(batch.column(0), &DataType::Utf8)?;
        let a = a.as_string::<i32>();
        for i in 0..a.len() {
            if a.is_valid(i)
                && let Some(k) = id_key(a.value(i))
            {
                ids.insert(k);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_key_is_the_low_bits_of_the_key() {
        for id in [
            "0123456789abcdef0123456789ABCDEF",
            "ffffffffffffffffffffffffffffffff",
            "00000000000000000000000000000000",
            "a1b2c3d4e5f60718293a4b5c6d7e8f90",
        ] {
            assert_eq!(id_key_low(id), id_key(id).map(|k| k as u64), "{id}");
        }
        for id in [
            "0123456789abcdef0123456789abcdeg",
            "g123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "b0-17",
            "",
        ] {
            assert_eq!(id_key_low(id), None, "{id}");
        }
    }

    #[test]
    fn ids_are_128_bit_hex() {
        assert_eq!(id_key("0000000000000000000000000000000f"), Some(15));
        assert_eq!(id_key("abc"), None);
        assert_eq!(id_key("zz000000000000000000000000000000"), None);
    }
}
