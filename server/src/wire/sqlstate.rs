//! The one place where errors become PostgreSQL SQLSTATEs.

use datafusion::arrow::error::ArrowError;
use datafusion::common::SchemaError;
use datafusion::error::DataFusionError;
use pgwire::error::{ErrorInfo, PgWireError};
use touchlake_catalog::CatalogError;

use crate::session::SessionError;
use crate::settings::SettingError;

/// An ErrorResponse for `e` with the SQLSTATE a PostgreSQL client expects.
pub fn error_info(e: &SessionError) -> ErrorInfo {
    let (code, msg) = classify(e);
    ErrorInfo::new("ERROR".to_string(), code.to_string(), msg)
}

/// The same, as the error type pgwire handlers return.
pub fn to_pgwire(e: SessionError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(&e)))
}

fn classify(e: &SessionError) -> (&'static str, String) {
    match e {
        SessionError::Catalog(c) => catalog_code(c),
        SessionError::DataFusion(d) => datafusion_code(d),
        SessionError::Syntax(m) => ("42601", m.clone()),
        SessionError::Setting(s) => (
            match s {
                SettingError::Unknown(_) => "42704",
                SettingError::ReadOnly(_) | SettingError::ServerOnly(_) => "55P02",
                SettingError::Invalid(_, _) => "22023",
            },
            s.to_string(),
        ),
        SessionError::NotSupported(m) => ("0A000", m.clone()),
        SessionError::Denied(_) => ("42501", e.to_string()),
        SessionError::Canceled | SessionError::Timeout => ("57014", e.to_string()),
        SessionError::TransactionAborted => ("25P02", e.to_string()),
        SessionError::Ingest(i) => ingest_code(i),
        SessionError::Data(code, m) => (*code, m.clone()),
    }
}

fn ingest_code(i: &touchlake_ingest::IngestError) -> (&'static str, String) {
    use touchlake_ingest::IngestError as I;
    let code = match i {
        I::Definition(_) => "22023",
        I::NoSuchSource(_) => "42704",
        I::SourceExists(_) => "42710",
        I::Mapping { message, .. } => {
            let lower = message.to_ascii_lowercase();
            if lower.contains("no field named") || lower.contains("not found") {
                "42703"
            } else if lower.contains("invalid function") || lower.contains("no function") {
                "42883"
            } else {
                "42601"
            }
        }
        I::Read(_) => "58030",
        I::Catalog(c) => return catalog_code(c),
        I::Delta(d) => return delta_code(d),
        I::DataFusion(d) => return datafusion_code(d),
    };
    (code, i.to_string())
}

fn catalog_code(c: &CatalogError) -> (&'static str, String) {
    let code = match c {
        CatalogError::NoSuchSchema(_) => "3F000",
        CatalogError::NoSuchTable(_) => "42P01",
        CatalogError::AlreadyExists(_) => "42P07",
        CatalogError::SchemaExists(_) => "42P06",
        CatalogError::SchemaNotEmpty(_) => "2BP01",
        CatalogError::InvalidName(_) => "42602",
        CatalogError::UnsupportedType(_) => "42704",
        CatalogError::Unsupported(_) => "0A000",
        CatalogError::InvalidLake(_, _) => "58000",
        CatalogError::ObjectStore(_) => "58030",
        CatalogError::CorruptMeta(_, _) => "XX001",
        CatalogError::DataFusion(d) => return datafusion_code(d),
        CatalogError::Delta(d) => return delta_code(d),
    };
    (code, c.to_string())
}

fn delta_code(d: &deltalake::DeltaTableError) -> (&'static str, String) {
    use deltalake::DeltaTableError as D;
    let msg = d.to_string();
    let code = match d {
        D::VersionAlreadyExists(_) | D::Transaction { .. } => "40001",
        D::NotATable(_) => "42P01",
        D::InvalidVersion(_) | D::InvalidDateTimeString { .. } => "22023",
        _ => {
            let lower = msg.to_ascii_lowercase();
            if lower.contains("no field named")
                || lower.contains("column") && lower.contains("not found")
            {
                "42703"
            } else if lower.contains("parse") || lower.contains("sql error") {
                "42601"
            } else if lower.contains("division by zero") || lower.contains("divide by zero") {
                "22012"
            } else {
                "XX000"
            }
        }
    };
    (code, msg)
}

fn arrow_code(a: &ArrowError) -> &'static str {
    match a {
        ArrowError::DivideByZero => "22012",
        ArrowError::CastError(_) | ArrowError::ParseError(_) => "22P02",
        ArrowError::ArithmeticOverflow(_) | ArrowError::ComputeError(_)
            if a.to_string().contains("overflow") =>
        {
            "22003"
        }
        ArrowError::MemoryError(_) => "53200",
        ArrowError::InvalidArgumentError(m) if m.contains("non-nullable but contains null") => {
            "23502"
        }
        _ => "XX000",
    }
}

/// SQLSTATE for a DataFusion error (looking through context and wrapping layers).
fn datafusion_code(d: &DataFusionError) -> (&'static str, String) {
    let root = d.find_root();
    let msg = pg_message(root);
    let code = match root {
        DataFusionError::SQL(_, _) => "42601",
        DataFusionError::SchemaError(se, _) => match se.as_ref() {
            SchemaError::FieldNotFound { .. } => "42703",
            SchemaError::DuplicateQualifiedField { .. }
            | SchemaError::DuplicateUnqualifiedField { .. } => "42701",
            SchemaError::AmbiguousReference { .. } => "42702",
            #[allow(unreachable_patterns)]
            _ => "42P18",
        },
        DataFusionError::ArrowError(a, _) => arrow_code(a),
        DataFusionError::NotImplemented(_) => "0A000",
        DataFusionError::ResourcesExhausted(_) => "53200",
        DataFusionError::External(inner) => {
            if let Some(s) = inner.downcast_ref::<SessionError>() {
                return classify(s);
            }
            if let Some(f) = inner.downcast_ref::<touchlake_functions::FunctionError>() {
                return (f.sqlstate(), msg);
            }
            if let Some(m) = inner.downcast_ref::<crate::match_recognize::MatchError>() {
                use crate::match_recognize::MatchError as M;
                return (
                    match m {
                        M::NotSupported(_) => "0A000",
                        M::Invalid(_) => "42601",
                        M::UnknownColumn(_) => "42703",
                        M::Data(_) => "22023",
                        M::TooComplex => "54001",
                        M::Type(_) => "42804",
                        M::DivisionByZero => "22012",
                        M::OutOfRange => "22003",
                    },
                    msg,
                );
            }
            if let Some(c) = inner.downcast_ref::<CatalogError>() {
                return catalog_code(c);
            }
            if let Some(d) = inner.downcast_ref::<deltalake::DeltaTableError>() {
                return delta_code(d);
            }
            if let Some(a) = inner.downcast_ref::<ArrowError>() {
                return (arrow_code(a), msg);
            }
            "XX000"
        }
        DataFusionError::Plan(m) | DataFusionError::Execution(m) => message_code(m),
        _ => message_code(&msg),
    };
    (code, msg)
}

/// Codes for errors DataFusion reports only as text.
fn message_code(m: &str) -> &'static str {
    let l = m.to_ascii_lowercase();
    if l.contains("non-nullable but contains null") {
        "23502"
    } else if l.contains("not found") && (l.contains("table") || l.contains("relation")) {
        "42P01"
    } else if l.contains("divide by zero") || l.contains("division by zero") {
        "22012"
    } else if l.contains("invalid function")
        || l.contains("no function matches")
        || l.contains("failed to coerce arguments")
        || l.contains("does not support") && l.contains("function")
    {
        "42883"
    } else if l.contains("cannot cast")
        || l.contains("cannot be cast")
        || l.contains("invalid input syntax")
    {
        "22P02"
    } else if l.contains("overflow") {
        "22003"
    } else if l.contains("schema") && l.contains("not found") {
        "3F000"
    } else if l.contains("must appear in the group by")
        || l.contains("projection references non-aggregate")
    {
        "42803"
    } else if l.contains("unsupported")
        || l.contains("not supported")
        || l.contains("not implemented")
    {
        "0A000"
    } else {
        "XX000"
    }
}

/// Edit distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push(
                (prev[j] + usize::from(ca != *cb))
                    .min(prev[j + 1] + 1)
                    .min(cur[j] + 1),
            );
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `column "phonee" does not exist in unified.touchpoints (did you mean "phone"?)`.
fn missing_column_message(
    field: &datafusion::common::Column,
    valid: &[datafusion::common::Column],
) -> String {
    let mut msg = format!("column \"{}\" does not exist", field.name);
    if let Some(rel) = valid.iter().find_map(|c| c.relation.as_ref()) {
        msg.push_str(&format!(" in {rel}"));
    }
    if let Some(best) = valid
        .iter()
        .map(|c| (distance(&field.name, &c.name), &c.name))
        .filter(|(d, n)| *d <= 2.max(n.len() / 3))
        .min()
    {
        msg.push_str(&format!(" (did you mean \"{}\"?)", best.1));
    }
    msg
}

/// `relation "public.nope" does not exist`, from DataFusion's "table '…' not found".
fn missing_table_message(m: &str) -> Option<String> {
    let start = m.find("table '")? + "table '".len();
    let end = start + m[start..].find('\'')?;
    let name = &m[start..end];
    let name = name
        .strip_prefix(&format!("{}.", touchlake_catalog::DATABASE))
        .unwrap_or(name);
    Some(format!("relation \"{name}\" does not exist"))
}

/// A message without DataFusion's internal prefixes.
fn pg_message(e: &DataFusionError) -> String {
    if let DataFusionError::SchemaError(se, _) = e
        && let SchemaError::FieldNotFound {
            field,
            valid_fields,
        } = se.as_ref()
    {
        return missing_column_message(field, valid_fields);
    }
    if let DataFusionError::Plan(m) = e
        && m.contains("not found")
        && let Some(msg) = missing_table_message(m)
    {
        return msg;
    }
    match e {
        DataFusionError::Plan(m)
        | DataFusionError::Execution(m)
        | DataFusionError::NotImplemented(m) => m.clone(),
        DataFusionError::SQL(p, _) => p.to_string(),
        DataFusionError::SchemaError(s, _) => s.to_string(),
        DataFusionError::External(inner) => inner.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_table_is_42p01() {
        let e = SessionError::DataFusion(DataFusionError::Plan(
            "table 'touchlake.public.nope' not found".into(),
        ));
        assert_eq!(error_info(&e).code, "42P01");
    }

    #[test]
    fn missing_relations_and_columns_read_like_postgres() {
        let e = SessionError::DataFusion(DataFusionError::Plan(
            "table 'touchlake.public.nope' not found".into(),
        ));
        assert_eq!(
            error_info(&e).message,
            "relation \"public.nope\" does not exist"
        );
        let valid = vec![
            datafusion::common::Column::new(Some("unified.touchpoints"), "phone"),
            datafusion::common::Column::new(Some("unified.touchpoints"), "email"),
        ];
        let msg = missing_column_message(&datafusion::common::Column::from_name("phonee"), &valid);
        assert_eq!(
            msg,
            "column \"phonee\" does not exist in unified.touchpoints (did you mean \"phone\"?)"
        );
    }

    #[test]
    fn division_by_zero_is_22012() {
        let e = SessionError::DataFusion(DataFusionError::ArrowError(
            Box::new(ArrowError::DivideByZero),
            None,
        ));
        assert_eq!(error_info(&e).code, "22012");
    }

    #[test]
    fn cancel_through_external_is_57014() {
        let e =
            SessionError::DataFusion(DataFusionError::External(Box::new(SessionError::Canceled)));
        assert_eq!(error_info(&e).code, "57014");
    }
}
