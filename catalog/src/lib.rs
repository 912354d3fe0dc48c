//! The Touchlake lake: a root URL on an object store (local folder, `s3://`, `gs://`, `az://`)
//! whose first-level folders are schemas and whose Delta tables are queryable as
//! `schema.table`, plus the catalog objects persisted under `_touchlake/` (views) so that a
//! restart, or a second server on the same lake, sees the same database.
//!
//! Depends on deltalake, DataFusion and object_store. It must not know about the wire
//! protocol: sessions, roles and SQLSTATEs belong to the `touchlake` server crate.

pub mod ddl;
pub mod error;
pub mod lake;
pub mod meta;
pub mod pg_functions;
pub mod pg_overlay;
pub mod provider;
pub mod scan;
pub mod types;

pub use error::{CatalogError, Result};
pub use lake::Lake;
pub use provider::{LakeCatalogProvider, ViewPlanner};

/// Name of the single database (DataFusion catalog) a Touchlake server serves.
pub const DATABASE: &str = "touchlake";
/// Schema used when a name is not qualified and the search_path is the default.
pub const DEFAULT_SCHEMA: &str = "public";
/// Folder under the lake root that holds Touchlake's own catalog metadata.
pub const META_DIR: &str = "_touchlake";
