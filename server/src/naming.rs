//! PostgreSQL's names for unnamed result columns: `count(*)` is called `count`,
//! `x::int` is called `int4`, a bare literal `?column?`. DataFusion would call them
//! `count(*)`, `CAST(x AS Int32)` and `Int64(1)`; BI tools and pandas show these names.

use datafusion::sql::sqlparser::ast::{DataType, Expr, Ident, Query, SelectItem, SetExpr};

/// Give the top-level SELECT's unnamed expressions PostgreSQL's column names, where the
/// name is unique in the select list (DataFusion requires unique names).
pub fn name_columns(q: &mut Query) {
    let SetExpr::Select(select) = q.body.as_mut() else {
        return;
    };
    let names: Vec<Option<String>> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) => Some(pg_name(e)),
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    let count = |n: &str| names.iter().filter(|m| m.as_deref() == Some(n)).count();
    let has_wildcard = names.iter().any(Option::is_none);
    for (item, name) in select.projection.iter_mut().zip(names.iter()) {
        let SelectItem::UnnamedExpr(e) = item else {
            continue;
        };
        if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            continue;
        }
        let Some(name) = name else { continue };
        if count(name) != 1 || has_wildcard {
            continue;
        }
        *item = SelectItem::ExprWithAlias {
            expr: e.clone(),
            alias: Ident::with_quote('"', name.clone()),
        };
    }
}

fn pg_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(i) => i.value.to_ascii_lowercase(),
        Expr::CompoundIdentifier(parts) => parts
            .last()
            .map(|i| i.value.to_ascii_lowercase())
            .unwrap_or_default(),
        Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(|i| i.value.to_ascii_lowercase())
            .unwrap_or_else(|| "?column?".into()),
        // Like PostgreSQL's FigureColname: a cast of a column or function keeps that
        // name (`created_at::text` is `created_at`); of anything else, the type's name.
        Expr::Cast {
            data_type, expr, ..
        } => match (expr.as_ref(), type_name(data_type)) {
            (Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Function(_), _) => {
                pg_name(expr)
            }
            (Expr::Nested(inner), _)
                if matches!(
                    inner.as_ref(),
                    Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Function(_)
                ) =>
            {
                pg_name(inner)
            }
            (_, Some(n)) => n,
            (_, None) => pg_name(expr),
        },
        Expr::Nested(inner) => pg_name(inner),
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        _ => "?column?".into(),
    }
}

fn type_name(t: &DataType) -> Option<String> {
    Some(
        match t {
            DataType::Int(_) | DataType::Integer(_) | DataType::Int4(_) => "int4",
            DataType::BigInt(_) | DataType::Int8(_) => "int8",
            DataType::SmallInt(_) | DataType::Int2(_) => "int2",
            DataType::Text => "text",
            DataType::Varchar(_) | DataType::CharVarying(_) => "varchar",
            DataType::Boolean | DataType::Bool => "bool",
            DataType::Date => "date",
            DataType::Timestamp(_, _) => "timestamp",
            DataType::Numeric(_) | DataType::Decimal(_) => "numeric",
            DataType::DoublePrecision | DataType::Float8 => "float8",
            DataType::Real | DataType::Float4 => "float4",
            _ => return None,
        }
        .to_string(),
    )
}
