//! The driver of a streamed model answer: the response body (idle timeout between chunks,
//! whole-request deadline) through the SSE framing (`super::sse`) into a [`Translate`]r, whose
//! raw events the stream yields; a finished body is drained in the background so its
//! connection goes back to the pool.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::time::Instant;

use super::failure::{error_chain, fmt_dur};
use super::sse::{FeedError, SseFramer};
use super::{after, HttpLimits, FOREVER};
use crate::model::{ModelError, ModelErrorKind, RawEvent};

/// Turns one API's SSE events into Responses-API raw events.
pub trait Translate: Send + 'static {
    /// Handles the `data` of one SSE event (`event` is its `event:` field, often empty),
    /// pushing zero or more raw events onto `out`. Returns `true` when the stream is
    /// finished (a terminal event was seen).
    fn on_event(
        &mut self,
        event: &str,
        data: &str,
        out: &mut VecDeque<RawEvent>,
    ) -> Result<bool, ModelError>;

    /// The body ended cleanly before a terminal event: push closing events or fail.
    fn on_end(&mut self, out: &mut VecDeque<RawEvent>) -> Result<(), ModelError>;
}

/// A body error, or silence longer than the idle timeout.
#[derive(Debug)]
pub enum BodyError<E> {
    /// The transport failed (connection reset, truncated chunked body, ...).
    Transport(E),
    /// No chunk arrived within the idle timeout.
    Idle(Duration),
}

impl<E: fmt::Display> fmt::Display for BodyError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::Transport(e) => write!(f, "{e}"),
            BodyError::Idle(d) => write!(f, "no data for {} ms", d.as_millis()),
        }
    }
}

pin_project_lite::pin_project! {
    /// A body stream that fails with [`BodyError::Idle`] when no chunk arrives in time.
    pub struct IdleTimeout<S> {
        #[pin]
        inner: S,
        #[pin]
        sleep: tokio::time::Sleep,
        idle: Duration,
        fired: bool,
    }
}

impl<S> IdleTimeout<S> {
    /// Wraps `inner`; the clock restarts with every chunk.
    pub fn new(inner: S, idle: Duration) -> Self {
        IdleTimeout {
            inner,
            sleep: tokio::time::sleep_until(after(idle)),
            idle,
            fired: false,
        }
    }
}

impl<S, E> Stream for IdleTimeout<S>
where
    S: Stream<Item = Result<Bytes, E>>,
{
    type Item = Result<Bytes, BodyError<E>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        if *this.fired {
            return Poll::Ready(None);
        }
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(item)) => {
                let idle = *this.idle;
                this.sleep.as_mut().reset(after(idle));
                Poll::Ready(Some(item.map_err(BodyError::Transport)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match std::future::Future::poll(this.sleep, cx) {
                Poll::Ready(()) => {
                    *this.fired = true;
                    Poll::Ready(Some(Err(BodyError::Idle(*this.idle))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Runs a stream of body chunks through the SSE parser and `translator`: the path every live
/// stream takes after the response headers. `who` names the provider in messages.
pub fn events_from_sse<S, E, T>(
    body: S,
    translator: T,
    who: &str,
) -> impl Stream<Item = Result<RawEvent, ModelError>> + Send + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'static,
    E: fmt::Display + Send + 'static,
    T: Translate,
{
    let body = body.map(|r| {
        r.map_err(|e| TransportError {
            idle: None,
            message: e.to_string(),
        })
    });
    let st = DriveState {
        phase: Phase::Streaming(Box::pin(body), SseFramer::new()),
        translator,
        pending: VecDeque::new(),
        deadline: after(FOREVER),
        request_timeout: FOREVER,
        idle: FOREVER,
        who: who.into(),
        events: 0,
    };
    futures::stream::unfold(st, drive)
}

pub(super) type OpenFuture =
    Pin<Box<dyn std::future::Future<Output = Result<reqwest::Response, ModelError>> + Send>>;
type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, TransportError>> + Send>>;

/// The events of the request `opened` sends: what `Endpoint::stream_sse` streams (before its
/// cancellation), under the endpoint's limits and the whole request's `deadline`.
pub(super) fn from_response<T: Translate>(
    opened: OpenFuture,
    translator: T,
    limits: &HttpLimits,
    deadline: Instant,
    who: Arc<str>,
) -> impl Stream<Item = Result<RawEvent, ModelError>> + Send + 'static {
    let st = DriveState {
        phase: Phase::Opening(opened),
        translator,
        pending: VecDeque::new(),
        deadline,
        request_timeout: limits.request_timeout,
        idle: limits.idle_timeout,
        who,
        events: 0,
    };
    futures::stream::unfold(st, drive)
}

/// What broke the body stream: silence past the idle timeout, or the transport.
#[derive(Debug)]
pub struct TransportError {
    /// Set when the idle timeout fired.
    idle: Option<Duration>,
    /// The transport's error, with its causes.
    message: String,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

enum Phase {
    Opening(OpenFuture),
    Streaming(BodyStream, SseFramer),
    Done,
}

struct DriveState<T> {
    phase: Phase,
    translator: T,
    pending: VecDeque<RawEvent>,
    deadline: Instant,
    request_timeout: Duration,
    idle: Duration,
    who: Arc<str>,
    events: u64,
}

async fn drive<T: Translate>(
    mut st: DriveState<T>,
) -> Option<(Result<RawEvent, ModelError>, DriveState<T>)> {
    loop {
        if let Some(ev) = st.pending.pop_front() {
            st.events += 1;
            return Some((Ok(ev), st));
        }
        match &mut st.phase {
            Phase::Done => return None,
            Phase::Opening(fut) => match fut.await {
                Ok(resp) => {
                    let body = IdleTimeout::new(resp.bytes_stream(), st.idle).map(|r| {
                        r.map_err(|e| match e {
                            BodyError::Idle(d) => TransportError {
                                idle: Some(d),
                                message: String::new(),
                            },
                            BodyError::Transport(t) => TransportError {
                                idle: None,
                                message: error_chain(&t),
                            },
                        })
                    });
                    st.phase = Phase::Streaming(Box::pin(body), SseFramer::new());
                }
                Err(e) => {
                    st.phase = Phase::Done;
                    return Some((Err(e), st));
                }
            },
            Phase::Streaming(body, framer) => {
                let next = match tokio::time::timeout_at(st.deadline, body.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        let e = ModelError::new(
                            ModelErrorKind::Timeout,
                            format!(
                                "{}: the response did not finish within {} (request_timeout_ms) after {} events",
                                st.who,
                                fmt_dur(st.request_timeout),
                                st.events
                            ),
                        );
                        st.phase = Phase::Done;
                        return Some((Err(e), st));
                    }
                };
                let (translator, pending) = (&mut st.translator, &mut st.pending);
                let result = match next {
                    Some(Ok(chunk)) => {
                        match framer.feed(&chunk, |event, data| {
                            translator.on_event(event, data, pending)
                        }) {
                            Ok(finished) => Ok(finished),
                            Err(FeedError::Event(e)) => Err(e),
                            Err(FeedError::Utf8(e)) => Err(ModelError::behavior(format!(
                                "{}: {e} after {} events",
                                st.who, st.events
                            ))),
                        }
                    }
                    Some(Err(e)) => Err(stream_error(&st.who, st.events, e)),
                    None => {
                        st.phase = Phase::Done;
                        st.translator.on_end(&mut st.pending).map(|()| false)
                    }
                };
                match result {
                    Ok(true) => {
                        // A terminal event: the rest of the body is read in the background.
                        if let Phase::Streaming(rest, _) =
                            std::mem::replace(&mut st.phase, Phase::Done)
                        {
                            drain(rest);
                        }
                    }
                    Ok(false) => {}
                    Err(e) => {
                        st.phase = Phase::Done;
                        st.pending.clear();
                        return Some((Err(e), st));
                    }
                }
            }
        }
    }
}

/// How long the rest of a finished body may take to arrive before its connection is dropped.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Reads what follows a terminal event (the end of the chunked body) in the background, so the
/// connection goes back to the pool for the next turn instead of being closed.
fn drain(mut rest: BodyStream) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ =
                tokio::time::timeout(DRAIN_LIMIT, async { while rest.next().await.is_some() {} })
                    .await;
        });
    }
}

fn stream_error(who: &str, events: u64, e: TransportError) -> ModelError {
    match e {
        TransportError { idle: Some(d), .. } => ModelError::new(
            ModelErrorKind::Timeout,
            format!(
                "{who}: the stream stalled: no data for {} (idle_timeout_ms) after {events} events",
                fmt_dur(d)
            ),
        ),
        t => ModelError::new(
            ModelErrorKind::Connection,
            format!("{who}: the connection broke mid-stream after {events} events: {t}"),
        ),
    }
}
