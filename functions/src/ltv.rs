//! Lifetime value in SQL (functions.md §I): `rfm_summary` (lifetimes'
//! `summary_data_from_transaction_data` per customer), the fits `bgnbd_fit` and
//! `gamma_gamma_fit` (aggregates returning a parameter struct), and the scalar predictions
//! that take those structs: `bgnbd_expected_purchases`, `bgnbd_p_alive`,
//! `bgnbd_expected_purchases_new`, `bgnbd_prob_n_purchases`, `gamma_gamma_expected_spend`,
//! `clv_predict`. The models are in [`crate::btyd`].

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, ListArray, StructArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Fields, Float64Type, Int64Type};
use datafusion::error::Result;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, ColumnarValue, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};
use datafusion::scalar::ScalarValue;

use crate::btyd::{self, BgNbd, Customer, GammaGamma, Spender};
use crate::calendar::{Calendar, Unit};
use crate::error::invalid;
use crate::events;

/// The aggregates of this module.
pub fn aggregates() -> Vec<AggregateUDF> {
    vec![
        AggregateUDF::from(RfmSummary {
            signature: Signature::user_defined(Volatility::Immutable),
        }),
        AggregateUDF::from(ModelFit {
            model: Model::BgNbd,
            signature: Signature::user_defined(Volatility::Immutable),
        }),
        AggregateUDF::from(ModelFit {
            model: Model::GammaGamma,
            signature: Signature::user_defined(Volatility::Immutable),
        }),
    ]
}

/// The scalar functions of this module.
pub fn scalars() -> Vec<ScalarUDF> {
    [
        Predict::Expected,
        Predict::PAlive,
        Predict::ExpectedNew,
        Predict::ProbN,
        Predict::Spend,
        Predict::Clv,
    ]
    .into_iter()
    .map(|kind| {
        ScalarUDF::from(Prediction {
            kind,
            signature: Signature::user_defined(Volatility::Immutable),
        })
    })
    .collect()
}

fn f64_field(name: &str) -> Field {
    Field::new(name, DataType::Float64, true)
}

/// A one-row struct value of `fields` from `values`.
fn struct_value(fields: Fields, values: Vec<ScalarValue>) -> Result<ScalarValue> {
    let arrays = values
        .iter()
        .map(|v| v.to_array())
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(ScalarValue::Struct(Arc::new(StructArray::try_new(
        fields, arrays, None,
    )?)))
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric() || *t == DataType::Null
}

// ---------------------------------------------------------------------------------------
// rfm_summary

const RFM: &str = "rfm_summary";

fn rfm_fields() -> Fields {
    Fields::from(vec![
        f64_field("frequency"),
        f64_field("recency"),
        f64_field("T"),
        f64_field("monetary_value"),
    ])
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct RfmSummary {
    signature: Signature,
}

/// `rfm_summary`'s settings.
#[derive(Debug, Clone, Copy)]
struct RfmOptions {
    calendar: Calendar,
    /// Microseconds in one time unit (numpy's: a month is 30.436875 days).
    unit_us: f64,
    scaler: f64,
    include_first: bool,
}

impl RfmOptions {
    fn parse(text: &str) -> Result<Self> {
        let mut o = RfmOptions {
            calendar: Calendar {
                unit: Unit::Day,
                zone: chrono_tz::Tz::UTC,
            },
            unit_us: 86_400e6,
            scaler: 1.0,
            include_first: false,
        };
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| invalid(RFM, format!("option '{part}' is not key=value")))?;
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            match k.as_str() {
                "time_unit" | "freq" => {
                    let (unit, us) = match v.to_ascii_uppercase().as_str() {
                        "D" => (Unit::Day, 86_400e6),
                        "W" => (Unit::Week { sunday: false }, 7.0 * 86_400e6),
                        "M" => (Unit::Month, 30.436_875 * 86_400e6),
                        "H" => (Unit::Hour, 3_600e6),
                        _ => {
                            return Err(invalid(
                                RFM,
                                format!("time_unit '{v}' is not D, W, M or H"),
                            ));
                        }
                    };
                    o.calendar.unit = unit;
                    o.unit_us = us;
                }
                "time_scaler" | "freq_multiplier" => {
                    o.scaler = match v.parse::<f64>() {
                        Ok(s) if s > 0.0 && s.is_finite() => s,
                        _ => {
                            return Err(invalid(
                                RFM,
                                format!("time_scaler '{v}' is not a positive number"),
                            ));
                        }
                    }
                }
                "include_first" | "include_first_transaction" => {
                    o.include_first = match v.to_ascii_lowercase().as_str() {
                        "true" | "on" | "1" => true,
                        "false" | "off" | "0" => false,
                        _ => return Err(invalid(RFM, format!("{k}: '{v}' is not a boolean"))),
                    }
                }
                other => {
                    return Err(invalid(
                        RFM,
                        format!("unknown option '{other}' (time_unit, time_scaler, include_first)"),
                    ));
                }
            }
        }
        Ok(o)
    }
}

impl AggregateUDFImpl for RfmSummary {
    fn name(&self) -> &str {
        RFM
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let usage = "takes (ts, amount [, observation_end timestamp] [, options text])";
        if types.len() < 2 || types.len() > 4 || !events::is_time_type(&types[0]) {
            return Err(invalid(RFM, usage));
        }
        let mut out = types.to_vec();
        if !is_numeric(&types[1]) {
            return Err(invalid(
                RFM,
                format!("amount must be a number, not {}", types[1]),
            ));
        }
        out[1] = DataType::Float64;
        for (i, t) in types.iter().enumerate().skip(2) {
            if events::is_text(t) && i == types.len() - 1 {
                out[i] = DataType::Utf8;
            } else if i == 2 && events::is_time_type(t) {
            } else {
                return Err(invalid(RFM, usage));
            }
        }
        Ok(out)
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(rfm_fields()))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            events::list_state(args.name, "period", DataType::Int64),
            events::list_state(args.name, "amount", DataType::Float64),
            Arc::new(Field::new(
                format!("{}[end]", args.name),
                DataType::Int64,
                true,
            )),
        ])
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let n = args.exprs.len();
        let has_text = n > 2 && events::is_text(args.expr_fields[n - 1].data_type());
        let options = if has_text {
            let v = events::literal(&args.exprs[n - 1])
                .ok_or_else(|| invalid(RFM, "options must be a constant"))?;
            RfmOptions::parse(&events::text_literal(RFM, "options", v)?)?
        } else {
            RfmOptions::parse("")?
        };
        Ok(Box::new(RfmAccumulator {
            options,
            has_end: n - usize::from(has_text) == 3,
            periods: vec![],
            amounts: vec![],
            end: None,
        }))
    }
}

/// A customer's transactions as (period, amount).
#[derive(Debug)]
struct RfmAccumulator {
    options: RfmOptions,
    has_end: bool,
    periods: Vec<i64>,
    amounts: Vec<Option<f64>>,
    /// The observation end's period (the largest seen).
    end: Option<i64>,
}

impl Accumulator for RfmAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let ts = events::times(RFM, &values[0])?;
        let amount = cast(&values[1], &DataType::Float64)?;
        let amount = amount.as_primitive::<Float64Type>();
        for (i, t) in ts.iter().enumerate() {
            if let Some(t) = t {
                self.periods.push(self.options.calendar.index(*t));
                self.amounts
                    .push(amount.is_valid(i).then(|| amount.value(i)));
            }
        }
        if self.has_end {
            for t in events::times(RFM, &values[2])?.into_iter().flatten() {
                let p = self.options.calendar.index(t);
                self.end = Some(self.end.map_or(p, |e| e.max(p)));
            }
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::List(Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(
                [Some(self.periods.iter().map(|p| Some(*p)))],
            ))),
            ScalarValue::List(Arc::new(
                ListArray::from_iter_primitive::<Float64Type, _, _>([Some(
                    self.amounts.iter().copied(),
                )]),
            )),
            ScalarValue::Int64(self.end),
        ])
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let (p, a, e) = (
            states[0].as_list::<i32>(),
            states[1].as_list::<i32>(),
            states[2].as_primitive::<Int64Type>(),
        );
        for row in 0..p.len() {
            if p.is_valid(row) {
                let (pv, av) = (p.value(row), a.value(row));
                let av = av.as_primitive::<Float64Type>();
                self.periods
                    .extend(pv.as_primitive::<Int64Type>().values().iter().copied());
                self.amounts
                    .extend((0..av.len()).map(|i| av.is_valid(i).then(|| av.value(i))));
            }
            if e.is_valid(row) {
                let v = e.value(row);
                self.end = Some(self.end.map_or(v, |x| x.max(v)));
            }
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let o = self.options;
        let end = self.end.or_else(|| self.periods.iter().copied().max());
        let Some(end) = end else {
            return ScalarValue::try_from(DataType::Struct(rfm_fields()));
        };
        // Per period (up to the end's), the summed amount (NULL amounts count as 0).
        let mut per: Vec<(i64, f64)> = self
            .periods
            .iter()
            .zip(&self.amounts)
            .filter(|(p, _)| **p <= end)
            .map(|(p, a)| (*p, a.unwrap_or(0.0)))
            .collect();
        if per.is_empty() {
            return ScalarValue::try_from(DataType::Struct(rfm_fields()));
        }
        per.sort_by_key(|e| e.0);
        let mut periods: Vec<(i64, f64)> = vec![];
        for (p, a) in per {
            match periods.last_mut() {
                Some(last) if last.0 == p => last.1 += a,
                _ => periods.push((p, a)),
            }
        }
        let first = periods[0].0;
        let last = periods[periods.len() - 1].0;
        let span = |to: i64| {
            (o.calendar.start(to) - o.calendar.start(first)) as f64 / o.unit_us / o.scaler
        };
        let counted = if o.include_first {
            &periods[..]
        } else {
            &periods[1..]
        };
        let monetary = if counted.is_empty() {
            0.0
        } else {
            counted.iter().map(|p| p.1).sum::<f64>() / counted.len() as f64
        };
        struct_value(
            rfm_fields(),
            vec![
                ScalarValue::Float64(Some(counted.len() as f64)),
                ScalarValue::Float64(Some(span(last))),
                ScalarValue::Float64(Some(span(end))),
                ScalarValue::Float64(Some(monetary)),
            ],
        )
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.periods.capacity() * 8 + self.amounts.capacity() * 16
    }
}

// ---------------------------------------------------------------------------------------
// bgnbd_fit, gamma_gamma_fit

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Model {
    BgNbd,
    GammaGamma,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::BgNbd => "bgnbd_fit",
            Model::GammaGamma => "gamma_gamma_fit",
        }
    }
    /// Data columns (before weight, penalizer, tol).
    fn columns(self) -> usize {
        match self {
            Model::BgNbd => 3,
            Model::GammaGamma => 2,
        }
    }
    fn fields(self) -> Fields {
        let mut f: Vec<Field> = match self {
            Model::BgNbd => ["r", "alpha", "a", "b"].map(f64_field).to_vec(),
            Model::GammaGamma => ["p", "q", "v"].map(f64_field).to_vec(),
        };
        f.push(f64_field("neg_ll"));
        f.push(Field::new("converged", DataType::Boolean, true));
        f.push(Field::new("iterations", DataType::Int32, true));
        if self == Model::GammaGamma {
            f.push(f64_field("corr"));
        }
        Fields::from(f)
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct ModelFit {
    model: Model,
    signature: Signature,
}

impl AggregateUDFImpl for ModelFit {
    fn name(&self) -> &str {
        self.model.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.model.name();
        let n = self.model.columns();
        if types.len() < n || types.len() > n + 3 || !types.iter().all(is_numeric) {
            return Err(invalid(
                name,
                match self.model {
                    Model::BgNbd => {
                        "takes numbers (frequency, recency, T [, weight [, penalizer [, tol]]])"
                    }
                    Model::GammaGamma => {
                        "takes numbers (frequency, monetary_value [, weight [, penalizer [, tol]]])"
                    }
                },
            ));
        }
        Ok(vec![DataType::Float64; types.len()])
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Struct(self.model.fields()))
    }
    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok((0..self.model.columns() + 1)
            .map(|i| events::list_state(args.name, &format!("c{i}"), DataType::Float64))
            .collect())
    }
    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let name = self.model.name();
        let n = self.model.columns();
        let constant = |i: usize, what: &str, default: f64| -> Result<f64> {
            let Some(e) = args.exprs.get(i) else {
                return Ok(default);
            };
            let v = events::literal(e)
                .ok_or_else(|| invalid(name, format!("{what} must be a constant")))?;
            match v.cast_to(&DataType::Float64)? {
                ScalarValue::Float64(Some(x)) if x >= 0.0 && x.is_finite() => Ok(x),
                _ => Err(invalid(
                    name,
                    format!("{what} must be a non-negative number, not {v}"),
                )),
            }
        };
        let penalizer = constant(n + 1, "penalizer", 0.0)?;
        let tol = constant(n + 2, "tol", 1e-7)?;
        if tol <= 0.0 {
            return Err(invalid(name, "tol must be positive"));
        }
        Ok(Box::new(FitAccumulator {
            model: self.model,
            weighted: args.exprs.len() > n,
            penalizer,
            tol,
            columns: vec![vec![]; n + 1],
        }))
    }
}

/// The rows to fit, column-wise (the last column holds weights).
#[derive(Debug)]
struct FitAccumulator {
    model: Model,
    weighted: bool,
    penalizer: f64,
    tol: f64,
    columns: Vec<Vec<f64>>,
}

impl Accumulator for FitAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let n = self.model.columns();
        let cols: Vec<ArrayRef> = values
            .iter()
            .take(n + usize::from(self.weighted))
            .map(|v| cast(v, &DataType::Float64))
            .collect::<std::result::Result<_, _>>()?;
        let cols: Vec<&Float64Array> = cols.iter().map(|c| c.as_primitive()).collect();
        for row in 0..events::len(values) {
            // Rows with a NULL are skipped.
            if cols.iter().any(|c| c.is_null(row)) {
                continue;
            }
            for (i, c) in cols.iter().enumerate().take(n) {
                self.columns[i].push(c.value(row));
            }
            self.columns[n].push(if self.weighted {
                cols[n].value(row)
            } else {
                1.0
            });
        }
        Ok(())
    }
    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(self
            .columns
            .iter()
            .map(|c| {
                ScalarValue::List(Arc::new(
                    ListArray::from_iter_primitive::<Float64Type, _, _>([Some(
                        c.iter().map(|v| Some(*v)),
                    )]),
                ))
            })
            .collect())
    }
    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for (i, s) in states.iter().enumerate() {
            let l = s.as_list::<i32>();
            for row in 0..l.len() {
                if l.is_valid(row) {
                    let v = l.value(row);
                    self.columns[i].extend(v.as_primitive::<Float64Type>().values().iter());
                }
            }
        }
        Ok(())
    }
    fn evaluate(&mut self) -> Result<ScalarValue> {
        let name = self.model.name();
        let c = &self.columns;
        let fields = self.model.fields();
        let stats = |neg_ll: f64, converged: bool, iterations: usize| {
            vec![
                ScalarValue::Float64(Some(neg_ll)),
                ScalarValue::Boolean(Some(converged)),
                ScalarValue::Int32(Some(iterations as i32)),
            ]
        };
        match self.model {
            Model::BgNbd => {
                let customers: Vec<Customer> = (0..c[0].len())
                    .map(|i| Customer {
                        frequency: c[0][i],
                        recency: c[1][i],
                        t: c[2][i],
                        weight: c[3][i],
                    })
                    .collect();
                for cu in &customers {
                    btyd::check_customer(cu).map_err(|m| invalid(name, m))?;
                }
                let Some(fit) = btyd::fit_bgnbd(&customers, self.penalizer, self.tol) else {
                    return ScalarValue::try_from(DataType::Struct(fields));
                };
                let p = fit.params;
                let mut v: Vec<ScalarValue> = [p.r, p.alpha, p.a, p.b]
                    .map(|x| ScalarValue::Float64(Some(x)))
                    .to_vec();
                v.extend(stats(fit.neg_ll, fit.converged, fit.iterations));
                struct_value(fields, v)
            }
            Model::GammaGamma => {
                let mut rows = vec![];
                for ((&x, &m), &w) in c[0].iter().zip(&c[1]).zip(&c[2]) {
                    if x <= 0.0 {
                        continue;
                    }
                    let valid = m > 0.0 && m.is_finite() && x.fract() == 0.0 && w > 0.0;
                    if !valid {
                        return Err(invalid(
                            name,
                            format!(
                                "needs integer frequency, positive monetary_value and weight \
                                 (got frequency {x}, monetary_value {m}, weight {w})"
                            ),
                        ));
                    }
                    rows.push(Spender {
                        frequency: x,
                        monetary: m,
                        weight: w,
                    });
                }
                let Some(fit) = btyd::fit_gamma_gamma(&rows, self.penalizer, self.tol) else {
                    return ScalarValue::try_from(DataType::Struct(fields));
                };
                let p = fit.params;
                let mut v: Vec<ScalarValue> = [p.p, p.q, p.v]
                    .map(|x| ScalarValue::Float64(Some(x)))
                    .to_vec();
                v.extend(stats(fit.neg_ll, fit.converged, fit.iterations));
                v.push(ScalarValue::Float64(pearson(
                    rows.iter().map(|r| (r.frequency, r.monetary)),
                )));
                struct_value(fields, v)
            }
        }
    }
    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.columns.iter().map(|c| c.capacity() * 8).sum::<usize>()
    }
}

/// Pearson correlation, None with fewer than two points or no variance.
fn pearson(points: impl Iterator<Item = (f64, f64)> + Clone) -> Option<f64> {
    let n = points.clone().count() as f64;
    if n < 2.0 {
        return None;
    }
    let (mx, my) = points
        .clone()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
        syy += (y - my) * (y - my);
    }
    (sxx > 0.0 && syy > 0.0).then(|| sxy / (sxx * syy).sqrt())
}

// ---------------------------------------------------------------------------------------
// Predictions

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Predict {
    Expected,
    PAlive,
    ExpectedNew,
    ProbN,
    Spend,
    Clv,
}

impl Predict {
    fn name(self) -> &'static str {
        match self {
            Predict::Expected => "bgnbd_expected_purchases",
            Predict::PAlive => "bgnbd_p_alive",
            Predict::ExpectedNew => "bgnbd_expected_purchases_new",
            Predict::ProbN => "bgnbd_prob_n_purchases",
            Predict::Spend => "gamma_gamma_expected_spend",
            Predict::Clv => "clv_predict",
        }
    }
    fn usage(self) -> &'static str {
        match self {
            Predict::Expected => "takes (params, t, frequency, recency, T)",
            Predict::PAlive => "takes (params, frequency, recency, T)",
            Predict::ExpectedNew => "takes (params, t)",
            Predict::ProbN => "takes (params, t, n)",
            Predict::Spend => "takes (gg_params, frequency, monetary_value)",
            Predict::Clv => {
                "takes (bg_params, gg_params, frequency, recency, T, monetary_value \
                 [, months integer [, monthly_discount [, time_unit text]]])"
            }
        }
    }
    /// (struct arguments, numeric arguments, optional numeric, optional trailing text).
    fn layout(self) -> (usize, usize, usize, bool) {
        match self {
            Predict::Expected => (1, 4, 0, false),
            Predict::PAlive => (1, 3, 0, false),
            Predict::ExpectedNew => (1, 1, 0, false),
            Predict::ProbN => (1, 2, 0, false),
            Predict::Spend => (1, 2, 0, false),
            Predict::Clv => (2, 4, 2, true),
        }
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Prediction {
    kind: Predict,
    signature: Signature,
}

/// The named fields of a parameter struct column, as f64 columns.
fn param_columns(
    name: &'static str,
    a: &ArrayRef,
    names: &[&str],
) -> Result<(Vec<ArrayRef>, Option<datafusion::arrow::buffer::NullBuffer>)> {
    let s = a
        .as_struct_opt()
        .ok_or_else(|| invalid(name, "the parameters must be a struct"))?;
    let cols = names
        .iter()
        .map(|n| {
            let c = s.column_by_name(n).ok_or_else(|| {
                invalid(
                    name,
                    format!("the parameter struct has no field '{n}' (needs {names:?})"),
                )
            })?;
            Ok(cast(c, &DataType::Float64)?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((cols, s.nulls().cloned()))
}

impl ScalarUDFImpl for Prediction {
    fn name(&self) -> &str {
        self.kind.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, types: &[DataType]) -> Result<Vec<DataType>> {
        let name = self.kind.name();
        let (structs, numbers, optional, text) = self.kind.layout();
        let min = structs + numbers;
        let max = min + optional + usize::from(text);
        let ok = types.len() >= min
            && types.len() <= max
            && types[..structs]
                .iter()
                .all(|t| matches!(t, DataType::Struct(_) | DataType::Null))
            && types[structs..types.len().min(min + optional)]
                .iter()
                .all(is_numeric)
            && (types.len() <= min + optional || events::is_text(&types[max - 1]));
        if !ok {
            return Err(invalid(name, self.kind.usage()));
        }
        let mut out = types.to_vec();
        for (i, t) in out.iter_mut().enumerate().skip(structs) {
            *t = if i == max - 1 && text {
                DataType::Utf8
            } else {
                DataType::Float64
            };
        }
        Ok(out)
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let name = self.kind.name();
        let rows = args.number_rows;
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let n = if scalar { 1 } else { rows };
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<Result<_>>()?;
        let (structs, numbers, optional, text) = self.kind.layout();
        let bg_names = ["r", "alpha", "a", "b"];
        let gg_names = ["p", "q", "v"];
        let first_names: &[&str] = if self.kind == Predict::Spend {
            &gg_names
        } else {
            &bg_names
        };
        let (first, first_nulls) = param_columns(name, &arrays[0], first_names)?;
        let second = if structs == 2 {
            Some(param_columns(name, &arrays[1], &gg_names)?)
        } else {
            None
        };
        let nums_end = (structs + numbers + optional).min(
            arrays.len() - usize::from(text && arrays.len() == structs + numbers + optional + 1),
        );
        let nums: Vec<&Float64Array> = arrays[structs..nums_end]
            .iter()
            .map(|a| a.as_primitive())
            .collect();
        let factor = if text && arrays.len() == structs + numbers + optional + 1 {
            let unit = arrays[arrays.len() - 1].clone();
            let unit = cast(&unit, &DataType::Utf8)?;
            let unit = unit.as_string::<i32>();
            if unit.is_null(0) {
                return Err(invalid(name, "time_unit must not be NULL"));
            }
            btyd::month_factor(unit.value(0)).ok_or_else(|| {
                invalid(
                    name,
                    format!("time_unit '{}' is not D, W, M or H", unit.value(0)),
                )
            })?
        } else {
            30.0
        };
        let value = |c: &ArrayRef, i: usize| {
            let c = c.as_primitive::<Float64Type>();
            c.is_valid(i).then(|| c.value(i))
        };
        let mut out: Vec<Option<f64>> = Vec::with_capacity(n);
        for i in 0..n {
            let params_null = first_nulls.as_ref().is_some_and(|nb| nb.is_null(i))
                || second
                    .as_ref()
                    .is_some_and(|(_, nb)| nb.as_ref().is_some_and(|nb| nb.is_null(i)));
            let p: Option<Vec<f64>> = first.iter().map(|c| value(c, i)).collect();
            let x: Option<Vec<f64>> = nums
                .iter()
                .take(numbers)
                .map(|c| c.is_valid(i).then(|| c.value(i)))
                .collect();
            let (Some(p), Some(x), false) = (p, x, params_null) else {
                out.push(None);
                continue;
            };
            let bg = BgNbd {
                r: p[0],
                alpha: p[1],
                a: *p.get(2).unwrap_or(&f64::NAN),
                b: *p.get(3).unwrap_or(&f64::NAN),
            };
            let result = match self.kind {
                Predict::Expected => Some(bg.expected_purchases(x[0], x[1], x[2], x[3])),
                Predict::PAlive => Some(bg.p_alive(x[0], x[1], x[2])),
                Predict::ExpectedNew => Some(bg.expected_purchases_new(x[0])),
                Predict::ProbN => {
                    if x[1] < 0.0 || x[1].fract() != 0.0 || x[1] > 1e6 {
                        return Err(invalid(
                            name,
                            format!("n must be a whole number ≥ 0, not {}", x[1]),
                        ));
                    }
                    Some(bg.prob_n_purchases(x[0], x[1] as u32))
                }
                Predict::Spend => Some(
                    GammaGamma {
                        p: p[0],
                        q: p[1],
                        v: p[2],
                    }
                    .expected_spend(x[0], x[1]),
                ),
                Predict::Clv => {
                    let (gg, _) = second.as_ref().expect("two parameter structs");
                    let g: Option<Vec<f64>> = gg.iter().map(|c| value(c, i)).collect();
                    match g {
                        None => None,
                        Some(g) => {
                            let months = nums
                                .get(4)
                                .map_or(Some(12.0), |c| c.is_valid(i).then(|| c.value(i)));
                            let discount = nums
                                .get(5)
                                .map_or(Some(0.01), |c| c.is_valid(i).then(|| c.value(i)));
                            match (months, discount) {
                                (Some(m), Some(d)) => {
                                    if !(0.0..=1200.0).contains(&m) || m.fract() != 0.0 {
                                        return Err(invalid(
                                            name,
                                            format!(
                                                "months must be a whole number from 0 to 1200, not {m}"
                                            ),
                                        ));
                                    }
                                    if d <= -1.0 {
                                        return Err(invalid(
                                            name,
                                            "monthly_discount must be above -1",
                                        ));
                                    }
                                    Some(btyd::clv(
                                        &bg,
                                        &GammaGamma {
                                            p: g[0],
                                            q: g[1],
                                            v: g[2],
                                        },
                                        x[0],
                                        x[1],
                                        x[2],
                                        x[3],
                                        m as u32,
                                        d,
                                        factor,
                                    ))
                                }
                                _ => None,
                            }
                        }
                    }
                }
            };
            out.push(result);
        }
        let out: ArrayRef = Arc::new(Float64Array::from(out));
        Ok(if scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
        } else {
            ColumnarValue::Array(out)
        })
    }
}
