//! Touchlake ingest: getting channel data into the unified touchpoint model.
//!
//! For now it holds the deterministic demo-lake generator ([`demo`]), which writes the
//! unified tables directly; source definitions, quarantine and identity resolution
//! arrive with their issues and will rebuild the demo through the real pipeline.
//! Depends on the catalog (to write Delta tables); never on the wire protocol.

pub mod demo;
pub mod tables;
