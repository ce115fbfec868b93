//! Trace context for calls out of a run: the headers an HTTP or MCP tool call carries so the
//! service behind it can add its own spans under the tool's function span.
//!
//! Three headers, made from the current span (inside a tool: its function span):
//! - `traceparent`: W3C Trace Context, `00-<32 hex trace id>-<16 hex span id>-01`, the ids
//!   being those the `otlp` sink exports, so a service traced with OpenTelemetry nests its
//!   spans under the tool call in any OTLP backend;
//! - `x-callboard-trace-id` and `x-callboard-span-id`: the SDK's ids as they are
//!   (`trace_<32 hex>`, `span_<24 hex>`), for a service that sends SDK-shaped spans to
//!   `POST /v1/traces/ingest` with `trace_id` and `parent_id` set to them.
//!
//! ```
//! use callboard::trace::context::TraceContext;
//!
//! // Inside a tool (or any code run under a span), e.g. before an HTTP request:
//! if let Some(cx) = TraceContext::current() {
//!     for (name, value) in cx.headers() {
//!         println!("{name}: {value}"); // request.header(name, value)
//!     }
//! }
//! // A service reading them back:
//! let cx = TraceContext::from_headers(|name| match name {
//!     "x-callboard-trace-id" => Some("trace_0123456789abcdef0123456789abcdef"),
//!     "x-callboard-span-id" => Some("span_0123456789abcdef01234567"),
//!     _ => None,
//! })
//! .unwrap();
//! assert_eq!(cx.traceparent(), "00-0123456789abcdef0123456789abcdef-0123456789abcdef-01");
//! ```

use super::{current_span, Span};

/// The W3C Trace Context header.
pub const TRACEPARENT: &str = "traceparent";
/// The SDK trace id header.
pub const TRACE_ID_HEADER: &str = "x-callboard-trace-id";
/// The SDK span id header (the parent for the service's spans).
pub const SPAN_ID_HEADER: &str = "x-callboard-span-id";

/// A trace id and the span to nest under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// `trace_<32 hex>`.
    pub trace_id: String,
    /// `span_<24 hex>`.
    pub span_id: String,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(32), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

impl TraceContext {
    /// The context of `span`, when it records anything.
    pub fn of(span: &Span) -> Option<Self> {
        Some(TraceContext {
            trace_id: span.trace_id()?.to_owned(),
            span_id: span.span_id()?.to_owned(),
        })
    }

    /// The context of the current span (inside a tool: the tool's function span).
    pub fn current() -> Option<Self> {
        current_span().as_ref().and_then(Self::of)
    }

    /// The context a service received, from `x-callboard-trace-id` and
    /// `x-callboard-span-id` (`get` looks a header up by its lowercase name). `None` when
    /// either is missing or not an SDK id.
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        let trace_id = get(TRACE_ID_HEADER)?.trim();
        let span_id = get(SPAN_ID_HEADER)?.trim();
        (super::ids::is_trace_id(trace_id) && super::ids::is_span_id(span_id)).then(|| {
            TraceContext {
                trace_id: trace_id.to_owned(),
                span_id: span_id.to_owned(),
            }
        })
    }

    /// The W3C `traceparent` value (sampled), with the ids the `otlp` sink exports.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-01",
            hex(&super::ids::otel_id_bytes(&self.trace_id, 16)),
            hex(&super::ids::otel_id_bytes(&self.span_id, 8))
        )
    }

    /// The three headers, names in lowercase.
    pub fn headers(&self) -> [(&'static str, String); 3] {
        [
            (TRACEPARENT, self.traceparent()),
            (TRACE_ID_HEADER, self.trace_id.clone()),
            (SPAN_ID_HEADER, self.span_id.clone()),
        ]
    }
}

/// The headers of the current span's context (none outside a traced run).
pub fn current_headers() -> Vec<(&'static str, String)> {
    TraceContext::current()
        .map(|c| c.headers().to_vec())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{SpanData, TraceOptions, Tracer};

    #[tokio::test]
    async fn the_current_span_gives_all_three_headers() {
        assert!(current_headers().is_empty(), "no headers outside a run");
        let tracer = Tracer::new();
        tracer.set_disabled(false);
        let t = tracer.start_trace(TraceOptions::default());
        let span = t.span(
            SpanData::Custom {
                name: "tool".into(),
                data: serde_json::Value::Null,
            },
            None,
        );
        let (tid, sid) = (t.trace_id().to_owned(), span.span_id().unwrap().to_owned());
        let headers = crate::trace::with_span(span, async { current_headers() }).await;
        let get = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        assert_eq!(get(TRACE_ID_HEADER), tid);
        assert_eq!(get(SPAN_ID_HEADER), sid);
        let tp = get(TRACEPARENT);
        assert_eq!(tp, format!("00-{}-{}-01", &tid[6..], &sid[5..21]));
        let back = TraceContext::from_headers(|n| {
            headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.as_str())
        })
        .unwrap();
        assert_eq!((back.trace_id, back.span_id), (tid, sid));
        assert!(TraceContext::from_headers(|_| Some("nonsense")).is_none());
    }
}
