//! The `otlp` sink: spans as OpenTelemetry over OTLP/HTTP (protobuf), named and attributed
//! per the OpenTelemetry GenAI semantic conventions, so Jaeger, Tempo, Langfuse or Phoenix
//! show callboard runs: agent spans are `invoke_agent {name}`, tool calls `execute_tool
//! {name}`, model calls `chat {model}`, with `gen_ai.*` attributes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Status};
use prost::Message;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde_json::Value;

pub use super::settings::OtlpSinkConfig;
use super::{post_with_retry, RetryPolicy, Sink, SinkError};
use crate::trace::batch::{ExportItem, ItemKind};

/// Most traces whose workflow and group are remembered for their spans.
const MAX_TRACES_KEPT: usize = 50_000;

#[derive(Clone, Debug, Default)]
struct TraceInfo {
    workflow_name: Option<String>,
    /// The conversation: the trace metadata's `session_id` (the server's runs), else the
    /// group id.
    conversation: Option<String>,
    metadata: Option<String>,
}

/// Sends finished spans to an OTLP/HTTP receiver.
pub struct OtlpSink {
    client: reqwest::Client,
    endpoint: String,
    headers: HeaderMap,
    service_name: String,
    policy: RetryPolicy,
    traces: Mutex<HashMap<String, TraceInfo>>,
}

impl OtlpSink {
    /// A sink for `cfg`; fails on a header that is not valid HTTP.
    pub fn new(cfg: &OtlpSinkConfig) -> Result<Self, SinkError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| {
                SinkError::Other(format!(
                    "tracing.otlp.headers: {k:?} is not a valid header name"
                ))
            })?;
            let value = HeaderValue::from_str(v).map_err(|_| {
                SinkError::Other(format!(
                    "tracing.otlp.headers: the value of {k:?} is not a valid header value"
                ))
            })?;
            headers.insert(name, value);
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.request_timeout_ms.max(1)))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| SinkError::Other(format!("could not build the HTTP client: {e}")))?;
        Ok(OtlpSink {
            client,
            endpoint: cfg.endpoint.clone(),
            headers,
            service_name: cfg.service_name.clone(),
            policy: RetryPolicy {
                attempts: cfg.max_attempts.max(1),
                base: Duration::from_millis(cfg.base_delay_ms),
                max: Duration::from_millis(cfg.max_delay_ms),
            },
            traces: Mutex::new(HashMap::new()),
        })
    }

    /// The OTLP request for a batch (finished spans only), remembering each trace's
    /// workflow and group for spans in later batches.
    pub fn request(&self, batch: &[ExportItem]) -> ExportTraceServiceRequest {
        let mut traces = self.traces.lock().unwrap_or_else(|e| e.into_inner());
        let mut spans = Vec::new();
        for item in batch {
            match item.kind {
                ItemKind::Trace => {
                    let value = item.value();
                    if traces.len() >= MAX_TRACES_KEPT {
                        traces.clear();
                    }
                    traces.insert(
                        item.trace_id.clone(),
                        TraceInfo {
                            workflow_name: value["workflow_name"].as_str().map(str::to_owned),
                            conversation: value["metadata"]["session_id"]
                                .as_str()
                                .or(value["group_id"].as_str())
                                .map(str::to_owned),
                            metadata: value["metadata"]
                                .as_object()
                                .filter(|m| !m.is_empty())
                                .map(|m| Value::Object(m.clone()).to_string()),
                        },
                    );
                }
                ItemKind::TraceEnd => {
                    traces.remove(&item.trace_id);
                }
                ItemKind::Span => {
                    let info = traces.get(&item.trace_id).cloned().unwrap_or_default();
                    spans.push(to_otlp_span(
                        &item.value(),
                        item.facts.model.as_deref(),
                        &info,
                    ));
                }
            }
        }
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv_str("service.name", &self.service_name)],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "callboard".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }
}

fn kv(key: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(v) }),
    }
}

fn kv_str(key: &str, v: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(v.to_owned()))
}

fn kv_int(key: &str, v: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(v))
}

fn kv_strs(key: &str, v: &Value) -> Option<KeyValue> {
    let a = v.as_array()?;
    let values = a
        .iter()
        .filter_map(Value::as_str)
        .map(|s| AnyValue {
            value: Some(any_value::Value::StringValue(s.to_owned())),
        })
        .collect();
    Some(kv(key, any_value::Value::ArrayValue(ArrayValue { values })))
}

/// `n` id bytes from `trace_<hex>` / `span_<hex>` (see [`crate::trace::ids::otel_id_bytes`]).
pub fn id_bytes(id: &str, n: usize) -> Vec<u8> {
    crate::trace::ids::otel_id_bytes(id, n)
}

fn nanos(t: &Value) -> u64 {
    t.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .and_then(|d| d.timestamp_nanos_opt())
        .map_or(0, |n| n.max(0) as u64)
}

fn usage_attrs(attrs: &mut Vec<KeyValue>, usage: &Value) {
    let (i, o) = (
        usage["input_tokens"].as_i64(),
        usage["output_tokens"].as_i64(),
    );
    if let Some(i) = i {
        attrs.push(kv_int("gen_ai.usage.input_tokens", i));
        attrs.push(kv_int("llm.token_count.prompt", i));
    }
    if let Some(o) = o {
        attrs.push(kv_int("gen_ai.usage.output_tokens", o));
        attrs.push(kv_int("llm.token_count.completion", o));
    }
    if let (Some(i), Some(o)) = (i, o) {
        attrs.push(kv_int("llm.token_count.total", i + o));
    }
}

/// OpenInference's span kinds, which Phoenix (and Arize) show; the GenAI conventions alone
/// leave turn, handoff, guardrail and custom spans without one.
fn oi_kind(attrs: &mut Vec<KeyValue>, kind: &str) {
    attrs.push(kv_str("openinference.span.kind", kind));
}

/// A JSON text value as OpenInference's `input.value` / `output.value`.
fn io_attrs(attrs: &mut Vec<KeyValue>, which: &str, v: &Value) {
    let (text, mime) = match v {
        Value::Null => return,
        Value::String(s) => (
            s.clone(),
            if s.starts_with('{') || s.starts_with('[') {
                "application/json"
            } else {
                "text/plain"
            },
        ),
        other => (other.to_string(), "application/json"),
    };
    attrs.push(kv_str(&format!("{which}.value"), &text));
    attrs.push(kv_str(&format!("{which}.mime_type"), mime));
}

/// One SDK span export as an OTLP span with GenAI attributes (and OpenInference's, for
/// Phoenix). `model` is the model of a model call (the export does not name it for
/// Responses-API calls).
fn to_otlp_span(
    v: &Value,
    model: Option<&str>,
    info: &TraceInfo,
) -> opentelemetry_proto::tonic::trace::v1::Span {
    let d = &v["span_data"];
    let ty = d["type"].as_str().unwrap_or("custom");
    let s = |k: &str| d[k].as_str().unwrap_or("").to_owned();
    let mut attrs = vec![kv_str("callboard.span_type", ty)];
    let mut kind = span::SpanKind::Internal;
    let name = match ty {
        "agent" => {
            let n = s("name");
            oi_kind(&mut attrs, "AGENT");
            attrs.push(kv_str("gen_ai.operation.name", "invoke_agent"));
            attrs.push(kv_str("gen_ai.agent.name", &n));
            attrs.push(kv_str("agent.name", &n));
            attrs.extend(kv_strs("callboard.agent.tools", &d["tools"]));
            attrs.extend(kv_strs("callboard.agent.handoffs", &d["handoffs"]));
            if let Some(o) = d["output_type"].as_str() {
                attrs.push(kv_str("callboard.agent.output_type", o));
            }
            format!("invoke_agent {n}")
        }
        "function" => {
            let n = s("name");
            oi_kind(&mut attrs, "TOOL");
            attrs.push(kv_str("gen_ai.operation.name", "execute_tool"));
            attrs.push(kv_str("gen_ai.tool.name", &n));
            attrs.push(kv_str("gen_ai.tool.type", "function"));
            attrs.push(kv_str("tool.name", &n));
            if let Some(id) = d["call_id"].as_str() {
                attrs.push(kv_str("gen_ai.tool.call.id", id));
            }
            if let Some(i) = d["input"].as_str() {
                attrs.push(kv_str("gen_ai.tool.call.arguments", i));
            }
            if let Some(o) = d["output"].as_str() {
                attrs.push(kv_str("gen_ai.tool.call.result", o));
            }
            io_attrs(&mut attrs, "input", &d["input"]);
            io_attrs(&mut attrs, "output", &d["output"]);
            format!("execute_tool {n}")
        }
        "response" | "generation" => {
            kind = span::SpanKind::Client;
            oi_kind(&mut attrs, "LLM");
            attrs.push(kv_str("gen_ai.operation.name", "chat"));
            attrs.push(kv_str("gen_ai.provider.name", "openai"));
            attrs.push(kv_str("llm.provider", "openai"));
            if let Some(id) = d["response_id"].as_str() {
                attrs.push(kv_str("gen_ai.response.id", id));
            }
            usage_attrs(&mut attrs, &d["usage"]);
            io_attrs(&mut attrs, "input", &d["input"]);
            io_attrs(&mut attrs, "output", &d["output"]);
            match model.or(d["model"].as_str()) {
                Some(m) => {
                    attrs.push(kv_str("gen_ai.request.model", m));
                    attrs.push(kv_str("llm.model_name", m));
                    format!("chat {m}")
                }
                None => "chat".to_owned(),
            }
        }
        "handoff" => {
            let (f, t) = (s("from_agent"), s("to_agent"));
            oi_kind(&mut attrs, "CHAIN");
            attrs.push(kv_str("callboard.handoff.from_agent", &f));
            attrs.push(kv_str("callboard.handoff.to_agent", &t));
            if !f.is_empty() {
                attrs.push(kv_str("gen_ai.agent.name", &f));
            }
            format!("handoff {f} -> {t}")
        }
        "guardrail" => {
            let n = s("name");
            oi_kind(&mut attrs, "GUARDRAIL");
            attrs.push(kv_str("callboard.guardrail.name", &n));
            attrs.push(kv(
                "callboard.guardrail.triggered",
                any_value::Value::BoolValue(d["triggered"].as_bool().unwrap_or(false)),
            ));
            format!("guardrail {n}")
        }
        _ => {
            let data = &d["data"];
            oi_kind(&mut attrs, "CHAIN");
            match data["sdk_span_type"].as_str() {
                Some("task") => {
                    attrs.push(kv_str("gen_ai.operation.name", "invoke_workflow"));
                    usage_attrs(&mut attrs, &data["usage"]);
                    format!("workflow {}", data["name"].as_str().unwrap_or(""))
                }
                Some("turn") => {
                    if let Some(a) = data["agent_name"].as_str() {
                        attrs.push(kv_str("gen_ai.agent.name", a));
                    }
                    let turn = data["turn"].as_i64();
                    if let Some(t) = turn {
                        attrs.push(kv_int("callboard.turn", t));
                    }
                    usage_attrs(&mut attrs, &data["usage"]);
                    turn.map_or_else(|| "turn".to_owned(), |t| format!("turn {t}"))
                }
                _ => {
                    if !data.is_null() {
                        attrs.push(kv_str("callboard.custom.data", &data.to_string()));
                    }
                    s("name")
                }
            }
        }
    };
    if let Some(w) = &info.workflow_name {
        attrs.push(kv_str("callboard.workflow.name", w));
    }
    if let Some(c) = &info.conversation {
        attrs.push(kv_str("gen_ai.conversation.id", c));
        attrs.push(kv_str("session.id", c));
    }
    if let Some(m) = &info.metadata {
        attrs.push(kv_str("metadata", m));
    }
    if let Some(Value::Object(md)) = v.get("metadata") {
        for (k, val) in md {
            let text = val.as_str().map_or_else(|| val.to_string(), str::to_owned);
            attrs.push(kv_str(&format!("callboard.metadata.{k}"), &text));
        }
    }
    let status = match v["error"]["message"].as_str() {
        Some(m) => {
            attrs.push(kv_str("error.type", m));
            Some(Status {
                message: m.to_owned(),
                code: status::StatusCode::Error as i32,
            })
        }
        None => None,
    };
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: id_bytes(v["trace_id"].as_str().unwrap_or(""), 16),
        span_id: id_bytes(v["id"].as_str().unwrap_or(""), 8),
        parent_span_id: v["parent_id"]
            .as_str()
            .map(|p| id_bytes(p, 8))
            .unwrap_or_default(),
        name,
        kind: kind as i32,
        start_time_unix_nano: nanos(&v["started_at"]),
        end_time_unix_nano: nanos(&v["ended_at"]),
        attributes: attrs,
        status,
        ..Default::default()
    }
}

#[async_trait]
impl Sink for OtlpSink {
    fn name(&self) -> &str {
        "otlp"
    }

    async fn export(&self, batch: &[ExportItem]) -> Result<(), SinkError> {
        let req = self.request(batch);
        if req
            .resource_spans
            .iter()
            .all(|r| r.scope_spans.iter().all(|s| s.spans.is_empty()))
        {
            return Ok(());
        }
        let body = req.encode_to_vec();
        post_with_retry(
            &self.client,
            &self.endpoint,
            &self.headers,
            body.into(),
            self.policy,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_ids_map_to_otlp_ids() {
        assert_eq!(
            id_bytes("trace_0123456789abcdef0123456789abcdef", 16)[..2],
            [0x01, 0x23]
        );
        assert_eq!(id_bytes("span_0123456789abcdef01234567", 8).len(), 8);
        let odd = id_bytes("my-own-id", 16);
        assert_eq!(odd.len(), 16);
        assert_eq!(odd, id_bytes("my-own-id", 16));
    }
}
