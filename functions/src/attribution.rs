//! Rule-based attribution (functions.md §H1): `attribution_weights(model, channel, ts,
//! conversion_ts [, options [, milestone]])`, an aggregate over the touches of one conversion
//! (GROUP BY the conversion) that returns each eligible touch's share of the credit as
//! `[{channel, ts, weight}]`, weights summing to 1 (or an empty list when no touch is
//! eligible).
//!
//! A touch is eligible when its channel is not NULL and `conversion_ts − lookback <= ts <=
//! conversion_ts` (`ts < conversion_ts` with `same_ts_included=false`). Touches are ordered by
//! time, then channel. Channels in `ignore_channels` get no credit unless every eligible touch
//! is in that set (GA's "ignore direct"); `last_non_direct` is `last_click` with
//! `ignore_channels=direct` by default.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, ListArray, StringArray, StructArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Field, FieldRef, Fields, Int64Type, TimeUnit, UInt8Type,
};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

use crate::error::invalid;
use crate::events;
use crate::group_log::{GroupLog, Grouped};
use crate::groups::{OneGroup, skipped};
use crate::intern::Interner;

const NAME: &str = "attribution_weights";
const DAY_US: i64 = 86_400_000_000;

/// `attribution_weights` as an aggregate function.
pub fn attribution_weights() -> AggregateUDF {
    AggregateUDF::from(AttributionWeights {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct AttributionWeights {
    signature: Signature,
}

/// An attribution model.
#[derive(Debug, Clone, PartialEq)]
pub enum Model {
    /// All credit to the first touch.
    FirstClick,
    /// All credit to the last touch.
    LastClick,
    /// Equal credit to every touch (repeats counted separately).
    Linear,
    /// `first` to the first touch, `last` to the last, the rest shared by the middle
    /// (one touch: all of it; two: half each).
    PositionBased {
        /// Share of the first touch.
        first: f64,
        /// Share of the last touch.
        last: f64,
    },
    /// Weight ∝ 0.5^((conversion_ts − ts) / half_life), normalised.
    TimeDecay {
        /// Half-life in microseconds.
        half_life: i64,
    },
    /// 30% first, 30% the first milestone touch (lead creation), 30% last, 10% shared by
    /// the others.
    WShaped,
    /// Fixed weights by position from the first touch, renormalised over the touches there
    /// are.
    Custom(Vec<f64>),
}

/// A call's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// The model.
    pub model: Model,
    /// How far back a touch may be, in microseconds.
    pub lookback: i64,
    /// Does a touch at exactly the conversion time count?
    pub same_ts_included: bool,
    /// Channels credited only when nothing else is there.
    pub ignore: Vec<String>,
    /// Collapse consecutive touches of one channel into its first.
    pub dedupe_consecutive: bool,
    /// Credit conversions without an eligible touch to this channel (else an empty list).
    pub none_channel: Option<String>,
}

fn parse_model(name: &str) -> Result<Model> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "first_click" | "first_touch" | "first" => Model::FirstClick,
        "last_click" | "last_touch" | "last" | "last_non_direct" => Model::LastClick,
        "linear" => Model::Linear,
        "position_based" | "u_shaped" => Model::PositionBased {
            first: 0.4,
            last: 0.4,
        },
        "time_decay" => Model::TimeDecay {
            half_life: 7 * DAY_US,
        },
        "w_shaped" => Model::WShaped,
        "custom" => Model::Custom(vec![]),
        other => {
            return Err(invalid(
                NAME,
                format!(
                    "unknown model '{other}' (first_click, last_click, last_non_direct, linear, \
                     position_based, u_shaped, time_decay, w_shaped, custom)"
                ),
            ));
        }
    })
}

/// `30 days`, `12 hours`, `90 minutes` or a number of days, as microseconds.
fn duration_text(key: &str, v: &str) -> Result<i64> {
    let v = v.trim();
    if let Ok(days) = v.parse::<f64>()
        && days >= 0.0
    {
        return Ok((days * DAY_US as f64).round() as i64);
    }
    let mut it = v.split_whitespace();
    let (Some(n), Some(unit), None) = (it.next(), it.next(), it.next()) else {
        return Err(invalid(NAME, format!("{key}: '{v}' is not like '30 days'")));
    };
    let n: f64 = n
        .parse()
        .map_err(|_| invalid(NAME, format!("{key}: '{v}' is not like '30 days'")))?;
    let unit_us = match unit.trim_end_matches('s').to_ascii_lowercase().as_str() {
        "second" | "sec" => 1e6,
        "minute" | "min" => 6e7,
        "hour" => 3.6e9,
        "day" => DAY_US as f64,
        "week" => 7.0 * DAY_US as f64,
        _ => return Err(invalid(NAME, format!("{key}: unknown unit '{unit}'"))),
    };
    if n < 0.0 {
        return Err(invalid(NAME, format!("{key} must not be negative")));
    }
    Ok((n * unit_us).round() as i64)
}

fn fraction(key: &str, v: &str) -> Result<f64> {
    match v.trim().parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(invalid(
            NAME,
            format!("{key}: '{v}' is not a number from 0 to 1"),
        )),
    }
}

impl Options {
    /// The model's name and the option text `key=value, …` (list values separated by `|`).
    pub fn parse(model: &str, text: &str) -> Result<Self> {
        let lower = model.trim().to_ascii_lowercase();
        let mut o = Options {
            model: parse_model(&lower)?,
            lookback: 30 * DAY_US,
            same_ts_included: true,
            ignore: if lower == "last_non_direct" {
                vec!["direct".into()]
            } else {
                vec![]
            },
            dedupe_consecutive: false,
            none_channel: None,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| invalid(NAME, format!("option '{part}' is not key=value")))?;
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            let flag = || match v.to_ascii_lowercase().as_str() {
                "true" | "on" | "1" => Ok(true),
                "false" | "off" | "0" => Ok(false),
                _ => Err(invalid(NAME, format!("{k}: '{v}' is not a boolean"))),
            };
            match k.as_str() {
                "lookback" | "lookback_window" => o.lookback = duration_text(&k, v)?,
                "same_ts_included" => o.same_ts_included = flag()?,
                "dedupe_consecutive" => o.dedupe_consecutive = flag()?,
                "ignore_channels" => {
                    o.ignore = v
                        .split('|')
                        .map(|c| c.trim().to_string())
                        .filter(|c| !c.is_empty())
                        .collect()
                }
                "credit_none" => o.none_channel = flag()?.then(|| "(none)".to_string()),
                "none_channel" => o.none_channel = Some(v.to_string()),
                "half_life" => match &mut o.model {
                    Model::TimeDecay { half_life } => {
                        *half_life = duration_text(&k, v)?;
                        if *half_life == 0 {
                            return Err(invalid(NAME, "half_life must be positive"));
                        }
                    }
                    _ => return Err(invalid(NAME, "half_life is an option of time_decay")),
                },
                "first" | "last" => match &mut o.model {
                    Model::PositionBased { first, last } => {
                        let x = fraction(&k, v)?;
                        if k == "first" {
                            *first = x;
                        } else {
                            *last = x;
                        }
                        if *first + *last > 1.0 + 1e-12 {
                            return Err(invalid(NAME, "first + last must not exceed 1"));
                        }
                    }
                    _ => {
                        return Err(invalid(NAME, format!("{k} is an option of position_based")));
                    }
                },
                "weights" => match &mut o.model {
                    Model::Custom(w) => {
                        *w = v
                            .split('|')
                            .map(|x| match x.trim().parse::<f64>() {
                                Ok(x) if x >= 0.0 && x.is_finite() => Ok(x),
                                _ => Err(invalid(
                                    NAME,
                                    format!("weights: '{x}' is not a non-negative number"),
                                )),
                            })
                            .collect::<Result<_>>()?
                    }
                    _ => return Err(invalid(NAME, "weights is an option of custom")),
                },
                other => {
                    return Err(invalid(
                        NAME,
                        format!(
                            "unknown option '{other}' (lookback, same_ts_included, \
                             ignore_channels, dedupe_consecutive, credit_none, none_channel, \
                             half_life, first, last, weights)"
                        ),
                    ));
                }
            }
        }
        if let Model::Custom(w) = &o.model
            && w.is_empty()
        {
            return Err(invalid(NAME, "custom needs weights=w1|w2|…"));
        }
        Ok(o)
    }
}

/// One touch: (time in µs, channel, is a milestone).
pub type Touch<'a> = (i64, &'a str, bool);

/// The credited touches of one conversion at `conversion` (µs), with their weights.
pub fn weights<'a>(
    o: &'a Options,
    conversion: i64,
    touches: &[Touch<'a>],
) -> Vec<(i64, &'a str, f64)> {
    let mut eligible: Vec<&Touch<'a>> = touches
        .iter()
        .filter(|(t, _, _)| {
            (if o.same_ts_included {
                *t <= conversion
            } else {
                *t < conversion
            }) && *t >= conversion.saturating_sub(o.lookback)
        })
        .collect();
    eligible.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)).then(b.2.cmp(&a.2)));
    if o.dedupe_consecutive {
        eligible.dedup_by(|b, a| a.1 == b.1);
    }
    let ignored = |c: &str| o.ignore.iter().any(|i| i == c);
    if eligible.iter().any(|t| !ignored(t.1)) {
        eligible.retain(|t| !ignored(t.1));
    }
    let n = eligible.len();
    if n == 0 {
        return match &o.none_channel {
            Some(c) => vec![(conversion, c.as_str(), 1.0)],
            None => vec![],
        };
    }
    let mut w = vec![0.0f64; n];
    match &o.model {
        Model::FirstClick => w[0] = 1.0,
        Model::LastClick => w[n - 1] = 1.0,
        Model::Linear => w.iter_mut().for_each(|x| *x = 1.0 / n as f64),
        Model::PositionBased { first, last } => match n {
            1 => w[0] = 1.0,
            2 => w.iter_mut().for_each(|x| *x = 0.5),
            _ => {
                let middle = (1.0 - first - last) / (n - 2) as f64;
                w.iter_mut().for_each(|x| *x = middle);
                w[0] = *first;
                w[n - 1] = *last;
            }
        },
        Model::TimeDecay { half_life } => {
            for (x, t) in w.iter_mut().zip(&eligible) {
                *x = 0.5f64.powf((conversion - t.0) as f64 / *half_life as f64);
            }
        }
        Model::WShaped => {
            // The lead touch: the first milestone that is neither first nor last, else the
            // middle touch.
            let lead = (1..n.saturating_sub(1))
                .find(|&i| eligible[i].2)
                .unwrap_or(n / 2);
            match n {
                1 => w[0] = 1.0,
                2 => w.iter_mut().for_each(|x| *x = 0.5),
                3 => w.iter_mut().for_each(|x| *x = 1.0 / 3.0),
                _ => {
                    let rest = 0.1 / (n - 3) as f64;
                    w.iter_mut().for_each(|x| *x = rest);
                    w[0] = 0.3;
                    w[lead] = 0.3;
                    w[n - 1] = 0.3;
                }
            }
        }
        Model::Custom(fixed) => {
            for (x, f) in w.iter_mut().zip(fixed) {
                *x = *f;
            }
        }
    }
    let total: f64 = w.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return vec![];
    }
    eligible
        .iter()
        .zip(w)
        .filter(|(_, x)| *x > 0.0)
        .map(|(t, x)| (t.0, t.1, x / total))
        .collect()
}

fn output_fields() -> Fields {
    Fields::from(vec![
        Field::new("channel", DataType::Utf8, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
        Field::new("weight", DataType::Float64, false),
    ])
}

impl AggregateUDFImpl for AttributionWeights {
    fn name(&self) -> &str {
        NAME
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let usage = "takes (model text, channel text, ts, conversion_ts [, options text \
                     [, milestone boolean]])";
        if types.len() < 4 || types.len() > 6 {
            return Err(invalid(NAME, usage));
        }
        let time = |t: &DataType| {
            matches!(
                t,
                DataType::Timestamp(_, _) | DataType::Date32 | DataType::Null
            )
        };
        if !events::is_text(&types[0]) || !time(&types[2]) || !time(&types[3]) {
            return Err(invalid(NAME, usage));
        }
        let mut out = types.to_vec();
        out[0] = DataType::Utf8;
        out[1] = DataType::Utf8;
        if types.len() > 4 {
            if !events::is_text(&types[4]) {
                return Err(invalid(NAME, usage));
            }
            out[4] = DataType::Utf8;
        }
        if types.len() > 5 {
            if !matches!(types[5], DataType::Boolean | DataType::Null) {
                return Err(invalid(NAME, usage));
            }
            out[5] = DataType::Boolean;
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
            events::list_state(args.name, "ts", DataType::Int64),
            events::list_state(args.name, "channel", DataType::Utf8),
            events::list_state(args.name, "milestone", DataType::UInt8),
            Arc::new(Field::new(
                format!("{}[conversion]", args.name),
                DataType::Int64,
                true,
            )),
        ])
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(OneGroup(WeightsGroups::new(options(&args)?))))
    }
    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }
    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(WeightsGroups::new(options(&args)?)))
    }
}

fn options(args: &AccumulatorArgs) -> Result<Options> {
    let model = events::literal(&args.exprs[0])
        .ok_or_else(|| invalid(NAME, "the model must be a constant"))?;
    let model = events::text_literal(NAME, "the model", model)?;
    let text = match args.exprs.get(4) {
        Some(e) => {
            let v =
                events::literal(e).ok_or_else(|| invalid(NAME, "options must be a constant"))?;
            events::text_literal(NAME, "options", v)?
        }
        None => String::new(),
    };
    Options::parse(&model, &text)
}

/// Per group: its touches (time, interned channel, milestone) and conversion time (the
/// latest given in the group).
#[derive(Debug)]
struct WeightsGroups {
    /// `size()` counted every few batches (see [`crate::state_size`]).
    size_cache: crate::state_size::SizeCache,
    options: Options,
    names: Interner,
    /// Every group's touches, in one log.
    touches: GroupLog<(i64, u32, bool)>,
    conversion: Vec<Option<i64>>,
}

/// A batch's rows: (conversion time, touch) each.
type Rows = Vec<(Option<i64>, Option<(i64, u32, bool)>)>;

impl WeightsGroups {
    fn new(options: Options) -> Self {
        WeightsGroups {
            size_cache: Default::default(),
            options,
            names: Interner::default(),
            touches: GroupLog::default(),
            conversion: vec![],
        }
    }

    fn grow(&mut self, n: usize) {
        self.touches.resize(n);
        if self.conversion.len() < n {
            self.conversion.resize(n, None);
        }
    }

    fn rows(&mut self, values: &[ArrayRef]) -> Result<Rows> {
        let channel = cast(&values[1], &DataType::Utf8)?;
        let channel = channel.as_string::<i32>();
        let ts = events::times(NAME, &values[2])?;
        let conv = events::times(NAME, &values[3])?;
        let milestone = match values.get(5) {
            Some(m) => events::conditions(NAME, std::slice::from_ref(m))?.remove(0),
            None => vec![None; ts.len()],
        };
        let mut out = Vec::with_capacity(ts.len());
        for i in 0..ts.len() {
            let touch = match (ts[i], channel.is_valid(i)) {
                (Some(t), true) => Some((
                    t,
                    self.names.id(channel.value(i)),
                    milestone[i] == Some(true),
                )),
                _ => None,
            };
            out.push((conv[i], touch));
        }
        Ok(out)
    }

    fn see(&mut self, g: usize, conversion: Option<i64>) {
        if let Some(c) = conversion {
            self.conversion[g] = Some(self.conversion[g].map_or(c, |x| x.max(c)));
        }
    }

    fn state_arrays(
        &self,
        groups: &Grouped<(i64, u32, bool)>,
        conv: &[Option<i64>],
    ) -> Vec<ArrayRef> {
        let offsets = OffsetBuffer::from_lengths(groups.lengths());
        let list = |a: ArrayRef| -> ArrayRef {
            Arc::new(ListArray::new(
                Arc::new(Field::new_list_field(a.data_type().clone(), true)),
                offsets.clone(),
                a,
                None,
            ))
        };
        let flat = &groups.rows;
        let names: Vec<&str> = flat.iter().map(|t| self.names.name(t.1)).collect();
        vec![
            list(Arc::new(datafusion::arrow::array::Int64Array::from(
                flat.iter().map(|t| t.0).collect::<Vec<_>>(),
            ))),
            list(Arc::new(StringArray::from(names))),
            list(Arc::new(datafusion::arrow::array::UInt8Array::from(
                flat.iter().map(|t| u8::from(t.2)).collect::<Vec<_>>(),
            ))),
            Arc::new(datafusion::arrow::array::Int64Array::from(conv.to_vec())),
        ]
    }
}

impl GroupsAccumulator for WeightsGroups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let rows = self.rows(values)?;
        for (row, (&g, (conv, touch))) in group_indices.iter().zip(rows).enumerate() {
            if skipped(opt_filter, row) {
                continue;
            }
            self.see(g, conv);
            if let Some(t) = touch {
                self.touches.push(g, t);
            }
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        self.size_cache.invalidate();
        let groups = self.touches.take(emit_to);
        let conv = emit_to.take_needed(&mut self.conversion);
        let (mut channel, mut ts, mut weight) = (vec![], vec![], vec![]);
        let mut offsets = vec![0i32];
        let mut buffer: Vec<Touch> = vec![];
        for (g, c) in conv.into_iter().enumerate() {
            let touches = groups.group(g);
            let credited = match c {
                Some(c) => {
                    buffer.clear();
                    buffer.extend(touches.iter().map(|t| (t.0, self.names.name(t.1), t.2)));
                    weights(&self.options, c, &buffer)
                }
                None => vec![],
            };
            offsets.push(offsets.last().copied().unwrap_or(0) + credited.len() as i32);
            for (t, ch, w) in credited {
                ts.push(t);
                channel.push(ch);
                weight.push(w);
            }
        }
        let structs = StructArray::try_new(
            output_fields(),
            vec![
                Arc::new(StringArray::from_iter_values(channel)),
                Arc::new(TimestampMicrosecondArray::from(ts)),
                Arc::new(Float64Array::from(weight)),
            ],
            None,
        )?;
        Ok(Arc::new(ListArray::try_new(
            Arc::new(Field::new_list_field(
                DataType::Struct(output_fields()),
                true,
            )),
            OffsetBuffer::new(offsets.into()),
            Arc::new(structs),
            None,
        )?))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        self.size_cache.invalidate();
        let groups = self.touches.take(emit_to);
        let conv = emit_to.take_needed(&mut self.conversion);
        Ok(self.state_arrays(&groups, &conv))
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.grow(total_num_groups);
        let (ts, ch, ms) = (
            values[0].as_list::<i32>(),
            values[1].as_list::<i32>(),
            values[2].as_list::<i32>(),
        );
        let conv = values[3].as_primitive::<Int64Type>();
        // Straight from the lists' flat values (the three lists share their lengths).
        let (t, c, m) = (
            ts.values().as_primitive::<Int64Type>(),
            ch.values().as_string::<i32>(),
            ms.values().as_primitive::<UInt8Type>(),
        );
        for (row, &g) in group_indices.iter().enumerate() {
            if conv.is_valid(row) {
                self.see(g, Some(conv.value(row)));
            }
            if ts.is_null(row) {
                continue;
            }
            let (t0, c0, m0) = (
                ts.value_offsets()[row] as usize,
                ch.value_offsets()[row] as usize,
                ms.value_offsets()[row] as usize,
            );
            for i in 0..ts.value_length(row) as usize {
                let id = self.names.id(c.value(c0 + i));
                self.touches
                    .push(g, (t.value(t0 + i), id, m.value(m0 + i) != 0));
            }
        }
        Ok(())
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        // Interning needs &mut self: work on a scratch copy of the dictionary.
        let mut scratch = WeightsGroups::new(self.options.clone());
        let rows = scratch.rows(values)?;
        let mut groups = GroupLog::default();
        groups.resize(rows.len());
        let mut conv = Vec::with_capacity(rows.len());
        for (row, (c, touch)) in rows.into_iter().enumerate() {
            let filtered = skipped(opt_filter, row);
            if let Some(t) = touch.filter(|_| !filtered) {
                groups.push(row, t);
            }
            conv.push(if filtered { None } else { c });
        }
        Ok(scratch.state_arrays(&groups.take(EmitTo::All), &conv))
    }

    fn size(&self) -> usize {
        self.size_cache
            .get(|| self.touches.size() + self.conversion.capacity() * 16 + self.names.size())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touches<'a>(list: &[(i64, &'a str)]) -> Vec<Touch<'a>> {
        list.iter().map(|(t, c)| (*t * DAY_US, *c, false)).collect()
    }

    #[test]
    fn position_based_conventions() {
        let o = Options::parse("position_based", "").expect("options");
        let w = |t: &[(i64, &str)]| -> Vec<f64> {
            weights(&o, 10 * DAY_US, &touches(t))
                .iter()
                .map(|x| x.2)
                .collect()
        };
        assert_eq!(w(&[(1, "a")]), vec![1.0]);
        assert_eq!(w(&[(1, "a"), (2, "b")]), vec![0.5, 0.5]);
        let four = w(&[(1, "a"), (2, "b"), (3, "c"), (4, "d")]);
        assert!((four[1] - 0.1).abs() < 1e-12 && (four[0] - 0.4).abs() < 1e-12);
        // Outside the 30-day lookback, or after the conversion: not eligible.
        assert!(w(&[(-25, "a"), (11, "b")]).is_empty());
    }

    #[test]
    fn ignored_channels_only_when_something_else_is_there() {
        let o = Options::parse("last_non_direct", "").expect("options");
        let w = weights(&o, 10 * DAY_US, &touches(&[(1, "email"), (2, "direct")]));
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].1, "email");
        let w = weights(&o, 10 * DAY_US, &touches(&[(1, "direct"), (2, "direct")]));
        assert_eq!((w.len(), w[0].0), (1, 2 * DAY_US));
    }
}
