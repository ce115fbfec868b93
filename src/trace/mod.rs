//! Tracing in the SDK's shape: traces and spans with the SDK's ids, data types, hierarchy
//! and export JSON, handed to [`TraceProcessor`]s as they start and end.
//!
//! The engine opens spans through [`Tracer`]; the current trace and span travel with the
//! task (tokio task-locals), so [`custom_span`] inside a tool attaches to that tool's
//! function span and [`trace`] groups several runs under one trace, as the SDK's `trace()`
//! does.

pub mod batch;
#[cfg(feature = "server")]
pub mod browse;
pub mod config;
pub mod context;
pub mod ids;
pub mod item;
pub mod processor;
pub mod sinks;
pub mod stats;
pub mod time;

use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{json, Map, Value};

pub use batch::{BatchConfig, BatchTraceProcessor, ExportItem, ItemKind, TraceStats};
pub use config::{TracingConfig, TracingConfigError, TracingSetup};
pub use sinks::{Sink, SinkError};
pub use time::time_iso;

pub use processor::{
    add_trace_processor, flush_traces, global_tracer, set_trace_processors, set_tracing_disabled,
    shutdown_traces, TraceProcessor, Tracer,
};

use crate::usage::Usage;

/// A random id `prefix_<hex>` with `hex_len` (at most 32) hex digits.
fn gen_id(prefix: &str, hex_len: usize) -> String {
    use rand::Rng;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut bits: u128 = rand::rng().random();
    let mut s = String::with_capacity(prefix.len() + 1 + hex_len);
    s.push_str(prefix);
    s.push('_');
    for _ in 0..hex_len.min(32) {
        s.push(HEX[(bits & 0xf) as usize] as char);
        bits >>= 4;
    }
    s
}

/// A new trace id: `trace_` and 32 hex digits.
pub fn gen_trace_id() -> String {
    gen_id("trace", 32)
}

/// A new span id: `span_` and 24 hex digits.
pub fn gen_span_id() -> String {
    gen_id("span", 24)
}

pub use ids::{is_span_id as is_valid_span_id, is_trace_id as is_valid_trace_id};

/// A new group id: `group_` and 24 hex digits.
pub fn gen_group_id() -> String {
    gen_id("group", 24)
}

/// The data of a span, one variant per SDK span type.
#[derive(Clone, Debug, PartialEq)]
pub enum SpanData {
    /// One agent's stretch of a run.
    Agent {
        /// Agent name.
        name: String,
        /// Handoff target names (filled at the end).
        handoffs: Vec<String>,
        /// Tool names (filled at the end).
        tools: Vec<String>,
        /// The output type's name, if any.
        output_type: Option<String>,
    },
    /// The whole run (exported as a custom span named `task`).
    Task {
        /// Workflow name ("Agent workflow" unless set).
        name: String,
        /// Usage totals, at the end.
        usage: Option<Value>,
    },
    /// One turn (exported as a custom span named `turn`).
    Turn {
        /// Turn number from 1.
        turn: u64,
        /// The agent of the turn.
        agent_name: String,
        /// Usage of the turn, at the end.
        usage: Option<Value>,
    },
    /// A Responses-API model call.
    Response {
        /// The provider's response id.
        response_id: Option<String>,
        /// Usage of the call.
        usage: Option<Value>,
        /// The model called. Not in the SDK's export JSON (its response span has none);
        /// sinks get it from [`ItemFacts::model`](batch::ItemFacts::model).
        model: Option<String>,
    },
    /// A Chat-Completions model call.
    Generation {
        /// Input messages (sensitive).
        input: Option<Value>,
        /// Output messages (sensitive).
        output: Option<Value>,
        /// Model name.
        model: Option<String>,
        /// Model settings.
        model_config: Option<Value>,
        /// Usage of the call.
        usage: Option<Value>,
    },
    /// A function tool call.
    Function {
        /// Tool name.
        name: String,
        /// Arguments (sensitive).
        input: Option<String>,
        /// Output (sensitive).
        output: Option<String>,
        /// MCP data.
        mcp_data: Option<Value>,
    },
    /// A handoff.
    Handoff {
        /// The agent handing off.
        from_agent: Option<String>,
        /// The target (set at the end).
        to_agent: Option<String>,
    },
    /// A guardrail check.
    Guardrail {
        /// Guardrail name.
        name: String,
        /// Whether the tripwire fired.
        triggered: bool,
    },
    /// A user-defined span.
    Custom {
        /// Span name.
        name: String,
        /// Free-form data.
        data: Value,
    },
    /// Listing an MCP server's tools.
    McpTools {
        /// The server.
        server: String,
        /// The tool names listed.
        result: Option<Vec<String>>,
    },
}

impl SpanData {
    /// The span type string of the export (`custom` for task and turn).
    pub fn type_name(&self) -> &'static str {
        match self {
            SpanData::Agent { .. } => "agent",
            SpanData::Task { .. } | SpanData::Turn { .. } | SpanData::Custom { .. } => "custom",
            SpanData::Response { .. } => "response",
            SpanData::Generation { .. } => "generation",
            SpanData::Function { .. } => "function",
            SpanData::Handoff { .. } => "handoff",
            SpanData::Guardrail { .. } => "guardrail",
            SpanData::McpTools { .. } => "mcp_tools",
        }
    }

    /// A short name for the span (agent, tool or custom name, or the type).
    pub fn name(&self) -> &str {
        match self {
            SpanData::Agent { name, .. }
            | SpanData::Function { name, .. }
            | SpanData::Guardrail { name, .. }
            | SpanData::Custom { name, .. } => name,
            SpanData::Task { .. } => "task",
            SpanData::Turn { .. } => "turn",
            SpanData::Response { .. } => "response",
            SpanData::Generation { .. } => "generation",
            SpanData::Handoff { .. } => "handoff",
            SpanData::McpTools { server, .. } => server,
        }
    }

    /// The `span_data` object of the SDK's export.
    pub fn export(&self) -> Value {
        serde_json::to_value(self.view()).unwrap_or(Value::Null)
    }

    /// A borrowed view that serialises as the SDK's `span_data` (type first, then the
    /// fields in the SDK's order).
    fn view(&self) -> DataView<'_> {
        match self {
            SpanData::Agent {
                name,
                handoffs,
                tools,
                output_type,
            } => DataView::Agent {
                name,
                handoffs,
                tools,
                output_type: output_type.as_deref(),
            },
            SpanData::Task { name, usage } => DataView::Custom {
                name: "task",
                data: CustomData::Task {
                    sdk_span_type: "task",
                    name,
                    usage: usage.as_ref(),
                },
            },
            SpanData::Turn {
                turn,
                agent_name,
                usage,
            } => DataView::Custom {
                name: "turn",
                data: CustomData::Turn {
                    sdk_span_type: "turn",
                    turn: *turn,
                    agent_name,
                    usage: usage.as_ref(),
                },
            },
            SpanData::Response {
                response_id, usage, ..
            } => DataView::Response {
                response_id: response_id.as_deref(),
                usage: usage.as_ref(),
            },
            SpanData::Generation {
                input,
                output,
                model,
                model_config,
                usage,
            } => DataView::Generation {
                input: input.as_ref(),
                output: output.as_ref(),
                model: model.as_deref(),
                model_config: model_config.as_ref(),
                usage: usage.as_ref(),
            },
            SpanData::Function {
                name,
                input,
                output,
                mcp_data,
            } => DataView::Function {
                name,
                input: input.as_deref(),
                output: output.as_deref(),
                mcp_data: mcp_data.as_ref(),
            },
            SpanData::Handoff {
                from_agent,
                to_agent,
            } => DataView::Handoff {
                from_agent: from_agent.as_deref(),
                to_agent: to_agent.as_deref(),
            },
            SpanData::Guardrail { name, triggered } => DataView::Guardrail {
                name,
                triggered: *triggered,
            },
            SpanData::Custom { name, data } => DataView::Custom {
                name,
                data: CustomData::Free(data),
            },
            SpanData::McpTools { server, result } => DataView::McpTools {
                server,
                result: result.as_deref(),
            },
        }
    }
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum DataView<'a> {
    Agent {
        name: &'a str,
        handoffs: &'a [String],
        tools: &'a [String],
        output_type: Option<&'a str>,
    },
    Response {
        response_id: Option<&'a str>,
        usage: Option<&'a Value>,
    },
    Generation {
        input: Option<&'a Value>,
        output: Option<&'a Value>,
        model: Option<&'a str>,
        model_config: Option<&'a Value>,
        usage: Option<&'a Value>,
    },
    Function {
        name: &'a str,
        input: Option<&'a str>,
        output: Option<&'a str>,
        mcp_data: Option<&'a Value>,
    },
    Handoff {
        from_agent: Option<&'a str>,
        to_agent: Option<&'a str>,
    },
    Guardrail {
        name: &'a str,
        triggered: bool,
    },
    Custom {
        name: &'a str,
        data: CustomData<'a>,
    },
    #[serde(rename = "mcp_tools")]
    McpTools {
        server: &'a str,
        result: Option<&'a [String]>,
    },
}

#[derive(Serialize)]
#[serde(untagged)]
enum CustomData<'a> {
    Task {
        sdk_span_type: &'static str,
        name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<&'a Value>,
    },
    Turn {
        sdk_span_type: &'static str,
        turn: u64,
        agent_name: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        usage: Option<&'a Value>,
    },
    Free(&'a Value),
}

/// The SDK's span export, as a borrowed view for serialisation.
#[derive(Serialize)]
struct SpanView<'a> {
    object: &'static str,
    id: &'a str,
    trace_id: &'a str,
    parent_id: Option<&'a str>,
    started_at: &'a str,
    ended_at: Option<&'a str>,
    span_data: DataView<'a>,
    error: Option<&'a SpanError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<&'a Map<String, Value>>,
}

/// The SDK's trace export, as a borrowed view for serialisation.
#[derive(Serialize)]
struct TraceView<'a> {
    object: &'static str,
    id: &'a str,
    workflow_name: &'a str,
    group_id: Option<&'a str>,
    metadata: Option<&'a Map<String, Value>>,
}

/// Usage of one model call as span data (the SDK's `model_usage_to_span_usage`).
pub fn model_usage_json(u: &crate::usage::RequestUsage) -> Value {
    json!({
        "requests": 1,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "total_tokens": u.total_tokens,
        "input_tokens_details": {"cached_tokens": u.input_tokens_details.cached_tokens, "cache_write_tokens": 0},
        "output_tokens_details": {"reasoning_tokens": u.output_tokens_details.reasoning_tokens},
    })
}

/// Usage of a turn as span data (the SDK's `turn_usage_to_span_data`).
pub fn turn_usage_json(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cached_input_tokens": u.input_tokens_details.cached_tokens,
        "cache_write_input_tokens": 0,
    })
}

/// Usage of a run as task span data (the SDK's `task_usage_to_span_data`).
pub fn task_usage_json(u: &Usage) -> Value {
    let mut v = turn_usage_json(u);
    v["requests"] = json!(u.requests);
    v["total_tokens"] = json!(u.total_tokens);
    v
}

/// An error recorded on a span.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SpanError {
    /// What went wrong.
    pub message: String,
    /// Details.
    pub data: Option<Value>,
}

/// What a trace is: id, workflow name, group and metadata.
#[derive(Debug)]
pub struct TraceInner {
    /// `trace_<32 hex>`.
    pub trace_id: String,
    /// The workflow name.
    pub workflow_name: String,
    /// Group id (a conversation), if any.
    pub group_id: Option<String>,
    /// Metadata.
    pub metadata: Option<Map<String, Value>>,
    /// The metadata's `tenant` (the server's runs carry one; stores scope traces by it).
    pub tenant: Option<Arc<str>>,
    tracer: Tracer,
    ended: Mutex<bool>,
}

/// A trace handle (cheap to clone). A disabled trace is a no-op.
#[derive(Clone, Debug)]
pub struct Trace(Option<Arc<TraceInner>>);

impl Trace {
    /// A trace that records nothing.
    pub fn disabled() -> Self {
        Trace(None)
    }

    /// Whether the trace records anything.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The trace id (`"no-op"` when disabled, as the SDK says).
    pub fn trace_id(&self) -> &str {
        self.0.as_ref().map_or("no-op", |t| &t.trace_id)
    }

    /// The inner record, when enabled.
    pub fn inner(&self) -> Option<&TraceInner> {
        self.0.as_deref()
    }

    /// The SDK's trace export: `{"object":"trace","id","workflow_name","group_id","metadata"}`.
    pub fn export(&self) -> Option<Value> {
        serde_json::to_value(self.view()?).ok()
    }

    /// The SDK's trace export as compact JSON text (one pass, no intermediate tree).
    pub fn export_json(&self) -> Option<String> {
        serde_json::to_string(&self.view()?).ok()
    }

    fn view(&self) -> Option<TraceView<'_>> {
        let t = self.0.as_ref()?;
        Some(TraceView {
            object: "trace",
            id: &t.trace_id,
            workflow_name: &t.workflow_name,
            group_id: t.group_id.as_deref(),
            metadata: t.metadata.as_ref(),
        })
    }

    /// Ends the trace and tells the processors (once).
    pub fn finish(&self) {
        if let Some(t) = &self.0 {
            let mut ended = t.ended.lock().unwrap_or_else(|e| e.into_inner());
            if !*ended {
                *ended = true;
                drop(ended);
                t.tracer.dispatch_trace_end(self);
            }
        }
    }

    /// Opens a span in this trace under `parent` (or at the root).
    pub fn span(&self, data: SpanData, parent: Option<&Span>) -> Span {
        let Some(t) = &self.0 else {
            return Span::disabled();
        };
        let parent_id = parent.and_then(|p| p.0.as_ref().map(|s| s.span_id.clone()));
        let span = Span(Some(Arc::new(SpanInner {
            trace: self.clone(),
            span_id: gen_span_id(),
            parent_id,
            started_at: time_iso(),
            state: Mutex::new(SpanState {
                data,
                error: None,
                ended_at: None,
            }),
        })));
        t.tracer.dispatch_span_start(&span);
        span
    }

    /// The tracer the trace reports to.
    pub fn tracer(&self) -> Option<&Tracer> {
        self.0.as_ref().map(|t| &t.tracer)
    }
}

/// Options of a new trace (the arguments of the SDK's `trace()`).
#[derive(Clone, Debug, Default)]
pub struct TraceOptions {
    /// Workflow name ("Agent workflow" when empty).
    pub workflow_name: Option<String>,
    /// A given trace id (a new one when empty).
    pub trace_id: Option<String>,
    /// Group id.
    pub group_id: Option<String>,
    /// Metadata.
    pub metadata: Option<Map<String, Value>>,
    /// Record nothing.
    pub disabled: bool,
}

impl Tracer {
    /// Starts a trace (disabled when tracing or the options say so).
    pub fn start_trace(&self, opts: TraceOptions) -> Trace {
        if opts.disabled || self.is_disabled() {
            return Trace::disabled();
        }
        let t = Trace(Some(Arc::new(TraceInner {
            trace_id: opts.trace_id.unwrap_or_else(gen_trace_id),
            workflow_name: opts
                .workflow_name
                .unwrap_or_else(|| "Agent workflow".to_owned()),
            group_id: opts.group_id,
            tenant: opts
                .metadata
                .as_ref()
                .and_then(|m| m.get("tenant"))
                .and_then(Value::as_str)
                .map(Arc::from),
            metadata: opts.metadata,
            tracer: self.clone(),
            ended: Mutex::new(false),
        })));
        self.dispatch_trace_start(&t);
        t
    }
}

#[derive(Debug)]
struct SpanState {
    data: SpanData,
    error: Option<SpanError>,
    ended_at: Option<String>,
}

/// A span's record.
#[derive(Debug)]
pub struct SpanInner {
    trace: Trace,
    /// `span_<24 hex>`.
    pub span_id: String,
    /// The parent span's id.
    pub parent_id: Option<String>,
    /// Start time.
    pub started_at: String,
    state: Mutex<SpanState>,
}

/// See [`Span::index_facts`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexFacts {
    /// An agent span's agent.
    pub agent: Option<String>,
    /// A model call's model.
    pub model: Option<String>,
    /// Whether the span has an error.
    pub error: bool,
}

/// A span handle (cheap to clone). A disabled span is a no-op.
#[derive(Clone, Debug)]
pub struct Span(Option<Arc<SpanInner>>);

impl Span {
    /// A span that records nothing.
    pub fn disabled() -> Self {
        Span(None)
    }

    /// Whether the span records anything.
    pub fn is_enabled(&self) -> bool {
        self.0.is_some()
    }

    /// The span id, when enabled.
    pub fn span_id(&self) -> Option<&str> {
        self.0.as_ref().map(|s| s.span_id.as_str())
    }

    /// The trace id, when enabled.
    pub fn trace_id(&self) -> Option<&str> {
        self.0.as_ref().map(|s| s.trace.trace_id())
    }

    /// The parent id, when enabled and not a root.
    pub fn parent_id(&self) -> Option<&str> {
        self.0.as_ref().and_then(|s| s.parent_id.as_deref())
    }

    /// The trace this span belongs to.
    pub fn trace(&self) -> Trace {
        self.0
            .as_ref()
            .map_or_else(Trace::disabled, |s| s.trace.clone())
    }

    /// Opens a child span.
    pub fn child(&self, data: SpanData) -> Span {
        match &self.0 {
            Some(s) => s.trace.span(data, Some(self)),
            None => Span::disabled(),
        }
    }

    /// Changes the span's data in place.
    pub fn update(&self, f: impl FnOnce(&mut SpanData)) {
        if let Some(s) = &self.0 {
            let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
            f(&mut st.data);
        }
    }

    /// Records an error on the span.
    pub fn set_error(&self, message: impl Into<String>, data: Option<Value>) {
        if let Some(s) = &self.0 {
            let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
            st.error = Some(SpanError {
                message: message.into(),
                data,
            });
        }
    }

    /// A copy of the span's data.
    pub fn data(&self) -> Option<SpanData> {
        self.0.as_ref().map(|s| {
            s.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .data
                .clone()
        })
    }

    /// The recorded error, if any.
    pub fn error(&self) -> Option<SpanError> {
        self.0.as_ref().and_then(|s| {
            s.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .error
                .clone()
        })
    }

    /// Whether the span has ended.
    pub fn is_ended(&self) -> bool {
        self.0.as_ref().is_some_and(|s| {
            s.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .ended_at
                .is_some()
        })
    }

    /// Ends the span and tells the processors (once).
    pub fn finish(&self) {
        let Some(s) = &self.0 else { return };
        {
            let mut st = s.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.ended_at.is_some() {
                return;
            }
            st.ended_at = Some(time_iso());
        }
        if let Some(t) = s.trace.inner() {
            t.tracer.dispatch_span_end(self);
        }
    }

    /// The SDK's span export (`object: "trace.span"`), when enabled.
    pub fn export(&self) -> Option<Value> {
        self.with_view(|v| serde_json::to_value(v).ok())?
    }

    /// The SDK's span export as compact JSON text (one pass, no intermediate tree).
    pub fn export_json(&self) -> Option<String> {
        // Most exports are a few hundred bytes: one allocation instead of a few regrowths.
        self.with_view(|v| {
            let mut buf = Vec::with_capacity(512);
            serde_json::to_writer(&mut buf, v).ok()?;
            String::from_utf8(buf).ok()
        })?
    }

    fn with_view<R>(&self, f: impl FnOnce(&SpanView<'_>) -> R) -> Option<R> {
        let s = self.0.as_ref()?;
        let st = s.state.lock().unwrap_or_else(|e| e.into_inner());
        let metadata = s
            .trace
            .inner()
            .filter(|t| t.tracer.copies_metadata_to_spans())
            .and_then(|t| t.metadata.as_ref());
        let view = SpanView {
            object: "trace.span",
            id: &s.span_id,
            trace_id: s.trace.trace_id(),
            parent_id: s.parent_id.as_deref(),
            started_at: &s.started_at,
            ended_at: st.ended_at.as_deref(),
            span_data: st.data.view(),
            error: st.error.as_ref(),
            metadata,
        };
        Some(f(&view))
    }

    /// What sinks index, when enabled: the agent of an agent span, the model of a model
    /// call, and whether the span has an error.
    pub fn index_facts(&self) -> Option<IndexFacts> {
        let s = self.0.as_ref()?;
        let st = s.state.lock().unwrap_or_else(|e| e.into_inner());
        let (agent, model) = match &st.data {
            SpanData::Agent { name, .. } => (Some(name.clone()), None),
            SpanData::Response { model, .. } | SpanData::Generation { model, .. } => {
                (None, model.clone())
            }
            _ => (None, None),
        };
        Some(IndexFacts {
            agent,
            model,
            error: st.error.is_some(),
        })
    }

    /// The span's type as exported (`agent`, `custom`, ...), when enabled.
    pub fn span_type(&self) -> Option<&'static str> {
        let s = self.0.as_ref()?;
        let st = s.state.lock().unwrap_or_else(|e| e.into_inner());
        Some(st.data.type_name())
    }

    /// The start time, when enabled.
    pub fn started_at(&self) -> Option<&str> {
        self.0.as_ref().map(|s| s.started_at.as_str())
    }

    /// The end time, when ended.
    pub fn ended_at(&self) -> Option<String> {
        let s = self.0.as_ref()?;
        let st = s.state.lock().unwrap_or_else(|e| e.into_inner());
        st.ended_at.clone()
    }
}

tokio::task_local! {
    static CURRENT_TRACE: Trace;
    static CURRENT_SPAN: Span;
}

/// The trace of the enclosing [`trace`] scope or run, if any.
pub fn current_trace() -> Option<Trace> {
    CURRENT_TRACE.try_with(Clone::clone).ok()
}

/// The innermost open span of the current task (a tool's function span inside a tool).
pub fn current_span() -> Option<Span> {
    CURRENT_SPAN.try_with(Clone::clone).ok()
}

/// Runs `fut` with `span` as the current span.
pub async fn with_span<F: Future>(span: Span, fut: F) -> F::Output {
    let trace = span.trace();
    CURRENT_TRACE
        .scope(trace, CURRENT_SPAN.scope(span, fut))
        .await
}

/// Runs `fut` inside a trace: runs started within share it and create none of their own,
/// as inside the SDK's `with trace(...)`. The trace ends when `fut` completes.
pub async fn trace<F: Future>(opts: TraceOptions, fut: F) -> F::Output {
    trace_with(global_tracer(), opts, fut).await
}

/// [`trace`] reporting to `tracer` instead of the global one.
pub async fn trace_with<F: Future>(tracer: &Tracer, opts: TraceOptions, fut: F) -> F::Output {
    let t = tracer.start_trace(opts);
    let out = CURRENT_TRACE.scope(t.clone(), fut).await;
    t.finish();
    out
}

/// Opens a custom span under the current span (or the current trace's root), e.g. inside a
/// tool; finish it with [`Span::finish`]. Outside any trace it records nothing.
pub fn custom_span(name: impl Into<String>, data: Value) -> Span {
    let data = SpanData::Custom {
        name: name.into(),
        data,
    };
    match current_span() {
        Some(parent) if parent.is_enabled() => parent.child(data),
        _ => match current_trace() {
            Some(t) => t.span(data, None),
            None => Span::disabled(),
        },
    }
}
