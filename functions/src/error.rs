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
    /// Text that does not fit a date/time template (22007), or a field out of range
    /// (22008).
    #[error("{function}: {message}")]
    Datetime {
        /// The SQL function name.
        function: &'static str,
        /// What does not fit.
        message: String,
        /// A value out of range rather than text that does not fit.
        out_of_range: bool,
    },
    /// A result larger than the server builds (54000, PostgreSQL's program_limit_exceeded).
    #[error("{function}: {message}")]
    TooLarge {
        /// The SQL function name.
        function: &'static str,
        /// How large, and the limit.
        message: String,
    },
}

impl FunctionError {
    /// The PostgreSQL SQLSTATE of the error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            FunctionError::InvalidArgument { .. } => "22023",
            FunctionError::Datetime {
                out_of_range: true, ..
            } => "22008",
            FunctionError::Datetime { .. } => "22007",
            FunctionError::TooLarge { .. } => "54000",
        }
    }
}

/// A DataFusion error for text that does not fit a date/time template.
pub fn bad_datetime(
    function: &'static str,
    message: impl Into<String>,
    out_of_range: bool,
) -> DataFusionError {
    DataFusionError::External(Box::new(FunctionError::Datetime {
        function,
        message: message.into(),
        out_of_range,
    }))
}

/// A DataFusion error for an invalid argument of `function`.
pub fn invalid(function: &'static str, message: impl Into<String>) -> DataFusionError {
    DataFusionError::External(Box::new(FunctionError::InvalidArgument {
        function,
        message: message.into(),
    }))
}
