//! Errors of the lake catalog. The wire layer maps each variant to a SQLSTATE.

use datafusion::error::DataFusionError;
use deltalake::DeltaTableError;

/// Result alias for catalog operations.
pub type Result<T, E = CatalogError> = std::result::Result<T, E>;

/// What can go wrong while reading or changing the lake's catalog.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// `schema` does not exist under the lake root.
    #[error("schema \"{0}\" does not exist")]
    NoSuchSchema(String),
    /// `schema.table` is neither a Delta table nor a view.
    #[error("relation \"{0}\" does not exist")]
    NoSuchTable(String),
    /// A schema, table or view of that name exists already.
    #[error("relation \"{0}\" already exists")]
    AlreadyExists(String),
    /// A schema of that name exists already.
    #[error("schema \"{0}\" already exists")]
    SchemaExists(String),
    /// DROP SCHEMA without CASCADE on a schema that still holds tables or views.
    #[error(
        "cannot drop schema \"{0}\" because other objects depend on it (use DROP SCHEMA … CASCADE)"
    )]
    SchemaNotEmpty(String),
    /// A name that cannot be a folder name in the lake.
    #[error("invalid name \"{0}\": use letters, digits and underscores")]
    InvalidName(String),
    /// A column type Touchlake cannot store in Delta.
    #[error("type \"{0}\" is not supported")]
    UnsupportedType(String),
    /// Valid SQL that Touchlake does not support (yet).
    #[error("{0}")]
    Unsupported(String),
    /// The lake URL could not be understood.
    #[error("invalid lake location \"{0}\": {1}")]
    InvalidLake(String, String),
    /// An error from delta-rs.
    #[error("delta: {0}")]
    Delta(#[from] DeltaTableError),
    /// An error from the object store.
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    /// An error from DataFusion while planning or executing.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
    /// Catalog metadata under `_touchlake/` that cannot be read.
    #[error("catalog metadata {0} is corrupt: {1}")]
    CorruptMeta(String, String),
}

impl From<CatalogError> for DataFusionError {
    fn from(e: CatalogError) -> Self {
        match e {
            CatalogError::DataFusion(e) => e,
            other => DataFusionError::External(Box::new(other)),
        }
    }
}
