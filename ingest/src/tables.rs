//! Arrow schemas of the contract's tables (`../shared/guide/contract.md`).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn text(name: &str, nullable: bool) -> Field {
    Field::new(name, DataType::Utf8, nullable)
}

/// Rows per Parquet row group of `unified.touchpoints`, the table every analytics query
/// scans. A row group is the unit a scan hands to one core: with Parquet's default (1Mi
/// rows), a million touchpoints were one row group and a query ran on one core; at 128Ki
/// the TouchBench queries at 1M touchpoints took 30–45% less time (Q2 0.21–0.31 →
/// 0.15–0.17 s, Q6 0.14 → 0.09 s).
pub const TOUCHPOINTS_ROW_GROUP_ROWS: usize = 128 * 1024;

/// Dictionary page limit of the raw landing tables' columns (see [`writer_properties`]).
const RAW_DICTIONARY_LIMIT: usize = 64 * 1024;

/// Compact `schema.name` (`t`, as loaded) in one commit with the table's own Parquet
/// settings, ordered by `zorder` when it names columns; the lake's cached copy is then
/// refreshed. `OPTIMIZE` over SQL, the scheduled compaction and the demo's layout use it.
pub async fn optimize(
    lake: &touchlake_catalog::Lake,
    t: deltalake::DeltaTable,
    schema: &str,
    name: &str,
    zorder: Vec<String>,
) -> touchlake_catalog::Result<deltalake::operations::optimize::Metrics> {
    let mut op = t
        .optimize()
        .with_writer_properties(writer_properties(schema, name));
    if !zorder.is_empty() {
        op = op.with_type(deltalake::operations::optimize::OptimizeType::ZOrder(
            zorder,
        ));
    }
    let (_, metrics) = op.await.map_err(touchlake_catalog::CatalogError::from)?;
    lake.invalidate(schema, name).await;
    Ok(metrics)
}

/// Parquet settings of the writes to `schema.table` (ingest, identity runs, compaction):
/// delta-rs's own (Snappy), without dictionary encoding for the columns whose values are
/// (nearly) unique per row. Their dictionaries only grew until they passed the page limit
/// and fell back to plain, after every value had been hashed into them: a fifth of the CPU
/// of an identity run's writes.
pub fn writer_properties(
    schema: &str,
    table: &str,
) -> deltalake::parquet::file::properties::WriterProperties {
    use deltalake::parquet::basic::Compression;
    use deltalake::parquet::file::properties::WriterProperties;
    use deltalake::parquet::schema::types::ColumnPath;
    let plain: &[&str] = match (schema, table) {
        ("unified", "touchpoints") => &["touchpoint_id", "occurred_at"],
        ("unified", "identities") => &[
            "identifier_value",
            "person_id",
            "first_seen",
            "last_seen",
            "cluster_id",
        ],
        ("unified", "persons") => &["person_id", "first_seen", "last_seen", "anchor_value"],
        ("quality", "identity_diagnostics") => &["identifier_value", "person_id"],
        // A raw landing table: each record's place in its file.
        _ => &[crate::read::LOCATION],
    };
    // Random hex ids and microsecond times: Snappy spent CPU on them for no gain (it
    // saved 0.1% on occurred_at, 10% on touchpoint_id).
    let uncompressed: &[&str] = match (schema, table) {
        ("unified", "touchpoints") => &["touchpoint_id", "occurred_at"],
        ("unified", "identities") | ("unified", "persons") => &["first_seen", "last_seen"],
        _ => &[],
    };
    let mut b = WriterProperties::builder()
        .set_created_by(format!("touchlake {}", env!("CARGO_PKG_VERSION")))
        .set_compression(Compression::SNAPPY);
    if schema == "raw" {
        // A source's columns as landed, of unknown cardinality: a column whose dictionary
        // passes 64 KiB falls back to plain early instead of hashing every value of the
        // row group into a dictionary first (order ids, phones, amounts); low-cardinality
        // columns (status, store) keep theirs.
        b = b.set_dictionary_page_size_limit(RAW_DICTIONARY_LIMIT);
    }
    if (schema, table) == ("unified", "touchpoints") {
        b = b.set_max_row_group_row_count(Some(TOUCHPOINTS_ROW_GROUP_ROWS));
    }
    let b = plain.iter().fold(b, |b, c| {
        b.set_column_dictionary_enabled(ColumnPath::from(*c), false)
    });
    uncompressed
        .iter()
        .fold(b, |b, c| {
            b.set_column_compression(ColumnPath::from(*c), Compression::UNCOMPRESSED)
        })
        .build()
}

/// `unified.touchpoints`.
pub fn touchpoints() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("touchpoint_id", false),
        Field::new("occurred_at", ts(), false),
        text("channel", false),
        text("channel_type", false),
        text("event_type", false),
        text("source", false),
        text("person_id", true),
        text("user_id", true),
        text("anonymous_id", true),
        text("phone", true),
        text("email", true),
        text("device_id", true),
        text("member_id", true),
        text("openid", true),
        text("store_id", true),
        text("campaign", true),
        text("content", true),
        Field::new("revenue", DataType::Decimal128(18, 2), true),
        text("currency", true),
        Field::new("score", DataType::Int32, true),
        Field::new("duration_ms", DataType::Int64, true),
        text("properties", true),
        text("run_id", false),
        Field::new("ingested_at", ts(), false),
    ]))
}

/// `unified.identities`.
pub fn identities() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("identifier_type", false),
        text("identifier_value", false),
        text("person_id", false),
        Field::new("first_seen", ts(), true),
        Field::new("last_seen", ts(), true),
        Field::new("touchpoints", DataType::Int64, true),
        text("cluster_id", true),
    ]))
}

/// `unified.persons`.
pub fn persons() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("person_id", false),
        Field::new("first_seen", ts(), true),
        Field::new("last_seen", ts(), true),
        Field::new("touchpoints", DataType::Int64, true),
        Field::new("channels", DataType::Int64, true),
        Field::new("orders", DataType::Int64, true),
        Field::new("revenue", DataType::Decimal128(18, 2), true),
        Field::new("identifiers", DataType::Int64, true),
        text("anchor_type", true),
        text("anchor_value", true),
    ]))
}

/// `unified.identity_merges`.
pub fn identity_merges() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("merged_at", ts(), false),
        text("from_person_id", false),
        text("into_person_id", false),
        text("via_identifier_type", true),
        text("via_identifier_value", true),
        text("run_id", true),
    ]))
}

/// `quality.ingest_runs`.
pub fn ingest_runs() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("run_id", false),
        text("source", false),
        Field::new("started_at", ts(), false),
        Field::new("finished_at", ts(), true),
        text("status", false),
        Field::new("rows_read", DataType::Int64, true),
        Field::new("rows_accepted", DataType::Int64, true),
        Field::new("rows_rejected", DataType::Int64, true),
        Field::new("rows_duplicate", DataType::Int64, true),
        text("error", true),
    ]))
}

/// `quality.rejected`.
pub fn rejected() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("run_id", false),
        text("source", false),
        text("location", true),
        text("raw", true),
        text("reason", false),
        Field::new("rejected_at", ts(), false),
    ]))
}

/// `quality.checks`.
pub fn checks() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("run_id", true),
        text("source", true),
        text("check_name", false),
        text("column_name", true),
        Field::new("value", DataType::Float64, true),
        Field::new("threshold", DataType::Float64, true),
        text("status", false),
        Field::new("checked_at", ts(), false),
    ]))
}

/// `quality.ingest_files`: the ledger of files ingested per source (each file once; a
/// changed file is recognised by its content hash and read again).
pub fn ingest_files() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("source", false),
        text("path", false),
        Field::new("size", DataType::Int64, false),
        Field::new("last_modified", ts(), true),
        text("content_hash", false),
        Field::new("rows_read", DataType::Int64, false),
        text("run_id", false),
        Field::new("ingested_at", ts(), false),
    ]))
}

/// `quality.identity_diagnostics`: the identifiers and links the last identity run set
/// aside, and why (`degree_guard`, `cardinality_violation`, `excluded`, `giant_component`).
pub fn identity_diagnostics() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("identifier_type", false),
        text("identifier_value", false),
        text("reason", false),
        text("detail", true),
        text("degree", true),
        text("person_id", true),
        Field::new("person_identifiers", DataType::Int64, true),
        text("run_id", false),
    ]))
}

/// `quality.identity_runs`: one row per identity run.
pub fn identity_runs() -> SchemaRef {
    Arc::new(Schema::new(vec![
        text("run_id", false),
        Field::new("finished_at", ts(), false),
        Field::new("touchpoints", DataType::Int64, false),
        Field::new("identifiers", DataType::Int64, false),
        Field::new("edges", DataType::Int64, false),
        Field::new("persons", DataType::Int64, false),
        Field::new("persons_kept", DataType::Int64, false),
        Field::new("merges", DataType::Int64, false),
        Field::new("splits", DataType::Int64, false),
        Field::new("guarded", DataType::Int64, false),
        Field::new("skipped_edges", DataType::Int64, false),
        Field::new("largest_person", DataType::Int64, false),
        Field::new("seconds", DataType::Float64, false),
        text("mode", true),
        Field::new("touchpoints_version", DataType::Int64, true),
        Field::new("identities_version", DataType::Int64, true),
        text("settings", true),
    ]))
}

/// Every contract table with its schema: (schema, table, columns).
pub fn contract() -> Vec<(&'static str, &'static str, SchemaRef)> {
    vec![
        ("unified", "touchpoints", touchpoints()),
        ("unified", "persons", persons()),
        ("unified", "identities", identities()),
        ("unified", "identity_merges", identity_merges()),
        ("quality", "ingest_runs", ingest_runs()),
        ("quality", "rejected", rejected()),
        ("quality", "checks", checks()),
        ("quality", "ingest_files", ingest_files()),
        ("quality", "identity_diagnostics", identity_diagnostics()),
        ("quality", "identity_runs", identity_runs()),
    ]
}

/// Create the contract's schemas and tables that do not exist yet.
pub async fn ensure(lake: &touchlake_catalog::Lake) -> touchlake_catalog::Result<()> {
    for s in ["raw", "unified", "quality", "marts"] {
        lake.create_schema(s, true, "touchlake").await?;
    }
    for (s, t, schema) in contract() {
        lake.create_table(s, t, schema, true).await?;
    }
    crate::marts::ensure(lake).await
}
