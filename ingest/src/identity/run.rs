//! The identity run: build the identity graph from `unified.touchpoints`, resolve it
//! ([`super::graph`]), give every person a stable id, and write `unified.identities`,
//! `unified.persons`, `unified.identity_merges`, `quality.identity_diagnostics`,
//! `quality.identity_runs`, and `unified.touchpoints.person_id`.
//!
//! **Full or incremental.** A run resolves only the clusters new touchpoints touch when
//! it can continue from the previous run ([`super::incremental`]), and everything
//! otherwise (the first run, changed settings or rules, deletes or updates of
//! touchpoints, or `mode=full`). Both give the same partition.
//!
//! **Stable ids.** A new person's id is `p_` and 16 hex digits of a hash of its anchor
//! identifier (its identifier of the highest priority, then the earliest seen, then the
//! smallest value). A person found again keeps its id. When persons merge, the one seen
//! first keeps its id and each other one is written to `unified.identity_merges`. When a
//! person splits (a guard or rule changed), the part holding its previous anchor keeps the
//! id and the other parts get new ids.
//!
//! **A touchpoint's person** is the person of its identifier of the highest priority that
//! the degree guard did not take out (else of its first identifier); NULL if it has none.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, StringBuilder, StringViewArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{ColumnarValue, Expr, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::{SessionContext, col, lit};
use deltalake::kernel::transaction::CommitProperties;
use deltalake::protocol::SaveMode;
use rustc_hash::{FxHashMap, FxHashSet};
use sha2::Digest;
use touchlake_catalog::Lake;

use super::graph::{self, Config, Flag, Graph, Resolution, TYPES};
use super::read::{
    Placed, Previous, SHARED_ID, find_raw, identity_context, load_previous, load_rules,
};
use crate::error::{IngestError, Result};
use crate::files::DataFiles;
use crate::tables;

/// Identifier columns of `unified.touchpoints`, in [`TYPES`] order.
pub const COLUMNS: [&str; TYPES.len()] = TYPES;

/// Components with more identifiers than this are reported as `giant_component`.
pub const GIANT_COMPONENT: usize = 1000;

/// What an identity run did (a row of `quality.identity_runs`).
#[derive(Debug, Clone, Default)]
pub struct IdentitySummary {
    /// The run's id.
    pub run_id: String,
    /// `full` or `incremental`.
    pub mode: String,
    /// Why a run that could have been incremental was full (empty otherwise).
    pub full_reason: String,
    /// Touchpoints read.
    pub touchpoints: u64,
    /// Identifiers resolved (graph nodes; in an incremental run, those of the touched
    /// clusters).
    pub identifiers: u64,
    /// Distinct identifier pairs seen together (graph edges), of those identifiers.
    pub edges: u64,
    /// Persons in `unified.persons` after the run.
    pub persons: u64,
    /// Persons that kept an id from the previous run.
    pub persons_kept: u64,
    /// Persons merged into another one in this run.
    pub merges: u64,
    /// Persons of the previous run now split over several persons.
    pub splits: u64,
    /// Identifiers taken out by the degree guard (of those resolved).
    pub guarded: u64,
    /// Edges not applied (cardinality limits and exclude rules).
    pub skipped_edges: u64,
    /// Identifiers in the largest person resolved.
    pub largest_person: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Wall-clock time per phase of a run, logged when the run ends.
#[derive(Default)]
pub(super) struct Phases {
    last: Option<std::time::Instant>,
    /// Per phase: its name, seconds, and the process's peak memory (MiB) when it ended.
    done: Vec<(&'static str, f64, Option<u64>)>,
}

impl Phases {
    pub(super) fn start() -> Self {
        Phases {
            last: Some(std::time::Instant::now()),
            done: vec![],
        }
    }

    /// The phase `name` ended now.
    pub(super) fn mark(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        if let Some(t) = self.last {
            self.done.push((name, (now - t).as_secs_f64(), peak_mib()));
        }
        self.last = Some(now);
    }

    /// Seconds since the last phase ended.
    pub(super) fn since_last(&self) -> f64 {
        self.last.map_or(0.0, |t| t.elapsed().as_secs_f64())
    }

    /// Each phase's time, and with `peaks` the process's peak memory at its end.
    pub(super) fn report(&self, peaks: bool) -> String {
        self.done
            .iter()
            .map(|(n, s, m)| match m {
                Some(m) if peaks => format!("{n} {s:.2}s (peak {m} MiB)"),
                _ => format!("{n} {s:.2}s"),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The process's peak resident memory in MiB (`VmHWM`; Linux only). Memory a process
/// touches for the first time costs the kernel zeroing it, which is a large part of a
/// short run: the phases' report shows where the peak grows.
fn peak_mib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

/// The part of the graph a run resolves, and what the previous run knew of it.
pub(super) struct Work {
    /// Identifiers and links.
    pub graph: Graph,
    /// The touchpoints this run places (all, or the touched persons' and the new ones).
    pub placed: Placed,
    /// Touchpoints read.
    pub touchpoints: u64,
    /// Per node: guarded before this run (or outside it).
    pub pre_guarded: Vec<bool>,
    /// Per node: outside this run (seen on a row, but of an untouched cluster).
    pub foreign: Vec<bool>,
    /// Degree of identifiers guarded before this run, carried over.
    pub stored_degree: HashMap<u32, [u32; TYPES.len()]>,
    /// The previous mapping (of the part resolved); `None` for a full run, which reads
    /// it while the graph is resolved.
    pub prev: Option<Previous>,
    /// `None` for a full run.
    pub scope: Option<Scope>,
}

/// What an incremental run resolves again.
pub(super) struct Scope {
    /// Persons of the previous run in the touched clusters.
    pub persons: Vec<String>,
    /// How many clusters the new rows touched.
    pub clusters: usize,
    /// New touchpoints with an identifier.
    pub new_rows: u64,
    /// Where the touched clusters' rows are in `unified.identities`: the rows this run
    /// replaces there.
    pub stored_at: (DataFiles, Vec<(usize, Vec<u64>)>),
}

async fn load_full(ctx: &SessionContext) -> Result<Work> {
    let mut phases = Phases::start();
    let (g, placed, touchpoints) = super::read::read_all(ctx, &mut phases).await?;
    tracing::debug!("identity full read: {}", phases.report(true));
    let n = g.nodes.len();
    Ok(Work {
        graph: g,
        placed,
        touchpoints,
        pre_guarded: vec![],
        foreign: vec![false; n],
        stored_degree: HashMap::new(),
        prev: None,
        scope: None,
    })
}

/// `column IN (values)` as a Delta predicate: a membership function registered in `ctx`
/// as `name` (`false` for no values). An `IN` list of thousands of literals overflows the
/// stack where delta-rs walks the predicate.
pub(super) fn member_of(
    ctx: &SessionContext,
    name: &str,
    column: &str,
    values: impl IntoIterator<Item = String>,
) -> Expr {
    // Fx rather than SipHash: the scan tests every row of the table (millions).
    let set: Arc<FxHashSet<String>> = Arc::new(values.into_iter().collect());
    if set.is_empty() {
        return lit(false);
    }
    let udf = create_udf(
        name,
        vec![DataType::Utf8],
        DataType::Boolean,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let a = datafusion::arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
            let a = datafusion::arrow::array::AsArray::as_string::<i32>(&a);
            let out: datafusion::arrow::array::BooleanArray = a
                .iter()
                .map(|v| Some(v.is_some_and(|v| set.contains(v))))
                .collect();
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    );
    let call = udf.call(vec![col(column)]);
    ctx.register_udf(udf);
    call
}

/// Run identity resolution: incremental when it can continue from the previous run,
/// full otherwise or with `config.full`.
pub async fn run(lake: &Lake, config: &Config) -> Result<IdentitySummary> {
    let clock = std::time::Instant::now();
    let mut phases = Phases::start();
    let run_id = crate::run::new_run_id();
    super::warm::stop();
    crate::tables::ensure(lake).await?;
    // No ingest commit of this process lands while touchpoints are rewritten.
    let _appends = crate::dedup::hold(lake).await;
    let ctx = identity_context()?;
    lake.invalidate("unified", "touchpoints").await;
    let Some((tp_table, tp)) = lake.table("unified", "touchpoints").await? else {
        return Err(IngestError::Read(
            "unified.touchpoints does not exist".into(),
        ));
    };
    ctx.register_table("tp", tp)?;
    phases.mark("open");
    let (rules, rules_version) = load_rules(lake, &ctx).await?;
    let settings = format!(
        "{};rules={}",
        config.fingerprint(),
        rules_version.map_or("-".to_string(), |v| v.to_string())
    );
    let full_reason = if config.full {
        Some("mode=full".to_string())
    } else {
        super::incremental::full_reason(lake, &ctx, &tp_table, &settings).await?
    };
    phases.mark("previous run");
    let work = match &full_reason {
        None => super::incremental::load(lake, &ctx).await?,
        Some(_) => load_full(&ctx).await?,
    };
    phases.mark("read");
    let mode = if work.scope.is_some() {
        "incremental"
    } else {
        "full"
    };
    // The resolution is seconds of CPU at a million persons: on a blocking thread, so the
    // server's async workers keep answering other connections meanwhile. A full run reads
    // the previous mapping meanwhile (both only read the graph).
    let Work {
        graph,
        placed,
        touchpoints,
        pre_guarded,
        foreign,
        stored_degree,
        prev,
        scope,
    } = work;
    let graph = Arc::new(graph);
    let resolving = {
        let (g, config, rules) = (graph.clone(), config.clone(), rules.clone());
        tokio::task::spawn_blocking(move || {
            let res = graph::resolve_with(&g, &config, &rules, &pre_guarded);
            (res, pre_guarded)
        })
    };
    let prev = match prev {
        Some(prev) => prev,
        None => {
            let prev = load_previous(lake, &ctx, &graph).await?;
            tracing::debug!(
                "identity full run read the previous mapping in {:.2}s",
                phases.since_last()
            );
            prev
        }
    };
    let (res, pre_guarded) = resolving
        .await
        .map_err(|e| IngestError::Read(format!("identity resolution failed: {e}")))?;
    phases.mark("resolve");
    // A person id outlives its anchor (a merged person keeps the survivor's id), so a new
    // person's anchor can hash to the id of a person outside an incremental run: such ids
    // are taken, and the new person's id is salted.
    let mut taken = HashSet::new();
    let Assigned {
        persons,
        merges,
        kept,
        splits,
        whole,
    } = loop {
        let out = assign_ids(&graph, &res, &prev, &foreign, &taken, scope.is_some());
        if scope.is_none() {
            break out;
        }
        let fresh: Vec<String> = out
            .persons
            .iter()
            .map(|p| p.id.clone())
            .filter(|id| prev.first_seen_of(id).is_none() && !taken.contains(id))
            .collect();
        let clash = super::incremental::existing_persons(&ctx, fresh).await?;
        if clash.is_empty() {
            break out;
        }
        taken.extend(clash);
    };
    phases.mark("ids");
    let nothing_new = scope.as_ref().is_some_and(|s| s.new_rows == 0);

    // Person per node (u32::MAX: outside this run).
    let mut person_of_node: Vec<u32> = vec![u32::MAX; graph.nodes.len()];
    for (p, person) in persons.iter().enumerate() {
        for &m in &person.members {
            person_of_node[m as usize] = p as u32;
        }
    }
    // A cluster's id: the smallest person id in it.
    let mut cluster_ids: HashMap<u32, String> = HashMap::new();
    for person in &persons {
        let c = res.cluster[person.anchor as usize];
        let e = cluster_ids.entry(c).or_insert_with(|| person.id.clone());
        if person.id < *e {
            *e = person.id.clone();
        }
    }
    let mut guarded = vec![false; graph.nodes.len()];
    for &i in &res.guarded {
        guarded[i as usize] = true;
    }
    // Previous persons whose touchpoints may now belong to another person: all but those
    // found again whole under their own id, with no identifier newly guarded.
    let mut changed: HashSet<String> = HashSet::new();
    if let Some(s) = &scope {
        let mut stay = whole;
        for &i in &res.guarded {
            let newly = !pre_guarded.get(i as usize).copied().unwrap_or(false);
            if newly && let Some(p) = prev.person(i) {
                stay.remove(p);
            }
        }
        changed = s
            .persons
            .iter()
            .filter(|p| !stay.contains(*p))
            .cloned()
            .collect();
    }
    let mut lookup = Lookup {
        graph,
        person_of_node,
        ids: persons.iter().map(|p| p.id.clone()).collect(),
        guarded,
        by_id: FxHashMap::default(),
        row_person: vec![],
    };
    // A full run's rewrite places each touchpoint by its id (its person found once here
    // from the nodes read), not by looking up its identifiers again.
    let mut placed = placed;
    let mut touchpoints_current = false;
    if scope.is_none() {
        lookup.row_person = row_persons(&lookup, &placed);
        touchpoints_current = persons_unchanged(&lookup, &placed);
        let mut by_id = std::mem::take(&mut placed.by_id);
        for v in by_id.values_mut() {
            if *v != SHARED_ID {
                *v = lookup.row_person[*v as usize];
            }
        }
        lookup.by_id = by_id;
    }
    let lookup = Arc::new(lookup);
    let g = &lookup.graph;
    let person_of_node = &lookup.person_of_node;
    ctx.register_udf(person_udf(lookup.clone()));
    let mut versions = (tp_table.version().map(|v| v as i64), None::<i64>);

    if !nothing_new {
        // Which rows and identities this run rewrites.
        // Rows whose person may change: the new ones and those of changed persons.
        let (rows_predicate, new_person_ids) = match &scope {
            None => (None, vec![]),
            Some(_) => {
                let pred = if changed.is_empty() {
                    col("person_id").is_null()
                } else {
                    col("person_id").is_null().or(member_of(
                        &ctx,
                        "touchlake_changed_person",
                        "person_id",
                        changed.iter().cloned(),
                    ))
                };
                (Some(pred), persons.iter().map(|p| p.id.clone()).collect())
            }
        };
        // The keys of the rows an increment replaces (`None`: a full run replaces all).
        let replace = |column: &'static str, old: &[String], new: Vec<String>| {
            scope.as_ref().map(|_| {
                let mut all: HashSet<String> = old.iter().cloned().collect();
                all.extend(new);
                Replace::Keys(column, all)
            })
        };

        // 1–3 are built at once: unified.identities in two halves (written by two
        // writers), one on a second thread.
        let half = persons.len() / 2;
        let (identities, persons_batches, diagnostics) = std::thread::scope(|s| {
            let second = s.spawn(|| identities_batch(g, &persons[half..], &res, &cluster_ids));
            // 2. unified.persons: activity of the rows this run places, plus anchors.
            let persons_batches = s.spawn(|| persons_batch(&lookup, &persons, &placed));
            let first = identities_batch(g, &persons[..half], &res, &cluster_ids);
            // 3. Diagnostics of the part resolved.
            let size_of: Vec<usize> = persons.iter().map(|p| p.members.len()).collect();
            let diagnostics = diagnostics_batch(
                g,
                &res,
                &stored_degree,
                &persons,
                person_of_node,
                &size_of,
                &run_id,
            );
            let identities = second
                .join()
                .map_err(|_| {
                    IngestError::Read("building the rows of unified.identities failed".into())
                })
                .and_then(|second| Ok(vec![first?, second?]));
            let persons_batches = persons_batches.join().map_err(|_| {
                IngestError::Read("building the rows of unified.persons failed".into())
            });
            (identities, persons_batches.and_then(|b| b), diagnostics)
        });
        let (identities, persons_batches, diagnostics) =
            (identities?, vec![persons_batches?], diagnostics?);
        // An increment replaces the rows of the touched clusters, where the read found
        // them. (The new clusters' ids are their persons' smallest ids, none of which is
        // an untouched cluster's.)
        let identities_replaced = scope.as_ref().map(|s| {
            Replace::At(
                &s.stored_at.0,
                s.stored_at.1.clone(),
                format!("cluster_id IN ({} touched clusters)", s.clusters),
            )
        });

        let person_predicate = replace(
            "person_id",
            scope.as_ref().map(|s| s.persons.as_slice()).unwrap_or(&[]),
            new_person_ids.clone(),
        );

        phases.mark("batches");

        // 4. unified.touchpoints.person_id, in one commit.
        let props = deltalake::kernel::transaction::CommitProperties::default()
            .with_application_transaction(deltalake::kernel::Transaction::new(
                format!("{}{run_id}", crate::dedup::IDENTITY_TXN),
                1,
            ));
        let person_expr = ctx.udf("person_of")?.call(
            std::iter::once(col("touchpoint_id"))
                .chain(COLUMNS.iter().map(|c| col(*c)))
                .collect(),
        );
        let ctx = &ctx;
        let touchpoints = async move {
            let t = match rows_predicate {
                // A full run that gives every touchpoint the person it has: the table
                // stays as it is (no rewrite of every row for nothing).
                None if touchpoints_current => {
                    tracing::debug!("identity run: unified.touchpoints is current already");
                    tp_table
                }
                None => {
                    let cols: Vec<String> = tables::touchpoints()
                        .fields()
                        .iter()
                        .map(|f| {
                            if f.name() == "person_id" {
                                format!(
                                    "person_of(touchpoint_id, {}) AS person_id",
                                    COLUMNS.join(", ")
                                )
                            } else {
                                f.name().clone()
                            }
                        })
                        .collect();
                    let plan = ctx
                        .sql(&format!("SELECT {} FROM tp", cols.join(", ")))
                        .await?
                        .into_optimized_plan()?;
                    tp_table
                        .write(vec![])
                        .with_input_plan(plan)
                        .with_writer_properties(tables::writer_properties("unified", "touchpoints"))
                        .with_session_state(Arc::new(ctx.state()))
                        .with_save_mode(SaveMode::Overwrite)
                        .with_commit_properties(props)
                        .await?
                }
                Some(pred) => {
                    tp_table
                        .update()
                        .with_predicate(pred)
                        .with_update("person_id", person_expr)
                        .with_writer_properties(tables::writer_properties("unified", "touchpoints"))
                        .with_session_state(Arc::new(ctx.state()))
                        .with_commit_properties(props)
                        .await?
                        .0
                }
            };
            Ok::<_, IngestError>(t.version().map(|v| v as i64))
        };

        // The four tables are written at once (each writer is one thread). The run is
        // recorded only after all of them: a run that stops half way is not continued
        // incrementally (its identities version is not recorded), the next one is full.
        let (identities_version, _, _, touchpoints_version) = tokio::try_join!(
            timed(
                "unified.identities",
                write(
                    ctx,
                    lake,
                    "unified",
                    "identities",
                    identities,
                    identities_replaced,
                )
            ),
            timed(
                "unified.persons",
                write(
                    ctx,
                    lake,
                    "unified",
                    "persons",
                    persons_batches,
                    person_predicate.clone(),
                )
            ),
            timed(
                "quality.identity_diagnostics",
                write(
                    ctx,
                    lake,
                    "quality",
                    "identity_diagnostics",
                    vec![diagnostics],
                    person_predicate,
                )
            ),
            timed("unified.touchpoints", touchpoints),
        )?;
        versions = (touchpoints_version, Some(identities_version));
        lake.invalidate("unified", "touchpoints").await;
        phases.mark("writes");

        // 5. Merges.
        if !merges.is_empty() {
            let now = Utc::now().timestamp_micros();
            let m = merges.len();
            let via_type: Vec<Option<&str>> = merges
                .iter()
                .map(|x| x.via.map(|v| TYPES[g.nodes[v as usize].ty as usize]))
                .collect();
            let via_value: Vec<Option<&str>> =
                merges.iter().map(|x| x.via.map(|v| g.value(v))).collect();
            let batch = RecordBatch::try_new(
                tables::identity_merges(),
                vec![
                    ts_array(vec![Some(now); m]),
                    strings(merges.iter().map(|x| x.from.as_str())),
                    strings(merges.iter().map(|x| x.into.as_str())),
                    Arc::new(StringArray::from(via_type)),
                    Arc::new(StringArray::from(via_value)),
                    Arc::new(StringArray::from(vec![run_id.clone(); m])),
                ],
            )?;
            crate::run::append(
                lake,
                "unified",
                "identity_merges",
                vec![batch],
                &format!("{}{run_id}", crate::dedup::IDENTITY_TXN),
                false,
            )
            .await?;
        }
    } else {
        lake.invalidate("unified", "identities").await;
        versions.1 = match lake.table("unified", "identities").await? {
            Some((t, _)) => t.version().map(|v| v as i64),
            None => None,
        };
    }

    let summary = IdentitySummary {
        run_id: run_id.clone(),
        mode: mode.to_string(),
        full_reason: full_reason.unwrap_or_default(),
        touchpoints,
        identifiers: foreign.iter().filter(|f| !**f).count() as u64,
        edges: res.edges as u64,
        persons: count_persons(lake).await?,
        persons_kept: kept,
        merges: merges.len() as u64,
        splits,
        guarded: res
            .guarded
            .iter()
            .filter(|&&i| !foreign[i as usize])
            .count() as u64,
        skipped_edges: res.skipped.len() as u64,
        largest_person: persons.iter().map(|p| p.members.len()).max().unwrap_or(0) as u64,
        seconds: clock.elapsed().as_secs_f64(),
    };
    record_run(lake, &summary, versions, &settings).await?;
    phases.mark("record");
    tracing::info!(
        "identity run {run_id} ({mode}): {} in all {:.2}s",
        phases.report(false),
        clock.elapsed().as_secs_f64()
    );
    tracing::debug!("identity run {run_id} memory: {}", phases.report(true));
    // Millions of identifier strings take a second or two to free: not on the caller's
    // time.
    drop(ctx);
    let garbage = (lookup, placed, prev, persons);
    std::thread::spawn(move || drop(garbage));
    Ok(summary)
}

/// Each placed touchpoint's person ([`NO_PERSON`]: none), half the rows on a second
/// thread.
fn row_persons(lookup: &Lookup, placed: &Placed) -> Vec<u32> {
    let n = placed.rows.len();
    let of = |r: usize| {
        lookup
            .person(placed.nodes(r).iter().copied())
            .unwrap_or(NO_PERSON)
    };
    std::thread::scope(|s| {
        let second = s.spawn(|| (n / 2..n).map(of).collect::<Vec<u32>>());
        let mut all: Vec<u32> = (0..n / 2).map(of).collect();
        all.extend(
            second
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p)),
        );
        all
    })
}

/// Whether every touchpoint a full run placed has the person id this run gives it
/// already ([`Lookup::row_person`] against [`Placed::stored`]). A stored id is compared
/// as text once; its other rows compare person numbers.
fn persons_unchanged(lookup: &Lookup, placed: &Placed) -> bool {
    const UNSEEN: u32 = u32::MAX - 1;
    if placed.stored.len() != lookup.row_person.len() {
        return false;
    }
    // Per stored id: the person of this run it is (`UNSEEN`: not compared yet).
    let mut same = vec![UNSEEN; placed.stored_ids.len()];
    placed
        .stored
        .iter()
        .zip(&lookup.row_person)
        .all(|(&stored, &person)| {
            if stored == super::read::NO_STORED || person == NO_PERSON {
                return stored == super::read::NO_STORED && person == NO_PERSON;
            }
            let s = &mut same[stored as usize];
            if *s == UNSEEN {
                if placed.stored_ids.get(stored) != lookup.ids[person as usize] {
                    return false;
                }
                *s = person;
            }
            *s == person
        })
}

/// The rows of `unified.identities` for `persons`, in person order: a person's
/// identifiers are adjacent (for readers too), and each person's id and cluster are
/// looked up once. A cluster's id is `cluster_ids` of its representative.
fn identities_batch(
    g: &Graph,
    persons: &[Person],
    res: &Resolution,
    cluster_ids: &HashMap<u32, String>,
) -> Result<RecordBatch> {
    let person_cluster: Vec<&str> = persons
        .iter()
        .map(|p| {
            cluster_ids
                .get(&res.cluster[p.anchor as usize])
                .map(String::as_str)
                .unwrap_or_default()
        })
        .collect();
    let rows: Vec<(usize, usize)> = persons
        .iter()
        .enumerate()
        .flat_map(|(k, p)| p.members.iter().map(move |&m| (m as usize, k)))
        .collect();
    let node = |&(i, _): &(usize, usize)| &g.nodes[i];
    Ok(RecordBatch::try_new(
        tables::identities(),
        vec![
            strings(rows.iter().map(|r| TYPES[node(r).ty as usize])),
            strings(rows.iter().map(|&(i, _)| g.value(i as u32))),
            strings(rows.iter().map(|&(_, k)| persons[k].id.as_str())),
            ts_array(rows.iter().map(|r| Some(node(r).first_seen)).collect()),
            ts_array(rows.iter().map(|r| Some(node(r).last_seen)).collect()),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| node(r).touchpoints),
            )),
            strings(rows.iter().map(|&(_, k)| person_cluster[k])),
        ],
    )?)
}

/// `fut`, with its time logged at debug level as the write of `table`.
async fn timed<T>(table: &str, fut: impl std::future::Future<Output = T>) -> T {
    let t = std::time::Instant::now();
    let out = fut.await;
    tracing::debug!(
        "identity run wrote {table} in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    out
}

/// The distinct channels of each of `n` persons: a bit each for the first 64 channel
/// numbers, sorted pairs for the rest (sorting a pair per touchpoint was most of the
/// time of building `unified.persons`).
struct DistinctChannels {
    bits: Vec<u64>,
    more: Vec<(u32, u32)>,
}

impl DistinctChannels {
    fn new(n: usize) -> Self {
        DistinctChannels {
            bits: vec![0; n],
            more: vec![],
        }
    }

    /// Person `p` was seen on channel number `c`.
    fn add(&mut self, p: usize, c: u32) {
        match 1u64.checked_shl(c) {
            Some(bit) => self.bits[p] |= bit,
            None => self.more.push((p as u32, c)),
        }
    }

    /// Per person, how many distinct channels.
    fn counts(mut self) -> Vec<i64> {
        self.more.sort_unstable();
        self.more.dedup();
        let mut n: Vec<i64> = self
            .bits
            .iter()
            .map(|b| i64::from(b.count_ones()))
            .collect();
        for (p, _) in self.more {
            n[p as usize] += 1;
        }
        n
    }
}

/// Rows of `unified.persons` for this run's persons: the activity of the touchpoints
/// this run placed, and each person's anchor and identifiers.
fn persons_batch(lookup: &Lookup, persons: &[Person], placed: &Placed) -> Result<RecordBatch> {
    let g = &lookup.graph;
    let n = persons.len();
    let mut first = vec![i64::MAX; n];
    let mut last = vec![i64::MIN; n];
    let mut touchpoints = vec![0i64; n];
    let mut orders = vec![0i64; n];
    let mut revenue = vec![0i128; n];
    let mut channels = DistinctChannels::new(n);
    for (r, act) in placed.rows.iter().enumerate() {
        let person = match lookup.row_person.get(r) {
            Some(&p) => (p != NO_PERSON).then_some(p),
            None => lookup.person(placed.nodes(r).iter().copied()),
        };
        let Some(p) = person else {
            continue;
        };
        let p = p as usize;
        first[p] = first[p].min(act.ts);
        last[p] = last[p].max(act.ts);
        touchpoints[p] += 1;
        orders[p] += i64::from(act.purchase);
        revenue[p] += act.revenue.unwrap_or(0);
        channels.add(p, act.channel);
    }
    let distinct = channels.counts();
    fn members<'a>(
        g: &'a Graph,
        p: &'a Person,
        f: fn(&graph::Node) -> i64,
    ) -> impl Iterator<Item = i64> + 'a {
        p.members.iter().map(move |&m| f(&g.nodes[m as usize]))
    }
    let batch = RecordBatch::try_new(
        tables::persons(),
        vec![
            strings(persons.iter().map(|p| p.id.as_str())),
            ts_array(
                persons
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        if touchpoints[i] > 0 {
                            Some(first[i])
                        } else {
                            members(g, p, |n| n.first_seen).min()
                        }
                    })
                    .collect(),
            ),
            ts_array(
                persons
                    .iter()
                    .enumerate()
                    .map(|(i, p)| {
                        if touchpoints[i] > 0 {
                            Some(last[i])
                        } else {
                            members(g, p, |n| n.last_seen).max()
                        }
                    })
                    .collect(),
            ),
            Arc::new(Int64Array::from(touchpoints)),
            Arc::new(Int64Array::from(distinct)),
            Arc::new(Int64Array::from(orders)),
            Arc::new(
                datafusion::arrow::array::Decimal128Array::from(revenue)
                    .with_precision_and_scale(18, 2)?,
            ),
            Arc::new(Int64Array::from_iter_values(
                persons.iter().map(|p| p.members.len() as i64),
            )),
            strings(
                persons
                    .iter()
                    .map(|p| TYPES[g.nodes[p.anchor as usize].ty as usize]),
            ),
            strings(persons.iter().map(|p| g.value(p.anchor))),
        ],
    )?;
    Ok(batch)
}

async fn count_persons(lake: &Lake) -> Result<u64> {
    lake.invalidate("unified", "persons").await;
    let Some((_, p)) = lake.table("unified", "persons").await? else {
        return Ok(0);
    };
    let ctx = SessionContext::new();
    ctx.register_table("persons", p)?;
    let b = ctx
        .sql("SELECT count(*) FROM persons")
        .await?
        .collect()
        .await?;
    Ok(b.first()
        .map(|b| super::read::int_col(b, 0))
        .transpose()?
        .map_or(0, |c| c.value(0) as u64))
}

/// A person of this run.
struct Person {
    id: String,
    anchor: u32,
    members: Vec<u32>,
}

/// A merge: `from` became part of `into`, via an identifier of `from`.
struct Merge {
    from: String,
    into: String,
    via: Option<u32>,
}

/// Persons of a run and how they relate to the previous run's.
struct Assigned {
    persons: Vec<Person>,
    merges: Vec<Merge>,
    /// Persons that kept an id.
    kept: u64,
    /// Previous persons now split over several persons.
    splits: u64,
    /// Previous persons found again whole (all their identifiers in one person) under
    /// their own id.
    whole: HashSet<String>,
}

/// Group nodes into persons and give each its id.
/// Nodes marked `foreign` are outside this run and belong to no person of it; a new
/// person never gets an id in `taken` (ids of persons outside this run). `whole` is
/// filled only if `want_whole` (an increment needs it).
fn assign_ids(
    g: &Graph,
    res: &Resolution,
    prev: &Previous,
    foreign: &[bool],
    taken: &HashSet<String>,
    want_whole: bool,
) -> Assigned {
    // Each component's nodes, components in the order of their representatives and
    // nodes in their own order: a counting sort by representative.
    let n = res.component.len();
    let inside = |i: usize| !foreign.get(i).copied().unwrap_or(false);
    let mut start = vec![0u32; n + 1];
    for (i, &root) in res.component.iter().enumerate() {
        if inside(i) {
            start[root as usize + 1] += 1;
        }
    }
    for r in 0..n {
        start[r + 1] += start[r];
    }
    let mut flat = vec![0u32; start[n] as usize];
    {
        let mut fill = start.clone();
        for (i, &root) in res.component.iter().enumerate() {
            if inside(i) {
                let f = &mut fill[root as usize];
                flat[*f as usize] = i as u32;
                *f += 1;
            }
        }
    }
    let groups = (0..n)
        .filter(|&r| start[r + 1] > start[r])
        .map(|r| (r as u32, &flat[start[r] as usize..start[r + 1] as usize]));
    let rank = |i: u32| {
        let n = &g.nodes[i as usize];
        (n.ty, n.first_seen, g.value(i))
    };
    // Per previous person (by number): where its anchor is now (`u32::MAX`: unknown).
    let known = prev.ids.len();
    let mut anchor_home = vec![u32::MAX; known];
    let mut has_anchor = vec![false; known];
    for (&pid, (ty, v)) in &prev.anchor {
        has_anchor[pid as usize] = true;
        if let Some(node) = g.find(*ty, v) {
            anchor_home[pid as usize] = res.component[node as usize];
        }
    }
    // Previous persons whose anchor is unknown: their best identifier stands in.
    let mut fallback: FxHashMap<u32, u32> = FxHashMap::default();
    for i in 0..g.nodes.len() {
        if let Some(pid) = prev.person_number(i as u32)
            && !has_anchor[pid as usize]
        {
            let e = fallback.entry(pid).or_insert(i as u32);
            if rank(i as u32) < rank(*e) {
                *e = i as u32;
            }
        }
    }
    for (pid, node) in fallback {
        anchor_home[pid as usize] = res.component[node as usize];
    }

    // Ids given to new persons in this run (those in use before are the previous run's
    // and `taken`).
    let mut given: FxHashSet<String> = FxHashSet::default();
    let mut persons = vec![];
    let mut merges = vec![];
    let mut kept = 0u64;
    // Per previous person: the persons of this run holding some of its identifiers.
    let mut split_parts = vec![0u32; known];
    // (person of this run, the previous person whose id it kept).
    let mut survivors: Vec<(usize, u32)> = vec![];
    let mut present: Vec<(u32, u32)> = vec![];
    for (root, members) in groups {
        let anchor = *members
            .iter()
            .min_by(|a, b| rank(**a).cmp(&rank(**b)))
            .unwrap_or(&root);
        // Previous persons present here, each with its first identifier here.
        present.clear();
        present.extend(
            members
                .iter()
                .filter_map(|&m| prev.person_number(m).map(|pid| (pid, m))),
        );
        present.sort_unstable();
        present.dedup_by_key(|p| p.0);
        for &(pid, _) in &present {
            split_parts[pid as usize] += 1;
        }
        // Those whose anchor is here, the one seen first (then the smallest id) first.
        let mut eligible: Vec<(u32, u32)> = present
            .iter()
            .copied()
            .filter(|&(pid, _)| anchor_home[pid as usize] == root)
            .collect();
        eligible.sort_by_key(|&(pid, _)| {
            (
                prev.first_seen_of_number(pid).unwrap_or(i64::MAX),
                prev.ids.get(pid),
            )
        });
        let id = match eligible.first() {
            Some(&(survivor, _)) => {
                kept += 1;
                let into = prev.ids.get(survivor);
                for &(other, via) in &eligible[1..] {
                    merges.push(Merge {
                        from: prev.ids.get(other).to_string(),
                        into: into.to_string(),
                        via: Some(via),
                    });
                }
                survivors.push((persons.len(), survivor));
                into.to_string()
            }
            None => {
                let value = g.value(anchor);
                let ty = TYPES[g.nodes[anchor as usize].ty as usize];
                let mut id = new_id(ty, value, "");
                let mut salt = 0;
                while prev.knows(&id) || taken.contains(&id) || given.contains(&id) {
                    salt += 1;
                    id = new_id(ty, value, &salt.to_string());
                }
                given.insert(id.clone());
                id
            }
        };
        persons.push(Person {
            id,
            anchor,
            members: members.to_vec(),
        });
    }
    let splits = split_parts.iter().filter(|&&n| n > 1).count() as u64;
    let whole = if want_whole {
        survivors
            .iter()
            .filter(|&&(_, pid)| split_parts[pid as usize] == 1)
            .map(|&(p, _)| persons[p].id.clone())
            .collect()
    } else {
        HashSet::new()
    };
    Assigned {
        persons,
        merges,
        kept,
        splits,
        whole,
    }
}

fn new_id(ty: &str, value: &str, salt: &str) -> String {
    let h = sha2::Sha256::digest(format!("{ty}\u{1f}{value}\u{1f}{salt}").as_bytes());
    format!("p_{}", &hex::encode(h)[..16])
}

/// A text column of `values`.
fn strings<'a, I: ExactSizeIterator<Item = &'a str>>(values: I) -> ArrayRef {
    let n = values.len();
    let mut b = StringBuilder::with_capacity(n, n * 16);
    for v in values {
        b.append_value(v);
    }
    Arc::new(b.finish())
}

fn ts_array(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}
/// What `person_of(…)` needs to place a touchpoint.
struct Lookup {
    graph: Arc<Graph>,
    /// Per node: its person (`u32::MAX`: outside this run).
    person_of_node: Vec<u32>,
    /// Per person: its id.
    ids: Vec<String>,
    /// Per node: taken out by the degree guard.
    guarded: Vec<bool>,
    /// A full run's touchpoints by `touchpoint_id` ([`Placed::by_id`]): each one's person
    /// ([`NO_PERSON`]: none; [`SHARED_ID`]: a key of several rows). Empty in an increment.
    by_id: FxHashMap<u64, u32>,
    /// Per touchpoint placed by a full run: its person ([`NO_PERSON`]: none).
    row_person: Vec<u32>,
}

/// No person: a touchpoint without a usable identifier.
const NO_PERSON: u32 = u32::MAX;

impl Lookup {
    /// The person of a touchpoint with these nodes (in priority order): that of its first
    /// node not guarded, else of its first node, of those inside this run.
    fn person(&self, nodes: impl Iterator<Item = u32>) -> Option<u32> {
        let mut fallback = None;
        for n in nodes {
            let p = self.person_of_node[n as usize];
            if p == u32::MAX {
                continue;
            }
            if !self.guarded[n as usize] {
                return Some(p);
            }
            fallback.get_or_insert(p);
        }
        fallback
    }
}

/// `person_of(touchpoint_id, user_id, member_id, phone, email, openid, device_id,
/// anonymous_id)`: the person of a touchpoint under this run's resolution. A touchpoint a
/// full run placed is found by its id; any other by its identifiers.
fn person_udf(lookup: Arc<Lookup>) -> ScalarUDF {
    // View strings in: the scan gives them, and casting eight columns of millions of rows
    // to plain strings cost more than the lookup itself.
    create_udf(
        "person_of",
        vec![DataType::Utf8View; TYPES.len() + 1],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let views = arrays
                .iter()
                .map(|a| datafusion::arrow::compute::cast(a, &DataType::Utf8View))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let cols: Vec<&StringViewArray> = views.iter().map(|a| a.as_string_view()).collect();
            let (tp_ids, cols) = (cols[0], &cols[1..]);
            let g = &lookup.graph;
            let rows = tp_ids.len();
            let mut b = StringBuilder::with_capacity(rows, rows * 18);
            for i in 0..rows {
                let placed = if lookup.by_id.is_empty() || !tp_ids.is_valid(i) {
                    None
                } else {
                    crate::dedup::id_key_low(tp_ids.value(i))
                        .and_then(|k| lookup.by_id.get(&k))
                        .filter(|&&p| p != SHARED_ID)
                };
                if let Some(&p) = placed {
                    b.append_option((p != NO_PERSON).then(|| lookup.ids[p as usize].as_str()));
                    continue;
                }
                let nodes = cols.iter().enumerate().filter_map(|(t, c)| {
                    c.is_valid(i)
                        .then(|| find_raw(g, t as u8, c.value(i)))
                        .flatten()
                });
                b.append_option(
                    lookup
                        .person(nodes)
                        .map(|p| lookup.ids[p as usize].as_str()),
                );
            }
            Ok(ColumnarValue::Array(Arc::new(b.finish())))
        }),
    )
}

fn diagnostics_batch(
    g: &Graph,
    res: &Resolution,
    stored_degree: &HashMap<u32, [u32; TYPES.len()]>,
    persons: &[Person],
    person_of_node: &[u32],
    size_of: &[usize],
    run_id: &str,
) -> Result<RecordBatch> {
    // (node, reason, detail)
    let mut rows: Vec<(u32, &'static str, String)> = vec![];
    let degree = |i: u32| stored_degree.get(&i).unwrap_or(&res.degree[i as usize]);
    let inside = |i: u32| person_of_node[i as usize] != u32::MAX;
    for &i in res.guarded.iter().filter(|&&i| inside(i)) {
        let d = degree(i);
        let detail = TYPES
            .iter()
            .zip(d)
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", ");
        rows.push((i, Flag::DegreeGuard.as_str(), format!("linked to {detail}")));
    }
    for (e, flag) in res.skipped.iter().filter(|(e, _)| inside(e.a)) {
        let other = &g.nodes[e.b as usize];
        rows.push((
            e.a,
            flag.as_str(),
            format!(
                "not joined with {} {} (seen together from {})",
                TYPES[other.ty as usize],
                g.value(e.b),
                chrono::DateTime::<Utc>::from_timestamp_micros(e.first_seen)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default()
            ),
        ));
    }
    for p in persons {
        if p.members.len() > GIANT_COMPONENT {
            rows.push((
                p.anchor,
                "giant_component",
                format!("person {} has {} identifiers", p.id, p.members.len()),
            ));
        }
    }
    let n = rows.len();
    let degree_json = |i: u32| {
        let d = degree(i);
        let m: serde_json::Map<String, serde_json::Value> = TYPES
            .iter()
            .zip(d)
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| (t.to_string(), serde_json::Value::from(*n)))
            .collect();
        serde_json::Value::Object(m).to_string()
    };
    Ok(RecordBatch::try_new(
        tables::identity_diagnostics(),
        vec![
            strings(
                rows.iter()
                    .map(|r| TYPES[g.nodes[r.0 as usize].ty as usize]),
            ),
            strings(rows.iter().map(|r| g.value(r.0))),
            strings(rows.iter().map(|r| r.1)),
            strings(rows.iter().map(|r| r.2.as_str())),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| degree_json(r.0)),
            )),
            strings(
                rows.iter()
                    .map(|r| persons[person_of_node[r.0 as usize] as usize].id.as_str()),
            ),
            Arc::new(Int64Array::from_iter_values(
                rows.iter()
                    .map(|r| size_of[person_of_node[r.0 as usize] as usize] as i64),
            )),
            Arc::new(StringArray::from(vec![run_id.to_string(); n])),
        ],
    )?)
}

/// Which rows of a table an increment replaces.
#[derive(Clone)]
enum Replace<'a> {
    /// Those whose `.0` is one of `.1`.
    Keys(&'static str, HashSet<String>),
    /// Those at these positions of these files (described as `.2` in the log).
    At(&'a DataFiles, Vec<(usize, Vec<u64>)>, String),
}

/// Replace the rows of `schema.table` that `replace` names (all rows if `None`) with
/// `batches`, in one commit; returns the table's new version. An increment marks the
/// replaced rows deleted (deletion vectors) and appends, so that it writes the size of
/// the change rather than every file holding a replaced row.
async fn write(
    ctx: &SessionContext,
    lake: &Lake,
    schema: &str,
    table: &str,
    batches: Vec<RecordBatch>,
    replace: Option<Replace<'_>>,
) -> Result<i64> {
    lake.invalidate(schema, table).await;
    let existing = lake.table(schema, table).await?.map(|(t, _)| t);
    let props = CommitProperties::default;
    let writer = tables::writer_properties(schema, table);
    let version = match (existing, replace) {
        (Some(_), Some(Replace::At(files, at, predicate))) => {
            crate::replace::replace_at(files, at, batches, props(), writer, &predicate).await?
        }
        (Some(t), Some(Replace::Keys(column, keys))) => {
            crate::replace::replace_rows(ctx, t, column, &keys, batches, props(), writer).await?
        }
        (existing, _) => {
            let t = match existing {
                Some(t) => t,
                None => lake.table_builder(schema, table)?.build()?,
            };
            // Older lakes get the new columns with the first full run.
            // Each batch is a partition of the input, written by a writer of its own.
            let input_schema = batches
                .first()
                .map(|b| b.schema())
                .ok_or_else(|| IngestError::Read(format!("no rows given for {schema}.{table}")))?;
            let input = datafusion::datasource::MemTable::try_new(
                input_schema,
                batches.into_iter().map(|b| vec![b]).collect(),
            )?;
            let plan = datafusion::logical_expr::LogicalPlanBuilder::scan(
                "input",
                datafusion::datasource::provider_as_source(Arc::new(input)),
                None,
            )?
            .build()?;
            let t = t
                .write(vec![])
                .with_input_plan(plan)
                .with_session_state(Arc::new(ctx.state()))
                .with_writer_properties(writer)
                .with_save_mode(SaveMode::Overwrite)
                .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite)
                .await?;
            t.version().map_or(0, |v| v as i64)
        }
    };
    lake.invalidate(schema, table).await;
    Ok(version)
}

async fn record_run(
    lake: &Lake,
    s: &IdentitySummary,
    (touchpoints_version, identities_version): (Option<i64>, Option<i64>),
    settings: &str,
) -> Result<()> {
    let i = |v: u64| -> ArrayRef { Arc::new(Int64Array::from(vec![v as i64])) };
    let batch = RecordBatch::try_new(
        tables::identity_runs(),
        vec![
            Arc::new(StringArray::from(vec![s.run_id.clone()])),
            ts_array(vec![Some(Utc::now().timestamp_micros())]),
            i(s.touchpoints),
            i(s.identifiers),
            i(s.edges),
            i(s.persons),
            i(s.persons_kept),
            i(s.merges),
            i(s.splits),
            i(s.guarded),
            i(s.skipped_edges),
            i(s.largest_person),
            Arc::new(datafusion::arrow::array::Float64Array::from(vec![
                s.seconds,
            ])),
            Arc::new(StringArray::from(vec![s.mode.clone()])),
            Arc::new(Int64Array::from(vec![touchpoints_version])),
            Arc::new(Int64Array::from(vec![identities_version])),
            Arc::new(StringArray::from(vec![settings.to_string()])),
        ],
    )?;
    crate::run::append(
        lake,
        "quality",
        "identity_runs",
        vec![batch],
        &format!("touchlake-identity-run:{}", s.run_id),
        true,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_channels_count_past_64_channel_numbers() {
        let mut c = DistinctChannels::new(3);
        for (p, ch) in [
            (0, 1),
            (0, 1),
            (0, 63),
            (0, 64),
            (0, 64),
            (0, 200),
            (2, 0),
            (2, 70),
        ] {
            c.add(p, ch);
        }
        assert_eq!(c.counts(), [4, 0, 2]);
    }
}
