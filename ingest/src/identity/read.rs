//! Reading for the identity run: touchpoints as identifier rows, manual rules, and the
//! previous run's mapping.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use touchlake_catalog::Lake;

use super::graph::{self, Graph, Rule, TYPES};
use super::run::COLUMNS;
use crate::error::{IngestError, Result};

/// The blocklist and per-type checks of `id_clean`, applied to every identifier.
pub fn clean(ty: usize, value: &str) -> Option<String> {
    touchlake_functions::normalize::id_clean(Some(TYPES[ty]), Some(value), None)
}

/// A session with delta-rs's planner (its writes need it) and plain string types.
pub(super) fn identity_context() -> Result<SessionContext> {
    let overrides: HashMap<String, String> = [
        (
            "datafusion.execution.parquet.schema_force_view_types",
            "false",
        ),
        (
            "datafusion.sql_parser.map_string_types_to_utf8view",
            "false",
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    Ok(
        deltalake::delta_datafusion::DeltaSessionContext::new_with_session_overrides(&overrides)?
            .into_inner(),
    )
}

/// Column `i` of `b` as a plain string array, whatever string type it came as.
pub(super) fn text_col(b: &RecordBatch, i: usize) -> Result<StringArray> {
    Ok(cast(b.column(i), &DataType::Utf8)?
        .as_string::<i32>()
        .clone())
}

/// Column `i` of `b` as a 64-bit integer array.
pub(super) fn int_col(b: &RecordBatch, i: usize) -> Result<Int64Array> {
    Ok(cast(b.column(i), &DataType::Int64)?
        .as_primitive::<Int64Type>()
        .clone())
}

/// The identifiers of each row of a batch of identifier columns (in [`COLUMNS`] order),
/// cleaned.
pub(super) fn row_identifiers(
    batch: &RecordBatch,
    first_col: usize,
) -> Result<Vec<Vec<(u8, String)>>> {
    let mut cols = vec![];
    for t in 0..TYPES.len() {
        cols.push(cast(batch.column(first_col + t), &DataType::Utf8)?);
    }
    let cols: Vec<&StringArray> = cols.iter().map(|c| c.as_string::<i32>()).collect();
    let mut out = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        let mut ids = vec![];
        for (t, c) in cols.iter().enumerate() {
            if c.is_valid(i)
                && let Some(v) = clean(t, c.value(i))
            {
                ids.push((t as u8, v));
            }
        }
        out.push(ids);
    }
    Ok(out)
}

/// Call `f(occurred_at µs, cleaned identifiers)` for each touchpoint matching `filter`
/// (SQL over `tp`, or empty for all); returns the number of rows read.
pub(super) async fn for_each_row(
    ctx: &SessionContext,
    filter: &str,
    mut f: impl FnMut(i64, Vec<(u8, String)>),
) -> Result<u64> {
    let filter = if filter.is_empty() {
        String::new()
    } else {
        format!(" WHERE {filter}")
    };
    // occurred_at is µs; CAST of a timestamp to BIGINT gives its raw value.
    let sql = format!(
        "SELECT CAST(occurred_at AS BIGINT), {} FROM tp{filter}",
        COLUMNS.join(", ")
    );
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        rows += batch.num_rows() as u64;
        let ts = int_col(&batch, 0)?;
        for (i, ids) in row_identifiers(&batch, 1)?.into_iter().enumerate() {
            f(ts.value(i), ids);
        }
    }
    Ok(rows)
}

/// Add one touchpoint's identifiers to the graph: each a node, each pair an edge.
/// `new_edge` is called for each edge the graph did not have.
pub(super) fn add_row(
    g: &mut Graph,
    ts: i64,
    ids: &[(u8, String)],
    mut new_edge: impl FnMut(u32, u32),
) {
    let nodes: Vec<u32> = ids.iter().map(|(ty, v)| g.touch(*ty, v, ts)).collect();
    for x in 0..nodes.len() {
        for y in x + 1..nodes.len() {
            if g.link(nodes[x], nodes[y], ts) {
                new_edge(nodes[x], nodes[y]);
            }
        }
    }
}

/// Manual rules from `unified.identity_rules` (`rule` = `include`/`exclude`, `a_type`,
/// `a_value`, `b_type`, `b_value`), if the table exists.
pub(super) async fn load_rules(
    lake: &Lake,
    ctx: &SessionContext,
) -> Result<(Vec<Rule>, Option<u64>)> {
    lake.invalidate("unified", "identity_rules").await;
    let Some((t, p)) = lake.table("unified", "identity_rules").await? else {
        return Ok((vec![], None));
    };
    ctx.register_table("rules", p)?;
    let out = ctx
        .sql("SELECT CAST(lower(trim(rule)) AS VARCHAR), CAST(a_type AS VARCHAR), CAST(a_value AS VARCHAR), CAST(b_type AS VARCHAR), CAST(b_value AS VARCHAR) FROM rules")
        .await?
        .collect()
        .await?;
    let mut rules = vec![];
    for b in out {
        let c: Vec<StringArray> = (0..5).map(|i| text_col(&b, i)).collect::<Result<_>>()?;
        for i in 0..b.num_rows() {
            let include = match c[0].value(i) {
                "include" => true,
                "exclude" => false,
                other => {
                    return Err(IngestError::Definition(format!(
                        "unified.identity_rules: rule '{other}' is not include or exclude"
                    )));
                }
            };
            let side = |t: &StringArray, v: &StringArray| -> Result<(u8, String)> {
                let ty = graph::type_index(t.value(i)).ok_or_else(|| {
                    IngestError::Definition(format!(
                        "unified.identity_rules: unknown identifier type '{}'",
                        t.value(i)
                    ))
                })?;
                Ok((ty, clean(ty as usize, v.value(i)).unwrap_or_default()))
            };
            rules.push(Rule {
                include,
                a: side(&c[1], &c[2])?,
                b: side(&c[3], &c[4])?,
            });
        }
    }
    Ok((rules, t.version()))
}

/// The previous run's mapping: identifier → person, and person → (anchor, first_seen).
pub(super) struct Previous {
    pub person_of: HashMap<(u8, String), String>,
    pub anchor: HashMap<String, (u8, String)>,
    pub first_seen: HashMap<String, i64>,
}

pub(super) async fn load_previous(lake: &Lake, ctx: &SessionContext) -> Result<Previous> {
    let mut prev = Previous {
        person_of: HashMap::new(),
        anchor: HashMap::new(),
        first_seen: HashMap::new(),
    };
    if let Some((_, p)) = lake.table("unified", "identities").await? {
        ctx.register_table("prev_identities", p)?;
        let mut s = ctx
            .sql("SELECT CAST(identifier_type AS VARCHAR), CAST(identifier_value AS VARCHAR), CAST(person_id AS VARCHAR) FROM prev_identities")
            .await?
            .execute_stream()
            .await?;
        while let Some(b) = s.next().await {
            let b = b?;
            let (t, v, p) = (text_col(&b, 0)?, text_col(&b, 1)?, text_col(&b, 2)?);
            for i in 0..b.num_rows() {
                if let Some(ty) = graph::type_index(t.value(i)) {
                    prev.person_of
                        .insert((ty, v.value(i).to_string()), p.value(i).to_string());
                }
            }
        }
    }
    if let Some((_, p)) = lake.table("unified", "persons").await? {
        let has_anchor = p.schema().field_with_name("anchor_type").is_ok();
        ctx.register_table("prev_persons", p)?;
        let sql = if has_anchor {
            "SELECT CAST(person_id AS VARCHAR), CAST(first_seen AS BIGINT), CAST(anchor_type AS VARCHAR), CAST(anchor_value AS VARCHAR) FROM prev_persons"
        } else {
            "SELECT CAST(person_id AS VARCHAR), CAST(first_seen AS BIGINT), CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR) FROM prev_persons"
        };
        let mut s = ctx.sql(sql).await?.execute_stream().await?;
        while let Some(b) = s.next().await {
            prev.add_persons(&b?)?;
        }
    }
    Ok(prev)
}

impl Previous {
    /// Record persons from a batch of (person_id, first_seen µs, anchor_type,
    /// anchor_value).
    pub(super) fn add_persons(&mut self, b: &RecordBatch) -> Result<()> {
        let (id, fs) = (text_col(b, 0)?, int_col(b, 1)?);
        let (at, av) = (text_col(b, 2)?, text_col(b, 3)?);
        for i in 0..b.num_rows() {
            if fs.is_valid(i) {
                self.first_seen.insert(id.value(i).to_string(), fs.value(i));
            }
            if at.is_valid(i)
                && av.is_valid(i)
                && let Some(ty) = graph::type_index(at.value(i))
            {
                self.anchor
                    .insert(id.value(i).to_string(), (ty, av.value(i).to_string()));
            }
        }
        Ok(())
    }
}
