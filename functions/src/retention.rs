//! Retention (functions.md §F): `retention(cond1, …, condN)`, exactly ClickHouse's:
//! element 1 is whether any row meets `cond1`, element i whether any row meets `cond1` and
//! any row meets `cond_i`. A group without rows, or with no row meeting `cond1`, gives all
//! zeros. A NULL condition counts as false.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, ListArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, UInt8Type, UInt32Type};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;
use crate::events;

const NAME: &str = "retention";

/// `retention` as an aggregate function.
pub fn retention() -> AggregateUDF {
    AggregateUDF::from(Retention {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Retention {
    signature: Signature,
}

fn item() -> FieldRef {
    Arc::new(Field::new_list_field(DataType::UInt8, true))
}

impl AggregateUDFImpl for Retention {
    fn name(&self) -> &str {
        NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        if types.is_empty() || types.len() > events::MAX_CONDITIONS {
            return Err(invalid(
                NAME,
                format!("takes 1 to {} boolean conditions", events::MAX_CONDITIONS),
            ));
        }
        types
            .iter()
            .map(|t| match t {
                DataType::Boolean | DataType::Null => Ok(DataType::Boolean),
                other => Err(invalid(
                    NAME,
                    format!("conditions must be boolean, not {other}"),
                )),
            })
            .collect()
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(item()))
    }
    fn is_nullable(&self) -> bool {
        false
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format!("{}[met]", args.name),
            DataType::UInt32,
            true,
        ))])
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(RetentionAccumulator {
            n: args.exprs.len(),
            met: 0,
        }))
    }
}

/// Which conditions some row met, as a bitmask.
#[derive(Debug)]
struct RetentionAccumulator {
    n: usize,
    met: u32,
}

impl Accumulator for RetentionAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for (i, c) in events::conditions(NAME, values)?.iter().enumerate() {
            if c.contains(&Some(true)) {
                self.met |= 1 << i;
            }
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![ScalarValue::UInt32(Some(self.met))])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for m in states[0].as_primitive::<UInt32Type>().iter().flatten() {
            self.met |= m;
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let first = self.met & 1 != 0;
        let values = (0..self.n).map(|i| Some(u8::from(first && self.met & (1 << i) != 0)));
        Ok(ScalarValue::List(Arc::new(
            ListArray::from_iter_primitive::<UInt8Type, _, _>([Some(values)]),
        )))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}
