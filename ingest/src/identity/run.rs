//! The identity run: build the identity graph from `unified.touchpoints`, resolve it
//! ([`super::graph`]), give every person a stable id, and write `unified.identities`,
//! `unified.persons`, `unified.identity_merges`, `quality.identity_diagnostics`,
//! `quality.identity_runs`, and `unified.touchpoints.person_id`.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::SessionContext;
use deltalake::protocol::SaveMode;
use futures::StreamExt;
use sha2::Digest;
use touchlake_catalog::Lake;

use super::graph::{self, Config, Flag, Graph, Resolution, Rule, TYPES};
use crate::error::{IngestError, Result};
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
    /// Touchpoints read.
    pub touchpoints: u64,
    /// Identifiers (graph nodes).
    pub identifiers: u64,
    /// Distinct identifier pairs seen together (graph edges).
    pub edges: u64,
    /// Persons after the run.
    pub persons: u64,
    /// Persons that kept an id from the previous run.
    pub persons_kept: u64,
    /// Persons merged into another one in this run.
    pub merges: u64,
    /// Persons of the previous run now split over several persons.
    pub splits: u64,
    /// Identifiers taken out by the degree guard.
    pub guarded: u64,
    /// Edges not applied (cardinality limits and exclude rules).
    pub skipped_edges: u64,
    /// Identifiers in the largest person.
    pub largest_person: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// The blocklist and per-type checks of `id_clean`, applied to every identifier.
pub fn clean(ty: usize, value: &str) -> Option<String> {
    touchlake_functions::normalize::id_clean(Some(TYPES[ty]), Some(value), None)
}

/// A session with delta-rs's planner (its writes need it) and plain string types.
fn identity_context() -> Result<SessionContext> {
    let overrides: HashMap<String, String> = [
        (
            "datafusion.execution.parquet.schema_force_view_types",
            "false",
        ),
        (
            "datafusion.sql_parser.map_string_types_to_utf8view",
            "false",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Ok(
        deltalake::delta_datafusion::DeltaSessionContext::new_with_session_overrides(&overrides)?
            .into_inner(),
    )
}

/// Column `i` of `b` as a plain string array, whatever string type it came as.
fn text_col(b: &RecordBatch, i: usize) -> Result<StringArray> {
    Ok(cast(b.column(i), &DataType::Utf8)?
        .as_string::<i32>()
        .clone())
}

/// Column `i` of `b` as a 64-bit integer array.
fn int_col(b: &RecordBatch, i: usize) -> Result<Int64Array> {
    Ok(cast(b.column(i), &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

/// The identifiers of each row of a batch of identifier columns (in [`COLUMNS`] order),
/// cleaned.
fn row_identifiers(batch: &RecordBatch, first_col: usize) -> Result<Vec<Vec<(u8, String)>>> {
    let mut cols = vec![];
    for t in 0..TYPES.len() {
        cols.push(cast(batch.column(first_col + t), &DataType::Utf8)?);
    }
    let cols: Vec<&StringArray> = cols.iter().map(|c| c.as_string::<i32>()).collect();
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut ids = vec![];
        for (t, c) in cols.iter().enumerate() {
            if c.is_valid(i)
                && let Some(v) = clean(t, c.value(i))
            {
                ids.push((t as u8, v));
            }
        }
        out.push(ids);
    }
    Ok(out)
}

/// Build the graph from every touchpoint.
async fn build_graph(ctx: &SessionContext) -> Result<(Graph, u64)> {
    let sql = format!(
        "SELECT CAST(occurred_at AS BIGINT), {} FROM tp",
        COLUMNS.join(", ")
    );
    // occurred_at is µs; CAST of a timestamp to BIGINT gives its raw value.
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    let mut g = Graph::default();
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        let ts = cast(batch.column(0), &DataType::Int64)?;
        let ts = ts.as_primitive::<Int64Type>();
        for (i, ids) in row_identifiers(&batch, 1)?.into_iter().enumerate() {
            let t = ts.value(i);
            let nodes: Vec<u32> = ids.iter().map(|(ty, v)| g.touch(*ty, v, t)).collect();
            for x in 0..nodes.len() {
                for y in x + 1..nodes.len() {
                    g.link(nodes[x], nodes[y], t);
                }
            }
        }
    }
    Ok((g, rows))
}

/// Manual rules from `unified.identity_rules` (`rule` = `include`/`exclude`, `a_type`,
/// `a_value`, `b_type`, `b_value`), if the table exists.
async fn load_rules(lake: &Lake, ctx: &SessionContext) -> Result<Vec<Rule>> {
    let Some((_, p)) = lake.table("unified", "identity_rules").await? else {
        return Ok(vec![]);
    };
    ctx.register_table("rules", p)?;
    let out = ctx
        .sql("SELECT CAST(lower(trim(rule)) AS VARCHAR), CAST(a_type AS VARCHAR), CAST(a_value AS VARCHAR), CAST(b_type AS VARCHAR), CAST(b_value AS VARCHAR) FROM rules")
        .await?
        .collect()
        .await?;
    let mut rules = vec![];
    for b in out {
        let c: Vec<StringArray> = (0..5).map(|i| text_col(&b, i)).collect::<Result<_>>()?;
        for i in 0..b.num_rows() {
            let include = match c[0].value(i) {
                "include" => true,
                "exclude" => false,
                other => {
                    return Err(IngestError::Definition(format!(
                        "unified.identity_rules: rule '{other}' is not include or exclude"
                    )));
                }
            };
            let side = |t: &StringArray, v: &StringArray| -> Result<(u8, String)> {
                let ty = graph::type_index(t.value(i)).ok_or_else(|| {
                    IngestError::Definition(format!(
                        "unified.identity_rules: unknown identifier type '{}'",
                        t.value(i)
                    ))
                })?;
                Ok((ty, clean(ty as usize, v.value(i)).unwrap_or_default()))
            };
            rules.push(Rule {
                include,
                a: side(&c[1], &c[2])?,
                b: side(&c[3], &c[4])?,
            });
        }
    }
    Ok(rules)
}

/// The previous run's mapping: identifier → person, and person → (anchor, first_seen).
struct Previous {
    person_of: HashMap<(u8, String), String>,
    anchor: HashMap<String, (u8, String)>,
    first_seen: HashMap<String, i64>,
}

async fn load_previous(lake: &Lake, ctx: &SessionContext) -> Result<Previous> {
    let mut prev = Previous {
        person_of: HashMap::new(),
        anchor: HashMap::new(),
        first_seen: HashMap::new(),
    };
    if let Some((_, p)) = lake.table("unified", "identities").await? {
        ctx.register_table("prev_identities", p)?;
        let mut s = ctx
            .sql("SELECT CAST(identifier_type AS VARCHAR), CAST(identifier_value AS VARCHAR), CAST(person_id AS VARCHAR) FROM prev_identities")
            .await?
            .execute_stream()
            .await?;
        while let Some(b) = s.next().await {
            let b = b?;
            let (t, v, p) = (text_col(&b, 0)?, text_col(&b, 1)?, text_col(&b, 2)?);
            for i in 0..b.num_rows() {
                if let Some(ty) = graph::type_index(t.value(i)) {
                    prev.person_of
                        .insert((ty, v.value(i).to_string()), p.value(i).to_string());
                }
            }
        }
    }
    if let Some((_, p)) = lake.table("unified", "persons").await? {
        let has_anchor = p.schema().field_with_name("anchor_type").is_ok();
        ctx.register_table("prev_persons", p)?;
        let sql = if has_anchor {
            "SELECT CAST(person_id AS VARCHAR), CAST(first_seen AS BIGINT), CAST(anchor_type AS VARCHAR), CAST(anchor_value AS VARCHAR) FROM prev_persons"
        } else {
            "SELECT CAST(person_id AS VARCHAR), CAST(first_seen AS BIGINT), CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR) FROM prev_persons"
        };
        let mut s = ctx.sql(sql).await?.execute_stream().await?;
        while let Some(b) = s.next().await {
            let b = b?;
            let (id, fs) = (text_col(&b, 0)?, int_col(&b, 1)?);
            let (at, av) = (text_col(&b, 2)?, text_col(&b, 3)?);
            for i in 0..b.num_rows() {
                if fs.is_valid(i) {
                    prev.first_seen.insert(id.value(i).to_string(), fs.value(i));
                }
                if at.is_valid(i)
                    && av.is_valid(i)
                    && let Some(ty) = graph::type_index(at.value(i))
                {
                    prev.anchor
                        .insert(id.value(i).to_string(), (ty, av.value(i).to_string()));
                }
            }
        }
    }
    Ok(prev)
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

/// Group nodes into persons and give each its id.
fn assign_ids(g: &Graph, res: &Resolution, prev: &Previous) -> (Vec<Person>, Vec<Merge>, u64, u64) {
    let mut groups: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for (i, &root) in res.component.iter().enumerate() {
        groups.entry(root).or_default().push(i as u32);
    }
    let rank = |i: u32| {
        let n = &g.nodes[i as usize];
        (n.ty, n.first_seen, n.value.as_str())
    };
    // Where each previous person's anchor is now.
    let mut anchor_home: HashMap<&str, u32> = HashMap::new();
    for (pid, (ty, v)) in &prev.anchor {
        if let Some(node) = g.find(*ty, v) {
            anchor_home.insert(pid.as_str(), res.component[node as usize]);
        }
    }
    // Previous persons whose anchor is unknown: their best identifier stands in.
    let mut fallback: HashMap<&str, u32> = HashMap::new();
    for (i, n) in g.nodes.iter().enumerate() {
        if let Some(pid) = prev.person_of.get(&(n.ty, n.value.clone()))
            && !prev.anchor.contains_key(pid)
        {
            let e = fallback.entry(pid.as_str()).or_insert(i as u32);
            if rank(i as u32) < rank(*e) {
                *e = i as u32;
            }
        }
    }
    for (pid, node) in fallback {
        anchor_home.insert(pid, res.component[node as usize]);
    }

    let mut used: HashSet<String> = prev.first_seen.keys().cloned().collect();
    used.extend(prev.person_of.values().cloned());
    let mut persons = vec![];
    let mut merges = vec![];
    let mut kept = 0u64;
    let mut split_parts: HashMap<String, u32> = HashMap::new();
    for (root, members) in groups {
        let anchor = *members
            .iter()
            .min_by(|a, b| rank(**a).cmp(&rank(**b)))
            .unwrap_or(&root);
        // Previous persons present here, and those whose anchor is here.
        let mut present: BTreeMap<&str, Option<u32>> = BTreeMap::new();
        for &m in &members {
            let n = &g.nodes[m as usize];
            if let Some(pid) = prev.person_of.get(&(n.ty, n.value.clone())) {
                let via = present.entry(pid.as_str()).or_insert(None);
                if via.is_none() {
                    *via = Some(m);
                }
            }
        }
        for pid in present.keys() {
            *split_parts.entry(pid.to_string()).or_default() += 1;
        }
        let mut eligible: Vec<&str> = present
            .keys()
            .copied()
            .filter(|pid| anchor_home.get(pid) == Some(&root))
            .collect();
        eligible.sort_by_key(|pid| (prev.first_seen.get(*pid).copied().unwrap_or(i64::MAX), *pid));
        let id = match eligible.first() {
            Some(survivor) => {
                kept += 1;
                for other in &eligible[1..] {
                    merges.push(Merge {
                        from: other.to_string(),
                        into: survivor.to_string(),
                        via: present.get(other).copied().flatten(),
                    });
                }
                survivor.to_string()
            }
            None => {
                let n = &g.nodes[anchor as usize];
                let mut id = new_id(TYPES[n.ty as usize], &n.value, "");
                let mut salt = 0;
                while used.contains(&id) {
                    salt += 1;
                    id = new_id(TYPES[n.ty as usize], &n.value, &salt.to_string());
                }
                id
            }
        };
        used.insert(id.clone());
        persons.push(Person {
            id,
            anchor,
            members,
        });
    }
    let splits = split_parts.values().filter(|&&n| n > 1).count() as u64;
    (persons, merges, kept, splits)
}

fn new_id(ty: &str, value: &str, salt: &str) -> String {
    let h = sha2::Sha256::digest(format!("{ty}\u{1f}{value}\u{1f}{salt}").as_bytes());
    format!("p_{}", &hex::encode(h)[..16])
}

fn ts_array(v: Vec<Option<i64>>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

/// Run identity resolution over the whole lake.
pub async fn run(lake: &Lake, config: &Config) -> Result<IdentitySummary> {
    let clock = std::time::Instant::now();
    let run_id = crate::run::new_run_id();
    crate::tables::ensure(lake).await?;
    // No ingest commit of this process lands while touchpoints are rewritten.
    let _appends = crate::dedup::lock(lake).await?;
    let ctx = identity_context()?;
    lake.invalidate("unified", "touchpoints").await;
    let Some((tp_table, tp)) = lake.table("unified", "touchpoints").await? else {
        return Err(IngestError::Read(
            "unified.touchpoints does not exist".into(),
        ));
    };
    ctx.register_table("tp", tp)?;
    let (g, touchpoints) = build_graph(&ctx).await?;
    let rules = load_rules(lake, &ctx).await?;
    let res = graph::resolve(&g, config, &rules);
    let prev = load_previous(lake, &ctx).await?;
    let (persons, merges, kept, splits) = assign_ids(&g, &res, &prev);

    // Person id per node.
    let mut person_of_node: Vec<u32> = vec![0; g.nodes.len()];
    for (p, person) in persons.iter().enumerate() {
        for &m in &person.members {
            person_of_node[m as usize] = p as u32;
        }
    }
    let lookup = Arc::new(Lookup {
        graph: g,
        person_of_node,
        ids: persons.iter().map(|p| p.id.clone()).collect(),
        guarded: res.guarded.iter().copied().collect(),
    });
    let g = &lookup.graph;
    let person_of_node = &lookup.person_of_node;

    // 1. unified.touchpoints with person_id current (one overwrite commit).
    ctx.register_udf(person_udf(lookup.clone()));
    let cols: Vec<String> = tables::touchpoints()
        .fields()
        .iter()
        .map(|f| {
            if f.name() == "person_id" {
                format!("person_of({}) AS person_id", COLUMNS.join(", "))
            } else {
                f.name().clone()
            }
        })
        .collect();
    let plan = ctx
        .sql(&format!("SELECT {} FROM tp", cols.join(", ")))
        .await?
        .into_optimized_plan()?;
    let props =
        deltalake::kernel::transaction::CommitProperties::default().with_application_transaction(
            deltalake::kernel::Transaction::new(format!("touchlake-identity:{run_id}"), 1),
        );
    tp_table
        .write(vec![])
        .with_input_plan(plan)
        .with_session_state(Arc::new(ctx.state()))
        .with_save_mode(SaveMode::Overwrite)
        .with_commit_properties(props)
        .await?;
    lake.invalidate("unified", "touchpoints").await;

    // 2. unified.identities.
    let n = g.nodes.len();
    let identities = RecordBatch::try_new(
        tables::identities(),
        vec![
            Arc::new(StringArray::from_iter_values(
                g.nodes.iter().map(|x| TYPES[x.ty as usize]),
            )),
            Arc::new(StringArray::from_iter_values(
                g.nodes.iter().map(|x| x.value.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                (0..n).map(|i| persons[person_of_node[i] as usize].id.as_str()),
            )),
            ts_array(g.nodes.iter().map(|x| Some(x.first_seen)).collect()),
            ts_array(g.nodes.iter().map(|x| Some(x.last_seen)).collect()),
            Arc::new(Int64Array::from_iter_values(
                g.nodes.iter().map(|x| x.touchpoints),
            )),
        ],
    )?;
    overwrite(lake, "unified", "identities", identities).await?;

    // 3. unified.persons: activity from the rewritten touchpoints, plus anchors.
    let anchors = RecordBatch::try_new(
        Arc::new(datafusion::arrow::datatypes::Schema::new(vec![
            datafusion::arrow::datatypes::Field::new("person_id", DataType::Utf8, false),
            datafusion::arrow::datatypes::Field::new("anchor_type", DataType::Utf8, false),
            datafusion::arrow::datatypes::Field::new("anchor_value", DataType::Utf8, false),
            datafusion::arrow::datatypes::Field::new("identifiers", DataType::Int64, false),
            datafusion::arrow::datatypes::Field::new(
                "id_first_seen",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
            datafusion::arrow::datatypes::Field::new(
                "id_last_seen",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(
                persons.iter().map(|p| p.id.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(
                persons
                    .iter()
                    .map(|p| TYPES[g.nodes[p.anchor as usize].ty as usize]),
            )),
            Arc::new(StringArray::from_iter_values(
                persons
                    .iter()
                    .map(|p| g.nodes[p.anchor as usize].value.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(
                persons.iter().map(|p| p.members.len() as i64),
            )),
            ts_array(
                persons
                    .iter()
                    .map(|p| {
                        p.members
                            .iter()
                            .map(|&m| g.nodes[m as usize].first_seen)
                            .min()
                    })
                    .collect(),
            ),
            ts_array(
                persons
                    .iter()
                    .map(|p| {
                        p.members
                            .iter()
                            .map(|&m| g.nodes[m as usize].last_seen)
                            .max()
                    })
                    .collect(),
            ),
        ],
    )?;
    let pctx = identity_context()?;
    pctx.register_batch("anchors", anchors)?;
    if let Some((_, tp)) = lake.table("unified", "touchpoints").await? {
        pctx.register_table("tp", tp)?;
    }
    let persons_out = pctx
        .sql(
            "SELECT a.person_id, coalesce(s.first_seen, a.id_first_seen) AS first_seen, \
             coalesce(s.last_seen, a.id_last_seen) AS last_seen, coalesce(s.touchpoints, 0) AS touchpoints, \
             coalesce(s.channels, 0) AS channels, coalesce(s.orders, 0) AS orders, \
             coalesce(s.revenue, CAST(0 AS DECIMAL(18,2))) AS revenue, a.identifiers, \
             a.anchor_type, a.anchor_value \
             FROM anchors a LEFT JOIN (SELECT person_id, min(occurred_at) AS first_seen, \
             max(occurred_at) AS last_seen, count(*) AS touchpoints, \
             count(DISTINCT channel) AS channels, \
             count(*) FILTER (WHERE event_type = 'purchase') AS orders, \
             CAST(sum(revenue) AS DECIMAL(18,2)) AS revenue FROM tp \
             WHERE person_id IS NOT NULL GROUP BY person_id) s ON s.person_id = a.person_id",
        )
        .await?
        .collect()
        .await?;
    let persons_schema = tables::persons();
    let persons_batches: Vec<RecordBatch> = persons_out
        .iter()
        .map(|b| crate::run::conform_to(b, &persons_schema))
        .collect::<Result<_>>()?;
    overwrite_many(lake, "unified", "persons", persons_batches).await?;

    // 4. Merges (appended) and diagnostics (replaced).
    let now = Utc::now().timestamp_micros();
    if !merges.is_empty() {
        let m = merges.len();
        let via = |f: fn(&graph::Node) -> &str| -> ArrayRef {
            Arc::new(StringArray::from(
                merges
                    .iter()
                    .map(|x| x.via.map(|v| f(&g.nodes[v as usize]).to_string()))
                    .collect::<Vec<_>>(),
            ))
        };
        let batch = RecordBatch::try_new(
            tables::identity_merges(),
            vec![
                ts_array(vec![Some(now); m]),
                Arc::new(StringArray::from_iter_values(
                    merges.iter().map(|x| x.from.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    merges.iter().map(|x| x.into.as_str()),
                )),
                via(|n| TYPES[n.ty as usize]),
                via(|n| n.value.as_str()),
                Arc::new(StringArray::from(vec![run_id.clone(); m])),
            ],
        )?;
        crate::run::append(
            lake,
            "unified",
            "identity_merges",
            vec![batch],
            &format!("touchlake-identity:{run_id}"),
            false,
        )
        .await?;
    }
    let size_of: Vec<usize> = persons.iter().map(|p| p.members.len()).collect();
    let diagnostics = diagnostics_batch(g, &res, &persons, person_of_node, &size_of, &run_id)?;
    overwrite(lake, "quality", "identity_diagnostics", diagnostics).await?;

    let summary = IdentitySummary {
        run_id: run_id.clone(),
        touchpoints,
        identifiers: n as u64,
        edges: res.edges as u64,
        persons: persons.len() as u64,
        persons_kept: kept,
        merges: merges.len() as u64,
        splits,
        guarded: res.guarded.len() as u64,
        skipped_edges: res.skipped.len() as u64,
        largest_person: size_of.iter().copied().max().unwrap_or(0) as u64,
        seconds: clock.elapsed().as_secs_f64(),
    };
    record_run(lake, &summary).await?;
    Ok(summary)
}

/// What `person_of(…)` needs to place a touchpoint.
struct Lookup {
    graph: Graph,
    person_of_node: Vec<u32>,
    ids: Vec<String>,
    guarded: HashSet<u32>,
}

impl Lookup {
    fn person(&self, ids: &[(u8, String)]) -> Option<&str> {
        let nodes: Vec<u32> = ids
            .iter()
            .filter_map(|(t, v)| self.graph.find(*t, v))
            .collect();
        let node = nodes
            .iter()
            .find(|n| !self.guarded.contains(n))
            .or(nodes.first())?;
        Some(self.ids[self.person_of_node[*node as usize] as usize].as_str())
    }
}

/// `person_of(user_id, member_id, phone, email, openid, device_id, anonymous_id)`: the
/// person of a touchpoint under this run's resolution.
fn person_udf(lookup: Arc<Lookup>) -> ScalarUDF {
    create_udf(
        "person_of",
        vec![DataType::Utf8; TYPES.len()],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let batch = RecordBatch::try_from_iter(
                arrays
                    .iter()
                    .enumerate()
                    .map(|(i, a)| (format!("c{i}"), a.clone())),
            )?;
            let rows = row_identifiers(&batch, 0)
                .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
            let mut b = StringBuilder::with_capacity(rows.len(), rows.len() * 18);
            for ids in rows {
                b.append_option(lookup.person(&ids));
            }
            Ok(ColumnarValue::Array(Arc::new(b.finish())))
        }),
    )
}

fn diagnostics_batch(
    g: &Graph,
    res: &Resolution,
    persons: &[Person],
    person_of_node: &[u32],
    size_of: &[usize],
    run_id: &str,
) -> Result<RecordBatch> {
    // (node, reason, detail)
    let mut rows: Vec<(u32, &'static str, String)> = vec![];
    for &i in &res.guarded {
        let d = &res.degree[i as usize];
        let detail = TYPES
            .iter()
            .zip(d)
            .filter(|(_, n)| **n > 0)
            .map(|(t, n)| format!("{n} {t}"))
            .collect::<Vec<_>>()
            .join(", ");
        rows.push((i, Flag::DegreeGuard.as_str(), format!("linked to {detail}")));
    }
    for (e, flag) in &res.skipped {
        let other = &g.nodes[e.b as usize];
        rows.push((
            e.a,
            flag.as_str(),
            format!(
                "not joined with {} {} (seen together from {})",
                TYPES[other.ty as usize],
                other.value,
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
        let d = &res.degree[i as usize];
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
            Arc::new(StringArray::from_iter_values(
                rows.iter()
                    .map(|r| TYPES[g.nodes[r.0 as usize].ty as usize]),
            )),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| g.nodes[r.0 as usize].value.as_str()),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r.2))),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| degree_json(r.0)),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| {
                persons[person_of_node[r.0 as usize] as usize].id.as_str()
            }))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter()
                    .map(|r| size_of[person_of_node[r.0 as usize] as usize] as i64),
            )),
            Arc::new(StringArray::from(vec![run_id.to_string(); n])),
        ],
    )?)
}

async fn overwrite(lake: &Lake, schema: &str, table: &str, batch: RecordBatch) -> Result<()> {
    overwrite_many(lake, schema, table, vec![batch]).await
}

async fn overwrite_many(
    lake: &Lake,
    schema: &str,
    table: &str,
    batches: Vec<RecordBatch>,
) -> Result<()> {
    lake.invalidate(schema, table).await;
    let t = match lake.table(schema, table).await? {
        Some((t, _)) => t,
        None => lake.table_builder(schema, table)?.build()?,
    };
    t.write(batches)
        .with_save_mode(SaveMode::Overwrite)
        .with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite)
        .await?;
    lake.invalidate(schema, table).await;
    Ok(())
}

async fn record_run(lake: &Lake, s: &IdentitySummary) -> Result<()> {
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
        ],
    )?;
    crate::run::append(
        lake,
        "quality",
        "identity_runs",
        vec![batch],
        &format!("touchlake-identity-run:{}", s.run_id),
        false,
    )
    .await?;
    Ok(())
}
