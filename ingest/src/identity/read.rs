//! Reading for the identity run: touchpoints as identifier rows, manual rules, and the
//! previous run's mapping.

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Decimal128Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Decimal128Type, Int64Type};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use touchlake_catalog::Lake;

use super::graph::{self, Graph, Names, Rule, TYPES, TypeNodes};
use super::run::COLUMNS;
use crate::error::{IngestError, Result};

/// The blocklist and per-type checks of `id_clean`, applied to every identifier.
pub fn clean(ty: usize, value: &str) -> Option<String> {
    touchlake_functions::normalize::id_clean(Some(TYPES[ty]), Some(value), None)
}

/// A session with delta-rs's planner (its writes need it) and plain string types. Its
/// filtered reads (an increment's new touchpoints, `person_id IS NULL`, and its touched
/// persons) keep few rows of many columns: they are evaluated while decoding (row filters,
/// off by default in the lake's scans).
pub(super) fn identity_context() -> Result<SessionContext> {
    let overrides: HashMap<String, String> = [
        (
            "datafusion.execution.parquet.schema_force_view_types",
            "false",
        ),
        ("datafusion.execution.parquet.pushdown_filters", "true"),
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
pub(super) fn text_col(b: &RecordBatch, i: usize) -> Result<StringArray> {
    Ok(cast(b.column(i), &DataType::Utf8)?
        .as_string::<i32>()
        .clone())
}

/// Column `i` of `b` as a 64-bit integer array.
pub(super) fn int_col(b: &RecordBatch, i: usize) -> Result<Int64Array> {
    Ok(cast(b.column(i), &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

/// One touchpoint as the identity run reads it: its identifiers as stored (not cleaned
/// yet) and what it adds to its person's activity.
pub(super) struct RawRow<'a> {
    /// `occurred_at`, µs.
    pub ts: i64,
    /// `channel`.
    pub channel: &'a str,
    /// `event_type = 'purchase'`.
    pub purchase: bool,
    /// `revenue`, in cents (scale 2).
    pub revenue: Option<i128>,
    /// Non-NULL identifiers in [`COLUMNS`] order: (type, value as stored).
    pub ids: &'a [(u8, &'a str)],
}

/// What a touchpoint adds to its person in `unified.persons`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Activity {
    /// `occurred_at`, µs.
    pub ts: i64,
    /// The channel, numbered by [`Placed::channel`].
    pub channel: u32,
    /// A purchase.
    pub purchase: bool,
    /// Revenue in cents.
    pub revenue: Option<i128>,
}

/// The touchpoints a run places: each one's activity and identifier nodes (in priority
/// order), so that persons are aggregated without reading the touchpoints again.
#[derive(Default)]
pub(super) struct Placed {
    /// Per touchpoint.
    pub rows: Vec<Activity>,
    /// A full run's touchpoints by (the low 64 bits of) their `touchpoint_id`: the row
    /// each was placed at, [`SHARED_ID`] where two rows share the key. (The run replaces
    /// each row by its person once it knows them.) The rewrite of
    /// `unified.touchpoints` finds a row's person here instead of looking up each of its
    /// identifiers again.
    pub by_id: FxHashMap<u64, u32>,
    /// A full run's touchpoints' `person_id` as the run found it: per row its number in
    /// `stored_ids` ([`NO_STORED`]: NULL). A rerun that gives every row the person it
    /// has leaves the table as it is.
    pub stored: Vec<u32>,
    /// The person ids in `stored`.
    pub stored_ids: Names,
    nodes: Vec<u32>,
    ends: Vec<u32>,
    channels: Channels,
}

/// Channel names, numbered.
#[derive(Default)]
pub(super) struct Channels(FxHashMap<String, u32>);

impl Channels {
    /// The number of a channel name.
    pub fn number(&mut self, name: &str) -> u32 {
        if let Some(&c) = self.0.get(name) {
            return c;
        }
        let c = self.0.len() as u32;
        self.0.insert(name.to_string(), c);
        c
    }
}

impl Placed {
    /// The activity of `row`, with its channel numbered.
    pub fn activity(&mut self, row: &RawRow) -> Activity {
        Activity {
            ts: row.ts,
            channel: self.channels.number(row.channel),
            purchase: row.purchase,
            revenue: row.revenue,
        }
    }

    /// Record a touchpoint and its nodes.
    pub fn push(&mut self, act: Activity, nodes: &[u32]) {
        self.rows.push(act);
        self.push_nodes(nodes);
    }

    /// Record the nodes of the next touchpoint whose activity is in `rows` already.
    fn push_nodes(&mut self, nodes: &[u32]) {
        self.nodes.extend_from_slice(nodes);
        self.ends.push(self.nodes.len() as u32);
    }

    /// Link the nodes of touchpoints `from..` in `g` (in parallel).
    pub fn link(&self, g: &mut Graph, from: usize) {
        g.link_groups(self.rows.len() - from, |i| {
            (self.rows[from + i].ts, self.nodes(from + i))
        });
    }

    /// The nodes of touchpoint `r`.
    pub fn nodes(&self, r: usize) -> &[u32] {
        let start = if r == 0 { 0 } else { self.ends[r - 1] as usize };
        &self.nodes[start..self.ends[r] as usize]
    }
}

/// The node of an identifier as stored: found as is (a node's value is clean, and
/// cleaning is idempotent, so a value found needs no cleaning), else cleaned and found.
pub(super) fn find_raw(g: &Graph, ty: u8, raw: &str) -> Option<u32> {
    g.find(ty, raw)
        .or_else(|| clean(ty as usize, raw).and_then(|v| g.find(ty, &v)))
}

/// [`find_raw`], creating the node if new (`None` for a blocked value); records one
/// touchpoint at `ts`.
pub(super) fn touch_raw(g: &mut Graph, ty: u8, raw: &str, ts: i64) -> Option<u32> {
    if let Some(i) = g.find(ty, raw) {
        g.touch_node(i, ts);
        return Some(i);
    }
    clean(ty as usize, raw).map(|v| g.touch(ty, &v, ts))
}

/// A batch of touchpoints as the identity run reads them.
pub(super) struct Columns {
    /// `occurred_at`, µs.
    pub ts: Int64Array,
    channel: StringArray,
    purchase: BooleanArray,
    revenue: Decimal128Array,
    /// The identifier columns, in [`COLUMNS`] order, as stored.
    pub ids: Vec<StringArray>,
    /// `touchpoint_id`, if asked for (a full run's read).
    pub touchpoint_id: Option<StringArray>,
    /// `person_id`, with `touchpoint_id`.
    pub person_id: Option<StringArray>,
}

impl Columns {
    /// Call `f` for each row.
    pub fn rows(&self, f: &mut impl FnMut(&RawRow)) {
        let mut ids: Vec<(u8, &str)> = Vec::with_capacity(TYPES.len());
        for i in 0..self.len() {
            ids.clear();
            for (t, col) in self.ids.iter().enumerate() {
                if col.is_valid(i) {
                    ids.push((t as u8, col.value(i)));
                }
            }
            f(&RawRow {
                ts: self.ts.value(i),
                channel: self.channel_at(i),
                purchase: self.purchase_at(i),
                revenue: self.revenue_at(i),
                ids: &ids,
            });
        }
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.ts.len()
    }

    /// The activity of row `i`, its channel numbered in `channels`.
    fn activity(&self, i: usize, channels: &mut Channels) -> Activity {
        Activity {
            ts: self.ts.value(i),
            channel: channels.number(self.channel_at(i)),
            purchase: self.purchase_at(i),
            revenue: self.revenue_at(i),
        }
    }

    fn purchase_at(&self, i: usize) -> bool {
        self.purchase.is_valid(i) && self.purchase.value(i)
    }

    fn revenue_at(&self, i: usize) -> Option<i128> {
        self.revenue.is_valid(i).then(|| self.revenue.value(i))
    }

    fn channel_at(&self, i: usize) -> &str {
        if self.channel.is_valid(i) {
            self.channel.value(i)
        } else {
            ""
        }
    }
}

/// Call `f` for each batch of touchpoints matching `filter` (SQL over `tp`, or empty for
/// all), with their `touchpoint_id` if `with_id`; returns the number of rows read.
pub(super) async fn scan_columns(
    ctx: &SessionContext,
    filter: &str,
    with_id: bool,
    mut f: impl FnMut(&Columns) -> Result<()>,
) -> Result<u64> {
    let filter = if filter.is_empty() {
        String::new()
    } else {
        format!(" WHERE {filter}")
    };
    // occurred_at is µs; CAST of a timestamp to BIGINT gives its raw value.
    let sql = format!(
        "SELECT CAST(occurred_at AS BIGINT), CAST(channel AS VARCHAR), event_type = 'purchase', \
         CAST(revenue AS DECIMAL(38, 2)), {}{} FROM tp{filter}",
        COLUMNS.join(", "),
        if with_id {
            ", CAST(touchpoint_id AS VARCHAR), CAST(person_id AS VARCHAR)"
        } else {
            ""
        }
    );
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        f(&Columns {
            ts: int_col(&batch, 0)?,
            channel: text_col(&batch, 1)?,
            purchase: batch.column(2).as_boolean().clone(),
            revenue: batch.column(3).as_primitive::<Decimal128Type>().clone(),
            ids: (0..TYPES.len())
                .map(|t| text_col(&batch, 4 + t))
                .collect::<Result<_>>()?,
            touchpoint_id: if with_id {
                Some(text_col(&batch, 4 + TYPES.len())?)
            } else {
                None
            },
            person_id: if with_id {
                Some(text_col(&batch, 5 + TYPES.len())?)
            } else {
                None
            },
        })?;
    }
    Ok(rows)
}

/// Call `f` for each touchpoint matching `filter` (SQL over `tp`, or empty for all);
/// returns the number of rows read.
pub(super) async fn scan(
    ctx: &SessionContext,
    filter: &str,
    mut f: impl FnMut(&RawRow),
) -> Result<u64> {
    scan_columns(ctx, filter, false, |c| {
        c.rows(&mut f);
        Ok(())
    })
    .await
}

/// In [`Placed::by_id`]: the key of more than one touchpoint (placed by identifiers).
/// (`u32::MAX` is a touchpoint without a person, once the run maps rows to persons.)
pub(super) const SHARED_ID: u32 = u32::MAX - 1;

/// In [`Placed::stored`]: a row without a person id.
pub(super) const NO_STORED: u32 = u32::MAX;

/// No node: a NULL or blocked identifier.
const NO_NODE: u32 = u32::MAX;

/// Bits of a type's own node number while reading (the type is in the bits above).
const LOCAL_BITS: u32 = 28;

/// The numbers of the identifiers of `col` (type `nodes.ty()`), created if new, into
/// `out` ([`NO_NODE`] for NULL and blocked values).
fn intern_column(nodes: &mut TypeNodes, col: &StringArray, ts: &Int64Array, out: &mut Vec<u32>) {
    use graph::AHEAD;
    out.clear();
    let ty = nodes.ty();
    for i in 0..col.len() {
        if i + AHEAD < col.len() && col.is_valid(i + AHEAD) {
            nodes.prefetch(col.value(i + AHEAD));
        }
        if !col.is_valid(i) {
            out.push(NO_NODE);
            continue;
        }
        let raw = col.value(i);
        let local = match nodes.find(raw) {
            Some(l) => {
                nodes.touch_node(l, ts.value(i));
                l
            }
            None => match clean(usize::from(ty), raw) {
                Some(v) => nodes.touch(&v, ts.value(i)),
                None => NO_NODE,
            },
        };
        out.push(local);
    }
}

/// Run `units` on this thread and one more, each thread taking the next unit not taken
/// yet (give the largest first).
fn run_on_two<'a>(units: Vec<Box<dyn FnOnce() + Send + 'a>>) {
    let queue = std::sync::Mutex::new(units.into_iter());
    let work = || {
        // A unit that panicked poisons the queue: the other thread stops too, and the
        // scope passes the panic on.
        while let Some(unit) = queue.lock().ok().and_then(|mut q| q.next()) {
            unit();
        }
    };
    std::thread::scope(|s| {
        s.spawn(work);
        work();
    });
}

/// Read every touchpoint into a graph of its identifiers and edges, and `placed`.
/// Per batch, each type's identifiers are numbered, and the rows' activities and ids
/// recorded, as units of work shared by two threads; edges are linked in parallel too.
pub(super) async fn read_all(
    ctx: &SessionContext,
    phases: &mut super::run::Phases,
) -> Result<(Graph, Placed, u64)> {
    let mut types: Vec<TypeNodes> = (0..TYPES.len() as u8).map(TypeNodes::new).collect();
    let mut placed = Placed::default();
    let mut local: Vec<Vec<u32>> = vec![vec![]; TYPES.len()];
    let rows = scan_columns(ctx, "", true, |c| {
        let base = placed.rows.len();
        let Placed {
            rows,
            by_id,
            channels,
            stored,
            stored_ids,
            ..
        } = &mut placed;
        let mut units: Vec<(usize, Box<dyn FnOnce() + Send + '_>)> = vec![];
        for ((nodes, col), out) in types.iter_mut().zip(&c.ids).zip(local.iter_mut()) {
            let work = col.len() - col.null_count();
            units.push((
                work,
                Box::new(move || intern_column(nodes, col, &c.ts, out)),
            ));
        }
        units.push((
            c.len(),
            Box::new(move || rows.extend((0..c.len()).map(|i| c.activity(i, channels)))),
        ));
        if let Some(ids) = &c.touchpoint_id {
            units.push((
                c.len(),
                Box::new(move || {
                    for i in 0..ids.len() {
                        let Some(key) = ids
                            .is_valid(i)
                            .then(|| crate::dedup::id_key_low(ids.value(i)))
                            .flatten()
                        else {
                            continue;
                        };
                        by_id
                            .entry(key)
                            .and_modify(|r| *r = SHARED_ID)
                            .or_insert((base + i) as u32);
                    }
                }),
            ));
        }
        if let Some(ids) = &c.person_id {
            units.push((
                ids.len() - ids.null_count(),
                Box::new(move || {
                    stored.extend((0..ids.len()).map(|i| {
                        if ids.is_valid(i) {
                            stored_ids.number(ids.value(i))
                        } else {
                            NO_STORED
                        }
                    }))
                }),
            ));
        }
        units.sort_by_key(|(work, _)| std::cmp::Reverse(*work));
        run_on_two(units.into_iter().map(|(_, u)| u).collect());
        let mut row = [0u32; TYPES.len()];
        for i in 0..c.len() {
            let mut k = 0;
            for (t, l) in local.iter().enumerate() {
                if l[i] != NO_NODE {
                    if l[i] >> LOCAL_BITS != 0 {
                        return Err(IngestError::Read(format!(
                            "more than {} distinct {} values",
                            1u32 << LOCAL_BITS,
                            TYPES[t]
                        )));
                    }
                    row[k] = (t as u32) << LOCAL_BITS | l[i];
                    k += 1;
                }
            }
            placed.push_nodes(&row[..k]);
        }
        Ok(())
    })
    .await?;
    phases.mark("touchpoints");
    let (mut g, first) = Graph::from_types(types);
    for n in placed.nodes.iter_mut() {
        *n = first[(*n >> LOCAL_BITS) as usize] + (*n & ((1 << LOCAL_BITS) - 1));
    }
    placed.link(&mut g, 0);
    phases.mark("edges");
    Ok((g, placed, rows))
}

/// Add one touchpoint's identifiers to the graph as nodes and record it in `placed`
/// (blocked values are no nodes). [`Placed::link`] adds the edges afterwards.
pub(super) fn add_raw_row(g: &mut Graph, placed: &mut Placed, row: &RawRow) {
    let mut nodes = [0u32; TYPES.len()];
    let mut n = 0;
    for &(ty, v) in row.ids {
        if let Some(node) = touch_raw(g, ty, v, row.ts) {
            nodes[n] = node;
            n += 1;
        }
    }
    let act = placed.activity(row);
    placed.push(act, &nodes[..n]);
}

/// Link every pair of `nodes` at `ts`; `new_edge` is called for each edge the graph did
/// not have.
pub(super) fn link_all(g: &mut Graph, nodes: &[u32], ts: i64, mut new_edge: impl FnMut(u32, u32)) {
    for x in 0..nodes.len() {
        for y in x + 1..nodes.len() {
            if g.link(nodes[x], nodes[y], ts) {
                new_edge(nodes[x], nodes[y]);
            }
        }
    }
}

/// Manual rules from `unified.identity_rules` (`rule` = `include`/`exclude`, `a_type`,
/// `a_value`, `b_type`, `b_value`), if the table exists.
pub(super) async fn load_rules(
    lake: &Lake,
    ctx: &SessionContext,
) -> Result<(Vec<Rule>, Option<u64>)> {
    lake.invalidate("unified", "identity_rules").await;
    let Some((t, p)) = lake.table("unified", "identity_rules").await? else {
        return Ok((vec![], None));
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
    Ok((rules, t.version()))
}

/// The previous run's mapping: identifier → person, and person → (anchor, first_seen).
/// Persons are numbered and identifiers are this run's graph nodes, so that millions of
/// identifiers need no text of their own.
#[derive(Default)]
pub(super) struct Previous {
    /// Person ids, numbered.
    pub ids: Names,
    /// Per node: its previous person's number (`u32::MAX`: none).
    person_of: Vec<u32>,
    /// Person number → anchor.
    pub anchor: FxHashMap<u32, (u8, String)>,
    /// Person number → first seen (persons with a row in `unified.persons`).
    first_seen: FxHashMap<u32, i64>,
}

/// The previous mapping of the identifiers in `g`.
pub(super) async fn load_previous(
    lake: &Lake,
    ctx: &SessionContext,
    g: &Graph,
) -> Result<Previous> {
    let mut prev = Previous::default();
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
            // A person's identifiers are written next to each other: its number is looked
            // up once per run of rows, not once per row.
            let mut last: Option<(usize, u32)> = None;
            for i in 0..b.num_rows() {
                // The index slot of the value some rows ahead (see TypeNodes::prefetch).
                let ahead = i + graph::AHEAD;
                if ahead < b.num_rows()
                    && let Some(ty) = graph::type_index(t.value(ahead))
                {
                    g.prefetch(ty, v.value(ahead));
                }
                if let Some(node) =
                    graph::type_index(t.value(i)).and_then(|ty| g.find(ty, v.value(i)))
                {
                    let id = p.value(i);
                    let n = match last {
                        Some((j, n)) if p.value(j) == id => n,
                        _ => prev.number(id),
                    };
                    last = Some((i, n));
                    prev.set(node, n);
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
            prev.add_persons(&b?)?;
        }
    }
    Ok(prev)
}

impl Previous {
    /// The number of person `id`.
    fn number(&mut self, id: &str) -> u32 {
        self.ids.number(id)
    }

    /// Record that the identifier of `node` belonged to person `id`.
    pub(super) fn insert(&mut self, node: u32, id: &str) {
        let n = self.number(id);
        self.set(node, n);
    }

    /// Record that the identifier of `node` belonged to person number `n`.
    fn set(&mut self, node: u32, n: u32) {
        let i = node as usize;
        if self.person_of.len() <= i {
            self.person_of.resize(i + 1, u32::MAX);
        }
        self.person_of[i] = n;
    }

    /// The number of the previous person of a node.
    pub(super) fn person_number(&self, node: u32) -> Option<u32> {
        self.person_of
            .get(node as usize)
            .copied()
            .filter(|&n| n != u32::MAX)
    }

    /// The previous person of a node.
    pub(super) fn person(&self, node: u32) -> Option<&str> {
        self.person_number(node).map(|n| self.ids.get(n))
    }

    /// Whether `id` is the id of a person of the previous run.
    pub(super) fn knows(&self, id: &str) -> bool {
        self.ids.find(id).is_some()
    }

    /// When person number `n` was first seen, if it has a row in `unified.persons`.
    pub(super) fn first_seen_of_number(&self, n: u32) -> Option<i64> {
        self.first_seen.get(&n).copied()
    }

    /// When person `id` was first seen, if it has a row in `unified.persons`.
    pub(super) fn first_seen_of(&self, id: &str) -> Option<i64> {
        self.first_seen_of_number(self.ids.find(id)?)
    }

    /// Record persons from a batch of (person_id, first_seen µs, anchor_type,
    /// anchor_value).
    pub(super) fn add_persons(&mut self, b: &RecordBatch) -> Result<()> {
        let (id, fs) = (text_col(b, 0)?, int_col(b, 1)?);
        let (at, av) = (text_col(b, 2)?, text_col(b, 3)?);
        for i in 0..b.num_rows() {
            let n = self.number(id.value(i));
            if fs.is_valid(i) {
                self.first_seen.insert(n, fs.value(i));
            }
            if at.is_valid(i)
                && av.is_valid(i)
                && let Some(ty) = graph::type_index(at.value(i))
            {
                self.anchor.insert(n, (ty, av.value(i).to_string()));
            }
        }
        Ok(())
    }
}
