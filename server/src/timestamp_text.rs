//! PostgreSQL reads `2026-03-01 13:00` as a timestamp (the seconds may be left out); Arrow's
//! parser wants them. [`with_seconds`] adds them to such text, and the analyzer rule
//! [`TimestampText`] applies it to every text constant cast to a timestamp
//! (`'2026-03-01 13:00'::timestamp`, `timestamptz '…'`, `INSERT … VALUES ('…')`).

use std::borrow::Cow;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::AnalyzerRule;

/// A timestamp text with the seconds PostgreSQL lets one leave out (`2026-03-01 13:00` →
/// `2026-03-01 13:00:00`, also before a zone); other text unchanged.
pub fn with_seconds(v: &str) -> Cow<'_, str> {
    let b = v.as_bytes();
    // `YYYY-MM-DD HH:MM`, then the end, a zone or a sign.
    let shaped = b.len() >= 16
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b' ' || b[10] == b'T')
        && b[13] == b':'
        && [0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
        && b.get(16)
            .is_none_or(|c| !c.is_ascii_digit() && *c != b':' && *c != b'.');
    if shaped {
        Cow::Owned(format!("{}:00{}", &v[..16], &v[16..]))
    } else {
        Cow::Borrowed(v)
    }
}

/// The analyzer rule (see the module documentation).
#[derive(Debug, Default)]
pub struct TimestampText;

/// `'…'` cast to a timestamp, with the seconds added.
fn complete(e: Expr) -> Result<Transformed<Expr>> {
    let (inner, to) = match &e {
        Expr::Cast(c) => (&*c.expr, c.field.data_type()),
        Expr::TryCast(c) => (&*c.expr, c.field.data_type()),
        _ => return Ok(Transformed::no(e)),
    };
    let Expr::Literal(ScalarValue::Utf8(Some(text)), meta) = inner else {
        return Ok(Transformed::no(e));
    };
    if !matches!(to, DataType::Timestamp(..)) {
        return Ok(Transformed::no(e));
    }
    let Cow::Owned(full) = with_seconds(text.as_str()) else {
        return Ok(Transformed::no(e));
    };
    let lit = Box::new(Expr::Literal(ScalarValue::Utf8(Some(full)), meta.clone()));
    Ok(Transformed::yes(match e {
        Expr::Cast(mut c) => {
            c.expr = lit;
            Expr::Cast(c)
        }
        Expr::TryCast(mut c) => {
            c.expr = lit;
            Expr::TryCast(c)
        }
        other => other,
    }))
}

impl AnalyzerRule for TimestampText {
    fn analyze(&self, plan: LogicalPlan, _: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            // The columns keep their names (the text in them is the user's).
            let names = NamePreserver::new(&node);
            node.map_expressions(|e| {
                let saved = names.save(&e);
                Ok(e.transform_up(complete)?.update_data(|e| saved.restore(e)))
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "touchlake_timestamp_text"
    }
}

#[cfg(test)]
mod tests {
    use super::with_seconds;

    #[test]
    fn timestamps_without_seconds_get_them() {
        for (given, want) in [
            ("2026-03-01 13:00", "2026-03-01 13:00:00"),
            ("2026-03-01T13:00", "2026-03-01T13:00:00"),
            ("2026-03-01 13:00+08", "2026-03-01 13:00:00+08"),
            ("2026-03-01 13:00 UTC", "2026-03-01 13:00:00 UTC"),
            ("2026-03-01 13:00:05", "2026-03-01 13:00:05"),
            ("2026-03-01 13:00:05.25", "2026-03-01 13:00:05.25"),
            ("2026-03-01", "2026-03-01"),
            ("13:00", "13:00"),
            ("2026-03-01 13:0x", "2026-03-01 13:0x"),
        ] {
            assert_eq!(with_seconds(given), want, "{given}");
        }
    }
}
