//! Incremental identity runs: resolve only the clusters new touchpoints touch.
//!
//! New touchpoints are those whose `person_id` is still NULL (every touchpoint with a
//! usable identifier gets one). Their identifiers, looked up in `unified.identities`, name
//! the clusters they touch (`cluster_id`: identifiers joined by edges between unguarded
//! identifiers and include rules, before limits and exclude rules). Those clusters are
//! rebuilt from their own touchpoints plus the new ones and resolved again; every other
//! cluster keeps its persons, because a cluster's resolution depends only on its own edges.
//!
//! An identifier's degree only grows as touchpoints arrive, so an identifier the degree
//! guard took out stays out: its degree is carried over from
//! `quality.identity_diagnostics` and increased by its new links.
//!
//! A run continues incrementally only from a finished run with the same settings and
//! rules, when `unified.identities` is as that run left it and `unified.touchpoints` has
//! only had appends (and compaction) since; otherwise it resolves everything.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use futures::TryStreamExt;
use touchlake_catalog::Lake;

use super::graph::{self, Graph, TYPES};
use super::read::{
    Activity, Placed, Previous, add_raw_row, clean, int_col, link_all, scan, text_col,
};
use super::run::{Scope, Work};
use crate::error::Result;
use crate::files::{DataFiles, row_hash};
use rustc_hash::FxHashSet;

/// Why this run must resolve everything, or `None` when it can continue from the last
/// run. `settings` is this run's settings fingerprint.
pub(super) async fn full_reason(
    lake: &Lake,
    ctx: &SessionContext,
    touchpoints: &DeltaTable,
    settings: &str,
) -> Result<Option<String>> {
    lake.invalidate("quality", "identity_runs").await;
    let Some((_, runs)) = lake.table("quality", "identity_runs").await? else {
        return Ok(Some("no previous run".into()));
    };
    if runs.schema().field_with_name("identities_version").is_err() {
        return Ok(Some("the previous run recorded no versions".into()));
    }
    ctx.register_table("previous_runs", runs)?;
    let last = ctx
        .sql(
            "SELECT CAST(touchpoints_version AS BIGINT), CAST(identities_version AS BIGINT), \
             CAST(settings AS VARCHAR) FROM previous_runs ORDER BY finished_at DESC LIMIT 1",
        )
        .await?
        .collect()
        .await?;
    let Some(b) = last.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Some("no previous run".into()));
    };
    let (tv, iv, s) = (int_col(b, 0)?, int_col(b, 1)?, text_col(b, 2)?);
    if tv.is_null(0) || iv.is_null(0) || s.is_null(0) {
        return Ok(Some(
            "the previous run was a full run of an older version".into(),
        ));
    }
    if s.value(0) != settings {
        return Ok(Some(
            "settings or rules changed since the previous run".into(),
        ));
    }
    lake.invalidate("unified", "identities").await;
    let identities_version = match lake.table("unified", "identities").await? {
        Some((t, _)) => t.version().map(|v| v as i64),
        None => None,
    };
    if identities_version != Some(iv.value(0)) {
        return Ok(Some(
            "unified.identities changed since the previous run".into(),
        ));
    }
    let (now, then) = (touchpoints.version().unwrap_or(0) as i64, tv.value(0));
    if now < then {
        return Ok(Some(
            "unified.touchpoints is older than the previous run".into(),
        ));
    }
    if now > then {
        let commits: Vec<_> = touchpoints
            .history(Some((now - then) as usize))
            .try_collect()
            .await?;
        for c in commits {
            let op = c.operation.clone().unwrap_or_default();
            let append = op == "WRITE"
                && c.operation_parameters
                    .as_ref()
                    .and_then(|p| p.get("mode"))
                    .is_some_and(|m| {
                        m.as_str() == Some("Append") || m.to_string().contains("Append")
                    });
            let harmless = matches!(op.as_str(), "OPTIMIZE" | "VACUUM START" | "VACUUM END");
            if !append && !harmless {
                return Ok(Some(format!(
                    "unified.touchpoints had a {op} since the previous run"
                )));
            }
        }
    }
    // Resolving most rows again from a small previous mapping costs more than resolving
    // everything (at 4M new touchpoints after an empty run: 36 s against 17 s).
    if let Some((new, all)) = unplaced(touchpoints)
        && new > FULL_RUN_MIN_NEW
        && new * 4 > all
    {
        return Ok(Some(format!(
            "{new} of {all} touchpoints are new: resolving all of them is faster"
        )));
    }
    Ok(None)
}

/// New touchpoints above which a run resolves everything if they are over a quarter of
/// all: below it both ways take well under a second.
const FULL_RUN_MIN_NEW: u64 = 100_000;

/// (touchpoints without a person, all touchpoints), from the data files' statistics;
/// `None` if a file has none.
fn unplaced(touchpoints: &DeltaTable) -> Option<(u64, u64)> {
    let (mut new, mut all) = (0, 0);
    for f in touchpoints.snapshot().ok()?.log_data() {
        let stats: serde_json::Value = serde_json::from_str(&f.stats()?).ok()?;
        all += stats.get("numRecords")?.as_u64()?;
        new += stats.get("nullCount")?.get("person_id")?.as_u64()?;
    }
    Some((new, all))
}

/// Where column `name` is in `b` (a data file's columns come in the file's order).
fn at(b: &RecordBatch, name: &str) -> Result<usize> {
    b.schema()
        .index_of(name)
        .map_err(|_| crate::error::IngestError::Read(format!("no column {name}")))
}

fn one_column(name: &str, values: impl IntoIterator<Item = String>) -> Result<RecordBatch> {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, false)]));
    Ok(RecordBatch::try_new(
        schema,
        vec![Arc::new(StringArray::from_iter_values(values))],
    )?)
}

/// The columns of `unified.identities` whose per-row hashes find the stored identifiers
/// new rows carry ...
pub(super) const ID_HASHED: [&str; 2] = ["identifier_type", "identifier_value"];
/// ... and the rows of the clusters they are in.
pub(super) const CLUSTER_HASHED: [&str; 1] = ["cluster_id"];

/// One identifier of a touched cluster as the previous run wrote it.
struct Stored {
    ty: u8,
    value: String,
    person: String,
    first_seen: i64,
    last_seen: i64,
    touchpoints: i64,
}

/// The new touchpoints and the clusters they touch, as a graph to resolve. Registers
/// `touched_persons (p)` in `ctx` for the writes.
pub(super) async fn load(lake: &Lake, ctx: &SessionContext) -> Result<Work> {
    let mut phases = super::run::Phases::start();
    let mut placed = Placed::default();
    let mut new_rows: Vec<(Activity, Vec<(u8, String)>)> = vec![];
    let mut read = scan(ctx, "person_id IS NULL", |r| {
        let ids: Vec<(u8, String)> = r
            .ids
            .iter()
            .filter_map(|&(t, v)| clean(t as usize, v).map(|c| (t, c)))
            .collect();
        if !ids.is_empty() {
            new_rows.push((placed.activity(r), ids));
        }
    })
    .await?;
    phases.mark("new rows");
    let keys: HashSet<(u8, String)> = new_rows
        .iter()
        .flat_map(|(_, ids)| ids.iter().cloned())
        .collect();
    let Some((table, _)) = lake.table("unified", "identities").await? else {
        return Err(crate::error::IngestError::Read(
            "unified.identities disappeared during the identity run".into(),
        ));
    };
    // Deletion vectors on before the read: the write replaces the rows the read finds,
    // at the version it found them in.
    let table = crate::replace::enable_deletion_vectors(table).await?;
    let files = DataFiles::of(ctx, &table).await?;
    phases.mark("identities files");

    // The touched clusters: those of the stored identifiers that new rows carry. Rows are
    // found by hashes of (type, value) and of cluster_id, which this process computes
    // once per data file and keeps (a long-running server reads only the files written
    // since its last run). A hash shared by two values (about 2^-64 per pair) adds a
    // cluster no new row touches: it is resolved again to the persons it has.
    let lookup: FxHashSet<u64> = keys
        .iter()
        .map(|(t, v)| row_hash([Some(TYPES[*t as usize]), Some(v.as_str())]))
        .collect();
    let ids = files.row_hashes(&ID_HASHED).await?;
    let by_cluster = files.row_hashes(&CLUSTER_HASHED).await?;
    let no_cluster = row_hash([None]);
    let mut touched: FxHashSet<u64> = FxHashSet::default();
    for (i, c) in ids.iter().zip(&by_cluster) {
        for (r, h) in i.hashes.iter().enumerate() {
            if lookup.contains(h) && c.hashes[r] != no_cluster && i.live(r) {
                touched.insert(c.hashes[r]);
            }
        }
    }
    phases.mark("clusters");

    // Their identifiers as the previous run wrote them.
    let mut rows_at: Vec<(usize, Vec<u64>)> = vec![];
    for c in &by_cluster {
        let rows = c
            .hashes
            .iter()
            .enumerate()
            .filter(|&(r, h)| touched.contains(h) && c.live(r))
            .map(|(r, _)| c.start + r as u64);
        match rows_at.last_mut() {
            Some((f, p)) if *f == c.file => p.extend(rows),
            _ => rows_at.push((c.file, rows.collect())),
        }
    }
    rows_at.retain(|(_, p)| !p.is_empty());
    let mut stored = vec![];
    let mut stored_at = vec![];
    for c in files
        .read_at(
            rows_at,
            &[
                "identifier_type",
                "identifier_value",
                "person_id",
                "first_seen",
                "last_seen",
                "touchpoints",
            ],
        )
        .await?
    {
        stored_at.push((c.file, c.positions.clone()));
        let b = &c.batch;
        let (t, v, p) = (
            text_col(b, at(b, "identifier_type")?)?,
            text_col(b, at(b, "identifier_value")?)?,
            text_col(b, at(b, "person_id")?)?,
        );
        let (f, l, n) = (
            int_col(b, at(b, "first_seen")?)?,
            int_col(b, at(b, "last_seen")?)?,
            int_col(b, at(b, "touchpoints")?)?,
        );
        for i in 0..b.num_rows() {
            if let Some(ty) = graph::type_index(t.value(i)) {
                stored.push(Stored {
                    ty,
                    value: v.value(i).to_string(),
                    person: p.value(i).to_string(),
                    first_seen: f.value(i),
                    last_seen: l.value(i),
                    touchpoints: n.value(i),
                });
            }
        }
    }
    phases.mark("stored identities");
    let persons: BTreeSet<String> = stored.iter().map(|s| s.person.clone()).collect();
    ctx.register_batch("touched_persons", one_column("p", persons.iter().cloned())?)?;

    // Identifiers the degree guard had taken out, with their degree.
    let mut guarded: HashMap<(u8, String), [u32; TYPES.len()]> = HashMap::new();
    if let Some((_, diag)) = lake.table("quality", "identity_diagnostics").await? {
        ctx.register_table("prev_diagnostics", diag)?;
        for b in ctx
            .sql(
                "SELECT CAST(identifier_type AS VARCHAR), CAST(identifier_value AS VARCHAR), \
                 CAST(degree AS VARCHAR) FROM prev_diagnostics WHERE reason = 'degree_guard' \
                 AND person_id IN (SELECT p FROM touched_persons)",
            )
            .await?
            .collect()
            .await?
        {
            let (t, v, d) = (text_col(&b, 0)?, text_col(&b, 1)?, text_col(&b, 2)?);
            for i in 0..b.num_rows() {
                if let Some(ty) = graph::type_index(t.value(i)) {
                    guarded.insert((ty, v.value(i).to_string()), parse_degree(d.value(i)));
                }
            }
        }
    }

    phases.mark("diagnostics");
    // The previous mapping of the touched part.
    let mut prev = Previous::default();
    if let Some((_, p)) = lake.table("unified", "persons").await? {
        ctx.register_table("prev_persons", p)?;
        for b in ctx
            .sql(
                "SELECT CAST(person_id AS VARCHAR), CAST(first_seen AS BIGINT), \
                 CAST(anchor_type AS VARCHAR), CAST(anchor_value AS VARCHAR) FROM prev_persons \
                 WHERE person_id IN (SELECT p FROM touched_persons)",
            )
            .await?
            .collect()
            .await?
        {
            prev.add_persons(&b)?;
        }
    }

    phases.mark("persons");
    // The graph: the touched persons' touchpoints, the stored identifiers, the new rows.
    let mut g = Graph::default();
    if !persons.is_empty() {
        let from = placed.rows.len();
        // A function rather than a semi-join: the scan pushes it into the Parquet reader.
        super::run::member_of(
            ctx,
            "is_touched_person",
            "person_id",
            persons.iter().cloned(),
        );
        read += scan(ctx, "is_touched_person(person_id)", |r| {
            add_raw_row(&mut g, &mut placed, r)
        })
        .await?;
        placed.link(&mut g, from);
    }
    phases.mark("touchpoints");
    let mut known = HashSet::new();
    let mut degree: HashMap<u32, [u32; TYPES.len()]> = HashMap::new();
    for s in &stored {
        let key = (s.ty, s.value.clone());
        let node = match (guarded.get(&key), g.find(s.ty, &s.value)) {
            // A guarded identifier's rows are spread over other persons: keep its totals.
            (Some(d), _) => {
                let i = g.set_node(s.ty, &s.value, s.first_seen, s.last_seen, s.touchpoints);
                degree.insert(i, *d);
                i
            }
            (None, Some(i)) => i,
            (None, None) => g.set_node(s.ty, &s.value, s.first_seen, s.last_seen, s.touchpoints),
        };
        prev.insert(node, &s.person);
        known.insert(node);
    }
    // Identifiers met on those rows that belong to untouched clusters (guarded ones of
    // other persons): kept out of this run's resolution and writes.
    let before_new = g.nodes.len();
    let foreign: Vec<bool> = (0..before_new as u32)
        .map(|i| !known.contains(&i))
        .collect();
    let mut new_edges = vec![];
    for (act, ids) in &new_rows {
        let nodes: Vec<u32> = ids.iter().map(|(ty, v)| g.touch(*ty, v, act.ts)).collect();
        link_all(&mut g, &nodes, act.ts, |a, b| new_edges.push((a, b)));
        placed.push(*act, &nodes);
    }
    for (a, b) in new_edges {
        for (x, y) in [(a, b), (b, a)] {
            let ty = g.nodes[y as usize].ty as usize;
            if let Some(d) = degree.get_mut(&x) {
                d[ty] += 1;
            }
        }
    }
    let n = g.nodes.len();
    let mut foreign = foreign;
    foreign.resize(n, false);
    let pre_guarded = (0..n)
        .map(|i| foreign[i] || degree.contains_key(&(i as u32)))
        .collect();
    phases.mark("graph");
    tracing::debug!("identity increment read: {}", phases.report(true));
    Ok(Work {
        graph: g,
        placed,
        touchpoints: read,
        pre_guarded,
        foreign,
        stored_degree: degree,
        prev: Some(prev),
        scope: Some(Scope {
            persons: persons.into_iter().collect(),
            clusters: touched.len(),
            new_rows: new_rows.len() as u64,
            stored_at: (files, stored_at),
        }),
    })
}

/// Which of `ids` are ids of persons in `unified.persons` (registered by [`load`] as
/// `prev_persons`).
pub(super) async fn existing_persons(
    ctx: &SessionContext,
    ids: Vec<String>,
) -> Result<Vec<String>> {
    if ids.is_empty() || !ctx.table_exist("prev_persons")? {
        return Ok(vec![]);
    }
    let _ = ctx.deregister_table("candidate_ids");
    ctx.register_batch("candidate_ids", one_column("c", ids)?)?;
    let mut out = vec![];
    for b in ctx
        .sql("SELECT CAST(person_id AS VARCHAR) FROM prev_persons WHERE person_id IN (SELECT c FROM candidate_ids)")
        .await?
        .collect()
        .await?
    {
        let c = text_col(&b, 0)?;
        out.extend((0..b.num_rows()).map(|i| c.value(i).to_string()));
    }
    Ok(out)
}

/// A degree as `quality.identity_diagnostics` writes it (`{"member_id":12,…}`).
fn parse_degree(s: &str) -> [u32; TYPES.len()] {
    let mut d = [0u32; TYPES.len()];
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(s) {
        for (k, v) in m {
            if let (Some(t), Some(n)) = (graph::type_index(&k), v.as_u64()) {
                d[t as usize] = n as u32;
            }
        }
    }
    d
}
