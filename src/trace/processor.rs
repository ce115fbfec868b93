//! Trace processors and the [`Tracer`] that dispatches trace and span events to them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use super::{Span, Trace};

/// Receives traces and spans as they start and end (the SDK's `TracingProcessor`).
///
/// Calls are made in registration order. A processor that panics is contained: the run and
/// the other processors carry on.
pub trait TraceProcessor: Send + Sync + 'static {
    /// A trace started.
    fn on_trace_start(&self, trace: &Trace);
    /// A trace ended.
    fn on_trace_end(&self, trace: &Trace);
    /// A span started.
    fn on_span_start(&self, span: &Span);
    /// A span ended.
    fn on_span_end(&self, span: &Span);
    /// Export everything queued now.
    fn force_flush(&self) {}
    /// Export everything and stop.
    fn shutdown(&self) {}
}

struct TracerInner {
    processors: RwLock<Arc<Vec<Arc<dyn TraceProcessor>>>>,
    disabled: AtomicBool,
    include_sensitive_data: AtomicBool,
    metadata_on_spans: AtomicBool,
}

/// Dispatches trace events to processors; holds the tracing switches.
#[derive(Clone)]
pub struct Tracer(Arc<TracerInner>);

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("disabled", &self.is_disabled())
            .finish()
    }
}

fn env_flag(name: &str) -> Option<bool> {
    std::env::var(name).ok().map(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

impl Default for Tracer {
    fn default() -> Self {
        Self::new()
    }
}

impl Tracer {
    /// A tracer with no processors; the SDK's environment switches
    /// (`OPENAI_AGENTS_DISABLE_TRACING`, `OPENAI_AGENTS_TRACE_INCLUDE_SENSITIVE_DATA`) apply.
    pub fn new() -> Self {
        Tracer(Arc::new(TracerInner {
            processors: RwLock::new(Arc::new(Vec::new())),
            disabled: AtomicBool::new(env_flag("OPENAI_AGENTS_DISABLE_TRACING").unwrap_or(false)),
            include_sensitive_data: AtomicBool::new(
                env_flag("OPENAI_AGENTS_TRACE_INCLUDE_SENSITIVE_DATA").unwrap_or(true),
            ),
            metadata_on_spans: AtomicBool::new(false),
        }))
    }

    fn procs(&self) -> Arc<Vec<Arc<dyn TraceProcessor>>> {
        self.0
            .processors
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Adds a processor after the existing ones.
    pub fn add_processor(&self, p: Arc<dyn TraceProcessor>) {
        let mut g = self.0.processors.write().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = g.as_ref().clone();
        v.push(p);
        *g = Arc::new(v);
    }

    /// Replaces every processor.
    pub fn set_processors(&self, ps: Vec<Arc<dyn TraceProcessor>>) {
        *self.0.processors.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ps);
    }

    /// Whether tracing is off.
    pub fn is_disabled(&self) -> bool {
        self.0.disabled.load(Ordering::Relaxed)
    }

    /// Turns tracing off or on.
    pub fn set_disabled(&self, disabled: bool) {
        self.0.disabled.store(disabled, Ordering::Relaxed);
    }

    /// Whether model and tool inputs and outputs are kept in spans.
    pub fn include_sensitive_data(&self) -> bool {
        self.0.include_sensitive_data.load(Ordering::Relaxed)
    }

    /// Keeps (or drops) model and tool inputs and outputs in spans.
    pub fn set_include_sensitive_data(&self, on: bool) {
        self.0.include_sensitive_data.store(on, Ordering::Relaxed);
    }

    /// Whether the trace's metadata is copied onto every span's export.
    pub fn copies_metadata_to_spans(&self) -> bool {
        self.0.metadata_on_spans.load(Ordering::Relaxed)
    }

    /// Copies the trace's metadata onto every span's export (users filter spans by it).
    pub fn set_metadata_on_spans(&self, on: bool) {
        self.0.metadata_on_spans.store(on, Ordering::Relaxed);
    }

    fn each(&self, what: &str, f: impl Fn(&dyn TraceProcessor)) {
        for p in self.procs().iter() {
            if catch_unwind(AssertUnwindSafe(|| f(p.as_ref()))).is_err() {
                tracing::error!(callback = what, "a trace processor panicked; ignored");
            }
        }
    }

    pub(crate) fn dispatch_trace_start(&self, t: &Trace) {
        self.each("on_trace_start", |p| p.on_trace_start(t));
    }

    pub(crate) fn dispatch_trace_end(&self, t: &Trace) {
        self.each("on_trace_end", |p| p.on_trace_end(t));
    }

    pub(crate) fn dispatch_span_start(&self, s: &Span) {
        self.each("on_span_start", |p| p.on_span_start(s));
    }

    pub(crate) fn dispatch_span_end(&self, s: &Span) {
        self.each("on_span_end", |p| p.on_span_end(s));
    }

    /// Asks every processor to export what it holds.
    pub fn force_flush(&self) {
        self.each("force_flush", |p| p.force_flush());
    }

    /// Flushes and stops every processor.
    pub fn shutdown(&self) {
        self.each("shutdown", |p| p.shutdown());
    }
}

static GLOBAL: OnceLock<Tracer> = OnceLock::new();

/// The process-wide tracer runs use unless their `RunConfig` names another.
pub fn global_tracer() -> &'static Tracer {
    GLOBAL.get_or_init(Tracer::new)
}

/// Adds a processor to the global tracer (the SDK's `add_trace_processor`).
pub fn add_trace_processor(p: Arc<dyn TraceProcessor>) {
    global_tracer().add_processor(p);
}

/// Replaces the global tracer's processors (the SDK's `set_trace_processors`).
pub fn set_trace_processors(ps: Vec<Arc<dyn TraceProcessor>>) {
    global_tracer().set_processors(ps);
}

/// Turns global tracing off or on (the SDK's `set_tracing_disabled`).
pub fn set_tracing_disabled(disabled: bool) {
    global_tracer().set_disabled(disabled);
}

/// Flushes the global tracer's processors (the SDK's `flush_traces`).
pub fn flush_traces() {
    global_tracer().force_flush();
}

/// Flushes and shuts down the global tracer's processors; call it once when the program
/// ends (the SDK does this at interpreter exit) so no queued span is lost.
pub fn shutdown_traces() {
    global_tracer().shutdown();
}
