//! Per-row hashes of some columns of a table's data files, kept while the process runs.
//!
//! An incremental identity run looks for a few thousand identifiers among the millions of
//! rows of `unified.identities`, then for the rows of the clusters they name: passes that
//! decode string columns of every row. A Delta data file never changes once written, so a
//! 64-bit hash of those values per row, computed by the first pass over a file, stays true
//! for as long as the file is in the table. Later runs in the same process (a
//! long-running `touchlake serve`) test the hashes in memory and decode only the rows they
//! pick, plus the files written since.
//!
//! Equal values always have equal hashes; two different values share one with a
//! probability of about 2⁻⁶⁴ per pair, so a match is a candidate that a caller either
//! checks or may take at no harm. Hashes of files that left the table are dropped the next
//! time the table's hashes are asked for, and no more than [`MAX_BYTES`] are kept.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock, Mutex};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;

use crate::error::Result;

/// Bytes of hashes kept at most: 8 per row and set of columns, so 32 million rows of
/// `unified.identities` for the two sets an increment uses (about 4.5 million persons).
pub const MAX_BYTES: usize = 512 << 20;

/// The seed of [`row_hash`] (any fixed value: hashes live only in this process).
const SEED: u64 = 0x746f_7563_686c_616b;

/// The hash of one row's values of the hashed columns, in their order (`None`: NULL).
pub fn row_hash<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> u64 {
    let mut h = foldhash::quality::FixedState::with_seed(SEED).build_hasher();
    for v in values {
        v.hash(&mut h);
    }
    h.finish()
}

/// [`row_hash`] of every row of `batch` (its columns, in order, are the hashed ones).
pub(super) fn batch_hashes(batch: &RecordBatch) -> Result<Vec<u64>> {
    let columns = batch
        .columns()
        .iter()
        .map(|c| cast(c, &DataType::Utf8View))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let views: Vec<_> = columns.iter().map(|c| c.as_string_view()).collect();
    Ok((0..batch.num_rows())
        .map(|i| row_hash(views.iter().map(|v| v.is_valid(i).then(|| v.value(i)))))
        .collect())
}

/// Which hashes: of a row group of a file of a table, over some columns.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    /// The table's URI.
    pub table: String,
    /// The data file's path in the table's store.
    pub file: String,
    /// The row group's index in the file.
    pub group: usize,
    /// The hashed columns, in order, joined by commas.
    pub columns: String,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<Key, Arc<Vec<u64>>>,
    bytes: usize,
}

static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Default::default);

fn cache() -> std::sync::MutexGuard<'static, Cache> {
    // A thread that panicked while holding the lock left the map whole (no step of ours
    // leaves it half changed): go on with it.
    CACHE.lock().unwrap_or_else(|e| e.into_inner())
}

/// The hashes kept for `key`, if any.
pub(super) fn get(key: &Key) -> Option<Arc<Vec<u64>>> {
    cache().entries.get(key).cloned()
}

/// Keeps `hashes` for `key` if there is room.
pub(super) fn put(key: Key, hashes: Arc<Vec<u64>>) {
    let mut c = cache();
    let size = hashes.len() * 8;
    if c.bytes + size <= MAX_BYTES && !c.entries.contains_key(&key) {
        c.bytes += size;
        c.entries.insert(key, hashes);
    }
}

/// Drops the hashes of `table`'s files that are not in `live` (files removed by a
/// rewrite, compaction or vacuum).
pub(super) fn retain(table: &str, live: &HashSet<String>) {
    let mut c = cache();
    let mut freed = 0;
    c.entries.retain(|k, v| {
        let keep = k.table != table || live.contains(&k.file);
        if !keep {
            freed += v.len() * 8;
        }
        keep
    });
    c.bytes -= freed;
}

/// Bytes of hashes kept now.
pub fn kept_bytes() -> usize {
    cache().bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::StringArray;
    use datafusion::arrow::datatypes::{Field, Schema};

    #[test]
    fn rows_hash_by_their_values_in_order() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("t", DataType::Utf8, true),
            Field::new("v", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![
                    Some("phone"),
                    Some("phone"),
                    None,
                    Some("ab"),
                ])),
                Arc::new(StringArray::from(vec![
                    Some("+86"),
                    Some("+86"),
                    Some("x"),
                    Some("c"),
                ])),
            ],
        )
        .unwrap();
        let h = batch_hashes(&batch).unwrap();
        assert_eq!(h[0], h[1]);
        assert_eq!(h[0], row_hash([Some("phone"), Some("+86")]));
        assert_eq!(h[2], row_hash([None, Some("x")]));
        assert_ne!(h[2], row_hash([Some(""), Some("x")]));
        // Column boundaries count: ("ab", "c") is not ("a", "bc").
        assert_eq!(h[3], row_hash([Some("ab"), Some("c")]));
        assert_ne!(h[3], row_hash([Some("a"), Some("bc")]));
    }

    #[test]
    fn the_cache_drops_files_that_left_the_table() {
        let key = |table: &str, file: &str| Key {
            table: table.into(),
            file: file.into(),
            group: 0,
            columns: "c".into(),
        };
        put(key("t-test", "a"), Arc::new(vec![1, 2]));
        put(key("t-test", "b"), Arc::new(vec![3]));
        put(key("u-test", "a"), Arc::new(vec![4]));
        assert_eq!(get(&key("t-test", "a")).as_deref(), Some(&vec![1, 2]));
        retain("t-test", &HashSet::from(["b".to_string()]));
        assert!(get(&key("t-test", "a")).is_none());
        assert_eq!(get(&key("t-test", "b")).as_deref(), Some(&vec![3]));
        assert_eq!(get(&key("u-test", "a")).as_deref(), Some(&vec![4]));
        retain("t-test", &HashSet::new());
        retain("u-test", &HashSet::new());
        assert!(get(&key("t-test", "b")).is_none());
    }
}
