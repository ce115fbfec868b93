//! The trace endpoints: `GET /v1/traces` (filters, newest first, paged), `GET
//! /v1/traces/{trace_id}`, `POST /v1/traces/ingest` (with its own body limit, `[tracing]
//! max_ingest_bytes`) and the trace browser page `GET /traces`. Every answer holds only the
//! caller's tenant's traces.

use axum::extract::{Path, Query, State};
use axum::response::Html;
use axum::Json;
use serde_json::json;

use crate::server::auth::Tenant;
use crate::server::error::ApiError;
use crate::server::AppState;
use crate::trace::sinks::store::{TraceQuery, TraceStore};

/// `GET /traces`: the trace browser (one page, its script and styles compiled in; it reads
/// the API key from `?access_token=` as the chat page does).
pub async fn page() -> Html<&'static str> {
    Html(include_str!("traces.html"))
}

fn store(st: &AppState) -> Result<TraceStore, ApiError> {
    st.core.trace_store().ok_or_else(|| {
        ApiError::NotImplemented(
            "the trace store is off: add \"store\" to [tracing] sinks to keep traces here".into(),
        )
    })
}

/// Runs a blocking store call on the blocking pool; store failures are logged and answered
/// `internal`.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::trace::SinkError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "trace store failed");
            ApiError::Internal
        })
}

/// Query of `GET /v1/traces`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct TracesQuery {
    /// Traces of this workflow.
    pub workflow_name: Option<String>,
    /// Traces of this group.
    pub group_id: Option<String>,
    /// Traces of this session (its runs' group id, unless a run set another).
    pub session_id: Option<String>,
    /// Traces in which this agent ran.
    pub agent: Option<String>,
    /// `true`: only traces with a span error.
    pub error: Option<String>,
    /// Traces started at or after this ISO-8601 time.
    pub since: Option<String>,
    /// Traces started before this ISO-8601 time (the next page: the answer's `next_until`).
    pub until: Option<String>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

fn flag(v: &Option<String>) -> Result<bool, ApiError> {
    match v.as_deref() {
        None | Some("") | Some("false") | Some("0") => Ok(false),
        Some("true") | Some("1") => Ok(true),
        Some(other) => Err(ApiError::BadRequest(format!(
            "error={} is not true or false",
            other.chars().take(20).collect::<String>()
        ))),
    }
}

/// `GET /v1/traces`: the tenant's stored traces, newest first, with `next_until` for the
/// next page (absent on the last).
pub async fn list(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Query(q): Query<TracesQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let store = store(&st)?;
    if q.group_id.is_some() && q.session_id.is_some() && q.group_id != q.session_id {
        return Err(ApiError::BadRequest(
            "give group_id or session_id, not two different ones".into(),
        ));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let query = TraceQuery {
        trace_id: None,
        workflow_name: q.workflow_name.filter(|s| !s.is_empty()),
        group_id: q.group_id.or(q.session_id).filter(|s| !s.is_empty()),
        tenant: Some(tenant.to_string()),
        agent: q.agent.filter(|s| !s.is_empty()),
        errors_only: flag(&q.error)?,
        since: q.since.filter(|s| !s.is_empty()),
        until: q.until.filter(|s| !s.is_empty()),
        limit: Some(limit + 1),
    };
    let mut list = blocking(move || store.list_traces(&query)).await?;
    let more = list.len() > limit as usize;
    list.truncate(limit as usize);
    let next = more
        .then(|| list.last().map(|t| t.created_at.clone()))
        .flatten();
    Ok(Json(json!({ "traces": list, "next_until": next })))
}

/// `GET /v1/traces/{trace_id}`: a trace and its spans (the SDK's export JSON), with the
/// store's `created_at` and `ended_at` (`null` while its run goes on).
pub async fn get(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Path(trace_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let store = store(&st)?;
    let id = trace_id.clone();
    let found = blocking(move || store.get_trace_full(&id, Some(&tenant))).await?;
    match found {
        Some(t) => Ok(Json(json!({
            "trace": t.trace,
            "spans": t.spans,
            "created_at": t.created_at,
            "ended_at": t.ended_at,
        }))),
        None => Err(ApiError::NotFound(format!(
            "no trace {}; GET /v1/traces lists yours",
            trace_id.chars().take(100).collect::<String>()
        ))),
    }
}

/// `POST /v1/traces/ingest`: the OpenAI trace-ingest body `{"data": [...]}` from SDK apps
/// and tool services, kept under the caller's tenant. Items with malformed ids or of
/// another tenant's trace are refused and counted in the answer; the rest are kept.
pub async fn ingest(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let limit = st.core.config.tracing.max_ingest_bytes;
    let body = body.map_err(|r| {
        if r.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge {
                limit,
                setting: "[tracing] max_ingest_bytes",
            }
        } else {
            ApiError::BadRequest(format!("the body could not be read: {}", r.body_text()))
        }
    })?;
    let store = store(&st)?;
    let mut v: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not JSON: {e}")))?;
    let Some(data) = v.get_mut("data").and_then(|d| d.as_array_mut()) else {
        return Err(ApiError::BadRequest(
            "the body must be {\"data\": [trace and span exports]}".into(),
        ));
    };
    let data = std::mem::take(data);
    let who = tenant.clone();
    let answer = blocking(move || store.ingest_for(&who, data)).await?;
    for (code, n) in &answer.refused_by_code {
        st.core
            .metrics
            .ingest_refused
            .get_or_create(&crate::service::metrics::CodeLabel {
                code: (*code).to_owned(),
            })
            .inc_by(*n as u64);
    }
    if answer.refused > 0 {
        tracing::info!(tenant = %tenant, refused = answer.refused, by_code = ?answer.refused_by_code, "trace ingest: items refused");
    }
    serde_json::to_value(&answer)
        .map(Json)
        .map_err(|_| ApiError::Internal)
}
