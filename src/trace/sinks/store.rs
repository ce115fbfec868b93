//! The `store` sink: traces and spans in an embedded SQLite database, queryable by trace
//! id, workflow name, group id, tenant and time. The server's `GET /v1/traces`,
//! `GET /v1/traces/{trace_id}` and `POST /v1/traces/ingest` call [`TraceStore`] directly.
//!
//! Calls block (SQLite); from async code call them through `spawn_blocking`.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::Value;

use super::{Sink, SinkError};
use crate::trace::batch::{ExportItem, ItemKind};

// Spans are stored in chunks: one row per trace and batch holding a JSON array of span
// exports, so a run costs a couple of row writes instead of one per span (measured: per-span
// rows made the store sink cost more than the run itself). 16 KiB pages hold a run's chunk
// without overflow pages: measured 21 -> 17 µs of CPU per run's items (new files only).
const SCHEMA: &str = "
PRAGMA page_size = 16384;
PRAGMA journal_mode = WAL;
PRAGMA synchronous = NORMAL;
CREATE TABLE IF NOT EXISTS traces (
    trace_id      TEXT PRIMARY KEY,
    workflow_name TEXT,
    group_id      TEXT,
    tenant        TEXT,
    created_at    TEXT NOT NULL,
    ended_at      TEXT,
    export        TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS traces_workflow ON traces(workflow_name, created_at);
CREATE INDEX IF NOT EXISTS traces_group ON traces(group_id, created_at);
CREATE INDEX IF NOT EXISTS traces_created ON traces(created_at);
CREATE TABLE IF NOT EXISTS span_chunks (
    trace_id TEXT NOT NULL,
    n        INTEGER NOT NULL,
    spans    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS span_chunks_trace ON span_chunks(trace_id);
";

/// Filters of a trace listing; every field is optional.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct TraceQuery {
    /// Exactly this trace.
    pub trace_id: Option<String>,
    /// Traces of this workflow.
    pub workflow_name: Option<String>,
    /// Traces of this group (conversation).
    pub group_id: Option<String>,
    /// Traces of this tenant (the trace metadata's `tenant`).
    pub tenant: Option<String>,
    /// Stored at or after this ISO-8601 time.
    pub since: Option<String>,
    /// Stored before this ISO-8601 time.
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
    /// When it ended, if known.
    pub ended_at: Option<String>,
    /// Spans stored for it.
    pub span_count: u64,
}

/// What an ingest stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IngestSummary {
    /// Traces stored.
    pub traces: usize,
    /// Spans stored.
    pub spans: usize,
    /// Items skipped (not a trace or span export, or without an id).
    pub skipped: usize,
}

/// The embedded trace store. Cheap to clone.
#[derive(Clone)]
pub struct TraceStore {
    conn: Arc<Mutex<Connection>>,
}

impl std::fmt::Debug for TraceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceStore")
    }
}

fn json_text(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_owned())
}

impl TraceStore {
    /// Opens (creating) the database file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SinkError> {
        Self::init(Connection::open(path)?)
    }

    /// A store in memory (tests, demos).
    pub fn open_in_memory() -> Result<Self, SinkError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, SinkError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(TraceStore {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Stores trace starts, trace ends and spans (one transaction; per trace, one row
    /// write for its spans in this batch).
    pub fn insert(&self, items: &[ExportItem]) -> Result<IngestSummary, SinkError> {
        #[derive(Default)]
        struct Group<'a> {
            trace: Option<&'a ExportItem>,
            ended: bool,
            spans: Vec<&'a str>,
        }
        let mut order: Vec<&str> = Vec::new();
        let mut groups: std::collections::HashMap<&str, Group<'_>> =
            std::collections::HashMap::new();
        let mut sum = IngestSummary::default();
        for item in items {
            let g = groups.entry(item.trace_id.as_str()).or_insert_with(|| {
                order.push(item.trace_id.as_str());
                Group::default()
            });
            match item.kind {
                ItemKind::Trace => {
                    g.trace = Some(item);
                    sum.traces += 1;
                }
                ItemKind::TraceEnd => g.ended = true,
                ItemKind::Span => {
                    g.spans.push(&item.json);
                    sum.spans += 1;
                }
            }
        }
        let now = crate::trace::time_iso();
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        {
            let mut put_trace = tx.prepare_cached(
                "INSERT INTO traces (trace_id, workflow_name, group_id, tenant, created_at, ended_at, export)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT(trace_id) DO UPDATE SET workflow_name = excluded.workflow_name,
                   group_id = excluded.group_id, tenant = excluded.tenant, export = excluded.export,
                   ended_at = COALESCE(excluded.ended_at, traces.ended_at)",
            )?;
            let mut stub_trace = tx.prepare_cached(
                "INSERT OR IGNORE INTO traces (trace_id, created_at, export) VALUES (?1, ?2, ?3)",
            )?;
            let mut end_trace =
                tx.prepare_cached("UPDATE traces SET ended_at = ?2 WHERE trace_id = ?1")?;
            let mut put_spans = tx.prepare_cached(
                "INSERT INTO span_chunks (trace_id, n, spans) VALUES (?1, ?2, ?3)",
            )?;
            for id in order {
                let Some(g) = groups.get(id) else { continue };
                let ended = g.ended.then_some(now.as_str());
                match g.trace {
                    Some(t) => {
                        let v = t.value();
                        put_trace.execute(params![
                            id,
                            v["workflow_name"].as_str(),
                            v["group_id"].as_str(),
                            v["metadata"]["tenant"].as_str(),
                            now,
                            ended,
                            t.json,
                        ])?;
                    }
                    None => {
                        if !g.spans.is_empty() {
                            // Spans may come before (or without) their trace, e.g. by ingest.
                            let stub = serde_json::json!({"object": "trace", "id": id,
                                "workflow_name": null, "group_id": null, "metadata": null});
                            stub_trace.execute(params![id, now, json_text(&stub)])?;
                        }
                        if let Some(e) = ended {
                            end_trace.execute(params![id, e])?;
                        }
                    }
                }
                if !g.spans.is_empty() {
                    let mut arr = String::with_capacity(
                        g.spans.iter().map(|s| s.len() + 1).sum::<usize>() + 2,
                    );
                    arr.push('[');
                    for (i, s) in g.spans.iter().enumerate() {
                        if i > 0 {
                            arr.push(',');
                        }
                        arr.push_str(s);
                    }
                    arr.push(']');
                    put_spans.execute(params![id, g.spans.len() as i64, arr])?;
                }
            }
        }
        tx.commit()?;
        Ok(sum)
    }

    /// Stores the `data` of an OpenAI trace-ingest body (`{"data":[...]}`): trace and span
    /// exports as the SDK sends them. Other objects are skipped and counted.
    pub fn ingest(&self, data: Vec<Value>) -> Result<IngestSummary, SinkError> {
        let n = data.len();
        let items = ExportItem::from_values(data);
        let skipped = n - items.len();
        let mut sum = self.insert(&items)?;
        sum.skipped += skipped;
        Ok(sum)
    }

    /// Traces matching `q`, newest first.
    pub fn list_traces(&self, q: &TraceQuery) -> Result<Vec<TraceSummary>, SinkError> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut sql = String::from(
            "SELECT t.trace_id, t.workflow_name, t.group_id, t.export, t.created_at, t.ended_at,
                    (SELECT COALESCE(SUM(c.n), 0) FROM span_chunks c WHERE c.trace_id = t.trace_id)
             FROM traces t WHERE 1 = 1",
        );
        let mut args: Vec<String> = Vec::new();
        let mut filter = |col: &str, op: &str, v: &Option<String>| {
            if let Some(v) = v {
                args.push(v.clone());
                sql.push_str(&format!(" AND t.{col} {op} ?{}", args.len()));
            }
        };
        filter("trace_id", "=", &q.trace_id);
        filter("workflow_name", "=", &q.workflow_name);
        filter("group_id", "=", &q.group_id);
        filter("tenant", "=", &q.tenant);
        filter("created_at", ">=", &q.since);
        filter("created_at", "<", &q.until);
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
            Ok(TraceSummary {
                id: r.get(0)?,
                workflow_name: r.get(1)?,
                group_id: r.get(2)?,
                metadata,
                created_at: r.get(4)?,
                ended_at: r.get(5)?,
                span_count: r.get::<_, i64>(6)?.max(0) as u64,
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
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let row: Option<(String, Option<String>)> = conn
            .query_row(
                "SELECT export, tenant FROM traces WHERE trace_id = ?1",
                params![trace_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((export, owner)) = row else {
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
        let mut at: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
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
        Ok(Some((trace, spans)))
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

/// Items the store sink gathers before one transaction (fewer, larger commits write each
/// shared page once instead of once per batch).
pub const STORE_COMMIT_ITEMS: usize = 1024;

/// The sink writing to a [`TraceStore`]. It gathers full batches and commits when it holds
/// [`STORE_COMMIT_ITEMS`], when a batch is not full (the actor's queue is drained, so the
/// store is never more than one export behind), and on flush and shutdown.
pub struct StoreSink {
    store: TraceStore,
    full_batch: usize,
    pending: std::sync::Mutex<Vec<ExportItem>>,
}

impl std::fmt::Debug for StoreSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreSink")
    }
}

impl StoreSink {
    /// A sink writing to `store` (keep a clone of it for queries), for batches of the
    /// default size (128).
    pub fn new(store: TraceStore) -> Self {
        Self::with_batch_size(store, 128)
    }

    /// A sink for batches of at most `max_batch_size` items (the processor's setting).
    pub fn with_batch_size(store: TraceStore, max_batch_size: usize) -> Self {
        StoreSink {
            store,
            full_batch: max_batch_size.max(1),
            pending: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The store.
    pub fn store(&self) -> &TraceStore {
        &self.store
    }

    fn commit(&self, mut items: Vec<ExportItem>) -> Result<(), SinkError> {
        if let Some(more) = self.take_pending() {
            items = [more, items].concat();
        }
        if items.is_empty() {
            return Ok(());
        }
        self.store.insert(&items).map(|_| ())
    }

    fn take_pending(&self) -> Option<Vec<ExportItem>> {
        let mut g = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        (!g.is_empty()).then(|| std::mem::take(&mut *g))
    }
}

#[async_trait]
impl Sink for StoreSink {
    fn name(&self) -> &str {
        "store"
    }

    async fn export(&self, batch: &[ExportItem]) -> Result<(), SinkError> {
        // The sink has a thread of its own, so blocking on SQLite here stalls nobody else.
        let held = {
            let mut g = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            g.extend_from_slice(batch);
            g.len()
        };
        if held >= STORE_COMMIT_ITEMS || batch.len() < self.full_batch {
            return self.commit(Vec::new());
        }
        Ok(())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        self.commit(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ingest_then_query_by_id_workflow_group_and_time() {
        let s = TraceStore::open_in_memory().unwrap();
        let sum = s
            .ingest(vec![
                json!({"object":"trace","id":"trace_1","workflow_name":"W","group_id":"g1","metadata":{"tenant":"acme"}}),
                json!({"object":"trace.span","id":"span_b","trace_id":"trace_1","parent_id":"span_a","started_at":"2026-01-01T00:00:01.000000+00:00","ended_at":"2026-01-01T00:00:02.000000+00:00","span_data":{"type":"function","name":"f"},"error":null}),
                json!({"object":"trace.span","id":"span_a","trace_id":"trace_1","parent_id":null,"started_at":"2026-01-01T00:00:00.000000+00:00","ended_at":"2026-01-01T00:00:03.000000+00:00","span_data":{"type":"agent","name":"A"},"error":null}),
                json!({"object":"trace","id":"trace_2","workflow_name":"V","group_id":null,"metadata":null}),
                json!({"object":"nonsense"}),
            ])
            .unwrap();
        assert_eq!((sum.traces, sum.spans, sum.skipped), (2, 2, 1));
        let by_wf = s
            .list_traces(&TraceQuery {
                workflow_name: Some("W".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(by_wf.len(), 1);
        assert_eq!(by_wf[0].span_count, 2);
        assert_eq!(by_wf[0].metadata["tenant"], "acme");
        let by_group = s
            .list_traces(&TraceQuery {
                group_id: Some("g1".into()),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(by_group[0].id, "trace_1");
        assert_eq!(s.list_traces(&TraceQuery::default()).unwrap().len(), 2);
        let future = s
            .list_traces(&TraceQuery {
                since: Some("2999-01-01T00:00:00+00:00".into()),
                ..Default::default()
            })
            .unwrap();
        assert!(future.is_empty());
        let (t, spans) = s.get_trace("trace_1", None).unwrap().unwrap();
        assert_eq!(t["workflow_name"], "W");
        assert_eq!(spans[0]["id"], "span_a", "spans come in start order");
        assert!(s.get_trace("trace_1", Some("other")).unwrap().is_none());
        assert!(s.get_trace("trace_1", Some("acme")).unwrap().is_some());
        assert!(s.get_trace("trace_x", None).unwrap().is_none());
    }
}
