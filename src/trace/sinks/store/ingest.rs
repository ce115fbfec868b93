//! `POST /v1/traces/ingest` bodies (the OpenAI trace-ingest shape `{"data": [...]}`): each
//! trace and span export is checked on its own and stored under the caller's tenant. An item
//! with a malformed id, or whose trace another tenant holds, is refused and counted; the
//! rest are kept.

use serde::Serialize;
use serde_json::{json, Value};

use super::{IngestSummary, TraceStore};
use crate::trace::batch::{ExportItem, ItemKind};
use crate::trace::ids;
use crate::trace::sinks::SinkError;

/// Most refusals listed one by one in an answer (all are counted).
pub const MAX_LISTED_REFUSALS: usize = 100;

/// One refused item of an ingest body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IngestRefusal {
    /// Its position in `data`.
    pub index: usize,
    /// `invalid_id` or `trace_not_yours`.
    pub code: &'static str,
    /// What was wrong and what to do.
    pub message: String,
}

/// The answer to an ingest: what was stored, skipped and refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IngestAnswer {
    /// Traces stored.
    pub traces: usize,
    /// Spans stored.
    pub spans: usize,
    /// Objects that are neither traces nor spans (or have no id), ignored as the SDK's
    /// ingest does.
    pub skipped: usize,
    /// Items refused.
    pub refused: usize,
    /// Items refused, by code.
    pub refused_by_code: std::collections::BTreeMap<&'static str, usize>,
    /// The first [`MAX_LISTED_REFUSALS`] refusals.
    pub errors: Vec<IngestRefusal>,
}

impl IngestAnswer {
    fn refuse(&mut self, index: usize, code: &'static str, message: String) {
        self.refused += 1;
        *self.refused_by_code.entry(code).or_default() += 1;
        if self.errors.len() < MAX_LISTED_REFUSALS {
            self.errors.push(IngestRefusal {
                index,
                code,
                message,
            });
        }
    }
}

/// Why an object's ids are not acceptable, if they are not.
fn check_ids(v: &Value, kind: ItemKind, trace_id: &str) -> Result<(), ids::IdError> {
    ids::check_trace_id(trace_id)?;
    if kind == ItemKind::Span {
        ids::check_span_id(v["id"].as_str().unwrap_or(""))?;
        if let Some(p) = v.get("parent_id").filter(|p| !p.is_null()) {
            ids::check_span_id(p.as_str().unwrap_or(""))?;
        }
    }
    Ok(())
}

impl TraceStore {
    /// Stores the `data` of an ingest body under `tenant` (written into each trace's
    /// metadata as `tenant`). Objects other than traces and spans are skipped; items with
    /// malformed ids or of another tenant's trace are refused; the rest are kept.
    pub fn ingest_for(&self, tenant: &str, data: Vec<Value>) -> Result<IngestAnswer, SinkError> {
        self.ingest_as(Some(tenant), data)
    }

    /// Stores the `data` of an ingest body with no tenant (a library's own store: traces
    /// written this way belong to no tenant). Checked as by [`ingest_for`](Self::ingest_for).
    pub fn ingest(&self, data: Vec<Value>) -> Result<IngestAnswer, SinkError> {
        self.ingest_as(None, data)
    }

    fn ingest_as(&self, tenant: Option<&str>, data: Vec<Value>) -> Result<IngestAnswer, SinkError> {
        let owner: Option<std::sync::Arc<str>> = tenant.map(Into::into);
        let mut answer = IngestAnswer::default();
        let mut indices: Vec<usize> = Vec::with_capacity(data.len());
        let mut batch: Vec<ExportItem> = Vec::with_capacity(data.len());
        for (index, mut v) in data.into_iter().enumerate() {
            if let Some(t) = tenant {
                if v.get("object").and_then(Value::as_str) == Some("trace") {
                    if !v.get("metadata").is_some_and(Value::is_object) {
                        v["metadata"] = json!({});
                    }
                    v["metadata"]["tenant"] = json!(t);
                }
            }
            let Some(mut item) = ExportItem::from_value(&v) else {
                answer.skipped += 1;
                continue;
            };
            if let Err(e) = check_ids(&v, item.kind, &item.trace_id) {
                answer.refuse(index, "invalid_id", e.to_string());
                continue;
            }
            item.tenant = owner.clone();
            indices.push(index);
            batch.push(item);
        }
        let IngestSummary {
            traces,
            spans,
            foreign,
            ..
        } = self.write(&batch, true)?;
        answer.traces = traces;
        answer.spans = spans;
        if !foreign.is_empty() {
            for (index, item) in indices.iter().zip(&batch) {
                if foreign.contains(&item.trace_id) {
                    answer.refuse(
                        *index,
                        "trace_not_yours",
                        format!(
                            "trace {} belongs to another tenant; send your spans under a trace id of your own",
                            item.trace_id
                        ),
                    );
                }
            }
            answer.errors.sort_by_key(|e| e.index);
        }
        Ok(answer)
    }
}
