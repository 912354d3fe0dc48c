//! The HTTP event collector inside `touchlake serve` (enabled by `http_listen`): the
//! Segment HTTP tracking API — `POST /v1/track`, `/v1/identify`, `/v1/page`, `/v1/screen`,
//! `/v1/alias`, `/v1/group` and `/v1/batch` — authenticated by an `http` source's write
//! key (HTTP Basic user name, as Segment's libraries send it, or `writeKey` in the body).
//!
//! A request is answered 200 only after its events are in the source's write-ahead log in
//! the lake; the scheduler moves them into the tables (see
//! [`touchlake_ingest::collector`]). Limits: 32 KB per event and 500 KB per request, else
//! 400; a batch with any invalid event is refused as a whole (400, nothing stored), so a
//! client's retry cannot half-duplicate it.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde_json::{Value, json};
use touchlake_ingest::SourceDef;
use touchlake_ingest::collector::{self, MAX_BATCH_BYTES};
use touchlake_ingest::source::{self, SourceKind};

use crate::engine::Engine;

/// Serve the collector on `listener` until the process ends.
pub async fn serve(engine: Arc<Engine>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/{kind}", post(event))
        .route("/health", get(|| async { "ok" }))
        // Bodies over the limit are refused by our own check (400), not axum's 413.
        .layer(DefaultBodyLimit::max(MAX_BATCH_BYTES * 4))
        .with_state(engine);
    axum::serve(listener, app).await
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        axum::Json(json!({"success": false, "error": message.into()})),
    )
        .into_response()
}

/// The write key from `Authorization: Basic base64(key:)` or the body's `writeKey`.
fn write_key(headers: &HeaderMap, body: &Value) -> Option<String> {
    let from_header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64_decode(b.trim()))
        .map(|s| s.split(':').next().unwrap_or("").to_string());
    from_header.filter(|k| !k.is_empty()).or_else(|| {
        body.get("writeKey")
            .and_then(Value::as_str)
            .map(str::to_string)
    })
}

fn base64_decode(s: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).ok()?;
    String::from_utf8(bytes).ok()
}

async fn source_for_key(engine: &Engine, key: &str) -> Result<Option<SourceDef>, Response> {
    let defs = source::load_all(&engine.lake)
        .await
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    Ok(defs
        .into_iter()
        .find(|d| d.kind == SourceKind::Http && d.write_key.as_deref() == Some(key)))
}

async fn event(
    State(engine): State<Arc<Engine>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if body.len() > MAX_BATCH_BYTES {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "request of {} bytes is over the {MAX_BATCH_BYTES}-byte limit",
                body.len()
            ),
        );
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let Some(key) = write_key(&headers, &value) else {
        return error(StatusCode::UNAUTHORIZED, "missing write key");
    };
    let def = match source_for_key(&engine, &key).await {
        Ok(Some(d)) => d,
        Ok(None) => return error(StatusCode::UNAUTHORIZED, "unknown write key"),
        Err(r) => return r,
    };
    let received = Utc::now();
    let mut events = vec![];
    if kind == "batch" || kind == "import" {
        let Some(list) = value.get("batch").and_then(Value::as_array) else {
            return error(StatusCode::BAD_REQUEST, "a batch needs a \"batch\" array");
        };
        let sent_at = value.get("sentAt").and_then(Value::as_str);
        for (i, e) in list.iter().enumerate() {
            let Some(t) = e.get("type").and_then(Value::as_str) else {
                return error(StatusCode::BAD_REQUEST, format!("batch[{i}]: missing type"));
            };
            match collector::flatten_event(t, e, sent_at, received, new_id) {
                Ok(f) => events.push(f),
                Err(m) => return error(StatusCode::BAD_REQUEST, format!("batch[{i}]: {m}")),
            }
        }
    } else if collector::TYPES.contains(&kind.as_str()) {
        match collector::flatten_event(&kind, &value, None, received, new_id) {
            Ok(f) => events.push(f),
            Err(m) => return error(StatusCode::BAD_REQUEST, m),
        }
    } else {
        return error(StatusCode::NOT_FOUND, format!("no endpoint /v1/{kind}"));
    }
    match collector::wal_append(&engine.lake, &def.name, &events).await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"success": true}))).into_response(),
        Err(e) => {
            tracing::error!(source = %def.name, "collector cannot write its log: {e}");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot store events; retry",
            )
        }
    }
}

fn new_id() -> String {
    format!("tl-{}", touchlake_ingest::run::new_run_id())
}

#[cfg(test)]
mod tests {
    #[test]
    fn decodes_basic_auth() {
        assert_eq!(
            super::base64_decode("a2V5MTIzNDU2Og==").as_deref(),
            Some("key123456:")
        );
    }
}
