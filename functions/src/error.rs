//! Errors raised by Touchlake functions. The wire layer maps `InvalidArgument` to
//! SQLSTATE 22023 (invalid_parameter_value).

use datafusion::error::DataFusionError;

/// A function was called with an argument it cannot use.
#[derive(Debug, thiserror::Error)]
pub enum FunctionError {
    /// A configuration argument (mode, policy, region, algorithm) is not allowed.
    #[error("{function}: {message}")]
    InvalidArgument {
        /// The SQL function name.
        function: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
}

/// A DataFusion error for an invalid argument of `function`.
pub fn invalid(function: &'static str, message: impl Into<String>) -> DataFusionError {
    DataFusionError::External(Box::new(FunctionError::InvalidArgument {
        function,
        message: message.into(),
    }))
}
