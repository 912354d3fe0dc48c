//! Server configuration: defaults, a TOML file, `TOUCHLAKE_*` environment variables and
//! command-line flags, in rising order of precedence.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

/// Everything `touchlake serve` can be configured with.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Lake location: a local folder, `file://…`, `s3://…`, `gs://…` or `az://…`.
    pub lake: String,
    /// Address the PostgreSQL wire protocol listens on.
    pub listen: String,
    /// Seconds a cached table snapshot or lake listing is trusted before it is re-checked.
    pub refresh_seconds: f64,
    /// Memory the query engine may use before it spills or fails, in MiB (0 = no limit).
    /// Default: 80% of the memory this process may use (the machine's, or its container's
    /// limit), so a large query spills to disk or fails with 53200 instead of getting the
    /// server killed for running out of memory.
    pub memory_limit_mb: usize,
    /// Milliseconds freed memory is kept before it goes back to the operating system
    /// (-1: never, 0: at once). See [`crate::allocator`].
    pub memory_release_ms: i64,
    /// Whether the process's memory may be backed by transparent huge pages (Linux).
    /// Default off. See [`crate::allocator`].
    pub transparent_huge_pages: bool,
    /// Default `statement_timeout` in milliseconds (0 = none).
    pub statement_timeout_ms: u64,
    /// Extra object-store options (e.g. `aws_endpoint`, `aws_allow_http`).
    pub storage_options: HashMap<String, String>,
    /// Folder of source definitions (`*.toml`), loaded into the lake's catalog at start.
    /// Default: `sources/` next to the config file, if there is one.
    pub sources: Option<String>,
    /// Address of the HTTP event collector (Segment API); none: no collector.
    pub http_listen: Option<String>,
    /// Seconds between compaction passes over the tables ingest appends to
    /// (`unified.touchpoints`, `raw.*`, `quality.*`); 0 turns them off.
    pub compact_every_seconds: u64,
    /// A table is compacted when it has at least this many data files.
    pub compact_min_files: usize,
    /// Identity resolution settings (`[identity]`: `max_degree.<type>`, `limit.<type>`,
    /// `after_ingest`).
    pub identity: touchlake_ingest::identity::Settings,
}

impl Config {
    /// The configuration as sessions read it: `touchlake.<name>` settings, read-only
    /// (`SHOW touchlake.memory_limit_mb`, `SHOW ALL`). The object-store
    /// options are left out: they hold credentials.
    pub fn visible(&self) -> Vec<(String, String)> {
        let text = |o: &Option<String>| o.clone().unwrap_or_default();
        let on = |b: bool| if b { "on" } else { "off" }.to_string();
        let mut v = vec![
            ("lake".to_string(), self.lake.clone()),
            ("listen".into(), self.listen.clone()),
            ("refresh_seconds".into(), self.refresh_seconds.to_string()),
            ("memory_limit_mb".into(), self.memory_limit_mb.to_string()),
            (
                "memory_release_ms".into(),
                self.memory_release_ms.to_string(),
            ),
            (
                "transparent_huge_pages".into(),
                on(self.transparent_huge_pages),
            ),
            (
                "statement_timeout_ms".into(),
                self.statement_timeout_ms.to_string(),
            ),
            ("sources".into(), text(&self.sources)),
            ("http_listen".into(), text(&self.http_listen)),
            (
                "compact_every_seconds".into(),
                self.compact_every_seconds.to_string(),
            ),
            (
                "compact_min_files".into(),
                self.compact_min_files.to_string(),
            ),
            (
                "identity.after_ingest".into(),
                on(self.identity.after_ingest),
            ),
            (
                "identity.every_seconds".into(),
                self.identity.every_seconds.to_string(),
            ),
        ];
        // The guards and limits in effect (0: none), per identifier type.
        if let Ok(c) = self.identity.config() {
            let n = |x: usize| if x == usize::MAX { 0 } else { x }.to_string();
            for (t, ty) in touchlake_ingest::identity::graph::TYPES.iter().enumerate() {
                v.push((format!("identity.max_degree.{ty}"), n(c.max_degree[t])));
                v.push((format!("identity.limit.{ty}"), n(c.limit[t])));
            }
        }
        v.into_iter()
            .map(|(k, v)| (format!("{}{k}", crate::settings::SERVER_PREFIX), v))
            .collect()
    }
}

/// 80% of the memory available to the process in MiB: the smaller of the machine's
/// (`/proc/meminfo`) and the container's (cgroup v2 `memory.max`, v1
/// `memory.limit_in_bytes`); 0 (no limit) where neither can be read.
fn default_memory_limit_mb() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    });
    let container = [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .filter_map(|f| std::fs::read_to_string(f).ok())
    .filter_map(|v| v.trim().parse::<u64>().ok())
    .min();
    let bytes = match (total, container) {
        (Some(t), Some(c)) => t.min(c),
        (Some(t), None) => t,
        (None, Some(c)) if c < (1 << 50) => c,
        _ => return 0,
    };
    (bytes / 1024 / 1024 * 4 / 5) as usize
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lake: "./lake".into(),
            listen: "127.0.0.1:5433".into(),
            refresh_seconds: 1.0,
            memory_limit_mb: default_memory_limit_mb(),
            memory_release_ms: crate::allocator::DEFAULT_RELEASE_MS,
            transparent_huge_pages: false,
            statement_timeout_ms: 0,
            storage_options: HashMap::new(),
            sources: None,
            http_listen: None,
            compact_every_seconds: 600,
            compact_min_files: 32,
            identity: Default::default(),
        }
    }
}

/// A configuration problem, reported before the server starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {0}: {1}")]
    Read(String, std::io::Error),
    /// The file is not valid TOML for [`Config`].
    #[error("invalid config file {0}: {1}")]
    Parse(String, toml::de::Error),
    /// A `TOUCHLAKE_*` variable or a setting has a value of the wrong kind.
    #[error("invalid value for {0}: {1}")]
    Env(String, String),
}

impl Config {
    /// Load defaults, then `file` (if given), then `TOUCHLAKE_*` environment overrides.
    pub fn load(file: Option<&Path>) -> Result<Config, ConfigError> {
        let mut cfg = match file {
            Some(p) => {
                let name = p.display().to_string();
                let text =
                    std::fs::read_to_string(p).map_err(|e| ConfigError::Read(name.clone(), e))?;
                let mut cfg: Config =
                    toml::from_str(&text).map_err(|e| ConfigError::Parse(name, e))?;
                let dir = p.parent().unwrap_or(Path::new("."));
                match &cfg.sources {
                    Some(s) if Path::new(s).is_relative() => {
                        cfg.sources = Some(dir.join(s).display().to_string())
                    }
                    Some(_) => {}
                    None if dir.join("sources").is_dir() => {
                        cfg.sources = Some(dir.join("sources").display().to_string())
                    }
                    None => {}
                }
                cfg
            }
            None => Config::default(),
        };
        cfg.apply_env(std::env::vars())?;
        cfg.identity
            .config()
            .map_err(|e| ConfigError::Env("[identity]".into(), e))?;
        Ok(cfg)
    }

    /// Apply `TOUCHLAKE_LAKE`, `TOUCHLAKE_LISTEN`, `TOUCHLAKE_REFRESH_SECONDS`,
    /// `TOUCHLAKE_MEMORY_LIMIT_MB`, `TOUCHLAKE_STATEMENT_TIMEOUT_MS`, `TOUCHLAKE_SOURCES`,
    /// `TOUCHLAKE_HTTP_LISTEN`, `TOUCHLAKE_COMPACT_EVERY_SECONDS`, `TOUCHLAKE_COMPACT_MIN_FILES` and
    /// `TOUCHLAKE_STORAGE_<OPTION>` from `vars`.
    pub fn apply_env(
        &mut self,
        vars: impl Iterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        fn num<T: std::str::FromStr>(k: &str, v: &str) -> Result<T, ConfigError> {
            v.parse().map_err(|_| ConfigError::Env(k.into(), v.into()))
        }
        for (k, v) in vars {
            match k.as_str() {
                "TOUCHLAKE_LAKE" => self.lake = v,
                "TOUCHLAKE_LISTEN" => self.listen = v,
                "TOUCHLAKE_REFRESH_SECONDS" => self.refresh_seconds = num(&k, &v)?,
                "TOUCHLAKE_MEMORY_LIMIT_MB" => self.memory_limit_mb = num(&k, &v)?,
                "TOUCHLAKE_MEMORY_RELEASE_MS" => self.memory_release_ms = num(&k, &v)?,
                "TOUCHLAKE_TRANSPARENT_HUGE_PAGES" => self.transparent_huge_pages = num(&k, &v)?,
                "TOUCHLAKE_STATEMENT_TIMEOUT_MS" => self.statement_timeout_ms = num(&k, &v)?,
                "TOUCHLAKE_SOURCES" => self.sources = Some(v),
                "TOUCHLAKE_HTTP_LISTEN" => self.http_listen = Some(v),
                "TOUCHLAKE_COMPACT_EVERY_SECONDS" => self.compact_every_seconds = num(&k, &v)?,
                "TOUCHLAKE_COMPACT_MIN_FILES" => self.compact_min_files = num(&k, &v)?,
                _ => {
                    if let Some(opt) = k.strip_prefix("TOUCHLAKE_STORAGE_") {
                        self.storage_options.insert(opt.to_ascii_lowercase(), v);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn default_memory_limit_is_most_of_the_machine() {
        let mb = super::default_memory_limit_mb();
        let total_kb: usize = std::fs::read_to_string("/proc/meminfo")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        assert!(
            mb > 0 && mb <= total_kb / 1024 * 4 / 5,
            "{mb} MiB of {total_kb} kB"
        );
    }

    use super::*;

    #[test]
    fn env_overrides_file_values() {
        let mut cfg: Config =
            toml::from_str("lake = \"/data/lake\"\nlisten = \"0.0.0.0:6000\"").unwrap();
        cfg.apply_env([("TOUCHLAKE_LISTEN".to_string(), "127.0.0.1:7000".to_string())].into_iter())
            .unwrap();
        assert_eq!(cfg.lake, "/data/lake");
        assert_eq!(cfg.listen, "127.0.0.1:7000");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<Config>("lak = \"x\"").is_err());
    }

    #[test]
    fn bad_numbers_are_reported() {
        let mut cfg = Config::default();
        let err = cfg
            .apply_env([("TOUCHLAKE_REFRESH_SECONDS".to_string(), "soon".to_string())].into_iter())
            .unwrap_err();
        assert!(err.to_string().contains("TOUCHLAKE_REFRESH_SECONDS"));
    }

    #[test]
    fn memory_release_is_a_minute_unless_set() {
        assert_eq!(Config::default().memory_release_ms, 60_000);
        let mut cfg: Config = toml::from_str("memory_release_ms = -1").unwrap();
        assert_eq!(cfg.memory_release_ms, -1);
        cfg.apply_env([("TOUCHLAKE_MEMORY_RELEASE_MS".to_string(), "0".to_string())].into_iter())
            .unwrap();
        assert_eq!(cfg.memory_release_ms, 0);
    }

    #[test]
    fn huge_pages_are_off_unless_set() {
        assert!(!Config::default().transparent_huge_pages);
        let mut cfg: Config = toml::from_str("transparent_huge_pages = true").unwrap();
        assert!(cfg.transparent_huge_pages);
        cfg.apply_env(
            [(
                "TOUCHLAKE_TRANSPARENT_HUGE_PAGES".to_string(),
                "false".to_string(),
            )]
            .into_iter(),
        )
        .unwrap();
        assert!(!cfg.transparent_huge_pages);
    }
}
