//! `top_paths(edges [, options])` (functions.md §G): the Sankey of many persons' paths. Its
//! input is one `path_edges(…)` list per row (usually one row per person); it returns the
//! heaviest edges, pruned to those reachable from step 1 so the diagram stays connected
//! (PostHog's paths: `ORDER BY event_count DESC LIMIT edge_limit`, then `validate_results`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int32Array, IntervalMonthDayNanoArray, ListArray, StringArray,
    StructArray, UInt64Array,
};
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Int32Type, Int64Type, IntervalMonthDayNano,
    IntervalMonthDayNanoType, IntervalUnit, UInt64Type,
};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::error::invalid;
use crate::events;

const NAME: &str = "top_paths";
/// PostHog's default number of edges.
const DEFAULT_EDGE_LIMIT: usize = 50;

/// `top_paths` as an aggregate function.
pub fn top_paths() -> AggregateUDF {
    AggregateUDF::from(TopPaths {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TopPaths {
    signature: Signature,
}

fn interval() -> DataType {
    DataType::Interval(IntervalUnit::MonthDayNano)
}

fn output_fields() -> Fields {
    Fields::from(vec![
        Field::new("step", DataType::Int32, false),
        Field::new("source", DataType::Utf8, false),
        Field::new("target", DataType::Utf8, false),
        Field::new("persons", DataType::UInt64, false),
        Field::new("events", DataType::UInt64, false),
        Field::new("avg_dt", interval(), true),
        Field::new("median_dt", interval(), true),
    ])
}

/// Is `t` the type `path_edges` returns (a list of structs with step, source, target, dt)?
fn is_edge_list(t: &DataType) -> bool {
    let DataType::List(item) = t else {
        return false;
    };
    let DataType::Struct(fields) = item.data_type() else {
        return false;
    };
    ["step", "source", "target", "dt"]
        .iter()
        .all(|n| fields.find(n).is_some())
}

impl AggregateUDFImpl for TopPaths {
    fn name(&self) -> &str {
        NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let ok = match types {
            [e] => is_edge_list(e),
            [e, o] => is_edge_list(e) && events::is_text(o),
            _ => false,
        };
        if !ok {
            return Err(invalid(
                NAME,
                "takes (edges, the result of path_edges(…) [, options text])",
            ));
        }
        let mut out = types.to_vec();
        if out.len() == 2 {
            out[1] = DataType::Utf8;
        }
        Ok(out)
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::List(Arc::new(Field::new_list_field(
            DataType::Struct(output_fields()),
            true,
        ))))
    }
    fn is_nullable(&self) -> bool {
        false
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            events::list_state(args.name, "step", DataType::Int32),
            events::list_state(args.name, "source", DataType::Utf8),
            events::list_state(args.name, "target", DataType::Utf8),
            events::list_state(args.name, "persons", DataType::UInt64),
            events::list_state(args.name, "dts", DataType::UInt64),
            events::list_state(args.name, "dt", DataType::Int64),
        ])
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let options = match args.exprs.get(1) {
            Some(e) => {
                let v = events::literal(e)
                    .ok_or_else(|| invalid(NAME, "options must be a constant"))?;
                Options::parse(&events::text_literal(NAME, "options", v)?)?
            }
            None => Options::default(),
        };
        Ok(Box::new(TopPathsAccumulator {
            options,
            edges: HashMap::new(),
        }))
    }
}

/// A call's options.
#[derive(Debug, Clone)]
struct Options {
    edge_limit: usize,
    min_weight: Option<u64>,
    max_weight: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            edge_limit: DEFAULT_EDGE_LIMIT,
            min_weight: None,
            max_weight: None,
        }
    }
}

impl Options {
    /// `edge_limit=N, min_edge_weight=N, max_edge_weight=N`.
    fn parse(text: &str) -> Result<Self> {
        let mut o = Options::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| invalid(NAME, format!("option '{part}' is not key=value")))?;
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            let n: u64 = v
                .parse()
                .map_err(|_| invalid(NAME, format!("{k}: '{v}' is not a non-negative integer")))?;
            match k.as_str() {
                "edge_limit" if n >= 1 => o.edge_limit = n as usize,
                "edge_limit" => return Err(invalid(NAME, "edge_limit must be at least 1")),
                "min_edge_weight" => o.min_weight = Some(n),
                "max_edge_weight" => o.max_weight = Some(n),
                other => {
                    return Err(invalid(
                        NAME,
                        format!(
                            "unknown option '{other}' (edge_limit, min_edge_weight, \
                             max_edge_weight)"
                        ),
                    ));
                }
            }
        }
        Ok(o)
    }
}

/// What is known of one edge.
#[derive(Debug, Default)]
struct EdgeStats {
    /// Rows (persons) with the edge.
    persons: u64,
    /// Times between source and target, in nanoseconds, one per occurrence of the edge
    /// (none for drop-off edges). Its length is the edge's count unless it is a drop-off.
    dts: Vec<i64>,
    /// Occurrences of the edge.
    events: u64,
}

type Key = (i32, String, String);

#[derive(Debug)]
struct TopPathsAccumulator {
    options: Options,
    edges: HashMap<Key, EdgeStats>,
}

fn nanos(i: IntervalMonthDayNano) -> i64 {
    let (months, days, ns) = IntervalMonthDayNanoType::to_parts(i);
    (i64::from(months) * 30 + i64::from(days)) * 86_400_000_000_000 + ns
}

impl Accumulator for TopPathsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let lists = values[0].as_list::<i32>();
        let mut seen: HashSet<Key> = HashSet::new();
        for row in 0..lists.len() {
            if lists.is_null(row) {
                continue;
            }
            let items = lists.value(row);
            let s = items.as_struct();
            let column = |n: &str| {
                s.column_by_name(n)
                    .cloned()
                    .ok_or_else(|| invalid(NAME, format!("the edges have no field {n}")))
            };
            let step = datafusion::arrow::compute::cast(&column("step")?, &DataType::Int32)?;
            let source = datafusion::arrow::compute::cast(&column("source")?, &DataType::Utf8)?;
            let target = datafusion::arrow::compute::cast(&column("target")?, &DataType::Utf8)?;
            let dt = datafusion::arrow::compute::cast(&column("dt")?, &interval())?;
            let (step, source, target, dt) = (
                step.as_primitive::<Int32Type>(),
                source.as_string::<i32>(),
                target.as_string::<i32>(),
                dt.as_primitive::<IntervalMonthDayNanoType>(),
            );
            seen.clear();
            for i in 0..s.len() {
                if s.is_null(i) || step.is_null(i) || source.is_null(i) || target.is_null(i) {
                    continue;
                }
                let key = (
                    step.value(i),
                    source.value(i).to_string(),
                    target.value(i).to_string(),
                );
                let e = self.edges.entry(key.clone()).or_default();
                e.events += 1;
                if dt.is_valid(i) {
                    e.dts.push(nanos(dt.value(i)));
                }
                if seen.insert(key) {
                    e.persons += 1;
                }
            }
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let keys: Vec<(&Key, &EdgeStats)> = self.edges.iter().collect();
        let list = |a: ArrayRef| events::one_list(a);
        Ok(vec![
            list(Arc::new(Int32Array::from_iter_values(
                keys.iter().map(|(k, _)| k.0),
            ))),
            list(Arc::new(StringArray::from_iter_values(
                keys.iter().map(|(k, _)| k.1.as_str()),
            ))),
            list(Arc::new(StringArray::from_iter_values(
                keys.iter().map(|(k, _)| k.2.as_str()),
            ))),
            list(Arc::new(UInt64Array::from_iter_values(
                keys.iter().map(|(_, e)| e.persons),
            ))),
            // Per edge: events, then the number of dts; the dts follow in the last list.
            list(Arc::new(UInt64Array::from_iter_values(
                keys.iter()
                    .flat_map(|(_, e)| [e.events, e.dts.len() as u64]),
            ))),
            list(Arc::new(
                datafusion::arrow::array::Int64Array::from_iter_values(
                    keys.iter().flat_map(|(_, e)| e.dts.iter().copied()),
                ),
            )),
        ])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let l: Vec<&ListArray> = states.iter().map(|s| s.as_list::<i32>()).collect();
        for row in 0..l[0].len() {
            if l[0].is_null(row) {
                continue;
            }
            let step = l[0].value(row);
            let source = l[1].value(row);
            let target = l[2].value(row);
            let persons = l[3].value(row);
            let counts = l[4].value(row);
            let dts = l[5].value(row);
            let (step, source, target, persons, counts, dts) = (
                step.as_primitive::<Int32Type>(),
                source.as_string::<i32>(),
                target.as_string::<i32>(),
                persons.as_primitive::<UInt64Type>(),
                counts.as_primitive::<UInt64Type>(),
                dts.as_primitive::<Int64Type>(),
            );
            let mut at = 0usize;
            for i in 0..step.len() {
                let key = (
                    step.value(i),
                    source.value(i).to_string(),
                    target.value(i).to_string(),
                );
                let e = self.edges.entry(key).or_default();
                e.persons += persons.value(i);
                e.events += counts.value(2 * i);
                let n = counts.value(2 * i + 1) as usize;
                e.dts.extend_from_slice(&dts.values()[at..at + n]);
                at += n;
            }
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let o = &self.options;
        let mut chosen: Vec<(&Key, &EdgeStats)> = self
            .edges
            .iter()
            .filter(|(_, e)| {
                o.min_weight.is_none_or(|m| e.events >= m)
                    && o.max_weight.is_none_or(|m| e.events <= m)
            })
            .collect();
        chosen.sort_by(|a, b| b.1.events.cmp(&a.1.events).then_with(|| a.0.cmp(b.0)));
        chosen.truncate(o.edge_limit);
        // Keep the edges reachable from a step-1 node through chosen edges (PostHog's
        // validate_results). Edges go from step s to step s + 1, so one pass in step order.
        let mut by_step: Vec<&(&Key, &EdgeStats)> = chosen.iter().collect();
        by_step.sort_by_key(|(k, _)| k.0);
        let mut reachable: HashSet<(i32, &str)> = chosen
            .iter()
            .filter(|(k, _)| k.0 == 1)
            .map(|(k, _)| (1, k.1.as_str()))
            .collect();
        for (k, _) in by_step {
            if reachable.contains(&(k.0, k.1.as_str())) {
                reachable.insert((k.0 + 1, k.2.as_str()));
            }
        }
        let kept: Vec<&(&Key, &EdgeStats)> = chosen
            .iter()
            .filter(|(k, _)| reachable.contains(&(k.0, k.1.as_str())))
            .collect();
        let (mut avg, mut median) = (vec![], vec![]);
        for (_, e) in &kept {
            let mut d = e.dts.clone();
            if d.is_empty() {
                avg.push(None);
                median.push(None);
                continue;
            }
            let mean = d.iter().map(|&x| x as i128).sum::<i128>() / d.len() as i128;
            avg.push(Some(IntervalMonthDayNano::new(0, 0, mean as i64)));
            d.sort_unstable();
            let m = d.len() / 2;
            let mid = if d.len() % 2 == 1 {
                d[m]
            } else {
                ((d[m - 1] as i128 + d[m] as i128) / 2) as i64
            };
            median.push(Some(IntervalMonthDayNano::new(0, 0, mid)));
        }
        let structs = StructArray::try_new(
            output_fields(),
            vec![
                Arc::new(Int32Array::from_iter_values(kept.iter().map(|(k, _)| k.0))),
                Arc::new(StringArray::from_iter_values(
                    kept.iter().map(|(k, _)| k.1.as_str()),
                )),
                Arc::new(StringArray::from_iter_values(
                    kept.iter().map(|(k, _)| k.2.as_str()),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    kept.iter().map(|(_, e)| e.persons),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    kept.iter().map(|(_, e)| e.events),
                )),
                Arc::new(IntervalMonthDayNanoArray::from(avg)),
                Arc::new(IntervalMonthDayNanoArray::from(median)),
            ],
            None,
        )?;
        Ok(events::one_list(Arc::new(structs)))
    }

    fn size(&self) -> usize {
        self.edges
            .iter()
            .map(|(k, e)| 64 + k.1.len() + k.2.len() + e.dts.capacity() * 8)
            .sum::<usize>()
            + std::mem::size_of_val(self)
    }
}
