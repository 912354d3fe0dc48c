//! Metric helpers (functions.md, "metrics"): `nps(score)`, the Net Promoter Score of 0–10
//! survey answers (% promoters 9–10 minus % detractors 0–6, from −100 to 100), and
//! `bounce_rate(events_in_session)`, the share of sessions with exactly one event. NULL
//! inputs are skipped; a group without values gives NULL; an NPS score outside 0–10 is an
//! error (22023).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;

/// The functions of this module.
pub fn functions() -> Vec<AggregateUDF> {
    [Metric::Nps, Metric::BounceRate]
        .into_iter()
        .map(|metric| {
            AggregateUDF::from(Counting {
                metric,
                signature: Signature::user_defined(Volatility::Immutable),
            })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Metric {
    Nps,
    BounceRate,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::Nps => "nps",
            Metric::BounceRate => "bounce_rate",
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Counting {
    metric: Metric,
    signature: Signature,
}

impl AggregateUDFImpl for Counting {
    fn name(&self) -> &str {
        self.metric.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        match types {
            [t] if t.is_numeric() || *t == DataType::Null => Ok(vec![DataType::Float64]),
            _ => Err(invalid(self.metric.name(), "takes one numeric argument")),
        }
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(["n", "plus", "minus"]
            .iter()
            .map(|k| {
                Arc::new(Field::new(
                    format!("{}[{k}]", args.name),
                    DataType::Int64,
                    true,
                ))
            })
            .collect())
    }
    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(CountingAccumulator {
            metric: self.metric,
            counts: [0; 3],
        }))
    }
}

/// (values, promoters or one-event sessions, detractors).
#[derive(Debug)]
struct CountingAccumulator {
    metric: Metric,
    counts: [i64; 3],
}

impl Accumulator for CountingAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let v = cast(&values[0], &DataType::Float64)?;
        for x in v.as_primitive::<Float64Type>().iter().flatten() {
            self.counts[0] += 1;
            match self.metric {
                Metric::Nps => {
                    if !(0.0..=10.0).contains(&x) {
                        return Err(invalid("nps", format!("score {x} is outside 0–10")));
                    }
                    if x >= 9.0 {
                        self.counts[1] += 1;
                    } else if x <= 6.0 {
                        self.counts[2] += 1;
                    }
                }
                Metric::BounceRate => {
                    if x == 1.0 {
                        self.counts[1] += 1;
                    }
                }
            }
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(self
            .counts
            .iter()
            .map(|c| ScalarValue::Int64(Some(*c)))
            .collect())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for (k, s) in states.iter().enumerate().take(3) {
            for c in s.as_primitive::<Int64Type>().iter().flatten() {
                self.counts[k] += c;
            }
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let [n, plus, minus] = self.counts;
        if n == 0 {
            return Ok(ScalarValue::Float64(None));
        }
        let n = n as f64;
        Ok(ScalarValue::Float64(Some(match self.metric {
            Metric::Nps => 100.0 * (plus - minus) as f64 / n,
            Metric::BounceRate => plus as f64 / n,
        })))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}
