//! HTTP plumbing shared by the OpenAI providers: one pooled client per endpoint, retries with
//! exponential backoff and jitter (honouring `Retry-After`), connect / whole-request /
//! idle-between-chunks timeouts, and the SSE-to-event driver that feeds a [`Translate`]r.
//!
//! - this file: the endpoint, its limits and credentials, sending a request and retrying it;
//! - `failure`: what a failed attempt was (status, transport), backoff, `Retry-After`, the
//!   provider's error text;
//! - [`sse`]: server-sent events framing (no allocation per event);
//! - `stream`: the driver from the response body, through the framing, to a [`Translate`]r
//!   and its raw events.
//!
//! The driver is public so the benchmark and unit tests run exactly the code a live stream
//! runs: [`events_from_sse`] turns any stream of body chunks into raw events.

mod failure;
pub mod sse;
mod stream;

pub(crate) use failure::quote;
use failure::{backoff, error_detail, fmt_dur, is_json, read_body, Failure};
pub use stream::{events_from_sse, BodyError, IdleTimeout, Translate, TransportError};

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{EventStream, ModelError, ModelErrorKind};

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
        stream::from_response(Box::pin(opened), translator, &self.limits, deadline, who)
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
}
