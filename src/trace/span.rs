//! Traces and spans as the engine holds them: started, ended, errors recorded, and handed to
//! the processors as export items.

use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{Map, Value};

use super::*;

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
