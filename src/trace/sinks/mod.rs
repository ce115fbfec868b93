//! Trace sinks: where batches of trace and span exports go. One trait, [`Sink`], and one
//! file per implementation: [`console`], [`jsonl`], `store` (feature `sqlite`), `openai`
//! (feature `openai`), `otlp` (feature `otlp`); their settings in [`settings`]. The
//! tracing actor runs each sink on a worker of its own with timeouts, so a sink only has to
//! do its job and report failures as [`SinkError`].

pub mod console;
pub mod jsonl;
#[cfg(feature = "openai")]
pub mod openai;
#[cfg(feature = "otlp")]
pub mod otlp;
pub mod settings;
#[cfg(feature = "sqlite")]
pub mod store;

use async_trait::async_trait;

use super::batch::ExportItem;

pub use console::ConsoleSink;
pub use jsonl::JsonlSink;
#[cfg(feature = "openai")]
pub use openai::OpenAiSink;
#[cfg(feature = "otlp")]
pub use otlp::OtlpSink;
pub use settings::{OpenAiSinkConfig, OtlpSinkConfig};
#[cfg(feature = "sqlite")]
pub use store::{StoreSink, TraceQuery, TraceStore, TraceSummary};

/// Why a sink could not take a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file could not be written.
    #[error("trace sink could not write {path}: {source}; check that the directory exists and is writable")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The embedded store failed.
    #[cfg(feature = "sqlite")]
    #[error("trace store error: {0}; check the store path and that no other process holds the database locked")]
    Store(#[from] rusqlite::Error),
    /// The receiver refused the batch (4xx); it is not retried.
    #[error("the trace receiver at {url} refused the batch with HTTP {status}: {body}")]
    Rejected {
        /// Where it was sent.
        url: String,
        /// HTTP status.
        status: u16,
        /// The start of the response body.
        body: String,
    },
    /// Every attempt failed with a server or network error.
    #[error("could not deliver traces to {url} after {attempts} attempts: {last}; check that the receiver is up and reachable")]
    Unreachable {
        /// Where it was sent.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// No API key for a sink that needs one.
    #[error("no API key for the {sink} trace sink: set the environment variable {env}")]
    MissingKey {
        /// The sink.
        sink: &'static str,
        /// The variable looked at.
        env: String,
    },
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

/// Where batches of trace exports go. Calls come one at a time from the sink's own worker;
/// a call that takes longer than the export timeout is abandoned and counted as failed.
#[async_trait]
pub trait Sink: Send + Sync + 'static {
    /// A short name for logs and metrics (`console`, `jsonl`, ...).
    fn name(&self) -> &str;
    /// Takes a batch: traces (at their start), trace ends, and finished spans, in order.
    async fn export(&self, batch: &[ExportItem]) -> Result<(), SinkError>;
    /// Makes everything taken so far durable or visible.
    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Flushes and lets go of resources; no call follows.
    async fn shutdown(&self) -> Result<(), SinkError> {
        self.flush().await
    }
}

/// The retry policy of the HTTP sinks: attempts, and a delay that starts at `base` and
/// doubles up to `max`, with up to 10% jitter (the SDK's exporter).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all (3).
    pub attempts: u32,
    /// First delay (1s).
    pub base: std::time::Duration,
    /// Longest delay (30s).
    pub max: std::time::Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            base: std::time::Duration::from_secs(1),
            max: std::time::Duration::from_secs(30),
        }
    }
}

/// POSTs `body` with retries: 2xx is success, 4xx is refused at once (not retried), 5xx and
/// network errors are retried per `policy`.
#[cfg(any(feature = "openai", feature = "otlp"))]
pub(crate) async fn post_with_retry(
    client: &reqwest::Client,
    url: &str,
    headers: &reqwest::header::HeaderMap,
    body: bytes::Bytes,
    policy: RetryPolicy,
) -> Result<(), SinkError> {
    use rand::Rng;
    let mut delay = policy.base;
    let mut last = String::new();
    let attempts = policy.attempts.max(1);
    for attempt in 1..=attempts {
        let res = client
            .post(url)
            .headers(headers.clone())
            .body(body.clone())
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if r.status().is_client_error() => {
                let status = r.status().as_u16();
                let mut text = r.text().await.unwrap_or_default();
                if text.len() > 500 {
                    let mut cut = 500;
                    while !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                tracing::error!(url, status, body = %text, "[non-fatal] tracing: the receiver refused the batch; dropped");
                return Err(SinkError::Rejected {
                    url: url.to_owned(),
                    status,
                    body: text,
                });
            }
            Ok(r) => {
                last = format!("HTTP {}", r.status().as_u16());
                tracing::warn!(
                    url,
                    status = r.status().as_u16(),
                    attempt,
                    "[non-fatal] tracing: server error; retrying"
                );
            }
            Err(e) => {
                last = e.to_string();
                tracing::warn!(url, error = %e, attempt, "[non-fatal] tracing: request failed; retrying");
            }
        }
        if attempt < attempts {
            let jitter = rand::rng().random_range(0.0..=0.1) * delay.as_secs_f64();
            tokio::time::sleep(delay + std::time::Duration::from_secs_f64(jitter)).await;
            delay = (delay * 2).min(policy.max);
        }
    }
    tracing::error!(
        url,
        attempts,
        "[non-fatal] tracing: max retries reached; batch dropped"
    );
    Err(SinkError::Unreachable {
        url: url.to_owned(),
        attempts,
        last,
    })
}
