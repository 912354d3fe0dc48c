//! Touchlake's SQL functions: identity, journey, attribution, lifetime value and metrics.
//! Pure computations over Arrow arrays; no I/O, no catalog access.
//!
//! Every function is registered in each session through [`register_all`].

use datafusion::execution::FunctionRegistry;

/// Register every Touchlake SQL function with a session's function registry.
pub fn register_all(_registry: &mut dyn FunctionRegistry) -> datafusion::error::Result<()> {
    Ok(())
}
