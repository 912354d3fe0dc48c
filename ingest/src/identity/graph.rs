//! The identity graph and its resolution into persons, independent of storage.
//!
//! Nodes are identifiers `(type, value)`; an edge joins two identifiers seen on the same
//! touchpoint (or named by a manual include rule), with the first and last time it was
//! seen. Resolution, in order:
//!
//! 1. **Blocklist**: values `id_clean` blocks are not nodes (the caller drops them).
//! 2. **Degree guard**: an identifier linked to more than `max_degree[its type]` distinct
//!    identifiers of one strong type (the store's shared tablet linked to 40 member cards)
//!    stops being a connector: it loses its edges and becomes a person of its own.
//! 3. **Manual rules**: `include` pairs are joined first, whatever the limits; `exclude`
//!    pairs are never put in one person.
//! 4. **Cardinality limits**: a person holds at most `limit[type]` identifiers of a type
//!    (default: one `member_id`, one `user_id`). Edges are applied in order of
//!    `(first_seen, last_seen, endpoints)`; an edge whose union would exceed a limit or join
//!    an excluded pair is not applied and is reported (`cardinality_violation` /
//!    `excluded`): the earliest edges win.
//! 5. What is left are the connected components (union-find with union by size and path
//!    halving, memory linear in nodes + edges).
//!
//! The result of a component depends only on its own edges, never on the order the data
//! arrived in, so an incremental run that recomputes the components touched by new edges
//! gives the same partition as a full run.

use std::collections::HashMap;

use rustc_hash::FxHashMap;

/// Identifier types, highest priority first (the anchor of a person is its identifier of
/// the highest priority, then the earliest seen, then the smallest value).
pub const TYPES: [&str; 7] = [
    "user_id",
    "member_id",
    "phone",
    "email",
    "openid",
    "device_id",
    "anonymous_id",
];

/// A type's index in [`TYPES`].
pub fn type_index(name: &str) -> Option<u8> {
    TYPES.iter().position(|t| *t == name).map(|i| i as u8)
}

/// Resolution settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Types whose identifiers identify one person (the degree guard counts these).
    pub strong: [bool; TYPES.len()],
    /// Per type: the most distinct identifiers of one strong type it may link to before
    /// the degree guard takes it out (`usize::MAX`: no guard).
    pub max_degree: [usize; TYPES.len()],
    /// Per type: the most identifiers of that type in one person (`usize::MAX`: no limit).
    pub limit: [usize; TYPES.len()],
    /// Resolve the whole graph even when an incremental run would do (`mode=full`).
    pub full: bool,
}

impl Default for Config {
    fn default() -> Self {
        //             user  member phone email openid device anon
        Config {
            strong: [true, true, true, true, false, false, false],
            max_degree: [5, 5, 5, 5, 5, 5, 5],
            limit: [
                1,
                1,
                usize::MAX,
                usize::MAX,
                usize::MAX,
                usize::MAX,
                usize::MAX,
            ],
            full: false,
        }
    }
}

impl Config {
    /// No guards, no limits: plain connected components.
    pub fn unguarded() -> Self {
        Config {
            strong: [false; TYPES.len()],
            max_degree: [usize::MAX; TYPES.len()],
            limit: [usize::MAX; TYPES.len()],
            full: false,
        }
    }

    /// Set `max_degree.<type>` or `limit.<type>` (`none` or 0 for no guard/limit), or
    /// `guards` to `off` (plain connected components) or `default`.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        if key == "guards" {
            let full = self.full;
            *self = match value.trim() {
                "off" => Config::unguarded(),
                "default" => Config::default(),
                v => return Err(format!("guards must be off or default, not {v}")),
            };
            self.full = full;
            return Ok(());
        }
        if key == "mode" {
            self.full = match value.trim() {
                "full" => true,
                "auto" | "incremental" => false,
                v => return Err(format!("mode must be full or auto, not {v}")),
            };
            return Ok(());
        }
        let (what, ty) = key
            .split_once('.')
            .ok_or_else(|| format!("unknown identity setting {key}"))?;
        let i = type_index(ty).ok_or_else(|| format!("unknown identifier type {ty}"))? as usize;
        let n = match value.trim() {
            "none" | "0" => usize::MAX,
            v => v
                .parse::<usize>()
                .map_err(|_| format!("{key} must be a positive integer or none"))?,
        };
        match what {
            "max_degree" => self.max_degree[i] = n,
            "limit" => self.limit[i] = n,
            "strong" => self.strong[i] = n != usize::MAX,
            _ => return Err(format!("unknown identity setting {key}")),
        }
        Ok(())
    }
}

impl Config {
    /// The settings that decide the partition, as text: an incremental run continues only
    /// from a run with the same settings.
    pub fn fingerprint(&self) -> String {
        let list = |v: &[usize]| {
            v.iter()
                .map(|n| {
                    if *n == usize::MAX {
                        "-".to_string()
                    } else {
                        n.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let strong: Vec<&str> = TYPES
            .iter()
            .zip(self.strong)
            .filter(|(_, s)| *s)
            .map(|(t, _)| *t)
            .collect();
        format!(
            "strong={};max_degree={};limit={}",
            strong.join(","),
            list(&self.max_degree),
            list(&self.limit)
        )
    }
}

/// Why an identifier or an edge was set aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flag {
    /// More strong neighbours than its type's `max_degree`.
    DegreeGuard,
    /// An edge not applied because a person would exceed a type's limit.
    CardinalityViolation,
    /// An edge not applied because of a manual exclude rule.
    Excluded,
}

impl Flag {
    /// The reason text in diagnostics.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::DegreeGuard => "degree_guard",
            Flag::CardinalityViolation => "cardinality_violation",
            Flag::Excluded => "excluded",
        }
    }
}

/// One identifier (its normalized value is [`Graph::value`]).
#[derive(Debug, Clone)]
pub struct Node {
    /// Index into [`TYPES`].
    pub ty: u8,
    /// Earliest touchpoint (µs since the epoch).
    pub first_seen: i64,
    /// Latest touchpoint.
    pub last_seen: i64,
    /// Touchpoints carrying it.
    pub touchpoints: i64,
}

impl Node {
    /// Record one touchpoint at `ts`.
    fn touch(&mut self, ts: i64) {
        self.first_seen = self.first_seen.min(ts);
        self.last_seen = self.last_seen.max(ts);
        self.touchpoints += 1;
    }
}

/// An edge between two nodes (`a < b`), seen from `first_seen` to `last_seen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Smaller node index.
    pub a: u32,
    /// Larger node index.
    pub b: u32,
    /// First time seen (µs).
    pub first_seen: i64,
    /// Last time seen (µs).
    pub last_seen: i64,
}

/// Texts numbered from 0, kept in one buffer: millions of identifier values as one
/// allocation instead of one (and a copy for the index) each.
#[derive(Debug, Default, Clone)]
struct Texts {
    bytes: String,
    ends: Vec<usize>,
}

impl Texts {
    fn push(&mut self, s: &str) {
        self.bytes.push_str(s);
        self.ends.push(self.bytes.len());
    }

    fn get(&self, i: u32) -> &str {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.bytes[start..self.ends[i]]
    }

    /// Add `other`'s texts after these.
    fn append(&mut self, other: Texts) {
        let base = self.bytes.len();
        self.bytes.push_str(&other.bytes);
        self.ends.extend(other.ends.iter().map(|e| e + base));
    }
}

/// Value → node number, for the values in a [`Texts`]: open addressing with linear
/// probing over (32-bit hash of the value, number) slots, at most half full. A lookup
/// reads one slot (usually) and the value it names: two cache misses at millions of
/// values, where a SwissTable reads its control bytes and its bucket apart. Growing
/// rehashes the stored hashes without reading the values. [`ValueIndex::prefetch`] lets
/// a loop over a column ask for the slots of values ahead of the one it looks up.
#[derive(Debug, Default, Clone)]
struct ValueIndex {
    slots: Vec<(u32, u32)>,
    len: usize,
}

/// The number of an empty slot.
const EMPTY: u32 = u32::MAX;

/// Ask the processor for `v[i]` ahead of its use: a hint, which does nothing out of
/// range or off x86-64. Lookups at random places in arrays of millions wait on memory;
/// loops ask for the place of an item some items ahead.
fn prefetch_at<T>(v: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if i < v.len() {
        // SAFETY: `i` is in bounds; a prefetch reads nothing and cannot fault.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(i).cast());
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, i);
}

/// `f(state, item)` on each of `items` in order, `ahead(state, item)` on each one
/// [`AHEAD`] items before (to prefetch what `f` reads of it).
fn each_ahead<S, T>(
    state: &mut S,
    items: impl Iterator<Item = T>,
    ahead: impl Fn(&S, &T),
    mut f: impl FnMut(&mut S, T),
) {
    let mut queue = std::collections::VecDeque::with_capacity(AHEAD + 1);
    for item in items {
        ahead(state, &item);
        queue.push_back(item);
        if queue.len() > AHEAD
            && let Some(first) = queue.pop_front()
        {
            f(state, first);
        }
    }
    for item in queue {
        f(state, item);
    }
}

/// How many items ahead loops prefetch (the read loop too, [`TypeNodes::prefetch`]).
pub const AHEAD: usize = 8;

/// The hash of a value, 32 bits wide (the index keeps it beside the number).
fn text_hash(s: &str) -> u32 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(s) as u32
}

impl ValueIndex {
    /// The slot a hash starts probing at (Fibonacci hashing: the product's high bits).
    fn home(&self, h: u32) -> usize {
        let bits = self.slots.len().trailing_zeros();
        (u64::from(h.wrapping_mul(0x9E37_79B1)) << 32 >> (64 - bits)) as usize
    }

    /// The number of `value` (`text(i)`: the value of number `i`).
    fn find<'a>(&self, value: &str, text: impl Fn(u32) -> &'a str) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let h = text_hash(value);
        let mask = self.slots.len() - 1;
        let mut at = self.home(h);
        loop {
            let (eh, i) = self.slots[at];
            if i == EMPTY {
                return None;
            }
            if eh == h && text(i) == value {
                return Some(i);
            }
            at = (at + 1) & mask;
        }
    }

    /// Ask the processor for the slot `value` starts at (a hint; no effect elsewhere
    /// than on x86-64).
    fn prefetch(&self, value: &str) {
        if self.slots.is_empty() {
            return;
        }
        prefetch_at(&self.slots, self.home(text_hash(value)));
    }

    /// Record that `value` is number `i` (not in the index yet).
    fn insert(&mut self, value: &str, i: u32) {
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        self.place(text_hash(value), i);
        self.len += 1;
    }

    fn place(&mut self, h: u32, i: u32) {
        let mask = self.slots.len() - 1;
        let mut at = self.home(h);
        while self.slots[at].1 != EMPTY {
            at = (at + 1) & mask;
        }
        self.slots[at] = (h, i);
    }

    /// Twice the slots (at least 1024), the entries placed again by their hashes.
    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(1024);
        let old = std::mem::replace(&mut self.slots, vec![(0, EMPTY); size]);
        for (h, i) in old {
            if i != EMPTY {
                self.place(h, i);
            }
        }
    }

    /// Add `base` to every number.
    fn offset(&mut self, base: u32) {
        for e in self.slots.iter_mut().filter(|e| e.1 != EMPTY) {
            e.1 += base;
        }
    }
}

/// Texts numbered from 0 in the order first met, with their index: one buffer for all of
/// them (a million person ids read from the touchpoints are one allocation, not a
/// million).
#[derive(Debug, Default)]
pub struct Names {
    index: ValueIndex,
    values: Texts,
}

impl Names {
    /// The number of `name`, given the next one if new.
    pub fn number(&mut self, name: &str) -> u32 {
        if let Some(i) = self.find(name) {
            return i;
        }
        let i = self.values.ends.len() as u32;
        self.values.push(name);
        self.index.insert(name, i);
        i
    }

    /// The number of `name`, if it has one.
    pub fn find(&self, name: &str) -> Option<u32> {
        self.index.find(name, |i| self.values.get(i))
    }

    /// The name numbered `i`.
    pub fn get(&self, i: u32) -> &str {
        self.values.get(i)
    }

    /// How many names there are.
    pub fn len(&self) -> usize {
        self.values.ends.len()
    }

    /// No names yet.
    pub fn is_empty(&self) -> bool {
        self.values.ends.is_empty()
    }
}

/// The identifiers of one type, numbered from 0: a graph is built one type per thread
/// ([`Graph::from_types`]).
#[derive(Debug, Default)]
pub struct TypeNodes {
    ty: u8,
    index: ValueIndex,
    nodes: Vec<Node>,
    values: Texts,
}

impl TypeNodes {
    /// No identifiers of type `ty` yet.
    pub fn new(ty: u8) -> Self {
        TypeNodes {
            ty,
            ..Default::default()
        }
    }

    /// The type.
    pub fn ty(&self) -> u8 {
        self.ty
    }

    /// The number of `value`, if known.
    pub fn find(&self, value: &str) -> Option<u32> {
        self.index.find(value, |i| self.values.get(i))
    }

    /// Ask the processor for what [`TypeNodes::find`] of `value` reads first (a loop over
    /// a column calls it some values ahead: the lookups then wait less on memory).
    pub fn prefetch(&self, value: &str) {
        self.index.prefetch(value);
    }

    /// Record one touchpoint at `ts` on identifier `i`.
    pub fn touch_node(&mut self, i: u32, ts: i64) {
        self.nodes[i as usize].touch(ts);
    }

    /// The number of `value`, created if new; records one touchpoint at `ts`.
    pub fn touch(&mut self, value: &str, ts: i64) -> u32 {
        touch_in(
            &mut self.index,
            &mut self.nodes,
            &mut self.values,
            self.ty,
            value,
            ts,
        )
    }
}

/// Identifiers and the edges between them.
#[derive(Debug, Default, Clone)]
pub struct Graph {
    /// The nodes.
    pub nodes: Vec<Node>,
    /// The nodes' values, by node.
    values: Texts,
    /// Per identifier type: value → node.
    index: [ValueIndex; TYPES.len()],
    /// Edge → (first seen, last seen), in [`SHARDS`] maps by a hash of the edge, so that
    /// [`Graph::link_groups`] fills them in parallel.
    edges: [EdgeMap; SHARDS],
}

/// Edge `(a, b)` (`a < b`) → (first seen, last seen): open addressing with linear
/// probing over (key, first seen, last seen) slots, at most 3/4 full. An edge is one
/// slot read (a SwissTable reads its control bytes and its bucket apart), and a loop
/// over millions of edges can ask for the slot of an edge ahead
/// ([`EdgeMap::prefetch`]). Key 0 (the self-edge `(0, 0)`) marks an empty slot, so
/// that a new table is zeroed memory.
#[derive(Debug, Default, Clone)]
struct EdgeMap {
    slots: Vec<(u64, i64, i64)>,
    len: usize,
}

/// The key of an empty slot of an [`EdgeMap`].
const NO_EDGE: u64 = 0;

impl EdgeMap {
    fn key(a: u32, b: u32) -> u64 {
        u64::from(a) << 32 | u64::from(b)
    }

    /// The slot a key starts probing at (mixed apart from [`shard`]'s hash).
    fn home(&self, key: u64) -> usize {
        let bits = self.slots.len().trailing_zeros();
        let h = (key ^ key >> 29).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        ((h ^ h >> 32) >> (64 - bits)) as usize
    }

    /// Record edge `(a, b)` (`a < b`) seen at `ts`; returns whether it is new.
    fn record(&mut self, a: u32, b: u32, ts: i64) -> bool {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow(self.slots.len() * 2);
        }
        let key = Self::key(a, b);
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        loop {
            let slot = &mut self.slots[at];
            if slot.0 == key {
                slot.1 = slot.1.min(ts);
                slot.2 = slot.2.max(ts);
                return false;
            }
            if slot.0 == NO_EDGE {
                *slot = (key, ts, ts);
                self.len += 1;
                return true;
            }
            at = (at + 1) & mask;
        }
    }

    /// Ask the processor for the slot of edge `(a, b)` (see [`prefetch_at`]).
    fn prefetch(&self, a: u32, b: u32) {
        if !self.slots.is_empty() {
            prefetch_at(&self.slots, self.home(Self::key(a, b)));
        }
    }

    /// Room for `n` edges in all.
    fn reserve(&mut self, n: usize) {
        let size = (n * 4 / 3 + 1).next_power_of_two();
        if size > self.slots.len() {
            self.grow(size);
        }
    }

    /// `size` slots (a power of two, at least 1024), the edges placed again.
    fn grow(&mut self, size: usize) {
        let old = std::mem::replace(&mut self.slots, vec![(NO_EDGE, 0, 0); size.max(1024)]);
        let mask = self.slots.len() - 1;
        for slot in old.into_iter().filter(|s| s.0 != NO_EDGE) {
            let mut at = self.home(slot.0);
            while self.slots[at].0 != NO_EDGE {
                at = (at + 1) & mask;
            }
            self.slots[at] = slot;
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    /// The edges, in slot order.
    fn iter(&self) -> impl Iterator<Item = Edge> + '_ {
        self.slots
            .iter()
            .filter(|s| s.0 != NO_EDGE)
            .map(|&(key, first_seen, last_seen)| Edge {
                a: (key >> 32) as u32,
                b: key as u32,
                first_seen,
                last_seen,
            })
    }
}

/// Edge maps built in parallel (one per core of the machines this runs on).
const SHARDS: usize = 2;

/// The node of `value` in `index` (numbered by its place in `nodes` and `values`),
/// created if new; records one touchpoint at `ts`.
fn touch_in(
    index: &mut ValueIndex,
    nodes: &mut Vec<Node>,
    values: &mut Texts,
    ty: u8,
    value: &str,
    ts: i64,
) -> u32 {
    if let Some(i) = index.find(value, |i| values.get(i)) {
        nodes[i as usize].touch(ts);
        return i;
    }
    let i = nodes.len() as u32;
    nodes.push(Node {
        ty,
        first_seen: ts,
        last_seen: ts,
        touchpoints: 1,
    });
    values.push(value);
    index.insert(value, i);
    i
}

/// The edge between nodes `x` and `y` as `(smaller, larger)`; `None` for a self-edge.
fn edge(x: u32, y: u32) -> Option<(u32, u32)> {
    (x != y).then(|| (x.min(y), x.max(y)))
}

/// The shard of edge `(a, b)`.
fn shard(a: u32, b: u32) -> usize {
    let h = (u64::from(a) << 32 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 63) as usize % SHARDS
}

impl Graph {
    /// The node of `(ty, value)`, created if new; records one touchpoint at `ts`.
    pub fn touch(&mut self, ty: u8, value: &str, ts: i64) -> u32 {
        touch_in(
            &mut self.index[usize::from(ty)],
            &mut self.nodes,
            &mut self.values,
            ty,
            value,
            ts,
        )
    }

    /// The normalized value of node `i`.
    pub fn value(&self, i: u32) -> &str {
        self.values.get(i)
    }

    /// A graph of these identifiers (each type's in [`TYPES`] order, one after the
    /// other) and no edges; returns the number of each type's first node.
    pub fn from_types(types: Vec<TypeNodes>) -> (Graph, [u32; TYPES.len()]) {
        let mut g = Graph::default();
        // One allocation for all nodes: appending type by type to a growing vector
        // copied millions of nodes several times.
        g.nodes
            .reserve_exact(types.iter().map(|t| t.nodes.len()).sum());
        g.values
            .bytes
            .reserve_exact(types.iter().map(|t| t.values.bytes.len()).sum());
        g.values
            .ends
            .reserve_exact(types.iter().map(|t| t.values.ends.len()).sum());
        let mut first = [0u32; TYPES.len()];
        for mut t in types {
            let ty = usize::from(t.ty);
            let base = g.nodes.len() as u32;
            first[ty] = base;
            t.index.offset(base);
            g.nodes.append(&mut t.nodes);
            g.values.append(t.values);
            g.index[ty] = t.index;
        }
        (g, first)
    }

    /// Record one touchpoint at `ts` on node `i`.
    pub fn touch_node(&mut self, i: u32, ts: i64) {
        self.nodes[i as usize].touch(ts);
    }

    /// Ask the processor for what [`Graph::find`] of `(ty, value)` reads first (see
    /// [`TypeNodes::prefetch`]).
    pub fn prefetch(&self, ty: u8, value: &str) {
        if let Some(index) = self.index.get(usize::from(ty)) {
            index.prefetch(value);
        }
    }

    /// The node of `(ty, value)`, if any.
    pub fn find(&self, ty: u8, value: &str) -> Option<u32> {
        self.index
            .get(usize::from(ty))?
            .find(value, |i| self.values.get(i))
    }

    /// Record that `x` and `y` were seen together at `ts` (self-edges are ignored).
    /// Returns whether the edge is new.
    pub fn link(&mut self, x: u32, y: u32, ts: i64) -> bool {
        edge(x, y).is_some_and(|(a, b)| self.edges[shard(a, b)].record(a, b, ts))
    }

    /// The node of `(ty, value)` with the given activity, replacing what was recorded.
    pub fn set_node(
        &mut self,
        ty: u8,
        value: &str,
        first_seen: i64,
        last_seen: i64,
        n: i64,
    ) -> u32 {
        let i = self.touch(ty, value, first_seen);
        let node = &mut self.nodes[i as usize];
        node.first_seen = first_seen;
        node.last_seen = last_seen;
        node.touchpoints = n;
        i
    }

    /// Link every two nodes of each of `n` groups (`group(i)`: a touchpoint's time and
    /// nodes), [`SHARDS`] edge maps at once, one per thread.
    pub fn link_groups<'a>(&mut self, n: usize, group: impl Fn(usize) -> (i64, &'a [u32]) + Sync) {
        // Room for every pair (an upper bound of the new edges, capped): growing a map of
        // millions of edges rehashes it several times.
        let pairs: usize = (0..n)
            .map(|i| {
                let k = group(i).1.len();
                k * k.saturating_sub(1) / 2
            })
            .sum();
        std::thread::scope(|scope| {
            for (s, edges) in self.edges.iter_mut().enumerate() {
                let group = &group;
                scope.spawn(move || {
                    // At most 2^24 slots ahead (400 MB); a table grows past that when it
                    // holds 3/4 of them.
                    edges.reserve((pairs / SHARDS).min(3 << 22));
                    // This shard's pairs of each group, as (smaller, larger node, time).
                    let pairs = (0..n).flat_map(|i| {
                        let (ts, nodes) = group(i);
                        (0..nodes.len()).flat_map(move |x| {
                            (x + 1..nodes.len()).filter_map(move |y| {
                                edge(nodes[x], nodes[y])
                                    .filter(|&(a, b)| shard(a, b) == s)
                                    .map(|(a, b)| (a, b, ts))
                            })
                        })
                    });
                    each_ahead(
                        edges,
                        pairs,
                        |edges, &(a, b, _)| edges.prefetch(a, b),
                        |edges, (a, b, ts)| {
                            edges.record(a, b, ts);
                        },
                    );
                });
            }
        });
    }

    /// The number of edges.
    pub fn edge_count(&self) -> usize {
        self.edges.iter().map(|e| e.len()).sum()
    }

    /// Every edge, in no particular order.
    pub fn all_edges(&self) -> impl Iterator<Item = Edge> + '_ {
        self.edges.iter().flat_map(EdgeMap::iter)
    }

    /// The edges `keep` accepts, in application order: by time, then by their endpoints'
    /// (type, value), independent of the order nodes were created in.
    pub fn edges_in_order(&self, keep: impl Fn(&Edge) -> bool) -> Vec<Edge> {
        let edges: Vec<Edge> = self.all_edges().filter(|e| keep(e)).collect();
        // The rank of each endpoint in (type, value) order, so that the sort compares
        // integers.
        let mut order: Vec<u32> = edges.iter().flat_map(|e| [e.a, e.b]).collect();
        order.sort_unstable();
        order.dedup();
        order.sort_unstable_by(|&x, &y| {
            let (nx, ny) = (&self.nodes[x as usize], &self.nodes[y as usize]);
            (nx.ty, self.value(x)).cmp(&(ny.ty, self.value(y)))
        });
        let rank: FxHashMap<u32, u32> = order
            .iter()
            .enumerate()
            .map(|(r, &i)| (i, r as u32))
            .collect();
        let mut v: Vec<((i64, i64, u32, u32), Edge)> = edges
            .into_iter()
            .map(|e| {
                let (ra, rb) = (rank[&e.a], rank[&e.b]);
                ((e.first_seen, e.last_seen, ra.min(rb), ra.max(rb)), e)
            })
            .collect();
        v.sort_unstable_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, e)| e).collect()
    }
}

/// A manual rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `true`: always one person; `false`: never one person.
    pub include: bool,
    /// One identifier.
    pub a: (u8, String),
    /// The other.
    pub b: (u8, String),
}

/// The outcome of a resolution.
#[derive(Debug, Clone)]
pub struct Resolution {
    /// Per node: the representative node of its person.
    pub component: Vec<u32>,
    /// Nodes taken out by the degree guard.
    pub guarded: Vec<u32>,
    /// Edges not applied, and why.
    pub skipped: Vec<(Edge, Flag)>,
    /// Per node: distinct neighbours per type (before guards).
    pub degree: Vec<[u32; TYPES.len()]>,
    /// Edges in the graph.
    pub edges: usize,
    /// Per node: the representative of its cluster, the identifiers linked through edges
    /// between unguarded identifiers and include rules, before limits and exclude rules.
    /// A cluster is resolved on its own: its persons depend on nothing outside it.
    pub cluster: Vec<u32>,
}

struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
    counts: Vec<[u32; TYPES.len()]>,
    excludes: HashMap<u32, Vec<u32>>,
}

impl UnionFind {
    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }

    fn union(&mut self, ra: u32, rb: u32) {
        let (big, small) = if self.size[ra as usize] >= self.size[rb as usize] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        self.parent[small as usize] = big;
        self.size[big as usize] += self.size[small as usize];
        let c = self.counts[small as usize];
        for (t, n) in c.iter().enumerate() {
            self.counts[big as usize][t] += n;
        }
        if let Some(ex) = self.excludes.remove(&small) {
            self.excludes.entry(big).or_default().extend(ex);
        }
    }
}

/// Resolve `graph` into persons under `config` and the manual `rules`.
pub fn resolve(graph: &Graph, config: &Config, rules: &[Rule]) -> Resolution {
    resolve_with(graph, config, rules, &[])
}

/// [`resolve`], with nodes known to be guarded already (`pre_guarded[i]`; an identifier's
/// degree only grows as touchpoints arrive, so a guarded one stays guarded).
pub fn resolve_with(
    graph: &Graph,
    config: &Config,
    rules: &[Rule],
    pre_guarded: &[bool],
) -> Resolution {
    let n = graph.nodes.len();

    // Degree per node and type (distinct neighbours; edges are distinct pairs).
    let mut degree = vec![[0u32; TYPES.len()]; n];
    let nodes = &graph.nodes;
    each_ahead(
        &mut degree,
        graph.all_edges(),
        |degree, e| {
            for x in [e.a as usize, e.b as usize] {
                prefetch_at(nodes, x);
                prefetch_at(degree, x);
            }
        },
        |degree, e| {
            let (ta, tb) = (
                nodes[e.a as usize].ty as usize,
                nodes[e.b as usize].ty as usize,
            );
            degree[e.a as usize][tb] += 1;
            degree[e.b as usize][ta] += 1;
        },
    );
    let guarded_flag: Vec<bool> = (0..n)
        .map(|i| {
            let max = config.max_degree[graph.nodes[i].ty as usize];
            pre_guarded.get(i).copied().unwrap_or(false)
                || max != usize::MAX
                    && degree[i]
                        .iter()
                        .enumerate()
                        .any(|(t, &d)| config.strong[t] && d as usize > max)
        })
        .collect();
    let unguarded = |e: &Edge| !guarded_flag[e.a as usize] && !guarded_flag[e.b as usize];

    // Manual rules: exclusions are remembered per node; inclusions applied first.
    let mut forced = vec![];
    let mut excludes: HashMap<u32, Vec<u32>> = HashMap::new();
    for r in rules {
        let (Some(a), Some(b)) = (graph.find(r.a.0, &r.a.1), graph.find(r.b.0, &r.b.1)) else {
            continue;
        };
        if r.include {
            forced.push((a, b));
        } else {
            excludes.entry(a).or_default().push(b);
            excludes.entry(b).or_default().push(a);
        }
    }
    // Clusters: every unguarded edge and every include pair.
    let mut clusters = Clusters((0..n as u32).collect());
    for &(a, b) in &forced {
        clusters.union(a, b);
    }
    each_ahead(
        &mut clusters,
        graph.all_edges().filter(unguarded),
        |clusters, e| {
            prefetch_at(&clusters.0, e.a as usize);
            prefetch_at(&clusters.0, e.b as usize);
        },
        |clusters, e| clusters.union(e.a, e.b),
    );
    let cluster: Vec<u32> = (0..n as u32).map(|i| clusters.find(i)).collect();

    // A cluster within every limit and without an excluded identifier is one person,
    // whatever the order of its edges. Only the others are resolved edge by edge.
    let mut counts: FxHashMap<u32, [u32; TYPES.len()]> = FxHashMap::default();
    let limited: Vec<usize> = (0..TYPES.len())
        .filter(|&t| config.limit[t] != usize::MAX)
        .collect();
    if !limited.is_empty() {
        for (i, node) in graph.nodes.iter().enumerate() {
            if config.limit[node.ty as usize] != usize::MAX {
                counts.entry(cluster[i]).or_default()[node.ty as usize] += 1;
            }
        }
    }
    let mut contested: Vec<bool> = vec![false; n];
    for (c, k) in &counts {
        if limited.iter().any(|&t| k[t] as usize > config.limit[t]) {
            contested[*c as usize] = true;
        }
    }
    for a in excludes.keys() {
        contested[cluster[*a as usize] as usize] = true;
    }
    let is_contested = |i: u32| contested[cluster[i as usize] as usize];

    let mut skipped = vec![];
    let component = if contested.iter().any(|&c| c) {
        resolve_contested(
            graph,
            config,
            excludes,
            &forced,
            &unguarded,
            &is_contested,
            &cluster,
            &mut skipped,
        )
    } else {
        // Every cluster is one person (include pairs are inside their cluster).
        cluster.clone()
    };
    Resolution {
        component,
        guarded: (0..n as u32)
            .filter(|&i| guarded_flag[i as usize])
            .collect(),
        skipped,
        degree,
        edges: graph.edge_count(),
        cluster,
    }
}

/// The persons of the contested clusters, applying their edges in order under the limits
/// and exclude rules (the skipped ones are added to `skipped`); every other node's person
/// is its cluster.
#[allow(clippy::too_many_arguments)]
fn resolve_contested(
    graph: &Graph,
    config: &Config,
    excludes: HashMap<u32, Vec<u32>>,
    forced: &[(u32, u32)],
    unguarded: &impl Fn(&Edge) -> bool,
    is_contested: &impl Fn(u32) -> bool,
    cluster: &[u32],
    skipped: &mut Vec<(Edge, Flag)>,
) -> Vec<u32> {
    let n = graph.nodes.len();
    let mut uf = UnionFind {
        parent: (0..n as u32).collect(),
        size: vec![1; n],
        counts: graph
            .nodes
            .iter()
            .map(|nd| {
                let mut c = [0u32; TYPES.len()];
                c[nd.ty as usize] = 1;
                c
            })
            .collect(),
        excludes,
    };
    for &(a, b) in forced {
        let (ra, rb) = (uf.find(a), uf.find(b));
        if ra != rb {
            uf.union(ra, rb);
        }
    }
    for e in graph.edges_in_order(|e| unguarded(e) && is_contested(e.a)) {
        let (ra, rb) = (uf.find(e.a), uf.find(e.b));
        if ra == rb {
            continue;
        }
        let over = (0..TYPES.len()).any(|t| {
            config.limit[t] != usize::MAX
                && (uf.counts[ra as usize][t] + uf.counts[rb as usize][t]) as usize
                    > config.limit[t]
        });
        if over {
            skipped.push((e, Flag::CardinalityViolation));
            continue;
        }
        if excluded(&mut uf, ra, rb) {
            skipped.push((e, Flag::Excluded));
            continue;
        }
        uf.union(ra, rb);
    }
    // Uncontested clusters are their person; a contested one's persons are the
    // union-find's (its representatives are nodes of that cluster, so never another's).
    (0..n as u32)
        .map(|i| {
            if is_contested(i) {
                uf.find(i)
            } else {
                cluster[i as usize]
            }
        })
        .collect()
}

/// A plain union-find for clusters.
struct Clusters(Vec<u32>);

impl Clusters {
    fn find(&mut self, mut x: u32) -> u32 {
        while self.0[x as usize] != x {
            let p = self.0[x as usize];
            self.0[x as usize] = self.0[p as usize];
            x = p;
        }
        x
    }

    fn union(&mut self, a: u32, b: u32) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.0[ra.max(rb) as usize] = ra.min(rb);
        }
    }
}

/// Whether joining the persons `ra` and `rb` would put an excluded pair together.
fn excluded(uf: &mut UnionFind, ra: u32, rb: u32) -> bool {
    let (small, other) = match (uf.excludes.get(&ra), uf.excludes.get(&rb)) {
        (None, _) | (_, None) => return false,
        (Some(x), Some(y)) if x.len() <= y.len() => (x.clone(), rb),
        (Some(_), Some(y)) => (y.clone(), ra),
    };
    small.into_iter().any(|p| uf.find(p) == other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(rows: &[&[(&str, &str)]]) -> Graph {
        let mut g = Graph::default();
        for (t, row) in rows.iter().enumerate() {
            let ids: Vec<u32> = row
                .iter()
                .map(|(ty, v)| g.touch(type_index(ty).unwrap(), v, t as i64))
                .collect();
            for i in 0..ids.len() {
                for j in i + 1..ids.len() {
                    g.link(ids[i], ids[j], t as i64);
                }
            }
        }
        g
    }

    fn same(g: &Graph, r: &Resolution, a: (&str, &str), b: (&str, &str)) -> bool {
        let x = g.find(type_index(a.0).unwrap(), a.1).unwrap();
        let y = g.find(type_index(b.0).unwrap(), b.1).unwrap();
        r.component[x as usize] == r.component[y as usize]
    }

    #[test]
    fn types_numbered_apart_keep_their_values_when_joined() {
        let (phone, email) = (type_index("phone").unwrap(), type_index("email").unwrap());
        let mut types: Vec<TypeNodes> = (0..TYPES.len() as u8).map(TypeNodes::new).collect();
        // Enough values to grow the index several times.
        for i in 0..5000 {
            types[phone as usize].touch(&format!("+86138{i:08}"), i);
            types[email as usize].touch(&format!("u{i}@x.com"), i);
        }
        assert_eq!(types[email as usize].touch("u7@x.com", 9000), 7);
        let (mut g, first) = Graph::from_types(types);
        assert_eq!(first[email as usize], first[phone as usize] + 5000);
        for i in [0, 1, 4999] {
            let p = g.find(phone, &format!("+86138{i:08}")).unwrap();
            let e = g.find(email, &format!("u{i}@x.com")).unwrap();
            assert_eq!(g.value(p), format!("+86138{i:08}"));
            assert_eq!(g.value(e), format!("u{i}@x.com"));
            assert_eq!(g.nodes[e as usize].ty, email);
        }
        assert_eq!(g.find(email, "+8613800000000"), None);
        assert_eq!(
            g.nodes[g.find(email, "u7@x.com").unwrap() as usize].touchpoints,
            2
        );
        // A node added after the join gets the next number and is found.
        let n = g.touch(phone, "+8613900000000", 1);
        assert_eq!(n as usize, g.nodes.len() - 1);
        assert_eq!(g.find(phone, "+8613900000000"), Some(n));
        assert_eq!(g.value(n), "+8613900000000");
    }

    #[test]
    fn shared_device_is_not_a_connector() {
        let mut rows: Vec<Vec<(&str, &str)>> = vec![];
        let members: Vec<String> = (0..8).map(|i| format!("M{i}")).collect();
        for m in &members {
            rows.push(vec![("device_id", "tablet"), ("member_id", m.as_str())]);
        }
        rows.push(vec![("member_id", "M0"), ("phone", "+8613800000000")]);
        let refs: Vec<&[(&str, &str)]> = rows.iter().map(|r| r.as_slice()).collect();
        let g = graph(&refs);
        let r = resolve(&g, &Config::default(), &[]);
        assert!(!same(&g, &r, ("member_id", "M0"), ("member_id", "M1")));
        assert!(same(
            &g,
            &r,
            ("member_id", "M0"),
            ("phone", "+8613800000000")
        ));
        assert_eq!(r.guarded.len(), 1);
        let r = resolve(&g, &Config::unguarded(), &[]);
        assert!(same(&g, &r, ("member_id", "M0"), ("member_id", "M7")));
    }

    #[test]
    fn earliest_edge_wins_a_limit_and_rules_override() {
        // e-mail shared by two member cards: the earlier link wins.
        let g = graph(&[
            &[("email", "a@x.com"), ("member_id", "M1")],
            &[("email", "a@x.com"), ("member_id", "M2")],
            &[("member_id", "M2"), ("phone", "+1")],
        ]);
        let r = resolve(&g, &Config::default(), &[]);
        assert!(same(&g, &r, ("email", "a@x.com"), ("member_id", "M1")));
        assert!(!same(&g, &r, ("email", "a@x.com"), ("member_id", "M2")));
        assert_eq!(r.skipped.len(), 1);
        assert_eq!(r.skipped[0].1, Flag::CardinalityViolation);
        let exclude = Rule {
            include: false,
            a: (type_index("email").unwrap(), "a@x.com".into()),
            b: (type_index("member_id").unwrap(), "M1".into()),
        };
        let r = resolve(&g, &Config::default(), std::slice::from_ref(&exclude));
        assert!(same(&g, &r, ("email", "a@x.com"), ("member_id", "M2")));
        assert!(!same(&g, &r, ("email", "a@x.com"), ("member_id", "M1")));
        let include = Rule {
            include: true,
            ..exclude
        };
        let r = resolve(&g, &Config::default(), &[include]);
        assert!(same(&g, &r, ("email", "a@x.com"), ("member_id", "M1")));
    }

    #[test]
    fn names_are_numbered_in_the_order_first_met() {
        let mut n = Names::default();
        assert!(n.is_empty());
        let ids: Vec<u32> = ["p1", "p2", "p1", "", "p3", "p2"]
            .iter()
            .map(|s| n.number(s))
            .collect();
        assert_eq!(ids, [0, 1, 0, 2, 3, 1]);
        assert_eq!(n.len(), 4);
        assert_eq!((n.get(0), n.get(2), n.get(3)), ("p1", "", "p3"));
    }

    #[test]
    fn edge_map_keeps_each_edge_once_with_its_first_and_last_time() {
        let mut m = EdgeMap::default();
        // Enough edges to grow the table several times.
        for i in 0..5000u32 {
            assert!(m.record(i, i + 1, 100 + i64::from(i)));
        }
        assert!(!m.record(7, 8, 5));
        assert!(!m.record(7, 8, 10_000));
        assert!(m.record(0, 4999, 1));
        assert_eq!(m.len(), 5001);
        let edges: HashMap<(u32, u32), (i64, i64)> = m
            .iter()
            .map(|e| ((e.a, e.b), (e.first_seen, e.last_seen)))
            .collect();
        assert_eq!(edges.len(), 5001);
        assert_eq!(edges[&(7, 8)], (5, 10_000));
        assert_eq!(edges[&(4000, 4001)], (4100, 4100));
        assert_eq!(edges[&(0, 4999)], (1, 1));
        m.prefetch(1, 2);
        let mut r = EdgeMap::default();
        r.reserve(3000);
        assert_eq!(r.slots.len(), 4096);
    }
}
