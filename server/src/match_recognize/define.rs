//! DEFINE conditions that read the match so far (SQL:2016 row pattern navigation): a
//! column of another symbol (`B AS B.price > A.price` reads the last row mapped to `A`),
//! `FIRST`/`LAST(A.x [, n])`, `PREV`/`NEXT` of those (`PREV(A.x, 2)`), and running
//! aggregates over the rows mapped so far (`SUM(A.qty) < 10`, `COUNT(*)`, `AVG(price)`),
//! where the row being tested counts as the defined symbol's.
//!
//! Such a condition cannot be one boolean column computed before matching. It is split
//! into *leaves*, each a part of the condition that reads one row (`A.price * 1.1`,
//! `ts + INTERVAL '1' HOUR`), which the input query computes for every row as a hidden
//! column, and the operators that combine leaves of different rows (comparisons,
//! arithmetic, AND/OR/NOT, IS NULL, BETWEEN), which the matcher evaluates for each
//! candidate row with SQL's NULL rules. Anything else that spans rows is SQLSTATE 0A000.

use std::ops::ControlFlow;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, StringArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type, TimeUnit};
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    UnaryOperator, Value, Visit, VisitMut, Visitor, VisitorMut,
};

use super::{Label, MatchError};

/// Which row a reference reads, relative to the partial match and the row being tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The row being tested.
    Current,
    /// The `n`-th last row (0: the last) mapped to the symbol (`None`: to any symbol);
    /// the row being tested is the defined symbol's last.
    Last(Option<usize>, usize),
    /// The `n`-th row (0: the first) mapped to the symbol (`None`: to any symbol).
    First(Option<usize>, usize),
}

/// A row reference: an anchor and a physical offset from it (`PREV` < 0 < `NEXT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Nav {
    anchor: Anchor,
    shift: i64,
}

const CURRENT: Nav = Nav {
    anchor: Anchor::Current,
    shift: 0,
};

/// A running aggregate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agg {
    Sum,
    Avg,
    Min,
    Max,
    Count,
}

/// An operator combining values of different rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    And,
    Or,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    Plus,
    Minus,
    Multiply,
    Divide,
    Modulo,
}

/// A condition evaluated while matching.
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    /// Leaf column `leaf` at a row.
    Value {
        leaf: usize,
        nav: Nav,
    },
    /// An aggregate of leaf column `leaf` (`None`: rows) over the rows mapped to
    /// `symbol` (`None`: all) so far, with the row being tested.
    Aggregate {
        agg: Agg,
        symbol: Option<usize>,
        leaf: Option<usize>,
    },
    /// `CLASSIFIER()` of a row (`PREV(CLASSIFIER())`): its symbol in the match so far,
    /// the defined symbol for the row being tested, NULL elsewhere.
    Classifier(i64),
    /// `MATCH_NUMBER()`: the number of the match being attempted.
    MatchNumber,
    Binary(Box<Cond>, Op, Box<Cond>),
    Not(Box<Cond>),
    Neg(Box<Cond>),
    /// `IS NULL` (`true`) or `IS NOT NULL`.
    IsNull(Box<Cond>, bool),
}

/// Splits DEFINE conditions into leaves and operators.
pub struct Planner<'a> {
    /// The symbol of a name, as the clause knows it.
    pub symbol_of: &'a dyn Fn(&Ident) -> Option<usize>,
    /// Leaf expressions for the input query, numbered across the clause.
    pub leaves: Vec<Expr>,
}

fn name_of(f: &Function) -> String {
    f.name.to_string().to_ascii_lowercase()
}

fn args(f: &Function) -> Result<Vec<&FunctionArgExpr>, MatchError> {
    super::positional_args(f).ok_or_else(|| {
        MatchError::Invalid(format!(
            "named or subquery arguments in {} in DEFINE",
            name_of(f)
        ))
    })
}

/// Functions that read another row or rows of the match.
fn is_navigation(name: &str) -> bool {
    matches!(name, "prev" | "next" | "first" | "last")
}

/// Is the first argument of `f` `CLASSIFIER()`?
fn reads_classifier(f: &Function) -> bool {
    matches!(super::positional_args(f).as_deref(), Some([FunctionArgExpr::Expr(Expr::Function(g)), ..])
        if name_of(g) == "classifier")
}

fn is_aggregate(name: &str) -> bool {
    matches!(name, "sum" | "avg" | "min" | "max" | "count")
}

/// The offset argument (the second) of PREV/NEXT/FIRST/LAST, `default` without one.
fn offset_arg(args: &[&FunctionArgExpr], default: usize) -> Result<usize, MatchError> {
    match args.get(1) {
        Some(e) => offset(e).ok_or_else(|| {
            MatchError::Invalid(format!(
                "the offset {e} must be a non-negative integer literal"
            ))
        }),
        None => Ok(default),
    }
}

/// A non-negative integer literal (the offset argument of PREV/NEXT/FIRST/LAST).
pub(super) fn offset(e: &FunctionArgExpr) -> Option<usize> {
    if let FunctionArgExpr::Expr(Expr::Value(v)) = e
        && let Value::Number(n, _) = &v.value
    {
        return n.parse::<usize>().ok();
    }
    None
}

impl Planner<'_> {
    /// Does DEFINE `def` of symbol `symbol` read the match so far? Conditions that read
    /// only the row being tested and rows at fixed offsets from it (`PREV(price)`) are
    /// computed before matching.
    pub fn reads_match(&self, def: &Expr, symbol: usize) -> bool {
        struct Reads<'p, 'a> {
            p: &'p Planner<'a>,
            symbol: usize,
        }
        impl Visitor for Reads<'_, '_> {
            type Break = ();
            fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
                match e {
                    Expr::CompoundIdentifier(parts)
                        if parts.len() == 2
                            && (self.p.symbol_of)(&parts[0]).is_some_and(|s| s != self.symbol) =>
                    {
                        ControlFlow::Break(())
                    }
                    Expr::Function(f) => {
                        let name = name_of(f);
                        if matches!(
                            name.as_str(),
                            "first" | "last" | "classifier" | "match_number"
                        ) || is_aggregate(&name)
                        {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    }
                    _ => ControlFlow::Continue(()),
                }
            }
        }
        def.visit(&mut Reads { p: self, symbol }).is_break()
    }

    /// The condition of DEFINE `def` for `symbol`, its leaves added to [`Self::leaves`].
    pub fn plan(&mut self, def: &Expr, symbol: usize) -> Result<Cond, MatchError> {
        if let Expr::Nested(inner) = def {
            return self.plan(inner, symbol);
        }
        if let Expr::Function(f) = def {
            let name = name_of(f);
            if is_aggregate(&name) {
                return self.aggregate(f);
            }
            if let Some(c) = self.match_function(f)? {
                return Ok(c);
            }
        }
        let (navs, aggregates) = self.references(def, symbol)?;
        if !aggregates && navs.len() <= 1 {
            let nav = navs.first().copied().unwrap_or(CURRENT);
            // A row that may be missing (no row of the symbol yet, PREV before the first)
            // reads as NULLs: only expressions that are NULL on NULL input may be computed
            // at that row; the rest (IS NULL, OR, COALESCE, …) is evaluated above it.
            if nav == CURRENT || null_on_null(def) {
                return Ok(Cond::Value {
                    leaf: self.leaf(def),
                    nav,
                });
            }
        }
        let b = |p: &mut Self, e: &Expr| p.plan(e, symbol).map(Box::new);
        Ok(match def {
            Expr::BinaryOp { left, op, right } => {
                let op = match op {
                    BinaryOperator::And => Op::And,
                    BinaryOperator::Or => Op::Or,
                    BinaryOperator::Eq => Op::Eq,
                    BinaryOperator::NotEq => Op::NotEq,
                    BinaryOperator::Lt => Op::Lt,
                    BinaryOperator::LtEq => Op::LtEq,
                    BinaryOperator::Gt => Op::Gt,
                    BinaryOperator::GtEq => Op::GtEq,
                    BinaryOperator::Plus => Op::Plus,
                    BinaryOperator::Minus => Op::Minus,
                    BinaryOperator::Multiply => Op::Multiply,
                    BinaryOperator::Divide => Op::Divide,
                    BinaryOperator::Modulo => Op::Modulo,
                    other => return Err(spanning(&format!("the operator {other}"))),
                };
                Cond::Binary(b(self, left)?, op, b(self, right)?)
            }
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Cond::Not(b(self, expr)?),
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => Cond::Neg(b(self, expr)?),
            Expr::UnaryOp {
                op: UnaryOperator::Plus,
                expr,
            } => self.plan(expr, symbol)?,
            Expr::IsNull(e) => Cond::IsNull(b(self, e)?, true),
            Expr::IsNotNull(e) => Cond::IsNull(b(self, e)?, false),
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let x = self.plan(expr, symbol)?;
                let within = Cond::Binary(
                    Box::new(Cond::Binary(Box::new(x.clone()), Op::GtEq, b(self, low)?)),
                    Op::And,
                    Box::new(Cond::Binary(Box::new(x), Op::LtEq, b(self, high)?)),
                );
                if *negated {
                    Cond::Not(Box::new(within))
                } else {
                    within
                }
            }
            other => return Err(spanning(&other.to_string())),
        })
    }

    /// `CLASSIFIER()`, `PREV`/`NEXT(CLASSIFIER() [, n])` and `MATCH_NUMBER()`.
    fn match_function(&self, f: &Function) -> Result<Option<Cond>, MatchError> {
        let name = name_of(f);
        Ok(match name.as_str() {
            "classifier" => Some(Cond::Classifier(0)),
            "match_number" => Some(Cond::MatchNumber),
            "prev" | "next" if reads_classifier(f) => {
                let n = offset_arg(&args(f)?, 1)? as i64;
                Some(Cond::Classifier(if name == "prev" { -n } else { n }))
            }
            "first" | "last" if reads_classifier(f) => {
                return Err(MatchError::NotSupported(format!(
                    "{}(CLASSIFIER()) in DEFINE",
                    name.to_uppercase()
                )));
            }
            _ => None,
        })
    }

    /// The rows `e` reads, and whether it holds an aggregate.
    fn references(&self, e: &Expr, symbol: usize) -> Result<(Vec<Nav>, bool), MatchError> {
        struct Refs<'p, 'a> {
            p: &'p Planner<'a>,
            symbol: usize,
            navs: Vec<Nav>,
            aggregates: bool,
            /// Depth inside a navigation or aggregate call (its columns are its own).
            inside: usize,
            error: Option<MatchError>,
        }
        impl Refs<'_, '_> {
            fn add(&mut self, nav: Nav) {
                if !self.navs.contains(&nav) {
                    self.navs.push(nav);
                }
            }
        }
        impl Visitor for Refs<'_, '_> {
            type Break = ();
            fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
                let wraps = matches!(e, Expr::Function(f)
                    if is_navigation(&name_of(f)) || is_aggregate(&name_of(f)));
                if self.inside > 0 {
                    self.inside += usize::from(wraps);
                    return ControlFlow::Continue(());
                }
                match e {
                    Expr::Identifier(_) => self.add(CURRENT),
                    Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
                        let nav = self.p.column_nav(&parts[0], self.symbol);
                        self.add(nav);
                    }
                    Expr::Function(f) => {
                        let name = name_of(f);
                        if is_navigation(&name) && reads_classifier(f) {
                            self.aggregates = true;
                        } else if is_navigation(&name) {
                            match self.p.navigation(f, self.symbol) {
                                Ok(nav) => self.add(nav),
                                Err(err) => {
                                    self.error = Some(err);
                                    return ControlFlow::Break(());
                                }
                            }
                        } else if is_aggregate(&name) {
                            self.aggregates = true;
                        } else if matches!(name.as_str(), "classifier" | "match_number") {
                            // Not a column: evaluated by the matcher.
                            self.aggregates = true;
                        }
                        self.inside += usize::from(wraps);
                    }
                    _ => {}
                }
                ControlFlow::Continue(())
            }
            fn post_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
                if self.inside > 0
                    && matches!(e, Expr::Function(f)
                        if is_navigation(&name_of(f)) || is_aggregate(&name_of(f)))
                {
                    self.inside -= 1;
                }
                ControlFlow::Continue(())
            }
        }
        let mut r = Refs {
            p: self,
            symbol,
            navs: vec![],
            aggregates: false,
            inside: 0,
            error: None,
        };
        let _ = e.visit(&mut r);
        match r.error {
            Some(err) => Err(err),
            None => Ok((r.navs, r.aggregates)),
        }
    }

    /// The row `S.x` reads in DEFINE of `symbol`: the row being tested for its own
    /// symbol or a name that is not a symbol (a table alias), else the last row of `S`.
    fn column_nav(&self, qualifier: &Ident, symbol: usize) -> Nav {
        match (self.symbol_of)(qualifier) {
            Some(s) if s != symbol => Nav {
                anchor: Anchor::Last(Some(s), 0),
                shift: 0,
            },
            _ => CURRENT,
        }
    }

    /// The row `PREV`/`NEXT`/`FIRST`/`LAST(…)` reads.
    fn navigation(&self, f: &Function, symbol: usize) -> Result<Nav, MatchError> {
        let name = name_of(f);
        let a = args(f)?;
        let n = offset_arg(&a, usize::from(matches!(name.as_str(), "prev" | "next")))?;
        if a.is_empty() || a.len() > 2 {
            return Err(MatchError::Invalid(format!(
                "{} takes a column and an optional offset",
                name.to_uppercase()
            )));
        }
        let column = |e: &FunctionArgExpr| -> Result<Option<Option<usize>>, MatchError> {
            Ok(match e {
                FunctionArgExpr::Expr(Expr::Identifier(_)) => Some(None),
                FunctionArgExpr::Expr(Expr::CompoundIdentifier(p)) if p.len() == 2 => {
                    Some((self.symbol_of)(&p[0]))
                }
                _ => None,
            })
        };
        match name.as_str() {
            "first" | "last" => {
                let Some(s) = column(a[0])? else {
                    return Err(MatchError::NotSupported(format!(
                        "{}({}) in DEFINE (give it a column or symbol.column)",
                        name.to_uppercase(),
                        a[0]
                    )));
                };
                let anchor = if name == "first" {
                    Anchor::First(s, n)
                } else if n == 0 && s.is_none_or(|s| s == symbol) {
                    Anchor::Current
                } else {
                    Anchor::Last(s, n)
                };
                Ok(Nav { anchor, shift: 0 })
            }
            _ => {
                let shift = if name == "prev" {
                    -(n as i64)
                } else {
                    n as i64
                };
                let base = match a[0] {
                    FunctionArgExpr::Expr(Expr::Function(g))
                        if matches!(name_of(g).as_str(), "first" | "last") =>
                    {
                        self.navigation(g, symbol)?
                    }
                    e => match column(e)? {
                        Some(Some(s)) if s != symbol => Nav {
                            anchor: Anchor::Last(Some(s), 0),
                            shift: 0,
                        },
                        Some(_) => CURRENT,
                        None => {
                            return Err(MatchError::NotSupported(format!(
                                "{}({e}) in DEFINE (give it a column, symbol.column, FIRST or LAST)",
                                name.to_uppercase()
                            )));
                        }
                    },
                };
                Ok(Nav {
                    anchor: base.anchor,
                    shift: base.shift + shift,
                })
            }
        }
    }

    /// A running aggregate: its argument reads one symbol's rows (or all rows).
    fn aggregate(&mut self, f: &Function) -> Result<Cond, MatchError> {
        let name = name_of(f);
        let agg = match name.as_str() {
            "sum" => Agg::Sum,
            "avg" => Agg::Avg,
            "min" => Agg::Min,
            "max" => Agg::Max,
            _ => Agg::Count,
        };
        let a = args(f)?;
        let [arg] = a.as_slice() else {
            return Err(MatchError::Invalid(format!(
                "{} in DEFINE takes one argument",
                name.to_uppercase()
            )));
        };
        if let FunctionArguments::List(l) = &f.args
            && l.duplicate_treatment.is_some()
        {
            return Err(MatchError::NotSupported(format!(
                "{}(DISTINCT …) in DEFINE",
                name.to_uppercase()
            )));
        }
        match arg {
            FunctionArgExpr::Wildcard if agg == Agg::Count => Ok(Cond::Aggregate {
                agg,
                symbol: None,
                leaf: None,
            }),
            FunctionArgExpr::QualifiedWildcard(n) if agg == Agg::Count => {
                let s = n
                    .0
                    .first()
                    .and_then(|p| p.as_ident())
                    .and_then(|i| (self.symbol_of)(i))
                    .ok_or_else(|| MatchError::Invalid(format!("COUNT({arg}): no such symbol")))?;
                Ok(Cond::Aggregate {
                    agg,
                    symbol: Some(s),
                    leaf: None,
                })
            }
            FunctionArgExpr::Expr(e) => {
                // The symbols its columns name (a name that is no symbol is a table's).
                let mut symbols: Vec<Option<usize>> = vec![];
                let mut navigates = false;
                let _ = e.visit(&mut ColumnSymbols {
                    symbol_of: self.symbol_of,
                    out: &mut symbols,
                    navigates: &mut navigates,
                });
                if navigates {
                    return Err(MatchError::NotSupported(format!(
                        "navigation or nested aggregates inside {}(…) in DEFINE",
                        name.to_uppercase()
                    )));
                }
                symbols.sort_unstable();
                symbols.dedup();
                let symbol = match symbols.as_slice() {
                    [] | [None] => None,
                    [Some(s)] => Some(*s),
                    _ => {
                        return Err(MatchError::Invalid(format!(
                            "{}({e}) mixes the rows of several symbols",
                            name.to_uppercase()
                        )));
                    }
                };
                Ok(Cond::Aggregate {
                    agg,
                    symbol,
                    leaf: Some(self.leaf(e)),
                })
            }
            _ => Err(MatchError::Invalid(format!(
                "{}({arg}) in DEFINE",
                name.to_uppercase()
            ))),
        }
    }

    /// Add `e`, read at one row, as a leaf: symbol qualifiers and navigation dropped.
    fn leaf(&mut self, e: &Expr) -> usize {
        struct Strip<'a> {
            symbol_of: &'a dyn Fn(&Ident) -> Option<usize>,
        }
        impl VisitorMut for Strip<'_> {
            type Break = ();
            fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
                match e {
                    Expr::CompoundIdentifier(parts)
                        if parts.len() == 2 && (self.symbol_of)(&parts[0]).is_some() =>
                    {
                        *e = Expr::Identifier(parts[1].clone());
                    }
                    Expr::Function(f) if is_navigation(&name_of(f)) => {
                        if let FunctionArguments::List(l) = &f.args
                            && let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(x))) =
                                l.args.first()
                        {
                            *e = x.clone();
                        }
                    }
                    _ => {}
                }
                ControlFlow::Continue(())
            }
        }
        let mut e = e.clone();
        let _ = VisitMut::visit(
            &mut e,
            &mut Strip {
                symbol_of: self.symbol_of,
            },
        );
        self.leaves.push(e);
        self.leaves.len() - 1
    }
}

/// Is `e` NULL whenever a column it reads is NULL (so that computing it at a missing row
/// is the same as NULL)? Columns, literals, navigation, arithmetic, comparisons, `||` and
/// casts are; anything else is not assumed to be.
fn null_on_null(e: &Expr) -> bool {
    struct Strict(bool);
    impl Visitor for Strict {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            let ok = match e {
                Expr::Identifier(_)
                | Expr::CompoundIdentifier(_)
                | Expr::Value(_)
                | Expr::TypedString { .. }
                | Expr::Interval(_)
                | Expr::Nested(_)
                | Expr::Cast { .. } => true,
                Expr::UnaryOp { op, .. } => {
                    matches!(op, UnaryOperator::Minus | UnaryOperator::Plus)
                }
                Expr::BinaryOp { op, .. } => !matches!(
                    op,
                    BinaryOperator::And | BinaryOperator::Or | BinaryOperator::Xor
                ),
                Expr::Function(f) => is_navigation(&name_of(f)),
                _ => false,
            };
            if ok {
                ControlFlow::Continue(())
            } else {
                self.0 = false;
                ControlFlow::Break(())
            }
        }
    }
    let mut v = Strict(true);
    let _ = e.visit(&mut v);
    v.0
}

/// Collects the symbols an expression's columns name; notes navigation and aggregates.
struct ColumnSymbols<'a> {
    symbol_of: &'a dyn Fn(&Ident) -> Option<usize>,
    out: &'a mut Vec<Option<usize>>,
    navigates: &'a mut bool,
}

impl Visitor for ColumnSymbols<'_> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Identifier(_) => self.out.push(None),
            Expr::CompoundIdentifier(p) if p.len() == 2 => self.out.push((self.symbol_of)(&p[0])),
            Expr::Function(f) if is_navigation(&name_of(f)) || is_aggregate(&name_of(f)) => {
                *self.navigates = true;
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

fn spanning(what: &str) -> MatchError {
    MatchError::NotSupported(format!(
        "{what} in DEFINE over values of different rows (compute it within one row's \
         reference, or compare the rows' values)"
    ))
}

/// A leaf column, as the matcher reads it.
pub enum Column {
    Int(Int64Array),
    Float(Float64Array),
    /// Timestamps and dates as µs since the epoch.
    Time(Int64Array),
    Text(StringArray),
    Bool(BooleanArray),
}

impl Column {
    /// Read a leaf column computed by the input query.
    pub fn new(a: &ArrayRef) -> Result<Column, MatchError> {
        let conv = |t: &DataType| cast(a, t).map_err(|e| MatchError::Invalid(e.to_string()));
        use DataType as T;
        Ok(match a.data_type() {
            T::Boolean => Column::Bool(a.as_boolean().clone()),
            T::Null
            | T::Int8
            | T::Int16
            | T::Int32
            | T::Int64
            | T::UInt8
            | T::UInt16
            | T::UInt32
            | T::UInt64 => Column::Int(conv(&T::Int64)?.as_primitive::<Int64Type>().clone()),
            T::Float16 | T::Float32 | T::Float64 | T::Decimal128(..) | T::Decimal256(..) => {
                Column::Float(conv(&T::Float64)?.as_primitive().clone())
            }
            T::Utf8 | T::LargeUtf8 | T::Utf8View => {
                Column::Text(conv(&T::Utf8)?.as_string().clone())
            }
            T::Timestamp(_, tz) => {
                let us = conv(&T::Timestamp(TimeUnit::Microsecond, tz.clone()))?;
                let raw = cast(&us, &T::Int64).map_err(|e| MatchError::Invalid(e.to_string()))?;
                Column::Time(raw.as_primitive::<Int64Type>().clone())
            }
            T::Date32 | T::Date64 => {
                let us = conv(&T::Timestamp(TimeUnit::Microsecond, None))?;
                let raw = cast(&us, &T::Int64).map_err(|e| MatchError::Invalid(e.to_string()))?;
                Column::Time(raw.as_primitive::<Int64Type>().clone())
            }
            other => {
                return Err(MatchError::NotSupported(format!(
                    "{other} values compared across rows in DEFINE"
                )));
            }
        })
    }

    fn get(&self, row: usize) -> V<'_> {
        macro_rules! at {
            ($a:expr, $v:expr) => {
                if $a.is_valid(row) { $v } else { V::Null }
            };
        }
        match self {
            Column::Int(a) => at!(a, V::Int(a.value(row))),
            Column::Float(a) => at!(a, V::Float(a.value(row))),
            Column::Time(a) => at!(a, V::Time(a.value(row))),
            Column::Text(a) => at!(a, V::Text(a.value(row))),
            Column::Bool(a) => at!(a, V::Bool(a.value(row))),
        }
    }
}

/// A value while evaluating a condition.
#[derive(Debug, Clone, Copy, PartialEq)]
enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Time(i64),
    Text(&'a str),
}

impl V<'_> {
    fn kind(&self) -> &'static str {
        match self {
            V::Null => "null",
            V::Bool(_) => "boolean",
            V::Int(_) | V::Float(_) => "number",
            V::Time(_) => "timestamp",
            V::Text(_) => "text",
        }
    }

    fn float(&self) -> Option<f64> {
        match self {
            V::Int(i) => Some(*i as f64),
            V::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// Where a condition is evaluated: the partial match and the row being tested.
pub struct At<'a> {
    /// The partition's rows matched so far.
    pub path: &'a [Label],
    /// The row being tested (in the partition).
    pub row: usize,
    /// The symbol it is tested for.
    pub symbol: usize,
    /// Rows in the partition.
    pub len: usize,
    /// The partition's first row in the leaf columns.
    pub base: usize,
    /// Symbol names, as `CLASSIFIER()` gives them.
    pub names: &'a [String],
    /// The number of the match being attempted (1 for the partition's first).
    pub number: i64,
}

impl At<'_> {
    /// The rows mapped to `symbol` (all for `None`) so far, the row being tested last
    /// when it counts.
    fn rows(&self, symbol: Option<usize>) -> impl DoubleEndedIterator<Item = usize> + '_ {
        let current = symbol.is_none_or(|s| s == self.symbol);
        self.path
            .iter()
            .filter(move |l| symbol.is_none_or(|s| l.1 == s))
            .map(|l| l.0)
            .chain(current.then_some(self.row))
    }

    /// The absolute row `nav` reads, if inside the partition.
    fn resolve(&self, nav: Nav) -> Option<usize> {
        let r = match nav.anchor {
            Anchor::Current => self.row,
            Anchor::Last(s, n) => self.rows(s).rev().nth(n)?,
            Anchor::First(s, n) => self.rows(s).nth(n)?,
        } as i64
            + nav.shift;
        (0..self.len as i64)
            .contains(&r)
            .then(|| self.base + r as usize)
    }
}

/// Is `cond` true at `at`? (NULL is not.)
pub fn holds<'c>(cond: &Cond, cols: &'c [Column], at: &At<'c>) -> Result<bool, MatchError> {
    Ok(eval(cond, cols, at)? == V::Bool(true))
}

fn eval<'c>(cond: &Cond, cols: &'c [Column], at: &At<'c>) -> Result<V<'c>, MatchError> {
    Ok(match cond {
        Cond::Value { leaf, nav } => match at.resolve(*nav) {
            Some(r) => cols[*leaf].get(r),
            None => V::Null,
        },
        Cond::Aggregate { agg, symbol, leaf } => aggregate(*agg, *symbol, *leaf, cols, at)?,
        Cond::MatchNumber => V::Int(at.number),
        Cond::Classifier(shift) => {
            let row = at.row as i64 + shift;
            let symbol = if *shift == 0 {
                Some(at.symbol)
            } else {
                usize::try_from(row).ok().and_then(|row| {
                    at.path
                        .binary_search_by_key(&row, |l| l.0)
                        .ok()
                        .map(|i| at.path[i].1)
                })
            };
            match symbol {
                Some(s) => V::Text(at.names[s].as_str()),
                None => V::Null,
            }
        }
        Cond::Not(c) => match eval(c, cols, at)? {
            V::Bool(b) => V::Bool(!b),
            V::Null => V::Null,
            v => return Err(MatchError::Type(format!("NOT of a {} value", v.kind()))),
        },
        Cond::Neg(c) => match eval(c, cols, at)? {
            V::Int(i) => V::Int(i.checked_neg().ok_or(MatchError::OutOfRange)?),
            V::Float(f) => V::Float(-f),
            V::Null => V::Null,
            v => return Err(MatchError::Type(format!("minus of a {} value", v.kind()))),
        },
        Cond::IsNull(c, null) => V::Bool((eval(c, cols, at)? == V::Null) == *null),
        Cond::Binary(l, op, r) => {
            let a = eval(l, cols, at)?;
            // AND/OR with SQL's three-valued logic.
            if matches!(op, Op::And | Op::Or) {
                let stop = *op == Op::Or;
                if a == V::Bool(stop) {
                    return Ok(a);
                }
                let b = eval(r, cols, at)?;
                return Ok(match (a, b) {
                    (_, V::Bool(x)) if x == stop => V::Bool(stop),
                    (V::Null, _) | (_, V::Null) => V::Null,
                    (V::Bool(_), V::Bool(_)) => V::Bool(!stop),
                    (x, y) => {
                        return Err(MatchError::Type(format!(
                            "{op:?} of {} and {} values",
                            x.kind(),
                            y.kind()
                        )));
                    }
                });
            }
            binary(a, *op, eval(r, cols, at)?)?
        }
    })
}

fn binary<'c>(a: V<'c>, op: Op, b: V<'c>) -> Result<V<'c>, MatchError> {
    use std::cmp::Ordering;
    if a == V::Null || b == V::Null {
        return Ok(V::Null);
    }
    let mismatch = || {
        MatchError::Type(format!(
            "{op:?} of {} and {} values across rows",
            a.kind(),
            b.kind()
        ))
    };
    let compare = |o: Option<Ordering>| -> Result<V<'c>, MatchError> {
        let Some(o) = o else { return Ok(V::Null) };
        Ok(V::Bool(match op {
            Op::Eq => o == Ordering::Equal,
            Op::NotEq => o != Ordering::Equal,
            Op::Lt => o == Ordering::Less,
            Op::LtEq => o != Ordering::Greater,
            Op::Gt => o == Ordering::Greater,
            _ => o != Ordering::Less,
        }))
    };
    match op {
        Op::Eq | Op::NotEq | Op::Lt | Op::LtEq | Op::Gt | Op::GtEq => match (a, b) {
            (V::Int(x), V::Int(y)) | (V::Time(x), V::Time(y)) => compare(Some(x.cmp(&y))),
            (V::Text(x), V::Text(y)) => compare(Some(x.cmp(y))),
            (V::Bool(x), V::Bool(y)) => compare(Some(x.cmp(&y))),
            _ => match (a.float(), b.float()) {
                (Some(x), Some(y)) => compare(x.partial_cmp(&y)),
                _ => Err(mismatch()),
            },
        },
        _ => match (a, b) {
            (V::Int(x), V::Int(y)) => Ok(V::Int(
                match op {
                    Op::Plus => x.checked_add(y),
                    Op::Minus => x.checked_sub(y),
                    Op::Multiply => x.checked_mul(y),
                    Op::Divide | Op::Modulo if y == 0 => return Err(MatchError::DivisionByZero),
                    Op::Divide => x.checked_div(y),
                    _ => x.checked_rem(y),
                }
                .ok_or(MatchError::OutOfRange)?,
            )),
            _ => match (a.float(), b.float()) {
                (Some(x), Some(y)) => Ok(V::Float(match op {
                    Op::Plus => x + y,
                    Op::Minus => x - y,
                    Op::Multiply => x * y,
                    Op::Divide | Op::Modulo if y == 0.0 => {
                        return Err(MatchError::DivisionByZero);
                    }
                    Op::Divide => x / y,
                    _ => x % y,
                })),
                _ => Err(mismatch()),
            },
        },
    }
}

fn aggregate<'c>(
    agg: Agg,
    symbol: Option<usize>,
    leaf: Option<usize>,
    cols: &'c [Column],
    at: &At,
) -> Result<V<'c>, MatchError> {
    let rows = at.rows(symbol).map(|r| at.base + r);
    let Some(leaf) = leaf else {
        return Ok(V::Int(rows.count() as i64));
    };
    let values = rows.map(|r| cols[leaf].get(r)).filter(|v| *v != V::Null);
    Ok(match agg {
        Agg::Count => V::Int(values.count() as i64),
        Agg::Sum | Agg::Avg => {
            let (mut int, mut float, mut n, mut all_int) = (0i64, 0f64, 0usize, true);
            for v in values {
                match v {
                    V::Int(i) => {
                        int = int.checked_add(i).ok_or(MatchError::OutOfRange)?;
                        float += i as f64;
                    }
                    V::Float(f) => {
                        all_int = false;
                        float += f;
                    }
                    v => {
                        return Err(MatchError::Type(format!("{agg:?} of {} values", v.kind())));
                    }
                }
                n += 1;
            }
            match (n, agg) {
                (0, _) => V::Null,
                (_, Agg::Avg) => V::Float(float / n as f64),
                _ if all_int => V::Int(int),
                _ => V::Float(float),
            }
        }
        Agg::Min | Agg::Max => {
            let mut best: Option<V> = None;
            for v in values {
                best = Some(match best {
                    None => v,
                    Some(b) => {
                        let greater = binary(v, Op::Gt, b)? == V::Bool(true);
                        if greater == (agg == Agg::Max) && v != b {
                            v
                        } else {
                            b
                        }
                    }
                });
            }
            best.unwrap_or(V::Null)
        }
    })
}
