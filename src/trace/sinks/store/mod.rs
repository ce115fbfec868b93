//! The `store` sink: traces and spans in an embedded SQLite database, queryable by trace
//! id, workflow, group, agent, errors, tenant and time. The server's `GET /v1/traces`,
//! `GET /v1/traces/{trace_id}`, `POST /v1/traces/ingest` and the trace browser call
//! [`TraceStore`] directly.
//!
//! **A trace belongs to the tenant that first wrote it** (a run's trace metadata `tenant`,
//! an ingest's caller, or [`TraceStore::claim`]) and never changes owner: a write to a
//! trace another tenant holds is refused whole (the trace's workflow, group and export stay
//! as they are, and none of the write's spans are added), so spans are only ever added to
//! one's own traces.
//!
//! - [`query`]: listings and whole traces.
//! - [`ingest`]: `POST /v1/traces/ingest` bodies, checked item by item.
//! - [`sink`]: [`StoreSink`], the sink that writes a run's spans.
//!
//! Calls block (SQLite); from async code call them through `spawn_blocking`.

pub mod ingest;
pub mod query;
pub mod sink;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::functions::FunctionFlags;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::SinkError;
use crate::trace::batch::{ExportItem, ItemKind};
use crate::trace::ids::IdError;

pub use ingest::{IngestAnswer, IngestRefusal};
pub use query::{TraceQuery, TraceSummary};
pub use sink::{StoreSink, STORE_COMMIT_ITEMS};

// Spans are stored in chunks: one row per trace and batch holding a JSON array of span
// exports, so a run costs a couple of row writes instead of one per span (measured: per-span
// rows made the store sink cost more than the run itself). 16 KiB pages hold a run's chunk
// without overflow pages: measured 21 -> 17 µs of CPU per run's items (new files only).
// `agents` ('|A|B|'), `errors` and `spans` summarise a trace's spans for listings and
// filters, kept up to date as spans arrive so a listing never reads the spans.
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

/// Columns added after the first release; files made before get them (and their values
/// computed from the stored spans) when opened.
const MIGRATION: &str = "
ALTER TABLE traces ADD COLUMN agents TEXT NOT NULL DEFAULT '';
ALTER TABLE traces ADD COLUMN errors INTEGER NOT NULL DEFAULT 0;
ALTER TABLE traces ADD COLUMN spans INTEGER NOT NULL DEFAULT 0;
UPDATE traces SET
  spans = (SELECT COALESCE(SUM(c.n), 0) FROM span_chunks c WHERE c.trace_id = traces.trace_id),
  errors = (SELECT COUNT(*) FROM span_chunks c, json_each(c.spans) j
            WHERE c.trace_id = traces.trace_id AND json_type(j.value, '$.error') = 'object'),
  agents = COALESCE('|' || (SELECT group_concat(name, '|') FROM (
              SELECT DISTINCT json_extract(j.value, '$.span_data.name') AS name
              FROM span_chunks c, json_each(c.spans) j
              WHERE c.trace_id = traces.trace_id
                AND json_extract(j.value, '$.span_data.type') = 'agent')) || '|', '');
CREATE INDEX IF NOT EXISTS traces_tenant ON traces(tenant, created_at);
";

/// What a write stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IngestSummary {
    /// Traces stored.
    pub traces: usize,
    /// Spans stored.
    pub spans: usize,
    /// Items skipped (not a trace or span export, or without an id).
    pub skipped: usize,
    /// Traces refused because another tenant holds them; none of their items were stored.
    #[serde(skip)]
    pub foreign: Vec<String>,
}

/// Why [`TraceStore::claim`] refused.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    /// The id is not an SDK trace id.
    #[error(transparent)]
    InvalidId(#[from] IdError),
    /// Another tenant holds the trace.
    #[error("trace id {0} is already used by another tenant; leave trace_id out to get a new one")]
    Taken(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] SinkError),
}

/// The embedded trace store. Cheap to clone.
#[derive(Clone)]
pub struct TraceStore {
    conn: Arc<Mutex<Connection>>,
    write_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// Buckets of [`TraceStore::write_latency`]: 100 µs to about 3 s.
fn write_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16)
}

impl std::fmt::Debug for TraceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TraceStore")
    }
}

/// The export of a trace the store has only spans (or a claim) of.
fn stub_export(trace_id: &str) -> String {
    serde_json::json!({"object": "trace", "id": trace_id,
        "workflow_name": null, "group_id": null, "metadata": null})
    .to_string()
}

/// `cb_merge_agents('|A|B|', '|B|C|')` = `'|A|B|C|'`: the union of two agent sets.
fn merge_agents(have: &str, add: &str) -> String {
    let mut out = if have.is_empty() {
        String::from("|")
    } else {
        have.to_owned()
    };
    for a in add.split('|').filter(|a| !a.is_empty()) {
        let has = out
            .match_indices(a)
            .any(|(i, _)| out[..i].ends_with('|') && out[i + a.len()..].starts_with('|'));
        if !has {
            out.push_str(a);
            out.push('|');
        }
    }
    if out == "|" {
        out.clear();
    }
    out
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
        let migrated: bool = conn
            .prepare("SELECT 1 FROM pragma_table_info('traces') WHERE name = 'agents'")?
            .exists([])?;
        if !migrated {
            conn.execute_batch(&format!("BEGIN; {MIGRATION} COMMIT;"))?;
        }
        conn.create_scalar_function(
            "cb_merge_agents",
            2,
            FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
            |ctx| {
                let have: String = ctx.get(0)?;
                let add: String = ctx.get(1)?;
                Ok(merge_agents(&have, &add))
            },
        )?;
        Ok(TraceStore {
            conn: Arc::new(Mutex::new(conn)),
            write_seconds: prometheus_client::metrics::histogram::Histogram::new(write_buckets()),
        })
    }

    /// How long each write transaction took (seconds; the lock wait included): the server's
    /// `callboard_trace_store_write_duration_seconds`.
    pub fn write_latency(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.write_seconds
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves `trace_id` for `tenant` at once (a run's trace row is otherwise written only
    /// when its first batch is exported): `Ok` when the tenant holds it now (new, or already
    /// its own), [`ClaimError::Taken`] when another tenant does. Blocks briefly (SQLite).
    pub fn claim(&self, trace_id: &str, tenant: &str) -> Result<(), ClaimError> {
        crate::trace::ids::check_trace_id(trace_id)?;
        let conn = self.lock();
        let inserted = conn
            .prepare_cached(
                "INSERT INTO traces (trace_id, tenant, created_at, export) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(trace_id) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    trace_id,
                    tenant,
                    crate::trace::time_iso(),
                    stub_export(trace_id)
                ])
            })
            .map_err(SinkError::from)?;
        if inserted == 1 {
            return Ok(());
        }
        let owner: Option<Option<String>> = conn
            .query_row(
                "SELECT tenant FROM traces WHERE trace_id = ?1",
                params![trace_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(SinkError::from)?;
        match owner {
            Some(Some(t)) if t == tenant => Ok(()),
            _ => Err(ClaimError::Taken(trace_id.to_owned())),
        }
    }

    /// [`claim`](Self::claim) for async callers (on the blocking pool).
    pub async fn claim_async(&self, trace_id: &str, tenant: &str) -> Result<(), ClaimError> {
        let (me, id, t) = (self.clone(), trace_id.to_owned(), tenant.to_owned());
        tokio::task::spawn_blocking(move || me.claim(&id, &t))
            .await
            .map_err(|e| ClaimError::Store(SinkError::Other(format!("claim task failed: {e}"))))?
    }

    /// The tenant holding `trace_id` (`Some(None)`: a trace written without a tenant), or
    /// `None` when the store has no such trace.
    pub fn owner(&self, trace_id: &str) -> Result<Option<Option<String>>, SinkError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT tenant FROM traces WHERE trace_id = ?1",
                params![trace_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Stores trace starts, trace ends and spans, each under the tenant its item names (one
    /// transaction; per trace, one row write for its spans in this batch). A trace another
    /// tenant holds is refused whole and listed in [`IngestSummary::foreign`].
    pub fn insert(&self, items: &[ExportItem]) -> Result<IngestSummary, SinkError> {
        self.write(items, false)
    }

    /// The write behind [`insert`](Self::insert) and ingest. `ingested`: the items come from
    /// a client, whose traces have no end marker: a trace it creates counts as ended when
    /// stored, and a trace it adds to keeps its end.
    fn write(&self, items: &[ExportItem], ingested: bool) -> Result<IngestSummary, SinkError> {
        struct Group<'a> {
            tenant: Option<&'a str>,
            trace: Option<&'a ExportItem>,
            ended: Option<&'a str>,
            spans: Vec<&'a str>,
            agents: String,
            errors: i64,
        }
        let now = crate::trace::time_iso();
        let mut order: Vec<&str> = Vec::new();
        let mut groups: HashMap<&str, Group<'_>> = HashMap::new();
        for item in items {
            let g = groups.entry(item.trace_id.as_str()).or_insert_with(|| {
                order.push(item.trace_id.as_str());
                Group {
                    tenant: item.tenant.as_deref(),
                    trace: None,
                    ended: None,
                    spans: Vec::new(),
                    agents: String::new(),
                    errors: 0,
                }
            });
            match item.kind {
                ItemKind::Trace => g.trace = Some(item),
                ItemKind::TraceEnd => {
                    g.ended = Some(item.facts.at.as_deref().unwrap_or(now.as_str()))
                }
                ItemKind::Span => {
                    g.spans.push(&item.json);
                    if let Some(a) = &item.facts.agent {
                        if g.agents.is_empty() {
                            g.agents.push('|');
                        }
                        // '|' separates the names; one inside a name would split it.
                        g.agents.push_str(&a.replace('|', "/"));
                        g.agents.push('|');
                    }
                    g.errors += i64::from(item.facts.error);
                }
            }
        }
        let mut sum = IngestSummary::default();
        let started = std::time::Instant::now();
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            // One upsert per trace: creates the row for its first writer, and otherwise
            // updates it only for that same tenant (`tenant IS excluded.tenant`).
            let mut put_trace = tx.prepare_cached(
                "INSERT INTO traces (trace_id, workflow_name, group_id, tenant, created_at, ended_at, export, agents, errors, spans)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT(trace_id) DO UPDATE SET
                   workflow_name = CASE WHEN ?11 THEN excluded.workflow_name ELSE traces.workflow_name END,
                   group_id = CASE WHEN ?11 THEN excluded.group_id ELSE traces.group_id END,
                   export = CASE WHEN ?11 THEN excluded.export ELSE traces.export END,
                   created_at = CASE WHEN ?11 THEN min(traces.created_at, excluded.created_at)
                                     ELSE traces.created_at END,
                   ended_at = CASE WHEN ?12 THEN traces.ended_at
                                   WHEN excluded.ended_at IS NOT NULL THEN excluded.ended_at
                                   WHEN ?11 THEN NULL ELSE traces.ended_at END,
                   agents = CASE WHEN excluded.agents = '' THEN traces.agents
                                 ELSE cb_merge_agents(traces.agents, excluded.agents) END,
                   errors = traces.errors + excluded.errors,
                   spans = traces.spans + excluded.spans
                 WHERE traces.tenant IS excluded.tenant",
            )?;
            let mut put_spans = tx.prepare_cached(
                "INSERT INTO span_chunks (trace_id, n, spans) VALUES (?1, ?2, ?3)",
            )?;
            for id in order {
                let Some(g) = groups.get(id) else { continue };
                if g.trace.is_none() && g.spans.is_empty() && g.ended.is_none() {
                    continue;
                }
                let stub;
                let (workflow, group, export) = match g.trace {
                    Some(t) => (
                        t.facts.workflow_name.as_deref(),
                        t.facts.group_id.as_deref(),
                        t.json.as_str(),
                    ),
                    None => {
                        // Spans may come before (or without) their trace, e.g. by ingest.
                        stub = stub_export(id);
                        (None, None, stub.as_str())
                    }
                };
                let ended = g.ended.or(ingested.then_some(now.as_str()));
                // A run's trace starts when it started, not when the store first hears of it.
                let created = g
                    .trace
                    .and_then(|t| t.facts.at.as_deref())
                    .unwrap_or(now.as_str());
                let changed = put_trace.execute(params![
                    id,
                    workflow,
                    group,
                    g.tenant,
                    created,
                    ended,
                    export,
                    g.agents,
                    g.errors,
                    g.spans.len() as i64,
                    g.trace.is_some(),
                    ingested,
                ])?;
                if changed == 0 {
                    tracing::warn!(trace_id = %id, tenant = g.tenant.unwrap_or(""), "a write to another tenant's trace was refused");
                    sum.foreign.push(id.to_owned());
                    continue;
                }
                sum.traces += usize::from(g.trace.is_some());
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
                    sum.spans += g.spans.len();
                }
            }
        }
        tx.commit()?;
        self.write_seconds.observe(started.elapsed().as_secs_f64());
        Ok(sum)
    }
}

#[cfg(test)]
mod tests;
