//! Identity resolution: one person across phone, e-mail, device, member card, openid,
//! user id and anonymous id. [`graph`] holds the algorithm (guards, limits, rules,
//! components), [`run`] reads the lake, gives persons stable ids and writes the tables.

pub mod graph;
mod incremental;
mod read;
pub mod run;
mod warm;

pub use graph::Config;
pub use run::{IdentitySummary, run};
pub use warm::warm_up;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `[identity]` section of the server configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Per identifier type: the most distinct identifiers of one strong type it may link
    /// to before the degree guard takes it out (0: no guard). Default 5 for every type.
    pub max_degree: BTreeMap<String, u64>,
    /// Per identifier type: the most identifiers of the type one person may hold (0: no
    /// limit). Default: `user_id` 1, `member_id` 1.
    pub limit: BTreeMap<String, u64>,
    /// Run identity resolution after scheduled ingest runs that accepted rows.
    pub after_ingest: bool,
    /// Seconds between two identity runs that follow ingest (at least).
    pub every_seconds: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_degree: BTreeMap::new(),
            limit: BTreeMap::new(),
            after_ingest: true,
            every_seconds: 60,
        }
    }
}

impl Settings {
    /// The resolution configuration: defaults, then these settings.
    pub fn config(&self) -> Result<Config, String> {
        let mut c = Config::default();
        for (t, n) in &self.max_degree {
            c.set(&format!("max_degree.{t}"), &n.to_string())?;
        }
        for (t, n) in &self.limit {
            c.set(&format!("limit.{t}"), &n.to_string())?;
        }
        Ok(c)
    }
}
