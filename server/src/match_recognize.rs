//! `MATCH_RECOGNIZE` (SQL:2016 row pattern recognition, functions.md §E) in the FROM clause.
//!
//! The input is evaluated by DataFusion first: the table with each `DEFINE` condition as a
//! boolean column (`PREV(x [, n])`/`NEXT(x [, n])` become `lag`/`lead` over the partition, a
//! symbol-qualified column `A.x` is the current row's `x`), ordered by PARTITION BY and ORDER
//! BY. The pattern is compiled to a backtracking program and matched per partition with
//! memoisation of (instruction, row) pairs already explored, so a match attempt takes at most
//! instructions × rows steps (no exponential blow-up); a statement stops with SQLSTATE 54001
//! past [`STEP_BUDGET`] steps. Matches are taken in the standard's preference order (greedy
//! quantifiers, alternatives left to right, PERMUTE in the listed order).
//!
//! MEASURES are computed from the matched rows — `FIRST`, `LAST`, `COUNT`, `SUM`, `MIN`,
//! `MAX`, `AVG`, `ARRAY_AGG` over a symbol's rows (`A.x`) or all rows (`x`), `CLASSIFIER()`,
//! `MATCH_NUMBER()`, and any expression over them — final for ONE ROW PER MATCH, running for
//! ALL ROWS PER MATCH. The result is a temporary in-memory table that replaces the
//! `MATCH_RECOGNIZE` clause in the statement, which DataFusion then plans as usual.

use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int64Array, ListArray, StringArray,
    UInt32Array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::compute::{cast, concat_batches, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::scalar::ScalarValue;
use datafusion::sql::sqlparser::ast::{
    self, AfterMatchSkip, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident,
    MatchRecognizePattern, MatchRecognizeSymbol, ObjectName, RepetitionQuantifier, RowsPerMatch,
    Statement, TableFactor, VisitMut, VisitorMut, WindowSpec, WindowType,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

mod define;

/// The in-memory catalog and schema holding the matches while a statement is planned.
pub const TEMP_CATALOG: &str = "touchlake_temp";
const TEMP_SCHEMA: &str = "match_recognize";
/// Most matcher steps per statement.
pub const STEP_BUDGET: u64 = 200_000_000;
/// Most program instructions a pattern may compile to.
const MAX_PROGRAM: usize = 100_000;

/// Why a `MATCH_RECOGNIZE` cannot run.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    /// Valid SQL Touchlake does not run (yet): SQLSTATE 0A000.
    #[error("MATCH_RECOGNIZE: {0} is not supported")]
    NotSupported(String),
    /// A mistake in the clause: SQLSTATE 42601 / 42703.
    #[error("MATCH_RECOGNIZE: {0}")]
    Invalid(String),
    /// A column the clause names is not in its input: SQLSTATE 42703.
    #[error("MATCH_RECOGNIZE: no column \"{0}\" in its input")]
    UnknownColumn(String),
    /// The data makes the clause impossible to follow (AFTER MATCH SKIP going back): 22023.
    #[error("MATCH_RECOGNIZE: {0}")]
    Data(String),
    /// The backtracking budget ran out: SQLSTATE 54001.
    #[error(
        "MATCH_RECOGNIZE: the pattern needed more than {STEP_BUDGET} matching steps; \
         narrow the partitions or simplify the pattern"
    )]
    TooComplex,
    /// A DEFINE condition combines values of types that do not go together: 42804.
    #[error("MATCH_RECOGNIZE: {0}")]
    Type(String),
    /// Division by zero in a DEFINE condition: 22012.
    #[error("MATCH_RECOGNIZE: division by zero in DEFINE")]
    DivisionByZero,
    /// An integer overflow in a DEFINE condition: 22003.
    #[error("MATCH_RECOGNIZE: integer out of range in DEFINE")]
    OutOfRange,
}

/// Does the SQL text use `MATCH_RECOGNIZE` (it needs a dialect that parses it)?
pub fn mentions(sql: &str) -> bool {
    sql.to_ascii_lowercase().contains("match_recognize")
}

/// Parse SQL that uses `MATCH_RECOGNIZE` (PostgreSQL's grammar has no such clause).
pub fn parse(sql: &str) -> Result<Vec<Statement>, String> {
    let (text, inputs) = lift_subquery_inputs(sql);
    let mut stmts =
        Parser::parse_sql(&GenericDialect {}, &mark_reluctant(&text)).map_err(|e| e.to_string())?;
    if inputs.is_empty() {
        return Ok(stmts);
    }
    let queries = inputs
        .iter()
        .map(|q| match parse(q)?.into_iter().next() {
            Some(Statement::Query(q)) => Ok(*q),
            _ => Err(format!("the MATCH_RECOGNIZE input ({q}) is not a query")),
        })
        .collect::<Result<Vec<_>, String>>()?;
    /// Puts the lifted subqueries back as derived tables.
    struct Restore(Vec<ast::Query>);
    impl VisitorMut for Restore {
        type Break = ();
        fn pre_visit_table_factor(&mut self, t: &mut TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table { name, alias, .. } = t
                && let [part] = name.0.as_slice()
                && let Some(k) = part
                    .as_ident()
                    .and_then(|i| i.value.strip_prefix(SUBQUERY_INPUT))
                    .and_then(|k| k.parse::<usize>().ok())
                && let Some(q) = self.0.get(k)
            {
                *t = TableFactor::Derived {
                    lateral: false,
                    subquery: Box::new(q.clone()),
                    alias: alias.clone(),
                    sample: None,
                };
            }
            ControlFlow::Continue(())
        }
    }
    let mut restore = Restore(queries);
    for s in &mut stmts {
        let _ = s.visit(&mut restore);
    }
    Ok(stmts)
}

/// The table name a subquery input stands under while the statement is parsed.
const SUBQUERY_INPUT: &str = "__touchlake_mr_input_";

/// sqlparser reads `MATCH_RECOGNIZE` only after a table name, not after a subquery
/// (`(SELECT …) AS t MATCH_RECOGNIZE (…)`). Each such subquery is replaced by the name
/// [`SUBQUERY_INPUT`]`k` and returned as text, so [`parse`] can put it back as a derived
/// table.
fn lift_subquery_inputs(sql: &str) -> (String, Vec<String>) {
    let b = sql.as_bytes();
    // Matching parentheses and MATCH_RECOGNIZE keywords outside quotes and comments.
    let (mut open_of, mut stack, mut keywords) = (std::collections::HashMap::new(), vec![], vec![]);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'(' => stack.push(i),
            b')' => {
                if let Some(o) = stack.pop() {
                    open_of.insert(i, o);
                }
            }
            c if c.is_ascii_alphabetic()
                && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
                && sql.len() >= i + 15
                && sql.is_char_boundary(i + 15)
                && sql[i..i + 15].eq_ignore_ascii_case("match_recognize")
                && b.get(i + 15)
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_')) =>
            {
                keywords.push(i);
                i += 15;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    let word_end = |mut j: usize| {
        while j > 0 && b[j - 1].is_ascii_whitespace() {
            j -= 1;
        }
        j
    };
    let mut spans: Vec<(usize, usize)> = vec![];
    for k in keywords {
        // Back over an optional alias (a word, or a quoted name) and an optional AS.
        let mut j = word_end(k);
        if j > 0 && b[j - 1] == b'"' {
            let mut s = j - 1;
            while s > 0 && b[s - 1] != b'"' {
                s -= 1;
            }
            j = word_end(s.saturating_sub(1));
        } else {
            let mut s = j;
            while s > 0 && (b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'_') {
                s -= 1;
            }
            if s < j {
                j = word_end(s);
            }
        }
        if j >= 2 && sql.is_char_boundary(j - 2) && sql[j - 2..j].eq_ignore_ascii_case("as") {
            j = word_end(j - 2);
        }
        if j == 0 || b[j - 1] != b')' {
            continue;
        }
        let close = j - 1;
        let Some(&open) = open_of.get(&close) else {
            continue;
        };
        let inner =
            sql[open + 1..close].trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        let starts = |w: &str| {
            inner.len() >= w.len()
                && inner.is_char_boundary(w.len())
                && inner[..w.len()].eq_ignore_ascii_case(w)
        };
        if starts("select") || starts("with") || starts("values") {
            spans.push((open, close));
        }
    }
    // Outermost subqueries only: an inner one is lifted when its text is parsed.
    spans.sort_unstable();
    let mut kept: Vec<(usize, usize)> = vec![];
    for s in spans {
        if kept.last().is_none_or(|k| s.0 > k.1) {
            kept.push(s);
        }
    }
    let mut out = String::with_capacity(sql.len());
    let mut inputs = vec![];
    let mut copied = 0;
    for (open, close) in kept {
        out.push_str(&sql[copied..open]);
        out.push_str(&format!("{SUBQUERY_INPUT}{}", inputs.len()));
        inputs.push(sql[open + 1..close].to_string());
        copied = close + 1;
    }
    out.push_str(&sql[copied..]);
    (out, inputs)
}

/// The symbol that stands for a reluctant quantifier's `?` once [`mark_reluctant`] wrote it.
const RELUCTANT: &str = "__touchlake_reluctant__";

/// sqlparser does not read reluctant quantifiers (`*?`, `+?`, `??`, `{n,m}?`). Inside each
/// `PATTERN (…)` the `?` after a quantifier becomes the symbol [`RELUCTANT`], which the
/// compiler reads back as "this repetition takes as few rows as it can".
fn mark_reluctant(sql: &str) -> String {
    let b = sql.as_bytes();
    let lower = sql.to_ascii_lowercase();
    let mut out = String::with_capacity(sql.len() + 32);
    let (mut copied, mut from) = (0usize, 0usize);
    while let Some(rel) = lower[from..].find("pattern") {
        let k = from + rel;
        from = k + 7;
        let word = (k == 0 || !(b[k - 1].is_ascii_alphanumeric() || b[k - 1] == b'_'))
            && b.get(k + 7)
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || *c == b'_'));
        let mut j = k + 7;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if !word || b.get(j) != Some(&b'(') {
            continue;
        }
        out.push_str(&sql[copied..=j]);
        let (mut p, mut depth, mut after_quantifier) = (j + 1, 1usize, false);
        while p < b.len() && depth > 0 {
            let c = b[p];
            match c {
                b'{' if b.get(p + 1) == Some(&b'-') => {
                    out.push_str("{-");
                    p += 2;
                    after_quantifier = false;
                    continue;
                }
                b'-' if b.get(p + 1) == Some(&b'}') => {
                    out.push_str("-}");
                    p += 2;
                    after_quantifier = false;
                    continue;
                }
                b'{' => {
                    let end = sql[p..].find('}').map_or(b.len(), |e| p + e + 1);
                    out.push_str(&sql[p..end]);
                    p = end;
                    after_quantifier = true;
                    continue;
                }
                b'?' if after_quantifier => {
                    out.push(' ');
                    out.push_str(RELUCTANT);
                    out.push(' ');
                    after_quantifier = false;
                }
                b'*' | b'+' | b'?' => {
                    out.push(c as char);
                    after_quantifier = true;
                }
                b'(' => {
                    depth += 1;
                    out.push('(');
                    after_quantifier = false;
                }
                b')' => {
                    depth -= 1;
                    out.push(')');
                    after_quantifier = false;
                }
                c if c.is_ascii_whitespace() => out.push(c as char),
                _ => {
                    // One whole character (names may be non-ASCII).
                    let ch = sql[p..].chars().next().unwrap_or(' ');
                    out.push(ch);
                    p += ch.len_utf8();
                    after_quantifier = false;
                    continue;
                }
            }
            p += 1;
        }
        copied = p;
        from = p.max(from);
    }
    out.push_str(&sql[copied..]);
    out
}

/// Is `p` the reluctance marker?
fn is_reluctant_mark(p: &MatchRecognizePattern) -> bool {
    matches!(p, MatchRecognizePattern::Symbol(MatchRecognizeSymbol::Named(i)) if i.value == RELUCTANT)
}

/// The outermost MATCH_RECOGNIZE clauses of a statement, in order.
pub fn clauses(stmt: &mut Statement) -> Vec<TableFactor> {
    /// Clauses inside another clause's input run as part of that input's query.
    struct Collect(Vec<TableFactor>, usize);
    impl VisitorMut for Collect {
        type Break = ();
        fn pre_visit_table_factor(&mut self, t: &mut TableFactor) -> ControlFlow<()> {
            if matches!(t, TableFactor::MatchRecognize { .. }) {
                if self.1 == 0 {
                    self.0.push(t.clone());
                }
                self.1 += 1;
            }
            ControlFlow::Continue(())
        }
        fn post_visit_table_factor(&mut self, t: &mut TableFactor) -> ControlFlow<()> {
            if matches!(t, TableFactor::MatchRecognize { .. }) {
                self.1 -= 1;
            }
            ControlFlow::Continue(())
        }
    }
    let mut c = Collect(vec![], 0);
    let _ = stmt.visit(&mut c);
    c.0
}

/// For each clause [`clauses`] finds (in its order): the index of the statement's WITH
/// entry it is inside, if any. Such a clause's input may use only the entries before that
/// one; with the whole WITH clause it would contain itself, and expand without end.
pub fn clause_ctes(stmt: &Statement) -> Vec<Option<usize>> {
    struct Scopes {
        ctes: Vec<*const ast::Query>,
        current: Option<usize>,
        depth: usize,
        out: Vec<Option<usize>>,
    }
    impl ast::Visitor for Scopes {
        type Break = ();
        fn pre_visit_query(&mut self, q: &ast::Query) -> ControlFlow<()> {
            if let Some(i) = self.ctes.iter().position(|&c| std::ptr::eq(c, q)) {
                self.current = Some(i);
            }
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, q: &ast::Query) -> ControlFlow<()> {
            if self.ctes.iter().any(|&c| std::ptr::eq(c, q)) {
                self.current = None;
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
            if matches!(t, TableFactor::MatchRecognize { .. }) {
                if self.depth == 0 {
                    self.out.push(self.current);
                }
                self.depth += 1;
            }
            ControlFlow::Continue(())
        }
        fn post_visit_table_factor(&mut self, t: &TableFactor) -> ControlFlow<()> {
            if matches!(t, TableFactor::MatchRecognize { .. }) {
                self.depth -= 1;
            }
            ControlFlow::Continue(())
        }
    }
    let ctes = match stmt {
        Statement::Query(q) => q.with.as_ref().map_or(vec![], |w| {
            w.cte_tables
                .iter()
                .map(|c| &*c.query as *const ast::Query)
                .collect()
        }),
        _ => vec![],
    };
    let mut v = Scopes {
        ctes,
        current: None,
        depth: 0,
        out: vec![],
    };
    let _ = ast::Visit::visit(stmt, &mut v);
    v.out
}

/// Replace the statement's MATCH_RECOGNIZE clauses, in the order [`clauses`] gave them, with
/// `replacements`.
pub fn replace(stmt: &mut Statement, replacements: Vec<TableFactor>) {
    struct Replace(std::vec::IntoIter<TableFactor>);
    impl VisitorMut for Replace {
        type Break = ();
        fn pre_visit_table_factor(&mut self, t: &mut TableFactor) -> ControlFlow<()> {
            if matches!(t, TableFactor::MatchRecognize { .. })
                && let Some(r) = self.0.next()
            {
                *t = r;
            }
            ControlFlow::Continue(())
        }
    }
    let _ = stmt.visit(&mut Replace(replacements.into_iter()));
}

/// The catalog schema the temporary match tables live in (created on first use).
pub fn temp_schema(
    ctx: &datafusion::prelude::SessionContext,
) -> Arc<dyn datafusion::catalog::SchemaProvider> {
    let catalog = match ctx.catalog(TEMP_CATALOG) {
        Some(c) => c,
        None => {
            let c: Arc<dyn CatalogProvider> = Arc::new(MemoryCatalogProvider::new());
            ctx.register_catalog(TEMP_CATALOG, c.clone());
            c
        }
    };
    match catalog.schema(TEMP_SCHEMA) {
        Some(s) => s,
        None => {
            let s: Arc<dyn datafusion::catalog::SchemaProvider> =
                Arc::new(MemorySchemaProvider::new());
            let _ = catalog.register_schema(TEMP_SCHEMA, s.clone());
            s
        }
    }
}

fn key(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// One MATCH_RECOGNIZE clause, ready to run.
pub struct Clause {
    table: TableFactor,
    partition_by: Vec<Expr>,
    order_by: Vec<ast::OrderByExpr>,
    measures: Vec<ast::Measure>,
    all_rows: bool,
    /// ALL ROWS PER MATCH SHOW EMPTY MATCHES (or WITH UNMATCHED ROWS): an empty match is
    /// a row too.
    show_empty: bool,
    /// ALL ROWS PER MATCH WITH UNMATCHED ROWS: rows in no match are output, with NULL
    /// measures.
    unmatched: bool,
    skip: AfterMatchSkip,
    pattern: MatchRecognizePattern,
    /// Symbol names as written, and their DEFINE conditions.
    symbols: Vec<(Ident, Option<Expr>)>,
    /// Per symbol: its condition when it reads the match so far (evaluated while
    /// matching, over the leaf columns), `None` when it is a column of the input.
    dynamic: Vec<Option<define::Cond>>,
    /// The leaves of the dynamic conditions, computed by the input query.
    leaves: Vec<Expr>,
    alias: Option<ast::TableAlias>,
}

impl Clause {
    /// Check a MATCH_RECOGNIZE table factor and take it apart.
    pub fn new(t: TableFactor) -> Result<Clause, MatchError> {
        let TableFactor::MatchRecognize {
            table,
            partition_by,
            order_by,
            measures,
            rows_per_match,
            after_match_skip,
            pattern,
            symbols: defines,
            alias,
        } = t
        else {
            return Err(MatchError::Invalid("not a MATCH_RECOGNIZE clause".into()));
        };
        let (all_rows, show_empty, unmatched) = match rows_per_match {
            None | Some(RowsPerMatch::OneRow) => (false, false, false),
            Some(RowsPerMatch::AllRows(None))
            | Some(RowsPerMatch::AllRows(Some(ast::EmptyMatchesMode::Omit))) => {
                (true, false, false)
            }
            Some(RowsPerMatch::AllRows(Some(ast::EmptyMatchesMode::Show))) => (true, true, false),
            Some(RowsPerMatch::AllRows(Some(ast::EmptyMatchesMode::WithUnmatched))) => {
                (true, true, true)
            }
        };
        let mut names: Vec<Ident> = vec![];
        collect_symbols(&pattern, &mut names);
        let mut symbols: Vec<(Ident, Option<Expr>)> = vec![];
        for n in names {
            if !symbols.iter().any(|(s, _)| key(s) == key(&n)) {
                symbols.push((n, None));
            }
        }
        if symbols.len() > 64 {
            return Err(MatchError::NotSupported(
                "more than 64 pattern symbols".into(),
            ));
        }
        for d in defines {
            let Some(slot) = symbols.iter_mut().find(|(s, _)| key(s) == key(&d.symbol)) else {
                return Err(MatchError::Invalid(format!(
                    "DEFINE {} names a symbol that is not in the pattern",
                    d.symbol
                )));
            };
            slot.1 = Some(d.definition);
        }
        let mut dynamic = vec![];
        let symbol_of = |i: &Ident| symbols.iter().position(|(s, _)| key(s) == key(i));
        let mut planner = define::Planner {
            symbol_of: &symbol_of,
            leaves: vec![],
        };
        for (k, (_, def)) in symbols.iter().enumerate() {
            dynamic.push(match def {
                Some(d) if planner.reads_match(d, k) => Some(planner.plan(d, k)?),
                _ => None,
            });
        }
        let leaves = planner.leaves;
        for p in &partition_by {
            if column_name(p).is_none() {
                return Err(MatchError::NotSupported(format!(
                    "PARTITION BY {p} (partition by columns)"
                )));
            }
        }
        Ok(Clause {
            table: *table,
            partition_by,
            order_by,
            measures,
            all_rows,
            show_empty,
            unmatched,
            skip: after_match_skip.unwrap_or(AfterMatchSkip::PastLastRow),
            pattern,
            symbols,
            dynamic,
            leaves,
            alias,
        })
    }

    fn symbol_index(&self, i: &Ident) -> Option<usize> {
        self.symbols.iter().position(|(s, _)| key(s) == key(i))
    }

    /// The query that evaluates the input: every column, the DEFINE conditions and the
    /// partition keys, in match order; `with` is the statement's WITH clause (its CTEs may
    /// be the input).
    pub fn input_sql(&self, with: Option<&ast::With>) -> Result<String, MatchError> {
        let mut cols = vec!["*".to_string()];
        for (k, (_, def)) in self.symbols.iter().enumerate() {
            if let Some(def) = def
                && self.dynamic[k].is_none()
            {
                let mut e = def.clone();
                self.navigation(&mut e)?;
                cols.push(format!("({e}) AS \"__mr_def_{k}\""));
            }
        }
        for (j, leaf) in self.leaves.iter().enumerate() {
            cols.push(format!("({leaf}) AS \"__mr_dyn_{j}\""));
        }
        for (k, p) in self.partition_by.iter().enumerate() {
            cols.push(format!("{p} AS \"__mr_part_{k}\""));
        }
        let mut order: Vec<String> = self.partition_by.iter().map(|p| p.to_string()).collect();
        order.extend(self.order_by.iter().map(|o| o.to_string()));
        let order = if order.is_empty() {
            String::new()
        } else {
            format!(" ORDER BY {}", order.join(", "))
        };
        Ok(format!(
            "{}SELECT {} FROM {}{order}",
            with.map_or_else(String::new, |w| format!("{w} ")),
            cols.join(", "),
            self.table
        ))
    }

    /// Rewrite a DEFINE condition for the input query: `A.x` → `x`, PREV/NEXT → lag/lead.
    fn navigation(&self, e: &mut Expr) -> Result<(), MatchError> {
        struct Nav<'a> {
            clause: &'a Clause,
            error: Option<MatchError>,
        }
        impl VisitorMut for Nav<'_> {
            type Break = ();
            fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
                match e {
                    Expr::CompoundIdentifier(parts)
                        if parts.len() == 2 && self.clause.symbol_index(&parts[0]).is_some() =>
                    {
                        *e = Expr::Identifier(parts[1].clone());
                    }
                    Expr::Function(f) => {
                        let name = f.name.to_string().to_ascii_lowercase();
                        match name.as_str() {
                            "prev" | "next" => {
                                f.name = ObjectName::from(vec![Ident::new(if name == "prev" {
                                    "lag"
                                } else {
                                    "lead"
                                })]);
                                f.over = Some(WindowType::WindowSpec(WindowSpec {
                                    window_name: None,
                                    partition_by: self.clause.partition_by.clone(),
                                    order_by: self.clause.order_by.clone(),
                                    window_frame: None,
                                }));
                            }
                            "classifier" | "match_number" => {
                                self.error = Some(MatchError::NotSupported(format!(
                                    "{}() in DEFINE",
                                    name.to_uppercase()
                                )));
                                return ControlFlow::Break(());
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
                ControlFlow::Continue(())
            }
        }
        let mut v = Nav {
            clause: self,
            error: None,
        };
        let _ = e.visit(&mut v);
        match v.error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}

fn column_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(key(i)),
        Expr::CompoundIdentifier(p) => p.last().map(key),
        _ => None,
    }
}

fn collect_symbols(p: &MatchRecognizePattern, out: &mut Vec<Ident>) {
    use MatchRecognizePattern as P;
    match p {
        P::Symbol(MatchRecognizeSymbol::Named(i)) | P::Exclude(MatchRecognizeSymbol::Named(i)) => {
            if i.value != RELUCTANT {
                out.push(i.clone())
            }
        }
        P::Symbol(_) | P::Exclude(_) => {}
        P::Permute(s) => {
            for x in s {
                if let MatchRecognizeSymbol::Named(i) = x {
                    out.push(i.clone());
                }
            }
        }
        P::Concat(ps) | P::Alternation(ps) => ps.iter().for_each(|p| collect_symbols(p, out)),
        P::Group(p) | P::Repetition(p, _) => collect_symbols(p, out),
    }
}

/// A matcher instruction.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Inst {
    /// Consume a row meeting the symbol; `excluded` rows are left out of ALL ROWS output.
    Sym {
        symbol: usize,
        excluded: bool,
    },
    /// Try the first target, then the second.
    Split(usize, usize),
    Jmp(usize),
    /// `^`: the partition's first row is next.
    Start,
    /// `$`: the partition's rows are all used.
    End,
    Match,
}

struct Compiler<'a> {
    clause: &'a Clause,
    prog: Vec<Inst>,
}

impl Compiler<'_> {
    fn emit(&mut self, i: Inst) -> Result<usize, MatchError> {
        if self.prog.len() >= MAX_PROGRAM {
            return Err(MatchError::NotSupported(format!(
                "a pattern longer than {MAX_PROGRAM} steps once its quantifiers are expanded"
            )));
        }
        self.prog.push(i);
        Ok(self.prog.len() - 1)
    }

    fn symbol(&mut self, s: &MatchRecognizeSymbol, excluded: bool) -> Result<(), MatchError> {
        match s {
            MatchRecognizeSymbol::Named(i) => {
                let symbol = self
                    .clause
                    .symbol_index(i)
                    .ok_or_else(|| MatchError::Invalid(format!("unknown symbol {i}")))?;
                self.emit(Inst::Sym { symbol, excluded })?;
            }
            MatchRecognizeSymbol::Start => {
                self.emit(Inst::Start)?;
            }
            MatchRecognizeSymbol::End => {
                self.emit(Inst::End)?;
            }
        }
        Ok(())
    }

    fn compile(&mut self, p: &MatchRecognizePattern, excluded: bool) -> Result<(), MatchError> {
        use MatchRecognizePattern as P;
        match p {
            P::Symbol(s) => self.symbol(s, excluded),
            P::Exclude(s) => self.symbol(s, true),
            P::Permute(syms) => {
                // n! orders of n symbols each: refuse before listing more than the program
                // could hold (PERMUTE of 12 symbols would list 479 million).
                let size = (1..=syms.len())
                    .try_fold(syms.len(), |acc, k| acc.checked_mul(k))
                    .filter(|&n| self.prog.len().saturating_add(n) < MAX_PROGRAM);
                if size.is_none() {
                    return Err(MatchError::NotSupported(format!(
                        "PERMUTE of {} symbols (more than {MAX_PROGRAM} pattern steps)",
                        syms.len()
                    )));
                }
                let orders = permutations(syms.len());
                let alts: Vec<MatchRecognizePattern> = orders
                    .into_iter()
                    .map(|o| P::Concat(o.into_iter().map(|i| P::Symbol(syms[i].clone())).collect()))
                    .collect();
                self.compile(&P::Alternation(alts), excluded)
            }
            P::Concat(ps) => {
                let mut k = 0;
                while k < ps.len() {
                    let reluctant = ps.get(k + 1).is_some_and(is_reluctant_mark);
                    match (&ps[k], reluctant) {
                        (P::Repetition(p, q), true) => {
                            self.repetition(p, q, true, excluded)?;
                            k += 2;
                        }
                        (p, _) if is_reluctant_mark(p) => {
                            return Err(MatchError::Invalid(
                                "a reluctant ? must follow a quantifier".into(),
                            ));
                        }
                        (p, _) => {
                            self.compile(p, excluded)?;
                            k += 1;
                        }
                    }
                }
                Ok(())
            }
            P::Group(p) => self.compile(p, excluded),
            P::Alternation(ps) => {
                let mut jumps = vec![];
                for (k, p) in ps.iter().enumerate() {
                    if k + 1 < ps.len() {
                        let split = self.emit(Inst::Split(0, 0))?;
                        self.compile(p, excluded)?;
                        jumps.push(self.emit(Inst::Jmp(0))?);
                        let next = self.prog.len();
                        self.prog[split] = Inst::Split(split + 1, next);
                    } else {
                        self.compile(p, excluded)?;
                    }
                }
                let end = self.prog.len();
                for j in jumps {
                    self.prog[j] = Inst::Jmp(end);
                }
                Ok(())
            }
            P::Repetition(p, q) => self.repetition(p, q, false, excluded),
        }
    }

    /// `p` repeated by `q`: as many times as it can (greedy), or as few (reluctant).
    fn repetition(
        &mut self,
        p: &MatchRecognizePattern,
        q: &RepetitionQuantifier,
        reluctant: bool,
        excluded: bool,
    ) -> Result<(), MatchError> {
        // The preferred branch of a split first: the body (greedy) or past it (reluctant).
        let order = |body: usize, past: usize| {
            if reluctant {
                Inst::Split(past, body)
            } else {
                Inst::Split(body, past)
            }
        };
        let (min, max) = match q {
            RepetitionQuantifier::ZeroOrMore => (0, None),
            RepetitionQuantifier::OneOrMore => (1, None),
            RepetitionQuantifier::AtMostOne => (0, Some(1)),
            RepetitionQuantifier::Exactly(n) => (*n, Some(*n)),
            RepetitionQuantifier::AtLeast(n) => (*n, None),
            RepetitionQuantifier::AtMost(n) => (0, Some(*n)),
            RepetitionQuantifier::Range(a, b) => (*a, Some(*b)),
        };
        for _ in 0..min {
            self.compile(p, excluded)?;
        }
        match max {
            None => {
                // L: split(body, end); body; jmp L
                let split = self.emit(Inst::Split(0, 0))?;
                self.compile(p, excluded)?;
                self.emit(Inst::Jmp(split))?;
                let end = self.prog.len();
                self.prog[split] = order(split + 1, end);
            }
            Some(max) => {
                let mut splits = vec![];
                for _ in min..max {
                    splits.push(self.emit(Inst::Split(0, 0))?);
                    self.compile(p, excluded)?;
                }
                let end = self.prog.len();
                for s in splits {
                    self.prog[s] = order(s + 1, end);
                }
            }
        }
        Ok(())
    }
}

/// All orders of `n` items, lexicographic.
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = vec![];
    for first in 0..n {
        for rest in permutations(n - 1) {
            let mut o = vec![first];
            o.extend(rest.into_iter().map(|r| if r >= first { r + 1 } else { r }));
            out.push(o);
        }
    }
    out
}

/// The matcher over one partition's rows (each row's bit set of the symbols it meets).
struct Matcher<'a> {
    prog: &'a [Inst],
    rows: &'a [u64],
    /// (instruction, row) pairs explored in the current attempt: stamp per attempt.
    seen: Vec<u32>,
    stamp: u32,
    steps: &'a mut u64,
    /// Per symbol: its condition when it reads the match so far.
    dynamic: &'a [Option<define::Cond>],
    /// The leaf columns of those conditions (whole input).
    leaves: &'a [define::Column],
    /// The partition's first row in the input.
    base: usize,
    /// Symbol names (for `CLASSIFIER()` in DEFINE).
    names: &'a [String],
    /// The number the next match gets.
    number: i64,
}

/// A matched row: (row in the partition, symbol, excluded from output).
type Label = (usize, usize, bool);

impl Matcher<'_> {
    /// The preferred match starting at row `start`, as its labelled rows (possibly none).
    fn find(&mut self, start: usize) -> Result<Option<Vec<Label>>, MatchError> {
        let n = self.rows.len();
        let width = n + 1;
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.seen.iter_mut().for_each(|s| *s = 0);
            self.stamp = 1;
        }
        // An (instruction, row) pair explored once fails the same way again, unless a
        // condition reads the match so far: then only cycles that consume no row are cut
        // (more instructions than the program has without consuming a row).
        let memo = self.dynamic.iter().all(Option::is_none);
        let mut path: Vec<Label> = vec![];
        // (instruction, row, path length, instructions since a row was consumed)
        let mut stack: Vec<(usize, usize, usize, usize)> = vec![(0, start, 0, 0)];
        while let Some((mut pc, mut pos, len, mut idle)) = stack.pop() {
            path.truncate(len);
            loop {
                *self.steps += 1;
                if *self.steps > STEP_BUDGET {
                    return Err(MatchError::TooComplex);
                }
                if memo {
                    let slot = pc * width + pos;
                    if self.seen[slot] == self.stamp {
                        break;
                    }
                    self.seen[slot] = self.stamp;
                } else {
                    idle += 1;
                    if idle > self.prog.len() {
                        break;
                    }
                }
                match self.prog[pc] {
                    Inst::Match => return Ok(Some(path)),
                    Inst::Sym { symbol, excluded } => {
                        if pos < n
                            && self.rows[pos] & (1 << symbol) != 0
                            && self.holds(symbol, &path, pos)?
                        {
                            path.push((pos, symbol, excluded));
                            pc += 1;
                            pos += 1;
                            idle = 0;
                        } else {
                            break;
                        }
                    }
                    Inst::Start if pos == 0 => pc += 1,
                    Inst::End if pos == n => pc += 1,
                    Inst::Start | Inst::End => break,
                    Inst::Jmp(t) => pc = t,
                    Inst::Split(a, b) => {
                        stack.push((b, pos, path.len(), idle));
                        pc = a;
                    }
                }
            }
        }
        Ok(None)
    }

    /// Does row `pos` meet `symbol`'s condition, when that reads the match so far?
    fn holds(&mut self, symbol: usize, path: &[Label], pos: usize) -> Result<bool, MatchError> {
        let Some(Some(cond)) = self.dynamic.get(symbol) else {
            return Ok(true);
        };
        // Reading the match walks the path: count it against the budget.
        *self.steps += path.len() as u64;
        let at = define::At {
            path,
            row: pos,
            symbol,
            len: self.rows.len(),
            base: self.base,
            names: self.names,
            number: self.number,
        };
        define::holds(cond, self.leaves, &at)
    }
}

/// A measure's building block, computed from a match's rows.
#[derive(Debug, Clone, PartialEq)]
enum Prim {
    /// A column at a row of the match: the `n`-th from the first (`from_first`) or the
    /// last row of the symbol (all rows for `None`), moved `shift` rows (PREV/NEXT).
    At {
        from_first: bool,
        symbol: Option<usize>,
        n: usize,
        shift: i64,
        column: usize,
    },
    Count(Option<usize>, Option<usize>),
    Sum(Option<usize>, usize),
    Avg(Option<usize>, usize),
    Min(Option<usize>, usize),
    Max(Option<usize>, usize),
    ArrayAgg(Option<usize>, usize),
    Classifier,
    MatchNumber,
}

/// One match: partition offset, its number, and its labelled rows; or (with `unmatched`)
/// a row in no match, which gets NULL measures.
struct Found {
    base: usize,
    /// Rows in the partition.
    len: usize,
    number: i64,
    labels: Vec<Label>,
    /// The row (in the partition) the match started at.
    start: usize,
    unmatched: bool,
}

/// Run a clause over its evaluated input; returns the replacement table and the derived
/// table that reads it.
pub fn run(
    clause: &Clause,
    input: &[RecordBatch],
    schema: Arc<Schema>,
    table_name: &str,
) -> Result<(RecordBatch, TableFactor), DataFusionError> {
    let batch = concat_batches(&schema, input)?;
    let n_symbols = clause.symbols.len();
    // Input columns (without the helper columns).
    let helper = |name: &str| {
        name.starts_with("__mr_def_")
            || name.starts_with("__mr_part_")
            || name.starts_with("__mr_dyn_")
    };
    let input_cols: Vec<usize> = (0..batch.num_columns())
        .filter(|&i| !helper(schema.field(i).name()))
        .collect();
    let column = |name: &str| -> Result<usize, DataFusionError> {
        input_cols
            .iter()
            .copied()
            .find(|&i| schema.field(i).name() == name)
            .or_else(|| {
                input_cols
                    .iter()
                    .copied()
                    .find(|&i| schema.field(i).name().eq_ignore_ascii_case(name))
            })
            .ok_or_else(|| {
                DataFusionError::External(Box::new(MatchError::UnknownColumn(name.into())))
            })
    };
    // Each row's symbols.
    let mut defs: Vec<Option<BooleanArray>> = vec![None; n_symbols];
    for (k, d) in defs.iter_mut().enumerate() {
        if let Ok(i) = schema.index_of(&format!("__mr_def_{k}")) {
            let c = cast(batch.column(i), &DataType::Boolean)?;
            *d = Some(c.as_boolean().clone());
        }
    }
    let names: Vec<String> = clause
        .symbols
        .iter()
        .map(|(s, _)| s.value.clone())
        .collect();
    let leaves: Vec<define::Column> = (0..clause.leaves.len())
        .map(|j| {
            let i = schema.index_of(&format!("__mr_dyn_{j}"))?;
            define::Column::new(batch.column(i)).map_err(|e| DataFusionError::External(Box::new(e)))
        })
        .collect::<Result<_, _>>()?;
    let rows: Vec<u64> = (0..batch.num_rows())
        .map(|r| {
            defs.iter().enumerate().fold(0u64, |m, (k, d)| match d {
                Some(b) if b.is_valid(r) && b.value(r) => m | (1 << k),
                Some(_) => m,
                None => m | (1 << k),
            })
        })
        .collect();
    // Partitions.
    let part_cols: Vec<ArrayRef> = (0..clause.partition_by.len())
        .map(|k| {
            schema
                .index_of(&format!("__mr_part_{k}"))
                .map(|i| batch.column(i).clone())
        })
        .collect::<Result<_, _>>()?;
    let ranges: Vec<std::ops::Range<usize>> = if part_cols.is_empty() || batch.num_rows() == 0 {
        std::iter::once(0..batch.num_rows()).collect()
    } else {
        datafusion::arrow::compute::partition(&part_cols)?.ranges()
    };
    // Program.
    let mut compiler = Compiler {
        clause,
        prog: vec![],
    };
    compiler
        .compile(&clause.pattern, false)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    compiler
        .emit(Inst::Match)
        .map_err(|e| DataFusionError::External(Box::new(e)))?;
    let prog = compiler.prog;
    // Matches.
    let mut steps = 0u64;
    let mut found: Vec<Found> = vec![];
    for range in &ranges {
        let part = &rows[range.clone()];
        let mut m = Matcher {
            prog: &prog,
            rows: part,
            seen: vec![0; prog.len() * (part.len() + 1)],
            stamp: 0,
            steps: &mut steps,
            dynamic: &clause.dynamic,
            leaves: &leaves,
            base: range.start,
            names: &names,
            number: 1,
        };
        let mut number = 0i64;
        let mut start = 0usize;
        while start < part.len() {
            let labels = m
                .find(start)
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            let Some(labels) = labels else {
                start += 1;
                continue;
            };
            number += 1;
            m.number = number + 1;
            let next = match &clause.skip {
                AfterMatchSkip::PastLastRow => labels.last().map_or(start + 1, |l| l.0 + 1),
                AfterMatchSkip::ToNextRow => start + 1,
                AfterMatchSkip::ToFirst(s) | AfterMatchSkip::ToLast(s) => {
                    let k = clause.symbol_index(s).ok_or_else(|| {
                        DataFusionError::Plan(format!("MATCH_RECOGNIZE: unknown symbol {s}"))
                    })?;
                    let mut rows_of = labels.iter().filter(|l| l.1 == k).map(|l| l.0);
                    let target = if matches!(clause.skip, AfterMatchSkip::ToFirst(_)) {
                        rows_of.next()
                    } else {
                        rows_of.next_back()
                    };
                    match target {
                        Some(t) if t > start => t,
                        _ => {
                            return Err(DataFusionError::External(Box::new(MatchError::Data(
                                format!(
                                    "AFTER MATCH SKIP TO {s} would not move past the start of \
                                     match {number}"
                                ),
                            ))));
                        }
                    }
                }
            };
            found.push(Found {
                base: range.start,
                len: range.len(),
                number,
                labels,
                start,
                unmatched: false,
            });
            start = next;
        }
        if clause.unmatched {
            // The partition's rows that no match covers.
            let from = found
                .iter()
                .position(|f| f.base == range.start)
                .unwrap_or(found.len());
            let mut covered = vec![false; part.len()];
            for f in &found[from..] {
                for l in &f.labels {
                    covered[l.0] = true;
                }
                // An empty match is shown at its row, which is then not unmatched.
                if f.labels.is_empty() {
                    covered[f.start] = true;
                }
            }
            for (row, c) in covered.into_iter().enumerate() {
                if !c {
                    found.push(Found {
                        base: range.start,
                        len: range.len(),
                        number: 0,
                        labels: vec![],
                        start: row,
                        unmatched: true,
                    });
                }
            }
        }
    }
    // Measures: building blocks become hidden columns, the expressions read them.
    let mut prims: Vec<Prim> = vec![];
    let mut measure_sql: Vec<String> = vec![];
    for m in &clause.measures {
        let mut e = m.expr.clone();
        let mut v = Prims {
            clause,
            column: &column,
            prims: &mut prims,
            error: None,
        };
        let _ = e.visit(&mut v);
        if let Some(err) = v.error {
            return Err(err);
        }
        measure_sql.push(format!("{e} AS {}", m.alias));
    }
    // Output rows: one per match, or one per matched (not excluded) row with its prefix.
    let mut out_rows: Vec<(usize, usize)> = vec![]; // (match, labels prefix length)
    for (k, f) in found.iter().enumerate() {
        if clause.all_rows {
            if f.labels.is_empty() && (f.unmatched || clause.show_empty) {
                // An empty match or an unmatched row: its starting row, once.
                out_rows.push((k, 0));
            }
            for (i, l) in f.labels.iter().enumerate() {
                if !l.2 {
                    out_rows.push((k, i + 1));
                }
            }
        } else {
            out_rows.push((k, f.labels.len()));
        }
    }
    let mut fields: Vec<Field> = vec![];
    let mut columns: Vec<ArrayRef> = vec![];
    let mut select: Vec<String> = vec![];
    if clause.all_rows {
        let idx: UInt32Array = out_rows
            .iter()
            .map(|(k, len)| {
                let f = &found[*k];
                let row = match len {
                    0 => f.start,
                    _ => f.labels[len - 1].0,
                };
                Some((f.base + row) as u32)
            })
            .collect();
        for &c in &input_cols {
            fields.push(schema.field(c).clone());
            columns.push(take(batch.column(c), &idx, None)?);
            select.push(quote(schema.field(c).name()));
        }
    } else {
        for p in &clause.partition_by {
            let name = column_name(p).unwrap_or_default();
            let c = column(&name)?;
            let idx: UInt32Array = out_rows
                .iter()
                .map(|(k, _)| {
                    let f = &found[*k];
                    // The partition's first row carries its key even for an empty match.
                    Some(f.base as u32)
                })
                .collect();
            fields.push(schema.field(c).clone());
            columns.push(take(batch.column(c), &idx, None)?);
            select.push(quote(schema.field(c).name()));
        }
    }
    for (j, p) in prims.iter().enumerate() {
        let (field, array) = prim_column(p, j, &found, &out_rows, &batch, clause)?;
        fields.push(field);
        columns.push(array);
    }
    let out_schema = Arc::new(Schema::new(fields));
    let out = RecordBatch::try_new(out_schema, columns)?;
    select.extend(measure_sql);
    let alias = match &clause.alias {
        None => "match_recognize".to_string(),
        Some(a) if a.columns.is_empty() => a.name.to_string(),
        Some(a) => format!(
            "{} ({})",
            a.name,
            a.columns
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let sql = format!(
        "SELECT * FROM (SELECT {} FROM {TEMP_CATALOG}.{TEMP_SCHEMA}.{table_name}) AS {alias}",
        if select.is_empty() {
            "1 AS matched".to_string()
        } else {
            select.join(", ")
        }
    );
    let derived = derived_table(&sql)?;
    Ok((out, derived))
}

fn derived_table(sql: &str) -> Result<TableFactor, DataFusionError> {
    let stmts = parse(sql).map_err(DataFusionError::Plan)?;
    let Some(Statement::Query(q)) = stmts.into_iter().next() else {
        return Err(DataFusionError::Internal("MATCH_RECOGNIZE rewrite".into()));
    };
    match *q.body {
        ast::SetExpr::Select(s) => s
            .from
            .into_iter()
            .next()
            .map(|t| t.relation)
            .ok_or_else(|| DataFusionError::Internal("MATCH_RECOGNIZE rewrite".into())),
        _ => Err(DataFusionError::Internal("MATCH_RECOGNIZE rewrite".into())),
    }
}

/// A function call's positional arguments (`None` when it has named or subquery ones).
fn positional_args(f: &Function) -> Option<Vec<&FunctionArgExpr>> {
    match &f.args {
        FunctionArguments::List(l) => l
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(e) => Some(e),
                _ => None,
            })
            .collect(),
        FunctionArguments::None => Some(vec![]),
        FunctionArguments::Subquery(_) => None,
    }
}

/// Replaces measure building blocks in an expression with hidden columns `__mr_m{k}`.
struct Prims<'a, F: Fn(&str) -> Result<usize, DataFusionError>> {
    clause: &'a Clause,
    column: &'a F,
    prims: &'a mut Vec<Prim>,
    error: Option<DataFusionError>,
}

impl<F: Fn(&str) -> Result<usize, DataFusionError>> Prims<'_, F> {
    /// (symbol, column) of an argument `A.x`, `x`, `A.*` or `*` (column None).
    fn target(
        &self,
        e: &FunctionArgExpr,
    ) -> Result<(Option<usize>, Option<usize>), DataFusionError> {
        let bad = || {
            DataFusionError::Plan(format!(
                "MATCH_RECOGNIZE: measure argument {e} must be a column, symbol.column or symbol.*"
            ))
        };
        match e {
            FunctionArgExpr::Wildcard => Ok((None, None)),
            FunctionArgExpr::QualifiedWildcard(n) => {
                let i = n.0.first().and_then(|p| p.as_ident()).ok_or_else(bad)?;
                Ok((Some(self.clause.symbol_index(i).ok_or_else(bad)?), None))
            }
            FunctionArgExpr::Expr(Expr::Identifier(i)) => Ok((None, Some((self.column)(&key(i))?))),
            FunctionArgExpr::Expr(Expr::CompoundIdentifier(p)) if p.len() == 2 => {
                match self.clause.symbol_index(&p[0]) {
                    Some(s) => Ok((Some(s), Some((self.column)(&key(&p[1]))?))),
                    None => Ok((None, Some((self.column)(&key(&p[1]))?))),
                }
            }
            _ => Err(bad()),
        }
    }

    fn prim(&mut self, e: &Expr) -> Result<Option<Prim>, DataFusionError> {
        match e {
            Expr::Identifier(i) if !i.value.starts_with("__mr_m") => {
                Ok(Some(Prim::last(None, (self.column)(&key(i))?)))
            }
            Expr::CompoundIdentifier(p) if p.len() == 2 => {
                let col = (self.column)(&key(&p[1]))?;
                Ok(Some(Prim::last(self.clause.symbol_index(&p[0]), col)))
            }
            Expr::Function(f) => self.function(f),
            _ => Ok(None),
        }
    }

    fn function(&mut self, f: &Function) -> Result<Option<Prim>, DataFusionError> {
        let name = f.name.to_string().to_ascii_lowercase();
        let Some(args) = positional_args(f) else {
            return Err(DataFusionError::Plan(format!(
                "MATCH_RECOGNIZE: named or subquery arguments in {name}"
            )));
        };
        let one = |this: &Self| -> Result<(Option<usize>, usize), DataFusionError> {
            match args.as_slice() {
                [a] => match this.target(a)? {
                    (s, Some(c)) => Ok((s, c)),
                    _ => Err(DataFusionError::Plan(format!(
                        "MATCH_RECOGNIZE: {name} needs a column"
                    ))),
                },
                _ => Err(DataFusionError::Plan(format!(
                    "MATCH_RECOGNIZE: {name} takes one argument here"
                ))),
            }
        };
        Ok(Some(match name.as_str() {
            "first" | "last" | "prev" | "next" => self.navigation(&name, &args)?,
            "count" => match args.as_slice() {
                [a] => {
                    let (s, c) = self.target(a)?;
                    Prim::Count(s, c)
                }
                _ => return Ok(None),
            },
            "sum" => {
                let (s, c) = one(self)?;
                Prim::Sum(s, c)
            }
            "avg" => {
                let (s, c) = one(self)?;
                Prim::Avg(s, c)
            }
            "min" => {
                let (s, c) = one(self)?;
                Prim::Min(s, c)
            }
            "max" => {
                let (s, c) = one(self)?;
                Prim::Max(s, c)
            }
            "array_agg" => {
                let (s, c) = one(self)?;
                Prim::ArrayAgg(s, c)
            }
            "classifier" => Prim::Classifier,
            "match_number" => Prim::MatchNumber,
            _ => return Ok(None),
        }))
    }
}

impl<F: Fn(&str) -> Result<usize, DataFusionError>> Prims<'_, F> {
    /// `FIRST`/`LAST(col [, n])`, and `PREV`/`NEXT` of a column or of those (`[, n]`).
    fn navigation(&self, name: &str, args: &[&FunctionArgExpr]) -> Result<Prim, DataFusionError> {
        let usage = || {
            DataFusionError::Plan(format!(
                "MATCH_RECOGNIZE: {} takes a column (or FIRST/LAST of one for PREV/NEXT) and an \
                 optional non-negative integer offset",
                name.to_uppercase()
            ))
        };
        let n = match args.get(1) {
            None => usize::from(matches!(name, "prev" | "next")),
            Some(e) => define::offset(e).ok_or_else(usage)?,
        };
        if args.is_empty() || args.len() > 2 {
            return Err(usage());
        }
        match name {
            "first" | "last" => match self.target(args[0])? {
                (symbol, Some(column)) => Ok(Prim::At {
                    from_first: name == "first",
                    symbol,
                    n,
                    shift: 0,
                    column,
                }),
                _ => Err(usage()),
            },
            _ => {
                let inner = match args[0] {
                    FunctionArgExpr::Expr(Expr::Function(g)) => {
                        let g_name = g.name.to_string().to_ascii_lowercase();
                        if !matches!(g_name.as_str(), "first" | "last") {
                            return Err(usage());
                        }
                        self.navigation(&g_name, &positional_args(g).ok_or_else(usage)?)?
                    }
                    e => self.navigation("last", &[e])?,
                };
                let Prim::At {
                    from_first,
                    symbol,
                    n: k,
                    shift,
                    column,
                } = inner
                else {
                    return Err(usage());
                };
                let by = if name == "prev" {
                    -(n as i64)
                } else {
                    n as i64
                };
                Ok(Prim::At {
                    from_first,
                    symbol,
                    n: k,
                    shift: shift + by,
                    column,
                })
            }
        }
    }
}

impl Prim {
    /// The last row's `column` (of `symbol`).
    fn last(symbol: Option<usize>, column: usize) -> Prim {
        Prim::At {
            from_first: false,
            symbol,
            n: 0,
            shift: 0,
            column,
        }
    }
}

impl<F: Fn(&str) -> Result<usize, DataFusionError>> VisitorMut for Prims<'_, F> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
        match self.prim(e) {
            Ok(Some(p)) => {
                let k = match self.prims.iter().position(|q| *q == p) {
                    Some(k) => k,
                    None => {
                        self.prims.push(p);
                        self.prims.len() - 1
                    }
                };
                *e = Expr::Identifier(Ident::new(format!("__mr_m{k}")));
                ControlFlow::Continue(())
            }
            Ok(None) => ControlFlow::Continue(()),
            Err(err) => {
                self.error = Some(err);
                ControlFlow::Break(())
            }
        }
    }
}

/// The hidden column of building block `p` for the output rows.
fn prim_column(
    p: &Prim,
    j: usize,
    found: &[Found],
    out_rows: &[(usize, usize)],
    batch: &RecordBatch,
    clause: &Clause,
) -> Result<(Field, ArrayRef), DataFusionError> {
    let name = format!("__mr_m{j}");
    // The absolute rows of a match prefix that belong to symbol `s` (all rows for None).
    let rows_of = |k: usize, len: usize, s: Option<usize>| -> Vec<u32> {
        let f = &found[k];
        f.labels[..len]
            .iter()
            .filter(|l| s.is_none_or(|s| l.1 == s))
            .map(|l| (f.base + l.0) as u32)
            .collect()
    };
    let pick = |choose: &dyn Fn(&[u32]) -> Option<u32>, s: Option<usize>, c: usize| {
        let idx: UInt32Array = out_rows
            .iter()
            .map(|(k, len)| choose(&rows_of(*k, *len, s)))
            .collect();
        let col = batch.column(c);
        Ok::<_, DataFusionError>((
            Field::new(&name, col.data_type().clone(), true),
            take(col, &idx, None)?,
        ))
    };
    let floats = |c: usize| -> Result<Float64Array, DataFusionError> {
        Ok(cast(batch.column(c), &DataType::Float64)?
            .as_primitive()
            .clone())
    };
    match p {
        Prim::At {
            from_first,
            symbol,
            n,
            shift,
            column,
        } => {
            let idx: UInt32Array = out_rows
                .iter()
                .map(|(k, len)| {
                    let f = &found[*k];
                    let mut rows = f.labels[..*len]
                        .iter()
                        .filter(|l| symbol.is_none_or(|s| l.1 == s))
                        .map(|l| l.0);
                    let r = if *from_first {
                        rows.nth(*n)
                    } else {
                        rows.rev().nth(*n)
                    }? as i64
                        + shift;
                    // PREV/NEXT reach rows outside the match, not outside the partition.
                    (0..f.len as i64)
                        .contains(&r)
                        .then(|| (f.base + r as usize) as u32)
                })
                .collect();
            let col = batch.column(*column);
            Ok((
                Field::new(&name, col.data_type().clone(), true),
                take(col, &idx, None)?,
            ))
        }
        Prim::Min(s, c) | Prim::Max(s, c) => {
            let col = batch.column(*c);
            let want_max = matches!(p, Prim::Max(..));
            let choose = |r: &[u32]| -> Option<u32> {
                let mut best: Option<(u32, ScalarValue)> = None;
                for &i in r {
                    let v = ScalarValue::try_from_array(col, i as usize).ok()?;
                    if v.is_null() {
                        continue;
                    }
                    let better = match &best {
                        None => true,
                        Some((_, b)) => match v.partial_cmp(b) {
                            Some(std::cmp::Ordering::Greater) => want_max,
                            Some(std::cmp::Ordering::Less) => !want_max,
                            _ => false,
                        },
                    };
                    if better {
                        best = Some((i, v));
                    }
                }
                best.map(|b| b.0)
            };
            pick(&choose, *s, *c)
        }
        Prim::Count(s, c) => {
            let counts: Int64Array = out_rows
                .iter()
                .map(|(k, len)| {
                    if found[*k].unmatched {
                        return None;
                    }
                    let r = rows_of(*k, *len, *s);
                    Some(match c {
                        None => r.len() as i64,
                        Some(c) => r
                            .iter()
                            .filter(|&&i| batch.column(*c).is_valid(i as usize))
                            .count() as i64,
                    })
                })
                .collect();
            Ok((Field::new(&name, DataType::Int64, true), Arc::new(counts)))
        }
        Prim::Sum(s, c) | Prim::Avg(s, c) => {
            let f = floats(*c)?;
            let avg = matches!(p, Prim::Avg(..));
            let out: Float64Array = out_rows
                .iter()
                .map(|(k, len)| {
                    let vals: Vec<f64> = rows_of(*k, *len, *s)
                        .iter()
                        .filter(|&&i| f.is_valid(i as usize))
                        .map(|&i| f.value(i as usize))
                        .collect();
                    if vals.is_empty() {
                        None
                    } else if avg {
                        Some(vals.iter().sum::<f64>() / vals.len() as f64)
                    } else {
                        Some(vals.iter().sum())
                    }
                })
                .collect();
            Ok((Field::new(&name, DataType::Float64, true), Arc::new(out)))
        }
        Prim::ArrayAgg(s, c) => {
            let mut flat: Vec<u32> = vec![];
            let mut lengths = vec![];
            for (k, len) in out_rows {
                let r = rows_of(*k, *len, *s);
                lengths.push(r.len());
                flat.extend(r);
            }
            let col = batch.column(*c);
            let values = take(col, &UInt32Array::from(flat), None)?;
            let item = Arc::new(Field::new_list_field(col.data_type().clone(), true));
            let valid: Vec<bool> = out_rows.iter().map(|(k, _)| !found[*k].unmatched).collect();
            let list = ListArray::try_new(
                item.clone(),
                OffsetBuffer::from_lengths(lengths),
                values,
                Some(valid.into()),
            )?;
            Ok((
                Field::new(&name, DataType::List(item), true),
                Arc::new(list),
            ))
        }
        Prim::Classifier => {
            let out: StringArray = out_rows
                .iter()
                .map(|(k, len)| {
                    let f = &found[*k];
                    f.labels[..*len]
                        .last()
                        .map(|l| clause.symbols[l.1].0.value.clone())
                })
                .collect();
            Ok((Field::new(&name, DataType::Utf8, true), Arc::new(out)))
        }
        Prim::MatchNumber => {
            let out: Int64Array = out_rows
                .iter()
                .map(|(k, _)| (!found[*k].unmatched).then_some(found[*k].number))
                .collect();
            Ok((Field::new(&name, DataType::Int64, true), Arc::new(out)))
        }
    }
}

/// A temporary table for one statement's matches, registered until it is dropped.
pub struct TempTable {
    schema: Arc<dyn datafusion::catalog::SchemaProvider>,
    name: String,
}

impl TempTable {
    /// Register `batch` as `touchlake_temp.match_recognize.<name>`.
    pub fn register(
        ctx: &datafusion::prelude::SessionContext,
        name: String,
        batch: RecordBatch,
    ) -> Result<TempTable, DataFusionError> {
        let schema = temp_schema(ctx);
        let table = MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        schema.register_table(name.clone(), Arc::new(table))?;
        Ok(TempTable { schema, name })
    }
}

impl Drop for TempTable {
    fn drop(&mut self) {
        let _ = self.schema.deregister_table(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reluctant_marks_only_quantifiers_in_the_pattern() {
        let m = |s: &str| mark_reluctant(s).replace(RELUCTANT, "R");
        assert_eq!(
            m(
                "SELECT '?' FROM t MATCH_RECOGNIZE (ORDER BY x PATTERN (A*? B+? C?? D{1,2}? E? ({- F -})) DEFINE A AS y = '?')"
            ),
            "SELECT '?' FROM t MATCH_RECOGNIZE (ORDER BY x PATTERN (A* R  B+ R  C? R  D{1,2} R  E? ({- F -})) DEFINE A AS y = '?')"
        );
        assert_eq!(
            m("PATTERN(A)  pattern_x (B*?)"),
            "PATTERN(A)  pattern_x (B*?)"
        );
    }

    #[test]
    fn subquery_inputs_are_lifted_outermost_first() {
        let (text, inputs) = lift_subquery_inputs(
            "SELECT ')' FROM (SELECT * FROM (SELECT 1) AS a MATCH_RECOGNIZE (PATTERN (A))) b \
             MATCH_RECOGNIZE (PATTERN (B)), (SELECT 2) AS \"q\" match_recognize (PATTERN (C)), \
             t MATCH_RECOGNIZE (PATTERN (D)), f(x) MATCH_RECOGNIZE (PATTERN (E))",
        );
        assert_eq!(
            text,
            "SELECT ')' FROM __touchlake_mr_input_0 b MATCH_RECOGNIZE (PATTERN (B)), \
             __touchlake_mr_input_1 AS \"q\" match_recognize (PATTERN (C)), t MATCH_RECOGNIZE \
             (PATTERN (D)), f(x) MATCH_RECOGNIZE (PATTERN (E))"
        );
        assert_eq!(
            inputs,
            vec![
                "SELECT * FROM (SELECT 1) AS a MATCH_RECOGNIZE (PATTERN (A))".to_string(),
                "SELECT 2".to_string()
            ]
        );
        let (text, inputs) = lift_subquery_inputs("SELECT '(SELECT 1) MATCH_RECOGNIZE' FROM t");
        assert_eq!(text, "SELECT '(SELECT 1) MATCH_RECOGNIZE' FROM t");
        assert!(inputs.is_empty());
    }

    fn program(pattern: &str, symbols: &[&str]) -> (Clause, Vec<Inst>) {
        let sql = format!(
            "SELECT * FROM t MATCH_RECOGNIZE (ORDER BY x PATTERN ({pattern}) DEFINE {})",
            symbols
                .iter()
                .map(|s| format!("{s} AS x > 0"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut stmt = parse(&sql).expect("parse").remove(0);
        let clause = Clause::new(clauses(&mut stmt).remove(0)).expect("clause");
        let mut c = Compiler {
            clause: &clause,
            prog: vec![],
        };
        c.compile(&clause.pattern, false).expect("compile");
        c.emit(Inst::Match).expect("emit");
        let prog = c.prog;
        (clause, prog)
    }

    fn find(prog: &[Inst], rows: &[u64], start: usize) -> Option<Vec<(usize, usize)>> {
        let mut steps = 0;
        let mut m = Matcher {
            prog,
            rows,
            seen: vec![0; prog.len() * (rows.len() + 1)],
            stamp: 0,
            steps: &mut steps,
            dynamic: &[],
            leaves: &[],
            base: 0,
            names: &[],
            number: 1,
        };
        m.find(start)
            .expect("match")
            .map(|l| l.into_iter().map(|x| (x.0, x.1)).collect())
    }

    #[test]
    fn greedy_backtracking_and_alternation() {
        // A B* C over A B B C: greedy B* takes both Bs.
        let (_, prog) = program("A B* C", &["A", "B", "C"]);
        let rows = [1, 2, 2, 4];
        assert_eq!(
            find(&prog, &rows, 0),
            Some(vec![(0, 0), (1, 1), (2, 1), (3, 2)])
        );
        // A B+ B: backtracks one B.
        let (_, prog) = program("A B+ B", &["A", "B"]);
        assert_eq!(
            find(&prog, &[1, 2, 2], 0),
            Some(vec![(0, 0), (1, 1), (2, 1)])
        );
        // Alternatives in order; {2,3} bounds.
        let (_, prog) = program("(A | B){2,3}", &["A", "B"]);
        assert_eq!(find(&prog, &[3, 3, 3, 3], 0).map(|m| m.len()), Some(3));
        assert_eq!(find(&prog, &[1, 4], 0), None);
    }

    #[test]
    fn pathological_patterns_stay_polynomial() {
        // (A*)* B over 200 As and no B: exponential for naive backtracking.
        let (_, prog) = program("(A*)* B", &["A", "B"]);
        let rows = vec![1u64; 200];
        assert_eq!(find(&prog, &rows, 0), None);
    }

    #[test]
    fn permute_lists_orders() {
        assert_eq!(permutations(3).len(), 6);
        assert_eq!(permutations(2), vec![vec![0, 1], vec![1, 0]]);
        // 12 symbols (479 million orders) is past the program limit: refused before the
        // orders are listed (as vectors, about 46 GB), as 0A000; 6 compiles.
        let syms = ["A", "B", "C", "D", "E", "F", "G", "H", "I", "J", "K", "L"];
        let sql = format!(
            "SELECT * FROM t MATCH_RECOGNIZE (ORDER BY x PATTERN (PERMUTE({})) DEFINE A AS x > 0)",
            syms.join(", ")
        );
        let mut stmt = parse(&sql).expect("parse").remove(0);
        let clause = Clause::new(clauses(&mut stmt).remove(0)).expect("clause");
        let mut c = Compiler {
            clause: &clause,
            prog: vec![],
        };
        assert!(matches!(
            c.compile(&clause.pattern, false),
            Err(MatchError::NotSupported(_))
        ));
        let (_, prog) = program("PERMUTE(A, B, C, D, E, F)", &["A"]);
        assert!(prog.len() > 720);
    }
}
