//! Errors of ingest runs and source definitions. The server maps them to SQLSTATEs.

use datafusion::error::DataFusionError;
use touchlake_catalog::CatalogError;

/// Result alias for ingest operations.
pub type Result<T, E = IngestError> = std::result::Result<T, E>;

/// What can stop an ingest run or reject a definition. Bad *records* are never errors:
/// they go to `quality.rejected`.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A source definition that cannot be used (22023 on the wire).
    #[error("invalid source definition: {0}")]
    Definition(String),
    /// No source of that name.
    #[error("source \"{0}\" does not exist")]
    NoSuchSource(String),
    /// A source of that name exists already.
    #[error("source \"{0}\" already exists")]
    SourceExists(String),
    /// A mapping or rule expression that does not plan (42xxx on the wire).
    #[error("source {name}: {message}")]
    Mapping {
        /// The source name.
        name: String,
        /// What DataFusion said.
        message: String,
    },
    /// The lake could not be read or written.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// An error while reading a source (I/O, object store).
    #[error("{0}")]
    Read(String),
    /// An error from delta-rs.
    #[error("delta: {0}")]
    Delta(#[from] deltalake::DeltaTableError),
    /// An error from DataFusion.
    #[error(transparent)]
    DataFusion(#[from] DataFusionError),
}

impl From<object_store::Error> for IngestError {
    fn from(e: object_store::Error) -> Self {
        IngestError::Read(e.to_string())
    }
}

impl From<datafusion::arrow::error::ArrowError> for IngestError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        IngestError::DataFusion(e.into())
    }
}
