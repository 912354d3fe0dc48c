//! Shapley attribution (functions.md §H3): `shapley_attribution(channels, conversions, value,
//! paths [, options])`, a global aggregate over journeys. The players are the channels; a
//! coalition S is worth
//! - `coalition_value=subset_sum` (default): the conversions of the journeys whose channel set
//!   is a subset of S, so the Shapley values add up to all conversions;
//! - `coalition_value=exact_set`: the conversions of the journeys whose channel set is exactly
//!   S (MAM's convention); the values are then scaled to add up to all conversions.
//!
//! With `worth=conversion_rate` a coalition is worth conversions / paths instead (MAM's
//! `conv_rate`). Exact up to `max_channels` (default 12) channels; above, the mean marginal
//! contribution over `samples` random orders (default 10,000; seeded by `seed`, default 42).
//! Output: `[{channel, shapley, conversions, value}]`, `shapley` the raw Shapley value,
//! `conversions`/`value` the totals shared in proportion to the positive Shapley values
//! (exact-set games can make some negative).

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

const NAME: &str = "shapley_attribution";

/// `shapley_attribution` as an aggregate function.
pub fn shapley_attribution() -> AggregateUDF {
    AggregateUDF::from(Shapley {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Shapley {
    signature: Signature,
}

fn fields() -> Fields {
    Fields::from(vec![
        Field::new("channel", DataType::Utf8, false),
        Field::new("shapley", DataType::Float64, false),
        Field::new("conversions", DataType::Float64, false),
        Field::new("value", DataType::Float64, false),
    ])
}

/// A call's settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Subset sums rather than exact sets.
    pub subset_sum: bool,
    /// Conversion rate (conversions / paths) rather than conversions.
    pub rate: bool,
    /// Exact computation up to this many channels.
    pub max_channels: usize,
    /// Random orders sampled above `max_channels`.
    pub samples: usize,
    /// Seed of the sampling.
    pub seed: u64,
}

impl Options {
    fn parse(text: &str) -> Result<Self> {
        let mut o = Options {
            subset_sum: true,
            rate: false,
            max_channels: 12,
            samples: 10_000,
            seed: 42,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| invalid(NAME, format!("option '{part}' is not key=value")))?;
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            let int = |lo: u64, hi: u64| match v.parse::<u64>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(invalid(
                    NAME,
                    format!("{k}: '{v}' is not an integer from {lo} to {hi}"),
                )),
            };
            match k.as_str() {
                "coalition_value" => {
                    o.subset_sum = match v.as_str() {
                        "subset_sum" => true,
                        "exact_set" => false,
                        _ => {
                            return Err(invalid(
                                NAME,
                                format!("coalition_value '{v}' is not subset_sum or exact_set"),
                            ));
                        }
                    }
                }
                "worth" => {
                    o.rate = match v.as_str() {
                        "conversions" => false,
                        "conversion_rate" | "conv_rate" => true,
                        _ => {
                            return Err(invalid(
                                NAME,
                                format!("worth '{v}' is not conversions or conversion_rate"),
                            ));
                        }
                    }
                }
                "max_channels" => o.max_channels = int(1, 20)? as usize,
                "samples" => o.samples = int(1, 10_000_000)? as usize,
                "seed" => o.seed = int(0, u64::MAX)?,
                other => {
                    return Err(invalid(
                        NAME,
                        format!(
                            "unknown option '{other}' (coalition_value, worth, max_channels, \
                             samples, seed)"
                        ),
                    ));
                }
            }
        }
        Ok(o)
    }
}

impl AggregateUDFImpl for Shapley {
    fn name(&self) -> &str {
        NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let usage = "takes (channels text[], conversions, value, paths [, options text])";
        if types.len() < 4 || types.len() > 5 || !journeys::is_text_list(&types[0]) {
            return Err(invalid(NAME, usage));
        }
        let mut out = types.to_vec();
        out[0] = journeys::text_list();
        for (i, t) in types.iter().enumerate().skip(1) {
            out[i] = match i {
                1..=3 if t.is_numeric() || *t == DataType::Null => DataType::Float64,
                4 if events::is_text(t) => DataType::Utf8,
                _ => return Err(invalid(NAME, usage)),
            };
        }
        Ok(out)
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Struct(fields()),
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
        let options = match args.exprs.get(4) {
            Some(e) => {
                let v = events::literal(e)
                    .ok_or_else(|| invalid(NAME, "options must be a constant"))?;
                Options::parse(&events::text_literal(NAME, "options", v)?)?
            }
            None => Options::parse("")?,
        };
        Ok(Box::new(JourneyAccumulator::new(
            NAME,
            [Some(1), Some(2), Some(3)],
            Box::new(move |journeys| result(&attribute(journeys, &options))),
        )))
    }
}

/// (channel, Shapley value, conversions, value) per channel.
pub fn attribute(journeys: &[(Vec<String>, Counts)], o: &Options) -> Vec<(String, f64, f64, f64)> {
    let mut channels: Vec<String> = journeys.iter().flat_map(|j| j.0.clone()).collect();
    channels.sort();
    channels.dedup();
    let n = channels.len();
    let index: HashMap<&str, usize> = channels
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    // Journeys as sorted, distinct channel indexes.
    let sets: Vec<(Vec<usize>, Counts)> = journeys
        .iter()
        .filter(|j| !j.0.is_empty())
        .map(|(p, c)| {
            let mut s: Vec<usize> = p.iter().map(|x| index[x.as_str()]).collect();
            s.sort_unstable();
            s.dedup();
            (s, *c)
        })
        .collect();
    let total_conv: f64 = sets.iter().map(|s| s.1[0]).sum();
    let total_value: f64 = sets.iter().map(|s| s.1[1]).sum();
    // φ on conversions (or rates) and on value.
    let (phi, phi_value) = if n <= o.max_channels {
        exact(n, &sets, o)
    } else {
        sampled(n, &sets, o)
    };
    // Totals are shared in proportion to the positive Shapley values (exact-set games can
    // give negative ones, and values that sum to 0).
    let share = |p: &[f64], total: f64, i: usize| {
        let s: f64 = p.iter().map(|x| x.max(0.0)).sum();
        if s > 0.0 {
            p[i].max(0.0) / s * total
        } else {
            0.0
        }
    };
    channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                c.clone(),
                phi[i],
                share(&phi, total_conv, i),
                share(&phi_value, total_value, i),
            )
        })
        .collect()
}

/// Worth of a coalition from summed (conversions, value, paths).
fn worth(sum: &Counts, rate: bool) -> (f64, f64) {
    if rate {
        if sum[2] > 0.0 {
            (sum[0] / sum[2], sum[1] / sum[2])
        } else {
            (0.0, 0.0)
        }
    } else {
        (sum[0], sum[1])
    }
}

fn exact(n: usize, sets: &[(Vec<usize>, Counts)], o: &Options) -> (Vec<f64>, Vec<f64>) {
    let size = 1usize << n;
    let mut sums = vec![[0.0f64; 3]; size];
    for (s, c) in sets {
        let mask = s.iter().fold(0usize, |m, &i| m | (1 << i));
        for k in 0..3 {
            sums[mask][k] += c[k];
        }
    }
    if o.subset_sum {
        // Sum over subsets (zeta transform).
        for bit in 0..n {
            for mask in 0..size {
                if mask & (1 << bit) != 0 {
                    let from = sums[mask ^ (1 << bit)];
                    for k in 0..3 {
                        sums[mask][k] += from[k];
                    }
                }
            }
        }
    }
    let v: Vec<(f64, f64)> = sums.iter().map(|s| worth(s, o.rate)).collect();
    // |S|! (n − |S| − 1)! / n!
    let fact: Vec<f64> = (0..=n)
        .scan(1.0, |f, i| {
            if i > 0 {
                *f *= i as f64;
            }
            Some(*f)
        })
        .collect();
    let mut phi = vec![0.0; n];
    let mut phi_value = vec![0.0; n];
    for mask in 0..size {
        let s = mask.count_ones() as usize;
        if s == n {
            continue;
        }
        let w = fact[s] * fact[n - s - 1] / fact[n];
        for i in 0..n {
            if mask & (1 << i) == 0 {
                let with = mask | (1 << i);
                phi[i] += w * (v[with].0 - v[mask].0);
                phi_value[i] += w * (v[with].1 - v[mask].1);
            }
        }
    }
    (phi, phi_value)
}

/// splitmix64: a small, well-mixed, seeded generator (enough for choosing orders).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn sampled(n: usize, sets: &[(Vec<usize>, Counts)], o: &Options) -> (Vec<f64>, Vec<f64>) {
    let mut rng = Rng(o.seed);
    let mut phi = vec![0.0; n];
    let mut phi_value = vec![0.0; n];
    let by_set: HashMap<&[usize], Counts> = {
        let mut m: HashMap<&[usize], Counts> = HashMap::new();
        for (s, c) in sets {
            let e = m.entry(s.as_slice()).or_insert([0.0; 3]);
            for k in 0..3 {
                e[k] += c[k];
            }
        }
        m
    };
    let value_of = |members: &[bool]| -> (f64, f64) {
        let mut sum = [0.0f64; 3];
        for (s, c) in &by_set {
            let hit = if o.subset_sum {
                s.iter().all(|&i| members[i])
            } else {
                s.len() == members.iter().filter(|m| **m).count() && s.iter().all(|&i| members[i])
            };
            if hit {
                for k in 0..3 {
                    sum[k] += c[k];
                }
            }
        }
        worth(&sum, o.rate)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for _ in 0..o.samples {
        for i in (1..n).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut members = vec![false; n];
        let mut prev = value_of(&members);
        for &p in &order {
            members[p] = true;
            let now = value_of(&members);
            phi[p] += now.0 - prev.0;
            phi_value[p] += now.1 - prev.1;
            prev = now;
        }
    }
    let k = o.samples as f64;
    (
        phi.into_iter().map(|x| x / k).collect(),
        phi_value.into_iter().map(|x| x / k).collect(),
    )
}

fn result(rows: &[(String, f64, f64, f64)]) -> Result<ScalarValue> {
    let structs = StructArray::try_new(
        fields(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn j(path: &[&str], conv: f64) -> (Vec<String>, Counts) {
        (
            path.iter().map(|s| s.to_string()).collect(),
            [conv, conv, conv],
        )
    }

    #[test]
    fn subset_sum_is_efficient_and_symmetric() {
        let o = Options::parse("").expect("options");
        let r = attribute(&[j(&["a", "b"], 2.0), j(&["a"], 1.0)], &o);
        // v(a) = 1, v(b) = 0, v(ab) = 3: φa = (1 + 3)/2 = 2, φb = (0 + 2)/2 = 1.
        assert!((r[0].1 - 2.0).abs() < 1e-12 && (r[1].1 - 1.0).abs() < 1e-12);
        // The sampled estimate converges to the same.
        let s = Options {
            max_channels: 1,
            samples: 2000,
            ..o
        };
        let r = attribute(&[j(&["a", "b"], 2.0), j(&["a"], 1.0)], &s);
        assert!((r[0].1 - 2.0).abs() < 0.1, "{r:?}");
    }
}
