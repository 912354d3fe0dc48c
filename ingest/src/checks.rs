//! Data-quality checks written to `quality.checks` after every ingest run that read
//! something:
//!
//! - `null_rate` per identifier column: the share of the run's accepted rows without that
//!   identifier; `warn` when it is more than 0.2 above the source's average over its
//!   previous 10 runs (a channel that suddenly stops sending phones), else `ok`;
//! - `volume`: rows read, against the average of the source's previous 10 runs that read
//!   something (`threshold`); `warn` below half or above double that average once there
//!   are 3 earlier runs, else `ok`;
//! - `freshness`: seconds from the newest accepted `occurred_at` to the check; `warn`
//!   above 2 days (`threshold`).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::Utc;
use datafusion::arrow::array::{
    Array, AsArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Float64Type, TimestampMicrosecondType};
use datafusion::prelude::SessionContext;
use touchlake_catalog::Lake;

use crate::error::Result;
use crate::run::{RunSummary, append};
use crate::tables;

/// The identifier columns of `unified.touchpoints` whose null rate is checked.
pub use touchlake_catalog::scan::IDENTIFIERS;

/// Freshness above this many seconds is a warning.
pub const FRESHNESS_WARN_SECONDS: f64 = 2.0 * 86400.0;

/// Per identifier: rows with a value; and the latest `occurred_at`, of accepted rows.
pub fn batch_stats(b: &RecordBatch) -> Result<([u64; IDENTIFIERS.len()], Option<i64>)> {
    let mut present = [0u64; IDENTIFIERS.len()];
    for (i, c) in IDENTIFIERS.iter().enumerate() {
        if let Some(a) = b.column_by_name(c) {
            present[i] = (a.len() - a.null_count()) as u64;
        }
    }
    let latest = b
        .column_by_name("occurred_at")
        .and_then(|a| a.as_primitive_opt::<TimestampMicrosecondType>())
        .and_then(|a| a.iter().flatten().max());
    Ok((present, latest))
}

/// The quality tables registered once for the history queries of one run's checks;
/// None before they exist.
async fn history_context(lake: &Lake) -> Result<Option<SessionContext>> {
    let ctx = SessionContext::new();
    for t in ["ingest_runs", "checks"] {
        match lake.table("quality", t).await? {
            Some((_, p)) => ctx.register_table(t, p)?,
            None => return Ok(None),
        };
    }
    Ok(Some(ctx))
}

/// Rows of (text key or NULL, number) from a history query.
async fn history(ctx: Option<&SessionContext>, sql: &str) -> Result<Vec<(Option<String>, f64)>> {
    let Some(ctx) = ctx else {
        return Ok(vec![]);
    };
    let mut out = vec![];
    for b in ctx.sql(sql).await?.collect().await? {
        let keys = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let keys = keys.as_string::<i32>();
        let values = datafusion::arrow::compute::cast(b.column(1), &DataType::Float64)?;
        let values = values.as_primitive::<Float64Type>();
        for i in 0..b.num_rows() {
            if values.is_valid(i) {
                out.push((
                    keys.is_valid(i).then(|| keys.value(i).to_string()),
                    values.value(i),
                ));
            }
        }
    }
    Ok(out)
}

/// (check_name, column_name, value, threshold, status).
type CheckRow = (
    String,
    Option<String>,
    Option<f64>,
    Option<f64>,
    &'static str,
);

fn avg(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// Write the checks of a finished run (none for a run that read nothing or failed).
pub async fn record(lake: &Lake, s: &RunSummary) -> Result<()> {
    if s.rows_read == 0 || s.status != "succeeded" {
        return Ok(());
    }
    let src = s.source.replace('\'', "''");
    let run = s.run_id.replace('\'', "''");
    let mut rows: Vec<CheckRow> = vec![];

    let ctx = history_context(lake).await?;
    let volumes: Vec<f64> = history(
        ctx.as_ref(),
        &format!(
            "SELECT NULL, rows_read FROM ingest_runs WHERE source = '{src}' AND run_id <> '{run}' \
             AND status = 'succeeded' AND rows_read > 0 ORDER BY started_at DESC LIMIT 10"
        ),
    )
    .await?
    .into_iter()
    .map(|(_, v)| v)
    .collect();
    let v = s.rows_read as f64;
    let status = match avg(&volumes) {
        Some(a) if volumes.len() >= 3 && (v < a / 2.0 || v > a * 2.0) => "warn",
        _ => "ok",
    };
    rows.push(("volume".into(), None, Some(v), avg(&volumes), status));

    if s.rows_accepted > 0 {
        // Each column's average null rate over the source's previous 10 runs.
        let baselines: HashMap<String, f64> = history(
            ctx.as_ref(),
            &format!(
                "SELECT column_name, avg(value) FROM (SELECT column_name, value, row_number() OVER \
                 (PARTITION BY column_name ORDER BY checked_at DESC) AS n FROM checks \
                 WHERE source = '{src}' AND check_name = 'null_rate') AS h WHERE n <= 10 GROUP BY column_name"
            ),
        )
        .await?
        .into_iter()
        .filter_map(|(k, v)| k.map(|k| (k, v)))
        .collect();
        for (i, col) in IDENTIFIERS.iter().enumerate() {
            let rate = 1.0 - s.identifiers_present[i] as f64 / s.rows_accepted as f64;
            let baseline = baselines.get(*col).copied();
            let status = match baseline {
                Some(b) if rate > b + 0.2 => "warn",
                _ => "ok",
            };
            rows.push((
                "null_rate".into(),
                Some(col.to_string()),
                Some(rate),
                baseline,
                status,
            ));
        }
    }
    if let Some(latest) = s.latest_occurred_us {
        let lag = (Utc::now().timestamp_micros() - latest) as f64 / 1e6;
        let status = if lag > FRESHNESS_WARN_SECONDS {
            "warn"
        } else {
            "ok"
        };
        rows.push((
            "freshness".into(),
            Some("occurred_at".into()),
            Some(lag),
            Some(FRESHNESS_WARN_SECONDS),
            status,
        ));
    }
    let n = rows.len();
    let now = Utc::now().timestamp_micros();
    let batch = RecordBatch::try_new(
        tables::checks(),
        vec![
            Arc::new(StringArray::from(vec![Some(s.run_id.clone()); n])),
            Arc::new(StringArray::from(vec![Some(s.source.clone()); n])),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.0.clone()),
            )),
            Arc::new(StringArray::from(
                rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.2).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                rows.iter().map(|r| r.3).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.4))),
            Arc::new(TimestampMicrosecondArray::from(vec![now; n]).with_timezone("UTC")),
        ],
    )?;
    append(
        lake,
        "quality",
        "checks",
        vec![batch],
        &format!("touchlake-checks:{}:{}", s.source, s.run_id),
        false,
    )
    .await?;
    Ok(())
}
