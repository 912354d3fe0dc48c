//! SQL rewrites for PostgreSQL syntax that DataFusion does not plan (yet). Each says why
//! it exists and when it can go.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments,
    GroupByExpr, Ident, JoinOperator, ObjectName, ObjectNamePart, SelectItem, SetExpr, Statement,
    TableFactor, Value, visit_expressions_mut,
};

/// Apply every rewrite to a parsed statement.
pub fn rewrite(stmt: &mut Statement) {
    let _ = visit_expressions_mut(stmt, |e| {
        like_escape(e);
        empty_catalog_subquery(e);
        aggregate_scalar_subquery(e);
        ControlFlow::<()>::Continue(())
    });
}

/// `x LIKE p ESCAPE '/'` → `x LIKE pg_like_escape(p, '/')` (SQLAlchemy's inspector sends
/// it). Remove when DataFusion's LIKE accepts escape characters other than backslash.
fn like_escape(e: &mut Expr) {
    let (Expr::Like {
        pattern,
        escape_char,
        ..
    }
    | Expr::ILike {
        pattern,
        escape_char,
        ..
    }) = e
    else {
        return;
    };
    let Some(esc) = escape_char.take() else {
        return;
    };
    let esc_text = match &esc.value {
        Value::SingleQuotedString(s) => s.clone(),
        other => other.to_string(),
    };
    if esc_text == "\\" {
        *escape_char = Some(esc);
        return;
    }
    let call = Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(
            "pg_like_escape",
        ))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: vec![
                FunctionArg::Unnamed(FunctionArgExpr::Expr((**pattern).clone())),
                FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::value(
                    Value::SingleQuotedString(esc_text),
                ))),
            ],
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    });
    **pattern = call;
}

const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
];

fn call(name: &str, arg: Expr) -> Expr {
    Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))],
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// A scalar subquery with a WHERE clause and one plain output, `(SELECT x FROM t WHERE
/// t.k = outer.k)`, becomes `(SELECT max(x) …)`: the same answer when at most one row
/// matches (PostgreSQL's requirement; with more rows PostgreSQL errors where this returns
/// the largest). Catalog queries of SQLAlchemy, DBeaver and pgjdbc use this shape.
/// Remove when DataFusion plans non-aggregated correlated scalar subqueries.
fn aggregate_scalar_subquery(e: &mut Expr) {
    let Expr::Subquery(q) = e else { return };
    if q.limit_clause.is_some() || q.order_by.is_some() {
        return;
    }
    let SetExpr::Select(sel) = q.body.as_mut() else {
        return;
    };
    if sel.selection.is_none()
        || sel.having.is_some()
        || sel.distinct.is_some()
        || sel.projection.len() != 1
    {
        return;
    }
    if !matches!(&sel.group_by, GroupByExpr::Expressions(g, _) if g.is_empty()) {
        return;
    }
    let (expr, alias) = match sel.projection[0].clone() {
        SelectItem::UnnamedExpr(x) => (x, None),
        SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
        _ => return,
    };
    if let Expr::Function(f) = &expr {
        let name = f.name.to_string().to_ascii_lowercase();
        if AGGREGATES.contains(&name.rsplit('.').next().unwrap_or_default()) {
            return;
        }
    }
    let wrapped = call("max", expr);
    sel.projection[0] = match alias {
        Some(alias) => SelectItem::ExprWithAlias {
            expr: wrapped,
            alias,
        },
        None => SelectItem::UnnamedExpr(wrapped),
    };
}

/// pg_catalog tables that are empty for every Touchlake lake, or whose rows never apply
/// to Touchlake columns: no column defaults, no sequences, no per-column collations.
const NEVER_MATCHING: &[&str] = &["pg_attrdef", "pg_sequence", "pg_collation"];

/// A scalar subquery that reads from one of [`NEVER_MATCHING`] (through inner joins only)
/// answers NULL; it is replaced by NULL before planning, since DataFusion cannot
/// decorrelate the shapes clients use there (SQLAlchemy's `get_columns`). Remove when
/// DataFusion decorrelates subqueries under CASE with non-equality correlation.
fn empty_catalog_subquery(e: &mut Expr) {
    let Expr::Subquery(q) = e else { return };
    let SetExpr::Select(sel) = q.body.as_ref() else {
        return;
    };
    let [from] = sel.from.as_slice() else { return };
    let TableFactor::Table { name, .. } = &from.relation else {
        return;
    };
    let table = name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase());
    let inner_only = from.joins.iter().all(|j| {
        matches!(
            j.join_operator,
            JoinOperator::Join(_) | JoinOperator::Inner(_)
        )
    });
    let counts = sel.projection.iter().any(|p| match p {
        SelectItem::UnnamedExpr(Expr::Function(f))
        | SelectItem::ExprWithAlias {
            expr: Expr::Function(f),
            ..
        } => f.name.to_string().to_ascii_lowercase().ends_with("count"),
        _ => false,
    });
    if inner_only && !counts && table.is_some_and(|t| NEVER_MATCHING.contains(&t.as_str())) {
        *e = Expr::value(Value::Null);
    }
}
