//! Reading the trace store: listings with filters (newest first, paged by time) and whole
//! traces with their spans.

use std::collections::HashMap;

use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use super::TraceStore;
use crate::trace::sinks::SinkError;

/// Filters of a trace listing; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct TraceQuery {
    /// Exactly this trace.
    pub trace_id: Option<String>,
    /// Traces of this workflow.
    pub workflow_name: Option<String>,
    /// Traces of this group (conversation; the server's runs use the session id).
    pub group_id: Option<String>,
    /// Traces of this tenant (their owner).
    pub tenant: Option<String>,
    /// Traces with an agent span of this agent.
    pub agent: Option<String>,
    /// Only traces with at least one span error.
    pub errors_only: bool,
    /// Stored at or after this ISO-8601 time.
    pub since: Option<String>,
    /// Stored before this ISO-8601 time (the next page: the last `created_at` seen).
    pub until: Option<String>,
    /// At most this many (default 50, at most 1000), newest first.
    pub limit: Option<u32>,
}

/// One line of a trace listing.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TraceSummary {
    /// The trace's id.
    pub id: String,
    /// Workflow name.
    pub workflow_name: Option<String>,
    /// Group id.
    pub group_id: Option<String>,
    /// Metadata.
    pub metadata: Value,
    /// When the store first saw it.
    pub created_at: String,
    /// When it ended, if known (`null` while its run goes on).
    pub ended_at: Option<String>,
    /// Spans stored for it.
    pub span_count: u64,
    /// Spans with an error.
    pub error_count: u64,
    /// The agents that ran in it, in the order first seen.
    pub agents: Vec<String>,
}

impl TraceStore {
    /// Traces matching `q`, newest first.
    pub fn list_traces(&self, q: &TraceQuery) -> Result<Vec<TraceSummary>, SinkError> {
        let conn = self.lock();
        let mut sql = String::from(
            "SELECT t.trace_id, t.workflow_name, t.group_id, t.export, t.created_at, t.ended_at,
                    t.spans, t.errors, t.agents
             FROM traces t WHERE 1 = 1",
        );
        let mut args: Vec<String> = Vec::new();
        let mut filter = |cond: &str, v: &Option<String>| {
            if let Some(v) = v {
                args.push(v.clone());
                sql.push_str(&format!(
                    " AND {}",
                    cond.replace('?', &format!("?{}", args.len()))
                ));
            }
        };
        filter("t.trace_id = ?", &q.trace_id);
        filter("t.workflow_name = ?", &q.workflow_name);
        filter("t.group_id = ?", &q.group_id);
        filter("t.tenant = ?", &q.tenant);
        filter(
            "instr(t.agents, '|' || ? || '|') > 0",
            &q.agent.as_ref().map(|a| a.replace('|', "/")),
        );
        filter("t.created_at >= ?", &q.since);
        filter("t.created_at < ?", &q.until);
        if q.errors_only {
            sql.push_str(" AND t.errors > 0");
        }
        let limit = q.limit.unwrap_or(50).clamp(1, 1000);
        sql.push_str(&format!(
            " ORDER BY t.created_at DESC, t.rowid DESC LIMIT {limit}"
        ));
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), |r| {
            let export: String = r.get(3)?;
            let metadata = serde_json::from_str::<Value>(&export)
                .ok()
                .map(|v| v["metadata"].clone())
                .unwrap_or(Value::Null);
            let agents: String = r.get(8)?;
            Ok(TraceSummary {
                id: r.get(0)?,
                workflow_name: r.get(1)?,
                group_id: r.get(2)?,
                metadata,
                created_at: r.get(4)?,
                ended_at: r.get(5)?,
                span_count: r.get::<_, i64>(6)?.max(0) as u64,
                error_count: r.get::<_, i64>(7)?.max(0) as u64,
                agents: agents
                    .split('|')
                    .filter(|a| !a.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// A trace's export and its spans' exports in start order, or `None` when unknown.
    /// With `tenant`, a trace of another tenant is `None` too.
    pub fn get_trace(
        &self,
        trace_id: &str,
        tenant: Option<&str>,
    ) -> Result<Option<(Value, Vec<Value>)>, SinkError> {
        Ok(self
            .get_trace_full(trace_id, tenant)?
            .map(|t| (t.trace, t.spans)))
    }

    /// A trace with what the store knows about it (times), or `None` as [`get_trace`](Self::get_trace).
    pub fn get_trace_full(
        &self,
        trace_id: &str,
        tenant: Option<&str>,
    ) -> Result<Option<StoredTrace>, SinkError> {
        let conn = self.lock();
        let row: Option<(String, Option<String>, String, Option<String>)> = conn
            .query_row(
                "SELECT export, tenant, created_at, ended_at FROM traces WHERE trace_id = ?1",
                params![trace_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((export, owner, created_at, ended_at)) = row else {
            return Ok(None);
        };
        if tenant.is_some() && owner.as_deref() != tenant {
            return Ok(None);
        }
        let trace: Value = serde_json::from_str(&export).unwrap_or(Value::Null);
        let mut stmt = conn
            .prepare_cached("SELECT spans FROM span_chunks WHERE trace_id = ?1 ORDER BY rowid")?;
        let chunks = stmt
            .query_map(params![trace_id], |r| r.get::<_, String>(0))?
            .filter_map(|r| r.ok());
        // A span sent twice (an SDK retry, ingest and export) is kept once: the last copy.
        let mut spans: Vec<Value> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for chunk in chunks {
            let Ok(Value::Array(list)) = serde_json::from_str::<Value>(&chunk) else {
                continue;
            };
            for span in list {
                let id = span["id"].as_str().unwrap_or("").to_owned();
                match at.get(&id) {
                    Some(&i) if !id.is_empty() => spans[i] = span,
                    _ => {
                        at.insert(id, spans.len());
                        spans.push(span);
                    }
                }
            }
        }
        spans.sort_by(|a, b| a["started_at"].as_str().cmp(&b["started_at"].as_str()));
        Ok(Some(StoredTrace {
            trace,
            spans,
            created_at,
            ended_at,
        }))
    }

    /// `{"trace": {...}, "spans": [...]}` for `GET /v1/traces/{trace_id}`.
    pub fn get_trace_json(
        &self,
        trace_id: &str,
        tenant: Option<&str>,
    ) -> Result<Option<Value>, SinkError> {
        Ok(self
            .get_trace(trace_id, tenant)?
            .map(|(t, s)| serde_json::json!({"trace": t, "spans": s})))
    }
}

/// A stored trace: its export, its spans in start order, and the store's times.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredTrace {
    /// The trace export.
    pub trace: Value,
    /// Span exports in start order.
    pub spans: Vec<Value>,
    /// When the store first saw it.
    pub created_at: String,
    /// When it ended (`None` while its run goes on).
    pub ended_at: Option<String>,
}
