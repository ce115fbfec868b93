//! HTTP handlers: runs as JSON or SSE, SSE resume, session items, agents, health, readiness,
//! metrics and the chat page. The trace endpoints are in [`crate::server::traces`].

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use futures::Stream;
use serde::Deserialize;
use serde_json::json;

use crate::bus::{Delivery, Frame};
use crate::server::auth::Tenant;
use crate::server::error::ApiError;
use crate::server::AppState;
use crate::service::{Depth, Format, RunCreate};

/// `GET /`: the chat page.
pub async fn chat_page() -> Html<&'static str> {
    Html(include_str!("chat.html"))
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: ready for work (503 while shutting down, or while the session store's
/// database does not answer).
pub async fn readyz(State(st): State<AppState>) -> Response {
    if st.core.is_draining() {
        ApiError::ShuttingDown.into_response()
    } else if let Err(reason) = st.core.cluster_ready() {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": reason})),
        )
            .into_response()
    } else if let Err(e) = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        st.core.sessions.store().ready(),
    )
    .await
    .unwrap_or_else(|_| {
        Err(crate::session::SessionError::Store(
            "the session store did not answer within 2 s".into(),
        ))
    }) {
        (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not_ready", "reason": e.to_string()})),
        )
            .into_response()
    } else {
        Json(json!({"status": "ready", "agents": st.core.agent_infos.len()})).into_response()
    }
}

/// `GET /v1/cluster`: this node and the live nodes (404 without `[cluster]`).
pub async fn cluster(State(st): State<AppState>, _t: Tenant) -> Response {
    match st.core.cluster_status().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(State(st): State<AppState>, _a: crate::server::auth::Admin) -> Response {
    (
        [(header::CONTENT_TYPE, crate::service::metrics::CONTENT_TYPE)],
        st.core.metrics_text(),
    )
        .into_response()
}

/// `GET /v1/agents`.
pub async fn agents(State(st): State<AppState>, _t: Tenant) -> Json<serde_json::Value> {
    Json(json!({ "agents": st.core.agent_infos }))
}

/// `GET /v1/mcp_servers`: each MCP server's state (`starting`, `ready`, `restarting`,
/// `stopped`), its tools, restarts, last error and (stdio) process id.
pub async fn mcp_servers(State(st): State<AppState>, _t: Tenant) -> Json<serde_json::Value> {
    Json(json!({ "mcp_servers": st.core.mcp.statuses() }))
}

/// Query of run and event endpoints.
#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    /// Resume after this seq.
    #[serde(default)]
    pub after_seq: Option<u64>,
    /// `sdk` (default) or `chat`.
    #[serde(default)]
    pub format: Option<Format>,
    /// How deep into nested runs: `0` (default), a number, or `all`.
    #[serde(default)]
    pub depth: Option<Depth>,
    /// Browsers' way to send the key (read by the auth extractor).
    #[serde(default)]
    #[allow(dead_code)]
    pub access_token: Option<String>,
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

fn sse_event(frame: &Frame, format: Format) -> Option<Event> {
    let bytes = format.bytes(frame)?;
    let data = std::str::from_utf8(bytes).ok()?;
    Some(
        Event::default()
            .id(frame.seq.to_string())
            .event(format.event_name(frame))
            .data(data),
    )
}

/// `POST /v1/sessions/{session_id}/runs`: a run, answered with its end frame as JSON, or
/// with `Accept: text/event-stream` as an SSE stream of its frames.
pub async fn create_run(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Path(session_id): Path<String>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let core = st.core.clone();
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::FrameTooLarge {
                size: core.limits.max_frame_bytes + 1,
                limit: core.limits.max_frame_bytes,
            }
        } else {
            ApiError::BadRequest(format!(
                "the request body could not be read: {}",
                r.body_text()
            ))
        }
    })?;
    if body.len() > core.limits.max_frame_bytes {
        return Err(ApiError::FrameTooLarge {
            size: body.len(),
            limit: core.limits.max_frame_bytes,
        });
    }
    let mut req: RunCreate = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("the request body is not a valid run: {e}")))?;
    if req.frame_type.as_deref().is_some_and(|t| t != "run.create") {
        return Err(ApiError::BadRequest(
            "the body's `type` must be run.create (or absent)".into(),
        ));
    }
    if let Some(s) = &req.session_id {
        if *s != session_id {
            return Err(ApiError::BadRequest(
                "session_id in the body differs from the one in the path".into(),
            ));
        }
    }
    let format = q.format.or(req.format).unwrap_or_default();
    let depth = q.depth.or(req.depth).unwrap_or_default();
    let request_id = req.id.take();
    if !wants_sse(&headers) {
        let started = core.start_run(&tenant, &session_id, req).await?;
        let close = core.close_sockets.clone();
        // The end frame comes once the run is settled (recorded, the session free).
        let end = tokio::select! {
            f = started.end => f.ok(),
            _ = close.cancelled() => None,
        };
        return match end {
            Some(f) => Ok((
                [(header::CONTENT_TYPE, "application/json")],
                crate::wire::sdk::bytes(&f).clone(),
            )
                .into_response()),
            None => Err(ApiError::ShuttingDown),
        };
    }
    // SSE: a connection (counted against the connection limit) with a bounded subscription
    // of the session, taken before the run starts, filtered to this run. A client too slow
    // for it gets `lagged` and resumes with Last-Event-ID on GET .../events.
    let slot = core.connection_slot()?;
    let prepared = core.prepare_run(&tenant, &session_id, req).await?;
    let topic = prepared.topic().clone();
    let sub = topic
        .subscribe(Some(topic.last_seq()))
        .map_err(|_| ApiError::Internal)?;
    let accepted = json!({
        "type": "run.accepted",
        "id": request_id,
        "run_id": prepared.run_id(),
        "session_id": session_id,
        "trace_id": prepared.trace_id(),
        "epoch": prepared.epoch(),
    })
    .to_string();
    let started = prepared.launch().await?;
    let run_id: Arc<str> = started.run_id.as_str().into();
    let first = futures::stream::once(async move {
        Ok::<_, Infallible>(Event::default().event("run.accepted").data(accepted))
    });
    let stream = SseFrames {
        core: core.clone(),
        sid: session_id.as_str().into(),
        format,
        depth,
        run: Some(run_id),
        _slot: slot,
    };
    use futures::StreamExt;
    Ok(Sse::new(first.chain(stream.into_stream(sub)))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// Query of `GET /v1/sessions/{session_id}/events`.
#[derive(Debug, Default, Deserialize)]
pub struct EventsQuery {
    /// Resume after this seq.
    #[serde(default)]
    pub after_seq: Option<u64>,
    /// The epoch `after_seq` belongs to.
    #[serde(default)]
    pub epoch: Option<String>,
    /// `sdk` (default) or `chat`.
    #[serde(default)]
    pub format: Option<Format>,
    /// How deep into nested runs: `0` (default), a number, or `all`.
    #[serde(default)]
    pub depth: Option<Depth>,
    /// Browsers' way to send the key (read by the auth extractor).
    #[serde(default)]
    #[allow(dead_code)]
    pub access_token: Option<String>,
}

/// `GET /v1/sessions/{session_id}/events?after_seq=N&epoch=E`: SSE of the session's frames
/// after N (or after `Last-Event-ID`), then live ones; first a `session.subscribed` event with
/// the session's epoch. A session with no run yet is subscribable. Ends with a `lagged` event
/// if the client falls behind; reconnecting with `Last-Event-ID` resumes.
pub async fn session_events(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Path(session_id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let core = st.core.clone();
    let slot = core.connection_slot()?;
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let after = last_event_id.or(q.after_seq);
    #[cfg(feature = "nats")]
    if core.cluster().is_some() {
        return follow_remote(core, slot, tenant, session_id, after, q).await;
    }
    let subscribed = core
        .subscribe(&tenant, &session_id, after, q.epoch.as_deref())
        .await?;
    let ack = json!({
        "type": "session.subscribed",
        "session_id": session_id,
        "epoch": subscribed.epoch,
        "last_seq": subscribed.last_seq,
    })
    .to_string();
    let epoch = subscribed.epoch.clone();
    let first = futures::stream::once(async move {
        Ok::<_, Infallible>(Event::default().event("session.subscribed").data(ack))
    });
    let stream = SseFrames {
        core: core.clone(),
        sid: session_id.into(),
        format: q.format.unwrap_or_default(),
        depth: q.depth.unwrap_or_default(),
        run: None,
        _slot: slot,
    };
    use futures::StreamExt;
    let mut res = Sse::new(first.chain(stream.into_stream(subscribed.sub)))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    if let Ok(v) = epoch.parse() {
        res.headers_mut().insert("x-callboard-epoch", v);
    }
    Ok(res)
}

/// [`session_events`] in a cluster: the session's frames from the bus stream, so a run on
/// any node is followed with its seqs (as `session.subscribe` on a WebSocket).
#[cfg(feature = "nats")]
async fn follow_remote(
    core: Arc<crate::server::Core>,
    slot: crate::service::ConnectionSlot,
    tenant: Arc<str>,
    session_id: String,
    after: Option<u64>,
    q: EventsQuery,
) -> Result<Response, ApiError> {
    use crate::cluster::bus::RemoteDelivery;
    let (followed, epoch) = core
        .follow_remote(&tenant, &session_id, after, q.epoch.as_deref())
        .await?;
    let ack = json!({
        "type": "session.subscribed",
        "session_id": session_id,
        "epoch": epoch,
        "last_seq": followed.last_seq,
    })
    .to_string();
    let first = futures::stream::once(async move {
        Ok::<_, Infallible>(Event::default().event("session.subscribed").data(ack))
    });
    let (format, depth) = (q.format.unwrap_or_default(), q.depth.unwrap_or_default());
    let sid: Arc<str> = session_id.into();
    let counted = core.count_subscription();
    core.metrics
        .sse_streams_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let close = core.close_sockets.clone();
    let after_seq = after.unwrap_or(0);
    let ep = epoch.clone();
    let stream = futures::stream::unfold(
        (followed.follow, false, (slot, counted)),
        move |(mut follow, done, held)| {
            let (close, sid, ep) = (close.clone(), sid.clone(), ep.clone());
            async move {
                if done {
                    return None;
                }
                loop {
                    let d = tokio::select! {
                        d = follow.recv() => d,
                        _ = close.cancelled() => None,
                    }?;
                    match d {
                        RemoteDelivery::Frame(r) => {
                            if !depth.admits_depth(r.depth) {
                                continue;
                            }
                            let Some(f) = crate::cluster::relay::frame_of(&r, &sid) else {
                                continue;
                            };
                            if let Some(ev) = sse_event(&f, format) {
                                return Some((Ok(ev), (follow, false, held)));
                            }
                        }
                        RemoteDelivery::Truncated { oldest_seq } => {
                            let e = ApiError::HistoryTruncated {
                                after_seq,
                                oldest_seq,
                                epoch: Some(ep),
                            };
                            let ev = Event::default().event("error").data(e.frame(None));
                            return Some((Ok(ev), (follow, true, held)));
                        }
                    }
                }
            }
        },
    );
    use futures::StreamExt;
    let mut res = Sse::new(first.chain(stream))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    if let Ok(v) = epoch.parse() {
        res.headers_mut().insert("x-callboard-epoch", v);
    }
    Ok(res)
}

/// A session subscription as SSE events: a first-class subscriber like a WebSocket (its
/// connection counted against the limit, its subscription in `callboard_subscriptions`, a
/// `lagged` event and the end when it falls behind; the socket's write timeout is the
/// server's, see `crate::server::listener`). With `run`, only that run's frames, ending after
/// its end frame.
struct SseFrames {
    depth: Depth,
    core: Arc<crate::server::Core>,
    sid: Arc<str>,
    format: Format,
    run: Option<Arc<str>>,
    _slot: crate::service::ConnectionSlot,
}

impl SseFrames {
    fn into_stream(
        self,
        sub: crate::bus::Subscription,
    ) -> impl Stream<Item = Result<Event, Infallible>> {
        let counted = self.core.count_subscription();
        self.core
            .metrics
            .sse_streams_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let close = self.core.close_sockets.clone();
        futures::stream::unfold(
            (sub, false, self, counted),
            move |(mut sub, done, me, counted)| {
                let close = close.clone();
                async move {
                    if done {
                        return None;
                    }
                    loop {
                        let d = tokio::select! {
                            d = sub.recv() => d,
                            _ = close.cancelled() => None,
                        }?;
                        match d {
                            Delivery::Frame(f) => {
                                if me.run.as_ref().is_some_and(|r| f.run_id != *r)
                                    || !me.depth.admits(&f)
                                {
                                    continue;
                                }
                                let end = me.run.is_some() && f.body.is_terminal();
                                if let Some(ev) = sse_event(&f, me.format) {
                                    if !sub.replayed() {
                                        let mut b = crate::service::delivery::Batch::default();
                                        b.frame(f.published, std::time::Instant::now());
                                        me.core.metrics.delivery.sse.add(&b);
                                    }
                                    return Some((Ok(ev), (sub, end, me, counted)));
                                }
                            }
                            Delivery::Lagged { resume_after_seq } => {
                                crate::service::telemetry::Lagged {
                                    session_id: &me.sid,
                                    resume_after_seq,
                                    surface: "sse",
                                }
                                .emit(&me.core.metrics);
                                let data = json!({"type": "lagged", "session_id": &*me.sid, "resume_after_seq": resume_after_seq}).to_string();
                                return Some((
                                    Ok(Event::default().event("lagged").data(data)),
                                    (sub, true, me, counted),
                                ));
                            }
                            Delivery::Reset { epoch } => {
                                let e = ApiError::HistoryTruncated {
                                    after_seq: sub.last_seq(),
                                    oldest_seq: 1,
                                    epoch: Some(epoch),
                                };
                                let ev = Event::default().event("error").data(e.frame(None));
                                return Some((Ok(ev), (sub, true, me, counted)));
                            }
                        }
                    }
                }
            },
        )
    }
}

/// `GET /v1/sessions/{session_id}/items`: the session's conversation items.
pub async fn session_items(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Path(session_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let items = st.core.session_items(&tenant, &session_id).await?;
    Ok(Json(json!({ "session_id": session_id, "items": items })))
}

/// `GET /v1/sessions`: the tenant's sessions.
pub async fn list_sessions(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
) -> Result<Json<serde_json::Value>, ApiError> {
    let sessions = st.core.list_sessions(&tenant).await?;
    Ok(Json(json!({ "sessions": sessions })))
}

/// `GET /v1/runs/{run_id}/state`: the run's state as its last turn end saved it.
pub async fn run_state(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Path(run_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(st.core.run_state(&tenant, &run_id).await?))
}

/// Body of `POST /v1/runs/{run_id}/decisions`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// The pending call.
    pub call_id: String,
    /// `approve` or `reject`.
    pub decision: DecisionKind,
    /// With `approve`: every later call of that tool in this run too.
    #[serde(default)]
    pub always: bool,
    /// With `reject`: what the model reads instead of the SDK's rejection message.
    #[serde(default)]
    pub message: Option<String>,
}

/// A decision.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    /// Run the call.
    Approve,
    /// Do not run it; the model reads the rejection message.
    Reject,
}

/// `POST /v1/runs/{run_id}/decisions`: approves or rejects a pending tool call of a paused
/// run; the run resumes when every pending call is decided. Answers 204.
pub async fn run_decision(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Path(run_id): Path<String>,
    body: Result<Json<DecisionBody>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(b) = body.map_err(|r| {
        ApiError::BadRequest(format!("the decision is not valid: {}", r.body_text()))
    })?;
    let decision = crate::run::state::Decision {
        approved: b.decision == DecisionKind::Approve,
        message: if b.decision == DecisionKind::Reject {
            b.message
        } else {
            None
        },
    };
    let always = b.always && b.decision == DecisionKind::Approve;
    st.core
        .decide(&tenant, &run_id, &b.call_id, decision, always)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Query of `GET /v1/runs`.
#[derive(Debug, Default, Deserialize)]
pub struct RunsQuery {
    /// Runs of this session.
    pub session_id: Option<String>,
    /// Runs with this status (`running`, `completed`, ...).
    pub status: Option<String>,
    /// At most this many (default 100, at most 1000), newest first.
    pub limit: Option<usize>,
}

/// `GET /v1/runs?session_id=&status=`: the tenant's runs, newest first.
pub async fn list_runs(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Query(q): Query<RunsQuery>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(crate::session::RunStatus::parse(s).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "unknown run status `{}`",
                s.chars().take(40).collect::<String>()
            ))
        })?),
    };
    let query = crate::session::RunQuery {
        session_id: q.session_id,
        status,
        limit: q.limit.unwrap_or(100).min(1000),
    };
    Ok(Json(
        json!({ "runs": st.core.list_runs(&tenant, &query).await? }),
    ))
}

/// `GET /v1/runs/{run_id}`: the record of one of the tenant's runs.
pub async fn get_run(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Path(run_id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    Ok(Json(st.core.get_run(&tenant, &run_id).await?))
}

/// `DELETE /v1/sessions/{session_id}`: clears the session.
pub async fn delete_session(
    State(st): State<AppState>,
    Tenant(tenant): Tenant,
    Path(session_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    st.core.delete_session(&tenant, &session_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Any other path.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint; see the README for the HTTP API".into())
}
