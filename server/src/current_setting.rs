//! `current_setting(name [, missing_ok])`: a setting of the connection as text, as
//! PostgreSQL's function answers it (BI tools read `search_path` and the server's
//! `touchlake.*` configuration this way).

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{Result, plan_err};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

use crate::session::SessionError;
use crate::settings::{SettingError, Settings};

/// `current_setting` over the connection's settings as they are now (the session
/// registers it again after each change).
pub fn udf(settings: Settings) -> ScalarUDF {
    ScalarUDF::from(CurrentSetting {
        settings: Arc::new(settings),
        signature: Signature::user_defined(Volatility::Stable),
    })
}

#[derive(Debug)]
struct CurrentSetting {
    settings: Arc<Settings>,
    signature: Signature,
}

impl PartialEq for CurrentSetting {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.settings, &other.settings)
    }
}

impl Eq for CurrentSetting {}

impl std::hash::Hash for CurrentSetting {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.settings).hash(state);
    }
}

impl ScalarUDFImpl for CurrentSetting {
    fn name(&self) -> &str {
        "current_setting"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        match types.len() {
            1 => Ok(vec![DataType::Utf8]),
            2 => Ok(vec![DataType::Utf8, DataType::Boolean]),
            n => plan_err!(
                "current_setting takes a name and an optional missing_ok, not {n} arguments"
            ),
        }
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let names = cast(&arrays[0], &DataType::Utf8)?;
        let names = names.as_string::<i32>();
        let missing_ok = match arrays.get(1) {
            Some(a) => Some(cast(a, &DataType::Boolean)?),
            None => None,
        };
        let mut out = StringBuilder::with_capacity(rows, rows * 8);
        for i in 0..names.len() {
            if names.is_null(i) {
                out.append_null();
                continue;
            }
            let name = names.value(i);
            match self.settings.get(name) {
                Some(v) => out.append_value(v),
                None if missing_ok
                    .as_ref()
                    .is_some_and(|m| m.is_valid(i) && m.as_boolean().value(i)) =>
                {
                    out.append_null()
                }
                None => {
                    return Err(DataFusionError::External(Box::new(SessionError::Setting(
                        SettingError::Unknown(name.to_string()),
                    ))));
                }
            }
        }
        let out: Arc<dyn Array> = Arc::new(out.finish());
        if args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)))
        {
            return Ok(ColumnarValue::Scalar(
                datafusion::common::ScalarValue::try_from_array(&out, 0)?,
            ));
        }
        Ok(ColumnarValue::Array(out))
    }
}
