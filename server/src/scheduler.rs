//! Scheduled ingest inside `touchlake serve`: every source with `poll_seconds` is run
//! that often. Definitions are re-read from the lake on each tick, so a source created,
//! changed or dropped over SQL (or by another server) is picked up without a restart.
//! Runs of one source never overlap; a failed run is recorded in `quality.ingest_runs`
//! and retried at the next interval.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use touchlake_ingest::source::SourceKind;

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
                // The collector's write-ahead log is flushed every second by default.
                let default = (def.kind == SourceKind::Http).then_some(1);
                let Some(every) = def.poll_seconds.or(default).filter(|s| *s > 0) else {
                    continue;
                };
                let due = last
                    .get(&def.name)
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(every));
                if !due {
                    continue;
                }
                last.insert(def.name.clone(), Instant::now());
                let runs = touchlake_ingest::run::run_any(&engine.lake, &def, false, &|_| {}).await;
                match runs.map(|r| {
                    r.into_iter()
                        .filter(|s| s.rows_read > 0)
                        .collect::<Vec<_>>()
                }) {
                    Ok(runs) => {
                        for s in runs {
                            tracing::info!(
                            source = %s.source,
                            read = s.rows_read,
                            accepted = s.rows_accepted,
                            rejected = s.rows_rejected,
                            duplicate = s.rows_duplicate,
                            "scheduled ingest"
                                )
                        }
                    }
                    Err(e) => {
                        tracing::warn!(source = %def.name, "scheduled ingest failed: {e}");
                        // Retry a failing source once a minute at most, not every tick.
                        let wait =
                            Duration::from_secs(60).saturating_sub(Duration::from_secs(every));
                        last.insert(def.name.clone(), Instant::now() + wait);
                    }
                }
            }
        }
    });
}
