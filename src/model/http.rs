//! HTTP plumbing shared by the OpenAI providers: one pooled client per endpoint, retries with
//! exponential backoff and jitter (honouring `Retry-After`), connect / whole-request /
//! idle-between-chunks timeouts, and the SSE-to-event driver that feeds a [`Translate`]r.
//!
//! The driver is public so the benchmark and unit tests run exactly the code a live stream
//! runs: [`events_from_sse`] turns any stream of body chunks into raw events.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::StatusCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{EventStream, ModelError, ModelErrorKind, RawEvent};

/// Timeouts and retry policy of one endpoint. Every field is configurable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// How long establishing a TCP (and TLS) connection may take.
    pub connect_timeout: Duration,
    /// How long one model call may take from the request to the last event.
    pub request_timeout: Duration,
    /// How long the server may stay silent: before the response headers and between chunks.
    pub idle_timeout: Duration,
    /// Retries after the first attempt for 408/409/429/5xx and connections refused or reset
    /// before the response started.
    pub max_retries: u32,
    /// The first backoff; each retry doubles it, up to `backoff_max`.
    pub backoff_initial: Duration,
    /// The longest backoff (a `Retry-After` from the server may ask for longer, up to 60 s).
    pub backoff_max: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(600),
            idle_timeout: Duration::from_secs(120),
            max_retries: 2,
            backoff_initial: Duration::from_millis(500),
            backoff_max: Duration::from_secs(8),
        }
    }
}

/// The longest `Retry-After` honoured; a server asking for more gets this.
const RETRY_AFTER_CAP: Duration = Duration::from_secs(60);
/// A time that never comes in practice (ten years).
const FOREVER: Duration = Duration::from_secs(86_400 * 3650);

/// `now + d`, saturating at [`FOREVER`] so a huge configured timeout cannot overflow.
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d.min(FOREVER)).unwrap_or(now)
}

/// How much of an error body is quoted in a message.
const ERROR_BODY_QUOTE: usize = 600;

/// Where the API key came from, so an authentication failure can say what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// No key is sent (local servers).
    None,
    /// A literal `api_key` in the config.
    Literal,
    /// An environment variable, and whether it was set when the provider was built.
    Env {
        /// The variable's name.
        var: String,
        /// Whether it held a value.
        present: bool,
    },
}

impl KeySource {
    fn advice(&self) -> String {
        match self {
            KeySource::None => "no API key is configured: set `api_key_env` (the environment variable holding the key) in the model's config".into(),
            KeySource::Literal => "the key is the literal `api_key` of the model's config: replace it with a valid key".into(),
            KeySource::Env { var, present: true } => {
                format!("the key comes from the environment variable {var}: set it to a valid key")
            }
            KeySource::Env { var, present: false } => {
                format!("the key comes from the environment variable {var}, which is not set: set it to a valid key")
            }
        }
    }
}

/// One HTTP endpoint of a provider: base URL, credentials, the pooled client and its limits.
/// Cloning an `Arc<Endpoint>` shares the connection pool.
pub struct Endpoint {
    provider: String,
    base_url: String,
    client: reqwest::Client,
    auth: Option<HeaderValue>,
    key_source: KeySource,
    limits: HttpLimits,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("provider", &self.provider)
            .field("base_url", &self.base_url)
            .field("key_source", &self.key_source)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Why an endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The base URL is not an http(s) URL.
    #[error("base_url {0:?} is not an http:// or https:// URL: write it as e.g. https://api.openai.com/v1")]
    BadBaseUrl(String),
    /// The API key cannot be sent as a header.
    #[error("the API key holds characters that cannot be sent in an HTTP header (a newline or a control character?): check its value")]
    BadKey,
    /// The HTTP client could not be built.
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

impl Endpoint {
    /// An endpoint for `provider` (used in error messages) at `base_url` (e.g.
    /// `https://api.openai.com/v1`), sending `key` as a bearer token when given.
    pub fn new(
        provider: impl Into<String>,
        base_url: &str,
        key: Option<&str>,
        key_source: KeySource,
        limits: HttpLimits,
    ) -> Result<Endpoint, EndpointError> {
        let base_url = base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://"))
            || reqwest::Url::parse(&base_url).is_err()
        {
            return Err(EndpointError::BadBaseUrl(base_url));
        }
        let auth = match key {
            Some(k) if !k.is_empty() => {
                let mut v = HeaderValue::from_str(&format!("Bearer {k}"))
                    .map_err(|_| EndpointError::BadKey)?;
                v.set_sensitive(true);
                Some(v)
            }
            _ => None,
        };
        let loopback = reqwest::Url::parse(&base_url)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .is_some_and(|h| {
                h.eq_ignore_ascii_case("localhost")
                    || h.trim_matches(['[', ']'])
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            });
        let mut builder = reqwest::Client::builder();
        if loopback {
            // A server on this machine is never reached through an HTTP(S)_PROXY.
            builder = builder.no_proxy();
        }
        let client = builder
            .connect_timeout(limits.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .user_agent(concat!("callboard/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EndpointError::Client(e.to_string()))?;
        Ok(Endpoint {
            provider: provider.into(),
            base_url,
            client,
            auth,
            key_source,
            limits,
        })
    }

    /// The provider's name as used in messages.
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// The base URL, without a trailing slash.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The limits in force.
    pub fn limits(&self) -> &HttpLimits {
        &self.limits
    }

    fn who(&self) -> String {
        format!("{} at {}", self.provider, self.base_url)
    }

    /// Posts `body` to `{base_url}{path}` and streams the SSE answer through `translator`.
    /// Nothing happens until the returned stream is polled; dropping it (or `cancel`)
    /// closes the connection.
    pub fn stream_sse<T: Translate>(
        self: &Arc<Self>,
        path: &'static str,
        body: Bytes,
        extra_headers: BTreeMap<String, String>,
        cancel: CancellationToken,
        translator: T,
    ) -> EventStream {
        let ep = self.clone();
        let deadline = after(self.limits.request_timeout);
        let who: Arc<str> = self.who().into();
        let opened = async move {
            let headers = ep.headers(&extra_headers)?;
            ep.open(path, body, headers, deadline).await
        };
        let st = DriveState {
            phase: Phase::Opening(Box::pin(opened)),
            translator,
            pending: VecDeque::new(),
            deadline,
            request_timeout: self.limits.request_timeout,
            idle: self.limits.idle_timeout,
            who,
            events: 0,
        };
        futures::stream::unfold(st, drive)
            .take_until(cancel.cancelled_owned())
            .boxed()
    }

    fn headers(&self, extra: &BTreeMap<String, String>) -> Result<HeaderMap, ModelError> {
        let mut h = HeaderMap::with_capacity(4 + extra.len());
        h.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            reqwest::header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        if let Some(a) = &self.auth {
            h.insert(reqwest::header::AUTHORIZATION, a.clone());
        }
        for (k, v) in extra {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                ModelError::new(
                    ModelErrorKind::BadRequest,
                    format!("extra_headers: {k:?} is not a valid HTTP header name"),
                )
            })?;
            let value = HeaderValue::from_str(v).map_err(|_| {
                ModelError::new(
                    ModelErrorKind::BadRequest,
                    format!("extra_headers: the value of {k:?} cannot be sent in an HTTP header"),
                )
            })?;
            h.insert(name, value);
        }
        Ok(h)
    }

    /// Sends the request, retrying what is worth retrying; returns a response with a 2xx
    /// status whose body has not been read yet.
    async fn open(
        &self,
        path: &str,
        body: Bytes,
        headers: HeaderMap,
        deadline: Instant,
    ) -> Result<reqwest::Response, ModelError> {
        let url = format!("{}{}", self.base_url, path);
        let attempts = self.limits.max_retries + 1;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let send = self
                .client
                .post(&url)
                .headers(headers.clone())
                .body(body.clone())
                .send();
            let wait_until = deadline.min(after(self.limits.idle_timeout));
            let outcome = match tokio::time::timeout_at(wait_until, send).await {
                Ok(r) => r,
                Err(_) => {
                    let whole = Instant::now() >= deadline;
                    let failure = Failure {
                        error: ModelError::new(
                            ModelErrorKind::Timeout,
                            format!(
                                "{}: no response within {} ({})",
                                self.who(),
                                fmt_dur(if whole {
                                    self.limits.request_timeout
                                } else {
                                    self.limits.idle_timeout
                                }),
                                if whole {
                                    "request_timeout_ms"
                                } else {
                                    "idle_timeout_ms"
                                }
                            ),
                        ),
                        retry_after: None,
                        retryable: !whole,
                    };
                    match self.next_try(failure, attempt, attempts, deadline).await {
                        Ok(()) => continue,
                        Err(e) => return Err(e),
                    }
                }
            };
            let failure = match outcome {
                Ok(resp) if resp.status().is_success() && !is_json(resp.headers()) => {
                    return Ok(resp)
                }
                Ok(resp) if resp.status().is_success() => {
                    // A JSON body where an event stream was asked for: a server that ignored
                    // `stream: true`, or an error wrapped in a 200.
                    let body = read_body(resp, deadline, self.limits.idle_timeout).await;
                    return Err(ModelError::behavior(format!(
                        "{}: answered with JSON instead of an event stream (does it support stream: true?): {}",
                        self.who(),
                        error_detail(&body)
                    )));
                }
                Ok(resp) => self.status_failure(resp, deadline).await,
                Err(e) => self.transport_failure(&e),
            };
            self.next_try(failure, attempt, attempts, deadline).await?;
        }
    }

    /// Sleeps before the next attempt, or returns the final error.
    async fn next_try(
        &self,
        failure: Failure,
        attempt: u32,
        attempts: u32,
        deadline: Instant,
    ) -> Result<(), ModelError> {
        if !failure.retryable {
            return Err(failure.error);
        }
        if attempt >= attempts {
            let mut e = failure.error;
            e.message = format!("{} (gave up after {attempt} attempts)", e.message);
            return Err(e);
        }
        let delay = match failure.retry_after {
            Some(d) => d.min(RETRY_AFTER_CAP),
            None => backoff(&self.limits, attempt),
        };
        if after(delay) >= deadline {
            let mut e = failure.error;
            e.message = format!(
                "{} (no time left for another attempt within request_timeout_ms = {})",
                e.message,
                self.limits.request_timeout.as_millis()
            );
            return Err(e);
        }
        tracing::debug!(provider = %self.provider, attempt, ?delay, error = %failure.error, "retrying model request");
        tokio::time::sleep(delay).await;
        Ok(())
    }

    fn transport_failure(&self, e: &reqwest::Error) -> Failure {
        let timeout = e.is_timeout();
        let kind = if timeout {
            ModelErrorKind::Timeout
        } else {
            ModelErrorKind::Connection
        };
        let what = if e.is_connect() && timeout {
            format!(
                "could not connect within {} (connect_timeout_ms)",
                fmt_dur(self.limits.connect_timeout)
            )
        } else if e.is_connect() {
            "could not connect".to_owned()
        } else {
            "the connection failed before a response arrived".to_owned()
        };
        Failure {
            error: ModelError::new(
                kind,
                format!(
                    "{}: {what}: {}; check that the server is running and base_url is right",
                    self.who(),
                    error_chain(e)
                ),
            ),
            retry_after: None,
            // Connections refused, reset or timed out before the first byte are retried.
            retryable: e.is_connect() || e.is_request() || timeout,
        }
    }

    async fn status_failure(&self, resp: reqwest::Response, deadline: Instant) -> Failure {
        let status = resp.status();
        let retry_after = retry_after(resp.headers());
        let body = read_body(resp, deadline, self.limits.idle_timeout).await;
        let detail = error_detail(&body);
        let who = self.who();
        let (kind, message, retryable) = match status {
            StatusCode::UNAUTHORIZED => (
                ModelErrorKind::Authentication,
                format!(
                    "{who} refused the API key (401 Unauthorized): {detail}; {}",
                    self.key_source.advice()
                ),
                false,
            ),
            StatusCode::FORBIDDEN => (
                ModelErrorKind::PermissionDenied,
                format!(
                    "{who} denied access (403 Forbidden): {detail}; {}, and check that it may use this model",
                    self.key_source.advice()
                ),
                false,
            ),
            StatusCode::TOO_MANY_REQUESTS => (
                ModelErrorKind::RateLimit,
                format!("{who} is rate limiting (429 Too Many Requests): {detail}"),
                true,
            ),
            StatusCode::REQUEST_TIMEOUT | StatusCode::CONFLICT => (
                ModelErrorKind::InternalServer,
                format!("{who} answered {status}: {detail}"),
                true,
            ),
            s if s.is_server_error() => (
                ModelErrorKind::InternalServer,
                format!("{who} failed ({status}): {detail}"),
                true,
            ),
            _ => (
                ModelErrorKind::BadRequest,
                format!("{who} rejected the request ({status}): {detail}"),
                false,
            ),
        };
        Failure {
            error: ModelError::new(kind, message),
            retry_after,
            retryable,
        }
    }
}

fn is_json(h: &HeaderMap) -> bool {
    h.get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// The first 64 KiB of an error answer's body: what arrives within the idle timeout.
async fn read_body(mut resp: reqwest::Response, deadline: Instant, idle: Duration) -> Bytes {
    const LIMIT: usize = 64 * 1024;
    let mut buf = Vec::new();
    let read = async {
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.extend_from_slice(&chunk);
            if buf.len() >= LIMIT {
                buf.truncate(LIMIT);
                break;
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline.min(after(idle)), read).await;
    Bytes::from(buf)
}

struct Failure {
    error: ModelError,
    retry_after: Option<Duration>,
    retryable: bool,
}

/// Exponential backoff with jitter: `initial * 2^(attempt-1)`, capped, times a random
/// factor in [0.75, 1.0] so clients that failed together do not retry together.
fn backoff(limits: &HttpLimits, attempt: u32) -> Duration {
    let exp = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
    let base = limits
        .backoff_initial
        .saturating_mul(exp)
        .min(limits.backoff_max);
    let factor = rand::rng().random_range(0.75..=1.0);
    base.mul_f64(factor)
}

/// `retry-after-ms` (milliseconds) or `Retry-After` (seconds, or an HTTP date).
fn retry_after(h: &HeaderMap) -> Option<Duration> {
    if let Some(ms) = h
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
    {
        // try_from refuses negative, NaN and absurd values instead of panicking.
        if let Ok(d) = Duration::try_from_secs_f64(ms / 1000.0) {
            return Some(d);
        }
    }
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = (when.timestamp_millis() - chrono::Utc::now().timestamp_millis()).max(0);
    Some(Duration::from_millis(ms as u64))
}

/// The provider's own error message: `error.message` of a JSON body, else the body text.
fn error_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Wrapper {
        error: ErrorField,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum ErrorField {
        Obj { message: String },
        Text(String),
    }
    if let Ok(w) = serde_json::from_slice::<Wrapper>(body) {
        return match w.error {
            ErrorField::Obj { message } | ErrorField::Text(message) => message,
        };
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".into();
    }
    quote(text, ERROR_BODY_QUOTE)
}

/// The first `max` bytes of `s` (on a character boundary), marked when cut.
pub(crate) fn quote(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &s[..end], s.len())
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

fn fmt_dur(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

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
    let st = DriveState {
        phase: Phase::Streaming(sse_of(body.map(|r| {
            r.map_err(|e| TransportError {
                idle: None,
                message: e.to_string(),
            })
        }))),
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

type OpenFuture =
    Pin<Box<dyn std::future::Future<Output = Result<reqwest::Response, ModelError>> + Send>>;
type SseStream = Pin<
    Box<
        dyn Stream<Item = Result<eventsource_stream::Event, EventStreamError<TransportError>>>
            + Send,
    >,
>;

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

fn sse_of<S>(body: S) -> SseStream
where
    S: Stream<Item = Result<Bytes, TransportError>> + Send + 'static,
{
    Box::pin(body.eventsource())
}

enum Phase {
    Opening(OpenFuture),
    Streaming(SseStream),
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
                    st.phase = Phase::Streaming(sse_of(body));
                }
                Err(e) => {
                    st.phase = Phase::Done;
                    return Some((Err(e), st));
                }
            },
            Phase::Streaming(sse) => {
                let next = match tokio::time::timeout_at(st.deadline, sse.next()).await {
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
                let result = match next {
                    Some(Ok(ev)) => st
                        .translator
                        .on_event(&ev.event, &ev.data, &mut st.pending)
                        .map(|finished| {
                            if finished {
                                if let Phase::Streaming(rest) =
                                    std::mem::replace(&mut st.phase, Phase::Done)
                                {
                                    drain(rest);
                                }
                            }
                        }),
                    Some(Err(e)) => Err(stream_error(&st.who, st.events, e)),
                    None => {
                        st.phase = Phase::Done;
                        st.translator.on_end(&mut st.pending)
                    }
                };
                if let Err(e) = result {
                    st.phase = Phase::Done;
                    st.pending.clear();
                    return Some((Err(e), st));
                }
            }
        }
    }
}

/// How long the rest of a finished body may take to arrive before its connection is dropped.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Reads what follows a terminal event (the end of the chunked body) in the background, so the
/// connection goes back to the pool for the next turn instead of being closed.
fn drain(mut rest: SseStream) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ =
                tokio::time::timeout(DRAIN_LIMIT, async { while rest.next().await.is_some() {} })
                    .await;
        });
    }
}

fn stream_error(who: &str, events: u64, e: EventStreamError<TransportError>) -> ModelError {
    match e {
        EventStreamError::Transport(TransportError { idle: Some(d), .. }) => ModelError::new(
            ModelErrorKind::Timeout,
            format!(
                "{who}: the stream stalled: no data for {} (idle_timeout_ms) after {events} events",
                fmt_dur(d)
            ),
        ),
        EventStreamError::Transport(t) => ModelError::new(
            ModelErrorKind::Connection,
            format!("{who}: the connection broke mid-stream after {events} events: {t}"),
        ),
        EventStreamError::Utf8(e) => ModelError::behavior(format!(
            "{who}: the stream is not valid UTF-8 after {events} events: {e}"
        )),
        EventStreamError::Parser(e) => ModelError::behavior(format!(
            "{who}: malformed server-sent events after {events} events: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        let l = HttpLimits {
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_millis(1000),
            ..Default::default()
        };
        for (attempt, full) in [
            (1, 100u64),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            let d = backoff(&l, attempt).as_millis() as u64;
            assert!(d <= full && d >= full * 3 / 4, "attempt {attempt}: {d}");
        }
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("1e300"));
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn error_detail_prefers_the_provider_message() {
        assert_eq!(
            error_detail(
                br#"{"error":{"message":"bad tool schema","type":"invalid_request_error"}}"#
            ),
            "bad tool schema"
        );
        assert_eq!(error_detail(b"  upstream down "), "upstream down");
        assert_eq!(error_detail(b""), "(empty body)");
        assert!(quote(&"é".repeat(700), 601).ends_with("(1400 bytes)"));
    }
}
