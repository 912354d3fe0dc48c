//! Touchlake ingest: getting channel data into the unified touchpoint model.
//!
//! - [`source`]: channel definitions (TOML files and `CREATE SOURCE`), persisted in the lake.
//! - [`read`]: file readers (CSV in any encoding, NDJSON, Parquet) → chunks of text records.
//! - [`mapping`]: a definition's mapping and rules compiled to SQL over each chunk.
//! - [`run`]: an ingest run: ledger of files, raw landing, quarantine, dedup, exactly-once
//!   commits, `quality.ingest_runs`.
//! - [`dedup`]: the in-memory set of touchpoint ids already in the lake.
//! - [`files`]: reading chosen rows of a big table straight from its Parquet files.
//! - [`replace`]: replacing rows by key with deletion vectors (incremental identity runs).
//! - [`pull`]: database sources pulled by cursor ([`postgres`], [`mysql`]).
//! - [`collector`]: the HTTP collector's write-ahead log and flushes.
//! - [`checks`]: `quality.checks` after each run.
//! - [`identity`]: identity resolution (the identity graph, persons, stable ids).
//! - [`demo`]: the deterministic demo-lake generator.
//!
//! Depends on the catalog (to write Delta tables); never on the wire protocol.

pub mod checks;
pub mod collector;
pub mod dedup;
pub mod demo;
pub mod demo_landing;
pub mod error;
pub mod files;
pub mod identity;
pub mod mapping;
pub mod marts;
pub mod mysql;
pub mod postgres;
pub mod pull;
pub mod read;
pub mod replace;
pub mod run;
pub mod source;
pub mod tables;

pub use error::{IngestError, Result};
pub use source::SourceDef;
