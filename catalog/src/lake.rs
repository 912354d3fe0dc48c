//! The lake root: where it is, how to reach its object store, what schemas and tables
//! it holds, and a shared cache of opened Delta tables.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use datafusion::catalog::TableProvider;
use deltalake::{DeltaTable, DeltaTableBuilder};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use url::Url;

use crate::META_DIR;
use crate::error::{CatalogError, Result};
use crate::meta::ViewDef;

/// One opened Delta table, shared by all sessions, refreshed when older than the TTL.
struct CachedTable {
    table: DeltaTable,
    provider: Arc<dyn TableProvider>,
    checked: Instant,
}

/// What the lake holds, as of the last listing.
#[derive(Default, Clone, Debug)]
pub struct Listing {
    /// schema → table names (Delta tables only).
    pub tables: BTreeMap<String, BTreeSet<String>>,
    /// schema → view name → definition.
    pub views: BTreeMap<String, BTreeMap<String, ViewDef>>,
}

/// The lake: an object-store location whose folders are schemas of Delta tables.
pub struct Lake {
    url: Url,
    store: Arc<dyn ObjectStore>,
    root: Path,
    refresh: Duration,
    listing: RwLock<(Listing, Option<Instant>)>,
    tables: tokio::sync::Mutex<HashMap<(String, String), CachedTable>>,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lake")
            .field("url", &self.url.as_str())
            .finish()
    }
}

/// delta-rs's plain log store (commits by conditional put), for a cloud scheme whose
/// delta-rs integration crate Touchlake does not link: the object store comes from
/// object_store's own builders instead.
#[derive(Debug, Default)]
struct ConditionalPutLogStore;

impl deltalake::logstore::LogStoreFactory for ConditionalPutLogStore {
    fn with_options(
        &self,
        prefixed_store: deltalake::logstore::ObjectStoreRef,
        root_store: deltalake::logstore::ObjectStoreRef,
        location: &Url,
        options: &deltalake::logstore::StorageConfig,
    ) -> deltalake::DeltaResult<Arc<dyn deltalake::logstore::LogStore>> {
        Ok(deltalake::logstore::default_logstore(
            prefixed_store,
            root_store,
            location,
            options,
        ))
    }
}

fn register_default_logstore(scheme: &str) {
    if let Ok(url) = Url::parse(&format!("{scheme}://")) {
        let registry = deltalake::logstore::logstore_factories();
        if !registry.contains_key(&url) {
            registry.insert(url, Arc::new(ConditionalPutLogStore));
        }
    }
}

/// Check that a schema, table or view name can be a folder in the lake.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.chars().next().is_some_and(|c| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(CatalogError::InvalidName(name.to_string()))
    }
}

impl Lake {
    /// Open (or create, for a local folder) the lake at `location`: a local path,
    /// `file://`, `s3://bucket/prefix`, `gs://bucket/prefix` or `az://container/prefix`.
    /// Cloud stores are configured by object_store's own builders from the environment
    /// (`AWS_*`, `GOOGLE_*`, `AZURE_*`) and `options`.
    pub async fn open(
        location: &str,
        options: &HashMap<String, String>,
        refresh: Duration,
    ) -> Result<Arc<Lake>> {
        let bad = |m: String| CatalogError::InvalidLake(location.to_string(), m);
        let (url, store, root): (Url, Arc<dyn ObjectStore>, Path) = if location.contains("://")
            && !location.starts_with("file://")
        {
            let mut url = Url::parse(location).map_err(|e| bad(e.to_string()))?;
            if !url.path().ends_with('/') {
                url.set_path(&format!("{}/", url.path()));
            }
            let store: Arc<dyn ObjectStore> = match url.scheme() {
                "s3" | "s3a" => {
                    let mut b =
                        object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
                    for (k, v) in options {
                        if let Ok(key) = k.parse() {
                            b = b.with_config(key, v);
                        }
                    }
                    Arc::new(b.build()?)
                }
                "gs" => {
                    let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                        .with_url(url.as_str());
                    for (k, v) in options {
                        if let Ok(key) = k.parse() {
                            b = b.with_config(key, v);
                        }
                    }
                    Arc::new(b.build()?)
                }
                "az" | "abfs" | "abfss" | "azure" => {
                    let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                        .with_url(url.as_str());
                    for (k, v) in options {
                        if let Ok(key) = k.parse() {
                            b = b.with_config(key, v);
                        }
                    }
                    Arc::new(b.build()?)
                }
                other => return Err(bad(format!("unsupported scheme {other}://"))),
            };
            register_default_logstore(url.scheme());
            let root = Path::from(url.path().trim_matches('/'));
            (url, store, root)
        } else {
            let path = location.strip_prefix("file://").unwrap_or(location);
            std::fs::create_dir_all(path).map_err(|e| bad(e.to_string()))?;
            let abs = std::fs::canonicalize(path).map_err(|e| bad(e.to_string()))?;
            let url = Url::from_directory_path(&abs).map_err(|_| bad("not a directory".into()))?;
            let store = Arc::new(object_store::local::LocalFileSystem::new());
            let root = Path::from_filesystem_path(&abs).map_err(|e| bad(e.to_string()))?;
            (url, store, root)
        };
        let lake = Arc::new(Lake {
            url,
            store,
            root,
            refresh,
            listing: RwLock::new((Listing::default(), None)),
            tables: tokio::sync::Mutex::new(HashMap::new()),
        });
        lake.refresh_listing().await?;
        Ok(lake)
    }

    /// The lake root as a URL (ends with `/`).
    pub fn url(&self) -> &Url {
        &self.url
    }

    /// The object store holding the lake.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// How long a cached listing or table snapshot is trusted before it is re-checked.
    pub fn refresh_interval(&self) -> Duration {
        self.refresh
    }

    /// Path of `parts` below the lake root.
    pub fn path(&self, parts: &[&str]) -> Path {
        let mut p = self.root.clone();
        for part in parts {
            p = p.clone().join(*part);
        }
        p
    }

    /// URL of the Delta table `schema.table`.
    pub fn table_url(&self, schema: &str, table: &str) -> Result<Url> {
        self.url
            .join(&format!("{schema}/{table}/"))
            .map_err(|e| CatalogError::InvalidName(format!("{schema}.{table}: {e}")))
    }

    /// The last listing (schemas, tables, views). Refreshed in the background and after DDL.
    pub fn listing(&self) -> Listing {
        self.listing.read().map(|l| l.0.clone()).unwrap_or_default()
    }

    /// Re-list the lake if the cached listing is older than the refresh interval.
    pub async fn maybe_refresh_listing(&self) -> Result<()> {
        let stale = self
            .listing
            .read()
            .map(|l| l.1.is_none_or(|t| t.elapsed() >= self.refresh))
            .unwrap_or(true);
        if stale {
            self.refresh_listing().await?;
        }
        Ok(())
    }

    /// List schemas (folders and CREATE SCHEMA markers), Delta tables and views.
    pub async fn refresh_listing(&self) -> Result<()> {
        let mut listing = Listing::default();
        for schema in self.child_folders(&self.root).await? {
            if validate_name(&schema).is_err() {
                continue;
            }
            let mut tables = BTreeSet::new();
            for t in self.child_folders(&self.path(&[&schema])).await? {
                if validate_name(&t).is_ok() && self.is_delta_table(&schema, &t).await? {
                    tables.insert(t);
                }
            }
            listing.tables.insert(schema, tables);
        }
        listing
            .tables
            .entry(crate::DEFAULT_SCHEMA.to_string())
            .or_default();
        for marker in self.list_meta("schemas").await? {
            if let Some(name) = marker.strip_suffix(".json") {
                listing.tables.entry(name.to_string()).or_default();
            }
        }
        for (schema, name, def) in self.read_views().await? {
            listing.tables.entry(schema.clone()).or_default();
            listing.views.entry(schema).or_default().insert(name, def);
        }
        if let Ok(mut l) = self.listing.write() {
            *l = (listing, Some(Instant::now()));
        }
        Ok(())
    }

    async fn child_folders(&self, prefix: &Path) -> Result<Vec<String>> {
        let res = match self.store.list_with_delimiter(Some(prefix)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(vec![]),
            Err(e) => return Err(e.into()),
        };
        Ok(res
            .common_prefixes
            .into_iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    async fn is_delta_table(&self, schema: &str, table: &str) -> Result<bool> {
        let log = self.path(&[schema, table, "_delta_log"]);
        let mut stream = self.store.list(Some(&log));
        Ok(stream.try_next().await?.is_some())
    }

    /// Names of the files in `_touchlake/<kind>/` (relative paths).
    pub async fn list_meta(&self, kind: &str) -> Result<Vec<String>> {
        let prefix = self.path(&[META_DIR, kind]);
        let objects: Vec<_> = self.store.list(Some(&prefix)).try_collect().await?;
        Ok(objects
            .into_iter()
            .filter_map(|o| {
                let rel: Vec<_> = o
                    .location
                    .prefix_match(&prefix)?
                    .map(|p| p.as_ref().to_string())
                    .collect();
                Some(rel.join("/"))
            })
            .collect())
    }

    async fn read_views(&self) -> Result<Vec<(String, String, ViewDef)>> {
        let mut out = vec![];
        for rel in self.list_meta("views").await? {
            let Some((schema, file)) = rel.split_once('/') else {
                continue;
            };
            let Some(name) = file.strip_suffix(".json") else {
                continue;
            };
            let path = self.path(&[META_DIR, "views", schema, file]);
            let bytes = match self.store.get(&path).await {
                Ok(r) => r.bytes().await?,
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(e.into()),
            };
            let def: ViewDef = serde_json::from_slice(&bytes)
                .map_err(|e| CatalogError::CorruptMeta(path.to_string(), e.to_string()))?;
            out.push((schema.to_string(), name.to_string(), def));
        }
        Ok(out)
    }

    /// Write a catalog object under `_touchlake/`; with `create_only`, fail if it exists.
    pub async fn put_meta(&self, parts: &[&str], body: Vec<u8>, create_only: bool) -> Result<bool> {
        let mut full = vec![META_DIR];
        full.extend_from_slice(parts);
        let path = self.path(&full);
        let opts = PutOptions {
            mode: if create_only {
                PutMode::Create
            } else {
                PutMode::Overwrite
            },
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from(body), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Read a catalog object under `_touchlake/`; None if there is none.
    pub async fn get_meta(&self, parts: &[&str]) -> Result<Option<bytes::Bytes>> {
        let mut full = vec![META_DIR];
        full.extend_from_slice(parts);
        match self.store.get(&self.path(&full)).await {
            Ok(r) => Ok(Some(r.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete a catalog object under `_touchlake/`; true if it existed.
    pub async fn delete_meta(&self, parts: &[&str]) -> Result<bool> {
        let mut full = vec![META_DIR];
        full.extend_from_slice(parts);
        match self.store.delete(&self.path(&full)).await {
            Ok(()) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete every object below `parts` (a table folder or schema folder).
    pub(crate) async fn delete_prefix(&self, parts: &[&str]) -> Result<()> {
        let prefix = self.path(parts);
        let locations = self
            .store
            .list(Some(&prefix))
            .map_ok(|m| m.location)
            .boxed();
        self.store
            .delete_stream(locations)
            .try_collect::<Vec<_>>()
            .await?;
        // A local file system keeps empty folders, which would still list as schemas.
        if self.url.scheme() == "file" {
            let mut dir = std::path::PathBuf::from("/");
            dir.push(prefix.as_ref());
            match std::fs::remove_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(CatalogError::Unsupported(format!(
                        "cannot remove {}: {e}",
                        dir.display()
                    )));
                }
            }
        }
        Ok(())
    }

    /// A builder for the Delta table `schema.table` on this lake's object store.
    pub fn table_builder(&self, schema: &str, table: &str) -> Result<DeltaTableBuilder> {
        let url = self.table_url(schema, table)?;
        Ok(DeltaTableBuilder::from_url(url.clone())?.with_storage_backend(self.store.clone(), url))
    }

    /// Open `schema.table` at its latest version, through the shared cache.
    /// Returns `None` if there is no Delta table there.
    pub async fn table(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Option<(DeltaTable, Arc<dyn TableProvider>)>> {
        let key = (schema.to_string(), table.to_string());
        let mut cache = self.tables.lock().await;
        if let Some(c) = cache.get_mut(&key) {
            if c.checked.elapsed() < self.refresh {
                return Ok(Some((c.table.clone(), c.provider.clone())));
            }
            let before = c.table.version();
            match c.table.update_incremental(None).await {
                Ok(()) => {}
                Err(deltalake::DeltaTableError::NotATable(_))
                | Err(deltalake::DeltaTableError::InvalidTableLocation(_)) => {
                    cache.remove(&key);
                    return Ok(None);
                }
                Err(e) => {
                    // The table may have been dropped and recreated: reload from scratch below.
                    tracing::debug!("refresh of {schema}.{table} failed: {e}; reloading");
                    cache.remove(&key);
                    return Box::pin(self.open_uncached(schema, table, cache)).await;
                }
            }
            if c.table.version() != before {
                c.provider = crate::scan::Checked::wrap(c.table.table_provider().await?);
            }
            c.checked = Instant::now();
            return Ok(Some((c.table.clone(), c.provider.clone())));
        }
        self.open_uncached(schema, table, cache).await
    }

    async fn open_uncached(
        &self,
        schema: &str,
        table: &str,
        mut cache: tokio::sync::MutexGuard<'_, HashMap<(String, String), CachedTable>>,
    ) -> Result<Option<(DeltaTable, Arc<dyn TableProvider>)>> {
        if validate_name(schema).is_err() || validate_name(table).is_err() {
            return Ok(None);
        }
        if !self.is_delta_table(schema, table).await? {
            return Ok(None);
        }
        let t = self.table_builder(schema, table)?.load().await?;
        let provider = crate::scan::Checked::wrap(t.table_provider().await?);
        cache.insert(
            (schema.to_string(), table.to_string()),
            CachedTable {
                table: t.clone(),
                provider: provider.clone(),
                checked: Instant::now(),
            },
        );
        drop(cache);
        if let Ok(mut l) = self.listing.write() {
            l.0.tables
                .entry(schema.to_string())
                .or_default()
                .insert(table.to_string());
        }
        Ok(Some((t, provider)))
    }

    /// The columns of `schema.table` for catalog queries: from the cached snapshot if there
    /// is one, however old (catalog listings must not re-read every table's Delta log);
    /// otherwise the table is opened once.
    pub async fn cached_schema(
        &self,
        schema: &str,
        table: &str,
    ) -> Result<Option<datafusion::arrow::datatypes::SchemaRef>> {
        {
            let cache = self.tables.lock().await;
            if let Some(c) = cache.get(&(schema.to_string(), table.to_string())) {
                return Ok(Some(c.provider.schema()));
            }
        }
        Ok(self.table(schema, table).await?.map(|(_, p)| p.schema()))
    }

    /// Forget the cached snapshot of `schema.table` (after our own write or drop).
    pub async fn invalidate(&self, schema: &str, table: &str) {
        self.tables
            .lock()
            .await
            .remove(&(schema.to_string(), table.to_string()));
    }

    /// Open `schema.table` as of `version` (time travel). Not cached.
    pub async fn table_at_version(
        &self,
        schema: &str,
        table: &str,
        version: i64,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if !self.is_delta_table(schema, table).await? {
            return Ok(None);
        }
        let t = self
            .table_builder(schema, table)?
            .with_version(version as _)
            .load()
            .await?;
        Ok(Some(crate::scan::Checked::wrap(t.table_provider().await?)))
    }

    /// Open `schema.table` as it was at `ts` (time travel). Not cached.
    pub async fn table_at_time(
        &self,
        schema: &str,
        table: &str,
        ts: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<Arc<dyn TableProvider>>> {
        if !self.is_delta_table(schema, table).await? {
            return Ok(None);
        }
        let t = self
            .table_builder(schema, table)?
            .with_timestamp(ts)
            .load()
            .await?;
        Ok(Some(crate::scan::Checked::wrap(t.table_provider().await?)))
    }

    /// Update the cached listing after a DDL statement of ours.
    pub(crate) fn edit_listing(&self, f: impl FnOnce(&mut Listing)) {
        if let Ok(mut l) = self.listing.write() {
            f(&mut l.0);
        }
    }
}
