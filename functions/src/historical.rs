//! `historical_ltv(amount [, ts, as_of [, options]])` (functions.md §I): the value a customer
//! has brought so far — the sum of `margin_rate × amount` over the rows up to `as_of`, each
//! carried to `as_of` at `(1 + discount_rate)` per `period` elapsed (fractional periods
//! compound too; a month is 30.436875 days, a year 365.2425). Without options it is the plain
//! sum; without `as_of` every row counts and nothing is carried.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type, Int64Type};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;
use crate::events;

const NAME: &str = "historical_ltv";
const DAY_US: f64 = 86_400e6;

/// `historical_ltv` as an aggregate function.
pub fn historical_ltv() -> AggregateUDF {
    AggregateUDF::from(HistoricalLtv {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct HistoricalLtv {
    signature: Signature,
}

#[derive(Debug, Clone, Copy)]
struct Options {
    margin: f64,
    discount: f64,
    period_us: f64,
}

impl Options {
    fn parse(text: &str) -> Result<Self> {
        let mut o = Options {
            margin: 1.0,
            discount: 0.0,
            period_us: 30.436_875 * DAY_US,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| invalid(NAME, format!("option '{part}' is not key=value")))?;
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            let number = || {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| invalid(NAME, format!("{k}: '{v}' is not a number")))
            };
            match k.as_str() {
                "margin_rate" | "margin" => o.margin = number()?,
                "discount_rate" | "discount" => {
                    o.discount = number()?;
                    if o.discount <= -1.0 {
                        return Err(invalid(NAME, "discount_rate must be above -1"));
                    }
                }
                "period" => {
                    o.period_us = match v.to_ascii_lowercase().trim_end_matches('s') {
                        "day" => DAY_US,
                        "week" => 7.0 * DAY_US,
                        "month" => 30.436_875 * DAY_US,
                        "year" => 365.2425 * DAY_US,
                        _ => {
                            return Err(invalid(
                                NAME,
                                format!("period '{v}' is not day, week, month or year"),
                            ));
                        }
                    }
                }
                other => {
                    return Err(invalid(
                        NAME,
                        format!("unknown option '{other}' (margin_rate, discount_rate, period)"),
                    ));
                }
            }
        }
        Ok(o)
    }
}

impl AggregateUDFImpl for HistoricalLtv {
    fn name(&self) -> &str {
        NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let usage = "takes (amount [, ts, as_of [, options text]])";
        let numeric = |t: &DataType| t.is_numeric() || *t == DataType::Null;
        let ok = match types {
            [a] => numeric(a),
            [a, t, e] => numeric(a) && events::is_time_type(t) && events::is_time_type(e),
            [a, t, e, o] => {
                numeric(a)
                    && events::is_time_type(t)
                    && events::is_time_type(e)
                    && events::is_text(o)
            }
            _ => false,
        };
        if !ok {
            return Err(invalid(NAME, usage));
        }
        let mut out = types.to_vec();
        out[0] = DataType::Float64;
        if out.len() == 4 {
            out[3] = DataType::Utf8;
        }
        Ok(out)
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            events::list_state(args.name, "ts", DataType::Int64),
            events::list_state(args.name, "amount", DataType::Float64),
            Arc::new(Field::new(
                format!("{}[as_of]", args.name),
                DataType::Int64,
                true,
            )),
        ])
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let options = match args.exprs.get(3) {
            Some(e) => {
                let v = events::literal(e)
                    .ok_or_else(|| invalid(NAME, "options must be a constant"))?;
                Options::parse(&events::text_literal(NAME, "options", v)?)?
            }
            None => Options::parse("")?,
        };
        Ok(Box::new(LtvAccumulator {
            options,
            timed: args.exprs.len() >= 3,
            rows: vec![],
            as_of: None,
        }))
    }
}

#[derive(Debug)]
struct LtvAccumulator {
    options: Options,
    timed: bool,
    /// (time in µs, or 0 without times; amount).
    rows: Vec<(i64, f64)>,
    as_of: Option<i64>,
}

impl Accumulator for LtvAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let amount = cast(&values[0], &DataType::Float64)?;
        let amount = amount.as_primitive::<Float64Type>();
        let (ts, end) = if self.timed {
            (
                events::times(NAME, &values[1])?,
                events::times(NAME, &values[2])?,
            )
        } else {
            (vec![Some(0); amount.len()], vec![None; amount.len()])
        };
        for i in 0..amount.len() {
            if let Some(e) = end[i] {
                self.as_of = Some(self.as_of.map_or(e, |a| a.max(e)));
            }
            if let (true, Some(t)) = (amount.is_valid(i), ts[i]) {
                self.rows.push((t, amount.value(i)));
            }
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::List(Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(
                [Some(self.rows.iter().map(|r| Some(r.0)))],
            ))),
            ScalarValue::List(Arc::new(
                ListArray::from_iter_primitive::<Float64Type, _, _>([Some(
                    self.rows.iter().map(|r| Some(r.1)),
                )]),
            )),
            ScalarValue::Int64(self.as_of),
        ])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (t, a) = (states[0].as_list::<i32>(), states[1].as_list::<i32>());
        let e = states[2].as_primitive::<Int64Type>();
        for row in 0..t.len() {
            if e.is_valid(row) {
                let v = e.value(row);
                self.as_of = Some(self.as_of.map_or(v, |x| x.max(v)));
            }
            if t.is_null(row) {
                continue;
            }
            let (tv, av) = (t.value(row), a.value(row));
            let (tv, av) = (
                tv.as_primitive::<Int64Type>(),
                av.as_primitive::<Float64Type>(),
            );
            self.rows
                .extend(tv.values().iter().copied().zip(av.values().iter().copied()));
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let o = self.options;
        let total = self
            .rows
            .iter()
            .filter(|(t, _)| self.as_of.is_none_or(|e| *t <= e))
            .map(|(t, a)| {
                let carried = match self.as_of {
                    Some(e) if o.discount != 0.0 => {
                        (1.0 + o.discount).powf((e - t) as f64 / o.period_us)
                    }
                    _ => 1.0,
                };
                o.margin * a * carried
            })
            .sum::<f64>();
        Ok(ScalarValue::Float64(Some(total)))
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.rows.capacity() * 16
    }
}
