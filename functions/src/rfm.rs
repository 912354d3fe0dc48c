//! RFM scoring (functions.md §I): the window function `rfm_score(recency, frequency,
//! monetary [, q] [, method]) OVER (…)` and the scalar `rfm_segment(code [, config])`, as
//! pymc-marketing's `rfm_segments` computes them: quantile bins by `pandas.qcut(q=4,
//! duplicates='drop')` (equal values share a bin, so there can be fewer bins), recency
//! scored in reverse (a shorter time since the last purchase is better), the three digits
//! joined into a code, and the code looked up in a segment table.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int32Array, StringArray, StructArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type};
use datafusion::error::Result;
use datafusion::logical_expr::function::{PartitionEvaluatorArgs, WindowUDFFieldArgs};
use datafusion::logical_expr::{
    ColumnarValue, PartitionEvaluator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility, WindowUDF, WindowUDFImpl,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;
use crate::events;

const SCORE: &str = "rfm_score";
const SEGMENT: &str = "rfm_segment";

/// `rfm_score` (window).
pub fn window_functions() -> Vec<WindowUDF> {
    vec![WindowUDF::from(RfmScore {
        signature: Signature::user_defined(Volatility::Immutable),
    })]
}

/// `rfm_segment` (scalar).
pub fn scalars() -> Vec<ScalarUDF> {
    vec![ScalarUDF::from(RfmSegment {
        signature: Signature::user_defined(Volatility::Immutable),
    })]
}

fn score_fields() -> Fields {
    Fields::from(vec![
        Field::new("r", DataType::Int32, true),
        Field::new("f", DataType::Int32, true),
        Field::new("m", DataType::Int32, true),
        Field::new("code", DataType::Utf8, true),
    ])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RfmScore {
    signature: Signature,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Method {
    Qcut,
    Ntile,
}

impl WindowUDFImpl for RfmScore {
    fn name(&self) -> &str {
        SCORE
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let usage = "takes (recency, frequency, monetary [, q integer] [, method 'qcut'|'ntile'])";
        if types.len() < 3 || types.len() > 5 {
            return Err(invalid(SCORE, usage));
        }
        let mut out = types.to_vec();
        for (i, t) in types.iter().enumerate() {
            out[i] = match i {
                0..=2 if t.is_numeric() || *t == DataType::Null => DataType::Float64,
                3 if t.is_integer() => DataType::Int64,
                3 | 4 if events::is_text(t) && i == types.len() - 1 => DataType::Utf8,
                _ => return Err(invalid(SCORE, usage)),
            };
        }
        Ok(out)
    }
    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        Ok(Arc::new(Field::new(
            args.name(),
            DataType::Struct(score_fields()),
            true,
        )))
    }
    fn partition_evaluator(
        &self,
        args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        let exprs = args.input_exprs();
        let (mut q, mut method) = (4usize, Method::Qcut);
        for e in exprs.iter().skip(3) {
            let v = events::literal(e)
                .ok_or_else(|| invalid(SCORE, "q and method must be constants"))?;
            match v {
                ScalarValue::Int64(Some(n)) if (2..=9).contains(n) => q = *n as usize,
                ScalarValue::Int64(_) => {
                    return Err(invalid(SCORE, format!("q must be from 2 to 9, not {v}")));
                }
                v => {
                    method = match events::text_literal(SCORE, "method", v)?
                        .to_ascii_lowercase()
                        .as_str()
                    {
                        "qcut" => Method::Qcut,
                        "ntile" => Method::Ntile,
                        other => {
                            return Err(invalid(
                                SCORE,
                                format!("method '{other}' is not qcut or ntile"),
                            ));
                        }
                    }
                }
            }
        }
        Ok(Box::new(ScoreEvaluator { q, method }))
    }
}

#[derive(Debug)]
struct ScoreEvaluator {
    q: usize,
    method: Method,
}

/// numpy's linear-interpolation quantile of sorted values.
fn quantile(sorted: &[f64], p: f64) -> f64 {
    let h = (sorted.len() - 1) as f64 * p;
    let (lo, hi) = (h.floor() as usize, h.ceil() as usize);
    sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo])
}

/// 1-based bins of `values` by `pandas.qcut(values, q, duplicates='drop')` (NULL stays
/// NULL; a column of one distinct value is all 1).
fn qcut(values: &[Option<f64>], q: usize) -> Vec<Option<(usize, usize)>> {
    let mut sorted: Vec<f64> = values.iter().flatten().copied().collect();
    if sorted.is_empty() {
        return vec![None; values.len()];
    }
    sorted.sort_by(f64::total_cmp);
    let mut edges: Vec<f64> = (0..=q)
        .map(|i| quantile(&sorted, i as f64 / q as f64))
        .collect();
    edges.dedup();
    let bins = edges.len().saturating_sub(1).max(1);
    values
        .iter()
        .map(|v| {
            v.map(|v| {
                // (e_i, e_{i+1}], the first bin closed on the left.
                let i = edges[1..].partition_point(|e| *e < v);
                (i.min(bins - 1) + 1, bins)
            })
        })
        .collect()
}

/// 1-based NTILE(q) buckets in ascending order of value (ties in row order).
fn ntile(values: &[Option<f64>], q: usize) -> Vec<Option<(usize, usize)>> {
    let mut order: Vec<usize> = (0..values.len()).filter(|&i| values[i].is_some()).collect();
    order.sort_by(|&a, &b| {
        values[a]
            .unwrap_or(0.0)
            .total_cmp(&values[b].unwrap_or(0.0))
            .then(a.cmp(&b))
    });
    let n = order.len();
    let mut out = vec![None; values.len()];
    // SQL NTILE: the first n % q buckets hold one row more.
    let (size, extra) = (n / q, n % q);
    let mut at = 0;
    for bucket in 0..q.min(n) {
        let len = size + usize::from(bucket < extra);
        for &row in &order[at..at + len] {
            out[row] = Some((bucket + 1, q.min(n)));
        }
        at += len;
    }
    out
}

impl PartitionEvaluator for ScoreEvaluator {
    fn evaluate_all(&mut self, values: &[ArrayRef], num_rows: usize) -> Result<ArrayRef> {
        let cols: Vec<Vec<Option<f64>>> = values[..3]
            .iter()
            .map(|v| {
                let f = cast(v, &DataType::Float64)?;
                Ok(f.as_primitive::<Float64Type>().iter().collect())
            })
            .collect::<Result<_>>()?;
        let bin = |c: &[Option<f64>]| match self.method {
            Method::Qcut => qcut(c, self.q),
            Method::Ntile => ntile(c, self.q),
        };
        // Recency: a shorter time since the last purchase scores higher.
        let r: Vec<Option<i32>> = bin(&cols[0])
            .into_iter()
            .map(|b| b.map(|(i, bins)| (bins + 1 - i) as i32))
            .collect();
        let f: Vec<Option<i32>> = bin(&cols[1])
            .into_iter()
            .map(|b| b.map(|(i, _)| i as i32))
            .collect();
        let m: Vec<Option<i32>> = bin(&cols[2])
            .into_iter()
            .map(|b| b.map(|(i, _)| i as i32))
            .collect();
        let code: StringArray = (0..num_rows)
            .map(|i| match (r[i], f[i], m[i]) {
                (Some(r), Some(f), Some(m)) => Some(format!("{r}{f}{m}")),
                _ => None,
            })
            .collect();
        Ok(Arc::new(StructArray::try_new(
            score_fields(),
            vec![
                Arc::new(Int32Array::from(r)),
                Arc::new(Int32Array::from(f)),
                Arc::new(Int32Array::from(m)),
                Arc::new(code),
            ],
            None,
        )?))
    }
}

/// pymc-marketing's default segments (`_default_rfm_segment_config`); other codes are
/// "Other".
const DEFAULT_SEGMENTS: &[(&str, &[&str])] = &[
    (
        "Premium Customer",
        &["334", "443", "444", "344", "434", "433", "343", "333"],
    ),
    (
        "Repeat Customer",
        &["244", "234", "232", "332", "143", "233", "243"],
    ),
    (
        "Top Spender",
        &[
            "424", "414", "144", "314", "324", "124", "224", "423", "413", "133", "323", "313",
            "134",
        ],
    ),
    (
        "At Risk Customer",
        &[
            "422", "223", "212", "122", "222", "132", "322", "312", "412", "123", "214",
        ],
    ),
    (
        "Inactive Customer",
        &["411", "111", "113", "114", "112", "211", "311"],
    ),
];

#[derive(Debug, PartialEq, Eq, Hash)]
struct RfmSegment {
    signature: Signature,
}

/// A segment table from JSON text `{"segment": ["code", …], …}`; later segments win, as in
/// pymc-marketing.
fn segment_table(config: Option<&str>) -> Result<HashMap<String, String>> {
    let mut table = HashMap::new();
    match config {
        None => {
            for (name, codes) in DEFAULT_SEGMENTS {
                for c in *codes {
                    table.insert(c.to_string(), name.to_string());
                }
            }
        }
        Some(text) => {
            let parsed: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| {
                    invalid(
                        SEGMENT,
                        format!("config must be JSON like {{\"Champions\": [\"444\"]}}: {e}"),
                    )
                })?;
            for (name, codes) in parsed {
                let codes = codes
                    .as_array()
                    .ok_or_else(|| invalid(SEGMENT, format!("segment '{name}' must list codes")))?;
                for c in codes {
                    let c = match c {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Number(n) => n.to_string(),
                        other => {
                            return Err(invalid(
                                SEGMENT,
                                format!("code {other} of '{name}' is not text"),
                            ));
                        }
                    };
                    table.insert(c, name.clone());
                }
            }
        }
    }
    Ok(table)
}

impl ScalarUDFImpl for RfmSegment {
    fn name(&self) -> &str {
        SEGMENT
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let ok = !types.is_empty()
            && types.len() <= 2
            && types
                .iter()
                .all(|t| events::is_text(t) || *t == DataType::Null);
        if !ok {
            return Err(invalid(SEGMENT, "takes (code text [, config json text])"));
        }
        Ok(vec![DataType::Utf8; types.len()])
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let config = match args.args.get(1) {
            Some(ColumnarValue::Scalar(v)) => match v {
                v if v.is_null() => None,
                v => Some(events::text_literal(SEGMENT, "config", v)?),
            },
            Some(ColumnarValue::Array(_)) => {
                return Err(invalid(SEGMENT, "config must be a constant"));
            }
            None => None,
        };
        let table = segment_table(config.as_deref())?;
        crate::args::map_text(&args.args[..1], args.number_rows, |row| {
            Ok(row[0].map(|code| {
                table
                    .get(code)
                    .cloned()
                    .unwrap_or_else(|| "Other".to_string())
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcut_drops_duplicate_edges() {
        let v: Vec<Option<f64>> = [1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 9.0].map(Some).to_vec();
        // Quantiles 1, 1, 1.5, 3.25, 9 → edges 1, 1.5, 3.25, 9: three bins.
        let bins: Vec<usize> = qcut(&v, 4)
            .into_iter()
            .map(|b| b.map_or(0, |b| b.0))
            .collect();
        assert_eq!(bins, vec![1, 1, 1, 1, 2, 2, 3, 3]);
        assert_eq!(qcut(&[Some(5.0), Some(5.0)], 4)[0], Some((1, 1)));
    }
}
