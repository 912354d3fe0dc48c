//! The row hashes the next incremental run tests, computed while the server is idle.
//!
//! An increment finds the stored identifiers its new rows carry, and their clusters' rows,
//! by per-row hashes of `unified.identities` that the process keeps (`files::hashes`).
//! Without this, the first increment after a full run (or after the server started)
//! would hash every row the full run wrote. A server calls [`warm_up`] after each run,
//! and the hashes of the files not hashed yet are computed in the background. The next
//! run stops that work when it starts. What was hashed by then is kept, and the run hashes
//! the rest itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use touchlake_catalog::Lake;

use super::incremental::{CLUSTER_HASHED, ID_HASHED};
use super::read::identity_context;
use crate::error::Result;
use crate::files::DataFiles;

/// The stop flag of the background hashing under way, if any.
static WARMING: Mutex<Option<Arc<AtomicBool>>> = Mutex::new(None);

fn slot() -> std::sync::MutexGuard<'static, Option<Arc<AtomicBool>>> {
    // The slot holds only a flag: a panic elsewhere cannot leave it half written.
    WARMING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts computing, in the background (a Tokio task), the row hashes of
/// `unified.identities` that the next incremental run tests. Work started by an earlier
/// call stops. Failures are only logged: the run computes what is missing.
pub fn warm_up(lake: Arc<Lake>) {
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(earlier) = slot().replace(stop.clone()) {
        earlier.store(true, Ordering::Relaxed);
    }
    tokio::spawn(async move {
        let clock = std::time::Instant::now();
        match hash_identities(&lake, stop).await {
            Ok(()) => tracing::debug!(
                "identity row hashes computed in {:.2}s ({} MiB kept)",
                clock.elapsed().as_secs_f64(),
                crate::files::hashes_kept_bytes() >> 20
            ),
            Err(e) => tracing::debug!("identity row hashes: {e}"),
        }
    });
}

/// Stops the background hashing, if any: a run is starting.
pub(super) fn stop() {
    if let Some(s) = slot().take() {
        s.store(true, Ordering::Relaxed);
    }
}

async fn hash_identities(lake: &Lake, stop: Arc<AtomicBool>) -> Result<()> {
    let Some((table, _)) = lake.table("unified", "identities").await? else {
        return Ok(());
    };
    let ctx = identity_context()?;
    let files = DataFiles::of(&ctx, &table).await?;
    files.row_hashes_or_stop(&ID_HASHED, stop.clone()).await?;
    files.row_hashes_or_stop(&CLUSTER_HASHED, stop).await?;
    Ok(())
}
