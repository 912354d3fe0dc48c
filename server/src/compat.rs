//! SQL rewrites for PostgreSQL syntax that DataFusion does not plan (yet). Each says why
//! it exists and when it can go.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments,
    GroupByExpr, Ident, JoinOperator, ObjectName, ObjectNamePart, SelectItem, SetExpr, Statement,
    TableFactor, Value, visit_expressions_mut, visit_relations,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_pg_catalog::sql::rules::{self, SqlStatementRewriteRule};

/// Parse a query string. Statements that read the system catalogs (psql, BI tools and
/// drivers introspecting) go through `datafusion-pg-catalog`'s compatibility parser with
/// all its rewrites; user statements get only the rewrites that keep their meaning — its
/// `RemoveSubqueryFromProjection` would answer a correlated subquery with NULL.
pub fn parse(
    catalog_parser: &PostgresCompatibilityParser,
    sql: &str,
) -> Result<Vec<Statement>, String> {
    // NPATH is sugar for MATCH_RECOGNIZE.
    let desugared;
    let sql = if crate::npath::mentions(sql) {
        desugared = crate::npath::rewrite(sql).map_err(|e| e.to_string())?;
        desugared.as_str()
    } else {
        sql
    };
    let dialect = PostgreSqlDialect {};
    let mut plain = Parser::parse_sql(&dialect, sql);
    // PostgreSQL's grammar has no MATCH_RECOGNIZE: such statements use the generic one.
    if plain.is_err() && crate::match_recognize::mentions(sql) {
        plain = Ok(crate::match_recognize::parse(sql)?);
    }
    let reads_catalog = match &plain {
        Ok(stmts) => stmts.iter().any(reads_system_catalog),
        Err(_) => true,
    };
    if reads_catalog {
        return catalog_parser.parse(sql).map_err(|e| e.to_string());
    }
    let rules: [&dyn SqlStatementRewriteRule; 10] = [
        &rules::AliasDuplicatedProjectionRewrite,
        &rules::ResolveUnqualifiedIdentifier,
        &rules::RewriteArrayAnyAllOperation,
        &rules::PrependUnqualifiedPgTableName,
        &rules::StripCallableQualifier,
        &rules::FixArrayLiteral,
        &rules::CurrentUserVariableToSessionUserFunctionCall,
        &rules::StripCollate,
        &rules::RewritePgCatalogOperator,
        &rules::FixVersionColumnName,
    ];
    let stmts = plain.map_err(|e| e.to_string())?;
    Ok(stmts
        .into_iter()
        .map(|s| rules.iter().fold(s, |s, r| r.rewrite(s)))
        .collect())
}

/// Does the statement read `pg_catalog` or `information_schema` (or a `pg_*` relation)?
fn reads_system_catalog(stmt: &Statement) -> bool {
    let mut found = false;
    let _ = visit_relations(stmt, |name: &ObjectName| {
        let parts: Vec<String> = name
            .0
            .iter()
            .filter_map(|p| p.as_ident())
            .map(|i| i.value.to_ascii_lowercase())
            .collect();
        if parts
            .iter()
            .any(|p| p == "pg_catalog" || p == "information_schema" || p.starts_with("pg_"))
        {
            found = true;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    });
    found
}

/// Apply every rewrite to a parsed statement.
pub fn rewrite(stmt: &mut Statement) {
    let _ = visit_expressions_mut(stmt, |e| {
        resolve_person(e);
        like_escape(e);
        array_subquery(e);
        missing_catalog_column(e);
        empty_catalog_subquery(e);
        aggregate_scalar_subquery(e);
        ControlFlow::<()>::Continue(())
    });
}

/// `resolve_person(type, value [, region])`: the person of an identifier as of the latest
/// identity run, as a scalar subquery over `unified.identities`. The value is normalized
/// as ingest does (`phone_e164` with `region`, default `CN`; `email_canonical`; `id_clean`),
/// so `resolve_person('phone', '138 0013 8000')` finds `+8613800138000`. NULL when the
/// identifier is unknown or blocked. A rewrite rather than a function because it reads
/// the lake; it stays one.
fn resolve_person(e: &mut Expr) {
    let Expr::Function(f) = e else { return };
    if !f.name.to_string().eq_ignore_ascii_case("resolve_person") {
        return;
    }
    let FunctionArguments::List(list) = &f.args else {
        return;
    };
    let args: Vec<String> = list
        .args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Some(x.to_string()),
            _ => None,
        })
        .collect();
    if args.len() != list.args.len() || !(2..=3).contains(&args.len()) {
        return; // planned as is: DataFusion reports the unknown signature
    }
    let (t, v) = (&args[0], &args[1]);
    let region = args.get(2).cloned().unwrap_or_else(|| "'CN'".to_string());
    let sql = format!(
        "(SELECT max(person_id) FROM unified.identities WHERE identifier_type = ({t}) \
         AND identifier_value = coalesce(id_clean(({t}), CASE ({t}) WHEN 'phone' THEN phone_e164(({v}), ({region})) \
         WHEN 'email' THEN email_canonical(({v})) ELSE CAST(({v}) AS VARCHAR) END), ''))"
    );
    // coalesce(…, ''): no identifier is empty. Without it a constant NULL folds to a
    // `NULL` filter that delta-rs's scan accepts as exact and then does not apply.
    if let Ok(x) = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_expr())
    {
        *e = x;
    }
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

/// `c.reloptions`: Touchlake's pg_class has no storage options (psql's `\d+` reads
/// them); always NULL. Remove when datafusion-pg-catalog's pg_class has the column.
fn missing_catalog_column(e: &mut Expr) {
    if let Expr::CompoundIdentifier(parts) = e
        && parts
            .last()
            .is_some_and(|p| p.value.eq_ignore_ascii_case("reloptions"))
    {
        *e = Expr::Cast {
            kind: datafusion::sql::sqlparser::ast::CastKind::DoubleColon,
            expr: Box::new(Expr::value(Value::Null)),
            data_type: datafusion::sql::sqlparser::ast::DataType::Array(
                datafusion::sql::sqlparser::ast::ArrayElemTypeDef::SquareBracket(
                    Box::new(datafusion::sql::sqlparser::ast::DataType::Text),
                    None,
                ),
            ),
            array: false,
            format: None,
        };
    }
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
    // `unnest(c.reloptions)`: Touchlake tables have no storage options.
    let relation = from.relation.to_string().to_ascii_lowercase();
    if relation.contains("unnest") && (relation.contains("reloptions") || relation.contains("null"))
    {
        *e = Expr::value(Value::Null);
        return;
    }
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

/// `ARRAY(SELECT x FROM …)` → `(SELECT array_agg(x) FROM …)` (psql's `\du` and `\d+`
/// send it). An empty result gives NULL where PostgreSQL gives `{}`. Remove when
/// DataFusion plans ARRAY subqueries.
fn array_subquery(e: &mut Expr) {
    let Expr::Function(f) = e else { return };
    if !f.name.to_string().eq_ignore_ascii_case("array") {
        return;
    }
    let FunctionArguments::Subquery(q) = &f.args else {
        return;
    };
    let mut q = q.clone();
    let SetExpr::Select(sel) = q.body.as_mut() else {
        return;
    };
    if sel.projection.len() != 1 {
        return;
    }
    let (expr, alias) = match sel.projection[0].clone() {
        SelectItem::UnnamedExpr(x) => (x, None),
        SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
        _ => return,
    };
    let agg = call("array_agg", expr);
    sel.projection[0] = match alias {
        Some(alias) => SelectItem::ExprWithAlias { expr: agg, alias },
        None => SelectItem::UnnamedExpr(agg),
    };
    *e = Expr::Subquery(q);
}

/// The most levels of nested expressions and subqueries a statement may have. Planning
/// takes time growing faster than the depth (`1 + 1 + … ` with 5,000 terms: about 30 s in a
/// debug build) and recursion deeper than the thread's stack aborts the process, so deeper
/// statements are refused the way PostgreSQL refuses them (54001).
pub const MAX_NESTING: usize = 1000;

/// Is any statement nested deeper than [`MAX_NESTING`] (expressions and queries)?
pub fn too_deep(stmts: &[Statement]) -> bool {
    struct Depth {
        now: usize,
    }
    impl Depth {
        fn enter(&mut self) -> ControlFlow<()> {
            self.now += 1;
            if self.now > MAX_NESTING {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        }
    }
    impl datafusion::sql::sqlparser::ast::Visitor for Depth {
        type Break = ();
        fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_query(
            &mut self,
            _: &datafusion::sql::sqlparser::ast::Query,
        ) -> ControlFlow<()> {
            self.enter()
        }
        fn post_visit_query(
            &mut self,
            _: &datafusion::sql::sqlparser::ast::Query,
        ) -> ControlFlow<()> {
            self.now -= 1;
            ControlFlow::Continue(())
        }
    }
    stmts
        .iter()
        .any(|s| datafusion::sql::sqlparser::ast::Visit::visit(s, &mut Depth { now: 0 }).is_break())
}

#[cfg(test)]
mod tests {
    use datafusion_pg_catalog::sql::PostgresCompatibilityParser;

    fn rewritten(sql: &str) -> String {
        let mut stmts = super::parse(&PostgresCompatibilityParser::new(), sql).unwrap();
        super::rewrite(&mut stmts[0]);
        stmts[0].to_string()
    }

    #[test]
    fn like_escape_is_rewritten() {
        let s = rewritten("SELECT 1 WHERE 'a' NOT LIKE 'pg/_%' ESCAPE '/'");
        assert!(s.contains("pg_like_escape('pg/_%', '/')"), "{s}");
    }

    #[test]
    fn array_subquery_becomes_array_agg() {
        let s = rewritten(
            "SELECT ARRAY(SELECT b.rolname FROM pg_roles b WHERE b.oid = r.oid) FROM pg_roles r",
        );
        assert!(
            s.contains("(SELECT array_agg(b.rolname) FROM pg_catalog.pg_roles b"),
            "{s}"
        );
    }

    #[test]
    fn reloptions_subquery_is_null() {
        let s = rewritten(
            "SELECT c.reloptions || array(select 'toast.' || x from pg_catalog.unnest(tc.reloptions) x) FROM pg_class c",
        );
        assert!(!s.contains("unnest"), "{s}");
    }

    #[test]
    fn correlated_scalar_subquery_is_aggregated() {
        let s = rewritten("SELECT (SELECT t.name FROM s.t t WHERE t.id = a.id) FROM s.a a");
        assert!(s.contains("max(t.name)"), "{s}");
    }
}
