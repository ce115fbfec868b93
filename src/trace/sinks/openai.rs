//! The `openai` sink: the SDK's trace exporter. `POST {base_url}/traces/ingest` with
//! `Authorization: Bearer`, `OpenAI-Beta: traces=v1` and body `{"data":[...]}`; 5xx and
//! network errors are retried with backoff, 4xx are dropped with the reason logged; span
//! inputs and outputs over 100,000 bytes of JSON are cut with `"... [truncated]"`.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde_json::{Map, Value};

pub use super::settings::OpenAiSinkConfig;
use super::settings::OPENAI_BASE;
use super::{post_with_retry, RetryPolicy, Sink, SinkError};
use crate::trace::batch::{ExportItem, ItemKind};

/// Largest JSON size of a span's `input` or `output` the ingest takes.
pub const MAX_FIELD_BYTES: usize = 100_000;
/// What ends a cut string.
pub const TRUNCATION_SUFFIX: &str = "... [truncated]";

/// Sends batches to an OpenAI-compatible trace ingest endpoint.
pub struct OpenAiSink {
    client: reqwest::Client,
    url: String,
    headers: Result<HeaderMap, SinkError>,
    policy: RetryPolicy,
    sanitize_usage: bool,
}

impl OpenAiSink {
    /// A sink with the key read from `cfg.api_key_env` now; without a key every export
    /// fails with [`SinkError::MissingKey`] (and says which variable to set).
    pub fn new(cfg: &OpenAiSinkConfig) -> Result<Self, SinkError> {
        let key = std::env::var(&cfg.api_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        let headers = match key {
            Some(k) => Self::headers_for(&k),
            None => Err(SinkError::MissingKey {
                sink: "openai",
                env: cfg.api_key_env.clone(),
            }),
        };
        Self::build(cfg, headers)
    }

    /// A sink with a given API key.
    pub fn with_api_key(cfg: &OpenAiSinkConfig, api_key: &str) -> Result<Self, SinkError> {
        Self::build(cfg, Self::headers_for(api_key))
    }

    fn headers_for(key: &str) -> Result<HeaderMap, SinkError> {
        let mut h = HeaderMap::new();
        let auth = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
            SinkError::Other(
                "the OpenAI API key has characters not allowed in an HTTP header".into(),
            )
        })?;
        h.insert(AUTHORIZATION, auth);
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert("OpenAI-Beta", HeaderValue::from_static("traces=v1"));
        for (env, name) in [
            ("OPENAI_ORG_ID", "OpenAI-Organization"),
            ("OPENAI_PROJECT_ID", "OpenAI-Project"),
        ] {
            if let Some(v) = std::env::var(env)
                .ok()
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                h.insert(name, v);
            }
        }
        Ok(h)
    }

    fn build(
        cfg: &OpenAiSinkConfig,
        headers: Result<HeaderMap, SinkError>,
    ) -> Result<Self, SinkError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.request_timeout_ms.max(1)))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| SinkError::Other(format!("could not build the HTTP client: {e}")))?;
        let base = cfg.base_url.trim_end_matches('/');
        Ok(OpenAiSink {
            client,
            url: format!("{base}/traces/ingest"),
            headers,
            policy: RetryPolicy {
                attempts: cfg.max_attempts.max(1),
                base: Duration::from_millis(cfg.base_delay_ms),
                max: Duration::from_millis(cfg.max_delay_ms),
            },
            // Only OpenAI's own ingest rejects usage outside generation spans.
            sanitize_usage: base == OPENAI_BASE,
        })
    }

    /// The ingest URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The request body for a batch: `{"data":[...]}` with traces and spans (trace ends
    /// are not sent) and large fields cut. Items are copied as they are unless they may need
    /// cutting or sanitising.
    pub fn body(&self, batch: &[ExportItem]) -> String {
        let mut out =
            String::with_capacity(batch.iter().map(|i| i.json.len() + 1).sum::<usize>() + 16);
        out.push_str("{\"data\":[");
        let mut first = true;
        for item in batch.iter().filter(|i| i.kind != ItemKind::TraceEnd) {
            if !first {
                out.push(',');
            }
            first = false;
            let needs_work = item.kind == ItemKind::Span
                && (self.sanitize_usage || item.json.len() > MAX_FIELD_BYTES);
            if needs_work {
                let v = sanitize_item(&item.value(), self.sanitize_usage);
                out.push_str(&serde_json::to_string(&v).unwrap_or_else(|_| "null".into()));
            } else {
                out.push_str(&item.json);
            }
        }
        out.push_str("]}");
        out
    }
}

fn json_size(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}

/// A span export with `span_data.input` / `output` cut to [`MAX_FIELD_BYTES`] (and, for
/// OpenAI's own endpoint, usage kept only where the ingest takes it).
pub fn sanitize_item(item: &Value, sanitize_usage: bool) -> Value {
    let Some(data) = item.get("span_data").and_then(Value::as_object) else {
        return item.clone();
    };
    let mut data = data.clone();
    for field in ["input", "output"] {
        if let Some(v) = data.get(field) {
            if json_size(v) > MAX_FIELD_BYTES {
                let cut = truncate_value(v, MAX_FIELD_BYTES);
                data.insert(field.to_owned(), cut);
            }
        }
    }
    if sanitize_usage {
        if data.get("type").and_then(Value::as_str) != Some("generation") {
            data.remove("usage");
        } else if let Some(u) = data.get("usage").and_then(Value::as_object).cloned() {
            data.insert("usage".into(), generation_usage(&u));
        }
    }
    let mut out = item.clone();
    out["span_data"] = Value::Object(data);
    out
}

fn generation_usage(u: &Map<String, Value>) -> Value {
    let (Some(i), Some(o)) = (
        u.get("input_tokens").filter(|v| v.is_number()),
        u.get("output_tokens").filter(|v| v.is_number()),
    ) else {
        return Value::Null;
    };
    let mut details = Map::new();
    if let Some(Value::Object(d)) = u.get("details") {
        details.extend(d.clone());
    }
    for (k, v) in u {
        if !matches!(k.as_str(), "input_tokens" | "output_tokens" | "details") && !v.is_null() {
            details.insert(k.clone(), v.clone());
        }
    }
    let mut out = serde_json::json!({"input_tokens": i, "output_tokens": o});
    if !details.is_empty() {
        out["details"] = Value::Object(details);
    }
    out
}

/// Cuts `v` until its JSON is at most `max` bytes: a string keeps its start and ends with
/// [`TRUNCATION_SUFFIX`]; in objects and arrays the largest member is cut first (and
/// removed when cutting cannot help).
pub fn truncate_value(v: &Value, max: usize) -> Value {
    if json_size(v) <= max {
        return v.clone();
    }
    match v {
        Value::String(s) => Value::String(truncate_str(s, max)),
        Value::Object(m) => {
            let mut m = m.clone();
            loop {
                let total = json_size(&Value::Object(m.clone()));
                if total <= max || m.is_empty() {
                    break;
                }
                let Some((key, size)) = m
                    .iter()
                    .map(|(k, v)| (k.clone(), json_size(v)))
                    .max_by_key(|(_, s)| *s)
                else {
                    break;
                };
                let budget = max.saturating_sub(total - size);
                let child = &m[&key];
                let cut = truncate_value(child, budget);
                if &cut == child {
                    m.remove(&key);
                } else {
                    m.insert(key, cut);
                }
            }
            Value::Object(m)
        }
        Value::Array(a) => {
            let mut a = a.clone();
            loop {
                let total = json_size(&Value::Array(a.clone()));
                if total <= max || a.is_empty() {
                    break;
                }
                let Some((idx, size)) = a.iter().map(json_size).enumerate().max_by_key(|(_, s)| *s)
                else {
                    break;
                };
                let budget = max.saturating_sub(total - size);
                let cut = truncate_value(&a[idx], budget);
                if cut == a[idx] {
                    a.remove(idx);
                } else {
                    a[idx] = cut;
                }
            }
            Value::Array(a)
        }
        other => other.clone(),
    }
}

fn str_size(s: &str) -> usize {
    json_size(&Value::String(s.to_owned()))
}

fn truncate_str(s: &str, max: usize) -> String {
    let suffix_size = str_size(TRUNCATION_SUFFIX);
    if suffix_size > max {
        return String::new();
    }
    let full = str_size(s);
    let budget = max - suffix_size;
    // Estimate, then trim until it fits (escapes make JSON longer than the text).
    let mut keep = ((s.len() as f64) * (budget as f64) / (full.max(1) as f64)) as usize;
    keep = keep.min(s.len());
    loop {
        while keep > 0 && !s.is_char_boundary(keep) {
            keep -= 1;
        }
        let candidate = format!("{}{TRUNCATION_SUFFIX}", &s[..keep]);
        let size = str_size(&candidate);
        if size <= max || keep == 0 {
            return candidate;
        }
        let over = size - max;
        keep = keep.saturating_sub(over.max(1));
    }
}

#[async_trait]
impl Sink for OpenAiSink {
    fn name(&self) -> &str {
        "openai"
    }

    async fn export(&self, batch: &[ExportItem]) -> Result<(), SinkError> {
        let headers = match &self.headers {
            Ok(h) => h,
            Err(SinkError::MissingKey { env, .. }) => {
                tracing::warn!(env = %env, "OpenAI API key is not set; skipping trace export");
                return Err(SinkError::MissingKey {
                    sink: "openai",
                    env: env.clone(),
                });
            }
            Err(e) => return Err(SinkError::Other(e.to_string())),
        };
        if batch.iter().all(|i| i.kind == ItemKind::TraceEnd) {
            return Ok(());
        }
        let body = self.body(batch);
        post_with_retry(&self.client, &self.url, headers, body.into(), self.policy).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn long_strings_are_cut_to_the_limit_with_the_suffix() {
        let s = "é".repeat(80_000);
        let cut = truncate_value(&Value::String(s), MAX_FIELD_BYTES);
        let t = cut.as_str().unwrap();
        assert!(t.ends_with(TRUNCATION_SUFFIX));
        assert!(json_size(&cut) <= MAX_FIELD_BYTES);
        assert!(json_size(&cut) > MAX_FIELD_BYTES - 100);
    }

    #[test]
    fn nested_values_cut_the_largest_member() {
        let v = json!({"small": "x", "big": "y".repeat(200_000), "list": ["z".repeat(50_000)]});
        let cut = truncate_value(&v, MAX_FIELD_BYTES);
        assert!(json_size(&cut) <= MAX_FIELD_BYTES);
        assert_eq!(cut["small"], "x");
        assert!(cut["big"].as_str().unwrap().ends_with(TRUNCATION_SUFFIX));
    }

    #[test]
    fn sanitize_keeps_small_fields_and_drops_usage_only_for_openai() {
        let span = json!({"object":"trace.span","span_data":{"type":"response","usage":{"input_tokens":1},"input":"a","output":"b".repeat(150_000)}});
        let s = sanitize_item(&span, false);
        assert_eq!(s["span_data"]["input"], "a");
        assert!(s["span_data"]["usage"].is_object());
        assert!(json_size(&s["span_data"]["output"]) <= MAX_FIELD_BYTES);
        let s = sanitize_item(&span, true);
        assert!(s["span_data"].get("usage").is_none());
        let gen = json!({"span_data":{"type":"generation","usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3}}});
        let s = sanitize_item(&gen, true);
        assert_eq!(
            s["span_data"]["usage"],
            json!({"input_tokens":1,"output_tokens":2,"details":{"total_tokens":3}})
        );
    }
}
