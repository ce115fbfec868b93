//! What sinks receive: [`ExportItem`]s (a trace start or end, or a finished span) with the
//! SDK's export JSON made once and the few facts stores index, taken from the span itself.

use std::sync::Arc;

use serde_json::Value;

use super::{Span, Trace};

/// What an exported item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemKind {
    /// A trace, sent when it starts (as the SDK's batch processor does).
    Trace,
    /// A trace ended (sinks that print or close a trace use it; exporters skip it).
    TraceEnd,
    /// A finished span.
    Span,
}

/// One item of a batch: its kind, its trace id and its SDK export as compact JSON text
/// (made once, shared by every sink), plus the few facts a store indexes, taken from the
/// span or trace itself so no sink has to parse the JSON for them.
#[derive(Clone, Debug, PartialEq)]
pub struct ExportItem {
    /// Trace, trace end or span.
    pub kind: ItemKind,
    /// The trace it belongs to.
    pub trace_id: String,
    /// The SDK's export object (`object: "trace"` or `"trace.span"`) as JSON text.
    pub json: String,
    /// The tenant of its trace (the trace metadata's `tenant`), when known.
    pub tenant: Option<Arc<str>>,
    /// What stores index.
    pub facts: ItemFacts,
}

/// What a store indexes about an item.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ItemFacts {
    /// A trace's workflow name.
    pub workflow_name: Option<String>,
    /// A trace's group id.
    pub group_id: Option<String>,
    /// An agent span's agent.
    pub agent: Option<String>,
    /// A model call's model (the SDK's response span export does not name it).
    pub model: Option<String>,
    /// A span with an error.
    pub error: bool,
    /// When a trace started or ended (ISO-8601), for trace and trace-end items.
    pub at: Option<String>,
}

impl ExportItem {
    /// The export object as a JSON tree (parsed on each call).
    pub fn value(&self) -> Value {
        serde_json::from_str(&self.json).unwrap_or(Value::Null)
    }

    /// The item for a trace start or end, when the trace is enabled; `at` is when it
    /// happened (now when `None`).
    pub fn from_trace(trace: &Trace, kind: ItemKind, at: Option<&str>) -> Option<Self> {
        let inner = trace.inner()?;
        let at = Some(at.map_or_else(super::time_iso, str::to_owned));
        let facts = match kind {
            ItemKind::Trace => ItemFacts {
                workflow_name: Some(inner.workflow_name.clone()),
                group_id: inner.group_id.clone(),
                at,
                ..Default::default()
            },
            _ => ItemFacts {
                at,
                ..Default::default()
            },
        };
        Some(ExportItem {
            kind,
            trace_id: inner.trace_id.clone(),
            json: trace.export_json()?,
            tenant: inner.tenant.clone(),
            facts,
        })
    }

    /// The item for a span, when the span is enabled.
    pub fn from_span(span: &Span) -> Option<Self> {
        let trace = span.trace();
        let f = span.index_facts()?;
        Some(ExportItem {
            kind: ItemKind::Span,
            trace_id: span.trace_id()?.to_owned(),
            json: span.export_json()?,
            tenant: trace.inner().and_then(|t| t.tenant.clone()),
            facts: ItemFacts {
                agent: f.agent,
                model: f.model,
                error: f.error,
                ..Default::default()
            },
        })
    }

    /// The item for one object of a `POST /v1/traces/ingest` body: `object: "trace"` or
    /// `"trace.span"` with an id (`None` for anything else). Ids are not checked here.
    pub fn from_value(v: &Value) -> Option<Self> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        let (kind, trace_id, facts) = match v.get("object").and_then(Value::as_str) {
            Some("trace") => (
                ItemKind::Trace,
                s("id")?,
                ItemFacts {
                    workflow_name: s("workflow_name"),
                    group_id: s("group_id"),
                    ..Default::default()
                },
            ),
            Some("trace.span") => {
                s("id")?;
                let data = &v["span_data"];
                let agent = (data["type"].as_str() == Some("agent"))
                    .then(|| data["name"].as_str().map(str::to_owned))
                    .flatten();
                let error = v.get("error").is_some_and(|e| !e.is_null());
                let model = data["model"].as_str().map(str::to_owned);
                (
                    ItemKind::Span,
                    s("trace_id")?,
                    ItemFacts {
                        agent,
                        model,
                        error,
                        ..Default::default()
                    },
                )
            }
            _ => return None,
        };
        Some(ExportItem {
            kind,
            trace_id,
            json: serde_json::to_string(v).ok()?,
            tenant: None,
            facts,
        })
    }

    /// Items for the objects of an ingest body that are traces or spans with ids; anything
    /// else is skipped.
    pub fn from_values(values: impl IntoIterator<Item = Value>) -> Vec<Self> {
        values
            .into_iter()
            .filter_map(|v| Self::from_value(&v))
            .collect()
    }
}
