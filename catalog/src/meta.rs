//! Catalog objects persisted under `_touchlake/` in the lake, one JSON object each, so a
//! restart or a second server on the same lake sees them:
//! `_touchlake/schemas/<schema>.json` and `_touchlake/views/<schema>/<view>.json`.

use serde::{Deserialize, Serialize};

/// A view: its SQL text, planned again whenever it is used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ViewDef {
    /// The defining query, as written after `AS`.
    pub sql: String,
    /// Column names given in `CREATE VIEW v (a, b) AS …`, if any.
    #[serde(default)]
    pub columns: Vec<String>,
    /// The role that created the view.
    #[serde(default)]
    pub owner: String,
    /// When it was (re)defined, RFC 3339.
    #[serde(default)]
    pub created_at: String,
}

/// A schema created with CREATE SCHEMA (a schema may also exist as a plain folder).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SchemaDef {
    /// The role that created it.
    #[serde(default)]
    pub owner: String,
    /// When it was created, RFC 3339.
    #[serde(default)]
    pub created_at: String,
}
