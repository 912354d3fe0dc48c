//! The accumulator shared by the global attribution aggregates (`markov_attribution`,
//! `markov_transition_matrix`, `shapley_attribution`): journeys (a list of channels) with
//! three numbers each (conversions, value, nulls or paths), summed per distinct journey.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, ListArray, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::error::Result;
use datafusion::logical_expr::Accumulator;
use datafusion::scalar::ScalarValue;

use crate::error::invalid;
use crate::events;

/// Separates channels in a journey key (a control character no channel name uses).
const SEP: char = '\u{1f}';

/// A journey's three summed numbers.
pub type Counts = [f64; 3];

/// The result of a set of journeys.
pub type Finish = Box<dyn Fn(&[(Vec<String>, Counts)]) -> Result<ScalarValue> + Send + Sync>;

/// The accumulator: which argument holds the path, and which three hold the numbers
/// (`None` for 0).
pub struct JourneyAccumulator {
    name: &'static str,
    numbers: [Option<usize>; 3],
    journeys: HashMap<String, Counts>,
    finish: Finish,
}

impl std::fmt::Debug for JourneyAccumulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JourneyAccumulator")
            .field("name", &self.name)
            .field("journeys", &self.journeys.len())
            .finish()
    }
}

impl JourneyAccumulator {
    /// Journeys from argument 0, numbers from the given argument positions.
    pub fn new(name: &'static str, numbers: [Option<usize>; 3], finish: Finish) -> Self {
        JourneyAccumulator {
            name,
            numbers,
            journeys: HashMap::new(),
            finish,
        }
    }

    fn add(&mut self, key: String, c: Counts) {
        let e = self.journeys.entry(key).or_insert([0.0; 3]);
        for (a, b) in e.iter_mut().zip(c) {
            *a += b;
        }
    }
}

/// The state fields: journey keys and the three numbers.
pub fn state_fields(aggregate: &str) -> Vec<FieldRef> {
    vec![
        events::list_state(aggregate, "journey", DataType::Utf8),
        events::list_state(aggregate, "a", DataType::Float64),
        events::list_state(aggregate, "b", DataType::Float64),
        events::list_state(aggregate, "c", DataType::Float64),
    ]
}

/// Is `t` a list of text?
pub fn is_text_list(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) => {
            events::is_text(f.data_type()) || f.data_type() == &DataType::Null
        }
        _ => false,
    }
}

/// A list of text, as `List<Utf8>`.
pub fn text_list() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

impl Accumulator for JourneyAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let paths = cast(&values[0], &text_list())?;
        let paths = paths.as_list::<i32>();
        let numbers: Vec<Option<ArrayRef>> = self
            .numbers
            .iter()
            .map(|i| i.map(|i| cast(&values[i], &DataType::Float64)).transpose())
            .collect::<std::result::Result<_, _>>()?;
        for row in 0..paths.len() {
            if paths.is_null(row) {
                continue;
            }
            let mut c = [0.0; 3];
            for (k, n) in numbers.iter().enumerate() {
                if let Some(n) = n {
                    let n = n.as_primitive::<Float64Type>();
                    if n.is_valid(row) {
                        c[k] = n.value(row);
                        if c[k] < 0.0 || !c[k].is_finite() {
                            return Err(invalid(
                                self.name,
                                format!("counts and values must not be negative ({})", c[k]),
                            ));
                        }
                    }
                }
            }
            let items = paths.value(row);
            let items = items.as_string::<i32>();
            let key: Vec<&str> = items.iter().flatten().collect();
            self.add(key.join(&SEP.to_string()), c);
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let keys: Vec<(&String, &Counts)> = self.journeys.iter().collect();
        let list = events::one_list;
        let mut out = vec![list(Arc::new(StringArray::from_iter_values(
            keys.iter().map(|k| k.0.as_str()),
        )))];
        for i in 0..3 {
            out.push(list(Arc::new(
                datafusion::arrow::array::Float64Array::from_iter_values(
                    keys.iter().map(|k| k.1[i]),
                ),
            )));
        }
        Ok(out)
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let l: Vec<&ListArray> = states.iter().map(|s| s.as_list::<i32>()).collect();
        for row in 0..l[0].len() {
            if l[0].is_null(row) {
                continue;
            }
            let keys = l[0].value(row);
            let keys = keys.as_string::<i32>();
            let nums: Vec<ArrayRef> = (1..4).map(|i| l[i].value(row)).collect();
            for j in 0..keys.len() {
                let c = [0, 1, 2].map(|k| nums[k].as_primitive::<Float64Type>().value(j));
                self.add(keys.value(j).to_string(), c);
            }
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let mut journeys: Vec<(Vec<String>, Counts)> = self
            .journeys
            .iter()
            .map(|(k, c)| {
                let path = if k.is_empty() {
                    vec![]
                } else {
                    k.split(SEP).map(str::to_string).collect()
                };
                (path, *c)
            })
            .collect();
        journeys.sort_by(|a, b| a.0.cmp(&b.0));
        (self.finish)(&journeys)
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.journeys.keys().map(|k| k.len() + 56).sum::<usize>()
    }
}
