//! Touchlake's SQL functions: identity, journey, attribution, lifetime value and metrics.
//! Pure computations over Arrow arrays; no I/O, no catalog access. One module per family;
//! every function is registered in each session through [`register_all`] and documented in
//! `docs/functions.md`.

/// The `ScalarUDFImpl` methods a wrapper of a DataFusion function takes from its `inner`
/// function unchanged (name, aliases, signature, return type, documentation); the wrapper
/// writes the ones it changes.
macro_rules! delegate_to_inner {
    () => {
        fn name(&self) -> &str {
            self.inner.name()
        }
        fn aliases(&self) -> &[String] {
            self.inner.aliases()
        }
        fn signature(&self) -> &datafusion::logical_expr::Signature {
            self.inner.signature()
        }
        fn return_type(
            &self,
            arg_types: &[datafusion::arrow::datatypes::DataType],
        ) -> datafusion::common::Result<datafusion::arrow::datatypes::DataType> {
            self.inner.return_type(arg_types)
        }
        fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
            self.inner.documentation()
        }
    };
}

pub mod args;
pub mod attribution;
pub mod btyd;
pub mod calendar;
pub mod cohorts;
pub mod date_trunc;
pub mod error;
pub mod event_filter;
pub mod events;
pub mod first_last;
pub mod funnel;
pub mod funnel_detail;
pub mod group_log;
pub mod groups;
pub mod historical;
pub mod intern;
pub mod journeys;
pub mod ltv;
pub mod markov;
pub mod metrics;
pub mod normalize;
pub mod optimize;
pub mod paths;
pub mod retention;
pub mod rfm;
pub mod sankey;
pub mod sequence;
pub mod session_list;
pub mod sessions;
pub mod shapley;
pub mod size_limit;
pub mod special;
pub mod state_size;
pub mod time;
pub mod to_char;
pub mod to_timestamp;

use datafusion::execution::FunctionRegistry;

pub use error::FunctionError;

/// Register every Touchlake SQL function with a session's function registry.
pub fn register_all(registry: &mut dyn FunctionRegistry) -> datafusion::error::Result<()> {
    for udf in normalize::functions()
        .into_iter()
        .chain(time::functions())
        .chain(ltv::scalars())
        .chain(rfm::scalars())
        .chain([
            date_trunc::date_trunc(),
            to_char::to_char(),
            to_timestamp::to_timestamp(),
            to_timestamp::to_date(),
        ])
    {
        registry.register_udf(std::sync::Arc::new(udf))?;
    }
    let aggregates = [
        funnel::window_funnel(),
        retention::retention(),
        sequence::next_node(),
        sankey::top_paths(),
        attribution::attribution_weights(),
        shapley::shapley_attribution(),
        historical::historical_ltv(),
        session_list::sessions(),
    ]
    .into_iter()
    .chain(sequence::functions())
    .chain(paths::functions())
    .chain(paths::around_functions())
    .chain(metrics::functions())
    .chain(cohorts::functions())
    .chain(ltv::aggregates())
    .chain(markov::functions())
    .chain(funnel_detail::functions());
    for udaf in aggregates {
        registry.register_udaf(std::sync::Arc::new(udaf))?;
    }
    for udwf in sessions::functions()
        .into_iter()
        .chain(cohorts::window_functions())
        .chain(rfm::window_functions())
    {
        registry.register_udwf(std::sync::Arc::new(udwf))?;
    }
    size_limit::register(registry)?;
    first_last::register(registry)?;
    Ok(())
}
