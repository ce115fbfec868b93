//! What the AI SDK and AG-UI endpoints share: reading a body, starting a run (subscribed
//! before it starts) or answering the client-side tool calls a run waits on, finding a run
//! still in progress, and following one run on the session bus as an SSE body in a wire
//! encoder. A stream is one more subscriber of the session: `/v1/ws` clients follow the same
//! run at the same time.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::http::{header, StatusCode};
use axum::response::Response;
use futures::Stream;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::bus::{Delivery, Frame, FrameBody, Subscription, Topic};
use crate::items::RunInput;
use crate::server::error::ApiError;
use crate::server::Core;
use crate::service::RunCreate;
use crate::wire::ai_sdk::Flow;
use crate::wire::ui::{UiEvent, UiRun};

/// Idle time after which an SSE comment keeps proxies from closing the stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// Frames ready at once are encoded into one chunk of at most about this many bytes.
const BATCH_BYTES: usize = 32 * 1024;

/// A wire encoder of one run.
pub(crate) trait RunEncoder: Send + 'static {
    /// What opens the stream (`start`, `RUN_STARTED`).
    fn start(&mut self, out: &mut Vec<u8>);
    /// Encodes one frame.
    fn push(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Flow;
    /// Ends the stream with an error the protocol can show.
    fn fail(&mut self, error: &ApiError, out: &mut Vec<u8>);
}

impl RunEncoder for crate::wire::ai_sdk::AiSdkStream {
    fn start(&mut self, out: &mut Vec<u8>) {
        crate::wire::ai_sdk::AiSdkStream::start(self, out)
    }
    fn push(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Flow {
        crate::wire::ai_sdk::AiSdkStream::push(self, frame, out)
    }
    fn fail(&mut self, error: &ApiError, out: &mut Vec<u8>) {
        crate::wire::ai_sdk::AiSdkStream::fail(self, &error.to_string(), out)
    }
}

impl RunEncoder for crate::wire::ag_ui::AgUiStream {
    fn start(&mut self, out: &mut Vec<u8>) {
        crate::wire::ag_ui::AgUiStream::start(self, out)
    }
    fn push(&mut self, frame: &Frame, out: &mut Vec<u8>) -> Flow {
        crate::wire::ag_ui::AgUiStream::push(self, frame, out)
    }
    fn fail(&mut self, error: &ApiError, out: &mut Vec<u8>) {
        crate::wire::ag_ui::AgUiStream::fail(self, error.code(), &error.to_string(), out)
    }
}

/// A body within the limits, or the error that says why not.
pub(crate) fn read_body(
    core: &Core,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
    let limit = core.limits.max_frame_bytes;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::FrameTooLarge {
                size: limit + 1,
                limit,
            }
        } else {
            ApiError::BadRequest(format!(
                "the request body could not be read: {}",
                r.body_text()
            ))
        }
    })?;
    if body.len() > limit {
        return Err(ApiError::FrameTooLarge {
            size: body.len(),
            limit,
        });
    }
    Ok(body)
}

/// One run to follow: its topic, its id, and a subscription placed where the stream starts,
/// holding a place under the connection limit.
pub(crate) struct Follow {
    pub slot: crate::service::ConnectionSlot,
    pub topic: Arc<Topic>,
    pub run_id: String,
    pub sub: Subscription,
    /// The agent running where the stream starts, when known.
    pub agent: Option<String>,
}

/// Starts a run of `agent` on `text` in the session, subscribed before it starts.
pub(crate) async fn start_run(
    core: &Arc<Core>,
    tenant: &Arc<str>,
    session_id: &str,
    agent: &str,
    text: String,
    metadata: Value,
) -> Result<Follow, ApiError> {
    // Built through serde so that run options added later keep their defaults here.
    let req: RunCreate = serde_json::from_value(serde_json::json!({
        "agent": agent,
        "input": RunInput::Text(text),
        "metadata": metadata,
    }))
    .map_err(|e| ApiError::BadRequest(format!("the run could not be made: {e}")))?;
    let slot = core.connection_slot()?;
    let prepared = core.prepare_run(tenant, session_id, req).await?;
    let topic = prepared.topic().clone();
    let sub = topic
        .subscribe(Some(topic.last_seq()))
        .map_err(|_| ApiError::Internal)?;
    let started = prepared.launch().await?;
    Ok(Follow {
        slot,
        topic,
        run_id: started.run_id,
        sub,
        agent: None,
    })
}

/// The frames the session still retains, oldest first.
fn retained(topic: &Topic) -> Vec<Arc<Frame>> {
    let sub = match topic.subscribe(Some(0)) {
        Ok(s) => Ok(s),
        Err(e) => topic.subscribe(Some(e.oldest_seq.saturating_sub(1))),
    };
    let mut frames = Vec::new();
    if let Ok(mut sub) = sub {
        let last = topic.last_seq();
        while let Some(Delivery::Frame(f)) = sub.try_recv() {
            let seq = f.seq;
            frames.push(f);
            if seq >= last {
                break;
            }
        }
    }
    frames
}

/// Answers client-side tool calls (`(call_id, output)`) of the session's run that waits for
/// them, and returns that run with a subscription from where its stream paused (so the
/// continuation repeats nothing the client has). The call ids actually answered come back
/// too; calls the run does not wait for are an error.
pub(crate) async fn answer_tool_calls(
    core: &Arc<Core>,
    tenant: &str,
    session_id: &str,
    answers: Vec<(String, String)>,
) -> Result<(Follow, Vec<String>), ApiError> {
    let nothing = || {
        ApiError::BadRequest(format!(
            "the last message answers no tool call that a run of session `{}` waits for \
             (a new message must come from the user)",
            session_id.chars().take(100).collect::<String>()
        ))
    };
    let topic = core
        .sessions
        .active_owner(tenant, session_id)
        .and_then(|o| o.topic())
        .ok_or_else(nothing)?;
    let frames = retained(&topic);
    // The run: the one whose tool.call frame names an answered call, latest first.
    let run_id = frames
        .iter()
        .rev()
        .find_map(|f| match &f.body {
            FrameBody::ToolCall { call_id, .. } if answers.iter().any(|(c, _)| c == call_id) => {
                Some(f.run_id.clone())
            }
            _ => None,
        })
        .ok_or_else(nothing)?;
    // Where its stream paused: the last time the run waited on its clients only.
    let mut ui = UiRun::new();
    let mut paused_at = None;
    for f in frames.iter().filter(|f| f.run_id == run_id) {
        let mut paused = false;
        ui.push(f, &mut |e| paused |= matches!(e, UiEvent::AwaitingClient));
        if paused {
            paused_at = Some(f.seq);
        }
    }
    let waiting: Vec<String> = ui.client_calls().map(str::to_owned).collect();
    let answers: Vec<(String, String)> = answers
        .into_iter()
        .filter(|(c, _)| waiting.contains(c))
        .collect();
    let after = match paused_at {
        Some(seq) if ui.awaiting_client() && !answers.is_empty() => seq,
        _ => return Err(nothing()),
    };
    // Subscribed before answering, so the frames the answers cause are all seen.
    let slot = core.connection_slot()?;
    let sub = topic
        .subscribe(Some(after))
        .map_err(|e| ApiError::HistoryTruncated {
            after_seq: after,
            oldest_seq: e.oldest_seq,
            epoch: None,
        })?;
    let mut answered = Vec::with_capacity(answers.len());
    for (call_id, output) in answers {
        core.tool_result_any(tenant, &run_id, &call_id, output)
            .await?;
        answered.push(call_id);
    }
    Ok((
        Follow {
            slot,
            topic,
            run_id: run_id.to_string(),
            sub,
            agent: ui.agent().map(str::to_owned),
        },
        answered,
    ))
}

/// A user's decision on a tool call waiting for approval.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Approval {
    /// The call.
    pub call_id: String,
    /// Run it, or not.
    pub approved: bool,
    /// Why not (the model reads it instead of the SDK's rejection message).
    pub reason: Option<String>,
}

/// Decides the calls the session's paused run waits on, subscribed first so that the
/// resumed run's frames are all seen; the run resumes when every pending call is decided.
pub(crate) async fn decide_approvals(
    core: &Arc<Core>,
    tenant: &Arc<str>,
    session_id: &str,
    decisions: Vec<Approval>,
) -> Result<Follow, ApiError> {
    let owner = core.sessions.owner(tenant, session_id).await?;
    let run_id = owner.current_run().ok_or_else(|| {
        ApiError::Conflict(format!(
            "no run of session `{}` waits for approval",
            session_id.chars().take(100).collect::<String>()
        ))
    })?;
    let topic = owner.topic().ok_or(ApiError::Internal)?;
    let slot = core.connection_slot()?;
    let sub = topic
        .subscribe(Some(topic.last_seq()))
        .map_err(|_| ApiError::Internal)?;
    for d in decisions {
        let decision = crate::run::state::Decision {
            approved: d.approved,
            message: if d.approved { None } else { d.reason },
        };
        core.decide(tenant, &run_id, &d.call_id, decision, false)
            .await?;
    }
    Ok(Follow {
        slot,
        topic,
        run_id: run_id.to_string(),
        sub,
        agent: None,
    })
}

/// The session's run in progress, with a subscription from its first retained frame (a
/// resumed stream replays the run from its start); `None` when no run holds the session.
pub(crate) fn run_in_progress(
    core: &Arc<Core>,
    tenant: &str,
    session_id: &str,
) -> Result<Option<Follow>, ApiError> {
    let Some(owner) = core.sessions.active_owner(tenant, session_id) else {
        return Ok(None);
    };
    let (Some(run_id), Some(topic)) = (owner.current_run(), owner.topic()) else {
        return Ok(None);
    };
    let frames = retained(&topic);
    // From the run's first retained frame; from the oldest retained one if it has none yet.
    let after = frames
        .iter()
        .find(|f| f.run_id == run_id)
        .or(frames.first())
        .map_or(topic.last_seq(), |f| f.seq - 1);
    let slot = core.connection_slot()?;
    let Ok(sub) = topic.subscribe(Some(after)) else {
        return Ok(None);
    };
    Ok(Some(Follow {
        slot,
        topic,
        run_id: run_id.to_string(),
        sub,
        agent: None,
    }))
}

/// The text of a tool output given as JSON: a string as it is, anything else as JSON text.
pub(crate) fn output_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// The SSE response following `follow` through `enc`, with extra headers.
pub(crate) fn sse_response<E: RunEncoder>(
    core: &Arc<Core>,
    follow: Follow,
    enc: E,
    surface: &'static str,
    extra: &[(&'static str, &'static str)],
) -> Response {
    let body = Body::from_stream(frames(core, follow, enc, surface));
    let mut res = Response::new(body);
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache"),
    );
    h.insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    for (k, v) in extra {
        h.insert(*k, header::HeaderValue::from_static(v));
    }
    res
}

struct State<E> {
    _slot: crate::service::ConnectionSlot,
    _counted: crate::service::SubscriptionCount,
    enc: E,
    sub: Subscription,
    topic: Arc<Topic>,
    core: Arc<Core>,
    close: CancellationToken,
    surface: &'static str,
    first: Option<Vec<u8>>,
    done: bool,
    /// Publishing times of the live frames in the bytes being made.
    live: Vec<std::time::Instant>,
}

impl<E: RunEncoder> State<E> {
    /// Encodes `f` and whatever else is ready, up to a batch.
    fn encode(&mut self, f: &Frame, out: &mut Vec<u8>) {
        self.stamp(f);
        if self.enc.push(f, out) == Flow::Done {
            self.done = true;
            return;
        }
        while out.len() < BATCH_BYTES {
            match self.sub.try_recv() {
                Some(Delivery::Frame(f)) => {
                    self.stamp(&f);
                    if self.enc.push(&f, out) == Flow::Done {
                        self.done = true;
                        return;
                    }
                }
                Some(Delivery::Lagged { resume_after_seq }) => {
                    self.lagged(resume_after_seq, out);
                    return;
                }
                Some(Delivery::Reset { .. }) => {
                    self.deleted(out);
                    return;
                }
                None => return,
            }
        }
    }

    /// Notes a live frame's publishing time (not one replayed from history).
    fn stamp(&mut self, f: &Frame) {
        if !self.sub.replayed() {
            self.live.push(f.published);
        }
    }

    /// Observes the live frames of the bytes handed to the HTTP body now.
    fn observe(&mut self) {
        if self.live.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let mut b = crate::service::delivery::Batch::default();
        for p in self.live.drain(..) {
            b.frame(p, now);
        }
        self.core.metrics.delivery.sse.add(&b);
    }

    /// The session was deleted (its numbering restarted): the run is gone with it.
    fn deleted(&mut self, out: &mut Vec<u8>) {
        self.enc.fail(
            &ApiError::NotFound("the session was deleted while its run streamed".into()),
            out,
        );
        self.done = true;
    }

    /// Falls back on history after the live ring skipped this stream ahead.
    fn lagged(&mut self, resume_after_seq: u64, out: &mut Vec<u8>) {
        crate::service::telemetry::Lagged {
            session_id: self.topic.session_id(),
            resume_after_seq,
            surface: self.surface,
        }
        .emit(&self.core.metrics);
        match self.topic.subscribe(Some(resume_after_seq)) {
            Ok(sub) => self.sub = sub,
            Err(e) => {
                self.enc.fail(
                    &ApiError::HistoryTruncated {
                        after_seq: resume_after_seq,
                        oldest_seq: e.oldest_seq,
                        epoch: None,
                    },
                    out,
                );
                self.done = true;
            }
        }
    }
}

/// The SSE bytes of one run: what opens the stream, then the frames as they come (keep-alive
/// comments while idle), until the encoder's end, the session's deletion or shutdown.
fn frames<E: RunEncoder>(
    core: &Arc<Core>,
    follow: Follow,
    mut enc: E,
    surface: &'static str,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let mut first = Vec::with_capacity(256);
    enc.start(&mut first);
    core.metrics
        .sse_streams_total
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let st = State {
        _slot: follow.slot,
        _counted: core.count_subscription(),
        enc,
        sub: follow.sub,
        topic: follow.topic,
        core: core.clone(),
        close: core.close_sockets.clone(),
        surface,
        first: Some(first),
        done: false,
        live: Vec::new(),
    };
    futures::stream::unfold(st, |mut st| async move {
        if let Some(first) = st.first.take() {
            return Some((Ok(Bytes::from(first)), st));
        }
        loop {
            if st.done {
                return None;
            }
            let close = st.close.clone();
            let d = tokio::select! {
                d = tokio::time::timeout(KEEP_ALIVE, st.sub.recv()) => d,
                _ = close.cancelled() => return None,
            };
            let mut out = Vec::with_capacity(512);
            match d {
                Err(_) => return Some((Ok(Bytes::from_static(b": keep-alive\n\n")), st)),
                Ok(Some(Delivery::Frame(f))) => st.encode(&f, &mut out),
                Ok(Some(Delivery::Lagged { resume_after_seq })) => {
                    st.lagged(resume_after_seq, &mut out)
                }
                Ok(Some(Delivery::Reset { .. })) | Ok(None) => st.deleted(&mut out),
            }
            st.observe();
            if !out.is_empty() {
                return Some((Ok(Bytes::from(out)), st));
            }
        }
    })
}
