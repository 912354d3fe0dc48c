//! Markov-chain attribution (functions.md §H2): `markov_attribution(path, conversions, value,
//! nulls [, order [, self_loops]])` and `markov_transition_matrix(path, conversions, nulls
//! [, order [, self_loops]])`, global aggregates over journeys.
//!
//! A journey `c1 > … > ck` adds transitions `(start) → s1 → … → sk`, then `sk → (conversion)`
//! weighted by its conversions and `sk → (null)` by its nulls (internal transitions by both).
//! States are the last `order` channels (order 1: the channel). Without `self_loops`,
//! consecutive repeats of a channel collapse first. The probability of conversion from
//! `(start)` is the exact absorbing-chain solution of `(I − Q) x = r` (no simulation). The
//! removal effect of a channel is `1 − P(conversion without it) / P(conversion)`, where
//! removing it sends every state containing it to `(null)`; conversions and value are shared
//! in proportion to the removal effects. If nothing converts, everything is 0.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, StringArray, StructArray};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;
use crate::events;
use crate::journeys::{self, Counts, JourneyAccumulator};

/// The state names of the three special states.
pub const START: &str = "(start)";
/// The conversion state.
pub const CONVERSION: &str = "(conversion)";
/// The null (no conversion) state.
pub const NULL: &str = "(null)";
/// Above this many states the chain is solved by Gauss-Seidel instead of elimination.
const DENSE_LIMIT: usize = 1500;

/// The functions of this module.
pub fn functions() -> Vec<AggregateUDF> {
    [false, true]
        .into_iter()
        .map(|matrix| {
            AggregateUDF::from(Markov {
                matrix,
                signature: Signature::user_defined(Volatility::Immutable),
            })
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Markov {
    /// `markov_transition_matrix` rather than `markov_attribution`.
    matrix: bool,
    signature: Signature,
}

impl Markov {
    fn name(&self) -> &'static str {
        if self.matrix {
            "markov_transition_matrix"
        } else {
            "markov_attribution"
        }
    }
    /// Numeric data columns after the path.
    fn numbers(&self) -> usize {
        if self.matrix { 2 } else { 3 }
    }
}

fn attribution_fields() -> Fields {
    Fields::from(vec![
        Field::new("channel", DataType::Utf8, false),
        Field::new("removal_effect", DataType::Float64, false),
        Field::new("conversions", DataType::Float64, false),
        Field::new("value", DataType::Float64, false),
    ])
}

fn matrix_fields() -> Fields {
    Fields::from(vec![
        Field::new("from", DataType::Utf8, false),
        Field::new("to", DataType::Utf8, false),
        Field::new("p", DataType::Float64, false),
    ])
}

impl AggregateUDFImpl for Markov {
    fn name(&self) -> &str {
        Markov::name(self)
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let name = Markov::name(self);
        let n = self.numbers();
        let usage = if self.matrix {
            "takes (path text[], conversions, nulls [, order integer [, self_loops boolean]])"
        } else {
            "takes (path text[], conversions, value, nulls [, order integer [, self_loops boolean]])"
        };
        if types.len() < n + 1 || types.len() > n + 3 || !journeys::is_text_list(&types[0]) {
            return Err(invalid(name, usage));
        }
        let mut out = types.to_vec();
        out[0] = journeys::text_list();
        for (i, t) in types.iter().enumerate().skip(1) {
            out[i] = match i - 1 {
                k if k < n && (t.is_numeric() || *t == DataType::Null) => DataType::Float64,
                k if k == n && t.is_integer() => DataType::Int64,
                k if k == n + 1 && matches!(t, DataType::Boolean) => DataType::Boolean,
                _ => return Err(invalid(name, usage)),
            };
        }
        Ok(out)
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        let fields = if self.matrix {
            matrix_fields()
        } else {
            attribution_fields()
        };
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Struct(fields),
            true,
        ))))
    }
    fn is_nullable(&self) -> bool {
        false
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(journeys::state_fields(args.name))
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let name = Markov::name(self);
        let n = self.numbers();
        let mut order = 1usize;
        let mut self_loops = false;
        if let Some(e) = args.exprs.get(n + 1) {
            order = match events::literal(e) {
                Some(ScalarValue::Int64(Some(k))) if (1..=4).contains(k) => *k as usize,
                _ => return Err(invalid(name, "order must be a constant from 1 to 4")),
            };
        }
        if let Some(e) = args.exprs.get(n + 2) {
            self_loops = match events::literal(e) {
                Some(ScalarValue::Boolean(Some(b))) => *b,
                _ => return Err(invalid(name, "self_loops must be a constant boolean")),
            };
        }
        let matrix = self.matrix;
        // Numbers: (conversions, value, nulls).
        let numbers = if matrix {
            [Some(1), None, Some(2)]
        } else {
            [Some(1), Some(2), Some(3)]
        };
        Ok(Box::new(JourneyAccumulator::new(
            name,
            numbers,
            Box::new(move |journeys| {
                let chain = Chain::build(journeys, order, self_loops);
                if matrix {
                    chain.matrix_value()
                } else {
                    chain.attribution_value()
                }
            }),
        )))
    }
}

/// An absorbing Markov chain over journeys.
#[derive(Debug, Default)]
pub struct Chain {
    /// Transient states: 0 is `(start)`, then the channel states in sorted order.
    pub states: Vec<String>,
    /// For each state, the channels it contains.
    pub members: Vec<Vec<String>>,
    /// Weighted transitions between transient states: from → to → weight.
    pub edges: Vec<HashMap<usize, f64>>,
    /// Weight to `(conversion)` and to `(null)` per transient state.
    pub to_conversion: Vec<f64>,
    /// Weight to `(null)`.
    pub to_null: Vec<f64>,
    /// Total conversions and value over the journeys with at least one channel.
    pub conversions: f64,
    /// Total value.
    pub value: f64,
    /// Every channel seen.
    pub channels: Vec<String>,
}

impl Chain {
    /// The chain of `journeys` with states of the last `order` channels.
    pub fn build(journeys: &[(Vec<String>, Counts)], order: usize, self_loops: bool) -> Chain {
        let mut chain = Chain::default();
        let mut index: HashMap<Vec<String>, usize> = HashMap::new();
        // Collect the state sequences first so states can be numbered in sorted order.
        let mut sequences: Vec<(Vec<Vec<String>>, Counts)> = vec![];
        for (path, c) in journeys {
            let mut p: Vec<String> = path.clone();
            if !self_loops {
                p.dedup();
            }
            if p.is_empty() {
                continue;
            }
            let seq: Vec<Vec<String>> = (0..p.len())
                .map(|i| p[(i + 1).saturating_sub(order)..=i].to_vec())
                .collect();
            chain.conversions += c[0];
            chain.value += c[1];
            sequences.push((seq, *c));
        }
        let mut all: Vec<Vec<String>> = sequences.iter().flat_map(|s| s.0.clone()).collect();
        all.sort();
        all.dedup();
        chain.states.push(START.to_string());
        chain.members.push(vec![]);
        for s in all {
            index.insert(s.clone(), chain.states.len());
            chain.states.push(s.join(" > "));
            let mut m = s.clone();
            m.sort();
            m.dedup();
            chain.members.push(m);
        }
        let n = chain.states.len();
        chain.edges = vec![HashMap::new(); n];
        chain.to_conversion = vec![0.0; n];
        chain.to_null = vec![0.0; n];
        for (seq, c) in &sequences {
            let w = c[0] + c[2];
            let mut from = 0usize;
            for s in seq {
                let to = index[s];
                *chain.edges[from].entry(to).or_insert(0.0) += w;
                from = to;
            }
            chain.to_conversion[from] += c[0];
            chain.to_null[from] += c[2];
        }
        let mut channels: Vec<String> = chain.members.iter().flatten().cloned().collect();
        channels.sort();
        channels.dedup();
        chain.channels = channels;
        chain
    }

    /// P(conversion) from `(start)` with the states in `removed` sent to `(null)`.
    pub fn conversion_probability(&self, removed: &[bool]) -> f64 {
        let n = self.states.len();
        let total: Vec<f64> = (0..n)
            .map(|i| self.edges[i].values().sum::<f64>() + self.to_conversion[i] + self.to_null[i])
            .collect();
        // x_i = Σ_j P_ij x_j + P_i,conv over kept states; removed states have x = 0.
        let keep: Vec<usize> = (0..n).filter(|&i| !removed[i] && total[i] > 0.0).collect();
        if keep.first() != Some(&0) {
            return 0.0;
        }
        let pos: HashMap<usize, usize> = keep.iter().enumerate().map(|(k, &i)| (i, k)).collect();
        let m = keep.len();
        let rhs: Vec<f64> = keep
            .iter()
            .map(|&i| self.to_conversion[i] / total[i])
            .collect();
        if m <= DENSE_LIMIT {
            let mut a = vec![vec![0.0f64; m]; m];
            for (k, &i) in keep.iter().enumerate() {
                a[k][k] = 1.0;
                for (&j, &w) in &self.edges[i] {
                    if let Some(&l) = pos.get(&j) {
                        a[k][l] -= w / total[i];
                    }
                }
            }
            solve(a, rhs).first().copied().unwrap_or(0.0)
        } else {
            let mut x = vec![0.0f64; m];
            for _ in 0..1_000_000 {
                let mut change = 0.0f64;
                for (k, &i) in keep.iter().enumerate() {
                    let mut v = rhs[k];
                    for (&j, &w) in &self.edges[i] {
                        if let Some(&l) = pos.get(&j) {
                            v += w / total[i] * x[l];
                        }
                    }
                    change = change.max((v - x[k]).abs());
                    x[k] = v;
                }
                if change < 1e-16 {
                    break;
                }
            }
            x[0]
        }
    }

    /// (channel, removal effect, conversions, value) per channel.
    pub fn attribution(&self) -> Vec<(String, f64, f64, f64)> {
        let n = self.states.len();
        let base = self.conversion_probability(&vec![false; n]);
        let effects: Vec<f64> = self
            .channels
            .iter()
            .map(|c| {
                if base <= 0.0 {
                    return 0.0;
                }
                let removed: Vec<bool> = self.members.iter().map(|m| m.contains(c)).collect();
                (1.0 - self.conversion_probability(&removed) / base).max(0.0)
            })
            .collect();
        let sum: f64 = effects.iter().sum();
        self.channels
            .iter()
            .zip(&effects)
            .map(|(c, &e)| {
                let share = if sum > 0.0 { e / sum } else { 0.0 };
                (c.clone(), e, share * self.conversions, share * self.value)
            })
            .collect()
    }

    fn attribution_value(&self) -> Result<ScalarValue> {
        let rows = self.attribution();
        let structs = StructArray::try_new(
            attribution_fields(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.0.as_str()),
                )) as ArrayRef,
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3))),
            ],
            None,
        )?;
        Ok(events::one_list(Arc::new(structs)))
    }

    /// Transition probabilities (from, to, p), in state order.
    pub fn matrix(&self) -> Vec<(String, String, f64)> {
        let mut out = vec![];
        for i in 0..self.states.len() {
            let total: f64 =
                self.edges[i].values().sum::<f64>() + self.to_conversion[i] + self.to_null[i];
            if total <= 0.0 {
                continue;
            }
            let mut to: Vec<(&str, f64)> = self.edges[i]
                .iter()
                .map(|(&j, &w)| (self.states[j].as_str(), w))
                .collect();
            to.push((CONVERSION, self.to_conversion[i]));
            to.push((NULL, self.to_null[i]));
            to.sort_by(|a, b| a.0.cmp(b.0));
            for (t, w) in to {
                if w > 0.0 {
                    out.push((self.states[i].clone(), t.to_string(), w / total));
                }
            }
        }
        out
    }

    fn matrix_value(&self) -> Result<ScalarValue> {
        let rows = self.matrix();
        let structs = StructArray::try_new(
            matrix_fields(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.0.as_str()),
                )) as ArrayRef,
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.1.as_str()),
                )),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
            ],
            None,
        )?;
        Ok(events::one_list(Arc::new(structs)))
    }
}

/// Solve a · x = b by Gaussian elimination with partial pivoting.
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        b.swap(col, pivot);
        let p = a[col][col];
        if p.abs() < 1e-300 {
            continue;
        }
        let (top, rest) = a.split_at_mut(col + 1);
        let pivot_row = &top[col];
        for (r, row) in rest.iter_mut().enumerate() {
            let f = row[col] / p;
            if f == 0.0 {
                continue;
            }
            for (x, y) in row[col..].iter_mut().zip(&pivot_row[col..]) {
                *x -= f * y;
            }
            b[col + 1 + r] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = if a[row][row].abs() < 1e-300 {
            0.0
        } else {
            (b[row] - s) / a[row][row]
        };
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(path: &[&str], conv: f64, nulls: f64) -> (Vec<String>, Counts) {
        (
            path.iter().map(|s| s.to_string()).collect(),
            [conv, conv * 10.0, nulls],
        )
    }

    #[test]
    fn two_channel_example() {
        // a > b converts once, a fails once: P(conv) = P(a→b) = 0.5.
        let chain = Chain::build(&[j(&["a", "b"], 1.0, 0.0), j(&["a"], 0.0, 1.0)], 1, false);
        let n = chain.states.len();
        assert!((chain.conversion_probability(&vec![false; n]) - 0.5).abs() < 1e-12);
        let att = chain.attribution();
        // Removing either channel kills every conversion: equal shares.
        assert_eq!(att.len(), 2);
        assert!((att[0].1 - 1.0).abs() < 1e-12 && (att[0].2 - 0.5).abs() < 1e-12);
        assert!((att[1].3 - 5.0).abs() < 1e-12);
    }

    #[test]
    fn nothing_converts_gives_zeros() {
        let chain = Chain::build(&[j(&["a", "b"], 0.0, 3.0)], 1, false);
        assert!(chain.attribution().iter().all(|r| r.1 == 0.0 && r.2 == 0.0));
    }
}
