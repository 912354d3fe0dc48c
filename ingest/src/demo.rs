//! The demo lake: a deterministic, multi-channel sample of customer touchpoints that
//! scales from thousands to millions of persons (`touchlake demo --persons N`).
//!
//! The same seed and person count always give the same rows. For speed at millions of
//! persons the generator writes the unified tables directly (with its own persons as the
//! first mapping); `touchlake demo` then ingests three channels from raw files
//! ([`crate::demo_landing`]) and runs identity resolution over all of it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, Decimal128Builder, Int32Builder, Int64Builder, RecordBatch,
    StringBuilder, TimestampMicrosecondBuilder, new_null_array,
};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use deltalake::protocol::SaveMode;
use touchlake_catalog::{Lake, Result};

use crate::tables;

/// What the demo writes.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Number of persons (≈ 44 touchpoints each on average).
    pub persons: u64,
    /// Seed of the generator.
    pub seed: u64,
    /// Persons per Delta commit (bounds memory for large runs).
    pub persons_per_commit: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            persons: 5_000,
            seed: 42,
            persons_per_commit: 20_000,
        }
    }
}

/// Counts of what was written.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct DemoSummary {
    /// Rows in `unified.touchpoints`.
    pub touchpoints: u64,
    /// Rows in `unified.persons`.
    pub persons: u64,
    /// Rows in `unified.identities`.
    pub identities: u64,
}

/// splitmix64: small, fast and deterministic on every platform.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// A channel: (channel, channel_type, source, events with their weights).
type Channel = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, u64)],
);

const CHANNELS: &[Channel] = &[
    (
        "app",
        "online",
        "app_events",
        &[
            ("page_view", 40),
            ("click", 20),
            ("login", 8),
            ("add_to_cart", 8),
            ("checkout", 4),
            ("purchase", 3),
        ],
    ),
    (
        "web",
        "online",
        "web_events",
        &[
            ("page_view", 45),
            ("search", 12),
            ("click", 15),
            ("register", 2),
            ("add_to_cart", 6),
            ("purchase", 2),
        ],
    ),
    (
        "mini_program",
        "online",
        "wechat_mp",
        &[
            ("page_view", 30),
            ("click", 12),
            ("coupon_scan", 5),
            ("follow", 3),
            ("purchase", 3),
        ],
    ),
    (
        "store_pos",
        "offline",
        "pos_orders",
        &[
            ("store_visit", 10),
            ("purchase", 8),
            ("coupon_scan", 3),
            ("refund", 1),
        ],
    ),
    (
        "call_center",
        "offline",
        "cc_calls",
        &[("service_call", 8), ("complaint", 2)],
    ),
    (
        "crm",
        "hybrid",
        "crm_members",
        &[("register", 2), ("message_sent", 3)],
    ),
    (
        "email",
        "online",
        "esp_email",
        &[
            ("message_sent", 10),
            ("message_open", 5),
            ("message_click", 2),
        ],
    ),
    (
        "sms",
        "online",
        "sms_gateway",
        &[("message_sent", 6), ("message_click", 1)],
    ),
    ("survey", "hybrid", "survey_tool", &[("survey_response", 3)]),
];
/// Relative frequency of each channel in a person's journey.
const CHANNEL_WEIGHTS: &[u64] = &[30, 22, 18, 10, 4, 3, 7, 3, 3];
const CAMPAIGNS: &[&str] = &[
    "spring_sale",
    "618",
    "double11",
    "member_day",
    "new_arrivals",
    "winback",
];
const CONTENT: &[&str] = &[
    "home",
    "search",
    "product/123",
    "product/456",
    "product/789",
    "cart",
    "checkout",
    "promo",
    "help",
    "account",
];

fn pick<'a, T>(rng: &mut Rng, items: &'a [(T, u64)]) -> &'a T {
    let total: u64 = items.iter().map(|(_, w)| w).sum();
    let mut r = rng.below(total);
    for (t, w) in items {
        if r < *w {
            return t;
        }
        r -= w;
    }
    &items[items.len() - 1].0
}

fn pick_index(rng: &mut Rng, weights: &[u64]) -> usize {
    let total: u64 = weights.iter().sum();
    let mut r = rng.below(total);
    for (i, w) in weights.iter().enumerate() {
        if r < *w {
            return i;
        }
        r -= w;
    }
    weights.len() - 1
}

/// FNV-1a, for deterministic touchpoint ids.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0)) {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// 2026-01-01T00:00:00Z in microseconds.
const START_US: i64 = 1_767_225_600_000_000;
const DAY_US: i64 = 86_400_000_000;
const SPAN_DAYS: i64 = 300;

struct Identity {
    phone: Option<String>,
    email: Option<String>,
    devices: Vec<String>,
    member_id: Option<String>,
    openid: Option<String>,
    user_id: Option<String>,
}

fn identity(rng: &mut Rng, p: u64) -> Identity {
    Identity {
        phone: rng.chance(0.8).then(|| {
            format!(
                "+861{:02}{:08}",
                30 + rng.below(60),
                (p * 7919 + 1234) % 100_000_000
            )
        }),
        email: rng
            .chance(0.6)
            .then(|| format!("user{p}@example{}.com", p % 7)),
        devices: (0..1 + rng.below(2))
            .map(|d| format!("dev-{p:08x}-{d}"))
            .collect(),
        member_id: rng.chance(0.5).then(|| format!("M{:09}", p)),
        openid: rng
            .chance(0.4)
            .then(|| format!("o{:x}", fnv(&["openid", &p.to_string()]) >> 8)),
        user_id: rng.chance(0.7).then(|| format!("u{p}")),
    }
}

struct TouchpointColumns {
    schema: SchemaRef,
    id: StringBuilder,
    at: TimestampMicrosecondBuilder,
    channel: StringBuilder,
    channel_type: StringBuilder,
    event_type: StringBuilder,
    source: StringBuilder,
    person_id: StringBuilder,
    user_id: StringBuilder,
    anonymous_id: StringBuilder,
    phone: StringBuilder,
    email: StringBuilder,
    device_id: StringBuilder,
    member_id: StringBuilder,
    openid: StringBuilder,
    store_id: StringBuilder,
    campaign: StringBuilder,
    content: StringBuilder,
    revenue: Decimal128Builder,
    currency: StringBuilder,
    score: Int32Builder,
    duration: Int64Builder,
    properties: StringBuilder,
    run_id: StringBuilder,
    ingested_at: TimestampMicrosecondBuilder,
    rows: u64,
}

impl TouchpointColumns {
    fn new() -> Self {
        let ts = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
        TouchpointColumns {
            schema: tables::touchpoints(),
            id: StringBuilder::new(),
            at: ts(),
            channel: StringBuilder::new(),
            channel_type: StringBuilder::new(),
            event_type: StringBuilder::new(),
            source: StringBuilder::new(),
            person_id: StringBuilder::new(),
            user_id: StringBuilder::new(),
            anonymous_id: StringBuilder::new(),
            phone: StringBuilder::new(),
            email: StringBuilder::new(),
            device_id: StringBuilder::new(),
            member_id: StringBuilder::new(),
            openid: StringBuilder::new(),
            store_id: StringBuilder::new(),
            campaign: StringBuilder::new(),
            content: StringBuilder::new(),
            revenue: Decimal128Builder::new()
                .with_precision_and_scale(18, 2)
                .unwrap_or_default(),
            currency: StringBuilder::new(),
            score: Int32Builder::new(),
            duration: Int64Builder::new(),
            properties: StringBuilder::new(),
            run_id: StringBuilder::new(),
            ingested_at: ts(),
            rows: 0,
        }
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.at.finish()),
            Arc::new(self.channel.finish()),
            Arc::new(self.channel_type.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.source.finish()),
            Arc::new(self.person_id.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.anonymous_id.finish()),
            Arc::new(self.phone.finish()),
            Arc::new(self.email.finish()),
            Arc::new(self.device_id.finish()),
            Arc::new(self.member_id.finish()),
            Arc::new(self.openid.finish()),
            Arc::new(self.store_id.finish()),
            Arc::new(self.campaign.finish()),
            Arc::new(self.content.finish()),
            Arc::new(self.revenue.finish()),
            Arc::new(self.currency.finish()),
            Arc::new(self.score.finish()),
            Arc::new(self.duration.finish()),
            Arc::new(self.properties.finish()),
            Arc::new(self.run_id.finish()),
            Arc::new(self.ingested_at.finish()),
        ];
        self.rows = 0;
        Ok(RecordBatch::try_new(self.schema.clone(), cols)
            .map_err(datafusion::error::DataFusionError::from)?)
    }
}

#[derive(Default)]
struct PersonAgg {
    first: i64,
    last: i64,
    touchpoints: i64,
    channels: BTreeSet<&'static str>,
    orders: i64,
    revenue_cents: i128,
    ids: BTreeMap<(&'static str, String), (i64, i64, i64)>,
}

/// Generate one chunk of persons `[from, to)`; returns (touchpoints, persons, identities) batches.
fn chunk(
    opts: &DemoOptions,
    from: u64,
    to: u64,
) -> Result<(RecordBatch, RecordBatch, RecordBatch)> {
    let run_id = format!("demo-{}", opts.seed);
    let ingested_at = START_US + SPAN_DAYS * DAY_US + DAY_US;
    let mut tp = TouchpointColumns::new();
    let mut persons: Vec<(String, PersonAgg)> = vec![];
    for p in from..to {
        let mut rng = Rng(opts.seed ^ p.wrapping_mul(0x2545_F491_4F6C_DD1D));
        let id = identity(&mut rng, p);
        let person_id = format!("p{:08}", p);
        let mut agg = PersonAgg {
            first: i64::MAX,
            last: i64::MIN,
            ..Default::default()
        };
        // Journeys: a few visits, each a burst of touchpoints within an hour or so.
        let visits = 4 + rng.below(20);
        let mut t = START_US + (rng.below((SPAN_DAYS as u64) * 86_400) as i64) * 1_000_000 / 2;
        let mut seq = 0u64;
        let home_store = format!("S{:03}", p % 120);
        for _ in 0..visits {
            let ch = pick_index(&mut rng, CHANNEL_WEIGHTS);
            let (channel, channel_type, source, events) = CHANNELS[ch];
            let burst = 1 + rng.below(if channel_type == "offline" { 3 } else { 7 });
            let campaign = rng
                .chance(0.3)
                .then(|| CAMPAIGNS[rng.below(CAMPAIGNS.len() as u64) as usize]);
            for _ in 0..burst {
                if t >= START_US + SPAN_DAYS * DAY_US {
                    break;
                }
                let event = *pick(&mut rng, events);
                seq += 1;
                let key = format!("{p}:{seq}");
                tp.id.append_value(format!("{:016x}", fnv(&[source, &key])));
                tp.at.append_value(t);
                tp.channel.append_value(channel);
                tp.channel_type.append_value(channel_type);
                tp.event_type.append_value(event);
                tp.source.append_value(source);
                // Which identifiers does this channel see?
                let device = id.devices[rng.below(id.devices.len() as u64) as usize].clone();
                let (phone, email, dev, member, openid, user) = match channel {
                    "app" => (None, None, Some(device), None, None, id.user_id.clone()),
                    "web" => (
                        None,
                        rng.chance(0.2).then(|| id.email.clone()).flatten(),
                        None,
                        None,
                        None,
                        id.user_id.clone(),
                    ),
                    "mini_program" => (
                        rng.chance(0.3).then(|| id.phone.clone()).flatten(),
                        None,
                        None,
                        None,
                        id.openid.clone(),
                        None,
                    ),
                    "store_pos" => (
                        id.phone.clone(),
                        None,
                        None,
                        id.member_id.clone(),
                        None,
                        None,
                    ),
                    "call_center" => (id.phone.clone(), None, None, None, None, None),
                    "crm" => (
                        id.phone.clone(),
                        id.email.clone(),
                        None,
                        id.member_id.clone(),
                        None,
                        None,
                    ),
                    "email" => (None, id.email.clone(), None, None, None, None),
                    "sms" => (id.phone.clone(), None, None, None, None, None),
                    _ => (None, id.email.clone(), None, None, None, id.user_id.clone()),
                };
                let anon = (channel == "web" && user.is_none())
                    .then(|| format!("anon-{:x}", fnv(&["anon", &p.to_string()])));
                let identified = [&phone, &email, &dev, &member, &openid, &user]
                    .iter()
                    .any(|v| v.is_some());
                if identified {
                    tp.person_id.append_value(&person_id);
                } else {
                    tp.person_id.append_null();
                }
                for (b, v) in [
                    (&mut tp.user_id, &user),
                    (&mut tp.anonymous_id, &anon),
                    (&mut tp.phone, &phone),
                    (&mut tp.email, &email),
                    (&mut tp.device_id, &dev),
                    (&mut tp.member_id, &member),
                    (&mut tp.openid, &openid),
                ] {
                    b.append_option(v.as_deref());
                }
                if channel == "store_pos" {
                    tp.store_id.append_value(&home_store);
                } else {
                    tp.store_id.append_null();
                }
                tp.campaign.append_option(campaign);
                if channel_type == "online"
                    && matches!(event, "page_view" | "click" | "add_to_cart")
                {
                    tp.content
                        .append_value(CONTENT[rng.below(CONTENT.len() as u64) as usize]);
                } else {
                    tp.content.append_null();
                }
                let cents: Option<i128> = match event {
                    "purchase" => Some((1_000 + rng.below(150_000)) as i128),
                    "refund" => Some(-((500 + rng.below(50_000)) as i128)),
                    _ => None,
                };
                tp.revenue.append_option(cents);
                tp.currency.append_option(cents.map(|_| "CNY"));
                tp.score
                    .append_option((event == "survey_response").then(|| rng.below(11) as i32));
                tp.duration.append_option(match event {
                    "service_call" | "complaint" => Some((30 + rng.below(900)) as i64 * 1000),
                    "page_view" => Some(rng.below(120_000) as i64),
                    _ => None,
                });
                tp.properties.append_value(format!("{{\"seq\":{seq}}}"));
                tp.run_id.append_value(&run_id);
                tp.ingested_at.append_value(ingested_at);
                tp.rows += 1;
                if identified {
                    agg.first = agg.first.min(t);
                    agg.last = agg.last.max(t);
                    agg.touchpoints += 1;
                    agg.channels.insert(channel);
                    if event == "purchase" {
                        agg.orders += 1;
                    }
                    agg.revenue_cents += cents.unwrap_or(0);
                    for (kind, v) in [
                        ("phone", &phone),
                        ("email", &email),
                        ("device_id", &dev),
                        ("member_id", &member),
                        ("openid", &openid),
                        ("user_id", &user),
                    ] {
                        if let Some(v) = v {
                            let e = agg.ids.entry((kind, v.clone())).or_insert((t, t, 0));
                            e.0 = e.0.min(t);
                            e.1 = e.1.max(t);
                            e.2 += 1;
                        }
                    }
                }
                t += (5 + rng.below(600) as i64) * 1_000_000;
            }
            // Next visit: hours to weeks later.
            t += (3_600 + rng.below(30 * 86_400) as i64) * 1_000_000;
        }
        if agg.touchpoints > 0 {
            persons.push((person_id, agg));
        }
    }
    let touchpoints = tp.finish()?;

    let ts = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut pid, mut first, mut last) = (StringBuilder::new(), ts(), ts());
    let (mut n, mut ch, mut orders, mut idn) = (
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
        Int64Builder::new(),
    );
    let mut rev = Decimal128Builder::new()
        .with_precision_and_scale(18, 2)
        .unwrap_or_default();
    let (mut it, mut iv, mut ip, mut ifirst, mut ilast, mut in_) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        ts(),
        ts(),
        Int64Builder::new(),
    );
    for (id, a) in &persons {
        pid.append_value(id);
        first.append_value(a.first);
        last.append_value(a.last);
        n.append_value(a.touchpoints);
        ch.append_value(a.channels.len() as i64);
        orders.append_value(a.orders);
        rev.append_value(a.revenue_cents);
        idn.append_value(a.ids.len() as i64);
        for ((kind, v), (f, l, c)) in &a.ids {
            it.append_value(kind);
            iv.append_value(v);
            ip.append_value(id);
            ifirst.append_value(*f);
            ilast.append_value(*l);
            in_.append_value(*c);
        }
    }
    let n_persons = pid.len();
    let persons = RecordBatch::try_new(
        tables::persons(),
        vec![
            Arc::new(pid.finish()),
            Arc::new(first.finish()),
            Arc::new(last.finish()),
            Arc::new(n.finish()),
            Arc::new(ch.finish()),
            Arc::new(orders.finish()),
            Arc::new(rev.finish()),
            Arc::new(idn.finish()),
            new_null_array(&DataType::Utf8, n_persons),
            new_null_array(&DataType::Utf8, n_persons),
        ],
    )
    .map_err(datafusion::error::DataFusionError::from)?;
    let n_identities = it.len();
    let identities = RecordBatch::try_new(
        tables::identities(),
        vec![
            Arc::new(it.finish()),
            Arc::new(iv.finish()),
            Arc::new(ip.finish()),
            Arc::new(ifirst.finish()),
            Arc::new(ilast.finish()),
            Arc::new(in_.finish()),
            new_null_array(&DataType::Utf8, n_identities),
        ],
    )
    .map_err(datafusion::error::DataFusionError::from)?;
    Ok((touchpoints, persons, identities))
}

async fn append(lake: &Lake, schema: &str, table: &str, batch: RecordBatch) -> Result<()> {
    let t = lake.table_builder(schema, table)?.load().await?;
    t.write(vec![batch])
        .with_save_mode(SaveMode::Append)
        .await?;
    lake.invalidate(schema, table).await;
    Ok(())
}

/// Lay `unified.touchpoints` out by person (`OPTIMIZE unified.touchpoints ZORDER BY
/// (person_id)`): a person's touchpoints then sit in one row group, so a journey query
/// reads one, and grouping by person meets each person's rows together. Returns the files
/// (added, removed).
pub async fn cluster_by_person(lake: &Lake) -> Result<(u64, u64)> {
    let t = lake.table_builder("unified", "touchpoints")?.load().await?;
    let metrics =
        tables::optimize(lake, t, "unified", "touchpoints", vec!["person_id".into()]).await?;
    Ok((metrics.num_files_added, metrics.num_files_removed))
}

/// Does the lake already hold the demo (so `touchlake demo` does not write it twice)?
pub async fn exists(lake: &Lake) -> Result<bool> {
    Ok(lake.table("unified", "touchpoints").await?.is_some())
}

/// Write the demo lake: `unified.*` with data, `quality.*` empty.
pub async fn generate(
    lake: &Lake,
    opts: &DemoOptions,
    mut progress: impl FnMut(u64, u64),
) -> Result<DemoSummary> {
    tables::ensure(lake).await?;
    let mut summary = DemoSummary::default();
    let step = opts.persons_per_commit.max(1);
    let mut from = 0;
    while from < opts.persons {
        let to = (from + step).min(opts.persons);
        let (tp, persons, ids) = chunk(opts, from, to)?;
        summary.touchpoints += tp.num_rows() as u64;
        summary.persons += persons.num_rows() as u64;
        summary.identities += ids.num_rows() as u64;
        append(lake, "unified", "touchpoints", tp).await?;
        append(lake, "unified", "persons", persons).await?;
        append(lake, "unified", "identities", ids).await?;
        progress(to, opts.persons);
        from = to;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_deterministic_and_consistent() {
        let opts = DemoOptions {
            persons: 200,
            seed: 7,
            persons_per_commit: 200,
        };
        let (a, pa, _) = chunk(&opts, 0, 200).unwrap();
        let (b, _, _) = chunk(&opts, 0, 200).unwrap();
        assert_eq!(a, b);
        // Every person_id in touchpoints has a person row.
        let persons: BTreeSet<String> = pa
            .column(0)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap()
            .iter()
            .flatten()
            .map(str::to_string)
            .collect();
        let tp_persons = a
            .column(6)
            .as_any()
            .downcast_ref::<datafusion::arrow::array::StringArray>()
            .unwrap();
        for p in tp_persons.iter().flatten() {
            assert!(persons.contains(p), "{p} missing from persons");
        }
        assert!(
            a.num_rows() > 200 * 20,
            "about 44 touchpoints per person, got {}",
            a.num_rows()
        );
    }
}
