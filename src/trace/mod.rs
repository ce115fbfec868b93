//! Tracing in the SDK's shape: traces and spans with the SDK's ids, data types, hierarchy
//! and export JSON, handed to [`TraceProcessor`]s as they start and end.
//!
//! The engine opens spans through [`Tracer`]; the current trace and span travel with the
//! task (tokio task-locals), so [`custom_span`] inside a tool attaches to that tool's
//! function span and [`trace`] groups several runs under one trace, as the SDK's `trace()`
//! does.
//!
//! - [`data`]: the SDK's span types and their export JSON;
//! - [`span`]: traces and spans as the engine holds them (start, end, errors, export items);
//! - [`processor`], [`batch`], [`sinks`]: where ended spans go.

pub mod batch;
#[cfg(feature = "server")]
pub mod browse;
pub mod config;
pub mod context;
mod data;
pub mod ids;
pub mod item;
pub mod processor;
pub mod sinks;
mod span;
pub mod stats;
pub mod time;

use std::future::Future;

use serde_json::Value;

pub use batch::{BatchConfig, BatchTraceProcessor, ExportItem, ItemKind, TraceStats};
pub use config::{TracingConfig, TracingConfigError, TracingSetup};
pub use sinks::{Sink, SinkError};
pub use time::time_iso;

pub use processor::{
    add_trace_processor, flush_traces, global_tracer, set_trace_processors, set_tracing_disabled,
    shutdown_traces, TraceProcessor, Tracer,
};

pub use data::*;
pub use span::*;

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
