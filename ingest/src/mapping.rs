//! A source's mapping onto `unified.touchpoints`, compiled to SQL that DataFusion runs over
//! each landed chunk (registered as table `src`).
//!
//! Row-level problems never fail the batch: every cast in a mapping runs as `TRY_CAST`, and
//! a value that was present but did not convert becomes a rejection reason
//! (`revenue: cannot parse '12,3x' as decimal(18,2)`). Rules add their own reasons. A row
//! with any reason goes to `quality.rejected`; the others are touchpoints.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::sql::sqlparser::ast::{
    self, CastKind, Expr, visit_expressions, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{IngestError, Result};
use crate::read::{LOCATION, RAW, ROW};
use crate::source::{MAPPABLE, SourceDef};

/// Column holding the rejection reasons ('' when the row is fine).
pub const REASON: &str = "_reason";

fn quote_lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Parse one SQL expression of a definition.
pub fn parse_expr(source: &str, what: &str, sql: &str) -> Result<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| {
            let e = p.parse_expr()?;
            p.expect_token(&datafusion::sql::sqlparser::tokenizer::Token::EOF)?;
            Ok(e)
        })
        .map_err(|e| IngestError::Mapping {
            name: source.to_string(),
            message: format!("{what}: {e}"),
        })
}

/// Turn every cast into TRY_CAST and return, for each, a reason expression that is
/// non-NULL when the value was present but did not convert.
fn soften_casts(col: &str, expr: &mut Expr) -> Vec<String> {
    let mut checks = vec![];
    let _ = visit_expressions_mut(expr, |e: &mut Expr| {
        if let Expr::Cast {
            kind,
            expr: inner,
            data_type,
            ..
        } = e
            && !matches!(kind, CastKind::TryCast | CastKind::SafeCast)
        {
            *kind = CastKind::TryCast;
            checks.push(format!(
                "CASE WHEN ({inner}) IS NOT NULL AND TRY_CAST(({inner}) AS {data_type}) IS NULL \
                 THEN {} || CAST(({inner}) AS VARCHAR) || {} END",
                quote_lit(&format!("{col}: cannot parse '")),
                quote_lit(&format!("' as {}", data_type.to_string().to_lowercase())),
            ));
        }
        ControlFlow::<()>::Continue(())
    });
    checks
}

/// Identifiers an expression reads (lower-cased unless quoted).
fn referenced(expr: &Expr, out: &mut BTreeSet<String>) {
    let _ = visit_expressions(expr, |e: &Expr| {
        match e {
            Expr::Identifier(i) => {
                out.insert(ident_name(i));
            }
            Expr::CompoundIdentifier(parts) => {
                if let Some(last) = parts.last() {
                    out.insert(ident_name(last));
                }
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
}

fn ident_name(i: &ast::Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

/// The compiled mapping of one source.
#[derive(Debug, Clone)]
pub struct Mapping {
    source: String,
    /// First pass over `src`: natural key, raw mapped values (`v_<col>`), cast checks.
    stage1: Vec<(String, String)>,
    cast_checks: Vec<String>,
    key_exprs: Vec<String>,
    mapped: Vec<String>,
    referenced: BTreeSet<String>,
    def: SourceDef,
}

impl Mapping {
    /// Compile a definition (syntax errors are reported here, unknown columns at planning).
    pub fn compile(def: &SourceDef) -> Result<Self> {
        let mut stage1 = vec![];
        let mut cast_checks = vec![];
        let mut refs = BTreeSet::new();
        let mut key_exprs = vec![];
        for (i, k) in def.natural_key.iter().enumerate() {
            let mut e = parse_expr(&def.name, &format!("natural_key[{}]", i + 1), k)?;
            referenced(&e, &mut refs);
            cast_checks.extend(soften_casts("natural_key", &mut e));
            key_exprs.push(format!("CAST(({e}) AS VARCHAR)"));
        }
        let mut mapped = vec![];
        for (col, sql) in &def.mapping {
            let mut e = parse_expr(&def.name, &format!("mapping.{col}"), sql)?;
            referenced(&e, &mut refs);
            cast_checks.extend(soften_casts(col, &mut e));
            stage1.push((format!("v_{col}"), e.to_string()));
            mapped.push(col.clone());
        }
        for r in &def.rules {
            if let Some(c) = &r.check {
                parse_expr(&def.name, "rules.check", c)?;
            }
        }
        Ok(Self {
            source: def.name.clone(),
            stage1,
            cast_checks,
            key_exprs,
            mapped,
            referenced: refs,
            def: def.clone(),
        })
    }

    /// Source columns the mapping, natural key and rules read.
    pub fn referenced(&self) -> impl Iterator<Item = &String> {
        self.referenced.iter()
    }

    /// Stage 1 SQL over `src`.
    pub fn stage1_sql(&self, src: &Schema) -> String {
        let mut cols = vec![];
        let key_null = self
            .key_exprs
            .iter()
            .map(|k| format!("({k}) IS NULL"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let key_concat = self
            .key_exprs
            .iter()
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(", chr(31), ");
        cols.push(format!(
            "CASE WHEN {key_null} THEN NULL ELSE substr(encode(sha256(concat({}, chr(31), {key_concat})), 'hex'), 1, 32) END AS touchpoint_id",
            quote_lit(&self.source)
        ));
        for (name, e) in &self.stage1 {
            cols.push(format!("({e}) AS {}", quote_ident(name)));
        }
        if !self.mapped.iter().any(|c| c == "properties") {
            // The rest of the record: source columns no mapping reads.
            let rest: Vec<String> = src
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .filter(|n| !n.starts_with('_') && !self.referenced.contains(n))
                .collect();
            if rest.is_empty() {
                cols.push("CAST(NULL AS VARCHAR) AS v_properties".into());
            } else {
                let args: Vec<String> = rest
                    .iter()
                    .map(|n| format!("{}, {}", quote_lit(n), quote_ident(n)))
                    .collect();
                cols.push(format!(
                    "CAST(json_build_object({}) AS VARCHAR) AS v_properties",
                    args.join(", ")
                ));
            }
        }
        let checks = if self.cast_checks.is_empty() {
            "''".to_string()
        } else {
            format!("concat_ws('; ', {})", self.cast_checks.join(", "))
        };
        cols.push(format!("{checks} AS _cast_reason"));
        for c in [LOCATION, RAW, ROW] {
            cols.push(quote_ident(c));
        }
        format!("SELECT {} FROM src", cols.join(",\n  "))
    }

    /// Stage 2 SQL over stage 1's result (`stage1`, whose schema is given): typed contract
    /// columns plus `_reason`.
    pub fn stage2_sql(&self, stage1: &Schema) -> String {
        let def = &self.def;
        let mut cols = vec!["touchpoint_id".to_string()];
        let mut reasons = vec![
            "CASE WHEN touchpoint_id IS NULL THEN 'natural key: missing value' END".to_string(),
            "NULLIF(_cast_reason, '')".to_string(),
        ];
        let ts_fmt = quote_lit(&def.format.timestamp_format);
        let tz = quote_lit(&def.format.timezone);
        let typed = |col: &str, ty: &str| -> (String, Option<String>) {
            let v = format!("v_{col}");
            let Ok(field) = stage1.field_with_name(&v) else {
                return (format!("CAST(NULL AS {ty})"), None);
            };
            if col == "occurred_at" {
                let e = match field.data_type() {
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                        format!("parse_timestamp({v}, {ts_fmt}, {tz})")
                    }
                    DataType::Timestamp(_, None) => {
                        // A wall-clock time: read it in the source's zone.
                        format!("parse_timestamp(CAST({v} AS VARCHAR), {ts_fmt}, {tz})")
                    }
                    _ => format!("TRY_CAST({v} AS TIMESTAMPTZ)"),
                };
                let check = format!(
                    "CASE WHEN {v} IS NULL THEN 'occurred_at: missing' \
                     WHEN ({e}) IS NULL THEN 'occurred_at: cannot parse ''' || CAST({v} AS VARCHAR) || '''' END"
                );
                return (e, Some(check));
            }
            let target = sql_type(ty);
            if field.data_type() == &target {
                return (v, None);
            }
            let e = format!("TRY_CAST({v} AS {ty})");
            let check = format!(
                "CASE WHEN {v} IS NOT NULL AND ({e}) IS NULL THEN {} || CAST({v} AS VARCHAR) || {} END",
                quote_lit(&format!("{col}: cannot parse '")),
                quote_lit(&format!("' as {ty}"))
            );
            (e, Some(check))
        };
        for (name, ty) in CONTRACT_ORDER {
            let expr = match *name {
                "channel" => quote_lit(&def.channel),
                "channel_type" => quote_lit(&def.channel_type),
                "source" => quote_lit(&def.name),
                "person_id" => "CAST(NULL AS VARCHAR)".into(),
                // Lineage columns are added when the batch is committed.
                "run_id" | "ingested_at" => continue,
                "currency" if !self.mapped.iter().any(|c| c == "currency") => match &def.currency {
                    Some(c) => quote_lit(c),
                    None => "CAST(NULL AS VARCHAR)".into(),
                },
                col if MAPPABLE.iter().any(|(c, _)| *c == col) => {
                    let (e, check) = typed(col, ty);
                    if let Some(c) = check {
                        reasons.push(c);
                    }
                    e
                }
                _ => continue,
            };
            cols.push(format!("{expr} AS {name}"));
        }
        if stage1.field_with_name("v_event_type").is_ok() {
            reasons.push("CASE WHEN v_event_type IS NULL THEN 'event_type: missing' END".into());
        }
        for c in [LOCATION, RAW, ROW] {
            cols.push(quote_ident(c));
        }
        cols.push(format!(
            "concat_ws('; ', {}) AS _pre_reason",
            reasons.join(", ")
        ));
        format!("SELECT {} FROM stage1", cols.join(",\n  "))
    }

    /// Stage 3 SQL over stage 2 (`stage2`): the rules, and the final `_reason`.
    pub fn stage3_sql(&self) -> String {
        let mut reasons = vec!["NULLIF(_pre_reason, '')".to_string()];
        for r in &self.def.rules {
            let col = r.column.as_deref().map(quote_ident).unwrap_or_default();
            let raw_col = r.column.clone().unwrap_or_default();
            let (fails, default_reason) = if r.not_null == Some(true) {
                (format!("{col} IS NULL"), format!("{raw_col}: missing"))
            } else if r.not_null == Some(false) {
                ("false".to_string(), String::new())
            } else if let Some(values) = &r.accepted_values {
                let list: Vec<String> = values.iter().map(|v| quote_lit(v)).collect();
                (
                    format!(
                        "{col} IS NOT NULL AND CAST({col} AS VARCHAR) NOT IN ({})",
                        list.join(", ")
                    ),
                    format!("{raw_col}: not one of {}", values.join(", ")),
                )
            } else if r.min.is_some() || r.max.is_some() {
                let mut parts = vec![];
                if let Some(m) = r.min {
                    parts.push(format!("CAST({col} AS DOUBLE) < {m:?}"));
                }
                if let Some(m) = r.max {
                    parts.push(format!("CAST({col} AS DOUBLE) > {m:?}"));
                }
                let range = format!(
                    "{raw_col}: out of range [{}, {}]",
                    r.min
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "-inf".into()),
                    r.max.map(|m| m.to_string()).unwrap_or_else(|| "inf".into())
                );
                (
                    format!("{col} IS NOT NULL AND ({})", parts.join(" OR ")),
                    range,
                )
            } else if let Some(re) = &r.regex {
                (
                    format!(
                        "{col} IS NOT NULL AND NOT regexp_like(CAST({col} AS VARCHAR), {})",
                        quote_lit(re)
                    ),
                    format!("{raw_col}: does not match {re}"),
                )
            } else if let Some(check) = &r.check {
                (
                    format!("NOT coalesce(({check}), true)"),
                    format!("check failed: {check}"),
                )
            } else {
                continue;
            };
            let reason = r.reason.clone().unwrap_or(default_reason);
            reasons.push(format!("CASE WHEN {fails} THEN {} END", quote_lit(&reason)));
        }
        format!(
            "SELECT *, coalesce(concat_ws('; ', {}), '') AS {REASON} FROM stage2",
            reasons.join(", ")
        )
    }
}

/// The contract's columns in table order, with SQL types.
const CONTRACT_ORDER: &[(&str, &str)] = &[
    ("occurred_at", "timestamptz"),
    ("channel", "text"),
    ("channel_type", "text"),
    ("event_type", "text"),
    ("source", "text"),
    ("person_id", "text"),
    ("user_id", "text"),
    ("anonymous_id", "text"),
    ("phone", "text"),
    ("email", "text"),
    ("device_id", "text"),
    ("member_id", "text"),
    ("openid", "text"),
    ("store_id", "text"),
    ("campaign", "text"),
    ("content", "text"),
    ("revenue", "decimal(18,2)"),
    ("currency", "text"),
    ("score", "integer"),
    ("duration_ms", "bigint"),
    ("properties", "text"),
    ("run_id", "text"),
    ("ingested_at", "timestamptz"),
];

fn sql_type(ty: &str) -> DataType {
    match ty {
        "text" => DataType::Utf8,
        "integer" => DataType::Int32,
        "bigint" => DataType::Int64,
        "decimal(18,2)" => DataType::Decimal128(18, 2),
        _ => DataType::Null,
    }
}
