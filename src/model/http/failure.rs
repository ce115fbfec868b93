//! What a failed attempt was: a status answer (with the provider's own message and what to
//! fix) or a transport failure, whether it is worth another try, and how long to wait
//! (exponential backoff with jitter, `Retry-After`).

use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use tokio::time::Instant;

use super::{after, Endpoint, HttpLimits, ERROR_BODY_QUOTE};
use crate::model::{ModelError, ModelErrorKind};

impl Endpoint {
    pub(super) fn transport_failure(&self, e: &reqwest::Error) -> Failure {
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

    pub(super) async fn status_failure(
        &self,
        resp: reqwest::Response,
        deadline: Instant,
    ) -> Failure {
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

pub(super) fn is_json(h: &HeaderMap) -> bool {
    h.get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"))
}

/// The first 64 KiB of an error answer's body: what arrives within the idle timeout.
pub(super) async fn read_body(
    mut resp: reqwest::Response,
    deadline: Instant,
    idle: Duration,
) -> Bytes {
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

/// A failed attempt: the error, how long the server asked to wait, and whether to retry.
pub(super) struct Failure {
    pub(super) error: ModelError,
    pub(super) retry_after: Option<Duration>,
    pub(super) retryable: bool,
}

/// Exponential backoff with jitter: `initial * 2^(attempt-1)`, capped, times a random
/// factor in [0.75, 1.0] so clients that failed together do not retry together.
pub(super) fn backoff(limits: &HttpLimits, attempt: u32) -> Duration {
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
pub(super) fn error_detail(body: &[u8]) -> String {
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

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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

pub(super) fn fmt_dur(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

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
