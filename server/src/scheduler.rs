//! Scheduled ingest inside `touchlake serve`: every source with `poll_seconds` is run
//! that often. Definitions are re-read from the lake on each tick, so a source created,
//! changed or dropped over SQL (or by another server) is picked up without a restart.
//! Runs of one source never overlap; a failed run is recorded in `quality.ingest_runs`
//! and retried at the next interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::engine::Engine;

/// How often the scheduler looks at the definitions.
const TICK: Duration = Duration::from_secs(1);

/// Start the scheduler task.
pub fn spawn(engine: Arc<Engine>) {
    tokio::spawn(async move {
        let mut last: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::time::sleep(TICK).await;
            let defs = match touchlake_ingest::source::load_all(&engine.lake).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("scheduler: cannot read source definitions: {e}");
                    continue;
                }
            };
            for def in defs {
                let Some(every) = def.poll_seconds.filter(|s| *s > 0) else {
                    continue;
                };
                let due = last
                    .get(&def.name)
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(every));
                if !due {
                    continue;
                }
                last.insert(def.name.clone(), Instant::now());
                match touchlake_ingest::run::run_source_with(&engine.lake, &def, false, &|_| {})
                    .await
                {
                    Ok(s) if s.rows_read > 0 => tracing::info!(
                        source = %s.source,
                        read = s.rows_read,
                        accepted = s.rows_accepted,
                        rejected = s.rows_rejected,
                        duplicate = s.rows_duplicate,
                        "scheduled ingest"
                    ),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(source = %def.name, "scheduled ingest failed: {e}"),
                }
            }
        }
    });
}
