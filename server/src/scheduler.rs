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

/// Start the compaction task: every `compact_every_seconds`, each table ingest appends to
/// that has `compact_min_files` data files or more is compacted (`OPTIMIZE`). Appends
/// running at the same time do not conflict with it.
pub fn spawn_compaction(engine: Arc<Engine>) {
    let every = engine.config.compact_every_seconds;
    if every == 0 {
        return;
    }
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(every)).await;
            if let Err(e) = compact_hot_tables(&engine).await {
                tracing::warn!("scheduled compaction: {e}");
            }
        }
    });
}

async fn compact_hot_tables(engine: &Engine) -> Result<(), touchlake_catalog::CatalogError> {
    let lake = &engine.lake;
    lake.refresh_listing().await?;
    let mut tables: Vec<(String, String)> = vec![("unified".into(), "touchpoints".into())];
    for t in ["rejected", "ingest_runs", "ingest_files", "checks"] {
        tables.push(("quality".into(), t.into()));
    }
    if let Some(raw) = lake.listing().tables.get("raw") {
        tables.extend(raw.iter().map(|t| ("raw".to_string(), t.clone())));
    }
    for (schema, name) in tables {
        let Some((t, _)) = lake.table(&schema, &name).await? else {
            continue;
        };
        let files = t
            .snapshot()
            .map_err(touchlake_catalog::CatalogError::from)?
            .log_data()
            .num_files();
        if files < engine.config.compact_min_files {
            continue;
        }
        let metrics = touchlake_ingest::tables::optimize(lake, t, &schema, &name, vec![]).await?;
        tracing::info!(
            table = %format!("{schema}.{name}"),
            removed = metrics.num_files_removed,
            added = metrics.num_files_added,
            "compacted"
        );
    }
    Ok(())
}

/// Start the scheduler task.
pub fn spawn(engine: Arc<Engine>) {
    tokio::spawn(async move {
        let mut last: HashMap<String, Instant> = HashMap::new();
        let mut identity_pending = false;
        let mut identity_last: Option<Instant> = None;
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
                        identity_pending |= runs.iter().any(|s| s.rows_accepted > 0);
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
            let settings = &engine.config.identity;
            let due = identity_last
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(settings.every_seconds));
            if identity_pending && settings.after_ingest && due {
                identity_pending = false;
                identity_last = Some(Instant::now());
                run_identity(&engine).await;
            }
        }
    });
}

/// The identity run that follows ingest.
async fn run_identity(engine: &Engine) {
    let config = match engine.config.identity.config() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("identity settings: {e}");
            return;
        }
    };
    match touchlake_ingest::identity::run(&engine.lake, &config).await {
        Ok(s) => {
            // The next increment's lookups, prepared while the server is idle.
            touchlake_ingest::identity::warm_up(engine.lake.clone());
            tracing::info!(
                persons = s.persons,
                merges = s.merges,
                guarded = s.guarded,
                seconds = s.seconds,
                "identity run"
            )
        }
        Err(e) => tracing::warn!("identity run failed: {e}"),
    }
}
