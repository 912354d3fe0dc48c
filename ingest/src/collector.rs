//! The event collector's lake side: Segment-compatible events are flattened to one JSON
//! object each, written to a write-ahead log in the lake (`_touchlake/wal/<source>/`)
//! before the HTTP request is answered, and moved from there into the source's pipeline
//! in micro-batches by [`flush`].
//!
//! Exactly-once from WAL to tables: a flush first writes a manifest naming the WAL
//! segments it takes (`_touchlake/wal/<source>/batches/<first segment>.json`), ingests
//! them under batch ids derived from the manifest's name, then deletes the segments and
//! last the manifest. A flush that finds a manifest finishes it before starting another,
//! so a crash at any point neither loses events nor writes a batch twice. Duplicate
//! `messageId`s (client retries) become the same `touchpoint_id` and count as duplicates.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Map, Value};
use touchlake_catalog::Lake;

use crate::error::{IngestError, Result};
use crate::read;
use crate::run::{self, RunSummary};
use crate::source::{Format, SourceDef};

/// Largest event accepted, in bytes of JSON.
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// Largest request body accepted (a batch), in bytes.
pub const MAX_BATCH_BYTES: usize = 500 * 1024;

/// Segment call types the collector accepts.
pub const TYPES: &[&str] = &["track", "identify", "page", "screen", "alias", "group"];

/// Flatten one Segment event of type `kind`, received at `received_at`, into the record
/// the source sees. Keys become snake_case (`messageId` → `message_id`), nested objects
/// are flattened with `_` (`context.page.url` → `context_page_url`, as Segment's
/// warehouse schemas do), arrays stay JSON text. `timestamp` is corrected for client clock
/// skew: `receivedAt − (sentAt − originalTimestamp)` when the client sent both.
pub fn flatten_event(
    kind: &str,
    event: &Value,
    sent_at: Option<&str>,
    received_at: DateTime<Utc>,
    message_id: impl FnOnce() -> String,
) -> std::result::Result<Map<String, Value>, String> {
    let Value::Object(obj) = event else {
        return Err("an event must be a JSON object".into());
    };
    if !TYPES.contains(&kind) {
        return Err(format!("unknown event type '{kind}'"));
    }
    let size = event.to_string().len();
    if size > MAX_EVENT_BYTES {
        return Err(format!(
            "event of {size} bytes is over the {MAX_EVENT_BYTES}-byte limit"
        ));
    }
    if kind == "track" && !obj.get("event").is_some_and(|e| e.is_string()) {
        return Err("a track call needs an event name".into());
    }
    if obj.get("userId").is_none_or(Value::is_null)
        && obj.get("anonymousId").is_none_or(Value::is_null)
    {
        return Err("an event needs userId or anonymousId".into());
    }
    let mut out = Map::new();
    out.insert("type".into(), Value::String(kind.into()));
    for (k, v) in obj {
        if k == "type" || k == "writeKey" || k == "sentAt" {
            continue;
        }
        flatten_into(&snake(k), v, &mut out);
    }
    if !out.contains_key("message_id") {
        out.insert("message_id".into(), Value::String(message_id()));
    }
    let parse = |v: Option<&str>| {
        v.and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|d| d.with_timezone(&Utc))
    };
    let original = parse(obj.get("timestamp").and_then(Value::as_str));
    let sent = parse(sent_at.or_else(|| obj.get("sentAt").and_then(Value::as_str)));
    if obj.get("timestamp").is_some_and(|t| !t.is_null()) && original.is_none() {
        return Err("timestamp is not an ISO 8601 date-time".into());
    }
    let corrected = match (original, sent) {
        (Some(o), Some(s)) => received_at - (s - o),
        (Some(o), None) => o,
        (None, _) => received_at,
    };
    let fmt = |d: DateTime<Utc>| Value::String(d.to_rfc3339_opts(SecondsFormat::Micros, true));
    if let Some(o) = original {
        out.insert("original_timestamp".into(), fmt(o));
    }
    if let Some(s) = sent {
        out.insert("sent_at".into(), fmt(s));
    }
    out.insert("timestamp".into(), fmt(corrected));
    out.insert("received_at".into(), fmt(received_at));
    Ok(out)
}

fn flatten_into(key: &str, v: &Value, out: &mut Map<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                flatten_into(&format!("{key}_{}", snake(k)), v, out);
            }
        }
        Value::Object(_) | Value::Null => {}
        Value::Array(_) => {
            out.insert(key.to_string(), Value::String(v.to_string()));
        }
        other => {
            out.insert(key.to_string(), other.clone());
        }
    }
}

/// `messageId` → `message_id`, `page.URL` → `page_url`.
fn snake(k: &str) -> String {
    let mut s = String::with_capacity(k.len() + 4);
    let mut prev_lower = false;
    for c in k.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else if c.is_alphanumeric() {
            s.push(c);
            prev_lower = c.is_lowercase() || c.is_ascii_digit();
        } else {
            s.push('_');
            prev_lower = false;
        }
    }
    s
}

/// The mapping an `http` source gets for the columns it does not map itself.
pub fn default_mapping() -> Vec<(&'static str, &'static str)> {
    vec![
        ("occurred_at", "timestamp"),
        (
            "event_type",
            "CASE type WHEN 'track' THEN lower(regexp_replace(trim(event), '[^A-Za-z0-9]+', '_', 'g')) \
             WHEN 'page' THEN 'page_view' WHEN 'screen' THEN 'screen_view' ELSE type END",
        ),
        ("user_id", "id_clean('user_id', user_id)"),
        // An alias names the earlier id in previousId: it becomes the row's anonymous_id, so
        // the identity run links it to userId.
        (
            "anonymous_id",
            "id_clean('anonymous_id', CASE WHEN type = 'alias' THEN coalesce(anonymous_id, previous_id) ELSE anonymous_id END)",
        ),
        ("email", "email_canonical(traits_email)"),
        ("phone", "phone_e164(traits_phone)"),
        ("campaign", "context_campaign_name"),
        (
            "content",
            "coalesce(properties_url, context_page_url, name)",
        ),
        ("device_id", "id_clean('device_id', context_device_id)"),
        ("revenue", "CAST(properties_revenue AS decimal(18,2))"),
        ("currency", "upper(properties_currency)"),
    ]
}

/// Append events (already flattened) to the source's write-ahead log. Returns once the
/// segment is stored in the lake; the segment's name orders it after earlier ones.
pub async fn wal_append(lake: &Lake, source: &str, events: &[Map<String, Value>]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut body = Vec::new();
    for e in events {
        body.extend_from_slice(Value::Object(e.clone()).to_string().as_bytes());
        body.push(b'\n');
    }
    let name = format!(
        "{:020}-{}.ndjson",
        Utc::now().timestamp_micros(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    lake.put_meta(&["wal", source, &name], body, true).await?;
    Ok(())
}

/// WAL segments and manifests of `source`, sorted by name.
async fn pending(lake: &Lake, source: &str) -> Result<(Vec<String>, Vec<String>)> {
    let mut segments = vec![];
    let mut manifests = vec![];
    for rel in lake.list_meta("wal").await? {
        let Some(rest) = rel.strip_prefix(&format!("{source}/")) else {
            continue;
        };
        if let Some(m) = rest.strip_prefix("batches/") {
            manifests.push(m.to_string());
        } else if !rest.contains('/') && rest.ends_with(".ndjson") {
            segments.push(rest.to_string());
        }
    }
    segments.sort();
    manifests.sort();
    Ok((segments, manifests))
}

/// Move what the source's WAL holds into the tables, at most `max_events` segments'
/// worth per batch (each segment is one request). Returns the runs it made.
pub async fn flush(lake: &Lake, def: &SourceDef, max_segments: usize) -> Result<Vec<RunSummary>> {
    let mut runs = vec![];
    loop {
        let (segments, manifests) = pending(lake, &def.name).await?;
        let (manifest, files) = if let Some(m) = manifests.first() {
            let body = lake
                .get_meta(&["wal", &def.name, "batches", m])
                .await?
                .unwrap_or_default();
            let files: Vec<String> = serde_json::from_slice(&body)
                .map_err(|e| IngestError::Read(format!("corrupt WAL manifest {m}: {e}")))?;
            (m.clone(), files)
        } else if segments.is_empty() {
            return Ok(runs);
        } else {
            let files: Vec<String> = segments.into_iter().take(max_segments.max(1)).collect();
            let m = format!("{}.json", files[0].trim_end_matches(".ndjson"));
            let body = serde_json::to_vec(&files)
                .map_err(|e| IngestError::Read(format!("WAL manifest: {e}")))?;
            lake.put_meta(&["wal", &def.name, "batches", &m], body, true)
                .await?;
            (m, files)
        };
        let mut text = String::new();
        for f in &files {
            // A segment already deleted was committed by an earlier attempt.
            if let Some(b) = lake.get_meta(&["wal", &def.name, f]).await? {
                text.push_str(&String::from_utf8_lossy(&b));
            }
        }
        let format = Format {
            kind: "ndjson".into(),
            ..def.format.clone()
        };
        let chunks = read::parse(&text, "wal", &format, def.batch_rows())?;
        let label = format!("wal:{}", manifest.trim_end_matches(".json"));
        let summary = run::run_chunks(lake, def, &label, chunks).await?;
        for f in &files {
            lake.delete_meta(&["wal", &def.name, f]).await?;
        }
        lake.delete_meta(&["wal", &def.name, "batches", &manifest])
            .await?;
        runs.push(summary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattens_and_corrects_clock_skew() {
        let received = DateTime::parse_from_rfc3339("2026-01-01T12:00:10Z")
            .unwrap()
            .with_timezone(&Utc);
        let e: Value = serde_json::json!({
            "messageId": "m1", "userId": "u1", "event": "Order Completed",
            "timestamp": "2026-01-01T11:00:00Z",
            "properties": {"revenue": 12.5, "items": [1, 2]},
            "context": {"page": {"url": "https://x/y"}}
        });
        // The client's clock is 1 h behind: sent at 11:00:05 by its clock.
        let out = flatten_event("track", &e, Some("2026-01-01T11:00:05Z"), received, || {
            "x".into()
        })
        .unwrap();
        assert_eq!(out["timestamp"], "2026-01-01T12:00:05.000000Z");
        assert_eq!(out["message_id"], "m1");
        assert_eq!(out["properties_revenue"], 12.5);
        assert_eq!(out["properties_items"], "[1,2]");
        assert_eq!(out["context_page_url"], "https://x/y");
        assert!(
            flatten_event(
                "track",
                &serde_json::json!({"userId": "u"}),
                None,
                received,
                || "x".into()
            )
            .is_err()
        );
        assert!(
            flatten_event(
                "page",
                &serde_json::json!({"name": "home"}),
                None,
                received,
                || "x".into()
            )
            .is_err()
        );
    }
}
